//! The Kafka listener at the wire, with requests real clients do not send: unsupported APIs and
//! versions, malformed frames, one batch's storage, the long poll, pipelined requests. Requests and responses are coded
//! by the `kafka-protocol` crate (as the node's own are); the real clients are in `kafka.rs`.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{TestCluster, WAIT, create_topic};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeAclsRequest, EndTxnRequest, FetchRequest,
    InitProducerIdRequest, MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record, RecordBatchEncoder,
    RecordEncodeOptions, TimestampType,
};
use shale_client::admin::NewTopic;
use shale_raft::cluster::FetchRequest as ShaleFetch;
use shale_storage::record_batch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One Kafka connection.
struct Wire {
    stream: TcpStream,
    correlation: i32,
}

impl Wire {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self { stream: TcpStream::connect(addr).await.expect("connect to the Kafka listener"), correlation: 0 }
    }

    async fn send_frame(&mut self, body: &[u8]) {
        self.stream.write_all(&(body.len() as i32).to_be_bytes()).await.unwrap();
        self.stream.write_all(body).await.unwrap();
    }

    /// The next frame's body, `None` if the node closed the connection.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        tokio::time::timeout(WAIT, self.stream.read_exact(&mut size)).await.expect("an answer in time").ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Bytes::from(body))
    }

    fn frame<R: Request>(&mut self, version: i16, req: &R) -> BytesMut {
        self.frame_as(version, version, req)
    }

    /// A request frame naming version `named` in its header, with the body coded at `coded`.
    fn frame_as<R: Request>(&mut self, named: i16, coded: i16, req: &R) -> BytesMut {
        self.correlation += 1;
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(named)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, key.request_header_version(coded)).unwrap();
        req.encode(&mut buf, coded).unwrap();
        buf
    }

    /// Sends `req` at `version` and decodes its answer.
    async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let buf = self.frame(version, req);
        self.send_frame(&buf).await;
        let mut answer = self.read_frame().await.expect("the connection stays open");
        let key = ApiKey::try_from(R::KEY).unwrap();
        let header = ResponseHeader::decode(&mut answer, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.correlation);
        R::Response::decode(&mut answer, version).unwrap()
    }
}

fn record(i: i64) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: i,
        sequence: NO_SEQUENCE + i as i32,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(format!("v{i}"))),
        headers: Default::default(),
    }
}

fn produce(topic: &str, partition: i32, batches: &[(usize, Compression)]) -> ProduceRequest {
    let mut records = BytesMut::new();
    for (count, compression) in batches {
        let batch: Vec<Record> = (0..*count as i64).map(record).collect();
        RecordBatchEncoder::encode(
            &mut records,
            &batch,
            &RecordEncodeOptions { version: 2, compression: *compression },
        )
        .unwrap();
    }
    let data = PartitionProduceData::default().with_index(partition).with_records(Some(records.freeze()));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_data(vec![data]);
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![topic])
}

fn fetch(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let p =
        FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(1 << 20);
    let t =
        FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.to_string()))).with_partitions(vec![p]);
    FetchRequest::default().with_max_wait_ms(max_wait_ms).with_min_bytes(1).with_max_bytes(1 << 20).with_topics(vec![t])
}

/// The node that leads `topic/partition`, as Kafka clients learn it (Metadata).
async fn kafka_leader(c: &TestCluster, topic: &str, partition: i32) -> std::net::SocketAddr {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut wire = Wire::connect(c.kafka[0]).await;
        let req = MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string())))),
        ]));
        let meta = wire.call(9, &req).await;
        let leader = meta.topics[0].partitions.iter().find(|p| p.partition_index == partition).map(|p| p.leader_id.0);
        if let Some(id) = leader.filter(|id| *id > 0) {
            return c.kafka[id as usize - 1];
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader for {topic}/{partition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsupported_apis_and_versions_are_answered_and_malformed_frames_close_only_their_connection() {
    let c = TestCluster::start(1).await;
    let mut wire = Wire::connect(c.kafka[0]).await;

    // Transactions are not served: EndTxn is answered with UNSUPPORTED_VERSION, not dropped.
    let end = wire.call(3, &EndTxnRequest::default()).await;
    assert_eq!(end.error_code, ResponseError::UnsupportedVersion.code());
    let acls = wire.call(3, &DescribeAclsRequest::default()).await;
    assert_eq!(acls.error_code, ResponseError::UnsupportedVersion.code());

    // ApiVersions at a version the node does not know: the served list at version 0, with
    // UNSUPPORTED_VERSION, so the client retries at one it lists.
    let buf = wire.frame_as(99, 3, &ApiVersionsRequest::default());
    wire.send_frame(&buf).await;
    let mut answer = wire.read_frame().await.expect("answered");
    let header = ResponseHeader::decode(&mut answer, 0).unwrap();
    assert_eq!(header.correlation_id, wire.correlation);
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, ResponseError::UnsupportedVersion.code());
    let produce = versions.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("Produce listed");
    assert!(produce.min_version <= 3 && produce.max_version >= 9);
    assert!(!versions.api_keys.iter().any(|k| k.api_key == ApiKey::EndTxn as i16), "EndTxn is not listed");

    // The same connection still serves.
    let ok = wire.call(3, &ApiVersionsRequest::default()).await;
    assert_eq!(ok.error_code, 0);

    // A Metadata request whose body is garbage closes its connection, and only it.
    let mut other = Wire::connect(c.kafka[0]).await;
    let mut bad = other.frame(9, &MetadataRequest::default());
    bad.truncate(bad.len() - 1);
    bad.put_slice(&[0xff; 3]);
    other.send_frame(&bad).await;
    assert!(other.read_frame().await.is_none(), "a malformed request closes its connection");
    // An unknown API key too.
    let mut unknown = Wire::connect(c.kafka[0]).await;
    let mut frame = BytesMut::new();
    frame.put_i16(9_999);
    frame.put_i16(0);
    frame.put_i32(1);
    frame.put_i16(-1);
    unknown.send_frame(&frame).await;
    assert!(unknown.read_frame().await.is_none(), "an unknown API key closes its connection");
    // A frame size past the limit too, before its body is read.
    let mut huge = Wire::connect(c.kafka[0]).await;
    huge.stream.write_all(&i32::MAX.to_be_bytes()).await.unwrap();
    assert!(huge.read_frame().await.is_none(), "an oversized frame closes its connection");

    let still = wire.call(3, &ApiVersionsRequest::default()).await;
    assert_eq!(still.error_code, 0, "the first connection is untouched");
    c.shutdown().await;
}

/// The headers of the visible record batches in partition 0 of `topic` on the node whose Kafka
/// listener is `leader`, read from its own log, in order.
async fn stored_batches(c: &TestCluster, leader: std::net::SocketAddr, topic: &str) -> Vec<record_batch::BatchHeader> {
    let id = c.kafka.iter().position(|a| *a == leader).unwrap() as u64 + 1;
    let fetched = c
        .node(id)
        .cluster()
        .fetch(ShaleFetch {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            from_index: None,
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
            check: shale_storage::ReadCheck::Chain,
        })
        .await
        .expect("fetch");
    fetched
        .entries
        .iter()
        .filter(|e| !e.hidden && e.data.len() > record_batch::envelope::HEADER_LEN)
        .filter(|e| e.data[record_batch::envelope::KIND_AT] == record_batch::envelope::KIND_NORMAL)
        .map(|e| record_batch::decode_header(&e.data[record_batch::envelope::HEADER_LEN..]).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_kafka_batch_is_one_shale_batch_entry_and_a_long_poll_ends_with_the_next_record() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "batches", 1).await;
    // Three Kafka batches of 4, 5 and 6 records in one request: offsets 0, 4 and 9. A leader
    // change meanwhile (the preferred leader takes over) is retried as a client would.
    let req = produce("batches", 0, &[(4, Compression::Gzip), (5, Compression::Zstd), (6, Compression::Lz4)]);
    let (leader, mut wire) = loop {
        let leader = kafka_leader(&c, "batches", 0).await;
        let mut wire = Wire::connect(leader).await;
        let answer = wire.call(9, &req).await;
        let p = &answer.responses[0].partition_responses[0];
        if p.error_code == ResponseError::NotLeaderOrFollower.code() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!((p.error_code, p.base_offset), (0, 0));
        break (leader, wire);
    };
    let again = wire.call(9, &produce("batches", 0, &[(2, Compression::Snappy)])).await;
    assert_eq!(again.responses[0].partition_responses[0].base_offset, 15);

    // The leader's log: one visible batch entry per Kafka batch, in order.
    let batches: Vec<(u64, u32)> =
        stored_batches(&c, leader, "batches").await.iter().map(|h| (h.base_offset, h.record_count)).collect();
    assert_eq!(batches, vec![(0, 4), (4, 5), (9, 6), (15, 2)]);

    // A fetch at the end waits; a record produced meanwhile ends the wait.
    let mut poller = Wire::connect(leader).await;
    let poll = tokio::spawn(async move { poller.call(12, &fetch("batches", 0, 17, 20_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "nothing to read yet: the fetch waits");
    wire.call(9, &produce("batches", 0, &[(1, Compression::None)])).await;
    let got = tokio::time::timeout(WAIT, poll).await.expect("answered once a record arrived").unwrap();
    let part = &got.responses[0].partitions[0];
    assert_eq!(part.error_code, 0);
    assert_eq!(part.high_watermark, 18);
    let mut records = part.records.clone().unwrap();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap();
    let offsets: Vec<i64> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.offset)).collect();
    assert_eq!(offsets, vec![17]);

    // Pipelined requests on one connection are served in order: 20 single-record batches sent
    // without waiting get consecutive offsets in the order sent.
    let mut frames = Vec::new();
    for _ in 0..20 {
        frames.push(wire.frame(9, &produce("batches", 0, &[(1, Compression::None)])));
    }
    let first_correlation = wire.correlation - 19;
    for f in &frames {
        wire.send_frame(f).await;
    }
    let mut offsets = Vec::new();
    for i in 0..20 {
        let mut answer = wire.read_frame().await.expect("answered");
        let header = ResponseHeader::decode(&mut answer, ApiKey::Produce.response_header_version(9)).unwrap();
        assert_eq!(header.correlation_id, first_correlation + i, "answers in request order");
        let r = kafka_protocol::messages::ProduceResponse::decode(&mut answer, 9).unwrap();
        offsets.push(r.responses[0].partition_responses[0].base_offset);
    }
    assert_eq!(offsets, (18..38).collect::<Vec<i64>>(), "stored in the order sent");

    // Past the end: OFFSET_OUT_OF_RANGE.
    let past = wire.call(12, &fetch("batches", 0, 99, 0)).await;
    assert_eq!(past.responses[0].partitions[0].error_code, ResponseError::OffsetOutOfRange.code());
    c.shutdown().await;
}

/// A Kafka batch in the topic's codec is stored as sent (one entry whose records block is the
/// Kafka batch) and fetched over Kafka as stored; a batch in another codec is re-encoded. Every
/// replica, read on its own with its chain checked, holds the same records at the same offsets as
/// a Kafka consumer sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_in_the_topics_codec_is_stored_as_sent_and_every_replica_reads_it_as_kafka_does() {
    let c = TestCluster::start(3).await;
    create_topic(&c, "as-sent", 1).await;
    let mut zstd = NewTopic::new("as-sent-zstd", 1, 3);
    zstd.codec = shale_client::proto::Codec::Zstd;
    c.client().admin().create_topic(zstd).await.expect("create topic");
    let cases = [
        ("as-sent", [(4, Compression::None), (3, Compression::Zstd), (2, Compression::Gzip)], [true, false, false]),
        ("as-sent-zstd", [(4, Compression::Zstd), (3, Compression::None), (2, Compression::Lz4)], [true, false, false]),
    ];
    for (topic, batches, kept) in cases {
        let req = produce(topic, 0, &batches);
        let sent = req.topic_data[0].partition_data[0].records.clone().unwrap();
        let (leader, mut wire) = loop {
            let leader = kafka_leader(&c, topic, 0).await;
            let mut wire = Wire::connect(leader).await;
            let p = wire.call(9, &req).await.responses[0].partition_responses[0].clone();
            if p.error_code == ResponseError::NotLeaderOrFollower.code() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!((p.error_code, p.base_offset), (0, 0), "{topic}");
            break (leader, wire);
        };
        // The leader's log: which entries hold the Kafka batch as sent.
        let stored: Vec<(u64, bool)> =
            stored_batches(&c, leader, topic).await.iter().map(|h| (h.base_offset, h.kafka_batch)).collect();
        assert_eq!(stored, vec![(0, kept[0]), (4, kept[1]), (7, kept[2])], "{topic}");

        // Over Kafka: the first batch exactly as sent but its base offset; all nine records.
        let answer = wire.call(12, &fetch(topic, 0, 0, 0)).await;
        let mut records = answer.responses[0].partitions[0].records.clone().unwrap();
        let first_len = 12 + i32::from_be_bytes(sent[8..12].try_into().unwrap()) as usize;
        assert_eq!(&records[8..first_len], &sent[8..first_len], "{topic}: the first batch is returned as stored");
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap();
        let over_kafka: Vec<(i64, Option<Bytes>)> =
            sets.iter().flat_map(|s| s.records.iter().map(|r| (r.offset, r.value.clone()))).collect();
        let want: Vec<(i64, Option<Bytes>)> = [4, 3, 2]
            .iter()
            .scan(0i64, |at, n| {
                let base = *at;
                *at += n;
                Some((0..*n).map(move |i| (base + i, Some(Bytes::from(format!("v{i}"))))))
            })
            .flatten()
            .collect();
        assert_eq!(over_kafka, want, "{topic}");

        // Every replica on its own, chain checked: the same records at the same offsets.
        for node in 1..=3 {
            let deadline = tokio::time::Instant::now() + WAIT;
            let read = loop {
                match common::read_own_replica(c.node(node).cluster(), topic, 0).await {
                    Some(r) if r.len() >= want.len() => break r,
                    _ => assert!(tokio::time::Instant::now() < deadline, "node {node} never held {topic}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let got: Vec<(i64, Option<Bytes>)> =
                read.iter().map(|r| (r.offset as i64, Some(r.value.clone()))).collect();
            assert_eq!(got, want, "node {node}, {topic}");
            assert_eq!(read[1].key.as_deref(), Some(&b"k1"[..]), "node {node}, {topic}");
        }
    }
    c.shutdown().await;
}

/// A produce request of one idempotent batch per partition: `(partition, base sequence, count)`;
/// record `i` of a batch has value `"{tag}-{partition}-{i}"`.
fn produce_idempotent(topic: &str, producer: (i64, i16), batches: &[(i32, i32, i32)], tag: &str) -> ProduceRequest {
    let partitions = batches
        .iter()
        .map(|&(partition, sequence, count)| {
            let records: Vec<Record> = (0..count)
                .map(|i| Record {
                    producer_id: producer.0,
                    producer_epoch: producer.1,
                    sequence: sequence + i,
                    offset: i64::from(i),
                    value: Some(Bytes::from(format!("{tag}-{partition}-{i}"))),
                    ..record(i64::from(i))
                })
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &records,
                &RecordEncodeOptions { version: 2, compression: Compression::None },
            )
            .unwrap();
            PartitionProduceData::default().with_index(partition).with_records(Some(buf.freeze()))
        })
        .collect();
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_data(partitions);
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![topic])
}

/// The next answer on `wire`, which must be to the request numbered `correlation`.
async fn answer_to<R: Request>(wire: &mut Wire, version: i16, correlation: i32) -> R::Response {
    let mut answer = wire.read_frame().await.expect("answered");
    let key = ApiKey::try_from(R::KEY).unwrap();
    let header = ResponseHeader::decode(&mut answer, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation, "answers in request order");
    R::Response::decode(&mut answer, version).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_produce_requests_are_served_together_answered_in_order_and_stored_in_order() {
    let c = TestCluster::start(1).await;
    c.client().admin().create_topic(NewTopic::new("pipe", 2, 1)).await.expect("create topic");
    let leader = kafka_leader(&c, "pipe", 0).await;
    // Metadata may name the leader before its group elected it: wait until both partitions are led.
    for partition in 0..2 {
        let deadline = tokio::time::Instant::now() + WAIT;
        while c.node(1).cluster().end_offsets("pipe", partition).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "pipe/{partition} has no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut wire = Wire::connect(leader).await;
    let init = wire.call(1, &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000)).await;
    assert_eq!(init.error_code, 0);
    let producer = (init.producer_id.0, init.producer_epoch);

    // 20 requests of an idempotent producer, each with a batch of 3 records for both partitions,
    // sent without waiting: answered in the order sent, each partition's batches stored in it.
    let mut frames = Vec::new();
    for r in 0..20 {
        let req = produce_idempotent("pipe", producer, &[(0, r * 3, 3), (1, r * 3, 3)], &format!("r{r}"));
        frames.push((wire.frame(9, &req), wire.correlation));
    }
    for (f, _) in &frames {
        wire.send_frame(f).await;
    }
    for (r, (_, correlation)) in frames.iter().enumerate() {
        let answer = answer_to::<ProduceRequest>(&mut wire, 9, *correlation).await;
        for p in &answer.responses[0].partition_responses {
            assert_eq!((p.error_code, p.base_offset), (0, r as i64 * 3), "partition {}", p.index);
        }
    }
    for partition in 0..2 {
        let got = wire.call(12, &fetch("pipe", partition, 0, 0)).await;
        let mut records = got.responses[0].partitions[0].records.clone().unwrap();
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).unwrap();
        let values: Vec<Bytes> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.value.clone().unwrap())).collect();
        let sent: Vec<Bytes> =
            (0..20).flat_map(|r| (0..3).map(move |i| Bytes::from(format!("r{r}-{partition}-{i}")))).collect();
        assert_eq!(values, sent, "partition {partition} holds the batches in the order sent");
    }

    // A slow request (a batch whose sequence skips ahead waits up to a second for the batches
    // before it, then is refused) holds up neither the requests after it on other partitions nor
    // the connection: they are served meanwhile, and answered after it, in order.
    let slow = produce_idempotent("pipe", producer, &[(0, 70, 1)], "slow");
    let (slow, slow_id) = (wire.frame(9, &slow), wire.correlation);
    let (other, other_id) = (wire.frame(9, &produce("pipe", 1, &[(1, Compression::None)])), wire.correlation);
    let (meta, meta_id) = (wire.frame(9, &MetadataRequest::default()), wire.correlation);
    for f in [&slow, &other, &meta] {
        wire.send_frame(f).await;
    }
    let cluster = c.node(1).cluster();
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.end_offsets("pipe", 1).await.expect("end offsets").1 < 61 {
        assert!(tokio::time::Instant::now() < deadline, "the later produce was never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut byte = [0u8; 1];
    assert!(
        matches!(wire.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the later produce was stored while the slow one still waited (nothing answered yet)"
    );
    let answer = answer_to::<ProduceRequest>(&mut wire, 9, slow_id).await;
    let p = &answer.responses[0].partition_responses[0];
    assert_eq!(p.error_code, ResponseError::OutOfOrderSequenceNumber.code());
    let answer = answer_to::<ProduceRequest>(&mut wire, 9, other_id).await;
    assert_eq!(answer.responses[0].partition_responses[0].base_offset, 60);
    let answer = answer_to::<MetadataRequest>(&mut wire, 9, meta_id).await;
    assert_eq!(answer.brokers.len(), 1);
    c.shutdown().await;
}
