//! The conformance suite every storage engine must pass: the `Engine` contract (ordering, bounds,
//! atomic batches, durability at `sync`, export/import across engines) checked the same way on
//! redb and sled, plus a model test against a `BTreeMap` and a kill -9 crash test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tempfile::TempDir;

use super::{export, import, open, Engine, EngineKind, StorageError, Table, WriteBatch, WriteBuffer};

type Rows = Vec<(Vec<u8>, Vec<u8>)>;
type AllRows = Vec<(String, Vec<u8>, Vec<u8>)>;

fn fresh(kind: EngineKind) -> (TempDir, Arc<dyn Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(kind, dir.path()).unwrap();
    (dir, engine)
}

/// The engine behind the write buffer the applier uses: nothing reaches the engine until a flush
/// (`sync`), so every read must merge pending writes with committed rows.
fn fresh_buffered(kind: EngineKind) -> (TempDir, Arc<dyn Engine>) {
    let (dir, engine) = fresh(kind);
    (dir, Arc::new(WriteBuffer::new(engine)))
}

/// Open a directory an engine of this process had open a moment ago. sled's background thread lets
/// go of its file lock shortly *after* the `Db` is dropped, so an immediate reopen can find the lock
/// still held: wait for it (bounded), as a restarting server would.
fn reopen(kind: EngineKind, dir: &Path) -> Arc<dyn Engine> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(kind, dir) {
            Ok(engine) => return engine,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {kind} in {}: {e}", dir.display()),
        }
    }
}

fn other(kind: EngineKind) -> EngineKind {
    match kind {
        EngineKind::Redb => EngineKind::Sled,
        EngineKind::Sled => EngineKind::Redb,
    }
}

fn put(e: &dyn Engine, table: Table, key: &[u8], value: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(table, key, value);
    e.write(b).unwrap();
}

fn del(e: &dyn Engine, table: Table, key: &[u8]) {
    let mut b = WriteBatch::new();
    b.delete(table, key);
    e.write(b).unwrap();
}

fn scan(e: &dyn Engine, table: Table, start: &[u8], end: Option<&[u8]>) -> Rows {
    let mut rows = Vec::new();
    e.scan(table, start, end, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    rows
}

fn everything(e: &dyn Engine) -> AllRows {
    let mut rows = Vec::new();
    e.scan_all(&mut |t, k, v| {
        rows.push((t.to_string(), k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    rows
}

fn keys(rows: &Rows) -> Vec<Vec<u8>> {
    rows.iter().map(|(k, _)| k.clone()).collect()
}

// ---------------------------------------------------------------- cases on one engine

fn get_put_delete(e: &dyn Engine) {
    assert_eq!(e.get("kv", b"a").unwrap(), None, "never-written table reads empty");
    put(e, "kv", b"a", b"1");
    assert_eq!(e.get("kv", b"a").unwrap(), Some(b"1".to_vec()));
    put(e, "kv", b"a", b"2");
    assert_eq!(e.get("kv", b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(e.get("meta", b"a").unwrap(), None, "tables are separate");

    put(e, "kv", b"empty", b"");
    assert_eq!(e.get("kv", b"empty").unwrap(), Some(Vec::new()));
    put(e, "kv", b"", b"empty key");
    assert_eq!(e.get("kv", b"").unwrap(), Some(b"empty key".to_vec()));

    del(e, "kv", b"a");
    assert_eq!(e.get("kv", b"a").unwrap(), None);
    del(e, "kv", b"never there");
    del(e, "lease", b"in a table never written");
    assert_eq!(e.get("kv", b"empty").unwrap(), Some(Vec::new()));
}

fn batch_is_atomic_across_tables(e: &dyn Engine) {
    put(e, "kv", b"old", b"x");
    let mut b = WriteBatch::new();
    b.put("kv", b"k1", b"v1")
        .put("meta", b"applied", 7u64.to_be_bytes())
        .put("lease", b"l", b"lv")
        .delete("kv", b"old")
        // Later ops on one key win, in order.
        .put("kv", b"k2", b"first")
        .delete("kv", b"k2")
        .put("kv", b"k3", b"first")
        .put("kv", b"k3", b"second");
    assert_eq!(b.len(), 8);
    e.write(b).unwrap();
    assert_eq!(e.get("kv", b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(e.get("meta", b"applied").unwrap(), Some(7u64.to_be_bytes().to_vec()));
    assert_eq!(e.get("lease", b"l").unwrap(), Some(b"lv".to_vec()));
    assert_eq!(e.get("kv", b"old").unwrap(), None);
    assert_eq!(e.get("kv", b"k2").unwrap(), None);
    assert_eq!(e.get("kv", b"k3").unwrap(), Some(b"second".to_vec()));

    // A batch that fails lands not at all, not even the ops before the bad one.
    let before = everything(e);
    let mut bad = WriteBatch::new();
    bad.put("kv", b"k1", b"changed").put("alarm", b"a", b"b").put("", b"x", b"y");
    assert!(matches!(e.write(bad), Err(StorageError::InvalidTable(_))));
    assert_eq!(everything(e), before);

    assert!(WriteBatch::new().is_empty());
    e.write(WriteBatch::new()).unwrap();
    assert_eq!(everything(e), before);
}

fn scan_bounds(e: &dyn Engine) {
    let ks: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xff],
        vec![0x01],
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"a\xff".to_vec(),
        b"b".to_vec(),
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
    ];
    let mut b = WriteBatch::new();
    for (i, k) in ks.iter().rev().enumerate() {
        b.put("kv", k.clone(), vec![u8::try_from(i).unwrap()]);
    }
    // Neighbouring tables whose names share a prefix with "kv" must not leak into its scans.
    b.put("k", b"a", b"in k").put("kvx", b"a", b"in kvx");
    b.put("kvx", b"", b"in kvx").put("kvx", [0x00], b"in kvx");
    b.put("kv0", [0xff], b"in kv0");
    e.write(b).unwrap();

    assert_eq!(keys(&scan(e, "kv", b"", None)), ks, "ascending, whole table");
    assert_eq!(keys(&scan(e, "kv", &[0x00], Some(&[0x01]))), ks[1..4].to_vec());
    assert_eq!(keys(&scan(e, "kv", b"a", Some(b"b"))), ks[5..8].to_vec(), "start inclusive, end exclusive");
    assert_eq!(keys(&scan(e, "kv", b"a\x00", None)), ks[6..].to_vec());
    assert_eq!(keys(&scan(e, "kv", &[0xff], None)), ks[10..].to_vec());
    assert_eq!(keys(&scan(e, "kv", &[0xff, 0xff, 0x00], None)), Vec::<Vec<u8>>::new());
    assert_eq!(keys(&scan(e, "kv", b"", Some(&[0x00]))), vec![Vec::<u8>::new()]);
    assert_eq!(keys(&scan(e, "kv", b"0", Some(b"1"))), Vec::<Vec<u8>>::new());
    assert!(scan(e, "kv", b"a", Some(b"a")).is_empty(), "start == end");
    assert!(scan(e, "kv", b"b", Some(b"a")).is_empty(), "start > end");
    assert!(scan(e, "alarm", b"", None).is_empty(), "never-written table");

    assert_eq!(scan(e, "k", b"", None), vec![(b"a".to_vec(), b"in k".to_vec())]);
    assert_eq!(keys(&scan(e, "kvx", b"", None)), vec![vec![], vec![0x00], b"a".to_vec()]);
    assert_eq!(keys(&scan(e, "kv0", b"", None)), vec![vec![0xff]]);

    let mut seen = Vec::new();
    e.scan("kv", b"a", None, &mut |k, _| {
        seen.push(k.to_vec());
        seen.len() < 2
    })
    .unwrap();
    assert_eq!(seen, ks[5..7].to_vec(), "the visitor stops the scan");

    let values: Vec<u8> = scan(e, "kv", b"", None).iter().map(|(_, v)| v[0]).collect();
    let expected: Vec<u8> = (0..u8::try_from(ks.len()).unwrap()).rev().collect();
    assert_eq!(values, expected, "values stay with their keys");
}

fn get_many(e: &dyn Engine) {
    assert_eq!(e.get_many("kv", &[b"a", b"b"]).unwrap(), vec![None, None]);
    assert!(e.get_many("kv", &[]).unwrap().is_empty());
    let mut b = WriteBatch::new();
    b.put("kv", b"a", b"1").put("kv", b"c", b"3").put("kvx", b"b", b"x");
    e.write(b).unwrap();
    assert_eq!(
        e.get_many("kv", &[b"c", b"b", b"a", b"c", b""]).unwrap(),
        vec![Some(b"3".to_vec()), None, Some(b"1".to_vec()), Some(b"3".to_vec()), None]
    );
}

fn tables_lists_non_empty(e: &dyn Engine) {
    assert!(e.tables().unwrap().is_empty());
    put(e, "meta", b"m", b"1");
    put(e, "kv", b"k", b"1");
    put(e, "kvx", b"k", b"1");
    del(e, "lease", b"never written");
    assert_eq!(e.tables().unwrap(), vec!["kv", "kvx", "meta"]);
    del(e, "kvx", b"k");
    assert_eq!(e.tables().unwrap(), vec!["kv", "meta"]);
}

fn clear_removes_everything(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for t in super::KNOWN_TABLES {
        b.put(t, b"k1", b"v").put(t, b"k2", b"v");
    }
    e.write(b).unwrap();
    assert_eq!(e.tables().unwrap().len(), super::KNOWN_TABLES.len());
    e.clear().unwrap();
    assert!(e.tables().unwrap().is_empty());
    assert!(everything(e).is_empty());
    assert_eq!(e.get("kv", b"k1").unwrap(), None);
    e.clear().unwrap();
    put(e, "kv", b"after", b"clear");
    assert_eq!(everything(e), vec![("kv".into(), b"after".to_vec(), b"clear".to_vec())]);
}

fn scan_all_orders_by_table_then_key(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put("meta", b"z", b"1")
        .put("kvx", b"a", b"2")
        .put("kv", [0xff], b"3")
        .put("kv", [0x00], b"4")
        .put("alarm", b"q", b"5");
    e.write(b).unwrap();
    let order: Vec<(String, Vec<u8>)> = everything(e).into_iter().map(|(t, k, _)| (t, k)).collect();
    assert_eq!(
        order,
        vec![
            ("alarm".into(), b"q".to_vec()),
            ("kv".into(), vec![0x00]),
            ("kv".into(), vec![0xff]),
            ("kvx".into(), b"a".to_vec()),
            ("meta".into(), b"z".to_vec()),
        ]
    );
    let mut n = 0;
    e.scan_all(&mut |_, _, _| {
        n += 1;
        n < 2
    })
    .unwrap();
    assert_eq!(n, 2, "the visitor stops the walk");
}

fn invalid_table_names_rejected(e: &dyn Engine) {
    for bad in ["", "a\0b"] {
        assert!(matches!(e.get(bad, b"k"), Err(StorageError::InvalidTable(_))));
        assert!(matches!(e.get_many(bad, &[b"k"]), Err(StorageError::InvalidTable(_))));
        let r = e.scan(bad, b"", None, &mut |_, _| true);
        assert!(matches!(r, Err(StorageError::InvalidTable(_))));
        let mut b = WriteBatch::new();
        b.delete(bad, b"k");
        assert!(matches!(e.write(b), Err(StorageError::InvalidTable(_))));
    }
}

fn size_is_reported(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for i in 0u32..200 {
        b.put("kv", i.to_be_bytes(), vec![7; 1000]);
    }
    e.write(b).unwrap();
    e.sync().unwrap();
    let size = e.size().unwrap();
    assert!(size.total_bytes >= 200 * 1000 / 4, "{size:?}");
    assert!(size.in_use_bytes > 0 && size.in_use_bytes <= size.total_bytes, "{size:?}");
}

/// Readers racing a writer never see half a batch through `get_many` or `scan_all`.
fn reads_see_whole_batches(e: &dyn Engine) {
    const ROUNDS: u64 = 300;
    let pair: [&[u8]; 2] = [b"left", b"right"];
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 1..=ROUNDS {
                let mut b = WriteBatch::new();
                b.put("kv", pair[0], n.to_be_bytes()).put("meta", b"n", n.to_be_bytes()).put(
                    "kv",
                    pair[1],
                    n.to_be_bytes(),
                );
                e.write(b).unwrap();
            }
        });
        loop {
            let got = e.get_many("kv", &pair).unwrap();
            assert_eq!(got[0], got[1], "get_many saw a batch in part");
            let mut values = Vec::new();
            e.scan_all(&mut |_, _, v| {
                values.push(v.to_vec());
                true
            })
            .unwrap();
            assert!(values.windows(2).all(|w| w[0] == w[1]), "scan_all saw a batch in part");
            if got[0] == Some(ROUNDS.to_be_bytes().to_vec()) {
                break;
            }
        }
    });
}

// ---------------------------------------------------------------- cases needing the engine kind

fn sync_then_reopen(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = reopen(kind, dir.path());
        assert_eq!(e.name(), kind.to_string());
        for i in 0u32..50 {
            let mut b = WriteBatch::new();
            b.put("kv", i.to_be_bytes(), vec![u8::try_from(i).unwrap(); 300]).put("meta", b"applied", i.to_be_bytes());
            e.write(b).unwrap();
        }
        del(&*e, "kv", &7u32.to_be_bytes());
        e.sync().unwrap();
    }
    let e = reopen(kind, dir.path());
    let rows = scan(&*e, "kv", b"", None);
    assert_eq!(rows.len(), 49);
    assert_eq!(e.get("kv", &7u32.to_be_bytes()).unwrap(), None);
    assert_eq!(e.get("kv", &8u32.to_be_bytes()).unwrap(), Some(vec![8; 300]));
    assert_eq!(e.get("meta", b"applied").unwrap(), Some(49u32.to_be_bytes().to_vec()));
}

/// Defragmenting while another thread keeps writing loses nothing, leaves what was deleted
/// deleted, survives a reopen, and (on redb, which rewrites its file) gives space back.
fn defragment_under_writes(kind: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u32| vec![u8::try_from(i % 251).unwrap(); 2048];
    {
        let e = reopen(kind, dir.path());
        for chunk in 0u32..20 {
            let mut b = WriteBatch::new();
            for i in chunk * 100..(chunk + 1) * 100 {
                b.put("kv", i.to_be_bytes(), big(i));
            }
            e.write(b).unwrap();
        }
        e.sync().unwrap();
        for i in 0u32..2000 {
            if !i.is_multiple_of(10) {
                del(&*e, "kv", &i.to_be_bytes());
            }
        }
        e.sync().unwrap();
        let before = e.size().unwrap().total_bytes;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) || n < 50 {
                    let mut b = WriteBatch::new();
                    b.put("meta", format!("w/{n:06}").into_bytes(), n.to_be_bytes());
                    if n.is_multiple_of(7) {
                        b.delete("kv", (n * 10 % 2000).to_be_bytes());
                    }
                    e.write(b).unwrap();
                    n += 1;
                }
                n
            })
        };
        e.defragment().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let written = writer.join().unwrap();
        e.sync().unwrap();
        if kind == EngineKind::Redb {
            let after = e.size().unwrap().total_bytes;
            assert!(after < before, "redb file {before} -> {after} bytes after defragmenting");
        }
        check_after_defrag(&*e, written);
    }
    let e = reopen(kind, dir.path());
    let written = u32::try_from(scan(&*e, "meta", b"w/", Some(b"w0")).len()).unwrap();
    assert!(written >= 50);
    check_after_defrag(&*e, written);
}

fn check_after_defrag(e: &dyn Engine, written: u32) {
    let meta = scan(e, "meta", b"w/", Some(b"w0"));
    assert_eq!(meta.len(), written as usize, "every write made during the defragmentation");
    for (n, (k, v)) in meta.iter().enumerate() {
        assert_eq!((k.clone(), v.clone()), (format!("w/{n:06}").into_bytes(), (n as u32).to_be_bytes().to_vec()));
    }
    let deleted_meanwhile: std::collections::HashSet<u32> =
        (0..written).filter(|n| n.is_multiple_of(7)).map(|n| n * 10 % 2000).collect();
    let expected: Vec<u32> = (0u32..2000).filter(|i| i.is_multiple_of(10) && !deleted_meanwhile.contains(i)).collect();
    let kv = scan(e, "kv", b"", None);
    let got: Vec<u32> = kv.iter().map(|(k, _)| u32::from_be_bytes(k.as_slice().try_into().unwrap())).collect();
    assert_eq!(got, expected);
    for (k, v) in &kv {
        let i = u32::from_be_bytes(k.as_slice().try_into().unwrap());
        assert_eq!(v, &vec![u8::try_from(i % 251).unwrap(); 2048]);
    }
}

/// Known tables only (a dump can carry nothing else), with awkward keys and sizes.
fn fill_for_dump(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    for (i, t) in super::KNOWN_TABLES.iter().enumerate() {
        for j in 0u8..20 {
            b.put(t, [j, 0x00, 0xff], vec![j; usize::from(j) * usize::from(j)]);
        }
        b.put(t, Vec::new(), format!("table {i}"));
    }
    b.put("kv", [0xff; 40], vec![0xab; 200_000]);
    b.put("meta", b"consistent_index", 42u64.to_be_bytes());
    e.write(b).unwrap();
}

fn export_import_across_engines(kind: EngineKind) {
    let (_src_dir, src) = fresh(kind);
    fill_for_dump(&*src);
    let mut dump = Vec::new();
    export(&*src, &mut dump).unwrap();

    let dst_dir = tempfile::tempdir().unwrap();
    {
        let dst = open(other(kind), dst_dir.path()).unwrap();
        put(&*dst, "kv", b"stale", b"must vanish");
        put(&*dst, "auth", b"stale", b"must vanish");
        import(&*dst, &mut dump.as_slice()).unwrap();
        assert_eq!(everything(&*dst), everything(&*src));
        assert_eq!(dst.tables().unwrap(), src.tables().unwrap());
        let mut again = Vec::new();
        export(&*dst, &mut again).unwrap();
        assert_eq!(again, dump, "the dump is canonical: same contents, same bytes");
    }
    // import ends with sync, so the contents survive a reopen.
    let dst = reopen(other(kind), dst_dir.path());
    assert_eq!(everything(&*dst), everything(&*src));

    // The noted row comes back as the exported view held it, and the bytes are export's.
    let mut noting = Vec::new();
    let noted = super::export_noting(&*src, &mut noting, ("meta", b"consistent_index")).unwrap();
    assert_eq!(noted, Some(42u64.to_be_bytes().to_vec()));
    assert_eq!(noting, dump);
    assert_eq!(super::export_noting(&*src, &mut Vec::new(), ("meta", b"absent")).unwrap(), None);

    // An empty engine round-trips to an empty one.
    let (_empty_dir, empty) = fresh(kind);
    let mut dump = Vec::new();
    export(&*empty, &mut dump).unwrap();
    import(&*dst, &mut dump.as_slice()).unwrap();
    assert!(everything(&*dst).is_empty());
}

/// A dump with a valid checksum holding whatever table names the test wants.
fn handmade_dump(rows: &[(&str, &[u8], &[u8])]) -> Vec<u8> {
    let mut d = b"KEELDUMP".to_vec();
    d.extend_from_slice(&1u32.to_le_bytes());
    for (t, k, v) in rows {
        d.push(0x01);
        d.push(u8::try_from(t.len()).unwrap());
        d.extend_from_slice(t.as_bytes());
        d.extend_from_slice(&u32::try_from(k.len()).unwrap().to_le_bytes());
        d.extend_from_slice(k);
        d.extend_from_slice(&u32::try_from(v.len()).unwrap().to_le_bytes());
        d.extend_from_slice(v);
    }
    d.push(0x00);
    d.extend_from_slice(&u64::try_from(rows.len()).unwrap().to_le_bytes());
    let crc = crc32fast::hash(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d
}

fn corrupt_dump_is_rejected(kind: EngineKind) {
    let (_dir, target) = fresh(kind);
    fill_for_dump(&*target);
    let before = everything(&*target);

    let good = handmade_dump(&[("kv", b"k", b"v"), ("meta", b"m", b"1")]);
    let reject = |bytes: &[u8], what: &str| {
        let r = import(&*target, &mut &bytes[..]);
        assert!(matches!(r, Err(StorageError::CorruptDump(_))), "{what}: {r:?}");
        assert_eq!(everything(&*target), before, "{what}: target untouched");
    };
    for pos in 0..good.len() {
        for flip in [0x01, 0x80] {
            let mut bad = good.clone();
            bad[pos] ^= flip;
            reject(&bad, &format!("byte {pos} ^ {flip:#x}"));
        }
    }
    for len in 0..good.len() {
        reject(&good[..len], &format!("truncated to {len}"));
    }
    let mut trailing = good.clone();
    trailing.push(0);
    reject(&trailing, "trailing byte");
    reject(b"KEELDUMP\x02\x00\x00\x00\x00", "future version");

    let unknown = handmade_dump(&[("kv", b"k", b"v"), ("kvx", b"k", b"v")]);
    let r = import(&*target, &mut unknown.as_slice());
    assert!(matches!(r, Err(StorageError::UnknownTable(ref t)) if t == "kvx"), "{r:?}");
    assert_eq!(everything(&*target), before);

    // Export refuses a table import could not restore.
    put(&*target, "kvx", b"k", b"v");
    let r = export(&*target, &mut Vec::new());
    assert!(matches!(r, Err(StorageError::UnknownTable(ref t)) if t == "kvx"), "{r:?}");

    import(&*target, &mut good.as_slice()).unwrap();
    assert_eq!(
        everything(&*target),
        vec![("kv".into(), b"k".to_vec(), b"v".to_vec()), ("meta".into(), b"m".to_vec(), b"1".to_vec()),]
    );
}

fn engine_kind_names(kind: EngineKind) {
    assert_eq!(kind.to_string().parse::<EngineKind>().unwrap(), kind);
    assert!(matches!("rocksdb".parse::<EngineKind>(), Err(StorageError::UnknownEngine(_))));
    let err: crate::error::Error = StorageError::InvalidTable(String::new()).into();
    assert!(matches!(err, crate::error::Error::Storage(_)));
}

// ---------------------------------------------------------------- model test

const MODEL_TABLES: [Table; 3] = ["kv", "kvx", "meta"];

#[derive(Debug, Clone)]
enum Step {
    /// (table index, key, Some(value) = put / None = delete)
    Batch(Vec<(usize, Vec<u8>, Option<Vec<u8>>)>),
    Scan {
        table: usize,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    },
    GetMany {
        table: usize,
        keys: Vec<Vec<u8>>,
    },
    Clear,
    Sync,
}

type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet makes collisions, shared prefixes and the 0x00/0xff edges common.
    prop::collection::vec(prop::sample::select(vec![0x00u8, 0x01, b'a', 0xfe, 0xff]), 0..4)
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let table = 0..MODEL_TABLES.len();
    let op = (table.clone(), key_strategy(), prop::option::weighted(0.7, prop::collection::vec(any::<u8>(), 0..6)));
    prop_oneof![
        6 => prop::collection::vec(op, 0..8).prop_map(Step::Batch),
        3 => (table.clone(), key_strategy(), prop::option::of(key_strategy()), 1..20usize)
            .prop_map(|(table, start, end, limit)| Step::Scan { table, start, end, limit }),
        2 => (table, prop::collection::vec(key_strategy(), 0..5))
            .prop_map(|(table, keys)| Step::GetMany { table, keys }),
        1 => Just(Step::Clear),
        1 => Just(Step::Sync),
    ]
}

fn run_model(e: &dyn Engine, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    for step in steps {
        match step {
            Step::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (t, k, v) in ops {
                    let table = MODEL_TABLES[*t];
                    match v {
                        Some(v) => {
                            b.put(table, k.clone(), v.clone());
                            model.insert((table.to_string(), k.clone()), v.clone());
                        }
                        None => {
                            b.delete(table, k.clone());
                            model.remove(&(table.to_string(), k.clone()));
                        }
                    }
                }
                e.write(b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Step::Scan { table, start, end, limit } => {
                let table = MODEL_TABLES[*table];
                let mut got = Vec::new();
                e.scan(table, start, end.as_deref(), &mut |k, v| {
                    got.push((k.to_vec(), v.to_vec()));
                    got.len() < *limit
                })
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want: Rows = model
                    .iter()
                    .filter(|((t, k), _)| t == table && k >= start && end.as_ref().is_none_or(|end| k < end))
                    .take(*limit)
                    .map(|((_, k), v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(got, want, "{:?}", step);
            }
            Step::GetMany { table, keys } => {
                let table = MODEL_TABLES[*table];
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let got = e.get_many(table, &refs).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want: Vec<Option<Vec<u8>>> =
                    keys.iter().map(|k| model.get(&(table.to_string(), k.clone())).cloned()).collect();
                prop_assert_eq!(got, want, "{:?}", step);
            }
            Step::Clear => {
                e.clear().map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.clear();
            }
            Step::Sync => e.sync().map_err(|e| TestCaseError::fail(e.to_string()))?,
        }
    }
    let want: AllRows = model.iter().map(|((t, k), v)| (t.clone(), k.clone(), v.clone())).collect();
    prop_assert_eq!(everything(e), want);
    let mut tables: Vec<String> = model.keys().map(|(t, _)| t.clone()).collect();
    tables.dedup();
    prop_assert_eq!(e.tables().map_err(|e| TestCaseError::fail(e.to_string()))?, tables);
    Ok(())
}

fn model_based(kind: EngineKind) {
    // No failure persistence: it would write regression files into the source tree.
    let mut runner = TestRunner::new(Config { cases: 64, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(step_strategy(), 1..30), |steps| {
            let (_dir, e) = fresh(kind);
            run_model(&*e, &steps)
        })
        .unwrap();
}

/// The model test through the write buffer: `Sync` steps flush at random points, so scans and
/// reads see every mix of pending and committed rows, deletes of committed rows included.
fn model_based_buffered(kind: EngineKind) {
    let mut runner = TestRunner::new(Config { cases: 128, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(step_strategy(), 1..40), |steps| {
            let (_dir, e) = fresh_buffered(kind);
            run_model(&*e, &steps)
        })
        .unwrap();
}

// ---------------------------------------------------------------- crash test

/// Set in the re-executed child: the database directory to write into.
const CRASH_CHILD_ENV: &str = "KEEL_STORAGE_CRASH_CHILD";
const SYNCED: &str = "KEEL-STORAGE-SYNCED ";
const KV_PER_BATCH: u64 = 3;

fn crash_kv_key(n: u64, i: u64) -> Vec<u8> {
    format!("crash/{n:08}/{i}").into_bytes()
}

fn crash_kv_value(n: u64, i: u64) -> Vec<u8> {
    let len = usize::try_from(100 + (n * 7 + i * 1300) % 5000).unwrap();
    vec![u8::try_from(n % 251).unwrap(); len]
}

/// Batch n writes three kv rows, one lease row and meta/last = n: any half-applied batch shows as
/// a mismatch among them.
fn crash_batch(n: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    for i in 0..KV_PER_BATCH {
        b.put("kv", crash_kv_key(n, i), crash_kv_value(n, i));
    }
    b.put("lease", n.to_be_bytes(), n.to_le_bytes()).put("meta", b"last", n.to_be_bytes());
    b
}

fn crash_last(e: &dyn Engine) -> u64 {
    e.get("meta", b"last").unwrap().map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

fn crash_child(kind: EngineKind, dir: &Path) {
    let e = open(kind, dir).unwrap();
    let mut n = crash_last(&*e) + 1;
    let mut out = std::io::stdout();
    // Runs until the parent kills it; the cap only guards against an orphaned child.
    while n < 100_000 {
        e.write(crash_batch(n)).unwrap();
        e.sync().unwrap();
        writeln!(out, "{SYNCED}{n}").unwrap();
        out.flush().unwrap();
        n += 1;
    }
}

fn crash_verify(kind: EngineKind, dir: &Path, printed: u64) -> u64 {
    let e = open(kind, dir).unwrap();
    let last = crash_last(&*e);
    assert!(last >= printed, "synced batch {printed} lost; meta/last = {last}");
    for n in 1..=last {
        for i in 0..KV_PER_BATCH {
            assert_eq!(e.get("kv", &crash_kv_key(n, i)).unwrap(), Some(crash_kv_value(n, i)), "batch {n} row {i}");
        }
        assert_eq!(e.get("lease", &n.to_be_bytes()).unwrap(), Some(n.to_le_bytes().to_vec()));
    }
    // Nothing of any batch past `last`: that would be a half-applied batch.
    let kv_rows = scan(&*e, "kv", b"", None).len();
    assert_eq!(kv_rows as u64, last * KV_PER_BATCH);
    assert_eq!(scan(&*e, "lease", b"", None).len() as u64, last);
    last
}

/// Re-runs this test binary as a child that writes and syncs numbered batches, kill -9s it, and
/// checks that every batch it reported synced survived whole and none survived in part. Two
/// rounds, so the second child starts from a database that was itself recovered.
fn crash_recovery(kind: EngineKind, test_fn: &str) {
    if let Ok(dir) = std::env::var(CRASH_CHILD_ENV) {
        crash_child(kind, Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let crate_relative = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let test_name = format!("{crate_relative}::{test_fn}");
    let mut printed = 0;
    for wait_for in [25, 15] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix(SYNCED) {
                printed = n.trim().parse().unwrap();
                seen += 1;
                if seen == wait_for {
                    break;
                }
            }
        }
        assert_eq!(seen, wait_for, "child stopped early: {:?}", child.try_wait());
        child.kill().unwrap(); // SIGKILL: no destructors, no final flush
        child.wait().unwrap();
        let last = crash_verify(kind, dir.path(), printed);
        assert!(last >= printed);
    }
}

// ---------------------------------------------------------------- one #[test] per engine and case

macro_rules! per_engine {
    ($kind:ident, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_dir, engine) = super::fresh(super::EngineKind::$kind);
                super::$case(&*engine);
            }
        )*
    };
}

macro_rules! per_kind {
    ($kind:ident, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                super::$case(super::EngineKind::$kind);
            }
        )*
    };
}

macro_rules! suite {
    ($($module:ident => $kind:ident),*) => {
        $(
            mod $module {
                per_engine!(
                    $kind,
                    get_put_delete,
                    batch_is_atomic_across_tables,
                    scan_bounds,
                    get_many,
                    tables_lists_non_empty,
                    clear_removes_everything,
                    scan_all_orders_by_table_then_key,
                    invalid_table_names_rejected,
                    size_is_reported,
                    reads_see_whole_batches,
                );
                per_kind!(
                    $kind,
                    sync_then_reopen,
                    export_import_across_engines,
                    corrupt_dump_is_rejected,
                    engine_kind_names,
                    model_based,
                    defragment_under_writes,
                );
            }
        )*
    };
}

suite!(on_redb => Redb, on_sled => Sled);

macro_rules! per_buffered_engine {
    ($kind:ident, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_dir, engine) = super::fresh_buffered(super::EngineKind::$kind);
                super::$case(&*engine);
            }
        )*

        #[test]
        fn model_based() {
            super::model_based_buffered(super::EngineKind::$kind);
        }
    };
}

macro_rules! buffered_suite {
    ($($module:ident => $kind:ident),*) => {
        $(
            mod $module {
                per_buffered_engine!(
                    $kind,
                    get_put_delete,
                    batch_is_atomic_across_tables,
                    scan_bounds,
                    get_many,
                    tables_lists_non_empty,
                    clear_removes_everything,
                    scan_all_orders_by_table_then_key,
                    invalid_table_names_rejected,
                    reads_see_whole_batches,
                );
            }
        )*
    };
}

buffered_suite!(buffered_on_redb => Redb, buffered_on_sled => Sled);

#[test]
fn crash_recovery_redb() {
    crash_recovery(EngineKind::Redb, "crash_recovery_redb");
}

#[test]
fn crash_recovery_sled() {
    crash_recovery(EngineKind::Sled, "crash_recovery_sled");
}
