//! Test helpers: a real origin that records what it receives, the real `icp-gate` binary run with
//! a config in a temporary directory, a raw HTTP/1.1 client, and snapshot writing. Everything
//! listens on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icp_gate_registry::{DeltaWriter, SnapshotWriter, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_icp-gate");

/// Hands out loopback ports no other test in this process holds. The OS picks a free port; the
/// registry makes sure two tests never get the same one even after the probe socket is closed.
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut taken = TAKEN.lock().unwrap();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------------------------
// Origin

/// A request as the origin received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which origin connection carried it (numbered from 0 in accept order).
    pub conn: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 origin on 127.0.0.1: answers every request `200` with `origin saw <host>` and
/// records every request it receives. Keep-alive, Content-Length and chunked request bodies.
pub struct Origin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Origin {
    pub fn start() -> Origin {
        Self::start_on("127.0.0.1:0")
    }

    /// An origin listening on `bind` (a loopback address and port).
    pub fn start_on(bind: &str) -> Origin {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        std::thread::spawn(move || {
            for (id, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                std::thread::spawn(move || serve_origin_conn(id, conn, rec));
            }
        });
        Origin { addr, received }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The Host of every request received, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|r| r.header("host").unwrap_or("<none>").to_owned())
            .collect()
    }
}

fn serve_origin_conn(id: usize, conn: TcpStream, rec: Arc<Mutex<Vec<Received>>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let Some(mut req) = read_request(&mut reader) else {
            return;
        };
        req.conn = id;
        let delay = req
            .header("x-test-delay-ms")
            .and_then(|v| v.parse::<u64>().ok());
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = format!("origin saw {}", req.header("host").unwrap_or("<none>"));
        rec.lock().unwrap().push(req);
        if let Some(ms) = delay {
            std::thread::sleep(Duration::from_millis(ms));
        }
        // `X-Test-Response` picks how the answer is framed, to exercise the gate's relay.
        let shape = req_shape(&rec, id);
        let conn_close = "Connection: close\r\n";
        let written = match shape.as_deref() {
            Some("chunked") => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Origin: test\r\n{}\r\n",
                    if close { conn_close } else { "" }
                );
                // Two chunks with a pause between, so the relay sees them in separate reads.
                writer
                    .write_all(format!("{head}{:x}\r\n{body}\r\n", body.len()).as_bytes())
                    .and_then(|_| writer.flush())
                    .map(|_| std::thread::sleep(Duration::from_millis(50)))
                    .and_then(|_| writer.write_all(b"6;ext=1\r\n, done\r\n0\r\nX-Trailer: t\r\n\r\n"))
            }
            Some("until-close") => {
                let _ = writer.write_all(
                    format!("HTTP/1.1 200 OK\r\nX-Origin: test\r\n\r\n{body}").as_bytes(),
                );
                return;
            }
            Some("early-hints") => writer.write_all(
                format!(
                    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                     HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if close { conn_close } else { "" }
                )
                .as_bytes(),
            ),
            Some("then-close") => {
                // A normal answer, then the origin drops the kept-alive connection unannounced.
                let _ = writer.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                        .as_bytes(),
                );
                return;
            }
            Some("no-content") => writer.write_all(b"HTTP/1.1 204 No Content\r\nX-Origin: test\r\n\r\n"),
            Some("big") => {
                let big: Vec<u8> = (0..BIG_BODY).map(|i| b'a' + (i % 26) as u8).collect();
                writer
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_BODY}\r\n\r\n").as_bytes())
                    .and_then(|_| writer.write_all(&big))
            }
            _ => writer.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Origin: test\r\n{}\r\n{body}",
                    body.len(),
                    if close { conn_close } else { "" }
                )
                .as_bytes(),
            ),
        };
        if written.is_err() || close {
            return;
        }
    }
}

/// The size of the body the origin sends for `X-Test-Response: big`.
pub const BIG_BODY: usize = 3 * 1024 * 1024 + 17;

fn req_shape(rec: &Arc<Mutex<Vec<Received>>>, conn: usize) -> Option<String> {
    let rec = rec.lock().unwrap();
    rec.iter()
        .rev()
        .find(|r| r.conn == conn)
        .and_then(|r| r.header("x-test-response").map(str::to_owned))
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let (line, headers) = read_head(reader)?;
    let mut parts = line.splitn(3, ' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let body = read_body(reader, &headers, false)?;
    Some(Received {
        method,
        target,
        headers,
        body,
        conn: 0,
    })
}

type Headers = Vec<(String, String)>;

fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The start line and the header fields of a message; None at end of stream.
fn read_head(reader: &mut impl BufRead) -> Option<(String, Headers)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Some((line.trim_end().to_owned(), headers))
}

/// A message body framed by Content-Length or chunked; with `to_close`, a body with neither
/// runs to the end of the stream (responses).
fn read_body(reader: &mut impl BufRead, headers: &Headers, to_close: bool) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(len) = find_header(headers, "content-length").and_then(|v| v.parse().ok()) {
        body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
    } else if find_header(headers, "transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            if n == 0 {
                // Trailer fields, then the empty line.
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).ok()?;
                    if line.trim_end_matches(['\r', '\n']).is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if to_close {
        reader.read_to_end(&mut body).ok()?;
    }
    Some(body)
}

// ---------------------------------------------------------------------------------------------
// A snapshot server

/// What the snapshot server does with the next requests.
#[derive(Clone)]
pub enum Serve {
    /// 200 with an ETag (or 304 when the client already has it).
    Snapshot(Vec<u8>),
    /// Accepts and closes the connection without answering.
    Down,
    Status(u16),
    /// Announces the whole length, sends only this many bytes, closes.
    Truncated(Vec<u8>, usize),
    /// Waits, then serves.
    Slow(Vec<u8>, Duration),
}

/// A real HTTP server on 127.0.0.1 serving registry snapshots at `/registry.tsv` and deltas at
/// `/deltas/<from>` (404 for a delta not published), and misbehaving on demand (`Down` and
/// `Status` apply to every path).
pub struct SnapshotServer {
    pub addr: SocketAddr,
    serve: Arc<Mutex<Serve>>,
    /// The If-None-Match of every snapshot request received.
    pub conditional: Arc<Mutex<Vec<Option<String>>>>,
    deltas: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    /// Every request's path and the status answered (0: none).
    answered: Arc<Mutex<Vec<(String, u16)>>>,
}

#[derive(Clone)]
struct ServerState {
    serve: Arc<Mutex<Serve>>,
    conditional: Arc<Mutex<Vec<Option<String>>>>,
    deltas: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    answered: Arc<Mutex<Vec<(String, u16)>>>,
}

impl SnapshotServer {
    pub fn start(first: Serve) -> SnapshotServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = ServerState {
            serve: Arc::new(Mutex::new(first)),
            conditional: Arc::new(Mutex::new(Vec::new())),
            deltas: Arc::new(Mutex::new(BTreeMap::new())),
            answered: Arc::new(Mutex::new(Vec::new())),
        };
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve_snapshot(conn, &state));
            }
        });
        SnapshotServer {
            addr,
            serve: state.serve,
            conditional: state.conditional,
            deltas: state.deltas,
            answered: state.answered,
        }
    }

    pub fn set(&self, serve: Serve) {
        *self.serve.lock().unwrap() = serve;
    }

    pub fn url(&self) -> String {
        format!("http://{}/registry.tsv", self.addr)
    }

    /// The delta feed's prefix (`registry.delta_source`).
    pub fn delta_url(&self) -> String {
        format!("http://{}/deltas/", self.addr)
    }

    /// Serves `bytes` as the delta from serial `from` (replacing any there).
    pub fn publish_delta(&self, from: u64, bytes: Vec<u8>) {
        self.deltas
            .lock()
            .unwrap()
            .insert(format!("/deltas/{from}"), bytes);
    }

    /// Every request's path and the status it got, in order.
    pub fn answered(&self) -> Vec<(String, u16)> {
        self.answered.lock().unwrap().clone()
    }

    /// Full snapshots sent (200 answers for `/registry.tsv`).
    pub fn snapshot_downloads(&self) -> usize {
        self.answered()
            .iter()
            .filter(|(path, status)| path == "/registry.tsv" && *status == 200)
            .count()
    }
}

fn serve_snapshot(conn: TcpStream, state: &ServerState) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let Some((line, headers)) = read_head(&mut reader) else {
        return;
    };
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let behavior = state.serve.lock().unwrap().clone();
    let answered = |status: u16| state.answered.lock().unwrap().push((path.clone(), status));
    let ok = |bytes: &[u8], if_none_match: Option<&str>| {
        use sha2::Digest;
        let etag = format!(
            "\"{}\"",
            icp_gate_registry::snapshot::hex(&sha2::Sha256::digest(bytes)[..8])
        );
        if if_none_match == Some(etag.as_str()) {
            answered(304);
            return format!(
                "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
        }
        answered(200);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n\r\n",
            bytes.len()
        )
        .into_bytes();
        out.extend_from_slice(bytes);
        out
    };
    let status = |code: u16| {
        answered(code);
        format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    let answer = match behavior {
        Serve::Down => {
            answered(0);
            return;
        }
        Serve::Status(code) => status(code),
        _ if path.starts_with("/deltas/") => {
            let delta = state.deltas.lock().unwrap().get(&path).cloned();
            match delta {
                Some(bytes) => ok(&bytes, None),
                None => status(404),
            }
        }
        Serve::Snapshot(bytes) => {
            let if_none_match = find_header(&headers, "if-none-match").map(str::to_owned);
            state
                .conditional
                .lock()
                .unwrap()
                .push(if_none_match.clone());
            ok(&bytes, if_none_match.as_deref())
        }
        Serve::Truncated(bytes, keep) => {
            answered(200);
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            )
            .into_bytes();
            out.extend_from_slice(&bytes[..keep]);
            out
        }
        Serve::Slow(bytes, wait) => {
            std::thread::sleep(wait);
            let if_none_match = find_header(&headers, "if-none-match").map(str::to_owned);
            ok(&bytes, if_none_match.as_deref())
        }
    };
    let _ = writer.write_all(&answer);
}

/// A plain static file server on 127.0.0.1, what an operator puts in front of a directory that
/// `icp-gate registry publish` writes: `GET /PATH` answers the file `root/PATH` (200, read at
/// the time of the request) or 404. Records every request's path and status.
pub struct StaticFiles {
    pub addr: SocketAddr,
    answered: Arc<Mutex<Vec<(String, u16)>>>,
}

impl StaticFiles {
    pub fn start(root: &Path) -> StaticFiles {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_owned(), answered.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || serve_file(conn, &root, &log));
            }
        });
        StaticFiles { addr, answered }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Every request's path and the status it got, in order.
    pub fn answered(&self) -> Vec<(String, u16)> {
        self.answered.lock().unwrap().clone()
    }
}

fn serve_file(conn: TcpStream, root: &Path, log: &Mutex<Vec<(String, u16)>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let Some((line, _)) = read_head(&mut reader) else {
        return;
    };
    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let relative = path.trim_start_matches('/');
    let file = (!relative
        .split('/')
        .any(|part| part == ".." || part.is_empty()))
    .then(|| std::fs::read(root.join(relative)).ok())
    .flatten();
    let answer = match file {
        Some(bytes) => {
            log.lock().unwrap().push((path, 200));
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            )
            .into_bytes();
            out.extend_from_slice(&bytes);
            out
        }
        None => {
            log.lock().unwrap().push((path, 404));
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = writer.write_all(&answer);
}

// ---------------------------------------------------------------------------------------------
// Snapshots

/// One record of a test snapshot.
pub type Rec<'a> = (&'a str, Status, Option<&'a str>, Option<&'a str>);

/// The record lines of `records` alone (a records file, as `registry build` reads it).
pub fn record_lines(records: &[Rec<'_>]) -> String {
    records
        .iter()
        .map(|(name, status, filing, expires)| {
            let mut line = format!("{name}\t{}", status.as_str());
            if filing.is_some() || expires.is_some() {
                line.push_str(&format!("\t{}", filing.unwrap_or_default()));
            }
            if let Some(t) = expires {
                line.push_str(&format!("\t{t}"));
            }
            line + "\n"
        })
        .collect()
}

pub fn snapshot_bytes(serial: u64, records: &[Rec<'_>]) -> Vec<u8> {
    let mut w = SnapshotWriter::new(Vec::new(), serial, "2026-11-22T03:00:00Z").unwrap();
    for (name, status, filing, expires) in records {
        w.record(name, *status, *filing, *expires).unwrap();
    }
    w.finish().unwrap()
}

/// A delta from `from` to `to`: `upserts` then `removals`, with `entries` records after it.
pub fn delta_bytes(
    from: u64,
    to: u64,
    upserts: &[Rec<'_>],
    removals: &[&str],
    entries: u64,
) -> Vec<u8> {
    let mut w = DeltaWriter::new(Vec::new(), from, to, "2026-11-22T03:00:05Z").unwrap();
    for (name, status, filing, expires) in upserts {
        w.upsert(name, *status, *filing, *expires).unwrap();
    }
    for name in removals {
        w.remove(name).unwrap();
    }
    w.finish(entries).unwrap()
}

/// Replaces `path` atomically (write + rename), as a sync job would.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The registry most tests use.
pub fn standard_records() -> Vec<Rec<'static>> {
    use Status::*;
    vec![
        ("example.com", Connected, Some("京ICP备12345678号-1"), None),
        ("bad.example.com", Denied, None, None),
        ("例子.中国", Connected, Some("京ICP备87654321号-2"), None),
        (
            "cdn-only.cn",
            Unconnected,
            Some("沪ICP备11112222号-1"),
            None,
        ),
        (
            "moved.cn",
            AccessCancelled,
            Some("浙ICP备22223333号-1"),
            None,
        ),
        ("gone.com.cn", Revoked, None, None),
        (
            "trial.com.cn",
            Connected,
            Some("粤ICP备33334444号-3"),
            Some("2099-12-31T00:00:00Z"),
        ),
        (
            "lapsed.com.cn",
            Connected,
            Some("粤ICP备33334445号-1"),
            Some("2020-01-01T00:00:00Z"),
        ),
        ("a.b.deep.cn", Connected, None, None),
        ("x.a.b.deep.cn", Denied, None, None),
        ("203.0.113.7", Connected, Some("京ICP备55556666号-1"), None),
        ("2001:db8::7", Connected, None, None),
    ]
}

// ---------------------------------------------------------------------------------------------
// The gate

pub struct GateOptions {
    pub require: &'static str,
    pub mode: &'static str,
    pub refresh_seconds: u64,
    /// Extra TOML appended to the generated config.
    pub extra: String,
    /// Extra keys for the `[[listener]]` table.
    pub listener_extra: String,
    /// Extra keys and sub-tables for `[registry]`, placed after it.
    pub registry_extra: String,
    /// Write the registry before start (false: the source is missing at start).
    pub registry: Option<Vec<u8>>,
    pub upstream: Option<SocketAddr>,
    pub wait_ready: bool,
    /// `registry.state_dir`, when set.
    pub state_dir: Option<PathBuf>,
    /// `registry.source` instead of the file in the gate's directory.
    pub source: Option<String>,
    /// Extra keys for `[upstream]` (e.g. `read_timeout_seconds = 1`).
    pub upstream_extra: String,
    /// Environment variables set on the gate process.
    pub env: Vec<(String, String)>,
    /// `[server] grace_period_seconds`.
    pub grace_period_seconds: u64,
    /// Extra keys for `[admin]` (e.g. `token_file = "token"`).
    pub admin_extra: String,
    /// Serve the admin listener on this Unix socket instead of a loopback port (`Gate::admin`
    /// is then an address nothing listens on).
    pub admin_unix: Option<PathBuf>,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            require: "connected",
            mode: "enforce",
            refresh_seconds: 1,
            extra: String::new(),
            listener_extra: String::new(),
            registry_extra: String::new(),
            registry: Some(snapshot_bytes(1, &standard_records())),
            upstream: None,
            wait_ready: true,
            state_dir: None,
            source: None,
            upstream_extra: String::new(),
            env: Vec::new(),
            grace_period_seconds: 1,
            admin_extra: String::new(),
            admin_unix: None,
        }
    }
}

/// The real `icp-gate` binary, running with a generated config, killed on drop.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub registry_path: PathBuf,
    child: Option<Child>,
}

impl Gate {
    pub fn start(origin: &Origin, opts: GateOptions) -> Gate {
        let upstream = opts.upstream.unwrap_or(origin.addr);
        Self::start_to(upstream, opts)
    }

    /// The gate forwarding to `upstream` (any origin, or an address nothing listens on).
    pub fn start_to(upstream: SocketAddr, opts: GateOptions) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let registry_path = dir.path().join("registry.tsv");
        if let Some(bytes) = &opts.registry {
            std::fs::write(&registry_path, bytes).unwrap();
        }
        let config = format!(
            r#"
[[listener]]
name = "test"
address = "127.0.0.1:{port}"
require = "{require}"
mode = "{mode}"
{listener_extra}

[upstream]
servers = ["{upstream}"]
connect_timeout_seconds = 2
{upstream_extra}

[registry]
source = "{source}"
refresh_interval_seconds = {refresh}
{state_dir}
{registry_extra}

[admin]
{admin_address}
{admin_extra}

[server]
threads = 2
grace_period_seconds = {grace}
shutdown_timeout_seconds = 1
pid_file = "{dir}/icp-gate.pid"
upgrade_sock = "{dir}/upgrade.sock"

[log]
level = "info"
{extra}
"#,
            require = opts.require,
            mode = opts.mode,
            upstream = upstream,
            upstream_extra = opts.upstream_extra,
            source = opts
                .source
                .clone()
                .unwrap_or_else(|| format!("file://{}", registry_path.display())),
            refresh = opts.refresh_seconds,
            grace = opts.grace_period_seconds,
            dir = dir.path().display(),
            extra = opts.extra,
            listener_extra = opts.listener_extra,
            admin_address = match &opts.admin_unix {
                Some(path) => format!("address = \"unix:{}\"", path.display()),
                None => format!("address = \"127.0.0.1:{admin_port}\""),
            },
            admin_extra = opts.admin_extra,
            registry_extra = opts.registry_extra,
            state_dir = opts
                .state_dir
                .as_ref()
                .map(|d| format!("state_dir = \"{}\"", d.display()))
                .unwrap_or_default(),
        );
        let config_path = dir.path().join("icp-gate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("gate.log")).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("starting icp-gate");
        let gate = Gate {
            addr: addr(port),
            admin: addr(admin_port),
            dir,
            registry_path,
            child: Some(child),
        };
        let wait = Duration::from_secs(20);
        wait_for("the gate to listen", wait, || {
            TcpStream::connect(gate.addr).ok()
        });
        match &opts.admin_unix {
            Some(path) => {
                wait_for("the admin socket", wait, || {
                    std::os::unix::net::UnixStream::connect(path).ok()
                });
                if opts.wait_ready {
                    wait_for("the gate to be ready", wait, || {
                        unix_get(path, "/readyz")
                            .starts_with("HTTP/1.1 200")
                            .then_some(())
                    });
                }
            }
            None => {
                wait_for("the admin listener", wait, || {
                    TcpStream::connect(gate.admin).ok()
                });
                if opts.wait_ready {
                    wait_for("the gate to be ready", wait, || {
                        (get(gate.admin, "/readyz").status == 200).then_some(())
                    });
                }
            }
        }
        gate
    }

    /// The gate's resident memory now (`VmRSS` of /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gate.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> Metrics {
        Metrics(get(self.admin, "/metrics").text())
    }

    /// Replaces the registry file and waits until the gate serves `serial`.
    pub fn publish(&self, bytes: &[u8], serial: u64) {
        write_atomically(&self.registry_path, bytes);
        wait_for(
            &format!("serial {serial} in service"),
            Duration::from_secs(15),
            || {
                (self.metrics().value("icp_gate_registry_serial", &[]) == serial as f64)
                    .then_some(())
            },
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The configuration file the gate runs with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("icp-gate.toml")
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("started");
        child.try_wait().unwrap().is_some()
    }

    /// Waits for the process to exit by itself (after a hand-over, say); returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("started");
        wait_for("the gate to exit", timeout, || child.try_wait().unwrap())
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the gate did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gate log ----\n{}", self.log());
        }
    }
}

/// Prometheus text exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of `name` with exactly these labels (in any order); 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
        for line in self.0.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let have: BTreeMap<&str, &str> = label_text
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            let have: BTreeMap<&str, &str> = have
                .into_iter()
                .filter(|(k, _)| *k != "listener" || want.contains_key("listener"))
                .collect();
            if have == want {
                return value.parse().unwrap();
            }
        }
        0.0
    }

    pub fn requests(&self, decision: &str, reason: &str) -> f64 {
        self.value(
            "icp_gate_requests_total",
            &[("decision", decision), ("reason", reason)],
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The statuses of the interim (1xx, not 101) answers read before this one.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn block_reason(&self) -> Option<&str> {
        self.header("x-icp-block-reason")
    }
}

/// A raw HTTP/1.1 client connection: sends exactly the bytes given.
pub struct Conn {
    reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, raw: &[u8]) -> Response {
        self.writer.write_all(raw).unwrap();
        let head_only = raw.starts_with(b"HEAD ");
        self.read_response(head_only)
            .unwrap_or_else(|| panic!("no response to {:?}", String::from_utf8_lossy(raw)))
    }

    /// The next final answer (a 101 included), after any interim ones, as a client reads it.
    pub fn read_response(&mut self, head_only: bool) -> Option<Response> {
        let mut interim = Vec::new();
        loop {
            let (line, headers) = read_head(&mut self.reader)?;
            let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let body = if head_only || status == 204 || status == 304 || status == 101 {
                Vec::new()
            } else {
                read_body(&mut self.reader, &headers, true)?
            };
            return Some(Response {
                status,
                headers,
                body,
                interim,
            });
        }
    }

    /// True when the server has closed the connection (reads end of stream).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    Conn::open(addr).send(raw.as_bytes())
}

/// `GET path` with `Host: host` on a fresh connection.
pub fn get_host(addr: SocketAddr, host: &str) -> Response {
    request(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: e2e\r\n\r\n"),
    )
}

/// `GET path` over a Unix socket (`Host: localhost`, as curl sends it); the whole answer as
/// text.
pub fn unix_get(socket: &Path, path: &str) -> String {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// `GET path` on a fresh connection, with the address as Host (as curl sends it: the admin
/// listener refuses a Host that is not an IP address, `localhost` or an allowed name).
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

// ---------------------------------------------------------------------------------------------
// A scripted origin that records the raw bytes it receives

/// A request exactly as a [`ScriptedOrigin`] received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRequest {
    /// Which origin connection carried it (numbered from 0 in accept order).
    pub conn: usize,
    /// The request line as received (without its CRLF).
    pub line: Vec<u8>,
    /// The header fields in order, names and values as received (values without surrounding
    /// whitespace).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body's payload (de-chunked when chunked).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, as received.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The whole message as received: head, then the body with its framing.
    pub raw: Vec<u8>,
}

impl RawRequest {
    pub fn method(&self) -> String {
        String::from_utf8_lossy(self.line.split(|&b| b == b' ').next().unwrap_or_default())
            .into_owned()
    }

    pub fn target(&self) -> Vec<u8> {
        self.line
            .split(|&b| b == b' ')
            .nth(1)
            .unwrap_or_default()
            .to_vec()
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn values(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.values(name)
            .first()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// What a [`ScriptedOrigin`] does with a request it has read.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Writes these bytes and reads the next request on the connection.
    Send(Vec<u8>),
    /// Writes these bytes and closes the connection.
    SendClose(Vec<u8>),
    /// Closes the connection without answering.
    Close,
    /// Answers nothing for this long, then closes.
    Hold(Duration),
    /// Writes these bytes, then echoes everything it reads until the peer closes (a tunnel
    /// after a `101`).
    Tunnel(Vec<u8>),
}

/// Picks the reply to the `n`th request the origin received (from 0, across connections).
pub type Script = Arc<dyn Fn(usize, &RawRequest) -> Reply + Send + Sync>;

/// An HTTP/1.1 origin on 127.0.0.1 that records every request byte for byte and answers what
/// its script says. A request with `Expect: 100-continue` gets `100 Continue` before its body
/// is read, as a real origin would send.
pub struct ScriptedOrigin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<RawRequest>>>,
    /// Connections accepted so far.
    accepted: Arc<Mutex<usize>>,
}

impl ScriptedOrigin {
    pub fn start(script: Script) -> ScriptedOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (rec, acc) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for (id, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                *acc.lock().unwrap() += 1;
                let (rec, script) = (rec.clone(), script.clone());
                std::thread::spawn(move || serve_scripted(id, conn, rec, script));
            }
        });
        ScriptedOrigin {
            addr,
            received,
            accepted,
        }
    }

    pub fn received(&self) -> Vec<RawRequest> {
        self.received.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

fn serve_scripted(id: usize, conn: TcpStream, rec: Arc<Mutex<Vec<RawRequest>>>, script: Script) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let Some(req) = read_raw_request(id, &mut reader, &mut writer) else {
            return;
        };
        let reply = {
            let mut rec = rec.lock().unwrap();
            let n = rec.len();
            rec.push(req.clone());
            script(n, &req)
        };
        match reply {
            Reply::Send(bytes) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendClose(bytes) => {
                let _ = writer.write_all(&bytes);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Close => {
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Hold(d) => {
                std::thread::sleep(d);
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Tunnel(bytes) => {
                if writer.write_all(&bytes).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    let n = match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if writer.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Header fields as received: names and values as bytes, in order.
pub type RawFields = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits a header line into its name and its value without surrounding whitespace.
fn split_field(line: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    let name = line[..colon].to_vec();
    let value = line.get(colon + 1..).unwrap_or_default();
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    (name, value[start..end.max(start)].to_vec())
}

/// One line with its line ending, appended to `raw`; the line without it. None at end of stream.
fn raw_line(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).ok()? == 0 {
        return None;
    }
    raw.extend_from_slice(&line);
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Some(line)
}

/// A head: its start line and fields; None at end of stream.
pub fn read_raw_head(reader: &mut impl BufRead, raw: &mut Vec<u8>) -> Option<(Vec<u8>, RawFields)> {
    let line = raw_line(reader, raw)?;
    let mut headers = Vec::new();
    loop {
        let h = raw_line(reader, raw)?;
        if h.is_empty() {
            break;
        }
        headers.push(split_field(&h));
    }
    Some((line, headers))
}

/// The payload and trailers of a body framed by `headers`: Content-Length, chunked, or (with
/// `to_close`) up to the end of the stream. The framing bytes are appended to `raw`.
pub fn read_raw_body(
    reader: &mut impl BufRead,
    headers: &[(Vec<u8>, Vec<u8>)],
    to_close: bool,
    raw: &mut Vec<u8>,
) -> Option<(Vec<u8>, RawFields)> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked")) {
        loop {
            let size = raw_line(reader, raw)?;
            let size = String::from_utf8_lossy(&size).into_owned();
            let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if n == 0 {
                loop {
                    let t = raw_line(reader, raw)?;
                    if t.is_empty() {
                        break;
                    }
                    trailers.push(split_field(&t));
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            raw.extend_from_slice(&chunk);
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = value("content-length").and_then(|v| v.trim().parse().ok()) {
        body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        raw.extend_from_slice(&body);
    } else if to_close {
        reader.read_to_end(&mut body).ok()?;
        raw.extend_from_slice(&body);
    }
    Some((body, trailers))
}

fn read_raw_request(
    conn: usize,
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> Option<RawRequest> {
    let mut raw = Vec::new();
    let (line, headers) = read_raw_head(reader, &mut raw)?;
    let expects_continue = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case(b"expect") && v.eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").ok()?;
    }
    let (body, trailers) = read_raw_body(reader, &headers, false, &mut raw)?;
    Some(RawRequest {
        conn,
        line,
        headers,
        body,
        trailers,
        raw,
    })
}

/// Values made once per key and shared by every test that asks for them (a case observed on a
/// path, for its per-path test and for the comparison of both paths).
pub type OnceMap<K, V> =
    std::sync::OnceLock<Mutex<std::collections::HashMap<K, Arc<std::sync::OnceLock<Arc<V>>>>>>;

/// The value for `key` in `cache`, made by `make` the first time (other callers wait for it).
pub fn made_once<K: std::hash::Hash + Eq, V>(
    cache: &'static OnceMap<K, V>,
    key: K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let cell = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(|| Arc::new(make())).clone()
}

/// An origin following `script`, and where a gate should forward: its address, or (no script)
/// an address nothing listens on.
pub fn scripted_upstream(script: Option<Script>) -> (Option<ScriptedOrigin>, SocketAddr) {
    let origin = script.map(ScriptedOrigin::start);
    let upstream = match &origin {
        Some(o) => o.addr,
        None => addr(free_port()),
    };
    (origin, upstream)
}

/// A gate's environment for one forwarding path: with `pingora`, `ICP_GATE_FORWARD_PATH=pingora`
/// sends every allowed request through Pingora's proxy instead of the front end.
pub fn forward_path_env(pingora: bool) -> Vec<(String, String)> {
    match pingora {
        true => vec![("ICP_GATE_FORWARD_PATH".to_owned(), "pingora".to_owned())],
        false => Vec::new(),
    }
}

/// What a command wrote, standard output then standard error, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The filing system's next export after `standard_records`: `newly-filed.cn` filed and
/// connected, `cdn-only.cn` revoked (gone from the export).
pub fn next_standard_records() -> Vec<Rec<'static>> {
    let mut records = standard_records();
    records.push((
        "newly-filed.cn",
        Status::Connected,
        Some("京ICP备99990000号-1"),
        None,
    ));
    records.retain(|r| r.0 != "cdn-only.cn");
    records
}
