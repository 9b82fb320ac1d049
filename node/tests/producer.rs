//! The producer against a 3-node cluster in process: it sends to partition leaders (no node
//! forwards its requests once it knows them), pipelines batches, and keeps each partition's
//! records in send order, each written once, while leadership moves under it.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{TestCluster, WAIT, create_topic, http_get, metric, partition_leader, produce_raw, read_through};
use parking_lot::Mutex;
use shale_client::{ErrorCode, ProducerConfig, ProducerRecord, proto};

/// Requests of `rpc` (e.g. `Produce`) the running nodes forwarded to another node.
async fn forwarded(c: &TestCluster, rpc: &str) -> u64 {
    let prefix = format!("shale_forwarded_rpc_requests_total{{rpc=\"{rpc}\"}} ");
    let mut total = 0;
    for (i, http) in c.http.iter().enumerate() {
        if c.running(i as u64 + 1).is_none() {
            continue;
        }
        let (code, body) = http_get(*http, "/metrics").await;
        assert_eq!(code, 200, "{body}");
        total += body.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse::<u64>().expect("count"));
    }
    total
}

/// The values of records `r{i}`, as the numbers `i`.
fn numbers(records: &[shale_client::ConsumedRecord]) -> Vec<u32> {
    records
        .iter()
        .map(|r| std::str::from_utf8(&r.value).ok().and_then(|v| v.strip_prefix('r')?.parse().ok()).expect("r{i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_and_consumer_go_to_partition_leaders_so_nothing_is_forwarded() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "direct", 3).await;
    for p in 0..3 {
        partition_leader(&c, "direct", p).await;
    }
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..300u32 {
        deliveries.push(producer.send(ProducerRecord::new("direct", format!("r{i}")).partition(i % 3)).await.unwrap());
    }
    let mut last = [0u64; 3];
    for (i, d) in deliveries.into_iter().enumerate() {
        let ack = d.await.expect("acknowledged");
        last[i % 3] = last[i % 3].max(ack.offset);
    }
    for p in 0..3u32 {
        let leader = partition_leader(&c, "direct", p).await;
        // The cache holds the leader, or nothing when its last refresh caught the partition
        // between leaders (a preferred-leader transfer); never another node.
        let cached = client.cached_leader("direct", p);
        assert!(
            cached.is_none() || cached == Some(c.grpc[leader as usize - 1].to_string()),
            "partition {p}: cached {cached:?}, leader {leader}"
        );
        let read = read_through(&client, "direct", p, 0, last[p as usize]).await;
        assert_eq!(numbers(&read), (0..300).filter(|i| i % 3 == p).collect::<Vec<_>>(), "partition {p}");
    }
    assert_eq!(forwarded(&c, "Produce").await, 0, "a node forwarded a produce request");
    assert_eq!(forwarded(&c, "Fetch").await, 0, "a node forwarded a fetch request");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_record_is_sent_at_once_whatever_the_linger() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "lone", 1).await;
    let client = c.client();
    // An hour's linger: a record that waited for it would time out here.
    let producer = client.producer(ProducerConfig { linger_ms: 3_600_000, ..ProducerConfig::default() });
    for i in 0..3 {
        let record = ProducerRecord::new("lone", format!("r{i}")).partition(0);
        let ack = tokio::time::timeout(WAIT, producer.send_and_wait(record)).await.expect("sent without lingering");
        ack.expect("acknowledged");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_that_skips_sequences_is_refused_and_written_after_the_one_it_overtook() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "gaps", 1).await;
    let client = c.client();
    let batch = |base: u64, name: &str| proto::ProduceRequest {
        topic: "gaps".into(),
        partition: 0,
        records: (0..3)
            .map(|i| proto::Record { value: Bytes::from(format!("{name}{i}")), ..Default::default() })
            .collect(),
        producer: Some(proto::ProducerIdentity { producer_id: 31, base_sequence: base }),
    };
    let a = produce_raw(&c, &client, &batch(0, "a")).await.expect("first batch");
    // The third batch arrives before the second: refused, nothing written.
    let err = produce_raw(&c, &client, &batch(6, "c")).await.expect_err("a gap is refused");
    assert_eq!(err.code(), Some(ErrorCode::SequenceGap), "{err:?}");
    let b = produce_raw(&c, &client, &batch(3, "b")).await.expect("second batch");
    let c3 = produce_raw(&c, &client, &batch(6, "c")).await.expect("third batch, after the second");
    // A retry of the second is recognised: its original offsets, written once.
    assert_eq!(produce_raw(&c, &client, &batch(3, "b")).await.expect("retry").batches, b.batches);
    // One stored batch each, at dense offsets from 0 (nothing of the refused attempt took any).
    let stored = |r: &proto::ProduceResponse| {
        assert_eq!(r.batches.len(), 1, "{r:?}");
        (r.batches[0].base_offset, r.batches[0].record_count)
    };
    assert_eq!((stored(&a), stored(&b), stored(&c3)), ((0, 3), (3, 3), (6, 3)));
    assert!(
        a.batches[0].entry_index < b.batches[0].entry_index && b.batches[0].entry_index < c3.batches[0].entry_index
    );
    let last = 8;
    let read = read_through(&client, "gaps", 0, 0, last).await;
    let values: Vec<&[u8]> = read.iter().map(|r| r.value.as_ref()).collect();
    let expected: Vec<String> = ["a", "b", "c"].iter().flat_map(|n| (0..3).map(move |i| format!("{n}{i}"))).collect();
    assert_eq!(values, expected.iter().map(String::as_bytes).collect::<Vec<_>>());
    c.shutdown().await;
}

/// `(i, offset)` of every record `r{i}` acknowledged so far.
type Acked = Arc<Mutex<Vec<(u32, u64)>>>;

/// Sends `r0..r{n}` to partition 0 of `topic` with five small batches in flight, from a task;
/// answers `(i, offset)` of every acknowledged record and the count of failed ones as they come.
fn produce_in_background(
    client: shale_client::Client,
    topic: &'static str,
    n: u32,
) -> (Acked, tokio::task::JoinHandle<u32>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let config = ProducerConfig {
        batch_max_records: 8,
        linger_ms: 2,
        max_in_flight: 5,
        max_buffered_records: 100,
        ..ProducerConfig::default()
    };
    let producer = Arc::new(client.producer(config));
    let acks = acked.clone();
    let task = tokio::spawn(async move {
        let mut waits = Vec::new();
        for i in 0..n {
            let delivery =
                producer.send(ProducerRecord::new(topic, format!("r{i}")).partition(0)).await.expect("queued");
            let acks = acks.clone();
            waits.push(tokio::spawn(async move {
                match delivery.await {
                    Ok(meta) => {
                        acks.lock().push((i, meta.offset));
                        0
                    }
                    Err(_) => 1,
                }
            }));
        }
        let mut failed = 0;
        for w in waits {
            failed += w.await.expect("delivery task");
        }
        failed
    });
    (acked, task)
}

/// What was read of partition 0 is every acknowledged record once, at its offset, and all records
/// in send order (no duplicate, no reordering).
fn check_order(read: &[shale_client::ConsumedRecord], acked: &[(u32, u64)]) {
    let got = numbers(read);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "records out of send order or written twice: {got:?}");
    for (i, offset) in acked {
        let r = read.iter().find(|r| r.offset == *offset).unwrap_or_else(|| panic!("record {i} at {offset} lost"));
        assert_eq!(r.value, Bytes::from(format!("r{i}")), "record at {offset}");
    }
}

/// Waits until `n` records are acknowledged.
async fn wait_acked(acked: &Mutex<Vec<(u32, u64)>>, n: usize) {
    common::wait_until(&format!("{n} acknowledgements"), || acked.lock().len() >= n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_batches_stay_in_send_order_while_leadership_moves() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "moving", 1).await;
    let mut leader = partition_leader(&c, "moving", 0).await;
    let n = 1_500;
    let (acked, producing) = produce_in_background(c.client(), "moving", n);
    let admin = c.client().admin();
    for step in 1..=3 {
        wait_acked(&acked, step * 300).await;
        let to = leader % 3 + 1;
        leader = admin.transfer_leader("moving", 0, to).await.expect("transfer");
    }
    let failed = tokio::time::timeout(WAIT * 2, producing).await.expect("producer done").expect("producer task");
    assert_eq!(failed, 0, "records failed although every call retried until a leader answered");
    let acked = acked.lock().clone();
    assert_eq!(acked.len(), n as usize);
    let last = acked.iter().map(|(_, o)| *o).max().expect("acks");
    let read = read_through(&c.client(), "moving", 0, 0, last).await;
    check_order(&read, &acked);
    assert_eq!(read.len(), n as usize, "every record once");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_batches_stay_in_send_order_when_the_leader_is_stopped_mid_produce() {
    let mut c = TestCluster::start(3).await;
    create_topic(&c, "stopped", 1).await;
    let leader = partition_leader(&c, "stopped", 0).await;
    let (acked, producing) = produce_in_background(c.client(), "stopped", 1_000);
    wait_acked(&acked, 200).await;
    c.stop(leader).await;
    let failed = tokio::time::timeout(WAIT * 2, producing).await.expect("producer done").expect("producer task");
    let acked = acked.lock().clone();
    assert!(acked.len() > 200, "nothing was acknowledged after the leader stopped ({failed} failed)");
    let survivor = (1..=3).find(|id| *id != leader).expect("a survivor");
    let last = acked.iter().map(|(_, o)| *o).max().expect("acks");
    let read = read_through(&c.client_of(survivor), "stopped", 0, 0, last).await;
    check_order(&read, &acked);
    c.shutdown().await;
}

/// One record for partition 0 of `topic`.
fn one_record(topic: &str, value: &str) -> proto::ProduceRequest {
    proto::ProduceRequest {
        topic: topic.into(),
        partition: 0,
        records: vec![proto::Record { value: Bytes::from(value.to_string()), ..Default::default() }],
        producer: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_produce_stream_answers_each_request_under_its_id_and_a_refusal_ends_only_that_request() {
    use shale_client::proto::produce_client::ProduceClient;
    use tokio_stream::StreamExt;

    let c = TestCluster::start(3).await;
    create_topic(&c, "streamed", 1).await;
    let leader = partition_leader(&c, "streamed", 0).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let client = c.client();
    let open = |node: u64, requests: Vec<proto::ProduceStreamRequest>| {
        let ch = client.channel(&c.grpc[node as usize - 1].to_string()).expect("channel");
        async move {
            let answers = ProduceClient::new(ch)
                .produce_stream(tokio_stream::iter(requests))
                .await
                .expect("the call opens")
                .into_inner();
            // The requests end with the iterator, so the answers end once each is answered.
            let answers: Vec<proto::ProduceStreamResponse> =
                tokio::time::timeout(WAIT, answers.map(|a| a.expect("an answer, not a broken call")).collect())
                    .await
                    .expect("every request answered");
            answers.into_iter().map(|a| (a.id, a)).collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    // At a follower: a request to be answered there is refused NOT_LEADER naming the leader (what
    // a client redirects on), one without its request INVALID_ARGUMENT, and one that may be
    // forwarded is written by the leader; each under its own id, on one call.
    let answers = open(
        follower,
        vec![
            proto::ProduceStreamRequest { id: 10, request: Some(one_record("streamed", "r0")), answer_here: true },
            proto::ProduceStreamRequest { id: 11, request: None, answer_here: false },
            proto::ProduceStreamRequest { id: 12, request: Some(one_record("streamed", "r0")), answer_here: false },
        ],
    )
    .await;
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), vec![10, 11, 12], "one answer per request");
    let refused = answers[&10].error.as_ref().expect("refused at a follower");
    assert!(answers[&10].response.is_none());
    assert_eq!(refused.metadata.get(shale_client::meta::ERROR_CODE).map(String::as_str), Some("NOT_LEADER"));
    assert_eq!(
        refused.metadata.get(shale_client::meta::LEADER_ADDR),
        Some(&c.grpc[leader as usize - 1].to_string()),
        "the refusal names the leader's client address"
    );
    assert_eq!(answers[&11].error.as_ref().map(|e| e.code), Some(tonic::Code::InvalidArgument as i32));
    let forwarded = answers[&12]
        .response
        .as_ref()
        .unwrap_or_else(|| panic!("forwarded and written, not refused: {:?}", answers[&12].error));
    assert_eq!((forwarded.batches[0].base_offset, forwarded.batches[0].record_count), (0, 1));

    // At the leader: pipelined batches of an idempotent producer, each answered under its id and
    // written in sequence order.
    let requests = (1..=5u64)
        .map(|id| proto::ProduceStreamRequest {
            id: 100 + id,
            request: Some(proto::ProduceRequest {
                producer: Some(proto::ProducerIdentity { producer_id: 77, base_sequence: id - 1 }),
                ..one_record("streamed", &format!("r{id}"))
            }),
            answer_here: true,
        })
        .collect();
    let answers = open(leader, requests).await;
    let offsets: Vec<(u64, u64)> =
        answers.iter().map(|(id, a)| (*id, a.response.as_ref().expect("written").batches[0].base_offset)).collect();
    assert_eq!(offsets, vec![(101, 1), (102, 2), (103, 3), (104, 4), (105, 5)], "written in sequence order");
    let read = read_through(&client, "streamed", 0, 0, 5).await;
    assert_eq!(numbers(&read), vec![0, 1, 2, 3, 4, 5]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_to_a_replica_whose_group_is_still_starting_waits_for_it_instead_of_naming_itself_leader() {
    use shale_client::proto::produce_client::ProduceClient;

    let c = TestCluster::start(3).await;
    for id in 1..=3 {
        c.running(id).expect("running").cluster().hold_partition_starts(true);
    }
    // The topic is created (the metadata committed), its groups not started anywhere: the
    // cluster names the first replica, which does not run the group yet.
    create_topic(&c, "starting", 1).await;
    let described = c.client().admin().describe_topic("starting").await.expect("describe");
    let first = described.partitions[0].replicas[0];
    assert_eq!(described.partitions[0].leader_id, first, "the first replica is named before an election");
    let ch = c.client().channel(&c.grpc[first as usize - 1].to_string()).expect("channel");
    // Marked to be answered there, as a client sends to the leader it was told of.
    let request = proto::ProduceStreamRequest { id: 1, request: Some(one_record("starting", "r0")), answer_here: true };
    let answer = tokio::spawn(async move {
        let mut answers = ProduceClient::new(ch)
            .produce_stream(tokio_stream::iter(vec![request]))
            .await
            .expect("the call opens")
            .into_inner();
        answers.message().await.expect("an answer, not a broken call").expect("one answer")
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!answer.is_finished(), "answered before the group started (before: NOT_LEADER naming node {first} itself)");

    for id in 1..=3 {
        c.running(id).expect("running").cluster().hold_partition_starts(false);
    }
    let answer = tokio::time::timeout(WAIT, answer).await.expect("answered once the group runs").expect("task");
    assert_eq!(answer.id, 1);
    match (&answer.response, &answer.error) {
        // The first replica starts the group's first election, and almost always wins it.
        (Some(written), None) => assert_eq!((written.batches[0].base_offset, written.batches[0].record_count), (0, 1)),
        // Or another replica won: then it is named, and leads.
        (None, Some(refused)) => {
            let named = refused.metadata.get(shale_client::meta::LEADER_ID).expect("the refusal names the leader");
            assert_ne!(named, &first.to_string(), "refused naming itself: {refused:?}");
            assert_eq!(named, &partition_leader(&c, "starting", 0).await.to_string());
        }
        other => panic!("neither written nor refused: {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_keeps_one_produce_call_per_node_and_a_dropped_client_closes_it() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "calls", 3).await;
    let open_calls = || async {
        let mut total = 0;
        for http in &c.http {
            total += metric(*http, "shale_produce_calls_open").await.expect("the gauge is exported");
        }
        total
    };
    assert_eq!(open_calls().await, 0);
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..60u32 {
        producer.send_and_wait(ProducerRecord::new("calls", format!("r{i}")).partition(i % 3)).await.expect("acked");
    }
    // At most one call per node (three), however many batches went (sixty, one after another).
    let open = open_calls().await;
    assert!((1..=3).contains(&open), "{open} produce calls open for sixty batches");
    // Dropped with its client: the requests end, so the nodes end the calls.
    drop(producer);
    drop(client);
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_calls().await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "produce calls left open after the client was dropped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyless_records_go_to_one_partition_for_a_run_of_full_batches_then_to_the_next() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "sticky", 4).await;
    for p in 0..4 {
        partition_leader(&c, "sticky", p).await;
    }
    let client = c.client();
    // Runs of two batches of at most 10 records: 20 records to a partition, then the next one.
    let config = ProducerConfig { batch_max_records: 10, keyless_run_batches: 2, ..ProducerConfig::default() };
    let producer = client.producer(config);
    let mut deliveries = Vec::new();
    for i in 0..100u32 {
        deliveries.push(producer.send(ProducerRecord::new("sticky", format!("r{i}"))).await.expect("queued"));
    }
    let mut acks = Vec::new();
    for d in deliveries {
        acks.push(d.await.expect("acknowledged"));
    }
    let first = acks[0].partition;
    let run_of = |i: u32| (first + i / 20) % 4;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack.partition, run_of(i as u32), "r{i}: runs of 20 go to the partitions in turn");
        assert!(ack.position < 10, "r{i} at position {} of a batch of at most 10 records", ack.position);
    }
    assert!(acks.iter().any(|a| a.position > 0), "records of a run were gathered into batches");
    // Every partition holds its runs' records, in send order, at dense offsets from 0; five runs
    // over four partitions: the first partition got two.
    for p in 0..4u32 {
        let expected: Vec<u32> = (0..100u32).filter(|&i| run_of(i) == p).collect();
        assert_eq!(expected.len(), if p == first { 40 } else { 20 });
        let read = read_through(&client, "sticky", p, 0, expected.len() as u64 - 1).await;
        assert_eq!(numbers(&read), expected, "partition {p}");
        assert!(read.iter().enumerate().all(|(k, r)| r.offset == k as u64), "partition {p}: offsets dense from 0");
    }
}
