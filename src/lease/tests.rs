use std::sync::Arc;

use super::*;
use crate::mvcc::mem_engine::MemEngine;
use crate::proto::mvccpb::KeyValue;

fn put_event(key: &str, lease: i64) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue { key: key.into(), lease, ..Default::default() }),
        prev_kv: None,
    }
}

fn delete_event(key: &str) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue { key: key.into(), ..Default::default() }),
        prev_kv: None,
    }
}

fn grant(engine: &dyn Engine, l: &Lessor, id: i64, ttl: i64) {
    l.check_grant(id, ttl).unwrap();
    let mut b = WriteBatch::default();
    l.stage_grant(&mut b, id, ttl);
    engine.write(b).unwrap();
    l.granted(id, ttl);
}

fn revoke(engine: &dyn Engine, l: &Lessor, id: i64) -> Result<Vec<Vec<u8>>> {
    let mut b = WriteBatch::default();
    let keys = l.stage_revoke(&mut b, id)?;
    engine.write(b).unwrap();
    l.revoked(id);
    Ok(keys)
}

#[test]
fn grant_checks_in_etcds_order() {
    let e = MemEngine::default();
    let l = Lessor::open(&e).unwrap();
    assert!(matches!(l.check_grant(0, 10), Err(Error::LeaseNotFound)));
    assert!(matches!(l.check_grant(1, MAX_LEASE_TTL + 1), Err(Error::LeaseTtlTooLarge)));
    assert!(l.check_grant(1, MAX_LEASE_TTL).is_ok());
    grant(&e, &l, 1, 10);
    assert!(matches!(l.check_grant(1, 10), Err(Error::LeaseExists)));
    // The TTL limit is checked before the id is: a too large TTL on a taken id says "too large".
    assert!(matches!(l.check_grant(1, MAX_LEASE_TTL + 1), Err(Error::LeaseTtlTooLarge)));
    // Negative ids are accepted, as etcd accepts them.
    grant(&e, &l, -3, 5);
    assert_eq!(l.all().iter().map(|i| i.id).collect::<Vec<_>>(), vec![-3, 1]);
}

#[test]
fn attachments_follow_committed_events() {
    let e = MemEngine::default();
    let l = Lessor::open(&e).unwrap();
    grant(&e, &l, 1, 10);
    grant(&e, &l, 2, 10);
    l.follow(&[put_event("a", 1), put_event("b", 1), put_event("c", 2)]);
    assert_eq!(l.keys(1).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    // Moving a key to another lease detaches it from the first.
    l.follow(&[put_event("a", 2)]);
    assert_eq!(l.keys(1).unwrap(), vec![b"b".to_vec()]);
    assert_eq!(l.keys(2).unwrap(), vec![b"a".to_vec(), b"c".to_vec()]);
    // A put without a lease, or a delete, detaches.
    l.follow(&[put_event("b", 0), delete_event("c")]);
    assert_eq!(l.keys(1).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(l.keys(2).unwrap(), vec![b"a".to_vec()]);
    assert_eq!(l.lease_of(b"a"), Some(2));
    assert_eq!(l.lease_of(b"b"), None);
    // An event naming a lease that does not exist attaches nothing.
    l.follow(&[put_event("z", 99)]);
    assert_eq!(l.lease_of(b"z"), None);
}

#[test]
fn revoke_returns_sorted_keys_and_forgets_them() {
    let e = MemEngine::default();
    let l = Lessor::open(&e).unwrap();
    grant(&e, &l, 1, 10);
    l.follow(&[put_event("zz", 1), put_event("aa", 1), put_event("mm", 1)]);
    let mut rx = l.revocations();
    assert_eq!(revoke(&e, &l, 1).unwrap(), vec![b"aa".to_vec(), b"mm".to_vec(), b"zz".to_vec()]);
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    assert!(!l.contains(1));
    assert_eq!(l.lease_of(b"aa"), None);
    assert!(matches!(revoke(&e, &l, 1), Err(Error::LeaseNotFound)));
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn changes_are_reported_in_order_with_epochs() {
    let e = MemEngine::default();
    let l = Lessor::open(&e).unwrap();
    grant(&e, &l, 5, 10);
    revoke(&e, &l, 5).unwrap();
    grant(&e, &l, 5, 20);
    let changes = l.take_changes();
    assert_eq!(
        changes,
        vec![
            LeaseChange::Granted(LeaseInfo { id: 5, ttl: 10, remaining_ttl: 0, epoch: 1 }),
            LeaseChange::Revoked { id: 5, epoch: 1 },
            LeaseChange::Granted(LeaseInfo { id: 5, ttl: 20, remaining_ttl: 0, epoch: 2 }),
        ]
    );
    assert!(l.take_changes().is_empty());
}

#[test]
fn rows_survive_reopen_with_checkpoints() {
    let e = Arc::new(MemEngine::default());
    let l = Lessor::open(e.as_ref()).unwrap();
    grant(e.as_ref(), &l, 1, 30);
    grant(e.as_ref(), &l, 2, 60);
    grant(e.as_ref(), &l, 3, 90);
    revoke(e.as_ref(), &l, 3).unwrap();
    let mut b = WriteBatch::default();
    let cps = [LeaseCheckpoint { id: 1, remaining_ttl: 24 }, LeaseCheckpoint { id: 42, remaining_ttl: 5 }];
    let applied = l.stage_checkpoints(&mut b, &cps);
    assert_eq!(applied, vec![(1, 24)], "a checkpoint of an unknown lease is skipped");
    e.write(b).unwrap();
    l.checkpointed(&applied);
    assert_eq!(l.get(1).unwrap().resume_ttl(), 24);
    assert_eq!(l.get(2).unwrap().resume_ttl(), 60);

    let reopened = Lessor::open(e.as_ref()).unwrap();
    let got: Vec<_> = reopened.all().iter().map(|i| (i.id, i.ttl, i.remaining_ttl)).collect();
    assert_eq!(got, vec![(1, 30, 24), (2, 60, 0)]);
    assert!(reopened.restore_attachment(b"k", 2));
    assert!(!reopened.restore_attachment(b"orphan", 3));
    assert_eq!(reopened.keys(2).unwrap(), vec![b"k".to_vec()]);
}

#[test]
fn damaged_rows_fail_open_instead_of_panicking() {
    let e = MemEngine::default();
    let mut b = WriteBatch::default();
    b.put(LEASE_TABLE, vec![1, 2, 3], vec![0xff]);
    e.write(b).unwrap();
    assert!(matches!(Lessor::open(&e), Err(Error::Storage(_))));
}
