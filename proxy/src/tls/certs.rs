//! The certificates the gate terminates TLS with (`[tls] certificates = "DIR"`): every good
//! `NAME.crt` + `NAME.key` pair in the directory, indexed by the names each serves (its
//! subjectAltName DNS names). Reading and checking a pair is `icp_gate_config::certs`, shared
//! with `icp-gate -t`.
//!
//! - Lookup is by the normalized SNI (lower-case A-labels, no trailing dot): an exact name
//!   first, then a wildcard `*.parent` for the SNI's parent (one label below only, RFC 6125
//!   §6.4.3). When two certificates serve the same name, the one that expires later wins (a
//!   renewed certificate can be added beside the old one), then the first file name.
//! - The set in service is swapped whole (arc-swap, as the registry): a handshake sees the set
//!   before a reload or the one after, and an `Arc<HeldCert>` taken before a reload stays valid
//!   for as long as it is held.
//! - A reload reads the whole directory again. A file that fails now is dropped (logged with
//!   its reason and counted) and the others serve; a file that is gone is dropped. A directory
//!   that cannot be read changes nothing (the set in service stays, the reload counts as an
//!   error).
//! - `CertWatcher` reloads on SIGHUP (its own listener: the registry sync keeps its own), when
//!   the directory's `.crt`/`.key` files change (names, sizes, modification times, inodes;
//!   polled), and when a certificate in service reaches its notAfter (so it leaves service).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use icp_gate_config::certs::{self, CertPair, FileProblem};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::tickets::{FileTicketer, KeyReload};
use crate::metrics::{CertReload, Metrics};

/// One certificate in service.
#[derive(Debug)]
pub struct HeldCert {
    /// `NAME.crt`, without the directory.
    pub file: String,
    pub certified_key: Arc<CertifiedKey>,
    /// The names it serves, normalized; exact names first, then wildcards (`*.example.com`).
    pub names: Vec<String>,
    /// notAfter of the end-entity certificate, unix seconds.
    pub not_after: i64,
}

impl HeldCert {
    /// Whether this certificate's names cover `host` (normalized: lower-case A-labels, no
    /// trailing dot): an exact name, or a wildcard one label above it.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| certs::name_covers(n, host))
    }
}

/// A single certificate as a resolver: a connection's handshake and its later `covers` checks
/// then agree on one certificate, whatever reloads happen meanwhile.
impl ResolvesServerCert for HeldCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified_key.clone())
    }
}

/// One set of certificates, indexed.
#[derive(Debug, Default)]
pub struct Certs {
    exact: HashMap<String, Arc<HeldCert>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<HeldCert>>,
    /// Every certificate, in the order of their names (`NAME`).
    held: Vec<Arc<HeldCert>>,
}

impl Certs {
    fn build(pairs: Vec<CertPair>) -> Certs {
        let mut certs = Certs::default();
        for pair in pairs {
            let held = Arc::new(HeldCert {
                file: pair.file,
                certified_key: pair.certified_key,
                names: pair.names,
                not_after: pair.not_after,
            });
            for name in &held.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut certs.wildcard, parent),
                    None => (&mut certs.exact, name.as_str()),
                };
                match map.get(key) {
                    // Pairs come sorted by file name: on a tie the first file keeps the name.
                    Some(other) if other.not_after >= held.not_after => {}
                    _ => {
                        map.insert(key.to_owned(), held.clone());
                    }
                }
            }
            certs.held.push(held);
        }
        certs
    }

    /// The certificate for a normalized SNI: exact name first, then the wildcard one label up.
    pub fn lookup(&self, sni: &str) -> Option<&Arc<HeldCert>> {
        self.exact.get(sni).or_else(|| {
            let (first, parent) = sni.split_once('.')?;
            if first.is_empty() {
                return None;
            }
            self.wildcard.get(parent)
        })
    }

    /// Every certificate in the set, in the order of their names (`NAME`).
    pub fn held(&self) -> &[Arc<HeldCert>] {
        &self.held
    }

    fn earliest_expiry(&self) -> Option<i64> {
        self.held.iter().map(|h| h.not_after).min()
    }
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// The files in service after it (`NAME.crt`).
    pub loaded: Vec<String>,
    /// The files left out, each with its reason.
    pub rejected: Vec<FileProblem>,
    /// The directory could not be read: nothing changed.
    pub error: Option<String>,
}

/// What the watcher compares between two looks at the directory: each `.crt`/`.key` file's
/// name, size, modification time and inode. None: the directory could not be read.
type Fingerprint = Option<Vec<(String, u64, Option<SystemTime>, u64)>>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !(name.ends_with(".crt") || name.ends_with(".key")) {
            continue;
        }
        // Through a symlink (Kubernetes mounts swap a `..data` link under the files).
        let (size, modified, ino) = match std::fs::metadata(entry.path()) {
            Ok(m) => (m.len(), m.modified().ok(), m.ino()),
            Err(_) => (u64::MAX, None, 0),
        };
        out.push((name, size, modified, ino));
    }
    out.sort();
    Some(out)
}

/// The certificates in service, and how to reload them.
pub struct CertStore {
    dir: PathBuf,
    certs: ArcSwap<Certs>,
    metrics: Arc<Metrics>,
    /// One reload at a time (SIGHUP and a poll may meet); holds the directory as it was when
    /// the set in service was read.
    seen: Mutex<Fingerprint>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("held", &self.certs.load().held.len())
            .finish()
    }
}

impl CertStore {
    /// Loads every good pair in `dir`; each file left out is logged and counted. An error only
    /// when the directory cannot be read.
    pub fn load(dir: &Path, metrics: Arc<Metrics>) -> std::io::Result<CertStore> {
        std::fs::read_dir(dir)?;
        let store = CertStore {
            dir: dir.to_owned(),
            certs: ArcSwap::from_pointee(Certs::default()),
            metrics,
            seen: Mutex::new(None),
        };
        let report = store.read_and_swap();
        if let Some(e) = report.error {
            return Err(std::io::Error::other(e));
        }
        Ok(store)
    }

    /// The directory the certificates are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate for a normalized SNI (lower-case A-labels, no trailing dot), if one is
    /// held: an exact name before a wildcard.
    pub fn lookup(&self, sni: &str) -> Option<Arc<HeldCert>> {
        self.certs.load().lookup(sni).cloned()
    }

    /// The set in service now.
    pub fn current(&self) -> Arc<Certs> {
        self.certs.load_full()
    }

    /// Reads the directory again and swaps the new set in whole; see the module comment.
    pub fn reload(&self) -> ReloadReport {
        let report = self.read_and_swap();
        self.metrics
            .tls_certificate_reload(if report.error.is_some() {
                CertReload::Error
            } else {
                CertReload::Success
            });
        report
    }

    /// Reloads if the directory's files changed since the set in service was read, or a
    /// certificate in service has reached its notAfter; None when nothing was due.
    pub fn reload_if_changed(&self) -> Option<ReloadReport> {
        let changed =
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != fingerprint(&self.dir);
        (changed || self.expiry_due()).then(|| self.reload())
    }

    /// Whether a certificate in service has reached its notAfter (a reload drops it).
    fn expiry_due(&self) -> bool {
        self.certs
            .load()
            .earliest_expiry()
            .is_some_and(|t| t < certs::unix_now())
    }

    fn read_and_swap(&self) -> ReloadReport {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Taken before the files are read: a change made while reading shows at the next look.
        let before = fingerprint(&self.dir);
        let load = match certs::load_dir(&self.dir, certs::unix_now()) {
            Ok(load) => load,
            Err(e) => {
                *seen = before;
                let error = format!("cannot read the directory {}: {e}", self.dir.display());
                tracing::error!(
                    dir = %self.dir.display(),
                    "TLS certificates not reloaded, the ones in service stay: {error}"
                );
                return ReloadReport {
                    error: Some(error),
                    ..ReloadReport::default()
                };
            }
        };
        *seen = before;
        for p in &load.problems {
            self.metrics.tls_certificate_rejected(p.reason);
            tracing::error!(
                file = %self.dir.join(&p.file).display(),
                reason = p.reason.as_str(),
                "TLS certificate not loaded, the others serve: {}",
                p.detail
            );
        }
        for pair in &load.pairs {
            if !pair.ignored_names.is_empty() {
                tracing::warn!(
                    file = %self.dir.join(&pair.file).display(),
                    "subjectAltName DNS names that serve nothing (IP addresses, partial or \
                     top-level wildcards, malformed): {}",
                    pair.ignored_names.join(", ")
                );
            }
        }
        let certs = Certs::build(load.pairs);
        let old = self.certs.swap(Arc::new(certs));
        let new = self.certs.load();
        let gone: Vec<&str> = old
            .held
            .iter()
            .map(|h| h.file.as_str())
            .filter(|f| !new.held.iter().any(|h| h.file == *f))
            .collect();
        let held: Vec<(&str, i64)> = new
            .held
            .iter()
            .map(|h| (h.file.as_str(), h.not_after))
            .collect();
        self.metrics.tls_certificates_in_service(&held, &gone);
        tracing::info!(
            dir = %self.dir.display(),
            loaded = held.len(),
            rejected = load.problems.len(),
            "TLS certificates in service"
        );
        ReloadReport {
            loaded: new.held.iter().map(|h| h.file.clone()).collect(),
            rejected: load.problems,
            error: None,
        }
    }
}

/// Resolves by the ClientHello's server name, normalized as a Host is; no certificate for no
/// SNI, an IP literal, or a name none serves.
impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let name = icp_gate_registry::parse_sni(sni.as_bytes()).ok()??;
        self.lookup(name.as_str()).map(|h| h.certified_key.clone())
    }
}

/// Reloads the store on SIGHUP, when its directory changes (looked at every `interval`; None:
/// SIGHUP only) and when a certificate in service expires; the session ticket key file, when
/// there is one, on SIGHUP and when it changes.
pub struct CertWatcher {
    pub store: Arc<CertStore>,
    pub tickets: Option<Arc<FileTicketer>>,
    pub interval: Option<Duration>,
}

impl CertWatcher {
    /// Reloads the ticket keys (`forced`: SIGHUP; else only when the file changed); logs and
    /// counts what happened.
    fn reload_tickets(tickets: &FileTicketer, metrics: &Metrics, forced: bool) {
        let result = if forced {
            tickets.reload()
        } else {
            tickets.reload_if_changed()
        };
        match result {
            KeyReload::Unchanged => {}
            KeyReload::Loaded => {
                metrics.tls_ticket_key_reload(CertReload::Success);
                tracing::info!(
                    target: "icp_gate::tls",
                    key_id = hex4(tickets.current_id()),
                    "session ticket keys reloaded"
                );
            }
            KeyReload::Failed(error) => {
                metrics.tls_ticket_key_reload(CertReload::Error);
                tracing::warn!(
                    target: "icp_gate::tls",
                    error,
                    "session ticket keys not reloaded, the keys in service stay"
                );
            }
        }
    }
}

fn hex4(id: [u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // A listener of its own: tokio hands every signal to each listener, so the registry
        // sync's SIGHUP still reaches it.
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot handle SIGHUP for TLS certificates: {e}");
                None
            }
        };
        // Without polling, still wake for expiries (at most hourly).
        let tick = self.interval.unwrap_or(Duration::from_secs(3600));
        loop {
            let store = self.store.clone();
            let tickets = self.tickets.clone();
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(tick) => {
                    let poll = self.interval.is_some();
                    let _ = tokio::task::spawn_blocking(move || {
                        if poll {
                            store.reload_if_changed();
                            if let Some(t) = tickets {
                                Self::reload_tickets(&t, &store.metrics, false);
                            }
                        } else if store.expiry_due() {
                            store.reload();
                        }
                    })
                    .await;
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::info!("SIGHUP: reloading TLS certificates and ticket keys");
                    let _ = tokio::task::spawn_blocking(move || {
                        store.reload();
                        if let Some(t) = tickets {
                            Self::reload_tickets(&t, &store.metrics, true);
                        }
                    })
                    .await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icp_gate_config::certs::Rejection;

    /// Writes `NAME.crt` and `NAME.key`: a self-signed ECDSA P-256 certificate for `names`,
    /// valid until the end of `year`. Returns the certificate's PEM.
    fn write_pair(dir: &Path, stem: &str, names: &[&str], year: i32) -> String {
        write_pair_until(dir, stem, names, rcgen::date_time_ymd(year, 12, 31))
    }

    fn write_pair_until(
        dir: &Path,
        stem: &str,
        names: &[&str],
        not_after: time::OffsetDateTime,
    ) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = not_after;
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        cert.pem()
    }

    fn file_of(store: &CertStore, sni: &str) -> Option<String> {
        store.lookup(sni).map(|h| h.file.clone())
    }

    fn metrics_text(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render(None)).unwrap()
    }

    #[test]
    fn exact_names_before_wildcards_and_a_wildcard_covers_one_label() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_pair(d, "wild", &["*.example.com"], 2099);
        write_pair(d, "www", &["www.example.com"], 2099);
        write_pair(d, "apex", &["example.com", "*.shop.example.com"], 2099);
        // Two certificates for one name: the later notAfter serves it.
        write_pair(d, "dup-a", &["dup.cn"], 2090);
        write_pair(d, "dup-b", &["dup.cn"], 2095);
        let store = CertStore::load(d, Metrics::new()).unwrap();

        assert_eq!(
            file_of(&store, "www.example.com").as_deref(),
            Some("www.crt")
        );
        assert_eq!(
            file_of(&store, "img.example.com").as_deref(),
            Some("wild.crt")
        );
        assert_eq!(file_of(&store, "example.com").as_deref(), Some("apex.crt"));
        assert_eq!(
            file_of(&store, "a.shop.example.com").as_deref(),
            Some("apex.crt")
        );
        // `*.example.com` covers one label: not two, not the apex's parent.
        assert_eq!(file_of(&store, "a.b.example.com"), None);
        assert_eq!(
            file_of(&store, "shop.example.com").as_deref(),
            Some("wild.crt")
        );
        assert_eq!(file_of(&store, "com"), None);
        assert_eq!(file_of(&store, "other.cn"), None);
        assert_eq!(file_of(&store, "dup.cn").as_deref(), Some("dup-b.crt"));

        let wild = store.lookup("img.example.com").unwrap();
        assert!(wild.covers("img.example.com"));
        assert!(wild.covers("www.example.com"));
        assert!(!wild.covers("example.com"));
        assert!(!wild.covers("a.b.example.com"));
        assert!(!wild.covers("img.example.com.cn"));
        let apex = store.lookup("example.com").unwrap();
        assert_eq!(apex.names, ["example.com", "*.shop.example.com"]);
        assert!(apex.covers("example.com"));
        assert!(apex.covers("x.shop.example.com"));
        assert!(!apex.covers("www.example.com"));
    }

    #[test]
    fn bad_files_are_left_out_with_their_reason_and_the_good_ones_serve() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_pair(d, "good", &["good.cn"], 2099);
        write_pair(d, "expired", &["expired.cn"], 2021);
        write_pair(d, "mismatch", &["mismatch.cn"], 2099);
        write_pair(d, "other", &["other.cn"], 2099);
        std::fs::copy(d.join("other.key"), d.join("mismatch.key")).unwrap();
        write_pair(d, "alone", &["alone.cn"], 2099);
        std::fs::remove_file(d.join("alone.key")).unwrap();
        std::fs::write(
            d.join("garbage.crt"),
            "-----BEGIN CERTIFICATE-----\nnot base64!\n",
        )
        .unwrap();
        std::fs::write(d.join("garbage.key"), "").unwrap();
        let metrics = Metrics::new();
        let store = CertStore::load(d, metrics.clone()).unwrap();

        let files: Vec<String> = store
            .current()
            .held()
            .iter()
            .map(|h| h.file.clone())
            .collect();
        assert_eq!(files, ["good.crt", "other.crt"]);
        assert!(store.lookup("good.cn").is_some());
        for gone in ["expired.cn", "mismatch.cn", "alone.cn"] {
            assert!(store.lookup(gone).is_none(), "{gone}");
        }
        let text = metrics_text(&metrics);
        for line in [
            "icp_gate_tls_certificates_rejected_total{reason=\"expired\"} 1",
            "icp_gate_tls_certificates_rejected_total{reason=\"key_mismatch\"} 1",
            "icp_gate_tls_certificates_rejected_total{reason=\"missing_pair\"} 1",
            "icp_gate_tls_certificates_rejected_total{reason=\"unparseable\"} 1",
            "icp_gate_tls_certificates_rejected_total{reason=\"unsupported_key\"} 0",
            "icp_gate_tls_certificates_loaded 2",
            "icp_gate_tls_certificate_expiry_timestamp_seconds{file=\"good.crt\"} 4102358400",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("{file=\"expired.crt\"}"), "{text}");
    }

    #[test]
    fn reload_swaps_the_new_set_whole_and_held_certificates_stay_valid() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_pair(d, "a", &["a.cn"], 2099);
        write_pair(d, "b", &["b.cn"], 2099);
        let metrics = Metrics::new();
        let store = CertStore::load(d, metrics.clone()).unwrap();
        let held_a = store.lookup("a.cn").unwrap();
        let before = store.current();

        // Add c, remove b, replace a (new names, new key).
        write_pair(d, "c", &["c.cn"], 2099);
        std::fs::remove_file(d.join("b.crt")).unwrap();
        std::fs::remove_file(d.join("b.key")).unwrap();
        write_pair(d, "a", &["a2.cn"], 2098);
        let report = store.reload();
        assert_eq!(report.loaded, ["a.crt", "c.crt"]);
        assert!(report.rejected.is_empty() && report.error.is_none());
        assert_eq!(file_of(&store, "c.cn").as_deref(), Some("c.crt"));
        assert_eq!(file_of(&store, "b.cn"), None);
        assert_eq!(file_of(&store, "a.cn"), None);
        assert_eq!(file_of(&store, "a2.cn").as_deref(), Some("a.crt"));
        // What was taken before the reload is unchanged and usable.
        assert_eq!(held_a.names, ["a.cn"]);
        assert!(held_a.certified_key.keys_match().is_ok());
        assert_eq!(before.lookup("b.cn").unwrap().file, "b.crt");

        let text = metrics_text(&metrics);
        assert!(!text.contains("{file=\"b.crt\"}"), "{text}");
        assert!(text.contains("{file=\"c.crt\"}"), "{text}");
        assert!(
            text.contains(
                "icp_gate_tls_certificate_expiry_timestamp_seconds{file=\"a.crt\"} 4070822400"
            ),
            "{text}"
        );
        assert!(text.contains("icp_gate_tls_certificate_reloads_total{result=\"success\"} 1"));

        // A file that now fails is dropped; the rest serve.
        std::fs::write(d.join("c.key"), "garbage").unwrap();
        let report = store.reload();
        assert_eq!(report.loaded, ["a.crt"]);
        assert_eq!(report.rejected[0].file, "c.key");
        assert_eq!(report.rejected[0].reason, Rejection::Unparseable);
        assert_eq!(file_of(&store, "c.cn"), None);

        // A directory that cannot be read changes nothing.
        let moved = d.with_extension("moved");
        std::fs::rename(d, &moved).unwrap();
        let report = store.reload();
        assert!(report.error.is_some());
        assert_eq!(file_of(&store, "a2.cn").as_deref(), Some("a.crt"));
        assert!(metrics_text(&metrics)
            .contains("icp_gate_tls_certificate_reloads_total{result=\"error\"} 1"));
        std::fs::rename(&moved, d).unwrap();
        assert!(CertStore::load(&moved, Metrics::new()).is_err());
    }

    #[test]
    fn a_certificate_leaves_service_when_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
        write_pair_until(d, "soon", &["soon.cn"], soon);
        write_pair(d, "later", &["later.cn"], 2099);
        let store = CertStore::load(d, Metrics::new()).unwrap();
        assert!(store.lookup("soon.cn").is_some());
        assert!(store.reload_if_changed().is_none());
        std::thread::sleep(Duration::from_millis(3100));
        let report = store.reload_if_changed().expect("an expiry is due");
        assert_eq!(report.rejected[0].file, "soon.crt");
        assert_eq!(report.rejected[0].reason, Rejection::Expired);
        assert!(store.lookup("soon.cn").is_none());
        assert!(store.lookup("later.cn").is_some());
        assert!(store.reload_if_changed().is_none());
    }

    /// Starts a watcher; returns what stops it.
    fn watch(
        store: &Arc<CertStore>,
        interval: Option<Duration>,
    ) -> tokio::sync::watch::Sender<bool> {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let watcher = CertWatcher {
            store: store.clone(),
            tickets: None,
            interval,
        };
        tokio::spawn(async move { watcher.start(shutdown).await });
        stop
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool, mut nudge: impl FnMut()) {
        for _ in 0..100 {
            if check() {
                return;
            }
            nudge();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_reloads_when_the_directory_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        write_pair(&d, "a", &["a.cn"], 2099);
        let store = Arc::new(CertStore::load(&d, Metrics::new()).unwrap());
        let stop = watch(&store, Some(Duration::from_millis(50)));
        // Nothing changed: no reload.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.reload_if_changed().is_none());

        write_pair(&d, "b", &["b.cn"], 2099);
        eventually("b.cn added", || store.lookup("b.cn").is_some(), || {}).await;
        std::fs::remove_file(d.join("a.key")).unwrap();
        eventually("a.cn gone", || store.lookup("a.cn").is_none(), || {}).await;
        stop.send(true).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sighup_reloads_without_polling() {
        // Our own listener first: from here on SIGHUP cannot end the test process.
        let _guard =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_owned();
        let store = Arc::new(CertStore::load(&d, Metrics::new()).unwrap());
        let stop = watch(&store, None);
        write_pair(&d, "a", &["a.cn"], 2099);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store.lookup("a.cn").is_none(), "no polling");
        // Resent until seen: the watcher may not be listening yet.
        eventually(
            "a.cn after SIGHUP",
            || store.lookup("a.cn").is_some(),
            || unsafe {
                libc::kill(libc::getpid(), libc::SIGHUP);
            },
        )
        .await;
        stop.send(true).unwrap();
    }

    /// A whole handshake in memory against `resolver`; the certificate the server sent.
    fn handshake(
        resolver: Arc<dyn ResolvesServerCert>,
        roots: &[&str],
        server_name: &str,
    ) -> Result<rustls::pki_types::CertificateDer<'static>, rustls::Error> {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        let mut root_store = rustls::RootCertStore::empty();
        for pem in roots {
            root_store
                .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(root_store)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        while client.is_handshaking() || server.is_handshaking() {
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            server.read_tls(&mut &to_server[..]).unwrap();
            server.process_new_packets()?;
            let mut to_client = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            client.read_tls(&mut &to_client[..]).unwrap();
            client.process_new_packets()?;
        }
        Ok(client.peer_certificates().unwrap()[0].clone())
    }

    #[test]
    fn rustls_resolves_through_the_store_by_normalized_sni() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let www = write_pair(d, "www", &["www.example.com"], 2099);
        let wild = write_pair(d, "wild", &["*.example.com"], 2099);
        let store = Arc::new(CertStore::load(d, Metrics::new()).unwrap());
        let der = |file: &str| {
            store
                .current()
                .held()
                .iter()
                .find(|h| h.file == file)
                .unwrap()
                .certified_key
                .cert[0]
                .clone()
        };
        let roots = [www.as_str(), wild.as_str()];
        assert_eq!(
            handshake(store.clone(), &roots, "www.example.com").unwrap(),
            der("www.crt")
        );
        // Upper case as the client wrote it: served (rustls lower-cases and trims the dot
        // before the resolver sees the name, so this does not tell parse_sni's share).
        assert_eq!(
            handshake(store.clone(), &roots, "WWW.Example.COM").unwrap(),
            der("www.crt")
        );
        assert_eq!(
            handshake(store.clone(), &roots, "img.example.com").unwrap(),
            der("wild.crt")
        );
        // No certificate for the name, or no SNI at all (an IP): the handshake fails.
        assert!(handshake(store.clone(), &roots, "other.cn").is_err());
        assert!(handshake(store.clone(), &roots, "192.0.2.1").is_err());
        // One held certificate as the resolver serves itself whatever the SNI.
        let held = store.lookup("img.example.com").unwrap();
        assert_eq!(
            handshake(held, &roots, "img.example.com").unwrap(),
            der("wild.crt")
        );
    }
}
