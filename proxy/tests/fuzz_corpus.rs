//! Replays the fuzz corpus checked in under `fuzz/corpus/front_end/` through the same harness
//! and invariants the cargo-fuzz target runs (`tests/fuzz_checks/mod.rs`, included by both), so
//! that every seed and every input the fuzzer once found interesting is checked by a plain
//! `cargo test`, on stable, in CI.
//!
//! A missing or empty corpus directory fails the test: a replay that replays nothing would
//! pass while checking nothing.
//!
//! Run with `cargo test -p icp-gate-proxy --test fuzz_corpus`; see docs/fuzzing.md.

mod fuzz_checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use fuzz_checks::{Input, NEXT};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/front_end")
}

/// The corpus files of the `front_end` target, sorted by name.
fn corpus() -> Vec<PathBuf> {
    let dir = corpus_dir();
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
fn front_end_corpus() {
    let files = corpus();
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if std::env::var_os("ICP_GATE_FUZZ_SHOW").is_some_and(|show| *show == *name) {
            // What one input does: `ICP_GATE_FUZZ_SHOW=<file> cargo test ... -- --nocapture`.
            eprintln!("{}", fuzz_checks::describe(&data));
        }
        match catch_unwind(AssertUnwindSafe(|| fuzz_checks::check_front_end(&data))) {
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
        "{} of the {} inputs in fuzz/corpus/front_end/ break an invariant of the `front_end` \
         fuzz target:\n{}\nReproduce one with `cargo fuzz run --sanitizer none front_end \
         fuzz/corpus/front_end/<file>` (see docs/fuzzing.md).",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    eprintln!("replayed {} inputs of fuzz/corpus/front_end/", files.len());
}

/// One input from anywhere, told in full: `ICP_GATE_FUZZ_INPUT=<file> cargo test -p
/// icp-gate-proxy --test fuzz_corpus one_input -- --nocapture` (a crash from
/// `fuzz/artifacts/front_end/`, say). Does nothing without the variable.
#[test]
fn one_input() {
    let Some(path) = std::env::var_os("ICP_GATE_FUZZ_INPUT") else {
        return;
    };
    let data = std::fs::read(&path).expect("read ICP_GATE_FUZZ_INPUT");
    eprintln!("{}", fuzz_checks::describe(&data));
    if let Err(broken) = fuzz_checks::check_front_end(&data) {
        panic!("{broken}");
    }
}

/// For choosing the corpus: `ICP_GATE_FUZZ_OUTCOMES=<dir> cargo test -p icp-gate-proxy --test
/// fuzz_corpus outcomes -- --nocapture` prints `<outcome>\t<size>\t<file>` for every file of
/// `<dir>` (see `fuzz_checks::outcome`). Does nothing without the variable.
#[test]
fn outcomes() {
    let Some(dir) = std::env::var_os("ICP_GATE_FUZZ_OUTCOMES") else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read ICP_GATE_FUZZ_OUTCOMES")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| fuzz_checks::outcome(&data)))
            .unwrap_or_else(|_| "PANIC".to_owned());
        println!("{outcome}\t{}\t{}", data.len(), path.display());
    }
}

const OK5: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

fn get(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// The hand seeds: (name, flags, client bytes, origin bytes).
fn seeds() -> Vec<(&'static str, u8, Vec<u8>, Vec<u8>)> {
    let s = |name, flags, client: &str, origin: &str| {
        (
            name,
            flags,
            client.as_bytes().to_vec(),
            origin.as_bytes().to_vec(),
        )
    };
    let next = std::str::from_utf8(NEXT).unwrap();
    let ok_twice = format!("{OK5}{next}{OK5}");
    let ok_thrice = format!("{OK5}{next}{OK5}{next}{OK5}");
    let pipelined = format!(
        "{}{}{}",
        get("www.example.com"),
        get("unfiled.cn"),
        get("filed.cn")
    );
    let three_allowed = format!(
        "{}{}{}",
        get("www.example.com"),
        get("filed.cn"),
        get("a.example.com")
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    vec![
        // What the first long run found (docs/fuzzing.md, findings), fixed since.
        s(
            "found-te-and-content-length",
            0,
            &get("www.example.com"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        s(
            "found-chunk-size-junk",
            0,
            &get("www.example.com"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;a\u{dd}\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        ),
        s(
            "found-chunked-not-last",
            0,
            &get("www.example.com"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        s(
            "found-error-after-answer-started",
            0,
            "POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ),
        s("get-filed", 0, &get("www.example.com"), OK5),
        s("get-filed-bytewise", 1, &get("www.example.com"), OK5),
        s("get-filed-in-7s", 7, &get("www.example.com"), OK5),
        s("get-unfiled", 0, &get("unfiled.cn"), OK5),
        s("get-denied", 0, &get("bad.example.com"), OK5),
        s("get-unconnected", 0, &get("other.cn"), OK5),
        s("get-cancelled", 0, &get("cancelled.cn:8080"), OK5),
        s("get-revoked-json", 0, "GET / HTTP/1.1\r\nHost: gone.com.cn\r\nAccept: application/json\r\n\r\n", OK5),
        s("get-ip-filed", 0, &get("10.0.0.1"), OK5),
        s("get-ip-unfiled", 0, &get("10.0.0.2"), OK5),
        s("get-ipv6-unfiled", 0, &get("[::1]:80"), OK5),
        s("get-unicode-filed", 0, &get("例子.中国"), OK5),
        s("get-punycode-filed", 0, &get("www.xn--fsqu00a.xn--fiqs8s"), OK5),
        s("get-invalid-host", 0, &get("exa mple.com"), OK5),
        s("get-invalid-host-head", 0, "HEAD / HTTP/1.1\r\nHost: a..b\r\n\r\n", OK5),
        s("get-no-host", 0, "GET / HTTP/1.1\r\n\r\n", OK5),
        s("get-two-hosts", 0, "GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: unfiled.cn\r\n\r\n", OK5),
        s("get-userinfo-host", 0, &get("www.example.com@unfiled.cn"), OK5),
        s("get-trailing-dot", 0, &get("WWW.Example.COM.:80"), OK5),
        s("pipelined", 0, &pipelined, &ok_twice),
        s("pipelined-keepalive-off", 0x80, &three_allowed, &ok_thrice),
        s("pipelined-max-2", 0x40, &three_allowed, &ok_thrice),
        s("pipelined-one-answer", 0, &three_allowed, OK5),
        s("head-filed", 0, "HEAD / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        s("chunked-trailers", 0, &get("www.example.com"), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
        s("interim-103", 0, &get("www.example.com"), "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        s("unasked-101", 0, &get("www.example.com"), "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw"),
        s("websocket", 0, "GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nclient-frames", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nserver-frames"),
        s("websocket-unfiled", 0, "GET /ws HTTP/1.1\r\nHost: unfiled.cn\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        s("close-delimited", 0, &get("www.example.com"), "HTTP/1.1 200 OK\r\n\r\nuntil the origin closes"),
        s("close-delimited-http10", 0, &get("www.example.com"), "HTTP/1.0 200 OK\r\n\r\nuntil close"),
        s("truncated-body", 0, &get("www.example.com"), "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        s("truncated-chunked", 0, &get("www.example.com"), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"),
        s("origin-garbage", 0, &get("www.example.com"), "SSH-2.0-OpenSSH\r\n\r\n"),
        s("origin-silent", 0, &get("www.example.com"), ""),
        s("origin-extra-bytes", 0, &format!("{}{}", get("www.example.com"), get("filed.cn")), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        s("origin-204-with-body", 0, &get("www.example.com"), "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        s("origin-304", 0, &get("www.example.com"), "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
        s("origin-connection-close", 0, &three_allowed, "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nok"),
        s("bad-target", 0, "GET foo HTTP/1.1\r\nHost: www.example.com\r\n\r\n", OK5),
        s("bad-target-scheme", 0, "GET http:/x HTTP/1.1\r\nHost: www.example.com\r\n\r\n", OK5),
        s("asterisk-options", 0, "OPTIONS * HTTP/1.1\r\nHost: www.example.com\r\n\r\n", OK5),
        s("connect", 0, "CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n\r\n", OK5),
        s("absolute-form-unfiled", 0, "GET http://unfiled.cn/p HTTP/1.1\r\nHost: www.example.com\r\n\r\n", OK5),
        s("absolute-form-filed", 0, "GET http://www.example.com/p?q HTTP/1.1\r\nHost: unfiled.cn\r\n\r\n", OK5),
        s("proxy-authorization", 0, "GET / HTTP/1.1\r\nHost: www.example.com\r\nProxy-Authorization: Basic eDp5\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n", OK5),
        s("huge-head", 0, &huge, OK5),
        s("post-filed", 0, "POST /p HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n\r\nhello", OK5),
        s("post-chunked-filed", 0, "POST /p HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", OK5),
        s("post-unfiled", 0, "POST /p HTTP/1.1\r\nHost: unfiled.cn\r\nContent-Length: 5\r\n\r\nhello", OK5),
        s("post-short-body", 0, "POST /p HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 50\r\n\r\nhello", OK5),
        s("expect-continue", 0, "PUT /p HTTP/1.1\r\nHost: www.example.com\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        s("http10-filed", 0, "GET / HTTP/1.0\r\nHost: www.example.com\r\n\r\n", OK5),
        s("http10-unfiled", 0, "GET / HTTP/1.0\r\nHost: unfiled.cn\r\n\r\n", OK5),
        s("body-then-pipelined", 0, &format!("POST /p HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 2\r\n\r\nhi{}", get("unfiled.cn")), &ok_twice),
        s("partial-head", 0, "GET / HTTP/1.1\r\nHost: www.exa", OK5),
        ("tls-hello", 0, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), OK5.as_bytes().to_vec()),
        s("bare-lf", 0, "GET / HTTP/1.1\nHost: www.example.com\n\n", OK5),
    ]
}

/// With `ICP_GATE_WRITE_SEEDS=1` this writes the hand seeds into `fuzz/corpus/front_end/`;
/// otherwise it checks that each is there, unchanged.
#[test]
fn hand_seeds_are_checked_in() {
    let dir = corpus_dir();
    let write = std::env::var_os("ICP_GATE_WRITE_SEEDS").is_some();
    for (name, flags, client, origin) in seeds() {
        let bytes = Input::encode(flags, &client, &origin);
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).expect("create the corpus directory");
            std::fs::write(&path, &bytes).expect("write a seed");
            continue;
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "seed {name} is missing ({e}): write the seeds with ICP_GATE_WRITE_SEEDS=1 \
                 cargo test -p icp-gate-proxy --test fuzz_corpus"
            )
        });
        assert_eq!(on_disk, bytes, "seed {name} differs from seeds()");
    }
}
