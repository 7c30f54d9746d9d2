//! The invariants the fuzz targets check, in one place.
//!
//! This file is the only copy: `tests/fuzz_corpus.rs` replays the checked-in corpus through it
//! with `cargo test`, and the cargo-fuzz targets in `fuzz/fuzz_targets/` include it with
//! `#[path = "../../registry-sync/tests/fuzz_checks/mod.rs"] mod checks;`. It lives in a
//! directory so that Cargo does not build it as a test binary of its own. It uses only crates
//! that both sides have: `icp-gate-registry`, and its own dependencies `flate2` and `sha2`
//! (integration tests may use a package's normal dependencies; the fuzz crate lists them).
//!
//! Each check returns `Err(description)` when an invariant fails; a fuzz target panics with it,
//! the replay lists it with the corpus file's name. A panic inside icp-gate-registry itself is
//! the other kind of finding; both sides catch it.

// Every includer uses only some of the checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};

use icp_gate_registry::name::{
    is_public_suffix, parse_registry_name_into, MAX_LABEL_LEN, MAX_NAME_LEN,
};
use icp_gate_registry::{
    parse_authority, parse_registry_name, read_snapshot, BlockReason, Decision, Entry, Host,
    RejectReason, Requirement, SnapshotWriter, Status,
};
use sha2::{Digest, Sha256};

type Check = Result<(), String>;

/// The `ensure!` of these checks: `Err(format!(...))` unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Input bytes for a message: text where they are text.
fn show(data: &[u8]) -> String {
    const MAX: usize = 300;
    let shown = String::from_utf8_lossy(&data[..data.len().min(MAX)])
        .escape_debug()
        .to_string();
    if data.len() > MAX {
        format!("\"{shown}\"… ({} bytes)", data.len())
    } else {
        format!("\"{shown}\"")
    }
}

// ---------------------------------------------------------------------------------------------
// Target `host`: the host normalizer
// ---------------------------------------------------------------------------------------------

/// `data` as a request authority (`parse_authority`) and, when it is UTF-8, as a registry name
/// (`parse_registry_name`, `parse_registry_name_into`).
pub fn check_host(data: &[u8]) -> Check {
    let authority = parse_authority(data);
    if let Ok(host) = &authority {
        check_accepted_host("parse_authority", data, host)?;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let registry = parse_registry_name(text);
    if let Ok(host) = &registry {
        check_accepted_host("parse_registry_name", data, host)?;
    }

    // The bulk loader's variant says exactly what the plain one says.
    let mut out = b"stale".to_vec();
    match (parse_registry_name_into(text, &mut out), &registry) {
        (Ok(None), Ok(Host::Domain(d))) => ensure!(
            out == d.as_bytes(),
            "parse_registry_name_into({}) wrote {} but parse_registry_name gave {d:?}",
            show(data),
            show(&out)
        ),
        (Ok(Some(ip)), Ok(Host::Ip(other))) => ensure!(
            ip == *other,
            "parse_registry_name_into({}) gave {ip} but parse_registry_name gave {other}",
            show(data)
        ),
        (Err(a), Err(b)) => ensure!(
            a == *b,
            "parse_registry_name_into({}) refused with {a:?} but parse_registry_name with {b:?}",
            show(data)
        ),
        (into, plain) => {
            return Err(format!(
                "parse_registry_name_into({}) gave {into:?} (name {}) but parse_registry_name \
                 gave {plain:?}",
                show(data),
                show(&out)
            ))
        }
    }

    // Without a port or brackets the two entry points are the same function.
    if !data.contains(&b':') && data.first() != Some(&b'[') {
        ensure!(
            authority == registry,
            "{} is {authority:?} as an authority but {registry:?} as a registry name",
            show(data)
        );
    }

    // Plain ASCII (no punycode label) needs nothing but lower-casing and the trailing dot cut.
    let plain = data
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let punycode = data
        .split(|&b| b == b'.')
        .any(|l| l.len() >= 4 && l[..4].eq_ignore_ascii_case(b"xn--"));
    if plain && !punycode {
        if let Ok(Host::Domain(d)) = &registry {
            let expected = data.strip_suffix(b".").unwrap_or(data).to_ascii_lowercase();
            ensure!(
                d.as_bytes() == expected,
                "plain ASCII {} normalized to {d:?}, not to its lower-case form",
                show(data)
            );
        }
    }
    Ok(())
}

/// What holds for every host either entry point accepts.
fn check_accepted_host(via: &str, data: &[u8], host: &Host) -> Check {
    if let Host::Domain(d) = host {
        let s = d.as_bytes();
        ensure!(
            !s.is_empty() && s.len() <= MAX_NAME_LEN,
            "{via}({}) gave a name of {} bytes: {d:?}",
            show(data),
            s.len()
        );
        ensure!(
            s.iter().all(|&b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'_'
                || b == b'-'
                || b == b'.'),
            "{via}({}) gave {d:?}: only [a-z0-9_.-] may be in a name",
            show(data)
        );
        let mut last: &[u8] = b"";
        for label in s.split(|&b| b == b'.') {
            ensure!(
                (1..=MAX_LABEL_LEN).contains(&label.len()),
                "{via}({}) gave {d:?}, with a label of {} bytes",
                show(data),
                label.len()
            );
            last = label;
        }
        // design.md: a numeric or 0x-hex last label is refused, only a dotted quad is an IP.
        let numeric = last.iter().all(u8::is_ascii_digit)
            || (last.len() >= 2
                && last[..2].eq_ignore_ascii_case(b"0x")
                && last[2..].iter().all(u8::is_ascii_hexdigit));
        ensure!(
            !numeric,
            "{via}({}) gave {d:?}, whose last label reads as a number",
            show(data)
        );
        // Idempotent: the normalized name is its own normal form, by either entry point.
        let again = parse_authority(s);
        ensure!(
            again.as_ref() == Ok(host),
            "{via}({}) gave {host:?}, but that again as an authority gives {again:?}",
            show(data)
        );
        let again = parse_registry_name(d.as_str());
        ensure!(
            again.as_ref() == Ok(host),
            "{via}({}) gave {host:?}, but that again as a registry name gives {again:?}",
            show(data)
        );
    }
    // The Display form (`[v6]` for IPv6) re-parses to the same host, by either entry point.
    let shown = host.to_string();
    let again = parse_authority(shown.as_bytes());
    ensure!(
        again.as_ref() == Ok(host),
        "{via}({}) gave {host:?}, displayed as {shown:?}, which as an authority gives {again:?}",
        show(data)
    );
    let again = parse_registry_name(&shown);
    ensure!(
        again.as_ref() == Ok(host),
        "{via}({}) gave {host:?}, displayed as {shown:?}, which as a registry name gives \
         {again:?}",
        show(data)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `snapshot`: the snapshot parser on arbitrary bytes
// ---------------------------------------------------------------------------------------------

/// `data` as a snapshot, and once more with the trailer's `sha256=` set to the right digest (when
/// `data` is plain text with an `end ` line), so that the fuzzer reaches what lies behind the
/// checksum: everything a snapshot with a correct checksum can still get wrong.
pub fn check_snapshot_input(data: &[u8]) -> Check {
    check_snapshot(data)?;
    if let Some(fixed) = with_correct_checksum(data) {
        check_snapshot(&fixed).map_err(|e| format!("with the checksum corrected: {e}"))?;
    }
    Ok(())
}

/// `data` with the value of the last line's `sha256=` field replaced by the SHA-256 of every
/// byte before that line; `None` for gzip, or when the last line is not an `end ` line with a
/// `sha256=` field.
pub fn with_correct_checksum(data: &[u8]) -> Option<Vec<u8>> {
    if is_gzip(data) {
        return None;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let trailer = &data[start..];
    if !trailer.starts_with(b"end ") {
        return None;
    }
    let at = trailer.windows(7).position(|w| w == b"sha256=")? + 7;
    let end = trailer[at..]
        .iter()
        .position(|&b| b == b' ' || b == b'\n')
        .map_or(trailer.len(), |i| at + i);
    let digest = Sha256::digest(&data[..start]);
    let mut fixed = data[..start + at].to_vec();
    fixed.extend_from_slice(hex(&digest).as_bytes());
    fixed.extend_from_slice(&trailer[end..]);
    Some(fixed)
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `read_snapshot(data)`: it never panics; what it refuses, it refuses with a reason a parse
/// can give and a line that exists; what it accepts is text whose lines are the header, one
/// record per entry of the registry, and a trailer that states the count and the checksum the
/// snapshot has, and every record's name is decided as its status says.
pub fn check_snapshot(data: &[u8]) -> Check {
    let snapshot = match read_snapshot(data) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            // By name, so that this compiles whatever reasons the sync step adds.
            ensure!(
                !matches!(
                    e.reason.as_str(),
                    "serial_regression" | "serial_reused" | "shrink_limit" | "canary" | "too_large"
                ),
                "read_snapshot({}) refused with {:?}, which only a sync can give",
                show(data),
                e.reason
            );
            if !is_gzip(data) {
                ensure!(
                    e.reason != RejectReason::ReadError,
                    "read_snapshot({}) gave a read error on bytes in memory: {e}",
                    show(data)
                );
                let lines = data.split_inclusive(|&b| b == b'\n').count() as u64;
                ensure!(
                    e.line.is_none_or(|n| (1..=lines).contains(&n)),
                    "read_snapshot({}) blamed line {:?} of {lines}: {e}",
                    show(data),
                    e.line
                );
            }
            return Ok(());
        }
    };

    let text = if is_gzip(data) {
        let mut text = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut text)
            .map_err(|e| {
                format!(
                    "read_snapshot accepted gzip input that flate2 cannot decompress: {e}: {}",
                    show(data)
                )
            })?;
        text
    } else {
        data.to_vec()
    };
    let shown = show(&text);
    ensure!(
        std::str::from_utf8(&text).is_ok(),
        "an accepted snapshot is not UTF-8: {shown}"
    );
    let lines: Vec<&[u8]> = text.split_inclusive(|&b| b == b'\n').collect();
    ensure!(
        lines.len() >= 2,
        "an accepted snapshot has {} lines, fewer than a header and a trailer: {shown}",
        lines.len()
    );
    let (header, rest) = lines.split_first().expect("two lines or more");
    let (trailer, records) = rest.split_last().expect("two lines or more");
    ensure!(
        snapshot.registry.len() == records.len(),
        "an accepted snapshot has {} record lines but its registry has {} entries: {shown}",
        records.len(),
        snapshot.registry.len()
    );
    ensure!(
        snapshot.registry.status_counts().iter().sum::<usize>() == snapshot.registry.len(),
        "the status counts {:?} do not add up to the {} entries: {shown}",
        snapshot.registry.status_counts(),
        snapshot.registry.len()
    );

    // Format v1 is text: `\n` ends a line and a tab separates a record's fields; the parser
    // refuses a `\r` line end and control characters in filing numbers, and no other field can
    // hold one either.
    for (i, line) in lines.iter().enumerate() {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let is_record = i != 0 && i != lines.len() - 1;
        let control = body
            .iter()
            .find(|&&b| b.is_ascii_control() && !(b == b'\t' && is_record));
        if let Some(b) = control {
            return Err(format!(
                "line {} of an accepted snapshot holds the control byte 0x{b:02x}: {} (only `\\n` \
                 ends a line and only a tab separates a record's fields)",
                i + 1,
                show(body)
            ));
        }
    }

    // The header's serial, and the trailer's count and checksum, are what they say.
    let header = std::str::from_utf8(header).expect("checked above");
    let header = header.strip_suffix('\n').unwrap_or(header);
    // Numbers are compared as numbers (`serial=042` and `count=+6` are accepted: u64::from_str),
    // and a field given twice counts with its last value, as the parser takes it.
    let number = |line: &str, key: &str| -> Vec<Option<u64>> {
        line.split(' ')
            .filter_map(|f| f.strip_prefix(key))
            .map(|v| v.parse().ok())
            .collect()
    };
    ensure!(
        header.starts_with("icp-gate-registry 1 ")
            && number(header, "serial=").last() == Some(&Some(snapshot.header.serial)),
        "the serial read, {}, is not the header's: {header:?}",
        snapshot.header.serial
    );
    let before_trailer = text.len() - trailer.len();
    let digest: [u8; 32] = Sha256::digest(&text[..before_trailer]).into();
    ensure!(
        snapshot.sha256 == digest,
        "the snapshot's sha256 {} is not the digest of the text before the trailer {}: {shown}",
        hex(&snapshot.sha256),
        hex(&digest)
    );
    let trailer = std::str::from_utf8(trailer).expect("checked above");
    let trailer = trailer.strip_suffix('\n').unwrap_or(trailer);
    ensure!(
        number(trailer, "count=").last() == Some(&Some(records.len() as u64)),
        "the trailer {trailer:?} does not state the {} records read",
        records.len()
    );
    ensure!(
        trailer
            .split(' ')
            .filter_map(|f| f.strip_prefix("sha256="))
            .next_back()
            .is_some_and(|v| v.eq_ignore_ascii_case(&hex(&digest))),
        "the trailer {trailer:?} does not state the digest {}",
        hex(&digest)
    );

    // Every listed name is covered by its own record: the most specific record is itself.
    for line in records {
        let line = std::str::from_utf8(line).expect("checked above");
        let mut fields = line.strip_suffix('\n').unwrap_or(line).split('\t');
        let name = fields.next().unwrap_or_default();
        let status = fields.next().and_then(Status::parse);
        let expires = fields.nth(1).is_some();
        let Ok(host) = parse_registry_name(name) else {
            return Err(format!(
                "an accepted snapshot lists {name:?}, which parse_registry_name refuses: \
                 {shown}"
            ));
        };
        let covering = snapshot.registry.covering(&host);
        ensure!(
            covering.map(|e| e.status) == status
                && covering.is_some_and(|e| e.expires_at.is_some() == expires),
            "the record {line:?} of an accepted snapshot is looked up as {covering:?}"
        );
        if let Host::Domain(d) = &host {
            ensure!(
                !is_public_suffix(d),
                "an accepted snapshot lists the public suffix {d:?}"
            );
        }
        if let Some(entry) = covering {
            for require in [Requirement::Connected, Requirement::Filed] {
                let decided = snapshot.registry.decide(&host, require, NOW);
                let expected = reference_decision(entry.status, entry.expires_at, require, NOW);
                ensure!(
                    decided == expected,
                    "{host:?} ({line:?}) on a `{require:?}` listener is {decided:?}, not \
                     {expected:?}"
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target `snapshot_records`: snapshots written by SnapshotWriter from fuzzer-chosen records
// ---------------------------------------------------------------------------------------------

/// "Now" for the decisions, unix seconds: 2027-01-15T08:00:00Z.
pub const NOW: i64 = 1_800_000_000;

/// What the records' names are made of: labels and pieces that meet (parents, look-alikes,
/// Unicode and A-label forms of one name, public suffixes) and some that are invalid.
const PIECES: [&str; 32] = [
    "example",
    "com",
    "cn",
    "www",
    "a",
    "bad",
    "中国",
    "例子",
    "xn--fiqs8s",
    "xn--fsqu00a",
    "ＥＸＡＭＰＬＥ",
    "bücher",
    "xn--bcher-kva",
    "github",
    "io",
    "_dmarc",
    "x-y",
    "com.cn",
    "例子。中国",
    "gov",
    "localhost",
    "",
    "bad name",
    "123",
    "0x7f",
    "xn--a",
    "a%2e",
    "sub．example",
    "ß",
    "ss",
    "-lead",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// IP names, some of them the same address written differently, some invalid.
const IPS: [&str; 8] = [
    "203.0.113.7",
    "::ffff:203.0.113.7",
    "[2001:db8::1]",
    "2001:DB8::1",
    "203.0.113.8",
    "127.1",
    "[fe80::1%25eth0]",
    "0177.0.0.1",
];

/// Expiry instants and their unix seconds: past, far future, `NOW` itself (still in force: the
/// record lapses strictly after it), one second before `NOW`, and `NOW` in another offset.
const EXPIRIES: [(&str, i64); 5] = [
    ("2020-01-01T00:00:00Z", 1_577_836_800),
    ("2099-01-01T00:00:00Z", 4_070_908_800),
    ("2027-01-15T08:00:00Z", 1_800_000_000),
    ("2027-01-15T07:59:59Z", 1_799_999_999),
    ("2027-01-15T16:00:00+08:00", 1_800_000_000),
];

const FILING_NUMBERS: [Option<&str>; 4] = [
    None,
    Some("京ICP备12345678号-1"),
    Some(""),
    Some("粤ICP备33334444号-3"),
];

/// One record as the fuzzer chose it.
#[derive(Debug)]
pub struct FuzzRecord {
    pub name: String,
    pub status: Status,
    pub filing_number: Option<&'static str>,
    pub expires: Option<(&'static str, i64)>,
}

/// A snapshot as the fuzzer chose it.
#[derive(Debug)]
pub struct FuzzSnapshot {
    pub gzip: bool,
    pub serial: u64,
    pub records: Vec<FuzzRecord>,
}

/// Decodes any bytes into a snapshot: byte 0 is gzip (bit 0), byte 1 the serial, then two bytes
/// per record (at most 64 records):
///
/// - name byte: bit 7 set: `IPS[b & 7]`; otherwise `1 + (b & 3)` pieces, each chosen by one more
///   byte from `PIECES`, joined by dots, with a trailing dot if bit 2 and upper-cased (ASCII) if
///   bit 3;
/// - record byte: status `ALL[b % 5]`, filing number `(b >> 3) & 3`, expiry `(b >> 5) % 6` (0 =
///   none).
pub fn decode_records(data: &[u8]) -> FuzzSnapshot {
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    let flags = next().unwrap_or(0);
    let serial = u64::from(next().unwrap_or(0));
    let mut records = Vec::new();
    while records.len() < 64 {
        let Some(b) = next() else { break };
        let mut name = if b & 0x80 != 0 {
            IPS[usize::from(b & 7)].to_string()
        } else {
            let pieces: Vec<&str> = (0..=(b & 3))
                .map(|_| PIECES[usize::from(next().unwrap_or(0)) % PIECES.len()])
                .collect();
            let mut name = pieces.join(".");
            if b & 0x04 != 0 {
                name.push('.');
            }
            if b & 0x08 != 0 {
                name.make_ascii_uppercase();
            }
            name
        };
        if b & 0x80 != 0 && b & 0x40 != 0 {
            name.make_ascii_uppercase();
        }
        let r = next().unwrap_or(0);
        let expiry = usize::from(r >> 5) % (EXPIRIES.len() + 1);
        records.push(FuzzRecord {
            name,
            status: Status::ALL[usize::from(r % 5)],
            filing_number: FILING_NUMBERS[usize::from((r >> 3) & 3)],
            expires: expiry.checked_sub(1).map(|i| EXPIRIES[i]),
        });
    }
    FuzzSnapshot {
        gzip: flags & 1 != 0,
        serial,
        records,
    }
}

/// Writes the decoded snapshot with `SnapshotWriter` (so its checksum is right) and checks what
/// `read_snapshot` makes of it against a reference built here: the snapshot is accepted exactly
/// when every name is valid, none is a public suffix and none is listed twice (otherwise it is
/// refused for the first such fault), and then every listed name, a subdomain of it and its
/// parent are decided as the most specific listed record says.
pub fn check_snapshot_records(data: &[u8]) -> Check {
    let fuzz = decode_records(data);
    let mut writer = SnapshotWriter::new(Vec::new(), fuzz.serial, "2026-11-22T03:00:00Z")
        .map_err(|e| e.to_string())?;
    for r in &fuzz.records {
        writer
            .record(&r.name, r.status, r.filing_number, r.expires.map(|e| e.0))
            .map_err(|e| e.to_string())?;
    }
    let mut bytes = writer.finish().map_err(|e| e.to_string())?;
    if fuzz.gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).map_err(|e| e.to_string())?;
        bytes = gz.finish().map_err(|e| e.to_string())?;
    }
    let describe = || format!("{fuzz:?}");

    // The reference: what the snapshot must give, from the names' normal forms.
    let mut reference: HashMap<Host, Entry> = HashMap::new();
    let mut expected_refusal = None;
    let mut duplicate_domain = false;
    for r in &fuzz.records {
        let host = match parse_registry_name(&r.name) {
            Ok(h) => h,
            Err(_) => {
                expected_refusal.get_or_insert(RejectReason::MalformedRecord);
                continue;
            }
        };
        if let Host::Domain(d) = &host {
            if is_public_suffix(d) {
                expected_refusal.get_or_insert(RejectReason::PublicSuffix);
                continue;
            }
        }
        let entry = Entry {
            status: r.status,
            expires_at: r.expires.map(|e| e.1),
        };
        if reference.insert(host.clone(), entry).is_some() {
            match host {
                // An IP listed twice is refused on its line, a domain only at the end.
                Host::Ip(_) => {
                    expected_refusal.get_or_insert(RejectReason::DuplicateName);
                }
                Host::Domain(_) => duplicate_domain = true,
            }
        }
    }
    if duplicate_domain {
        expected_refusal.get_or_insert(RejectReason::DuplicateName);
    }

    let snapshot = read_snapshot(&bytes[..]);
    match (&snapshot, expected_refusal) {
        (Ok(_), None) => {}
        (Err(e), Some(reason)) => {
            ensure!(
                e.reason == reason,
                "refused with {e} where {reason:?} was expected: {}",
                describe()
            );
            return Ok(());
        }
        (Ok(_), Some(reason)) => {
            return Err(format!(
                "accepted, where {reason:?} was expected: {}",
                describe()
            ))
        }
        (Err(e), None) => {
            return Err(format!(
                "refused with {e}, where it must be accepted: {}",
                describe()
            ))
        }
    }
    let snapshot = snapshot.expect("accepted");
    check_snapshot(&bytes)?;
    ensure!(
        snapshot.header.serial == fuzz.serial,
        "serial {} read back as {}",
        fuzz.serial,
        snapshot.header.serial
    );
    ensure!(
        snapshot.registry.len() == reference.len(),
        "{} records gave a registry of {} entries: {}",
        reference.len(),
        snapshot.registry.len(),
        describe()
    );

    // Probes: each listed name, a name below it and its parent.
    let mut probes: Vec<Host> = Vec::new();
    for host in reference.keys() {
        probes.push(host.clone());
        if let Host::Domain(d) = host {
            let below = format!("zz.{}", d.as_str());
            let parent = d.as_str().split_once('.').map(|(_, p)| p);
            for probe in [Some(below.as_str()), parent].into_iter().flatten() {
                if let Ok(h) = parse_authority(probe.as_bytes()) {
                    probes.push(h);
                }
            }
        }
    }
    for host in &probes {
        let covering = match host {
            Host::Domain(d) => d
                .self_and_parents()
                .find_map(|n| reference.get(&parse_registry_name(n).ok()?).copied()),
            Host::Ip(_) => reference.get(host).copied(),
        };
        for require in [Requirement::Connected, Requirement::Filed] {
            let decided = snapshot.registry.decide(host, require, NOW);
            let expected = match covering {
                Some(e) => reference_decision(e.status, e.expires_at, require, NOW),
                None => Decision::Block(match host {
                    Host::Domain(_) => BlockReason::Unfiled,
                    Host::Ip(_) => BlockReason::IpUnfiled,
                }),
            };
            ensure!(
                decided == expected,
                "{host:?} on a `{require:?}` listener is {decided:?}, but the records say \
                 {expected:?} ({covering:?}): {}",
                describe()
            );
        }
    }
    Ok(())
}

/// The decision table of the brief (shared/design.md) and docs/design.md's expiry rule, written
/// out again as the reference: after its expiry a `connected` record counts as `unconnected`.
fn reference_decision(
    status: Status,
    expires_at: Option<i64>,
    require: Requirement,
    now: i64,
) -> Decision {
    let lapsed = expires_at.is_some_and(|t| now > t);
    match status {
        Status::Connected if !lapsed => Decision::Allow,
        Status::Connected | Status::Unconnected | Status::AccessCancelled => match require {
            Requirement::Filed => Decision::Allow,
            Requirement::Connected => Decision::Block(BlockReason::Unconnected),
        },
        Status::Revoked => Decision::Block(BlockReason::Revoked),
        Status::Denied => Decision::Block(BlockReason::Denied),
    }
}
