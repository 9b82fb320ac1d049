//! Shale's cluster semantics on multi-Raft: topics, partitions, produce/fetch, consumer offsets.
//!
//! - Group 0 ([`api::METADATA_GROUP`]) replicates the [`metadata::MetadataState`]: topics and their
//!   partition placement, consumer-group offsets and members.
//! - Every topic partition is its own Raft group ([`api::partition_group_id`]); its log IS the data
//!   (one producer batch = one entry; records have dense offsets of their own, mapped to log
//!   indexes by the partition machine) and its app state is the next offset, the producer dedup
//!   table and a sparse offset index ([`partition::PartitionMachine`]); the leader numbers batches
//!   with a per-partition proposer (`proposer.rs`).
//! - Each node runs a reconcile loop ([`reconcile`]) that makes its local groups match the applied
//!   metadata, and a retention loop ([`retention`]).
//!
//! [`Cluster`] is the handle the node's gRPC layer calls. Its types and errors are in [`api`]; the
//! layer's design and invariants are in ARCHITECTURE.md ("The cluster layer"), its byte layouts in
//! [`layout`] and docs/format.md ("Cluster layer").

pub mod access;
pub mod api;
mod apps;
mod coordinator;
mod data;
pub mod groups;
pub mod layout;
pub mod metadata;
pub mod partition;
mod proposer;
pub mod quota;
mod reconcile;
mod retention;
mod supervise;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use shale_storage::StorageBackend;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use api::*;
pub use coordinator::{GroupsConfig, JoinRequest, MemberAssignment};
pub use data::decode_entries;
pub use supervise::{HEALTHY_AFTER, RESTART_BACKOFF_MAX, RESTART_BACKOFF_MIN, StoppedGroup};

use crate::cluster::apps::MetadataApp;
use crate::cluster::metadata::{MetadataCommand, MetadataReply, MetadataState};
use crate::cluster::partition::PartitionMachine;
use crate::{NetworkConfig, Node, RaftError, RaftGroup, RaftGroupConfig, Retention, Router};

/// How a node's cluster layer is set up.
#[derive(Clone)]
pub struct ClusterConfig {
    /// This node's id (stable across restarts, unique in the cluster).
    pub node_id: NodeId,
    /// `host:port` of this node's internal listener (the Raft transport), as other nodes reach it.
    pub advertise_addr: String,
    /// `host:port` of this node's client listener, as clients reach it; `None`: `advertise_addr`
    /// (one listener for both).
    pub client_addr: Option<String>,
    /// `host:port` of this node's Kafka listener, as Kafka clients reach it; `None`: no Kafka
    /// listener (recorded as an empty Kafka address).
    pub kafka_addr: Option<String>,
    /// The node's storage; every group's streams live in it.
    pub storage: Arc<dyn StorageBackend>,
    /// Transport tunables.
    pub network: NetworkConfig,
    /// Template for every group (retention is set per topic).
    pub raft: RaftGroupConfig,
    /// How often the reconcile loop runs without being woken by a metadata change.
    pub reconcile_interval_ms: u64,
    /// Every how many passes the reconcile loop visits every group it runs (a full pass; also on
    /// every metadata change); the passes between visit only the groups the last pass left with
    /// something to do (see `reconcile`). 1 = every pass is full.
    pub reconcile_full_every: u32,
    /// How often each partition is snapshotted and purged under its topic's retention.
    pub retention_interval_ms: u64,
    /// How long a partition leader that is not the preferred (first) replica keeps leading before
    /// it hands leadership to the preferred one (once that has the whole log). Leaves room for an
    /// explicit `transfer_leader`; keeps leaders spread in the long run.
    pub preferred_leader_delay_ms: u64,
    /// Bound on every wait inside a call (commits, read-index, bootstrap).
    pub request_timeout_ms: u64,
    /// How long `add_node` waits for a new node to catch up with the metadata group before it
    /// gives up (the node is removed again, never made a voter). Keep it below the clients'
    /// request timeout.
    pub catch_up_timeout_ms: u64,
    /// How long a replica that the metadata moved away from this node keeps its group while no
    /// leader tells it the move is done (see `reconcile`): after this it stops and deletes it.
    pub leave_grace_ms: u64,
    /// The cluster totals a topic this node creates must stay within (`None`: only the hard
    /// maximum of topics). Checked when the creation applies, so concurrent creations cannot both
    /// pass; the metadata leader's totals decide (the node forwards creations there).
    pub topic_totals: Option<TopicTotals>,
    /// The most partition replicas a node may hold, checked when a creation this node proposes
    /// applies (like `topic_totals`); `None`: no per-node limit.
    pub replica_limit: Option<ReplicaLimit>,
    /// The node-wide budget every group's in-memory log tail counts against (`None`: each group
    /// only has its own cap, `raft.log_cache_bytes`).
    pub log_cache_budget: Option<crate::entry_cache::CacheBudget>,
    /// How many partition groups a reconcile pass starts (and tends) at once.
    pub start_concurrency: usize,
    /// How many preferred-leader hand-overs a reconcile pass on this node may start (leader
    /// balancing is rate-limited: each one is an election in that group).
    pub leader_transfers_per_pass: usize,
    /// The consumer-group coordinator's settings (it runs on the metadata leader).
    pub groups: GroupsConfig,
}

impl ClusterConfig {
    /// Defaults for everything but identity and storage.
    pub fn new(node_id: NodeId, advertise_addr: impl Into<String>, storage: Arc<dyn StorageBackend>) -> Self {
        Self {
            node_id,
            advertise_addr: advertise_addr.into(),
            client_addr: None,
            kafka_addr: None,
            storage,
            network: NetworkConfig::default(),
            raft: RaftGroupConfig::default(),
            reconcile_interval_ms: 200,
            reconcile_full_every: 10,
            retention_interval_ms: 30_000,
            preferred_leader_delay_ms: 10_000,
            request_timeout_ms: 10_000,
            catch_up_timeout_ms: 5_000,
            leave_grace_ms: 30_000,
            topic_totals: None,
            replica_limit: None,
            log_cache_budget: None,
            start_concurrency: 16,
            leader_transfers_per_pass: 16,
            groups: GroupsConfig::default(),
        }
    }
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node_id", &self.node_id)
            .field("advertise_addr", &self.advertise_addr)
            .field("client_addr", &self.client_addr)
            .field("kafka_addr", &self.kafka_addr)
            .field("reconcile_interval_ms", &self.reconcile_interval_ms)
            .field("reconcile_full_every", &self.reconcile_full_every)
            .field("retention_interval_ms", &self.retention_interval_ms)
            .field("preferred_leader_delay_ms", &self.preferred_leader_delay_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish_non_exhaustive()
    }
}

/// One partition group running on this node.
struct LocalPartition {
    topic: String,
    topic_id: TopicId,
    partition: u32,
    group: Arc<RaftGroup>,
    state: Arc<RwLock<PartitionMachine>>,
    /// The retention last handed to the group (to set it again only on change).
    retention: Mutex<Option<RetentionPolicy>>,
    /// Whether this process initialised the group (or found it initialised).
    initialized: std::sync::atomic::AtomicBool,
    /// The term this node leads the group in and since when the reconcile loop has seen it lead
    /// in that term (a leadership lost and won back between two passes starts a new count).
    leader_since: Mutex<Option<(u64, std::time::Instant)>>,
    /// Since when this node, no longer an assigned replica, has seen no leader of the group
    /// (the reconcile loop deletes the group after `leave_grace_ms` of that).
    orphan_since: Mutex<Option<std::time::Instant>>,
    /// On the leader: since when each learner that is not an assigned replica has been waiting
    /// to see the membership that demoted it (removed once it has, or after `leave_grace_ms`).
    leftover_since: Mutex<BTreeMap<NodeId, std::time::Instant>>,
    /// Numbers and proposes batches while this node leads (`proposer.rs`).
    proposer: Arc<proposer::Proposer>,
    /// `(log start index, first record offset at or after it)` as last computed (the record
    /// offset a replica's log starts at needs a read to find; see `data.rs`).
    log_start_offset: Mutex<Option<(u64, u64)>>,
}

impl LocalPartition {
    /// One past the last record applied here (its next record offset).
    fn high_watermark(&self) -> u64 {
        self.state.read().next_offset()
    }

    /// The first record offset this replica holds, as last computed for the current log start
    /// (`Cluster::record_log_start` computes it; `None` if it has not for this log start yet).
    fn cached_log_start(&self) -> Result<Option<u64>, ClusterError> {
        let start_index = self.group.log_start()?;
        if start_index == 0 {
            return Ok(Some(0));
        }
        Ok(self.log_start_offset.lock().filter(|(index, _)| *index == start_index).map(|(_, offset)| offset))
    }
}

impl fmt::Debug for LocalPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPartition")
            .field("topic", &self.topic)
            .field("topic_id", &self.topic_id)
            .field("partition", &self.partition)
            .field("group", &self.group.id())
            .finish_non_exhaustive()
    }
}

/// A node's handle on the cluster: metadata, partitions, produce and fetch.
pub struct Cluster {
    config: ClusterConfig,
    router: Arc<Router>,
    /// The running metadata group (replaced when the supervisor restarts a stopped one).
    metadata_group: RwLock<Arc<RaftGroup>>,
    /// Announces metadata changes (kept to hand to a restarted metadata group's app).
    metadata_changed_tx: watch::Sender<u64>,
    /// Groups whose Raft core stopped on an error, being restarted from disk (`supervise.rs`).
    failed_groups: Mutex<BTreeMap<GroupId, supervise::GroupFailure>>,
    /// Groups found stopped, and restarted again, since start.
    group_failures_total: std::sync::atomic::AtomicU64,
    group_restarts_total: std::sync::atomic::AtomicU64,
    /// Partition groups started by the reconcile loop since start; a request for a partition
    /// this node is assigned but has not started yet waits for it to move (see `data.rs`).
    partition_starts: watch::Sender<u64>,
    /// Whether the applied metadata has been current once (see `reconcile`): partition groups
    /// start only after that.
    metadata_current: std::sync::atomic::AtomicBool,
    /// What the reconcile loop carries from one pass to the next.
    reconcile_plan: Mutex<reconcile::Plan>,
    metadata: Arc<RwLock<MetadataState>>,
    metadata_changed: watch::Receiver<u64>,
    partitions: RwLock<BTreeMap<GroupId, Arc<LocalPartition>>>,
    /// Fault injection ([`Cluster::hold_partition_starts`]): while `true`, no partition group
    /// starts here.
    partition_starts_held: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serialises group start/stop (reconcile passes and shutdown).
    lifecycle: tokio::sync::Mutex<()>,
    /// The client addresses of the initial members that this node knows (its own, and those
    /// [`Cluster::bootstrap`] was given): the metadata leader records them with the bootstrap
    /// voters' internal addresses (the Raft membership holds only those).
    initial_client_addrs: Mutex<BTreeMap<NodeId, MemberAddrs>>,
    /// On the metadata leader: when each consumer-group member was last heard from.
    sessions: Mutex<coordinator::Sessions>,
    /// Numbers the consumer-group member ids this node hands out.
    member_seq: std::sync::atomic::AtomicU64,
    /// Every codec, to decode a stored batch's records (a search by time).
    codecs: shale_storage::CodecRegistry,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .field("partitions", &self.partitions.read().len())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the metadata group (restoring the applied metadata), then starts the reconcile loop
    /// (which starts every partition group this node replicates) and the retention loop.
    pub async fn start(config: ClusterConfig) -> Result<Arc<Cluster>, ClusterError> {
        let router = Router::new(config.node_id, config.network.clone())?;
        let metadata = Arc::new(RwLock::new(MetadataState::new()));
        let (changed_tx, changed_rx) = watch::channel(0u64);
        let app = MetadataApp::new(metadata.clone(), changed_tx.clone());
        let mut raft_config = config.raft.clone();
        raft_config.retention = Retention::SnapshotOnly;
        let metadata_group =
            router.start_group(METADATA_GROUP, config.storage.clone(), Box::new(app), raft_config).await?;
        if let Some(budget) = &config.log_cache_budget {
            metadata_group.log().set_cache_budget(budget);
        }
        let (shutdown, _) = watch::channel(false);
        let own_client_addr = config.client_addr.clone().unwrap_or_else(|| config.advertise_addr.clone());
        let own = MemberAddrs::pair(config.advertise_addr.clone(), own_client_addr)
            .with_kafka(config.kafka_addr.clone().unwrap_or_default());
        let initial_client_addrs = Mutex::new(BTreeMap::from([(config.node_id, own)]));
        let cluster = Arc::new(Cluster {
            config,
            router,
            metadata_group: RwLock::new(metadata_group),
            metadata_changed_tx: changed_tx,
            failed_groups: Mutex::new(BTreeMap::new()),
            group_failures_total: Default::default(),
            group_restarts_total: Default::default(),
            partition_starts: watch::Sender::new(0),
            metadata_current: Default::default(),
            reconcile_plan: Mutex::default(),
            metadata,
            metadata_changed: changed_rx,
            partitions: RwLock::new(BTreeMap::new()),
            partition_starts_held: watch::Sender::new(false),
            shutdown,
            tasks: Mutex::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            initial_client_addrs,
            sessions: Mutex::new(Default::default()),
            member_seq: Default::default(),
            codecs: shale_storage::CodecRegistry::default(),
        });
        let reconcile = tokio::spawn(reconcile::run(Arc::downgrade(&cluster), cluster.shutdown.subscribe()));
        let retention = tokio::spawn(retention::run(Arc::downgrade(&cluster), cluster.shutdown.subscribe()));
        let groups = tokio::spawn(coordinator::run(Arc::downgrade(&cluster), cluster.shutdown.subscribe()));
        cluster.tasks.lock().extend([reconcile, retention, groups]);
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The node-wide budget of the groups' in-memory log tails, if one is configured.
    pub fn log_cache_budget(&self) -> Option<&crate::entry_cache::CacheBudget> {
        self.config.log_cache_budget.as_ref()
    }

    /// Partition groups the reconcile loop started on this node since [`Cluster::start`]
    /// (restarts of stopped groups are counted by [`Cluster::group_restarts_total`]).
    pub fn partition_starts_total(&self) -> u64 {
        *self.partition_starts.borrow()
    }

    /// Fault injection (tests): while `hold` is `true`, the reconcile loop starts (or restarts) no
    /// partition group on this node: the pass that would waits for the release, and groups
    /// already running go on as usual. What a node is like between a topic's creation and its
    /// groups' start, made as long as a test needs.
    pub fn hold_partition_starts(&self, hold: bool) {
        self.partition_starts_held.send_replace(hold);
    }

    /// Returns once partition starts are not held ([`Cluster::hold_partition_starts`]) or the
    /// node is shutting down.
    async fn partition_starts_released(&self) {
        let mut held = self.partition_starts_held.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            _ = held.wait_for(|h| !*h) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }

    /// The Raft transport hub: this node's running groups and its channels to peers.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The tonic service to mount on this node's gRPC server (the Raft transport of every group).
    pub fn grpc_service(&self) -> crate::server::RaftServer {
        self.router.grpc_service()
    }

    /// Stops the background loops and every local group. Storage stays; `start` again to resume.
    /// Bounded by `request_timeout_ms`; see [`Cluster::shutdown_within`].
    pub async fn shutdown(&self) -> Result<(), ClusterError> {
        self.shutdown_within(self.timeout()).await
    }

    /// Stops the background loops and every local group within about `limit`: the loops get a
    /// quarter of it, then every group (partitions and metadata) is shut down at once, in
    /// parallel, each bounded by what is left. A group that does not stop in time is left behind
    /// (its core is dropped with the process) and reported as [`ClusterError::Timeout`]; every
    /// write it acknowledged was fsynced before the acknowledgement, so nothing acknowledged is lost.
    pub async fn shutdown_within(&self, limit: Duration) -> Result<(), ClusterError> {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let _ = self.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        let loops_deadline = started + limit / 4;
        for mut t in tasks {
            // Every wait inside the loops stops at shutdown; this bound is only a backstop.
            if tokio::time::timeout_at(loops_deadline, &mut t).await.is_err() {
                tracing::warn!("a background loop did not stop in time; aborting it");
                t.abort();
            }
        }
        // A reconcile pass stuck past the deadline must not keep the groups running.
        let _guard = tokio::time::timeout_at(loops_deadline, self.lifecycle.lock()).await.ok();
        let locals: Vec<Arc<LocalPartition>> = std::mem::take(&mut *self.partitions.write()).into_values().collect();
        // Groups running here that the cluster does not track (a start whose reconcile pass was
        // aborted above after the group registered) stop too; none starts from now on.
        let tracked: std::collections::HashSet<GroupId> =
            locals.iter().map(|p| p.group.id()).chain([self.meta().id()]).collect();
        let orphans: Vec<Arc<RaftGroup>> =
            self.router.close().into_iter().filter(|g| !tracked.contains(&g.id())).collect();
        let waited_ms = limit.as_millis() as u64;
        let stop = |group: Arc<RaftGroup>| async move {
            match tokio::time::timeout_at(deadline, group.shutdown()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ClusterError::from(e)),
                Err(_) => Err(ClusterError::Timeout { what: format!("group {} shutdown", group.id()), waited_ms }),
            }
        };
        let partitions = futures::future::join_all(locals.iter().map(|p| stop(p.group.clone())));
        let untracked = futures::future::join_all(orphans.iter().map(|g| stop(g.clone())));
        let (partitions, untracked, metadata) = tokio::join!(partitions, untracked, stop(self.meta()));
        for (g, r) in orphans.iter().zip(untracked) {
            tracing::warn!(group = %g.id(), outcome = ?r.err(), "stopped a group the cluster did not track");
        }
        // Starts still under way (their reconcile pass was aborted above; opening a group's
        // streams and restoring its state cannot be cut short) are refused at registration and
        // stop their Raft core: wait for them, so the storage is free when this returns.
        if !self.router.starts_finished(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            tracing::warn!("group starts still under way at the shutdown deadline");
        }
        for (p, r) in locals.iter().zip(partitions) {
            if let Err(e) = r {
                tracing::warn!(group = %p.group.id(), error = %e, "partition group shutdown failed");
            }
        }
        metadata
    }

    /// The metadata group as it runs now.
    fn meta(&self) -> Arc<RaftGroup> {
        self.metadata_group.read().clone()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Runs `fut` for at most `request_timeout_ms`, and not past shutdown; every Raft call that
    /// waits on peers goes through here, so no caller (nor the background loops, nor shutdown) can
    /// hang on a dead quorum.
    async fn bounded<T, E>(&self, what: &str, fut: impl Future<Output = Result<T, E>>) -> Result<T, ClusterError>
    where
        ClusterError: From<E>,
    {
        let mut stopping = self.shutdown.subscribe();
        tokio::select! {
            r = self.bounded_ignoring_shutdown(what, fut) => r,
            _ = stopping.wait_for(|s| *s) => Err(ClusterError::Shutdown),
        }
    }

    /// [`Cluster::bounded`] for the shutdown path itself.
    async fn bounded_ignoring_shutdown<T, E>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, ClusterError>
    where
        ClusterError: From<E>,
    {
        match tokio::time::timeout(self.timeout(), fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout { what: what.to_string(), waited_ms: self.config.request_timeout_ms }),
        }
    }

    /// A member's internal address (Raft, repair reads, forwarding), per the applied metadata.
    fn member_addr(&self, id: NodeId) -> Option<String> {
        self.metadata.read().members().get(&id).map(|a| a.internal.clone())
    }

    /// A member's addresses, per the applied metadata.
    pub fn member_addrs(&self, id: NodeId) -> Option<MemberAddrs> {
        self.metadata.read().members().get(&id).cloned()
    }

    /// What a client is told of a leader: its id and its **client** address (the metadata's
    /// record of the member), where `leader` names its internal address (as Raft and
    /// [`Cluster::leader_of`] do). A node the metadata does not list (yet) keeps the address given.
    pub fn client_view(&self, leader: Option<(NodeId, String)>) -> Option<(NodeId, String)> {
        leader.map(|(id, addr)| match self.member_addrs(id) {
            Some(addrs) => (id, addrs.client),
            None => (id, addr),
        })
    }

    /// This node's client address (as configured).
    pub fn own_client_addr(&self) -> String {
        self.config.client_addr.clone().unwrap_or_else(|| self.config.advertise_addr.clone())
    }

    /// This node's Kafka listener's advertised address (as configured; empty: none).
    pub fn own_kafka_addr(&self) -> String {
        self.config.kafka_addr.clone().unwrap_or_default()
    }

    /// This node's internal address (as configured).
    pub fn own_internal_addr(&self) -> &str {
        &self.config.advertise_addr
    }

    /// Whether this node leads the metadata group (as far as it knows).
    pub fn is_metadata_leader(&self) -> bool {
        self.meta().is_leader()
    }

    /// The metadata group's leader and its address, as known here.
    pub fn metadata_leader(&self) -> Option<(NodeId, String)> {
        self.meta().leader().map(|(id, node)| (id, node.addr))
    }

    /// On the metadata leader: how long ago a quorum of voters last acknowledged its leadership
    /// (zero when this node is the only voter). `None` when this node does not lead the metadata
    /// group, or no quorum has acknowledged it yet. A leader whose peers are unreachable keeps
    /// leading, but this age grows without bound.
    pub fn metadata_quorum_ack_age(&self) -> Option<Duration> {
        let m = self.meta().metrics();
        if m.current_leader != Some(self.config.node_id) {
            return None;
        }
        let membership = m.membership_config.membership();
        if membership.voter_ids().all(|id| id == self.config.node_id) {
            return Some(Duration::ZERO);
        }
        m.last_quorum_acked.as_ref().map(|t| openraft::Instant::elapsed(&**t))
    }

    /// Initialises the metadata group with these voters (`id -> addresses`, including this node:
    /// the Raft members get the internal addresses) and waits until the applied metadata lists
    /// them all as members at those internal addresses. Their client addresses are recorded with
    /// them when this node's metadata leader records the members (the usual case: the node that
    /// initialises the group is elected first); a member recorded with another client address
    /// (the leader was another node) is re-addressed by that node itself (`AddMember`, see the
    /// node's registration). Idempotent: on an initialised group it only waits. Call on one node
    /// once every initial peer is listening.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, MemberAddrs>) -> Result<(), ClusterError> {
        if !members.contains_key(&self.config.node_id) {
            return Err(ClusterError::InvalidArgument {
                field: "members",
                reason: format!("must include this node ({})", self.config.node_id),
            });
        }
        if let Some((id, bad)) = members.iter().find_map(|(id, a)| a.invalid().map(|bad| (id, bad))) {
            return Err(ClusterError::InvalidArgument { field: "members", reason: format!("node {id}: {bad}") });
        }
        self.initial_client_addrs.lock().extend(members.iter().map(|(id, a)| (*id, a.clone())));
        let nodes: BTreeMap<NodeId, Node> =
            members.iter().map(|(id, a)| (*id, Node::new(a.internal.clone()))).collect();
        match tokio::time::timeout(self.timeout(), self.meta().initialize(nodes)).await {
            Ok(Ok(()) | Err(RaftError::AlreadyInitialized { .. })) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: "metadata group initialisation".into(),
                    waited_ms: self.config.request_timeout_ms,
                });
            }
        }
        // The metadata leader's reconcile pass records the Raft members as metadata members.
        let mut changed = self.metadata_changed.clone();
        let wait = async {
            loop {
                let all_known = {
                    let state = self.metadata.read();
                    members.iter().all(|(id, a)| state.members().get(id).map(|m| &m.internal) == Some(&a.internal))
                };
                if all_known {
                    return Ok(());
                }
                if changed.changed().await.is_err() {
                    return Err(ClusterError::Shutdown);
                }
            }
        };
        tokio::time::timeout(self.timeout(), wait).await.map_err(|_| ClusterError::Timeout {
            what: "bootstrap: members recorded in the metadata".into(),
            waited_ms: self.config.request_timeout_ms,
        })?
    }

    /// Proposes a metadata command on the metadata leader; a rejection comes back as its error.
    async fn propose(&self, command: MetadataCommand) -> Result<MetadataReply, ClusterError> {
        let result =
            tokio::time::timeout(self.timeout(), self.meta().write(Bytes::from(command.encode()))).await.map_err(
                |_| ClusterError::Timeout { what: "metadata commit".into(), waited_ms: self.config.request_timeout_ms },
            )??;
        match MetadataReply::decode(&result.response)? {
            MetadataReply::Rejected(r) => Err(r.into()),
            reply => Ok(reply),
        }
    }

    /// Waits until this node's metadata is linearizable (read-index on the metadata leader).
    async fn linearizable_metadata(&self) -> Result<(), ClusterError> {
        tokio::time::timeout(self.timeout(), self.meta().ensure_linearizable()).await.map_err(|_| {
            ClusterError::Timeout { what: "metadata read-index".into(), waited_ms: self.config.request_timeout_ms }
        })??;
        Ok(())
    }

    /// Creates a topic; the reply includes its placement. Partition groups come up asynchronously
    /// on their replicas (watch `describe_topic` / `leader_of`).
    pub async fn create_topic(&self, spec: TopicSpec) -> Result<TopicInfo, ClusterError> {
        metadata::validate_spec(&spec)?;
        let command = match (self.config.topic_totals, self.config.replica_limit) {
            (totals, Some(per_node)) => MetadataCommand::CreateTopicBounded { spec, totals, per_node },
            (Some(totals), None) => MetadataCommand::CreateTopicWithin { spec, totals },
            (None, None) => MetadataCommand::CreateTopic(spec),
        };
        match self.propose(command).await? {
            MetadataReply::Topic(t) => Ok(t),
            other => Err(ClusterError::Decode { what: "create topic reply", reason: format!("unexpected {other:?}") }),
        }
    }

    /// Gives a topic `count` partitions (more than it has): the new ones are placed by load, within
    /// the cluster totals and the per-node replica limit, and their groups start on their replicas
    /// as a new topic's do. Existing partitions, their records and offsets are untouched (keys may
    /// map to other partitions from then on, as in Kafka). Metadata leader only.
    pub async fn add_partitions(&self, name: &str, count: u32) -> Result<TopicInfo, ClusterError> {
        let command = MetadataCommand::AddPartitions {
            name: name.to_string(),
            count,
            totals: self.config.topic_totals,
            per_node: self.config.replica_limit,
        };
        match self.propose(command).await? {
            MetadataReply::Topic(t) => Ok(t),
            other => {
                Err(ClusterError::Decode { what: "add partitions reply", reason: format!("unexpected {other:?}") })
            }
        }
    }

    /// Deletes a topic; its partition groups stop and their streams are deleted on every replica.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterError> {
        self.propose(MetadataCommand::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    /// Changes a topic's retention and/or codec.
    pub async fn alter_topic(&self, name: &str, update: TopicUpdate) -> Result<TopicInfo, ClusterError> {
        self.propose(MetadataCommand::AlterTopic { name: name.to_string(), update }).await?;
        self.metadata.read().topic(name).cloned().ok_or_else(|| ClusterError::UnknownTopic { name: name.to_string() })
    }

    /// Every topic, linearizable (metadata leader only).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.local_topics())
    }

    /// Topics and partitions in the cluster, as applied on this node (may lag the leader).
    pub fn local_totals(&self) -> (usize, usize) {
        let metadata = self.metadata.read();
        (metadata.topics().len(), metadata.partition_count())
    }

    /// Every topic as applied on this node (no round trip; may lag the leader).
    pub fn local_topics(&self) -> Vec<TopicInfo> {
        self.metadata.read().topics().values().cloned().collect()
    }

    /// One topic with the live state of its partitions, linearizable (metadata leader only).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClusterError> {
        self.linearizable_metadata().await?;
        let info = self.topic(name)?;
        let partitions = info
            .partitions
            .iter()
            .map(|a| {
                let local = self.partitions.read().get(&a.group).cloned();
                let (log_start, high_watermark) = match &local {
                    Some(p) => (p.cached_log_start().ok().flatten(), Some(p.high_watermark())),
                    None => (None, None),
                };
                PartitionState {
                    partition: a.partition,
                    replicas: a.replicas.clone(),
                    leader: self.leader_of(name, a.partition),
                    log_start,
                    high_watermark,
                }
            })
            .collect();
        Ok(TopicDescription { info, partitions })
    }

    fn topic(&self, name: &str) -> Result<TopicInfo, ClusterError> {
        self.metadata.read().topic(name).cloned().ok_or_else(|| ClusterError::UnknownTopic { name: name.to_string() })
    }

    /// A consumer group's committed offsets, linearizable, with lag where this node hosts the partition.
    pub async fn fetch_offsets(&self, group: &str) -> Result<Vec<ConsumerOffset>, ClusterError> {
        self.linearizable_metadata().await?;
        let rows = self.metadata.read().group_offsets(group);
        Ok(rows
            .into_iter()
            .map(|(topic, partition, offset)| {
                let hw = self.local_partition(&topic, partition).ok().map(|p| p.high_watermark());
                ConsumerOffset {
                    topic,
                    partition,
                    offset,
                    high_watermark: hw,
                    lag: hw.map(|h| h.saturating_sub(offset)),
                }
            })
            .collect())
    }

    /// Every consumer group as applied on this node, sorted (no round trip: it may lag the
    /// metadata leader by what it has not applied yet), with the lag of each committed partition
    /// this node replicates (its own high watermark minus the commit). Any node answers, so a
    /// metrics scrape of any node shows every group, and the lag of the partitions it holds.
    pub fn local_group_stats(&self) -> Vec<GroupStats> {
        // (stats, the partition group of each offset): read under the metadata lock alone; the
        // high watermarks after it (no lock is held while another is taken).
        let rows: Vec<(GroupStats, Vec<Option<GroupId>>)> = {
            let metadata = self.metadata.read();
            metadata
                .group_names()
                .into_iter()
                .map(|group| {
                    let state = metadata.group(&group);
                    let mut groups = Vec::new();
                    let offsets = metadata
                        .group_offsets(&group)
                        .into_iter()
                        .map(|(topic, partition, offset)| {
                            let assignment = metadata.topic(&topic).and_then(|t| t.partitions.get(partition as usize));
                            groups.push(assignment.map(|a| a.group));
                            ConsumerOffset { topic, partition, offset, high_watermark: None, lag: None }
                        })
                        .collect();
                    let stats = GroupStats {
                        members: state.map_or(0, |s| s.members.len()),
                        epoch: state.map_or(0, |s| s.epoch),
                        offsets,
                        group,
                    };
                    (stats, groups)
                })
                .collect()
        };
        let partitions = self.partitions.read();
        rows.into_iter()
            .map(|(mut stats, groups)| {
                for (o, g) in stats.offsets.iter_mut().zip(groups) {
                    o.high_watermark = g.and_then(|g| partitions.get(&g)).map(|p| p.high_watermark());
                    o.lag = o.high_watermark.map(|h| h.saturating_sub(o.offset));
                }
                stats
            })
            .collect()
    }

    /// Every consumer group with a committed offset or coordinator state, sorted, linearizable
    /// (read-index).
    pub async fn list_groups(&self) -> Result<Vec<String>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.metadata.read().group_names())
    }

    /// Adds a user with the SHA-256 of its token's secret (the secret is never sent here).
    pub async fn create_user(
        &self,
        name: &str,
        token_hash: [u8; access::TOKEN_HASH_BYTES],
    ) -> Result<(), ClusterError> {
        access::validate_principal(name)?;
        self.propose(MetadataCommand::CreateUser { name: name.to_string(), token_hash }).await.map(|_| ())
    }

    /// Adds a user with a password, as its SCRAM-SHA-256 credential (the password is never sent
    /// here).
    pub async fn create_password_user(
        &self,
        name: &str,
        credential: access::ScramCredential,
    ) -> Result<(), ClusterError> {
        access::validate_principal(name)?;
        credential.validate()?;
        self.propose(MetadataCommand::CreatePasswordUser { name: name.to_string(), credential }).await.map(|_| ())
    }

    /// Gives an existing user a new password (its token or old password stops working).
    pub async fn set_password(&self, name: &str, credential: access::ScramCredential) -> Result<(), ClusterError> {
        access::validate_principal(name)?;
        credential.validate()?;
        self.propose(MetadataCommand::SetPassword { name: name.to_string(), credential }).await.map(|_| ())
    }

    /// Removes a user (the rules naming it stay).
    pub async fn delete_user(&self, name: &str) -> Result<(), ClusterError> {
        access::validate_principal(name)?;
        self.propose(MetadataCommand::DeleteUser { name: name.to_string() }).await.map(|_| ())
    }

    /// Every user name, sorted, linearizable (read-index).
    pub async fn list_users(&self) -> Result<Vec<String>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.metadata.read().access().users().keys().cloned().collect())
    }

    /// Adds an ACL allow rule (succeeds if it exists).
    pub async fn add_acl(&self, rule: access::AclRule) -> Result<(), ClusterError> {
        rule.validate()?;
        self.propose(MetadataCommand::AddAcl(rule)).await.map(|_| ())
    }

    /// Removes an ACL allow rule.
    pub async fn remove_acl(&self, rule: access::AclRule) -> Result<(), ClusterError> {
        self.propose(MetadataCommand::RemoveAcl(rule)).await.map(|_| ())
    }

    /// Every ACL rule, sorted, linearizable (read-index).
    pub async fn list_acls(&self) -> Result<Vec<access::AclRule>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.metadata.read().access().acls().iter().cloned().collect())
    }

    /// Sets (replaces) the client quota of `entity`.
    pub async fn set_quota(&self, entity: quota::QuotaEntity, quota: quota::Quota) -> Result<(), ClusterError> {
        quota.validate()?;
        self.propose(MetadataCommand::SetQuota { entity, quota }).await.map(|_| ())
    }

    /// Removes the client quota of `entity`.
    pub async fn remove_quota(&self, entity: quota::QuotaEntity) -> Result<(), ClusterError> {
        self.propose(MetadataCommand::RemoveQuota { entity }).await.map(|_| ())
    }

    /// Every quota entry (the default first), linearizable (read-index).
    pub async fn list_quotas(&self) -> Result<Vec<(quota::QuotaEntity, quota::Quota)>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.metadata.read().quotas().entries().iter().map(|(e, q)| (e.clone(), *q)).collect())
    }

    /// The quota this node's applied metadata gives `user` (`None`: an anonymous caller).
    pub fn quota_of(&self, user: Option<&str>) -> quota::Quota {
        self.metadata.read().quotas().effective(user)
    }

    /// Lets this node's metadata catch up with changes committed just before now, before a refusal
    /// is decided on it (a user or rule created a moment ago): on the metadata leader a read-index;
    /// elsewhere a wait of two heartbeat intervals (a follower learns the commit index with the
    /// next heartbeat and applies it). Best effort: errors are ignored.
    pub async fn settle_metadata(&self) {
        if self.meta().is_leader() {
            let _ = self.linearizable_metadata().await;
        } else {
            tokio::time::sleep(Duration::from_millis(self.config.raft.heartbeat_interval_ms.saturating_mul(2))).await;
        }
    }

    /// Whether this node's applied metadata allows `principal` (`None`: anonymous) `operation` on
    /// `resource` (no round trip: a rule change reaches each node as it applies it).
    pub fn access_allows(
        &self,
        principal: Option<&str>,
        operation: access::Operation,
        resource: access::Resource<'_>,
    ) -> bool {
        self.metadata.read().access().allows(principal, operation, resource)
    }

    /// A password user's SCRAM credential as applied on this node.
    pub fn user_scram(&self, name: &str) -> Option<access::ScramCredential> {
        self.metadata.read().access().scram(name).cloned()
    }

    /// A user's token hash as applied on this node.
    pub fn user_token_hash(&self, name: &str) -> Option<[u8; access::TOKEN_HASH_BYTES]> {
        self.metadata.read().access().token_hash(name).copied()
    }

    /// Adds a node: it joins the metadata group as a learner; once it has caught up (the leader
    /// knows it holds the log up to within [`CATCH_UP_MAX_LAG`] entries of the leader's last
    /// index) it becomes a voter and then a member, which new topics (and under-replicated
    /// partitions) are placed on. A node that does not catch up within `catch_up_timeout_ms`
    /// (nothing listens there, or it is not running `Cluster`) is removed from the group again and
    /// the call fails with [`ClusterError::NotCaughtUp`]: it is never a voter nor a member.
    /// Metadata leader only.
    ///
    /// `addrs.internal` is where nodes reach it (the Raft member's address), `addrs.client` what
    /// clients are told. Called for a member, it only records the addresses (re-addressing it).
    pub async fn add_node(&self, id: NodeId, addrs: MemberAddrs) -> Result<(), ClusterError> {
        // The node checked the addresses at its edge; the metadata also refuses bad ones at apply.
        debug_assert!(addrs.invalid().is_none(), "{addrs:?}");
        let addr = addrs.internal.clone();
        if !self.meta().is_leader() {
            return Err(ClusterError::NotLeader { leader: self.metadata_leader() });
        }
        let voters = self.metadata_voters();
        if !voters.contains(&id) {
            let meta = self.meta();
            let add = meta.add_learner(id, Node::new(addr.clone()), false);
            self.bounded("adding a learner to the metadata group", add).await?;
            let since = self.meta().metrics().membership_config.log_id().as_ref().map_or(0, |l| l.index());
            let wait = Duration::from_millis(self.config.catch_up_timeout_ms);
            let caught_up =
                self.meta().wait_metrics("new node catching up", wait, |m| catch_up(m, id, since).caught_up).await;
            if caught_up.is_err() {
                let progress = catch_up(&self.meta().metrics(), id, since);
                tracing::warn!(node = id, %addr, ?progress, "new node did not catch up; removing it again");
                let remove = meta.remove_nodes([id].into());
                if let Err(e) = self.bounded("removing a learner that did not catch up", remove).await {
                    tracing::warn!(node = id, error = %e, "cannot remove the learner again");
                }
                return Err(ClusterError::NotCaughtUp {
                    id,
                    group: METADATA_GROUP,
                    matched: progress.matched,
                    leader_last: progress.leader_last,
                    waited_ms: self.config.catch_up_timeout_ms,
                });
            }
            let mut voters = voters;
            voters.insert(id);
            let promote = meta.change_membership(voters, false);
            self.bounded("promoting a caught-up node to voter", promote).await?;
        }
        debug_assert!(self.metadata_voters().contains(&id), "a member is a metadata voter first");
        self.propose(MetadataCommand::AddMember { id, addrs }).await.map(|_| ())
    }

    /// Removes a node: first from the members (the metadata moves its partition replicas to other
    /// members, and the node, still replicating the metadata, stops its partition groups), then from
    /// the metadata group. Metadata leader only.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        if !self.meta().is_leader() {
            return Err(ClusterError::NotLeader { leader: self.metadata_leader() });
        }
        let mut voters = self.metadata_voters();
        let is_voter = voters.remove(&id);
        if voters.is_empty() {
            return Err(ClusterError::Membership { id, reason: "cannot remove the last member".into() });
        }
        match self.propose(MetadataCommand::RemoveMember { id }).await {
            Ok(_) => {}
            // Already removed from the members by an earlier, interrupted call: finish the job.
            Err(ClusterError::Membership { .. }) if is_voter => {}
            Err(e) => return Err(e),
        }
        if is_voter {
            self.bounded("a node leaving the metadata group", self.meta().change_membership(voters, false)).await?;
        }
        Ok(())
    }

    fn metadata_voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.meta().metrics().membership_config.membership().voter_ids().collect()
    }

    /// Members, the metadata group and every partition group hosted here.
    pub fn cluster_status(&self) -> ClusterStatus {
        let members = self
            .metadata
            .read()
            .members()
            .iter()
            .map(|(id, a)| MemberInfo {
                id: *id,
                addr: a.internal.clone(),
                client_addr: a.client.clone(),
                kafka_addr: a.kafka.clone(),
            })
            .collect();
        let voters: Vec<NodeId> = self.metadata_voters().into_iter().collect();
        let metadata = Some(group_status(&self.meta(), None, voters));
        let locals: Vec<Arc<LocalPartition>> = self.partitions.read().values().cloned().collect();
        let mut partitions: Vec<GroupStatus> = locals
            .iter()
            .map(|p| {
                let replicas = self.assignment(&p.topic, p.partition).map(|a| a.replicas).unwrap_or_default();
                group_status(&p.group, Some((p.topic.clone(), p.partition)), replicas)
            })
            .collect();
        partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
        ClusterStatus { node_id: self.config.node_id, members, metadata, partitions }
    }

    fn assignment(&self, topic: &str, partition: u32) -> Option<PartitionAssignment> {
        self.metadata.read().topic(topic)?.partitions.get(partition as usize).cloned()
    }
}

/// How many entries a new replica may trail its group leader's last log index and still count as
/// caught up (so a busy group does not keep it waiting forever).
pub const CATCH_UP_MAX_LAG: u64 = 64;

/// How far a node has caught up with a group, as its leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CatchUp {
    /// The last index the leader knows the node holds (`None`: nothing acknowledged yet).
    pub matched: Option<u64>,
    /// The leader's last log index.
    pub leader_last: u64,
    /// Whether the node holds at least `since` and trails by at most [`CATCH_UP_MAX_LAG`].
    pub caught_up: bool,
}

/// On a group's leader: how far `id` has caught up. It counts as caught up once it acknowledged
/// index `since` (the membership entry that added it) and trails the leader's last log index by
/// at most [`CATCH_UP_MAX_LAG`]. (openraft's own `add_learner(blocking)` also counts a node that
/// never answered as caught up while the log is shorter than its lag threshold: not used.)
pub(crate) fn catch_up(m: &openraft::RaftMetrics<crate::TypeConfig>, id: NodeId, since: u64) -> CatchUp {
    let leader_last = m.last_log_index.unwrap_or(0);
    let matched = crate::group::matched_index(m, id);
    let caught_up = m.current_leader == Some(m.id)
        && matched.is_some_and(|i| i >= since && i.saturating_add(CATCH_UP_MAX_LAG) >= leader_last);
    CatchUp { matched, leader_last, caught_up }
}

fn group_status(group: &RaftGroup, partition: Option<(String, u32)>, replicas: Vec<NodeId>) -> GroupStatus {
    let m = group.metrics().clone();
    let last_log_index = m.last_log_index.unwrap_or(0);
    let replica_lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, matched)| (*id, last_log_index.saturating_sub(matched.as_ref().map_or(0, |l| l.index()))))
                .collect()
        })
        .unwrap_or_default();
    GroupStatus {
        group: group.id(),
        partition,
        replicas,
        leader: m.current_leader,
        term: m.current_term,
        commit_index: group.committed_index().unwrap_or(0),
        applied_index: group.applied_index().unwrap_or(0),
        last_log_index,
        replica_lag,
    }
}

/// Runs `pass` every `interval` until shutdown, or until the cluster is dropped (a background
/// loop holds the cluster only while a pass runs): the retention loop and the group coordinator's
/// expiry timer.
async fn run_every<Fut: Future<Output = ()>>(
    cluster: Weak<Cluster>,
    mut shutdown: watch::Receiver<bool>,
    interval: Duration,
    pass: impl Fn(Arc<Cluster>) -> Fut,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let Some(c) = cluster.upgrade() else { return };
        pass(c).await;
    }
}
