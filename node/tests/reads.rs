//! Reads never silently skip, and writes are retried through node stops: a 3-node cluster in
//! process, driven through the Rust client.
//!
//! One replica's log is made to start later than the others' through the cluster layer itself:
//! the topic gets a retention limit just long enough for `Compact` on that one node (a snapshot,
//! then retention on that replica alone), and the limit is cleared again. Storage drops whole
//! sealed segments only, so the test writes a little more than one segment (64 MiB) first.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::WAIT;
use shale_client::admin::NewTopic;
use shale_client::{
    ChainHash, Client, ClientConfig, ClientError, ConsumedRecord, ConsumerConfig, OffsetReset, ProducerConfig,
    ProducerRecord, proto,
};
use shale_node::testing::LocalCluster;
use shale_node::{NodeConfig, StorageKind};
use shale_raft::cluster::{ClusterError, FetchRequest};

/// Records written before the cut: 72 x 1 MB is just over one 64 MiB segment.
const BIG_RECORDS: usize = 72;
const BIG_RECORD_BYTES: usize = 1_000_000;

/// In-memory storage (same segments, compaction and hashes as on disk; no disk traffic for the
/// tens of megabytes these tests write).
fn in_memory(c: &mut NodeConfig) {
    c.storage = StorageKind::Memory;
}

struct Cluster {
    nodes: LocalCluster,
    _root: tempfile::TempDir,
}

impl Cluster {
    async fn start(configure: fn(&mut NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("temp dir");
        let nodes = LocalCluster::start(3, root.path(), configure).await.expect("nodes start");
        let late = nodes.not_ready(WAIT).await;
        assert!(late.is_empty(), "nodes {late:?} never saw a metadata leader");
        Self { nodes, _root: root }
    }

    /// A client that knows only node `id`'s endpoint.
    fn client_of(&self, id: u64) -> Client {
        let mut config = ClientConfig::new([self.nodes.grpc[id as usize - 1].to_string()]);
        config.max_attempts = 40;
        Client::new(config).expect("client")
    }

    fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.nodes.endpoints());
        config.max_attempts = 40;
        Client::new(config).expect("client")
    }

    /// `(log_start, high_watermark)` (record offsets) of node `id`'s replica, read on the node
    /// itself: a fetch at offset 0 answers them, or is refused naming them.
    async fn replica_bounds(&self, id: u64, topic: &str, partition: u32) -> (u64, u64) {
        let cluster = self.nodes.running(id).expect("running").cluster().clone();
        let req = FetchRequest {
            topic: topic.into(),
            partition,
            offset: 0,
            from_index: None,
            max_bytes: 1,
            wait: Duration::ZERO,
            check: shale_storage::ReadCheck::Chain,
        };
        match cluster.fetch(req).await {
            Ok(r) => (r.log_start, r.high_watermark),
            Err(ClusterError::OffsetOutOfRange { start, end, .. }) => (start, end),
            Err(e) => panic!("node {id} cannot read its replica of {topic}/{partition}: {e}"),
        }
    }

    async fn leader(&self, topic: &str, partition: u32) -> u64 {
        let admin = self.client().admin();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = admin.describe_topic(topic).await.expect("describe").partitions[partition as usize].leader_id;
            if leader != 0 {
                return leader;
            }
            assert!(tokio::time::Instant::now() < deadline, "{topic}/{partition} has no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An acknowledged record: where, its chain hash and its value.
#[derive(Clone, Debug)]
struct Acked {
    offset: u64,
    chain_hash: ChainHash,
    entry_index: u64,
    value: Bytes,
}

fn big_value(i: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; BIG_RECORD_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(v)
}

/// Writes [`BIG_RECORDS`] records to `topic`/0 (one partition, three replicas, keep-all).
async fn write_big(c: &Cluster, topic: &str) -> Vec<Acked> {
    c.client().admin().create_topic(NewTopic::new(topic, 1, 3)).await.expect("create topic");
    let producer = c.client().producer(ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..BIG_RECORDS {
        let value = big_value(i);
        let meta =
            producer.send_and_wait(ProducerRecord::new(topic, value.clone()).partition(0)).await.expect("acknowledged");
        acked.push(Acked { offset: meta.offset, chain_hash: meta.chain_hash, entry_index: meta.entry_index, value });
    }
    producer.close().await.expect("producer closes");
    acked
}

/// Cuts the start of `node`'s replica of `topic`/0 (retention on that replica alone, through the
/// cluster's own Compact); the topic is keep-all again afterwards. Returns the new log start.
async fn cut_replica(c: &Cluster, topic: &str, node: u64) -> u64 {
    let admin = c.client().admin();
    admin
        .alter_topic(proto::AlterTopicRequest { name: topic.into(), retention_bytes: Some(1), ..Default::default() })
        .await
        .expect("limit retention");
    // Compact snapshots first; the purge that lets retention remove the sealed segment may land
    // just after the call's retention pass, so compact again until the start moved.
    let node_admin = c.client_of(node).admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    let compacted = loop {
        let compacted = node_admin.compact(topic, Some(0)).await.expect("compact one replica");
        if compacted.first().is_some_and(|p| p.log_start_after > 0) || tokio::time::Instant::now() >= deadline {
            break compacted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    admin
        .alter_topic(proto::AlterTopicRequest { name: topic.into(), clear_retention_bytes: true, ..Default::default() })
        .await
        .expect("keep all again");
    assert_eq!(compacted.len(), 1, "{compacted:?}");
    assert!(compacted[0].log_start_after > 0, "compacting node {node} removed nothing: {compacted:?}");
    // The compaction speaks log indexes; the replica's first record offset is what reads see.
    let start = c.replica_bounds(node, topic, 0).await.0;
    assert!(start > 0, "node {node} still holds offset 0 after removing entries: {compacted:?}");
    start
}

/// Waits until every replica has applied up to `end`.
async fn converged(c: &Cluster, topic: &str, end: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in 1..=3 {
        while c.replica_bounds(id, topic, 0).await.1 < end {
            assert!(tokio::time::Instant::now() < deadline, "node {id} never applied every record");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls until the consumer's position on `topic`/0 reaches `end`; every record returned.
async fn read_to(consumer: &mut shale_client::Consumer, topic: &str, end: u64) -> Vec<ConsumedRecord> {
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while consumer.position(topic, 0).is_none_or(|p| p < end) {
        assert!(tokio::time::Instant::now() < deadline, "read stopped at {:?}, end {end}", consumer.position(topic, 0));
        read.extend(consumer.poll().await.expect("poll"));
    }
    read
}

/// Every acknowledged record read exactly once, in order, with its acknowledged hash and value.
#[track_caller]
fn assert_all_read(read: &[ConsumedRecord], acked: &[Acked]) {
    let offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
    let expected: Vec<u64> = acked.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, expected, "the consumer read other offsets than were acknowledged");
    for (r, a) in read.iter().zip(acked) {
        assert_eq!(r.chain_hash, Some(a.chain_hash), "chain hash at {}", a.offset);
        assert_eq!(r.entry_index, a.entry_index, "log entry of {}", a.offset);
        assert_eq!(r.value, a.value, "value at {}", a.offset);
    }
}

fn consumer_config(offset_reset: OffsetReset) -> ConsumerConfig {
    ConsumerConfig { max_wait_ms: 100, offset_reset, ..ConsumerConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_below_one_replicas_start_come_from_the_others_and_nothing_is_skipped() {
    let c = Cluster::start(in_memory).await;
    let acked = write_big(&c, "cut").await;
    let end = acked.last().unwrap().offset + 1;
    converged(&c, "cut", end).await;
    let leader = c.leader("cut", 0).await;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let cut_start = cut_replica(&c, "cut", cut).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != cut).collect();
    let mut starts = Vec::new();
    for id in &others {
        starts.push(c.replica_bounds(*id, "cut", 0).await.0);
    }
    assert!(starts.contains(&0), "another replica still starts at 0: {starts:?}");
    assert!(acked[0].offset < cut_start, "records {} .. {cut_start} are on the other replicas only", acked[0].offset);

    // The cut replica itself answers OUT_OF_RANGE naming its own start and end, itself, and the
    // partition's replicas.
    let mut raw = proto::fetch_client::FetchClient::connect(format!("http://{}", c.nodes.grpc[cut as usize - 1]))
        .await
        .expect("connect");
    let status = raw
        .fetch(proto::FetchRequest {
            topic: "cut".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1,
            max_wait_ms: 0,
            from_index: None,
            client_checks_chain: false,
        })
        .await
        .expect_err("offset 0 is below the cut replica's start");
    match ClientError::from_status(status) {
        ClientError::OffsetOutOfRange { log_start, log_end, replica, replicas, .. } => {
            assert_eq!((log_start, replica), (cut_start, Some(cut)));
            assert!(log_end >= end, "{log_end}");
            let ids: BTreeSet<u64> = replicas.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, BTreeSet::from([1, 2, 3]), "{replicas:?}");
        }
        other => panic!("expected OUT_OF_RANGE, got {other:?}"),
    }

    // An explicit offset 0 through the cut replica's endpoint alone: every record, from the
    // replicas that still hold them, then the rest.
    let client = c.client_of(cut);
    let mut consumer = client.consumer(consumer_config(OffsetReset::Earliest));
    consumer.seek("cut", 0, 0);
    let read = read_to(&mut consumer, "cut", end).await;
    assert_all_read(&read, &acked);

    // "From the beginning" (no position, earliest) is the partition's start, not the cut
    // replica's.
    let mut consumer = client.consumer(consumer_config(OffsetReset::Earliest));
    consumer.assign("cut", [0]);
    let read = read_to(&mut consumer, "cut", end).await;
    assert_all_read(&read, &acked);

    // A subscription from offset 0 through the cut replica streams every record too.
    let stream = client.consumer(consumer_config(OffsetReset::Earliest)).stream("cut", 0, 0);
    futures::pin_mut!(stream);
    let mut streamed = Vec::new();
    while streamed.len() < acked.len() {
        let next = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut stream)).await.expect("streams in time");
        streamed.push(next.expect("stream open").expect("record"));
    }
    assert_all_read(&streamed, &acked);

    // Past the end: a typed OUT_OF_RANGE naming the partition's end; the position stays put.
    let mut consumer = client.consumer(consumer_config(OffsetReset::Earliest));
    consumer.seek("cut", 0, end + 5_000);
    match consumer.poll().await {
        Err(ClientError::OffsetOutOfRange { log_end, .. }) => assert!(log_end >= end, "{log_end}"),
        other => panic!("expected OUT_OF_RANGE past the end, got {other:?}"),
    }
    assert_eq!(consumer.position("cut", 0), Some(end + 5_000), "a position is never moved without a reset policy");
    drop(c.nodes.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offset_no_replica_holds_is_a_typed_error_unless_a_reset_was_chosen() {
    let c = Cluster::start(in_memory).await;
    let acked = write_big(&c, "gone").await;
    let end = acked.last().unwrap().offset + 1;
    converged(&c, "gone", end).await;
    let mut starts = BTreeMap::new();
    for id in 1..=3 {
        starts.insert(id, cut_replica(&c, "gone", id).await);
    }
    let lowest = *starts.values().min().unwrap();
    for id in 1..=3 {
        let client = c.client_of(id);
        // The default for a position no replica holds is an error naming the partition's range.
        let mut consumer = client.consumer(consumer_config(OffsetReset::Earliest));
        consumer.seek("gone", 0, 0);
        match consumer.poll().await {
            Err(ClientError::OffsetOutOfRange { log_start, log_end, replica: None, message, .. }) => {
                assert_eq!(log_start, lowest, "the partition's start is the lowest replica start: {message}");
                assert!(log_end >= end, "{log_end}");
                assert!(message.contains("no replica"), "{message}");
            }
            other => panic!("expected OUT_OF_RANGE from node {id}'s endpoint, got {other:?}"),
        }
        assert_eq!(consumer.position("gone", 0), Some(0), "not moved");

        // An explicit reset policy moves it to the partition's start, and reading goes on from there.
        let mut consumer = client.consumer(ConsumerConfig {
            reset_out_of_range: OffsetReset::Earliest,
            ..consumer_config(OffsetReset::Earliest)
        });
        consumer.seek("gone", 0, 0);
        let read = read_to(&mut consumer, "gone", end).await;
        let kept: Vec<Acked> = acked.iter().filter(|a| a.offset >= lowest).cloned().collect();
        assert_all_read(&read, &kept);
    }
    drop(c.nodes.shutdown().await);
}

/// Disk storage (nodes restart with their data) and a short shutdown grace, so a stop cuts the
/// requests still in flight on the stopping node.
fn quick_stop(c: &mut NodeConfig) {
    c.shutdown_grace_ms = 300;
}

type Delivery = (u32, Result<shale_client::RecordMetadata, ClientError>);

/// Receives deliveries until `results` holds `n`.
async fn recv(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Delivery>, results: &mut Vec<Delivery>, n: usize) {
    while results.len() < n {
        let r = tokio::time::timeout(WAIT, rx.recv()).await.expect("acks flow").expect("producer alive");
        results.push(r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_producer_rides_through_node_stops_with_every_record_acknowledged_once() {
    let mut c = Cluster::start(quick_stop).await;
    c.client().admin().create_topic(NewTopic::new("ride", 2, 3)).await.expect("create topic");
    // A short request timeout: while no quorum can commit, each attempt ends with the server's
    // `Cancelled: Timeout expired`; the budget (60 attempts, backoff up to 1 s) outlasts the outage.
    let mut config = ClientConfig::new(c.nodes.endpoints());
    config.request_timeout_ms = 500;
    config.max_attempts = 60;
    let client = Client::new(config).expect("client");
    client.partition_count("ride").await.expect("topic known");
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    const TOTAL: u32 = 600;
    let producing = tokio::spawn(async move {
        let producer = client.producer(ProducerConfig { linger_ms: 1, ..ProducerConfig::default() });
        let mut pending = std::collections::VecDeque::new();
        for i in 0..TOTAL {
            let record = ProducerRecord::new("ride", format!("r{i}")).partition(i % 2);
            pending.push_back((i, producer.send(record).await.expect("queued")));
            // A few records in flight at a time, so the faults land mid-batch.
            while pending.len() > 8 {
                let (i, delivery) = pending.pop_front().unwrap();
                let _ = acked_tx.send((i, delivery.await));
            }
        }
        for (i, delivery) in pending {
            let _ = acked_tx.send((i, delivery.await));
        }
        producer.close().await
    });
    let mut results = Vec::new();
    // 1. Stop the leader of partition 0 gracefully (as SIGTERM) mid-loop, then bring it back.
    recv(&mut acked_rx, &mut results, 100).await;
    let first = c.leader("ride", 0).await;
    c.nodes.stop(first).await.expect("clean stop");
    recv(&mut acked_rx, &mut results, 250).await;
    c.nodes.restart(first).await.expect("restart");
    recv(&mut acked_rx, &mut results, 350).await;
    // 2. Take the quorum away (stop both followers of partition 0) for longer than several
    //    request timeouts, then restore it.
    let leader = c.leader("ride", 0).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        c.nodes.stop(*id).await.expect("clean stop");
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    for id in &followers {
        c.nodes.restart(*id).await.expect("restart");
    }
    recv(&mut acked_rx, &mut results, TOTAL as usize).await;
    producing.await.unwrap().expect("producer closes cleanly");

    // No error reached the caller: each failure was retried within the attempt budget.
    let failed: Vec<_> = results.iter().filter_map(|(i, r)| r.as_ref().err().map(|e| (*i, e.to_string()))).collect();
    assert!(failed.is_empty(), "{} records failed, first: {:?}", failed.len(), failed.first());
    let mut by_partition: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for (i, r) in &results {
        let meta = r.as_ref().unwrap();
        by_partition.entry(meta.partition).or_default().push((meta.offset, *i));
    }
    // Each record is in the log exactly once, at its acknowledged offset (a retried batch was
    // not written twice), and offsets were never reused.
    let client = c.client();
    for (partition, mut acks) in by_partition {
        acks.sort_unstable();
        let offsets: BTreeSet<u64> = acks.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets.len(), acks.len(), "two records acknowledged at one offset in partition {partition}");
        let end = acks.last().unwrap().0 + 1;
        let mut consumer = client.consumer(consumer_config(OffsetReset::Earliest));
        consumer.assign("ride", [partition]);
        let mut read = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while consumer.position("ride", partition).is_none_or(|p| p < end) {
            assert!(tokio::time::Instant::now() < deadline, "partition {partition} read stopped");
            read.extend(consumer.poll().await.expect("poll"));
        }
        let log: Vec<(u64, String)> = read
            .iter()
            .filter(|r| r.offset < end)
            .map(|r| (r.offset, String::from_utf8_lossy(&r.value).into_owned()))
            .collect();
        let expected: Vec<(u64, String)> = acks.iter().map(|(o, i)| (*o, format!("r{i}"))).collect();
        assert_eq!(log, expected, "partition {partition}: the log holds exactly the acknowledged records");
    }
    drop(c.nodes.shutdown().await);
}

/// Fetches answered by the cluster so far (every node's `shale_fetch_requests_total`).
async fn fetches_served(c: &Cluster) -> u64 {
    let mut total = 0;
    for addr in &c.nodes.http {
        total += common::metric(*addr, "shale_fetch_requests_total").await.expect("the fetch counter is exported");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poll_reads_ahead_but_positions_seeks_and_reads_follow_only_what_poll_returned() {
    const RECORDS: usize = 300;
    let c = Cluster::start(in_memory).await;
    c.client().admin().create_topic(NewTopic::new("ahead", 1, 3)).await.expect("create topic");
    let producer = c.client().producer(ProducerConfig::default());
    let mut acked = Vec::new();
    for i in 0..RECORDS {
        let value = Bytes::from(vec![(i % 251) as u8; 1024]);
        let meta = producer.send_and_wait(ProducerRecord::new("ahead", value.clone()).partition(0)).await.expect("ack");
        acked.push(Acked { offset: meta.offset, chain_hash: meta.chain_hash, entry_index: meta.entry_index, value });
    }
    producer.close().await.expect("producer closes");
    let end = acked.last().unwrap().offset + 1;
    converged(&c, "ahead", end).await;

    // A client that knows only the leader, so every fetch is served where it is sent (a forwarded
    // one would be counted twice).
    let leader = c.leader("ahead", 0).await;
    let mut consumer = c.client_of(leader).consumer(config_small());
    consumer.seek("ahead", 0, 0);
    let before = fetches_served(&c).await;
    let first = consumer.poll().await.expect("poll");
    assert!(!first.is_empty() && (first.len() as u64) < end, "one small answer: {} records", first.len());
    let returned = first.last().unwrap().offset + 1;
    assert_eq!(consumer.position("ahead", 0), Some(returned), "the position is past what poll returned");

    // The next answer is fetched while the caller holds this one: one more fetch is served
    // without another poll, and the position does not move with it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while fetches_served(&c).await < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no fetch ahead of the next poll");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(consumer.position("ahead", 0), Some(returned), "a fetch ahead does not move the position");

    // A seek drops what was fetched ahead: reading goes on from the sought offset.
    let sought = 5;
    consumer.seek("ahead", 0, sought);
    let read = read_to(&mut consumer, "ahead", end).await;
    assert_all_read(&read, &acked[sought as usize..]);

    // Polled to the end in small answers (a fetch ahead after each), every record came once, in order.
    let mut consumer = c.client().consumer(config_small());
    consumer.seek("ahead", 0, 0);
    let read = read_to(&mut consumer, "ahead", end).await;
    assert_all_read(&read, &acked);

    // With no room for reading ahead, a poll is one fetch and nothing follows it.
    let mut consumer = c.client_of(leader).consumer(ConsumerConfig { prefetch_max_bytes: 0, ..config_small() });
    consumer.seek("ahead", 0, 0);
    let before = fetches_served(&c).await;
    let mut read = consumer.poll().await.expect("poll");
    assert!(!read.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetches_served(&c).await, before + 1, "a fetch ahead beyond prefetch_max_bytes");
    read.extend(read_to(&mut consumer, "ahead", end).await);
    assert_all_read(&read, &acked);
    drop(c.nodes.shutdown().await);
}

/// Small fetches: one answer holds a few records of a partition, so more remain after it.
fn config_small() -> ConsumerConfig {
    ConsumerConfig { max_bytes: 8 * 1024, ..consumer_config(OffsetReset::Earliest) }
}

/// Produce requests, AppendEntries and fetch answers larger than one HTTP/2 frame (1 MiB,
/// `shale_raft::server::HTTP2_MAX_FRAME_BYTES`; a record is at most `max_record_bytes`, also
/// 1 MiB, so a batch of several large records is what spans frames) go whole: each replica, read
/// on its own, ends at the chain hash the last record was acknowledged with, and a consumer reads
/// every value back with its acknowledged hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_larger_than_an_http2_frame_are_produced_replicated_and_read_whole() {
    let c = Cluster::start(in_memory).await;
    c.client().admin().create_topic(NewTopic::new("frames", 1, 3)).await.expect("create topic");
    let frame = shale_raft::server::HTTP2_MAX_FRAME_BYTES as usize;
    let sizes = [frame - 64, 1, 900_000, frame - 1, 700_000, 100_000, frame - 300, 3];
    // Batches of up to 4 MiB: the first record goes alone, the rest fill one batch while it is
    // in flight.
    let config = ProducerConfig { batch_max_bytes: 4 * frame, ..ProducerConfig::default() };
    let producer = c.client().producer(config);
    let mut deliveries = Vec::new();
    let mut values = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let value = Bytes::from((0..*size).map(|b| (b % 253) as u8 ^ i as u8).collect::<Vec<u8>>());
        deliveries
            .push(producer.send(ProducerRecord::new("frames", value.clone()).partition(0)).await.expect("queued"));
        values.push(value);
    }
    let mut acked = Vec::new();
    for ((delivery, value), size) in deliveries.into_iter().zip(values).zip(sizes) {
        let meta = delivery.await.unwrap_or_else(|e| panic!("record of {size} bytes: {e}"));
        acked.push(Acked { offset: meta.offset, chain_hash: meta.chain_hash, entry_index: meta.entry_index, value });
    }
    producer.close().await.expect("producer closes");
    let entries: BTreeSet<u64> = acked.iter().map(|a| a.entry_index).collect();
    assert!(entries.len() < sizes.len(), "no batch held several records: {entries:?}");
    let last = acked.last().unwrap().clone();
    converged(&c, "frames", last.offset + 1).await;
    for id in 1..=3 {
        let cluster = c.nodes.running(id).expect("running").cluster().clone();
        let read = cluster
            .fetch(FetchRequest {
                topic: "frames".into(),
                partition: 0,
                offset: last.offset,
                from_index: None,
                max_bytes: 1,
                wait: Duration::ZERO,
                check: shale_storage::ReadCheck::Chain,
            })
            .await
            .unwrap_or_else(|e| panic!("node {id} reads its replica: {e}"));
        assert_eq!(read.last_chain_hash, Some(last.chain_hash), "node {id}'s replica ends at another chain hash");
    }
    let mut consumer = c.client().consumer(consumer_config(OffsetReset::Earliest));
    consumer.seek("frames", 0, 0);
    let read = read_to(&mut consumer, "frames", last.offset + 1).await;
    assert_all_read(&read, &acked);
    drop(c.nodes.shutdown().await);
}
