//! Prometheus metrics. Per-request counters are resolved to handles once per listener, so the
//! request path increments an atomic and never hashes label values. Never a host as a label.

use std::sync::Arc;

use icp_gate_config::certs::Rejection;
use icp_gate_registry::{BlockReason, RejectReason};
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::destination::DestinationError;
use crate::tls::hello::HelloFailure;

/// `reason` label when the gate answers before any registry is loaded.
pub const NOT_READY: &str = "registry_not_ready";

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
    pub fn new() -> Arc<Self> {
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

    pub fn tls_certificate_reload(&self, result: CertReload) {
        self.tls_certificate_reloads
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
        }
    }

    /// The text exposition of every metric. `generated_at` is the unix time the registry in
    /// service was exported, if one is loaded.
    pub fn render(&self, generated_at: Option<i64>) -> Vec<u8> {
        if let Some(at) = generated_at {
            let now = icp_gate_registry::sync::unix_now();
            self.registry_age.set((now - at).max(0) as f64);
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
}
