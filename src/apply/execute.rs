//! Executes one decoded Put or DeleteRange against the MVCC write transaction and builds etcd's
//! response, as etcd 3.5.16's `applierV3backend.Put`/`DeleteRange`/`Range` do; the Txn applier
//! (`txn.rs`) runs its operations through the same functions. Response headers carry only the
//! revision etcd puts there; the caller fills cluster, member and term.

use crate::error::{Error, Result};
use crate::mvcc::WriteTxn;
use crate::proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
};

/// A standalone Put. Request checks etcd makes before raft come first (empty key, value with
/// `ignore_value`, lease with `ignore_lease`), then the lease must exist, then `ignore_*` need the
/// key to exist.
pub fn put(txn: &mut WriteTxn<'_>, req: &PutRequest, lease_exists: &dyn Fn(i64) -> bool) -> Result<PutResponse> {
    check_put(req)?;
    if req.lease != 0 && !lease_exists(req.lease) {
        return Err(Error::LeaseNotFound);
    }
    put_op(txn, req)
}

/// A standalone DeleteRange.
pub fn delete_range(txn: &mut WriteTxn<'_>, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    delete_op(txn, req)
}

/// etcd's `checkPutRequest` (done at the API edge before raft, and again here so apply is safe
/// on its own).
pub(crate) fn check_put(req: &PutRequest) -> Result<()> {
    if req.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// Put inside an open transaction; the lease was checked by the caller. The header revision is
/// the transaction's new revision, as etcd's `txn.Put` returns it.
pub(crate) fn put_op(txn: &mut WriteTxn<'_>, req: &PutRequest) -> Result<PutResponse> {
    let prev_kv = txn.put(req)?;
    Ok(PutResponse { header: header(txn.rev()), prev_kv })
}

/// DeleteRange inside an open transaction. The header revision is the new revision if this or an
/// earlier operation of the transaction changed something, else the unchanged one (etcd's
/// `storeTxnWrite.DeleteRange`).
pub(crate) fn delete_op(txn: &mut WriteTxn<'_>, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let (deleted, prev_kvs) = if req.prev_kv {
        let prev = txn.delete_range(&req.key, &req.range_end)?;
        (prev.len() as i64, prev)
    } else {
        (txn.delete_range_count(&req.key, &req.range_end)?, Vec::new())
    };
    Ok(DeleteRangeResponse { header: header(txn.rev()), deleted, prev_kvs })
}

/// Range inside an open transaction: it sees the transaction's earlier writes and reports the
/// transaction's current revision.
pub(crate) fn range_op(txn: &WriteTxn<'_>, req: &RangeRequest) -> Result<RangeResponse> {
    Ok(txn.range(req)?.into_response())
}

pub(crate) fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::mem_engine::MemEngine;
    use crate::mvcc::MvccStore;
    use crate::proto::mvccpb::KeyValue;
    use crate::storage::WriteBatch;
    use std::sync::Arc;

    fn store() -> MvccStore {
        MvccStore::open(Arc::new(MemEngine::default())).unwrap()
    }

    fn put_req(key: &str, value: &str) -> PutRequest {
        PutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    fn no_leases(_: i64) -> bool {
        false
    }

    fn do_put(s: &MvccStore, req: PutRequest, leases: &dyn Fn(i64) -> bool) -> Result<PutResponse> {
        let mut w = s.write();
        let resp = put(&mut w, &req, leases)?;
        w.commit(WriteBatch::default())?;
        Ok(resp)
    }

    fn get(s: &MvccStore, key: &str) -> Option<KeyValue> {
        s.range(&RangeRequest { key: key.into(), ..Default::default() }).unwrap().kvs.pop()
    }

    #[test]
    fn put_response_header_and_prev_kv() {
        let s = store();
        let r = do_put(&s, put_req("a", "1"), &no_leases).unwrap();
        assert_eq!(r.header.unwrap().revision, 2);
        assert_eq!(r.prev_kv, None);
        let r = do_put(&s, PutRequest { prev_kv: true, ..put_req("a", "2") }, &no_leases).unwrap();
        assert_eq!(r.header.unwrap().revision, 3);
        let prev = r.prev_kv.unwrap();
        assert_eq!((prev.value.as_slice(), prev.mod_revision), (&b"1"[..], 2));
        // prev_kv on a missing key: no prev, no error.
        let r = do_put(&s, PutRequest { prev_kv: true, ..put_req("b", "1") }, &no_leases).unwrap();
        assert_eq!(r.prev_kv, None);
    }

    #[test]
    fn put_errors_in_etcds_order() {
        let s = store();
        let bad = |req: PutRequest| do_put(&s, req, &no_leases).unwrap_err().to_string();
        assert_eq!(bad(put_req("", "v")), "key is not provided");
        assert_eq!(bad(PutRequest { ignore_value: true, ..put_req("k", "v") }), "value is provided");
        assert_eq!(bad(PutRequest { ignore_lease: true, lease: 5, ..put_req("k", "") }), "lease is provided");
        // Lease is checked before the key's existence.
        assert_eq!(bad(PutRequest { ignore_value: true, lease: 5, ..put_req("k", "") }), "requested lease not found");
        assert_eq!(bad(PutRequest { ignore_value: true, ..put_req("k", "") }), "key not found");
        assert_eq!(bad(PutRequest { ignore_lease: true, ..put_req("k", "v") }), "key not found");
        assert_eq!(s.current_revision(), 1);
    }

    #[test]
    fn ignore_value_and_ignore_lease_keep_current_ones() {
        let s = store();
        let leases = |id: i64| id == 7 || id == 8;
        do_put(&s, PutRequest { lease: 7, ..put_req("k", "v1") }, &leases).unwrap();
        do_put(&s, PutRequest { ignore_value: true, lease: 8, ..put_req("k", "") }, &leases).unwrap();
        let kv = get(&s, "k").unwrap();
        assert_eq!((kv.value.as_slice(), kv.lease, kv.version), (&b"v1"[..], 8, 2));
        do_put(&s, PutRequest { ignore_lease: true, ..put_req("k", "v3") }, &leases).unwrap();
        let kv = get(&s, "k").unwrap();
        assert_eq!((kv.value.as_slice(), kv.lease, kv.version), (&b"v3"[..], 8, 3));
        // A plain put detaches the lease.
        do_put(&s, put_req("k", "v4"), &leases).unwrap();
        assert_eq!(get(&s, "k").unwrap().lease, 0);
    }

    #[test]
    fn delete_range_responses() {
        let s = store();
        for k in ["a", "b", "c"] {
            do_put(&s, put_req(k, k), &no_leases).unwrap();
        }
        // Deleting nothing keeps the revision.
        let mut w = s.write();
        let r = delete_range(&mut w, &DeleteRangeRequest { key: "x".into(), ..Default::default() }).unwrap();
        assert_eq!((r.deleted, r.header.unwrap().revision), (0, 4));
        assert_eq!(w.commit(WriteBatch::default()).unwrap().revision, 4);

        let mut w = s.write();
        let r = delete_range(&mut w, &DeleteRangeRequest { key: "a".into(), range_end: "c".into(), prev_kv: true })
            .unwrap();
        assert_eq!((r.deleted, r.header.unwrap().revision), (2, 5));
        let keys: Vec<_> = r.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        w.commit(WriteBatch::default()).unwrap();

        let mut w = s.write();
        let r =
            delete_range(&mut w, &DeleteRangeRequest { key: "a".into(), range_end: vec![0], prev_kv: false }).unwrap();
        assert_eq!((r.deleted, r.prev_kvs.len()), (1, 0));
        drop(w);

        let mut w = s.write();
        assert_eq!(
            delete_range(&mut w, &DeleteRangeRequest::default()).unwrap_err().to_string(),
            "key is not provided"
        );
    }
}
