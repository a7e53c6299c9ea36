//! Connects the watch hub to mvcc history: `watch` may not use `mvcc` (see DESIGN.md), so apply,
//! which owns both, hands the hub this reader over the current store (the one a raft snapshot
//! install may swap).

use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::mvcc::MvccStore;
use crate::proto::mvccpb::{Event, KeyValue};
use crate::watch::{Chunk, History};

/// The applier's store slot, shared with the hub.
pub(crate) type StoreSlot = Arc<RwLock<Arc<MvccStore>>>;

pub(crate) struct MvccHistory {
    slot: StoreSlot,
}

impl MvccHistory {
    pub(crate) fn new(slot: StoreSlot) -> Self {
        MvccHistory { slot }
    }

    fn store(&self) -> Arc<MvccStore> {
        self.slot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl History for MvccHistory {
    fn compacted(&self) -> i64 {
        self.store().compacted_main()
    }

    fn read(&self, from: i64, to: i64, max_revs: usize, max_bytes: usize) -> Result<Chunk> {
        let chunk = self.store().history(from, to, max_revs, max_bytes)?;
        Ok(Chunk { events: chunk.events, last: chunk.last })
    }

    fn prev_kvs(&self, events: &[Event]) -> Result<Vec<Option<KeyValue>>> {
        self.store().prev_kvs(events)
    }
}
