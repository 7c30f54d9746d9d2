//! Stage 3b: passthrough. The origin gets the buffered ClientHello bytes unchanged, then both
//! directions are relayed as they come until each side has closed its sending half (a half-close
//! is passed on, not treated as the end), or until neither side has sent a byte for the idle
//! timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
pub async fn relay(
    client: &mut Stream,
    upstream: &mut TcpStream,
    idle: Duration,
    counters: ByteCounters<'_>,
) -> Relayed {
    let start = Instant::now();
    // Milliseconds since `start` of the last byte either way: shared by both directions.
    let last = AtomicU64::new(0);
    let (to_upstream, to_client) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut up_read, mut up_write) = upstream.split();
    let up = copy(
        &mut client_read,
        &mut up_write,
        Clock { start, last: &last },
        (&to_upstream, counters.to_upstream),
    );
    let down = copy(
        &mut up_read,
        &mut client_write,
        Clock { start, last: &last },
        (&to_client, counters.to_client),
    );
    let both = async { tokio::join!(up, down) };
    let idle_watch = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    let end = tokio::select! {
        (up_ok, down_ok) = both => if up_ok && down_ok { End::Closed } else { End::Error },
        () = idle_watch => End::Idle,
    };
    Relayed {
        to_upstream: to_upstream.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        end,
    }
}

/// When the relay started, and when a byte last went either way (milliseconds since).
struct Clock<'a> {
    start: Instant,
    last: &'a AtomicU64,
}

/// One direction: copies until `from` ends, then passes the end on (shuts `to`'s sending half).
/// Adds the bytes copied to both counters as they go; returns whether it ended cleanly.
async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    clock: Clock<'_>,
    (total, counter): (&AtomicU64, &IntCounter),
) -> bool
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return false,
        };
        clock
            .last
            .store(clock.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return false;
        }
        total.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
    }
    // The other side may still be sending: only this direction is over.
    to.shutdown().await.is_ok()
}
