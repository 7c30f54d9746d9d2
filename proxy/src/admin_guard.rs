//! Who may use the admin listener: the bearer token (`admin.token_file`), and the Host and
//! Origin checks against DNS rebinding and cross-site requests from a browser.
//!
//! - `/healthz` and `/readyz` are never refused: container runtimes, kubelets and load
//!   balancers probe them without a secret and with whatever Host they like, and they tell only
//!   whether the process is up and has a registry.
//! - The Host must be an IP literal, `localhost` or a name in `admin.allowed_hosts`: a page on
//!   `evil.example` whose name is re-pointed at 127.0.0.1 (DNS rebinding) sends
//!   `Host: evil.example`, and is refused before it reads anything.
//! - A request that is not GET or HEAD with an `Origin` must come from the listener's own origin
//!   or an allowed host: a page elsewhere cannot `POST /sync` through the operator's browser.
//! - The token: required for `POST /sync` (`require_token = "mutating"`), or for every endpoint
//!   but the probes (`"all"`). Compared as SHA-256 digests in constant time, so neither its
//!   bytes nor its length show in the time an answer takes.
//!
//! On a Unix socket only the token applies: a browser cannot reach one.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{header, StatusCode};
use icp_gate_config::{AdminSettings, RequireToken};
use icp_gate_registry::{parse_authority, Host};
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::{AdminRefusal, Metrics};

/// What an endpoint does, for the checks it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `/healthz`, `/readyz`: never refused.
    Probe,
    /// Reads (`/metrics`, `/registry`, `/top/blocked`, ...): the token with `require_token =
    /// "all"`.
    Read,
    /// Changes something (`POST /sync`): the token whenever one is set.
    Mutating,
}

/// A refused request: its status, the reason counted, and what the client is told.
#[derive(Debug)]
pub struct Refused {
    pub reason: AdminRefusal,
    pub message: String,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self.reason {
            AdminRefusal::TokenMissing | AdminRefusal::TokenWrong => StatusCode::UNAUTHORIZED,
            AdminRefusal::HostNotAllowed | AdminRefusal::OriginNotAllowed => StatusCode::FORBIDDEN,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3).
    pub fn challenge(&self) -> Option<&'static str> {
        match self.reason {
            AdminRefusal::TokenMissing => Some("Bearer realm=\"icp-gate admin\""),
            AdminRefusal::TokenWrong => {
                Some("Bearer realm=\"icp-gate admin\", error=\"invalid_token\"")
            }
            _ => None,
        }
    }
}

/// The token in service: the SHA-256 of the file's token, swapped whole on a reload.
pub struct AdminToken {
    file: PathBuf,
    digest: ArcSwap<[u8; 32]>,
}

impl AdminToken {
    /// Reads the token file (`icp_gate_config::admin::read_token`, as `-t` does).
    pub fn load(file: PathBuf) -> Result<Self, String> {
        let token = icp_gate_config::admin::read_token(&file)?;
        Ok(AdminToken {
            file,
            digest: ArcSwap::from_pointee(digest(token.as_bytes())),
        })
    }

    /// Reads the file again; on an error the token in service stays.
    pub fn reload(&self) -> Result<(), String> {
        let token = icp_gate_config::admin::read_token(&self.file)?;
        self.digest.store(Arc::new(digest(token.as_bytes())));
        Ok(())
    }

    fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.digest.load();
        bool::from(digest(presented).ct_eq(&expected[..]))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub struct AdminGuard {
    /// None: no `token_file`, nothing asks for a token.
    token: Option<Arc<AdminToken>>,
    require_all: bool,
    /// False on a Unix socket.
    check_host: bool,
    allowed_hosts: Vec<String>,
}

impl AdminGuard {
    pub fn new(settings: &AdminSettings, token: Option<Arc<AdminToken>>) -> Self {
        AdminGuard {
            token,
            require_all: settings.require_token == RequireToken::All,
            check_host: settings.address.tcp().is_some(),
            allowed_hosts: settings.allowed_hosts.clone(),
        }
    }

    /// Lets a request through, or says why not.
    pub fn check(&self, req: &RequestHeader, access: Access) -> Result<(), Refused> {
        if access == Access::Probe {
            return Ok(());
        }
        if self.check_host {
            self.check_host(req)?;
            let method = &req.method;
            if method != http::Method::GET && method != http::Method::HEAD {
                self.check_origin(req)?;
            }
        }
        let needs_token = match access {
            Access::Mutating => true,
            Access::Read => self.require_all,
            Access::Probe => false,
        };
        match &self.token {
            Some(token) if needs_token => check_token(token, req),
            _ => Ok(()),
        }
    }

    /// A host (no port) the listener answers to: an IP literal, `localhost`, an allowed name.
    fn host_allowed(&self, host: &Host) -> bool {
        match host {
            Host::Ip(_) => true,
            Host::Domain(name) => {
                name.as_str() == "localhost"
                    || self.allowed_hosts.iter().any(|h| h == name.as_str())
            }
        }
    }

    fn check_host(&self, req: &RequestHeader) -> Result<(), Refused> {
        let mut values = req.headers.get_all(header::HOST).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            // No Host (HTTP/1.0): not a browser, which always sends one. Two: refused.
            return if req.headers.contains_key(header::HOST) {
                Err(refused(
                    AdminRefusal::HostNotAllowed,
                    "more than one Host field",
                ))
            } else {
                Ok(())
            };
        };
        match parse_authority(value.as_bytes()) {
            Ok(host) if self.host_allowed(&host) => Ok(()),
            _ => Err(refused(
                AdminRefusal::HostNotAllowed,
                &format!(
                    "Host `{}` is not an IP address, localhost, or a name in admin.allowed_hosts",
                    shown(value.as_bytes())
                ),
            )),
        }
    }

    /// An `Origin` (sent by browsers) must be this listener's own (its authority is the Host)
    /// or name an allowed host; none at all is a client that is not a browser.
    fn check_origin(&self, req: &RequestHeader) -> Result<(), Refused> {
        let Some(origin) = req.headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let authority = origin
            .as_bytes()
            .strip_prefix(b"http://")
            .or_else(|| origin.as_bytes().strip_prefix(b"https://"));
        let same = authority.is_some_and(|a| {
            req.headers
                .get(header::HOST)
                .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(a))
        });
        // Not `localhost` nor an IP literal: a page on another port of this machine is
        // another origin.
        let allowed = authority
            .and_then(|a| parse_authority(a).ok())
            .is_some_and(|h| match h {
                Host::Domain(name) => self.allowed_hosts.iter().any(|a| a == name.as_str()),
                Host::Ip(_) => false,
            });
        if same || allowed {
            Ok(())
        } else {
            Err(refused(
                AdminRefusal::OriginNotAllowed,
                &format!(
                    "Origin `{}` is neither this listener nor a name in admin.allowed_hosts",
                    shown(origin.as_bytes())
                ),
            ))
        }
    }
}

fn check_token(token: &AdminToken, req: &RequestHeader) -> Result<(), Refused> {
    let mut values = req.headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(refused(
            AdminRefusal::TokenMissing,
            "this endpoint needs the admin token: send Authorization: Bearer <token>",
        ));
    };
    let wrong = || refused(AdminRefusal::TokenWrong, "the admin token is not valid");
    if values.next().is_some() {
        return Err(wrong());
    }
    let bytes = value.as_bytes();
    let presented = match bytes.iter().position(|&b| b == b' ') {
        Some(space) if bytes[..space].eq_ignore_ascii_case(b"bearer") => {
            bytes[space..].trim_ascii()
        }
        _ => return Err(wrong()),
    };
    if token.matches(presented) {
        Ok(())
    } else {
        Err(wrong())
    }
}

fn refused(reason: AdminRefusal, message: &str) -> Refused {
    Refused {
        reason,
        message: message.to_owned(),
    }
}

/// A client's header value as the answer and the log show it: lossy, printable, at most 100
/// characters.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(100)])
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Reads the token file again on SIGHUP (its own signal listener, as the registry sync and the
/// certificate watcher have theirs).
pub struct TokenWatcher {
    pub token: Arc<AdminToken>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for TokenWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot handle SIGHUP for the admin token: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = hangup.recv() => {
                    let token = self.token.clone();
                    let result = tokio::task::spawn_blocking(move || token.reload()).await;
                    match result {
                        Ok(Ok(())) => {
                            self.metrics.admin_token_reload(true);
                            tracing::info!("SIGHUP: admin token read again");
                        }
                        Ok(Err(e)) => {
                            self.metrics.admin_token_reload(false);
                            tracing::error!(
                                key = "admin.token_file",
                                "SIGHUP: the admin token file is not usable, the token in service stays: {e}"
                            );
                        }
                        Err(e) => tracing::error!("admin token reload failed: {e}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icp_gate_config::AdminAddress;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn guard(require: RequireToken, tcp: bool, dir: &std::path::Path) -> AdminGuard {
        let file = dir.join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let settings = AdminSettings {
            address: if tcp {
                AdminAddress::Tcp("127.0.0.1:9090".parse().unwrap())
            } else {
                AdminAddress::Unix(dir.join("admin.sock"))
            },
            socket_mode: 0o660,
            token_file: Some(file.clone()),
            require_token: require,
            allowed_hosts: vec!["gate-admin.internal".into()],
            top_blocked_capacity: 1024,
        };
        AdminGuard::new(&settings, Some(Arc::new(AdminToken::load(file).unwrap())))
    }

    fn req(method: &str, fields: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).unwrap();
        for (n, v) in fields {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    fn reason(r: Result<(), Refused>) -> Option<&'static str> {
        r.err().map(|e| e.reason.as_str())
    }

    #[test]
    fn hosts() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(RequireToken::Mutating, true, dir.path());
        let read = |host: &str| reason(g.check(&req("GET", &[("Host", host)]), Access::Read));
        for ok in [
            "127.0.0.1:9090",
            "10.0.0.5",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST.",
            "gate-admin.internal:9090",
            "Gate-Admin.Internal",
        ] {
            assert_eq!(read(ok), None, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "",
            "a b",
        ] {
            assert_eq!(read(bad), Some("host_not_allowed"), "{bad}");
        }
        // No Host: not a browser.
        assert_eq!(reason(g.check(&req("GET", &[]), Access::Read)), None);
        let two = req("GET", &[("Host", "127.0.0.1"), ("Host", "127.0.0.1")]);
        assert_eq!(
            reason(g.check(&two, Access::Read)),
            Some("host_not_allowed")
        );
        // Probes are never refused.
        let evil = req("GET", &[("Host", "evil.example")]);
        assert_eq!(reason(g.check(&evil, Access::Probe)), None);
        // On a Unix socket the Host does not matter.
        let u = guard(RequireToken::Mutating, false, dir.path());
        assert_eq!(reason(u.check(&evil, Access::Read)), None);
    }

    #[test]
    fn origins_on_requests_that_change_something() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(RequireToken::Mutating, true, dir.path());
        let bearer = format!("Bearer {TOKEN}");
        let post = |origin: &str| {
            let r = req(
                "POST",
                &[
                    ("Host", "127.0.0.1:9090"),
                    ("Origin", origin),
                    ("Authorization", &bearer),
                ],
            );
            reason(g.check(&r, Access::Mutating))
        };
        assert_eq!(post("http://127.0.0.1:9090"), None);
        assert_eq!(post("http://gate-admin.internal:8443"), None);
        assert_eq!(post("https://gate-admin.internal"), None);
        for bad in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:3000",
            "http://localhost:9090",
            "http://10.0.0.9:9090",
        ] {
            assert_eq!(post(bad), Some("origin_not_allowed"), "{bad}");
        }
        // A GET with a foreign Origin reads nothing it could not read anyway: allowed.
        let get = req(
            "GET",
            &[
                ("Host", "127.0.0.1:9090"),
                ("Origin", "http://evil.example"),
            ],
        );
        assert_eq!(reason(g.check(&get, Access::Read)), None);
    }

    #[test]
    fn tokens() {
        let dir = tempfile::tempdir().unwrap();
        let g = guard(RequireToken::Mutating, true, dir.path());
        let with = |auth: Option<&str>, access| {
            let mut fields = vec![("Host", "127.0.0.1:9090")];
            if let Some(a) = auth {
                fields.push(("Authorization", a));
            }
            reason(g.check(&req("POST", &fields), access))
        };
        let good = format!("Bearer {TOKEN}");
        assert_eq!(with(Some(&good), Access::Mutating), None);
        assert_eq!(
            with(Some(&format!("bearer  {TOKEN}")), Access::Mutating),
            None
        );
        assert_eq!(with(None, Access::Mutating), Some("token_missing"));
        assert_eq!(
            with(Some(&format!("Bearer {TOKEN}x")), Access::Mutating),
            Some("token_wrong")
        );
        assert_eq!(
            with(Some(&format!("Basic {TOKEN}")), Access::Mutating),
            Some("token_wrong")
        );
        assert_eq!(with(Some("Bearer"), Access::Mutating), Some("token_wrong"));
        // Reads are open with "mutating", not with "all".
        assert_eq!(with(None, Access::Read), None);
        let all = guard(RequireToken::All, true, dir.path());
        let r = req("GET", &[("Host", "127.0.0.1:9090")]);
        assert_eq!(reason(all.check(&r, Access::Read)), Some("token_missing"));
        assert_eq!(reason(all.check(&r, Access::Probe)), None);
    }

    #[test]
    fn reload_swaps_the_token_and_keeps_it_on_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, TOKEN).unwrap();
        let token = AdminToken::load(file.clone()).unwrap();
        assert!(token.matches(TOKEN.as_bytes()));
        std::fs::write(&file, "fedcba9876543210fedcba9876543210").unwrap();
        token.reload().unwrap();
        assert!(!token.matches(TOKEN.as_bytes()));
        assert!(token.matches(b"fedcba9876543210fedcba9876543210"));
        std::fs::write(&file, "short").unwrap();
        assert!(token.reload().is_err());
        assert!(token.matches(b"fedcba9876543210fedcba9876543210"));
    }
}
