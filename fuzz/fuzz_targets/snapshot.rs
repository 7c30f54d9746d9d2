//! The snapshot parser on arbitrary bytes (`read_snapshot`), as given and again with the
//! trailer's checksum corrected so that inputs get past it. No panic; a refusal has a parse
//! reason and names a line that exists; an accepted snapshot has one registry entry per line
//! between header and trailer, the count and digest its trailer states, and looks every listed
//! name up as its own record.
//!
//! The checks are shared with the corpus replay: registry-sync/tests/fuzz_checks/mod.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../registry-sync/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = checks::check_snapshot_input(data) {
        panic!("{broken}");
    }
});
