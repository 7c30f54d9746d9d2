//! Forwarding a simple request (no body, HTTP/1.1) from the front end: the request head is
//! rewritten once into a buffer, sent on a kept-alive origin connection, and the response is
//! relayed as it comes, head rewritten, body bytes unchanged, with its framing followed so the
//! origin connection can be reused.
//!
//! What the origin receives and what the client gets follow `crate::policy`, as on Pingora's
//! path (`GateProxy::upstream_request_filter`): the client's head with the decided Host in
//! canonical form, minus hop-by-hop fields and every client-sent forwarding field, plus the
//! gate's `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use icp_gate_config::UpstreamSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use icp_gate_registry::Host;

use super::chunked::ChunkedTracker;
use crate::destination::Candidates;
use crate::policy::{self, ConnectionTokens};

/// Response heads larger than this are refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;

/// The idle kept-alive origin connections of a listener, by origin address (its servers, or the
/// original destinations its clients were headed to).
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, Instant)>>>,
    /// Idle connections held in all, at most `max_idle`.
    idle_count: AtomicUsize,
    max_idle: usize,
    settings: UpstreamSettings,
}

impl Upstreams {
    pub fn new(settings: UpstreamSettings) -> Self {
        Upstreams {
            idle: Mutex::default(),
            idle_count: AtomicUsize::new(0),
            max_idle: settings.keepalive_pool_size,
            settings,
        }
    }

    /// An idle connection to `addr` that is still open, if there is one.
    fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        if self.idle_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(&addr)?;
        let mut found = None;
        while let Some((stream, since)) = conns.pop() {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            if since.elapsed() >= self.settings.idle_timeout {
                continue;
            }
            // Readable while idle means the origin closed it (or sent garbage): either way it
            // cannot carry a request. This asks the reactor's cached readiness first, so an
            // idle connection that is fine costs no syscall.
            match stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    found = Some(stream);
                    break;
                }
                _ => continue,
            }
        }
        if conns.is_empty() {
            idle.remove(&addr);
        }
        found
    }

    /// How long the origin may take to answer, or between two reads of its answer.
    pub fn read_timeout(&self) -> Duration {
        self.settings.read_timeout
    }

    /// Keeps a connection whose exchange ended cleanly for the next request to `addr`.
    pub fn put(&self, addr: SocketAddr, stream: TcpStream) {
        if self.settings.idle_timeout.is_zero()
            || self.idle_count.load(Ordering::Relaxed) >= self.max_idle
        {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(addr).or_default().push((stream, Instant::now()));
        self.idle_count.fetch_add(1, Ordering::Relaxed);
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
        match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(UpstreamError::Connect(addr, e.to_string())),
            Err(_) => Err(UpstreamError::Connect(addr, "connect timed out".into())),
        }
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    Connect(SocketAddr, String),
    /// The request could not be written (so it may be sent again, whatever its method).
    NotSent(String),
    /// Failed before any byte of a response came back.
    NoResponse(String),
    BadResponse(&'static str),
    Timeout,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(addr, e) => write!(f, "connecting to {addr}: {e}"),
            UpstreamError::NotSent(e) => write!(f, "sending the request to the origin: {e}"),
            UpstreamError::NoResponse(e) => write!(f, "no response from the origin: {e}"),
            UpstreamError::BadResponse(e) => write!(f, "bad response from the origin: {e}"),
            UpstreamError::Timeout => f.write_str("the origin did not answer in time"),
        }
    }
}

/// Writes the request head the origin gets for the simple request in `head`, decided on `host`.
pub fn upstream_head(
    head: &[u8],
    host: &Host,
    https: bool,
    client_ip: &str,
    request_id: &str,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    // Uninitialised, as in `super::parse`: filling them costs more than the parse.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; super::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(head, &mut headers)
    else {
        return Err(());
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Err(());
    };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = ConnectionTokens::from_values(
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if !policy::request_field_passes(name, &connection) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        if name.eq_ignore_ascii_case(b"host") {
            out.extend_from_slice(&policy::canonical_authority(h.value, host));
        } else {
            out.extend_from_slice(h.value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(if https {
        &b"\r\nX-Forwarded-Proto: https\r\nX-Request-Id: "[..]
    } else {
        &b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: "[..]
    });
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(())
}

/// `upstream_head` for a request read by Pingora's HTTP/2 session (an origin-form `:path`, no
/// body): the same policy from a parsed head, as `gate::upstream_fields` applies it on Pingora's
/// path. The Host is the decided one in canonical form, written in place of the client's Host
/// field, or after the other fields when the host came from `:authority` alone. Field names are
/// written as HTTP/2 carries them, in lower case; cookie crumbs are joined into one field.
pub fn upstream_head_from_parts(
    req: &pingora::http::RequestHeader,
    host: &Host,
    client_ip: &str,
    request_id: &str,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.raw_path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = ConnectionTokens::from_values(
        req.headers
            .get_all(http::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    let authority = crate::gate::target_authority(req);
    let mut host_written = false;
    let mut cookie_written = false;
    for (name, value) in req.headers.iter() {
        let name = name.as_str().as_bytes();
        if !policy::request_field_passes(name, &connection) {
            continue;
        }
        if name == b"cookie" {
            // Crumbs an HTTP/2 client sent as separate fields are one field again for an
            // HTTP/1.1 origin, joined with "; " (RFC 9113 §8.2.3), where the first one was.
            if !cookie_written {
                cookie_written = true;
                out.extend_from_slice(b"cookie: ");
                let crumbs = req.headers.get_all(http::header::COOKIE);
                for (i, crumb) in crumbs.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b"; ");
                    }
                    out.extend_from_slice(crumb.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        } else if name == b"host" {
            if host_written {
                // `insert_header` on Pingora's path leaves one Host.
                continue;
            }
            host_written = true;
            let raw = authority.unwrap_or(value.as_bytes());
            push_field(out, name, &policy::canonical_authority(raw, host));
        } else {
            push_field(out, name, value.as_bytes());
        }
    }
    if let (false, Some(raw)) = (host_written, authority) {
        push_field(out, b"host", &policy::canonical_authority(raw, host));
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\nx-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the response body ends.
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked(ChunkedTracker),
    /// Until the origin closes: relayed to the client re-framed as chunked (the client's
    /// connection stays open), as Pingora's path does.
    UntilClose,
}

/// The parts of a response head the relay needs; the rewritten head is in the output buffer.
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub framing: Framing,
    /// The origin may keep the connection (HTTP/1.1 without `Connection: close`, clear framing).
    pub reusable: bool,
    /// The client connection ends after this response (asked to, or the body ends at close).
    pub close_client: bool,
}

/// Where the client's version of an origin's response head goes: HTTP/1.1 bytes (`H1Head`,
/// the front end's connections) or an HTTP/2 response (`super::h2`). `response_head` decides
/// what passes (`crate::policy`) and how the body is framed; a sink only writes it down.
pub trait HeadSink {
    /// A head begins: its status and reason phrase (a 1xx may come before the final one).
    fn start(&mut self, status: u16, reason: &str);
    /// A field that passes the policy, in the order the origin sent it.
    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError>;
    /// The head is complete; `rechunk`: its body is re-framed as chunked (HTTP/1.1 only).
    fn finish(&mut self, status: u16, rechunk: bool, close_client: bool);
    /// Bytes held so far (a bound on interim answers).
    fn held(&self) -> usize;
    /// Forgets what an earlier attempt gave (the request goes to another connection).
    fn reset(&mut self);
}

/// The HTTP/1.1 head for a client of the front end, appended to a buffer.
pub struct H1Head<'a>(pub &'a mut Vec<u8>);

impl HeadSink for H1Head<'_> {
    fn start(&mut self, status: u16, reason: &str) {
        let out = &mut *self.0;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(super::answer::itoa(status as usize, &mut [0u8; 20]));
        out.push(b' ');
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), UpstreamError> {
        let out = &mut *self.0;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn finish(&mut self, status: u16, rechunk: bool, close_client: bool) {
        let out = &mut *self.0;
        if rechunk {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        if !(100..200).contains(&status) {
            out.extend_from_slice(b"Date: ");
            crate::clock::push_http_date(out);
            out.extend_from_slice(if close_client {
                &b"\r\nConnection: close\r\n\r\n"[..]
            } else {
                &b"\r\nConnection: keep-alive\r\n\r\n"[..]
            });
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }

    fn held(&self) -> usize {
        self.0.len()
    }

    fn reset(&mut self) {
        self.0.clear();
    }
}

/// Parses the origin's response head in `buf` and writes the client's version of it to `out`.
/// None: more bytes needed.
#[cfg(test)]
pub fn client_head(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, UpstreamError> {
    response_head(buf, head_request, close_client, &mut H1Head(out))
}

/// Parses the origin's response head in `buf` and gives the client's version of it to `sink`.
/// None: more bytes needed (nothing was given to `sink`).
pub fn response_head<S: HeadSink>(
    buf: &[u8],
    head_request: bool,
    close_client: bool,
    sink: &mut S,
) -> Result<Option<ResponseHead>, UpstreamError> {
    let mut headers =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(UpstreamError::BadResponse("response head too large"))
        }
        Err(_) => return Err(UpstreamError::BadResponse("unparseable response head")),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut reusable = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    // `chunked` anywhere among the codings (it may only be the last one).
    let mut any_chunked = false;
    // Headers named in Connection are hop-by-hop too, however many.
    let connection = ConnectionTokens::from_values(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    if connection.names(b"close") {
        reusable = false;
    } else if connection.names(b"keep-alive") {
        reusable = true;
    }
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(UpstreamError::BadResponse("invalid Content-Length"))?;
            if length.is_some_and(|l| l != value) {
                return Err(UpstreamError::BadResponse("conflicting Content-Length"));
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            any_chunked |= h
                .value
                .split(|&b| b == b',')
                .any(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            // The last coding of the last field is the one that frames the body.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3); such a response may be
        // an attempt to desynchronise, so its connection is not reused.
        if length.is_some() {
            reusable = false;
        }
        if chunked {
            Framing::Chunked(ChunkedTracker::default())
        } else if any_chunked {
            // `chunked` applied, then another coding over it: chunked may only be the last
            // (RFC 9112 §7), and re-framing it would apply it twice.
            return Err(UpstreamError::BadResponse(
                "Transfer-Encoding with chunked before another coding",
            ));
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if matches!(framing, Framing::UntilClose) {
        reusable = false;
    }
    let rechunk = matches!(framing, Framing::UntilClose);

    // Appended: interim answers (1xx) already written stay in front of the final one.
    sink.start(status, resp.reason.unwrap_or(""));
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if !policy::response_field_passes(name, &connection) {
            continue;
        }
        // With Transfer-Encoding, a Content-Length is removed (RFC 9112 §6.3): the client
        // must not have two framings to choose from.
        if transfer_encoding && name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        sink.field(h.name, h.value)?;
    }
    sink.finish(status, rechunk, close_client);
    Ok(Some(ResponseHead {
        status,
        head_len,
        framing,
        reusable,
        close_client,
    }))
}

impl Framing {
    /// How many of `bytes` belong to the body; `Err` on broken chunked framing.
    pub fn take(&mut self, bytes: &[u8]) -> Result<usize, UpstreamError> {
        match self {
            Framing::Empty => Ok(0),
            Framing::Length(left) => {
                let n = (bytes.len() as u64).min(*left);
                *left -= n;
                Ok(n as usize)
            }
            Framing::Chunked(t) => t
                .feed(bytes)
                .map_err(|_| UpstreamError::BadResponse("broken chunked framing")),
            Framing::UntilClose => Ok(bytes.len()),
        }
    }

    pub fn done(&self) -> bool {
        match self {
            Framing::Empty => true,
            Framing::Length(left) => *left == 0,
            Framing::Chunked(t) => t.done(),
            Framing::UntilClose => false,
        }
    }
}

/// How one forwarded exchange ended.
pub struct Relayed {
    pub status: u16,
    /// The client connection can take another request.
    pub client_open: bool,
}

/// One request to the origin and its response to an HTTP/1.1 client.
pub struct Exchange<'a> {
    pub to_send: ToSend<'a>,
    /// Scratch buffers owned by the client connection.
    pub up_buf: &'a mut BytesMut,
    pub out: &'a mut Vec<u8>,
}

impl Exchange<'_> {
    /// Sends the request (trying each server once, and once more on a fresh connection when a
    /// kept-alive one turns out dead), then relays the response to `client`. Err: nothing was
    /// written to the client yet, and it may get an error answer.
    pub async fn run<W>(
        self,
        client: &mut W,
        write_timeout: Duration,
    ) -> Result<Relayed, UpstreamError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let u = self.to_send.upstreams;
        let read_timeout = u.settings.read_timeout;
        let answered = self
            .to_send
            .send(self.up_buf, &mut H1Head(self.out))
            .await?;
        relay(
            answered.up,
            answered.head,
            self.up_buf,
            self.out,
            client,
            read_timeout,
            write_timeout,
            u,
            answered.server,
        )
        .await
    }
}

/// A request head on its way to the origin, for either client protocol.
pub struct ToSend<'a> {
    /// Where the request may go, in order.
    pub candidates: &'a Candidates<'a>,
    /// The request's method: only an idempotent request is sent again (`policy::may_resend`).
    pub method: &'a [u8],
    pub upstreams: &'a Upstreams,
    /// The request head for the origin (no body follows it).
    pub request: &'a [u8],
    pub head_request: bool,
    pub close_client: bool,
}

/// An origin connection whose response head has been read (into `sink`; the bytes after it
/// are at the start of the buffer given to `send`, after `head.head_len`).
pub struct Answered {
    pub up: TcpStream,
    pub head: ResponseHead,
    pub server: SocketAddr,
}

impl ToSend<'_> {
    /// Sends the request, trying each server once, and once more on a fresh connection when a
    /// kept-alive one turns out dead, and reads the response head into `sink`. Err: nothing
    /// reached the client, and it may get an error answer.
    pub async fn send<S: HeadSink>(
        &self,
        up_buf: &mut BytesMut,
        sink: &mut S,
    ) -> Result<Answered, UpstreamError> {
        let u = self.upstreams;
        let read_timeout = u.settings.read_timeout;
        let mut last_error = None;
        for server in self.candidates.iter() {
            let mut fresh_tried = false;
            loop {
                let pooled = if fresh_tried { None } else { u.take(server) };
                let (mut up, reused) = match pooled {
                    Some(s) => (s, true),
                    None => match u.connect(server).await {
                        Ok(s) => (s, false),
                        Err(e) => {
                            last_error = Some(e);
                            break;
                        }
                    },
                };
                up_buf.clear();
                match send_and_read_head(
                    &mut up,
                    self.request,
                    up_buf,
                    read_timeout,
                    self.head_request,
                    self.close_client,
                    sink,
                )
                .await
                {
                    Ok(head) => return Ok(Answered { up, head, server }),
                    // A kept-alive connection the origin had closed: once more, fresh, when the
                    // request may be sent twice (or never left).
                    Err(UpstreamError::NoResponse(_))
                        if reused && !fresh_tried && policy::may_resend(self.method, false) =>
                    {
                        fresh_tried = true;
                        continue;
                    }
                    Err(UpstreamError::NotSent(_)) if reused && !fresh_tried => {
                        fresh_tried = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last_error.unwrap_or(UpstreamError::Timeout))
    }
}

async fn send_and_read_head<S: HeadSink>(
    up: &mut TcpStream,
    request: &[u8],
    buf: &mut BytesMut,
    read_timeout: Duration,
    head_request: bool,
    close_client: bool,
    sink: &mut S,
) -> Result<ResponseHead, UpstreamError> {
    match tokio::time::timeout(read_timeout, up.write_all(request)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(UpstreamError::NotSent(e.to_string())),
        Err(_) => return Err(UpstreamError::Timeout),
    }
    sink.reset();
    loop {
        if !buf.is_empty() {
            match response_head(buf, head_request, close_client, sink)? {
                // The front end never asks for an upgrade: a 101 is the origin's error.
                Some(head) if head.status == 101 => {
                    return Err(UpstreamError::BadResponse(
                        "101 Switching Protocols to a request that did not ask to upgrade",
                    ))
                }
                // Interim answers (103 Early Hints and the like) go to the client before the
                // final one (RFC 9110 §15.2), in the same write.
                Some(head) if (100..200).contains(&head.status) => {
                    bytes::Buf::advance(buf, head.head_len);
                    if sink.held() > MAX_RESPONSE_HEAD {
                        return Err(UpstreamError::BadResponse("too many interim answers"));
                    }
                    continue;
                }
                Some(head) => return Ok(head),
                None => {}
            }
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8192);
        }
        match tokio::time::timeout(read_timeout, up.read_buf(buf)).await {
            Ok(Ok(0)) if buf.is_empty() => {
                return Err(UpstreamError::NoResponse("connection closed".into()))
            }
            Ok(Ok(0)) => return Err(UpstreamError::BadResponse("response head cut short")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if buf.is_empty() => return Err(UpstreamError::NoResponse(e.to_string())),
            Ok(Err(_)) => return Err(UpstreamError::BadResponse("response head cut short")),
            Err(_) => return Err(UpstreamError::Timeout),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn relay<W>(
    mut up: TcpStream,
    mut head: ResponseHead,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    client: &mut W,
    read_timeout: Duration,
    write_timeout: Duration,
    upstreams: &Upstreams,
    server: SocketAddr,
) -> Result<Relayed, UpstreamError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    // The head and whatever of the body came with it leave in one write.
    let body = &buf[head.head_len..];
    let n = match &mut head.framing {
        Framing::Chunked(t) => t
            .feed_without_trailers(body, out)
            .map_err(|_| UpstreamError::BadResponse("broken chunked framing"))?,
        Framing::UntilClose => {
            push_chunk(out, body);
            body.len()
        }
        framing => {
            let n = framing.take(body)?;
            out.extend_from_slice(&body[..n]);
            n
        }
    };
    let mut extra = n < body.len();
    let client_gone = Relayed {
        status: head.status,
        client_open: false,
    };
    if !write_client(client, out, write_timeout).await {
        return Ok(client_gone);
    }
    while !head.framing.done() {
        if read_more(&mut up, buf, read_timeout).await == 0 {
            // A close-delimited body ends here: its last chunk goes to the client. Any other
            // body was cut short, and the client must see the connection end rather than wait
            // for bytes that will not come.
            if matches!(head.framing, Framing::UntilClose)
                && write_client(client, b"0\r\n\r\n", write_timeout).await
            {
                return Ok(Relayed {
                    status: head.status,
                    client_open: !head.close_client,
                });
            }
            return Ok(client_gone);
        }
        let (n, bytes) = match &mut head.framing {
            // Chunked bodies go through `out` without their trailer fields.
            Framing::Chunked(t) => {
                out.clear();
                match t.feed_without_trailers(buf, out) {
                    Ok(n) => (n, &out[..]),
                    Err(_) => return Ok(client_gone),
                }
            }
            Framing::UntilClose => {
                out.clear();
                push_chunk(out, buf);
                (buf.len(), &out[..])
            }
            framing => match framing.take(buf) {
                Ok(n) => (n, &buf[..n]),
                Err(_) => return Ok(client_gone),
            },
        };
        extra = n < buf.len();
        if !write_client(client, bytes, write_timeout).await {
            return Ok(client_gone);
        }
    }
    if head.reusable && !extra {
        upstreams.put(server, up);
    }
    Ok(Relayed {
        status: head.status,
        client_open: !head.close_client,
    })
}

/// The next bytes of the origin's answer into `buf` (cleared first); 0 when the origin closed,
/// failed or was silent for `read_timeout`.
pub async fn read_more(up: &mut TcpStream, buf: &mut BytesMut, read_timeout: Duration) -> usize {
    buf.clear();
    buf.reserve(16 * 1024);
    match tokio::time::timeout(read_timeout, up.read_buf(buf)).await {
        Ok(Ok(read)) => read,
        Ok(Err(_)) | Err(_) => 0,
    }
}

/// `bytes` as one chunk (RFC 9112 §7.1); nothing for no bytes (an empty chunk would end the
/// body).
fn push_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

async fn write_client<W>(client: &mut W, bytes: &[u8], write_timeout: Duration) -> bool
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_gets_the_head_without_client_forwarding_headers() {
        let mut out = Vec::new();
        upstream_head(
            b"GET /a?b HTTP/1.1\r\nHost: WWW.Example.COM.:80\r\nX-Forwarded-For: 10.0.0.1\r\n\
              Forwarded: for=x\r\nConnection: keep-alive\r\nX-Request-Id: forged\r\n\
              Proxy-Authorization: Basic eDp5\r\nUser-Agent: t\r\n\r\n",
            &icp_gate_registry::parse_authority(b"WWW.Example.COM.:80").unwrap(),
            false,
            "127.0.0.1",
            "rid",
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b HTTP/1.1\r\nHost: www.example.com:80\r\nUser-Agent: t\r\n\
             X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Request-Id: rid\r\n\r\n"
        );
    }

    fn head(raw: &[u8], head_request: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let h = client_head(raw, head_request, false, &mut out)
            .unwrap()
            .unwrap();
        (h, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (h, out) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            false,
        );
        assert!(matches!(h.framing, Framing::Length(5)) && h.reusable);
        // The origin's Keep-Alive is gone; the gate's own Date and Connection close the head.
        let (start, rest) = out.split_once("Date: ").unwrap();
        assert_eq!(start, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        assert!(
            rest.ends_with(" GMT\r\nConnection: keep-alive\r\n\r\n"),
            "{out}"
        );
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert!(matches!(h.framing, Framing::Empty));
        let (h, _) = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Empty));
        let (h, out) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)) && h.reusable);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let (h, _) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)) && !h.reusable);
        let (h, out) = head(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(matches!(h.framing, Framing::UntilClose) && !h.reusable && !h.close_client);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
        assert!(out.ends_with("Connection: keep-alive\r\n\r\n"));
        let (h, out) = head(b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.reusable);
        assert!(!out.contains("X-Secret"), "{out}");
        let (h, _) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.reusable);
    }

    #[test]
    fn transfer_encoding_frames_alone_and_chunked_only_last() {
        // With Transfer-Encoding, the origin's Content-Length does not reach the client.
        let (h, out) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
        );
        assert!(matches!(h.framing, Framing::Chunked(_)) && !h.reusable);
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        // `chunked` then another coding: refused, not framed a second time.
        let mut out = Vec::new();
        let err = client_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            false,
            &mut out,
        );
        assert!(matches!(err, Err(UpstreamError::BadResponse(_))));
        // A coding without chunked: the body ends at the close, re-framed as chunked once.
        let (h, out) = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert!(matches!(h.framing, Framing::UntilClose));
        assert!(
            out.contains("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
            "{out}"
        );
    }

    #[test]
    fn bad_response_heads_are_errors() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                client_head(raw, false, false, &mut Vec::new()).is_err(),
                "{}",
                raw.escape_ascii()
            );
        }
        assert!(matches!(
            client_head(
                b"HTTP/1.1 200 OK\r\nContent-Le",
                false,
                false,
                &mut Vec::new()
            ),
            Ok(None)
        ));
    }
}
