//! Registry snapshot format v1: parsing (streamed, checksummed, all-or-nothing) and writing.
//!
//! ```text
//! icp-gate-registry 1 serial=42 generated_at=2026-11-22T03:00:00Z
//! example.com<TAB>connected<TAB>京ICP备12345678号-1
//! end count=1 sha256=<hex SHA-256 of every byte before this line>
//! ```

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::name::{is_public_suffix_bytes, parse_registry_name_into, Host};
use crate::registry::{Entry, InsertError, Registry, RegistryBuilder, Status};

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
    /// Larger than `registry.max_snapshot_bytes` (counted after decompression).
    TooLarge,
    /// Loses more of the entries in service than `registry.max_shrink_percent` allows.
    ShrinkLimit,
    /// A configured canary host did not decide as expected.
    Canary,
    /// A delta that does not start at the serial in service.
    DeltaGap,
    /// A delta whose content does not hash to its trailer's sha256.
    DeltaChecksum,
    /// A delta that fails any other check of its text (the detail says which).
    DeltaMalformed,
    /// A delta that does not fit the registry in service: it removes a name that has no
    /// record, or the result's record count is not its trailer's `entries`.
    DeltaMismatch,
}

impl RejectReason {
    pub const ALL: [RejectReason; 17] = [
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
        RejectReason::TooLarge,
        RejectReason::ShrinkLimit,
        RejectReason::Canary,
        RejectReason::DeltaGap,
        RejectReason::DeltaChecksum,
        RejectReason::DeltaMalformed,
        RejectReason::DeltaMismatch,
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
            RejectReason::TooLarge => "too_large",
            RejectReason::ShrinkLimit => "shrink_limit",
            RejectReason::Canary => "canary",
            RejectReason::DeltaGap => "delta_gap",
            RejectReason::DeltaChecksum => "delta_checksum",
            RejectReason::DeltaMalformed => "delta_malformed",
            RejectReason::DeltaMismatch => "delta_mismatch",
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
    /// The same instant, in unix seconds.
    pub generated_at_unix: i64,
}

/// A snapshot that passed every check.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub header: Header,
    pub registry: Registry,
    /// SHA-256 of the text before the trailer: two snapshots with the same digest are the same.
    pub sha256: [u8; 32],
    /// How long parsing and building took (wall clock).
    pub build_time: Duration,
    /// CPU time this process spent meanwhile (user + system): steadier than the wall clock on
    /// a shared machine, where the wall clock includes time the CPU was given to others.
    pub build_cpu_time: Duration,
}

/// CPU time used by this process so far (user + system).
pub fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            return tv(usage.ru_utime) + tv(usage.ru_stime);
        }
    }
    Duration::ZERO
}

impl Snapshot {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Reads and checks a whole snapshot, plain or gzip-compressed (detected by its magic bytes).
/// Nothing of a snapshot that fails a check is returned.
pub fn read_snapshot<R: Read>(reader: R) -> Result<Snapshot, SnapshotError> {
    read_snapshot_sized(reader, None)
}

/// `read_snapshot` for input whose size in bytes is known (a file): memory for the registry is
/// reserved from it up front instead of grown.
pub fn read_snapshot_sized<R: Read>(
    reader: R,
    size_hint: Option<u64>,
) -> Result<Snapshot, SnapshotError> {
    read_snapshot_limited(reader, size_hint, u64::MAX)
}

/// `read_snapshot_sized` that refuses (`too_large`) a snapshot whose text, after
/// decompression, passes `max_bytes`: checked while streaming, so a gzip bomb is stopped at the
/// limit rather than after it.
pub fn read_snapshot_limited<R: Read>(
    reader: R,
    size_hint: Option<u64>,
    max_bytes: u64,
) -> Result<Snapshot, SnapshotError> {
    let started = (Instant::now(), process_cpu_time());
    let mut format = SnapshotFormat {
        registry: RegistryBuilder::new(),
        name: Vec::with_capacity(256),
    };
    let framed = read_framed(reader, size_hint, max_bytes, &mut format)?;
    let registry = format.registry.finish().map_err(|name| {
        SnapshotError::new(
            RejectReason::DuplicateName,
            None,
            format!("`{name}` is listed more than once"),
        )
    })?;
    Ok(Snapshot {
        header: framed.header,
        registry,
        sha256: framed.sha256,
        build_time: started.0.elapsed(),
        build_cpu_time: process_cpu_time().saturating_sub(started.1),
    })
}

/// One text format in the framing snapshots and deltas share: a header line, body lines, and an
/// `end count=… [entries=…] sha256=…` trailer over every byte before it. The framing (gzip,
/// size limit, line splitting, line length, `\n` only, UTF-8, control characters, the checksum
/// and the count) is done once, in `read_framed`; a format reads its header and body lines.
pub(crate) trait Format {
    type Header;
    /// Whether the trailer carries `entries=` (deltas) or must not (snapshots).
    const TRAILER_ENTRIES: bool;
    /// The header line, without its `\n`. An error is `malformed_header` at line 1.
    fn header(&mut self, text: &str) -> Result<Self::Header, String>;
    /// One body line, without its `\n`, already checked for control characters.
    fn body_line(&mut self, text: &str, line_no: u64) -> Result<(), SnapshotError>;
    /// The input is about `size` bytes of text (a plain file): reserve memory for it.
    fn reserve(&mut self, _size: u64) {}
}

/// What the framing checked: the header, the trailer's fields and the text's SHA-256.
pub(crate) struct Framed<H> {
    pub header: H,
    /// `entries=` from the trailer (only formats with `TRAILER_ENTRIES`).
    pub entries: Option<u64>,
    pub sha256: [u8; 32],
}

/// Reads text in the shared framing, plain or gzip-compressed (detected by its magic bytes),
/// refusing (`too_large`) more than `max_bytes` of text after decompression.
pub(crate) fn read_framed<R: Read, F: Format>(
    reader: R,
    size_hint: Option<u64>,
    max_bytes: u64,
    format: &mut F,
) -> Result<Framed<F::Header>, SnapshotError> {
    // The limit applies to what is read and, for gzip, again to what it decompresses to.
    let mut reader = BufReader::with_capacity(256 * 1024, Limited::new(reader, max_bytes));
    let gzip = reader
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(read_error)?;
    if gzip {
        // The compressed size says little about the text's.
        let decoder = Limited::new(flate2::bufread::MultiGzDecoder::new(reader), max_bytes);
        parse(BufReader::with_capacity(256 * 1024, decoder), format)
    } else {
        if let Some(size) = size_hint {
            format.reserve(size);
        }
        parse(reader, format)
    }
}

fn read_error(e: io::Error) -> SnapshotError {
    if let Some(limit) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<OverLimit>())
    {
        return SnapshotError::new(
            RejectReason::TooLarge,
            None,
            format!("the snapshot passes the limit of {} bytes", limit.0),
        );
    }
    SnapshotError::new(RejectReason::ReadError, None, e.to_string())
}

/// The error a `Limited` reader fails with.
#[derive(Debug)]
struct OverLimit(u64);

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "more than {} bytes", self.0)
    }
}

impl std::error::Error for OverLimit {}

/// A reader that fails once more than `limit` bytes have come through it.
struct Limited<R> {
    inner: R,
    limit: u64,
    read: u64,
}

impl<R> Limited<R> {
    fn new(inner: R, limit: u64) -> Self {
        Limited {
            inner,
            limit,
            read: 0,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(OverLimit(self.limit)));
        }
        Ok(n)
    }
}

/// Typical shape of a record line, for reserving memory from a snapshot's size: a line of about
/// 40 bytes or more, of which the name is about a third.
const BYTES_PER_RECORD_LINE: u64 = 40;
const NAME_SHARE_PERCENT: u64 = 30;

fn parse<R: BufRead, F: Format>(
    mut reader: R,
    format: &mut F,
) -> Result<Framed<F::Header>, SnapshotError> {
    let mut parser = Parser::new(format);
    // Lines are taken straight from the reader's buffer; only a line that straddles two
    // buffer fills is copied (into `carry`). The checksum is computed over whole spans of the
    // buffer rather than line by line (one call per fill instead of one per record).
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let buf = reader.fill_buf().map_err(read_error)?;
        if buf.is_empty() {
            break;
        }
        let mut pos = 0;
        if !carry.is_empty() {
            match memchr::memchr(b'\n', buf) {
                Some(nl) => {
                    carry.extend_from_slice(&buf[..=nl]);
                    parser.check_len(carry.len())?;
                    parser.line(&carry, true)?;
                    carry.clear();
                    pos = nl + 1;
                }
                None => {
                    carry.extend_from_slice(buf);
                    parser.check_len(carry.len())?;
                    let n = buf.len();
                    reader.consume(n);
                    continue;
                }
            }
        }
        // Bytes from `unhashed` to `pos` are lines read but not yet hashed.
        let mut unhashed = pos;
        // The whole lines of this fill, checked for UTF-8 and control characters at once (see
        // `span_is_clean`); when that fails, each line is checked alone, which finds the line.
        let clean = match memchr::memrchr(b'\n', &buf[pos..]) {
            Some(last) => span_is_clean(&buf[pos..pos + last + 1]),
            None => false,
        };
        while let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl + 1];
            parser.check_len(line.len())?;
            if parser.is_trailer(line) {
                // The trailer is not part of what it checks.
                parser.hash(&buf[unhashed..pos]);
                unhashed = pos + nl + 1;
            }
            parser.line_in(line, false, clean)?;
            pos += nl + 1;
        }
        if parser.hashing() {
            parser.hash(&buf[unhashed..pos]);
        }
        carry.extend_from_slice(&buf[pos..]);
        parser.check_len(carry.len())?;
        let n = buf.len();
        reader.consume(n);
    }
    if !carry.is_empty() {
        // The last line has no `\n`: only the trailer may end that way.
        parser.line(&carry, true)?;
    }
    parser.finish()
}

/// Where the parser is in the text.
enum State<H> {
    Header,
    Body(H),
    /// The trailer has been read (its text and line number).
    Done(H, String, u64),
}

/// Checks the framing line by line and hands header and body lines to the format.
struct Parser<'f, F: Format> {
    format: &'f mut F,
    state: State<F::Header>,
    hasher: Sha256,
    records: u64,
    line_no: u64,
}

impl<'f, F: Format> Parser<'f, F> {
    fn new(format: &'f mut F) -> Self {
        Parser {
            format,
            state: State::Header,
            hasher: Sha256::new(),
            records: 0,
            line_no: 0,
        }
    }

    fn check_len(&self, len: usize) -> Result<(), SnapshotError> {
        if len > MAX_LINE_LEN {
            return Err(SnapshotError::new(
                RejectReason::MalformedRecord,
                Some(self.line_no + 1),
                format!("line longer than {MAX_LINE_LEN} bytes"),
            ));
        }
        Ok(())
    }

    /// Whether lines read still count towards the checksum (the trailer has not been seen).
    fn hashing(&self) -> bool {
        !matches!(self.state, State::Done(..))
    }

    /// Whether `line`, read next, is the trailer.
    fn is_trailer(&self, line: &[u8]) -> bool {
        matches!(self.state, State::Body(_)) && line.starts_with(TRAILER_PREFIX)
    }

    /// Adds text to the checksum: lines the caller passed to `line` with `hash` false.
    fn hash(&mut self, text: &[u8]) {
        self.hasher.update(text);
    }

    /// One line, with its `\n` when it has one. `hash`: add it to the checksum here (otherwise
    /// the caller does, with `hash`, in the same order), unless it is the trailer.
    fn line(&mut self, line: &[u8], hash: bool) -> Result<(), SnapshotError> {
        self.line_in(line, hash, false)
    }

    /// `line`, where `clean` says the line lies in a span that `span_is_clean` accepted.
    fn line_in(&mut self, line: &[u8], hash: bool, clean: bool) -> Result<(), SnapshotError> {
        self.line_no += 1;
        let line_no = self.line_no;
        match &self.state {
            State::Header => {
                if hash {
                    self.hasher.update(line);
                }
                let header = self
                    .format
                    .header(body_of(line, 1)?)
                    .map_err(|d| SnapshotError::new(RejectReason::MalformedHeader, Some(1), d))?;
                self.state = State::Body(header);
                Ok(())
            }
            State::Body(_) if line.starts_with(TRAILER_PREFIX) => {
                let text = std::str::from_utf8(line.strip_suffix(b"\n").unwrap_or(line))
                    .map_err(|_| {
                        SnapshotError::new(RejectReason::MissingTrailer, Some(line_no), "not UTF-8")
                    })?
                    .to_owned();
                let State::Body(header) = std::mem::replace(&mut self.state, State::Header) else {
                    unreachable!("matched above")
                };
                self.state = State::Done(header, text, line_no);
                Ok(())
            }
            State::Body(_) => {
                if hash {
                    self.hasher.update(line);
                }
                let text = if clean {
                    clean_body_of(line, line_no)?
                } else {
                    body_of(line, line_no)?
                };
                self.format.body_line(text, line_no)?;
                self.records += 1;
                Ok(())
            }
            State::Done(..) => Err(SnapshotError::new(
                RejectReason::MissingTrailer,
                Some(line_no),
                "data after the trailer: the `end` line must be the last",
            )),
        }
    }

    fn finish(self) -> Result<Framed<F::Header>, SnapshotError> {
        let (header, trailer, trailer_line) = match self.state {
            State::Header => {
                return Err(SnapshotError::new(
                    RejectReason::MalformedHeader,
                    None,
                    "the input is empty",
                ))
            }
            State::Body(_) => {
                return Err(SnapshotError::new(
                    RejectReason::MissingTrailer,
                    None,
                    format!(
                        "input ended after line {} without an `end count=… sha256=…` line",
                        self.line_no
                    ),
                ))
            }
            State::Done(header, trailer, line) => (header, trailer, line),
        };
        let (count, entries, digest) = parse_trailer(&trailer, F::TRAILER_ENTRIES)
            .map_err(|d| SnapshotError::new(RejectReason::MissingTrailer, Some(trailer_line), d))?;
        let actual: [u8; 32] = self.hasher.finalize().into();
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
        if count != self.records {
            return Err(SnapshotError::new(
                RejectReason::CountMismatch,
                Some(trailer_line),
                format!(
                    "trailer says count={count} but {} records were read",
                    self.records
                ),
            ));
        }
        Ok(Framed {
            header,
            entries,
            sha256: actual,
        })
    }
}

/// Snapshot format v1: records go into a registry as they are read.
struct SnapshotFormat {
    registry: RegistryBuilder,
    /// Scratch for one normalized name.
    name: Vec<u8>,
}

impl Format for SnapshotFormat {
    type Header = Header;
    const TRAILER_ENTRIES: bool = false;

    fn header(&mut self, text: &str) -> Result<Header, String> {
        parse_header(text)
    }

    fn reserve(&mut self, size: u64) {
        self.registry.reserve(
            (size / BYTES_PER_RECORD_LINE) as usize,
            (size * NAME_SHARE_PERCENT / 100) as usize,
        );
    }

    fn body_line(&mut self, text: &str, line_no: u64) -> Result<(), SnapshotError> {
        let (ip, entry) = parse_record(text, &mut self.name)
            .map_err(|(reason, d)| SnapshotError::new(reason, Some(line_no), d))?;
        let inserted = match ip {
            Some(ip) => self.registry.insert(&Host::Ip(ip), entry),
            None => self.registry.insert_domain(&self.name, entry),
        };
        match inserted {
            Ok(()) => Ok(()),
            Err(InsertError::Duplicate) => Err(SnapshotError::new(
                RejectReason::DuplicateName,
                Some(line_no),
                format!(
                    "`{}` is listed more than once",
                    Host::Ip(ip.expect("only IP records are refused at insert"))
                ),
            )),
            Err(InsertError::TooLarge) => Err(SnapshotError::new(
                RejectReason::MalformedRecord,
                Some(line_no),
                "the registry's names pass 4 GiB, more than one gate holds",
            )),
        }
    }
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
    let text = std::str::from_utf8(body)
        .map_err(|_| SnapshotError::new(reason, Some(line_no), "the line is not valid UTF-8"))?;
    // Tabs separate a record's fields; no other control character belongs anywhere (parsers
    // of the fields, such as RFC 3339's, may be more lenient than the format).
    if has_control_character_but_tab(body, line_no != 1) {
        return Err(SnapshotError::new(
            reason,
            Some(line_no),
            "the line holds a control character (only a tab between a record's fields)",
        ));
    }
    Ok(text)
}

/// Whether `span`, whole lines each ending in `\n`, is valid UTF-8 and holds no control
/// character but tabs and the line ends. Then every line in it passes `body_of`'s checks
/// (a `\r` before a `\n` is a control character, so such a span is not clean): UTF-8 split at
/// ASCII bytes (`\n`) stays valid, and each line's bytes are a part of the span's. One call per
/// buffer fill instead of one per line; a span that fails is checked line by line, so the
/// error (reason, line, detail) is the one the line-by-line check gives.
fn span_is_clean(span: &[u8]) -> bool {
    is_utf8(span) && !has_control_character_but(span, b'\t', b'\n')
}

/// Whether `b` is valid UTF-8: what `std::str::from_utf8(b).is_ok()` says (a test compares
/// them), with the `simdutf8` crate's SIMD validator: snapshot text is ASCII but for a few CJK
/// characters per line, on which std's byte-at-a-time path after each such character is slow.
fn is_utf8(b: &[u8]) -> bool {
    simdutf8::basic::from_utf8(b).is_ok()
}

/// `body_of` for a line in a span `span_is_clean` accepted: only the `\n` is checked.
fn clean_body_of(line: &[u8], line_no: u64) -> Result<&str, SnapshotError> {
    match line.strip_suffix(b"\n") {
        // SAFETY: the line is a part of a span that is valid UTF-8, cut at ASCII bytes (the
        // span's start, a `\n` and the byte after a `\n`), so it is valid UTF-8 too.
        Some(body) => Ok(unsafe { std::str::from_utf8_unchecked(body) }),
        None => body_of(line, line_no),
    }
}

/// RFC 3339 with `T` between date and time (the `time` crate accepts any byte there).
pub(crate) fn parse_rfc3339(v: &str) -> Result<OffsetDateTime, String> {
    if !matches!(v.as_bytes().get(10), Some(b'T' | b't')) {
        return Err("expected `T` between the date and the time".into());
    }
    OffsetDateTime::parse(v, &Rfc3339).map_err(|e| e.to_string())
}

/// Checks a header's `<magic> 1` and returns its remaining space-separated fields.
pub(crate) fn header_fields<'a>(
    line: &'a str,
    magic: &str,
) -> Result<std::str::Split<'a, char>, String> {
    let mut fields = line.split(' ');
    if fields.next() != Some(magic) {
        return Err(format!("the first line must start with `{magic} 1`"));
    }
    match fields.next() {
        Some("1") => Ok(fields),
        Some(v) => Err(format!(
            "unsupported format version `{v}` (this build reads 1)"
        )),
        None => Err("the format version is missing".into()),
    }
}

/// `generated_at=` as written and in unix seconds.
pub(crate) fn parse_generated_at(v: &str) -> Result<(String, i64), String> {
    let at = parse_rfc3339(v).map_err(|e| format!("generated_at `{v}` is not RFC 3339: {e}"))?;
    Ok((v.to_owned(), at.unix_timestamp()))
}

pub(crate) fn parse_header(line: &str) -> Result<Header, String> {
    let fields = header_fields(line, MAGIC)?;
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
            Some(("generated_at", v)) => generated_at = Some(parse_generated_at(v)?),
            _ => return Err(format!("unexpected header field `{field}`")),
        }
    }
    let (generated_at, generated_at_unix) = generated_at.ok_or("generated_at= is missing")?;
    Ok(Header {
        serial: serial.ok_or("serial= is missing")?,
        generated_at,
        generated_at_unix,
    })
}

/// One record line, as a `Format::body_line` gets it (the framing has refused control
/// characters in it). A domain's normalized name is written into `name` (`Ok((None, _))`); an
/// IP record returns its address.
pub(crate) fn parse_record(
    line: &str,
    name: &mut Vec<u8>,
) -> Result<(Option<IpAddr>, Entry), (RejectReason, String)> {
    let malformed = |d: String| (RejectReason::MalformedRecord, d);
    let mut fields = TabFields(Some(line));
    let raw_name = fields.next().unwrap_or_default();
    let status = fields.next().ok_or_else(|| {
        malformed("expected `name<TAB>status[<TAB>filing-number[<TAB>expires-at]]`".into())
    })?;
    let filing_number = fields.next();
    let expires_at = fields.next();
    if fields.next().is_some() {
        return Err(malformed("more than four tab-separated fields".into()));
    }
    let ip = parse_registry_name_into(raw_name, name)
        .map_err(|e| malformed(format!("name `{}`: {e}", raw_name.escape_debug())))?;
    if ip.is_none() && is_public_suffix_bytes(name) {
        return Err((
            RejectReason::PublicSuffix,
            format!(
                "`{}` is a public suffix and can never be filed",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    let status = Status::parse(status).ok_or_else(|| {
        malformed(format!(
            "unknown status `{}` (connected, unconnected, access_cancelled, revoked, denied)",
            status.escape_debug()
        ))
    })?;
    // Not kept: no decision depends on it (see `Entry`). Checked by the framing: every caller
    // passes a `Format::body_line` text, which `body_of` (or `span_is_clean`, the same check
    // over more lines) refused if any byte of it but a tab was a control character, and a
    // field holds no tab.
    debug_assert!(!filing_number.is_some_and(has_control_character));
    let expires_at = match expires_at {
        None => None,
        Some(t) => Some(
            parse_rfc3339(t)
                .map_err(|e| {
                    malformed(format!(
                        "expires-at `{}` is not RFC 3339: {e}",
                        t.escape_debug()
                    ))
                })?
                .unix_timestamp(),
        ),
    };
    Ok((ip, Entry { status, expires_at }))
}

/// The tab-separated fields of a line: a plain byte scan (tabs are ASCII, so every field stays
/// valid UTF-8), cheaper for short fields than `str::split`'s general searcher.
struct TabFields<'a>(Option<&'a str>);

impl<'a> Iterator for TabFields<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0?;
        match find_tab(rest.as_bytes()) {
            Some(tab) => {
                self.0 = Some(&rest[tab + 1..]);
                Some(&rest[..tab])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// The first tab in `b`, eight bytes at a time: a byte of `w ^ 0x0909…` is zero where `w` has
/// a tab, and the lowest byte the zero-byte test flags is the first zero byte (the test can
/// flag a byte wrongly only above a true zero byte, through the borrow).
#[inline]
fn find_tab(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut i = 0;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes")) ^ (ONES * 9);
        let zero = x.wrapping_sub(ONES) & !x & (ONES << 7);
        if zero != 0 {
            return Some(i + zero.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'\t').map(|p| i + p)
}

/// C0 controls and DEL are single bytes; C1 controls (U+0080 to U+009F) are 0xC2 0x80..0x9F.
fn has_control_character(s: &str) -> bool {
    has_control_character_but_tab(s.as_bytes(), false)
}

/// `has_control_character`, where `allow_tab` lets tabs through. Every line of a snapshot goes
/// through this, so the C0/DEL test is one pass without an early exit (which the compiler turns
/// into SIMD), and the C1 test only runs on text that holds a 0xC2 byte at all.
fn has_control_character_but_tab(b: &[u8], allow_tab: bool) -> bool {
    let tab = if allow_tab { b'\t' } else { 0xff };
    has_control_character_but(b, tab, 0xff)
}

/// A control character other than `allow_a` and `allow_b` (0xff allows nothing: it is no
/// control character, and never a byte of UTF-8).
fn has_control_character_but(b: &[u8], allow_a: u8, allow_b: u8) -> bool {
    let c0_or_del = b.iter().fold(false, |bad, &c| {
        bad | ((c < 0x20 && c != allow_a && c != allow_b) | (c == 0x7f))
    });
    c0_or_del
        || (memchr::memchr(0xc2, b).is_some()
            && b.windows(2)
                .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])))
}

/// The trailer's fields: `count`, `sha256` and, where the format has it, `entries`.
fn parse_trailer(line: &str, with_entries: bool) -> Result<(u64, Option<u64>, [u8; 32]), String> {
    let mut count = None;
    let mut entries = None;
    let mut digest = None;
    let number = |name: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{name} `{v}` is not a number"))
    };
    for field in line.split(' ').skip(1) {
        match field.split_once('=') {
            Some(("count", v)) => count = Some(number("count", v)?),
            Some(("entries", v)) if with_entries => entries = Some(number("entries", v)?),
            Some(("sha256", v)) => {
                digest = Some(
                    parse_hex32(v).ok_or_else(|| format!("sha256 `{v}` is not 64 hex digits"))?,
                )
            }
            _ => return Err(format!("unexpected trailer field `{field}`")),
        }
    }
    if with_entries && entries.is_none() {
        return Err("entries= is missing from the trailer".into());
    }
    Ok((
        count.ok_or("count= is missing from the trailer")?,
        entries,
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

/// The writing side of the shared framing: every line hashed as it is written, the trailer
/// (`count` lines after the header, the SHA-256) computed at the end.
pub(crate) struct FramedWriter<W: Write> {
    out: W,
    hasher: Sha256,
    pub(crate) count: u64,
}

impl<W: Write> FramedWriter<W> {
    pub(crate) fn new(out: W, header: &str) -> io::Result<Self> {
        let mut w = FramedWriter {
            out,
            hasher: Sha256::new(),
            count: 0,
        };
        w.write(header)?;
        w.write("\n")?;
        Ok(w)
    }

    /// One body line; it must end with `\n`.
    pub(crate) fn line(&mut self, line: &str) -> io::Result<()> {
        self.count += 1;
        self.write(line)
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        self.hasher.update(text.as_bytes());
        self.out.write_all(text.as_bytes())
    }

    /// Writes `end count=… <extra> sha256=…` and returns the writer.
    pub(crate) fn finish(mut self, extra: &str) -> io::Result<W> {
        let digest = self.hasher.finalize();
        writeln!(
            self.out,
            "end count={}{extra} sha256={}",
            self.count,
            hex(&digest)
        )?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A record's fields as a line (`name TAB status [TAB filing-number [TAB expires-at]]`, `\n`).
pub(crate) fn record_line(
    name: &str,
    status: Status,
    filing_number: Option<&str>,
    expires_at: Option<&str>,
) -> String {
    let mut line = format!("{name}\t{}", status.as_str());
    match (filing_number, expires_at) {
        (None, None) => {}
        (f, None) => line.extend(["\t", f.unwrap_or_default()]),
        (f, Some(t)) => line.extend(["\t", f.unwrap_or_default(), "\t", t]),
    }
    line.push('\n');
    line
}

/// Writes a snapshot in format v1, computing the trailer. Names are written as given.
pub struct SnapshotWriter<W: Write> {
    frame: FramedWriter<W>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, serial: u64, generated_at: &str) -> io::Result<Self> {
        Ok(SnapshotWriter {
            frame: FramedWriter::new(
                out,
                &format!("{MAGIC} 1 serial={serial} generated_at={generated_at}"),
            )?,
        })
    }

    pub fn record(
        &mut self,
        name: &str,
        status: Status,
        filing_number: Option<&str>,
        expires_at: Option<&str>,
    ) -> io::Result<()> {
        self.frame
            .line(&record_line(name, status, filing_number, expires_at))
    }

    /// Writes a line exactly as given (it must end with `\n`); for tests of malformed input.
    pub fn raw_line(&mut self, line: &str) -> io::Result<()> {
        self.frame.line(line)
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        self.frame.finish("")
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
    fn control_characters_inside_fields_are_refused() {
        // Found by fuzzing: RFC 3339 parsing alone lets a control byte through as the
        // date/time separator.
        let build = |line: &str| {
            let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
            w.raw_line(line).unwrap();
            w.finish().unwrap()
        };
        for line in [
            "example.com\tconnected\t\t2026-12-31\r00:00:00Z\n",
            "example.com\tconnected\tX\u{1b}Y\n",
            "example.com\tconnected\tX\u{85}Y\n",
            "example.com\tconnected\t\t2026-12-31x00:00:00Z\n",
        ] {
            assert_eq!(
                reason(&build(line)),
                RejectReason::MalformedRecord,
                "{line:?}"
            );
        }
        let header = b"icp-gate-registry 1 serial=1 generated_at=2026-11-22\x1b03:00:00Z\n";
        assert_eq!(reason(header), RejectReason::MalformedHeader);
        assert!(
            read_snapshot(&build("example.com\tconnected\tX\t2026-12-31T00:00:00Z\n")[..]).is_ok()
        );
    }

    #[test]
    fn find_tab_agrees_with_a_byte_scan() {
        let mut rng = fastrand::Rng::with_seed(3);
        let alphabet = [
            b'\t', b'\x08', b'\x0a', b'\x89', b'\x19', b'a', 0, 0xff, 0xe4,
        ];
        for _ in 0..100_000 {
            let text: Vec<u8> = (0..rng.usize(0..40))
                .map(|_| {
                    if rng.u8(..) < 16 {
                        alphabet[rng.usize(..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            assert_eq!(
                find_tab(&text),
                text.iter().position(|&c| c == b'\t'),
                "{text:x?}"
            );
        }
    }

    #[test]
    fn is_utf8_agrees_with_std() {
        let mut rng = fastrand::Rng::with_seed(11);
        let pieces: [&[u8]; 14] = [
            b"example.com\tconnected\t",
            "京ICP备12345678号-1".as_bytes(),
            "\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}\u{d7ff}\u{e000}".as_bytes(),
            b"\n",
            b"\xc0\x80",
            b"\xc1\xbf",
            b"\xe0\x9f\xbf",
            b"\xed\xa0\x80",
            b"\xf0\x8f\xbf\xbf",
            b"\xf4\x90\x80\x80",
            b"\xf5\x80\x80\x80",
            b"\x80",
            b"\xe4\xba",
            b"\xff",
        ];
        for _ in 0..200_000 {
            let mut text = Vec::new();
            for _ in 0..rng.usize(0..8) {
                if rng.u8(..) < 40 {
                    // Random bytes, often cutting a character.
                    text.extend((0..rng.usize(1..5)).map(|_| rng.u8(..)));
                } else {
                    let piece = pieces[rng.usize(..pieces.len())];
                    let cut = if rng.bool() {
                        piece.len()
                    } else {
                        rng.usize(..=piece.len())
                    };
                    text.extend_from_slice(&piece[..cut]);
                }
            }
            assert_eq!(
                is_utf8(&text),
                std::str::from_utf8(&text).is_ok(),
                "{text:x?}"
            );
        }
        // Every 1- to 4-byte sequence whose bytes come from the edges of the ranges.
        let edges = [
            0x00u8, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0,
            0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff,
        ];
        for &a in &edges {
            for &b in &edges {
                for &c in &edges {
                    for &d in &edges {
                        for len in 1..=4 {
                            let seq = &[a, b, c, d][..len];
                            // Alone, and behind 16 ASCII bytes and before them (word path).
                            for text in [seq.to_vec(), [&[b'x'; 16][..], seq, &[b'y'; 16]].concat()]
                            {
                                assert_eq!(
                                    is_utf8(&text),
                                    std::str::from_utf8(&text).is_ok(),
                                    "{text:x?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_line_deep_in_a_large_snapshot_is_found_on_its_line() {
        // Several buffer fills: the failing span is checked again line by line.
        for bad in ["bad\u{1}.cn\tconnected\n", "x.cn\tconnected\r\n"] {
            let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
            for i in 0..30_000 {
                w.record(
                    &format!("n{i}.example.com"),
                    Status::Connected,
                    Some("京ICP备12345678号-1"),
                    None,
                )
                .unwrap();
            }
            w.raw_line(bad).unwrap();
            w.record("last.example.com", Status::Connected, None, None)
                .unwrap();
            let err = read_snapshot(&w.finish().unwrap()[..]).unwrap_err();
            assert_eq!(err.reason, RejectReason::MalformedRecord);
            assert_eq!(err.line, Some(30_002), "{err}");
        }
        let mut w = SnapshotWriter::new(Vec::new(), 1, "2026-11-22T03:00:00Z").unwrap();
        for i in 0..30_000 {
            w.record(&format!("n{i}.example.com"), Status::Connected, None, None)
                .unwrap();
        }
        let mut bytes = w.finish().unwrap();
        // An invalid byte in line 20,001's name.
        let at = bytes
            .windows(18)
            .position(|w| w == b"\nn20000.example.co")
            .unwrap();
        bytes[at + 2] = 0xff;
        let err = read_snapshot(&bytes[..]).unwrap_err();
        assert_eq!(err.reason, RejectReason::MalformedRecord);
        assert_eq!(err.line, Some(20_002), "{err}");
    }

    #[test]
    fn reads_gzip() {
        use flate2::write::GzEncoder;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&sample()).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(read_snapshot(&gz[..]).unwrap().registry.len(), 6);
        assert_eq!(reason(&gz[..gz.len() / 2]), RejectReason::ReadError);
        // The limit counts the text after decompression.
        let err = read_snapshot_limited(&gz[..], None, 100).unwrap_err();
        assert_eq!(err.reason, RejectReason::TooLarge);
        let plain = sample();
        let err = read_snapshot_limited(&plain[..], None, plain.len() as u64 - 1).unwrap_err();
        assert_eq!(err.reason, RejectReason::TooLarge);
        assert!(read_snapshot_limited(&plain[..], None, plain.len() as u64).is_ok());
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
        w.frame.count = 2;
        assert_eq!(reason(&w.finish().unwrap()), RejectReason::CountMismatch);

        let bad_header = text.replacen("icp-gate-registry 1", "icp-gate-registry 2", 1);
        assert_eq!(reason(bad_header.as_bytes()), RejectReason::MalformedHeader);
    }
}
