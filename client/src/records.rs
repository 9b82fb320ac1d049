//! The record types applications produce and consume.

use bytes::Bytes;
use shale_storage::ChainHash;

use crate::error::ClientError;
use crate::proto;

/// One application header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name (need not be unique).
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// A record to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// An explicit partition; otherwise chosen by key hash, or for a keyless record the topic's
    /// sticky run ([`crate::Partitioner`]).
    pub partition: Option<u32>,
    /// Partitioning key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Producer timestamp in ms since the Unix epoch; `None` lets the leader stamp it.
    pub timestamp_ms: Option<u64>,
}

impl ProducerRecord {
    /// A keyless record.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self { topic: topic.into(), value: value.into(), ..Self::default() }
    }

    /// Sets the key.
    #[must_use]
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    #[must_use]
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header { key: key.into(), value: value.into() });
        self
    }

    /// Sets the timestamp.
    #[must_use]
    pub fn timestamp_ms(mut self, timestamp_ms: u64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Approximate encoded size, for batching.
    pub fn size_bytes(&self) -> usize {
        16 + self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self.headers.iter().map(|h| h.key.len() + h.value.len() + 4).sum::<usize>()
    }

    /// Its topic, and the record as it is sent (moved, not copied).
    pub(crate) fn into_proto(self) -> (String, proto::Record) {
        let record = proto::Record {
            key: self.key,
            value: self.value,
            headers: self.headers.into_iter().map(|h| proto::Header { key: h.key, value: h.value }).collect(),
            timestamp_ms: self.timestamp_ms.unwrap_or(0),
        };
        (self.topic, record)
    }
}

/// Where an acknowledged record was written: its offset, and the log entry (the stored batch) that
/// holds it, whose chain hash a consumer recomputes when it reads the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: u64,
    /// The chain hash of the log entry holding the record (its batch).
    pub chain_hash: ChainHash,
    /// The log index of that entry.
    pub entry_index: u64,
    /// The record's position in its batch (`offset - base offset`).
    pub position: u32,
}

/// A committed record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: u64,
    /// The chain hash of the log entry holding the record, as the consumer recomputed it; `None`
    /// when the chain is not checked ([`crate::ConsumerConfig::verify_chain`] off).
    pub chain_hash: Option<ChainHash>,
    /// The log index of that entry.
    pub entry_index: u64,
    /// The record's position in its batch.
    pub position: u32,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Application headers.
    pub headers: Vec<Header>,
    /// Timestamp in ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A 32-byte chain hash from the wire.
pub(crate) fn hash32(bytes: &[u8]) -> Result<ChainHash, ClientError> {
    bytes
        .try_into()
        .map(ChainHash)
        .map_err(|_| ClientError::Protocol(format!("chain hash is {} bytes, expected 32", bytes.len())))
}
