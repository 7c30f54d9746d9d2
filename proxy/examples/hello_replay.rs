//! A ClientHello replayer for the TLS load harness (`benches/load/tls.sh`): it measures how many
//! connections a proxy refuses per second on their SNI, without any client cryptography.
//!
//! ```sh
//! # Save the first ClientHello a client sends to 127.0.0.1:19000 (e.g. `openssl s_client`).
//! hello_replay capture 127.0.0.1:19000 hello.bin
//! # 64 connections at a time for 10 s: connect, write the hello, read to the end, close.
//! hello_replay replay 127.0.0.1:18440 hello.bin --expect alert --connections 64 --duration 10
//! ```
//!
//! `replay` checks every answer: with `--expect alert`, exactly the 7-byte fatal
//! `unrecognized_name` alert then a clean close; with `--expect reset`, a reset before any byte.
//! It prints one line of `key=value` fields (`completed`, `rate`, the error counts, latency
//! percentiles of whole connections) and exits 1 when any answer was wrong or nothing completed.
//! Runs on one thread: pin it with `taskset`.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What icp-gate (and nginx's `ssl_reject_handshake`) answer an unfiled SNI with.
const ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];
/// Longest wait for one connection's whole answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: hello_replay capture LISTEN_ADDR OUT_FILE\n       \
    hello_replay replay ADDR HELLO_FILE [--expect alert|reset] [--connections N] [--duration SECONDS]";

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Alert,
    Reset,
}

#[derive(Default)]
struct Tally {
    completed: u64,
    connect_errors: u64,
    write_errors: u64,
    wrong_answers: u64,
    timeouts: u64,
    /// Microseconds from connect to the end of the answer, per completed connection.
    latencies: Vec<u32>,
    first_wrong: Option<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match args.first().map(String::as_str) {
        Some("capture") if args.len() == 3 => rt.block_on(capture(&args[1], &args[2])),
        Some("replay") if args.len() >= 3 => rt.block_on(replay(&args[1..])),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hello_replay: {e}");
            ExitCode::from(2)
        }
    }
}

/// Accepts one connection and saves the TLS records that carry its ClientHello, byte for byte.
async fn capture(listen: &str, out: &str) -> Result<ExitCode, String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?;
    // The caller waits for this line before it starts the client.
    println!("listening on {listen}");
    let (mut conn, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    // Records until the handshake message (4-byte header and body) is complete.
    let mut handshake = 0usize;
    loop {
        let mut header = [0u8; 5];
        conn.read_exact(&mut header)
            .await
            .map_err(|e| format!("reading a record header: {e}"))?;
        if header[0] != 22 {
            return Err(format!("not a TLS handshake record (type {})", header[0]));
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| format!("reading a record: {e}"))?;
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&body);
        handshake += len;
        // The message length is in bytes 1..4 of the first record's body.
        let first = &bytes[5..];
        if first.len() >= 4 {
            let msg = u32::from_be_bytes([0, first[1], first[2], first[3]]) as usize;
            if first[0] != 1 {
                return Err("the first handshake message is not a ClientHello".into());
            }
            if handshake >= 4 + msg {
                break;
            }
        }
    }
    std::fs::write(out, &bytes).map_err(|e| format!("{out}: {e}"))?;
    println!("captured {} bytes", bytes.len());
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: &[String]) -> Result<ExitCode, String> {
    let addr: SocketAddr = args[0].parse().map_err(|e| format!("{}: {e}", args[0]))?;
    let hello = std::fs::read(&args[1]).map_err(|e| format!("{}: {e}", args[1]))?;
    let (mut expect, mut connections, mut duration) = (Expect::Alert, 64usize, 10.0f64);
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--expect" if value == "alert" => expect = Expect::Alert,
            "--expect" if value == "reset" => expect = Expect::Reset,
            "--connections" => connections = value.parse().map_err(|_| "bad --connections")?,
            "--duration" => duration = value.parse().map_err(|_| "bad --duration")?,
            _ => return Err(format!("unknown option {flag} {value}\n{USAGE}")),
        }
    }
    if connections == 0 || duration <= 0.0 {
        return Err("--connections and --duration must be positive".into());
    }
    let hello: Rc<[u8]> = hello.into();
    let tally = Rc::new(RefCell::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let local = tokio::task::LocalSet::new();
    for _ in 0..connections {
        let (hello, tally) = (hello.clone(), tally.clone());
        local.spawn_local(async move {
            while Instant::now() < deadline {
                one(addr, &hello, expect, &tally).await;
            }
        });
    }
    local.await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut t = tally.take();
    t.latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if t.latencies.is_empty() {
            return 0;
        }
        let i = ((t.latencies.len() as f64 * p) as usize).min(t.latencies.len() - 1);
        t.latencies[i]
    };
    println!(
        "completed={} seconds={:.3} rate={:.1} connect_errors={} write_errors={} wrong_answers={} \
         timeouts={} p50_us={} p99_us={} hello_bytes={}",
        t.completed,
        elapsed,
        t.completed as f64 / elapsed,
        t.connect_errors,
        t.write_errors,
        t.wrong_answers,
        t.timeouts,
        pct(0.50),
        pct(0.99),
        hello.len()
    );
    if let Some(w) = &t.first_wrong {
        eprintln!("hello_replay: first wrong answer: {w}");
    }
    let bad = t.wrong_answers + t.timeouts + t.connect_errors + t.write_errors;
    Ok(if bad > 0 || t.completed == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// One connection: connect, write the hello, read the answer to its end, check it.
async fn one(addr: SocketAddr, hello: &[u8], expect: Expect, tally: &RefCell<Tally>) {
    let t0 = Instant::now();
    let mut conn = match TcpStream::connect(addr).await {
        Ok(c) => c,
        Err(_) => {
            tally.borrow_mut().connect_errors += 1;
            // Out of ports or a full backlog: do not spin.
            tokio::time::sleep(Duration::from_millis(1)).await;
            return;
        }
    };
    let _ = conn.set_nodelay(true);
    if conn.write_all(hello).await.is_err() {
        tally.borrow_mut().write_errors += 1;
        return;
    }
    let mut answer = Vec::with_capacity(64);
    let read = async {
        let mut buf = [0u8; 256];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.kind()),
            }
        }
    };
    let ended = tokio::time::timeout(ANSWER_TIMEOUT, read).await;
    let mut t = tally.borrow_mut();
    let ok = match (&ended, expect) {
        (Err(_), _) => {
            t.timeouts += 1;
            return;
        }
        (Ok(Ok(())), Expect::Alert) => answer == ALERT,
        (Ok(Err(ErrorKind::ConnectionReset)), Expect::Reset) => answer.is_empty(),
        _ => false,
    };
    if ok {
        t.completed += 1;
        t.latencies
            .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
    } else {
        t.wrong_answers += 1;
        if t.first_wrong.is_none() {
            let end = match ended {
                Ok(Ok(())) => "then EOF".to_string(),
                Ok(Err(kind)) => format!("then {kind:?}"),
                Err(_) => unreachable!(),
            };
            t.first_wrong = Some(format!("{:02x?} {end}", answer));
        }
    }
}
