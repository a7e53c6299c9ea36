//! The backend space quota at the edge (etcd's `quotaKVServer`, `quotaLeaseServer` and
//! `backendQuota` in `v3rpc/quota.go` and `etcdserver/quota.go`): before a write that takes space
//! is proposed, the database size plus the request's cost must stay below
//! `--quota-backend-bytes`; otherwise this member raises the NOSPACE alarm through raft and the
//! client gets `etcdserver: mvcc: database space exceeded`.

use tonic::Status;

use crate::api::status::to_status;
use crate::apply::command::Request as Cmd;
use crate::error::Error;
use crate::node::Node;
use crate::propose;
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{request_op, AlarmRequest, AlarmType, PutRequest, TxnRequest};

/// etcd's `kvOverhead`: the cost of a put beyond its key and value.
const KV_OVERHEAD: u64 = 256;
/// etcd's `leaseOverhead`: the cost of a lease grant.
pub const LEASE_GRANT_COST: u64 = 64;

/// etcd's `costPut`.
pub fn put_cost(req: &PutRequest) -> u64 {
    KV_OVERHEAD + req.key.len() as u64 + req.value.len() as u64
}

/// etcd's `costTxnReq`: the dearer of the two branches, counting only the puts directly in each
/// (a nested txn costs nothing, as in etcd). A txn without puts costs 0 and is never refused.
pub fn txn_cost(req: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost(p),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

/// etcd's `quotaAlarmer.check`. Zero-cost requests always pass. The size is the engine's file
/// size as `Node::db_size` last measured it (at most a second old; etcd reads bbolt's size on
/// every call) plus the cost of every request admitted since, so a burst cannot slip past it.
pub async fn check(node: &Node, cost: u64) -> Result<(), Status> {
    if cost == 0 {
        return Ok(());
    }
    let size = node.db_size_for_quota().map_err(to_status)?;
    if size.saturating_add(cost) < node.limits.quota_bytes {
        node.admitted_to_quota(cost);
        return Ok(());
    }
    let raise = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: node.member_id,
        alarm: AlarmType::Nospace as i32,
    };
    // etcd ignores how raising the alarm went: the client's answer is the same either way.
    if let Err(e) = propose::propose(node, Cmd::Alarm(raise)).await {
        tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
    }
    Err(to_status(Error::NoSpace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, RequestOp};

    #[test]
    fn costs_are_etcds() {
        let put = PutRequest { key: b"key".to_vec(), value: vec![0; 100], ..Default::default() };
        assert_eq!(put_cost(&put), 256 + 3 + 100);
        let op_put = RequestOp { request: Some(request_op::Request::RequestPut(put.clone())) };
        let op_del =
            RequestOp { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest::default())) };
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![op_put.clone(); 5],
                ..Default::default()
            })),
        };
        let txn = TxnRequest {
            success: vec![op_put.clone(), op_del.clone()],
            failure: vec![op_put.clone(), op_put.clone(), nested.clone()],
            ..Default::default()
        };
        assert_eq!(txn_cost(&txn), 2 * 359);
        let reads_only = TxnRequest { success: vec![op_del, nested], ..Default::default() };
        assert_eq!(txn_cost(&reads_only), 0);
    }
}
