//! The reconcile loop: makes this node's groups match the applied metadata.
//!
//! Each pass (on every metadata change, and every `reconcile_interval_ms`):
//! 1. On the metadata leader, once after bootstrap: record the metadata group's Raft members as
//!    the initial metadata members (one `Bootstrap` command; later changes come from
//!    `add_node` / `remove_node`).
//! 2. Start the group of every partition this node replicates; the first replica of a partition
//!    at `replica_epoch` 0 initialises it with the replica set. No partition group starts until
//!    this node's metadata is current (`metadata_current`: a metadata leader is known and this
//!    node applied everything that leader reported committed), so a node that comes back never
//!    starts groups of topics deleted while it was away; and each group's assignment is read
//!    again from the applied metadata just before it starts (a topic deleted during a long pass
//!    is not started). Up to `start_concurrency` groups start and are tended at once, so one
//!    slow start does not hold up the rest.
//! 3. Stop groups this node no longer replicates and delete their streams: at once when the topic
//!    is deleted; when the replica moved to another node, only once the move is done (this node is
//!    no longer a voter of the group), so the partition never has fewer replicas than assigned
//!    while the new one catches up. A leader that is moved away hands leadership to a caught-up
//!    replica first. Streams left by topics deleted while this node was down are deleted too.
//! 4. On a partition leader: move the group's voters to the assigned replicas one safe step per
//!    pass (add a new replica as a learner; once every new one has caught up, make the voters the
//!    assignment, keeping removed voters as learners; remove those learners once they have seen
//!    that membership), and hand leadership to the preferred replica (the first) once it is caught
//!    up, answered within two heartbeat intervals (a replica that just went down still looks
//!    caught up) and this node has led for `preferred_leader_delay_ms` in its current term, so
//!    leaders stay spread (leader balancing, Kafka's auto leader rebalance). At most
//!    `leader_transfers_per_pass` such hand-overs start per pass on a node, so a node that comes
//!    back does not get all its leaderships back in one burst of elections.
//!
//! Steps 2 and 4 visit every group only on a full pass: after a metadata change and every
//! `reconcile_full_every` passes. A visit says whether the group is settled (initialised, and
//! following, or leading on its preferred replica with exactly the assigned voters); the passes
//! in between visit only the groups the last pass left unsettled, so an idle node of thousands of
//! groups does not walk them all five times a second. A group that becomes unsettled without a
//! metadata change (a follower elected leader, a group stopped on an error) waits for the next
//! full pass, at most `reconcile_full_every` intervals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::apps::PartitionApp;
use super::metadata::{MetadataCommand, MetadataState};
use super::partition::PartitionMachine;
use super::{Cluster, LocalPartition, catch_up};
use crate::cluster::api::*;
use crate::network::read_index::{ReadIndexError, read_index_from};
use crate::{Node, RaftError, Retention};

/// Runs passes until shutdown (or until the cluster is dropped).
pub(super) async fn run(cluster: Weak<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let Some((mut changed, interval)) = cluster
        .upgrade()
        .map(|c| (c.metadata_changed.clone(), Duration::from_millis(c.config.reconcile_interval_ms.max(10))))
    else {
        return;
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        match cluster.upgrade() {
            Some(c) => c.reconcile_once().await,
            None => return,
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = changed.changed() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// The Raft retention that implements a topic's retention policy.
pub(super) fn raft_retention(policy: RetentionPolicy) -> Retention {
    match policy {
        RetentionPolicy { retention_bytes: None, retention_ms: None } => Retention::KeepAll,
        RetentionPolicy { retention_bytes, retention_ms } => {
            Retention::Limits { retain_bytes: retention_bytes, retain_age_ms: retention_ms }
        }
    }
}

/// What this node should run for one partition.
pub(super) struct Wanted {
    topic: String,
    topic_id: TopicId,
    assignment: PartitionAssignment,
    retention: RetentionPolicy,
}

/// What this node should run, as of one metadata version (rebuilt only when it changes).
pub(super) struct WantedAt {
    version: u64,
    groups: BTreeMap<GroupId, Wanted>,
    next_topic_id: TopicId,
    live_topic_ids: BTreeSet<TopicId>,
}

impl WantedAt {
    fn build(state: &MetadataState, me: NodeId, version: u64) -> Self {
        let mut groups = BTreeMap::new();
        for t in state.topics().values() {
            for a in t.partitions.iter().filter(|a| a.replicas.contains(&me)) {
                groups.insert(
                    a.group,
                    Wanted { topic: t.name.clone(), topic_id: t.id, assignment: a.clone(), retention: t.retention },
                );
            }
        }
        let live_topic_ids = state.topics().values().map(|t| t.id).collect();
        Self { version, groups, next_topic_id: state.next_topic_id(), live_topic_ids }
    }
}

/// What the reconcile loop carries from one pass to the next.
#[derive(Default)]
pub(super) struct Plan {
    /// What this node should run, as of the last metadata version a pass saw.
    wanted: Option<Arc<WantedAt>>,
    /// Passes since the last full one (`u32::MAX`: a full pass is due).
    passes_since_full: u32,
    /// The groups the last pass visited and left unsettled: the passes between full ones visit
    /// only these.
    unsettled: BTreeSet<GroupId>,
}

/// What `state` assigns node `me` to run for group `gid` of topic `topic`, if anything (the topic
/// looked up by name, then checked by id: a topic deleted and created again under the same name
/// is another topic).
fn wanted_of(state: &MetadataState, topic: &str, gid: GroupId, me: NodeId) -> Option<Wanted> {
    let (topic_id, partition) = group_partition(gid)?;
    let t = state.topic(topic).filter(|t| t.id == topic_id)?;
    let a = t.partitions.get(partition as usize).filter(|a| a.group == gid && a.replicas.contains(&me))?;
    Some(Wanted { topic: t.name.clone(), topic_id: t.id, assignment: a.clone(), retention: t.retention })
}

/// The assignment of group `gid` in `state`, if its topic still exists.
fn assignment_of(state: &MetadataState, gid: GroupId) -> Option<PartitionAssignment> {
    let (topic_id, partition) = group_partition(gid)?;
    let t = state.topics().values().find(|t| t.id == topic_id)?;
    t.partitions.get(partition as usize).filter(|a| a.group == gid).cloned()
}

/// Takes one from `left` if any is left.
fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
}

impl Cluster {
    async fn reconcile_once(&self) {
        if self.meta().is_leader() {
            self.record_initial_members().await;
        }
        let _guard = self.lifecycle.lock().await;
        if *self.shutdown.borrow() {
            return;
        }
        let me = self.config.node_id;
        let version = *self.metadata_changed.borrow();
        let (plan, rebuilt, full) = {
            let mut plan = self.reconcile_plan.lock();
            let fresh = plan.wanted.as_ref().filter(|w| w.version == version).cloned();
            let rebuilt = fresh.is_none();
            let wanted = match fresh {
                Some(w) => w,
                None => {
                    let w = Arc::new(WantedAt::build(&self.metadata.read(), me, version));
                    // Every group is visited after a metadata change.
                    plan.passes_since_full = u32::MAX;
                    plan.wanted = Some(w.clone());
                    w
                }
            };
            plan.passes_since_full = plan.passes_since_full.saturating_add(1);
            (wanted, rebuilt, plan.passes_since_full >= self.config.reconcile_full_every.max(1))
        };
        let wanted = &plan.groups;

        // Restart the metadata group from disk if its core stopped (see `supervise`).
        self.supervise_metadata(&|g| wanted.contains_key(&g)).await;

        // Stop what is no longer ours: at once for a deleted topic, after the move for a moved replica.
        let leaving: Vec<(GroupId, Arc<LocalPartition>)> = self
            .partitions
            .read()
            .iter()
            .filter(|(g, _)| !wanted.contains_key(g))
            .map(|(g, l)| (*g, l.clone()))
            .collect();
        for (gid, local) in leaving {
            let assigned = assignment_of(&self.metadata.read(), gid);
            let done = match assigned {
                None => true,
                Some(a) => self.leave_partition(&local, &a).await,
            };
            if done {
                self.stop_and_delete(gid).await;
            }
        }

        // Delete streams of topics deleted while we were not running them: once per metadata
        // version, when the pass builds what this node should run (a pass on a timer finds
        // nothing new; with thousands of streams the walk costs).
        for stream in self.config.storage.streams().into_iter().filter(|_| rebuilt) {
            let gid = GroupId::of_stream(stream);
            let topic_id = gid.0 >> 16;
            if gid == METADATA_GROUP || topic_id == 0 || topic_id >= u64::from(plan.next_topic_id) {
                continue;
            }
            if !plan.live_topic_ids.contains(&(topic_id as TopicId))
                && !self.partitions.read().contains_key(&gid)
                && let Err(e) = self.config.storage.delete_stream(stream)
            {
                tracing::warn!(%stream, error = %e, "cannot delete stream of a deleted topic");
            }
        }

        // Start and look after what is ours, once the metadata is current.
        if !self.metadata_is_current().await {
            return;
        }
        let transfers_left = AtomicUsize::new(self.config.leader_transfers_per_pass);
        let concurrency = self.config.start_concurrency.max(1);
        // Only groups with something to do here are visited (a node of thousands of groups spent
        // most of its idle time visiting them): on a full pass every group but the steady
        // followers, in between only those the last pass left unsettled.
        let visit: Vec<(GroupId, &str)> = if full {
            self.reconcile_plan.lock().passes_since_full = 0;
            wanted
                .iter()
                .filter(|(gid, w)| !self.is_steady_follower(**gid, w))
                .map(|(gid, w)| (*gid, w.topic.as_str()))
                .collect()
        } else {
            let unsettled = std::mem::take(&mut self.reconcile_plan.lock().unsettled);
            unsettled.into_iter().filter_map(|gid| wanted.get(&gid).map(|w| (gid, w.topic.as_str()))).collect()
        };
        let unsettled = Mutex::new(BTreeSet::new());
        futures::stream::iter(visit)
            .for_each_concurrent(concurrency, |(gid, topic)| {
                let (transfers_left, unsettled) = (&transfers_left, &unsettled);
                async move {
                    if !self.run_partition(gid, topic, transfers_left).await {
                        unsettled.lock().insert(gid);
                    }
                }
            })
            .await;
        self.reconcile_plan.lock().unsettled = unsettled.into_inner();
    }

    /// Whether this node's applied metadata is current enough to start partition groups from:
    /// it applied the metadata group's read index, which the metadata leader confirmed with a
    /// quorum after this node started (after a restart the log replayed from disk may still list
    /// topics the others deleted meanwhile). Nothing this node merely heard decides it: a
    /// restarted node's metrics name the leader of its stored vote and its own log's commit
    /// index, a heartbeat built before the deletions can arrive after the restart (the old
    /// check trusted both and started deleted topics' groups under load), and a node restored as
    /// leader from its stored vote may have been deposed meanwhile. Once true it stays true for
    /// this `Cluster`.
    async fn metadata_is_current(&self) -> bool {
        if self.metadata_current.load(Ordering::Acquire) {
            return true;
        }
        // Not past shutdown: a pass waiting here holds the cluster, and so its storage, alive.
        let mut stopping = self.shutdown.subscribe();
        tokio::select! {
            current = self.learn_metadata_is_current() => current,
            _ = stopping.wait_for(|s| *s) => false,
        }
    }

    /// [`Cluster::metadata_is_current`]'s question, asked once: the read index, then the wait
    /// until it is applied here.
    async fn learn_metadata_is_current(&self) -> bool {
        let meta = self.meta();
        let Some((leader, node)) = meta.leader() else {
            tracing::debug!("metadata not current yet (no leader known); partition groups wait");
            return false;
        };
        // At most one heartbeat-round's worth of waiting per pass: the pass has other work, and
        // the next pass asks again.
        let limit = self.timeout().min(Duration::from_secs(2));
        let read = if leader == self.config.node_id {
            match tokio::time::timeout(limit, meta.ensure_linearizable()).await {
                Ok(Ok(index)) => Ok(index),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no read index confirmed within {limit:?}")),
            }
        } else {
            match read_index_from(self.router.peers(), METADATA_GROUP, leader, &node.addr, limit).await {
                Ok(index) => Ok(index),
                // A metadata leader of a version before ReadIndex (a rolling upgrade): the commit
                // index its messages reported, once it covers this node's own log. Weaker (a
                // heartbeat built before the newest commits can pass it), but a node does not wait
                // for the leader's upgrade with its partition replicas down.
                Err(ReadIndexError::Rpc { status, .. }) if status.code() == tonic::Code::Unimplemented => meta
                    .with_metrics(|m| {
                        let committed = m.cluster_committed.as_ref()?.index();
                        (committed >= m.last_log_index.unwrap_or(0)).then_some(committed)
                    })
                    .inspect(|_| {
                        tracing::warn!(leader, "the metadata leader does not serve ReadIndex (an older version): trusting the commit index it sent; upgrade it")
                    })
                    .ok_or_else(|| "the metadata leader (an older version) has not sent a commit index covering this node's log yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let index = match read {
            Ok(index) => index,
            Err(reason) => {
                tracing::debug!(leader, %reason, "metadata not current yet; partition groups wait");
                return false;
            }
        };
        if let Err(e) = meta.wait_applied(index, limit).await {
            tracing::debug!(leader, index, error = %e, "metadata not applied up to the read index yet; partition groups wait");
            return false;
        }
        self.metadata_current.store(true, Ordering::Release);
        tracing::info!(leader, read_index = index, applied = ?meta.applied_index(), "metadata is current; starting partition groups");
        true
    }

    /// Whether `gid` runs here as a healthy follower that is initialised and keeps the topic's
    /// retention: then a pass has nothing to do for it (its leader moves replicas and hands
    /// leadership over), so it is not visited. A group that stopped is not steady: it is
    /// restarted as before.
    fn is_steady_follower(&self, gid: GroupId, w: &Wanted) -> bool {
        let Some(local) = self.partitions.read().get(&gid).cloned() else { return false };
        if self.to_initialise(&local, &w.assignment)
            || local.group.is_leader()
            || *local.retention.lock() != Some(w.retention)
            || self.stopped_reason(&local.group).is_some()
        {
            return false;
        }
        *local.leader_since.lock() = None;
        true
    }

    /// Whether this node, the first replica of a brand-new partition (replica epoch 0), has yet to
    /// initialise its group with the replica set.
    fn to_initialise(&self, local: &LocalPartition, a: &PartitionAssignment) -> bool {
        a.replica_epoch == 0
            && a.replicas.first() == Some(&self.config.node_id)
            && !local.initialized.load(Ordering::Acquire)
    }

    /// Starts (or restarts) partition `gid` here if the applied metadata still assigns it to
    /// this node, then tends it. Returns whether it is settled: nothing left to do for it here
    /// until something changes (see [`Cluster::tend_partition`]).
    async fn run_partition(&self, gid: GroupId, topic: &str, transfers_left: &AtomicUsize) -> bool {
        if !self.partitions.read().contains_key(&gid) {
            self.partition_starts_released().await;
        }
        if *self.shutdown.borrow() {
            return true;
        }
        // Read again now: the pass's list may be older than the metadata.
        let Some(w) = wanted_of(&self.metadata.read(), topic, gid, self.config.node_id) else {
            tracing::debug!(group = %gid, "no longer assigned here; not started");
            return true;
        };
        let existing = self.partitions.read().get(&gid).cloned();
        let local = match existing {
            Some(l) if self.stopped_reason(&l.group).is_none() => l,
            // Stopped on an error (a full disk): restarted from disk with backoff.
            existing if existing.is_some() || self.is_stopped(gid) => {
                match self.supervise_partition(gid, existing, &w).await {
                    Some(l) => l,
                    None => return false,
                }
            }
            _ => match self.start_partition(gid, &w).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(group = %gid, topic = %w.topic, partition = w.assignment.partition, error = %e, "cannot start partition group");
                    return false;
                }
            },
        };
        self.tend_partition(&local, &w, transfers_left).await
    }

    pub(super) async fn start_partition(&self, gid: GroupId, w: &Wanted) -> Result<Arc<LocalPartition>, ClusterError> {
        let state = Arc::new(RwLock::new(PartitionMachine::new()));
        let mut config = self.config.raft.clone();
        config.retention = raft_retention(w.retention);
        let group = self
            .router
            .start_group(gid, self.config.storage.clone(), Box::new(PartitionApp::new(state.clone())), config)
            .await?;
        if let Some(budget) = &self.config.log_cache_budget {
            group.log().set_cache_budget(budget);
        }
        let local = Arc::new(LocalPartition {
            topic: w.topic.clone(),
            topic_id: w.topic_id,
            partition: w.assignment.partition,
            group,
            state,
            retention: Mutex::new(Some(w.retention)),
            initialized: std::sync::atomic::AtomicBool::new(false),
            leader_since: Mutex::new(None),
            orphan_since: Mutex::new(None),
            leftover_since: Mutex::new(BTreeMap::new()),
            proposer: super::proposer::Proposer::new(),
            log_start_offset: Mutex::new(None),
        });
        self.partitions.write().insert(gid, local.clone());
        self.partition_starts.send_modify(|n| *n += 1);
        tracing::info!(group = %gid, topic = %w.topic, partition = w.assignment.partition, "partition group started");
        Ok(local)
    }

    async fn stop_and_delete(&self, gid: GroupId) {
        let Some(local) = self.partitions.write().remove(&gid) else { return };
        if let Err(e) = self.bounded_ignoring_shutdown("partition group shutdown", local.group.shutdown()).await {
            tracing::warn!(group = %gid, error = %e, "partition group shutdown failed");
        }
        for stream in [gid.log_stream(), gid.meta_stream()] {
            if let Err(e) = self.config.storage.delete_stream(stream) {
                tracing::warn!(group = %gid, %stream, error = %e, "cannot delete partition stream");
            }
        }
        tracing::info!(group = %gid, topic = %local.topic, partition = local.partition, "partition group stopped and deleted");
    }

    /// Tends a running partition: initialises it (first replica), keeps its retention, and on the
    /// leader moves its members to the assignment and hands leadership to the preferred replica.
    /// Returns whether it is settled: initialised, and either following here or leading on the
    /// preferred replica with exactly the assigned voters. A settled group is visited again only by
    /// the next full pass (`reconcile_full_every`) or a metadata change.
    async fn tend_partition(&self, local: &LocalPartition, w: &Wanted, transfers_left: &AtomicUsize) -> bool {
        let me = self.config.node_id;
        let a = &w.assignment;
        let mut settled = true;
        // Initialise a brand-new group from its first replica.
        if self.to_initialise(local, a) {
            let members: Option<BTreeMap<NodeId, Node>> =
                a.replicas.iter().map(|id| self.member_addr(*id).map(|addr| (*id, Node::new(addr)))).collect();
            match members {
                Some(members) => match tokio::time::timeout(self.timeout(), local.group.initialize(members)).await {
                    Ok(Ok(()) | Err(RaftError::AlreadyInitialized { .. })) => {
                        local.initialized.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Ok(Err(e)) => {
                        settled = false;
                        tracing::warn!(group = %a.group, error = %e, "cannot initialise partition group");
                    }
                    Err(_) => {
                        settled = false;
                        tracing::warn!(group = %a.group, "partition group initialisation timed out");
                    }
                },
                None => {
                    settled = false;
                    tracing::warn!(group = %a.group, "a replica has no member address yet");
                }
            }
        }
        // Retention follows the topic.
        {
            let mut current = local.retention.lock();
            if *current != Some(w.retention) {
                local.group.set_retention(raft_retention(w.retention));
                *current = Some(w.retention);
            }
        }
        if !local.group.is_leader() {
            *local.leader_since.lock() = None;
            return settled;
        }
        let metrics = local.group.metrics().clone();
        let leading_for = {
            let mut since = local.leader_since.lock();
            match *since {
                Some((term, at)) if term == metrics.current_term => at.elapsed(),
                _ => {
                    *since = Some((metrics.current_term, std::time::Instant::now()));
                    Duration::ZERO
                }
            }
        };
        let wanted: BTreeSet<NodeId> = a.replicas.iter().copied().collect();
        if !self.move_replicas(local, &metrics, &wanted).await {
            return false;
        }
        // Preferred leader: hand over once it has everything we have.
        let Some(&preferred) = a.replicas.first() else { return settled };
        if preferred == me {
            return settled;
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let caught_up = crate::group::matched_index(&metrics, preferred).is_some_and(|matched| matched >= last);
        let applied = metrics.last_applied.as_ref().map_or(0, |l| l.index());
        let delay = Duration::from_millis(self.config.preferred_leader_delay_ms);
        // Replication progress is the last the leader heard: a replica that just went down still
        // looks caught up. Only one that answered within two heartbeat intervals gets leadership
        // (a transfer to a dead node leaves the group without a writable leader until an election).
        let live_within = Duration::from_millis(2 * self.config.raft.heartbeat_interval_ms);
        let live = local.group.follower_acked_within(preferred, live_within);
        if caught_up
            && live
            && applied >= last
            && leading_for >= delay
            && take_one(transfers_left)
            && let Err(e) = self.bounded("preferred-leader transfer", local.group.transfer_leader(preferred)).await
        {
            tracing::debug!(group = %a.group, to = preferred, error = %e, "preferred-leader transfer failed");
        }
        false
    }

    /// On the group leader: one step of moving the group's members to `wanted`. Returns true once
    /// the voters are `wanted` and no other node is left in the group.
    ///
    /// 1. Add every wanted node that is not in the group as a learner.
    /// 2. Once every wanted node that is not a voter has caught up (`catch_up`), make `wanted` the
    ///    voters; voters that leave stay learners, so they replicate the membership that demotes
    ///    them and stop their groups on seeing it.
    /// 3. Remove the leftover learners once they hold that membership (or after four election
    ///    timeouts, for one that does not answer).
    async fn move_replicas(
        &self,
        local: &LocalPartition,
        metrics: &openraft::RaftMetrics<crate::TypeConfig>,
        wanted: &BTreeSet<NodeId>,
    ) -> bool {
        let gid = local.group.id();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let since = metrics.membership_config.log_id().as_ref().map_or(0, |l| l.index());
        let missing: Vec<NodeId> = wanted.difference(&known).copied().collect();
        if !missing.is_empty() {
            for id in missing {
                let Some(addr) = self.member_addr(id) else { continue };
                let add = local.group.add_learner(id, Node::new(addr), false);
                match self.bounded("adding a replica as learner", add).await {
                    Ok(()) => {
                        tracing::info!(group = %gid, node = id, "new replica added as learner; promoted once caught up")
                    }
                    Err(e) => tracing::warn!(group = %gid, node = id, error = %e, "cannot add replica as learner"),
                }
            }
            return false;
        }
        if &voters != wanted {
            let lagging: Vec<(NodeId, Option<u64>)> = wanted
                .difference(&voters)
                .map(|id| (*id, catch_up(metrics, *id, since)))
                .filter(|(_, c)| !c.caught_up)
                .map(|(id, c)| (id, c.matched))
                .collect();
            if !lagging.is_empty() {
                tracing::debug!(group = %gid, ?lagging, "new replicas still catching up");
                return false;
            }
            let change = local.group.change_membership(wanted.clone(), true);
            match self.bounded("partition membership change", change).await {
                Ok(()) => tracing::info!(group = %gid, voters = ?wanted, "partition voters changed"),
                Err(e) => tracing::warn!(group = %gid, ?wanted, error = %e, "cannot change partition membership"),
            }
            return false;
        }
        let leftovers: BTreeSet<NodeId> = known.difference(wanted).copied().collect();
        // A live learner gets the membership within a heartbeat or two; one that stopped its
        // group on seeing it may not have acknowledged it, so do not wait for that for long.
        let grace = Duration::from_millis(self.config.raft.election_timeout_max_ms.saturating_mul(4).max(1_000));
        let removable: BTreeSet<NodeId> = {
            let mut waiting = local.leftover_since.lock();
            waiting.retain(|id, _| leftovers.contains(id));
            leftovers
                .iter()
                .copied()
                .filter(|id| {
                    let seen = metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .is_some_and(|l| l.index() >= since);
                    seen || waiting.entry(*id).or_insert_with(std::time::Instant::now).elapsed() >= grace
                })
                .collect()
        };
        if !removable.is_empty() {
            match self.bounded("removing replicas that left", local.group.remove_nodes(removable.clone())).await {
                Ok(()) => {
                    tracing::info!(group = %gid, nodes = ?removable, "replicas that moved away removed from the group")
                }
                Err(e) => tracing::warn!(group = %gid, nodes = ?removable, error = %e, "cannot remove learners"),
            }
        }
        leftovers.is_empty()
    }

    /// This node runs `local` but is no longer one of its assigned replicas (`a`). Returns true
    /// once the group may be stopped and deleted here: this node is no longer a voter (the leader
    /// finished the move), or no leader has been seen for `leave_grace_ms`. A leader hands
    /// leadership to an assigned replica that has caught up, which then finishes the move.
    async fn leave_partition(&self, local: &LocalPartition, a: &PartitionAssignment) -> bool {
        let me = self.config.node_id;
        let metrics = local.group.metrics();
        let membership = metrics.membership_config.membership();
        if !membership.voter_ids().any(|v| v == me) {
            return true;
        }
        match metrics.current_leader {
            Some(leader) if leader == me => {
                *local.orphan_since.lock() = None;
                let target = a
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| membership.voter_ids().any(|v| v == *r) && catch_up(&metrics, *r, 0).caught_up);
                match target {
                    Some(to) => {
                        if let Err(e) = self
                            .bounded("handing leadership to a remaining replica", local.group.transfer_leader(to))
                            .await
                        {
                            tracing::debug!(group = %a.group, to, error = %e, "leadership hand-over failed");
                        }
                    }
                    None => tracing::debug!(group = %a.group, "no remaining replica caught up to lead; still leading"),
                }
                false
            }
            Some(_) => {
                *local.orphan_since.lock() = None;
                false
            }
            None => {
                let grace = Duration::from_millis(self.config.leave_grace_ms);
                let since = *local.orphan_since.lock().get_or_insert_with(std::time::Instant::now);
                since.elapsed() >= grace
            }
        }
    }

    /// Metadata leader: until members are recorded, record the metadata group's Raft members
    /// (the bootstrap voters) as the initial members, in one command.
    async fn record_initial_members(&self) {
        if !self.metadata.read().members().is_empty() {
            return;
        }
        let members: BTreeMap<NodeId, MemberAddrs> = {
            let m = self.meta().metrics().membership_config.clone();
            let clients = self.initial_client_addrs.lock();
            m.membership()
                .nodes()
                .map(|(id, node)| {
                    // A node the bootstrapper did not hear from serves clients where nodes reach it.
                    let addrs = match clients.get(id) {
                        Some(known) => MemberAddrs { internal: node.addr.clone(), ..known.clone() },
                        None => MemberAddrs::one(node.addr.clone()),
                    };
                    (*id, addrs)
                })
                .collect()
        };
        if members.is_empty() {
            return;
        }
        if let Err(e) = self.propose(MetadataCommand::Bootstrap { members }).await {
            tracing::debug!(error = %e, "cannot record the initial members yet");
        }
    }
}
