//! Hostile clients (issue 14, "bounded resources" and item 6): each node limit refuses what goes
//! over it with its own `shale-error-code` and counts it in `shale_limit_refusals_total`; the
//! transport's own refusals (an oversize or undecodable body, no such method) carry a code too;
//! error messages never echo a long name whole.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut};
use common::WAIT;
use shale_client::admin::NewTopic;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::fetch_client::FetchClient;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{Client, ClientConfig, ClientError, ErrorCode, ProducerConfig, ProducerRecord, proto};
use shale_node::NodeConfig;
use shale_node::testing::LocalCluster;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

fn quick(c: &mut NodeConfig) {
    c.raft.heartbeat_interval_ms = 50;
    c.raft.election_timeout_min_ms = 300;
    c.raft.election_timeout_max_ms = 600;
}

async fn start(n: u64, root: &Path, configure: fn(&mut NodeConfig)) -> LocalCluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let c = LocalCluster::start(n, root, configure).await.expect("nodes start");
    assert!(c.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
    c
}

/// A new HTTP/2 connection to `addr` (each call is a connection of its own).
async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connection")
}

fn client(c: &LocalCluster) -> Client {
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 20;
    Client::new(config).expect("client")
}

/// One metric line's value (`name` with its labels, as exported).
async fn metric(c: &LocalCluster, id: u64, name: &str) -> u64 {
    let (code, text) = common::http_get(c.http[id as usize - 1], "/metrics").await;
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0)
}

fn refusals(limit: &str) -> String {
    format!("shale_limit_refusals_total{{limit=\"{limit}\"}}")
}

/// The client's view of a refusal: its code and `shale-limit`.
fn refused(status: Status) -> (Option<ErrorCode>, Option<u64>, ClientError) {
    let e = ClientError::from_status(status);
    let limit = match &e {
        ClientError::Server { limit, .. } => *limit,
        _ => None,
    };
    (e.code(), limit, e)
}

async fn list(channel: &Channel) -> Result<(), Status> {
    AdminClient::new(channel.clone()).list_topics(proto::ListTopicsRequest {}).await.map(|_| ())
}

fn few_connections(c: &mut NodeConfig) {
    quick(c);
    c.limits.max_connections = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_with_a_code_counted_and_closed() {
    let root = tempfile::tempdir().unwrap();
    let c = start(1, root.path(), few_connections).await;
    let addr = c.grpc[0];
    let (a, b) = (connect(addr).await, connect(addr).await);
    list(&a).await.expect("first connection served");
    list(&b).await.expect("second connection served");

    let third = connect(addr).await;
    let (code, limit, e) = refused(list(&third).await.unwrap_err());
    assert_eq!(code, Some(ErrorCode::TooManyConnections), "{e:?}");
    assert_eq!(limit, Some(2));
    assert!(e.is_retriable(), "the client backs off and retries");
    assert!(metric(&c, 1, &refusals("max_connections")).await >= 1);
    assert_eq!(metric(&c, 1, "shale_connections_open").await, 2);

    // The refused connection is closed a moment later.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(list(&third).await.is_err(), "nothing is served on a refused connection");

    // A connection that ends frees its place: a client with retries gets through.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&c, 1, "shale_connections_open").await > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the closed connection is never let go");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let topics = client(&c).admin().list_topics().await.expect("served once a place is free");
    assert!(topics.is_empty());
    list(&b).await.expect("the admitted connection is still served");
    c.shutdown().await.unwrap();
}

/// Waits until the node at `addr` serves fetches of partition 0 of `topic` (its replica is up).
async fn served(addr: SocketAddr, topic: &str) {
    let mut fetch = FetchClient::new(connect(addr).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let request = proto::FetchRequest { topic: topic.into(), partition: 0, ..Default::default() };
        match fetch.fetch(request).await {
            Ok(_) => return,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{topic}/0 is never served: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn few_subscriptions(c: &mut NodeConfig) {
    quick(c);
    c.limits.max_subscriptions_per_connection = 2;
    c.limits.max_subscriptions = 3;
}

async fn subscribe(channel: &Channel) -> Result<tonic::Streaming<proto::FetchResponse>, Status> {
    let request =
        proto::SubscribeRequest { topic: "s".into(), partition: 0, offset: 0, max_bytes: 0, ..Default::default() };
    FetchClient::new(channel.clone()).subscribe(request).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_streams_are_limited_per_connection_and_per_node() {
    let root = tempfile::tempdir().unwrap();
    let c = start(1, root.path(), few_subscriptions).await;
    client(&c).admin().create_topic(NewTopic::new("s", 1, 1)).await.unwrap();
    let addr = c.grpc[0];
    served(addr, "s").await;
    let (one, two) = (connect(addr).await, connect(addr).await);
    let first = subscribe(&one).await.expect("first stream");
    let _second = subscribe(&one).await.expect("second stream");
    let (code, limit, e) = refused(subscribe(&one).await.unwrap_err());
    assert_eq!((code, limit), (Some(ErrorCode::TooManySubscriptions), Some(2)), "per connection: {e:?}");
    assert!(e.to_string().contains("max_subscriptions_per_connection"), "{e}");

    let _third = subscribe(&two).await.expect("another connection has room");
    let (code, limit, e) = refused(subscribe(&two).await.unwrap_err());
    assert_eq!((code, limit), (Some(ErrorCode::TooManySubscriptions), Some(3)), "per node: {e:?}");
    assert!(e.is_retriable());
    assert_eq!(metric(&c, 1, "shale_subscriptions_open").await, 3);
    assert_eq!(metric(&c, 1, &refusals("max_subscriptions_per_connection")).await, 1);
    assert_eq!(metric(&c, 1, &refusals("max_subscriptions")).await, 1);

    // A stream that ends frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    let fourth = loop {
        match subscribe(&two).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(ClientError::from_status(e).code(), Some(ErrorCode::TooManySubscriptions));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the ended stream's place was not freed: {e:?}"),
        }
    };
    drop(fourth);
    c.shutdown().await.unwrap();
}

fn few_requests(c: &mut NodeConfig) {
    quick(c);
    c.limits.max_in_flight_requests = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_limit_are_refused_and_the_client_retries() {
    let root = tempfile::tempdir().unwrap();
    let c = start(1, root.path(), few_requests).await;
    let shale = client(&c);
    shale.admin().create_topic(NewTopic::new("f", 1, 1)).await.unwrap();
    served(c.grpc[0], "f").await;
    let channel = connect(c.grpc[0]).await;
    // Two long polls on an empty partition hold both places for 2 s.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let mut fetch = FetchClient::new(channel.clone());
            tokio::spawn(async move {
                let request = proto::FetchRequest {
                    topic: "f".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 0,
                    max_wait_ms: 2_000,
                    from_index: None,
                    client_checks_chain: false,
                };
                fetch.fetch(request).await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&c, 1, "shale_requests_in_flight").await < 2 {
        if polls.iter().any(|p| p.is_finished()) {
            let mut answers = Vec::new();
            for poll in polls {
                answers.push(poll.await.unwrap().map(|r| r.into_inner().entries.len()));
            }
            panic!("a long poll ended before both were counted: {answers:?}");
        }
        assert!(tokio::time::Instant::now() < deadline, "the long polls never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, limit, e) = refused(list(&channel).await.unwrap_err());
    assert_eq!((code, limit), (Some(ErrorCode::TooManyRequests), Some(2)), "{e:?}");
    assert_eq!(e.retry(), shale_client::Retry::NotApplied);
    assert!(metric(&c, 1, &refusals("max_in_flight_requests")).await >= 1);

    // The client backs off and retries until the polls are done.
    let producer = shale.producer(ProducerConfig::default());
    let sent = producer.send_and_wait(ProducerRecord::new("f", "after the polls").partition(0)).await;
    assert_eq!(sent.expect("the retried produce is written").offset, 0);
    for poll in polls {
        poll.await.unwrap().expect("a long poll admitted is answered");
    }
    c.shutdown().await.unwrap();
}

fn small_cluster(c: &mut NodeConfig) {
    quick(c);
    c.limits.max_topics = 3;
    c.limits.max_partitions = 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_partition_totals_refuse_creations_and_racing_ones_cannot_both_pass() {
    let root = tempfile::tempdir().unwrap();
    let c = start(3, root.path(), small_cluster).await;
    // Two creations of 6 partitions race through different nodes; only one fits in 10.
    let (via_1, via_2) = (client_of(&c, 1).admin(), client_of(&c, 2).admin());
    let (x, y) =
        tokio::join!(via_1.create_topic(NewTopic::new("x", 6, 1)), via_2.create_topic(NewTopic::new("y", 6, 1)),);
    let lost = match (x, y) {
        (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
        other => panic!("exactly one creation must pass: {other:?}"),
    };
    match &lost {
        ClientError::Server { code: ErrorCode::ClusterLimit, limit: Some(10), message } => {
            assert!(
                message.contains("would make 12 partitions") && message.contains("limits.max_partitions = 10"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(!lost.is_retriable());

    let admin = client(&c).admin();
    admin.create_topic(NewTopic::new("b", 2, 1)).await.expect("8 of 10 partitions");
    let e = admin.create_topic(NewTopic::new("c", 3, 1)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::ClusterLimit), "{e:?}");
    admin.create_topic(NewTopic::new("c", 1, 1)).await.expect("9 of 10 partitions, 3 of 3 topics");
    let e = admin.create_topic(NewTopic::new("d", 1, 1)).await.unwrap_err();
    match &e {
        ClientError::Server { code: ErrorCode::ClusterLimit, limit: Some(3), message } => {
            assert!(message.contains("limits.max_topics = 3"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(admin.list_topics().await.unwrap().len(), 3, "nothing refused was created");

    // Deleting makes room again.
    admin.delete_topic("b").await.unwrap();
    admin.create_topic(NewTopic::new("d", 2, 1)).await.expect("room after a delete");

    let mut counted = 0;
    for id in 1..=3 {
        counted += metric(&c, id, &refusals("max_partitions")).await + metric(&c, id, &refusals("max_topics")).await;
    }
    assert_eq!(counted, 3, "each refusal is counted once, where it was proposed");
    common::wait_until("node 3 applied the last creation", || c.running(3).unwrap().cluster().local_totals() == (3, 9))
        .await;
    assert_eq!(metric(&c, 3, "shale_cluster_partitions").await, 9);
    assert_eq!(metric(&c, 3, "shale_cluster_topics").await, 3);
    c.shutdown().await.unwrap();
}

fn client_of(c: &LocalCluster, id: u64) -> Client {
    let mut config = ClientConfig::new([c.grpc[id as usize - 1].to_string()]);
    config.max_attempts = 20;
    Client::new(config).expect("client")
}

/// Sends any bytes as a request body.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

async fn raw(channel: &Channel, path: &'static str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_encoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    grpc.unary(Request::new(body), PathAndQuery::from_static(path), RawCodec).await.expect_err("refused")
}

fn small_requests(c: &mut NodeConfig) {
    quick(c);
    c.limits.max_record_bytes = 16 * 1024;
    c.limits.max_request_bytes = 64 * 1024;
}

// Issue 14 item 6: requests over the transport cap and undecodable bodies came back without
// `shale-error-code`; a 10 KB topic name was echoed whole into the trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_undecodable_and_unknown_requests_get_a_code_and_names_are_not_echoed() {
    let root = tempfile::tempdir().unwrap();
    let c = start(1, root.path(), small_requests).await;
    let channel = connect(c.grpc[0]).await;
    let produce = |bytes: usize| proto::ProduceRequest {
        topic: "t".into(),
        partition: 0,
        records: vec![proto::Record { value: vec![7; bytes].into(), ..Default::default() }],
        producer: None,
    };
    let mut producer = ProduceClient::new(channel.clone()).max_encoding_message_size(usize::MAX);
    // Over the limit, under the transport's cap (2x): the handler names the limit.
    let (code, limit, e) = refused(producer.produce(produce(100 * 1024)).await.unwrap_err());
    assert_eq!((code, limit), (Some(ErrorCode::RequestTooLarge), Some(64 * 1024)), "{e:?}");
    // Over the transport's cap: refused before decoding, with the same code and limit.
    let status = producer.produce(produce(200 * 1024)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let (code, limit, e) = refused(status);
    assert_eq!((code, limit), (Some(ErrorCode::RequestTooLarge), Some(64 * 1024)), "{e:?}");
    assert!(metric(&c, 1, &refusals("max_request_bytes")).await >= 1);

    // Bytes that are not a ProduceRequest.
    let status = raw(&channel, "/shale.api.v1.Produce/Produce", vec![0xff; 16]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (code, _, e) = refused(status);
    assert_eq!(code, Some(ErrorCode::InvalidRequest), "{e:?}");
    assert!(!e.is_retriable());
    // No such method.
    let (code, _, e) = refused(raw(&channel, "/shale.api.v1.Produce/Nope", vec![]).await);
    assert_eq!(code, Some(ErrorCode::InvalidRequest), "{e:?}");
    assert!(metric(&c, 1, "shale_invalid_requests_total").await >= 2);

    // A 10 KB name is shown as a short prefix and its length, wherever it is refused.
    let long = "n".repeat(10_000);
    let mut admin = AdminClient::new(channel.clone());
    let create = proto::CreateTopicRequest {
        name: long.clone(),
        config: Some(proto::TopicConfig { partitions: 1, replication_factor: 1, ..Default::default() }),
    };
    let statuses = [
        admin.create_topic(create).await.unwrap_err(),
        admin.describe_topic(proto::DescribeTopicRequest { name: long.clone() }).await.unwrap_err(),
        admin.delete_topic(proto::DeleteTopicRequest { name: long.clone() }).await.unwrap_err(),
        producer.produce(proto::ProduceRequest { topic: long.clone(), ..produce(1) }).await.unwrap_err(),
    ];
    for status in statuses {
        assert!(status.message().len() < 200, "{} bytes: {}", status.message().len(), status.message());
        assert!(status.message().contains("(10000 bytes)"), "{}", status.message());
        assert!(ClientError::from_status(status).code().is_some(), "a Shale code");
    }
    c.shutdown().await.unwrap();
}
