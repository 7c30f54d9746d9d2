//! The floor of the load harnesses (`benches/load/run.sh`, `tls.sh`, `terminate.sh`, all three
//! run by `compare.sh`): a minimal server that writes the same bytes as icp-gate and parses
//! nothing, run in the same rounds on the same core, so that a table can say how close the gate
//! is to what the machine allows. It is a measuring stick, not a server: no request is parsed,
//! nothing is decided, nothing is logged, and it trusts its client (wrk, h2load, the replayer)
//! not to pipeline, so that one read is one request.
//!
//! ```sh
//! floor http   127.0.0.1:18085 answer.bin                      # cleartext HTTP/1.1
//! floor refuse 127.0.0.1:18445                                 # the TLS refusal
//! floor relay  127.0.0.1:18446 127.0.0.1:18443                 # the TLS passthrough
//! floor tls    127.0.0.1:18464 site.crt site.key answer.bin [answer-h2.txt]   # termination
//! ```
//!
//! Modes:
//!
//! - `http ADDR RESPONSE_FILE`: every read of at least one byte on a connection is answered by
//!   one write of RESPONSE_FILE's bytes: the status line, headers and body exactly as the gate
//!   sent them for that path (the harness captures them from the gate in the same run). When
//!   the answer carries `Connection: close` the floor closes after writing it, as the gate does.
//! - `refuse ADDR`: one read, then the 7 bytes `15 03 03 00 02 02 70` (the fatal
//!   `unrecognized_name` alert the gate sends for an unfiled SNI), then a close.
//! - `relay ADDR UPSTREAM`: connects to UPSTREAM and copies both ways (16 KiB at a time, the
//!   gate's chunk) until both sides have closed: the passthrough without the ClientHello's
//!   decision.
//! - `tls ADDR CERT KEY RESPONSE_FILE [H2_RESPONSE_FILE]`: rustls (ring, as the gate), TLS 1.3,
//!   the PEM certificate chain and key the gate holds, ALPN `h2` then `http/1.1`, resumption
//!   tickets and a session cache as the gate's. Over HTTP/1.1, as `http` inside TLS. Over h2,
//!   the h2 crate's server (with the gate's stream and header-list limits) answers every stream
//!   with the status, headers and body of H2_RESPONSE_FILE: the gate's h2 answer as `curl
//!   --http2 -D` shows it (`HTTP/2 200` then `name: value` lines, a blank line, the body), read
//!   once at start; without it, those of RESPONSE_FILE (less its connection headers).
//!
//! One thread (a tokio current-thread runtime), as the gate under the harness (`[server]
//! threads = 1`): pin it with `taskset`. Runs until killed.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage: floor http ADDR RESPONSE_FILE\n       \
    floor refuse ADDR\n       \
    floor relay ADDR UPSTREAM\n       \
    floor tls ADDR CERT KEY RESPONSE_FILE [H2_RESPONSE_FILE]";

/// The fatal `unrecognized_name` alert, as the gate writes it (`proxy/src/tls/refuse.rs`).
const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// Bytes read at once: a request, a ClientHello, a relayed chunk (the gate's relay chunk).
const CHUNK: usize = 16 * 1024;

/// A whole HTTP/1.1 answer, written as it is, and whether the connection ends after it.
#[derive(Clone)]
struct Answer {
    bytes: Bytes,
    close: bool,
}

/// An h2 answer: status, headers (no connection-specific ones), body.
#[derive(Clone)]
struct H2Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

enum Mode {
    Http(Answer),
    Refuse,
    Relay(SocketAddr),
    Tls(Arc<rustls::ServerConfig>, Answer, H2Answer),
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, mode) = match setup(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("floor: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup(args: &[String]) -> Result<(SocketAddr, Mode), String> {
    let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| format!("{s}: {e}"));
    let read = |path: &str| std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    match args {
        [m, a, file] if m == "http" => Ok((addr(a)?, Mode::Http(answer(read(file)?)?))),
        [m, a] if m == "refuse" => Ok((addr(a)?, Mode::Refuse)),
        [m, a, up] if m == "relay" => Ok((addr(a)?, Mode::Relay(addr(up)?))),
        [m, a, cert, key, file, rest @ ..] if m == "tls" && rest.len() <= 1 => {
            let h1 = read(file)?;
            let h2 = match rest.first() {
                Some(f) => h2_answer(&read(f)?)?,
                None => h2_answer(&h1)?,
            };
            let config = tls_config(cert, key)?;
            Ok((addr(a)?, Mode::Tls(config, answer(h1)?, h2)))
        }
        _ => Err("wrong arguments".into()),
    }
}

/// The answer of a RESPONSE_FILE, and whether its headers say `Connection: close`.
fn answer(bytes: Vec<u8>) -> Result<Answer, String> {
    let (_, headers, _) = split_answer(&bytes)?;
    let close = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("connection") && value.to_ascii_lowercase().contains("close")
    });
    Ok(Answer {
        bytes: Bytes::from(bytes),
        close,
    })
}

/// An answer read from a file: status, header lines (name, value), body.
type Parts<'a> = (u16, Vec<(String, String)>, &'a [u8]);

/// Status, header lines and body of an answer as written on the wire (`HTTP/1.1 403 Forbidden`)
/// or as curl shows an h2 one (`HTTP/2 200`): read once at start, never a request.
fn split_answer(bytes: &[u8]) -> Result<Parts<'_>, String> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of headers (CRLF CRLF)")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "the headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer's first line has no status")?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line}"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok((status, headers, &bytes[end + 4..]))
}

fn h2_answer(bytes: &[u8]) -> Result<H2Answer, String> {
    let (status, lines, body) = split_answer(bytes)?;
    let mut headers = HeaderMap::new();
    for (name, value) in lines {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("{name}: {e}"))?;
        // Connection-specific headers have no place in h2 (RFC 9113, 8.2.2).
        if matches!(
            name.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            continue;
        }
        let value = HeaderValue::from_str(&value).map_err(|e| format!("{name}: {e}"))?;
        headers.append(name, value);
    }
    Ok(H2Answer {
        status: StatusCode::from_u16(status).map_err(|e| e.to_string())?,
        headers,
        body: Bytes::copy_from_slice(body),
    })
}

/// The gate's terminating settings (`proxy/src/tls/terminate.rs`), TLS 1.3 only.
fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(64 * 1024);
    Ok(Arc::new(config))
}

async fn serve(addr: SocketAddr, mode: Mode) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("floor: listening on {addr}");
    let mode = Arc::new(mode);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let mode = mode.clone();
        tokio::spawn(async move {
            match &*mode {
                Mode::Http(answer) => answer_reads(stream, answer).await,
                Mode::Refuse => refuse(stream).await,
                Mode::Relay(upstream) => relay(stream, *upstream).await,
                Mode::Tls(config, answer, h2) => terminate(stream, config, answer, h2).await,
            }
        });
    }
}

/// Every read of at least one byte gets the whole answer; end of stream or an error ends it.
async fn answer_reads<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, answer: &Answer) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if stream.write_all(&answer.bytes).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        if answer.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

async fn refuse(mut stream: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    if let Ok(1..) = stream.read(&mut buf).await {
        if stream.write_all(&ALERT).await.is_ok() {
            let _ = stream.shutdown().await;
        }
    }
}

async fn relay(mut client: TcpStream, upstream: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, CHUNK, CHUNK).await;
}

async fn terminate(
    stream: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    answer: &Answer,
    h2: &H2Answer,
) {
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config.clone())
        .accept(stream)
        .await
    else {
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        answer_streams(tls, h2).await;
    } else {
        answer_reads(tls, answer).await;
    }
}

/// Every h2 stream gets the answer; the request is not looked at.
async fn answer_streams<S: AsyncRead + AsyncWrite + Unpin>(stream: S, answer: &H2Answer) {
    let mut builder = h2::server::Builder::new();
    // The gate's limits (`proxy/src/tls/terminate.rs`, h2_options): the same SETTINGS frame.
    builder
        .max_concurrent_streams(100)
        .max_header_list_size(64 * 1024);
    let Ok(mut conn) = builder.handshake::<_, Bytes>(stream).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = conn.accept().await {
        let mut head = Response::new(());
        *head.status_mut() = answer.status;
        *head.headers_mut() = answer.headers.clone();
        let Ok(mut body) = respond.send_response(head, answer.body.is_empty()) else {
            continue;
        };
        if !answer.body.is_empty() {
            let _ = body.send_data(answer.body.clone(), true);
        }
    }
}
