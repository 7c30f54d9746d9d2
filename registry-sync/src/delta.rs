//! Registry delta format 1: the changes from one serial to the next, so that a new filing
//! reaches the gates without a full download. Same text conventions and framing as snapshot v1
//! (`snapshot.rs` reads both): UTF-8, `\n` line ends, optional gzip, a SHA-256 trailer.
//!
//! ```text
//! icp-gate-delta 1 from=42 to=43 generated_at=2026-11-22T03:00:05Z
//! +<TAB>new.example.com<TAB>connected<TAB>京ICP备1号-1
//! -<TAB>gone.example.com
//! end count=2 entries=1000001 sha256=<hex SHA-256 of every byte before this line>
//! ```
//!
//! See docs/registry-format.md for the rules; `diff` writes a delta from two snapshots.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::name::{is_public_suffix_bytes, parse_registry_name_into};
use crate::registry::{Change, Key, Registry, Status};
use crate::snapshot::{
    header_fields, parse_generated_at, parse_record, read_framed, record_line, Format,
    FramedWriter, Header, RejectReason, SnapshotError,
};

const MAGIC: &str = "icp-gate-delta";

/// The header line's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The serial the delta applies to.
    pub from: u64,
    /// The serial after it.
    pub to: u64,
    pub generated_at: String,
    pub generated_at_unix: i64,
}

/// A delta that passed every check of its own (not yet checked against a registry).
#[derive(Clone, Debug)]
pub struct Delta {
    pub header: DeltaHeader,
    pub changes: Vec<Change>,
    /// Records in the registry once the delta is applied (the trailer's `entries=`).
    pub entries: u64,
    pub sha256: [u8; 32],
}

impl Delta {
    /// (upserts, removals).
    pub fn counts(&self) -> (usize, usize) {
        let upserts = self
            .changes
            .iter()
            .filter(|c| matches!(c, Change::Upsert(..)))
            .count();
        (upserts, self.changes.len() - upserts)
    }
}

/// Reads and checks a delta, plain or gzip. The reasons are the delta ones: `delta_checksum`,
/// `delta_malformed` (any other problem of the text, the detail says which), and `too_large` /
/// `read_error` as for snapshots.
pub fn read_delta<R: Read>(reader: R, max_bytes: u64) -> Result<Delta, SnapshotError> {
    let mut format = DeltaFormat {
        changes: Vec::new(),
        seen: HashSet::new(),
        name: Vec::with_capacity(256),
    };
    let framed = read_framed(reader, None, max_bytes, &mut format).map_err(as_delta_error)?;
    Ok(Delta {
        header: framed.header,
        changes: format.changes,
        entries: framed.entries.expect("required by the delta trailer"),
        sha256: framed.sha256,
    })
}

/// A framing error in a delta, under the delta's own reasons: the metric tells a broken delta
/// feed (which falls back to the full snapshot) from a broken snapshot. The detail keeps the
/// precise problem.
fn as_delta_error(e: SnapshotError) -> SnapshotError {
    let reason = match e.reason {
        RejectReason::ReadError | RejectReason::TooLarge => return e,
        RejectReason::ChecksumMismatch => RejectReason::DeltaChecksum,
        _ => RejectReason::DeltaMalformed,
    };
    SnapshotError {
        reason,
        line: e.line,
        detail: format!("{}: {}", e.reason.as_str(), e.detail),
    }
}

struct DeltaFormat {
    changes: Vec<Change>,
    seen: HashSet<Key>,
    name: Vec<u8>,
}

impl Format for DeltaFormat {
    type Header = DeltaHeader;
    const TRAILER_ENTRIES: bool = true;

    fn header(&mut self, text: &str) -> Result<DeltaHeader, String> {
        parse_delta_header(text)
    }

    fn body_line(&mut self, text: &str, line_no: u64) -> Result<(), SnapshotError> {
        let err = |reason, detail: String| SnapshotError::new(reason, Some(line_no), detail);
        let malformed = |detail: String| err(RejectReason::MalformedRecord, detail);
        let (key, change) = match text.split_once('\t') {
            Some(("+", record)) => {
                let (ip, entry) = parse_record(record, &mut self.name)
                    .map_err(|(reason, detail)| err(reason, detail))?;
                let key = key_of(ip, &self.name);
                (key.clone(), Change::Upsert(key, entry))
            }
            Some(("-", name)) => {
                let ip = parse_registry_name_into(name, &mut self.name)
                    .map_err(|e| malformed(format!("name `{}`: {e}", name.escape_debug())))?;
                if ip.is_none() && is_public_suffix_bytes(&self.name) {
                    return Err(err(
                        RejectReason::PublicSuffix,
                        format!(
                            "`{}` is a public suffix and can never be filed",
                            String::from_utf8_lossy(&self.name)
                        ),
                    ));
                }
                let key = key_of(ip, &self.name);
                (key.clone(), Change::Remove(key))
            }
            _ => {
                return Err(malformed(
                    "expected `+<TAB>record` or `-<TAB>name`".to_owned(),
                ))
            }
        };
        if !self.seen.insert(key.clone()) {
            return Err(err(
                RejectReason::DuplicateName,
                format!("`{key}` is changed more than once in the delta"),
            ));
        }
        self.changes.push(change);
        Ok(())
    }
}

fn key_of(ip: Option<std::net::IpAddr>, name: &[u8]) -> Key {
    match ip {
        Some(ip) => Key::Ip(ip),
        None => Key::Domain(name.into()),
    }
}

pub(crate) fn parse_delta_header(line: &str) -> Result<DeltaHeader, String> {
    let fields = header_fields(line, MAGIC)?;
    let (mut from, mut to, mut generated_at) = (None, None, None);
    let serial = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("serial `{v}` is not an unsigned integer"))
    };
    for field in fields {
        match field.split_once('=') {
            Some(("from", v)) => from = Some(serial(v)?),
            Some(("to", v)) => to = Some(serial(v)?),
            Some(("generated_at", v)) => generated_at = Some(parse_generated_at(v)?),
            _ => return Err(format!("unexpected header field `{field}`")),
        }
    }
    let from = from.ok_or("from= is missing")?;
    let to = to.ok_or("to= is missing")?;
    if to <= from {
        return Err(format!(
            "to={to} is not above from={from}: a delta moves the serial forward"
        ));
    }
    let (generated_at, generated_at_unix) = generated_at.ok_or("generated_at= is missing")?;
    Ok(DeltaHeader {
        from,
        to,
        generated_at,
        generated_at_unix,
    })
}

/// What applying a delta gave: the new registry, and how long it took.
pub struct Applied {
    pub registry: Registry,
    pub duration: Duration,
}

/// Overlay size past which a registry is compacted into a fresh index: 1% of its records, and
/// at least this many. Below it, a delta costs O(its changes + the overlay); the compaction
/// costs as much as loading a snapshot, once per that many changes.
pub const COMPACT_MIN_OVERLAY: usize = 4096;

/// Whether `registry` holds enough changes over its shared index to be compacted
/// (`Registry::compact`): more than 1% of its records and more than `COMPACT_MIN_OVERLAY`.
/// `apply_delta` does not compact: the sync puts the delta's changes in service and compacts on
/// a thread of its own (`Syncer::sync_deltas`), so that no filing waits seconds for it.
pub fn should_compact(registry: &Registry) -> bool {
    registry.overlay_len() > COMPACT_MIN_OVERLAY.max(registry.len() / 100)
}

/// Checks `delta` against the registry in service (`serial`, `registry`) and applies it:
/// `delta_gap` when it does not start at `serial`, `delta_mismatch` when it removes a name that
/// has no record or the result's record count is not the trailer's `entries`.
pub fn apply_delta(
    registry: &Registry,
    serial: u64,
    delta: &Delta,
) -> Result<Applied, SnapshotError> {
    let started = Instant::now();
    if delta.header.from != serial {
        return Err(SnapshotError::new(
            RejectReason::DeltaGap,
            Some(1),
            format!(
                "the delta goes from serial {} to {}, but serial {serial} is in service",
                delta.header.from, delta.header.to
            ),
        ));
    }
    let mismatch = |detail: String| SnapshotError::new(RejectReason::DeltaMismatch, None, detail);
    let next = registry.apply(&delta.changes).map_err(mismatch)?;
    if next.len() as u64 != delta.entries {
        return Err(mismatch(format!(
            "applied to serial {serial} it gives {} entries, the trailer says entries={}: \
             the registry in service and the source's have diverged",
            next.len(),
            delta.entries
        )));
    }
    Ok(Applied {
        registry: next,
        duration: started.elapsed(),
    })
}

/// Writes a delta in format 1, computing the trailer. Names are written as given.
pub struct DeltaWriter<W: Write> {
    frame: FramedWriter<W>,
}

impl<W: Write> DeltaWriter<W> {
    pub fn new(out: W, from: u64, to: u64, generated_at: &str) -> io::Result<Self> {
        Ok(DeltaWriter {
            frame: FramedWriter::new(
                out,
                &format!("{MAGIC} 1 from={from} to={to} generated_at={generated_at}"),
            )?,
        })
    }

    /// `+`: add the record or replace the one with that name.
    pub fn upsert(
        &mut self,
        name: &str,
        status: Status,
        filing_number: Option<&str>,
        expires_at: Option<&str>,
    ) -> io::Result<()> {
        let record = record_line(name, status, filing_number, expires_at);
        self.frame.line(&format!("+\t{record}"))
    }

    /// `-`: remove the record of that name.
    pub fn remove(&mut self, name: &str) -> io::Result<()> {
        self.frame.line(&format!("-\t{name}\n"))
    }

    /// Writes a line exactly as given (it must end with `\n`); for tests of malformed input.
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.frame.line(line)
    }

    /// Writes the trailer (`entries`: records after the delta) and returns the writer.
    pub fn finish(self, entries: u64) -> io::Result<W> {
        self.frame.finish(&format!(" entries={entries}"))
    }
}

// ---------------------------------------------------------------------------------------------
// diff

/// A record's fields as written, for comparing two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordText {
    status: Status,
    filing_number: Option<String>,
    expires_at: Option<String>,
}

/// Snapshot v1 read into a map of normalized name to its fields, with every check a gate makes.
struct RecordsFormat {
    records: HashMap<String, RecordText>,
    name: Vec<u8>,
}

impl Format for RecordsFormat {
    type Header = Header;
    const TRAILER_ENTRIES: bool = false;

    fn header(&mut self, text: &str) -> Result<Header, String> {
        crate::snapshot::parse_header(text)
    }

    fn body_line(&mut self, text: &str, line_no: u64) -> Result<(), SnapshotError> {
        let (ip, entry) = parse_record(text, &mut self.name)
            .map_err(|(reason, d)| SnapshotError::new(reason, Some(line_no), d))?;
        let key = key_of(ip, &self.name).to_string();
        let mut fields = text.split('\t').skip(2);
        let record = RecordText {
            status: entry.status,
            filing_number: fields.next().map(str::to_owned),
            expires_at: fields.next().map(str::to_owned),
        };
        if self.records.insert(key.clone(), record).is_some() {
            return Err(SnapshotError::new(
                RejectReason::DuplicateName,
                Some(line_no),
                format!("`{key}` is listed more than once"),
            ));
        }
        Ok(())
    }
}

fn read_records<R: Read>(
    reader: R,
) -> Result<(Header, HashMap<String, RecordText>), SnapshotError> {
    let mut format = RecordsFormat {
        records: HashMap::new(),
        name: Vec::with_capacity(256),
    };
    let framed = read_framed(reader, None, u64::MAX, &mut format)?;
    Ok((framed.header, format.records))
}

/// Why `diff` wrote nothing.
#[derive(Debug)]
pub enum DiffError {
    /// The old (`"OLD"`) or new (`"NEW"`) snapshot is invalid.
    Invalid(&'static str, SnapshotError),
    /// NEW's serial is not above OLD's.
    Serial {
        old: u64,
        new: u64,
    },
    Write(io::Error),
}

impl std::fmt::Display for DiffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiffError::Invalid(which, e) => write!(f, "{which} is not a valid snapshot: {e}"),
            DiffError::Serial { old, new } => write!(
                f,
                "NEW's serial {new} is not above OLD's serial {old}: a delta moves the serial forward"
            ),
            DiffError::Write(e) => write!(f, "writing the delta: {e}"),
        }
    }
}

impl std::error::Error for DiffError {}

/// What `diff` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffSummary {
    pub from: u64,
    pub to: u64,
    pub upserts: usize,
    pub removals: usize,
    pub entries: usize,
}

/// Writes the delta that takes snapshot `old` to snapshot `new` (both checked as a gate checks
/// them; records in any order, names compared after normalization). Removals first, then
/// upserts, each sorted by name; names are written normalized. Both snapshots are held in
/// memory as maps of their records.
pub fn diff<A: Read, B: Read, W: Write>(old: A, new: B, out: W) -> Result<DiffSummary, DiffError> {
    let (old_header, old) = read_records(old).map_err(|e| DiffError::Invalid("OLD", e))?;
    let (new_header, new) = read_records(new).map_err(|e| DiffError::Invalid("NEW", e))?;
    if new_header.serial <= old_header.serial {
        return Err(DiffError::Serial {
            old: old_header.serial,
            new: new_header.serial,
        });
    }
    let mut removals: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    let mut upserts: Vec<(&String, &RecordText)> = new
        .iter()
        .filter(|(k, r)| old.get(*k) != Some(*r))
        .collect();
    removals.sort_unstable();
    upserts.sort_unstable_by_key(|(k, _)| *k);
    let mut w = DeltaWriter::new(
        out,
        old_header.serial,
        new_header.serial,
        &new_header.generated_at,
    )
    .map_err(DiffError::Write)?;
    for name in &removals {
        w.remove(name).map_err(DiffError::Write)?;
    }
    for (name, r) in &upserts {
        w.upsert(
            name,
            r.status,
            r.filing_number.as_deref(),
            r.expires_at.as_deref(),
        )
        .map_err(DiffError::Write)?;
    }
    w.finish(new.len() as u64).map_err(DiffError::Write)?;
    Ok(DiffSummary {
        from: old_header.serial,
        to: new_header.serial,
        upserts: upserts.len(),
        removals: removals.len(),
        entries: new.len(),
    })
}

/// Whether the text `reader` gives (gzip or not) starts as a delta rather than a snapshot.
pub fn starts_as_delta<R: Read>(reader: R) -> io::Result<bool> {
    let mut reader = io::BufReader::new(reader);
    let gzip = io::BufRead::fill_buf(&mut reader)?.starts_with(&[0x1f, 0x8b]);
    let mut start = Vec::with_capacity(MAGIC.len());
    if gzip {
        flate2::bufread::MultiGzDecoder::new(reader)
            .take(MAGIC.len() as u64)
            .read_to_end(&mut start)?;
    } else {
        reader.take(MAGIC.len() as u64).read_to_end(&mut start)?;
    }
    Ok(start == MAGIC.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{read_snapshot, SnapshotWriter};
    use crate::{parse_authority, Decision, Requirement};

    fn snapshot(serial: u64, records: &[(&str, Status)]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), serial, "2026-11-22T03:00:00Z").unwrap();
        for (name, status) in records {
            w.record(name, *status, Some("京ICP备1号-1"), None).unwrap();
        }
        w.finish().unwrap()
    }

    fn delta(from: u64, to: u64, lines: &[&str], entries: u64) -> Vec<u8> {
        let mut w = DeltaWriter::new(Vec::new(), from, to, "2026-11-22T03:00:05Z").unwrap();
        for l in lines {
            w.raw_line(l).unwrap();
        }
        w.finish(entries).unwrap()
    }

    fn reason(bytes: &[u8]) -> RejectReason {
        read_delta(bytes, u64::MAX)
            .expect_err("must be rejected")
            .reason
    }

    fn decide(r: &Registry, host: &str) -> Decision {
        r.decide(
            &parse_authority(host.as_bytes()).unwrap(),
            Requirement::Connected,
            0,
        )
    }

    #[test]
    fn reads_and_applies_the_documented_example() {
        use Status::*;
        let base = read_snapshot(
            &snapshot(
                42,
                &[
                    ("changed.example.cn", Connected),
                    ("gone.example.com", Connected),
                    ("example.com", Connected),
                    ("203.0.113.7", Connected),
                ],
            )[..],
        )
        .unwrap();
        let bytes = delta(
            42,
            43,
            &[
                "+\tnew.example.com\tconnected\t京ICP备1号-1\n",
                "+\tCHANGED.example.cn.\tdenied\n",
                "-\tgone.example.com\n",
                "-\t203.0.113.7\n",
            ],
            3,
        );
        let d = read_delta(&bytes[..], u64::MAX).unwrap();
        assert_eq!((d.header.from, d.header.to, d.entries), (42, 43, 3));
        assert_eq!(d.counts(), (2, 2));
        let applied = apply_delta(&base.registry, 42, &d).unwrap();
        let r = applied.registry;
        assert_eq!(r.len(), 3);
        assert_eq!(r.overlay_len(), 3);
        assert_eq!(decide(&r, "www.new.example.com"), Decision::Allow);
        assert_eq!(
            decide(&r, "changed.example.cn"),
            Decision::Block(crate::BlockReason::Denied)
        );
        // The removed record no longer overrides: its parent's filing covers it again.
        assert_eq!(decide(&r, "gone.example.com"), Decision::Allow);
        assert_eq!(
            decide(&r, "203.0.113.7"),
            Decision::Block(crate::BlockReason::IpUnfiled)
        );
        // The base it came from is untouched.
        assert_eq!(base.registry.len(), 4);
        assert_eq!(
            decide(&base.registry, "new.example.com"),
            Decision::Allow,
            "example.com covers it in the base"
        );
        assert_eq!(
            decide(&base.registry, "changed.example.cn"),
            Decision::Allow
        );
        // Compacted, it answers the same with an empty overlay.
        let c = r.compact();
        assert_eq!((c.len(), c.overlay_len()), (3, 0));
        for host in [
            "www.new.example.com",
            "changed.example.cn",
            "gone.example.com",
        ] {
            assert_eq!(decide(&c, host), decide(&r, host), "{host}");
        }
        assert_eq!(c.status_counts(), r.status_counts());
        assert_eq!(r.status_counts(), [2, 0, 0, 0, 1]);
    }

    #[test]
    fn every_bad_delta_is_refused_with_its_reason() {
        let good = delta(1, 2, &["+\ta.example.com\tconnected\n"], 2);
        assert!(read_delta(&good[..], u64::MAX).is_ok());
        let text = String::from_utf8(good.clone()).unwrap();
        assert_eq!(
            reason(text.replace("a.example", "b.example").as_bytes()),
            RejectReason::DeltaChecksum
        );
        assert_eq!(
            reason(&good[..good.len() - 20]),
            RejectReason::DeltaMalformed
        );
        assert_eq!(reason(b""), RejectReason::DeltaMalformed);
        // A snapshot is not a delta.
        assert_eq!(
            reason(&snapshot(1, &[("a.cn", Status::Connected)])),
            RejectReason::DeltaMalformed
        );
        for (lines, what) in [
            (vec!["a.example.com\tconnected\n"], "no op"),
            (vec!["*\ta.example.com\tconnected\n"], "unknown op"),
            (vec!["+\ta.example.com\tfiled\n"], "bad status"),
            (vec!["+\tcom.cn\tconnected\n"], "public suffix upsert"),
            (vec!["-\tcom.cn\n"], "public suffix removal"),
            (
                vec!["-\ta.example.com\tconnected\n"],
                "fields after a removal",
            ),
            (vec!["+\ta.example.com\tconnected\r\n"], "carriage return"),
            (
                vec!["+\ta.example.com\tconnected\n", "-\tA.EXAMPLE.com.\n"],
                "a name twice",
            ),
        ] {
            let bytes = delta(1, 2, &lines, 2);
            let e = read_delta(&bytes[..], u64::MAX).unwrap_err();
            assert_eq!(e.reason, RejectReason::DeltaMalformed, "{what}: {e}");
        }
        // The serial must move forward.
        let back = text.replacen("from=1 to=2", "from=2 to=2", 1);
        assert_eq!(reason(back.as_bytes()), RejectReason::DeltaMalformed);
        // entries= is required.
        let no_entries = text.replacen(" entries=2", "", 1);
        assert_eq!(reason(no_entries.as_bytes()), RejectReason::DeltaMalformed);
        assert_eq!(
            read_delta(&good[..], 10).unwrap_err().reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn a_delta_that_does_not_fit_the_registry_is_refused() {
        let base = read_snapshot(&snapshot(5, &[("a.cn", Status::Connected)])[..])
            .unwrap()
            .registry;
        let d = |bytes: Vec<u8>| read_delta(&bytes[..], u64::MAX).unwrap();
        let fits = d(delta(5, 6, &["+\tb.cn\tconnected\n"], 2));
        assert!(apply_delta(&base, 5, &fits).is_ok());
        let gap = apply_delta(&base, 4, &fits).err().unwrap();
        assert_eq!(gap.reason, RejectReason::DeltaGap);
        let absent = d(delta(5, 6, &["-\tb.cn\n"], 0));
        assert_eq!(
            apply_delta(&base, 5, &absent).err().unwrap().reason,
            RejectReason::DeltaMismatch
        );
        let diverged = d(delta(5, 6, &["+\tb.cn\tconnected\n"], 3));
        assert_eq!(
            apply_delta(&base, 5, &diverged).err().unwrap().reason,
            RejectReason::DeltaMismatch
        );
    }

    #[test]
    fn diff_writes_the_delta_between_two_snapshots() {
        use Status::*;
        let old = snapshot(
            7,
            &[
                ("Example.COM", Connected),
                ("gone.cn", Connected),
                ("same.cn", Unconnected),
                ("2001:db8::7", Connected),
            ],
        );
        let new = snapshot(
            9,
            &[
                ("same.cn", Unconnected),
                ("example.com.", Denied),
                ("new.cn", Connected),
                ("[2001:DB8::7]", Connected),
            ],
        );
        let mut out = Vec::new();
        let summary = diff(&old[..], &new[..], &mut out).unwrap();
        assert_eq!(
            summary,
            DiffSummary {
                from: 7,
                to: 9,
                upserts: 2,
                removals: 1,
                entries: 4
            }
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("icp-gate-delta 1 from=7 to=9 generated_at=2026-11-22T03:00:00Z\n-\tgone.cn\n+\texample.com\tdenied\t京ICP备1号-1\n+\tnew.cn\tconnected"),
            "{text}"
        );
        let d = read_delta(&out[..], u64::MAX).unwrap();
        let old_r = read_snapshot(&old[..]).unwrap().registry;
        let new_r = read_snapshot(&new[..]).unwrap().registry;
        let applied = apply_delta(&old_r, 7, &d).unwrap().registry;
        for host in [
            "example.com",
            "gone.cn",
            "same.cn",
            "new.cn",
            "[2001:db8::7]",
        ] {
            assert_eq!(decide(&applied, host), decide(&new_r, host), "{host}");
        }
        assert!(matches!(
            diff(&new[..], &old[..], Vec::new()),
            Err(DiffError::Serial { old: 9, new: 7 })
        ));
        assert!(matches!(
            diff(&old[..], &b"junk"[..], Vec::new()),
            Err(DiffError::Invalid("NEW", _))
        ));
    }
}
