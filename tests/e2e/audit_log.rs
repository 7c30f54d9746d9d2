//! The audit log and the access log file end to end: the real binary under many concurrent
//! connections, a rotation (rename + SIGUSR1) in the middle, SIGTERM, every path that decides
//! (the front end, Pingora's proxy, TLS refusals), and every line read back as JSON.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::tls_harness::*;

const AUDIT_FIELDS: [&str; 9] = [
    "time",
    "listener",
    "client",
    "host",
    "decision",
    "reason",
    "matched",
    "serial",
    "request_id",
];

/// Every line of the files, in order, each parsed as one JSON object.
fn json_lines(files: &[&Path]) -> Vec<Value> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{file:?}: a cut line"
        );
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{file:?}: not JSON ({e}): {line}"));
            assert!(v.is_object(), "{line}");
            out.push(v);
        }
    }
    out
}

fn signal(gate: &Gate, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &gate.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

fn log_keys(extra: &str) -> String {
    format!("audit_log = \"audit.log\"\naccess_log_file = \"access.log\"\n{extra}")
}

/// 20 000 blocked requests from 50 keep-alive connections at once, with allowed ones among
/// them, and the audit log renamed and reopened (SIGUSR1) half-way: the old file and the new
/// one together hold exactly one line per block, none for an allowed request, each with the
/// contract's fields, in order per connection, all written by the time SIGTERM's exit is done.
#[test]
fn every_block_has_exactly_one_audit_line_across_a_rotation_and_sigterm() {
    const CONNS: usize = 50;
    const BLOCKED_PER_CONN: usize = 400;
    let origin = Origin::start();
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            extra: log_keys("flush_interval_ms = 20"),
            ..GateOptions::default()
        },
    );
    let audit = gate.dir.path().join("audit.log");
    let rotated = gate.dir.path().join("audit.log.1");
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let addr = gate.addr;
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr);
                let local = conn.writer.local_addr().unwrap();
                // (host, request id) of every block, in the order sent.
                let mut blocks = Vec::new();
                let mut allowed = 0;
                let mut i = 0;
                while blocks.len() < BLOCKED_PER_CONN {
                    i += 1;
                    let host = match i % 10 {
                        // Allowed: no audit line.
                        0 => "www.example.com".to_owned(),
                        // Denied under a record the line must name.
                        3 => format!("r{i}.c{c}.bad.example.com"),
                        _ => format!("r{i}.c{c}.unfiled-audit.cn"),
                    };
                    let resp = conn
                        .send(format!("GET /p?q={i} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
                    answered.fetch_add(1, Ordering::Relaxed);
                    if host == "www.example.com" {
                        assert_eq!(resp.status, 200);
                        allowed += 1;
                    } else {
                        assert_eq!(resp.status, 403);
                        let id = resp.header("x-request-id").unwrap().to_owned();
                        blocks.push((host, id));
                    }
                }
                (local, blocks, allowed)
            })
        })
        .collect();

    // Half-way: logrotate's `create` mode (rename, then SIGUSR1).
    let total_blocks = CONNS * BLOCKED_PER_CONN;
    wait_for("half the requests", Duration::from_secs(120), || {
        (answered.load(Ordering::Relaxed) >= total_blocks / 2).then_some(())
    });
    std::fs::rename(&audit, &rotated).unwrap();
    signal(&gate, "-USR1");

    let mut sent: HashMap<String, (SocketAddr, String)> = HashMap::new();
    let mut order: HashMap<SocketAddr, Vec<String>> = HashMap::new();
    let mut allowed = 0;
    for client in clients {
        let (local, blocks, a) = client.join().unwrap();
        allowed += a;
        for (host, id) in blocks {
            order.entry(local).or_default().push(host.clone());
            assert!(sent.insert(host, (local, id)).is_none());
        }
    }
    assert_eq!(sent.len(), total_blocks);
    assert!(allowed > 0);
    // Lines still in the gate's buffers are written at exit.
    assert!(gate.terminate().success());

    let old = json_lines(&[&rotated]);
    let new = json_lines(&[&audit]);
    assert!(
        !old.is_empty() && !new.is_empty(),
        "the rotation split the lines ({} + {})",
        old.len(),
        new.len()
    );
    let lines: Vec<Value> = old.into_iter().chain(new).collect();
    assert_eq!(
        lines.len(),
        total_blocks,
        "one audit line per block, no more"
    );
    let mut seen = HashSet::new();
    let mut seen_order: HashMap<SocketAddr, Vec<String>> = HashMap::new();
    for line in &lines {
        for field in AUDIT_FIELDS {
            assert!(line.get(field).is_some(), "{field} missing: {line}");
        }
        let host = line["host"].as_str().unwrap().to_owned();
        let (local, id) = sent
            .get(&host)
            .unwrap_or_else(|| panic!("an audit line for a request not blocked: {line}"));
        assert!(seen.insert(host.clone()), "two lines for {host}");
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["client"], local.to_string(), "{line}");
        assert_eq!(line["listener"], "test");
        assert_eq!(line["decision"], "blocked");
        assert_eq!(line["serial"], 1);
        assert_eq!(line["status"], 403);
        if host.ends_with(".bad.example.com") {
            assert_eq!(line["reason"], "denied", "{line}");
            assert_eq!(line["matched"], "bad.example.com", "{line}");
        } else {
            assert_eq!(line["reason"], "unfiled", "{line}");
            assert!(line["matched"].is_null(), "{line}");
        }
        seen_order.entry(*local).or_default().push(host);
    }
    // The lines of each connection in the order its requests were sent.
    assert_eq!(seen_order, order);
}

/// `[log] access_log_file`: one JSON line per request with OpenTelemetry HTTP field names, on
/// the front end's path and on Pingora's, for blocks, forwards and an unusable Host; the audit
/// lines of the same requests come from the same decision (Pingora's path included).
#[test]
fn access_lines_carry_opentelemetry_fields_on_every_path() {
    let origin = Origin::start();
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            extra: log_keys(""),
            ..GateOptions::default()
        },
    );
    // Each on its own connection (a block on Pingora's path with a body ends its connection).
    let mut sent = Vec::new();
    let mut ask = |raw: &str| {
        let mut conn = Conn::open(gate.addr);
        let local = conn.writer.local_addr().unwrap();
        let resp = conn.send(raw.as_bytes());
        // A block names its id to the client; a forward, to the origin.
        let id = match resp.header("x-request-id") {
            Some(id) => id.to_owned(),
            None => origin
                .received()
                .last()
                .unwrap()
                .header("x-request-id")
                .unwrap()
                .to_owned(),
        };
        sent.push((local, id));
        resp.status
    };
    // Front end: a block and a forward (the query is not logged).
    assert_eq!(
        ask("GET /a/b?secret=1 HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n"),
        403
    );
    assert_eq!(
        ask("GET /ok HTTP/1.1\r\nHost: WWW.Example.COM.\r\n\r\n"),
        200
    );
    // Pingora's path (a body): a block under a record, and a forward.
    assert_eq!(
        ask("POST /form HTTP/1.1\r\nHost: x.bad.example.com\r\nContent-Length: 2\r\n\r\nhi"),
        403
    );
    assert_eq!(
        ask("POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"),
        200
    );
    // An unusable Host: 400.
    assert_eq!(ask("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n"), 400);
    assert!(gate.terminate().success());

    let access = json_lines(&[&gate.dir.path().join("access.log")]);
    assert_eq!(access.len(), 5, "{access:#?}");
    let expect = [
        ("GET", "unfiled.cn", "/a/b", 403, "blocked", "unfiled"),
        ("GET", "www.example.com", "/ok", 200, "allowed", ""),
        (
            "POST",
            "x.bad.example.com",
            "/form",
            403,
            "blocked",
            "denied",
        ),
        ("POST", "example.com", "/up", 200, "allowed", ""),
        ("GET", "a\"b", "", 400, "blocked", "invalid_host"),
    ];
    // Lines of different connections may be in any order (only each connection's are kept in
    // order): found by request id.
    let by_id: HashMap<&str, &Value> = access
        .iter()
        .map(|l| (l["icp_gate.request_id"].as_str().unwrap(), l))
        .collect();
    for (i, want) in expect.into_iter().enumerate() {
        let (method, host, path, status, decision, reason) = want;
        let line = by_id[sent[i].1.as_str()];
        assert_eq!(line["http.request.method"], method, "{line}");
        assert_eq!(line["server.address"], host, "{line}");
        if path.is_empty() {
            assert!(line.get("url.path").is_none(), "{line}");
        } else {
            assert_eq!(line["url.path"], path, "{line}");
        }
        assert_eq!(line["http.response.status_code"], status, "{line}");
        assert_eq!(line["icp_gate.decision"], decision, "{line}");
        assert_eq!(line["icp_gate.reason"], reason, "{line}");
        let (local, id) = &sent[i];
        assert_eq!(line["icp_gate.request_id"], id.as_str(), "{line}");
        assert_eq!(line["client.address"], local.ip().to_string(), "{line}");
        assert_eq!(line["client.port"], local.port(), "{line}");
        assert_eq!(line["network.protocol.version"], "1.1", "{line}");
        assert_eq!(line["icp_gate.listener"], "test", "{line}");
        assert!(line["icp_gate.duration_us"].is_u64(), "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    assert_eq!(
        by_id[sent[4].1.as_str()]["icp_gate.invalid_host"],
        "bad_character"
    );

    let audit = json_lines(&[&gate.dir.path().join("audit.log")]);
    let by_host: BTreeMap<&str, &Value> = audit
        .iter()
        .map(|l| (l["host"].as_str().unwrap(), l))
        .collect();
    assert_eq!(by_host.len(), 3, "{audit:#?}");
    let pingora = by_host["x.bad.example.com"];
    assert_eq!(pingora["matched"], "bad.example.com");
    assert_eq!(pingora["method"], "POST");
    assert_eq!(pingora["request_id"], sent[2].1.as_str());
    assert_eq!(by_host["a\"b"]["reason"], "invalid_host");
    assert!(by_host["a\"b"]["serial"].is_null());
    assert!(by_host["unfiled.cn"]["matched"].is_null());
}

/// Monitor mode forwards what it would block, and each such request has its audit line.
#[test]
fn monitored_requests_are_audited() {
    let origin = Origin::start();
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            mode: "monitor",
            extra: log_keys(""),
            ..GateOptions::default()
        },
    );
    assert_eq!(get_host(gate.addr, "www.cdn-only.cn").status, 200);
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    assert!(gate.terminate().success());
    let audit = json_lines(&[&gate.dir.path().join("audit.log")]);
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(audit[0]["decision"], "monitored");
    assert_eq!(audit[0]["reason"], "unconnected");
    assert_eq!(audit[0]["matched"], "cdn-only.cn");
    assert_eq!(audit[0]["host"], "www.cdn-only.cn");
}

/// A TLS listener's refusals have their audit lines, with `sni` in place of `host`; a
/// passed-through filed name has none.
#[test]
fn tls_refusals_have_audit_lines_with_the_sni() {
    let upstream = RawOrigin::start();
    let origin = Origin::start();
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: format!("protocol = \"tls\"\nupstream = [\"{}\"]", upstream.addr),
            extra: log_keys(""),
            ..GateOptions::default()
        },
    );
    let pki = Pki::new(&["unfiled.cn", "x.bad.example.com", "www.example.com"]);
    let wait = Duration::from_secs(5);
    for name in ["unfiled.cn", "x.bad.example.com"] {
        let hello = real_hello(&pki, name);
        assert_eq!(
            exchange(gate.addr, &[&hello], Duration::ZERO, wait),
            Ending::Closed(ALERT.to_vec())
        );
    }
    // Not TLS at all.
    let _ = exchange(
        gate.addr,
        &[b"GET / HTTP/1.1\r\n\r\n"],
        Duration::ZERO,
        wait,
    );
    // Filed: passed through, no audit line.
    let mut passed = std::net::TcpStream::connect(gate.addr).unwrap();
    passed
        .write_all(&real_hello(&pki, "www.example.com"))
        .unwrap();
    passed.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the passthrough", wait, || {
        (!upstream.received().is_empty()).then_some(())
    });
    drop(passed);
    assert!(gate.terminate().success());

    let audit = json_lines(&[&gate.dir.path().join("audit.log")]);
    assert_eq!(audit.len(), 3, "{audit:#?}");
    for line in &audit {
        assert!(line.get("host").is_none(), "{line}");
        for field in AUDIT_FIELDS.iter().filter(|f| **f != "host") {
            assert!(line.get(*field).is_some(), "{field} missing: {line}");
        }
        assert_eq!(line["decision"], "blocked");
    }
    // Lines of different connections may be in any order: found by reason.
    let by_reason: HashMap<&str, &Value> = audit
        .iter()
        .map(|l| (l["reason"].as_str().unwrap(), l))
        .collect();
    let unfiled = by_reason["unfiled"];
    assert_eq!(unfiled["sni"], "unfiled.cn");
    assert!(unfiled["matched"].is_null());
    assert_eq!(unfiled["serial"], 1);
    let denied = by_reason["denied"];
    assert_eq!(denied["sni"], "x.bad.example.com");
    assert_eq!(denied["matched"], "bad.example.com");
    let not_tls = by_reason["not_tls"];
    assert!(not_tls["sni"].is_null());
    assert!(not_tls["serial"].is_null());
    // The refusals' access lines, with the TLS names of the conventions.
    let access = json_lines(&[&gate.dir.path().join("access.log")]);
    let refused: HashMap<&str, &Value> = access
        .iter()
        .filter(|l| l["icp_gate.decision"] == "blocked")
        .map(|l| (l["icp_gate.request_id"].as_str().unwrap(), l))
        .collect();
    assert_eq!(refused.len(), 3, "{access:#?}");
    let line = refused[unfiled["request_id"].as_str().unwrap()];
    assert_eq!(line["tls.client.server_name"], "unfiled.cn");
    assert_eq!(line["icp_gate.reason"], "unfiled");
    assert_eq!(line["tls.client.alpn"], "h2,http/1.1");
}

/// Lines written just before SIGTERM reach the file: the writer is flushed at exit, not only
/// every `flush_interval_ms`.
#[test]
fn sigterm_writes_the_last_lines() {
    let origin = Origin::start();
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            extra: log_keys("flush_interval_ms = 1000"),
            grace_period_seconds: 0,
            ..GateOptions::default()
        },
    );
    let mut conn = Conn::open(gate.addr);
    for i in 0..200 {
        let resp = conn.send(format!("GET / HTTP/1.1\r\nHost: t{i}.unfiled.cn\r\n\r\n").as_bytes());
        assert_eq!(resp.status, 403);
    }
    assert!(gate.terminate().success());
    assert_eq!(json_lines(&[&gate.dir.path().join("audit.log")]).len(), 200);
    assert_eq!(
        json_lines(&[&gate.dir.path().join("access.log")]).len(),
        200
    );
}

/// Requests on connections the gate terminated go through the same paths, and so into the same
/// logs: a block over HTTP/1.1 (the front end) and one over HTTP/2 (Pingora's proxy), each with
/// its audit line, and the HTTP/2 one's access line says so.
#[test]
fn terminated_requests_over_http1_and_http2_are_audited() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP: curl is not installed (scripts/ensure-deps installs it)");
        return;
    }
    let origin = Origin::start();
    let pki = Pki::new(&["www.example.com", "unfiled.cn"]);
    let certs = tempfile::tempdir().unwrap();
    pki.write_pair(certs.path(), "site");
    let mut gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "protocol = \"tls\"".into(),
            extra: format!(
                "{}\n[tls]\ncertificates = \"{}\"\n",
                log_keys(""),
                certs.path().display()
            ),
            ..GateOptions::default()
        },
    );
    // HTTP/1.1 on a terminated connection: the front end.
    let mut config = (*pki.client_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = std::net::TcpStream::connect(gate.addr).unwrap();
    let mut h1 = TlsClient::with_config(Arc::new(config), stream, "unfiled.cn").unwrap();
    assert!(h1.get("unfiled.cn", "/h1").starts_with("HTTP/1.1 403"));
    // HTTP/2: Pingora's proxy.
    let ca = pki.write_ca(certs.path());
    let port = gate.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("unfiled.cn:{port}:127.0.0.1")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg(format!("https://unfiled.cn:{port}/h2"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403 2", "{out:?}");
    drop(h1);
    assert!(gate.terminate().success());

    let audit = json_lines(&[&gate.dir.path().join("audit.log")]);
    assert_eq!(audit.len(), 2, "{audit:#?}");
    for line in &audit {
        assert_eq!(line["host"], "unfiled.cn", "{line}");
        assert_eq!(line["reason"], "unfiled", "{line}");
        assert_eq!(line["status"], 403, "{line}");
    }
    let access = json_lines(&[&gate.dir.path().join("access.log")]);
    let versions: HashSet<(&str, &str)> = access
        .iter()
        .map(|l| {
            (
                l["url.path"].as_str().unwrap(),
                l["network.protocol.version"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(versions, HashSet::from([("/h1", "1.1"), ("/h2", "2")]));
}
