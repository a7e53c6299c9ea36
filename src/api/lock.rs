//! The Lock service (etcd 3.5.16's `v3lock`): Lock waits in line under `<name>/` with the
//! caller's lease (`concurrency.rs` holds the recipe); Unlock deletes the key it returned. Both
//! run as the calling user, and every failure reaches the client as etcd's do (`to_recipe_status`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::concurrency::{self, Caller};
use crate::api::status::to_recipe_status;
use crate::node::Node;
use crate::proto::v3lockpb::{lock_server::Lock, LockRequest, LockResponse, UnlockRequest, UnlockResponse};

pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    pub fn new(node: Arc<Node>) -> Self {
        LockService { node }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    /// Blocks until the lock is held; a cancelled call gives its place up (etcd deletes the key).
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let caller = Caller::of(&metadata);
        let (header, key) =
            concurrency::lock(&self.node, &caller, &req.name, req.lease).await.map_err(to_recipe_status)?;
        Ok(Response::new(LockResponse { header: Some(header), key }))
    }

    /// etcd's Unlock is a plain Delete of the key, whoever holds it.
    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let header =
            concurrency::delete(&self.node, &Caller::of(&metadata), &req.key).await.map_err(to_recipe_status)?;
        Ok(Response::new(UnlockResponse { header: Some(header) }))
    }
}
