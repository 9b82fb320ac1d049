//! The ONE mapping from [`ClusterError`] (and the node's own refusals) to gRPC statuses.
//!
//! Every status carries a stable code in `shale-error-code`, plus the keys its code documents
//! (`shale-leader-id`/`shale-leader-addr`, `shale-log-start`/`shale-log-end`, `shale-limit`); see
//! [`shale_client::error`] for the contract and the client side.

use shale_client::error::{format_replicas, status, status_with};
use shale_client::{ErrorCode, meta};
use shale_raft::RaftError;
use shale_raft::cluster::{ClusterError, FromIndexProblem};
use shale_storage::StorageError;
use tonic::Status;

/// The status a cluster error is answered with.
pub fn cluster_error(err: ClusterError) -> Status {
    let message = err.to_string();
    match err {
        ClusterError::NotLeader { leader } => not_leader(message, leader),
        ClusterError::NotBootstrapped => status(ErrorCode::NoLeader, message),
        ClusterError::UnknownTopic { .. } => status(ErrorCode::UnknownTopic, message),
        ClusterError::TopicExists { .. } => status(ErrorCode::TopicExists, message),
        ClusterError::UnknownPartition { .. } => status(ErrorCode::UnknownPartition, message),
        // The node forwards to a replica itself; this is only seen when it could not.
        ClusterError::NotReplica { .. } => status(ErrorCode::NotLeader, message),
        ClusterError::InvalidTopicName { .. } => status(ErrorCode::InvalidTopicName, message),
        ClusterError::InvalidArgument { .. } => status(ErrorCode::InvalidArgument, message),
        ClusterError::ClusterLimit { limit: max, .. } => limit(ErrorCode::ClusterLimit, message, max),
        ClusterError::NodeLimit { max, .. } => limit(ErrorCode::ClusterLimit, message, max),
        ClusterError::NotEnoughNodes { .. } => status(ErrorCode::InvalidConfig, message),
        ClusterError::OffsetOutOfRange { start, end, .. } => out_of_range(message, start, end),
        ClusterError::DuplicateSequenceOutOfWindow { .. } => status(ErrorCode::OutOfOrderSequence, message),
        ClusterError::DuplicateOfPurgedRecord { .. } => status(ErrorCode::DuplicateOfPurgedRecord, message),
        ClusterError::SequenceGap { .. } => status(ErrorCode::SequenceGap, message),
        ClusterError::ProposalRefused { .. } => status(ErrorCode::ProposalRefused, message),
        // This replica has not applied that far yet (the leader, when it is elsewhere, is asked
        // first): retryable.
        ClusterError::InvalidFromIndex { reason: FromIndexProblem::PastApplied { .. }, .. } => {
            status(ErrorCode::Unavailable, message)
        }
        ClusterError::InvalidFromIndex { .. } => status(ErrorCode::InvalidFromIndex, message),
        ClusterError::Membership { .. } | ClusterError::NotCaughtUp { .. } => {
            status(ErrorCode::FailedPrecondition, message)
        }
        ClusterError::Timeout { .. } => status(ErrorCode::Timeout, message),
        ClusterError::Shutdown => status(ErrorCode::Unavailable, message),
        ClusterError::Raft(raft) => raft_error(message, raft),
        ClusterError::Storage(storage) => storage_error(message, &storage),
        ClusterError::Decode { .. } => status(ErrorCode::Corruption, message),
        ClusterError::UnknownGroupMember { .. } => status(ErrorCode::UnknownMemberId, message),
        ClusterError::FencedMember { .. } => status(ErrorCode::FencedMember, message),
        ClusterError::GroupNotEmpty { .. } => status(ErrorCode::GroupNotEmpty, message),
        ClusterError::UnknownGroup { .. } => status(ErrorCode::UnknownGroup, message),
        // `ClusterError` is non-exhaustive: anything new is an internal error until mapped here.
        _ => status(ErrorCode::Internal, message),
    }
}

fn raft_error(message: String, err: RaftError) -> Status {
    match err {
        RaftError::NotLeader { leader, .. } => not_leader(message, leader),
        RaftError::OffsetOutOfRange { log_start, next, .. } => out_of_range(message, log_start, next),
        RaftError::Timeout { .. } => status(ErrorCode::Timeout, message),
        RaftError::Network { .. } | RaftError::ShuttingDown { .. } | RaftError::NoQuorum { .. } => {
            status(ErrorCode::Unavailable, message)
        }
        RaftError::MembershipChange { .. } => status(ErrorCode::FailedPrecondition, message),
        RaftError::TransferRefused { .. } | RaftError::TransferFailed { .. } => {
            status(ErrorCode::FailedPrecondition, message)
        }
        RaftError::Storage { source, .. } => storage_error(message, &source),
        _ => status(ErrorCode::Internal, message),
    }
}

fn storage_error(message: String, err: &StorageError) -> Status {
    match err {
        StorageError::Corruption { .. } => status(ErrorCode::Corruption, message),
        StorageError::OffsetOutOfRange { start, end, .. } => out_of_range(message, start.get(), end.get()),
        _ => status(ErrorCode::Internal, message),
    }
}

/// NOT_LEADER, naming the leader when known.
pub fn not_leader(message: String, leader: Option<(u64, String)>) -> Status {
    match leader {
        Some((id, addr)) => {
            status_with(ErrorCode::NotLeader, message, &[(meta::LEADER_ID, id.to_string()), (meta::LEADER_ADDR, addr)])
        }
        None => status(ErrorCode::NotLeader, message),
    }
}

/// OFFSET_OUT_OF_RANGE with the log bounds.
pub fn out_of_range(message: String, log_start: u64, log_end: u64) -> Status {
    status_with(
        ErrorCode::OffsetOutOfRange,
        message,
        &[(meta::LOG_START, log_start.to_string()), (meta::LOG_END, log_end.to_string())],
    )
}

/// OFFSET_OUT_OF_RANGE of a read answered by one replica: its log bounds, its node id, and the
/// partition's replicas (`id=host:port`), so the client can read the offset from another replica.
pub fn replica_out_of_range(
    message: String,
    log_start: u64,
    log_end: u64,
    replica: u64,
    replicas: &[(u64, String)],
) -> Status {
    status_with(
        ErrorCode::OffsetOutOfRange,
        message,
        &[
            (meta::LOG_START, log_start.to_string()),
            (meta::LOG_END, log_end.to_string()),
            (meta::REPLICA_ID, replica.to_string()),
            (meta::REPLICAS, format_replicas(replicas)),
        ],
    )
}

/// A limit error naming the limit.
pub fn limit(code: ErrorCode, message: String, limit: u64) -> Status {
    status_with(code, message, &[(meta::LIMIT, limit.to_string())])
}

/// INVALID_ARGUMENT for a bad request field.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    status(ErrorCode::InvalidArgument, format!("invalid {field}: {reason}"))
}

#[cfg(test)]
mod tests {
    use shale_client::ClientError;
    use shale_raft::cluster::ProposalRefusal;

    use super::*;

    #[test]
    fn not_leader_round_trips_to_the_client_with_the_leader() {
        let s = cluster_error(ClusterError::NotLeader { leader: Some((3, "10.1.1.3:7001".into())) });
        match ClientError::from_status(s) {
            ClientError::NotLeader { leader_id: Some(3), leader_addr: Some(addr), .. } => {
                assert_eq!(addr, "10.1.1.3:7001")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn out_of_range_round_trips_with_bounds() {
        let s = cluster_error(ClusterError::OffsetOutOfRange { requested: 900, start: 10, end: 20 });
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        let e = ClientError::from_status(s);
        assert!(matches!(e, ClientError::OffsetOutOfRange { log_start: 10, log_end: 20, .. }), "{e:?}");
    }

    #[test]
    fn a_replica_out_of_range_names_the_replica_and_the_partition_replicas() {
        let replicas = [(1, "10.0.0.1:7001".to_string()), (3, "10.0.0.3:7001".to_string())];
        let s = replica_out_of_range("offset 5 is out of range [64, 70] on node 1".into(), 64, 70, 1, &replicas);
        match ClientError::from_status(s) {
            ClientError::OffsetOutOfRange { log_start: 64, log_end: 70, replica: Some(1), replicas: got, .. } => {
                assert_eq!(got, replicas.to_vec())
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_refused_proposal_is_retried_and_a_lagging_replica_too() {
        let refused = ClusterError::ProposalRefused { entry_index: 5, reason: ProposalRefusal::Invalid };
        assert!(ClientError::from_status(cluster_error(refused)).is_retriable());
        let behind =
            ClusterError::InvalidFromIndex { requested: 9, reason: FromIndexProblem::PastApplied { applied: None } };
        assert!(ClientError::from_status(cluster_error(behind)).is_retriable());
    }

    #[test]
    fn each_error_family_has_its_code() {
        let cases = [
            (ClusterError::UnknownTopic { name: "t".into() }, ErrorCode::UnknownTopic),
            (ClusterError::TopicExists { name: "t".into() }, ErrorCode::TopicExists),
            (ClusterError::UnknownPartition { topic: "t".into(), partition: 9, count: 3 }, ErrorCode::UnknownPartition),
            (
                ClusterError::InvalidTopicName { name: "a b".into(), reason: "space".into() },
                ErrorCode::InvalidTopicName,
            ),
            (ClusterError::Timeout { what: "commit".into(), waited_ms: 10 }, ErrorCode::Timeout),
            (ClusterError::Shutdown, ErrorCode::Unavailable),
            (ClusterError::NotBootstrapped, ErrorCode::NoLeader),
            (ClusterError::SequenceGap { producer_id: 1, sequence: 9, expected: 4 }, ErrorCode::SequenceGap),
            (
                ClusterError::ProposalRefused {
                    entry_index: 12,
                    reason: ProposalRefusal::OffsetMismatch { proposed: 40, expected: 41 },
                },
                ErrorCode::ProposalRefused,
            ),
            (
                ClusterError::InvalidFromIndex {
                    requested: 3,
                    reason: FromIndexProblem::BelowLogStart { log_start: 10 },
                },
                ErrorCode::InvalidFromIndex,
            ),
            (
                ClusterError::InvalidFromIndex {
                    requested: 30,
                    reason: FromIndexProblem::PastApplied { applied: Some(20) },
                },
                ErrorCode::Unavailable,
            ),
            (
                ClusterError::Raft(RaftError::TransferRefused {
                    group: shale_raft::GroupId(65537),
                    to: 2,
                    reason: shale_raft::TransferRefusal::NotAnswering { within_ms: 500 },
                }),
                ErrorCode::FailedPrecondition,
            ),
            (
                ClusterError::Raft(RaftError::TransferFailed {
                    group: shale_raft::GroupId(65537),
                    to: 2,
                    leader: Some(3),
                }),
                ErrorCode::FailedPrecondition,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let s = cluster_error(err);
            assert_eq!(s.code(), code.grpc_code(), "{text}");
            assert_eq!(ClientError::from_status(s).code(), Some(code), "{text}");
        }
    }
}
