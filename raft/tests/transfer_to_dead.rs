//! Leadership goes only to a replica that can take it: a transfer to a node that is down (or
//! behind) would leave the group without a writable leader until an election, since a leader
//! that hands over stops its heartbeats and refuses writes. The reconcile loop hands a partition
//! back to its preferred replica only while that replica answers; an operator's transfer is
//! refused up front; a hand-over the target ignored is sent again.

mod cluster_support;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::*;
use shale_raft::cluster::{BatchAck, ClusterError};
use shale_raft::{RaftError, RaftGroup, TransferRefusal};

/// Partition 0 of `topic` on node `id` (the node must run it).
fn group(c: &TestCluster, id: u64, topic: &str) -> Arc<RaftGroup> {
    let g = c.partition_status(id, topic, 0).expect("the node runs the partition group");
    c.node(id).router().group(g.group).expect("partition group runs here")
}

/// A one-partition topic at replication factor 3, settled on its preferred leader (every replica
/// runs the group: `settled_leaders` waits for it); returns the leader.
async fn settled_topic(c: &TestCluster, topic: &str) -> u64 {
    c.create_topic(topic, 1, 3).await;
    c.settled_leaders(topic).await[0]
}

/// The term of partition 0 of `topic` as node `id` sees it (0: the node does not run its group).
fn term(c: &TestCluster, id: u64, topic: &str) -> u64 {
    c.partition_status(id, topic, 0).map_or(0, |g| g.term)
}

/// A 3-node cluster, one settled partition "t", and one of its followers (`slow`) answering
/// heartbeats but taking no entries (live, and behind) while five records are acknowledged by the
/// other two. Returns the cluster, the leader, the slow replica and the acknowledgements.
async fn with_a_replica_behind() -> (TestCluster, u64, u64, Vec<BatchAck>) {
    let mut setup = Setup::new(3);
    setup.preferred_leader_delay_ms = 600_000;
    let c = TestCluster::start_with(setup).await;
    let leader = settled_topic(&c, "t").await;
    let slow = (1..=3).find(|id| *id != leader).expect("another replica");
    group(&c, slow, "t").hold_appends(true);
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.extend(c.produce("t", 0, vec![record("k", &format!("r{i}"))], None).await.expect("produce"));
    }
    (c, leader, slow, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_is_not_handed_to_a_preferred_replica_that_went_down() {
    let mut setup = Setup::new(3);
    // Longer than the two heartbeat intervals (200 ms) a replica counts as up after its last
    // answer, so the first pass that may hand over already sees the killed replica as down.
    setup.preferred_leader_delay_ms = 500;
    let mut c = TestCluster::start_with(setup).await;
    let preferred = settled_topic(&c, "t").await;
    let other = (1..=3).find(|id| *id != preferred).expect("another replica");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_transfer_to_a_replica_that_is_down_is_refused_and_the_leader_keeps_writing() {
    let mut setup = Setup::new(3);
    setup.preferred_leader_delay_ms = 600_000;
    let mut c = TestCluster::start_with(setup).await;
    let leader = settled_topic(&c, "t").await;
    c.produce("t", 0, vec![record("k", "before")], None).await.expect("produce");
    let down = (1..=3).find(|id| *id != leader).expect("another replica");
    c.kill(down).await;
    // Past the two heartbeat intervals (100 ms) a replica counts as answering after its last answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term_before = term(&c, leader, "t");
    let started = std::time::Instant::now();
    match c.node(leader).transfer_leader("t", 0, down).await {
        Err(ClusterError::Raft(RaftError::TransferRefused {
            to,
            reason: TransferRefusal::NotAnswering { within_ms: 100 },
            ..
        })) if to == down => {}
        other => panic!("expected the transfer to node {down} to be refused as not answering, got {other:?}"),
    }
    // Refused within about one election timeout (600 ms here), not after the transfer's own wait.
    assert!(started.elapsed() < Duration::from_secs(3), "refused after {:?}", started.elapsed());
    // Nothing was handed over: the same leader, in the same term, takes writes at once.
    c.produce("t", 0, vec![record("k", "after")], None).await.expect("produce right after the refusal");
    assert_eq!(term(&c, leader, "t"), term_before, "leadership moved");
    assert!(group(&c, leader, "t").is_leader());
    // A replica that is not a voter of the group is refused too.
    assert!(matches!(
        group(&c, leader, "t").transfer_leader(7).await,
        Err(RaftError::TransferRefused { to: 7, reason: TransferRefusal::NotAVoter { .. }, .. })
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_to_a_live_replica_behind_the_commit_is_refused_until_it_catches_up() {
    let (c, leader, slow, _) = with_a_replica_behind().await;
    let term_before = term(&c, leader, "t");
    match c.node(leader).transfer_leader("t", 0, slow).await {
        Err(ClusterError::Raft(RaftError::TransferRefused {
            to,
            reason: TransferRefusal::Behind { matched, committed },
            ..
        })) if to == slow => assert!(matched.unwrap_or(0) < committed, "{matched:?} {committed}"),
        other => panic!("expected the transfer to node {slow} to be refused as behind, got {other:?}"),
    }
    c.produce("t", 0, vec![record("k", "after the refusal")], None).await.expect("produce");
    assert_eq!(term(&c, leader, "t"), term_before, "leadership moved");
    // Released, it catches up and takes leadership.
    group(&c, slow, "t").hold_appends(false);
    c.node(leader).transfer_leader("t", 0, slow).await.expect("transfer once caught up");
    assert_eq!(c.wait_partition_leaders("t").await, vec![slow]);
    let acked = c.produce("t", 0, vec![record("k", "on the new leader")], None).await.expect("produce");
    assert_eq!(c.read_all(slow, "t", 0).await.len() as u64, acked[0].base_offset + 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_the_target_ignored_for_want_of_entries_is_sent_again_once_it_has_them() {
    let (c, leader, slow, _) = with_a_replica_behind().await;
    // A hand-over to a live replica that is behind (as a leader with a damaged log makes): the
    // target gets the message before the entries it lacks and ignores it (openraft does not send
    // it again); the entries reach it only after that.
    let g = group(&c, leader, "t");
    let hand_over = tokio::spawn(async move { g.transfer_leader_to_live(slow).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    group(&c, slow, "t").hold_appends(false);
    hand_over.await.expect("join").expect("the hand-over lands on the target");
    assert_eq!(c.wait_partition_leaders("t").await, vec![slow]);
    let acked = c.produce("t", 0, vec![record("k", "on the new leader")], None).await.expect("produce");
    assert_eq!(acked[0].base_offset, 5);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_whose_target_dies_meanwhile_ends_with_the_replica_that_holds_the_log_leading() {
    let (mut c, leader, slow, mut acked) = with_a_replica_behind().await;
    let third = (1..=3).find(|id| *id != leader && *id != slow).expect("the third replica");
    // Handed over to the live replica that lacks entries (it ignores the hand-over), which then
    // dies before it gets them: the leader refuses writes since it handed over, and the third
    // replica, told of the hand-over, is elected within an election timeout.
    let g = group(&c, leader, "t");
    let hand_over = tokio::spawn(async move { g.transfer_leader_to_live(slow).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.kill(slow).await;
    match hand_over.await.expect("join") {
        Err(RaftError::TransferFailed { to, leader: Some(l), .. }) if to == slow => assert_eq!(l, third),
        other => panic!("expected leadership to go to node {third}, got {other:?}"),
    }
    acked.extend(c.produce("t", 0, vec![record("k", "after")], None).await.expect("produce on the new leader"));
    // Each remaining replica on its own holds every acknowledged record (a follower serves what
    // it applied: it learns of the last commit from the leader's next message).
    let last = acked.last().expect("acked").base_offset;
    for id in [leader, third] {
        wait_for("the replica applies every acknowledged record", || async {
            (c.node(id).local_partition_state("t", 0).ok()?.high_watermark? > last).then_some(())
        })
        .await;
        let held: Vec<u64> = c.read_all(id, "t", 0).await.iter().map(|r| r.offset).collect();
        let want: Vec<u64> = acked.iter().map(|a| a.base_offset).collect();
        assert_eq!(held, want, "replica {id}");
    }
    c.shutdown().await;
}
