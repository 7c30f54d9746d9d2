//! The client's socket under a Pingora stream: its descriptor, and the two ways a connection
//! ends on purpose (a close that does not destroy the last answer, and a reset).

use std::os::unix::io::{AsRawFd, RawFd};
use std::time::Duration;

use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// After the last answer on a connection, how long and how much the gate keeps reading (and
/// discarding) before it closes, so that a client still sending does not get a reset that
/// destroys the answer in flight (a "lingering close", as nginx does).
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1 << 20;

/// The socket under a plain TCP stream; None for anything else (TLS, Unix sockets).
pub fn raw_fd(stream: &Stream) -> Option<RawFd> {
    let l4 = stream
        .as_any()
        .downcast_ref::<pingora::protocols::l4::stream::Stream>()?;
    let fd = l4.as_raw_fd();
    (fd >= 0).then_some(fd)
}

/// Closes after a last answer without resetting it away: stop sending, then read and discard
/// what the client still sends for a short while.
pub async fn linger_close(mut stream: Stream) {
    let drain = async {
        stream.shutdown().await.ok()?;
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        Some(())
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Ends the connection with a TCP reset: `SO_LINGER` with a zero timeout, then close.
pub fn reset(stream: Stream) {
    if let Some(fd) = raw_fd(&stream) {
        // SAFETY: `fd` is the open socket `stream` owns for the duration of this borrow; the
        // option is set on it and the descriptor stays owned (and is closed) by `stream`.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}
