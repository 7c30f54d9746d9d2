//! Stage 0 of every connection: accepting it. The per-listener connection cap wraps whichever
//! handler the listener runs (HTTP front end or TLS), and a `transparent` listener (TPROXY)
//! gets a socket of our own, because Pingora's listeners cannot set `IP_TRANSPARENT`.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};

/// A listener's handler behind a cap on the connections it holds at once. A connection over the
/// cap is closed at once and counted: it costs an accept and a close, nothing more.
pub struct Limited<A> {
    inner: Arc<A>,
    max: usize,
    open: AtomicUsize,
    open_gauge: IntGauge,
    rejected: IntCounter,
}

impl<A> Limited<A> {
    pub fn new(inner: A, max: usize, open_gauge: IntGauge, rejected: IntCounter) -> Self {
        Limited {
            inner: Arc::new(inner),
            max,
            open: AtomicUsize::new(0),
            open_gauge,
            rejected,
        }
    }
}

/// One slot of `Limited`, given back when the connection ends.
struct Slot<'a, A>(&'a Limited<A>);

impl<A> Drop for Slot<'_, A> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.open_gauge.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.rejected.inc();
            return None;
        }
        self.open_gauge.inc();
        let _slot = Slot(self);
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A listening socket with `IP_TRANSPARENT` (TPROXY: a connection's local address is the address
/// the client sent it to), created when the gate starts so that a missing capability stops the
/// start with a clear error instead of a listener that never accepts.
pub struct TransparentListener {
    name: String,
    socket: std::net::TcpListener,
}

impl TransparentListener {
    pub fn bind(name: &str, address: SocketAddr) -> anyhow::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if address.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        // Pingora hands its own listeners to a new process in a graceful upgrade; this one it
        // does not know: the new process binds it again beside the old one's, which keeps
        // accepting until it shuts down (docs/operations.md, graceful upgrade).
        socket.set_reuse_port(true)?;
        let transparent = if address.is_ipv4() {
            socket.set_ip_transparent_v4(true)
        } else {
            socket.set_ip_transparent_v6(true)
        };
        transparent.map_err(|e| {
            anyhow::anyhow!(
                "listener `{name}` ({address}): transparent = true needs IP_TRANSPARENT, which \
                 needs CAP_NET_ADMIN: {e}"
            )
        })?;
        socket
            .bind(&address.into())
            .map_err(|e| anyhow::anyhow!("listener `{name}`: cannot bind {address}: {e}"))?;
        socket.listen(4096)?;
        socket.set_nonblocking(true)?;
        Ok(TransparentListener {
            name: name.to_owned(),
            socket: socket.into(),
        })
    }

    /// The accept loop, as a background service running `app` on each connection.
    pub fn serve<A: ServerApp + Send + Sync + 'static>(self, app: A) -> TransparentService<A> {
        TransparentService {
            listener: std::sync::Mutex::new(Some(self)),
            app: Arc::new(app),
        }
    }
}

pub struct TransparentService<A> {
    listener: std::sync::Mutex<Option<TransparentListener>>,
    app: Arc<A>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> BackgroundService for TransparentService<A> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let name = listener.name;
        let accept = match tokio::net::TcpListener::from_std(listener.socket) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(listener = name, error = %e, "transparent listener failed");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                a = accept.accept() => a,
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // As Pingora's listeners do for every accepted socket: answers and relayed records
            // leave as they are written (no Nagle delay behind a delayed ACK).
            let _ = tcp.set_nodelay(true);
            let fd = tcp.as_raw_fd();
            let mut stream = pingora::protocols::l4::stream::Stream::from(tcp);
            stream.set_socket_digest(SocketDigest::from_raw_fd(fd));
            let app = self.app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut next = app.process_new(Box::new(stream), &shutdown).await;
                while let Some(stream) = next {
                    next = app.process_new(stream, &shutdown).await;
                }
            });
        }
        tracing::info!(listener = name, "transparent listener stopped accepting");
    }
}
