//! Apply-level lease behaviour: grants, attachments that follow only committed changes, revokes
//! that delete every attached key in one revision, and the rebuild after a restart.

use std::sync::Arc;

use crate::apply::applier::Applier;
use crate::apply::command::{ApplyError, CommandHeader, RaftCommand, Request, Response};
use crate::mvcc::mem_engine::MemEngine;
use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::proto::etcdserverpb::request_op;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::storage::Engine;

fn apply(a: &Applier, request: Request) -> Result<Response, ApplyError> {
    let cmd = RaftCommand { header: CommandHeader::default(), request };
    a.apply(Some(&cmd), vec![1]).unwrap().outcome
}

fn grant(a: &Applier, id: i64, ttl: i64) -> Result<Response, ApplyError> {
    apply(a, Request::LeaseGrant(LeaseGrantRequest { id, ttl }))
}

fn put(a: &Applier, key: &str, lease: i64) -> Result<Response, ApplyError> {
    apply(a, Request::Put(PutRequest { key: key.into(), value: b"v".to_vec(), lease, ..Default::default() }))
}

fn revoke(a: &Applier, id: i64) -> Result<Response, ApplyError> {
    apply(a, Request::LeaseRevoke(LeaseRevokeRequest { id }))
}

fn revision(a: &Applier) -> i64 {
    a.mvcc().current_revision()
}

fn live(a: &Applier) -> Vec<(Vec<u8>, i64, i64)> {
    a.mvcc()
        .range(&RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() })
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision, kv.lease))
        .collect()
}

#[test]
fn grant_does_not_bump_the_revision_and_checks_like_etcd() {
    let a = Applier::open(Arc::new(MemEngine::default())).unwrap();
    put(&a, "x", 0).unwrap();
    match grant(&a, 7, 10).unwrap() {
        Response::LeaseGrant(r) => {
            assert_eq!((r.id, r.ttl, r.header.unwrap().revision), (7, 10, 2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(revision(&a), 2);
    assert_eq!(grant(&a, 7, 10), Err(ApplyError::LeaseExists));
    assert_eq!(grant(&a, 8, 9_000_000_001), Err(ApplyError::LeaseTtlTooLarge));
    assert_eq!(revoke(&a, 99), Err(ApplyError::LeaseNotFound));
    assert_eq!(put(&a, "k", 99), Err(ApplyError::LeaseNotFound));
    assert_eq!(revision(&a), 2);
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let a = Applier::open(Arc::new(MemEngine::default())).unwrap();
    grant(&a, 1, 10).unwrap();
    grant(&a, 2, 10).unwrap();
    put(&a, "b", 1).unwrap(); // 2
    put(&a, "a", 1).unwrap(); // 3
    put(&a, "c", 2).unwrap(); // 4
    put(&a, "d", 1).unwrap(); // 5
    put(&a, "d", 0).unwrap(); // 6: a put without lease detaches
    match revoke(&a, 1).unwrap() {
        Response::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, 7),
        other => panic!("{other:?}"),
    }
    assert_eq!(live(&a), vec![(b"c".to_vec(), 4, 2), (b"d".to_vec(), 6, 0)]);
    assert!(!a.lessor().contains(1));
    // A lease without keys is revoked without a new revision.
    grant(&a, 3, 10).unwrap();
    match revoke(&a, 3).unwrap() {
        Response::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn txn_attaches_only_what_it_committed() {
    let a = Applier::open(Arc::new(MemEngine::default())).unwrap();
    grant(&a, 1, 10).unwrap();
    let put_op = |key: &str, lease: i64| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest { key: key.into(), lease, ..Default::default() })),
    };
    let never = Compare {
        key: b"nope".to_vec(),
        target: CompareTarget::Version as i32,
        result: CompareResult::Greater as i32,
        target_union: Some(TargetUnion::Version(5)),
        ..Default::default()
    };
    // The failure branch runs: only "f" is attached.
    let txn = TxnRequest { compare: vec![never], success: vec![put_op("s", 1)], failure: vec![put_op("f", 1)] };
    apply(&a, Request::Txn(txn)).unwrap();
    assert_eq!(a.lessor().keys(1).unwrap(), vec![b"f".to_vec()]);
    // A txn that fails as a whole (unknown lease in a later op) attaches nothing.
    let txn = TxnRequest { success: vec![put_op("g", 1), put_op("h", 42)], ..Default::default() };
    assert_eq!(apply(&a, Request::Txn(txn)), Err(ApplyError::LeaseNotFound));
    assert_eq!(a.lessor().keys(1).unwrap(), vec![b"f".to_vec()]);
    // A delete detaches.
    apply(&a, Request::DeleteRange(DeleteRangeRequest { key: b"f".to_vec(), ..Default::default() })).unwrap();
    assert_eq!(a.lessor().keys(1).unwrap(), Vec::<Vec<u8>>::new());
}

#[test]
fn reopen_rebuilds_leases_checkpoints_and_attachments() {
    let engine = Arc::new(MemEngine::default());
    {
        let a = Applier::open(engine.clone()).unwrap();
        grant(&a, 1, 30).unwrap();
        grant(&a, 2, 60).unwrap();
        for i in 0..2500 {
            put(&a, &format!("k{i:05}"), if i % 2 == 0 { 1 } else { 2 }).unwrap();
        }
        put(&a, "plain", 0).unwrap();
        let cps = vec![LeaseCheckpoint { id: 1, remaining_ttl: 24 }];
        let r = apply(&a, Request::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints: cps })).unwrap();
        assert!(matches!(r, Response::LeaseCheckpoint(_)));
        assert_eq!(revision(&a), 2502);
        // Applied writes reach the engine when the write buffer is flushed (the server does it in
        // the background and at shutdown; after a crash the raft log replays them instead).
        a.flush().unwrap();
    }
    let a = Applier::open(engine.clone()).unwrap();
    let l = a.lessor();
    assert_eq!(l.get(1).unwrap().resume_ttl(), 24);
    assert_eq!(l.get(2).unwrap().resume_ttl(), 60);
    assert_eq!(l.keys(1).unwrap().len(), 1250);
    assert_eq!(l.keys(2).unwrap().len(), 1250);
    assert_eq!(l.lease_of(b"plain"), None);
    // The revoke after a restart still finds every key.
    revoke(&a, 2).unwrap();
    assert_eq!(live(&a).len(), 1251);
    a.flush().unwrap();
    assert_eq!(engine.dump("lease").len(), 1);
}

#[test]
fn a_failing_engine_loses_no_applied_write() {
    // Applies land in the write buffer; an engine failure surfaces when the buffer is flushed,
    // and the pending writes stay (and stay visible) until a flush succeeds.
    let engine = Arc::new(MemEngine::default());
    let a = Applier::open(engine.clone()).unwrap();
    grant(&a, 1, 10).unwrap();
    put(&a, "k", 1).unwrap();
    a.flush().unwrap();
    engine.fail_writes(true);
    revoke(&a, 1).unwrap();
    grant(&a, 5, 10).unwrap();
    assert!(a.flush().is_err());
    assert!(!a.lessor().contains(1));
    assert!(a.lessor().contains(5));
    assert!(live(&a).is_empty());
    engine.fail_writes(false);
    a.flush().unwrap();
    assert!(engine.get("lease", &1i64.to_be_bytes()).unwrap().is_none());
    assert!(engine.get("lease", &5i64.to_be_bytes()).unwrap().is_some());
}
