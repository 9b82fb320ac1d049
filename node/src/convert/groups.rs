//! Consumer-group messages <-> cluster consumer offsets.

use shale_client::proto;
use shale_raft::cluster::ConsumerOffset;

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
