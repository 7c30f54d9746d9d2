//! Snapshot sources and the sync step that checks a new snapshot and swaps it into service.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;

use sha2::{Digest, Sha256};

use crate::delta::{apply_delta, read_delta, should_compact};
use crate::registry::Registry;
use crate::snapshot::{read_snapshot_limited, RejectReason, Snapshot, SnapshotError};

/// The registry in service with the facts about where it came from.
#[derive(Debug)]
pub struct LoadedRegistry {
    pub registry: Registry,
    pub serial: u64,
    pub generated_at: String,
    /// `generated_at` in unix seconds.
    pub generated_at_unix: i64,
    pub sha256: [u8; 32],
    pub entries: usize,
    /// When it was swapped in (unix seconds).
    pub loaded_at: u64,
    /// Serial of the full snapshot the registry was built from; below `serial` when deltas
    /// were applied on top of it.
    pub base_serial: u64,
    /// Deltas applied since that snapshot.
    pub deltas_applied: u64,
}

impl LoadedRegistry {
    /// The same facts (serial, source, time loaded) with `registry` in place of this one's: for
    /// a compaction, which changes how the records are held, not which.
    fn with_registry(&self, registry: Registry) -> Self {
        LoadedRegistry {
            registry,
            serial: self.serial,
            generated_at: self.generated_at.clone(),
            generated_at_unix: self.generated_at_unix,
            sha256: self.sha256,
            entries: self.entries,
            loaded_at: self.loaded_at,
            base_serial: self.base_serial,
            deltas_applied: self.deltas_applied,
        }
    }

    pub fn from_snapshot(s: Snapshot) -> Self {
        LoadedRegistry {
            entries: s.registry.len(),
            registry: s.registry,
            serial: s.header.serial,
            generated_at: s.header.generated_at,
            generated_at_unix: s.header.generated_at_unix,
            sha256: s.sha256,
            loaded_at: unix_now() as u64,
            base_serial: s.header.serial,
            deltas_applied: 0,
        }
    }
}

/// Where requests find the registry in service. Readers never block: a swap is one atomic store.
#[derive(Default)]
pub struct RegistryHandle {
    current: ArcSwapOption<LoadedRegistry>,
}

impl RegistryHandle {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The registry in service, if one has been loaded. Hold the guard only for the decision: a
    /// guard kept across awaits pins an old snapshot in memory.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Option<Arc<LoadedRegistry>>> {
        self.current.load()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Puts `next` in service and frees the one it replaces on this thread, never on a request
    /// thread: the old registry may be large and its drop slow.
    fn swap_in(&self, next: LoadedRegistry) {
        let old = self.current.swap(Some(Arc::new(next)));
        if let Some(old) = old {
            drop_when_unshared(old);
        }
    }
}

/// Waits (briefly) for in-flight decisions to release `old`, then drops it here.
fn drop_when_unshared(old: Arc<LoadedRegistry>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where snapshots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotSource {
    File(PathBuf),
    /// An `http://` or `https://` URL (object storage, any HTTP server).
    Http(String),
}

impl SnapshotSource {
    /// Parses a `registry.source` value.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{url}`: a file:// URL needs an absolute path (file:///var/lib/...)"
                ));
            }
            return Ok(SnapshotSource::File(PathBuf::from(path)));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return match url.parse::<ureq::http::Uri>() {
                Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {
                    Ok(SnapshotSource::Http(url.to_owned()))
                }
                _ => Err(format!("`{url}` is not a valid http(s) URL")),
            };
        }
        Err(format!(
            "`{url}`: the source must be a file://, http:// or https:// URL"
        ))
    }
}

impl std::fmt::Display for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotSource::File(p) => write!(f, "file://{}", p.display()),
            SnapshotSource::Http(url) => f.write_str(url),
        }
    }
}

/// Where deltas come from: a `file://` or `http(s)://` prefix to which the serial in service
/// is appended (`http://host/deltas/` asks `http://host/deltas/42` for the delta from 42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaSource {
    prefix: SnapshotSource,
}

impl DeltaSource {
    /// Parses a `registry.delta_source` value (the same URL forms as `registry.source`).
    pub fn parse(url: &str) -> Result<Self, String> {
        Ok(DeltaSource {
            prefix: SnapshotSource::parse(url)?,
        })
    }

    /// Where the delta from `serial` is.
    pub fn at(&self, serial: u64) -> SnapshotSource {
        match &self.prefix {
            SnapshotSource::File(p) => {
                let mut path = p.clone().into_os_string();
                path.push(serial.to_string());
                SnapshotSource::File(path.into())
            }
            SnapshotSource::Http(url) => SnapshotSource::Http(format!("{url}{serial}")),
        }
    }
}

impl std::fmt::Display for DeltaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.prefix.fmt(f)
    }
}

/// Timeouts and retries for an http(s) source.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// The whole fetch, body included.
    pub total_timeout: Duration,
    /// Further tries after a failed one (connection error, timeout, 5xx), with exponential
    /// backoff and jitter.
    pub retries: u32,
    pub backoff: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(300),
            retries: 2,
            backoff: Duration::from_millis(500),
        }
    }
}

/// An http(s) source's client and what it last fetched.
struct HttpState {
    agent: ureq::Agent,
    etag: Option<String>,
    last_modified: Option<String>,
}

enum Fetched {
    NotModified,
    Body(ureq::http::Response<ureq::Body>),
}

impl HttpState {
    fn new(settings: &HttpSettings) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_global(Some(settings.total_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("icp-gate/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpState {
            agent: config.into(),
            etag: None,
            last_modified: None,
        }
    }

    /// A conditional GET, retried on failures that may pass.
    fn get(&self, url: &str, settings: &HttpSettings) -> Result<Fetched, String> {
        let mut attempt = 0;
        loop {
            let mut request = self.agent.get(url);
            if let Some(etag) = &self.etag {
                request = request.header("If-None-Match", etag);
            }
            if let Some(modified) = &self.last_modified {
                request = request.header("If-Modified-Since", modified);
            }
            let failure = match request.call() {
                Ok(r) if r.status() == 304 => return Ok(Fetched::NotModified),
                Ok(r) if r.status().is_success() => return Ok(Fetched::Body(r)),
                Ok(r) if r.status().is_server_error() => format!("HTTP {}", r.status()),
                Ok(r) => return Err(format!("HTTP {}", r.status())),
                Err(e) => e.to_string(),
            };
            if attempt >= settings.retries {
                return Err(format!("{failure} (after {} tries)", attempt + 1));
            }
            // Exponential backoff with full jitter, so a fleet of gates does not retry in step.
            let ceiling = settings.backoff.saturating_mul(1 << attempt.min(6));
            std::thread::sleep(ceiling.mul_f64(0.5 + fastrand::f64() / 2.0));
            attempt += 1;
        }
    }
}

fn header_text(
    headers: &ureq::http::HeaderMap,
    name: ureq::http::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// What one sync attempt did.
#[derive(Debug)]
pub enum SyncOutcome {
    /// A new snapshot is in service.
    Loaded {
        serial: u64,
        entries: usize,
        build_time: Duration,
        previous_serial: Option<u64>,
    },
    /// The source has nothing new (same file, or the same content as the one in service).
    Unchanged,
    /// The source gave a snapshot that failed a check; the one in service stays.
    Rejected(SnapshotError),
    /// The source still offers the snapshot that was rejected before (not counted again as a
    /// rejection, but not a success either: the registry is not being updated).
    StillRejected(RejectReason),
    /// The source could not be read at all; the one in service stays.
    SourceError(String),
    /// A delta was applied: the registry in service moved from `from` to `to`.
    DeltaApplied {
        from: u64,
        to: u64,
        entries: usize,
        upserts: usize,
        removals: usize,
        /// Domain changes held over the shared index after it.
        overlay: usize,
        duration: Duration,
    },
    /// The domain changes deltas held over the shared index (`folded` of them) were folded into
    /// a fresh index (on a thread of its own, while later deltas went on being applied), which
    /// is now in service at the serial in service, with those later changes over it.
    Compacted {
        serial: u64,
        folded: usize,
        /// Domain changes held over the new index: those applied while it was built.
        overlay: usize,
        duration: Duration,
    },
    /// A delta failed a check; the registry in service stays (and a full snapshot sync
    /// follows).
    DeltaRejected(SnapshotError),
}

/// File identity used to skip re-reading an unchanged file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

/// Checks a snapshot must pass, beyond its own format, before it may replace the one in service.
#[derive(Clone, Debug)]
pub struct SafetyGates {
    /// Refuse a snapshot with fewer than this fraction of the entries in service (0.9: refuse
    /// losing more than 10%). 0 turns the check off.
    pub min_kept_fraction: f64,
    /// Refuse a snapshot whose text passes this many bytes (after decompression).
    pub max_bytes: u64,
    /// Hosts that must decide a given way in a new snapshot.
    pub canaries: Vec<Canary>,
}

impl Default for SafetyGates {
    fn default() -> Self {
        SafetyGates {
            min_kept_fraction: 0.9,
            max_bytes: u64::MAX,
            canaries: Vec::new(),
        }
    }
}

/// A host and the decision a good registry gives it.
#[derive(Clone, Debug)]
pub struct Canary {
    pub host: crate::Host,
    pub require: crate::Requirement,
    pub expect: crate::Decision,
}

/// File name of the last accepted snapshot in `state_dir`.
pub const STATE_FILE: &str = "registry.snapshot";
/// Directory in `state_dir` of the deltas applied over that snapshot, one file per delta named
/// by its `from` serial.
pub const STATE_DELTAS: &str = "registry.deltas";
/// Most deltas applied in one sync (a catch-up continues at the next).
const MAX_DELTAS_PER_SYNC: usize = 1000;
/// Largest delta read (or `max_snapshot_bytes`, when lower): a delta is held in memory whole,
/// and one this large is a snapshot's work.
pub const MAX_DELTA_BYTES: u64 = 256 << 20;

/// A compaction running on its own thread (see `Syncer::compact`).
struct Compaction {
    /// What it compacts: the registry in service when it started (sharing its index).
    base: Arc<Registry>,
    started: Instant,
    done: std::sync::mpsc::Receiver<Registry>,
}

/// Reads snapshots from a source and swaps good ones into a `RegistryHandle`.
pub struct Syncer {
    source: SnapshotSource,
    handle: Arc<RegistryHandle>,
    /// The file as it was when last read, good or bad: an unchanged bad file is not re-read and
    /// re-counted as a new rejection every interval.
    last_seen: Option<Fingerprint>,
    /// Why the file as last seen was rejected, if it was.
    last_rejection: Option<RejectReason>,
    /// Where the last accepted snapshot is kept, so a restarted gate can serve before (or
    /// without) its source.
    state_dir: Option<PathBuf>,
    /// Write accepted snapshots and applied deltas to `state_dir` (false: only read it).
    keep_state: bool,
    gates: SafetyGates,
    http_settings: HttpSettings,
    http: Option<HttpState>,
    delta_source: Option<DeltaSource>,
    delta_http: Option<HttpState>,
    /// The delta last rejected: the serial it was asked for, the SHA-256 of its bytes and why.
    /// The same bytes at the same place are not counted (nor fallen back from) again.
    rejected_delta: Option<(u64, [u8; 32], RejectReason)>,
    /// The compaction running on its own thread, if one is.
    compaction: Option<Compaction>,
    /// Unit tests only: a compaction's thread waits here before it starts.
    #[cfg(test)]
    hold_compaction: Option<Arc<std::sync::Barrier>>,
    /// Test builds only: the next sync panics (to test that a panic stops no later sync).
    #[cfg(feature = "testing")]
    pub panic_next: bool,
}

impl Syncer {
    pub fn new(source: SnapshotSource, handle: Arc<RegistryHandle>) -> Self {
        Syncer {
            source,
            handle,
            last_seen: None,
            last_rejection: None,
            state_dir: None,
            keep_state: true,
            gates: SafetyGates::default(),
            http_settings: HttpSettings::default(),
            http: None,
            delta_source: None,
            delta_http: None,
            rejected_delta: None,
            compaction: None,
            #[cfg(test)]
            hold_compaction: None,
            #[cfg(feature = "testing")]
            panic_next: false,
        }
    }

    /// Forgets what the source looked like last time (file fingerprint, HTTP validators, the
    /// last rejections), so the next sync reads everything afresh. Called after a sync panicked
    /// half-way: whatever it had recorded may not match what is in service.
    pub fn forget_seen(&mut self) {
        self.last_seen = None;
        self.last_rejection = None;
        self.rejected_delta = None;
        for http in [&mut self.http, &mut self.delta_http].into_iter().flatten() {
            http.etag = None;
            http.last_modified = None;
        }
    }

    /// Poll deltas from `source` (see `sync_deltas`).
    pub fn with_delta_source(mut self, source: Option<DeltaSource>) -> Self {
        self.delta_source = source;
        self
    }

    pub fn delta_source(&self) -> Option<&DeltaSource> {
        self.delta_source.as_ref()
    }

    /// Timeouts and retries for an http(s) source.
    pub fn with_http(mut self, settings: HttpSettings) -> Self {
        self.http_settings = settings;
        self.http = None;
        self
    }

    /// The checks beyond the format (see `SafetyGates`).
    pub fn with_gates(mut self, gates: SafetyGates) -> Self {
        self.gates = gates;
        self
    }

    /// Keep a copy of every accepted snapshot in `dir` (see `restore_from_state`).
    pub fn with_state_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.state_dir = dir;
        self
    }

    /// Whether accepted snapshots and applied deltas are written to `state_dir` (the default).
    /// Off, the directory is only read: for a tool such as `icp-gate explain`, which loads the
    /// registry as a gate does but must leave the gate's state as it is.
    pub fn keeping_state(mut self, keep: bool) -> Self {
        self.keep_state = keep;
        self
    }

    pub fn source(&self) -> &SnapshotSource {
        &self.source
    }

    /// What a gate does as it starts: a sync from the source (skipped when `read_source` is
    /// false: an offline tool whose source is http(s)), then, if that put nothing in service, the
    /// last accepted snapshot in `state_dir`, then the deltas kept there that chain from the
    /// serial in service. With `state_first` (a new process taking over from a running gate)
    /// the snapshot in `state_dir`, the one the running gate serves, comes before the source,
    /// which is read only when `state_dir` has none. Each step with where it came from.
    pub fn load_at_start(
        &mut self,
        read_source: bool,
        state_first: bool,
    ) -> Vec<(String, SyncOutcome)> {
        let mut steps = Vec::new();
        let restore = |syncer: &mut Self, steps: &mut Vec<(String, SyncOutcome)>| {
            if let Some(outcome) = syncer.restore_from_state() {
                let kept = syncer.state_file().expect("state_dir is set");
                steps.push((kept.display().to_string(), outcome));
            }
        };
        if state_first {
            restore(self, &mut steps);
        }
        if read_source && !self.handle.is_ready() {
            steps.push((self.source.to_string(), self.sync_once()));
        }
        if !state_first && !self.handle.is_ready() {
            restore(self, &mut steps);
        }
        steps.extend(self.replay_state_deltas());
        steps
    }

    pub fn state_file(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(STATE_FILE))
    }

    fn state_deltas(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(STATE_DELTAS))
    }

    /// Applies the deltas kept in `state_dir` over the registry in service, from its serial on,
    /// so a restarted gate comes back at the newest serial it had. For a start; each applied
    /// delta (and the one that fails, if any) is returned with the file it came from.
    pub fn replay_state_deltas(&mut self) -> Vec<(String, SyncOutcome)> {
        let mut out = Vec::new();
        let Some(dir) = self.state_deltas() else {
            return out;
        };
        loop {
            // (Not in the loop's condition: its guard would live through the swap below.)
            let serial = self.handle.load().as_ref().map(|c| c.serial);
            let Some(serial) = serial else {
                break;
            };
            let path = dir.join(serial.to_string());
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => {
                    out.push((
                        path.display().to_string(),
                        SyncOutcome::SourceError(e.to_string()),
                    ));
                    break;
                }
            };
            let outcome = self.offer_delta(&bytes);
            let failed = matches!(outcome, SyncOutcome::DeltaRejected(_));
            out.push((path.display().to_string(), outcome));
            if failed {
                break;
            }
        }
        if let Some(compacted) = self.compact() {
            out.push((dir.display().to_string(), compacted));
        }
        out
    }

    /// Compaction, off the path of the deltas. Puts in service the result of a compaction
    /// that has finished, with the deltas applied since it started carried over
    /// (`Registry::rebase`), and returns it; then starts one on its own thread when the
    /// registry in service calls for it (`should_compact`) and none is running. A compaction
    /// takes as long as loading a snapshot of that size (seconds at 10 million records): run
    /// inline, it would hold back every delta published meanwhile.
    fn compact(&mut self) -> Option<SyncOutcome> {
        let finished = self.finish_compaction();
        self.start_compaction();
        finished
    }

    fn finish_compaction(&mut self) -> Option<SyncOutcome> {
        use std::sync::mpsc::TryRecvError;
        let compacted = match self.compaction.as_ref()?.done.try_recv() {
            Ok(compacted) => compacted,
            Err(TryRecvError::Empty) => return None,
            // Its thread panicked: the registry in service stays as it is, and a later sync
            // starts another.
            Err(TryRecvError::Disconnected) => {
                self.compaction = None;
                return None;
            }
        };
        let running = self.compaction.take()?;
        let current = self.handle.current.load_full()?;
        // None: a snapshot replaced the registry meanwhile, and the compaction is of no use.
        let rebased = current.registry.rebase(&running.base, &compacted)?;
        let outcome = SyncOutcome::Compacted {
            serial: current.serial,
            folded: running.base.overlay_len(),
            overlay: rebased.overlay_len(),
            duration: running.started.elapsed(),
        };
        let next = current.with_registry(rebased);
        // The swap waits for every other holder of the registry in service to let go.
        drop((current, running, compacted));
        self.handle.swap_in(next);
        Some(outcome)
    }

    fn start_compaction(&mut self) {
        if self.compaction.is_some() {
            return;
        }
        let Some(current) = self.handle.current.load_full() else {
            return;
        };
        if !should_compact(&current.registry) {
            return;
        }
        // A copy of the registry, not of the `LoadedRegistry` in service: the swap of the next
        // delta waits for the last holder of that one to let go.
        let base = Arc::new(current.registry.clone());
        drop(current);
        let (done, result) = std::sync::mpsc::channel();
        let work = base.clone();
        #[cfg(test)]
        let hold = self.hold_compaction.clone();
        let spawned = std::thread::Builder::new()
            .name("registry-compact".into())
            .spawn(move || {
                #[cfg(test)]
                if let Some(hold) = hold {
                    hold.wait();
                }
                // The receiver may be gone (a syncer dropped): nothing to do then.
                let _ = done.send(work.compact());
            });
        match spawned {
            Ok(_) => {
                self.compaction = Some(Compaction {
                    base,
                    started: Instant::now(),
                    done: result,
                })
            }
            Err(e) => tracing::warn!("cannot start a registry compaction: {e}"),
        }
    }

    /// Applies the deltas the delta source has from the serial in service on, one after the
    /// other until it has none (HTTP 404, or no such file): a catch-up. A delta that fails a
    /// check is rejected whole, the registry in service stays, and a full snapshot sync from
    /// `source` follows (the fallback). Then the compaction's turn (`compact`): one that has
    /// finished is put in service (`SyncOutcome::Compacted`), one is started if the changes held
    /// over the index call for it. Returns each step with where it came from;
    /// nothing without a delta source or a registry in service. Blocking: run it off the
    /// request threads.
    pub fn sync_deltas(&mut self) -> Vec<(String, SyncOutcome)> {
        let Some(source) = self.delta_source.clone() else {
            return Vec::new();
        };
        let mut out = self.catch_up(&source);
        if let Some(compacted) = self.compact() {
            out.push((source.to_string(), compacted));
        }
        out
    }

    /// The deltas of `sync_deltas`, without the compaction.
    fn catch_up(&mut self, source: &DeltaSource) -> Vec<(String, SyncOutcome)> {
        let mut out = Vec::new();
        for _ in 0..MAX_DELTAS_PER_SYNC {
            let serial = self.handle.load().as_ref().map(|c| c.serial);
            let Some(serial) = serial else {
                break;
            };
            let at = source.at(serial);
            let name = at.to_string();
            let bytes = match self.fetch_delta(&at) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    if out.is_empty() {
                        out.push((name, SyncOutcome::Unchanged));
                    }
                    break;
                }
                Err(e) => {
                    out.push((
                        name.clone(),
                        SyncOutcome::SourceError(format!("{name}: {e}")),
                    ));
                    break;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if let Some((s, d, reason)) = self.rejected_delta {
                if s == serial && d == digest {
                    out.push((name, SyncOutcome::StillRejected(reason)));
                    break;
                }
            }
            let outcome = self.offer_delta(&bytes);
            match &outcome {
                SyncOutcome::DeltaRejected(e) => {
                    self.rejected_delta = Some((serial, digest, e.reason));
                    out.push((name, outcome));
                    let snapshot = self.source.to_string();
                    out.push((snapshot, self.sync_once()));
                    break;
                }
                _ => {
                    self.keep_delta(serial, &bytes);
                    out.push((name, outcome));
                }
            }
        }
        out
    }

    /// The bytes of a delta; None when there is none (HTTP 404, no such file).
    fn fetch_delta(&mut self, at: &SnapshotSource) -> Result<Option<Vec<u8>>, String> {
        // One byte over the limit is enough for the parser to refuse it as too large.
        let limit = self.delta_limit().saturating_add(1);
        let mut bytes = Vec::new();
        match at {
            SnapshotSource::File(path) => match File::open(path) {
                Ok(f) => f
                    .take(limit)
                    .read_to_end(&mut bytes)
                    .map_err(|e| e.to_string())?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.to_string()),
            },
            SnapshotSource::Http(url) => {
                // No retries: the next poll is seconds away.
                let settings = HttpSettings {
                    retries: 0,
                    ..self.http_settings.clone()
                };
                let http = self
                    .delta_http
                    .get_or_insert_with(|| HttpState::new(&settings));
                let response = match http.agent.get(url).call() {
                    Ok(r) if r.status() == 404 => return Ok(None),
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) => return Err(format!("HTTP {}", r.status())),
                    Err(e) => return Err(e.to_string()),
                };
                response
                    .into_body()
                    .into_reader()
                    .take(limit)
                    .read_to_end(&mut bytes)
                    .map_err(|e| e.to_string())?
            }
        };
        Ok(Some(bytes))
    }

    /// Reads and checks a delta against the registry in service and swaps the result in.
    fn offer_delta(&self, bytes: &[u8]) -> SyncOutcome {
        let delta = match read_delta(bytes, self.delta_limit()) {
            Ok(d) => d,
            Err(e) => return SyncOutcome::DeltaRejected(e),
        };
        let Some(current) = self.handle.current.load_full() else {
            return SyncOutcome::Unchanged;
        };
        let applied = match apply_delta(&current.registry, current.serial, &delta).and_then(|a| {
            self.check_gates(&a.registry, Some(current.entries))
                .map(|()| a)
        }) {
            Ok(a) => a,
            Err(e) => return SyncOutcome::DeltaRejected(e),
        };
        let (upserts, removals) = delta.counts();
        let next = LoadedRegistry {
            entries: applied.registry.len(),
            registry: applied.registry,
            serial: delta.header.to,
            generated_at: delta.header.generated_at,
            generated_at_unix: delta.header.generated_at_unix,
            sha256: current.sha256,
            loaded_at: unix_now() as u64,
            base_serial: current.base_serial,
            deltas_applied: current.deltas_applied + 1,
        };
        let outcome = SyncOutcome::DeltaApplied {
            from: delta.header.from,
            to: delta.header.to,
            entries: next.entries,
            upserts,
            removals,
            overlay: next.registry.overlay_len(),
            duration: applied.duration,
        };
        // The swap waits for every other holder of the registry in service to let go.
        drop(current);
        self.handle.swap_in(next);
        outcome
    }

    fn delta_limit(&self) -> u64 {
        self.gates.max_bytes.min(MAX_DELTA_BYTES)
    }

    /// Keeps an applied delta in `state_dir` (temporary file, fsync, rename).
    fn keep_delta(&self, from: u64, bytes: &[u8]) {
        let Some(dir) = self.state_deltas().filter(|_| self.keep_state) else {
            return;
        };
        if let Err(e) = write_atomically(&dir, &from.to_string(), bytes) {
            tracing::warn!(
                state_dir = %dir.display(),
                "the delta is in service but could not be kept in state_dir: {e}"
            );
        }
    }

    /// Loads the last accepted snapshot from `state_dir`, with every check a source snapshot
    /// gets. For a start with no usable source.
    pub fn restore_from_state(&mut self) -> Option<SyncOutcome> {
        let path = self.state_file()?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => return Some(SyncOutcome::SourceError(format!("{}: {e}", path.display()))),
        };
        Some(
            match read_snapshot_limited(file, None, self.gates.max_bytes) {
                Ok(snapshot) => self.offer(snapshot),
                Err(e) => SyncOutcome::Rejected(e),
            },
        )
    }

    /// One sync attempt. Blocking: run it off the request threads.
    pub fn sync_once(&mut self) -> SyncOutcome {
        #[cfg(feature = "testing")]
        if std::mem::take(&mut self.panic_next) {
            panic!("injected by a test: a sync panicking half-way");
        }
        let outcome = self.read_source();
        match &outcome {
            SyncOutcome::Rejected(e) => self.last_rejection = Some(e.reason),
            SyncOutcome::StillRejected(_) => {}
            _ => self.last_rejection = None,
        }
        outcome
    }

    fn read_source(&mut self) -> SyncOutcome {
        match self.source.clone() {
            SnapshotSource::File(path) => self.read_file(&path),
            SnapshotSource::Http(url) => self.read_http(&url),
        }
    }

    fn read_file(&mut self, path: &Path) -> SyncOutcome {
        let print = match fingerprint(path) {
            Ok(p) => p,
            Err(e) => return SyncOutcome::SourceError(format!("{}: {e}", path.display())),
        };
        if print.len > self.gates.max_bytes {
            self.last_seen = Some(print);
            return self.too_large(&path.display().to_string(), print.len);
        }
        if self.last_seen == Some(print) {
            return self.unchanged();
        }
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return SyncOutcome::SourceError(format!("{}: {e}", path.display())),
        };
        self.last_seen = Some(print);
        self.load(file, Some(print.len))
    }

    fn read_http(&mut self, url: &str) -> SyncOutcome {
        let http = self
            .http
            .get_or_insert_with(|| HttpState::new(&self.http_settings));
        let response = match http.get(url, &self.http_settings) {
            Ok(Fetched::NotModified) => return self.unchanged(),
            Ok(Fetched::Body(response)) => response,
            Err(e) => return SyncOutcome::SourceError(format!("{url}: {e}")),
        };
        let (parts, body) = response.into_parts();
        let length = parts
            .headers
            .get(ureq::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Remember what was fetched, good or bad: the next poll asks only for something newer,
        // and a rejected export is not downloaded and counted again until it changes.
        let http = self.http.as_mut().expect("set above");
        http.etag = header_text(&parts.headers, ureq::http::header::ETAG);
        http.last_modified = header_text(&parts.headers, ureq::http::header::LAST_MODIFIED);
        if let Some(len) = length.filter(|len| *len > self.gates.max_bytes) {
            return self.too_large(url, len);
        }
        // gzip on the wire is decoded by the client; a gzip snapshot file is decoded by the
        // parser. The size limit applies after both.
        self.load(body.into_reader(), length)
    }

    fn unchanged(&self) -> SyncOutcome {
        match self.last_rejection {
            Some(reason) => SyncOutcome::StillRejected(reason),
            None => SyncOutcome::Unchanged,
        }
    }

    fn too_large(&self, what: &str, len: u64) -> SyncOutcome {
        SyncOutcome::Rejected(SnapshotError::new(
            RejectReason::TooLarge,
            None,
            format!(
                "{what} is {len} bytes, over the limit of {}",
                self.gates.max_bytes
            ),
        ))
    }

    /// Reads, checks and offers a snapshot, keeping a copy in `state_dir` if it goes into
    /// service. The copy is taken from the bytes as they are parsed: what is kept is exactly
    /// what was checked, even if the source changes meanwhile.
    fn load<R: Read>(&self, reader: R, size_hint: Option<u64>) -> SyncOutcome {
        let Some(state_dir) = self.state_dir.clone().filter(|_| self.keep_state) else {
            return match read_snapshot_limited(reader, size_hint, self.gates.max_bytes) {
                Ok(snapshot) => self.offer(snapshot),
                Err(e) => SyncOutcome::Rejected(e),
            };
        };
        let mut copy = match StateCopy::create(&state_dir) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    state_dir = %state_dir.display(),
                    "cannot keep a copy of the snapshot in state_dir: {e}"
                );
                None
            }
        };
        let outcome = match read_snapshot_limited(
            Tee {
                inner: reader,
                copy: copy.as_mut(),
            },
            size_hint,
            self.gates.max_bytes,
        ) {
            Ok(snapshot) => self.offer(snapshot),
            Err(e) => SyncOutcome::Rejected(e),
        };
        if let Some(copy) = copy {
            if let SyncOutcome::Loaded { serial, .. } = outcome {
                if let Err(e) = copy.commit(serial) {
                    tracing::warn!(
                        state_dir = %state_dir.display(),
                        "the snapshot is in service but could not be kept in state_dir: {e}"
                    );
                }
            }
        }
        outcome
    }

    /// Checks `snapshot` against the one in service and swaps it in if it may replace it.
    pub fn offer(&self, snapshot: Snapshot) -> SyncOutcome {
        let current = self.handle.load();
        let previous_serial = current.as_ref().map(|c| c.serial);
        if let Some(current) = current.as_ref() {
            let serial = snapshot.header.serial;
            let from_deltas = current.deltas_applied > 0;
            if serial < current.serial {
                // Deltas ran ahead of the snapshot feed: not a regression of the exporter.
                if from_deltas && serial >= current.base_serial {
                    return SyncOutcome::Unchanged;
                }
                return SyncOutcome::Rejected(SnapshotError::new(
                    RejectReason::SerialRegression,
                    Some(1),
                    format!(
                        "serial {serial} is lower than {} in service",
                        current.serial
                    ),
                ));
            }
            // The full snapshot of the serial deltas led to replaces what they built.
            if serial == current.serial && !from_deltas {
                if snapshot.sha256 == current.sha256 {
                    return SyncOutcome::Unchanged;
                }
                return SyncOutcome::Rejected(SnapshotError::new(
                    RejectReason::SerialReused,
                    Some(1),
                    format!(
                        "serial {serial} is the one in service but the content differs; \
                         every export must raise the serial"
                    ),
                ));
            }
        }
        let in_service = current.as_ref().map(|c| c.entries);
        drop(current);
        if let Err(e) = self.check_gates(&snapshot.registry, in_service) {
            return SyncOutcome::Rejected(e);
        }
        let serial = snapshot.header.serial;
        let build_time = snapshot.build_time;
        let loaded = LoadedRegistry::from_snapshot(snapshot);
        let entries = loaded.entries;
        self.handle.swap_in(loaded);
        SyncOutcome::Loaded {
            serial,
            entries,
            build_time,
            previous_serial,
        }
    }

    /// The safety gates a new registry (from a snapshot or a delta) must pass: the shrink limit
    /// against the `in_service` entries, and the canaries.
    fn check_gates(&self, next: &Registry, in_service: Option<usize>) -> Result<(), SnapshotError> {
        if let Some(current) = in_service {
            let kept = next.len() as f64;
            let floor = current as f64 * self.gates.min_kept_fraction;
            if kept < floor {
                return Err(SnapshotError::new(
                    RejectReason::ShrinkLimit,
                    None,
                    format!(
                        "{} entries against {current} in service: more than the {:.0}% shrink \
                         allowed (registry.max_shrink_percent)",
                        next.len(),
                        (1.0 - self.gates.min_kept_fraction) * 100.0
                    ),
                ));
            }
        }
        let now = unix_now();
        for canary in &self.gates.canaries {
            let got = next.decide(&canary.host, canary.require, now);
            if got != canary.expect {
                return Err(SnapshotError::new(
                    RejectReason::Canary,
                    None,
                    format!(
                        "canary {} decides {got:?}, expected {:?}",
                        canary.host, canary.expect
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, fsynced, renamed, the directory
/// fsynced.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary file in `state_dir` that becomes `registry.snapshot` on commit (written, synced,
/// renamed, directory synced), and is removed otherwise.
struct StateCopy {
    file: io::BufWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
    failed: Option<io::Error>,
}

impl StateCopy {
    fn create(dir: &Path) -> io::Result<StateCopy> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp-{}", std::process::id()));
        let file = File::create(&tmp)?;
        Ok(StateCopy {
            file: io::BufWriter::with_capacity(1 << 20, file),
            tmp,
            dir: dir.to_owned(),
            failed: None,
        })
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.file.write_all(bytes) {
                self.failed = Some(e);
            }
        }
    }

    /// Puts the copy in place as the snapshot of `serial`, and drops the kept deltas it makes
    /// obsolete (those from a lower serial; later ones still chain on top of it).
    fn commit(mut self, serial: u64) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.file.flush()?;
        self.file.get_ref().sync_all()?;
        std::fs::rename(&self.tmp, self.dir.join(STATE_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        let deltas = self.dir.join(STATE_DELTAS);
        if let Ok(entries) = std::fs::read_dir(&deltas) {
            for entry in entries.flatten() {
                let from = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u64>().ok());
                if from.is_some_and(|from| from < serial) {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        // Gone after a commit's rename; otherwise an abandoned copy.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads through `inner`, copying every byte read into the state copy.
struct Tee<'a, R> {
    inner: R,
    copy: Option<&'a mut StateCopy>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(copy) = self.copy.as_mut() {
            copy.write(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Status;
    use crate::snapshot::SnapshotWriter;

    fn snapshot(serial: u64, names: &[&str]) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), serial, "2026-11-22T03:00:00Z").unwrap();
        for n in names {
            w.record(n, Status::Connected, None, None).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn safety_gates_refuse_shrinks_oversize_and_failed_canaries() {
        use crate::{Decision, Requirement};
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.tsv");
        let names: Vec<String> = (0..100).map(|i| format!("n{i}.example.cn")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        std::fs::write(&source, snapshot(1, &refs)).unwrap();
        let gates = SafetyGates {
            min_kept_fraction: 0.9,
            max_bytes: 10_000,
            canaries: vec![Canary {
                host: crate::parse_authority(b"www.n0.example.cn").unwrap(),
                require: Requirement::Connected,
                expect: Decision::Allow,
            }],
        };
        let handle = RegistryHandle::new();
        let mut syncer =
            Syncer::new(SnapshotSource::File(source.clone()), handle.clone()).with_gates(gates);
        assert!(matches!(
            syncer.sync_once(),
            SyncOutcome::Loaded { serial: 1, .. }
        ));

        let reason = |syncer: &mut Syncer, bytes: Vec<u8>| {
            std::fs::write(&source, bytes).unwrap();
            match syncer.sync_once() {
                SyncOutcome::Rejected(e) => Some(e.reason),
                _ => None,
            }
        };
        // 89 of 100: more than a 10% shrink.
        assert_eq!(
            reason(&mut syncer, snapshot(2, &refs[..89])),
            Some(RejectReason::ShrinkLimit)
        );
        // The canary's name gone.
        assert_eq!(
            reason(&mut syncer, snapshot(3, &refs[1..])),
            Some(RejectReason::Canary)
        );
        // Over the size limit.
        let big: Vec<String> = (0..400).map(|i| format!("big{i}.example.cn")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        assert_eq!(
            reason(&mut syncer, snapshot(4, &big)),
            Some(RejectReason::TooLarge)
        );
        // 90 of 100 with the canary: accepted.
        assert_eq!(reason(&mut syncer, snapshot(5, &refs[..90])), None);
        assert_eq!(handle.load().as_ref().unwrap().serial, 5);
    }

    #[test]
    fn accepted_snapshots_are_kept_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.tsv");
        let state = dir.path().join("state");
        std::fs::write(&source, snapshot(4, &["kept.cn"])).unwrap();
        let handle = RegistryHandle::new();
        let mut syncer = Syncer::new(SnapshotSource::File(source.clone()), handle)
            .with_state_dir(Some(state.clone()));
        assert!(matches!(
            syncer.sync_once(),
            SyncOutcome::Loaded { serial: 4, .. }
        ));
        assert_eq!(
            std::fs::read(state.join(STATE_FILE)).unwrap(),
            snapshot(4, &["kept.cn"])
        );

        // A rejected snapshot does not replace the kept one, and leaves no temporary file.
        std::fs::write(&source, b"garbage").unwrap();
        assert!(matches!(syncer.sync_once(), SyncOutcome::Rejected(_)));
        assert_eq!(
            std::fs::read(state.join(STATE_FILE)).unwrap(),
            snapshot(4, &["kept.cn"])
        );
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);

        // A fresh gate whose source is gone comes back from the state directory.
        std::fs::remove_file(&source).unwrap();
        let fresh = RegistryHandle::new();
        let mut syncer =
            Syncer::new(SnapshotSource::File(source), fresh.clone()).with_state_dir(Some(state));
        assert!(matches!(syncer.sync_once(), SyncOutcome::SourceError(_)));
        assert!(matches!(
            syncer.restore_from_state(),
            Some(SyncOutcome::Loaded { serial: 4, .. })
        ));
        assert_eq!(fresh.load().as_ref().unwrap().entries, 1);
    }

    fn delta(from: u64, to: u64, lines: &[&str], entries: u64) -> Vec<u8> {
        let mut w =
            crate::delta::DeltaWriter::new(Vec::new(), from, to, "2026-11-22T03:00:05Z").unwrap();
        for l in lines {
            w.raw_line(l).unwrap();
        }
        w.finish(entries).unwrap()
    }

    #[test]
    fn deltas_go_on_while_a_compaction_runs_and_it_carries_them_over() {
        use crate::delta::COMPACT_MIN_OVERLAY;
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.tsv");
        let deltas = dir.path().join("deltas");
        std::fs::create_dir(&deltas).unwrap();
        std::fs::write(&source, snapshot(1, &["a.cn", "b.cn"])).unwrap();
        let handle = RegistryHandle::new();
        let prefix = DeltaSource::parse(&format!("file://{}/", deltas.display())).unwrap();
        let mut syncer = Syncer::new(SnapshotSource::File(source.clone()), handle.clone())
            .with_delta_source(Some(prefix));
        // The compaction's thread waits for the test before it starts.
        let hold = Arc::new(std::sync::Barrier::new(2));
        syncer.hold_compaction = Some(hold.clone());
        assert!(matches!(syncer.sync_once(), SyncOutcome::Loaded { .. }));
        let decides = |host: &str| {
            let current = handle.current.load_full().unwrap();
            let host = crate::parse_authority(host.as_bytes()).unwrap();
            current.registry.covering(&host).is_some()
        };

        // A batch past the compaction threshold, then one more filing: both go into service
        // with their changes over the index; a compaction starts, and nothing waits for it.
        let batch = COMPACT_MIN_OVERLAY + 10;
        let lines: Vec<String> = (0..batch)
            .map(|i| format!("+\tbatch{i}.cn\tconnected\n"))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let total = 2 + batch as u64;
        std::fs::write(deltas.join("1"), delta(1, 2, &refs, total)).unwrap();
        std::fs::write(
            deltas.join("2"),
            delta(2, 3, &["+\tlate.cn\tconnected\n"], total + 1),
        )
        .unwrap();
        let steps = syncer.sync_deltas();
        let outcomes: Vec<&SyncOutcome> = steps.iter().map(|(_, o)| o).collect();
        assert!(
            matches!(
                outcomes[..],
                [
                    SyncOutcome::DeltaApplied { to: 2, overlay: o1, .. },
                    SyncOutcome::DeltaApplied { to: 3, overlay: o2, .. },
                ] if *o1 == batch && *o2 == batch + 1
            ),
            "{outcomes:?}"
        );
        assert!(decides("late.cn") && decides("batch0.cn"));

        // A delta published while the compaction runs (held) is applied at once.
        std::fs::write(
            deltas.join("3"),
            delta(3, 4, &["+\tlater.cn\tconnected\n", "-\ta.cn\n"], total + 1),
        )
        .unwrap();
        let steps = syncer.sync_deltas();
        assert!(
            matches!(steps[..], [(_, SyncOutcome::DeltaApplied { to: 4, .. })]),
            "{steps:?}"
        );
        assert!(decides("later.cn") && !decides("a.cn"));

        // Let the compaction run; the next syncs put it in service, with delta 3 carried over.
        hold.wait();
        let mut compacted = None;
        for _ in 0..6000 {
            let steps = syncer.sync_deltas();
            if let Some((_, c @ SyncOutcome::Compacted { .. })) = steps.last() {
                compacted = Some(format!("{c:?}"));
                assert!(
                    matches!(c, SyncOutcome::Compacted { serial: 4, folded, overlay: 2, .. } if *folded == batch + 1),
                    "{c:?}"
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(compacted.is_some(), "the compaction never finished");
        let current = handle.current.load_full().unwrap();
        assert_eq!((current.serial, current.entries), (4, total as usize + 1));
        assert_eq!(current.registry.len(), total as usize + 1);
        assert_eq!(
            current.registry.overlay_len(),
            2,
            "only delta 3's changes are held over the new index"
        );
        drop(current);
        for host in ["late.cn", "later.cn", "batch0.cn", "www.b.cn"] {
            assert!(decides(host), "{host}");
        }
        assert!(!decides("a.cn"));

        // Nothing new: nothing to apply, nothing to compact.
        let steps = syncer.sync_deltas();
        assert!(
            matches!(steps[..], [(_, SyncOutcome::Unchanged)]),
            "{steps:?}"
        );
        assert!(syncer.compaction.is_none());
    }

    #[test]
    fn deltas_catch_up_fall_back_on_a_bad_one_and_are_replayed_from_state() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.tsv");
        let deltas = dir.path().join("deltas");
        let state = dir.path().join("state");
        std::fs::create_dir(&deltas).unwrap();
        std::fs::write(&source, snapshot(1, &["a.cn", "b.cn"])).unwrap();
        let handle = RegistryHandle::new();
        let prefix = DeltaSource::parse(&format!("file://{}/", deltas.display())).unwrap();
        let new_syncer = |handle: Arc<RegistryHandle>| {
            Syncer::new(SnapshotSource::File(source.clone()), handle)
                .with_state_dir(Some(state.clone()))
                .with_delta_source(Some(prefix.clone()))
                .with_gates(SafetyGates {
                    min_kept_fraction: 0.5,
                    ..SafetyGates::default()
                })
        };
        let mut syncer = new_syncer(handle.clone());
        assert!(matches!(syncer.sync_once(), SyncOutcome::Loaded { .. }));
        // Nothing to apply yet.
        let steps = syncer.sync_deltas();
        assert!(
            matches!(steps[..], [(_, SyncOutcome::Unchanged)]),
            "{steps:?}"
        );

        // Two deltas in a row: one sync catches up.
        std::fs::write(deltas.join("1"), delta(1, 2, &["+\tc.cn\tconnected\n"], 3)).unwrap();
        std::fs::write(deltas.join("2"), delta(2, 5, &["-\ta.cn\n"], 2)).unwrap();
        let steps = syncer.sync_deltas();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(matches!(
            steps[1].1,
            SyncOutcome::DeltaApplied {
                from: 2,
                to: 5,
                entries: 2,
                ..
            }
        ));
        let current = handle.current.load_full().unwrap();
        assert_eq!(
            (current.serial, current.base_serial, current.deltas_applied),
            (5, 1, 2)
        );
        drop(current);
        assert_eq!(
            std::fs::read_dir(state.join(STATE_DELTAS)).unwrap().count(),
            2
        );

        // A bad delta: rejected, the registry stays, the snapshot is tried (unchanged file).
        let bad = String::from_utf8(delta(5, 6, &["+\td.cn\tconnected\n"], 3))
            .unwrap()
            .replace("d.cn", "e.cn");
        std::fs::write(deltas.join("5"), &bad).unwrap();
        let steps = syncer.sync_deltas();
        assert!(
            matches!(&steps[..], [(_, SyncOutcome::DeltaRejected(e)), (_, SyncOutcome::Unchanged)] if e.reason == RejectReason::DeltaChecksum),
            "{steps:?}"
        );
        assert_eq!(handle.load().as_ref().unwrap().serial, 5);
        // Left in place: not rejected (nor fallen back from) again.
        let steps = syncer.sync_deltas();
        assert!(
            matches!(
                steps[..],
                [(_, SyncOutcome::StillRejected(RejectReason::DeltaChecksum))]
            ),
            "{steps:?}"
        );
        std::fs::remove_file(deltas.join("5")).unwrap();

        // A snapshot behind the deltas is not a regression; one from before the base is.
        assert!(matches!(
            syncer
                .offer(read_snapshot_limited(&snapshot(3, &["x.cn"])[..], None, u64::MAX).unwrap()),
            SyncOutcome::Unchanged
        ));
        assert!(matches!(
            syncer
                .offer(read_snapshot_limited(&snapshot(0, &["x.cn"])[..], None, u64::MAX).unwrap()),
            SyncOutcome::Rejected(SnapshotError {
                reason: RejectReason::SerialRegression,
                ..
            })
        ));

        // A restart with the source gone: the kept snapshot, then the kept deltas.
        std::fs::remove_file(&source).unwrap();
        let fresh = RegistryHandle::new();
        let mut syncer = new_syncer(fresh.clone());
        assert!(matches!(
            syncer.restore_from_state(),
            Some(SyncOutcome::Loaded { serial: 1, .. })
        ));
        let steps = syncer.replay_state_deltas();
        assert_eq!(steps.len(), 2, "{steps:?}");
        let current = fresh.current.load_full().unwrap();
        assert_eq!((current.serial, current.entries), (5, 2));
        let host = crate::parse_authority(b"a.cn").unwrap();
        assert_eq!(current.registry.covering(&host), None);
        drop(current);

        // The full snapshot of a later serial replaces it and drops the obsolete deltas.
        std::fs::write(&source, snapshot(6, &["b.cn", "c.cn", "f.cn"])).unwrap();
        assert!(matches!(
            syncer.sync_once(),
            SyncOutcome::Loaded { serial: 6, .. }
        ));
        assert_eq!(
            std::fs::read_dir(state.join(STATE_DELTAS)).unwrap().count(),
            0
        );
        assert_eq!(fresh.load().as_ref().unwrap().deltas_applied, 0);
    }
}
