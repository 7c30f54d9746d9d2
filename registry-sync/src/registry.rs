//! The in-memory registry of filings and the decision it gives for a host.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::index::{self, InsertError as IndexInsertError, NameIndex};
use crate::name::{DomainName, Host};

/// Filing status of a registry record (snapshot format v1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Filed, and connected to this provider (已接入).
    Connected,
    /// Filed through another provider, not connected here (未接入).
    Unconnected,
    /// Connection cancelled (取消接入); the filing number still exists.
    AccessCancelled,
    /// Filing cancelled (注销).
    Revoked,
    /// Blocked by the operator or the regulator, whatever its filing.
    Denied,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Connected,
        Status::Unconnected,
        Status::AccessCancelled,
        Status::Revoked,
        Status::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::Unconnected => "unconnected",
            Status::AccessCancelled => "access_cancelled",
            Status::Revoked => "revoked",
            Status::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What a listener requires before it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Filed and connected to this provider (hosting).
    Connected,
    /// Any valid filing, connected here or not (CDN, WAF, object-storage custom domains).
    Filed,
}

/// Why a request is not forwarded. The string forms are the `X-ICP-Block-Reason` values and the
/// `reason` metric label of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockReason {
    Unconnected,
    Revoked,
    Denied,
    Unfiled,
    IpUnfiled,
    InvalidHost,
}

impl BlockReason {
    pub const ALL: [BlockReason; 6] = [
        BlockReason::Unconnected,
        BlockReason::Revoked,
        BlockReason::Denied,
        BlockReason::Unfiled,
        BlockReason::IpUnfiled,
        BlockReason::InvalidHost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Unconnected => "unconnected",
            BlockReason::Revoked => "revoked",
            BlockReason::Denied => "denied",
            BlockReason::Unfiled => "unfiled",
            BlockReason::IpUnfiled => "ip_unfiled",
            BlockReason::InvalidHost => "invalid_host",
        }
    }

    pub fn parse(s: &str) -> Option<BlockReason> {
        BlockReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// HTTP status of the answer: 400 for a request without a usable host, 403 otherwise.
    pub fn http_status(self) -> u16 {
        match self {
            BlockReason::InvalidHost => 400,
            _ => 403,
        }
    }

    /// Dense index, for per-reason tables (metrics, templates).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The outcome for one request's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Block(BlockReason),
}

/// One registry record after loading: what a decision needs. Filing numbers are checked when a
/// snapshot is read but not kept: no decision uses them, and at national scale they would cost
/// as much memory as the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub status: Status,
    /// Unix seconds after which the record counts as `unconnected`.
    pub expires_at: Option<i64>,
}

impl Entry {
    /// The status in force at `now` (unix seconds). After its expiry a `connected` record counts
    /// as `unconnected` (a provisional allowance has lapsed). Expiry only ever takes an
    /// allowance away: a `revoked` or `denied` record stays what it is, or a `filed` listener
    /// would start forwarding it once it expired.
    pub fn status_at(&self, now: i64) -> Status {
        match (self.status, self.expires_at) {
            (Status::Connected, Some(t)) if now > t => Status::Unconnected,
            (status, _) => status,
        }
    }
}

/// Why a record could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// A record with the same (normalized) name is already there.
    Duplicate,
    /// The registry's name storage would pass 4 GiB.
    TooLarge,
}

/// How many labels of a host are looked up together (hashed and prefetched at once); deeper
/// names are walked one label at a time past that.
const BATCH: usize = 8;

/// A record's key: a normalized domain name (lower-case A-labels) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Domain(Box<[u8]>),
    Ip(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Domain(name) => f.write_str(&String::from_utf8_lossy(name)),
            Key::Ip(ip) => Host::Ip(*ip).fmt(f),
        }
    }
}

/// One change a delta makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Add the record, or replace the one with the same name.
    Upsert(Key, Entry),
    /// Remove the record of that name; it must exist.
    Remove(Key),
}

/// Domain changes over a shared index: `Some` an added or changed record, `None` a removed one.
/// Holds only what differs from the index. Keyed foldhash, like the index (see `index`).
type Overlay = HashMap<Box<[u8]>, Option<Entry>, foldhash::quality::RandomState>;

/// The filings in service: domain records (each covering its subdomains) and IP records.
///
/// The domain index is shared (`Arc`) between a registry and the ones deltas derive from it; a
/// delta's domain changes live in a small overlay consulted before the index, only when it is
/// not empty, until `compact` folds them into a fresh index.
#[derive(Default, Clone, Debug)]
pub struct Registry {
    domains: Arc<NameIndex>,
    ips: Arc<HashMap<IpAddr, Entry>>,
    overlay: Overlay,
    /// Domain records added by the overlay minus those it removes.
    overlay_adjust: isize,
}

/// A registry being built, record by record (a snapshot as it streams in); `finish` makes it
/// the `Registry`. Kept apart so that adding a record touches the index directly, not through
/// the `Arc` a registry shares it by (a check of the reference count per record was 3% of a
/// 10M-record load).
#[derive(Default, Clone, Debug)]
pub struct RegistryBuilder {
    domains: NameIndex,
    ips: HashMap<IpAddr, Entry>,
}

impl RegistryBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record. A duplicate IP is refused here; a duplicate domain name by `finish`.
    pub fn insert(&mut self, host: &Host, entry: Entry) -> Result<(), InsertError> {
        use std::collections::hash_map::Entry as Slot;
        match host {
            Host::Domain(d) => self.insert_domain(d.as_bytes(), entry),
            Host::Ip(ip) => match self.ips.entry(*ip) {
                Slot::Occupied(_) => Err(InsertError::Duplicate),
                Slot::Vacant(v) => {
                    v.insert(entry);
                    Ok(())
                }
            },
        }
    }

    /// Makes room for about `records` domain records with `name_bytes` of names in all.
    pub fn reserve(&mut self, records: usize, name_bytes: usize) {
        self.domains.reserve(records, name_bytes);
    }

    /// Adds a domain record by its normalized name (bulk loading; see `insert`).
    pub fn insert_domain(&mut self, name: &[u8], entry: Entry) -> Result<(), InsertError> {
        self.domains
            .push(name, entry.status, entry.expires_at)
            .map_err(|IndexInsertError::ArenaFull| InsertError::TooLarge)
    }

    /// Done adding records: builds the index. Fails with a name listed twice.
    pub fn finish(mut self) -> Result<Registry, String> {
        self.ips.shrink_to_fit();
        self.domains
            .finish()
            .map_err(|name| String::from_utf8_lossy(&name).into_owned())?;
        Ok(Registry {
            domains: Arc::new(self.domains),
            ips: Arc::new(self.ips),
            overlay: Overlay::default(),
            overlay_adjust: 0,
        })
    }
}

impl Registry {
    /// A registry with no records.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        ((self.domains.len() + self.ips.len()) as isize + self.overlay_adjust) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Domain changes held in the overlay (0 for a registry loaded from a snapshot).
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// The record of exactly this name, if there is one (no walk to parents).
    pub fn get(&self, key: &Key) -> Option<Entry> {
        match key {
            Key::Ip(ip) => self.ips.get(ip).copied(),
            Key::Domain(name) => self.get_domain(name),
        }
    }

    /// The record of exactly this normalized domain name: the overlay first (a removed record
    /// is `None` there), then the index. One step of the label walk when deltas changed names
    /// (`covering`), and of `explain`'s.
    pub(crate) fn get_domain(&self, name: &[u8]) -> Option<Entry> {
        match self.overlay.get(name) {
            Some(changed) => *changed,
            None => self.domains.get(name).map(entry_of),
        }
    }

    /// This registry with `changes` applied, sharing the domain index: O(changes), plus a copy
    /// of the overlay (and of the IP records when a change touches one). Fails, naming the
    /// record, when a change removes a name that has no record.
    pub fn apply(&self, changes: &[Change]) -> Result<Registry, String> {
        let mut next = self.clone();
        for change in changes {
            match change {
                Change::Upsert(Key::Ip(ip), entry) => {
                    Arc::make_mut(&mut next.ips).insert(*ip, *entry);
                }
                Change::Remove(key @ Key::Ip(ip)) => {
                    if Arc::make_mut(&mut next.ips).remove(ip).is_none() {
                        return Err(format!("removes `{key}`, which has no record"));
                    }
                }
                Change::Upsert(Key::Domain(name), entry) => {
                    let existed = next.get(&Key::Domain(name.clone())).is_some();
                    if next.domains.get(name).map(entry_of) == Some(*entry) {
                        next.overlay.remove(name);
                    } else {
                        next.overlay.insert(name.clone(), Some(*entry));
                    }
                    if !existed {
                        next.overlay_adjust += 1;
                    }
                }
                Change::Remove(key @ Key::Domain(name)) => {
                    if next.get(key).is_none() {
                        return Err(format!("removes `{key}`, which has no record"));
                    }
                    if next.domains.get(name).is_some() {
                        next.overlay.insert(name.clone(), None);
                    } else {
                        next.overlay.remove(name);
                    }
                    next.overlay_adjust -= 1;
                }
            }
        }
        Ok(next)
    }

    /// The same records in a fresh index of their own, with an empty overlay: what a registry
    /// built from the equivalent snapshot would be. Takes as long as loading that snapshot.
    pub fn compact(&self) -> Registry {
        let mut domains = NameIndex::new();
        let (_, name_bytes) = self.memory();
        domains.reserve(self.len() - self.ips.len(), name_bytes);
        for (name, entry) in self.domain_entries() {
            domains
                .push(name, entry.status, entry.expires_at)
                .expect("the names fitted the index they come from");
        }
        domains
            .finish()
            .expect("names from one registry are unique");
        Registry {
            domains: Arc::new(domains),
            ips: self.ips.clone(),
            overlay: Overlay::default(),
            overlay_adjust: 0,
        }
    }

    /// This registry's records over `compacted`, the compaction of `base`, an earlier registry
    /// of this one's line (deltas applied since): `compacted`'s index, with an overlay of what
    /// differs from it, the changes made since `base`. O(both overlays). None when `base` does
    /// not share this registry's index (a snapshot replaced it meanwhile): the compaction is of
    /// no use then.
    ///
    /// This is what lets a compaction run beside the deltas: it builds from `base` while later
    /// deltas go into service over the old index, then `rebase` carries them over.
    pub fn rebase(&self, base: &Registry, compacted: &Registry) -> Option<Registry> {
        if !Arc::ptr_eq(&self.domains, &base.domains) {
            return None;
        }
        debug_assert!(compacted.overlay.is_empty());
        let mut overlay = Overlay::default();
        // A name either overlay holds may differ between this registry and `compacted`; no
        // other name does (both agree with the shared index on the rest).
        for name in base.overlay.keys().chain(self.overlay.keys()) {
            let here = self.get_domain(name);
            if here != compacted.get_domain(name) {
                overlay.insert(name.clone(), here);
            }
        }
        let mut next = Registry {
            domains: compacted.domains.clone(),
            ips: self.ips.clone(),
            overlay,
            overlay_adjust: 0,
        };
        next.overlay_adjust = self.len() as isize - next.len() as isize;
        Some(next)
    }

    /// Every domain record in force: the index's, as changed by the overlay.
    fn domain_entries(&self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        let kept = self
            .domains
            .iter()
            .filter(|(name, _)| !self.overlay.contains_key(*name))
            .map(|(name, f)| (name, entry_of(f)));
        let changed = self
            .overlay
            .iter()
            .filter_map(|(name, e)| e.map(|e| (&name[..], e)));
        kept.chain(changed)
    }

    /// The record that covers `host`: for a domain the most specific record among the name and
    /// its parents (label boundaries only); for an IP the record of that exact address.
    pub fn covering(&self, host: &Host) -> Option<Entry> {
        self.covering_at(host).map(|(entry, _)| entry)
    }

    /// `covering`, and which name the record is filed under: where it starts in the host's text
    /// (`DomainName::as_bytes`; 0 for an IP record, which is the address itself).
    pub fn covering_at(&self, host: &Host) -> Option<(Entry, usize)> {
        match host {
            Host::Domain(d) => self.covering_domain(d),
            Host::Ip(ip) => self.ips.get(ip).map(|e| (*e, 0)),
        }
    }

    fn covering_domain(&self, name: &DomainName) -> Option<(Entry, usize)> {
        // Through the Arc once.
        let domains: &NameIndex = &self.domains;
        let bytes = name.as_bytes();
        // Hash every candidate first and prefetch their slots, so the probes' cache misses
        // overlap instead of queueing one behind another.
        let mut batch = [(0usize, 0u64); BATCH];
        let mut n = 0;
        let mut starts = name.candidate_starts();
        for start in starts.by_ref().take(BATCH) {
            let hash = domains.hash(&bytes[start..]);
            domains.prefetch(hash);
            batch[n] = (start, hash);
            n += 1;
        }
        // Deltas' changes, when there are any, come first at each name: a changed record is
        // the answer, a removed one lets the walk go on to the parent. One branch on an empty
        // map otherwise.
        let overlay = (!self.overlay.is_empty()).then_some(&self.overlay);
        let at = |start: usize, hash: u64| -> Option<(Entry, usize)> {
            if let Some(changed) = overlay.and_then(|o| o.get(&bytes[start..])) {
                return changed.map(|e| (e, start));
            }
            domains
                .get_hashed(&bytes[start..], hash)
                .map(|f| (entry_of(f), start))
        };
        for &(start, hash) in &batch[..n] {
            if let Some(found) = at(start, hash) {
                return Some(found);
            }
        }
        starts.find_map(|start| at(start, domains.hash(&bytes[start..])))
    }

    /// The decision for `host` on a listener requiring `require`, at `now` (unix seconds).
    pub fn decide(&self, host: &Host, require: Requirement, now: i64) -> Decision {
        self.decide_at(host, require, now).0
    }

    /// `decide`, and where the record that decided starts in the host's text (as
    /// `covering_at`), or None when no record covers the host: the same lookup, so a log line
    /// can name the record without a second one.
    pub fn decide_at(
        &self,
        host: &Host,
        require: Requirement,
        now: i64,
    ) -> (Decision, Option<usize>) {
        let Some((entry, start)) = self.covering_at(host) else {
            return (
                Decision::Block(match host {
                    Host::Domain(_) => BlockReason::Unfiled,
                    Host::Ip(_) => BlockReason::IpUnfiled,
                }),
                None,
            );
        };
        let decision = match (entry.status_at(now), require) {
            (Status::Connected, _) => Decision::Allow,
            (Status::Unconnected | Status::AccessCancelled, Requirement::Filed) => Decision::Allow,
            (Status::Unconnected | Status::AccessCancelled, Requirement::Connected) => {
                Decision::Block(BlockReason::Unconnected)
            }
            (Status::Revoked, _) => Decision::Block(BlockReason::Revoked),
            (Status::Denied, _) => Decision::Block(BlockReason::Denied),
        };
        (decision, Some(start))
    }

    /// Records per status, in `Status::ALL` order.
    pub fn status_counts(&self) -> [usize; 5] {
        let mut counts = [0usize; 5];
        let domains: Box<dyn Iterator<Item = Status>> = if self.overlay.is_empty() {
            Box::new(self.domains.statuses())
        } else {
            Box::new(self.domain_entries().map(|(_, e)| e.status))
        };
        for status in domains.chain(self.ips.values().map(|e| e.status)) {
            counts[status as usize] += 1;
        }
        counts
    }

    /// Memory held: (index bytes besides the names' text, bytes of name text). The overlay
    /// counts as index; its names as text.
    pub fn memory(&self) -> (usize, usize) {
        let ip_bytes = self.ips.capacity() * (std::mem::size_of::<(IpAddr, Entry)>() + 1);
        let overlay_bytes =
            self.overlay.capacity() * (std::mem::size_of::<(Box<[u8]>, Option<Entry>)>() + 1);
        let overlay_names: usize = self.overlay.keys().map(|k| k.len()).sum();
        (
            self.domains.overhead_bytes() + ip_bytes + overlay_bytes,
            self.domains.name_bytes() + overlay_names,
        )
    }
}

fn entry_of(f: index::Found) -> Entry {
    Entry {
        status: f.status,
        expires_at: f.expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{parse_authority, parse_registry_name};

    fn registry(records: &[(&str, Status, Option<i64>)]) -> Registry {
        let mut r = RegistryBuilder::new();
        for (name, status, expires_at) in records {
            let entry = Entry {
                status: *status,
                expires_at: *expires_at,
            };
            r.insert(&parse_registry_name(name).unwrap(), entry)
                .unwrap();
        }
        r.finish().unwrap()
    }

    fn decide(r: &Registry, host: &str, require: Requirement) -> Decision {
        r.decide(&parse_authority(host.as_bytes()).unwrap(), require, 1_000)
    }

    #[test]
    fn rebase_carries_over_the_changes_made_since_the_compacted_base() {
        let up = |name: &str, status| {
            Change::Upsert(
                Key::Domain(name.as_bytes().into()),
                Entry {
                    status,
                    expires_at: None,
                },
            )
        };
        let rm = |name: &str| Change::Remove(Key::Domain(name.as_bytes().into()));
        let start = registry(&[
            ("a.cn", Status::Connected, None),
            ("b.cn", Status::Connected, None),
            ("c.cn", Status::Denied, None),
            ("203.0.113.7", Status::Connected, None),
        ]);
        // The changes the compaction folds in.
        let base = start
            .apply(&[
                up("d.cn", Status::Connected),
                rm("b.cn"),
                up("c.cn", Status::Connected),
            ])
            .unwrap();
        let compacted = base.compact();
        // The changes made while it ran: a new name, a folded addition removed, a folded
        // removal undone, a folded change set back to the old index's value (which drops it
        // from the overlay over that index), and an IP record.
        let ip = Key::Ip("203.0.113.8".parse().unwrap());
        let entry = Entry {
            status: Status::Connected,
            expires_at: None,
        };
        let now = base
            .apply(&[
                up("e.cn", Status::Connected),
                rm("d.cn"),
                up("b.cn", Status::Revoked),
                up("c.cn", Status::Denied),
                Change::Upsert(ip.clone(), entry),
            ])
            .unwrap();
        let rebased = now.rebase(&base, &compacted).expect("same line");
        assert_eq!(rebased.len(), now.len());
        assert_eq!(
            rebased.overlay_len(),
            4,
            "e, d, b and c differ from the compaction"
        );
        for name in ["a.cn", "b.cn", "c.cn", "d.cn", "e.cn", "f.cn", "cn"] {
            let key = Key::Domain(name.as_bytes().into());
            assert_eq!(rebased.get(&key), now.get(&key), "{name}");
            for require in [Requirement::Connected, Requirement::Filed] {
                for host in [name.to_owned(), format!("www.{name}")] {
                    assert_eq!(
                        decide(&rebased, &host, require),
                        decide(&now, &host, require),
                        "{host}"
                    );
                }
            }
        }
        assert_eq!(rebased.get(&ip), Some(entry));
        assert_eq!(rebased.status_counts(), now.status_counts());
        // Another line (a snapshot replaced the index meanwhile): nothing to rebase.
        assert!(now.compact().rebase(&base, &compacted).is_none());
    }

    #[test]
    fn decision_table() {
        use BlockReason::*;
        use Decision::*;
        let r = registry(&[
            ("example.com", Status::Connected, None),
            ("bad.example.com", Status::Denied, None),
            ("cdn-only.cn", Status::Unconnected, None),
            ("gone.cn", Status::AccessCancelled, None),
            ("old.cn", Status::Revoked, None),
            ("trial.com.cn", Status::Connected, Some(2_000)),
            ("lapsed.com.cn", Status::Connected, Some(999)),
            ("edge.com.cn", Status::Connected, Some(1_000)),
            ("denied-until.cn", Status::Denied, Some(10)),
            ("203.0.113.7", Status::Connected, None),
        ]);
        let c = Requirement::Connected;
        let f = Requirement::Filed;
        assert_eq!(decide(&r, "example.com", c), Allow);
        assert_eq!(decide(&r, "a.b.c.www.example.com", c), Allow);
        assert_eq!(decide(&r, "bad.example.com", c), Block(Denied));
        assert_eq!(decide(&r, "x.bad.example.com", f), Block(Denied));
        assert_eq!(decide(&r, "cdn-only.cn", c), Block(Unconnected));
        assert_eq!(decide(&r, "img.cdn-only.cn", f), Allow);
        assert_eq!(decide(&r, "gone.cn", c), Block(Unconnected));
        assert_eq!(decide(&r, "gone.cn", f), Allow);
        assert_eq!(decide(&r, "old.cn", f), Block(Revoked));
        assert_eq!(decide(&r, "trial.com.cn", c), Allow);
        assert_eq!(decide(&r, "lapsed.com.cn", c), Block(Unconnected));
        assert_eq!(decide(&r, "lapsed.com.cn", f), Allow);
        // "After this instant": the instant itself still counts.
        assert_eq!(decide(&r, "edge.com.cn", c), Allow);
        // An expired denial is still a denial.
        assert_eq!(decide(&r, "denied-until.cn", f), Block(Denied));
        assert_eq!(decide(&r, "evilexample.com", c), Block(Unfiled));
        assert_eq!(decide(&r, "example.com.evil.net", c), Block(Unfiled));
        assert_eq!(decide(&r, "com.cn", c), Block(Unfiled));
        assert_eq!(decide(&r, "203.0.113.7", c), Allow);
        assert_eq!(decide(&r, "203.0.113.8", c), Block(IpUnfiled));
        assert_eq!(decide(&r, "[2001:db8::1]", c), Block(IpUnfiled));
    }

    /// The name `decide_at` reports is the record that decided, with and without a delta's
    /// overlay in front of the index.
    #[test]
    fn decide_at_names_the_record_that_decided() {
        let base = registry(&[
            ("example.com", Status::Connected, None),
            ("bad.example.com", Status::Denied, None),
            ("203.0.113.7", Status::Revoked, None),
        ]);
        let overlaid = base
            .apply(&[Change::Upsert(
                Key::Domain(b"new.example.com".to_vec().into_boxed_slice()),
                Entry {
                    status: Status::Revoked,
                    expires_at: None,
                },
            )])
            .unwrap();
        assert!(overlaid.overlay_len() > 0);
        let matched = |r: &Registry, host: &str| {
            let host = parse_authority(host.as_bytes()).unwrap();
            let (decision, at) = r.decide_at(&host, Requirement::Connected, 1_000);
            let text = host.to_string();
            (decision, at.map(|i| text[i..].to_owned()))
        };
        use BlockReason::*;
        use Decision::*;
        for r in [&base, &overlaid] {
            assert_eq!(
                matched(r, "a.www.example.com"),
                (Allow, Some("example.com".into()))
            );
            assert_eq!(
                matched(r, "x.bad.example.com"),
                (Block(Denied), Some("bad.example.com".into()))
            );
            assert_eq!(matched(r, "unfiled.cn"), (Block(Unfiled), None));
            assert_eq!(
                matched(r, "203.0.113.7"),
                (Block(Revoked), Some("203.0.113.7".into()))
            );
        }
        assert_eq!(
            matched(&overlaid, "w.new.example.com"),
            (Block(Revoked), Some("new.example.com".into()))
        );
        assert_eq!(
            matched(&base, "w.new.example.com"),
            (Allow, Some("example.com".into()))
        );
    }
}
