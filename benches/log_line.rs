//! Log line benches: formatting one request's audit line and access line (JSON and text), and
//! the whole of `AccessLog::record` for a blocked request (both lines into the buffered
//! writers, to /dev/null), the cost each request pays on the gate's core.
//!
//! Run:
//!   cargo bench --bench log_line
//!   cargo test --benches            # each bench once

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use icp_gate_proxy::access_log::{
    access_line, audit_request_line, AccessLog, AccessRecord, Common, Shown,
};
use icp_gate_proxy::gate::{Decided, Outcome};
use icp_gate_proxy::log_line::{ClientText, Stamp, Style};
use icp_gate_proxy::log_writer::{LogCounters, LogWriter};
use icp_gate_registry::{parse_authority, BlockReason, Host};
use prometheus::IntCounter;

fn record<'a>(host: Option<&'a Host>, client: SocketAddr) -> AccessRecord<'a> {
    AccessRecord {
        listener: "web",
        client: Some(client),
        client_text: None,
        method: "GET",
        path: b"/index.html",
        version: "1.1",
        host,
        invalid: None,
        decided: Decided {
            outcome: Outcome::Blocked(BlockReason::Unfiled),
            matched: None,
            serial: Some(42),
        },
        status: 403,
        started: std::time::Instant::now(),
        request_id: Some("dc0c0f9d00000010c8fdc7d3"),
        error: None,
    }
}

fn counters() -> LogCounters {
    LogCounters {
        lines: IntCounter::new("l", "l").unwrap(),
        backpressure: IntCounter::new("b", "b").unwrap(),
        write_errors: IntCounter::new("e", "e").unwrap(),
    }
}

fn formatting(c: &mut Criterion) {
    let host = parse_authority(b"unfiled-load-test.cn").unwrap();
    let client: SocketAddr = "198.51.100.23:51234".parse().unwrap();
    let r = record(Some(&host), client);
    let common = |host| Common {
        stamp: Stamp::now(),
        listener: b"web",
        client: Some(ClientText::new(client)),
        host,
    };
    let plain = common(Shown::plain(b"unfiled-load-test.cn"));
    // A client-supplied value that needs escaping (an unusable Host shown as sent).
    let hostile = common(Shown::as_sent(b"evil\"host\n\xff\xfe.cn"));
    let mut group = c.benchmark_group("log_line");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1024);
    group.bench_function("audit_json", |b| {
        b.iter(|| {
            out.clear();
            audit_request_line(&mut out, black_box(&plain), black_box(&r));
            black_box(out.len())
        })
    });
    group.bench_function("access_json", |b| {
        b.iter(|| {
            out.clear();
            access_line(&mut out, Style::Json, black_box(&plain), black_box(&r));
            black_box(out.len())
        })
    });
    group.bench_function("access_text", |b| {
        b.iter(|| {
            out.clear();
            access_line(&mut out, Style::Text, black_box(&plain), black_box(&r));
            black_box(out.len())
        })
    });
    group.bench_function("audit_json_escaped_host", |b| {
        b.iter(|| {
            out.clear();
            audit_request_line(&mut out, black_box(&hostile), black_box(&r));
            black_box(out.len())
        })
    });
    group.finish();

    // Both lines of a blocked request through the writers (to /dev/null).
    let dev_null = std::path::Path::new("/dev/null");
    let audit = LogWriter::open("audit", dev_null, 4, Duration::from_millis(200), counters())
        .expect("/dev/null");
    let access = LogWriter::open(
        "access",
        dev_null,
        4,
        Duration::from_millis(200),
        counters(),
    )
    .expect("/dev/null");
    let log = AccessLog::new(true, 1.0)
        .with_audit(audit.sink())
        .with_file(access.sink(), Style::Json);
    let mut group = c.benchmark_group("access_log");
    group.throughput(Throughput::Elements(1));
    group.bench_function("record_blocked_audit_and_access", |b| {
        b.iter(|| log.record(record(Some(black_box(&host)), client), String::new))
    });
    group.finish();
}

criterion_group!(benches, formatting);
criterion_main!(benches);
