//! THE EDGE: one file per etcd service. Handlers only decode, validate, call `propose` or `read`,
//! and map errors (through `status.rs`).

pub mod auth;
pub mod cluster;
pub mod coalesce;
pub mod concurrency;
pub mod downgrade;
pub mod election;
pub mod gateway;
pub mod header;
pub mod health;
pub mod kv;
pub mod learner;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod quota;
pub mod status;
pub mod tls;
pub mod validate;
pub mod watch;
pub mod watch_wire;

/// A server stream as the generated service traits want it.
pub type BoxStream<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;

use crate::node::Node;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use crate::proto::health::health_server::HealthServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;

/// etcd's "require leader" metadata (`clientv3.WithRequireLeader`): `hasleader: true`.
const REQUIRE_LEADER_KEY: &str = "hasleader";
const REQUIRE_LEADER_VALUE: &str = "true";

/// Whether the caller asked to fail rather than wait when there is no leader.
pub fn requires_leader(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.get(REQUIRE_LEADER_KEY).is_some_and(|v| v.as_bytes() == REQUIRE_LEADER_VALUE.as_bytes())
}

/// etcd's unary and stream interceptors: with `hasleader`, a call made while this member knows no
/// leader fails at once with `etcdserver: no leader` instead of waiting for an election.
fn leader_check(node: Arc<Node>) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |request: tonic::Request<()>| {
        if requires_leader(request.metadata()) && node.raft_status().leader.is_none() {
            return Err(status::to_status(crate::error::Error::NoLeader));
        }
        Ok(request)
    }
}

/// Every etcd service, with etcd's message size limits: requests up to `max_recv` bytes
/// (`--max-request-bytes` + 512 KiB), responses of any size.
pub fn routes(node: Arc<Node>, max_recv: usize) -> Routes {
    macro_rules! limited {
        ($svc:expr) => {
            InterceptedService::new(
                $svc.max_decoding_message_size(max_recv).max_encoding_message_size(usize::MAX),
                leader_check(node.clone()),
            )
        };
    }
    Routes::new(limited!(KvServer::new(kv::KvService::new(node.clone()))))
        // Watch checks `hasleader` itself (it also ends open streams that lose the leader).
        .add_service(watch_wire::WatchGrpc::new(watch::WatchService::new(node.clone()), max_recv))
        .add_service(limited!(LeaseServer::new(lease::LeaseService::new(node.clone()))))
        .add_service(limited!(ClusterServer::new(cluster::ClusterService::new(node.clone()))))
        .add_service(limited!(MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))))
        .add_service(limited!(AuthServer::new(auth::AuthService::new(node.clone()))))
        .add_service(limited!(LockServer::new(lock::LockService::new(node.clone()))))
        .add_service(limited!(ElectionServer::new(election::ElectionService::new(node.clone()))))
        .add_service(HealthServer::new(health::HealthService))
}
