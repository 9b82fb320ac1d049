//! A small in-process cluster for the core tests: every node has its own disk `Storage` in a temp
//! dir, its own `Router` and a real tonic server on 127.0.0.1, and runs one group with
//! [`ListApp`], an application that keeps every payload it applied.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use shale_raft::{
    GroupId, NetworkConfig, Node, NodeId, RaftGroup, RaftGroupConfig, RestoreError, Retention, Router, StateMachineApp,
};
use shale_storage::{CheckpointPolicy, Storage, StorageBackend, StorageOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub const GROUP: GroupId = GroupId(3);

/// The applied payloads of one replica, shared with the test.
pub type AppliedList = Arc<Mutex<Vec<(u64, Bytes)>>>;

/// Keeps every (index, payload) it applied; responds with the index (8 bytes LE).
pub struct ListApp {
    applied: AppliedList,
}

impl ListApp {
    /// An app recording into `applied`.
    pub fn new(applied: AppliedList) -> Self {
        Self { applied }
    }
}

impl StateMachineApp for ListApp {
    fn apply(&mut self, index: u64, payload: &Bytes) -> Bytes {
        self.applied.lock().push((index, payload.clone()));
        Bytes::copy_from_slice(&index.to_le_bytes())
    }

    fn snapshot(&self) -> Bytes {
        let list = self.applied.lock();
        let mut out = BytesMut::new();
        out.put_u64_le(list.len() as u64);
        for (i, p) in list.iter() {
            out.put_u64_le(*i);
            out.put_u32_le(p.len() as u32);
            out.put_slice(p);
        }
        out.freeze()
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let mut list = Vec::new();
        let b = snapshot.as_ref();
        let take = |at: &mut usize, n: usize| -> Result<&[u8], RestoreError> {
            let s = b.get(*at..*at + n).ok_or("truncated list snapshot")?;
            *at += n;
            Ok(s)
        };
        let mut at = 0;
        let n = u64::from_le_bytes(take(&mut at, 8)?.try_into()?);
        for _ in 0..n {
            let i = u64::from_le_bytes(take(&mut at, 8)?.try_into()?);
            let len = u32::from_le_bytes(take(&mut at, 4)?.try_into()?) as usize;
            list.push((i, Bytes::copy_from_slice(take(&mut at, len)?)));
        }
        if at != b.len() {
            return Err("trailing bytes in list snapshot".into());
        }
        *self.applied.lock() = list;
        Ok(())
    }
}

pub fn group_config() -> RaftGroupConfig {
    RaftGroupConfig {
        heartbeat_interval_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_every_entries: 0,
        retention: Retention::SnapshotOnly,
        ..Default::default()
    }
}

/// Small segments so compaction really removes records in tests.
pub fn storage_options() -> StorageOptions {
    StorageOptions { max_segment_bytes: 8192, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

/// One node: storage dir, router, gRPC server, group.
pub struct TestNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub group: Option<Arc<RaftGroup>>,
    pub applied: AppliedList,
    pub options: StorageOptions,
    /// The node's transport settings.
    pub network: NetworkConfig,
    /// The node's router while it runs.
    pub router: Option<Arc<Router>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestNode {
    pub fn group(&self) -> &Arc<RaftGroup> {
        self.group.as_ref().expect("node is running")
    }

    pub fn node(&self) -> Node {
        Node::new(self.addr.to_string())
    }

    /// Starts (or restarts) the node on `listener` from its data dir.
    async fn start(&mut self, listener: TcpListener, config: RaftGroupConfig) {
        let router = Router::new(self.id, self.network.clone()).expect("router");
        let (tx, rx) = oneshot::channel::<()>();
        let service = router.grpc_service();
        // Replication is many small request/response exchanges: no Nagle delays.
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
            s.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        });
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
                .expect("grpc server");
        });
        let storage: Arc<dyn StorageBackend> = Arc::new(open_storage(&self.dir, self.options.clone()).await);
        self.applied = Arc::new(Mutex::new(Vec::new()));
        let app = Box::new(ListApp { applied: self.applied.clone() });
        let group = router.start_group(GROUP, storage, app, config).await.expect("start group");
        self.group = Some(group);
        self.router = Some(router);
        self.server = Some((tx, server));
    }

    /// Stops the group and the server; the data dir stays.
    pub async fn stop(&mut self) {
        tracing::info!(node = self.id, "stopping group");
        // As a node's shutdown does: refuse new groups (and end the multiplexed replication calls
        // this node serves, so peers reach whatever serves this address next), then stop the group.
        if let Some(router) = self.router.take() {
            router.close();
        }
        if let Some(g) = self.group.take() {
            g.shutdown().await.expect("group shutdown");
        }
        tracing::info!(node = self.id, "stopping server");
        if let Some((tx, handle)) = self.server.take() {
            let _ = tx.send(());
            // Graceful shutdown sends GOAWAY (peers open new connections for new calls) and waits
            // for open calls; a peer's long-lived stream may keep one open, so cut it short like a
            // crash would.
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), handle).await.is_err() {
                tracing::info!(node = self.id, "server still draining after 1 s; aborting it");
                abort.abort();
            }
        }
        tracing::info!(node = self.id, "stopped");
    }

    /// Restarts a stopped node on its old address from its data dir.
    pub async fn restart(&mut self, config: RaftGroupConfig) {
        assert!(self.group.is_none(), "restart a stopped node");
        let listener = bind_with_retry(self.addr).await;
        self.start(listener, config).await;
    }
}

/// Opens the node's storage; a previous incarnation may still be releasing its directory lock
/// (its last tasks drop their handles asynchronously), so wait for that, bounded by [`WAIT`].
async fn open_storage(dir: &std::path::Path, options: StorageOptions) -> Storage {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Storage::open_with(dir, options.clone()) {
            Ok(s) => return s,
            Err(shale_storage::StorageError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open storage at {}: {e}", dir.display()),
        }
    }
}

async fn bind_with_retry(addr: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("rebind {addr}: {e}"),
        }
    }
}

/// An in-process cluster of `n` nodes (ids 1..=n) running one group.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    _dirs: Vec<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts `n` nodes and initializes the group with all of them as voters.
    pub async fn start(n: u64, config: RaftGroupConfig) -> Self {
        Self::start_with(n, config, storage_options()).await
    }

    /// As [`TestCluster::start`], with these storage options on every node.
    pub async fn start_with(n: u64, config: RaftGroupConfig, options: StorageOptions) -> Self {
        // Small snapshot chunks so snapshot transfers in tests span many messages.
        let network = NetworkConfig { snapshot_chunk_bytes: 16 << 10, ..NetworkConfig::default() };
        Self::start_with_network(n, config, options, network).await
    }

    /// As [`TestCluster::start_with`], with these transport settings on every node.
    pub async fn start_with_network(
        n: u64,
        config: RaftGroupConfig,
        options: StorageOptions,
        network: NetworkConfig,
    ) -> Self {
        init_tracing();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        let mut listeners = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().expect("tempdir");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            nodes.push(TestNode {
                id,
                addr,
                dir: dir.path().to_path_buf(),
                group: None,
                applied: Arc::default(),
                options: options.clone(),
                network: network.clone(),
                router: None,
                server: None,
            });
            dirs.push(dir);
            listeners.push(listener);
        }
        for (node, listener) in nodes.iter_mut().zip(listeners) {
            node.start(listener, config.clone()).await;
        }
        let members: BTreeMap<NodeId, Node> = nodes.iter().map(|n| (n.id, n.node())).collect();
        nodes[0].group().initialize(members).await.expect("initialize");
        let c = Self { nodes, _dirs: dirs };
        c.wait_leader(&[]).await;
        c
    }

    pub fn node(&mut self, id: NodeId) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn running(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().filter(|n| n.group.is_some())
    }

    /// Waits until every running node (except `excluding`) agrees on one leader that is running;
    /// returns its id.
    pub async fn wait_leader(&self, excluding: &[NodeId]) -> NodeId {
        let first = self.running().next().expect("a running node");
        let m = first
            .group()
            .wait_metrics("a leader", WAIT, |m| m.current_leader.is_some_and(|l| !excluding.contains(&l)))
            .await
            .expect("leader elected");
        let leader = m.current_leader.expect("leader");
        // The leader itself must have won its election (committed vote) and committed an entry
        // of its own term, so it accepts writes.
        let lg = self.nodes.iter().find(|n| n.id == leader).expect("leader node").group();
        lg.wait_metrics("leader established", WAIT, |m| {
            m.state == openraft::ServerState::Leader
                && m.vote.committed
                && m.current_leader == Some(leader)
                && m.local_committed.is_some_and(|c| c.leader_id == m.vote.leader_id)
        })
        .await
        .expect("leader established");
        for n in self.running() {
            n.group()
                .wait_metrics("same leader everywhere", WAIT, |m| m.current_leader == Some(leader))
                .await
                .expect("all nodes see the leader");
        }
        leader
    }

    pub fn leader_group(&self, leader: NodeId) -> Arc<RaftGroup> {
        self.nodes.iter().find(|n| n.id == leader).expect("leader node").group().clone()
    }

    /// Waits until every running node applied `index`.
    pub async fn wait_applied_everywhere(&self, index: u64) {
        for n in self.running() {
            n.group().wait_applied(index, WAIT).await.unwrap_or_else(|e| panic!("node {} applies {index}: {e}", n.id));
        }
    }

    /// Asserts that every pair of running replicas has the same chain hash at every index both
    /// still store, and the same record there; returns how many indexes were compared.
    pub async fn assert_chains_agree(&self) -> u64 {
        let mut compared = 0;
        let running: Vec<&TestNode> = self.running().collect();
        for a in &running {
            for b in &running {
                if a.id >= b.id {
                    continue;
                }
                let (ga, gb) = (a.group(), b.group());
                let start = ga.log_start().unwrap().max(gb.log_start().unwrap());
                let end = ga.next_index().unwrap().min(gb.next_index().unwrap());
                for i in start..end {
                    assert_eq!(
                        ga.chain_hash_at(i).unwrap(),
                        gb.chain_hash_at(i).unwrap(),
                        "nodes {} and {} disagree at index {i}",
                        a.id,
                        b.id
                    );
                    compared += 1;
                }
            }
        }
        compared
    }

    pub async fn stop_all(&mut self) {
        for n in &mut self.nodes {
            n.stop().await;
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn payload(i: u64, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64_le(i);
    while b.len() < len {
        b.put_u8((i as u8).wrapping_add(b.len() as u8));
    }
    b.freeze()
}
