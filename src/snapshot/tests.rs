//! Round trips through our writer and reader, a real etcd 3.5.16 snapshot, and (when etcd's tools
//! are at hand) etcdutl reading files we write.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use prost::Message;

use super::bbolt::{fnv1a64, BucketBuilder, BucketRef, Entry, Reader, Writer, NO_FREELIST, PAGE_SIZE};
use super::*;
use crate::mvcc::mem_engine::MemEngine;
use crate::mvcc::MvccStore;
use crate::proto::etcdserverpb::{PutRequest, RangeRequest};
use crate::proto::mvccpb::KeyValue;

/// A snapshot `etcdctl snapshot save` took from etcd 3.5.16 after: put k1..k5 (revs 2-6), put k1, k2
/// (7, 8), delete k3 (9), put k6 (10), compact 4, put k3 (11), delete k5 (12), put `big` with a
/// 5000-byte value (13, needs overflow pages), grant a 600 s lease and put `leased` on it (14);
/// then `etcdctl defrag` so the file is small.
const ETCD_SNAPSHOT: &[u8] = include_bytes!("testdata/etcd-3.5.16.db");

/// A bucket tree for tests: values, and sub-buckets.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tree {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    buckets: BTreeMap<Vec<u8>, Tree>,
}

fn build(w: &mut Writer<Cursor<Vec<u8>>>, tree: &Tree) -> BucketBuilder {
    // Keys of values and sub-buckets share one sorted space.
    let mut all: BTreeMap<&[u8], Option<&Tree>> = BTreeMap::new();
    for k in tree.values.keys() {
        all.insert(k, None);
    }
    for (k, t) in &tree.buckets {
        all.insert(k, Some(t));
    }
    let mut b = BucketBuilder::new();
    for (k, sub) in all {
        match sub {
            None => b.put(w, k, &tree.values[k]).unwrap(),
            Some(t) => {
                let v = build(w, t).finish(w).unwrap();
                b.put_bucket(w, k, v).unwrap();
            }
        }
    }
    b
}

fn write_tree(tree: &Tree) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let root = build(&mut w, tree);
    w.finish(root).unwrap().into_inner()
}

fn read_tree(reader: &Reader<'_>, at: BucketRef<'_>) -> Tree {
    let mut tree = Tree::default();
    let mut subs = Vec::new();
    reader
        .for_each(at, &mut |e| {
            match e {
                Entry::Value { key, value } => {
                    tree.values.insert(key.to_vec(), value.to_vec());
                }
                Entry::Bucket { key, bucket, .. } => subs.push((key.to_vec(), bucket)),
            }
            Ok(())
        })
        .unwrap();
    for (k, b) in subs {
        tree.buckets.insert(k, read_tree(reader, b));
    }
    tree
}

fn read_all(db: &[u8]) -> Tree {
    let reader = Reader::new(db).unwrap();
    read_tree(&reader, reader.root())
}

fn row_key(main: u64, tombstone: bool) -> Vec<u8> {
    let mut k = main.to_be_bytes().to_vec();
    k.push(b'_');
    k.extend_from_slice(&0u64.to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

#[test]
fn fnv1a_matches_the_reference_values() {
    assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
}

#[test]
fn trailer_is_detected_and_checked_as_etcdutl_does() {
    assert!(has_trailer(ETCD_SNAPSHOT.len() as u64));
    let db = database(ETCD_SNAPSHOT, false).unwrap();
    assert_eq!(db.len(), ETCD_SNAPSHOT.len() - HASH_LEN);
    assert_eq!(db.len() % PAGE_SIZE, 0);

    let mut bad = ETCD_SNAPSHOT.to_vec();
    bad[5000] ^= 1;
    assert!(matches!(database(&bad, false), Err(crate::error::SnapshotError::HashMismatch { .. })));
    assert_eq!(database(&bad, true).unwrap().len(), db.len(), "--skip-hash-check still drops the trailer");
    // A raw database (no trailer) needs --skip-hash-check, with etcdutl's message otherwise.
    let err = database(db, false).unwrap_err();
    assert_eq!(err.to_string(), "snapshot missing hash but --skip-hash-check=false");
    assert_eq!(database(db, true).unwrap().len(), db.len());
}

#[test]
fn reads_a_real_etcd_snapshot() {
    let db = database(ETCD_SNAPSHOT, false).unwrap();
    let reader = Reader::new(db).unwrap();
    let meta = reader.meta();
    assert_eq!(meta.freelist, NO_FREELIST, "etcd does not persist the freelist");
    assert_eq!(meta.page_size as usize, PAGE_SIZE);

    let st = status(db).unwrap();
    // What `etcdutl snapshot status -w json` printed for this file.
    assert_eq!((st.revision, st.total_keys, st.total_size), (14, 22, 36864));
    assert_eq!(
        st.buckets,
        ["alarm", "auth", "authRoles", "authUsers", "cluster", "key", "lease", "members", "members_removed", "meta"]
    );

    let tree = read_all(db);
    let key = &tree.buckets[&b"key"[..]];
    assert_eq!(key.values.len(), 13);
    let big = KeyValue::decode(key.values[&row_key(13, false)].as_slice()).unwrap();
    assert_eq!((big.key.as_slice(), big.value.len(), big.create_revision), (&b"big"[..], 5000, 13));
    // A tombstone row holds only the key.
    let tomb = KeyValue::decode(key.values[&row_key(9, true)].as_slice()).unwrap();
    assert_eq!(tomb, KeyValue { key: b"k3".to_vec(), ..Default::default() });
    let meta = &tree.buckets[&b"meta"[..]];
    assert_eq!(meta.values[&b"finishedCompactRev"[..]], row_key(4, false));
    assert_eq!(tree.buckets[&b"cluster"[..]].values[&b"clusterVersion"[..]], b"3.5.0");
    assert_eq!(tree.buckets[&b"lease"[..]].values.len(), 1);
}

/// The whole etcd snapshot re-written by our writer reads back identically.
#[test]
fn rewriting_the_etcd_snapshot_preserves_every_row() {
    let tree = read_all(database(ETCD_SNAPSHOT, false).unwrap());
    let ours = write_tree(&tree);
    assert_eq!(ours.len() % PAGE_SIZE, 0);
    assert_eq!(read_all(&ours), tree);
    let (a, b) = (status(&ours).unwrap(), status(database(ETCD_SNAPSHOT, false).unwrap()).unwrap());
    assert_eq!((a.revision, a.total_keys, a.buckets), (b.revision, b.total_keys, b.buckets));
}

#[test]
fn write_read_round_trip_with_many_keys_big_values_and_nesting() {
    let mut tree = Tree::default();
    let mut many = Tree::default();
    for i in 0..20_000u32 {
        many.values
            .insert(format!("key-{i:08}").into_bytes(), format!("value {i}").repeat((i % 7) as usize).into_bytes());
    }
    let mut big = Tree::default();
    for (i, size) in [0usize, 1, 1000, 4080, 4096, 5000, 70_000, 300_000].iter().enumerate() {
        big.values.insert(vec![b'b', i as u8], (0..*size).map(|j| (j * 31 + i) as u8).collect());
    }
    // Long keys make tall branch levels.
    let mut long_keys = Tree::default();
    for i in 0..3000u32 {
        let mut k = vec![b'x'; 900];
        k.extend_from_slice(&i.to_be_bytes());
        long_keys.values.insert(k, vec![1]);
    }
    let mut small = Tree::default();
    small.values.insert(b"a".to_vec(), b"1".to_vec());
    let mut nested = Tree::default();
    nested.values.insert(b"v".to_vec(), b"outer".to_vec());
    nested.buckets.insert(b"inner".to_vec(), small.clone());
    nested.buckets.insert(b"inner-empty".to_vec(), Tree::default());
    nested.buckets.insert(b"inner-many".to_vec(), many.clone());
    tree.buckets.insert(b"many".to_vec(), many);
    tree.buckets.insert(b"big".to_vec(), big);
    tree.buckets.insert(b"long".to_vec(), long_keys);
    tree.buckets.insert(b"empty".to_vec(), Tree::default());
    tree.buckets.insert(b"small".to_vec(), small);
    tree.buckets.insert(b"nested".to_vec(), nested);

    let db = write_tree(&tree);
    assert_eq!(read_all(&db), tree);

    // Small buckets without sub-buckets are inlined, as bbolt does; others have root pages.
    let reader = Reader::new(&db).unwrap();
    assert!(matches!(reader.bucket(&[b"small"]).unwrap(), Some(BucketRef::Inline(_))));
    assert!(matches!(reader.bucket(&[b"empty"]).unwrap(), Some(BucketRef::Inline(_))));
    assert!(matches!(reader.bucket(&[b"nested"]).unwrap(), Some(BucketRef::Page(_))));
    assert!(matches!(reader.bucket(&[b"nested", b"inner"]).unwrap(), Some(BucketRef::Inline(_))));
    assert!(reader.bucket(&[b"nope"]).unwrap().is_none());
    assert_eq!(reader.meta().pgid as usize * PAGE_SIZE, db.len());
}

#[test]
fn an_empty_database_round_trips() {
    let db = write_tree(&Tree::default());
    assert_eq!(db.len(), 3 * PAGE_SIZE);
    assert_eq!(read_all(&db), Tree::default());
}

#[test]
fn unsorted_keys_are_refused() {
    let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
    let mut b = BucketBuilder::new();
    b.put(&mut w, b"b", b"").unwrap();
    assert!(b.put(&mut w, b"a", b"").is_err());
    assert!(b.put(&mut w, b"b", b"").is_err());
}

#[test]
fn a_damaged_meta_page_falls_back_to_the_other() {
    // In this file meta page 0 holds txid 3 and page 1 txid 2 (Tx.WriteTo writes both).
    let db = database(ETCD_SNAPSHOT, false).unwrap().to_vec();
    assert_eq!(Reader::new(&db).unwrap().meta().txid, 3);
    let damage = |db: &mut Vec<u8>, page: usize| db[page * PAGE_SIZE + 16 + 40] ^= 0xff;
    let mut first_bad = db.clone();
    damage(&mut first_bad, 0);
    assert_eq!(Reader::new(&first_bad).unwrap().meta().txid, 2);
    let mut second_bad = db.clone();
    damage(&mut second_bad, 1);
    assert_eq!(Reader::new(&second_bad).unwrap().meta().txid, 3);
    damage(&mut first_bad, 1);
    assert!(Reader::new(&first_bad).is_err(), "both metas broken");
}

/// Corrupt or truncated input is an error, never a panic.
#[test]
fn corrupt_files_are_errors_not_panics() {
    let db = database(ETCD_SNAPSHOT, false).unwrap();
    for len in [0, 10, PAGE_SIZE, 2 * PAGE_SIZE, 3 * PAGE_SIZE + 7, db.len() - PAGE_SIZE] {
        let _ = Reader::new(&db[..len]).and_then(|r| status(&db[..len]).map(|_| r.meta()));
    }
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..300 {
        let mut bad = db.to_vec();
        for _ in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = 2 * PAGE_SIZE + (seed as usize % (bad.len() - 2 * PAGE_SIZE));
            bad[at] = (seed >> 32) as u8;
        }
        let _ = status(&bad);
        let _ = restore(&bad, &MemEngine::default());
    }
}

/// Our `key` row layout is etcd's; the constants this module copies must stay equal to mvcc's.
#[test]
fn table_names_match_mvcc() {
    assert_eq!(etcd::KV_TABLE, crate::mvcc::KV_TABLE);
    assert_eq!(etcd::META_TABLE, crate::mvcc::META_TABLE);
    assert_eq!(etcd::LEASE_TABLE, crate::lease::LEASE_TABLE);
    assert_eq!(etcd::ALARM_TABLE, crate::apply::alarms::ALARM_TABLE);
}

#[test]
fn alarms_travel_with_the_snapshot_both_ways() {
    use crate::apply::alarms::Alarms;
    use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
    use crate::storage::Engine;
    let engine = sample_store();
    let nospace = AlarmMember { member_id: 0x8e9e05c52164694d, alarm: AlarmType::Nospace as i32 };
    let mut batch = crate::storage::WriteBatch::default();
    batch.put(etcd::ALARM_TABLE, nospace.encode_to_vec(), Vec::new());
    engine.write(batch).unwrap();
    let db = export(engine.as_ref(), &info(), Cursor::new(Vec::new())).unwrap().into_inner();
    let tree = read_all(&db);
    // etcd's layout: the marshalled AlarmMember as key, an empty value.
    assert_eq!(tree.buckets[&b"alarm"[..]].values[&nospace.encode_to_vec()], Vec::<u8>::new());
    let restored = Arc::new(MemEngine::default());
    restore(&db, restored.as_ref()).unwrap();
    assert_eq!(Alarms::open(restored.as_ref()).unwrap().get(AlarmType::None as i32), vec![nospace]);
}

fn range_all(store: &MvccStore, rev: i64) -> Vec<KeyValue> {
    let req = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
    store.range(&req).unwrap().kvs
}

#[test]
fn restoring_the_etcd_snapshot_serves_etcds_history() {
    let engine = Arc::new(MemEngine::default());
    let report = restore(database(ETCD_SNAPSHOT, false).unwrap(), engine.as_ref()).unwrap();
    assert_eq!((report.rows, report.revision, report.compact_revision), (13, 14, Some(4)));
    assert_eq!(report.leases, 1);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    {
        // The lease comes back with the keys that name it attached (rebuilt from the key rows).
        let applier = crate::apply::applier::Applier::open(engine.clone()).unwrap();
        let store = applier.mvcc();
        let leased: Vec<KeyValue> = range_all(&store, 0).into_iter().filter(|kv| kv.lease != 0).collect();
        assert!(!leased.is_empty(), "the fixture has a key on a lease");
        for kv in &leased {
            assert!(applier.lessor().keys(kv.lease).unwrap().contains(&kv.key));
        }
    }

    let store = MvccStore::open(engine.clone()).unwrap();
    assert_eq!((store.current_revision(), store.compact_revision()), (14, 4));
    let keys =
        |rev| range_all(&store, rev).iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<Vec<_>>();
    assert_eq!(keys(4), ["k1", "k2", "k3"]);
    assert_eq!(keys(9), ["k1", "k2", "k4", "k5"]);
    assert_eq!(keys(14), ["big", "k1", "k2", "k3", "k4", "k6", "leased"]);
    let now = range_all(&store, 0);
    let k1 = now.iter().find(|kv| kv.key == b"k1").unwrap();
    assert_eq!((k1.create_revision, k1.mod_revision, k1.version, k1.value.as_slice()), (2, 7, 2, &b"v1b"[..]));
    let k3 = now.iter().find(|kv| kv.key == b"k3").unwrap();
    assert_eq!((k3.create_revision, k3.version), (11, 1), "re-created after the delete at 9");
    let leased = now.iter().find(|kv| kv.key == b"leased").unwrap();
    assert_eq!(leased.lease, 389739536427736595);
    let err = store.range(&RangeRequest { key: b"k1".to_vec(), revision: 3, ..Default::default() }).unwrap_err();
    assert!(matches!(err, crate::error::Error::Compacted));
}

fn sample_store() -> Arc<MemEngine> {
    let engine = Arc::new(MemEngine::default());
    let store = MvccStore::open(engine.clone()).unwrap();
    for i in 0..300 {
        let mut w = store.write();
        let put =
            PutRequest { key: format!("k{:03}", i % 40).into_bytes(), value: vec![b'v'; i], ..Default::default() };
        w.put(&put).unwrap();
        if i % 17 == 0 {
            w.delete_range(format!("k{:03}", (i + 3) % 40).as_bytes(), &[]).unwrap();
        }
        w.commit(Default::default()).unwrap();
    }
    store.compact(100, true).unwrap().wait().unwrap();
    drop(store);
    engine
}

fn info() -> ExportInfo {
    ExportInfo {
        consistent_index: 321,
        term: 2,
        members: vec![ExportMember {
            id: 0x8e9e05c52164694d,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        }],
    }
}

#[test]
fn export_then_restore_keeps_every_row_and_the_compaction() {
    let engine = sample_store();
    let db = export(engine.as_ref(), &info(), Cursor::new(Vec::new())).unwrap().into_inner();
    let tree = read_all(&db);
    let names: Vec<&[u8]> = tree.buckets.keys().map(Vec::as_slice).collect();
    assert_eq!(names, etcd::ETCD_BUCKETS_FOR_TESTS);
    assert_eq!(tree.buckets[&b"key"[..]].values, engine.dump("kv"));
    let meta = &tree.buckets[&b"meta"[..]].values;
    assert_eq!(meta[&b"consistent_index"[..]], 321u64.to_be_bytes());
    assert_eq!(meta[&b"term"[..]], 2u64.to_be_bytes());
    assert_eq!(meta[&b"confState"[..]], br#"{"voters":[10276657743932975437],"auto_leave":false}"#);
    assert_eq!(meta[&b"finishedCompactRev"[..]], row_key(100, false));
    assert!(!meta.contains_key(&b"raft_applied"[..]), "Keel's own rows stay out");
    assert_eq!(
        tree.buckets[&b"members"[..]].values[&b"8e9e05c52164694d"[..]],
        br#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
    );

    let restored = Arc::new(MemEngine::default());
    restore(&db, restored.as_ref()).unwrap();
    assert_eq!(restored.dump("kv"), engine.dump("kv"));
    let (a, b) = (MvccStore::open(engine).unwrap(), MvccStore::open(restored).unwrap());
    assert_eq!((a.current_revision(), a.compact_revision()), (b.current_revision(), b.compact_revision()));
    for rev in [100, 150, 200, 301] {
        assert_eq!(range_all(&a, rev), range_all(&b, rev), "at {rev}");
    }
}

/// etcdutl 3.5.16 reads a file we write (runs only when KEEL_ETCD_BIN_DIR names etcd's tools).
#[test]
fn etcdutl_accepts_our_snapshots() {
    let Some(dir) = std::env::var_os("KEEL_ETCD_BIN_DIR").filter(|d| !d.is_empty()) else {
        eprintln!("skipping etcdutl_accepts_our_snapshots: KEEL_ETCD_BIN_DIR is not set");
        return;
    };
    let etcdutl = std::path::Path::new(&dir).join("etcdutl");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("keel.db");
    let engine = sample_store();
    etcd::export_file(engine.as_ref(), &info(), &path).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert!(has_trailer(file.len() as u64));
    let ours = status(database(&file, false).unwrap()).unwrap();

    let out =
        std::process::Command::new(&etcdutl).args(["snapshot", "status", "-w", "json"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "etcdutl status: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["revision"], ours.revision);
    assert_eq!(json["totalKey"], ours.total_keys);
    assert_eq!(json["totalSize"], ours.total_size);

    let restored = tmp.path().join("restored");
    let out = std::process::Command::new(&etcdutl)
        .args(["snapshot", "restore"])
        .arg(&path)
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdutl restore: {}", String::from_utf8_lossy(&out.stderr));
    assert!(restored.join("member/snap/db").is_file());
}

#[test]
fn restore_checks_flags_and_refuses_an_existing_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("etcd.db");
    std::fs::write(&file, ETCD_SNAPSHOT).unwrap();
    let opts = |dir: &str| RestoreOptions {
        snapshot: file.clone(),
        data_dir: Some(tmp.path().join(dir)),
        name: "m1".into(),
        initial_cluster: "m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2381".into(),
        initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
        ..Default::default()
    };
    let report = restore_dir(&opts("ok")).unwrap();
    assert_eq!((report.rows, report.revision), (13, 14));
    assert!(tmp.path().join("ok/member/db").exists());

    let err = restore_dir(&opts("ok")).unwrap_err().to_string();
    assert!(err.contains("exists"), "{err}");
    let err = restore_dir(&RestoreOptions { name: "m3".into(), ..opts("x") }).unwrap_err().to_string();
    assert!(err.contains("couldn't find local name \"m3\""), "{err}");
    let wrong_url = RestoreOptions { initial_advertise_peer_urls: vec!["http://other:1".into()], ..opts("y") };
    assert!(restore_dir(&wrong_url).unwrap_err().to_string().contains("missing from --initial-advertise-peer-urls"));
    // A damaged file fails its hash check and leaves no directory behind.
    let mut bad = ETCD_SNAPSHOT.to_vec();
    bad[3 * PAGE_SIZE] ^= 1;
    std::fs::write(&file, &bad).unwrap();
    assert!(matches!(restore_dir(&opts("z")), Err(crate::error::SnapshotError::HashMismatch { .. })));
    assert!(!tmp.path().join("z").exists());
    assert_eq!(RestoreOptions::default().data_dir(), std::path::PathBuf::from("default.etcd"));
}
