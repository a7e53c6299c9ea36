//! The KV service (etcd's `v3rpc/key.go`): validate, hand reads to `read` and writes to `propose`,
//! complete the header.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::auth::identity;
use crate::api::{header, quota, status::to_status, validate};
use crate::apply::command::{Request as Cmd, Response as Applied};
use crate::apply::txn::validate_txn;
use crate::error::Error;
use crate::node::Node;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::{propose, read};

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }
}

fn unexpected(what: &str) -> Status {
    to_status(Error::Internal(format!("apply returned an unexpected response to {what}")))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let started = std::time::Instant::now();
        let (metadata, _, req) = request.into_parts();
        // A learner serves only serializable reads (the route itself passed `api/learner.rs`).
        if !req.serializable && self.node.is_learner() {
            return Err(to_status(crate::api::learner::refused()));
        }
        validate::range(&req).map_err(to_status)?;
        // etcd validates the request before it looks at the token.
        let user = identity(&self.node, &metadata).map_err(to_status)?;
        let result = read::range_as(&self.node, &req, user.as_ref()).await;
        // etcd times a Range from its arrival, read index included, and counts a slow one.
        crate::metrics::observe_read_only(started.elapsed());
        let result = result.map_err(to_status)?;
        Ok(Response::new(RangeResponse {
            header: Some(header::header(&self.node, result.revision)),
            kvs: result.kvs,
            more: result.more,
            count: result.count,
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        // etcd's quotaKVServer checks space before the KV server validates.
        quota::check(&self.node, quota::put_cost(&req)).await?;
        validate::put(&req).map_err(to_status)?;
        // etcd validates the request before it looks at the token.
        let user = identity(&self.node, &metadata).map_err(to_status)?;
        match propose::propose_as(&self.node, Cmd::Put(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::Put(mut resp), _) => {
                resp.header = Some(header::complete(&self.node, resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        validate::delete_range(&req).map_err(to_status)?;
        // etcd validates the request before it looks at the token.
        let user = identity(&self.node, &metadata).map_err(to_status)?;
        match propose::propose_as(&self.node, Cmd::DeleteRange(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::DeleteRange(mut resp), _) => {
                resp.header = Some(header::complete(&self.node, resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete_range")),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        quota::check(&self.node, quota::txn_cost(&req)).await?;
        validate_txn(&req, self.node.limits.max_txn_ops).map_err(to_status)?;
        // etcd validates the request before it looks at the token.
        let user = identity(&self.node, &metadata).map_err(to_status)?;
        match propose::propose_as(&self.node, Cmd::Txn(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::Txn(mut resp), _) => {
                resp.header = Some(header::complete(&self.node, resp.header));
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let physical = req.physical;
        let user = identity(&self.node, &metadata).map_err(to_status)?;
        match propose::propose_as(&self.node, Cmd::Compaction(req), user.as_ref()).await.map_err(to_status)? {
            (Applied::Compaction(resp), id) => {
                // `physical`: answer only once the compacted revisions are gone from the backend.
                if physical {
                    if let Some(handle) = self.node.applier.take_compaction(id) {
                        tokio::task::spawn_blocking(move || handle.wait())
                            .await
                            .map_err(|e| to_status(Error::Internal(e.to_string())))?
                            .map_err(to_status)?;
                    }
                }
                Ok(Response::new(CompactionResponse { header: Some(header::complete(&self.node, resp.header)) }))
            }
            _ => Err(unexpected("compact")),
        }
    }
}
