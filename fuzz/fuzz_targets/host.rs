//! The host normalizer on arbitrary bytes: `parse_authority`, and `parse_registry_name` (with
//! `parse_registry_name_into`) when the bytes are UTF-8. No panic; an accepted domain is at most
//! 253 bytes of 1-63 byte labels of `[a-z0-9_-]` and not numeric at the end; normalizing is
//! idempotent; the Display form re-parses to the same host; both entry points agree.
//!
//! The checks are shared with the corpus replay: registry-sync/tests/fuzz_checks/mod.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../registry-sync/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = checks::check_host(data) {
        panic!("{broken}");
    }
});
