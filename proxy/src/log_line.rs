//! Log lines written by hand into a reused buffer (`crate::log_writer` hands the buffer): JSON
//! whose escaping is correct for any byte a client can send, or the same fields as `key=value`
//! text. No formatter machinery on the request path: strings are copied (escaped only where a
//! byte needs it), numbers go through `itoa`, and the timestamp is formatted once per second per
//! thread from the coarse clock.

use std::cell::Cell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

/// How a line's fields are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// `{"key":"value","n":1}`
    Json,
    /// `key="value" n=1` (strings quoted and escaped as in JSON, null as `-`).
    Text,
}

/// Longest client-supplied value copied into a line (a Host, a path, an SNI); longer ones are
/// cut and end in `...`.
pub const MAX_CLIENT_VALUE: usize = 1024;

/// A field's name as each style writes it after the field before: `,"name":` and ` name=`, and
/// the same with the opening quote of a string value. Made at compile time by `key!`, so writing
/// a name is one copy of a constant.
#[derive(Clone, Copy)]
pub struct Key {
    json: &'static str,
    text: &'static str,
    json_str: &'static str,
    text_str: &'static str,
}

impl Key {
    pub const fn new(
        json: &'static str,
        text: &'static str,
        json_str: &'static str,
        text_str: &'static str,
    ) -> Key {
        Key {
            json,
            text,
            json_str,
            text_str,
        }
    }
}

/// `key!("name")`: the `Key` of a field called `name`.
#[macro_export]
macro_rules! key {
    ($name:literal) => {
        $crate::log_line::Key::new(
            concat!(",\"", $name, "\":"),
            concat!(" ", $name, "="),
            concat!(",\"", $name, "\":\""),
            concat!(" ", $name, "=\""),
        )
    };
}

/// The time a line starts with, formatted once for every line of a request.
#[derive(Clone, Copy)]
pub struct Stamp([u8; STAMP_LEN]);

/// `2026-11-22T03:00:00.123Z`
const STAMP_LEN: usize = 24;

impl Stamp {
    /// Now, from the coarse clock, to within a scheduler tick.
    pub fn now() -> Stamp {
        Stamp(stamp_now())
    }
}

/// One line being written into `out`, in JSON (`JSON = true`) or text: the style is a constant
/// so that every field name is a constant-length copy.
pub struct Line<'a, const JSON: bool> {
    out: &'a mut Vec<u8>,
}

/// Room reserved for a line up front: fields then append without growing the buffer.
const LINE_ROOM: usize = 768;

impl<'a, const JSON: bool> Line<'a, JSON> {
    /// Starts a line with its `time` field.
    #[inline(always)]
    pub fn start(out: &'a mut Vec<u8>, stamp: &Stamp) -> Self {
        out.reserve(LINE_ROOM);
        out.extend_from_slice(if JSON { b"{\"time\":\"" } else { b"time=\"" });
        out.extend_from_slice(&stamp.0);
        out.push(b'"');
        Line { out }
    }

    #[inline(always)]
    fn key(&mut self, key: Key) {
        self.out
            .extend_from_slice(if JSON { key.json } else { key.text }.as_bytes());
    }

    /// The name, then the opening quote of a string value.
    #[inline(always)]
    fn key_str(&mut self, key: Key) {
        self.out
            .extend_from_slice(if JSON { key.json_str } else { key.text_str }.as_bytes());
    }

    /// A string from anywhere (a client, the configuration): escaped, capped.
    #[inline(always)]
    pub fn str(&mut self, key: Key, value: &str) {
        self.bytes(key, value.as_bytes());
    }

    /// Bytes from anywhere, not necessarily UTF-8: escaped (an invalid sequence becomes
    /// U+FFFD), capped at `MAX_CLIENT_VALUE`.
    #[inline(always)]
    pub fn bytes(&mut self, key: Key, value: &[u8]) {
        self.key_str(key);
        escape_into(self.out, value);
        self.out.push(b'"');
    }

    /// Text the gate made and knows needs no escaping (a normalized host, a request id, a
    /// label): copied as it is. Checked in debug builds.
    #[inline(always)]
    pub fn plain(&mut self, key: Key, value: &[u8]) {
        debug_assert!(
            value.iter().all(|&b| !NEEDS_ESCAPE[b as usize]),
            "{value:?}"
        );
        self.key_str(key);
        self.out.extend_from_slice(value);
        self.out.push(b'"');
    }

    /// A request id: 24 hex digits (copied as a constant-length block), or any other plain
    /// text.
    #[inline(always)]
    pub fn id(&mut self, key: Key, id: &str) {
        match <&[u8; 24]>::try_from(id.as_bytes()) {
            Ok(fixed) => {
                debug_assert!(fixed.iter().all(u8::is_ascii_hexdigit));
                self.key_str(key);
                self.out.extend_from_slice(fixed);
                self.out.push(b'"');
            }
            Err(_) => self.str(key, id),
        }
    }

    /// A label the gate itself chose (`blocked`, `unfiled`).
    #[inline(always)]
    pub fn label(&mut self, key: Key, value: &'static str) {
        self.plain(key, value.as_bytes());
    }

    #[inline(always)]
    pub fn uint(&mut self, key: Key, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// An HTTP status: three digits, written without a number formatter.
    #[inline(always)]
    pub fn status(&mut self, key: Key, status: u16) {
        if (100..1000).contains(&status) {
            self.key(key);
            self.out.extend_from_slice(&[
                b'0' + (status / 100) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ]);
        } else {
            self.uint(key, u64::from(status));
        }
    }

    /// Text written as it is, with no name of its own: several fields made at compile time
    /// (`outcome_fields!` in `access_log`).
    #[inline(always)]
    pub fn raw(&mut self, text: &'static str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    #[inline(always)]
    pub fn bool(&mut self, key: Key, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline(always)]
    pub fn null(&mut self, key: Key) {
        self.key(key);
        self.out
            .extend_from_slice(if JSON { b"null" } else { b"-" });
    }

    /// An IP address as text (no brackets around IPv6).
    pub fn ip(&mut self, key: Key, ip: IpAddr) {
        self.key_str(key);
        push_ip(self.out, ip);
        self.out.push(b'"');
    }

    /// `ip:port` (`[v6]:port`), as one string.
    pub fn socket_addr(&mut self, key: Key, addr: SocketAddr) {
        self.plain(key, ClientText::new(addr).full());
    }

    /// Ends the line.
    #[inline(always)]
    pub fn finish(self) {
        self.out
            .extend_from_slice(if JSON { b"}\n" } else { b"\n" });
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(ClientText::new(SocketAddr::new(ip, 0)).ip());
}

/// Each octet's decimal digits, padded to 4 bytes, and how many of them count: an IPv4 address
/// is four fixed-size copies.
static OCTETS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let n = i as u8;
        t[i] = if n >= 100 {
            ([b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10, 0], 3)
        } else if n >= 10 {
            ([b'0' + n / 10, b'0' + n % 10, 0, 0], 2)
        } else {
            ([b'0' + n, 0, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// A client's address as text, made once for every line of a request (and kept by a connection
/// for all of its requests): `ip:port` (`[v6]:port`), with the address and the port apart for the
/// fields that want them so.
#[derive(Clone, Copy)]
pub struct ClientText {
    buf: [u8; 56],
    len: usize,
    /// Where the address ends (and `:port` starts), and where it starts (after `[`).
    ip_start: usize,
    ip_end: usize,
    pub port: u16,
}

impl ClientText {
    pub fn new(addr: SocketAddr) -> ClientText {
        let mut buf = [0u8; 56];
        let (ip_start, ip_end) = match addr.ip() {
            IpAddr::V4(ip) => {
                let mut n = 0;
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    let (digits, len) = OCTETS[octet as usize];
                    buf[n..n + 4].copy_from_slice(&digits);
                    n += len as usize;
                }
                (0, n)
            }
            IpAddr::V6(ip) => {
                buf[0] = b'[';
                let mut cursor = std::io::Cursor::new(&mut buf[1..47]);
                let _ = write!(cursor, "{ip}");
                let n = 1 + cursor.position() as usize;
                buf[n] = b']';
                (1, n)
            }
        };
        let mut len = ip_end + usize::from(ip_start == 1);
        buf[len] = b':';
        len += 1;
        let mut port = itoa::Buffer::new();
        let digits = port.format(addr.port()).as_bytes();
        buf[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
        ClientText {
            buf,
            len,
            ip_start,
            ip_end,
            port: addr.port(),
        }
    }

    /// `ip:port`, `[v6]:port`.
    pub fn full(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The address alone, without brackets.
    pub fn ip(&self) -> &[u8] {
        &self.buf[self.ip_start..self.ip_end]
    }
}

/// Bytes JSON needs escaped, and the ones this escaper treats apart: control characters, `"`,
/// `\`, DEL, and every non-ASCII byte (checked as UTF-8).
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i < 0x20 || i == b'"' as usize || i == b'\\' as usize || i >= 0x7f;
        i += 1;
    }
    t
};

/// Appends `value` as the inside of a JSON string: valid UTF-8 whatever the input (an invalid
/// sequence becomes U+FFFD), every control character escaped, cut at `MAX_CLIENT_VALUE` bytes
/// (then ending in `...`).
pub fn escape_into(out: &mut Vec<u8>, value: &[u8]) {
    let (value, cut) = if value.len() > MAX_CLIENT_VALUE {
        (&value[..MAX_CLIENT_VALUE], true)
    } else {
        (value, false)
    };
    // The common case, plain printable ASCII: checked 8 bytes at a time, copied whole.
    if is_plain(value) {
        out.extend_from_slice(value);
    } else {
        let first = value
            .iter()
            .position(|&b| NEEDS_ESCAPE[b as usize])
            .unwrap_or(value.len());
        out.extend_from_slice(&value[..first]);
        escape_slow(out, &value[first..]);
    }
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// Whether no byte of `value` needs escaping (`NEEDS_ESCAPE`), a word of 8 bytes at a time.
#[inline]
fn is_plain(value: &[u8]) -> bool {
    let mut words = value.chunks_exact(8);
    for word in &mut words {
        if has_special(u64::from_le_bytes(word.try_into().expect("8 bytes"))) {
            return false;
        }
    }
    // The tail (up to 7 bytes) in a word padded with a plain byte, built without a copy call.
    let mut last = u64::from_le_bytes([b'a'; 8]);
    for (i, &b) in words.remainder().iter().enumerate() {
        let shift = 8 * i;
        last = (last & !(0xff << shift)) | (u64::from(b) << shift);
    }
    !has_special(last)
}

/// Whether any byte of the word is below 0x20, a quote, a backslash, 0x7f or from 0x80 up (the classic
/// "has a zero byte" test, `(x - 0x01..) & !x & 0x80..`, on the word and on it XORed with each
/// byte looked for: exact for "any", which is all this asks).
#[inline(always)]
fn has_special(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = x.wrapping_sub(0x20 * ONES) & !x & HIGH;
    (x & HIGH)
        | below_space
        | zero(x ^ (b'"' as u64 * ONES))
        | zero(x ^ (b'\\' as u64 * ONES))
        | zero(x ^ (0x7f * ONES))
        != 0
}

#[cold]
fn escape_slow(out: &mut Vec<u8>, value: &[u8]) {
    for chunk in value.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f | 0x7f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 0xf) as usize]);
                }
                // Bytes of valid multi-byte characters, and plain ASCII.
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS`
const SECONDS_LEN: usize = 19;

thread_local! {
    /// The current second as text, per thread: (unix second, text).
    static SECOND: Cell<(u64, [u8; SECONDS_LEN])> = const { Cell::new((u64::MAX, [0; SECONDS_LEN])) };
}

/// Now in UTC as `2026-11-22T03:00:00.123Z`, from the coarse clock (to within a scheduler
/// tick); the seconds formatted once per second per thread.
fn stamp_now() -> [u8; STAMP_LEN] {
    let now = crate::clock::realtime_coarse();
    let secs = now.as_secs();
    let text = SECOND.with(|cell| {
        let (cached, text) = cell.get();
        if cached == secs {
            return text;
        }
        let text = seconds_text(secs);
        cell.set((secs, text));
        text
    });
    let mut out = [0u8; STAMP_LEN];
    out[..SECONDS_LEN].copy_from_slice(&text);
    let millis = now.subsec_millis();
    out[SECONDS_LEN..].copy_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
    out
}

fn seconds_text(unix_seconds: u64) -> [u8; SECONDS_LEN] {
    let t = time::OffsetDateTime::from_unix_timestamp(unix_seconds.min(253_402_300_799) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut out = [b'0'; SECONDS_LEN];
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (0..width).rev() {
            out[at + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, t.year() as u32);
    put(5, 2, u8::from(t.month()) as u32);
    put(8, 2, t.day() as u32);
    put(11, 2, t.hour() as u32);
    put(14, 2, t.minute() as u32);
    put(17, 2, t.second() as u32);
    out[4] = b'-';
    out[7] = b'-';
    out[10] = b'T';
    out[13] = b':';
    out[16] = b':';
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(value: &[u8]) -> String {
        let mut out = Vec::new();
        escape_into(&mut out, value);
        String::from_utf8(out).expect("always UTF-8")
    }

    #[test]
    fn every_byte_value_escapes_to_a_json_string_that_reads_back() {
        // Each single byte, each pair, and a mix of valid and invalid UTF-8.
        let mut inputs: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for a in 0..=255u8 {
            inputs.push(vec![b'a', a, b'"', a, b'\\']);
        }
        inputs.push("例子.中国\u{2028}\u{7f}".as_bytes().to_vec());
        inputs.push(vec![0xe4, 0xbe, b'x', 0xff, 0xc0, 0x80]);
        for input in inputs {
            let text = format!("\"{}\"", escaped(&input));
            let back: String = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{input:?} gave {text}: {e}"));
            assert_eq!(back, String::from_utf8_lossy(&input), "{input:?}");
            assert!(!text.bytes().any(|b| b < 0x20 || b == 0x7f), "{text:?}");
        }
    }

    /// The word-at-a-time check agrees with the table on every byte at every position, and on
    /// every length around a word.
    #[test]
    fn the_word_check_agrees_with_the_table() {
        for b in 0..=255u8 {
            for len in 1..=17 {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    assert_eq!(
                        is_plain(&v),
                        !NEEDS_ESCAPE[b as usize],
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(is_plain(b""));
    }

    #[test]
    fn client_addresses_as_text() {
        for addr in [
            "0.0.0.0:0",
            "1.20.255.9:80",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[::ffff:1.2.3.4]:1",
        ] {
            let a: SocketAddr = addr.parse().unwrap();
            let text = ClientText::new(a);
            assert_eq!(text.full(), a.to_string().as_bytes());
            assert_eq!(text.ip(), a.ip().to_string().as_bytes());
            assert_eq!(text.port, a.port());
        }
    }

    #[test]
    fn long_values_are_cut() {
        let e = escaped(&[b'a'; 5000]);
        assert_eq!(e.len(), MAX_CLIENT_VALUE + 3);
        assert!(e.ends_with("..."));
    }

    fn fields<const JSON: bool>(out: &mut Vec<u8>) {
        let client: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut line = Line::<JSON>::start(out, &Stamp::now());
        line.str(key!("host"), "evil\"\n.cn");
        line.label(key!("decision"), "blocked");
        line.uint(key!("serial"), 42);
        line.null(key!("matched"));
        line.bool(key!("ech"), false);
        line.socket_addr(key!("client"), client);
        line.ip(key!("ip"), "203.0.113.7".parse().unwrap());
        line.ip(key!("ip4"), "10.0.100.255".parse().unwrap());
        line.plain(key!("id"), b"0123abcd");
        line.finish();
    }

    #[test]
    fn a_line_is_one_json_object_and_its_text_form_has_the_same_fields() {
        let write = |style| {
            let mut out = Vec::new();
            match style {
                Style::Json => fields::<true>(&mut out),
                Style::Text => fields::<false>(&mut out),
            }
            String::from_utf8(out).unwrap()
        };
        let json = write(Style::Json);
        assert_eq!(json.matches('\n').count(), 1);
        assert!(json.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["host"], "evil\"\n.cn");
        assert_eq!(v["decision"], "blocked");
        assert_eq!(v["serial"], 42);
        assert!(v["matched"].is_null());
        assert_eq!(v["ech"], false);
        assert_eq!(v["client"], "[2001:db8::1]:443");
        assert_eq!(v["ip"], "203.0.113.7");
        assert_eq!(v["ip4"], "10.0.100.255");
        assert_eq!(v["id"], "0123abcd");
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
        let text = write(Style::Text);
        assert!(text.starts_with("time=\""), "{text}");
        assert!(text.ends_with(
            " host=\"evil\\\"\\n.cn\" decision=\"blocked\" serial=42 matched=- ech=false client=\"[2001:db8::1]:443\" ip=\"203.0.113.7\" ip4=\"10.0.100.255\" id=\"0123abcd\"\n"
        ), "{text}");
    }

    #[test]
    fn seconds_are_rfc3339() {
        assert_eq!(&seconds_text(0), b"1970-01-01T00:00:00");
        assert_eq!(&seconds_text(1_795_333_820), b"2026-11-22T07:50:20");
    }
}
