//! The command line of the contract: `-t -c`, `registry verify`, `demo`, and SIGTERM handling.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_example_configs_pass_the_check() {
    let (code, out) = run(&["-t", "-c", &repo("examples/icp-gate.toml")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid"));
}

#[test]
fn a_bad_config_lists_every_error_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[listener]]
address = "127.0.0.1:99999"
require = "registered"

[upstream]
servers = ["127.0.0.1:8081"]
retries = 3

[registry]
source = "/var/lib/registry.tsv"
"#,
    )
    .unwrap();
    let (code, out) = run(&["-t", "-c", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    for key in ["listener[0].require", "upstream.retries", "registry.source"] {
        assert!(out.contains(key), "{key} missing from:\n{out}");
    }
    assert!(out.contains("3 errors"), "{out}");
    let (code, out) = run(&["-t", "-c", "/nonexistent/icp-gate.toml"]);
    assert_ne!(code, 0);
    assert!(out.contains("cannot read"), "{out}");
}

#[test]
fn registry_verify_reports_facts_or_the_reason() {
    let (code, out) = run(&["registry", "verify", &repo("examples/registry.tsv")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("serial: 1"), "{out}");
    assert!(out.contains("records: 10"), "{out}");
    assert!(out.contains("connected: 6"), "{out}");
    assert!(out.contains("denied: 1"), "{out}");
    assert!(out.contains("parse_and_build_ms: "), "{out}");
    assert!(out.contains("index_bytes_per_entry: "), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.tsv");
    let text = std::fs::read_to_string(repo("examples/registry.tsv")).unwrap();
    std::fs::write(&bad, text.replace("example.com", "exampel.com")).unwrap();
    let (code, out) = run(&["registry", "verify", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("checksum_mismatch"), "{out}");
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let origin = Origin::start();
    let mut gate = Gate::start(&origin, GateOptions::default());
    let addr = gate.addr;
    let slow = std::thread::spawn(move || {
        request(
            addr,
            "GET /slow HTTP/1.1\r\nHost: www.example.com\r\nX-Test-Delay-Ms: 700\r\n\r\n",
        )
    });
    wait_for(
        "the slow request to reach the origin",
        Duration::from_secs(10),
        || (!origin.received().is_empty()).then_some(()),
    );
    let status = gate.terminate();
    assert!(status.success(), "exit status {status:?}");
    let resp = slow.join().unwrap();
    assert_eq!(resp.status, 200, "the in-flight request was cut off");
}

/// The contract's demo: fixed ports 8080 (gate), 9090 (admin), 8081 (demo origin).
#[test]
fn demo_allows_a_filed_sample_and_blocks_an_unfiled_one() {
    for port in [8080, 8081, 9090] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is busy: the demo test needs 8080, 8081 and 9090 free"
        );
    }
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gate = addr(8080);
    let admin = addr(9090);
    let result = std::panic::catch_unwind(|| {
        wait_for("the demo to be ready", Duration::from_secs(20), || {
            std::net::TcpStream::connect(admin)
                .ok()
                .filter(|_| get(admin, "/readyz").status == 200)
        });
        let ok = get_host(gate, "www.example.com");
        assert_eq!(ok.status, 200);
        assert!(ok.text().contains("demo origin"), "{}", ok.text());
        let blocked = get_host(gate, "unfiled-demo.cn");
        assert_eq!(blocked.status, 403);
        assert_eq!(blocked.block_reason(), Some("unfiled"));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
