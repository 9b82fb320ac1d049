//! Client quotas on real three-node clusters in process (issue 14, "quotas throttle"): a producer
//! over its produce quota is throttled (answers carry `throttle_time_ms`, and the bytes accepted
//! over a period stay within quota x (period + window) + one burst), another principal is not; a
//! consumer over its consume quota is paced, by Fetch and by Subscribe; removing the quota lifts
//! it; quotas survive a restart of every node (from the metadata snapshot).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::WAIT;
use prost::Message;
use shale_client::access::quota;
use shale_client::admin::NewTopic;
use shale_client::proto::fetch_client::FetchClient;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, Token, meta, proto};
use shale_node::testing::LocalCluster;
use tonic::transport::{Channel, Endpoint};

/// Window of the tests' nodes: 11 samples of 100 ms.
const SAMPLE_MS: u64 = 100;
const SAMPLES: u64 = 11;
const WINDOW_S: f64 = (SAMPLE_MS * SAMPLES) as f64 / 1000.0;

fn tune(c: &mut shale_node::NodeConfig) {
    // Elections are rare (a sensor lives on the leader that serves, see `produce_for`).
    c.raft.heartbeat_interval_ms = 100;
    c.raft.election_timeout_min_ms = 1_000;
    c.raft.election_timeout_max_ms = 2_000;
    // Small, so the metadata group snapshots (quotas included) within the test.
    c.raft.snapshot_every_entries = 8;
    c.quotas.sample_ms = SAMPLE_MS;
    c.quotas.samples = SAMPLES as u32;
    c.quotas.max_throttle_ms = 2_000;
}

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn client(c: &LocalCluster, token: Option<Token>) -> Client {
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 20;
    config.token = token;
    Client::new(config).expect("client")
}

async fn channel(c: &LocalCluster, id: u64) -> Channel {
    let addr = c.grpc[id as usize - 1];
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connection")
}

fn as_user<T>(message: T, token: &Token) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", token.header_value().parse().unwrap());
    req
}

/// The partition's leader id, once its preferred replica leads (leadership moves there soon after
/// a topic is created; a sensor lives on the node that serves, so the tests keep it in one place).
async fn leader_of(c: &LocalCluster, topic: &str) -> u64 {
    let admin = client(c, None).admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = admin.describe_topic(topic).await.expect("describe");
        let p = &t.partitions[0];
        if p.leader_id != 0 && p.replicas.first() == Some(&p.leader_id) {
            return p.leader_id;
        }
        assert!(tokio::time::Instant::now() < deadline, "{topic} has a leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node applied a quota for `user` with these rates.
async fn applied(c: &LocalCluster, user: &str, produce: Option<u64>, consume: Option<u64>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let all = (1..=3).all(|id| {
            let q = c.running(id).unwrap().cluster().quota_of(Some(user));
            (q.produce_bytes_per_sec, q.consume_bytes_per_sec) == (produce, consume)
        });
        if all {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "every node applies {user}'s quota");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `shale_quota_throttle_seconds_total{kind}` summed over the nodes.
async fn throttle_seconds(c: &LocalCluster, kind: &str) -> f64 {
    let mut total = 0.0;
    for addr in &c.http {
        let (_, body) = common::http_get(*addr, "/metrics").await;
        let prefix = format!("shale_quota_throttle_seconds_total{{kind=\"{kind}\"}} ");
        total += body.lines().filter_map(|l| l.strip_prefix(prefix.as_str())?.parse::<f64>().ok()).sum::<f64>();
    }
    total
}

/// What a producer of `senders` concurrent request loops got through in `period`: record bytes
/// accepted, answers, answers with a throttle time, requests refused because leadership moved
/// (retried), seconds it took.
struct Sent {
    bytes: u64,
    answers: u64,
    throttled: u64,
    moved: u64,
    seconds: f64,
}

impl Sent {
    /// The most `quota` lets through in `self.seconds`: the period and a first window at each
    /// leader that measured it (a new leader starts with an empty window), plus `burst`.
    fn bound(&self, quota: u64, burst: f64) -> f64 {
        quota as f64 * (self.seconds + WINDOW_S * (1 + self.moved) as f64) + burst
    }
}

/// Sends produce requests of one `record_bytes` record from `senders` loops to node `to` as `token`
/// for `period`.
async fn produce_for(
    c: &LocalCluster,
    to: u64,
    topic: &str,
    token: &Token,
    senders: usize,
    record_bytes: usize,
    period: Duration,
) -> Sent {
    let counter = || Arc::new(AtomicU64::new(0));
    let (bytes, answers, throttled, moved) = (counter(), counter(), counter(), counter());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let mut raw = ProduceClient::new(channel(c, to).await);
        let (token, topic) = (token.clone(), topic.to_string());
        let (bytes, answers, throttled, moved) = (bytes.clone(), answers.clone(), throttled.clone(), moved.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < period {
                let record = proto::Record { value: vec![7u8; record_bytes].into(), ..Default::default() };
                let req =
                    proto::ProduceRequest { topic: topic.clone(), partition: 0, records: vec![record], producer: None };
                let resp = match raw.produce(as_user(req, &token)).await {
                    Ok(resp) => resp.into_inner(),
                    Err(status) if status.metadata().get(meta::ERROR_CODE).is_some_and(|v| v == "NOT_LEADER") => {
                        moved.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(status) => panic!("produce is never refused for a quota: {status:?}"),
                };
                assert_eq!(resp.batches.len(), 1, "stored");
                bytes.fetch_add(record_bytes as u64, Ordering::SeqCst);
                answers.fetch_add(1, Ordering::SeqCst);
                if resp.throttle_time_ms > 0 {
                    throttled.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Sent {
        bytes: bytes.load(Ordering::SeqCst),
        answers: answers.load(Ordering::SeqCst),
        throttled: throttled.load(Ordering::SeqCst),
        moved: moved.load(Ordering::SeqCst),
        seconds: started.elapsed().as_secs_f64(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_over_its_quota_is_throttled_another_is_not_and_removal_lifts_it() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(3, root.path(), tune).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let admin = client(&c, None).admin();
    admin.create_topic(NewTopic::new("q", 1, 3)).await.unwrap();
    let alice = admin.create_user("alice").await.unwrap();
    let bob = admin.create_user("bob").await.unwrap();
    const QUOTA: u64 = 40_000;
    admin.set_quota(quota("alice", Some(QUOTA), None)).await.unwrap();
    applied(&c, "alice", Some(QUOTA), None).await;
    applied(&c, "bob", None, None).await;
    let listed = admin.list_quotas().await.unwrap();
    assert_eq!(listed, vec![quota("alice", Some(QUOTA), None)]);
    let leader = leader_of(&c, "q").await;
    let other = (1..=3).find(|&id| id != leader).unwrap();

    // Alice, 4 requests in flight of 4 KiB each, half of them through a node that forwards.
    const RECORD: usize = 4 * 1024;
    let period = Duration::from_secs(3);
    let (a, b, bob_sent) = tokio::join!(
        produce_for(&c, leader, "q", &alice, 2, RECORD, period),
        produce_for(&c, other, "q", &alice, 2, RECORD, period),
        produce_for(&c, leader, "q", &bob, 1, RECORD, period),
    );
    let (bytes, seconds) = (a.bytes + b.bytes, a.seconds.max(b.seconds));
    let burst = (4 * RECORD) as f64;
    let both = Sent { bytes, answers: 0, throttled: 0, moved: a.moved + b.moved, seconds };
    let bound = both.bound(QUOTA, burst);
    assert!(bytes as f64 <= bound, "alice got {bytes} bytes through in {seconds:.2} s; bound {bound:.0}");
    assert!(a.throttled + b.throttled > 0, "alice's answers say she is throttled ({} answers)", a.answers + b.answers);
    assert!(b.throttled > 0, "also the answers a forwarding node passed on");
    // Bob has no quota: never throttled, though he sent more than alice's quota lets through
    // before it throttles (its first window). (No throughput is asserted: only that the rate he
    // reached would have been throttled under her quota.)
    let first_window = QUOTA as f64 * WINDOW_S + burst;
    assert_eq!(bob_sent.throttled, 0, "bob is never throttled");
    assert!(bob_sent.bytes as f64 > first_window, "bob sent {} bytes, too few to show anything", bob_sent.bytes);
    assert!(throttle_seconds(&c, "produce").await > 0.0, "throttle time is counted");

    // The client library reports throttling, and it is not an error.
    let alice_client = client(&c, Some(alice.clone()));
    let producer = alice_client.producer(ProducerConfig::default());
    for _ in 0..40 {
        producer.send_and_wait(ProducerRecord::new("q", vec![1u8; RECORD])).await.expect("a throttled send succeeds");
    }
    producer.close().await.unwrap();
    let stats = alice_client.throttle_stats();
    assert!(stats.produce_throttled > 0 && stats.produce_throttle_ms > 0, "{stats:?}");

    // Removing the quota lifts it.
    admin.remove_quota("alice").await.unwrap();
    applied(&c, "alice", None, None).await;
    let after = produce_for(&c, leader, "q", &alice, 2, RECORD, Duration::from_secs(2)).await;
    assert_eq!(after.throttled, 0, "no throttle once the quota is gone");
    assert!(after.bytes as f64 > first_window, "alice sent {} bytes, too few to show anything", after.bytes);
    assert!(admin.remove_quota("alice").await.is_err(), "removing a quota that does not exist is refused");

    // A default applies to every user without an entry of their own.
    admin.set_quota(quota("*", Some(QUOTA), None)).await.unwrap();
    applied(&c, "bob", Some(QUOTA), None).await;
    let bob_sent = produce_for(&c, leader, "q", &bob, 2, RECORD, Duration::from_secs(2)).await;
    assert!(bob_sent.throttled > 0, "the default throttles bob");
    let bound = bob_sent.bound(QUOTA, burst);
    assert!(bob_sent.bytes as f64 <= bound, "bob got {} bytes through; bound {bound:.0}", bob_sent.bytes);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_over_its_quota_is_paced_by_fetch_and_subscribe_and_quotas_survive_restarts() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::start(3, root.path(), tune).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let admin = client(&c, None).admin();
    admin.create_topic(NewTopic::new("r", 1, 3)).await.unwrap();
    // 2 MiB to read, 8 KiB per batch, written by an anonymous producer (no quota applies).
    let writer = client(&c, None).producer(ProducerConfig::default());
    for _ in 0..256 {
        writer.send_and_wait(ProducerRecord::new("r", vec![3u8; 8 * 1024])).await.expect("produce");
    }
    writer.close().await.unwrap();
    let leader = leader_of(&c, "r").await;
    let carol = admin.create_user("carol").await.unwrap();
    const QUOTA: u64 = 60_000;
    admin.set_quota(quota("carol", None, Some(QUOTA))).await.unwrap();
    applied(&c, "carol", None, Some(QUOTA)).await;

    // Fetch: each answer up to 16 KiB; what is served over the period stays within the bound.
    let mut raw = FetchClient::new(channel(&c, leader).await);
    let (mut served, mut throttled, mut offset, mut biggest) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let req =
            proto::FetchRequest { topic: "r".into(), partition: 0, offset, max_bytes: 16 * 1024, ..Default::default() };
        let resp = raw.fetch(as_user(req, &carol)).await.expect("a fetch is never refused for a quota").into_inner();
        let len = resp.encoded_len() as u64;
        served += len;
        biggest = biggest.max(len);
        throttled += u64::from(resp.throttle_time_ms > 0);
        offset = resp.next_offset;
    }
    let seconds = started.elapsed().as_secs_f64();
    let bound = QUOTA as f64 * (seconds + WINDOW_S) + biggest as f64;
    assert!(served as f64 <= bound, "carol was served {served} bytes in {seconds:.2} s; bound {bound:.0}");
    assert!(throttled > 0, "fetch answers say carol is throttled");
    assert!(offset < 256, "carol did not read everything in 3 s at her quota (offset {offset})");

    // Subscribe: paced the same way.
    let mut raw = FetchClient::new(channel(&c, leader).await);
    let mut stream = raw.subscribe(as_user(subscribe_r_from_start(), &carol)).await.expect("subscribe").into_inner();
    let (mut served, mut throttled, mut biggest) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let Ok(Some(msg)) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a message in time")
        else {
            panic!("the subscription ended");
        };
        let len = msg.encoded_len() as u64;
        served += len;
        biggest = biggest.max(len);
        throttled += u64::from(msg.throttle_time_ms > 0);
    }
    drop(stream);
    let seconds = started.elapsed().as_secs_f64();
    // The window still holds what the fetches were served just before.
    let bound = QUOTA as f64 * (seconds + WINDOW_S) + biggest as f64;
    assert!(served as f64 <= bound, "carol's subscription got {served} bytes in {seconds:.2} s; bound {bound:.0}");
    assert!(throttled > 0, "subscription messages say carol is throttled");
    assert!(throttle_seconds(&c, "consume").await > 0.0);

    // Removing the quota lifts it for a subscription that is open.
    let mut stream = raw.subscribe(as_user(subscribe_r_from_start(), &carol)).await.expect("subscribe").into_inner();
    let mut paced = false;
    for _ in 0..40 {
        let msg = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("a message");
        if msg.expect("open").throttle_time_ms > 0 {
            paced = true;
            break;
        }
    }
    assert!(paced, "the new subscription is paced too");
    admin.remove_quota("carol").await.unwrap();
    applied(&c, "carol", None, None).await;
    let mut later = Vec::new();
    for _ in 0..20 {
        let msg = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").expect("a message");
        later.push(msg.expect("open").throttle_time_ms);
    }
    drop(stream);
    // Only messages paced before the quota went away (the one being paced, and those buffered for
    // the stream: 4) may still say so.
    assert!(later[5..].iter().all(|t| *t == 0), "no throttle once the quota is gone: {later:?}");
    admin.set_quota(quota("carol", None, Some(QUOTA))).await.unwrap();

    // More quota entries than a snapshot interval, then every node restarts: the quotas are back.
    for i in 0..12 {
        admin.set_quota(quota(&format!("u{i}"), Some(1_000 + i), None)).await.unwrap();
    }
    for id in 1..=3 {
        c.restart(id).await.expect("restart");
    }
    assert!(c.not_ready(WAIT).await.is_empty());
    let snapshotted = (1..=3).any(|id| {
        let group = c.running(id).unwrap().cluster().router().group(shale_raft::GroupId::METADATA).unwrap();
        group.metrics().snapshot.is_some()
    });
    assert!(snapshotted, "the metadata group took a snapshot");
    applied(&c, "carol", None, Some(QUOTA)).await;
    applied(&c, "u11", Some(1_011), None).await;
    let admin = client(&c, None).admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        match admin.list_quotas().await {
            Ok(l) => break l,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "list quotas: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 13, "{listed:?}");
    c.shutdown().await.unwrap();
}

/// A subscription to partition 0 of topic `r` from its first record, 16 KiB per message.
fn subscribe_r_from_start() -> proto::SubscribeRequest {
    proto::SubscribeRequest { topic: "r".into(), partition: 0, offset: 0, max_bytes: 16 * 1024, ..Default::default() }
}
