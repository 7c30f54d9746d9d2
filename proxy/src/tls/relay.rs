//! Stage 3b: passthrough. The origin gets the buffered ClientHello bytes unchanged, then both
//! directions are relayed as they come until each side has closed its sending half (a half-close
//! is passed on, not treated as the end), or until neither side has sent a byte for the idle
//! timeout.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read per direction at once.
const CHUNK: usize = 16 * 1024;

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Both sides closed their sending halves.
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, usually).
    Error,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::Error => "error",
        }
    }
}

pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
    pub end: End,
}

/// The two byte counters a relay adds to as it goes.
pub struct ByteCounters<'a> {
    pub to_upstream: &'a IntCounter,
    pub to_client: &'a IntCounter,
}

/// Relays between `client` and `upstream` (the hello is already written) until both have
/// closed, one fails, or `idle` passes without a byte.
///
/// Both directions are one future (tokio's `copy_bidirectional`: no split halves, no lock per
/// read), each side wrapped to count the bytes read from it and the time of the last one.
pub async fn relay(
    client: &mut Stream,
    upstream: &mut TcpStream,
    idle: Duration,
    counters: ByteCounters<'_>,
) -> Relayed {
    match own_socket(client) {
        Some(mut own) => relay_between(&mut own, upstream, idle, counters).await,
        None => relay_between(client, upstream, idle, counters).await,
    }
}

/// The client's socket as a tokio socket of the relay's own: a duplicate of its descriptor
/// (same socket, so a half-close or a close through it is the connection's). Pingora's stream
/// reads the precise clock twice for every read that waits, which costs about a tenth of a
/// relayed request on this VM (docs/performance.md, "TLS passthrough"); nothing is buffered in
/// it on a passthrough (the hello was read by the gate's own reader, its listener unbuffered).
/// None when the stream is not a TCP socket, or the duplicate cannot be made.
fn own_socket(stream: &Stream) -> Option<TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = crate::socket::raw_fd(stream)?;
    // SAFETY: `fd` is the open socket `stream` owns for the duration of this borrow;
    // F_DUPFD_CLOEXEC makes a new descriptor for it (or fails, leaving nothing to close).
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` was just made and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    // Non-blocking already: a duplicate shares the file status flags of tokio's socket (no
    // `set_nonblocking`, which would cost a system call per connection).
    TcpStream::from_std(std::net::TcpStream::from(owned)).ok()
}

async fn relay_between<C: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    client: &mut C,
    upstream: &mut TcpStream,
    idle: Duration,
    counters: ByteCounters<'_>,
) -> Relayed {
    let start = crate::clock::coarse_now();
    // Milliseconds since `start` of the last byte either way: shared by both directions.
    let last = AtomicU64::new(0);
    let mut client = Counted {
        io: client,
        total: 0,
        counter: counters.to_upstream,
        start,
        last: &last,
    };
    let mut upstream = Counted {
        io: upstream,
        total: 0,
        counter: counters.to_client,
        start,
        last: &last,
    };
    let both = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, CHUNK, CHUNK);
    let idle_watch = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if crate::clock::coarse_now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    let end = tokio::select! {
        copied = both => if copied.is_ok() { End::Closed } else { End::Error },
        () = idle_watch => End::Idle,
    };
    Relayed {
        to_upstream: client.total,
        to_client: upstream.total,
        end,
    }
}

/// One side of a relay: reads from it are counted (what goes to the other side) as they come,
/// and stamp the time of the last byte; writes pass through.
struct Counted<'a, S: ?Sized> {
    io: &'a mut S,
    total: u64,
    counter: &'a IntCounter,
    start: Instant,
    last: &'a AtomicU64,
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.total += n;
            self.counter.inc_by(n);
            let ms = crate::clock::coarse_now()
                .saturating_duration_since(self.start)
                .as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
