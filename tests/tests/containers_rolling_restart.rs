//! A rolling restart of all three nodes under a concurrent workload: each node in turn is stopped
//! with SIGTERM (`docker stop`, as an orchestrator does), must exit cleanly (status 0) within the
//! grace period, is started again on its volume and must be ready before the next one goes.

use std::time::Duration;

use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::scenario::{PROGRESS_TIMEOUT, Setup};

/// SIGKILL follows SIGTERM after this long (the node's own grace is 5 s).
const STOP_GRACE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_loses_nothing() {
    let setup = Setup::start("rolling", 3).await.unwrap();
    let cluster = &setup.cluster;
    let workload = setup.start_workload("rolling").unwrap();
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();

    for id in cluster.ids() {
        cluster.stop(id, STOP_GRACE).await.unwrap();
        let code = cluster.exit_code(id).await.unwrap();
        assert_eq!(code, 0, "node {id} did not shut down cleanly on SIGTERM (exit status {code})");
        // Two of three are up: writes keep being acknowledged.
        workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();
        cluster.start_node(id).await.unwrap();
        cluster.wait_ready(id, READY_TIMEOUT).await.unwrap();
        workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();
    }

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("rolling restart: {summary}"),
        Err(report) => panic!("rolling restart: {report}"),
    }
}
