//! The one mapping of Shale's errors to Kafka error codes (every Kafka handler answers through
//! it). Retryable Shale errors map to retriable Kafka codes, so clients retry (and refresh their
//! metadata on NOT_LEADER_OR_FOLLOWER) as they would against Kafka.

use kafka_protocol::ResponseError;
use shale_raft::cluster::ClusterError;

/// The Kafka error code for a failed cluster call.
pub fn code(err: &ClusterError) -> i16 {
    let e = match err {
        // A client that meets a leader change refreshes its metadata and retries the leader.
        ClusterError::NotLeader { .. } | ClusterError::NotReplica { .. } | ClusterError::Shutdown => {
            ResponseError::NotLeaderOrFollower
        }
        // The leader's prediction was stale (a leader change): nothing written, retry.
        ClusterError::ProposalRefused { .. } => ResponseError::NotLeaderOrFollower,
        ClusterError::NotBootstrapped => ResponseError::LeaderNotAvailable,
        ClusterError::UnknownTopic { .. } | ClusterError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        ClusterError::TopicExists { .. } => ResponseError::TopicAlreadyExists,
        ClusterError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        ClusterError::ClusterLimit { .. } | ClusterError::NodeLimit { .. } => ResponseError::PolicyViolation,
        ClusterError::NotEnoughNodes { .. } => ResponseError::InvalidReplicationFactor,
        ClusterError::InvalidArgument { .. } => ResponseError::InvalidRequest,
        ClusterError::OffsetOutOfRange { .. } | ClusterError::InvalidFromIndex { .. } => {
            ResponseError::OffsetOutOfRange
        }
        ClusterError::SequenceGap { .. } => ResponseError::OutOfOrderSequenceNumber,
        ClusterError::DuplicateSequenceOutOfWindow { .. } | ClusterError::DuplicateOfPurgedRecord { .. } => {
            ResponseError::DuplicateSequenceNumber
        }
        ClusterError::Timeout { .. } => ResponseError::RequestTimedOut,
        ClusterError::UnknownGroupMember { .. } => ResponseError::UnknownMemberId,
        ClusterError::FencedMember { .. } => ResponseError::IllegalGeneration,
        ClusterError::GroupNotEmpty { .. } => ResponseError::NonEmptyGroup,
        ClusterError::UnknownGroup { .. } => ResponseError::GroupIdNotFound,
        ClusterError::Storage(_) => ResponseError::KafkaStorageError,
        // Membership changes, Raft failures, undecodable stored bytes, and anything added later.
        _ => ResponseError::UnknownServerError,
    };
    e.code()
}

/// No error.
pub const NONE: i16 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_shale_errors_are_retriable_kafka_codes() {
        let retryable = [
            ClusterError::NotLeader { leader: None },
            ClusterError::NotReplica { topic: "t".into(), partition: 0, replicas: vec![2] },
            ClusterError::Timeout { what: "x".into(), waited_ms: 1 },
            ClusterError::NotBootstrapped,
            ClusterError::UnknownTopic { name: "t".into() },
        ];
        for err in retryable {
            let code = code(&err);
            assert!(ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable()), "{err}: {code}");
        }
        assert_eq!(code(&ClusterError::OffsetOutOfRange { requested: 9, start: 0, end: 3 }), 1);
        assert_eq!(code(&ClusterError::TopicExists { name: "t".into() }), 36);
    }
}
