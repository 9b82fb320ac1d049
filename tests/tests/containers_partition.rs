//! A network partition isolating a partition's leader (`docker network disconnect`) under a
//! concurrent workload, then healed. The majority side must elect a new leader and keep
//! acknowledging writes; the isolated node must rejoin and agree with the others afterwards.

use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::scenario::{ELECTION_TIMEOUT, PROGRESS_TIMEOUT, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolating_the_leader_keeps_the_majority_available_and_loses_nothing() {
    let setup = Setup::start("partition", 3).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let workload = setup.start_workload("partition").unwrap();
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();

    let isolated = cluster.wait_partition_leader("partition", 0, &ids, ELECTION_TIMEOUT).await.unwrap();
    let meta_leader = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    eprintln!("isolating node {isolated} (metadata leader: node {meta_leader})");
    cluster.disconnect(isolated).await.unwrap();
    let majority: Vec<u64> = ids.iter().copied().filter(|id| *id != isolated).collect();
    let successor = cluster.wait_partition_leader("partition", 0, &majority, ELECTION_TIMEOUT).await.unwrap();
    assert_ne!(successor, isolated);
    cluster.wait_metadata_leader(&majority, ELECTION_TIMEOUT).await.unwrap();
    // Availability while a majority is connected.
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();

    cluster.connect(isolated).await.unwrap();
    cluster.wait_ready(isolated, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("partition: {summary}"),
        Err(report) => panic!("partition: {report}"),
    }
}
