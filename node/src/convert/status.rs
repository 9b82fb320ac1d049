//! Cluster status, membership and maintenance results on the wire.

use shale_client::proto;
use shale_raft::cluster::{ClusterStatus, CompactOutcome, GroupStatus, MemberInfo};

/// Members on the wire (`addr` is the client address, what clients use; `internal_addr` the
/// one nodes use); `voters` are the metadata group's voters (others are learners).
pub fn members(members: &[MemberInfo], voters: &[u64]) -> Vec<proto::NodeInfo> {
    members
        .iter()
        .map(|m| proto::NodeInfo {
            id: m.id,
            addr: m.client_addr.clone(),
            role: if voters.contains(&m.id) { "voter" } else { "learner" }.to_string(),
            internal_addr: m.addr.clone(),
            kafka_addr: m.kafka_addr.clone(),
        })
        .collect()
}

/// One group's Raft state on the wire.
pub fn group_status(g: &GroupStatus, log_end: u64) -> proto::GroupStatus {
    let (name, topic, partition) = match &g.partition {
        Some((topic, partition)) => (format!("{topic}/{partition}"), topic.clone(), *partition),
        None => ("meta".to_string(), String::new(), 0),
    };
    proto::GroupStatus {
        name,
        topic,
        partition,
        leader_id: g.leader.unwrap_or(0),
        replicas: g.replicas.clone(),
        term: g.term,
        last_log_index: g.last_log_index,
        commit_index: g.commit_index,
        apply_index: g.applied_index,
        progress: g
            .replica_lag
            .iter()
            .map(|(node_id, lag)| proto::ReplicaProgress {
                node_id: *node_id,
                matched_index: Some(g.last_log_index.saturating_sub(*lag)),
                lag: *lag,
            })
            .collect(),
        log_end,
    }
}

/// The whole status on the wire. A partition's `log_end` is its applied index + 1 here.
pub fn cluster_status(s: &ClusterStatus) -> proto::ClusterStatusResponse {
    let voters = s.metadata.as_ref().map(|m| m.replicas.clone()).unwrap_or_default();
    proto::ClusterStatusResponse {
        node_id: s.node_id,
        members: members(&s.members, &voters),
        meta: s.metadata.as_ref().map(|g| group_status(g, 0)),
        partitions: s.partitions.iter().map(|g| group_status(g, g.applied_index + 1)).collect(),
        damaged: Vec::new(),
        client_addr: String::new(),
        internal_addr: String::new(),
        kafka_addr: String::new(),
    }
}

/// This node's damaged ranges on the wire, named by the topics of the applied metadata.
pub fn damaged(
    topics: &[shale_raft::cluster::TopicInfo],
    node_id: u64,
    ranges: &[crate::scrub::DamagedRange],
) -> Vec<proto::DamagedRange> {
    ranges
        .iter()
        .map(|d| {
            let name = if d.group.0 == 0 {
                "meta".to_string()
            } else {
                topics
                    .iter()
                    .find_map(|t| {
                        t.partitions.iter().find(|p| p.group == d.group).map(|p| format!("{}/{}", t.name, p.partition))
                    })
                    .unwrap_or_else(|| format!("group {}", d.group.0))
            };
            proto::DamagedRange {
                name,
                group_id: d.group.0,
                node_id,
                from: d.from,
                to: d.to,
                file: d.file.clone(),
                reason: d.reason.clone(),
            }
        })
        .collect()
}

/// A compaction's outcome on the wire.
pub fn compaction(topic: &str, partition: u32, o: &CompactOutcome) -> proto::PartitionCompaction {
    proto::PartitionCompaction {
        topic: topic.to_string(),
        partition,
        snapshot_index: o.snapshot_index,
        log_start_before: o.log_start_before,
        log_start_after: o.log_start_after,
    }
}

#[cfg(test)]
mod tests {
    use shale_raft::GroupId;

    use super::*;

    #[test]
    fn status_names_groups_and_derives_matched_index() {
        let s = ClusterStatus {
            node_id: 1,
            members: vec![
                MemberInfo { id: 1, addr: "a:1".into(), client_addr: "a:1".into(), kafka_addr: String::new() },
                MemberInfo {
                    id: 4,
                    addr: "d:1".into(),
                    client_addr: "127.0.0.1:7004".into(),
                    kafka_addr: "127.0.0.1:9095".into(),
                },
            ],
            metadata: Some(GroupStatus {
                group: GroupId(0),
                partition: None,
                replicas: vec![1],
                leader: Some(1),
                term: 2,
                commit_index: 10,
                applied_index: 10,
                last_log_index: 10,
                replica_lag: vec![],
            }),
            partitions: vec![GroupStatus {
                group: GroupId(5),
                partition: Some(("t".into(), 3)),
                replicas: vec![1, 4],
                leader: None,
                term: 1,
                commit_index: 7,
                applied_index: 6,
                last_log_index: 9,
                replica_lag: vec![(4, 2)],
            }],
        };
        let p = cluster_status(&s);
        assert_eq!(p.members[0].role, "voter");
        assert_eq!(p.members[1].role, "learner");
        assert_eq!(
            (p.members[1].addr.as_str(), p.members[1].internal_addr.as_str()),
            ("127.0.0.1:7004", "d:1"),
            "clients are told the client address"
        );
        assert_eq!(p.meta.unwrap().name, "meta");
        let g = &p.partitions[0];
        assert_eq!((g.name.as_str(), g.leader_id, g.log_end), ("t/3", 0, 7));
        assert_eq!(g.progress[0].matched_index, Some(7));
    }
}
