//! Hostile clients against the real gate and a real origin that records every request it
//! receives. The invariant each test checks: whatever the client sends, the origin only ever
//! sees requests for hosts the registry allows, and the gate keeps serving others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::harness::*;

/// Sends `raw` in one write, reads whatever comes back until the gate closes the connection or
/// goes quiet, and returns it.
fn send_raw(gate: &Gate, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(gate.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every host the origin saw is an allowed one.
fn assert_origin_saw_only(origin: &Origin, allowed: &[&str]) {
    for host in origin.hosts() {
        assert!(
            allowed.contains(&host.as_str()),
            "the origin received a request for {host:?}: {:#?}",
            origin.received()
        );
    }
}

const FILED: &str = "www.example.com";

#[test]
fn request_smuggling_never_delivers_an_undecided_request() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let attacks: [&[u8]; 8] = [
        // CL.TE: Content-Length says the body is "0\r\n\r\n" + more; chunked says it ends early.
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
        // TE.CL
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n25\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n\r\n0\r\n\r\n",
        // Duplicate and obfuscated Transfer-Encoding.
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nContent-Length: 37\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: xchunked\r\nContent-Length: 37\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
        // Two Content-Length values.
        b"POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
        // A blocked request carrying a request in its body.
        b"POST / HTTP/1.1\r\nHost: unfiled.cn\r\nContent-Length: 39\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n\r\n",
        // A bare LF line ending trick.
        b"GET / HTTP/1.1\nHost: www.example.com\n\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
    ];
    for attack in attacks {
        send_raw(&gate, attack);
    }
    assert_origin_saw_only(&origin, &[FILED]);
    // And the gate still serves.
    assert_eq!(get_host(gate.addr, FILED).status, 200);
}

#[test]
fn pipelined_requests_behind_a_block_page_are_not_forwarded() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    // Blocked first, then filed, in one write: the block page is answered; what follows on the
    // same connection is never forwarded without its own decision.
    let out = send_raw(
        &gate,
        b"GET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled2.cn\r\n\r\nGET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // Filed first, then unfiled, in one write.
    send_raw(
        &gate,
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\nGET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
    );
    assert_origin_saw_only(&origin, &[FILED]);
    // Whatever was forwarded was forwarded once per decided request, never more.
    let m = gate.metrics();
    assert!(origin.received().len() as f64 <= m.requests("allowed", ""));
}

/// Were an h2c offer to reach the origin and be accepted, the client would speak HTTP/2 to it
/// through the tunnel, where every stream names its own `:authority`, none decided by the gate.
/// Pingora 0.9 passes only websocket upgrades upstream; this guards that.
#[test]
fn h2c_upgrade_offers_are_not_passed_to_the_origin() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let out = send_raw(
        &gate,
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let r = &origin.received()[0];
    assert_eq!(r.header("upgrade"), None);
    assert_eq!(r.header("http2-settings"), None);
    assert!(!r
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .contains("upgrade"));
    // The same offer without `Connection: Upgrade` (not hop-by-hop, so a proxy passes it on
    // unless it removes it itself).
    send_raw(
        &gate,
        b"GET /2 HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let r = &origin.received()[1];
    assert_eq!(r.target, "/2");
    assert_eq!(r.header("upgrade"), None, "{:?}", r.headers);
    assert_eq!(r.header("http2-settings"), None, "{:?}", r.headers);
    // An HTTP/2 preface sent in the clear is not a request the gate forwards.
    send_raw(
        &gate,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    );
    assert_origin_saw_only(&origin, &[FILED]);
}

#[test]
fn oversized_and_malformed_heads_are_refused_and_the_gate_survives() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 * 1024 * 1024)
    );
    let out = send_raw(&gate, big.as_bytes());
    assert!(
        !out.starts_with("HTTP/1.1 200"),
        "a 2 MiB head was accepted"
    );
    for raw in [
        &b"\x00\x01\x02\x03\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: www.example.com\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\xfe.example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.example.com\x00unfiled.cn\r\n\r\n",
    ] {
        send_raw(&gate, raw);
    }
    assert_origin_saw_only(&origin, &[FILED]);
    assert_eq!(get_host(gate.addr, FILED).status, 200);
}

#[test]
fn slow_and_idle_clients_do_not_stop_the_gate_serving_others() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    // Slowloris: many connections that send a head one byte at a time and never finish it.
    let mut slow: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(gate.addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: www.exa").unwrap();
            s
        })
        .collect();
    // Idle: many connections that send nothing at all.
    let idle: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(gate.addr).unwrap())
        .collect();
    for round in 0..5 {
        for s in &mut slow {
            let _ = s.write_all(b"m");
        }
        let resp = get_host(gate.addr, FILED);
        assert_eq!(resp.status, 200, "round {round}");
        assert_eq!(get_host(gate.addr, "unfiled.cn").status, 403);
    }
    drop(idle);
    drop(slow);
    assert_origin_saw_only(&origin, &[FILED]);
}

#[test]
fn connections_end_after_the_configured_requests_or_idle_time() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            extra: String::new(),
            listener_extra: "max_requests_per_connection = 3\nkeepalive_timeout_seconds = 1\n"
                .into(),
            ..Default::default()
        },
    );
    let mut conn = Conn::open(gate.addr);
    let get = format!("GET / HTTP/1.1\r\nHost: {FILED}\r\n\r\n");
    assert_eq!(conn.send(get.as_bytes()).status, 200);
    assert_eq!(conn.send(get.as_bytes()).status, 200);
    let third = conn.send(get.as_bytes());
    assert_eq!(third.status, 200);
    assert_eq!(third.header("connection"), Some("close"), "{third:?}");
    assert!(conn.is_closed());

    // An idle keep-alive connection is closed after the timeout.
    let mut conn = Conn::open(gate.addr);
    assert_eq!(conn.send(get.as_bytes()).status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        conn.is_closed(),
        "the idle connection was kept past keepalive_timeout_seconds"
    );
}

#[test]
fn a_request_head_must_be_complete_within_the_header_deadline() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "header_read_timeout_seconds = 1\nkeepalive_timeout_seconds = 30\n"
                .into(),
            ..Default::default()
        },
    );
    // A first request trickled in: the deadline counts from the accept.
    let mut trickle = Conn::open(gate.addr);
    let mut silent = Conn::open(gate.addr);
    let mut second = Conn::open(gate.addr);
    let blocked = b"GET / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n";
    assert_eq!(second.send(blocked).status, 403);
    // A request with a body is served by Pingora's proxy; the connection comes back to the
    // front end after it, under the same deadline.
    let mut after_body = Conn::open(gate.addr);
    let post = format!("POST / HTTP/1.1\r\nHost: {FILED}\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(after_body.send(post.as_bytes()).status, 200);
    trickle.writer.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    // A later request on a kept-alive connection: the deadline counts from its first byte,
    // well after the connection was opened.
    std::thread::sleep(Duration::from_millis(600));
    second.writer.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    after_body
        .writer
        .write_all(b"GET / HTTP/1.1\r\nHo")
        .unwrap();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        let _ = trickle.writer.write_all(b"s");
    }
    assert!(trickle.is_closed(), "a trickled head outlived the deadline");
    assert!(
        silent.is_closed(),
        "a silent connection outlived the deadline"
    );
    assert!(
        second.is_closed(),
        "a trickled second head outlived the deadline"
    );
    assert!(
        after_body.is_closed(),
        "a trickled head after a proxied request outlived the deadline"
    );
    let m = gate.metrics();
    assert!(
        m.value("icp_gate_bad_requests_total", &[("reason", "head_timeout")]) >= 4.0,
        "{}",
        m.0
    );
    // An idle kept-alive connection is not an offence: it waits the keep-alive timeout.
    let mut idle = Conn::open(gate.addr);
    assert_eq!(idle.send(blocked).status, 403);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(idle.send(blocked).status, 403);
    assert_origin_saw_only(&origin, &[FILED]);
}

#[test]
fn a_head_over_max_header_bytes_gets_431_and_the_connection_ends() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "max_header_bytes = 4096\n".into(),
            ..Default::default()
        },
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {FILED}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let mut conn = Conn::open(gate.addr);
    let resp = conn.send(big.as_bytes());
    assert_eq!(resp.status, 431);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(conn.is_closed());
    // Just under the limit passes.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: {FILED}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3900)
    );
    assert_eq!(Conn::open(gate.addr).send(fits.as_bytes()).status, 200);
    let m = gate.metrics();
    assert_eq!(
        m.value(
            "icp_gate_bad_requests_total",
            &[("reason", "head_too_large")]
        ),
        1.0
    );
    assert_eq!(origin.received().len(), 1);
}

/// A limit that is not the size of the front end's read buffer: a complete head larger than the
/// limit, arriving in one write, is refused as one that trickles in is (the buffer once grew past
/// the limit and took such a head whole).
#[test]
fn max_header_bytes_holds_for_a_whole_head_in_one_write() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "max_header_bytes = 20000
"
            .into(),
            ..Default::default()
        },
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {FILED}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(30_000)
    );
    let mut conn = Conn::open(gate.addr);
    let resp = conn.send(big.as_bytes());
    assert_eq!(resp.status, 431);
    assert!(origin.received().is_empty());
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: {FILED}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(19_000)
    );
    assert_eq!(Conn::open(gate.addr).send(fits.as_bytes()).status, 200);
}

#[test]
fn a_host_cannot_forge_or_flood_the_access_log() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let long = "a".repeat(5000);
    let hostile: Vec<Vec<u8>> = vec![
        b"x\" decision=\"allowed\" forged=\"1".to_vec(),
        b"evil.cn\x1b[2J\x1b[31mred".to_vec(),
        b"evil.cn\\n2026-01-01T00:00:00Z INFO forged".to_vec(),
        b"\xff\xfe.cn".to_vec(),
        long.clone().into_bytes(),
        format!("{long}.cn").into_bytes(),
    ];
    let requests: Vec<Vec<u8>> = hostile
        .iter()
        .map(|host| [&b"GET / HTTP/1.1\r\nHost: "[..], host, b"\r\n\r\n"].concat())
        .collect();
    // The escape bytes cannot be in a header value: that head is refused by the parser
    // outright, with no decision and so no access line. Every other one is decided.
    let decided = requests.len() - 1;
    for raw in &requests {
        let out = send_raw(&gate, raw);
        assert!(
            out.starts_with("HTTP/1.1 4"),
            "{}: {out:.200}",
            raw.escape_ascii()
        );
    }
    // Every request left exactly one access line, whole, escaped and capped.
    let log = wait_for("the access lines", Duration::from_secs(5), || {
        let log = gate.log();
        let lines = log
            .lines()
            .filter(|l| l.contains("icp_gate::access"))
            .count();
        (lines >= decided).then_some(log)
    });
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("icp_gate::access"))
        .collect();
    assert_eq!(lines.len(), decided, "{lines:#?}");
    for line in &lines {
        assert!(!line.contains('\x1b'), "raw escape byte in {line:?}");
        assert!(!line.contains("forged=\"1\""), "a forged field in {line:?}");
        assert!(line.contains("decision=\"blocked\""), "{line:?}");
        assert!(line.len() < 1024, "an access line of {} bytes", line.len());
    }
    assert!(log.lines().all(|l| !l.starts_with("2026-01-01T00:00:00Z")));
    assert!(!log.contains('\x1b'), "a raw escape byte reached the log");
    assert_origin_saw_only(&origin, &[]);
}

#[test]
fn a_client_that_does_not_read_still_gets_every_answer_whole_and_in_order() {
    // Hundreds of pipelined requests sent before reading anything: the answers (about 2.8 KB
    // each) overflow the socket buffers, so the gate's writes go partly straight to the socket
    // and partly through the stream once it drains. Every answer must arrive whole, in order.
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "max_requests_per_connection = 100000\n".into(),
            ..Default::default()
        },
    );
    let mut conn = Conn::open(gate.addr);
    let n = 3000;
    let burst: String = (0..n)
        .map(|i| {
            let host = if i % 50 == 49 {
                FILED.to_string()
            } else {
                format!("u{i}.unfiled.cn")
            };
            format!("GET /{i} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        })
        .collect();
    let writer = conn.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(burst.as_bytes()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..n {
        let resp = conn
            .read_response(false)
            .unwrap_or_else(|| panic!("answer {i} missing"));
        if i % 50 == 49 {
            assert_eq!(resp.status, 200, "answer {i}");
        } else {
            assert_eq!(resp.status, 403, "answer {i}");
            assert!(
                resp.text().contains(&format!("u{i}.unfiled.cn")),
                "answer {i} out of order"
            );
        }
    }
    sender.join().unwrap();
    assert_eq!(origin.received().len(), n / 50);
}
