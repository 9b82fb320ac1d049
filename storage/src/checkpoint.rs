//! Checkpoints: a stream's chain state at an offset, plus optional caller bytes.
//!
//! A checkpoint at offset `n` says "the records before `n` hash to `chain_hash`" (the hash of record
//! `n - 1`, or [`ChainHash::ZERO`] at 0). It consumes no offset and is not part of the data chain,
//! so replicas that checkpoint at different moments still agree on every chain hash. It anchors
//! verification once the records below it are compacted away: record `n`'s `prev_hash` must equal
//! the checkpoint's `chain_hash`. The Raft layer stores its snapshot state in `data`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::byteio::{ByteError, ByteReader, ByteWriter};
use crate::error::{CorruptionReason, Result, StorageError};
use crate::format::checkpoint as layout;
use crate::types::{ChainHash, Offset, StreamId};

/// The chain state of a stream at one offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next offset at checkpoint time: the checkpoint covers every record below it.
    pub offset: Offset,
    /// The chain hash of record `offset - 1` ([`ChainHash::ZERO`] when `offset` is 0).
    pub chain_hash: ChainHash,
    /// Records covered since offset 0 (equal to `offset`: streams have no gaps).
    pub record_count: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Caller bytes (the Raft layer's snapshot state); empty if none.
    pub data: Bytes,
}

impl Checkpoint {
    /// A checkpoint stamped with the current time.
    pub fn new(offset: Offset, chain_hash: ChainHash, data: Bytes) -> Self {
        let created_at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self { offset, chain_hash, record_count: offset.get(), created_at_ms, data }
    }
}

/// When the storage writes a checkpoint on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointPolicy {
    /// Only when asked ([`crate::StorageBackend::create_checkpoint`]).
    Manual,
    /// After every `n` records appended since the last checkpoint.
    EveryRecords(u64),
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy::EveryRecords(1000)
    }
}

/// Whether `policy` asks for a checkpoint now, given the last checkpoint's offset and the next offset.
pub fn should_create_checkpoint(policy: CheckpointPolicy, last_checkpoint: Option<Offset>, next: Offset) -> bool {
    match policy {
        CheckpointPolicy::Manual => false,
        CheckpointPolicy::EveryRecords(0) => false,
        CheckpointPolicy::EveryRecords(n) => {
            let since = next.get() - last_checkpoint.map_or(0, Offset::get).min(next.get());
            since >= n
        }
    }
}

/// Rejects caller data over [`layout::MAX_DATA_LEN`] for a checkpoint at `offset`.
pub(crate) fn check_data_len(stream: StreamId, offset: Offset, len: usize) -> Result<()> {
    if len > layout::MAX_DATA_LEN {
        return Err(StorageError::InvalidCheckpoint {
            stream,
            offset,
            reason: format!("caller data is {len} bytes, over the limit of {}", layout::MAX_DATA_LEN),
        });
    }
    Ok(())
}

/// Rejects a checkpoint that no stream could install, whatever it holds: caller data over the limit,
/// an offset past the end of offsets, or a non-zero hash at offset 0 (which covers no record).
/// Both backends call this first, so they refuse the same checkpoints with the same errors.
pub(crate) fn check_installable(stream: StreamId, cp: &Checkpoint) -> Result<()> {
    check_data_len(stream, cp.offset, cp.data.len())?;
    if cp.offset > crate::format::MAX_OFFSET {
        return Err(StorageError::InvalidCheckpoint {
            stream,
            offset: cp.offset,
            reason: format!("offsets end at {}", crate::format::MAX_OFFSET),
        });
    }
    if cp.offset == Offset::ZERO && cp.chain_hash != ChainHash::ZERO {
        return Err(StorageError::InvalidCheckpoint {
            stream,
            offset: cp.offset,
            reason: "a checkpoint at offset 0 covers no record, so its hash must be zero".into(),
        });
    }
    Ok(())
}

/// Encodes a checkpoint into its stored form (see [`crate::format::checkpoint`]).
pub fn serialize_checkpoint_payload(cp: &Checkpoint) -> Vec<u8> {
    debug_assert!(cp.data.len() <= layout::MAX_DATA_LEN, "checkpoint data over the limit");
    let mut w = ByteWriter::with_capacity(layout::HEADER_LEN + cp.data.len() + layout::CRC_LEN);
    w.u32(layout::MAGIC).u16(layout::VERSION).u16(0).u64(cp.offset.get()).raw(&cp.chain_hash.0);
    w.u64(cp.record_count).u64(cp.created_at_ms).u32(cp.data.len() as u32);
    debug_assert_eq!(w.len(), layout::HEADER_LEN);
    w.raw(&cp.data).crc();
    w.finish()
}

/// Decodes a stored checkpoint, checking magic, version, lengths and CRC.
///
/// `stream` and `file` only label the error.
pub fn deserialize_checkpoint_payload(bytes: &[u8], stream: StreamId, file: &str) -> Result<Checkpoint> {
    let corrupt = |position: usize, reason: CorruptionReason| StorageError::Corruption {
        stream,
        file: file.to_string(),
        position: position as u64,
        offset: None,
        reason,
    };
    let mut r = ByteReader::new("checkpoint", bytes);
    // The header up to its data length, or an error that a whole header and CRC are needed.
    let header = |r: &mut ByteReader<'_>| -> std::result::Result<_, ByteError> {
        r.require(layout::HEADER_LEN + layout::CRC_LEN)?;
        Ok((r.u32()?, r.u16()?, r.u16()?, r.u64()?, r.array::<32>()?, r.u64()?, r.u64()?))
    };
    let (magic, version, _flags, offset, chain_hash, record_count, created_at_ms) =
        header(&mut r).map_err(|e| corrupt(0, e.into()))?;
    if magic != layout::MAGIC {
        return Err(corrupt(
            layout::MAGIC_AT,
            CorruptionReason::InvalidField { field: "checkpoint magic", value: u64::from(magic) },
        ));
    }
    if version != layout::VERSION {
        return Err(corrupt(
            layout::VERSION_AT,
            CorruptionReason::InvalidField { field: "checkpoint version", value: u64::from(version) },
        ));
    }
    // The data must leave room for the CRC after it.
    let limit = bytes.len().saturating_sub(layout::HEADER_LEN + layout::CRC_LEN).min(layout::MAX_DATA_LEN);
    let data_len =
        r.u32_at_most("checkpoint data length", limit as u64).map_err(|e| corrupt(layout::DATA_LEN_AT, e.into()))?;
    let data = r.bytes(data_len as usize).map_err(|e| corrupt(layout::DATA_AT, e.into()))?;
    let covered = r.consumed();
    let crc_at = covered.len();
    let stored = r.u32().map_err(|e| corrupt(crc_at, e.into()))?;
    let computed = crc32fast::hash(covered);
    if stored != computed {
        return Err(corrupt(crc_at, CorruptionReason::CrcMismatch { stored, computed }));
    }
    Ok(Checkpoint {
        offset: Offset::new(offset),
        chain_hash: ChainHash(chain_hash),
        record_count,
        created_at_ms,
        data: Bytes::copy_from_slice(data),
    })
}

/// The in-memory sparse index of a stream's checkpoints, by offset.
#[derive(Clone, Debug, Default)]
pub struct CheckpointIndex {
    by_offset: BTreeMap<Offset, Checkpoint>,
}

impl CheckpointIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a checkpoint, replacing any at the same offset.
    pub fn insert(&mut self, cp: Checkpoint) {
        self.by_offset.insert(cp.offset, cp);
    }

    /// The checkpoint with the greatest offset `<= offset`.
    pub fn at_or_below(&self, offset: Offset) -> Option<&Checkpoint> {
        self.by_offset.range(..=offset).next_back().map(|(_, cp)| cp)
    }

    /// The checkpoint at exactly `offset`.
    pub fn get(&self, offset: Offset) -> Option<&Checkpoint> {
        self.by_offset.get(&offset)
    }

    /// The newest checkpoint.
    pub fn latest(&self) -> Option<&Checkpoint> {
        self.by_offset.values().next_back()
    }

    /// Drops checkpoints above `offset` (after a truncation to `offset`, a checkpoint at exactly
    /// `offset` still holds: it covers only records below it).
    pub fn remove_above(&mut self, offset: Offset) {
        self.by_offset.split_off(&offset.plus(1));
    }

    /// Drops checkpoints below `offset` (after compaction to log start `offset`).
    pub fn remove_below(&mut self, offset: Offset) {
        self.by_offset = self.by_offset.split_off(&offset);
    }

    /// Every checkpoint, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Checkpoint> {
        self.by_offset.values()
    }

    /// How many checkpoints are held.
    pub fn len(&self) -> usize {
        self.by_offset.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(offset: u64) -> Checkpoint {
        Checkpoint::new(Offset::new(offset), ChainHash([offset as u8; 32]), Bytes::from_static(b"state"))
    }

    #[test]
    fn payload_round_trips() {
        let c = cp(42);
        let bytes = serialize_checkpoint_payload(&c);
        assert_eq!(deserialize_checkpoint_payload(&bytes, StreamId::new(1), "t").unwrap(), c);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = serialize_checkpoint_payload(&cp(7));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(deserialize_checkpoint_payload(&bad, StreamId::new(1), "t").is_err(), "byte {i}");
        }
        for len in 0..bytes.len() {
            assert!(deserialize_checkpoint_payload(&bytes[..len], StreamId::new(1), "t").is_err());
        }
    }

    #[test]
    fn hostile_length_is_a_typed_error() {
        let mut bytes = serialize_checkpoint_payload(&cp(7));
        bytes[layout::DATA_LEN_AT..layout::DATA_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = deserialize_checkpoint_payload(&bytes, StreamId::new(1), "t").unwrap_err();
        assert!(matches!(err, StorageError::Corruption { reason: CorruptionReason::BadLength { .. }, .. }));
    }

    #[test]
    fn index_finds_nearest_at_or_below() {
        let mut idx = CheckpointIndex::new();
        for o in [0, 10, 20] {
            idx.insert(cp(o));
        }
        assert_eq!(idx.at_or_below(Offset::new(15)).unwrap().offset, Offset::new(10));
        assert_eq!(idx.at_or_below(Offset::new(20)).unwrap().offset, Offset::new(20));
        idx.remove_above(Offset::new(10));
        assert_eq!(idx.latest().unwrap().offset, Offset::new(10));
        idx.remove_below(Offset::new(5));
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn policy_counts_records_since_last() {
        let p = CheckpointPolicy::EveryRecords(1000);
        assert!(!should_create_checkpoint(p, None, Offset::new(999)));
        assert!(should_create_checkpoint(p, None, Offset::new(1000)));
        assert!(!should_create_checkpoint(p, Some(Offset::new(1000)), Offset::new(1500)));
        assert!(!should_create_checkpoint(CheckpointPolicy::Manual, None, Offset::new(1 << 40)));
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn any_checkpoint() -> impl Strategy<Value = Checkpoint> {
            (
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(offset, hash, record_count, created_at_ms, data)| Checkpoint {
                    offset: Offset::new(offset),
                    chain_hash: ChainHash(hash),
                    record_count,
                    created_at_ms,
                    data: Bytes::from(data),
                })
        }

        proptest! {
            #[test]
            fn checkpoints_round_trip(c in any_checkpoint()) {
                let b = serialize_checkpoint_payload(&c);
                prop_assert_eq!(deserialize_checkpoint_payload(&b, StreamId::new(1), "t").unwrap(), c);
            }

            /// A cut inside the header is a truncation; a cut after it leaves too few bytes for the
            /// data length it declares.
            #[test]
            fn every_truncated_checkpoint_is_a_typed_error(c in any_checkpoint()) {
                let b = serialize_checkpoint_payload(&c);
                for cut in 0..b.len() {
                    let e = deserialize_checkpoint_payload(&b[..cut], StreamId::new(1), "t").unwrap_err();
                    let StorageError::Corruption { reason, .. } = &e else { panic!("cut {cut}: {e:?}") };
                    if cut < layout::HEADER_LEN + layout::CRC_LEN {
                        let needed = (layout::HEADER_LEN + layout::CRC_LEN) as u64;
                        prop_assert_eq!(reason, &CorruptionReason::Truncated { needed, available: cut as u64 });
                    } else {
                        prop_assert!(matches!(reason, CorruptionReason::BadLength { .. }), "cut {}: {:?}", cut, e);
                    }
                }
            }

            #[test]
            fn arbitrary_checkpoints_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = deserialize_checkpoint_payload(&bytes, StreamId::new(1), "t");
            }
        }
    }
}
