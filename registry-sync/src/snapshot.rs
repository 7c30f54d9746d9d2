//! Registry snapshot format v1: parsing (streamed, checksummed, all-or-nothing) and writing.
//!
//! ```text
//! icp-gate-registry 1 serial=42 generated_at=2026-11-22T03:00:00Z
//! example.com<TAB>connected<TAB>京ICP备12345678号-1
//! end count=1 sha256=<hex SHA-256 of every byte before this line>
//! ```

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::name::{is_public_suffix, parse_registry_name, Host};
use crate::registry::{Entry, InsertError, Registry, Status};

const MAGIC: &str = "icp-gate-registry";
const TRAILER_PREFIX: &[u8] = b"end ";
/// Longest line accepted: a 253-byte name in Unicode form, a status, a filing number and a
/// timestamp fit well within this; anything longer is not a record.
const MAX_LINE_LEN: usize = 8 * 1024;

/// Why a snapshot was refused. The string forms are the `reason` label of
/// `icp_gate_registry_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    ReadError,
    MalformedHeader,
    MalformedRecord,
    MissingTrailer,
    CountMismatch,
    ChecksumMismatch,
    DuplicateName,
    PublicSuffix,
    SerialRegression,
    SerialReused,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::ReadError,
        RejectReason::MalformedHeader,
        RejectReason::MalformedRecord,
        RejectReason::MissingTrailer,
        RejectReason::CountMismatch,
        RejectReason::ChecksumMismatch,
        RejectReason::DuplicateName,
        RejectReason::PublicSuffix,
        RejectReason::SerialRegression,
        RejectReason::SerialReused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::ReadError => "read_error",
            RejectReason::MalformedHeader => "malformed_header",
            RejectReason::MalformedRecord => "malformed_record",
            RejectReason::MissingTrailer => "missing_trailer",
            RejectReason::CountMismatch => "count_mismatch",
            RejectReason::ChecksumMismatch => "checksum_mismatch",
            RejectReason::DuplicateName => "duplicate_name",
            RejectReason::PublicSuffix => "public_suffix",
            RejectReason::SerialRegression => "serial_regression",
            RejectReason::SerialReused => "serial_reused",
        }
    }
}

/// A refused snapshot: the reason, the line it was found on (1-based) and the detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotError {
    pub reason: RejectReason,
    pub line: Option<u64>,
    pub detail: String,
}

impl SnapshotError {
    pub fn new(reason: RejectReason, line: Option<u64>, detail: impl Into<String>) -> Self {
        SnapshotError {
            reason,
            line,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{} at line {n}: {}", self.reason.as_str(), self.detail),
            None => write!(f, "{}: {}", self.reason.as_str(), self.detail),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// The header line's facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub serial: u64,
    /// As written in the header (RFC 3339).
    pub generated_at: String,
}

/// A snapshot that passed every check.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub header: Header,
    pub registry: Registry,
    /// SHA-256 of the text before the trailer: two snapshots with the same digest are the same.
    pub sha256: [u8; 32],
    /// How long parsing and building took.
    pub build_time: Duration,
}

impl Snapshot {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Reads and checks a whole snapshot, plain or gzip-compressed (detected by its magic bytes).
/// Nothing of a snapshot that fails a check is returned.
pub fn read_snapshot<R: Read>(reader: R) -> Result<Snapshot, SnapshotError> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let gzip = reader
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(read_error)?;
    if gzip {
        let decoder = flate2::bufread::MultiGzDecoder::new(reader);
        parse(BufReader::with_capacity(256 * 1024, decoder))
    } else {
        parse(reader)
    }
}

fn read_error(e: io::Error) -> SnapshotError {
    SnapshotError::new(RejectReason::ReadError, None, e.to_string())
}

fn parse<R: BufRead>(mut reader: R) -> Result<Snapshot, SnapshotError> {
    let started = Instant::now();
    let mut hasher = Sha256::new();
    let mut line = Vec::with_capacity(256);
    let mut line_no: u64 = 0;

    // Reads the next line (with its `\n`, if any) into `line`; false at end of input.
    let mut next_line = |line: &mut Vec<u8>, line_no: &mut u64| -> Result<bool, SnapshotError> {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE_LEN as u64 + 1)
            .read_until(b'\n', line)
            .map_err(read_error)?;
        if n == 0 {
            return Ok(false);
        }
        *line_no += 1;
        if line.len() > MAX_LINE_LEN {
            return Err(SnapshotError::new(
                RejectReason::MalformedRecord,
                Some(*line_no),
                format!("line longer than {MAX_LINE_LEN} bytes"),
            ));
        }
        Ok(true)
    };

    if !next_line(&mut line, &mut line_no)? {
        return Err(SnapshotError::new(
            RejectReason::MalformedHeader,
            None,
            "the snapshot is empty",
        ));
    }
    hasher.update(&line);
    let header = parse_header(body_of(&line, 1)?)
        .map_err(|d| SnapshotError::new(RejectReason::MalformedHeader, Some(1), d))?;

    let mut registry = Registry::new();
    let mut records: u64 = 0;
    loop {
        if !next_line(&mut line, &mut line_no)? {
            return Err(SnapshotError::new(
                RejectReason::MissingTrailer,
                None,
                format!("input ended after line {line_no} without an `end count=… sha256=…` line"),
            ));
        }
        if line.starts_with(TRAILER_PREFIX) {
            break;
        }
        hasher.update(&line);
        let text = body_of(&line, line_no)?;
        let (host, entry) = parse_record(text)
            .map_err(|(reason, d)| SnapshotError::new(reason, Some(line_no), d))?;
        match registry.insert(&host, entry) {
            Ok(()) => {}
            Err(InsertError::Duplicate) => {
                return Err(SnapshotError::new(
                    RejectReason::DuplicateName,
                    Some(line_no),
                    format!("`{host}` is listed more than once"),
                ))
            }
            Err(InsertError::TooLarge) => {
                return Err(SnapshotError::new(
                    RejectReason::MalformedRecord,
                    Some(line_no),
                    "the registry's names pass 4 GiB, more than one gate holds",
                ))
            }
        }
        records += 1;
    }

    let trailer_line = line_no;
    let trailer = std::str::from_utf8(line.strip_suffix(b"\n").unwrap_or(&line))
        .map_err(|_| {
            SnapshotError::new(
                RejectReason::MissingTrailer,
                Some(trailer_line),
                "not UTF-8",
            )
        })?
        .to_owned();
    let (count, digest) = parse_trailer(&trailer)
        .map_err(|d| SnapshotError::new(RejectReason::MissingTrailer, Some(trailer_line), d))?;
    if next_line(&mut line, &mut line_no)? {
        return Err(SnapshotError::new(
            RejectReason::MissingTrailer,
            Some(line_no),
            "data after the trailer: the `end` line must be the last",
        ));
    }
    let actual: [u8; 32] = hasher.finalize().into();
    if actual != digest {
        return Err(SnapshotError::new(
            RejectReason::ChecksumMismatch,
            Some(trailer_line),
            format!(
                "trailer says sha256={} but the content hashes to {}",
                hex(&digest),
                hex(&actual)
            ),
        ));
    }
    if count != records {
        return Err(SnapshotError::new(
            RejectReason::CountMismatch,
            Some(trailer_line),
            format!("trailer says count={count} but {records} records were read"),
        ));
    }
    registry.finish();
    Ok(Snapshot {
        header,
        registry,
        sha256: actual,
        build_time: started.elapsed(),
    })
}

/// The line without its `\n`, as UTF-8.
fn body_of(line: &[u8], line_no: u64) -> Result<&str, SnapshotError> {
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err(SnapshotError::new(
            RejectReason::MissingTrailer,
            Some(line_no),
            "the last line is not an `end count=… sha256=…` trailer",
        ));
    };
    let reason = if line_no == 1 {
        RejectReason::MalformedHeader
    } else {
        RejectReason::MalformedRecord
    };
    if body.ends_with(b"\r") {
        return Err(SnapshotError::new(
            reason,
            Some(line_no),
            "carriage return at the end of the line: lines end with \\n only",
        ));
    }
    std::str::from_utf8(body)
        .map_err(|_| SnapshotError::new(reason, Some(line_no), "the line is not valid UTF-8"))
}

fn parse_header(line: &str) -> Result<Header, String> {
    let mut fields = line.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(format!("the first line must start with `{MAGIC} 1`"));
    }
    match fields.next() {
        Some("1") => {}
        Some(v) => {
            return Err(format!(
                "unsupported format version `{v}` (this build reads 1)"
            ))
        }
        None => return Err("the format version is missing".into()),
    }
    let mut serial = None;
    let mut generated_at = None;
    for field in fields {
        match field.split_once('=') {
            Some(("serial", v)) => {
                serial = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("serial `{v}` is not an unsigned integer"))?,
                )
            }
            Some(("generated_at", v)) => {
                OffsetDateTime::parse(v, &Rfc3339)
                    .map_err(|e| format!("generated_at `{v}` is not RFC 3339: {e}"))?;
                generated_at = Some(v.to_owned());
            }
            _ => return Err(format!("unexpected header field `{field}`")),
        }
    }
    Ok(Header {
        serial: serial.ok_or("serial= is missing")?,
        generated_at: generated_at.ok_or("generated_at= is missing")?,
    })
}

fn parse_record(line: &str) -> Result<(Host, Entry), (RejectReason, String)> {
    let malformed = |d: String| (RejectReason::MalformedRecord, d);
    let mut fields = line.split('\t');
    let name = fields.next().unwrap_or_default();
    let status = fields.next().ok_or_else(|| {
        malformed("expected `name<TAB>status[<TAB>filing-number[<TAB>expires-at]]`".into())
    })?;
    let filing_number = fields.next();
    let expires_at = fields.next();
    if fields.next().is_some() {
        return Err(malformed("more than four tab-separated fields".into()));
    }
    let host = parse_registry_name(name)
        .map_err(|e| malformed(format!("name `{}`: {e}", name.escape_debug())))?;
    if let Host::Domain(d) = &host {
        if is_public_suffix(d) {
            return Err((
                RejectReason::PublicSuffix,
                format!("`{d:?}` is a public suffix and can never be filed"),
            ));
        }
    }
    let status = Status::parse(status).ok_or_else(|| {
        malformed(format!(
            "unknown status `{}` (connected, unconnected, access_cancelled, revoked, denied)",
            status.escape_debug()
        ))
    })?;
    // Checked, not kept: no decision depends on it (see `Entry`).
    if filing_number.is_some_and(|f| f.chars().any(char::is_control)) {
        return Err(malformed(
            "the filing number contains control characters".into(),
        ));
    }
    let expires_at = match expires_at {
        None => None,
        Some(t) => Some(
            OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|e| {
                    malformed(format!(
                        "expires-at `{}` is not RFC 3339: {e}",
                        t.escape_debug()
                    ))
                })?
                .unix_timestamp(),
        ),
    };
    Ok((host, Entry { status, expires_at }))
}

fn parse_trailer(line: &str) -> Result<(u64, [u8; 32]), String> {
    let mut count = None;
    let mut digest = None;
    for field in line.split(' ').skip(1) {
        match field.split_once('=') {
            Some(("count", v)) => {
                count = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("count `{v}` is not a number"))?,
                )
            }
            Some(("sha256", v)) => {
                digest = Some(
                    parse_hex32(v).ok_or_else(|| format!("sha256 `{v}` is not 64 hex digits"))?,
                )
            }
            _ => return Err(format!("unexpected trailer field `{field}`")),
        }
    }
    Ok((
        count.ok_or("count= is missing from the trailer")?,
        digest.ok_or("sha256= is missing from the trailer")?,
    ))
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Writes a snapshot in format v1, computing the trailer. Names are written as given.
pub struct SnapshotWriter<W: Write> {
    out: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, serial: u64, generated_at: &str) -> io::Result<Self> {
        let mut w = SnapshotWriter {
            out,
            hasher: Sha256::new(),
            count: 0,
        };
        w.write_line(&format!(
            "{MAGIC} 1 serial={serial} generated_at={generated_at}\n"
        ))?;
        Ok(w)
    }

    pub fn record(
        &mut self,
        name: &str,
        status: Status,
        filing_number: Option<&str>,
        expires_at: Option<&str>,
    ) -> io::Result<()> {
        let mut line = format!("{name}\t{}", status.as_str());
        match (filing_number, expires_at) {
            (None, None) => {}
            (f, None) => line.extend(["\t", f.unwrap_or_default()]),
            (f, Some(t)) => line.extend(["\t", f.unwrap_or_default(), "\t", t]),
        }
        line.push('\n');
        self.count += 1;
        self.write_line(&line)
    }

    /// Writes a line exactly as given (it must end with `\n`); for tests of malformed input.
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.count += 1;
        self.write_line(line)
    }

    fn write_line(&mut self, line: &str) -> io::Result<()> {
        self.hasher.update(line.as_bytes());
        self.out.write_all(line.as_bytes())
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let digest = self.hasher.finalize();
        writeln!(self.out, "end count={} sha256={}", self.count, hex(&digest))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), 42, "2026-11-22T03:00:00Z").unwrap();
        w.record(
            "example.com",
            Status::Connected,
            Some("京ICP备12345678号-1"),
            None,
        )
        .unwrap();
        w.record("bad.example.com", Status::Denied, None, None)
            .unwrap();
        w.record(
            "例子.中国",
            Status::Connected,
            Some("京ICP备87654321号-2"),
            None,
        )
        .unwrap();
        w.record(
            "cdn-only.cn",
            Status::Unconnected,
            Some("沪ICP备11112222号-1"),
            None,
        )
        .unwrap();
        w.record(
            "trial.com.cn",
            Status::Connected,
            Some("粤ICP备33334444号-3"),
            Some("2026-12-31T00:00:00Z"),
        )
        .unwrap();
        w.record(
            "203.0.113.7",
            Status::Connected,
            Some("京ICP备55556666号-1"),
            None,
        )
        .unwrap();
        w.finish().unwrap()
    }

    fn reason(bytes: &[u8]) -> RejectReason {
        read_snapshot(bytes).expect_err("must be rejected").reason
    }

    #[test]
    fn reads_the_contract_example() {
        let s = read_snapshot(&sample()[..]).unwrap();
        assert_eq!(s.header.serial, 42);
        assert_eq!(s.registry.len(), 6);
        assert_eq!(s.registry.status_counts(), [4, 1, 0, 0, 1]);
    }

    #[test]
    fn reads_gzip() {
        use flate2::write::GzEncoder;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&sample()).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(read_snapshot(&gz[..]).unwrap().registry.len(), 6);
        assert_eq!(reason(&gz[..gz.len() / 2]), RejectReason::ReadError);
    }

    #[test]
    fn trailer_without_final_newline_is_accepted() {
        let mut s = sample();
        s.pop();
        assert_eq!(read_snapshot(&s[..]).unwrap().registry.len(), 6);
    }

    #[test]
    fn rejections() {
        let good = sample();
        let text = String::from_utf8(good.clone()).unwrap();
        let trailer_at = text.rfind("end ").unwrap();
        // Missing trailer, truncated.
        assert_eq!(reason(&good[..trailer_at]), RejectReason::MissingTrailer);
        assert_eq!(
            reason(&good[..trailer_at - 5]),
            RejectReason::MissingTrailer
        );
        // A flipped byte in a record.
        let tampered = text.replace("cdn-only.cn", "cdn-onlz.cn");
        assert_eq!(reason(tampered.as_bytes()), RejectReason::ChecksumMismatch);
        // Data after the trailer.
        assert_eq!(
            reason(format!("{text}extra\n").as_bytes()),
            RejectReason::MissingTrailer
        );
        assert_eq!(reason(b""), RejectReason::MalformedHeader);

        let build = |records: &[&str]| {
            let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
            for r in records {
                w.raw_line(r).unwrap();
            }
            w.finish().unwrap()
        };
        assert_eq!(
            reason(&build(&[
                "example.com\tconnected\n",
                "EXAMPLE.com.\tdenied\n"
            ])),
            RejectReason::DuplicateName
        );
        assert_eq!(
            reason(&build(&["com.cn\tconnected\n"])),
            RejectReason::PublicSuffix
        );
        assert_eq!(
            reason(&build(&["example.com\tfiled\n"])),
            RejectReason::MalformedRecord
        );
        assert_eq!(
            reason(&build(&["example.com\n"])),
            RejectReason::MalformedRecord
        );
        assert_eq!(
            reason(&build(&["example.com\tconnected\r\n"])),
            RejectReason::MalformedRecord
        );
        assert_eq!(
            reason(&build(&["example.com\tconnected\tX\tnot-a-time\n"])),
            RejectReason::MalformedRecord
        );
        assert_eq!(
            reason(&build(&["bad name.com\tconnected\n"])),
            RejectReason::MalformedRecord
        );
        assert_eq!(
            reason(&build(&["a\tb\tc\td\te\n"])),
            RejectReason::MalformedRecord
        );

        // Count that disagrees with the records, checksum right.
        let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
        w.record("example.com", Status::Connected, None, None)
            .unwrap();
        w.count = 2;
        assert_eq!(reason(&w.finish().unwrap()), RejectReason::CountMismatch);

        let bad_header = text.replacen("icp-gate-registry 1", "icp-gate-registry 2", 1);
        assert_eq!(reason(bad_header.as_bytes()), RejectReason::MalformedHeader);
    }
}
