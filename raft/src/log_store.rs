//! The Raft log of one group, stored as a shale-storage stream: record offset `i` holds the entry
//! with log index `i` (openraft's first index is 0, so the mapping is the identity from the start).
//!
//! - [`GroupLog`] is the shared handle on the group's log and meta streams (used by the log store,
//!   its readers, the state machine and [`crate::RaftGroup`]).
//! - [`LogStore`] implements openraft's `RaftLogStorage`: each `append` call writes its entries with
//!   one `append_batch` (entries readable on return), then hands a flush operation to the storage's
//!   node-wide flush round ([`crate::sync_rounds`]), whose next `sync_streams` makes them durable
//!   together with every other group's unsynced appends; only then are they reported flushed to
//!   openraft. Truncate, purge and vote first wait for a barrier through the same rounds, so every
//!   write reaches the disk in the order openraft issued it.
//! - [`LogReader`] implements `RaftLogReader`: verified storage reads, decoded.

use std::fmt;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use parking_lot::Mutex;
use shale_storage::{ChainHash, Offset, ReadCheck, StorageBackend, StorageError, StreamId};
use tokio::sync::{oneshot, watch};

use crate::entry_cache::{self, EntryCache};
use crate::error::RaftError;
use crate::format::{self, decode_entry, decode_entry_header, decode_snapshot_state, encode_entry, remember_encoding};
use crate::meta_store::MetaStore;
use crate::retention::{Retention, max_log_start};
use crate::sync_rounds::{FlushOp, SyncRounds};
use crate::types::{Entry, GroupId, LogId, TypeConfig, Vote};

/// Bytes of log read per storage call when openraft asks for a range.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// Most entry bytes one replication message carries (besides a single larger entry): keeps every
/// AppendEntries well inside the transport's message limit whatever the payload sizes.
pub const REPLICATION_BATCH_BYTES: usize = 8 << 20;

/// Most encoded bytes per storage `append_batch` call; larger openraft appends are split (all
/// parts are made durable by the same flush). Below storage's default `max_batch_bytes` (64 MiB).
pub const APPEND_CHUNK_BYTES: usize = 16 << 20;

/// One committed entry as read back from the log for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedEntry {
    /// The entry's log index (its storage offset).
    pub index: u64,
    /// The storage chain hash of the record at `index - 1` (`ChainHash::ZERO` before index 0).
    pub prev_hash: ChainHash,
    /// The storage chain hash of the record at `index`: `chain_hash(index, prev_hash, data)`
    /// (from a [`ReadCheck::Frames`] read: the link the next record stores, not recomputed, and
    /// `prev_hash` is the link this one stores).
    pub chain_hash: ChainHash,
    /// The entry's kind ([`format::entry::KIND_NORMAL`] for application entries).
    pub kind: u8,
    /// The stored record: the entry envelope ([`format::entry`]) and its body, exactly what the
    /// chain hash covers (shared with the read buffer, not copied).
    pub data: Bytes,
}

impl CommittedEntry {
    /// The application payload (the body of a normal entry); `None` for blank and membership
    /// entries.
    pub fn payload(&self) -> Option<Bytes> {
        (self.kind == format::entry::KIND_NORMAL).then(|| self.data.slice(format::entry::HEADER_LEN..))
    }
}

/// Shared handle on one group's log stream and meta stream.
pub struct GroupLog {
    group: GroupId,
    stream: StreamId,
    storage: Arc<dyn StorageBackend>,
    meta: MetaStore,
    policy: Mutex<(Retention, Option<u64>)>,
    /// Flush operations handed to the sync rounds and not completed yet (awaited at zero when
    /// the group shuts down).
    flushes: Arc<watch::Sender<usize>>,
    /// The recently appended tail, for openraft's own reads.
    cache: Arc<Mutex<EntryCache>>,
}

/// Group logs open in this process (each holds its storage): a node's shutdown reports those
/// still open when its storage is still referenced.
static OPEN_GROUP_LOGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many group logs are open in this process (every node of it).
pub fn open_group_logs() -> usize {
    OPEN_GROUP_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

impl Drop for GroupLog {
    fn drop(&mut self) {
        OPEN_GROUP_LOGS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A partition group's committed log id is written to its meta stream at most about this often
/// while commits keep coming (see `LogStore::save_committed`).
pub const COMMITTED_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// Largest append (per entry its cache cost, `entry_cache::cost`, plus [`INLINE_APPEND_RECORD_MARGIN`])
/// the log store writes on the group's core task rather than on the blocking pool (see
/// `GroupLog::append_is_light`).
pub const INLINE_APPEND_MAX_BYTES: u64 = 1 << 20;

/// Bytes counted per entry on top of its cache cost for [`INLINE_APPEND_MAX_BYTES`] and the segment
/// room check: more than the entry envelope and the storage record framing together.
const INLINE_APPEND_RECORD_MARGIN: u64 = 256;

/// Default budget of a group's in-memory log tail.
pub const DEFAULT_ENTRY_CACHE_BYTES: usize = 16 << 20;

impl fmt::Debug for GroupLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupLog").field("group", &self.group).field("stream", &self.stream).finish_non_exhaustive()
    }
}

pub(crate) fn io_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::other(e)
}

/// Runs a blocking storage call on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

impl GroupLog {
    /// Opens the group's streams (blocking). Nothing is written.
    pub fn open(
        group: GroupId,
        storage: Arc<dyn StorageBackend>,
        retention: Retention,
    ) -> Result<Arc<Self>, RaftError> {
        if !group.is_valid() {
            return Err(RaftError::InvalidConfig(format!("group id {} is over the limit {}", group.0, GroupId::MAX)));
        }
        let meta = MetaStore::open(group, storage.clone())?;
        OPEN_GROUP_LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(Self {
            group,
            stream: group.log_stream(),
            storage,
            meta,
            policy: Mutex::new((retention, None)),
            flushes: Arc::new(watch::Sender::new(0)),
            cache: Arc::new(Mutex::new(EntryCache::new(DEFAULT_ENTRY_CACHE_BYTES))),
        }))
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn StorageBackend> {
        &self.storage
    }

    /// The log stream id.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The group's meta stream id (vote, committed, last purged).
    pub fn meta_stream(&self) -> StreamId {
        self.group.meta_stream()
    }

    /// The meta store.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    fn storage_err(&self, source: StorageError) -> RaftError {
        RaftError::Storage { group: self.group, source }
    }

    /// First index still stored.
    pub fn log_start(&self) -> Result<u64, RaftError> {
        self.storage.log_start(self.stream).map(Offset::get).map_err(|e| self.storage_err(e))
    }

    /// One past the last stored index.
    pub fn next_index(&self) -> Result<u64, RaftError> {
        self.storage.next_offset(self.stream).map(Offset::get).map_err(|e| self.storage_err(e))
    }

    /// The chain hash of the record at `index` (`log_start - 1` gives the anchoring checkpoint's).
    pub fn chain_hash_at(&self, index: u64) -> Result<ChainHash, RaftError> {
        self.storage.chain_hash_at(self.stream, Offset::new(index)).map_err(|e| self.storage_err(e))
    }

    /// The chain hash of entry `index` as the append that stored it computed it, while the entry is
    /// in the in-memory tail and at or above the log start; `None` otherwise (then
    /// [`GroupLog::chain_hash_at`] answers). Hashes nothing and reads no file.
    pub fn appended_chain_hash(&self, index: u64) -> Option<ChainHash> {
        let hash = self.cache.lock().chain_hash(index)?;
        (index >= self.log_start().ok()?).then_some(hash)
    }

    /// Sets the budget of the in-memory log tail (0 disables it).
    pub fn set_cache_bytes(&self, bytes: usize) {
        self.cache.lock().set_max_bytes(bytes);
    }

    /// Counts the in-memory log tail against the node's shared budget from now on.
    pub fn set_cache_budget(&self, budget: &crate::entry_cache::CacheBudget) {
        budget.register(&self.cache);
    }

    /// Sets the retention policy.
    pub fn set_retention(&self, retention: Retention) {
        self.policy.lock().0 = retention;
    }

    /// Sets the application's purge limit: no record at or above `below_index` is removed.
    pub fn set_purge_limit(&self, below_index: Option<u64>) {
        self.policy.lock().1 = below_index;
    }

    /// The last purged log id: the meta stream's, or, when the storage stream was restarted at a
    /// snapshot above it (a snapshot install not yet followed by a durable purge record), the
    /// snapshot's last log id read from the checkpoint anchoring the log start.
    pub fn last_purged(&self) -> Result<Option<LogId>, RaftError> {
        let recorded = self.meta.state().last_purged;
        let start = self.log_start()?;
        if start == 0 || recorded.is_some_and(|p| p.index + 1 >= start) {
            return Ok(recorded);
        }
        let cp = self
            .storage
            .checkpoint_at_or_below(self.stream, Offset::new(start))
            .map_err(|e| self.storage_err(e))?
            .filter(|cp| cp.offset.get() == start);
        if cp.as_ref().is_some_and(|cp| cp.data.is_empty() && cp.chain_hash == ChainHash::ZERO) {
            // A genesis anchor (see `restart_at`): nothing was ever purged.
            return Ok(recorded);
        }
        let anchored = cp.and_then(|cp| decode_snapshot_state(&cp.data).ok()).and_then(|s| s.last_log_id);
        match anchored {
            Some(id) if id.index + 1 == start => Ok(Some(id)),
            _ => Err(RaftError::Decode {
                group: self.group,
                index: start,
                source: format::DecodeError::InvalidField {
                    what: "raft log start",
                    field: "log start not anchored by a snapshot checkpoint nor covered by the purge record at",
                    value: start,
                },
            }),
        }
    }

    /// Makes an append at `first` possible on a stream that ends at `next < first` (blocking):
    /// - the log was purged past its end because a snapshot covers it: restart the stream at the
    ///   snapshot checkpoint, which must sit exactly at `first`;
    /// - the stream never held anything (no records, no checkpoint): it adopts `first` as its
    ///   start, anchored by a "genesis" checkpoint with [`ChainHash::ZERO`] and no data. openraft
    ///   starts every log at index 0, so replicas never do this; it keeps `offset == index` for a
    ///   log handed entries from a later index first (as openraft's storage suite does).
    ///
    /// Anything else is a hole in the log and an error.
    fn restart_at(&self, first: u64, next: u64) -> Result<(), RaftError> {
        let st = |e| self.storage_err(e);
        let at = Offset::new(first);
        if let Some(cp) = self.storage.checkpoint_at_or_below(self.stream, at).map_err(st)?.filter(|cp| cp.offset == at)
        {
            self.cache.lock().clear();
            return self.storage.install_checkpoint(self.stream, cp).map_err(st);
        }
        let start = self.storage.log_start(self.stream).map_err(st)?;
        if start.get() == next && self.storage.latest_checkpoint(self.stream).map_err(st)?.is_none() {
            let genesis = shale_storage::Checkpoint::new(at, ChainHash::ZERO, Bytes::new());
            self.cache.lock().clear();
            return self.storage.install_checkpoint(self.stream, genesis).map_err(st);
        }
        Err(RaftError::Decode {
            group: self.group,
            index: first,
            source: format::DecodeError::InvalidField {
                what: "raft log append",
                field: "first index (past the log end, no checkpoint anchors it) at log end",
                value: next,
            },
        })
    }

    /// Writes the snapshot checkpoint for a snapshot covering `..offset` (blocking): normally a
    /// checkpoint at `offset` of the log itself, chained to record `offset - 1`.
    ///
    /// If the log ends before `offset - 1`, the state machine has applied entries this log never
    /// held (openraft's storage suite feeds a state machine directly; replicas never do, as they
    /// apply only what they read from this log). That is allowed only when no record is lost by it
    /// — the stream holds no records, or openraft already purged them all — and the snapshot then
    /// starts a fresh chain at `offset`, anchored by [`ChainHash::ZERO`]. Anything else (notably a
    /// snapshot below the log start) is an error: the log and the state machine disagree.
    pub fn write_snapshot_checkpoint(&self, offset: u64, data: Bytes) -> Result<shale_storage::Checkpoint, RaftError> {
        let st = |e| self.storage_err(e);
        let at = Offset::new(offset);
        let start = self.storage.log_start(self.stream).map_err(st)?.get();
        let next = self.storage.next_offset(self.stream).map_err(st)?.get();
        if (start..=next).contains(&offset) {
            return self.storage.create_checkpoint_at(self.stream, at, data).map_err(st);
        }
        let holds_nothing = start == next;
        let purged_past = self.meta.state().last_purged.is_some_and(|p| p.index + 1 >= offset);
        if !(offset > next && (holds_nothing || purged_past)) {
            return Err(self.storage_err(StorageError::InvalidCheckpoint {
                stream: self.stream,
                offset: at,
                reason: format!(
                    "the state machine applied up to index {} but the log holds [{start}, {next})",
                    offset.saturating_sub(1)
                ),
            }));
        }
        tracing::warn!(group = %self.group, offset, start, next, "snapshot anchors a fresh chain: the log never held the applied entries");
        let cp = shale_storage::Checkpoint::new(at, ChainHash::ZERO, data);
        self.cache.lock().clear();
        self.storage.install_checkpoint(self.stream, cp.clone()).map_err(st)?;
        Ok(cp)
    }

    /// Installs a checkpoint received with a snapshot (blocking): keeps the log when its chain
    /// agrees at the checkpoint, else restarts the stream there.
    pub fn install_checkpoint(&self, cp: shale_storage::Checkpoint) -> Result<(), RaftError> {
        self.cache.lock().clear();
        self.storage.install_checkpoint(self.stream, cp).map_err(|e| self.storage_err(e))
    }

    /// Truncates the log from `index` on (blocking).
    fn truncate_from(&self, index: u64) -> Result<(), RaftError> {
        self.cache.lock().truncated_from(index);
        self.storage.truncate_from(self.stream, Offset::new(index)).map_err(|e| self.storage_err(e))
    }

    /// Whether appending `entries` at `first` is only a write of at most [`INLINE_APPEND_MAX_BYTES`]
    /// into the page cache (the log continues at `first`, the active segment has room: no
    /// rotation, fsync or new file), which the log store then makes on the group's core task
    /// instead of handing it to the blocking pool: that hop (a thread woken, then the core woken
    /// back) was a large part of a small batch's cost on every replica (README "What one batch
    /// costs").
    fn append_is_light(&self, first: u64, entries: &[Entry]) -> bool {
        let bytes: u64 = entries.iter().map(|e| entry_cache::cost(e) as u64 + INLINE_APPEND_RECORD_MARGIN).sum();
        bytes <= INLINE_APPEND_MAX_BYTES
            && self.next_index().is_ok_and(|next| next == first)
            && self.storage.append_fits_active_segment(self.stream, bytes)
    }

    /// Appends encoded entries at `first` (blocking, not yet durable) and caches them with the
    /// chain hashes the append computed.
    fn append_entries(&self, first: u64, mut entries: Vec<Entry>) -> Result<(), RaftError> {
        let next = self.next_index()?;
        if next < first {
            self.restart_at(first, next)?;
        }
        // A follower's entries arrive encoded (free here); a leader's new ones are encoded once,
        // and keep that encoding for every follower's AppendEntries (read back from the cache).
        let records: Vec<Bytes> = entries
            .iter_mut()
            .map(|e| {
                let record = encode_entry(e);
                remember_encoding(e, &record);
                record
            })
            .collect();
        let mut hashes = Vec::with_capacity(records.len());
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        let write = |chunk: Vec<Bytes>, hashes: &mut Vec<ChainHash>| -> Result<(), RaftError> {
            let at = Offset::new(first + hashes.len() as u64);
            let written =
                self.storage.append_batch_hashed(self.stream, chunk, at, false).map_err(|e| self.storage_err(e))?;
            hashes.extend(written);
            Ok(())
        };
        for r in records {
            if !chunk.is_empty() && chunk_bytes + r.len() > APPEND_CHUNK_BYTES {
                write(std::mem::take(&mut chunk), &mut hashes)?;
                chunk_bytes = 0;
            }
            chunk_bytes += r.len();
            chunk.push(r);
        }
        if !chunk.is_empty() {
            write(chunk, &mut hashes)?;
        }
        self.cache.lock().appended(entries, &hashes);
        Ok(())
    }

    /// Waits until every flush operation this log handed to the sync rounds has completed (after
    /// `Raft::shutdown` no new one comes), so no flush holds the log, or the storage, any more.
    pub async fn wait_flusher_stopped(&self) {
        let mut rx = self.flushes.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The count of this log's flush operations in the sync rounds.
    pub(crate) fn in_flight_flushes(&self) -> Arc<watch::Sender<usize>> {
        Arc::clone(&self.flushes)
    }

    /// `(last_purged, last_log_id)` as openraft sees the log.
    pub fn log_state(&self) -> Result<(Option<LogId>, Option<LogId>), RaftError> {
        let purged = self.last_purged()?;
        let first = purged.map_or(0, |p| p.index + 1).max(self.log_start()?);
        let next = self.next_index()?;
        if next <= first {
            return Ok((purged, purged));
        }
        let last = Offset::new(next - 1);
        let recs = self.storage.read_range(self.stream, last, Offset::new(next), 1).map_err(|e| self.storage_err(e))?;
        let rec = recs.first().ok_or_else(|| {
            self.storage_err(StorageError::OffsetOutOfRange {
                stream: self.stream,
                requested: last,
                start: Offset::new(first),
                end: Offset::new(next),
            })
        })?;
        let header = decode_entry_header(&rec.payload).map_err(|source| RaftError::Decode {
            group: self.group,
            index: last.get(),
            source,
        })?;
        Ok((purged, Some(header.log_id)))
    }

    /// Decoded entries in `[start, end)` as openraft may see them (from the purge point on). With
    /// `all`, every entry in range is returned; otherwise at least one, up to about
    /// [`READ_CHUNK_BYTES`].
    pub fn read_entries(&self, start: u64, end: u64, all: bool) -> Result<Vec<Entry>, RaftError> {
        let first = self.last_purged()?.map_or(0, |p| p.index + 1).max(self.log_start()?);
        let next = self.next_index()?;
        let mut at = start.max(first);
        let end = end.min(next);
        if at >= end {
            return Ok(Vec::new());
        }
        let budget = if all { usize::MAX } else { REPLICATION_BATCH_BYTES };
        let mut out = Vec::new();
        // Each round takes what the in-memory tail holds from `at` on, or else reads storage up to
        // where the tail begins. Appends evict the tail's front meanwhile (and an append in progress
        // has stored entries the tail does not hold yet), so after either step the next round looks
        // again: a read never ends short of `end` because the tail moved under it (openraft applies
        // what this returns and requires every entry of the range the log holds).
        while at < end {
            let (cached, cache_start) = {
                let cache = self.cache.lock();
                (cache.get(at, end, budget), cache.start())
            };
            if let Some(entries) = cached {
                debug_assert!(entries.first().is_some_and(|e| e.log_id.index == at), "the tail answers from `at`");
                at = entries.last().map_or(at, |e| e.log_id.index + 1);
                if !all {
                    return Ok(entries);
                }
                out.extend(entries);
                continue;
            }
            let storage_end = cache_start.filter(|&c| c > at).map_or(end, |c| c.min(end));
            let recs = self
                .storage
                .read_range(self.stream, Offset::new(at), Offset::new(storage_end), READ_CHUNK_BYTES)
                .map_err(|e| self.storage_err(e))?;
            if recs.is_empty() {
                break;
            }
            for rec in recs {
                let entry = decode_entry(&rec.payload).map_err(|source| RaftError::Decode {
                    group: self.group,
                    index: rec.offset.get(),
                    source,
                })?;
                if entry.log_id.index != rec.offset.get() {
                    return Err(RaftError::Decode {
                        group: self.group,
                        index: rec.offset.get(),
                        source: format::DecodeError::InvalidField {
                            what: "raft entry",
                            field: "index (differs from its storage offset)",
                            value: entry.log_id.index,
                        },
                    });
                }
                at = rec.offset.get() + 1;
                out.push(entry);
            }
            if !all {
                break;
            }
        }
        debug_assert!(out.windows(2).all(|w| w[0].log_id.index + 1 == w[1].log_id.index), "entries are consecutive");
        Ok(out)
    }

    /// [`GroupLog::read_entries`] when the whole answer is in the entry cache: reads no file and
    /// takes no storage lock beyond the in-memory bounds, so a caller on an async worker can skip
    /// the blocking pool (a leader's replication reads what it just appended, hundreds of times a
    /// second with many groups). `None`: ask `read_entries`.
    pub fn read_cached_entries(&self, start: u64, end: u64, all: bool) -> Option<Vec<Entry>> {
        let purged_below = self.meta.state().last_purged.map_or(0, |p| p.index + 1);
        let first = self.log_start().ok()?.max(purged_below);
        let end = end.min(self.next_index().ok()?);
        if start < first || start >= end {
            return None;
        }
        let budget = if all { usize::MAX } else { REPLICATION_BATCH_BYTES };
        let entries = self.cache.lock().get(start, end, budget)?;
        let complete = !all || entries.last().is_some_and(|e| e.log_id.index + 1 == end);
        (complete && !entries.is_empty()).then_some(entries)
    }

    /// Entries `[from, end)` for the application: verified storage reads from the storage log
    /// start (below openraft's purge point too, as retention allows), up to about `max_bytes`.
    pub fn read_for_app(&self, from: u64, end: u64, max_bytes: usize) -> Result<Vec<CommittedEntry>, RaftError> {
        self.read_for_app_checked(from, end, max_bytes, ReadCheck::Chain)
    }

    /// [`LogStore::read_for_app`], each entry checked as `check` says
    /// ([`StorageBackend::read_range_checked`]).
    pub fn read_for_app_checked(
        &self,
        from: u64,
        end: u64,
        max_bytes: usize,
        check: ReadCheck,
    ) -> Result<Vec<CommittedEntry>, RaftError> {
        let start = self.log_start()?;
        let next = self.next_index()?;
        if from < start {
            return Err(RaftError::OffsetOutOfRange {
                group: self.group,
                requested: from,
                log_start: start,
                next: end.min(next),
            });
        }
        if from >= end {
            return Ok(Vec::new());
        }
        let recs = self
            .storage
            .read_range_checked(self.stream, Offset::new(from), Offset::new(end), max_bytes, check)
            .map_err(|e| match e {
                StorageError::OffsetOutOfRange { start, .. } => RaftError::OffsetOutOfRange {
                    group: self.group,
                    requested: from,
                    log_start: start.get(),
                    next: end.min(next),
                },
                e => self.storage_err(e),
            })?;
        recs.into_iter()
            .map(|rec| {
                let index = rec.offset.get();
                let header = decode_entry_header(&rec.payload).map_err(|source| RaftError::Decode {
                    group: self.group,
                    index,
                    source,
                })?;
                Ok(CommittedEntry {
                    index,
                    prev_hash: rec.prev_hash,
                    chain_hash: rec.hash,
                    kind: header.kind,
                    data: rec.payload,
                })
            })
            .collect()
    }

    /// The retention start (blocking): the log start the retention policy and the purge limit
    /// would leave now if everything up to the snapshot ending at `snapshot_index` could go.
    /// `Some(start)` only when that is above what is purged already; `None` when nothing more
    /// may go (always for a keep-all log).
    pub fn retention_target(&self, snapshot_index: u64) -> Result<Option<u64>, RaftError> {
        let (retention, limit) = *self.policy.lock();
        let Some(config) = retention.compaction(max_log_start(Some(snapshot_index), limit)) else {
            return Ok(None);
        };
        let start = self.storage.compaction_target(self.stream, &config).map_err(|e| self.storage_err(e))?.get();
        let purged_to = self.meta.state().last_purged.map_or(0, |p| p.index + 1);
        debug_assert!(start <= snapshot_index + 1, "retention never goes past the snapshot");
        Ok((start > purged_to).then_some(start))
    }

    /// Runs storage compaction as the retention policy, the purge point and the purge limit allow
    /// (blocking). Returns the log start afterwards.
    pub fn enforce_retention(&self) -> Result<u64, RaftError> {
        let (retention, limit) = *self.policy.lock();
        let purged = self.meta.state().last_purged.map(|p| p.index);
        let Some(config) = retention.compaction(max_log_start(purged, limit)) else {
            return self.log_start();
        };
        let result = self.storage.compact(self.stream, &config).map_err(|e| self.storage_err(e))?;
        Ok(result.new_log_start.get())
    }
}

/// openraft's log storage for one group.
pub struct LogStore {
    log: Arc<GroupLog>,
    rounds: Arc<SyncRounds>,
    /// How often, at most, a committed id is written (`ZERO`: every one; see `save_committed`).
    committed_every: Duration,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("log", &self.log).finish_non_exhaustive()
    }
}

impl LogStore {
    /// A log store over `log`, flushing through its storage's shared sync rounds
    /// ([`SyncRounds::for_storage`]; their round task runs on the current tokio runtime).
    pub fn new(log: Arc<GroupLog>) -> Self {
        let rounds = SyncRounds::for_storage(log.storage());
        // The metadata group writes every committed id: a restarting node applies its metadata up
        // to it before it knows which groups to start.
        let committed_every = if log.group() == GroupId::METADATA { Duration::ZERO } else { COMMITTED_WRITE_INTERVAL };
        Self { log, rounds, committed_every }
    }

    /// Sets how often, at most, a committed id is written while commits keep coming (default
    /// [`COMMITTED_WRITE_INTERVAL`] for a partition group, every commit for the metadata group).
    #[must_use]
    pub fn with_committed_write_interval(mut self, every: Duration) -> Self {
        self.committed_every = every;
        self
    }

    /// The shared log handle.
    pub fn log(&self) -> &Arc<GroupLog> {
        &self.log
    }

    async fn barrier(&self) -> io::Result<()> {
        self.flush(FlushOp::Barrier).await
    }

    /// Hands a barrier (`op` of its answer channel) to the next flush round and waits for it.
    async fn flush(&self, op: fn(oneshot::Sender<Result<(), String>>) -> FlushOp) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.rounds.submit(self.log.clone(), op(tx));
        rx.await.map_err(|_| io_err("log flusher stopped"))?.map_err(io_err)
    }
}

/// openraft's log reader for one group.
#[derive(Clone, Debug)]
pub struct LogReader {
    log: Arc<GroupLog>,
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        if let Some(entries) = self.log.read_cached_entries(start, end, true) {
            return Ok(entries);
        }
        let log = self.log.clone();
        blocking(move || log.read_entries(start, end, true).map_err(io_err)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log.meta.state().vote)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        if let Some(entries) = self.log.read_cached_entries(start, end, false) {
            return Ok(entries);
        }
        let log = self.log.clone();
        blocking(move || log.read_entries(start, end, false).map_err(io_err)).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        LogReader { log: self.log.clone() }.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.log.meta.state().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let log = self.log.clone();
        let (last_purged_log_id, last_log_id) = blocking(move || log.log_state().map_err(io_err)).await?;
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { log: self.log.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // The vote is appended without fsync; one flush round then makes it durable together with
        // everything written to the log before it, and with the votes of every other group
        // electing at the same time (a node failing over a thousand groups fsyncs a few times,
        // not a thousand).
        let log = self.log.clone();
        let vote = *vote;
        blocking(move || log.meta.update(false, |m| m.vote = Some(vote)).map_err(io_err)).await?;
        self.flush(FlushOp::MetaBarrier).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not fsynced, and for a partition group written at most about once per
        // `committed_every` (the rest is deferred: `MetaStore::defer_committed`): a
        // committed index lost to a crash only means re-applying less on restart; the leader brings
        // the state machine forward again. openraft awaits this call in the group's core loop on
        // every commit, so a write here (a hop to the blocking pool, a record appended) was paid
        // per batch on every replica.
        if self.log.meta.defer_committed(committed, self.committed_every) {
            return Ok(());
        }
        let log = self.log.clone();
        blocking(move || log.meta.update(false, |m| m.committed = committed).map_err(io_err)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let log = self.log.clone();
        blocking(move || {
            let committed = log.meta.state().committed;
            let (_, last) = log.log_state().map_err(io_err)?;
            // A committed id past the durable log (its tail lost to a power failure) is not usable
            // for re-applying; start from the snapshot instead.
            Ok(committed.filter(|c| last.is_some_and(|l| c.index <= l.index)))
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        debug_assert!(entries.windows(2).all(|w| w[1].log_id.index == w[0].log_id.index + 1));
        let log = self.log.clone();
        if log.append_is_light(first, &entries) {
            log.append_entries(first, entries).map_err(io_err)?;
        } else {
            blocking(move || log.append_entries(first, entries).map_err(io_err)).await?;
        }
        self.rounds.submit(self.log.clone(), FlushOp::Written(callback));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.barrier().await?;
        let from = last_log_id.map_or(0, |l| l.index + 1);
        let log = self.log.clone();
        blocking(move || log.truncate_from(from).map_err(io_err)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.barrier().await?;
        let log = self.log.clone();
        blocking(move || {
            log.meta
                .update(true, |m| {
                    if m.last_purged.is_none_or(|p| p < log_id) {
                        m.last_purged = Some(log_id);
                    }
                })
                .map_err(io_err)?;
            if let Err(e) = log.enforce_retention() {
                tracing::warn!(group = %log.group, error = %e, "log compaction after purge failed");
            }
            Ok(())
        })
        .await
    }
}
