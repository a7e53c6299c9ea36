//! Response headers as etcd fills them: cluster and member id, raft term, and a revision.

use crate::node::Node;
use crate::proto::etcdserverpb::ResponseHeader;

pub fn header(node: &Node, revision: i64) -> ResponseHeader {
    ResponseHeader {
        cluster_id: node.cluster_id,
        member_id: node.member_id,
        revision,
        raft_term: node.raft_status().term,
    }
}

/// Complete a header that apply filled with only a revision; etcd reports the current store
/// revision when the handler left it at 0.
pub fn complete(node: &Node, partial: Option<ResponseHeader>) -> ResponseHeader {
    let revision = match partial.map(|h| h.revision) {
        Some(r) if r != 0 => r,
        _ => node.mvcc().current_revision(),
    };
    header(node, revision)
}
