//! Whole-node tests: a 3-node cluster in process, driven through the Rust client.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, WAIT, consumer_config, create_topic, http_get, partition_leader, produce_raw, wait_until};
use shale_client::admin::NewTopic;
use shale_client::proto;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{ClientError, ErrorCode, ProducerConfig, ProducerRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_consume_round_trip_keeps_keys_headers_order_and_hashes() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "orders", 3).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    let mut acks = Vec::new();
    let mut pending = Vec::new();
    for i in 0..60u32 {
        let record = ProducerRecord::new("orders", format!("value-{i}"))
            .key(format!("key-{}", i % 7))
            .header("seq", i.to_string())
            .header("source", "test");
        pending.push((i, producer.send(record).await.expect("queued")));
    }
    for (i, p) in pending {
        acks.push((i, p.await.expect("acknowledged")));
    }
    producer.close().await.unwrap();

    // Same key, same partition; offsets increase per partition in send order.
    let mut by_key: BTreeMap<u32, u32> = BTreeMap::new();
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    for (i, ack) in &acks {
        assert_eq!(*by_key.entry(i % 7).or_insert(ack.partition), ack.partition, "key {} moved", i % 7);
        if let Some(prev) = last_offset.insert(ack.partition, ack.offset) {
            assert!(ack.offset > prev, "offsets go backwards in partition {}", ack.partition);
        }
    }

    let mut consumer = client.consumer(consumer_config(None));
    consumer.subscribe("orders").await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < acks.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} records read", got.len());
        got.extend(consumer.poll().await.unwrap());
    }
    assert_eq!(got.len(), acks.len(), "nothing extra is read");
    for (i, ack) in &acks {
        let r = got
            .iter()
            .find(|r| r.partition == ack.partition && r.offset == ack.offset)
            .unwrap_or_else(|| panic!("record {i} not read back"));
        assert_eq!(r.value, Bytes::from(format!("value-{i}")));
        assert_eq!(r.key.as_deref(), Some(format!("key-{}", i % 7).as_bytes()));
        assert_eq!(r.headers.len(), 2);
        assert_eq!((r.headers[0].key.as_str(), r.headers[0].value.as_ref()), ("seq", i.to_string().as_bytes()));
        assert_eq!(r.chain_hash, Some(ack.chain_hash), "chain hash of record {i}");
        assert_eq!((r.entry_index, r.position), (ack.entry_index, ack.position), "entry of record {i}");
    }
    // Per partition, the read order is the send order.
    for p in 0..3 {
        let seqs: Vec<u32> = got
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| std::str::from_utf8(&r.headers[0].value).unwrap().parse().unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "partition {p} out of order");
    }

    // Replicas agree on the chain hash at the end of every partition.
    for p in 0..3 {
        let v = client.admin().verify("orders", p, None).await.unwrap();
        assert_eq!(v.replicas.len(), 3);
        assert!(v.agree, "replicas disagree: {v:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_retry_is_written_once_and_answers_the_original_offsets() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "idem", 1).await;
    let client = c.client();
    let request = proto::ProduceRequest {
        topic: "idem".into(),
        partition: 0,
        records: (0..3).map(|i| proto::Record { value: Bytes::from(format!("r{i}")), ..Default::default() }).collect(),
        producer: Some(proto::ProducerIdentity { producer_id: 77, base_sequence: 0 }),
    };
    // Send the same batch twice, each time to whichever node takes it (any node forwards to the
    // leader; leadership may still move right after creation, then we try again).
    let first = produce_raw(&c, &client, &request).await.expect("first");
    let retry = produce_raw(&c, &client, &request).await.expect("retry");
    assert_eq!(first.batches, retry.batches, "a retry answers the original batch");
    assert_eq!(first.batches.len(), 1, "three small records are one stored batch");
    let last = first.batches[0].base_offset + u64::from(first.batches[0].record_count) - 1;
    let mut consumer = client.consumer(consumer_config(None));
    consumer.seek("idem", 0, 0);
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while consumer.position("idem", 0).unwrap() <= last {
        assert!(tokio::time::Instant::now() < deadline, "records up to {last} never arrived");
        values.extend(consumer.poll().await.unwrap().into_iter().map(|r| r.value));
    }
    assert_eq!(values, vec!["r0", "r1", "r2"], "each record is stored once");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_wakes_when_a_record_is_committed() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "poll", 1).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    let first = producer.send_and_wait(ProducerRecord::new("poll", "first").partition(0)).await.unwrap();
    let consumer = client.consumer(consumer_config(None));
    // Wait far longer than the test bound: only a wake-up on commit can answer with data in time.
    let waiting = tokio::spawn(async move { consumer.fetch("poll", 0, first.offset + 1, 60_000).await });
    let second = producer.send_and_wait(ProducerRecord::new("poll", "second").partition(0)).await.unwrap();
    let batch = tokio::time::timeout(WAIT, waiting).await.expect("long poll answered").unwrap().unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].offset, second.offset);
    assert_eq!(batch.records[0].value.as_ref(), b"second");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_the_documented_errors() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "limits", 1).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig { idempotent: false, ..ProducerConfig::default() });

    let unknown = producer.send_and_wait(ProducerRecord::new("nope", "x")).await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownTopic), "{unknown:?}");

    let huge = producer.send_and_wait(ProducerRecord::new("limits", vec![0u8; 65 * 1024]).partition(0)).await;
    match huge.unwrap_err() {
        ClientError::Server { code: ErrorCode::RecordTooLarge, limit, .. } => assert_eq!(limit, Some(64 * 1024)),
        other => panic!("expected RECORD_TOO_LARGE, got {other:?}"),
    }

    let ok = producer.send_and_wait(ProducerRecord::new("limits", "fine").partition(0)).await.unwrap();
    let consumer = client.consumer(consumer_config(None));
    match consumer.fetch("limits", 0, ok.offset + 1_000, 0).await.unwrap_err() {
        ClientError::OffsetOutOfRange { log_start, log_end, .. } => {
            assert!(log_start <= ok.offset, "log start {log_start}");
            // Raft's own entries (a new leader's blank entry) may follow the record.
            assert!(log_end > ok.offset && log_end < ok.offset + 1_000, "log end {log_end}, record at {}", ok.offset);
        }
        other => panic!("expected OFFSET_OUT_OF_RANGE, got {other:?}"),
    }
    let bad_partition = consumer.fetch("limits", 9, 0, 0).await.unwrap_err();
    assert_eq!(bad_partition.code(), Some(ErrorCode::UnknownPartition), "{bad_partition:?}");

    let bad_name = client.admin().create_topic(NewTopic::new("bad name!", 1, 1)).await.unwrap_err();
    assert_eq!(bad_name.code(), Some(ErrorCode::InvalidTopicName), "{bad_name:?}");
    let exists = client.admin().create_topic(NewTopic::new("limits", 1, 3)).await.unwrap_err();
    assert_eq!(exists.code(), Some(ErrorCode::TopicExists), "{exists:?}");
    let too_many = client.admin().create_topic(NewTopic::new("wide", 100_000, 3)).await.unwrap_err();
    assert_eq!(too_many.code(), Some(ErrorCode::InvalidConfig), "{too_many:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_forward_to_the_leader() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "fwd", 1).await;
    let leader = partition_leader(&c, "fwd", 0).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    // A client that only knows a follower still produces: it learns the leader from the metadata.
    let client = c.client_of(follower);
    let producer = client.producer(ProducerConfig::default());
    let ack = producer.send_and_wait(ProducerRecord::new("fwd", "via follower").partition(0)).await.unwrap();
    // A follower may lag the leader: long-poll so the read waits until it has applied the record.
    let records = client.consumer(consumer_config(None)).fetch("fwd", 0, ack.offset, 20_000).await.unwrap().records;
    assert_eq!(records[0].value.as_ref(), b"via follower");
    // A request that does not know the leader (a plain gRPC call to the follower) is forwarded.
    let request = proto::ProduceRequest {
        topic: "fwd".into(),
        partition: 0,
        records: vec![proto::Record { value: Bytes::from("forwarded"), ..Default::default() }],
        producer: None,
    };
    let ch = client.channel(&c.grpc[follower as usize - 1].to_string()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let forwarded_ack = loop {
        assert!(tokio::time::Instant::now() < deadline, "the follower never took the request");
        match ProduceClient::new(ch.clone()).produce(request.clone()).await {
            Ok(r) => break r.into_inner().batches[0].base_offset,
            // Leadership may move right after creation; the follower then answers until it knows.
            Err(status) => {
                assert!(ClientError::from_status(status.clone()).is_retriable(), "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(forwarded_ack > ack.offset);
    let (code, body) = http_get(c.http[follower as usize - 1], "/metrics").await;
    assert_eq!(code, 200);
    let forwarded: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("shale_forwarded_requests_total "))
        .and_then(|v| v.parse().ok())
        .expect("forwarded counter");
    assert!(forwarded >= 1, "the follower forwarded nothing:\n{body}");
    let produce_forwarded: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("shale_forwarded_rpc_requests_total{rpc=\"Produce\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no per-RPC count of forwarded produce requests:\n{body}"));
    assert!(produce_forwarded >= 1, "{body}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_group_offsets_survive_a_metadata_leader_change() {
    let mut c = TestCluster::start(3).await;
    create_topic(&c, "grp", 2).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    for i in 0..10 {
        producer.send_and_wait(ProducerRecord::new("grp", format!("v{i}")).partition(i % 2)).await.unwrap();
    }
    let mut consumer = client.consumer(consumer_config(Some("billing")));
    consumer.subscribe("grp").await.unwrap();
    let mut seen = 0;
    while seen < 10 {
        seen += consumer.poll().await.unwrap().len();
    }
    consumer.commit().await.unwrap();
    let committed: Vec<Option<u64>> = vec![consumer.position("grp", 0), consumer.position("grp", 1)];

    let meta_leader = c.node(1).cluster().metadata_leader().expect("metadata leader").0;
    c.stop(meta_leader).await;
    let survivor = (1..=3).find(|id| *id != meta_leader).unwrap();
    wait_until("a new metadata leader", || {
        c.node(survivor).cluster().metadata_leader().is_some_and(|(id, _)| id != meta_leader)
    })
    .await;

    let again = c.client().consumer(consumer_config(Some("billing")));
    assert_eq!(again.committed("grp", 0).await.unwrap(), committed[0]);
    assert_eq!(again.committed("grp", 1).await.unwrap(), committed[1]);
    let groups = c.client().admin().list_groups().await.unwrap();
    assert_eq!(groups, vec!["billing".to_string()]);
    let described = c.client().admin().describe_group("billing").await.unwrap();
    assert_eq!(described.partitions.len(), 2, "{described:?}");
    for p in &described.partitions {
        assert_eq!(Some(p.committed_offset), committed[p.partition as usize], "{described:?}");
        assert_eq!(p.lag, p.log_end.saturating_sub(p.committed_offset));
        // Lag counts offsets, and Raft's own entries (a new leader's blank entry) take offsets too:
        // what matters is that no record is left unread past the commit.
        let unread = again.fetch("grp", p.partition, p.committed_offset, 0).await.unwrap();
        assert!(unread.records.is_empty(), "records after the committed offset: {unread:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_record_survives_killing_the_leader_mid_produce() {
    let mut c = TestCluster::start(3).await;
    create_topic(&c, "durable", 1).await;
    let leader = partition_leader(&c, "durable", 0).await;
    let client = c.client();
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let producing = tokio::spawn(async move {
        let producer = client.producer(ProducerConfig { linger_ms: 1, ..ProducerConfig::default() });
        for i in 0..300u32 {
            let send = producer.send(ProducerRecord::new("durable", format!("r{i}")).partition(0)).await;
            let result = match send {
                Ok(delivery) => delivery.await,
                Err(e) => Err(e),
            };
            // Failures are allowed while the leader is down; acknowledged records are recorded.
            if let Ok(meta) = result {
                let _ = acked_tx.send((i, meta.offset));
            }
        }
    });
    // Kill the leader once some records are acknowledged.
    let mut acked = Vec::new();
    while acked.len() < 50 {
        acked.push(tokio::time::timeout(WAIT, acked_rx.recv()).await.expect("acks flow").expect("producer alive"));
    }
    c.stop(leader).await;
    producing.await.unwrap();
    while let Ok(a) = acked_rx.try_recv() {
        acked.push(a);
    }
    assert!(acked.len() > 50, "nothing was acknowledged after the leader died");

    let last = acked.iter().map(|(_, o)| *o).max().unwrap();
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let reader = c.client_of(survivor);
    let mut consumer = reader.consumer(consumer_config(None));
    consumer.seek("durable", 0, 0);
    let mut read: BTreeMap<u64, Bytes> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while read.keys().next_back().is_none_or(|o| *o < last) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read stopped at {:?}, last ack {last}",
            read.keys().next_back()
        );
        for r in consumer.poll().await.unwrap() {
            read.insert(r.offset, r.value);
        }
    }
    for (i, offset) in &acked {
        assert_eq!(read.get(offset), Some(&Bytes::from(format!("r{i}"))), "acknowledged record {i} at {offset}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics_respond() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "metrics", 1).await;
    let ack = c
        .client()
        .producer(ProducerConfig::default())
        .send_and_wait(ProducerRecord::new("metrics", "m").partition(0))
        .await
        .unwrap();
    let group = c.client().consumer(consumer_config(Some("watchers")));
    group.commit_offsets(&[("metrics".to_string(), 0, ack.offset)]).await.unwrap();
    for http in &c.http {
        assert_eq!(http_get(*http, "/healthz").await.0, 200);
        let (code, body) = http_get(*http, "/readyz").await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = http_get(*http, "/metrics").await;
        assert_eq!(code, 200);
        for family in [
            "shale_produce_requests_total",
            "shale_fetch_latency_seconds_bucket",
            "shale_partition_log_end{topic=\"metrics\",partition=\"0\"}",
            "shale_partition_commit_index",
            "shale_storage_bytes",
            "shale_raft_quiet_groups",
            "shale_raft_node_heartbeats_sent_total",
            "shale_raft_node_heartbeats_received_total",
            "shale_raft_write_lease_renewals_total",
            "shale_raft_append_messages_sent_total",
            "shale_raft_multiplexed_messages_sent_total",
            "shale_raft_lone_append_messages_sent_total",
            "shale_raft_entryless_session_messages_sent_total",
            "shale_produce_calls_open",
        ] {
            assert!(body.contains(family), "{family} missing from /metrics:\n{body}");
        }
        // Three nodes: every node heartbeats its two peers, from its first tick on (a fast run can
        // read the metrics before that tick).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = http_get(*http, "/metrics").await;
            let sent = body
                .lines()
                .find_map(|l| l.strip_prefix("shale_raft_node_heartbeats_sent_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .expect("node heartbeats sent");
            if sent > 0 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no node heartbeat sent within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every node exports consumer-group lag from the groups it applied (the record at the
    // committed offset is unread), not only the metadata leader. A follower applies the partition's
    // last batch once it hears of its commit (up to `raft.commit_notice_delay_ms` later), so its
    // lag shows once it has.
    for http in &c.http {
        let line = "shale_consumer_group_lag{group=\"watchers\",topic=\"metrics\",partition=\"0\"}";
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = http_get(*http, "/metrics").await;
            let lag = body.lines().find(|l| l.starts_with(line)).map(|l| l.rsplit(' ').next().unwrap().parse::<u64>());
            if lag.is_some_and(|lag| lag.unwrap() >= 1) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no group lag >= 1 at {http}:\n{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_rejoins_from_disk_and_readiness_tracks_the_metadata_leader() {
    let mut c = TestCluster::start(3).await;
    create_topic(&c, "rejoin", 1).await;
    let ack = c
        .client()
        .producer(ProducerConfig::default())
        .send_and_wait(ProducerRecord::new("rejoin", "before").partition(0))
        .await
        .unwrap();
    c.stop(3).await;
    c.restart(3).await;
    assert!(c.node(3).wait_ready(WAIT).await, "restarted node sees a leader");
    assert_eq!(http_get(c.http[2], "/readyz").await.0, 200);
    let records =
        c.client_of(3).consumer(consumer_config(None)).fetch("rejoin", 0, ack.offset, 20_000).await.unwrap().records;
    assert_eq!(records[0].value.as_ref(), b"before");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_streams_existing_then_new_records() {
    use futures::StreamExt;

    let c = TestCluster::start(3).await;
    create_topic(&c, "follow", 1).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            producer.send_and_wait(ProducerRecord::new("follow", format!("old-{i}")).partition(0)).await.unwrap(),
        );
    }
    let stream = client.consumer(consumer_config(None)).stream("follow", 0, 0);
    let mut stream = Box::pin(stream);
    for (i, ack) in sent.iter().enumerate() {
        let r = tokio::time::timeout(WAIT, stream.next()).await.expect("record in time").expect("open").unwrap();
        assert_eq!((r.offset, r.value.as_ref()), (ack.offset, format!("old-{i}").as_bytes()));
    }
    // The stream follows the log: records committed after it caught up arrive too.
    let new = producer.send_and_wait(ProducerRecord::new("follow", "new").partition(0)).await.unwrap();
    let r = tokio::time::timeout(WAIT, stream.next()).await.expect("record in time").expect("open").unwrap();
    assert_eq!((r.offset, r.value.as_ref(), r.chain_hash), (new.offset, &b"new"[..], Some(new.chain_hash)));
    drop(stream);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_operations_alter_checkpoint_compact_transfer_and_delete() {
    let c = TestCluster::start(3).await;
    let admin = c.client().admin();
    let created = admin.create_topic(NewTopic::new("ops", 2, 3)).await.unwrap();
    assert_eq!(created.config.as_ref().unwrap().partitions, 2);
    assert!(admin.list_topics().await.unwrap().iter().any(|t| t.name == "ops"));

    let altered = admin
        .alter_topic(proto::AlterTopicRequest {
            name: "ops".into(),
            retention_ms: Some(3_600_000),
            codec: Some(proto::Codec::Lz4 as i32),
            ..Default::default()
        })
        .await
        .unwrap();
    let config = altered.config.unwrap();
    assert_eq!((config.retention_ms, config.codec), (Some(3_600_000), proto::Codec::Lz4 as i32));

    let producer = c.client().producer(ProducerConfig::default());
    let mut last = None;
    for i in 0..20 {
        last = Some(producer.send_and_wait(ProducerRecord::new("ops", format!("v{i}")).partition(0)).await.unwrap());
    }
    let last = last.unwrap();

    // Checkpoint on the partition's leader: the checkpoint's hash is the chain hash there.
    let leader = partition_leader(&c, "ops", 0).await;
    let checkpoints = c.client_of(leader).admin().checkpoint("ops", Some(0)).await.unwrap();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(checkpoints[0].offset >= last.offset, "{checkpoints:?}");
    let compacted = c.client_of(leader).admin().compact("ops", Some(0)).await.unwrap();
    assert_eq!(compacted.len(), 1);
    assert!(compacted[0].log_start_after >= compacted[0].log_start_before, "{compacted:?}");

    // Verify at the last record: every replica holds the producer's acknowledged hash.
    let verified = admin.verify("ops", 0, Some(last.offset)).await.unwrap();
    assert!(verified.agree, "{verified:?}");
    assert!(verified.replicas.iter().all(|r| r.chain_hash.as_deref() == Some(&last.chain_hash.0[..])), "{verified:?}");

    let target = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(admin.transfer_leader("ops", 0, target).await.unwrap(), target);
    wait_until("leadership moved", || c.node(target).cluster().leader_of("ops", 0).is_some_and(|(id, _)| id == target))
        .await;

    let status = admin.cluster_status().await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert!(status.meta.is_some());

    admin.delete_topic("ops").await.unwrap();
    let gone = admin.describe_topic("ops").await.unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::UnknownTopic), "{gone:?}");
    c.shutdown().await;
}
