//! A full disk on one node: node 3's `/data` is a small size-limited volume that the test fills
//! while a workload runs. The node must say so clearly (its log names the full disk, its
//! `/readyz` answers 503), the other two must keep acknowledging writes, and once the space is
//! given back (the filler emptied, the node not restarted) the node's supervisor restarts its
//! stopped groups from disk and it catches up until every replica, read on its own, holds every
//! acknowledged record from offset 0 with the acknowledged chain hashes, and is ready again.

use std::collections::BTreeMap;
use std::time::Duration;

use shale_tests::cluster::ClusterOptions;
use shale_tests::scenario::{PROGRESS_TIMEOUT, Setup};

/// The full node.
const FULL: u64 = 3;
/// Size of its data volume.
const VOLUME_MIB: u64 = 96;
/// Bound on the node noticing the full disk (it writes into space preallocated before the disk
/// filled up first).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(120);
/// What the node's log must say (the OS error text of ENOSPC).
const FULL_DISK_ERROR: &str = "No space left on device";
/// What the node's supervisor logs when it finds a group stopped.
const SUPERVISOR_LINE: &str = "raft group stopped on an error";
/// Bound on the node running its groups again once space returns.
const RESUME_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_on_one_node_loses_nothing_and_the_node_catches_up_once_space_returns() {
    let options =
        ClusterOptions { small_volumes_mib: BTreeMap::from([(FULL, VOLUME_MIB)]), ..ClusterOptions::default() };
    let setup = Setup::start_with("full-disk", 2, options).await.unwrap();
    let cluster = &setup.cluster;
    let mut config = setup.workload_config();
    config.records_per_second = 300;
    let workload = shale_tests::workload::Workload::start("full-disk", &config).unwrap();
    workload.wait_for_more_acks(300, PROGRESS_TIMEOUT).await.unwrap();

    cluster.fill_disk(FULL).await.unwrap();
    // The node reports the full disk in its log.
    let deadline = tokio::time::Instant::now() + NOTICE_TIMEOUT;
    let logged = loop {
        let logs = cluster.logs(FULL).await.unwrap();
        if let Some(line) = logs.lines().find(|l| l.contains(FULL_DISK_ERROR)) {
            break line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {FULL} logged no {FULL_DISK_ERROR:?} within {NOTICE_TIMEOUT:?} of its disk filling up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("full-disk: node {FULL} logged: {logged}");
    // The majority keeps accepting writes.
    workload.wait_for_more_acks(1_500, PROGRESS_TIMEOUT).await.unwrap();
    // It is not ready while its groups are stopped.
    let deadline = tokio::time::Instant::now() + NOTICE_TIMEOUT;
    while cluster.is_ready(FULL).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {FULL} stayed ready for {NOTICE_TIMEOUT:?} with a full disk"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = cluster.logs(FULL).await.unwrap();
    let supervised = logs.lines().find(|l| l.contains(SUPERVISOR_LINE));
    assert!(supervised.is_some(), "node {FULL} logged no {SUPERVISOR_LINE:?}");
    eprintln!("full-disk: node {FULL} is not ready; logged: {}", supervised.unwrap_or_default());

    // Space returns; the node is not restarted: it must resume by itself.
    cluster.free_disk(FULL).await.unwrap();
    workload.wait_for_more_acks(300, PROGRESS_TIMEOUT).await.unwrap();
    cluster.wait_ready(FULL, RESUME_TIMEOUT).await.unwrap();
    eprintln!("full-disk: node {FULL} is ready again");
    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("full-disk: {summary}"),
        Err(report) => panic!("full-disk: after node {FULL}'s disk was full and freed again: {report}"),
    }
}
