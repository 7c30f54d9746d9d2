//! Upgrades under load: `icp-gate upgrade` replaces the running gate with a new process while
//! clients keep sending requests on kept-alive and on new connections, and no request fails;
//! an upgrade whose new process cannot start leaves the running gate serving, and so does a
//! SIGQUIT with no new process waiting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::*;
use crate::supervision::NotifySocket;

/// What the load clients saw.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    /// Requests sent on a reused keep-alive connection that the server closed before any byte
    /// of an answer, sent again on a new connection, as every HTTP client does for a request
    /// that is safe to repeat (RFC 9112 §9.3.1): the server may close an idle connection at any
    /// moment, and a request crossing that close never reached it.
    retried: u64,
    failed: Vec<String>,
}

/// One request and its answer on `conn` (opened when None); the connection stays for the next
/// request unless the answer closed it. Err: what went wrong, and whether nothing at all was
/// read back.
fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: SocketAddr,
    host: &str,
) -> Result<(u16, String), (String, bool)> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr).map_err(|e| (format!("connect: {e}"), false))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        *conn = Some(BufReader::new(stream));
    }
    let reader = conn.as_mut().unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: upgrade-load\r\n\r\n");
    if let Err(e) = reader.get_mut().write_all(request.as_bytes()) {
        return Err((format!("write: {e}"), true));
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(("closed before an answer".into(), true)),
        Err(e) => return Err((format!("read: {e}"), true)),
        Ok(_) => {}
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| (format!("bad status line {line:?}"), false))?;
    let mut length = 0usize;
    let mut close = false;
    loop {
        let mut h = String::new();
        if reader
            .read_line(&mut h)
            .map_err(|e| (e.to_string(), false))?
            == 0
        {
            return Err(("closed in the head".into(), false));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap_or(0);
        }
        if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| (format!("body: {e}"), false))?;
    if close {
        *conn = None;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A client sending requests until `stop` (every `PAUSE`), alternately for a filed and an unfiled host, on one
/// kept-alive connection (`keep_alive`) or a new connection each time; every answer is checked.
fn client(addr: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let mut conn = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let host = if n % 2 == 0 {
            "www.example.com"
        } else {
            "unfiled.cn"
        };
        let reused = conn.is_some();
        let mut result = exchange(&mut conn, addr, host);
        let mut retried = false;
        if let Err((_, true)) = &result {
            if reused {
                conn = None;
                retried = true;
                result = exchange(&mut conn, addr, host);
            }
        }
        let mut tally = tally.lock().unwrap();
        if retried {
            tally.retried += 1;
        }
        match result {
            Ok((200, body))
                if host == "www.example.com" && body == "origin saw www.example.com" =>
            {
                tally.ok += 1
            }
            Ok((403, body)) if host == "unfiled.cn" && body.contains("unfiled.cn") => tally.ok += 1,
            Ok((status, body)) => tally.failed.push(format!(
                "{host}: {status} {}",
                body.chars().take(80).collect::<String>()
            )),
            Err((e, _)) => {
                conn = None;
                tally.failed.push(format!("{host}: {e}"));
            }
        }
        if !keep_alive {
            conn = None;
        }
        // A steady stream, not a flood: the other tests share the machine.
        std::thread::sleep(PAUSE);
    }
}

/// Between two requests of one client.
const PAUSE: Duration = Duration::from_millis(5);

/// Clients on kept-alive and on new connections, running until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = [true, true, true, false, false]
            .into_iter()
            .map(|keep_alive| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || client(addr, keep_alive, stop, tally))
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.lock().unwrap().ok
    }

    /// Waits until `more` further requests have been answered correctly.
    fn wait_answers(&self, more: u64) {
        let target = self.ok() + more;
        wait_for(
            &format!("{more} more answers"),
            Duration::from_secs(30),
            || (self.ok() >= target).then_some(()),
        );
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.tally).unwrap().into_inner().unwrap()
    }
}

/// The process `icp-gate upgrade` started (its pid and configuration), stopped when the test
/// ends if it still runs. It is not a child of the test, so its pid is checked to still be an
/// icp-gate with that configuration before anything is sent to it: a pid that was freed may
/// already belong to another process.
struct Upgraded(u32, std::path::PathBuf);

impl Upgraded {
    /// Whether the pid is still this test's new gate, alive.
    fn running(&self) -> bool {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.first() == Some(&BIN.as_bytes())
            && args.contains(&b"-u".as_slice())
            && args.contains(&self.1.as_os_str().as_encoded_bytes());
        ours && !std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .unwrap_or_default()
            .contains(") Z ")
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        if self.running() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs `icp-gate upgrade` for `gate` with `config`: whether it succeeded, its standard output
/// (the new pid), its standard error, and the new process it started, if any (stopped when
/// dropped, whatever the outcome). Standard error goes to a file, not a pipe: the new process
/// writes its log there too, and lives on.
fn upgrade(gate: &Gate, config: &std::path::Path) -> (bool, String, String, Option<Upgraded>) {
    let log = gate
        .dir
        .path()
        .join(format!("upgrade-{}.log", fastrand_suffix()));
    let out = Command::new(BIN)
        .args(["upgrade", "--timeout", "60", "--pid"])
        .arg(gate.pid().to_string())
        .arg("-c")
        .arg(config)
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let started = stderr
        .split("icp-gate upgrade: started pid ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .map(|pid| Upgraded(pid, config.to_owned()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        started,
    )
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A gate that keeps its registry in a state directory (where a new process loads it from),
/// under a notification socket with a watchdog.
fn gate_with_state(origin: &Origin, notify: &NotifySocket) -> (Gate, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let gate = Gate::start(
        origin,
        GateOptions {
            state_dir: Some(state.path().to_owned()),
            env: vec![notify.env(), ("WATCHDOG_USEC".into(), "200000".into())],
            ..GateOptions::default()
        },
    );
    (gate, state)
}

#[test]
fn an_upgrade_under_load_fails_no_request() {
    let origin = Origin::start();
    let mut notify = NotifySocket::new();
    let (mut gate, _state) = gate_with_state(&origin, &notify);
    let old = gate.pid();
    let load = Load::start(gate.addr);
    load.wait_answers(200);

    let (ok, stdout, stderr, started) = upgrade(&gate, &gate.config_path());
    let new = started.expect("a new process started");
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), new.0.to_string());
    assert_ne!(new.0, old);
    load.wait_answers(200);
    // The old process finishes what it had and exits; the new one serves on alone.
    let status = gate.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "the old gate exited with {status:?}");
    load.wait_answers(200);
    let tally = load.finish();
    assert!(new.running());
    eprintln!("upgrade under load: {tally:?}");
    assert!(
        tally.failed.is_empty(),
        "{} failed: {:?}",
        tally.failed.len(),
        tally.failed
    );
    assert!(tally.ok >= 600);
    // Under systemd the new process becomes the service's main process, and feeds the watchdog
    // it inherited from the old one (which stopped feeding it when it began the hand-over).
    let mainpid = notify.wait_for(&format!("MAINPID={}", new.0));
    assert!(notify.messages()[mainpid].contains("READY=1"));
    notify.wait_for_after("WATCHDOG=1", mainpid);
    assert!(gate_metrics(gate.admin).contains("icp_gate_registry_ready 1"));
}

fn gate_metrics(admin: SocketAddr) -> String {
    get(admin, "/metrics").text()
}

#[test]
fn an_upgrade_that_cannot_start_leaves_the_running_gate_serving() {
    let origin = Origin::start();
    let notify = NotifySocket::new();
    let (mut gate, _state) = gate_with_state(&origin, &notify);
    let load = Load::start(gate.addr);
    load.wait_answers(100);

    // 1. A configuration with an error: nothing is started.
    let config = std::fs::read_to_string(gate.config_path()).unwrap();
    let broken = gate.dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        config.replace("[upstream]", "[upstream]\nretries = 3"),
    )
    .unwrap();
    let (ok, stdout, stderr, started) = upgrade(&gate, &broken);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(started.is_none(), "{stderr}");
    assert!(stderr.contains("upstream.retries"), "{stderr}");
    assert!(stderr.contains("keeps serving"), "{stderr}");
    load.wait_answers(100);

    // 2. A valid configuration whose registry cannot be loaded: the new process starts,
    //    finds neither a kept snapshot nor a source, and exits before it takes anything.
    let empty_state = tempfile::tempdir().unwrap();
    let no_registry = gate.dir.path().join("no-registry.toml");
    let config_no_registry = config
        .lines()
        .map(|l| {
            if l.starts_with("source = ") {
                "source = \"file:///nonexistent/registry.tsv\"".to_string()
            } else if l.starts_with("state_dir = ") {
                format!("state_dir = \"{}\"", empty_state.path().display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&no_registry, config_no_registry).unwrap();
    let (ok, stdout, stderr, started) = upgrade(&gate, &no_registry);
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(!started.expect("a new process started").running());
    assert!(stderr.contains("no registry could be loaded"), "{stderr}");
    assert!(stderr.contains("before it could take over"), "{stderr}");
    load.wait_answers(100);

    // 3. SIGQUIT with no new process waiting is refused: handing the listeners to nobody
    //    would leave nobody serving.
    Command::new("kill")
        .args(["-QUIT", &gate.pid().to_string()])
        .status()
        .unwrap();
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        gate.log().contains("SIGQUIT ignored").then_some(())
    });
    load.wait_answers(100);

    let tally = load.finish();
    eprintln!("failed upgrades under load: {tally:?}");
    assert!(
        tally.failed.is_empty(),
        "{} failed: {:?}",
        tally.failed.len(),
        tally.failed
    );
    assert!(!gate.has_exited(), "the running gate stopped");
    assert_eq!(get_host(gate.addr, "www.example.com").status, 200);
}
