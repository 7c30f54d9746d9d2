//! Decision-path benches: host normalization, the registry decision, and snapshot loading.
//!
//! Run:
//!   cargo bench --bench decision                  # full measurement
//!   cargo bench --bench decision -- decide        # one group (filter by name)
//!   cargo bench --bench decision -- --test        # run each bench once (smoke test)
//!   cargo test --benches                          # same, in the test profile
//!
//! The registries are synthetic and deterministic (seeded xorshift): names `<6-12 letters>.<tld>`
//! with a TLD mix of com 45%, cn 20%, com.cn 15%, net 8%, top 7% and 5% others (org, xyz, cc),
//! mostly `connected`. They are written with `SnapshotWriter` and loaded with `read_snapshot`, the
//! same path a real snapshot takes.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::OnceLock;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use icp_gate_registry::name::is_public_suffix;
use icp_gate_registry::{
    parse_authority, parse_registry_name, read_snapshot, BlockReason, Decision, Host, Registry,
    Requirement, SnapshotWriter, Status,
};

/// "Now" for decisions (unix seconds); the synthetic registry has no expiries.
const NOW: i64 = 1_800_000_000;

/// xorshift64*: small, fast and deterministic; good enough to spread names and statuses.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Cumulative TLD mix, in percent.
const TLD_MIX: [(&str, u64); 8] = [
    ("com", 45),
    ("cn", 65),
    ("com.cn", 80),
    ("net", 88),
    ("top", 95),
    ("org", 97),
    ("xyz", 99),
    ("cc", 100),
];

/// Cumulative status mix, in percent: mostly connected.
const STATUS_MIX: [(Status, u64); 5] = [
    (Status::Connected, 86),
    (Status::Unconnected, 92),
    (Status::AccessCancelled, 95),
    (Status::Revoked, 97),
    (Status::Denied, 100),
];

fn pick<T: Copy>(rng: &mut XorShift, mix: &[(T, u64)]) -> T {
    let roll = rng.below(100);
    mix.iter()
        .find(|(_, upto)| roll < *upto)
        .expect("mix ends at 100")
        .0
}

/// A synthetic registry: the snapshot bytes and the records as (name, status), in file order.
struct Synthetic {
    snapshot: Vec<u8>,
    records: Vec<(String, Status)>,
}

fn synthetic(entries: usize, seed: u64) -> Synthetic {
    let mut rng = XorShift::new(seed);
    let mut seen = HashSet::with_capacity(entries);
    let mut records = Vec::with_capacity(entries);
    while records.len() < entries {
        let len = 6 + rng.below(7) as usize;
        let label: String = (0..len)
            .map(|_| char::from(b'a' + rng.below(26) as u8))
            .collect();
        let name = format!("{label}.{}", pick(&mut rng, &TLD_MIX));
        if seen.contains(&name) {
            continue;
        }
        // A snapshot may not list a public suffix; with 6+ letter labels this is just a guard.
        if let Ok(Host::Domain(d)) = parse_registry_name(&name) {
            if is_public_suffix(&d) {
                continue;
            }
        }
        seen.insert(name.clone());
        records.push((name, pick(&mut rng, &STATUS_MIX)));
    }

    let mut w = SnapshotWriter::new(Vec::with_capacity(entries * 48), 1, "2027-01-15T08:00:00Z")
        .expect("writing to a Vec");
    for (i, (name, status)) in records.iter().enumerate() {
        let filing = format!("京ICP备{:08}号-1", i % 100_000_000);
        w.record(name, *status, Some(&filing), None)
            .expect("writing to a Vec");
    }
    Synthetic {
        snapshot: w.finish().expect("writing to a Vec"),
        records,
    }
}

fn load(snapshot: &[u8]) -> Registry {
    read_snapshot(snapshot)
        .expect("the synthetic snapshot is valid")
        .registry
}

/// The 100 000-entry registry, shared by the `decide` and `snapshot_build` groups.
fn large() -> &'static Synthetic {
    static LARGE: OnceLock<Synthetic> = OnceLock::new();
    LARGE.get_or_init(|| synthetic(100_000, 0x1C9_6A7E))
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
    let small = synthetic(1_000, 0xB0A7);
    let mut group = c.benchmark_group("decide");
    for (size, synth) in [(1_000usize, &small), (100_000, large())] {
        let registry = load(&synth.snapshot);
        assert_eq!(registry.len(), size);

        // A connected two-label name, so that "www.<name>" is a three-label host.
        let filed = synth
            .records
            .iter()
            .find(|(name, status)| *status == Status::Connected && name.ends_with(".com"))
            .map(|(name, _)| name.as_str())
            .expect("the mix has connected .com names");
        let exact = host(filed);
        let inherited = host(&format!("www.{filed}"));
        // Generated labels have 6 to 12 letters: a 16-letter one is never registered.
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
    let synth = large();
    let mut group = c.benchmark_group("snapshot_build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(synth.records.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("read_snapshot", synth.records.len()),
        &synth.snapshot[..],
        |b, bytes| {
            b.iter_with_large_drop(|| read_snapshot(black_box(bytes)).expect("valid snapshot"))
        },
    );
    group.finish();
}

criterion_group!(benches, bench_normalize, bench_decide, bench_snapshot_build);
criterion_main!(benches);
