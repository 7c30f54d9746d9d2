//! HTTP/2 on terminated TLS connections.
//!
//! Pingora's HTTP/2 session reads each stream, with its checks (control bytes in `:path`,
//! conflicting `Content-Length`, a budget of malformed streams) and the connection's limits
//! (`tls::terminate::h2_options`). The connection's accept loop is here, as Pingora's is in
//! `HttpServerApp::process_new`: graceful shutdown, the idle timeout, and the connection's
//! life (`max_requests_per_connection`) counted per stream.
//!
//! A stream the front end can serve alone, a GET or HEAD without a body whose Host is allowed
//! and covered by the connection's certificate, is forwarded on the front end's kept-alive
//! origin connections (`forward::ToSend`), as HTTP/1.1 requests are, and its answer relayed as
//! an HTTP/2 response. Pingora's proxy per stream (a session, the proxy phases, its own
//! upstream pool) costs several times the decision; the profile is in `docs/performance.md`.
//! Every other stream (blocks, 421s, bodies, other methods, `ICP_GATE_FORWARD_PATH=pingora`,
//! `upstream_tls`) goes to Pingora's proxy with the same `GateProxy`, which decides it again.
//! What the origin receives comes from `gate::upstream_fields` on both paths; what the client
//! gets from `forward::response_head` and Pingora's HTTP/2 writer on both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderName, HeaderValue};
use icp_gate_registry::Host;
use pingora::apps::HttpServerApp;
use pingora::http::ResponseHeader;
use pingora::protocols::http::v2::server::{handshake, H2Accept, HttpSession as H2Session};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;

use super::forward::{
    read_more, upstream_head_from_parts, Answered, Framing, HeadSink, ToSend, UpstreamError,
};
use super::GateApp;
use crate::access_log::AccessRecord;
use crate::destination::ConnAddrs;
use crate::gate::{request_host, Decided, Outcome, RequestId};
use crate::policy::{check_target, PlainAnswer};
use crate::tls::certs::HeldCert;
use crate::tls::terminate::{h2_options, Terminated};

/// Streams rejected while being accepted (see `H2Accept::Rejected`) before the connection is
/// closed, as Pingora's own accept loop allows.
const MAX_REJECTED_STREAMS: usize = 32;

/// What every stream of one connection shares.
struct H2Conn {
    addrs: ConnAddrs,
    client: Option<SocketAddr>,
    /// The client's IP address as `X-Forwarded-For` gives it.
    client_ip: String,
    cert: Option<Arc<HeldCert>>,
}

/// A forwarded stream's buffers: the origin's request head, the origin's bytes, and body bytes
/// on their way to the client.
#[derive(Default)]
struct Buffers {
    request: Vec<u8>,
    up: BytesMut,
    data: Vec<u8>,
}

/// Spare buffers kept per thread for the next streams (a stream would otherwise allocate and
/// free them each time), and the most a kept buffer may hold: at most 64 x 3 x 32 KiB per
/// thread, nothing per connection.
const SPARE_BUFFERS: usize = 64;
const SPARE_BUFFER_BYTES: usize = 32 * 1024;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers {
    fn take() -> Buffers {
        SPARE
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_default()
    }

    fn give_back(self) {
        let small = self.request.capacity() <= SPARE_BUFFER_BYTES
            && self.up.capacity() <= SPARE_BUFFER_BYTES
            && self.data.capacity() <= SPARE_BUFFER_BYTES;
        if small {
            SPARE.with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_BUFFERS {
                    spare.push(self);
                }
            });
        }
    }
}

impl GateApp {
    /// Serves an HTTP/2 connection (ALPN `h2` on a terminated TLS connection) until it ends.
    /// `shutdown` ends it gracefully (GOAWAY; streams in flight finish).
    pub async fn serve_h2(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let digest = Arc::new(Digest {
            ssl_digest: stream.get_ssl_digest(),
            timing_digest: stream.get_timing_digest(),
            proxy_digest: stream.get_proxy_digest(),
            socket_digest: stream.get_socket_digest(),
        });
        let terminated = digest
            .ssl_digest
            .as_deref()
            .and_then(|d| d.extension.get::<Terminated>());
        let life = terminated.map(|t| t.life.clone());
        let client = ConnAddrs::peer(&stream);
        let conn = Arc::new(H2Conn {
            addrs: ConnAddrs::of(&stream, self.gate.destinations.is_original_destination()),
            client,
            client_ip: match client {
                Some(addr) => addr.ip().to_string(),
                None => "0.0.0.0".to_owned(),
            },
            cert: terminated.map(|t| t.cert.clone()),
        });
        let mut h2 = match handshake(stream, Some(h2_options())).await {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!(error = %e, "h2 handshake failed");
                return;
            }
        };
        let idle_timeout = self.gate.listener.keepalive_timeout;
        // Idle with no stream in flight for this long: the socket closes at once.
        let idle = tokio::time::sleep(idle_timeout.unwrap_or_default());
        tokio::pin!(idle);
        let mut watch = shutdown.clone();
        let mut shutting_down = *watch.borrow();
        if shutting_down {
            h2.graceful_shutdown();
        }
        // The connection's streams run in its own task, beside the reads and writes of the
        // connection (no task, and no wake-up between tasks, per stream).
        let mut streams = FuturesUnordered::new();
        let mut rejected = 0;
        loop {
            let accepted = tokio::select! {
                // The signal first, so that one that came with a stream is seen at once;
                // `from_h2_conn` is cancel-safe.
                biased;
                _ = watch.changed(), if !shutting_down => {
                    h2.graceful_shutdown();
                    shutting_down = true;
                    continue;
                }
                Some(()) = streams.next(), if !streams.is_empty() => {
                    if streams.is_empty() {
                        if let Some(timeout) = idle_timeout {
                            idle.as_mut().reset((Instant::now() + timeout).into());
                        }
                    }
                    continue;
                }
                accepted = H2Session::from_h2_conn(&mut h2, digest.clone()) => accepted,
                () = &mut idle, if idle_timeout.is_some() && streams.is_empty() && !shutting_down => return,
            };
            match accepted {
                // A client that just disconnects is common: not worth a log line.
                Err(_) | Ok(None) => return,
                Ok(Some(H2Accept::Rejected)) => {
                    rejected += 1;
                    if rejected > MAX_REJECTED_STREAMS {
                        return;
                    }
                }
                Ok(Some(H2Accept::Session(session))) => {
                    // The stream that reaches the limit is served; the watch then ends the
                    // connection (GOAWAY naming the last stream).
                    if let Some(life) = &life {
                        life.count_request();
                    }
                    streams.push(self.serve_stream(session, &conn, shutdown));
                }
            }
        }
    }

    async fn serve_stream(&self, mut s: H2Session, conn: &H2Conn, shutdown: &ShutdownWatch) {
        let started = Instant::now();
        if let Some((host, decided)) = self.serves_alone(&mut s, conn) {
            return self.forward_h2(s, conn, host, decided, started).await;
        }
        let session = ServerSession::new_http2(s);
        // Pingora's proxy gives nothing back for an HTTP/2 stream. Boxed: the future is large,
        // and every stream's future would be as large.
        let _ = Box::pin(self.proxy.process_new_http(session, shutdown)).await;
    }

    /// The stream's Host and decision when the front end forwards it alone (see the module).
    fn serves_alone(&self, s: &mut H2Session, conn: &H2Conn) -> Option<(Host, Decided)> {
        if self.pingora_forwards_all || self.gate.listener.upstream_tls || !s.is_body_empty() {
            return None;
        }
        let req = s.req_header();
        let method = &req.method;
        if method != http::Method::GET && method != http::Method::HEAD {
            return None;
        }
        // An origin-form `:path` (anything else is Pingora's to rewrite).
        if req.raw_path().first() != Some(&b'/') {
            return None;
        }
        check_target(method.as_str().as_bytes(), req.raw_path()).ok()?;
        let host = request_host(req).ok()?;
        let decided = self.gate.decide(&host);
        match decided.outcome {
            Outcome::Allowed | Outcome::Monitored(_)
                if self.gate.covered(conn.cert.as_deref(), &host) =>
            {
                Some((host, decided))
            }
            _ => None,
        }
    }

    async fn forward_h2(
        &self,
        mut s: H2Session,
        conn: &H2Conn,
        host: Host,
        decided: Decided,
        started: Instant,
    ) {
        self.gate.count(decided.outcome, Some(&host));
        let id = self.gate.request_ids.next_id();
        let head_only = s.req_header().method == http::Method::HEAD;
        let line = H2Line {
            host: &host,
            decided,
            started,
            id: &id,
        };
        let mut bufs = Buffers::take();
        upstream_head_from_parts(
            s.req_header(),
            &host,
            &conn.client_ip,
            id.as_str(),
            &mut bufs.request,
        );
        let candidates = match self.candidates(&self.gate.destinations, &conn.addrs, &id) {
            Ok(candidates) => candidates,
            Err(error) => {
                return self
                    .fail_h2(s, conn, &line, PlainAnswer::BadGateway, &error)
                    .await;
            }
        };
        let to_send = ToSend {
            candidates: &candidates,
            method: s.req_header().method.as_str().as_bytes(),
            upstreams: &self.upstreams,
            request: &bufs.request,
            head_request: head_only,
            close_client: false,
        };
        let mut head = H2Head::default();
        let answered = to_send.send(&mut bufs.up, &mut head).await;
        let answered = match (answered, head.header.take()) {
            (Ok(answered), Some(header)) => Ok((answered, header)),
            // A final status `http` refuses (`H2Head::start`).
            (Ok(_), None) => Err(UpstreamError::BadResponse(
                "response status not valid in HTTP/2",
            )),
            (Err(e), _) => Err(e),
        };
        let answered = match answered {
            Ok(answered) => answered,
            Err(e) => {
                let (answer, error) = self.upstream_failed(e, &id);
                return self.fail_h2(s, conn, &line, answer, &error).await;
            }
        };
        let status = answered.1.status.as_u16();
        let error = self
            .relay_h2(&mut s, answered.0, answered.1, &mut bufs)
            .await
            .err();
        bufs.give_back();
        self.log_h2(&s, conn, &line, status, error.as_deref());
    }

    /// Relays the origin's answer to the stream. Err: the answer was cut short (the stream is
    /// reset when `s` is dropped unfinished).
    async fn relay_h2(
        &self,
        s: &mut H2Session,
        answered: Answered,
        header: ResponseHeader,
        bufs: &mut Buffers,
    ) -> Result<(), Box<pingora::Error>> {
        let Buffers { up: buf, data, .. } = bufs;
        let Answered {
            mut up,
            mut head,
            server,
        } = answered;
        let read_timeout = self.upstreams.read_timeout();
        data.clear();
        let (n, done) =
            take_body(&mut head.framing, &buf[head.head_len..], data).map_err(upstream_error)?;
        let mut extra = head.head_len + n < buf.len();
        if done && data.is_empty() {
            s.write_response_header(Box::new(header), true)?;
        } else {
            s.write_response_header(Box::new(header), false)?;
            let mut done = done;
            if !data.is_empty() || done {
                s.write_body(take_bytes(data), done).await?;
            }
            while !done {
                if read_more(&mut up, buf, read_timeout).await == 0 {
                    // A close-delimited body ends here; any other was cut short.
                    if matches!(head.framing, Framing::UntilClose) {
                        s.write_body(Bytes::new(), true).await?;
                        return Ok(());
                    }
                    return Err(upstream_error(UpstreamError::BadResponse(
                        "response body cut short",
                    )));
                }
                let (n, now_done) =
                    take_body(&mut head.framing, buf, data).map_err(upstream_error)?;
                extra = n < buf.len();
                done = now_done;
                if !data.is_empty() || done {
                    s.write_body(take_bytes(data), done).await?;
                }
            }
        }
        if head.reusable && !extra {
            self.upstreams.put(server, up);
        }
        Ok(())
    }

    /// Answers a stream the gate could not forward with its own error answer, and logs it.
    async fn fail_h2(
        &self,
        mut s: H2Session,
        conn: &H2Conn,
        line: &H2Line<'_>,
        answer: PlainAnswer,
        error: &pingora::Error,
    ) {
        let head_only = s.req_header().method == http::Method::HEAD;
        let body = answer.body();
        let written = (|| {
            let mut resp = ResponseHeader::build(answer.status(), Some(answer.fields().len() + 3))?;
            for (name, value) in answer.fields() {
                resp.append_header(*name, *value)?;
            }
            resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            resp.insert_header(crate::gate::REQUEST_ID_HEADER, line.id.as_str())?;
            s.write_response_header(Box::new(resp), head_only)
        })();
        if written.is_ok() && !head_only {
            let _ = s
                .write_body(Bytes::from_static(body.as_bytes()), true)
                .await;
        }
        self.log_h2(&s, conn, line, answer.status(), Some(error));
    }

    /// Counts the request's duration and writes its access line (and audit line).
    fn log_h2(
        &self,
        s: &H2Session,
        conn: &H2Conn,
        line: &H2Line<'_>,
        status: u16,
        error: Option<&pingora::Error>,
    ) {
        let outcome = line.decided.outcome;
        self.gate
            .counters
            .request_took(outcome, line.started.elapsed());
        if !self.gate.access_log.logs(outcome) {
            return;
        }
        let req = s.req_header();
        let path = if self.gate.access_log.wants_path() {
            let raw = req.raw_path();
            &raw[..memchr::memchr(b'?', raw).unwrap_or(raw.len())]
        } else {
            &[]
        };
        self.gate.access_log.record(
            AccessRecord {
                listener: &self.gate.listener.name,
                client: conn.client,
                client_text: None,
                method: req.method.as_str(),
                path,
                version: "2",
                host: Some(line.host),
                invalid: None,
                decided: line.decided,
                status,
                started: line.started,
                request_id: Some(line.id.as_str()),
                error,
            },
            || line.host.to_string(),
        );
    }
}

/// What the access line of a forwarded stream says.
struct H2Line<'a> {
    host: &'a Host,
    decided: Decided,
    started: Instant,
    id: &'a RequestId,
}

/// The body bytes of `bytes` (decoded when chunked) appended to `data`: how many of `bytes`
/// belonged to the body, and whether it is complete.
fn take_body(
    framing: &mut Framing,
    bytes: &[u8],
    data: &mut Vec<u8>,
) -> Result<(usize, bool), UpstreamError> {
    let n = match &mut *framing {
        Framing::Chunked(t) => t
            .feed_data(bytes, data)
            .map_err(|_| UpstreamError::BadResponse("broken chunked framing"))?,
        other => {
            let n = other.take(bytes)?;
            data.extend_from_slice(&bytes[..n]);
            n
        }
    };
    Ok((n, framing.done()))
}

/// The bytes of `data` for the client (h2 holds them until they are sent), leaving `data`
/// empty with its capacity for the next.
fn take_bytes(data: &mut Vec<u8>) -> Bytes {
    let bytes = Bytes::copy_from_slice(data);
    data.clear();
    bytes
}

fn upstream_error(e: UpstreamError) -> Box<pingora::Error> {
    pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, e.to_string())
}

/// The client's version of the origin's response head as an HTTP/2 response. Interim (1xx)
/// answers are not relayed: Pingora's HTTP/2 writer sends one response head per stream.
#[derive(Default)]
struct H2Head {
    header: Option<ResponseHeader>,
    interim: bool,
}

impl HeadSink for H2Head {
    fn start(&mut self, status: u16, _reason: &str) {
        self.interim = (100..200).contains(&status);
        if !self.interim {
            self.header = ResponseHeader::build_no_case(status, Some(12)).ok();
        }
    }

    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError> {
        if self.interim {
            return Ok(());
        }
        let invalid = || UpstreamError::BadResponse("response field not valid in HTTP/2");
        let header = self.header.as_mut().ok_or_else(invalid)?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        let value = HeaderValue::from_bytes(value).map_err(|_| invalid())?;
        header.append_header(name, value).map_err(|_| invalid())?;
        Ok(())
    }

    fn finish(&mut self, _status: u16, _rechunk: bool, _close_client: bool) {}

    fn held(&self) -> usize {
        0
    }

    fn reset(&mut self) {
        self.header = None;
    }
}
