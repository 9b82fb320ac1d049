//! Client errors, and the contract for how a server status carries machine-readable details.
//!
//! The node answers every failure with a gRPC status whose message is for people; the metadata
//! keys in [`meta`] carry what a program needs (a stable [`ErrorCode`], the leader to retry at,
//! the log bounds of an out-of-range read, the limit that was hit). [`ClientError::from_status`]
//! turns such a status back into a typed error.

use std::fmt;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::chain::ChainBreak;

/// Status metadata keys (ASCII values) set by the node on error statuses.
pub mod meta {
    /// The stable [`super::ErrorCode`] (e.g. `NOT_LEADER`).
    pub const ERROR_CODE: &str = "shale-error-code";
    /// NOT_LEADER: the current leader's node id, when known.
    pub const LEADER_ID: &str = "shale-leader-id";
    /// NOT_LEADER: the current leader's advertised gRPC address (`host:port`), when known.
    pub const LEADER_ADDR: &str = "shale-leader-addr";
    /// OFFSET_OUT_OF_RANGE: the first offset the partition still holds.
    pub const LOG_START: &str = "shale-log-start";
    /// OFFSET_OUT_OF_RANGE: one past the last committed offset.
    pub const LOG_END: &str = "shale-log-end";
    /// OFFSET_OUT_OF_RANGE of a read: the node whose replica the log bounds describe.
    pub const REPLICA_ID: &str = "shale-replica-id";
    /// OFFSET_OUT_OF_RANGE of a read: the partition's replicas as the answering node knows them,
    /// `id=host:port` separated by commas (a member whose address is unknown is left out), so a
    /// client can read the offset from another replica.
    pub const REPLICAS: &str = "shale-replicas";
    /// Limit errors: the configured limit that was exceeded.
    pub const LIMIT: &str = "shale-limit";
    /// Request metadata that says "answer here, do not forward": a node never forwards a request
    /// that carries it. Set by a node when it forwards a request to a leader (value: its node id; no
    /// forwarding loops), and by the client on a produce sent to the node it believes leads the
    /// partition (value: `client`), so a stale belief comes back as NOT_LEADER naming the leader,
    /// which the client then remembers, instead of being forwarded on every request.
    pub const FORWARDED: &str = "shale-forwarded";
    /// Request metadata a node sets when it forwards a request: the principal it authenticated
    /// the caller as (`user:<name>`, `node:<id>` or `anonymous`). Trusted only from a peer with a
    /// node certificate; from anyone else it is refused (UNAUTHENTICATED) when authorization is on.
    pub const PRINCIPAL: &str = "shale-principal";
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => $text:literal, $grpc:ident; )*) => {
        /// A stable, machine-readable error code, sent in [`meta::ERROR_CODE`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, for documentation and tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code as sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $text,)* }
            }

            /// Parses a wire code.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(ErrorCode::$variant),)* _ => None }
            }

            /// The gRPC status code this error is sent with.
            pub fn grpc_code(self) -> Code {
                match self { $(ErrorCode::$variant => Code::$grpc,)* }
            }
        }
    };
}

error_codes! {
    /// The node is not the leader of the group that must serve the request (see the leader keys).
    NotLeader => "NOT_LEADER", Unavailable;
    /// The group has no leader right now (an election is running); retry shortly.
    NoLeader => "NO_LEADER", Unavailable;
    /// No topic of that name.
    UnknownTopic => "UNKNOWN_TOPIC", NotFound;
    /// The topic has no such partition.
    UnknownPartition => "UNKNOWN_PARTITION", NotFound;
    /// A topic of that name already exists.
    TopicExists => "TOPIC_EXISTS", AlreadyExists;
    /// No cluster member with that node id.
    UnknownNode => "UNKNOWN_NODE", NotFound;
    /// The read offset is below the log start or past the log end (see the log keys).
    OffsetOutOfRange => "OFFSET_OUT_OF_RANGE", OutOfRange;
    /// One record is over `max_record_bytes`.
    RecordTooLarge => "RECORD_TOO_LARGE", InvalidArgument;
    /// A batch has more records than `max_batch_records`.
    BatchTooLarge => "BATCH_TOO_LARGE", InvalidArgument;
    /// A request is over `max_request_bytes`.
    RequestTooLarge => "REQUEST_TOO_LARGE", ResourceExhausted;
    /// The request body could not be decoded (not the message the method takes, a bad gRPC frame)
    /// or names no method of the API.
    InvalidRequest => "INVALID_REQUEST", InvalidArgument;
    /// The node holds `limits.max_connections` connections: this one is refused (and closed
    /// shortly); retry later, or at another node.
    TooManyConnections => "TOO_MANY_CONNECTIONS", ResourceExhausted;
    /// The connection holds `limits.max_subscriptions_per_connection` Subscribe streams, or the
    /// node `limits.max_subscriptions`: retry once one has ended.
    TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS", ResourceExhausted;
    /// The node is serving `limits.max_in_flight_requests` requests: nothing was done; retry after
    /// a backoff.
    TooManyRequests => "TOO_MANY_REQUESTS", ResourceExhausted;
    /// Creating the topic would pass a cluster total (`limits.max_topics` or
    /// `limits.max_partitions`, named in the message and in `shale-limit`); nothing was created.
    ClusterLimit => "CLUSTER_LIMIT", ResourceExhausted;
    /// A topic name breaks the rules (`[a-zA-Z0-9._-]`, 1..=249 characters).
    InvalidTopicName => "INVALID_TOPIC_NAME", InvalidArgument;
    /// A topic configuration is impossible (zero partitions, too many, bad replication factor, ...).
    InvalidConfig => "INVALID_CONFIG", InvalidArgument;
    /// Some other argument is invalid (an empty batch, an empty group name, ...).
    InvalidArgument => "INVALID_ARGUMENT", InvalidArgument;
    /// An idempotent producer's retry is outside the dedup window (its original offsets are forgotten).
    OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE", FailedPrecondition;
    /// An idempotent producer's batch skips sequences: an earlier batch of the producer is not
    /// written (yet). Nothing of it was written; the producer sends it again after the earlier one.
    SequenceGap => "SEQUENCE_GAP", FailedPrecondition;
    /// An idempotent retry of a record that was written, but whose offset retention has since
    /// purged (the message names the offset): the record is durable, its hash can no longer be reported.
    DuplicateOfPurgedRecord => "DUPLICATE_OF_PURGED_RECORD", AlreadyExists;
    /// The partition leader's proposal was refused at apply because its view of the partition was
    /// out of date (a leader change, an earlier failed proposal); nothing of the batch was written
    /// and the leader resyncs: send it again.
    ProposalRefused => "PROPOSAL_REFUSED", Unavailable;
    /// A fetch's `from_index` is not a log index the replica can continue from (below its log
    /// start, or past the entry holding the offset): read by offset alone (the client then starts
    /// its chain check again from that answer).
    InvalidFromIndex => "INVALID_FROM_INDEX", OutOfRange;
    /// The operation cannot run in the cluster's current state (e.g. a membership change is running).
    FailedPrecondition => "FAILED_PRECONDITION", FailedPrecondition;
    /// The consumer group has no member of that id: it left, or its session expired (its
    /// partitions went to others). Join again.
    UnknownMemberId => "UNKNOWN_MEMBER_ID", NotFound;
    /// A commit from a group member that does not own a partition it names (a zombie whose
    /// partitions moved): nothing of the commit was written.
    FencedMember => "FENCED_MEMBER", FailedPrecondition;
    /// The operation needs a consumer group without members (delete, an offset reset).
    GroupNotEmpty => "GROUP_NOT_EMPTY", FailedPrecondition;
    /// No consumer group of that name.
    UnknownGroup => "UNKNOWN_GROUP", NotFound;
    /// The operation did not complete in time; it may or may not have taken effect.
    Timeout => "TIMEOUT", DeadlineExceeded;
    /// The node is shutting down or a replica could not be reached.
    Unavailable => "UNAVAILABLE", Unavailable;
    /// Replicas disagree or stored data failed verification.
    Corruption => "CORRUPTION", DataLoss;
    /// A storage or internal failure on the node.
    Internal => "INTERNAL", Internal;
    /// The caller's credentials were not accepted (an unknown user or a wrong token secret, the
    /// same answer for both; a malformed token; a forged forwarded principal).
    Unauthenticated => "UNAUTHENTICATED", Unauthenticated;
    /// No ACL rule allows the principal the operation on the resource (the message names all three).
    NotAuthorized => "NOT_AUTHORIZED", PermissionDenied;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a client call can fail with.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was configured with no endpoint at all.
    #[error("no endpoints configured: give at least one `host:port`")]
    NoEndpoints,

    /// An endpoint string could not be turned into a URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it is invalid.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The node is not the leader; the client retries at `leader_addr` when it knows it.
    #[error("not the leader: {message}")]
    NotLeader {
        /// The leader's node id, if the node knew it.
        leader_id: Option<u64>,
        /// The leader's address, if the node knew it.
        leader_addr: Option<String>,
        /// The server's message.
        message: String,
    },

    /// A read offset is outside what a replica holds (`replica: Some(id)`: one node's answer), or,
    /// once the client asked every replica of the partition (`replica: None`), outside what any
    /// replica holds: then `log_start` is the lowest start among the replicas and `log_end` the
    /// partition's end.
    #[error("offset out of range (log holds [{log_start}, {log_end})): {message}")]
    OffsetOutOfRange {
        /// The first offset still held.
        log_start: u64,
        /// One past the last committed offset.
        log_end: u64,
        /// The node whose replica these bounds are; `None` for the partition's bounds (every
        /// replica asked) or when the node did not say.
        replica: Option<u64>,
        /// The partition's replicas, `(node id, address)`, as the answering node knows them
        /// (empty when it did not say).
        replicas: Vec<(u64, String)>,
        /// The server's (or, for the partition's bounds, the client's) message.
        message: String,
    },

    /// The server refused or failed the request; `code` says why in a stable form.
    #[error("{code}: {message}")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The limit that was hit, for limit errors.
        limit: Option<u64>,
        /// The server's message.
        message: String,
    },

    /// A gRPC failure without a Shale error code (transport errors, a proxy, an old node...).
    #[error("gRPC status {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: Code,
        /// The status message.
        message: String,
    },

    /// Client-side validation refused a value before sending it.
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// A call was retried `attempts` times and still failed.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<ClientError>,
    },

    /// The producer was closed (or its background task ended) before the record was sent.
    #[error("the producer is closed")]
    ProducerClosed,

    /// A response broke the protocol (a missing field, a wrong number of acks, ...).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// What a replica served does not continue the partition's hash chain as the client verified
    /// it so far (see [`crate::chain`]): the log was altered, or entries were hidden, dropped,
    /// invented or reordered. Nothing of the answer was handed out.
    #[error("chain mismatch in {topic}/{partition} at log index {index} (offset {offset}): {reason}")]
    ChainMismatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The log index where the chain breaks.
        index: u64,
        /// The record offset the reader was at.
        offset: u64,
        /// What differs.
        reason: ChainBreak,
    },

    /// A log entry a replica served cannot be read: too short for its envelope, or a visible
    /// record batch that does not decode.
    #[error("unreadable log entry {index} of {topic}/{partition}: {reason}")]
    MalformedEntry {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The entry's log index.
        index: u64,
        /// Why it cannot be read.
        reason: String,
    },
}

fn meta_str<'a>(map: &'a MetadataMap, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|v| v.to_str().ok())
}

fn meta_u64(map: &MetadataMap, key: &str) -> Option<u64> {
    meta_str(map, key).and_then(|s| s.parse().ok())
}

impl ClientError {
    /// Interprets a status from a Shale node (or from the transport).
    pub fn from_status(status: Status) -> Self {
        let map = status.metadata();
        let message = status.message().to_string();
        let Some(code) = meta_str(map, meta::ERROR_CODE).and_then(ErrorCode::parse) else {
            return ClientError::Status { code: status.code(), message };
        };
        match code {
            ErrorCode::NotLeader => ClientError::NotLeader {
                leader_id: meta_u64(map, meta::LEADER_ID),
                leader_addr: meta_str(map, meta::LEADER_ADDR).filter(|s| !s.is_empty()).map(str::to_string),
                message,
            },
            ErrorCode::OffsetOutOfRange => ClientError::OffsetOutOfRange {
                log_start: meta_u64(map, meta::LOG_START).unwrap_or(0),
                log_end: meta_u64(map, meta::LOG_END).unwrap_or(0),
                replica: meta_u64(map, meta::REPLICA_ID),
                replicas: meta_str(map, meta::REPLICAS).map(parse_replicas).unwrap_or_default(),
                message,
            },
            code => ClientError::Server { code, limit: meta_u64(map, meta::LIMIT), message },
        }
    }

    /// The stable error code, when the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::NotLeader { .. } => Some(ErrorCode::NotLeader),
            ClientError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            ClientError::Server { code, .. } => Some(*code),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// How this failure may be retried: THE one classification every retry loop of the client
    /// uses (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            // Refused before anything was proposed.
            ClientError::NotLeader { .. } => Retry::NotApplied,
            ClientError::Server { code, .. } => match code {
                ErrorCode::NotLeader | ErrorCode::NoLeader | ErrorCode::ProposalRefused => Retry::NotApplied,
                // A node at one of its load limits refused the request before doing anything;
                // the retry backs off, so the load can drain.
                ErrorCode::TooManyConnections | ErrorCode::TooManySubscriptions | ErrorCode::TooManyRequests => {
                    Retry::NotApplied
                }
                // A node shutting down, a replica unreachable, a commit that did not finish in
                // time: the request may have been proposed.
                ErrorCode::Unavailable | ErrorCode::Timeout => Retry::MaybeApplied,
                _ => Retry::Never,
            },
            // Transport-level failures without a Shale code: the connection could not be made or
            // was reset, the call was cancelled (`Cancelled: operation was canceled` when the
            // HTTP/2 stream is reset, e.g. by a node stopping) or ran out of time (`Cancelled:
            // Timeout expired` from the server's deadline, DEADLINE_EXCEEDED from the client's).
            // An HTTP/2 stream reset without a status (a node closing its connections) comes as
            // INTERNAL "h2 protocol error"; a node's own internal errors carry a Shale code.
            ClientError::Status { code, message } => match code {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                    Retry::MaybeApplied
                }
                Code::Internal if message.starts_with("h2 protocol error") => Retry::MaybeApplied,
                _ => Retry::Never,
            },
            // Already retried to the end of its budget; and everything the client decides itself
            // (bad configuration or request, protocol violations, a closed producer).
            _ => Retry::Never,
        }
    }

    /// Whether the same request may succeed if retried (possibly at another node): leadership
    /// moved, an election is running, a node is unreachable, stopping or timed out, the call was
    /// cancelled. Same as `self.retry() != Retry::Never`.
    pub fn is_retriable(&self) -> bool {
        self.retry() != Retry::Never
    }
}

/// How a failed call may be retried ([`ClientError::retry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Retrying cannot help: the request is wrong for the cluster's state (unknown topic, offset
    /// out of range, a limit, corruption...).
    Never,
    /// The request certainly did not take effect (not the leader, no leader): any call may be
    /// sent again.
    NotApplied,
    /// The request may or may not have taken effect (a timeout, a cancelled or reset call, a node
    /// that stopped while serving it). Reads and idempotent writes are sent again unchanged (an
    /// idempotent producer's retry carries the same producer id and sequences, so it is written
    /// once); a non-idempotent admin change is retried and its "already done" answer recognised.
    MaybeApplied,
}

/// Parses [`meta::REPLICAS`] (`id=host:port,...`); malformed entries are skipped.
pub fn parse_replicas(s: &str) -> Vec<(u64, String)> {
    s.split(',')
        .filter_map(|entry| {
            let (id, addr) = entry.trim().split_once('=')?;
            let addr = addr.trim();
            if addr.is_empty() {
                return None;
            }
            Some((id.trim().parse().ok()?, addr.to_string()))
        })
        .collect()
}

/// Formats replicas for [`meta::REPLICAS`].
pub fn format_replicas(replicas: &[(u64, String)]) -> String {
    replicas.iter().map(|(id, addr)| format!("{id}={addr}")).collect::<Vec<_>>().join(",")
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::from_status(status)
    }
}

/// Builds the status a node sends for `code`, with the code in [`meta::ERROR_CODE`].
///
/// Callers add further keys (leader, log bounds, limit) with [`status_with`].
pub fn status(code: ErrorCode, message: impl Into<String>) -> Status {
    status_with(code, message, &[])
}

/// Longest status message a node sends, in bytes: a longer one is cut at a character boundary and
/// says how long it was, so no client input echoed in a message can blow up the trailers (HTTP/2
/// header lists are limited; percent-encoding can triple the bytes).
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// `message`, cut to at most [`MAX_STATUS_MESSAGE_BYTES`] (plus a short note of its length).
pub fn bounded_message(message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_STATUS_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (message of {} bytes cut)", &message[..end], message.len())
}

/// As [`status`], plus extra `(key, value)` metadata (values must be ASCII; others are dropped).
/// The message is cut to [`MAX_STATUS_MESSAGE_BYTES`] ([`bounded_message`]).
pub fn status_with(code: ErrorCode, message: impl Into<String>, extra: &[(&'static str, String)]) -> Status {
    let message = bounded_message(message.into());
    let mut map = MetadataMap::new();
    map.insert(meta::ERROR_CODE, code.as_str().parse().expect("error codes are ASCII"));
    for (key, value) in extra {
        if let Ok(v) = value.parse() {
            map.insert(*key, v);
        }
    }
    Status::with_metadata(code.grpc_code(), message, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_wire_name() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn not_leader_status_carries_the_leader() {
        let s = status_with(
            ErrorCode::NotLeader,
            "node 2 is not the leader of orders/0",
            &[(meta::LEADER_ID, "3".into()), (meta::LEADER_ADDR, "10.0.0.3:7000".into())],
        );
        assert_eq!(s.code(), Code::Unavailable);
        match ClientError::from_status(s) {
            ClientError::NotLeader { leader_id, leader_addr, message } => {
                assert_eq!(leader_id, Some(3));
                assert_eq!(leader_addr.as_deref(), Some("10.0.0.3:7000"));
                assert!(message.contains("orders/0"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn out_of_range_status_carries_the_bounds() {
        let s = status_with(
            ErrorCode::OffsetOutOfRange,
            "offset 99",
            &[(meta::LOG_START, "5".into()), (meta::LOG_END, "42".into())],
        );
        assert_eq!(s.code(), Code::OutOfRange);
        let e = ClientError::from_status(s);
        assert!(matches!(e, ClientError::OffsetOutOfRange { log_start: 5, log_end: 42, .. }), "{e:?}");
        assert!(!e.is_retriable());
    }

    #[test]
    fn retry_classification_covers_every_transient_failure() {
        let plain = |code, message: &str| ClientError::Status { code, message: message.into() };
        let server = |code| ClientError::Server { code, limit: None, message: "m".into() };
        // Finding 6 of issue 11: these failed writes for good although attempts were left.
        assert_eq!(plain(Code::Cancelled, "Timeout expired").retry(), Retry::MaybeApplied);
        assert_eq!(plain(Code::Cancelled, "operation was canceled").retry(), Retry::MaybeApplied);
        assert_eq!(plain(Code::Internal, "h2 protocol error: stream no longer needed").retry(), Retry::MaybeApplied);
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Unknown, Code::Aborted] {
            assert_eq!(plain(code, "transport error").retry(), Retry::MaybeApplied, "{code:?}");
        }
        // Refused before anything was proposed.
        let not_leader = ClientError::NotLeader { leader_id: None, leader_addr: None, message: "m".into() };
        assert_eq!(not_leader.retry(), Retry::NotApplied);
        assert_eq!(server(ErrorCode::NoLeader).retry(), Retry::NotApplied);
        // A proposal refused at apply wrote nothing; the leader resyncs before the next one.
        assert_eq!(server(ErrorCode::ProposalRefused).retry(), Retry::NotApplied);
        // A node at a load limit refused it before doing anything: back off and retry.
        for code in [ErrorCode::TooManyConnections, ErrorCode::TooManySubscriptions, ErrorCode::TooManyRequests] {
            assert_eq!(server(code).retry(), Retry::NotApplied, "{code}");
            assert_eq!(code.grpc_code(), Code::ResourceExhausted);
        }
        // A node shutting down / a commit that did not finish in time.
        assert_eq!(server(ErrorCode::Unavailable).retry(), Retry::MaybeApplied);
        assert_eq!(server(ErrorCode::Timeout).retry(), Retry::MaybeApplied);
        // Retrying cannot help.
        for code in [
            ErrorCode::UnknownTopic,
            ErrorCode::UnknownPartition,
            ErrorCode::TopicExists,
            ErrorCode::RecordTooLarge,
            ErrorCode::OutOfOrderSequence,
            // The producer resends it itself, in order, once the batch before it is settled.
            ErrorCode::SequenceGap,
            ErrorCode::Corruption,
            ErrorCode::Internal,
            ErrorCode::InvalidArgument,
            // The consumer answers it itself (reads by offset and anchors the chain again).
            ErrorCode::InvalidFromIndex,
            // A cluster total stays reached until an operator deletes topics or raises it.
            ErrorCode::ClusterLimit,
            ErrorCode::InvalidRequest,
            ErrorCode::RequestTooLarge,
        ] {
            assert_eq!(server(code).retry(), Retry::Never, "{code}");
        }
        assert_eq!(plain(Code::Internal, "failed to decode Protobuf message").retry(), Retry::Never);
        assert_eq!(plain(Code::InvalidArgument, "x").retry(), Retry::Never);
        let exhausted = ClientError::RetriesExhausted { attempts: 3, last: Box::new(server(ErrorCode::Timeout)) };
        assert_eq!(exhausted.retry(), Retry::Never);
        assert!(!ClientError::ProducerClosed.is_retriable());
        assert!(plain(Code::Cancelled, "Timeout expired").is_retriable());
    }

    #[test]
    fn replica_lists_round_trip_and_skip_malformed_entries() {
        let replicas = vec![(1, "10.0.0.1:7001".to_string()), (3, "node-3:7001".to_string())];
        assert_eq!(parse_replicas(&format_replicas(&replicas)), replicas);
        assert_eq!(parse_replicas("2=a:1, x=b:2,3=,4,5=c:3"), vec![(2, "a:1".to_string()), (5, "c:3".to_string())]);
        assert!(parse_replicas("").is_empty());
        let s = status_with(
            ErrorCode::OffsetOutOfRange,
            "offset 0",
            &[
                (meta::LOG_START, "64".into()),
                (meta::LOG_END, "70".into()),
                (meta::REPLICA_ID, "2".into()),
                (meta::REPLICAS, format_replicas(&replicas)),
            ],
        );
        match ClientError::from_status(s) {
            ClientError::OffsetOutOfRange { log_start: 64, log_end: 70, replica: Some(2), replicas: got, .. } => {
                assert_eq!(got, replicas)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn limit_errors_carry_the_limit_and_plain_statuses_stay_plain() {
        let e = ClientError::from_status(status_with(
            ErrorCode::RecordTooLarge,
            "record 0 is 2000000 bytes",
            &[(meta::LIMIT, "1048576".into())],
        ));
        assert!(matches!(e, ClientError::Server { code: ErrorCode::RecordTooLarge, limit: Some(1_048_576), .. }));
        let plain = ClientError::from_status(Status::unavailable("connection refused"));
        assert!(matches!(plain, ClientError::Status { code: Code::Unavailable, .. }));
        assert!(plain.is_retriable());
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_with_their_length() {
        let short = status(ErrorCode::UnknownTopic, "unknown topic \"t\"");
        assert_eq!(short.message(), "unknown topic \"t\"");
        let long = format!("unknown topic {}", "é".repeat(5000));
        let s = status(ErrorCode::UnknownTopic, long.clone());
        assert!(s.message().len() < MAX_STATUS_MESSAGE_BYTES + 64, "{}", s.message().len());
        assert!(s.message().starts_with("unknown topic éé"));
        assert!(s.message().ends_with(&format!("... (message of {} bytes cut)", long.len())), "{}", s.message());
    }
}
