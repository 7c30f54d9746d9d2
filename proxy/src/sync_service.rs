//! Runs the registry sync on a timer, off the request threads, and reports each attempt in the
//! log and the metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use icp_gate_registry::{RegistryHandle, RejectReason, SyncOutcome, Syncer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::{Metrics, SyncResult};

pub struct SyncService {
    pub syncer: Arc<Mutex<Syncer>>,
    pub registry: Arc<RegistryHandle>,
    pub interval: Duration,
    /// Pause between two polls of the delta feed, when one is configured.
    pub delta_interval: Option<Duration>,
    pub metrics: Arc<Metrics>,
    /// Sync as soon as the service starts, not one interval later (a process that started from
    /// the registry kept in `state_dir`).
    pub sync_at_start: bool,
}

/// Which feeds one sync reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// The full snapshot from `registry.source`.
    Snapshot,
    /// The deltas from `registry.delta_source` (a bad one falls back to the snapshot).
    Deltas,
    /// The snapshot, then the deltas from its serial on.
    Both,
}

/// What one sync did: the snapshot attempt, then each delta step (with a fallback snapshot
/// attempt after a rejected delta).
#[derive(Debug, Default)]
pub struct SyncReport {
    pub snapshot: Option<SyncOutcome>,
    pub deltas: Vec<SyncOutcome>,
}

/// One sync attempt, logged and counted, run entirely off the runtime's threads: parsing a
/// large snapshot and freeing the old one take time, and the sync lock may be held that long by
/// another attempt (timers, SIGHUP or `POST /sync`). None if the blocking task failed.
pub async fn sync_now(
    syncer: Arc<Mutex<Syncer>>,
    registry: Arc<RegistryHandle>,
    metrics: Arc<Metrics>,
    feed: Feed,
) -> Option<SyncReport> {
    let task = tokio::task::spawn_blocking(move || {
        // A panic is caught below, before the guard is dropped, so the lock is never poisoned
        // by a sync; should it be anyway, the syncer is taken back and starts afresh.
        let mut syncer = syncer.lock().unwrap_or_else(|poisoned| {
            let mut syncer = poisoned.into_inner();
            syncer.forget_seen();
            syncer
        });
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut sync = SyncReport::default();
            if feed != Feed::Deltas {
                let outcome = syncer.sync_once();
                report(&outcome, &registry, &metrics, &syncer.source().to_string());
                sync.snapshot = Some(outcome);
            }
            if feed != Feed::Snapshot {
                for (source, outcome) in syncer.sync_deltas() {
                    report(&outcome, &registry, &metrics, &source);
                    sync.deltas.push(outcome);
                }
            }
            sync
        }));
        match attempt {
            Ok(sync) => sync,
            Err(panic) => {
                // The registry in service stays (a sync swaps a registry in whole or not at
                // all); the next sync reads the source afresh.
                syncer.forget_seen();
                metrics.sync(SyncResult::Error);
                metrics.sync_panics.inc();
                metrics
                    .registry_last_attempt
                    .set(icp_gate_registry::sync::unix_now() as f64);
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    panic = message,
                    "registry sync panicked: the registry in service stays, the next sync \
                     starts afresh (a bug: please report it)"
                );
                SyncReport::default()
            }
        }
    });
    match task.await {
        Ok(sync) => Some(sync),
        Err(e) => {
            tracing::error!("registry sync task failed: {e}");
            None
        }
    }
}

/// Logs and counts one sync attempt.
/// Counts a refused snapshot or delta; returns the serial still in service (-1: none), for the
/// log line.
fn count_rejection(metrics: &Metrics, registry: &RegistryHandle, reason: RejectReason) -> i64 {
    metrics.sync(SyncResult::Rejected);
    metrics.rejected(reason);
    registry
        .load()
        .as_ref()
        .map(|r| r.serial as i64)
        .unwrap_or(-1)
}

/// The gauges every successful sync sets: a registry at `serial` with `entries` records (of
/// which `overlay` changed by deltas since the last full snapshot) is in service.
fn registry_in_service(metrics: &Metrics, now: f64, serial: u64, entries: usize, overlay: usize) {
    metrics.sync(SyncResult::Success);
    metrics.registry_last_success.set(now);
    metrics.registry_entries.set(entries as i64);
    metrics.registry_serial.set(serial as i64);
    metrics.registry_ready.set(1);
    metrics.registry_overlay.set(overlay as i64);
}

pub fn report(outcome: &SyncOutcome, registry: &RegistryHandle, metrics: &Metrics, source: &str) {
    let now = icp_gate_registry::sync::unix_now() as f64;
    metrics.registry_last_attempt.set(now);
    match outcome {
        SyncOutcome::Loaded {
            serial,
            entries,
            build_time,
            previous_serial,
        } => {
            registry_in_service(metrics, now, *serial, *entries, 0);
            metrics.registry_load_seconds.set(build_time.as_secs_f64());
            metrics.registry_base_serial.set(*serial as i64);
            tracing::info!(
                source,
                serial,
                previous_serial = previous_serial.map(|s| s as i64).unwrap_or(-1),
                entries,
                duration_ms = build_time.as_millis() as u64,
                "registry loaded"
            );
        }
        SyncOutcome::Unchanged => {
            metrics.sync(SyncResult::Unchanged);
            metrics.registry_last_success.set(now);
            tracing::debug!(source, "registry unchanged");
        }
        SyncOutcome::Rejected(e) => {
            let in_service = count_rejection(metrics, registry, e.reason);
            tracing::error!(
                source,
                reason = e.reason.as_str(),
                line = e.line.unwrap_or(0),
                serial_in_service = in_service,
                "registry snapshot rejected, the registry in service stays: {}",
                e.detail
            );
        }
        SyncOutcome::StillRejected(reason) => {
            metrics.sync(SyncResult::Rejected);
            tracing::debug!(
                source,
                reason = reason.as_str(),
                "the source still offers the rejected snapshot"
            );
        }
        SyncOutcome::DeltaApplied {
            from,
            to,
            entries,
            upserts,
            removals,
            overlay,
            duration,
        } => {
            registry_in_service(metrics, now, *to, *entries, *overlay);
            metrics.deltas_applied.inc();
            tracing::info!(
                source,
                from,
                to,
                upserts,
                removals,
                entries,
                overlay,
                duration_us = duration.as_micros() as u64,
                "registry delta applied"
            );
        }
        SyncOutcome::Compacted {
            serial,
            folded,
            overlay,
            duration,
        } => {
            metrics.delta_compactions.inc();
            metrics.registry_overlay.set(*overlay as i64);
            tracing::info!(
                source,
                serial,
                folded,
                overlay,
                duration_ms = duration.as_millis() as u64,
                "registry compacted"
            );
        }
        SyncOutcome::DeltaRejected(e) => {
            let in_service = count_rejection(metrics, registry, e.reason);
            tracing::error!(
                source,
                reason = e.reason.as_str(),
                line = e.line.unwrap_or(0),
                serial_in_service = in_service,
                "registry delta rejected, the registry in service stays; \
                 trying the full snapshot: {}",
                e.detail
            );
        }
        SyncOutcome::SourceError(e) => {
            metrics.sync(SyncResult::Error);
            tracing::warn!(
                source,
                "registry source unavailable, the registry in service stays: {e}"
            );
        }
    }
}

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // SIGHUP means "sync now" (and must not take its default action, which ends the process).
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot handle SIGHUP: {e}");
                None
            }
        };
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut next_snapshot = tokio::time::Instant::now();
        if !self.sync_at_start {
            next_snapshot += self.interval;
        }
        let mut next_delta = tokio::time::Instant::now() + self.delta_interval.unwrap_or(far);
        loop {
            let feed = tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(next_snapshot.min(next_delta)) => {
                    if tokio::time::Instant::now() >= next_snapshot {
                        Feed::Snapshot
                    } else {
                        Feed::Deltas
                    }
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP: syncing the registry now");
                    Feed::Both
                }
            };
            sync_now(
                self.syncer.clone(),
                self.registry.clone(),
                self.metrics.clone(),
                feed,
            )
            .await;
            // Each pause runs from the end of the attempt that used it.
            let now = tokio::time::Instant::now();
            if feed != Feed::Deltas {
                next_snapshot = now + self.interval;
            }
            if feed != Feed::Snapshot {
                next_delta = now + self.delta_interval.unwrap_or(far);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icp_gate_registry::{SnapshotSource, SnapshotWriter, Status};

    fn snapshot(serial: u64) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), serial, "2026-11-22T03:00:00Z").unwrap();
        w.record("example.com", Status::Connected, None, None)
            .unwrap();
        if serial > 1 {
            w.record("new.cn", Status::Connected, None, None).unwrap();
        }
        w.finish().unwrap()
    }

    fn serial(registry: &RegistryHandle) -> Option<u64> {
        registry.load().as_ref().map(|r| r.serial)
    }

    #[tokio::test]
    async fn a_sync_that_panics_stops_no_later_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.tsv");
        std::fs::write(&path, snapshot(1)).unwrap();
        let registry = RegistryHandle::new();
        let source = SnapshotSource::parse(&format!("file://{}", path.display())).unwrap();
        let syncer = Arc::new(Mutex::new(Syncer::new(source, registry.clone())));
        let metrics = Metrics::new();
        let sync = || {
            sync_now(
                syncer.clone(),
                registry.clone(),
                metrics.clone(),
                Feed::Both,
            )
        };

        sync().await.unwrap();
        assert_eq!(serial(&registry), Some(1));

        // A new snapshot, and the sync that should load it panics half-way.
        std::fs::write(&path, snapshot(2)).unwrap();
        syncer.lock().unwrap().panic_next = true;
        let report = sync().await.expect("the task itself did not fail");
        assert!(report.snapshot.is_none());
        assert_eq!(serial(&registry), Some(1), "the registry in service stays");
        assert_eq!(metrics.sync_panics.get(), 1);
        assert!(!syncer.is_poisoned());

        // The next sync runs, and loads what the panicked one missed.
        sync().await.unwrap();
        assert_eq!(serial(&registry), Some(2));
        let text = String::from_utf8(metrics.render(None)).unwrap();
        assert!(
            text.contains("icp_gate_registry_sync_panics_total 1"),
            "{text}"
        );
        assert!(
            text.contains("icp_gate_registry_sync_total{result=\"error\"} 1"),
            "{text}"
        );
    }
}
