//! The publisher's side: a filing system's export becomes a snapshot (`build`), and a directory
//! that any static web server or object store can serve as a feed of snapshots and deltas
//! (`publish`), laid out exactly as a gate's `registry.source` and `registry.delta_source` read
//! it:
//!
//! ```text
//! DIR/registry.snapshot        the latest snapshot          source       = "https://HOST/registry.snapshot"
//! DIR/registry.deltas/<from>   the delta from serial <from>  delta_source = "https://HOST/registry.deltas/"
//! ```
//!
//! (the same names a gate keeps in its `state_dir`). Everything is written through a temporary
//! file, synced and renamed, the delta before the snapshot: a gate polling at any moment sees
//! the old feed or the new one, never a part of one. The snapshot writer and reader, `diff` and
//! the delta format are the ones a gate reads with: nothing here checks a record differently.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::delta::{diff, parse_delta_header, DiffError, DiffSummary};
use crate::name::parse_registry_name;
use crate::snapshot::{
    parse_header, parse_rfc3339, read_snapshot_sized, RejectReason, Snapshot, SnapshotError,
    SnapshotWriter,
};
use crate::sync::{MAX_DELTA_BYTES, STATE_DELTAS, STATE_FILE};

/// Longest record line (as the snapshot reader's limit).
const MAX_RECORD_LINE: usize = 8 * 1024;
/// What starts a snapshot (and not a records file).
const SNAPSHOT_MAGIC: &[u8] = b"icp-gate-registry ";

/// Why `build` or `publish` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A record of the records file fails a check: its line number(s) in that file.
    #[error("{lines}: {reason}: {detail}", lines = line_list(lines), reason = reason.as_str())]
    Record {
        lines: Vec<u64>,
        reason: RejectReason,
        detail: String,
    },
    /// A snapshot (the export, or the last one published) fails a check.
    #[error("{what} is not a valid snapshot: {error}")]
    Snapshot { what: String, error: SnapshotError },
    /// The arguments or the directory's state do not allow it.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: io::Error,
    },
}

fn line_list(lines: &[u64]) -> String {
    let numbers: Vec<String> = lines.iter().map(u64::to_string).collect();
    match numbers.len() {
        0 => "the records".to_owned(),
        1 => format!("line {}", numbers[0]),
        _ => format!("lines {}", numbers.join(" and ")),
    }
}

fn io_error(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> PublishError {
    let what = what.to_string();
    move |error| PublishError::Io { what, error }
}

/// Now, as a snapshot's `generated_at` (RFC 3339, UTC, whole seconds).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC instant formats as RFC 3339")
}

/// Checks a `--generated-at` value as a snapshot header would.
pub fn check_generated_at(v: &str) -> Result<(), PublishError> {
    parse_rfc3339(v)
        .map(|_| ())
        .map_err(|e| PublishError::Refused(format!("generated_at `{v}` is not RFC 3339: {e}")))
}

/// A file that is removed when dropped, unless it was put in place.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    /// A fresh name in `dir` for a file that will become `name`.
    fn new(dir: &Path, name: &str) -> TempFile {
        TempFile {
            path: dir.join(format!(".{name}.tmp-{}", std::process::id())),
            kept: false,
        }
    }

    /// Syncs the file and renames it to `to` (then syncs the directory).
    fn put_in_place(mut self, to: &Path) -> Result<(), PublishError> {
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(io_error(self.path.display()))?;
        std::fs::rename(&self.path, to).map_err(io_error(to.display()))?;
        self.kept = true;
        if let Some(dir) = to.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error(dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The next line of `reader` into `line` (with its `\n`, if it has one). Refuses a line longer
/// than a record can be without reading more of it. False at the end.
fn next_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    line_no: u64,
) -> Result<bool, PublishError> {
    line.clear();
    let n = reader
        .by_ref()
        .take(MAX_RECORD_LINE as u64 + 2)
        .read_until(b'\n', line)
        .map_err(io_error(format_args!("reading line {line_no}")))?;
    if line.len() > MAX_RECORD_LINE + 1 || (line.len() > MAX_RECORD_LINE && !line.ends_with(b"\n"))
    {
        return Err(PublishError::Record {
            lines: vec![line_no],
            reason: RejectReason::MalformedRecord,
            detail: format!("line longer than {MAX_RECORD_LINE} bytes"),
        });
    }
    Ok(n > 0)
}

/// Copies the record lines of `records` into a snapshot written to `out`. Only what the
/// snapshot's framing could not say itself is checked here (a line that would read as a
/// trailer, text that is not UTF-8); `seal` checks every record after.
fn write_records(
    records: &mut impl BufRead,
    serial: u64,
    generated_at: &str,
    out: impl Write,
) -> Result<u64, PublishError> {
    let mut w = SnapshotWriter::new(out, serial, generated_at).map_err(io_error("writing"))?;
    let mut line = Vec::new();
    let mut line_no = 0;
    let bad = |line_no, detail: &str| PublishError::Record {
        lines: vec![line_no],
        reason: RejectReason::MalformedRecord,
        detail: detail.to_owned(),
    };
    while next_line(records, &mut line, line_no + 1)? {
        line_no += 1;
        if line_no == 1 && line.starts_with(SNAPSHOT_MAGIC) {
            return Err(PublishError::Refused(
                "this is already a snapshot (it has a header line), not a records file: \
                 check it with `icp-gate registry verify`"
                    .into(),
            ));
        }
        if line.starts_with(b"end ") {
            return Err(bad(
                line_no,
                "a record cannot start with `end ` (that is a snapshot's trailer)",
            ));
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        let text =
            std::str::from_utf8(&line).map_err(|_| bad(line_no, "the line is not valid UTF-8"))?;
        w.raw_line(text).map_err(io_error("writing"))?;
    }
    let mut out = w.finish().map_err(io_error("writing"))?;
    out.flush().map_err(io_error("writing"))?;
    Ok(line_no)
}

/// Seals the records file `records` into a snapshot of `serial` at `path` (a file that does not
/// exist yet), then reads it back with every check a gate makes. A failed check is reported
/// with the line of the records file it is on.
fn seal(
    records: &Path,
    serial: u64,
    generated_at: &str,
    path: &Path,
) -> Result<Snapshot, PublishError> {
    check_generated_at(generated_at)?;
    let mut input = BufReader::new(File::open(records).map_err(io_error(records.display()))?);
    let out = File::create_new(path).map_err(io_error(path.display()))?;
    write_records(&mut input, serial, generated_at, BufWriter::new(out))?;
    let file = File::open(path).map_err(io_error(path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    read_snapshot_sized(file, size).map_err(|e| match e.line {
        // Line 1 is the header this wrote: record N is line N + 1.
        Some(n) if n > 1 => PublishError::Record {
            lines: vec![n - 1],
            reason: e.reason,
            detail: e.detail,
        },
        _ if e.reason == RejectReason::DuplicateName => duplicate_lines(records, e),
        _ => PublishError::Snapshot {
            what: "the sealed records".into(),
            error: e,
        },
    })
}

/// The lines of the records file holding the name a duplicate-name error is about (the index
/// finds a duplicate domain only once every record is in, without its line).
fn duplicate_lines(records: &Path, e: SnapshotError) -> PublishError {
    let name = e
        .detail
        .split('`')
        .nth(1)
        .and_then(|n| parse_registry_name(n).ok());
    let mut lines = Vec::new();
    if let (Some(name), Ok(file)) = (name, File::open(records)) {
        let same = |field: &str| parse_registry_name(field).ok().as_ref() == Some(&name);
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let Ok(line) = line else { break };
            let field = line.split(|&b| b == b'\t').next().unwrap_or_default();
            if std::str::from_utf8(field).is_ok_and(same) {
                lines.push(i as u64 + 1);
            }
        }
    }
    PublishError::Record {
        lines,
        reason: e.reason,
        detail: e.detail,
    }
}

/// What `build` wrote.
pub struct Built {
    pub snapshot: Snapshot,
    pub records: u64,
}

/// `icp-gate registry build`: seals `records` (record lines of snapshot format v1, nothing
/// else) into a snapshot of `serial`, checked as a gate checks it, written to `output`
/// atomically (a temporary file beside it, renamed once it is valid), or to `stdout` when
/// `output` is None. Nothing is written when any record fails a check.
pub fn build(
    records: &Path,
    serial: u64,
    generated_at: &str,
    output: Option<&Path>,
    stdout: &mut dyn Write,
) -> Result<Built, PublishError> {
    let dir = match output {
        Some(path) => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        },
        None => std::env::temp_dir(),
    };
    let name = output
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "icp-gate-build".to_owned());
    let tmp = TempFile::new(&dir, &name);
    let snapshot = seal(records, serial, generated_at, &tmp.path)?;
    let count = snapshot.registry.len() as u64;
    match output {
        Some(path) => tmp.put_in_place(path)?,
        None => {
            let mut file = File::open(&tmp.path).map_err(io_error(tmp.path.display()))?;
            io::copy(&mut file, stdout).map_err(io_error("writing to standard output"))?;
            stdout
                .flush()
                .map_err(io_error("writing to standard output"))?;
        }
    }
    Ok(Built {
        snapshot,
        records: count,
    })
}

/// How to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// The serial of the new snapshot (a records export only); default one above the highest
    /// serial the directory has published.
    pub serial: Option<u64>,
    /// `generated_at` of a snapshot built from a records export.
    pub generated_at: String,
    /// Deltas kept in the directory (the newest); 0 publishes snapshots only.
    pub keep_deltas: usize,
}

/// What `publish` did.
#[derive(Debug)]
pub enum Published {
    /// The first snapshot of the directory.
    First { serial: u64, entries: u64 },
    /// A new snapshot, and the delta to it from the previous one (None when none was written:
    /// `keep_deltas` is 0, or the delta is larger than a gate reads).
    Next {
        serial: u64,
        entries: u64,
        delta: Option<DiffSummary>,
        /// Why no delta was written, when none was.
        no_delta: Option<String>,
        pruned: Vec<u64>,
    },
    /// The export has the same records as the snapshot published last: nothing written.
    Unchanged { serial: u64 },
}

/// Held while a publish runs: a second publish into the same directory is refused.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> Result<Lock, PublishError> {
        let path = dir.join(".publish.lock");
        match File::create_new(&path) {
            Ok(mut f) => {
                let _ = writeln!(f, "{}", std::process::id());
                Ok(Lock(path))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(PublishError::Refused(format!(
                    "{} exists: another publish is running into this directory (if none is, a \
                     publish was killed: remove the file)",
                    path.display()
                )))
            }
            Err(e) => Err(io_error(path.display())(e)),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first line of `path` (at most a record line's length), without its `\n`.
fn first_line(path: &Path) -> io::Result<String> {
    let mut line = Vec::new();
    BufReader::new(File::open(path)?)
        .take(MAX_RECORD_LINE as u64)
        .read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| io::Error::other("the first line is not UTF-8"))
}

/// Whether `path` holds a snapshot (gzip, or text starting with the snapshot header) rather
/// than a records file.
fn is_snapshot(path: &Path) -> Result<bool, PublishError> {
    let mut start = [0u8; SNAPSHOT_MAGIC.len()];
    let mut file = File::open(path).map_err(io_error(path.display()))?;
    let mut n = 0;
    while n < start.len() {
        match file
            .read(&mut start[n..])
            .map_err(io_error(path.display()))?
        {
            0 => break,
            k => n += k,
        }
    }
    Ok(start[..n].starts_with(&[0x1f, 0x8b]) || start[..n] == *SNAPSHOT_MAGIC)
}

/// The deltas in `deltas` by their `from` serial (files named otherwise are left alone).
fn published_deltas(deltas: &Path) -> Result<Vec<u64>, PublishError> {
    let mut serials: Vec<u64> = std::fs::read_dir(deltas)
        .map_err(io_error(deltas.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    serials.sort_unstable();
    Ok(serials)
}

/// `icp-gate registry publish`: the export (a records file, or a snapshot) becomes the latest
/// snapshot of `dir`, with the delta to it from the previous one. See the module's text for
/// the layout; the serial is one above the highest the directory has published (the last
/// snapshot's, or a delta's `to` left by a publish that stopped half-way), or `serial`.
/// An export with the same records as the last snapshot changes nothing.
pub fn publish(
    export: &Path,
    dir: &Path,
    options: &PublishOptions,
) -> Result<Published, PublishError> {
    let deltas = dir.join(STATE_DELTAS);
    std::fs::create_dir_all(&deltas).map_err(io_error(deltas.display()))?;
    let _lock = Lock::take(dir)?;
    let latest = dir.join(STATE_FILE);

    // What the directory has published.
    let previous = match first_line(&latest) {
        Ok(line) => Some(
            parse_header(&line).map_err(|detail| PublishError::Snapshot {
                what: latest.display().to_string(),
                error: SnapshotError::new(RejectReason::MalformedHeader, Some(1), detail),
            })?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(latest.display())(e)),
    };
    let mut highest = previous.as_ref().map(|h| h.serial);
    for from in published_deltas(&deltas)? {
        let path = deltas.join(from.to_string());
        let to = first_line(&path)
            .ok()
            .and_then(|line| parse_delta_header(&line).ok())
            .map(|h| h.to);
        highest = highest.max(to);
    }

    // The new snapshot, in a temporary file beside the latest.
    let tmp = TempFile::new(dir, STATE_FILE);
    let snapshot = if is_snapshot(export)? {
        if let Some(serial) = options.serial {
            return Err(PublishError::Refused(format!(
                "--serial {serial}: the export is a snapshot, which carries its own serial \
                 (--serial is for a records file)"
            )));
        }
        std::fs::copy(export, &tmp.path).map_err(io_error(export.display()))?;
        let file = File::open(&tmp.path).map_err(io_error(tmp.path.display()))?;
        read_snapshot_sized(file, None).map_err(|error| PublishError::Snapshot {
            what: export.display().to_string(),
            error,
        })?
    } else {
        let serial = match (options.serial, highest) {
            (Some(s), Some(h)) if s <= h => {
                return Err(PublishError::Refused(format!(
                    "--serial {s} is not above {h}, the highest serial {} has published",
                    dir.display()
                )))
            }
            (Some(s), _) => s,
            (None, Some(h)) => h.checked_add(1).ok_or_else(|| {
                PublishError::Refused("the serial cannot go above u64::MAX".into())
            })?,
            (None, None) => 1,
        };
        seal(export, serial, &options.generated_at, &tmp.path)?
    };
    let serial = snapshot.header.serial;
    let entries = snapshot.registry.len() as u64;
    drop(snapshot);

    let Some(previous) = previous else {
        tmp.put_in_place(&latest)?;
        return Ok(Published::First { serial, entries });
    };
    if serial == previous.serial && File::open(&latest).is_ok() {
        // The same snapshot published again is a no-op; other content under its serial is not.
        let same = files_equal(&latest, &tmp.path).map_err(io_error(latest.display()))?;
        if same {
            return Ok(Published::Unchanged { serial });
        }
    }
    if let Some(h) = highest.filter(|h| serial <= *h) {
        return Err(PublishError::Refused(format!(
            "the export's serial {serial} is not above {h}, the highest serial {} has \
             published: every export must raise it",
            dir.display()
        )));
    }

    // The delta from the previous snapshot (which `diff` checks as a gate would).
    let delta_tmp = TempFile::new(&deltas, &previous.serial.to_string());
    let summary = {
        let old = File::open(&latest).map_err(io_error(latest.display()))?;
        let new = File::open(&tmp.path).map_err(io_error(tmp.path.display()))?;
        let out = File::create_new(&delta_tmp.path).map_err(io_error(delta_tmp.path.display()))?;
        let mut out = BufWriter::new(out);
        let summary =
            diff(BufReader::new(old), BufReader::new(new), &mut out).map_err(|e| match e {
                DiffError::Invalid("OLD", error) => PublishError::Snapshot {
                    what: format!("{} (the snapshot published last)", latest.display()),
                    error,
                },
                DiffError::Invalid(_, error) => PublishError::Snapshot {
                    what: export.display().to_string(),
                    error,
                },
                DiffError::Serial { old, new } => PublishError::Refused(format!(
                    "the export's serial {new} is not above {old}, the last published"
                )),
                DiffError::Write(error) => io_error(delta_tmp.path.display())(error),
            })?;
        out.flush().map_err(io_error(delta_tmp.path.display()))?;
        summary
    };
    if summary.upserts + summary.removals == 0 {
        return Ok(Published::Unchanged {
            serial: previous.serial,
        });
    }
    let size = std::fs::metadata(&delta_tmp.path)
        .map(|m| m.len())
        .unwrap_or(u64::MAX);
    let no_delta = if options.keep_deltas == 0 {
        Some("--keep-deltas 0: snapshots only".to_owned())
    } else if size > MAX_DELTA_BYTES {
        Some(format!(
            "the delta is {size} bytes, more than the {MAX_DELTA_BYTES} a gate reads: gates \
             take the full snapshot"
        ))
    } else {
        None
    };
    // The delta first, the latest snapshot last: a gate that finds the snapshot finds the
    // delta that leads to it too.
    let delta = match no_delta {
        None => {
            delta_tmp.put_in_place(&deltas.join(previous.serial.to_string()))?;
            Some(summary)
        }
        Some(_) => None,
    };
    tmp.put_in_place(&latest)?;
    let pruned = prune(&deltas, options.keep_deltas)?;
    Ok(Published::Next {
        serial,
        entries,
        delta,
        no_delta,
        pruned,
    })
}

/// Removes all but the newest `keep` deltas; returns the `from` serials removed.
fn prune(deltas: &Path, keep: usize) -> Result<Vec<u64>, PublishError> {
    let all = published_deltas(deltas)?;
    let drop = &all[..all.len().saturating_sub(keep)];
    for from in drop {
        let path = deltas.join(from.to_string());
        std::fs::remove_file(&path).map_err(io_error(path.display()))?;
    }
    Ok(drop.to_vec())
}

fn files_equal(a: &Path, b: &Path) -> io::Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (BufReader::new(fa), BufReader::new(fb));
    loop {
        let (ba, bb) = (ra.fill_buf()?, rb.fill_buf()?);
        if ba.is_empty() || bb.is_empty() {
            return Ok(ba.is_empty() && bb.is_empty());
        }
        let n = ba.len().min(bb.len());
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        ra.consume(n);
        rb.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::read_delta;
    use crate::snapshot::read_snapshot;

    const AT: &str = "2026-11-22T03:00:00Z";

    fn options(keep_deltas: usize) -> PublishOptions {
        PublishOptions {
            serial: None,
            generated_at: AT.into(),
            keep_deltas,
        }
    }

    fn write(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn record_error(e: PublishError) -> (Vec<u64>, RejectReason) {
        match e {
            PublishError::Record { lines, reason, .. } => (lines, reason),
            other => panic!("not a record error: {other}"),
        }
    }

    #[test]
    fn build_refuses_a_bad_record_with_its_line_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.tsv");
        let cases: [(&[u8], &[u64], RejectReason); 8] = [
            (
                b"a.cn\tconnected\nb.cn\tfiled\n",
                &[2],
                RejectReason::MalformedRecord,
            ),
            (
                b"a.cn\tconnected\ncom.cn\tconnected\n",
                &[2],
                RejectReason::PublicSuffix,
            ),
            (b"a.cn\tconnected\r\n", &[1], RejectReason::MalformedRecord),
            (
                b"a.cn\tconnected\n\nb.cn\tdenied\n",
                &[2],
                RejectReason::MalformedRecord,
            ),
            (
                b"a.cn\tconnected\nend count=1\n",
                &[2],
                RejectReason::MalformedRecord,
            ),
            (
                b"x.cn\tconnected\n\xff.cn\tconnected\n",
                &[2],
                RejectReason::MalformedRecord,
            ),
            (
                b"a.cn\tconnected\nb.cn\tconnected\nA.CN.\tdenied\n",
                &[1, 3],
                RejectReason::DuplicateName,
            ),
            (
                b"203.0.113.7\tconnected\n203.0.113.7\tdenied\n",
                &[2],
                RejectReason::DuplicateName,
            ),
        ];
        for (text, lines, reason) in cases {
            let records = write(dir.path(), "records.tsv", text);
            let e = build(&records, 1, AT, Some(&out), &mut io::sink())
                .err()
                .unwrap();
            assert_eq!(record_error(e), (lines.to_vec(), reason), "{text:?}");
            assert!(!out.exists(), "{text:?}");
            // Nothing left behind either.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
        let long = format!("{}.cn\tconnected\n", "a".repeat(MAX_RECORD_LINE));
        let records = write(dir.path(), "records.tsv", long.as_bytes());
        let e = build(&records, 1, AT, Some(&out), &mut io::sink())
            .err()
            .unwrap();
        assert_eq!(record_error(e), (vec![1], RejectReason::MalformedRecord));
        // A snapshot is not a records file.
        let records = write(
            dir.path(),
            "records.tsv",
            format!("icp-gate-registry 1 serial=1 generated_at={AT}\n").as_bytes(),
        );
        let e = build(&records, 1, AT, Some(&out), &mut io::sink())
            .err()
            .unwrap();
        assert!(matches!(e, PublishError::Refused(_)), "{e}");
    }

    #[test]
    fn build_writes_what_verify_reads() {
        let dir = tempfile::tempdir().unwrap();
        // The last line needs no newline.
        let records = write(
            dir.path(),
            "records.tsv",
            "例子.中国\tconnected\t京ICP备1号-1\ntrial.cn\tconnected\t\t2099-01-01T00:00:00Z"
                .as_bytes(),
        );
        let out = dir.path().join("snapshot.tsv");
        let built = build(&records, 42, AT, Some(&out), &mut io::sink()).unwrap();
        assert_eq!(built.records, 2);
        let s = read_snapshot(File::open(&out).unwrap()).unwrap();
        assert_eq!((s.header.serial, s.registry.len()), (42, 2));
        assert_eq!(s.sha256, built.snapshot.sha256);
        let mut stdout = Vec::new();
        build(&records, 42, AT, None, &mut stdout).unwrap();
        assert_eq!(stdout, std::fs::read(&out).unwrap());
    }

    #[test]
    fn publish_chains_deltas_keeps_a_few_and_skips_an_unchanged_export() {
        let dir = tempfile::tempdir().unwrap();
        let feed = dir.path().join("feed");
        let export = |text: &str| write(dir.path(), "export.tsv", text.as_bytes());
        let mut text = String::from("a.cn\tconnected\n");
        assert!(matches!(
            publish(&export(&text), &feed, &options(2)).unwrap(),
            Published::First {
                serial: 1,
                entries: 1
            }
        ));
        assert!(matches!(
            publish(&export(&text), &feed, &options(2)).unwrap(),
            Published::Unchanged { serial: 1 }
        ));
        for (i, name) in ["b.cn", "c.cn", "d.cn"].iter().enumerate() {
            text.push_str(&format!("{name}\tconnected\n"));
            let p = publish(&export(&text), &feed, &options(2)).unwrap();
            let Published::Next { serial, delta, .. } = p else {
                panic!("{p:?}")
            };
            assert_eq!(serial, i as u64 + 2);
            assert_eq!(delta.unwrap().upserts, 1);
        }
        // Deltas 2 -> 3 and 3 -> 4 kept; 1 -> 2 pruned. Each chains to the next.
        assert_eq!(published_deltas(&feed.join(STATE_DELTAS)).unwrap(), [2, 3]);
        let d = read_delta(
            File::open(feed.join("registry.deltas/3")).unwrap(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!((d.header.from, d.header.to, d.entries), (3, 4, 4));
        let latest = read_snapshot(File::open(feed.join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(latest.header.serial, 4);
        // No temporary file or lock left.
        let names: Vec<String> = std::fs::read_dir(&feed)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // --serial must rise; a snapshot export carries its own.
        let e = publish(
            &export("z.cn\tconnected\n"),
            &feed,
            &PublishOptions {
                serial: Some(4),
                ..options(2)
            },
        )
        .unwrap_err();
        assert!(matches!(e, PublishError::Refused(_)), "{e}");
        let old = std::fs::read(feed.join(STATE_FILE)).unwrap();
        let snap = write(dir.path(), "old.snapshot", &old);
        assert!(matches!(
            publish(&snap, &feed, &options(2)).unwrap(),
            Published::Unchanged { serial: 4 }
        ));
        // Other records under the serial in place: refused.
        let reused = dir.path().join("reused.snapshot");
        build(
            &export("e.cn\tconnected\n"),
            4,
            AT,
            Some(&reused),
            &mut io::sink(),
        )
        .unwrap();
        let e = publish(&reused, &feed, &options(2)).unwrap_err();
        assert!(e.to_string().contains("not above 4"), "{e}");

        // A publish that stopped after its delta: the next serial goes above the delta's.
        std::fs::write(
            feed.join("registry.deltas/4"),
            "icp-gate-delta 1 from=4 to=5 generated_at=2026-11-22T03:00:00Z\n",
        )
        .unwrap();
        let p = publish(
            &export(&format!("{text}f.cn\tdenied\n")),
            &feed,
            &options(2),
        )
        .unwrap();
        assert!(matches!(p, Published::Next { serial: 6, .. }), "{p:?}");
        let d = read_delta(
            File::open(feed.join("registry.deltas/4")).unwrap(),
            u64::MAX,
        )
        .unwrap();
        assert_eq!((d.header.from, d.header.to), (4, 6));

        // A second publisher is refused while one holds the lock.
        std::fs::write(feed.join(".publish.lock"), "1").unwrap();
        let e = publish(&export("g.cn\tconnected\n"), &feed, &options(2)).unwrap_err();
        assert!(e.to_string().contains(".publish.lock"), "{e}");
    }

    #[test]
    fn keep_deltas_zero_publishes_snapshots_only() {
        let dir = tempfile::tempdir().unwrap();
        let feed = dir.path().join("feed");
        let export = write(dir.path(), "e.tsv", b"a.cn\tconnected\n");
        publish(&export, &feed, &options(0)).unwrap();
        let export = write(dir.path(), "e.tsv", b"a.cn\tconnected\nb.cn\tconnected\n");
        let p = publish(&export, &feed, &options(0)).unwrap();
        assert!(
            matches!(
                p,
                Published::Next {
                    delta: None,
                    no_delta: Some(_),
                    ..
                }
            ),
            "{p:?}"
        );
        assert!(published_deltas(&feed.join(STATE_DELTAS))
            .unwrap()
            .is_empty());
    }
}
