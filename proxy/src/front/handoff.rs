//! Handing a request to Pingora's proxy: the bytes read so far are the start of its session,
//! and the connection comes back to the front end for its next request.

use std::sync::Arc;

use bytes::BytesMut;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

use super::{Conn, GateApp};

impl GateApp {
    /// Lets Pingora's proxy serve the next request of the connection (the bytes already read
    /// are its start), then takes the connection back when Pingora keeps it open.
    ///
    /// Pingora's HTTP/1.1 pipelining stays off: then a connection it hands back has nothing
    /// read ahead (bytes pipelined behind this request make Pingora close it after its answer,
    /// which RFC 9112 §9.3.2 allows), so the front end can read the next request itself, under
    /// its own limits.
    pub(super) async fn pass_one(
        self: &Arc<Self>,
        mut c: Conn,
        shutdown: &ShutdownWatch,
    ) -> Option<Conn> {
        let buf = std::mem::take(&mut c.buf);
        let mut session = ServerSession::new_http1(c.stream);
        if let ServerSession::H1(h1) = &mut session {
            if !buf.is_empty() {
                h1.set_pipelined_prefix(buf);
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            // The head is already here; Gate sets the keep-alive time per request.
            session.set_keepalive(Some(self.header_timeout.as_secs().max(1)));
        }
        // Pingora counts reuses after this request: a connection serves `max_requests` in all.
        session.set_keepalive_reuses_remaining(Some(
            self.max_requests.saturating_sub(c.served).saturating_sub(1),
        ));
        let (stream, _settings) = self
            .proxy
            .process_new_http(session, shutdown)
            .await?
            .consume();
        c.stream = stream;
        c.buf = BytesMut::with_capacity(4096);
        c.served += 1;
        Some(c)
    }
}
