//! `icp-gate explain` (offline, on a configuration's registry) and the admin endpoint's
//! `GET /explain?host=`: what they say about each case of the decision table, per listener, and
//! that it is what the running gate actually does with a request for the host.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::*;

/// A configuration with three listeners on one registry file: hosting (`require = "connected"`,
/// enforce), cdn (`require = "filed"`, enforce) and watch (connected, monitor).
fn three_listener_config(dir: &Path, registry: &[u8]) -> std::path::PathBuf {
    let source = dir.join("registry.tsv");
    std::fs::write(&source, registry).unwrap();
    config_with_source(dir, &format!("file://{}", source.display()), "")
}

fn config_with_source(dir: &Path, source: &str, extra_registry: &str) -> std::path::PathBuf {
    let config = dir.join("icp-gate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listener]]
name = "hosting"
address = "127.0.0.1:{a}"

[[listener]]
name = "cdn"
address = "127.0.0.1:{b}"
require = "filed"

[[listener]]
name = "watch"
address = "127.0.0.1:{c}"
mode = "monitor"

[upstream]
servers = ["127.0.0.1:9"]

[registry]
source = "{source}"
{extra_registry}
"#,
            a = free_port(),
            b = free_port(),
            c = free_port(),
        ),
    )
    .unwrap();
    config
}

struct Explain {
    code: i32,
    lines: Vec<Value>,
    stderr: String,
}

fn explain(config: &Path, args: &[&str], stdin: Option<&str>) -> Explain {
    let mut child = Command::new(BIN)
        .arg("explain")
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Explain {
        code: out.status.code().unwrap_or(-1),
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// (decision, reason) on each listener, in order.
fn decisions(v: &Value) -> Vec<(String, Option<String>)> {
    v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap().to_owned(),
                l["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn d(decision: &str, reason: Option<&str>) -> (String, Option<String>) {
    (decision.to_owned(), reason.map(str::to_owned))
}

#[test]
fn explain_tells_every_case_on_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = three_listener_config(dir.path(), &snapshot_bytes(7, &standard_records()));
    let hosts = [
        "WWW.Example.COM.:8080",
        "unfiled.cn",
        "gone.com.cn",
        "cdn-only.cn",
        "moved.cn",
        "lapsed.com.cn",
        "img.bad.example.com",
        "203.0.113.7",
        "203.0.113.8",
        "例子.中国",
        "bad host",
    ];
    let out = explain(&config, &hosts, None);
    assert_eq!(out.code, 1, "an invalid host exits 1: {}", out.stderr);
    assert!(out.stderr.contains("loaded serial 7"), "{}", out.stderr);
    assert!(out.stderr.contains("registry.tsv"), "{}", out.stderr);
    assert_eq!(
        out.lines.len(),
        hosts.len(),
        "one line per host, no summary"
    );
    for line in &out.lines {
        assert_eq!(line["serial"], 7);
        let names: Vec<&str> = line["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["hosting", "cdn", "watch"]);
    }
    let [www, unfiled, revoked, unconnected, cancelled, expired, denied, ip, ip_unfiled, unicode, invalid] =
        &out.lines[..]
    else {
        unreachable!()
    };

    // A subdomain inherits its registered domain's filing.
    assert_eq!(www["host"], "www.example.com");
    assert_eq!(www["input"], "WWW.Example.COM.:8080");
    assert_eq!(www["matched"], "example.com");
    assert_eq!(www["status"], "connected");
    assert_eq!(www["registrable_domain"], "example.com");
    assert_eq!(
        www["candidates"],
        serde_json::json!([
            {"name": "www.example.com", "found": false},
            {"name": "example.com", "found": true, "status": "connected"},
        ])
    );
    let allowed = d("allowed", None);
    assert_eq!(
        decisions(www),
        [allowed.clone(), allowed.clone(), allowed.clone()]
    );
    assert!(www["why"].as_str().unwrap().contains("inherits"), "{www}");

    assert_eq!(unfiled["matched"], Value::Null);
    assert_eq!(unfiled["status"], Value::Null);
    assert_eq!(
        decisions(unfiled),
        [
            d("blocked", Some("unfiled")),
            d("blocked", Some("unfiled")),
            d("monitored", Some("unfiled"))
        ]
    );
    assert_eq!(
        decisions(revoked),
        [
            d("blocked", Some("revoked")),
            d("blocked", Some("revoked")),
            d("monitored", Some("revoked"))
        ]
    );
    // Not connected here: blocked where a connection is required, allowed where a filing is.
    for not_connected in [unconnected, cancelled] {
        assert_eq!(
            decisions(not_connected),
            [
                d("blocked", Some("unconnected")),
                allowed.clone(),
                d("monitored", Some("unconnected"))
            ],
            "{not_connected}"
        );
    }
    assert_eq!(cancelled["status"], "access_cancelled");
    // An expired provisional allowance counts as unconnected.
    assert_eq!(expired["status"], "connected");
    assert_eq!(expired["expired"], true);
    assert_eq!(expired["expires_at"], "2020-01-01T00:00:00Z");
    assert_eq!(expired["status_in_force"], "unconnected");
    assert_eq!(decisions(expired)[0], d("blocked", Some("unconnected")));
    assert_eq!(decisions(expired)[1], allowed);
    // The more specific record overrides the inherited one, and the walk shows both.
    assert_eq!(denied["matched"], "bad.example.com");
    assert_eq!(denied["candidates"][2]["status"], "connected");
    assert_eq!(decisions(denied)[1], d("blocked", Some("denied")));
    assert!(denied["why"]
        .as_str()
        .unwrap()
        .contains("overrides example.com"));

    assert_eq!(ip["kind"], "ip");
    assert_eq!(decisions(ip), [allowed.clone(), allowed.clone(), allowed]);
    assert_eq!(decisions(ip_unfiled)[0], d("blocked", Some("ip_unfiled")));
    assert_eq!(unicode["host"], "xn--fsqu00a.xn--fiqs8s");
    assert_eq!(unicode["status"], "connected");

    // Not a host: invalid on every listener, monitor mode included, with its reason code.
    assert_eq!(invalid["valid"], false);
    assert_eq!(invalid["invalid"]["code"], "bad_character");
    assert_eq!(
        decisions(invalid),
        [
            d("blocked", Some("invalid_host")),
            d("blocked", Some("invalid_host")),
            d("blocked", Some("invalid_host"))
        ]
    );

    // Every host valid: exit 0.
    let out = explain(&config, &["example.com"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn explain_batch_streams_hosts_and_sums_up_what_enforce_would_block() {
    let dir = tempfile::tempdir().unwrap();
    let config = three_listener_config(dir.path(), &snapshot_bytes(3, &standard_records()));
    let list = "# customers\nwww.example.com\r\n\nunfiled-a.cn\nunfiled-b.cn\ncdn-only.cn\ngone.com.cn\n  shop.example.com  \nlast.example.com";
    let batch = dir.path().join("customers.txt");
    std::fs::write(&batch, list).unwrap();
    for args in [
        vec!["--batch", batch.to_str().unwrap()],
        vec!["--batch", "-"],
    ] {
        let out = explain(&config, &args, Some(list));
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.lines.len(), 8, "7 hosts and the summary");
        assert_eq!(out.lines[6]["host"], "last.example.com");
        let summary = &out.lines[7]["summary"];
        assert_eq!(summary["hosts"], 7);
        assert_eq!(summary["invalid"], 0);
        assert_eq!(summary["serial"], 3);
        let hosting = &summary["listeners"][0];
        assert_eq!(hosting["name"], "hosting");
        assert_eq!(hosting["allowed"], 3);
        assert_eq!(
            hosting["blocked"],
            serde_json::json!({"unfiled": 2, "unconnected": 1, "revoked": 1})
        );
        assert_eq!(hosting["blocked_if_enforced"], 4);
        let cdn = &summary["listeners"][1];
        assert_eq!(cdn["allowed"], 4);
        assert_eq!(cdn["blocked_if_enforced"], 3);
        // The monitor listener blocks nothing, and says what enforce would.
        let watch = &summary["listeners"][2];
        assert_eq!(watch["mode"], "monitor");
        assert_eq!(watch["blocked"], serde_json::json!({}));
        assert_eq!(
            watch["monitored"],
            serde_json::json!({"unfiled": 2, "unconnected": 1, "revoked": 1})
        );
        assert_eq!(watch["blocked_if_enforced"], 4);
    }
    // A bad line is explained, counted, and makes the exit status 1.
    let out = explain(
        &config,
        &["--batch", "-"],
        Some("example.com\nnot a host\n"),
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.lines[2]["summary"]["invalid"], 1);
}

#[test]
fn explain_reads_state_dir_when_the_source_is_remote_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let mut records = standard_records();
    records.push(("kept.cn", icp_gate_registry::Status::Connected, None, None));
    std::fs::write(state.join("registry.snapshot"), snapshot_bytes(9, &records)).unwrap();
    // An http source (nothing serves it): explain must not try it.
    let config = config_with_source(
        dir.path(),
        "http://127.0.0.1:9/registry.snapshot",
        &format!("state_dir = \"{}\"", state.display()),
    );
    let out = explain(&config, &["www.kept.cn"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines[0]["serial"], 9);
    assert_eq!(out.lines[0]["matched"], "kept.cn");
    assert!(out.stderr.contains("not read"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{}: loaded serial 9",
            state.join("registry.snapshot").display()
        )),
        "{}",
        out.stderr
    );
    // Offline: the gate's state is left as it was.
    assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);

    // A file source is read, and what is read is not written to state_dir as a gate would.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("registry.tsv"),
        snapshot_bytes(4, &records),
    )
    .unwrap();
    let state2 = other.path().join("state");
    let config2 = config_with_source(
        other.path(),
        &format!("file://{}", other.path().join("registry.tsv").display()),
        &format!("state_dir = \"{}\"", state2.display()),
    );
    let out = explain(&config2, &["www.kept.cn"], None);
    assert_eq!(
        (out.code, &out.lines[0]["serial"]),
        (0, &4.into()),
        "{}",
        out.stderr
    );
    assert!(
        !state2.exists() || std::fs::read_dir(&state2).unwrap().count() == 0,
        "explain wrote to state_dir"
    );

    // Nothing to explain against: exit 2, and why.
    std::fs::remove_file(state.join("registry.snapshot")).unwrap();
    let out = explain(&config, &["www.kept.cn"], None);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no registry to explain against"),
        "{}",
        out.stderr
    );
    assert!(out.lines.is_empty());
}

#[test]
fn the_admin_explain_agrees_with_the_cli_and_with_what_the_gate_does() {
    let origin = Origin::start();
    let watch = free_port();
    let gate = Gate::start(
        &origin,
        GateOptions {
            extra: format!(
                "[[listener]]\nname = \"watch\"\naddress = \"127.0.0.1:{watch}\"\n\
                 require = \"filed\"\nmode = \"monitor\"\n"
            ),
            ..Default::default()
        },
    );
    let hosts = [
        "www.example.com",
        "unfiled.cn",
        "gone.com.cn",
        "cdn-only.cn",
        "lapsed.com.cn",
        "img.bad.example.com",
        "x.a.b.deep.cn",
        "203.0.113.7",
    ];
    let cli = explain(&gate.dir.path().join("icp-gate.toml"), &hosts, None);
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    for (host, from_cli) in hosts.iter().zip(&cli.lines) {
        let answer = get(gate.admin, &format!("/explain?host={host}"));
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let served: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(
            &served, from_cli,
            "{host}: the admin endpoint and the CLI differ"
        );

        // What the gate actually does with a request for the host, on each listener.
        for (listener, at) in [(0, gate.addr), (1, addr(watch))] {
            let l = &served["listeners"][listener];
            let got = get_host(at, host);
            let reason = l["reason"].as_str();
            match l["decision"].as_str().unwrap() {
                "blocked" => {
                    assert_eq!(got.status, 403, "{host} on {}", l["name"]);
                    assert_eq!(got.block_reason(), reason, "{host}");
                }
                "allowed" | "monitored" => {
                    assert_eq!(got.status, 200, "{host} on {}: {}", l["name"], got.text());
                    assert_eq!(got.block_reason(), None);
                }
                other => panic!("decision {other}"),
            }
        }
    }
    // The monitor listener forwarded what it would have blocked, and counted it so.
    let monitored = gate.metrics().value(
        "icp_gate_requests_total",
        &[
            ("listener", "watch"),
            ("decision", "monitored"),
            ("reason", "unfiled"),
        ],
    );
    assert_eq!(monitored, 1.0);

    // Percent-encoded Unicode names.
    let answer = get(
        gate.admin,
        "/explain?host=%E4%BE%8B%E5%AD%90.%E4%B8%AD%E5%9B%BD",
    );
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        (answer.status, v["host"].as_str()),
        (200, Some("xn--fsqu00a.xn--fiqs8s"))
    );
    // Bad requests get 400 with the reason.
    let answer = get(gate.admin, "/explain?host=bad%20host");
    assert_eq!(answer.status, 400);
    let v: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(v["invalid"]["code"], "bad_character");
    assert_eq!(v["listeners"][0]["reason"], "invalid_host");
    for path in ["/explain", "/explain?hots=example.com"] {
        let answer = get(gate.admin, path);
        assert_eq!(answer.status, 400, "{path}");
        let v: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(v["error"], "missing_host");
    }
    let post = request(
        gate.admin,
        "POST /explain?host=example.com HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.status, 405);
}

#[test]
fn explain_follows_a_file_delta_feed_as_a_gate_would() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("registry.tsv");
    std::fs::write(&source, snapshot_bytes(7, &standard_records())).unwrap();
    let deltas = dir.path().join("deltas");
    std::fs::create_dir(&deltas).unwrap();
    let late = ("late.cn", icp_gate_registry::Status::Connected, None, None);
    std::fs::write(deltas.join("7"), delta_bytes(7, 8, &[late], &[], 13)).unwrap();
    let config = config_with_source(
        dir.path(),
        &format!("file://{}", source.display()),
        &format!("delta_source = \"file://{}/\"", deltas.display()),
    );
    let out = explain(&config, &["www.late.cn"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.lines[0]["serial"], 8);
    assert_eq!(out.lines[0]["matched"], "late.cn");
    assert!(
        out.stderr.contains("delta applied, serial 7 to 8"),
        "{}",
        out.stderr
    );
}
