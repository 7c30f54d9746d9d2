//! icp-gate: the command line. Everything it runs lives in the member crates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use icp_gate_registry::{read_snapshot_sized, Status};

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
    let text = DEMO_CONFIG.replace(
        "@SAMPLE_REGISTRY@",
        &format!("file://{}", registry.display()),
    );
    let settings = icp_gate_config::parse(&text, &dir).map_err(|errors| {
        anyhow::anyhow!("the embedded demo configuration is invalid: {errors:?}")
    })?;
    icp_gate_proxy::init_logging(&settings.log);
    let (tls_origin, tls_cert) =
        icp_gate_proxy::demo_origin::DemoTlsOrigin::generate(&DEMO_TLS_NAMES)
            .context("making the demo TLS origin's certificate")?;
    let cert = dir.join("demo-origin.pem");
    std::fs::write(&cert, tls_cert).with_context(|| format!("writing {}", cert.display()))?;
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
         curl http://127.0.0.1:9090/metrics",
        registry.display(),
        cert = cert.display(),
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
