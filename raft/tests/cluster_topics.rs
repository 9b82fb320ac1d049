//! Topic lifecycle on a 3-node in-process cluster: placement, leaders, describe, alter, delete.

mod cluster_support;

use std::collections::BTreeSet;

use cluster_support::*;
use shale_raft::cluster::{ClusterError, RetentionPolicy, TopicUpdate, partition_group_id};
use shale_storage::CodecKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_groups_come_up_on_their_replicas_with_leaders_spread() {
    let c = TestCluster::start(3).await;
    let info = c.create_topic("orders", 3, 3).await;
    assert_eq!(info.partitions.len(), 3);
    let preferred: Vec<_> = info.partitions.iter().map(|p| p.replicas[0]).collect();
    assert_eq!(preferred.iter().collect::<BTreeSet<_>>().len(), 3, "preferred leaders are spread: {preferred:?}");

    // Every partition gets a leader agreed by its replicas; then leadership settles on the preferred one.
    c.wait_partition_leaders("orders").await;
    let leaders = c.settled_leaders("orders").await;
    assert_eq!(leaders, preferred);
    assert_eq!(leaders.iter().collect::<BTreeSet<_>>().len(), 3);

    // Each node runs exactly the groups it replicates.
    for id in 1..=3 {
        let status = c.node(id).cluster_status();
        assert_eq!(status.members.len(), 3);
        assert_eq!(status.partitions.len(), 3, "node {id} replicates every partition at rf 3");
    }

    // describe_topic is served by the metadata leader and reports the live state.
    let ml = c.metadata_leader().await;
    let d = c.node(ml).describe_topic("orders").await.expect("describe");
    assert_eq!(d.info, info);
    for p in &d.partitions {
        assert!(p.leader.is_some());
        assert!(p.high_watermark.is_some());
    }
    let follower = (1..=3).find(|id| *id != ml).expect("a follower");
    assert!(
        matches!(c.node(follower).list_topics().await, Err(ClusterError::NotLeader { leader: Some((l, _)) }) if l == ml)
    );
    assert_eq!(c.node(ml).list_topics().await.expect("list").len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_errors_are_typed() {
    let c = TestCluster::start(3).await;
    c.create_topic("t", 1, 1).await;
    let ml = c.metadata_leader().await;
    let n = c.node(ml);
    assert!(matches!(n.create_topic(spec("t", 1, 1)).await, Err(ClusterError::TopicExists { name }) if name == "t"));
    assert!(matches!(n.create_topic(spec("bad/name", 1, 1)).await, Err(ClusterError::InvalidTopicName { .. })));
    assert!(matches!(
        n.create_topic(spec("big", 1, 4)).await,
        Err(ClusterError::NotEnoughNodes { requested: 4, available: 3 })
    ));
    assert!(matches!(n.delete_topic("nope").await, Err(ClusterError::UnknownTopic { name }) if name == "nope"));
    assert!(matches!(
        n.commit_offsets("g", None, vec![("t".to_string(), 5, 1)]).await,
        Err(ClusterError::UnknownPartition { partition: 5, count: 1, .. })
    ));
    let update = TopicUpdate {
        retention: Some(RetentionPolicy { retention_bytes: Some(1 << 20), retention_ms: Some(60_000) }),
        codec: Some(CodecKind::Lz4),
    };
    let altered = n.alter_topic("t", update).await.expect("alter");
    assert_eq!(altered.codec, CodecKind::Lz4);
    assert_eq!(altered.retention.retention_ms, Some(60_000));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_stops_groups_and_deletes_streams() {
    let c = TestCluster::start(3).await;
    let info = c.create_topic("doomed", 2, 3).await;
    c.wait_partition_leaders("doomed").await;
    c.produce("doomed", 0, vec![record("k", "v")], None).await.expect("produce");
    let groups: Vec<_> = (0..2).map(|p| partition_group_id(info.id, p)).collect();
    // A replica's log stream appears with the first entry it receives, which may come after the
    // leaders are agreed (a follower's `leader_of` names the preferred replica before its group runs).
    wait_for("every replica holds every group's log stream", || async {
        c.nodes.iter().all(|node| groups.iter().all(|g| node.storage.streams().contains(&g.log_stream()))).then_some(())
    })
    .await;
    let ml = c.metadata_leader().await;
    c.node(ml).delete_topic("doomed").await.expect("delete");
    wait_for("groups stopped and streams deleted everywhere", || async {
        let gone = c.nodes.iter().all(|n| {
            let streams = n.storage.streams();
            let status = c.node(n.id).cluster_status();
            status.partitions.is_empty()
                && groups.iter().all(|g| !streams.contains(&g.log_stream()) && !streams.contains(&g.meta_stream()))
        });
        gone.then_some(())
    })
    .await;
    assert!(matches!(c.node(ml).describe_topic("doomed").await, Err(ClusterError::UnknownTopic { .. })));
    // A new topic of the same name gets new groups.
    let again = c.create_topic("doomed", 1, 3).await;
    assert_ne!(again.id, info.id);
    c.wait_partition_leaders("doomed").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_delete_drops_the_streams_when_it_returns() {
    let mut c = TestCluster::start(3).await;
    let info = c.create_topic("gone", 1, 3).await;
    c.wait_partition_leaders("gone").await;
    c.produce("gone", 0, vec![record("k", "v")], None).await.expect("produce");
    let group = partition_group_id(info.id, 0);
    let away = {
        let ml = c.metadata_leader().await;
        (1..=3).find(|id| *id != ml).expect("a non-leader")
    };
    wait_for("the node away has the stream", || async {
        c.nodes[away as usize - 1].storage.streams().contains(&group.log_stream()).then_some(())
    })
    .await;
    c.kill(away).await;
    let ml = c.metadata_leader().await;
    c.node(ml).delete_topic("gone").await.expect("delete");
    // Still there while the node is down; gone once it has caught up with the metadata.
    assert!(c.nodes[away as usize - 1].storage.streams().contains(&group.log_stream()));
    c.restart(away).await;
    wait_for("the returning node deleted the topic's streams", || async {
        let streams = c.nodes[away as usize - 1].storage.streams();
        (!streams.contains(&group.log_stream()) && !streams.contains(&group.meta_stream())).then_some(())
    })
    .await;
    assert!(c.node(away).cluster_status().partitions.is_empty());
    c.shutdown().await;
}

/// A node returning during a rolling upgrade, its metadata leader of a version before ReadIndex
/// (the Raft servers answer it UNIMPLEMENTED): the node trusts the commit index the leader sends
/// once it covers the node's own log, so it starts its partition groups instead of waiting for the
/// upgrade, and it still applies the deletion made while it was down before starting anything
/// (the deleted topic's group is not started and its streams are dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_returning_under_a_metadata_leader_without_read_index_starts_its_groups_but_not_deleted_ones() {
    let mut c = TestCluster::start_with(Setup { serve_read_index: false, ..Setup::new(3) }).await;
    let kept = c.create_topic("kept", 1, 3).await;
    let gone = c.create_topic("gone", 1, 3).await;
    c.wait_partition_leaders("kept").await;
    c.wait_partition_leaders("gone").await;
    let (kept_group, gone_group) = (partition_group_id(kept.id, 0), partition_group_id(gone.id, 0));
    let away = {
        let ml = c.metadata_leader().await;
        (1..=3).find(|id| *id != ml).expect("a non-leader")
    };
    wait_for("the node away has both topics' streams", || async {
        let streams = c.nodes[away as usize - 1].storage.streams();
        (streams.contains(&kept_group.log_stream()) && streams.contains(&gone_group.log_stream())).then_some(())
    })
    .await;
    c.kill(away).await;
    let ml = c.metadata_leader().await;
    c.node(ml).delete_topic("gone").await.expect("delete");
    c.produce("kept", 0, vec![record("k", "written while a replica was away")], None).await.expect("produce");
    c.restart(away).await;
    wait_for("the returning node runs kept's group and applied what was written meanwhile", || async {
        let here = c.partition_status(away, "kept", 0)?;
        let leader = c.partition_status(here.leader?, "kept", 0)?;
        (here.applied_index >= leader.commit_index && leader.commit_index > 0).then_some(())
    })
    .await;
    wait_for("the returning node dropped the deleted topic's streams", || async {
        let streams = c.nodes[away as usize - 1].storage.streams();
        (!streams.contains(&gone_group.log_stream()) && !streams.contains(&gone_group.meta_stream())).then_some(())
    })
    .await;
    assert!(
        c.node(away).cluster_status().partitions.iter().all(|g| g.group != gone_group),
        "the deleted topic's group runs on the returning node"
    );
    c.shutdown().await;
}
