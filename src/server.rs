//! Boot and graceful shutdown (mini-redis style `run(config, shutdown)`): learn this member's ids
//! (computed for a new cluster, asked of the cluster when joining, stored for restarts), open
//! storage, start raft and the peer service, wait for a leader, publish this member's name and
//! client URLs, mount the services on every client listener, serve until `shutdown` resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::apply::applier::Applier;
use crate::config::{ClusterState, Config};
use crate::lease_clock::{LeaseClock, LeaseSettings};
use crate::membership::MemberChange;
use crate::node::{self, Limits, MemberInfo, Node};
use crate::raft::network::{PeerChannels, PeerNetwork};
use crate::raft::types::PeerNode;
use crate::raft::{self, RaftSettings};

/// A started server: where it listens, and how to wait for it to stop.
pub struct Running {
    pub client_addrs: Vec<SocketAddr>,
    /// Where `--listen-metrics-urls` listeners are bound (empty without that flag).
    pub metrics_addrs: Vec<SocketAddr>,
    pub node: Arc<Node>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Wait until the server has stopped (after the shutdown future resolved) and flushed.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }
}

/// Run until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    start(config, shutdown).await?.stopped().await
}

/// Bind, boot and start serving; returns once the server is ready for clients.
pub async fn start(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<Running> {
    // TLS settings are checked before anything binds, so a bad certificate fails the start.
    let https: Vec<bool> =
        config.listen_client_urls.iter().filter(|u| u.socket_addr().is_some()).map(|u| u.is_tls()).collect();
    let acceptor = crate::api::tls::acceptor(&config.client_tls, https.contains(&true))?;
    let peer_https: Vec<bool> =
        config.listen_peer_urls.iter().filter(|u| u.socket_addr().is_some()).map(|u| u.is_tls()).collect();
    let peer_acceptor = crate::api::tls::acceptor(&config.peer_tls, peer_https.contains(&true))?;
    let peer_client_tls = crate::api::tls::peer_client_config(&config.peer_tls)?;
    // Only other members are dialed: a lone https member starts without a CA, as etcd does.
    let dialed_https = config
        .initial_cluster
        .iter()
        .flat_map(|m| &m.peer_urls)
        .find(|u| u.is_tls() && !config.initial_advertise_peer_urls.contains(u));
    if let (Some(url), None) = (dialed_https, &peer_client_tls) {
        return Err(crate::error::TlsError::PeerDialWithoutCa(url.to_string()).into());
    }
    let listeners = bind_all(&config.client_listen_addrs()).await?;
    let client_addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let metrics_listeners = bind_all(&config.metrics_listen_addrs()).await?;
    let metrics_addrs: Vec<SocketAddr> = metrics_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    // Peers must reach raft before this member can take part in an election, so the peer port is
    // bound (and served, below) before waiting for a leader.
    let peer_listeners = bind_all(&config.peer_listen_addrs()).await?;

    let data_dir = PathBuf::from(&config.data_dir);
    let channels = PeerChannels::new(peer_client_tls);
    let boot = identity(&config, &data_dir, &channels).await?;
    channels.set_cluster_id(boot.cluster_id);

    let kind: crate::storage::EngineKind = config.storage_engine.as_str().parse()?;
    let engine = crate::storage::open(kind, &data_dir.join("member").join("db"))
        .with_context(|| format!("open storage in {}", data_dir.display()))?;
    let applier = Arc::new(Applier::open(engine.clone()).context("open mvcc store")?);
    let tokens =
        crate::auth::token::TokenProvider::from_flags(&config.auth_token, Duration::from_secs(config.auth_token_ttl))
            .context("--auth-token")?;
    applier.auth().configure(tokens, config.bcrypt_cost);

    let settings = RaftSettings {
        heartbeat: config.heartbeat_interval(),
        election_timeout: config.election_timeout(),
        snapshot_count: config.snapshot_count,
        catchup_entries: config.snapshot_catchup_entries,
    };
    let network = PeerNetwork { channels: channels.clone() };
    let (raft, log_store) =
        raft::start(boot.member_id, boot.bootstrap, &data_dir, applier.clone(), network, &settings).await?;
    let (member_id, cluster_id) = (boot.member_id, boot.cluster_id);

    let limits = Limits {
        max_request_bytes: config.max_request_bytes as usize,
        max_txn_ops: config.max_txn_ops as usize,
        request_timeout: Duration::from_secs(5) + 2 * config.election_timeout(),
        watch_progress_notify_interval: config.watch_progress_notify_interval,
        election_timeout: config.election_timeout(),
        quota_bytes: config.effective_quota(),
    };
    let lease_settings = LeaseSettings::new(config.heartbeat_interval(), config.election_timeout());
    let leases = Arc::new(LeaseClock::new(applier.lessor().clone(), lease_settings));
    let node = Arc::new(Node {
        member_id,
        cluster_id,
        name: config.name.clone(),
        limits,
        raft_metrics: raft.metrics(),
        raft,
        applier,
        log_store,
        request_ids: Default::default(),
        db_size: Default::default(),
        read_batcher: Default::default(),
        leader_calls: Default::default(),
        leases,
        stopping: tokio::sync::watch::channel(false).0,
        peer_channels: channels,
        leader_contact: Default::default(),
    });
    crate::metrics::watch_leader_changes(&node);
    let peer_listeners =
        peer_listeners.into_iter().zip(peer_https).map(|(l, tls)| (l, tls.then(|| peer_acceptor.clone()).flatten()));
    let peers = spawn_peer_server(node.clone(), peer_listeners.collect());
    // A single member elects itself at once; a member of a larger cluster waits for its peers as
    // long as it takes, as etcd does.
    let patience = if config.initial_cluster.len() > 1 || boot.joining { None } else { Some(Duration::from_secs(30)) };
    wait_for_leader(&node, patience).await?;
    publish(&node, &config).await;
    // Lease expiry is the leader's job; the task follows leadership from here on.
    node.leases.start(node.clone());

    spawn_storage_sync(node.clone());
    if let Some(policy) = config.auto_compaction() {
        crate::auto_compact::spawn(&node, policy);
    }

    let services = crate::api::routes(node.clone(), config.grpc_max_recv_bytes());
    let metrics_app = crate::api::gateway::metrics_router(services.clone(), node.clone());
    // etcd takes a client certificate's CN as the user only with --client-cert-auth (`AuthInfoFromTLS`
    // is skipped otherwise, even though --trusted-ca-file alone already demands certificates).
    let routes = crate::api::gateway::client_router(services, node.clone(), config.client_tls.client_cert_auth);
    // One stream of plain and TLS connections (TLS for the https:// URLs), TCP_NODELAY on each.
    let listeners = listeners.into_iter().zip(https).map(|(l, tls)| (l, tls.then(|| acceptor.clone()).flatten()));
    let incoming = crate::api::tls::incoming(listeners.collect(), "client");
    let metrics_tasks: Vec<_> = metrics_listeners
        .into_iter()
        .map(|listener| {
            let app = metrics_app.clone();
            tokio::spawn(async move { axum::serve(listener, app).await })
        })
        .collect();
    let serving_node = node.clone();
    let stopping = node.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.stopping.send_replace(true);
    };
    let task = tokio::spawn(async move {
        // etcd's client port speaks HTTP/1.1 (gateway, /health, /metrics) beside gRPC's HTTP/2.
        let served = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(Some(Duration::from_secs(2 * 60 * 60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(crate::api::learner::LearnerGuard::layer(serving_node.clone()))
            .layer(crate::metrics::GrpcMetricsLayer)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        for metrics_task in &metrics_tasks {
            metrics_task.abort();
        }
        let stopped = shut_down(&serving_node).await;
        peers.abort();
        served.context("serve clients")?;
        stopped
    });
    tracing::info!(
        name = %config.name,
        member_id = %format!("{member_id:x}"),
        cluster_id = %format!("{cluster_id:x}"),
        addrs = ?client_addrs,
        metrics_addrs = ?metrics_addrs,
        "ready to serve client requests"
    );
    Ok(Running { client_addrs, metrics_addrs, node, task })
}

async fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        out.push(TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))?);
    }
    Ok(out)
}

async fn wait_for_leader(node: &Node, limit: Option<Duration>) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let mut next_note = started + Duration::from_secs(5);
    while node.raft_status().leader.is_none() {
        if let Some(limit) = limit.filter(|l| started.elapsed() > *l) {
            anyhow::bail!("no raft leader elected within {limit:?}");
        }
        if tokio::time::Instant::now() > next_note {
            tracing::warn!(waited = ?started.elapsed(), "no raft leader yet; waiting for peers");
            next_note += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// This member's ids and, for the first boot of a new cluster, the initial membership.
struct Identity {
    member_id: u64,
    cluster_id: u64,
    bootstrap: Option<BTreeMap<u64, PeerNode>>,
    /// Joining an existing cluster (`--initial-cluster-state existing`) for the first time.
    joining: bool,
}

/// Where the ids are kept once known: a joining member's come from the cluster, not from its
/// flags, so a restart must not recompute them.
const IDENTITY_FILE: &str = "identity.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIdentity {
    member_id: u64,
    cluster_id: u64,
}

/// etcd's ids: a new cluster computes every member's id from `--initial-cluster` and the token; a
/// member joining an existing one asks the listed peers for the cluster and finds itself there by
/// its peer URLs (etcd's `GetClusterFromRemotePeers`); a restarted member reuses what it stored.
async fn identity(config: &Config, data_dir: &std::path::Path, channels: &PeerChannels) -> anyhow::Result<Identity> {
    let path = data_dir.join("member").join(IDENTITY_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        let stored: StoredIdentity =
            serde_json::from_slice(&bytes).with_context(|| format!("read {}", path.display()))?;
        return Ok(Identity {
            member_id: stored.member_id,
            cluster_id: stored.cluster_id,
            bootstrap: None,
            joining: false,
        });
    }
    let token = &config.initial_cluster_token;
    // Identical on every member (no per-member client URLs: those are published after boot).
    let mut initial = BTreeMap::new();
    for (name, peer_urls) in config.initial_cluster_members() {
        let id = node::member_id(&peer_urls, token);
        initial.insert(id, PeerNode { name, peer_urls, client_urls: Vec::new() });
    }
    let me = initial
        .iter()
        .find(|(_, m)| m.name == config.name)
        .map(|(id, _)| *id)
        .with_context(|| format!("--name {} is not in --initial-cluster", config.name))?;
    let identity = match config.initial_cluster_state {
        ClusterState::New => {
            let cluster_id = node::cluster_id(&initial.keys().copied().collect::<Vec<_>>());
            Identity { member_id: me, cluster_id, bootstrap: Some(initial), joining: false }
        }
        ClusterState::Existing => {
            let mine: Vec<String> = config.initial_advertise_peer_urls.iter().map(|u| u.to_string()).collect();
            let others: Vec<PeerNode> = initial.into_iter().filter(|(id, _)| *id != me).map(|(_, n)| n).collect();
            let (member_id, cluster_id) = join(&others, &mine, channels).await?;
            Identity { member_id, cluster_id, bootstrap: None, joining: true }
        }
    };
    std::fs::create_dir_all(path.parent().unwrap_or(data_dir))?;
    let stored = StoredIdentity { member_id: identity.member_id, cluster_id: identity.cluster_id };
    std::fs::write(&path, serde_json::to_vec(&stored)?).with_context(|| format!("write {}", path.display()))?;
    Ok(identity)
}

/// Ask the existing members for the cluster until one answers; find this member (added before
/// with MemberAdd) by its peer URLs.
async fn join(peers: &[PeerNode], my_peer_urls: &[String], channels: &PeerChannels) -> anyhow::Result<(u64, u64)> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let started = tokio::time::Instant::now();
    loop {
        for peer in peers {
            let Ok(mut client) = channels.client(peer) else { continue };
            let asked = client.cluster(tonic::Request::new(crate::proto::keelpeer::Payload::default()));
            let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), asked).await else { continue };
            let Ok((cluster_id, members)) =
                crate::raft::network::decode::<(u64, Vec<MemberInfo>)>(&answer.into_inner())
            else {
                continue;
            };
            let mut mine = my_peer_urls.to_vec();
            mine.sort();
            let me = members.iter().find(|m| {
                let mut urls = m.peer_urls.clone();
                urls.sort();
                urls == mine
            });
            return match me {
                Some(m) => Ok((m.id, cluster_id)),
                None => anyhow::bail!(
                    "this member's peer URLs {my_peer_urls:?} are not in the cluster; add it with MemberAdd first"
                ),
            };
        }
        if started.elapsed() > PATIENCE {
            anyhow::bail!("could not reach any member of the existing cluster within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Record this member's name and client URLs in the replicated membership (etcd's `publish`),
/// now if the cluster lets us within a request timeout, else retried in the background.
async fn publish(node: &Arc<Node>, config: &Config) {
    let name = config.name.clone();
    let client_urls: Vec<String> = config.advertise_client_urls.iter().map(|u| u.to_string()).collect();
    let published = {
        let node = node.clone();
        move || node.members().iter().any(|m| m.id == node.member_id && m.name == name && m.client_urls == client_urls)
    };
    let change = MemberChange::Publish {
        id: node.member_id,
        name: config.name.clone(),
        client_urls: config.advertise_client_urls.iter().map(|u| u.to_string()).collect(),
    };
    let attempt = {
        let node = node.clone();
        let change = change.clone();
        move || {
            let node = node.clone();
            let change = change.clone();
            async move { crate::membership::change(&node, change).await }
        }
    };
    if published() {
        return;
    }
    if let Err(e) = attempt().await {
        tracing::warn!(error = %e, "publishing this member's attributes failed; retrying in the background");
        let weak = Arc::downgrade(node);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if weak.upgrade().is_none() || published() {
                    return;
                }
                if attempt().await.is_ok() {
                    return;
                }
            }
        });
    }
}

/// Serve the peer service until the returned task is aborted (after raft stopped): plain on
/// `http://` peer URLs, TLS on `https://` ones (certificates required and verified when a peer
/// trusted CA or `--peer-client-cert-auth` is set, as etcd does).
fn spawn_peer_server(
    node: Arc<Node>,
    listeners: Vec<(TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
) -> tokio::task::JoinHandle<()> {
    let incoming = crate::api::tls::incoming(listeners, "peer");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(crate::metrics::PeerMetricsLayer)
            .add_service(crate::raft::peer_service::server(node))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "peer service stopped");
        }
    })
}

/// Move applied writes from the write buffer into the engine every 50 ms, and make them durable
/// every second. Correctness does not depend on either (the WAL replays what storage lost), but the
/// buffer must not grow without bound, redb only reclaims freed pages at durable commits, and a
/// shorter replay makes restarts faster.
fn spawn_storage_sync(node: Arc<Node>) {
    const FLUSH_EVERY: Duration = Duration::from_millis(50);
    const FLUSHES_PER_SYNC: u32 = 20;
    let weak = Arc::downgrade(&node);
    drop(node);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tick.tick().await;
            ticks = ticks.wrapping_add(1);
            let Some(node) = weak.upgrade() else { return };
            let applier = node.applier.clone();
            drop(node);
            let durable = ticks.is_multiple_of(FLUSHES_PER_SYNC);
            let done = tokio::task::spawn_blocking(move || {
                // etcd's backend commit: the batch reaching the engine (and, every second, disk).
                let began = std::time::Instant::now();
                let done =
                    if durable { applier.engine().sync().map_err(crate::error::Error::from) } else { applier.flush() };
                crate::metrics::BACKEND_COMMIT.observe(began.elapsed());
                done
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "background storage flush failed"),
                Err(e) => tracing::error!(error = %e, "background storage flush task failed"),
            }
        }
    });
}

/// Stop raft, then make what it applied durable and stop the WAL writer.
async fn shut_down(node: &Node) -> anyhow::Result<()> {
    // Before raft stops: the last remaining-TTL checkpoint goes through the log.
    node.leases.stop(node).await;
    node.raft.shutdown().await.map_err(|e| anyhow::anyhow!("raft shutdown: {e}"))?;
    node.engine().sync().context("sync storage")?;
    node.log_store.close();
    tracing::info!("stopped");
    Ok(())
}
