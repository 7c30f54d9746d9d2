//! Why a host is covered as it is: every name the lookup tries for it, most specific first, with
//! the record each one has, and which of them covers the host. For `icp-gate explain` and the
//! admin endpoint's `/explain`.
//!
//! The walk is the lookup's own (`DomainName::self_and_parents`, one `Registry::get_domain` per
//! name: the overlay of deltas, then the index); the decision itself stays `Registry::decide`'s.
//! Unlike the lookup, which stops at the first record, the walk goes on to the last candidate,
//! so an explanation also shows the filings a more specific record overrides.

use crate::name::{is_public_suffix_bytes, Host};
use crate::registry::{Entry, Key, Registry};

/// One name the lookup tries for a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Normalized: lower-case A-labels, or the IP address (IPv6 without brackets), as a record
    /// of the registry names it.
    pub name: String,
    /// The record of exactly this name, if there is one.
    pub record: Option<Entry>,
    /// A public suffix (`com.cn`): no record can ever be filed under it.
    pub public_suffix: bool,
}

/// Every candidate of a host, and the one whose record covers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    /// The host itself, then each parent name down to two labels (a single label is a public
    /// suffix); for an IP address, the address alone.
    pub candidates: Vec<Candidate>,
    /// Index in `candidates` of the record that covers the host: the most specific one.
    pub matched: Option<usize>,
    /// The host is an IP address (filed as itself, no parents).
    pub ip: bool,
}

impl Walk {
    /// The covering record and the name it is filed under.
    pub fn matched(&self) -> Option<(&str, Entry)> {
        let c = &self.candidates[self.matched?];
        Some((&c.name, c.record.expect("a matched candidate has a record")))
    }

    /// The registrable domain (主域名) a filing is made on: the least specific candidate that is
    /// not a public suffix. None for an IP address or a name that is itself a public suffix.
    pub fn registrable_domain(&self) -> Option<&str> {
        if self.ip {
            return None;
        }
        self.candidates
            .iter()
            .rev()
            .find(|c| !c.public_suffix)
            .map(|c| c.name.as_str())
    }
}

impl Registry {
    /// Every name the lookup of `host` tries, with its record, and which one covers the host:
    /// the record `covering` finds.
    pub fn explain(&self, host: &Host) -> Walk {
        let candidates: Vec<Candidate> = match host {
            Host::Domain(d) => d
                .self_and_parents()
                .map(|name| Candidate {
                    name: name.to_owned(),
                    record: self.get_domain(name.as_bytes()),
                    public_suffix: is_public_suffix_bytes(name.as_bytes()),
                })
                .collect(),
            Host::Ip(ip) => vec![Candidate {
                name: ip.to_string(),
                record: self.get(&Key::Ip(*ip)),
                public_suffix: false,
            }],
        };
        let matched = candidates.iter().position(|c| c.record.is_some());
        let walk = Walk {
            candidates,
            matched,
            ip: matches!(host, Host::Ip(_)),
        };
        debug_assert_eq!(walk.matched().map(|(_, e)| e), self.covering(host));
        walk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{parse_authority, parse_registry_name};
    use crate::registry::{Change, Status};

    fn entry(status: Status) -> Entry {
        Entry {
            status,
            expires_at: None,
        }
    }

    fn registry(records: &[(&str, Status)]) -> Registry {
        let mut r = crate::registry::RegistryBuilder::new();
        for (name, status) in records {
            r.insert(&parse_registry_name(name).unwrap(), entry(*status))
                .unwrap();
        }
        r.finish().unwrap()
    }

    fn walk(r: &Registry, host: &str) -> Walk {
        r.explain(&parse_authority(host.as_bytes()).unwrap())
    }

    fn names(w: &Walk) -> Vec<(&str, Option<Status>, bool)> {
        w.candidates
            .iter()
            .map(|c| (c.name.as_str(), c.record.map(|e| e.status), c.public_suffix))
            .collect()
    }

    #[test]
    fn every_candidate_is_listed_and_the_most_specific_record_covers() {
        use Status::*;
        let r = registry(&[
            ("example.com.cn", Connected),
            ("bad.example.com.cn", Denied),
            ("203.0.113.7", Connected),
        ]);
        let w = walk(&r, "WWW.Bad.Example.com.cn.:8080");
        assert_eq!(
            names(&w),
            [
                ("www.bad.example.com.cn", None, false),
                ("bad.example.com.cn", Some(Denied), false),
                ("example.com.cn", Some(Connected), false),
                ("com.cn", None, true),
            ]
        );
        assert_eq!(w.matched(), Some(("bad.example.com.cn", entry(Denied))));
        assert_eq!(w.registrable_domain(), Some("example.com.cn"));

        let w = walk(&r, "evilexample.com.cn");
        assert_eq!(w.matched(), None);
        assert_eq!(w.registrable_domain(), Some("evilexample.com.cn"));

        let w = walk(&r, "203.0.113.7");
        assert_eq!(names(&w), [("203.0.113.7", Some(Connected), false)]);
        assert_eq!(w.registrable_domain(), None);
        assert_eq!(walk(&r, "[2001:db8::1]").candidates[0].name, "2001:db8::1");
        assert_eq!(walk(&r, "com.cn").registrable_domain(), None);
    }

    #[test]
    fn the_walk_sees_what_deltas_changed() {
        use Status::*;
        let base = registry(&[("example.com", Connected), ("www.example.com", Denied)]);
        let r = base
            .apply(&[Change::Remove(Key::Domain(b"www.example.com"[..].into()))])
            .unwrap();
        let w = walk(&r, "www.example.com");
        assert_eq!(
            names(&w),
            [
                ("www.example.com", None, false),
                ("example.com", Some(Connected), false)
            ]
        );
        assert_eq!(w.matched(), Some(("example.com", entry(Connected))));
    }
}
