//! The command line of the contract: `-t -c`, `registry verify`, `demo`, and SIGTERM handling.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = output_text(&out);
    (out.status.code().unwrap_or(-1), text)
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The `icp-gate.toml` key of the ConfigMap in a Kubernetes manifest: the block scalar's lines,
/// without their indentation.
fn configmap_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "icp-gate.toml: |");
    let key = lines.next().expect("an icp-gate.toml key in the ConfigMap");
    let key_indent = key.len() - key.trim_start().len();
    let mut out = String::new();
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        if !line.trim().is_empty() && indent <= key_indent {
            break;
        }
        out.push_str(line.get(key_indent + 2..).unwrap_or(""));
        out.push('\n');
    }
    out
}

#[test]
fn shipped_example_configs_pass_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("daemonset-configmap.toml");
    let manifest = std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap();
    let toml = configmap_toml(&manifest);
    assert!(
        toml.contains("[[listener]]") && toml.contains("[registry]"),
        "{toml}"
    );
    std::fs::write(&k8s, toml).unwrap();
    // The Secret the DaemonSet mounts beside its configuration.
    std::fs::create_dir_all(dir.path().join("admin")).unwrap();
    std::fs::write(
        dir.path().join("admin/token"),
        "k8s-example-token-0123456789abcdef\n",
    )
    .unwrap();
    for config in [
        repo("examples/icp-gate.toml"),
        // What the .deb installs as /etc/icp-gate/icp-gate.toml.
        repo("deploy/debian/icp-gate.toml"),
        k8s.display().to_string(),
    ] {
        let (code, out) = run(&["-t", "-c", &config]);
        assert_eq!(code, 0, "{config}: {out}");
        assert!(out.contains("valid"), "{out}");
    }
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

/// The contract's demo: fixed ports 8080 (gate), 9090 (admin), 8081 (demo origin), and 8443
/// (TLS listener) with its TLS demo origin on 8444.
#[test]
fn demo_allows_a_filed_sample_and_blocks_an_unfiled_one() {
    for port in [8080, 8081, 9090, 8443, 8444] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is busy: the demo test needs 8080, 8081, 9090, 8443 and 8444 free"
        );
    }
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child_id = child.id();
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

        // HTTPS: passed through to the TLS demo origin, whose certificate the demo wrote out.
        let pem = std::env::temp_dir()
            .join(format!("icp-gate-demo-{}", child_id))
            .join("demo-origin.pem");
        use rustls::pki_types::pem::PemObject;
        let cert = rustls::pki_types::CertificateDer::from_pem_file(&pem).unwrap();
        let stream = std::net::TcpStream::connect(addr(8443)).unwrap();
        let mut client = crate::tls_harness::TlsClient::with_config(
            crate::tls_harness::client_config_trusting(cert),
            stream,
            "www.example.com",
        )
        .unwrap();
        let answer = client.get("www.example.com", "/");
        assert!(answer.contains("Passed through"), "{answer}");
        let refused = crate::tls_harness::exchange(
            addr(8443),
            &[&crate::tls_harness::built_hello(
                Some(b"unfiled-demo.cn"),
                &[],
            )],
            Duration::ZERO,
            Duration::from_secs(5),
        );
        assert_eq!(
            refused,
            crate::tls_harness::Ending::Closed(crate::tls_harness::ALERT.to_vec())
        );
        // Names the demo gate holds a certificate for are terminated: a filed one forwarded
        // to the demo origin, a held unfiled one answered with the block page over HTTPS.
        let held = rustls::pki_types::CertificateDer::from_pem_file(
            std::env::temp_dir()
                .join(format!("icp-gate-demo-{}", child_id))
                .join("demo-gate.pem"),
        )
        .unwrap();
        let mut config = (*crate::tls_harness::client_config_trusting(held)).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = std::sync::Arc::new(config);
        let https = |name: &str| {
            let stream = std::net::TcpStream::connect(addr(8443)).unwrap();
            crate::tls_harness::TlsClient::with_config(config.clone(), stream, name)
                .unwrap()
                .get(name, "/")
        };
        let forwarded = https("icp-demo.cn");
        assert!(forwarded.starts_with("HTTP/1.1 200"), "{forwarded}");
        assert!(forwarded.contains("Terminated by the gate"), "{forwarded}");
        let page = https("held-unfiled.cn");
        assert!(page.starts_with("HTTP/1.1 403"), "{page}");
        assert!(
            page.to_ascii_lowercase()
                .contains("x-icp-block-reason: unfiled"),
            "{page}"
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn registry_diff_round_trip_and_refusals() {
    use icp_gate_registry::{
        apply_delta, parse_authority, read_delta, read_snapshot, Requirement, Status,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let old_records = standard_records();
    // NEW: reordered, names written differently, one added, one removed, one changed.
    let mut new_records: Vec<Rec<'_>> = old_records
        .iter()
        .rev()
        .filter(|r| r.0 != "moved.cn")
        .map(|r| match r.0 {
            "example.com" => ("EXAMPLE.com.", r.1, r.2, r.3),
            "cdn-only.cn" => (r.0, Status::Connected, r.2, r.3),
            _ => *r,
        })
        .collect();
    new_records.push(("added.cn", Status::Connected, Some("京ICP备1号-1"), None));
    std::fs::write(path("old.tsv"), snapshot_bytes(1, &old_records)).unwrap();
    std::fs::write(path("new.tsv"), snapshot_bytes(2, &new_records)).unwrap();

    let (code, out) = run(&[
        "registry",
        "diff",
        &path("old.tsv"),
        &path("new.tsv"),
        "-o",
        &path("d.delta"),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 upserts, 1 removals, 12 entries after it"),
        "{out}"
    );
    let stdout = Command::new(BIN)
        .args(["registry", "diff", &path("old.tsv"), &path("new.tsv")])
        .output()
        .unwrap()
        .stdout;
    let written = std::fs::read(path("d.delta")).unwrap();
    assert_eq!(stdout, written);
    let (code, out) = run(&["registry", "verify", &path("d.delta")]);
    assert_eq!(code, 0, "{out}");
    for line in [
        "valid delta",
        "from: 1",
        "to: 2",
        "upserts: 2",
        "removals: 1",
    ] {
        assert!(out.contains(line), "{line} missing from:\n{out}");
    }

    // Applied to OLD, the delta gives a registry that decides as NEW does.
    let old = read_snapshot(&snapshot_bytes(1, &old_records)[..]).unwrap();
    let new = read_snapshot(&snapshot_bytes(2, &new_records)[..]).unwrap();
    let delta = read_delta(&written[..], u64::MAX).unwrap();
    let applied = apply_delta(&old.registry, 1, &delta).unwrap().registry;
    assert_eq!(applied.len(), new.registry.len());
    let mut hosts: Vec<String> = old_records
        .iter()
        .chain(new_records.iter())
        .map(|r| r.0.to_owned())
        .collect();
    hosts.extend(hosts.clone().iter().map(|h| format!("www.{h}")));
    hosts.push("[2001:db8::7]".to_owned());
    // (`www.` before an IP address is no host: skipped.)
    for host in hosts
        .iter()
        .filter_map(|h| parse_authority(h.as_bytes()).ok())
    {
        for require in [Requirement::Connected, Requirement::Filed] {
            assert_eq!(
                applied.decide(&host, require, 1_800_000_000),
                new.registry.decide(&host, require, 1_800_000_000),
                "{host} {require:?}"
            );
        }
    }

    // Refusals: the serial must go up; both files must be valid snapshots.
    let (code, out) = run(&["registry", "diff", &path("new.tsv"), &path("old.tsv")]);
    assert_ne!(code, 0);
    assert!(out.contains("is not above"), "{out}");
    std::fs::write(path("bad.tsv"), b"icp-gate-registry 1 serial=3\n").unwrap();
    let (code, out) = run(&[
        "registry",
        "diff",
        &path("old.tsv"),
        &path("bad.tsv"),
        "-o",
        &path("none.delta"),
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("bad.tsv is not a valid snapshot"), "{out}");
    assert!(!dir.path().join("none.delta").exists());
    // A broken delta is reported by verify.
    let mut broken = written.clone();
    broken[40] ^= 1;
    std::fs::write(path("broken.delta"), broken).unwrap();
    let (code, out) = run(&["registry", "verify", &path("broken.delta")]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("invalid"), "{out}");
}
