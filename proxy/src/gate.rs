//! The enforcing proxy: every request is decided from its host before anything reaches an
//! upstream, per request (never per connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use icp_gate_config::{ListenerSettings, Mode, UpstreamSettings};
use icp_gate_registry::{
    parse_authority, BlockReason, Decision, Host, InvalidHost, LoadedRegistry, RegistryHandle,
};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::AccessLog;
use crate::block_page::{wants_json, BlockPages};
use crate::destination::{ConnAddrs, Destinations};
use crate::metrics::BadRequest;
use crate::metrics::ListenerCounters;
use crate::policy::{
    canonical_authority, check_target, is_websocket_upgrade, may_resend, origin_form,
    request_field_passes, response_field_passes, ConnectionTokens, PlainAnswer, TargetRefusal,
};
use crate::tls::terminate::Terminated;

pub const BLOCK_REASON_HEADER: &str = "X-ICP-Block-Reason";
pub const REQUEST_ID_HEADER: &str = "X-Request-Id";
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Request ids: a per-process random prefix and a counter, unique without coordination.
///
/// Each thread takes the counter in blocks of `ID_BLOCK`, so threads do not pass one cache line
/// between them on every request (on a many-core host a shared counter stalls every core that
/// touches it). Ids therefore increase per thread, not across the process.
pub struct RequestIds {
    /// The prefix, already as hex digits.
    prefix: [u8; 8],
    next: AtomicU64,
    /// Tells this instance's blocks apart from another's in a thread's cache (tests build
    /// several).
    instance: u64,
}

const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block: (instance, next id, end of block).
    static ID_CACHE: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

impl RequestIds {
    pub fn new() -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(1);
        let mut prefix = [0u8; 8];
        hex_into(&mut prefix, u64::from(fastrand::u32(..)));
        RequestIds {
            prefix,
            next: AtomicU64::new(fastrand::u64(..) >> 24),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The next id, on the stack: minting one costs no allocation.
    pub fn next_id(&self) -> RequestId {
        let n = ID_CACHE.with(|cache| {
            let (instance, next, end) = cache.get();
            if instance == self.instance && next < end {
                cache.set((instance, next + 1, end));
                next
            } else {
                let start = self.next.fetch_add(ID_BLOCK, Ordering::Relaxed);
                cache.set((self.instance, start + 1, start + ID_BLOCK));
                start
            }
        });
        let mut id = [0u8; 24];
        id[..8].copy_from_slice(&self.prefix);
        hex_into(&mut id[8..], n);
        RequestId(id)
    }

    fn next(&self) -> String {
        self.next_id().as_str().to_owned()
    }
}

/// Writes the low `out.len()` hex digits of `n` into `out`, most significant first.
fn hex_into(out: &mut [u8], mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// 24 lower-case hex digits: the process's random prefix, then a counter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 24]);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // SAFETY: the field is private and only `RequestIds::next_id` fills it, with ASCII hex
        // digits, which are valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// What the gate decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet (the request failed before the decision).
    Pending,
    Allowed,
    Blocked(BlockReason),
    /// Would have been blocked; forwarded because the listener is in monitor mode.
    Monitored(BlockReason),
    /// No registry loaded yet: answered 503, nothing forwarded.
    NotReady,
}

impl Outcome {
    pub fn decision_label(self) -> &'static str {
        match self {
            Outcome::Pending => "undecided",
            Outcome::Allowed => "allowed",
            Outcome::Blocked(_) | Outcome::NotReady => "blocked",
            Outcome::Monitored(_) => "monitored",
        }
    }

    pub fn reason_label(self) -> &'static str {
        match self {
            Outcome::Blocked(r) | Outcome::Monitored(r) => r.as_str(),
            Outcome::NotReady => crate::metrics::NOT_READY,
            _ => "",
        }
    }
}

/// A decision and the lookup behind it: what the audit log records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    pub outcome: Outcome,
    /// Where the record that decided starts in the host's text (`Host::Domain`'s bytes; 0 for
    /// an IP record); None when no record covers the host, or nothing was looked up.
    pub matched: Option<u8>,
    /// The serial of the registry that decided; None when none is loaded, or nothing was
    /// looked up (an unusable host).
    pub serial: Option<u64>,
}

impl Decided {
    /// An outcome reached without a registry lookup.
    pub fn without_lookup(outcome: Outcome) -> Self {
        Decided {
            outcome,
            matched: None,
            serial: None,
        }
    }
}

/// What `listener` does with `host` at `now` (unix seconds), against the registry in service
/// (None: none loaded yet): the registry's decision for the listener's requirement, then its
/// mode, with the record that decided and the registry's serial (one lookup). The gate's one
/// decision: every request, every TLS connection and `explain` get theirs here.
#[inline]
pub fn decide(
    loaded: Option<&LoadedRegistry>,
    listener: &ListenerSettings,
    host: &Host,
    now: i64,
) -> Decided {
    let Some(loaded) = loaded else {
        return Decided::without_lookup(Outcome::NotReady);
    };
    let (decision, matched) = loaded.registry.decide_at(host, listener.require, now);
    let outcome = match decision {
        Decision::Allow => Outcome::Allowed,
        Decision::Block(reason) => match listener.mode {
            Mode::Enforce => Outcome::Blocked(reason),
            Mode::Monitor => Outcome::Monitored(reason),
        },
    };
    Decided {
        outcome,
        // A name is at most 253 bytes.
        matched: matched.map(|at| at as u8),
        serial: Some(loaded.serial),
    }
}

pub struct RequestCtx {
    started: Instant,
    pub decided: Decided,
    pub host: Option<Host>,
    pub invalid: Option<InvalidHost>,
    request_id: Option<String>,
    upstream_tries: usize,
    /// The addresses this request may go to, in order (set at the first try).
    candidates: Vec<SocketAddr>,
}

/// The gate for one listener.
pub struct Gate {
    pub listener: ListenerSettings,
    pub registry: Arc<RegistryHandle>,
    pub upstream: UpstreamSettings,
    pub pages: Arc<BlockPages>,
    pub counters: ListenerCounters,
    pub access_log: AccessLog,
    pub request_ids: Arc<RequestIds>,
    /// Where allowed requests go (shared with the front end).
    pub destinations: Arc<Destinations>,
    /// Pingora's form of the listener's keep-alive timeout: None is off.
    pub keepalive_seconds: Option<u64>,
}

impl Gate {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        listener: ListenerSettings,
        registry: Arc<RegistryHandle>,
        upstream: UpstreamSettings,
        pages: Arc<BlockPages>,
        counters: ListenerCounters,
        access_log: AccessLog,
        request_ids: Arc<RequestIds>,
        own_addresses: Vec<SocketAddr>,
    ) -> Self {
        // Pingora reads Some(0) as "no timeout": keep at least a second.
        let keepalive_seconds = listener.keepalive_timeout.map(|d| d.as_secs().max(1));
        let destinations = Arc::new(Destinations::new(
            listener.upstream.clone(),
            own_addresses,
            listener.transparent,
        ));
        let access_log = access_log.for_listener(&listener.name);
        Gate {
            listener,
            registry,
            upstream,
            pages,
            counters,
            access_log,
            request_ids,
            destinations,
            keepalive_seconds,
        }
    }

    pub fn decide(&self, host: &Host) -> Decided {
        // The guard lives only for this lookup: nothing about the request keeps a snapshot alive.
        let guard = self.registry.load();
        decide(
            guard.as_deref(),
            &self.listener,
            host,
            crate::clock::unix_seconds(),
        )
    }

    /// Whether a request for `host` may be served on this connection: always on a connection
    /// the gate did not terminate; on one it did, when the certificate covers the host.
    pub fn covered(&self, terminated: Option<&crate::tls::certs::HeldCert>, host: &Host) -> bool {
        match (terminated, host) {
            (None, _) => true,
            (Some(cert), Host::Domain(name)) => cert.covers(name.as_str()),
            (Some(_), Host::Ip(_)) => false,
        }
    }

    /// Counts a decision: the listener's counters, and a blocked or monitored host among the
    /// blocked names (`/top/blocked`). Every request path counts here; TLS connections count
    /// in `TlsApp::count`, into the same names.
    pub fn count(&self, outcome: Outcome, host: Option<&Host>) {
        self.counters.top.record(outcome, host);
        match outcome {
            Outcome::Allowed => self.counters.allowed.inc(),
            Outcome::Blocked(r) => self.counters.blocked[r.index()].inc(),
            Outcome::Monitored(r) => self.counters.monitored[r.index()].inc(),
            Outcome::NotReady => self.counters.not_ready.inc(),
            Outcome::Pending => {}
        }
    }

    fn request_id<'a>(&self, ctx: &'a mut RequestCtx) -> &'a str {
        ctx.request_id
            .get_or_insert_with(|| self.request_ids.next())
    }

    async fn respond_blocked(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: BlockReason,
        shown_host: &str,
    ) -> Result<()> {
        let json = wants_json(
            session
                .req_header()
                .headers
                .get(header::ACCEPT)
                .map(|v| v.as_bytes()),
        );
        let request_id = self.request_id(ctx).to_owned();
        let detail = ctx.invalid.map(InvalidHost::describe);
        let page = self
            .pages
            .render(reason, shown_host, detail, &request_id, json);
        let mut resp = ResponseHeader::build(reason.http_status(), Some(9))?;
        resp.insert_header(header::CONTENT_TYPE, page.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, page.body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(BLOCK_REASON_HEADER, reason.as_str())?;
        resp.insert_header(REQUEST_ID_HEADER, request_id)?;
        resp.insert_header(header::CONTENT_SECURITY_POLICY, CSP)?;
        resp.insert_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")?;
        resp.insert_header(header::REFERRER_POLICY, "no-referrer")?;
        if reason == BlockReason::InvalidHost {
            // A request whose host could not be read may be the start of a desynchronised
            // stream: do not read another request from this connection.
            session.set_keepalive(None);
            resp.insert_header(header::CONNECTION, "close")?;
        }
        write_response(session, resp, page.body).await
    }

    async fn respond_not_ready(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let request_id = self.request_id(ctx).to_owned();
        let body = Bytes::from_static(
            "注册数据尚未加载，请稍后重试。\nThe filing registry is not loaded yet; retry shortly.\n"
                .as_bytes(),
        );
        let mut resp = ResponseHeader::build(503, Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        resp.insert_header(header::RETRY_AFTER, "5")?;
        resp.insert_header(BLOCK_REASON_HEADER, crate::metrics::NOT_READY)?;
        resp.insert_header(REQUEST_ID_HEADER, request_id)?;
        write_response(session, resp, body).await
    }
}

/// Whether the client's request asks for a websocket upgrade (`policy::is_websocket_upgrade`).
fn asks_websocket(req: &RequestHeader) -> bool {
    let values = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes());
    let tokens = ConnectionTokens::from_values(values);
    let upgrade: Vec<&[u8]> = req
        .headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    is_websocket_upgrade(req.version == http::Version::HTTP_11, &upgrade, &tokens)
}

/// The values of a message's `Connection` fields, owned (the message is changed after).
fn connection_values(headers: &http::HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

/// The names of the fields `passes` does not let through.
fn fields_failing(headers: &http::HeaderMap, passes: impl Fn(&[u8]) -> bool) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|name| !passes(name.as_str().as_bytes()))
        .cloned()
        .collect()
}

/// Writes one of the gate's plain answers (`policy::PlainAnswer`) on Pingora's path: the same
/// status, fields and body as the front end writes.
async fn write_plain(
    session: &mut Session,
    answer: PlainAnswer,
    request_id: Option<&str>,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    let body = answer.body();
    let mut resp = ResponseHeader::build(answer.status(), Some(answer.fields().len() + 3))?;
    for (name, value) in answer.fields() {
        resp.append_header(*name, *value)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if let Some(id) = request_id {
        resp.insert_header(REQUEST_ID_HEADER, id)?;
    }
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

async fn write_response(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The authority of the request target, when it has one: absolute-form (HTTP/1, kept verbatim
/// by Pingora, which leaves `uri.authority()` unset) or the URI authority (HTTP/2 `:authority`).
pub fn target_authority(req: &RequestHeader) -> Option<&[u8]> {
    if let Some(authority) = req.uri.authority() {
        return Some(authority.as_str().as_bytes());
    }
    match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute { authority, .. } => Some(authority),
        _ => None,
    }
}

/// The host a request names, following RFC 9112 §3.2: an absolute-form target's authority wins
/// over Host (and must agree with it here, or the request is refused: the origin would see the
/// Host); otherwise exactly one Host header.
pub fn request_host(req: &RequestHeader) -> Result<Host, InvalidHost> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let host_header = hosts.next().map(|v| v.as_bytes());
    let duplicate = hosts.next().is_some();
    resolve_host(host_header, duplicate, target_authority(req))
}

/// `request_host` from the parts of a request: its (first) Host header, whether a second one
/// was sent, and the authority of an absolute-form target. The front end uses it on its own
/// parse, so both readers of a request decide on the same host.
pub fn resolve_host(
    host_header: Option<&[u8]>,
    duplicate: bool,
    target_authority: Option<&[u8]>,
) -> Result<Host, InvalidHost> {
    let mut host = Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into());
    resolve_host_into(host_header, duplicate, target_authority, &mut host).map(|()| host)
}

/// `resolve_host`, writing the host into `out` (left as it was on an error). The front end keeps
/// one `Host` per connection: a `Host` is 256 bytes, and passing it up by value through the
/// request parser cost more copies than the registry lookup costs instructions.
pub fn resolve_host_into(
    host_header: Option<&[u8]>,
    duplicate: bool,
    target_authority: Option<&[u8]>,
    out: &mut Host,
) -> Result<(), InvalidHost> {
    if duplicate {
        return Err(InvalidHost::Duplicate);
    }
    match target_authority {
        Some(authority) => {
            let from_header = host_header.map(parse_authority);
            let from_target = parse_authority(authority)?;
            match from_header {
                None => {}
                Some(Ok(h)) if h == from_target => {}
                Some(_) => return Err(InvalidHost::Mismatch),
            }
            *out = from_target;
        }
        None => *out = parse_authority(host_header.ok_or(InvalidHost::Empty)?)?,
    }
    Ok(())
}

/// What the page and the log show of a host that could not be used: the raw value, lossy.
fn raw_host(req: &RequestHeader) -> String {
    let raw = target_authority(req)
        .or_else(|| req.headers.get(header::HOST).map(|v| v.as_bytes()))
        .unwrap_or_default();
    String::from_utf8_lossy(&raw[..raw.len().min(256)]).into_owned()
}

/// The request head the origin gets, from the client's (`crate::policy`): origin-form target,
/// no hop-by-hop or client-sent forwarding fields, the decided Host in canonical form (the port
/// as sent), and the gate's `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`, on
/// Pingora's path (`upstream_request_filter`). The front end writes the same head directly
/// (`front::forward::upstream_head` for HTTP/1.1, `upstream_head_from_parts` for HTTP/2); the
/// transparency suites hold the paths to the same result.
pub fn upstream_fields(
    upstream: &mut RequestHeader,
    host: Option<&Host>,
    websocket: bool,
    http2: bool,
    client: Option<std::net::IpAddr>,
    https: bool,
    request_id: &str,
) -> Result<()> {
    let raw = upstream.raw_path().to_vec();
    let absolute = matches!(
        raw_target_authority(&raw),
        RawTargetAuthority::Absolute { .. }
    );
    let target_authority = target_authority(upstream).map(<[u8]>::to_vec);
    if absolute {
        // Origin-form towards the origin, the path byte for byte.
        upstream.set_raw_path(&origin_form(&raw))?;
    }
    // Hop-by-hop fields, the ones Connection names, the client's proxy credentials and
    // forwarding fields: gone.
    let connection = connection_values(&upstream.headers);
    let tokens = ConnectionTokens::from_values(connection.iter().map(Vec::as_slice));
    let dropped = fields_failing(&upstream.headers, |n| request_field_passes(n, &tokens));
    for name in dropped {
        upstream.remove_header(&name);
    }
    if websocket {
        upstream.insert_header(header::CONNECTION, "Upgrade")?;
        upstream.insert_header(header::UPGRADE, "websocket")?;
    }
    // Cookie crumbs an HTTP/2 client sent as separate fields: one field for an HTTP/1.1
    // origin, joined with "; " (RFC 9113 §8.2.3).
    if http2
        && upstream
            .headers
            .get_all(header::COOKIE)
            .iter()
            .nth(1)
            .is_some()
    {
        let crumbs: Vec<&[u8]> = upstream
            .headers
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let joined = HeaderValue::from_bytes(&crumbs.join(&b"; "[..]))
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "joined cookie", e))?;
        upstream.insert_header(header::COOKIE, joined)?;
    }
    // The Host the decision was made on, in canonical form, the port as sent.
    if let Some(host) = host {
        let raw_authority = match upstream.headers.get(header::HOST) {
            Some(v) if target_authority.is_none() => Some(v.as_bytes().to_vec()),
            _ => target_authority,
        };
        if let Some(raw_authority) = raw_authority {
            let canonical = canonical_authority(&raw_authority, host);
            let value = HeaderValue::from_bytes(&canonical).map_err(|e| {
                Error::because(ErrorType::InvalidHTTPHeader, "request authority", e)
            })?;
            upstream.insert_header(header::HOST, value)?;
        }
    }
    // Written as the front end writes them (Pingora keeps a name's case as given).
    if let Some(ip) = client {
        upstream.insert_header("X-Forwarded-For", ip.to_string())?;
    }
    upstream.insert_header("X-Forwarded-Proto", if https { "https" } else { "http" })?;
    upstream.insert_header(REQUEST_ID_HEADER, request_id.to_owned())?;
    Ok(())
}

/// The gate as Pingora's proxy sees it. The same `Gate` is shared with the front end
/// (`crate::front`), which decides simple requests before Pingora does.
pub struct GateProxy(pub Arc<Gate>);

impl std::ops::Deref for GateProxy {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.0
    }
}

#[async_trait]
impl ProxyHttp for GateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            decided: Decided::without_lookup(Outcome::Pending),
            host: None,
            invalid: None,
            request_id: None,
            upstream_tries: 0,
            candidates: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // How long this connection may then wait for its next request (Pingora's own default
        // applies only to the first).
        session.set_keepalive(self.keepalive_seconds);
        let req = session.req_header();
        if let Err(refusal) = check_target(req.method.as_str().as_bytes(), req.raw_path()) {
            let (reason, answer) = match refusal {
                TargetRefusal::BadTarget => (BadRequest::BadTarget, PlainAnswer::BadTarget),
                TargetRefusal::Connect => (BadRequest::Connect, PlainAnswer::Connect),
            };
            self.counters.bad[reason as usize].inc();
            session.set_keepalive(None);
            write_plain(session, answer, None).await?;
            return Ok(true);
        }
        let host = match request_host(session.req_header()) {
            Ok(host) => host,
            Err(invalid) => {
                // Not a filing decision, so monitor mode does not forward it either.
                ctx.invalid = Some(invalid);
                ctx.decided = Decided::without_lookup(Outcome::Blocked(BlockReason::InvalidHost));
                self.count(ctx.decided.outcome, None);
                let shown = raw_host(session.req_header());
                self.respond_blocked(session, ctx, BlockReason::InvalidHost, &shown)
                    .await?;
                return Ok(true);
            }
        };
        ctx.decided = self.decide(&host);
        let outcome = ctx.decided.outcome;
        self.count(outcome, Some(&host));
        let terminated = session
            .digest()
            .and_then(|d| d.ssl_digest.as_deref())
            .and_then(Terminated::in_digest);
        let answered = match outcome {
            // An allowed Host the terminated connection's certificate does not cover: 421, as
            // on the front end's path.
            Outcome::Allowed | Outcome::Monitored(_)
                if !self.covered(terminated.as_deref(), &host) =>
            {
                self.counters.bad[BadRequest::Misdirected as usize].inc();
                let id = self.request_id(ctx).to_owned();
                write_plain(session, PlainAnswer::Misdirected, Some(&id)).await?;
                true
            }
            Outcome::Allowed | Outcome::Monitored(_) => false,
            Outcome::Blocked(reason) => {
                let shown = host.to_string();
                self.respond_blocked(session, ctx, reason, &shown).await?;
                true
            }
            Outcome::NotReady => {
                self.respond_not_ready(session, ctx).await?;
                true
            }
            Outcome::Pending => unreachable!("decide() always decides"),
        };
        ctx.host = Some(host);
        Ok(answered)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Belt and braces: nothing undecided or blocked is ever given a peer.
        if !matches!(
            ctx.decided.outcome,
            Outcome::Allowed | Outcome::Monitored(_)
        ) {
            return Err(Error::explain(
                ErrorType::InternalError,
                "upstream requested for a request that was not allowed",
            ));
        }
        if ctx.upstream_tries == 0 {
            let addrs = match session.stream() {
                Some(stream) => ConnAddrs::of(stream, self.destinations.is_original_destination()),
                None => ConnAddrs::default(),
            };
            match self.destinations.candidates(&addrs) {
                Ok(c) => ctx.candidates = c.iter().collect(),
                Err(e) => {
                    self.counters.destination_error(e);
                    return Err(Error::explain(ErrorType::ConnectNoRoute, e.to_string()));
                }
            }
        }
        // Each candidate once, and one more try for a request resent after a dead kept-alive
        // origin connection (`error_while_proxy`).
        if ctx.upstream_tries > ctx.candidates.len() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "every upstream server was tried",
            ));
        }
        let addr = ctx.candidates[ctx.upstream_tries % ctx.candidates.len()];
        ctx.upstream_tries += 1;
        let mut peer = self.peer(addr);
        // Re-encrypted (`upstream_tls`): requests the gate terminated go to the origin over
        // TLS, with the decided Host as SNI and the origin's certificate verified for it.
        let terminated = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if self.listener.upstream_tls && terminated {
            if let Some(Host::Domain(name)) = &ctx.host {
                peer.scheme = pingora::upstreams::peer::Scheme::HTTPS;
                peer.sni = name.as_str().to_owned();
            }
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another server may be up: try each once before giving up.
        if ctx.upstream_tries < ctx.candidates.len() {
            e.set_retry(true);
        } else {
            self.counters.connect_failed();
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let websocket = asks_websocket(session.req_header());
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let request_id = self.request_id(ctx).to_owned();
        let http2 = session.is_http2();
        upstream_fields(
            upstream,
            ctx.host.as_ref(),
            websocket,
            http2,
            client,
            https,
            &request_id,
        )
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Only a websocket upgrade the client asked for may be answered 101; any other 101 is
        // the origin's error (502), as on the front end's path.
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && !asks_websocket(session.req_header())
        {
            return Err(Error::new_up(ErrorType::InvalidHTTPHeader)
                .more_context("101 Switching Protocols to a request that did not ask to upgrade"));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A websocket's 101 keeps its Upgrade and Connection; anything else loses the
        // connection's own fields, as on the front end's path.
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        let connection = connection_values(&response.headers);
        let tokens = ConnectionTokens::from_values(connection.iter().map(Vec::as_slice));
        let dropped = fields_failing(&response.headers, |n| response_field_passes(n, &tokens));
        for name in dropped {
            response.remove_header(&name);
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // RFC 9110 §9.2.2, as on the front end's path (`policy::may_resend`): a request whose
        // bytes may have reached the origin is sent again only when it is idempotent.
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = session.req_header().method.as_str().as_bytes();
        if !may_resend(method, false) || session.as_ref().retry_buffer_truncated() {
            e.set_retry(false);
        } else if client_reused && *e.esource() == ErrorSource::Upstream {
            // A kept-alive origin connection that turned out dead: once more, on a fresh one.
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // An answer already under way cannot be replaced: the gate's error page would be read
        // as the rest of its body. The connection ends instead, so the client sees it cut short
        // (as on the front end's path).
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        // The gate's own answers, rendered as the front end renders them.
        let answer = match (e.esource(), e.etype()) {
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => Some(PlainAnswer::BadTarget),
            (
                _,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout,
            ) => Some(PlainAnswer::GatewayTimeout),
            _ => Some(PlainAnswer::BadGateway),
        };
        let Some(answer) = answer else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let id = self.request_id(ctx).to_owned();
        session.set_keepalive(None);
        if let Err(write) = write_plain(session, answer, Some(&id)).await {
            tracing::debug!(error = %write, "could not send the error answer");
        }
        FailToProxy {
            error_code: answer.status(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that goes away mid-request is routine, not a fault of the gate; the access
        // line still carries the error.
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let took = ctx.started.elapsed();
        self.counters.request_took(ctx.decided.outcome, took);
        if !self.access_log.logs(ctx.decided.outcome) {
            return;
        }
        let req = session.req_header();
        let path = if self.access_log.wants_path() {
            let raw = req.raw_path();
            &raw[..memchr::memchr(b'?', raw).unwrap_or(raw.len())]
        } else {
            &[]
        };
        self.access_log.record(
            crate::access_log::AccessRecord {
                listener: &self.listener.name,
                client: session.client_addr().and_then(|a| a.as_inet()).copied(),
                client_text: None,
                method: req.method.as_str(),
                path,
                version: match req.version {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
                host: ctx.host.as_ref(),
                invalid: ctx.invalid,
                decided: ctx.decided,
                status,
                started: ctx.started,
                request_id: ctx.request_id.as_deref(),
                error: e,
            },
            || raw_host(req),
        );
    }
}

impl Gate {
    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        let o = &mut peer.options;
        // `crate::policy` is the one header policy (`upstream_request_filter`): Pingora's own
        // is off, so the two paths cannot differ by what Pingora adds.
        o.http_upstream_request_policy =
            pingora::upstreams::peer::HttpUpstreamRequestPolicy::preserve();
        o.connection_timeout = Some(self.upstream.connect_timeout);
        o.total_connection_timeout = Some(self.upstream.connect_timeout);
        o.read_timeout = Some(self.upstream.read_timeout);
        o.write_timeout = Some(self.upstream.read_timeout);
        o.idle_timeout = Some(if self.upstream.idle_timeout.is_zero() {
            Duration::from_millis(1)
        } else {
            self.upstream.idle_timeout
        });
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn request_ids_are_unique_across_threads_blocks_and_instances() {
        let a = Arc::new(RequestIds::new());
        let b = Arc::new(RequestIds::new());
        // Several blocks per thread, both instances interleaved on each thread.
        let per_thread = 3 * ID_BLOCK as usize + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (a, b) = (a.clone(), b.clone());
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..per_thread {
                        let ids_from = if i % 3 == 0 { &b } else { &a };
                        ids.push(ids_from.next_id());
                    }
                    ids
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                let text = id.as_str();
                assert_eq!(text.len(), 24);
                assert!(text
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
                assert!(seen.insert(text.to_owned()), "{text} was minted twice");
            }
        }
        assert_eq!(seen.len(), 4 * per_thread);
        // One prefix per instance.
        let prefixes: HashSet<_> = seen.iter().map(|id| id[..8].to_owned()).collect();
        assert!(prefixes.len() <= 2);
    }

    #[test]
    fn request_ids_count_up_within_a_thread() {
        let ids = RequestIds::new();
        let first = u64::from_str_radix(&ids.next_id().as_str()[8..], 16).unwrap();
        let second = u64::from_str_radix(&ids.next_id().as_str()[8..], 16).unwrap();
        assert_eq!(second, first + 1);
    }
}
