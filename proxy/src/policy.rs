//! What crosses the gate, in one place for every path that forwards (the front end's own
//! forwarding, Pingora's proxy, and terminated TLS next): which request targets are accepted,
//! the Host the origin sees, which headers pass each way, which requests may be sent twice, and
//! the gate's own plain answers (400, 405, 431, 502, 504). `tests/e2e/transparency.rs` runs one
//! suite against both paths to hold them to it.

use std::borrow::Cow;

use icp_gate_registry::Host;

// ---------------------------------------------------------------------------------------------
// Request targets

/// The forms of request target the gate forwards (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`: turned into origin-form before the origin.
    Absolute,
    /// `*`, with `OPTIONS` only.
    Asterisk,
}

/// Why a request is refused before any decision (`icp_gate_bad_requests_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetRefusal {
    /// A target that is none of the forms above: `400`.
    BadTarget,
    /// `CONNECT`: the gate is not a forward proxy: `405`.
    Connect,
}

/// Checks a request's method and target. Absolute-form needs a scheme of letters, digits, `+`,
/// `-` or `.` starting with a letter, then `://` and a non-empty authority.
pub fn check_target(method: &[u8], target: &[u8]) -> Result<TargetForm, TargetRefusal> {
    if method == b"CONNECT" {
        return Err(TargetRefusal::Connect);
    }
    match target.first() {
        Some(b'/') => Ok(TargetForm::Origin),
        Some(b'*') if target.len() == 1 && method == b"OPTIONS" => Ok(TargetForm::Asterisk),
        Some(c) if c.is_ascii_alphabetic() => {
            let colon = target
                .iter()
                .position(|&b| b == b':')
                .ok_or(TargetRefusal::BadTarget)?;
            let scheme_ok = target[..colon]
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            let rest = &target[colon + 1..];
            match rest.strip_prefix(b"//") {
                Some(after) if scheme_ok && !after.is_empty() && after[0] != b'/' => {
                    Ok(TargetForm::Absolute)
                }
                _ => Err(TargetRefusal::BadTarget),
            }
        }
        _ => Err(TargetRefusal::BadTarget),
    }
}

/// The origin-form part of an absolute-form target (`http://a.cn/p?q` → `/p?q`; `/` when it has
/// no path, and `/?q` for `http://a.cn?q`), byte for byte.
pub fn origin_form(absolute: &[u8]) -> Cow<'_, [u8]> {
    let after = match absolute.windows(3).position(|w| w == b"://") {
        Some(i) => &absolute[i + 3..],
        None => return Cow::Borrowed(absolute),
    };
    match after
        .iter()
        .position(|&b| b == b'/' || b == b'?' || b == b'#')
    {
        Some(i) if after[i] == b'/' => Cow::Borrowed(&after[i..]),
        Some(i) if after[i] == b'?' => {
            let mut path = b"/".to_vec();
            path.extend_from_slice(&after[i..]);
            Cow::Owned(path)
        }
        _ => Cow::Borrowed(b"/"),
    }
}

// ---------------------------------------------------------------------------------------------
// The Host the origin sees

/// The Host the origin gets for a request decided on `host`, whose raw authority (Host header,
/// or an absolute-form target's authority) was `raw`: the decided name in canonical form
/// (lower-case A-labels, no trailing dot, an IPv4-mapped IPv6 address as its dotted quad) and
/// the port as sent. A raw authority already in that form is returned as it is.
pub fn canonical_authority<'a>(raw: &'a [u8], host: &Host) -> Cow<'a, [u8]> {
    let port = port_suffix(raw);
    let canonical = match host {
        Host::Domain(name) => Cow::Borrowed(name.as_bytes()),
        Host::Ip(ip) => Cow::Owned(
            Host::Ip(crate::destination::canonical_ip(*ip))
                .to_string()
                .into_bytes(),
        ),
    };
    let name_len = raw.len() - port.len();
    if raw[..name_len] == *canonical {
        return Cow::Borrowed(raw);
    }
    let mut out = canonical.into_owned();
    out.extend_from_slice(port);
    Cow::Owned(out)
}

/// `:port` at the end of an authority (after a bracketed IPv6 literal's `]`), or nothing.
fn port_suffix(raw: &[u8]) -> &[u8] {
    let from = match raw.iter().rposition(|&b| b == b']') {
        Some(close) => close + 1,
        None => 0,
    };
    match raw[from..].iter().position(|&b| b == b':') {
        Some(i) => &raw[from + i..],
        None => &[],
    }
}

// ---------------------------------------------------------------------------------------------
// Headers

/// The field names a message's `Connection` header fields nominate (all of them, however
/// many), as written; `close`, `keep-alive` and `upgrade` among them.
/// The first few are kept inline: a message names one or two (`keep-alive`, `close`,
/// `upgrade`), and forwarding a request allocates nothing for them.
#[derive(Default)]
pub struct ConnectionTokens<'a> {
    inline: [&'a [u8]; 4],
    len: usize,
    more: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    /// From the values of every `Connection` field of a message.
    pub fn from_values(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut tokens = ConnectionTokens::default();
        for value in values {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.is_empty() {
                    continue;
                }
                if tokens.len < tokens.inline.len() {
                    tokens.inline[tokens.len] = token;
                    tokens.len += 1;
                } else {
                    tokens.more.push(token);
                }
            }
        }
        tokens
    }

    pub fn names(&self, name: &[u8]) -> bool {
        self.inline[..self.len]
            .iter()
            .chain(&self.more)
            .any(|t| t.eq_ignore_ascii_case(name))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1, and `Proxy-Connection`, which browsers still send),
/// never forwarded either way.
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// Request fields the origin never gets from the client: the client's credentials for a proxy,
/// an HTTP/2 upgrade's settings, and the forwarding fields only the gate sets (it adds its own
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`).
const REQUEST_ONLY_DROPPED: [&[u8]; 8] = [
    b"proxy-authorization",
    b"http2-settings",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-real-ip",
    b"x-request-id",
];

fn listed(list: &[&[u8]], name: &[u8]) -> bool {
    list.iter().any(|d| name.eq_ignore_ascii_case(d))
}

/// Whether a request field the client sent goes to the origin as it is. `Host` always passes
/// here (its value is replaced by `canonical_authority`), even when `Connection` names it.
/// A websocket upgrade's `Upgrade` and `Connection` are set again by the forwarding path
/// (`WEBSOCKET_UPGRADE`).
pub fn request_field_passes(name: &[u8], connection: &ConnectionTokens<'_>) -> bool {
    if name.eq_ignore_ascii_case(b"host") {
        return true;
    }
    !(listed(&HOP_BY_HOP, name) || listed(&REQUEST_ONLY_DROPPED, name) || connection.names(name))
}

/// Response fields the client never gets from the origin as they are: the connection's own
/// (each path says itself whether it keeps the client's connection), `Upgrade` (no upgrade is
/// forwarded but a websocket's, whose `101` passes whole), and `Date` (each path writes the
/// gate's own: Pingora 0.9 always does, so the front end does too), and `Trailer` (trailer
/// fields are not forwarded on HTTP/1: Pingora 0.9 cannot write them, so the front end drops
/// them too). `Transfer-Encoding` passes: the front end relays the body in the framing the
/// origin chose.
const RESPONSE_DROPPED: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
    b"date",
    b"trailer",
];

/// Whether a response field from the origin goes to the client as it is: not the
/// connection's own fields, nor the ones `Connection` names.
pub fn response_field_passes(name: &[u8], connection: &ConnectionTokens<'_>) -> bool {
    !(listed(&RESPONSE_DROPPED, name) || connection.names(name))
}

/// Whether a request asks for a websocket upgrade (the only upgrade forwarded): HTTP/1.1,
/// `Upgrade: websocket` and `Connection` naming `upgrade`.
pub fn is_websocket_upgrade(
    http11: bool,
    upgrade_values: &[&[u8]],
    connection: &ConnectionTokens<'_>,
) -> bool {
    http11
        && connection.names(b"upgrade")
        && upgrade_values.len() == 1
        && upgrade_values[0]
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket")
}

// ---------------------------------------------------------------------------------------------
// Retries

/// Whether a request may be sent again after its origin connection failed (RFC 9110 §9.2.2):
/// an idempotent method, or nothing of it reached the origin.
pub fn may_resend(method: &[u8], nothing_written: bool) -> bool {
    nothing_written
        || matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        )
}

// ---------------------------------------------------------------------------------------------
// The gate's own plain answers

/// An answer the gate writes itself that is not a block page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlainAnswer {
    /// 421: an allowed Host the connection's certificate does not cover.
    Misdirected,
    BadTarget,
    Connect,
    HeadTooLarge,
    BadGateway,
    GatewayTimeout,
}

impl PlainAnswer {
    pub fn status(self) -> u16 {
        match self {
            PlainAnswer::Misdirected => 421,
            PlainAnswer::BadTarget => 400,
            PlainAnswer::Connect => 405,
            PlainAnswer::HeadTooLarge => 431,
            PlainAnswer::BadGateway => 502,
            PlainAnswer::GatewayTimeout => 504,
        }
    }

    pub fn reason_phrase(self) -> &'static str {
        match self {
            PlainAnswer::Misdirected => "Misdirected Request",
            PlainAnswer::BadTarget => "Bad Request",
            PlainAnswer::Connect => "Method Not Allowed",
            PlainAnswer::HeadTooLarge => "Request Header Fields Too Large",
            PlainAnswer::BadGateway => "Bad Gateway",
            PlainAnswer::GatewayTimeout => "Gateway Timeout",
        }
    }

    pub fn body(self) -> &'static str {
        match self {
            PlainAnswer::BadTarget => {
                "400 Bad Request: the request target is not a path, an absolute URI, or * (OPTIONS)\n"
            }
            PlainAnswer::Connect => "405 Method Not Allowed: CONNECT is not served here\n",
            PlainAnswer::Misdirected => {
                "421 Misdirected Request: this connection's certificate does not cover this host; retry on a new connection\n"
            }
            PlainAnswer::HeadTooLarge => "431 Request Header Fields Too Large\n",
            PlainAnswer::BadGateway => "502 Bad Gateway: the origin server could not be reached\n",
            PlainAnswer::GatewayTimeout => {
                "504 Gateway Timeout: the origin server did not answer in time\n"
            }
        }
    }

    /// The fields of the answer, in order, after the status line and before `Content-Length`,
    /// `X-Request-Id`, `Date` and `Connection` (which the writers add).
    pub fn fields(self) -> &'static [(&'static str, &'static str)] {
        match self {
            PlainAnswer::Connect => &[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Cache-Control", "no-store"),
                (
                    "Allow",
                    "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE",
                ),
            ],
            _ => &[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Cache-Control", "no-store"),
            ],
        }
    }

    /// The whole HTTP/1.1 answer.
    pub fn write_h1(
        self,
        out: &mut Vec<u8>,
        request_id: Option<&str>,
        keep_alive: bool,
        head_only: bool,
    ) {
        use std::io::Write as _;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            self.status(),
            self.reason_phrase()
        );
        for (name, value) in self.fields() {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n", self.body().len());
        if let Some(id) = request_id {
            let _ = write!(out, "X-Request-Id: {id}\r\n");
        }
        out.extend_from_slice(b"Date: ");
        crate::clock::push_http_date(out);
        out.extend_from_slice(if keep_alive {
            b"\r\nConnection: keep-alive\r\n\r\n"
        } else {
            b"\r\nConnection: close\r\n\r\n"
        });
        if !head_only {
            out.extend_from_slice(self.body().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icp_gate_registry::parse_authority;

    #[test]
    fn targets() {
        use TargetForm::*;
        assert_eq!(check_target(b"GET", b"/"), Ok(Origin));
        assert_eq!(check_target(b"GET", b"/a/../b?x"), Ok(Origin));
        assert_eq!(check_target(b"GET", b"http://a.cn/p"), Ok(Absolute));
        assert_eq!(check_target(b"GET", b"HTTPS://a.cn"), Ok(Absolute));
        assert_eq!(check_target(b"OPTIONS", b"*"), Ok(Asterisk));
        for bad in [
            &b"*"[..],
            b"@nope.cn/",
            b"nope.cn",
            b"a.cn:80",
            b"http:/x",
            b"http:///x",
            b"",
        ] {
            assert_eq!(
                check_target(b"GET", bad),
                Err(TargetRefusal::BadTarget),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            check_target(b"CONNECT", b"a.cn:443"),
            Err(TargetRefusal::Connect)
        );
        assert_eq!(check_target(b"CONNECT", b"/"), Err(TargetRefusal::Connect));
    }

    #[test]
    fn absolute_targets_become_origin_form_byte_for_byte() {
        assert_eq!(&*origin_form(b"http://a.cn/p%2e?q=1#f"), b"/p%2e?q=1#f");
        assert_eq!(&*origin_form(b"http://a.cn"), b"/");
        assert_eq!(&*origin_form(b"http://a.cn?q"), b"/?q");
        assert_eq!(&*origin_form(b"http://[::1]:80/x"), b"/x");
    }

    #[test]
    fn the_origin_sees_the_canonical_host_with_the_port_as_sent() {
        let canon = |raw: &str| {
            let host = parse_authority(raw.as_bytes()).unwrap();
            String::from_utf8(canonical_authority(raw.as_bytes(), &host).into_owned()).unwrap()
        };
        assert_eq!(canon("filed-a.cn"), "filed-a.cn");
        assert_eq!(canon("filed-a.cn:8080"), "filed-a.cn:8080");
        assert_eq!(canon("FILED-A.CN"), "filed-a.cn");
        assert_eq!(canon("filed-a.cn.:80"), "filed-a.cn:80");
        assert_eq!(canon("filed-a。cn"), "filed-a.cn");
        assert_eq!(canon("例子.中国"), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(canon("[::ffff:203.0.113.7]"), "203.0.113.7");
        assert_eq!(canon("[::ffff:203.0.113.7]:81"), "203.0.113.7:81");
        assert_eq!(canon("[2001:DB8::7]:443"), "[2001:db8::7]:443");
        assert_eq!(canon("203.0.113.7:"), "203.0.113.7:");
        // Already canonical: the very bytes.
        let raw = b"filed-a.cn:80";
        let host = parse_authority(raw).unwrap();
        assert!(matches!(canonical_authority(raw, &host), Cow::Borrowed(_)));
    }

    #[test]
    fn header_policy() {
        let conn =
            ConnectionTokens::from_values([&b"keep-alive, X-A"[..], b"x-b,  x-c ,,", b"host"]);
        for dropped in [
            &b"Connection"[..],
            b"keep-alive",
            b"Proxy-Connection",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"Upgrade",
            b"Proxy-Authorization",
            b"HTTP2-Settings",
            b"Forwarded",
            b"X-Forwarded-For",
            b"X-Forwarded-Host",
            b"X-Forwarded-Proto",
            b"X-Real-IP",
            b"X-Request-Id",
            b"x-a",
            b"X-B",
            b"x-c",
        ] {
            assert!(!request_field_passes(dropped, &conn), "{dropped:?}");
        }
        for kept in [&b"Host"[..], b"Accept", b"Cookie", b"Authorization", b"X-D"] {
            assert!(request_field_passes(kept, &conn), "{kept:?}");
        }
        // However many are named.
        let many: Vec<String> = (0..50).map(|i| format!("x-h{i}")).collect();
        let joined = many.join(",");
        let conn = ConnectionTokens::from_values([joined.as_bytes()]);
        assert!(many
            .iter()
            .all(|n| !response_field_passes(n.as_bytes(), &conn)));
        assert!(response_field_passes(b"Proxy-Authenticate", &conn));
        assert!(response_field_passes(b"Transfer-Encoding", &conn));
        assert!(!response_field_passes(b"upgrade", &conn));
        assert!(!response_field_passes(b"Keep-Alive", &conn));
    }

    #[test]
    fn only_idempotent_requests_are_sent_twice() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(may_resend(m.as_bytes(), false));
        }
        for m in ["POST", "PATCH", "LOCK"] {
            assert!(!may_resend(m.as_bytes(), false));
            assert!(may_resend(m.as_bytes(), true));
        }
    }

    #[test]
    fn plain_answers_are_framed() {
        let mut out = Vec::new();
        PlainAnswer::BadGateway.write_h1(&mut out, Some("abc"), false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(text.contains("X-Request-Id: abc\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.ends_with("Connection: close"));
    }
}
