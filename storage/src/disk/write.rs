//! The write path: committing prepared batches, segment rotation, group commit, index files.

use std::sync::Arc;

use bytes::Bytes;

use super::stream::Stream;
use super::{Storage, io_err};
use crate::checkpoint::{Checkpoint, serialize_checkpoint_payload, should_create_checkpoint};
use crate::clock::now_ms;
use crate::error::{Result, StorageError};
use crate::format::names;
use crate::format::segment::{PREALLOCATE_BELOW_BYTES, PREALLOCATION_BYTES, PREALLOCATION_MIN_BYTES};
use crate::index::IndexFile;
use crate::prepare_ahead::{BatchToPrepare, PrepareAhead};
use crate::prepared::PreparedBatch;
use crate::types::{ChainHash, Offset, StreamId};

use super::ANCHOR_INTERVAL;

/// The zeros a preallocation writes, read from one static block (never written, so its pages stay
/// the kernel's shared zero page). A zeroed buffer allocated per preallocation (up to 1 MiB) was
/// page-faulted in by every write and unmapped after it, each unmap a TLB shootdown across the
/// node's threads: with hundreds of partitions, ~40% of a node's page faults.
static PREALLOCATION_ZEROS: [u8; PREALLOCATION_BYTES as usize] = [0; PREALLOCATION_BYTES as usize];

/// Batches (of two records or more) with at least this much payload are prepared on the
/// preparing thread while this one writes them.
const AHEAD_MIN_BYTES: usize = 64 << 10;
/// Encoded bytes per part (one write each) of a batch prepared ahead.
const AHEAD_PART_BYTES: usize = 32 << 10;
/// Sealed segments whose index file may wait for the next fsync point before rotation writes
/// them inline (each index costs two fsyncs; a missing one is rebuilt on open).
const MAX_PENDING_INDEXES: usize = 4;

impl Storage {
    /// The stream an append at `expected` goes to: created (empty at 0) if it does not exist
    /// and `expected` is 0, else `OffsetMismatch` (a rejected append must not bring the stream
    /// into existence).
    pub(super) fn stream_to_append(&self, stream: StreamId, expected: Offset) -> Result<Arc<Stream>> {
        match self.stream(stream) {
            Some(h) => Ok(h),
            None if expected != Offset::ZERO => {
                Err(StorageError::OffsetMismatch { stream, expected, actual: Offset::ZERO })
            }
            None => self.stream_or_create(stream, Offset::ZERO, ChainHash::ZERO),
        }
    }

    /// Appends a batch (already checked against the limits) to `h` at `expected`, which must be
    /// its next offset; with `fsync`, returns once the records are durable. A large batch is
    /// prepared ahead (see [`Self::append_prepared_ahead`]), any other prepared here and written.
    /// Returns the chain hash of each record written.
    pub(super) fn append_to(
        &self,
        h: &Stream,
        events: Vec<Bytes>,
        expected: Offset,
        fsync: bool,
    ) -> Result<Vec<ChainHash>> {
        h.check_usable()?;
        let (next, head) = {
            let c = h.core.read();
            (c.next(), c.head)
        };
        if next != expected {
            return Err(StorageError::OffsetMismatch { stream: h.id, expected, actual: next });
        }
        let payload_bytes: usize = events.iter().map(Bytes::len).sum();
        if self.options.prepare_ahead && payload_bytes >= AHEAD_MIN_BYTES && events.len() > 1 {
            return self.append_prepared_ahead(h, events, next, fsync);
        }
        let batch = self.prepare(h.id, next, head, events)?;
        self.commit_to(h, batch, fsync)
    }

    /// A large batch, prepared (compressed, hashed, encoded) part by part on the preparing thread
    /// (see [`crate::prepare_ahead`]) while this thread writes the parts already prepared, all
    /// under one hold of the writer lock.
    fn append_prepared_ahead(
        &self,
        h: &Stream,
        events: Vec<Bytes>,
        expected: Offset,
        fsync: bool,
    ) -> Result<Vec<ChainHash>> {
        let (hashes, epoch) = {
            let _w = h.writer.lock();
            let head = h.head_if_next_is(expected)?;
            let hashes = self.write_ahead_locked(h, events, expected, head)?;
            self.policy_checkpoint_locked(h);
            (hashes, h.sync.epoch())
        };
        self.finish_append(h, expected.plus(hashes.len() as u64), epoch, fsync)?;
        Ok(hashes)
    }

    /// Writes `events` as records `next, next + 1, ...` (the stream's next offset, whose chain
    /// hash before it is `head`), prepared part by part on the preparing thread; when that
    /// thread is busy with another stream's batch, prepared here. Returns each record's chain hash.
    fn write_ahead_locked(
        &self,
        h: &Stream,
        events: Vec<Bytes>,
        next: Offset,
        head: ChainHash,
    ) -> Result<Vec<ChainHash>> {
        let end = next.plus(events.len() as u64);
        let mut hashes = Vec::with_capacity(events.len());
        let events = Arc::new(events);
        let parts = self.prepare_ahead().and_then(|a| {
            a.try_start(BatchToPrepare {
                stream: h.id,
                base: next,
                prev: head,
                events: Arc::clone(&events),
                codec: Arc::clone(&self.codec),
                append_time_ms: now_ms(),
                part_bytes: AHEAD_PART_BYTES,
            })
        });
        let mut written = next;
        if let Some(mut parts) = parts {
            while let Some(mut part) = parts.next_part() {
                debug_assert_eq!(part.base, written, "parts arrive in order");
                part.seal();
                let r = self.write_locked(h, &part);
                h.guard(r)?;
                written = part.next();
                hashes.extend_from_slice(&part.hashes);
            }
        }
        if written < end {
            // Prepared here: the thread was busy, or it died part-way.
            let rest = events[(written.get() - next.get()) as usize..].to_vec();
            let head = h.core.read().head;
            let batch = self.prepare(h.id, written, head, rest)?;
            let r = self.write_locked(h, &batch);
            h.guard(r)?;
            hashes.extend_from_slice(&batch.hashes);
        }
        debug_assert_eq!(next.plus(hashes.len() as u64), end, "a hash for every record written");
        Ok(hashes)
    }

    /// The preparing thread, started on first use; `None` where it cannot help (one CPU) or could
    /// not be started.
    fn prepare_ahead(&self) -> Option<&PrepareAhead> {
        self.prepare_ahead
            .get_or_init(|| {
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                if cpus >= 2 { PrepareAhead::start() } else { None }
            })
            .as_ref()
    }

    /// Stage 1 of an append with this storage's options and codec: see [`PreparedBatch::prepare`].
    pub(crate) fn prepare(
        &self,
        stream: StreamId,
        base: Offset,
        prev_hash: ChainHash,
        events: Vec<Bytes>,
    ) -> Result<PreparedBatch> {
        PreparedBatch::prepare(stream, base, prev_hash, events, &self.options, self.codec.as_ref())
    }

    /// Stage 2 of an append, for [`crate::AppendPipeline`]: writes a prepared batch, which must
    /// start at the stream's next offset (else `OffsetMismatch`). If the stream's head hash is not
    /// the one the batch was prepared from, it is re-hashed first. With `fsync`, returns once the
    /// batch is durable.
    pub(crate) fn commit(&self, batch: PreparedBatch, fsync: bool) -> Result<Offset> {
        let handle = self.stream_to_append(batch.stream, batch.base)?;
        let base = batch.base;
        let hashes = self.commit_to(&handle, batch, fsync)?;
        Ok(base.plus(hashes.len() as u64))
    }

    /// Writes `batch` (which must start at the stream's next offset) under the writer lock, then
    /// waits for it to be durable if asked. Returns the chain hash of each record written.
    fn commit_to(&self, h: &Stream, mut batch: PreparedBatch, fsync: bool) -> Result<Vec<ChainHash>> {
        let (end, epoch) = {
            let _w = h.writer.lock();
            let head = h.head_if_next_is(batch.base)?;
            let next = batch.base;
            if head != batch.prev_hash {
                let events = std::mem::take(&mut batch.events);
                batch = self.prepare(h.id, next, head, events)?;
            }
            let r = self.write_locked(h, &batch);
            h.guard(r)?;
            self.policy_checkpoint_locked(h);
            (batch.next(), h.sync.epoch())
        };
        self.finish_append(h, end, epoch, fsync)?;
        Ok(batch.hashes)
    }

    /// The end of every append: with `fsync`, group commit, then any policy checkpoint now due.
    fn finish_append(&self, h: &Stream, end: Offset, epoch: u64, fsync: bool) -> Result<()> {
        if fsync {
            h.wait_durable(end, epoch)?;
            let deferred = {
                let c = h.core.read();
                !c.pending_checkpoints.is_empty() || c.segments.iter().any(|s| s.index_pending)
            };
            if deferred {
                self.flush_deferred(h)?;
            }
        }
        Ok(())
    }

    /// Writes a batch under the writer lock: one write per segment touched, rotating as needed.
    /// On a stream this process has fsynced (and so probably will again) whose writes are small
    /// (their running mean, this one included, below [`PREALLOCATE_BELOW_BYTES`]), a write that
    /// would grow the active segment first preallocates zeros past it (see
    /// [`Self::preallocate_locked`]); otherwise it just grows it.
    fn write_locked(&self, h: &Stream, batch: &PreparedBatch) -> Result<()> {
        debug_assert!(batch.sealed, "every record's CRC is filled in before it is written");
        h.mark_modified();
        let n = batch.len();
        let max = self.options.max_segment_bytes;
        let preallocate = h.synced.load(std::sync::atomic::Ordering::Relaxed)
            && h.note_write_size(batch.encoded.len() as u64) < PREALLOCATE_BELOW_BYTES;
        let mut i = 0;
        while i < n {
            let (at, count, file, seq, allocated) = {
                let c = h.core.read();
                let a = c.active();
                (a.len, a.positions.len(), a.file.clone(), a.seq, a.allocated)
            };
            let mut len = at;
            let mut j = i;
            while j < n {
                let rl = batch.record_len(j) as u64;
                if count + (j - i) > 0 && len + rl > max {
                    break;
                }
                len += rl;
                j += 1;
            }
            if j > i {
                let bytes = &batch.encoded[batch.byte_range(i, j)];
                let end = at + bytes.len() as u64;
                if preallocate && end > allocated {
                    self.preallocate_locked(h, end)?;
                }
                file.write_all_at(bytes, at).map_err(io_err("write", &h.dir.join(names::segment(seq))))?;
                self.publish(h, batch, i, j, at);
            }
            if j < n {
                self.rotate_locked(h)?;
            }
            i = j;
        }
        Ok(())
    }

    /// Extends the active segment with zeros so that it reaches at least `end` plus a step of
    /// `end` itself, at least [`PREALLOCATION_MIN_BYTES`] and at most [`PREALLOCATION_BYTES`] (at
    /// most `max_segment_bytes`, or `end` if that is more), from its current length or `end`,
    /// whichever is further (the caller writes records up to `end`).
    /// Fsyncs of records written into allocated, zeroed blocks then flush data only, with no
    /// size or extent change: on ext4 that halves the time of an fsync of a small append.
    fn preallocate_locked(&self, h: &Stream, end: u64) -> Result<()> {
        let (file, seq, allocated) = {
            let c = h.core.read();
            let a = c.active();
            (a.file.clone(), a.seq, a.allocated)
        };
        let step = end.clamp(PREALLOCATION_MIN_BYTES, PREALLOCATION_BYTES);
        let to = (end + step).min(self.options.max_segment_bytes).max(end);
        let from = allocated.max(end);
        let mut at = from;
        while at < to {
            let n = (to - at).min(PREALLOCATION_ZEROS.len() as u64);
            file.write_all_at(&PREALLOCATION_ZEROS[..n as usize], at)
                .map_err(io_err("preallocate", &h.dir.join(names::segment(seq))))?;
            at += n;
        }
        let mut c = h.core.write();
        let a = c.active_mut();
        a.allocated = a.allocated.max(to);
        Ok(())
    }

    /// Cuts the zeros preallocated past the active segment's records off the file (when it is
    /// sealed, and on close: a segment at rest holds records only). The caller syncs the file
    /// afterwards; returns whether there was anything to cut.
    fn trim_preallocation_locked(&self, h: &Stream) -> Result<bool> {
        let (file, name, len, allocated) = {
            let c = h.core.read();
            let a = c.active();
            (a.file.clone(), a.name(), a.len, a.allocated)
        };
        if allocated == len {
            return Ok(false);
        }
        file.set_len(len).map_err(io_err("truncate", &h.dir.join(name)))?;
        h.core.write().active_mut().allocated = len;
        Ok(true)
    }

    /// Makes records `[i, j)` of `batch`, written at byte `at` of the active segment, visible.
    fn publish(&self, h: &Stream, batch: &PreparedBatch, i: usize, j: usize, at: u64) {
        let first = batch.starts[i];
        {
            let mut c = h.core.write();
            let a = c.active_mut();
            debug_assert_eq!(a.end(), batch.base.plus(i as u64), "records are published in order");
            a.positions.extend(batch.starts[i..j].iter().map(|s| at + (s - first) as u64));
            a.len = at + (batch.starts[j] - first) as u64;
            a.allocated = a.allocated.max(a.len);
            debug_assert!(a.allocated >= a.len, "the file holds every record");
            a.last_append_ms = batch.append_time_ms;
            c.head = batch.hashes[j - 1];
        }
        // Sparse table: the hash before every ANCHOR_INTERVAL-th offset in (base + i, base + j].
        let base = batch.base.get();
        let mut k = (base + i as u64 + 1).next_multiple_of(ANCHOR_INTERVAL);
        if k <= base + j as u64 {
            let mut anchors = h.anchors.lock();
            while k <= base + j as u64 {
                anchors.insert(Offset::new(k), batch.hashes[(k - base - 1) as usize]);
                k += ANCHOR_INTERVAL;
            }
        }
    }

    /// Seals the active segment (fsync, index file) and starts a new one at the next offset.
    pub(crate) fn rotate_locked(&self, h: &Stream) -> Result<()> {
        let (file, seq, next, head, name, sealed_len) = {
            let c = h.core.read();
            let a = c.active();
            (a.file.clone(), a.seq, c.next(), c.head, a.name(), a.len)
        };
        // The fsync makes the records and the trimmed size durable before the next segment exists.
        self.trim_preallocation_locked(h)?;
        file.sync_data().map_err(io_err("fsync", &h.dir.join(name)))?;
        h.sync.note_durable(next);
        h.cache.after_sync(h.id, &file, seq, sealed_len, true);
        let seq = seq.checked_add(1).ok_or_else(|| super::maintenance::seq_exhausted(h))?;
        let segment = self.create_segment(h.id, &h.dir, seq, next, head, 0)?;
        let pending = {
            let mut c = h.core.write();
            c.active_mut().index_pending = true;
            c.segments.push(segment);
            c.segments.iter().filter(|s| s.index_pending).count()
        };
        if pending >= MAX_PENDING_INDEXES {
            self.write_pending_indexes_locked(h)?;
        }
        Ok(())
    }

    /// Writes the index files of sealed segments that still lack one.
    fn write_pending_indexes_locked(&self, h: &Stream) -> Result<()> {
        let pending: Vec<u64> = h.core.read().segments.iter().filter(|s| s.index_pending).map(|s| s.seq).collect();
        for seq in pending {
            self.write_index_locked(h, Some(seq))?;
            if let Some(s) = h.core.write().segments.iter_mut().find(|s| s.seq == seq) {
                s.index_pending = false;
            }
        }
        Ok(())
    }

    /// Writes the index file of segment `seq` (the active one if `None`) as it is now. The
    /// segment's bytes must already be durable.
    pub(crate) fn write_index_locked(&self, h: &Stream, seq: Option<u64>) -> Result<()> {
        let (file_bytes, seq, covered) = {
            let c = h.core.read();
            let i = seq.and_then(|q| c.segments.iter().position(|s| s.seq == q)).unwrap_or(c.segments.len() - 1);
            let s = &c.segments[i];
            let last_hash = c.segments.get(i + 1).map_or(c.head, |n| n.base_prev_hash);
            let anchors: Vec<(Offset, ChainHash)> =
                h.anchors.lock().range(s.base.plus(1)..=s.end()).map(|(k, v)| (*k, *v)).collect();
            let f = IndexFile {
                base: s.base,
                segment_len: s.len,
                last_append_ms: s.last_append_ms,
                base_prev_hash: s.base_prev_hash,
                last_hash,
                positions: s.positions.clone(),
                anchors,
            };
            (f.encode(h.id), s.seq, s.len)
        };
        self.write_atomic(&h.dir, &names::index(seq), &file_bytes)?;
        let mut c = h.core.write();
        if let Some(s) = c.segments.iter_mut().find(|s| s.seq == seq) {
            s.idx_bytes = file_bytes.len() as u64;
            s.indexed_len = covered;
        }
        Ok(())
    }

    /// On close: trims the active segment's preallocated zeros, and writes its index file if
    /// the segment holds records the index does not describe yet (the next open scans nothing).
    pub(crate) fn write_active_index(&self, h: &Stream) -> Result<()> {
        let _w = h.writer.lock();
        h.check_usable()?;
        let r = self.trim_preallocation_locked(h).and_then(|trimmed| {
            let (file, name) = {
                let c = h.core.read();
                (c.active().file.clone(), c.active().name())
            };
            if trimmed { file.sync_data().map_err(io_err("fsync", &h.dir.join(name))) } else { Ok(()) }
        });
        h.guard(r)?;
        let needed = {
            let c = h.core.read();
            let a = c.active();
            !a.positions.is_empty() && a.indexed_len != a.len
        };
        if needed {
            let r = self.write_index_locked(h, None);
            h.guard(r)?;
        }
        Ok(())
    }

    /// Makes every record of the stream durable, then writes its pending policy checkpoints.
    pub(crate) fn sync_stream(&self, h: &Stream) -> Result<()> {
        h.sync_records()?;
        self.flush_deferred(h)
    }

    /// Writes the checkpoint policy's checkpoint if it is due (held in memory until the records
    /// it covers are durable, then written by `flush_deferred`).
    fn policy_checkpoint_locked(&self, h: &Stream) {
        let due = {
            let c = h.core.read();
            should_create_checkpoint(
                self.options.checkpoint_policy,
                c.checkpoints.latest().map(|cp| cp.offset),
                c.next(),
            )
        };
        if due {
            // The writer lock is held: nothing moved since the check.
            let mut c = h.core.write();
            let next = c.next();
            let cp = Checkpoint::new(next, c.head, Bytes::new());
            c.checkpoints.insert(cp);
            c.pending_checkpoints.insert(next);
        }
    }

    /// Writes what was deferred off the append path: index files of sealed segments, and
    /// policy checkpoints whose records are durable.
    pub(crate) fn flush_deferred(&self, h: &Stream) -> Result<()> {
        let _w = h.writer.lock();
        h.check_usable()?;
        let r = self.write_pending_indexes_locked(h);
        h.guard(r)?;
        let durable = h.sync.durable();
        let due: Vec<Checkpoint> = {
            let c = h.core.read();
            c.pending_checkpoints.range(..=durable).filter_map(|o| c.checkpoints.get(*o).cloned()).collect()
        };
        for cp in due {
            let r = self.write_atomic(&h.dir, &names::checkpoint(cp.offset.get()), &serialize_checkpoint_payload(&cp));
            h.guard(r)?;
            h.core.write().pending_checkpoints.remove(&cp.offset);
        }
        Ok(())
    }
}

impl Stream {
    /// Group commit: returns once every record below `end` is durable. Whoever finds no fsync
    /// running becomes the leader and fsyncs for everyone written before it starts; the others
    /// wait (see [`super::group_commit`]).
    pub(crate) fn wait_durable(&self, end: Offset, epoch: u64) -> Result<()> {
        if !self.synced.load(std::sync::atomic::Ordering::Relaxed) {
            self.synced.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.sync.wait(
            end,
            epoch,
            || self.check_usable(),
            || {
                let (target, file, name, seq, len) = {
                    let c = self.core.read();
                    let a = c.active();
                    (c.next(), a.file.clone(), a.name(), a.seq, a.len)
                };
                let r = file.sync_data().map_err(io_err("fsync", &self.dir.join(name)));
                match &r {
                    Ok(()) => self.cache.after_sync(self.id, &file, seq, len, false),
                    Err(e) => self.fail(e),
                }
                r.map(|()| target)
            },
        )
    }

    /// Makes every record written to the stream so far durable (the first half of
    /// `Storage::sync_stream`; the second, its deferred writes, needs the storage).
    pub(crate) fn sync_records(&self) -> Result<()> {
        self.check_usable()?;
        let (end, epoch) = {
            let _w = self.writer.lock();
            (self.core.read().next(), self.sync.epoch())
        };
        self.wait_durable(end, epoch)
    }
}
