//! Shared by the integration tests: a ClientHello builder (records, extensions, GREASE, ECH,
//! padding), real hellos written by rustls's client, and `read`, which runs the crate's three
//! steps on a buffer, fed whole and one byte at a time.
#![allow(dead_code)] // each test binary uses part of it

use icp_gate_client_hello::{handshake_message, parse, HelloError, Progress, Scanner};
use std::sync::Arc;

pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_SUPPORTED_GROUPS: u16 = 10;
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
pub const EXT_ALPN: u16 = 16;
pub const EXT_PADDING: u16 = 21;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;
pub const EXT_KEY_SHARE: u16 = 51;
pub const EXT_ECH: u16 = 0xfe0d;

pub fn u16_prefixed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

pub fn u8_prefixed(body: &[u8]) -> Vec<u8> {
    let mut v = vec![body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// A ClientHello, field by field. `Hello::new()` is a plausible TLS 1.3 hello that rustls's
/// `Acceptor` accepts: signature_algorithms, supported_groups, an X25519 key share,
/// supported_versions 1.3 and 1.2.
#[derive(Clone, Debug)]
pub struct Hello {
    pub handshake_type: u8,
    pub legacy_version: u16,
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cipher_suites: Vec<u16>,
    pub compression: Vec<u8>,
    /// None: no extensions block at all.
    pub extensions: Option<Vec<(u16, Vec<u8>)>>,
}

impl Default for Hello {
    fn default() -> Self {
        Self::new()
    }
}

impl Hello {
    pub fn new() -> Self {
        let mut key_share = Vec::new();
        key_share.extend_from_slice(&0x001du16.to_be_bytes());
        key_share.extend(u16_prefixed(&[0x42; 32]));
        Hello {
            handshake_type: 1,
            legacy_version: 0x0303,
            random: [7; 32],
            session_id: vec![0x55; 32],
            cipher_suites: vec![0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f],
            compression: vec![0],
            extensions: Some(vec![
                (
                    EXT_SIGNATURE_ALGORITHMS,
                    u16_prefixed(&[0x04, 0x03, 0x08, 0x04, 0x04, 0x01]),
                ),
                (
                    EXT_SUPPORTED_GROUPS,
                    u16_prefixed(&[0x00, 0x1d, 0x00, 0x17]),
                ),
                (EXT_KEY_SHARE, u16_prefixed(&key_share)),
                (
                    EXT_SUPPORTED_VERSIONS,
                    u8_prefixed(&[0x03, 0x04, 0x03, 0x03]),
                ),
            ]),
        }
    }

    /// Appends an extension (a second one of the same type too: for duplicate tests).
    pub fn ext(mut self, typ: u16, data: &[u8]) -> Self {
        self.extensions
            .get_or_insert_with(Vec::new)
            .push((typ, data.to_vec()));
        self
    }

    /// Replaces the extension of that type (or appends it).
    pub fn set_ext(mut self, typ: u16, data: &[u8]) -> Self {
        let exts = self.extensions.get_or_insert_with(Vec::new);
        match exts.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) => e.1 = data.to_vec(),
            None => exts.push((typ, data.to_vec())),
        }
        self
    }

    pub fn without_ext(mut self, typ: u16) -> Self {
        if let Some(exts) = &mut self.extensions {
            exts.retain(|(t, _)| *t != typ);
        }
        self
    }

    pub fn no_extensions(mut self) -> Self {
        self.extensions = None;
        self
    }

    /// A server_name extension with one host_name.
    pub fn sni(self, host: &[u8]) -> Self {
        self.set_ext(EXT_SERVER_NAME, &sni_ext(&[(0, host)]))
    }

    pub fn alpn(self, names: &[&[u8]]) -> Self {
        let mut list = Vec::new();
        for n in names {
            list.extend(u8_prefixed(n));
        }
        self.set_ext(EXT_ALPN, &u16_prefixed(&list))
    }

    /// A padding extension (RFC 7685) of `n` zero bytes.
    pub fn padding(self, n: usize) -> Self {
        self.set_ext(EXT_PADDING, &vec![0; n])
    }

    /// GREASE as Chrome sends it (RFC 8701): a GREASE cipher suite first, an empty GREASE
    /// extension first and a one-byte one last, a GREASE version in supported_versions.
    pub fn grease(mut self) -> Self {
        self.cipher_suites.insert(0, 0x2a2a);
        let exts = self.extensions.get_or_insert_with(Vec::new);
        exts.insert(0, (0x0a0a, vec![]));
        for (t, d) in exts.iter_mut() {
            if *t == EXT_SUPPORTED_VERSIONS {
                *d = u8_prefixed(&[0x7a, 0x7a, 0x03, 0x04, 0x03, 0x03]);
            }
        }
        exts.push((0xfafa, vec![0]));
        self
    }

    /// An outer encrypted_client_hello extension shaped like Chrome's GREASE ECH (HKDF-SHA256,
    /// AES-128-GCM, a random config id, a 32-byte enc, a 144-byte payload).
    pub fn ech(self) -> Self {
        let mut d = vec![0]; // outer
        d.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
        d.push(0x9c);
        d.extend(u16_prefixed(&[0x33; 32]));
        d.extend(u16_prefixed(&[0x44; 144]));
        self.set_ext(EXT_ECH, &d)
    }

    /// A post-quantum sized hello, as Chrome sends since 2024: an X25519MLKEM768 key share
    /// (1216 bytes) before the X25519 one.
    pub fn post_quantum(self) -> Self {
        let mut ks = Vec::new();
        ks.extend_from_slice(&0x11ecu16.to_be_bytes());
        ks.extend(u16_prefixed(&[0x61; 1216]));
        ks.extend_from_slice(&0x001du16.to_be_bytes());
        ks.extend(u16_prefixed(&[0x42; 32]));
        self.set_ext(EXT_KEY_SHARE, &u16_prefixed(&ks)).set_ext(
            EXT_SUPPORTED_GROUPS,
            &u16_prefixed(&[0x11, 0xec, 0x00, 0x1d, 0x00, 0x17]),
        )
    }

    /// The handshake message: type, 3-byte length, body.
    pub fn message(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.legacy_version.to_be_bytes());
        body.extend_from_slice(&self.random);
        body.extend(u8_prefixed(&self.session_id));
        let suites: Vec<u8> = self
            .cipher_suites
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        body.extend(u16_prefixed(&suites));
        body.extend(u8_prefixed(&self.compression));
        if let Some(exts) = &self.extensions {
            let mut block = Vec::new();
            for (t, d) in exts {
                block.extend_from_slice(&t.to_be_bytes());
                block.extend(u16_prefixed(d));
            }
            body.extend(u16_prefixed(&block));
        }
        handshake(self.handshake_type, &body)
    }

    /// The message in one record.
    pub fn wire(&self) -> Vec<u8> {
        one_record(&self.message())
    }
}

/// A handshake message of `typ` around `body`.
pub fn handshake(typ: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut m = vec![typ, (len >> 16) as u8, (len >> 8) as u8, len as u8];
    m.extend_from_slice(body);
    m
}

/// A server_name extension body listing `(name_type, name)` entries.
pub fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (t, n) in entries {
        list.push(*t);
        list.extend(u16_prefixed(n));
    }
    u16_prefixed(&list)
}

/// One TLS record: content type, version 3.1 (as clients write the first record), body.
pub fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut r = vec![content_type, 3, 1];
    r.extend_from_slice(&(body.len() as u16).to_be_bytes());
    r.extend_from_slice(body);
    r
}

pub fn one_record(msg: &[u8]) -> Vec<u8> {
    record(22, msg)
}

/// `msg` in handshake records of the given body sizes; the last record takes what is left.
pub fn records(msg: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = msg;
    for &n in sizes {
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.extend(record(22, a));
        rest = b;
    }
    if !rest.is_empty() {
        out.extend(record(22, rest));
    }
    out
}

/// `msg` in `n` handshake records of (nearly) equal size.
pub fn split_even(msg: &[u8], n: usize) -> Vec<u8> {
    let size = msg.len().div_ceil(n);
    let sizes = vec![size; n - 1];
    records(msg, &sizes)
}

/// The first flight of rustls's client (ring provider, ALPN h2 and http/1.1) for `server_name`,
/// as written to the socket. With `sni` false, `enable_sni` is off.
pub fn rustls_client_hello(server_name: &str, sni: bool) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.enable_sni = sni;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .expect("a server name rustls takes");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls into a Vec");
    }
    out
}

/// What the crate made of a buffer, owned so that cases can be compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    NeedMore,
    Refused(HelloError),
    /// Framed, then refused by `parse`.
    ParseRefused {
        wire_len: usize,
        records: usize,
        error: HelloError,
    },
    Hello(Parsed),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub wire_len: usize,
    pub records: usize,
    pub message: Vec<u8>,
    pub borrowed: bool,
    pub legacy_version: u16,
    pub sni: Option<Vec<u8>>,
    pub alpn: Vec<Vec<u8>>,
    pub has_alpn: bool,
    pub versions: Vec<u16>,
    pub has_ech: bool,
    pub extension_types: Vec<u16>,
    pub extension_count: usize,
    pub message_len: usize,
    pub compression_methods: Vec<u8>,
}

/// Scans `buf` whole; when framed, reassembles and parses.
pub fn read_whole(buf: &[u8]) -> Read {
    let progress = Scanner::new().scan(buf);
    finish(buf, progress)
}

fn finish(buf: &[u8], progress: Result<Progress, HelloError>) -> Read {
    let (wire_len, records) = match progress {
        Err(e) => return Read::Refused(e),
        Ok(Progress::NeedMore) => return Read::NeedMore,
        Ok(Progress::Complete { wire_len, records }) => (wire_len, records),
    };
    let msg = handshake_message(buf, wire_len);
    let borrowed = matches!(msg, std::borrow::Cow::Borrowed(_));
    match parse(&msg) {
        Err(error) => Read::ParseRefused {
            wire_len,
            records,
            error,
        },
        Ok(h) => Read::Hello(Parsed {
            wire_len,
            records,
            message: msg.to_vec(),
            borrowed,
            legacy_version: h.legacy_version,
            sni: h.sni.map(<[u8]>::to_vec),
            alpn: h.alpn().map(<[u8]>::to_vec).collect(),
            has_alpn: h.has_alpn(),
            versions: h.supported_versions().collect(),
            has_ech: h.has_ech,
            extension_types: h.extensions().map(|(t, _)| t).collect(),
            extension_count: h.extension_count,
            message_len: h.message_len,
            compression_methods: h.compression_methods.to_vec(),
        }),
    }
}

/// Feeds `buf` to one scanner a byte at a time (the caller's buffer growing by one byte per
/// call). Returns the outcome and how many bytes had been fed when the scanner stopped saying
/// NeedMore (None if it never did). Checks that once decided, the answer never changes.
pub fn read_bytewise(buf: &[u8]) -> (Read, Option<usize>) {
    let mut scanner = Scanner::new();
    let mut decided = None;
    let mut last = Ok(Progress::NeedMore);
    for n in 0..=buf.len() {
        let p = scanner.scan(&buf[..n]);
        if decided.is_some() {
            assert_eq!(p, last, "the answer changed after {n} bytes");
        } else if p != Ok(Progress::NeedMore) {
            decided = Some(n);
        }
        last = p;
    }
    (finish(buf, last), decided)
}

/// `read_whole`, after checking that feeding byte by byte and in segments of 7 and 1000 bytes
/// gives the same answer.
pub fn read(buf: &[u8]) -> Read {
    let whole = read_whole(buf);
    let (bytewise, _) = read_bytewise(buf);
    assert_eq!(whole, bytewise, "fed byte by byte");
    for seg in [7, 1000] {
        let mut scanner = Scanner::new();
        let mut n = 0;
        let mut p = scanner.scan(&buf[..0]);
        while n < buf.len() && p == Ok(Progress::NeedMore) {
            n = (n + seg).min(buf.len());
            p = scanner.scan(&buf[..n]);
        }
        // A scanner that stopped early saw only a prefix; re-ask it with the whole buffer.
        let p = scanner.scan(buf);
        assert_eq!(finish(buf, p), whole, "fed in segments of {seg}");
    }
    whole
}

/// The parsed hello, or a panic saying what happened instead.
pub fn hello(buf: &[u8]) -> Parsed {
    match read(buf) {
        Read::Hello(h) => h,
        other => panic!("expected a parsed hello, got {other:?}"),
    }
}

/// The error, from the scanner or from parse, or a panic.
pub fn refusal(buf: &[u8]) -> HelloError {
    match read(buf) {
        Read::Refused(e) | Read::ParseRefused { error: e, .. } => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The named fixtures: the fuzz target's hand seeds (written to `fuzz/corpus/client_hello/` by
/// `ICP_GATE_WRITE_SEEDS=1 cargo test -p icp-gate-client-hello --test fuzz_corpus`) and inputs
/// of the differential test. Names starting with `rustls-` hold a fresh rustls hello (random
/// and key share change every run).
pub fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let base = Hello::new()
        .sni(b"www.example.com")
        .alpn(&[b"h2", b"http/1.1"]);
    let classic = {
        let b = base.clone().grease();
        let pad = 512 - b.message().len() - 4;
        b.padding(pad)
    };
    let pq = base.clone().grease().post_quantum().ech();
    let msg = base.message();
    let mut h2 = Hello::new();
    h2.handshake_type = 2;
    let mut no_null = base.clone();
    no_null.compression = vec![1];
    let mut long_session_id = base.clone();
    long_session_id.session_id = vec![0x55; 33];
    let mut minor5 = base.wire();
    minor5[2] = 5;
    let mut alert = record(22, &msg[..40]);
    alert.extend(record(21, &[2, 40]));
    alert.extend(record(22, &msg[40..]));
    let mut zero = record(22, &msg[..40]);
    zero.extend(record(22, &[]));
    zero.extend(record(22, &msg[40..]));
    let mut trailing_hs = msg.clone();
    trailing_hs.extend(handshake(20, &[0; 12]));
    let cap_fill = MAX_CLIENT_HELLO_BYTES_FOR_TESTS - 5 - Hello::new().padding(0).message().len();
    let too_large = split_even(&Hello::new().padding(20 * 1024).message(), 2);
    let rustls = rustls_client_hello("rustls.example", true);
    let rustls_msg = rustls[5..].to_vec();
    vec![
        ("builder-classic-517", classic.wire()),
        ("builder-post-quantum-ech-grease", pq.wire()),
        ("builder-2-records", split_even(&pq.message(), 2)),
        ("builder-5-records", split_even(&pq.message(), 5)),
        ("builder-64-records", split_even(&pq.message(), 64)),
        ("builder-handshake-header-split-1", records(&msg, &[1, 1])),
        ("builder-handshake-header-split-3", records(&msg, &[3, 60])),
        (
            "builder-trailing-handshake-in-record",
            one_record(&trailing_hs),
        ),
        ("builder-no-sni", Hello::new().alpn(&[b"h2"]).wire()),
        ("builder-no-extensions", Hello::new().no_extensions().wire()),
        ("builder-ipv4-sni", Hello::new().sni(b"192.0.2.1").wire()),
        ("builder-ipv6-sni", Hello::new().sni(b"2001:db8::1").wire()),
        (
            "builder-upper-case-trailing-dot",
            Hello::new().sni(b"WWW.Example.COM.").wire(),
        ),
        (
            "builder-unicode-sni",
            Hello::new().sni("bücher.例子".as_bytes()).wire(),
        ),
        (
            "builder-invalid-dns-sni",
            Hello::new().sni(b"a b\x00.example").wire(),
        ),
        ("builder-ech-empty", base.clone().ext(EXT_ECH, &[]).wire()),
        (
            "builder-other-name-type-then-host",
            Hello::new()
                .set_ext(
                    EXT_SERVER_NAME,
                    &sni_ext(&[(1, b"opaque"), (0, b"other.example")]),
                )
                .wire(),
        ),
        (
            "builder-host-then-other-name-type",
            Hello::new()
                .set_ext(
                    EXT_SERVER_NAME,
                    &sni_ext(&[(0, b"other.example"), (1, b"opaque")]),
                )
                .wire(),
        ),
        (
            "builder-two-host-names",
            Hello::new()
                .set_ext(
                    EXT_SERVER_NAME,
                    &sni_ext(&[(0, b"a.example"), (0, b"b.example")]),
                )
                .wire(),
        ),
        ("builder-empty-host-name", Hello::new().sni(b"").wire()),
        ("builder-empty-alpn-list", Hello::new().alpn(&[]).wire()),
        (
            "builder-empty-alpn-name",
            Hello::new().alpn(&[b"h2", b""]).wire(),
        ),
        (
            "builder-odd-supported-versions",
            Hello::new()
                .set_ext(EXT_SUPPORTED_VERSIONS, &[3, 3, 4, 3])
                .wire(),
        ),
        (
            "builder-duplicate-extension",
            base.clone()
                .ext(EXT_ALPN, &u16_prefixed(&u8_prefixed(b"h2")))
                .wire(),
        ),
        (
            "builder-duplicate-grease",
            Hello::new().ext(0x3a3a, &[]).ext(0x3a3a, &[]).wire(),
        ),
        (
            "builder-no-signature-algorithms",
            base.clone().without_ext(EXT_SIGNATURE_ALGORITHMS).wire(),
        ),
        ("builder-no-null-compression", no_null.wire()),
        (
            "builder-bad-supported-groups",
            base.clone()
                .set_ext(EXT_SUPPORTED_GROUPS, &[0, 3, 0, 29, 0])
                .wire(),
        ),
        ("builder-session-id-33", long_session_id.wire()),
        ("builder-record-minor-5", minor5),
        ("builder-alert-interleaved", alert),
        ("builder-zero-length-record", zero),
        ("builder-handshake-type-2", h2.wire()),
        ("builder-at-the-cap", Hello::new().padding(cap_fill).wire()),
        (
            "builder-over-the-cap-by-one",
            Hello::new().padding(cap_fill + 1).wire(),
        ),
        ("builder-20-kib-prefix", too_large[..64].to_vec()),
        ("builder-truncated", base.wire()[..100].to_vec()),
        (
            "plain-http-get",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        ),
        (
            "sslv2-client-hello",
            vec![
                0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x05,
            ],
        ),
        (
            "openssl-3.0-s_client",
            include_bytes!("../fixtures/openssl-3.0-s_client.bin").to_vec(),
        ),
        ("rustls-one-record", rustls.clone()),
        (
            "rustls-no-sni",
            rustls_client_hello("rustls.example", false),
        ),
        ("rustls-3-records", split_even(&rustls_msg, 3)),
        (
            "rustls-one-byte-records",
            records(&rustls_msg, &vec![1; rustls_msg.len()]),
        ),
    ]
}

pub const MAX_CLIENT_HELLO_BYTES_FOR_TESTS: usize = icp_gate_client_hello::MAX_CLIENT_HELLO_BYTES;
