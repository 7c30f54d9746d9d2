//! Valid-by-construction snapshots: the bytes choose records (names from a small alphabet of
//! labels that meet, statuses, filing numbers, expiries; see `decode_records`), `SnapshotWriter`
//! writes them with a correct trailer, optionally gzip-compressed, and `read_snapshot` must
//! accept them exactly when a reference built from the names says so, and then decide every
//! listed name, a name below it and its parent as the most specific listed record says.
//!
//! The checks are shared with the corpus replay: registry-sync/tests/fuzz_checks/mod.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../registry-sync/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = checks::check_snapshot_records(data) {
        panic!("{broken}");
    }
});
