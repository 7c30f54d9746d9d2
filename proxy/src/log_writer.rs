//! One buffered writer per log file (the audit log, the access log): request threads append
//! whole lines to in-memory buffers, a dedicated thread writes them to the file in large writes,
//! and no line is ever dropped.
//!
//! - **Shards.** Lines go into one of a few buffers (`Shard`), picked by a key that stays the
//!   same for a connection (its client address): the lines of one connection keep their order,
//!   and threads serving different connections rarely meet on the same lock. A shard's mutex is
//!   held only while one line is appended (no system call under it).
//! - **Hand-over.** A shard that holds `BUFFER_BYTES` or more is handed to the writer thread as
//!   it is (a FIFO channel of byte buffers), and the shard starts an empty buffer from a pool.
//!   The writer also sweeps every shard each `flush_interval` and hands over what they hold, so
//!   a line reaches the file within one interval of being written, however quiet the gate is.
//!   Everything reaches the file through the one FIFO, in the order it was handed over under the
//!   shard's lock: a sweep cannot overtake a buffer handed over before it.
//! - **Back-pressure, never loss.** When more than `MAX_BACKLOG_BYTES` wait for the writer, a
//!   thread that hands over a buffer waits until the writer has caught up (counted in the log's
//!   `*_backpressure_total`). A write that fails (disk full, file gone) is counted in
//!   `*_write_errors_total` and retried on a reopened file, keeping its lines; if it keeps
//!   failing, the backlog fills and the gate slows down rather than forget a filing decision.
//! - **Reopen** (`reopen`, on SIGUSR1 for logrotate's `create` mode): everything handed over
//!   before the request is written to the old file first, then the path is opened again; every
//!   line lands in exactly one of the two files.
//! - **Flush** at shutdown (`LogWriter::shutdown`, and `Drop`): every shard is swept and the
//!   FIFO written before the thread ends.
//!
//! What a crash loses: the lines not yet written, at most one `flush_interval` of them (plus a
//! full buffer the writer had not finished writing). Lines written survive the process (they are
//! in the kernel's page cache); the writer does not `fsync` each batch, so a machine that loses
//! power also loses what the kernel had not written back. `flush` and `shutdown` do `fsync`.
//!
//! Why not `tracing-appender`'s `non_blocking`: it drops lines when its queue is full unless
//! built with `lossy(false)`, sends every line as its own heap allocation through a channel,
//! writes each one with its own `write` (unless the writer is wrapped in a `BufWriter`, which
//! then holds lines with no bound in time), cannot reopen a file on a signal, and sits behind
//! `tracing`'s formatting, which is the cost this module exists to avoid.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// A shard is handed to the writer once it holds this much.
pub const BUFFER_BYTES: usize = 64 * 1024;
/// Bytes handed over and not yet written above which a producer waits.
pub const MAX_BACKLOG_BYTES: usize = 64 * BUFFER_BYTES;
/// Empty buffers kept for reuse.
const POOL: usize = 16;
/// At most this many buffers go into one `writev`.
const MAX_BATCH: usize = 64;
/// How long the writer waits before trying a failed write again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// A log's counters (`icp_gate_audit_*` for the audit log).
#[derive(Clone)]
pub struct LogCounters {
    /// Lines written to the file.
    pub lines: IntCounter,
    /// Times a request thread waited for the writer to catch up.
    pub backpressure: IntCounter,
    /// Writes (and reopens) that failed.
    pub write_errors: IntCounter,
}

/// One shard: the lines appended since it was last handed over.
struct Pending {
    buf: Vec<u8>,
    lines: u64,
}

/// A shard's lock on its own cache lines, so that two shards never share one.
#[repr(align(128))]
struct Shard(Mutex<Pending>);

enum Msg {
    /// Lines to write, and how many.
    Batch(Vec<u8>, u64),
    /// Sweep the shards, then act once everything handed over before is written.
    Control(Control, Sender<()>),
    /// The marker `Control` leaves behind its sweep.
    Marker(Control, Sender<()>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Flush,
    Reopen,
    Stop,
}

/// What producers share with the writer thread.
struct Inner {
    shards: Box<[Shard]>,
    /// `shards.len() - 1` (a power of two).
    mask: usize,
    tx: Sender<Msg>,
    /// Tests hold this to stall the writer thread.
    #[cfg(test)]
    hold: Mutex<()>,
    /// Bytes handed over and not yet written.
    backlog: AtomicUsize,
    /// Producers waiting for room (so the writer wakes them only when there are some).
    waiting: AtomicUsize,
    room: Condvar,
    room_lock: Mutex<()>,
    pool: Mutex<Vec<Vec<u8>>>,
    /// Set once the writer thread has ended: nobody waits for it any more.
    stopped: AtomicBool,
    counters: LogCounters,
}

/// The handle request threads write lines through; cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Inner>,
}

/// Owns a log's writer thread: `shutdown` (or dropping it) writes out every line and ends it.
pub struct LogWriter {
    sink: LogSink,
    thread: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a line was appended leaves at worst a partial line: keep logging.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens `path` to append, creating it (mode 0640) when missing.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl LogWriter {
    /// Opens `path` and starts its writer thread. `shards` is rounded up to a power of two.
    pub fn open(
        name: &str,
        path: &Path,
        shards: usize,
        flush_interval: Duration,
        counters: LogCounters,
    ) -> std::io::Result<LogWriter> {
        let file = open_append(path)?;
        let shards = shards.clamp(1, 256).next_power_of_two();
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            shards: (0..shards)
                .map(|_| {
                    Shard(Mutex::new(Pending {
                        buf: Vec::with_capacity(BUFFER_BYTES + 4096),
                        lines: 0,
                    }))
                })
                .collect(),
            mask: shards - 1,
            tx,
            #[cfg(test)]
            hold: Mutex::new(()),
            backlog: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Condvar::new(),
            room_lock: Mutex::new(()),
            pool: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            counters,
        });
        let thread = Thread {
            inner: inner.clone(),
            rx,
            path: path.to_owned(),
            file,
            interval: flush_interval.max(Duration::from_millis(1)),
            name: name.to_owned(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("log {name}"))
            .spawn(move || thread.run())?;
        Ok(LogWriter {
            sink: LogSink { inner },
            thread: Some(thread),
        })
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Writes every line out, `fsync`s the file and ends the writer thread. Lines written
    /// after this are not written (the process is ending).
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.sink.control(Control::Stop);
            let _ = thread.join();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl LogSink {
    /// Appends one line: `write` appends its bytes, which must end with `\n`, to the buffer of
    /// the shard `key` picks (the same key for every line of a connection keeps their order).
    #[inline]
    pub fn write_line(&self, key: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let inner = &*self.inner;
        // Fibonacci hashing: the top bits of key * 2^64/phi, so nearby keys (ports) spread.
        let index = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & inner.mask;
        let mut pending = lock(&inner.shards[index].0);
        write(&mut pending.buf);
        pending.lines += 1;
        if pending.buf.len() < BUFFER_BYTES {
            return;
        }
        let full = std::mem::replace(&mut pending.buf, inner.empty_buffer());
        let lines = std::mem::take(&mut pending.lines);
        let backlog = inner.hand_over(full, lines);
        drop(pending);
        if backlog > MAX_BACKLOG_BYTES {
            inner.wait_for_room();
        }
    }

    /// Writes out everything appended so far and `fsync`s the file; returns when it is done.
    pub fn flush(&self) {
        self.control(Control::Flush);
    }

    /// Writes out everything appended so far to the file as it is, then opens the path again
    /// (logrotate has moved the file away); returns when it is done.
    pub fn reopen(&self) {
        self.control(Control::Reopen);
    }

    fn control(&self, what: Control) {
        if self.inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let (ack, done) = mpsc::channel();
        if self.inner.tx.send(Msg::Control(what, ack)).is_ok() {
            // An error: the writer thread has ended (it had been stopped).
            let _ = done.recv();
        }
    }
}

impl Inner {
    fn empty_buffer(&self) -> Vec<u8> {
        lock(&self.pool)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES + 4096))
    }

    /// Queues a buffer for the writer; the backlog after it.
    fn hand_over(&self, buf: Vec<u8>, lines: u64) -> usize {
        let len = buf.len();
        let backlog = self.backlog.fetch_add(len, Ordering::SeqCst) + len;
        // The writer thread keeps its receiver until every sink is gone, so this cannot fail
        // while a sink exists, except after `shutdown` (the process is ending).
        let _ = self.tx.send(Msg::Batch(buf, lines));
        backlog
    }

    /// Back-pressure: waits until the writer has brought the backlog under the limit.
    #[cold]
    fn wait_for_room(&self) {
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        self.counters.backpressure.inc();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&self.room_lock);
        while self.backlog.load(Ordering::SeqCst) > MAX_BACKLOG_BYTES
            && !self.stopped.load(Ordering::Acquire)
        {
            guard = self
                .room
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(guard);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// The writer took `bytes` off the backlog: wake the producers waiting for room.
    fn written(&self, bytes: usize) {
        self.backlog.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.room_lock);
            self.room.notify_all();
        }
    }

    /// Hands over what every shard holds.
    fn sweep(&self) {
        for shard in self.shards.iter() {
            let mut pending = lock(&shard.0);
            if pending.buf.is_empty() {
                continue;
            }
            let buf = std::mem::replace(&mut pending.buf, self.empty_buffer());
            let lines = std::mem::take(&mut pending.lines);
            self.hand_over(buf, lines);
        }
    }
}

/// The writer thread's state.
struct Thread {
    inner: Arc<Inner>,
    rx: Receiver<Msg>,
    path: PathBuf,
    file: File,
    interval: Duration,
    name: String,
}

impl Thread {
    fn run(mut self) {
        let mut next_sweep = Instant::now() + self.interval;
        let mut batch: Vec<(Vec<u8>, u64)> = Vec::with_capacity(MAX_BATCH);
        let mut held: Option<Msg> = None;
        loop {
            let msg = match held.take() {
                Some(msg) => msg,
                None => {
                    let wait = next_sweep.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(wait) {
                        Ok(msg) => msg,
                        Err(RecvTimeoutError::Timeout) => {
                            self.inner.sweep();
                            next_sweep = Instant::now() + self.interval;
                            continue;
                        }
                        // Unreachable: `Inner` holds a sender for as long as this thread runs.
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            };
            match msg {
                Msg::Batch(buf, lines) => {
                    batch.push((buf, lines));
                    // Everything else already queued goes into the same `writev`.
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(Msg::Batch(buf, lines)) => batch.push((buf, lines)),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.write_batch(&mut batch);
                }
                Msg::Control(what, ack) => {
                    // Whatever the shards hold goes behind everything already queued, and the
                    // marker behind that.
                    self.inner.sweep();
                    let _ = self.inner.tx.send(Msg::Marker(what, ack));
                }
                Msg::Marker(what, ack) => {
                    match what {
                        Control::Flush => self.sync(),
                        Control::Reopen => self.reopen(),
                        Control::Stop => {
                            self.sync();
                            self.inner.stopped.store(true, Ordering::Release);
                            // Producers waiting for room stop waiting.
                            let _guard = lock(&self.inner.room_lock);
                            self.inner.room.notify_all();
                        }
                    }
                    let _ = ack.send(());
                    if what == Control::Stop {
                        return;
                    }
                }
            }
        }
    }

    /// Writes the batch in as few system calls as the kernel allows, retrying (on a reopened
    /// file) until it is written; counts the lines.
    fn write_batch(&mut self, batch: &mut Vec<(Vec<u8>, u64)>) {
        #[cfg(test)]
        drop(lock(&self.inner.hold));
        let bytes: usize = batch.iter().map(|(b, _)| b.len()).sum();
        let lines: u64 = batch.iter().map(|(_, n)| n).sum();
        loop {
            let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|(b, _)| IoSlice::new(b)).collect();
            match write_all_vectored(&mut self.file, &mut slices) {
                Ok(()) => break,
                Err((written, e)) => {
                    self.inner.counters.write_errors.inc();
                    tracing::error!(
                        log = self.name,
                        path = %self.path.display(),
                        error = %e,
                        "cannot write the log; retrying (no line is dropped)"
                    );
                    drop_written(batch, written);
                    std::thread::sleep(RETRY_AFTER);
                    self.reopen();
                }
            }
        }
        self.inner.counters.lines.inc_by(lines);
        let mut pool = lock(&self.inner.pool);
        for (mut buf, _) in batch.drain(..) {
            if pool.len() < POOL {
                buf.clear();
                pool.push(buf);
            }
        }
        drop(pool);
        self.inner.written(bytes);
    }

    fn sync(&mut self) {
        if let Err(e) = self.file.sync_data() {
            self.inner.counters.write_errors.inc();
            tracing::warn!(log = self.name, path = %self.path.display(), error = %e, "cannot fsync the log");
        }
    }

    fn reopen(&mut self) {
        match open_append(&self.path) {
            Ok(file) => {
                self.sync();
                self.file = file;
            }
            Err(e) => {
                // The lines keep going to the file already open (wherever it was moved).
                self.inner.counters.write_errors.inc();
                tracing::error!(
                    log = self.name,
                    path = %self.path.display(),
                    error = %e,
                    "cannot reopen the log; writing on to the file already open"
                );
            }
        }
    }
}

/// Reopens log files on SIGUSR1 (logrotate's `postrotate kill -USR1`), as a Pingora background
/// service.
pub struct ReopenOnSignal {
    pub sinks: Vec<LogSink>,
}

/// Installs the process's SIGUSR1 handler at once (tokio's, which stays for the life of the
/// process), so that a SIGUSR1 that arrives before `ReopenOnSignal` listens (while a large
/// registry loads) is missed, not fatal: its default action ends the process.
pub fn hold_sigusr1() {
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        rt.block_on(async {
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
        });
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReopenOnSignal {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot handle SIGUSR1: log files will not be reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => {}
                _ = shutdown.changed() => return,
            }
            let sinks = self.sinks.clone();
            // `reopen` waits for the writer threads: not on the runtime's thread.
            let _ = tokio::task::spawn_blocking(move || {
                for sink in &sinks {
                    sink.reopen();
                }
            })
            .await;
            tracing::info!(files = self.sinks.len(), "SIGUSR1: log files reopened");
        }
    }
}

/// `write_all` for several buffers: on failure, how many bytes were written before it.
fn write_all_vectored(
    file: &mut File,
    mut slices: &mut [IoSlice<'_>],
) -> Result<(), (usize, std::io::Error)> {
    let mut written = 0;
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => {
                return Err((
                    written,
                    std::io::Error::new(std::io::ErrorKind::WriteZero, "wrote nothing"),
                ))
            }
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

/// Takes the first `written` bytes off the batch (a failed write may have written part of it).
fn drop_written(batch: &mut Vec<(Vec<u8>, u64)>, mut written: usize) {
    while written > 0 && !batch.is_empty() {
        let first = &mut batch[0].0;
        if written >= first.len() {
            written -= first.len();
            batch.remove(0);
        } else {
            first.drain(..written);
            written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> LogCounters {
        LogCounters {
            lines: IntCounter::new("l", "l").unwrap(),
            backpressure: IntCounter::new("b", "b").unwrap(),
            write_errors: IntCounter::new("e", "e").unwrap(),
        }
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Many threads, many connections each: every line arrives once, and the lines of each
    /// connection in the order they were written.
    #[test]
    fn every_line_arrives_once_in_order_per_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let c = counters();
        let mut writer =
            LogWriter::open("test", &path, 4, Duration::from_millis(5), c.clone()).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let sink = writer.sink();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let conn = t * 100 + i % 7;
                        sink.write_line(conn, |out| {
                            out.extend_from_slice(
                                format!("{conn} {i} {}\n", "x".repeat(40)).as_bytes(),
                            )
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        writer.shutdown();
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 80_000);
        assert_eq!(c.lines.get(), 80_000);
        let mut last: std::collections::HashMap<u64, u64> = Default::default();
        for line in &lines {
            let mut parts = line.split(' ');
            let conn: u64 = parts.next().unwrap().parse().unwrap();
            let i: u64 = parts.next().unwrap().parse().unwrap();
            if let Some(prev) = last.insert(conn, i) {
                assert!(prev < i, "connection {conn}: line {i} after {prev}");
            }
        }
    }

    /// A quiet log still reaches the file: the sweep hands over a shard that never fills.
    #[test]
    fn a_few_lines_reach_the_file_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let writer =
            LogWriter::open("test", &path, 2, Duration::from_millis(10), counters()).unwrap();
        writer
            .sink()
            .write_line(1, |o| o.extend_from_slice(b"one\n"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while lines_of(&path).is_empty() {
            assert!(Instant::now() < deadline, "the line never reached the file");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lines_of(&path), ["one"]);
    }

    /// Rotation while lines are written: the old file and the new one together hold every line
    /// exactly once.
    #[test]
    fn reopen_under_load_loses_and_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let rotated = dir.path().join("audit.log.1");
        let mut writer =
            LogWriter::open("test", &path, 4, Duration::from_millis(5), counters()).unwrap();
        let sink = writer.sink();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let producer = std::thread::spawn(move || {
            let mut i = 0u64;
            // Lines before, during and after the reopen.
            while !stopped.load(Ordering::Relaxed) {
                sink.write_line(i % 13, |o| o.extend_from_slice(format!("{i}\n").as_bytes()));
                i += 1;
            }
            for _ in 0..5_000 {
                sink.write_line(i % 13, |o| o.extend_from_slice(format!("{i}\n").as_bytes()));
                i += 1;
            }
            i
        });
        while writer.sink.inner.counters.lines.get() < 5_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::fs::rename(&path, &rotated).unwrap();
        writer.sink().reopen();
        stop.store(true, Ordering::Relaxed);
        let written = producer.join().unwrap();
        writer.shutdown();
        let old = lines_of(&rotated);
        let new = lines_of(&path);
        let mut all: Vec<u64> = old.iter().chain(&new).map(|l| l.parse().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..written).collect::<Vec<_>>());
        assert!(new.len() >= 5_000, "{} lines in the new file", new.len());
        assert!(old.len() >= 5_000, "{} lines in the old file", old.len());
    }

    /// A writer that cannot keep up makes producers wait (counted) rather than drop a line.
    #[test]
    fn a_slow_writer_makes_producers_wait_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let c = counters();
        let mut writer =
            LogWriter::open("test", &path, 1, Duration::from_millis(5), c.clone()).unwrap();
        let held = lock(&writer.sink.inner.hold);
        let sink = writer.sink();
        let line = vec![b'x'; 1023];
        let total = (MAX_BACKLOG_BYTES / 1024) * 3;
        let producer = std::thread::spawn(move || {
            for _ in 0..total {
                sink.write_line(0, |o| {
                    o.extend_from_slice(&line);
                    o.push(b'\n');
                });
            }
        });
        // The producer runs into the limit while the writer is held.
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.backpressure.get() == 0 {
            assert!(Instant::now() < deadline, "no producer ever waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
        producer.join().unwrap();
        writer.shutdown();
        assert_eq!(lines_of(&path).len(), total);
        assert!(c.backpressure.get() >= 1);
    }

    /// Dropping the writer (no `shutdown` call) writes every line out, however long the flush
    /// interval.
    #[test]
    fn dropping_the_writer_writes_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let writer =
            LogWriter::open("test", &path, 4, Duration::from_secs(3600), counters()).unwrap();
        for i in 0..1000u64 {
            writer
                .sink()
                .write_line(i, |o| o.extend_from_slice(format!("{i}\n").as_bytes()));
        }
        drop(writer);
        assert_eq!(lines_of(&path).len(), 1000);
    }

    #[test]
    fn partial_writes_are_taken_off_the_front() {
        let mut batch = vec![(b"abc".to_vec(), 1), (b"defg".to_vec(), 1)];
        drop_written(&mut batch, 5);
        assert_eq!(batch, vec![(b"fg".to_vec(), 1)]);
    }
}
