//! The record batch: how a producer's batch of records is stored in one Raft entry of a partition
//! group, travels to consumers in a fetch, and is decoded by a client.
//!
//! Like Kafka's RecordBatch, a batch carries its base offset (record `i` has offset
//! `base_offset + i`), the idempotent producer's id and base sequence, and its records compressed
//! as one block. The batch is the body of a normal Raft entry (see [`envelope`]); the chain hash of
//! that entry covers the envelope and the batch exactly as stored, so a client that has the stored
//! bytes and the hash before them can recompute it ([`crate::chain_hash`]).
//!
//! Pure: no I/O. Here (not in `shale-raft`) because the client decodes batches too, and every Shale
//! crate can depend on this one. Layout (little-endian, tabled in docs/format.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic [`MAGIC`] |
//! | 2 | 1 | format version: [`VERSION_PLAIN`], or [`VERSION`] with [`FLAG_KAFKA_BATCH`] |
//! | 3 | 1 | flags: bit 0 [`FLAG_PRODUCER`] (producer id and base sequence are meaningful), bit 1 [`FLAG_KAFKA_BATCH`] (version 2: the records block is a whole Kafka v2 record batch) |
//! | 4 | 8 | base offset (assigned by the partition leader) |
//! | 12 | 4 | record count n (>= 1) |
//! | 16 | 8 | producer id (0 without [`FLAG_PRODUCER`]) |
//! | 24 | 8 | base sequence (0 without [`FLAG_PRODUCER`]) |
//! | 32 | 8 | first record's timestamp, ms since the Unix epoch |
//! | 40 | 8 | largest record timestamp |
//! | 48 | 1 | codec id of the records block ([`CodecId`]) |
//! | 49 | 4 | records block length, uncompressed |
//! | 53 | 4 | records block length as stored (L) |
//! | 57 | L | records block (compressed unless the codec id is none) |
//!
//! The records block holds the n records back to back, each:
//!
//! | size | field |
//! |---|---|
//! | 1 | attributes: bit 0 [`RECORD_HAS_KEY`] |
//! | 8 | timestamp, ms since the Unix epoch |
//! | 4 + k | key length k and key (only with [`RECORD_HAS_KEY`]) |
//! | 2 | header count h (<= [`limits::MAX_HEADERS`]) |
//! | h x (2 + a + 4 + b) | header name length a, name (UTF-8), value length b, value |
//! | 4 + v | value length v and value |
//!
//! With [`FLAG_KAFKA_BATCH`] the records block is instead one Kafka v2 record batch exactly as a
//! Kafka producer sent it (its base offset and leader epoch set in place: [`crate::kafka_batch`]),
//! stored with codec id none (the Kafka batch carries its own compression), so a Kafka fetch
//! returns it without re-encoding; [`decode_batch`] decodes its records for every other reader.

use bytes::Bytes;

use crate::byteio::{ByteError, ByteErrorKind, ByteReader, ByteWriter};
use crate::codec::{Codec, CodecError, CodecId, CodecRegistry, compress_payload};
use crate::{kafka_batch, limits};

/// `"SB"` little-endian: Shale batch.
pub const MAGIC: u16 = 0x4253;
/// The newest batch layout version, written for a batch with [`FLAG_KAFKA_BATCH`].
pub const VERSION: u8 = 2;
/// The version written for every other batch: its layout is version 1's, so a node of a build
/// that reads only version 1 still reads it (a mixed-version cluster diverges only on Kafka
/// batches kept as sent).
pub const VERSION_PLAIN: u8 = 1;
/// The oldest batch layout version read.
pub const MIN_VERSION: u8 = 1;
/// Flag: the batch was written by an idempotent producer.
pub const FLAG_PRODUCER: u8 = 1;
/// Flag (version 2): the records block is a whole Kafka v2 record batch ([`crate::kafka_batch`]).
pub const FLAG_KAFKA_BATCH: u8 = 2;
/// Every flag this version knows.
pub const KNOWN_FLAGS: u8 = FLAG_PRODUCER | FLAG_KAFKA_BATCH;
/// Record attribute: the record has a key.
pub const RECORD_HAS_KEY: u8 = 1;

crate::offsets! {
    /// Offset of the magic.
    MAGIC_AT: u16,
    /// Offset of the version byte.
    VERSION_AT: u8,
    /// Offset of the flags byte.
    FLAGS_AT: u8,
    /// Offset of the base offset (the leader writes it in place: [`set_base_offset`]).
    BASE_OFFSET_AT: u64,
    /// Offset of the record count.
    COUNT_AT: u32,
    /// Offset of the producer id.
    PRODUCER_ID_AT: u64,
    /// Offset of the base sequence.
    BASE_SEQUENCE_AT: u64,
    /// Offset of the first timestamp.
    FIRST_TIMESTAMP_AT: u64,
    /// Offset of the largest timestamp.
    MAX_TIMESTAMP_AT: u64,
    /// Offset of the codec id.
    CODEC_AT: u8,
    /// Offset of the uncompressed records length.
    RAW_LEN_AT: u32,
    /// Offset of the stored records length.
    STORED_LEN_AT: u32,
    /// Length of the fixed header; the records block starts here.
    HEADER_LEN,
}

/// Bytes a keyless record takes in the records block besides its value and header names and values
/// (a key adds 4 + its length).
pub const RECORD_FRAMING: usize = 1 + 8 + 2 + 4;
/// Framing per header.
pub const HEADER_FRAMING: usize = 2 + 4;
/// The smallest encoded record (no key, no headers, empty value).
const MIN_RECORD_LEN: usize = RECORD_FRAMING;

/// The Raft entry envelope a batch travels in: what a client needs to find the batch in a stored
/// entry (the full layout is `shale-raft`'s `format::entry`, which asserts these values).
pub mod envelope {
    /// Offset of the entry's kind byte.
    pub const KIND_AT: usize = 1;
    /// Kind of a normal entry (its body is a record batch in a partition group).
    pub const KIND_NORMAL: u8 = 1;
    /// Offset of the entry's log index (u64 little-endian); it must equal the entry's position in
    /// the log, which the chain hash does not cover by itself.
    pub const INDEX_AT: usize = 18;

    /// The log index an envelope names, if `data` is long enough to hold one.
    pub fn index(data: &[u8]) -> Option<u64> {
        let bytes: [u8; 8] = data.get(INDEX_AT..INDEX_AT + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }
    /// Length of the envelope; the body (the batch) starts here.
    pub const HEADER_LEN: usize = 26;
}

/// A record to put in a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers, in order (names need not be unique).
    pub headers: Vec<(String, Bytes)>,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl NewRecord {
    /// The record's length in the records block.
    pub fn encoded_len(&self) -> usize {
        RECORD_FRAMING
            + self.key.as_ref().map_or(0, |k| 4 + k.len())
            + self.value.len()
            + self.headers.iter().map(|(n, v)| HEADER_FRAMING + n.len() + v.len()).sum::<usize>()
    }
}

/// A record decoded from a batch. Its bytes share the batch's (decompressed) buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    /// `base_offset + position`.
    pub offset: u64,
    /// Position in the batch (0-based).
    pub position: u32,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Headers in order.
    pub headers: Vec<(String, Bytes)>,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The fixed header of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records (>= 1).
    pub record_count: u32,
    /// `(producer_id, base_sequence)` of an idempotent producer's batch.
    pub producer: Option<(u64, u64)>,
    /// The first record's timestamp.
    pub first_timestamp_ms: u64,
    /// The largest record timestamp.
    pub max_timestamp_ms: u64,
    /// How the records block is stored.
    pub codec: CodecId,
    /// Records block length, uncompressed.
    pub raw_len: u32,
    /// Records block length as stored.
    pub stored_len: u32,
    /// The records block is a whole Kafka v2 record batch ([`FLAG_KAFKA_BATCH`]).
    pub kafka_batch: bool,
}

impl BatchHeader {
    /// One past the last record's offset.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// The sequence of the batch's last record, for an idempotent producer's batch.
    pub fn last_sequence(&self) -> Option<u64> {
        self.producer.map(|(_, base)| base + u64::from(self.record_count) - 1)
    }
}

/// Why bytes are not a batch this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The framing is wrong: truncated, a length over its limit, trailing bytes, bad UTF-8.
    #[error("record batch: {0}")]
    Malformed(#[from] ByteError),
    /// The magic or version is not this build's.
    #[error(
        "record batch: magic {magic:#06x} version {version}, this build reads {MAGIC:#06x} versions {MIN_VERSION} to {VERSION}"
    )]
    UnknownFormat {
        /// The magic found.
        magic: u16,
        /// The version found.
        version: u8,
    },
    /// A field holds a value no writer produces.
    #[error("record batch: invalid {field} {value}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The records block names a codec this build does not have.
    #[error("record batch at offset {base_offset}: unknown codec id {codec}")]
    UnknownCodec {
        /// The batch's base offset.
        base_offset: u64,
        /// The codec id.
        codec: u8,
    },
    /// The records block does not decompress to its declared length.
    #[error("record batch at offset {base_offset}: {source}")]
    Codec {
        /// The batch's base offset.
        base_offset: u64,
        /// What the codec said.
        source: CodecError,
    },
}

/// Encodes `records` (at least one, each within [`limits::MAX_RECORD_BYTES`] as the node's edge
/// checked) as a batch at `base_offset`, compressing the records block with `codec` when that makes
/// it smaller. The leader may later move the batch with [`set_base_offset`].
///
/// The records are written once, straight into the batch buffer (their bytes are copied exactly
/// once from the caller's buffers); a smaller compressed block then replaces them in place.
pub fn encode_batch(
    records: &[NewRecord],
    base_offset: u64,
    producer: Option<(u64, u64)>,
    codec: &dyn Codec,
) -> Vec<u8> {
    debug_assert!(!records.is_empty() && records.len() <= u32::MAX as usize, "{} records", records.len());
    let raw_len: usize = records.iter().map(NewRecord::encoded_len).sum();
    debug_assert!(raw_len <= u32::MAX as usize);
    let first_ts = records[0].timestamp_ms;
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(first_ts);
    let (flags, (producer_id, base_sequence)) = match producer {
        Some(p) => (FLAG_PRODUCER, p),
        None => (0, (0, 0)),
    };
    let mut w = ByteWriter::with_capacity(HEADER_LEN + raw_len);
    w.u16(MAGIC).u8(VERSION_PLAIN).u8(flags).u64(base_offset).u32(records.len() as u32);
    w.u64(producer_id).u64(base_sequence).u64(first_ts).u64(max_ts);
    // Codec and stored length are filled in below, once the block's fate is known.
    w.u8(CodecId::NONE.0).u32(raw_len as u32).u32(raw_len as u32);
    debug_assert_eq!(w.len(), HEADER_LEN);
    for r in records {
        debug_assert!(r.headers.len() <= limits::MAX_HEADERS);
        w.u8(if r.key.is_some() { RECORD_HAS_KEY } else { 0 }).u64(r.timestamp_ms);
        if let Some(key) = &r.key {
            w.bytes32(key);
        }
        w.u16(r.headers.len() as u16);
        for (name, value) in &r.headers {
            w.str16(name).bytes32(value);
        }
        w.bytes32(&r.value);
    }
    let mut batch = w.finish();
    debug_assert_eq!(batch.len(), HEADER_LEN + raw_len);
    if let (codec_id, Some(compressed)) = compress_payload(codec, &batch[HEADER_LEN..]) {
        batch.truncate(HEADER_LEN);
        batch.extend_from_slice(&compressed);
        batch[CODEC_AT] = codec_id.0;
        batch[STORED_LEN_AT..STORED_LEN_AT + 4].copy_from_slice(&(compressed.len() as u32).to_le_bytes());
    }
    batch
}

/// The largest batch one record within the limits makes: a record of [`limits::MAX_RECORD_BYTES`]
/// of key, value and header bytes, with a key and the most headers, stored uncompressed.
pub const MAX_SINGLE_RECORD_BATCH_BYTES: usize =
    HEADER_LEN + RECORD_FRAMING + 4 + limits::MAX_HEADERS * HEADER_FRAMING + limits::MAX_RECORD_BYTES;

// A batch of one record at the edge's largest `max_record_bytes` fits one Raft payload (the table
// in `limits`), so the leader can always store a record, however it splits a request into batches.
const _: () = assert!(MAX_SINGLE_RECORD_BATCH_BYTES <= limits::RAFT_PAYLOAD_BYTES);

/// Encodes a batch whose records block is `kafka`, one whole Kafka v2 record batch of
/// `record_count` records that the node checked (its CRC, its records, the limits) and that
/// [`kafka_batch::decode_header`] accepts, copied once and stored as sent ([`FLAG_KAFKA_BATCH`]),
/// with `base_offset` written into both headers. `timestamps` are the first record's and the
/// largest; `producer` as for [`encode_batch`].
pub fn encode_kafka_batch(
    kafka: &[u8],
    base_offset: u64,
    record_count: u32,
    producer: Option<(u64, u64)>,
    timestamps: (u64, u64),
) -> Vec<u8> {
    debug_assert!(kafka_batch::decode_header(kafka).is_ok_and(|h| h.record_count as u32 == record_count));
    debug_assert!(kafka.len() <= limits::STORAGE_RECORD_BYTES);
    let (flags, (producer_id, base_sequence)) = match producer {
        Some(p) => (FLAG_PRODUCER | FLAG_KAFKA_BATCH, p),
        None => (FLAG_KAFKA_BATCH, (0, 0)),
    };
    let mut w = ByteWriter::with_capacity(HEADER_LEN + kafka.len());
    w.u16(MAGIC).u8(VERSION).u8(flags).u64(base_offset).u32(record_count);
    w.u64(producer_id).u64(base_sequence).u64(timestamps.0).u64(timestamps.1);
    w.u8(CodecId::NONE.0).u32(kafka.len() as u32).u32(kafka.len() as u32);
    debug_assert_eq!(w.len(), HEADER_LEN);
    let mut batch = w.finish();
    batch.extend_from_slice(kafka);
    set_base_offset(&mut batch, base_offset);
    batch
}

/// Rewrites the base offset of an encoded batch in place (and of the Kafka batch it holds, with
/// [`FLAG_KAFKA_BATCH`]).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    debug_assert!(batch.len() >= HEADER_LEN, "not a batch");
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
    if batch[FLAGS_AT] & FLAG_KAFKA_BATCH != 0 {
        kafka_batch::place(&mut batch[HEADER_LEN..], base_offset);
    }
}

/// Decodes the fixed header, checking that the stored records block is exactly what follows it.
/// Cheap: the records are not read (apply uses this).
pub fn decode_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let mut r = ByteReader::new("record batch", bytes);
    let magic = r.u16()?;
    let version = r.u8()?;
    if magic != MAGIC || !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(BatchError::UnknownFormat { magic, version });
    }
    let flags = r.u8()?;
    let known = if version < VERSION { FLAG_PRODUCER } else { KNOWN_FLAGS };
    if flags & !known != 0 {
        return Err(BatchError::InvalidField { field: "flags", value: u64::from(flags) });
    }
    let base_offset = r.u64()?;
    let record_count = r.u32()?;
    if record_count == 0 {
        return Err(BatchError::InvalidField { field: "record count", value: 0 });
    }
    if base_offset.checked_add(u64::from(record_count)).is_none() {
        return Err(BatchError::InvalidField { field: "base offset", value: base_offset });
    }
    let producer_id = r.u64()?;
    let base_sequence = r.u64()?;
    let producer = if flags & FLAG_PRODUCER != 0 {
        if base_sequence.checked_add(u64::from(record_count)).is_none() {
            return Err(BatchError::InvalidField { field: "base sequence", value: base_sequence });
        }
        Some((producer_id, base_sequence))
    } else {
        None
    };
    let first_timestamp_ms = r.u64()?;
    let max_timestamp_ms = r.u64()?;
    let codec = CodecId(r.u8()?);
    let raw_len = r.u32_at_most("records length", limits::STORAGE_RECORD_BYTES as u64)?;
    let stored_len = r.u32_at_most("stored records length", limits::STORAGE_RECORD_BYTES as u64)?;
    debug_assert_eq!(r.position(), HEADER_LEN);
    if r.remaining() != stored_len as usize {
        r.require(stored_len as usize)?;
        return Err(ByteError {
            what: "record batch",
            kind: ByteErrorKind::TrailingBytes { extra: r.remaining() - stored_len as usize },
        }
        .into());
    }
    if codec == CodecId::NONE && raw_len != stored_len {
        return Err(BatchError::InvalidField { field: "records length", value: u64::from(raw_len) });
    }
    let kafka_batch = flags & FLAG_KAFKA_BATCH != 0;
    if kafka_batch && codec != CodecId::NONE {
        return Err(BatchError::InvalidField { field: "codec of a Kafka batch", value: u64::from(codec.0) });
    }
    Ok(BatchHeader {
        base_offset,
        record_count,
        producer,
        first_timestamp_ms,
        max_timestamp_ms,
        codec,
        raw_len,
        stored_len,
        kafka_batch,
    })
}

/// Decodes a whole batch: its header and every record, decompressing the records block with the
/// codec it names. Every length is checked; hostile input is an error, never a panic or an
/// allocation past what the input declares within the limits.
pub fn decode_batch(bytes: &Bytes, codecs: &CodecRegistry) -> Result<(BatchHeader, Vec<BatchRecord>), BatchError> {
    let header = decode_header(bytes)?;
    let stored = bytes.slice(HEADER_LEN..);
    if header.kafka_batch {
        let records = kafka_batch::decode_records(&stored, header.base_offset, header.record_count)?;
        return Ok((header, records));
    }
    let block = if header.codec == CodecId::NONE {
        stored
    } else {
        let codec = codecs
            .get(header.codec)
            .ok_or(BatchError::UnknownCodec { base_offset: header.base_offset, codec: header.codec.0 })?;
        let raw = codec
            .decompress(&stored, header.raw_len as usize)
            .map_err(|source| BatchError::Codec { base_offset: header.base_offset, source })?;
        Bytes::from(raw)
    };
    let records = decode_records(&header, &block)?;
    Ok((header, records))
}

/// The offset of the first record of the batch `bytes` whose timestamp is at or after
/// `timestamp_ms`, `None` if every record is older. Kafka's "offset for a time" within one batch:
/// a reader that found the first batch whose largest timestamp ([`BatchHeader::max_timestamp_ms`])
/// reaches the time asks this for the record. Records are in offset order, not time order, so the
/// answer is the first in offset order. A header alone answers `None` without decoding the
/// records when its largest timestamp is older.
pub fn offset_for_time(bytes: &Bytes, codecs: &CodecRegistry, timestamp_ms: u64) -> Result<Option<u64>, BatchError> {
    if decode_header(bytes)?.max_timestamp_ms < timestamp_ms {
        return Ok(None);
    }
    let (_, records) = decode_batch(bytes, codecs)?;
    Ok(records.iter().find(|r| r.timestamp_ms >= timestamp_ms).map(|r| r.offset))
}

fn decode_records(header: &BatchHeader, block: &Bytes) -> Result<Vec<BatchRecord>, BatchError> {
    let mut r = ByteReader::new("record batch records", block);
    let count = r.count("record count", u64::from(header.record_count), u32::MAX as usize, MIN_RECORD_LEN)?;
    let max = limits::MAX_RECORD_BYTES as u64;
    let slice = |s: &[u8]| block.slice_ref(s);
    let mut records = Vec::with_capacity(count);
    for position in 0..header.record_count {
        let attributes = r.u8()?;
        if attributes & !RECORD_HAS_KEY != 0 {
            return Err(BatchError::InvalidField { field: "record attributes", value: u64::from(attributes) });
        }
        let timestamp_ms = r.u64()?;
        let key = if attributes & RECORD_HAS_KEY != 0 { Some(slice(r.bytes32("key length", max)?)) } else { None };
        let raw = u64::from(r.u16()?);
        let n = r.count("header count", raw, limits::MAX_HEADERS, HEADER_FRAMING)?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.str16("header name length", limits::MAX_HEADER_NAME_BYTES as u64)?.to_owned();
            let value = slice(r.bytes32("header value length", max)?);
            headers.push((name, value));
        }
        let value = slice(r.bytes32("value length", max)?);
        records.push(BatchRecord {
            offset: header.base_offset + u64::from(position),
            position,
            key,
            value,
            headers,
            timestamp_ms,
        });
    }
    r.expect_end()?;
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecKind;

    #[test]
    fn offset_for_time_is_the_first_record_at_or_after_the_time_in_offset_order() {
        let at = |ts: u64| NewRecord { value: Bytes::from_static(b"v"), timestamp_ms: ts, ..NewRecord::default() };
        // Out of time order: offsets 10..15 with timestamps 5, 30, 20, 40, 10.
        let records: Vec<NewRecord> = [5, 30, 20, 40, 10].into_iter().map(at).collect();
        let codecs = CodecRegistry::default();
        for codec in [CodecKind::None.codec(), CodecKind::Zstd { level: 3 }.codec()] {
            let batch = Bytes::from(encode_batch(&records, 10, None, codec.as_ref()));
            let find = |ts| offset_for_time(&batch, &codecs, ts).unwrap();
            assert_eq!(find(0), Some(10));
            assert_eq!(find(5), Some(10));
            assert_eq!(find(6), Some(11));
            assert_eq!(find(25), Some(11), "the first in offset order, not the closest in time");
            assert_eq!(find(31), Some(13));
            assert_eq!(find(40), Some(13));
            assert_eq!(find(41), None);
        }
        assert!(offset_for_time(&Bytes::from_static(b"junk"), &codecs, 0).is_err());
    }

    fn record(i: usize, size: usize) -> NewRecord {
        NewRecord {
            key: (!i.is_multiple_of(3)).then(|| Bytes::from(format!("key-{i}"))),
            value: Bytes::from(format!("value {i} ").repeat(size / 8 + 1)),
            headers: (0..i % 4).map(|h| (format!("h{h}"), Bytes::from(vec![h as u8; h]))).collect(),
            timestamp_ms: 1_700_000_000_000 + (i as u64 * 7) % 13,
        }
    }

    const KINDS: [CodecKind; 3] = [CodecKind::None, CodecKind::Lz4, CodecKind::Zstd { level: 3 }];

    #[test]
    fn batches_of_mixed_sizes_round_trip_through_every_codec() {
        let codecs = CodecRegistry::new();
        for kind in KINDS {
            for (count, size) in [(1, 0), (1, 5000), (7, 100), (300, 1024), (2, 200_000)] {
                let records: Vec<NewRecord> = (0..count).map(|i| record(i, size * (i % 3 + 1) / 2)).collect();
                let bytes = Bytes::from(encode_batch(&records, 42, Some((9, 100)), kind.codec().as_ref()));
                let (h, back) = decode_batch(&bytes, &codecs).unwrap();
                assert_eq!((h.base_offset, h.record_count, h.producer), (42, count as u32, Some((9, 100))));
                assert_eq!(h.end_offset(), 42 + count as u64);
                assert_eq!(h.last_sequence(), Some(100 + count as u64 - 1));
                assert_eq!(h.first_timestamp_ms, records[0].timestamp_ms);
                assert_eq!(h.max_timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap());
                assert_eq!(back.len(), count);
                for (i, (a, b)) in records.iter().zip(&back).enumerate() {
                    assert_eq!((b.offset, b.position), (42 + i as u64, i as u32));
                    assert_eq!(
                        (&b.key, &b.value, &b.headers, b.timestamp_ms),
                        (&a.key, &a.value, &a.headers, a.timestamp_ms)
                    );
                }
                assert_eq!(decode_header(&bytes).unwrap(), h);
            }
        }
        let compressible: Vec<NewRecord> = (0..100).map(|i| record(i, 1000)).collect();
        let raw = encode_batch(&compressible, 0, None, &crate::codec::NoneCodec).len();
        let zstd = encode_batch(&compressible, 0, None, CodecKind::Zstd { level: 3 }.codec().as_ref()).len();
        assert!(zstd * 4 < raw, "the records block is compressed as one: {zstd} vs {raw}");
    }

    #[test]
    fn the_leader_moves_a_batch_in_place() {
        let mut bytes = encode_batch(&[record(1, 10)], 0, None, &crate::codec::NoneCodec);
        set_base_offset(&mut bytes, 1 << 40);
        let (h, recs) = decode_batch(&Bytes::from(bytes), &CodecRegistry::new()).unwrap();
        assert_eq!((h.base_offset, h.producer, recs[0].offset), (1 << 40, None, 1 << 40));
    }

    #[test]
    fn every_cut_and_every_damaged_header_is_a_typed_error() {
        let codecs = CodecRegistry::new();
        for kind in KINDS {
            let records: Vec<NewRecord> = (0..5).map(|i| record(i, 300)).collect();
            let bytes = encode_batch(&records, 7, Some((1, 2)), kind.codec().as_ref());
            for cut in 0..bytes.len() {
                assert!(decode_batch(&Bytes::copy_from_slice(&bytes[..cut]), &codecs).is_err(), "cut at {cut}");
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(decode_batch(&Bytes::from(trailing), &codecs).is_err());
            let mut zero = bytes.clone();
            zero[COUNT_AT..COUNT_AT + 4].copy_from_slice(&0u32.to_le_bytes());
            assert!(matches!(decode_header(&zero), Err(BatchError::InvalidField { field: "record count", .. })));
            let mut more = bytes.clone();
            more[COUNT_AT..COUNT_AT + 4].copy_from_slice(&6u32.to_le_bytes());
            assert!(decode_batch(&Bytes::from(more), &codecs).is_err(), "a count past the records");
            let mut flags = bytes.clone();
            flags[FLAGS_AT] = 0x80;
            assert!(matches!(decode_header(&flags), Err(BatchError::InvalidField { field: "flags", .. })));
            let mut version = bytes.clone();
            version[VERSION_AT] = 9;
            assert!(matches!(decode_header(&version), Err(BatchError::UnknownFormat { version: 9, .. })));
        }
        let mut codec = encode_batch(&[record(1, 10)], 3, None, &crate::codec::NoneCodec);
        codec[CODEC_AT] = 77;
        // A NONE batch relabelled: raw and stored lengths agree, so the codec id is what fails.
        assert!(matches!(
            decode_batch(&Bytes::from(codec), &codecs),
            Err(BatchError::UnknownCodec { base_offset: 3, codec: 77 })
        ));
    }

    #[test]
    fn the_layout_is_the_documented_table() {
        assert_eq!(
            (BASE_OFFSET_AT, COUNT_AT, PRODUCER_ID_AT, BASE_SEQUENCE_AT, FIRST_TIMESTAMP_AT),
            (4, 12, 16, 24, 32)
        );
        assert_eq!((MAX_TIMESTAMP_AT, CODEC_AT, RAW_LEN_AT, STORED_LEN_AT, HEADER_LEN), (40, 48, 49, 53, 57));
        let r = record(2, 10);
        let block_len = encode_batch(std::slice::from_ref(&r), 0, None, &crate::codec::NoneCodec).len() - HEADER_LEN;
        assert_eq!(block_len, r.encoded_len());
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_record() -> impl Strategy<Value = NewRecord> {
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                proptest::collection::vec(any::<u8>(), 0..600),
                proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..16)), 0..4),
                any::<u64>(),
            )
                .prop_map(|(key, value, headers, timestamp_ms)| NewRecord {
                    key: key.map(Bytes::from),
                    value: Bytes::from(value),
                    headers: headers.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
                    timestamp_ms,
                })
        }

        proptest! {
            #[test]
            fn round_trip(records in proptest::collection::vec(arb_record(), 1..20), base in 0u64..1 << 50,
                          producer in proptest::option::of((any::<u64>(), 0u64..1 << 50)), codec in 0usize..3) {
                let bytes = Bytes::from(encode_batch(&records, base, producer, KINDS[codec].codec().as_ref()));
                let (h, back) = decode_batch(&bytes, &CodecRegistry::new()).unwrap();
                prop_assert_eq!((h.base_offset, h.record_count as usize, h.producer), (base, records.len(), producer));
                for (a, b) in records.iter().zip(&back) {
                    prop_assert_eq!((&a.key, &a.value, &a.headers, a.timestamp_ms), (&b.key, &b.value, &b.headers, b.timestamp_ms));
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = decode_batch(&Bytes::from(bytes), &CodecRegistry::new());
            }

            #[test]
            fn a_flipped_byte_never_panics(records in proptest::collection::vec(arb_record(), 1..5), at in any::<prop::sample::Index>(), bit in 0u8..8, codec in 0usize..3) {
                let mut bytes = encode_batch(&records, 0, None, KINDS[codec].codec().as_ref());
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
                let _ = decode_batch(&Bytes::from(bytes), &CodecRegistry::new());
            }
        }
    }
}
