//! Consumer-group messages <-> cluster consumer offsets and coordinator state.

use shale_client::proto;
use shale_raft::cluster::groups::{GroupState, Subscription, TopicPartition};
use shale_raft::cluster::{ConsumerOffset, MemberAssignment};
use tonic::Status;

use crate::convert::errors::invalid;

/// A subscription from the wire.
pub fn subscription(s: &proto::GroupSubscription) -> Result<Subscription, Status> {
    match &s.kind {
        Some(proto::group_subscription::Kind::Topic(t)) => Ok(Subscription::Topic(t.clone())),
        Some(proto::group_subscription::Kind::Prefix(p)) => Ok(Subscription::Prefix(p.clone())),
        None => Err(invalid("subscriptions", "a subscription names neither a topic nor a prefix")),
    }
}

/// A subscription on the wire.
pub fn subscription_proto(s: &Subscription) -> proto::GroupSubscription {
    let kind = match s {
        Subscription::Topic(t) => proto::group_subscription::Kind::Topic(t.clone()),
        Subscription::Prefix(p) => proto::group_subscription::Kind::Prefix(p.clone()),
    };
    proto::GroupSubscription { kind: Some(kind) }
}

/// Partitions on the wire.
pub fn partitions_proto<'a>(parts: impl IntoIterator<Item = &'a TopicPartition>) -> Vec<proto::TopicPartition> {
    parts
        .into_iter()
        .map(|(topic, partition)| proto::TopicPartition { topic: topic.clone(), partition: *partition })
        .collect()
}

/// Partitions from the wire.
pub fn partitions(parts: &[proto::TopicPartition]) -> Vec<TopicPartition> {
    parts.iter().map(|p| (p.topic.clone(), p.partition)).collect()
}

/// A member's assignment on the wire.
pub fn assignment_proto(a: &MemberAssignment) -> proto::GroupAssignment {
    proto::GroupAssignment {
        member_id: a.member_id.clone(),
        member_epoch: a.member_epoch,
        group_epoch: a.group_epoch,
        assigned: partitions_proto(&a.assigned),
        revoking: partitions_proto(&a.revoking),
        heartbeat_interval_ms: a.heartbeat_interval_ms,
    }
}

/// A group's members on the wire.
pub fn members_proto(g: &GroupState) -> Vec<proto::GroupMemberState> {
    g.members
        .iter()
        .map(|(id, m)| proto::GroupMemberState {
            member_id: id.clone(),
            client_addr: m.client_addr.clone(),
            member_epoch: m.epoch,
            subscriptions: m.subscriptions.iter().map(subscription_proto).collect(),
            session_timeout_ms: m.session_timeout_ms,
            assigned: partitions_proto(&m.assigned),
            revoking: partitions_proto(&m.revoking),
        })
        .collect()
}

/// Committed offsets on the wire, keeping only `wanted` partitions (all when empty).
pub fn partition_offsets(offsets: &[ConsumerOffset], wanted: &[proto::TopicPartition]) -> Vec<proto::PartitionOffset> {
    offsets
        .iter()
        .filter(|o| wanted.is_empty() || wanted.iter().any(|w| w.topic == o.topic && w.partition == o.partition))
        .map(|o| proto::PartitionOffset { topic: o.topic.clone(), partition: o.partition, offset: o.offset })
        .collect()
}

/// A group's lag per partition; `log_end` is the partition's high watermark (looked up by the
/// caller where the cluster did not know it).
pub fn group_lag(o: &ConsumerOffset, log_end: u64) -> proto::GroupPartitionLag {
    proto::GroupPartitionLag {
        topic: o.topic.clone(),
        partition: o.partition,
        committed_offset: o.offset,
        log_end,
        lag: log_end.saturating_sub(o.offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(topic: &str, partition: u32, offset: u64) -> ConsumerOffset {
        ConsumerOffset { topic: topic.into(), partition, offset, high_watermark: None, lag: None }
    }

    #[test]
    fn offsets_are_filtered_by_the_wanted_partitions() {
        let all = [off("a", 0, 5), off("a", 1, 6), off("b", 0, 7)];
        assert_eq!(partition_offsets(&all, &[]).len(), 3);
        let only = partition_offsets(&all, &[proto::TopicPartition { topic: "a".into(), partition: 1 }]);
        assert_eq!(only, vec![proto::PartitionOffset { topic: "a".into(), partition: 1, offset: 6 }]);
    }

    #[test]
    fn lag_saturates_when_the_commit_is_ahead() {
        assert_eq!(group_lag(&off("a", 0, 5), 12).lag, 7);
        assert_eq!(group_lag(&off("a", 0, 15), 12).lag, 0);
    }
}
