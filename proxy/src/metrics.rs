//! Prometheus metrics. Per-request counters are resolved to handles once per listener, so the
//! request path increments an atomic and never hashes label values. Never a host as a label.

use std::sync::Arc;

use icp_gate_config::certs::Rejection;
use icp_gate_registry::{BlockReason, RejectReason};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::destination::DestinationError;
use crate::gate::Outcome;
use crate::log_writer::LogCounters;
use crate::tls::hello::HelloFailure;
use crate::top::TopBlocked;

/// `reason` label when the gate answers before any registry is loaded.
pub const NOT_READY: &str = "registry_not_ready";

/// Upper bounds (seconds) of `icp_gate_request_duration_seconds`: a block page takes tens of
/// microseconds, a forwarded request as long as its origin.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The `decision` labels of `icp_gate_request_duration_seconds`, in the order of
/// `ListenerCounters::durations`.
const DURATION_DECISIONS: [&str; 3] = ["allowed", "blocked", "monitored"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    pub registry_entries: IntGauge,
    pub registry_serial: IntGauge,
    pub registry_last_success: Gauge,
    pub registry_last_attempt: Gauge,
    pub registry_load_seconds: Gauge,
    pub registry_ready: IntGauge,
    /// Set at each scrape: how old the export in service is.
    registry_age: Gauge,
    sync_total: IntCounterVec,
    rejected_total: IntCounterVec,
    bad_requests: IntCounterVec,
    pub deltas_applied: IntCounter,
    pub delta_compactions: IntCounter,
    pub registry_overlay: IntGauge,
    pub registry_base_serial: IntGauge,
    /// Syncs that panicked (each also counted as `error` in the sync total).
    pub sync_panics: IntCounter,
    tls_connections: IntCounterVec,
    tls_abandoned: IntCounterVec,
    tls_passthrough_open: IntGaugeVec,
    tls_relayed_bytes: IntCounterVec,
    upstream_errors: IntCounterVec,
    open_connections: IntGaugeVec,
    connections_rejected: IntCounterVec,
    tls_terminated: IntCounterVec,
    tls_certificate_expiry: IntGaugeVec,
    tls_certificates_rejected: IntCounterVec,
    pub tls_certificates_loaded: IntGauge,
    tls_certificate_reloads: IntCounterVec,
    tls_ticket_key_reloads: IntCounterVec,
    request_duration: HistogramVec,
    /// The audit log's writer (`[log] audit_log`).
    pub audit_log: LogCounters,
    /// The access log file's writer (`[log] access_log_file`).
    pub access_log_file: LogCounters,
    /// The blocked names (`/top/blocked`), shared by every listener's counters.
    pub top: Arc<TopBlocked>,
    /// Set at each scrape from `top`.
    blocked_names: IntGaugeVec,
    admin_refused: IntCounterVec,
    admin_token_reloads: IntCounterVec,
}

/// Why the admin listener refused a request (`icp_gate_admin_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    /// A token is required and none was sent: 401.
    TokenMissing,
    /// The token sent is not the one in `admin.token_file`: 401.
    TokenWrong,
    /// The Host is not an IP literal, `localhost` or a name in `admin.allowed_hosts`: 403.
    HostNotAllowed,
    /// A browser's Origin on a request that changes something is not the listener's own nor an
    /// allowed host: 403.
    OriginNotAllowed,
}

impl AdminRefusal {
    pub const ALL: [AdminRefusal; 4] = [
        AdminRefusal::TokenMissing,
        AdminRefusal::TokenWrong,
        AdminRefusal::HostNotAllowed,
        AdminRefusal::OriginNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AdminRefusal::TokenMissing => "token_missing",
            AdminRefusal::TokenWrong => "token_wrong",
            AdminRefusal::HostNotAllowed => "host_not_allowed",
            AdminRefusal::OriginNotAllowed => "origin_not_allowed",
        }
    }
}

/// Why the front end refused to read a request at all (`icp_gate_bad_requests_total`): these
/// never reach a decision, so they are not in `icp_gate_requests_total`.
#[derive(Clone, Copy, Debug)]
pub enum BadRequest {
    /// The head grew past `max_header_bytes`: answered 431, connection closed.
    HeadTooLarge,
    /// The head was not complete within `header_read_timeout_seconds`: connection closed.
    HeadTimeout,
    /// A request target that is none of origin-form, absolute-form, or `*` with OPTIONS: 400.
    BadTarget,
    /// CONNECT: 405.
    Connect,
    /// An allowed Host the terminated connection's certificate does not cover: 421.
    Misdirected,
}

impl BadRequest {
    pub const ALL: [BadRequest; 5] = [
        BadRequest::HeadTooLarge,
        BadRequest::HeadTimeout,
        BadRequest::BadTarget,
        BadRequest::Connect,
        BadRequest::Misdirected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::HeadTooLarge => "head_too_large",
            BadRequest::HeadTimeout => "head_timeout",
            BadRequest::BadTarget => "bad_target",
            BadRequest::Connect => "connect",
            BadRequest::Misdirected => "misdirected",
        }
    }
}

/// Sync results, the `result` label of `icp_gate_registry_sync_total`.
#[derive(Clone, Copy, Debug)]
pub enum SyncResult {
    Success,
    Unchanged,
    Rejected,
    Error,
}

impl SyncResult {
    fn as_str(self) -> &'static str {
        match self {
            SyncResult::Success => "success",
            SyncResult::Unchanged => "unchanged",
            SyncResult::Rejected => "rejected",
            SyncResult::Error => "error",
        }
    }
}

/// Certificate reload results, the `result` label of `icp_gate_tls_certificate_reloads_total`.
#[derive(Clone, Copy, Debug)]
pub enum CertReload {
    /// The directory was read and its good certificates swapped in (files that failed are
    /// counted in `icp_gate_tls_certificates_rejected_total`).
    Success,
    /// The directory could not be read: the certificates in service stay.
    Error,
}

impl CertReload {
    fn as_str(self) -> &'static str {
        match self {
            CertReload::Success => "success",
            CertReload::Error => "error",
        }
    }
}

impl Metrics {
    /// Metrics with a one-shard `/top/blocked` summary of the default capacity (tests).
    pub fn new() -> Arc<Self> {
        Self::with_top(TopBlocked::new(crate::top::DEFAULT_CAPACITY, 1))
    }

    /// Metrics whose listeners record blocked names into `top`.
    pub fn with_top(top: TopBlocked) -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "icp_gate_requests_total",
                "Requests decided, by listener, decision (allowed, blocked, monitored) and reason",
            ),
            &["listener", "decision", "reason"],
        )
        .unwrap();
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).unwrap();
        let fgauge = |name: &str, help: &str| Gauge::new(name, help).unwrap();
        let counter = |name: &str, help: &str| IntCounter::new(name, help).unwrap();
        let m = Metrics {
            registry_entries: gauge(
                "icp_gate_registry_entries",
                "Records in the registry in service",
            ),
            registry_serial: gauge(
                "icp_gate_registry_serial",
                "Serial of the registry in service",
            ),
            registry_last_success: fgauge(
                "icp_gate_registry_last_success_timestamp_seconds",
                "Unix time of the last sync that found the source good (loaded or unchanged)",
            ),
            registry_last_attempt: fgauge(
                "icp_gate_registry_last_attempt_timestamp_seconds",
                "Unix time of the last sync attempt, whatever its result",
            ),
            registry_load_seconds: fgauge(
                "icp_gate_registry_load_duration_seconds",
                "Time to parse, check and build the registry in service",
            ),
            registry_ready: gauge(
                "icp_gate_registry_ready",
                "1 once a registry is in service (the gate decides), 0 before",
            ),
            registry_age: fgauge(
                "icp_gate_registry_snapshot_age_seconds",
                "Seconds since the registry in service was exported (its generated_at); \
                 grows when the exporter stops publishing, even if the source still answers",
            ),
            sync_total: IntCounterVec::new(
                Opts::new(
                    "icp_gate_registry_sync_total",
                    "Registry sync attempts by result",
                ),
                &["result"],
            )
            .unwrap(),
            rejected_total: IntCounterVec::new(
                Opts::new(
                    "icp_gate_registry_rejected_total",
                    "Snapshots and deltas refused (the registry in service stayed), by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            bad_requests: IntCounterVec::new(
                Opts::new(
                    "icp_gate_bad_requests_total",
                    "Request heads refused before any decision, by listener and reason \
                     (head_too_large, head_timeout, bad_target, connect, misdirected)",
                ),
                &["listener", "reason"],
            )
            .unwrap(),
            deltas_applied: IntCounter::new(
                "icp_gate_registry_deltas_applied_total",
                "Registry deltas applied (each moved the serial in service forward)",
            )
            .unwrap(),
            delta_compactions: IntCounter::new(
                "icp_gate_registry_delta_compactions_total",
                "Times the changes deltas made were folded into a fresh index",
            )
            .unwrap(),
            registry_overlay: gauge(
                "icp_gate_registry_overlay_entries",
                "Domain changes deltas made that are held over the shared index (0 after a \
                 snapshot load; after a compaction, those made while it ran)",
            ),
            registry_base_serial: gauge(
                "icp_gate_registry_base_serial",
                "Serial of the full snapshot the registry in service was built from; below \
                 icp_gate_registry_serial when deltas were applied on top of it",
            ),
            sync_panics: IntCounter::new(
                "icp_gate_registry_sync_panics_total",
                "Registry syncs that panicked (a bug); each is also a sync with result error, and \
                 the next sync runs as usual",
            )
            .unwrap(),
            tls_connections: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_connections_total",
                    "Connections of tls listeners decided on their ClientHello, by listener, \
                     decision (allowed, blocked, monitored) and reason",
                ),
                &["listener", "decision", "reason"],
            )
            .unwrap(),
            tls_abandoned: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_abandoned_total",
                    "Connections of tls listeners closed by the client before their \
                     ClientHello was complete (nothing to decide)",
                ),
                &["listener"],
            )
            .unwrap(),
            tls_passthrough_open: IntGaugeVec::new(
                Opts::new(
                    "icp_gate_tls_passthrough_connections",
                    "TLS connections being passed through to an origin now",
                ),
                &["listener"],
            )
            .unwrap(),
            tls_relayed_bytes: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_relayed_bytes_total",
                    "Bytes relayed on passed-through TLS connections, by direction \
                     (to_upstream counts the ClientHello too)",
                ),
                &["listener", "direction"],
            )
            .unwrap(),
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "icp_gate_upstream_errors_total",
                    "Allowed connections or requests that could not be forwarded, by listener \
                     and reason (connect_failed, no_original_destination, loop, not_allowed)",
                ),
                &["listener", "reason"],
            )
            .unwrap(),
            open_connections: IntGaugeVec::new(
                Opts::new(
                    "icp_gate_open_connections",
                    "Client connections a listener holds open now",
                ),
                &["listener"],
            )
            .unwrap(),
            connections_rejected: IntCounterVec::new(
                Opts::new(
                    "icp_gate_connections_rejected_total",
                    "Client connections closed at accept because the listener held \
                     max_connections already",
                ),
                &["listener"],
            )
            .unwrap(),
            tls_terminated: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_terminated_total",
                    "Connections of tls listeners terminated by the gate (it holds a \
                     certificate for the SNI), by listener and result (handshake, \
                     handshake_failed); their requests count in icp_gate_requests_total",
                ),
                &["listener", "result"],
            )
            .unwrap(),
            tls_certificate_expiry: IntGaugeVec::new(
                Opts::new(
                    "icp_gate_tls_certificate_expiry_timestamp_seconds",
                    "Unix time of the notAfter of each TLS certificate in service, by file \
                     (NAME.crt); the series goes when the file leaves service",
                ),
                &["file"],
            )
            .unwrap(),
            tls_certificates_rejected: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_certificates_rejected_total",
                    "TLS certificate files left out at a load or reload (the others serve), by \
                     reason (unreadable, unparseable, unsupported_key, key_mismatch, expired, \
                     no_names, missing_pair)",
                ),
                &["reason"],
            )
            .unwrap(),
            tls_certificates_loaded: gauge(
                "icp_gate_tls_certificates_loaded",
                "TLS certificates in service (good NAME.crt + NAME.key pairs)",
            ),
            tls_certificate_reloads: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_certificate_reloads_total",
                    "Reloads of the TLS certificate directory (SIGHUP, a change, an expiry) by \
                     result (success, error: the directory could not be read)",
                ),
                &["result"],
            )
            .unwrap(),
            tls_ticket_key_reloads: IntCounterVec::new(
                Opts::new(
                    "icp_gate_tls_ticket_key_reloads_total",
                    "Reloads of the session ticket key file ([tls] session_ticket_keys: SIGHUP, a \
                     change) by result (success, error: the keys in service stay)",
                ),
                &["result"],
            )
            .unwrap(),
            top: Arc::new(top),
            blocked_names: IntGaugeVec::new(
                Opts::new(
                    "icp_gate_blocked_names_estimate",
                    "Distinct names (hosts, SNI names, IP addresses) blocked or monitored since \
                     start, by decision: a HyperLogLog estimate (0.8 % standard error)",
                ),
                &["decision"],
            )
            .unwrap(),
            admin_refused: IntCounterVec::new(
                Opts::new(
                    "icp_gate_admin_refused_total",
                    "Admin requests refused, by reason (token_missing, token_wrong, \
                     host_not_allowed, origin_not_allowed)",
                ),
                &["reason"],
            )
            .unwrap(),
            admin_token_reloads: IntCounterVec::new(
                Opts::new(
                    "icp_gate_admin_token_reloads_total",
                    "Reads of admin.token_file after the start (SIGHUP), by result (success, \
                     error: the token in service stays)",
                ),
                &["result"],
            )
            .unwrap(),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "icp_gate_request_duration_seconds",
                    "Time from a request's head being read to its answer being written (the \
                     origin's relayed, for forwarded requests), by listener and decision",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["listener", "decision"],
            )
            .unwrap(),
            audit_log: LogCounters {
                lines: counter(
                    "icp_gate_audit_lines_total",
                    "Lines written to the audit log (one per blocked or monitored decision)",
                ),
                backpressure: counter(
                    "icp_gate_audit_backpressure_total",
                    "Times a request waited because the audit log's writer was behind (no line \
                     is ever dropped; any increase is a problem to look into)",
                ),
                write_errors: counter(
                    "icp_gate_audit_write_errors_total",
                    "Failed writes, fsyncs and reopens of the audit log (a failed write is \
                     retried: its lines are kept)",
                ),
            },
            access_log_file: LogCounters {
                lines: counter(
                    "icp_gate_access_log_lines_total",
                    "Lines written to the access log file",
                ),
                backpressure: counter(
                    "icp_gate_access_log_backpressure_total",
                    "Times a request waited because the access log's writer was behind",
                ),
                write_errors: counter(
                    "icp_gate_access_log_write_errors_total",
                    "Failed writes, fsyncs and reopens of the access log file (a failed write \
                     is retried: its lines are kept)",
                ),
            },
            requests,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone())).unwrap();
        r.register(Box::new(m.registry_entries.clone())).unwrap();
        r.register(Box::new(m.registry_serial.clone())).unwrap();
        r.register(Box::new(m.registry_last_success.clone()))
            .unwrap();
        r.register(Box::new(m.registry_last_attempt.clone()))
            .unwrap();
        r.register(Box::new(m.registry_load_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.registry_ready.clone())).unwrap();
        r.register(Box::new(m.registry_age.clone())).unwrap();
        r.register(Box::new(m.sync_total.clone())).unwrap();
        r.register(Box::new(m.rejected_total.clone())).unwrap();
        r.register(Box::new(m.bad_requests.clone())).unwrap();
        r.register(Box::new(m.deltas_applied.clone())).unwrap();
        r.register(Box::new(m.delta_compactions.clone())).unwrap();
        r.register(Box::new(m.registry_overlay.clone())).unwrap();
        r.register(Box::new(m.registry_base_serial.clone()))
            .unwrap();
        r.register(Box::new(m.sync_panics.clone())).unwrap();
        r.register(Box::new(m.tls_connections.clone())).unwrap();
        r.register(Box::new(m.tls_abandoned.clone())).unwrap();
        r.register(Box::new(m.tls_passthrough_open.clone()))
            .unwrap();
        r.register(Box::new(m.tls_relayed_bytes.clone())).unwrap();
        r.register(Box::new(m.upstream_errors.clone())).unwrap();
        r.register(Box::new(m.open_connections.clone())).unwrap();
        r.register(Box::new(m.connections_rejected.clone()))
            .unwrap();
        r.register(Box::new(m.tls_terminated.clone())).unwrap();
        r.register(Box::new(m.tls_certificate_expiry.clone()))
            .unwrap();
        r.register(Box::new(m.tls_certificates_rejected.clone()))
            .unwrap();
        r.register(Box::new(m.tls_certificates_loaded.clone()))
            .unwrap();
        r.register(Box::new(m.tls_certificate_reloads.clone()))
            .unwrap();
        r.register(Box::new(m.tls_ticket_key_reloads.clone()))
            .unwrap();
        r.register(Box::new(m.request_duration.clone())).unwrap();
        for log in [&m.audit_log, &m.access_log_file] {
            r.register(Box::new(log.lines.clone())).unwrap();
            r.register(Box::new(log.backpressure.clone())).unwrap();
            r.register(Box::new(log.write_errors.clone())).unwrap();
        }
        r.register(Box::new(m.blocked_names.clone())).unwrap();
        r.register(Box::new(m.admin_refused.clone())).unwrap();
        r.register(Box::new(m.admin_token_reloads.clone())).unwrap();
        // Every series exists from the start at 0, so alerts on rate() see the first event.
        for result in [
            SyncResult::Success,
            SyncResult::Unchanged,
            SyncResult::Rejected,
            SyncResult::Error,
        ] {
            m.sync_total.with_label_values(&[result.as_str()]);
        }
        for reason in RejectReason::ALL {
            m.rejected_total.with_label_values(&[reason.as_str()]);
        }
        for reason in Rejection::ALL {
            m.tls_certificates_rejected
                .with_label_values(&[reason.as_str()]);
        }
        for result in [CertReload::Success, CertReload::Error] {
            m.tls_certificate_reloads
                .with_label_values(&[result.as_str()]);
            m.tls_ticket_key_reloads
                .with_label_values(&[result.as_str()]);
        }
        for decision in ["blocked", "monitored"] {
            m.blocked_names.with_label_values(&[decision]);
        }
        for reason in AdminRefusal::ALL {
            m.admin_refused.with_label_values(&[reason.as_str()]);
        }
        for result in ["success", "error"] {
            m.admin_token_reloads.with_label_values(&[result]);
        }
        let build = IntGauge::with_opts(
            Opts::new("icp_gate_build_info", "Build of the running gate")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .unwrap();
        build.set(1);
        r.register(Box::new(build)).unwrap();
        Arc::new(m)
    }

    pub fn sync(&self, result: SyncResult) {
        self.sync_total.with_label_values(&[result.as_str()]).inc();
    }

    pub fn rejected(&self, reason: RejectReason) {
        self.rejected_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A TLS certificate file left out of service.
    pub fn tls_certificate_rejected(&self, reason: Rejection) {
        self.tls_certificates_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The TLS certificates now in service (file, notAfter), and the files that left service.
    pub fn tls_certificates_in_service(&self, held: &[(&str, i64)], gone: &[&str]) {
        for file in gone {
            let _ = self.tls_certificate_expiry.remove_label_values(&[file]);
        }
        for (file, not_after) in held {
            self.tls_certificate_expiry
                .with_label_values(&[file])
                .set(*not_after);
        }
        self.tls_certificates_loaded.set(held.len() as i64);
    }

    /// An admin request refused (also logged by the admin listener).
    pub fn admin_refused(&self, reason: AdminRefusal) {
        self.admin_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A re-read of the admin token file: `success` or `error`.
    pub fn admin_token_reload(&self, ok: bool) {
        self.admin_token_reloads
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    pub fn tls_certificate_reload(&self, result: CertReload) {
        self.tls_certificate_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn tls_ticket_key_reload(&self, result: CertReload) {
        self.tls_ticket_key_reloads
            .with_label_values(&[result.as_str()])
            .inc();
    }

    /// Counter handles for one listener.
    pub fn listener(&self, listener: &str) -> ListenerCounters {
        let c = |decision: &str, reason: &str| {
            self.requests
                .with_label_values(&[listener, decision, reason])
        };
        ListenerCounters {
            allowed: c("allowed", ""),
            blocked: BlockReason::ALL.map(|r| c("blocked", r.as_str())),
            monitored: BlockReason::ALL.map(|r| c("monitored", r.as_str())),
            not_ready: c("blocked", NOT_READY),
            bad: BadRequest::ALL
                .map(|r| self.bad_requests.with_label_values(&[listener, r.as_str()])),
            upstream_errors: UPSTREAM_ERRORS
                .map(|r| self.upstream_errors.with_label_values(&[listener, r])),
            open_connections: self.open_connections.with_label_values(&[listener]),
            connections_rejected: self.connections_rejected.with_label_values(&[listener]),
            durations: DURATION_DECISIONS
                .map(|d| self.request_duration.with_label_values(&[listener, d])),
            top: self.top.clone(),
        }
    }

    /// The counter of terminated connections of a listener with this result.
    pub fn tls_terminated(&self, listener: &str, result: &str) -> IntCounter {
        self.tls_terminated.with_label_values(&[listener, result])
    }

    /// Counter handles for one `tls` listener.
    pub fn tls_listener(&self, listener: &str) -> TlsCounters {
        let c = |decision: &str, reason: &str| {
            self.tls_connections
                .with_label_values(&[listener, decision, reason])
        };
        TlsCounters {
            allowed: c("allowed", ""),
            blocked: BlockReason::ALL.map(|r| c("blocked", r.as_str())),
            monitored: BlockReason::ALL.map(|r| c("monitored", r.as_str())),
            not_ready: c("blocked", NOT_READY),
            hello: HelloFailure::REASONS.map(|r| c("blocked", r)),
            abandoned: self.tls_abandoned.with_label_values(&[listener]),
            passthrough_open: self.tls_passthrough_open.with_label_values(&[listener]),
            to_upstream: self
                .tls_relayed_bytes
                .with_label_values(&[listener, "to_upstream"]),
            to_client: self
                .tls_relayed_bytes
                .with_label_values(&[listener, "to_client"]),
            top: self.top.clone(),
        }
    }

    /// The text exposition of every metric. `generated_at` is the unix time the registry in
    /// service was exported, if one is loaded.
    pub fn render(&self, generated_at: Option<i64>) -> Vec<u8> {
        if let Some(at) = generated_at {
            let now = icp_gate_registry::sync::unix_now();
            self.registry_age.set((now - at).max(0) as f64);
        }
        for (decision, monitored) in [("blocked", false), ("monitored", true)] {
            self.blocked_names
                .with_label_values(&[decision])
                .set(self.top.names_estimate(monitored) as i64);
        }
        let mut out = Vec::with_capacity(8 * 1024);
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec");
        out
    }
}

pub struct ListenerCounters {
    pub allowed: IntCounter,
    pub blocked: [IntCounter; 6],
    pub monitored: [IntCounter; 6],
    pub not_ready: IntCounter,
    /// Indexed by `BadRequest as usize`.
    pub bad: [IntCounter; 5],
    /// Indexed as `UPSTREAM_ERRORS`.
    pub upstream_errors: [IntCounter; 4],
    pub open_connections: IntGauge,
    pub connections_rejected: IntCounter,
    /// `icp_gate_request_duration_seconds` for allowed, blocked and monitored requests.
    durations: [Histogram; 3],
    /// Where blocked and monitored names are counted (`/top/blocked`).
    pub top: Arc<TopBlocked>,
}

/// `reason` values of `icp_gate_upstream_errors_total`: a connect that failed on every
/// candidate, then the destination errors.
pub const UPSTREAM_ERRORS: [&str; 4] = [
    "connect_failed",
    DestinationError::REASONS[0],
    DestinationError::REASONS[1],
    DestinationError::REASONS[2],
];

impl ListenerCounters {
    /// How long a decided request took, from its head to its answer. Requests that failed
    /// before a decision are not counted.
    pub fn request_took(&self, outcome: Outcome, took: std::time::Duration) {
        let i = match outcome {
            Outcome::Allowed => 0,
            Outcome::Blocked(_) | Outcome::NotReady => 1,
            Outcome::Monitored(_) => 2,
            Outcome::Pending => return,
        };
        self.durations[i].observe(took.as_secs_f64());
    }

    pub fn connect_failed(&self) {
        self.upstream_errors[0].inc();
    }

    pub fn destination_error(&self, e: DestinationError) {
        let i = DestinationError::REASONS
            .iter()
            .position(|r| *r == e.reason())
            .expect("every reason is listed");
        self.upstream_errors[1 + i].inc();
    }
}

/// The counters of one `tls` listener's connections.
pub struct TlsCounters {
    pub allowed: IntCounter,
    pub blocked: [IntCounter; 6],
    pub monitored: [IntCounter; 6],
    pub not_ready: IntCounter,
    /// Indexed by `HelloFailure::index()`.
    pub hello: [IntCounter; 4],
    pub abandoned: IntCounter,
    pub passthrough_open: IntGauge,
    pub to_upstream: IntCounter,
    pub to_client: IntCounter,
    /// Where refused and monitored SNI names are counted (`/top/blocked`).
    pub top: Arc<TopBlocked>,
}
