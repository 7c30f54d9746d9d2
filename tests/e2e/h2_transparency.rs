//! One suite for both forwarding paths of HTTP/2 streams on terminated TLS connections, as
//! `transparency.rs` is for HTTP/1: each case runs against
//!
//! - `front_end`: the gate as deployed (a GET or HEAD without a body is forwarded by the front
//!   end's own HTTP/2 path, `front::h2`; anything else by Pingora's proxy), and
//! - `pingora`: the gate with `ICP_GATE_FORWARD_PATH=pingora`, where Pingora's proxy forwards
//!   every stream,
//!
//! and a `same_on_both_paths` test per case compares what the origin received and what the
//! client (curl, over HTTP/2) got, with request ids, dates and the gate's port normalized.

use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::harness::*;
use crate::tls_harness::Pki;

both_paths_suite! {
    get_forwarded_with_the_gates_forwarding_fields,
    request_fields_repeated_kept_in_order_te_removed,
    cookie_field_passes_unchanged,
    two_streams_share_one_origin_connection,
    response_hop_by_hop_fields_removed,
    response_fields_repeated_kept_in_order,
    response_body_chunked_decoded,
    response_body_until_close,
    response_body_large,
    response_to_head_has_no_body,
    response_204,
    early_hints_then_final_answer,
    origin_down_is_502,
    post_with_body_forwarded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Path {
    FrontEnd,
    Pingora,
}

struct Case {
    /// The origin's script; None: nothing listens at the upstream address.
    origin: Option<Script>,
    /// curl's requests: for each, the path and extra arguments (one HTTP/2 connection).
    requests: Vec<(&'static str, Vec<&'static str>)>,
    check: Box<dyn Fn(&Seen)>,
}

/// One answer as curl saw it.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    version: String,
    status: u16,
    /// Field names lower case, in order.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug)]
struct Seen {
    port: u16,
    answers: Vec<Answer>,
    origin: Vec<RawRequest>,
    origin_connections: usize,
    /// The gate's access lines (on standard error).
    access_lines: Vec<String>,
}

fn ok(body: &str) -> Script {
    let reply = format!(
        "HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Arc::new(move |_, _| Reply::Send(reply.clone().into_bytes()))
}

fn replying(bytes: &'static [u8]) -> Script {
    Arc::new(move |_, _| Reply::Send(bytes.to_vec()))
}

mod cases {
    use super::*;

    pub fn get_forwarded_with_the_gates_forwarding_fields() -> Case {
        Case {
            origin: Some(ok("hello")),
            requests: vec![(
                "/a/b?x=1&y=%20",
                vec![
                    "-H",
                    "X-Forwarded-For: 6.6.6.6",
                    "-H",
                    "Forwarded: for=6.6.6.6",
                    "-H",
                    "X-Forwarded-Proto: http",
                    "-H",
                    "Proxy-Authorization: Basic eDp5",
                    "-H",
                    "X-Custom: one",
                ],
            )],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!((a.version.as_str(), a.status), ("2", 200));
                assert_eq!(a.body, b"hello");
                assert_eq!(seen.origin.len(), 1);
                let r = &seen.origin[0];
                assert_eq!(r.line, b"GET /a/b?x=1&y=%20 HTTP/1.1");
                let host = format!("www.example.com:{}", seen.port);
                assert_eq!(r.header("host").as_deref(), Some(host.as_str()));
                assert_eq!(r.values("x-forwarded-for"), [b"127.0.0.1".to_vec()]);
                assert_eq!(r.values("x-forwarded-proto"), [b"https".to_vec()]);
                assert!(r.values("forwarded").is_empty());
                assert!(r.values("proxy-authorization").is_empty());
                assert_eq!(r.header("x-custom").as_deref(), Some("one"));
                assert_eq!(r.values("x-request-id").len(), 1);
            }),
        }
    }

    pub fn request_fields_repeated_kept_in_order_te_removed() -> Case {
        Case {
            origin: Some(ok("fine")),
            requests: vec![(
                "/",
                vec![
                    "-H",
                    "X-Multi: 1",
                    "-H",
                    "X-Other: o",
                    "-H",
                    "X-Multi: 2",
                    "-H",
                    "TE: trailers",
                ],
            )],
            check: Box::new(|seen| {
                assert_eq!(seen.answers[0].status, 200);
                let r = &seen.origin[0];
                assert_eq!(r.values("x-multi"), [b"1".to_vec(), b"2".to_vec()]);
                assert_eq!(r.header("x-other").as_deref(), Some("o"));
                assert!(r.values("te").is_empty(), "{:?}", r.headers);
                // One Host, the decided one.
                assert_eq!(r.values("host").len(), 1);
            }),
        }
    }

    /// curl sends its cookies as one field; they reach the origin as it sent them. (Crumbs sent
    /// as separate fields, which curl does not do: `terminate::http2_cookie_crumbs_...`.)
    pub fn cookie_field_passes_unchanged() -> Case {
        Case {
            origin: Some(ok("fine")),
            requests: vec![("/", vec!["-H", "Cookie: a=1; b=2; c=3"])],
            check: Box::new(|seen| {
                assert_eq!(seen.answers[0].status, 200);
                let r = &seen.origin[0];
                assert_eq!(
                    r.values("cookie"),
                    [b"a=1; b=2; c=3".to_vec()],
                    "{:?}",
                    r.headers
                );
            }),
        }
    }

    pub fn two_streams_share_one_origin_connection() -> Case {
        Case {
            origin: Some(ok("hi")),
            requests: vec![("/one", vec![]), ("/two", vec![])],
            check: Box::new(|seen| {
                assert_eq!(seen.answers.len(), 2);
                for a in &seen.answers {
                    assert_eq!((a.status, a.body.as_slice()), (200, &b"hi"[..]));
                }
                let targets: Vec<_> = seen.origin.iter().map(|r| r.target()).collect();
                assert_eq!(targets, [b"/one".to_vec(), b"/two".to_vec()]);
                assert_eq!(
                    seen.origin_connections, 1,
                    "the origin connection is kept alive"
                );
            }),
        }
    }

    pub fn response_hop_by_hop_fields_removed() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok",
            )),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 200);
                assert_eq!(a.field("x-kept"), Some("yes"));
                for gone in ["x-secret", "keep-alive", "connection", "proxy-connection"] {
                    assert_eq!(a.field(gone), None, "{gone}: {:?}", a.fields);
                }
                assert_eq!(a.body, b"ok");
            }),
        }
    }

    pub fn response_fields_repeated_kept_in_order() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nSet-Cookie: a=1\r\nX-Between: x\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            )),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.all("set-cookie"), ["a=1", "b=2"]);
                assert_eq!(a.field("x-between"), Some("x"));
                assert!(a.body.is_empty());
            }),
        }
    }

    pub fn response_body_chunked_decoded() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            )),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 200);
                assert_eq!(a.body, b"hello world");
                assert_eq!(a.field("transfer-encoding"), None);
            }),
        }
    }

    pub fn response_body_until_close() -> Case {
        Case {
            origin: Some(Arc::new(|_, _| {
                Reply::SendClose(
                    b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\nuntil the origin closes"
                        .to_vec(),
                )
            })),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 200);
                assert_eq!(a.body, b"until the origin closes");
            }),
        }
    }

    pub fn response_body_large() -> Case {
        let body: String = (0..(1 << 20))
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        Case {
            origin: Some(ok(&body)),
            requests: vec![("/big", vec![])],
            check: Box::new(move |seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 200);
                assert_eq!(a.body.len(), 1 << 20);
                assert!(a.body == body.as_bytes(), "the body differs");
            }),
        }
    }

    pub fn response_to_head_has_no_body() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nContent-Length: 11\r\n\r\n",
            )),
            requests: vec![("/", vec!["-I"])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 200);
                assert_eq!(a.field("content-length"), Some("11"));
                assert_eq!(seen.origin[0].method(), "HEAD");
            }),
        }
    }

    pub fn response_204() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 204 No Content\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\n\r\n",
            )),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 204);
                assert!(a.body.is_empty());
            }),
        }
    }

    pub fn early_hints_then_final_answer() -> Case {
        Case {
            origin: Some(replying(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nDate: Mon, 30 Nov 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
            )),
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!((a.status, a.body.as_slice()), (200, &b"ok"[..]));
            }),
        }
    }

    pub fn origin_down_is_502() -> Case {
        Case {
            origin: None,
            requests: vec![("/", vec![])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!(a.status, 502);
                assert!(a.field("x-request-id").is_some(), "{:?}", a.fields);
            }),
        }
    }

    pub fn post_with_body_forwarded() -> Case {
        Case {
            origin: Some(ok("posted")),
            requests: vec![("/form", vec!["--data-binary", "a=1&b=2"])],
            check: Box::new(|seen| {
                let a = &seen.answers[0];
                assert_eq!((a.status, a.body.as_slice()), (200, &b"posted"[..]));
                let r = &seen.origin[0];
                assert_eq!(r.method(), "POST");
                assert_eq!(r.body, b"a=1&b=2");
            }),
        }
    }
}

/// The test certificate's name: filed and connected in the standard registry.
const NAME: &str = "www.example.com";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new(&[NAME]))
}

fn observe(case: &Case, path: Path) -> Seen {
    let (origin, upstream) = scripted_upstream(case.origin.clone());
    let env = forward_path_env(path == Path::Pingora);
    let dir = tempfile::tempdir().unwrap();
    pki().write_pair(dir.path(), "site");
    let ca = pki().write_ca(dir.path());
    let gate = Gate::start_to(
        upstream,
        GateOptions {
            listener_extra: "protocol = \"tls\"\n".to_owned(),
            extra: format!("\n[tls]\ncertificates = \"{}\"\n", dir.path().display()),
            upstream_extra: "read_timeout_seconds = 2\n".to_owned(),
            env,
            ..GateOptions::default()
        },
    );
    let port = gate.addr.port();
    let resolve = format!("{NAME}:{port}:127.0.0.1");
    let mut curl = Command::new("curl");
    let mut files = Vec::new();
    for (i, (target, extra)) in case.requests.iter().enumerate() {
        if i > 0 {
            curl.arg("--next");
        }
        let head = dir.path().join(format!("head-{i}"));
        // With `-I` curl writes the head where the body would go: no body file then.
        let body = match extra.contains(&"-I") {
            true => dir.path().join(format!("no-body-{i}")),
            false => dir.path().join(format!("body-{i}")),
        };
        curl.args(["-sS", "--http2", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &resolve, "-D"])
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(extra)
            .arg(format!("https://{NAME}:{port}{target}"));
        files.push((head, body));
    }
    let out = curl.output().expect("curl runs");
    assert!(out.status.success(), "curl: {out:?}\n{}", gate.log());
    let answers = files
        .iter()
        .map(|(head, body)| {
            let body = match body
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("no-")
            {
                true => Vec::new(),
                false => std::fs::read(body).unwrap_or_default(),
            };
            parse_answer(&std::fs::read_to_string(head).unwrap(), body)
        })
        .collect();
    // Let the origin finish recording anything still in flight.
    std::thread::sleep(Duration::from_millis(100));
    let (origin, origin_connections) = match &origin {
        Some(o) => (o.received(), o.accepted()),
        None => (Vec::new(), 0),
    };
    let access_lines = gate
        .log()
        .lines()
        .filter(|l| l.contains("icp_gate::access"))
        .map(str::to_owned)
        .collect();
    Seen {
        port,
        answers,
        origin,
        origin_connections,
        access_lines,
    }
}

/// An answer from curl's `-D` output (the last head: interim ones come first) and body.
fn parse_answer(head: &str, body: Vec<u8>) -> Answer {
    let last = head
        .split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .last()
        .unwrap_or_default();
    let mut lines = last.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let version = words
        .next()
        .unwrap_or_default()
        .trim_start_matches("HTTP/")
        .to_owned();
    let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let fields = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        version,
        status,
        fields,
        body,
    }
}

fn seen(name: &'static str, case: fn() -> Case, path: Path) -> Arc<Seen> {
    static CACHE: OnceMap<(&'static str, Path), Seen> = OnceMap::new();
    made_once(&CACHE, (name, path), || observe(&case(), path))
}

fn check(name: &'static str, case: fn() -> Case, path: Path) {
    let seen = seen(name, case, path);
    for a in &seen.answers {
        assert_eq!(a.version, "2", "{name} on {path:?}: not HTTP/2: {a:?}");
    }
    // One access line per request, with the status the client got.
    let statuses: Vec<String> = seen
        .answers
        .iter()
        .map(|a| format!("status={}", a.status))
        .collect();
    assert_eq!(
        seen.access_lines.len(),
        statuses.len(),
        "{:?}",
        seen.access_lines
    );
    for (line, status) in seen.access_lines.iter().zip(&statuses) {
        assert!(line.contains(status.as_str()), "{line} has no {status}");
    }
    (case().check)(&seen);
}

/// A request the origin received: its line, fields and body.
type OriginRequest = (Vec<u8>, Vec<(String, String)>, Vec<u8>);

/// What both paths must agree on: the answers without `date` and `x-request-id` values, and
/// the origin's requests with the gate's port and request ids replaced. Fields are compared in
/// name order (a stable sort: the order of one name's values counts, as in HTTP; the order of
/// different names does not).
fn normalized(seen: &Seen) -> (Vec<Answer>, Vec<OriginRequest>, usize) {
    let by_name = |mut fields: Vec<(String, String)>| {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields
    };
    let answers = seen
        .answers
        .iter()
        .map(|a| Answer {
            fields: by_name(
                a.fields
                    .iter()
                    .filter(|(n, _)| n != "date")
                    .map(|(n, v)| match n.as_str() {
                        "x-request-id" => (n.clone(), "ID".to_owned()),
                        _ => (n.clone(), v.clone()),
                    })
                    .collect(),
            ),
            ..a.clone()
        })
        .collect();
    let port = seen.port.to_string();
    let origin = seen
        .origin
        .iter()
        .map(|r| {
            let fields: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|(n, v)| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    let v = String::from_utf8_lossy(v).replace(&port, "PORT");
                    match n.as_str() {
                        "x-request-id" => (n, "ID".to_owned()),
                        _ => (n, v),
                    }
                })
                .collect();
            (r.line.clone(), by_name(fields), r.body.clone())
        })
        .collect();
    (answers, origin, seen.origin_connections)
}

fn compare(name: &'static str, case: fn() -> Case) {
    let front = seen(name, case, Path::FrontEnd);
    let pingora = seen(name, case, Path::Pingora);
    assert_eq!(
        normalized(&front),
        normalized(&pingora),
        "{name}: the front end's HTTP/2 path (left) and Pingora's (right) differ"
    );
}
