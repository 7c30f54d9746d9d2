//! The admin listener: `/metrics`, `/healthz` (the process answers), `/readyz` (a registry is in
//! service, so the gate decides), `/registry` (facts about the registry in service),
//! `/explain?host=` (why a host is allowed or blocked, on every listener), `/top/blocked` (the
//! most blocked names since start) and `POST /sync` (sync the registry now and say what
//! happened). Who may ask is `crate::admin_guard`'s to say.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Response, StatusCode};
use icp_gate_config::ListenerSettings;
use icp_gate_registry::{RegistryHandle, SyncOutcome, Syncer};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::admin_guard::{Access, AdminGuard, Refused};
use crate::metrics::Metrics;
use crate::sync_service::Feed;
use crate::top::View;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<RegistryHandle>,
    pub syncer: Arc<Mutex<Syncer>>,
    /// The gate's listeners, for `/explain`.
    pub listeners: Vec<ListenerSettings>,
    pub guard: AdminGuard,
}

impl AdminApp {
    /// Counts, logs and answers a refused request.
    fn refuse(&self, session: &ServerSession, refused: Refused) -> Response<Vec<u8>> {
        self.metrics.admin_refused(refused.reason);
        let req = session.req_header();
        tracing::warn!(
            target: "icp_gate::admin",
            client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.to_string())
                .unwrap_or_default(),
            method = req.method.as_str(),
            path = req.uri.path(),
            reason = refused.reason.as_str(),
            detail = refused.message,
            "admin request refused"
        );
        let mut response = reply(
            refused.status(),
            "text/plain; charset=utf-8",
            format!("{}: {}\n", refused.reason.as_str(), refused.message).into_bytes(),
        );
        if let Some(challenge) = refused.challenge() {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(challenge),
            );
        }
        response
    }

    /// `GET /top/blocked?n=N&by=host|domain&decision=blocked|monitored`.
    fn top_blocked(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let top = &self.metrics.top;
        let query = match TopQuery::parse(query, top.capacity()) {
            Ok(q) => q,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("{e}\n").into(),
                )
            }
        };
        let list: Vec<serde_json::Value> = top
            .top(query.view, query.n, query.monitored)
            .into_iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "count": e.count,
                    "error": e.error,
                    "reason": e.reason.as_str(),
                    "decision": e.decision(),
                })
            })
            .collect();
        let mut body = serde_json::to_vec_pretty(&list).expect("JSON");
        body.push(b'\n');
        reply(StatusCode::OK, "application/json", body)
    }

    async fn sync_now(&self) -> serde_json::Value {
        let Some(sync) = crate::sync_service::sync_now(
            self.syncer.clone(),
            self.registry.clone(),
            self.metrics.clone(),
            Feed::Both,
        )
        .await
        else {
            return serde_json::json!({ "result": "error", "detail": "the sync task failed" });
        };
        let serial = self.registry.load().as_ref().map(|r| r.serial);
        let mut answer = match &sync.snapshot {
            Some(outcome) => outcome_json(outcome, serial),
            None => serde_json::json!({}),
        };
        if !sync.deltas.is_empty() {
            answer["deltas"] = sync
                .deltas
                .iter()
                .map(|o| outcome_json(o, serial))
                .collect();
            answer["serial_in_service"] = serial.into();
        }
        answer
    }

    /// `GET /explain?host=H`: 200 with the explanation, 400 for a missing or unusable host
    /// (with the reason), 503 before a registry is in service.
    fn explain(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let Some(host) = query_value(query.unwrap_or_default(), "host") else {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({
                    "error": "missing_host",
                    "detail": "name the host to explain: /explain?host=www.example.com \
                               (percent-encoded where needed)",
                }),
            );
        };
        let guard = self.registry.load();
        let Some(loaded) = guard.as_ref() else {
            return json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "error": "not_ready",
                    "detail": "no registry loaded yet: nothing to explain against",
                }),
            );
        };
        let explained =
            crate::explain::explain(loaded, &self.listeners, &host, crate::clock::unix_seconds());
        let status = if explained.valid {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        json_reply(status, &explained.json)
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space, as in forms).
fn query_value(query: &str, name: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " ")).collect::<Vec<u8>>()
        })
    })
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(body).expect("JSON");
    bytes.push(b'\n');
    reply(status, "application/json", bytes)
}

/// One sync step as JSON (`POST /sync`).
fn outcome_json(outcome: &SyncOutcome, serial: Option<u64>) -> serde_json::Value {
    match outcome {
        SyncOutcome::Loaded {
            serial, entries, ..
        } => {
            serde_json::json!({ "result": "loaded", "serial": serial, "entries": entries })
        }
        SyncOutcome::Unchanged => {
            serde_json::json!({ "result": "unchanged", "serial": serial })
        }
        SyncOutcome::Rejected(e) | SyncOutcome::DeltaRejected(e) => serde_json::json!({
            "result": "rejected", "reason": e.reason.as_str(), "line": e.line,
            "detail": e.detail, "serial": serial,
        }),
        SyncOutcome::StillRejected(reason) => serde_json::json!({
            "result": "rejected", "reason": reason.as_str(), "serial": serial,
            "detail": "the source still offers what was rejected",
        }),
        SyncOutcome::SourceError(e) => {
            serde_json::json!({ "result": "error", "detail": e, "serial": serial })
        }
        SyncOutcome::DeltaApplied {
            from, to, entries, ..
        } => serde_json::json!({
            "result": "applied", "from": from, "serial": to, "entries": entries,
        }),
        SyncOutcome::Compacted { serial, folded, .. } => serde_json::json!({
            "result": "compacted", "serial": serial, "folded": folded,
        }),
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static response parts")
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let access = match path.as_str() {
            "/healthz" | "/readyz" => Access::Probe,
            "/sync" => Access::Mutating,
            _ => Access::Read,
        };
        if let Err(refused) = self.guard.check(session.req_header(), access) {
            return self.refuse(session, refused);
        }
        match path.as_str() {
            "/metrics" => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics
                    .render(self.registry.load().as_ref().map(|r| r.generated_at_unix)),
            ),
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if self.registry.is_ready() {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"not ready: no registry loaded yet\n".to_vec(),
                    )
                }
            }
            "/sync" => {
                if session.req_header().method != http::Method::POST {
                    return reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        b"use POST /sync\n".to_vec(),
                    );
                }
                json_reply(StatusCode::OK, &self.sync_now().await)
            }
            "/registry" => {
                let guard = self.registry.load();
                let body = match guard.as_ref() {
                    Some(r) => serde_json::json!({
                        "ready": true,
                        "serial": r.serial,
                        "generated_at": r.generated_at,
                        "entries": r.entries,
                        "sha256": icp_gate_registry::snapshot::hex(&r.sha256),
                        "loaded_at": r.loaded_at,
                        "base_serial": r.base_serial,
                        "deltas_applied": r.deltas_applied,
                        "overlay_entries": r.registry.overlay_len(),
                    }),
                    None => serde_json::json!({ "ready": false }),
                };
                json_reply(StatusCode::OK, &body)
            }
            "/explain" => {
                if session.req_header().method != http::Method::GET {
                    return reply(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "text/plain",
                        b"use GET /explain?host=H\n".to_vec(),
                    );
                }
                let query = session.req_header().uri.query().map(str::to_owned);
                self.explain(query.as_deref())
            }
            "/top/blocked" => self.top_blocked(session.req_header().uri.query()),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found: try /metrics, /healthz, /readyz, /registry, /explain?host=H, \
                  /top/blocked or POST /sync\n"
                    .to_vec(),
            ),
        }
    }
}

/// The parameters of `/top/blocked`.
#[derive(Debug, PartialEq, Eq)]
struct TopQuery {
    n: usize,
    view: View,
    /// None: blocked and monitored.
    monitored: Option<bool>,
}

impl TopQuery {
    /// Every parameter checked: a bad one is answered 400 with what is wrong.
    fn parse(query: Option<&str>, capacity: usize) -> Result<Self, String> {
        let mut q = TopQuery {
            n: 10.min(capacity),
            view: View::Host,
            monitored: None,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "n" => {
                    q.n = match value.parse::<usize>() {
                        Ok(n) if (1..=capacity).contains(&n) => n,
                        _ => {
                            return Err(format!(
                                "n: `{value}` is not a number from 1 to {capacity} \
                                 (admin.top_blocked_capacity)"
                            ))
                        }
                    }
                }
                "by" => {
                    q.view = match value {
                        "host" => View::Host,
                        "domain" => View::Domain,
                        _ => return Err(format!("by: `{value}` is neither host nor domain")),
                    }
                }
                "decision" => {
                    q.monitored = match value {
                        "blocked" => Some(false),
                        "monitored" => Some(true),
                        "all" => None,
                        _ => {
                            return Err(format!(
                                "decision: `{value}` is not one of blocked, monitored, all"
                            ))
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown parameter `{key}` (n, by and decision are known)"
                    ))
                }
            }
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_queries() {
        let p = |q: &str| TopQuery::parse(Some(q), 1024);
        assert_eq!(
            TopQuery::parse(None, 1024),
            Ok(TopQuery {
                n: 10,
                view: View::Host,
                monitored: None
            })
        );
        assert_eq!(
            p("n=3&by=domain&decision=monitored"),
            Ok(TopQuery {
                n: 3,
                view: View::Domain,
                monitored: Some(true)
            })
        );
        assert_eq!(p("decision=blocked").unwrap().monitored, Some(false));
        assert_eq!(p("n=1024").unwrap().n, 1024);
        assert!(p("n=1025").unwrap_err().contains("1 to 1024"));
        assert!(p("n=0").unwrap_err().starts_with("n: `0`"));
        assert!(p("n=x").is_err());
        assert!(p("by=registrar").unwrap_err().contains("host nor domain"));
        assert!(p("decision=allowed").is_err());
        assert!(p("limit=5")
            .unwrap_err()
            .contains("unknown parameter `limit`"));
    }
}
