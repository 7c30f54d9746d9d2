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

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use icp_gate_registry::{Host, InvalidHost};

use crate::gate::{Decided, Outcome};
use crate::log_line::{Line, Style};
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
}

/// One request, as its log lines tell it.
pub struct AccessRecord<'a> {
    pub listener: &'a str,
    pub client: Option<SocketAddr>,
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
    pub duration: Duration,
    pub request_id: Option<&'a str>,
    pub error: Option<&'a pingora::Error>,
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
        // The host as decided, or, when none could be read, as sent.
        let raw;
        let host: &[u8] = match r.host {
            Some(Host::Domain(name)) => name.as_bytes(),
            Some(host @ Host::Ip(_)) => {
                raw = host.to_string();
                raw.as_bytes()
            }
            None => {
                raw = raw_host();
                raw.as_bytes()
            }
        };
        let key = shard_key(r.client);
        if let Some(audit) = audit {
            audit.write_line(key, |out| audit_request_line(out, &r, host));
        }
        if !access {
            return;
        }
        match &self.file {
            Some((sink, style)) => sink.write_line(key, |out| access_line(out, *style, &r, host)),
            None => trace_request(&r, host),
        }
    }

    /// The lines of a TLS connection refused on its ClientHello (or passed through in monitor
    /// mode, at the moment it is): its audit line, and when refused its access line (a
    /// passed-through connection gets its access line when it ends, `tls_passed`).
    pub fn tls_decided(&self, r: &TlsRecord<'_>, facts: &TlsFacts<'_>, refused: bool) {
        let key = shard_key(r.client);
        let audit = r.decided.is_none_or(|d| audited(d.outcome));
        if let (Some(sink), true) = (&self.audit, audit) {
            sink.write_line(key, |out| audit_tls_line(out, r));
        }
        if !refused {
            return;
        }
        match &self.file {
            Some((sink, style)) => {
                if self.sampled() {
                    sink.write_line(key, |out| tls_access_line(out, *style, r, facts));
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
                tls_access_line(out, *style, r, facts)
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

/// The record that decided, by name: where it starts in the decided host's text.
fn matched_name<'h>(host: &'h [u8], decided: &Decided, is_ip: bool) -> Option<&'h [u8]> {
    let at = decided.matched? as usize;
    if is_ip {
        // An IP record is the address itself (without the brackets of a v6 Host).
        let trimmed = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]"));
        return Some(trimmed.unwrap_or(host));
    }
    host.get(at..)
}

fn opt_uint(line: &mut Line<'_>, key: &str, value: Option<u64>) {
    match value {
        Some(v) => line.uint(key, v),
        None => line.null(key),
    }
}

fn audit_request_line(out: &mut Vec<u8>, r: &AccessRecord<'_>, host: &[u8]) {
    let mut line = Line::start(out, Style::Json);
    line.str("listener", r.listener);
    match r.client {
        Some(c) => line.socket_addr("client", c),
        None => line.null("client"),
    }
    line.bytes("host", host);
    line.label("decision", r.decided.outcome.decision_label());
    line.label("reason", r.decided.outcome.reason_label());
    let is_ip = matches!(r.host, Some(Host::Ip(_)));
    match matched_name(host, &r.decided, is_ip) {
        Some(name) => line.bytes("matched", name),
        None => line.null("matched"),
    }
    opt_uint(&mut line, "serial", r.decided.serial);
    match r.request_id {
        Some(id) => line.str("request_id", id),
        None => line.null("request_id"),
    }
    line.str("method", r.method);
    line.uint("status", u64::from(r.status));
    if let Some(invalid) = r.invalid {
        line.label("invalid_host", invalid.code());
    }
    line.finish();
}

fn access_line(out: &mut Vec<u8>, style: Style, r: &AccessRecord<'_>, host: &[u8]) {
    let mut line = Line::start(out, style);
    line.str("icp_gate.listener", r.listener);
    if let Some(c) = r.client {
        line.ip("client.address", c.ip());
        line.uint("client.port", u64::from(c.port()));
    }
    line.str("http.request.method", r.method);
    line.bytes("server.address", host);
    if !r.path.is_empty() {
        line.bytes("url.path", r.path);
    }
    line.label("network.protocol.version", r.version);
    if r.status != 0 {
        line.uint("http.response.status_code", u64::from(r.status));
    }
    line.label("icp_gate.decision", r.decided.outcome.decision_label());
    line.label("icp_gate.reason", r.decided.outcome.reason_label());
    if let Some(invalid) = r.invalid {
        line.label("icp_gate.invalid_host", invalid.code());
    }
    if let Some(id) = r.request_id {
        line.str("icp_gate.request_id", id);
    }
    line.uint("icp_gate.duration_us", r.duration.as_micros() as u64);
    if let Some(e) = r.error {
        line.label("error.type", e.etype().as_str());
        line.str("icp_gate.error", e.to_string().trim());
    }
    line.finish();
}

fn audit_tls_line(out: &mut Vec<u8>, r: &TlsRecord<'_>) {
    let mut line = Line::start(out, Style::Json);
    line.str("listener", r.listener);
    match r.client {
        Some(c) => line.socket_addr("client", c),
        None => line.null("client"),
    }
    match r.sni {
        Some(sni) => line.bytes("sni", sni),
        None => line.null("sni"),
    }
    if let Some(ip) = r.ip {
        line.ip("address", ip);
    }
    line.label("decision", r.decision);
    line.label("reason", r.reason);
    // An IP record is the address itself; a name's, where it starts in the decided name.
    match (r.decided.and_then(|d| d.matched), r.ip, r.sni) {
        (Some(_), Some(ip), _) => line.ip("matched", ip),
        (Some(at), None, Some(sni)) if (at as usize) < sni.len() => {
            line.bytes("matched", &sni[at as usize..])
        }
        _ => line.null("matched"),
    }
    opt_uint(&mut line, "serial", r.decided.and_then(|d| d.serial));
    line.str("request_id", r.request_id);
    line.finish();
}

fn tls_access_line(out: &mut Vec<u8>, style: Style, r: &TlsRecord<'_>, f: &TlsFacts<'_>) {
    let mut line = Line::start(out, style);
    line.str("icp_gate.listener", r.listener);
    if let Some(c) = r.client {
        line.ip("client.address", c.ip());
        line.uint("client.port", u64::from(c.port()));
    }
    if let Some(sni) = r.sni {
        line.bytes("tls.client.server_name", sni);
    }
    if let Some(ip) = r.ip {
        line.ip("server.address", ip);
    }
    line.label("icp_gate.decision", r.decision);
    line.label("icp_gate.reason", r.reason);
    line.str("icp_gate.request_id", r.request_id);
    line.str("tls.client.alpn", f.alpn);
    line.bool("icp_gate.tls.ech", f.ech);
    line.uint(
        "icp_gate.tls.client_hello_bytes",
        f.client_hello_bytes as u64,
    );
    line.uint("icp_gate.tls.client_hello_records", f.records as u64);
    if !f.detail.is_empty() {
        line.str("icp_gate.detail", f.detail);
    }
    if let Some(dst) = f.original_dst {
        line.socket_addr("icp_gate.original_destination", dst);
    }
    if let Some((up, down, end, duration)) = f.relayed {
        line.uint("icp_gate.to_upstream_bytes", up);
        line.uint("icp_gate.to_client_bytes", down);
        line.str("icp_gate.end", end);
        line.uint("icp_gate.duration_us", duration.as_micros() as u64);
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
        duration_us = r.duration.as_micros() as u64,
        request_id = r.request_id.unwrap_or(""),
        error = r.error.map(|e| e.to_string()).unwrap_or_default(),
        "request"
    );
}

/// A TLS connection's line on standard error (no `access_log_file`).
fn trace_tls(r: &TlsRecord<'_>, f: &TlsFacts<'_>, message: &'static str) {
    let sni = r
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

    #[test]
    fn log_values_cannot_break_lines() {
        let e = escape_for_log("evil.com\n2026-01-01 INFO forged=\"1\"");
        assert!(!e.contains('\n'));
        assert!(!e.contains('"'));
        assert!(escape_for_log(&"a".repeat(5000)).len() < 300);
    }
}
