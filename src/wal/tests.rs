//! Tests for the WAL: replay semantics, rotation and purge, torn-tail repair, corruption detection,
//! group commit, and durability across kill -9 of a child process.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::format::{self, Checkpoint, Decoded};
use super::*;

fn payload(index: u64) -> Vec<u8> {
    // Varying lengths so frames do not all line up the same way.
    let mut data = format!("entry-{index}-").into_bytes();
    data.resize(data.len() + (index % 13) as usize, b'x');
    data
}

fn entry(index: u64) -> Record {
    Record::Entry { index, data: payload(index) }
}

fn meta(key: &str, value: &str) -> Record {
    Record::Meta { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
}

fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes }
}

fn open(dir: &Path, segment_bytes: u64) -> (Wal, Recovered) {
    Wal::open(dir, opts(segment_bytes)).unwrap()
}

fn expected(range: std::ops::RangeInclusive<u64>) -> BTreeMap<u64, Vec<u8>> {
    range.map(|i| (i, payload(i))).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

fn write_entries(wal: &Wal, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        wal.write_sync(vec![entry(i)]).unwrap();
    }
}

#[test]
fn wal_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Wal>();
    check::<Arc<Wal>>();
    check::<WalError>();
}

#[test]
fn format_round_trips_every_kind() {
    let records = vec![
        entry(7),
        Record::Entry { index: u64::MAX, data: vec![] },
        Record::TruncateFrom { index: 3 },
        Record::PurgeTo { index: 0 },
        meta("vote", "term=3"),
        Record::Meta { key: vec![], value: vec![] },
    ];
    let mut buf = Vec::new();
    for r in &records {
        format::encode_record(r, &mut buf).unwrap();
    }
    let mut m = HashMap::new();
    m.insert(b"b".to_vec(), b"2".to_vec());
    m.insert(b"a".to_vec(), vec![]);
    format::encode_checkpoint(9, Some(42), &m, &mut buf).unwrap();

    let mut pos = 0;
    let mut decoded = Vec::new();
    while let Some((p, next)) = format::read_frame(&buf, pos).unwrap() {
        decoded.push(format::decode(p).unwrap());
        pos = next;
    }
    let mut want: Vec<Decoded> = records.into_iter().map(Decoded::Record).collect();
    want.push(Decoded::Checkpoint(Checkpoint {
        seq: 9,
        purged_to: Some(42),
        meta: vec![(b"a".to_vec(), vec![]), (b"b".to_vec(), b"2".to_vec())],
    }));
    assert_eq!(decoded, want);
}

#[test]
fn segment_names_are_strict() {
    assert_eq!(recover::parse_segment_name("00000000000000ff.wal"), Some(255));
    assert_eq!(recover::segment_name(255), "00000000000000ff.wal");
    for bad in ["00000000000000FF.wal", "0ff.wal", "00000000000000ff.wal.bak", "000000000000000g.wal", "LOCK"] {
        assert_eq!(recover::parse_segment_name(bad), None, "{bad}");
    }
}

#[test]
fn round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec, Recovered::default());
    write_entries(&wal, 1..=20);
    wal.write_sync(vec![entry(21), entry(22), meta("vote", "1/2")]).unwrap();
    wal.write_sync(vec![]).unwrap();
    drop(wal);

    let (wal, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.entries, expected(1..=22));
    assert_eq!(rec.meta.get(&b"vote"[..]), Some(&b"1/2".to_vec()));
    assert_eq!(rec.purged_to, None);
    // Appending after a reopen continues the same segment.
    write_entries(&wal, 23..=25);
    drop(wal);
    let (_wal, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.entries, expected(1..=25));
    assert_eq!(segments(dir.path()).len(), 1);
}

#[test]
fn truncate_and_purge_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 64 << 20);
    write_entries(&wal, 1..=20);
    wal.write_sync(vec![Record::TruncateFrom { index: 15 }, Record::Entry { index: 15, data: b"new-15".to_vec() }])
        .unwrap();
    wal.write_sync(vec![Record::Entry { index: 16, data: b"new-16".to_vec() }]).unwrap();
    wal.write_sync(vec![Record::PurgeTo { index: 5 }]).unwrap();
    // Overwriting an index without a truncate keeps the latest bytes.
    wal.write_sync(vec![Record::Entry { index: 16, data: b"newer-16".to_vec() }]).unwrap();
    drop(wal);

    let (_wal, rec) = open(dir.path(), 64 << 20);
    let mut want = expected(6..=14);
    want.insert(15, b"new-15".to_vec());
    want.insert(16, b"newer-16".to_vec());
    assert_eq!(rec.entries, want);
    assert_eq!(rec.purged_to, Some(5));
}

#[test]
fn purge_point_never_moves_back() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 64 << 20);
    write_entries(&wal, 1..=10);
    wal.write_sync(vec![Record::PurgeTo { index: 6 }]).unwrap();
    wal.write_sync(vec![Record::PurgeTo { index: 3 }]).unwrap();
    drop(wal);
    let (_wal, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.purged_to, Some(6));
    assert_eq!(rec.entries, expected(7..=10));
}

#[test]
fn meta_last_write_wins_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 200);
    wal.write_sync(vec![meta("cluster", "c1")]).unwrap();
    for i in 1..=100u64 {
        wal.write_sync(vec![meta("vote", &format!("v{i}")), entry(i)]).unwrap();
        if i % 10 == 0 {
            wal.write_sync(vec![meta("committed", &i.to_string())]).unwrap();
        }
    }
    drop(wal);
    assert!(segments(dir.path()).len() > 5);

    let (wal, rec) = open(dir.path(), 200);
    assert_eq!(rec.meta.len(), 3);
    assert_eq!(rec.meta[&b"vote"[..]], b"v100");
    assert_eq!(rec.meta[&b"committed"[..]], b"100");
    assert_eq!(rec.meta[&b"cluster"[..]], b"c1");
    assert_eq!(rec.entries, expected(1..=100));

    // Delete the segments holding the Meta records themselves: checkpoints must carry them.
    let before = segments(dir.path()).len();
    wal.write_sync(vec![Record::PurgeTo { index: 95 }]).unwrap();
    wal.write_sync(vec![meta("vote", "v-final")]).unwrap();
    drop(wal);
    assert!(segments(dir.path()).len() < before);
    let (_wal, rec) = open(dir.path(), 200);
    assert_eq!(rec.meta[&b"vote"[..]], b"v-final");
    assert_eq!(rec.meta[&b"committed"[..]], b"100");
    assert_eq!(rec.meta[&b"cluster"[..]], b"c1");
    assert_eq!(rec.entries, expected(96..=100));
    assert_eq!(rec.purged_to, Some(95));
}

#[test]
fn segments_are_deleted_after_purge_and_recovery_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 256);
    write_entries(&wal, 1..=200);
    let all = segments(dir.path());
    assert!(all.len() > 10, "{} segments", all.len());

    wal.write_sync(vec![Record::PurgeTo { index: 100 }]).unwrap();
    let left = segments(dir.path());
    assert!(left.len() < all.len());
    // Only the oldest went, and what is left is still consecutive up to the newest.
    assert_eq!(left[..], all[all.len() - left.len()..]);
    // The first surviving segment must still hold an entry above the purge point.
    drop(wal);
    let (wal, rec) = open(dir.path(), 256);
    assert_eq!(rec.entries, expected(101..=200));
    assert_eq!(rec.purged_to, Some(100));

    // Purge everything: all but the current segment go; the log stays usable.
    write_entries(&wal, 201..=210);
    wal.write_sync(vec![Record::PurgeTo { index: 210 }]).unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    drop(wal);
    let (wal, rec) = open(dir.path(), 256);
    assert!(rec.entries.is_empty());
    assert_eq!(rec.purged_to, Some(210));
    write_entries(&wal, 211..=212);
    drop(wal);
    let (_wal, rec) = open(dir.path(), 256);
    assert_eq!(rec.entries, expected(211..=212));
    assert_eq!(rec.purged_to, Some(210));
}

#[test]
fn truncated_entries_let_old_segments_go() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 256);
    write_entries(&wal, 1..=100);
    wal.write_sync(vec![Record::TruncateFrom { index: 10 }]).unwrap();
    write_entries(&wal, 10..=40);
    let before = segments(dir.path()).len();
    wal.write_sync(vec![Record::PurgeTo { index: 20 }]).unwrap();
    // Segments that once held entries 21..=100 hold nothing live after the truncate.
    assert!(segments(dir.path()).len() < before);
    drop(wal);
    let (_wal, rec) = open(dir.path(), 256);
    assert_eq!(rec.entries, expected(21..=40));
    assert_eq!(rec.purged_to, Some(20));
}

#[test]
fn segment_with_live_entries_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 256);
    write_entries(&wal, 1..=100);
    let all = segments(dir.path());
    // Purging up to one below the first segment's highest entry must not delete it.
    wal.write_sync(vec![Record::PurgeTo { index: 1 }]).unwrap();
    assert_eq!(segments(dir.path()), all);
    drop(wal);
    let (_wal, rec) = open(dir.path(), 256);
    assert_eq!(rec.entries, expected(2..=100));
}

/// Length of the records in a segment's bytes: where the preallocated zeros begin.
fn logical_len(bytes: &[u8]) -> usize {
    let mut pos = 0;
    while let Some((_, next)) = format::read_frame(bytes, pos).unwrap() {
        pos = next;
    }
    pos
}

/// Builds a single-segment log of entries 1..=6 and returns (its records' bytes without the
/// preallocated zeros, length before entry 6).
fn six_entry_segment() -> (Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 64 << 20);
    write_entries(&wal, 1..=5);
    drop(wal);
    let seg = segments(dir.path()).pop().unwrap();
    let before = logical_len(&fs::read(&seg).unwrap());
    let (wal, _) = open(dir.path(), 64 << 20);
    write_entries(&wal, 6..=6);
    drop(wal);
    let mut bytes = fs::read(&seg).unwrap();
    bytes.truncate(logical_len(&bytes));
    (bytes, before)
}

fn check_repaired_then_appendable(dir: &Path, want: BTreeMap<u64, Vec<u8>>) {
    let (wal, rec) = open(dir, 64 << 20);
    assert_eq!(rec.entries, want);
    wal.write_sync(vec![entry(100), meta("k", "v")]).unwrap();
    drop(wal);
    let (_wal, rec) = open(dir, 64 << 20);
    let mut want = want;
    want.insert(100, payload(100));
    assert_eq!(rec.entries, want);
    assert_eq!(rec.meta[&b"k"[..]], b"v");
}

#[test]
fn torn_tail_at_every_offset_of_the_last_record() {
    let (full, last_start) = six_entry_segment();
    assert!(full.len() > last_start + 8);
    for cut in last_start..full.len() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(recover::segment_name(0));
        fs::write(&seg, &full[..cut]).unwrap();
        let (wal, rec) = open(dir.path(), 64 << 20);
        assert_eq!(rec.entries, expected(1..=5), "cut at {cut}");
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, last_start);
        drop(wal);
        check_repaired_then_appendable(dir.path(), expected(1..=5));
    }
}

#[test]
fn torn_tail_garbage_after_the_last_record() {
    let (full, _) = six_entry_segment();
    let mut bad_crc = Vec::new();
    bad_crc.extend_from_slice(&10u32.to_le_bytes());
    bad_crc.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    bad_crc.extend_from_slice(&[7u8; 10]);
    let mut huge_len = Vec::new();
    huge_len.extend_from_slice(&1_000_000u32.to_le_bytes());
    huge_len.extend_from_slice(&[1u8; 20]);
    let garbages: Vec<Vec<u8>> =
        vec![vec![0u8; 1], vec![0u8; 4096], vec![0xffu8; 3], vec![0xffu8; 100], bad_crc, huge_len];
    for garbage in garbages {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = full.clone();
        bytes.extend_from_slice(&garbage);
        fs::write(dir.path().join(recover::segment_name(0)), &bytes).unwrap();
        check_repaired_then_appendable(dir.path(), expected(1..=6));
    }
}

#[test]
fn flipped_byte_in_the_last_segment_cuts_from_there() {
    let (full, last_start) = six_entry_segment();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = full.clone();
    bytes[last_start + 12] ^= 0x40;
    fs::write(dir.path().join(recover::segment_name(0)), &bytes).unwrap();
    check_repaired_then_appendable(dir.path(), expected(1..=5));
}

#[test]
fn crash_while_creating_a_segment_is_repaired() {
    for partial in [0usize, 5, 20] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 64 << 20);
        write_entries(&wal, 1..=3);
        wal.write_sync(vec![meta("vote", "x"), Record::PurgeTo { index: 1 }]).unwrap();
        drop(wal);
        // A new segment whose checkpoint never fully reached the disk.
        let mut cp = Vec::new();
        let mut m = HashMap::new();
        m.insert(b"vote".to_vec(), b"x".to_vec());
        format::encode_checkpoint(1, Some(1), &m, &mut cp).unwrap();
        let next = dir.path().join(recover::segment_name(1));
        fs::write(&next, &cp[..partial.min(cp.len() - 1)]).unwrap();

        let (wal, rec) = open(dir.path(), 64 << 20);
        assert_eq!(rec.entries, expected(2..=3));
        assert_eq!(rec.meta[&b"vote"[..]], b"x");
        write_entries(&wal, 4..=4);
        drop(wal);
        let (_wal, rec) = open(dir.path(), 64 << 20);
        assert_eq!(rec.entries, expected(2..=4));
        assert_eq!(rec.purged_to, Some(1));
        assert_eq!(rec.meta[&b"vote"[..]], b"x");
        assert_eq!(segments(dir.path()).len(), 2);
    }
}

fn multi_segment_log() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 300);
    write_entries(&wal, 1..=60);
    drop(wal);
    let segs = segments(dir.path());
    assert!(segs.len() >= 4, "{} segments", segs.len());
    (dir, segs)
}

fn assert_corrupt_in(result: Result<(Wal, Recovered), WalError>, path: &Path) {
    match result {
        Err(WalError::Corrupt { file, .. }) => assert_eq!(file, path),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("expected corruption, open succeeded"),
    }
}

#[test]
fn flipped_byte_in_a_middle_segment_fails_open() {
    let (dir, segs) = multi_segment_log();
    let victim = &segs[1];
    let mut bytes = fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    fs::write(victim, &bytes).unwrap();
    let result = Wal::open(dir.path(), opts(300));
    if let Err(WalError::Corrupt { offset, .. }) = &result {
        assert!(*offset <= at as u64);
    }
    assert_corrupt_in(result, victim);
    // Nothing was "repaired" behind our back.
    assert_eq!(fs::read(victim).unwrap(), bytes);
}

#[test]
fn damaged_first_checkpoint_or_chopped_middle_segment_fails_open() {
    let (dir, segs) = multi_segment_log();
    let mut bytes = fs::read(&segs[0]).unwrap();
    bytes[10] ^= 0x80;
    fs::write(&segs[0], &bytes).unwrap();
    assert_corrupt_in(Wal::open(dir.path(), opts(300)), &segs[0]);

    let (dir, segs) = multi_segment_log();
    let bytes = fs::read(&segs[2]).unwrap();
    fs::write(&segs[2], &bytes[..bytes.len() - 3]).unwrap();
    assert_corrupt_in(Wal::open(dir.path(), opts(300)), &segs[2]);
}

#[test]
fn missing_middle_segment_fails_open() {
    let (dir, segs) = multi_segment_log();
    fs::remove_file(&segs[1]).unwrap();
    assert_corrupt_in(Wal::open(dir.path(), opts(300)), &segs[2]);
}

#[test]
fn second_open_of_the_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 64 << 20);
    assert!(matches!(Wal::open(dir.path(), WalOptions::default()), Err(WalError::Locked { .. })));
    wal.close();
    // The lock goes with the writer, not with the handle.
    let (_again, _) = open(dir.path(), 64 << 20);
}

#[test]
fn close_drains_queue_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 4096);
    let (tx, rx) = mpsc::channel();
    for i in 1..=200u64 {
        let tx = tx.clone();
        wal.submit(vec![entry(i)], Box::new(move |r| tx.send((i, r.is_ok())).unwrap()));
    }
    wal.close();
    let answers: Vec<(u64, bool)> = rx.try_iter().collect();
    assert_eq!(answers, (1..=200).map(|i| (i, true)).collect::<Vec<_>>());
    assert!(matches!(wal.write_sync(vec![entry(201)]), Err(WalError::Closed)));
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    wal.submit(vec![entry(202)], Box::new(move |r| *seen2.lock().unwrap() = Some(r)));
    assert!(matches!(seen.lock().unwrap().take(), Some(Err(WalError::Closed))));
    wal.close();
    drop(wal);
    let (_wal, rec) = open(dir.path(), 4096);
    assert_eq!(rec.entries, expected(1..=200));
}

#[test]
fn completions_run_in_submit_order_and_survive_a_panicking_one() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1024);
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 1..=300u64 {
        let order = Arc::clone(&order);
        wal.submit(
            vec![entry(i)],
            Box::new(move |r| {
                r.unwrap();
                order.lock().unwrap().push(i);
                if i == 150 {
                    panic!("callback panics on purpose");
                }
            }),
        );
    }
    wal.write_sync(vec![entry(301)]).unwrap();
    assert_eq!(*order.lock().unwrap(), (1..=300).collect::<Vec<_>>());
}

#[test]
fn write_sync_from_a_callback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1024);
    let wal = Arc::new(wal);
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&wal);
    wal.submit(
        vec![entry(1)],
        Box::new(move |r| {
            r.unwrap();
            tx.send(inner.write_sync(vec![entry(2)])).unwrap();
        }),
    );
    let nested = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(matches!(nested, Err(WalError::Reentrant)));
    // The writer is still healthy afterwards.
    wal.write_sync(vec![entry(3)]).unwrap();
}

#[test]
fn close_from_a_callback_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 1024);
    let wal = Arc::new(wal);
    let (tx, rx) = mpsc::channel();
    let inner = Arc::clone(&wal);
    wal.submit(
        vec![entry(1)],
        Box::new(move |r| {
            inner.close();
            tx.send(r.is_ok()).unwrap();
        }),
    );
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    assert!(matches!(wal.write_sync(vec![entry(2)]), Err(WalError::Closed)));
}

#[test]
fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), 64 << 20);
    let wal = Arc::new(wal);
    let start = wal.fsync_count();
    let next = Arc::new(AtomicU64::new(1));
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let wal = Arc::clone(&wal);
            let next = Arc::clone(&next);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..125 {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let tx = tx.clone();
                    wal.submit(vec![entry(i)], Box::new(move |r| tx.send(r.is_ok()).unwrap()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(tx);
    let acks: Vec<bool> = rx.iter().take(1000).collect();
    assert_eq!(acks.len(), 1000);
    assert!(acks.iter().all(|ok| *ok));
    let fsyncs = wal.fsync_count() - start;
    eprintln!("group commit (submit): 1000 submits from 8 threads took {fsyncs} fsyncs");
    assert!(fsyncs < 200, "{fsyncs} fsyncs for 1000 submits");

    // Blocking writers: at most 8 are in flight, so batches are small but still shared.
    let start = wal.fsync_count();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let wal = Arc::clone(&wal);
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                for _ in 0..125 {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    wal.write_sync(vec![entry(i)]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let fsyncs = wal.fsync_count() - start;
    eprintln!("group commit (write_sync): 1000 submits from 8 threads took {fsyncs} fsyncs");
    assert!(fsyncs < 700, "{fsyncs} fsyncs for 1000 write_sync calls");
    drop(wal);
    let (_wal, rec) = open(dir.path(), 64 << 20);
    assert_eq!(rec.entries, expected(1..=2000));
}

/// A tiny deterministic generator, so failures reproduce without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Model {
    entries: BTreeMap<u64, Vec<u8>>,
    meta: HashMap<Vec<u8>, Vec<u8>>,
    purged_to: Option<u64>,
}

impl Model {
    fn apply(&mut self, r: &Record) {
        match r {
            Record::Entry { index, data } => {
                self.entries.insert(*index, data.clone());
            }
            Record::TruncateFrom { index } => {
                self.entries.retain(|i, _| i < index);
            }
            Record::PurgeTo { index } => {
                self.entries.retain(|i, _| i > index);
                self.purged_to = Some(self.purged_to.map_or(*index, |p| p.max(*index)));
            }
            Record::Meta { key, value } => {
                self.meta.insert(key.clone(), value.clone());
            }
        }
    }

    fn check(&self, rec: &Recovered, step: usize) {
        assert_eq!(rec.entries, self.entries, "entries after step {step}");
        assert_eq!(rec.meta, self.meta, "meta after step {step}");
        assert_eq!(rec.purged_to, self.purged_to, "purged_to after step {step}");
    }
}

#[test]
fn random_ops_match_a_model_across_reopens() {
    for seed in [0x9e37_79b9_7f4a_7c15u64, 42, 7_777_777] {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let mut model = Model::default();
        let (mut wal, _) = open(dir.path(), 512);
        let mut last = 0u64;
        for step in 0..400 {
            let mut batch = Vec::new();
            match rng.below(10) {
                0..=4 => {
                    for _ in 0..=rng.below(4) {
                        last += 1;
                        batch.push(Record::Entry { index: last, data: format!("{seed}-{step}-{last}").into_bytes() });
                    }
                }
                5 => {
                    let low = model.purged_to.map_or(1, |p| p + 1);
                    if last >= low {
                        let t = low + rng.below(last - low + 1);
                        batch.push(Record::TruncateFrom { index: t });
                        last = t - 1;
                    }
                }
                6 => {
                    if last > 0 {
                        batch.push(Record::PurgeTo { index: rng.below(last + 1) });
                    }
                }
                7 | 8 => batch
                    .push(Record::Meta { key: vec![b'k', rng.below(3) as u8], value: step.to_string().into_bytes() }),
                _ => {
                    drop(wal);
                    let (w, rec) = open(dir.path(), 512);
                    wal = w;
                    model.check(&rec, step);
                    continue;
                }
            }
            wal.write_sync(batch.clone()).unwrap();
            for r in &batch {
                model.apply(r);
            }
        }
        drop(wal);
        let (_wal, rec) = open(dir.path(), 512);
        model.check(&rec, usize::MAX);
    }
}

const CRASH_ENV: &str = "KEEL_WAL_CRASH_CHILD_DIR";

/// The child half of `acknowledged_writes_survive_kill_9`; a no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    let (wal, rec) = Wal::open(Path::new(&dir), opts(4096)).unwrap();
    let wal = Arc::new(wal);
    let first = rec.entries.keys().next_back().copied().max(rec.purged_to).unwrap_or(0) + 1;
    let next = Arc::new(AtomicU64::new(first));
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let wal = Arc::clone(&wal);
            let next = Arc::clone(&next);
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    wal.write_sync(vec![entry(i)]).unwrap();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {i}").unwrap();
                    if i.is_multiple_of(97) && i > 300 {
                        drop(out);
                        wal.write_sync(vec![Record::PurgeTo { index: i - 300 }]).unwrap();
                        out = std::io::stdout().lock();
                        writeln!(out, "purge {}", i - 300).unwrap();
                    }
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let module = module_path!();
    let test_name = format!("{}::crash_child", module.split_once("::").map_or(module, |(_, rest)| rest));
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut max_purge: Option<u64> = None;
    for round in 0..3 {
        let mut child = std::process::Command::new(&exe)
            .args([test_name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_ENV, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut this_round = 0;
        let mut killed = false;
        while let Some(Ok(line)) = lines.next() {
            if let Some(i) = line.strip_prefix("ack ") {
                acked.push(i.trim().parse().unwrap());
                this_round += 1;
            } else if let Some(p) = line.strip_prefix("purge ") {
                let p: u64 = p.trim().parse().unwrap();
                max_purge = max_purge.max(Some(p));
            }
            if !killed && this_round >= 1500 + 500 * round {
                child.kill().unwrap();
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "child exited on its own: {status}");

        let (wal, rec) = open(dir.path(), 4096);
        eprintln!(
            "kill -9 round {round}: {} acknowledged so far, {} entries recovered, purged to {:?}",
            acked.len(),
            rec.entries.len(),
            rec.purged_to
        );
        assert!(rec.purged_to >= max_purge, "round {round}");
        let floor = rec.purged_to.unwrap_or(0);
        for &i in &acked {
            if i > floor {
                assert_eq!(rec.entries.get(&i), Some(&payload(i)), "round {round}: acknowledged entry {i} lost");
            }
        }
        drop(wal);
    }
    assert!(acked.len() >= 1500 + 2000 + 2500);
    assert!(max_purge.is_some());
}

// ---- Preallocated segments ----

const SMALL_SEGMENT: u64 = 64 << 10;

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Asserts the segment's records end at `end` and nothing but zeros follows.
fn assert_zero_after(path: &Path, end: usize) {
    let bytes = fs::read(path).unwrap();
    assert_eq!(logical_len(&bytes), end, "{}", path.display());
    assert_eq!(format::last_nonzero(&bytes[end..]), None, "{}: stray bytes after the records", path.display());
}

#[test]
fn zeroed_frame_header_is_the_end_not_an_empty_record() {
    // The CRC of an empty payload is 0, so an all-zero header would checksum as a valid empty frame.
    assert_eq!(crc32fast::hash(&[]), 0);
    for zeros in [vec![0u8; 8], vec![0u8; 3], vec![0u8; 4096], vec![]] {
        assert_eq!(format::read_frame(&zeros, 0), Ok(None), "{} zero bytes", zeros.len());
    }
    let mut buf = Vec::new();
    format::encode_record(&entry(1), &mut buf).unwrap();
    let end = buf.len();
    buf.resize(end + 100, 0);
    assert!(format::read_frame(&buf, 0).unwrap().is_some());
    assert_eq!(format::read_frame(&buf, end), Ok(None));
    // Length 0 with a checksum is damage, not the end.
    let mut odd = vec![0u8; 8];
    odd[5] = 1;
    assert_eq!(format::read_frame(&odd, 0), Err(format::FrameError::ZeroLength));
    assert_eq!(format::read_frame(&[0, 0, 1], 0), Err(format::FrameError::ShortHeader));

    assert_eq!(format::last_nonzero(&[]), None);
    assert_eq!(format::last_nonzero(&vec![0u8; 10_000]), None);
    let mut v = vec![0u8; 10_000];
    v[4095] = 1;
    v[17] = 2;
    assert_eq!(format::last_nonzero(&v), Some(4095));
}

#[test]
fn segments_are_preallocated_and_appends_stay_inside_them() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    let seg = segments(dir.path()).pop().unwrap();
    assert_eq!(file_len(&seg), SMALL_SEGMENT);
    write_entries(&wal, 1..=50);
    assert_eq!(file_len(&seg), SMALL_SEGMENT, "appends must overwrite the zeros, not grow the file");
    drop(wal);
    let end = logical_len(&fs::read(&seg).unwrap());
    assert_zero_after(&seg, end);

    // Reopen and append: the new records go right after the old ones, inside the same file.
    let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=50));
    write_entries(&wal, 51..=60);
    drop(wal);
    assert_eq!(file_len(&seg), SMALL_SEGMENT);
    assert_eq!(segments(dir.path()).len(), 1);
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=60));
}

#[test]
fn logical_length_drives_rotation_and_next_segment_is_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    let tmp = dir.path().join(writer::NEXT_SEGMENT_TMP);
    // Each entry frame is 30-42 bytes: ~2000 fill a 64 KiB segment.
    let mut i = 0;
    while segments(dir.path()).len() < 3 {
        i += 1;
        wal.write_sync(vec![entry(i)]).unwrap();
        assert!(i < 10_000, "never rotated");
    }
    let segs = segments(dir.path());
    for seg in &segs[..2] {
        let len = logical_len(&fs::read(seg).unwrap()) as u64;
        // Rotated only once the records (not the file) passed the segment size.
        assert!(len > SMALL_SEGMENT && len < SMALL_SEGMENT + 100, "{}: {len}", seg.display());
        assert_eq!(file_len(seg), len, "the last append before rotation grows the file");
    }
    assert_eq!(file_len(&segs[2]), SMALL_SEGMENT, "the new segment was preallocated");
    // Past half of the current segment the next one is being prepared; the writer waits for it
    // on close, so afterwards it is complete.
    while logical_len(&fs::read(&segs[2]).unwrap()) as u64 <= SMALL_SEGMENT / 2 {
        i += 1;
        wal.write_sync(vec![entry(i)]).unwrap();
    }
    drop(wal);
    assert_eq!(file_len(&tmp), SMALL_SEGMENT);
    assert_eq!(format::last_nonzero(&fs::read(&tmp).unwrap()), None);
    let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=i));
    write_entries(&wal, i + 1..=i + 5);
    drop(wal);
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=i + 5));
}

/// A preallocated single-segment log of entries 1..=6: (path, file bytes, start of entry 6, end
/// of entry 6).
fn preallocated_six(dir: &Path) -> (PathBuf, Vec<u8>, usize, usize) {
    let (wal, _) = open(dir, SMALL_SEGMENT);
    write_entries(&wal, 1..=5);
    drop(wal);
    let seg = segments(dir).pop().unwrap();
    let start = logical_len(&fs::read(&seg).unwrap());
    let (wal, _) = open(dir, SMALL_SEGMENT);
    write_entries(&wal, 6..=6);
    drop(wal);
    let bytes = fs::read(&seg).unwrap();
    let end = logical_len(&bytes);
    assert_eq!(bytes.len() as u64, SMALL_SEGMENT);
    (seg, bytes, start, end)
}

#[test]
fn torn_record_followed_by_zeros_is_a_torn_tail() {
    let template = tempfile::tempdir().unwrap();
    let (_, full, start, end) = preallocated_six(template.path());
    // Every prefix of the last record, the rest of the file still zeros: what a crash leaves when
    // only part of the record's pages reached the disk.
    for cut in start..end {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(recover::segment_name(0));
        let mut bytes = full.clone();
        bytes[cut..end].fill(0);
        fs::write(&seg, &bytes).unwrap();
        let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
        assert_eq!(rec.entries, expected(1..=5), "cut at {cut}");
        assert_eq!(file_len(&seg), SMALL_SEGMENT, "cut at {cut}: repair must keep the preallocation");
        assert_zero_after(&seg, start);
        write_entries(&wal, 6..=7);
        drop(wal);
        let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
        assert_eq!(rec.entries, expected(1..=7), "cut at {cut}");
    }
    // The record's head missing but its tail present (pages persisted out of order).
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join(recover::segment_name(0));
    let mut bytes = full.clone();
    bytes[start..start + 8].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=5));
    assert_zero_after(&seg, start);
}

#[test]
fn stray_record_after_the_zeros_is_cleared_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, mut bytes, _, end) = preallocated_six(dir.path());
    // A complete, valid frame beyond the end: a later page of an unacknowledged batch. Left in
    // place, later appends could close the gap and make it look like part of the log.
    let mut stray = Vec::new();
    format::encode_record(&Record::Entry { index: 99, data: b"phantom".to_vec() }, &mut stray).unwrap();
    let at = end + 64;
    bytes[at..at + stray.len()].copy_from_slice(&stray);
    fs::write(&seg, &bytes).unwrap();
    let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=6));
    assert_zero_after(&seg, end);
    assert_eq!(file_len(&seg), SMALL_SEGMENT);
    write_entries(&wal, 7..=20);
    drop(wal);
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=20));
}

#[test]
fn stray_bytes_after_the_end_of_a_middle_segment_fail_open() {
    let dir = tempfile::tempdir().unwrap();
    // Written with large segments, then reopened with small ones: segment 0 is closed while far
    // from full, so it keeps preallocated zeros behind its records.
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    write_entries(&wal, 1..=20);
    drop(wal);
    let (wal, _) = open(dir.path(), 300);
    write_entries(&wal, 21..=40);
    drop(wal);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let (_wal, rec) = open(dir.path(), 300);
    assert_eq!(rec.entries, expected(1..=40));
    drop(_wal);

    let mut bytes = fs::read(&segs[0]).unwrap();
    let end = logical_len(&bytes);
    assert!(bytes.len() > end + 1000);
    bytes[end + 1000] = 0x5a;
    fs::write(&segs[0], &bytes).unwrap();
    match Wal::open(dir.path(), opts(300)) {
        Err(WalError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, segs[0]);
            assert_eq!(offset, end as u64 + 1000);
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("expected corruption, open succeeded"),
    }
    assert_eq!(fs::read(&segs[0]).unwrap(), bytes, "nothing repaired in a middle segment");
}

#[test]
fn crash_right_after_creating_a_preallocated_segment() {
    // 0: renamed into place, checkpoint never written; then torn checkpoints followed by zeros.
    for partial in [0usize, 1, 8, 20] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SMALL_SEGMENT);
        write_entries(&wal, 1..=3);
        wal.write_sync(vec![meta("vote", "x"), Record::PurgeTo { index: 1 }]).unwrap();
        drop(wal);
        let mut cp = Vec::new();
        let mut m = HashMap::new();
        m.insert(b"vote".to_vec(), b"x".to_vec());
        format::encode_checkpoint(1, Some(1), &m, &mut cp).unwrap();
        let mut bytes = vec![0u8; SMALL_SEGMENT as usize];
        let partial = partial.min(cp.len() - 1);
        bytes[..partial].copy_from_slice(&cp[..partial]);
        let next = dir.path().join(recover::segment_name(1));
        fs::write(&next, &bytes).unwrap();

        let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
        assert_eq!(rec.entries, expected(2..=3), "partial {partial}");
        assert_eq!(rec.meta[&b"vote"[..]], b"x");
        assert_eq!(file_len(&next), SMALL_SEGMENT, "partial {partial}: still preallocated");
        write_entries(&wal, 4..=5);
        drop(wal);
        assert_eq!(file_len(&next), SMALL_SEGMENT);
        let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
        assert_eq!(rec.entries, expected(2..=5), "partial {partial}");
        assert_eq!(rec.purged_to, Some(1));
        assert_eq!(rec.meta[&b"vote"[..]], b"x");
        assert_eq!(segments(dir.path()).len(), 2);
    }
}

#[test]
fn crash_while_preparing_the_next_segment_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    write_entries(&wal, 1..=3);
    drop(wal);
    // A half-written temp file (a crash mid zero-fill), even one holding junk: never replayed,
    // never reused.
    let tmp = dir.path().join(writer::NEXT_SEGMENT_TMP);
    fs::write(&tmp, vec![0xabu8; 1000]).unwrap();
    let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=3));
    assert!(!tmp.exists());
    let mut i = 3;
    while segments(dir.path()).len() < 2 {
        i += 1;
        wal.write_sync(vec![entry(i)]).unwrap();
    }
    drop(wal);
    let segs = segments(dir.path());
    assert_zero_after(&segs[1], logical_len(&fs::read(&segs[1]).unwrap()));
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=i));
}

#[test]
fn fresh_log_of_zeros_only_reopens_empty() {
    // A crash right after the very first segment was renamed into place, before its checkpoint.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(recover::segment_name(0)), vec![0u8; SMALL_SEGMENT as usize]).unwrap();
    let (wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec, Recovered::default());
    write_entries(&wal, 1..=2);
    drop(wal);
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=2));
}

// ---- Who writes ----

#[test]
fn idle_submit_writes_inline_and_answers_before_returning() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    let here = std::thread::current().id();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let before = wal.fsync_count();
    wal.submit(
        vec![entry(1)],
        Box::new(move |r| *seen2.lock().unwrap() = Some((r.is_ok(), std::thread::current().id()))),
    );
    assert_eq!(*seen.lock().unwrap(), Some((true, here)), "answered inline, on the submitter's thread");
    assert_eq!(wal.fsync_count() - before, 1);
}

#[test]
fn busy_writer_never_makes_a_submitter_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    let wal = Arc::new(wal);
    let (started_tx, started_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (order_tx, order_rx) = mpsc::channel();
    // T1 becomes the writer and its completion blocks, so it keeps holding the writer.
    let holder = {
        let wal = Arc::clone(&wal);
        let order_tx = order_tx.clone();
        std::thread::spawn(move || {
            wal.submit(
                vec![entry(1)],
                Box::new(move |r| {
                    r.unwrap();
                    started_tx.send(()).unwrap();
                    gate_rx.recv().unwrap();
                    order_tx.send((1, std::thread::current().name().map(str::to_owned))).unwrap();
                }),
            );
        })
    };
    started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // Meanwhile these only queue: submit returns at once, the completions wait their turn.
    let t = Instant::now();
    for i in 2..=4u64 {
        let order_tx = order_tx.clone();
        wal.submit(
            vec![entry(i)],
            Box::new(move |r| {
                r.unwrap();
                order_tx.send((i, std::thread::current().name().map(str::to_owned))).unwrap();
            }),
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(order_rx.try_recv().is_err(), "nothing answered while the writer is held");
    gate_tx.send(()).unwrap();
    holder.join().unwrap();
    let answers: Vec<(u64, Option<String>)> =
        (0..4).map(|_| order_rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert_eq!(answers.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // The queued ones were written together by the background thread.
    assert!(answers[1..].iter().all(|a| a.1.as_deref() == Some("keel-wal")), "{answers:?}");
    drop(wal);
    let (_wal, rec) = open(dir.path(), SMALL_SEGMENT);
    assert_eq!(rec.entries, expected(1..=4));
}

#[test]
fn submit_from_a_callback_queues_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), SMALL_SEGMENT);
    let wal = Arc::new(wal);
    let order = Arc::new(Mutex::new(Vec::new()));
    let (inner_wal, inner_order, outer_order) = (Arc::clone(&wal), Arc::clone(&order), Arc::clone(&order));
    wal.submit(
        vec![entry(1)],
        Box::new(move |r| {
            r.unwrap();
            inner_wal.submit(vec![entry(2)], Box::new(move |r| inner_order.lock().unwrap().push((2, r.is_ok()))));
            outer_order.lock().unwrap().push((1, true));
        }),
    );
    wal.write_sync(vec![entry(3)]).unwrap();
    assert_eq!(*order.lock().unwrap(), vec![(1, true), (2, true)]);
}
