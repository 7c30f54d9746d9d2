//! Replays the fuzz corpus checked in under `fuzz/corpus/<target>/` through the same invariant
//! checks the cargo-fuzz targets run (`tests/fuzz_checks/mod.rs`, included by both), so that
//! every seed and every input the fuzzer once found interesting is checked by a plain
//! `cargo test`, on stable, in CI.
//!
//! A corpus directory that is missing or empty fails the test: a replay that replays nothing
//! would pass while checking nothing.
//!
//! Run with `cargo test -p icp-gate-registry --test fuzz_corpus`; see docs/fuzzing.md.

mod fuzz_checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The corpus files of one fuzz target, sorted by name.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the fuzz corpus of `{target}` is missing: cannot read {}: {e}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read the corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "the fuzz corpus of `{target}` is empty: {} has no files, so nothing would be replayed",
        dir.display()
    );
    files
}

/// Runs `check` on every corpus file of `target` and fails, listing every failing file with
/// what it broke, if any input breaks an invariant or panics.
fn replay(target: &str, check: fn(&[u8]) -> Result<(), String>) {
    let files = corpus(target);
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match catch_unwind(AssertUnwindSafe(|| check(&data))) {
            Ok(Ok(())) => {}
            Ok(Err(broken)) => failures.push(format!("  {name}: {broken}")),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("  {name}: PANIC in icp-gate-registry: {message}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the {} inputs in fuzz/corpus/{target}/ break an invariant of the `{target}` fuzz \
         target:\n{}\nReproduce one with `cargo fuzz run {target} fuzz/corpus/{target}/<file>` \
         (see docs/fuzzing.md).",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    eprintln!("replayed {} inputs of fuzz/corpus/{target}/", files.len());
}

#[test]
fn host_corpus() {
    replay("host", fuzz_checks::check_host);
}

#[test]
fn snapshot_corpus() {
    replay("snapshot", fuzz_checks::check_snapshot_input);
}

#[test]
fn snapshot_records_corpus() {
    replay("snapshot_records", fuzz_checks::check_snapshot_records);
}
