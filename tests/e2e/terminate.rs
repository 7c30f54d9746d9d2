//! TLS termination on `tls` listeners (the gate holds a certificate for the SNI): the real
//! binary, certificates made at test time, real clients (rustls; curl over HTTP/1.1 and HTTP/2
//! where installed), a real HTTP origin behind. Every request is decided on its own Host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::tls_harness::*;

/// A gate with one `tls` listener, `[tls] certificates` holding `pki`'s certificate, and the
/// HTTP origin `origin` behind.
fn terminating_gate(origin: &Origin, pki: &Pki, opts: GateOptions) -> (Gate, std::path::PathBuf) {
    let certs = tempfile::tempdir().unwrap().keep();
    pki.write_pair(&certs, "site");
    let gate = Gate::start(
        origin,
        GateOptions {
            listener_extra: format!("protocol = \"tls\"\n{}", opts.listener_extra),
            extra: format!(
                "{}\n[tls]\ncertificates = \"{}\"\ncertificates_check_interval_seconds = 1\n",
                opts.extra,
                certs.display()
            ),
            ..opts
        },
    );
    (gate, certs)
}

/// The names the test certificate covers: filed ones, an unfiled one, and a wildcard.
fn held() -> Pki {
    Pki::new(&[
        "www.example.com",
        "example.com",
        "unfiled.cn",
        "*.b.deep.cn",
    ])
}

/// One HTTP/1.1 request on a terminated connection with SNI `sni` and Host `host`; the answer.
fn https_get(pki: &Pki, gate: &Gate, sni: &str, host: &str, path: &str) -> String {
    h1(pki, gate, sni).get(host, path)
}

/// A TLS connection with SNI `sni` that offers ALPN `http/1.1` only.
fn h1(pki: &Pki, gate: &Gate, sni: &str) -> TlsClient {
    let mut config = (*pki.client_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = TcpStream::connect(gate.addr).unwrap();
    TlsClient::with_config(std::sync::Arc::new(config), stream, sni).unwrap()
}

fn status(answer: &str) -> u16 {
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_held_and_filed_name_is_terminated_and_forwarded_with_forwarded_proto_https() {
    let origin = Origin::start();
    let pki = held();
    let (gate, _certs) = terminating_gate(&origin, &pki, GateOptions::default());
    let answer = https_get(&pki, &gate, "www.example.com", "WWW.Example.com.", "/a?b");
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.ends_with("origin saw www.example.com"), "{answer}");
    let received = origin.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target, "/a?b");
    assert_eq!(received[0].header("x-forwarded-proto"), Some("https"));
    assert_eq!(gate.metrics().requests("allowed", ""), 1.0);
    assert_eq!(
        gate.metrics()
            .value("icp_gate_tls_terminated_total", &[("result", "handshake")]),
        1.0
    );
}

#[test]
fn held_but_unfiled_names_and_fronted_hosts_get_the_block_page_over_https() {
    let origin = Origin::start();
    let pki = held();
    let (gate, _certs) = terminating_gate(&origin, &pki, GateOptions::default());
    // The handshake completes with the gate's certificate, and the page says why.
    let answer = https_get(&pki, &gate, "unfiled.cn", "unfiled.cn", "/");
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(answer.contains("X-ICP-Block-Reason: unfiled"), "{answer}");
    assert!(answer.contains("unfiled.cn"));
    // Domain fronting: a filed SNI carrying an unfiled Host is decided on the Host.
    let answer = https_get(&pki, &gate, "www.example.com", "unfiled.cn", "/");
    assert_eq!(status(&answer), 403, "{answer}");
    // An unfiled Host the certificate does not cover: still the block page, never 421.
    let answer = https_get(&pki, &gate, "www.example.com", "nowhere-filed.cn", "/");
    assert_eq!(status(&answer), 403, "{answer}");
    assert!(origin.received().is_empty());
    assert_eq!(gate.metrics().requests("blocked", "unfiled"), 3.0);
}

#[test]
fn a_filed_host_outside_the_certificate_is_misdirected() {
    let origin = Origin::start();
    let pki = held();
    let (gate, _certs) = terminating_gate(&origin, &pki, GateOptions::default());
    // trial.com.cn is filed and connected, but this connection's certificate does not cover it.
    let mut client = h1(&pki, &gate, "www.example.com");
    let answer = client.get("trial.com.cn", "/");
    assert_eq!(status(&answer), 421, "{answer}");
    // The connection goes on for a Host it covers (a wildcard one here).
    let answer = client.get("a.b.deep.cn", "/");
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(origin.hosts(), ["a.b.deep.cn"]);
    assert_eq!(
        gate.metrics()
            .value("icp_gate_bad_requests_total", &[("reason", "misdirected")]),
        1.0
    );
}

#[test]
fn snis_without_a_certificate_keep_passthrough() {
    let origin = Origin::start();
    let pki = held();
    let other = Pki::new(&["moved.cn", "trial.com.cn"]);
    let tls_origin = TlsOrigin::start(&other);
    let (gate, _certs) = terminating_gate(
        &origin,
        &pki,
        GateOptions {
            listener_extra: format!("upstream = [\"{}\"]", tls_origin.addr),
            ..GateOptions::default()
        },
    );
    // Not held, filed: passed through to the TLS origin, which holds its own certificate.
    let mut client = TlsClient::connect(&other, gate.addr, "trial.com.cn").unwrap();
    assert!(client
        .get("trial.com.cn", "/pass")
        .ends_with("tls origin: GET /pass HTTP/1.1"));
    // Not held, unfiled: refused at the handshake.
    let refused = exchange(
        gate.addr,
        &[&built_hello(Some(b"nowhere-filed.cn"), &[])],
        Duration::ZERO,
        Duration::from_secs(5),
    );
    assert_eq!(refused, Ending::Closed(ALERT.to_vec()));
}

#[test]
fn http2_streams_on_one_connection_are_decided_one_by_one() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP: curl is not installed (scripts/ensure-deps installs it)");
        return;
    }
    let origin = Origin::start();
    let pki = held();
    let (gate, certs) = terminating_gate(&origin, &pki, GateOptions::default());
    let ca = pki.write_ca(&certs);
    let port = gate.addr.port();
    let base = format!("https://www.example.com:{port}");
    let resolve = format!("www.example.com:{port}:127.0.0.1");
    // Two requests on one HTTP/2 connection: the second with another :authority.
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &resolve, "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version} %{num_connects}\\n"])
        .arg(format!("{base}/one"))
        .args(["--next", "--http2", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &resolve, "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version} %{num_connects}\\n"])
        .args(["-H", "Host: unfiled.cn"])
        .arg(format!("{base}/two"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, ["200 2 1", "403 2 0"], "{text} {out:?}");
    let received = origin.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target, "/one");
    // The :authority curl sent, with its port (kept as sent).
    assert_eq!(
        received[0].header("host"),
        Some(format!("www.example.com:{port}").as_str())
    );
    assert_eq!(received[0].header("x-forwarded-proto"), Some("https"));
}

/// A minimal HTTP/2 client over rustls: frames written by hand.
struct H2 {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// Bytes read and not yet taken as frames.
    unread: Vec<u8>,
}

/// One HTTP/2 frame as read: type, flags, stream id, payload.
type Frame = (u8, u8, u32, Vec<u8>);

impl H2 {
    fn connect(pki: &Pki, gate: &Gate) -> H2 {
        let mut config = (*pki.client_config()).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let stream = TcpStream::connect(gate.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            "www.example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, stream);
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        tls.write_all(&frame(0x4, 0, 0, &[])).unwrap(); // SETTINGS
        H2 {
            tls,
            unread: Vec::new(),
        }
    }

    /// The next frame, answering the server's SETTINGS and PINGs on the way; None when the
    /// connection ends.
    fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.unread.len() >= 9 {
                let b = &self.unread;
                let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
                if b.len() >= 9 + len {
                    let (kind, flags) = (b[3], b[4]);
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    let payload = b[9..9 + len].to_vec();
                    self.unread.drain(..9 + len);
                    match (kind, flags & 0x1) {
                        (0x4, 0) => self.tls.write_all(&frame(0x4, 0x1, 0, &[])).ok()?,
                        (0x6, 0) => self.tls.write_all(&frame(0x6, 0x1, 0, &payload)).ok()?,
                        _ => {}
                    }
                    return Some((kind, flags, stream, payload));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tls.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.unread.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// GET / for `authority` on stream `id`; reads until that stream's answer ends and returns
    /// every frame read on the way.
    fn get(&mut self, id: u32, authority: &str) -> Vec<Frame> {
        self.get_with(id, authority, &[])
    }

    /// `get` with `extra` fields in the request.
    fn get_with(&mut self, id: u32, authority: &str, extra: &[(&str, &str)]) -> Vec<Frame> {
        let block = header_block(authority, extra);
        self.tls.write_all(&frame(0x1, 0x5, id, &block)).unwrap();
        let mut seen = Vec::new();
        while let Some(f) = self.next_frame() {
            let done = f.2 == id && matches!(f.0, 0x0 | 0x1) && f.1 & 0x1 != 0;
            seen.push(f);
            if done {
                return seen;
            }
        }
        panic!("the connection ended before stream {id} was answered: {seen:?}");
    }

    /// Reads frames until the connection ends; the GOAWAY error code, if one came.
    fn goaway(&mut self) -> Option<u32> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.tls.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[i], buf[i + 1], buf[i + 2]]) as usize;
            let kind = buf[i + 3];
            if kind == 0x7 && i + 9 + 8 <= buf.len() {
                let p = &buf[i + 9..];
                return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            i += 9 + len;
        }
        None
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS block for GET / with `:authority` `authority` and `extra` literal fields, no
/// Huffman, nothing indexed into the dynamic table.
fn header_block(authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84, 0x01, authority.len() as u8];
    b.extend_from_slice(authority.as_bytes());
    for (name, value) in extra {
        b.push(0x00);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        let len = value.len();
        // HPACK integer with a 7-bit prefix.
        if len < 127 {
            b.push(len as u8);
        } else {
            b.push(127);
            let mut rest = len - 127;
            while rest >= 128 {
                b.push((rest % 128 + 128) as u8);
                rest /= 128;
            }
            b.push(rest as u8);
        }
        b.extend_from_slice(value.as_bytes());
    }
    b
}

#[test]
fn an_http2_connection_ends_gracefully_after_max_requests_per_connection() {
    let origin = Origin::start();
    let pki = held();
    let opts = GateOptions {
        listener_extra: "max_requests_per_connection = 2\n".into(),
        ..GateOptions::default()
    };
    let (gate, _certs) = terminating_gate(&origin, &pki, opts);
    let mut h2 = H2::connect(&pki, &gate);
    // The first stream: no GOAWAY.
    let first = h2.get(1, "www.example.com");
    assert!(!first.iter().any(|f| f.0 == 0x7), "{first:?}");
    // The second reaches the limit: it is served, then the connection is ended gracefully,
    // GOAWAY NO_ERROR naming stream 3 as the last one processed.
    let mut frames = h2.get(3, "www.example.com");
    while let Some(f) = h2.next_frame() {
        frames.push(f);
    }
    let goaways: Vec<(u32, u32)> = frames
        .iter()
        .filter(|f| f.0 == 0x7)
        .map(|f| {
            let p = &f.3;
            let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
            (last, u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        })
        .collect();
    assert_eq!(goaways.last(), Some(&(3, 0)), "{goaways:?}");
    assert_eq!(origin.received().len(), 2);
}

#[test]
fn http2_rapid_reset_and_oversized_header_lists_are_refused() {
    let origin = Origin::start();
    let pki = held();
    let (gate, _certs) = terminating_gate(&origin, &pki, GateOptions::default());
    // Rapid reset (CVE-2023-44487): streams opened and cancelled at once, many times.
    let mut h2 = H2::connect(&pki, &gate);
    let block = header_block("www.example.com", &[]);
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x5, id, &block)); // HEADERS, END_STREAM | END_HEADERS
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = h2.tls.write_all(&burst);
    let _ = h2.tls.flush();
    // The connection ends: with GOAWAY ENHANCE_YOUR_CALM (0xb) when the client reads it
    // before the close (a reset after it can take it away).
    let goaway = h2.goaway();
    assert!(matches!(goaway, Some(0xb) | None), "{goaway:?}");
    // Far fewer than 2000 requests reached the origin.
    assert!(origin.received().len() < 200, "{}", origin.received().len());

    // A header list over the limit (64 KiB): refused, nothing forwarded for it.
    let before = origin.received().len();
    let mut h2 = H2::connect(&pki, &gate);
    let big = "a".repeat(100);
    let fields: Vec<(String, String)> =
        (0..1000).map(|i| (format!("x-{i}"), big.clone())).collect();
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let block = header_block("www.example.com", &refs);
    // Sent as HEADERS and CONTINUATION frames of 16 KiB.
    let mut chunks = block.chunks(16 * 1024).peekable();
    let mut first = true;
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { 0x4 } else { 0 } | if first { 0x1 } else { 0 };
        out.extend(frame(if first { 0x1 } else { 0x9 }, flags, 1, chunk));
        first = false;
    }
    let _ = h2.tls.write_all(&out);
    let _ = h2.tls.flush();
    let _ = h2.goaway();
    assert_eq!(origin.received().len(), before);
    // The gate is still serving.
    let answer = https_get(&pki, &gate, "www.example.com", "www.example.com", "/after");
    assert_eq!(status(&answer), 200, "{answer}");
}

#[test]
fn certificates_reload_on_sighup_and_when_the_directory_changes_without_dropping_a_connection() {
    let origin = Origin::start();
    let pki = held();
    let (gate, certs) = terminating_gate(&origin, &pki, GateOptions::default());
    let mut open = h1(&pki, &gate, "www.example.com");
    assert_eq!(status(&open.get("www.example.com", "/1")), 200);
    // A second certificate arrives, and a broken one beside it.
    let more = Pki::new(&["cdn-only.cn", "moved.cn"]);
    more.write_pair(&certs, "more");
    std::fs::write(certs.join("broken.crt"), "not a certificate").unwrap();
    std::fs::write(certs.join("broken.key"), "not a key").unwrap();
    Command::new("kill")
        .args(["-HUP", &gate.pid().to_string()])
        .status()
        .unwrap();
    wait_for(
        "the new certificate in service",
        Duration::from_secs(10),
        || TlsClient::connect(&more, gate.addr, "cdn-only.cn").ok(),
    );
    // cdn-only.cn is filed elsewhere, not connected: the block page over HTTPS.
    let answer = https_get(&more, &gate, "cdn-only.cn", "cdn-only.cn", "/");
    assert_eq!(status(&answer), 403);
    assert!(answer.contains("X-ICP-Block-Reason: unconnected"));
    // The broken pair is rejected, counted and named; the others keep serving, and the
    // connection opened before the reload still works.
    assert!(gate.log().contains("broken"), "{}", gate.log());
    assert_eq!(status(&open.get("www.example.com", "/2")), 200);
    // The directory changing is enough too: the first certificate removed.
    std::fs::remove_file(certs.join("site.crt")).unwrap();
    std::fs::remove_file(certs.join("site.key")).unwrap();
    wait_for(
        "the removed certificate gone",
        Duration::from_secs(10),
        || {
            // Not held any more: a filed name is passed through (to the HTTP origin here, which
            // cannot speak TLS, so the handshake fails).
            TlsClient::connect(&pki, gate.addr, "www.example.com")
                .is_err()
                .then_some(())
        },
    );
    assert_eq!(status(&open.get("www.example.com", "/3")), 200);
}

#[test]
fn upstream_tls_re_encrypts_to_the_origin_with_the_host_as_sni() {
    let origin = Origin::start();
    let pki = held();
    // The origin's own certificate, from its own CA, which the gate trusts through ca_file.
    let origin_pki = Pki::new(&["www.example.com", "a.b.deep.cn"]);
    let tls_origin = TlsOrigin::start(&origin_pki);
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = origin_pki.write_ca(ca_dir.path());
    let (gate, _certs) = terminating_gate(
        &origin,
        &pki,
        GateOptions {
            listener_extra: format!("upstream = [\"{}\"]\nupstream_tls = true", tls_origin.addr),
            registry_extra: String::new(),
            ..GateOptions::default()
        },
    );
    // The harness writes [upstream] itself: ca_file goes in through a second gate config
    // field, so check the refusal first (no CA: the origin's certificate is not trusted).
    let answer = https_get(&pki, &gate, "www.example.com", "www.example.com", "/x");
    assert_eq!(status(&answer), 502, "{answer}");
    drop(gate);
    let (gate, _certs) = terminating_gate(
        &origin,
        &pki,
        GateOptions {
            listener_extra: format!("upstream = [\"{}\"]\nupstream_tls = true", tls_origin.addr),
            upstream_extra: format!("ca_file = \"{}\"", ca.display()),
            ..GateOptions::default()
        },
    );
    let answer = https_get(&pki, &gate, "www.example.com", "WWW.example.com", "/x");
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.ends_with("tls origin: GET /x HTTP/1.1"), "{answer}");
    let seen = tls_origin.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.sni.as_deref(), Some("www.example.com"));
    assert!(
        last.requests[0].contains("X-Forwarded-Proto: https"),
        "{:?}",
        last.requests
    );
    // Nothing went to the cleartext origin.
    assert!(origin.received().is_empty());
}

#[test]
fn session_ticket_keys_resume_across_a_rotation_and_reload_without_a_restart() {
    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf";
    const C: &str = "c0ffee0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d";
    // A client keeps the newest tickets it was given: each resumption brings tickets sealed
    // with the current key.
    let origin = Origin::start();
    let pki = held();
    let certs = tempfile::tempdir().unwrap().keep();
    pki.write_pair(&certs, "site");
    let keys = certs.join("tickets.keys");
    std::fs::write(&keys, format!("{A}\n")).unwrap();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "protocol = \"tls\"\n".into(),
            extra: format!(
                "[tls]\ncertificates = \"{}\"\nsession_ticket_keys = \"{}\"\n",
                certs.display(),
                keys.display()
            ),
            ..GateOptions::default()
        },
    );
    // One client configuration (so one session store) per key epoch: a request on a fresh
    // connection, whose answer carries the server's tickets; true when it resumed.
    let connect = |config: &std::sync::Arc<rustls::ClientConfig>| {
        let stream = TcpStream::connect(gate.addr).unwrap();
        let mut client = TlsClient::with_config(config.clone(), stream, "www.example.com").unwrap();
        let resumed = client.tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        assert_eq!(status(&client.get("www.example.com", "/")), 200);
        resumed
    };
    let h1_only = || {
        let mut config = (*pki.client_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        std::sync::Arc::new(config)
    };
    let sealed_with_a = h1_only();
    assert!(
        !connect(&sealed_with_a),
        "the first connection is a full handshake"
    );
    assert!(connect(&sealed_with_a), "a ticket sealed with A resumes");
    let reloads = |result: &str| {
        gate.metrics().value(
            "icp_gate_tls_ticket_key_reloads_total",
            &[("result", result)],
        )
    };
    let hangup = |want: f64, result: &str| {
        Command::new("kill")
            .args(["-HUP", &gate.pid().to_string()])
            .status()
            .unwrap();
        wait_for("the ticket keys reloaded", Duration::from_secs(10), || {
            (reloads(result) >= want).then_some(())
        });
    };
    // Rotated: B current, A previous. A's ticket still resumes (B seals the new ones).
    std::fs::write(&keys, format!("{B}\n{A}\n")).unwrap();
    hangup(1.0, "success");
    let sealed_with_b = h1_only();
    assert!(!connect(&sealed_with_b));
    assert!(
        connect(&sealed_with_a),
        "the previous key still opens its tickets"
    );
    // A file that does not read: the keys in service stay.
    std::fs::write(&keys, "not a key\n").unwrap();
    hangup(1.0, "error");
    assert!(connect(&sealed_with_b), "B is still in service");
    // Rotated to C alone: B's tickets no longer open, a full handshake instead; the new
    // tickets (sealed with C) resume.
    std::fs::write(&keys, format!("{C}\n")).unwrap();
    hangup(2.0, "success");
    assert!(!connect(&sealed_with_b), "B is gone");
    assert!(connect(&sealed_with_b), "C's ticket resumes");
    assert!(gate.log().contains("session ticket keys not reloaded"));
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send its cookies as separate `cookie` fields (browsers
/// do, for HPACK's sake); an HTTP/1.1 origin gets them as one `Cookie` field joined with "; ",
/// on both forwarding paths (the front end's and Pingora's).
#[test]
fn http2_cookie_crumbs_reach_the_origin_as_one_cookie_field() {
    for pingora in [false, true] {
        let origin = Origin::start();
        let pki = held();
        let opts = GateOptions {
            env: forward_path_env(pingora),
            ..GateOptions::default()
        };
        let (gate, _certs) = terminating_gate(&origin, &pki, opts);
        let mut h2 = H2::connect(&pki, &gate);
        let frames = h2.get_with(
            1,
            "www.example.com",
            &[
                ("cookie", "a=1"),
                ("x-between", "x"),
                ("cookie", "b=2"),
                ("cookie", "c=3"),
            ],
        );
        assert!(frames.iter().any(|f| f.0 == 0x1 && f.2 == 1), "{frames:?}");
        let received = wait_for("the origin's request", Duration::from_secs(5), || {
            let r = origin.received();
            (!r.is_empty()).then_some(r)
        });
        assert_eq!(
            received[0].headers_named("cookie"),
            ["a=1; b=2; c=3"],
            "pingora path: {pingora}"
        );
        assert_eq!(received[0].header("x-between"), Some("x"));
    }
}
