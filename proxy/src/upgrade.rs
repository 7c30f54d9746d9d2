//! Binary and configuration upgrades that cannot take the service down.
//!
//! Pingora's graceful upgrade: a new process started with `-u` waits on `server.upgrade_sock`;
//! the old one, on SIGQUIT, sends it the listening sockets, keeps accepting for 5 more seconds,
//! then shuts down gracefully. Left as it is, that ends the old process whatever happens to the
//! new one: SIGQUIT with no new process waiting (or one that failed to start) is an outage.
//! Three things make it safe:
//!
//! 1. The new process takes the listeners only once it could serve with them: its
//!    configuration is valid, its registry (from `state_dir`, else the source) and certificates
//!    are loaded, every service is built. Before that it has touched nothing the old process
//!    serves with; if any of it fails, it exits and the old process never hears of it
//!    (`server::run`).
//! 2. The old process hands over only to a process that is waiting for the sockets: on SIGQUIT
//!    it looks for a socket listening on `server.upgrade_sock` ([`SafeShutdownSignals`]), and
//!    without one it logs the refusal and keeps serving.
//! 3. [`hand_over`] (`icp-gate upgrade`, the systemd unit's `ExecReload`) starts the new process,
//!    waits until it says it is prepared, and only then sends SIGQUIT to the old one; it
//!    succeeds once the new process says it is ready (every listener up, a registry in service).

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::notify::{Notifier, PREPARED, UPGRADE_NOTIFY_ENV};

/// How long the old process looks for a new one on `upgrade_sock` after SIGQUIT (the new one
/// may be a moment behind the message that it is prepared).
const WAIT_FOR_NEW_PROCESS: Duration = Duration::from_secs(5);

/// Pingora's shutdown signals, with SIGQUIT honoured only when a new process waits for the
/// listeners: SIGTERM is the graceful shutdown, SIGINT the fast one.
pub struct SafeShutdownSignals {
    pub upgrade_sock: String,
    pub notifier: Notifier,
    /// Set once the listeners are being handed over.
    pub handing_over: Arc<AtomicBool>,
}

#[async_trait]
impl ShutdownSignalWatch for SafeShutdownSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).expect("installing the SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    let sock = &self.upgrade_sock;
                    if new_process_waits(sock, WAIT_FOR_NEW_PROCESS).await {
                        tracing::info!(
                            upgrade_sock = sock,
                            "SIGQUIT: a new process waits for the listeners; handing them over"
                        );
                        self.handing_over.store(true, Ordering::Relaxed);
                        self.notifier.status("handing the listeners over to a new process");
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    tracing::error!(
                        upgrade_sock = sock,
                        "SIGQUIT ignored: no process waits for the listeners on \
                         server.upgrade_sock, so handing them over would leave nobody serving; \
                         this gate keeps serving (upgrade with `icp-gate upgrade`, see \
                         docs/operations.md)"
                    );
                }
                _ = term.recv() => {
                    self.notifier.stopping("stopping (SIGTERM): finishing requests in flight");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = int.recv() => {
                    self.notifier.stopping("stopping (SIGINT)");
                    return ShutdownSignal::FastShutdown;
                }
            }
        }
    }
}

/// Whether a process listens on the Unix socket `path` within `patience`: a new gate waiting
/// for the listeners. Read from `/proc/net/unix` rather than by connecting, which would take
/// the one connection the new process accepts.
async fn new_process_waits(path: &str, patience: Duration) -> bool {
    let until = tokio::time::Instant::now() + patience;
    loop {
        match std::fs::read_to_string("/proc/net/unix") {
            Ok(table) if listening_on(&table, path) => return true,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("cannot read /proc/net/unix to find the new process: {e}");
                return false;
            }
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `__SO_ACCEPTCON` in the flags column of `/proc/net/unix`: the socket listens.
const SO_ACCEPTCON: u32 = 0x0001_0000;

/// Whether `/proc/net/unix` (`table`) lists a listening socket bound to `path`. Its columns:
/// `Num RefCount Protocol Flags Type St Inode Path` (the path, when bound, is the rest).
fn listening_on(table: &str, path: &str) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let flags = fields.nth(3).and_then(|f| u32::from_str_radix(f, 16).ok());
        let bound = fields.nth(3);
        flags.is_some_and(|f| f & SO_ACCEPTCON != 0) && bound == Some(path)
    })
}

/// What the old process's environment says about its supervisor, for a new process started
/// outside it (systemd gives `ExecReload` its `NOTIFY_SOCKET` but not the watchdog's settings).
fn inherited_supervision(old: u32) -> Vec<(String, String)> {
    let environ = std::fs::read(format!("/proc/{old}/environ")).unwrap_or_default();
    let vars: Vec<(String, String)> = environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let get = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut out = Vec::new();
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        if let Some(socket) = get("NOTIFY_SOCKET") {
            out.push(("NOTIFY_SOCKET".to_owned(), socket));
        }
    }
    // The watchdog watched the old process (WATCHDOG_PID names it, or is unset).
    let watched = get("WATCHDOG_PID").is_none_or(|p| p == old.to_string());
    if let (true, Some(usec)) = (watched, get("WATCHDOG_USEC")) {
        out.push(("WATCHDOG_USEC".to_owned(), usec));
    }
    out
}

/// The `icp-gate upgrade` socket, removed when the command ends.
struct Channel {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Channel {
    fn bind() -> anyhow::Result<Channel> {
        let path = std::env::temp_dir().join(format!(
            "icp-gate-upgrade-{}-{}.sock",
            std::process::id(),
            fastrand::u32(..)
        ));
        let socket = UnixDatagram::bind(&path)
            .with_context(|| format!("creating the upgrade socket {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Channel { socket, path })
    }

    /// Waits until the new process sends a message with the line `line`, or exits, or
    /// `deadline` passes. Each message's `STATUS=` is passed to `status`.
    fn wait_for(
        &self,
        child: &mut Child,
        line: &str,
        deadline: Instant,
        mut status: impl FnMut(&str),
    ) -> anyhow::Result<Result<(), Waited>> {
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let message = String::from_utf8_lossy(&buf[..n]);
                    for l in message.lines() {
                        if let Some(s) = l.strip_prefix("STATUS=") {
                            status(s);
                        }
                    }
                    if message.lines().any(|l| l == line) {
                        return Ok(Ok(()));
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("reading the upgrade socket"),
            }
            if let Some(exit) = child.try_wait()? {
                return Ok(Err(Waited::Exited(exit)));
            }
            if Instant::now() >= deadline {
                return Ok(Err(Waited::TimedOut));
            }
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Waited {
    Exited(std::process::ExitStatus),
    TimedOut,
}

/// Upgrades the gate running as `old` to a new process of this executable with the
/// configuration `config` (already checked by the caller), without a moment with nobody
/// serving: see the module's documentation. Returns the new process's id. On any error before
/// the hand-over, the new process is gone and the old one serves on as before.
pub fn hand_over(config: &Path, old: u32, timeout: Duration) -> anyhow::Result<u32> {
    let old_pid = Pid::from_raw(old as i32);
    kill(old_pid, None).with_context(|| format!("no gate runs as pid {old}"))?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let channel = Channel::bind()?;
    let deadline = Instant::now() + timeout;
    // The new process logs where this command does (under systemd: the journal). Its standard
    // output goes there too: this command's own says only the new pid, and is closed when it
    // ends, whatever the new process does.
    let log = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard error")?;
    let mut child = Command::new(&exe)
        .arg("-u")
        .arg("-c")
        .arg(config)
        .stdout(log)
        .env(UPGRADE_NOTIFY_ENV, &channel.path)
        .env_remove("WATCHDOG_PID")
        .envs(inherited_supervision(old))
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let new = child.id();
    eprintln!("icp-gate upgrade: started pid {new} ({}); waiting until it is prepared to take over from pid {old}", exe.display());
    let say = |s: &str| eprintln!("icp-gate upgrade: pid {new}: {s}");

    match channel.wait_for(&mut child, PREPARED, deadline, say)? {
        Ok(()) => {}
        Err(Waited::Exited(status)) => bail!(
            "the new process (pid {new}) exited ({status}) before it could take over (its log \
             says why); the running gate (pid {old}) keeps serving"
        ),
        Err(Waited::TimedOut) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the new process (pid {new}) was not prepared to take over within {timeout:?}, \
                 and was stopped; the running gate (pid {old}) keeps serving"
            )
        }
    }
    eprintln!("icp-gate upgrade: pid {new} is prepared; SIGQUIT to pid {old}");
    kill(old_pid, Signal::SIGQUIT).with_context(|| {
        format!("sending SIGQUIT to pid {old}; the new process (pid {new}) gives up on its own")
    })?;
    match channel.wait_for(&mut child, "READY=1", deadline, say)? {
        Ok(()) => {
            eprintln!("icp-gate upgrade: pid {new} serves; pid {old} finishes its requests in flight and exits");
            Ok(new)
        }
        Err(Waited::Exited(status)) => bail!(
            "the new process (pid {new}) exited ({status}) after the listeners were handed to \
             it: if it had taken them, nothing serves now; start the gate again"
        ),
        Err(Waited::TimedOut) => bail!(
            "the new process (pid {new}) took the listeners but did not say it was ready \
             within {timeout:?}: look at its log and /readyz"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 20917 /run/icp-gate/upgrade.sock
0000000000000000: 00000002 00000000 00000000 0002 01 20918 /tmp/not-listening.sock
0000000000000000: 00000003 00000000 00000000 0001 03 20919
0000000000000000: 00000002 00000000 00010000 0001 01 20920 @abstract
";

    #[test]
    fn a_listening_socket_is_found_by_its_path() {
        assert!(listening_on(TABLE, "/run/icp-gate/upgrade.sock"));
        assert!(!listening_on(TABLE, "/tmp/not-listening.sock"));
        assert!(!listening_on(TABLE, "/run/icp-gate/other.sock"));
        assert!(!listening_on(TABLE, ""));
    }

    #[test]
    fn a_real_listener_shows_in_proc_net_unix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let table = || std::fs::read_to_string("/proc/net/unix").unwrap();
        let path_str = path.to_str().unwrap();
        assert!(!listening_on(&table(), path_str));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listening_on(&table(), path_str));
        drop(listener);
        assert!(!listening_on(&table(), path_str));
    }
}
