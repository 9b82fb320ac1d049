//! Operations that restructure a stream: truncation, checkpoints, checkpoint install and
//! compaction (entered from `api.rs`). Each runs under the stream's writer lock and orders its file
//! operations so that a crash at any point leaves a stream that opens consistently (see the
//! recovery policy in `recovery.rs`).

use std::collections::BTreeSet;

use bytes::Bytes;

use super::stream::Stream;
use super::{Storage, io_err};
use crate::checkpoint::{Checkpoint, CheckpointIndex, check_data_len, serialize_checkpoint_payload};
use crate::compaction::SegmentSpan;
use crate::error::{Result, StorageError};
use crate::format::{names, segment as seg_fmt};
use crate::types::{ChainHash, Offset};

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
    pub(super) fn truncate_locked(&self, h: &Stream, offset: Offset) -> Result<()> {
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
        h.cache.truncated(h.id, seq, cut_pos);
        h.reset_durable(offset);
        Ok(())
    }

    pub(super) fn checkpoint_locked(&self, h: &Stream, offset: Offset, data: Bytes) -> Result<Checkpoint> {
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
    pub(super) fn store_checkpoint_locked(&self, h: &Stream, cp: &Checkpoint) -> Result<()> {
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

    pub(super) fn restart_locked(&self, h: &Stream, cp: &Checkpoint) -> Result<()> {
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

    pub(super) fn compact_locked(
        &self,
        h: &Stream,
        removed: usize,
        new_start: Offset,
        anchor: ChainHash,
    ) -> Result<()> {
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
}

/// The segments as the shared retention decision sees them.
pub(super) fn spans(segments: &[super::stream::Segment]) -> Vec<SegmentSpan> {
    segments
        .iter()
        .map(|s| SegmentSpan { base: s.base, end: s.end(), bytes: s.bytes(), last_append_ms: s.last_append_ms })
        .collect()
}
