//! icp-gate configuration: the TOML file users write (`schema`), turned into the validated
//! `Settings` the gate runs from. Validation always runs, and reports every problem it finds
//! with the key path it belongs to, so one `icp-gate -t` run shows everything to fix.

pub mod admin;
pub mod certs;
pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use icp_gate_registry::{
    parse_authority, BlockReason, Canary, Decision, DeltaSource, HttpSettings, Requirement,
    SafetyGates, SnapshotSource,
};
use serde::de::DeserializeOwned;

use schema::*;

pub use admin::{AdminAddress, AdminSettings, RequireToken};

/// Listening behaviour of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Block what may not pass.
    Enforce,
    /// Forward everything; count what would have been blocked as `monitored`.
    Monitor,
}

/// What a listener reads from its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1: each request decided on its Host.
    Http,
    /// TLS: each connection decided on its ClientHello's SNI, then passed through or refused.
    Tls,
}

/// How a `tls` listener ends a connection it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refuse {
    /// The fatal `unrecognized_name` alert, then a close.
    Alert,
    /// A TCP reset.
    Reset,
}

/// Where a listener forwards what it lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// These servers, in turn.
    Servers(Vec<SocketAddr>),
    /// Wherever the client sent the connection (`SO_ORIGINAL_DST` after a `REDIRECT`, or the
    /// local address on a `transparent` listener), if it falls in `allow` (empty: anywhere) and
    /// is not one of the gate's own listening addresses.
    OriginalDestination { allow: Vec<ipnet::IpNet> },
}

#[derive(Clone, Debug)]
pub struct ListenerSettings {
    pub address: SocketAddr,
    pub name: String,
    pub require: Requirement,
    pub mode: Mode,
    pub write_buffer_bytes: usize,
    /// None: keep-alive off.
    pub keepalive_timeout: Option<Duration>,
    pub max_requests_per_connection: u32,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub protocol: Protocol,
    pub upstream: Upstream,
    /// The listening socket is a TPROXY one (`IP_TRANSPARENT`).
    pub transparent: bool,
    pub refuse: Refuse,
    pub client_hello_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub max_connections: usize,
    /// Terminated requests go to the upstream over TLS.
    pub upstream_tls: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub servers: Vec<SocketAddr>,
    /// CA file for upstream TLS (`upstream_tls` listeners); None: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_pool_size: usize,
}

#[derive(Clone, Debug)]
pub struct RegistrySettings {
    pub source: SnapshotSource,
    pub refresh_interval: Duration,
    pub state_dir: Option<PathBuf>,
    pub gates: SafetyGates,
    pub http: HttpSettings,
    /// The delta feed, if one is configured.
    pub delta_source: Option<DeltaSource>,
    pub delta_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The form of the lines of `[log] access_log_file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line, OpenTelemetry HTTP semantic-convention field names.
    Json,
    /// The same fields as `key=value` text.
    Text,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    pub access_log_sample: f64,
    /// Access lines go to this file (through the buffered writer) instead of standard error.
    pub access_log_file: Option<PathBuf>,
    pub access_log_format: AccessLogFormat,
    /// The audit log: a JSON line per blocked or monitored decision.
    pub audit_log: Option<PathBuf>,
    /// The longest a line waits in memory before it is written.
    pub flush_interval: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct BlockPageSettings {
    /// Template text per `BlockReason::index()`, already read from disk.
    pub templates: [Option<String>; 6],
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub threads: usize,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub pid_file: String,
    pub upgrade_sock: String,
}

/// `[tls]`: the certificates the gate terminates TLS with.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The directory of `NAME.crt` + `NAME.key` pairs (a relative path as written is joined to
    /// the configuration file's directory, as `-c` gave it). Readable when the configuration
    /// was checked.
    pub certificates: PathBuf,
    /// How often the directory is looked at for changes; None: only on SIGHUP.
    pub check_interval: Option<Duration>,
    /// The session ticket key file, when a fleet shares its keys.
    pub session_ticket_keys: Option<PathBuf>,
}

/// Everything the gate needs, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listeners: Vec<ListenerSettings>,
    pub upstream: UpstreamSettings,
    pub registry: RegistrySettings,
    pub admin: Option<AdminSettings>,
    pub log: LogSettings,
    pub block_page: BlockPageSettings,
    pub server: ServerSettings,
    /// None: no `[tls]` section (every `tls` listener passes through).
    pub tls: Option<TlsSettings>,
}

/// One problem with the configuration: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub errors: Vec<KeyError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} error{} in the configuration",
            self.origin,
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        errors: vec![KeyError {
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|errors| ConfigError { origin, errors })
}

/// `icp-gate -t`: reads and validates a configuration file as `load_file` does, and also
/// refuses every certificate file the gate would not load (each named, with key
/// `tls.certificates`). A running gate only logs and counts those and serves the others, so a
/// start or reload is never stopped by one bad certificate.
pub fn check_file(path: &Path) -> Result<Settings, ConfigError> {
    let settings = load_file(path)?;
    let errors = check_certificates(&settings);
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError {
            origin: path.display().to_string(),
            errors,
        })
    }
}

/// Every certificate file in `[tls] certificates` that would not load, as errors of key
/// `tls.certificates` naming the file.
pub fn check_certificates(settings: &Settings) -> Vec<KeyError> {
    let Some(tls) = &settings.tls else {
        return Vec::new();
    };
    let error = |message: String| KeyError {
        key: "tls.certificates".into(),
        message,
    };
    match certs::load_dir(&tls.certificates, certs::unix_now()) {
        Ok(load) => load
            .problems
            .iter()
            .map(|p| {
                error(format!(
                    "{} ({}): {}",
                    tls.certificates.join(&p.file).display(),
                    p.reason.as_str(),
                    p.detail
                ))
            })
            .collect(),
        Err(e) => vec![error(format!(
            "cannot read the directory `{}`: {e}",
            tls.certificates.display()
        ))],
    }
}

/// Validates configuration text. Relative template and certificate paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<Settings, Vec<KeyError>> {
    let mut v = Validator::default();
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let message = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            return Err(vec![KeyError {
                key: String::new(),
                message: format!("not valid TOML{at}: {message}"),
            }]);
        }
    };
    for key in table.keys() {
        if ![
            "listener",
            "upstream",
            "registry",
            "admin",
            "log",
            "block_page",
            "server",
            "tls",
        ]
        .contains(&key.as_str())
        {
            v.error(
                key,
                "unknown section (expected listener, upstream, registry, admin, log, block_page, server or tls)",
            );
        }
    }

    let listeners: Vec<ListenerFile> = match table.get("listener") {
        None => {
            v.error("listener", "at least one [[listener]] is required");
            Vec::new()
        }
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| v.section(&format!("listener[{i}]"), item))
            .collect(),
        Some(_) => {
            v.error("listener", "must be an array of tables: write [[listener]]");
            Vec::new()
        }
    };
    let upstream: Option<UpstreamFile> = v.optional(&table, "upstream");
    // An [upstream] that did not parse has its error already: no second one about its servers.
    let upstream_unreadable = upstream.is_none() && table.contains_key("upstream");
    let upstream = upstream.unwrap_or_default();
    let registry: Option<RegistryFile> = v.required(&table, "registry");
    let admin: Option<AdminFile> = v.optional(&table, "admin");
    let log: LogFile = v.optional(&table, "log").unwrap_or_default();
    let block_page: BlockPageFile = v.optional(&table, "block_page").unwrap_or_default();
    let server: ServerFile = v.optional(&table, "server").unwrap_or_default();
    let tls: Option<TlsFile> = v.optional(&table, "tls");

    // Listeners (as written, parsed or not) that take the default servers.
    let without_own_upstream: Vec<usize> = match table.get("listener") {
        Some(toml::Value::Array(items)) if !upstream_unreadable => items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.get("upstream").is_none())
            .map(|(i, _)| i)
            .collect(),
        _ => Vec::new(),
    };
    let mut upstream = v.upstream(&upstream, &without_own_upstream);
    if let Some(file) = upstream.ca_file.take() {
        let file = base.join(file);
        match std::fs::metadata(&file) {
            Ok(m) if m.is_file() => upstream.ca_file = Some(file),
            Ok(_) => v.error(
                "upstream.ca_file",
                format!("`{}` is not a file", file.display()),
            ),
            Err(e) => v.error(
                "upstream.ca_file",
                format!("cannot read `{}`: {e}", file.display()),
            ),
        }
    }
    let listeners = v.listeners(&listeners, &upstream.servers);
    let registry = registry.and_then(|r| v.registry(&r));
    let admin = admin.and_then(|a| v.admin(&a, base));
    let admin_tcp = admin.as_ref().and_then(|a| a.address.tcp());
    if let Some(admin) = admin_tcp {
        if listeners.iter().any(|l| l.address == admin) {
            v.error(
                "admin.address",
                format!("`{admin}` is also a listener address"),
            );
        }
    }
    // A listener forwarding to the gate's own address would loop.
    let own: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.address)
        .chain(admin_tcp)
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        if let Upstream::Servers(servers) = &l.upstream {
            if let Some(s) = servers.iter().find(|s| own.contains(s)) {
                v.error(
                    &format!("listener[{i}].upstream"),
                    format!(
                        "`{s}` is an address this gate listens on: forwarding there would loop"
                    ),
                );
            }
        }
    }
    let log = v.log(&log, base);
    let block_page = v.block_page(&block_page, base);
    let server = v.server(&server);
    let tls = tls.and_then(|t| v.tls(&t, base));

    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    Ok(Settings {
        listeners,
        upstream,
        registry: registry.expect("checked above"),
        admin,
        log,
        block_page,
        server,
        tls,
    })
}

/// Whether two paths name the same file (both exist: `log_file` opened them).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

/// `a.b.c.d/n`, `v6/n`, or a bare address (a prefix of one address).
fn parse_prefix(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .map(|n| n.trunc())
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[derive(Default)]
struct Validator {
    errors: Vec<KeyError>,
}

impl Validator {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(KeyError {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Deserializes one section, recording the error with its full key path.
    fn section<T: DeserializeOwned>(&mut self, key: &str, value: &toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                };
                self.error(&path, e.into_inner().to_string().trim_end().to_owned());
                None
            }
        }
    }

    fn required<T: DeserializeOwned>(&mut self, table: &toml::Table, key: &str) -> Option<T> {
        match table.get(key) {
            Some(value) => self.section(key, value),
            None => {
                self.error(key, format!("the [{key}] section is required"));
                None
            }
        }
    }

    fn optional<T: DeserializeOwned>(&mut self, table: &toml::Table, key: &str) -> Option<T> {
        table.get(key).and_then(|value| self.section(key, value))
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    key,
                    format!("`{value}` is not an IP:port address (e.g. 127.0.0.1:8080 or [::]:80)"),
                );
                None
            }
        }
    }

    fn duration(&mut self, key: &str, seconds: f64, min: f64) -> Duration {
        if !(seconds.is_finite() && seconds >= min && seconds <= 86_400.0) {
            self.error(
                key,
                format!("{seconds} is out of range ({min} to 86400 seconds)"),
            );
            return Duration::ZERO;
        }
        Duration::from_secs_f64(seconds)
    }

    fn listeners(
        &mut self,
        files: &[ListenerFile],
        default_servers: &[SocketAddr],
    ) -> Vec<ListenerSettings> {
        let mut out: Vec<ListenerSettings> = Vec::new();
        for (i, l) in files.iter().enumerate() {
            let key = format!("listener[{i}].address");
            let Some(address) = self.socket_addr(&key, &l.address) else {
                continue;
            };
            if out.iter().any(|o| o.address == address) {
                self.error(&key, format!("`{address}` is used by another listener"));
                continue;
            }
            if !(1460..=1 << 20).contains(&l.write_buffer_bytes) {
                self.error(
                    &format!("listener[{i}].write_buffer_bytes"),
                    format!("{} is out of range (1460 to 1048576)", l.write_buffer_bytes),
                );
            }
            if l.keepalive_timeout_seconds > 3600 {
                self.error(
                    &format!("listener[{i}].keepalive_timeout_seconds"),
                    format!(
                        "{} is out of range (0 to 3600)",
                        l.keepalive_timeout_seconds
                    ),
                );
            }
            if l.max_requests_per_connection == 0 {
                self.error(
                    &format!("listener[{i}].max_requests_per_connection"),
                    "must be at least 1",
                );
            }
            if !(1..=3600).contains(&l.header_read_timeout_seconds) {
                self.error(
                    &format!("listener[{i}].header_read_timeout_seconds"),
                    format!(
                        "{} is out of range (1 to 3600)",
                        l.header_read_timeout_seconds
                    ),
                );
            }
            if !(1024..=1 << 20).contains(&l.max_header_bytes) {
                self.error(
                    &format!("listener[{i}].max_header_bytes"),
                    format!("{} is out of range (1024 to 1048576)", l.max_header_bytes),
                );
            }
            let protocol = match l.protocol {
                ProtocolFile::Http => Protocol::Http,
                ProtocolFile::Tls => Protocol::Tls,
            };
            if protocol == Protocol::Http {
                let tls_only = [
                    ("refuse", l.refuse.is_some()),
                    (
                        "client_hello_timeout_seconds",
                        l.client_hello_timeout_seconds.is_some(),
                    ),
                    (
                        "tunnel_idle_timeout_seconds",
                        l.tunnel_idle_timeout_seconds.is_some(),
                    ),
                    ("upstream_tls", l.upstream_tls),
                ];
                for (key, set) in tls_only {
                    if set {
                        self.error(
                            &format!("listener[{i}].{key}"),
                            "only applies to a listener with protocol = \"tls\"",
                        );
                    }
                }
            }
            let client_hello_timeout = l.client_hello_timeout_seconds.unwrap_or(10);
            if !(1..=300).contains(&client_hello_timeout) {
                self.error(
                    &format!("listener[{i}].client_hello_timeout_seconds"),
                    format!("{client_hello_timeout} is out of range (1 to 300)"),
                );
            }
            let tunnel_idle_timeout = l.tunnel_idle_timeout_seconds.unwrap_or(600);
            if !(1..=86_400).contains(&tunnel_idle_timeout) {
                self.error(
                    &format!("listener[{i}].tunnel_idle_timeout_seconds"),
                    format!("{tunnel_idle_timeout} is out of range (1 to 86400)"),
                );
            }
            if !(1..=10_000_000).contains(&l.max_connections) {
                self.error(
                    &format!("listener[{i}].max_connections"),
                    format!("{} is out of range (1 to 10000000)", l.max_connections),
                );
            }
            let upstream = self.listener_upstream(i, l, default_servers);
            let name = l.name.clone().unwrap_or_else(|| address.to_string());
            if name.is_empty() || name.len() > 64 {
                self.error(&format!("listener[{i}].name"), "must be 1 to 64 characters");
            }
            out.push(ListenerSettings {
                address,
                name,
                require: match l.require {
                    RequireFile::Connected => Requirement::Connected,
                    RequireFile::Filed => Requirement::Filed,
                },
                mode: match l.mode {
                    ModeFile::Enforce => Mode::Enforce,
                    ModeFile::Monitor => Mode::Monitor,
                },
                write_buffer_bytes: l.write_buffer_bytes,
                keepalive_timeout: (l.keepalive_timeout_seconds > 0)
                    .then(|| Duration::from_secs(l.keepalive_timeout_seconds)),
                max_requests_per_connection: l.max_requests_per_connection,
                header_read_timeout: Duration::from_secs(l.header_read_timeout_seconds),
                max_header_bytes: l.max_header_bytes,
                protocol,
                upstream,
                transparent: l.transparent,
                refuse: match l.refuse {
                    Some(RefuseFile::Reset) => Refuse::Reset,
                    Some(RefuseFile::Alert) | None => Refuse::Alert,
                },
                client_hello_timeout: Duration::from_secs(client_hello_timeout),
                tunnel_idle_timeout: Duration::from_secs(tunnel_idle_timeout),
                max_connections: l.max_connections,
                upstream_tls: l.upstream_tls,
            });
        }
        out
    }

    /// A listener's `upstream`: its own list, `"original_destination"`, or the default servers.
    fn listener_upstream(
        &mut self,
        i: usize,
        l: &ListenerFile,
        default_servers: &[SocketAddr],
    ) -> Upstream {
        let key = format!("listener[{i}].upstream");
        let allow_key = format!("listener[{i}].original_destination_allow");
        let upstream = match &l.upstream {
            // Reported once, as `upstream.servers`, when the default is empty.
            None => Upstream::Servers(default_servers.to_vec()),
            Some(toml::Value::String(s)) if s == "original_destination" => {
                let mut allow = Vec::new();
                for (j, prefix) in l.original_destination_allow.iter().flatten().enumerate() {
                    match parse_prefix(prefix) {
                        Some(net) => allow.push(net),
                        None => self.error(
                            &format!("{allow_key}[{j}]"),
                            format!(
                                "`{prefix}` is not an IP prefix (e.g. 10.0.0.0/8, 203.0.113.7 or 2001:db8::/32)"
                            ),
                        ),
                    }
                }
                return Upstream::OriginalDestination { allow };
            }
            Some(toml::Value::String(s)) => {
                self.error(
                    &key,
                    format!(
                        "`{s}` is neither \"original_destination\" nor a list of servers (write [\"{s}\"] for one server)"
                    ),
                );
                Upstream::Servers(Vec::new())
            }
            Some(toml::Value::Array(items)) => {
                if items.is_empty() {
                    self.error(&key, "at least one server is required");
                }
                let mut servers = Vec::new();
                for (j, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{j}]");
                    match item.as_str() {
                        Some(s) => servers.extend(self.socket_addr(&item_key, s)),
                        None => self.error(&item_key, "must be a string \"ip:port\""),
                    }
                }
                Upstream::Servers(servers)
            }
            Some(_) => {
                self.error(
                    &key,
                    "must be a list of \"ip:port\" servers or \"original_destination\"",
                );
                Upstream::Servers(Vec::new())
            }
        };
        if l.original_destination_allow.is_some() {
            self.error(
                &allow_key,
                "only applies with upstream = \"original_destination\"",
            );
        }
        upstream
    }

    fn upstream(&mut self, u: &UpstreamFile, without_own_upstream: &[usize]) -> UpstreamSettings {
        if u.servers.is_empty() {
            if let Some(i) = without_own_upstream.first() {
                self.error(
                    "upstream.servers",
                    format!(
                        "at least one server is required (listener[{i}] has no upstream of its own)"
                    ),
                );
            }
        }
        let servers: Vec<SocketAddr> = u
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.socket_addr(&format!("upstream.servers[{i}]"), s))
            .collect();
        if u.keepalive_pool_size > 1_000_000 {
            self.error("upstream.keepalive_pool_size", "must be at most 1000000");
        }
        UpstreamSettings {
            ca_file: u.ca_file.as_ref().map(PathBuf::from),
            servers,
            connect_timeout: self.duration(
                "upstream.connect_timeout_seconds",
                u.connect_timeout_seconds,
                0.001,
            ),
            read_timeout: self.duration(
                "upstream.read_timeout_seconds",
                u.read_timeout_seconds,
                0.001,
            ),
            idle_timeout: self.duration(
                "upstream.idle_timeout_seconds",
                u.idle_timeout_seconds,
                0.0,
            ),
            keepalive_pool_size: u.keepalive_pool_size,
        }
    }

    fn registry(&mut self, r: &RegistryFile) -> Option<RegistrySettings> {
        let source = match SnapshotSource::parse(&r.source) {
            Ok(s) => Some(s),
            Err(e) => {
                self.error("registry.source", e);
                None
            }
        };
        if r.refresh_interval_seconds == 0 || r.refresh_interval_seconds > 86_400 {
            self.error(
                "registry.refresh_interval_seconds",
                format!(
                    "{} is out of range (1 to 86400)",
                    r.refresh_interval_seconds
                ),
            );
        }
        let state_dir = r.state_dir.as_ref().map(PathBuf::from);
        if let Some(dir) = &state_dir {
            if !dir.is_absolute() {
                self.error(
                    "registry.state_dir",
                    format!("`{}` must be an absolute path", dir.display()),
                );
            }
        }
        if !(0.0..=100.0).contains(&r.max_shrink_percent) {
            self.error(
                "registry.max_shrink_percent",
                format!("{} is out of range (0 to 100)", r.max_shrink_percent),
            );
        }
        if r.max_snapshot_bytes < 1024 {
            self.error("registry.max_snapshot_bytes", "must be at least 1024");
        }
        let mut canaries = Vec::new();
        for (i, c) in r.canary.iter().enumerate() {
            let host = match parse_authority(c.host.as_bytes()) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.error(
                        &format!("registry.canary[{i}].host"),
                        format!("`{}`: {e}", c.host),
                    );
                    None
                }
            };
            let expect = match c.expect.as_str() {
                "allowed" => Some(Decision::Allow),
                other => match BlockReason::parse(other) {
                    Some(BlockReason::InvalidHost) | None => {
                        self.error(
                            &format!("registry.canary[{i}].expect"),
                            format!(
                                "`{other}` is not one of allowed, unfiled, unconnected, revoked, denied, ip_unfiled"
                            ),
                        );
                        None
                    }
                    Some(reason) => Some(Decision::Block(reason)),
                },
            };
            if let (Some(host), Some(expect)) = (host, expect) {
                canaries.push(Canary {
                    host,
                    expect,
                    require: match c.require {
                        RequireFile::Connected => Requirement::Connected,
                        RequireFile::Filed => Requirement::Filed,
                    },
                });
            }
        }
        if r.fetch_retries > 10 {
            self.error(
                "registry.fetch_retries",
                format!("{} is out of range (0 to 10)", r.fetch_retries),
            );
        }
        let http = HttpSettings {
            connect_timeout: self.duration(
                "registry.connect_timeout_seconds",
                r.connect_timeout_seconds,
                0.001,
            ),
            total_timeout: self.duration(
                "registry.fetch_timeout_seconds",
                r.fetch_timeout_seconds,
                0.001,
            ),
            retries: r.fetch_retries,
            ..HttpSettings::default()
        };
        let delta_source = match r.delta_source.as_deref().map(DeltaSource::parse) {
            Some(Err(e)) => {
                self.error("registry.delta_source", e);
                None
            }
            Some(Ok(d)) => Some(d),
            None => None,
        };
        let delta_interval = self.duration(
            "registry.delta_interval_seconds",
            r.delta_interval_seconds,
            0.1,
        );
        Some(RegistrySettings {
            delta_source,
            delta_interval,
            source: source?,
            http,
            refresh_interval: Duration::from_secs(r.refresh_interval_seconds),
            state_dir,
            gates: SafetyGates {
                min_kept_fraction: 1.0 - r.max_shrink_percent.clamp(0.0, 100.0) / 100.0,
                max_bytes: r.max_snapshot_bytes,
                canaries,
            },
        })
    }

    /// `[admin]`: the address (TCP or `unix:`), the token file (read now: a gate that would
    /// start without its token is refused here), and what needs it. A listener others can
    /// reach needs a token: anyone who reaches it could `POST /sync`.
    fn admin(&mut self, a: &AdminFile, base: &Path) -> Option<AdminSettings> {
        let address = match admin::parse_unix(&a.address) {
            Some(Ok(path)) => Some(AdminAddress::Unix(path)),
            Some(Err(e)) => {
                self.error("admin.address", e);
                None
            }
            None => match a.address.parse() {
                Ok(addr) => Some(AdminAddress::Tcp(addr)),
                Err(_) => {
                    self.error(
                        "admin.address",
                        format!(
                            "`{}` is neither an IP:port address (e.g. 127.0.0.1:9090) nor unix:/path/to/socket",
                            a.address
                        ),
                    );
                    None
                }
            },
        };
        let socket_mode = match (&a.socket_mode, &address) {
            (None, _) => admin::DEFAULT_SOCKET_MODE,
            (Some(mode), Some(AdminAddress::Tcp(_))) => {
                self.error(
                    "admin.socket_mode",
                    format!("`{mode}`: only applies to a unix: address"),
                );
                admin::DEFAULT_SOCKET_MODE
            }
            (Some(mode), _) => admin::parse_socket_mode(mode).unwrap_or_else(|e| {
                self.error("admin.socket_mode", e);
                admin::DEFAULT_SOCKET_MODE
            }),
        };
        let token_file = a.token_file.as_ref().map(|f| base.join(f));
        if let Some(file) = &token_file {
            if let Err(e) = admin::read_token(file) {
                self.error("admin.token_file", e);
            }
        }
        let require_token = match a.require_token {
            RequireTokenFile::Mutating => RequireToken::Mutating,
            RequireTokenFile::All => RequireToken::All,
        };
        if require_token == RequireToken::All && token_file.is_none() {
            self.error(
                "admin.require_token",
                "\"all\" needs admin.token_file (the token to require)",
            );
        }
        if let (Some(AdminAddress::Tcp(addr)), None) = (&address, &token_file) {
            if !addr.ip().to_canonical().is_loopback() {
                self.error(
                    "admin.token_file",
                    format!(
                        "required: admin.address `{addr}` is not a loopback address, and anyone \
                         who reaches it could POST /sync (set a token file, or bind the admin \
                         listener to 127.0.0.1 or a unix: socket)"
                    ),
                );
            }
        }
        let mut allowed_hosts = Vec::new();
        for (i, name) in a.allowed_hosts.iter().enumerate() {
            let key = format!("admin.allowed_hosts[{i}]");
            if name.contains(':') {
                self.error(&key, format!("`{name}`: a host name, without a port"));
                continue;
            }
            match parse_authority(name.as_bytes()) {
                Ok(icp_gate_registry::Host::Domain(d)) => allowed_hosts.push(d.as_str().to_owned()),
                Ok(icp_gate_registry::Host::Ip(_)) => self.error(
                    &key,
                    format!("`{name}`: IP literals are always allowed; list host names only"),
                ),
                Err(e) => self.error(&key, format!("`{name}`: {e}")),
            }
        }
        if !(16..=1 << 20).contains(&a.top_blocked_capacity) {
            self.error(
                "admin.top_blocked_capacity",
                format!("{} is out of range (16 to 1048576)", a.top_blocked_capacity),
            );
        }
        Some(AdminSettings {
            address: address?,
            socket_mode,
            token_file,
            require_token,
            allowed_hosts,
            top_blocked_capacity: a.top_blocked_capacity,
        })
    }

    fn log(&mut self, l: &LogFile, base: &Path) -> LogSettings {
        if !["error", "warn", "info", "debug", "trace"].contains(&l.level.as_str()) {
            self.error(
                "log.level",
                format!(
                    "`{}` is not one of error, warn, info, debug, trace",
                    l.level
                ),
            );
        }
        if !(0.0..=1.0).contains(&l.access_log_sample) {
            self.error(
                "log.access_log_sample",
                format!("{} is not a fraction from 0.0 to 1.0", l.access_log_sample),
            );
        }
        if !(1..=1000).contains(&l.flush_interval_ms) {
            self.error(
                "log.flush_interval_ms",
                format!("{} is out of range (1 to 1000)", l.flush_interval_ms),
            );
        }
        let access_log_file = l
            .access_log_file
            .as_deref()
            .and_then(|f| self.log_file("log.access_log_file", f, base));
        let audit_log = l
            .audit_log
            .as_deref()
            .and_then(|f| self.log_file("log.audit_log", f, base));
        if l.access_log_file.is_some() && !l.access_log {
            self.error(
                "log.access_log_file",
                "is set while access_log = false: remove one of them",
            );
        }
        if l.access_log_format.is_some() && l.access_log_file.is_none() {
            self.error(
                "log.access_log_format",
                "applies to access_log_file, which is not set (lines on standard error follow log.format)",
            );
        }
        if let (Some(a), Some(b)) = (&access_log_file, &audit_log) {
            if same_file(a, b) {
                self.error(
                    "log.audit_log",
                    format!("`{}` is also log.access_log_file", b.display()),
                );
            }
        }
        LogSettings {
            level: l.level.clone(),
            format: match l.format {
                LogFormatFile::Text => LogFormat::Text,
                LogFormatFile::Json => LogFormat::Json,
            },
            access_log: l.access_log,
            access_log_sample: l.access_log_sample,
            access_log_file,
            access_log_format: match l.access_log_format {
                None | Some(AccessLogFormatFile::Json) => AccessLogFormat::Json,
                Some(AccessLogFormatFile::Text) => AccessLogFormat::Text,
            },
            audit_log,
            flush_interval: Duration::from_millis(l.flush_interval_ms.clamp(1, 1000)),
        }
    }

    /// A log file: joined to the configuration's directory when relative, and opened to append
    /// (created, mode 0640, when missing) as the running gate will, so that `-t` reports a
    /// directory that does not exist or a file the gate may not write (as `nginx -t` does).
    fn log_file(&mut self, key: &str, file: &str, base: &Path) -> Option<PathBuf> {
        if file.is_empty() {
            self.error(key, "must name a file");
            return None;
        }
        let path = base.join(file);
        if path.is_dir() {
            self.error(key, format!("`{}` is a directory", path.display()));
            return None;
        }
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(&path)
        };
        match opened {
            Ok(_) => Some(path),
            Err(e) => {
                self.error(
                    key,
                    format!("cannot open `{}` to append: {e}", path.display()),
                );
                None
            }
        }
    }

    fn block_page(&mut self, b: &BlockPageFile, base: &Path) -> BlockPageSettings {
        let mut out = BlockPageSettings::default();
        let mut read: BTreeMap<&str, String> = BTreeMap::new();
        for (reason, path) in &b.templates {
            let key = format!("block_page.templates.{reason}");
            if reason != "default" && BlockReason::parse(reason).is_none() {
                self.error(
                    &key,
                    "unknown reason (expected default, unfiled, unconnected, revoked, denied, ip_unfiled or invalid_host)",
                );
                continue;
            }
            let full = base.join(path);
            match std::fs::read_to_string(&full) {
                Ok(text) => {
                    read.insert(reason, text);
                }
                Err(e) => self.error(&key, format!("cannot read `{}`: {e}", full.display())),
            }
        }
        for reason in BlockReason::ALL {
            out.templates[reason.index()] = read
                .get(reason.as_str())
                .or_else(|| read.get("default"))
                .cloned();
        }
        out
    }

    /// The directory must be readable; its files are checked by `check_certificates` (`-t`)
    /// and by the certificate store, which serves the good ones.
    fn tls(&mut self, t: &TlsFile, base: &Path) -> Option<TlsSettings> {
        if t.certificates_check_interval_seconds > 3600 {
            self.error(
                "tls.certificates_check_interval_seconds",
                format!(
                    "{} is out of range (0 to 3600)",
                    t.certificates_check_interval_seconds
                ),
            );
        }
        if t.certificates.is_empty() {
            self.error("tls.certificates", "must name a directory");
            return None;
        }
        let dir = base.join(&t.certificates);
        if let Err(e) = std::fs::read_dir(&dir) {
            self.error(
                "tls.certificates",
                format!("cannot read the directory `{}`: {e}", dir.display()),
            );
            return None;
        }
        let session_ticket_keys = t.session_ticket_keys.as_ref().map(|f| base.join(f));
        if let Some(file) = &session_ticket_keys {
            match std::fs::read_to_string(file) {
                Err(e) => self.error(
                    "tls.session_ticket_keys",
                    format!("cannot read `{}`: {e}", file.display()),
                ),
                Ok(text) => {
                    let keys: Vec<&str> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .collect();
                    let well_formed =
                        |k: &&str| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
                    if keys.is_empty() || keys.len() > 2 || !keys.iter().all(well_formed) {
                        self.error(
                            "tls.session_ticket_keys",
                            format!(
                                "`{}` must hold one or two keys (current, then previous), each 64 hex digits on a line",
                                file.display()
                            ),
                        );
                    }
                }
            }
        }
        Some(TlsSettings {
            certificates: dir,
            check_interval: match t.certificates_check_interval_seconds {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            session_ticket_keys,
        })
    }

    fn server(&mut self, s: &ServerFile) -> ServerSettings {
        let threads = s.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 || threads > 1024 {
            self.error(
                "server.threads",
                format!("{threads} is out of range (1 to 1024)"),
            );
        }
        ServerSettings {
            threads,
            grace_period: Duration::from_secs(s.grace_period_seconds),
            shutdown_timeout: Duration::from_secs(s.shutdown_timeout_seconds),
            pid_file: s.pid_file.clone(),
            upgrade_sock: s.upgrade_sock.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
address = "127.0.0.1:8080"

[upstream]
servers = ["127.0.0.1:8081"]

[registry]
source = "file:///var/lib/icp-gate/registry.tsv"
"#;

    fn errors(text: &str) -> Vec<String> {
        parse(text, Path::new("/"))
            .expect_err("must be invalid")
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = parse(MINIMAL, Path::new("/")).unwrap();
        assert_eq!(s.listeners[0].require, Requirement::Connected);
        assert_eq!(s.listeners[0].mode, Mode::Enforce);
        assert_eq!(s.listeners[0].name, "127.0.0.1:8080");
        assert_eq!(s.registry.refresh_interval, Duration::from_secs(30));
        assert!(s.admin.is_none());
        assert!(s.log.access_log);
    }

    #[test]
    fn log_files_are_joined_to_the_base_opened_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!(
            "{MINIMAL}\n[log]\naccess_log_file = \"access.log\"\naudit_log = \"{}/audit.log\"\nflush_interval_ms = 50\n",
            dir.path().display()
        );
        let s = parse(&ok, dir.path()).unwrap();
        assert_eq!(s.log.access_log_file, Some(dir.path().join("access.log")));
        assert_eq!(s.log.audit_log, Some(dir.path().join("audit.log")));
        assert_eq!(s.log.access_log_format, AccessLogFormat::Json);
        assert_eq!(s.log.flush_interval, Duration::from_millis(50));
        // Created as the running gate would.
        assert!(dir.path().join("audit.log").is_file());
        let defaults = parse(MINIMAL, dir.path()).unwrap();
        assert_eq!(defaults.log.access_log_file, None);
        assert_eq!(defaults.log.audit_log, None);
        assert_eq!(defaults.log.flush_interval, Duration::from_millis(200));

        let bad = |log: &str| -> Vec<String> {
            parse(&format!("{MINIMAL}\n[log]\n{log}\n"), dir.path())
                .expect_err("must be invalid")
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        };
        let has = |errs: &[String], want: &str| errs.iter().any(|e| e.starts_with(want));
        let e = bad("audit_log = \"no/such/dir/audit.log\"");
        assert!(has(&e, "log.audit_log: cannot open"), "{e:?}");
        let e = bad("access_log_file = \".\"");
        assert!(has(&e, "log.access_log_file: `"), "{e:?}");
        let e = bad("access_log_format = \"text\"");
        assert!(
            has(&e, "log.access_log_format: applies to access_log_file"),
            "{e:?}"
        );
        let e = bad("access_log_format = \"xml\"\naccess_log_file = \"a.log\"");
        assert!(has(&e, "log.access_log_format"), "{e:?}");
        let e = bad("access_log = false\naccess_log_file = \"a.log\"");
        assert!(
            has(&e, "log.access_log_file: is set while access_log = false"),
            "{e:?}"
        );
        let e = bad("audit_log = \"a.log\"\naccess_log_file = \"./a.log\"");
        assert!(has(&e, "log.audit_log: `"), "{e:?}");
        let e = bad("flush_interval_ms = 0");
        assert!(has(&e, "log.flush_interval_ms: 0 is out of range"), "{e:?}");
        let e = bad("flush_interval_ms = 5000");
        assert!(
            has(&e, "log.flush_interval_ms: 5000 is out of range"),
            "{e:?}"
        );
        let text = parse(
            &format!(
                "{MINIMAL}\n[log]\naccess_log_file = \"t.log\"\naccess_log_format = \"text\"\n"
            ),
            dir.path(),
        )
        .unwrap();
        assert_eq!(text.log.access_log_format, AccessLogFormat::Text);
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
[[listener]]
address = "127.0.0.1:8080"
require = "conected"

[[listener]]
address = "localhost"
mode = "enforce"
colour = "blue"

[upstream]
servers = []

[registry]
source = "ftp://example.com/registry.tsv"
refresh_interval_seconds = 0

[admin]
address = "127.0.0.1:8080"

[log]
access_log_sample = 2.0

[block_page.templates]
nonsense = "x.html"

[extra]
"#;
        let errs = errors(text);
        let has = |key: &str| errs.iter().any(|e| e.starts_with(key));
        assert!(
            has("listener[0].require: unknown variant `conected`"),
            "{errs:#?}"
        );
        assert!(
            has("listener[1].colour: unknown field `colour`"),
            "{errs:#?}"
        );
        assert!(
            has("upstream.servers: at least one server is required (listener[0]"),
            "{errs:#?}"
        );
        assert!(has("registry.source: `ftp://"), "{errs:#?}");
        assert!(
            has("registry.refresh_interval_seconds: 0 is out of range"),
            "{errs:#?}"
        );
        assert!(has("log.access_log_sample: 2"), "{errs:#?}");
        assert!(
            has("block_page.templates.nonsense: unknown reason"),
            "{errs:#?}"
        );
        assert!(has("extra: unknown section"), "{errs:#?}");
        assert_eq!(errs.len(), 8, "{errs:#?}");
    }

    #[test]
    fn delta_feed_keys() {
        let s = parse(MINIMAL, Path::new("/")).unwrap();
        assert!(s.registry.delta_source.is_none());
        assert_eq!(s.registry.delta_interval, Duration::from_secs(2));
        let text = format!(
            "{MINIMAL}delta_source = \"http://127.0.0.1:8000/deltas/\"\ndelta_interval_seconds = 0.5\n"
        );
        let s = parse(&text, Path::new("/")).unwrap();
        assert_eq!(
            s.registry.delta_source.unwrap().to_string(),
            "http://127.0.0.1:8000/deltas/"
        );
        assert_eq!(s.registry.delta_interval, Duration::from_millis(500));
        let text = format!("{MINIMAL}delta_source = \"deltas/\"\ndelta_interval_seconds = 0\n");
        let errs = errors(&text);
        assert!(
            errs[0].starts_with("registry.delta_source: `deltas/`"),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("registry.delta_interval_seconds: 0 is out of range"),
            "{errs:#?}"
        );
    }

    #[test]
    fn admin_clash_and_bad_addresses() {
        let text = MINIMAL.replace(
            "[registry]",
            "[admin]\naddress = \"127.0.0.1:8080\"\n[registry]",
        );
        assert_eq!(
            errors(&text),
            ["admin.address: `127.0.0.1:8080` is also a listener address"]
        );
        let text = MINIMAL.replace("127.0.0.1:8081", "origin:80");
        assert_eq!(errors(&text).len(), 1);
        assert!(errors(&text)[0].starts_with("upstream.servers[0]: `origin:80`"));
    }

    #[test]
    fn admin_tokens_sockets_and_hosts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "0123456789abcdef0123\n").unwrap();
        std::fs::write(dir.path().join("short"), "abc\n").unwrap();
        let with_admin = |keys: &str| format!("{MINIMAL}\n[admin]\n{keys}\n");
        let parse_in = |text: &str| parse(text, dir.path());
        let errs_in = |text: &str| -> Vec<String> {
            parse_in(text)
                .expect_err("must be invalid")
                .into_iter()
                .map(|e| e.to_string())
                .collect()
        };

        // Loopback without a token: allowed, and the defaults.
        let s = parse_in(&with_admin("address = \"127.0.0.1:9090\"")).unwrap();
        let a = s.admin.unwrap();
        assert_eq!(
            a.address,
            AdminAddress::Tcp("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(a.require_token, RequireToken::Mutating);
        assert_eq!(a.top_blocked_capacity, 1024);
        assert!(a.token_file.is_none() && a.allowed_hosts.is_empty());
        assert!(parse_in(&with_admin("address = \"[::1]:9090\"")).is_ok());

        // Anything else needs a token, named by its key.
        for address in ["0.0.0.0:9090", "10.0.0.5:9090", "[::]:9090"] {
            let errs = errs_in(&with_admin(&format!("address = \"{address}\"")));
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert!(
                errs[0].starts_with(&format!(
                    "admin.token_file: required: admin.address `{address}` is not a loopback"
                )),
                "{errs:#?}"
            );
        }
        let s = parse_in(&with_admin(
            "address = \"0.0.0.0:9090\"\ntoken_file = \"token\"\nrequire_token = \"all\"\n\
             allowed_hosts = [\"Gate-Admin.Internal.\"]\ntop_blocked_capacity = 64",
        ))
        .unwrap();
        let a = s.admin.unwrap();
        assert_eq!(a.token_file, Some(dir.path().join("token")));
        assert_eq!(a.require_token, RequireToken::All);
        assert_eq!(a.allowed_hosts, ["gate-admin.internal"]);
        assert_eq!(a.top_blocked_capacity, 64);

        // A Unix socket: local, so no token needed; its mode.
        let sock = dir.path().join("admin.sock");
        let s = parse_in(&with_admin(&format!(
            "address = \"unix:{}\"\nsocket_mode = \"0600\"",
            sock.display()
        )))
        .unwrap();
        let a = s.admin.unwrap();
        assert_eq!(a.address, AdminAddress::Unix(sock.clone()));
        assert_eq!(a.socket_mode, 0o600);

        // Every mistake, with its key.
        let errs = errs_in(&with_admin(
            "address = \"127.0.0.1:9090\"\nsocket_mode = \"0600\"\ntoken_file = \"short\"\n\
             allowed_hosts = [\"evil.example:80\", \"10.0.0.1\", \"bad..name\"]\n\
             top_blocked_capacity = 8\nrequire_token = \"everything\"",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].starts_with(
                "admin.require_token: unknown variant `everything`, expected `mutating` or `all`"
            ),
            "{errs:#?}"
        );
        let errs = errs_in(&with_admin(
            "address = \"127.0.0.1:9090\"\nsocket_mode = \"0600\"\ntoken_file = \"short\"\n\
             allowed_hosts = [\"evil.example:80\", \"10.0.0.1\", \"bad..name\"]\n\
             top_blocked_capacity = 8",
        ));
        let has = |prefix: &str| errs.iter().any(|e| e.starts_with(prefix));
        assert!(
            has("admin.socket_mode: `0600`: only applies to a unix: address"),
            "{errs:#?}"
        );
        assert!(has("admin.token_file: `"), "{errs:#?}");
        assert!(
            has("admin.allowed_hosts[0]: `evil.example:80`: a host name, without a port"),
            "{errs:#?}"
        );
        assert!(
            has("admin.allowed_hosts[1]: `10.0.0.1`: IP literals are always allowed"),
            "{errs:#?}"
        );
        assert!(has("admin.allowed_hosts[2]: `bad..name`"), "{errs:#?}");
        assert!(
            has("admin.top_blocked_capacity: 8 is out of range"),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), 6, "{errs:#?}");
        let errs = errs_in(&with_admin(
            "address = \"127.0.0.1:9090\"\nrequire_token = \"all\"",
        ));
        assert_eq!(
            errs,
            ["admin.require_token: \"all\" needs admin.token_file (the token to require)"]
        );
        let errs = errs_in(&with_admin(
            "address = \"unix:/no/such/dir/admin.sock\"\nsocket_mode = \"999\"",
        ));
        assert!(
            has_prefix(
                &errs,
                "admin.address: `unix:/no/such/dir/admin.sock`: the directory"
            ),
            "{errs:#?}"
        );
        assert!(
            has_prefix(&errs, "admin.socket_mode: `999` is not a permission mode"),
            "{errs:#?}"
        );
        let errs = errs_in(&with_admin("address = \"admin.local:9090\""));
        assert!(
            has_prefix(&errs, "admin.address: `admin.local:9090` is neither"),
            "{errs:#?}"
        );
    }

    fn has_prefix(errs: &[String], prefix: &str) -> bool {
        errs.iter().any(|e| e.starts_with(prefix))
    }

    #[test]
    fn missing_sections_and_bad_toml() {
        // [[listener]] and [registry]; [upstream] is only needed by listeners without their own.
        let errs = errors("");
        assert_eq!(errs.len(), 2, "{errs:#?}");
        let errs = errors("[[listener]\naddress = 1");
        assert!(errs[0].contains("not valid TOML (line 1)"), "{errs:#?}");
    }

    #[test]
    fn templates_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page.html"), "<p>{{host}}</p>").unwrap();
        let text = format!("{MINIMAL}\n[block_page.templates]\ndefault = \"page.html\"\n");
        let s = parse(&text, dir.path()).unwrap();
        assert!(s
            .block_page
            .templates
            .iter()
            .all(|t| t.as_deref() == Some("<p>{{host}}</p>")));
        let text = format!("{MINIMAL}\n[block_page.templates]\nunfiled = \"missing.html\"\n");
        let errs = parse(&text, dir.path()).unwrap_err();
        assert_eq!(errs[0].key, "block_page.templates.unfiled");
    }

    #[test]
    fn tls_certificates_relative_to_the_config_and_checked_by_dash_t() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        let certs_dir = dir.path().join("certs");
        let config = dir.path().join("icp-gate.toml");
        std::fs::write(
            &config,
            format!("{MINIMAL}\n[tls]\ncertificates = \"certs\"\n"),
        )
        .unwrap();
        // Empty: valid, and the default interval.
        let s = check_file(&config).unwrap();
        let tls = s.tls.unwrap();
        assert_eq!(tls.certificates, certs_dir);
        assert_eq!(tls.check_interval, Some(Duration::from_secs(5)));
        assert!(parse(MINIMAL, Path::new("/")).unwrap().tls.is_none());

        certs::testing::write_pair(&certs_dir, "good", &["example.com"], (2099, 1, 1));
        certs::testing::write_pair(&certs_dir, "old", &["old.example.com"], (2021, 1, 1));
        std::fs::write(certs_dir.join("half.crt"), "x").unwrap();
        // Loading (a start) takes the directory as it is; -t names every bad file.
        assert!(load_file(&config).is_ok());
        let e = check_file(&config).unwrap_err();
        let errs: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
        let path = |f: &str| certs_dir.join(f).display().to_string();
        assert_eq!(
            errs,
            [
                format!(
                    "tls.certificates: {} (missing_pair): no `half.key` beside it",
                    path("half.crt")
                ),
                format!(
                    "tls.certificates: {} (expired): expired at 2021-01-01T00:00:00Z",
                    path("old.crt")
                ),
            ]
        );

        // An unreadable directory stops a start too; bad keys are named.
        let errs = errors(&format!(
            "{MINIMAL}\n[tls]\ncertificates = \"/nonexistent/certs\"\ncertificates_check_interval_seconds = 4000\nport = 1\n"
        ));
        assert_eq!(
            errs,
            ["tls.port: unknown field `port`, expected one of `certificates`, `certificates_check_interval_seconds`, `session_ticket_keys`"]
        );
        let errs = errors(&format!(
            "{MINIMAL}\n[tls]\ncertificates = \"/nonexistent/certs\"\ncertificates_check_interval_seconds = 4000\n"
        ));
        assert_eq!(errs.len(), 2, "{errs:#?}");
        // A session ticket key file that is not one or two 64-hex-digit keys.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys"), "abc\n").unwrap();
        let key_errs = parse(
            &format!("{MINIMAL}\n[tls]\ncertificates = \".\"\nsession_ticket_keys = \"keys\"\n"),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(key_errs.len(), 1, "{key_errs:#?}");
        assert_eq!(key_errs[0].key, "tls.session_ticket_keys");
        std::fs::write(dir.path().join("keys"), format!("{}\n", "ab".repeat(32))).unwrap();
        let s = parse(
            &format!("{MINIMAL}\n[tls]\ncertificates = \".\"\nsession_ticket_keys = \"keys\"\n"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            s.tls.unwrap().session_ticket_keys,
            Some(dir.path().join("keys"))
        );
        assert_eq!(
            errs[0],
            "tls.certificates_check_interval_seconds: 4000 is out of range (0 to 3600)"
        );
        assert!(
            errs[1]
                .starts_with("tls.certificates: cannot read the directory `/nonexistent/certs`: "),
            "{errs:#?}"
        );
        let s = parse(
            &format!("{MINIMAL}\n[tls]\ncertificates = \"{}\"\ncertificates_check_interval_seconds = 0\n", certs_dir.display()),
            Path::new("/elsewhere"),
        )
        .unwrap();
        assert_eq!(s.tls.unwrap().check_interval, None);
    }

    #[test]
    fn tls_listeners_and_where_listeners_forward() {
        let text = r#"
[[listener]]
address = "127.0.0.1:8443"
protocol = "tls"
upstream = ["127.0.0.1:9443", "127.0.0.1:9444"]
refuse = "reset"
client_hello_timeout_seconds = 3
tunnel_idle_timeout_seconds = 30
max_connections = 100

[[listener]]
address = "0.0.0.0:80"
upstream = "original_destination"
original_destination_allow = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
transparent = true

[registry]
source = "file:///r.tsv"
"#;
        let s = parse(text, Path::new("/")).unwrap();
        let tls = &s.listeners[0];
        assert_eq!(tls.protocol, Protocol::Tls);
        assert_eq!(tls.refuse, Refuse::Reset);
        assert_eq!(tls.client_hello_timeout, Duration::from_secs(3));
        assert_eq!(tls.tunnel_idle_timeout, Duration::from_secs(30));
        assert_eq!(tls.max_connections, 100);
        assert_eq!(
            tls.upstream,
            Upstream::Servers(vec![
                "127.0.0.1:9443".parse().unwrap(),
                "127.0.0.1:9444".parse().unwrap()
            ])
        );
        let http = &s.listeners[1];
        assert_eq!(http.protocol, Protocol::Http);
        assert!(http.transparent);
        let Upstream::OriginalDestination { allow } = &http.upstream else {
            panic!("{:?}", http.upstream)
        };
        assert_eq!(allow.len(), 3);
        assert!(allow[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(!allow[1].contains(&"192.0.2.8".parse::<std::net::IpAddr>().unwrap()));
        // Defaults of a tls listener.
        let s = parse(
            &MINIMAL.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\nprotocol = \"tls\"",
            ),
            Path::new("/"),
        )
        .unwrap();
        let l = &s.listeners[0];
        assert_eq!(l.refuse, Refuse::Alert);
        assert_eq!(l.client_hello_timeout, Duration::from_secs(10));
        assert_eq!(
            l.upstream,
            Upstream::Servers(vec!["127.0.0.1:8081".parse().unwrap()])
        );
    }

    #[test]
    fn tls_keys_are_refused_where_they_do_not_apply_and_bad_values_named() {
        let errs = errors(
            r#"
[[listener]]
address = "127.0.0.1:8080"
refuse = "alert"
client_hello_timeout_seconds = 5
upstream = "original-destination"

[[listener]]
address = "127.0.0.1:8443"
protocol = "tls"
client_hello_timeout_seconds = 0
upstream = ["localhost:443", 7]
original_destination_allow = ["10.0.0.0/8"]

[[listener]]
address = "127.0.0.1:8444"
protocol = "tls"
upstream = "original_destination"
original_destination_allow = ["10.0.0.0/33"]
max_connections = 0

[registry]
source = "file:///r.tsv"
"#,
        );
        let has = |key: &str| errs.iter().any(|e| e.starts_with(key));
        for key in [
            "listener[0].refuse: only applies to a listener with protocol = \"tls\"",
            "listener[0].client_hello_timeout_seconds: only applies",
            "listener[0].upstream: `original-destination` is neither",
            "listener[1].client_hello_timeout_seconds: 0 is out of range",
            "listener[1].upstream[0]: `localhost:443` is not an IP:port",
            "listener[1].upstream[1]: must be a string",
            "listener[1].original_destination_allow: only applies with upstream = \"original_destination\"",
            "listener[2].original_destination_allow[0]: `10.0.0.0/33` is not an IP prefix",
            "listener[2].max_connections: 0 is out of range",
        ] {
            assert!(has(key), "{key} missing from {errs:#?}");
        }
        assert_eq!(errs.len(), 9, "{errs:#?}");
        // upstream_tls is for tls listeners; a CA file must exist.
        let text = MINIMAL
            .replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\nupstream_tls = true",
            )
            .replace(
                "[upstream]\n",
                "[upstream]\nca_file = \"/nonexistent/ca.pem\"\n",
            );
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("upstream.ca_file: cannot read")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("listener[0].upstream_tls: only applies")),
            "{errs:#?}"
        );
        // No [upstream] and a listener without its own: named.
        let errs = errors(
            "[[listener]]\naddress = \"127.0.0.1:80\"\n[[listener]]\naddress = \"127.0.0.1:81\"\nupstream = [\"127.0.0.1:1\"]\n[registry]\nsource = \"file:///r\"\n",
        );
        assert_eq!(
            errs,
            ["upstream.servers: at least one server is required (listener[0] has no upstream of its own)"]
        );
        // A listener forwarding to the gate itself.
        let errs = errors(&MINIMAL.replace("127.0.0.1:8081", "127.0.0.1:8080"));
        assert_eq!(
            errs,
            ["listener[0].upstream: `127.0.0.1:8080` is an address this gate listens on: forwarding there would loop"]
        );
    }
}
