//! The origin `icp-gate demo` starts beside the gate, so a newcomer sees a forwarded request
//! without running a web server of their own. It answers every request with what it received.

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
