//! Decision-path benches: host normalization, the registry decision, and snapshot loading.
//!
//! Run:
//!   cargo bench --bench decision                  # full measurement: 1k, 1M and 10M records
//!   cargo bench --bench decision -- decide        # one group (filter by name)
//!   ICP_GATE_BENCH_SIZES=1000000 cargo bench --bench decision   # chosen registry sizes
//!   cargo test --benches                          # each bench once, small registries only
//!
//! Registries come from `icp_gate_registry::synthetic` (deterministic; TLD mix of com 45%,
//! cn 20%, com.cn 15%, net 8%, top 7%, others 5%; mostly `connected`), written as a snapshot and
//! loaded with `read_snapshot`, the path a real snapshot takes. See also `benches/scale.rs` for
//! latency percentiles and resident memory at 10M records.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use icp_gate_registry::synthetic::{self, Rng};
use icp_gate_registry::{
    parse_authority, read_snapshot, BlockReason, Decision, Host, Registry, Requirement, Status,
};

/// "Now" for decisions (unix seconds); the synthetic registry has no expiries.
const NOW: i64 = 1_800_000_000;

/// Registry sizes: the 1k, 1M and 10M under `cargo bench`; small ones when the bench
/// only runs as a test.
fn sizes() -> Vec<u64> {
    if let Ok(list) = std::env::var("ICP_GATE_BENCH_SIZES") {
        return list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
    }
    if std::env::args().any(|a| a == "--bench") {
        vec![1_000, 1_000_000, 10_000_000]
    } else {
        vec![1_000, 10_000]
    }
}

struct Synthetic {
    snapshot: Vec<u8>,
    records: Vec<(String, Status)>,
}

fn synthetic(entries: u64, seed: u64) -> Synthetic {
    Synthetic {
        snapshot: synthetic::write_snapshot(Vec::new(), entries, seed, 1).expect("to a Vec"),
        records: synthetic::records(entries, seed).collect(),
    }
}

fn load(snapshot: &[u8]) -> Registry {
    read_snapshot(snapshot)
        .expect("the synthetic snapshot is valid")
        .registry
}

fn host(text: &str) -> Host {
    parse_authority(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn bench_normalize(c: &mut Criterion) {
    let long = format!(
        "{}.{}.{}.{}.example.com",
        "a".repeat(47),
        "b".repeat(46),
        "c".repeat(46),
        "d".repeat(46)
    );
    assert_eq!(long.len(), 200);
    let cases = [
        ("ascii_port", "www.example.com:8080".to_owned()),
        ("unicode", "www.例子.中国".to_owned()),
        ("200_bytes", long),
    ];

    let mut group = c.benchmark_group("normalize");
    for (id, raw) in &cases {
        host(raw); // must be accepted, or the bench measures the error path
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(id), raw.as_bytes(), |b, raw| {
            b.iter(|| parse_authority(black_box(raw)))
        });
    }
    group.finish();
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    let mut build = None;
    for size in sizes() {
        let synth = synthetic(size, 0xB0A7 + size);
        let registry = load(&synth.snapshot);
        assert_eq!(registry.len() as u64, size);
        if build.is_none() {
            build = Some(synth.snapshot.len());
        }

        // A connected two-label name, so that "www.<name>" is a three-label host.
        let filed = synth
            .records
            .iter()
            .find(|(name, status)| *status == Status::Connected && name.ends_with(".com"))
            .map(|(name, _)| name.as_str())
            .expect("the mix has connected .com names");
        let exact = host(filed);
        let inherited = host(&format!("www.{filed}"));
        // Generated names are 8 to 12 letters before the TLD: 16 letters are never registered.
        let miss = host("www.thisisnotfiled.com");

        let require = Requirement::Connected;
        assert_eq!(registry.decide(&exact, require, NOW), Decision::Allow);
        assert_eq!(registry.decide(&inherited, require, NOW), Decision::Allow);
        assert_eq!(
            registry.decide(&miss, require, NOW),
            Decision::Block(BlockReason::Unfiled)
        );

        for (id, h) in [
            ("hit_exact", &exact),
            ("hit_inherited", &inherited),
            ("miss_unfiled", &miss),
        ] {
            group.bench_with_input(BenchmarkId::new(id, size), h, |b, h| {
                b.iter(|| registry.decide(black_box(h), require, NOW))
            });
        }

        // Many different three-label hosts, so the registry's memory is not all in cache: the
        // hit half are subdomains of random registered names, the other half unfiled.
        let mut rng = Rng::new(size);
        let hosts: Vec<Host> = (0..4096)
            .map(|i| {
                let (name, _) = &synth.records[rng.below(size) as usize];
                if i % 2 == 0 {
                    host(&format!("www.{name}"))
                } else {
                    host(&format!("www.x{name}"))
                }
            })
            .collect();
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("random_three_label", size), |b| {
            b.iter(|| {
                next = (next + 1) & 4095;
                registry.decide(black_box(&hosts[next]), require, NOW)
            })
        });

        // What a request pays end to end: the raw Host header to a decision.
        let raw = format!("www.{filed}:443");
        group.bench_with_input(
            BenchmarkId::new("host_header_inherited", size),
            raw.as_bytes(),
            |b, raw| {
                b.iter(|| {
                    let h = parse_authority(black_box(raw)).expect("valid host");
                    registry.decide(&h, require, NOW)
                })
            },
        );
    }
    group.finish();
}

fn bench_snapshot_build(c: &mut Criterion) {
    let size = *sizes().last().expect("sizes") / 10;
    let snapshot = synthetic::write_snapshot(Vec::new(), size, 0x1C9_6A7E, 1).expect("to a Vec");
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(size));
    group.bench_with_input(
        BenchmarkId::new("read_snapshot", size),
        &snapshot[..],
        |b, bytes| {
            b.iter_with_large_drop(|| read_snapshot(black_box(bytes)).expect("valid snapshot"))
        },
    );
    group.finish();
}

criterion_group!(benches, bench_normalize, bench_decide, bench_snapshot_build);
criterion_main!(benches);
