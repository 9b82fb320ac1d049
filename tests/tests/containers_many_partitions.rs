//! Hundreds of partitions (issue 15): a workload spread over 240 partitions (720 Raft group replicas on
//! three containers) while the node leading the most partitions is SIGKILLed and restarted. Every
//! partition it led must get a new leader on the survivors, writes must keep being acknowledged, and
//! afterwards every safety checker must pass, each replica of every partition read on its own against
//! the acknowledged records. Every group snapshots every [`SNAPSHOT_EVERY`] entries, and the killed node
//! stays down until every group has gone at least two snapshots past what it last had, so its return
//! crosses the snapshot threshold in all 240 groups at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shale_tests::cluster::{ClusterOptions, ContainerCluster, READY_TIMEOUT};
use shale_tests::error::HarnessError;
use shale_tests::scenario::{PROGRESS_TIMEOUT, Setup, snapshot_env};
use shale_tests::workload::Workload;

const TOPIC: &str = "many";
/// Past the hundred groups per node where per-group costs (timers, fsyncs, heartbeats) used to
/// collapse a node, with every node holding a replica of every partition.
const PARTITIONS: u32 = 240;
/// Bound on every partition a killed node led being led by a survivor.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries between two snapshots of every group (the default is 10,000).
const SNAPSHOT_EVERY: u64 = 4;

/// The partitions of [`TOPIC`] each node among `nodes` reports leading itself.
async fn led_by(cluster: &ContainerCluster, nodes: &[u64]) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut led = BTreeMap::new();
    for id in nodes {
        let partitions = match cluster.status_of(*id).await {
            Ok(s) => {
                s.partitions.iter().filter(|g| g.topic == TOPIC && g.leader_id == *id).map(|g| g.partition).collect()
            }
            Err(_) => BTreeSet::new(),
        };
        led.insert(*id, partitions);
    }
    led
}

/// Waits until every partition is led by one of `nodes` (as the leaders themselves report).
async fn wait_all_led_by(cluster: &ContainerCluster, nodes: &[u64]) -> Result<(), HarnessError> {
    let deadline = tokio::time::Instant::now() + FAILOVER_TIMEOUT;
    loop {
        let led = led_by(cluster, nodes).await;
        let covered: BTreeSet<u32> = led.values().flatten().copied().collect();
        if covered.len() == PARTITIONS as usize {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<u32> = (0..PARTITIONS).filter(|p| !covered.contains(p)).collect();
            return Err(HarnessError::Timeout {
                what: format!("leaders among {nodes:?} for every partition of {TOPIC} (missing {missing:?})"),
                timeout: FAILOVER_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_partitions_keep_every_acknowledged_record_through_a_node_kill() {
    let options = ClusterOptions { env: snapshot_env(SNAPSHOT_EVERY), ..ClusterOptions::default() };
    let setup = Setup::start_with(TOPIC, PARTITIONS, options).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();

    // Every producer goes round all partitions, so every group takes writes before, during and
    // after the kill.
    let mut config = setup.workload_config();
    config.records_per_second = 400;
    config.max_in_flight = 128;
    let workload = Workload::start("many", &config).unwrap();
    workload.wait_for_more_acks(u64::from(PARTITIONS) * 2, PROGRESS_TIMEOUT).await.unwrap();

    // The node leading the most partitions dies without warning.
    let led = led_by(cluster, &ids).await;
    let (victim, victim_led) = led.iter().max_by_key(|(_, ps)| ps.len()).map(|(id, ps)| (*id, ps.len())).unwrap();
    assert!(victim_led > 0, "no node leads a partition: {led:?}");
    let before_kill = cluster.last_log_indexes(TOPIC, &ids).await;
    cluster.kill(victim).await.unwrap();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    wait_all_led_by(cluster, &survivors).await.unwrap();
    workload.wait_for_more_acks(u64::from(PARTITIONS) * 2, PROGRESS_TIMEOUT).await.unwrap();
    // Down until every group has snapshotted at least twice more without it.
    cluster
        .wait_groups_past(TOPIC, PARTITIONS, &survivors, &before_kill, 2 * SNAPSHOT_EVERY + 1, PROGRESS_TIMEOUT)
        .await
        .unwrap();

    // It comes back and catches up on every group while the writes go on.
    cluster.start_node(victim).await.unwrap();
    cluster.wait_ready(victim, READY_TIMEOUT).await.unwrap();
    wait_all_led_by(cluster, &ids).await.unwrap();
    workload.wait_for_more_acks(u64::from(PARTITIONS) * 2, PROGRESS_TIMEOUT).await.unwrap();

    let history = workload.stop().await;
    let partitions_acked: BTreeSet<u32> = history.acks.iter().map(|a| a.partition).collect();
    assert_eq!(partitions_acked.len(), PARTITIONS as usize, "every partition took acknowledged writes");
    match setup.check(&history).await {
        Ok(summary) => eprintln!("many partitions (node {victim} led {victim_led}): {summary}"),
        Err(report) => panic!("many partitions: {report}"),
    }
}
