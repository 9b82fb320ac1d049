//! Lost unfsynced writes (issue 11): every node keeps its data in the disk `Storage` on a
//! `FaultyFileSystem` of its own, where a crash drops every byte and directory entry that was not
//! fsynced, as a power cut would. A write is acknowledged only once a majority has it fsynced, so:
//! - a minority crashing under load (a follower, then the leader, one at a time) loses only what
//!   it had not fsynced, catches up from the others, and ends up holding every acknowledged record;
//! - all three nodes crashing at the same instant keeps every acknowledged record too.
//!
//! Each replica is then read on its own (`Cluster::fetch` on that node) and must hold every
//! acknowledged record at its acknowledged offset, with its value and chain hash.

mod cluster_support;

use std::sync::Arc;

use cluster_support::{Acked, BackgroundProducer, Backing, Setup, TestCluster};
use shale_raft::cluster::Cluster;
use shale_storage::StorageOptions;

const TOPIC: &str = "lost-writes";
/// Records per produce call (more unsynced bytes in flight at a crash).
const BATCH: usize = 8;

async fn faulty_cluster() -> TestCluster {
    let mut setup = Setup::new(3);
    setup.backing = Backing::Faulty(StorageOptions::default());
    let c = TestCluster::start_with(setup).await;
    c.create_topic(TOPIC, 1, 3).await;
    c.wait_partition_leaders(TOPIC).await;
    c
}

fn handles(c: &TestCluster) -> Vec<Arc<Cluster>> {
    c.running().into_iter().map(|id| c.node(id).clone()).collect()
}

/// Every running replica, read on its own, holds every acknowledged record.
async fn check_every_replica_holds(c: &TestCluster, acked: &[Acked]) {
    assert!(!acked.is_empty(), "nothing was acknowledged, so nothing was tested");
    let last = acked.iter().map(|a| a.offset).max().unwrap_or(0);
    c.check_replicas_agree(TOPIC, 0, last).await;
    for id in c.running() {
        let records = c.read_all(id, TOPIC, 0).await;
        let mut missing = Vec::new();
        for a in acked {
            match records.binary_search_by_key(&a.offset, |r| r.offset) {
                Ok(i) if records[i].value == a.value && records[i].chain_hash == a.chain_hash => {}
                Ok(i) => missing.push(format!(
                    "offset {} holds {:?} ({:?}), acknowledged {:?} ({:?})",
                    a.offset, records[i].value, records[i].chain_hash, a.value, a.chain_hash
                )),
                Err(_) => missing.push(format!("offset {} ({:?}) is not there", a.offset, a.value)),
            }
        }
        assert!(
            missing.is_empty(),
            "node {id} lost {} of {} acknowledged records, first: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_crashed_minority_loses_only_unsynced_bytes_and_no_acknowledged_record() {
    let mut c = faulty_cluster().await;
    let producer = BackgroundProducer::start(handles(&c), TOPIC, BATCH, "minority");
    producer.wait_for_more(200).await;

    // A follower crashes mid-load and comes back.
    let leader = c.wait_partition_leaders(TOPIC).await[0];
    let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
    let dropped = c.crash(&[follower]).await;
    eprintln!("crash of follower {follower} dropped {dropped:?} unsynced bytes");
    assert!(
        dropped.iter().sum::<u64>() > 0,
        "the crash of follower {follower} dropped nothing: no unsynced write was lost"
    );
    producer.set_nodes(handles(&c));
    producer.wait_for_more(200).await;
    c.restart(follower).await;
    producer.set_nodes(handles(&c));
    producer.wait_for_more(200).await;

    // Then the partition's leader (it may have acknowledged records it had not fsynced itself).
    let leader = c.wait_partition_leaders(TOPIC).await[0];
    let dropped = c.crash(&[leader]).await;
    eprintln!("crash of leader {leader} dropped {dropped:?} unsynced bytes");
    assert!(
        dropped.iter().sum::<u64>() > 0,
        "the crash of leader {leader} dropped nothing: no unsynced write was lost"
    );
    producer.set_nodes(handles(&c));
    producer.wait_for_more(200).await;
    c.restart(leader).await;
    c.wait_partition_leaders(TOPIC).await;
    let acked = producer.stop().await;

    check_every_replica_holds(&c, &acked).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_all_nodes_crashing_at_once_keep_every_acknowledged_record() {
    let mut c = faulty_cluster().await;
    let producer = BackgroundProducer::start(handles(&c), TOPIC, BATCH, "all");
    producer.wait_for_more(400).await;

    let dropped = c.crash(&[1, 2, 3]).await;
    eprintln!("crash of every node dropped {dropped:?} unsynced bytes");
    assert!(dropped.iter().sum::<u64>() > 0, "the crash of every node dropped nothing: no unsynced write was lost");
    let acked = producer.stop().await;
    for id in 1..=3 {
        c.restart(id).await;
    }
    c.metadata_leader().await;
    c.wait_partition_leaders(TOPIC).await;

    check_every_replica_holds(&c, &acked).await;
    c.shutdown().await;
}
