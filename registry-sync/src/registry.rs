//! The in-memory registry of filings and the decision it gives for a host.

use std::collections::HashMap;
use std::net::IpAddr;

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

/// One registry record after loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub status: Status,
    pub filing_number: Option<Box<str>>,
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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The filings in service: domain records (each covering its subdomains) and IP records.
///
/// Hashing is seeded per process (foldhash's `RandomState`), so a client choosing Host values
/// cannot aim them at one bucket.
#[derive(Default, Clone, Debug)]
pub struct Registry {
    domains: FastMap<Box<str>, Entry>,
    ips: FastMap<IpAddr, Entry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record. Returns the record already there under the same name, in which case
    /// nothing is changed.
    pub fn insert(&mut self, host: &Host, entry: Entry) -> Result<(), &Entry> {
        use std::collections::hash_map::Entry as Slot;
        match host {
            Host::Domain(d) => match self.domains.entry(d.as_str().into()) {
                Slot::Occupied(o) => Err(o.into_mut()),
                Slot::Vacant(v) => {
                    v.insert(entry);
                    Ok(())
                }
            },
            Host::Ip(ip) => match self.ips.entry(*ip) {
                Slot::Occupied(o) => Err(o.into_mut()),
                Slot::Vacant(v) => {
                    v.insert(entry);
                    Ok(())
                }
            },
        }
    }

    pub fn len(&self) -> usize {
        self.domains.len() + self.ips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record that covers `host`: for a domain the most specific record among the name and
    /// its parents (label boundaries only); for an IP the record of that exact address.
    pub fn covering(&self, host: &Host) -> Option<&Entry> {
        match host {
            Host::Domain(d) => self.covering_domain(d),
            Host::Ip(ip) => self.ips.get(ip),
        }
    }

    fn covering_domain(&self, name: &DomainName) -> Option<&Entry> {
        name.self_and_parents()
            .find_map(|candidate| self.domains.get(candidate))
    }

    /// The decision for `host` on a listener requiring `require`, at `now` (unix seconds).
    pub fn decide(&self, host: &Host, require: Requirement, now: i64) -> Decision {
        let Some(entry) = self.covering(host) else {
            return Decision::Block(match host {
                Host::Domain(_) => BlockReason::Unfiled,
                Host::Ip(_) => BlockReason::IpUnfiled,
            });
        };
        match (entry.status_at(now), require) {
            (Status::Connected, _) => Decision::Allow,
            (Status::Unconnected | Status::AccessCancelled, Requirement::Filed) => Decision::Allow,
            (Status::Unconnected | Status::AccessCancelled, Requirement::Connected) => {
                Decision::Block(BlockReason::Unconnected)
            }
            (Status::Revoked, _) => Decision::Block(BlockReason::Revoked),
            (Status::Denied, _) => Decision::Block(BlockReason::Denied),
        }
    }

    /// Records per status, in `Status::ALL` order.
    pub fn status_counts(&self) -> [usize; 5] {
        let mut counts = [0usize; 5];
        for e in self.domains.values().chain(self.ips.values()) {
            counts[e.status as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{parse_authority, parse_registry_name};

    fn registry(records: &[(&str, Status, Option<i64>)]) -> Registry {
        let mut r = Registry::new();
        for (name, status, expires_at) in records {
            let entry = Entry {
                status: *status,
                filing_number: None,
                expires_at: *expires_at,
            };
            r.insert(&parse_registry_name(name).unwrap(), entry)
                .unwrap();
        }
        r
    }

    fn decide(r: &Registry, host: &str, require: Requirement) -> Decision {
        r.decide(&parse_authority(host.as_bytes()).unwrap(), require, 1_000)
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
}
