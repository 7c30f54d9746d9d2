//! The ClientHello reader on arbitrary bytes: `Scanner::scan` (whole, byte by byte, in chunks)
//! against a plain reference framer, `handshake_message` against its reassembly, and `parse` on
//! that message and on the raw bytes, checked against an independent walk of the extensions.
//!
//! The checks are shared with the corpus replay: client-hello/tests/fuzz_checks/mod.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../client-hello/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = checks::check_client_hello(data) {
        panic!("{broken}");
    }
});
