//! Server processes under test: the reference etcd 3.5.16 and the Keel binary, started with etcd's own
//! flags on loopback ports of their own, each in a private temporary directory, and stopped by the pid
//! of the child this harness started (never by name).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::lease_client::LeaseClient;
use keel::proto::etcdserverpb::RangeRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a server gets to answer its first Range after being spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for any single RPC the harness makes.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the child is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Both servers get the same member name, so that etcdctl output naming it compares equal.
pub const MEMBER_NAME: &str = "compat";
/// Lines of the server log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 40;

/// Failures of the harness itself (as opposed to differences between servers).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} binary not found at {path} ({hint})")]
    BinaryMissing { what: &'static str, path: PathBuf, hint: &'static str },
    #[error("i/o error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    StartFailed { kind: ServerKind, reason: String, log: PathBuf, tail: String },
    #[error("could not connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io { context: context.into(), source }
    }
}

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Etcd,
    Keel,
}

impl std::fmt::Display for ServerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerKind::Etcd => "etcd",
            ServerKind::Keel => "keel",
        })
    }
}

impl ServerKind {
    /// `KEEL_COMPAT_CANDIDATE=etcd|keel` overrides `default` (handy to re-prove the harness on etcd).
    pub fn from_env_or(default: ServerKind) -> ServerKind {
        match std::env::var("KEEL_COMPAT_CANDIDATE").as_deref() {
            Ok("etcd") => ServerKind::Etcd,
            Ok("keel") => ServerKind::Keel,
            _ => default,
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Directory holding etcd, etcdctl and etcdutl 3.5.16.
pub fn etcd_bin_dir() -> PathBuf {
    match std::env::var_os("KEEL_ETCD_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join(".tools/etcd/usr/bin"),
    }
}

/// Path of the stock etcdctl 3.5.16.
pub fn etcdctl_path() -> PathBuf {
    etcd_bin_dir().join("etcdctl")
}

/// Path of the Keel server binary.
pub fn keel_bin() -> PathBuf {
    match std::env::var_os("KEEL_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => workspace_root().join("target/debug/keel"),
    }
}

/// Sends signal `name` (`TERM`, `STOP`, `CONT`, ...) to exactly process `pid`. std can only send
/// SIGKILL; the shell's builtin `kill` sends any signal to one pid.
pub fn send_signal(pid: u32, name: &str) -> Result<(), HarnessError> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| HarnessError::io(format!("sending SIG{name} to pid {pid}"), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(HarnessError::Other(format!("kill -s {name} {pid} failed: {status}")))
    }
}

/// Asks the kernel for a free loopback port. The listener is closed before the server binds it, so
/// another process could take it meanwhile; [`Server::start`] retries with new ports if that happens.
pub fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding port 0", e))?;
    let port = listener.local_addr().map_err(|e| HarnessError::io("reading a bound port", e))?.port();
    Ok(port)
}

/// Two distinct free ports (client, peer).
fn free_port_pair() -> Result<(u16, u16), HarnessError> {
    // Holding the first listener while asking for the second keeps the two from coinciding.
    let first = TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding port 0", e))?;
    let client = first.local_addr().map_err(|e| HarnessError::io("reading a bound port", e))?.port();
    let peer = free_port()?;
    drop(first);
    Ok((client, peer))
}

/// Last `lines` lines of a file, for error messages; never fails.
pub fn file_tail(path: &Path, lines: usize) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Connects a channel to `endpoint` with harness timeouts on connect and on every request.
pub async fn connect(endpoint: &str) -> Result<Channel, HarnessError> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| HarnessError::Connect { endpoint: endpoint.to_string(), reason: e.to_string() })?;
    dial(ep, endpoint).await
}

async fn dial(ep: Endpoint, endpoint: &str) -> Result<Channel, HarnessError> {
    let ep = ep.connect_timeout(Duration::from_secs(2)).timeout(RPC_TIMEOUT);
    match tokio::time::timeout(Duration::from_secs(3), ep.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(HarnessError::Connect { endpoint: endpoint.to_string(), reason: format!("{e:?}") }),
        Err(_) => {
            Err(HarnessError::Connect { endpoint: endpoint.to_string(), reason: "connect timed out".to_string() })
        }
    }
}

/// The PEM files a TLS client presents: the CA that signed the server, and optionally its own
/// certificate and key (for servers started with `--client-cert-auth` or `--trusted-ca-file`).
#[derive(Clone, Debug)]
pub struct TlsClientFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsClientFiles {
    /// The `etcdctl` flags for these files.
    pub fn etcdctl_args(&self) -> Vec<String> {
        let mut out = vec![format!("--cacert={}", self.ca.display())];
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            out.push(format!("--cert={}", cert.display()));
            out.push(format!("--key={}", key.display()));
        }
        out
    }

    /// tonic's client TLS configuration for these files (server name `localhost`, which the
    /// certificates of `scripts/gen-certs.sh` carry).
    pub fn tonic_config(&self) -> Result<ClientTlsConfig, HarnessError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| HarnessError::io(format!("reading {}", p.display()), e));
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?)).domain_name("localhost");
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}

/// Like [`connect`], over TLS with `files`.
pub async fn connect_tls(endpoint: &str, files: &TlsClientFiles) -> Result<Channel, HarnessError> {
    let failed = |reason: String| HarnessError::Connect { endpoint: endpoint.to_string(), reason };
    let ep = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| failed(e.to_string()))?
        .tls_config(files.tonic_config()?)
        .map_err(|e| failed(e.to_string()))?;
    dial(ep, endpoint).await
}

/// One linearizable Range on `endpoint`: Ok once the server answers it (so it has a leader).
pub async fn probe_range(endpoint: &str) -> Result<(), String> {
    let channel = connect(endpoint).await.map_err(|e| e.to_string())?;
    probe_range_on(channel).await
}

async fn probe_range_on(channel: Channel) -> Result<(), String> {
    let mut kv = KvClient::new(channel);
    let request = RangeRequest { key: b"compat-readiness-probe".to_vec(), ..Default::default() };
    match tokio::time::timeout(Duration::from_secs(2), kv.range(request)).await {
        Ok(Ok(_)) => Ok(()),
        // A server restored with auth enabled refuses the anonymous probe: it is serving.
        Ok(Err(status)) if status.message() == "etcdserver: user name is empty" => Ok(()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err("Range timed out".to_string()),
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (read from /proc: the listening
/// sockets' inodes, then the process's descriptors). Where /proc cannot be read, assume it does.
pub fn listens_on(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port =
                fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|h| u16::from_str_radix(h, 16).ok());
            if fields.get(3) == Some(&LISTEN) && local_port == Some(port) {
                if let Some(inode) = fields.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return !readable };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// A command for a server binary that runs in `dir` and appends its stdout and stderr to
/// `log_path`. Configuration must come from flags only, identically for both servers, so etcd's
/// `ETCD_*` environment variables are removed.
pub fn server_command(binary: &Path, dir: &Path, log_path: &Path) -> Result<Command, HarnessError> {
    let (log, log_err) = open_log(log_path)?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir).stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(&key);
        }
    }
    Ok(cmd)
}

/// A fresh set of test certificates from `scripts/gen-certs.sh` (CA, server, peer, client and a
/// second CA's client) in a temporary directory.
pub fn gen_certs() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("keel-tls-certs-").tempdir().expect("temp dir");
    let status = Command::new("bash")
        .arg(workspace_root().join("scripts/gen-certs.sh"))
        .arg(dir.path())
        .stderr(Stdio::null())
        .status()
        .expect("running gen-certs.sh");
    assert!(status.success(), "gen-certs.sh failed");
    dir
}

/// Runs a one-member server binary directly (no readiness probe, no port retries) with
/// `client_scheme` / `peer_scheme` URLs on free ports, and waits for it to exit on its own, as a
/// start-up failure does; returns the exit success and the whole log.
pub fn run_to_exit(kind: ServerKind, client_scheme: &str, peer_scheme: &str, flags: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = match kind {
        ServerKind::Etcd => etcd_bin_dir().join("etcd"),
        ServerKind::Keel => keel_bin(),
    };
    let log = dir.path().join("server.log");
    let client = format!("{client_scheme}://127.0.0.1:{}", free_port().expect("free port"));
    let peer = format!("{peer_scheme}://127.0.0.1:{}", free_port().expect("free port"));
    let mut child = server_command(&binary, dir.path(), &log)
        .expect("server command")
        .args(["--data-dir", "data", "--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .arg(format!("--initial-cluster=default={peer}"))
        .args(flags)
        .spawn()
        .expect("spawning the server");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{kind} kept running: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), std::fs::read_to_string(&log).unwrap_or_default())
}

/// A child's log file, opened for appending (kept across restarts), as its stdout and stderr.
pub(crate) fn open_log(path: &Path) -> Result<(File, File), HarnessError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::io(format!("opening {}", path.display()), e))?;
    let log_err = log.try_clone().map_err(|e| HarnessError::io("duplicating the log handle", e))?;
    Ok((log, log_err))
}

/// Stops a child this harness started: SIGTERM to its pid, SIGKILL after a grace period; reaped.
pub async fn stop_child(mut child: Child) {
    let pid = child.id();
    let _ = send_signal(pid, "TERM");
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// A running (or stopped, between restarts) server process owned by this harness.
pub struct Server {
    kind: ServerKind,
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Extra environment for the child (e.g. `KEEL_STORAGE_ENGINE`).
    env: Vec<(String, String)>,
    /// Flags appended to the standard ones (both servers take etcd's flag names).
    extra_args: Vec<String>,
    /// Set for a server whose client URL is `https://`: what the harness's own clients present.
    tls: Option<TlsClientFiles>,
}

impl Server {
    /// Starts the reference etcd from `$KEEL_ETCD_BIN_DIR`.
    pub async fn etcd() -> Result<Server, HarnessError> {
        Server::start(ServerKind::Etcd).await
    }

    /// Starts the Keel binary from `$KEEL_BIN`.
    pub async fn keel() -> Result<Server, HarnessError> {
        Server::start(ServerKind::Keel).await
    }

    /// Starts the Keel binary with extra environment variables (kept across restarts).
    pub async fn keel_with_env(env: &[(&str, &str)]) -> Result<Server, HarnessError> {
        Server::start_with_env(ServerKind::Keel, env).await
    }

    /// Starts a fresh single-member server of the given kind with an empty data directory.
    pub async fn start(kind: ServerKind) -> Result<Server, HarnessError> {
        Server::start_prepared(kind, &[], &mut |_, _| Ok(())).await
    }

    /// Starts a fresh server with extra environment variables (kept across restarts).
    pub async fn start_with_env(kind: ServerKind, env: &[(&str, &str)]) -> Result<Server, HarnessError> {
        Server::start_prepared(kind, env, &mut |_, _| Ok(())).await
    }

    /// Like [`Server::start`], with extra etcd flags (e.g. `--experimental-watch-progress-notify-interval=1s`).
    pub async fn start_with(kind: ServerKind, extra_args: &[&str]) -> Result<Server, HarnessError> {
        Server::start_full(kind, &[], extra_args, &mut |_, _| Ok(())).await
    }

    /// Starts a server whose client URL is `https://`, with `extra_args` carrying its TLS flags
    /// (`--cert-file`...); the harness's readiness probe and clients connect with `client`.
    pub async fn start_tls(
        kind: ServerKind,
        client: TlsClientFiles,
        extra_args: &[&str],
    ) -> Result<Server, HarnessError> {
        Server::start_inner(kind, &[], extra_args, Some(client), &mut |_, _| Ok(())).await
    }

    /// Starts a server on a data directory that `prepare` builds first (e.g. by restoring a
    /// snapshot), given the data directory (not yet existing) and the peer URL the server will use.
    /// Called again, on a clean directory, if the start is retried on new ports.
    pub async fn start_prepared(
        kind: ServerKind,
        env: &[(&str, &str)],
        prepare: &mut (dyn FnMut(&Path, &str) -> Result<(), HarnessError> + Send),
    ) -> Result<Server, HarnessError> {
        Server::start_full(kind, env, &[], prepare).await
    }

    /// The one constructor behind the others: environment, extra flags, and a data-dir preparer.
    async fn start_full(
        kind: ServerKind,
        env: &[(&str, &str)],
        extra_args: &[&str],
        prepare: &mut (dyn FnMut(&Path, &str) -> Result<(), HarnessError> + Send),
    ) -> Result<Server, HarnessError> {
        Server::start_inner(kind, env, extra_args, None, prepare).await
    }

    async fn start_inner(
        kind: ServerKind,
        env: &[(&str, &str)],
        extra_args: &[&str],
        tls: Option<TlsClientFiles>,
        prepare: &mut (dyn FnMut(&Path, &str) -> Result<(), HarnessError> + Send),
    ) -> Result<Server, HarnessError> {
        let binary = match kind {
            ServerKind::Etcd => etcd_bin_dir().join("etcd"),
            ServerKind::Keel => keel_bin(),
        };
        if !binary.is_file() {
            return Err(HarnessError::BinaryMissing {
                what: match kind {
                    ServerKind::Etcd => "etcd",
                    ServerKind::Keel => "keel",
                },
                path: binary,
                hint: match kind {
                    ServerKind::Etcd => "run scripts/install-test-deps.sh or set KEEL_ETCD_BIN_DIR",
                    ServerKind::Keel => "run `cargo build` or set KEEL_BIN",
                },
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-compat-{kind}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir", e))?;
        let dir_path = dir.path().to_path_buf();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let mut server = Server {
            kind,
            binary,
            dir: Some(dir),
            dir_path,
            client_port: 0,
            peer_port: 0,
            child: None,
            env,
            extra_args,
            tls,
        };
        // A port picked by free_port_pair can be taken by someone else before the server binds it:
        // only that failure is retried, with new ports and a clean data directory.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (client, peer) = free_port_pair()?;
            server.client_port = client;
            server.peer_port = peer;
            prepare(&server.data_dir(), &server.peer_url())?;
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(err) => {
                    // The whole log, not the tail: an error can be followed by many lines.
                    let port_clash = matches!(&err, HarnessError::StartFailed { log, .. }
                        if std::fs::read_to_string(log).is_ok_and(|text| text.to_ascii_lowercase().contains("address already in use")));
                    if !port_clash || attempt >= 3 {
                        return Err(err);
                    }
                    server.kill_child();
                    let data = server.data_dir();
                    if data.exists() {
                        std::fs::remove_dir_all(&data).map_err(|e| HarnessError::io("clearing the data dir", e))?;
                    }
                }
            }
        }
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// `http://127.0.0.1:<client port>` (`https://` for a server started by [`Server::start_tls`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// A channel to the client port, over TLS when the server serves it.
    pub async fn channel(&self) -> Result<Channel, HarnessError> {
        match &self.tls {
            Some(files) => connect_tls(&self.endpoint(), files).await,
            None => connect(&self.endpoint()).await,
        }
    }

    /// `127.0.0.1:<client port>`, the form etcdctl's `--endpoints` takes.
    pub fn client_addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Pid of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir_path.join("data")
    }

    /// File receiving the child's stdout and stderr (appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir_path.join("server.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log_path(), lines)
    }

    /// Keeps the temporary directory after the server is dropped (for post-mortems); returns it.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            return dir.keep();
        }
        self.dir_path.clone()
    }

    /// A KV client on a fresh channel, with no response size limit (values may be large).
    pub async fn kv(&self) -> Result<KvClient<Channel>, HarnessError> {
        Ok(KvClient::new(self.channel().await?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// A Watch client on a fresh channel (its own HTTP/2 connection), with no response size limit
    /// and no per-call deadline (watch streams live as long as the test wants).
    pub async fn watch(&self) -> Result<keel::proto::etcdserverpb::watch_client::WatchClient<Channel>, HarnessError> {
        let endpoint = self.endpoint();
        let failed = |reason: String| HarnessError::Connect { endpoint: endpoint.clone(), reason };
        let ep = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| failed(e.to_string()))?
            .connect_timeout(Duration::from_secs(2));
        let channel = match tokio::time::timeout(Duration::from_secs(3), ep.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(failed(format!("{e:?}"))),
            Err(_) => return Err(failed("connect timed out".to_string())),
        };
        Ok(keel::proto::etcdserverpb::watch_client::WatchClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// A Lease client on a fresh channel.
    pub async fn lease(&self) -> Result<LeaseClient<Channel>, HarnessError> {
        Ok(LeaseClient::new(self.channel().await?))
    }

    /// SIGKILLs the child (by its pid) and reaps it; the server stays down until [`Server::restart`].
    pub fn kill9(&mut self) -> Result<(), HarnessError> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(|e| HarnessError::io(format!("killing pid {}", child.id()), e))?;
            child.wait().map_err(|e| HarnessError::io(format!("reaping pid {}", child.id()), e))?;
        }
        Ok(())
    }

    /// Stops the child gracefully (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        if let Some(child) = self.child.take() {
            stop_child(child).await;
        }
        Ok(())
    }

    /// Stops the server if it runs, then starts it again on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await?;
        self.spawn_and_wait().await
    }

    /// Spawns the child with etcd's flags and waits until a Range answers.
    async fn spawn_and_wait(&mut self) -> Result<(), HarnessError> {
        let log_path = self.log_path();
        let client_url = self.endpoint();
        let peer_url = self.peer_url();
        let mut cmd = server_command(&self.binary, &self.dir_path, &log_path)?;
        cmd.arg("--name")
            .arg(MEMBER_NAME)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER_NAME}={peer_url}"))
            .args(&self.extra_args);
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().map_err(|e| HarnessError::io(format!("spawning {}", self.binary.display()), e))?;
        self.child = Some(child);
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(reason) => {
                self.kill_child();
                Err(HarnessError::StartFailed {
                    kind: self.kind,
                    reason,
                    log: log_path.clone(),
                    tail: file_tail(&log_path, LOG_TAIL_LINES),
                })
            }
        }
    }

    /// Polls with a Range until the server answers one, the child exits, or START_TIMEOUT passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_error = String::from("no attempt made");
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => return Err(format!("process exited with {status}")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("waiting on the process: {e}")),
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no Range answered within {START_TIMEOUT:?}; last error: {last_error}"));
            }
            match self.probe().await {
                // The port may have been taken by another test's server between our picking it and
                // our server binding it: then that one answers while ours is still failing to
                // start, and the test would run against it. Only our own listener counts.
                Ok(()) if !self.child_listens() => last_error = "another process answered on our port".to_string(),
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn child_listens(&self) -> bool {
        self.child.as_ref().is_none_or(|child| listens_on(child.id(), self.client_port))
    }

    async fn probe(&self) -> Result<(), String> {
        probe_range_on(self.channel().await.map_err(|e| e.to_string())?).await
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_child();
        if std::env::var_os("KEEL_COMPAT_KEEP").is_some() {
            let kept = self.keep_dir();
            eprintln!("compat: kept {} dir {}", self.kind, kept.display());
        }
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    /// The readiness check's ownership test: our own listener is found, a port we do not hold is not.
    #[test]
    fn a_process_listening_on_a_port_is_told_apart_from_one_that_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        let other = free_port().unwrap();
        assert!(!listens_on(std::process::id(), other));
    }
}
