//! History for watchers: the events of a span of revisions read back from the `"kv"` rows, and
//! the previous key-value of an event — what etcd's watchable store reads when it syncs an
//! unsynced watcher (`syncWatchers` → `kvsToEvents`) and what its gRPC watch stream reads for
//! `prev_kv` (a Range of the key at `mod_revision - 1`).

use prost::Message;

use super::revision::Revision;
use super::{decode_kv, MvccStore, KV_TABLE};
use crate::error::{Error, Result};
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// Events read from history, in revision order (and sub-revision order inside a revision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryChunk {
    pub events: Vec<Event>,
    /// The newest revision this chunk covers completely: `to`, or less when a limit cut the read
    /// short (always at a revision boundary, so no revision is ever split between two chunks).
    pub last: i64,
}

impl MvccStore {
    /// etcd's `compactMainRev`: the revision of the last compaction, -1 before the first one.
    /// A watcher whose next revision is below it can no longer be served from history.
    pub fn compacted_main(&self) -> i64 {
        self.read_state().compacted
    }

    /// The events of revisions `from..=to`, oldest first. PUT events carry the stored key-value;
    /// DELETE events carry only the key and the delete revision, which etcd's tombstone rows do not
    /// hold and is taken from the row key. `prev_kv` is never filled here (see [`Self::prev_kvs`]).
    ///
    /// The read stops early, at a revision boundary, once `max_revs` revisions or `max_bytes` of
    /// rows have been read; at least one revision is always read when there is one. Fails with
    /// `Compacted` when `from` is below the compaction revision, before or after the scan (a
    /// compaction that started meanwhile may have deleted rows the scan needed).
    pub fn history(&self, from: i64, to: i64, max_revs: usize, max_bytes: usize) -> Result<HistoryChunk> {
        let from = from.max(1);
        if from < self.compacted_main() {
            return Err(Error::Compacted);
        }
        if to < from {
            return Ok(HistoryChunk { events: Vec::new(), last: to });
        }
        let start = Revision::row_key_floor(from);
        let end = Revision::row_key_floor(to.saturating_add(1));
        let mut events = Vec::new();
        let mut last = to;
        let mut current = 0i64;
        let mut revs = 0usize;
        let mut bytes = 0usize;
        crate::storage::try_scan(self.engine.as_ref(), KV_TABLE, &start, Some(&end), &mut |k, v| {
            let (rev, tombstone) = Revision::from_row_key(k)?;
            if rev.main != current {
                if revs > 0 && (revs >= max_revs || bytes >= max_bytes) {
                    last = current;
                    return Ok(false);
                }
                current = rev.main;
                revs += 1;
            }
            bytes += k.len() + v.len();
            let mut kv = decode_kv(v, rev)?;
            let kind = if tombstone {
                // etcd's tombstone row is `KeyValue{key}`; the event reports the delete revision
                // from the row key (etcd's `kvsToEvents`).
                kv = KeyValue { key: kv.key, mod_revision: rev.main, ..Default::default() };
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event { r#type: kind as i32, kv: Some(kv), prev_kv: None });
            Ok::<_, Error>(true)
        })?;
        if from < self.compacted_main() {
            return Err(Error::Compacted);
        }
        Ok(HistoryChunk { events, last })
    }

    /// The key-value each event's key had just before the event (at `mod_revision - 1`), as etcd
    /// fills `prev_kv` for watchers that ask: None for creation events (a PUT whose
    /// `create_revision == mod_revision`), for keys that did not exist then, and when that
    /// revision has been compacted away.
    pub fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>> {
        // Resolve every lookup in the index under one read lock, then fetch the rows in one go.
        let mut wanted: Vec<Option<Revision>> = Vec::with_capacity(events.len());
        {
            let st = self.read_state();
            for ev in events {
                let Some(kv) = ev.kv.as_ref() else {
                    wanted.push(None);
                    continue;
                };
                let creation = ev.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
                let at = kv.mod_revision - 1;
                if creation || at < 1 || at < st.compacted {
                    wanted.push(None);
                    continue;
                }
                wanted.push(st.index.get(&kv.key, at).map(|s| s.modified));
            }
        }
        let row_keys: Vec<Vec<u8>> = wanted.iter().flatten().map(|rev| rev.to_row_key(false)).collect();
        if row_keys.is_empty() {
            return Ok(vec![None; events.len()]);
        }
        let refs: Vec<&[u8]> = row_keys.iter().map(Vec::as_slice).collect();
        let mut rows = self.engine.get_many(KV_TABLE, &refs)?.into_iter();
        let mut out = Vec::with_capacity(events.len());
        for rev in wanted {
            out.push(match rev {
                None => None,
                // A row deleted by a compaction that ran since the lookup reads as compacted:
                // no prev_kv, as etcd answers when its Range fails.
                Some(rev) => match rows.next().flatten() {
                    Some(bytes) => Some(
                        KeyValue::decode(bytes.as_slice())
                            .map_err(|e| Error::Storage(format!("corrupt mvcc row {rev}: {e}")))?,
                    ),
                    None => None,
                },
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mvcc::mem_engine::MemEngine;
    use crate::proto::etcdserverpb::PutRequest;
    use crate::storage::WriteBatch;

    fn store() -> MvccStore {
        MvccStore::open(Arc::new(MemEngine::default())).unwrap()
    }

    fn put(s: &MvccStore, key: &str, value: &str) -> i64 {
        let mut w = s.write();
        w.put(&PutRequest { key: key.into(), value: value.into(), ..Default::default() }).unwrap();
        w.commit(WriteBatch::default()).unwrap().revision
    }

    fn del(s: &MvccStore, key: &str) -> i64 {
        let mut w = s.write();
        w.delete_range(key.as_bytes(), b"").unwrap();
        w.commit(WriteBatch::default()).unwrap().revision
    }

    fn brief(ev: &Event) -> (i32, String, i64, i64, i64) {
        let kv = ev.kv.clone().unwrap_or_default();
        (ev.r#type, String::from_utf8(kv.key).unwrap(), kv.create_revision, kv.mod_revision, kv.version)
    }

    #[test]
    fn history_matches_what_commit_reported() {
        let s = store();
        let mut reported = Vec::new();
        for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
            let mut w = s.write();
            w.put(&PutRequest { key: k.into(), value: v.into(), ..Default::default() }).unwrap();
            reported.extend(w.commit(WriteBatch::default()).unwrap().events);
        }
        let mut w = s.write();
        w.delete_range(b"a", b"c").unwrap();
        reported.extend(w.commit(WriteBatch::default()).unwrap().events);
        let chunk = s.history(1, s.current_revision(), 1000, usize::MAX).unwrap();
        assert_eq!(chunk.events, reported, "history must equal the events published at commit");
        assert_eq!(chunk.last, 5);
        let deletes: Vec<_> = chunk.events.iter().filter(|e| e.r#type == EventType::Delete as i32).collect();
        assert_eq!(deletes.len(), 2);
        assert_eq!(brief(deletes[0]), (1, "a".into(), 0, 5, 0));
    }

    #[test]
    fn limits_cut_at_revision_boundaries() {
        let s = store();
        for i in 0..5 {
            put(&s, &format!("k{i}"), "v");
        }
        // One txn with two changes at revision 7.
        let mut w = s.write();
        w.put(&PutRequest { key: "x".into(), value: "1".into(), ..Default::default() }).unwrap();
        w.put(&PutRequest { key: "y".into(), value: "1".into(), ..Default::default() }).unwrap();
        assert_eq!(w.commit(WriteBatch::default()).unwrap().revision, 7);
        let c = s.history(2, 7, 2, usize::MAX).unwrap();
        assert_eq!((c.events.len(), c.last), (2, 3));
        let c = s.history(6, 7, 2, usize::MAX).unwrap();
        assert_eq!((c.events.len(), c.last), (3, 7));
        // A byte limit of 1 still reads one whole revision.
        let c = s.history(7, 7, 1000, 1).unwrap();
        assert_eq!((c.events.len(), c.last), (2, 7));
        let c = s.history(2, 7, 1000, 1).unwrap();
        assert_eq!((c.events.len(), c.last), (1, 2));
        // Nothing to read.
        let c = s.history(8, 7, 1000, 1).unwrap();
        assert_eq!((c.events.len(), c.last), (0, 7));
    }

    #[test]
    fn compacted_history_is_refused() {
        let s = store();
        for _ in 0..4 {
            put(&s, "a", "v");
        }
        s.compact(3, true).unwrap().wait().unwrap();
        assert_eq!(s.compacted_main(), 3);
        assert!(matches!(s.history(2, 5, 1000, usize::MAX), Err(Error::Compacted)));
        let c = s.history(3, 5, 1000, usize::MAX).unwrap();
        assert_eq!(c.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect::<Vec<_>>(), vec![3, 4, 5]);
    }

    #[test]
    fn prev_kv_is_the_value_before_the_event() {
        let s = store();
        put(&s, "a", "1"); // 2
        put(&s, "a", "2"); // 3
        del(&s, "a"); // 4
        put(&s, "a", "3"); // 5
        let chunk = s.history(2, 5, 1000, usize::MAX).unwrap();
        let prev = s.prev_kvs(&chunk.events).unwrap();
        let values: Vec<Option<Vec<u8>>> = prev.iter().map(|p| p.as_ref().map(|kv| kv.value.clone())).collect();
        // Creation events have none; the update and the delete see the value before them.
        assert_eq!(values, vec![None, Some(b"1".to_vec()), Some(b"2".to_vec()), None]);
        assert_eq!(prev[2].as_ref().map(|kv| (kv.mod_revision, kv.version)), Some((3, 2)));
        // Compacted past the previous revision: omitted.
        s.compact(4, true).unwrap().wait().unwrap();
        let prev = s.prev_kvs(&chunk.events[1..3]).unwrap();
        assert_eq!(prev, vec![None, None]);
    }
}
