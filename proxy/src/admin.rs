//! The admin listener: `/metrics`, `/healthz` (the process answers), `/readyz` (a registry is in
//! service, so the gate decides), `/registry` (facts about the registry in service).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use icp_gate_registry::RegistryHandle;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub registry: Arc<RegistryHandle>,
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
                self.metrics.render(),
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
                b"not found: try /metrics, /healthz, /readyz or /registry\n".to_vec(),
            ),
        }
    }
}
