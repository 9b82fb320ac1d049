//! A full disk on one node (issue 11): every node keeps its data in the disk `Storage` on a
//! `FaultyFileSystem` of its own; one follower's disk fills up under produce load (every write
//! that needs new space fails with ENOSPC). That node's groups stop with a clear error and are
//! reported (`Cluster::stopped_groups`), the other two keep acknowledging, restarts fail while the
//! disk is full, and once space returns the node restarts its groups from disk by itself (no node
//! restart), catches up, and holds every acknowledged record, read from its own replica.

mod cluster_support;

use std::sync::Arc;
use std::time::Duration;

use cluster_support::{BackgroundProducer, Backing, Setup, TestCluster, wait_for};
use shale_raft::cluster::{Cluster, METADATA_GROUP, StoppedGroup};
use shale_storage::StorageOptions;

const TOPIC: &str = "full-disk";
/// Records per produce call.
const BATCH: usize = 8;
/// Bound on the slower steps (noticing, restarting, catching up).
const SLOW: Duration = Duration::from_secs(60);

async fn wait_long<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {SLOW:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_full_disk_stops_one_nodes_groups_loses_nothing_and_they_restart_once_space_returns() {
    let mut setup = Setup::new(3);
    // Small segments: the space preallocated past a segment's records is capped by its size, so a
    // full disk is hit after a few KiB of writes on every stream (the metadata group's too).
    setup.backing = Backing::Faulty(StorageOptions { max_segment_bytes: 8192, ..StorageOptions::default() });
    let c = TestCluster::start_with(setup).await;
    c.create_topic(TOPIC, 1, 3).await;
    let partition_leader = c.wait_partition_leaders(TOPIC).await[0];
    let meta_leader = c.metadata_leader().await;
    let victim = (1..=3).find(|id| *id != partition_leader && *id != meta_leader).unwrap();
    let full = c.node(victim).clone();
    let fs = c.nodes[victim as usize - 1].fs.clone().expect("faulty backing");
    let handles: Vec<Arc<Cluster>> = c.running().into_iter().map(|id| c.node(id).clone()).collect();
    let producer = BackgroundProducer::start(handles, TOPIC, BATCH, "disk");
    producer.wait_for_more(200).await;
    assert!(full.stopped_groups().is_empty(), "a healthy node reports no stopped group");

    // Node `victim`'s disk fills up: its partition group stops with the OS's error.
    fs.set_disk_full(true);
    let stopped: Vec<StoppedGroup> = wait_long("the full node to report its partition group stopped", || async {
        let s = full.stopped_groups();
        s.iter().any(|g| g.group != METADATA_GROUP).then_some(s)
    })
    .await;
    eprintln!("stopped on node {victim}: {stopped:?}");
    assert!(
        stopped.iter().any(|g| g.reason.contains("No space left on device")),
        "the stop names the full disk: {stopped:?}"
    );
    // The majority keeps acknowledging writes; metadata changes commit too (and the full node's
    // metadata group stops on them).
    producer.wait_for_more(300).await;
    c.create_topic("created-while-full", 1, 3).await;
    let meta = c.node(c.metadata_leader().await).clone();
    let mut commits = 0u64;
    wait_long("the full node's metadata group to stop", || {
        commits += 1;
        let meta = meta.clone();
        let full = full.clone();
        async move {
            meta.commit_offsets("readers", None, vec![(TOPIC.to_string(), 0, commits)])
                .await
                .expect("the majority commits metadata");
            full.stopped_groups().iter().any(|g| g.group == METADATA_GROUP).then_some(())
        }
    })
    .await;
    eprintln!("the full node's metadata group stopped after {commits} offset commits");
    // While the disk stays full, restarts are tried and fail (or the group stops again).
    wait_long("a restart attempt while the disk is full", || async {
        let s = full.stopped_groups();
        s.iter().any(|g| g.group != METADATA_GROUP && g.restart_attempts >= 1).then_some(())
    })
    .await;
    assert!(!full.stopped_groups().is_empty(), "nothing can run on a full disk");
    assert!(full.group_failures_total() >= 2);
    producer.wait_for_more(200).await;

    // Space returns; the node is not restarted: its groups restart from disk and catch up.
    fs.set_disk_full(false);
    wait_long("the node's groups to run again", || async { full.stopped_groups().is_empty().then_some(()) }).await;
    assert!(full.group_restarts_total() >= 2, "the partition and metadata groups were restarted");
    producer.wait_for_more(200).await;
    let acked = producer.stop().await;
    let last = acked.iter().map(|a| a.offset).max().unwrap();

    // Read from the full node's own replica: every acknowledged record is there.
    let records = wait_long("the full node to catch up", || async {
        let r = c.try_read_all(victim, TOPIC, 0).await.ok()?;
        r.last().is_some_and(|l| l.offset >= last).then_some(r)
    })
    .await;
    let mut missing = Vec::new();
    for a in &acked {
        match records.binary_search_by_key(&a.offset, |r| r.offset) {
            Ok(i) if records[i].value == a.value && records[i].chain_hash == a.chain_hash => {}
            Ok(i) => {
                missing.push(format!("offset {} holds {:?}, acknowledged {:?}", a.offset, records[i].value, a.value))
            }
            Err(_) => missing.push(format!("offset {} ({:?}) is not there", a.offset, a.value)),
        }
    }
    assert!(
        missing.is_empty(),
        "node {victim} lacks {} of {} acknowledged records: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    c.check_replicas_agree(TOPIC, 0, last).await;
    // The topic created while the disk was full is served by the node once it restarted.
    wait_for("the full node to see the topic created meanwhile", || async {
        full.local_topics().iter().any(|t| t.name == "created-while-full").then_some(())
    })
    .await;
    wait_long("the topic created meanwhile to run on every replica", || async {
        c.try_read_all(victim, "created-while-full", 0).await.ok()
    })
    .await;
    c.shutdown().await;
}
