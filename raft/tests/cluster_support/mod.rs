//! In-process clusters for the cluster tests: N nodes, each a `Cluster` over its own
//! `MemoryStorage`, served by a real tonic server on 127.0.0.1:0.
#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use shale_raft::RaftGroupConfig;
use shale_raft::cluster::{
    BatchAck, Cluster, ClusterConfig, ClusterError, FetchRequest, FetchResult, GroupStatus, MemberAddrs, NodeId,
    ProduceRecord, ProducerInfo, RetentionPolicy, TopicSpec,
};
use shale_storage::record_batch::{self, envelope};
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{ChainHash, CodecKind, MemoryStorage, Storage, StorageBackend, StorageOptions};
use shale_storage::{CodecRegistry, Offset, ReadCheck, chain_hash};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Bound on every wait in the tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Where a test node keeps its data.
#[derive(Clone, Debug)]
pub enum Backing {
    /// `MemoryStorage` with these options (survives a restart: the same instance is reused).
    Memory(StorageOptions),
    /// The disk `Storage` under a temporary directory (reopened on restart).
    Disk(StorageOptions),
    /// The disk `Storage` on an in-memory `FaultyFileSystem` of its own per node (reopened on
    /// restart); [`TestCluster::crash`] drops every byte a node had not fsynced.
    Faulty(StorageOptions),
}

/// Where a `Backing::Faulty` node's storage lives in its file system.
const FAULTY_ROOT: &str = "/data";

/// How a test cluster is built.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Nodes started.
    pub nodes: usize,
    /// The first `members` nodes are bootstrapped as the initial members; the rest only run.
    pub members: usize,
    /// Storage of every node.
    pub backing: Backing,
    /// `ClusterConfig::preferred_leader_delay_ms`.
    pub preferred_leader_delay_ms: u64,
    /// `RaftGroupConfig::log_cache_bytes` of every group (0: no in-memory log tail).
    pub log_cache_bytes: usize,
    /// `RaftGroupConfig::heartbeat_interval_ms` of every group (the election timeouts are 6 and
    /// 12 of them). Tests with many groups on a busy machine use a longer one.
    pub heartbeat_interval_ms: u64,
    /// `ClusterConfig::replica_limit` of every node.
    pub replica_limit: Option<shale_raft::cluster::ReplicaLimit>,
    /// `(total, floor)` of each node's own `CacheBudget` (`None`: no node budget).
    pub log_cache_budget: Option<(usize, usize)>,
    /// `RaftGroupConfig::retention_hold_max_ms` of every group.
    pub retention_hold_max_ms: u64,
    /// Whether the nodes' Raft servers answer ReadIndex; `false` answers UNIMPLEMENTED, as a
    /// node of a version before ReadIndex does (a rolling upgrade).
    pub serve_read_index: bool,
}

impl Setup {
    /// `n` nodes, all members, in memory, preferred leaders after 100 ms.
    pub fn new(n: usize) -> Self {
        Setup {
            nodes: n,
            members: n,
            backing: Backing::Memory(StorageOptions::default()),
            preferred_leader_delay_ms: 100,
            log_cache_bytes: RaftGroupConfig::default().log_cache_bytes,
            heartbeat_interval_ms: 50,
            replica_limit: None,
            log_cache_budget: None,
            retention_hold_max_ms: RaftGroupConfig::default().retention_hold_max_ms,
            serve_read_index: true,
        }
    }
}

/// One node of a test cluster.
pub struct TestNode {
    pub id: NodeId,
    pub addr: String,
    pub storage: Arc<dyn StorageBackend>,
    pub cluster: Option<Arc<Cluster>>,
    dir: Option<tempfile::TempDir>,
    /// The file system of a `Backing::Faulty` node.
    pub fs: Option<FaultyFileSystem>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// N nodes, bootstrapped.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub setup: Setup,
}

fn raft_config(heartbeat_interval_ms: u64) -> RaftGroupConfig {
    RaftGroupConfig {
        heartbeat_interval_ms,
        election_timeout_min_ms: 6 * heartbeat_interval_ms,
        election_timeout_max_ms: 12 * heartbeat_interval_ms,
        ..RaftGroupConfig::default()
    }
}

async fn serve(node: &mut TestNode, listener: TcpListener, setup: &Setup) -> Result<(), ClusterError> {
    let mut config = ClusterConfig::new(node.id, node.addr.clone(), node.storage.clone());
    config.raft = RaftGroupConfig {
        log_cache_bytes: setup.log_cache_bytes,
        retention_hold_max_ms: setup.retention_hold_max_ms,
        ..raft_config(setup.heartbeat_interval_ms)
    };
    config.reconcile_interval_ms = 50;
    config.replica_limit = setup.replica_limit;
    config.log_cache_budget =
        setup.log_cache_budget.map(|(total, floor)| shale_raft::entry_cache::CacheBudget::new(total, floor));
    config.preferred_leader_delay_ms = setup.preferred_leader_delay_ms;
    config.retention_interval_ms = 500;
    config.request_timeout_ms = 10_000;
    let cluster = Cluster::start(config).await?;
    let service = WithoutReadIndex { inner: cluster.grpc_service(), refuse: !setup.serve_read_index };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
    });
    node.cluster = Some(cluster);
    node.server = Some((stop_tx, server));
    Ok(())
}

/// A node's Raft service that, with `refuse`, answers ReadIndex UNIMPLEMENTED (what tonic answers
/// for a method the server's version does not have) and serves everything else.
#[derive(Clone)]
struct WithoutReadIndex<S> {
    inner: S,
    refuse: bool,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for WithoutReadIndex<S> {
    const NAME: &'static str = S::NAME;
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<HttpRequest> for WithoutReadIndex<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if self.refuse && req.uri().path().ends_with("/ReadIndex") {
            let answer = tonic::Status::unimplemented("ReadIndex (a node of an older version)").into_http();
            return Box::pin(async move { Ok(answer) });
        }
        Box::pin(self.inner.call(req))
    }
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) in memory and bootstraps them all from node 1.
    pub async fn start(n: usize) -> TestCluster {
        Self::start_with(Setup::new(n)).await
    }

    /// Starts the nodes of `setup` and bootstraps its first `members` from node 1.
    pub async fn start_with(setup: Setup) -> TestCluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut listeners = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..setup.nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let mut fs = None;
            let (storage, dir): (Arc<dyn StorageBackend>, _) = match &setup.backing {
                Backing::Memory(o) => (Arc::new(MemoryStorage::with_options(o.clone()).expect("memory storage")), None),
                Backing::Disk(o) => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    (Arc::new(Storage::open_with(dir.path(), o.clone()).expect("open storage")), Some(dir))
                }
                Backing::Faulty(o) => {
                    let faulty = FaultyFileSystem::new();
                    let storage =
                        Storage::open_with_fs(FAULTY_ROOT, o.clone(), Arc::new(faulty.clone())).expect("open storage");
                    fs = Some(faulty);
                    (Arc::new(storage), None)
                }
            };
            nodes.push(TestNode { id: i as NodeId + 1, addr, storage, cluster: None, dir, fs, server: None });
            listeners.push(listener);
        }
        for (node, listener) in nodes.iter_mut().zip(listeners) {
            serve(node, listener, &setup).await.expect("start node");
        }
        let members: BTreeMap<NodeId, MemberAddrs> =
            nodes.iter().take(setup.members).map(|n| (n.id, MemberAddrs::one(n.addr.clone()))).collect();
        let c = TestCluster { nodes, setup };
        c.node(1).bootstrap(members).await.expect("bootstrap");
        c
    }

    /// The running cluster handle of node `id`.
    pub fn node(&self, id: NodeId) -> &Arc<Cluster> {
        self.nodes[id as usize - 1].cluster.as_ref().expect("node is running")
    }

    /// Ids of running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|n| n.cluster.is_some()).map(|n| n.id).collect()
    }

    /// Stops node `id` (its storage survives for `restart`).
    pub async fn kill(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some((stop, server)) = node.server.take() {
            // A graceful stop would wait for peers to close their connections; a killed node does not.
            let _ = stop.send(());
            server.abort();
            let _ = server.await;
        }
        if let Some(c) = node.cluster.take() {
            c.shutdown().await.expect("shutdown");
        }
    }

    /// Power cut of nodes `ids` at once (`Backing::Faulty` only): each stops serving, every byte
    /// its file system had not made durable is dropped (open handles stop working), then what is
    /// left of the node is stopped. `restart` reopens the storage from what survived. Answers how
    /// many bytes the crash dropped on each node (data written but not yet fsynced).
    pub async fn crash(&mut self, ids: &[NodeId]) -> Vec<u64> {
        // The power cut comes first, while the nodes run (appends in flight, fsyncs pending);
        // then what is left of them stops.
        let mut dropped = Vec::new();
        for id in ids {
            let fs = self.nodes[*id as usize - 1].fs.as_ref().expect("crash needs Backing::Faulty");
            let before: Vec<(std::path::PathBuf, Vec<u8>)> =
                fs.list_files().into_iter().filter_map(|f| fs.file_bytes(&f).map(|b| (f, b))).collect();
            fs.crash();
            // Bytes that read differently now (rewritten or cut off), over every file.
            let lost: u64 = before
                .iter()
                .map(|(f, old)| {
                    let now = fs.file_bytes(f).unwrap_or_default();
                    let differing = old.iter().zip(&now).filter(|(a, b)| a != b).count();
                    (differing + old.len().saturating_sub(now.len())) as u64
                })
                .sum();
            dropped.push(lost);
        }
        for id in ids {
            let node = &mut self.nodes[*id as usize - 1];
            if let Some((stop, server)) = node.server.take() {
                let _ = stop.send(());
                server.abort();
                let _ = server.await;
            }
            if let Some(c) = node.cluster.take() {
                // Its storage handles are dead: the groups fail; only stopping them matters.
                let _ = c.shutdown().await;
            }
        }
        dropped
    }

    /// Restarts node `id` on its old address and storage (a disk storage is reopened).
    pub async fn restart(&mut self, id: NodeId) {
        let setup = self.setup.clone();
        let node = &mut self.nodes[id as usize - 1];
        if let (Backing::Disk(o), Some(dir)) = (&setup.backing, &node.dir) {
            let path = dir.path().to_path_buf();
            node.storage = Arc::new(MemoryStorage::new());
            node.storage = Arc::new(reopen(|| Storage::open_with(&path, o.clone())).await);
        }
        if let (Backing::Faulty(o), Some(fs)) = (&setup.backing, &node.fs) {
            node.storage = Arc::new(MemoryStorage::new());
            node.storage =
                Arc::new(reopen(|| Storage::open_with_fs(FAULTY_ROOT, o.clone(), Arc::new(fs.clone()))).await);
        }
        let listener = TcpListener::bind(&node.addr).await.expect("rebind");
        serve(node, listener, &setup).await.expect("restart node");
    }

    /// The metadata leader (waits for one).
    pub async fn metadata_leader(&self) -> NodeId {
        wait_for("a metadata leader", || async {
            self.running().into_iter().find(|id| self.node(*id).metadata_leader().map(|(l, _)| l) == Some(*id))
        })
        .await
    }

    /// Creates a topic through the metadata leader.
    pub async fn create_topic(&self, name: &str, partitions: u32, rf: u32) -> shale_raft::cluster::TopicInfo {
        let leader = self.metadata_leader().await;
        self.node(leader).create_topic(spec(name, partitions, rf)).await.expect("create topic")
    }

    /// What node `id` reports of its group of `topic`/`partition` (`None`: it does not run it).
    pub fn partition_status(&self, id: NodeId, topic: &str, partition: u32) -> Option<GroupStatus> {
        let status = self.node(id).cluster_status();
        status.partitions.into_iter().find(|g| g.partition.as_ref().is_some_and(|(t, p)| t == topic && *p == partition))
    }

    /// Waits until every replica of every partition of `topic` runs its group and agrees on a
    /// leader; returns the leader of each partition.
    pub async fn wait_partition_leaders(&self, topic: &str) -> Vec<NodeId> {
        wait_for("partition leaders", || async {
            let any = self.running()[0];
            let info = self.node(any).local_topics().into_iter().find(|t| t.name == topic)?;
            let mut leaders = Vec::new();
            for a in &info.partitions {
                let mut seen = None;
                for r in &a.replicas {
                    if !self.running().contains(r) {
                        continue;
                    }
                    // The replica runs the group (`leader_of` alone answers the preferred replica
                    // from the metadata on a node that has not started it yet).
                    self.partition_status(*r, topic, a.partition)?;
                    let (l, _) = self.node(*r).leader_of(topic, a.partition)?;
                    if seen.is_some_and(|s| s != l) {
                        return None;
                    }
                    seen = Some(l);
                }
                let l = seen?;
                if !self.running().contains(&l) {
                    return None;
                }
                // The leader must know it leads and have a quorum confirm it (read-index).
                if self.node(l).leader_of(topic, a.partition).map(|x| x.0) != Some(l) {
                    return None;
                }
                self.node(l).end_offsets(topic, a.partition).await.ok()?;
                leaders.push(l);
            }
            Some(leaders)
        })
        .await
    }

    /// Waits until every partition of `topic` is led by its preferred (first) replica, which the
    /// reconcile loop hands leadership to; returns the leaders.
    pub async fn settled_leaders(&self, topic: &str) -> Vec<NodeId> {
        wait_for("preferred leaders", || async {
            let any = self.running()[0];
            let info = self.node(any).local_topics().into_iter().find(|t| t.name == topic)?;
            let preferred: Vec<NodeId> = info.partitions.iter().map(|p| p.replicas[0]).collect();
            let leaders = self.wait_partition_leaders(topic).await;
            (leaders == preferred).then_some(leaders)
        })
        .await
    }

    /// Produces through the partition's current leader, following `NotLeader` answers.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<ProduceRecord>,
        producer: Option<ProducerInfo>,
    ) -> Result<Vec<BatchAck>, ClusterError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut target = self.running()[0];
        loop {
            match self.node(target).produce(topic, partition, records.clone(), producer).await {
                Err(ClusterError::NotLeader { leader }) if tokio::time::Instant::now() < deadline => {
                    match leader.map(|(id, _)| id).filter(|id| self.running().contains(id)) {
                        Some(id) if id != target => target = id,
                        _ => {
                            // Leader unknown or down: try the next running node after a short pause.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            let r = self.running();
                            let pos = r.iter().position(|x| *x == target).unwrap_or(0);
                            target = r[(pos + 1) % r.len()];
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Every visible record of a partition as node `id` serves it, from offset 0.
    pub async fn read_all(&self, id: NodeId, topic: &str, partition: u32) -> Vec<Consumed> {
        self.try_read_all(id, topic, partition).await.expect("fetch")
    }

    /// Every visible record from `from` on, as node `id` serves it.
    pub async fn read_all_from(&self, id: NodeId, topic: &str, partition: u32, from: u64) -> Vec<Consumed> {
        self.try_read_from(id, topic, partition, from).await.expect("fetch")
    }

    /// As `read_all`, but a failed fetch is returned.
    pub async fn try_read_all(&self, id: NodeId, topic: &str, partition: u32) -> Result<Vec<Consumed>, ClusterError> {
        self.try_read_from(id, topic, partition, 0).await
    }

    /// Every visible record from `from` on, or the first failed fetch. Reads as a verifying
    /// client does: the first fetch by offset, then on from each answer's `next_index`, and
    /// recomputes every entry's chain hash from the answer's `prev_chain_hash`, asserting that
    /// consecutive answers chain.
    pub async fn try_read_from(
        &self,
        id: NodeId,
        topic: &str,
        partition: u32,
        from: u64,
    ) -> Result<Vec<Consumed>, ClusterError> {
        let mut out = Vec::new();
        let mut offset = from;
        let mut from_index = None;
        let mut chained: Option<ChainHash> = None;
        loop {
            let req = FetchRequest {
                topic: topic.into(),
                partition,
                offset,
                from_index,
                max_bytes: 1 << 20,
                wait: Duration::ZERO,
                check: ReadCheck::Chain,
            };
            let res = self.node(id).fetch(req).await?;
            if res.entries.is_empty() {
                return Ok(out);
            }
            if from_index.is_some() {
                assert_eq!(res.prev_chain_hash, chained, "a continued fetch chains on from the previous one");
            }
            let (records, head) = decode_fetch(&res, offset);
            out.extend(records);
            chained = Some(head);
            offset = res.next_offset;
            from_index = Some(res.next_index);
            if offset >= res.high_watermark {
                return Ok(out);
            }
        }
    }

    /// Safety: every running replica has the same chain hash at every log index it applied, once
    /// each has applied the record at `last_offset` (Raft's own entries included).
    pub async fn check_replicas_agree(&self, topic: &str, partition: u32, last_offset: u64) {
        wait_for("every replica agrees on every chain hash", || async {
            // Compare only once every replica has applied `last_offset`, and only up to the
            // smallest applied index: below its applied index a replica's log is committed, so any
            // difference there is a real divergence.
            let mut applied = u64::MAX;
            for id in self.running() {
                if self.node(id).local_partition_state(topic, partition).ok()?.high_watermark? <= last_offset {
                    return None;
                }
                let status = self.node(id).cluster_status();
                let group = status.partitions.iter().find(|g| g.partition == Some((topic.to_string(), partition)))?;
                applied = applied.min(group.applied_index);
            }
            for index in 0..=applied {
                let mut hashes = Vec::new();
                for id in self.running() {
                    hashes.push(self.node(id).verify(topic, partition, index).ok()?);
                }
                assert!(hashes.iter().all(|h| *h == hashes[0]), "{topic}/{partition} index {index}: {hashes:?}");
            }
            Some(())
        })
        .await
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.kill(id).await;
        }
    }
}

/// A topic spec with no retention and no compression.
pub fn spec(name: &str, partitions: u32, rf: u32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        replication_factor: rf,
        retention: RetentionPolicy::default(),
        codec: CodecKind::None,
    }
}

/// A record with a key, a value and one header.
pub fn record(key: &str, value: &str) -> ProduceRecord {
    ProduceRecord {
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: vec![("trace".into(), Bytes::copy_from_slice(key.as_bytes()))],
        timestamp_ms: None,
    }
}

/// Reopens a stopped node's storage. The stopped node's last tasks (a request its server was
/// still answering when it was cut off, a group start finishing) may hold the old storage a
/// moment after its cluster is shut down and dropped (a real node's process exit frees it at
/// once): wait for its directory lock, bounded by [`WAIT`] (a handle kept for good still fails).
async fn reopen(open: impl Fn() -> Result<Storage, shale_storage::StorageError>) -> Storage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open() {
            Ok(s) => return s,
            Err(shale_storage::StorageError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("reopen storage: {e}"),
        }
    }
}

/// Polls `check` every 20 ms until it yields `Some`, failing the test after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One record as a consumer sees it, decoded from a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub offset: u64,
    /// The log index of the entry holding it.
    pub entry_index: u64,
    /// The chain hash of that entry, recomputed from the fetched bytes.
    pub chain_hash: ChainHash,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub timestamp_ms: u64,
}

/// The records at or past `offset` of a fetch's visible batches, and the chain hash of its last
/// entry, recomputed from `prev_chain_hash` and the stored bytes.
pub fn decode_fetch(res: &FetchResult, offset: u64) -> (Vec<Consumed>, ChainHash) {
    let codecs = CodecRegistry::new();
    let mut prev = res.prev_chain_hash.unwrap_or(ChainHash::ZERO);
    let mut out = Vec::new();
    for (i, e) in res.entries.iter().enumerate() {
        if i > 0 {
            assert_eq!(e.index, res.entries[i - 1].index + 1, "entries are consecutive");
        }
        let hash = chain_hash(Offset::new(e.index), &prev, &e.data);
        prev = hash;
        if e.hidden || e.data[envelope::KIND_AT] != envelope::KIND_NORMAL {
            continue;
        }
        let (_, records) =
            record_batch::decode_batch(&e.data.slice(envelope::HEADER_LEN..), &codecs).expect("a stored batch");
        out.extend(records.into_iter().filter(|r| r.offset >= offset).map(|r| Consumed {
            offset: r.offset,
            entry_index: e.index,
            chain_hash: hash,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms,
        }));
    }
    (out, prev)
}

/// One acknowledged record: its offset and the chain hash of the entry holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordAck {
    pub offset: u64,
    pub entry_index: u64,
    pub chain_hash: ChainHash,
}

/// The acknowledgement of every record of a produce, in order.
pub fn per_record(acks: &[BatchAck]) -> Vec<RecordAck> {
    acks.iter()
        .flat_map(|a| {
            (0..u64::from(a.record_count)).map(move |i| RecordAck {
                offset: a.base_offset + i,
                entry_index: a.entry_index,
                chain_hash: a.chain_hash,
            })
        })
        .collect()
}

/// One acknowledged record.
#[derive(Clone, Debug)]
pub struct Acked {
    pub offset: u64,
    pub chain_hash: ChainHash,
    pub value: Bytes,
}

/// A producer writing batches of `batch` records to partition 0 of `topic` through whichever node
/// accepts them, until stopped; every acknowledged record goes into the shared list.
pub struct BackgroundProducer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    acked: Arc<Mutex<Vec<Acked>>>,
    nodes: Arc<Mutex<Vec<Arc<Cluster>>>>,
}

impl BackgroundProducer {
    pub fn start(nodes: Vec<Arc<Cluster>>, topic: &str, batch: usize, tag: &str) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let out = acked.clone();
        let nodes = Arc::new(Mutex::new(nodes));
        let current = nodes.clone();
        let tag = tag.to_string();
        let topic = topic.to_string();
        let task = tokio::spawn(async move {
            let mut batch_no = 0u64;
            while !*stop_rx.borrow() {
                let nodes = current.lock().clone();
                let values: Vec<String> = (0..batch).map(|i| format!("{tag}-{batch_no:06}-{i}")).collect();
                batch_no += 1;
                let records: Vec<_> = values.iter().map(|v| record("k", v)).collect();
                let mut done = false;
                for node in &nodes {
                    match node.produce(&topic, 0, records.clone(), None).await {
                        Ok(offsets) => {
                            let mut a = out.lock();
                            for (o, v) in per_record(&offsets).into_iter().zip(&values) {
                                a.push(Acked {
                                    offset: o.offset,
                                    chain_hash: o.chain_hash,
                                    value: Bytes::from(v.clone()),
                                });
                            }
                            done = true;
                            break;
                        }
                        // Not the leader, or a node that crashed: try the next one.
                        Err(_) => continue,
                    }
                }
                if !done {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { stop, task, acked, nodes }
    }

    /// The nodes to write through from now on (a restarted node is a new `Cluster`).
    pub fn set_nodes(&self, nodes: Vec<Arc<Cluster>>) {
        *self.nodes.lock() = nodes;
    }

    pub fn count(&self) -> usize {
        self.acked.lock().len()
    }

    pub async fn wait_for_more(&self, more: usize) {
        let target = self.count() + more;
        wait_for("more acknowledged records", || async { (self.count() >= target).then_some(()) }).await;
    }

    pub async fn stop(self) -> Vec<Acked> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.acked.lock().clone()
    }
}
