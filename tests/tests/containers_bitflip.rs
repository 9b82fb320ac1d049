//! Bit flips on one replica's disk: a node is stopped, one bit is flipped in the middle of a sealed
//! segment of a partition's log and one in its active segment, and the node is started again. Its
//! scrubber must find both, count them (`shale_scrub_damage_found_total`), never serve a damaged
//! record, and repair them from the two good replicas (`shale_scrub_repairs_total`,
//! `shale_scrub_damaged_ranges` back to 0). The workload runs throughout; afterwards every replica,
//! the repaired one included, is read on its own and must hold every acknowledged record at its
//! offset with its chain hash.

use std::time::{Duration, Instant};

use shale_tests::cluster::{ClusterOptions, ContainerCluster, READY_TIMEOUT};
use shale_tests::scenario::{ELECTION_TIMEOUT, PROGRESS_TIMEOUT, STOP_GRACE, Setup};

/// Small segments so a few hundred records seal several of them.
const SEGMENT_BYTES: u64 = 16 << 10;
/// Bound on the scrubber finding and repairing the damage after the node is ready.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(120);

/// A metric's value on node `id` (0 when absent).
async fn metric(cluster: &ContainerCluster, id: u64, name: &str) -> u64 {
    let addr = cluster.node(id).unwrap().http_addr();
    let Ok(r) = shale_tests::http::get(&addr, "/metrics", Duration::from_secs(3)).await else { return 0 };
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_bits_in_sealed_and_active_segments_are_found_repaired_and_never_served() {
    let options = ClusterOptions {
        env: vec![("SHALE_SEGMENT_BYTES".to_string(), SEGMENT_BYTES.to_string())],
        ..ClusterOptions::default()
    };
    let setup = Setup::start_with("bitflip", 1, options).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let workload = setup.start_workload("bitflip").unwrap();
    // About 600 records (~100 KiB of log): several sealed 16 KiB segments on every replica.
    workload.wait_for_more_acks(600, PROGRESS_TIMEOUT * 2).await.unwrap();

    let meta = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    let leader = cluster.wait_partition_leader("bitflip", 0, &ids, ELECTION_TIMEOUT).await.unwrap();
    let victim = ids
        .iter()
        .copied()
        .find(|id| *id != leader && *id != meta)
        .unwrap_or_else(|| ids.iter().copied().find(|id| *id != leader).expect("a follower"));
    eprintln!("bitflip: damaging node {victim} (partition leader {leader}, metadata leader {meta})");
    cluster.stop(victim, STOP_GRACE).await.unwrap();

    let (stream, segments) = cluster.partition_logs(victim).await.unwrap().swap_remove(0);
    assert!(segments.len() >= 3, "node {victim}'s log {stream} has sealed segments: {segments:?}");
    let (sealed, sealed_len) = &segments[1];
    let (active, active_len) = segments.last().unwrap();
    // The middle of a segment is inside some record (header, payload or CRC): any flip there is damage.
    cluster.flip_byte(victim, &format!("{stream}/{sealed}"), sealed_len / 2).await.unwrap();
    cluster.flip_byte(victim, &format!("{stream}/{active}"), active_len / 2).await.unwrap();
    let found_before = metric(cluster, leader, "shale_scrub_damage_found_total").await;
    assert_eq!(found_before, 0, "the good replicas found no damage");

    cluster.start_node(victim).await.unwrap();
    cluster.wait_ready(victim, READY_TIMEOUT).await.unwrap();
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        let found = metric(cluster, victim, "shale_scrub_damage_found_total").await;
        let repaired = metric(cluster, victim, "shale_scrub_repairs_total").await;
        let open = metric(cluster, victim, "shale_scrub_damaged_ranges").await;
        if found >= 2 && repaired >= 2 && open == 0 {
            eprintln!("bitflip: node {victim} found {found} damaged ranges and repaired {repaired}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {victim}: damage found {found}, repaired {repaired}, still damaged {open} after {REPAIR_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = cluster.status_of(victim).await.unwrap();
    assert!(status.damaged.is_empty(), "cluster status still lists damage: {:?}", status.damaged);
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("bitflip: {summary}"),
        Err(report) => panic!("bitflip: {report}"),
    }
}
