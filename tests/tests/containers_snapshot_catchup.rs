//! A node stopped (`docker stop`) while more than three snapshots' worth of records are written,
//! then started again: it is behind its partitions' snapshots and must catch up without losing the
//! history below them. Every Raft group snapshots every [`SMALL_SNAPSHOT_EVERY`] entries here, and
//! the test waits until each partition's Raft log grew by [`SNAPSHOTS_WHILE_DOWN`] intervals (in
//! entries, as snapshots count them, not record offsets: one entry holds a batch) before the restart. Two victims, one test each: a node that follows the partitions (issue 11, finding 1:
//! such a node installed a snapshot and dropped its log below it) and the metadata leader (its
//! metadata group is also driven past snapshots by consumer-offset commits while it is down).
//!
//! Afterwards every replica is read on its own: each must start at offset 0 (the topic keeps
//! everything) and hold every acknowledged record at its acknowledged offset with its chain hash.

use std::time::Duration;

use shale_client::{ConsumerConfig, NewTopic};
use shale_tests::cluster::{ClusterOptions, READY_TIMEOUT};
use shale_tests::scenario::{
    ELECTION_TIMEOUT, PROGRESS_TIMEOUT, SMALL_SNAPSHOT_EVERY, STOP_GRACE, Setup, snapshot_env,
};
use shale_tests::workload::{Workload, test_client_config};

/// Snapshot intervals written while the victim is down (more than three).
const SNAPSHOTS_WHILE_DOWN: u64 = 4;
/// Bound on writing them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(180);
/// Partitions of the topic: with two, one of the three nodes usually leads none of them.
const PARTITIONS: u32 = 2;
/// Consumer groups committing offsets at once while the metadata leader is down.
const COMMITTERS: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// A node leading no partition of the topic (if there is one) and not the metadata group.
    Follower,
    /// The metadata group's leader.
    MetadataLeader,
}

async fn down_past_snapshots(victim: Victim, run: &str) {
    let options = ClusterOptions { env: snapshot_env(SMALL_SNAPSHOT_EVERY), ..ClusterOptions::default() };
    let setup = Setup::start_with(run, PARTITIONS, options).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let mut config = setup.workload_config();
    config.records_per_second = 400;
    let workload = Workload::start(run, &config).unwrap();
    workload.wait_for_more_acks(300, PROGRESS_TIMEOUT).await.unwrap();

    let meta = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    let victim = match victim {
        Victim::MetadataLeader => meta,
        Victim::Follower => {
            let mut leaders = Vec::new();
            for p in 0..PARTITIONS {
                leaders.push(cluster.wait_partition_leader(run, p, &ids, ELECTION_TIMEOUT).await.unwrap());
            }
            let others: Vec<u64> = ids.iter().copied().filter(|id| *id != meta).collect();
            others.iter().copied().find(|id| !leaders.contains(id)).unwrap_or(others[0])
        }
    };
    eprintln!("{run}: stopping node {victim} (metadata leader: node {meta})");
    cluster.stop(victim, STOP_GRACE).await.unwrap();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    cluster.wait_metadata_leader(&survivors, ELECTION_TIMEOUT).await.unwrap();
    let before = cluster.last_log_indexes(run, &survivors).await;
    let meta_before = meta_last_index(&setup, &survivors).await;

    // Metadata written while the victim is down: a topic, and (for the metadata leader) enough
    // offset commits to take the metadata group past snapshots too.
    let created = format!("{run}-created-while-down");
    setup.client.admin().create_topic(NewTopic::new(&created, 1, 3)).await.unwrap();
    if victim == meta {
        commit_offsets(&setup, &survivors, run, SNAPSHOTS_WHILE_DOWN * SMALL_SNAPSHOT_EVERY).await;
        let meta_after = meta_last_index(&setup, &survivors).await;
        assert!(
            meta_after >= meta_before + SNAPSHOTS_WHILE_DOWN * SMALL_SNAPSHOT_EVERY,
            "the metadata log grew from {meta_before} to {meta_after} only"
        );
    }
    let by = SNAPSHOTS_WHILE_DOWN * SMALL_SNAPSHOT_EVERY;
    let after = cluster.wait_groups_past(run, PARTITIONS, &survivors, &before, by, WRITE_TIMEOUT).await.unwrap();
    eprintln!("{run}: written while node {victim} was down: last log indexes {before:?} -> {after:?}");

    cluster.start_node(victim).await.unwrap();
    cluster.wait_ready(victim, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();
    // The restarted node applied the metadata written while it was down.
    wait_until_local_topic(&setup, victim, &created).await;

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("{run}: {summary}"),
        Err(report) => panic!("{run}: node {victim} was down for {by}+ entries per partition: {report}"),
    }
}

/// The metadata group's last log index as the first answering node among `nodes` reports it.
async fn meta_last_index(setup: &Setup, nodes: &[u64]) -> u64 {
    for id in nodes {
        if let Ok(status) = setup.cluster.status_of(*id).await
            && let Some(meta) = status.meta
        {
            return meta.last_log_index;
        }
    }
    panic!("no node among {nodes:?} answered ClusterStatus");
}

/// Commits `count` consumer-group offsets (one metadata entry each) through `nodes` (a client
/// that knew the stopped node would try it first for every call), from [`COMMITTERS`] groups at once.
async fn commit_offsets(setup: &Setup, nodes: &[u64], run: &str, count: u64) {
    let endpoints = nodes.iter().map(|id| setup.cluster.node(*id).unwrap().grpc_addr()).collect();
    let client = shale_client::Client::new(test_client_config(endpoints)).unwrap();
    let tasks: Vec<_> = (0..COMMITTERS)
        .map(|g| {
            let consumer = client
                .consumer(ConsumerConfig { group: Some(format!("{run}-group-{g}")), ..ConsumerConfig::default() });
            let topic = setup.topic.clone();
            tokio::spawn(async move {
                for i in 0..count.div_ceil(COMMITTERS) {
                    consumer.commit_offsets(&[(topic.clone(), 0, i + 1)]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until node `id` itself runs a replica of `topic` (it applied the topic's creation).
async fn wait_until_local_topic(setup: &Setup, id: u64, topic: &str) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(status) = setup.cluster.status_of(id).await
            && status.partitions.iter().any(|g| g.topic == topic)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {id} never learned of topic {topic}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_down_for_four_snapshots_catches_up_with_the_whole_log() {
    down_past_snapshots(Victim::Follower, "snap-follower").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metadata_leader_down_for_four_snapshots_catches_up_with_the_whole_log() {
    down_past_snapshots(Victim::MetadataLeader, "snap-meta-leader").await;
}
