//! Keel's configuration: etcd 3.5.16's command-line flags, their `ETCD_*` environment variables
//! and the `--config-file` YAML, with etcd's names, defaults, precedence and validation messages.
//!
//! Precedence mirrors etcd 3.5's `etcdmain`: a flag given on the command line beats its
//! environment variable, which beats the default. When a config file is named (`--config-file`,
//! or `ETCD_CONFIG_FILE` when that flag is absent), etcd builds its configuration from the file
//! alone and ignores every other flag and environment variable; the command line is still parsed,
//! so a misspelt flag is an error even then. Keel does the same, with one exception: its own
//! `--storage-engine` (env `KEEL_STORAGE_ENGINE`) still applies, since etcd's files cannot name it.
//!
//! The client-side TLS flags (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`,
//! `--cipher-suites`, `--tls-min-version`, `--tls-max-version`, and the YAML
//! `client-transport-security:` block) are read into [`TlsSettings`]; `api/tls.rs` builds them.
//! The peer side (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
//! `--peer-client-cert-auth`, the YAML `peer-transport-security:` block) fills a second
//! [`TlsSettings`] the same way, sharing the cipher suites and TLS versions as etcd does.
//! The etcd flags Keel does not act on (discovery, tuning knobs...) are accepted in
//! every shape etcd accepts and each produces one warning; a flag name etcd 3.5.16 does not know
//! is an error. Environment variables are read from a map handed in rather than through clap's
//! `env` support, so tests can supply them and error messages can name the variable at fault.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};
use serde_yaml_ng::Value as Yaml;

/// The etcd release whose API, flags and behaviour Keel follows.
pub const ETCD_API_VERSION: &str = "3.5.16";
/// The cluster version such a member reports (`/version`'s `etcdcluster`, the snapshot's
/// `clusterVersion`): major.minor.0.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

// clap prints "keel <this>", so the second line of `--version` rides along in the version string.
const VERSION_TEXT: &str = concat!(env!("CARGO_PKG_VERSION"), "\netcd API version: 3.5.16");

const DEFAULT_NAME: &str = "default";
const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
const DEFAULT_PEER_URL: &str = "http://localhost:2380";
const DEFAULT_CLUSTER_TOKEN: &str = "etcd-cluster";
const DEFAULT_MAX_REQUEST_BYTES: u64 = 1572864;
const DEFAULT_MAX_TXN_OPS: u64 = 128;
const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd's `DefaultSnapshotCatchUpEntries`.
const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES: u64 = 5000;
const DEFAULT_HEARTBEAT_MS: u64 = 100;
const DEFAULT_ELECTION_MS: u64 = 1000;
const DEFAULT_PROGRESS_NOTIFY: Duration = Duration::from_secs(10 * 60);
/// etcd's `DefaultQuotaBytes`, used when `--quota-backend-bytes` is 0.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
// etcd warns above this quota (its `MaxQuotaBytes`) but still starts.
const MAX_RECOMMENDED_QUOTA_BYTES: i64 = 8 * 1024 * 1024 * 1024;
// etcd warns above this request size (its `recommendedMaxRequestBytes`) but still starts.
const RECOMMENDED_MAX_REQUEST_BYTES: u64 = 10 * 1024 * 1024;
// gRPC (Go's and prost's alike) cannot carry messages of 2 GiB or more, overhead included.
const MAX_REQUEST_BYTES_LIMIT: u64 = i32::MAX as u64 - GRPC_OVERHEAD_BYTES;
// etcd's `maxElectionMs`.
const MAX_ELECTION_MS: u64 = 50_000;
/// Headroom etcd adds on top of `--max-request-bytes` for the gRPC receive limit.
const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;

const STORAGE_ENGINE_FLAG: &str = "storage-engine";
const CONFIG_FILE_FLAG: &str = "config-file";

/// Whether an etcd flag takes a value (`--flag v`, `--flag=v`) or is a Go boolean flag (`--flag`,
/// `--flag=false`; with Go's flag package `--flag false` leaves `false` as a stray argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagArity {
    Value,
    Bool,
}

/// Every flag etcd 3.5.16 accepts that Keel does not act on (apart from [`CLIENT_TLS_FLAGS`]), checked against `etcd --help` and by
/// probing the real binary. The `cluster-*`, `config`, `force`, `peer-*-interval`,
/// `retry-interval`, `snapshot`, `v`, `vv` and `test.*` entries are etcd's own legacy flags,
/// which etcd itself accepts and ignores.
pub const IGNORED_ETCD_FLAGS: &[(&str, FlagArity)] = {
    use FlagArity::{Bool, Value};
    &[
        ("auto-tls", Bool),
        ("backend-batch-interval", Value),
        ("backend-batch-limit", Value),
        ("backend-bbolt-freelist-type", Value),
        ("cert-file", Value),
        ("cipher-suites", Value),
        ("client-cert-allowed-hostname", Value),
        ("client-cert-auth", Bool),
        ("client-cert-file", Value),
        ("client-crl-file", Value),
        ("client-key-file", Value),
        ("cluster-active-size", Bool),
        ("cluster-remove-delay", Bool),
        ("cluster-sync-interval", Bool),
        ("config", Bool),
        ("cors", Value),
        ("discovery", Value),
        ("discovery-fallback", Value),
        ("discovery-proxy", Value),
        ("discovery-srv", Value),
        ("discovery-srv-name", Value),
        ("enable-grpc-gateway", Bool),
        ("enable-log-rotation", Bool),
        ("enable-pprof", Bool),
        ("enable-v2", Bool),
        ("experimental-bootstrap-defrag-threshold-megabytes", Value),
        ("experimental-compact-hash-check-enabled", Bool),
        ("experimental-compact-hash-check-time", Value),
        ("experimental-compaction-batch-limit", Value),
        ("experimental-compaction-sleep-interval", Value),
        ("experimental-corrupt-check-time", Value),
        ("experimental-distributed-tracing-address", Value),
        ("experimental-distributed-tracing-instance-id", Value),
        ("experimental-distributed-tracing-sampling-rate", Value),
        ("experimental-distributed-tracing-service-name", Value),
        ("experimental-downgrade-check-time", Value),
        ("experimental-enable-distributed-tracing", Bool),
        ("experimental-enable-lease-checkpoint", Bool),
        ("experimental-enable-lease-checkpoint-persist", Bool),
        ("experimental-enable-v2v3", Value),
        ("experimental-initial-corrupt-check", Bool),
        ("experimental-memory-mlock", Bool),
        ("experimental-peer-skip-client-san-verification", Bool),
        ("experimental-stop-grpc-service-on-defrag", Bool),
        ("experimental-txn-mode-write-with-shared-buffer", Bool),
        ("experimental-warning-apply-duration", Value),
        ("force", Bool),
        ("force-new-cluster", Bool),
        ("grpc-keepalive-interval", Value),
        ("grpc-keepalive-min-time", Value),
        ("grpc-keepalive-timeout", Value),
        ("host-whitelist", Value),
        ("initial-election-tick-advance", Bool),
        ("key-file", Value),
        ("listen-client-http-urls", Value),
        ("log-outputs", Value),
        ("log-rotation-config-json", Value),
        ("max-concurrent-streams", Value),
        ("max-result-buffer", Bool),
        ("max-retry-attempts", Bool),
        ("max-snapshots", Value),
        ("max-wals", Value),
        ("metrics", Value),
        ("peer-auto-tls", Bool),
        ("peer-cert-allowed-cn", Value),
        ("peer-cert-allowed-hostname", Value),
        ("peer-cert-file", Value),
        ("peer-client-cert-auth", Bool),
        ("peer-client-cert-file", Value),
        ("peer-client-key-file", Value),
        ("peer-crl-file", Value),
        ("peer-election-timeout", Bool),
        ("peer-heartbeat-interval", Bool),
        ("peer-key-file", Value),
        ("peer-trusted-ca-file", Value),
        ("pre-vote", Bool),
        ("proxy", Value),
        ("proxy-dial-timeout", Value),
        ("proxy-failure-wait", Value),
        ("proxy-read-timeout", Value),
        ("proxy-refresh-interval", Value),
        ("proxy-write-timeout", Value),
        ("raft-read-timeout", Value),
        ("raft-write-timeout", Value),
        ("retry-interval", Bool),
        ("self-signed-cert-validity", Value),
        ("snapshot", Bool),
        ("socket-reuse-address", Bool),
        ("socket-reuse-port", Bool),
        ("strict-reconfig-check", Bool),
        ("test.coverprofile", Bool),
        ("test.outputdir", Bool),
        ("tls-max-version", Value),
        ("tls-min-version", Value),
        ("trusted-ca-file", Value),
        ("unsafe-no-fsync", Bool),
        ("v", Bool),
        ("v2-deprecation", Value),
        ("vv", Bool),
        ("wal-dir", Value),
    ]
};

/// The entries of [`IGNORED_ETCD_FLAGS`] that Keel does act on: parsed in the same Go shapes, but
/// read into [`Config::client_tls`] instead of being warned about.
pub const CLIENT_TLS_FLAGS: &[&str] = &[
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
];

/// The peer TLS flags Keel acts on: [`CLIENT_TLS_FLAGS`]' first four with etcd's `peer-` prefix
/// (the cipher suites and TLS versions are shared by both sides, as in etcd).
pub const PEER_TLS_FLAGS: &[&str] =
    &["peer-cert-file", "peer-key-file", "peer-trusted-ca-file", "peer-client-cert-auth"];

/// `--help` lines for [`PEER_TLS_FLAGS`], in the same order.
const PEER_TLS_HELP: &[&str] = &[
    "Path to the peer server TLS cert file (PEM); also presented as this member's client certificate",
    "Path to the peer server TLS key file (PEM)",
    "Path to the peer server TLS trusted CA file; peer certificates are then required and verified",
    "Require and verify peer client certificates against --peer-trusted-ca-file",
];

/// `--help` lines for [`CLIENT_TLS_FLAGS`], in the same order.
const CLIENT_TLS_HELP: &[&str] = &[
    "Path to the client server TLS cert file (PEM)",
    "Path to the client server TLS key file (PEM)",
    "Path to the client server TLS trusted CA cert file; client certificates are then required",
    "Require and verify client certificates against --trusted-ca-file",
    "Comma-separated list of TLS 1.2 cipher suites, by Go name (default: all rustls supports)",
    "Minimum TLS version: TLS1.2 or TLS1.3",
    "Maximum TLS version: TLS1.2 or TLS1.3",
];

/// The keys etcd reads inside the YAML `client-transport-security:` block that Keel acts on.
const YAML_TLS_BLOCK_KEYS: &[&str] = &["cert-file", "key-file", "trusted-ca-file", "client-cert-auth"];

/// Config-file keys of etcd 3.5.16 that are not flag names (nested TLS and socket sections, and a
/// key spelt differently from its flag); accepted and ignored like the flags above.
const IGNORED_YAML_ONLY_KEYS: &[&str] = &["socket-options", "experimental-snapshot-catch-up-entries"];

/// How a Keel-understood value is written, which decides how a YAML value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Urls,
    Uint,
    Int,
    Duration,
}

struct KeelFlag {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
}

const fn flag(name: &'static str, kind: Kind, default: &'static str, help: &'static str) -> KeelFlag {
    KeelFlag { name, kind, default, help }
}

/// The flags Keel acts on, in `--help` order.
const KEEL_FLAGS: &[KeelFlag] = &[
    flag(
        CONFIG_FILE_FLAG,
        Kind::Str,
        "",
        "YAML configuration file with etcd's keys; when given, other flags and \
         environment variables are ignored",
    ),
    flag("name", Kind::Str, DEFAULT_NAME, "Human-readable name for this member"),
    flag("data-dir", Kind::Str, "${name}.etcd", "Path to the data directory"),
    flag("listen-client-urls", Kind::Urls, DEFAULT_CLIENT_URL, "Comma-separated URLs to listen on for client traffic"),
    flag(
        "advertise-client-urls",
        Kind::Urls,
        DEFAULT_CLIENT_URL,
        "Comma-separated client URLs of this member advertised to the cluster",
    ),
    flag("listen-peer-urls", Kind::Urls, DEFAULT_PEER_URL, "Comma-separated URLs to listen on for peer traffic"),
    flag(
        "listen-metrics-urls",
        Kind::Urls,
        "",
        "Comma-separated URLs to additionally listen on for /metrics and /health (HTTP only)",
    ),
    flag(
        "initial-advertise-peer-urls",
        Kind::Urls,
        DEFAULT_PEER_URL,
        "Comma-separated peer URLs of this member advertised to the cluster",
    ),
    flag(
        "initial-cluster",
        Kind::Str,
        "${name}=${initial-advertise-peer-urls}",
        "Initial cluster configuration for bootstrapping (name=url,...)",
    ),
    flag("initial-cluster-state", Kind::Str, "new", "Initial cluster state: new or existing"),
    flag(
        "initial-cluster-token",
        Kind::Str,
        DEFAULT_CLUSTER_TOKEN,
        "Initial cluster token for the cluster during bootstrap",
    ),
    flag("max-request-bytes", Kind::Uint, "1572864", "Maximum client request size in bytes the server will accept"),
    flag("max-txn-ops", Kind::Uint, "128", "Maximum number of operations permitted in a transaction"),
    flag(
        "quota-backend-bytes",
        Kind::Int,
        "0",
        "Raise an alarm when the backend exceeds this size (0 means 2 GiB, negative \
         disables the quota)",
    ),
    flag("snapshot-count", Kind::Uint, "100000", "Number of committed entries that triggers a snapshot"),
    flag(
        "experimental-snapshot-catchup-entries",
        Kind::Uint,
        "5000",
        "Number of entries for a slow follower to catch-up after compacting the raft storage entries",
    ),
    flag("heartbeat-interval", Kind::Uint, "100", "Time (in milliseconds) of a heartbeat interval"),
    flag("election-timeout", Kind::Uint, "1000", "Time (in milliseconds) for an election to time out"),
    flag("log-level", Kind::Str, "info", "Log level: debug, info, warn or error"),
    flag("logger", Kind::Str, "zap", "Logger; only 'zap' (structured logging) is meaningful"),
    flag(
        "auto-compaction-mode",
        Kind::Str,
        "periodic",
        "How to read --auto-compaction-retention: periodic or revision",
    ),
    flag(
        "auto-compaction-retention",
        Kind::Str,
        "0",
        "Auto compaction retention: a duration such as 1h or 5m30s (a bare number means \
         hours) in periodic mode, a revision count in revision mode; 0 disables it",
    ),
    flag(
        "experimental-watch-progress-notify-interval",
        Kind::Duration,
        "10m",
        "Interval of periodic watch progress notifications",
    ),
    flag(STORAGE_ENGINE_FLAG, Kind::Str, "redb", "Keel's storage engine: redb or sled"),
    flag(
        "auth-token",
        Kind::Str,
        "simple",
        "Auth token type: 'simple' or 'jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG,ttl=DURATION'",
    ),
    flag("auth-token-ttl", Kind::Uint, "300", "Time (in seconds) of the auth-token-ttl (simple tokens)"),
    flag("bcrypt-cost", Kind::Uint, "10", "Input cost for bcrypt hashing of passwords (4 to 31)"),
];

/// Errors from reading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A command-line error found by clap, or a request to show `--help` / `--version`.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("bad flag syntax: {0}")]
    BadFlagSyntax(String),
    #[error("'{0}' is not a valid flag")]
    NotAFlag(String),
    #[error("'{0}' is not supported: keel implements the etcd server only, not etcd's gateway or grpc-proxy")]
    UnsupportedCommand(String),
    #[error("command-line argument {0:?} is not valid UTF-8")]
    NonUtf8Argument(String),
    #[error("invalid value {value:?} for {origin}: {reason}")]
    InvalidValue { origin: String, value: String, reason: String },
    #[error("cannot read config file {path}: {source}")]
    ReadConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {reason}")]
    BadConfigFile { path: String, reason: String },
    /// A value that is well-formed but not acceptable, worded as etcd words it.
    #[error("{0}")]
    Invalid(String),
}

/// Why a URL is not one Keel can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL scheme must be http or https: {0}")]
    Scheme(String),
    #[error("unix socket URLs are not supported by keel: {0}")]
    UnixSocket(String),
    #[error("URL address does not have the form \"host:port\": {0}")]
    HostPort(String),
    #[error("URL port must be a number from 0 to 65535: {0}")]
    Port(String),
    #[error("URL must not contain a path: {0}")]
    Path(String),
}

/// A Go duration string that could not be read; worded like Go's `time.ParseDuration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time: {0}")]
pub struct DurationError(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UrlScheme {
    Http,
    Https,
}

/// An etcd member URL: `http(s)://host:port`, with no path. The host is kept as written (without
/// IPv6 brackets) because advertised URLs are compared and shown as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EtcdUrl {
    scheme: UrlScheme,
    host: String,
    port: u16,
}

impl EtcdUrl {
    /// Reads one URL with the rules of etcd's `types.NewURLs`, minus unix sockets.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let text = raw.trim();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(UrlError::Scheme(text.to_string()));
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => UrlScheme::Http,
            "https" => UrlScheme::Https,
            "unix" | "unixs" => return Err(UrlError::UnixSocket(text.to_string())),
            _ => return Err(UrlError::Scheme(text.to_string())),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if !tail.is_empty() {
            return Err(UrlError::Path(text.to_string()));
        }
        if authority.contains('@') {
            return Err(UrlError::HostPort(text.to_string()));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(UrlError::HostPort(text.to_string()));
            };
            let Some(port) = after.strip_prefix(':') else {
                return Err(UrlError::HostPort(text.to_string()));
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) if !host.contains(':') => (host, port),
                _ => return Err(UrlError::HostPort(text.to_string())),
            }
        };
        let port = port.parse::<u16>().map_err(|_| UrlError::Port(text.to_string()))?;
        Ok(EtcdUrl { scheme, host: host.to_string(), port })
    }

    pub fn scheme(&self) -> UrlScheme {
        self.scheme
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_tls(&self) -> bool {
        self.scheme == UrlScheme::Https
    }

    /// The address to bind: the host must be an IP literal or `localhost` (127.0.0.1), which is
    /// what etcd requires of listen URLs; any other host gives `None`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip = if self.host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.host.parse::<IpAddr>().ok()?
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for EtcdUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            UrlScheme::Http => "http",
            UrlScheme::Https => "https",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for EtcdUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EtcdUrl::parse(s)
    }
}

/// One `name=url` group of `--initial-cluster`; a name listed twice gathers both URLs, as in etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMember {
    pub name: String,
    pub peer_urls: Vec<EtcdUrl>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The level's name as `tracing`'s env-filter spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logger {
    Zap,
    /// Removed from etcd in 3.5; Keel accepts it with a warning and logs as with zap.
    Capnslog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompactionMode {
    Periodic,
    Revision,
}

/// What the auto-compactor should keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history (etcd's periodic compactor).
    Periodic(Duration),
    /// Keep this many revisions (etcd's revision compactor).
    Revision(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageEngine {
    Redb,
    Sled,
}

impl StorageEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageEngine::Redb => "redb",
            StorageEngine::Sled => "sled",
        }
    }
}

/// The server's configuration, read by [`parse`] / [`parse_from`] and checked by
/// [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<EtcdUrl>,
    /// Empty when `--listen-client-urls` was given without it on the command line, which
    /// `validate` rejects as etcd does.
    pub advertise_client_urls: Vec<EtcdUrl>,
    pub listen_peer_urls: Vec<EtcdUrl>,
    /// Extra HTTP listeners serving only `/metrics` and the health probes (none by default).
    pub listen_metrics_urls: Vec<EtcdUrl>,
    pub initial_advertise_peer_urls: Vec<EtcdUrl>,
    pub initial_cluster: Vec<ClusterMember>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    /// As given: 0 means the 2 GiB default and a negative value disables the quota; see
    /// [`Config::effective_quota`].
    pub quota_backend_bytes: i64,
    /// A given 0 is replaced by the default, as etcd's server does.
    pub snapshot_count: u64,
    /// Log entries kept behind a raft snapshot for slow followers (`--experimental-snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub log_level: LogLevel,
    pub logger: Logger,
    pub auto_compaction_mode: AutoCompactionMode,
    /// As given; [`Config::auto_compaction`] interprets it.
    pub auto_compaction_retention: String,
    pub storage_engine: StorageEngine,
    pub watch_progress_notify_interval: Duration,
    /// The YAML file the configuration came from, if any.
    pub config_file: Option<PathBuf>,
    /// TLS for the `https://` client listeners.
    pub client_tls: TlsSettings,
    /// TLS for the `https://` peer listeners and for dialing `https://` peer URLs.
    pub peer_tls: TlsSettings,
    /// `--auth-token` as given; `auth::token::TokenConfig::parse` reads it.
    pub auth_token: String,
    /// Seconds an unused simple token lives (`--auth-token-ttl`).
    pub auth_token_ttl: u64,
    pub bcrypt_cost: u32,
}

/// One side's TLS settings in etcd's terms (its `transport.TLSInfo` plus the process-wide
/// `--cipher-suites` / `--tls-*-version`), kept as text: `api::tls` turns them into a rustls
/// configuration and reports what it cannot use. The peer side fills one from `--peer-*`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Which side these are, as the flags' prefix: empty for the client port, `peer-` for the
    /// peer port (for messages naming the flags).
    pub flag_prefix: &'static str,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    /// Go cipher-suite names, as given.
    pub cipher_suites: Vec<String>,
    /// `TLS1.2` or `TLS1.3`; `None` for etcd's default (TLS 1.2 minimum, newest maximum).
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

/// etcd's accepted `--tls-min-version` / `--tls-max-version` values.
pub const TLS_VERSIONS: &[&str] = &["TLS1.2", "TLS1.3"];

impl TlsSettings {
    /// Whether a serving certificate was configured.
    pub fn has_cert(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    /// etcd's flag checks for the TLS versions and cipher suites, with its messages (seen from
    /// 3.5.16's "failed to verify flags"). Suite names are checked when the TLS config is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for version in [&self.min_version, &self.max_version].into_iter().flatten() {
            if !TLS_VERSIONS.contains(&version.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "unexpected TLS version {version:?} (must be one of: {})",
                    TLS_VERSIONS.join(", ")
                )));
            }
        }
        if let (Some(min), Some(max)) = (&self.min_version, &self.max_version) {
            // The two names sort in version order.
            if min > max {
                return Err(ConfigError::Invalid(format!("min version ({min}) is greater than max version ({max})")));
            }
        }
        // Go cannot restrict TLS 1.3 suites, so etcd refuses a list that could only apply to 1.3.
        if self.min_version.as_deref() == Some("TLS1.3") && !self.cipher_suites.is_empty() {
            return Err(ConfigError::Invalid("cipher suites cannot be configured when only TLS1.3 is enabled".into()));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        let peer = localhost_url(2380);
        Config {
            name: DEFAULT_NAME.to_string(),
            data_dir: PathBuf::from(format!("{DEFAULT_NAME}.etcd")),
            listen_client_urls: vec![localhost_url(2379)],
            advertise_client_urls: vec![localhost_url(2379)],
            listen_peer_urls: vec![peer.clone()],
            listen_metrics_urls: Vec::new(),
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![ClusterMember { name: DEFAULT_NAME.to_string(), peer_urls: vec![peer] }],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: DEFAULT_CLUSTER_TOKEN.to_string(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            quota_backend_bytes: 0,
            snapshot_count: DEFAULT_SNAPSHOT_COUNT,
            snapshot_catchup_entries: DEFAULT_SNAPSHOT_CATCHUP_ENTRIES,
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_ms: DEFAULT_ELECTION_MS,
            log_level: LogLevel::Info,
            logger: Logger::Zap,
            auto_compaction_mode: AutoCompactionMode::Periodic,
            auto_compaction_retention: "0".to_string(),
            storage_engine: StorageEngine::Redb,
            watch_progress_notify_interval: DEFAULT_PROGRESS_NOTIFY,
            config_file: None,
            client_tls: TlsSettings::default(),
            peer_tls: TlsSettings { flag_prefix: "peer-", ..TlsSettings::default() },
            auth_token: "simple".to_string(),
            auth_token_ttl: 300,
            bcrypt_cost: 10,
        }
    }
}

/// `http://localhost:<port>`, the shape of etcd's default URLs.
fn localhost_url(port: u16) -> EtcdUrl {
    EtcdUrl { scheme: UrlScheme::Http, host: "localhost".to_string(), port }
}

impl Config {
    /// Checks what etcd checks before starting, with etcd's messages where it has one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError::Invalid(msg));
        if self.name.is_empty() {
            return fail("--name must not be empty".to_string());
        }
        for (flag, urls) in
            [("--listen-client-urls", &self.listen_client_urls), ("--listen-peer-urls", &self.listen_peer_urls)]
        {
            if urls.is_empty() {
                return fail(format!("{flag} must name at least one URL"));
            }
            for url in urls {
                if url.socket_addr().is_none() {
                    return fail(format!("expected IP in URL for binding ({url})"));
                }
            }
        }
        if let Some(url) = self.listen_metrics_urls.iter().find(|u| u.socket_addr().is_none()) {
            return fail(format!("expected IP in URL for binding ({url})"));
        }
        if self.advertise_client_urls.is_empty() {
            return fail("--advertise-client-urls is required when --listen-client-urls is set explicitly".to_string());
        }
        if self.initial_advertise_peer_urls.is_empty() {
            return fail("--initial-advertise-peer-urls must name at least one URL".to_string());
        }
        for (flag, urls) in [
            ("--advertise-client-urls", &self.advertise_client_urls),
            ("--initial-advertise-peer-urls", &self.initial_advertise_peer_urls),
        ] {
            for url in urls {
                if url.host.is_empty() {
                    return fail(format!("{flag} \"{url}\" must be \"host:port\" (unexpected empty host ({url}))"));
                }
            }
        }
        if !self.initial_cluster.iter().any(|m| m.name == self.name) {
            return fail(format!("couldn't find local name {:?} in the initial cluster configuration", self.name));
        }
        for member in &self.initial_cluster {
            if let Some(url) = member.peer_urls.iter().find(|u| u.host.is_empty()) {
                return fail(format!(
                    "--initial-cluster member {:?} has a URL with an empty host ({url})",
                    member.name
                ));
            }
        }
        if self.heartbeat_interval_ms == 0 {
            return fail("--heartbeat-interval must be >0 (set to 0ms)".to_string());
        }
        if self.election_timeout_ms == 0 {
            return fail("--election-timeout must be >0 (set to 0ms)".to_string());
        }
        if self.heartbeat_interval_ms.saturating_mul(5) > self.election_timeout_ms {
            return fail(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms > MAX_ELECTION_MS {
            return fail(format!(
                "--election-timeout[{}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms",
                self.election_timeout_ms
            ));
        }
        if self.max_request_bytes == 0 || self.max_request_bytes > MAX_REQUEST_BYTES_LIMIT {
            return fail(format!(
                "--max-request-bytes must be between 1 and {MAX_REQUEST_BYTES_LIMIT} (set to {})",
                self.max_request_bytes
            ));
        }
        if self.max_txn_ops == 0 {
            return fail("--max-txn-ops must be >0 (set to 0)".to_string());
        }
        if self.watch_progress_notify_interval.is_zero() {
            return fail("--experimental-watch-progress-notify-interval must be >0".to_string());
        }
        parse_retention(self.auto_compaction_mode, &self.auto_compaction_retention)?;
        self.client_tls.validate()?;
        if let Some(url) = self.listen_client_urls.iter().find(|u| u.is_tls()) {
            if !self.client_tls.has_cert() {
                return fail(format!(
                    "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"
                ));
            }
        }
        // etcd checks the peer side only when it listens (embed's configurePeerListeners), with
        // this text naming host:port rather than the URL.
        if let Some(url) = self.listen_peer_urls.iter().find(|u| u.is_tls()) {
            if !self.peer_tls.has_cert() {
                return fail(format!(
                    "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented",
                    url.host(),
                    url.port()
                ));
            }
        }
        Ok(())
    }

    /// The backend size quota in bytes: the 2 GiB default for 0, and `u64::MAX` (no quota) for a
    /// negative value, which is how etcd turns the quota off.
    pub fn effective_quota(&self) -> u64 {
        match self.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            n if n < 0 => u64::MAX,
            n => n.unsigned_abs(),
        }
    }

    /// Where to listen for clients; `localhost` means 127.0.0.1. Complete once `validate` passed.
    pub fn client_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_client_urls.iter().filter_map(EtcdUrl::socket_addr).collect()
    }

    /// Where to serve `/metrics` and `/health` besides the client port; `localhost` means 127.0.0.1.
    pub fn metrics_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_metrics_urls.iter().filter_map(EtcdUrl::socket_addr).collect()
    }

    /// Where to listen for peers; `localhost` means 127.0.0.1. Complete once `validate` passed.
    pub fn peer_listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen_peer_urls.iter().filter_map(EtcdUrl::socket_addr).collect()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// `--initial-cluster` as (member name, peer URLs), in the order first written.
    pub fn initial_cluster_members(&self) -> Vec<(String, Vec<String>)> {
        self.initial_cluster
            .iter()
            .map(|m| (m.name.clone(), m.peer_urls.iter().map(ToString::to_string).collect()))
            .collect()
    }

    /// The auto-compaction policy, or `None` when the retention is zero (compaction off). A
    /// retention that does not parse also gives `None`; `validate` reports it.
    pub fn auto_compaction(&self) -> Option<AutoCompaction> {
        parse_retention(self.auto_compaction_mode, &self.auto_compaction_retention).ok().flatten()
    }

    /// The gRPC receive limit: etcd allows `--max-request-bytes` plus 512 KiB for the envelope.
    pub fn grpc_max_recv_bytes(&self) -> usize {
        let bytes = self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// etcd's start-up advice for values it accepts but considers risky.
    fn advisories(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.quota_backend_bytes > MAX_RECOMMENDED_QUOTA_BYTES {
            out.push(format!(
                "--quota-backend-bytes {} exceeds the maximum recommended quota {MAX_RECOMMENDED_QUOTA_BYTES}",
                self.quota_backend_bytes
            ));
        }
        if self.max_request_bytes > RECOMMENDED_MAX_REQUEST_BYTES {
            out.push(format!(
                "--max-request-bytes {} exceeds the maximum recommended size {RECOMMENDED_MAX_REQUEST_BYTES}",
                self.max_request_bytes
            ));
        }
        out
    }
}

/// Reads the configuration from the process's arguments and environment.
///
/// `--help` and `--version` print and exit 0, and a malformed command line prints clap's message
/// and exits 2, as etcd (Go's flag package) does; every other problem is returned.
pub fn parse() -> anyhow::Result<(Config, Vec<String>)> {
    let mut args = Vec::new();
    for arg in std::env::args_os() {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(raw) => return Err(ConfigError::NonUtf8Argument(raw.to_string_lossy().into_owned()).into()),
        }
    }
    // A variable that is not UTF-8 cannot be one of etcd's, so it is skipped rather than fatal.
    let env: HashMap<String, String> =
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    match load(args, &env) {
        Ok(done) => Ok(done),
        Err(ConfigError::Cli(err)) => err.exit(),
        Err(err) => Err(err.into()),
    }
}

/// Reads the configuration from `args` (program name first) and `env` instead of the process's.
/// Returns the validated configuration and the warnings to log once logging is up.
pub fn parse_from(
    args: impl IntoIterator<Item = String>,
    env: &HashMap<String, String>,
) -> anyhow::Result<(Config, Vec<String>)> {
    Ok(load(args.into_iter().collect(), env)?)
}

/// Where a setting came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Flag,
    Env(String),
    File(String),
}

#[derive(Clone, Debug)]
struct Setting {
    value: String,
    origin: Origin,
}

impl Setting {
    fn describe(&self, name: &str) -> String {
        match &self.origin {
            Origin::Flag => format!("flag --{name}"),
            Origin::Env(var) => var.clone(),
            Origin::File(path) => format!("{name} in config file {path}"),
        }
    }

    fn invalid(&self, name: &str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::InvalidValue { origin: self.describe(name), value: self.value.clone(), reason: reason.to_string() }
    }
}

type Settings = BTreeMap<&'static str, Setting>;

fn load(args: Vec<String>, env: &HashMap<String, String>) -> Result<(Config, Vec<String>), ConfigError> {
    let (args, stray) = normalize_args(args)?;
    let matches = command().try_get_matches_from(args)?;
    if let Some(first) = stray {
        return Err(match first.as_str() {
            "gateway" | "grpc-proxy" => ConfigError::UnsupportedCommand(first),
            _ => ConfigError::NotAFlag(first),
        });
    }
    let mut cmdline: Vec<(&'static str, String)> = Vec::new();
    for name in all_flag_names() {
        if matches.value_source(name) != Some(ValueSource::CommandLine) {
            continue;
        }
        if let Some(value) = matches.get_raw(name).and_then(|mut values| values.next_back()) {
            cmdline.push((name, value.to_string_lossy().into_owned()));
        }
    }

    let mut warnings = Vec::new();
    if env.get("ETCD_VERSION").is_some_and(|v| !v.is_empty()) {
        warnings.push("cannot set special environment variable ETCD_VERSION".to_string());
    }
    let config_file = cmdline
        .iter()
        .find(|(name, _)| *name == CONFIG_FILE_FLAG)
        .map(|(_, value)| value.clone())
        .or_else(|| env.get(&env_var(CONFIG_FILE_FLAG)).cloned())
        .filter(|path| !path.is_empty());

    let mut settings = match &config_file {
        Some(path) => file_settings(path, &cmdline, env, &mut warnings)?,
        None => command_line_settings(&cmdline, env, &mut warnings)?,
    };
    if let Some(path) = &config_file {
        settings.insert(CONFIG_FILE_FLAG, Setting { value: path.clone(), origin: Origin::Flag });
    }
    for (name, arity) in IGNORED_ETCD_FLAGS {
        let Some(setting) = settings.get(name) else {
            continue;
        };
        if CLIENT_TLS_FLAGS.contains(name) || PEER_TLS_FLAGS.contains(name) {
            continue;
        }
        // clap has already checked booleans given as flags, and file values of ignored keys are
        // never read.
        if *arity == FlagArity::Bool && matches!(setting.origin, Origin::Env(_)) {
            parse_go_bool(&setting.value).map_err(|reason| setting.invalid(name, reason))?;
        }
        warnings.push(format!("flag --{name} is accepted for etcd compatibility but ignored by keel"));
    }

    let config = build(&settings, &mut warnings)?;
    config.validate()?;
    warnings.extend(config.advisories());
    Ok((config, warnings))
}

/// Settings from the YAML file, plus `--storage-engine` from the command line or environment.
fn file_settings(
    path: &str,
    cmdline: &[(&'static str, String)],
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::ReadConfigFile { path: path.to_string(), source })?;
    let mut settings = yaml_settings(&text, path, warnings)?;

    let passed_over: Vec<String> = cmdline
        .iter()
        .filter(|(name, _)| *name != CONFIG_FILE_FLAG && *name != STORAGE_ENGINE_FLAG)
        .map(|(name, _)| format!("--{name}"))
        .collect();
    if !passed_over.is_empty() {
        warnings.push(format!(
            "config file {path} is in use, so these command-line flags are ignored (as in etcd): {}",
            passed_over.join(", ")
        ));
    }
    let mut env_passed_over: Vec<String> = all_flag_names()
        .filter(|name| *name != CONFIG_FILE_FLAG && *name != STORAGE_ENGINE_FLAG)
        .map(env_var)
        .filter(|var| env.get(var).is_some_and(|v| !v.is_empty()))
        .collect();
    env_passed_over.sort();
    if !env_passed_over.is_empty() {
        warnings.push(format!(
            "config file {path} is in use, so these environment variables are ignored (as in etcd): {}",
            env_passed_over.join(", ")
        ));
    }

    let engine = cmdline
        .iter()
        .find(|(name, _)| *name == STORAGE_ENGINE_FLAG)
        .map(|(_, value)| Setting { value: value.clone(), origin: Origin::Flag })
        .or_else(|| env_setting(env, STORAGE_ENGINE_FLAG));
    if let Some(engine) = engine {
        settings.insert(STORAGE_ENGINE_FLAG, engine);
    }
    Ok(settings)
}

fn env_setting(env: &HashMap<String, String>, name: &str) -> Option<Setting> {
    let var = env_var(name);
    let value = env.get(&var).filter(|v| !v.is_empty())?;
    Some(Setting { value: value.clone(), origin: Origin::Env(var) })
}

/// Command-line flags, then environment variables for the flags not given, as etcd's
/// `SetFlagsFromEnv` does (an empty variable counts as unset).
fn command_line_settings(
    cmdline: &[(&'static str, String)],
    env: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Settings, ConfigError> {
    let mut settings = Settings::new();
    for (name, value) in cmdline {
        settings.insert(*name, Setting { value: value.clone(), origin: Origin::Flag });
    }
    let mut known_vars = Vec::new();
    for name in all_flag_names() {
        let var = env_var(name);
        if name != CONFIG_FILE_FLAG {
            if let Some(setting) = env_setting(env, name) {
                if settings.contains_key(name) {
                    warnings.push(format!(
                        "recognized environment variable {var}, but unused: shadowed by corresponding flag"
                    ));
                } else {
                    settings.insert(name, setting);
                }
            }
        }
        known_vars.push(var);
    }
    // As in etcd, a known variable that was empty was not used either, so it is reported too.
    let used = |var: &String, value: &String| known_vars.contains(var) && !value.is_empty();
    let mut strangers: Vec<&String> = env
        .iter()
        .filter(|(var, value)| var.starts_with("ETCD_") && var.as_str() != "ETCD_VERSION" && !used(var, value))
        .map(|(var, _)| var)
        .collect();
    strangers.sort();
    for var in strangers {
        warnings.push(format!("unrecognized environment variable {var}={}", env[var]));
    }
    Ok(settings)
}

/// Reads etcd's YAML config file: keys are flag names; etcd skips keys it does not know, Keel
/// skips them too but says so.
fn yaml_settings(text: &str, path: &str, warnings: &mut Vec<String>) -> Result<Settings, ConfigError> {
    let bad = |reason: String| ConfigError::BadConfigFile { path: path.to_string(), reason };
    let mut settings = Settings::new();
    if text.trim().is_empty() {
        return Ok(settings);
    }
    let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string()))?;
    let map = match doc {
        Yaml::Null => return Ok(settings),
        Yaml::Mapping(map) => map,
        other => {
            return Err(bad(format!(
                "expected a mapping of option names to values at the top level, found {}",
                yaml_kind(&other)
            )))
        }
    };
    for (key, value) in map {
        let Yaml::String(key) = key else {
            return Err(bad(format!("option names must be strings, found {}", yaml_kind(&key))));
        };
        if let Some(flag) = KEEL_FLAGS.iter().find(|f| f.name == key && f.name != CONFIG_FILE_FLAG) {
            let text = yaml_value_text(flag.kind, &value).map_err(|e| bad(format!("{key}: {e}")))?;
            if let Some(text) = text {
                settings.insert(flag.name, Setting { value: text, origin: Origin::File(path.to_string()) });
            }
        } else if let Some(name) = CLIENT_TLS_FLAGS.iter().find(|name| **name == key) {
            if let Some(text) = yaml_tls_value(&value).map_err(|e| bad(format!("{key}: {e}")))? {
                settings.insert(name, Setting { value: text, origin: Origin::File(path.to_string()) });
            }
        } else if let Some(prefix) = TLS_BLOCKS.iter().find(|(block, _)| *block == key).map(|(_, prefix)| *prefix) {
            yaml_tls_block(&value, &key, prefix, path, &mut settings, warnings)
                .map_err(|e| bad(format!("{key}: {e}")))?;
        } else if PEER_TLS_FLAGS.contains(&key.as_str()) {
            // etcd reads peer TLS only from the `peer-transport-security:` block in a file.
            warnings.push(format!(
                "config file key {key} is ignored (etcd and keel read it inside peer-transport-security)"
            ));
        } else if let Some((name, _)) = IGNORED_ETCD_FLAGS.iter().find(|(name, _)| *name == key) {
            settings.insert(name, Setting { value: String::new(), origin: Origin::File(path.to_string()) });
        } else if IGNORED_YAML_ONLY_KEYS.contains(&key.as_str()) {
            warnings.push(format!("config file key {key} is accepted for etcd compatibility but ignored by keel"));
        } else {
            warnings.push(format!("unknown key {key:?} in config file {path} is ignored (etcd ignores it too)"));
        }
    }
    Ok(settings)
}

/// etcd's two YAML TLS blocks and the flag prefix their keys stand for.
const TLS_BLOCKS: &[(&str, &str)] = &[("client-transport-security", ""), ("peer-transport-security", "peer-")];

/// One of etcd's `*-transport-security:` blocks: the file, CA and client-auth keys become the
/// flag settings of the same name (with `prefix`, `peer-` for the peer block); other keys
/// (`auto-tls`, `client-cert-file`...) are warned about.
fn yaml_tls_block(
    value: &Yaml,
    block: &str,
    prefix: &str,
    path: &str,
    settings: &mut Settings,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let map = match value {
        Yaml::Null => return Ok(()),
        Yaml::Mapping(map) => map,
        other => return Err(format!("expected a mapping, found {}", yaml_kind(other))),
    };
    for (key, value) in map {
        let Yaml::String(key) = key else {
            return Err(format!("option names must be strings, found {}", yaml_kind(key)));
        };
        let flag = YAML_TLS_BLOCK_KEYS
            .iter()
            .filter(|name| **name == key)
            .flat_map(|name| CLIENT_TLS_FLAGS.iter().chain(PEER_TLS_FLAGS).find(|f| **f == format!("{prefix}{name}")))
            .next();
        match flag {
            Some(name) => {
                if let Some(text) = yaml_tls_value(value).map_err(|e| format!("{key}: {e}"))? {
                    settings.insert(name, Setting { value: text, origin: Origin::File(path.to_string()) });
                }
            }
            None => warnings
                .push(format!("config file key {block}.{key} is accepted for etcd compatibility but ignored by keel")),
        }
    }
    Ok(())
}

/// A TLS key's YAML value as flag text: strings, booleans, and lists of strings (etcd's
/// `cipher-suites` is a list in the file, comma-separated on the command line).
fn yaml_tls_value(value: &Yaml) -> Result<Option<String>, String> {
    match value {
        Yaml::Null => Ok(None),
        Yaml::String(s) => Ok(Some(s.clone())),
        Yaml::Bool(b) => Ok(Some(b.to_string())),
        Yaml::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Yaml::String(s) => out.push(s.clone()),
                    other => return Err(format!("expected a string, found {}", yaml_kind(other))),
                }
            }
            Ok(Some(out.join(",")))
        }
        other => Err(format!("expected a string, found {}", yaml_kind(other))),
    }
}

/// Turns one YAML value into the text a flag would carry. Numbers are strict, as in etcd (whose
/// JSON decoding refuses `"100"` for a number); strings also take YAML numbers, which etcd
/// refuses but which are plainly meant (`auto-compaction-retention: 1`). `null` leaves the
/// default, as Go's decoder does.
fn yaml_value_text(kind: Kind, value: &Yaml) -> Result<Option<String>, String> {
    let value = match value {
        Yaml::Tagged(tagged) => &tagged.value,
        other => other,
    };
    if let Yaml::Null = value {
        return Ok(None);
    }
    let text = match (kind, value) {
        (Kind::Str | Kind::Urls | Kind::Duration, Yaml::String(s)) => s.clone(),
        (Kind::Str, Yaml::Number(n)) => n.to_string(),
        (Kind::Str, Yaml::Bool(b)) => b.to_string(),
        (Kind::Urls, Yaml::Sequence(items)) => {
            let mut urls = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Yaml::String(s) => urls.push(s.clone()),
                    other => return Err(format!("expected a URL string, found {}", yaml_kind(other))),
                }
            }
            urls.join(",")
        }
        (Kind::Uint, Yaml::Number(n)) if n.as_u64().is_some() => n.to_string(),
        (Kind::Int, Yaml::Number(n)) if n.as_i64().is_some() => n.to_string(),
        // etcd 3.5 decodes durations in the file as integer nanoseconds.
        (Kind::Duration, Yaml::Number(n)) if n.as_u64().is_some() => format!("{n}ns"),
        (Kind::Uint, other) => return Err(format!("expected an unsigned integer, found {}", yaml_kind(other))),
        (Kind::Int, other) => return Err(format!("expected an integer, found {}", yaml_kind(other))),
        (Kind::Duration, other) => {
            return Err(format!(
                "expected a duration (nanoseconds or a string such as \"10m\"), found {}",
                yaml_kind(other)
            ))
        }
        (Kind::Str | Kind::Urls, other) => return Err(format!("expected a string, found {}", yaml_kind(other))),
    };
    Ok(Some(text))
}

fn yaml_kind(value: &Yaml) -> String {
    match value {
        Yaml::Null => "null".to_string(),
        Yaml::Bool(b) => format!("the boolean {b}"),
        Yaml::Number(n) => format!("the number {n}"),
        Yaml::String(s) => format!("the string {s:?}"),
        Yaml::Sequence(_) => "a list".to_string(),
        Yaml::Mapping(_) => "a mapping".to_string(),
        Yaml::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// One side's TLS settings: `prefix` is empty for the client side and `peer-` for the peer side;
/// the cipher suites and TLS versions have no prefix (etcd applies them to both). As with Go's
/// flags, an empty value means unset.
fn tls_settings(settings: &Settings, prefix: &'static str) -> Result<TlsSettings, ConfigError> {
    let text = |name: &str| settings.get(name).map(|s| s.value.clone()).filter(|v| !v.is_empty());
    let auth_flag = format!("{prefix}client-cert-auth");
    let client_cert_auth = match settings.get(auth_flag.as_str()).filter(|s| !s.value.is_empty()) {
        Some(s) => parse_go_bool(&s.value).map_err(|reason| s.invalid(&auth_flag, reason))?,
        None => false,
    };
    let file = |name: &str| text(&format!("{prefix}{name}")).map(PathBuf::from);
    Ok(TlsSettings {
        flag_prefix: prefix,
        cert_file: file("cert-file"),
        key_file: file("key-file"),
        trusted_ca_file: file("trusted-ca-file"),
        client_cert_auth,
        cipher_suites: text("cipher-suites")
            .map(|v| v.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect())
            .unwrap_or_default(),
        min_version: text("tls-min-version"),
        max_version: text("tls-max-version"),
    })
}

/// Turns the gathered settings into a typed configuration, applying etcd's defaults.
fn build(settings: &Settings, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
    let get = |name: &str| settings.get(name);
    let mut config = Config::default();

    if let Some(s) = get("name") {
        config.name = s.value.clone();
    }
    // etcd treats an empty --data-dir as unset and derives it from the name.
    config.data_dir = match get("data-dir").filter(|s| !s.value.is_empty()) {
        Some(s) => PathBuf::from(&s.value),
        None => PathBuf::from(format!("{}.etcd", config.name)),
    };
    if let Some(s) = get("listen-client-urls") {
        config.listen_client_urls = url_list(s, "listen-client-urls")?;
    }
    match get("advertise-client-urls") {
        Some(s) => config.advertise_client_urls = url_list(s, "advertise-client-urls")?,
        // etcd drops its default advertise URL when the listen URLs were set by flag or
        // environment, so that a moved listener is not advertised at the old address; a config
        // file keeps the default.
        None => {
            if get("listen-client-urls").is_some_and(|s| !matches!(s.origin, Origin::File(_))) {
                config.advertise_client_urls.clear();
            }
        }
    }
    if let Some(s) = get("listen-peer-urls") {
        config.listen_peer_urls = url_list(s, "listen-peer-urls")?;
    }
    if let Some(s) = get("listen-metrics-urls") {
        config.listen_metrics_urls = url_list(s, "listen-metrics-urls")?;
    }
    if let Some(s) = get("initial-advertise-peer-urls") {
        config.initial_advertise_peer_urls = url_list(s, "initial-advertise-peer-urls")?;
    }
    // etcd derives the default from the name only when the name is not "default"; Keel always
    // derives it, so `--initial-advertise-peer-urls` alone also yields a consistent one-member
    // cluster where etcd would refuse to start.
    config.initial_cluster = match get("initial-cluster") {
        Some(s) => cluster_members(s)?,
        None => {
            vec![ClusterMember { name: config.name.clone(), peer_urls: config.initial_advertise_peer_urls.clone() }]
        }
    };
    if let Some(s) = get("initial-cluster-state") {
        config.initial_cluster_state = match s.value.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            _ => return Err(s.invalid("initial-cluster-state", "valid values are \"new\" and \"existing\"")),
        };
    }
    if let Some(s) = get("initial-cluster-token") {
        config.initial_cluster_token = s.value.clone();
    }
    if let Some(s) = get("max-request-bytes") {
        config.max_request_bytes = uint(s, "max-request-bytes")?;
    }
    if let Some(s) = get("auth-token") {
        config.auth_token = s.value.clone();
    }
    if let Some(s) = get("auth-token-ttl") {
        config.auth_token_ttl = uint(s, "auth-token-ttl")?;
    }
    if let Some(s) = get("bcrypt-cost") {
        // etcd refuses costs outside bcrypt's MinCost..MaxCost at startup.
        let cost = uint(s, "bcrypt-cost")?;
        if !(4..=31).contains(&cost) {
            return Err(s.invalid("bcrypt-cost", "must be between 4 and 31"));
        }
        config.bcrypt_cost = cost as u32;
    }
    if let Some(s) = get("max-txn-ops") {
        config.max_txn_ops = uint(s, "max-txn-ops")?;
    }
    if let Some(s) = get("quota-backend-bytes") {
        config.quota_backend_bytes =
            s.value.trim().parse::<i64>().map_err(|_| s.invalid("quota-backend-bytes", "expected an integer"))?;
    }
    if let Some(s) = get("snapshot-count") {
        // etcd's server replaces 0 by its default.
        config.snapshot_count = match uint(s, "snapshot-count")? {
            0 => DEFAULT_SNAPSHOT_COUNT,
            n => n,
        };
    }
    if let Some(s) = get("experimental-snapshot-catchup-entries") {
        config.snapshot_catchup_entries = uint(s, "experimental-snapshot-catchup-entries")?;
    }
    if let Some(s) = get("heartbeat-interval") {
        config.heartbeat_interval_ms = uint(s, "heartbeat-interval")?;
    }
    if let Some(s) = get("election-timeout") {
        config.election_timeout_ms = uint(s, "election-timeout")?;
    }
    if let Some(s) = get("log-level") {
        config.log_level = match s.value.to_ascii_lowercase().as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            // zap's levels above error exist in etcd; tracing stops at error.
            level @ ("dpanic" | "panic" | "fatal") => {
                warnings.push(format!("--log-level={level} has no equivalent in keel; logging at error level"));
                LogLevel::Error
            }
            _ => {
                return Err(s.invalid("log-level", "valid levels are debug, info, warn, error, dpanic, panic and fatal"))
            }
        };
    }
    config.client_tls = tls_settings(settings, "")?;
    config.peer_tls = tls_settings(settings, "peer-")?;
    if let Some(s) = get("logger") {
        config.logger = match s.value.as_str() {
            "" | "zap" => Logger::Zap,
            // etcd 3.5 refuses capnslog ("--logger=capnslog is removed in v3.5"); Keel lets old
            // manifests start and says what it does instead.
            "capnslog" => {
                warnings.push(
                    "--logger=capnslog was removed in etcd 3.5; keel logs with its structured logger as with --logger=zap"
                        .to_string(),
                );
                Logger::Capnslog
            }
            other => return Err(ConfigError::Invalid(format!("unknown logger option {other:?}"))),
        };
    }
    if let Some(s) = get("auto-compaction-mode") {
        config.auto_compaction_mode = match s.value.as_str() {
            "" | "periodic" => AutoCompactionMode::Periodic,
            "revision" => AutoCompactionMode::Revision,
            other => return Err(ConfigError::Invalid(format!("unknown auto-compaction-mode {other:?}"))),
        };
    }
    if let Some(s) = get("auto-compaction-retention").filter(|s| !s.value.is_empty()) {
        config.auto_compaction_retention = s.value.clone();
    }
    if let Some(s) = get(STORAGE_ENGINE_FLAG) {
        config.storage_engine = match s.value.to_ascii_lowercase().as_str() {
            "redb" => StorageEngine::Redb,
            "sled" => StorageEngine::Sled,
            _ => return Err(s.invalid(STORAGE_ENGINE_FLAG, "valid values are \"redb\" and \"sled\"")),
        };
    }
    if let Some(s) = get("experimental-watch-progress-notify-interval") {
        config.watch_progress_notify_interval =
            parse_go_duration(&s.value).map_err(|e| s.invalid("experimental-watch-progress-notify-interval", e))?;
    }
    config.config_file = get(CONFIG_FILE_FLAG).filter(|s| !s.value.is_empty()).map(|s| PathBuf::from(&s.value));
    Ok(config)
}

fn uint(s: &Setting, name: &str) -> Result<u64, ConfigError> {
    s.value.trim().parse::<u64>().map_err(|_| s.invalid(name, "expected an unsigned integer"))
}

/// A comma-separated URL list; repeated URLs are kept once, as etcd's unique-URL flags do.
fn url_list(s: &Setting, name: &str) -> Result<Vec<EtcdUrl>, ConfigError> {
    let mut urls: Vec<EtcdUrl> = Vec::new();
    for part in s.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = EtcdUrl::parse(part).map_err(|e| s.invalid(name, e))?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    Ok(urls)
}

/// Reads `name=url,name=url` the way etcd's `types.NewURLsMap` does: an entry without `=` has an
/// empty URL (and so fails), and a repeated name collects several URLs.
fn cluster_members(s: &Setting) -> Result<Vec<ClusterMember>, ConfigError> {
    let mut members: Vec<ClusterMember> = Vec::new();
    for entry in s.value.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        let url = EtcdUrl::parse(url)
            .map_err(|e| s.invalid("initial-cluster", format!("error setting up initial cluster: {e}")))?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(member) => {
                if !member.peer_urls.contains(&url) {
                    member.peer_urls.push(url);
                }
            }
            None => members.push(ClusterMember { name: name.to_string(), peer_urls: vec![url] }),
        }
    }
    Ok(members)
}

/// etcd's `parseCompactionRetention`: a non-negative integer is hours (periodic) or revisions
/// (revision); otherwise a Go duration. Zero means off. Unlike etcd, revision mode refuses a
/// duration (etcd would silently keep that many nanoseconds' worth of revisions).
pub fn parse_retention(mode: AutoCompactionMode, retention: &str) -> Result<Option<AutoCompaction>, ConfigError> {
    let bad =
        |why: String| ConfigError::Invalid(format!("error parsing auto-compaction-retention {retention:?}: {why}"));
    let retention_text = if retention.is_empty() { "0" } else { retention };
    let integer = parse_go_int(retention_text);
    match mode {
        AutoCompactionMode::Revision => match integer {
            Some(0) => Ok(None),
            Some(n) if n > 0 => Ok(Some(AutoCompaction::Revision(n))),
            _ => Err(bad("revision mode needs a non-negative number of revisions".to_string())),
        },
        AutoCompactionMode::Periodic => {
            let period = match integer {
                Some(hours) if hours >= 0 => hours
                    .unsigned_abs()
                    .checked_mul(3600)
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad("too many hours".to_string()))?,
                _ => parse_go_duration(retention_text).map_err(|e| bad(e.to_string()))?,
            };
            Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
        }
    }
}

/// Go's `strconv.Atoi` for decimal text: an optional sign, then digits.
fn parse_go_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok()
}

/// Go's `time.ParseDuration` ("1h30m", "1.5s", "300ms", "0"), limited to non-negative values.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError(format!("invalid duration {text:?}"));
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let frac_len = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(frac_len)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError(format!("missing unit in duration {text:?}")));
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(DurationError(format!("unknown unit {unit:?} in duration {text:?}"))),
        };
        let whole: u128 = if int_part.is_empty() { 0 } else { int_part.parse::<u128>().map_err(|_| invalid())? };
        // Digits past nanosecond precision cannot change the result, so they are dropped before
        // they could overflow.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac_nanos = if frac_digits.is_empty() {
            0
        } else {
            let scale = 10u128.pow(u32::try_from(frac_digits.len()).map_err(|_| invalid())?);
            frac_digits.parse::<u128>().map_err(|_| invalid())? * nanos_per_unit / scale
        };
        total = whole
            .checked_mul(nanos_per_unit)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| total.checked_add(n))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(invalid)?;
        rest = after;
    }
    if negative && total > 0 {
        return Err(DurationError(format!("negative duration {text:?}")));
    }
    let nanos = u64::try_from(total).map_err(|_| invalid())?;
    Ok(Duration::from_nanos(nanos))
}

/// Go's `strconv.ParseBool`, which etcd's boolean flags and variables use.
fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected a boolean (true or false)".to_string()),
    }
}

/// etcd's `flags.FlagToEnv`: `ETCD_` and the flag in upper snake case.
fn env_var(flag: &str) -> String {
    if flag == STORAGE_ENGINE_FLAG {
        return "KEEL_STORAGE_ENGINE".to_string();
    }
    format!("ETCD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

fn all_flag_names() -> impl Iterator<Item = &'static str> {
    KEEL_FLAGS.iter().map(|f| f.name).chain(IGNORED_ETCD_FLAGS.iter().map(|(name, _)| *name))
}

fn arity(name: &str) -> Option<FlagArity> {
    if KEEL_FLAGS.iter().any(|f| f.name == name) {
        return Some(FlagArity::Value);
    }
    IGNORED_ETCD_FLAGS.iter().find(|(n, _)| *n == name).map(|(_, arity)| *arity)
}

/// Rewrites the command line into the one shape clap is given, `--flag=value`, following Go's
/// flag grammar: one or two dashes, a value flag takes the next argument whatever it looks like,
/// a boolean flag only takes `=value`, and flags end at `--` or at the first non-flag argument.
/// Also returns the first argument after the flags, which etcd refuses once the flags parsed.
fn normalize_args(args: Vec<String>) -> Result<(Vec<String>, Option<String>), ConfigError> {
    let mut out = Vec::with_capacity(args.len());
    let mut stray = None;
    let mut args = args.into_iter();
    out.push(args.next().unwrap_or_else(|| "keel".to_string()));
    while let Some(arg) = args.next() {
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(body) if arg != "--" && arg != "-" => body,
            // The flags end at "--" or at the first other argument.
            _ => {
                stray = if arg == "--" { args.next() } else { Some(arg) };
                break;
            }
        };
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::BadFlagSyntax(arg));
        }
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        match (name, arity(name)) {
            ("h" | "help", _) => out.push("--help".to_string()),
            ("version", _) => match value.map(parse_go_bool) {
                None | Some(Ok(true)) => out.push("--version".to_string()),
                Some(Ok(false)) => {}
                Some(Err(_)) => out.push(format!("--{body}")),
            },
            (_, Some(FlagArity::Value)) => match value.map(str::to_string).or_else(|| args.next()) {
                Some(value) => out.push(format!("--{name}={value}")),
                None => out.push(format!("--{name}")),
            },
            (_, Some(FlagArity::Bool)) => {
                out.push(format!("--{name}={}", value.unwrap_or("true")));
            }
            (_, None) => out.push(format!("--{body}")),
        }
    }
    Ok((out, stray))
}

fn command() -> Command {
    let mut cmd = Command::new("keel")
        .version(VERSION_TEXT)
        .about("Keel: a drop-in replacement for the etcd v3 server")
        .args_override_self(true)
        .disable_help_subcommand(true)
        // Go's flag package has no -V; --version (or -version) is the only spelling.
        .disable_version_flag(true)
        .arg(Arg::new("version").long("version").action(ArgAction::Version).help("Print the version and exit"))
        .after_help(
            "Every flag can also be set by an environment variable: ETCD_ and the flag name in upper \
             snake case (--data-dir is ETCD_DATA_DIR; --storage-engine is KEEL_STORAGE_ENGINE). Flags \
             take precedence over the environment. With --config-file, the YAML file is used and \
             other flags and variables are ignored, as in etcd (except --storage-engine). The other \
             flags of etcd 3.5.16 (discovery, auto TLS, CRLs among them) are accepted and ignored \
             with a warning.",
        );
    for f in KEEL_FLAGS {
        let help = if f.default.is_empty() {
            format!("{} [env: {}]", f.help, env_var(f.name))
        } else {
            format!("{} [default: {}] [env: {}]", f.help, f.default, env_var(f.name))
        };
        cmd = cmd.arg(
            Arg::new(f.name)
                .long(f.name)
                .value_name(match f.kind {
                    Kind::Str => "VALUE",
                    Kind::Urls => "URLS",
                    Kind::Uint | Kind::Int => "N",
                    Kind::Duration => "DURATION",
                })
                .help(help)
                .action(ArgAction::Set)
                .num_args(1)
                .allow_hyphen_values(true),
        );
    }
    for (name, arity) in IGNORED_ETCD_FLAGS {
        let help = CLIENT_TLS_FLAGS
            .iter()
            .position(|f| f == name)
            .map(|i| CLIENT_TLS_HELP[i])
            .or_else(|| PEER_TLS_FLAGS.iter().position(|f| f == name).map(|i| PEER_TLS_HELP[i]));
        let arg = Arg::new(*name).long(*name).hide(help.is_none()).action(ArgAction::Set);
        let arg = match help {
            Some(help) => arg.help(format!("{help} [env: {}]", env_var(name))),
            None => arg,
        };
        cmd = cmd.arg(match arity {
            FlagArity::Value => arg.num_args(1).allow_hyphen_values(true),
            FlagArity::Bool => {
                arg.num_args(0..=1).require_equals(true).default_missing_value("true").value_parser(parse_go_bool)
            }
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(list: &[&str]) -> Vec<String> {
        std::iter::once("keel").chain(list.iter().copied()).map(String::from).collect()
    }

    fn env(list: &[(&str, &str)]) -> HashMap<String, String> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ok(list: &[&str], vars: &[(&str, &str)]) -> (Config, Vec<String>) {
        match parse_from(args(list), &env(vars)) {
            Ok(done) => done,
            Err(e) => panic!("{list:?} {vars:?} failed: {e:#}"),
        }
    }

    fn err(list: &[&str], vars: &[(&str, &str)]) -> String {
        match parse_from(args(list), &env(vars)) {
            Ok((config, _)) => panic!("{list:?} {vars:?} should fail, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn cli_error(list: &[&str]) -> clap::Error {
        let e = parse_from(args(list), &HashMap::new()).expect_err("should fail");
        match e.downcast::<ConfigError>() {
            Ok(ConfigError::Cli(e)) => e,
            other => panic!("expected a clap error, got {other:?}"),
        }
    }

    fn yaml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn path_of(file: &tempfile::NamedTempFile) -> String {
        file.path().to_str().unwrap().to_string()
    }

    fn url(s: &str) -> EtcdUrl {
        EtcdUrl::parse(s).unwrap()
    }

    fn ignored_warning(name: &str) -> String {
        format!("flag --{name} is accepted for etcd compatibility but ignored by keel")
    }

    #[test]
    fn command_definition_is_consistent() {
        assert_eq!(CLIENT_TLS_FLAGS.len(), CLIENT_TLS_HELP.len());
        assert_eq!(PEER_TLS_FLAGS.len(), PEER_TLS_HELP.len());
        for name in CLIENT_TLS_FLAGS.iter().chain(PEER_TLS_FLAGS) {
            assert!(IGNORED_ETCD_FLAGS.iter().any(|(n, _)| n == name), "{name} is parsed as an etcd flag");
        }
        command().debug_assert();
        let mut names: Vec<&str> = all_flag_names().collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a flag is listed twice");
        assert_eq!(IGNORED_ETCD_FLAGS.len(), 100);
        assert!(VERSION_TEXT.ends_with(ETCD_API_VERSION));
    }

    #[test]
    fn defaults() {
        let (config, warnings) = ok(&[], &[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config, Config::default());
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(config.listen_client_urls, vec![url("http://localhost:2379")]);
        assert_eq!(config.advertise_client_urls, vec![url("http://localhost:2379")]);
        assert_eq!(config.listen_peer_urls, vec![url(DEFAULT_PEER_URL)]);
        assert_eq!(config.initial_advertise_peer_urls, vec![url("http://localhost:2380")]);
        assert_eq!(
            config.initial_cluster_members(),
            vec![("default".to_string(), vec!["http://localhost:2380".to_string()])]
        );
        assert_eq!(config.initial_cluster_state, ClusterState::New);
        assert_eq!(config.initial_cluster_token, "etcd-cluster");
        assert_eq!(config.max_request_bytes, 1572864);
        assert_eq!(config.max_txn_ops, 128);
        assert_eq!(config.quota_backend_bytes, 0);
        assert_eq!(config.effective_quota(), 2 * 1024 * 1024 * 1024);
        assert_eq!(config.snapshot_count, 100_000);
        assert_eq!(config.heartbeat_interval(), Duration::from_millis(100));
        assert_eq!(config.election_timeout(), Duration::from_secs(1));
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.logger, Logger::Zap);
        assert_eq!(config.auto_compaction_mode, AutoCompactionMode::Periodic);
        assert_eq!(config.auto_compaction_retention, "0");
        assert_eq!(config.auto_compaction(), None);
        assert_eq!(config.storage_engine, StorageEngine::Redb);
        assert_eq!(config.watch_progress_notify_interval, Duration::from_secs(600));
        assert_eq!(config.grpc_max_recv_bytes(), 1572864 + 512 * 1024);
        assert_eq!(config.client_listen_addrs(), vec!["127.0.0.1:2379".parse().unwrap()]);
        assert_eq!(config.peer_listen_addrs(), vec!["127.0.0.1:2380".parse().unwrap()]);
        assert_eq!(config.config_file, None);
        config.validate().unwrap();
    }

    #[test]
    fn name_drives_data_dir_and_initial_cluster() {
        let (config, _) = ok(&["--name", "n1", "--initial-advertise-peer-urls", "http://10.0.0.1:2380"], &[]);
        assert_eq!(config.data_dir, PathBuf::from("n1.etcd"));
        assert_eq!(
            config.initial_cluster_members(),
            vec![("n1".to_string(), vec!["http://10.0.0.1:2380".to_string()])]
        );
    }

    /// One case per Keel flag: settings to apply together, and a check on the result.
    type Check = fn(&Config);

    type Case = (Vec<(&'static str, &'static str)>, Check);

    fn case(set: Vec<(&'static str, &'static str)>, check: Check) -> Case {
        (set, check)
    }

    fn flag_cases() -> Vec<Case> {
        vec![
            case(vec![("name", "n1")], |c| assert_eq!(c.name, "n1")),
            case(vec![("data-dir", "/var/lib/keel")], |c| assert_eq!(c.data_dir, PathBuf::from("/var/lib/keel"))),
            case(
                vec![
                    ("listen-client-urls", "http://127.0.0.1:32379,https://[::1]:32381"),
                    ("advertise-client-urls", "http://10.0.0.1:32379"),
                    // An https:// listener needs a serving certificate, as in etcd.
                    ("cert-file", "/tls/server.crt"),
                    ("key-file", "/tls/server.key"),
                ],
                |c| {
                    assert!(c.client_tls.has_cert());
                    assert_eq!(
                        c.client_listen_addrs(),
                        vec!["127.0.0.1:32379".parse().unwrap(), "[::1]:32381".parse().unwrap()]
                    );
                    assert!(c.listen_client_urls[1].is_tls());
                    assert_eq!(c.advertise_client_urls, vec![url("http://10.0.0.1:32379")]);
                },
            ),
            case(vec![("advertise-client-urls", "http://node1:2379")], |c| {
                assert_eq!(c.advertise_client_urls, vec![url("http://node1:2379")])
            }),
            case(vec![("listen-peer-urls", "http://0.0.0.0:32380")], |c| {
                assert_eq!(c.peer_listen_addrs(), vec!["0.0.0.0:32380".parse().unwrap()])
            }),
            case(vec![("listen-metrics-urls", "http://127.0.0.1:32381,http://127.0.0.1:32381")], |c| {
                assert_eq!(c.metrics_listen_addrs(), vec!["127.0.0.1:32381".parse().unwrap()])
            }),
            case(vec![("initial-advertise-peer-urls", "http://10.0.0.1:2380")], |c| {
                assert_eq!(c.initial_advertise_peer_urls, vec![url("http://10.0.0.1:2380")]);
                assert_eq!(c.initial_cluster[0].peer_urls, vec![url("http://10.0.0.1:2380")]);
            }),
            case(
                vec![(
                    "initial-cluster",
                    "default=http://localhost:2380,b=http://10.0.0.2:2380,b=http://10.0.0.3:2380",
                )],
                |c| {
                    assert_eq!(
                        c.initial_cluster_members(),
                        vec![
                            ("default".to_string(), vec!["http://localhost:2380".to_string()]),
                            (
                                "b".to_string(),
                                vec!["http://10.0.0.2:2380".to_string(), "http://10.0.0.3:2380".to_string()]
                            ),
                        ]
                    )
                },
            ),
            case(vec![("initial-cluster-state", "existing")], |c| {
                assert_eq!(c.initial_cluster_state, ClusterState::Existing)
            }),
            case(vec![("initial-cluster-token", "tok")], |c| assert_eq!(c.initial_cluster_token, "tok")),
            case(vec![("max-request-bytes", "1048576")], |c| {
                assert_eq!(c.max_request_bytes, 1048576);
                assert_eq!(c.grpc_max_recv_bytes(), 1048576 + 524288);
            }),
            case(vec![("max-txn-ops", "1000")], |c| assert_eq!(c.max_txn_ops, 1000)),
            case(vec![("quota-backend-bytes", "4294967296")], |c| assert_eq!(c.effective_quota(), 4294967296)),
            case(vec![("snapshot-count", "5000")], |c| assert_eq!(c.snapshot_count, 5000)),
            case(vec![("experimental-snapshot-catchup-entries", "10")], |c| assert_eq!(c.snapshot_catchup_entries, 10)),
            case(vec![("heartbeat-interval", "150")], |c| {
                assert_eq!(c.heartbeat_interval(), Duration::from_millis(150))
            }),
            case(vec![("election-timeout", "2500")], |c| assert_eq!(c.election_timeout(), Duration::from_millis(2500))),
            case(vec![("log-level", "debug")], |c| assert_eq!(c.log_level, LogLevel::Debug)),
            case(vec![("logger", "zap")], |c| assert_eq!(c.logger, Logger::Zap)),
            case(vec![("auto-compaction-mode", "revision"), ("auto-compaction-retention", "1000")], |c| {
                assert_eq!(c.auto_compaction(), Some(AutoCompaction::Revision(1000)))
            }),
            case(vec![("auto-compaction-retention", "5m30s")], |c| {
                assert_eq!(c.auto_compaction(), Some(AutoCompaction::Periodic(Duration::from_secs(330))))
            }),
            case(vec![("experimental-watch-progress-notify-interval", "5s")], |c| {
                assert_eq!(c.watch_progress_notify_interval, Duration::from_secs(5))
            }),
            case(vec![("storage-engine", "sled")], |c| assert_eq!(c.storage_engine, StorageEngine::Sled)),
            case(vec![("auth-token", "jwt,sign-method=HS256,priv-key=k")], |c| {
                assert_eq!(c.auth_token, "jwt,sign-method=HS256,priv-key=k")
            }),
            case(vec![("auth-token-ttl", "60")], |c| assert_eq!(c.auth_token_ttl, 60)),
            case(vec![("bcrypt-cost", "4")], |c| assert_eq!(c.bcrypt_cost, 4)),
        ]
    }

    #[test]
    fn every_flag_is_covered_by_the_cases() {
        let cases = flag_cases();
        for f in KEEL_FLAGS.iter().filter(|f| f.name != CONFIG_FILE_FLAG) {
            assert!(cases.iter().any(|(set, _)| set.iter().any(|(n, _)| *n == f.name)), "no case for --{}", f.name);
        }
    }

    #[test]
    fn each_flag_via_command_line_both_shapes() {
        for (set, check) in flag_cases() {
            let joined: Vec<String> = set.iter().map(|(n, v)| format!("--{n}={v}")).collect();
            let joined: Vec<&str> = joined.iter().map(String::as_str).collect();
            let (config, warnings) = ok(&joined, &[]);
            check(&config);
            assert!(warnings.is_empty(), "{warnings:?}");

            let spaced: Vec<String> = set.iter().flat_map(|(n, v)| [format!("--{n}"), v.to_string()]).collect();
            let spaced: Vec<&str> = spaced.iter().map(String::as_str).collect();
            check(&ok(&spaced, &[]).0);

            // Go's flag package also takes a single dash.
            let single: Vec<String> = set.iter().map(|(n, v)| format!("-{n}={v}")).collect();
            let single: Vec<&str> = single.iter().map(String::as_str).collect();
            check(&ok(&single, &[]).0);
        }
    }

    #[test]
    fn each_flag_via_environment() {
        for (set, check) in flag_cases() {
            let vars: Vec<(String, String)> = set.iter().map(|(n, v)| (env_var(n), v.to_string())).collect();
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (config, warnings) = ok(&[], &vars);
            check(&config);
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        assert_eq!(env_var("data-dir"), "ETCD_DATA_DIR");
        assert_eq!(env_var("storage-engine"), "KEEL_STORAGE_ENGINE");
    }

    #[test]
    fn each_flag_via_config_file() {
        for (set, check) in flag_cases() {
            let mut text = String::new();
            for (name, value) in &set {
                // The client TLS keys are strings in the file.
                let kind = KEEL_FLAGS.iter().find(|f| f.name == *name).map_or(Kind::Str, |f| f.kind);
                match kind {
                    Kind::Uint | Kind::Int => text.push_str(&format!("{name}: {value}\n")),
                    _ => text.push_str(&format!("{name}: \"{value}\"\n")),
                }
            }
            let file = yaml_file(&text);
            let path = path_of(&file);
            let (config, warnings) = ok(&["--config-file", &path], &[]);
            check(&config);
            assert!(warnings.is_empty(), "{warnings:?}");
            assert_eq!(config.config_file, Some(PathBuf::from(&path)));
        }
    }

    #[test]
    fn flags_beat_environment() {
        let (config, warnings) = ok(&["--name=a"], &[("ETCD_NAME", "b"), ("ETCD_INITIAL_CLUSTER_TOKEN", "t")]);
        assert_eq!(config.name, "a");
        assert_eq!(config.initial_cluster_token, "t");
        assert_eq!(
            warnings,
            vec!["recognized environment variable ETCD_NAME, but unused: shadowed by corresponding flag"]
        );
        // An empty variable counts as unset, as in etcd.
        let (config, _) = ok(&[], &[("ETCD_NAME", "")]);
        assert_eq!(config.name, "default");
        // The last of a repeated flag wins, as with Go's flag package.
        let (config, _) = ok(&["--name=a", "--name", "b"], &[]);
        assert_eq!(config.name, "b");
    }

    #[test]
    fn config_file_ignores_other_flags_and_environment() {
        let file = yaml_file("name: fromfile\nheartbeat-interval: 50\nstorage-engine: redb\n");
        let path = path_of(&file);
        let (config, warnings) = ok(
            &["--config-file", &path, "--name=fromflag", "--auto-tls", "--storage-engine=sled"],
            &[("ETCD_SNAPSHOT_COUNT", "7"), ("ETCD_NAME", "fromenv")],
        );
        assert_eq!(config.name, "fromfile");
        assert_eq!(config.heartbeat_interval_ms, 50);
        assert_eq!(config.snapshot_count, 100_000);
        // Keel's own flag is not an etcd key, so it still applies next to a file.
        assert_eq!(config.storage_engine, StorageEngine::Sled);
        assert_eq!(
            warnings,
            vec![
                format!("config file {path} is in use, so these command-line flags are ignored (as in etcd): --name, --auto-tls"),
                format!("config file {path} is in use, so these environment variables are ignored (as in etcd): ETCD_NAME, ETCD_SNAPSHOT_COUNT"),
            ]
        );

        // ETCD_CONFIG_FILE selects the file when the flag is absent.
        let (config, _) = ok(&["--name=x"], &[("ETCD_CONFIG_FILE", &path), ("KEEL_STORAGE_ENGINE", "sled")]);
        assert_eq!(config.name, "fromfile");
        assert_eq!(config.storage_engine, StorageEngine::Sled);
        let (config, _) = ok(&[], &[("ETCD_CONFIG_FILE", &path)]);
        assert_eq!(config.storage_engine, StorageEngine::Redb);

        // The flag beats the variable.
        let other = yaml_file("name: other\n");
        let other_path = path_of(&other);
        let (config, _) = ok(&["--config-file", &other_path], &[("ETCD_CONFIG_FILE", &path)]);
        assert_eq!(config.name, "other");

        // A bad flag is still an error with a file, as in etcd.
        let e = parse_from(args(&["--config-file", &path, "--bogus"]), &HashMap::new());
        assert!(e.is_err());
    }

    #[test]
    fn config_file_shapes() {
        // Empty file: all defaults.
        let file = yaml_file("");
        let (config, _) = ok(&["--config-file", &path_of(&file)], &[]);
        assert_eq!(config.name, "default");

        // URL lists as lists, durations as integer nanoseconds (etcd 3.5's encoding), a number
        // for a string option, and the missing-advertise rule not applied to files.
        let file = yaml_file(
            "listen-client-urls:\n  - http://127.0.0.1:32379\n  - http://127.0.0.1:32479\n\
             experimental-watch-progress-notify-interval: 2000000000\n\
             auto-compaction-retention: 2\n",
        );
        let (config, _) = ok(&["--config-file", &path_of(&file)], &[]);
        assert_eq!(config.listen_client_urls.len(), 2);
        assert_eq!(config.advertise_client_urls, vec![url("http://localhost:2379")]);
        assert_eq!(config.watch_progress_notify_interval, Duration::from_secs(2));
        assert_eq!(config.auto_compaction(), Some(AutoCompaction::Periodic(Duration::from_secs(7200))));

        // Ignored etcd keys warn; unknown keys warn; null leaves the default.
        let file =
            yaml_file("enable-pprof: true\nclient-transport-security:\n  cert-file: /x\n  auto-tls: true\nno-such-key: 1\nname: ~\n");
        let path = path_of(&file);
        let (config, warnings) = ok(&["--config-file", &path], &[]);
        assert_eq!(config.name, "default");
        assert_eq!(config.client_tls.cert_file, Some(PathBuf::from("/x")));
        assert_eq!(
            warnings,
            vec![
                "config file key client-transport-security.auto-tls is accepted for etcd compatibility but ignored by keel"
                    .to_string(),
                format!("unknown key \"no-such-key\" in config file {path} is ignored (etcd ignores it too)"),
                ignored_warning("enable-pprof"),
            ]
        );
    }

    #[test]
    fn config_file_errors() {
        let file = yaml_file("max-request-bytes: \"100\"\n");
        let path = path_of(&file);
        assert_eq!(
            err(&["--config-file", &path], &[]),
            format!(
                "invalid config file {path}: max-request-bytes: expected an unsigned integer, found the string \"100\""
            )
        );
        let file = yaml_file("- a\n- b\n");
        assert!(err(&["--config-file", &path_of(&file)], &[]).contains("expected a mapping"));
        let file = yaml_file("name: [unclosed\n");
        assert!(err(&["--config-file", &path_of(&file)], &[]).starts_with("invalid config file"));
        let file = yaml_file("heartbeat-interval: -5\n");
        assert!(err(&["--config-file", &path_of(&file)], &[]).contains("expected an unsigned integer"));
        let file = yaml_file("listen-peer-urls: foo\n");
        let path = path_of(&file);
        assert_eq!(
            err(&["--config-file", &path], &[]),
            format!("invalid value \"foo\" for listen-peer-urls in config file {path}: URL scheme must be http or https: foo")
        );
        assert!(err(&["--config-file", "/nonexistent/keel.yaml"], &[])
            .starts_with("cannot read config file /nonexistent/keel.yaml"));
    }

    #[test]
    fn ignored_etcd_flags_warn_once_each() {
        let (config, warnings) = ok(
            &[
                "--auto-tls",
                "--client-cert-auth=false",
                "--cert-file",
                "/etc/ssl/server.crt",
                "--key-file=/etc/ssl/server.key",
                "-peer-auto-tls",
                "--experimental-initial-corrupt-check=true",
                "--snapshot-count=5",
                "--discovery-srv",
                "-not-a-flag-but-a-value",
                "--enable-v2",
                "--enable-v2=false",
                "-v",
            ],
            &[("ETCD_UNSAFE_NO_FSYNC", "true"), ("ETCD_LISTEN_METRICS_URLS", "http://127.0.0.1:2381")],
        );
        assert_eq!(config.snapshot_count, 5);
        // The client TLS flags are read, not warned about.
        assert_eq!(config.client_tls.cert_file, Some(PathBuf::from("/etc/ssl/server.crt")));
        assert_eq!(config.client_tls.key_file, Some(PathBuf::from("/etc/ssl/server.key")));
        assert!(!config.client_tls.client_cert_auth);
        assert_eq!(config.metrics_listen_addrs(), vec!["127.0.0.1:2381".parse().unwrap()]);
        let mut expected: Vec<String> = [
            "auto-tls",
            "discovery-srv",
            "enable-v2",
            "experimental-initial-corrupt-check",
            "peer-auto-tls",
            "unsafe-no-fsync",
            "v",
        ]
        .iter()
        .map(|n| ignored_warning(n))
        .collect();
        let mut warnings = warnings;
        warnings.sort();
        expected.sort();
        assert_eq!(warnings, expected);
    }

    #[test]
    fn client_tls_settings_and_etcd_checks() {
        let https = "--listen-client-urls=https://127.0.0.1:2379";
        let adv = "--advertise-client-urls=https://127.0.0.1:2379";
        let (config, warnings) = ok(
            &[
                https,
                adv,
                "--cert-file=s.crt",
                "--key-file=s.key",
                "--cipher-suites",
                "A, B",
                "--tls-min-version=TLS1.2",
            ],
            &[("ETCD_CLIENT_CERT_AUTH", "true"), ("ETCD_TRUSTED_CA_FILE", "ca.crt")],
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let tls = &config.client_tls;
        assert!(tls.client_cert_auth && tls.has_cert());
        assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("ca.crt")));
        assert_eq!(tls.cipher_suites, vec!["A".to_string(), "B".to_string()]);
        assert_eq!(tls.min_version.as_deref(), Some("TLS1.2"));
        // Messages as etcd 3.5.16 prints them.
        assert_eq!(
            err(&[https, adv], &[]),
            "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"
        );
        assert_eq!(
            err(&["--tls-max-version=TLS1.1"], &[]),
            "unexpected TLS version \"TLS1.1\" (must be one of: TLS1.2, TLS1.3)"
        );
        assert_eq!(
            err(&["--tls-min-version=TLS1.3", "--tls-max-version=TLS1.2"], &[]),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            err(&["--tls-min-version=TLS1.3", "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"], &[]),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        // The YAML shape: the client-transport-security block plus top-level version and suites.
        let file = yaml_file(
            "client-transport-security:\n  cert-file: a.crt\n  key-file: a.key\n  client-cert-auth: true\n\
             cipher-suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\ntls-max-version: TLS1.3\n",
        );
        let (config, warnings) = ok(&["--config-file", &path_of(&file)], &[]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(config.client_tls.client_cert_auth && config.client_tls.has_cert());
        assert_eq!(config.client_tls.cipher_suites, vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string()]);
        assert_eq!(config.client_tls.max_version.as_deref(), Some("TLS1.3"));
    }

    #[test]
    fn kubeadm_style_manifest() {
        let (config, warnings) = ok(
            &[
                "--advertise-client-urls=https://10.0.0.1:2379",
                "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
                "--client-cert-auth=true",
                "--data-dir=/var/lib/etcd",
                "--experimental-initial-corrupt-check=true",
                "--experimental-watch-progress-notify-interval=5s",
                "--initial-advertise-peer-urls=https://10.0.0.1:2380",
                "--initial-cluster=cp1=https://10.0.0.1:2380",
                "--key-file=/etc/kubernetes/pki/etcd/server.key",
                "--listen-client-urls=https://127.0.0.1:2379,https://10.0.0.1:2379",
                "--listen-metrics-urls=http://127.0.0.1:2381",
                "--listen-peer-urls=https://10.0.0.1:2380",
                "--name=cp1",
                "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt",
                "--peer-client-cert-auth=true",
                "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key",
                "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
                "--snapshot-count=10000",
                "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt",
            ],
            &[],
        );
        assert_eq!(config.name, "cp1");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(
            config.client_listen_addrs(),
            vec!["127.0.0.1:2379".parse().unwrap(), "10.0.0.1:2379".parse().unwrap()]
        );
        assert_eq!(config.peer_listen_addrs(), vec!["10.0.0.1:2380".parse().unwrap()]);
        assert_eq!(config.snapshot_count, 10000);
        assert_eq!(config.watch_progress_notify_interval, Duration::from_secs(5));
        assert_eq!(config.metrics_listen_addrs(), vec!["127.0.0.1:2381".parse().unwrap()]);
        assert_eq!(config.client_tls.cert_file, Some(PathBuf::from("/etc/kubernetes/pki/etcd/server.crt")));
        assert_eq!(config.client_tls.trusted_ca_file, Some(PathBuf::from("/etc/kubernetes/pki/etcd/ca.crt")));
        assert!(config.client_tls.client_cert_auth);
        assert_eq!(config.peer_tls.cert_file, Some(PathBuf::from("/etc/kubernetes/pki/etcd/peer.crt")));
        assert_eq!(config.peer_tls.trusted_ca_file, Some(PathBuf::from("/etc/kubernetes/pki/etcd/ca.crt")));
        assert!(config.peer_tls.client_cert_auth);
        // The client and peer TLS flags and --listen-metrics-urls are acted on: only the corrupt check warns.
        assert_eq!(warnings, vec![ignored_warning("experimental-initial-corrupt-check")]);
    }

    #[test]
    fn peer_tls_settings_and_etcd_checks() {
        let https =
            ["--listen-peer-urls=https://127.0.0.1:2380", "--initial-advertise-peer-urls=https://127.0.0.1:2380"];
        let cluster = "--initial-cluster=default=https://127.0.0.1:2380";
        let (config, warnings) = ok(
            &[
                https[0],
                https[1],
                cluster,
                "--peer-cert-file=p.crt",
                "--peer-key-file=p.key",
                "--peer-trusted-ca-file=ca.crt",
                "--peer-client-cert-auth",
                "--tls-min-version=TLS1.2",
            ],
            &[],
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        let tls = &config.peer_tls;
        assert_eq!(tls.cert_file, Some(PathBuf::from("p.crt")));
        assert_eq!(tls.key_file, Some(PathBuf::from("p.key")));
        assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("ca.crt")));
        assert!(tls.client_cert_auth);
        // The versions and suites are shared by both sides, as in etcd.
        assert_eq!(tls.min_version.as_deref(), Some("TLS1.2"));
        assert_eq!(config.client_tls.min_version.as_deref(), Some("TLS1.2"));
        assert_eq!(config.client_tls.cert_file, None);
        // etcd 3.5.16's start-up error for an https peer listener without a certificate.
        assert_eq!(
            err(&[https[0], https[1], cluster, "--peer-cert-file=p.crt"], &[]),
            "cannot listen on TLS for 127.0.0.1:2380: KeyFile and CertFile are not presented"
        );
        // The environment and the YAML block fill the same settings.
        let (config, _) = ok(&[], &[("ETCD_PEER_CERT_FILE", "e.crt"), ("ETCD_PEER_CLIENT_CERT_AUTH", "true")]);
        assert_eq!(config.peer_tls.cert_file, Some(PathBuf::from("e.crt")));
        assert!(config.peer_tls.client_cert_auth);
        // Messages about one side name that side's flags.
        let (config, _) = ok(&["--peer-cert-file=p.crt", "--peer-key-file=p.key", "--peer-client-cert-auth"], &[]);
        assert_eq!(
            crate::api::tls::server_config(&config.peer_tls).unwrap_err().to_string(),
            "--peer-client-cert-auth needs --peer-trusted-ca-file: keel does not use the system certificate store"
        );
        let file = yaml_file(
            "peer-transport-security:\n  cert-file: y.crt\n  key-file: y.key\n  trusted-ca-file: ca.crt\n  \
             client-cert-auth: true\n  auto-tls: false\nlisten-peer-urls: https://127.0.0.1:2380\n\
             peer-key-file: top.key\n",
        );
        let (config, warnings) = ok(&["--config-file", &path_of(&file)], &[]);
        assert_eq!(config.peer_tls.cert_file, Some(PathBuf::from("y.crt")));
        assert!(warnings.iter().any(|w| w.starts_with("config file key peer-key-file is ignored")), "{warnings:?}");
        assert_eq!(config.peer_tls.key_file, Some(PathBuf::from("y.key")));
        assert!(config.peer_tls.client_cert_auth);
        assert_eq!(config.client_tls, TlsSettings::default());
        assert!(
            warnings.contains(
                &"config file key peer-transport-security.auto-tls is accepted for etcd compatibility but ignored by keel"
                    .to_string()
            ),
            "{warnings:?}"
        );
    }

    #[test]
    fn go_flag_grammar_edges() {
        // A boolean flag does not take the next argument, so it becomes a stray argument.
        assert_eq!(err(&["--auto-tls", "false"], &[]), "'false' is not a valid flag");
        assert_eq!(err(&["--", "--name", "x"], &[]), "'--name' is not a valid flag");
        assert_eq!(err(&["positional"], &[]), "'positional' is not a valid flag");
        assert!(err(&["gateway"], &[]).contains("not supported"));
        assert_eq!(err(&["---name", "x"], &[]), "bad flag syntax: ---name");
        assert_eq!(err(&["-=x"], &[]), "bad flag syntax: -=x");
        // A value flag takes the next argument even when it starts with a dash.
        let file_like = ok(&["--name", "-odd", "--initial-cluster=-odd=http://localhost:2380"], &[]).0;
        assert_eq!(file_like.name, "-odd");
        // A trailing "--" with nothing after it is fine.
        ok(&["--name=a", "--"], &[]);
        // Bad boolean values are refused from flags and variables alike.
        assert_eq!(cli_error(&["--auto-tls=maybe"]).kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(
            err(&[], &[("ETCD_AUTO_TLS", "maybe")]),
            "invalid value \"maybe\" for ETCD_AUTO_TLS: expected a boolean (true or false)"
        );
    }

    #[test]
    fn bogus_flags_are_rejected() {
        assert_eq!(cli_error(&["--bogus-flag"]).kind(), clap::error::ErrorKind::UnknownArgument);
        // As with Go's flag package, a bad flag is reported before a stray argument after it.
        assert_eq!(cli_error(&["--bogus", "x"]).kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(cli_error(&["--bogus=1"]).kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(cli_error(&["-log-format=json"]).kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(cli_error(&["--name"]).kind(), clap::error::ErrorKind::InvalidValue);
        // Unknown ETCD_ variables only warn, as in etcd.
        let (_, warnings) = ok(&[], &[("ETCD_BOGUS", "1"), ("ETCDCTL_API", "3"), ("ETCD_VERSION", "3")]);
        assert_eq!(
            warnings,
            vec![
                "cannot set special environment variable ETCD_VERSION".to_string(),
                "unrecognized environment variable ETCD_BOGUS=1".to_string(),
            ]
        );
    }

    #[test]
    fn version_and_help() {
        let e = cli_error(&["--version"]);
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(e.to_string(), format!("keel {}\netcd API version: 3.5.16\n", env!("CARGO_PKG_VERSION")));
        assert_eq!(cli_error(&["-version"]).kind(), clap::error::ErrorKind::DisplayVersion);
        for shape in ["--help", "-h", "-help"] {
            let e = cli_error(&[shape]);
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
            let text = e.to_string();
            assert!(text.contains("--data-dir"), "{text}");
            assert!(text.contains("ETCD_DATA_DIR"), "{text}");
            assert!(!text.contains("--auto-tls"), "ignored flags stay out of the help");
            assert!(text.contains("--trusted-ca-file") && text.contains("ETCD_CLIENT_CERT_AUTH"), "{text}");
        }
    }

    #[test]
    fn retention_parsing() {
        use AutoCompactionMode::{Periodic, Revision};
        let periodic = |s: &str| parse_retention(Periodic, s).unwrap();
        assert_eq!(periodic("1h"), Some(AutoCompaction::Periodic(Duration::from_secs(3600))));
        assert_eq!(periodic("90"), Some(AutoCompaction::Periodic(Duration::from_secs(90 * 3600))));
        assert_eq!(periodic("5m30s"), Some(AutoCompaction::Periodic(Duration::from_secs(330))));
        assert_eq!(periodic("1.5h"), Some(AutoCompaction::Periodic(Duration::from_secs(5400))));
        assert_eq!(periodic("0"), None);
        assert_eq!(periodic("0s"), None);
        assert_eq!(periodic(""), None);
        assert!(parse_retention(Periodic, "abc").is_err());
        assert!(parse_retention(Periodic, "-1").is_err());
        assert!(parse_retention(Periodic, "-1h").is_err());
        assert_eq!(parse_retention(Revision, "1000").unwrap(), Some(AutoCompaction::Revision(1000)));
        assert_eq!(parse_retention(Revision, "0").unwrap(), None);
        assert!(parse_retention(Revision, "1h").is_err());
        assert!(parse_retention(Revision, "-5").is_err());
        assert_eq!(
            err(&["--auto-compaction-retention=abc"], &[]),
            "error parsing auto-compaction-retention \"abc\": time: invalid duration \"abc\""
        );
        let (config, _) = ok(&["--auto-compaction-retention=90"], &[]);
        assert_eq!(config.auto_compaction(), Some(AutoCompaction::Periodic(Duration::from_secs(324_000))));
    }

    #[test]
    fn go_durations() {
        let d = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(d("10m"), Duration::from_secs(600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("2us"), Duration::from_micros(2));
        assert_eq!(d("2\u{b5}s"), Duration::from_micros(2));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("+1s"), Duration::from_secs(1));
        assert_eq!(d("-0s"), Duration::ZERO);
        assert_eq!(parse_go_duration("").unwrap_err().to_string(), "time: invalid duration \"\"");
        assert_eq!(parse_go_duration("5").unwrap_err().to_string(), "time: missing unit in duration \"5\"");
        assert_eq!(parse_go_duration("5x").unwrap_err().to_string(), "time: unknown unit \"x\" in duration \"5x\"");
        assert!(parse_go_duration("1e3s").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("9999999999h").is_err());
    }

    #[test]
    fn url_parsing() {
        let u = url("https://[::1]:2379");
        assert_eq!(u.host(), "::1");
        assert_eq!(u.port(), 2379);
        assert_eq!(u.scheme(), UrlScheme::Https);
        assert_eq!(u.to_string(), "https://[::1]:2379");
        assert_eq!(url(" HTTP://node1:80 ").to_string(), "http://node1:80");
        assert_eq!(url("http://node1:80").socket_addr(), None);
        assert_eq!(EtcdUrl::parse("foo"), Err(UrlError::Scheme("foo".into())));
        assert_eq!(EtcdUrl::parse("ftp://a:1"), Err(UrlError::Scheme("ftp://a:1".into())));
        assert_eq!(EtcdUrl::parse("unix://a:1"), Err(UrlError::UnixSocket("unix://a:1".into())));
        assert_eq!(EtcdUrl::parse("http://a"), Err(UrlError::HostPort("http://a".into())));
        assert_eq!(EtcdUrl::parse("http://::1:80"), Err(UrlError::HostPort("http://::1:80".into())));
        assert_eq!(EtcdUrl::parse("http://a:x"), Err(UrlError::Port("http://a:x".into())));
        assert_eq!(EtcdUrl::parse("http://a:1/"), Err(UrlError::Path("http://a:1/".into())));
        assert_eq!(EtcdUrl::parse("http://a:1/v3"), Err(UrlError::Path("http://a:1/v3".into())));
        // Repeated URLs collapse, as etcd's unique-URL flags do.
        let (config, _) = ok(&["--listen-peer-urls=http://127.0.0.1:1,http://127.0.0.1:1"], &[]);
        assert_eq!(config.listen_peer_urls.len(), 1);
    }

    #[test]
    fn validation_errors() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--name=zz", "--initial-cluster=default=http://localhost:2380"],
             "couldn't find local name \"zz\" in the initial cluster configuration"),
            (vec!["--heartbeat-interval=0"], "--heartbeat-interval must be >0 (set to 0ms)"),
            (vec!["--election-timeout=0"], "--election-timeout must be >0 (set to 0ms)"),
            (vec!["--heartbeat-interval=600"],
             "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[600ms]"),
            (vec!["--election-timeout=60000"],
             "--election-timeout[60000ms] is too long, and should be set less than 50000ms"),
            (vec!["--listen-client-urls=http://127.0.0.1:2379"],
             "--advertise-client-urls is required when --listen-client-urls is set explicitly"),
            (vec!["--listen-peer-urls=http://example.com:2380"],
             "expected IP in URL for binding (http://example.com:2380)"),
            (vec!["--advertise-client-urls=http://:2379"],
             "--advertise-client-urls \"http://:2379\" must be \"host:port\" (unexpected empty host (http://:2379))"),
            (vec!["--listen-client-urls=foo"],
             "invalid value \"foo\" for flag --listen-client-urls: URL scheme must be http or https: foo"),
            (vec!["--listen-client-urls=http://127.0.0.1:2379/path"],
             "invalid value \"http://127.0.0.1:2379/path\" for flag --listen-client-urls: URL must not contain a path: http://127.0.0.1:2379/path"),
            (vec!["--initial-cluster=default"],
             "invalid value \"default\" for flag --initial-cluster: error setting up initial cluster: URL scheme must be http or https: "),
            (vec!["--initial-cluster-state=foo"],
             "invalid value \"foo\" for flag --initial-cluster-state: valid values are \"new\" and \"existing\""),
            (vec!["--heartbeat-interval=abc"],
             "invalid value \"abc\" for flag --heartbeat-interval: expected an unsigned integer"),
            (vec!["--snapshot-count=-1"],
             "invalid value \"-1\" for flag --snapshot-count: expected an unsigned integer"),
            (vec!["--log-level=loud"],
             "invalid value \"loud\" for flag --log-level: valid levels are debug, info, warn, error, dpanic, panic and fatal"),
            (vec!["--logger=foo"], "unknown logger option \"foo\""),
            (vec!["--auto-compaction-mode=foo"], "unknown auto-compaction-mode \"foo\""),
            (vec!["--storage-engine=rocks"],
             "invalid value \"rocks\" for flag --storage-engine: valid values are \"redb\" and \"sled\""),
            (vec!["--max-txn-ops=0"], "--max-txn-ops must be >0 (set to 0)"),
            (vec!["--max-request-bytes=0"], "--max-request-bytes must be between 1 and 2146959359 (set to 0)"),
            (vec!["--experimental-watch-progress-notify-interval=0"],
             "--experimental-watch-progress-notify-interval must be >0"),
            (vec!["--experimental-watch-progress-notify-interval=10"],
             "invalid value \"10\" for flag --experimental-watch-progress-notify-interval: time: missing unit in duration \"10\""),
            (vec!["--name="], "--name must not be empty"),
            (vec!["--listen-peer-urls="], "--listen-peer-urls must name at least one URL"),
        ];
        for (list, message) in cases {
            assert_eq!(err(&list, &[]), message, "{list:?}");
        }
        assert_eq!(
            err(&[], &[("ETCD_HEARTBEAT_INTERVAL", "abc")]),
            "invalid value \"abc\" for ETCD_HEARTBEAT_INTERVAL: expected an unsigned integer"
        );
    }

    #[test]
    fn accepted_with_warnings() {
        let (config, warnings) = ok(&["--logger=capnslog", "--log-level=fatal"], &[]);
        assert_eq!(config.logger, Logger::Capnslog);
        assert_eq!(config.log_level, LogLevel::Error);
        assert_eq!(warnings.len(), 2, "{warnings:?}");

        let (config, warnings) = ok(&["--quota-backend-bytes=-1"], &[]);
        assert_eq!(config.effective_quota(), u64::MAX);
        assert!(warnings.is_empty());
        let (_, warnings) = ok(&["--quota-backend-bytes=17179869184", "--max-request-bytes=33554432"], &[]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");

        let (config, _) = ok(&["--snapshot-count=0"], &[]);
        assert_eq!(config.snapshot_count, 100_000);
        let (config, _) = ok(&["--data-dir="], &[]);
        assert_eq!(config.data_dir, PathBuf::from("default.etcd"));
        // An empty --config-file names no file, as in etcd.
        let (config, _) = ok(&["--config-file="], &[]);
        assert_eq!(config.config_file, None);
    }

    #[test]
    fn validate_on_a_hand_built_config() {
        let mut config = Config::default();
        config.validate().unwrap();
        config.name = "other".to_string();
        assert!(config.validate().is_err());
        config.initial_cluster[0].name = "other".to_string();
        config.validate().unwrap();
        config.auto_compaction_retention = "nonsense".to_string();
        assert!(config.validate().is_err());
        assert_eq!(config.auto_compaction(), None);
    }
}
