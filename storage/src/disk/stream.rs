//! The in-memory state of one on-disk stream: its segments with their dense offset indexes, the
//! sparse chain-hash table, checkpoints, and the locks that order writers, readers and fsyncs.
//!
//! Lock order (never taken the other way round): `writer` -> `core` -> `read_cursors` -> `anchors`; `sync`'s and
//! `cache`'s locks are leaves, never held while taking another lock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};

use super::group_commit::GroupCommit;
use super::page_cache::CachedTails;
use crate::checkpoint::CheckpointIndex;
use crate::error::{Result, StorageError};
use crate::format::{self, names};
use crate::io::FsFile;
use crate::types::{ChainHash, Offset, StreamId};

/// Every this many offsets, the chain hash before the offset is kept in memory (and in index
/// files), so a verified read re-hashes at most this many records before the one it wants.
pub(crate) const ANCHOR_INTERVAL: u64 = 64;

/// Read positions off the anchor grid a stream remembers (see [`Stream::set_read_cursor`]).
pub(crate) const READ_CURSORS: usize = 8;

/// One segment file and its dense index.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Sequence number (the `NNNNNN` of its file name).
    pub seq: u64,
    /// Offset of its first record.
    pub base: Offset,
    /// Chain hash of record `base - 1` (from the segment header).
    pub base_prev_hash: ChainHash,
    pub file: Arc<dyn FsFile>,
    /// Byte position of record `base + i`.
    pub positions: Vec<u64>,
    /// Bytes of header plus whole records (the file's logical length).
    pub len: u64,
    /// The file's length: `len` plus the zeros preallocated past it (active segment only).
    pub allocated: u64,
    /// Append time of its newest record (its creation time while empty).
    pub last_append_ms: u64,
    /// Size of its index file on disk (0 if it has none).
    pub idx_bytes: u64,
    /// Segment bytes its index file on disk describes (0 if it has none).
    pub indexed_len: u64,
    /// Sealed, and its index file not written yet (deferred off the append path; written by the
    /// next fsync, `sync`, `close`, or once a few are pending).
    pub index_pending: bool,
}

impl Segment {
    /// One past its last record.
    pub fn end(&self) -> Offset {
        self.base.plus(self.positions.len() as u64)
    }

    /// Its file name.
    pub fn name(&self) -> String {
        names::segment(self.seq)
    }

    /// Byte range `[start, end)` of record number `i` (0-based within the segment).
    pub fn span(&self, i: usize) -> (u64, u64) {
        let end = self.positions.get(i + 1).copied().unwrap_or(self.len);
        (self.positions[i], end)
    }

    /// Bytes this segment counts for rotation, compaction and retention.
    pub fn bytes(&self) -> u64 {
        self.len
    }
}

/// The part of a stream readers look at.
#[derive(Debug)]
pub(crate) struct StreamCore {
    /// Oldest first; never empty. The last one is the active segment. Together with each
    /// segment's `positions` this is the offset index: offset -> (segment, byte position) by a
    /// binary search over the (few) segments and one array access ([`StreamCore::locate`]).
    pub segments: Vec<Segment>,
    /// Chain hash of the last record (the log-start anchor when empty).
    pub head: ChainHash,
    pub checkpoints: CheckpointIndex,
    /// Policy checkpoints held in memory only so far; written once the records they cover are durable.
    pub pending_checkpoints: BTreeSet<Offset>,
}

impl StreamCore {
    pub fn log_start(&self) -> Offset {
        self.segments[0].base
    }

    pub fn next(&self) -> Offset {
        self.active().end()
    }

    pub fn active(&self) -> &Segment {
        self.segments.last().expect("a stream always has a segment")
    }

    pub fn active_mut(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("a stream always has a segment")
    }

    /// Index of the segment holding `offset` (which must lie in `[log_start, next)`), or of the
    /// active segment for `offset == next`.
    pub fn segment_index(&self, offset: Offset) -> usize {
        let i = self.segments.partition_point(|s| s.end() <= offset);
        i.min(self.segments.len() - 1)
    }

    /// The offset index: segment index and byte position of the record at `offset`, which
    /// must lie in `[log_start, next)`.
    pub fn locate(&self, offset: Offset) -> (usize, u64) {
        let i = self.segment_index(offset);
        let s = &self.segments[i];
        (i, s.positions[(offset.get() - s.base.get()) as usize])
    }

    pub fn range_error(&self, stream: StreamId, requested: Offset) -> StorageError {
        StorageError::OffsetOutOfRange { stream, requested, start: self.log_start(), end: self.next() }
    }

    /// Bytes of every file of the stream: segments, index files and checkpoint files.
    pub fn file_bytes(&self) -> u64 {
        let segs: u64 = self.segments.iter().map(|s| s.len + s.idx_bytes).sum();
        let cps: u64 = self
            .checkpoints
            .iter()
            .filter(|cp| !self.pending_checkpoints.contains(&cp.offset))
            .map(|cp| (format::checkpoint::HEADER_LEN + cp.data.len() + format::checkpoint::CRC_LEN) as u64)
            .sum();
        segs + cps
    }
}

/// One open stream.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: StreamId,
    pub dir: PathBuf,
    /// Serialises every mutation of the stream (appends, truncation, checkpoints, compaction).
    pub writer: Mutex<()>,
    pub core: RwLock<StreamCore>,
    /// Sparse chain table: `k -> hash of record k - 1`, for `k` a multiple of [`ANCHOR_INTERVAL`]
    /// (plus whatever index files held, and the read cursor), every entry computed by us, never
    /// read unverified. Truncation, checkpoint install and compaction drop the entries they void.
    pub anchors: Mutex<BTreeMap<Offset, ChainHash>>,
    /// The entries of `anchors` off the [`ANCHOR_INTERVAL`] grid kept for sequential readers:
    /// where the last [`READ_CURSORS`] verified reads stopped, most recent last.
    read_cursors: Mutex<VecDeque<Offset>>,
    /// How far the stream is durable, and the fsync appenders share.
    pub sync: GroupCommit,
    /// Set by the first failed write or fsync: the stream refuses writes until reopened.
    /// (Read on every append: a `OnceLock` reads without locking.)
    pub failed: OnceLock<String>,
    /// Whether this process changed the stream (a clean close only syncs streams it changed).
    pub modified: std::sync::atomic::AtomicBool,
    /// Whether this process fsynced the stream's records (an fsynced append, or `sync`, as the
    /// Raft log's flusher calls after unsynced appends): from then on its writes preallocate.
    pub synced: std::sync::atomic::AtomicBool,
    /// A running mean of the stream's write sizes in bytes (each write weighs 1/8): whether its
    /// writes are small enough for preallocated zeros to pay off
    /// ([`crate::format::segment::PREALLOCATE_BELOW_BYTES`]). Updated under the writer lock.
    pub mean_write_bytes: std::sync::atomic::AtomicU64,
    /// Opened by a read-only storage: every write is refused (`ReadOnly`), like a failed stream's.
    pub read_only: bool,
    /// The storage's account of synced bytes left in the OS page cache, every stream's (its lock
    /// is a leaf lock).
    pub cache: Arc<CachedTails>,
}

impl Stream {
    pub fn new(
        id: StreamId,
        dir: PathBuf,
        core: StreamCore,
        anchors: BTreeMap<Offset, ChainHash>,
        cache: Arc<CachedTails>,
    ) -> Self {
        // Nothing counts as durable until this process fsynced it (`GroupCommit` starts at
        // zero): an earlier process may have exited without syncing its last appends.
        Self {
            id,
            dir,
            writer: Mutex::new(()),
            core: RwLock::new(core),
            anchors: Mutex::new(anchors),
            read_cursors: Mutex::new(VecDeque::with_capacity(READ_CURSORS)),
            sync: GroupCommit::default(),
            failed: OnceLock::new(),
            modified: std::sync::atomic::AtomicBool::new(false),
            synced: std::sync::atomic::AtomicBool::new(false),
            mean_write_bytes: std::sync::atomic::AtomicU64::new(0),
            read_only: false,
            cache,
        }
    }

    /// Counts a write of `bytes` into [`Stream::mean_write_bytes`] (1/8 weight; the first write
    /// sets it) and returns the new mean. Called under the writer lock.
    pub fn note_write_size(&self, bytes: u64) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let old = self.mean_write_bytes.load(Relaxed);
        let new = if old == 0 { bytes } else { old - old / 8 + bytes / 8 };
        self.mean_write_bytes.store(new, Relaxed);
        new
    }

    /// `Err(StreamFailed)` once an I/O failure left the stream in an unknown state; `Err(ReadOnly)`
    /// on a read-only storage. Every write path checks it before writing.
    pub fn check_usable(&self) -> Result<()> {
        if self.read_only {
            return Err(StorageError::ReadOnly { path: self.dir.clone() });
        }
        match self.failed.get() {
            Some(cause) => Err(StorageError::StreamFailed { stream: self.id, cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// For an append holding the writer lock: the stream's head hash if its next offset is
    /// `expected` and it takes writes, else `StreamFailed` or `OffsetMismatch`.
    pub fn head_if_next_is(&self, expected: Offset) -> Result<ChainHash> {
        self.check_usable()?;
        let c = self.core.read();
        let next = c.next();
        if next != expected {
            return Err(StorageError::OffsetMismatch { stream: self.id, expected, actual: next });
        }
        Ok(c.head)
    }

    /// Marks the stream failed (first cause wins) and wakes every fsync waiter.
    pub fn fail(&self, cause: &StorageError) {
        if self.failed.set(cause.to_string()).is_ok() {
            tracing::error!(stream = %self.id, error = %cause, "stream failed; it refuses writes until reopened");
        }
        self.sync.wake_all();
    }

    /// Runs a mutating I/O step; an error marks the stream failed before being returned.
    pub fn guard<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r
            && matches!(e, StorageError::Io { .. })
        {
            self.fail(e);
        }
        r
    }

    /// Bumps the sync epoch after an operation that made everything it kept durable.
    pub fn reset_durable(&self, durable: Offset) {
        self.sync.reset(durable);
    }

    /// Notes that this process changed the stream.
    pub fn mark_modified(&self) {
        self.modified.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Notes in the sparse table that a verified read found `hash` for record `k - 1`, so the
    /// reader's next read (from `k`) chains from it instead of re-hashing from the grid anchor
    /// below (up to [`ANCHOR_INTERVAL`] records, as many as 16 MiB of record batches). One entry
    /// per reader position, for the last [`READ_CURSORS`] positions (several consumers, or one
    /// reading several ranges, each keep theirs); the oldest is dropped, so the table grows by
    /// at most that many entries. On the grid, the entry is an ordinary anchor and stays.
    pub fn set_read_cursor(&self, k: Offset, hash: ChainHash) {
        if k.get().is_multiple_of(super::ANCHOR_INTERVAL) {
            self.anchors.lock().insert(k, hash);
            return;
        }
        let mut cursors = self.read_cursors.lock();
        let mut anchors = self.anchors.lock();
        if let Some(i) = cursors.iter().position(|c| *c == k) {
            cursors.remove(i);
        } else if cursors.len() == READ_CURSORS
            && let Some(old) = cursors.pop_front()
        {
            anchors.remove(&old);
        }
        cursors.push_back(k);
        anchors.insert(k, hash);
        debug_assert!(cursors.len() <= READ_CURSORS);
    }

    /// Records `anchors` (offset, hash before it) in the sparse table.
    pub fn add_anchors(&self, list: impl IntoIterator<Item = (Offset, ChainHash)>) {
        let mut a = self.anchors.lock();
        for (k, h) in list {
            a.insert(k, h);
        }
    }
}

/// The header bytes of an empty segment.
pub(crate) const EMPTY_SEGMENT_LEN: u64 = format::segment::HEADER_LEN as u64;
