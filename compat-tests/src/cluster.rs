//! Multi-member clusters of etcd 3.5.16 or Keel as child processes, on loopback ports, each member
//! in its own temporary directory, stopped by the pid of the child this harness started.
//!
//! Peer URLs are the caller's to choose: a member listens on `listen_peer_url` and the cluster
//! reaches it at `advertise_peer_url`, so a fault injector can advertise a proxy's address and
//! forward to the real one. [`ClusterSpec::local`] picks free ports with no proxy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::kv_client::KvClient;
use keel::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel::proto::etcdserverpb::{RangeRequest, StatusRequest, StatusResponse};
use tonic::transport::Channel;

use crate::server::{connect, etcd_bin_dir, keel_bin, open_log, stop_child, HarnessError, ServerKind};

/// How long every member of a new cluster gets to answer its first linearizable Range.
pub const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member's name and addresses.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    pub name: String,
    pub client_url: String,
    pub listen_peer_url: String,
    /// What the other members dial (a proxy's URL, or `listen_peer_url`).
    pub advertise_peer_url: String,
    /// Flags for this member only, after the cluster's (the last of a repeated flag wins, in etcd
    /// and Keel alike), e.g. another member's certificate.
    pub extra_args: Vec<String>,
}

/// A cluster to start: who is in it, and flags for every member.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub kind: ServerKind,
    pub members: Vec<MemberSpec>,
    pub token: String,
    /// Flags appended to the standard ones for every member (e.g. `--snapshot-count=50`).
    pub extra_args: Vec<String>,
}

impl ClusterSpec {
    /// `n` members named `m0`, `m1`, … on free loopback ports, peers dialled directly.
    pub fn local(kind: ServerKind, n: usize) -> Result<ClusterSpec, HarnessError> {
        let mut members = Vec::new();
        let mut held = Vec::new();
        for i in 0..n {
            // Hold every port until all are picked so that no two coincide.
            let client =
                std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding port 0", e))?;
            let peer = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| HarnessError::io("binding port 0", e))?;
            let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
            let client_port = port(&client).map_err(|e| HarnessError::io("reading a bound port", e))?;
            let peer_port = port(&peer).map_err(|e| HarnessError::io("reading a bound port", e))?;
            held.push(client);
            held.push(peer);
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            members.push(MemberSpec {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{client_port}"),
                listen_peer_url: peer_url.clone(),
                advertise_peer_url: peer_url,
                extra_args: Vec::new(),
            });
        }
        drop(held);
        Ok(ClusterSpec { kind, members, token: "keel-compat-cluster".to_string(), extra_args: Vec::new() })
    }

    pub fn with_args(mut self, args: &[&str]) -> ClusterSpec {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Every member's peer URLs with `https://` instead of `http://` (for peer TLS).
    pub fn with_https_peers(mut self) -> ClusterSpec {
        for m in &mut self.members {
            for url in [&mut m.listen_peer_url, &mut m.advertise_peer_url] {
                *url = url.replacen("http://", "https://", 1);
            }
        }
        self
    }

    /// The same cluster on other free ports (schemes, names and flags kept); None when a member's
    /// peers dial it through something else (a proxy), whose address this cannot move.
    fn with_fresh_ports(&self) -> Result<Option<ClusterSpec>, HarnessError> {
        if self.members.iter().any(|m| m.listen_peer_url != m.advertise_peer_url) {
            return Ok(None);
        }
        let fresh = ClusterSpec::local(self.kind, self.members.len())?;
        let mut moved = self.clone();
        for (m, f) in moved.members.iter_mut().zip(&fresh.members) {
            let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_string();
            let scheme = |url: &str| url.split("://").next().unwrap_or("http").to_string();
            m.client_url = format!("{}://127.0.0.1:{}", scheme(&m.client_url), port(&f.client_url));
            m.listen_peer_url = format!("{}://127.0.0.1:{}", scheme(&m.listen_peer_url), port(&f.listen_peer_url));
            m.advertise_peer_url = m.listen_peer_url.clone();
        }
        Ok(Some(moved))
    }

    /// `--initial-cluster` for these members.
    pub fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.name, m.advertise_peer_url)).collect::<Vec<_>>().join(",")
    }
}

/// One member process (running, or down between kill and restart).
pub struct Member {
    pub spec: MemberSpec,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `new` or `existing`, and the `--initial-cluster` it was started with.
    state: String,
    initial_cluster: String,
}

impl Member {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("member.log")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `127.0.0.1:<port>`, as etcdctl's `--endpoints` takes it.
    pub fn client_addr(&self) -> String {
        self.spec.client_url.trim_start_matches("http://").to_string()
    }
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Start every member of `spec` as a new cluster and wait until each serves a linearizable read.
    /// A port picked free can be taken before the member binds it (any outgoing connection on the
    /// machine may get it as its local port); a cluster that lost such a race starts again on
    /// other ports, at most twice.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let mut spec = spec;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut cluster = Cluster::spawn(spec.clone())?;
            let mut outcome = Ok(());
            for i in 0..cluster.members.len() {
                outcome = cluster.wait_ready(i, CLUSTER_START_TIMEOUT).await;
                if outcome.is_err() {
                    break;
                }
            }
            match outcome {
                Ok(()) => return Ok(cluster),
                Err(e) if attempts < 3 && cluster.lost_a_port() => match spec.with_fresh_ports()? {
                    Some(moved) => {
                        eprintln!("cluster: a port was taken before a member bound it, starting again: {e}");
                        spec = moved;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether some member could not listen because its address was in use.
    fn lost_a_port(&self) -> bool {
        self.members.iter().any(|m| {
            std::fs::read_to_string(m.log_path()).is_ok_and(|log| log.to_lowercase().contains("address already in use"))
        })
    }

    /// Start every member of `spec` as a new cluster without waiting for it to work (for clusters
    /// meant to lack a quorum).
    pub fn spawn(spec: ClusterSpec) -> Result<Cluster, HarnessError> {
        let initial = spec.initial_cluster();
        let mut cluster = Cluster { spec: spec.clone(), members: Vec::new() };
        for m in &spec.members {
            let dir = tempfile::Builder::new()
                .prefix(&format!("keel-cluster-{}-{}-", spec.kind, m.name))
                .tempdir()
                .map_err(|e| HarnessError::io("creating a temp dir", e))?;
            cluster.members.push(Member {
                spec: m.clone(),
                dir,
                child: None,
                state: "new".to_string(),
                initial_cluster: initial.clone(),
            });
        }
        for i in 0..cluster.members.len() {
            cluster.spawn_member(i)?;
        }
        Ok(cluster)
    }

    /// Start a further member that joins the running cluster (`--initial-cluster-state existing`);
    /// it must have been added with MemberAdd first. Returns its index.
    pub async fn join(&mut self, spec: MemberSpec) -> Result<usize, HarnessError> {
        let mut initial: Vec<String> =
            self.members.iter().map(|m| format!("{}={}", m.spec.name, m.spec.advertise_peer_url)).collect();
        initial.push(format!("{}={}", spec.name, spec.advertise_peer_url));
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-cluster-{}-{}-", self.spec.kind, spec.name))
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir", e))?;
        self.members.push(Member {
            spec,
            dir,
            child: None,
            state: "existing".to_string(),
            initial_cluster: initial.join(","),
        });
        let i = self.members.len() - 1;
        self.spawn_member(i)?;
        Ok(i)
    }

    /// Comma-separated client addresses of the running members.
    pub fn endpoints(&self) -> String {
        self.members.iter().filter(|m| m.is_running()).map(Member::client_addr).collect::<Vec<_>>().join(",")
    }

    fn spawn_member(&mut self, i: usize) -> Result<(), HarnessError> {
        let binary = match self.spec.kind {
            ServerKind::Etcd => etcd_bin_dir().join("etcd"),
            ServerKind::Keel => keel_bin(),
        };
        if !binary.is_file() {
            return Err(HarnessError::Other(format!("{} binary not found at {}", self.spec.kind, binary.display())));
        }
        let m = &mut self.members[i];
        let log_path = m.log_path();
        let (log, log_err) = open_log(&log_path)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--name")
            .arg(&m.spec.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(&m.spec.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.spec.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.spec.listen_peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.spec.advertise_peer_url)
            .arg("--initial-cluster")
            .arg(&m.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.spec.token)
            .arg("--initial-cluster-state")
            .arg(&m.state)
            .args(&self.spec.extra_args)
            .args(&m.spec.extra_args)
            .current_dir(m.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(&key);
            }
        }
        let child = cmd.spawn().map_err(|e| HarnessError::io(format!("spawning {}", binary.display()), e))?;
        m.child = Some(child);
        Ok(())
    }

    /// Wait until member `i` answers a linearizable Range (it has a leader and has caught up).
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt made");
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.members[i].child = None;
                    return Err(self.start_failed(i, format!("process exited with {status}")));
                }
            }
            if Instant::now() > deadline {
                return Err(self.start_failed(i, format!("not ready within {timeout:?}: {last}")));
            }
            match self.kv(i).await {
                Ok(mut kv) => {
                    let probe = RangeRequest { key: b"cluster-readiness-probe".to_vec(), ..Default::default() };
                    match tokio::time::timeout(Duration::from_secs(2), kv.range(probe)).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(s)) => last = format!("{:?}: {}", s.code(), s.message()),
                        Err(_) => last = "Range timed out".to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn start_failed(&self, i: usize, reason: String) -> HarnessError {
        let log = std::fs::read_to_string(self.members[i].log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        // A failed start ends in an error and its backtrace: the error itself may be above the tail.
        let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("Error:") || l.contains("Caused by")).collect();
        HarnessError::Other(format!(
            "{} member {} did not start: {reason}\n--- errors ---\n{}\n--- log tail ---\n{}",
            self.spec.kind,
            self.members[i].spec.name,
            errors.join("\n"),
            tail.join("\n")
        ))
    }

    pub async fn kv(&self, i: usize) -> Result<KvClient<Channel>, HarnessError> {
        Ok(KvClient::new(connect(&self.members[i].spec.client_url).await?))
    }

    pub async fn maintenance(&self, i: usize) -> Result<MaintenanceClient<Channel>, HarnessError> {
        Ok(MaintenanceClient::new(connect(&self.members[i].spec.client_url).await?))
    }

    /// Status of member `i`.
    pub async fn status(&self, i: usize) -> Result<StatusResponse, HarnessError> {
        let mut m = self.maintenance(i).await?;
        m.status(StatusRequest {}).await.map(|r| r.into_inner()).map_err(|s| HarnessError::Other(s.to_string()))
    }

    /// The index of the member that leads, as the running members report it (None if they do not
    /// agree on one running member).
    pub async fn leader(&self) -> Option<usize> {
        let mut seen = None;
        for (i, m) in self.members.iter().enumerate() {
            if !m.is_running() {
                continue;
            }
            let status = self.status(i).await.ok()?;
            let header = status.header?;
            if status.leader == 0 {
                return None;
            }
            if status.leader == header.member_id {
                seen = Some(i);
            }
        }
        seen
    }

    /// Wait until the running members agree on a running leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader().await {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Other(format!("no leader within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL member `i` (by its pid) and reap it.
    pub fn kill9(&mut self, i: usize) -> Result<(), HarnessError> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().map_err(|e| HarnessError::io(format!("killing pid {}", child.id()), e))?;
            child.wait().map_err(|e| HarnessError::io(format!("reaping pid {}", child.id()), e))?;
        }
        Ok(())
    }

    /// Stop member `i` gracefully (SIGTERM to its pid, SIGKILL after a grace period).
    pub async fn stop(&mut self, i: usize) -> Result<(), HarnessError> {
        if let Some(child) = self.members[i].child.take() {
            stop_child(child).await;
        }
        Ok(())
    }

    /// Start member `i` again on its data directory (after `kill9` or `stop`), without waiting.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        if self.members[i].is_running() {
            return Ok(());
        }
        self.spawn_member(i)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::env::var_os("KEEL_COMPAT_KEEP").is_some();
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            if keep {
                let path = m.dir.path().to_path_buf();
                std::mem::forget(std::mem::replace(
                    &mut m.dir,
                    tempfile::tempdir().unwrap_or_else(|_| tempfile::TempDir::new_in(&path).expect("temp dir")),
                ));
                eprintln!("compat: kept {} member {} dir {}", self.spec.kind, m.spec.name, path.display());
            }
        }
    }
}
