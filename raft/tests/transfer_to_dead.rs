//! The reconcile loop hands a partition's leadership back to its preferred replica only while
//! that replica answers: a transfer to a node that just went down would leave the group without
//! a writable leader until an election.

mod cluster_support;

use std::time::Duration;

use cluster_support::*;

/// The term of partition 0 of `topic` as node `id` sees it (0: the node does not run its group).
fn term(c: &TestCluster, id: u64, topic: &str) -> u64 {
    let status = c.node(id).cluster_status();
    let group = status.partitions.iter().find(|g| g.partition.as_ref().is_some_and(|(t, p)| t == topic && *p == 0));
    group.map_or(0, |g| g.term)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_not_handed_to_a_preferred_replica_that_went_down() {
    let mut setup = Setup::new(3);
    // Longer than the two heartbeat intervals (200 ms) a replica counts as up after its last
    // answer, so the first pass that may hand over already sees the killed replica as down.
    setup.preferred_leader_delay_ms = 500;
    let mut c = TestCluster::start_with(setup).await;
    c.create_topic("t", 1, 3).await;
    let preferred = c.settled_leaders("t").await[0];
    let other = (1..=3).find(|id| *id != preferred).expect("another replica");
    // Every replica runs the group before leadership moves: a node starts a new topic's groups on
    // its own reconcile pass, and a transfer to one that does not run it yet is not delivered.
    wait_for("every replica runs the partition group", || async {
        (1..=3).all(|id| term(&c, id, "t") > 0).then_some(())
    })
    .await;
    c.node(preferred).transfer_leader("t", 0, other).await.expect("transfer away from the preferred replica");
    // The preferred replica goes down at once: it has every entry, so by replication progress
    // alone it still looks caught up.
    c.kill(preferred).await;
    let leader = c.wait_partition_leaders("t").await[0];
    assert_ne!(leader, preferred);
    let term_before = term(&c, leader, "t");
    // No writes while it is down (a write it misses would make it look behind): many reconcile
    // passes past the preferred-leader delay, and the leader keeps leading in the same term.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.wait_partition_leaders("t").await, vec![leader]);
    assert_eq!(term(&c, leader, "t"), term_before, "leadership moved while the preferred replica was down");
    c.produce("t", 0, vec![record("k", "while the preferred replica is down")], None).await.expect("produce");
    // Back up, the preferred replica gets leadership again.
    c.restart(preferred).await;
    assert_eq!(c.settled_leaders("t").await, vec![preferred]);
    c.shutdown().await;
}
