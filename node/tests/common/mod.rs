//! An in-process cluster of real nodes (disk storage in a temp dir, real gRPC on 127.0.0.1).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shale_client::{Client, ClientConfig};
use shale_node::{Node, NodeConfig, NodeHandle, StorageKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct TestCluster {
    pub nodes: Vec<Option<NodeHandle>>,
    pub grpc: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub peers: BTreeMap<u64, String>,
    dirs: Vec<PathBuf>,
    _root: tempfile::TempDir,
}

pub fn node_config(id: u64, peers: &BTreeMap<u64, String>, dir: PathBuf) -> NodeConfig {
    let mut c = NodeConfig {
        node_id: id,
        peers: peers.clone(),
        data_dir: dir,
        storage: StorageKind::Disk,
        shutdown_grace_ms: 2_000,
        ..NodeConfig::default()
    };
    c.limits.max_record_bytes = 64 * 1024;
    c
}

impl TestCluster {
    /// Starts `n` nodes and waits until each sees a metadata leader.
    pub async fn start(n: u64) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("temp dir");
        let mut grpc_listeners = Vec::new();
        let mut http_listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in 1..=n {
            let g = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
            let h = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
            peers.insert(id, g.local_addr().unwrap().to_string());
            grpc_listeners.push(g);
            http_listeners.push(h);
        }
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            grpc: grpc_listeners.iter().map(|l| l.local_addr().unwrap()).collect(),
            http: http_listeners.iter().map(|l| l.local_addr().unwrap()).collect(),
            peers: peers.clone(),
            dirs: (1..=n).map(|id| root.path().join(format!("node-{id}"))).collect(),
            _root: root,
        };
        for (i, (g, h)) in grpc_listeners.into_iter().zip(http_listeners).enumerate() {
            let config = node_config(i as u64 + 1, &peers, cluster.dirs[i].clone());
            cluster.nodes.push(Some(Node::start_on(config, g, h).await.expect("node starts")));
        }
        for node in cluster.nodes.iter().flatten() {
            assert!(node.wait_ready(WAIT).await, "node {} never saw a metadata leader", node.node_id);
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.grpc.iter().map(ToString::to_string).collect()
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
        self.nodes[id as usize - 1].as_ref().expect("node is running")
    }

    /// Stops node `id` (gracefully, as SIGTERM would).
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1].take().expect("node is running");
        node.shutdown().await.expect("clean shutdown");
    }

    /// Restarts a stopped node on its old port and data dir.
    pub async fn restart(&mut self, id: u64) {
        let i = id as usize - 1;
        assert!(self.nodes[i].is_none(), "node {id} is running");
        let g = TcpListener::bind(self.grpc[i]).await.expect("rebind grpc");
        let h = TcpListener::bind(self.http[i]).await.expect("rebind http");
        let config = node_config(id, &self.peers, self.dirs[i].clone());
        self.nodes[i] = Some(Node::start_on(config, g, h).await.expect("node restarts"));
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].take() {
                n.shutdown().await.expect("clean shutdown");
            }
        }
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
