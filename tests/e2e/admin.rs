//! The admin listener end to end: `/top/blocked` after known mixes of HTTP requests and TLS
//! refusals, a flood of random subdomains that must not grow the gate's memory, the distinct
//! names estimate, the bearer token (refused, accepted, re-read on SIGHUP), the Host and Origin
//! checks, the Unix socket, and `-t` refusing a public admin address without a token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::tls_harness::{built_hello, exchange, Ending, ALERT};

const TOKEN: &str = "e2e-admin-token-0123456789abcdef";

fn top(gate: &Gate, query: &str) -> Vec<(String, u64, u64, String, String)> {
    let resp = get(gate.admin, &format!("/top/blocked{query}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&resp.body).unwrap();
    list.iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["count"].as_u64().unwrap(),
                e["error"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn row(name: &str, count: u64, reason: &str, decision: &str) -> (String, u64, u64, String, String) {
    (name.into(), count, 0, reason.into(), decision.into())
}

fn names_estimate(gate: &Gate, decision: &str) -> f64 {
    gate.metrics()
        .value("icp_gate_blocked_names_estimate", &[("decision", decision)])
}

#[test]
fn top_blocked_lists_a_known_mix_exactly_by_host_and_by_domain() {
    let origin = Origin::start();
    let gate = Gate::start(&origin, GateOptions::default());
    let mix: [(&str, usize, u16); 8] = [
        ("gone.com.cn", 6, 403),       // revoked
        ("a.unfiled-mix.cn", 5, 403),  // unfiled
        ("cdn-only.cn", 4, 403),       // unconnected
        ("B.Unfiled-Mix.CN.", 3, 403), // unfiled, listed in canonical form
        ("x.bad.example.com", 2, 403), // denied under a connected example.com
        ("198.51.100.9", 1, 403),      // ip_unfiled
        ("www.example.com", 3, 200),   // allowed: not listed
        ("bad..host", 1, 400),         // no usable host: not listed
    ];
    for (host, times, status) in mix {
        for _ in 0..times {
            assert_eq!(get_host(gate.addr, host).status, status, "{host}");
        }
    }
    assert_eq!(
        top(&gate, ""),
        [
            row("gone.com.cn", 6, "revoked", "blocked"),
            row("a.unfiled-mix.cn", 5, "unfiled", "blocked"),
            row("cdn-only.cn", 4, "unconnected", "blocked"),
            row("b.unfiled-mix.cn", 3, "unfiled", "blocked"),
            row("x.bad.example.com", 2, "denied", "blocked"),
            row("198.51.100.9", 1, "ip_unfiled", "blocked"),
        ]
    );
    assert_eq!(
        top(&gate, "?by=domain"),
        [
            row("unfiled-mix.cn", 8, "unfiled", "blocked"),
            row("gone.com.cn", 6, "revoked", "blocked"),
            row("cdn-only.cn", 4, "unconnected", "blocked"),
            row("example.com", 2, "denied", "blocked"),
            row("198.51.100.9", 1, "ip_unfiled", "blocked"),
        ]
    );
    assert_eq!(top(&gate, "?n=2&by=host&decision=blocked").len(), 2);
    assert!(top(&gate, "?decision=monitored").is_empty());
    assert!((names_estimate(&gate, "blocked") - 6.0).abs() <= 1.0);
    assert_eq!(names_estimate(&gate, "monitored"), 0.0);

    // Bad parameters are answered with what is wrong.
    for (query, says) in [
        ("?n=0", "n: `0` is not a number from 1 to 1024"),
        ("?n=5000", "from 1 to 1024 (admin.top_blocked_capacity)"),
        ("?by=tld", "by: `tld` is neither host nor domain"),
        ("?limit=3", "unknown parameter `limit`"),
    ] {
        let resp = get(gate.admin, &format!("/top/blocked{query}"));
        assert_eq!(resp.status, 400, "{query}");
        assert!(resp.text().contains(says), "{query}: {}", resp.text());
    }
}

#[test]
fn tls_refusals_count_by_sni_and_monitored_requests_by_host() {
    // A tls listener: refused SNI names, and a hello without SNI decided on the address.
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: format!("protocol = \"tls\"\nupstream = [\"{}\"]", origin.addr),
            ..GateOptions::default()
        },
    );
    let refuse = |sni: Option<&[u8]>| {
        let hello = built_hello(sni, &[]);
        match exchange(gate.addr, &[&hello], Duration::ZERO, Duration::from_secs(5)) {
            Ending::Closed(bytes) => assert_eq!(bytes, ALERT),
            _ => panic!("not refused with the alert"),
        }
    };
    for _ in 0..3 {
        refuse(Some(b"a.refused-sni.cn"));
    }
    for _ in 0..2 {
        refuse(Some(b"B.refused-sni.cn"));
    }
    refuse(None);
    assert_eq!(
        top(&gate, ""),
        [
            row("a.refused-sni.cn", 3, "unfiled", "blocked"),
            row("b.refused-sni.cn", 2, "unfiled", "blocked"),
            row("127.0.0.1", 1, "ip_unfiled", "blocked"),
        ]
    );
    assert_eq!(
        top(&gate, "?by=domain"),
        [
            row("refused-sni.cn", 5, "unfiled", "blocked"),
            row("127.0.0.1", 1, "ip_unfiled", "blocked"),
        ]
    );

    // Monitor mode: forwarded, and listed as monitored.
    let gate = Gate::start(
        &origin,
        GateOptions {
            mode: "monitor",
            ..GateOptions::default()
        },
    );
    for _ in 0..2 {
        assert_eq!(get_host(gate.addr, "m.unfiled-mon.cn").status, 200);
    }
    assert_eq!(get_host(gate.addr, "cdn-only.cn").status, 200);
    assert_eq!(
        top(&gate, ""),
        [
            row("m.unfiled-mon.cn", 2, "unfiled", "monitored"),
            row("cdn-only.cn", 1, "unconnected", "monitored"),
        ]
    );
    assert!(top(&gate, "?decision=blocked").is_empty());
    assert_eq!(top(&gate, "?decision=monitored").len(), 2);
    assert_eq!(names_estimate(&gate, "monitored"), 2.0);
    assert_eq!(names_estimate(&gate, "blocked"), 0.0);
}

/// A bijection on u64 (SplitMix64's finalizer): distinct inputs give distinct random-looking
/// labels.
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// Sends a HEAD request for each host over `conns` kept-alive connections, pipelined, and
/// waits until every answer (a 403) has been read.
fn flood(gate: SocketAddr, hosts: &[String], conns: usize) {
    std::thread::scope(|s| {
        for chunk in hosts.chunks(hosts.len().div_ceil(conns)) {
            s.spawn(move || {
                let stream = TcpStream::connect(gate).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut reader = stream.try_clone().unwrap();
                let want = chunk.len();
                let read = std::thread::spawn(move || {
                    let needle = b"HTTP/1.1 403 ";
                    let (mut seen, mut carry) = (0usize, Vec::new());
                    let mut buf = vec![0u8; 64 * 1024];
                    while seen < want {
                        let n = reader.read(&mut buf).expect("reading the answers");
                        assert!(n > 0, "the gate closed after {seen} of {want} answers");
                        carry.extend_from_slice(&buf[..n]);
                        seen += carry.windows(needle.len()).filter(|w| w == needle).count();
                        let keep = carry.len().min(needle.len() - 1);
                        carry.drain(..carry.len() - keep);
                    }
                    seen
                });
                let mut writer = stream;
                for batch in chunk.chunks(256) {
                    let mut bytes = Vec::with_capacity(batch.len() * 64);
                    for host in batch {
                        bytes.extend_from_slice(
                            format!("HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
                        );
                    }
                    writer.write_all(&bytes).unwrap();
                }
                assert_eq!(read.join().unwrap(), want);
            });
        }
    });
}

#[test]
fn a_flood_of_random_subdomains_keeps_memory_bounded_and_the_heavy_hitters() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            listener_extra: "max_requests_per_connection = 1000000".into(),
            extra: "access_log = false".into(),
            ..GateOptions::default()
        },
    );
    // 200,000 distinct random names under one domain, and two heavy hitters among them: one
    // request in 50 and one in 100.
    let hosts: Vec<String> = (0..200_000u64)
        .flat_map(|i| {
            let mut batch = vec![format!("{:016x}.flood-test.cn", scramble(i))];
            if i % 50 == 0 {
                batch.push("heavy.flood-test.cn".into());
            }
            if i % 100 == 0 {
                batch.push("second.heavy-hitter.cn".into());
            }
            batch
        })
        .collect();
    // The first 20,000 names fill every summary; the 180,000 after must not add memory.
    let first = hosts
        .iter()
        .position(|h| h.starts_with(&format!("{:016x}.", scramble(20_000))))
        .unwrap();
    flood(gate.addr, &hosts[..first], 4);
    let after_20k = gate.rss_bytes();
    flood(gate.addr, &hosts[first..], 4);
    let after_200k = gate.rss_bytes();
    eprintln!("RSS after 20k names: {after_20k} bytes, after 200k: {after_200k} bytes");
    // An unbounded table would hold 180,000 more names (well over 10 MiB).
    assert!(
        after_200k < after_20k + 4 * 1024 * 1024,
        "RSS grew from {after_20k} to {after_200k} bytes"
    );

    let list = top(&gate, "?n=3");
    assert_eq!(list[0].0, "heavy.flood-test.cn");
    assert_eq!(list[1].0, "second.heavy-hitter.cn");
    // The true counts lie within what the list says.
    for (entry, truth) in list.iter().zip([4_000u64, 2_000]) {
        assert!(
            entry.1 >= truth && entry.1 - entry.2 <= truth,
            "{entry:?}, truly {truth}"
        );
    }
    let domains = top(&gate, "?by=domain&n=2");
    assert_eq!(
        (domains[0].0.as_str(), domains[0].1, domains[0].2),
        ("flood-test.cn", 204_000, 0)
    );
    assert_eq!(
        (domains[1].0.as_str(), domains[1].1, domains[1].2),
        ("heavy-hitter.cn", 2_000, 0)
    );
    let estimate = names_estimate(&gate, "blocked");
    let truth = 200_002.0;
    assert!(
        (estimate - truth).abs() / truth < 0.05,
        "estimate {estimate}, truly {truth}"
    );
}

fn token_dir(token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
    dir
}

fn admin_request(gate: &Gate, method: &str, path: &str, fields: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        raw.push_str(&format!("Host: {}\r\n", gate.admin));
    }
    for (name, value) in fields {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    request(gate.admin, &raw)
}

fn refused(gate: &Gate, reason: &str) -> f64 {
    gate.metrics()
        .value("icp_gate_admin_refused_total", &[("reason", reason)])
}

fn health(admin: &str, path: &str) -> bool {
    Command::new(BIN)
        .args(["health", admin, "--path", path])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn the_token_is_refused_accepted_and_read_again_on_sighup() {
    let dir = token_dir(TOKEN);
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            admin_extra: format!("token_file = \"{}\"", dir.path().join("token").display()),
            ..GateOptions::default()
        },
    );
    let bearer = format!("Bearer {TOKEN}");
    let sync = |auth: Option<&str>| {
        let fields: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        admin_request(&gate, "POST", "/sync", &fields)
    };
    let none = sync(None);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"icp-gate admin\"")
    );
    assert!(
        none.text().starts_with("token_missing: "),
        "{}",
        none.text()
    );
    let wrong = sync(Some("Bearer e2e-admin-token-0123456789abcdeX"));
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.text().starts_with("token_wrong: "),
        "{}",
        wrong.text()
    );
    assert_eq!(sync(Some(&format!("Basic {TOKEN}"))).status, 401);
    let ok = sync(Some(&bearer));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let v: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(v["result"], "unchanged", "{v}");
    // Reads need no token with require_token = "mutating"; nor do the probes.
    assert_eq!(get(gate.admin, "/metrics").status, 200);
    assert_eq!(get(gate.admin, "/top/blocked").status, 200);
    assert!(health(&gate.admin.to_string(), "/readyz"));
    assert_eq!(refused(&gate, "token_missing"), 1.0);
    assert_eq!(refused(&gate, "token_wrong"), 2.0);
    assert!(gate.log().contains("admin request refused"));

    // A new token, read on SIGHUP; a bad file then keeps it.
    let new_token = "rotated-token-fedcba9876543210";
    std::fs::write(dir.path().join("token"), new_token).unwrap();
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &gate.pid().to_string()])
            .status()
            .unwrap()
    };
    hup();
    let new_bearer = format!("Bearer {new_token}");
    wait_for("the new token in service", Duration::from_secs(10), || {
        (sync(Some(&new_bearer)).status == 200).then_some(())
    });
    assert_eq!(sync(Some(&bearer)).status, 401);
    std::fs::write(dir.path().join("token"), "short").unwrap();
    hup();
    wait_for("the failed reload counted", Duration::from_secs(10), || {
        (gate
            .metrics()
            .value("icp_gate_admin_token_reloads_total", &[("result", "error")])
            == 1.0)
            .then_some(())
    });
    assert_eq!(sync(Some(&new_bearer)).status, 200);
    assert!(gate.log().contains("the admin token file is not usable"));
}

#[test]
fn require_token_all_guards_every_endpoint_but_the_probes() {
    let dir = token_dir(TOKEN);
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            admin_extra: format!(
                "token_file = \"{}\"\nrequire_token = \"all\"",
                dir.path().join("token").display()
            ),
            ..GateOptions::default()
        },
    );
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/metrics", "/registry", "/top/blocked", "/nothing-here"] {
        assert_eq!(get(gate.admin, path).status, 401, "{path}");
        let with = admin_request(&gate, "GET", path, &[("Authorization", &bearer)]);
        let want = if path == "/nothing-here" { 404 } else { 200 };
        assert_eq!(with.status, want, "{path}");
    }
    assert_eq!(get(gate.admin, "/healthz").status, 200);
    assert_eq!(get(gate.admin, "/readyz").status, 200);
    // `icp-gate health` keeps working: the probes need no token.
    assert!(health(&gate.admin.to_string(), "/readyz"));
    assert!(health(&gate.admin.to_string(), "/healthz"));
    assert!(!health(&gate.admin.to_string(), "/metrics"));
}

#[test]
fn hosts_and_origins_that_are_not_allowed_are_refused() {
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            admin_extra: "allowed_hosts = [\"gate-admin.internal\"]".into(),
            ..GateOptions::default()
        },
    );
    let port = gate.admin.port();
    let with_host = |method: &str, path: &str, host: &str| {
        admin_request(&gate, method, path, &[("Host", host)])
    };
    // DNS rebinding: a page on evil.example whose name now points at the gate.
    let evil = with_host("GET", "/metrics", &format!("evil.example:{port}"));
    assert_eq!(evil.status, 403);
    assert!(
        evil.text()
            .starts_with("host_not_allowed: Host `evil.example:"),
        "{}",
        evil.text()
    );
    assert!(evil.text().contains("admin.allowed_hosts"));
    assert_eq!(with_host("GET", "/metrics", "evil.example").status, 403);
    for allowed in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("gate-admin.internal:{port}"),
        "[::1]".to_string(),
    ] {
        assert_eq!(
            with_host("GET", "/metrics", &allowed).status,
            200,
            "{allowed}"
        );
    }
    // The probes answer whatever the Host.
    assert_eq!(with_host("GET", "/readyz", "evil.example").status, 200);

    // A browser's cross-site POST carries its Origin.
    let post = |origin: &str| admin_request(&gate, "POST", "/sync", &[("Origin", origin)]);
    let cross = post("http://evil.example");
    assert_eq!(cross.status, 403);
    assert!(
        cross.text().starts_with("origin_not_allowed: "),
        "{}",
        cross.text()
    );
    assert_eq!(post("null").status, 403);
    assert_eq!(post(&format!("http://127.0.0.1:{port}")).status, 200);
    assert_eq!(post("https://gate-admin.internal").status, 200);
    // A client that is not a browser sends no Origin.
    assert_eq!(admin_request(&gate, "POST", "/sync", &[]).status, 200);

    assert_eq!(refused(&gate, "host_not_allowed"), 2.0);
    assert_eq!(refused(&gate, "origin_not_allowed"), 2.0);
}

fn curl_unix(socket: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-m", "5", "--unix-socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("curl (scripts/ensure-deps installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_admin_listener_on_a_unix_socket_answers_curl() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            admin_unix: Some(socket.clone()),
            admin_extra: "socket_mode = \"0600\"".into(),
            ..GateOptions::default()
        },
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (body, err) = curl_unix(&socket, &["http://localhost/readyz"]);
    assert_eq!(body, "ready\n", "{err}");
    assert_eq!(get_host(gate.addr, "uds.unfiled.cn").status, 403);
    let (body, err) = curl_unix(&socket, &["http://localhost/top/blocked"]);
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}{err}"));
    assert_eq!(list[0]["name"], "uds.unfiled.cn");
    // No browser reaches a Unix socket: the Host check does not apply there.
    let (body, _) = curl_unix(
        &socket,
        &["-H", "Host: evil.example", "http://localhost/metrics"],
    );
    assert!(body.contains("icp_gate_requests_total"));
    let (body, _) = curl_unix(&socket, &["-X", "POST", "http://localhost/sync"]);
    assert!(body.contains("\"result\""), "{body}");
    assert!(health(&format!("unix:{}", socket.display()), "/readyz"));
}

#[test]
fn dash_t_refuses_a_public_admin_address_without_a_token() {
    let dir = token_dir(TOKEN);
    let config = |admin: &str| {
        let path = dir.path().join("gate.toml");
        std::fs::write(
            &path,
            format!(
                "[[listener]]\naddress = \"127.0.0.1:{}\"\n\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\n\
                 [registry]\nsource = \"file:///nonexistent/registry.tsv\"\n\n[admin]\n{admin}\n",
                free_port()
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .output()
            .unwrap();
        let text = output_text(&out);
        (out.status.success(), text)
    };
    let (ok, out) = config("address = \"0.0.0.0:9090\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "admin.token_file: required: admin.address `0.0.0.0:9090` is not a loopback address"
        ),
        "{out}"
    );
    assert!(config("address = \"127.0.0.1:9090\"").0);
    let (ok, out) = config("address = \"0.0.0.0:9090\"\ntoken_file = \"token\"");
    assert!(ok, "{out}");
    let (ok, out) = config("address = \"0.0.0.0:9090\"\ntoken_file = \"missing-token\"");
    assert!(!ok);
    assert!(out.contains("admin.token_file: cannot read"), "{out}");
}
