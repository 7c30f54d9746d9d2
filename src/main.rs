//! icp-gate: the command line. Everything it runs lives in the member crates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use icp_gate_registry::{publish, read_snapshot_sized, Status};

/// ICP filing enforcement reverse proxy.
#[derive(Parser, Debug)]
#[command(name = "icp-gate", version, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (TOML); see docs/config.md.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration file and exit: 0 when valid, 1 with every error listed when not.
    #[arg(short = 't', long = "test", requires = "config")]
    test: bool,
    /// Take over the listeners of a running gate (graceful upgrade; see docs/operations.md).
    #[arg(short = 'u', long = "upgrade", requires = "config")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run with a built-in configuration: gate on 127.0.0.1:8080, admin on 127.0.0.1:9090, a
    /// bundled sample registry and a demo origin on 127.0.0.1:8081.
    Demo,
    /// Registry snapshot tools.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Why hosts are allowed or blocked: for each, as one JSON line, its canonical name, every
    /// name the lookup tries, the record that covers it, the serial, and the decision and
    /// reason on every listener of the configuration. Offline, on the registry the
    /// configuration's gate would load (a file source, else registry.state_dir). Exit 0, 1 when
    /// a host is not usable, 2 when there is no registry to explain against.
    Explain {
        /// Hosts, as a Host header names them (a port may follow).
        hosts: Vec<String>,
        /// Configuration file (TOML).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// Also each line of FILE (one host a line; `-`: standard input; blank lines and `#`
        /// comments skipped), then a summary per listener: what is allowed, blocked and
        /// monitored, by reason (on a monitor listener, what enforce would block).
        #[arg(long, value_name = "FILE")]
        batch: Option<PathBuf>,
    },
    /// Replace a running gate with a new process of this executable and configuration, with no
    /// moment when nothing serves: the new process loads everything first, the running one
    /// hands its listeners over only to it, and keeps serving if it fails (docs/operations.md,
    /// "Upgrades"). Prints the new process's id.
    Upgrade {
        /// The configuration the new process runs with (checked first).
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
        /// The running gate's process id (under systemd: $MAINPID).
        #[arg(long, value_name = "PID")]
        pid: u32,
        /// Give up after this many seconds if the new process is not serving by then (before
        /// the hand-over it is stopped and the running gate serves on).
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
    /// Ask a running gate's admin listener whether it is ready (for container health checks).
    Health {
        /// Admin listener address: IP:port, or unix:/path/to/socket.
        #[arg(default_value = "127.0.0.1:9090")]
        admin: String,
        /// Path to ask: /readyz (a registry is loaded) or /healthz (the process answers).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
}

#[derive(Subcommand, Debug)]
enum RegistryCommand {
    /// Check a snapshot or a delta (plain or gzip) and print its serials and counts.
    Verify { file: PathBuf },
    /// Write the delta that takes snapshot OLD to snapshot NEW (NEW's serial must be higher).
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Write the delta here instead of standard output.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Seal a file of records (the record lines of snapshot format v1, nothing else) into a
    /// snapshot: header, trailer, and every check `verify` makes. A bad record is refused with
    /// its line, and nothing is written.
    Build {
        /// The records file.
        records: PathBuf,
        /// The snapshot's serial.
        #[arg(long)]
        serial: u64,
        /// Where to write it (`-`: standard output); replaced atomically once it is valid.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
        /// The snapshot's generated_at (RFC 3339); now by default.
        #[arg(long, value_name = "RFC3339")]
        generated_at: Option<String>,
    },
    /// Publish the next export (a records file or a snapshot) into DIR, laid out for the gate's
    /// `registry.source` (DIR/registry.snapshot) and `registry.delta_source`
    /// (DIR/registry.deltas/): the new snapshot and the delta to it from the previous one,
    /// written atomically, for any static web server or object store to serve.
    Publish {
        /// The export: a records file (sealed with the next serial) or a snapshot.
        export: PathBuf,
        /// The directory to publish into (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The new serial (a records file only); default one above the last published.
        #[arg(long)]
        serial: Option<u64>,
        /// How many deltas to keep, the newest (0: publish snapshots only).
        #[arg(long, default_value_t = 100, value_name = "N")]
        keep_deltas: usize,
        /// generated_at of a snapshot sealed from a records file (RFC 3339); now by default.
        #[arg(long, value_name = "RFC3339")]
        generated_at: Option<String>,
    },
    /// Write a synthetic snapshot (realistic TLD and status mix) for load tests and benches.
    Generate {
        /// Where to write it.
        file: PathBuf,
        /// Number of records.
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        serial: u64,
    },
}

const DEMO_CONFIG: &str = include_str!("demo.toml");
const DEMO_REGISTRY: &[u8] = include_bytes!("../examples/registry.tsv");
const DEMO_ORIGIN: &str = "127.0.0.1:8081";
const DEMO_TLS_ORIGIN: &str = "127.0.0.1:8444";
/// The names the demo TLS origin's certificate covers (filed and unfiled alike: the gate, not
/// the certificate, decides which ones pass).
const DEMO_TLS_NAMES: [&str; 4] = [
    "www.example.com",
    "example.com",
    "icp-demo.cn",
    "unfiled-demo.cn",
];
/// The names the demo gate holds a certificate for (terminated): filed and connected, and held
/// but not filed (the block page over HTTPS).
const DEMO_HELD_NAMES: [&str; 2] = ["icp-demo.cn", "held-unfiled.cn"];

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain: "cannot read X: permission denied", not just the outer layer.
            eprintln!("icp-gate: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match (cli.command, cli.config) {
        (Some(Command::Demo), _) => demo(),
        (Some(Command::Registry { command }), _) => match command {
            RegistryCommand::Verify { file } => verify(&file),
            RegistryCommand::Diff { old, new, output } => diff(&old, &new, output.as_deref()),
            RegistryCommand::Build {
                records,
                serial,
                output,
                generated_at,
            } => build(&records, serial, &output, generated_at),
            RegistryCommand::Publish {
                export,
                dir,
                serial,
                keep_deltas,
                generated_at,
            } => publish(&export, &dir, serial, keep_deltas, generated_at),
            RegistryCommand::Generate {
                file,
                records,
                seed,
                serial,
            } => {
                let out = std::fs::File::create(&file)
                    .with_context(|| format!("creating {}", file.display()))?;
                icp_gate_registry::synthetic::write_snapshot(
                    std::io::BufWriter::new(out),
                    records,
                    seed,
                    serial,
                )
                .with_context(|| format!("writing {}", file.display()))?;
                println!("{}: {records} records, serial {serial}", file.display());
                Ok(ExitCode::SUCCESS)
            }
        },
        (Some(Command::Health { admin, path }), _) => health(&admin, &path),
        (
            Some(Command::Explain {
                hosts,
                config,
                batch,
            }),
            _,
        ) => explain(&hosts, &config, batch.as_deref()),
        (
            Some(Command::Upgrade {
                config,
                pid,
                timeout,
            }),
            _,
        ) => upgrade(&config, pid, timeout),
        (None, Some(config)) => {
            // -t also refuses certificate files a running gate would skip (and log, and count).
            let load = if cli.test {
                icp_gate_config::check_file
            } else {
                icp_gate_config::load_file
            };
            let settings = match load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if cli.test {
                println!("{}: the configuration is valid", config.display());
                return Ok(ExitCode::SUCCESS);
            }
            icp_gate_proxy::init_logging(&settings.log);
            icp_gate_proxy::run(
                settings,
                icp_gate_proxy::RunOptions {
                    upgrade: cli.upgrade,
                    demo_origin: None,
                    demo_tls_origin: None,
                },
            )?;
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => bail!("nothing to do: give -c FILE, or try `icp-gate demo` (see --help)"),
    }
}

fn demo() -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("icp-gate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let registry = dir.join("registry.tsv");
    std::fs::write(&registry, DEMO_REGISTRY)
        .with_context(|| format!("writing the sample registry to {}", registry.display()))?;
    let (tls_origin, tls_cert) =
        icp_gate_proxy::demo_origin::DemoTlsOrigin::generate(&DEMO_TLS_NAMES)
            .context("making the demo TLS origin's certificate")?;
    let cert = dir.join("demo-origin.pem");
    std::fs::write(&cert, tls_cert).with_context(|| format!("writing {}", cert.display()))?;
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).with_context(|| format!("creating {}", certs.display()))?;
    let (held_pem, held_key) =
        icp_gate_proxy::demo_origin::DemoTlsOrigin::held_certificate(&DEMO_HELD_NAMES)
            .context("making the demo gate's certificate")?;
    for (file, text) in [("demo.crt", &held_pem), ("demo.key", &held_key)] {
        let path = certs.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let held = dir.join("demo-gate.pem");
    std::fs::write(&held, &held_pem).with_context(|| format!("writing {}", held.display()))?;
    let text = DEMO_CONFIG
        .replace(
            "@SAMPLE_REGISTRY@",
            &format!("file://{}", registry.display()),
        )
        .replace("@DEMO_CERTS@", &certs.display().to_string())
        .replace("@DEMO_ORIGIN_CA@", &cert.display().to_string());
    let settings = icp_gate_config::parse(&text, &dir).map_err(|errors| {
        anyhow::anyhow!("the embedded demo configuration is invalid: {errors:?}")
    })?;
    icp_gate_proxy::init_logging(&settings.log);
    eprintln!(
        "icp-gate demo: gate on http://127.0.0.1:8080 and TLS on 127.0.0.1:8443, admin on \
         http://127.0.0.1:9090, demo origins on http://{DEMO_ORIGIN} and {DEMO_TLS_ORIGIN} (TLS)\n\
         sample registry: {} (edit it: the gate reloads it every 5 s)\n\
         try:\n  \
         curl -H 'Host: www.example.com' http://127.0.0.1:8080/      # filed and connected: forwarded\n  \
         curl -H 'Host: unfiled-demo.cn' http://127.0.0.1:8080/      # unfiled: block page\n  \
         curl -H 'Host: cdn-only.cn' http://127.0.0.1:8080/          # filed elsewhere: connect it here\n  \
         curl --cacert {cert} --resolve www.example.com:8443:127.0.0.1 https://www.example.com:8443/   # passed through\n  \
         curl --cacert {cert} --resolve unfiled-demo.cn:8443:127.0.0.1 https://unfiled-demo.cn:8443/   # refused: unrecognized name\n  \
         curl --cacert {held} --resolve icp-demo.cn:8443:127.0.0.1 https://icp-demo.cn:8443/           # terminated, re-encrypted to the origin\n  \
         curl --cacert {held} --resolve held-unfiled.cn:8443:127.0.0.1 https://held-unfiled.cn:8443/   # terminated: block page over HTTPS\n  \
         curl http://127.0.0.1:9090/metrics",
        registry.display(),
        cert = cert.display(),
        held = held.display(),
    );
    icp_gate_proxy::run(
        settings,
        icp_gate_proxy::RunOptions {
            upgrade: false,
            demo_origin: Some(DEMO_ORIGIN.parse().expect("constant address")),
            demo_tls_origin: Some((
                DEMO_TLS_ORIGIN.parse().expect("constant address"),
                tls_origin,
            )),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

fn explain(hosts: &[String], config: &Path, batch: Option<&Path>) -> anyhow::Result<ExitCode> {
    const NO_REGISTRY: u8 = 2;
    if hosts.is_empty() && batch.is_none() {
        bail!("nothing to explain: give one or more hosts, or --batch FILE");
    }
    let settings = match icp_gate_config::load_file(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(NO_REGISTRY));
        }
    };
    let (loaded, steps) = match icp_gate_proxy::explain::load_offline(&settings) {
        Ok(l) => l,
        Err(steps) => {
            for step in steps {
                eprintln!("icp-gate explain: {step}");
            }
            return Ok(ExitCode::from(NO_REGISTRY));
        }
    };
    for step in steps {
        eprintln!("icp-gate explain: {step}");
    }
    let mut batch_reader: Option<Box<dyn std::io::BufRead>> = match batch {
        None => None,
        Some(p) if p == Path::new("-") => Some(Box::new(std::io::stdin().lock())),
        Some(p) => Some(Box::new(std::io::BufReader::new(open(p)?))),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let summary = icp_gate_proxy::explain::run_cli(
        &loaded,
        &settings.listeners,
        hosts,
        batch_reader
            .as_deref_mut()
            .map(|r| r as &mut dyn std::io::BufRead),
        &mut out,
    )?;
    if summary.invalid > 0 {
        eprintln!(
            "icp-gate explain: {} of {} hosts are not usable host names (invalid_host)",
            summary.invalid, summary.hosts
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn open(file: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))
}

fn diff(old: &Path, new: &Path, output: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut delta = Vec::new();
    let summary = match icp_gate_registry::diff(
        std::io::BufReader::new(open(old)?),
        std::io::BufReader::new(open(new)?),
        &mut delta,
    ) {
        Ok(s) => s,
        Err(e) => {
            let e = e
                .to_string()
                .replacen("OLD", &old.display().to_string(), 1)
                .replacen("NEW", &new.display().to_string(), 1);
            eprintln!("icp-gate: no delta written: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Written whole once it is complete: a failed diff leaves no partial delta behind.
    match output {
        Some(path) => {
            std::fs::write(path, &delta).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(&delta)?,
    }
    eprintln!(
        "delta from={} to={}: {} upserts, {} removals, {} entries after it",
        summary.from, summary.to, summary.upserts, summary.removals, summary.entries
    );
    Ok(ExitCode::SUCCESS)
}

fn build(
    records: &Path,
    serial: u64,
    output: &Path,
    generated_at: Option<String>,
) -> anyhow::Result<ExitCode> {
    let generated_at = generated_at.unwrap_or_else(publish::now_rfc3339);
    let to_stdout = output == Path::new("-");
    let built = publish::build(
        records,
        serial,
        &generated_at,
        (!to_stdout).then_some(output),
        &mut std::io::stdout().lock(),
    );
    match built {
        Ok(b) => {
            eprintln!(
                "{}: {} records sealed, serial {serial}, sha256 {}",
                if to_stdout {
                    "-".into()
                } else {
                    output.display().to_string()
                },
                b.records,
                b.snapshot.sha256_hex()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "{}: {e}
icp-gate: nothing written",
                records.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn publish(
    export: &Path,
    dir: &Path,
    serial: Option<u64>,
    keep_deltas: usize,
    generated_at: Option<String>,
) -> anyhow::Result<ExitCode> {
    let options = publish::PublishOptions {
        serial,
        generated_at: generated_at.unwrap_or_else(publish::now_rfc3339),
        keep_deltas,
    };
    let dir_name = dir.display();
    match publish::publish(export, dir, &options) {
        Ok(publish::Published::First { serial, entries }) => println!(
            "{dir_name}: published serial {serial} ({entries} entries) as registry.snapshot"
        ),
        Ok(publish::Published::Unchanged { serial }) => println!(
            "{dir_name}: nothing to publish: {} has the same records as serial {serial}, \
             the last published",
            export.display()
        ),
        Ok(publish::Published::Next {
            serial,
            entries,
            delta,
            no_delta,
            pruned,
        }) => {
            println!(
                "{dir_name}: published serial {serial} ({entries} entries) as registry.snapshot"
            );
            match (delta, no_delta) {
                (Some(d), _) => println!(
                    "{dir_name}: delta from serial {} to {serial}: {} upserts, {} removals, as \
                     registry.deltas/{}",
                    d.from, d.upserts, d.removals, d.from
                ),
                (None, why) => {
                    println!("{dir_name}: no delta written: {}", why.unwrap_or_default())
                }
            }
            if !pruned.is_empty() {
                let list: Vec<String> = pruned.iter().map(u64::to_string).collect();
                println!(
                    "{dir_name}: removed the deltas from serials {} (--keep-deltas {keep_deltas})",
                    list.join(", ")
                );
            }
        }
        Err(e) => {
            eprintln!("icp-gate: nothing published: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify_delta(file: &Path) -> anyhow::Result<ExitCode> {
    match icp_gate_registry::read_delta(open(file)?, u64::MAX) {
        Ok(d) => {
            let (upserts, removals) = d.counts();
            println!("{}: valid delta", file.display());
            println!("from: {}", d.header.from);
            println!("to: {}", d.header.to);
            println!("generated_at: {}", d.header.generated_at);
            println!("changes: {}", d.changes.len());
            println!("  upserts: {upserts}");
            println!("  removals: {removals}");
            println!("entries_after: {}", d.entries);
            println!("sha256: {}", icp_gate_registry::snapshot::hex(&d.sha256));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: invalid: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn verify(file: &Path) -> anyhow::Result<ExitCode> {
    if icp_gate_registry::delta::starts_as_delta(open(file)?)
        .with_context(|| format!("reading {}", file.display()))?
    {
        return verify_delta(file);
    }
    let f = open(file)?;
    let size = f.metadata().map(|m| m.len()).ok();
    match read_snapshot_sized(f, size) {
        Ok(s) => {
            let counts = s.registry.status_counts();
            println!("{}: valid", file.display());
            println!("serial: {}", s.header.serial);
            println!("generated_at: {}", s.header.generated_at);
            println!("records: {}", s.registry.len());
            for status in Status::ALL {
                println!("  {}: {}", status.as_str(), counts[status as usize]);
            }
            println!("sha256: {}", s.sha256_hex());
            println!(
                "parse_and_build_ms: {:.1} (cpu {:.1})",
                s.build_time.as_secs_f64() * 1000.0,
                s.build_cpu_time.as_secs_f64() * 1000.0
            );
            let (index, names) = s.registry.memory();
            let per = |bytes: usize| bytes as f64 / s.registry.len().max(1) as f64;
            println!(
                "index_bytes_per_entry: {:.1} (beyond the names' text, {:.1} bytes per entry)",
                per(index),
                per(names)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: invalid: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

fn upgrade(config: &Path, pid: u32, timeout: u64) -> anyhow::Result<ExitCode> {
    if let Err(e) = icp_gate_config::check_file(config) {
        eprintln!("{e}");
        eprintln!("icp-gate upgrade: nothing started; the running gate (pid {pid}) keeps serving");
        return Ok(ExitCode::FAILURE);
    }
    let new = icp_gate_proxy::upgrade::hand_over(config, pid, Duration::from_secs(timeout))?;
    println!("{new}");
    Ok(ExitCode::SUCCESS)
}

/// Asks the admin listener (`IP:port` or `unix:PATH`) for `path`; exit 0 on 200. The probes
/// need no token and pass the Host check (the Host sent is the IP address, or `localhost`).
fn health(admin: &str, path: &str) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(3);
    let request =
        |host: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    if let Some(socket) = admin.strip_prefix("unix:") {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)
            .with_context(|| format!("connecting to the admin socket {socket}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request("localhost").as_bytes())?;
        stream.read_to_string(&mut answer)?;
    } else {
        let address: SocketAddr = admin.parse().with_context(|| {
            format!("`{admin}` is neither an IP:port address nor unix:/path/to/socket")
        })?;
        let mut stream = TcpStream::connect_timeout(&address, timeout)
            .with_context(|| format!("connecting to the admin listener {address}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(request(&address.to_string()).as_bytes())?;
        stream.read_to_string(&mut answer)?;
    }
    let status_line = answer.lines().next().unwrap_or_default();
    println!("{status_line}");
    Ok(if status_line.split(' ').nth(1) == Some("200") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
