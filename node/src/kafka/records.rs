//! Kafka's v2 record batches and Shale's records: a produced Kafka batch (any compression a
//! client may send: none, gzip, snappy, lz4, zstd; decoded and CRC-checked by `kafka-protocol`)
//! becomes the records of one Shale produce call, stored as one Shale batch entry; a fetched
//! Shale batch becomes one Kafka batch with the same offsets, so a Kafka consumer and a gRPC
//! consumer see every record at the same offset.
//!
//! A produced batch whose compression is the topic's codec (none, lz4 or zstd), with dense offset
//! deltas and create-time timestamps, is stored as sent ([`KafkaBatch`], the Shale batch's
//! records block is the Kafka batch) and fetched as stored, without re-encoding; any other batch
//! (gzip, snappy, another codec than the topic's) is stored as Shale records and fetched as an
//! uncompressed Kafka batch encoded from them.
//!
//! Differences: a Kafka record with a null value is stored with an empty value, a header with a
//! null value with an empty one (Shale values are bytes, never null); a record without a
//! timestamp (-1) gets the leader's append time, as a gRPC record without one does.

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchDecoder,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use shale_raft::cluster::{FetchedEntry, KafkaBatch, ProduceRecord};
use shale_storage::CodecRegistry;
use shale_storage::kafka_batch;
use shale_storage::record_batch::{self, BatchRecord};

/// The codecs a stored Shale batch may use.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(CodecRegistry::new);

/// One Kafka record batch of a Produce request, as Shale records.
#[derive(Debug)]
pub struct ProducedBatch {
    /// The records, in order.
    pub records: Vec<ProduceRecord>,
    /// `(producer id, producer epoch, base sequence)` of an idempotent producer's batch.
    pub producer: Option<(i64, i16, i32)>,
    /// The batch as sent, when Shale may store it so ([`KafkaBatch`]; the cluster decides by the
    /// topic's codec).
    pub as_sent: Option<KafkaBatch>,
}

/// Why a Produce request's records cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The bytes are not v2 record batches (framing, CRC, compression, or an older format).
    #[error("record batch {index}: {reason}")]
    Corrupt {
        /// Which batch of the partition's records (0-based).
        index: usize,
        /// What `kafka-protocol` reported.
        reason: String,
    },
    /// A transactional or control batch (transactions are not supported).
    #[error("record batch {index} is transactional or a control batch; transactions are not supported")]
    Transactional {
        /// Which batch.
        index: usize,
    },
    /// A batch without records.
    #[error("record batch {index} holds no records")]
    Empty {
        /// Which batch.
        index: usize,
    },
}

/// Decodes the record batches of one partition of a Produce request.
pub fn decode_produce(records: &Bytes) -> Result<Vec<ProducedBatch>, RecordsError> {
    let mut buf = records.clone();
    let mut batches = Vec::new();
    while !buf.is_empty() {
        let index = batches.len();
        let start = records.len() - buf.len();
        let set = RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| RecordsError::Corrupt { index, reason: format!("{e:#}") })?;
        let sent = records.slice(start..records.len() - buf.len());
        let Some(first) = set.records.first() else { return Err(RecordsError::Empty { index }) };
        if first.transactional || first.control {
            return Err(RecordsError::Transactional { index });
        }
        let producer = (first.producer_id >= 0).then_some((first.producer_id, first.producer_epoch, first.sequence));
        let as_sent = storable_as_sent(sent, &set.records);
        let records = set.records.into_iter().map(produce_record).collect();
        batches.push(ProducedBatch { records, producer, as_sent });
    }
    Ok(batches)
}

/// The batch `sent` (whose decoded records are `records`) as Shale may store it, if it may: its
/// framing is one a stored Kafka batch has (magic 2, compression none, lz4 or zstd, create time,
/// record count = last offset delta + 1: [`kafka_batch::decode_header`]), its records' offset
/// deltas are `0..n` and their timestamps are set (>= 0). A Kafka fetch then returns the stored
/// bytes; the Kafka format does not let Shale stamp a missing timestamp or renumber offsets in
/// place, so such a batch is re-encoded.
fn storable_as_sent(sent: Bytes, records: &[Record]) -> Option<KafkaBatch> {
    let header = kafka_batch::decode_header(&sent).ok()?;
    if header.record_count as usize != records.len() {
        return None;
    }
    let base = records.first()?.offset;
    let dense = records.iter().enumerate().all(|(i, r)| r.offset == base + i as i64 && r.timestamp >= 0);
    let max = records.iter().map(|r| r.timestamp).max()?;
    dense.then(|| KafkaBatch {
        bytes: sent,
        compression: header.compression,
        timestamps: (records[0].timestamp as u64, max as u64),
    })
}

fn produce_record(r: Record) -> ProduceRecord {
    let headers =
        r.headers.into_iter().map(|(name, value)| (name.as_str().to_string(), value.unwrap_or_default())).collect();
    ProduceRecord {
        key: r.key,
        value: r.value.unwrap_or_default(),
        headers,
        timestamp_ms: u64::try_from(r.timestamp).ok(),
    }
}

/// Why fetched entries cannot be answered as Kafka batches.
#[derive(Debug, thiserror::Error)]
pub enum FetchEncodeError {
    /// A stored batch did not decode (a bug or damage the verified read did not catch).
    #[error("stored batch at log index {index}: {reason}")]
    Stored {
        /// The entry's log index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// The Kafka encoder refused the records.
    #[error("encoding a Kafka batch: {0}")]
    Encode(String),
}

/// The visible Shale batches among `entries` as Kafka v2 record batches, one per Shale batch,
/// with the same offsets. A batch stored as a Kafka producer sent it is returned as stored (its
/// base offset set when it was placed), bytes copied once and not re-encoded; any other is encoded
/// from its records, uncompressed, with no producer id or sequences (a Shale producer id is not a
/// Kafka one, and consumers do not need them: there are no transactions to filter).
pub fn encode_fetched(entries: &[FetchedEntry]) -> Result<Bytes, FetchEncodeError> {
    let mut out = BytesMut::new();
    for e in entries {
        if e.hidden || e.data.get(record_batch::envelope::KIND_AT) != Some(&record_batch::envelope::KIND_NORMAL) {
            continue;
        }
        let body = e.data.slice(record_batch::envelope::HEADER_LEN..);
        let stored =
            |err: record_batch::BatchError| FetchEncodeError::Stored { index: e.index, reason: err.to_string() };
        if record_batch::decode_header(&body).map_err(stored)?.kafka_batch {
            let kafka = &body[record_batch::HEADER_LEN..];
            kafka_batch::decode_header(kafka).map_err(stored)?;
            out.extend_from_slice(kafka);
            continue;
        }
        let (header, records) = record_batch::decode_batch(&body, &CODECS).map_err(stored)?;
        let kafka: Vec<Record> = records.into_iter().map(|r| kafka_record(r, header.base_offset)).collect();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut out, &kafka, &options)
            .map_err(|err| FetchEncodeError::Encode(format!("{err:#}")))?;
    }
    Ok(out.freeze())
}

/// A stored record as a Kafka record of the batch starting at `base_offset`. Sequences rise by
/// one per record from -1 (the batch's "no sequence"): the encoder keeps records in one batch
/// while `offset - sequence` is the same.
fn kafka_record(r: BatchRecord, base_offset: u64) -> Record {
    let position = (r.offset - base_offset) as i32;
    let headers: IndexMap<StrBytes, Option<Bytes>> =
        r.headers.into_iter().map(|(name, value)| (StrBytes::from_string(name), Some(value))).collect();
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: r.offset as i64,
        sequence: NO_SEQUENCE.wrapping_add(position),
        timestamp: r.timestamp_ms as i64,
        key: r.key,
        value: Some(r.value),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, key: &str, value: &str) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: NO_SEQUENCE + offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from(key.to_string())),
            value: Some(Bytes::from(value.to_string())),
            headers: IndexMap::from([(StrBytes::from_static_str("h"), None)]),
        }
    }

    #[test]
    fn every_compression_decodes_into_one_batch_of_records() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let records = [record(0, "k0", "v0"), record(1, "k1", "v1"), record(2, "k2", "v2")];
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).unwrap();
            let batches = decode_produce(&buf.freeze()).unwrap();
            assert_eq!(batches.len(), 1, "{compression:?}");
            let got = &batches[0].records;
            assert_eq!(got.len(), 3);
            assert_eq!(got[2].key.as_deref(), Some(&b"k2"[..]));
            assert_eq!(got[2].value, Bytes::from_static(b"v2"));
            assert_eq!(got[2].headers, vec![("h".to_string(), Bytes::new())], "a null header value is empty");
            assert_eq!(got[2].timestamp_ms, Some(1_700_000_000_002));
            assert_eq!(batches[0].producer, None);
        }
    }

    #[test]
    fn batches_of_a_stored_compression_are_kept_as_sent_and_fetched_as_stored() {
        let mut request = BytesMut::new();
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let records = [record(0, "k0", "v0"), record(1, "k1", "v1")];
            RecordBatchEncoder::encode(&mut request, &records, &RecordEncodeOptions { version: 2, compression })
                .unwrap();
        }
        let request = request.freeze();
        let batches = decode_produce(&request).unwrap();
        let kept: Vec<Option<kafka_batch::KafkaCompression>> =
            batches.iter().map(|b| b.as_sent.as_ref().map(|k| k.compression)).collect();
        use kafka_batch::KafkaCompression as K;
        assert_eq!(
            kept,
            vec![Some(K::None), None, None, Some(K::Lz4), Some(K::Zstd)],
            "gzip and snappy are re-encoded"
        );
        let total: usize = batches.iter().map(|b| b.as_sent.as_ref().map_or(0, |k| k.bytes.len())).sum();
        assert!(total < request.len(), "each kept batch is its own slice of the request");
        for (i, b) in batches.iter().enumerate().filter(|(_, b)| b.as_sent.is_some()) {
            let sent = b.as_sent.as_ref().unwrap();
            assert_eq!(sent.timestamps, (1_700_000_000_000, 1_700_000_000_001));
            // Stored as the leader stores it (placed at offset 40), fetched: the same bytes but
            // the base offset, a batch kafka-protocol decodes (CRC checked) at offsets 40 and 41.
            let mut body = record_batch::encode_kafka_batch(&sent.bytes, 0, 2, None, sent.timestamps);
            record_batch::set_base_offset(&mut body, 40);
            let mut data = vec![0u8; record_batch::envelope::HEADER_LEN];
            data[record_batch::envelope::KIND_AT] = record_batch::envelope::KIND_NORMAL;
            data.extend_from_slice(&body);
            let entry = FetchedEntry { index: 7, data: Bytes::from(data), hidden: false };
            let fetched = encode_fetched(std::slice::from_ref(&entry)).unwrap();
            assert_eq!(fetched.len(), sent.bytes.len(), "batch {i}");
            assert_eq!(&fetched[8..], &sent.bytes[8..], "batch {i}: not re-encoded");
            let sets = RecordBatchDecoder::decode_all(&mut fetched.clone()).unwrap();
            let got: Vec<(i64, Option<Bytes>)> = sets[0].records.iter().map(|r| (r.offset, r.value.clone())).collect();
            assert_eq!(got, vec![(40, Some(Bytes::from_static(b"v0"))), (41, Some(Bytes::from_static(b"v1")))]);
            // A gRPC reader decodes the same records from the stored bytes.
            let shale = record_batch::decode_batch(&Bytes::from(body), &CODECS).unwrap().1;
            assert_eq!(shale[1].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(shale[1].headers, vec![("h".to_string(), Bytes::new())]);
        }
    }

    #[test]
    fn a_batch_without_timestamps_is_re_encoded() {
        let mut buf = BytesMut::new();
        let mut r = record(0, "k", "v");
        r.timestamp = -1;
        RecordBatchEncoder::encode(&mut buf, &[r], &RecordEncodeOptions { version: 2, compression: Compression::None })
            .unwrap();
        let batches = decode_produce(&buf.freeze()).unwrap();
        assert!(batches[0].as_sent.is_none(), "the leader stamps its time: the batch cannot be kept as sent");
        assert_eq!(batches[0].records[0].timestamp_ms, None);
    }

    #[test]
    fn a_damaged_batch_is_refused() {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, &[record(0, "k", "v")], &options).unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert!(matches!(decode_produce(&buf.freeze()), Err(RecordsError::Corrupt { index: 0, .. })));
    }

    #[test]
    fn stored_records_encode_as_one_kafka_batch_with_their_offsets() {
        let stored: Vec<Record> = (0..4)
            .map(|i| {
                kafka_record(
                    BatchRecord {
                        offset: 10 + i,
                        position: i as u32,
                        key: None,
                        value: Bytes::from(vec![i as u8]),
                        headers: vec![],
                        timestamp_ms: 5,
                    },
                    10,
                )
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, &stored, &options).unwrap();
        let sets = RecordBatchDecoder::decode_all(&mut buf.freeze()).unwrap();
        assert_eq!(sets.len(), 1, "one Kafka batch per Shale batch");
        let offsets: Vec<i64> = sets[0].records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![10, 11, 12, 13]);
        assert_eq!(sets[0].records[0].sequence, NO_SEQUENCE, "no producer: base sequence -1");
    }
}
