//! The per-group meta stream: vote, committed and last purged log ids, one full-state record per
//! change (the latest record wins), in storage stream `2g + 1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shale_storage::{CompactionConfig, Offset, StorageBackend, StorageError, StreamId};

use crate::error::RaftError;
use crate::format::{MetaState, decode_meta, encode_meta};
use crate::types::{GroupId, LogId};

/// Meta records between two compaction attempts of the meta stream.
const COMPACT_EVERY_RECORDS: u64 = 1024;

#[derive(Debug)]
struct Inner {
    /// The state of the newest record written.
    state: MetaState,
    next: Offset,
    since_compact: u64,
    /// A committed id kept in memory only ([`MetaStore::defer_committed`]); the next record
    /// written carries it.
    deferred_committed: Option<Option<LogId>>,
    /// When a record last changed the committed id (`None`: not since the store opened).
    committed_written_at: Option<Instant>,
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
        let inner = Inner { state, next, since_compact: 0, deferred_committed: None, committed_written_at: None };
        Ok(Self { group, stream, storage, inner: Mutex::new(inner) })
    }

    /// The current state (in memory): the latest record written, with a deferred committed id
    /// ([`MetaStore::defer_committed`]) in place of the written one.
    pub fn state(&self) -> MetaState {
        let inner = self.inner.lock();
        let mut state = inner.state.clone();
        if let Some(committed) = inner.deferred_committed {
            state.committed = committed;
        }
        state
    }

    /// Takes `committed` as the group's committed log id without writing it, when a record changed
    /// the committed id less than `every` ago: it then goes out with the next record this stream
    /// gets (a vote, a purge, a later committed id past `every`, or [`MetaStore::write_deferred`]).
    /// Returns `false` when nothing was deferred: the caller writes it now (with [`MetaStore::update`]).
    ///
    /// A busy group thus writes its committed id about once per `every` instead of once per
    /// commit. What is lost to a crash is only how far the state machine re-applies on restart;
    /// openraft brings it forward again once the group has a leader (ARCHITECTURE.md "Meta stream").
    pub fn defer_committed(&self, committed: Option<LogId>, every: Duration) -> bool {
        let mut inner = self.inner.lock();
        let recent = inner.committed_written_at.is_some_and(|at| at.elapsed() < every);
        if recent {
            inner.deferred_committed = Some(committed);
        }
        recent
    }

    /// Writes a deferred committed id, if any (blocking; no fsync).
    pub fn write_deferred(&self) -> Result<(), StorageError> {
        if self.inner.lock().deferred_committed.is_none() {
            return Ok(());
        }
        self.update(false, |_| {})
    }

    /// Applies `change` and appends the resulting state (blocking). With `fsync`, returns once the
    /// record is durable. A change that leaves the state as it was writes nothing.
    pub fn update(&self, fsync: bool, change: impl FnOnce(&mut MetaState)) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let mut next_state = inner.state.clone();
        if let Some(committed) = inner.deferred_committed {
            next_state.committed = committed;
        }
        change(&mut next_state);
        if next_state == inner.state {
            inner.deferred_committed = None;
            if fsync {
                self.storage.sync(self.stream)?;
            }
            return Ok(());
        }
        let record = encode_meta(&next_state);
        let next = self.storage.append_batch(self.stream, vec![record], inner.next, fsync)?;
        debug_assert_eq!(next, inner.next.plus(1));
        if next_state.committed != inner.state.committed {
            inner.committed_written_at = Some(Instant::now());
        }
        inner.deferred_committed = None;
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
