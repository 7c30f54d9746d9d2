//! The configuration file as users write it. Every struct rejects unknown keys; defaults live
//! here so that `docs/config.md` and the code agree in one place. Nothing here is used by the
//! running gate directly: `Settings` (validated) is.

use serde::Deserialize;

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub address: String,
    /// Used as the `listener` metric label; defaults to the address.
    pub name: Option<String>,
    #[serde(default = "default_require")]
    pub require: RequireFile,
    #[serde(default = "default_mode")]
    pub mode: ModeFile,
    /// Per-connection write buffer: an answer up to this size (head and body) leaves in one
    /// write. The built-in block page is about 2.8 KiB.
    #[serde(default = "default_write_buffer")]
    pub write_buffer_bytes: usize,
    /// How long an idle keep-alive connection waits for its next request; 0 turns keep-alive
    /// off (one request per connection).
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_seconds: u64,
    /// Requests served on one connection before the gate closes it.
    #[serde(default = "default_max_requests")]
    pub max_requests_per_connection: u32,
    /// How long a client may take to send a whole request head, counted from its first byte
    /// (from the accept for a connection's first request): the slowloris limit.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: u64,
    /// The largest request head (request line and headers) accepted; larger ones get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// `http` (decide each request on its Host) or `tls` (decide each connection on the SNI of
    /// its ClientHello, then pass it through or refuse it).
    #[serde(default = "default_protocol")]
    pub protocol: ProtocolFile,
    /// Where this listener forwards: a list of `host:port` servers, or the string
    /// `"original_destination"`. Default: `[upstream].servers`. Validated by hand (two shapes).
    pub upstream: Option<toml::Value>,
    /// With `upstream = "original_destination"`: the destinations the gate may forward to, as
    /// CIDR prefixes (default: any but the gate's own listening addresses).
    pub original_destination_allow: Option<Vec<String>>,
    /// TPROXY: the listening socket gets `IP_TRANSPARENT`, and a connection's local address is
    /// the address the client sent it to.
    #[serde(default)]
    pub transparent: bool,
    /// `tls` listeners: how a refused connection ends, with the `unrecognized_name` alert or a
    /// TCP reset.
    pub refuse: Option<RefuseFile>,
    /// `tls` listeners: how long a client may take to send its whole ClientHello.
    pub client_hello_timeout_seconds: Option<u64>,
    /// `tls` listeners: a passed-through connection with no byte either way for this long is
    /// closed.
    pub tunnel_idle_timeout_seconds: Option<u64>,
    /// `tls` listeners: requests on connections the gate terminated go to the upstream over TLS
    /// (the request's Host as SNI, verified against the system roots or `[upstream] ca_file`)
    /// instead of cleartext HTTP/1.1.
    #[serde(default)]
    pub upstream_tls: bool,
    /// Connections this listener holds open at once; past it, new ones are closed at accept and
    /// counted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    65_536
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolFile {
    Http,
    Tls,
}

fn default_protocol() -> ProtocolFile {
    ProtocolFile::Http
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefuseFile {
    Alert,
    Reset,
}

fn default_header_read_timeout() -> u64 {
    15
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_keepalive_timeout() -> u64 {
    60
}
fn default_max_requests() -> u32 {
    1000
}

fn default_write_buffer() -> usize {
    8 * 1024
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequireFile {
    Connected,
    Filed,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModeFile {
    Enforce,
    Monitor,
}

fn default_require() -> RequireFile {
    RequireFile::Connected
}
fn default_mode() -> ModeFile {
    ModeFile::Enforce
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// Every listener's default origin servers; may be left out when every listener has its
    /// own `upstream`.
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: f64,
    #[serde(default = "default_read_timeout")]
    pub read_timeout_seconds: f64,
    #[serde(default = "default_upstream_idle")]
    pub idle_timeout_seconds: f64,
    #[serde(default = "default_pool_size")]
    pub keepalive_pool_size: usize,
    /// PEM file of the certificate authorities an upstream's TLS certificate is verified
    /// against (`upstream_tls`); default: the system's roots.
    pub ca_file: Option<String>,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile {
            servers: Vec::new(),
            connect_timeout_seconds: default_connect_timeout(),
            read_timeout_seconds: default_read_timeout(),
            idle_timeout_seconds: default_upstream_idle(),
            keepalive_pool_size: default_pool_size(),
            ca_file: None,
        }
    }
}

fn default_connect_timeout() -> f64 {
    3.0
}
fn default_read_timeout() -> f64 {
    60.0
}
fn default_upstream_idle() -> f64 {
    60.0
}
fn default_pool_size() -> usize {
    256
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    pub source: String,
    #[serde(default = "default_refresh")]
    pub refresh_interval_seconds: u64,
    pub state_dir: Option<String>,
    /// Refuse a snapshot that loses more than this percentage of the entries in service;
    /// 100 turns the check off.
    #[serde(default = "default_max_shrink")]
    pub max_shrink_percent: f64,
    /// Refuse a snapshot whose text (after decompression) passes this many bytes.
    #[serde(default = "default_max_snapshot_bytes")]
    pub max_snapshot_bytes: u64,
    /// Hosts that must decide a given way before a snapshot is accepted.
    #[serde(default)]
    pub canary: Vec<CanaryFile>,
    /// http(s) sources: time to connect.
    #[serde(default = "default_connect_timeout_registry")]
    pub connect_timeout_seconds: f64,
    /// http(s) sources: the whole fetch, body included.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_seconds: f64,
    /// http(s) sources: further tries after a failed fetch (backoff with jitter).
    #[serde(default = "default_fetch_retries")]
    pub fetch_retries: u32,
    /// Prefix of the delta feed (`file://` or `http(s)://`); the serial in service is appended.
    pub delta_source: Option<String>,
    /// Pause between two polls of the delta feed.
    #[serde(default = "default_delta_interval")]
    pub delta_interval_seconds: f64,
}

fn default_delta_interval() -> f64 {
    2.0
}

fn default_connect_timeout_registry() -> f64 {
    5.0
}
fn default_fetch_timeout() -> f64 {
    300.0
}
fn default_fetch_retries() -> u32 {
    2
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CanaryFile {
    pub host: String,
    /// `allowed`, or the block reason expected (`unfiled`, `unconnected`, `revoked`, `denied`,
    /// `ip_unfiled`).
    pub expect: String,
    #[serde(default = "default_require")]
    pub require: RequireFile,
}

fn default_max_shrink() -> f64 {
    10.0
}
fn default_max_snapshot_bytes() -> u64 {
    4 << 30
}

fn default_refresh() -> u64 {
    30
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// `IP:port`, or `unix:/absolute/path` for a Unix socket.
    pub address: String,
    /// A Unix socket's permission bits, as octal digits in a string (`"0660"`).
    pub socket_mode: Option<String>,
    /// File holding the bearer token (`Authorization: Bearer ...`); relative to the
    /// configuration file's directory.
    pub token_file: Option<String>,
    /// Which endpoints need the token: `mutating` (`POST /sync`) or `all` (every endpoint but
    /// `/healthz` and `/readyz`).
    #[serde(default = "default_require_token")]
    pub require_token: RequireTokenFile,
    /// Host names (besides IP literals and `localhost`) the admin listener answers to.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Keys each `/top/blocked` summary holds (per view and worker thread).
    #[serde(default = "default_top_blocked_capacity")]
    pub top_blocked_capacity: usize,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequireTokenFile {
    Mutating,
    All,
}

fn default_require_token() -> RequireTokenFile {
    RequireTokenFile::Mutating
}

fn default_top_blocked_capacity() -> usize {
    1024
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default = "default_format")]
    pub format: LogFormatFile,
    /// Write an access line per request.
    #[serde(default = "default_true")]
    pub access_log: bool,
    /// Fraction of requests (0.0 to 1.0) that get an access line.
    #[serde(default = "default_sample")]
    pub access_log_sample: f64,
    /// Write access lines to this file (buffered) instead of standard error.
    pub access_log_file: Option<String>,
    /// The form of the lines in `access_log_file`.
    pub access_log_format: Option<AccessLogFormatFile>,
    /// One JSON line per blocked or monitored decision, to this file.
    pub audit_log: Option<String>,
    /// How long a line may wait in memory before it is written to its file.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            level: default_level(),
            format: default_format(),
            access_log: true,
            access_log_sample: default_sample(),
            access_log_file: None,
            access_log_format: None,
            audit_log: None,
            flush_interval_ms: default_flush_interval_ms(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormatFile {
    Text,
    Json,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormatFile {
    Json,
    Text,
}

fn default_flush_interval_ms() -> u64 {
    200
}
fn default_level() -> String {
    "info".into()
}
fn default_format() -> LogFormatFile {
    LogFormatFile::Text
}
fn default_true() -> bool {
    true
}
fn default_sample() -> f64 {
    1.0
}

#[derive(Debug, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct BlockPageFile {
    /// HTML templates replacing the built-in page, per block reason (`unfiled`, `unconnected`,
    /// `revoked`, `denied`, `ip_unfiled`, `invalid_host`) or `default` for any reason without
    /// its own.
    #[serde(default)]
    pub templates: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Worker threads for each listener.
    pub threads: Option<usize>,
    /// After SIGTERM the listeners stop accepting at once; requests already in flight get this
    /// long to finish before the runtimes are told to stop.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// After the grace period: how long the runtimes get to stop before the process exits.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u64,
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// Socket through which a new process takes over the listeners (graceful upgrade).
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
}

impl Default for ServerFile {
    fn default() -> Self {
        ServerFile {
            threads: None,
            grace_period_seconds: default_grace(),
            shutdown_timeout_seconds: default_shutdown_timeout(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
        }
    }
}

fn default_grace() -> u64 {
    5
}
fn default_shutdown_timeout() -> u64 {
    5
}
fn default_pid_file() -> String {
    "/tmp/icp-gate.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/icp-gate-upgrade.sock".into()
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// Directory of `NAME.crt` (PEM chain) + `NAME.key` (PEM key) pairs the gate terminates
    /// TLS with; relative to the configuration file's directory.
    pub certificates: String,
    /// How often the directory is looked at for changes (names, sizes, modification times);
    /// 0: only on SIGHUP.
    #[serde(default = "default_certificates_check_interval")]
    pub certificates_check_interval_seconds: u64,
    /// File of session ticket keys shared by a fleet: the current key, then optionally the
    /// previous one, each 64 hex digits on a line. Unset: keys of this process only.
    pub session_ticket_keys: Option<String>,
}

fn default_certificates_check_interval() -> u64 {
    5
}
