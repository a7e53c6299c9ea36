//! The read path: a linearizable read first confirms leadership and waits for apply to catch up
//! (etcd's ReadIndex); a serializable read answers from local state at once.

use openraft::error::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;

use crate::error::{Error, Result};
use crate::mvcc::RangeResult;
use crate::node::Node;
use crate::proto::etcdserverpb::RangeRequest;

/// Wait until this member's state reflects every write committed before the call.
pub async fn linearizable_barrier(node: &Node) -> Result<()> {
    let read =
        tokio::time::timeout(node.limits.request_timeout, node.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
    match read {
        Err(_) => Err(Error::Timeout),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => match f.leader_id {
            None => Err(Error::NoLeader),
            Some(_) => Err(Error::NotLeader),
        },
        Ok(Err(RaftError::APIError(other))) => Err(Error::Internal(other.to_string())),
        Ok(Err(RaftError::Fatal(_))) => Err(Error::Stopped),
    }
}

/// Range as etcd serves it; the result carries the store revision the read saw, which is what the
/// header reports (even when reading an older revision).
pub async fn range(node: &Node, req: &RangeRequest) -> Result<RangeResult> {
    if !req.serializable {
        linearizable_barrier(node).await?;
    }
    node.mvcc().range(req)
}
