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

/// Every group's (leader, term) as the majority sees it, for the groups `isolated` neither leads
/// nor is the preferred leader of (the preferred-leader rule may legitimately hand those back).
async fn leaders_not_tied_to(
    cluster: &shale_tests::cluster::ContainerCluster,
    observer: u64,
    isolated: u64,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    let status = cluster.status_of(observer).await.expect("cluster status");
    status
        .meta
        .iter()
        .chain(status.partitions.iter())
        .filter(|g| g.leader_id != isolated && g.replicas.first() != Some(&isolated))
        .map(|g| (g.name.clone(), (g.leader_id, g.term)))
        .collect()
}

/// Pre-vote: a follower cut off for many election timeouts does not raise its term while alone,
/// so when it comes back no leader it did not hold changes and no term moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_rejoining_after_a_partition_changes_no_leader() {
    let setup = Setup::start("prevote", 3).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let workload = setup.start_workload("prevote").unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    let meta_leader = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    let isolated = *ids.iter().find(|id| **id != meta_leader).unwrap();
    let observer = meta_leader;
    let majority: Vec<u64> = ids.iter().copied().filter(|id| *id != isolated).collect();
    cluster.disconnect(isolated).await.unwrap();
    for p in 0..setup.partitions {
        cluster.wait_partition_leader("prevote", p, &majority, ELECTION_TIMEOUT).await.unwrap();
    }
    // Well past the election timeout (300-600 ms): without pre-vote the isolated node's terms
    // climb by one per timeout.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();
    let before = leaders_not_tied_to(cluster, observer, isolated).await;
    assert!(before.contains_key("meta"), "the metadata group is compared: {before:?}");

    cluster.connect(isolated).await.unwrap();
    cluster.wait_ready(isolated, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = leaders_not_tied_to(cluster, observer, isolated).await;
    for (group, was) in &before {
        assert_eq!(after.get(group), Some(was), "group {group}: (leader, term) changed when node {isolated} rejoined");
    }

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("prevote: {summary}"),
        Err(report) => panic!("prevote: {report}"),
    }
}
