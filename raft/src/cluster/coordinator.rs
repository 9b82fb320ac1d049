//! The consumer-group coordinator: the metadata leader. It serves joins, heartbeats, leaves and
//! fenced commits (each change is a metadata command, so every replica holds the groups; see
//! [`super::groups`]), and runs the timer that expires silent members and memberless groups whose
//! offsets are past `offsets_retention_ms`.
//!
//! Session times are kept only in the leader's memory: a heartbeat that changes nothing is answered
//! from the applied state without a proposal. A new leader starts every member's session afresh,
//! so a leader change costs a dead member at most one more session timeout, never a committed
//! offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::Cluster;
use crate::cluster::api::{ClusterError, limits};
use crate::cluster::groups::{Assignor, GroupState, MemberFence, MemberSpec, Subscription, TopicPartition};
use crate::cluster::metadata::MetadataCommand;

/// The coordinator's settings (a node's `[groups]`, read from its config file as they are).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Shortest session timeout a member may ask for, ms.
    pub min_session_timeout_ms: u32,
    /// Longest session timeout a member may ask for, ms.
    pub max_session_timeout_ms: u32,
    /// Session timeout of a member that asks for none, ms.
    pub default_session_timeout_ms: u32,
    /// How often members are told to heartbeat, ms (at most a third of their session timeout).
    pub heartbeat_interval_ms: u32,
    /// How long a group without members keeps its offsets after its last commit, ms
    /// (`offsets.retention`).
    pub offsets_retention_ms: u64,
    /// How long a member may hold partitions it was told to give up (while heartbeating) before
    /// it is removed from the group like an expired one, ms (Kafka's `max.poll.interval.ms`).
    pub rebalance_timeout_ms: u64,
    /// How often the metadata leader looks for expired sessions and groups, ms.
    pub check_interval_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 300_000,
            default_session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            rebalance_timeout_ms: 300_000,
            check_interval_ms: 1_000,
        }
    }
}

/// The heartbeat interval, ms, of a member whose assignment is being reconciled.
pub const RECONCILING_HEARTBEAT_MS: u32 = 250;

/// What a joining member asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// A member id to join again under (`None`: a new member; the coordinator picks its id).
    pub member_id: Option<String>,
    /// Where its client connects from.
    pub client_addr: String,
    /// What it reads.
    pub subscriptions: Vec<Subscription>,
    /// Its session timeout (`None`: the server's default).
    pub session_timeout_ms: Option<u32>,
    /// The assignor it asks for (decides only for a group without members).
    pub assignor: Assignor,
}

/// A member's assignment, as a join or heartbeat answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberAssignment {
    /// Member id.
    pub member_id: String,
    /// The member's epoch (carry it in commits).
    pub member_epoch: u64,
    /// The group's epoch.
    pub group_epoch: u64,
    /// What it may read.
    pub assigned: Vec<TopicPartition>,
    /// What it must give up: stop reading, commit, and leave out of its next heartbeat's owned.
    pub revoking: Vec<TopicPartition>,
    /// When to heartbeat next, ms.
    pub heartbeat_interval_ms: u32,
}

/// Runs the expiry timer until shutdown (or until the cluster is dropped).
pub(super) async fn run(cluster: Weak<Cluster>, shutdown: watch::Receiver<bool>) {
    let Some(interval) = cluster.upgrade().map(|c| Duration::from_millis(c.config.groups.check_interval_ms.max(10)))
    else {
        return;
    };
    super::run_every(cluster, shutdown, interval, |c| async move { c.expire_once().await }).await;
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// One pass of the timer: on the metadata leader, removes members silent past their session
    /// timeout and memberless groups past the offsets retention.
    async fn expire_once(&self) {
        if !self.is_metadata_leader() {
            *self.sessions.lock() = Sessions::default();
            return;
        }
        let now = Instant::now();
        let mut expired: Vec<(String, String)> = Vec::new();
        let mut stale_groups: Vec<String> = Vec::new();
        let retention_ms = self.config.groups.offsets_retention_ms;
        let rebalance_timeout = Duration::from_millis(self.config.groups.rebalance_timeout_ms);
        let wall = wall_ms();
        {
            let metadata = self.metadata.read();
            let mut sessions = self.sessions.lock();
            let mut live: BTreeSet<(String, String)> = BTreeSet::new();
            for (name, g) in metadata.groups() {
                for (id, m) in &g.members {
                    let key = (name.clone(), id.clone());
                    // A member this leader has not heard from yet gets a whole session from now.
                    let seen = *sessions.last_seen.entry(key.clone()).or_insert(now);
                    let silent = now.duration_since(seen) > Duration::from_millis(u64::from(m.session_timeout_ms));
                    // Holding partitions it must give up, for too long (heartbeating, not polling).
                    let stuck = if m.revoking.is_empty() {
                        sessions.revoking_since.remove(&key);
                        false
                    } else {
                        now.duration_since(*sessions.revoking_since.entry(key.clone()).or_insert(now))
                            > rebalance_timeout
                    };
                    if silent || stuck {
                        expired.push(key.clone());
                    }
                    live.insert(key);
                }
                if g.members.is_empty() && g.committed_at_ms.is_some_and(|t| t.saturating_add(retention_ms) <= wall) {
                    stale_groups.push(name.clone());
                }
            }
            sessions.last_seen.retain(|k, _| live.contains(k));
            sessions.revoking_since.retain(|k, _| live.contains(k));
        }
        for (group, member_id) in expired {
            tracing::info!(%group, member = %member_id, "consumer group member expired (silent past its session timeout, or holding revoked partitions past the rebalance timeout)");
            let command = MetadataCommand::LeaveGroup { group: group.clone(), member_id: member_id.clone() };
            match self.propose(command).await {
                Ok(_) => self.sessions.lock().forget(&(group, member_id)),
                Err(e) => tracing::debug!(error = %e, "expiring a group member"),
            }
        }
        for group in stale_groups {
            tracing::info!(%group, retention_ms, "consumer group without members past offsets retention: deleted");
            let command = MetadataCommand::ExpireGroupOffsets { group, now_ms: wall, retention_ms };
            if let Err(e) = self.propose(command).await {
                tracing::debug!(error = %e, "expiring a group's offsets");
            }
        }
    }

    fn require_metadata_leader(&self) -> Result<(), ClusterError> {
        if self.is_metadata_leader() { Ok(()) } else { Err(ClusterError::NotLeader { leader: self.metadata_leader() }) }
    }

    fn touch_session(&self, group: &str, member_id: &str) {
        self.sessions.lock().last_seen.insert((group.to_string(), member_id.to_string()), Instant::now());
    }

    /// The assignment of `member_id` in the applied metadata.
    fn assignment_of(&self, group: &str, member_id: &str) -> Result<MemberAssignment, ClusterError> {
        let metadata = self.metadata.read();
        let unknown =
            || ClusterError::UnknownGroupMember { group: group.to_string(), member_id: member_id.to_string() };
        let g = metadata.group(group).ok_or_else(unknown)?;
        let m = g.members.get(member_id).ok_or_else(unknown)?;
        let mut heartbeat_interval_ms = self.config.groups.heartbeat_interval_ms.min(m.session_timeout_ms / 3).max(1);
        // A member with a hand-over under way (partitions to give up, or to receive once freed)
        // comes back soon, so the hand-over does not wait a whole interval at each step.
        if !m.revoking.is_empty() || m.assigned != m.target {
            heartbeat_interval_ms = heartbeat_interval_ms.min(RECONCILING_HEARTBEAT_MS);
        }
        Ok(MemberAssignment {
            member_id: member_id.to_string(),
            member_epoch: m.epoch,
            group_epoch: g.epoch,
            assigned: m.assigned.iter().cloned().collect(),
            revoking: m.revoking.iter().cloned().collect(),
            heartbeat_interval_ms,
        })
    }

    /// A member joins `group` (metadata leader only): its assignment comes back (often empty at
    /// first, while other members give partitions up).
    pub async fn join_group(&self, group: &str, join: JoinRequest) -> Result<MemberAssignment, ClusterError> {
        self.require_metadata_leader()?;
        check_group(group)?;
        let bounds = &self.config.groups;
        let session_timeout_ms = join.session_timeout_ms.unwrap_or(bounds.default_session_timeout_ms);
        if !(bounds.min_session_timeout_ms..=bounds.max_session_timeout_ms).contains(&session_timeout_ms) {
            return Err(ClusterError::InvalidArgument {
                field: "session_timeout_ms",
                reason: format!(
                    "{session_timeout_ms} is outside this cluster's bounds [{}, {}]",
                    bounds.min_session_timeout_ms, bounds.max_session_timeout_ms
                ),
            });
        }
        if join.subscriptions.is_empty() || join.subscriptions.len() > super::groups::limits::MAX_SUBSCRIPTIONS {
            return Err(ClusterError::InvalidArgument {
                field: "subscriptions",
                reason: format!("{} (1..={})", join.subscriptions.len(), super::groups::limits::MAX_SUBSCRIPTIONS),
            });
        }
        for s in &join.subscriptions {
            let name = match s {
                Subscription::Topic(t) | Subscription::Prefix(t) => t,
            };
            if name.is_empty() || name.len() > limits::MAX_TOPIC_NAME_BYTES {
                return Err(ClusterError::InvalidArgument {
                    field: "subscriptions",
                    reason: format!("a topic name or prefix of {} bytes", name.len()),
                });
            }
        }
        let member_id = match join.member_id.filter(|id| !id.is_empty()) {
            Some(id) if id.len() <= super::groups::limits::MAX_MEMBER_ID_BYTES => id,
            Some(id) => {
                return Err(ClusterError::InvalidArgument {
                    field: "member_id",
                    reason: format!("{} bytes (at most {})", id.len(), super::groups::limits::MAX_MEMBER_ID_BYTES),
                });
            }
            None => self.new_member_id(),
        };
        let mut client_addr = join.client_addr;
        client_addr.truncate(super::groups::limits::MAX_CLIENT_ADDR_BYTES.min(client_addr.len()));
        while !client_addr.is_char_boundary(client_addr.len()) {
            client_addr.pop();
        }
        let member = MemberSpec {
            member_id: member_id.clone(),
            client_addr,
            subscriptions: join.subscriptions,
            session_timeout_ms,
            assignor: join.assignor,
        };
        self.propose(MetadataCommand::JoinGroup { group: group.to_string(), member }).await?;
        self.touch_session(group, &member_id);
        self.assignment_of(group, &member_id)
    }

    /// A member's heartbeat (metadata leader only): it still holds `owned`; the revocations it no
    /// longer holds are done (one proposal), and its assignment comes back.
    pub async fn group_heartbeat(
        &self,
        group: &str,
        member_id: &str,
        owned: Vec<TopicPartition>,
    ) -> Result<MemberAssignment, ClusterError> {
        self.require_metadata_leader()?;
        let current = self.assignment_of(group, member_id)?;
        self.touch_session(group, member_id);
        let owned_set: BTreeSet<&TopicPartition> = owned.iter().collect();
        if current.revoking.iter().all(|p| owned_set.contains(p)) {
            return Ok(current);
        }
        let command =
            MetadataCommand::AcknowledgeGroup { group: group.to_string(), member_id: member_id.to_string(), owned };
        self.propose(command).await?;
        self.assignment_of(group, member_id)
    }

    /// A member leaves (it committed first): its partitions go to the others at once.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClusterError> {
        let command = MetadataCommand::LeaveGroup { group: group.to_string(), member_id: member_id.to_string() };
        self.propose(command).await?;
        self.sessions.lock().forget(&(group.to_string(), member_id.to_string()));
        Ok(())
    }

    /// Commits `(topic, partition, next offset)` for a group in one proposal, all or none. With a
    /// `fence` the member must own every partition named (else [`ClusterError::FencedMember`] or
    /// [`ClusterError::UnknownGroupMember`]); without one the group must have no members
    /// ([`ClusterError::GroupNotEmpty`]).
    pub async fn commit_offsets(
        &self,
        group: &str,
        fence: Option<MemberFence>,
        offsets: Vec<(String, u32, u64)>,
    ) -> Result<(), ClusterError> {
        check_group(group)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let command = MetadataCommand::CommitOffsets { group: group.to_string(), fence, now_ms: wall_ms(), offsets };
        self.propose(command).await.map(|_| ())
    }

    /// Deletes a group without members and its offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClusterError> {
        check_group(group)?;
        self.propose(MetadataCommand::DeleteGroup { group: group.to_string() }).await.map(|_| ())
    }

    /// A group's coordinator state, linearizable (`None`: the group has none, e.g. only offsets
    /// committed before coordination existed, or no such group).
    pub async fn group_state(&self, group: &str) -> Result<Option<GroupState>, ClusterError> {
        self.linearizable_metadata().await?;
        Ok(self.metadata.read().group(group).cloned())
    }

    /// Every group's members, as applied here (for metrics: `group -> member count`).
    pub fn local_group_members(&self) -> BTreeMap<String, usize> {
        self.metadata.read().groups().iter().map(|(n, g)| (n.clone(), g.members.len())).collect()
    }

    /// A member id unique in the cluster: this node's id, the wall clock and a counter.
    fn new_member_id(&self) -> String {
        let seq = self.member_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        format!("{:x}-{nanos:x}-{seq:x}", self.config.node_id)
    }
}

fn check_group(group: &str) -> Result<(), ClusterError> {
    if group.is_empty() || group.len() > limits::MAX_GROUP_NAME_BYTES {
        return Err(ClusterError::InvalidArgument {
            field: "group",
            reason: format!("{} bytes (1..={})", group.len(), limits::MAX_GROUP_NAME_BYTES),
        });
    }
    Ok(())
}

/// What the leader knows of each (group, member) beyond the metadata.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    /// When it last heard from the member.
    last_seen: HashMap<(String, String), Instant>,
    /// Since when the member has continuously held partitions it must give up.
    revoking_since: HashMap<(String, String), Instant>,
}

impl Sessions {
    fn forget(&mut self, key: &(String, String)) {
        self.last_seen.remove(key);
        self.revoking_since.remove(key);
    }
}
