//! What ships beside the binary, checked with the tools that consume it: the Prometheus rules
//! (`promtool check rules`, and `promtool test rules` on their unit tests), the Grafana
//! dashboard's queries (promtool again), the systemd unit (`systemd-analyze`), and every
//! metric name they use against what the real gate exports. The tools are installed by
//! `scripts/ensure-deps`: a missing one fails these tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;
use crate::tls_harness::{Pki, TlsClient};

const RULES: &str = "deploy/prometheus/icp-gate.rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/icp-gate.rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/icp-gate.json";
const UNIT: &str = "deploy/systemd/icp-gate.service";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The tool on PATH, or a failure naming what installs it.
fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: scripts/ensure-deps installs it (these tests need it)"
    );
    Command::new(name)
}

/// Runs `cmd`; panics with its output unless it succeeded. Returns standard output and error.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The names of every alert of the rules file (`- alert: Name`).
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_cover_every_alert() {
    let out = run_ok(tool("promtool").args(["check", "rules"]).arg(repo(RULES)));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(
        tool("promtool")
            .args(["test", "rules"])
            .arg(repo(RULE_TESTS))
            .current_dir(repo("deploy/prometheus")),
    );
    assert!(out.contains("SUCCESS"), "{out}");

    let alerts = alert_names(&read(RULES));
    assert!(alerts.len() >= 10, "{alerts:?}");
    let tests = read(RULE_TESTS);
    for alert in &alerts {
        // Each alert is evaluated where it fires (its labels and annotations listed) and where
        // it must not.
        let evaluated = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            evaluated >= 2,
            "{alert} is evaluated {evaluated} times in {RULE_TESTS}"
        );
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "no case of {RULE_TESTS} expects {alert} to fire"
        );
    }
}

/// Every PromQL expression of the dashboard (panel targets and template queries), with
/// Grafana's variables replaced by values Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut raw = Vec::new();
    walk(&dashboard, &mut raw);
    raw.iter()
        .map(|q| {
            // label_values(METRIC_SELECTOR, label) is Grafana's: its selector is the query.
            let q = match q.strip_prefix("label_values(") {
                Some(rest) => rest
                    .rsplit_once(',')
                    .expect("label_values(m, l)")
                    .0
                    .to_owned(),
                None => q.clone(),
            };
            q.replace("$__rate_interval", "5m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$listener", ".*")
        })
        .collect()
}

#[test]
fn the_dashboard_is_valid_json_with_valid_promql_and_a_unit_per_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut titles = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        assert!(titles.insert(title), "two panels are titled {title:?}");
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "panel {title:?} has no unit"
        );
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{title:?}");
    }
    let queries = dashboard_queries();
    assert!(queries.len() > 30, "{queries:?}");
    // promtool parses them as the expressions of recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        assert!(!q.contains('$'), "a Grafana variable left in {q}");
        assert!(
            !q.contains("host"),
            "a dashboard query uses a host label: {q}"
        );
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            q.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, rules).unwrap();
    run_ok(tool("promtool").args(["check", "rules"]).arg(&path));
}

/// The `icp_gate_*` metric names in `text`, each with the label names of every selector
/// written with it (`name{label="..", ...}`). Recording rules (`level:icp_gate_x:op`) are not
/// metrics of the gate and are skipped.
fn metric_uses(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let bytes = text.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(at) = text[i..].find("icp_gate_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        if (start > 0 && is_name(bytes[start - 1])) || bytes.get(end) == Some(&b':') {
            continue;
        }
        let labels = uses.entry(text[start..end].to_owned()).or_default();
        if bytes.get(end) == Some(&b'{') {
            let close = text[end..].find('}').expect("a closed selector") + end;
            let mut in_quotes = false;
            let mut name = String::new();
            let mut reading_name = true;
            for c in text[end + 1..close].chars() {
                match c {
                    '"' => in_quotes = !in_quotes,
                    ',' if !in_quotes => {
                        reading_name = true;
                        name.clear();
                    }
                    '=' | '!' | '~' if !in_quotes && reading_name => {
                        if !name.trim().is_empty() {
                            labels.insert(name.trim().to_owned());
                        }
                        reading_name = false;
                    }
                    _ if reading_name => name.push(c),
                    _ => {}
                }
            }
        }
    }
    uses
}

/// The metric names of a `/metrics` scrape, each with the label names its series carry
/// (histograms under their `_bucket`, `_sum` and `_count` names too).
fn exported(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_owned();
            if parts.next() == Some("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.entry(format!("{name}{suffix}")).or_default();
                }
            }
            out.entry(name).or_default();
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').unwrap().0;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_owned()).or_default();
        for kv in labels.trim_end_matches('}').split(',') {
            if let Some((k, _)) = kv.split_once('=') {
                entry.insert(k.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_metric_the_dashboard_and_the_rules_use_is_one_the_gate_exports() {
    let origin = Origin::start();
    let tls_port = free_port();
    let pki = Pki::new(&["www.example.com"]);
    let certs = tempfile::tempdir().unwrap();
    pki.write_pair(certs.path(), "site");
    let gate = Gate::start(
        &origin,
        GateOptions {
            extra: format!(
                "\n[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\n\
                 protocol = \"tls\"\nupstream = [\"{}\"]\n\n[tls]\ncertificates = \"{}\"\n",
                origin.addr,
                certs.path().display()
            ),
            ..GateOptions::default()
        },
    );
    // Exercise it: allowed, blocked, invalid and refused-before-a-decision requests, a TLS
    // listener refusing what is not TLS and terminating a name it holds a certificate for, so
    // that labelled series and histograms have values.
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    assert_eq!(get_host(gate.addr, "unfiled.cn").status, 403);
    assert_eq!(get_host(gate.addr, "bad.example.com").status, 403);
    assert_eq!(get_host(gate.addr, "exa mple.com").status, 400);
    let r = request(
        gate.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    let mut tls = std::net::TcpStream::connect(addr(tls_port)).unwrap();
    std::io::Write::write_all(&mut tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut refused = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut refused);
    let mut h1 = (*pki.client_config()).clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = std::net::TcpStream::connect(addr(tls_port)).unwrap();
    let answer = TlsClient::with_config(std::sync::Arc::new(h1), stream, "www.example.com")
        .unwrap()
        .get("www.example.com", "/");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = gate.metrics();
    assert_eq!(
        metrics.value(
            "icp_gate_tls_connections_total",
            &[
                ("listener", "tls"),
                ("decision", "blocked"),
                ("reason", "not_tls")
            ]
        ),
        1.0
    );
    assert!(
        metrics.value(
            "icp_gate_request_duration_seconds_count",
            &[("listener", "test"), ("decision", "blocked")]
        ) >= 2.0
    );

    let exported = exported(&metrics.0);
    let mut uses = metric_uses(&read(RULES));
    for q in dashboard_queries() {
        for (name, labels) in metric_uses(&q) {
            uses.entry(name).or_default().extend(labels);
        }
    }
    assert!(uses.len() > 20, "{uses:?}");
    let mut problems = Vec::new();
    for (name, labels) in &uses {
        match exported.get(name) {
            None => problems.push(format!("{name} is not exported")),
            Some(have) => {
                for label in labels {
                    if !have.contains(label) && !["job", "instance"].contains(&label.as_str()) {
                        problems.push(format!("{name} has no label {label} (it has {have:?})"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    // The unit as shipped, with its ExecStart= pointing at this build (verify checks that the
    // binaries exist).
    let unit = read(UNIT).replace("/usr/bin/icp-gate", BIN);
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("icp-gate.service");
    std::fs::write(&path, unit).unwrap();
    // An unknown or misspelt key only warns: the output must be empty too.
    let out = run_ok(tool("systemd-analyze").arg("verify").arg(&path));
    assert!(out.trim().is_empty(), "systemd-analyze verify:\n{out}");
    // The hardening: an exposure above 3.0 (of 10) fails.
    run_ok(
        tool("systemd-analyze")
            .args(["security", "--offline=yes", "--threshold=30"])
            .arg(&path),
    );
}
