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

/// Every group's term as `observer` sees it.
async fn terms(
    cluster: &shale_tests::cluster::ContainerCluster,
    observer: u64,
) -> std::collections::BTreeMap<String, u64> {
    let status = cluster.status_of(observer).await.expect("cluster status");
    status.meta.iter().chain(status.partitions.iter()).map(|g| (g.name.clone(), g.term)).collect()
}

/// Pre-vote: a follower cut off for many election timeouts does not raise its terms while alone
/// (without pre-vote they climb by one per election timeout, ~13 in 8 s), so when it comes back
/// it does not depose the leaders with a higher term. Terms may still move by the elections the
/// cut itself causes (the groups it led elect a new leader, which may later hand leadership back to
/// it as preferred leader), so the bound is a few terms, not equality: leader changes under a
/// loaded 2-core machine can also come from late heartbeats, which this test must not flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_rejoining_after_a_partition_does_not_inflate_terms() {
    let setup = Setup::start("prevote", 3).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let workload = setup.start_workload("prevote").unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    let meta_leader = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    let isolated = *ids.iter().find(|id| **id != meta_leader).unwrap();
    let before = terms(cluster, meta_leader).await;
    let majority: Vec<u64> = ids.iter().copied().filter(|id| *id != isolated).collect();
    cluster.disconnect(isolated).await.unwrap();
    for p in 0..setup.partitions {
        cluster.wait_partition_leader("prevote", p, &majority, ELECTION_TIMEOUT).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    cluster.connect(isolated).await.unwrap();
    cluster.wait_ready(isolated, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();
    for id in &ids {
        let after = terms(cluster, *id).await;
        for (group, was) in &before {
            let now = after.get(group).copied().unwrap_or(0);
            assert!(
                now <= was + 3,
                "group {group} on node {id}: term {was} -> {now} after node {isolated} rejoined (terms before {before:?}, now {after:?})"
            );
        }
    }

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("prevote: {summary}"),
        Err(report) => panic!("prevote: {report}"),
    }
}
