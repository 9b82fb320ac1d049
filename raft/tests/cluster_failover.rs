//! Failures on a 3-node in-process cluster: leader changes never lose acknowledged data.

mod cluster_support;

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::*;
use shale_raft::cluster::{Cluster, ClusterError, NodeId, ProduceRecord, ProducerInfo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_survive_a_metadata_leader_change() {
    let mut c = TestCluster::start(3).await;
    c.create_topic("t", 2, 3).await;
    let ml = c.metadata_leader().await;
    c.node(ml).commit_offsets("readers", None, vec![("t".to_string(), 0, 17)]).await.expect("commit");
    c.node(ml).commit_offsets("readers", None, vec![("t".to_string(), 1, 4)]).await.expect("commit");
    c.kill(ml).await;
    let new_leader = c.metadata_leader().await;
    assert_ne!(new_leader, ml);
    let offsets = wait_for("offsets readable at the new leader", || async {
        c.node(new_leader).fetch_offsets("readers").await.ok()
    })
    .await;
    let got: BTreeMap<_, _> = offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect();
    assert_eq!(got, BTreeMap::from([(("t".to_string(), 0), 17), (("t".to_string(), 1), 4)]));
    for o in &offsets {
        // Every node replicates both partitions (rf 3), so the lag is known here.
        let hw = o.high_watermark.expect("hosted here");
        assert_eq!(o.lag, Some(hw.saturating_sub(o.offset)));
    }
    // The old leader restarts and catches up; a later commit is seen wherever the leader is now.
    c.restart(ml).await;
    c.node(new_leader)
        .commit_offsets("readers", None, vec![("t".to_string(), 0, 18)])
        .await
        .expect("commit after restart");
    let offsets = wait_for("offsets readable at the current leader", || async {
        let leader = c.metadata_leader().await;
        c.node(leader).fetch_offsets("readers").await.ok()
    })
    .await;
    let got: BTreeMap<_, _> = offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect();
    assert_eq!(got, BTreeMap::from([(("t".to_string(), 0), 18), (("t".to_string(), 1), 4)]));
    wait_for("the restarted node applied the metadata", || async {
        (c.node(ml).local_topics().len() == 1 && c.node(ml).cluster_status().members.len() == 3).then_some(())
    })
    .await;
    c.shutdown().await;
}

/// Produces `records` with the given sequences, trying every node in turn until one accepts them
/// (a killed node answers errors; a follower answers `NotLeader`). Gives up after [`WAIT`].
async fn produce_anywhere(
    nodes: &[Arc<Cluster>],
    records: Vec<ProduceRecord>,
    producer: ProducerInfo,
) -> Vec<shale_raft::cluster::BatchAck> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    loop {
        match nodes[i % nodes.len()].produce("chaos", 0, records.clone(), Some(producer)).await {
            Ok(offsets) => return offsets,
            Err(ClusterError::DuplicateSequenceOutOfWindow { .. }) => panic!("retry fell out of the dedup window"),
            Err(_) => {
                assert!(tokio::time::Instant::now() < deadline, "no node accepted the batch");
                i += 1;
                // Back off a little between full rounds of refusals (an election is running).
                if i % nodes.len() == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_partition_leader_mid_produce_loses_no_acknowledged_record() {
    let mut c = TestCluster::start(3).await;
    c.create_topic("chaos", 1, 3).await;
    let leader = c.settled_leaders("chaos").await[0];
    let nodes: Vec<Arc<Cluster>> = (1..=3).map(|id| c.node(id).clone()).collect();

    // A producer keeps writing 5-record batches (idempotent, retried until acknowledged) while the
    // partition leader is killed under it.
    let (acks_tx, mut acks_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u64, String)>>();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let producer = tokio::spawn(async move {
        let mut seq = 0u64;
        while !*stop_rx.borrow_and_update() {
            let values: Vec<String> = (0..5).map(|i| format!("s{}", seq + i)).collect();
            let records = values.iter().map(|v| record("k", v)).collect();
            let offsets = produce_anywhere(&nodes, records, ProducerInfo { producer_id: 9, base_sequence: seq }).await;
            seq += 5;
            let _ = acks_tx.send(per_record(&offsets).iter().map(|o| o.offset).zip(values).collect());
        }
    });
    let mut acked: Vec<(u64, String)> = Vec::new();
    while acked.len() < 50 {
        acked.extend(acks_rx.recv().await.expect("producer alive"));
    }
    c.kill(leader).await;
    let at_kill = acked.len();
    while acked.len() < at_kill + 50 {
        acked.extend(
            tokio::time::timeout(WAIT, acks_rx.recv()).await.expect("acks after the kill").expect("producer alive"),
        );
    }
    stop_tx.send(true).expect("stop");
    producer.await.expect("producer task");
    while let Ok(more) = acks_rx.try_recv() {
        acked.extend(more);
    }

    let new_leader = c.wait_partition_leaders("chaos").await[0];
    assert_ne!(new_leader, leader);
    for id in c.running() {
        let got: BTreeMap<u64, String> = wait_for("replica has every acknowledged record", || async {
            let all = c.try_read_all(id, "chaos", 0).await.ok()?;
            let map: BTreeMap<u64, String> =
                all.into_iter().map(|r| (r.offset, String::from_utf8(r.value.to_vec()).expect("utf8"))).collect();
            acked.iter().all(|(o, _)| map.contains_key(o)).then_some(map)
        })
        .await;
        check_no_acknowledged_record_lost(id, &acked, &got);
        check_each_sequence_visible_once(id, &got);
        check_offsets_dense(id, &got);
    }
    // The old leader comes back, catches up, and every replica agrees on every chain hash.
    c.restart(leader).await;
    let last = acked.iter().map(|(o, _)| *o).max().expect("acked");
    wait_for("restarted replica caught up", || async {
        let s = c.node(leader).local_partition_state("chaos", 0).ok()?;
        (s.high_watermark? > last).then_some(())
    })
    .await;
    c.check_replicas_agree("chaos", 0, last).await;
    c.shutdown().await;
}

/// Safety: every acknowledged (offset, value) is served by the replica, unchanged.
fn check_no_acknowledged_record_lost(node: NodeId, acked: &[(u64, String)], served: &BTreeMap<u64, String>) {
    for (offset, value) in acked {
        assert_eq!(served.get(offset), Some(value), "node {node} lost or changed acknowledged offset {offset}");
    }
}

/// Dense offsets: the records served are at offsets 0, 1, 2, ... without a gap, across the leader
/// change and its blank entry.
fn check_offsets_dense(node: NodeId, served: &BTreeMap<u64, String>) {
    let offsets: Vec<u64> = served.keys().copied().collect();
    assert_eq!(offsets, (0..served.len() as u64).collect::<Vec<_>>(), "node {node}: offsets have gaps");
}

/// Exactly-once: no value (each carries its producer sequence) is visible twice.
fn check_each_sequence_visible_once(node: NodeId, served: &BTreeMap<u64, String>) {
    let mut seen = std::collections::BTreeSet::new();
    for (offset, value) in served {
        assert!(seen.insert(value), "node {node}: {value} visible twice (again at {offset})");
    }
}
