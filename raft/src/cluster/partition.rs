//! The partition state machine and the record encoding, pure: no Raft, no I/O.
//!
//! The log is the data: one produced record is one Raft entry, whose payload is the encoding below
//! ([`crate::cluster::layout::record`]). The state machine only keeps what the log alone cannot
//! answer quickly: the producer dedup table and the set of entries consumers must never see
//! (duplicates of an earlier write, records of a producer that skip a sequence, and payloads that
//! do not decode). All are decided at apply time, so every replica decides the same.
//!
//! An idempotent producer's sequences are written without gaps: once a producer is known, its next
//! record must carry `last_sequence + 1` (at or below is a duplicate; above is refused as
//! [`ApplyOutcome::OutOfSequence`], hidden, and the producer sends it again after the records
//! before it). A producer that pipelines batches can then retry any of them: a batch that
//! overtakes an earlier one is refused instead of written ahead of it, and the earlier one is not
//! mistaken for a duplicate afterwards. A producer the partition does not know (new, or evicted
//! from the table) may start at any sequence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use shale_storage::codec::compress_payload;
use shale_storage::{Codec, CodecId, CodecRegistry};

use crate::cluster::api::{ClusterError, ProduceRecord, limits};
use crate::cluster::layout::{Reader, Writer, partition_snapshot as snap, record as layout};

/// Sequences remembered per producer (a retry older than this is refused, not rewritten).
pub const DEDUP_WINDOW: usize = 4096;
/// Producers remembered per partition; past it the one that wrote longest ago is forgotten.
pub const MAX_PRODUCERS: usize = 65_536;
/// Hidden entries a snapshot may list. Apply cannot refuse an entry that is already in the log, so
/// this is the count field's own range; allocation is still bounded by the snapshot's length.
const MAX_HIDDEN: usize = u32::MAX as usize;

/// A record as stored in (and decoded from) one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Key, if any.
    pub key: Option<Bytes>,
    /// The value, decompressed.
    pub value: Bytes,
    /// Headers in order.
    pub headers: Vec<(String, Bytes)>,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// `(producer_id, sequence)` for idempotent producers.
    pub producer: Option<(u64, u64)>,
}

/// Encodes one record as a Raft entry payload, compressing the value with `codec` if that makes
/// it smaller.
///
/// The record is within the limits ([`limits::RecordSize::check`] at [`limits::MAX_RECORD_BYTES`]):
/// the node checked it at its edge against its configured limit, which is at most that, so this
/// only asserts it. The encoding is then at most [`layout::MAX_FRAMING_LEN`] larger, which fits
/// one Raft payload (asserted at compile time in [`crate::cluster::layout::record`]).
pub fn encode_record(
    record: &ProduceRecord,
    timestamp_ms: u64,
    producer: Option<(u64, u64)>,
    codec: &dyn Codec,
) -> Vec<u8> {
    debug_assert_eq!(record.size().check(limits::MAX_RECORD_BYTES), Ok(()), "a record past the edge's limits");
    let key_len = record.key.as_ref().map_or(0, Bytes::len);
    let header_bytes: usize = record.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    let raw_size = layout::max_encoded_len(key_len, record.headers.len(), header_bytes, record.value.len());
    let mut flags = 0u8;
    if record.key.is_some() {
        flags |= layout::FLAG_KEY;
    }
    if producer.is_some() {
        flags |= layout::FLAG_PRODUCER;
    }
    let (codec_id, compressed) = compress_payload(codec, &record.value);
    let stored: &[u8] = compressed.as_deref().unwrap_or(&record.value);
    let mut w = Writer::with_capacity(raw_size);
    w.u16(layout::MAGIC).u8(layout::VERSION).u8(flags).u64(timestamp_ms);
    debug_assert_eq!(w.len(), layout::FIXED_LEN);
    if let Some((id, seq)) = producer {
        w.u64(id).u64(seq);
    }
    if let Some(key) = &record.key {
        w.bytes32(key);
    }
    w.u16(record.headers.len() as u16);
    for (name, value) in &record.headers {
        w.str16(name).bytes32(value);
    }
    w.u8(codec_id.0).u32(record.value.len() as u32).bytes32(stored);
    debug_assert!(w.len() <= raw_size);
    w.finish()
}

/// Decodes a Raft entry payload written by [`encode_record`], verifying every length.
pub fn decode_record(bytes: &[u8], codecs: &CodecRegistry) -> Result<StoredRecord, ClusterError> {
    let mut r = Reader::new("partition record", bytes);
    let magic = r.u16()?;
    if magic != layout::MAGIC {
        return Err(r.error(format!("magic {magic:#x}, expected {:#x}", layout::MAGIC)));
    }
    let version = r.u8()?;
    if version != layout::VERSION {
        return Err(r.error(format!("format version {version}, this build reads {}", layout::VERSION)));
    }
    let flags = r.u8()?;
    if flags & !layout::KNOWN_FLAGS != 0 {
        return Err(r.error(format!("unknown flags {flags:#04x}")));
    }
    let timestamp_ms = r.u64()?;
    let producer = if flags & layout::FLAG_PRODUCER != 0 { Some((r.u64()?, r.u64()?)) } else { None };
    let key = if flags & layout::FLAG_KEY != 0 { Some(r.bytes32(limits::MAX_RECORD_BYTES)?) } else { None };
    let raw = u64::from(r.u16()?);
    let n = r.count(raw, limits::MAX_HEADERS, 6)?;
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str16(limits::MAX_HEADER_NAME_BYTES)?;
        let value = r.bytes32(limits::MAX_RECORD_BYTES)?;
        headers.push((name, value));
    }
    let codec_id = CodecId(r.u8()?);
    let value_len = r.u32()? as usize;
    if value_len > limits::MAX_RECORD_BYTES {
        return Err(r.error(format!("value of {value_len} bytes, limit {}", limits::MAX_RECORD_BYTES)));
    }
    let stored = r.bytes32(limits::MAX_RECORD_BYTES)?;
    let value = if codec_id == CodecId::NONE {
        if stored.len() != value_len {
            return Err(r.error(format!("stored value is {} bytes, declared {value_len}", stored.len())));
        }
        stored
    } else {
        let codec = codecs.get(codec_id).ok_or_else(|| r.error(format!("unknown codec id {}", codec_id.0)))?;
        Bytes::from(codec.decompress(&stored, value_len).map_err(|e| r.error(format!("value: {e}")))?)
    };
    r.finish()?;
    Ok(StoredRecord { key, value, headers, timestamp_ms, producer })
}

/// Reads only the producer fields of an encoded record (cheap; used at apply time).
pub fn peek_producer(bytes: &[u8]) -> Result<Option<(u64, u64)>, ClusterError> {
    let mut r = Reader::new("partition record", bytes);
    let magic = r.u16()?;
    let version = r.u8()?;
    if magic != layout::MAGIC || version != layout::VERSION {
        return Err(r.error(format!("magic {magic:#x} version {version} is not a record")));
    }
    let flags = r.u8()?;
    if flags & !layout::KNOWN_FLAGS != 0 {
        return Err(r.error(format!("unknown flags {flags:#04x}")));
    }
    let _timestamp = r.u64()?;
    if flags & layout::FLAG_PRODUCER != 0 { Ok(Some((r.u64()?, r.u64()?))) } else { Ok(None) }
}

/// What applying one entry decided. Encoded as the entry's Raft response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new record at this offset.
    Appended {
        /// Its offset (the entry's index).
        offset: u64,
    },
    /// The producer already wrote this sequence: the entry is hidden from consumers.
    Duplicate {
        /// Where the original landed, if still in the dedup window.
        original: Option<u64>,
        /// The producer's last written sequence.
        last_sequence: u64,
    },
    /// The payload is not a record this build can read: hidden from consumers.
    Invalid,
    /// The producer's record skips sequences (an earlier record of the producer is not written):
    /// hidden from consumers; the producer sends it again after the missing ones.
    OutOfSequence {
        /// The sequence the partition expects next from the producer.
        expected: u64,
    },
}

impl ApplyOutcome {
    /// `[kind:u8][a:u64][b:u64]`: 0 appended (offset, 0); 1 duplicate (original or u64::MAX, last
    /// sequence); 2 invalid (0, 0); 3 out of sequence (expected, 0). A Raft response, never stored.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::with_capacity(17);
        match *self {
            ApplyOutcome::Appended { offset } => w.u8(0).u64(offset).u64(0),
            ApplyOutcome::Duplicate { original, last_sequence } => {
                w.u8(1).u64(original.unwrap_or(u64::MAX)).u64(last_sequence)
            }
            ApplyOutcome::Invalid => w.u8(2).u64(0).u64(0),
            ApplyOutcome::OutOfSequence { expected } => w.u8(3).u64(expected).u64(0),
        };
        Bytes::from(w.finish())
    }

    /// Decodes [`ApplyOutcome::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::new("partition apply outcome", bytes);
        let kind = r.u8()?;
        let a = r.u64()?;
        let b = r.u64()?;
        r.finish()?;
        match kind {
            0 => Ok(ApplyOutcome::Appended { offset: a }),
            1 => Ok(ApplyOutcome::Duplicate { original: (a != u64::MAX).then_some(a), last_sequence: b }),
            2 => Ok(ApplyOutcome::Invalid),
            3 => Ok(ApplyOutcome::OutOfSequence { expected: a }),
            other => Err(ClusterError::Decode { what: "partition apply outcome", reason: format!("kind {other}") }),
        }
    }
}

/// What the partition remembers of one idempotent producer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ProducerEntry {
    /// Highest sequence written.
    last_sequence: u64,
    /// Index of the entry that wrote it (orders producers for eviction).
    last_index: u64,
    /// `(sequence, offset)` of the last [`DEDUP_WINDOW`] records written, oldest first.
    window: VecDeque<(u64, u64)>,
}

/// The partition state machine's state. Its snapshot is this, encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionMachine {
    /// Highest index applied (0 before any).
    last_applied: u64,
    /// Producer dedup table.
    producers: BTreeMap<u64, ProducerEntry>,
    /// Entries never returned to consumers (duplicates and undecodable payloads).
    hidden: BTreeSet<u64>,
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

    /// Whether a consumer may see the entry at `index` (if it is a record at all).
    pub fn is_visible(&self, index: u64) -> bool {
        !self.hidden.contains(&index)
    }

    /// Applies the record entry at `index`. Deterministic: depends only on the state and the bytes.
    pub fn apply(&mut self, index: u64, payload: &[u8]) -> ApplyOutcome {
        debug_assert!(index > self.last_applied || self.last_applied == 0, "entries apply in index order");
        self.last_applied = self.last_applied.max(index);
        let producer = match peek_producer(payload) {
            Ok(p) => p,
            Err(_) => {
                self.hidden.insert(index);
                return ApplyOutcome::Invalid;
            }
        };
        let Some((producer_id, sequence)) = producer else {
            return ApplyOutcome::Appended { offset: index };
        };
        if let Some(entry) = self.producers.get(&producer_id) {
            if sequence <= entry.last_sequence {
                let original = entry.window.iter().find(|(s, _)| *s == sequence).map(|(_, o)| *o);
                let last_sequence = entry.last_sequence;
                self.hidden.insert(index);
                return ApplyOutcome::Duplicate { original, last_sequence };
            }
            // `last_sequence < sequence`, so `last_sequence + 1` does not overflow.
            let expected = entry.last_sequence + 1;
            if sequence > expected {
                self.hidden.insert(index);
                return ApplyOutcome::OutOfSequence { expected };
            }
        }
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= MAX_PRODUCERS {
            self.evict_oldest_producer();
        }
        let entry = self.producers.entry(producer_id).or_default();
        entry.last_sequence = sequence;
        entry.last_index = index;
        entry.window.push_back((sequence, index));
        while entry.window.len() > DEDUP_WINDOW {
            entry.window.pop_front();
        }
        ApplyOutcome::Appended { offset: index }
    }

    fn evict_oldest_producer(&mut self) {
        if let Some(id) = self.producers.iter().min_by_key(|(id, e)| (e.last_index, **id)).map(|(id, _)| *id) {
            self.producers.remove(&id);
        }
    }

    /// The leader's check before proposing: if every sequence in
    /// `[base_sequence, base_sequence + count)` is already written and remembered, their original
    /// offsets (the batch is a pure retry and need not be proposed again). `None` otherwise; the
    /// apply-time check still catches a partial retry.
    pub fn known_retry(&self, producer_id: u64, base_sequence: u64, count: usize) -> Option<Vec<u64>> {
        let entry = self.producers.get(&producer_id)?;
        let last = base_sequence.checked_add(count as u64)?.checked_sub(1)?;
        if count == 0 || last > entry.last_sequence {
            return None;
        }
        (base_sequence..=last).map(|seq| entry.window.iter().find(|(s, _)| *s == seq).map(|(_, o)| *o)).collect()
    }

    /// The last sequence a producer wrote, if it is remembered.
    pub fn last_sequence(&self, producer_id: u64) -> Option<u64> {
        self.producers.get(&producer_id).map(|e| e.last_sequence)
    }

    /// Forgets hidden entries below `index` (they are purged from the log; nothing can read them).
    pub fn prune_hidden_below(&mut self, index: u64) {
        self.hidden = self.hidden.split_off(&index);
    }

    /// Encodes the whole state (the partition group's snapshot).
    pub fn encode(&self) -> Vec<u8> {
        let window_entries: usize = self.producers.values().map(|e| e.window.len()).sum();
        let mut w = Writer::with_capacity(32 + self.producers.len() * 28 + window_entries * 16 + self.hidden.len() * 8);
        w.u32(snap::MAGIC).u16(snap::VERSION).u64(self.last_applied);
        w.u32(self.producers.len() as u32);
        for (id, e) in &self.producers {
            w.u64(*id).u64(e.last_sequence).u64(e.last_index).u32(e.window.len() as u32);
            for (seq, off) in &e.window {
                w.u64(*seq).u64(*off);
            }
        }
        w.u32(self.hidden.len() as u32);
        for i in &self.hidden {
            w.u64(*i);
        }
        w.crc();
        w.finish()
    }

    /// Decodes [`PartitionMachine::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::with_crc("partition snapshot", bytes)?;
        r.snapshot_header(snap::MAGIC, snap::VERSION)?;
        let mut m = PartitionMachine { last_applied: r.u64()?, ..Self::default() };
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_PRODUCERS, 28)?;
        for _ in 0..n {
            let id = r.u64()?;
            let last_sequence = r.u64()?;
            let last_index = r.u64()?;
            let raw = u64::from(r.u32()?);
            let k = r.count(raw, DEDUP_WINDOW, 16)?;
            let mut window = VecDeque::with_capacity(k);
            for _ in 0..k {
                window.push_back((r.u64()?, r.u64()?));
            }
            m.producers.insert(id, ProducerEntry { last_sequence, last_index, window });
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_HIDDEN, 8)?;
        for _ in 0..n {
            m.hidden.insert(r.u64()?);
        }
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use shale_storage::{CodecKind, NoneCodec, ZstdCodec};

    use super::*;

    fn rec(key: Option<&str>, value: &str) -> ProduceRecord {
        ProduceRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            headers: vec![("h1".into(), Bytes::from_static(b"v1")), ("h1".into(), Bytes::new())],
            timestamp_ms: None,
        }
    }

    fn encode(r: &ProduceRecord, producer: Option<(u64, u64)>) -> Vec<u8> {
        encode_record(r, 1_700_000_000_000, producer, &NoneCodec)
    }

    #[test]
    fn records_round_trip_with_every_codec() {
        let reg = CodecRegistry::new();
        let big = "compressible ".repeat(500);
        for kind in [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 3 }] {
            for r in [rec(Some("k"), &big), rec(None, ""), rec(Some(""), "x")] {
                let bytes = encode_record(&r, 42, Some((7, 9)), kind.codec().as_ref());
                let back = decode_record(&bytes, &reg).unwrap();
                assert_eq!(back.key, r.key);
                assert_eq!(back.value, r.value);
                assert_eq!(back.headers, r.headers);
                assert_eq!(back.timestamp_ms, 42);
                assert_eq!(back.producer, Some((7, 9)));
                assert_eq!(peek_producer(&bytes).unwrap(), Some((7, 9)));
            }
        }
        let compressed = encode_record(&rec(None, &big), 0, None, &ZstdCodec::default());
        assert!(compressed.len() < big.len() / 4, "value is stored compressed");
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let reg = CodecRegistry::new();
        let bytes = encode_record(&rec(Some("key"), &"v".repeat(300)), 1, Some((1, 2)), &ZstdCodec::default());
        for cut in 0..bytes.len() {
            assert!(decode_record(&bytes[..cut], &reg).is_err(), "cut at {cut}");
        }
        let mut flags = bytes.clone();
        flags[layout::FLAGS_AT] = 0x80;
        assert!(decode_record(&flags, &reg).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_record(&trailing, &reg).is_err());
    }

    // The refusal of an oversized record moved to the node's edge (node/src/limits.rs,
    // `the_largest_record_limit_refuses_one_byte_more`); here: a record at the edge's largest limit,
    // with the most headers, encodes within one Raft payload and decodes back.
    #[test]
    fn a_record_at_the_largest_limit_fits_one_raft_payload() {
        let headers: Vec<(String, Bytes)> =
            (0..limits::MAX_HEADERS).map(|i| (format!("h{i:03}"), Bytes::from_static(b"v"))).collect();
        let header_bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        let r = ProduceRecord {
            key: Some(Bytes::from_static(b"key")),
            value: Bytes::from(vec![7u8; limits::MAX_RECORD_BYTES - header_bytes - 3]),
            headers,
            timestamp_ms: None,
        };
        assert_eq!(r.size().bytes, limits::MAX_RECORD_BYTES);
        let bytes = encode_record(&r, 0, Some((1, 2)), &NoneCodec);
        assert!(bytes.len() > limits::MAX_RECORD_BYTES && bytes.len() <= limits::RAFT_PAYLOAD_BYTES, "{}", bytes.len());
        let back = decode_record(&bytes, &CodecRegistry::new()).unwrap();
        assert_eq!((back.key, back.value, back.headers), (r.key, r.value, r.headers));
    }

    #[test]
    fn retries_are_recognised_at_apply_with_original_offsets() {
        let mut m = PartitionMachine::new();
        let batch: Vec<Vec<u8>> = (0..3).map(|i| encode(&rec(None, "v"), Some((5, 10 + i)))).collect();
        let first: Vec<ApplyOutcome> = batch.iter().enumerate().map(|(i, p)| m.apply(2 + i as u64, p)).collect();
        assert_eq!(first, (2..5).map(|offset| ApplyOutcome::Appended { offset }).collect::<Vec<_>>());
        assert_eq!(m.known_retry(5, 10, 3), Some(vec![2, 3, 4]));
        assert_eq!(m.known_retry(5, 11, 3), None, "extends past what was written");
        // The same batch committed again (a retry that raced past the leader's check).
        let again: Vec<ApplyOutcome> = batch.iter().enumerate().map(|(i, p)| m.apply(7 + i as u64, p)).collect();
        assert_eq!(
            again,
            (2..5).map(|o| ApplyOutcome::Duplicate { original: Some(o), last_sequence: 12 }).collect::<Vec<_>>()
        );
        assert!((2..5).all(|i| m.is_visible(i)));
        assert!((7..10).all(|i| !m.is_visible(i)));
        // Records without producer info are never deduplicated.
        let plain = encode(&rec(None, "v"), None);
        assert_eq!(m.apply(10, &plain), ApplyOutcome::Appended { offset: 10 });
        assert_eq!(m.apply(11, &plain), ApplyOutcome::Appended { offset: 11 });
        // Garbage is hidden, deterministically.
        assert_eq!(m.apply(12, b"garbage"), ApplyOutcome::Invalid);
        assert!(!m.is_visible(12));
        for o in [
            ApplyOutcome::Appended { offset: 3 },
            ApplyOutcome::Invalid,
            ApplyOutcome::Duplicate { original: None, last_sequence: 4 },
            ApplyOutcome::OutOfSequence { expected: 9 },
        ] {
            assert_eq!(ApplyOutcome::decode(&o.encode()).unwrap(), o);
        }
    }

    #[test]
    fn a_record_that_skips_sequences_is_refused_and_written_once_the_gap_is_filled() {
        let mut m = PartitionMachine::new();
        // A new producer may start anywhere.
        assert_eq!(m.apply(1, &encode(&rec(None, "a"), Some((3, 100)))), ApplyOutcome::Appended { offset: 1 });
        // A pipelined batch that overtook the one before it (sequences 101..=102 not written yet).
        let ahead: Vec<Vec<u8>> = (103..105).map(|s| encode(&rec(None, "c"), Some((3, s)))).collect();
        for (i, p) in ahead.iter().enumerate() {
            assert_eq!(m.apply(2 + i as u64, p), ApplyOutcome::OutOfSequence { expected: 101 });
        }
        assert!(!m.is_visible(2) && !m.is_visible(3), "a refused record is never seen");
        assert_eq!(m.last_sequence(3), Some(100), "a refused record does not move the producer");
        // The missing batch, then the refused one again: both written, in sequence order.
        for (i, s) in (101..103).enumerate() {
            let offset = 4 + i as u64;
            assert_eq!(m.apply(offset, &encode(&rec(None, "b"), Some((3, s)))), ApplyOutcome::Appended { offset });
        }
        for (i, p) in ahead.iter().enumerate() {
            let offset = 6 + i as u64;
            assert_eq!(m.apply(offset, p), ApplyOutcome::Appended { offset });
        }
        assert_eq!(m.last_sequence(3), Some(104));
        // Another producer is independent.
        assert_eq!(m.apply(8, &encode(&rec(None, "x"), Some((4, 7)))), ApplyOutcome::Appended { offset: 8 });
    }

    #[test]
    fn window_forgets_old_sequences() {
        let mut m = PartitionMachine::new();
        for seq in 0..(DEDUP_WINDOW as u64 + 10) {
            m.apply(seq + 1, &encode(&rec(None, "v"), Some((1, seq))));
        }
        let old = encode(&rec(None, "v"), Some((1, 0)));
        assert_eq!(
            m.apply(DEDUP_WINDOW as u64 + 100, &old),
            ApplyOutcome::Duplicate { original: None, last_sequence: DEDUP_WINDOW as u64 + 9 }
        );
        assert_eq!(m.known_retry(1, 0, 1), None);
    }

    #[test]
    fn snapshot_round_trips_and_replays_identically() {
        let payloads: Vec<Vec<u8>> = (0..50u64).map(|i| encode(&rec(None, "v"), Some((i % 4, i / 3)))).collect();
        let mut a = PartitionMachine::new();
        for (i, p) in payloads.iter().enumerate() {
            a.apply(i as u64 + 1, p);
        }
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
        let mut pruned = a.clone();
        pruned.prune_hidden_below(u64::MAX);
        assert!((1..=50).all(|i| pruned.is_visible(i)));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_record() -> impl Strategy<Value = ProduceRecord> {
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                proptest::collection::vec(any::<u8>(), 0..512),
                proptest::collection::vec(("[a-z]{0,12}", proptest::collection::vec(any::<u8>(), 0..32)), 0..5),
            )
                .prop_map(|(key, value, headers)| ProduceRecord {
                    key: key.map(Bytes::from),
                    value: Bytes::from(value),
                    headers: headers.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
                    timestamp_ms: None,
                })
        }

        proptest! {
            #[test]
            fn record_round_trip(r in arb_record(), ts in any::<u64>(), producer in proptest::option::of(any::<(u64, u64)>()), codec in 0u8..3) {
                let kind = [shale_storage::CodecKind::None, shale_storage::CodecKind::Lz4, shale_storage::CodecKind::Zstd { level: 1 }][codec as usize];
                let bytes = encode_record(&r, ts, producer, kind.codec().as_ref());
                let back = decode_record(&bytes, &CodecRegistry::new()).unwrap();
                prop_assert_eq!(back.key, r.key);
                prop_assert_eq!(back.value, r.value);
                prop_assert_eq!(back.headers, r.headers);
                prop_assert_eq!(back.timestamp_ms, ts);
                prop_assert_eq!(back.producer, producer);
            }

            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_record(&bytes, &CodecRegistry::new());
                let _ = peek_producer(&bytes);
                let _ = PartitionMachine::decode(&bytes);
                let _ = ApplyOutcome::decode(&bytes);
            }

            /// Whatever producers send, in whatever order: each (producer, sequence) is visible at
            /// most once, visible sequences of a producer follow each other without a gap (after
            /// the first) and increase with the offset, every duplicate names the offset its
            /// sequence was first written at (when remembered), and every record that skips a
            /// sequence is refused naming the next one.
            #[test]
            fn dedup_model(ops in proptest::collection::vec((0u64..3, 0u64..20), 1..200)) {
                let mut m = PartitionMachine::new();
                let mut first_offset: BTreeMap<(u64, u64), u64> = BTreeMap::new();
                let mut last: BTreeMap<u64, u64> = BTreeMap::new();
                for (i, (pid, seq)) in ops.iter().enumerate() {
                    let index = i as u64 + 1;
                    let payload = encode_record(&ProduceRecord::default(), 0, Some((*pid, *seq)), &NoneCodec);
                    let outcome = m.apply(index, &payload);
                    match last.get(pid).copied() {
                        Some(l) if *seq <= l => {
                            prop_assert!(!m.is_visible(index));
                            match outcome {
                                ApplyOutcome::Duplicate { original, last_sequence } => {
                                    prop_assert_eq!(last_sequence, l);
                                    prop_assert_eq!(original, first_offset.get(&(*pid, *seq)).copied());
                                }
                                other => prop_assert!(false, "expected a duplicate, got {:?}", other),
                            }
                        }
                        Some(l) if *seq > l + 1 => {
                            prop_assert!(!m.is_visible(index));
                            prop_assert_eq!(outcome, ApplyOutcome::OutOfSequence { expected: l + 1 });
                        }
                        _ => {
                            prop_assert_eq!(outcome, ApplyOutcome::Appended { offset: index });
                            prop_assert!(m.is_visible(index));
                            first_offset.insert((*pid, *seq), index);
                            last.insert(*pid, *seq);
                        }
                    }
                }
                let restored = PartitionMachine::decode(&m.encode()).unwrap();
                prop_assert_eq!(restored, m);
            }
        }
    }
}
