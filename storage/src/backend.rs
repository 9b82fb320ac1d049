//! The operations the Raft layer needs, implemented by both [`crate::Storage`] (disk) and
//! [`crate::MemoryStorage`]. One shared test suite (`tests/backend_suite.rs`) runs against both.
//!
//! The trait is the whole API of both backends (import it to call them); the answers both give
//! for a stream that does not exist and the bounds of `verify_range` are written once, here.

use std::fmt;

use bytes::Bytes;

use crate::checkpoint::Checkpoint;
use crate::compaction::{CompactionConfig, CompactionResult};
use crate::error::{Result, StorageError};
use crate::scrub::{RepairOutcome, ScrubReport, SegmentInfo};
use crate::types::{ChainHash, ChainVerification, Offset, ReadCheck, Record, StreamId};

/// A set of hash-chained, append-only streams.
///
/// All methods take `&self`: implementations are `Send + Sync`, allow concurrent readers, one writer
/// per stream at a time (concurrent appenders to one stream are serialised, and fsyncing ones may
/// share an fsync),
/// and many streams in parallel. A stream springs into existence on its first append (or checkpoint
/// install); asking about a stream that does not exist answers as for an empty stream at offset 0.
pub trait StorageBackend: Send + Sync + fmt::Debug + 'static {
    /// Appends `events` at `expected_offset`, which must be the stream's next offset
    /// (else [`crate::StorageError::OffsetMismatch`] and nothing is written). Returns the new next
    /// offset. With `fsync`, returns only once the records are durable.
    fn append_batch(
        &self,
        stream: StreamId,
        events: Vec<Bytes>,
        expected_offset: Offset,
        fsync: bool,
    ) -> Result<Offset> {
        let hashes = self.append_batch_hashed(stream, events, expected_offset, fsync)?;
        Ok(expected_offset.plus(hashes.len() as u64))
    }

    /// [`StorageBackend::append_batch`], returning the chain hash of each record appended, in
    /// order: the hashes the append computed and stored (what [`StorageBackend::chain_hash_at`]
    /// answers for those offsets), so a caller that needs them does not hash the records again.
    fn append_batch_hashed(
        &self,
        stream: StreamId,
        events: Vec<Bytes>,
        expected_offset: Offset,
        fsync: bool,
    ) -> Result<Vec<ChainHash>>;

    /// Verified records in `[from, end)`, up to about `max_bytes` of payload (always at least one
    /// record if any is in range). `from` at or past the next offset gives an empty vector; `from`
    /// below the log start is [`crate::StorageError::OffsetOutOfRange`]. `end` past the next offset
    /// is clamped.
    fn read_range(&self, stream: StreamId, from: Offset, end: Offset, max_bytes: usize) -> Result<Vec<Record>>;

    /// Records in `[from, end)` as [`StorageBackend::read_range`], each checked as `check` says
    /// ([`ReadCheck::Chain`] is `read_range`). With [`ReadCheck::Frames`] a record's `hash` is the
    /// link its successor stores (the head for the stream's last record), not recomputed; a
    /// backend that cannot read cheaper than a full check answers as `read_range` does.
    fn read_range_checked(
        &self,
        stream: StreamId,
        from: Offset,
        end: Offset,
        max_bytes: usize,
        check: ReadCheck,
    ) -> Result<Vec<Record>> {
        let _ = check; // the full check is never weaker
        self.read_range(stream, from, end, max_bytes)
    }

    /// Verified records from `from` to the end of the stream, bounded by `max_bytes` as in
    /// [`StorageBackend::read_range`].
    fn read_records(&self, stream: StreamId, from: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        self.read_range(stream, from, Offset::new(u64::MAX), max_bytes)
    }

    /// Payloads only, as [`StorageBackend::read_records`].
    fn read_from(&self, stream: StreamId, from: Offset, max_bytes: usize) -> Result<Vec<Bytes>> {
        Ok(self.read_records(stream, from, max_bytes)?.into_iter().map(|r| r.payload).collect())
    }

    /// Verifies every record from the log start (anchored by its checkpoint) to the end: CRCs,
    /// offsets and chain links. The error names the first bad offset and why.
    fn verify_chain(&self, stream: StreamId) -> Result<ChainVerification>;

    /// Re-reads the records in `[from, to)` from where they are stored (the segment files, for
    /// the disk backend) and verifies each one: CRC, offset, chain link, starting from the chain
    /// hash of record `from - 1` (the anchoring checkpoint's at the log start). Returns the range
    /// with `head` = the chain hash of record `to - 1` (for `from == to`, of record `from - 1`).
    /// Nothing is answered from in-memory hashes: a scrub or an operator's sweep relies on it.
    /// `from` below the log start, `to` past the next offset or `from > to` is
    /// [`crate::StorageError::OffsetOutOfRange`]; damage is [`crate::StorageError::Corruption`]
    /// naming the first bad offset.
    fn verify_range(&self, stream: StreamId, from: Offset, to: Offset) -> Result<ChainVerification>;

    /// The chain hash of the record at `offset` (for `offset == log_start - 1`, the anchoring
    /// checkpoint's hash). Out of range is [`crate::StorageError::OffsetOutOfRange`].
    fn chain_hash_at(&self, stream: StreamId, offset: Offset) -> Result<ChainHash>;

    /// The chain hash of the last record ([`ChainHash::ZERO`] for an empty stream at 0).
    fn latest_chain_hash(&self, stream: StreamId) -> Result<ChainHash>;

    /// One past the last record.
    fn next_offset(&self, stream: StreamId) -> Result<Offset>;

    /// Whether appending about `bytes` more (records as stored, framing included) to `stream`,
    /// which exists, stays within its active segment: no rotation, so the append makes no fsync
    /// and creates no file, only a write into the page cache. A caller that must not block long
    /// (an async worker) may then append itself. `false` when the stream does not exist or the
    /// backend cannot tell.
    fn append_fits_active_segment(&self, stream: StreamId, bytes: u64) -> bool {
        let _ = (stream, bytes);
        false
    }

    /// The first offset still held.
    fn log_start(&self, stream: StreamId) -> Result<Offset>;

    /// Every stream that exists, in id order.
    fn streams(&self) -> Vec<StreamId>;

    /// Durably drops every record at or above `offset` and restores the chain head to the hash of
    /// record `offset - 1`. `offset` at or past the end is a no-op; below the log start is
    /// [`crate::StorageError::OffsetOutOfRange`]. Checkpoints above `offset` are dropped too.
    fn truncate_from(&self, stream: StreamId, offset: Offset) -> Result<()>;

    /// Writes a checkpoint at the stream's next offset, with no caller data.
    fn create_checkpoint(&self, stream: StreamId) -> Result<Checkpoint>;

    /// Writes a checkpoint at `offset` (between the log start and the next offset) with `data`.
    fn create_checkpoint_at(&self, stream: StreamId, offset: Offset, data: Bytes) -> Result<Checkpoint>;

    /// The newest checkpoint, if any.
    fn latest_checkpoint(&self, stream: StreamId) -> Result<Option<Checkpoint>>;

    /// The checkpoint with the greatest offset `<= offset`, if any.
    fn checkpoint_at_or_below(&self, stream: StreamId, offset: Offset) -> Result<Option<Checkpoint>>;

    /// Installs a checkpoint received from elsewhere (a Raft snapshot). If the stream holds the
    /// record before `cp.offset` and its chain hash equals `cp.chain_hash`, the records are kept and
    /// the checkpoint is only stored; otherwise every record is dropped and the stream restarts
    /// empty at `cp.offset`, its chain continuing from `cp.chain_hash`.
    fn install_checkpoint(&self, stream: StreamId, cp: Checkpoint) -> Result<()>;

    /// The log start a [`StorageBackend::compact`] with `config` would leave now, removing nothing.
    fn compaction_target(&self, stream: StreamId, config: &CompactionConfig) -> Result<Offset>;

    /// Removes whole old segments as `config` allows; the log start moves up and the checkpoint at
    /// the new log start anchors the chain.
    fn compact(&self, stream: StreamId, config: &CompactionConfig) -> Result<CompactionResult>;

    /// Makes every record appended so far durable.
    fn sync(&self, stream: StreamId) -> Result<()>;

    /// Makes every record appended so far to each of `streams` durable, as [`StorageBackend::sync`]
    /// on each would, and answers for each stream, in the order given (a stream listed twice is
    /// answered twice). A failure fails only the streams whose flush it was: each of those answers
    /// its own error (the I/O error naming its file, or `StreamFailed` naming the stream) and
    /// refuses writes as after a failed `sync`; the others are durable. One call for many streams
    /// is how a caller with many streams' unsynced appends (a node's Raft groups) shares the cost
    /// of flushing them: the disk backend flushes the streams from several threads at once.
    fn sync_streams(&self, streams: &[StreamId]) -> Vec<Result<()>> {
        streams.iter().map(|s| self.sync(*s)).collect()
    }

    /// Leaves every stream as a clean close does (its records durable; for the disk backend also
    /// the preallocated zeros trimmed and the active segments' index files written, so the next
    /// open scans nothing), before the last handle is dropped: a process that must stop within a
    /// deadline runs this on a thread it can stop waiting for, instead of in `Drop`. The storage
    /// stays usable; anything written after it is recovered on the next open as after a crash.
    /// The first error is returned after every stream was tried.
    fn close_streams(&self) -> Result<()> {
        let mut first_err = None;
        for stream in self.streams() {
            if let Err(e) = self.sync(stream) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes a stream and all its files. Unknown streams are a no-op.
    fn delete_stream(&self, stream: StreamId) -> Result<()>;

    /// Brings back a stream that refuses writes after an I/O failure
    /// ([`crate::StorageError::StreamFailed`]) without reopening the whole storage: its in-memory
    /// state is dropped and rebuilt from what is stored, as opening the storage would (a torn tail
    /// is cut; every record that was durable is kept), and what it keeps is made durable before it
    /// takes writes. `Ok(true)` if it was failed and is usable now, `Ok(false)` if there was
    /// nothing to do. If the cause persists (a full disk), this or the next write fails again.
    fn reopen_stream(&self, stream: StreamId) -> Result<bool>;

    /// The first I/O failure that made the stream refuse writes, if it does.
    fn stream_failure(&self, stream: StreamId) -> Option<String>;

    /// Bytes the stream occupies (segment, index and checkpoint files).
    fn stream_bytes(&self, stream: StreamId) -> Result<u64>;

    /// The stream's segments, oldest first (the last one is the active segment). An unknown
    /// stream has none. A scrubber walks this list and scrubs one segment at a time.
    fn segments(&self, stream: StreamId) -> Result<Vec<SegmentInfo>>;

    /// Re-reads the segment starting at `base` from the medium and checks every record (CRC,
    /// markers, offsets, chain links from its base hash to the hash it must end on). Damage is
    /// reported in [`ScrubReport::damage`]; errors are for I/O failures and an unknown segment
    /// ([`crate::StorageError::UnknownSegment`]).
    fn scrub_segment(&self, stream: StreamId, base: Offset) -> Result<ScrubReport>;

    /// Replaces the records `[from, from + records.len())` of one segment (sealed or active; for
    /// the active one, appends wait meanwhile) with `records`,
    /// accepted only if they chain exactly from the known-good hash of record `from - 1` to the
    /// known-good hash of the range's last record (see [`crate::scrub`]); else
    /// [`crate::StorageError::RepairRejected`] and nothing changes. Durable on return; a crash
    /// leaves the old or the new segment.
    fn repair_range(&self, stream: StreamId, from: Offset, records: Vec<Record>) -> Result<RepairOutcome>;
}

/// What both backends answer about a stream that does not exist: what an empty stream at offset 0
/// would.
pub(crate) mod absent {
    use crate::error::{Result, StorageError};
    use crate::types::{ChainHash, ChainVerification, Offset, StreamId};

    /// [`super::StorageBackend::verify_range`] (and `verify_chain`, the range `[0, 0)`): the empty
    /// range at 0 verifies, anything else is out of range.
    pub(crate) fn verify(stream: StreamId, from: Offset, to: Offset) -> Result<ChainVerification> {
        if from == Offset::ZERO && to == Offset::ZERO {
            return Ok(ChainVerification { stream, from, to, records: 0, head: ChainHash::ZERO });
        }
        Err(out_of_range(stream, from))
    }

    /// An offset asked about: the stream holds none.
    pub(crate) fn out_of_range(stream: StreamId, requested: Offset) -> StorageError {
        StorageError::OffsetOutOfRange { stream, requested, start: Offset::ZERO, end: Offset::ZERO }
    }
}

/// The range [`StorageBackend::verify_range`] accepts on a stream holding `[log_start, next)`:
/// `from <= to`, both within `[log_start, next]`; else `OffsetOutOfRange` naming `from` (or
/// `to - 1`, for a range running past the end).
pub(crate) fn check_verify_range(
    stream: StreamId,
    from: Offset,
    to: Offset,
    log_start: Offset,
    next: Offset,
) -> Result<()> {
    let out_of_range = |requested, start, end| Err(StorageError::OffsetOutOfRange { stream, requested, start, end });
    if from > to {
        return out_of_range(from, Offset::ZERO, to);
    }
    if from < log_start {
        return out_of_range(from, log_start, next);
    }
    if to > next {
        return out_of_range(Offset::new(to.get() - 1), log_start, next);
    }
    Ok(())
}
