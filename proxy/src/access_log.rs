//! One access line per request, switchable and sampled. Everything echoed from the client is
//! escaped and capped so a Host cannot forge or bloat log lines.

use std::net::SocketAddr;
use std::time::Duration;

use icp_gate_registry::{Host, InvalidHost};

use crate::gate::Outcome;

const MAX_LOGGED_HOST: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct AccessLog {
    enabled: bool,
    /// Fraction of requests that get a line.
    sample: f64,
}

pub struct AccessRecord<'a, F: FnOnce() -> String> {
    pub listener: &'a str,
    pub client: Option<SocketAddr>,
    pub method: &'a str,
    pub host: Option<&'a Host>,
    /// Called only when a line is written and no normalized host exists.
    pub raw_host: F,
    pub invalid: Option<InvalidHost>,
    pub outcome: Outcome,
    pub status: u16,
    pub duration: Duration,
    pub request_id: Option<&'a str>,
    pub error: Option<&'a pingora::Error>,
}

impl AccessLog {
    pub fn new(enabled: bool, sample: f64) -> Self {
        AccessLog { enabled, sample }
    }

    fn sampled(&self) -> bool {
        self.enabled && (self.sample >= 1.0 || fastrand::f64() < self.sample)
    }

    /// Whether this one request or connection gets a line (switched on, at INFO, and picked
    /// by the sample): for lines written outside `record`.
    pub fn this_one(&self) -> bool {
        self.wants_line() && self.sampled()
    }

    /// Whether access lines are written at all: lets a caller skip gathering the fields.
    pub fn wants_line(&self) -> bool {
        self.enabled && tracing::enabled!(target: "icp_gate::access", tracing::Level::INFO)
    }

    pub fn record<F: FnOnce() -> String>(&self, r: AccessRecord<'_, F>) {
        if !self.sampled() || !tracing::enabled!(target: "icp_gate::access", tracing::Level::INFO) {
            return;
        }
        let host = match r.host {
            Some(h) => h.to_string(),
            None => escape_for_log(&(r.raw_host)()),
        };
        tracing::info!(
            target: "icp_gate::access",
            listener = r.listener,
            client = r.client.map(|c| c.to_string()).unwrap_or_default(),
            method = r.method,
            host = host,
            decision = r.outcome.decision_label(),
            reason = r.outcome.reason_label(),
            invalid_host = r.invalid.map(InvalidHost::code).unwrap_or(""),
            status = r.status,
            duration_us = r.duration.as_micros() as u64,
            request_id = r.request_id.unwrap_or(""),
            error = r.error.map(|e| e.to_string()).unwrap_or_default(),
            "request"
        );
    }
}

/// Printable ASCII kept, everything else escaped, capped in length.
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
