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

/// One line being written into `out`.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
    style: Style,
    first: bool,
}

impl<'a> Line<'a> {
    /// Starts a line with its `time` field.
    #[inline]
    pub fn start(out: &'a mut Vec<u8>, style: Style) -> Self {
        if style == Style::Json {
            out.push(b'{');
        }
        let mut line = Line {
            out,
            style,
            first: true,
        };
        line.key("time");
        line.out.push(b'"');
        push_time(line.out);
        line.out.push(b'"');
        line
    }

    #[inline]
    fn key(&mut self, key: &str) {
        match (self.style, self.first) {
            (Style::Json, true) => self.out.push(b'"'),
            (Style::Json, false) => self.out.extend_from_slice(b",\""),
            (Style::Text, true) => {}
            (Style::Text, false) => self.out.push(b' '),
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        match self.style {
            Style::Json => self.out.extend_from_slice(b"\":"),
            Style::Text => self.out.push(b'='),
        }
    }

    /// A string from anywhere (a client, the configuration): escaped, capped.
    #[inline]
    pub fn str(&mut self, key: &str, value: &str) {
        self.bytes(key, value.as_bytes());
    }

    /// Bytes from anywhere, not necessarily UTF-8: escaped (an invalid sequence becomes
    /// U+FFFD), capped at `MAX_CLIENT_VALUE`.
    #[inline]
    pub fn bytes(&mut self, key: &str, value: &[u8]) {
        self.key(key);
        self.out.push(b'"');
        escape_into(self.out, value);
        self.out.push(b'"');
    }

    /// A label the gate itself chose (`blocked`, `unfiled`): plain ASCII, written as it is.
    #[inline]
    pub fn label(&mut self, key: &str, value: &'static str) {
        debug_assert!(value.bytes().all(|b| !NEEDS_ESCAPE[b as usize]));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    #[inline]
    pub fn uint(&mut self, key: &str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline]
    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline]
    pub fn null(&mut self, key: &str) {
        self.key(key);
        self.out.extend_from_slice(match self.style {
            Style::Json => b"null",
            Style::Text => b"-",
        });
    }

    /// An IP address as text (no brackets around IPv6).
    pub fn ip(&mut self, key: &str, ip: IpAddr) {
        self.key(key);
        self.out.push(b'"');
        push_ip(self.out, ip);
        self.out.push(b'"');
    }

    /// `ip:port` (`[v6]:port`), as one string.
    pub fn socket_addr(&mut self, key: &str, addr: SocketAddr) {
        self.key(key);
        self.out.push(b'"');
        match addr.ip() {
            IpAddr::V4(ip) => push_ip(self.out, IpAddr::V4(ip)),
            IpAddr::V6(ip) => {
                self.out.push(b'[');
                push_ip(self.out, IpAddr::V6(ip));
                self.out.push(b']');
            }
        }
        self.out.push(b':');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
        self.out.push(b'"');
    }

    /// Ends the line.
    #[inline]
    pub fn finish(self) {
        if self.style == Style::Json {
            self.out.push(b'}');
        }
        self.out.push(b'\n');
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in ip.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(buf.format(*octet).as_bytes());
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
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
    // The common case, a plain ASCII name: one scan, one copy.
    match value.iter().position(|&b| NEEDS_ESCAPE[b as usize]) {
        None => out.extend_from_slice(value),
        Some(first) => {
            out.extend_from_slice(&value[..first]);
            escape_slow(out, &value[first..]);
        }
    }
    if cut {
        out.extend_from_slice(b"...");
    }
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

/// Appends now in UTC as `2026-11-22T03:00:00.123Z`, from the coarse clock (to within a
/// scheduler tick).
pub fn push_time(out: &mut Vec<u8>) {
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
    out.extend_from_slice(&text);
    let millis = now.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
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

    #[test]
    fn long_values_are_cut() {
        let e = escaped(&[b'a'; 5000]);
        assert_eq!(e.len(), MAX_CLIENT_VALUE + 3);
        assert!(e.ends_with("..."));
    }

    #[test]
    fn a_line_is_one_json_object_and_its_text_form_has_the_same_fields() {
        let client: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let write = |style| {
            let mut out = Vec::new();
            let mut line = Line::start(&mut out, style);
            line.str("host", "evil\"\n.cn");
            line.label("decision", "blocked");
            line.uint("serial", 42);
            line.null("matched");
            line.bool("ech", false);
            line.socket_addr("client", client);
            line.ip("ip", "203.0.113.7".parse().unwrap());
            line.finish();
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
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
        let text = write(Style::Text);
        assert!(text.starts_with("time=\""), "{text}");
        assert!(text.ends_with(
            " host=\"evil\\\"\\n.cn\" decision=\"blocked\" serial=42 matched=- ech=false client=\"[2001:db8::1]:443\" ip=\"203.0.113.7\"\n"
        ), "{text}");
    }

    #[test]
    fn seconds_are_rfc3339() {
        assert_eq!(&seconds_text(0), b"1970-01-01T00:00:00");
        assert_eq!(&seconds_text(1_795_333_820), b"2026-11-22T07:50:20");
    }
}
