//! Running a whole node in-process: storage, cluster, gRPC server, HTTP server and bootstrap.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shale_client::proto::admin_server::AdminServer;
use shale_client::proto::consumer_groups_server::ConsumerGroupsServer;
use shale_client::proto::fetch_server::FetchServer;
use shale_client::proto::produce_server::ProduceServer;
use shale_raft::cluster::{Cluster, ClusterConfig, ClusterError};
use shale_storage::StorageBackend;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::conn::KillableStream;

use crate::config::{ConfigError, NodeConfig};
use crate::context::NodeContext;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::services::admin::AdminService;
use crate::services::fetch::FetchService;
use crate::services::groups::GroupsService;
use crate::services::produce::ProduceService;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `grpc` or `http`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed to open or flush.
    #[error("storage: {0}")]
    Storage(#[source] shale_storage::StorageError),
    /// The cluster layer failed to start or stop.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// Starts nodes. See [`Node::start`].
#[derive(Debug)]
pub struct Node;

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// This node's id.
    pub node_id: u64,
    /// The bound gRPC address (client API and Raft transport).
    pub grpc_addr: SocketAddr,
    /// The address this node advertises to others.
    pub advertise_addr: String,
    /// The bound HTTP address (health, readiness, metrics).
    pub http_addr: SocketAddr,
    cluster: Arc<Cluster>,
    ctx: Arc<NodeContext>,
    storage: Arc<dyn StorageBackend>,
    shutdown_tx: watch::Sender<bool>,
    kill_tx: watch::Sender<bool>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: JoinHandle<std::io::Result<()>>,
    bootstrap_task: JoinHandle<()>,
    grace: Duration,
    ready_quorum_ack_max: Duration,
}

impl Node {
    /// Opens storage, starts the cluster layer, serves gRPC and HTTP, and (on the lowest-id peer)
    /// bootstraps the cluster in the background once every initial peer is reachable. Returns as
    /// soon as both servers listen; use [`NodeHandle::wait_ready`] to wait for a metadata leader.
    pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let grpc_listener = TcpListener::bind(config.grpc_listen).await.map_err(|source| NodeError::Bind {
            what: "grpc",
            addr: config.grpc_listen,
            source,
        })?;
        let http_listener = TcpListener::bind(config.http_listen).await.map_err(|source| NodeError::Bind {
            what: "http",
            addr: config.http_listen,
            source,
        })?;
        Self::start_on(config, grpc_listener, http_listener).await
    }

    /// As [`Node::start`], on listeners the caller already bound (`grpc_listen` / `http_listen` of
    /// the config are then ignored). Lets tests learn every node's port before building the peers.
    pub async fn start_on(
        config: NodeConfig,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let grpc_addr = grpc_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "grpc",
            addr: config.grpc_listen,
            source,
        })?;
        let http_addr = http_listener.local_addr().map_err(|source| NodeError::Bind {
            what: "http",
            addr: config.http_listen,
            source,
        })?;
        let advertise_addr = config.advertise_addr(grpc_addr);

        let storage = crate::storage::open(&config)?;
        let mut cluster_config = ClusterConfig::new(config.node_id, advertise_addr.clone(), storage.clone());
        cluster_config.raft.heartbeat_interval_ms = config.raft.heartbeat_interval_ms;
        cluster_config.raft.election_timeout_min_ms = config.raft.election_timeout_min_ms;
        cluster_config.raft.election_timeout_max_ms = config.raft.election_timeout_max_ms;
        cluster_config.raft.snapshot_every_entries = config.raft.snapshot_every_entries;
        cluster_config.request_timeout_ms = config.raft.request_timeout_ms;
        let cluster = Cluster::start(cluster_config).await?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(NodeContext::new(
            config.node_id,
            advertise_addr.clone(),
            cluster.clone(),
            config.limits.clone(),
            Arc::new(Metrics::default()),
            Duration::from_millis(config.raft.request_timeout_ms + u64::from(config.limits.max_wait_ms)),
            shutdown_rx.clone(),
        ));

        // Tonic refuses anything over twice the request limit outright; handlers refuse anything
        // over the limit itself with REQUEST_TOO_LARGE (which names the limit).
        let max_decode = config.limits.max_request_bytes.saturating_mul(2);
        let max_encode = (config.limits.max_fetch_bytes as usize).saturating_mul(2).max(max_decode);
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                ProduceServer::new(ProduceService::new(ctx.clone()))
                    .max_decoding_message_size(max_decode)
                    .max_encoding_message_size(max_encode),
            )
            .add_service(
                FetchServer::new(FetchService::new(ctx.clone()))
                    .max_decoding_message_size(max_decode)
                    .max_encoding_message_size(max_encode),
            )
            .add_service(
                ConsumerGroupsServer::new(GroupsService::new(ctx.clone()))
                    .max_decoding_message_size(max_decode)
                    .max_encoding_message_size(max_encode),
            )
            .add_service(
                AdminServer::new(AdminService::new(ctx.clone()))
                    .max_decoding_message_size(max_decode)
                    .max_encoding_message_size(max_encode),
            )
            .add_service(cluster.grpc_service());
        let mut grpc_shutdown = shutdown_rx.clone();
        let (kill_tx, kill_rx) = watch::channel(false);
        let incoming = TcpListenerStream::new(grpc_listener)
            .map(move |conn| conn.map(|stream| KillableStream::new(stream, kill_rx.clone())));
        let grpc_task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_shutdown.wait_for(|s| *s).await;
        }));

        let ready_quorum_ack_max = Duration::from_millis(config.raft.ready_quorum_ack_max_ms());
        let app = http::router(HttpState { ctx: ctx.clone(), storage: storage.clone(), ready_quorum_ack_max });
        let mut http_shutdown = shutdown_rx.clone();
        let http_task = tokio::spawn(async move {
            axum::serve(http_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_shutdown.wait_for(|s| *s).await;
                })
                .await
        });

        let members = config.initial_members(&advertise_addr);
        let bootstrap_task = tokio::spawn(crate::bootstrap::run(cluster.clone(), config.node_id, members, shutdown_rx));
        tracing::info!(node_id = config.node_id, grpc = %grpc_addr, advertise = %advertise_addr, http = %http_addr, "node started");
        Ok(NodeHandle {
            node_id: config.node_id,
            grpc_addr,
            advertise_addr,
            http_addr,
            cluster,
            ctx,
            storage,
            shutdown_tx,
            kill_tx,
            grpc_task,
            http_task,
            bootstrap_task,
            grace: Duration::from_millis(config.shutdown_grace_ms),
            ready_quorum_ack_max,
        })
    }
}

impl NodeHandle {
    /// The cluster handle (for tests and tools in-process).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Whether the node can serve (what `/readyz` reports): `Ok` names the metadata leader, `Err`
    /// says what is missing.
    pub fn readiness(&self) -> Result<String, String> {
        http::readiness(&self.cluster, self.node_id, self.ready_quorum_ack_max)
    }

    /// Waits until [`NodeHandle::readiness`] is `Ok`; false on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.readiness().is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting requests, lets in-flight client requests finish (up to the grace period),
    /// stops the cluster layer (every Raft group), stops the servers and flushes storage.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        tracing::info!(node_id = self.node_id, "shutting down");
        let _ = self.shutdown_tx.send(true);
        self.bootstrap_task.abort();
        if tokio::time::timeout(self.grace, self.ctx.in_flight.wait_idle()).await.is_err() {
            tracing::warn!(
                node_id = self.node_id,
                in_flight = self.ctx.in_flight.count(),
                "requests still in flight after the grace period"
            );
        }
        // Raft streams between nodes never end on their own: stop the groups, then the servers.
        let stopped = self.cluster.shutdown().await;
        let _ = self.kill_tx.send(true);
        let grpc = finish(self.grpc_task, SERVER_STOP, "grpc").await;
        let _ = finish(self.http_task, SERVER_STOP, "http").await;
        let _ = self.bootstrap_task.await;
        drop(self.ctx);
        tracing::debug!(
            cluster_refs = Arc::strong_count(&self.cluster),
            storage_refs = Arc::strong_count(&self.storage),
            "released"
        );
        drop(self.cluster);
        stopped?;
        for stream in self.storage.streams() {
            self.storage.sync(stream).map_err(NodeError::Storage)?;
        }
        // The storage (and its directory lock) is released when its last user lets go; wait for
        // background tasks to drop theirs so a restart in this process can reopen it.
        let deadline = tokio::time::Instant::now() + self.grace;
        while Arc::strong_count(&self.storage) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.storage) > 1 {
            tracing::warn!(node_id = self.node_id, "storage still referenced after shutdown");
        }
        tracing::info!(node_id = self.node_id, "stopped");
        match grpc {
            Some(Err(e)) => Err(NodeError::Grpc(e)),
            _ => Ok(()),
        }
    }
}

/// How long a server may take to close its connections once the cluster has stopped.
const SERVER_STOP: Duration = Duration::from_millis(500);

/// Waits for a server task up to `grace`, then aborts it.
async fn finish<T>(mut task: JoinHandle<T>, grace: Duration, what: &str) -> Option<T> {
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::warn!(server = what, error = %e, "server task failed");
            None
        }
        Err(_) => {
            tracing::debug!(server = what, wait_ms = grace.as_millis() as u64, "connections cut");
            task.abort();
            let _ = task.await;
            None
        }
    }
}
