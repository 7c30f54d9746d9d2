//! The decision table of the design brief, against the real gate and a real origin.

use std::io::Write;

use crate::harness::*;

/// Asserts a block answer per the contract and returns its body.
fn assert_blocked(resp: &Response, status: u16, reason: &str) -> String {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.block_reason(), Some(reason), "{resp:?}");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        resp.header("content-length").and_then(|v| v.parse().ok()),
        Some(resp.body.len())
    );
    let body = resp.text();
    let request_id = resp.header("x-request-id").expect("request id header");
    assert!(body.contains(request_id), "page lacks the request id");
    assert!(body.contains("https://beian.miit.gov.cn"));
    body
}

#[test]
fn decision_table_on_a_connected_listener() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());

    // Filed and connected: forwarded, Host unchanged.
    let resp = get_host(gate.addr, "www.example.com");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "origin saw www.example.com");
    assert_eq!(resp.block_reason(), None);

    let cases = [
        ("cdn-only.cn", 403, "unconnected"),
        ("moved.cn", 403, "unconnected"),
        ("gone.com.cn", 403, "revoked"),
        ("bad.example.com", 403, "denied"),
        ("unfiled.cn", 403, "unfiled"),
        ("lapsed.com.cn", 403, "unconnected"),
        ("198.51.100.1", 403, "ip_unfiled"),
        ("[2001:db8::8]", 403, "ip_unfiled"),
    ];
    for (host, status, reason) in cases {
        let body = assert_blocked(&get_host(gate.addr, host), status, reason);
        assert!(body.contains(host), "{host}: page does not name the host");
    }
    let page = assert_blocked(&get_host(gate.addr, "cdn-only.cn"), 403, "unconnected");
    assert!(page.contains("未接入本服务商") && page.contains("connect the existing filing"));
    assert!(page.find("本服务商").unwrap() < page.find("this provider").unwrap());

    // IP filings and the provisional allowance before its expiry.
    assert_eq!(get_host(gate.addr, "203.0.113.7").status, 200);
    assert_eq!(get_host(gate.addr, "[2001:db8::7]:80").status, 200);
    assert_eq!(get_host(gate.addr, "trial.com.cn").status, 200);

    // No usable host: 400.
    for raw in [
        "GET / HTTP/1.1\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: \r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: a..example.com\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: www.example.com:http\r\n\r\n".to_string(),
        format!(
            "GET / HTTP/1.1\r\nHost: {}.example.com\r\n\r\n",
            "a.".repeat(122)
        ),
        "GET / HTTP/1.1\r\nHost: www.example.com:http\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: 127.1\r\n\r\n".to_string(),
        "GET / HTTP/1.0\r\n\r\n".to_string(),
    ] {
        let resp = request(gate.addr, &raw);
        assert_blocked(&resp, 400, "invalid_host");
    }
    // Ambiguous authorities (RFC 9112 §3.2): refused as invalid_host by the gate's front end,
    // whatever else the request carries, counted, and nothing forwarded.
    let before = gate.metrics().requests("blocked", "invalid_host");
    for raw in [
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: unfiled.cn\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: unfiled.cn@www.example.com\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: www.example.com\r\nHost: www.example.com\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let resp = request(gate.addr, raw);
        assert_blocked(&resp, 400, "invalid_host");
        assert_eq!(resp.header("connection"), Some("close"), "{raw:?}");
    }
    assert_eq!(
        gate.metrics().requests("blocked", "invalid_host") - before,
        3.0
    );

    // Only the allowed hosts ever reached the origin.
    assert_eq!(
        origin.hosts(),
        [
            "www.example.com",
            "203.0.113.7",
            "[2001:db8::7]:80",
            "trial.com.cn"
        ]
    );
}

#[test]
fn filed_listener_forwards_unconnected_filings_only() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            require: "filed",
            ..Default::default()
        },
    );
    assert_eq!(get_host(gate.addr, "img.cdn-only.cn").status, 200);
    assert_eq!(get_host(gate.addr, "moved.cn").status, 200);
    assert_eq!(get_host(gate.addr, "lapsed.com.cn").status, 200);
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    assert_blocked(&get_host(gate.addr, "gone.com.cn"), 403, "revoked");
    assert_blocked(&get_host(gate.addr, "bad.example.com"), 403, "denied");
    assert_blocked(&get_host(gate.addr, "unfiled.cn"), 403, "unfiled");
    assert_eq!(
        origin.hosts(),
        [
            "img.cdn-only.cn",
            "moved.cn",
            "lapsed.com.cn",
            "www.example.com"
        ]
    );
}

#[test]
fn inheritance_look_alikes_case_dot_and_port() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let allowed = [
        "example.com",
        "a.b.c.d.e.example.com",
        "WWW.EXAMPLE.COM",
        "www.example.com.",
        "www.example.com:8080",
        "Www.Example.Com.:443",
        "例子.中国",
        "www.例子.中国",
        "xn--fsqu00a.xn--fiqs8s",
        "a.b.deep.cn",
        "y.a.b.deep.cn",
    ];
    for host in allowed {
        assert_eq!(get_host(gate.addr, host).status, 200, "{host} must pass");
    }
    let blocked = [
        ("evilexample.com", "unfiled"),
        ("example.com.evil.net", "unfiled"),
        ("example.co", "unfiled"),
        ("xexample.com", "unfiled"),
        ("deep.cn", "unfiled"),
        ("b.deep.cn", "unfiled"),
        ("x.a.b.deep.cn", "denied"),
        ("1.2.x.a.b.deep.cn", "denied"),
        ("BAD.Example.com.", "denied"),
        ("q.bad.example.com", "denied"),
        ("com.cn", "unfiled"),
        ("com", "unfiled"),
    ];
    for (host, reason) in blocked {
        assert_blocked(&get_host(gate.addr, host), 403, reason);
    }
    // The origin saw each allowed request with the Host it was decided on, in canonical form
    // (lower-case A-labels, no trailing dot), the port as sent; a canonical Host as it was.
    let canonical = [
        "example.com",
        "a.b.c.d.e.example.com",
        "www.example.com",
        "www.example.com",
        "www.example.com:8080",
        "www.example.com:443",
        "xn--fsqu00a.xn--fiqs8s",
        "www.xn--fsqu00a.xn--fiqs8s",
        "xn--fsqu00a.xn--fiqs8s",
        "a.b.deep.cn",
        "y.a.b.deep.cn",
    ];
    assert_eq!(origin.hosts(), canonical);
}

#[test]
fn one_keep_alive_connection_is_decided_per_request() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let mut conn = Conn::open(gate.addr);
    let get = |host: &str| format!("GET /{host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    assert_eq!(conn.send(get("www.example.com").as_bytes()).status, 200);
    assert_eq!(
        conn.send(get("unfiled.cn").as_bytes()).block_reason(),
        Some("unfiled")
    );
    assert_eq!(conn.send(get("img.example.com").as_bytes()).status, 200);
    // A blocked HEAD has no body but the same headers, and the connection goes on.
    let head = conn.send(b"HEAD / HTTP/1.1\r\nHost: bad.example.com\r\n\r\n");
    assert_eq!(head.status, 403);
    assert_eq!(head.block_reason(), Some("denied"));
    assert_eq!(conn.send(get("example.com").as_bytes()).status, 200);
    // An allowed request's body reaches the origin intact, chunked or not.
    let post =
        "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 11\r\n\r\nhello world";
    assert_eq!(conn.send(post.as_bytes()).status, 200);
    let chunked = "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    assert_eq!(conn.send(chunked.as_bytes()).status, 200);
    let bodies: Vec<Vec<u8>> = origin
        .received()
        .iter()
        .skip(3)
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(bodies, [b"hello world".to_vec(), b"hello world".to_vec()]);
    // A blocked request whose body was not read: answered, then the connection is closed
    // (Pingora does not reuse a connection with an unread request body).
    let post = "POST /upload HTTP/1.1\r\nHost: unfiled.cn\r\nContent-Length: 11\r\n\r\nhello world";
    let resp = conn.send(post.as_bytes());
    assert_eq!(resp.block_reason(), Some("unfiled"));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(conn.is_closed());
    assert_eq!(
        origin.hosts(),
        [
            "www.example.com",
            "img.example.com",
            "example.com",
            "www.example.com",
            "www.example.com"
        ]
    );
}

#[test]
fn repeated_blocks_on_one_connection_each_name_their_own_host_and_request_id() {
    // The front end keeps a connection's last block answer and patches the next one for the
    // same host in place: every answer must still be its own.
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let mut conn = Conn::open(gate.addr);
    let get = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut ids = std::collections::HashSet::new();
    // (host, page with its id taken out, page length)
    let mut pages: Vec<(String, String, usize)> = Vec::new();
    let mut check = |resp: &Response, host: &str, reason: &str| {
        assert_blocked(resp, 403, reason);
        let id = resp
            .header("x-request-id")
            .expect("a request id")
            .to_owned();
        assert_eq!(id.len(), 24, "{id}");
        assert!(ids.insert(id.clone()), "request id {id} given twice");
        let page = resp.text();
        assert!(page.contains(&format!("request id: {id}")), "{page}");
        assert!(page.contains(host), "{host} not named in {page}");
        // Apart from the id, the page for the same host and reason is the same every time.
        pages.push((host.to_owned(), page.replace(&id, "<id>"), page.len()));
        pages.clone()
    };
    for _ in 0..3 {
        check(
            &conn.send(get("unfiled.cn").as_bytes()),
            "unfiled.cn",
            "unfiled",
        );
    }
    // A HEAD for the same host: the same head (length included), no body.
    let head = conn.send(b"HEAD / HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n");
    assert_eq!(head.block_reason(), Some("unfiled"));
    assert!(head.body.is_empty());
    let first_len = check(
        &conn.send(get("unfiled.cn").as_bytes()),
        "unfiled.cn",
        "unfiled",
    )[0]
    .2;
    assert_eq!(
        head.header("content-length"),
        Some(first_len.to_string().as_str())
    );
    check(
        &conn.send(get("other-unfiled.cn").as_bytes()),
        "other-unfiled.cn",
        "unfiled",
    );
    check(
        &conn.send(get("bad.example.com").as_bytes()),
        "bad.example.com",
        "denied",
    );
    check(
        &conn.send(get("UNFILED.cn").as_bytes()),
        "unfiled.cn",
        "unfiled",
    );
    // JSON in between, then HTML again.
    let json = conn.send(b"GET / HTTP/1.1\r\nHost: unfiled.cn\r\nAccept: application/json\r\n\r\n");
    assert!(json.text().starts_with('{'), "{}", json.text());
    let pages = check(
        &conn.send(get("unfiled.cn").as_bytes()),
        "unfiled.cn",
        "unfiled",
    );
    let same: Vec<_> = pages.iter().filter(|p| p.0 == "unfiled.cn").collect();
    assert_eq!(same.len(), 6);
    assert!(same.iter().all(|p| p.1 == same[0].1));
    let other = &pages[4];
    assert_eq!(other.0, "other-unfiled.cn");
    assert!(!other
        .1
        .replace("other-unfiled.cn", "")
        .contains("unfiled.cn"));
    assert_ne!(pages[5].1, same[0].1, "denied and unfiled pages differ");
    // The last answer of a connection says so, though the one before it was kept alive.
    let last = conn.send(b"GET / HTTP/1.1\r\nHost: unfiled.cn\r\nConnection: close\r\n\r\n");
    assert_eq!(last.block_reason(), Some("unfiled"));
    assert_eq!(last.header("connection"), Some("close"));
    assert!(conn.is_closed());
    assert!(origin.received().is_empty());
}

#[test]
fn absolute_form_targets_are_decided_on_their_authority() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let resp = request(
        gate.addr,
        "GET http://www.example.com/path?q=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    // Disagreeing target and Host: refused, whichever of the two is filed.
    for raw in [
        "GET http://unfiled.cn/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
        "GET http://www.example.com/ HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
    ] {
        let resp = request(gate.addr, raw);
        assert_blocked(&resp, 400, "invalid_host");
        assert!(
            resp.text().contains("name different hosts"),
            "{}",
            resp.text()
        );
    }
    // Absolute form without Host (HTTP/1.0 style): decided on the target, Host added upstream.
    let resp = request(gate.addr, "GET http://img.example.com/a HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    // Absolute form for an unfiled host.
    let resp = request(
        gate.addr,
        "GET http://unfiled.cn/ HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n",
    );
    assert_blocked(&resp, 403, "unfiled");

    let received = origin.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].target, "/a");
    assert_eq!(received[1].header("host"), Some("img.example.com"));
    assert_eq!(received[0].method, "GET");
    assert_eq!(received[0].target, "/path?q=1", "origin gets origin-form");
    assert_eq!(received[0].header("host"), Some("www.example.com"));
}

#[test]
fn forwarded_requests_carry_the_gates_forwarding_headers_only() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let resp = request(
        gate.addr,
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Forwarded-Host: unfiled.cn\r\n\
         X-Forwarded-For: 10.9.9.9\r\nForwarded: host=unfiled.cn\r\nX-Real-IP: 10.9.9.9\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let r = &origin.received()[0];
    assert_eq!(r.header("x-forwarded-host"), None);
    assert_eq!(r.header("forwarded"), None);
    assert_eq!(r.header("x-real-ip"), None);
    assert_eq!(r.headers_named("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert!(r.header("x-request-id").is_some_and(|id| id.len() == 24));
    // The client-sent forwarding headers never decide anything.
    let resp = request(
        gate.addr,
        "GET / HTTP/1.1\r\nHost: unfiled.cn\r\nX-Forwarded-Host: www.example.com\r\n\r\n",
    );
    assert_eq!(resp.block_reason(), Some("unfiled"));
}

#[test]
fn monitor_mode_forwards_and_counts_what_it_would_block() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            mode: "monitor",
            ..Default::default()
        },
    );
    for host in [
        "unfiled.cn",
        "bad.example.com",
        "cdn-only.cn",
        "www.example.com",
    ] {
        let resp = get_host(gate.addr, host);
        assert_eq!(resp.status, 200, "{host}");
        assert_eq!(resp.block_reason(), None);
    }
    // An unusable host is a protocol error, not a filing decision: still refused.
    assert_eq!(request(gate.addr, "GET / HTTP/1.1\r\n\r\n").status, 400);
    let m = gate.metrics();
    assert_eq!(m.requests("monitored", "unfiled"), 1.0);
    assert_eq!(m.requests("monitored", "denied"), 1.0);
    assert_eq!(m.requests("monitored", "unconnected"), 1.0);
    assert_eq!(m.requests("allowed", ""), 1.0);
    assert_eq!(m.requests("blocked", "invalid_host"), 1.0);
    assert_eq!(m.requests("blocked", "unfiled"), 0.0);
    assert_eq!(origin.received().len(), 4);
}

#[test]
fn metrics_move_with_every_decision() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let before = gate.metrics();
    assert_eq!(before.requests("allowed", ""), 0.0);
    assert_eq!(before.value("icp_gate_registry_entries", &[]), 12.0);
    assert_eq!(before.value("icp_gate_registry_serial", &[]), 1.0);
    assert!(before.value("icp_gate_registry_last_success_timestamp_seconds", &[]) > 1.7e9);
    // The test snapshots say generated_at=2026-11-22T03:00:00Z.
    let age = before.value("icp_gate_registry_snapshot_age_seconds", &[]);
    let expected = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        - 1_795_316_400.0;
    assert!(
        (age - expected).abs() < 120.0,
        "age {age}, expected about {expected}"
    );
    assert_eq!(
        before.value("icp_gate_registry_sync_total", &[("result", "success")]),
        1.0
    );
    for _ in 0..3 {
        get_host(gate.addr, "www.example.com");
    }
    get_host(gate.addr, "unfiled.cn");
    get_host(gate.addr, "cdn-only.cn");
    get_host(gate.addr, "198.51.100.1");
    request(gate.addr, "GET / HTTP/1.1\r\n\r\n");
    let m = gate.metrics();
    assert_eq!(m.requests("allowed", ""), 3.0);
    assert_eq!(m.requests("blocked", "unfiled"), 1.0);
    assert_eq!(m.requests("blocked", "unconnected"), 1.0);
    assert_eq!(m.requests("blocked", "ip_unfiled"), 1.0);
    assert_eq!(m.requests("blocked", "invalid_host"), 1.0);
    assert_eq!(
        m.value(
            "icp_gate_requests_total",
            &[
                ("listener", "test"),
                ("decision", "allowed"),
                ("reason", "")
            ]
        ),
        3.0
    );
    assert!(!m.0.contains("example.com"), "a host leaked into a label");
    // The access log has a line per request with its decision (written just after the answer:
    // waited for, on a busy machine the client can read its answer first).
    wait_for(
        "the access line of unfiled.cn",
        std::time::Duration::from_secs(10),
        || {
            gate.log()
                .contains(r#"host="unfiled.cn" decision="blocked" reason="unfiled""#)
                .then_some(())
        },
    );
}

#[test]
fn json_block_answers_and_escaping() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let resp = request(
        gate.addr,
        "GET / HTTP/1.1\r\nHost: gone.com.cn\r\nAccept: application/json\r\n\r\n",
    );
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["reason"], "revoked");
    assert_eq!(v["host"], "gone.com.cn");
    assert_eq!(v["request_id"], resp.header("x-request-id").unwrap());

    // A hostile Host comes back escaped, never as markup.
    let resp = request(
        gate.addr,
        "GET / HTTP/1.1\r\nHost: <script>alert(1)</script>\r\n\r\n",
    );
    let body = assert_blocked(&resp, 400, "invalid_host");
    assert!(!body.contains("<script>alert"));
    assert!(body.contains("&lt;script&gt;"));
    assert!(resp
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
}

#[test]
fn operator_templates_replace_the_page() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("unfiled.html");
    std::fs::write(
        &template,
        "<h1>请备案 {{host}}</h1><p>{{reason}} {{request_id}}</p>",
    )
    .unwrap();
    let gate = Gate::start(
        &origin,
        GateOptions {
            extra: format!(
                "[block_page.templates]\nunfiled = \"{}\"\n",
                template.display()
            ),
            ..Default::default()
        },
    );
    let resp = get_host(gate.addr, "unfiled.cn");
    let id = resp.header("x-request-id").unwrap().to_owned();
    assert_eq!(
        resp.text(),
        format!("<h1>请备案 unfiled.cn</h1><p>unfiled {id}</p>")
    );
    // Other reasons keep the built-in page.
    assert!(get_host(gate.addr, "bad.example.com")
        .text()
        .contains("已被禁止访问"));
}

#[test]
fn upstream_connections_are_kept_alive() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    // Separate client connections, one after the other: the gate reuses its origin connection.
    for _ in 0..5 {
        assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    }
    let conns: std::collections::BTreeSet<usize> =
        origin.received().iter().map(|r| r.conn).collect();
    assert!(
        conns.len() < 5,
        "every request opened a new origin connection: {conns:?}"
    );
}

#[test]
fn upstream_down_is_a_502_not_a_hang() {
    let origin = Origin::start();
    let dead = addr(free_port());
    let gate = Gate::start(
        &origin,
        GateOptions {
            upstream: Some(dead),
            ..Default::default()
        },
    );
    assert_eq!(get_host(gate.addr, "www.example.com").status, 502);
    assert_eq!(get_host(gate.addr, "unfiled.cn").status, 403);
}

#[test]
fn a_client_that_hangs_up_mid_request_is_not_an_error_of_the_gate() {
    use std::io::Write;
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    {
        let mut s = std::net::TcpStream::connect(gate.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Test-Delay-Ms: 300\r\n\r\n")
            .unwrap();
        // Dropped here, before the origin answers.
    }
    wait_for(
        "the access line of the abandoned request",
        std::time::Duration::from_secs(10),
        || {
            gate.log()
                .contains(r#"host="www.example.com" decision="allowed""#)
                .then_some(())
        },
    );
    let log = gate.log();
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "a client hang-up was logged as an error:\n{log}"
    );
}

#[test]
fn blocks_answered_up_front_then_a_forward_on_the_same_connection() {
    // The front end answers blocks itself and hands the connection to the proxy at the first
    // request it lets through; every request is still decided on its own, pipelined or not.
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let mut conn = Conn::open(gate.addr);
    let get = |host: &str| format!("GET /{host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let first = conn.send(get("unfiled.cn").as_bytes());
    assert_eq!(first.status, 403);
    assert_eq!(first.block_reason(), Some("unfiled"));
    assert_eq!(first.header("connection"), Some("keep-alive"));
    assert_eq!(
        first.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    let head = conn.send(b"HEAD / HTTP/1.1\r\nHost: bad.example.com\r\n\r\n");
    assert_eq!(head.block_reason(), Some("denied"));
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );
    let json =
        conn.send(b"GET / HTTP/1.1\r\nHost: gone.com.cn\r\nAccept: application/json\r\n\r\n");
    assert_eq!(
        json.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(
        json.text().contains("\"reason\":\"revoked\""),
        "{}",
        json.text()
    );
    // Pipelined in one write: blocked, allowed, blocked, allowed.
    let burst = [
        get("a.unfiled.cn"),
        get("www.example.com"),
        get("b.unfiled.cn"),
        get("img.example.com"),
    ]
    .concat();
    conn.writer.write_all(burst.as_bytes()).unwrap();
    let statuses: Vec<u16> = (0..4)
        .map(|_| conn.read_response(false).expect("an answer").status)
        .collect();
    assert_eq!(statuses, [403, 200, 403, 200]);
    assert_eq!(
        origin.hosts(),
        ["www.example.com", "img.example.com"],
        "{:#?}",
        origin.received()
    );
    let m = gate.metrics();
    assert_eq!(m.requests("blocked", "unfiled"), 3.0);
    assert_eq!(m.requests("blocked", "denied"), 1.0);
    assert_eq!(m.requests("blocked", "revoked"), 1.0);
    assert_eq!(m.requests("allowed", ""), 2.0);
}

#[test]
fn forwarded_answers_keep_their_framing_and_the_origin_connection() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let mut conn = Conn::open(gate.addr);
    let get = |shape: &str| {
        format!(
            "GET /{shape} HTTP/1.1\r\nHost: www.example.com\r\nX-Test-Response: {shape}\r\n\r\n"
        )
    };
    let plain = conn.send(get("plain").as_bytes());
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (200, "origin saw www.example.com")
    );
    let chunked = conn.send(get("chunked").as_bytes());
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(chunked.text(), "origin saw www.example.com, done");
    let hints = conn.send(get("early-hints").as_bytes());
    assert_eq!(
        hints.status, 200,
        "an interim 103 must not be taken for the answer"
    );
    // ... and is passed on before it (RFC 9110 §15.2).
    assert_eq!(hints.interim, [103]);
    assert_eq!(hints.text(), "origin saw www.example.com");
    let empty = conn.send(get("no-content").as_bytes());
    assert_eq!(empty.status, 204);
    let big = conn.send(get("big").as_bytes());
    assert_eq!(big.body.len(), BIG_BODY);
    assert!(big
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
    let head = conn.send(b"HEAD / HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // All of that on one origin connection: every answer's end was found exactly.
    let conns: std::collections::BTreeSet<usize> =
        origin.received().iter().map(|r| r.conn).collect();
    assert_eq!(conns.len(), 1, "{:#?}", origin.received());
    // An origin that drops a kept-alive connection: the next request still gets through, on
    // a new origin connection.
    assert_eq!(conn.send(get("then-close").as_bytes()).status, 200);
    assert_eq!(conn.send(get("plain").as_bytes()).status, 200);
    let received = origin.received();
    let last_two: Vec<usize> = received.iter().rev().take(2).map(|r| r.conn).collect();
    assert_ne!(last_two[0], last_two[1], "{received:#?}");
    // A body that ends when the origin closes reaches the client re-framed as chunked, and
    // the client's connection stays open (as on Pingora's path).
    let until_close = conn.send(get("until-close").as_bytes());
    assert_eq!(until_close.text(), "origin saw www.example.com");
    assert_eq!(until_close.header("transfer-encoding"), Some("chunked"));
    assert_eq!(until_close.header("connection"), Some("keep-alive"));
    assert_eq!(conn.send(get("plain").as_bytes()).status, 200);
    // The next client gets a fresh origin connection, not the closed one.
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    assert_eq!(gate.metrics().requests("allowed", ""), 11.0);
}
