//! Property tests for the registry crate:
//!
//! - host normalization (`parse_authority`, `parse_registry_name`): lower-case, no trailing dot,
//!   no port; idempotent; total on arbitrary bytes, and what it accepts is a well-formed name;
//! - `Registry::decide` against a plain reference model written here from design.md ("Rules from
//!   the filing regime"), on registries built from a small label alphabet so that look-alikes,
//!   parents and overrides actually meet;
//! - `Registry::explain` finds the record `covering` finds, with and without deltas;
//! - registry deltas (`Registry::apply`, `compact`): a registry with the changes from A to B
//!   applied decides like the reference model of B;
//! - snapshot format v1: what `SnapshotWriter` writes, `read_snapshot` reads back unchanged, and a
//!   single flipped byte before the trailer is always refused.
//!
//! Run with `cargo test -p icp-gate-registry --test properties`.

use std::collections::HashMap;
use std::net::IpAddr;

use icp_gate_registry::name::{is_public_suffix, MAX_LABEL_LEN, MAX_NAME_LEN};
use icp_gate_registry::{
    parse_authority, parse_registry_name, read_snapshot, BlockReason, Change, Decision, Entry,
    Host, Key, Registry, RegistryBuilder, Requirement, SnapshotWriter, Status,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// "Now" for every decision, unix seconds (2027-01-15T08:00:00Z).
const NOW: i64 = 1_800_000_000;

const REQUIREMENTS: [Requirement; 2] = [Requirement::Connected, Requirement::Filed];

// ---------------------------------------------------------------------------------------------
// Normalization
// ---------------------------------------------------------------------------------------------

/// A label the ASCII fast path takes: letters, digits, hyphen, mixed case, 1 to 63 bytes. A
/// leading `xn--` would make it a (probably invalid) punycode label, so none is made.
fn ascii_label() -> impl Strategy<Value = String> {
    "[A-Za-z0-9-]{1,63}".prop_filter("not a punycode label", |l| {
        !l.to_ascii_lowercase().starts_with("xn--")
    })
}

/// The top-level label starts with a letter: an all-numeric or `0x` one is refused by design.
fn ascii_tld() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,14}"
}

/// Checks what every accepted host must satisfy, and that normalizing again changes nothing.
fn check_accepted(raw: &[u8]) -> Result<(), TestCaseError> {
    let Ok(host) = parse_authority(raw) else {
        return Ok(());
    };
    if let Host::Domain(d) = &host {
        let s = d.as_bytes();
        prop_assert!(
            !s.is_empty() && s.len() <= MAX_NAME_LEN,
            "{raw:?} gave {} bytes",
            s.len()
        );
        for label in s.split(|&b| b == b'.') {
            prop_assert!(
                (1..=MAX_LABEL_LEN).contains(&label.len()),
                "{raw:?} gave a label of {} bytes in {d:?}",
                label.len()
            );
        }
        prop_assert!(
            s.iter().all(|&b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'_'
                || b == b'-'
                || b == b'.'),
            "{raw:?} gave {d:?}"
        );
    }
    // Display gives a re-parseable form (`[v6]` for IPv6); normalizing it again is a no-op.
    let again = parse_authority(host.to_string().as_bytes());
    prop_assert_eq!(
        again,
        Ok(host.clone()),
        "renormalizing the result of {:?}",
        raw
    );
    Ok(())
}

proptest! {
    #[test]
    fn ascii_hosts_normalize_to_lowercase_without_dot_or_port(
        labels in prop::collection::vec(ascii_label(), 0..5),
        tld in ascii_tld(),
        trailing_dot in any::<bool>(),
        port in prop::option::of(prop::option::of(any::<u16>())),
    ) {
        let mut name = labels.join(".");
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&tld);
        let expected = name.to_ascii_lowercase();
        let mut raw = name.clone();
        if trailing_dot {
            raw.push('.');
        }
        let registry_form = raw.clone();
        match port {
            None => {}
            Some(None) => raw.push(':'), // empty port: allowed by RFC 3986
            Some(Some(p)) => raw.push_str(&format!(":{p}")),
        }

        let got = parse_authority(raw.as_bytes());
        if expected.len() > MAX_NAME_LEN {
            prop_assert_eq!(got, Err(icp_gate_registry::InvalidHost::TooLong));
            return Ok(());
        }
        let host = match got {
            Ok(h @ Host::Domain(_)) => h,
            other => return Err(TestCaseError::fail(format!("{raw:?} gave {other:?}"))),
        };
        prop_assert_eq!(host.to_string(), expected.clone());
        // Idempotent.
        prop_assert_eq!(parse_authority(expected.as_bytes()), Ok(host.clone()));
        prop_assert_eq!(parse_authority(host.to_string().as_bytes()), Ok(host.clone()));
        // A registry record naming the same host normalizes to the same bytes.
        prop_assert_eq!(parse_registry_name(&registry_form), Ok(host));
    }

    #[test]
    fn parse_authority_is_total_on_arbitrary_bytes(
        raw in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        check_accepted(&raw)?;
    }

    /// Bytes drawn from what hosts are made of, so that far more inputs reach the deeper checks
    /// (ports, brackets, IDNA mapping, full-width dots) than uniformly random bytes do.
    #[test]
    fn parse_authority_is_total_on_hostish_text(
        raw in "[a-zA-Z0-9._:\\-\\[\\]@%。．｡ＡａＥＸ０１ßüÜ例子中国\u{200d}\u{00ad}]{0,120}",
    ) {
        check_accepted(raw.as_bytes())?;
    }

    /// Names assembled from labels that exercise the IDNA path (Unicode, punycode, full-width,
    /// numeric, joiners) and every kind of dot.
    #[test]
    fn parse_authority_on_assembled_names(
        parts in prop::collection::vec(
            (
                select(vec![
                    "example", "EXAMPLE", "xn--fsqu00a", "XN--FIQS8S", "例子", "中国", "Bücher",
                    "ß", "a", "0x1f", "123", "-", "_x", "ＥＸ", "xn--", "xn--a", "\u{200d}", "",
                    "ｃｏｍ", "１２",
                ]),
                select(vec![".", "。", "．", "｡"]),
            ),
            1..6,
        ),
        last in select(vec!["com", "中国", "xn--fiqs8s", "cn", "1", "0x10", "ＣＯＭ"]),
        trailing in select(vec!["", ".", "。"]),
        port in prop::option::of(any::<u16>()),
    ) {
        let mut raw = String::new();
        for (label, dot) in &parts {
            raw.push_str(label);
            raw.push_str(dot);
        }
        raw.push_str(last);
        raw.push_str(trailing);
        if let Some(p) = port {
            raw.push_str(&format!(":{p}"));
        }
        check_accepted(raw.as_bytes())?;
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions against a reference model
// ---------------------------------------------------------------------------------------------

const LABELS: [&str; 7] = ["a", "b", "ex", "example", "evil", "www", "x-y"];
const TLDS: [&str; 5] = ["com", "cn", "com.cn", "net", "top"];
const REGISTRY_IPS: [&str; 8] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "203.0.113.7",
    "::ffff:10.0.0.2", // the same address as 10.0.0.2
    "2001:db8::1",
    "2001:DB8::2",
    "[2001:db8::3]",
];
const PROBE_IPS: [&str; 10] = [
    "10.0.0.1",
    "10.0.0.4",
    "203.0.113.7:80",
    "203.0.113.8",
    "[::ffff:10.0.0.2]",
    "[::ffff:10.0.0.9]:8080",
    "[2001:db8::1]",
    "[2001:DB8::2]:443",
    "[2001:db8::9]",
    "[::1]",
];

/// Upper-cases the letters whose bit is set in `mask`.
fn mixed_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A registry name as the filing system might write it: 0 to 2 labels from the small alphabet
/// (0 labels makes a bare public suffix, which must be skipped), mixed case, maybe a trailing dot.
fn small_domain_name() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(select(LABELS.to_vec()), 0..3),
        select(TLDS.to_vec()),
        any::<u64>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(labels, tld, mask, dot)| {
            let mut name: Vec<&str> = labels;
            name.push(tld);
            let mut name = mixed_case(&name.join("."), mask);
            if dot {
                name.push('.');
            }
            name
        })
}

fn expiry() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(NOW)),
        1 => (1i64..200_000).prop_map(|d| Some(NOW - d)),
        1 => (1i64..200_000).prop_map(|d| Some(NOW + d)),
    ]
}

fn status() -> impl Strategy<Value = Status> {
    select(Status::ALL.to_vec())
}

#[derive(Clone, Debug)]
struct Record {
    name: String,
    status: Status,
    expires_at: Option<i64>,
}

fn small_records() -> impl Strategy<Value = Vec<Record>> {
    let name = prop_oneof![
        5 => small_domain_name(),
        1 => select(REGISTRY_IPS.to_vec()).prop_map(str::to_owned),
    ];
    prop::collection::vec(
        (name, status(), expiry()).prop_map(|(name, status, expires_at)| Record {
            name,
            status,
            expires_at,
        }),
        0..24,
    )
}

/// A request host, mostly derived from the registry's own names.
#[derive(Clone, Debug)]
enum Probe {
    /// A fresh name from the same alphabet.
    Fresh(Vec<&'static str>, &'static str),
    /// A registered name, recased.
    Exact(Index),
    /// A subdomain of a registered name.
    Sub(Index, Vec<&'static str>),
    /// The parent of a registered name.
    Parent(Index),
    /// A look-alike: a label glued on without a dot (`evilexample.com`).
    Glued(Index, &'static str),
    /// A look-alike: a registered name followed by more labels (`example.com.evil.net`).
    Suffixed(Index, &'static str, &'static str),
    Ip(&'static str),
}

fn probe() -> impl Strategy<Value = Probe> {
    let labels = || prop::collection::vec(select(LABELS.to_vec()), 1..4);
    prop_oneof![
        2 => (prop::collection::vec(select(LABELS.to_vec()), 0..4), select(TLDS.to_vec()))
            .prop_map(|(l, t)| Probe::Fresh(l, t)),
        2 => any::<Index>().prop_map(Probe::Exact),
        2 => (any::<Index>(), labels()).prop_map(|(i, l)| Probe::Sub(i, l)),
        1 => any::<Index>().prop_map(Probe::Parent),
        1 => (any::<Index>(), select(LABELS.to_vec())).prop_map(|(i, l)| Probe::Glued(i, l)),
        1 => (any::<Index>(), select(LABELS.to_vec()), select(TLDS.to_vec()))
            .prop_map(|(i, l, t)| Probe::Suffixed(i, l, t)),
        1 => select(PROBE_IPS.to_vec()).prop_map(Probe::Ip),
    ]
}

impl Probe {
    /// The host text of this probe, given the registry's domain names as generated (any case,
    /// maybe with a trailing dot).
    fn text(&self, names: &[String], case: u64, port: Option<u16>) -> String {
        let pick = |i: &Index| -> String {
            if names.is_empty() {
                "example.com".to_owned()
            } else {
                names[i.index(names.len())].clone()
            }
        };
        let host = match self {
            Probe::Fresh(labels, tld) => {
                let mut v = labels.clone();
                v.push(tld);
                v.join(".")
            }
            Probe::Exact(i) => pick(i),
            Probe::Sub(i, labels) => format!("{}.{}", labels.join("."), pick(i)),
            Probe::Parent(i) => {
                let name = pick(i);
                match name.split_once('.') {
                    Some((_, rest)) if !rest.is_empty() && rest != "." => rest.to_owned(),
                    _ => name,
                }
            }
            Probe::Glued(i, label) => format!("{label}{}", pick(i)),
            Probe::Suffixed(i, label, tld) => {
                format!("{}.{label}.{tld}", pick(i).trim_end_matches('.'))
            }
            Probe::Ip(ip) => return (*ip).to_owned(),
        };
        let mut host = mixed_case(&host, case);
        if let Some(p) = port {
            host.push_str(&format!(":{p}"));
        }
        host
    }
}

/// Reference key of a registry name, computed without the crate: domains lower-cased without a
/// trailing dot; IPs as `ip:<address>`, IPv4-mapped IPv6 folded to IPv4.
fn reference_key(name: &str) -> String {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip_key(ip),
        Err(_) => name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase(),
    }
}

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{}", ip.to_canonical())
}

/// design.md, "Rules from the filing regime" and "Decisions and what the client sees".
fn reference_decide(
    model: &HashMap<String, Entry>,
    host: &Host,
    require: Requirement,
    now: i64,
) -> Decision {
    let hit = match host {
        Host::Ip(ip) => model.get(&ip_key(*ip)),
        Host::Domain(d) => {
            // Walk from the full name up, one leading label at a time; the first hit is the most
            // specific record.
            let mut name = d.as_str();
            loop {
                if let Some(e) = model.get(name) {
                    break Some(e);
                }
                match name.split_once('.') {
                    Some((_, rest)) => name = rest,
                    None => break None,
                }
            }
        }
    };
    let Some(entry) = hit else {
        return Decision::Block(match host {
            Host::Domain(_) => BlockReason::Unfiled,
            Host::Ip(_) => BlockReason::IpUnfiled,
        });
    };
    // "expires-at: after this instant the entry counts as `unconnected`": a provisional
    // allowance that lapses. Expiry only takes an allowance away: it never turns a revoked or
    // denied entry into something a `filed` listener would forward.
    let status = match (entry.status, entry.expires_at) {
        (Status::Connected, Some(t)) if now > t => Status::Unconnected,
        (status, _) => status,
    };
    match status {
        Status::Connected => Decision::Allow,
        Status::Unconnected | Status::AccessCancelled => match require {
            Requirement::Filed => Decision::Allow,
            Requirement::Connected => Decision::Block(BlockReason::Unconnected),
        },
        Status::Revoked => Decision::Block(BlockReason::Revoked),
        Status::Denied => Decision::Block(BlockReason::Denied),
    }
}

/// The registry under test, the reference model, and the generated domain names (as written).
struct Built {
    registry: Registry,
    model: HashMap<String, Entry>,
    domain_names: Vec<String>,
}

/// Builds the registry under test with `RegistryBuilder::insert` and the reference model side
/// by side, skipping public suffixes and duplicates.
fn build(records: &[Record]) -> Result<Built, TestCaseError> {
    let mut registry = RegistryBuilder::new();
    let mut model = HashMap::new();
    let mut domain_names = Vec::new();
    for r in records {
        let host = parse_registry_name(&r.name)
            .map_err(|e| TestCaseError::fail(format!("{:?} refused: {e}", r.name)))?;
        let key = reference_key(&r.name);
        match &host {
            Host::Domain(d) => {
                domain_names.push(r.name.clone());
                prop_assert_eq!(d.as_str(), key.as_str(), "normalizing {:?}", r.name);
                // With this alphabet only a bare TLD is a public suffix.
                let bare_tld = TLDS.contains(&key.as_str());
                prop_assert_eq!(is_public_suffix(d), bare_tld, "is_public_suffix({:?})", key);
                if bare_tld {
                    continue;
                }
            }
            Host::Ip(ip) => prop_assert_eq!(ip_key(*ip), key.clone()),
        }
        let entry = Entry {
            status: r.status,
            expires_at: r.expires_at,
        };
        if model.contains_key(&key) {
            // A duplicate: refused at insert (IP) or by `finish` (domain), on a copy so the
            // registry under test keeps only the first.
            let mut copy = registry.clone();
            let refused = copy.insert(&host, entry).is_err() || copy.finish().is_err();
            prop_assert!(refused, "duplicate {:?} was accepted", r.name);
            continue;
        }
        prop_assert!(
            registry.insert(&host, entry).is_ok(),
            "inserting {:?}",
            r.name
        );
        model.insert(key, entry);
    }
    let registry = registry
        .finish()
        .map_err(|name| TestCaseError::fail(format!("unexpected duplicate {name}")))?;
    prop_assert_eq!(registry.len(), model.len());
    Ok(Built {
        registry,
        model,
        domain_names,
    })
}

proptest! {
    #[test]
    fn decide_matches_the_reference_model(
        records in small_records(),
        probes in prop::collection::vec(
            (probe(), any::<u64>(), prop::option::of(any::<u16>())),
            1..32,
        ),
    ) {
        let Built {
            registry,
            model,
            domain_names: names,
        } = build(&records)?;
        for (probe, case, port) in &probes {
            let text = probe.text(&names, *case, *port);
            let host = parse_authority(text.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("probe {text:?} refused: {e}")))?;
            // What `explain` says covers the host is what the lookup finds.
            prop_assert_eq!(
                registry.explain(&host).matched().map(|(_, e)| e),
                registry.covering(&host),
                "explain {:?}",
                text
            );
            for require in REQUIREMENTS {
                prop_assert_eq!(
                    registry.decide(&host, require, NOW),
                    reference_decide(&model, &host, require, NOW),
                    "host {:?} ({:?}), {:?}, model {:?}",
                    text,
                    host,
                    require,
                    model
                );
            }
        }
    }
}

/// The key of a reference-model key (see `reference_key`).
fn key_of_model(key: &str) -> Key {
    match key.strip_prefix("ip:") {
        Some(ip) => Key::Ip(ip.parse().expect("model IP keys are addresses")),
        None => Key::Domain(key.as_bytes().into()),
    }
}

proptest! {
    /// A registry with the changes from registry A to registry B applied (in two deltas, the
    /// second over the first's overlay) decides every probe as the reference model of B does,
    /// has B's record count, and does the same once compacted.
    #[test]
    fn base_plus_deltas_decides_like_the_registry_they_lead_to(
        before in small_records(),
        after in small_records(),
        split in any::<Index>(),
        probes in prop::collection::vec(
            (probe(), any::<u64>(), prop::option::of(any::<u16>())),
            1..32,
        ),
    ) {
        let a = build(&before)?;
        let b = build(&after)?;
        let mut changes: Vec<Change> = a
            .model
            .keys()
            .filter(|k| !b.model.contains_key(*k))
            .map(|k| Change::Remove(key_of_model(k)))
            .collect();
        changes.extend(
            b.model
                .iter()
                .filter(|(k, e)| a.model.get(*k) != Some(*e))
                .map(|(k, e)| Change::Upsert(key_of_model(k), *e)),
        );
        let at = split.index(changes.len() + 1);
        let first = a.registry.apply(&changes[..at]).map_err(TestCaseError::fail)?;
        let applied = first.apply(&changes[at..]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(applied.len(), b.model.len());
        let compacted = applied.compact();
        prop_assert_eq!(compacted.len(), b.model.len());
        prop_assert_eq!(compacted.overlay_len(), 0);
        prop_assert_eq!(applied.status_counts(), b.registry.status_counts());
        let names: Vec<String> = a.domain_names.iter().chain(&b.domain_names).cloned().collect();
        for (probe, case, port) in &probes {
            let text = probe.text(&names, *case, *port);
            let host = parse_authority(text.as_bytes())
                .map_err(|e| TestCaseError::fail(format!("probe {text:?} refused: {e}")))?;
            prop_assert_eq!(
                applied.explain(&host).matched().map(|(_, e)| e),
                applied.covering(&host),
                "explain {:?} over deltas",
                text
            );
            for require in REQUIREMENTS {
                let want = reference_decide(&b.model, &host, require, NOW);
                prop_assert_eq!(applied.decide(&host, require, NOW), want, "host {:?}", text);
                prop_assert_eq!(compacted.decide(&host, require, NOW), want, "host {:?}", text);
            }
        }
        // A removal of a name without a record is refused, whatever the overlay holds.
        let absent = Change::Remove(Key::Domain(b"never-filed.example.com"[..].into()));
        prop_assert!(applied.apply(&[absent]).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot round trip
// ---------------------------------------------------------------------------------------------

/// Expiry instants as the filing system writes them, with their unix time.
const EXPIRIES: [(&str, i64); 5] = [
    ("2026-12-31T00:00:00Z", 1_798_675_200),
    ("2027-01-01T08:00:00+08:00", 1_798_761_600),
    ("2025-06-01T12:00:00Z", 1_748_779_200),
    ("2030-01-01T00:00:00Z", 1_893_456_000),
    ("2029-12-31T16:00:00-08:00", 1_893_456_000),
];

const FILINGS: [Option<&str>; 4] = [
    None,
    Some(""),
    Some("京ICP备12345678号-1"),
    Some("沪ICP备11112222号-1"),
];

#[derive(Clone, Debug)]
struct SnapRecord {
    name: String,
    status: Status,
    filing: Option<&'static str>,
    expires: Option<(&'static str, i64)>,
}

fn snapshot_name() -> impl Strategy<Value = String> {
    let label = prop_oneof![
        4 => "[a-z][a-z0-9-]{0,8}[a-z0-9]",
        1 => select(vec!["例子", "测试", "Bücher", "ÉCOLE", "xn--fsqu00a", "my_site"])
            .prop_map(str::to_owned),
    ];
    let domain = (
        prop::collection::vec(label, 1..3),
        select(vec![
            "com",
            "cn",
            "com.cn",
            "net",
            "top",
            "org",
            "中国",
            "xn--fiqs8s",
        ]),
        any::<u64>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(mut labels, tld, mask, dot)| {
            labels.push(tld.to_owned());
            let mut name = mixed_case(&labels.join("."), mask);
            if dot {
                name.push('.');
            }
            name
        });
    prop_oneof![
        6 => domain,
        1 => select(REGISTRY_IPS.to_vec()).prop_map(str::to_owned),
        1 => any::<[u8; 4]>().prop_map(|o| IpAddr::from(o).to_string()),
    ]
}

fn snapshot_records() -> impl Strategy<Value = Vec<SnapRecord>> {
    prop::collection::vec(
        (
            snapshot_name(),
            status(),
            select(FILINGS.to_vec()),
            prop::option::of(select(EXPIRIES.to_vec())),
        )
            .prop_map(|(name, status, filing, expires)| SnapRecord {
                name,
                status,
                filing,
                expires,
            }),
        1..40,
    )
}

/// The records of a valid snapshot: public suffixes and duplicates (after normalization) left
/// out, each with the host and entry it must load as.
fn valid_records(records: Vec<SnapRecord>) -> Vec<(SnapRecord, Host, Entry)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let Ok(host) = parse_registry_name(&r.name) else {
            continue;
        };
        if matches!(&host, Host::Domain(d) if is_public_suffix(d)) || !seen.insert(host.clone()) {
            continue;
        }
        let entry = Entry {
            status: r.status,
            expires_at: r.expires.map(|(_, t)| t),
        };
        out.push((r, host, entry));
    }
    out
}

fn write_snapshot(serial: u64, records: &[(SnapRecord, Host, Entry)]) -> Vec<u8> {
    let mut w = SnapshotWriter::new(Vec::new(), serial, "2027-01-15T08:00:00Z").unwrap();
    for (r, _, _) in records {
        w.record(&r.name, r.status, r.filing, r.expires.map(|(s, _)| s))
            .unwrap();
    }
    w.finish().unwrap()
}

/// Byte range of each record line's name in a written snapshot.
fn name_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if i > 0 && !line.starts_with(b"end ") && !line.is_empty() {
            let tab = line.iter().position(|&b| b == b'\t').unwrap();
            ranges.push(start..start + tab);
        }
        start += line.len() + 1;
    }
    ranges
}

proptest! {
    #[test]
    fn snapshot_round_trip(records in snapshot_records(), serial in any::<u64>()) {
        let records = valid_records(records);
        let bytes = write_snapshot(serial, &records);
        let snap = read_snapshot(&bytes[..]).map_err(|e| {
            TestCaseError::fail(format!("{e}\n{}", String::from_utf8_lossy(&bytes)))
        })?;
        prop_assert_eq!(snap.header.serial, serial);
        prop_assert_eq!(snap.registry.len(), records.len());
        let mut counts = [0usize; 5];
        for (r, _, _) in &records {
            counts[r.status as usize] += 1;
        }
        prop_assert_eq!(snap.registry.status_counts(), counts);
        // Every record comes back as written, and decides as the reference says.
        let model: HashMap<String, Entry> = records
            .iter()
            .map(|(_, host, entry)| {
                let key = match host {
                    Host::Domain(d) => d.as_str().to_owned(),
                    Host::Ip(ip) => ip_key(*ip),
                };
                (key, *entry)
            })
            .collect();
        for (r, host, entry) in &records {
            prop_assert_eq!(snap.registry.covering(host), Some(*entry), "record {:?}", r);
            for require in REQUIREMENTS {
                prop_assert_eq!(
                    snap.registry.decide(host, require, NOW),
                    reference_decide(&model, host, require, NOW)
                );
            }
        }
    }

    #[test]
    fn a_flipped_name_byte_is_refused(
        records in snapshot_records(),
        which in any::<Index>(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let records = valid_records(records);
        let bytes = write_snapshot(7, &records);
        let ranges = name_ranges(&bytes);
        prop_assert_eq!(ranges.len(), records.len());
        prop_assume!(!ranges.is_empty());
        let range = ranges[which.index(ranges.len())].clone();
        let pos = range.start + at.index(range.len());
        let mut tampered = bytes.clone();
        tampered[pos] ^= mask;
        let result = read_snapshot(&tampered[..]);
        prop_assert!(
            result.is_err(),
            "flipping byte {} ({:#04x} -> {:#04x}) was accepted:\n{}",
            pos,
            bytes[pos],
            tampered[pos],
            String::from_utf8_lossy(&tampered)
        );
    }

    #[test]
    fn a_flipped_byte_before_the_trailer_is_refused(
        records in snapshot_records(),
        at in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let records = valid_records(records);
        let bytes = write_snapshot(7, &records);
        let trailer = bytes
            .windows(5)
            .rposition(|w| w == b"\nend ")
            .expect("a trailer")
            + 1;
        let pos = at.index(trailer);
        let mut tampered = bytes.clone();
        tampered[pos] ^= mask;
        prop_assert!(
            read_snapshot(&tampered[..]).is_err(),
            "flipping byte {} ({:#04x} -> {:#04x}) was accepted",
            pos,
            bytes[pos],
            tampered[pos]
        );
    }
}
