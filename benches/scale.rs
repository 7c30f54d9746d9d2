//! The registry at national scale: load time, resident memory and decision latency percentiles.
//!
//! Run:
//!   cargo bench --bench scale                          # 10 000 000 records
//!   ICP_GATE_SCALE_RECORDS=1000000 cargo bench --bench scale
//!   cargo test --bench scale                           # a 20 000-record smoke run
//!
//! It writes a synthetic snapshot (see `icp_gate_registry::synthetic`) to a temporary file, loads
//! it on this thread the way the sync worker does, and reports:
//! - parse + check + build time, and the resident-size growth of the process (from
//!   /proc/self/statm, not an estimate), per record and per record beyond the names' text;
//! - per-decision latency percentiles for random three-label hosts (hits on subdomains of
//!   registered names, and misses), each timed alone with `Instant` (the timer's own cost,
//!   measured in the same run, is printed beside them), every name equally likely: each
//!   decision goes to memory the caches do not hold, the worst case;
//! - the machine's floor for a cold decision: the latency of one dependent memory access in a
//!   buffer the registry's size, on huge pages like the index (a pointer chase);
//! - the worst decision latency seen on another thread while a second registry of the same size
//!   is loaded, swapped in and the first one freed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icp_gate_registry::synthetic::{self, Rng};
use icp_gate_registry::{parse_authority, read_snapshot_sized, Decision, Host, Requirement};

const NOW: i64 = 1_800_000_000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The latency of one dependent load from memory: a pointer chase through a random cycle over a
/// `bytes`-sized buffer, one 64-byte line per step, advised for transparent huge pages as the
/// registry's index is. A cold decision cannot be faster than the accesses it depends on.
fn dependent_access_ns(bytes: usize, rng: &mut Rng) -> f64 {
    const LINE: usize = 64 / std::mem::size_of::<usize>();
    let lines = (bytes / 64).max(1024);
    let mut buf = vec![0usize; lines * LINE + 4096];
    // Huge pages: advise the 2 MiB-aligned middle of the buffer.
    let start = (buf.as_mut_ptr() as usize).next_multiple_of(2 << 20);
    let end = (buf.as_ptr() as usize + buf.len() * std::mem::size_of::<usize>()) & !((2 << 20) - 1);
    if end > start {
        // SAFETY: the range lies inside `buf`'s allocation; MADV_HUGEPAGE changes no contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    // Sattolo's algorithm: a single cycle through every line, in random order.
    let mut order: Vec<usize> = (0..lines).collect();
    for i in (1..lines).rev() {
        let j = rng.below(i as u64) as usize;
        order.swap(i, j);
    }
    for (i, &line) in order.iter().enumerate() {
        buf[line * LINE] = order[(i + 1) % lines] * LINE;
    }
    drop(order);
    let steps = 2_000_000;
    let mut at = 0;
    let started = Instant::now();
    for _ in 0..steps {
        at = buf[at];
    }
    let took = started.elapsed();
    std::hint::black_box(at);
    took.as_nanos() as f64 / steps as f64
}

fn host(text: &str) -> Host {
    parse_authority(text.as_bytes()).expect("valid host")
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let records: u64 = std::env::var("ICP_GATE_SCALE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench_mode { 10_000_000 } else { 20_000 });

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("registry.tsv");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    synthetic::write_snapshot(file, records, 42, 1).expect("write snapshot");
    let size = std::fs::metadata(&path).expect("stat").len();
    println!("records: {records}");
    println!("snapshot: {:.1} MB", size as f64 / 1e6);

    let before = resident_bytes();
    let started = Instant::now();
    let snapshot =
        read_snapshot_sized(std::fs::File::open(&path).expect("open"), Some(size)).expect("valid");
    let load = started.elapsed();
    let after = resident_bytes();
    let registry = snapshot.registry;
    assert_eq!(registry.len() as u64, records);
    let (index_bytes, name_bytes) = registry.memory();
    let grown = after.saturating_sub(before);
    println!(
        "load (parse, verify, build; one thread): {:.2} s",
        load.as_secs_f64()
    );
    println!(
        "resident growth: {:.1} MB = {:.1} bytes/record; names' text {:.1} bytes/record; \
         beyond the names {:.1} bytes/record",
        grown as f64 / 1e6,
        grown as f64 / records as f64,
        name_bytes as f64 / records as f64,
        grown.saturating_sub(name_bytes as u64) as f64 / records as f64
    );
    println!(
        "index (computed): {:.1} bytes/record beyond the names",
        index_bytes as f64 / records as f64
    );
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("AnonHugePages"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        .unwrap_or_default();
    println!("transparent huge pages in use: {huge} kB");

    // Latency of single decisions on random three-label hosts.
    let names: Vec<String> = synthetic::records(records, 42).map(|(n, _)| n).collect();
    let mut rng = Rng::new(7);
    let samples = if bench_mode { 1_000_000 } else { 20_000 };
    let hits: Arc<Vec<Host>> = (0..samples)
        .map(|_| host(&format!("www.{}", names[rng.below(records) as usize])))
        .collect::<Vec<_>>()
        .into();
    let misses: Vec<Host> = (0..samples)
        .map(|_| host(&format!("www.q{}", names[rng.below(records) as usize])))
        .collect();
    drop(names);
    let timer_cost = {
        let mut t: Vec<u64> = (0..samples)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(());
                s.elapsed().as_nanos() as u64
            })
            .collect();
        t.sort_unstable();
        percentile(&t, 0.5)
    };
    for (label, hosts) in [("hit (inherited)", &*hits), ("miss (unfiled)", &misses)] {
        let mut t: Vec<u64> = hosts
            .iter()
            .map(|h| {
                let s = Instant::now();
                let d = registry.decide(std::hint::black_box(h), Requirement::Filed, NOW);
                std::hint::black_box(d);
                s.elapsed().as_nanos() as u64
            })
            .collect();
        t.sort_unstable();
        println!(
            "decision {label}: p50 {} ns, p99 {} ns, p99.9 {} ns (timer alone: p50 {timer_cost} ns)",
            percentile(&t, 0.5),
            percentile(&t, 0.99),
            percentile(&t, 0.999)
        );
    }
    println!(
        "memory floor: one dependent access in a {:.0} MB buffer on huge pages: {:.0} ns",
        (index_bytes + name_bytes) as f64 / 1e6,
        dependent_access_ns(index_bytes + name_bytes, &mut rng)
    );

    let allowed = hits
        .iter()
        .filter(|h| registry.decide(h, Requirement::Filed, NOW) != Decision::Allow)
        .count();
    println!("(hits not allowed on a filed listener: {allowed}: revoked or denied records)");

    // Decisions on another thread while a second registry is loaded and swapped in.
    let handle = icp_gate_registry::RegistryHandle::new();
    let mut syncer = icp_gate_registry::Syncer::new(
        icp_gate_registry::SnapshotSource::File(path.clone()),
        handle.clone(),
    );
    drop(registry);
    syncer.sync_once();
    // The worst single decision on another thread over a window, with a swap in that window or
    // without: the difference is what a swap costs requests. The window is cut in phases (the
    // closure moves `phase` on); the worst is kept per phase.
    const PHASES: usize = 2;
    let watch = |during: &dyn Fn(&AtomicUsize)| {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let worker = {
            let handle = handle.clone();
            let stop = stop.clone();
            let phase = phase.clone();
            let hits = hits.clone();
            std::thread::spawn(move || {
                let mut worst = [Duration::ZERO; PHASES];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let h = &hits[(n as usize) % hits.len()];
                    let s = Instant::now();
                    let guard = handle.load();
                    let d = guard
                        .as_ref()
                        .map(|r| r.registry.decide(h, Requirement::Filed, NOW));
                    drop(guard);
                    std::hint::black_box(d);
                    let p = phase.load(Ordering::Relaxed).min(PHASES - 1);
                    worst[p] = worst[p].max(s.elapsed());
                    n += 1;
                }
                (worst, n)
            })
        };
        let started = Instant::now();
        during(&phase);
        let took = started.elapsed();
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let (worst, n) = worker.join().expect("worker");
        (took, worst, n)
    };
    let (window, idle_worst, idle_n) = watch(&|_| {
        // As long as a load takes, with no swap: the machine's own noise.
        std::thread::sleep(load);
    });
    let idle_worst = idle_worst.iter().max().copied().unwrap_or_default();
    let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    synthetic::write_snapshot(file, records, 42, 2).expect("write snapshot");
    let swap_time = std::sync::Mutex::new(Duration::ZERO);
    let (took, swap_worst, swap_n) = watch(&|phase| {
        // Phase 0: the second snapshot loads on this thread (as on the sync thread).
        let size = std::fs::metadata(&path).expect("stat").len();
        let next = read_snapshot_sized(std::fs::File::open(&path).expect("open"), Some(size))
            .expect("valid");
        // Phase 1: it is swapped in and the first one freed (in `offer`, on this thread).
        phase.store(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = syncer.offer(next);
        *swap_time.lock().unwrap() = started.elapsed();
        assert!(matches!(
            outcome,
            icp_gate_registry::SyncOutcome::Loaded { .. }
        ));
    });
    println!(
        "second load + swap + free of the first: {:.2} s (swap and free: {} ms)",
        took.as_secs_f64(),
        swap_time.lock().unwrap().as_millis()
    );
    println!(
        "worst single decision on another thread: {} us during the load, {} us during the swap \
         and free ({swap_n} decisions); {} us over a {:.2} s window without either ({idle_n} \
         decisions)",
        swap_worst[0].as_micros(),
        swap_worst[1].as_micros(),
        idle_worst.as_micros(),
        window.as_secs_f64()
    );
}
