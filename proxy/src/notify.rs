//! Tells a supervisor what the gate is doing: systemd's notification protocol (`NOTIFY_SOCKET`:
//! `READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`, `MAINPID=`), sent with the `sd-notify`
//! crate, and the same messages to the `icp-gate upgrade` command that started this process,
//! when there is one (`ICP_GATE_UPGRADE_NOTIFY`: a Unix datagram socket that command owns).
//!
//! Both are no-ops when their variable is not set, so the gate runs the same with or without a
//! supervisor.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;

/// The environment variable naming the socket of the `icp-gate upgrade` command that started
/// this process.
pub const UPGRADE_NOTIFY_ENV: &str = "ICP_GATE_UPGRADE_NOTIFY";

/// What a process started by `icp-gate upgrade` tells that command: it is ready to take the
/// listeners over (its configuration, registry and certificates are loaded and it waits on
/// `server.upgrade_sock`). `READY=1` follows once it serves.
pub const PREPARED: &str = "X_ICP_GATE_PREPARED=1";

#[derive(Clone, Debug, Default)]
pub struct Notifier {
    /// The upgrade command's socket, when this process was started by one.
    upgrade: Option<PathBuf>,
    /// Systemd's watchdog interval (`WATCHDOG_USEC`), when it watches this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment this process was started with.
    pub fn from_env() -> Self {
        Notifier {
            upgrade: std::env::var_os(UPGRADE_NOTIFY_ENV).map(PathBuf::from),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often the supervisor expects a `WATCHDOG=1`, when it does.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `states` to systemd and, with `to_upgrade`, to the upgrade command. A supervisor
    /// that cannot be reached is logged, never fatal: the gate serves either way. The send to
    /// systemd blocks while its socket's queue is full, as libsystemd's does (systemd reads it
    /// as messages come); the one to the upgrade command never waits.
    fn send(&self, states: &[NotifyState<'_>], to_upgrade: bool) {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
        if let (true, Some(path)) = (to_upgrade, &self.upgrade) {
            let message: String = states.iter().map(|s| format!("{s}\n")).collect();
            let sent = UnixDatagram::unbound().and_then(|s| {
                s.set_nonblocking(true)?;
                s.send_to(message.as_bytes(), path)
            });
            if let Err(e) = sent {
                tracing::warn!(
                    socket = %path.display(),
                    "cannot notify the upgrade command ({UPGRADE_NOTIFY_ENV}): {e}"
                );
            }
        }
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)], false);
    }

    /// A registry is in service and every listener is up. A process that took the listeners
    /// over from another also says it is now the service's main process.
    pub fn ready(&self, upgraded: bool, status: &str) {
        let pid = std::process::id();
        let mut states = vec![NotifyState::Ready, NotifyState::Status(status)];
        if upgraded {
            states.insert(0, NotifyState::MainPid(pid));
        }
        self.send(&states, true);
    }

    /// Ready to take the listeners over (upgrade only).
    pub fn prepared(&self, status: &str) {
        self.send(
            &[NotifyState::Custom(PREPARED), NotifyState::Status(status)],
            true,
        );
    }

    /// The process is alive and healthy.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog], false);
    }

    /// A shutdown began (SIGTERM, SIGINT). Not sent when handing the listeners to a new
    /// process: to systemd that would mean the whole service is stopping.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)], false);
    }
}
