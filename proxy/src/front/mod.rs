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

use std::fmt::Write as _;
use std::os::unix::io::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use icp_gate_registry::{BlockReason, Host, InvalidHost};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Sleep;

mod chunked;
mod forward;

use forward::{upstream_head, Exchange, Upstreams};

use crate::access_log::AccessRecord;
use crate::block_page::{wants_json, HTML_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::clock;
use crate::destination::ConnAddrs;
use crate::gate::{resolve_host_into, Gate, GateProxy, Outcome, RequestId, CSP};
use crate::metrics::BadRequest;
use crate::policy::{check_target, PlainAnswer, TargetRefusal};
use crate::socket::{linger_close, raw_fd};

/// Headers parsed per request; a head with more goes to Pingora (which allows 256).
const MAX_HEADERS: usize = 96;
/// How long a client may take to accept an answer before the gate drops it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_SHARDS: usize = 16;

/// A gate listener's connection handler: the front end, with Pingora's proxy behind it.
pub struct GateApp {
    gate: Arc<Gate>,
    proxy: Arc<HttpProxy<GateProxy>>,
    upstreams: Upstreams,
    /// Woken at shutdown, so idle kept-alive connections close at once; sharded so that the
    /// threads do not all queue on one lock.
    stopping: [Notify; STOP_SHARDS],
    header_timeout: Duration,
    max_header_bytes: usize,
    max_requests: u32,
    block_heads: BlockHeads,
    /// Test setting (`ICP_GATE_FORWARD_PATH=pingora`): every allowed request is forwarded by
    /// Pingora's proxy, none by the front end, so one transparency suite can run against both
    /// forwarding paths (`tests/e2e/transparency.rs`).
    pingora_forwards_all: bool,
}

/// The fixed runs of a block answer's head, joined once at start so that a block copies a few
/// long pieces around its own values (length, request id, date).
struct BlockHeads {
    by_reason: [BlockHead; 6],
    /// From the end of the request id up to the `Date` value.
    before_date: Vec<u8>,
}

struct BlockHead {
    /// Status line up to the `Content-Length` value, for the HTML page and for JSON.
    html_start: Vec<u8>,
    json_start: Vec<u8>,
    /// From the end of the length up to the request id.
    before_id: Vec<u8>,
}

impl BlockHeads {
    fn new() -> Self {
        let start = |reason: BlockReason, content_type: &str| {
            let status = match reason.http_status() {
                400 => "400 Bad Request",
                _ => "403 Forbidden",
            };
            format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: ")
                .into_bytes()
        };
        BlockHeads {
            by_reason: BlockReason::ALL.map(|reason| BlockHead {
                html_start: start(reason, HTML_CONTENT_TYPE),
                json_start: start(reason, JSON_CONTENT_TYPE),
                before_id: format!(
                    "\r\nCache-Control: no-store\r\nX-ICP-Block-Reason: {}\r\nX-Request-Id: ",
                    reason.as_str()
                )
                .into_bytes(),
            }),
            before_date: format!(
                "\r\nContent-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
                 Referrer-Policy: no-referrer\r\nDate: "
            )
            .into_bytes(),
        }
    }
}

impl GateApp {
    pub fn new(gate: Arc<Gate>, proxy: HttpProxy<GateProxy>) -> Self {
        GateApp {
            header_timeout: gate.listener.header_read_timeout,
            max_header_bytes: gate.listener.max_header_bytes,
            max_requests: gate.listener.max_requests_per_connection,
            upstreams: Upstreams::new(gate.upstream.clone()),
            stopping: std::array::from_fn(|_| Notify::new()),
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
    /// The request head for the origin, and the origin's bytes on their way.
    up_head: Vec<u8>,
    up_buf: BytesMut,
    /// The client's address, looked up once when first needed, and its IP as text for
    /// `X-Forwarded-For`.
    client: Option<Option<std::net::SocketAddr>>,
    client_ip: String,
    /// Requests answered on this connection so far.
    served: u32,
    /// Which of `GateApp::stopping` this connection waits on.
    shard: usize,
    /// The connection's one timer for its waits (see `read_head`).
    timer: Pin<Box<Sleep>>,
    /// The plain TCP socket under `stream`, for direct writes (None for TLS).
    fd: Option<RawFd>,
    /// The connection's addresses, read once when a forward first needs them.
    addrs: Option<ConnAddrs>,
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

/// The last block answer written on a connection, head and page, with where its request id
/// and date sit. A client usually asks for one site throughout a connection (a browser loading
/// a page and what it links to), so the next block is most often the same answer but for the
/// request id and the date: those are overwritten in place, and the page is not rendered again.
#[derive(Default)]
struct LastBlock {
    /// The answer's reason; `None` while `head` and `page` are not a complete answer to reuse.
    reason: Option<BlockReason>,
    head_only: bool,
    keep_alive: bool,
    /// The host the page names (`Conn::shown_host` when it was rendered).
    host: String,
    head: Vec<u8>,
    page: String,
    head_id_at: usize,
    head_date_at: usize,
    page_ids_at: Vec<usize>,
}

impl LastBlock {
    fn answers(&self, reason: BlockReason, head_only: bool, keep_alive: bool, host: &str) -> bool {
        self.reason == Some(reason)
            && self.head_only == head_only
            && self.keep_alive == keep_alive
            && self.host == host
    }
}

/// What one complete request head that the front end may answer says.
/// (Its host is in `Conn::host`.)
struct SimpleRequest {
    head_len: usize,
    method: &'static str,
    /// HEAD: the answer has the body's length but no body.
    head_only: bool,
    json: bool,
    keep_alive: bool,
    http11: bool,
}

/// What an access line says about one request the front end answered.
struct LogLine<'a> {
    method: &'static str,
    /// Whether `Conn::host` holds the request's host.
    has_host: bool,
    invalid: Option<InvalidHost>,
    outcome: Outcome,
    status: u16,
    started: Instant,
    id: RequestId,
    error: Option<&'a pingora::Error>,
}

impl<'a> LogLine<'a> {
    fn new(
        req: &'a SimpleRequest,
        outcome: Outcome,
        status: u16,
        started: Instant,
        id: RequestId,
    ) -> Self {
        LogLine {
            method: req.method,
            has_host: true,
            invalid: None,
            outcome,
            status,
            started,
            id,
            error: None,
        }
    }
}

/// A request whose host cannot be used, as much of it as the answer and the log need.
struct InvalidRequest {
    invalid: InvalidHost,
    /// The raw host or target authority, lossy and capped, for the page and the log.
    shown: String,
    method: &'static str,
    head_only: bool,
    json: bool,
}

// Both live on the stack for one request; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// More bytes are needed.
    Partial,
    Simple(SimpleRequest),
    /// A request without a usable host: `400 invalid_host`, and the connection ends.
    InvalidHost(InvalidRequest),
    /// A target or method the gate does not serve; whether it was a HEAD.
    Refused(TargetRefusal, bool),
    /// A complete head that the front end leaves to Pingora.
    Complex,
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
        // TLS (ALPN may have chosen HTTP/2) is Pingora's to handle whole.
        if stream.get_ssl_digest().is_some() {
            return self.serve_with_pingora(stream, shutdown).await;
        }
        let fd = raw_fd(&stream);
        let mut c = Conn {
            stream,
            fd,
            buf: BytesMut::with_capacity(4096),
            out: Vec::new(),
            block: LastBlock::default(),
            host: Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into()),
            shown_host: String::new(),
            up_head: Vec::new(),
            up_buf: BytesMut::new(),
            client: None,
            client_ip: String::new(),
            served: 0,
            shard: fastrand::usize(..STOP_SHARDS),
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
                    // The access line's duration needs the precise clock; the keep-alive wait
                    // does not.
                    let started = if self.gate.access_log.wants_line() {
                        Instant::now()
                    } else {
                        clock::coarse_now()
                    };
                    since = started;
                    let outcome = self.gate.decide(&c.host);
                    let open = match outcome {
                        Outcome::Blocked(reason) => {
                            let keep_alive = self.keep_alive(&mut c, &req, shutdown);
                            // Counted before the answer leaves: a client that reads the
                            // metrics after its answer must see its request in them.
                            self.gate.count(outcome);
                            let (written, id) =
                                self.answer_block(&mut c, &req, reason, keep_alive).await;
                            c.buf.advance(req.head_len);
                            let status = reason.http_status();
                            self.log(&mut c, LogLine::new(&req, outcome, status, started, id));
                            written && keep_alive
                        }
                        Outcome::Allowed | Outcome::Monitored(_)
                            if req.http11 && !self.pingora_forwards_all =>
                        {
                            let keep_alive = self.keep_alive(&mut c, &req, shutdown);
                            self.gate.count(outcome);
                            let open = self
                                .forward(&mut c, &req, outcome, keep_alive, started)
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
                    c.shown_host.clear();
                    c.shown_host.push_str(&req.shown);
                    self.gate.count(outcome);
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
                            has_host: false,
                            invalid: Some(req.invalid),
                            outcome,
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
        for shard in &self.stopping {
            shard.notify_waiters();
        }
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
        outcome: Outcome,
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
        let candidates = match destinations.candidates(&addrs) {
            Ok(candidates) => candidates,
            Err(e) => {
                self.gate.counters.destination_error(e);
                tracing::warn!(
                    listener = self.gate.listener.name,
                    request_id = id.as_str(),
                    reason = e.reason(),
                    error = %e,
                    "request not forwarded"
                );
                let error =
                    pingora::Error::explain(pingora::ErrorType::ConnectNoRoute, e.to_string());
                let answer = PlainAnswer::BadGateway;
                let written = self
                    .answer_plain(c, answer, Some(id), keep_alive, req.head_only)
                    .await;
                self.log(
                    c,
                    LogLine {
                        error: Some(&error),
                        ..LogLine::new(req, outcome, answer.status(), started, id)
                    },
                );
                return written && keep_alive;
            }
        };
        let exchange = Exchange {
            candidates: &candidates,
            method: req.method.as_bytes(),
            upstreams: &self.upstreams,
            request: &c.up_head,
            head_request: req.head_only,
            close_client: !keep_alive,
            up_buf: &mut c.up_buf,
            out: &mut c.out,
        };
        match exchange.run(&mut c.stream, WRITE_TIMEOUT).await {
            Ok(relayed) => {
                self.log(c, LogLine::new(req, outcome, relayed.status, started, id));
                relayed.client_open
            }
            Err(e) => {
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
                let error = pingora::Error::explain(etype, e.to_string());
                let written = self
                    .answer_plain(c, answer, Some(id), keep_alive, req.head_only)
                    .await;
                self.log(
                    c,
                    LogLine {
                        error: Some(&error),
                        ..LogLine::new(req, outcome, answer.status(), started, id)
                    },
                );
                written && keep_alive
            }
        }
    }

    /// Writes one of the gate's plain answers (`crate::policy::PlainAnswer`).
    async fn answer_plain(
        &self,
        c: &mut Conn,
        answer: PlainAnswer,
        id: Option<RequestId>,
        keep_alive: bool,
        head_only: bool,
    ) -> bool {
        c.out.clear();
        answer.write_h1(
            &mut c.out,
            id.as_ref().map(RequestId::as_str),
            keep_alive,
            head_only,
        );
        write_all(&mut c.stream, &c.out).await
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
            if c.buf.capacity() - c.buf.len() < 1024 {
                c.buf.reserve(4096);
            }
            let read = c.stream.read_buf(&mut c.buf);
            let read = if idle {
                // Between requests a shutting-down gate stops waiting at once (in-flight
                // requests are not affected: they are not here).
                let shard = &self.stopping[c.shard];
                tokio::select! {
                    biased;
                    read = read => Some(read),
                    _ = c.timer.as_mut() => None,
                    _ = shard.notified() => return Head::Closed,
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

    /// Writes the whole block answer in one write; false when the client is gone.
    async fn answer_block(
        &self,
        c: &mut Conn,
        req: &SimpleRequest,
        reason: BlockReason,
        keep_alive: bool,
    ) -> (bool, RequestId) {
        c.shown_host.clear();
        match &c.host {
            Host::Domain(name) => c.shown_host.push_str(name.as_str()),
            host => {
                let _ = write!(c.shown_host, "{host}");
            }
        }
        self.write_block(c, reason, None, req.json, req.head_only, keep_alive)
            .await
    }

    /// Writes the block answer for `reason`, naming `c.shown_host`, in one write; false when
    /// the client is gone.
    async fn write_block(
        &self,
        c: &mut Conn,
        reason: BlockReason,
        detail: Option<&str>,
        json: bool,
        head_only: bool,
        keep_alive: bool,
    ) -> (bool, RequestId) {
        let id = self.gate.request_ids.next_id();
        let id_bytes = id.as_str().as_bytes();
        let block = &mut c.block;
        // Only plain HTML pages are kept: a detail is only ever shown once per connection (on
        // the answer that ends it), and JSON is rendered by serde, which does not say where the
        // id went.
        let keep = detail.is_none() && !json;
        if keep && block.answers(reason, head_only, keep_alive, &c.shown_host) {
            // SAFETY: hex digits overwrite hex digits (see `render_html_into`): the page
            // stays valid UTF-8.
            let page = unsafe { block.page.as_mut_vec() };
            for &at in &block.page_ids_at {
                page[at..at + id_bytes.len()].copy_from_slice(id_bytes);
            }
            block.head[block.head_id_at..block.head_id_at + id_bytes.len()]
                .copy_from_slice(id_bytes);
            block.head[block.head_date_at..block.head_date_at + clock::HTTP_DATE_LEN]
                .copy_from_slice(&clock::http_date());
        } else {
            block.reason = None;
            block.page.clear();
            block.page_ids_at.clear();
            if json {
                self.gate.pages.render_into(
                    &mut block.page,
                    reason,
                    &c.shown_host,
                    detail,
                    id.as_str(),
                    json,
                );
            } else {
                let ids_at = &mut block.page_ids_at;
                self.gate.pages.render_html_into(
                    &mut block.page,
                    reason,
                    &c.shown_host,
                    detail,
                    id.as_str(),
                    |at| ids_at.push(at),
                );
            }
            let out = &mut block.head;
            out.clear();
            let head = &self.block_heads.by_reason[reason.index()];
            out.extend_from_slice(if json {
                &head.json_start
            } else {
                &head.html_start
            });
            out.extend_from_slice(itoa(block.page.len(), &mut [0u8; 20]));
            out.extend_from_slice(&head.before_id);
            block.head_id_at = out.len();
            out.extend_from_slice(id_bytes);
            out.extend_from_slice(&self.block_heads.before_date);
            block.head_date_at = out.len();
            clock::push_http_date(out);
            out.extend_from_slice(if keep_alive {
                &b"\r\nConnection: keep-alive\r\n\r\n"[..]
            } else {
                &b"\r\nConnection: close\r\n\r\n"[..]
            });
            if keep {
                block.reason = Some(reason);
                block.head_only = head_only;
                block.keep_alive = keep_alive;
                block.host.clear();
                block.host.push_str(&c.shown_host);
            }
        }
        // Head and page go out together (one write), without copying the page behind the head.
        let body = if head_only {
            &b""[..]
        } else {
            block.page.as_bytes()
        };
        (
            write_all_two(&mut c.stream, c.fd, &block.head, body).await,
            id,
        )
    }

    fn log(&self, c: &mut Conn, line: LogLine<'_>) {
        if !self.gate.access_log.wants_line() {
            return;
        }
        let client = c.client();
        let c = &*c;
        let shown = &c.shown_host;
        self.gate.access_log.record(AccessRecord {
            listener: &self.gate.listener.name,
            client,
            method: line.method,
            host: line.has_host.then_some(&c.host),
            raw_host: || shown.clone(),
            invalid: line.invalid,
            outcome: line.outcome,
            status: line.status,
            duration: line.started.elapsed(),
            request_id: Some(line.id.as_str()),
            error: line.error,
        });
    }

    /// Lets Pingora's proxy serve the next request of the connection (the bytes already read
    /// are its start), then takes the connection back when Pingora keeps it open.
    ///
    /// Pingora's HTTP/1.1 pipelining stays off: then a connection it hands back has nothing
    /// read ahead (bytes pipelined behind this request make Pingora close it after its answer,
    /// which RFC 9112 §9.3.2 allows), so the front end can read the next request itself, under
    /// its own limits.
    async fn pass_one(self: &Arc<Self>, mut c: Conn, shutdown: &ShutdownWatch) -> Option<Conn> {
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

    /// Pingora's own loop, for connections the front end does not read at all (TLS).
    async fn serve_with_pingora(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(self.header_timeout.as_secs().max(1)));
        session.set_keepalive_reuses_remaining(Some(self.max_requests.saturating_sub(1)));
        let mut result = self.proxy.process_new_http(session, shutdown).await;
        while let Some((stream, settings)) = result.map(|r| r.consume()) {
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            result = self.proxy.process_new_http(session, shutdown).await;
        }
        None
    }
}

/// Parses one request head and sorts it: simple enough to answer here, an unusable host (also
/// answered here), or Pingora's.
fn parse(buf: &[u8], host_out: &mut Host) -> Parsed {
    // Left uninitialised: filling 96 empty headers for every request cost more than parsing.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Not parseable here (too many headers, or a target Pingora repairs, or garbage):
        // Pingora's once the head is all there, so the size and time limits cover it too.
        Err(_) => {
            return if head_complete(buf) {
                Parsed::Complex
            } else {
                Parsed::Partial
            }
        }
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Complex;
    };
    // A target the gate does not forward is refused before anything else is read into it.
    if let Err(refusal) = check_target(method.as_bytes(), path.as_bytes()) {
        return Parsed::Refused(refusal, method == "HEAD");
    }
    let known = known_method(method);
    // Framing the front end leaves to Pingora; the host is still checked first, because an
    // unusable host is refused whatever else the request carries.
    let mut complex = known.is_none_or(|m| m == "CONNECT");
    let mut host = None;
    let mut duplicate_host = false;
    let mut accept = None;
    let mut content_length = false;
    let mut close = false;
    let mut keep_alive = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            duplicate_host |= host.is_some();
            host.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Only an explicit empty body; any other length (or a second one) is framing
            // Pingora checks.
            complex |= content_length || h.value != b"0";
            content_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"http2-settings")
        {
            complex = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    complex = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"accept") && accept.is_none() {
            accept = Some(h.value);
        }
    }
    // Absolute-form targets name the host too (RFC 9112 §3.2.2); Pingora forwards them (it
    // rewrites the target), after the same host checks as here.
    let target = if path.starts_with('/') {
        None
    } else {
        complex = true;
        match raw_target_authority(path.as_bytes()) {
            RawTargetAuthority::Absolute { authority, .. } => Some(authority),
            _ => None,
        }
    };
    let close = match version {
        1 => close,
        _ => close || !keep_alive,
    };
    match resolve_host_into(host, duplicate_host, target, host_out) {
        Ok(()) => {}
        Err(invalid) => {
            let shown = target.or(host).unwrap_or_default();
            let shown = &shown[..shown.len().min(256)];
            return Parsed::InvalidHost(InvalidRequest {
                invalid,
                shown: String::from_utf8_lossy(shown).into_owned(),
                method: known.unwrap_or("OTHER"),
                head_only: method == "HEAD",
                json: wants_json(accept),
            });
        }
    };
    if complex {
        return Parsed::Complex;
    }
    let method = known.expect("an unknown method is complex");
    Parsed::Simple(SimpleRequest {
        head_len,
        method,
        head_only: method == "HEAD",
        json: wants_json(accept),
        keep_alive: !close,
        http11: version == 1,
    })
}

fn known_method(m: &str) -> Option<&'static str> {
    Some(match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => return None,
    })
}

/// Whether `buf` holds the end of a head (lenient about bare LF, as the parsers are).
fn head_complete(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, b"\r\n\r\n").is_some() || memchr::memmem::find(buf, b"\n\n").is_some()
}

fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

async fn write_all(stream: &mut Stream, bytes: &[u8]) -> bool {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

/// `a` then `b`, as one write when the socket takes them (a vectored write).
async fn write_all_two(stream: &mut Stream, fd: Option<RawFd>, a: &[u8], b: &[u8]) -> bool {
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
fn writev_now(fd: RawFd, a: &[u8], b: &[u8]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_alone(raw: &[u8]) -> (Parsed, Host) {
        let mut host = Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into());
        let parsed = parse(raw, &mut host);
        (parsed, host)
    }

    fn simple(raw: &[u8]) -> (SimpleRequest, Host) {
        match parse_alone(raw) {
            (Parsed::Simple(r), host) => (r, host),
            (Parsed::Partial, _) => panic!("partial: {}", raw.escape_ascii()),
            (Parsed::Complex, _) => panic!("complex: {}", raw.escape_ascii()),
            (Parsed::InvalidHost(_), _) => panic!("invalid host: {}", raw.escape_ascii()),
            (Parsed::Refused(..), _) => panic!("refused: {}", raw.escape_ascii()),
        }
    }

    fn is_complex(raw: &[u8]) -> bool {
        matches!(parse_alone(raw).0, Parsed::Complex)
    }

    #[test]
    fn plain_requests_are_simple() {
        let (r, host) =
            simple(b"GET /x HTTP/1.1\r\nHost: WWW.Example.COM:80\r\nAccept: */*\r\n\r\nGET");
        assert_eq!(host.to_string(), "www.example.com");
        assert_eq!(r.head_len, 58);
        assert!(r.keep_alive && !r.head_only && !r.json);
        let (r, _) = simple(b"HEAD / HTTP/1.1\r\nhost: a.cn\r\nconnection: Close\r\n\r\n");
        assert!(r.head_only && !r.keep_alive);
        let (r, _) = simple(b"GET / HTTP/1.0\r\nHost: a.cn\r\n\r\n");
        assert!(!r.keep_alive, "HTTP/1.0 closes unless asked");
        let (r, _) = simple(b"GET / HTTP/1.0\r\nHost: a.cn\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = simple(b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.method, "POST");
        let (r, _) = simple(b"GET / HTTP/1.1\r\nHost: a.cn\r\nAccept: application/json\r\n\r\n");
        assert!(r.json);
    }

    #[test]
    fn anything_with_framing_doubt_goes_to_pingora() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.cn\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nExpect: 100-continue\r\n\r\n",
            b"GET http://a.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"BREW / HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nConnection: keep-alive, te\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\x00b.cn\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a.cn\r\n\r\n",
        ] {
            assert!(is_complex(raw), "{}", raw.escape_ascii());
        }
    }

    #[test]
    fn targets_the_gate_does_not_serve_are_refused_before_the_host_is_read() {
        for (raw, refusal) in [
            (
                &b"CONNECT a.cn:443 HTTP/1.1\r\nHost: a.cn:443\r\n\r\n"[..],
                TargetRefusal::Connect,
            ),
            (
                b"GET @nope.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"GET nope.cn HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"GET * HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"HEAD nope.cn HTTP/1.1\r\nHost: \r\n\r\n",
                TargetRefusal::BadTarget,
            ),
        ] {
            match parse_alone(raw).0 {
                Parsed::Refused(r, head_only) => {
                    assert_eq!(r, refusal, "{}", raw.escape_ascii());
                    assert_eq!(head_only, raw.starts_with(b"HEAD"));
                }
                _ => panic!("not refused: {}", raw.escape_ascii()),
            }
        }
    }

    #[test]
    fn unusable_hosts_are_refused_here_whatever_else_the_request_carries() {
        for (raw, invalid) in [
            (&b"GET / HTTP/1.1\r\nHost: a.cn\r\nHost: b.cn\r\n\r\n"[..], InvalidHost::Duplicate),
            (b"GET / HTTP/1.1\r\n\r\n", InvalidHost::Empty),
            (b"GET / HTTP/1.0\r\n\r\n", InvalidHost::Empty),
            (b"GET / HTTP/1.1\r\nHost: a..cn\r\n\r\n", InvalidHost::EmptyLabel),
            (b"GET / HTTP/1.1\r\nHost: user@a.cn\r\n\r\n", InvalidHost::UserInfo),
            (b"GET http://b.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n", InvalidHost::Mismatch),
            (b"GET http://u@a.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n", InvalidHost::UserInfo),
            (
                b"POST / HTTP/1.1\r\nHost: a.cn\r\nHost: a.cn\r\nTransfer-Encoding: chunked\r\n\r\n",
                InvalidHost::Duplicate,
            ),
        ] {
            match parse_alone(raw).0 {
                Parsed::InvalidHost(r) => assert_eq!(r.invalid, invalid, "{}", raw.escape_ascii()),
                _ => panic!("not refused: {}", raw.escape_ascii()),
            }
        }
        // A matching absolute-form target is fine, and Pingora's to forward.
        assert!(is_complex(
            b"GET http://a.cn/x HTTP/1.1\r\nHost: a.cn\r\n\r\n"
        ));
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a.cn\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header: x\r\n",
            b"\x00\x01\x02",
        ] {
            assert!(
                matches!(parse_alone(raw).0, Parsed::Partial),
                "{}",
                raw.escape_ascii()
            );
        }
    }

    #[test]
    fn itoa_writes_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(2334, &mut [0; 20]), b"2334");
        assert_eq!(
            itoa(usize::MAX, &mut [0; 20]),
            usize::MAX.to_string().as_bytes()
        );
    }
}
