//! The disk backend's API: `impl StorageBackend for Storage`, the one place each operation is
//! written (the trait documents what it does). Each method resolves its stream, answers for one
//! that does not exist as [`crate::backend`] says, takes the locks the operation needs, and hands
//! the work to the module that does it: `write.rs` (appends, sync), `read.rs` (verified reads and
//! verification), `maintenance.rs` (truncation, checkpoints, compaction), `scrub.rs` (scrub and
//! repair), `recovery.rs` (what a reopened stream holds).

use std::sync::Arc;

use bytes::Bytes;

use super::maintenance::spans;
use super::{Storage, io_err};
use crate::backend::{StorageBackend, absent};
use crate::checkpoint::{Checkpoint, check_installable};
use crate::clock::now_ms;
use crate::compaction::{CompactionConfig, CompactionResult, plan};
use crate::error::{Result, StorageError};
use crate::format::names;
use crate::scrub::{RepairOutcome, ScrubReport, SegmentInfo, repair_target};
use crate::types::{ChainHash, ChainVerification, Offset, ReadCheck, Record, StreamId};

impl StorageBackend for Storage {
    /// Concurrent fsyncing appenders share fsyncs (group commit, `group_commit.rs`). A batch of
    /// 64 KiB or more is prepared part by part on the preparing thread while this one writes it.
    fn append_batch_hashed(
        &self,
        stream: StreamId,
        events: Vec<Bytes>,
        expected: Offset,
        fsync: bool,
    ) -> Result<Vec<ChainHash>> {
        self.options.check_batch(stream, &events)?;
        let h = self.stream_to_append(stream, expected)?;
        self.append_to(&h, events, expected, fsync)
    }

    fn read_range(&self, stream: StreamId, from: Offset, end: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        self.read_range_checked(stream, from, end, max_bytes, ReadCheck::Chain)
    }

    fn read_range_checked(
        &self,
        stream: StreamId,
        from: Offset,
        end: Offset,
        max_bytes: usize,
        check: ReadCheck,
    ) -> Result<Vec<Record>> {
        match self.stream(stream) {
            Some(h) => self.read_stream(&h, from, end, max_bytes, check),
            None => Ok(Vec::new()),
        }
    }

    fn verify_chain(&self, stream: StreamId) -> Result<ChainVerification> {
        match self.stream(stream) {
            Some(h) => self.verify_span(&h, None, None),
            None => absent::verify(stream, Offset::ZERO, Offset::ZERO),
        }
    }

    /// Re-reads the records from the segment files; damage is a `Corruption` naming the file,
    /// byte position and offset.
    fn verify_range(&self, stream: StreamId, from: Offset, to: Offset) -> Result<ChainVerification> {
        match self.stream(stream) {
            Some(h) => self.verify_span(&h, Some(from), Some(to)),
            None => absent::verify(stream, from, to),
        }
    }

    fn chain_hash_at(&self, stream: StreamId, offset: Offset) -> Result<ChainHash> {
        let h = self.stream(stream).ok_or_else(|| absent::out_of_range(stream, offset))?;
        let c = h.core.read();
        self.hash_before(&h, &c, offset.plus(1)).map_err(|e| match e {
            StorageError::OffsetOutOfRange { .. } => c.range_error(stream, offset),
            e => e,
        })
    }

    fn latest_chain_hash(&self, stream: StreamId) -> Result<ChainHash> {
        Ok(self.stream(stream).map_or(ChainHash::ZERO, |s| s.core.read().head))
    }

    fn next_offset(&self, stream: StreamId) -> Result<Offset> {
        Ok(self.stream(stream).map_or(Offset::ZERO, |s| s.core.read().next()))
    }

    fn log_start(&self, stream: StreamId) -> Result<Offset> {
        Ok(self.stream(stream).map_or(Offset::ZERO, |s| s.core.read().log_start()))
    }

    fn append_fits_active_segment(&self, stream: StreamId, bytes: u64) -> bool {
        self.stream(stream)
            .is_some_and(|s| s.core.read().active().len.saturating_add(bytes) <= self.options.max_segment_bytes)
    }

    fn streams(&self) -> Vec<StreamId> {
        self.streams.read().keys().copied().collect()
    }

    /// The one operation that may cut into a sealed segment: the segment holding `offset` loses
    /// its index file, is cut, and becomes the active segment again; every later segment is
    /// deleted.
    fn truncate_from(&self, stream: StreamId, offset: Offset) -> Result<()> {
        let Some(h) = self.stream(stream) else {
            return Ok(());
        };
        let _w = h.writer.lock();
        {
            let c = h.core.read();
            if offset < c.log_start() {
                return Err(c.range_error(stream, offset));
            }
            if offset >= c.next() {
                return Ok(());
            }
        }
        h.check_usable()?;
        let r = self.truncate_locked(&h, offset);
        h.guard(r)
    }

    fn create_checkpoint(&self, stream: StreamId) -> Result<Checkpoint> {
        let h = self.stream_or_create(stream, Offset::ZERO, ChainHash::ZERO)?;
        let _w = h.writer.lock();
        let next = h.core.read().next();
        self.checkpoint_locked(&h, next, Bytes::new())
    }

    fn create_checkpoint_at(&self, stream: StreamId, offset: Offset, data: Bytes) -> Result<Checkpoint> {
        let h = self.stream_or_create(stream, Offset::ZERO, ChainHash::ZERO)?;
        let _w = h.writer.lock();
        self.checkpoint_locked(&h, offset, data)
    }

    fn latest_checkpoint(&self, stream: StreamId) -> Result<Option<Checkpoint>> {
        Ok(self.stream(stream).and_then(|s| s.core.read().checkpoints.latest().cloned()))
    }

    fn checkpoint_at_or_below(&self, stream: StreamId, offset: Offset) -> Result<Option<Checkpoint>> {
        Ok(self.stream(stream).and_then(|s| s.core.read().checkpoints.at_or_below(offset).cloned()))
    }

    /// A restart writes a fresh segment based at `cp.offset`, flagged as a restart.
    fn install_checkpoint(&self, stream: StreamId, cp: Checkpoint) -> Result<()> {
        check_installable(stream, &cp)?;
        // A new stream starts right at the checkpoint: the same end state as restarting.
        let h = self.stream_or_create(stream, cp.offset, cp.chain_hash)?;
        let _w = h.writer.lock();
        h.check_usable()?;
        let matches = {
            let c = h.core.read();
            cp.offset >= c.log_start()
                && cp.offset <= c.next()
                && (if cp.offset == c.log_start() {
                    c.segments[0].base_prev_hash
                } else {
                    self.hash_before(&h, &c, cp.offset)?
                }) == cp.chain_hash
        };
        let r = if matches { self.store_checkpoint_locked(&h, &cp) } else { self.restart_locked(&h, &cp) };
        h.guard(r)
    }

    fn compaction_target(&self, stream: StreamId, config: &CompactionConfig) -> Result<Offset> {
        let Some(h) = self.stream(stream) else {
            return Ok(Offset::ZERO);
        };
        let c = h.core.read();
        Ok(plan(config, now_ms(), &spans(&c.segments)).new_log_start)
    }

    /// The checkpoint at the new log start is written before anything is deleted, so
    /// verification stays anchored across a crash.
    fn compact(&self, stream: StreamId, config: &CompactionConfig) -> Result<CompactionResult> {
        let Some(h) = self.stream(stream) else {
            return Ok(CompactionResult::default());
        };
        let _w = h.writer.lock();
        h.check_usable()?;
        let (result, anchor) = {
            let c = h.core.read();
            let result = plan(config, now_ms(), &spans(&c.segments));
            if result.segments_removed == 0 {
                return Ok(result);
            }
            let anchor = c.segments[result.segments_removed].base_prev_hash;
            (result, anchor)
        };
        let r = self.compact_locked(&h, result.segments_removed, result.new_log_start, anchor);
        h.guard(r)?;
        Ok(result)
    }

    fn close_streams(&self) -> Result<()> {
        self.shutdown()
    }

    fn sync(&self, stream: StreamId) -> Result<()> {
        match self.stream(stream) {
            Some(h) => self.sync_stream(&h),
            None => Ok(()),
        }
    }

    /// Up to [`super::SYNC_THREADS`] threads (this one and the storage's kept fsync helpers)
    /// each take the next stream of the list and fsync it: the fsyncs are in flight together,
    /// which the device and the file system's journal serve for about the cost of one or two
    /// (see `benches/sync_rounds.rs`). Each stream's group commit, failure handling and deferred
    /// writes are exactly `sync`'s (the deferred writes then run on this thread).
    fn sync_streams(&self, streams: &[StreamId]) -> Vec<Result<()>> {
        self.sync_many(streams)
    }

    fn delete_stream(&self, stream: StreamId) -> Result<()> {
        self.check_writable()?;
        let _c = self.create.lock();
        let Some(h) = self.streams.write().remove(&stream) else {
            return Ok(());
        };
        let _w = h.writer.lock();
        let _ = h.failed.set("the stream was deleted".into());
        self.cached_tails.forget(stream);
        h.reset_durable(Offset::ZERO);
        let dir = &h.dir;
        let segs: Vec<u64> = h.core.read().segments.iter().map(|s| s.seq).collect();
        for seq in segs.iter().rev() {
            self.remove_if_exists(&dir.join(names::segment(*seq)))?;
        }
        self.fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        for name in self.fs.read_dir(dir).map_err(io_err("list directory", dir))? {
            self.remove_if_exists(&dir.join(name))?;
        }
        self.fs.remove_dir(dir).map_err(io_err("remove directory", dir))?;
        self.fs.sync_dir(&self.root).map_err(io_err("fsync directory", &self.root))?;
        Ok(())
    }

    /// Drops the stream's in-memory state and runs the open path (recovery) on its directory
    /// again, which keeps every whole record on disk and cuts only a torn tail and the zeros past
    /// the active segment's records, as at open; then fsyncs what it kept. Deletes nothing a
    /// reopen of the storage would keep.
    fn reopen_stream(&self, stream: StreamId) -> Result<bool> {
        self.check_writable()?;
        let _c = self.create.lock();
        let Some(old) = self.stream(stream) else {
            return Ok(false);
        };
        if old.check_usable().is_ok() {
            return Ok(false);
        }
        // Appenders and maintenance of the failed stream finish (they all fail) before its files
        // are read again.
        let _w = old.writer.lock();
        // Recovery may cut the tail: the reopened stream's syncs count its segments anew.
        self.cached_tails.forget(stream);
        let reopened = match self.open_stream(stream, old.dir.clone())? {
            Some(s) => Arc::new(s),
            None => {
                // Nothing but leftovers in its directory: it held no record.
                self.streams.write().remove(&stream);
                old.sync.wake_all();
                return Ok(true);
            }
        };
        // Make what recovery kept durable (it may have been written, but not fsynced, before the
        // failure) before anything is appended after it.
        use std::sync::atomic::Ordering;
        reopened.synced.store(old.synced.load(Ordering::Acquire), Ordering::Release);
        reopened.modified.store(old.modified.load(Ordering::Acquire), Ordering::Release);
        let synced = self.sync_stream(&reopened);
        if let Err(e) = synced {
            tracing::warn!(%stream, error = %e, "reopening a failed stream: the fsync of what it holds failed");
            return Err(e);
        }
        let next = reopened.core.read().next();
        self.streams.write().insert(stream, reopened);
        old.sync.wake_all();
        tracing::info!(%stream, %next, "failed stream reopened from its files");
        Ok(true)
    }

    fn stream_failure(&self, stream: StreamId) -> Option<String> {
        // Looked at under the map's lock, not through a cloned handle: supervisors ask for every
        // stream several times a second.
        self.streams.read().get(&stream).and_then(|s| s.failed.get().cloned())
    }

    /// Segment, index and written checkpoint files.
    fn stream_bytes(&self, stream: StreamId) -> Result<u64> {
        Ok(self.stream(stream).map_or(0, |s| s.core.read().file_bytes()))
    }

    fn segments(&self, stream: StreamId) -> Result<Vec<SegmentInfo>> {
        let Some(h) = self.stream(stream) else { return Ok(Vec::new()) };
        let c = h.core.read();
        let n = c.segments.len();
        Ok(c.segments
            .iter()
            .enumerate()
            .map(|(i, s)| SegmentInfo { file: s.name(), base: s.base, end: s.end(), sealed: i + 1 < n, bytes: s.len })
            .collect())
    }

    fn scrub_segment(&self, stream: StreamId, base: Offset) -> Result<ScrubReport> {
        let h = self.stream(stream).ok_or(StorageError::UnknownSegment { stream, base })?;
        self.scrub(&h, base)
    }

    fn repair_range(&self, stream: StreamId, from: Offset, records: Vec<Record>) -> Result<RepairOutcome> {
        let h = repair_target(stream, from, &records, self.stream(stream))?;
        self.repair(&h, from, records)
    }
}
