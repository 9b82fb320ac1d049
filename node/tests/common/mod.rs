//! An in-process cluster of real nodes (disk storage in a temp dir, real gRPC on 127.0.0.1).

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::net::SocketAddr;
use std::time::Duration;

use shale_client::admin::NewTopic;
use shale_client::proto;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{
    ChainHash, ChainReader, Client, ClientConfig, ClientError, ConsumedRecord, ConsumerConfig, OffsetReset,
};
use shale_node::testing::LocalCluster;
use shale_node::{NodeConfig, NodeHandle};
use shale_raft::cluster::{Cluster, ClusterError, FetchRequest};
use shale_storage::ReadCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running cluster and the temp dir holding its data.
pub struct TestCluster {
    cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

/// The tests' node configuration: small records, so limits are quick to reach.
fn tune(c: &mut NodeConfig) {
    c.limits.max_record_bytes = 64 * 1024;
}

impl TestCluster {
    /// Starts `n` nodes and waits until each sees a metadata leader.
    pub async fn start(n: u64) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("temp dir");
        let cluster = LocalCluster::start(n, root.path(), tune).await.expect("nodes start");
        let late = cluster.not_ready(WAIT).await;
        assert!(late.is_empty(), "nodes {late:?} never saw a metadata leader");
        Self { cluster, _root: root }
    }

    /// A client bootstrapped with every node.
    pub fn client(&self) -> Client {
        let mut config = ClientConfig::new(self.endpoints());
        config.max_attempts = 40;
        Client::new(config).expect("client")
    }

    /// A client that knows only node `id` (1-based).
    pub fn client_of(&self, id: u64) -> Client {
        let mut config = ClientConfig::new([self.grpc[id as usize - 1].to_string()]);
        config.max_attempts = 40;
        Client::new(config).expect("client")
    }

    pub fn node(&self, id: u64) -> &NodeHandle {
        self.cluster.running(id).expect("node is running")
    }

    /// Stops node `id` (gracefully, as SIGTERM would).
    pub async fn stop(&mut self, id: u64) {
        assert!(self.cluster.running(id).is_some(), "node {id} is running");
        self.cluster.stop(id).await.expect("clean shutdown");
    }

    /// Restarts a stopped node on its old port and data dir.
    pub async fn restart(&mut self, id: u64) {
        assert!(self.cluster.running(id).is_none(), "node {id} is stopped");
        self.cluster.restart(id).await.expect("node restarts");
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await.expect("clean shutdown");
    }
}

/// Waits until `f` is true, polling every 20 ms; panics after [`WAIT`].
pub async fn wait_until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("http answer in time").unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A series' value in a node's `/metrics` (`name` with its labels, e.g.
/// `shale_limit_refusals_total{limit="max_connections"}`); `None` when the node does not export it.
pub async fn metric(http: SocketAddr, name: &str) -> Option<u64> {
    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Creates a topic with replication factor 3.
pub async fn create_topic(c: &TestCluster, name: &str, partitions: u32) {
    c.client().admin().create_topic(NewTopic::new(name, partitions, 3)).await.expect("create topic");
}

/// The current leader of a partition: the node the cluster names, once that node's own group
/// leads it. A new topic's partition groups start and elect a moment after the topic is
/// created; until then the cluster names the partition's first replica, whose group may not
/// run yet (or lose the election).
pub async fn partition_leader(c: &TestCluster, topic: &str, partition: u32) -> u64 {
    let admin = c.client().admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = admin.describe_topic(topic).await.expect("describe");
        let leader = t.partitions[partition as usize].leader_id;
        let leads = |node: &shale_node::NodeHandle| {
            node.cluster()
                .local_partition_state(topic, partition)
                .is_ok_and(|s| s.leader.is_some_and(|(id, _)| id == leader))
        };
        if leader != 0 && c.running(leader).is_some_and(leads) {
            return leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "{topic}/{partition} has no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A consumer reading from the start, long-polling 200 ms.
pub fn consumer_config(group: Option<&str>) -> ConsumerConfig {
    ConsumerConfig {
        group: group.map(str::to_string),
        max_wait_ms: 200,
        offset_reset: OffsetReset::Earliest,
        ..ConsumerConfig::default()
    }
}

/// Sends one Produce request as it is (plain gRPC, no client retry logic) to whichever node takes
/// it: the nodes in turn while they answer retriable errors (any node forwards to the leader;
/// leadership may move). Other errors are returned.
pub async fn produce_raw(
    c: &TestCluster,
    client: &Client,
    request: &proto::ProduceRequest,
) -> Result<proto::ProduceResponse, ClientError> {
    let endpoints = c.endpoints();
    for attempt in 0..200 {
        let ch = client.channel(&endpoints[attempt % endpoints.len()]).expect("channel");
        match ProduceClient::new(ch).produce(request.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(status) => {
                let err = ClientError::from_status(status);
                if !err.is_retriable() {
                    return Err(err);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("no node took the batch");
}

/// Reads one partition from `from` until `last` (an offset) was read, from the replicas `client`
/// picks; panics after [`WAIT`].
pub async fn read_through(client: &Client, topic: &str, partition: u32, from: u64, last: u64) -> Vec<ConsumedRecord> {
    let mut consumer = client.consumer(consumer_config(None));
    consumer.seek(topic, partition, from);
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while consumer.position(topic, partition).is_some_and(|p| p <= last) {
        assert!(tokio::time::Instant::now() < deadline, "{topic}/{partition}: records up to {last} never arrived");
        read.extend(consumer.poll().await.expect("poll"));
    }
    read
}

/// Every record a node's own replica of `topic/partition` holds, read with `Cluster::fetch` on that
/// node (never forwarded) as a consumer reads: each fetch continuing at the last entry, every chain
/// hash recomputed (a replica serving anything off its chain fails the test). `None` while the
/// replica cannot be read.
pub async fn read_own_replica(cluster: &Cluster, topic: &str, partition: u32) -> Option<Vec<ConsumedRecord>> {
    let mut start = cluster.local_partition_state(topic, partition).ok()?.log_start.unwrap_or(0);
    let mut reader = ChainReader::new(topic, partition, start, true);
    let codecs = shale_client::chain::default_codecs();
    let mut out = Vec::new();
    loop {
        let req = FetchRequest {
            topic: topic.to_string(),
            partition,
            offset: reader.offset(),
            from_index: reader.from_index(),
            max_bytes: 1 << 20,
            wait: Duration::ZERO,
            check: ReadCheck::Chain,
        };
        let got = match cluster.fetch(req).await {
            Ok(got) => got,
            // The replica's start was not known yet: read from where it says it starts.
            Err(ClusterError::OffsetOutOfRange { start: s, .. }) if reader.from_index().is_none() && s > start => {
                start = s;
                reader = ChainReader::new(topic, partition, start, true);
                continue;
            }
            Err(_) => return None,
        };
        if got.entries.is_empty() {
            return Some(out);
        }
        let prev = got.prev_chain_hash.unwrap_or(ChainHash::ZERO).0;
        let entries = got
            .entries
            .into_iter()
            .map(|e| proto::LogEntry { index: e.index, data: e.data, hidden: e.hidden })
            .collect();
        let last = got.last_chain_hash.map(|h| h.0.to_vec()).unwrap_or_default();
        out.extend(reader.accept(entries, &prev, &last, &codecs).expect("a replica serves one chain").records);
    }
}
