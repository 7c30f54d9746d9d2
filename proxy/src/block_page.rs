//! The answer a blocked client sees: an HTML page (Chinese first, English below) or the same
//! facts as JSON. Templates are split into literal and placeholder parts once, at start, and
//! everything that depends only on the reason is filled in then too: a page is a few large
//! copies of fixed text around the request's own values (host, request id, detail).

use bytes::Bytes;
use icp_gate_registry::BlockReason;

pub const FILING_SITE: &str = "https://beian.miit.gov.cn";
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Values echoed from the request are escaped and capped: a page must never carry more of a
/// client's input than this.
const MAX_ECHOED_HOST: usize = 256;

/// What the page says for one reason.
pub struct ReasonText {
    pub title_zh: &'static str,
    pub title_en: &'static str,
    pub action_zh: &'static str,
    pub action_en: &'static str,
}

pub const LEGAL_BASIS_ZH: &str = "《互联网信息服务管理办法》（国务院令第292号）；《非经营性互联网信息服务备案管理办法》（工业和信息化部令第33号）";
pub const LEGAL_BASIS_EN: &str = "Measures for the Administration of Internet Information Services (State Council Order No. 292); Measures for the Administration of Filing of Non-commercial Internet Information Services (MIIT Order No. 33)";

pub fn reason_text(reason: BlockReason) -> &'static ReasonText {
    match reason {
        BlockReason::Unfiled => &ReasonText {
            title_zh: "该网站尚未办理ICP备案，暂时无法访问",
            title_en: "This website has no ICP filing and cannot be served",
            action_zh: "网站主办者请通过接入服务商办理ICP备案，备案通过并接入本服务商后即可访问。",
            action_en: "The site owner must obtain an ICP filing through the hosting provider; the site can be served once the filing is approved and connected to this provider.",
        },
        BlockReason::Unconnected => &ReasonText {
            title_zh: "该网站的ICP备案未接入本服务商",
            title_en: "This website's ICP filing is not connected to this hosting provider",
            action_zh: "网站主办者请在本服务商为该备案办理接入（新增接入）；接入完成后即可访问。",
            action_en: "The site owner must connect the existing filing to this provider (新增接入, add access); the site can be served once the connection is complete.",
        },
        BlockReason::Revoked => &ReasonText {
            title_zh: "该网站的ICP备案已被注销",
            title_en: "This website's ICP filing has been cancelled",
            action_zh: "网站主办者须重新办理ICP备案后方可恢复访问。",
            action_en: "The site owner must file again before the site can be served.",
        },
        BlockReason::Denied => &ReasonText {
            title_zh: "该网站已被禁止访问",
            title_en: "Access to this website has been denied",
            action_zh: "如有疑问，网站主办者请联系接入服务商。",
            action_en: "The site owner should contact the hosting provider.",
        },
        BlockReason::IpUnfiled => &ReasonText {
            title_zh: "不允许通过未备案的IP地址直接访问",
            title_en: "Access by an unfiled IP address is not permitted",
            action_zh: "请使用已备案的域名访问该网站。",
            action_en: "Use the site's filed domain name instead of its IP address.",
        },
        BlockReason::InvalidHost => &ReasonText {
            title_zh: "请求缺少有效的主机名（Host）",
            title_en: "The request does not carry a usable host name",
            action_zh: "请检查请求的Host头或目标地址。",
            action_en: "Check the request's Host header or target.",
        },
    }
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Host,
    Reason,
    Status,
    TitleZh,
    TitleEn,
    ActionZh,
    ActionEn,
    LegalBasisZh,
    LegalBasisEn,
    FilingSite,
    RequestId,
    Detail,
}

fn placeholder(name: &str) -> Option<Part> {
    Some(match name {
        "host" => Part::Host,
        "reason" => Part::Reason,
        "status" => Part::Status,
        "title_zh" => Part::TitleZh,
        "title_en" => Part::TitleEn,
        "action_zh" => Part::ActionZh,
        "action_en" => Part::ActionEn,
        "legal_basis_zh" => Part::LegalBasisZh,
        "legal_basis_en" => Part::LegalBasisEn,
        "filing_site" => Part::FilingSite,
        "request_id" => Part::RequestId,
        "detail" => Part::Detail,
        _ => return None,
    })
}

/// The placeholders a template may use, for the docs and for error messages.
pub const PLACEHOLDERS: &str = "{{host}} {{reason}} {{status}} {{title_zh}} {{title_en}} {{action_zh}} {{action_en}} {{legal_basis_zh}} {{legal_basis_en}} {{filing_site}} {{request_id}} {{detail}}";

#[derive(Clone, Debug)]
struct Template {
    parts: Vec<Part>,
}

/// A template with the reason's own texts filled in: fixed runs of `text` between the values
/// that change per request.
#[derive(Debug)]
struct ReasonPage {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Copy, Debug)]
enum Segment {
    Fixed { start: usize, end: usize },
    Host,
    RequestId,
    Detail,
}

impl ReasonPage {
    fn new(template: &Template, reason: BlockReason) -> ReasonPage {
        let words = reason_text(reason);
        let mut text = String::new();
        let mut segments = Vec::new();
        let mut start = 0;
        for part in &template.parts {
            let fixed = match part {
                Part::Literal(s) => s.as_str(),
                Part::Reason => reason.as_str(),
                Part::Status => itoa_status(reason.http_status()),
                Part::TitleZh => words.title_zh,
                Part::TitleEn => words.title_en,
                Part::ActionZh => words.action_zh,
                Part::ActionEn => words.action_en,
                Part::LegalBasisZh => LEGAL_BASIS_ZH,
                Part::LegalBasisEn => LEGAL_BASIS_EN,
                Part::FilingSite => FILING_SITE,
                Part::Host | Part::RequestId | Part::Detail => {
                    if text.len() > start {
                        segments.push(Segment::Fixed {
                            start,
                            end: text.len(),
                        });
                    }
                    start = text.len();
                    segments.push(match part {
                        Part::Host => Segment::Host,
                        Part::RequestId => Segment::RequestId,
                        _ => Segment::Detail,
                    });
                    continue;
                }
            };
            text.push_str(fixed);
        }
        if text.len() > start {
            segments.push(Segment::Fixed {
                start,
                end: text.len(),
            });
        }
        ReasonPage { text, segments }
    }
}

impl Template {
    /// Splits `text` at `{{name}}` placeholders. Unknown placeholders stay as literal text.
    fn compile(text: &str) -> Template {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            match after
                .find("}}")
                .and_then(|close| placeholder(after[..close].trim()).map(|p| (p, close)))
            {
                Some((part, close)) => {
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    rest = &after[close + 2..];
                }
                None => {
                    literal.push_str("{{");
                    rest = after;
                }
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Template { parts }
    }
}

const DEFAULT_TEMPLATE: &str = include_str!("block_page.html");

/// The rendered answer.
pub struct BlockBody {
    pub content_type: &'static str,
    pub body: Bytes,
}

/// Block pages for every reason, compiled once.
pub struct BlockPages {
    pages: [ReasonPage; 6],
}

impl BlockPages {
    /// `custom[reason.index()]` replaces the built-in page for that reason.
    pub fn new(custom: &[Option<String>; 6]) -> Self {
        let default = Template::compile(DEFAULT_TEMPLATE);
        let pages = std::array::from_fn(|i| {
            let reason = BlockReason::ALL[i];
            debug_assert_eq!(reason.index(), i);
            match &custom[i] {
                Some(text) => ReasonPage::new(&Template::compile(text), reason),
                None => ReasonPage::new(&default, reason),
            }
        });
        BlockPages { pages }
    }

    /// Renders the page for `reason`. `host` is what the page names (escaped here); `detail`
    /// says more about an unusable host.
    pub fn render(
        &self,
        reason: BlockReason,
        host: &str,
        detail: Option<&str>,
        request_id: &str,
        json: bool,
    ) -> BlockBody {
        let mut out = String::with_capacity(self.pages[reason.index()].text.len() + 1024);
        let content_type = self.render_into(&mut out, reason, host, detail, request_id, json);
        BlockBody {
            content_type,
            body: Bytes::from(out),
        }
    }

    /// Appends the page (or the JSON) for `reason` to `out` and returns its content type.
    pub fn render_into(
        &self,
        out: &mut String,
        reason: BlockReason,
        host: &str,
        detail: Option<&str>,
        request_id: &str,
        json: bool,
    ) -> &'static str {
        if json {
            out.push_str(&render_json(reason, host, detail, request_id));
            JSON_CONTENT_TYPE
        } else {
            self.render_html_into(out, reason, host, detail, request_id, |_| {});
            HTML_CONTENT_TYPE
        }
    }

    /// Appends the HTML page for `reason` to `out` (which a connection reuses from one request
    /// to the next, so a block allocates nothing), telling `id_at` where in `out` each copy of
    /// the request id starts. A request id is hex digits, written as they are, so a caller can
    /// later overwrite those bytes with another id of the same length and have the page for it.
    pub fn render_html_into(
        &self,
        out: &mut String,
        reason: BlockReason,
        host: &str,
        detail: Option<&str>,
        request_id: &str,
        mut id_at: impl FnMut(usize),
    ) {
        let page = &self.pages[reason.index()];
        // Where the escaped host went the first time: later mentions copy it.
        let mut escaped_host: Option<std::ops::Range<usize>> = None;
        for segment in &page.segments {
            match *segment {
                Segment::Fixed { start, end } => out.push_str(&page.text[start..end]),
                Segment::Host => match &escaped_host {
                    // SAFETY: the range is text pushed onto `out` above, so it starts and ends
                    // on character boundaries and a copy of it appended is valid UTF-8.
                    Some(range) => unsafe { out.as_mut_vec() }.extend_from_within(range.clone()),
                    None => {
                        let start = out.len();
                        escape_html_into(out, cap(host));
                        escaped_host = Some(start..out.len());
                    }
                },
                Segment::RequestId => {
                    id_at(out.len());
                    escape_html_into(out, request_id);
                }
                Segment::Detail => {
                    if let Some(d) = detail {
                        out.push_str(" (");
                        escape_html_into(out, d);
                        out.push(')');
                    }
                }
            }
        }
    }
}

fn itoa_status(status: u16) -> &'static str {
    match status {
        400 => "400",
        _ => "403",
    }
}

fn cap(s: &str) -> &str {
    if s.len() <= MAX_ECHOED_HOST {
        return s;
    }
    let mut end = MAX_ECHOED_HOST;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A byte that appears in a page as it is: what normalized hosts and request ids are made of.
/// (The x86_64 check computes the same set 16 bytes at a time; a test holds the two together.)
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn is_verbatim(c: u8) -> bool {
    let lower = c | 0x20;
    lower.is_ascii_lowercase()
        | (b'0'..=b':').contains(&c)
        | matches!(c, b'.' | b'-' | b'_' | b'[' | b']')
}

/// Whether `s` needs no escaping. Hosts and request ids are checked on every block, so this
/// looks at 16 bytes at a time with SSE2 (part of every x86_64 CPU) rather than a branch per byte.
#[cfg(target_arch = "x86_64")]
fn all_verbatim(s: &[u8]) -> bool {
    use std::arch::x86_64::*;
    /// SAFETY: `p` must point at 16 readable bytes.
    unsafe fn chunk_ok(p: *const u8) -> bool {
        let set = |c: u8| _mm_set1_epi8(c as i8);
        // Signed compares: bytes from 0x80 up are negative and so outside every range here.
        let v = unsafe { _mm_loadu_si128(p.cast()) };
        let lower = _mm_or_si128(v, set(0x20));
        let letter = _mm_and_si128(
            _mm_cmpgt_epi8(lower, set(b'a' - 1)),
            _mm_cmplt_epi8(lower, set(b'z' + 1)),
        );
        let digit_or_colon = _mm_and_si128(
            _mm_cmpgt_epi8(v, set(b'0' - 1)),
            _mm_cmplt_epi8(v, set(b':' + 1)),
        );
        let mut ok = _mm_or_si128(letter, digit_or_colon);
        for c in [b'.', b'-', b'_', b'[', b']'] {
            ok = _mm_or_si128(ok, _mm_cmpeq_epi8(v, set(c)));
        }
        _mm_movemask_epi8(ok) == 0xffff
    }
    let n = s.len();
    if n < 16 {
        let mut padded = [b'a'; 16];
        padded[..n].copy_from_slice(s);
        // SAFETY: 16 bytes on the stack.
        return unsafe { chunk_ok(padded.as_ptr()) };
    }
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= s.len().
        if !unsafe { chunk_ok(s.as_ptr().add(i)) } {
            return false;
        }
        i += 16;
    }
    // The tail as the last 16 bytes (overlapping the chunk before, which passed).
    // SAFETY: n >= 16.
    i == n || unsafe { chunk_ok(s.as_ptr().add(n - 16)) }
}

#[cfg(not(target_arch = "x86_64"))]
fn all_verbatim(s: &[u8]) -> bool {
    s.iter().all(|&c| is_verbatim(c))
}

pub fn escape_html_into(out: &mut String, s: &str) {
    // Normalized hosts and request ids need no escaping: copy them whole.
    if all_verbatim(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

fn render_json(reason: BlockReason, host: &str, detail: Option<&str>, request_id: &str) -> String {
    let text = reason_text(reason);
    let value = serde_json::json!({
        "status": reason.http_status(),
        "reason": reason.as_str(),
        "host": cap(host),
        "title_zh": text.title_zh,
        "title": text.title_en,
        "action_zh": text.action_zh,
        "action": text.action_en,
        "legal_basis_zh": LEGAL_BASIS_ZH,
        "legal_basis": LEGAL_BASIS_EN,
        "filing_site": FILING_SITE,
        "request_id": request_id,
        "detail": detail,
    });
    let mut body = value.to_string();
    body.push('\n');
    body
}

/// True when the client asked for JSON rather than HTML (`Accept` names `application/json` and
/// does not put `text/html` first).
pub fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let json = accept.find("application/json");
    let html = accept.find("text/html");
    match (json, html) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages() -> BlockPages {
        BlockPages::new(&Default::default())
    }

    fn html(reason: BlockReason, host: &str) -> String {
        let b = pages().render(reason, host, None, "rid-1", false);
        assert_eq!(b.content_type, "text/html; charset=utf-8");
        String::from_utf8(b.body.to_vec()).unwrap()
    }

    #[test]
    fn verbatim_bytes_are_exactly_the_host_and_id_alphabet() {
        for c in 0..=255u8 {
            let expected =
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':' | b'[' | b']');
            assert_eq!(is_verbatim(c), expected, "byte {c:#04x}");
        }
        // Every byte value at every position, in short strings, whole chunks and tails.
        for len in [1, 5, 15, 16, 17, 24, 32, 40] {
            let plain = vec![b'a'; len];
            assert!(all_verbatim(&plain));
            for at in 0..len {
                for c in 0..=255u8 {
                    let mut bytes = plain.clone();
                    bytes[at] = c;
                    assert_eq!(
                        all_verbatim(&bytes),
                        is_verbatim(c),
                        "{c:#04x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(all_verbatim(b""));
    }

    #[test]
    fn default_page_has_every_fact_chinese_first() {
        let page = html(BlockReason::Unconnected, "www.example.com");
        for needle in [
            "www.example.com",
            "未接入本服务商",
            "not connected to this hosting provider",
            "新增接入",
            "工业和信息化部令第33号",
            "MIIT Order No. 33",
            "https://beian.miit.gov.cn",
            "rid-1",
            "unconnected",
        ] {
            assert!(page.contains(needle), "missing {needle:?}");
        }
        assert!(page.find("未接入").unwrap() < page.find("not connected").unwrap());
        assert!(
            !page.contains("{{"),
            "unfilled placeholder left in the page"
        );
    }

    #[test]
    fn every_reason_gets_its_own_texts_and_values() {
        let p = pages();
        for reason in BlockReason::ALL {
            let body = p
                .render(reason, "h.example.cn", Some("why"), "rid-7", false)
                .body;
            let page = std::str::from_utf8(&body).unwrap();
            let words = reason_text(reason);
            for needle in [
                words.title_zh,
                words.title_en,
                words.action_zh,
                words.action_en,
                reason.as_str(),
                itoa_status(reason.http_status()),
                "h.example.cn",
                "rid-7",
                " (why)",
            ] {
                assert!(page.contains(needle), "{reason:?}: missing {needle:?}");
            }
            assert!(!page.contains("{{"), "{reason:?}: placeholder left");
        }
        let mut custom: [Option<String>; 6] = Default::default();
        custom[BlockReason::Revoked.index()] =
            Some("{{host}}{{host}}|{{detail}}|{{request_id}}".into());
        let p = BlockPages::new(&custom);
        let body = p
            .render(BlockReason::Revoked, "a&b", Some("d"), "r", false)
            .body;
        assert_eq!(&body[..], b"a&amp;ba&amp;b| (d)|r");
        let body = p.render(BlockReason::Revoked, "a", None, "r", false).body;
        assert_eq!(&body[..], b"aa||r");
    }

    #[test]
    fn host_is_escaped_and_capped() {
        let page = html(BlockReason::InvalidHost, "<script>alert(1)</script>\"'&");
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"));
        let long = "a".repeat(10_000);
        let page = html(BlockReason::InvalidHost, &long);
        assert!(!page.contains(&"a".repeat(257)));
    }

    #[test]
    fn custom_templates_per_reason() {
        let mut custom: [Option<String>; 6] = Default::default();
        custom[BlockReason::Denied.index()] =
            Some("<b>{{reason}} {{ host }} {{nope}} {{request_id}}</b>".into());
        let p = BlockPages::new(&custom);
        let body = p
            .render(BlockReason::Denied, "x.cn", None, "r9", false)
            .body;
        assert_eq!(&body[..], b"<b>denied x.cn {{nope}} r9</b>");
        let body = p
            .render(BlockReason::Unfiled, "x.cn", None, "r9", false)
            .body;
        assert!(std::str::from_utf8(&body)
            .unwrap()
            .contains("尚未办理ICP备案"));
    }

    #[test]
    fn json_when_asked() {
        assert!(wants_json(Some(b"application/json")));
        assert!(wants_json(Some(b"application/json, text/html;q=0.5")));
        assert!(!wants_json(Some(
            b"text/html,application/xhtml+xml,*/*;q=0.8"
        )));
        assert!(!wants_json(None));
        let b = pages().render(BlockReason::Unfiled, "a<b.cn", Some("d"), "r1", true);
        let v: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(v["reason"], "unfiled");
        assert_eq!(v["host"], "a<b.cn");
        assert_eq!(v["status"], 403);
        assert_eq!(v["filing_site"], FILING_SITE);
    }
}
