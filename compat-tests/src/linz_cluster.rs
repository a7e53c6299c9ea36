//! A small N-member cluster starter for the linearizability tests: etcd 3.5.16 or Keel started with
//! etcd's static-bootstrap flags (`--initial-cluster`, `--initial-advertise-peer-urls`, ...), each member
//! advertising the address of its own peer proxy (see [`crate::proxy`]) so the tests can partition,
//! delay, pause and kill members. Processes are stopped by the pid of the child this harness started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use keel::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel::proto::etcdserverpb::StatusRequest;

use crate::proxy::{self, PeerNetwork};
use crate::server::{
    connect, etcd_bin_dir, file_tail, free_port, keel_bin, probe_range, server_command, HarnessError, ServerKind,
    START_TIMEOUT,
};

/// Raft timing for the tests: etcd's defaults are 100 ms / 1000 ms; a shorter election keeps the
/// fault scenarios short while staying well above scheduling noise on two shared cores.
const HEARTBEAT_MS: u32 = 100;
const ELECTION_MS: u32 = 1000;
/// Lines of a member log quoted in start-up errors.
const LOG_TAIL_LINES: usize = 30;

/// One member: its ports, data directory, and (while running) its process.
struct Member {
    name: String,
    client_port: u16,
    /// The port the member really listens on for peers; peers reach it through its proxy.
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// A running cluster of one implementation.
pub struct Cluster {
    kind: ServerKind,
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    net: PeerNetwork,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `size` fresh members of `kind` and waits until each answers a linearizable Range.
    pub async fn start(kind: ServerKind, size: usize) -> Result<Cluster, HarnessError> {
        // Ports come from free_port, released before the members bind them: retry the whole start if
        // another process took one meanwhile.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Cluster::try_start(kind, size).await {
                Err(HarnessError::StartFailed { tail, .. })
                    if attempt < 3 && tail.to_lowercase().contains("address already in use") =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_start(kind: ServerKind, size: usize) -> Result<Cluster, HarnessError> {
        let binary = match kind {
            ServerKind::Etcd => etcd_bin_dir().join("etcd"),
            ServerKind::Keel => keel_bin(),
        };
        if !binary.is_file() {
            return Err(HarnessError::BinaryMissing {
                what: if kind == ServerKind::Etcd { "etcd" } else { "keel" },
                path: binary,
                hint: "set KEEL_ETCD_BIN_DIR / KEEL_BIN",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("keel-linz-{kind}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temp dir", e))?;
        let mut net = PeerNetwork::new(size);
        let mut members = Vec::new();
        let mut initial = Vec::new();
        for i in 0..size {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let target: SocketAddr = ([127, 0, 0, 1], peer_port).into();
            let proxy = net.add_proxy(target).await?;
            let name = format!("m{i}");
            initial.push(format!("{name}=http://{proxy}"));
            let member_dir = dir.path().join(&name);
            std::fs::create_dir_all(&member_dir).map_err(|e| HarnessError::io("creating a member dir", e))?;
            members.push(Member { name, client_port, peer_port, dir: member_dir, child: None, paused: false });
        }
        let token = format!("linz-{}", std::process::id());
        let mut cluster =
            Cluster { kind, binary, members, initial_cluster: initial.join(","), token, net, _dir: Some(dir) };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// `http://127.0.0.1:<client port>` of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// The peer network (proxies) between the members.
    pub fn net(&self) -> &PeerNetwork {
        &self.net
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Keeps the members' directories (data and logs) after the cluster is dropped; returns the path.
    pub fn keep_dir(&mut self) -> Option<PathBuf> {
        self._dir.take().map(|d| d.keep())
    }

    /// Log file of member `i` (appended across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.members[i].dir.join("member.log")
    }

    fn spawn(&mut self, i: usize) -> Result<(), HarnessError> {
        let log_path = self.log_path(i);
        let m = &self.members[i];
        let client_url = format!("http://127.0.0.1:{}", m.client_port);
        let data_dir = m.dir.join("data");
        // A restarted member finds its data dir and ignores the bootstrap flags, as etcd documents.
        let mut cmd = server_command(&self.binary, &m.dir, &log_path)?;
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer_port))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.net.proxy_addr(i)))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT_MS.to_string())
            .arg("--election-timeout")
            .arg(ELECTION_MS.to_string());
        let child = cmd.spawn().map_err(|e| HarnessError::io(format!("spawning {}", self.binary.display()), e))?;
        self.net.set_pid(i, Some(child.id()));
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Waits until member `i` answers a linearizable Range (so it has a leader and is caught up).
    async fn wait_ready(&mut self, i: usize) -> Result<(), HarnessError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let endpoint = self.endpoint(i);
        let mut last = String::from("no attempt made");
        loop {
            if let Some(child) = self.members[i].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("process exited with {status}");
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            match probe_range(&endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = self.log_path(i);
        Err(HarnessError::StartFailed {
            kind: self.kind,
            reason: format!("member {} not ready: {last}", self.members[i].name),
            tail: file_tail(&log, LOG_TAIL_LINES),
            log,
        })
    }

    /// SIGKILLs member `i` (by its pid) and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<(), HarnessError> {
        self.net.set_pid(i, None);
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().map_err(|e| HarnessError::io(format!("killing pid {}", child.id()), e))?;
            child.wait().map_err(|e| HarnessError::io(format!("reaping pid {}", child.id()), e))?;
        }
        self.members[i].paused = false;
        Ok(())
    }

    /// Starts a killed member again on its data dir and waits until it serves linearizable reads.
    pub async fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        self.wait_ready(i).await
    }

    /// SIGSTOPs member `i`.
    pub fn pause(&mut self, i: usize) -> Result<(), HarnessError> {
        let pid = self.pid(i).ok_or_else(|| HarnessError::Other(format!("member {i} is not running")))?;
        proxy::pause(pid)?;
        self.members[i].paused = true;
        Ok(())
    }

    /// SIGCONTs member `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), HarnessError> {
        let pid = self.pid(i).ok_or_else(|| HarnessError::Other(format!("member {i} is not running")))?;
        proxy::resume(pid)?;
        self.members[i].paused = false;
        Ok(())
    }

    /// Index of the member the live members agree is leader, if they answer within a few seconds.
    pub async fn leader(&self) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let mut ids = vec![None; self.size()];
            let mut leader = None;
            for (i, id) in ids.iter_mut().enumerate() {
                if self.members[i].child.is_none() || self.members[i].paused {
                    continue;
                }
                if let Ok(status) = status(&self.endpoint(i)).await {
                    *id = Some(status.0);
                    if status.1 != 0 {
                        leader = Some(status.1);
                    }
                }
            }
            if let Some(found) = leader.and_then(|l| ids.iter().position(|id| *id == Some(l))) {
                return Some(found);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Directory of member `i` (its data dir and log).
    pub fn member_dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("KEEL_COMPAT_KEEP").is_some() {
            if let Some(dir) = self.keep_dir() {
                eprintln!("linz: kept cluster dir {}", dir.display());
            }
        }
    }
}

/// (own member id, leader id) from Maintenance.Status.
async fn status(endpoint: &str) -> Result<(u64, u64), String> {
    let mut m = MaintenanceClient::new(connect(endpoint).await.map_err(|e| e.to_string())?);
    match tokio::time::timeout(Duration::from_secs(1), m.status(StatusRequest {})).await {
        Ok(Ok(resp)) => {
            let resp = resp.into_inner();
            Ok((resp.header.map(|h| h.member_id).unwrap_or(0), resp.leader))
        }
        Ok(Err(s)) => Err(s.message().to_string()),
        Err(_) => Err("Status timed out".to_string()),
    }
}
