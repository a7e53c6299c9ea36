//! Unit tests of the store: revisions and versions, row layout, every Range option, the write
//! transaction's own view, failed commits, compaction and restart.

use std::sync::Arc;

use prost::Message;

use super::mem_engine::MemEngine;
use super::*;
use crate::proto::etcdserverpb::range_request::{SortOrder, SortTarget};

fn new_store() -> (Arc<MemEngine>, MvccStore) {
    let engine = Arc::new(MemEngine::default());
    let store = MvccStore::open(engine.clone()).unwrap();
    (engine, store)
}

fn put(s: &MvccStore, key: &str, value: &str) -> i64 {
    put_lease(s, key, value, 0)
}

fn put_lease(s: &MvccStore, key: &str, value: &str, lease: i64) -> i64 {
    let mut w = s.write();
    w.put(&PutRequest { key: key.into(), value: value.into(), lease, ..Default::default() }).unwrap();
    w.commit(WriteBatch::default()).unwrap().revision
}

fn del(s: &MvccStore, key: &str, end: &str) -> i64 {
    let mut w = s.write();
    w.delete_range(key.as_bytes(), end.as_bytes()).unwrap();
    w.commit(WriteBatch::default()).unwrap().revision
}

fn req(key: &str, end: &str) -> RangeRequest {
    RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() }
}

fn get_at(s: &MvccStore, key: &str, rev: i64) -> Option<KeyValue> {
    s.range(&RangeRequest { revision: rev, ..req(key, "") }).unwrap().kvs.pop()
}

fn keys(r: &RangeResult) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

fn summary(kv: &KeyValue) -> (i64, i64, i64, &[u8]) {
    (kv.create_revision, kv.mod_revision, kv.version, &kv.value)
}

#[test]
fn fresh_store_starts_at_revision_one() {
    let (_, s) = new_store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), 0);
    let r = s.range(&req("a", "\0")).unwrap();
    assert_eq!((r.count, r.more, r.revision), (0, false, 1));
}

#[test]
fn revisions_and_versions() {
    let (_, s) = new_store();
    assert_eq!(put(&s, "a", "1"), 2);
    assert_eq!(put(&s, "a", "1"), 3, "putting the same value still bumps");
    assert_eq!(summary(&get_at(&s, "a", 0).unwrap()), (2, 3, 2, &b"1"[..]));
    assert_eq!(del(&s, "a", ""), 4);
    assert_eq!(get_at(&s, "a", 0), None);
    assert_eq!(put(&s, "a", "2"), 5);
    // Re-created: new create revision, version restarts at 1.
    assert_eq!(summary(&get_at(&s, "a", 0).unwrap()), (5, 5, 1, &b"2"[..]));
    // History stays readable.
    assert_eq!(summary(&get_at(&s, "a", 2).unwrap()), (2, 2, 1, &b"1"[..]));
    assert_eq!(summary(&get_at(&s, "a", 3).unwrap()), (2, 3, 2, &b"1"[..]));
    assert_eq!(get_at(&s, "a", 4), None);
    assert_eq!(get_at(&s, "a", 1), None);
}

#[test]
fn one_transaction_one_revision_with_sub_revisions() {
    let (engine, s) = new_store();
    put(&s, "c", "0");
    let mut w = s.write();
    assert_eq!(w.rev(), 2);
    for k in ["a", "b"] {
        w.put(&PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() }).unwrap();
    }
    assert_eq!(w.rev(), 3);
    w.delete_range(b"c", b"").unwrap();
    let c = w.commit(WriteBatch::default()).unwrap();
    assert_eq!(c.revision, 3);

    let rows = engine.dump(KV_TABLE);
    let at3: Vec<_> = rows.iter().filter(|(k, _)| k[..8] == 3u64.to_be_bytes()).collect();
    assert_eq!(at3.len(), 3);
    assert_eq!(at3[0].0, &Revision::new(3, 0).to_row_key(false));
    assert_eq!(at3[1].0, &Revision::new(3, 1).to_row_key(false));
    assert_eq!(at3[2].0, &Revision::new(3, 2).to_row_key(true));
    // Rows are etcd's: the full KeyValue for a put, only the key for a tombstone.
    let kv = KeyValue::decode(at3[1].1.as_slice()).unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: b"b".to_vec(),
            create_revision: 3,
            mod_revision: 3,
            version: 1,
            value: b"v".to_vec(),
            lease: 0
        }
    );
    assert_eq!(at3[2].1, &KeyValue { key: b"c".to_vec(), ..Default::default() }.encode_to_vec());

    // Events in change order; a DELETE carries only the key and the revision.
    let types: Vec<i32> = c.events.iter().map(|e| e.r#type).collect();
    assert_eq!(types, vec![EventType::Put as i32, EventType::Put as i32, EventType::Delete as i32]);
    assert_eq!(c.events[2].kv, Some(KeyValue { key: b"c".to_vec(), mod_revision: 3, ..Default::default() }));
    assert_eq!(c.events[0].kv.as_ref().unwrap().key, b"a");
}

#[test]
fn no_change_no_bump_but_extra_is_written() {
    let (engine, s) = new_store();
    put(&s, "a", "1");
    let mut w = s.write();
    assert!(w.delete_range(b"zz", b"").unwrap().is_empty());
    assert_eq!(w.delete_range_count(b"b", b"c").unwrap(), 0);
    assert!(!w.has_changes());
    let mut extra = WriteBatch::default();
    extra.put(META_TABLE, b"applied".to_vec(), b"7".to_vec());
    let c = w.commit(extra).unwrap();
    assert_eq!((c.revision, c.events.len()), (2, 0));
    assert_eq!(s.current_revision(), 2);
    assert_eq!(engine.get(META_TABLE, b"applied").unwrap(), Some(b"7".to_vec()));
}

#[test]
fn extra_rows_commit_with_the_changes() {
    let (engine, s) = new_store();
    let before = engine.writes.load(std::sync::atomic::Ordering::SeqCst);
    let mut w = s.write();
    w.put(&PutRequest { key: b"a".to_vec(), ..Default::default() }).unwrap();
    let mut extra = WriteBatch::default();
    extra.put(META_TABLE, b"applied".to_vec(), b"9".to_vec());
    w.commit(extra).unwrap();
    assert_eq!(engine.writes.load(std::sync::atomic::Ordering::SeqCst), before + 1, "one atomic engine write");
    assert_eq!(engine.get(META_TABLE, b"applied").unwrap(), Some(b"9".to_vec()));
}

#[test]
fn failed_or_dropped_transactions_change_nothing() {
    let (engine, s) = new_store();
    put(&s, "a", "1");
    let mut w = s.write();
    w.put(&PutRequest { key: b"b".to_vec(), ..Default::default() }).unwrap();
    drop(w);
    assert_eq!(s.current_revision(), 2);
    assert_eq!(get_at(&s, "b", 0), None);

    engine.fail_writes(true);
    let mut w = s.write();
    w.put(&PutRequest { key: b"b".to_vec(), ..Default::default() }).unwrap();
    w.delete_range(b"a", b"").unwrap();
    assert!(matches!(w.commit(WriteBatch::default()), Err(Error::Storage(_))));
    engine.fail_writes(false);
    assert_eq!(s.current_revision(), 2);
    assert_eq!(get_at(&s, "b", 0), None);
    assert!(get_at(&s, "a", 0).is_some());
    // The store carries on at the same next revision.
    assert_eq!(put(&s, "b", "1"), 3);
}

#[test]
fn transaction_reads_its_own_writes() {
    let (_, s) = new_store();
    put(&s, "a", "1"); // 2
    put(&s, "b", "1"); // 3
    let mut w = s.write();
    let r = w.range(&req("a", "\0")).unwrap();
    assert_eq!((keys(&r), r.revision), (vec!["a".into(), "b".into()], 3));
    w.put(&PutRequest { key: b"c".to_vec(), value: b"new".to_vec(), ..Default::default() }).unwrap();
    w.delete_range(b"a", b"").unwrap();
    w.put(&PutRequest { key: b"b".to_vec(), value: b"2".to_vec(), ..Default::default() }).unwrap();
    let r = w.range(&req("a", "\0")).unwrap();
    assert_eq!((keys(&r), r.count, r.revision), (vec!["b".into(), "c".into()], 2, 4));
    assert_eq!(summary(&r.kvs[0]), (3, 4, 2, &b"2"[..]));
    assert_eq!(summary(&r.kvs[1]), (4, 4, 1, &b"new"[..]));
    // Older revisions ignore the pending changes.
    let r = w.range(&RangeRequest { revision: 3, ..req("a", "\0") }).unwrap();
    assert_eq!((keys(&r), r.revision), (vec!["a".into(), "b".into()], 4));
    // The new revision is readable inside, the one after is the future.
    assert!(w.range(&RangeRequest { revision: 4, ..req("a", "") }).unwrap().kvs.is_empty());
    assert!(matches!(w.range(&RangeRequest { revision: 5, ..req("a", "") }), Err(Error::FutureRevision)));
    // Deleting a key put earlier in the same transaction, then re-creating it.
    w.delete_range(b"c", b"").unwrap();
    w.put(&PutRequest { key: b"c".to_vec(), value: b"again".to_vec(), prev_kv: true, ..Default::default() }).unwrap();
    let r = w.range(&req("c", "")).unwrap();
    assert_eq!(summary(&r.kvs[0]), (4, 4, 1, &b"again"[..]));
    // Readers outside still see revision 3.
    assert_eq!(s.range(&req("a", "\0")).unwrap().revision, 3);
    w.commit(WriteBatch::default()).unwrap();
    let r = s.range(&req("a", "\0")).unwrap();
    assert_eq!(keys(&r), vec!["b", "c"]);
    assert_eq!(summary(&r.kvs[1]), (4, 4, 1, &b"again"[..]));
    assert_eq!(get_at(&s, "a", 0), None);
}

#[test]
fn put_keeps_creation_and_counts_versions_within_a_transaction() {
    let (_, s) = new_store();
    put(&s, "k", "1");
    let mut w = s.write();
    let prev = w
        .put(&PutRequest { key: b"k".to_vec(), value: b"2".to_vec(), prev_kv: true, ..Default::default() })
        .unwrap()
        .unwrap();
    assert_eq!(summary(&prev), (2, 2, 1, &b"1"[..]));
    let prev = w
        .put(&PutRequest { key: b"k".to_vec(), value: b"3".to_vec(), prev_kv: true, ..Default::default() })
        .unwrap()
        .unwrap();
    assert_eq!(summary(&prev), (2, 3, 2, &b"2"[..]));
    w.commit(WriteBatch::default()).unwrap();
    assert_eq!(summary(&get_at(&s, "k", 0).unwrap()), (2, 3, 3, &b"3"[..]));
}

/// Five keys a..e; b and d written twice; e with lease 9.
fn range_fixture() -> (Arc<MemEngine>, MvccStore) {
    let (e, s) = new_store();
    put(&s, "a", "5"); // 2
    put(&s, "b", "4"); // 3
    put(&s, "c", "3"); // 4
    put(&s, "d", "2"); // 5
    put_lease(&s, "e", "1", 9); // 6
    put(&s, "b", "4b"); // 7
    put(&s, "d", "2d"); // 8
    (e, s)
}

#[test]
fn range_key_forms() {
    let (_, s) = range_fixture();
    let k = |key: &str, end: &str| keys(&s.range(&req(key, end)).unwrap());
    assert_eq!(k("b", ""), vec!["b"]);
    assert_eq!(k("bb", ""), Vec::<String>::new());
    assert_eq!(k("b", "d"), vec!["b", "c"]);
    assert_eq!(k("c", "\0"), vec!["c", "d", "e"]);
    assert_eq!(k("\0", "\0"), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(k("d", "b"), Vec::<String>::new());
    assert_eq!(k("b", "b"), Vec::<String>::new());
    assert_eq!(k("a", "\u{ff}"), vec!["a", "b", "c", "d", "e"]);
}

#[test]
fn range_limit_more_and_exact_count() {
    let (_, s) = range_fixture();
    let r = s.range(&RangeRequest { limit: 2, ..req("a", "\0") }).unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["a".into(), "b".into()], true, 5));
    let r = s.range(&RangeRequest { limit: 5, ..req("a", "\0") }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (5, false, 5));
    // Negative limits mean no limit.
    let r = s.range(&RangeRequest { limit: -1, ..req("a", "\0") }).unwrap();
    assert_eq!((r.kvs.len(), r.more), (5, false));
    // The filters do not change count; `more` is about what the filter left.
    let r = s.range(&RangeRequest { min_mod_revision: 5, limit: 1, ..req("a", "\0") }).unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["b".into()], true, 5));
    let r = s.range(&RangeRequest { max_create_revision: 3, ..req("a", "\0") }).unwrap();
    assert_eq!((keys(&r), r.count), (vec!["a".into(), "b".into()], 5));
    let r = s.range(&RangeRequest { min_create_revision: 4, max_mod_revision: 6, ..req("a", "\0") }).unwrap();
    assert_eq!(keys(&r), vec!["c", "e"]);
}

#[test]
fn range_keys_only_and_count_only() {
    let (_, s) = range_fixture();
    let r = s.range(&RangeRequest { keys_only: true, ..req("e", "") }).unwrap();
    assert_eq!(
        r.kvs,
        vec![KeyValue {
            key: b"e".to_vec(),
            create_revision: 6,
            mod_revision: 6,
            version: 1,
            value: Vec::new(),
            lease: 9
        }]
    );
    let r = s.range(&RangeRequest { count_only: true, limit: 1, ..req("a", "\0") }).unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 5));
}

#[test]
fn range_sorting() {
    let (_, s) = range_fixture();
    let sorted = |order: SortOrder, target: SortTarget, limit: i64| {
        keys(
            &s.range(&RangeRequest { sort_order: order as i32, sort_target: target as i32, limit, ..req("a", "\0") })
                .unwrap(),
        )
    };
    use SortOrder::*;
    use SortTarget::*;
    assert_eq!(sorted(Descend, Key, 0), vec!["e", "d", "c", "b", "a"]);
    assert_eq!(sorted(Ascend, Key, 0), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(Ascend, Value, 0), vec!["e", "d", "c", "b", "a"]);
    assert_eq!(sorted(Descend, Value, 0), vec!["a", "b", "c", "d", "e"]);
    // Ties (versions 1,2,1,2,1) keep key order, as Go's insertion sort does for few keys.
    assert_eq!(sorted(Ascend, Version, 0), vec!["a", "c", "e", "b", "d"]);
    assert_eq!(sorted(Descend, Version, 0), vec!["b", "d", "a", "c", "e"]);
    assert_eq!(sorted(Ascend, Create, 0), vec!["a", "b", "c", "d", "e"]);
    assert_eq!(sorted(Descend, Mod, 0), vec!["d", "b", "e", "c", "a"]);
    assert_eq!(sorted(Descend, Mod, 2), vec!["d", "b"]);
    // NONE with a non-KEY target sorts ascending by it.
    assert_eq!(sorted(None, Mod, 0), vec!["a", "c", "e", "b", "d"]);
    assert_eq!(sorted(None, Key, 0), vec!["a", "b", "c", "d", "e"]);
    // etcd quirk: with NONE (+target) and a limit only the first limit+1 keys are fetched and
    // then sorted: a, b, c by mod revision (2, 7, 4) -> a, c.
    assert_eq!(sorted(None, Mod, 2), vec!["a", "c"]);
    // With an explicit order everything is fetched first.
    assert_eq!(sorted(Ascend, Mod, 2), vec!["a", "c"]);
    assert_eq!(sorted(Descend, Version, 2), vec!["b", "d"]);
    assert_eq!(sorted(None, Version, 1), vec!["a"]);
    assert_eq!(sorted(None, Value, 1), vec!["b"]);
    assert_eq!(sorted(Ascend, Value, 1), vec!["e"]);
}

#[test]
fn range_revisions() {
    let (_, s) = range_fixture();
    // Reading an old revision reports the current one in the header.
    let r = s.range(&RangeRequest { revision: 3, ..req("a", "\0") }).unwrap();
    assert_eq!((keys(&r), r.count, r.revision), (vec!["a".into(), "b".into()], 2, 8));
    assert_eq!(r.kvs[1].value, b"4");
    for rev in [0, -1, -100] {
        let r = s.range(&RangeRequest { revision: rev, ..req("a", "\0") }).unwrap();
        assert_eq!(r.count, 5);
    }
    assert!(matches!(s.range(&RangeRequest { revision: 9, ..req("a", "") }), Err(Error::FutureRevision)));
    s.compact(5, false).unwrap().wait().unwrap();
    assert!(matches!(s.range(&RangeRequest { revision: 4, ..req("a", "") }), Err(Error::Compacted)));
    // Exactly the compacted revision is still readable, with its full contents.
    let r = s.range(&RangeRequest { revision: 5, ..req("a", "\0") }).unwrap();
    assert_eq!(keys(&r), vec!["a", "b", "c", "d"]);
    assert_eq!(r.kvs[1].value, b"4");
    // Future is checked before compacted, as in etcd.
    assert!(matches!(s.range(&RangeRequest { revision: 100, ..req("a", "") }), Err(Error::FutureRevision)));
}

#[test]
fn compaction_validation() {
    let (_, s) = new_store();
    assert!(matches!(s.compact(-3, false), Err(Error::Compacted)));
    assert!(matches!(s.compact(2, false), Err(Error::FutureRevision)));
    // etcd starts with compactMainRev = -1: compacting at 0 (and at 1) is accepted once.
    s.compact(0, false).unwrap().wait().unwrap();
    assert!(matches!(s.compact(0, false), Err(Error::Compacted)));
    s.compact(1, true).unwrap().wait().unwrap();
    assert!(matches!(s.compact(1, false), Err(Error::Compacted)));
    put(&s, "a", "1");
    let h = s.compact(2, true).unwrap();
    assert_eq!(h.revision(), 2);
    h.wait().unwrap();
    assert!(h.is_done());
    assert_eq!((s.compact_revision(), s.current_revision()), (2, 2));
    assert!(matches!(s.compact(1, false), Err(Error::Compacted)));
    assert_eq!(s.current_revision(), 2, "compaction does not bump");
}

#[test]
fn compaction_deletes_exactly_the_unreachable_rows() {
    let (engine, s) = new_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "b", "1"); // 4
    del(&s, "b", ""); // 5
    put(&s, "c", "1"); // 6
    del(&s, "c", ""); // 7
    put(&s, "a", "3"); // 8
    s.compact(7, true).unwrap().wait().unwrap();
    let rows: Vec<(Revision, bool)> =
        engine.dump(KV_TABLE).keys().map(|k| Revision::from_row_key(k).unwrap()).collect();
    // a@3 is the newest <= 7; b's tombstone (5) goes; c's tombstone at exactly 7 stays; a@8
    // is newer.
    assert_eq!(rows, vec![(Revision::new(3, 0), false), (Revision::new(7, 0), true), (Revision::new(8, 0), false)]);
    assert_eq!(engine.get(META_TABLE, SCHEDULED_COMPACT_KEY).unwrap(), Some(encode_meta_rev(7)));
    assert_eq!(engine.get(META_TABLE, FINISHED_COMPACT_KEY).unwrap(), Some(encode_meta_rev(7)));
    assert_eq!(get_at(&s, "a", 7).unwrap().value, b"2");
    assert_eq!(get_at(&s, "c", 7), None);
    // The next compaction drops the kept tombstone.
    s.compact(8, true).unwrap().wait().unwrap();
    let rows: Vec<_> = engine.dump(KV_TABLE).into_keys().collect();
    assert_eq!(rows, vec![Revision::new(8, 0).to_row_key(false)]);
}

#[test]
fn compaction_deletes_in_batches() {
    let (engine, s) = new_store();
    // 2500 rows over 50 keys.
    for i in 0..50 {
        let mut w = s.write();
        for j in 0..50 {
            w.put(&PutRequest {
                key: format!("k{j:02}").into_bytes(),
                value: format!("{i}").into_bytes(),
                ..Default::default()
            })
            .unwrap();
        }
        w.commit(WriteBatch::default()).unwrap();
    }
    let writes_before = engine.writes.load(std::sync::atomic::Ordering::SeqCst);
    let current = s.current_revision();
    s.compact(current, true).unwrap().wait().unwrap();
    assert_eq!(engine.dump(KV_TABLE).len(), 50);
    // One schedule write plus three delete batches (1000, 1000, 500 rows examined).
    assert_eq!(engine.writes.load(std::sync::atomic::Ordering::SeqCst) - writes_before, 4);
    let r = s.range(&req("k", "l")).unwrap();
    assert_eq!((r.count, r.kvs[0].version), (50, 50));
}

#[test]
fn compactions_run_in_order() {
    let (engine, s) = new_store();
    for i in 0..30 {
        put(&s, "k", &i.to_string());
    }
    let handles: Vec<_> = (5..=30).map(|rev| s.compact(rev, false).unwrap()).collect();
    handles.last().unwrap().wait().unwrap();
    assert!(handles.iter().all(|h| h.is_done()));
    assert_eq!(engine.dump(KV_TABLE).len(), 2);
    assert_eq!(engine.get(META_TABLE, FINISHED_COMPACT_KEY).unwrap(), Some(encode_meta_rev(30)));
}

#[test]
fn a_read_racing_a_compaction_reports_compacted() {
    let (engine, s) = new_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
                       // A reader that resolved revision 2 in the index before the compaction deleted its row.
    let hit = Hit::Row { key: b"a".to_vec(), rev: Revision::new(2, 0) };
    s.compact(3, true).unwrap().wait().unwrap();
    assert!(matches!(s.load(&[hit], &[], 2), Err(Error::Compacted)));
    // A row missing without a compaction is our bug, not the client's.
    let mut batch = WriteBatch::default();
    batch.delete(KV_TABLE, Revision::new(3, 0).to_row_key(false));
    engine.write(batch).unwrap();
    assert!(matches!(s.range(&req("a", "")), Err(Error::Internal(_))));
}

fn full_history(s: &MvccStore) -> Vec<(i64, Vec<KeyValue>)> {
    let from = s.compact_revision().max(1);
    (from..=s.current_revision())
        .map(|rev| {
            let r = s.range(&RangeRequest { revision: rev, ..req("\0", "\0") }).unwrap();
            (rev, r.kvs)
        })
        .collect()
}

#[test]
fn reopen_rebuilds_the_same_index_and_revisions() {
    let (engine, s) = new_store();
    put(&s, "a", "1");
    put_lease(&s, "b", "1", 5);
    put(&s, "a", "2");
    del(&s, "a", "");
    put(&s, "a", "3");
    del(&s, "b", "\0");
    put(&s, "c", "1");
    let history = full_history(&s);
    let index = s.read_state().index.clone();
    drop(s);
    let s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(s.current_revision(), 8);
    assert_eq!(s.compact_revision(), 0);
    assert_eq!(s.read_state().index, index);
    assert_eq!(full_history(&s), history);
    assert_eq!(put(&s, "a", "4"), 9);
    assert_eq!(summary(&get_at(&s, "a", 0).unwrap()), (6, 9, 2, &b"4"[..]));
}

#[test]
fn reopen_after_compaction_keeps_reads_and_revisions() {
    let (engine, s) = new_store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "b", "1"); // 4
    del(&s, "b", ""); // 5
    put(&s, "a", "3"); // 6
    s.compact(5, true).unwrap().wait().unwrap();
    let history = full_history(&s);
    drop(s);
    let s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!((s.current_revision(), s.compact_revision()), (6, 5));
    assert_eq!(full_history(&s), history);
    assert!(matches!(s.compact(5, false), Err(Error::Compacted)));
    // The version count survives the compaction of the rows it counted.
    assert_eq!(put(&s, "a", "4"), 7);
    assert_eq!(summary(&get_at(&s, "a", 0).unwrap()), (2, 7, 4, &b"4"[..]));
}

#[test]
fn reopen_keeps_the_revision_when_the_newest_rows_were_compacted() {
    let (engine, s) = new_store();
    put(&s, "a", "1"); // 2
    del(&s, "a", ""); // 3
    s.compact(3, true).unwrap().wait().unwrap();
    s.compact(3, true).unwrap_err();
    put(&s, "x", "1"); // 4
    del(&s, "x", ""); // 5
    s.compact(5, true).unwrap().wait().unwrap();
    // Only the tombstone at 5 is left; compacting exactly there keeps it.
    drop(s);
    let s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!((s.current_revision(), s.compact_revision()), (5, 5));
    assert_eq!(put(&s, "b", "1"), 6);
}

#[test]
fn open_resumes_an_unfinished_compaction() {
    let (engine, s) = new_store();
    for i in 0..5 {
        put(&s, "a", &i.to_string()); // 2..=6
    }
    drop(s);
    // As if the process died right after persisting the schedule.
    engine.set(META_TABLE, SCHEDULED_COMPACT_KEY, &encode_meta_rev(4));
    let s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(s.compact_revision(), 4);
    assert!(matches!(get_at_err(&s, 3), Error::Compacted));
    assert_eq!(get_at(&s, "a", 4).unwrap().value, b"2");
    // Wait through a later compaction queued behind the resumed one.
    put(&s, "b", "1");
    s.compact(5, true).unwrap().wait().unwrap();
    let rows: Vec<_> = engine.dump(KV_TABLE).into_keys().collect();
    assert_eq!(
        rows,
        vec![
            Revision::new(5, 0).to_row_key(false),
            Revision::new(6, 0).to_row_key(false),
            Revision::new(7, 0).to_row_key(false),
        ]
    );
}

fn get_at_err(s: &MvccStore, rev: i64) -> Error {
    s.range(&RangeRequest { revision: rev, ..req("a", "") }).unwrap_err()
}

#[test]
fn corrupt_rows_fail_open() {
    let engine = Arc::new(MemEngine::default());
    engine.set(KV_TABLE, b"garbage", b"");
    assert!(matches!(MvccStore::open(engine.clone()), Err(Error::Storage(_))));
    let engine = Arc::new(MemEngine::default());
    engine.set(KV_TABLE, &Revision::new(2, 0).to_row_key(false), &[0xff, 0xff]);
    assert!(matches!(MvccStore::open(engine), Err(Error::Storage(_))));
}

#[test]
fn readers_see_whole_transactions_only() {
    let (_, s) = new_store();
    let s = Arc::new(s);
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                let mut w = s.write();
                for k in ["x", "y"] {
                    w.put(&PutRequest { key: k.into(), value: i.to_string().into_bytes(), ..Default::default() })
                        .unwrap();
                }
                w.commit(WriteBatch::default()).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let r = s.range(&req("x", "z")).unwrap();
                    if r.kvs.len() == 2 {
                        assert_eq!(r.kvs[0].value, r.kvs[1].value);
                        assert_eq!(r.kvs[0].mod_revision, r.revision);
                    } else {
                        assert!(r.kvs.is_empty());
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(s.current_revision(), 201);
}

#[test]
fn stopped_compactions_resume_on_open() {
    let (engine, s) = new_store();
    for i in 0..5 {
        let mut w = s.write();
        for j in 0..10 {
            w.put(&PutRequest {
                key: format!("k{j}").into_bytes(),
                value: i.to_string().into_bytes(),
                ..Default::default()
            })
            .unwrap();
        }
        w.commit(WriteBatch::default()).unwrap();
    }
    // Stopped first (as before installing a snapshot): the deletion never starts, but reads
    // already treat the history as compacted and the schedule is on disk.
    s.stop_compactions();
    let h = s.compact(5, false).unwrap();
    assert!(matches!(h.wait(), Err(Error::Stopped)));
    assert_eq!(engine.dump(KV_TABLE).len(), 50);
    assert!(matches!(get_at_err(&s, 4), Error::Compacted));
    assert_eq!(engine.get(META_TABLE, FINISHED_COMPACT_KEY).unwrap(), None);
    drop(s);
    let s = MvccStore::open(engine.clone()).unwrap();
    assert_eq!(s.compact_revision(), 5);
    put(&s, "z", "1");
    s.compact(6, true).unwrap().wait().unwrap();
    assert_eq!(engine.dump(KV_TABLE).len(), 11);
    assert_eq!(s.range(&req("k", "l")).unwrap().kvs[3].version, 5);
}

#[test]
fn key_count_is_live_keys() {
    // etcd's keys_total gauge: a new key raises it, a delete lowers it, a re-put raises it again.
    let (_, s) = new_store();
    put(&s, "a", "1");
    put(&s, "a", "2");
    put(&s, "b", "1");
    assert_eq!(s.key_count(), 2);
    del(&s, "a", "");
    assert_eq!(s.key_count(), 1);
    put(&s, "a", "3");
    assert_eq!(s.key_count(), 2);
}
