//! SIGKILL (`docker kill`) of a partition's leader, then of the metadata group's leader, under a
//! concurrent workload; each victim is restarted. Writes must keep being acknowledged while two of
//! three nodes are up, and afterwards every safety checker must pass.

use shale_client::NewTopic;
use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::scenario::{ELECTION_TIMEOUT, PROGRESS_TIMEOUT, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_partition_and_metadata_leaders_keeps_every_acknowledged_record() {
    let setup = Setup::start("kill", 3).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let workload = setup.start_workload("kill").unwrap();
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();

    // 1. The leader of partition 0 dies without warning.
    let victim = cluster.wait_partition_leader("kill", 0, &ids, ELECTION_TIMEOUT).await.unwrap();
    cluster.kill(victim).await.unwrap();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    let successor = cluster.wait_partition_leader("kill", 0, &survivors, ELECTION_TIMEOUT).await.unwrap();
    assert_ne!(successor, victim);
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();
    cluster.start_node(victim).await.unwrap();
    cluster.wait_ready(victim, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    // 2. The metadata leader dies; metadata writes and produce keep working on the other two.
    let meta = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    cluster.kill(meta).await.unwrap();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != meta).collect();
    cluster.wait_metadata_leader(&survivors, ELECTION_TIMEOUT).await.unwrap();
    setup.client.admin().create_topic(NewTopic::new("created-during-outage", 1, 3)).await.unwrap();
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();
    cluster.start_node(meta).await.unwrap();
    cluster.wait_ready(meta, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    let history = workload.stop().await;
    let topics = setup.client.admin().list_topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == "created-during-outage"), "{topics:?}");
    match setup.check(&history).await {
        Ok(summary) => eprintln!("kill: {summary}"),
        Err(report) => panic!("kill: {report}"),
    }
}
