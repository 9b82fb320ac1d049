//! The reconcile loop: makes this node's groups match the applied metadata.
//!
//! Each pass (on every metadata change, and every `reconcile_interval_ms`):
//! 1. On the metadata leader, once after bootstrap: record the metadata group's Raft members as
//!    the initial metadata members (one `Bootstrap` command; later changes come from
//!    `add_node` / `remove_node`).
//! 2. Start the group of every partition this node replicates; the first replica of a partition
//!    at `replica_epoch` 0 initialises it with the replica set.
//! 3. Stop groups this node no longer replicates (topic deleted, or replica moved) and delete their
//!    streams; also delete streams left by topics deleted while this node was down.
//! 4. On a partition leader: bring the group's voters to the assigned replicas, and hand leadership
//!    to the preferred replica (the first) once it is caught up and this node has led for
//!    `preferred_leader_delay_ms`, so leaders stay spread.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::apps::PartitionApp;
use super::metadata::MetadataCommand;
use super::partition::PartitionMachine;
use super::{Cluster, LocalPartition};
use crate::cluster::api::*;
use crate::{Node, RaftError, RaftGroup, Retention};

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
struct Wanted {
    topic: String,
    topic_id: TopicId,
    assignment: PartitionAssignment,
    retention: RetentionPolicy,
}

impl Cluster {
    async fn reconcile_once(&self) {
        if self.metadata_group.is_leader() {
            self.record_initial_members().await;
        }
        let _guard = self.lifecycle.lock().await;
        if *self.shutdown.borrow() {
            return;
        }
        let me = self.config.node_id;
        let (wanted, next_topic_id, live_topic_ids) = {
            let state = self.metadata.read();
            let mut wanted = BTreeMap::new();
            for t in state.topics().values() {
                for a in &t.partitions {
                    if a.replicas.contains(&me) {
                        wanted.insert(
                            a.group,
                            Wanted {
                                topic: t.name.clone(),
                                topic_id: t.id,
                                assignment: a.clone(),
                                retention: t.retention,
                            },
                        );
                    }
                }
            }
            let ids: BTreeSet<TopicId> = state.topics().values().map(|t| t.id).collect();
            (wanted, state.next_topic_id(), ids)
        };

        // Stop what is no longer ours.
        let running: Vec<GroupId> = self.partitions.read().keys().copied().collect();
        for gid in running {
            if !wanted.contains_key(&gid) {
                self.stop_and_delete(gid).await;
            }
        }

        // Delete streams of topics deleted while we were not running them.
        for stream in self.config.storage.streams() {
            let gid = GroupId(stream.get() / 2);
            let topic_id = gid.0 >> 16;
            if gid == METADATA_GROUP || topic_id == 0 || topic_id >= u64::from(next_topic_id) {
                continue;
            }
            if !live_topic_ids.contains(&(topic_id as TopicId))
                && !self.partitions.read().contains_key(&gid)
                && let Err(e) = self.config.storage.delete_stream(stream)
            {
                tracing::warn!(%stream, error = %e, "cannot delete stream of a deleted topic");
            }
        }

        // Start and look after what is ours.
        for (gid, w) in wanted {
            if *self.shutdown.borrow() {
                return;
            }
            let existing = self.partitions.read().get(&gid).cloned();
            let local = match existing {
                Some(l) => l,
                None => match self.start_partition(gid, &w).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(group = %gid, topic = %w.topic, partition = w.assignment.partition, error = %e, "cannot start partition group");
                        continue;
                    }
                },
            };
            self.tend_partition(&local, &w).await;
        }
    }

    async fn start_partition(&self, gid: GroupId, w: &Wanted) -> Result<Arc<LocalPartition>, ClusterError> {
        let state = Arc::new(RwLock::new(PartitionMachine::new()));
        let mut config = self.config.raft.clone();
        config.retention = raft_retention(w.retention);
        let group = RaftGroup::start(
            self.config.node_id,
            gid,
            self.config.storage.clone(),
            Box::new(PartitionApp::new(state.clone())),
            &self.router,
            config,
        )
        .await?;
        let local = Arc::new(LocalPartition {
            topic: w.topic.clone(),
            topic_id: w.topic_id,
            partition: w.assignment.partition,
            group,
            state,
            retention: Mutex::new(Some(w.retention)),
            initialized: std::sync::atomic::AtomicBool::new(false),
            leader_since: Mutex::new(None),
        });
        self.partitions.write().insert(gid, local.clone());
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

    async fn tend_partition(&self, local: &LocalPartition, w: &Wanted) {
        let me = self.config.node_id;
        let a = &w.assignment;
        // Initialise a brand-new group from its first replica.
        if a.replica_epoch == 0
            && a.replicas.first() == Some(&me)
            && !local.initialized.load(std::sync::atomic::Ordering::Acquire)
        {
            let members: Option<BTreeMap<NodeId, Node>> =
                a.replicas.iter().map(|id| self.member_addr(*id).map(|addr| (*id, Node::new(addr)))).collect();
            match members {
                Some(members) => match tokio::time::timeout(self.timeout(), local.group.initialize(members)).await {
                    Ok(Ok(()) | Err(RaftError::AlreadyInitialized { .. })) => {
                        local.initialized.store(true, std::sync::atomic::Ordering::Release);
                    }
                    Ok(Err(e)) => tracing::warn!(group = %a.group, error = %e, "cannot initialise partition group"),
                    Err(_) => tracing::warn!(group = %a.group, "partition group initialisation timed out"),
                },
                None => tracing::warn!(group = %a.group, "a replica has no member address yet"),
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
            return;
        }
        let leading_for = local.leader_since.lock().get_or_insert_with(std::time::Instant::now).elapsed();
        let metrics = local.group.metrics().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        let wanted: BTreeSet<NodeId> = a.replicas.iter().copied().collect();
        if voters != wanted {
            self.move_replicas(local, &known, wanted).await;
            return;
        }
        // Preferred leader: hand over once it has everything we have.
        let Some(&preferred) = a.replicas.first() else { return };
        if preferred == me {
            return;
        }
        let last = metrics.last_log_index.unwrap_or(0);
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).cloned().flatten())
            .is_some_and(|matched| matched.index() >= last);
        let applied = metrics.last_applied.as_ref().map_or(0, |l| l.index());
        let delay = Duration::from_millis(self.config.preferred_leader_delay_ms);
        if caught_up
            && applied >= last
            && leading_for >= delay
            && let Err(e) = self.bounded("preferred-leader transfer", local.group.transfer_leader(preferred)).await
        {
            tracing::debug!(group = %a.group, to = preferred, error = %e, "preferred-leader transfer failed");
        }
    }

    /// Adds missing replicas as learners (waiting for them to catch up) and then makes the voter
    /// set equal to the assignment.
    async fn move_replicas(&self, local: &LocalPartition, known: &BTreeSet<NodeId>, wanted: BTreeSet<NodeId>) {
        for id in wanted.difference(known) {
            let Some(addr) = self.member_addr(*id) else { return };
            let add = local.group.add_learner(*id, Node::new(addr), true);
            if let Err(e) = self.bounded("adding a replica as learner", add).await {
                tracing::warn!(group = %local.group.id(), node = id, error = %e, "cannot add replica as learner");
                return;
            }
        }
        let change = local.group.change_membership(wanted.clone(), false);
        if let Err(e) = self.bounded("partition membership change", change).await {
            tracing::warn!(group = %local.group.id(), ?wanted, error = %e, "cannot change partition membership");
        }
    }

    /// Metadata leader: until members are recorded, record the metadata group's Raft members
    /// (the bootstrap voters) as the initial members, in one command.
    async fn record_initial_members(&self) {
        if !self.metadata.read().members().is_empty() {
            return;
        }
        let members: BTreeMap<NodeId, String> = {
            let m = self.metadata_group.metrics().membership_config.clone();
            m.membership().nodes().map(|(id, node)| (*id, node.addr.clone())).collect()
        };
        if members.is_empty() {
            return;
        }
        if let Err(e) = self.propose(MetadataCommand::Bootstrap { members }).await {
            tracing::debug!(error = %e, "cannot record the initial members yet");
        }
    }
}
