//! The HTTP/1 front end on arbitrary client bytes and arbitrary origin answers: one client
//! connection served by `GateApp::process_new` (the front end, and Pingora's proxy behind it)
//! with a real origin on 127.0.0.1 answering with the input's origin bytes. Nothing may be
//! forwarded for a host that may not pass, every answer must be well-framed, nothing may panic.
//!
//! The harness and checks are shared with the corpus replay: proxy/tests/fuzz_checks/mod.rs.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../proxy/tests/fuzz_checks/mod.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = checks::check_front_end(data) {
        panic!("{broken}");
    }
});
