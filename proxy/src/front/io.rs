//! Writing to the client: whole answers within `WRITE_TIMEOUT`, and an answer's two parts
//! straight to the socket when it takes them at once.

use std::os::unix::io::RawFd;

use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use super::WRITE_TIMEOUT;

pub(super) async fn write_all(stream: &mut Stream, bytes: &[u8]) -> bool {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// `a` then `b`, as one write when the socket takes them (a vectored write).
pub(super) async fn write_all_two(
    stream: &mut Stream,
    fd: Option<RawFd>,
    a: &[u8],
    b: &[u8],
) -> bool {
    let (mut a, mut b) = (a, b);
    // Straight to the socket when it takes the whole answer (it nearly always does): the
    // stream's write buffer would otherwise copy it first. Safe to bypass because the front end
    // flushes after every answer, so nothing of the stream's own is waiting in that buffer.
    if let Some(fd) = fd {
        let n = writev_now(fd, a, b);
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[(n - from_a).min(b.len())..];
        if a.is_empty() && b.is_empty() {
            return true;
        }
    }
    let write = async {
        while !a.is_empty() || !b.is_empty() {
            let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
            let n = stream.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_a = n.min(a.len());
            a = &a[from_a..];
            b = &b[n - from_a..];
        }
        stream.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// One non-blocking vectored send of `a` then `b`; the bytes sent (0 when the socket would
/// block or failed: the caller then writes through the stream, which reports the error).
pub(super) fn writev_now(fd: RawFd, a: &[u8], b: &[u8]) -> usize {
    let mut iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is a valid empty message; its iovecs are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    // SAFETY: both iovecs point into slices that outlive the call and are only read; `fd` is
    // the connection's socket, open for as long as the caller holds its stream. MSG_DONTWAIT:
    // never blocks the thread; MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    n.max(0) as usize
}
