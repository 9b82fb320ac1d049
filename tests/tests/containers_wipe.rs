//! A node loses its whole volume (container and volume removed) under a concurrent workload and
//! rejoins empty with the same id and address: it must catch up from the others until its replica
//! of every partition holds exactly what theirs hold. Two victims, one test each: node 3 (an
//! ordinary member) and node 1, the one that bootstraps a new cluster, which must rejoin the
//! existing cluster instead of initialising a second one.

use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::scenario::{ELECTION_TIMEOUT, PROGRESS_TIMEOUT, Setup};

async fn wipe_and_rejoin(wiped: u64, run: &str) {
    let setup = Setup::start(run, 3).await.unwrap();
    let cluster = &setup.cluster;
    let workload = setup.start_workload(run).unwrap();
    workload.wait_for_more_acks(300, PROGRESS_TIMEOUT).await.unwrap();

    cluster.wipe_and_restart(wiped).await.unwrap();
    // While it catches up, the other two carry the load.
    workload.wait_for_more_acks(150, PROGRESS_TIMEOUT).await.unwrap();
    cluster.wait_ready(wiped, READY_TIMEOUT).await.unwrap();
    // It rejoined the existing cluster: it sees the same members.
    let status = cluster.status_of(wiped).await.unwrap();
    let members: Vec<u64> = status.members.iter().map(|m| m.id).collect();
    assert_eq!(members, vec![1, 2, 3], "{status:?}");
    let meta = cluster.wait_metadata_leader(&cluster.ids(), ELECTION_TIMEOUT).await.unwrap();
    eprintln!("{run}: metadata leader after the wipe of node {wiped}: node {meta}");
    workload.wait_for_more_acks(100, PROGRESS_TIMEOUT).await.unwrap();

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("{run}: {summary}"),
        Err(report) => panic!("{run}: {report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_catches_up_from_the_others() {
    wipe_and_rejoin(3, "wipe-member").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_bootstrap_node_rejoins_instead_of_starting_a_new_cluster() {
    wipe_and_rejoin(1, "wipe-bootstrap").await;
}
