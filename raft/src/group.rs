//! [`RaftGroup`]: one running Raft group on this node (the metadata group or one partition), and
//! [`LocalGroups`], the groups running on this node (which the transport's server dispatches to).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ClientWriteError, Fatal, ForwardToLeader, InitializeError, LinearizableReadError, RaftError as OpenraftError,
};
use openraft::impls::ProgressResponder;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::{OneshotReceiverOf, WatchReceiverOf};
use openraft::{Raft, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use shale_storage::{ChainHash, ReadCheck, StorageBackend};
use tokio::sync::watch;

use crate::error::{RaftError, TransferRefusal};
use crate::log_store::{CommittedEntry, GroupLog, LogStore};
use crate::network::client::GroupNetworkFactory;
use crate::network::peers::Peers;
use crate::retention::Retention;
use crate::state_machine::{GroupStateMachine, StateMachineApp};
use crate::types::{AppPayload, GroupId, LeaderId, Node, NodeId, TypeConfig, Vote, log_id};

/// The tunables of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftGroupConfig {
    /// openraft cluster name (shows up in its logs).
    pub cluster_name: String,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one; 0 = only on
    /// [`RaftGroup::trigger_snapshot`].
    pub snapshot_every_entries: u64,
    /// Most entries per AppendEntries message.
    pub max_payload_entries: u64,
    /// How long a follower may take to receive and install a snapshot.
    pub install_snapshot_timeout_ms: u64,
    /// What log records a snapshot covers may be removed, and when.
    pub retention: Retention,
    /// Let a leader accept a follower whose log went backwards (its disk was wiped or replaced and
    /// it restarted empty with the same id) and re-replicate to it, instead of openraft panicking
    /// the leader's core. A wiped voter has also forgotten its vote, so this trades a theoretical
    /// double vote in one term for staying available after a disk replacement; default `true`.
    pub allow_log_reversion: bool,
    /// Memory for the recently appended log tail that replication and apply read back (per group).
    pub log_cache_bytes: usize,
    /// Largest application payload `write`/`write_many` accept. Each payload becomes one storage
    /// record of `payload + 26` bytes, so keep it below the storage's `max_record_bytes` (an append
    /// the storage refuses would stop the group). Default
    /// [`shale_storage::limits::RAFT_PAYLOAD_BYTES`], which fits the storage's default.
    pub max_payload_bytes: usize,
    /// A group led here with no new entry for this long, every follower matched at its last log
    /// id (and that id committed), goes quiet: its per-group heartbeats and its followers'
    /// election timers stop while the node heartbeat names it (`crate::heartbeat`); the first
    /// write, vote or lost node heartbeat wakes it. 0 = never quiet. Default 500 ms. The metadata
    /// group (`GroupId::METADATA`) is never quiet.
    pub quiesce_after_ms: u64,
    /// Longest a leader holds retention's purge back for a live follower still catching up below
    /// the retention start ([`RaftGroup::enforce_retention`]); past it the purge goes ahead and
    /// that follower catches up by snapshot (holding the log from the snapshot on). Default 5 min.
    pub retention_hold_max_ms: u64,
}

/// A follower counts as live for retention's hold ([`RaftGroup::enforce_retention`]) when it
/// acknowledged the leader within this many (maximum) election timeouts.
pub const RETENTION_HOLD_LIVE_ELECTION_TIMEOUTS: u64 = 5;

impl Default for RaftGroupConfig {
    fn default() -> Self {
        Self {
            cluster_name: "shale".into(),
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: 10_000,
            max_payload_entries: 512,
            install_snapshot_timeout_ms: 10_000,
            retention: Retention::SnapshotOnly,
            allow_log_reversion: true,
            log_cache_bytes: crate::log_store::DEFAULT_ENTRY_CACHE_BYTES,
            max_payload_bytes: shale_storage::limits::RAFT_PAYLOAD_BYTES,
            quiesce_after_ms: 500,
            retention_hold_max_ms: 300_000,
        }
    }
}

impl RaftGroupConfig {
    /// openraft's `heartbeat_min_interval`: no per-group heartbeat goes to a follower that
    /// acknowledged replication sent within this long (its acknowledgement renewed the leader's
    /// lease as a heartbeat's would), so a group under writes sends (almost) no heartbeats; every
    /// heartbeat is an RPC of its own, and hundreds of groups written at once would otherwise spend
    /// a core on them (issue 15). One heartbeat interval, less where openraft's bound needs it
    /// (interval + this + one tick below the election timeout); 0 (no suppression) if nothing fits.
    fn heartbeat_min_interval_ms(&self) -> u64 {
        let tick = self.heartbeat_interval_ms * 13 / 64;
        let room = self.election_timeout_min_ms.saturating_sub(self.heartbeat_interval_ms + tick + 1);
        self.heartbeat_interval_ms.min(room)
    }

    fn to_openraft(&self) -> Result<openraft::Config, RaftError> {
        let config = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            heartbeat_min_interval: Some(self.heartbeat_min_interval_ms()),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: if self.snapshot_every_entries == 0 {
                SnapshotPolicy::Never
            } else {
                SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries)
            },
            // The log is the data: openraft purges after a snapshot only where a snapshot is all
            // that is kept (the metadata group). Everywhere else the log is purged only up to the
            // retention start, by `RaftGroup::enforce_retention`, so a follower that is behind
            // catches up with the entries themselves instead of a snapshot that skips them.
            max_in_snapshot_log_to_keep: self.retention.max_in_snapshot_log_to_keep(),
            // A node cut off from its peers asks before it raises its term, so rejoining does not
            // depose a healthy leader.
            enable_pre_vote: Some(true),
            allow_log_reversion: Some(self.allow_log_reversion),
            ..Default::default()
        };
        config.validate().map_err(|e| RaftError::InvalidConfig(e.to_string()))
    }
}

fn not_leader(group: GroupId, f: &ForwardToLeader<TypeConfig>) -> RaftError {
    let leader = f.leader_id.map(|id| (id, f.leader_node.as_ref().map(|n| n.addr.clone()).unwrap_or_default()));
    RaftError::NotLeader { group, leader }
}

/// On a leader: the last index follower `id` is known to hold, per the metrics `m` (`None`:
/// nothing known matched).
pub(crate) fn matched_index(m: &RaftMetrics<TypeConfig>, id: NodeId) -> Option<u64> {
    m.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map(|l| l.index())
}

fn write_err(group: GroupId, e: ClientWriteError<TypeConfig>) -> RaftError {
    match e {
        ClientWriteError::ForwardToLeader(f) => not_leader(group, &f),
        ClientWriteError::LogEntryDiscarded(f) => RaftError::Indeterminate {
            group,
            reason: format!("entry discarded on a leader change, commit status unknown ({f})"),
        },
        ClientWriteError::ChangeMembershipError(e) => RaftError::MembershipChange { group, reason: e.to_string() },
        e => RaftError::Openraft { group, reason: e.to_string() },
    }
}

/// The result of one replicated write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// The entry's log index (its storage offset).
    pub index: u64,
    /// What the application's `apply` returned.
    pub response: Bytes,
}

/// A write queued by [`RaftGroup::propose`]; [`PendingWrite::result`] waits for its outcome.
pub struct PendingWrite {
    group: GroupId,
    rx: OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>,
}

impl fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingWrite").field("group", &self.group).finish_non_exhaustive()
    }
}

impl PendingWrite {
    /// The group the write was proposed to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Waits until the write is committed and applied here (or failed: `NotLeader` when another
    /// leadership refused or discarded it, `ShuttingDown` when the core stopped first).
    /// Cancel-safe: a wait dropped before the outcome leaves the write pending, to be awaited again
    /// (awaiting it again once it answered panics).
    pub async fn result(&mut self) -> Result<WriteResult, RaftError> {
        let group = self.group;
        match (&mut self.rx).await {
            Ok(Ok(r)) => Ok(WriteResult { index: r.log_id.index, response: r.data.0 }),
            Ok(Err(e)) => Err(write_err(group, e)),
            Err(_) => Err(RaftError::ShuttingDown { group }),
        }
    }
}

/// One running Raft group.
pub struct RaftGroup {
    id: GroupId,
    node_id: NodeId,
    raft: Raft<TypeConfig, GroupStateMachine>,
    /// openraft's metrics channel, subscribed once: reading it through `raft.metrics()` clones
    /// (and drops) a receiver each time, which with thousands of groups checked several times a
    /// second was a visible share of an idle node's CPU.
    metrics_rx: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    log: Arc<GroupLog>,
    registry: Weak<LocalGroups>,
    applied: watch::Receiver<Option<u64>>,
    election_timeout_max_ms: u64,
    /// [`RaftGroupConfig::heartbeat_interval_ms`].
    heartbeat_interval: Duration,
    max_payload_bytes: usize,
    /// Flips to `true` when the group shuts down (ends long-lived RPC streams serving it).
    stopped: watch::Sender<bool>,
    /// The node's peers: the channels, and the node heartbeats heard (quiescence leases).
    peers: Arc<Peers>,
    /// Quiescence: where the group stands, see [`QuietState`].
    quiet: Mutex<Quiet>,
    /// [`RaftGroupConfig::quiesce_after_ms`]; `None`: never quiet.
    quiet_after: Option<Duration>,
    /// How long a quiet follower keeps its election timer off without a node heartbeat from the
    /// leader's node: the election timeout, drawn once per (node, group) from its range so the
    /// followers of a dead leader do not all campaign at once.
    lease: Duration,
    /// [`RaftGroupConfig::retention_hold_max_ms`].
    retention_hold_max: Duration,
    /// Since when retention's purge has been held back for a live follower behind the retention
    /// start (`None`: not held).
    retention_held_since: Mutex<Option<Instant>>,
    /// Fault injection ([`RaftGroup::hold_appends`]): while `true`, AppendEntries carrying entries
    /// wait at this node's server before reaching the group.
    appends_held: watch::Sender<bool>,
}

/// How long (in election timeouts) a write to a quiet leader waits for the heartbeat round that
/// renews its lease ([`RaftGroup::wake_for_write`]); it stops waiting as soon as the node no longer
/// leads.
pub const WAKE_WAIT_ELECTION_TIMEOUTS: u64 = 5;

/// Where a group stands on quiescence (issue 15; ARCHITECTURE.md "Heartbeats and quiet groups").
/// Quiescence only turns timers off and on: every message a quiet group gets is handled as
/// usual, and it changes nothing Raft decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuietState {
    /// Timers on: heartbeats (leader) and the election timer (follower), as openraft runs them.
    Awake,
    /// This node leads the group at `term`, every follower matched at its last index, and that
    /// index committed; its ticker is off (no per-group heartbeats). The node heartbeat names it.
    Leading {
        /// The leader's term.
        term: u64,
        /// The last (and committed) log index.
        index: u64,
    },
    /// `leader`'s node heartbeat names the group as quiet at (`term`, `index`), which is this
    /// follower's vote and last (committed) log id; its ticker is off (no election timer) while
    /// those heartbeats keep coming and naming it so.
    Following {
        /// The leader.
        leader: NodeId,
        /// Its term.
        term: u64,
        /// The last log index.
        index: u64,
    },
}

#[derive(Debug)]
struct Quiet {
    state: QuietState,
    /// Leader: the (term, last index) seen unchanged, all followers matched, since this instant.
    stable: Option<((u64, u64), Instant)>,
    /// No quiescence before this instant: every wake (a write, a vote, a wake request) holds the
    /// group awake for `quiet_after`.
    not_before: Instant,
    /// When the group last went quiet.
    since: Instant,
    /// Leader: the number of the first node heartbeat that named it (the pass that quiesced it).
    since_seq: u64,
    /// The group's other members as they were when it last went quiet (while it stays quiet its
    /// membership cannot change: a membership change is a log entry, which wakes it). The
    /// heartbeat pass uses them instead of the group's metrics.
    members: QuietMembers,
}

/// A quiet group's other members and their addresses.
pub(crate) type QuietMembers = Arc<[(NodeId, String)]>;

/// The members of `m`'s membership other than `me`, with their addresses.
pub(crate) fn other_members(m: &RaftMetrics<TypeConfig>, me: NodeId) -> QuietMembers {
    m.membership_config.membership().nodes().filter(|(id, _)| **id != me).map(|(id, n)| (*id, n.addr.clone())).collect()
}

/// Whether `m` shows this node leading, its last log id committed and every follower matched
/// there (followers not heard from within `lease` are not waited for: a node that is down does
/// not keep groups awake; when it is back it asks to wake them): `Some((term, last index))`.
fn leader_quiet_key(m: &RaftMetrics<TypeConfig>, me: NodeId, peers: &Peers, lease: Duration) -> Option<(u64, u64)> {
    if m.state != ServerState::Leader || !m.vote.committed || m.vote.leader_id.node_id != me {
        return None;
    }
    let term = m.vote.leader_id.term;
    let index = m.last_log_index?;
    let last = log_id(term, me, index);
    if m.local_committed != Some(last) {
        return None;
    }
    let matched = m
        .replication
        .as_ref()
        .is_none_or(|r| r.iter().all(|(id, matched)| *matched == Some(last) || !peers.heard_within(*id, lease)));
    matched.then_some((term, index))
}

/// Whether `m` shows this node following `leader`'s leadership at `term` with its last log id
/// (term, leader, index), committed.
fn follows_quietly(m: &RaftMetrics<TypeConfig>, leader: NodeId, term: u64, index: u64) -> bool {
    matches!(m.state, ServerState::Follower | ServerState::Learner)
        && m.vote == Vote::new_committed(term, leader)
        && m.last_log_index == Some(index)
        && m.local_committed == Some(log_id(term, leader, index))
}

/// The heartbeat `leader` sends a follower matched at its last log id (term, leader, index), which
/// is committed: what a quiet leader's node heartbeat stands for. Delivered late it is just a
/// delayed heartbeat (it renews the follower's leader lease), which Raft tolerates.
fn quiet_heartbeat(leader: NodeId, term: u64, index: u64) -> AppendEntriesRequest<TypeConfig> {
    let last = log_id(term, leader, index);
    AppendEntriesRequest {
        vote: Vote::new_committed(term, leader),
        prev_log_id: Some(last),
        entries: Vec::new(),
        leader_commit: Some(last),
    }
}

/// A stable draw in `0..=span` for (node, group): spreads the quiet followers' leases.
fn jitter(node: NodeId, group: GroupId, span: u64) -> u64 {
    let mut x = node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ group.0.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    x % (span + 1)
}

impl fmt::Debug for RaftGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftGroup").field("id", &self.id).field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// The Raft groups running on this node, by id: where the transport's server finds the group a
/// message names. A group is in it from [`crate::Router::start_group`] until [`RaftGroup::shutdown`].
#[derive(Debug)]
pub struct LocalGroups {
    groups: RwLock<HashMap<GroupId, Arc<RaftGroup>>>,
    /// The node is stopping: no group registers any more ([`LocalGroups::close`]).
    closed: std::sync::atomic::AtomicBool,
    /// Turns true with `closed`, for what waits on it ([`LocalGroups::closing`]).
    closing: watch::Sender<bool>,
    /// Group starts under way ([`LocalGroups::starting`]); each holds the node's storage.
    starts: watch::Sender<usize>,
    /// Changes whenever a group registers, unregisters or changes its quiet state (see
    /// [`LocalGroups::quiet_generation`]).
    quiet_generation: std::sync::atomic::AtomicU64,
}

impl Default for LocalGroups {
    fn default() -> Self {
        Self {
            groups: RwLock::default(),
            closed: Default::default(),
            closing: watch::Sender::new(false),
            starts: watch::Sender::new(0),
            quiet_generation: Default::default(),
        }
    }
}

/// One group start under way, counted in [`LocalGroups`] until dropped.
#[derive(Debug)]
pub(crate) struct StartInProgress(Arc<LocalGroups>);

impl Drop for StartInProgress {
    fn drop(&mut self) {
        self.0.starts.send_modify(|n| *n -= 1);
    }
}

impl LocalGroups {
    /// A number that changes whenever a group registers, unregisters or changes its quiet state:
    /// while it stays the same, the groups that were quiet are still quiet in the same state.
    pub(crate) fn quiet_generation(&self) -> u64 {
        self.quiet_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn quiet_changed(&self) {
        self.quiet_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A running group.
    pub fn get(&self, id: GroupId) -> Option<Arc<RaftGroup>> {
        self.groups.read().get(&id).cloned()
    }

    /// Every running group (in no particular order).
    pub fn all(&self) -> Vec<Arc<RaftGroup>> {
        self.groups.read().values().cloned().collect()
    }

    /// Every running group, in id order.
    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.groups.read().keys().copied().collect();
        ids.sort();
        ids
    }

    /// Counts a group start until the returned guard is dropped.
    pub(crate) fn starting(self: &Arc<Self>) -> StartInProgress {
        self.starts.send_modify(|n| *n += 1);
        StartInProgress(self.clone())
    }

    /// Waits until no group start is under way, for at most `limit`; `false` if some still is.
    /// After [`LocalGroups::close`], every start ends soon: refused at registration, it stops
    /// its Raft core and lets the storage go.
    pub async fn starts_finished(&self, limit: Duration) -> bool {
        let mut rx = self.starts.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// Refuses every later registration (a start still under way then stops its Raft core
    /// itself) and returns the groups registered now, for the node's shutdown to stop: also any
    /// whose starter was cancelled after registering it, which nothing else would stop.
    pub fn close(&self) -> Vec<Arc<RaftGroup>> {
        let groups = self.groups.write();
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.closing.send_replace(true);
        groups.values().cloned().collect()
    }

    /// Turns true once the node is stopping ([`LocalGroups::close`]): what serves peers for the
    /// whole node (a multiplexed replication call) ends then, so peers open their next call to
    /// whatever serves this address next.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn register(&self, group: Arc<RaftGroup>) -> Result<(), RaftError> {
        let mut groups = self.groups.write();
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RaftError::ShuttingDown { group: group.id() });
        }
        if groups.contains_key(&group.id()) {
            return Err(RaftError::InvalidConfig(format!(
                "group {} is already running on node {}",
                group.id(),
                group.node_id()
            )));
        }
        groups.insert(group.id(), group);
        self.quiet_changed();
        Ok(())
    }

    fn unregister(&self, id: GroupId) {
        self.groups.write().remove(&id);
        self.quiet_changed();
    }
}

impl RaftGroup {
    /// Opens (or creates) the group's streams in `storage`, restores the application from the
    /// latest snapshot and re-applies the committed log above it, starts Raft (sending through
    /// `peers`) and registers the group in `registry` (so peers' messages reach it). Called by
    /// [`crate::Router::start_group`].
    pub(crate) async fn start(
        group: GroupId,
        storage: Arc<dyn StorageBackend>,
        app: Box<dyn StateMachineApp>,
        peers: &Arc<Peers>,
        registry: &Arc<LocalGroups>,
        config: RaftGroupConfig,
    ) -> Result<Arc<RaftGroup>, RaftError> {
        let node_id = peers.node_id();
        let raft_config = Arc::new(config.to_openraft()?);
        let retention = config.retention;
        let log = tokio::task::spawn_blocking(move || GroupLog::open(group, storage, retention))
            .await
            .map_err(|e| RaftError::Fatal { group, reason: format!("opening the group's streams failed: {e}") })??;
        log.set_cache_bytes(config.log_cache_bytes);
        let sm = GroupStateMachine::new(log.clone(), app);
        let applied = sm.subscribe_applied();
        let store = LogStore::new(log.clone());
        let network = GroupNetworkFactory::new(peers.clone(), group);
        let raft = Raft::new(node_id, raft_config, network, store, sm)
            .await
            .map_err(|e| RaftError::Fatal { group, reason: e.to_string() })?;
        let g = Arc::new(RaftGroup {
            id: group,
            node_id,
            metrics_rx: raft.metrics(),
            raft,
            log,
            registry: Arc::downgrade(registry),
            applied,
            election_timeout_max_ms: config.election_timeout_max_ms,
            heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
            max_payload_bytes: config.max_payload_bytes,
            stopped: watch::Sender::new(false),
            peers: peers.clone(),
            quiet: Mutex::new(Quiet {
                state: QuietState::Awake,
                stable: None,
                not_before: Instant::now(),
                since: Instant::now(),
                since_seq: 0,
                members: Arc::from([]),
            }),
            // The metadata group never goes quiet: it is one group (its heartbeats cost nothing at
            // scale), and its leader's quorum-ack age is the node's readiness signal.
            quiet_after: (config.quiesce_after_ms > 0 && group != GroupId::METADATA)
                .then(|| Duration::from_millis(config.quiesce_after_ms)),
            lease: Duration::from_millis(
                config.election_timeout_min_ms
                    + jitter(
                        node_id,
                        group,
                        config.election_timeout_max_ms.saturating_sub(config.election_timeout_min_ms),
                    ),
            ),
            retention_hold_max: Duration::from_millis(config.retention_hold_max_ms),
            retention_held_since: Mutex::new(None),
            appends_held: watch::Sender::new(false),
        });
        if let Err(e) = registry.register(g.clone()) {
            // Not registered: stop it here (not through `shutdown`, which would unregister a
            // group of the same id that does run), flusher included, so it lets the storage go.
            g.stopped.send_replace(true);
            let _ = g.raft.shutdown().await;
            g.log.wait_flusher_stopped().await;
            return Err(e);
        }
        Ok(g)
    }

    /// Where the group stands on quiescence.
    pub fn quiet_state(&self) -> QuietState {
        self.quiet.lock().state
    }

    /// Whether the group is quiet here (its ticker is off).
    pub fn is_quiet(&self) -> bool {
        self.quiet_state() != QuietState::Awake
    }

    /// Sets `state` and the ticker to match, under the lock (so a wake and a quiescence racing
    /// can never leave the ticker off on an awake group).
    fn set_quiet(&self, q: &mut Quiet, state: QuietState) {
        if state != QuietState::Awake && q.state == QuietState::Awake {
            q.since = Instant::now();
        }
        tracing::debug!(group = %self.id, node = self.node_id, from = ?q.state, to = ?state, "quiescence");
        if q.state != state {
            self.quiet_changed();
        }
        q.state = state;
        self.raft.runtime_config().tick(state == QuietState::Awake);
    }

    /// Wakes the group here (ticker on) and holds it awake for `quiet_after`. Every API call that
    /// needs the group's timers or a leader's heartbeats calls it first; a quiet leader's
    /// followers see its node heartbeat stop naming the group and wake too. Returns the state it
    /// was in.
    pub fn wake(&self) -> QuietState {
        let mut q = self.quiet.lock();
        q.not_before = Instant::now() + self.quiet_after.unwrap_or_default();
        q.stable = None;
        let was = q.state;
        if was != QuietState::Awake {
            self.set_quiet(&mut q, QuietState::Awake);
        }
        was
    }

    /// [`RaftGroup::wake`] before a write. openraft refuses a write (`NotLeader` without a leader)
    /// from a leader whose quorum-ack lease lapsed: no heartbeat or replication sent within the
    /// last election timeout was acknowledged by a quorum. A leader that was quiet for longer than
    /// that lost it (it sent nothing), and a busy one can (openraft gives each heartbeat one
    /// heartbeat interval; a follower answers an append only once its log is flushed, so on a
    /// loaded disk its answers come late). Such a leader, and one whose lease is within
    /// [`RaftGroup::lease_margin`] of lapsing, sends a heartbeat round now and waits until a
    /// quorum acknowledged one sent since, while it still leads: at most
    /// [`WAKE_WAIT_ELECTION_TIMEOUTS`] election timeouts (openraft sends another round at every
    /// heartbeat tick meanwhile). A single round's wait (the earlier rule) failed such writes
    /// when hundreds of groups woke at once. A leader that went quiet recently still holds its
    /// lease and writes at once (until 2026-12-07 every write to a quiet leader waited for a
    /// round: two round trips for the first write after half a second without one).
    async fn wake_for_write(&self) {
        self.wake();
        let lease = Duration::from_millis(self.election_timeout_max_ms);
        let me = self.node_id;
        let renew = {
            let m = self.metrics_rx.borrow_watched();
            m.current_leader == Some(me)
                && m.membership_config.membership().voter_ids().count() > 1
                && m.last_quorum_acked
                    .as_ref()
                    .is_none_or(|at| openraft::Instant::elapsed(&**at) + self.lease_margin() >= lease)
        };
        if !renew {
            return;
        }
        self.peers.counters().write_lease_renewals.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let _ = self.raft.trigger().heartbeat().await;
        let wait = lease.saturating_mul(WAKE_WAIT_ELECTION_TIMEOUTS as u32);
        let _ = self
            .raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    m.current_leader != Some(me)
                        || m.membership_config.membership().voter_ids().count() <= 1
                        || m.last_quorum_acked
                            .as_ref()
                            .is_some_and(|at| openraft::Instant::elapsed(&**at) <= since.elapsed())
                },
                "leader lease renewed",
            )
            .await;
    }

    /// How much of its quorum-ack lease a leader must have left to write without renewing it
    /// first: time for the write to reach openraft's core, which checks the lease itself. One
    /// heartbeat interval, and at least an eighth of the election timeout.
    fn lease_margin(&self) -> Duration {
        self.heartbeat_interval.max(Duration::from_millis(self.election_timeout_max_ms / 8))
    }

    /// How recently the leader's node must have been heard for a waking follower to count it
    /// alive: three node heartbeat intervals (one lost heartbeat is not a dead node).
    fn alive_within(&self) -> Duration {
        Duration::from_millis(self.peers.config().node_heartbeat_interval_ms.saturating_mul(3))
    }

    /// Wakes the group because a message for it arrived (a vote, an append, a transfer) or its
    /// leader's node stopped naming it. A quiet follower whose leader's node is alive (heard
    /// within three node heartbeat intervals) first renews its leader lease in openraft with the
    /// heartbeat the node heartbeat stood for, so it does not campaign (or grant a vote) against
    /// a leader that is alive; otherwise (the leader's node is going silent: another follower's
    /// lease ran out first and it campaigns) it wakes as it is, judges the vote on openraft's
    /// stale lease and elects at its next tick. A quiet leader sends a heartbeat at once.
    pub(crate) async fn wake_for_message(&self) {
        let was = {
            let mut q = self.quiet.lock();
            q.not_before = Instant::now() + self.quiet_after.unwrap_or_default();
            q.stable = None;
            let was = q.state;
            if let QuietState::Following { leader, .. } = was
                && self.peers.heard_within(leader, self.alive_within())
            {
                // Ticker stays off until the lease is renewed below; the heartbeat loop turns it on
                // in any case at its next pass.
                q.state = QuietState::Awake;
                self.quiet_changed();
            } else if was != QuietState::Awake {
                self.set_quiet(&mut q, QuietState::Awake);
            }
            was
        };
        match was {
            QuietState::Following { leader, term, index } if self.peers.heard_within(leader, self.alive_within()) => {
                // A refusal (a higher vote here) or an error is fine: the ticker goes on anyway.
                let _ = self.raft.append_entries(quiet_heartbeat(leader, term, index)).await;
                let q = self.quiet.lock();
                if q.state == QuietState::Awake {
                    self.raft.runtime_config().tick(true);
                }
            }
            QuietState::Leading { .. } => {
                let _ = self.raft.trigger().heartbeat().await;
            }
            _ => {}
        }
    }

    /// A node heartbeat from `leader` names this group as quiet at (`term`, `index`): quiesce
    /// here if this node follows that leadership with that log id, committed. `false`: it cannot
    /// (it is behind, holds another vote, was woken lately, leads, or quiescence is off), so the
    /// leader must wake the group.
    pub(crate) fn follow_quiet(&self, leader: NodeId, term: u64, index: u64) -> bool {
        if self.quiet_after.is_none() || leader == self.node_id {
            return false;
        }
        let m = self.metrics_rx.borrow_watched();
        let mut q = self.quiet.lock();
        let wanted = QuietState::Following { leader, term, index };
        if q.state == wanted {
            return true;
        }
        if Instant::now() < q.not_before || !follows_quietly(&m, leader, term, index) {
            if q.state != QuietState::Awake {
                self.set_quiet(&mut q, QuietState::Awake);
            }
            return false;
        }
        q.members = other_members(&m, self.node_id);
        self.set_quiet(&mut q, wanted);
        true
    }

    /// Since which node heartbeat this node has led the group quietly (`None`: it does not).
    pub(crate) fn quiet_since_seq(&self) -> Option<u64> {
        let q = self.quiet.lock();
        matches!(q.state, QuietState::Leading { .. }).then_some(q.since_seq)
    }

    /// A follower asked this quiet leader to wake the group: heartbeats resume now.
    pub(crate) async fn wake_on_request(&self) {
        if let QuietState::Leading { .. } = self.wake() {
            let _ = self.raft.trigger().heartbeat().await;
        }
    }

    /// The heartbeat pass's look at a group that is quiet here, without its metrics: what
    /// [`RaftGroup::evaluate_quiet`] decides, except the checks of the group's own Raft state
    /// (which changes only through a message, a write or a wake, each of which wakes the group
    /// first) and of what its leader's node heartbeats name (checked as they arrive:
    /// [`crate::heartbeat::NodeHeartbeats::receive`] renews the lease of a quiet follower whose
    /// leader stopped naming it). The pass still makes every check every few passes. A quiet
    /// follower wakes when its leader's node was silent for the lease (`heard_at`: when each node
    /// was last heard). `None`: the group is awake here (look with its metrics).
    pub(crate) fn evaluate_quiet_cached(
        &self,
        now: Instant,
        heard_at: &HashMap<NodeId, Instant>,
    ) -> Option<(QuietState, QuietMembers)> {
        self.quiet_after?;
        let mut q = self.quiet.lock();
        match q.state {
            QuietState::Awake => None,
            QuietState::Leading { .. } => Some((q.state, q.members.clone())),
            QuietState::Following { leader, .. } => {
                let alive = self.within_lease(heard_at.get(&leader).copied(), now);
                if !alive {
                    self.set_quiet(&mut q, QuietState::Awake);
                }
                Some((q.state, q.members.clone()))
            }
        }
    }

    /// Whether a quiet follower whose leader's node was last heard at `at` is within its lease.
    fn within_lease(&self, at: Option<Instant>, now: Instant) -> bool {
        at.is_some_and(|at| now.saturating_duration_since(at) <= self.lease)
    }

    /// Counts a change of this group's quiet state in the node's [`LocalGroups::quiet_generation`].
    fn quiet_changed(&self) {
        if let Some(groups) = self.registry.upgrade() {
            groups.quiet_changed();
        }
    }

    /// How long a quiet follower of this group keeps its election timer off without a node
    /// heartbeat from the leader's node.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether this group is quiet here following `leader` (a node heartbeat of which named it).
    pub(crate) fn is_quiet_following(&self, leader: NodeId) -> bool {
        matches!(self.quiet.lock().state, QuietState::Following { leader: l, .. } if l == leader)
    }

    /// The heartbeat loop's pass over this group (`m` is its metrics now): a leader that has been
    /// idle and matched everywhere for `quiet_after` goes quiet; a quiet leader whose log, term or
    /// followers moved wakes; a quiet follower wakes when its leader's node was silent for the
    /// lease (as it is: it elects at its next tick) or stopped naming the group (lease renewed
    /// first, see [`RaftGroup::wake_for_message`]). Returns the state after the pass, and whether
    /// a lease renewal is due ([`RaftGroup::wake_for_message`], which the loop runs on a task).
    pub(crate) fn evaluate_quiet(&self, m: &RaftMetrics<TypeConfig>, now: Instant, seq: u64) -> (QuietState, bool) {
        let Some(after) = self.quiet_after else {
            return (QuietState::Awake, false);
        };
        let mut q = self.quiet.lock();
        match q.state {
            QuietState::Awake => {
                match leader_quiet_key(m, self.node_id, &self.peers, self.lease) {
                    Some(key) => match q.stable {
                        Some((k, since)) if k == key => {
                            if now >= since + after && now >= q.not_before {
                                q.since_seq = seq;
                                q.members = other_members(m, self.node_id);
                                self.set_quiet(&mut q, QuietState::Leading { term: key.0, index: key.1 });
                            }
                        }
                        _ => q.stable = Some((key, now)),
                    },
                    None => q.stable = None,
                }
                if q.state == QuietState::Awake {
                    // The safety net: an awake group's ticker is on, whatever raced before.
                    self.raft.runtime_config().tick(true);
                }
                (q.state, false)
            }
            QuietState::Leading { term, index } => {
                if leader_quiet_key(m, self.node_id, &self.peers, self.lease) != Some((term, index)) {
                    q.not_before = now + after;
                    q.stable = None;
                    self.set_quiet(&mut q, QuietState::Awake);
                }
                (q.state, false)
            }
            QuietState::Following { leader, term, index } => {
                let (named, at) = self.peers.named_by(leader, self.id);
                let alive = self.within_lease(at, now);
                if !alive || !follows_quietly(m, leader, term, index) {
                    self.set_quiet(&mut q, QuietState::Awake);
                    (QuietState::Awake, false)
                } else if named != Some((term, index)) {
                    (q.state, true)
                } else {
                    (q.state, false)
                }
            }
        }
    }

    /// On a quiet leader: whether follower `id`'s node was heard within `within` (a quiet
    /// group's followers were all matched when it went quiet, and it wakes when one moves).
    fn quiet_follower_heard(&self, id: NodeId, within: Duration) -> Option<bool> {
        match self.quiet.lock().state {
            QuietState::Leading { .. } => Some(self.peers.heard_within(id, within)),
            _ => None,
        }
    }

    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The underlying openraft handle.
    pub fn raft(&self) -> &Raft<TypeConfig, GroupStateMachine> {
        &self.raft
    }

    /// A watch that turns `true` once [`RaftGroup::shutdown`] has begun.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stopped.subscribe()
    }

    /// The shared log handle (storage streams of this group).
    pub fn log(&self) -> &Arc<GroupLog> {
        &self.log
    }

    fn fatal(&self, e: &Fatal<TypeConfig>) -> RaftError {
        match e {
            Fatal::Stopped => RaftError::ShuttingDown { group: self.id },
            e => RaftError::Fatal { group: self.id, reason: e.to_string() },
        }
    }

    fn not_leader(&self, f: &ForwardToLeader<TypeConfig>) -> RaftError {
        not_leader(self.id, f)
    }

    fn write_err(&self, e: ClientWriteError<TypeConfig>) -> RaftError {
        write_err(self.id, e)
    }

    fn raft_err(&self, e: OpenraftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RaftError {
        match e {
            OpenraftError::APIError(e) => self.write_err(e),
            OpenraftError::Fatal(f) => self.fatal(&f),
        }
    }

    /// Refuses a payload over `max_payload_bytes` with a typed error, not an assertion: a group is
    /// a public API of its own (the metadata and partition layers and any other caller write
    /// through it), and a payload the storage refused after it was proposed would stop the group
    /// on every replica.
    fn check_size(&self, position: usize, payload: &Bytes) -> Result<(), RaftError> {
        if payload.len() > self.max_payload_bytes {
            return Err(RaftError::PayloadTooLarge {
                group: self.id,
                position,
                size: payload.len(),
                max: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Bootstraps a brand-new group with these voters. Call it on one node only;
    /// [`RaftError::AlreadyInitialized`] if the group already has a membership.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), RaftError> {
        self.wake();
        self.raft.initialize(members).await.map_err(|e| match e {
            OpenraftError::APIError(InitializeError::NotAllowed(_)) => RaftError::AlreadyInitialized { group: self.id },
            OpenraftError::APIError(e) => RaftError::MembershipChange { group: self.id, reason: e.to_string() },
            OpenraftError::Fatal(f) => self.fatal(&f),
        })
    }

    /// Replicates one payload; returns once it is committed (on a majority, fsynced) and applied
    /// on this node.
    pub async fn write(&self, payload: Bytes) -> Result<WriteResult, RaftError> {
        self.check_size(0, &payload)?;
        self.wake_for_write().await;
        let resp = self.raft.client_write(AppPayload::new(payload)).await.map_err(|e| self.raft_err(e))?;
        Ok(WriteResult { index: resp.log_id.index, response: resp.data.0 })
    }

    /// Replicates a batch (openraft `client_write_many`): one result per payload, in order. A
    /// leadership change can fail a tail of the batch while its head is committed. A payload over
    /// `max_payload_bytes` fails the whole call before anything is proposed.
    pub async fn write_many(&self, payloads: Vec<Bytes>) -> Result<Vec<Result<WriteResult, RaftError>>, RaftError> {
        for (i, p) in payloads.iter().enumerate() {
            self.check_size(i, p)?;
        }
        self.wake_for_write().await;
        let n = payloads.len();
        let mut stream =
            self.raft.client_write_many(payloads.into_iter().map(AppPayload::new)).await.map_err(|e| self.fatal(&e))?;
        let mut out = Vec::with_capacity(n);
        while let Some(item) = stream.next().await {
            match item {
                Ok(Ok(r)) => out.push(Ok(WriteResult { index: r.log_id.index, response: r.response.0 })),
                Ok(Err(e)) => out.push(Err(self.write_err(e))),
                Err(f) => return Err(self.fatal(&f)),
            }
        }
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }

    /// The committed leader id (term and node) of this node's leadership; `NotLeader` if it does
    /// not lead. Pass it to [`RaftGroup::propose`] to keep a proposal within this leadership.
    pub fn leader_id(&self) -> Result<LeaderId, RaftError> {
        self.raft.as_leader().map(|l| l.to_committed_leader_id()).map_err(|f| self.not_leader(&f))
    }

    /// Queues one payload in the Raft core, only if `leader` (from [`RaftGroup::leader_id`]) still
    /// leads: returns once it is queued (payloads proposed one after another are appended in that
    /// order, all in `leader`'s term), and the returned [`PendingWrite`] resolves once it is
    /// committed and applied here. Under another leadership the write is refused before it is
    /// appended (`NotLeader`), so an entry prepared for one term is never written in another.
    pub async fn propose(&self, payload: Bytes, leader: LeaderId) -> Result<PendingWrite, RaftError> {
        self.check_size(0, &payload)?;
        self.wake_for_write().await;
        let (responder, rx) = ProgressResponder::complete_only();
        self.raft
            .write(AppPayload::new(payload))
            .with_leader(leader)
            .responder(responder)
            .await
            .map_err(|e| self.fatal(&e))?;
        Ok(PendingWrite { group: self.id, rx })
    }

    /// Read-index: confirms this node still leads with a quorum, then waits until it has applied
    /// everything committed before the call. Returns that read index; reads of the application
    /// state afterwards are linearizable.
    pub async fn ensure_linearizable(&self) -> Result<u64, RaftError> {
        self.wake_for_write().await;
        let read = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|e| match e {
            OpenraftError::APIError(LinearizableReadError::ForwardToLeader(f)) => self.not_leader(&f),
            // The leader could not confirm its leadership with a quorum in time: retryable.
            OpenraftError::APIError(e @ LinearizableReadError::QuorumNotEnough(_)) => {
                RaftError::NoQuorum { group: self.id, reason: e.to_string() }
            }
            OpenraftError::Fatal(f) => self.fatal(&f),
        })?;
        Ok(read.index())
    }

    /// A snapshot of openraft's metrics for this group.
    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.metrics_rx.borrow_watched().clone()
    }

    /// Waits until `pred` holds for this group's metrics; [`RaftError::Timeout`] after `timeout`.
    pub async fn wait_metrics(
        &self,
        what: &'static str,
        timeout: Duration,
        pred: impl Fn(&RaftMetrics<TypeConfig>) -> bool + Send,
    ) -> Result<RaftMetrics<TypeConfig>, RaftError> {
        self.raft.wait(Some(timeout)).metrics(pred, what).await.map_err(|_| RaftError::Timeout {
            group: self.id,
            what,
            timeout_ms: timeout.as_millis() as u64,
        })
    }

    /// `Ok` while the group's Raft core runs; the error that stopped it otherwise (a storage
    /// failure, a panic, or shutdown). A stopped core does not recover: restart the group.
    pub fn health(&self) -> Result<(), RaftError> {
        match &self.metrics_rx.borrow_watched().running_state {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fatal(e)),
        }
    }

    /// The current leader and its address, if known.
    pub fn leader(&self) -> Option<(NodeId, Node)> {
        self.with_metrics(|m| {
            let id = m.current_leader?;
            let node = m.membership_config.membership().get_node(&id).cloned().unwrap_or_default();
            Some((id, node))
        })
    }

    /// `f` of this group's current metrics, read in place (not cloned). Keep `f` short: openraft's
    /// core waits to publish new metrics while it runs.
    pub fn with_metrics<R>(&self, f: impl FnOnce(&RaftMetrics<TypeConfig>) -> R) -> R {
        f(&self.metrics_rx.borrow_watched())
    }

    /// On the leader: whether follower `id` acknowledged a heartbeat or replication within
    /// `within` (false on a follower, or for a node that never answered).
    /// A quiet leader sends no per-group heartbeats: there the follower's node heartbeat counts.
    pub fn follower_acked_within(&self, id: NodeId, within: Duration) -> bool {
        if let Some(heard) = self.quiet_follower_heard(id, within) {
            return heard;
        }
        self.with_metrics(|m| {
            m.heartbeat
                .as_ref()
                .and_then(|h| h.get(&id).cloned().flatten())
                .is_some_and(|at| openraft::Instant::elapsed(&*at) <= within)
        })
    }

    /// Fault injection for tests and drills: while `hold` is set, AppendEntries that carry entries
    /// for this group wait at this node's Raft server before reaching the group, while heartbeats
    /// still pass. The follower stays live to its leader but falls behind, as behind a slow disk
    /// or link. Clearing it lets the held messages through in order.
    pub fn hold_appends(&self, hold: bool) {
        self.appends_held.send_replace(hold);
    }

    /// Returns once [`RaftGroup::hold_appends`] is off (at once unless a test set it) or the group
    /// stopped.
    pub(crate) async fn appends_released(&self) {
        if !*self.appends_held.borrow() {
            return;
        }
        let mut held = self.appends_held.subscribe();
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            _ = held.wait_for(|h| !*h) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    }

    /// Whether this node currently leads the group.
    pub fn is_leader(&self) -> bool {
        self.metrics_rx.borrow_watched().current_leader == Some(self.node_id)
    }

    /// The last index applied on this node.
    pub fn applied_index(&self) -> Option<u64> {
        *self.applied.borrow()
    }

    /// The last index this node knows committed.
    pub fn committed_index(&self) -> Option<u64> {
        self.metrics_rx.borrow_watched().local_committed.map(|l| l.index)
    }

    /// A watch of the last applied index, for long polls.
    pub fn subscribe_applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied.clone()
    }

    /// Waits until this node applied `index`; returns the applied index then.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<u64, RaftError> {
        let mut rx = self.applied.clone();
        let wait = rx.wait_for(|a| a.is_some_and(|a| a >= index));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(v)) => Ok(v.unwrap_or(index)),
            Ok(Err(_)) => Err(RaftError::ShuttingDown { group: self.id }),
            Err(_) => Err(RaftError::Timeout {
                group: self.id,
                what: "applied index",
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    /// Verified reads of applied entries from `from_index`, up to about `max_bytes` of records
    /// (at least one if any is available). Below the storage log start:
    /// [`RaftError::OffsetOutOfRange`] with the current start.
    pub async fn read_committed(&self, from_index: u64, max_bytes: usize) -> Result<Vec<CommittedEntry>, RaftError> {
        self.read_committed_checked(from_index, max_bytes, ReadCheck::Chain).await
    }

    /// [`RaftGroup::read_committed`], each entry checked as `check` says (with
    /// [`ReadCheck::Frames`] an entry's `chain_hash` is the link its successor stores: for a
    /// reader that recomputes the chain itself).
    pub async fn read_committed_checked(
        &self,
        from_index: u64,
        max_bytes: usize,
        check: ReadCheck,
    ) -> Result<Vec<CommittedEntry>, RaftError> {
        let end = self.applied_index().map_or(0, |a| a + 1);
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.read_for_app_checked(from_index, end, max_bytes, check))
            .await
            .map_err(|e| RaftError::Fatal { group: self.id, reason: format!("read task failed: {e}") })?
    }

    /// The storage chain hash of the record at `index`.
    pub fn chain_hash_at(&self, index: u64) -> Result<ChainHash, RaftError> {
        self.log.chain_hash_at(index)
    }

    /// The chain hash of the entry at `index` as this replica's append computed it when it stored
    /// the entry (the storage chain hash of its record): from the in-memory log tail when the entry
    /// is still there, else storage's [`RaftGroup::chain_hash_at`] on the blocking pool. What a
    /// writer's acknowledgement names, without hashing the record a second time.
    pub async fn appended_chain_hash(&self, index: u64) -> Result<ChainHash, RaftError> {
        if let Some(hash) = self.log.appended_chain_hash(index) {
            return Ok(hash);
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.chain_hash_at(index))
            .await
            .map_err(|e| RaftError::Fatal { group: self.id, reason: format!("chain hash task failed: {e}") })?
    }

    /// The first index still stored.
    pub fn log_start(&self) -> Result<u64, RaftError> {
        self.log.log_start()
    }

    /// One past the last stored index.
    pub fn next_index(&self) -> Result<u64, RaftError> {
        self.log.next_index()
    }

    /// Builds a snapshot of everything applied now (a checkpoint at applied + 1) and waits for it.
    /// Returns the snapshot's last included index (`None` if nothing was applied yet).
    pub async fn trigger_snapshot(&self, timeout: Duration) -> Result<Option<u64>, RaftError> {
        let Some(target) = self.applied_index() else {
            return Ok(None);
        };
        self.raft.trigger().snapshot().await.map_err(|e| self.fatal(&e))?;
        let m = self.wait_metrics("snapshot", timeout, |m| m.snapshot.is_some_and(|s| s.index >= target)).await?;
        Ok(m.snapshot.map(|s| s.index))
    }

    /// Replaces the retention policy (takes effect at the next purge or
    /// [`RaftGroup::enforce_retention`]).
    pub fn set_retention(&self, retention: Retention) {
        self.log.set_retention(retention);
    }

    /// Never physically remove records at or above `below_index` (e.g. what a consumer still needs).
    pub fn set_purge_limit(&self, below_index: Option<u64>) {
        self.log.set_purge_limit(below_index);
    }

    /// Runs retention now (age limits need this periodically). Returns the log start afterwards.
    ///
    /// Purging is what lets openraft send a follower a snapshot instead of entries, so the log is
    /// purged exactly up to the retention start: the first offset the topic's retention keeps,
    /// never past the last snapshot (a snapshot must cover what goes). A keep-all log is never
    /// purged. On a leader the purge also stops below what a live follower (one that acknowledged
    /// within [`RETENTION_HOLD_LIVE_ELECTION_TIMEOUTS`] election timeouts) still needs, for at most
    /// [`RaftGroupConfig::retention_hold_max_ms`] in a row: a follower that is merely slow, or a
    /// new replica filling up, then gets the records themselves, not a snapshot that would leave
    /// it without the history below it. The purge waits (up to `timeout`) for openraft, which
    /// delays it while those entries are being replicated; the records then go from storage below
    /// the durable purge point.
    pub async fn enforce_retention(&self, timeout: Duration) -> Result<u64, RaftError> {
        let snapshot = self.metrics_rx.borrow_watched().snapshot.map(|s| s.index);
        if let Some(snapshot) = snapshot {
            let log = self.log.clone();
            let target = self.blocking("retention target", move || log.retention_target(snapshot)).await?;
            let upto = match target {
                Some(start) => self.purge_point_for_followers(start - 1),
                None => {
                    *self.retention_held_since.lock() = None;
                    None
                }
            };
            if let Some(upto) = upto {
                self.raft.trigger().purge_log(upto).await.map_err(|e| self.fatal(&e))?;
                self.wait_metrics("retention purge", timeout, |m| m.purged.is_some_and(|p| p.index >= upto)).await?;
            }
        }
        let log = self.log.clone();
        self.blocking("retention", move || log.enforce_retention()).await
    }

    /// Retention's purge point `upto` (inclusive) lowered, on a leader, to the lowest index a live
    /// follower matched below it (`None`: such a follower holds nothing yet, nothing may go), while
    /// the hold has lasted less than [`RaftGroupConfig::retention_hold_max_ms`]. A follower that
    /// does not answer is not waited for (it catches up by snapshot, ARCHITECTURE.md "Purge only
    /// to the retention start").
    fn purge_point_for_followers(&self, upto: u64) -> Option<u64> {
        let behind: Vec<(NodeId, Option<u64>)> = self.with_metrics(|m| {
            if m.current_leader != Some(self.node_id) {
                return Vec::new();
            }
            let Some(replication) = m.replication.as_ref() else { return Vec::new() };
            replication
                .iter()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, matched)| (*id, matched.as_ref().map(|l| l.index)))
                .filter(|(_, matched)| matched.is_none_or(|i| i < upto))
                .collect()
        });
        let live = Duration::from_millis(self.election_timeout_max_ms * RETENTION_HOLD_LIVE_ELECTION_TIMEOUTS);
        let held_for: Vec<(NodeId, Option<u64>)> =
            behind.into_iter().filter(|(id, _)| self.follower_acked_within(*id, live)).collect();
        let mut since = self.retention_held_since.lock();
        let Some(lowest) = held_for.iter().map(|(_, matched)| *matched).min() else {
            *since = None;
            return Some(upto);
        };
        let now = Instant::now();
        let held = now.duration_since(*since.get_or_insert(now));
        if held >= self.retention_hold_max {
            tracing::warn!(
                group = %self.id,
                followers = ?held_for,
                upto,
                held_ms = held.as_millis() as u64,
                "retention: live followers still behind the retention start after the hold limit; purging, they catch up by snapshot"
            );
            return Some(upto);
        }
        debug_assert!(lowest.is_none_or(|l| l < upto), "a hold only ever lowers the purge point");
        tracing::debug!(group = %self.id, followers = ?held_for, upto, "retention: purge held for followers catching up");
        lowest
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> Result<T, RaftError> + Send + 'static,
    ) -> Result<T, RaftError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| RaftError::Fatal { group: self.id, reason: format!("{what} task failed: {e}") })?
    }

    /// Adds (or updates) a learner; with `blocking`, waits until it has caught up.
    pub async fn add_learner(&self, id: NodeId, node: Node, blocking: bool) -> Result<(), RaftError> {
        self.wake_for_write().await;
        self.raft.add_learner(id, node, blocking).await.map_err(|e| self.raft_err(e))?;
        Ok(())
    }

    /// Makes `voters` the voter set (via joint consensus). Removed voters stay as learners when
    /// `retain_removed_as_learners`.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
        retain_removed_as_learners: bool,
    ) -> Result<(), RaftError> {
        self.wake_for_write().await;
        self.raft.change_membership(voters, retain_removed_as_learners).await.map_err(|e| self.raft_err(e))?;
        Ok(())
    }

    /// Removes `ids` (learners, or voters already out of the voter set) from the group.
    pub async fn remove_nodes(&self, ids: BTreeSet<NodeId>) -> Result<(), RaftError> {
        self.wake_for_write().await;
        let change = openraft::ChangeMembers::RemoveNodes(ids);
        self.raft.change_membership(change, false).await.map_err(|e| self.raft_err(e))?;
        Ok(())
    }

    /// Hands leadership to `to` and waits (up to ten election timeouts) until it leads.
    ///
    /// From the moment it hands over, openraft's leader sends no heartbeats and refuses writes
    /// until another node leads, so a hand-over that cannot land leaves the group without a
    /// writable leader until an election. So it is refused before anything is sent
    /// ([`RaftError::TransferRefused`]) unless `to` is a voter whose replica answered this leader
    /// within two heartbeat intervals and holds every committed entry (waited for up to one
    /// election timeout). See [`RaftGroup::transfer_leader_to_live`] for a target still catching
    /// up.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), RaftError> {
        self.hand_over(to, true).await
    }

    /// [`RaftGroup::transfer_leader`] to a voter whose replica answers but may be behind: it is
    /// sent the rest of the log before it takes over, and writes wait meanwhile. For a leader that
    /// must give up leadership whoever is closest (its own log is damaged).
    pub async fn transfer_leader_to_live(&self, to: NodeId) -> Result<(), RaftError> {
        self.hand_over(to, false).await
    }

    async fn hand_over(&self, to: NodeId, in_sync: bool) -> Result<(), RaftError> {
        self.leader_id()?;
        if to == self.node_id {
            return Ok(());
        }
        self.wake();
        // Fresh answers for the check: a group that was quiet sent nothing lately.
        let _ = self.raft.trigger().heartbeat().await;
        let election = Duration::from_millis(self.election_timeout_max_ms);
        let checked = Instant::now();
        loop {
            match self.transfer_refusal(to, in_sync) {
                None => break,
                Some(reason @ TransferRefusal::NotAVoter { .. }) => {
                    return Err(RaftError::TransferRefused { group: self.id, to, reason });
                }
                Some(reason) if checked.elapsed() >= election => {
                    return Err(RaftError::TransferRefused { group: self.id, to, reason });
                }
                Some(_) => tokio::time::sleep(self.heartbeat_interval).await,
            }
        }
        self.raft.trigger().transfer_leader(to).await.map_err(|e| self.fatal(&e))?;
        // The target ignores the hand-over if it does not hold the leader's last entry when the
        // message arrives (the message can overtake the entries), and openraft never sends it
        // again: while this node still leads and the target's node is alive, send it again every
        // election timeout. A target that died meanwhile is not sent it again: the other voters,
        // told of the hand-over, judge this leader's lease over and elect within an election
        // timeout, as no heartbeats come.
        let deadline = Instant::now() + election * 10;
        let me = self.node_id;
        loop {
            let step = election.min(deadline.saturating_duration_since(Instant::now()));
            let settled = |m: &RaftMetrics<TypeConfig>| m.current_leader.is_some_and(|l| l != me);
            if let Ok(m) = self.wait_metrics("leader transfer", step, settled).await {
                return match m.current_leader {
                    Some(l) if l == to => Ok(()),
                    leader => Err(RaftError::TransferFailed { group: self.id, to, leader }),
                };
            }
            if Instant::now() >= deadline {
                let timeout_ms = election.as_millis() as u64 * 10;
                return Err(RaftError::Timeout { group: self.id, what: "leader transfer", timeout_ms });
            }
            if self.is_leader() && self.peers.heard_within(to, self.alive_within()) {
                tracing::info!(group = %self.id, to, "leader transfer: sending the hand-over again");
                self.raft.trigger().transfer_leader(to).await.map_err(|e| self.fatal(&e))?;
            }
        }
    }

    /// Why `to` cannot take over now (`None`: it can): it must be a voter whose replica answered
    /// within two heartbeat intervals and, if `in_sync`, holds every committed entry.
    fn transfer_refusal(&self, to: NodeId, in_sync: bool) -> Option<TransferRefusal> {
        let within = self.heartbeat_interval * 2;
        let answering = self.follower_acked_within(to, within);
        self.with_metrics(|m| {
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            if !voters.contains(&to) {
                return Some(TransferRefusal::NotAVoter { voters });
            }
            if !answering {
                return Some(TransferRefusal::NotAnswering { within_ms: within.as_millis() as u64 });
            }
            let matched = matched_index(m, to);
            let committed = m.local_committed.as_ref().map_or(0, |l| l.index);
            (in_sync && matched.is_none_or(|i| i < committed)).then_some(TransferRefusal::Behind { matched, committed })
        })
    }

    /// Stops Raft and unregisters the group from this node's [`LocalGroups`]. Its streams stay in
    /// storage; start it again to resume.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.stopped.send_replace(true);
        if let Some(registry) = self.registry.upgrade() {
            registry.unregister(self.id);
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Fatal { group: self.id, reason: format!("shutdown failed: {e}") })?;
        self.log.wait_flusher_stopped().await;
        // The newest committed id, if its write was deferred, so a clean restart re-applies all.
        let log = self.log.clone();
        if let Err(e) =
            crate::log_store::blocking(move || log.meta().write_deferred().map_err(crate::log_store::io_err)).await
        {
            tracing::warn!(group = %self.id, error = %e, "writing the deferred committed id at shutdown failed");
        }
        Ok(())
    }
}
