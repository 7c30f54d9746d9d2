//! The front end's own answers: block pages (assembled from fixed runs around the request's
//! own values, and kept per connection for the next block of the same host and reason) and the
//! gate's plain answers (`crate::policy::PlainAnswer`).

use std::fmt::Write as _;

use icp_gate_registry::{BlockReason, Host};

use super::classify::SimpleRequest;
use super::io::write_all_two;
use super::{write_all, Conn, GateApp};
use crate::block_page::{HTML_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::clock;
use crate::gate::{RequestId, CSP};
use crate::policy::PlainAnswer;

/// The fixed runs of a block answer's head, joined once at start so that a block copies a few
/// long pieces around its own values (length, request id, date).
pub(super) struct BlockHeads {
    pub(super) by_reason: [BlockHead; 6],
    /// From the end of the request id up to the `Date` value.
    pub(super) before_date: Vec<u8>,
}

pub(super) struct BlockHead {
    /// Status line up to the `Content-Length` value, for the HTML page and for JSON.
    pub(super) html_start: Vec<u8>,
    pub(super) json_start: Vec<u8>,
    /// From the end of the length up to the request id.
    pub(super) before_id: Vec<u8>,
}

impl BlockHeads {
    pub(super) fn new() -> Self {
        let start = |reason: BlockReason, content_type: &str| {
            let status = match reason.http_status() {
                400 => "400 Bad Request",
                _ => "403 Forbidden",
            };
            format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: ")
                .into_bytes()
        };
        BlockHeads {
            by_reason: BlockReason::ALL.map(|reason| BlockHead {
                html_start: start(reason, HTML_CONTENT_TYPE),
                json_start: start(reason, JSON_CONTENT_TYPE),
                before_id: format!(
                    "\r\nCache-Control: no-store\r\nX-ICP-Block-Reason: {}\r\nX-Request-Id: ",
                    reason.as_str()
                )
                .into_bytes(),
            }),
            before_date: format!(
                "\r\nContent-Security-Policy: {CSP}\r\nX-Content-Type-Options: nosniff\r\n\
                 Referrer-Policy: no-referrer\r\nDate: "
            )
            .into_bytes(),
        }
    }
}

/// The last block answer written on a connection, head and page, with where its request id
/// and date sit. A client usually asks for one site throughout a connection (a browser loading
/// a page and what it links to), so the next block is most often the same answer but for the
/// request id and the date: those are overwritten in place, and the page is not rendered again.
#[derive(Default)]
pub(super) struct LastBlock {
    /// The answer's reason; `None` while `head` and `page` are not a complete answer to reuse.
    pub(super) reason: Option<BlockReason>,
    pub(super) head_only: bool,
    pub(super) keep_alive: bool,
    /// The host the page names (`Conn::shown_host` when it was rendered).
    pub(super) host: String,
    pub(super) head: Vec<u8>,
    pub(super) page: String,
    pub(super) head_id_at: usize,
    pub(super) head_date_at: usize,
    pub(super) page_ids_at: Vec<usize>,
}

impl LastBlock {
    pub(super) fn answers(
        &self,
        reason: BlockReason,
        head_only: bool,
        keep_alive: bool,
        host: &str,
    ) -> bool {
        self.reason == Some(reason)
            && self.head_only == head_only
            && self.keep_alive == keep_alive
            && self.host == host
    }
}

impl GateApp {
    /// Writes one of the gate's plain answers (`crate::policy::PlainAnswer`).
    pub(super) async fn answer_plain(
        &self,
        c: &mut Conn,
        answer: PlainAnswer,
        id: Option<RequestId>,
        keep_alive: bool,
        head_only: bool,
    ) -> bool {
        c.out.clear();
        answer.write_h1(
            &mut c.out,
            id.as_ref().map(RequestId::as_str),
            keep_alive,
            head_only,
        );
        write_all(&mut c.stream, &c.out).await
    }

    /// Writes the whole block answer in one write; false when the client is gone.
    pub(super) async fn answer_block(
        &self,
        c: &mut Conn,
        req: &SimpleRequest,
        reason: BlockReason,
        keep_alive: bool,
    ) -> (bool, RequestId) {
        c.shown_host.clear();
        match &c.host {
            Host::Domain(name) => c.shown_host.push_str(name.as_str()),
            host => {
                let _ = write!(c.shown_host, "{host}");
            }
        }
        self.write_block(c, reason, None, req.json, req.head_only, keep_alive)
            .await
    }

    /// Writes the block answer for `reason`, naming `c.shown_host`, in one write; false when
    /// the client is gone.
    pub(super) async fn write_block(
        &self,
        c: &mut Conn,
        reason: BlockReason,
        detail: Option<&str>,
        json: bool,
        head_only: bool,
        keep_alive: bool,
    ) -> (bool, RequestId) {
        let id = self.gate.request_ids.next_id();
        let id_bytes = id.as_str().as_bytes();
        let block = &mut c.block;
        // Only plain HTML pages are kept: a detail is only ever shown once per connection (on
        // the answer that ends it), and JSON is rendered by serde, which does not say where the
        // id went.
        let keep = detail.is_none() && !json;
        if keep && block.answers(reason, head_only, keep_alive, &c.shown_host) {
            // SAFETY: hex digits overwrite hex digits (see `render_html_into`): the page
            // stays valid UTF-8.
            let page = unsafe { block.page.as_mut_vec() };
            for &at in &block.page_ids_at {
                page[at..at + id_bytes.len()].copy_from_slice(id_bytes);
            }
            block.head[block.head_id_at..block.head_id_at + id_bytes.len()]
                .copy_from_slice(id_bytes);
            block.head[block.head_date_at..block.head_date_at + clock::HTTP_DATE_LEN]
                .copy_from_slice(&clock::http_date());
        } else {
            block.reason = None;
            block.page.clear();
            block.page_ids_at.clear();
            if json {
                self.gate.pages.render_into(
                    &mut block.page,
                    reason,
                    &c.shown_host,
                    detail,
                    id.as_str(),
                    json,
                );
            } else {
                let ids_at = &mut block.page_ids_at;
                self.gate.pages.render_html_into(
                    &mut block.page,
                    reason,
                    &c.shown_host,
                    detail,
                    id.as_str(),
                    |at| ids_at.push(at),
                );
            }
            let out = &mut block.head;
            out.clear();
            let head = &self.block_heads.by_reason[reason.index()];
            out.extend_from_slice(if json {
                &head.json_start
            } else {
                &head.html_start
            });
            out.extend_from_slice(itoa(block.page.len(), &mut [0u8; 20]));
            out.extend_from_slice(&head.before_id);
            block.head_id_at = out.len();
            out.extend_from_slice(id_bytes);
            out.extend_from_slice(&self.block_heads.before_date);
            block.head_date_at = out.len();
            clock::push_http_date(out);
            out.extend_from_slice(if keep_alive {
                &b"\r\nConnection: keep-alive\r\n\r\n"[..]
            } else {
                &b"\r\nConnection: close\r\n\r\n"[..]
            });
            if keep {
                block.reason = Some(reason);
                block.head_only = head_only;
                block.keep_alive = keep_alive;
                block.host.clear();
                block.host.push_str(&c.shown_host);
            }
        }
        // Head and page go out together (one write), without copying the page behind the head.
        let body = if head_only {
            &b""[..]
        } else {
            block.page.as_bytes()
        };
        (
            write_all_two(&mut c.stream, c.fd, &block.head, body).await,
            id,
        )
    }
}

pub(super) fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itoa_writes_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(2334, &mut [0; 20]), b"2334");
        assert_eq!(
            itoa(usize::MAX, &mut [0; 20]),
            usize::MAX.to_string().as_bytes()
        );
    }
}
