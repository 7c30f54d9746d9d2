//! What is blocked, by name, in bounded memory (`GET /top/blocked`, and the
//! `icp_gate_blocked_names_estimate` gauge).
//!
//! Every blocked or monitored decision on a host (a request's Host, a TLS connection's SNI or
//! destination address) is counted twice: by the exact host, and by its registered domain (主域名,
//! `registry-sync`'s `registered_domain_start`), each under its decision and reason. The counts are
//! Space-Saving summaries (Metwally, Agrawal and El Abbadi, 2005) of a fixed capacity: a name that
//! is not held replaces the least counted one and inherits its count as its error, so
//!
//! - with fewer distinct keys than the capacity every count is exact (error 0);
//! - any key seen more than `total / capacity` times is held, whatever else arrives (a flood of
//!   random subdomains cannot push a heavy hitter out);
//! - a count is an upper bound, `count - error` a lower bound.
//!
//! The block path is the hot path, so each worker thread records into a shard of its own (a
//! mutex nobody else takes but the admin listener while it reads): no lock is shared between
//! threads, and nothing is allocated once a slot's name buffer has grown to the names it holds.
//! The last key is remembered, so a repeated name costs two counter increments; another name
//! held costs a hash and a table probe; a new name also costs a HyperLogLog update and a Public
//! Suffix List lookup (none for a subdomain of the last domain counted: a flood of random
//! subdomains). A reader merges the shards as mergeable summaries do (Agarwal et al., 2012): a
//! key's counts add up, and a full shard that does not hold the key adds its minimum to the
//! count and the error.
//!
//! Why not a `DashMap` of names: a concurrent map keyed by name has no cheap way to find the
//! least counted key to evict, and without eviction its memory grows with every distinct host.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::HashTable;
use hyperloglockless::AtomicHyperLogLog;
use icp_gate_registry::{registered_domain_start, BlockReason, DomainName, Host};
use parking_lot::Mutex;

use crate::gate::Outcome;

/// Default capacity of each summary (`admin.top_blocked_capacity`).
pub const DEFAULT_CAPACITY: usize = 1024;
/// HyperLogLog precision: 2^14 one-byte registers, a standard error of 0.8 %.
const HLL_PRECISION: u8 = 14;

/// Which names a list is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The host as decided (canonical form).
    Host,
    /// Its registered domain.
    Domain,
}

/// One line of `/top/blocked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopEntry {
    pub name: String,
    /// Blocked (false) or monitored (true).
    pub monitored: bool,
    pub reason: BlockReason,
    /// An upper bound of the decisions on this key since start.
    pub count: u64,
    /// `count - error` is a lower bound; 0 when the count is exact.
    pub error: u64,
}

impl TopEntry {
    pub fn decision(&self) -> &'static str {
        if self.monitored {
            "monitored"
        } else {
            "blocked"
        }
    }
}

/// The blocked names of the whole process, shared by every listener.
pub struct TopBlocked {
    shards: Box<[Padded<Mutex<Shard>>]>,
    capacity: usize,
    hasher: foldhash::quality::RandomState,
    /// Distinct names blocked, and monitored.
    names: [AtomicHyperLogLog; 2],
}

/// Keeps each shard's lock on a cache line of its own.
#[repr(align(128))]
struct Padded<T>(T);

struct Shard {
    hosts: Summary,
    domains: Summary,
    /// The host and domain slots of the last key recorded: nothing else changes the summaries
    /// between two records of this shard, so they still hold that key.
    last: Option<(u32, u32)>,
}

thread_local! {
    /// This thread's shard number (before the modulo), taken on its first record.
    static THREAD_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    THREAD_SHARD.with(|s| {
        let mut n = s.get();
        if n == usize::MAX {
            n = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(n);
        }
        n
    })
}

impl TopBlocked {
    /// Summaries of `capacity` keys per view, in `shards` shards (one per worker thread is
    /// best: threads beyond it share a shard, and so its lock). Memory: about
    /// `shards * 2 * capacity * (90 bytes + a name)`, and 32 KiB of HyperLogLog registers.
    pub fn new(capacity: usize, shards: usize) -> Self {
        let capacity = capacity.max(1);
        TopBlocked {
            shards: (0..shards.max(1))
                .map(|_| {
                    Padded(Mutex::new(Shard {
                        hosts: Summary::new(capacity),
                        domains: Summary::new(capacity),
                        last: None,
                    }))
                })
                .collect(),
            capacity,
            hasher: foldhash::quality::RandomState::default(),
            names: [
                AtomicHyperLogLog::new(HLL_PRECISION),
                AtomicHyperLogLog::new(HLL_PRECISION),
            ],
        }
    }

    /// Nothing is recorded (a gate without an admin listener has nobody to tell).
    pub fn disabled() -> Self {
        TopBlocked {
            shards: Box::new([]),
            capacity: 0,
            hasher: foldhash::quality::RandomState::default(),
            names: [AtomicHyperLogLog::new(4), AtomicHyperLogLog::new(4)],
        }
    }

    /// The most keys a list can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts one decision: blocked and monitored ones on a host; anything else (allowed, not
    /// ready, no usable host) is not a name to list.
    #[inline]
    pub fn record(&self, outcome: Outcome, host: Option<&Host>) {
        let (reason, monitored) = match outcome {
            Outcome::Blocked(r) => (r, false),
            Outcome::Monitored(r) => (r, true),
            _ => return,
        };
        let Some(host) = host else { return };
        if self.shards.is_empty() {
            return;
        }
        let kind = Kind::new(reason, monitored);
        let shard = &self.shards[thread_shard() % self.shards.len()].0;
        match host {
            Host::Domain(d) => self.record_name(shard, d.as_bytes(), kind, monitored, Some(d)),
            Host::Ip(ip) => {
                let mut text = [0u8; 48];
                self.record_name(shard, ip_bytes(*ip, &mut text), kind, monitored, None)
            }
        }
    }

    #[inline]
    fn record_name(
        &self,
        shard: &Mutex<Shard>,
        name: &[u8],
        kind: Kind,
        monitored: bool,
        domain: Option<&DomainName>,
    ) {
        let mut guard = shard.lock();
        let shard = &mut *guard;
        // The same key as this thread's last one (a flood of one name, a page's requests):
        // neither hashed nor looked up.
        if let Some((host_slot, domain_slot)) = shard.last {
            if shard.hosts.holds(host_slot, name, kind) {
                shard.hosts.increment(host_slot);
                shard.domains.increment(domain_slot);
                return;
            }
        }
        self.record_lookup(shard, name, kind, monitored, domain);
    }

    /// `record_name` for a key other than the last one: out of line, so that the repeated
    /// key's path stays small.
    #[inline(never)]
    fn record_lookup(
        &self,
        shard: &mut Shard,
        name: &[u8],
        kind: Kind,
        monitored: bool,
        domain: Option<&DomainName>,
    ) {
        let hash = self.hasher.hash_one(name);
        let host_slot = match shard.hosts.find(hash, name, kind) {
            Some(slot) => {
                shard.hosts.increment(slot);
                slot
            }
            None => {
                // New to this shard (maybe not to the process: counting it again is harmless).
                self.names[monitored as usize].insert_hash(hash);
                let last_domain = shard.last.map_or(u32::MAX, |(_, d)| d);
                let under_last = domain.and(shard.domains.parent_of(last_domain, name, kind));
                let (start, domain_hash, domain_slot, registrable) = match (domain, under_last) {
                    // An IP address: itself.
                    (None, _) => (0, hash, u32::MAX, false),
                    // A subdomain of the last key's registered domain has that one as its own
                    // (the list has no rule below a registrable domain): neither looked up in
                    // the list nor hashed. A flood of random subdomains takes this path.
                    (Some(_), Some(start)) => (
                        start,
                        shard.domains.slots[last_domain as usize].hash,
                        last_domain,
                        true,
                    ),
                    (Some(d), None) => match registered_domain_start(d) {
                        Some(0) => (0, hash, u32::MAX, true),
                        Some(start) => {
                            (start, self.hasher.hash_one(&name[start..]), u32::MAX, true)
                        }
                        // A public suffix used as a Host (`com.cn`): itself.
                        None => (0, hash, u32::MAX, false),
                    },
                };
                let slot =
                    shard
                        .hosts
                        .insert(hash, name, kind, start as u8, domain_hash, registrable);
                shard.hosts.slots[slot as usize].domain_slot = domain_slot;
                slot
            }
        };
        let host = &shard.hosts.slots[host_slot as usize];
        let (start, domain_hash, cached, registrable) = (
            host.domain_start as usize,
            host.domain_hash,
            host.domain_slot,
            host.registrable,
        );
        let domain = &name[start..];
        // The domain's slot as this host last found it, if no other domain has taken it since.
        let domain_slot = if shard.domains.holds(cached, domain, kind) {
            shard.domains.increment(cached);
            cached
        } else {
            let slot = match shard.domains.find(domain_hash, domain, kind) {
                Some(slot) => {
                    shard.domains.increment(slot);
                    slot
                }
                None => {
                    shard
                        .domains
                        .insert(domain_hash, domain, kind, 0, domain_hash, registrable)
                }
            };
            shard.hosts.slots[host_slot as usize].domain_slot = slot;
            slot
        };
        shard.last = Some((host_slot, domain_slot));
    }

    /// The `n` most counted keys of a view, most first (ties by name), of every decision or
    /// only blocked (`Some(false)`) or monitored (`Some(true)`) ones.
    pub fn top(&self, view: View, n: usize, monitored: Option<bool>) -> Vec<TopEntry> {
        // Each shard copied out under its lock, merged after.
        struct Merged {
            count: u64,
            error: u64,
            /// The minimum of each full shard that holds the key, added up.
            held_min: u64,
        }
        let mut merged: HashMap<(String, Kind), Merged> = HashMap::new();
        let mut full_min_total = 0u64;
        for shard in self.shards.iter() {
            let shard = shard.0.lock();
            let summary = match view {
                View::Host => &shard.hosts,
                View::Domain => &shard.domains,
            };
            let full_min = summary.full_min();
            full_min_total += full_min;
            for slot in &summary.slots {
                let name = String::from_utf8_lossy(&slot.name).into_owned();
                let m = merged.entry((name, slot.kind)).or_insert(Merged {
                    count: 0,
                    error: 0,
                    held_min: 0,
                });
                m.count += summary.count(slot);
                m.error += slot.error;
                m.held_min += full_min;
            }
        }
        let mut out: Vec<TopEntry> = merged
            .into_iter()
            .filter(|((_, kind), _)| monitored.is_none_or(|m| kind.monitored() == m))
            .map(|((name, kind), m)| {
                // A full shard without the key may have counted it up to its minimum.
                let unseen = full_min_total - m.held_min;
                TopEntry {
                    name,
                    monitored: kind.monitored(),
                    reason: kind.reason(),
                    count: m.count + unseen,
                    error: m.error + unseen,
                }
            })
            .collect();
        out.sort_unstable_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.monitored.cmp(&b.monitored))
                .then_with(|| a.reason.index().cmp(&b.reason.index()))
        });
        out.truncate(n);
        out
    }

    /// Estimated distinct names blocked (`false`) or monitored (`true`) since start.
    pub fn names_estimate(&self, monitored: bool) -> u64 {
        if self.shards.is_empty() {
            return 0;
        }
        self.names[monitored as usize].raw_count().round() as u64
    }
}

/// An IP host as text (an IPv6 one in brackets, as logs show it), written on the stack.
fn ip_bytes(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = match ip {
        IpAddr::V4(v4) => write!(cursor, "{v4}"),
        IpAddr::V6(v6) => write!(cursor, "[{v6}]"),
    };
    let len = cursor.position() as usize;
    &buf[..len]
}

/// A key's decision and reason in a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Kind(u8);

impl Kind {
    fn new(reason: BlockReason, monitored: bool) -> Self {
        Kind((reason.index() as u8) << 1 | monitored as u8)
    }

    fn monitored(self) -> bool {
        self.0 & 1 == 1
    }

    fn reason(self) -> BlockReason {
        BlockReason::ALL[(self.0 >> 1) as usize]
    }
}

/// One Space-Saving summary: at most `capacity` keys, their slots in a min-heap by count.
struct Summary {
    capacity: usize,
    slots: Vec<Slot>,
    /// Each slot's count and number, a min-heap on the counts: the root is the next to be
    /// replaced. The counts live here, beside what the heap compares.
    heap: Vec<HeapEntry>,
    /// Slot numbers by the hash of their name.
    index: HashTable<u32>,
}

#[derive(Clone, Copy)]
struct HeapEntry {
    count: u64,
    slot: u32,
}

struct Slot {
    /// The name (ASCII: a normalized domain or an IP address's text). The buffer is kept when
    /// the slot is taken over: it only grows, to the longest name it has held.
    name: Vec<u8>,
    kind: Kind,
    hash: u64,
    error: u64,
    /// Where this slot sits in `heap`.
    heap_pos: u32,
    /// Host view: where the registered domain starts in `name`, its hash, and the domain
    /// view's slot it was last found in (checked before use: another domain may hold it now).
    domain_start: u8,
    domain_hash: u64,
    domain_slot: u32,
    /// Whether the domain (the domain view's name; the host view's from `domain_start`) is a
    /// registered domain, not an IP address nor a public suffix: the names below it have it as
    /// theirs.
    registrable: bool,
}

impl Summary {
    fn new(capacity: usize) -> Self {
        Summary {
            capacity,
            slots: Vec::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
            // Twice the keys: removals leave tombstones, and with this much room the table is
            // rehashed in place, never grown.
            index: HashTable::with_capacity(2 * capacity),
        }
    }

    fn count(&self, slot: &Slot) -> u64 {
        self.heap[slot.heap_pos as usize].count
    }

    /// Whether `slot` holds this key.
    #[inline]
    fn holds(&self, slot: u32, name: &[u8], kind: Kind) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.kind == kind && s.name == name)
    }

    /// When `slot` holds a domain of this kind that `name` is a subdomain of: where it starts
    /// in `name`.
    #[inline]
    fn parent_of(&self, slot: u32, name: &[u8], kind: Kind) -> Option<usize> {
        let s = self.slots.get(slot as usize)?;
        let start = name.len().checked_sub(s.name.len() + 1)? + 1;
        (s.registrable && s.kind == kind && name[start - 1] == b'.' && name[start..] == s.name[..])
            .then_some(start)
    }

    #[inline]
    fn find(&self, hash: u64, name: &[u8], kind: Kind) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                let s = &slots[i as usize];
                s.kind == kind && s.name == name
            })
            .copied()
    }

    #[inline]
    fn increment(&mut self, slot: u32) {
        let pos = self.slots[slot as usize].heap_pos as usize;
        self.heap[pos].count += 1;
        // A leaf has nothing to sink below (the most counted keys end up there).
        if 2 * pos + 1 < self.heap.len() {
            self.sift_down(pos);
        }
    }

    /// Adds a key not held: into a free slot, or in place of the least counted key, whose
    /// count it takes (plus this one) as its error. Returns its slot.
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        hash: u64,
        name: &[u8],
        kind: Kind,
        domain_start: u8,
        domain_hash: u64,
        registrable: bool,
    ) -> u32 {
        if self.slots.len() < self.capacity {
            let i = self.slots.len() as u32;
            self.slots.push(Slot {
                name: name.to_vec(),
                kind,
                hash,
                error: 0,
                heap_pos: self.heap.len() as u32,
                domain_start,
                domain_hash,
                domain_slot: u32::MAX,
                registrable,
            });
            self.heap.push(HeapEntry { count: 1, slot: i });
            self.sift_up(self.heap.len() - 1);
            let slots = &self.slots;
            self.index
                .insert_unique(hash, i, |&j| slots[j as usize].hash);
            return i;
        }
        let HeapEntry {
            count,
            slot: victim,
        } = self.heap[0];
        let old_hash = self.slots[victim as usize].hash;
        if let Ok(entry) = self.index.find_entry(old_hash, |&j| j == victim) {
            entry.remove();
        }
        let s = &mut self.slots[victim as usize];
        s.name.clear();
        s.name.extend_from_slice(name);
        s.kind = kind;
        s.hash = hash;
        s.error = count;
        s.domain_start = domain_start;
        s.domain_hash = domain_hash;
        s.domain_slot = u32::MAX;
        s.registrable = registrable;
        self.heap[0].count += 1;
        self.sift_down(0);
        let slots = &self.slots;
        self.index
            .insert_unique(hash, victim, |&j| slots[j as usize].hash);
        victim
    }

    /// The least count when every slot is taken (a key not held was seen at most that often),
    /// else 0 (every key seen is held).
    fn full_min(&self) -> u64 {
        if self.slots.len() < self.capacity {
            0
        } else {
            self.heap.first().map_or(0, |e| e.count)
        }
    }

    /// Puts `entry` at `pos` and tells its slot.
    fn place(&mut self, pos: usize, entry: HeapEntry) {
        self.heap[pos] = entry;
        self.slots[entry.slot as usize].heap_pos = pos as u32;
    }

    fn sift_up(&mut self, mut pos: usize) {
        let moving = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let above = self.heap[parent];
            if above.count <= moving.count {
                break;
            }
            self.place(pos, above);
            pos = parent;
        }
        self.place(pos, moving);
    }

    fn sift_down(&mut self, mut pos: usize) {
        let len = self.heap.len();
        let moving = self.heap[pos];
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let mut child = left;
            if left + 1 < len && self.heap[left + 1].count < self.heap[left].count {
                child = left + 1;
            }
            let below = self.heap[child];
            if moving.count <= below.count {
                break;
            }
            self.place(pos, below);
            pos = child;
        }
        self.place(pos, moving);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icp_gate_registry::parse_authority;

    fn host(s: &str) -> Host {
        parse_authority(s.as_bytes()).unwrap()
    }

    fn block(top: &TopBlocked, name: &str, reason: BlockReason, times: usize) {
        let h = host(name);
        for _ in 0..times {
            top.record(Outcome::Blocked(reason), Some(&h));
        }
    }

    fn names(list: &[TopEntry]) -> Vec<(&str, u64, u64)> {
        list.iter()
            .map(|e| (e.name.as_str(), e.count, e.error))
            .collect()
    }

    #[test]
    fn exact_below_capacity_by_host_and_by_domain() {
        let top = TopBlocked::new(16, 1);
        block(&top, "a.unfiled.cn", BlockReason::Unfiled, 5);
        block(&top, "b.unfiled.cn", BlockReason::Unfiled, 3);
        block(&top, "www.other.com.cn", BlockReason::Unfiled, 4);
        block(&top, "203.0.113.9", BlockReason::IpUnfiled, 2);
        block(&top, "[2001:db8::9]", BlockReason::IpUnfiled, 1);
        let hosts = top.top(View::Host, 10, None);
        assert_eq!(
            names(&hosts),
            [
                ("a.unfiled.cn", 5, 0),
                ("www.other.com.cn", 4, 0),
                ("b.unfiled.cn", 3, 0),
                ("203.0.113.9", 2, 0),
                ("[2001:db8::9]", 1, 0),
            ]
        );
        assert_eq!(hosts[3].reason, BlockReason::IpUnfiled);
        let domains = top.top(View::Domain, 10, None);
        assert_eq!(
            names(&domains),
            [
                ("unfiled.cn", 8, 0),
                ("other.com.cn", 4, 0),
                ("203.0.113.9", 2, 0),
                ("[2001:db8::9]", 1, 0),
            ]
        );
        assert_eq!(names(&top.top(View::Host, 2, None)).len(), 2);
    }

    #[test]
    fn decisions_and_reasons_are_counted_apart() {
        let top = TopBlocked::new(16, 1);
        let h = host("x.cn");
        top.record(Outcome::Blocked(BlockReason::Unfiled), Some(&h));
        top.record(Outcome::Blocked(BlockReason::Denied), Some(&h));
        top.record(Outcome::Monitored(BlockReason::Unfiled), Some(&h));
        top.record(Outcome::Monitored(BlockReason::Unfiled), Some(&h));
        // Not names to list.
        top.record(Outcome::Allowed, Some(&h));
        top.record(Outcome::NotReady, Some(&h));
        top.record(Outcome::Blocked(BlockReason::InvalidHost), None);
        let all = top.top(View::Host, 10, None);
        assert_eq!(all.len(), 3);
        assert_eq!((all[0].monitored, all[0].count), (true, 2));
        let blocked = top.top(View::Host, 10, Some(false));
        assert_eq!(blocked.len(), 2);
        assert!(blocked.iter().all(|e| !e.monitored));
        assert_eq!(top.top(View::Host, 10, Some(true)).len(), 1);
        assert_eq!(top.names_estimate(false), 1);
        assert_eq!(top.names_estimate(true), 1);
    }

    #[test]
    fn heavy_hitters_survive_a_flood_in_bounded_memory() {
        let top = TopBlocked::new(64, 2);
        let mut flood = 0u64;
        std::thread::scope(|s| {
            for t in 0..2 {
                let top = &top;
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        block(top, &format!("r{t}x{i}.flood.cn"), BlockReason::Unfiled, 1);
                        if i % 20 == 0 {
                            block(top, "heavy.cn", BlockReason::Denied, 1);
                        }
                        if i % 40 == 0 {
                            block(top, "second.heavy.cn", BlockReason::Denied, 1);
                        }
                    }
                });
            }
        });
        flood += 40_000;
        let list = top.top(View::Host, 2, None);
        assert_eq!(list[0].name, "heavy.cn");
        assert_eq!(list[1].name, "second.heavy.cn");
        // Upper and lower bounds hold the truth.
        let truth = [2_000u64, 1_000];
        for (e, t) in list.iter().zip(truth) {
            assert!(e.count >= t && e.count - e.error <= t, "{e:?} vs {t}");
        }
        // Each summary holds its capacity and no more.
        for shard in top.shards.iter() {
            let s = shard.0.lock();
            assert_eq!(s.hosts.slots.len(), 64);
            assert!(s.hosts.index.len() <= 64);
        }
        // By domain the flood is one name.
        let domains = top.top(View::Domain, 1, None);
        assert_eq!(
            (domains[0].name.as_str(), domains[0].count),
            ("flood.cn", flood)
        );
        // Distinct names: the flood and the two heavy hitters, within 3 %.
        let estimate = top.names_estimate(false) as f64;
        let truth = (flood + 2) as f64;
        assert!(
            (estimate - truth).abs() / truth < 0.03,
            "{estimate} vs {truth}"
        );
    }

    #[test]
    fn heap_keeps_the_least_counted_at_the_root() {
        let mut s = Summary::new(8);
        let mut counts: HashMap<String, u64> = HashMap::new();
        let hasher = foldhash::quality::RandomState::default();
        let kind = Kind::new(BlockReason::Unfiled, false);
        for i in 0..5_000u64 {
            // A skewed stream: small names often, large ones rarely.
            let name = format!("n{}", (i * 7919) % (1 + i % 37));
            *counts.entry(name.clone()).or_default() += 1;
            let hash = hasher.hash_one(name.as_bytes());
            match s.find(hash, name.as_bytes(), kind) {
                Some(slot) => s.increment(slot),
                None => {
                    s.insert(hash, name.as_bytes(), kind, 0, hash, false);
                }
            }
            let min = s.slots.iter().map(|x| s.count(x)).min().unwrap();
            assert_eq!(s.heap[0].count, min);
            for (pos, entry) in s.heap.iter().enumerate() {
                assert_eq!(s.slots[entry.slot as usize].heap_pos as usize, pos);
                if pos > 0 {
                    assert!(s.heap[(pos - 1) / 2].count <= entry.count);
                }
            }
        }
        for slot in &s.slots {
            let truth = counts[std::str::from_utf8(&slot.name).unwrap()];
            let count = s.count(slot);
            assert!(count >= truth && count - slot.error <= truth);
        }
    }

    #[test]
    fn bounds_hold_for_every_key_held_in_both_views() {
        // Small summaries and few domains, so that domain slots are taken over under the hosts
        // that last found them, and the memo of the last key is exercised between repeats.
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..20 {
            let top = TopBlocked::new(6, 1);
            let mut hosts: HashMap<String, u64> = HashMap::new();
            let mut domains: HashMap<String, u64> = HashMap::new();
            let records = 3_000;
            for _ in 0..records {
                // Skewed: low numbers often.
                let (dmax, hmax) = (rng.u32(0..12), rng.u32(0..4));
                let (d, h) = (rng.u32(0..=dmax), rng.u32(0..=hmax));
                let name = format!("h{h}.d{d}.cn");
                let repeat = 1 + rng.usize(0..3) * (round % 2);
                for _ in 0..repeat {
                    block(&top, &name, BlockReason::Unfiled, 1);
                    *hosts.entry(name.clone()).or_default() += 1;
                    *domains.entry(format!("d{d}.cn")).or_default() += 1;
                }
            }
            for (view, truth) in [(View::Host, &hosts), (View::Domain, &domains)] {
                let list = top.top(view, 6, None);
                let total: u64 = truth.values().sum();
                assert_eq!(list.iter().map(|e| e.count).sum::<u64>(), total);
                for e in &list {
                    let t = truth[&e.name];
                    assert!(
                        e.count >= t && e.count - e.error <= t,
                        "{view:?} {e:?}: {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_domain_slot_taken_over_is_not_counted_for_the_host_that_found_it() {
        // r.s1.cn keeps its host slot (it inherited a high count) while s1.cn loses its domain
        // slot to s2.cn: r.s1.cn's next request must count for s1.cn, not s2.cn.
        let top = TopBlocked::new(2, 1);
        block(&top, "p.big.cn", BlockReason::Unfiled, 10);
        block(&top, "q.big.cn", BlockReason::Unfiled, 10);
        block(&top, "r.s1.cn", BlockReason::Unfiled, 1);
        block(&top, "t.s2.cn", BlockReason::Unfiled, 1);
        block(&top, "r.s1.cn", BlockReason::Unfiled, 1);
        let domains = top.top(View::Domain, 2, None);
        assert_eq!(
            names(&domains),
            [("big.cn", 20, 0), ("s1.cn", 3, 2)],
            "{domains:?}"
        );
    }

    #[test]
    fn subdomains_of_the_last_domain_and_public_suffixes_as_hosts() {
        let top = TopBlocked::new(16, 1);
        // A public suffix as a Host is its own name; the next name below it is not under it.
        block(&top, "com.cn", BlockReason::Unfiled, 1);
        block(&top, "foo.com.cn", BlockReason::Unfiled, 1);
        // Subdomains one after another (the shortcut), of several depths, and another reason.
        block(&top, "x.example.cn", BlockReason::Unfiled, 1);
        block(&top, "y.example.cn", BlockReason::Unfiled, 1);
        block(&top, "a.b.example.cn", BlockReason::Unfiled, 1);
        block(&top, "z.example.cn", BlockReason::Denied, 1);
        // A name that ends like the last domain without being below it.
        block(&top, "badexample.cn", BlockReason::Denied, 1);
        let domains = top.top(View::Domain, 10, None);
        let got: Vec<(&str, u64, &str)> = domains
            .iter()
            .map(|e| (e.name.as_str(), e.count, e.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("example.cn", 3, "unfiled"),
                ("badexample.cn", 1, "denied"),
                ("com.cn", 1, "unfiled"),
                ("example.cn", 1, "denied"),
                ("foo.com.cn", 1, "unfiled"),
            ]
        );
    }

    #[test]
    fn disabled_records_nothing() {
        let top = TopBlocked::disabled();
        block(&top, "x.cn", BlockReason::Unfiled, 3);
        assert!(top.top(View::Host, 10, None).is_empty());
        assert_eq!(top.names_estimate(false), 0);
    }
}
