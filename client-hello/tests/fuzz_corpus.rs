//! Replays the fuzz corpus checked in under `fuzz/corpus/client_hello/` through the same
//! invariant checks the cargo-fuzz target runs (`tests/fuzz_checks/mod.rs`, included by both),
//! so that every seed and every input the fuzzer once found interesting is checked by a plain
//! `cargo test`, on stable, in CI.
//!
//! A missing or empty corpus directory fails the test: a replay that replays nothing would
//! pass while checking nothing.
//!
//! Run with `cargo test -p icp-gate-client-hello --test fuzz_corpus`; see docs/fuzzing.md.

mod fuzz_checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The corpus files of the `client_hello` target, sorted by name.
pub fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_hello");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the fuzz corpus is missing: cannot read {}: {e}",
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
        "the fuzz corpus is empty: {} has no files, so nothing would be replayed",
        dir.display()
    );
    files
}

#[test]
fn client_hello_corpus() {
    let files = corpus();
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        match catch_unwind(AssertUnwindSafe(|| fuzz_checks::check_client_hello(&data))) {
            Ok(Ok(())) => {}
            Ok(Err(broken)) => failures.push(format!("  {name}: {broken}")),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("  {name}: PANIC: {message}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the {} inputs in fuzz/corpus/client_hello/ break an invariant of the \
         `client_hello` fuzz target:\n{}\nReproduce one with `cargo fuzz run --sanitizer none \
         client_hello fuzz/corpus/client_hello/<file>` (see docs/fuzzing.md).",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    eprintln!(
        "replayed {} inputs of fuzz/corpus/client_hello/",
        files.len()
    );
}

mod support;

/// The hand seeds come from `support::fixtures()`. With `ICP_GATE_WRITE_SEEDS=1` this writes
/// them into `fuzz/corpus/client_hello/`; otherwise it checks that each is there (and, for the
/// deterministic ones, unchanged).
#[test]
fn hand_seeds_are_checked_in() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/client_hello");
    let write = std::env::var_os("ICP_GATE_WRITE_SEEDS").is_some();
    for (name, bytes) in support::fixtures() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).expect("create the corpus directory");
            std::fs::write(&path, &bytes).expect("write a seed");
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "seed {name} is missing ({e}): write the seeds with ICP_GATE_WRITE_SEEDS=1 \
                 cargo test -p icp-gate-client-hello --test fuzz_corpus"
            )
        });
        if !name.starts_with("rustls-") {
            assert_eq!(
                on_disk, bytes,
                "seed {name} differs from support::fixtures()"
            );
        }
    }
}
