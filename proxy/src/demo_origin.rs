//! The origins `icp-gate demo` starts beside the gate, so a newcomer sees a forwarded request
//! and a passed-through TLS connection without running a web server of their own. The HTTP one
//! answers every request with what it received; the TLS one terminates TLS with a certificate
//! made at start and answers with the SNI it got.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::block_page::escape_html_into;

pub struct DemoOrigin;

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            .unwrap_or_default();
        let mut page = String::from(
            "<!DOCTYPE html><html lang=\"en\"><meta charset=\"utf-8\"><title>icp-gate demo origin</title>\
             <h1>Forwarded: this site is filed and connected</h1><p>The demo origin received a request for <b>",
        );
        escape_html_into(&mut page, &host);
        page.push_str("</b>:</p><pre>");
        escape_html_into(&mut page, &format!("{} {}", req.method, req.uri));
        for (name, value) in req.headers.iter() {
            page.push('\n');
            escape_html_into(
                &mut page,
                &format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())),
            );
        }
        page.push_str("</pre></html>\n");
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(http::header::CONTENT_LENGTH, page.len())
            .header("x-demo-origin", "icp-gate")
            .body(page.into_bytes())
            .expect("static response parts")
    }
}

/// The demo's TLS origin: behind the demo's `tls` listener, it shows that a passed-through
/// connection reaches a server holding its own certificate (the gate holds none).
#[derive(Clone)]
pub struct DemoTlsOrigin {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl DemoTlsOrigin {
    /// A TLS origin with a fresh self-signed ECDSA P-256 certificate for `names`; also returns
    /// the certificate in PEM, for clients to trust (`curl --cacert`).
    /// A self-signed ECDSA P-256 certificate for `names` and its key, both PEM: what the demo
    /// gate terminates with (`[tls] certificates`), so the names it holds get the block page
    /// over HTTPS instead of an alert.
    pub fn held_certificate(names: &[&str]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "icp-gate demo gate");
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn generate(names: &[&str]) -> anyhow::Result<(DemoTlsOrigin, String)> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "icp-gate demo origin");
        let cert = params.self_signed(&key)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let origin = DemoTlsOrigin {
            acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        };
        Ok((origin, cert.pem()))
    }
}

#[async_trait]
impl pingora::apps::ServerApp for DemoTlsOrigin {
    async fn process_new(
        self: &std::sync::Arc<Self>,
        stream: pingora::protocols::Stream,
        _shutdown: &pingora::server::ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = self.acceptor.accept(stream).await.ok()?;
        let sni = tls.get_ref().1.server_name().unwrap_or("").to_owned();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tls.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() > 64 * 1024 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let line = head.lines().next().unwrap_or("");
                // The gate adds X-Forwarded-Proto to the requests it terminated itself; a
                // passed-through connection arrives exactly as the client sent it.
                let relayed = head
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("x-forwarded-proto:"));
                let body = if relayed {
                    format!(
                        "Terminated by the gate, decided on its Host and re-encrypted: the demo \
                         TLS origin (SNI {sni}) received: {line}\n"
                    )
                } else {
                    format!(
                        "Passed through: the demo TLS origin terminated this connection itself \
                         (SNI {sni}) and received: {line}\n"
                    )
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     Content-Length: {}\r\nX-Demo-Origin: icp-gate-tls\r\n\r\n{body}",
                    body.len()
                );
                tls.write_all(answer.as_bytes()).await.ok()?;
                tls.flush().await.ok()?;
            }
        }
    }
}
