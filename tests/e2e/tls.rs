//! `protocol = "tls"` listeners end to end: the real binary, a real TLS origin with a certificate
//! made at test time, real TLS clients (rustls; curl and openssl where installed), and raw
//! ClientHellos split across segments and records.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use icp_gate_registry::Status;

use crate::harness::*;
use crate::tls_harness::*;

const WAIT: Duration = Duration::from_secs(5);
const NO_GAP: Duration = Duration::ZERO;

/// A gate whose one listener is a `tls` listener forwarding to `upstream`.
fn tls_gate(upstream: SocketAddr, keys: &str, opts: GateOptions) -> Gate {
    let origin = Origin::start();
    Gate::start(
        &origin,
        GateOptions {
            listener_extra: format!(
                "protocol = \"tls\"\nupstream = [\"{upstream}\"]\n{keys}\n{}",
                opts.listener_extra
            ),
            ..opts
        },
    )
}

fn tls_count(gate: &Gate, decision: &str, reason: &str) -> f64 {
    gate.metrics().value(
        "icp_gate_tls_connections_total",
        &[("decision", decision), ("reason", reason)],
    )
}

/// Waits until the counter reaches `want` (the gate counts before it answers, but a metrics
/// scrape may race the connection's task).
fn wait_count(gate: &Gate, decision: &str, reason: &str, want: f64) {
    wait_for(
        &format!("tls_connections_total{{{decision},{reason}}} = {want}"),
        WAIT,
        || (tls_count(gate, decision, reason) == want).then_some(()),
    );
}

fn pki() -> Pki {
    Pki::new(&["example.com", "www.example.com", "unfiled.cn"])
}

#[test]
fn a_filed_sni_is_passed_through_untouched_to_the_origin() {
    let pki = pki();
    let origin = TlsOrigin::start(&pki);
    let gate = tls_gate(origin.addr, "", GateOptions::default());

    // The handshake completes against the origin's own certificate (only the origin holds its
    // key), and a request and its answer flow both ways.
    let mut client = TlsClient::connect(&pki, gate.addr, "www.example.com").unwrap();
    let answer = client.get("www.example.com", "/x?y=1");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.ends_with("tls origin: GET /x?y=1 HTTP/1.1"),
        "{answer}"
    );
    // A second request on the same connection.
    assert!(client
        .get("www.example.com", "/second")
        .ends_with("GET /second HTTP/1.1"));

    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].sni.as_deref(), Some("www.example.com"));
    // The origin received the client's ClientHello byte for byte.
    let sent = client.written.lock().unwrap().clone();
    let hello_len = 5 + u16::from_be_bytes([sent[3], sent[4]]) as usize;
    assert!(seen[0].raw.len() >= hello_len);
    assert_eq!(seen[0].raw[..hello_len], sent[..hello_len]);
    assert_eq!(seen[0].requests.len(), 2);

    wait_count(&gate, "allowed", "", 1.0);
    let m = gate.metrics();
    let up = m.value(
        "icp_gate_tls_relayed_bytes_total",
        &[("direction", "to_upstream")],
    );
    assert!(up >= hello_len as f64, "{up}");
    assert!(
        m.value(
            "icp_gate_tls_relayed_bytes_total",
            &[("direction", "to_client")]
        ) > 0.0
    );
}

#[test]
fn refused_snis_get_exactly_the_unrecognized_name_alert_and_a_close() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let pki = pki();
    for name in [
        "unfiled.cn",
        "gone.com.cn",
        "bad.example.com",
        "cdn-only.cn",
        "www.cdn-only.cn",
        "lapsed.com.cn",
    ] {
        let hello = real_hello(&pki, name);
        assert_eq!(
            exchange(gate.addr, &[&hello], NO_GAP, WAIT),
            Ending::Closed(ALERT.to_vec()),
            "{name}"
        );
    }
    wait_count(&gate, "blocked", "unfiled", 1.0);
    wait_count(&gate, "blocked", "revoked", 1.0);
    wait_count(&gate, "blocked", "denied", 1.0);
    wait_count(&gate, "blocked", "unconnected", 3.0);
    // Nothing of a refused connection reaches the origin.
    assert!(origin.received().is_empty());
    // One structured line per refusal, with the SNI, ALPN, ECH flag, size and reason.
    let log = gate.log();
    let line = log
        .lines()
        .find(|l| l.contains("tls connection refused") && l.contains("sni=\"unfiled.cn\""))
        .unwrap_or_else(|| panic!("no refusal line for unfiled.cn in:\n{log}"));
    for field in [
        "reason=\"unfiled\"",
        "alpn=\"h2,http/1.1\"",
        "ech=false",
        "records=1",
        "client_hello_bytes=",
        "original_dst=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[test]
fn reset_mode_refuses_with_a_tcp_reset() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "refuse = \"reset\"", GateOptions::default());
    let hello = built_hello(Some(b"unfiled.cn"), &[]);
    assert_eq!(
        exchange(gate.addr, &[&hello], NO_GAP, WAIT),
        Ending::Reset(Vec::new())
    );
    // A hello that is not TLS at all is refused the same way.
    assert_eq!(
        exchange(gate.addr, &[b"GET / HTTP/1.1\r\n\r\n"], NO_GAP, WAIT),
        Ending::Reset(Vec::new())
    );
    wait_count(&gate, "blocked", "unfiled", 1.0);
    wait_count(&gate, "blocked", "not_tls", 1.0);
}

#[test]
fn split_segments_and_split_records_are_reassembled_and_forwarded_byte_for_byte() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let pki = pki();
    let hello = real_hello(&pki, "www.example.com");
    let unfiled = real_hello(&pki, "unfiled.cn");
    let gap = Duration::from_millis(100);
    let five = split_records(&hello, hello.len() / 5);
    let sixty_four = split_records(&hello, hello.len() / 64 + 1);
    let records: Vec<&[u8]> = {
        // Each record its own write, and the first one cut inside its header.
        let mut parts: Vec<&[u8]> = vec![&five[..3], &five[3..40]];
        parts.push(&five[40..]);
        parts
    };
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("one segment", vec![&hello[..]]),
        ("two segments", vec![&hello[..100], &hello[100..]]),
        ("cut in the record header", vec![&hello[..2], &hello[2..]]),
        ("five records", vec![&five[..]]),
        ("sixty-four records", vec![&sixty_four[..]]),
        ("records over segments", records),
    ];
    for (i, (what, parts)) in cases.iter().enumerate() {
        let sent: Vec<u8> = parts.concat();
        assert_eq!(
            exchange(gate.addr, parts, gap, Duration::from_millis(300)),
            Ending::Open(Vec::new()),
            "{what}: passed through, nothing answered yet"
        );
        wait_for(what, WAIT, || {
            let got = origin.received();
            (got.len() > i && got[i] == sent).then_some(())
        });
    }
    // The same splits of an unfiled hello are refused.
    for parts in [
        vec![&unfiled[..100], &unfiled[100..]],
        vec![&split_records(&unfiled, 40)[..]],
    ] {
        assert_eq!(
            exchange(gate.addr, &parts, gap, WAIT),
            Ending::Closed(ALERT.to_vec())
        );
    }
    wait_count(&gate, "allowed", "", cases.len() as f64);
    wait_count(&gate, "blocked", "unfiled", 2.0);
    let log = gate.log();
    let records = (unfiled.len() - 5).div_ceil(40);
    assert!(
        log.contains(&format!("records={records} ")),
        "a split refusal logs its record count"
    );
}

#[test]
fn every_hello_that_cannot_be_read_is_refused_and_counted_with_its_reason() {
    let origin = RawOrigin::start();
    let gate = tls_gate(
        origin.addr,
        "client_hello_timeout_seconds = 1",
        GateOptions::default(),
    );
    let alert = Ending::Closed(ALERT.to_vec());
    // Over 16 KiB (a padding extension of 20 KiB).
    let big = built_hello(Some(b"www.example.com"), &[(0x1a1a, vec![0; 20 * 1024])]);
    assert_eq!(exchange(gate.addr, &[&big], NO_GAP, WAIT), alert);
    // Plain HTTP on the TLS port, an SSLv2-style hello, garbage.
    assert_eq!(
        exchange(
            gate.addr,
            &[b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"],
            NO_GAP,
            WAIT
        ),
        alert
    );
    assert_eq!(
        exchange(
            gate.addr,
            &[&[0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15]],
            NO_GAP,
            WAIT
        ),
        alert
    );
    // A handshake record that is not a ClientHello (a ServerHello), and a truncated hello
    // body inside a complete message.
    let mut server_hello = built_hello(Some(b"www.example.com"), &[]);
    server_hello[5] = 2;
    assert_eq!(exchange(gate.addr, &[&server_hello], NO_GAP, WAIT), alert);
    // Too slow: the first bytes, then nothing within client_hello_timeout_seconds.
    let hello = built_hello(Some(b"www.example.com"), &[]);
    let started = Instant::now();
    assert_eq!(exchange(gate.addr, &[&hello[..10]], NO_GAP, WAIT), alert);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");

    wait_count(&gate, "blocked", "client_hello_too_large", 1.0);
    wait_count(&gate, "blocked", "not_tls", 2.0);
    wait_count(&gate, "blocked", "client_hello_malformed", 1.0);
    wait_count(&gate, "blocked", "client_hello_timeout", 1.0);
    assert!(origin.received().is_empty());
    // A client that connects and leaves without a word is not a refusal.
    drop(TcpStream::connect(gate.addr).unwrap());
    wait_for("the abandoned connection counted", WAIT, || {
        (gate.metrics().value("icp_gate_tls_abandoned_total", &[]) >= 1.0).then_some(())
    });
}

#[test]
fn the_sni_is_normalized_as_a_host_is_and_decided_by_the_same_registry() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let passes = |sni: &[u8]| {
        let hello = built_hello(Some(sni), &[]);
        exchange(gate.addr, &[&hello], NO_GAP, Duration::from_millis(300)) == Ending::Open(vec![])
    };
    for sni in [
        &b"EXAMPLE.COM"[..],
        b"www.example.com.",
        "例子.中国".as_bytes(),
        b"xn--fsqu00a.xn--fiqs8s",
        b"Deep.A.B.Deep.cn",
    ] {
        assert!(passes(sni), "{}", String::from_utf8_lossy(sni));
    }
    for sni in [
        &b"x.a.b.deep.cn"[..],
        b"evilexample.com",
        b"example.com.evil.net",
        b"exa mple.com",
        b"example.com:443",
    ] {
        assert!(!passes(sni), "{}", String::from_utf8_lossy(sni));
    }
    wait_count(&gate, "blocked", "invalid_host", 2.0);
    wait_count(&gate, "blocked", "denied", 1.0);
    wait_count(&gate, "blocked", "unfiled", 2.0);
    // An HTTP listener decides each of these names the same way (one decision for both).
    let http_origin = Origin::start();
    let http = Gate::start(&http_origin, GateOptions::default());
    for (host, status) in [
        ("EXAMPLE.COM", 200),
        ("x.a.b.deep.cn", 403),
        ("evilexample.com", 403),
        ("example.com.evil.net", 403),
    ] {
        assert_eq!(get_host(http.addr, host).status, status, "{host}");
    }
}

#[test]
fn no_sni_or_an_ip_literal_is_decided_on_the_destination_address() {
    let origin = RawOrigin::start();
    // 127.0.0.1, the address the client connects to, is not filed in the standard registry.
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let alert = Ending::Closed(ALERT.to_vec());
    assert_eq!(
        exchange(gate.addr, &[&built_hello(None, &[])], NO_GAP, WAIT),
        alert
    );
    assert_eq!(
        exchange(
            gate.addr,
            &[&built_hello(Some(b"127.0.0.1"), &[])],
            NO_GAP,
            WAIT
        ),
        alert
    );
    // An IP literal naming a filed address is still decided on the destination, not on itself.
    assert_eq!(
        exchange(
            gate.addr,
            &[&built_hello(Some(b"203.0.113.7"), &[])],
            NO_GAP,
            WAIT
        ),
        alert
    );
    wait_count(&gate, "blocked", "ip_unfiled", 3.0);

    // With 127.0.0.1 filed, the same hellos pass.
    let mut records = standard_records();
    records.push(("127.0.0.1", Status::Connected, None, None));
    gate.publish(&snapshot_bytes(2, &records), 2);
    for hello in [built_hello(None, &[]), built_hello(Some(b"127.0.0.1"), &[])] {
        assert_eq!(
            exchange(gate.addr, &[&hello], NO_GAP, Duration::from_millis(300)),
            Ending::Open(vec![])
        );
    }
    wait_count(&gate, "allowed", "", 2.0);
}

#[test]
fn ech_and_grease_extensions_never_refuse_a_filed_name() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    // Chrome's GREASE ECH extension (0xfe0d), GREASE types, and a post-quantum-sized hello.
    let hello = built_hello(
        Some(b"www.example.com"),
        &[
            (0x0a0a, vec![]),
            (0xfe0d, vec![0, 0, 1, 0, 1, 0x8a, 0, 0x20, 1, 2, 3]),
            (0x4a4a, vec![0; 1500]),
        ],
    );
    assert!(hello.len() > 1400);
    assert_eq!(
        exchange(
            gate.addr,
            &[&hello[..1000], &hello[1000..]],
            Duration::from_millis(50),
            Duration::from_millis(300)
        ),
        Ending::Open(vec![])
    );
    wait_for("the hello at the origin", WAIT, || {
        (origin.received().first() == Some(&hello)).then_some(())
    });
    // The same extensions do not let an unfiled name through.
    let unfiled = built_hello(Some(b"unfiled.cn"), &[(0xfe0d, vec![0; 16])]);
    assert_eq!(
        exchange(gate.addr, &[&unfiled], NO_GAP, WAIT),
        Ending::Closed(ALERT.to_vec())
    );
    let log = gate.log();
    assert!(
        log.lines()
            .any(|l| l.contains("sni=\"unfiled.cn\"") && l.contains("ech=true")),
        "{log}"
    );
}

#[test]
fn monitor_mode_passes_through_what_it_would_refuse_and_counts_it() {
    let origin = RawOrigin::start();
    let gate = tls_gate(
        origin.addr,
        "",
        GateOptions {
            mode: "monitor",
            ..GateOptions::default()
        },
    );
    let hello = built_hello(Some(b"unfiled.cn"), &[]);
    assert_eq!(
        exchange(gate.addr, &[&hello], NO_GAP, Duration::from_millis(300)),
        Ending::Open(vec![])
    );
    wait_for("the hello at the origin", WAIT, || {
        (origin.received().first() == Some(&hello)).then_some(())
    });
    wait_count(&gate, "monitored", "unfiled", 1.0);
    // What is not a readable hello is refused in monitor mode too: nothing to decide on.
    assert_eq!(
        exchange(gate.addr, &[b"GET / HTTP/1.1\r\n\r\n"], NO_GAP, WAIT),
        Ending::Closed(ALERT.to_vec())
    );
    wait_count(&gate, "blocked", "not_tls", 1.0);
}

#[test]
fn half_close_is_passed_on_and_the_answer_still_comes_back() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let hello = built_hello(Some(b"www.example.com"), &[]);
    let mut s = TcpStream::connect(gate.addr).unwrap();
    s.write_all(&hello).unwrap();
    s.write_all(b"more bytes after the hello").unwrap();
    // The client is done sending; the origin answers only once it sees that.
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("received {}", hello.len() + 26));
    // One access line for the connection once both sides have closed.
    let sent = hello.len() + 26;
    wait_for("the connection's access line", WAIT, || {
        gate.log()
            .lines()
            .find(|l| l.contains("icp_gate::access: tls connection"))
            .map(str::to_owned)
    });
    let log = gate.log();
    let line = log
        .lines()
        .find(|l| l.contains("icp_gate::access: tls connection"))
        .unwrap();
    for field in [
        "sni=\"www.example.com\"".to_owned(),
        "decision=\"allowed\"".to_owned(),
        format!("to_upstream={sent} "),
        "end=\"closed\"".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} missing from {line}");
    }
}

#[test]
fn an_origin_that_cannot_be_reached_ends_the_connection_counted_and_logged() {
    let dead = free_port();
    let gate = tls_gate(addr(dead), "", GateOptions::default());
    let hello = built_hello(Some(b"www.example.com"), &[]);
    assert_eq!(
        exchange(gate.addr, &[&hello], NO_GAP, WAIT),
        Ending::Closed(vec![])
    );
    wait_for("connect_failed counted", WAIT, || {
        (gate.metrics().value(
            "icp_gate_upstream_errors_total",
            &[("reason", "connect_failed")],
        ) == 1.0)
            .then_some(())
    });
    assert!(gate.log().contains("no upstream answered"));
}

#[test]
fn connections_over_max_connections_are_closed_at_accept_and_counted() {
    let origin = RawOrigin::start();
    let gate = tls_gate(origin.addr, "max_connections = 2", GateOptions::default());
    // The harness's own readiness probes have come and gone; two slow clients hold the slots.
    wait_for("no connection open", WAIT, || {
        (gate.metrics().value("icp_gate_open_connections", &[]) == 0.0).then_some(())
    });
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(gate.addr).unwrap();
            s.write_all(&[0x16, 3, 1]).unwrap();
            s
        })
        .collect();
    wait_for("two connections open", WAIT, || {
        (gate.metrics().value("icp_gate_open_connections", &[]) == 2.0).then_some(())
    });
    let hello = built_hello(Some(b"www.example.com"), &[]);
    // Closed at once, unread: a close, or a reset when the hello was already in.
    let ending = exchange(gate.addr, &[&hello], NO_GAP, WAIT);
    assert!(
        matches!(&ending, Ending::Closed(b) | Ending::Reset(b) if b.is_empty()),
        "{ending:?}"
    );
    assert!(origin.received().is_empty());
    assert_eq!(
        gate.metrics()
            .value("icp_gate_connections_rejected_total", &[]),
        1.0
    );
    drop(held);
    wait_for("the slots given back", WAIT, || {
        (gate.metrics().value("icp_gate_open_connections", &[]) == 0.0).then_some(())
    });
    assert_eq!(
        exchange(gate.addr, &[&hello], NO_GAP, Duration::from_millis(300)),
        Ending::Open(vec![])
    );
}

#[test]
fn sigterm_lets_a_passthrough_connection_finish_within_the_grace_period() {
    let pki = pki();
    let origin = TlsOrigin::start(&pki);
    let mut gate = tls_gate(
        origin.addr,
        "",
        GateOptions {
            extra: String::new(),
            ..GateOptions::default()
        },
    );
    let mut client = TlsClient::connect(&pki, gate.addr, "www.example.com").unwrap();
    assert!(client.get("www.example.com", "/").contains("200 OK"));
    let pid = gate.pid();
    let gate_addr = gate.addr;
    let stopper = std::thread::spawn(move || {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    });
    stopper.join().unwrap();
    // Within the grace period (1 s in the harness) the open connection still works, and a new
    // one is not accepted.
    std::thread::sleep(Duration::from_millis(200));
    assert!(client
        .get("www.example.com", "/late")
        .ends_with("GET /late HTTP/1.1"));
    wait_for("the listener closed", WAIT, || {
        TcpStream::connect(gate_addr).is_err().then_some(())
    });
    let status = gate.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn curl_and_openssl_see_a_passthrough_and_an_unrecognized_name() {
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !have("curl") {
        eprintln!("SKIP: curl is not installed (scripts/ensure-deps installs it)");
        return;
    }
    let pki = pki();
    let origin = TlsOrigin::start(&pki);
    let gate = tls_gate(origin.addr, "", GateOptions::default());
    let ca = pki.write_ca(gate.dir.path());
    let port = gate.addr.port();
    let curl = |name: &str| {
        Command::new("curl")
            .args(["-sS", "--http1.1", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/curl"))
            .output()
            .unwrap()
    };
    let ok = curl("www.example.com");
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "tls origin: GET /curl HTTP/1.1"
    );
    let refused = curl("unfiled.cn");
    assert_eq!(refused.status.code(), Some(35), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("unrecognized name"), "{err}");

    if have("openssl") {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(gate.addr.to_string())
            .args(["-servername", "unfiled.cn", "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(text.contains("unrecognized name"), "{text}");
    }
}

#[test]
fn a_passthrough_idle_for_tunnel_idle_timeout_is_closed() {
    let origin = RawOrigin::start();
    let gate = tls_gate(
        origin.addr,
        "tunnel_idle_timeout_seconds = 1",
        GateOptions::default(),
    );
    let hello = built_hello(Some(b"www.example.com"), &[]);
    let started = Instant::now();
    // Nothing either way after the hello: closed after about a second, not before.
    assert_eq!(
        exchange(gate.addr, &[&hello], NO_GAP, WAIT),
        Ending::Closed(vec![])
    );
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < WAIT,
        "{idle:?}"
    );
    wait_for("the passthrough gauge back at 0", WAIT, || {
        (gate
            .metrics()
            .value("icp_gate_tls_passthrough_connections", &[])
            == 0.0)
            .then_some(())
    });
}

/// The gate's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_flood_of_trickling_hellos_holds_bounded_memory() {
    const CONNS: usize = 400;
    let origin = RawOrigin::start();
    let gate = tls_gate(
        origin.addr,
        &format!("max_connections = {CONNS}\nclient_hello_timeout_seconds = 60"),
        GateOptions::default(),
    );
    // Each connection sends most of a large hello (just under the 16 KiB cap) and stops: the
    // gate must hold it, and nothing more, until the deadline.
    let big = built_hello(Some(b"www.example.com"), &[(0x1a1a, vec![0; 16_200])]);
    assert!(big.len() <= 16 * 1024 && big.len() > 16_000);
    let part = &big[..big.len() - 100];
    let before = rss_bytes(gate.pid());
    let held: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let mut s = TcpStream::connect(gate.addr).unwrap();
            s.write_all(part).unwrap();
            s
        })
        .collect();
    wait_for("every connection open", WAIT, || {
        (gate.metrics().value("icp_gate_open_connections", &[]) == CONNS as f64).then_some(())
    });
    // One more is over the cap: closed at once.
    let mut extra = TcpStream::connect(gate.addr).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)));
    let grown = rss_bytes(gate.pid()).saturating_sub(before);
    // Still pending, every one of them: nothing decided or refused yet.
    let m = gate.metrics();
    assert_eq!(m.value("icp_gate_open_connections", &[]), CONNS as f64);
    assert!(
        !m.0.lines()
            .any(|l| l.starts_with("icp_gate_tls_connections_total") && !l.ends_with(" 0")),
        "{}",
        m.0
    );
    // 16 KiB of hello each, plus the connection's task and socket state: well under 48 KiB.
    let per_conn = grown / CONNS as u64;
    assert!(
        per_conn < 48 * 1024,
        "{per_conn} bytes per pending connection ({grown} in all)"
    );
    drop(held);
    wait_for("the connections gone", WAIT, || {
        (gate.metrics().value("icp_gate_open_connections", &[]) == 0.0).then_some(())
    });
    assert!(origin.received().is_empty());
    assert_eq!(
        gate.metrics()
            .value("icp_gate_connections_rejected_total", &[]),
        1.0
    );
}
