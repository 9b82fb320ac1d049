//! An in-process three-node cluster (disk storage in a temp dir, real gRPC on 127.0.0.1) and a way
//! to run the real `shale` binary against it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use shale_node::{Node, NodeConfig, NodeHandle, StorageKind};
use tokio::net::TcpListener;

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Three (or `n`) real nodes.
pub struct TestCluster {
    nodes: Vec<Option<NodeHandle>>,
    grpc: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    peers: BTreeMap<u64, String>,
    dirs: Vec<PathBuf>,
    _root: tempfile::TempDir,
}

fn node_config(id: u64, peers: &BTreeMap<u64, String>, dir: PathBuf) -> NodeConfig {
    NodeConfig {
        node_id: id,
        peers: peers.clone(),
        data_dir: dir,
        storage: StorageKind::Disk,
        shutdown_grace_ms: 2_000,
        ..NodeConfig::default()
    }
}

impl TestCluster {
    /// Starts `n` nodes on 127.0.0.1:0 and waits until each sees a metadata leader.
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

    /// `host:port,host:port,...` of every node.
    pub fn bootstrap(&self) -> String {
        self.grpc.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.dirs[id as usize - 1]
    }

    /// Stops node `id` gracefully.
    pub async fn stop(&mut self, id: u64) {
        let node = self.nodes[id as usize - 1].take().expect("node is running");
        node.shutdown().await.expect("clean shutdown");
    }

    /// Restarts a stopped node on its old port and data dir and waits for a metadata leader.
    pub async fn restart(&mut self, id: u64) {
        let i = id as usize - 1;
        let g = TcpListener::bind(self.grpc[i]).await.expect("rebind grpc");
        let h = TcpListener::bind(self.http[i]).await.expect("rebind http");
        let config = node_config(id, &self.peers, self.dirs[i].clone());
        let node = Node::start_on(config, g, h).await.expect("node restarts");
        assert!(node.wait_ready(WAIT).await, "node {id} never saw a metadata leader after restart");
        self.nodes[i] = Some(node);
    }

    /// Starts one more node (id = current count + 1) that is not a member yet: it knows the others
    /// as peers but does not bootstrap; `shale cluster add-node` makes it a member. Returns its
    /// gRPC address.
    pub async fn start_joiner(&mut self) -> String {
        let id = self.nodes.len() as u64 + 1;
        let g = TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
        let h = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let addr = g.local_addr().unwrap();
        let mut peers = self.peers.clone();
        peers.insert(id, addr.to_string());
        let dir = self._root.path().join(format!("node-{id}"));
        let config = node_config(id, &peers, dir.clone());
        self.nodes.push(Some(Node::start_on(config, g, h).await.expect("joiner starts")));
        self.grpc.push(addr);
        self.http.push(self.nodes.last().unwrap().as_ref().unwrap().http_addr);
        self.dirs.push(dir);
        addr.to_string()
    }

    /// Runs `shale ARGS --bootstrap <this cluster>` with `stdin`, off the async runtime.
    pub async fn shale(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push("--bootstrap".into());
        full.push(self.bootstrap());
        // Generous retries: the tests share two cores with whole clusters electing leaders.
        full.push("--attempts".into());
        full.push("20".into());
        run_shale(full, stdin.to_vec()).await
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].take() {
                n.shutdown().await.expect("clean shutdown");
            }
        }
    }
}

/// Runs the `shale` binary with `args` and `stdin`, on a blocking thread.
pub async fn run_shale(args: Vec<String>, stdin: Vec<u8>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("shale"));
        cmd.args(&args)
            .env_remove("SHALE_BOOTSTRAP")
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn shale");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(&stdin).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("shale runs")
    })
    .await
    .expect("blocking task")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code `code`, showing both streams otherwise.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}
