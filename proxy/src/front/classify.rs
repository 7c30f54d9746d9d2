//! Reading a request head and sorting it: simple enough for the front end to answer or forward
//! itself, a request it refuses (an unusable host, a target it does not serve), or one it leaves
//! to Pingora's proxy with the bytes read so far.

use icp_gate_registry::{Host, InvalidHost};
use pingora::http::authority::{raw_target_authority, RawTargetAuthority};

use super::MAX_HEADERS;
use crate::block_page::wants_json;
use crate::gate::resolve_host_into;
use crate::policy::{check_target, TargetRefusal};

/// What one complete request head that the front end may answer says.
/// (Its host is in `Conn::host`.)
pub(super) struct SimpleRequest {
    pub(super) head_len: usize,
    pub(super) method: &'static str,
    /// HEAD: the answer has the body's length but no body.
    pub(super) head_only: bool,
    pub(super) json: bool,
    pub(super) keep_alive: bool,
    pub(super) http11: bool,
    /// Where the target's path (up to any `?`) is in the head, for the access log.
    pub(super) path: std::ops::Range<usize>,
}

/// A request whose host cannot be used, as much of it as the answer and the log need.
pub(super) struct InvalidRequest {
    pub(super) invalid: InvalidHost,
    /// The raw host or target authority, lossy and capped, for the page and the log.
    pub(super) shown: String,
    pub(super) method: &'static str,
    pub(super) head_only: bool,
    pub(super) json: bool,
    pub(super) http11: bool,
}

// Both live on the stack for one request; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// More bytes are needed.
    Partial,
    Simple(SimpleRequest),
    /// A request without a usable host: `400 invalid_host`, and the connection ends.
    InvalidHost(InvalidRequest),
    /// A target or method the gate does not serve; whether it was a HEAD.
    Refused(TargetRefusal, bool),
    /// A complete head that the front end leaves to Pingora.
    Complex,
}

/// Parses one request head and sorts it: simple enough to answer here, an unusable host (also
/// answered here), or Pingora's.
pub(super) fn parse(buf: &[u8], host_out: &mut Host) -> Parsed {
    // Left uninitialised: filling 96 empty headers for every request cost more than parsing.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        // Not parseable here (too many headers, or a target Pingora repairs, or garbage):
        // Pingora's once the head is all there, so the size and time limits cover it too.
        Err(_) => {
            return if head_complete(buf) {
                Parsed::Complex
            } else {
                Parsed::Partial
            }
        }
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Complex;
    };
    // A target the gate does not forward is refused before anything else is read into it.
    if let Err(refusal) = check_target(method.as_bytes(), path.as_bytes()) {
        return Parsed::Refused(refusal, method == "HEAD");
    }
    let known = known_method(method);
    // Framing the front end leaves to Pingora; the host is still checked first, because an
    // unusable host is refused whatever else the request carries.
    let mut complex = known.is_none_or(|m| m == "CONNECT");
    let mut host = None;
    let mut duplicate_host = false;
    let mut accept = None;
    let mut content_length = false;
    let mut close = false;
    let mut keep_alive = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            duplicate_host |= host.is_some();
            host.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Only an explicit empty body; any other length (or a second one) is framing
            // Pingora checks.
            complex |= content_length || h.value != b"0";
            content_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"http2-settings")
        {
            complex = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    complex = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"accept") && accept.is_none() {
            accept = Some(h.value);
        }
    }
    // Absolute-form targets name the host too (RFC 9112 §3.2.2); Pingora forwards them (it
    // rewrites the target), after the same host checks as here.
    let target = if path.starts_with('/') {
        None
    } else {
        complex = true;
        match raw_target_authority(path.as_bytes()) {
            RawTargetAuthority::Absolute { authority, .. } => Some(authority),
            _ => None,
        }
    };
    let close = match version {
        1 => close,
        _ => close || !keep_alive,
    };
    match resolve_host_into(host, duplicate_host, target, host_out) {
        Ok(()) => {}
        Err(invalid) => {
            let shown = target.or(host).unwrap_or_default();
            let shown = &shown[..shown.len().min(256)];
            return Parsed::InvalidHost(InvalidRequest {
                invalid,
                shown: String::from_utf8_lossy(shown).into_owned(),
                method: known.unwrap_or("OTHER"),
                head_only: method == "HEAD",
                json: wants_json(accept),
                http11: version == 1,
            });
        }
    };
    if complex {
        return Parsed::Complex;
    }
    let method = known.expect("an unknown method is complex");
    // httparse's `path` borrows from `buf`: its place there, without a search.
    let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_len = memchr::memchr(b'?', path.as_bytes()).unwrap_or(path.len());
    Parsed::Simple(SimpleRequest {
        head_len,
        method,
        head_only: method == "HEAD",
        json: wants_json(accept),
        keep_alive: !close,
        http11: version == 1,
        path: path_at..path_at + path_len,
    })
}

pub(super) fn known_method(m: &str) -> Option<&'static str> {
    Some(match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => return None,
    })
}

/// Whether `buf` holds the end of a head (lenient about bare LF, as the parsers are).
pub(super) fn head_complete(buf: &[u8]) -> bool {
    memchr::memmem::find(buf, b"\r\n\r\n").is_some() || memchr::memmem::find(buf, b"\n\n").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_alone(raw: &[u8]) -> (Parsed, Host) {
        let mut host = Host::Ip(std::net::Ipv4Addr::UNSPECIFIED.into());
        let parsed = parse(raw, &mut host);
        (parsed, host)
    }

    fn simple(raw: &[u8]) -> (SimpleRequest, Host) {
        match parse_alone(raw) {
            (Parsed::Simple(r), host) => (r, host),
            (Parsed::Partial, _) => panic!("partial: {}", raw.escape_ascii()),
            (Parsed::Complex, _) => panic!("complex: {}", raw.escape_ascii()),
            (Parsed::InvalidHost(_), _) => panic!("invalid host: {}", raw.escape_ascii()),
            (Parsed::Refused(..), _) => panic!("refused: {}", raw.escape_ascii()),
        }
    }

    fn is_complex(raw: &[u8]) -> bool {
        matches!(parse_alone(raw).0, Parsed::Complex)
    }

    #[test]
    fn plain_requests_are_simple() {
        let (r, host) =
            simple(b"GET /x HTTP/1.1\r\nHost: WWW.Example.COM:80\r\nAccept: */*\r\n\r\nGET");
        assert_eq!(host.to_string(), "www.example.com");
        assert_eq!(r.head_len, 58);
        assert!(r.keep_alive && !r.head_only && !r.json);
        let (r, _) = simple(b"HEAD / HTTP/1.1\r\nhost: a.cn\r\nconnection: Close\r\n\r\n");
        assert!(r.head_only && !r.keep_alive);
        let (r, _) = simple(b"GET / HTTP/1.0\r\nHost: a.cn\r\n\r\n");
        assert!(!r.keep_alive, "HTTP/1.0 closes unless asked");
        let (r, _) = simple(b"GET / HTTP/1.0\r\nHost: a.cn\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = simple(b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.method, "POST");
        let (r, _) = simple(b"GET / HTTP/1.1\r\nHost: a.cn\r\nAccept: application/json\r\n\r\n");
        assert!(r.json);
    }

    #[test]
    fn anything_with_framing_doubt_goes_to_pingora() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: a.cn\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a.cn\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nExpect: 100-continue\r\n\r\n",
            b"GET http://a.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"BREW / HTTP/1.1\r\nHost: a.cn\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nConnection: keep-alive, te\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.cn\x00b.cn\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a.cn\r\n\r\n",
        ] {
            assert!(is_complex(raw), "{}", raw.escape_ascii());
        }
    }

    #[test]
    fn targets_the_gate_does_not_serve_are_refused_before_the_host_is_read() {
        for (raw, refusal) in [
            (
                &b"CONNECT a.cn:443 HTTP/1.1\r\nHost: a.cn:443\r\n\r\n"[..],
                TargetRefusal::Connect,
            ),
            (
                b"GET @nope.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"GET nope.cn HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"GET * HTTP/1.1\r\nHost: a.cn\r\n\r\n",
                TargetRefusal::BadTarget,
            ),
            (
                b"HEAD nope.cn HTTP/1.1\r\nHost: \r\n\r\n",
                TargetRefusal::BadTarget,
            ),
        ] {
            match parse_alone(raw).0 {
                Parsed::Refused(r, head_only) => {
                    assert_eq!(r, refusal, "{}", raw.escape_ascii());
                    assert_eq!(head_only, raw.starts_with(b"HEAD"));
                }
                _ => panic!("not refused: {}", raw.escape_ascii()),
            }
        }
    }

    #[test]
    fn unusable_hosts_are_refused_here_whatever_else_the_request_carries() {
        for (raw, invalid) in [
            (&b"GET / HTTP/1.1\r\nHost: a.cn\r\nHost: b.cn\r\n\r\n"[..], InvalidHost::Duplicate),
            (b"GET / HTTP/1.1\r\n\r\n", InvalidHost::Empty),
            (b"GET / HTTP/1.0\r\n\r\n", InvalidHost::Empty),
            (b"GET / HTTP/1.1\r\nHost: a..cn\r\n\r\n", InvalidHost::EmptyLabel),
            (b"GET / HTTP/1.1\r\nHost: user@a.cn\r\n\r\n", InvalidHost::UserInfo),
            (b"GET http://b.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n", InvalidHost::Mismatch),
            (b"GET http://u@a.cn/ HTTP/1.1\r\nHost: a.cn\r\n\r\n", InvalidHost::UserInfo),
            (
                b"POST / HTTP/1.1\r\nHost: a.cn\r\nHost: a.cn\r\nTransfer-Encoding: chunked\r\n\r\n",
                InvalidHost::Duplicate,
            ),
        ] {
            match parse_alone(raw).0 {
                Parsed::InvalidHost(r) => assert_eq!(r.invalid, invalid, "{}", raw.escape_ascii()),
                _ => panic!("not refused: {}", raw.escape_ascii()),
            }
        }
        // A matching absolute-form target is fine, and Pingora's to forward.
        assert!(is_complex(
            b"GET http://a.cn/x HTTP/1.1\r\nHost: a.cn\r\n\r\n"
        ));
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: a.cn\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header: x\r\n",
            b"\x00\x01\x02",
        ] {
            assert!(
                matches!(parse_alone(raw).0, Parsed::Partial),
                "{}",
                raw.escape_ascii()
            );
        }
    }
}
