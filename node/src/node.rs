//! Running a whole node in-process: storage, cluster, gRPC server, HTTP server and bootstrap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shale_client::proto::access_server::AccessServer;
use shale_client::proto::admin_server::AdminServer;
use shale_client::proto::consumer_groups_server::ConsumerGroupsServer;
use shale_client::proto::fetch_server::FetchServer;
use shale_raft::cluster::{Cluster, ClusterConfig};
use shale_raft::network::tls::TlsPem;
use shale_storage::StorageBackend;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

use crate::admission::{Admission, Connections, InternalConnections, REFUSED_CONNECTION_LINGER};
use crate::conn::KillableStream;
use crate::tls_reload::{ServerTls, TlsReloader};

use crate::auth::AuthContext;
use crate::config::NodeConfig;
use crate::context::NodeContext;
use crate::error::NodeError;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::services::access::AccessService;
use crate::services::admin::AdminService;
use crate::services::fetch::FetchService;
use crate::services::groups::GroupsService;
use crate::services::produce::{ProduceService, produce_serving};

/// Starts nodes. See [`Node::start`].
#[derive(Debug)]
pub struct Node;

/// The sockets a node serves on, bound by the caller (see [`Node::start_with`]).
#[derive(Debug)]
pub struct Listeners {
    /// The client listener (client API; also the Raft transport when `internal` is `None`).
    pub client: TcpListener,
    /// The internal listener (Raft transport, repair reads, forwarded requests), if separate.
    pub internal: Option<TcpListener>,
    /// The HTTP listener (health, readiness, metrics).
    pub http: TcpListener,
    /// The Kafka listener (`None`: the node does not speak Kafka).
    pub kafka: Option<TcpListener>,
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// This node's id.
    pub node_id: u64,
    /// The bound address of the client listener (clients connect here).
    pub grpc_addr: SocketAddr,
    /// The bound address of the internal listener (the client listener's with one listener).
    pub internal_addr: SocketAddr,
    /// The address other nodes reach this node at (its internal advertised address, what `peers`
    /// and AddNode name).
    pub advertise_addr: String,
    /// The address clients are told for this node (its client advertised address).
    pub client_advertise_addr: String,
    /// The bound HTTP address (health, readiness, metrics).
    pub http_addr: SocketAddr,
    /// The bound address of the Kafka listener, if the node has one.
    pub kafka_addr: Option<SocketAddr>,
    /// The address Kafka clients are told for this node (empty without a Kafka listener).
    pub kafka_advertise_addr: String,
    cluster: Arc<Cluster>,
    ctx: Arc<NodeContext>,
    storage: Arc<dyn StorageBackend>,
    shutdown_tx: watch::Sender<bool>,
    kill_tx: watch::Sender<bool>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    internal_task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    http_task: JoinHandle<std::io::Result<()>>,
    tls_reloader: Option<Arc<TlsReloader>>,
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
        let client = bind("grpc", config.client_listen_addr()).await?;
        let http = bind("http", config.http_listen).await?;
        Self::start_on(config, client, http).await
    }

    /// As [`Node::start`], on listeners the caller already bound (the client listener, and
    /// `http_listen`: those of the config are then ignored; `internal_listen`, if set, and
    /// `kafka.listen`, if the Kafka listener is enabled, are bound here). Lets tests learn every node's port before building the peers.
    pub async fn start_on(
        config: NodeConfig,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
    ) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let storage = crate::storage::open(&config)?;
        Self::start_on_storage(config, grpc_listener, http_listener, storage).await
    }

    /// As [`Node::start_on`], on a storage the caller opened (`storage`/`data_dir` of the config
    /// are then ignored): lets tests run a node on a storage whose file system injects faults.
    pub async fn start_on_storage(
        config: NodeConfig,
        grpc_listener: TcpListener,
        http_listener: TcpListener,
        storage: Arc<dyn StorageBackend>,
    ) -> Result<NodeHandle, NodeError> {
        let internal = match config.internal_listen {
            Some(addr) => Some(bind("internal", addr).await?),
            None => None,
        };
        let kafka = match config.kafka.enabled {
            true => Some(bind("kafka", config.kafka.listen).await?),
            false => None,
        };
        let listeners = Listeners { client: grpc_listener, internal, http: http_listener, kafka };
        Self::start_with_storage(config, listeners, storage).await
    }

    /// As [`Node::start`], on all listeners bound by the caller (every `*_listen` of the config
    /// is ignored; the internal listener is separate iff `listeners.internal` is given).
    pub async fn start_with(config: NodeConfig, listeners: Listeners) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let storage = crate::storage::open(&config)?;
        Self::start_with_storage(config, listeners, storage).await
    }

    /// As [`Node::start_with`], on a storage the caller opened.
    pub async fn start_with_storage(
        config: NodeConfig,
        listeners: Listeners,
        storage: Arc<dyn StorageBackend>,
    ) -> Result<NodeHandle, NodeError> {
        config.validate()?;
        let Listeners {
            client: grpc_listener,
            internal: internal_listener,
            http: http_listener,
            kafka: kafka_listener,
        } = listeners;
        let grpc_addr = local_addr("grpc", &grpc_listener, config.client_listen_addr())?;
        let http_addr = local_addr("http", &http_listener, config.http_listen)?;
        let internal_addr = match &internal_listener {
            Some(l) => local_addr("internal", l, config.internal_listen.unwrap_or(config.grpc_listen))?,
            None => grpc_addr,
        };
        // What other nodes are told (Raft membership, forwarding) and what clients are told.
        let advertise_addr = config.internal_advertise_addr(internal_addr);
        let client_advertise_addr = config.client_advertise_addr(grpc_addr);
        let kafka_addr = match &kafka_listener {
            Some(l) => Some(local_addr("kafka", l, config.kafka.listen)?),
            None => None,
        };
        let kafka_advertise_addr =
            kafka_addr.map(|bound| config.kafka.advertise_addr(bound, &client_advertise_addr)).unwrap_or_default();
        let tls = match &config.tls {
            Some(files) => Some(TlsPem::load(&files.ca, &files.cert, &files.key)?),
            None => None,
        };
        let mut cluster_config = ClusterConfig::new(config.node_id, advertise_addr.clone(), storage.clone());
        cluster_config.client_addr = Some(client_advertise_addr.clone());
        cluster_config.kafka_addr = kafka_addr.map(|_| kafka_advertise_addr.clone());
        cluster_config.network.tls = tls.clone();
        cluster_config.raft.heartbeat_interval_ms = config.raft.heartbeat_interval_ms;
        cluster_config.raft.election_timeout_min_ms = config.raft.election_timeout_min_ms;
        cluster_config.raft.election_timeout_max_ms = config.raft.election_timeout_max_ms;
        cluster_config.raft.snapshot_every_entries = config.raft.snapshot_every_entries;
        cluster_config.raft.quiesce_after_ms = config.raft.quiesce_after_ms;
        cluster_config.raft.retention_hold_max_ms = config.raft.retention_hold_max_ms;
        // One node heartbeat per peer per group heartbeat interval.
        cluster_config.network.node_heartbeat_interval_ms = config.raft.heartbeat_interval_ms;
        cluster_config.network.commit_notice_delay_ms = config.raft.commit_notice_delay_ms;
        cluster_config.request_timeout_ms = config.raft.request_timeout_ms;
        cluster_config.retention_interval_ms = config.retention_interval_ms;
        cluster_config.groups = config.groups.clone();
        // A joining node's catch-up wait fits in one client request (the node answers within it).
        cluster_config.catch_up_timeout_ms = config.raft.request_timeout_ms / 2;
        cluster_config.leave_grace_ms = config.raft.request_timeout_ms.saturating_mul(3);
        cluster_config.topic_totals = Some(shale_raft::cluster::TopicTotals {
            max_topics: config.limits.max_topics,
            max_partitions: config.limits.max_partitions,
        });
        let budget = shale_raft::entry_cache::CacheBudget::new(
            config.memory.log_cache_bytes,
            config.memory.log_cache_floor_bytes,
        );
        cluster_config.replica_limit =
            Some(shale_raft::cluster::ReplicaLimit::of(config.limits.max_partitions_per_node, budget.max_groups()));
        cluster_config.log_cache_budget = Some(budget);
        let cluster = Cluster::start(cluster_config).await?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(
            NodeContext::new(
                config.node_id,
                advertise_addr.clone(),
                cluster.clone(),
                config.limits.clone(),
                Arc::new(Metrics::default()),
                Duration::from_millis(config.raft.request_timeout_ms + u64::from(config.limits.max_wait_ms)),
                shutdown_rx.clone(),
            )
            .with_auth(AuthContext { config: config.auth.clone(), tls: tls.is_some(), ..AuthContext::default() })
            .with_quotas(config.quotas.clone()),
        );

        // Tonic refuses anything over TRANSPORT_REQUEST_FACTOR x the request limit outright;
        // handlers refuse anything over the limit itself with REQUEST_TOO_LARGE (which names it).
        let max_decode =
            config.limits.max_request_bytes.saturating_mul(shale_storage::limits::TRANSPORT_REQUEST_FACTOR);
        let max_encode = (config.limits.max_fetch_bytes as usize).saturating_mul(2).max(max_decode);
        // Once shutdown starts, every new client-API request is refused with UNAVAILABLE (which
        // clients retry elsewhere); the Raft transport keeps serving until the groups stop. A
        // connection over `limits.max_connections` gets TOO_MANY_CONNECTIONS for every request.
        // On the internal listener (if separate) the client connection limit does not apply (peers
        // are not counted among clients; `limits.max_internal_connections` bounds them at accept),
        // and with TLS only nodes are served.
        let refuse = RefuseAtTheEdge {
            stopping: shutdown_rx.clone(),
            connections: Some(ctx.connections.clone()),
            nodes_only: false,
        };
        let refuse_internal =
            RefuseAtTheEdge { stopping: shutdown_rx.clone(), connections: None, nodes_only: tls.is_some() };
        // A client-API service over the shared context, with those limits, behind `$edge`.
        macro_rules! client_api {
            ($server:ident, $service:ident, $edge:expr) => {
                InterceptedService::new(
                    $server::new($service::new(ctx.clone()))
                        .max_decoding_message_size(max_decode)
                        .max_encoding_message_size(max_encode),
                    $edge.clone(),
                )
            };
        }
        // Produce: `ProduceStream` reads its requests from the HTTP/2 body itself (see
        // `ProduceServing`), behind the same edge checks.
        let produce_api = |edge: &RefuseAtTheEdge| {
            InterceptedService::new(
                produce_serving(ProduceService::new(ctx.clone()), max_decode, max_encode),
                edge.clone(),
            )
        };
        let coded = crate::transport_errors::CodeTransportErrorsLayer {
            max_request_bytes: config.limits.max_request_bytes,
            metrics: ctx.metrics.clone(),
        };
        // The listeners do the TLS handshake themselves (`tls_reload`), with configurations a
        // reload swaps. Client certificates are optional on the client listener (the Raft
        // service, served there only with one listener, refuses every RPC without a node
        // certificate naming its sender); the internal listener requires one of the cluster CA.
        let client_tls = tls.as_ref().map(|t| ServerTls::new(t, false)).transpose()?;
        if let Some(t) = &tls {
            let summary = shale_raft::network::tls::cert_summary(t.cert_chain()?[0].as_ref())?;
            ctx.metrics.tls_cert_not_after_seconds.set(summary.not_after_unix.max(0) as u64);
        }
        let internal_tls = match (&tls, &internal_listener) {
            (Some(t), Some(_)) => Some(ServerTls::new(t, true)?),
            _ => None,
        };
        // (`tcp_nodelay` is ignored with `serve_with_incoming`: `KillableStream` sets it.)
        // The listener that serves Raft allows `PEER_PENDING_ACCEPT_RESET_STREAMS` reset streams
        // pending per connection (see there); the client listener alone `CLIENT_RESET_STREAMS`.
        let client_resets = if internal_listener.is_none() {
            shale_raft::server::PEER_PENDING_ACCEPT_RESET_STREAMS
        } else {
            CLIENT_RESET_STREAMS
        };
        let mut server = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_frame_size(Some(shale_raft::server::HTTP2_MAX_FRAME_BYTES))
            .http2_max_pending_accept_reset_streams(Some(client_resets))
            .layer(coded.clone());
        let router = server
            .add_service(produce_api(&refuse))
            .add_service(client_api!(FetchServer, FetchService, refuse))
            .add_service(client_api!(ConsumerGroupsServer, GroupsService, refuse))
            .add_service(client_api!(AdminServer, AdminService, refuse))
            .add_service(client_api!(AccessServer, AccessService, refuse));
        // With a separate internal listener the client listener does not serve Raft at all
        // (UNIMPLEMENTED).
        let router = if internal_listener.is_none() { router.add_service(cluster.grpc_service()) } else { router };
        let (kill_tx, kill_rx) = watch::channel(false);
        let internal_task = match internal_listener {
            Some(listener) => {
                // With TLS, mutual: no handshake completes without a certificate of the cluster
                // CA; `refuse_internal` then serves only node certificates.
                let mut server = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .max_frame_size(Some(shale_raft::server::HTTP2_MAX_FRAME_BYTES))
                    .http2_max_pending_accept_reset_streams(Some(shale_raft::server::PEER_PENDING_ACCEPT_RESET_STREAMS))
                    .layer(coded);
                let router = server
                    .add_service(produce_api(&refuse_internal))
                    .add_service(client_api!(FetchServer, FetchService, refuse_internal))
                    .add_service(client_api!(ConsumerGroupsServer, GroupsService, refuse_internal))
                    .add_service(client_api!(AdminServer, AdminService, refuse_internal))
                    .add_service(client_api!(AccessServer, AccessService, refuse_internal))
                    .add_service(cluster.grpc_service());
                let kill_rx = kill_rx.clone();
                // `limits.max_internal_connections`, at accept (before any handshake).
                let places = Arc::new(InternalConnections::new(&config.limits, ctx.metrics.clone()));
                let wrap = move |stream: tokio::net::TcpStream| {
                    let slot = places.admit()?;
                    Some(KillableStream::new(stream, kill_rx.clone()).holding_internal(slot))
                };
                let mut stop = shutdown_rx.clone();
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                Some(match &internal_tls {
                    Some(server_tls) => {
                        let incoming =
                            crate::tls_reload::incoming(listener, server_tls.clone(), wrap, shutdown_rx.clone());
                        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                    }
                    None => {
                        let incoming = TcpListenerStream::new(listener).filter_map(move |conn| match conn {
                            Ok(stream) => wrap(stream).map(Ok),
                            Err(e) => Some(Err(e)),
                        });
                        tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
                    }
                })
            }
            None => None,
        };
        // The Kafka listener (docs/kafka.md): counted with the client connections, cut at shutdown,
        // and with `[tls]` TLS with the client listener's (reloaded) certificates.
        if let Some(listener) = kafka_listener {
            let connections = ctx.connections.clone();
            let kill_rx = kill_rx.clone();
            let admit = move |stream: tokio::net::TcpStream| {
                let peer = stream.peer_addr().ok();
                match connections.admit(peer) {
                    Admission::Admitted(slot) => Some(KillableStream::new(stream, kill_rx.clone()).holding(slot)),
                    // Kafka has no answer for "too many connections": closed at once.
                    Admission::Refused(_) | Admission::Dropped => None,
                }
            };
            match &client_tls {
                Some(server_tls) => {
                    let incoming =
                        crate::tls_reload::incoming(listener, server_tls.clone(), admit, shutdown_rx.clone());
                    tokio::spawn(crate::kafka::listener::serve_tls(incoming, ctx.clone(), shutdown_rx.clone()));
                }
                None => {
                    tokio::spawn(crate::kafka::listener::serve(listener, admit, ctx.clone(), shutdown_rx.clone()));
                }
            }
        }
        let mut grpc_shutdown = shutdown_rx.clone();
        let grpc_stopped = async move {
            let _ = grpc_shutdown.wait_for(|s| *s).await;
        };
        let connections = ctx.connections.clone();
        // Admission (`limits.max_connections`) before any handshake.
        let admit = move |stream: tokio::net::TcpStream| {
            let peer = stream.peer_addr().ok();
            let stream = KillableStream::new(stream, kill_rx.clone());
            match connections.admit(peer) {
                Admission::Admitted(slot) => Some(stream.holding(slot)),
                Admission::Refused(slot) => Some(stream.holding(slot).cut_after(REFUSED_CONNECTION_LINGER)),
                Admission::Dropped => None,
            }
        };
        let grpc_task = match &client_tls {
            Some(server_tls) => {
                let incoming =
                    crate::tls_reload::incoming(grpc_listener, server_tls.clone(), admit, shutdown_rx.clone());
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, grpc_stopped))
            }
            None => {
                let incoming = TcpListenerStream::new(grpc_listener).filter_map(move |conn| match conn {
                    Ok(stream) => admit(stream).map(Ok),
                    Err(e) => Some(Err(e)),
                });
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, grpc_stopped))
            }
        };
        // Certificate reloads: `reload_tls`, SIGHUP (the binary) and a watch on the files.
        let tls_reloader = match &config.tls {
            Some(files) if tls.is_some() => {
                let listeners = client_tls.iter().chain(internal_tls.iter()).cloned().collect();
                let reloader = TlsReloader::new(
                    config.node_id,
                    files.clone(),
                    listeners,
                    cluster.router().peers().clone(),
                    ctx.clone(),
                );
                tokio::spawn(crate::tls_reload::watch(reloader.clone(), shutdown_rx.clone()));
                Some(reloader)
            }
            _ => None,
        };

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

        // The scrubber's task ends when `shutdown_rx` flips.
        let _scrubber = crate::scrub::Scrubber::spawn(
            cluster.clone(),
            storage.clone(),
            ctx.damage.clone(),
            ctx.metrics.clone(),
            config.scrub.clone(),
            shutdown_rx.clone(),
        );
        let members = config.initial_members(&advertise_addr);
        let bootstrap_task = tokio::spawn(crate::bootstrap::run(ctx.clone(), config.node_id, members, shutdown_rx));
        tracing::info!(
            node_id = config.node_id,
            grpc = %grpc_addr,
            internal = %internal_addr,
            advertise = %advertise_addr,
            client_advertise = %client_advertise_addr,
            http = %http_addr,
            kafka = ?kafka_addr,
            kafka_advertise = %kafka_advertise_addr,
            tls = tls.is_some(),
            authorization = config.auth.enabled,
            "node started"
        );
        Ok(NodeHandle {
            node_id: config.node_id,
            grpc_addr,
            internal_addr,
            advertise_addr,
            client_advertise_addr,
            http_addr,
            kafka_addr,
            kafka_advertise_addr,
            cluster,
            ctx,
            storage,
            shutdown_tx,
            kill_tx,
            grpc_task,
            internal_task,
            http_task,
            tls_reloader,
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

    /// The authentication and authorization settings, with this node's password verifier (for
    /// tests and tools in-process).
    pub fn auth(&self) -> &AuthContext {
        &self.ctx.auth
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

    /// Re-reads this node's TLS files (CA, certificate, key) and, when they are valid, serves them
    /// to new connections and presents them to peers from now on (what SIGHUP and a change of
    /// the files do; docs/security.md). An invalid set is refused (logged, counted in
    /// `shale_tls_reload_failures_total`) and the node keeps its certificates.
    pub fn reload_tls(&self) -> Result<shale_raft::network::tls::CertSummary, NodeError> {
        let reloader = self.tls_reloader.as_ref().ok_or(NodeError::TlsNotConfigured)?;
        Ok(reloader.reload("reload_tls")?)
    }

    /// What reloads this node's certificates (`None` without TLS); the binary hands it to
    /// [`crate::signal::reload_on_sighup`].
    pub fn tls_reloader(&self) -> Option<Arc<TlsReloader>> {
        self.tls_reloader.clone()
    }

    /// The grace period [`NodeHandle::shutdown`] keeps to.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Stops the node within its grace period (`shutdown_grace_ms`), whatever its load:
    /// 1. new client-API requests are refused with UNAVAILABLE (retryable) and the gRPC server
    ///    accepts no new connections;
    /// 2. in-flight client requests get up to 40% of the grace period to finish (a produce that
    ///    is not committed by then fails with a retryable error when its group stops);
    /// 3. every Raft group (partitions and metadata) is shut down in parallel, bounded by what
    ///    is left of 80% of the grace period;
    /// 4. connections are cut, every stream is fsynced and closed (bounded by the rest of the grace
    ///    period).
    ///
    /// Every acknowledged record was fsynced before its acknowledgement, so a step cut short
    /// loses nothing acknowledged; it is logged (and a group that did not stop is reported as
    /// an error). The process binary also exits at the deadline if this ever overruns it.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.grace;
        tracing::info!(node_id = self.node_id, grace_ms = self.grace.as_millis() as u64, "shutting down");
        let _ = self.shutdown_tx.send(true);
        self.bootstrap_task.abort();
        let drain_until = started + self.grace.mul_f64(0.4);
        if tokio::time::timeout_at(drain_until, self.ctx.in_flight.wait_idle()).await.is_err() {
            tracing::warn!(
                node_id = self.node_id,
                in_flight = self.ctx.in_flight.count(),
                "requests still in flight; they fail with UNAVAILABLE as the groups stop"
            );
        }
        // Raft streams between nodes never end on their own: stop the groups, then the servers.
        let groups_until = started + self.grace.mul_f64(0.8);
        let stopped =
            self.cluster.shutdown_within(groups_until.saturating_duration_since(tokio::time::Instant::now())).await;
        if let Err(e) = &stopped {
            tracing::warn!(node_id = self.node_id, error = %e, "cluster layer did not stop cleanly");
        }
        let _ = self.kill_tx.send(true);
        let server_stop = SERVER_STOP.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        let grpc = finish(self.grpc_task, server_stop, "grpc").await;
        if let Some(task) = self.internal_task {
            let _ = finish(task, server_stop, "internal").await;
        }
        let _ = finish(self.http_task, Duration::ZERO.max(server_stop / 2), "http").await;
        let _ = self.bootstrap_task.await;
        drop(self.tls_reloader);
        drop(self.ctx);
        tracing::debug!(
            cluster_refs = Arc::strong_count(&self.cluster),
            storage_refs = Arc::strong_count(&self.storage),
            "released"
        );
        drop(self.cluster);
        // Close every stream (fsync, trim, index) off the async workers, bounded by the deadline:
        // left to the storage's drop, it would run after the deadline, on this task.
        let storage = self.storage.clone();
        let sync = tokio::task::spawn_blocking(move || -> Result<(), NodeError> {
            storage.close_streams().map_err(NodeError::Storage)
        });
        let synced = match tokio::time::timeout_at(deadline, sync).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(node_id = self.node_id, error = %e, "storage sync task failed");
                Ok(())
            }
            Err(_) => {
                tracing::error!(node_id = self.node_id, "storage sync did not finish within the grace period");
                Ok(())
            }
        };
        // The storage (and its directory lock) is released when its last user lets go; wait for
        // background tasks to drop theirs so a restart in this process can reopen it.
        while Arc::strong_count(&self.storage) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.storage) > 1 {
            // Something (a group or task that did not stop) may still write: say how many holders.
            tracing::warn!(
                node_id = self.node_id,
                storage_refs = Arc::strong_count(&self.storage) - 1,
                open_group_logs_in_process = shale_raft::log_store::open_group_logs(),
                groups_stopped = stopped.is_ok(),
                "storage still referenced after shutdown"
            );
        }
        tracing::info!(node_id = self.node_id, took_ms = started.elapsed().as_millis() as u64, "stopped");
        stopped?;
        synced?;
        match grpc {
            Some(Err(e)) => Err(NodeError::Grpc(e)),
            _ => Ok(()),
        }
    }
}

/// Refuses client-API requests once shutdown has started (UNAVAILABLE, which clients retry on
/// another node), on connections refused for `limits.max_connections` (client listener), and,
/// on the internal listener with TLS (`nodes_only`), from a peer whose certificate names no node.
#[derive(Clone)]
struct RefuseAtTheEdge {
    stopping: watch::Receiver<bool>,
    connections: Option<Arc<Connections>>,
    nodes_only: bool,
}

impl tonic::service::Interceptor for RefuseAtTheEdge {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if *self.stopping.borrow() {
            return Err(shale_client::error::status(shale_client::ErrorCode::Unavailable, "the node is shutting down"));
        }
        if let Some(connections) = &self.connections {
            connections.check_request(&request)?;
        }
        if self.nodes_only && crate::auth::principal::peer_identity(&request).0.is_none() {
            return Err(shale_client::error::status(
                shale_client::ErrorCode::Unauthenticated,
                "the internal listener serves nodes only (a certificate naming shale://node/<id>); clients use the client listener",
            ));
        }
        Ok(request)
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, l: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, NodeError> {
    l.local_addr().map_err(|source| NodeError::Bind { what, addr: asked, source })
}

/// How long a server may take to close its connections once the cluster has stopped.
const SERVER_STOP: Duration = Duration::from_millis(500);

/// Reset HTTP/2 streams a connection may have pending on the client listener alone before h2
/// closes it as abusive: above h2's default of 20 (a client cancelling a burst of timed-out
/// requests is not an attack), still bounding a rapid-reset flood.
const CLIENT_RESET_STREAMS: usize = 200;

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
