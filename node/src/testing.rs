//! In-process clusters of real nodes, for tests: each node has its own gRPC and HTTP listeners on
//! 127.0.0.1 (ports picked by the OS, kept across restarts) and its own data directory under a
//! root the caller owns. Used by this crate's tests and by the CLI's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{NodeConfig, StorageKind};
use crate::error::NodeError;
use crate::node::{Listeners, Node, NodeHandle};

/// Nodes `1..=n` of one cluster, running in this process. Index `i` of every vector is node `i + 1`.
#[derive(Debug)]
pub struct LocalCluster {
    /// The running nodes (`None` while stopped).
    pub nodes: Vec<Option<NodeHandle>>,
    /// Each node's gRPC address (its client listener).
    pub grpc: Vec<SocketAddr>,
    /// Each node's internal listener, in a cluster started with separate listeners
    /// ([`LocalCluster::start_split`]); empty otherwise.
    pub internal: Vec<SocketAddr>,
    /// Each node's HTTP address.
    pub http: Vec<SocketAddr>,
    /// Each node's Kafka listener (advertised to Kafka clients as this address).
    pub kafka: Vec<SocketAddr>,
    /// The bootstrap members: node id to internal address (the gRPC address with one listener).
    pub peers: BTreeMap<u64, String>,
    /// Each node's data directory.
    pub dirs: Vec<PathBuf>,
    root: PathBuf,
    configure: fn(&mut NodeConfig),
    /// Each node's `[tls]` files when the cluster runs with TLS ([`LocalCluster::start_tls`]).
    tls: Option<Vec<crate::config::TlsFiles>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, l: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, NodeError> {
    l.local_addr().map_err(|source| NodeError::Bind { what, addr: asked, source })
}

const ANY_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl LocalCluster {
    /// Starts nodes `1..=n` on disk storage under `root/node-{id}`, each with the default
    /// configuration passed through `configure`. Does not wait for a leader: see
    /// [`LocalCluster::not_ready`].
    pub async fn start(n: u64, root: &Path, configure: fn(&mut NodeConfig)) -> Result<Self, NodeError> {
        Self::start_inner(n, root, configure, None, false).await
    }

    /// As [`LocalCluster::start`], each node with a separate internal listener (Raft, forwarding;
    /// `peers` name it) beside its client listener; with `tls`, as [`LocalCluster::start_tls`].
    pub async fn start_split(
        n: u64,
        root: &Path,
        tls: bool,
        configure: fn(&mut NodeConfig),
    ) -> Result<Self, NodeError> {
        let files = if tls {
            let ids: Vec<u64> = (1..=n).collect();
            Some(crate::tls::write_local_certs(&root.join("tls"), &ids)?)
        } else {
            None
        };
        Self::start_inner(n, root, configure, files, true).await
    }

    /// As [`LocalCluster::start`], with TLS: a fresh CA and node certificates in `root/tls`
    /// ([`crate::tls::write_local_certs`]); clients connect with [`LocalCluster::client_tls`].
    pub async fn start_tls(n: u64, root: &Path, configure: fn(&mut NodeConfig)) -> Result<Self, NodeError> {
        let ids: Vec<u64> = (1..=n).collect();
        let files = crate::tls::write_local_certs(&root.join("tls"), &ids)?;
        Self::start_inner(n, root, configure, Some(files), false).await
    }

    /// The directory of the TLS cluster's CA and certificates (`root/tls`).
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The client side of the cluster's TLS: trusts its CA, presents no certificate.
    pub fn client_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        let files = self.tls.as_ref()?.first()?;
        let ca = std::fs::read(&files.ca).ok()?;
        Some(tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca)))
    }

    async fn start_inner(
        n: u64,
        root: &Path,
        configure: fn(&mut NodeConfig),
        tls: Option<Vec<crate::config::TlsFiles>>,
        split: bool,
    ) -> Result<Self, NodeError> {
        let mut listeners = Vec::new();
        let mut peers = BTreeMap::new();
        for id in 1..=n {
            let g = bind("grpc", ANY_PORT).await?;
            let h = bind("http", ANY_PORT).await?;
            let i = if split { Some(bind("internal", ANY_PORT).await?) } else { None };
            let k = bind("kafka", ANY_PORT).await?;
            let to_peers = i.as_ref().unwrap_or(&g);
            peers.insert(id, local_addr("grpc", to_peers, ANY_PORT)?.to_string());
            listeners.push((g, i, h, k));
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            grpc: Vec::new(),
            internal: Vec::new(),
            http: Vec::new(),
            kafka: Vec::new(),
            peers,
            dirs: (1..=n).map(|id| root.join(format!("node-{id}"))).collect(),
            root: root.to_path_buf(),
            configure,
            tls,
        };
        for (n, (g, i, h, k)) in listeners.into_iter().enumerate() {
            cluster.grpc.push(local_addr("grpc", &g, ANY_PORT)?);
            cluster.http.push(local_addr("http", &h, ANY_PORT)?);
            cluster.kafka.push(local_addr("kafka", &k, ANY_PORT)?);
            if let Some(i) = &i {
                cluster.internal.push(local_addr("internal", i, ANY_PORT)?);
            }
            let config = cluster.config(n as u64 + 1, &cluster.peers, cluster.dirs[n].clone());
            let listeners = Listeners { client: g, internal: i, http: h, kafka: Some(k) };
            cluster.nodes.push(Some(Node::start_with(config, listeners).await?));
        }
        Ok(cluster)
    }

    fn config(&self, id: u64, peers: &BTreeMap<u64, String>, dir: PathBuf) -> NodeConfig {
        let mut c = NodeConfig {
            node_id: id,
            peers: peers.clone(),
            data_dir: dir,
            storage: StorageKind::Disk,
            shutdown_grace_ms: 2_000,
            tls: self.tls.as_ref().and_then(|t| t.get(id as usize - 1).cloned()),
            ..NodeConfig::default()
        };
        (self.configure)(&mut c);
        c
    }

    /// The running nodes that saw no metadata leader within `timeout` (empty: all did).
    pub async fn not_ready(&self, timeout: Duration) -> Vec<u64> {
        let mut late = Vec::new();
        for node in self.nodes.iter().flatten() {
            if !node.wait_ready(timeout).await {
                late.push(node.node_id);
            }
        }
        late
    }

    /// Every node's Kafka address, as a Kafka client's `bootstrap.servers`.
    pub fn kafka_bootstrap(&self) -> String {
        self.kafka.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    /// Every node's gRPC address, as a client's bootstrap list.
    pub fn endpoints(&self) -> Vec<String> {
        self.grpc.iter().map(ToString::to_string).collect()
    }

    /// Node `id`, if it is running.
    pub fn running(&self, id: u64) -> Option<&NodeHandle> {
        self.nodes.get(id as usize - 1).and_then(Option::as_ref)
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.dirs[id as usize - 1]
    }

    /// Stops node `id` gracefully (as SIGTERM would); nothing if it is not running.
    pub async fn stop(&mut self, id: u64) -> Result<(), NodeError> {
        match self.nodes[id as usize - 1].take() {
            Some(node) => node.shutdown().await,
            None => Ok(()),
        }
    }

    /// Starts node `id` again on its old ports and data directory (stopping it first if it runs).
    pub async fn restart(&mut self, id: u64) -> Result<&NodeHandle, NodeError> {
        self.stop(id).await?;
        let i = id as usize - 1;
        let g = bind("grpc", self.grpc[i]).await?;
        let h = bind("http", self.http[i]).await?;
        let internal = match self.internal.get(i) {
            Some(addr) => Some(bind("internal", *addr).await?),
            None => None,
        };
        let kafka = bind("kafka", self.kafka[i]).await?;
        let config = self.config(id, &self.peers, self.dirs[i].clone());
        let listeners = Listeners { client: g, internal, http: h, kafka: Some(kafka) };
        let node = self.nodes[i].insert(Node::start_with(config, listeners).await?);
        Ok(node)
    }

    /// Starts one more node (the next id) that is not a member: it knows the others as peers but
    /// does not bootstrap, so it joins once the cluster adds it. Returns its id.
    pub async fn start_joiner(&mut self) -> Result<u64, NodeError> {
        let id = self.nodes.len() as u64 + 1;
        let g = bind("grpc", ANY_PORT).await?;
        let h = bind("http", ANY_PORT).await?;
        let (grpc, http) = (local_addr("grpc", &g, ANY_PORT)?, local_addr("http", &h, ANY_PORT)?);
        let split = !self.internal.is_empty();
        let internal = if split { Some(bind("internal", ANY_PORT).await?) } else { None };
        let internal_addr = match &internal {
            Some(l) => Some(local_addr("internal", l, ANY_PORT)?),
            None => None,
        };
        let mut peers = self.peers.clone();
        peers.insert(id, internal_addr.unwrap_or(grpc).to_string());
        if self.tls.is_some() {
            let files = crate::tls::write_node_cert(&self.tls_dir(), id)?;
            self.tls.get_or_insert_default().push(files);
        }
        let dir = self.root.join(format!("node-{id}"));
        let k = bind("kafka", ANY_PORT).await?;
        let kafka = local_addr("kafka", &k, ANY_PORT)?;
        let config = self.config(id, &peers, dir.clone());
        let listeners = Listeners { client: g, internal, http: h, kafka: Some(k) };
        self.nodes.push(Some(Node::start_with(config, listeners).await?));
        self.kafka.push(kafka);
        self.internal.extend(internal_addr);
        self.grpc.push(grpc);
        self.http.push(http);
        self.dirs.push(dir);
        Ok(id)
    }

    /// Stops every running node; the first failure is returned after all were asked to stop.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        let mut result = Ok(());
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            if let Err(e) = node.shutdown().await
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result
    }
}
