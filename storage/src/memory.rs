//! [`MemoryStorage`]: the in-memory backend, with the same semantics, errors and chain hashes as
//! the disk [`crate::Storage`]. It models segments with the same byte accounting (uncompressed), so
//! rotation and compaction move the log start exactly as the disk backend does with `CodecKind::None`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::backend::{StorageBackend, absent, check_verify_range};
use crate::chain::{anchor_mismatch, chain_hash};
use crate::checkpoint::{Checkpoint, CheckpointIndex, check_data_len, check_installable, should_create_checkpoint};
use crate::clock::now_ms;
use crate::compaction::{CompactionConfig, CompactionResult, SegmentSpan, plan};
use crate::error::{CorruptionReason, Result, StorageError};
use crate::format;
use crate::options::StorageOptions;
use crate::scrub::{
    Damage, GoodSuffix, RepairOutcome, RepairRejection, ScrubReport, SegmentInfo, check_repair_chain, repair_target,
};
use crate::types::{ChainHash, ChainVerification, Offset, Record, StreamId};

/// One stored record.
#[derive(Debug, Clone)]
struct MemRecord {
    prev_hash: ChainHash,
    hash: ChainHash,
    payload: Bytes,
}

/// A modelled segment: `[base, end)` of the stream.
#[derive(Debug, Clone)]
struct MemSegment {
    base: Offset,
    end: Offset,
    bytes: u64,
    last_append_ms: u64,
}

#[derive(Debug)]
struct MemStream {
    log_start: Offset,
    /// Records from `log_start`, in order.
    records: VecDeque<MemRecord>,
    /// Hash of the record before `log_start` (the anchor).
    anchor: ChainHash,
    segments: Vec<MemSegment>,
    checkpoints: CheckpointIndex,
}

impl MemStream {
    /// The segments as the shared retention decision sees them.
    fn spans(&self) -> Vec<SegmentSpan> {
        self.segments
            .iter()
            .map(|s| SegmentSpan { base: s.base, end: s.end, bytes: s.bytes, last_append_ms: s.last_append_ms })
            .collect()
    }

    fn empty_at(start: Offset, anchor: ChainHash) -> Self {
        Self {
            log_start: start,
            records: VecDeque::new(),
            anchor,
            segments: vec![MemSegment {
                base: start,
                end: start,
                bytes: format::segment::HEADER_LEN as u64,
                last_append_ms: now_ms(),
            }],
            checkpoints: CheckpointIndex::new(),
        }
    }

    fn next(&self) -> Offset {
        self.log_start.plus(self.records.len() as u64)
    }

    fn head(&self) -> ChainHash {
        self.records.back().map_or(self.anchor, |r| r.hash)
    }

    fn get(&self, offset: Offset) -> Option<&MemRecord> {
        let i = offset.get().checked_sub(self.log_start.get())?;
        self.records.get(i as usize)
    }

    /// Hash of record `offset - 1`, for any `offset` in `[log_start, next]`.
    fn hash_before(&self, offset: Offset) -> ChainHash {
        if offset == self.log_start {
            self.anchor
        } else {
            self.get(Offset::new(offset.get() - 1)).expect("in range").hash
        }
    }

    fn range_error(&self, stream: StreamId, requested: Offset) -> StorageError {
        StorageError::OffsetOutOfRange { stream, requested, start: self.log_start, end: self.next() }
    }
}

/// A pure in-memory [`StorageBackend`]: nothing survives the process, everything else behaves as
/// the disk backend does.
#[derive(Debug)]
pub struct MemoryStorage {
    options: StorageOptions,
    streams: RwLock<BTreeMap<StreamId, std::sync::Arc<Mutex<MemStream>>>>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty storage with default options.
    pub fn new() -> Self {
        Self { options: StorageOptions::default(), streams: RwLock::new(BTreeMap::new()) }
    }

    /// An empty storage with `options`.
    pub fn with_options(options: StorageOptions) -> Result<Self> {
        options.validate()?;
        Ok(Self { options, streams: RwLock::new(BTreeMap::new()) })
    }

    /// Simulates a bit flip on the medium, for tests of scrubbing and repair: flips one bit of
    /// the stored payload of the record at `offset` (an empty payload gets one byte), leaving its
    /// stored hashes as they were, so reads and scrubs find the record damaged. Returns false if
    /// the stream does not hold `offset`.
    pub fn damage_record(&self, stream: StreamId, offset: Offset) -> bool {
        let Some(handle) = self.stream(stream) else { return false };
        let mut s = handle.lock();
        let Some(i) = offset.get().checked_sub(s.log_start.get()) else { return false };
        let Some(r) = s.records.get_mut(i as usize) else { return false };
        let mut bytes = r.payload.to_vec();
        let mid = bytes.len() / 2;
        match bytes.get_mut(mid) {
            Some(b) => *b ^= 0x10,
            None => bytes.push(0x10),
        }
        r.payload = Bytes::from(bytes);
        true
    }

    fn stream(&self, id: StreamId) -> Option<std::sync::Arc<Mutex<MemStream>>> {
        self.streams.read().get(&id).cloned()
    }

    fn stream_or_create(&self, id: StreamId) -> std::sync::Arc<Mutex<MemStream>> {
        if let Some(s) = self.stream(id) {
            return s;
        }
        self.streams
            .write()
            .entry(id)
            .or_insert_with(|| std::sync::Arc::new(Mutex::new(MemStream::empty_at(Offset::ZERO, ChainHash::ZERO))))
            .clone()
    }

    /// Appends `events` at the stream's next offset; returns the new next offset.
    /// Appends `events` (checked) at the stream's next offset; returns each record's chain hash.
    fn append_locked(&self, s: &mut MemStream, stream: StreamId, events: Vec<Bytes>) -> Result<Vec<ChainHash>> {
        let now = now_ms();
        let mut prev = s.head();
        let mut hashes = Vec::with_capacity(events.len());
        for payload in events {
            let offset = s.next();
            let hash = chain_hash(offset, &prev, &payload);
            let len = format::record::encoded_len(payload.len()) as u64;
            let max = self.options.max_segment_bytes;
            let roll = {
                let active = s.segments.last().expect("a stream always has an active segment");
                active.end > active.base && active.bytes + len > max
            };
            if roll {
                s.segments.push(MemSegment {
                    base: offset,
                    end: offset,
                    bytes: format::segment::HEADER_LEN as u64,
                    last_append_ms: now,
                });
            }
            let active = s.segments.last_mut().expect("active segment");
            active.end = offset.plus(1);
            active.bytes += len;
            active.last_append_ms = now;
            s.records.push_back(MemRecord { prev_hash: prev, hash, payload });
            hashes.push(hash);
            prev = hash;
        }
        let next = s.next();
        if should_create_checkpoint(self.options.checkpoint_policy, s.checkpoints.latest().map(|c| c.offset), next) {
            Self::checkpoint_locked(s, stream, next, Bytes::new())?;
        }
        Ok(hashes)
    }

    fn checkpoint_locked(s: &mut MemStream, stream: StreamId, offset: Offset, data: Bytes) -> Result<Checkpoint> {
        if offset < s.log_start || offset > s.next() {
            return Err(StorageError::InvalidCheckpoint {
                stream,
                offset,
                reason: format!("offset must lie in [{}, {}]", s.log_start, s.next()),
            });
        }
        check_data_len(stream, offset, data.len())?;
        let cp = Checkpoint::new(offset, s.hash_before(offset), data);
        s.checkpoints.insert(cp.clone());
        Ok(cp)
    }
}

impl StorageBackend for MemoryStorage {
    fn append_batch_hashed(
        &self,
        stream: StreamId,
        events: Vec<Bytes>,
        expected_offset: Offset,
        _fsync: bool,
    ) -> Result<Vec<ChainHash>> {
        self.options.check_batch(stream, &events)?;
        // A rejected append must not bring the stream into existence.
        if expected_offset != Offset::ZERO && self.stream(stream).is_none() {
            return Err(StorageError::OffsetMismatch { stream, expected: expected_offset, actual: Offset::ZERO });
        }
        let handle = self.stream_or_create(stream);
        let mut s = handle.lock();
        let actual = s.next();
        if actual != expected_offset {
            return Err(StorageError::OffsetMismatch { stream, expected: expected_offset, actual });
        }
        self.append_locked(&mut s, stream, events)
    }

    fn read_range(&self, stream: StreamId, from: Offset, end: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let Some(handle) = self.stream(stream) else {
            return Ok(Vec::new());
        };
        let s = handle.lock();
        if from < s.log_start {
            return Err(s.range_error(stream, from));
        }
        let end = end.min(s.next());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut offset = from;
        while offset < end {
            let r = s.get(offset).expect("in range");
            if !out.is_empty() && bytes + r.payload.len() > max_bytes {
                break;
            }
            let expected_prev = s.hash_before(offset);
            verify_record(stream, offset, &expected_prev, r)?;
            bytes += r.payload.len();
            out.push(Record { offset, prev_hash: r.prev_hash, hash: r.hash, payload: r.payload.clone() });
            offset = offset.plus(1);
        }
        Ok(out)
    }

    fn verify_chain(&self, stream: StreamId) -> Result<ChainVerification> {
        let Some(handle) = self.stream(stream) else {
            return absent::verify(stream, Offset::ZERO, Offset::ZERO);
        };
        let s = handle.lock();
        verify_span(stream, &s, s.log_start, s.next())
    }

    fn verify_range(&self, stream: StreamId, from: Offset, to: Offset) -> Result<ChainVerification> {
        let Some(handle) = self.stream(stream) else {
            return absent::verify(stream, from, to);
        };
        let s = handle.lock();
        check_verify_range(stream, from, to, s.log_start, s.next())?;
        verify_span(stream, &s, from, to)
    }

    fn chain_hash_at(&self, stream: StreamId, offset: Offset) -> Result<ChainHash> {
        let handle = self.stream(stream).ok_or_else(|| absent::out_of_range(stream, offset))?;
        let s = handle.lock();
        if let Some(r) = s.get(offset) {
            return Ok(r.hash);
        }
        if s.log_start > Offset::ZERO && offset.plus(1) == s.log_start {
            return Ok(s.anchor);
        }
        Err(s.range_error(stream, offset))
    }

    fn latest_chain_hash(&self, stream: StreamId) -> Result<ChainHash> {
        Ok(self.stream(stream).map_or(ChainHash::ZERO, |s| s.lock().head()))
    }

    fn next_offset(&self, stream: StreamId) -> Result<Offset> {
        Ok(self.stream(stream).map_or(Offset::ZERO, |s| s.lock().next()))
    }

    fn log_start(&self, stream: StreamId) -> Result<Offset> {
        Ok(self.stream(stream).map_or(Offset::ZERO, |s| s.lock().log_start))
    }

    fn append_fits_active_segment(&self, stream: StreamId, _bytes: u64) -> bool {
        // No files: an append is a copy into memory.
        self.stream(stream).is_some()
    }

    fn streams(&self) -> Vec<StreamId> {
        self.streams.read().keys().copied().collect()
    }

    fn truncate_from(&self, stream: StreamId, offset: Offset) -> Result<()> {
        let Some(handle) = self.stream(stream) else {
            return Ok(());
        };
        let mut s = handle.lock();
        if offset < s.log_start {
            return Err(s.range_error(stream, offset));
        }
        if offset >= s.next() {
            return Ok(());
        }
        let keep = (offset.get() - s.log_start.get()) as usize;
        s.records.truncate(keep);
        // Segments starting at or after the cut go (all but one if the cut is at the first
        // segment's base: an emptied first segment stays, as the active one).
        let first_base = s.segments[0].base;
        s.segments.retain(|seg| seg.base < offset || seg.base == first_base);
        let sizes: Vec<u64> = {
            let last = s.segments.last().expect("a segment");
            let (base, _) = (last.base, last.end);
            (base.get()..offset.get())
                .map(|o| s.get(Offset::new(o)).map_or(0, |r| format::record::encoded_len(r.payload.len()) as u64))
                .collect()
        };
        let last = s.segments.last_mut().expect("a segment");
        last.end = offset;
        last.bytes = format::segment::HEADER_LEN as u64 + sizes.iter().sum::<u64>();
        s.checkpoints.remove_above(offset);
        Ok(())
    }

    fn create_checkpoint(&self, stream: StreamId) -> Result<Checkpoint> {
        let handle = self.stream_or_create(stream);
        let mut s = handle.lock();
        let next = s.next();
        Self::checkpoint_locked(&mut s, stream, next, Bytes::new())
    }

    fn create_checkpoint_at(&self, stream: StreamId, offset: Offset, data: Bytes) -> Result<Checkpoint> {
        let handle = self.stream_or_create(stream);
        let mut s = handle.lock();
        Self::checkpoint_locked(&mut s, stream, offset, data)
    }

    fn latest_checkpoint(&self, stream: StreamId) -> Result<Option<Checkpoint>> {
        Ok(self.stream(stream).and_then(|s| s.lock().checkpoints.latest().cloned()))
    }

    fn checkpoint_at_or_below(&self, stream: StreamId, offset: Offset) -> Result<Option<Checkpoint>> {
        Ok(self.stream(stream).and_then(|s| s.lock().checkpoints.at_or_below(offset).cloned()))
    }

    fn install_checkpoint(&self, stream: StreamId, cp: Checkpoint) -> Result<()> {
        check_installable(stream, &cp)?;
        let handle = self.stream_or_create(stream);
        let mut s = handle.lock();
        let matches = cp.offset >= s.log_start && cp.offset <= s.next() && s.hash_before(cp.offset) == cp.chain_hash;
        if !matches {
            *s = MemStream::empty_at(cp.offset, cp.chain_hash);
        }
        s.checkpoints.insert(cp);
        Ok(())
    }

    fn compaction_target(&self, stream: StreamId, config: &CompactionConfig) -> Result<Offset> {
        let Some(handle) = self.stream(stream) else {
            return Ok(Offset::ZERO);
        };
        let s = handle.lock();
        Ok(plan(config, now_ms(), &s.spans()).new_log_start)
    }

    fn compact(&self, stream: StreamId, config: &CompactionConfig) -> Result<CompactionResult> {
        let Some(handle) = self.stream(stream) else {
            return Ok(CompactionResult::default());
        };
        let mut s = handle.lock();
        let result = plan(config, now_ms(), &s.spans());
        if result.segments_removed == 0 {
            return Ok(result);
        }
        let (removed, new_start) = (result.segments_removed, result.new_log_start);
        let anchor = s.hash_before(new_start);
        if s.checkpoints.get(new_start).is_none() {
            Self::checkpoint_locked(&mut s, stream, new_start, Bytes::new())?;
        }
        let drop = (new_start.get() - s.log_start.get()) as usize;
        s.records.drain(..drop);
        s.segments.drain(..removed);
        s.log_start = new_start;
        s.anchor = anchor;
        s.checkpoints.remove_below(new_start);
        Ok(result)
    }

    fn sync(&self, _stream: StreamId) -> Result<()> {
        Ok(())
    }

    fn delete_stream(&self, stream: StreamId) -> Result<()> {
        self.streams.write().remove(&stream);
        Ok(())
    }

    /// Memory streams never fail, so there is never anything to reopen.
    fn reopen_stream(&self, _stream: StreamId) -> Result<bool> {
        Ok(false)
    }

    fn stream_failure(&self, _stream: StreamId) -> Option<String> {
        None
    }

    fn stream_bytes(&self, stream: StreamId) -> Result<u64> {
        Ok(self.stream(stream).map_or(0, |s| s.lock().segments.iter().map(|seg| seg.bytes).sum()))
    }

    fn segments(&self, stream: StreamId) -> Result<Vec<SegmentInfo>> {
        let Some(handle) = self.stream(stream) else { return Ok(Vec::new()) };
        let s = handle.lock();
        let n = s.segments.len();
        Ok(s.segments
            .iter()
            .enumerate()
            .map(|(i, seg)| SegmentInfo {
                file: "memory".into(),
                base: seg.base,
                end: if i + 1 == n { s.next() } else { seg.end },
                sealed: i + 1 < n,
                bytes: seg.bytes,
            })
            .collect())
    }

    fn scrub_segment(&self, stream: StreamId, base: Offset) -> Result<ScrubReport> {
        let handle = self.stream(stream).ok_or(StorageError::UnknownSegment { stream, base })?;
        let s = handle.lock();
        let (i, seg) = mem_segment(&s, stream, base)?;
        let sealed = i + 1 < s.segments.len();
        let end = if sealed { seg.end } else { s.next() };
        let pass = mem_pass(&s, stream, seg.base, end);
        Ok(ScrubReport { stream, file: "memory".into(), base, end, sealed, bytes: seg.bytes, damage: pass.damage })
    }

    fn repair_range(&self, stream: StreamId, from: Offset, records: Vec<Record>) -> Result<RepairOutcome> {
        let handle = repair_target(stream, from, &records, self.stream(stream))?;
        let to = from.plus(records.len() as u64);
        let reject = |reason| StorageError::RepairRejected { stream, from, to, reason };
        let mut s = handle.lock();
        let n = s.segments.len();
        let seg_end = |i: usize| if i + 1 == n { s.next() } else { s.segments[i].end };
        let i = (0..n).find(|&i| s.segments[i].base <= from && from < seg_end(i));
        let Some(i) = i.filter(|&i| to <= seg_end(i)) else {
            return Err(reject(RepairRejection::OutsideSegment { from, to }));
        };
        let (base, end) = (s.segments[i].base, seg_end(i));
        let pass = mem_pass(&s, stream, base, end);
        let (damaged_from, damaged_to) = pass.damage.as_ref().map_or((end, end), |d| (d.first_bad, d.good_from));
        let untrusted = |which| reject(RepairRejection::UntrustedBoundary { which, damaged_from, damaged_to });
        if pass.damage.is_some() && from > damaged_from {
            return Err(untrusted("before"));
        }
        if pass.damage.is_some() && to < damaged_to {
            return Err(untrusted("at the end of"));
        }
        let before = s.hash_before(from);
        let after = s.hash_before(to);
        check_repair_chain(from, &records, before, after, self.options.max_record_bytes).map_err(reject)?;
        for r in records {
            let k = (r.offset.get() - s.log_start.get()) as usize;
            s.records[k] = MemRecord { prev_hash: r.prev_hash, hash: r.hash, payload: r.payload };
        }
        Ok(RepairOutcome { stream, file: "memory".into(), range: from..to })
    }
}

/// The segment starting at `base`, with its index.
fn mem_segment(s: &MemStream, stream: StreamId, base: Offset) -> Result<(usize, MemSegment)> {
    s.segments
        .iter()
        .position(|seg| seg.base == base)
        .map(|i| (i, s.segments[i].clone()))
        .ok_or(StorageError::UnknownSegment { stream, base })
}

struct MemPass {
    damage: Option<Damage>,
}

/// One scrub pass over records `[base, end)`, as the disk backend's: a record whose payload no
/// longer hashes to its stored hash stands for one whose CRC fails; the stored hash of the record
/// before `base` and of record `end - 1` (the next segment's link) are the known-good ends.
fn mem_pass(s: &MemStream, stream: StreamId, base: Offset, end: Offset) -> MemPass {
    let end_hash = s.hash_before(end);
    let mut expected_prev = s.hash_before(base);
    let mut first_bad: Option<(Offset, CorruptionReason)> = None;
    let mut suffix = GoodSuffix::default();
    let mut k = base;
    while k < end {
        let r = s.get(k).expect("in range");
        let computed = chain_hash(k, &r.prev_hash, &r.payload);
        if computed != r.hash {
            first_bad.get_or_insert((k, CorruptionReason::ChainMismatch { expected: r.hash, found: computed }));
            suffix.bad();
        } else {
            if first_bad.is_none() {
                if r.prev_hash != expected_prev {
                    let reason = CorruptionReason::ChainMismatch { expected: r.prev_hash, found: expected_prev };
                    first_bad = Some((if k > base { Offset::new(k.get() - 1) } else { k }, reason));
                } else {
                    expected_prev = computed;
                }
            }
            suffix.good(k, r.prev_hash, computed);
        }
        k = k.plus(1);
    }
    let damage = first_bad.map(|(first, reason)| {
        let (good_from, _) = suffix.finish(end, end_hash);
        let good_from = if good_from <= first { end } else { good_from };
        Damage { stream, file: "memory".into(), position: first.get(), first_bad: first, good_from, reason }
    });
    MemPass { damage }
}

/// Verifies records `[from, to)` (within the stream's bounds) from the hash before `from`: the
/// anchor (checked against the checkpoint at the log start), or record `from - 1`'s hash, itself
/// recomputed from that record.
fn verify_span(stream: StreamId, s: &MemStream, from: Offset, to: Offset) -> Result<ChainVerification> {
    debug_assert!(s.log_start <= from && from <= to && to <= s.next());
    let mut prev = if from > s.log_start {
        let before = Offset::new(from.get() - 1);
        let r = s.get(before).expect("in range");
        verify_record(stream, before, &r.prev_hash, r)?;
        r.hash
    } else {
        if let Some(reason) = anchor_mismatch(s.log_start, s.anchor, &s.checkpoints) {
            return Err(StorageError::Corruption {
                stream,
                file: "memory".into(),
                position: 0,
                offset: Some(s.log_start),
                reason,
            });
        }
        s.anchor
    };
    let mut offset = from;
    while offset < to {
        let r = s.get(offset).expect("in range");
        verify_record(stream, offset, &prev, r)?;
        prev = r.hash;
        offset = offset.plus(1);
    }
    Ok(ChainVerification { stream, from, to, records: to.get() - from.get(), head: prev })
}

fn verify_record(stream: StreamId, offset: Offset, expected_prev: &ChainHash, r: &MemRecord) -> Result<()> {
    let corrupt = |reason| StorageError::Corruption {
        stream,
        file: "memory".into(),
        position: offset.get(),
        offset: Some(offset),
        reason,
    };
    if r.prev_hash != *expected_prev {
        return Err(corrupt(CorruptionReason::ChainMismatch { expected: *expected_prev, found: r.prev_hash }));
    }
    let computed = chain_hash(offset, &r.prev_hash, &r.payload);
    if computed != r.hash {
        return Err(corrupt(CorruptionReason::ChainMismatch { expected: r.hash, found: computed }));
    }
    Ok(())
}
