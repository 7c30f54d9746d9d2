//! Assembles the Pingora server from validated settings: one proxy service per listener, the
//! admin listener, the sync worker and, for the demo, the demo origin.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use icp_gate_config::{
    AccessLogFormat, AdminAddress, ListenerSettings, LogFormat, LogSettings, Protocol, Settings,
};
use icp_gate_registry::{RegistryHandle, Syncer};
use pingora::apps::ServerApp;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::services::ServiceHandle;

use crate::accept::{Limited, TransparentListener};
use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::admin_guard::{AdminGuard, AdminToken, TokenWatcher};
use crate::block_page::BlockPages;
use crate::demo_origin::{DemoOrigin, DemoTlsOrigin};
use crate::front::GateApp;
use crate::gate::{Gate, GateProxy, RequestIds};
use crate::log_line::Style;
use crate::log_writer::{hold_sigusr1, LogWriter, ReopenOnSignal};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::readiness::{Health, Supervisor, Watched};
use crate::sync_service::{report, SyncService};
use crate::tls::certs::{CertStore, CertWatcher};
use crate::tls::terminate::Termination;
use crate::tls::tickets::FileTicketer;
use crate::tls::TlsApp;
use crate::top::TopBlocked;
use crate::upgrade::SafeShutdownSignals;

#[derive(Clone, Default)]
pub struct RunOptions {
    /// Take the listeners over from a running gate (graceful upgrade, see docs/operations.md).
    pub upgrade: bool,
    /// Also serve the built-in demo origin here.
    pub demo_origin: Option<SocketAddr>,
    /// Also serve this TLS demo origin here.
    pub demo_tls_origin: Option<(SocketAddr, DemoTlsOrigin)>,
}

/// Sets up logging: `RUST_LOG` if set, else the configured level. Pingora's own `log` records
/// go through the same subscriber.
pub fn init_logging(log: &LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already set (tests starting several gates in one process): keep the first.
    let _ = result;
}

/// Pingora's proxy for a gate: the requests and HTTP/2 streams the front end hands over. (The
/// front end runs every connection, HTTP/2 ones included: `front::h2`.)
fn gate_proxy(server: &Server, gate: &Arc<Gate>) -> pingora::proxy::HttpProxy<GateProxy> {
    http_proxy(&server.configuration, GateProxy(gate.clone()))
}

/// Adds a listener's service: on a Pingora listener, or on a socket of our own for a
/// transparent (TPROXY) one (bound here, so it is up before the server starts).
fn add_listener<A: ServerApp + Send + Sync + 'static>(
    server: &mut Server,
    health: &Arc<Health>,
    name: String,
    listener: &ListenerSettings,
    app: A,
    buffers: L4BufferSettings,
    threads: usize,
) -> anyhow::Result<ServiceHandle> {
    Ok(if listener.transparent {
        let socket = TransparentListener::bind(&listener.name, listener.address)?;
        let mut service = background_service(&name, socket.serve(app));
        service.threads = Some(threads);
        server.add_service(Watched::new(service, health))
    } else {
        let mut service = Service::new(name, app);
        service.add_listener(ListenerConfig::tcp(listener.address.to_string()).l4_buffer(buffers));
        server.add_service(Watched::new(service, health))
    })
}

/// Puts the first registry in service and reports it. A new process taking over from a running
/// gate starts from the registry that gate kept in `state_dir` (the one it serves, with no
/// wait on the source), and syncs from the source once it serves; any other start reads the
/// source first and falls back on `state_dir`.
fn first_load(syncer: &mut Syncer, registry: &RegistryHandle, metrics: &Metrics, upgrade: bool) {
    // The source (for a new process taking over: the snapshot the running gate kept in
    // state_dir first); if it is down or bad, the last snapshot this gate accepted; then the
    // deltas it applied before it stopped, kept in state_dir over the snapshot they chain from:
    // a restart comes back at the newest serial it had.
    for (from, outcome) in syncer.load_at_start(true, upgrade) {
        report(&outcome, registry, metrics, &from);
    }
}

/// The log files' writers (`[log] audit_log`, `access_log_file`) and the access log that
/// writes through them.
struct LogFiles {
    writers: Vec<LogWriter>,
    access_log: AccessLog,
}

impl LogFiles {
    fn open(log: &LogSettings, metrics: &Metrics, threads: usize) -> anyhow::Result<LogFiles> {
        // About two shards per thread that logs: threads rarely meet on one.
        let shards = threads * 2;
        let open = |key: &str, path: &std::path::Path, counters| {
            LogWriter::open(key, path, shards, log.flush_interval, counters)
                .map_err(|e| anyhow::anyhow!("log.{key}: cannot open `{}`: {e}", path.display()))
        };
        let mut writers = Vec::new();
        let mut access_log = AccessLog::new(log.access_log, log.access_log_sample);
        if let Some(path) = &log.audit_log {
            let writer = open("audit_log", path, metrics.audit_log.clone())?;
            access_log = access_log.with_audit(writer.sink());
            writers.push(writer);
        }
        if let Some(path) = &log.access_log_file {
            let writer = open("access_log_file", path, metrics.access_log_file.clone())?;
            let style = match log.access_log_format {
                AccessLogFormat::Json => Style::Json,
                AccessLogFormat::Text => Style::Text,
            };
            access_log = access_log.with_file(writer.sink(), style);
            writers.push(writer);
        }
        Ok(LogFiles {
            writers,
            access_log,
        })
    }

    /// Writes every line out and stops the writers.
    fn shutdown(&mut self) {
        for writer in &mut self.writers {
            writer.shutdown();
        }
    }
}

/// Runs the gate until it is told to stop (SIGTERM: graceful, SIGINT: fast), then writes out
/// every log line and exits.
pub fn run(settings: Settings, options: RunOptions) -> anyhow::Result<()> {
    // Before the registry loads (which can take seconds): logrotate's SIGUSR1 must not end the
    // process before the reopen service listens.
    hold_sigusr1();
    // Blocked names are counted for `/top/blocked`, so only with an admin listener: one shard
    // per worker thread that decides (each listener has its own runtime).
    let top = match &settings.admin {
        Some(admin) => TopBlocked::new(
            admin.top_blocked_capacity,
            (settings.listeners.len() * settings.server.threads).clamp(1, 64),
        ),
        None => TopBlocked::disabled(),
    };
    let metrics = Metrics::with_top(top);
    let registry = RegistryHandle::new();
    let notifier = Notifier::from_env();
    let health = Health::new();
    let upgrade = options.upgrade;

    // First load before the listeners open, so a gate with a reachable source is ready at once.
    notifier.status("loading the registry");
    let mut syncer = Syncer::new(settings.registry.source.clone(), registry.clone())
        .with_state_dir(settings.registry.state_dir.clone())
        .with_gates(settings.registry.gates.clone())
        .with_http(settings.registry.http.clone())
        .with_delta_source(settings.registry.delta_source.clone());
    let source = syncer.source().to_string();
    first_load(&mut syncer, &registry, &metrics, upgrade);
    if !registry.is_ready() {
        if upgrade {
            // The running gate serves with a registry; a process without one must not take
            // its listeners (it would answer 503 to everything).
            anyhow::bail!(
                "no registry could be loaded (registry.state_dir nor {source}): this process \
                 does not take the listeners over, the running gate keeps serving"
            );
        }
        tracing::warn!(
            source,
            "no registry loaded: the gate answers 503 and forwards nothing until one is"
        );
    }

    let conf = ServerConf {
        threads: settings.server.threads,
        grace_period_seconds: Some(settings.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(settings.server.shutdown_timeout.as_secs()),
        upstream_keepalive_pool_size: settings.upstream.keepalive_pool_size,
        pid_file: settings.server.pid_file.clone(),
        upgrade_sock: settings.server.upgrade_sock.clone(),
        ca_file: settings
            .upstream
            .ca_file
            .as_ref()
            .map(|f| f.display().to_string()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    // Bootstrapped at the end, once everything that can fail has: in an upgrade, that is when
    // this process takes the listeners over.
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let mut listening: Vec<ServiceHandle> = Vec::new();

    let pages = Arc::new(BlockPages::new(&settings.block_page.templates));
    let request_ids = Arc::new(RequestIds::new());
    let threads = settings.server.threads;
    // The writer threads start here, after Pingora's bootstrap and before its runtimes (the
    // gate never daemonizes, which would fork them away).
    let mut logs = LogFiles::open(&settings.log, &metrics, threads * settings.listeners.len())?;
    // The certificates TLS listeners terminate with (none: every TLS connection is passed
    // through or refused).
    let (certs, tickets) = match &settings.tls {
        Some(tls) => {
            let store = CertStore::load(&tls.certificates, metrics.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "tls.certificates: cannot read `{}`: {e}",
                    tls.certificates.display()
                )
            })?;
            let tickets = match &tls.session_ticket_keys {
                Some(file) => {
                    Some(Arc::new(FileTicketer::from_file(file).map_err(|e| {
                        anyhow::anyhow!("tls.session_ticket_keys: {e}")
                    })?))
                }
                None => None,
            };
            let store = Arc::new(store);
            server.add_service(Watched::new(
                background_service(
                    "tls certificates",
                    CertWatcher {
                        store: store.clone(),
                        tickets: tickets.clone(),
                        interval: tls.check_interval,
                    },
                ),
                &health,
            ));
            (Some(store), tickets)
        }
        None => (None, None),
    };
    // Every address the gate listens on: an original destination among them is a loop.
    let own_addresses: Vec<SocketAddr> = settings
        .listeners
        .iter()
        .map(|l| l.address)
        .chain(settings.admin.as_ref().and_then(|a| a.address.tcp()))
        .collect();
    for listener in &settings.listeners {
        let counters = metrics.listener(&listener.name);
        let (open, rejected) = (
            counters.open_connections.clone(),
            counters.connections_rejected.clone(),
        );
        let gate = Arc::new(Gate::new(
            listener.clone(),
            registry.clone(),
            settings.upstream.clone(),
            pages.clone(),
            counters,
            logs.access_log.clone(),
            request_ids.clone(),
            own_addresses.clone(),
        ));
        let service_name = format!("gate {}", listener.name);
        match listener.protocol {
            Protocol::Http => {
                let app = Limited::new(
                    GateApp::new(gate.clone(), gate_proxy(&server, &gate)),
                    listener.max_connections,
                    open,
                    rejected,
                );
                // Reads are not buffered below the front end: it reads into its own
                // per-connection buffer, and a 64 KiB buffer under it (Pingora's default) only
                // adds a copy of every request. Writes Pingora makes are buffered: an answer's
                // head and body leave in one write when they fit (Pingora's default, 1460
                // bytes, is smaller than a block page).
                let buffers = L4BufferSettings::new(0, listener.write_buffer_bytes);
                listening.push(add_listener(
                    &mut server,
                    &health,
                    service_name,
                    listener,
                    app,
                    buffers,
                    threads,
                )?);
            }
            Protocol::Tls => {
                let termination = match &certs {
                    Some(certs) => Some(Termination::new(
                        certs.clone(),
                        tickets.clone(),
                        GateApp::new(gate.clone(), gate_proxy(&server, &gate)),
                        metrics.tls_terminated(&listener.name, "handshake"),
                        metrics.tls_terminated(&listener.name, "handshake_failed"),
                    )?),
                    None => None,
                };
                let app = Limited::new(
                    TlsApp::new(
                        gate.clone(),
                        metrics.tls_listener(&listener.name),
                        termination,
                    ),
                    listener.max_connections,
                    open,
                    rejected,
                );
                // The hello is read into its own buffer, and relayed bytes must leave as they
                // come: nothing buffered below.
                let buffers = L4BufferSettings::unbuffered();
                listening.push(add_listener(
                    &mut server,
                    &health,
                    service_name,
                    listener,
                    app,
                    buffers,
                    threads,
                )?);
            }
        }
        tracing::info!(
            listener = listener.name,
            address = %listener.address,
            protocol = ?listener.protocol,
            require = ?listener.require,
            mode = ?listener.mode,
            upstream = ?listener.upstream,
            transparent = listener.transparent,
            "listener configured"
        );
    }

    let syncer = Arc::new(Mutex::new(syncer));
    if let Some(admin) = &settings.admin {
        // The token as `-t` read it; a file that went bad since stops the start here.
        let token = match &admin.token_file {
            Some(file) => Some(Arc::new(
                AdminToken::load(file.clone())
                    .map_err(|e| anyhow::anyhow!("admin.token_file: {e}"))?,
            )),
            None => None,
        };
        let mut service = Service::new(
            "admin".to_string(),
            AdminApp {
                metrics: metrics.clone(),
                registry: registry.clone(),
                syncer: syncer.clone(),
                listeners: settings.listeners.clone(),
                guard: AdminGuard::new(admin, token.clone()),
            },
        );
        match &admin.address {
            AdminAddress::Tcp(address) => service.add_tcp(&address.to_string()),
            AdminAddress::Unix(path) => {
                use std::os::unix::fs::PermissionsExt;
                service.add_uds(
                    &path.to_string_lossy(),
                    Some(std::fs::Permissions::from_mode(admin.socket_mode)),
                )
            }
        }
        listening.push(server.add_service(Watched::new(service, &health)));
        if let Some(token) = token {
            server.add_service(Watched::new(
                background_service(
                    "admin token",
                    TokenWatcher {
                        token,
                        metrics: metrics.clone(),
                    },
                ),
                &health,
            ));
        }
        tracing::info!(
            address = %admin.address,
            token = admin.token_file.is_some(),
            require_token = ?admin.require_token,
            "admin listener configured (/metrics /healthz /readyz /registry /explain /top/blocked, POST /sync)"
        );
    }

    if let Some(origin) = options.demo_origin {
        let mut service = Service::new("demo origin".to_string(), DemoOrigin);
        service.add_tcp(&origin.to_string());
        server.add_service(service);
    }
    if let Some((address, origin)) = options.demo_tls_origin {
        let mut service = Service::new("demo tls origin".to_string(), origin);
        service.add_tcp(&address.to_string());
        server.add_service(service);
    }

    server.add_service(Watched::new(
        background_service(
            "registry sync",
            SyncService {
                syncer,
                registry: registry.clone(),
                interval: settings.registry.refresh_interval,
                delta_interval: settings
                    .registry
                    .delta_source
                    .is_some()
                    .then_some(settings.registry.delta_interval),
                metrics,
                // A process that started from state_dir catches up with the source at once.
                sync_at_start: upgrade,
            },
        ),
        &health,
    ));

    if !logs.writers.is_empty() {
        server.add_service(Watched::new(
            background_service(
                "log files",
                ReopenOnSignal {
                    sinks: logs.writers.iter().map(LogWriter::sink).collect(),
                },
            ),
            &health,
        ));
    }

    let handing_over = Arc::new(AtomicBool::new(false));
    let supervisor = server.add_service(background_service(
        "supervisor",
        Supervisor {
            notifier: notifier.clone(),
            registry,
            health,
            upgraded: upgrade,
            handing_over: handing_over.clone(),
        },
    ));
    supervisor.add_dependencies(&listening);

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "icp-gate starting");
    if upgrade {
        notifier.prepared("prepared: waiting for the running gate's listeners");
        tracing::info!(
            upgrade_sock = settings.server.upgrade_sock,
            "prepared to take the listeners over: waiting for them on server.upgrade_sock"
        );
    } else {
        notifier.status("starting the listeners");
    }
    server.bootstrap();
    // Returns once the runtimes are down (after the grace period on SIGTERM, or once the
    // listeners are handed over): nothing logs any more, so the last lines can be written.
    server.run(RunArgs {
        shutdown_signal: Box::new(SafeShutdownSignals {
            upgrade_sock: settings.server.upgrade_sock.clone(),
            notifier,
            handing_over,
        }),
    });
    logs.shutdown();
    tracing::info!("log files flushed; exiting");
    std::process::exit(0)
}
