//! The partition state machine, pure: no Raft, no I/O.
//!
//! The log is the data: one producer batch is one Raft entry, whose body is a record batch
//! ([`shale_storage::record_batch`]). Records have dense offsets of their own, independent of the
//! Raft log index: record `i` of a visible batch has offset `base_offset + i`, and the next visible
//! batch starts where the last one ended. Raft's own entries (blank, membership) and hidden
//! batches consume no offsets.
//!
//! The machine keeps only what the log alone cannot answer quickly: the next record offset, the
//! producer dedup table, the set of entries consumers must never see, and a sparse index from
//! record offsets to log indexes, each point also naming the largest record timestamp before it
//! (so "the first record at or after a time" is a search over the points, then a scan of at most
//! [`INDEX_EVERY`] batch headers). Apply reads only the batch header
//! ([`shale_storage::record_batch::decode_header`]), never the records. Everything is decided at
//! apply time from the state and the entry's bytes, so every replica decides the same.
//!
//! A batch is **visible** iff its header decodes, its `base_offset` is the machine's next offset
//! (the leader assigned it; a batch numbered by a stale prediction is refused as
//! [`ApplyOutcome::OffsetMismatch`]) and, for an idempotent producer the partition knows, its
//! `base_sequence` is the producer's last sequence + 1 (at or below is a
//! [`ApplyOutcome::Duplicate`], naming the original batch while it is in the producer's window;
//! above is [`ApplyOutcome::OutOfSequence`]). A producer the partition does not know (new, or
//! evicted from the table) may start at any sequence. Every other batch is hidden.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use shale_storage::record_batch::{self, BatchHeader};

use crate::cluster::api::ClusterError;
use crate::cluster::layout::{Reader, Writer, apply_outcome as outcome_layout, partition_snapshot as snap};

/// Batches remembered per producer (a retry of an older batch is refused, not rewritten). Kafka
/// keeps 5; this covers a producer with up to 64 batches in flight.
pub const BATCH_WINDOW: usize = 64;
/// Producers remembered per partition; past it the one that wrote longest ago is forgotten.
pub const MAX_PRODUCERS: usize = 65_536;
/// Every this many visible batches (counting from the first), the sparse offset index records the
/// batch's base offset and log index. A fetch by offset starts at the closest point below and
/// scans at most this many visible batches (plus hidden and Raft entries between them).
pub const INDEX_EVERY: u64 = 32;
/// Hidden entries / index points a snapshot may list. Apply cannot refuse an entry that is already
/// in the log, so this is the count field's own range; allocation is still bounded by the
/// snapshot's length.
const MAX_LISTED: usize = u32::MAX as usize;

/// One point of the sparse index: a visible batch, and the largest record timestamp of every
/// visible batch before it (the running maximum, so the points are ordered by it too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexPoint {
    /// The batch's base offset.
    base_offset: u64,
    /// The log index of its entry.
    entry_index: u64,
    /// The largest record timestamp of the visible batches before it (0 if none, or if they were
    /// applied before the machine kept timestamps: see [`PartitionMachine::untimed_below`]).
    max_timestamp_before: u64,
}

/// Where a visible batch was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPosition {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Its number of records.
    pub record_count: u32,
    /// The Raft log index of its entry.
    pub entry_index: u64,
}

/// What applying one entry decided. Encoded as the entry's Raft response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The batch is visible: its records have offsets `base_offset..base_offset + record_count`.
    Appended {
        /// Offset of its first record.
        base_offset: u64,
        /// Its number of records.
        record_count: u32,
    },
    /// The producer already wrote these sequences: the entry is hidden from consumers.
    Duplicate {
        /// The batch that wrote them, if it is still in the producer's window and has the same
        /// first sequence and record count.
        original: Option<BatchPosition>,
        /// The producer's last written sequence.
        last_sequence: u64,
    },
    /// The payload is not a record batch this build can read: hidden from consumers.
    Invalid,
    /// The producer's batch skips sequences (an earlier batch of the producer is not written):
    /// hidden from consumers; the producer sends it again after the missing ones.
    OutOfSequence {
        /// The sequence the partition expects next from the producer.
        expected: u64,
    },
    /// The batch's base offset is not the partition's next offset (the leader numbered it from a
    /// stale prediction): hidden from consumers; the leader resynchronises and proposes it again.
    OffsetMismatch {
        /// The partition's next offset when the batch applied.
        expected: u64,
    },
}

impl ApplyOutcome {
    /// Encodes the outcome (a Raft response, never stored): see [`outcome_layout`].
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::with_capacity(outcome_layout::LEN);
        let none = u64::MAX;
        match *self {
            ApplyOutcome::Appended { base_offset, record_count } => {
                w.u8(outcome_layout::KIND_APPENDED).u64(base_offset).u64(u64::from(record_count)).u64(0).u64(0)
            }
            ApplyOutcome::Duplicate { original, last_sequence } => {
                let (a, b, c) =
                    original.map_or((none, 0, none), |o| (o.base_offset, u64::from(o.record_count), o.entry_index));
                w.u8(outcome_layout::KIND_DUPLICATE).u64(a).u64(b).u64(c).u64(last_sequence)
            }
            ApplyOutcome::Invalid => w.u8(outcome_layout::KIND_INVALID).u64(0).u64(0).u64(0).u64(0),
            ApplyOutcome::OutOfSequence { expected } => {
                w.u8(outcome_layout::KIND_OUT_OF_SEQUENCE).u64(expected).u64(0).u64(0).u64(0)
            }
            ApplyOutcome::OffsetMismatch { expected } => {
                w.u8(outcome_layout::KIND_OFFSET_MISMATCH).u64(expected).u64(0).u64(0).u64(0)
            }
        };
        debug_assert_eq!(w.len(), outcome_layout::LEN);
        Bytes::from(w.finish())
    }

    /// Decodes [`ApplyOutcome::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::new("partition apply outcome", bytes);
        let kind = r.u8()?;
        let (a, b, c, d) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        r.finish()?;
        let count = |v: u64| {
            u32::try_from(v).map_err(|_| ClusterError::Decode {
                what: "partition apply outcome",
                reason: format!("record count {v}"),
            })
        };
        match kind {
            outcome_layout::KIND_APPENDED => Ok(ApplyOutcome::Appended { base_offset: a, record_count: count(b)? }),
            outcome_layout::KIND_DUPLICATE => {
                let original = if a == u64::MAX {
                    None
                } else {
                    Some(BatchPosition { base_offset: a, record_count: count(b)?, entry_index: c })
                };
                Ok(ApplyOutcome::Duplicate { original, last_sequence: d })
            }
            outcome_layout::KIND_INVALID => Ok(ApplyOutcome::Invalid),
            outcome_layout::KIND_OUT_OF_SEQUENCE => Ok(ApplyOutcome::OutOfSequence { expected: a }),
            outcome_layout::KIND_OFFSET_MISMATCH => Ok(ApplyOutcome::OffsetMismatch { expected: a }),
            other => Err(ClusterError::Decode { what: "partition apply outcome", reason: format!("kind {other}") }),
        }
    }

    /// Whether the outcome made the batch visible.
    pub fn is_appended(&self) -> bool {
        matches!(self, ApplyOutcome::Appended { .. })
    }
}

/// One batch in a producer's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WrittenBatch {
    base_sequence: u64,
    position: BatchPosition,
}

/// What the partition remembers of one idempotent producer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProducerEntry {
    /// Highest sequence written.
    last_sequence: u64,
    /// Index of the entry that wrote it (orders producers for eviction).
    last_index: u64,
    /// The last [`BATCH_WINDOW`] batches written, oldest first.
    window: VecDeque<WrittenBatch>,
}

/// The partition state machine's state. Its snapshot is this, encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionMachine {
    /// Highest index applied (0 before any).
    last_applied: u64,
    /// The offset the next visible batch must start at (= records written so far).
    next_offset: u64,
    /// Visible batches so far (paces the sparse index).
    visible_batches: u64,
    /// Producer dedup table.
    producers: BTreeMap<u64, ProducerEntry>,
    /// Normal entries never returned as visible (duplicates, refused and undecodable batches).
    hidden: BTreeSet<u64>,
    /// Sparse offset index: every [`INDEX_EVERY`]th visible batch, in offset (and log index, and
    /// running maximum timestamp) order.
    index: VecDeque<IndexPoint>,
    /// The largest record timestamp of the visible batches applied (0 before any).
    max_timestamp: u64,
    /// Entries below this log index were applied by a build that kept no timestamps (restored from
    /// a version 2 snapshot): a search by time scans them, and the timestamps above cover only the
    /// batches from here on. 0 for a machine that kept timestamps from its first entry.
    untimed_below: u64,
}

impl PartitionMachine {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Highest index applied.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// The offset the next record will get: one past the last record written.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Whether the normal entry at `index` is a visible batch (Raft's own entries are not asked
    /// about: they are never batches).
    pub fn is_visible(&self, index: u64) -> bool {
        !self.hidden.contains(&index)
    }

    /// The closest sparse index point at or below `offset`: `(base_offset, entry_index)` of a
    /// visible batch. A fetch for `offset` starts scanning there.
    pub fn index_floor(&self, offset: u64) -> Option<(u64, u64)> {
        let after = self.index.partition_point(|p| p.base_offset <= offset);
        after.checked_sub(1).map(|i| (self.index[i].base_offset, self.index[i].entry_index))
    }

    /// Where a search for the first record with a timestamp at or after `timestamp_ms` starts:
    /// the log index of the last index point before which every visible batch is older (`None`:
    /// from the log start). The batch sought is then at most [`INDEX_EVERY`] visible batches on,
    /// since the next point's running maximum reaches `timestamp_ms`. Batches below
    /// [`Self::untimed_below`] are not covered and must be scanned first.
    pub fn time_floor(&self, timestamp_ms: u64) -> Option<u64> {
        let after = self.index.partition_point(|p| p.max_timestamp_before < timestamp_ms);
        after.checked_sub(1).map(|i| self.index[i].entry_index)
    }

    /// The largest record timestamp of the visible batches at or above [`Self::untimed_below`]
    /// (0 if none): no record there is at or after a later time.
    pub fn max_timestamp(&self) -> u64 {
        self.max_timestamp
    }

    /// The log index below which entries were applied without their timestamps being kept (0 if
    /// none were): a search by time reads those batches' headers.
    pub fn untimed_below(&self) -> u64 {
        self.untimed_below
    }

    /// Applies the normal entry at `index` whose body is `payload`. Deterministic: depends only on
    /// the state and the bytes. Reads the batch header only.
    pub fn apply(&mut self, index: u64, payload: &[u8]) -> ApplyOutcome {
        debug_assert!(index > self.last_applied || self.last_applied == 0, "entries apply in index order");
        self.last_applied = self.last_applied.max(index);
        let outcome = match record_batch::decode_header(payload) {
            Ok(header) => self.decide(&header),
            Err(_) => ApplyOutcome::Invalid,
        };
        match outcome {
            ApplyOutcome::Appended { .. } => {
                let header = record_batch::decode_header(payload).expect("decoded above");
                self.append(index, &header);
            }
            _ => {
                self.hidden.insert(index);
            }
        }
        outcome
    }

    /// Whether a decoded batch is visible, and if not why (changes nothing).
    fn decide(&self, header: &BatchHeader) -> ApplyOutcome {
        if let Some((producer_id, base_sequence)) = header.producer
            && let Some(entry) = self.producers.get(&producer_id)
        {
            if base_sequence <= entry.last_sequence {
                let original = entry
                    .window
                    .iter()
                    .find(|b| b.base_sequence == base_sequence && b.position.record_count == header.record_count)
                    .map(|b| b.position);
                return ApplyOutcome::Duplicate { original, last_sequence: entry.last_sequence };
            }
            // `last_sequence < base_sequence`, so `last_sequence + 1` does not overflow.
            let expected = entry.last_sequence + 1;
            if base_sequence > expected {
                return ApplyOutcome::OutOfSequence { expected };
            }
        }
        if header.base_offset != self.next_offset {
            return ApplyOutcome::OffsetMismatch { expected: self.next_offset };
        }
        ApplyOutcome::Appended { base_offset: header.base_offset, record_count: header.record_count }
    }

    fn append(&mut self, index: u64, header: &BatchHeader) {
        debug_assert_eq!(header.base_offset, self.next_offset, "offsets are dense");
        let position =
            BatchPosition { base_offset: header.base_offset, record_count: header.record_count, entry_index: index };
        if self.visible_batches.is_multiple_of(INDEX_EVERY) {
            self.index.push_back(IndexPoint {
                base_offset: header.base_offset,
                entry_index: index,
                max_timestamp_before: self.max_timestamp,
            });
        }
        self.visible_batches += 1;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp_ms);
        self.next_offset = header.end_offset();
        let Some((producer_id, base_sequence)) = header.producer else { return };
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= MAX_PRODUCERS {
            self.evict_oldest_producer();
        }
        let entry = self.producers.entry(producer_id).or_default();
        entry.last_sequence = header.last_sequence().unwrap_or(base_sequence);
        entry.last_index = index;
        entry.window.push_back(WrittenBatch { base_sequence, position });
        while entry.window.len() > BATCH_WINDOW {
            entry.window.pop_front();
        }
    }

    fn evict_oldest_producer(&mut self) {
        if let Some(id) = self.producers.iter().min_by_key(|(id, e)| (e.last_index, **id)).map(|(id, _)| *id) {
            self.producers.remove(&id);
        }
    }

    /// The leader's check before proposing: if the sequences `[base_sequence, base_sequence +
    /// count)` are exactly the batches of the producer's window that start at `base_sequence`, the
    /// positions of those batches (the request is a pure retry and need not be proposed again).
    /// `None` otherwise; the apply-time check still catches any other retry.
    pub fn known_retry(&self, producer_id: u64, base_sequence: u64, count: usize) -> Option<Vec<BatchPosition>> {
        let entry = self.producers.get(&producer_id)?;
        let end = base_sequence.checked_add(count as u64)?;
        if count == 0 || end - 1 > entry.last_sequence {
            return None;
        }
        let start = entry.window.iter().position(|b| b.base_sequence == base_sequence)?;
        let mut out = Vec::new();
        let mut next = base_sequence;
        for b in entry.window.iter().skip(start) {
            if next == end {
                break;
            }
            if b.base_sequence != next {
                return None;
            }
            next += u64::from(b.position.record_count);
            out.push(b.position);
        }
        (next == end).then_some(out)
    }

    /// The last sequence a producer wrote, if it is remembered.
    pub fn last_sequence(&self, producer_id: u64) -> Option<u64> {
        self.producers.get(&producer_id).map(|e| e.last_sequence)
    }

    /// Forgets hidden entries and index points below log index `index` (they are purged from the
    /// log; nothing can read them).
    pub fn prune_below(&mut self, index: u64) {
        self.hidden = self.hidden.split_off(&index);
        while self.index.front().is_some_and(|p| p.entry_index < index) {
            self.index.pop_front();
        }
    }

    /// Encodes the whole state (the partition group's snapshot, [`snap`]).
    pub fn encode(&self) -> Vec<u8> {
        let window_entries: usize = self.producers.values().map(|e| e.window.len()).sum();
        let mut w = Writer::with_capacity(
            64 + self.producers.len() * snap::PRODUCER_LEN
                + window_entries * snap::WINDOW_BATCH_LEN
                + self.hidden.len() * 8
                + self.index.len() * snap::INDEX_POINT_LEN,
        );
        w.u32(snap::MAGIC).u16(snap::VERSION);
        w.u64(self.last_applied).u64(self.next_offset).u64(self.visible_batches);
        w.u64(self.max_timestamp).u64(self.untimed_below);
        w.u32(self.producers.len() as u32);
        for (id, e) in &self.producers {
            w.u64(*id).u64(e.last_sequence).u64(e.last_index).u32(e.window.len() as u32);
            for b in &e.window {
                w.u64(b.base_sequence)
                    .u32(b.position.record_count)
                    .u64(b.position.base_offset)
                    .u64(b.position.entry_index);
            }
        }
        w.u32(self.hidden.len() as u32);
        for i in &self.hidden {
            w.u64(*i);
        }
        w.u32(self.index.len() as u32);
        for p in &self.index {
            w.u64(p.base_offset).u64(p.entry_index).u64(p.max_timestamp_before);
        }
        w.crc();
        w.finish()
    }

    /// Decodes [`PartitionMachine::encode`], and the version before it (no timestamps: the
    /// entries it covers are marked [`Self::untimed_below`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::with_crc("partition snapshot", bytes)?;
        let version = r.snapshot_header_of(snap::MAGIC, &[snap::VERSION_UNTIMED, snap::VERSION])?;
        let mut m = PartitionMachine {
            last_applied: r.u64()?,
            next_offset: r.u64()?,
            visible_batches: r.u64()?,
            ..Self::default()
        };
        if version == snap::VERSION {
            m.max_timestamp = r.u64()?;
            m.untimed_below = r.u64()?;
        } else {
            m.untimed_below = m.last_applied + 1;
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_PRODUCERS, snap::PRODUCER_LEN)?;
        for _ in 0..n {
            let id = r.u64()?;
            let last_sequence = r.u64()?;
            let last_index = r.u64()?;
            let raw = u64::from(r.u32()?);
            let k = r.count(raw, BATCH_WINDOW, snap::WINDOW_BATCH_LEN)?;
            let mut window = VecDeque::with_capacity(k);
            for _ in 0..k {
                let base_sequence = r.u64()?;
                let record_count = r.u32()?;
                let position = BatchPosition { base_offset: r.u64()?, record_count, entry_index: r.u64()? };
                window.push_back(WrittenBatch { base_sequence, position });
            }
            m.producers.insert(id, ProducerEntry { last_sequence, last_index, window });
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_LISTED, 8)?;
        for _ in 0..n {
            m.hidden.insert(r.u64()?);
        }
        let raw = u64::from(r.u32()?);
        let point_len = if version == snap::VERSION { snap::INDEX_POINT_LEN } else { 16 };
        let n = r.count(raw, MAX_LISTED, point_len)?;
        for _ in 0..n {
            let (base_offset, entry_index) = (r.u64()?, r.u64()?);
            let max_timestamp_before = if version == snap::VERSION { r.u64()? } else { 0 };
            if m.index.back().is_some_and(|p| {
                p.base_offset >= base_offset
                    || p.entry_index >= entry_index
                    || p.max_timestamp_before > max_timestamp_before
            }) {
                return Err(r.error(format!("index point {base_offset} at {entry_index} out of order")));
            }
            m.index.push_back(IndexPoint { base_offset, entry_index, max_timestamp_before });
        }
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use shale_storage::NoneCodec;
    use shale_storage::record_batch::{NewRecord, encode_batch};

    use super::*;

    fn batch(count: usize, base_offset: u64, producer: Option<(u64, u64)>) -> Vec<u8> {
        let records: Vec<NewRecord> = (0..count)
            .map(|i| NewRecord { value: Bytes::from(format!("v{i}")), timestamp_ms: 7, ..NewRecord::default() })
            .collect();
        encode_batch(&records, base_offset, producer, &NoneCodec)
    }

    fn appended(base_offset: u64, record_count: u32) -> ApplyOutcome {
        ApplyOutcome::Appended { base_offset, record_count }
    }

    #[test]
    fn offsets_are_dense_and_refused_batches_consume_none() {
        let mut m = PartitionMachine::new();
        assert_eq!(m.apply(1, &batch(3, 0, None)), appended(0, 3));
        // Index 2 is a Raft entry (never applied here); the next batch continues at offset 3.
        assert_eq!(m.apply(3, &batch(2, 3, None)), appended(3, 2));
        assert_eq!(m.apply(4, &batch(1, 3, None)), ApplyOutcome::OffsetMismatch { expected: 5 });
        assert_eq!(m.apply(5, &batch(1, 9, None)), ApplyOutcome::OffsetMismatch { expected: 5 });
        assert_eq!(m.apply(6, b"garbage"), ApplyOutcome::Invalid);
        assert_eq!(m.apply(7, &batch(4, 5, None)), appended(5, 4));
        assert_eq!(m.next_offset(), 9);
        assert!(m.is_visible(1) && m.is_visible(3) && m.is_visible(7));
        assert!(!m.is_visible(4) && !m.is_visible(5) && !m.is_visible(6));
        assert_eq!(m.index_floor(8), Some((0, 1)), "the first visible batch is an index point");
    }

    #[test]
    fn retries_are_recognised_at_apply_with_the_original_batch() {
        let mut m = PartitionMachine::new();
        assert_eq!(m.apply(2, &batch(3, 0, Some((5, 10)))), appended(0, 3));
        assert_eq!(m.apply(3, &batch(2, 3, Some((5, 13)))), appended(3, 2));
        let first = BatchPosition { base_offset: 0, record_count: 3, entry_index: 2 };
        let second = BatchPosition { base_offset: 3, record_count: 2, entry_index: 3 };
        assert_eq!(m.known_retry(5, 10, 3), Some(vec![first]));
        assert_eq!(m.known_retry(5, 10, 5), Some(vec![first, second]), "a request split into two batches");
        assert_eq!(m.known_retry(5, 11, 2), None, "not a batch boundary");
        assert_eq!(m.known_retry(5, 13, 3), None, "extends past what was written");
        // The same batch committed again (a retry that raced past the leader's check), at whatever
        // offset: a duplicate naming the original, hidden, consuming no offset.
        assert_eq!(
            m.apply(4, &batch(3, 5, Some((5, 10)))),
            ApplyOutcome::Duplicate { original: Some(first), last_sequence: 14 }
        );
        assert_eq!(
            m.apply(5, &batch(2, 0, Some((5, 10)))),
            ApplyOutcome::Duplicate { original: None, last_sequence: 14 }
        );
        assert!(!m.is_visible(4) && !m.is_visible(5));
        assert_eq!(m.next_offset(), 5);
        // Batches without producer info are never deduplicated.
        assert_eq!(m.apply(6, &batch(1, 5, None)), appended(5, 1));
        assert_eq!(m.apply(7, &batch(1, 6, None)), appended(6, 1));
        for o in [
            appended(3, 9),
            ApplyOutcome::Invalid,
            ApplyOutcome::Duplicate { original: None, last_sequence: 4 },
            ApplyOutcome::Duplicate { original: Some(second), last_sequence: 4 },
            ApplyOutcome::OutOfSequence { expected: 9 },
            ApplyOutcome::OffsetMismatch { expected: 11 },
        ] {
            assert_eq!(ApplyOutcome::decode(&o.encode()).unwrap(), o);
        }
    }

    #[test]
    fn a_batch_that_skips_sequences_is_refused_and_written_once_the_gap_is_filled() {
        let mut m = PartitionMachine::new();
        // A new producer may start anywhere.
        assert_eq!(m.apply(1, &batch(1, 0, Some((3, 100)))), appended(0, 1));
        // A pipelined batch that overtook the one before it (101..=102 not written yet).
        assert_eq!(m.apply(2, &batch(2, 1, Some((3, 103)))), ApplyOutcome::OutOfSequence { expected: 101 });
        assert!(!m.is_visible(2));
        assert_eq!(m.last_sequence(3), Some(100), "a refused batch does not move the producer");
        assert_eq!(m.apply(3, &batch(2, 1, Some((3, 101)))), appended(1, 2));
        assert_eq!(m.apply(4, &batch(2, 3, Some((3, 103)))), appended(3, 2));
        assert_eq!(m.last_sequence(3), Some(104));
        // A duplicate wins over an offset mismatch; a sequence gap too.
        assert!(matches!(m.apply(5, &batch(2, 99, Some((3, 103)))), ApplyOutcome::Duplicate { .. }));
        assert_eq!(m.apply(6, &batch(1, 99, Some((3, 200)))), ApplyOutcome::OutOfSequence { expected: 105 });
        // Another producer is independent.
        assert_eq!(m.apply(7, &batch(1, 5, Some((4, 7)))), appended(5, 1));
    }

    #[test]
    fn the_window_forgets_old_batches() {
        let mut m = PartitionMachine::new();
        for seq in 0..(BATCH_WINDOW as u64 + 10) {
            assert!(m.apply(seq + 1, &batch(1, seq, Some((1, seq)))).is_appended());
        }
        let last = BATCH_WINDOW as u64 + 9;
        assert_eq!(
            m.apply(last + 5, &batch(1, last + 1, Some((1, 0)))),
            ApplyOutcome::Duplicate { original: None, last_sequence: last }
        );
        assert_eq!(m.known_retry(1, 0, 1), None);
        assert!(m.known_retry(1, last, 1).is_some());
    }

    #[test]
    fn the_sparse_index_points_at_every_nth_visible_batch_and_is_pruned_with_the_log() {
        let mut m = PartitionMachine::new();
        let mut index = 0;
        for b in 0..100u64 {
            index += 2; // a hidden entry between batches
            m.apply(index - 1, b"hidden");
            assert!(m.apply(index, &batch(3, b * 3, None)).is_appended());
        }
        assert_eq!(m.index_floor(0), Some((0, 2)));
        assert_eq!(m.index_floor(95), Some((0, 2)));
        assert_eq!(m.index_floor(96), Some((96, 66)), "the 33rd batch");
        assert_eq!(m.index_floor(10_000), Some((288, 194)));
        m.prune_below(66);
        assert_eq!(m.index_floor(95), None, "points below the log start are gone");
        assert_eq!(m.index_floor(100), Some((96, 66)));
        assert!(m.is_visible(63), "hidden entries below the start are forgotten");
        assert!(!m.is_visible(67));
    }

    fn timed_batch(base_offset: u64, timestamps: &[u64]) -> Vec<u8> {
        let records: Vec<NewRecord> = timestamps
            .iter()
            .map(|ts| NewRecord { value: Bytes::from_static(b"v"), timestamp_ms: *ts, ..NewRecord::default() })
            .collect();
        encode_batch(&records, base_offset, None, &NoneCodec)
    }

    #[test]
    fn the_time_floor_is_the_last_point_before_which_every_batch_is_older() {
        let mut m = PartitionMachine::new();
        // Batch b (entry 2b + 2, a hidden entry before each) holds timestamps 10b and 10b + 5,
        // except batch 40, which holds one late record (timestamp 1000).
        for b in 0..100u64 {
            m.apply(2 * b + 1, b"hidden");
            let ts = if b == 40 { vec![400, 1000] } else { vec![10 * b, 10 * b + 5] };
            assert!(m.apply(2 * b + 2, &timed_batch(2 * b, &ts)).is_appended());
        }
        // Points: batches 0, 32, 64, 96 at entries 2, 66, 130, 194.
        assert_eq!(m.time_floor(0), None, "nothing is before the first point");
        assert_eq!(m.time_floor(5), Some(2));
        assert_eq!(m.time_floor(315), Some(2), "batch 31 (timestamps 310, 315) is before point 32");
        assert_eq!(m.time_floor(316), Some(66));
        // Batch 40's record at 1000 is before points 64 and 96: the search starts at point 32 and
        // finds batch 40 first, as the earliest batch holding a record at or after the time.
        assert_eq!(m.time_floor(990), Some(66));
        assert_eq!(m.time_floor(1001), Some(194));
        assert_eq!(m.max_timestamp(), 1000);
        assert_eq!(m.untimed_below(), 0);
        m.prune_below(100);
        assert_eq!(m.time_floor(321), None, "from the log start");
        assert_eq!(m.time_floor(1001), Some(194));
        let restored = PartitionMachine::decode(&m.encode()).unwrap();
        assert_eq!(restored, m);
    }

    #[test]
    fn a_snapshot_of_the_untimed_version_is_read_with_its_entries_marked_untimed() {
        let mut m = PartitionMachine::new();
        for b in 0..40u64 {
            assert!(m.apply(b + 1, &timed_batch(b, &[b])).is_appended());
        }
        // The version 2 encoding: no timestamps, index points of (offset, index).
        let mut w = Writer::with_capacity(256);
        w.u32(snap::MAGIC).u16(snap::VERSION_UNTIMED);
        w.u64(m.last_applied).u64(m.next_offset).u64(m.visible_batches);
        w.u32(0).u32(0).u32(m.index.len() as u32);
        for p in &m.index {
            w.u64(p.base_offset).u64(p.entry_index);
        }
        w.crc();
        let mut old = PartitionMachine::decode(&w.finish()).unwrap();
        assert_eq!(old.untimed_below(), 41);
        assert_eq!((old.next_offset(), old.index_floor(35)), (40, Some((32, 33))));
        assert_eq!(old.max_timestamp(), 0, "nothing known above the untimed entries yet");
        assert!(old.apply(41, &timed_batch(40, &[7])).is_appended());
        assert_eq!(old.max_timestamp(), 7);
        let again = PartitionMachine::decode(&old.encode()).unwrap();
        assert_eq!(again, old, "the current version keeps the untimed bound");
    }

    #[test]
    fn snapshot_round_trips_and_replays_identically() {
        let mut a = PartitionMachine::new();
        let mut payloads = Vec::new();
        for i in 0..200u64 {
            // Mostly at the next offset, every 7th one stale; sequences that repeat and skip.
            let base = a.next_offset() + u64::from(i % 7 == 6);
            let p = batch(1 + (i % 3) as usize, base, (i % 5 != 0).then_some((i % 4, i / 2)));
            a.apply(i + 1, &p);
            payloads.push(p);
        }
        assert!(!a.index.is_empty() && !a.hidden.is_empty() && !a.producers.is_empty());
        let snap = a.encode();
        let b = PartitionMachine::decode(&snap).unwrap();
        assert_eq!(a, b);
        // A replica that replays the same entries reaches the same state.
        let mut c = PartitionMachine::new();
        for (i, p) in payloads.iter().enumerate() {
            c.apply(i as u64 + 1, p);
        }
        assert_eq!(c.encode(), snap);
        let mut flipped = snap.clone();
        flipped[8] ^= 1;
        assert!(PartitionMachine::decode(&flipped).is_err());
        assert!(PartitionMachine::decode(&snap[..snap.len() - 5]).is_err());
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = PartitionMachine::decode(&bytes);
                let _ = ApplyOutcome::decode(&bytes);
                let mut m = PartitionMachine::new();
                let _ = m.apply(1, &bytes);
            }

            /// Whatever producers send, at whatever offsets: visible batches have dense offsets
            /// from 0; each (producer, sequence) is visible at most once; a known producer's
            /// visible batches follow each other without a gap; every duplicate names the batch
            /// that first wrote it (while remembered); every refusal says what was expected; and
            /// the snapshot round trips.
            #[test]
            fn apply_model(ops in proptest::collection::vec((0u64..4, 0u64..12, 1usize..4, 0u64..3), 1..200)) {
                let mut m = PartitionMachine::new();
                let mut first: BTreeMap<(u64, u64, usize), BatchPosition> = BTreeMap::new();
                let mut last: BTreeMap<u64, u64> = BTreeMap::new();
                let mut next_offset = 0u64;
                for (i, (pid, seq, count, skew)) in ops.iter().enumerate() {
                    let index = i as u64 + 1;
                    // Mostly the right offset, sometimes a stale one.
                    let base = if *skew == 0 { next_offset + 1 } else { next_offset };
                    let producer = (*pid != 0).then_some((*pid, *seq));
                    let outcome = m.apply(index, &batch(*count, base, producer));
                    let known = producer.and_then(|_| last.get(pid).copied());
                    match known {
                        Some(l) if *seq <= l => {
                            let original = first.get(&(*pid, *seq, *count)).copied();
                            match outcome {
                                ApplyOutcome::Duplicate { original: got, last_sequence } => {
                                    prop_assert_eq!(last_sequence, l);
                                    if let Some(g) = got {
                                        prop_assert_eq!(Some(g), original);
                                    }
                                }
                                other => prop_assert!(false, "expected a duplicate, got {:?}", other),
                            }
                        }
                        Some(l) if *seq > l + 1 => {
                            prop_assert_eq!(outcome, ApplyOutcome::OutOfSequence { expected: l + 1 });
                        }
                        _ if base != next_offset => {
                            prop_assert_eq!(outcome, ApplyOutcome::OffsetMismatch { expected: next_offset });
                        }
                        _ => {
                            prop_assert_eq!(outcome, appended(next_offset, *count as u32));
                            let position = BatchPosition { base_offset: next_offset, record_count: *count as u32, entry_index: index };
                            if let Some((p, s)) = producer {
                                first.insert((p, s, *count), position);
                                last.insert(p, s + *count as u64 - 1);
                            }
                            next_offset += *count as u64;
                        }
                    }
                    prop_assert_eq!(m.is_visible(index), outcome.is_appended());
                    prop_assert_eq!(m.next_offset(), next_offset);
                }
                let restored = PartitionMachine::decode(&m.encode()).unwrap();
                prop_assert_eq!(restored, m);
            }
        }
    }
}
