//! TLS test parts: a certificate authority made at test time, a real TLS origin (rustls) that
//! records the raw bytes it received, a rustls client that records the raw bytes it sent, a
//! recording TCP origin, and ClientHellos re-framed into several records or built by hand.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// A list shared between a server's threads and the test (each entry itself shared).
type Shared<T> = Arc<Mutex<Vec<Arc<Mutex<T>>>>>;

/// A test CA and one server certificate it signed for `names`.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    /// The server certificate and its key in PEM, as an operator's NAME.crt / NAME.key.
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "icp-gate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            cert_chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes `dir/NAME.crt` and `dir/NAME.key`, as `[tls] certificates` reads them.
    pub fn write_pair(&self, dir: &std::path::Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key_pem).unwrap();
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.cert_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting(self.ca_der.clone())
    }

    /// Writes the CA certificate to `dir/ca.pem` for curl and openssl.
    pub fn write_ca(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }
}

/// A client configuration trusting only `root`, offering ALPN h2 and http/1.1.
pub fn client_config_trusting(root: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A stream that keeps a copy of every byte read from it or written to it.
pub struct Recorder {
    pub inner: TcpStream,
    pub read: Arc<Mutex<Vec<u8>>>,
    pub written: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    pub fn new(inner: TcpStream) -> Recorder {
        Recorder {
            inner,
            read: Arc::default(),
            written: Arc::default(),
        }
    }
}

impl Read for Recorder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a TLS origin saw on one connection.
#[derive(Clone, Debug, Default)]
pub struct TlsSeen {
    /// Every raw byte received, from the ClientHello on.
    pub raw: Vec<u8>,
    pub sni: Option<String>,
    /// The HTTP request heads received inside TLS.
    pub requests: Vec<String>,
}

/// A real TLS origin: terminates TLS with its own certificate (rustls) and answers each HTTP/1.1
/// request `200` with `tls origin: <request line>`.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    seen: Shared<TlsSeen>,
}

impl TlsOrigin {
    pub fn start(pki: &Pki) -> TlsOrigin {
        Self::start_on(pki, "127.0.0.1:0")
    }

    pub fn start_on(pki: &Pki, bind: &str) -> TlsOrigin {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let config = pki.server_config();
        let seen: Shared<TlsSeen> = Arc::default();
        let all = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let config = config.clone();
                let one = Arc::new(Mutex::new(TlsSeen::default()));
                all.lock().unwrap().push(one.clone());
                std::thread::spawn(move || serve_tls(conn, config, one));
            }
        });
        TlsOrigin { addr, seen }
    }

    pub fn seen(&self) -> Vec<TlsSeen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect()
    }
}

fn serve_tls(conn: TcpStream, config: Arc<rustls::ServerConfig>, seen: Arc<Mutex<TlsSeen>>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut rec = Recorder::new(conn);
    let raw = rec.read.clone();
    let mut tls = rustls::ServerConnection::new(config).unwrap();
    let mut pending = Vec::new();
    loop {
        let result = tls.complete_io(&mut rec);
        seen.lock().unwrap().raw = raw.lock().unwrap().clone();
        if result.is_err() {
            return;
        }
        if let Some(sni) = tls.server_name() {
            seen.lock().unwrap().sni = Some(sni.to_owned());
        }
        let mut buf = [0u8; 4096];
        match tls.reader().read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let line = head.lines().next().unwrap_or("").to_owned();
            seen.lock().unwrap().requests.push(head);
            let body = format!("tls origin: {line}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                body.len()
            );
            if tls.writer().write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
        if tls.wants_write() && tls.complete_io(&mut rec).is_err() {
            return;
        }
        if !tls.wants_read() && !tls.wants_write() {
            return;
        }
    }
}

/// A TLS client connection over the gate, with what it wrote on the wire.
pub struct TlsClient {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, Recorder>,
    pub written: Arc<Mutex<Vec<u8>>>,
}

impl TlsClient {
    /// Connects to `addr` with SNI `name` and completes the handshake.
    pub fn connect(pki: &Pki, addr: SocketAddr, name: &str) -> std::io::Result<TlsClient> {
        Self::over(pki, TcpStream::connect(addr)?, name)
    }

    /// Completes a handshake with SNI `name` over a connected `stream`.
    pub fn over(pki: &Pki, stream: TcpStream, name: &str) -> std::io::Result<TlsClient> {
        Self::with_config(pki.client_config(), stream, name)
    }

    pub fn with_config(
        config: Arc<rustls::ClientConfig>,
        stream: TcpStream,
        name: &str,
    ) -> std::io::Result<TlsClient> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        let rec = Recorder::new(stream);
        let written = rec.written.clone();
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from(name.to_owned()).unwrap())
                .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, rec);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(TlsClient { tls, written })
    }

    /// One HTTP/1.1 request; the whole answer (Content-Length framed).
    pub fn get(&mut self, host: &str, path: &str) -> String {
        write!(
            self.tls,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: e2e\r\n\r\n"
        )
        .unwrap();
        self.tls.flush().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.tls.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed mid-answer");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap();
                if got.len() >= end + 4 + len {
                    return text;
                }
            }
        }
    }
}

/// The ClientHello a real client (rustls) sends for `name`: its first flight, unchanged.
pub fn real_hello(pki: &Pki, name: &str) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        pki.client_config(),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Re-frames the handshake bytes of single-record `hello` into records of at most `chunk`
/// bytes each (TLS allows a handshake message to span records).
pub fn split_records(hello: &[u8], chunk: usize) -> Vec<u8> {
    assert_eq!(hello[0], 0x16);
    let len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    let body = &hello[5..5 + len];
    let mut out = Vec::new();
    for part in body.chunks(chunk) {
        out.extend_from_slice(&[0x16, hello[1], hello[2]]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&hello[5 + len..]);
    out
}

/// A minimal, well-formed TLS 1.2/1.3 ClientHello with `sni` (raw bytes, none when `None`),
/// ALPN `h2`, supported versions, then `extra` extensions (type, data) as given, in one record
/// while it fits.
pub fn built_hello(sni: Option<&[u8]>, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut push_ext = |ty: u16, data: &[u8]| {
        ext.extend_from_slice(&ty.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    };
    if let Some(name) = sni {
        let mut d = Vec::new();
        d.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        d.push(0);
        d.extend_from_slice(&(name.len() as u16).to_be_bytes());
        d.extend_from_slice(name);
        push_ext(0, &d);
    }
    push_ext(16, &[0, 3, 2, b'h', b'2']);
    push_ext(43, &[2, 3, 4]);
    for (ty, data) in extra {
        push_ext(*ty, data);
    }
    let mut body = Vec::new();
    body.extend_from_slice(&[3, 3]);
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 2, 0x13, 0x01]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut out = Vec::new();
    // One record while it fits (16 KiB), else several.
    for part in msg.chunks(16384) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// A TCP origin that records every byte each connection sent it, says nothing while the
/// connection sends, and when the client has finished sending (end of stream) answers
/// `received N` and closes.
pub struct RawOrigin {
    pub addr: SocketAddr,
    conns: Shared<Vec<u8>>,
}

impl RawOrigin {
    pub fn start() -> RawOrigin {
        Self::start_on("127.0.0.1:0")
    }

    pub fn start_on(bind: &str) -> RawOrigin {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Shared<Vec<u8>> = Arc::default();
        let all = conns.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let got = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(got.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            let n = got.lock().unwrap().len();
                            let _ = conn.write_all(format!("received {n}").as_bytes());
                            break;
                        }
                        got.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        RawOrigin { addr, conns }
    }

    /// The bytes each connection has sent so far, in accept order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

/// How a raw connection to a TLS listener ended after sending `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// These bytes, then an orderly close.
    Closed(Vec<u8>),
    /// A TCP reset (after these bytes).
    Reset(Vec<u8>),
    /// Still open when the read timed out (passed through to a silent origin), with the bytes.
    Open(Vec<u8>),
}

/// Sends `parts` (each its own write, `gap` apart) and reads until close, reset or `wait`.
pub fn exchange(addr: SocketAddr, parts: &[&[u8]], gap: Duration, wait: Duration) -> Ending {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        if s.write_all(part).is_err() {
            break;
        }
    }
    s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ending::Closed(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ending::Reset(got),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Ending::Open(got)
            }
            Err(e) => panic!("reading from the gate: {e}"),
        }
    }
}

pub const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
