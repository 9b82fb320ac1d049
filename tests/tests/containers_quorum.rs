//! Quorum: with two of three nodes down (SIGKILL) no write is acknowledged and the deployment's
//! health check fails on the survivor; once they are back, writes are acknowledged again, and every record
//! acknowledged before, during and after is present exactly once, in the same place on every
//! replica.

use std::time::Duration;

use shale_tests::checkers;
use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::compose;
use shale_tests::scenario::{PROGRESS_TIMEOUT, Setup};
use shale_tests::workload::{History, Workload};
use tokio::time::Instant;

/// Records the refused-phase producers send in all (each must fail, none may be acknowledged).
const REFUSED_RECORDS_PER_PRODUCER: u64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_refused_without_a_majority_and_resume_with_one() {
    let setup = Setup::start("quorum", 3).await.unwrap();
    let cluster = &setup.cluster;
    let mut history = History::default();

    // 1. All up: writes are acknowledged.
    let before = setup.start_workload("quorum-before").unwrap();
    before.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();
    history.extend(before.stop().await);

    // The deployment's health check (deploy/docker-compose.yml's, run inside node 1) passes now.
    let probe = compose::healthcheck_command().unwrap();
    let probe: Vec<&str> = probe.iter().map(String::as_str).collect();
    let (code, out) = cluster.exec(1, &probe).await.unwrap();
    assert_eq!(code, Some(0), "the health check fails on a healthy cluster: {out:?}");

    // 2. Two of three down: nothing may be acknowledged.
    for id in [2, 3] {
        cluster.kill(id).await.unwrap();
        cluster.wait_stopped(id, Duration::from_secs(10)).await.unwrap();
    }
    let mut config = setup.workload_config();
    config.max_records_per_producer = REFUSED_RECORDS_PER_PRODUCER;
    config.client.max_attempts = 3;
    config.client.request_timeout_ms = 2_000;
    config.drain_timeout = Duration::from_secs(60);
    let refused = Workload::start("quorum-refused", &config).unwrap();
    let expected = REFUSED_RECORDS_PER_PRODUCER * config.producers as u64;
    let deadline = Instant::now() + Duration::from_secs(90);
    while refused.acked() + refused.unacked() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = refused.stop().await;
    assert_eq!(refused.sent() as u64, expected, "every refused-phase record was sent and resolved");
    checkers::writes_refused(&refused).unwrap_or_else(|v| panic!("{v}"));
    // The same health check now fails on the survivor: it cannot serve without a majority.
    let (code, out) = cluster.exec(1, &probe).await.unwrap();
    assert_ne!(code, Some(0), "the health check passes on a node without a majority: {out:?}");
    history.extend(refused);

    // 3. The majority is back: writes are acknowledged again.
    for id in [2, 3] {
        cluster.start_node(id).await.unwrap();
    }
    cluster.wait_all_ready(READY_TIMEOUT).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out) = cluster.exec(1, &probe).await.unwrap();
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "the health check still fails with the majority back: {out:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = setup.start_workload("quorum-after").unwrap();
    after.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();
    history.extend(after.stop().await);

    match setup.check(&history).await {
        Ok(summary) => eprintln!("quorum: {summary}"),
        Err(report) => panic!("quorum: {report}"),
    }
}
