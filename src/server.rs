//! Boot and graceful shutdown (mini-redis style `run(config, shutdown)`): open storage, start raft,
//! mount the services on every client listener, serve until `shutdown` resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::apply::applier::Applier;
use crate::config::Config;
use crate::lease_clock::{LeaseClock, LeaseSettings};
use crate::node::{self, Limits, MemberInfo, Node};
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
    let acceptor = crate::api::tls::client_acceptor(&config.client_tls, https.contains(&true))?;
    let listeners = bind_all(&config.client_listen_addrs()).await?;
    let client_addrs: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let metrics_listeners = bind_all(&config.metrics_listen_addrs()).await?;
    let metrics_addrs: Vec<SocketAddr> = metrics_listeners.iter().filter_map(|l| l.local_addr().ok()).collect();

    let token = config.initial_cluster_token.clone();
    let mut members = Vec::new();
    for (name, peer_urls) in config.initial_cluster_members() {
        let id = node::member_id(&peer_urls, &token);
        let client_urls = if name == config.name {
            config.advertise_client_urls.iter().map(|u| u.to_string()).collect()
        } else {
            Vec::new()
        };
        members.push(MemberInfo { id, name, peer_urls, client_urls, is_learner: false });
    }
    let me = members
        .iter()
        .find(|m| m.name == config.name)
        .cloned()
        .with_context(|| format!("--name {} is not in --initial-cluster", config.name))?;
    let cluster_id = node::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());

    let data_dir = PathBuf::from(&config.data_dir);
    let kind: crate::storage::EngineKind = config.storage_engine.as_str().parse()?;
    let engine = crate::storage::open(kind, &data_dir.join("member").join("db"))
        .with_context(|| format!("open storage in {}", data_dir.display()))?;
    let applier = Arc::new(Applier::open(engine.clone()).context("open mvcc store")?);
    let tokens =
        crate::auth::token::TokenProvider::from_flags(&config.auth_token, Duration::from_secs(config.auth_token_ttl))
            .context("--auth-token")?;
    applier.auth().configure(tokens, config.bcrypt_cost);

    let peer = |m: &MemberInfo| PeerNode {
        name: m.name.clone(),
        peer_urls: m.peer_urls.clone(),
        client_urls: m.client_urls.clone(),
    };
    let initial: BTreeMap<u64, PeerNode> = members.iter().map(|m| (m.id, peer(m))).collect();
    let settings = RaftSettings {
        heartbeat: config.heartbeat_interval(),
        election_timeout: config.election_timeout(),
        snapshot_count: config.snapshot_count,
    };
    let (raft, log_store) = raft::start(me.id, peer(&me), initial, &data_dir, applier.clone(), &settings).await?;

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
        member_id: me.id,
        cluster_id,
        name: config.name.clone(),
        members,
        limits,
        raft,
        applier,
        log_store,
        request_ids: Default::default(),
        db_size: Default::default(),
        read_batcher: Default::default(),
        leases,
        stopping: tokio::sync::watch::channel(false).0,
    });
    crate::metrics::watch_leader_changes(&node);
    wait_for_leader(&node, Duration::from_secs(30)).await?;
    // Lease expiry is the leader's job; the task follows leadership from here on.
    node.leases.start(node.clone());

    spawn_storage_sync(node.clone());
    if let Some(policy) = config.auto_compaction() {
        crate::auto_compact::spawn(&node, policy);
    }

    let services = crate::api::routes(node.clone(), config.grpc_max_recv_bytes());
    let metrics_app = crate::api::gateway::metrics_router(services.clone(), node.clone());
    let routes = crate::api::gateway::client_router(services, node.clone());
    // One stream of plain and TLS connections (TLS for the https:// URLs), TCP_NODELAY on each.
    let listeners = listeners.into_iter().zip(https).map(|(l, tls)| (l, tls.then(|| acceptor.clone()).flatten()));
    let incoming = crate::api::tls::incoming(listeners.collect());
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
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        for metrics_task in &metrics_tasks {
            metrics_task.abort();
        }
        let stopped = shut_down(&serving_node).await;
        served.context("serve clients")?;
        stopped
    });
    tracing::info!(
        name = %config.name,
        member_id = %format!("{:x}", me.id),
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

async fn wait_for_leader(node: &Node, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while node.raft_status().leader.is_none() {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("no raft leader elected within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
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
