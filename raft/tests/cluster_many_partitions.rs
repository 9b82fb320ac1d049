//! Many partitions on a 3-node in-process cluster (issue 15, cluster layer): reconciliation after
//! a restart starts no group of a deleted topic; leaders follow the preferred replicas, so each
//! node leads a third of the partitions, after creation and after a node restart.

mod cluster_support;

use std::collections::BTreeMap;

use cluster_support::*;
use shale_raft::cluster::NodeId;

/// Three nodes with a heartbeat slow enough for a few dozen groups on a busy two-core machine
/// (every group heartbeats on its own until heartbeats are coalesced).
async fn start() -> TestCluster {
    TestCluster::start_with(Setup { heartbeat_interval_ms: 150, ..Setup::new(3) }).await
}

/// Topics `prefix0..prefixN` of `partitions` partitions at rf 3, each with its leaders agreed.
async fn create_topics(c: &TestCluster, prefix: &str, topics: usize, partitions: u32) -> Vec<String> {
    let names: Vec<String> = (0..topics).map(|i| format!("{prefix}{i}")).collect();
    for name in &names {
        c.create_topic(name, partitions, 3).await;
    }
    for name in &names {
        c.wait_partition_leaders(name).await;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_returns_starts_no_group_of_a_topic_deleted_while_it_was_away() {
    let mut c = start().await;
    let names = create_topics(&c, "gone", 6, 2).await;
    let away = {
        let ml = c.metadata_leader().await;
        (1..=3).find(|id| *id != ml).expect("a non-leader")
    };
    assert_eq!(c.node(away).partition_starts_total(), 12, "every partition has a replica on every node");
    c.kill(away).await;
    let ml = c.metadata_leader().await;
    for name in &names {
        c.node(ml).delete_topic(name).await.expect("delete");
    }
    // Its own log still lists the 6 topics; the others deleted them meanwhile.
    c.restart(away).await;
    wait_for("the returning node caught up with the deletions", || async {
        c.node(away).local_topics().is_empty().then_some(())
    })
    .await;
    // Give the reconcile loop a few passes after catching up.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(c.node(away).partition_starts_total(), 0, "no group of a deleted topic was started");
    assert!(c.node(away).cluster_status().partitions.is_empty());

    // A node that saw the deletions and restarts does not start them either; a live topic's do.
    let other = (1..=3).find(|id| *id != away && *id != ml).expect("a third node");
    c.create_topic("kept", 2, 3).await;
    c.wait_partition_leaders("kept").await;
    c.kill(other).await;
    c.restart(other).await;
    c.wait_partition_leaders("kept").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(c.node(other).partition_starts_total(), 2, "only the live topic's groups started");
    c.shutdown().await;
}

/// Partitions each node leads, over `topics`.
async fn leader_counts(c: &TestCluster, topics: &[String]) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> = c.running().into_iter().map(|id| (id, 0)).collect();
    for t in topics {
        for l in c.wait_partition_leaders(t).await {
            *counts.entry(l).or_default() += 1;
        }
    }
    counts
}

/// Waits until every node leads a third of `total` partitions, within 5%.
async fn balanced(c: &TestCluster, topics: &[String], total: usize) -> BTreeMap<NodeId, usize> {
    let third = total as f64 / 3.0;
    wait_for("leaders balanced within 5%", || async {
        let counts = leader_counts(c, topics).await;
        counts.values().all(|n| (*n as f64 - third).abs() <= third * 0.05).then_some(counts)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_balance_after_creation_and_after_a_node_restart() {
    let mut c = start().await;
    // Topics of 1 partition each: a placement that ignored the other topics would put every
    // preferred leader on the same node.
    let names = create_topics(&c, "t", 9, 1).await;
    let more = create_topics(&c, "u", 2, 3).await;
    let all: Vec<String> = names.into_iter().chain(more).collect();
    let counts = balanced(&c, &all, 15).await;
    eprintln!("leaders after creation: {counts:?}");

    // Node 2 goes away: the others take its leaderships; once back it gets its share again.
    c.kill(2).await;
    let without = leader_counts(&c, &all).await;
    assert_eq!(without.get(&2), None);
    c.restart(2).await;
    let counts = balanced(&c, &all, 15).await;
    eprintln!("leaders after node 2 restarted: {counts:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_replicas_past_its_limit_and_its_groups_share_one_cache_budget() {
    use shale_raft::cluster::{ClusterError, NodeLimit, ReplicaLimit};
    let entry_budget = 64 << 10;
    let setup = Setup {
        heartbeat_interval_ms: 150,
        replica_limit: Some(ReplicaLimit { max_replicas: 4, limit: NodeLimit::MaxPartitionsPerNode }),
        log_cache_budget: Some((entry_budget, 4 << 10)),
        ..Setup::new(3)
    };
    let c = TestCluster::start_with(setup).await;
    c.create_topic("a", 3, 3).await;
    let ml = c.metadata_leader().await;
    // 3 replicas on every node; 2 more would make 5, over 4.
    let refused = c.node(ml).create_topic(spec("b", 2, 3)).await;
    match &refused {
        Err(ClusterError::NodeLimit { topic, node, limit, max, current, requested }) => {
            assert_eq!(
                (topic.as_str(), *node, *limit, *max, *current, *requested),
                ("b", 1, NodeLimit::MaxPartitionsPerNode, 4, 3, 2)
            );
        }
        other => panic!("expected a node-limit refusal, got {other:?}"),
    }
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("limits.max_partitions_per_node = 4"), "{message}");
    assert!(c.node(ml).local_topics().iter().all(|t| t.name != "b"), "nothing was created");
    // One more fits exactly.
    c.create_topic("c", 1, 3).await;
    for t in ["a", "c"] {
        c.wait_partition_leaders(t).await;
    }

    // Every group on a node (metadata + 4 partitions) counts against the node's one budget, and
    // writing far more than it holds keeps the node within it.
    for p in 0..3 {
        for _ in 0..20 {
            let records = (0..8).map(|i| record("k", &"x".repeat(1000 + i))).collect();
            c.produce("a", p, records, None).await.expect("produce");
        }
    }
    for id in 1..=3 {
        let budget = c.node(id).log_cache_budget().expect("a budget");
        assert_eq!(budget.caches(), 5, "node {id}: the metadata group and four partitions");
        assert!(budget.used_bytes() <= budget.total_bytes(), "node {id}: {} bytes held", budget.used_bytes());
        assert!(budget.used_bytes() > 0);
    }
    c.shutdown().await;
}
