//! The HTTP/1 front end of a gate listener.
//!
//! Pingora's proxy framework builds a header map, a session and a context for every request and
//! runs its phases one after the other; for a request the gate blocks, that costs several times
//! more than the decision itself (profile in `docs/performance.md`). So every connection is read
//! here first. A request whose framing leaves no doubt (no body, no upgrade, no `Expect`, an
//! origin-form target and exactly one `Host` that normalizes) is decided on the spot: a block is
//! answered in one write, and an HTTP/1.1 request the gate lets through is forwarded by
//! `forward`, on the front end's own kept-alive origin connections. Everything else (bodies,
//! upgrades, HTTP/1.0 forwards, anything unusual) goes to Pingora's proxy together with the bytes
//! read so far, which serves the connection from then on, and the same `Gate` decides it again
//! there.
//!
//! The front end also holds the limits Pingora 0.9 does not have: a deadline for a whole request
//! head (`header_read_timeout_seconds`, the slowloris limit) and a head size limit
//! (`max_header_bytes`), for every request of a connection, the first one included.
//!
//! One file per job, in the order a request meets them: this file (the connection's loop,
//! reading heads, the decision, logging), `classify` (parsing and sorting a head), `answer`
//! (block pages and the gate's plain answers), `forward` and `chunked` (forwarding a simple
//! request and relaying its answer, under `crate::policy`), `handoff` (a request for Pingora's
//! proxy), `io` (writes to the client).

use std::fmt::Write as _;
use std::os::unix::io::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use icp_gate_registry::{BlockReason, Host, InvalidHost};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::Sleep;

mod answer;
mod chunked;
mod classify;
mod forward;
mod h2;
mod handoff;
mod io;

use answer::{BlockHeads, LastBlock};
use classify::{parse, InvalidRequest, Parsed, SimpleRequest};
use forward::{upstream_head, Exchange, ToSend, Upstreams};
use io::write_all;

use crate::access_log::AccessRecord;
use crate::clock;
use crate::destination::ConnAddrs;
use crate::gate::{Decided, Gate, GateProxy, Outcome, RequestId};
use crate::log_line::ClientText;
use crate::metrics::BadRequest;
use crate::policy::{PlainAnswer, TargetRefusal};
use crate::socket::{linger_close, raw_fd};
use crate::tls::certs::HeldCert;
use crate::tls::terminate::Terminated;

/// Headers parsed per request; a head with more goes to Pingora (which allows 256).
const MAX_HEADERS: usize = 96;
/// How long a client may take to accept an answer before the gate drops it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A gate listener's connection handler: the front end, with Pingora's proxy behind it.
pub struct GateApp {
    gate: Arc<Gate>,
    proxy: Arc<HttpProxy<GateProxy>>,
    upstreams: Upstreams,
    header_timeout: Duration,
    max_header_bytes: usize,
    max_requests: u32,
    block_heads: BlockHeads,
    /// Test setting (`ICP_GATE_FORWARD_PATH=pingora`): every allowed request is forwarded by
    /// Pingora's proxy, none by the front end, so one transparency suite can run against both
    /// forwarding paths (`tests/e2e/transparency.rs`).
    pingora_forwards_all: bool,
}

impl GateApp {
    /// Requests a connection may carry over its life (`max_requests_per_connection`).
    pub fn max_requests(&self) -> u32 {
        self.max_requests
    }

    pub fn new(gate: Arc<Gate>, proxy: HttpProxy<GateProxy>) -> Self {
        GateApp {
            header_timeout: gate.listener.header_read_timeout,
            max_header_bytes: gate.listener.max_header_bytes,
            max_requests: gate.listener.max_requests_per_connection,
            upstreams: Upstreams::new(gate.upstream.clone()),
            block_heads: BlockHeads::new(),
            pingora_forwards_all: std::env::var("ICP_GATE_FORWARD_PATH").as_deref()
                == Ok("pingora"),
            gate,
            proxy: Arc::new(proxy),
        }
    }
}

/// One client connection while the front end holds it.
struct Conn {
    stream: Stream,
    /// Bytes read and not yet consumed: the current head, and anything pipelined behind it.
    buf: BytesMut,
    /// Answers the front end writes (other than blocks) and the origin's answers relayed.
    out: Vec<u8>,
    /// The last block answer, kept for the next (see `LastBlock`).
    block: LastBlock,
    /// The current request's host, written in place by `parse` (see `resolve_host_into`).
    host: Host,
    shown_host: String,
    /// The current request's path, for the access log (only when it logs paths).
    path: Vec<u8>,
    /// The request head for the origin, and the origin's bytes on their way.
    up_head: Vec<u8>,
    up_buf: BytesMut,
    /// The client's address, looked up once when first needed, and its IP as text for
    /// `X-Forwarded-For`.
    client: Option<Option<std::net::SocketAddr>>,
    client_ip: String,
    /// The client's address as log lines write it, made at the connection's first line.
    client_text: Option<ClientText>,
    /// Requests answered on this connection so far.
    served: u32,
    /// The server's shutdown signal: a connection idle between requests closes at once when it
    /// changes. A watch channel remembers the change, so a connection that was busy when it
    /// came still sees it at its next wait (a `Notify` wakes only those waiting then).
    shutdown: ShutdownWatch,
    /// The connection's one timer for its waits (see `read_head`).
    timer: Pin<Box<Sleep>>,
    /// The plain TCP socket under `stream`, for direct writes (None for TLS).
    fd: Option<RawFd>,
    /// The connection's addresses, read once when a forward first needs them.
    addrs: Option<ConnAddrs>,
    /// On a TLS connection the gate terminated: the certificate it was served with.
    terminated: Option<Arc<HeldCert>>,
}

impl Conn {
    fn client(&mut self) -> Option<std::net::SocketAddr> {
        let stream = &self.stream;
        *self.client.get_or_insert_with(|| {
            stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
        })
    }
}

/// What an access line says about one request the front end answered.
struct LogLine<'a> {
    method: &'static str,
    http11: bool,
    /// Whether `Conn::host` holds the request's host.
    has_host: bool,
    invalid: Option<InvalidHost>,
    decided: Decided,
    status: u16,
    started: Instant,
    id: RequestId,
    error: Option<&'a pingora::Error>,
}

impl<'a> LogLine<'a> {
    fn new(
        req: &'a SimpleRequest,
        decided: Decided,
        status: u16,
        started: Instant,
        id: RequestId,
    ) -> Self {
        LogLine {
            method: req.method,
            http11: req.http11,
            has_host: true,
            invalid: None,
            decided,
            status,
            started,
            id,
            error: None,
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Head {
    Simple(SimpleRequest),
    InvalidHost(InvalidRequest),
    /// A target or method the gate does not serve (`policy::check_target`); whether it was a
    /// HEAD.
    Refused(TargetRefusal, bool),
    Complex,
    TooLarge,
    TimedOut,
    /// The client closed (or the connection failed) between requests.
    Closed,
}

#[async_trait]
impl ServerApp for GateApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let fd = raw_fd(&stream);
        let terminated = Terminated::of(&stream);
        let mut c = Conn {
            terminated,
            stream,
            fd,
            buf: BytesMut::with_capacity(4096),
            out: Vec::new(),
            block: LastBlock::default(),
            host: Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into()),
            shown_host: String::new(),
            path: Vec::new(),
            up_head: Vec::new(),
            up_buf: BytesMut::new(),
            client: None,
            client_ip: String::new(),
            client_text: None,
            served: 0,
            shutdown: shutdown.clone(),
            addrs: None,
            timer: Box::pin(tokio::time::sleep_until(
                (accepted + self.header_timeout).into(),
            )),
        };
        // When the last request began: the keep-alive wait is counted from it.
        let mut since = accepted;
        loop {
            let first_deadline = (c.served == 0).then(|| accepted + self.header_timeout);
            match self.read_head(&mut c, first_deadline, since).await {
                Head::Simple(req) => {
                    // The request's duration (a histogram, and the access line) needs the
                    // precise clock.
                    let started = Instant::now();
                    since = started;
                    if self.gate.access_log.wants_path() {
                        c.path.clear();
                        c.path.extend_from_slice(&c.buf[req.path.clone()]);
                    }
                    let decided = self.gate.decide(&c.host);
                    let outcome = decided.outcome;
                    let open = match outcome {
                        // On a terminated connection an allowed Host its certificate does not
                        // cover is misdirected (RFC 9110 §15.5.20): the client retries on a
                        // connection of its own. An unfiled Host gets the block page instead.
                        Outcome::Allowed | Outcome::Monitored(_)
                            if !self.gate.covered(c.terminated.as_deref(), &c.host) =>
                        {
                            let keep_alive = self.keep_alive(&mut c, &req, shutdown);
                            self.gate.counters.bad[BadRequest::Misdirected as usize].inc();
                            c.buf.advance(req.head_len);
                            let answer = PlainAnswer::Misdirected;
                            let id = self.gate.request_ids.next_id();
                            let written = self
                                .answer_plain(&mut c, answer, Some(id), keep_alive, req.head_only)
                                .await;
                            self.log(
                                &mut c,
                                LogLine::new(&req, decided, answer.status(), started, id),
                            );
                            written && keep_alive
                        }
                        Outcome::Blocked(reason) => {
                            let keep_alive = self.keep_alive(&mut c, &req, shutdown);
                            // Counted before the answer leaves: a client that reads the
                            // metrics after its answer must see its request in them.
                            self.gate.count(outcome, Some(&c.host));
                            let (written, id) =
                                self.answer_block(&mut c, &req, reason, keep_alive).await;
                            c.buf.advance(req.head_len);
                            let status = reason.http_status();
                            self.log(&mut c, LogLine::new(&req, decided, status, started, id));
                            written && keep_alive
                        }
                        Outcome::Allowed | Outcome::Monitored(_)
                            if req.http11
                                && !self.pingora_forwards_all
                                && !(c.terminated.is_some() && self.gate.listener.upstream_tls) =>
                        {
                            let keep_alive = self.keep_alive(&mut c, &req, shutdown);
                            self.gate.count(outcome, Some(&c.host));
                            let open = self
                                .forward(&mut c, &req, decided, keep_alive, started)
                                .await;
                            // An origin may take its time: the idle wait starts after it.
                            since = clock::coarse_now();
                            open
                        }
                        // HTTP/1.0 forwards (the answer may need re-framing) and not ready:
                        // Pingora's to do.
                        _ => {
                            match self.pass_one(c, shutdown).await {
                                Some(back) => c = back,
                                None => return None,
                            }
                            since = clock::coarse_now();
                            continue;
                        }
                    };
                    if !open {
                        linger_close(c.stream).await;
                        return None;
                    }
                }
                Head::InvalidHost(req) => {
                    // Not a filing decision: refused in monitor mode too. A request the gate
                    // could not read may be the start of a desynchronised stream, so the
                    // connection ends here.
                    let started = Instant::now();
                    let outcome = Outcome::Blocked(BlockReason::InvalidHost);
                    c.served += 1;
                    c.path.clear();
                    c.shown_host.clear();
                    c.shown_host.push_str(&req.shown);
                    self.gate.count(outcome, None);
                    let (written, id) = self
                        .write_block(
                            &mut c,
                            BlockReason::InvalidHost,
                            Some(req.invalid.describe()),
                            req.json,
                            req.head_only,
                            false,
                        )
                        .await;
                    self.log(
                        &mut c,
                        LogLine {
                            method: req.method,
                            http11: req.http11,
                            has_host: false,
                            invalid: Some(req.invalid),
                            decided: Decided::without_lookup(outcome),
                            status: 400,
                            started,
                            id,
                            error: None,
                        },
                    );
                    if written {
                        linger_close(c.stream).await;
                    }
                    return None;
                }
                Head::Complex => match self.pass_one(c, shutdown).await {
                    Some(back) => {
                        c = back;
                        since = clock::coarse_now();
                    }
                    None => return None,
                },
                Head::TooLarge => {
                    self.gate.counters.bad[BadRequest::HeadTooLarge as usize].inc();
                    let answer = PlainAnswer::HeadTooLarge;
                    if self.answer_plain(&mut c, answer, None, false, false).await {
                        linger_close(c.stream).await;
                    }
                    return None;
                }
                Head::Refused(refusal, head_only) => {
                    // Not a request the gate serves: answered, and the connection ends (what
                    // follows may not be framed as the client meant).
                    let (reason, answer) = match refusal {
                        TargetRefusal::BadTarget => (BadRequest::BadTarget, PlainAnswer::BadTarget),
                        TargetRefusal::Connect => (BadRequest::Connect, PlainAnswer::Connect),
                    };
                    self.gate.counters.bad[reason as usize].inc();
                    if self
                        .answer_plain(&mut c, answer, None, false, head_only)
                        .await
                    {
                        linger_close(c.stream).await;
                    }
                    return None;
                }
                Head::TimedOut => {
                    self.gate.counters.bad[BadRequest::HeadTimeout as usize].inc();
                    return None;
                }
                Head::Closed => return None,
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl GateApp {
    /// Counts the request as served and says whether the connection stays open after it.
    fn keep_alive(&self, c: &mut Conn, req: &SimpleRequest, shutdown: &ShutdownWatch) -> bool {
        c.served += 1;
        req.keep_alive
            && self.gate.listener.keepalive_timeout.is_some()
            && c.served < self.max_requests
            && !*shutdown.borrow()
    }

    /// Forwards an allowed request and relays the answer; false when the connection ends.
    async fn forward(
        &self,
        c: &mut Conn,
        req: &SimpleRequest,
        decided: Decided,
        keep_alive: bool,
        started: Instant,
    ) -> bool {
        let id = self.gate.request_ids.next_id();
        if c.client_ip.is_empty() {
            let ip = match c.client() {
                Some(addr) => addr.ip(),
                None => std::net::IpAddr::from([0, 0, 0, 0]),
            };
            let _ = write!(c.client_ip, "{ip}");
        }
        let built = upstream_head(
            &c.buf[..req.head_len],
            &c.host,
            c.terminated.is_some(),
            &c.client_ip,
            id.as_str(),
            &mut c.up_head,
        );
        c.buf.advance(req.head_len);
        if built.is_err() {
            // Unreachable: the same bytes parsed a moment ago.
            return false;
        }
        let destinations = &self.gate.destinations;
        let addrs = *c.addrs.get_or_insert_with(|| {
            ConnAddrs::of(&c.stream, destinations.is_original_destination())
        });
        let candidates = match self.candidates(destinations, &addrs, &id) {
            Ok(candidates) => candidates,
            Err(error) => {
                let line = LogLine::new(req, decided, 0, started, id);
                return self.fail(c, PlainAnswer::BadGateway, line, &error).await;
            }
        };
        let exchange = Exchange {
            to_send: ToSend {
                candidates: &candidates,
                method: req.method.as_bytes(),
                upstreams: &self.upstreams,
                request: &c.up_head,
                head_request: req.head_only,
                close_client: !keep_alive,
            },
            up_buf: &mut c.up_buf,
            out: &mut c.out,
        };
        match exchange.run(&mut c.stream, WRITE_TIMEOUT).await {
            Ok(relayed) => {
                self.log(c, LogLine::new(req, decided, relayed.status, started, id));
                relayed.client_open
            }
            Err(e) => {
                let (answer, error) = self.upstream_failed(e, &id);
                let line = LogLine::new(req, decided, 0, started, id);
                self.fail(c, answer, line, &error).await
            }
        }
    }

    /// Where an allowed request may go; Err (counted and logged): the error it is answered
    /// with (502).
    fn candidates<'d>(
        &self,
        destinations: &'d crate::destination::Destinations,
        addrs: &ConnAddrs,
        id: &RequestId,
    ) -> Result<crate::destination::Candidates<'d>, Box<pingora::Error>> {
        destinations.candidates(addrs).map_err(|e| {
            self.gate.counters.destination_error(e);
            tracing::warn!(
                listener = self.gate.listener.name,
                request_id = id.as_str(),
                reason = e.reason(),
                error = %e,
                "request not forwarded"
            );
            pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, e.to_string())
        })
    }

    /// A forward that failed before any byte reached the client, counted and logged: the
    /// gate's answer (502, or 504 when the origin was silent) and the error for the access line.
    fn upstream_failed(
        &self,
        e: forward::UpstreamError,
        id: &RequestId,
    ) -> (PlainAnswer, Box<pingora::Error>) {
        if matches!(e, forward::UpstreamError::Connect(..)) {
            self.gate.counters.connect_failed();
        }
        tracing::warn!(
            listener = self.gate.listener.name,
            request_id = id.as_str(),
            error = %e,
            "forwarding failed"
        );
        let (answer, etype) = match e {
            forward::UpstreamError::Timeout => (
                PlainAnswer::GatewayTimeout,
                pingora::ErrorType::ReadTimedout,
            ),
            forward::UpstreamError::Connect(..) => {
                (PlainAnswer::BadGateway, pingora::ErrorType::ConnectError)
            }
            _ => (
                PlainAnswer::BadGateway,
                pingora::ErrorType::InvalidHTTPHeader,
            ),
        };
        (answer, pingora::Error::explain(etype, e.to_string()))
    }

    /// Answers a request the gate could not forward with its own error answer, logs it, and
    /// ends the connection (on both paths, the client's connection ends after a 502 or 504).
    async fn fail(
        &self,
        c: &mut Conn,
        answer: PlainAnswer,
        line: LogLine<'_>,
        error: &pingora::Error,
    ) -> bool {
        let head_only = line.method == "HEAD";
        self.answer_plain(c, answer, Some(line.id), false, head_only)
            .await;
        self.log(
            c,
            LogLine {
                error: Some(error),
                status: answer.status(),
                ..line
            },
        );
        false
    }

    /// Reads until the buffer holds a complete head (or the limits end the connection).
    /// `first_deadline` is set for a connection's first request: its head must be complete
    /// that long after the accept. Later requests may wait the keep-alive timeout for their
    /// first byte, then have `header_timeout` from it.
    async fn read_head(
        &self,
        c: &mut Conn,
        first_deadline: Option<Instant>,
        since: Instant,
    ) -> Head {
        let mut deadline = first_deadline;
        loop {
            if !c.buf.is_empty() {
                match parse(&c.buf, &mut c.host) {
                    Parsed::Simple(req) => return Head::Simple(req),
                    Parsed::InvalidHost(req) => return Head::InvalidHost(req),
                    Parsed::Refused(refusal, head_only) => {
                        return Head::Refused(refusal, head_only)
                    }
                    Parsed::Complex => return Head::Complex,
                    Parsed::Partial => {}
                }
                if c.buf.len() >= self.max_header_bytes {
                    return Head::TooLarge;
                }
                deadline.get_or_insert_with(|| Instant::now() + self.header_timeout);
            }
            let idle = deadline.is_none();
            let wait_until = match deadline {
                Some(d) => d,
                // Idle between requests, counted from the start of the last one (close enough,
                // and it costs no clock read). Keep-alive off means no second request at all.
                None => match self.gate.listener.keepalive_timeout {
                    Some(keepalive) => since + keepalive,
                    None => return Head::Closed,
                },
            };
            // One timer per connection, moved only when it would fire late: re-arming a
            // timer for every request costs more than the rest of the wait.
            if c.timer.deadline() > wait_until.into() {
                c.timer.as_mut().reset(wait_until.into());
            }
            if idle && *c.shutdown.borrow() {
                return Head::Closed;
            }
            if c.buf.capacity() - c.buf.len() < 1024 {
                c.buf.reserve(4096);
            }
            // Never more than `max_header_bytes` held before a head is complete: a head that
            // does not fit is refused even when it would arrive in one read.
            let room = self.max_header_bytes.saturating_sub(c.buf.len()).max(1);
            let mut limited = (&mut c.stream).take(room as u64);
            let read = limited.read_buf(&mut c.buf);
            let read = if idle {
                // Between requests a shutting-down gate stops waiting at once (in-flight
                // requests are not affected: they are not here).
                tokio::select! {
                    biased;
                    read = read => Some(read),
                    _ = c.timer.as_mut() => None,
                    _ = c.shutdown.changed() => return Head::Closed,
                }
            } else {
                tokio::select! {
                    biased;
                    read = read => Some(read),
                    _ = c.timer.as_mut() => None,
                }
            };
            match read {
                Some(Ok(0)) | Some(Err(_)) => return Head::Closed,
                Some(Ok(_)) => {}
                // The timer was set for an earlier wait: this one is not over yet.
                None if Instant::now() < wait_until => c.timer.as_mut().reset(wait_until.into()),
                // Quiet between requests is the keep-alive timeout, not an offence.
                None if idle => return Head::Closed,
                None => return Head::TimedOut,
            }
        }
    }

    /// Counts the request's duration and writes its access line.
    fn log(&self, c: &mut Conn, line: LogLine<'_>) {
        let took = line.started.elapsed();
        self.gate.counters.request_took(line.decided.outcome, took);
        if !self.gate.access_log.logs(line.decided.outcome) {
            return;
        }
        let client = c.client();
        if c.client_text.is_none() {
            c.client_text = client.map(ClientText::new);
        }
        let c = &*c;
        let shown = &c.shown_host;
        self.gate.access_log.record(
            AccessRecord {
                listener: &self.gate.listener.name,
                client,
                client_text: c.client_text.as_ref(),
                method: line.method,
                path: &c.path,
                version: if line.http11 { "1.1" } else { "1.0" },
                host: line.has_host.then_some(&c.host),
                invalid: line.invalid,
                decided: line.decided,
                status: line.status,
                started: line.started,
                request_id: Some(line.id.as_str()),
                error: line.error,
            },
            || shown.clone(),
        );
    }
}
