//! The access log and the audit log: the one place that turns what happened to a request (or
//! to a TLS connection) into log lines, for every path (the front end, Pingora's proxy,
//! terminated TLS through either, TLS passthrough and refusals).
//!
//! - **Audit lines** (`[log] audit_log`): one JSON line for every blocked or monitored decision,
//!   never sampled, naming the registry record that decided and the serial it came from (both
//!   from the lookup that decided: `Decided`).
//! - **Access lines**: one per request (and per passed-through or refused TLS connection), picked
//!   by `access_log_sample`. With `[log] access_log_file` they go to that file through the
//!   buffered writer (`crate::log_writer`), in JSON with OpenTelemetry HTTP semantic-convention
//!   names (or the same fields as text); without one, as a `tracing` event on standard error.
//!
//! Everything echoed from the client is escaped (`crate::log_line`), so a Host cannot forge or
//! bloat a line.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icp_gate_registry::{BlockReason, Host, InvalidHost};

use crate::gate::{Decided, Outcome};
use crate::key;
use crate::log_line::{ClientText, Line, Stamp, Style};
use crate::log_writer::LogSink;

const MAX_LOGGED_HOST: usize = 256;

/// Where a gate's access and audit lines go.
#[derive(Clone)]
pub struct AccessLog {
    enabled: bool,
    /// Fraction of requests that get an access line.
    sample: f64,
    /// Access lines to a file, and their form; None: `tracing` on standard error.
    file: Option<(LogSink, Style)>,
    audit: Option<LogSink>,
    /// The listener's name as the lines write it (escaped once, `for_listener`).
    listener: Option<Arc<[u8]>>,
}

/// One request, as its log lines tell it.
pub struct AccessRecord<'a> {
    pub listener: &'a str,
    pub client: Option<SocketAddr>,
    /// `client` as text, when the caller keeps it (the front end, once per connection).
    pub client_text: Option<&'a ClientText>,
    pub method: &'a str,
    /// The target's path (up to any `?`), as sent; empty when not known.
    pub path: &'a [u8],
    /// `1.0`, `1.1` or `2`.
    pub version: &'static str,
    /// The host decided on; None when none could be read (`record`'s `raw_host` then says
    /// what was sent).
    pub host: Option<&'a Host>,
    pub invalid: Option<InvalidHost>,
    pub decided: Decided,
    pub status: u16,
    /// When the gate took the request (a precise clock read when access lines are written; the
    /// access line's duration is taken from it).
    pub started: Instant,
    pub request_id: Option<&'a str>,
    pub error: Option<&'a pingora::Error>,
}

/// What both lines of a request share, made once: the time, the listener's name and the client
/// as text (escaped), the host.
pub struct Common<'a> {
    pub stamp: Stamp,
    pub listener: &'a [u8],
    pub client: Option<ClientText>,
    pub host: Shown<'a>,
}

/// What was decided for a TLS connection on its ClientHello, as its lines tell it.
pub struct TlsRecord<'a> {
    pub listener: &'a str,
    pub client: Option<SocketAddr>,
    /// The name decided on (normalized), or the SNI as sent when it was not a usable name.
    pub sni: Option<&'a [u8]>,
    /// The address decided on when there was no usable SNI.
    pub ip: Option<IpAddr>,
    pub decision: &'static str,
    pub reason: &'static str,
    /// The lookup that decided (None: no lookup, e.g. no ClientHello).
    pub decided: Option<Decided>,
    pub request_id: &'a str,
}

/// What a passed-through or refused connection's access line adds about its hello and relay.
#[derive(Default)]
pub struct TlsFacts<'a> {
    /// The SNI as sent (the record's `sni` is the name decided on).
    pub sni: Option<&'a [u8]>,
    pub alpn: &'a str,
    pub ech: bool,
    pub client_hello_bytes: usize,
    pub records: usize,
    /// Why no hello could be used, in words.
    pub detail: &'a str,
    pub original_dst: Option<SocketAddr>,
    /// A relayed connection's end: bytes each way, how it ended, how long it lasted.
    pub relayed: Option<(u64, u64, &'a str, Duration)>,
}

impl AccessLog {
    /// Access lines through `tracing`, no audit log (add them with `with_file`, `with_audit`).
    pub fn new(enabled: bool, sample: f64) -> Self {
        AccessLog {
            enabled,
            sample,
            file: None,
            audit: None,
            listener: None,
        }
    }

    /// This access log for the listener `name` (its name escaped once for every line).
    pub fn for_listener(mut self, name: &str) -> Self {
        let mut text = Vec::new();
        crate::log_line::escape_into(&mut text, name.as_bytes());
        self.listener = Some(text.into());
        self
    }

    /// The listener's name as the lines write it.
    fn listener_text<'a>(&'a self, name: &str) -> Cow<'a, [u8]> {
        match &self.listener {
            Some(text) => Cow::Borrowed(text),
            None => {
                let mut text = Vec::new();
                crate::log_line::escape_into(&mut text, name.as_bytes());
                Cow::Owned(text)
            }
        }
    }

    /// Access lines go to this file's writer instead, in `style`.
    pub fn with_file(mut self, sink: LogSink, style: Style) -> Self {
        self.file = Some((sink, style));
        self
    }

    /// Audit lines go to this file's writer.
    pub fn with_audit(mut self, sink: LogSink) -> Self {
        self.audit = Some(sink);
        self
    }

    fn sampled(&self) -> bool {
        self.enabled && (self.sample >= 1.0 || fastrand::f64() < self.sample)
    }

    /// Whether this one request or connection gets an access line (switched on, and picked by
    /// the sample): for lines written outside `record`.
    pub fn this_one(&self) -> bool {
        self.wants_line() && self.sampled()
    }

    /// Whether access lines are written at all: lets a caller skip gathering the fields (the
    /// path, a precise clock for the duration).
    pub fn wants_line(&self) -> bool {
        self.enabled
            && (self.file.is_some()
                || tracing::enabled!(target: "icp_gate::access", tracing::Level::INFO))
    }

    /// Whether `record` writes anything for a request with this outcome (lets a caller skip
    /// gathering the record).
    pub fn logs(&self, outcome: Outcome) -> bool {
        (self.audit.is_some() && audited(outcome)) || self.wants_line()
    }

    /// Whether access lines carry the request's path (those written to a file).
    pub fn wants_path(&self) -> bool {
        self.enabled && self.file.is_some()
    }

    /// The lines of one request: its audit line when it was blocked or monitored, its access
    /// line when it is picked. `raw_host` is called only when a line is written and the record
    /// has no host.
    pub fn record(&self, r: AccessRecord<'_>, raw_host: impl FnOnce() -> String) {
        let audit = self.audit.as_ref().filter(|_| audited(r.decided.outcome));
        let access = self.sampled();
        if audit.is_none() && !access {
            return;
        }
        // The host as decided (normalized: nothing to escape), or, when none could be read, as
        // sent.
        let raw;
        let host = match r.host {
            Some(Host::Domain(name)) => Shown::plain(name.as_bytes()),
            Some(host @ Host::Ip(_)) => {
                raw = host.to_string();
                Shown::plain(raw.as_bytes())
            }
            None => {
                raw = raw_host();
                Shown::as_sent(raw.as_bytes())
            }
        };
        let key = shard_key(r.client);
        let listener = self.listener_text(r.listener);
        let common = Common {
            stamp: Stamp::now(),
            listener: &listener,
            client: r
                .client_text
                .copied()
                .or_else(|| r.client.map(ClientText::new)),
            host,
        };
        if let Some(audit) = audit {
            audit.write_line(key, |out| audit_request_line(out, &common, &r));
        }
        if !access {
            return;
        }
        match &self.file {
            Some((sink, style)) => {
                sink.write_line(key, |out| access_line(out, *style, &common, &r))
            }
            None => trace_request(&r, host.text),
        }
    }

    /// The lines of a TLS connection refused on its ClientHello (or passed through in monitor
    /// mode, at the moment it is): its audit line, and when refused its access line (a
    /// passed-through connection gets its access line when it ends, `tls_passed`).
    pub fn tls_decided(&self, r: &TlsRecord<'_>, facts: &TlsFacts<'_>, refused: bool) {
        let key = shard_key(r.client);
        let audit = r.decided.is_none_or(|d| audited(d.outcome));
        let stamp = Stamp::now();
        if let (Some(sink), true) = (&self.audit, audit) {
            sink.write_line(key, |out| audit_tls_line(out, &stamp, r));
        }
        if !refused {
            return;
        }
        match &self.file {
            Some((sink, style)) => {
                if self.sampled() {
                    sink.write_line(key, |out| tls_access_line(out, *style, &stamp, r, facts));
                }
            }
            // Without a file every refusal has its line, at INFO under `icp_gate::tls`, as
            // before there was an access log file.
            None => trace_tls(r, facts, "tls connection refused"),
        }
    }

    /// The access line of a passed-through TLS connection, when it has ended; the caller picked
    /// it with `this_one` when the connection began.
    pub fn tls_passed(&self, r: &TlsRecord<'_>, facts: &TlsFacts<'_>) {
        match &self.file {
            Some((sink, style)) => sink.write_line(shard_key(r.client), |out| {
                tls_access_line(out, *style, &Stamp::now(), r, facts)
            }),
            None => trace_tls(r, facts, "tls connection"),
        }
    }
}

/// Whether a decision gets an audit line: every block (a registry not loaded yet included) and
/// every monitored request.
fn audited(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Blocked(_) | Outcome::Monitored(_) | Outcome::NotReady
    )
}

/// The same shard for every line of a connection: its client address.
fn shard_key(client: Option<SocketAddr>) -> u64 {
    match client {
        Some(SocketAddr::V4(a)) => u64::from(a.ip().to_bits()) ^ (u64::from(a.port()) << 32),
        Some(SocketAddr::V6(a)) => {
            let bits = a.ip().to_bits();
            (bits as u64) ^ ((bits >> 64) as u64) ^ (u64::from(a.port()) << 48)
        }
        None => 0,
    }
}

/// A host as a line shows it: the name decided on (made by the gate: nothing to escape), or
/// the value as sent (escaped).
#[derive(Clone, Copy)]
pub struct Shown<'a> {
    pub text: &'a [u8],
    pub plain: bool,
}

impl<'a> Shown<'a> {
    /// A normalized host (or an IP address as text).
    pub fn plain(text: &'a [u8]) -> Self {
        Shown { text, plain: true }
    }

    /// A value as the client sent it.
    pub fn as_sent(text: &'a [u8]) -> Self {
        Shown { text, plain: false }
    }

    #[inline(always)]
    fn write<const JSON: bool>(self, line: &mut Line<'_, JSON>, key: crate::log_line::Key) {
        if self.plain {
            line.plain(key, self.text);
        } else {
            line.bytes(key, self.text);
        }
    }

    /// The part from `at` on (the record that decided, in the decided host's text).
    fn from(self, at: usize) -> Option<Shown<'a>> {
        Some(Shown {
            text: self.text.get(at..)?,
            plain: self.plain,
        })
    }
}

/// The decision and reason fields of an outcome, made at compile time: `$open` decision `$mid`
/// reason `$close` (a unit test holds them to `Outcome::decision_label` and `reason_label`).
macro_rules! outcome_fields {
    ($outcome:expr, $open:literal, $mid:literal, $close:literal) => {
        match $outcome {
            Outcome::Pending => concat!($open, "undecided", $mid, $close),
            Outcome::Allowed => concat!($open, "allowed", $mid, $close),
            Outcome::NotReady => concat!($open, "blocked", $mid, "registry_not_ready", $close),
            Outcome::Blocked(r) => outcome_fields!(@reason r, "blocked", $open, $mid, $close),
            Outcome::Monitored(r) => outcome_fields!(@reason r, "monitored", $open, $mid, $close),
        }
    };
    (@reason $r:expr, $decision:literal, $open:literal, $mid:literal, $close:literal) => {
        match $r {
            BlockReason::Unfiled => concat!($open, $decision, $mid, "unfiled", $close),
            BlockReason::Unconnected => concat!($open, $decision, $mid, "unconnected", $close),
            BlockReason::Revoked => concat!($open, $decision, $mid, "revoked", $close),
            BlockReason::Denied => concat!($open, $decision, $mid, "denied", $close),
            BlockReason::IpUnfiled => concat!($open, $decision, $mid, "ip_unfiled", $close),
            BlockReason::InvalidHost => concat!($open, $decision, $mid, "invalid_host", $close),
        }
    };
}

/// A method as the lines write it: an HTTP token (RFC 9110 §5.6.2: no quote, backslash,
/// control or non-ASCII byte, which both request parsers enforce), so nothing to escape; anything
/// else would read `OTHER`.
#[inline]
fn method(m: &str) -> &[u8] {
    let token = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
    if m.bytes().all(token) {
        m.as_bytes()
    } else {
        b"OTHER"
    }
}

/// The record that decided, by name: where it starts in the decided host's text.
fn matched_name<'h>(host: Shown<'h>, decided: &Decided, is_ip: bool) -> Option<Shown<'h>> {
    let at = decided.matched? as usize;
    if is_ip {
        // An IP record is the address itself (without the brackets of a v6 Host).
        let text = host.text;
        let trimmed = text.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]"));
        return Some(Shown {
            text: trimmed.unwrap_or(text),
            plain: host.plain,
        });
    }
    host.from(at)
}

/// Appends a request's audit line to `out` (`record` writes it through the audit log's writer;
/// public for the formatting bench, `benches/log_line.rs`).
pub fn audit_request_line(out: &mut Vec<u8>, common: &Common<'_>, r: &AccessRecord<'_>) {
    let host = common.host;
    let mut line = Line::<true>::start(out, &common.stamp);
    line.plain(key!("listener"), common.listener);
    match &common.client {
        Some(c) => line.plain(key!("client"), c.full()),
        None => line.null(key!("client")),
    }
    host.write(&mut line, key!("host"));
    line.raw(outcome_fields!(
        r.decided.outcome,
        ",\"decision\":\"",
        "\",\"reason\":\"",
        "\""
    ));
    let is_ip = matches!(r.host, Some(Host::Ip(_)));
    match matched_name(host, &r.decided, is_ip) {
        Some(name) => name.write(&mut line, key!("matched")),
        None => line.null(key!("matched")),
    }
    match r.decided.serial {
        Some(serial) => line.uint(key!("serial"), serial),
        None => line.null(key!("serial")),
    }
    match r.request_id {
        Some(id) => line.id(key!("request_id"), id),
        None => line.null(key!("request_id")),
    }
    line.plain(key!("method"), method(r.method));
    line.status(key!("status"), r.status);
    if let Some(invalid) = r.invalid {
        line.label(key!("invalid_host"), invalid.code());
    }
    line.finish();
}

/// Appends a request's access line to `out`, as `audit_request_line` does its audit line.
pub fn access_line(out: &mut Vec<u8>, style: Style, common: &Common<'_>, r: &AccessRecord<'_>) {
    match style {
        Style::Json => access_fields::<true>(out, common, r),
        Style::Text => access_fields::<false>(out, common, r),
    }
}

fn access_fields<const JSON: bool>(out: &mut Vec<u8>, common: &Common<'_>, r: &AccessRecord<'_>) {
    let mut line = Line::<JSON>::start(out, &common.stamp);
    line.plain(key!("icp_gate.listener"), common.listener);
    if let Some(c) = &common.client {
        line.plain(key!("client.address"), c.ip());
        line.uint(key!("client.port"), u64::from(c.port));
    }
    line.plain(key!("http.request.method"), method(r.method));
    common.host.write(&mut line, key!("server.address"));
    if !r.path.is_empty() {
        line.bytes(key!("url.path"), r.path);
    }
    line.label(key!("network.protocol.version"), r.version);
    if r.status != 0 {
        line.status(key!("http.response.status_code"), r.status);
    }
    line.raw(if JSON {
        outcome_fields!(
            r.decided.outcome,
            ",\"icp_gate.decision\":\"",
            "\",\"icp_gate.reason\":\"",
            "\""
        )
    } else {
        outcome_fields!(
            r.decided.outcome,
            " icp_gate.decision=\"",
            "\" icp_gate.reason=\"",
            "\""
        )
    });
    if let Some(invalid) = r.invalid {
        line.label(key!("icp_gate.invalid_host"), invalid.code());
    }
    if let Some(id) = r.request_id {
        line.id(key!("icp_gate.request_id"), id);
    }
    line.uint(
        key!("icp_gate.duration_us"),
        r.started.elapsed().as_micros() as u64,
    );
    if let Some(e) = r.error {
        line.label(key!("error.type"), e.etype().as_str());
        line.str(key!("icp_gate.error"), e.to_string().trim());
    }
    line.finish();
}

fn audit_tls_line(out: &mut Vec<u8>, stamp: &Stamp, r: &TlsRecord<'_>) {
    let mut line = Line::<true>::start(out, stamp);
    line.str(key!("listener"), r.listener);
    match r.client {
        Some(c) => line.socket_addr(key!("client"), c),
        None => line.null(key!("client")),
    }
    match r.sni {
        Some(sni) => line.bytes(key!("sni"), sni),
        None => line.null(key!("sni")),
    }
    if let Some(ip) = r.ip {
        line.ip(key!("address"), ip);
    }
    line.label(key!("decision"), r.decision);
    line.label(key!("reason"), r.reason);
    // An IP record is the address itself; a name's, where it starts in the decided name.
    match (r.decided.and_then(|d| d.matched), r.ip, r.sni) {
        (Some(_), Some(ip), _) => line.ip(key!("matched"), ip),
        (Some(at), None, Some(sni)) if (at as usize) < sni.len() => {
            line.bytes(key!("matched"), &sni[at as usize..])
        }
        _ => line.null(key!("matched")),
    }
    match r.decided.and_then(|d| d.serial) {
        Some(serial) => line.uint(key!("serial"), serial),
        None => line.null(key!("serial")),
    }
    line.id(key!("request_id"), r.request_id);
    line.finish();
}

fn tls_access_line(
    out: &mut Vec<u8>,
    style: Style,
    stamp: &Stamp,
    r: &TlsRecord<'_>,
    f: &TlsFacts<'_>,
) {
    match style {
        Style::Json => tls_access_fields::<true>(out, stamp, r, f),
        Style::Text => tls_access_fields::<false>(out, stamp, r, f),
    }
}

fn tls_access_fields<const JSON: bool>(
    out: &mut Vec<u8>,
    stamp: &Stamp,
    r: &TlsRecord<'_>,
    f: &TlsFacts<'_>,
) {
    let mut line = Line::<JSON>::start(out, stamp);
    line.str(key!("icp_gate.listener"), r.listener);
    if let Some(c) = r.client {
        line.ip(key!("client.address"), c.ip());
        line.uint(key!("client.port"), u64::from(c.port()));
    }
    if let Some(sni) = f.sni {
        line.bytes(key!("tls.client.server_name"), sni);
    }
    if let Some(ip) = r.ip {
        line.ip(key!("server.address"), ip);
    }
    line.label(key!("icp_gate.decision"), r.decision);
    line.label(key!("icp_gate.reason"), r.reason);
    line.id(key!("icp_gate.request_id"), r.request_id);
    line.str(key!("tls.client.alpn"), f.alpn);
    line.bool(key!("icp_gate.tls.ech"), f.ech);
    line.uint(
        key!("icp_gate.tls.client_hello_bytes"),
        f.client_hello_bytes as u64,
    );
    line.uint(key!("icp_gate.tls.client_hello_records"), f.records as u64);
    if !f.detail.is_empty() {
        line.str(key!("icp_gate.detail"), f.detail);
    }
    if let Some(dst) = f.original_dst {
        line.socket_addr(key!("icp_gate.original_destination"), dst);
    }
    if let Some((up, down, end, duration)) = f.relayed {
        line.uint(key!("icp_gate.to_upstream_bytes"), up);
        line.uint(key!("icp_gate.to_client_bytes"), down);
        line.str(key!("icp_gate.end"), end);
        line.uint(key!("icp_gate.duration_us"), duration.as_micros() as u64);
    }
    line.finish();
}

/// The access line on standard error, as a `tracing` event (no `access_log_file`).
fn trace_request(r: &AccessRecord<'_>, host: &[u8]) {
    let host = escape_for_log(&String::from_utf8_lossy(host));
    tracing::info!(
        target: "icp_gate::access",
        listener = r.listener,
        client = r.client.map(|c| c.to_string()).unwrap_or_default(),
        method = r.method,
        host = host,
        decision = r.decided.outcome.decision_label(),
        reason = r.decided.outcome.reason_label(),
        invalid_host = r.invalid.map(InvalidHost::code).unwrap_or(""),
        status = r.status,
        duration_us = r.started.elapsed().as_micros() as u64,
        request_id = r.request_id.unwrap_or(""),
        error = r.error.map(|e| e.to_string()).unwrap_or_default(),
        "request"
    );
}

/// A TLS connection's line on standard error (no `access_log_file`).
fn trace_tls(r: &TlsRecord<'_>, f: &TlsFacts<'_>, message: &'static str) {
    let sni = f
        .sni
        .map(|s| escape_for_log(&String::from_utf8_lossy(s)))
        .unwrap_or_default();
    let client = r.client.map(|c| c.to_string()).unwrap_or_default();
    match f.relayed {
        Some((to_upstream, to_client, end, duration)) => tracing::info!(
            target: "icp_gate::access",
            listener = r.listener,
            client,
            sni,
            decision = r.decision,
            reason = r.reason,
            to_upstream,
            to_client,
            end,
            duration_us = duration.as_micros() as u64,
            "{message}"
        ),
        None => tracing::info!(
            target: "icp_gate::tls",
            listener = r.listener,
            client,
            sni,
            alpn = escape_for_log(f.alpn),
            ech = f.ech,
            client_hello_bytes = f.client_hello_bytes,
            records = f.records,
            decision = r.decision,
            reason = r.reason,
            detail = f.detail,
            original_dst = f.original_dst.map(|d| d.to_string()).unwrap_or_default(),
            "{message}"
        ),
    }
}

/// Printable ASCII kept, everything else escaped, capped in length (the `tracing` lines).
pub fn escape_for_log(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_LOGGED_HOST) + 8);
    for c in s.chars() {
        if out.len() >= MAX_LOGGED_HOST {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() && c != '\\' && c != '"' {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields made at compile time say what the labels say, for every outcome.
    #[test]
    fn outcome_fields_match_the_labels() {
        let mut all = vec![Outcome::Pending, Outcome::Allowed, Outcome::NotReady];
        for r in [
            BlockReason::Unfiled,
            BlockReason::Unconnected,
            BlockReason::Revoked,
            BlockReason::Denied,
            BlockReason::IpUnfiled,
            BlockReason::InvalidHost,
        ] {
            all.push(Outcome::Blocked(r));
            all.push(Outcome::Monitored(r));
        }
        for o in all {
            let made = outcome_fields!(o, "<", "|", ">");
            let want = format!("<{}|{}>", o.decision_label(), o.reason_label());
            assert_eq!(made, want, "{o:?}");
        }
    }

    #[test]
    fn log_values_cannot_break_lines() {
        let e = escape_for_log("evil.com\n2026-01-01 INFO forged=\"1\"");
        assert!(!e.contains('\n'));
        assert!(!e.contains('"'));
        assert!(escape_for_log(&"a".repeat(5000)).len() < 300);
    }
}
