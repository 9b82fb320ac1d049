//! The one table of Shale's limits: every bound a request, a record or the cluster's state is held
//! to, its default, its hard maximum, and how the limits of the inner layers derive from the
//! edge's. `docs/operations.md` ("Limits") lists the same for operators, with the config key and
//! the error a client gets.
//!
//! The table lives in `shale-storage` because this is the one crate every other depends on: the
//! Raft and cluster layers, the node, and the CLI (whose offline `verify` reads a data directory
//! with the node's own record bound). The storage engine itself only takes
//! [`STORAGE_RECORD_BYTES`] and [`STORAGE_BATCH_BYTES`], as the defaults of
//! [`crate::StorageOptions`].
//!
//! # Checked once, at the edge
//! A limit on what a client sends is checked once: by the node's gRPC services
//! (`node/src/limits.rs`), against the node's configured value (`[limits]` in its config, each at
//! most the hard maximum here). The layers inside assume it and `debug_assert!` it (the cluster's
//! produce, record encoding, fetch wait, consumer-group and member address bounds). Two inner
//! layers keep a typed error, because each is a public API of its own that other callers reach
//! with input nobody checked:
//! - `RaftGroup::write` / `write_many` (shale-raft) refuse a payload over [`RAFT_PAYLOAD_BYTES`]
//!   with `RaftError::PayloadTooLarge` before anything is proposed: a payload the storage refused
//!   after it was proposed would stop the group, so no caller (the metadata group included) may
//!   get one past.
//! - `StorageBackend::append_batch` refuses a record over `StorageOptions::max_record_bytes`
//!   with `StorageError::RecordTooLarge`: the storage is a library of its own, used directly by
//!   tests, tools and the CLI.
//!
//! Bounds on what is decoded from disk or the network (record and command layouts, snapshots,
//! the Raft transport) and on what the metadata state machine accepts at apply time are not
//! request limits: they are what a decoder or a replicated state machine trusts, and stay typed
//! errors wherever they are. They use the constants below where they bound the same thing.
//!
//! # How the record-size limits derive from the edge's
//! | layer | limit | value | derivation |
//! |---|---|---|---|
//! | node (edge) | `limits.max_record_bytes`: key + value + header names and values | default [`DEFAULT_RECORD_BYTES`] (1 MiB), at most [`MAX_RECORD_BYTES`] (4 MiB) | configured |
//! | cluster record batch | one Raft entry payload: a request's records are split into batches of about [`BATCH_TARGET_BYTES`] (1 MiB) | a one-record batch is <= [`MAX_RECORD_BYTES`] + the batch and record framing (at most [`MAX_HEADERS`] headers: about 1.6 KiB) | asserted in `record_batch` (`MAX_SINGLE_RECORD_BATCH_BYTES`) |
//! | Raft group | [`RAFT_PAYLOAD_BYTES`] (8 MiB - 1 KiB) | [`STORAGE_RECORD_BYTES`] - [`RAFT_ENTRY_RESERVE_BYTES`] | room for the Raft entry header (26 bytes, asserted in shale-raft's `format`) |
//! | storage | [`STORAGE_RECORD_BYTES`] (8 MiB) | 2 x [`MAX_RECORD_BYTES`] | the largest encoded record with room to spare |
//!
//! The inner limits derive from the edge's hard maximum, never from its configured value: the
//! storage limit is also the bound at which a read takes a record's declared length for damage,
//! so lowering `limits.max_record_bytes` must never make data already written unreadable.

/// Default of `limits.max_record_bytes`: a record's key, value, header names and header values.
pub const DEFAULT_RECORD_BYTES: usize = 1 << 20;
/// Hard maximum of `limits.max_record_bytes`; every inner layer is sized for a record this large.
pub const MAX_RECORD_BYTES: usize = 4 << 20;
/// Most headers one record may carry.
pub const MAX_HEADERS: usize = 256;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 1024;

/// Default of `limits.max_batch_records`: records in one Produce request.
pub const DEFAULT_BATCH_RECORDS: usize = 10_000;
/// Hard maximum of `limits.max_batch_records`.
pub const MAX_RECORDS_PER_PRODUCE: usize = 10_000;

/// A partition leader splits a produce request into record batches of about this many bytes of
/// records (one Raft entry each; a larger record is a batch of its own), so entries stay small
/// enough to replicate and cache in pieces whatever the request size.
pub const BATCH_TARGET_BYTES: usize = 1 << 20;

/// Default of `limits.max_request_bytes`: one encoded gRPC request.
pub const DEFAULT_REQUEST_BYTES: usize = 16 << 20;
/// The gRPC server decodes messages up to this many times `limits.max_request_bytes`, so that an
/// oversized request is answered with the named limit (`REQUEST_TOO_LARGE`) rather than a bare
/// transport error; past it the transport refuses it (`RESOURCE_EXHAUSTED`).
pub const TRANSPORT_REQUEST_FACTOR: usize = 2;

/// Longest topic name, in bytes (Kafka's limit).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Default of `limits.max_partitions_per_topic`.
pub const DEFAULT_PARTITIONS_PER_TOPIC: u32 = 1024;
/// Hard maximum of `limits.max_partitions_per_topic` (the partition number must fit the group-id
/// layout).
pub const MAX_PARTITIONS: u32 = 4096;
/// Most topics a cluster may hold.
pub const MAX_TOPICS: usize = 1 << 20;
/// Most replicas a partition may have (a topic's replication factor).
pub const MAX_REPLICATION_FACTOR: usize = 64;
/// Most members a cluster may have.
pub const MAX_MEMBERS: usize = 4096;
/// Longest gRPC address a member may advertise, in bytes.
pub const MAX_ADDR_BYTES: usize = 1024;

/// Longest consumer-group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 249;
/// Most committed offsets (group, topic, partition) the cluster keeps.
pub const MAX_COMMITTED_OFFSETS: usize = 1 << 24;

/// Default of `limits.max_fetch_bytes`: the cap (and the default) of a fetch's `max_bytes`.
pub const DEFAULT_FETCH_BYTES: u32 = 8 << 20;
/// Default of `limits.max_wait_ms`: the cap of a fetch's long-poll wait.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 30_000;
/// Hard maximum of `limits.max_wait_ms`.
pub const MAX_FETCH_WAIT_MS: u64 = 60_000;

/// Default of `limits.max_topics`: topics the cluster may hold (checked when a creation applies).
pub const DEFAULT_TOPICS: u32 = 512;
/// Default of `limits.max_partitions`: partitions of all topics the cluster may hold. Each is a
/// Raft group with its own memory, tasks and heartbeats on every replica (issue 14: a 3-node
/// cluster creating 16-partition topics in a loop collapsed after ~58 topics, ~930 partitions).
pub const DEFAULT_CLUSTER_PARTITIONS: u32 = 512;
/// Hard maximum of `limits.max_partitions`.
pub const MAX_CLUSTER_PARTITIONS: u32 = 1 << 20;
/// Default of `limits.max_partitions_per_node`: partition replicas (Raft groups) one node takes
/// (checked when a creation applies, with the proposing node's value; issue 15 targets 3,000 per
/// node: 3,000 partitions at replication factor 3 on three nodes).
pub const DEFAULT_PARTITIONS_PER_NODE: u32 = 4096;
/// Hard maximum of `limits.max_partitions_per_node`.
pub const MAX_PARTITIONS_PER_NODE: u32 = 1 << 20;

/// Default of `limits.max_connections`: TCP connections a node serves at once (clients and peers
/// alike, on the one listener).
pub const DEFAULT_CONNECTIONS: u32 = 4096;
/// Default of `limits.max_subscriptions_per_connection`: Subscribe streams open on one connection.
pub const DEFAULT_SUBSCRIPTIONS_PER_CONNECTION: u32 = 512;
/// Default of `limits.max_subscriptions`: Subscribe streams a node serves at once.
pub const DEFAULT_SUBSCRIPTIONS: u32 = 1024;
/// Default of `limits.max_in_flight_requests`: client-API requests a node serves at once
/// (long-poll fetches and forwarded requests included).
pub const DEFAULT_IN_FLIGHT_REQUESTS: u32 = 2048;

/// The largest storage record a node writes or reads (`StorageOptions::max_record_bytes`).
pub const STORAGE_RECORD_BYTES: usize = 2 * MAX_RECORD_BYTES;
/// The largest total payload of one storage `append_batch` (`StorageOptions::max_batch_bytes`).
pub const STORAGE_BATCH_BYTES: usize = 64 << 20;
/// Bytes of a storage record the Raft layer keeps for its entry header.
pub const RAFT_ENTRY_RESERVE_BYTES: usize = 1024;
/// The largest application payload a Raft group accepts (`RaftGroupConfig::max_payload_bytes`).
pub const RAFT_PAYLOAD_BYTES: usize = STORAGE_RECORD_BYTES - RAFT_ENTRY_RESERVE_BYTES;

const _: () = assert!(DEFAULT_RECORD_BYTES <= MAX_RECORD_BYTES);
const _: () = assert!(DEFAULT_BATCH_RECORDS <= MAX_RECORDS_PER_PRODUCE);
const _: () = assert!(DEFAULT_PARTITIONS_PER_TOPIC <= MAX_PARTITIONS);
const _: () = assert!(DEFAULT_FETCH_WAIT_MS as u64 <= MAX_FETCH_WAIT_MS);
const _: () = assert!(DEFAULT_REQUEST_BYTES >= DEFAULT_RECORD_BYTES);
const _: () = assert!(DEFAULT_TOPICS as usize <= MAX_TOPICS && DEFAULT_CLUSTER_PARTITIONS <= MAX_CLUSTER_PARTITIONS);
const _: () = assert!(DEFAULT_SUBSCRIPTIONS_PER_CONNECTION <= DEFAULT_SUBSCRIPTIONS);
const _: () = assert!(BATCH_TARGET_BYTES + MAX_RECORD_BYTES <= RAFT_PAYLOAD_BYTES);
const _: () = assert!(STORAGE_RECORD_BYTES <= STORAGE_BATCH_BYTES);
// The storage's own validity bound on `max_record_bytes` (`StorageOptions::validate`).
const _: () = assert!(STORAGE_RECORD_BYTES <= u32::MAX as usize / 2);

/// What of one record its limits apply to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordSize {
    /// Bytes counted against `max_record_bytes`: the key, the value, header names and values.
    pub bytes: usize,
    /// Number of headers.
    pub headers: usize,
    /// The longest header name, in bytes.
    pub longest_header_name: usize,
}

/// Why a record is over a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordLimitError {
    /// Key, value and headers together are over the record limit.
    #[error("{size} bytes, over max_record_bytes = {max}")]
    TooLarge {
        /// The record's size ([`RecordSize::bytes`]).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_HEADERS`] headers.
    #[error("{count} headers, over the limit of {max}")]
    TooManyHeaders {
        /// The record's headers.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A header name over [`MAX_HEADER_NAME_BYTES`].
    #[error("a header name of {len} bytes, over the limit of {max}")]
    HeaderNameTooLong {
        /// The longest header name.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl RecordSize {
    /// The size of a record with a key of `key_len` bytes, a value of `value_len` bytes and
    /// headers of `(name_len, value_len)` bytes.
    pub fn new(key_len: usize, value_len: usize, headers: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let mut size = RecordSize { bytes: key_len + value_len, headers: 0, longest_header_name: 0 };
        for (name, value) in headers {
            size.bytes += name + value;
            size.headers += 1;
            size.longest_header_name = size.longest_header_name.max(name);
        }
        size
    }

    /// Checks the record against `max_record_bytes` (the node's configured limit, at most
    /// [`MAX_RECORD_BYTES`]), [`MAX_HEADERS`] and [`MAX_HEADER_NAME_BYTES`].
    pub fn check(&self, max_record_bytes: usize) -> Result<(), RecordLimitError> {
        if self.bytes > max_record_bytes {
            return Err(RecordLimitError::TooLarge { size: self.bytes, max: max_record_bytes });
        }
        if self.headers > MAX_HEADERS {
            return Err(RecordLimitError::TooManyHeaders { count: self.headers, max: MAX_HEADERS });
        }
        if self.longest_header_name > MAX_HEADER_NAME_BYTES {
            return Err(RecordLimitError::HeaderNameTooLong {
                len: self.longest_header_name,
                max: MAX_HEADER_NAME_BYTES,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_size_counts_key_value_and_headers() {
        let s = RecordSize::new(2, 10, [(3, 4), (5, 0)]);
        assert_eq!(s, RecordSize { bytes: 24, headers: 2, longest_header_name: 5 });
        assert_eq!(s.check(24), Ok(()));
        assert_eq!(s.check(23), Err(RecordLimitError::TooLarge { size: 24, max: 23 }));
    }

    #[test]
    fn header_limits_are_checked_with_their_values() {
        let many = RecordSize::new(0, 0, (0..=MAX_HEADERS).map(|_| (1, 0)));
        assert_eq!(many.check(MAX_RECORD_BYTES), Err(RecordLimitError::TooManyHeaders { count: 257, max: 256 }));
        let long = RecordSize::new(0, 0, [(MAX_HEADER_NAME_BYTES + 1, 0)]);
        assert_eq!(long.check(MAX_RECORD_BYTES), Err(RecordLimitError::HeaderNameTooLong { len: 1025, max: 1024 }));
        assert_eq!(RecordSize::new(0, 0, [(MAX_HEADER_NAME_BYTES, 0)]).check(MAX_RECORD_BYTES), Ok(()));
    }
}
