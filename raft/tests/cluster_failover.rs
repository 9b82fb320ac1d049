//! Failures on a 3-node in-process cluster: leader changes never lose acknowledged data.

mod cluster_support;

use std::collections::BTreeMap;

use cluster_support::*;
use shale_raft::cluster::{ClusterError, ProducerInfo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_survive_a_metadata_leader_change() {
    let mut c = TestCluster::start(3).await;
    c.create_topic("t", 2, 3).await;
    let ml = c.metadata_leader().await;
    c.node(ml).commit_offset("readers", "t", 0, 17).await.expect("commit");
    c.node(ml).commit_offset("readers", "t", 1, 4).await.expect("commit");
    c.kill(ml).await;
    let new_leader = c.metadata_leader().await;
    assert_ne!(new_leader, ml);
    let offsets = wait_for("offsets readable at the new leader", || async {
        c.node(new_leader).fetch_offsets("readers").await.ok()
    })
    .await;
    let got: BTreeMap<_, _> = offsets.iter().map(|o| ((o.topic.clone(), o.partition), o.offset)).collect();
    assert_eq!(got, BTreeMap::from([(("t".to_string(), 0), 17), (("t".to_string(), 1), 4)]));
    // The old leader restarts and catches up; a later commit is seen wherever the leader is now.
    c.restart(ml).await;
    c.node(new_leader).commit_offset("readers", "t", 0, 18).await.expect("commit after restart");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_partition_leader_mid_produce_loses_no_acknowledged_record() {
    let mut c = TestCluster::start(3).await;
    c.create_topic("chaos", 1, 3).await;
    let leader = c.settled_leaders("chaos").await[0];
    let producer_id = 9;
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut seq = 0u64;
    let mut killed = false;
    for batch in 0..30u64 {
        if batch == 10 {
            // Kill the leader while a produce is in flight.
            let node = c.node(leader).clone();
            let records = (0..5).map(|i| record("k", &format!("b{batch}-{i}"))).collect();
            let inflight = tokio::spawn(async move {
                node.produce("chaos", 0, records, Some(ProducerInfo { producer_id, base_sequence: seq })).await
            });
            c.kill(leader).await;
            killed = true;
            // Whatever it answered, the batch is retried (same sequences) against the new leader.
            let _ = inflight.await;
        }
        let records: Vec<_> = (0..5).map(|i| record("k", &format!("b{batch}-{i}"))).collect();
        let values: Vec<String> = (0..5).map(|i| format!("b{batch}-{i}")).collect();
        let offsets = loop {
            match c.produce("chaos", 0, records.clone(), Some(ProducerInfo { producer_id, base_sequence: seq })).await {
                Ok(o) => break o,
                Err(ClusterError::NotReplica { .. } | ClusterError::Timeout { .. } | ClusterError::Raft(_)) => continue,
                Err(e) => panic!("produce failed: {e}"),
            }
        };
        seq += 5;
        acked.extend(offsets.iter().map(|o| o.offset).zip(values));
    }
    assert!(killed);
    let survivors = c.running();
    let new_leader = c.wait_partition_leaders("chaos").await[0];
    assert_ne!(new_leader, leader);
    for id in survivors {
        let got: BTreeMap<u64, String> = wait_for("replica has every acknowledged record", || async {
            let all = c.try_read_all(id, "chaos", 0).await.ok()?;
            let map: BTreeMap<u64, String> =
                all.into_iter().map(|r| (r.offset, String::from_utf8(r.value.to_vec()).expect("utf8"))).collect();
            acked.iter().all(|(o, _)| map.contains_key(o)).then_some(map)
        })
        .await;
        for (offset, value) in &acked {
            assert_eq!(got.get(offset), Some(value), "node {id} offset {offset}");
        }
        // Exactly-once: each acknowledged value is visible once.
        assert_eq!(got.len(), acked.len(), "node {id} has no duplicates");
    }
    // The old leader comes back, catches up, and agrees on every chain hash.
    c.restart(leader).await;
    let last = acked.last().expect("acked").0;
    wait_for("restarted replica agrees on every chain hash", || async {
        let ok = (0..=last).all(|o| {
            let h: Vec<_> = (1..=3).filter_map(|id| c.node(id).verify("chaos", 0, o).ok()).collect();
            h.len() == 3 && h.iter().all(|x| *x == h[0])
        });
        ok.then_some(())
    })
    .await;
    c.shutdown().await;
}
