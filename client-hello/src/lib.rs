//! The TLS ClientHello reader: reassembly across records and a zero-copy walk of its extensions.
//!
//! Three steps, no I/O:
//!
//! 1. [`Scanner::scan`] frames the hello as bytes arrive: it reads each TLS record header, follows
//!    the handshake message across records, and says [`Progress::Complete`] once every record that
//!    carries the ClientHello is in the buffer. It refuses non-TLS input after the first byte or two,
//!    and a hello that needs more than [`MAX_CLIENT_HELLO_BYTES`] as soon as a length says so.
//! 2. [`handshake_message`] gives the handshake message itself: borrowed when it sat in one
//!    record, copied only when it spans several.
//! 3. [`parse`] walks the message without copying: version, SNI, ALPN, supported_versions, ECH.
//!
//! Every length is checked; no input panics or makes it allocate more than the bytes it was given.

#![forbid(unsafe_code)]

use std::borrow::Cow;

/// Most bytes read from the client for one ClientHello, record headers included. Beyond this the
/// hello is refused as too large: a pending hello never holds more than 16 KiB.
pub const MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// Largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_RECORD_LEN: usize = 1 << 14;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

/// Extension types read by [`parse`].
pub const EXT_SERVER_NAME: u16 = 0;
pub const EXT_ALPN: u16 = 16;
pub const EXT_SUPPORTED_VERSIONS: u16 = 43;
pub const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

/// Why a ClientHello was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloError {
    /// The first bytes are not a TLS handshake record: plain HTTP, an SSLv2-style hello
    /// (high bit of the first byte set), a non-handshake content type, record version major != 3.
    NotTls,
    /// More than MAX_CLIENT_HELLO_BYTES before the hello was complete (or a handshake length that
    /// announces more).
    TooLarge,
    /// A TLS handshake that is not a well-formed ClientHello: handshake type != 1, a zero-length or
    /// record over 2^14 bytes, a non-handshake record interleaved before the hello is complete, bad lengths
    /// anywhere, trailing bytes inside the hello body, a duplicate extension type, more than one
    /// host_name in server_name, an empty/invalid ALPN list, etc. The text says what, for logs.
    Malformed(&'static str),
}

impl HelloError {
    /// A short fixed label, for metrics.
    pub fn reason(self) -> &'static str {
        match self {
            HelloError::NotTls => "not_tls",
            HelloError::TooLarge => "client_hello_too_large",
            HelloError::Malformed(_) => "client_hello_malformed",
        }
    }
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::NotTls => f.write_str("not a TLS handshake"),
            HelloError::TooLarge => {
                write!(f, "ClientHello larger than {MAX_CLIENT_HELLO_BYTES} bytes")
            }
            HelloError::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
        }
    }
}

impl std::error::Error for HelloError {}

/// What [`Scanner::scan`] found so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The hello is not complete yet, and nothing is wrong with what has arrived.
    NeedMore,
    /// The whole ClientHello handshake message has arrived. `wire_len` = bytes of `buf` that
    /// carry it (whole records; the last record may also carry bytes of a following handshake
    /// message: the whole record is counted); `records` = how many records it took.
    Complete { wire_len: usize, records: usize },
}

/// Incremental framing of a ClientHello across TCP segments and TLS records.
///
/// The caller keeps every byte received in one buffer and passes the whole buffer to
/// [`scan`](Scanner::scan) each time more arrives; the scanner remembers how far it got, so the
/// work per call is proportional to the new bytes (record bodies are skipped, not read, except
/// the 4 bytes of the handshake header). Once it has returned `Complete` or an error it returns
/// the same again.
#[derive(Clone, Debug, Default)]
pub struct Scanner {
    /// Offset in `buf` of the next byte to look at: a record header (between records) or record
    /// body bytes (inside a record).
    pos: usize,
    /// End offset in `buf` of the record being read; `None` between records.
    record_end: Option<usize>,
    /// Records started so far.
    records: usize,
    /// The handshake header as far as it has arrived.
    hs_header: [u8; HANDSHAKE_HEADER_LEN],
    hs_header_len: usize,
    /// Handshake body bytes still to come, once the header is complete.
    body_left: usize,
    /// The final answer, once there is one.
    done: Option<Result<Progress, HelloError>>,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// `buf` is every byte received so far (a prefix of the previous call's buf plus new bytes).
    pub fn scan(&mut self, buf: &[u8]) -> Result<Progress, HelloError> {
        if let Some(done) = self.done {
            return done;
        }
        let result = self.advance(buf);
        match result {
            // Still incomplete with the cap's worth in hand: completing needs more than the cap.
            Ok(Progress::NeedMore) if buf.len() >= MAX_CLIENT_HELLO_BYTES => {
                self.done = Some(Err(HelloError::TooLarge));
                Err(HelloError::TooLarge)
            }
            Ok(Progress::NeedMore) => Ok(Progress::NeedMore),
            other => {
                self.done = Some(other);
                other
            }
        }
    }

    fn advance(&mut self, buf: &[u8]) -> Result<Progress, HelloError> {
        loop {
            match self.record_end {
                None => {
                    let header = buf.get(self.pos..).unwrap_or(&[]);
                    self.check_record_header_prefix(header)?;
                    let Some(header) = header.get(..RECORD_HEADER_LEN) else {
                        return Ok(Progress::NeedMore);
                    };
                    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
                    if len == 0 {
                        return Err(HelloError::Malformed("zero-length record"));
                    }
                    if len > MAX_RECORD_LEN {
                        return Err(HelloError::Malformed("record longer than 2^14"));
                    }
                    let end = self.pos + RECORD_HEADER_LEN + len;
                    if end > MAX_CLIENT_HELLO_BYTES {
                        return Err(HelloError::TooLarge);
                    }
                    self.records += 1;
                    self.pos += RECORD_HEADER_LEN;
                    self.record_end = Some(end);
                }
                Some(end) => {
                    // Inside a record: the handshake header first, byte by byte, then skip body.
                    while self.hs_header_len < HANDSHAKE_HEADER_LEN && self.pos < end {
                        let Some(&b) = buf.get(self.pos) else {
                            return Ok(Progress::NeedMore);
                        };
                        if self.hs_header_len == 0 && b != HANDSHAKE_CLIENT_HELLO {
                            return Err(HelloError::Malformed(
                                "handshake type is not client_hello",
                            ));
                        }
                        self.hs_header[self.hs_header_len] = b;
                        self.hs_header_len += 1;
                        self.pos += 1;
                        if self.hs_header_len == HANDSHAKE_HEADER_LEN {
                            let h = self.hs_header;
                            self.body_left = usize::from(h[1]) << 16
                                | usize::from(h[2]) << 8
                                | usize::from(h[3]);
                            self.check_announced_len(end)?;
                        }
                    }
                    if self.hs_header_len == HANDSHAKE_HEADER_LEN {
                        let in_record = end - self.pos;
                        if self.body_left <= in_record {
                            // The message ends in this record; the whole record must be here.
                            self.pos += self.body_left;
                            self.body_left = 0;
                            if buf.len() < end {
                                return Ok(Progress::NeedMore);
                            }
                            return Ok(Progress::Complete {
                                wire_len: end,
                                records: self.records,
                            });
                        }
                        self.body_left -= in_record;
                        self.pos = end;
                    }
                    if self.pos < end {
                        return Ok(Progress::NeedMore);
                    }
                    self.record_end = None;
                }
            }
        }
    }

    /// Checks as much of a record header as has arrived (1 to 5 bytes), so that non-TLS input is
    /// refused after its first byte.
    fn check_record_header_prefix(&self, header: &[u8]) -> Result<(), HelloError> {
        let first = self.records == 0;
        if let Some(&content_type) = header.first() {
            if content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    HelloError::Malformed("non-handshake record before the hello is complete")
                });
            }
        }
        if let Some(&major) = header.get(1) {
            if major != 3 {
                return Err(if first {
                    HelloError::NotTls
                } else {
                    HelloError::Malformed("record version major is not 3")
                });
            }
        }
        if let Some(&minor) = header.get(2) {
            if minor > 4 {
                return Err(HelloError::Malformed("record version minor above 4"));
            }
        }
        Ok(())
    }

    /// Refuses at once a handshake length that cannot fit in MAX_CLIENT_HELLO_BYTES of records:
    /// what is left of the current record, then full-size records each with its own header.
    fn check_announced_len(&self, record_end: usize) -> Result<(), HelloError> {
        let in_record = record_end - self.pos;
        if self.body_left <= in_record {
            return Ok(()); // ends in a record whose end was already checked
        }
        let beyond = self.body_left - in_record;
        let more_records = beyond.div_ceil(MAX_RECORD_LEN);
        let least_wire = record_end + beyond + more_records * RECORD_HEADER_LEN;
        if least_wire > MAX_CLIENT_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        Ok(())
    }
}

/// The ClientHello handshake message (type, 3-byte length, body) reassembled from its records:
/// borrowed from `buf` when it sat in one record, copied into an owned buffer only when it spans
/// several.
///
/// `buf` and `wire_len` are what [`Scanner::scan`] saw and returned. On other input it does not
/// panic: it returns what it can (possibly truncated), which [`parse`] then refuses.
pub fn handshake_message(buf: &[u8], wire_len: usize) -> Cow<'_, [u8]> {
    let wire = &buf[..wire_len.min(buf.len())];
    let mut records = Records { rest: wire };
    let Some(first) = records.next() else {
        return Cow::Borrowed(&[]);
    };
    let msg_len = match first.get(..HANDSHAKE_HEADER_LEN) {
        Some(h) => {
            HANDSHAKE_HEADER_LEN
                + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]))
        }
        None => usize::MAX, // the header itself spans records
    };
    if first.len() >= msg_len {
        return Cow::Borrowed(&first[..msg_len]);
    }
    // Spans several records: copy, never more than the wire bytes given.
    let mut msg = Vec::with_capacity(wire.len());
    msg.extend_from_slice(first);
    for fragment in records {
        msg.extend_from_slice(fragment);
        let want = match msg.get(..HANDSHAKE_HEADER_LEN) {
            Some(h) => {
                HANDSHAKE_HEADER_LEN
                    + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]))
            }
            None => continue,
        };
        if msg.len() >= want {
            msg.truncate(want);
            break;
        }
    }
    Cow::Owned(msg)
}

/// The bodies of the records in `rest`, in order; stops at a truncated record.
struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let header = self.rest.get(..RECORD_HEADER_LEN)?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let body = self.rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)?;
        self.rest = &self.rest[RECORD_HEADER_LEN + len..];
        Some(body)
    }
}

/// A parsed ClientHello, borrowing from the handshake message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// `legacy_version` (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The server_name extension's host_name, raw bytes as sent (no case folding, trailing dot
    /// kept, an IP literal returned as is). None when absent.
    pub sni: Option<&'a [u8]>,
    /// Whether the encrypted_client_hello extension (0xfe0d) is present (Chrome sends a GREASE
    /// one on every connection, so this says nothing about whether ECH is really in use).
    pub has_ech: bool,
    /// The session id (0 to 32 bytes).
    pub session_id: &'a [u8],
    /// The compression_methods bytes (non-empty).
    pub compression_methods: &'a [u8],
    /// Number of extensions, GREASE and unknown ones included; 0 without an extensions block.
    pub extension_count: usize,
    /// Length of the handshake message, its 4-byte header included.
    pub message_len: usize,
    cipher_suites: &'a [u8],
    alpn: Option<&'a [u8]>,
    supported_versions: Option<&'a [u8]>,
    extensions: &'a [u8],
}

impl<'a> ClientHello<'a> {
    /// The ALPN protocol names in the order sent; empty when there is no ALPN extension.
    pub fn alpn(&self) -> Alpn<'a> {
        Alpn {
            rest: self.alpn.unwrap_or(&[]),
        }
    }

    /// Whether the ALPN extension is present (then it names at least one protocol).
    pub fn has_alpn(&self) -> bool {
        self.alpn.is_some()
    }

    /// The versions of the supported_versions extension in order (GREASE values included); empty
    /// when the extension is absent.
    pub fn supported_versions(&self) -> U16s<'a> {
        U16s {
            rest: self.supported_versions.unwrap_or(&[]),
        }
    }

    /// Whether the supported_versions extension is present.
    pub fn has_supported_versions(&self) -> bool {
        self.supported_versions.is_some()
    }

    /// The cipher suites in order (GREASE values included).
    pub fn cipher_suites(&self) -> U16s<'a> {
        U16s {
            rest: self.cipher_suites,
        }
    }

    /// Every extension as `(type, data)`, in the order sent, GREASE and unknown ones included.
    pub fn extensions(&self) -> Extensions<'a> {
        Extensions {
            rest: self.extensions,
        }
    }
}

/// The names of an ALPN extension already checked by [`parse`].
#[derive(Clone, Debug)]
pub struct Alpn<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Alpn<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, rest) = self.rest.split_first()?;
        let name = rest.get(..usize::from(len))?;
        self.rest = &rest[usize::from(len)..];
        Some(name)
    }
}

/// A list of big-endian u16 values already checked by [`parse`].
#[derive(Clone, Debug)]
pub struct U16s<'a> {
    rest: &'a [u8],
}

impl Iterator for U16s<'_> {
    type Item = u16;
    fn next(&mut self) -> Option<u16> {
        let v = self.rest.get(..2)?;
        let v = u16::from_be_bytes([v[0], v[1]]);
        self.rest = &self.rest[2..];
        Some(v)
    }
}

/// The extensions block already checked by [`parse`], as `(type, data)`.
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Extensions<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let mut r = Reader(self.rest);
        let typ = r.u16().ok()?;
        let data = r.u16_prefixed("").ok()?;
        self.rest = r.0;
        Some((typ, data))
    }
}

/// A cursor over a byte slice whose reads fail with `Malformed(what)` instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1, "truncated")?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2, "truncated")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u8_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = self.take(1, what)?[0];
        self.take(usize::from(len), what)
    }

    fn u16_prefixed(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let b = self.take(2, what)?;
        self.take(usize::from(u16::from_be_bytes([b[0], b[1]])), what)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Walks a ClientHello handshake message (type byte, 3-byte length, body) without copying.
pub fn parse(msg: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let mut r = Reader(msg);
    if r.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::Malformed("handshake type is not client_hello"));
    }
    let len = r.take(3, "truncated handshake header")?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    if len != r.0.len() {
        return Err(HelloError::Malformed(
            "handshake length does not match the message",
        ));
    }
    let legacy_version = r.u16()?;
    r.take(32, "truncated random")?;
    let session_id = r.u8_prefixed("truncated session_id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    let cipher_suites = r.u16_prefixed("truncated cipher_suites")?;
    if cipher_suites.is_empty() || cipher_suites.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "cipher_suites empty or of odd length",
        ));
    }
    let compression_methods = r.u8_prefixed("truncated compression_methods")?;
    if compression_methods.is_empty() {
        return Err(HelloError::Malformed("compression_methods empty"));
    }
    let mut hello = ClientHello {
        legacy_version,
        sni: None,
        has_ech: false,
        session_id,
        compression_methods,
        extension_count: 0,
        message_len: msg.len(),
        cipher_suites,
        alpn: None,
        supported_versions: None,
        extensions: &[],
    };
    if r.is_empty() {
        return Ok(hello); // no extensions block at all: legal
    }
    let block = r.u16_prefixed("truncated extensions block")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed(
            "trailing bytes after the extensions block",
        ));
    }
    hello.extensions = block;

    // One bit per extension type seen: 8 KiB on the stack, linear in the number of extensions.
    let mut seen = [0u64; 1024];
    let mut r = Reader(block);
    while !r.is_empty() {
        let typ = r.u16()?;
        let data = r.u16_prefixed("extension longer than the extensions block")?;
        let (word, bit) = (usize::from(typ) / 64, typ % 64);
        if seen[word] & (1 << bit) != 0 {
            return Err(HelloError::Malformed("duplicate extension type"));
        }
        seen[word] |= 1 << bit;
        hello.extension_count += 1;
        match typ {
            EXT_SERVER_NAME => hello.sni = server_name(data)?,
            EXT_ALPN => hello.alpn = Some(alpn(data)?),
            EXT_SUPPORTED_VERSIONS => hello.supported_versions = Some(supported_versions(data)?),
            EXT_ENCRYPTED_CLIENT_HELLO => hello.has_ech = true,
            _ => {} // unknown and GREASE (0x?a?a) types are skipped
        }
    }
    Ok(hello)
}

/// The host_name of a server_name extension (RFC 6066 §3). An entry of any other name type is
/// refused, as OpenSSL and BoringSSL do: none is defined, and a list a gate and an origin could
/// read differently is not one to pass.
fn server_name(data: &[u8]) -> Result<Option<&[u8]>, HelloError> {
    let mut r = Reader(data);
    let list = r.u16_prefixed("server_name list longer than the extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed(
            "trailing bytes after the server_name list",
        ));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("empty server_name list"));
    }
    let mut r = Reader(list);
    let mut host = None;
    while !r.is_empty() {
        let name_type = r.u8()?;
        let name = r.u16_prefixed("server_name entry longer than the list")?;
        if name_type != 0 {
            return Err(HelloError::Malformed(
                "server_name entry of a name type other than host_name",
            ));
        }
        if host.is_some() {
            return Err(HelloError::Malformed(
                "more than one host_name in server_name",
            ));
        }
        if name.is_empty() {
            return Err(HelloError::Malformed("empty host_name"));
        }
        host = Some(name);
    }
    Ok(host)
}

/// The protocol name list of an ALPN extension (RFC 7301 §3.1): non-empty, of non-empty names.
fn alpn(data: &[u8]) -> Result<&[u8], HelloError> {
    let mut r = Reader(data);
    let list = r.u16_prefixed("ALPN list longer than the extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed("trailing bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(HelloError::Malformed("empty ALPN list"));
    }
    let mut r = Reader(list);
    while !r.is_empty() {
        if r.u8_prefixed("ALPN name longer than the list")?.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
    }
    Ok(list)
}

/// The version list of a supported_versions extension (RFC 8446 §4.2.1): non-empty, even.
fn supported_versions(data: &[u8]) -> Result<&[u8], HelloError> {
    let mut r = Reader(data);
    let list = r.u8_prefixed("supported_versions list longer than the extension")?;
    if !r.is_empty() {
        return Err(HelloError::Malformed(
            "trailing bytes after the supported_versions list",
        ));
    }
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(HelloError::Malformed(
            "supported_versions list empty or of odd length",
        ));
    }
    Ok(list)
}
