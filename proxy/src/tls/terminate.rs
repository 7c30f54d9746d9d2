//! Stage 3c: termination. When the gate holds a certificate for a connection's SNI it completes
//! the handshake itself (rustls, through Pingora's rustls acceptor) on the bytes already read,
//! then serves the connection as an HTTP listener does: HTTP/1.1 and HTTP/2 (by ALPN) through
//! the same front end (`front::h2`), every request decided on its own Host /
//! `:authority` by the same `Gate`. A name held but not filed still completes the handshake: its
//! requests get the block page over HTTPS, which a browser shows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

use super::certs::{CertStore, HeldCert};
use super::hello::Hello;
use crate::front::GateApp;

/// What a terminated connection carries into its requests (the `SslDigest` extension): the
/// certificate it was served with, whose names say which Hosts it may carry (others: `421`),
/// and its life (how many requests it has carried, and how to end it gracefully).
#[derive(Debug)]
pub struct Terminated {
    pub cert: Arc<HeldCert>,
    pub life: Arc<ConnectionLife>,
}

impl Terminated {
    /// The extension of a terminated stream, if this is one.
    pub fn of(stream: &Stream) -> Option<Arc<HeldCert>> {
        Self::in_digest(&*stream.get_ssl_digest()?)
    }

    /// The certificate a connection's TLS digest says it was served with, if the gate
    /// terminated it.
    pub fn in_digest(digest: &pingora::protocols::tls::SslDigest) -> Option<Arc<HeldCert>> {
        digest.extension.get::<Terminated>().map(|t| t.cert.clone())
    }
}

/// The life of one terminated HTTP/2 connection: after `max_requests_per_connection` streams
/// it is ended gracefully (GOAWAY naming the last stream accepted; streams in flight finish,
/// the client opens a new connection), as nginx's `keepalive_requests` does for HTTP/2. HTTP/1.1
/// connections count their requests in the front end.
#[derive(Debug)]
pub struct ConnectionLife {
    requests: AtomicU32,
    max_requests: u32,
    /// Set to `true` to end the connection: Pingora's HTTP/2 accept loop sends GOAWAY when the
    /// watch it is given changes.
    end: tokio::sync::watch::Sender<bool>,
}

impl ConnectionLife {
    pub fn new(max_requests: u32) -> (Arc<Self>, ShutdownWatch) {
        let (end, watch) = tokio::sync::watch::channel(false);
        let life = ConnectionLife {
            requests: AtomicU32::new(0),
            max_requests,
            end,
        };
        (Arc::new(life), watch)
    }

    /// One more request on this connection; the one that reaches the limit is still served,
    /// and ends the connection's life.
    pub fn count_request(&self) {
        let served = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if served == self.max_requests {
            self.end();
        }
    }

    /// Ends the connection gracefully (GOAWAY).
    pub fn end(&self) {
        self.end.send_replace(true);
    }

    pub fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// HTTP/2 limits for terminated connections: Pingora's bounded defaults (header list size,
/// concurrent streams), and against rapid reset (CVE-2023-44487) and floods of streams the
/// server must reset, a cap on streams reset before they are accepted and on resets the gate
/// sends; a client over them gets GOAWAY (ENHANCE_YOUR_CALM). Streams over a connection's life
/// are limited by `ConnectionLife`.
pub fn h2_options() -> pingora::protocols::http::v2::server::H2Options {
    let mut options = pingora::protocols::http::v2::server::default_h2_options();
    options
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(H2_MAX_SEND_BUFFER);
    options
}

pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
pub const H2_MAX_PENDING_RESETS: usize = 20;
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;
pub const H2_MAX_SEND_BUFFER: usize = 256 * 1024;

/// How long a client has, after its ClientHello, to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Termination {
    pub certs: Arc<CertStore>,
    acceptor: Acceptor,
    /// The same front end as a cleartext listener: HTTP/1.1, and HTTP/2 (`front::h2`).
    front: Arc<GateApp>,
    pub handshakes: IntCounter,
    pub handshake_failures: IntCounter,
    /// Streams an HTTP/2 connection may carry over its life (`max_requests_per_connection`).
    max_requests: u32,
}

/// The TLS settings of a terminator: TLS 1.3 and 1.2 only, rustls's (modern, AEAD-only) cipher
/// suites, ALPN `h2` then `http/1.1`, resumption by tickets (sealed with the keys of
/// `[tls] session_ticket_keys` when set, shared by a fleet; else keys of this process, rotated
/// by rustls) and by a session cache.
pub fn server_config(
    certs: Arc<CertStore>,
    tickets: Option<Arc<super::tickets::FileTicketer>>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = match tickets {
        Some(file) => file,
        None => rustls::crypto::ring::Ticketer::new()?,
    };
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    Ok(Arc::new(config))
}

impl Termination {
    pub fn new(
        certs: Arc<CertStore>,
        tickets: Option<Arc<super::tickets::FileTicketer>>,
        front: GateApp,
        handshakes: IntCounter,
        handshake_failures: IntCounter,
    ) -> anyhow::Result<Self> {
        let acceptor = Acceptor::from_server_config(server_config(certs.clone(), tickets)?);
        let max_requests = front.max_requests();
        Ok(Termination {
            certs,
            acceptor,
            max_requests,
            front: Arc::new(front),
            handshakes,
            handshake_failures,
        })
    }

    /// Completes the handshake on `stream` (the hello is read already: it is given back to the
    /// TLS library first), then serves the connection's requests.
    pub async fn serve(
        &self,
        listener: &str,
        stream: Stream,
        hello: Hello,
        sni: &str,
        cert: Arc<HeldCert>,
        shutdown: &ShutdownWatch,
    ) {
        let client = crate::destination::ConnAddrs::peer(&stream);
        let Ok(l4) = stream
            .into_any()
            .downcast::<pingora::protocols::l4::stream::Stream>()
        else {
            // Only a plain TCP stream reaches a tls listener's handler.
            return;
        };
        let mut l4 = *l4;
        l4.rewind(&hello.bytes);
        drop(hello);
        let (life, end_watch) = ConnectionLife::new(self.max_requests);
        let callbacks = Attach {
            cert,
            life: life.clone(),
        };
        let handshake = pingora::protocols::tls::server::handshake_with_callback(
            &self.acceptor,
            l4,
            &callbacks,
        );
        let failed = |reason: &str, error: String| {
            self.handshake_failures.inc();
            tracing::info!(
                target: "icp_gate::tls",
                listener,
                client = client.map(|c| c.to_string()).unwrap_or_default(),
                sni,
                reason,
                error,
                "tls handshake failed"
            );
        };
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return failed("handshake_failed", e.to_string()),
            Err(_) => return failed("handshake_timeout", String::new()),
        };
        self.handshakes.inc();
        let h2 = matches!(tls.selected_alpn_proto(), Some(ALPN::H2));
        let stream: Stream = Box::new(tls);
        let mut next = if h2 {
            // The connection ends gracefully when its watch changes: when the server shuts
            // down or when its life is over.
            let served = self.front.serve_h2(stream, &end_watch);
            tokio::pin!(served);
            let mut server_shutdown = shutdown.clone();
            let mut passed_on = *server_shutdown.borrow();
            if passed_on {
                life.end();
            }
            loop {
                tokio::select! {
                    () = &mut served => break None,
                    changed = server_shutdown.changed(), if !passed_on => {
                        passed_on = true;
                        if changed.is_ok() {
                            life.end();
                        }
                    }
                }
            }
        } else {
            self.front.process_new(stream, shutdown).await
        };
        while let Some(stream) = next {
            next = self.front.process_new(stream, shutdown).await;
        }
    }
}

/// Puts the certificate a connection was served with, and its life, into its `SslDigest`.
struct Attach {
    cert: Arc<HeldCert>,
    life: Arc<ConnectionLife>,
}

#[async_trait::async_trait]
impl TlsAccept for Attach {
    async fn handshake_complete_callback(
        &self,
        _ssl: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        Some(Arc::new(Terminated {
            cert: self.cert.clone(),
            life: self.life.clone(),
        }))
    }
}
