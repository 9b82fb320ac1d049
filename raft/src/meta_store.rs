//! The per-group meta stream: vote, committed and last purged log ids, one full-state record per
//! change (the latest record wins), in storage stream `2g + 1`.

use std::sync::Arc;

use parking_lot::Mutex;
use shale_storage::{CompactionConfig, Offset, StorageBackend, StorageError, StreamId};

use crate::error::RaftError;
use crate::format::{MetaState, decode_meta, encode_meta};
use crate::types::GroupId;

/// Meta records between two compaction attempts of the meta stream.
const COMPACT_EVERY_RECORDS: u64 = 1024;

#[derive(Debug)]
struct Inner {
    state: MetaState,
    next: Offset,
    since_compact: u64,
}

/// The durable vote / committed / purged state of one group.
///
/// Writes are serialised by an internal lock; every write appends one record holding the whole
/// state, so recovery reads only the last record.
#[derive(Debug)]
pub struct MetaStore {
    group: GroupId,
    stream: StreamId,
    storage: Arc<dyn StorageBackend>,
    inner: Mutex<Inner>,
}

impl MetaStore {
    /// Opens the group's meta stream and reads its latest record (blocking).
    pub fn open(group: GroupId, storage: Arc<dyn StorageBackend>) -> Result<Self, RaftError> {
        let stream = group.meta_stream();
        let st = |source| RaftError::Storage { group, source };
        let next = storage.next_offset(stream).map_err(st)?;
        let start = storage.log_start(stream).map_err(st)?;
        let state = if next > start {
            let last = Offset::new(next.get() - 1);
            let recs = storage.read_range(stream, last, next, 1).map_err(st)?;
            let rec = recs.first().ok_or(RaftError::Storage {
                group,
                source: StorageError::OffsetOutOfRange { stream, requested: last, start, end: next },
            })?;
            decode_meta(&rec.payload).map_err(|source| RaftError::Decode { group, index: last.get(), source })?
        } else {
            MetaState::default()
        };
        Ok(Self { group, stream, storage, inner: Mutex::new(Inner { state, next, since_compact: 0 }) })
    }

    /// The current state (in memory; equal to the latest record written).
    pub fn state(&self) -> MetaState {
        self.inner.lock().state.clone()
    }

    /// Applies `change` and appends the resulting state (blocking). With `fsync`, returns once the
    /// record is durable. A change that leaves the state as it was writes nothing.
    pub fn update(&self, fsync: bool, change: impl FnOnce(&mut MetaState)) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let mut next_state = inner.state.clone();
        change(&mut next_state);
        if next_state == inner.state {
            if fsync {
                self.storage.sync(self.stream)?;
            }
            return Ok(());
        }
        let record = encode_meta(&next_state);
        let next = self.storage.append_batch(self.stream, vec![record], inner.next, fsync)?;
        debug_assert_eq!(next, inner.next.plus(1));
        inner.next = next;
        inner.state = next_state;
        inner.since_compact += 1;
        if inner.since_compact >= COMPACT_EVERY_RECORDS {
            inner.since_compact = 0;
            // Only whole sealed segments below the latest record go; the latest record always stays.
            let config = CompactionConfig { max_log_start: Some(Offset::new(next.get() - 1)), ..Default::default() };
            if let Err(e) = self.storage.compact(self.stream, &config) {
                tracing::warn!(group = %self.group, error = %e, "meta stream compaction failed");
            }
        }
        Ok(())
    }
}
