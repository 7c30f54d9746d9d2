//! The publisher's side with the real binary: `registry build` seals a records file that
//! `registry verify` accepts (and refuses a bad one with its line), and `registry publish`
//! writes a directory that a gate follows over plain HTTP from any static file server, a new
//! filing arriving by delta.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn registry_build_seals_records_that_verify_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records.tsv");
    std::fs::write(&records, record_lines(&standard_records())).unwrap();
    let snapshot = dir.path().join("registry.tsv");
    let (code, _, err) = run(&[
        "registry",
        "build",
        path(&records),
        "--serial",
        "42",
        "-o",
        path(&snapshot),
        "--generated-at",
        "2026-11-22T03:00:00Z",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("12 records sealed, serial 42"), "{err}");
    let (code, out, err) = run(&["registry", "verify", path(&snapshot)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("serial: 42"), "{out}");
    assert!(out.contains("records: 12"), "{out}");
    // The same bytes the project's own snapshot writer makes from these records.
    let expected = snapshot_bytes(42, &standard_records());
    assert_eq!(std::fs::read(&snapshot).unwrap(), expected);
    // To standard output, byte for byte the same.
    let out = Command::new(BIN)
        .args([
            "registry",
            "build",
            path(&records),
            "--serial",
            "42",
            "-o",
            "-",
        ])
        .args(["--generated-at", "2026-11-22T03:00:00Z"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, expected);

    // A bad record: refused with its line in the records file, and nothing written.
    let mut text = record_lines(&standard_records());
    text.insert_str(0, "ok.cn\tconnected\n");
    text.push_str("third-from-end.cn\tconnected\nsomething.cn\tfiled\nlast.cn\tdenied\n");
    std::fs::write(&records, &text).unwrap();
    let target = dir.path().join("new.tsv");
    let (code, _, err) = run(&[
        "registry",
        "build",
        path(&records),
        "--serial",
        "43",
        "-o",
        path(&target),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 15: malformed_record: unknown status `filed`"),
        "{err}"
    );
    assert!(!target.exists());
    // A name twice (after normalization): both lines.
    std::fs::write(
        &records,
        "a.cn\tconnected\nb.cn\tconnected\nA.CN.\tdenied\n",
    )
    .unwrap();
    let (code, _, err) = run(&[
        "registry",
        "build",
        path(&records),
        "--serial",
        "1",
        "-o",
        path(&target),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("lines 1 and 3: duplicate_name"), "{err}");
    assert!(!target.exists());
}

#[test]
fn a_gate_follows_a_published_directory_over_http_and_a_new_filing_arrives_by_delta() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let export = dir.path().join("export.tsv");
    let records = standard_records();
    std::fs::write(&export, record_lines(&records)).unwrap();
    let publish = || run(&["registry", "publish", path(&export), "--dir", path(&feed)]);
    let (code, out, err) = publish();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("published serial 1 (12 entries)"), "{out}");
    // The same export again: nothing to do.
    let (code, out, err) = publish();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to publish"), "{out}");

    let server = StaticFiles::start(&feed);
    let origin = Origin::start();
    let gate = Gate::start(
        &origin,
        GateOptions {
            registry: None,
            source: Some(server.url("registry.snapshot")),
            // Snapshots hourly: a new filing can only come by the delta feed.
            refresh_seconds: 3600,
            registry_extra: format!(
                "delta_source = \"{}\"\ndelta_interval_seconds = 0.2\n",
                server.url("registry.deltas/")
            ),
            ..Default::default()
        },
    );
    assert_eq!(
        get_host(gate.addr, "www.newly-filed.cn").block_reason(),
        Some("unfiled")
    );

    // The filing system's next export files a new name and drops one.
    std::fs::write(&export, record_lines(&next_standard_records())).unwrap();
    let (code, out, err) = publish();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("published serial 2 (12 entries)"), "{out}");
    assert!(
        out.contains("delta from serial 1 to 2: 1 upserts, 1 removals"),
        "{out}"
    );

    wait_for("serial 2 in service", Duration::from_secs(15), || {
        (gate.metrics().value("icp_gate_registry_serial", &[]) == 2.0).then_some(())
    });
    assert_eq!(get_host(gate.addr, "www.newly-filed.cn").status, 200);
    assert_eq!(
        get_host(gate.addr, "cdn-only.cn").block_reason(),
        Some("unfiled")
    );
    let m = gate.metrics();
    assert_eq!(m.value("icp_gate_registry_deltas_applied_total", &[]), 1.0);
    let answered = server.answered();
    let snapshots = answered
        .iter()
        .filter(|(p, s)| p == "/registry.snapshot" && *s == 200)
        .count();
    assert_eq!(snapshots, 1, "one full download, at start: {answered:?}");
    assert!(
        answered.contains(&("/registry.deltas/1".to_owned(), 200)),
        "{answered:?}"
    );
    // What the gate now answers is what explain on the gate says.
    let explained = get(gate.admin, "/explain?host=www.newly-filed.cn");
    let v: serde_json::Value = serde_json::from_slice(&explained.body).unwrap();
    assert_eq!(
        (v["serial"].as_u64(), v["matched"].as_str()),
        (Some(2), Some("newly-filed.cn"))
    );
    // A gate started now takes serial 2 from the snapshot itself.
    drop(gate);
    let fresh = Gate::start(
        &origin,
        GateOptions {
            registry: None,
            source: Some(server.url("registry.snapshot")),
            ..Default::default()
        },
    );
    assert_eq!(fresh.metrics().value("icp_gate_registry_serial", &[]), 2.0);
    assert_eq!(get_host(fresh.addr, "newly-filed.cn").status, 200);
}
