//! A Kafka v2 record batch kept whole inside a Shale batch (the records block of a batch with
//! [`crate::record_batch::FLAG_KAFKA_BATCH`]): what a Kafka producer sent is stored as sent, so a
//! Kafka fetch returns it without re-encoding, and every other reader (the gRPC client, offset by
//! time) decodes its records here.
//!
//! Layout (Kafka's own: big-endian, records with zigzag varints; tabled in docs/format.md):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | base offset (equal to the Shale batch's; the leader writes both in place) |
//! | 8 | 4 | batch length: the bytes after this field |
//! | 12 | 4 | partition leader epoch (-1 as stored) |
//! | 16 | 1 | magic = 2 |
//! | 17 | 4 | CRC-32C of the bytes from offset 21 to the end (checked when the producer's batch arrived) |
//! | 21 | 2 | attributes: bits 0-2 compression (0 none, 3 lz4, 4 zstd are stored), bit 3 timestamp type (0 create time), bit 4 transactional and bit 5 control (both 0) |
//! | 23 | 4 | last offset delta (= record count - 1) |
//! | 27 | 8 | first timestamp |
//! | 35 | 8 | largest timestamp |
//! | 43 | 8 | producer id (-1: none) |
//! | 51 | 2 | producer epoch |
//! | 53 | 4 | base sequence |
//! | 57 | 4 | record count |
//! | 61 | .. | the records, compressed as a whole per the attributes |
//!
//! Each record: `[length varint][attributes i8][timestamp delta varlong][offset delta varint]
//! [key length varint (-1 null)][key][value length varint (-1 null)][value][header count varint]`
//! and per header `[name length varint][name (UTF-8)][value length varint (-1 null)][value]`.
//! Record `i` must have offset delta `i` (so offsets are dense, as Shale's), and a null value (or
//! header value) reads as empty, as Shale values are bytes, never null.

use std::io::Read;

use bytes::Bytes;

use crate::byteio::{ByteError, ByteErrorKind, ByteReader};
use crate::codec::CodecError;
use crate::limits;
use crate::record_batch::{BatchError, BatchRecord};

/// Kafka's record batch magic (format v2).
pub const MAGIC: u8 = 2;
/// Offset of the base offset (i64 big-endian).
pub const BASE_OFFSET_AT: usize = 0;
/// Offset of the batch length (i32): the bytes after it.
pub const BATCH_LENGTH_AT: usize = 8;
/// Offset of the partition leader epoch (i32).
pub const LEADER_EPOCH_AT: usize = 12;
/// Offset of the magic byte.
pub const MAGIC_AT: usize = 16;
/// Offset of the CRC-32C.
pub const CRC_AT: usize = 17;
/// Offset of the attributes (i16); the CRC covers from here to the end.
pub const ATTRIBUTES_AT: usize = 21;
/// Length of the batch header; the records start here.
pub const HEADER_LEN: usize = 61;
/// Attributes: the compression bits.
pub const COMPRESSION_MASK: i16 = 0x07;
/// Attributes: log append time instead of create time.
pub const TIMESTAMP_TYPE_BIT: i16 = 0x08;
/// Attributes: a transactional batch.
pub const TRANSACTIONAL_BIT: i16 = 0x10;
/// Attributes: a control batch.
pub const CONTROL_BIT: i16 = 0x20;

/// Kafka's compression codes a stored batch may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaCompression {
    /// 0: none.
    None,
    /// 3: LZ4 frame format.
    Lz4,
    /// 4: Zstandard.
    Zstd,
}

impl KafkaCompression {
    /// The compression of attributes bits 0-2, if it is one a stored batch may carry (gzip and
    /// snappy batches are re-encoded when produced, never stored as sent).
    pub fn from_attributes(attributes: i16) -> Option<Self> {
        match attributes & COMPRESSION_MASK {
            0 => Some(Self::None),
            3 => Some(Self::Lz4),
            4 => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Writes `base_offset` into a Kafka batch and sets its partition leader epoch to -1 (neither is
/// covered by the batch's CRC, as in Kafka, where a broker sets both in place).
pub fn place(kafka: &mut [u8], base_offset: u64) {
    debug_assert!(kafka.len() >= HEADER_LEN, "not a Kafka batch");
    kafka[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_be_bytes());
    kafka[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&(-1i32).to_be_bytes());
}

/// Big-endian fields and zigzag varints over a [`ByteReader`].
struct KafkaReader<'a> {
    r: ByteReader<'a>,
}

impl<'a> KafkaReader<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self { r: ByteReader::new(what, bytes) }
    }

    fn error(&self, kind: ByteErrorKind) -> BatchError {
        BatchError::Malformed(ByteError { what: self.r.what(), kind })
    }

    fn invalid(&self, field: &'static str, value: i64) -> BatchError {
        self.error(ByteErrorKind::InvalidField { field, value: value as u64 })
    }

    fn i16(&mut self) -> Result<i16, BatchError> {
        Ok(i16::from_be_bytes(self.r.array()?))
    }

    fn i32(&mut self) -> Result<i32, BatchError> {
        Ok(i32::from_be_bytes(self.r.array()?))
    }

    fn i64(&mut self) -> Result<i64, BatchError> {
        Ok(i64::from_be_bytes(self.r.array()?))
    }

    /// A zigzag varint of at most 10 bytes (Kafka's varlong; a varint is the same within i32).
    fn varlong(&mut self, field: &'static str) -> Result<i64, BatchError> {
        let mut raw = 0u64;
        for i in 0..10 {
            let b = self.r.u8()?;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(self.invalid(field, raw as i64))
    }

    /// A varint length of at most `limit`; -1 (null) is `None` when `nullable`.
    fn length(&mut self, field: &'static str, limit: usize, nullable: bool) -> Result<Option<usize>, BatchError> {
        match self.varlong(field)? {
            -1 if nullable => Ok(None),
            n if n < 0 => Err(self.invalid(field, n)),
            n if n as u64 > limit as u64 => {
                Err(self.error(ByteErrorKind::OverLimit { field, value: n as u64, limit: limit as u64 }))
            }
            n => Ok(Some(n as usize)),
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        Ok(self.r.bytes(n)?)
    }
}

/// The fixed header of a stored Kafka batch, as [`decode_header`] read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KafkaHeader {
    /// The base offset it names.
    pub base_offset: i64,
    /// The attributes.
    pub attributes: i16,
    /// Its compression.
    pub compression: KafkaCompression,
    /// The first timestamp.
    pub first_timestamp: i64,
    /// The largest timestamp.
    pub max_timestamp: i64,
    /// The producer id (-1: none).
    pub producer_id: i64,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// The base sequence.
    pub base_sequence: i32,
    /// The record count.
    pub record_count: i32,
}

/// Reads a Kafka batch's header and checks the framing a stored batch must have: the batch length
/// matches the bytes, magic 2, a stored compression, create time, neither transactional nor
/// control, and a last offset delta of count - 1.
pub fn decode_header(kafka: &[u8]) -> Result<KafkaHeader, BatchError> {
    let mut r = KafkaReader::new("kafka record batch", kafka);
    r.r.require(HEADER_LEN)?;
    let base_offset = r.i64()?;
    let length = r.i32()?;
    if length < 0 || length as usize != kafka.len() - LEADER_EPOCH_AT {
        return Err(r.invalid("batch length", i64::from(length)));
    }
    let _leader_epoch = r.i32()?;
    let magic = r.r.u8()?;
    if magic != MAGIC {
        return Err(r.invalid("magic", i64::from(magic)));
    }
    let _crc = r.i32()?;
    let attributes = r.i16()?;
    let compression =
        KafkaCompression::from_attributes(attributes).ok_or_else(|| r.invalid("attributes", i64::from(attributes)))?;
    if attributes & (TIMESTAMP_TYPE_BIT | TRANSACTIONAL_BIT | CONTROL_BIT) != 0 || attributes & !0x3f != 0 {
        return Err(r.invalid("attributes", i64::from(attributes)));
    }
    let last_offset_delta = r.i32()?;
    let first_timestamp = r.i64()?;
    let max_timestamp = r.i64()?;
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let base_sequence = r.i32()?;
    let record_count = r.i32()?;
    if record_count < 1 || last_offset_delta != record_count - 1 {
        return Err(r.invalid("record count", i64::from(record_count)));
    }
    debug_assert_eq!(r.r.position(), HEADER_LEN);
    Ok(KafkaHeader {
        base_offset,
        attributes,
        compression,
        first_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
    })
}

/// Decompresses `data` with `compression`, refusing output past `limit` bytes.
fn decompress(compression: KafkaCompression, data: &Bytes, limit: usize) -> Result<Bytes, CodecError> {
    let mut out = Vec::new();
    let read = match compression {
        KafkaCompression::None => return Ok(data.clone()),
        KafkaCompression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(&data[..]).take(limit as u64 + 1).read_to_end(&mut out)
        }
        KafkaCompression::Zstd => {
            zstd::stream::read::Decoder::new(&data[..]).and_then(|d| d.take(limit as u64 + 1).read_to_end(&mut out))
        }
    };
    read.map_err(|e| CodecError::Invalid(e.to_string()))?;
    if out.len() > limit {
        return Err(CodecError::LengthMismatch { declared: limit, actual: out.len() });
    }
    Ok(Bytes::from(out))
}

/// Decodes every record of a stored Kafka batch `kafka`, which must name `base_offset` and hold
/// `record_count` records (as the Shale batch around it says): record `i` has offset `base_offset + i` and timestamp first timestamp + its
/// delta. Every length is checked against the limits and the bytes left.
pub fn decode_records(kafka: &Bytes, base_offset: u64, record_count: u32) -> Result<Vec<BatchRecord>, BatchError> {
    let header = decode_header(kafka)?;
    if header.base_offset as u64 != base_offset {
        return Err(BatchError::InvalidField { field: "kafka base offset", value: header.base_offset as u64 });
    }
    if header.record_count as u64 != u64::from(record_count) {
        return Err(BatchError::InvalidField { field: "kafka record count", value: header.record_count as u64 });
    }
    let records = decompress(header.compression, &kafka.slice(HEADER_LEN..), limits::STORAGE_RECORD_BYTES)
        .map_err(|source| BatchError::Codec { base_offset, source })?;
    let max = limits::MAX_RECORD_BYTES;
    let mut r = KafkaReader::new("kafka records", &records);
    let count = r.r.count("record count", u64::from(record_count), u32::MAX as usize, 7)?;
    let mut out = Vec::with_capacity(count);
    for position in 0..record_count {
        let len = r.length("record length", limits::STORAGE_RECORD_BYTES, false)?.unwrap_or(0);
        let start = r.r.position();
        let _attributes = r.r.u8()?;
        let delta = r.varlong("timestamp delta")?;
        let timestamp = header.first_timestamp.checked_add(delta).filter(|t| *t >= 0);
        let timestamp_ms = timestamp.ok_or_else(|| r.invalid("timestamp delta", delta))? as u64;
        let offset_delta = r.varlong("offset delta")?;
        if offset_delta != i64::from(position) {
            return Err(r.invalid("offset delta", offset_delta));
        }
        let key = match r.length("key length", max, true)? {
            Some(n) => Some(records.slice_ref(r.bytes(n)?)),
            None => None,
        };
        let value = match r.length("value length", max, true)? {
            Some(n) => records.slice_ref(r.bytes(n)?),
            None => Bytes::new(),
        };
        let n = r.length("header count", limits::MAX_HEADERS, false)?.unwrap_or(0);
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let name_len = r.length("header name length", limits::MAX_HEADER_NAME_BYTES, false)?.unwrap_or(0);
            let name = std::str::from_utf8(r.bytes(name_len)?)
                .map_err(|_| r.error(ByteErrorKind::NotUtf8 { field: "header name" }))?
                .to_owned();
            let value = match r.length("header value length", max, true)? {
                Some(n) => records.slice_ref(r.bytes(n)?),
                None => Bytes::new(),
            };
            headers.push((name, value));
        }
        if r.r.position() - start != len {
            return Err(r.invalid("record length", len as i64));
        }
        out.push(BatchRecord {
            offset: base_offset + u64::from(position),
            position,
            key,
            value,
            headers,
            timestamp_ms,
        });
    }
    r.r.expect_end()?;
    Ok(out)
}

/// Encodes `records` as a Kafka v2 record batch the way a Kafka producer does (base offset 0,
/// leader epoch -1, offset deltas `0..n`, timestamps as deltas from the first record's), for
/// tests that need one without a Kafka client. The CRC field is left 0: a stored batch is not
/// CRC-checked by Shale (the node checks it when the batch arrives). An empty value is written
/// as null.
#[cfg(any(test, feature = "testing"))]
pub fn encode_for_tests(
    records: &[crate::record_batch::NewRecord],
    compression: KafkaCompression,
    producer: Option<(i64, i16, i32)>,
) -> Vec<u8> {
    use std::io::Write;
    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            out.push((z as u8) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
    }
    fn nullable(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
            None => varint(out, -1),
        }
    }
    let first_ts = records[0].timestamp_ms as i64;
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut rec = vec![0u8];
        varint(&mut rec, r.timestamp_ms as i64 - first_ts);
        varint(&mut rec, i as i64);
        nullable(&mut rec, r.key.as_deref());
        nullable(&mut rec, if r.value.is_empty() { None } else { Some(&r.value) });
        varint(&mut rec, r.headers.len() as i64);
        for (name, value) in &r.headers {
            nullable(&mut rec, Some(name.as_bytes()));
            nullable(&mut rec, Some(value));
        }
        varint(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let (code, body) = match compression {
        KafkaCompression::None => (0i16, body),
        KafkaCompression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(&body).expect("in memory");
            (3, e.finish().expect("in memory"))
        }
        KafkaCompression::Zstd => (4, zstd::encode_all(&body[..], 3).expect("in memory")),
    };
    let max_ts = records.iter().map(|r| r.timestamp_ms as i64).max().unwrap_or(first_ts);
    let (producer_id, epoch, sequence) = producer.unwrap_or((-1, -1, -1));
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&0i64.to_be_bytes());
    out.extend_from_slice(&((HEADER_LEN - LEADER_EPOCH_AT + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.push(MAGIC);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    out.extend_from_slice(&first_ts.to_be_bytes());
    out.extend_from_slice(&max_ts.to_be_bytes());
    out.extend_from_slice(&producer_id.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record_batch::{self, NewRecord};

    /// A producer's batch of `records` (compression 0, 3 or 4) carrying a base offset (77) and a
    /// leader epoch (5) that storing it must replace, and producer (9, 1, 40).
    fn kafka(records: &[NewRecord], compression: i16) -> Vec<u8> {
        let compression = KafkaCompression::from_attributes(compression).expect("a stored compression");
        let mut out = encode_for_tests(records, compression, Some((9, 1, 40)));
        out[..8].copy_from_slice(&77i64.to_be_bytes());
        out[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&5i32.to_be_bytes());
        out
    }

    fn records() -> Vec<NewRecord> {
        (0..5u64)
            .map(|i| NewRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: if i == 3 { Bytes::new() } else { Bytes::from(vec![i as u8; 300 * i as usize + 1]) },
                headers: if i == 1 {
                    vec![("h".into(), Bytes::from_static(b"x")), ("e".into(), Bytes::new())]
                } else {
                    vec![]
                },
                timestamp_ms: 1_700_000_000_000 + 7 * i,
            })
            .collect()
    }

    fn stored(kafka: &[u8], base_offset: u64) -> Bytes {
        let mut batch =
            record_batch::encode_kafka_batch(kafka, 0, 5, Some((3, 40)), (1_700_000_000_000, 1_700_000_000_028));
        record_batch::set_base_offset(&mut batch, base_offset);
        Bytes::from(batch)
    }

    /// A Shale batch at base offset 0 around any bytes (a damaged Kafka batch), as a damaged
    /// log could hold one.
    fn wrap(kafka: &[u8]) -> Bytes {
        let mut w = record_batch::encode_batch(&records(), 0, None, &crate::codec::NoneCodec);
        w.truncate(record_batch::HEADER_LEN);
        w[2] = record_batch::VERSION;
        w[3] = record_batch::FLAG_KAFKA_BATCH;
        w[49..53].copy_from_slice(&(kafka.len() as u32).to_le_bytes());
        w[53..57].copy_from_slice(&(kafka.len() as u32).to_le_bytes());
        w.extend_from_slice(kafka);
        if w.len() >= record_batch::HEADER_LEN + 8 {
            w[record_batch::HEADER_LEN..record_batch::HEADER_LEN + 8].fill(0);
        }
        Bytes::from(w)
    }

    #[test]
    fn every_stored_compression_decodes_to_the_records_at_dense_offsets() {
        let codecs = crate::CodecRegistry::new();
        for compression in [0, 3, 4] {
            let sent = kafka(&records(), compression);
            let batch = stored(&sent, 1_000);
            let (header, got) = record_batch::decode_batch(&batch, &codecs).unwrap();
            assert!(header.kafka_batch);
            assert_eq!((header.base_offset, header.record_count, header.producer), (1_000, 5, Some((3, 40))));
            for (i, (r, want)) in got.iter().zip(records()).enumerate() {
                assert_eq!((r.offset, r.position), (1_000 + i as u64, i as u32), "compression {compression}");
                assert_eq!(
                    (&r.key, &r.value, &r.headers, r.timestamp_ms),
                    (&want.key, &want.value, &want.headers, want.timestamp_ms)
                );
            }
            // The Kafka batch inside: base offset placed, leader epoch -1, the rest as sent.
            let inside = &batch[record_batch::HEADER_LEN..];
            assert_eq!(&inside[..8], &1_000i64.to_be_bytes());
            assert_eq!(&inside[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4], &(-1i32).to_be_bytes());
            assert_eq!(&inside[MAGIC_AT..], &sent[MAGIC_AT..], "the CRC-covered bytes are as sent");
            let h = decode_header(inside).unwrap();
            assert_eq!(
                (h.base_offset, h.record_count, h.producer_id, h.producer_epoch, h.base_sequence),
                (1_000, 5, 9, 1, 40)
            );
        }
    }

    #[test]
    fn damaged_or_unstorable_kafka_batches_are_typed_errors() {
        let codecs = crate::CodecRegistry::new();
        let good = kafka(&records(), 0);
        let decode = |kafka: &[u8]| record_batch::decode_batch(&wrap(kafka), &codecs).map(|_| ());
        assert_eq!(decode(&good), Ok(()));
        let patched = |at: usize, bytes: &[u8]| {
            let mut k = good.clone();
            k[at..at + bytes.len()].copy_from_slice(bytes);
            k
        };
        // Gzip, a transactional batch, log append time, magic 1, a count that disagrees.
        for (at, bytes, field) in [
            (ATTRIBUTES_AT, &1i16.to_be_bytes()[..], "attributes"),
            (ATTRIBUTES_AT, &0x10i16.to_be_bytes()[..], "attributes"),
            (ATTRIBUTES_AT, &0x08i16.to_be_bytes()[..], "attributes"),
            (MAGIC_AT, &[1u8][..], "magic"),
            (23, &3i32.to_be_bytes()[..], "record count"),
            (BATCH_LENGTH_AT, &1i32.to_be_bytes()[..], "batch length"),
        ] {
            let err = decode(&patched(at, bytes)).unwrap_err();
            assert!(
                matches!(&err, BatchError::Malformed(ByteError { kind: ByteErrorKind::InvalidField { field: f, .. }, .. }) if *f == field),
                "{field}: {err}"
            );
        }
        // A record whose offset delta is not its position.
        let mut k = good.clone();
        k[HEADER_LEN + 3] = 2; // record 0: [len][attr][ts delta 0][offset delta]
        let err = decode(&k).unwrap_err();
        assert!(err.to_string().contains("offset delta"), "{err}");
        // Every truncation is an error, never a panic.
        for cut in 0..good.len() {
            let mut k = good[..cut].to_vec();
            if k.len() >= HEADER_LEN {
                k[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4]
                    .copy_from_slice(&((cut - LEADER_EPOCH_AT) as i32).to_be_bytes());
            }
            assert!(record_batch::decode_batch(&wrap(&k), &codecs).is_err(), "cut at {cut}");
        }
        // A zstd batch whose data is not zstd.
        let mut z = patched(ATTRIBUTES_AT, &4i16.to_be_bytes());
        z[HEADER_LEN] ^= 0xff;
        assert!(matches!(decode(&z), Err(BatchError::Codec { .. })));
    }

    #[test]
    fn plain_batches_stay_version_one_which_may_not_name_the_kafka_flag() {
        let codecs = crate::CodecRegistry::new();
        let v1 = record_batch::encode_batch(&records(), 4, None, &crate::codec::NoneCodec);
        assert_eq!(v1[2], record_batch::VERSION_PLAIN, "a build reading only version 1 reads it");
        assert_eq!(stored(&kafka(&records(), 0), 0)[2], record_batch::VERSION);
        let (header, got) = record_batch::decode_batch(&Bytes::from(v1.clone()), &codecs).unwrap();
        assert!(!header.kafka_batch);
        assert_eq!(got.len(), 5);
        let mut flagged = stored(&kafka(&records(), 0), 0).to_vec();
        flagged[2] = 1;
        assert!(matches!(record_batch::decode_header(&flagged), Err(BatchError::InvalidField { field: "flags", .. })));
    }
}
