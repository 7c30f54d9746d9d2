//! Host names as a request or a registry record gives them, normalized once so that every later
//! comparison is a plain byte comparison.
//!
//! Both sides go through the same code: a registry name and a request Host that name the same
//! site end up as the same bytes (lower-case A-labels, no trailing dot, no port), or as the same
//! IP address. Everything that is not clearly a host name is refused rather than guessed at,
//! because a guess is where a client slips an unfiled site past the gate.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest domain name in bytes, without the trailing dot (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label in bytes (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest raw authority we try to parse at all: bounds the work a client can ask of IDNA.
/// Unicode names are longer before conversion than after, so this is well above 253.
pub const MAX_RAW_LEN: usize = 1024;

/// A normalized host: a domain name in lower-case A-labels, or an IP address.
// The inline domain buffer is the point: a request's host is normalized on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Domain(DomainName),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d.as_str()),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Host({self})")
    }
}

/// A domain name already normalized: ASCII `[a-z0-9_-]` labels of 1 to 63 bytes joined by dots,
/// at most 253 bytes, no trailing dot.
///
/// Kept inline (no heap allocation) so that normalizing a request's Host allocates nothing on the
/// common ASCII path.
#[derive(Clone)]
pub struct DomainName {
    len: u8,
    buf: [u8; MAX_NAME_LEN],
}

impl DomainName {
    pub fn as_str(&self) -> &str {
        // SAFETY: both constructors write ASCII only (`from_ascii_lowercased` checks every byte,
        // `plain_authority` copies through a table of ASCII bytes), and ASCII is valid UTF-8. (Checking again here cost more than the lookup itself on
        // the block path: names are read as text several times per request.)
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len as usize]) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// This name and each parent name, most specific first, down to (and excluding) the last
    /// label: `a.b.example.com`, `b.example.com`, `example.com`. A single label is always a public
    /// suffix (PSL default rule) and so is never filed, which is why it is not produced.
    pub fn self_and_parents(&self) -> impl Iterator<Item = &str> {
        let s = self.as_str();
        self.candidate_starts().map(move |start| &s[start..])
    }

    /// Where each name of `self_and_parents` starts in `as_bytes()`: 0, then just after each dot
    /// but the last. A plain byte scan, cheap enough for the decision path (no UTF-8 check).
    #[inline]
    pub fn candidate_starts(&self) -> impl Iterator<Item = usize> + '_ {
        let bytes = self.as_bytes();
        let mut next = Some(0usize);
        std::iter::from_fn(move || {
            let start = next?;
            match bytes[start..].iter().position(|&b| b == b'.') {
                Some(dot) => {
                    next = Some(start + dot + 1);
                    Some(start)
                }
                None => {
                    next = None;
                    None
                }
            }
        })
    }

    fn from_ascii_lowercased(bytes: &[u8]) -> Self {
        // `as_str` relies on this.
        assert!(bytes.is_ascii(), "domain names are ASCII");
        debug_assert!(bytes.len() <= MAX_NAME_LEN);
        let mut buf = [0u8; MAX_NAME_LEN];
        for (dst, src) in buf.iter_mut().zip(bytes) {
            *dst = src.to_ascii_lowercase();
        }
        DomainName {
            len: bytes.len() as u8,
            buf,
        }
    }
}

impl PartialEq for DomainName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for DomainName {}
impl std::hash::Hash for DomainName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Why a host could not be used. Each is answered with `400 invalid_host`; the text goes into the
/// response body and the log so the client and the operator see what was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidHost {
    Empty,
    TooLong,
    LabelTooLong,
    EmptyLabel,
    UserInfo,
    BadPort,
    BadCharacter,
    BadIpLiteral,
    NumericTopLevel,
    Idna,
    /// More than one Host header (RFC 9112 §3.2: answer 400).
    Duplicate,
    /// An absolute-form target whose authority names another host than the Host header.
    Mismatch,
}

impl InvalidHost {
    /// A short machine-readable code for logs.
    pub fn code(self) -> &'static str {
        match self {
            InvalidHost::Empty => "empty",
            InvalidHost::TooLong => "too_long",
            InvalidHost::LabelTooLong => "label_too_long",
            InvalidHost::EmptyLabel => "empty_label",
            InvalidHost::UserInfo => "userinfo",
            InvalidHost::BadPort => "bad_port",
            InvalidHost::BadCharacter => "bad_character",
            InvalidHost::BadIpLiteral => "bad_ip_literal",
            InvalidHost::NumericTopLevel => "numeric_tld",
            InvalidHost::Idna => "idna",
            InvalidHost::Duplicate => "duplicate_host",
            InvalidHost::Mismatch => "target_host_mismatch",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            InvalidHost::Empty => "the host is empty",
            InvalidHost::TooLong => "the host name is longer than 253 bytes",
            InvalidHost::LabelTooLong => "a label of the host name is longer than 63 bytes",
            InvalidHost::EmptyLabel => "the host name has an empty label",
            InvalidHost::UserInfo => "the host carries user information (@)",
            InvalidHost::BadPort => "the port is not a number from 0 to 65535",
            InvalidHost::BadCharacter => "the host contains a character not allowed in host names",
            InvalidHost::BadIpLiteral => "the host is not a valid IP address literal",
            InvalidHost::NumericTopLevel => {
                "the host ends in a numeric label but is not a dotted-quad IPv4 address"
            }
            InvalidHost::Idna => "the host is not a valid internationalized domain name",
            InvalidHost::Duplicate => "the request carries more than one Host header",
            InvalidHost::Mismatch => {
                "the request target's authority and the Host header name different hosts"
            }
        }
    }
}

impl fmt::Display for InvalidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for InvalidHost {}

/// Normalizes the authority a request names (a Host header value, an absolute-form target's
/// authority, an HTTP/2 `:authority`): `host[:port]`, where host is a domain, a dotted-quad IPv4
/// address or a bracketed IPv6 address. The port is checked and dropped.
pub fn parse_authority(raw: &[u8]) -> Result<Host, InvalidHost> {
    match plain_authority(raw) {
        Some(name) => Ok(Host::Domain(name)),
        None => parse_authority_general(raw),
    }
}

/// Lower-cased name bytes by input byte: 0 for every byte that is not in `[A-Za-z0-9_.-]`.
static PLAIN_NAME_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => c,
            b'A'..=b'Z' => c | 0x20,
            _ => 0,
        };
        b += 1;
    }
    table
};

/// The common request authority in one pass: a plain ASCII name (`[A-Za-z0-9_-]` labels of 1 to
/// 63 bytes joined by single dots, at most 253 bytes, no trailing dot, no `xn--` label, a last
/// label that is not numeric), then nothing or a valid `:port`. Such an authority is copied
/// lower-cased as it is checked and returned: exactly what `parse_authority_general` gives it.
/// Anything else gives `None` and takes the general path, which decides it (and names the
/// error). The general path checked, copied and lower-cased in separate passes, and on the block
/// path that cost more than the registry lookup (`benches/load/instructions.sh`).
fn plain_authority(raw: &[u8]) -> Option<DomainName> {
    let mut buf = [0u8; MAX_NAME_LEN];
    let mut len = 0;
    let mut label_start = 0;
    let mut end = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        let lower = PLAIN_NAME_BYTE[b as usize];
        if lower == 0 {
            if b == b':' {
                end = i;
                break;
            }
            return None;
        }
        if len == MAX_NAME_LEN {
            return None;
        }
        buf[len] = lower;
        len += 1;
        if lower == b'.' {
            if !plain_label(&buf[label_start..len - 1]) {
                return None;
            }
            label_start = len;
        }
    }
    let last = &buf[label_start..len];
    if !plain_label(last) || is_numeric_label(last) {
        return None;
    }
    check_port(&raw[end..]).ok()?;
    Some(DomainName {
        len: len as u8,
        buf,
    })
}

/// A label the plain paths take: 1 to 63 bytes (lower-cased already), not an `xn--` label
/// (which UTS #46 must validate).
#[inline]
fn plain_label(label: &[u8]) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LEN && !label.starts_with(b"xn--")
}

/// `parse_authority` without its fast path: every authority it can take.
fn parse_authority_general(raw: &[u8]) -> Result<Host, InvalidHost> {
    if raw.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if raw.len() > MAX_RAW_LEN {
        return Err(InvalidHost::TooLong);
    }
    if raw.contains(&b'@') {
        return Err(InvalidHost::UserInfo);
    }
    if raw[0] == b'[' {
        let close = raw
            .iter()
            .position(|&b| b == b']')
            .ok_or(InvalidHost::BadIpLiteral)?;
        check_port(&raw[close + 1..])?;
        return parse_ipv6(&raw[1..close]).map(Host::Ip);
    }
    let (host, port) = match raw.iter().position(|&b| b == b':') {
        Some(colon) => (&raw[..colon], &raw[colon..]),
        None => (raw, &b""[..]),
    };
    check_port(port)?;
    parse_host(host)
}

/// Normalizes a TLS ClientHello's SNI (`server_name` host_name) exactly as a Host without a
/// port: case, one trailing dot, Unicode to A-labels, length and label rules. `Ok(None)` for an
/// IP literal, which counts as no SNI (RFC 6066 §3 forbids literals there; the connection is
/// then decided on its destination address). A port, brackets or user information are not part
/// of a server name and are refused.
pub fn parse_sni(raw: &[u8]) -> Result<Option<DomainName>, InvalidHost> {
    if let Some(name) = plain_authority(raw) {
        // The fast path also takes `name:port`: only the plain name itself is an SNI.
        if name.len as usize == raw.len() {
            return Ok(Some(name));
        }
        return Err(InvalidHost::BadCharacter);
    }
    if raw.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if raw.len() > MAX_RAW_LEN {
        return Err(InvalidHost::TooLong);
    }
    if raw.iter().any(|&b| matches!(b, b':' | b'[' | b']' | b'@')) {
        return Err(InvalidHost::BadCharacter);
    }
    match parse_host(raw)? {
        Host::Domain(name) => Ok(Some(name)),
        Host::Ip(_) => Ok(None),
    }
}

/// Normalizes a registry record's name: a domain (Unicode or A-labels, any case, optional trailing
/// dot) or an IP address (IPv6 bare or bracketed). No port.
pub fn parse_registry_name(raw: &str) -> Result<Host, InvalidHost> {
    let bytes = raw.as_bytes();
    if bytes.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if bytes.len() > MAX_RAW_LEN {
        return Err(InvalidHost::TooLong);
    }
    if bytes[0] == b'[' {
        let inner = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .ok_or(InvalidHost::BadIpLiteral)?;
        return parse_ipv6(inner.as_bytes()).map(Host::Ip);
    }
    if bytes.contains(&b':') {
        return parse_ipv6(bytes).map(Host::Ip);
    }
    if bytes.contains(&b'@') {
        return Err(InvalidHost::UserInfo);
    }
    parse_host(bytes)
}

/// `:port` (or nothing). An empty port after the colon is allowed by RFC 3986.
fn check_port(rest: &[u8]) -> Result<(), InvalidHost> {
    let Some(digits) = rest.strip_prefix(b":") else {
        return if rest.is_empty() {
            Ok(())
        } else {
            Err(InvalidHost::BadPort)
        };
    };
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(InvalidHost::BadPort);
    }
    let mut value: u32 = 0;
    for d in digits {
        value = value * 10 + u32::from(d - b'0');
    }
    if value > 65535 {
        return Err(InvalidHost::BadPort);
    }
    Ok(())
}

fn parse_ipv6(inner: &[u8]) -> Result<IpAddr, InvalidHost> {
    // No zone identifiers (`%25eth0`): they mean nothing off the sender's machine.
    let text = std::str::from_utf8(inner).map_err(|_| InvalidHost::BadIpLiteral)?;
    let ip: Ipv6Addr = text.parse().map_err(|_| InvalidHost::BadIpLiteral)?;
    // `[::ffff:203.0.113.7]` is the IPv4 address written another way; it must not dodge (or
    // miss) the filing of 203.0.113.7.
    Ok(match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    })
}

/// A host without port, told apart but not yet copied: an IPv4 address, or a valid domain name
/// in ASCII (not yet lower-cased), borrowed from the input when it needed no conversion.
enum Classified<'a> {
    Ip(IpAddr),
    Ascii(Cow<'a, [u8]>),
}

fn classify(raw: &[u8]) -> Result<Classified<'_>, InvalidHost> {
    let host = raw.strip_suffix(b".").unwrap_or(raw);
    if host.is_empty() {
        return Err(if raw.is_empty() {
            InvalidHost::Empty
        } else {
            InvalidHost::EmptyLabel
        });
    }
    if host.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        // Only the canonical dotted quad is an address. `127.1`, `0177.0.0.1` and friends are
        // refused: origins disagree about what they mean.
        let text = std::str::from_utf8(host).map_err(|_| InvalidHost::BadIpLiteral)?;
        return text
            .parse::<Ipv4Addr>()
            .map(|ip| Classified::Ip(IpAddr::V4(ip)))
            .map_err(|_| InvalidHost::NumericTopLevel);
    }
    normalized_ascii(host).map(Classified::Ascii)
}

/// A host without port: dotted-quad IPv4 or a domain name.
fn parse_host(raw: &[u8]) -> Result<Host, InvalidHost> {
    Ok(match classify(raw)? {
        Classified::Ip(ip) => Host::Ip(ip),
        Classified::Ascii(ascii) => Host::Domain(DomainName::from_ascii_lowercased(&ascii)),
    })
}

/// `parse_registry_name` for bulk loading: a domain is written (normalized) into `out` and
/// `Ok(None)` returned; an IP address is returned. Nothing large is moved per record.
pub fn parse_registry_name_into(
    raw: &str,
    out: &mut Vec<u8>,
) -> Result<Option<IpAddr>, InvalidHost> {
    let bytes = raw.as_bytes();
    if plain_name_into(bytes, out) {
        return Ok(None);
    }
    if bytes.is_empty() {
        return Err(InvalidHost::Empty);
    }
    if bytes.len() > MAX_RAW_LEN {
        return Err(InvalidHost::TooLong);
    }
    if bytes[0] == b'[' || bytes.contains(&b':') {
        return match parse_registry_name(raw)? {
            Host::Ip(ip) => Ok(Some(ip)),
            Host::Domain(_) => unreachable!("a name with ':' or '[' is never a domain"),
        };
    }
    if bytes.contains(&b'@') {
        return Err(InvalidHost::UserInfo);
    }
    match classify(bytes)? {
        Classified::Ip(ip) => Ok(Some(ip)),
        Classified::Ascii(ascii) => {
            out.clear();
            out.extend(ascii.iter().map(u8::to_ascii_lowercase));
            Ok(None)
        }
    }
}

/// The common registry name in one pass: `[A-Za-z0-9_-]` labels of 1 to 63 bytes joined by
/// single dots, at most 253 bytes, no trailing dot, no `xn--` label, and a last label that is not
/// numeric. Such a name is written lower-cased into `out` and true returned: exactly what the
/// general path gives it. Anything else returns false (`out` then holds nothing useful) and
/// takes the general path, which decides it.
fn plain_name_into(bytes: &[u8], out: &mut Vec<u8>) -> bool {
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return false;
    }
    out.clear();
    out.extend_from_slice(bytes);
    let is_xn = |label: &[u8]| label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--");
    let mut label_start = 0;
    for i in 0..out.len() {
        let b = out[i];
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => out[i] = b | 0x20,
            b'.' => {
                let label = &out[label_start..i];
                if label.is_empty() || label.len() > MAX_LABEL_LEN || is_xn(label) {
                    return false;
                }
                label_start = i + 1;
            }
            _ => return false,
        }
    }
    let last = &out[label_start..];
    !(last.is_empty() || last.len() > MAX_LABEL_LEN || is_xn(last) || is_numeric_label(last))
}

fn is_plain_ascii_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// `name` has no trailing dot here. The result is valid but not yet lower-cased.
fn normalized_ascii(name: &[u8]) -> Result<Cow<'_, [u8]>, InvalidHost> {
    if let Some(checked) = check_plain_ascii(name) {
        // Fast path: plain ASCII needs nothing from UTS #46 but lower-casing.
        return checked.map(|()| Cow::Borrowed(name));
    }
    if name.iter().any(|b| b.is_ascii_control() || *b == b' ') {
        return Err(InvalidHost::BadCharacter);
    }
    // Slow path: Unicode, full-width dots, punycode to validate.
    let ascii = Uts46::new()
        .to_ascii(name, AsciiDenyList::URL, Hyphens::Allow, DnsLength::Ignore)
        .map_err(|_| InvalidHost::Idna)?;
    let mut ascii = ascii.into_owned().into_bytes();
    // A trailing ideographic full stop (`例子。中国。`) maps to a trailing dot.
    if ascii.last() == Some(&b'.') {
        ascii.pop();
    }
    if ascii.is_empty() {
        return Err(InvalidHost::EmptyLabel);
    }
    if !ascii.iter().all(|&b| is_plain_ascii_byte(b)) {
        return Err(InvalidHost::BadCharacter);
    }
    validate_ascii_name(&ascii)?;
    Ok(Cow::Owned(ascii))
}

/// One pass over a name for the common case: `None` when it needs UTS #46 (a byte outside
/// `[A-Za-z0-9_.-]`, or an `xn--` label to validate), otherwise exactly what
/// `validate_ascii_name` would say.
fn check_plain_ascii(name: &[u8]) -> Option<Result<(), InvalidHost>> {
    let mut label_start = 0;
    let mut label_error = None;
    for i in 0..=name.len() {
        let b = name.get(i).copied().unwrap_or(b'.');
        if b == b'.' {
            let label = &name[label_start..i];
            if label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--") {
                return None;
            }
            if label_error.is_none() {
                if label.is_empty() {
                    label_error = Some(InvalidHost::EmptyLabel);
                } else if label.len() > MAX_LABEL_LEN {
                    label_error = Some(InvalidHost::LabelTooLong);
                }
            }
            label_start = i + 1;
        } else if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
    }
    if name.len() > MAX_NAME_LEN {
        return Some(Err(InvalidHost::TooLong));
    }
    if let Some(e) = label_error {
        return Some(Err(e));
    }
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or_default();
    Some(if is_numeric_label(last) {
        Err(InvalidHost::NumericTopLevel)
    } else {
        Ok(())
    })
}

/// What URL parsers would read as part of an IPv4 address: a number, or `0x` hex.
fn is_numeric_label(label: &[u8]) -> bool {
    label.iter().all(u8::is_ascii_digit)
        || (label.len() >= 2 && label[..2].eq_ignore_ascii_case(b"0x"))
            && label[2..].iter().all(u8::is_ascii_hexdigit)
}

fn validate_ascii_name(name: &[u8]) -> Result<(), InvalidHost> {
    if name.len() > MAX_NAME_LEN {
        return Err(InvalidHost::TooLong);
    }
    let mut last = &name[..0];
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(InvalidHost::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(InvalidHost::LabelTooLong);
        }
        last = label;
    }
    // A top-level label that is a number (or 0x-hex) is what URL parsers read as an IPv4 address.
    if is_numeric_label(last) {
        return Err(InvalidHost::NumericTopLevel);
    }
    Ok(())
}

/// True when `name` (normalized) is itself a public suffix in the ICANN section of the Public
/// Suffix List, or a single label (the list's default rule). Such a name can never be filed.
pub fn is_public_suffix(name: &DomainName) -> bool {
    is_public_suffix_bytes(name.as_bytes())
}

/// `is_public_suffix` on a normalized name's bytes.
pub fn is_public_suffix_bytes(bytes: &[u8]) -> bool {
    match psl::suffix(bytes) {
        // A private-section suffix (`github.io`) sits below its ICANN suffix (`io`): under ICANN
        // rules it is a registrable domain, so it may be filed.
        Some(s) if s.typ() == Some(psl::Type::Private) => false,
        Some(s) => s.as_bytes().len() == bytes.len(),
        None => true,
    }
}

/// Where the registered domain (主域名) of `name` starts in `name.as_bytes()`: the shortest of
/// `self_and_parents` that is not a public suffix (ICANN section, as `is_public_suffix`), the
/// name a filing is made on. None when `name` is itself a public suffix (it has none).
///
/// `www.example.com.cn` -> `example.com.cn`; `a.foo.github.io` -> `github.io` (a private-section
/// suffix is registrable under ICANN rules).
pub fn registered_domain_start(name: &DomainName) -> Option<usize> {
    let bytes = name.as_bytes();
    match psl::suffix(bytes) {
        // One lookup when the longest suffix is an ICANN one: the label before it.
        Some(s) if s.typ() != Some(psl::Type::Private) => {
            let suffix = s.as_bytes().len();
            if suffix >= bytes.len() {
                return None;
            }
            let head = &bytes[..bytes.len() - suffix - 1];
            Some(
                head.iter()
                    .rposition(|&b| b == b'.')
                    .map_or(0, |dot| dot + 1),
            )
        }
        // A private-section suffix: walk down to the last name that is not a public suffix.
        _ => {
            let mut start = None;
            for candidate in name.candidate_starts() {
                if is_public_suffix_bytes(&bytes[candidate..]) {
                    break;
                }
                start = Some(candidate);
            }
            start
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_normalized_as_a_host_and_ip_literals_count_as_none() {
        let sni = |raw: &[u8]| parse_sni(raw).map(|n| n.map(|d| d.as_str().to_owned()));
        assert_eq!(sni(b"Filed-A.CN"), Ok(Some("filed-a.cn".into())));
        assert_eq!(sni(b"filed-a.cn."), Ok(Some("filed-a.cn".into())));
        assert_eq!(
            sni("例子.中国".as_bytes()),
            Ok(Some("xn--fsqu00a.xn--fiqs8s".into()))
        );
        assert_eq!(sni(b"127.0.0.1"), Ok(None));
        assert_eq!(sni(b"::1"), Err(InvalidHost::BadCharacter));
        assert_eq!(sni(b"filed-a.cn:443"), Err(InvalidHost::BadCharacter));
        assert_eq!(sni(b"[::1]"), Err(InvalidHost::BadCharacter));
        assert_eq!(sni(b"a@filed-a.cn"), Err(InvalidHost::BadCharacter));
        assert_eq!(sni(b""), Err(InvalidHost::Empty));
        assert_eq!(sni(b"a..cn"), Err(InvalidHost::EmptyLabel));
        // Whatever the SNI, it decides as the same name does in a Host header.
        for raw in [
            "Filed-A.CN",
            "filed-a.cn.",
            "例子.中国",
            "xn--fsqu00a.xn--fiqs8s",
            "x_y.cn",
        ] {
            let host = parse_authority(raw.as_bytes()).unwrap();
            assert_eq!(
                parse_sni(raw.as_bytes()).unwrap().map(Host::Domain),
                Some(host)
            );
        }
    }

    fn dom(s: &str) -> String {
        match parse_authority(s.as_bytes()) {
            Ok(Host::Domain(d)) => d.as_str().to_string(),
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn err(s: &[u8]) -> InvalidHost {
        match parse_authority(s) {
            Err(e) => e,
            Ok(h) => panic!("{:?} was accepted as {h:?}", String::from_utf8_lossy(s)),
        }
    }

    #[test]
    fn ascii_case_port_and_trailing_dot() {
        assert_eq!(dom("WWW.Example.COM"), "www.example.com");
        assert_eq!(dom("www.example.com."), "www.example.com");
        assert_eq!(dom("www.example.com:8080"), "www.example.com");
        assert_eq!(dom("www.example.com.:80"), "www.example.com");
        assert_eq!(dom("www.example.com:"), "www.example.com");
        assert_eq!(dom("my_site.example.com"), "my_site.example.com");
    }

    #[test]
    fn unicode_to_a_labels() {
        assert_eq!(dom("例子.中国"), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(dom("例子。中国"), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(dom("例子．中国．"), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(dom("XN--FSQU00A.xn--fiqs8s"), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(dom("ＥＸＡＭＰＬＥ.com"), "example.com");
        assert_eq!(dom("Bücher.de"), "xn--bcher-kva.de");
    }

    #[test]
    fn ip_literals() {
        assert_eq!(
            parse_authority(b"203.0.113.7:80").unwrap(),
            Host::Ip("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            parse_authority(b"[2001:DB8::1]:443").unwrap(),
            Host::Ip("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_authority(b"[::ffff:203.0.113.7]").unwrap(),
            Host::Ip("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            parse_registry_name("2001:db8::1").unwrap(),
            Host::Ip("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(err(b""), InvalidHost::Empty);
        assert_eq!(err(b"."), InvalidHost::EmptyLabel);
        assert_eq!(err(b"a..example.com"), InvalidHost::EmptyLabel);
        assert_eq!(err(b"example.com.."), InvalidHost::EmptyLabel);
        assert_eq!(err(b"user@example.com"), InvalidHost::UserInfo);
        assert_eq!(err(b"example.com:http"), InvalidHost::BadPort);
        assert_eq!(err(b"example.com:99999"), InvalidHost::BadPort);
        assert_eq!(err(b"example.com:80:80"), InvalidHost::BadPort);
        assert_eq!(err(b"exa mple.com"), InvalidHost::BadCharacter);
        assert_eq!(err(b"exa%2ample.com"), InvalidHost::Idna);
        assert_eq!(err(b"example.com\r\nx"), InvalidHost::BadCharacter);
        assert_eq!(err(b"[::1"), InvalidHost::BadIpLiteral);
        assert_eq!(err(b"[fe80::1%25eth0]"), InvalidHost::BadIpLiteral);
        assert_eq!(err(b"127.1"), InvalidHost::NumericTopLevel);
        assert_eq!(err(b"0177.0.0.1"), InvalidHost::NumericTopLevel);
        assert_eq!(err(b"1.2.0x7f"), InvalidHost::NumericTopLevel);
        assert_eq!(err(b"example.123"), InvalidHost::NumericTopLevel);
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(err(long_label.as_bytes()), InvalidHost::LabelTooLong);
        let long_name = format!("{}com", "a.".repeat(126));
        assert_eq!(long_name.len(), 255);
        assert_eq!(err(long_name.as_bytes()), InvalidHost::TooLong);
        assert_eq!(err(&[b'a'; 2000]), InvalidHost::TooLong);
        assert_eq!(err(b"ex\xffample.com"), InvalidHost::Idna);
    }

    #[test]
    fn exactly_253_bytes_is_allowed() {
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(name.len(), 253);
        assert_eq!(dom(&name), name);
        assert_eq!(err(format!("{name}x").as_bytes()), InvalidHost::TooLong);
    }

    #[test]
    fn parents_stop_before_the_last_label() {
        let Host::Domain(d) = parse_authority(b"a.b.example.com").unwrap() else {
            unreachable!()
        };
        let walk: Vec<_> = d.self_and_parents().collect();
        assert_eq!(walk, ["a.b.example.com", "b.example.com", "example.com"]);
    }

    /// `count` strings of 1 to `max_len` bytes drawn from `alphabet`.
    fn random_strings(
        rng: &mut crate::synthetic::Rng,
        alphabet: &[u8],
        count: usize,
        max_len: u64,
    ) -> Vec<Vec<u8>> {
        (0..count)
            .map(|_| {
                let len = 1 + rng.below(max_len);
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn registry_names_fast_path_agrees_with_the_general_path() {
        let mut rng = crate::synthetic::Rng::new(11);
        let alphabet = b"aZ0-_.x9n.-Q";
        let mut fast = Vec::new();
        let mut cases: Vec<Vec<u8>> = [
            &b"example.com"[..],
            b"EXAMPLE.Com",
            b"xn--fsqu00a.xn--fiqs8s",
            b"XN--FSQU00A.cn",
            b"a.xn--",
            b"1.2.3.4",
            b"example.123",
            b"example.0x1f",
            b"a..b",
            b".a",
            b"a.",
            b"my_site.example.com",
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect();
        cases.push(format!("{}.com", "a".repeat(63)).into_bytes());
        cases.push(format!("{}.com", "a".repeat(64)).into_bytes());
        cases.push(format!("{}com", "a.".repeat(125)).into_bytes());
        cases.push(format!("{}com", "a.".repeat(126)).into_bytes());
        cases.extend(random_strings(&mut rng, alphabet, 20_000, 12));
        for case in cases {
            let text = std::str::from_utf8(&case).unwrap();
            if plain_name_into(&case, &mut fast) {
                match parse_registry_name(text) {
                    Ok(Host::Domain(d)) => assert_eq!(d.as_bytes(), &fast[..], "{text}"),
                    other => panic!("{text}: fast path took it, general path gave {other:?}"),
                }
            }
            // Through the public entry point, fast path or not, the same as the general path.
            let mut out = Vec::new();
            let via_into = parse_registry_name_into(text, &mut out).map(|ip| match ip {
                Some(ip) => Host::Ip(ip),
                None => parse_registry_name(std::str::from_utf8(&out).unwrap()).unwrap(),
            });
            assert_eq!(via_into, parse_registry_name(text), "{text}");
        }
    }

    #[test]
    fn authority_fast_path_agrees_with_the_general_path() {
        let mut rng = crate::synthetic::Rng::new(12);
        let alphabet = b"aZ0-_.x9n.-Q:8[]@";
        let mut cases: Vec<Vec<u8>> = [
            &b"example.com"[..],
            b"EXAMPLE.Com:8080",
            b"example.com:",
            b"example.com:65535",
            b"example.com:65536",
            b"example.com:123456",
            b"example.com:8a",
            b"example.com::80",
            b"example.com.",
            b"example.com.:80",
            b"xn--fsqu00a.xn--fiqs8s",
            b"XN--FSQU00A.cn",
            b"a.xn--",
            b"1.2.3.4",
            b"1.2.3.4:80",
            b"example.123",
            b"example.0x1f",
            b"example.0X1F",
            b"example.0x",
            b"a..b",
            b".a",
            b":80",
            b"",
            b"my_site.example.com",
            b"user@example.com",
            b"[::1]:80",
            b"ex\xc3\xa4mple.com",
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect();
        for (label, labels) in [(63, 1), (64, 1), (1, 125), (1, 126), (63, 4)] {
            let name = vec!["a".repeat(label); labels].join(".");
            cases.push(format!("{name}.com").into_bytes());
            cases.push(format!("{name}.com:443").into_bytes());
        }
        cases.extend(random_strings(&mut rng, alphabet, 50_000, 14));
        let mut taken = 0;
        for case in cases {
            let shown = String::from_utf8_lossy(&case);
            let general = parse_authority_general(&case);
            if let Some(fast) = plain_authority(&case) {
                taken += 1;
                assert_eq!(general, Ok(Host::Domain(fast)), "{shown}");
            }
            assert_eq!(parse_authority(&case), general, "{shown}");
        }
        // The fast path is not vacuous: random plain names mostly take it.
        assert!(taken > 5_000, "the fast path took only {taken} cases");
    }

    #[test]
    fn public_suffixes() {
        let ps = |s: &str| match parse_registry_name(s).unwrap() {
            Host::Domain(d) => is_public_suffix(&d),
            Host::Ip(_) => unreachable!(),
        };
        assert!(ps("com"));
        assert!(ps("com.cn"));
        assert!(ps("中国"));
        assert!(ps("localhost"));
        assert!(!ps("example.com"));
        assert!(!ps("example.com.cn"));
        // Private-section suffixes are registrable under ICANN rules.
        assert!(!ps("github.io"));
    }

    #[test]
    fn registered_domains() {
        let rd = |s: &str| match parse_registry_name(s).unwrap() {
            Host::Domain(d) => registered_domain_start(&d).map(|i| d.as_str()[i..].to_owned()),
            Host::Ip(_) => unreachable!(),
        };
        assert_eq!(rd("example.com").as_deref(), Some("example.com"));
        assert_eq!(rd("www.example.com").as_deref(), Some("example.com"));
        assert_eq!(rd("a.b.c.example.com").as_deref(), Some("example.com"));
        assert_eq!(rd("www.example.com.cn").as_deref(), Some("example.com.cn"));
        assert_eq!(rd("x.例子.中国").as_deref(), Some("xn--fsqu00a.xn--fiqs8s"));
        assert_eq!(rd("a.foo.github.io").as_deref(), Some("github.io"));
        assert_eq!(rd("github.io").as_deref(), Some("github.io"));
        assert_eq!(
            rd("x.y.unknown-tld-zz").as_deref(),
            Some("y.unknown-tld-zz")
        );
        // A public suffix has none.
        assert_eq!(rd("com.cn"), None);
        assert_eq!(rd("localhost"), None);
    }
}
