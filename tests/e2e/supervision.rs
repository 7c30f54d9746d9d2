//! The gate under a supervisor speaking systemd's notification protocol: the test owns the
//! Unix datagram socket named by `NOTIFY_SOCKET`, as systemd does, and reads what the real
//! gate sends there.

use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;

/// The socket systemd would own for a `Type=notify` service. Like systemd, it reads every
/// message as it comes (a socket nobody reads fills up, and then its senders wait).
pub struct NotifySocket {
    path: PathBuf,
    _dir: tempfile::TempDir,
    /// Every message received, in order.
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// A copy of `received` as of the last look.
    messages: Vec<String>,
}

impl NotifySocket {
    pub fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    into.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        NotifySocket {
            path,
            _dir: dir,
            received,
            stop,
            messages: Vec::new(),
        }
    }

    /// `NOTIFY_SOCKET` for the gate's environment.
    pub fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".into(), self.path.display().to_string())
    }

    /// Every message received so far.
    pub fn messages(&mut self) -> &[String] {
        self.messages = self.received.lock().unwrap().clone();
        &self.messages
    }

    /// The index of the first message with a line starting with `line`, if one came.
    pub fn position(&mut self, line: &str) -> Option<usize> {
        self.messages()
            .iter()
            .position(|m| m.lines().any(|l| l.starts_with(line)))
    }

    /// Waits for a message after the `after`th with a line starting with `line`; returns its
    /// index.
    pub fn wait_for_after(&mut self, line: &str, after: usize) -> usize {
        wait_for(
            &format!("a notification {line:?} after message {after}"),
            Duration::from_secs(20),
            || {
                self.messages()
                    .iter()
                    .enumerate()
                    .skip(after + 1)
                    .find(|(_, m)| m.lines().any(|l| l.starts_with(line)))
                    .map(|(i, _)| i)
            },
        )
    }

    /// Waits for a message with a line starting with `line`; returns its index.
    pub fn wait_for(&mut self, line: &str) -> usize {
        wait_for(
            &format!("a notification {line:?}"),
            Duration::from_secs(20),
            || self.position(line),
        )
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn ready_is_sent_once_a_registry_is_in_service_and_every_listener_is_up() {
    let origin = Origin::start();
    let mut notify = NotifySocket::new();
    let gate = Gate::start(
        &origin,
        GateOptions {
            registry: None,
            wait_ready: false,
            env: vec![notify.env(), ("WATCHDOG_USEC".into(), "100000".into())],
            ..GateOptions::default()
        },
    );
    // Every listener is up (the supervisor says so), but no registry is: not ready, and no
    // watchdog ping either.
    notify.wait_for("STATUS=listeners up; waiting for the first registry");
    assert_eq!(get(gate.admin, "/readyz").status, 503);
    assert_eq!(get_host(gate.addr, "www.example.com").status, 503);
    assert_eq!(notify.position("READY=1"), None, "{:?}", notify.messages());
    assert_eq!(
        notify.position("WATCHDOG=1"),
        None,
        "{:?}",
        notify.messages()
    );

    write_atomically(&gate.registry_path, &snapshot_bytes(1, &standard_records()));
    let ready = notify.wait_for("READY=1");
    assert!(
        notify.messages()[ready].contains("STATUS=serving: registry serial 1 (12 entries)"),
        "{:?}",
        notify.messages()
    );
    assert_eq!(get(gate.admin, "/readyz").status, 200);
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    // A gate started by its supervisor names no other main process.
    assert_eq!(notify.position("MAINPID="), None);
    // The watchdog is fed once the gate is ready, not before.
    let ping = notify.wait_for("WATCHDOG=1");
    assert!(ping > ready, "{:?}", notify.messages());
}

#[test]
fn a_listener_that_cannot_bind_keeps_the_gate_from_being_ready() {
    let origin = Origin::start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut notify = NotifySocket::new();
    let gate = Gate::start(
        &origin,
        GateOptions {
            env: vec![notify.env()],
            extra: format!("\n[[listener]]\nname = \"taken\"\naddress = \"127.0.0.1:{port}\"\n"),
            ..GateOptions::default()
        },
    );
    // The registry is in service and the other listeners answer, but one listener cannot bind
    // (Pingora tries again every second): not ready.
    let in_use = format!("127.0.0.1:{port} is in use, will try again");
    wait_for(
        "two failed binds in the log",
        Duration::from_secs(20),
        || (gate.log().matches(&in_use).count() >= 2).then_some(()),
    );
    assert_eq!(get(gate.admin, "/readyz").status, 200);
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
    assert_eq!(notify.position("READY=1"), None, "{:?}", notify.messages());

    // Once the address is free the listener binds, and the gate is ready.
    drop(taken);
    notify.wait_for("READY=1");
    assert_eq!(get_host(addr(port), "www.example.com").status, 200);
}
