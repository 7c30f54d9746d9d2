//! The admin listener: `/metrics`, `/healthz` (the process answers), `/readyz` (a registry is in
//! service, so the gate decides), `/registry` (facts about the registry in service), and
//! `POST /sync` (sync the registry now and say what happened).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Response, StatusCode};
use icp_gate_registry::{RegistryHandle, SyncOutcome, Syncer};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::sync_service::Feed;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<RegistryHandle>,
    pub syncer: Arc<Mutex<Syncer>>,
}

impl AdminApp {
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
                let mut body = serde_json::to_vec_pretty(&self.sync_now().await).expect("JSON");
                body.push(b'\n');
                reply(StatusCode::OK, "application/json", body)
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
                let mut bytes = serde_json::to_vec_pretty(&body).expect("JSON");
                bytes.push(b'\n');
                reply(StatusCode::OK, "application/json", bytes)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                b"not found: try /metrics, /healthz, /readyz, /registry or POST /sync\n".to_vec(),
            ),
        }
    }
}
