//! Operations that restructure a stream: truncation, checkpoints, checkpoint install,
//! compaction and deletion. Each runs under the stream's writer lock and orders its file
//! operations so that a crash at any point leaves a stream that opens consistently (see the
//! recovery policy in `recovery.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use super::stream::Stream;
use super::{Storage, io_err};
use crate::checkpoint::{Checkpoint, CheckpointIndex, check_data_len, check_installable, serialize_checkpoint_payload};
use crate::compaction::{CompactionConfig, CompactionResult, SegmentSpan, removable_prefix};
use crate::error::{Result, StorageError};
use crate::format::{names, segment as seg_fmt};
use crate::types::{ChainHash, Offset, StreamId};

pub(crate) fn seq_exhausted(h: &Stream) -> StorageError {
    StorageError::Corruption {
        stream: h.id,
        file: names::segment(u64::MAX),
        position: 0,
        offset: None,
        reason: crate::error::CorruptionReason::InvalidField { field: "segment sequence number", value: u64::MAX },
    }
}

impl Storage {
    /// Durably drops every record at or above `offset` and restores the chain head to the hash of
    /// record `offset - 1`. `offset` at or past the end is a no-op; below the log start is
    /// `OffsetOutOfRange`. Checkpoints above `offset` are dropped too.
    ///
    /// This is the one operation that may cut into a sealed segment: the segment holding `offset`
    /// loses its index file, is cut, and becomes the active segment again; every later segment
    /// is deleted.
    pub fn truncate_from(&self, stream: StreamId, offset: Offset) -> Result<()> {
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

    fn truncate_locked(&self, h: &Stream, offset: Offset) -> Result<()> {
        h.mark_modified();
        let fs = &self.fs;
        let dir = &h.dir;
        let (new_head, keep, cut_pos, doomed_segments, doomed_cps, target) = {
            let c = h.core.read();
            let new_head =
                if offset == c.log_start() { c.segments[0].base_prev_hash } else { self.hash_before(h, &c, offset)? };
            let mut ti = c.segment_index(offset);
            if c.segments[ti].base == offset && ti > 0 {
                ti -= 1;
            }
            let t = &c.segments[ti];
            let cut_pos = match (offset.get() - t.base.get()) as usize {
                i if i < t.positions.len() => t.positions[i],
                _ => t.len,
            };
            let doomed_segments: Vec<u64> = c.segments[ti + 1..].iter().map(|s| s.seq).collect();
            let doomed_cps: Vec<Offset> = c
                .checkpoints
                .iter()
                .map(|cp| cp.offset)
                .filter(|o| *o > offset && !c.pending_checkpoints.contains(o))
                .collect();
            (new_head, ti + 1, cut_pos, doomed_segments, doomed_cps, (t.file.clone(), t.seq, t.len))
        };
        for o in doomed_cps {
            self.remove_if_exists(&dir.join(names::checkpoint(o.get())))?;
        }
        for seq in doomed_segments.iter().rev() {
            self.remove_if_exists(&dir.join(names::segment(*seq)))?;
            self.remove_if_exists(&dir.join(names::index(*seq)))?;
        }
        let (file, seq, len) = target;
        let cut = cut_pos < len;
        if cut {
            self.remove_if_exists(&dir.join(names::index(seq)))?;
        }
        fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        let path = dir.join(names::segment(seq));
        {
            // Readers hold the core lock while they read: none may be inside the part being cut.
            let mut c = h.core.write();
            if cut {
                file.set_len(cut_pos).map_err(io_err("truncate", &path))?;
            }
            file.sync_data().map_err(io_err("fsync", &path))?;
            c.segments.truncate(keep);
            let a = c.active_mut();
            a.positions.truncate((offset.get() - a.base.get()) as usize);
            a.len = cut_pos;
            if cut {
                a.allocated = cut_pos;
                a.idx_bytes = 0;
                a.indexed_len = 0;
            }
            a.index_pending = false;
            c.head = new_head;
            c.checkpoints.remove_above(offset);
            c.pending_checkpoints.retain(|o| *o <= offset);
        }
        h.anchors.lock().retain(|k, _| *k <= offset);
        h.reset_durable(offset);
        Ok(())
    }

    /// Writes a checkpoint at the stream's next offset, with no caller data.
    pub fn create_checkpoint(&self, stream: StreamId) -> Result<Checkpoint> {
        let h = self.stream_or_create(stream, Offset::ZERO, ChainHash::ZERO)?;
        let _w = h.writer.lock();
        let next = h.core.read().next();
        self.checkpoint_locked(&h, next, Bytes::new())
    }

    /// Writes a checkpoint at `offset` (between the log start and the next offset) with `data`.
    pub fn create_checkpoint_at(&self, stream: StreamId, offset: Offset, data: Bytes) -> Result<Checkpoint> {
        let h = self.stream_or_create(stream, Offset::ZERO, ChainHash::ZERO)?;
        let _w = h.writer.lock();
        self.checkpoint_locked(&h, offset, data)
    }

    fn checkpoint_locked(&self, h: &Stream, offset: Offset, data: Bytes) -> Result<Checkpoint> {
        let hash = {
            let c = h.core.read();
            if offset < c.log_start() || offset > c.next() {
                return Err(StorageError::InvalidCheckpoint {
                    stream: h.id,
                    offset,
                    reason: format!("offset must lie in [{}, {}]", c.log_start(), c.next()),
                });
            }
            check_data_len(h.id, offset, data.len())?;
            if offset == c.log_start() { c.segments[0].base_prev_hash } else { self.hash_before(h, &c, offset)? }
        };
        h.check_usable()?;
        let cp = Checkpoint::new(offset, hash, data);
        let r = self.store_checkpoint_locked(h, &cp);
        h.guard(r)?;
        Ok(cp)
    }

    /// Makes the records below `cp.offset` durable, then writes the checkpoint file.
    fn store_checkpoint_locked(&self, h: &Stream, cp: &Checkpoint) -> Result<()> {
        h.mark_modified();
        if h.sync.durable() < cp.offset {
            let (file, name, next) = {
                let c = h.core.read();
                (c.active().file.clone(), c.active().name(), c.next())
            };
            file.sync_data().map_err(io_err("fsync", &h.dir.join(name)))?;
            h.sync.note_durable(next);
        }
        self.write_atomic(&h.dir, &names::checkpoint(cp.offset.get()), &serialize_checkpoint_payload(cp))?;
        let mut c = h.core.write();
        c.checkpoints.insert(cp.clone());
        c.pending_checkpoints.remove(&cp.offset);
        Ok(())
    }

    /// Installs a checkpoint received from elsewhere. If the stream holds the record before
    /// `cp.offset` with chain hash `cp.chain_hash`, the records are kept and the checkpoint is
    /// only stored; otherwise the stream restarts empty at `cp.offset` (a fresh segment based
    /// there, flagged as a restart), its chain continuing from `cp.chain_hash`.
    pub fn install_checkpoint(&self, stream: StreamId, cp: Checkpoint) -> Result<()> {
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

    fn restart_locked(&self, h: &Stream, cp: &Checkpoint) -> Result<()> {
        h.mark_modified();
        let dir = &h.dir;
        let (old_segments, old_cps, seq) = {
            let c = h.core.read();
            let segs: Vec<u64> = c.segments.iter().map(|s| s.seq).collect();
            let cps: Vec<Offset> = c.checkpoints.iter().map(|cp| cp.offset).collect();
            (segs, cps, c.active().seq.checked_add(1))
        };
        let seq = seq.ok_or_else(|| seq_exhausted(h))?;
        // 1. The new segment, durable; from here on a crash opens as the restarted stream.
        let segment = self.create_segment(h.id, dir, seq, cp.offset, cp.chain_hash, seg_fmt::FLAG_RESTART)?;
        // 2. The checkpoint (replacing any old one at the same offset).
        self.write_atomic(dir, &names::checkpoint(cp.offset.get()), &serialize_checkpoint_payload(cp))?;
        // 3. Everything older.
        {
            let mut c = h.core.write();
            c.segments = vec![segment];
            c.head = cp.chain_hash;
            c.checkpoints = CheckpointIndex::new();
            c.checkpoints.insert(cp.clone());
            c.pending_checkpoints = BTreeSet::new();
        }
        h.anchors.lock().clear();
        h.reset_durable(cp.offset);
        for s in old_segments {
            self.remove_if_exists(&dir.join(names::segment(s)))?;
            self.remove_if_exists(&dir.join(names::index(s)))?;
        }
        for o in old_cps.into_iter().filter(|o| *o != cp.offset) {
            self.remove_if_exists(&dir.join(names::checkpoint(o.get())))?;
        }
        self.fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(())
    }

    /// The log start a [`Storage::compact`] with `config` would leave now, removing nothing (the
    /// Raft layer asks this first, so it can purge its log exactly up to the retention start).
    pub fn compaction_target(&self, stream: StreamId, config: &CompactionConfig) -> Result<Offset> {
        let Some(h) = self.stream(stream) else {
            return Ok(Offset::ZERO);
        };
        let c = h.core.read();
        let (removed, _) = removable_prefix(config, super::now_ms(), &spans(&c.segments));
        Ok(if removed == 0 { c.log_start() } else { c.segments[removed].base })
    }

    /// Removes whole sealed segments, oldest first, as `config` allows (same rules and byte
    /// accounting as [`crate::MemoryStorage`]). The checkpoint at the new log start is written
    /// before anything is deleted, so verification stays anchored across a crash.
    pub fn compact(&self, stream: StreamId, config: &CompactionConfig) -> Result<CompactionResult> {
        let Some(h) = self.stream(stream) else {
            return Ok(CompactionResult::default());
        };
        let _w = h.writer.lock();
        h.check_usable()?;
        let (removed, freed, new_start, anchor) = {
            let c = h.core.read();
            let (removed, freed) = removable_prefix(config, super::now_ms(), &spans(&c.segments));
            if removed == 0 {
                return Ok(CompactionResult { segments_removed: 0, bytes_freed: 0, new_log_start: c.log_start() });
            }
            let next_seg = &c.segments[removed];
            (removed, freed, next_seg.base, next_seg.base_prev_hash)
        };
        let r = self.compact_locked(&h, removed, new_start, anchor);
        h.guard(r)?;
        Ok(CompactionResult { segments_removed: removed, bytes_freed: freed, new_log_start: new_start })
    }

    fn compact_locked(&self, h: &Stream, removed: usize, new_start: Offset, anchor: ChainHash) -> Result<()> {
        h.mark_modified();
        let dir = &h.dir;
        let existing = {
            let c = h.core.read();
            c.checkpoints.get(new_start).filter(|_| !c.pending_checkpoints.contains(&new_start)).cloned()
        };
        if existing.is_none() {
            let cp = {
                let c = h.core.read();
                c.checkpoints
                    .get(new_start)
                    .cloned()
                    .unwrap_or_else(|| Checkpoint::new(new_start, anchor, Bytes::new()))
            };
            self.store_checkpoint_locked(h, &cp)?;
        }
        let (doomed_segments, doomed_cps) = {
            let mut c = h.core.write();
            let segs: Vec<u64> = c.segments.drain(..removed).map(|s| s.seq).collect();
            let cps: Vec<Offset> = c.checkpoints.iter().map(|cp| cp.offset).filter(|o| *o < new_start).collect();
            let cps: Vec<Offset> = cps.into_iter().filter(|o| !c.pending_checkpoints.contains(o)).collect();
            c.checkpoints.remove_below(new_start);
            c.pending_checkpoints.retain(|o| *o >= new_start);
            (segs, cps)
        };
        h.anchors.lock().retain(|k, _| *k >= new_start);
        for seq in doomed_segments {
            self.remove_if_exists(&dir.join(names::segment(seq)))?;
            self.remove_if_exists(&dir.join(names::index(seq)))?;
        }
        for o in doomed_cps {
            self.remove_if_exists(&dir.join(names::checkpoint(o.get())))?;
        }
        self.fs.sync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(())
    }

    /// Brings a failed stream back without reopening the whole storage: drops its in-memory state
    /// and runs the open path (recovery) on its directory again, which keeps every whole record
    /// on disk and cuts only a torn tail and the zeros past the active segment's records, as at
    /// open; then fsyncs what it kept, so everything the reopened stream holds is durable before it
    /// takes writes again. Returns `Ok(true)` if the stream was failed and is usable again,
    /// `Ok(false)` if there was nothing to do (unknown or not failed). Deletes nothing a reopen of
    /// the storage would keep. While the cause persists (a full disk) the fsync or the next write
    /// fails again and the stream is failed again.
    pub fn reopen_stream(&self, stream: StreamId) -> Result<bool> {
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

    /// Why the stream refuses writes (its first I/O failure), if it does.
    pub fn stream_failure(&self, stream: StreamId) -> Option<String> {
        self.stream(stream).and_then(|s| s.failed.get().cloned())
    }

    /// Removes a stream and all its files. Unknown streams are a no-op.
    pub fn delete_stream(&self, stream: StreamId) -> Result<()> {
        self.check_writable()?;
        let _c = self.create.lock();
        let Some(h) = self.streams.write().remove(&stream) else {
            return Ok(());
        };
        let _w = h.writer.lock();
        let _ = h.failed.set("the stream was deleted".into());
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
}

/// The segments as the shared retention decision sees them.
fn spans(segments: &[super::stream::Segment]) -> Vec<SegmentSpan> {
    segments.iter().map(|s| SegmentSpan { end: s.end(), bytes: s.bytes(), last_append_ms: s.last_append_ms }).collect()
}
