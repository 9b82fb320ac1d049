//! Operations on a running cluster: bootstrap again, leader transfer, membership, retention,
//! and a full restart on disk.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cluster_support::*;
use shale_raft::cluster::{
    BatchAck, ClusterError, FetchRequest, KafkaBatch, MemberAddrs, ProduceRecord, ProducerInfo, RetentionPolicy,
    TopicSpec,
};
use shale_raft::{GroupId, NodeId};
use shale_storage::kafka_batch::{self, KafkaCompression};
use shale_storage::record_batch::{self, NewRecord};
use shale_storage::{CheckpointPolicy, CodecKind, ReadCheck, StorageOptions};

/// Three nodes on memory storage with 4 KiB segments and no automatic checkpoints, so retention
/// and snapshots have segments to work on after a few records.
fn small_segments_in_memory() -> Setup {
    let options = StorageOptions {
        max_segment_bytes: 4096,
        checkpoint_policy: CheckpointPolicy::Manual,
        ..StorageOptions::default()
    };
    let mut setup = Setup::new(3);
    setup.backing = Backing::Memory(options);
    setup
}

/// A fetch of partition `partition` at offset 0 that does not wait.
fn fetch_at(topic: &str, partition: u32) -> FetchRequest {
    FetchRequest {
        topic: topic.into(),
        partition,
        offset: 0,
        from_index: None,
        max_bytes: 1024,
        wait: Duration::ZERO,
        check: ReadCheck::Chain,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_again_is_a_no_op_and_transfer_leader_moves_leadership() {
    let mut setup = Setup::new(3);
    setup.preferred_leader_delay_ms = 1_500;
    let c = TestCluster::start_with(setup).await;
    // Bootstrapping again (from another node, same members) changes nothing.
    let members: BTreeMap<_, _> = c.nodes.iter().map(|n| (n.id, MemberAddrs::one(n.addr.clone()))).collect();
    c.node(2).bootstrap(members).await.expect("second bootstrap");
    wait_for("every node sees the three members", || async {
        (1..=3).all(|id| c.node(id).cluster_status().members.len() == 3).then_some(())
    })
    .await;

    c.create_topic("moving", 1, 3).await;
    let preferred = c.settled_leaders("moving").await[0];
    let target = (1..=3).find(|id| *id != preferred).expect("another replica");
    assert!(matches!(
        c.node(target).transfer_leader("moving", 0, target).await,
        Err(ClusterError::NotLeader { leader: Some((l, _)) }) if l == preferred
    ));
    assert!(matches!(
        c.node(preferred).transfer_leader("moving", 0, 99).await,
        Err(ClusterError::InvalidArgument { field: "to", .. })
    ));
    c.node(preferred).transfer_leader("moving", 0, target).await.expect("transfer");
    wait_for("the target leads", || async { (c.wait_partition_leaders("moving").await == vec![target]).then_some(()) })
        .await;
    let acked = c.produce("moving", 0, vec![record("k", "after transfer")], None).await.expect("produce");
    // After the preferred-leader delay, leadership returns to the preferred replica.
    assert_eq!(c.settled_leaders("moving").await, vec![preferred]);
    let all = c.read_all(preferred, "moving", 0).await;
    assert_eq!(all.last().map(|r| r.offset), Some(acked[0].base_offset));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_nodes_take_replicas_and_removed_nodes_give_them_up() {
    let mut setup = Setup::new(4);
    setup.members = 3;
    let c = TestCluster::start_with(setup).await;
    let ml = c.metadata_leader().await;
    assert!(matches!(
        c.node(ml).create_topic(spec("wide", 4, 4)).await,
        Err(ClusterError::NotEnoughNodes { requested: 4, available: 3 })
    ));
    let addrs = MemberAddrs::pair(c.nodes[3].addr.clone(), "clients-reach-4.example:7004");
    c.node(ml).add_node(4, addrs).await.expect("add node 4");
    let status = c.node(ml).cluster_status();
    assert_eq!(status.members.len(), 4);
    let four = status.members.iter().find(|m| m.id == 4).expect("member 4");
    assert_eq!(
        (four.addr.as_str(), four.client_addr.as_str()),
        (c.nodes[3].addr.as_str(), "clients-reach-4.example:7004"),
        "the member is recorded with both addresses"
    );
    assert_eq!(
        c.node(ml).client_view(Some((4, c.nodes[3].addr.clone()))).map(|(_, a)| a).as_deref(),
        Some("clients-reach-4.example:7004")
    );
    assert_eq!(status.metadata.expect("metadata").replicas, vec![1, 2, 3, 4]);

    let info = c.create_topic("wide", 2, 3).await;
    c.settled_leaders("wide").await;
    let on_node_4 = info.partitions.iter().filter(|p| p.replicas.contains(&4)).count();
    assert!(on_node_4 > 0, "the new node takes replicas: {info:?}");
    let before =
        c.produce("wide", 0, vec![record("a", "1")], Some(ProducerInfo { producer_id: 1, base_sequence: 0 })).await;
    let before = before.expect("produce");

    // Remove node 2: metadata moves its replicas, the partition leaders change the groups.
    let ml = c.metadata_leader().await;
    c.node(ml).remove_node(2).await.expect("remove node 2");
    let moved = wait_for("replicas moved off node 2", || async {
        let ml = c.metadata_leader().await;
        let topics = c.node(ml).list_topics().await.ok()?;
        let wide = topics.into_iter().find(|t| t.name == "wide")?;
        wide.partitions.iter().all(|p| !p.replicas.contains(&2) && p.replicas.len() == 3).then_some(wide)
    })
    .await;
    wait_for("node 2 stops its groups and the new replicas run them", || async {
        let node2_empty = c.node(2).cluster_status().partitions.is_empty();
        let all_running = moved
            .partitions
            .iter()
            .all(|p| p.replicas.iter().all(|r| c.node(*r).local_partition_state("wide", p.partition).is_ok()));
        (node2_empty && all_running).then_some(())
    })
    .await;
    // Every new replica catches up with what was written before the move, and the group still takes writes.
    let after =
        c.produce("wide", 0, vec![record("b", "2")], Some(ProducerInfo { producer_id: 1, base_sequence: 1 })).await;
    let after = after.expect("produce after move");
    let p0 = &moved.partitions[0];
    for r in &p0.replicas {
        wait_for("replica holds both records", || async {
            let offsets: Vec<u64> = c.try_read_all(*r, "wide", 0).await.ok()?.iter().map(|x| x.offset).collect();
            (offsets == vec![before[0].base_offset, after[0].base_offset]).then_some(())
        })
        .await;
    }
    c.shutdown().await;
}

/// A one-partition topic keeping 16 KiB, uncompressed, created and settled.
async fn short_retention_topic(c: &TestCluster, name: &str) -> Vec<NodeId> {
    let ml = c.metadata_leader().await;
    let spec = TopicSpec {
        retention: RetentionPolicy { retention_bytes: Some(16 * 1024), retention_ms: None },
        codec: CodecKind::None,
        ..spec(name, 1, 3)
    };
    c.node(ml).create_topic(spec).await.expect("create");
    c.settled_leaders(name).await
}

/// Produces 200 records of ~420 bytes (20 batches of 10) to partition 0; returns their acks.
async fn produce_200(c: &TestCluster, topic: &str) -> Vec<RecordAck> {
    let mut acked = Vec::new();
    for batch in 0..20 {
        let records = (0..10).map(|i| record("k", &format!("{batch:03}-{i:03}-{}", "x".repeat(400)))).collect();
        acked.extend(per_record(&c.produce(topic, 0, records, None).await.expect("produce")));
    }
    acked
}

/// Waits until replica `id` applied every acknowledged record and its own retention ran, then
/// checks it on its own: below its log start a fetch is out of range and says where the log
/// starts; from the log start on it holds every acknowledged record, in order, with the
/// acknowledged hashes, and about `retention_bytes` of them.
async fn check_replica_keeps_retained_tail(c: &TestCluster, id: NodeId, topic: &str, acked: &[RecordAck]) {
    let last = acked.last().expect("acked").offset;
    let (start, kept) = wait_for("replica applied everything and purged", || async {
        let s = c.node(id).local_partition_state(topic, 0).ok()?;
        let start = s.log_start?;
        // ~200 records of ~420 bytes were written; retention keeps about 16 KiB of them.
        let bytes = c.nodes[id as usize - 1].storage.stream_bytes(GroupId(65537).log_stream()).ok()?;
        if start == 0 || s.high_watermark? <= last || bytes > 40 * 1024 {
            return None;
        }
        Some((start, c.try_read_from(id, topic, 0, start).await.ok()?))
    })
    .await;
    let req = FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        from_index: None,
        max_bytes: 1024,
        wait: Duration::ZERO,
        check: ReadCheck::Chain,
    };
    match c.node(id).fetch(req).await {
        Err(ClusterError::OffsetOutOfRange { start: s, .. }) => assert!(s >= start),
        other => panic!("node {id}: {other:?}"),
    }
    let from = acked.iter().position(|a| a.offset >= start);
    let from = from.unwrap_or_else(|| panic!("node {id} kept no acknowledged record: its log starts at {start}"));
    let expected: Vec<_> = acked[from..].iter().map(|a| (a.offset, a.chain_hash)).collect();
    assert_eq!(kept.iter().map(|r| (r.offset, r.chain_hash)).collect::<Vec<_>>(), expected, "node {id}");
    assert!(kept.len() * 420 >= 16 * 1024 - 2 * 4096, "node {id} keeps about retention_bytes: {} records", kept.len());
    assert_eq!(kept.last().map(|r| r.offset), Some(last));
}

/// The partition group of `topic`'s partition 0 on node `id` (the cluster's first topic).
fn first_partition_group(c: &TestCluster, id: NodeId) -> std::sync::Arc<shale_raft::RaftGroup> {
    c.node(id).router().group(GroupId(65537)).expect("partition group runs here")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_segments_only_below_a_snapshot() {
    let c = TestCluster::start_with(small_segments_in_memory()).await;
    short_retention_topic(&c, "short").await;
    let acked = produce_200(&c, "short").await;
    // One replica compacts on demand; the others through the retention loop. A leader holds the
    // purge while a follower still catches up below the retention start, so compact until it moves.
    let outcome = wait_for("node 1 compacts", || async {
        let o = c.node(1).compact("short", 0).await.ok()?;
        (o.log_start_after > 0).then_some(o)
    })
    .await;
    assert!(outcome.log_start_after >= outcome.log_start_before, "{outcome:?}");
    assert!(outcome.log_start_after <= outcome.snapshot_index + 1, "never past the snapshot: {outcome:?}");
    for id in 1..=3 {
        check_replica_keeps_retained_tail(&c, id, "short", &acked).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_holds_retention_for_a_live_follower_behind_it_which_then_keeps_the_retained_records() {
    let mut setup = small_segments_in_memory();
    setup.preferred_leader_delay_ms = 600_000;
    let c = TestCluster::start_with(setup).await;
    let leader = short_retention_topic(&c, "held").await[0];
    let (slow, other) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    // The slow follower answers heartbeats but takes no entries: live, and behind.
    first_partition_group(&c, slow).hold_appends(true);
    let slow_next = first_partition_group(&c, slow).next_index().expect("next index");
    let acked = produce_200(&c, "held").await;
    // The retention start is far past what the slow follower holds: the other follower (which
    // purges on its own) moves its log start past it.
    let o = c.node(other).compact("held", 0).await.expect("compact other");
    assert!(o.log_start_after > slow_next, "retention would purge what the slow follower needs: {o:?}, {slow_next}");
    // The leader does not, on demand or through its retention loop, while that follower answers.
    let o = c.node(leader).compact("held", 0).await.expect("compact leader");
    assert!(o.log_start_after <= slow_next, "the leader held the purge: {o:?}, {slow_next}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = first_partition_group(&c, leader).log_start().expect("log start index");
    assert!(start <= slow_next, "the retention loop held the purge too: {start}, {slow_next}");
    assert_eq!(first_partition_group(&c, slow).next_index().expect("next index"), slow_next, "still held");
    // Released, it catches up with the records themselves, not a snapshot, and keeps the tail.
    first_partition_group(&c, slow).hold_appends(false);
    for id in [slow, other, leader] {
        check_replica_keeps_retained_tail(&c, id, "held", &acked).await;
    }
    // Nobody is behind any more: the leader's purge goes ahead.
    let o = wait_for("the leader purges", || async {
        let o = c.node(leader).compact("held", 0).await.ok()?;
        (o.log_start_after > slow_next).then_some(o)
    })
    .await;
    assert!(o.log_start_after <= o.snapshot_index + 1, "{o:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stops_holding_retention_after_the_hold_limit_and_the_follower_catches_up_by_snapshot() {
    let mut setup = small_segments_in_memory();
    setup.preferred_leader_delay_ms = 600_000;
    setup.retention_hold_max_ms = 3_000;
    let c = TestCluster::start_with(setup).await;
    let leader = short_retention_topic(&c, "stuck").await[0];
    let stuck = if leader == 1 { 2 } else { 1 };
    first_partition_group(&c, stuck).hold_appends(true);
    let stuck_next = first_partition_group(&c, stuck).next_index().expect("next index");
    // Nothing is over retention before the first write, so no hold can start before this.
    let writes_began = std::time::Instant::now();
    let acked = produce_200(&c, "stuck").await;
    // The follower stays live but never moves: the purge is held until the hold limit, then goes ahead.
    let o = wait_for("the leader purges past the stuck follower", || async {
        let o = c.node(leader).compact("stuck", 0).await.ok()?;
        if o.log_start_after <= stuck_next {
            return None;
        }
        let waited = writes_began.elapsed();
        assert!(waited >= Duration::from_millis(3_000), "purged after {waited:?}, within the hold limit: {o:?}");
        Some(o)
    })
    .await;
    // It is sent the snapshot (not held: only entries are); released, it serves what it holds
    // from its log start on, and every acknowledged record is still on the other two replicas.
    first_partition_group(&c, stuck).hold_appends(false);
    let last = acked.last().expect("acked").offset;
    let (index_start, start) = wait_for("the stuck follower installs the snapshot and applies everything", || async {
        let s = c.node(stuck).local_partition_state("stuck", 0).ok()?;
        let index_start = first_partition_group(&c, stuck).log_start().ok()?;
        (s.high_watermark? > last && index_start > stuck_next).then_some((index_start, s.log_start?))
    })
    .await;
    assert!(index_start >= o.log_start_after, "from the snapshot on: {index_start}, {o:?}");
    // Records written after the snapshot continue its chain on that replica too.
    let more = (0..10).map(|i| record("k", &format!("after-{i:03}-{}", "x".repeat(400)))).collect();
    let mut acked = acked;
    acked.extend(per_record(&c.produce("stuck", 0, more, None).await.expect("produce after the snapshot")));
    let last = acked.last().expect("acked").offset;
    wait_for("the stuck follower applies the records after the snapshot", || async {
        let s = c.node(stuck).local_partition_state("stuck", 0).ok()?;
        (s.high_watermark? > last).then_some(())
    })
    .await;
    let kept = c.try_read_from(stuck, "stuck", 0, start).await.unwrap_or_default();
    let from = acked.iter().position(|a| a.offset >= start).unwrap_or(acked.len());
    assert!(acked.len() - from >= 10, "the records after the snapshot are compared: {start}");
    assert_eq!(
        kept.iter().map(|r| (r.offset, r.chain_hash)).collect::<Vec<_>>(),
        acked[from..].iter().map(|a| (a.offset, a.chain_hash)).collect::<Vec<_>>()
    );
    for id in (1..=3).filter(|id| *id != stuck) {
        check_replica_keeps_retained_tail(&c, id, "stuck", &acked).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_on_disk_keeps_topics_records_offsets_and_dedup() {
    let mut setup = Setup::new(3);
    setup.backing = Backing::Disk(StorageOptions::default());
    let mut c = TestCluster::start_with(setup).await;
    c.create_topic("durable", 2, 3).await;
    c.settled_leaders("durable").await;
    let producer = ProducerInfo { producer_id: 5, base_sequence: 0 };
    let batch: Vec<_> = (0..10).map(|i| record("k", &format!("v{i}"))).collect();
    let acked_batches = c.produce("durable", 1, batch.clone(), Some(producer)).await.expect("produce");
    let acked = per_record(&acked_batches);
    // Snapshot one replica so that its restart restores from a snapshot, not only from the log.
    c.node(1).checkpoint("durable", 1).await.expect("checkpoint");
    let ml = c.metadata_leader().await;
    c.node(ml).commit_offsets("g", None, vec![("durable".to_string(), 1, acked[4].offset)]).await.expect("commit");

    for id in 1..=3 {
        c.kill(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await;
    }
    c.wait_partition_leaders("durable").await;
    for id in 1..=3 {
        let got = wait_for("replica serves the records after restart", || async {
            let all = c.try_read_all(id, "durable", 1).await.ok()?;
            (all.len() == acked.len()).then_some(all)
        })
        .await;
        for (r, a) in got.iter().zip(&acked) {
            assert_eq!((r.offset, r.chain_hash), (a.offset, a.chain_hash));
        }
        assert_eq!(got[3].value, Bytes::from_static(b"v3"));
    }
    // The dedup table survived: the retry answers the original offsets and writes nothing.
    let retry = c.produce("durable", 1, batch, Some(producer)).await.expect("retry");
    assert_eq!(retry, acked_batches);
    let ml = c.metadata_leader().await;
    let offsets = wait_for("offsets readable", || async { c.node(ml).fetch_offsets("g").await.ok() }).await;
    assert_eq!(offsets.len(), 1);
    assert_eq!(offsets[0].offset, acked[4].offset);
    c.shutdown().await;
}

/// A cluster of `setup` (leadership transfers held off for the whole test) with a one-partition topic
/// keeping 8 KiB, whose partition has a leader, and one of its followers killed: returns the
/// cluster, the leader and the follower left behind.
async fn cluster_with_a_follower_down(mut setup: Setup, topic: &str) -> (TestCluster, NodeId, NodeId) {
    setup.preferred_leader_delay_ms = 600_000;
    let mut c = TestCluster::start_with(setup).await;
    let ml = c.metadata_leader().await;
    let spec = TopicSpec {
        retention: RetentionPolicy { retention_bytes: Some(8 * 1024), retention_ms: None },
        ..spec(topic, 1, 3)
    };
    c.node(ml).create_topic(spec).await.expect("create");
    let leader = c.wait_partition_leaders(topic).await[0];
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    c.kill(lagging).await;
    (c, leader, lagging)
}

/// Waits until retention has purged partition 0 of `topic` past log entry `entry_index` on every
/// running replica.
async fn wait_purged_past(c: &TestCluster, topic: &str, entry_index: u64) {
    for id in c.running() {
        wait_for("the entry is purged on the running replicas", || async {
            let out = c.node(id).compact(topic, 0).await.ok()?;
            (out.log_start_after > entry_index).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_catching_up_by_snapshot_gets_the_dedup_table() {
    let (mut c, leader, lagging) = cluster_with_a_follower_down(small_segments_in_memory(), "snap").await;

    // An idempotent batch, then enough data that retention purges it on the two running replicas.
    let producer = ProducerInfo { producer_id: 42, base_sequence: 0 };
    let batch: Vec<_> = (0..3).map(|i| record("k", &format!("once-{i}"))).collect();
    let first = c.produce("snap", 0, batch.clone(), Some(producer)).await.expect("produce");
    for b in 0..20 {
        let records = (0..10).map(|i| record("f", &format!("{b}-{i}-{}", "y".repeat(400)))).collect();
        c.produce("snap", 0, records, None).await.expect("filler");
    }
    wait_purged_past(&c, "snap", first[0].entry_index).await;

    // The lagging replica comes back below the leader's log start: it must install a snapshot.
    c.restart(lagging).await;
    let (_, end) = c.node(leader).end_offsets("snap", 0).await.expect("end offsets");
    wait_for("the lagging replica caught up from a snapshot", || async {
        let s = c.node(lagging).local_partition_state("snap", 0).ok()?;
        // A fetch finds (and caches) the record offset the replica's log starts at.
        let start = match c.node(lagging).fetch(fetch_at("snap", 0)).await {
            Err(ClusterError::OffsetOutOfRange { start, .. }) => start,
            _ => return None,
        };
        (s.high_watermark? >= end && start > first[0].base_offset + 2 && s.log_start == Some(start)).then_some(start)
    })
    .await;
    // It serves fetches by offset from its own log, from its log start on, as the leader does
    // (records written after the snapshot it installed).
    // Computed now: the cached log start is unset for a moment after each purge or snapshot install.
    let (start, _) = c.node(lagging).local_bounds("snap", 0).await.expect("log start");
    assert!(start <= end);
    for b in 0..3 {
        let records = (0..10).map(|i| record("g", &format!("after-{b}-{i}"))).collect();
        c.produce("snap", 0, records, None).await.expect("more");
    }
    wait_for("the lagging replica applied the new records", || async {
        (c.node(lagging).local_partition_state("snap", 0).ok()?.high_watermark? >= end + 30).then_some(())
    })
    .await;
    let mid = end + 15;
    let from_lagging = c.read_all_from(lagging, "snap", 0, mid).await;
    assert_eq!(from_lagging.first().map(|r| r.offset), Some(mid), "a record in the middle of a batch");
    assert_eq!(from_lagging.len(), 15);
    assert_eq!(from_lagging.first().map(|r| r.value.clone()), Some(Bytes::from_static(b"after-1-5")));
    assert_eq!(from_lagging, c.read_all_from(leader, "snap", 0, mid).await);
    c.node(leader).transfer_leader("snap", 0, lagging).await.expect("transfer");
    wait_for("the restored replica leads", || async {
        (c.wait_partition_leaders("snap").await == vec![lagging]).then_some(())
    })
    .await;
    // Its dedup table came with the snapshot: the retry is recognised, not written again.
    match c.node(lagging).produce("snap", 0, batch, Some(producer)).await {
        Err(ClusterError::DuplicateOfPurgedRecord { producer_id: 42, sequence: 0, offset }) => {
            assert_eq!(offset, first[0].base_offset)
        }
        other => panic!("expected the retry to be recognised, got {other:?}"),
    }
    let fresh = c
        .node(lagging)
        .produce("snap", 0, vec![record("k", "new")], Some(ProducerInfo { producer_id: 42, base_sequence: 3 }))
        .await;
    assert_eq!(fresh.expect("next sequence")[0].base_offset, end + 30, "dense offsets across the leader change");
    c.shutdown().await;
}

/// Stores `records` as one Kafka batch kept as sent (the topic's codec is none), at whichever
/// running node leads; the acknowledgement.
async fn produce_kept(c: &TestCluster, topic: &str, records: &[NewRecord]) -> BatchAck {
    let kafka = KafkaBatch {
        bytes: Bytes::from(kafka_batch::encode_for_tests(records, KafkaCompression::None, None)),
        compression: KafkaCompression::None,
        timestamps: (records[0].timestamp_ms, records.iter().map(|r| r.timestamp_ms).max().unwrap()),
    };
    let produce: Vec<ProduceRecord> = records
        .iter()
        .map(|r| ProduceRecord {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            timestamp_ms: Some(r.timestamp_ms),
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for id in c.running() {
            match c.node(id).produce_kafka(topic, 0, produce.clone(), Some(kafka.clone()), None).await {
                Ok(acks) => {
                    assert_eq!(acks.len(), 1, "a kept Kafka batch is one entry");
                    return acks[0];
                }
                Err(ClusterError::NotLeader { .. }) => {}
                Err(e) => panic!("produce: {e}"),
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader took the batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kafka batches kept as sent replicate, snapshot and are purged as any entry: a follower left
/// behind past the leader's log start catches up by snapshot, and every replica, read on its own
/// (each entry's chain hash recomputed), holds exactly the acknowledged records from its log start
/// to the end, decoded from the stored Kafka bytes, and still stores the newest as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_batches_kept_as_sent_survive_a_follower_catching_up_by_snapshot() {
    kept_batches_survive_snapshot_catch_up(small_segments_in_memory()).await.shutdown().await;
}

/// The same on the disk storage (a fault file system per node) keeping no page-cache tail: every
/// synced byte is dropped from the cache as its segment is sealed, so the snapshot, the catch-up
/// and every replica's read come after drops, and no drop may name a byte that was not durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_batches_survive_snapshot_catch_up_on_disk_with_synced_bytes_dropped_from_the_page_cache() {
    let options = StorageOptions {
        max_segment_bytes: 4096,
        checkpoint_policy: CheckpointPolicy::Manual,
        page_cache_keep_bytes: Some(0),
        ..StorageOptions::default()
    };
    let mut setup = Setup::new(3);
    setup.backing = Backing::Faulty(options);
    let c = kept_batches_survive_snapshot_catch_up(setup).await;
    let mut drops = 0;
    for n in &c.nodes {
        let fs = n.fs.as_ref().expect("a fault file system");
        assert_eq!(fs.undurable_cache_drops(), 0, "node {}: a drop named bytes that were not durable", n.id);
        // Counted on every file the node ever had: retention may purge each dropped segment
        // before this point (it did, under load in CI, leaving only unsealed segments live).
        drops += fs.cache_drop_count();
    }
    assert!(drops > 0, "no synced bytes were dropped from the cache");
    c.shutdown().await;
}

/// The body of the two tests above, on a cluster of `setup`; returns the cluster, still running.
async fn kept_batches_survive_snapshot_catch_up(setup: Setup) -> TestCluster {
    let (mut c, leader, lagging) = cluster_with_a_follower_down(setup, "kept").await;

    let batch = |b: u64| -> Vec<NewRecord> {
        (0..10)
            .map(|i| NewRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{b}-{i}"))),
                value: Bytes::from(format!("{b}-{i}-{}", "v".repeat(400))),
                headers: vec![("h".into(), Bytes::from(format!("{b}")))],
                timestamp_ms: 1_700_000_000_000 + b * 10 + i,
            })
            .collect()
    };
    // Acknowledged records by offset.
    let mut acked: BTreeMap<u64, NewRecord> = BTreeMap::new();
    let mut ack = |a: &BatchAck, records: Vec<NewRecord>| {
        assert_eq!(a.record_count as usize, records.len());
        for (i, r) in records.into_iter().enumerate() {
            assert!(acked.insert(a.base_offset + i as u64, r).is_none(), "offsets are dense and new");
        }
    };
    let mut first_entry = None;
    for b in 0..25 {
        let a = produce_kept(&c, "kept", &batch(b)).await;
        first_entry.get_or_insert(a.entry_index);
        ack(&a, batch(b));
    }
    wait_purged_past(&c, "kept", first_entry.expect("batches were produced")).await;

    // The lagging replica comes back below the leader's log start: it installs a snapshot.
    c.restart(lagging).await;
    let (_, end) = c.node(leader).end_offsets("kept", 0).await.expect("end offsets");
    assert_eq!(end, 250);
    wait_for("the lagging replica caught up from a snapshot", || async {
        let s = c.node(lagging).local_partition_state("kept", 0).ok()?;
        (s.high_watermark? >= end && s.log_start? > 0).then_some(())
    })
    .await;
    for b in 25..28 {
        let a = produce_kept(&c, "kept", &batch(b)).await;
        ack(&a, batch(b));
    }
    let total = acked.len() as u64;
    assert_eq!(total, 280);

    for id in 1..=3 {
        wait_for("the replica applied every batch", || async {
            (c.node(id).local_partition_state("kept", 0).ok()?.high_watermark? >= total).then_some(())
        })
        .await;
        // Computed now: the cached log start is unset for a moment after each purge or snapshot install.
        let (start, _) = c.node(id).local_bounds("kept", 0).await.expect("log start");
        let read = c.read_all_from(id, "kept", 0, start).await;
        let got: Vec<(u64, NewRecord)> = read
            .iter()
            .map(|r| {
                let record = NewRecord {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                    timestamp_ms: r.timestamp_ms,
                };
                (r.offset, record)
            })
            .collect();
        let want: Vec<(u64, NewRecord)> = acked.range(start..).map(|(o, r)| (*o, r.clone())).collect();
        assert_eq!(got.len() as u64, total - start, "node {id}: every acknowledged record from {start} to the end");
        assert_eq!(got, want, "node {id}");
        // The newest batch is still the Kafka batch as sent, on every replica.
        let newest = c
            .node(id)
            .fetch(FetchRequest { offset: total - 10, max_bytes: 1 << 20, ..fetch_at("kept", 0) })
            .await
            .expect("fetch the newest batch");
        let entry = newest.entries.iter().rev().find(|e| !e.hidden).expect("an entry");
        let header = record_batch::decode_header(&entry.data[record_batch::envelope::HEADER_LEN..]).unwrap();
        assert!(header.kafka_batch, "node {id}: {header:?}");
    }
    c
}
