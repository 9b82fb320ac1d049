//! Client, producer and consumer settings.

use std::time::Duration;

use crate::error::ClientError;

/// How to reach a cluster and how hard to try.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Bootstrap endpoints, `host:port` (or `http://host:port`); any cluster member will do.
    pub endpoints: Vec<String>,
    /// TCP connect timeout.
    pub connect_timeout_ms: u64,
    /// Per-request timeout (a long poll adds its wait to this).
    pub request_timeout_ms: u64,
    /// Attempts per call before giving up (1 = no retry).
    pub max_attempts: u32,
    /// First retry backoff; doubles each attempt up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    /// Largest retry backoff.
    pub max_backoff_ms: u64,
    /// TLS to every node (the cluster CA to trust, optionally a client certificate); `None`:
    /// plaintext. See docs/security.md.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// A bearer token (`shale user create`), sent on every call as `authorization: Bearer
    /// <token>`; `None`: the caller is its client certificate's principal, or anonymous. Send it
    /// over TLS only: it is a password. See docs/security.md.
    pub token: Option<crate::token::Token>,
    /// A user name and password (`shale user create NAME --password`), sent on every call as
    /// `authorization: Basic base64(<user>:<password>)` when no [`ClientConfig::token`] is set.
    /// Send it over TLS only. See docs/security.md.
    pub password: Option<crate::scram::Password>,
}

impl ClientConfig {
    /// Defaults with these bootstrap endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            connect_timeout_ms: 1_000,
            request_timeout_ms: 10_000,
            max_attempts: 12,
            initial_backoff_ms: 25,
            max_backoff_ms: 1_000,
            tls: None,
            token: None,
            password: None,
        }
    }

    /// Parses a comma-separated endpoint list (`a:1,b:2`).
    pub fn from_endpoint_list(list: &str) -> Result<Self, ClientError> {
        let endpoints: Vec<String> =
            list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        let config = Self::new(endpoints);
        config.validate()?;
        Ok(config)
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        if self.max_attempts == 0 {
            return Err(ClientError::Config("max_attempts must be at least 1".into()));
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err(ClientError::Config("timeouts must be positive".into()));
        }
        Ok(())
    }

    /// The backoff before retry number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(16);
        Duration::from_millis(self.initial_backoff_ms.saturating_mul(1 << shift).min(self.max_backoff_ms))
    }
}

/// Producer batching, pipelining, idempotence and retries.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Send a partition's batch once it holds this many payload bytes (default 128 KiB: one
    /// partition with a few hundred KiB in flight then has two or three batches in flight instead
    /// of one, so the leader, the followers and the client work on different batches at once;
    /// README "Batches of 128 KiB").
    pub batch_max_bytes: usize,
    /// Send a partition's batch once it holds this many records.
    pub batch_max_records: usize,
    /// While a batch of the partition is in flight, wait at most this long for the next batch to
    /// fill before sending it. A partition with nothing in flight sends at once (a lone record
    /// does not wait).
    pub linger_ms: u64,
    /// Batches per partition sent and not yet acknowledged (Kafka's
    /// `max.in.flight.requests.per.connection`); at least 1. Needs `idempotent` to go above 1:
    /// sequences keep the batches in order across retries. A non-idempotent producer keeps one
    /// batch per partition in flight.
    pub max_in_flight: usize,
    /// Batches sent to one node and not yet acknowledged, across all partitions it leads; at
    /// least 1. A request carries one partition's batch, so with many partitions per node the
    /// per-partition limit alone lets thousands of tiny batches (one Raft entry, fsync and
    /// replication round each) go at once; with this cap the other partitions' records gather
    /// into bigger batches meanwhile (as Kafka's per-connection limit does with its multi-partition
    /// requests). Free slots go to partitions in turn, so none starves.
    pub max_in_flight_per_node: usize,
    /// Idempotent delivery: batches carry a producer id and sequence numbers, so a retried batch is
    /// written once, and a batch that overtakes an earlier one is refused and sent again after it.
    pub idempotent: bool,
    /// Records buffered (not yet acknowledged) before `send` waits.
    pub max_buffered_records: usize,
    /// Keyless records (no key, no explicit partition) go to one partition for this many full
    /// batches (`batch_max_bytes` / `batch_max_records` each), then to the next partition in turn
    /// (a sticky partitioner, as Kafka's default since KIP-480/794, whose run is one batch: set 1
    /// for that). Longer runs keep fewer partitions busy at a time, so each Raft entry carries
    /// more records; every partition still gets an equal share over time. At least 1.
    pub keyless_run_batches: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_max_bytes: 128 * 1024,
            batch_max_records: 1_000,
            linger_ms: 5,
            max_in_flight: 5,
            max_in_flight_per_node: 16,
            idempotent: true,
            max_buffered_records: 100_000,
            keyless_run_batches: 32,
        }
    }
}

/// Where a consumer (re)starts: when it has no position ([`ConsumerConfig::offset_reset`]), and
/// when its position is one no replica holds ([`ConsumerConfig::reset_out_of_range`]). Like Kafka's
/// `auto.offset.reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// The partition's start: the lowest offset any replica still holds.
    Earliest,
    /// The partition's end (only new records).
    Latest,
    /// No reset: fail with [`ClientError::OffsetOutOfRange`] naming the partition's bounds.
    None,
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// The consumer group whose committed offsets are used and updated, if any.
    pub group: Option<String>,
    /// Payload bytes per partition fetch.
    pub max_bytes: u32,
    /// Bytes the consumer may have in fetches started ahead of `poll` (at most `max_bytes` each,
    /// one per partition whose last answer left records): while a caller handles one answer, the
    /// next is read. Bounds what a consumer of many partitions buffers (like Kafka's
    /// `fetch.max.bytes`); 0 turns reading ahead off.
    pub prefetch_max_bytes: u64,
    /// Long-poll wait per `poll`.
    pub max_wait_ms: u32,
    /// Where a partition starts that has no position: not given by `seek` nor committed by the group.
    pub offset_reset: OffsetReset,
    /// What to do when a position (sought, committed or reached) is one no replica of the
    /// partition holds (below every replica's log start, or past the end). The default,
    /// [`OffsetReset::None`], fails the poll with [`ClientError::OffsetOutOfRange`]: a position is
    /// never moved unless the caller chose a reset here. (A replica whose own log starts later is
    /// not "out of range": the consumer reads from another replica.)
    pub reset_out_of_range: OffsetReset,
    /// Recompute every fetched log entry's chain hash and check that each answer continues the
    /// chain read so far, with dense offsets (see [`crate::chain`]); a break fails the read with
    /// [`ClientError::ChainMismatch`]. Off: entries are only decoded (faster; records carry no
    /// chain hash), though an answer must still start at the log index asked for.
    pub verify_chain: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            group: None,
            max_bytes: 1024 * 1024,
            prefetch_max_bytes: 50 * 1024 * 1024,
            max_wait_ms: 500,
            offset_reset: OffsetReset::Earliest,
            reset_out_of_range: OffsetReset::None,
            verify_chain: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_parse_and_empty_is_refused() {
        let c = ClientConfig::from_endpoint_list(" 127.0.0.1:7001, 127.0.0.1:7002 ,").unwrap();
        assert_eq!(c.endpoints, vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert!(matches!(ClientConfig::from_endpoint_list(" , "), Err(ClientError::NoEndpoints)));
    }

    #[test]
    fn a_position_no_replica_holds_is_an_error_unless_a_reset_is_chosen() {
        let c = ConsumerConfig::default();
        assert_eq!(c.reset_out_of_range, OffsetReset::None);
        assert_eq!(c.offset_reset, OffsetReset::Earliest);
        assert!(c.verify_chain, "the chain is checked unless turned off");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = ClientConfig::new(["a:1"]);
        assert_eq!(c.backoff(1), Duration::from_millis(25));
        assert_eq!(c.backoff(2), Duration::from_millis(50));
        assert_eq!(c.backoff(3), Duration::from_millis(100));
        assert_eq!(c.backoff(40), Duration::from_millis(1_000));
    }
}
