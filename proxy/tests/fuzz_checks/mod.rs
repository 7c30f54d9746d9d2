//! The `front_end` fuzz target's harness and invariants, shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/front_end.rs`, which includes this file by path) and the corpus replay
//! (`proxy/tests/fuzz_corpus.rs`). It lives in a directory so that Cargo does not build it as a
//! test of its own.
//!
//! One input is one client connection to a gate listener: the bytes a client sends, and the
//! bytes an origin answers with. The real connection handler, `GateApp::process_new`, serves
//! the connection over an in-memory client stream (a `tokio::io::DuplexStream`, which Pingora
//! already implements its `IO` traits for) with a `Gate` on an in-memory registry. Requests the
//! gate forwards, on the front end's own path or handed to Pingora's proxy, go to a real origin
//! on 127.0.0.1 in the same runtime, which records every byte it receives and answers each
//! request head with the next part of the origin bytes. A real socket, not an in-memory
//! origin: Pingora's proxy connects to origins through its own connector, which cannot be
//! replaced, and one origin serves both paths with no change to production code.
//!
//! Both peers close their sending side once they have sent everything, so no run waits for a
//! timer of the gate's (the clock is real: tokio's paused clock would fire timeouts while real
//! sockets are in flight). The origin's read timeout is short (0.1 s), for the origin that
//! stops halfway through an answer.
//!
//! Invariants (`check_front_end`): no panic; the connection ends (within `RUN_LIMIT`); every
//! request the origin received has exactly one `Host`, and it (and an absolute-form target's
//! authority) is allowed by the registry on this listener; the origin received only whole
//! requests; the client received a sequence of well-framed HTTP/1.1 responses (see
//! `check_client`); a request the checks can decide on their own for a blocked host gets the
//! block answer with its reason.

#![allow(dead_code)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use icp_gate_config::{Settings, Upstream};
use icp_gate_proxy::access_log::AccessLog;
use icp_gate_proxy::block_page::BlockPages;
use icp_gate_proxy::front::GateApp;
use icp_gate_proxy::gate::{Gate, GateProxy, RequestIds, BLOCK_REASON_HEADER};
use icp_gate_proxy::metrics::Metrics;
use icp_gate_registry::{
    parse_authority, read_snapshot, BlockReason, Decision, RegistryHandle, Requirement,
    SnapshotSource, SnapshotWriter, Status, Syncer,
};
use pingora::apps::ServerApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Separates the origin's answers: the origin answers the n-th request head it receives on a
/// connection with the n-th part, and closes its sending side after the last one.
pub const NEXT: &[u8] = b"~~NEXT~~";

/// A run that has not ended after this long is a failure (a connection that never ends).
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// The registry every run decides on: filed and connected names (and their subdomains), every
/// other status, an IP, a Unicode name. Anything else is unfiled.
pub const RECORDS: [(&str, Status); 8] = [
    ("example.com", Status::Connected),
    ("bad.example.com", Status::Denied),
    ("filed.cn", Status::Connected),
    ("other.cn", Status::Unconnected),
    ("cancelled.cn", Status::AccessCancelled),
    ("gone.com.cn", Status::Revoked),
    ("10.0.0.1", Status::Connected),
    ("例子.中国", Status::Connected),
];

/// One fuzz input: `[flags] [client length, u16 little-endian] [client bytes] [origin bytes]`.
///
/// flags: bits 0 to 5, when not 0, write the client's first 4 KiB in pieces of that many bytes
/// (the gate may then read a head in several reads), the rest at once; bit 6: at most 2
/// requests per connection; bit 7: keep-alive off.
pub struct Input<'a> {
    pub flags: u8,
    pub client: &'a [u8],
    pub origin: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn split(data: &'a [u8]) -> Input<'a> {
        let flags = data.first().copied().unwrap_or(0);
        let len = match data.get(1..3) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]) as usize,
            None => 0,
        };
        let rest = data.get(3..).unwrap_or(&[]);
        let len = len.min(rest.len());
        Input {
            flags,
            client: &rest[..len],
            origin: &rest[len..],
        }
    }

    pub fn encode(flags: u8, client: &[u8], origin: &[u8]) -> Vec<u8> {
        let len = u16::try_from(client.len()).expect("client bytes fit a u16");
        let mut out = vec![flags];
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(client);
        out.extend_from_slice(origin);
        out
    }

    fn piece(&self) -> usize {
        (self.flags & 0x3f) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// The gate

struct Fixed {
    settings: Settings,
    registry: Arc<RegistryHandle>,
    pages: Arc<BlockPages>,
    metrics: Arc<Metrics>,
    request_ids: Arc<RequestIds>,
    server_conf: Arc<pingora::server::configuration::ServerConf>,
}

const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:1"
name = "fuzz"
header_read_timeout_seconds = 5
keepalive_timeout_seconds = 5

[upstream]
servers = ["127.0.0.1:9"]
connect_timeout_seconds = 1
read_timeout_seconds = 0.1

[registry]
source = "file:///nonexistent/registry.tsv"
"#;

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let settings = icp_gate_config::parse(CONFIG, Path::new("/")).expect("fuzz config");
        let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
        for (i, (name, status)) in RECORDS.iter().enumerate() {
            let filing = format!("京ICP备{:08}号", i + 1);
            w.record(name, *status, Some(&filing), None).unwrap();
        }
        let text = w.finish().unwrap();
        let snapshot = read_snapshot(&text[..]).expect("the fuzz registry reads");
        let registry = RegistryHandle::new();
        let source = SnapshotSource::parse("file:///nonexistent/registry.tsv").unwrap();
        Syncer::new(source, registry.clone()).offer(snapshot);
        assert!(registry.is_ready());
        Fixed {
            settings,
            registry,
            pages: Arc::new(BlockPages::new(&Default::default())),
            metrics: Metrics::new(),
            request_ids: Arc::new(RequestIds::new()),
            server_conf: Arc::new(Default::default()),
        }
    })
}

/// The registry's decision for `authority` on the fuzz listener; Err for a host that does not
/// normalize.
pub fn decide(authority: &[u8]) -> Result<Decision, String> {
    let host = parse_authority(authority).map_err(|e| format!("{e:?}"))?;
    let guard = fixed().registry.load();
    let loaded = guard.as_ref().expect("registry loaded");
    let require = fixed().settings.listeners[0].require;
    debug_assert_eq!(require, Requirement::Connected);
    Ok(loaded
        .registry
        .decide(&host, require, icp_gate_registry::sync::unix_now()))
}

fn app(origin: SocketAddr, flags: u8) -> Arc<GateApp> {
    let f = fixed();
    let mut listener = f.settings.listeners[0].clone();
    listener.upstream = Upstream::Servers(vec![origin]);
    if flags & 0x40 != 0 {
        listener.max_requests_per_connection = 2;
    }
    if flags & 0x80 != 0 {
        listener.keepalive_timeout = None;
    }
    let mut upstream = f.settings.upstream.clone();
    upstream.servers = vec![origin];
    let own = vec![listener.address];
    let counters = f.metrics.listener(&listener.name);
    let gate = Arc::new(Gate::new(
        listener,
        f.registry.clone(),
        upstream,
        f.pages.clone(),
        counters,
        AccessLog::new(false, 0.0),
        f.request_ids.clone(),
        own,
    ));
    let proxy = pingora::proxy::http_proxy(&f.server_conf, GateProxy(gate.clone()));
    Arc::new(GateApp::new(gate, proxy))
}

// ---------------------------------------------------------------------------------------------
// One run

/// What one origin connection received.
#[derive(Clone, Debug, Default)]
pub struct OriginConn {
    pub received: Vec<u8>,
    /// Where a tunnel began (the origin answered a request with 101): the bytes after it are
    /// not requests.
    pub tunnel_from: Option<usize>,
}

#[derive(Debug)]
pub struct Run {
    /// The bytes the client received.
    pub client_got: Vec<u8>,
    /// The gate ended the connection (rather than the run hitting `RUN_LIMIT`).
    pub ended: bool,
    pub origin: Vec<OriginConn>,
}

/// Serves one client connection through `GateApp::process_new`.
pub fn run(input: &Input<'_>) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let run = rt.block_on(run_async(input));
    // Whatever is still waiting (Pingora's idle origin connections) goes with the runtime.
    rt.shutdown_background();
    run
}

async fn run_async(input: &Input<'_>) -> Run {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the origin");
    let origin_addr = listener.local_addr().unwrap();
    let answers: Arc<Vec<Vec<u8>>> = Arc::new(split_answers(input.origin));
    let conns: Arc<Mutex<Vec<Arc<Mutex<OriginConn>>>>> = Arc::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let origin = tokio::spawn(accept_loop(listener, answers, conns.clone(), stop_rx));

    let app = app(origin_addr, input.flags);
    let (client_end, gate_end) = tokio::io::duplex(64 * 1024);
    let (_shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let gate = tokio::spawn(async move {
        let stream: pingora::protocols::Stream = Box::new(gate_end);
        let back = app.process_new(stream, &shutdown_rx).await;
        drop(back);
        drop(app);
    });

    // The client sends everything, then closes its sending side once it has the answers to
    // its complete requests (or the gate closed, or the answers stopped making sense): a
    // client that half-closes earlier makes Pingora abandon the request in flight, and one that
    // never closes leaves the gate waiting for its keep-alive timeout.
    let reqs = client_requests(input.client);
    let expected = reqs.iter().filter(|r| r.complete).count();
    let methods: Vec<String> = reqs.iter().map(|r| r.method.clone()).collect();
    let answered = Arc::new(tokio::sync::Notify::new());
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (mut rd, mut wr) = tokio::io::split(client_end);
    let piece = input.piece();
    let client = input.client;
    let answered_w = answered.clone();
    let writer = async move {
        let (first, rest) = if piece > 0 {
            client.split_at(client.len().min(4096))
        } else {
            (&[][..], client)
        };
        for part in first.chunks(piece.max(1)).chain(std::iter::once(rest)) {
            if part.is_empty() {
                continue;
            }
            if wr.write_all(part).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        answered_w.notified().await;
        let _ = wr.shutdown().await;
        wr
    };
    let got_w = got.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut told = false;
        if expected == 0 {
            answered.notify_one();
            told = true;
        }
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut got = got_w.lock().unwrap();
                    got.extend_from_slice(&buf[..n]);
                    if !told && finals_received(&got, &methods).is_none_or(|n| n >= expected) {
                        answered.notify_one();
                        told = true;
                    }
                }
            }
        }
        if !told {
            answered.notify_one();
        }
    };
    let ended = tokio::time::timeout(RUN_LIMIT, async {
        let (_wr, (), gate) = tokio::join!(writer, reader, gate);
        if let Err(e) = gate {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    })
    .await
    .is_ok();

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), origin).await;
    let origin = conns
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.lock().unwrap().clone())
        .collect();
    let client_got = std::mem::take(&mut *got.lock().unwrap());
    Run {
        client_got,
        ended,
        origin,
    }
}

fn split_answers(origin: &[u8]) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut rest = origin;
    while let Some(at) = find(rest, NEXT) {
        parts.push(rest[..at].to_vec());
        rest = &rest[at + NEXT.len()..];
    }
    parts.push(rest.to_vec());
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    answers: Arc<Vec<Vec<u8>>>,
    conns: Arc<Mutex<Vec<Arc<Mutex<OriginConn>>>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { break };
                let rec = Arc::new(Mutex::new(OriginConn::default()));
                conns.lock().unwrap().push(rec.clone());
                tasks.push(tokio::spawn(serve_origin(stream, answers.clone(), rec, stop.clone())));
            }
            _ = stop.changed() => break,
        }
    }
    // Connections made and not yet accepted: what they carried counts too.
    if let Ok(listener) = listener.into_std() {
        while let Ok((stream, _)) = listener.accept() {
            let rec = Arc::new(Mutex::new(OriginConn::default()));
            conns.lock().unwrap().push(rec.clone());
            drain(stream, &rec);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Reads what `stream` holds now, without waiting.
fn drain(mut stream: std::net::TcpStream, rec: &Mutex<OriginConn>) {
    let _ = stream.set_nonblocking(true);
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        rec.lock().unwrap().received.extend_from_slice(&buf[..n]);
    }
}

/// One origin connection: records what it receives and answers each request head with the next
/// answer; closes its sending side after the last.
async fn serve_origin(
    mut stream: tokio::net::TcpStream,
    answers: Arc<Vec<Vec<u8>>>,
    rec: Arc<Mutex<OriginConn>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    // Where the next request starts; whether its head was answered.
    let mut at = 0;
    let mut answered_here = false;
    let mut answered = 0;
    let mut tunnel = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while !tunnel && answered < answers.len() {
            match parse_request(&buf[at..]) {
                ReqParse::Complete(req) | ReqParse::BodyPartial(req) if !answered_here => {
                    let answer = &answers[answered];
                    answered += 1;
                    answered_here = true;
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if answer.starts_with(b"HTTP/1.1 101") || answer.starts_with(b"HTTP/1.0 101") {
                        tunnel = true;
                        rec.lock().unwrap().tunnel_from = Some(at + req.total_len);
                    }
                    if answered == answers.len() {
                        let _ = stream.shutdown().await;
                    }
                }
                ReqParse::Complete(req) => {
                    at += req.total_len;
                    answered_here = false;
                }
                _ => break,
            }
        }
        tokio::select! {
            biased;
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    rec.lock().unwrap().received.extend_from_slice(&chunk[..n]);
                }
            },
            _ = stop.changed() => {
                if let Ok(std) = stream.into_std() {
                    drain(std, &rec);
                }
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing requests (the client's and the origin's)

/// One request: its head as parsed, and its length with its body.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: Vec<u8>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    pub head_len: usize,
    /// Head and body.
    pub total_len: usize,
}

impl Req {
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
            .collect()
    }
}

pub enum ReqParse {
    Complete(Req),
    /// The head is complete, the body is not (`total_len` is what it will be, when known).
    BodyPartial(Req),
    HeadPartial,
    Bad(String),
}

const MAX_PARSE_HEADERS: usize = 512;

pub fn parse_request(buf: &[u8]) -> ReqParse {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_PARSE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return ReqParse::HeadPartial,
        Err(e) => return ReqParse::Bad(format!("request head: {e}")),
    };
    let mut r = Req {
        method: req.method.unwrap_or("").to_owned(),
        target: req.path.unwrap_or("").as_bytes().to_vec(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        head_len,
        total_len: head_len,
    };
    let body = match body_framing(&r.values("transfer-encoding"), &r.values("content-length")) {
        Ok(BodyFraming::Length(n)) => Ok(Some(n)),
        Ok(BodyFraming::Chunked) => chunked_len(&buf[head_len..]).map(|n| n.map(|n| n as u64)),
        // A request without chunked as its last coding has no length (RFC 9112 §6.3).
        Ok(BodyFraming::UntilClose) => Err("request framed by close".to_owned()),
        Ok(BodyFraming::None) => Ok(Some(0)),
        Err(e) => Err(e),
    };
    match body {
        Ok(Some(n)) => {
            let total = (head_len as u64).saturating_add(n);
            r.total_len = usize::try_from(total).unwrap_or(usize::MAX);
            if total <= buf.len() as u64 {
                ReqParse::Complete(r)
            } else {
                ReqParse::BodyPartial(r)
            }
        }
        Ok(None) => ReqParse::BodyPartial(r),
        Err(e) => ReqParse::Bad(e),
    }
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing the fields give a message (without regard to method or status).
fn body_framing(te: &[&[u8]], cl: &[&[u8]]) -> Result<BodyFraming, String> {
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err("both Transfer-Encoding and Content-Length".to_owned());
        }
        let codings: Vec<&[u8]> = te
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(|c| c.trim_ascii())
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
        let count = codings.iter().filter(|c| chunked(c)).count();
        return match codings.last() {
            Some(last) if chunked(last) && count == 1 => Ok(BodyFraming::Chunked),
            _ if count > 0 => Err(format!(
                "chunked applied other than once, last: {}",
                te.iter()
                    .map(|v| v.escape_ascii().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(BodyFraming::UntilClose),
        };
    }
    let mut length = None;
    for v in cl {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 18 {
                return Err(format!("bad Content-Length `{}`", v.escape_ascii()));
            }
            let n: u64 = std::str::from_utf8(part).unwrap().parse().unwrap();
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length".to_owned());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::None,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of a chunked body at the start of `buf` (RFC 9112 §7.1, strictly: chunk
/// extensions as the grammar has them, trailer fields as field lines), None when it is not all
/// there yet.
pub fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut i = 0;
    loop {
        let Some(eol) = find(&buf[i..], b"\r\n") else {
            if buf[i..].len() > 4096 || buf[i..].contains(&b'\n') {
                return Err(format!("bad chunk line at {i}"));
            }
            return Ok(None);
        };
        let line = &buf[i..i + eol];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 15 {
            return Err(format!("bad chunk size `{}`", line.escape_ascii()));
        }
        check_chunk_ext(&line[digits..])
            .map_err(|e| format!("chunk line `{}`: {e}", line.escape_ascii()))?;
        let size = usize::from_str_radix(std::str::from_utf8(&line[..digits]).unwrap(), 16)
            .map_err(|e| e.to_string())?;
        i += eol + 2;
        if size == 0 {
            // Trailer section: field lines, then an empty line.
            loop {
                let Some(eol) = find(&buf[i..], b"\r\n") else {
                    if buf[i..].contains(&b'\n') {
                        return Err("bare LF in the trailer section".to_owned());
                    }
                    return Ok(None);
                };
                if eol == 0 {
                    return Ok(Some(i + 2));
                }
                let line = &buf[i..i + eol];
                let colon = line.iter().position(|&b| b == b':');
                let ok = colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&b| is_tchar(b)))
                    && !line.contains(&b'\n');
                if !ok {
                    return Err(format!("bad trailer line `{}`", line.escape_ascii()));
                }
                i += eol + 2;
            }
        }
        if buf.len() < i + size + 2 {
            if buf.len() >= i + size && !b"\r\n".starts_with(&buf[i + size..]) {
                return Err("chunk data not followed by CRLF".to_owned());
            }
            return Ok(None);
        }
        if &buf[i + size..i + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_owned());
        }
        i += size + 2;
    }
}

/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn check_chunk_ext(mut s: &[u8]) -> Result<(), String> {
    let bws = |s: &mut &[u8]| {
        while let [b' ' | b'\t', rest @ ..] = *s {
            *s = rest;
        }
    };
    let token = |s: &mut &[u8]| -> Result<(), String> {
        let n = s.iter().take_while(|&&b| is_tchar(b)).count();
        if n == 0 {
            return Err("token expected".to_owned());
        }
        *s = &s[n..];
        Ok(())
    };
    while !s.is_empty() {
        bws(&mut s);
        let [b';', rest @ ..] = s else {
            return Err("`;` expected".to_owned());
        };
        s = rest;
        bws(&mut s);
        token(&mut s)?;
        let mut t = s;
        bws(&mut t);
        if let [b'=', rest @ ..] = t {
            s = rest;
            bws(&mut s);
            if let [b'"', rest @ ..] = s {
                s = rest;
                loop {
                    match s {
                        [b'"', rest @ ..] => {
                            s = rest;
                            break;
                        }
                        [b'\\', c, rest @ ..] if *c == b'\t' || (0x20..0x7f).contains(c) => {
                            s = rest
                        }
                        [c, rest @ ..]
                            if *c == b'\t'
                                || *c == b' '
                                || (0x21..=0x7e).contains(c)
                                || *c >= 0x80 =>
                        {
                            s = rest
                        }
                        _ => return Err("bad quoted-string".to_owned()),
                    }
                }
            } else {
                token(&mut s)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The invariants

/// Runs `data` through the front end and checks every invariant; Err says what broke.
pub fn check_front_end(data: &[u8]) -> Result<(), String> {
    let input = Input::split(data);
    let run = run(&input);
    if !run.ended {
        return Err(format!(
            "the connection did not end within {RUN_LIMIT:?} (client got {} bytes)",
            run.client_got.len()
        ));
    }
    check_origin(&run.origin)?;
    check_client(input.client, &run.client_got)
}

/// A short summary of what an input did, for choosing which inputs the corpus keeps (the
/// smallest per outcome): the status line and block reason of each answer the client got,
/// whether they ended cut short, and how many requests each origin connection received.
pub fn outcome(data: &[u8]) -> String {
    let input = Input::split(data);
    let run = run(&input);
    let mut out = String::new();
    let mut at = 0;
    let got = &run.client_got;
    while at < got.len() {
        let mut headers = vec![httparse::EMPTY_HEADER; MAX_PARSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head_len)) = resp.parse(&got[at..]) else {
            out.push_str(" ?");
            break;
        };
        let reason = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(BLOCK_REASON_HEADER))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default();
        out.push_str(&format!(" {}{reason}", resp.code.unwrap_or(0)));
        // The next answer, if there is one, starts at the next status line.
        match find(&got[at + head_len..], b"HTTP/1.") {
            Some(next) => at += head_len + next,
            None => break,
        }
    }
    out.push_str(" |");
    for conn in &run.origin {
        let mut n = 0;
        let mut at = 0;
        while let ReqParse::Complete(req) | ReqParse::BodyPartial(req) =
            parse_request(&conn.received[at..])
        {
            n += 1;
            at = at.saturating_add(req.total_len);
            if at >= conn.received.len() {
                break;
            }
        }
        out.push_str(&format!(" {n}"));
    }
    out
}

/// A run told in full, for looking into one input.
pub fn describe(data: &[u8]) -> String {
    let input = Input::split(data);
    let run = run(&input);
    let mut out = format!(
        "flags {:#04x}\nclient sent:\n{}\norigin answers:\n{}\nended: {}\nclient got:\n{}\n",
        input.flags,
        input.client.escape_ascii(),
        input.origin.escape_ascii(),
        run.ended,
        run.client_got.escape_ascii()
    );
    for (n, conn) in run.origin.iter().enumerate() {
        out.push_str(&format!(
            "origin connection {n} received (tunnel from {:?}):\n{}\n",
            conn.tunnel_from,
            conn.received.escape_ascii()
        ));
    }
    out
}

/// Every request the origin received is whole, has one `Host`, and is for a host the
/// registry allows (as is an absolute-form target's authority).
pub fn check_origin(conns: &[OriginConn]) -> Result<(), String> {
    for (n, conn) in conns.iter().enumerate() {
        let bytes = match conn.tunnel_from {
            Some(end) => &conn.received[..end.min(conn.received.len())],
            None => &conn.received[..],
        };
        let mut at = 0;
        while at < bytes.len() {
            let req = match parse_request(&bytes[at..]) {
                ReqParse::Complete(req) => req,
                ReqParse::BodyPartial(req) => req,
                ReqParse::HeadPartial => {
                    return Err(format!(
                        "origin connection {n} received a cut-short request head: `{}`",
                        bytes[at..].escape_ascii()
                    ))
                }
                ReqParse::Bad(e) => {
                    return Err(format!(
                        "origin connection {n} received bytes that are not a request ({e}): `{}`",
                        bytes[at..bytes.len().min(at + 300)].escape_ascii()
                    ))
                }
            };
            let hosts = req.values("host");
            let [host] = hosts[..] else {
                return Err(format!(
                    "origin connection {n} received a request with {} Host fields",
                    hosts.len()
                ));
            };
            let allowed = |authority: &[u8], what: &str| match decide(authority) {
                Ok(Decision::Allow) => Ok(()),
                other => Err(format!(
                    "origin connection {n} received a request whose {what} `{}` may not pass \
                     ({other:?}): `{}`",
                    authority.escape_ascii(),
                    bytes[at..at + req.head_len].escape_ascii()
                )),
            };
            allowed(host, "Host")?;
            if let Some(authority) = absolute_authority(&req.target) {
                allowed(authority, "target's authority")?;
            }
            at = at.saturating_add(req.total_len);
        }
    }
    Ok(())
}

/// The authority of an absolute-form target (`http://a.cn:8080/p` → `a.cn:8080`).
fn absolute_authority(target: &[u8]) -> Option<&[u8]> {
    let after = find(target, b"://")? + 3;
    if !target[..after - 3]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return None;
    }
    let rest = &target[after..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    // Userinfo is not part of the host.
    Some(match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    })
}

/// What the checks know about the client's n-th request.
#[derive(Debug, Default)]
struct ClientReq {
    /// The checks parsed its head (else `method` is a guess: the first word).
    parsed: bool,
    method: String,
    /// The whole request is there (so the client waits for its answer).
    complete: bool,
    /// It asked for an upgrade (so a 101 may answer it).
    upgrade: bool,
    /// The block answer it must get, when the checks can tell on their own.
    block: Option<BlockReason>,
}

/// The client's requests as far as they can be delimited; the bytes after the last one (a
/// request the checks cannot parse) count as one more request, with its first word as method.
fn client_requests(client: &[u8]) -> Vec<ClientReq> {
    let max_header_bytes = fixed().settings.listeners[0].max_header_bytes;
    let mut out = Vec::new();
    let mut at = 0;
    while at < client.len() {
        match parse_request(&client[at..]) {
            ReqParse::Complete(req) => {
                out.push(ClientReq {
                    parsed: true,
                    method: req.method.clone(),
                    complete: true,
                    upgrade: !req.values("upgrade").is_empty(),
                    block: expected_block(&req, max_header_bytes),
                });
                at += req.total_len;
            }
            ReqParse::BodyPartial(req) => {
                out.push(ClientReq {
                    parsed: true,
                    method: req.method.clone(),
                    complete: false,
                    upgrade: !req.values("upgrade").is_empty(),
                    block: None,
                });
                break;
            }
            ReqParse::HeadPartial | ReqParse::Bad(_) => {
                let rest = &client[at..];
                let word = rest
                    .iter()
                    .position(|&b| b == b' ')
                    .map(|n| &rest[..n])
                    .unwrap_or(rest);
                out.push(ClientReq {
                    parsed: false,
                    method: String::from_utf8_lossy(word).into_owned(),
                    complete: false,
                    upgrade: find(rest, b"\r\n\r\n").is_some_and(|end| {
                        find(&rest[..end].to_ascii_lowercase(), b"upgrade").is_some()
                    }),
                    block: None,
                });
                break;
            }
        }
    }
    out
}

/// The block a request must get, for the plainest requests only: origin-form target, one
/// `Host`, no body framing, a head within the limit.
fn expected_block(req: &Req, max_header_bytes: usize) -> Option<BlockReason> {
    if !req.target.starts_with(b"/")
        || req.method == "CONNECT"
        || req.head_len >= max_header_bytes
        || !req.values("transfer-encoding").is_empty()
        || !req.values("content-length").is_empty()
        || req.headers.len() > 90
    {
        return None;
    }
    let [host] = req.values("host")[..] else {
        return None;
    };
    match decide(host) {
        Ok(Decision::Block(reason)) => Some(reason),
        Ok(Decision::Allow) => None,
        Err(_) => Some(BlockReason::InvalidHost),
    }
}

/// How many whole final answers `got` holds (interim ones do not count); None when that cannot
/// be told any more (bytes that are not a response, a tunnel, more answers than requests).
fn finals_received(got: &[u8], methods: &[String]) -> Option<usize> {
    let mut at = 0;
    let mut n = 0;
    while at < got.len() {
        let mut headers = vec![httparse::EMPTY_HEADER; MAX_PARSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&got[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Some(n),
            Err(_) => return None,
        };
        let status = resp.code.unwrap_or(0);
        let values = |name: &str| -> Vec<&[u8]> {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        if status == 101 {
            return None;
        }
        if (100..200).contains(&status) {
            at += head_len;
            continue;
        }
        let method = methods.get(n)?;
        let body = &got[at + head_len..];
        let body_len = if method == "HEAD" || status == 204 || status == 304 {
            0
        } else {
            match body_framing(&values("transfer-encoding"), &values("content-length")).ok()? {
                BodyFraming::Length(len) => match usize::try_from(len) {
                    Ok(len) if len <= body.len() => len,
                    _ => return Some(n),
                },
                BodyFraming::Chunked => match chunked_len(body).ok()? {
                    Some(len) => len,
                    None => return Some(n),
                },
                BodyFraming::None | BodyFraming::UntilClose => return Some(n),
            }
        };
        at += head_len + body_len;
        n += 1;
    }
    Some(n)
}

/// What the client received is a sequence of well-framed HTTP/1.x responses, one final
/// response per request at most, in order: interim (1xx) answers without a body, a 101 only to
/// a request that asked to upgrade (what follows is the tunnel's), no body for HEAD, 204 and
/// 304, otherwise a body framed by Content-Length or chunked (never both, chunked once and
/// last), or by close for the last response only. Only the last response may be cut short
/// (the origin stopped), and never a block answer. A response that says `Connection: close` is
/// the last. A block answer names a known reason and has its status.
pub fn check_client(client: &[u8], got: &[u8]) -> Result<(), String> {
    let reqs = client_requests(client);
    let mut at = 0;
    let mut n = 0;
    let show = |from: usize| {
        got[from..got.len().min(from + 400)]
            .escape_ascii()
            .to_string()
    };
    while at < got.len() {
        let mut headers = vec![httparse::EMPTY_HEADER; MAX_PARSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&got[at..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                return Err(format!("response {n}: head cut short: `{}`", show(at)))
            }
            Err(e) => return Err(format!("response {n}: bad head ({e}): `{}`", show(at))),
        };
        // Pingora's path relays the origin's `HTTP/1.0` status line as it is (the front end
        // writes `HTTP/1.1`): a version, not a framing, matter.
        if !matches!(resp.version, Some(0 | 1)) {
            return Err(format!("response {n}: not HTTP/1.x: `{}`", show(at)));
        }
        let status = resp.code.unwrap_or(0);
        let values = |name: &str| -> Vec<&[u8]> {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        // Past the requests the checks could parse, the gate's parsers (Pingora's is more
        // lenient than httparse's defaults, and escapes a request line it would refuse) may
        // still find requests: any number of answers, methods unknown.
        let unknown = ClientReq::default();
        let req = match reqs.get(n) {
            Some(req) if req.parsed => req,
            Some(_) => &unknown,
            None if reqs.last().is_some_and(|r| !r.parsed) => &unknown,
            None => {
                return Err(format!(
                    "response {n} but the client sent {} requests: `{}`",
                    reqs.len(),
                    show(at)
                ))
            }
        };
        if (100..200).contains(&status) {
            if status == 101 {
                if !req.upgrade {
                    return Err(format!(
                        "response {n}: 101 to a request that did not ask to upgrade: `{}`",
                        show(at)
                    ));
                }
                return Ok(());
            }
            at += head_len;
            continue;
        }
        let block = values(BLOCK_REASON_HEADER);
        let reason = match block[..] {
            [] => None,
            [value] => {
                let reason = BlockReason::ALL
                    .into_iter()
                    .find(|r| r.as_str().as_bytes() == value);
                match reason {
                    Some(r) if r.http_status() == status => Some(r),
                    _ => {
                        return Err(format!(
                            "response {n}: block answer with status {status} and reason `{}`",
                            value.escape_ascii()
                        ))
                    }
                }
            }
            _ => {
                return Err(format!(
                    "response {n}: several {BLOCK_REASON_HEADER} fields"
                ))
            }
        };
        if let Some(want) = req.block {
            if reason != Some(want) {
                return Err(format!(
                    "response {n}: the request is for a host blocked as {want:?}, the answer \
                     is not that block: `{}`",
                    show(at)
                ));
            }
        }
        let close = values("connection").iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
        // To a request the checks could not parse (it may have been a HEAD), an answer right
        // after which another answer starts, or the connection ends, is taken as bodiless.
        let next_is_answer = || {
            let after = &got[at + head_len..];
            after.is_empty() || after.starts_with(b"HTTP/1.")
        };
        let no_body = req.method == "HEAD"
            || status == 204
            || status == 304
            || (!req.parsed && next_is_answer());
        let framing = body_framing(&values("transfer-encoding"), &values("content-length"))
            .map_err(|e| format!("response {n}: {e}: `{}`", show(at)))?;
        let body = &got[at + head_len..];
        let body_len = match framing {
            _ if no_body => Some(0),
            BodyFraming::None => {
                // No framing fields: the body runs to the close, so this is the last.
                Some(body.len())
            }
            BodyFraming::UntilClose => Some(body.len()),
            BodyFraming::Length(len) => usize::try_from(len).ok().filter(|&len| len <= body.len()),
            BodyFraming::Chunked => {
                chunked_len(body).map_err(|e| format!("response {n}: {e}: `{}`", show(at)))?
            }
        };
        let Some(body_len) = body_len else {
            // Cut short: the origin stopped; the connection must end here.
            if reason.is_some() {
                return Err(format!(
                    "response {n}: block answer cut short: `{}`",
                    show(at)
                ));
            }
            return Ok(());
        };
        at += head_len + body_len;
        n += 1;
        if close && at < got.len() {
            return Err(format!(
                "response {}: bytes after a response that said Connection: close: `{}`",
                n - 1,
                show(at)
            ));
        }
    }
    Ok(())
}
