//! When the gate is ready, and whether it is healthy, as a supervisor needs to know them.
//!
//! - **Ready** means: a registry is in service and every listener (the gate's and the admin
//!   listener) is bound and listening. Pingora says a listening service is ready before it has
//!   bound anything, so each service runs inside [`Watched`], which reports it ready only once
//!   its addresses are in Pingora's table of listening sockets (a socket is put there right
//!   after it is bound and listening, or, in an upgrade, when it arrived from the old process).
//!   The [`Supervisor`] depends on every watched service, so Pingora starts it only when all of
//!   them are up; it then waits for the registry and sends `READY=1`.
//! - **Healthy** means: every service's runtime still runs the tasks it is given. Before each
//!   watchdog ping the supervisor gives each runtime a trivial task and pings only when all of
//!   them ran it in time: a runtime whose threads are all stuck (a deadlock, a blocking call in
//!   async code) stops the pings, and systemd restarts the gate after `WatchdogSec`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use icp_gate_registry::RegistryHandle;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::runtime::Handle;

use crate::notify::Notifier;

/// The runtimes of the gate's services, for the watchdog's health check.
#[derive(Default)]
pub struct Health {
    runtimes: Mutex<Vec<(String, Handle)>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }

    /// Adds the runtime `handle` of the service `name`.
    pub fn register(&self, name: &str, handle: Handle) {
        self.runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), handle));
    }

    /// Gives every registered runtime a task and waits up to `deadline` for all of them to run
    /// it. Err names the services whose runtime did not.
    pub async fn check(&self, deadline: Duration) -> Result<(), Vec<String>> {
        let runtimes = self
            .runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let probes: Vec<_> = runtimes
            .into_iter()
            .map(|(name, handle)| {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                handle.spawn(async move {
                    let _ = tx.send(());
                });
                (name, rx)
            })
            .collect();
        let until = tokio::time::Instant::now() + deadline;
        let mut stuck = Vec::new();
        for (name, rx) in probes {
            if !matches!(tokio::time::timeout_at(until, rx).await, Ok(Ok(()))) {
                stuck.push(name);
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck)
        }
    }
}

/// A Pingora service that registers its runtime with [`Health`] and, when it listens, reports
/// itself ready only once its sockets are listening.
pub struct Watched<S> {
    inner: S,
    health: Arc<Health>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, health: &Arc<Health>) -> Self {
        Watched {
            inner,
            health: health.clone(),
        }
    }
}

/// How often a watched service looks for its sockets while the listeners are being built.
const BIND_POLL: Duration = Duration::from_millis(10);

#[async_trait]
impl<S: ServiceWithDependents + 'static> ServiceWithDependents for Watched<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        self.health.register(self.inner.name(), Handle::current());
        let addresses = self.inner.listen_addresses().unwrap_or_default();
        let inner_notifier = match (&fds, addresses.is_empty()) {
            (Some(table), false) => {
                let table = table.clone();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    // A listener that fails to bind never appears: the gate is never ready.
                    while !addresses.iter().all(|a| table.lock().get(a).is_some()) {
                        tokio::select! {
                            _ = stop.changed() => return,
                            _ = tokio::time::sleep(BIND_POLL) => {}
                        }
                    }
                    ready_notifier.notify_ready();
                });
                // Pingora's listening service says it is ready before it binds: not heard.
                ServiceReadyNotifier::new(tokio::sync::watch::channel(false).0)
            }
            _ => ready_notifier,
        };
        self.inner
            .start_service(fds, shutdown, listeners_per_fd, inner_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// Sends `READY=1` once every listener is up (Pingora starts this service after the services
/// it depends on) and a registry is in service, then keeps systemd's watchdog fed while the
/// gate is healthy and its status line current.
pub struct Supervisor {
    pub notifier: Notifier,
    pub registry: Arc<RegistryHandle>,
    pub health: Arc<Health>,
    /// This process took the listeners over from another (it becomes the main process).
    pub upgraded: bool,
    /// Set when this process hands its listeners to a new one: it stops feeding the watchdog
    /// (the new process does, or systemd learns that it does not).
    pub handing_over: Arc<AtomicBool>,
}

/// How long the supervisor waits between two looks at the registry before the first is in
/// service.
const REGISTRY_POLL: Duration = Duration::from_millis(20);
/// How often the status line is brought up to date when no watchdog asks for more.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

impl Supervisor {
    fn serving_status(&self) -> String {
        match self.registry.load().as_ref() {
            Some(r) => format!(
                "serving: registry serial {} ({} entries)",
                r.serial, r.entries
            ),
            None => "serving".into(),
        }
    }

    /// Waits for the first registry; false when the gate shut down first.
    async fn registry_in_service(&self, shutdown: &mut ShutdownWatch) -> bool {
        if !self.registry.is_ready() {
            self.notifier.status(
                "listeners up; waiting for the first registry (the gate answers 503 until then)",
            );
        }
        while !self.registry.is_ready() {
            tokio::select! {
                _ = shutdown.changed() => return false,
                _ = tokio::time::sleep(REGISTRY_POLL) => {}
            }
        }
        true
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if !self.registry_in_service(&mut shutdown).await {
            return;
        }
        let mut status = self.serving_status();
        self.notifier.ready(self.upgraded, &status);
        tracing::info!(
            status,
            "ready: a registry is in service and every listener is up"
        );

        let watchdog = self.notifier.watchdog_interval();
        // systemd's advice: ping at half the interval.
        let period = watchdog.map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if self.handing_over.load(Ordering::Relaxed) {
                return;
            }
            if watchdog.is_some() {
                // Half the period for the runtimes to answer leaves the other half for the ping.
                match self.health.check(period / 2).await {
                    Ok(()) => self.notifier.watchdog(),
                    Err(stuck) => tracing::error!(
                        services = ?stuck,
                        "not feeding the watchdog: these services' runtimes did not run a task \
                         in time; systemd restarts the gate if they stay stuck"
                    ),
                }
            }
            let now = self.serving_status();
            if now != status {
                status = now;
                self.notifier.status(&status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime whose only thread is blocked does not run the probe; a free one does.
    #[tokio::test]
    async fn a_runtime_whose_threads_are_stuck_fails_the_check() {
        let health = Health::new();
        let free = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let free_handle = free.handle().clone();
        // The free runtime runs its tasks on a thread of its own.
        let (stop_free, stopped) = tokio::sync::oneshot::channel::<()>();
        let free_thread = std::thread::spawn(move || {
            free.block_on(async {
                let _ = stopped.await;
            })
        });
        health.register("free", free_handle);
        assert_eq!(health.check(Duration::from_secs(10)).await, Ok(()));

        let stuck = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stuck_handle = stuck.handle().clone();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let stuck_thread = std::thread::spawn(move || {
            // Its only thread blocks inside a task: nothing else runs on this runtime.
            stuck.block_on(async {
                let _ = blocked.recv();
            })
        });
        let stuck_health = Health::new();
        stuck_health.register("stuck", stuck_handle);
        assert_eq!(
            stuck_health.check(Duration::from_millis(200)).await,
            Err(vec!["stuck".to_string()])
        );

        release.send(()).unwrap();
        stop_free.send(()).unwrap();
        stuck_thread.join().unwrap();
        free_thread.join().unwrap();
    }
}
