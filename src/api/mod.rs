//! THE EDGE: one file per etcd service. Handlers only decode, validate, call `propose` or `read`,
//! and map errors (through `status.rs`).

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod downgrade;
pub mod election;
pub mod gateway;
pub mod header;
pub mod health;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod pending;
pub mod quota;
pub mod status;
pub mod tls;
pub mod validate;
pub mod watch;
pub mod watch_wire;

use std::sync::Arc;

use tonic::service::Routes;

use crate::node::Node;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer,
};
use crate::proto::health::health_server::HealthServer;
use crate::proto::v3electionpb::election_server::ElectionServer;
use crate::proto::v3lockpb::lock_server::LockServer;

/// Every etcd service, with etcd's message size limits: requests up to `max_recv` bytes
/// (`--max-request-bytes` + 512 KiB), responses of any size.
pub fn routes(node: Arc<Node>, max_recv: usize) -> Routes {
    macro_rules! limited {
        ($svc:expr) => {
            $svc.max_decoding_message_size(max_recv).max_encoding_message_size(usize::MAX)
        };
    }
    Routes::new(limited!(KvServer::new(kv::KvService::new(node.clone()))))
        .add_service(watch_wire::WatchGrpc::new(watch::WatchService::new(node.clone()), max_recv))
        .add_service(limited!(LeaseServer::new(lease::LeaseService::new(node.clone()))))
        .add_service(limited!(ClusterServer::new(cluster::ClusterService::new(node.clone()))))
        .add_service(limited!(MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))))
        .add_service(limited!(AuthServer::new(auth::AuthService::new(node.clone()))))
        .add_service(limited!(LockServer::new(lock::LockService::new(node.clone()))))
        .add_service(limited!(ElectionServer::new(election::ElectionService::new(node.clone()))))
        .add_service(HealthServer::new(health::HealthService))
}
