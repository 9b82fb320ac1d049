//! The metadata state machine (Raft group 0), pure: no Raft, no I/O.
//!
//! It holds topics and their partition assignments, consumer-group committed offsets and cluster
//! members. Commands are applied deterministically: every replica that applies the same commands
//! in the same order reaches the same state, including the placement of new partitions (computed
//! at apply time from the state, never from a clock or a random source).

use std::collections::BTreeMap;

use crate::cluster::access::{self, AccessRejection, AccessState, AclRule, ScramCredential, TOKEN_HASH_BYTES};
use crate::cluster::api::limits::{MAX_COMMITTED_OFFSETS, MAX_MEMBERS, MAX_REPLICATION_FACTOR, MAX_TOPICS};
use crate::cluster::api::{
    ClusterError, ClusterTotal, GroupId, MemberAddrs, NodeId, NodeLimit, PartitionAssignment, ReplicaLimit,
    RetentionPolicy, TopicId, TopicInfo, TopicSpec, TopicTotals, TopicUpdate, limits, partition_group_id,
    validate_topic_name,
};
use crate::cluster::groups::{
    self, GroupRejection, GroupState, MemberFence, MemberSpec, Subscription, TopicPartition,
    limits::{MAX_GROUPS, MAX_MEMBER_ID_BYTES},
};
use crate::cluster::layout::{
    Reader, Writer, codec_kind, metadata_command as cmd, metadata_reply as reply, metadata_snapshot as snap,
};
use crate::cluster::quota::{self, Quota, QuotaEntity, QuotaRejection, QuotaState};

/// One change to the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataCommand {
    /// Create a topic; its partitions are placed at apply time.
    CreateTopic(TopicSpec),
    /// Create a topic unless the cluster would then hold more topics or partitions than `totals`
    /// allow (the proposing node's limits, carried in the command so every replica decides alike).
    CreateTopicWithin {
        /// The topic.
        spec: TopicSpec,
        /// The totals to stay within.
        totals: TopicTotals,
    },
    /// Create a topic unless it would pass the cluster `totals` (if given) or put more partition
    /// replicas on a node than `per_node` allows (the proposing node's limits, carried in the
    /// command so every replica decides alike).
    CreateTopicBounded {
        /// The topic.
        spec: TopicSpec,
        /// The cluster totals to stay within, if any.
        totals: Option<TopicTotals>,
        /// The most replicas any one node may hold.
        per_node: ReplicaLimit,
    },
    /// Give a topic more partitions (the new ones placed as at creation), within the cluster totals
    /// and the per-node replica limit the proposing node carries.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The partition count it then has (more than it has now).
        count: u32,
        /// The cluster totals to stay within, if any.
        totals: Option<TopicTotals>,
        /// The most replicas any one node may hold, if limited.
        per_node: Option<ReplicaLimit>,
    },
    /// Delete a topic and every committed offset for it.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Change a topic's retention or codec.
    AlterTopic {
        /// Topic name.
        name: String,
        /// What changes.
        update: TopicUpdate,
    },
    /// Record a consumer group's position in a partition.
    CommitOffset {
        /// Consumer group.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// The next offset the group will read.
        offset: u64,
    },
    /// Add a member, or change its addresses.
    AddMember {
        /// Node id.
        id: NodeId,
        /// Its internal and client addresses.
        addrs: MemberAddrs,
    },
    /// Record the initial members, all at once; a no-op once there are members (so the metadata
    /// leader may propose it again after a leader change without harm).
    Bootstrap {
        /// Node id -> its internal and client addresses.
        members: BTreeMap<NodeId, MemberAddrs>,
    },
    /// Remove a member; its partition replicas move to other members where possible.
    RemoveMember {
        /// Node id.
        id: NodeId,
    },
    /// Add a user with the SHA-256 of its token's secret.
    CreateUser {
        /// User name (a principal).
        name: String,
        /// SHA-256 of the token's secret.
        token_hash: [u8; TOKEN_HASH_BYTES],
    },
    /// Remove a user.
    DeleteUser {
        /// User name.
        name: String,
    },
    /// Add a user with a password, as its SCRAM-SHA-256 credential.
    CreatePasswordUser {
        /// User name (a principal).
        name: String,
        /// The password's credential (never the password).
        credential: ScramCredential,
    },
    /// Give an existing user a new password (its token or old password stops working).
    SetPassword {
        /// User name.
        name: String,
        /// The new password's credential.
        credential: ScramCredential,
    },
    /// Add an ACL allow rule (no-op if it exists).
    AddAcl(AclRule),
    /// Remove an ACL allow rule.
    RemoveAcl(AclRule),
    /// Set (replace) the client quota of an entity.
    SetQuota {
        /// Who it applies to.
        entity: QuotaEntity,
        /// The rates.
        quota: Quota,
    },
    /// Remove an entity's client quota.
    RemoveQuota {
        /// Who.
        entity: QuotaEntity,
    },
    /// A member joins a consumer group (or a known member updates its subscriptions).
    JoinGroup {
        /// Consumer group.
        group: String,
        /// The member.
        member: MemberSpec,
    },
    /// A member reports the partitions it still holds: its revocations not among them are done.
    AcknowledgeGroup {
        /// Consumer group.
        group: String,
        /// Member id.
        member_id: String,
        /// What it holds.
        owned: Vec<TopicPartition>,
    },
    /// A member leaves (or the metadata leader expired its session): its partitions are free.
    LeaveGroup {
        /// Consumer group.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// Commit many offsets of a group as one change: all or none.
    CommitOffsets {
        /// Consumer group.
        group: String,
        /// The committing member; `None` only for a group without members (an admin reset).
        fence: Option<MemberFence>,
        /// The proposer's wall clock, ms (the group's last-commit time, for `offsets.retention`).
        now_ms: u64,
        /// `(topic, partition, next offset)`.
        offsets: Vec<(String, u32, u64)>,
    },
    /// Delete a group without members, and its offsets.
    DeleteGroup {
        /// Consumer group.
        group: String,
    },
    /// Drop a group without members whose last commit is at least `retention_ms` before `now_ms`.
    ExpireGroupOffsets {
        /// Consumer group.
        group: String,
        /// The proposer's wall clock, ms.
        now_ms: u64,
        /// `offsets.retention`, ms.
        retention_ms: u64,
    },
}

/// How [`MetadataState::place`] picks a partition's followers (a property of the command kind:
/// replaying a command must place its partitions as the first apply did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// The members after the preferred leader in id order (`CreateTopic`, `CreateTopicWithin`).
    Ring,
    /// The members holding the fewest replicas (`CreateTopicBounded`).
    LeastLoaded,
}

/// Why an applied command changed nothing. Decided at apply time, so every replica agrees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A topic of that name exists.
    TopicExists {
        /// Its name.
        name: String,
    },
    /// No topic of that name.
    UnknownTopic {
        /// The name.
        name: String,
    },
    /// The topic has no such partition.
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Partitions it has.
        count: u32,
    },
    /// Not enough members for the replication factor.
    NotEnoughNodes {
        /// Replicas asked for.
        requested: u32,
        /// Members there are.
        available: u32,
    },
    /// No member of that id.
    UnknownMember {
        /// Node id.
        id: NodeId,
    },
    /// A field is out of range (only reachable by a client that skipped the handle's checks).
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// Creating the topic would pass a cluster total.
    ClusterLimit {
        /// The topic.
        topic: String,
        /// Which total.
        total: ClusterTotal,
        /// Its limit.
        limit: u64,
        /// What the cluster holds.
        current: u64,
        /// What the creation adds.
        requested: u64,
    },
    /// Creating the topic would put more replicas on a node than it takes.
    NodeLimit {
        /// The topic.
        topic: String,
        /// The first node (lowest id) over the limit.
        node: NodeId,
        /// Which limit.
        limit: NodeLimit,
        /// Its value.
        max: u64,
        /// Replicas the node holds.
        current: u64,
        /// Replicas the creation adds to it.
        requested: u64,
    },
    /// A user or ACL command that does not apply (user exists, unknown user, unknown rule).
    Access {
        /// What is wrong.
        reason: String,
    },
    /// The group has no member of that id (it left, or its session expired).
    UnknownGroupMember {
        /// Group.
        group: String,
        /// Member id.
        member_id: String,
    },
    /// A commit from a member that does not own a partition it names (or with an epoch it was
    /// never given): a zombie's.
    FencedMember {
        /// Group.
        group: String,
        /// Member id.
        member_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The operation needs a group without members (delete, an unfenced commit, expiry).
    GroupNotEmpty {
        /// Group.
        group: String,
        /// Its members.
        members: u32,
    },
    /// No group of that name.
    UnknownGroup {
        /// Group.
        group: String,
    },
}

impl Rejection {
    fn of_group(group: &str, r: GroupRejection) -> Self {
        let group = group.to_string();
        match r {
            GroupRejection::UnknownMember { member_id } => Rejection::UnknownGroupMember { group, member_id },
            GroupRejection::Fenced { member_id, reason } => Rejection::FencedMember { group, member_id, reason },
            GroupRejection::NotEmpty { members } => Rejection::GroupNotEmpty { group, members },
            GroupRejection::UnknownGroup => Rejection::UnknownGroup { group },
            GroupRejection::Invalid(reason) => Rejection::Invalid { reason },
        }
    }
}

impl From<AccessRejection> for Rejection {
    fn from(r: AccessRejection) -> Self {
        let reason = match r {
            AccessRejection::UserExists(name) => format!("user {name:?} already exists"),
            AccessRejection::UnknownUser(name) => format!("no user {name:?}"),
            AccessRejection::UnknownAcl(rule) => format!("no ACL rule `{rule}`"),
            AccessRejection::Invalid(reason) => return Rejection::Invalid { reason },
        };
        Rejection::Access { reason }
    }
}

impl From<QuotaRejection> for Rejection {
    fn from(r: QuotaRejection) -> Self {
        match r {
            QuotaRejection::Unknown(entity) => Rejection::Access { reason: format!("no quota for {entity}") },
            QuotaRejection::Invalid(reason) => Rejection::Invalid { reason },
        }
    }
}

impl From<Rejection> for ClusterError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::TopicExists { name } => ClusterError::TopicExists { name },
            Rejection::UnknownTopic { name } => ClusterError::UnknownTopic { name },
            Rejection::UnknownPartition { topic, partition, count } => {
                ClusterError::UnknownPartition { topic, partition, count }
            }
            Rejection::NotEnoughNodes { requested, available } => ClusterError::NotEnoughNodes { requested, available },
            Rejection::UnknownMember { id } => ClusterError::Membership { id, reason: "not a member".into() },
            Rejection::Invalid { reason } => ClusterError::InvalidArgument { field: "metadata command", reason },
            Rejection::ClusterLimit { topic, total, limit, current, requested } => {
                ClusterError::ClusterLimit { topic, total, limit, current, requested }
            }
            Rejection::NodeLimit { topic, node, limit, max, current, requested } => {
                ClusterError::NodeLimit { topic, node, limit, max, current, requested }
            }
            Rejection::Access { reason } => ClusterError::InvalidArgument { field: "access", reason },
            Rejection::UnknownGroupMember { group, member_id } => ClusterError::UnknownGroupMember { group, member_id },
            Rejection::FencedMember { group, member_id, reason } => {
                ClusterError::FencedMember { group, member_id, reason }
            }
            Rejection::GroupNotEmpty { group, members } => ClusterError::GroupNotEmpty { group, members },
            Rejection::UnknownGroup { group } => ClusterError::UnknownGroup { group },
        }
    }
}

/// What applying a command answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataReply {
    /// Applied.
    Ok,
    /// The topic as created (with its placement).
    Topic(TopicInfo),
    /// Not applied, and why.
    Rejected(Rejection),
}

/// The whole metadata. Its snapshot is this, encoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataState {
    /// The id the next topic gets (starts at 1; ids are never reused).
    next_topic_id: TopicId,
    /// Topics by name.
    topics: BTreeMap<String, TopicInfo>,
    /// Committed offsets by (group, topic, partition).
    offsets: BTreeMap<(String, String, u32), u64>,
    /// Members: node id -> internal and client addresses.
    members: BTreeMap<NodeId, MemberAddrs>,
    /// Users and ACL rules.
    access: AccessState,
    /// Client quotas.
    quotas: QuotaState,
    /// Consumer groups' coordinator state (members, assignments, last-commit time) by name.
    groups: BTreeMap<String, GroupState>,
}

impl MetadataState {
    /// An empty metadata.
    pub fn new() -> Self {
        Self { next_topic_id: 1, ..Self::default() }
    }

    /// The id the next created topic will get: every id below it was used once.
    pub fn next_topic_id(&self) -> TopicId {
        self.next_topic_id
    }

    /// Topics by name.
    pub fn topics(&self) -> &BTreeMap<String, TopicInfo> {
        &self.topics
    }

    /// One topic.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// Members: node id -> internal and client addresses.
    pub fn members(&self) -> &BTreeMap<NodeId, MemberAddrs> {
        &self.members
    }

    /// Users and ACL rules.
    pub fn access(&self) -> &AccessState {
        &self.access
    }

    /// Client quotas.
    pub fn quotas(&self) -> &QuotaState {
        &self.quotas
    }

    /// Committed offsets by (group, topic, partition).
    pub fn offsets(&self) -> &BTreeMap<(String, String, u32), u64> {
        &self.offsets
    }

    /// Consumer groups' coordinator state by name (a group that only has offsets committed before
    /// coordination existed has none).
    pub fn groups(&self) -> &BTreeMap<String, GroupState> {
        &self.groups
    }

    /// One group's coordinator state.
    pub fn group(&self, name: &str) -> Option<&GroupState> {
        self.groups.get(name)
    }

    /// Every group with coordinator state or a committed offset, sorted.
    pub fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.offsets.keys().map(|(g, _, _)| g.clone()).collect();
        names.extend(self.groups.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Every committed offset of one consumer group, by (topic, partition).
    pub fn group_offsets(&self, group: &str) -> Vec<(String, u32, u64)> {
        self.offsets.iter().filter(|((g, _, _), _)| g == group).map(|((_, t, p), o)| (t.clone(), *p, *o)).collect()
    }

    /// Applies one command. Never fails: a command that cannot apply is answered with a
    /// [`MetadataReply::Rejected`] and changes nothing.
    pub fn apply(&mut self, command: &MetadataCommand) -> MetadataReply {
        match self.try_apply(command) {
            Ok(reply) => reply,
            Err(rejection) => MetadataReply::Rejected(rejection),
        }
    }

    fn try_apply(&mut self, command: &MetadataCommand) -> Result<MetadataReply, Rejection> {
        let reply = self.apply_one(command)?;
        if matches!(
            command,
            MetadataCommand::CreateTopic(_)
                | MetadataCommand::CreateTopicWithin { .. }
                | MetadataCommand::CreateTopicBounded { .. }
                | MetadataCommand::AddPartitions { .. }
                | MetadataCommand::DeleteTopic { .. }
        ) {
            // New partitions are assigned, deleted ones dropped, without members rejoining.
            for g in self.groups.values_mut() {
                g.topics_changed(&self.topics);
            }
        }
        Ok(reply)
    }

    fn apply_one(&mut self, command: &MetadataCommand) -> Result<MetadataReply, Rejection> {
        match command {
            MetadataCommand::CreateTopic(spec) => self.create_topic(spec, None, None),
            MetadataCommand::CreateTopicWithin { spec, totals } => self.create_topic(spec, Some(totals), None),
            MetadataCommand::CreateTopicBounded { spec, totals, per_node } => {
                self.create_topic(spec, totals.as_ref(), Some(per_node))
            }
            MetadataCommand::AddPartitions { name, count, totals, per_node } => {
                self.add_partitions(name, *count, totals.as_ref(), per_node.as_ref())
            }
            MetadataCommand::DeleteTopic { name } => {
                if self.topics.remove(name).is_none() {
                    return Err(Rejection::UnknownTopic { name: name.clone() });
                }
                self.offsets.retain(|(_, t, _), _| t != name);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::AlterTopic { name, update } => {
                let topic = self.topics.get_mut(name).ok_or_else(|| Rejection::UnknownTopic { name: name.clone() })?;
                if let Some(retention) = update.retention {
                    topic.retention = retention;
                }
                if let Some(codec) = update.codec {
                    topic.codec = codec;
                }
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::CommitOffset { group, topic, partition, offset } => {
                let info = self.topics.get(topic).ok_or_else(|| Rejection::UnknownTopic { name: topic.clone() })?;
                let count = info.partitions.len() as u32;
                if *partition >= count {
                    return Err(Rejection::UnknownPartition { topic: topic.clone(), partition: *partition, count });
                }
                if group.is_empty() || group.len() > limits::MAX_GROUP_NAME_BYTES {
                    return Err(Rejection::Invalid { reason: format!("group name of {} bytes", group.len()) });
                }
                let key = (group.clone(), topic.clone(), *partition);
                if self.offsets.len() >= MAX_COMMITTED_OFFSETS && !self.offsets.contains_key(&key) {
                    return Err(Rejection::Invalid {
                        reason: format!("the cluster holds the maximum of {MAX_COMMITTED_OFFSETS} committed offsets"),
                    });
                }
                self.offsets.insert(key, *offset);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::AddMember { id, addrs } => {
                if let Some(bad) = addrs.invalid() {
                    return Err(Rejection::Invalid { reason: bad });
                }
                if self.members.len() >= MAX_MEMBERS && !self.members.contains_key(id) {
                    return Err(Rejection::Invalid {
                        reason: format!("the cluster holds the maximum of {MAX_MEMBERS} members"),
                    });
                }
                self.members.insert(*id, addrs.clone());
                self.fill_under_replicated(*id);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::Bootstrap { members } => {
                if let Some((id, bad)) = members.iter().find_map(|(id, a)| a.invalid().map(|bad| (id, bad))) {
                    return Err(Rejection::Invalid { reason: format!("member {id}: {bad}") });
                }
                if members.is_empty() || members.len() > MAX_MEMBERS {
                    return Err(Rejection::Invalid { reason: format!("{} initial members", members.len()) });
                }
                if self.members.is_empty() {
                    self.members = members.clone();
                }
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::RemoveMember { id } => {
                if self.members.remove(id).is_none() {
                    return Err(Rejection::UnknownMember { id: *id });
                }
                self.reassign_away_from(*id);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::CreateUser { name, token_hash } => {
                self.access.create_user(name, *token_hash)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::DeleteUser { name } => {
                self.access.delete_user(name)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::CreatePasswordUser { name, credential } => {
                self.access.create_password_user(name, credential)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::SetPassword { name, credential } => {
                self.access.set_password(name, credential)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::AddAcl(rule) => {
                self.access.add_acl(rule)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::RemoveAcl(rule) => {
                self.access.remove_acl(rule)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::SetQuota { entity, quota } => {
                self.quotas.set(entity, *quota)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::RemoveQuota { entity } => {
                self.quotas.remove(entity)?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::JoinGroup { group, member } => {
                check_group_name(group)?;
                if !self.groups.contains_key(group) && self.groups.len() >= MAX_GROUPS {
                    return Err(Rejection::Invalid {
                        reason: format!("the cluster holds the maximum of {MAX_GROUPS} groups"),
                    });
                }
                let mut state = self.groups.get(group).cloned().unwrap_or_default();
                state.join(member, &self.topics).map_err(|r| Rejection::of_group(group, r))?;
                self.groups.insert(group.clone(), state);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::AcknowledgeGroup { group, member_id, owned } => {
                let state = self.group_mut(group, member_id)?;
                let owned = owned.iter().cloned().collect();
                state.acknowledge(member_id, &owned).map_err(|r| Rejection::of_group(group, r))?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::LeaveGroup { group, member_id } => {
                let topics = &self.topics;
                let state = self.groups.get_mut(group).ok_or_else(|| Rejection::UnknownGroupMember {
                    group: group.clone(),
                    member_id: member_id.clone(),
                })?;
                state.remove(member_id, topics).map_err(|r| Rejection::of_group(group, r))?;
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::CommitOffsets { group, fence, now_ms, offsets } => {
                self.commit_offsets(group, fence.as_ref(), *now_ms, offsets)
            }
            MetadataCommand::DeleteGroup { group } => {
                let has_offsets = self.offsets.keys().any(|(g, _, _)| g == group);
                match self.groups.get(group) {
                    Some(g) if !g.members.is_empty() => {
                        return Err(Rejection::GroupNotEmpty { group: group.clone(), members: g.members.len() as u32 });
                    }
                    None if !has_offsets => return Err(Rejection::UnknownGroup { group: group.clone() }),
                    _ => {}
                }
                self.groups.remove(group);
                self.offsets.retain(|(g, _, _), _| g != group);
                Ok(MetadataReply::Ok)
            }
            MetadataCommand::ExpireGroupOffsets { group, now_ms, retention_ms } => {
                let state = self.groups.get(group).ok_or_else(|| Rejection::UnknownGroup { group: group.clone() })?;
                if !state.members.is_empty() {
                    return Err(Rejection::GroupNotEmpty { group: group.clone(), members: state.members.len() as u32 });
                }
                let expired = state.committed_at_ms.is_some_and(|t| t.saturating_add(*retention_ms) <= *now_ms);
                if !expired {
                    return Err(Rejection::Invalid {
                        reason: format!("group {group:?} committed within the last {retention_ms} ms"),
                    });
                }
                self.groups.remove(group);
                self.offsets.retain(|(g, _, _), _| g != group);
                Ok(MetadataReply::Ok)
            }
        }
    }

    /// A group's state for a command naming one of its members.
    fn group_mut(&mut self, group: &str, member_id: &str) -> Result<&mut GroupState, Rejection> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| Rejection::UnknownGroupMember { group: group.to_string(), member_id: member_id.to_string() })
    }

    /// Commits every offset or none: each partition must exist and, with a fence, be held by the
    /// member; without one, the group must have no members.
    fn commit_offsets(
        &mut self,
        group: &str,
        fence: Option<&MemberFence>,
        now_ms: u64,
        offsets: &[(String, u32, u64)],
    ) -> Result<MetadataReply, Rejection> {
        check_group_name(group)?;
        for (topic, partition, _) in offsets {
            let info = self.topics.get(topic).ok_or_else(|| Rejection::UnknownTopic { name: topic.clone() })?;
            let count = info.partitions.len() as u32;
            if *partition >= count {
                return Err(Rejection::UnknownPartition { topic: topic.clone(), partition: *partition, count });
            }
        }
        let state = self.groups.get(group);
        match (fence, state) {
            (Some(fence), Some(state)) => state
                .check_commit(fence, offsets.iter().map(|(t, p, _)| (t.as_str(), *p)))
                .map_err(|r| Rejection::of_group(group, r))?,
            (Some(fence), None) => {
                return Err(Rejection::UnknownGroupMember {
                    group: group.to_string(),
                    member_id: fence.member_id.clone(),
                });
            }
            (None, Some(state)) if !state.members.is_empty() => {
                return Err(Rejection::GroupNotEmpty { group: group.to_string(), members: state.members.len() as u32 });
            }
            (None, _) => {}
        }
        if state.is_none() && self.groups.len() >= MAX_GROUPS {
            return Err(Rejection::Invalid { reason: format!("the cluster holds the maximum of {MAX_GROUPS} groups") });
        }
        let new_keys =
            offsets.iter().filter(|(t, p, _)| !self.offsets.contains_key(&(group.to_string(), t.clone(), *p))).count();
        if self.offsets.len() + new_keys > MAX_COMMITTED_OFFSETS {
            return Err(Rejection::Invalid {
                reason: format!("the cluster holds the maximum of {MAX_COMMITTED_OFFSETS} committed offsets"),
            });
        }
        for (topic, partition, offset) in offsets {
            self.offsets.insert((group.to_string(), topic.clone(), *partition), *offset);
        }
        let state = self.groups.entry(group.to_string()).or_default();
        state.committed_at_ms = Some(state.committed_at_ms.map_or(now_ms, |t| t.max(now_ms)));
        Ok(MetadataReply::Ok)
    }

    /// Creates a topic unless it exists, its spec is invalid, or it would pass `totals` (or the
    /// hard maximum of topics) or put more replicas on a node than `per_node` allows.
    fn create_topic(
        &mut self,
        spec: &TopicSpec,
        totals: Option<&TopicTotals>,
        per_node: Option<&ReplicaLimit>,
    ) -> Result<MetadataReply, Rejection> {
        validate_spec(spec).map_err(|e| Rejection::Invalid { reason: e.to_string() })?;
        if self.topics.contains_key(&spec.name) {
            return Err(Rejection::TopicExists { name: spec.name.clone() });
        }
        if self.topics.len() >= MAX_TOPICS {
            return Err(Rejection::Invalid { reason: format!("the cluster holds the maximum of {MAX_TOPICS} topics") });
        }
        if let Some(totals) = totals {
            let refuse = |total, limit: u32, current: usize, requested: u64| {
                Err(Rejection::ClusterLimit {
                    topic: spec.name.clone(),
                    total,
                    limit: u64::from(limit),
                    current: current as u64,
                    requested,
                })
            };
            if self.topics.len() + 1 > totals.max_topics as usize {
                return refuse(ClusterTotal::Topics, totals.max_topics, self.topics.len(), 1);
            }
            let partitions = self.partition_count();
            if partitions + spec.partitions as usize > totals.max_partitions as usize {
                return refuse(ClusterTotal::Partitions, totals.max_partitions, partitions, u64::from(spec.partitions));
            }
        }
        let available = self.members.len() as u32;
        if spec.replication_factor > available {
            return Err(Rejection::NotEnoughNodes { requested: spec.replication_factor, available });
        }
        let id = self.next_topic_id;
        if id > u32::MAX >> 1 {
            return Err(Rejection::Invalid { reason: "topic ids exhausted".into() });
        }
        // Bounded creations (kind 40 on) also pick followers by load; the older kinds keep the
        // placement they were applied with, so replaying an old log places alike.
        let rule = if per_node.is_some() { Placement::LeastLoaded } else { Placement::Ring };
        let partitions = self.place(id, 0..spec.partitions, spec.replication_factor as usize, rule);
        if let Some(per_node) = per_node {
            self.check_replicas_per_node(&spec.name, &partitions, per_node)?;
        }
        let info = TopicInfo {
            name: spec.name.clone(),
            id,
            replication_factor: spec.replication_factor,
            retention: spec.retention,
            codec: spec.codec,
            partitions,
        };
        self.next_topic_id += 1;
        self.topics.insert(spec.name.clone(), info.clone());
        Ok(MetadataReply::Topic(info))
    }

    /// Refuses `new` partitions if any node (lowest id first) would then hold more replicas than
    /// `per_node` allows.
    /// Gives topic `name` partitions up to `count` (more than it has), placed by load as
    /// `CreateTopicBounded` places them, within `totals` and `per_node`.
    fn add_partitions(
        &mut self,
        name: &str,
        count: u32,
        totals: Option<&TopicTotals>,
        per_node: Option<&ReplicaLimit>,
    ) -> Result<MetadataReply, Rejection> {
        let topic = self.topics.get(name).ok_or_else(|| Rejection::UnknownTopic { name: name.to_string() })?;
        let current = topic.partitions.len() as u32;
        if count <= current || count > limits::MAX_PARTITIONS {
            return Err(Rejection::Invalid {
                reason: format!(
                    "topic has {current} partitions; a new count is in {}..={}",
                    current + 1,
                    limits::MAX_PARTITIONS
                ),
            });
        }
        let (id, factor) = (topic.id, topic.replication_factor as usize);
        if let Some(totals) = totals {
            let partitions = self.partition_count();
            if partitions + (count - current) as usize > totals.max_partitions as usize {
                return Err(Rejection::ClusterLimit {
                    topic: name.to_string(),
                    total: ClusterTotal::Partitions,
                    limit: u64::from(totals.max_partitions),
                    current: partitions as u64,
                    requested: u64::from(count - current),
                });
            }
        }
        let available = self.members.len();
        if factor > available {
            return Err(Rejection::NotEnoughNodes { requested: factor as u32, available: available as u32 });
        }
        let added = self.place(id, current..count, factor, Placement::LeastLoaded);
        if let Some(per_node) = per_node {
            self.check_replicas_per_node(name, &added, per_node)?;
        }
        let topic = self.topics.get_mut(name).expect("looked up above");
        topic.partitions.extend(added);
        Ok(MetadataReply::Topic(topic.clone()))
    }

    fn check_replicas_per_node(
        &self,
        topic: &str,
        new: &[PartitionAssignment],
        per_node: &ReplicaLimit,
    ) -> Result<(), Rejection> {
        let held = self.load();
        let mut added: BTreeMap<NodeId, u64> = BTreeMap::new();
        for p in new {
            for r in &p.replicas {
                *added.entry(*r).or_default() += 1;
            }
        }
        for (node, requested) in added {
            let current = held.get(&node).map_or(0, |(_, holds)| *holds as u64);
            if current + requested > u64::from(per_node.max_replicas) {
                return Err(Rejection::NodeLimit {
                    topic: topic.to_string(),
                    node,
                    limit: per_node.limit,
                    max: u64::from(per_node.max_replicas),
                    current,
                    requested,
                });
            }
        }
        Ok(())
    }

    /// Partition replicas each member holds, over every topic.
    pub fn replicas_per_node(&self) -> BTreeMap<NodeId, usize> {
        self.load().into_iter().map(|(id, (_, holds))| (id, holds)).collect()
    }

    /// Partitions (Raft groups) of every topic.
    pub fn partition_count(&self) -> usize {
        self.topics.values().map(|t| t.partitions.len()).sum()
    }

    /// Replica and preferred-leader counts per member, over every existing partition.
    fn load(&self) -> BTreeMap<NodeId, (usize, usize)> {
        let mut load: BTreeMap<NodeId, (usize, usize)> = self.members.keys().map(|id| (*id, (0, 0))).collect();
        for topic in self.topics.values() {
            for p in &topic.partitions {
                for (i, r) in p.replicas.iter().enumerate() {
                    if let Some(l) = load.get_mut(r) {
                        if i == 0 {
                            l.0 += 1;
                        }
                        l.1 += 1;
                    }
                }
            }
        }
        load
    }

    /// Places `count` partitions of `replicas` replicas each. The preferred leader of each
    /// partition is the member leading the fewest partitions so far (then holding the fewest
    /// replicas, then the lowest id); the followers are, by `rule`, the members after it in id
    /// order ([`Placement::Ring`]) or those holding the fewest replicas so far, ties in that
    /// order ([`Placement::LeastLoaded`]). Counts cover every topic, not only this one.
    fn place(
        &self,
        topic: TopicId,
        partitions: std::ops::Range<u32>,
        replicas: usize,
        rule: Placement,
    ) -> Vec<PartitionAssignment> {
        let ring: Vec<NodeId> = self.members.keys().copied().collect();
        debug_assert!(replicas >= 1 && replicas <= ring.len());
        let mut load = self.load();
        partitions
            .map(|partition| {
                let start = (0..ring.len())
                    .min_by_key(|i| {
                        let (leads, holds) = load[&ring[*i]];
                        (leads, holds, ring[*i])
                    })
                    .unwrap_or(0);
                let after = |k: usize| ring[(start + k) % ring.len()];
                let chosen: Vec<NodeId> = match rule {
                    Placement::Ring => (0..replicas).map(after).collect(),
                    Placement::LeastLoaded => {
                        let mut followers: Vec<(usize, usize, NodeId)> =
                            (1..ring.len()).map(|k| (load[&after(k)].1, k, after(k))).collect();
                        followers.sort_unstable();
                        std::iter::once(after(0)).chain(followers.into_iter().take(replicas - 1).map(|f| f.2)).collect()
                    }
                };
                for (k, id) in chosen.iter().enumerate() {
                    if let Some(l) = load.get_mut(id) {
                        if k == 0 {
                            l.0 += 1;
                        }
                        l.1 += 1;
                    }
                }
                PartitionAssignment {
                    partition,
                    group: partition_group_id(topic, partition),
                    replicas: chosen,
                    replica_epoch: 0,
                }
            })
            .collect()
    }

    /// Replaces `gone` in every replica list by the least-loaded member not yet a replica (lowest
    /// id on ties). Without such a member the replica is dropped, unless it is the last one.
    fn reassign_away_from(&mut self, gone: NodeId) {
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let count = self.topics[&name].partitions.len();
            for i in 0..count {
                let replicas = self.topics[&name].partitions[i].replicas.clone();
                if !replicas.contains(&gone) {
                    continue;
                }
                let load = self.load();
                let replacement = load
                    .iter()
                    .filter(|(id, _)| !replicas.contains(id))
                    .min_by_key(|(id, (_, holds))| (*holds, **id))
                    .map(|(id, _)| *id);
                let mut next: Vec<NodeId> = replicas.iter().copied().filter(|r| *r != gone).collect();
                match replacement {
                    Some(id) => next.push(id),
                    None if next.is_empty() => continue,
                    None => {}
                }
                if let Some(t) = self.topics.get_mut(&name) {
                    let p = &mut t.partitions[i];
                    p.replicas = next;
                    p.replica_epoch = p.replica_epoch.saturating_add(1);
                }
            }
        }
    }

    /// Adds `member` as a replica to every partition that has fewer replicas than its topic's
    /// replication factor (left so by removing a member when no other could take its replicas)
    /// and does not hold it yet. The partition leaders then add it as a learner and promote it
    /// once it has caught up.
    fn fill_under_replicated(&mut self, member: NodeId) {
        for topic in self.topics.values_mut() {
            let factor = topic.replication_factor as usize;
            for p in &mut topic.partitions {
                if p.replicas.len() < factor && !p.replicas.contains(&member) {
                    p.replicas.push(member);
                    p.replica_epoch = p.replica_epoch.saturating_add(1);
                }
            }
        }
    }

    /// Partitions with fewer replicas than their topic's replication factor, as
    /// `(topic, partition, replicas, factor)`.
    pub fn under_replicated(&self) -> Vec<(String, u32, usize, u32)> {
        self.topics
            .values()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.replicas.len() < t.replication_factor as usize)
                    .map(|p| (t.name.clone(), p.partition, p.replicas.len(), t.replication_factor))
            })
            .collect()
    }

    /// Encodes the whole state (the metadata group's snapshot).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(snap::MAGIC).u16(snap::VERSION).u32(self.next_topic_id);
        w.u32(self.members.len() as u32);
        for (id, addrs) in &self.members {
            w.u64(*id).str16(&addrs.internal).str16(&addrs.client).str16(&addrs.kafka);
        }
        w.u32(self.topics.len() as u32);
        for topic in self.topics.values() {
            write_topic(&mut w, topic);
        }
        w.u32(self.offsets.len() as u32);
        for ((group, topic, partition), offset) in &self.offsets {
            w.str16(group).str16(topic).u32(*partition).u64(*offset);
        }
        self.access.encode(&mut w);
        self.quotas.encode(&mut w);
        w.u32(self.groups.len() as u32);
        for (name, g) in &self.groups {
            w.str16(name);
            g.encode(&mut w);
        }
        w.crc();
        w.finish()
    }

    /// Decodes a snapshot written by [`MetadataState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::with_crc("metadata snapshot", bytes)?;
        let version = r.snapshot_header_of(
            snap::MAGIC,
            &[snap::VERSION_BEFORE_ACCESS, snap::VERSION_2, snap::VERSION_3, snap::VERSION_4, snap::VERSION],
        )?;
        let mut state = MetadataState { next_topic_id: r.u32()?, ..Self::default() };
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_MEMBERS, 10)?;
        for _ in 0..n {
            let id = r.u64()?;
            // Before version 3 a member had one address, for clients and nodes alike; before
            // version 5 no Kafka address.
            let layout = match version {
                v if v >= snap::VERSION => AddrLayout::WithKafka,
                v if v >= snap::VERSION_3 => AddrLayout::WithClient,
                _ => AddrLayout::One,
            };
            state.members.insert(id, read_addrs(&mut r, layout)?);
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_TOPICS, 16)?;
        for _ in 0..n {
            let topic = read_topic(&mut r)?;
            state.topics.insert(topic.name.clone(), topic);
        }
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, MAX_COMMITTED_OFFSETS, 16)?;
        for _ in 0..n {
            let group = r.str16(limits::MAX_GROUP_NAME_BYTES)?;
            let topic = r.str16(limits::MAX_TOPIC_NAME_BYTES)?;
            let partition = r.u32()?;
            let offset = r.u64()?;
            state.offsets.insert((group, topic, partition), offset);
        }
        if version >= snap::VERSION_2 {
            state.access = AccessState::decode(&mut r, version >= snap::VERSION_3)?;
        }
        if version >= snap::VERSION_3 {
            state.quotas = QuotaState::decode(&mut r)?;
        }
        if version >= snap::VERSION_4 {
            let raw = u64::from(r.u32()?);
            let n = r.count(raw, MAX_GROUPS, 23)?;
            for _ in 0..n {
                let name = r.str16(limits::MAX_GROUP_NAME_BYTES)?;
                let group = GroupState::decode(&mut r)?;
                state.groups.insert(name, group);
            }
        }
        r.finish()?;
        Ok(state)
    }
}

/// Which of a member's addresses an encoding holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AddrLayout {
    /// `[addr:str16]`: one address for nodes and clients, no Kafka address.
    One,
    /// `[internal:str16][client:str16]`, no Kafka address.
    WithClient,
    /// `[internal:str16][client:str16][kafka:str16]`.
    WithKafka,
}

/// A member's addresses, in `layout`.
fn read_addrs(r: &mut Reader<'_>, layout: AddrLayout) -> Result<MemberAddrs, ClusterError> {
    let internal = r.str16(limits::MAX_ADDR_BYTES)?;
    if layout == AddrLayout::One {
        return Ok(MemberAddrs::one(internal));
    }
    let client = r.str16(limits::MAX_ADDR_BYTES)?;
    let kafka = if layout == AddrLayout::WithKafka { r.str16(limits::MAX_ADDR_BYTES)? } else { String::new() };
    Ok(MemberAddrs { internal, client, kafka })
}

/// Checks a topic spec's fields (not the cluster-dependent replication factor bound).
pub fn validate_spec(spec: &TopicSpec) -> Result<(), ClusterError> {
    validate_topic_name(&spec.name)?;
    if spec.partitions == 0 || spec.partitions > limits::MAX_PARTITIONS {
        return Err(ClusterError::InvalidArgument {
            field: "partitions",
            reason: format!("{} is not in 1..={}", spec.partitions, limits::MAX_PARTITIONS),
        });
    }
    if spec.replication_factor == 0 || spec.replication_factor as usize > MAX_REPLICATION_FACTOR {
        return Err(ClusterError::InvalidArgument {
            field: "replication_factor",
            reason: format!("{} is not in 1..={MAX_REPLICATION_FACTOR}", spec.replication_factor),
        });
    }
    Ok(())
}

fn write_retention(w: &mut Writer, r: &RetentionPolicy) {
    w.opt_u64(r.retention_bytes).opt_u64(r.retention_ms);
}

fn read_retention(r: &mut Reader<'_>) -> Result<RetentionPolicy, ClusterError> {
    Ok(RetentionPolicy { retention_bytes: r.opt_u64()?, retention_ms: r.opt_u64()? })
}

fn write_spec(w: &mut Writer, spec: &TopicSpec) {
    w.str16(&spec.name).u32(spec.partitions).u32(spec.replication_factor);
    write_retention(w, &spec.retention);
    codec_kind::write(w, spec.codec);
}

fn read_spec(r: &mut Reader<'_>) -> Result<TopicSpec, ClusterError> {
    let name = r.str16(limits::MAX_TOPIC_NAME_BYTES)?;
    let partitions = r.u32()?;
    let replication_factor = r.u32()?;
    let retention = read_retention(r)?;
    let codec = codec_kind::read(r)?;
    Ok(TopicSpec { name, partitions, replication_factor, retention, codec })
}

fn write_topic(w: &mut Writer, t: &TopicInfo) {
    w.str16(&t.name).u32(t.id).u32(t.replication_factor);
    write_retention(w, &t.retention);
    codec_kind::write(w, t.codec);
    w.u32(t.partitions.len() as u32);
    for p in &t.partitions {
        w.u32(p.partition).u64(p.group.0).u32(p.replica_epoch).u16(p.replicas.len() as u16);
        for r in &p.replicas {
            w.u64(*r);
        }
    }
}

fn read_topic(r: &mut Reader<'_>) -> Result<TopicInfo, ClusterError> {
    let name = r.str16(limits::MAX_TOPIC_NAME_BYTES)?;
    let id = r.u32()?;
    let replication_factor = r.u32()?;
    let retention = read_retention(r)?;
    let codec = codec_kind::read(r)?;
    let raw = u64::from(r.u32()?);
    let n = r.count(raw, limits::MAX_PARTITIONS as usize, 18)?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        let partition = r.u32()?;
        let group = GroupId(r.u64()?);
        let replica_epoch = r.u32()?;
        let raw = u64::from(r.u16()?);
        let k = r.count(raw, MAX_REPLICATION_FACTOR, 8)?;
        let replicas = (0..k).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
        partitions.push(PartitionAssignment { partition, group, replicas, replica_epoch });
    }
    Ok(TopicInfo { name, id, replication_factor, retention, codec, partitions })
}

impl MetadataCommand {
    /// Encodes the command as a Raft entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(cmd::MAGIC).u8(cmd::VERSION);
        match self {
            MetadataCommand::CreateTopic(spec) => {
                w.u8(cmd::KIND_CREATE_TOPIC);
                write_spec(&mut w, spec);
            }
            MetadataCommand::CreateTopicWithin { spec, totals } => {
                w.u8(cmd::KIND_CREATE_TOPIC_WITHIN);
                write_spec(&mut w, spec);
                w.u32(totals.max_topics).u32(totals.max_partitions);
            }
            MetadataCommand::CreateTopicBounded { spec, totals, per_node } => {
                w.u8(cmd::KIND_CREATE_TOPIC_BOUNDED);
                write_spec(&mut w, spec);
                match totals {
                    Some(t) => w.u8(1).u32(t.max_topics).u32(t.max_partitions),
                    None => w.u8(0),
                };
                w.u32(per_node.max_replicas).u8(match per_node.limit {
                    NodeLimit::MaxPartitionsPerNode => cmd::NODE_LIMIT_MAX_PARTITIONS,
                    NodeLimit::LogCacheBudget => cmd::NODE_LIMIT_LOG_CACHE,
                });
            }
            MetadataCommand::AddPartitions { name, count, totals, per_node } => {
                w.u8(cmd::KIND_ADD_PARTITIONS).str16(name).u32(*count);
                match totals {
                    Some(t) => w.u8(1).u32(t.max_topics).u32(t.max_partitions),
                    None => w.u8(0),
                };
                match per_node {
                    Some(p) => w.u8(1).u32(p.max_replicas).u8(match p.limit {
                        NodeLimit::MaxPartitionsPerNode => cmd::NODE_LIMIT_MAX_PARTITIONS,
                        NodeLimit::LogCacheBudget => cmd::NODE_LIMIT_LOG_CACHE,
                    }),
                    None => w.u8(0),
                };
            }
            MetadataCommand::DeleteTopic { name } => {
                w.u8(cmd::KIND_DELETE_TOPIC).str16(name);
            }
            MetadataCommand::AlterTopic { name, update } => {
                w.u8(cmd::KIND_ALTER_TOPIC).str16(name);
                match &update.retention {
                    Some(r) => {
                        w.u8(1);
                        write_retention(&mut w, r);
                    }
                    None => {
                        w.u8(0);
                    }
                }
                match update.codec {
                    Some(c) => {
                        w.u8(1);
                        codec_kind::write(&mut w, c);
                    }
                    None => {
                        w.u8(0);
                    }
                }
            }
            MetadataCommand::CommitOffset { group, topic, partition, offset } => {
                w.u8(cmd::KIND_COMMIT_OFFSET).str16(group).str16(topic).u32(*partition).u64(*offset);
            }
            MetadataCommand::AddMember { id, addrs } => {
                w.u8(cmd::KIND_ADD_MEMBER_KAFKA)
                    .u64(*id)
                    .str16(&addrs.internal)
                    .str16(&addrs.client)
                    .str16(&addrs.kafka);
            }
            MetadataCommand::Bootstrap { members } => {
                w.u8(cmd::KIND_BOOTSTRAP_KAFKA).u16(members.len() as u16);
                for (id, addrs) in members {
                    w.u64(*id).str16(&addrs.internal).str16(&addrs.client).str16(&addrs.kafka);
                }
            }
            MetadataCommand::RemoveMember { id } => {
                w.u8(cmd::KIND_REMOVE_MEMBER).u64(*id);
            }
            MetadataCommand::CreateUser { name, token_hash } => {
                w.u8(cmd::KIND_CREATE_USER).str16(name);
                access::write_hash(&mut w, token_hash);
            }
            MetadataCommand::DeleteUser { name } => {
                w.u8(cmd::KIND_DELETE_USER).str16(name);
            }
            MetadataCommand::CreatePasswordUser { name, credential } => {
                w.u8(cmd::KIND_CREATE_PASSWORD_USER).str16(name);
                access::write_scram(&mut w, credential);
            }
            MetadataCommand::SetPassword { name, credential } => {
                w.u8(cmd::KIND_SET_PASSWORD).str16(name);
                access::write_scram(&mut w, credential);
            }
            MetadataCommand::AddAcl(rule) => {
                w.u8(cmd::KIND_ADD_ACL);
                access::write_rule(&mut w, rule);
            }
            MetadataCommand::RemoveAcl(rule) => {
                w.u8(cmd::KIND_REMOVE_ACL);
                access::write_rule(&mut w, rule);
            }
            MetadataCommand::SetQuota { entity, quota } => {
                w.u8(cmd::KIND_SET_QUOTA);
                quota::write_entry(&mut w, entity, quota);
            }
            MetadataCommand::RemoveQuota { entity } => {
                w.u8(cmd::KIND_REMOVE_QUOTA);
                quota::write_entity(&mut w, entity);
            }
            MetadataCommand::JoinGroup { group, member } => {
                w.u8(cmd::KIND_JOIN_GROUP).str16(group).str16(&member.member_id).str16(&member.client_addr);
                w.u32(member.session_timeout_ms).u8(match member.assignor {
                    groups::Assignor::Uniform => 1,
                    groups::Assignor::Range => 2,
                });
                groups::write_subscriptions(&mut w, &member.subscriptions);
            }
            MetadataCommand::AcknowledgeGroup { group, member_id, owned } => {
                w.u8(cmd::KIND_ACKNOWLEDGE_GROUP).str16(group).str16(member_id);
                groups::write_partitions(&mut w, owned.iter());
            }
            MetadataCommand::LeaveGroup { group, member_id } => {
                w.u8(cmd::KIND_LEAVE_GROUP).str16(group).str16(member_id);
            }
            MetadataCommand::CommitOffsets { group, fence, now_ms, offsets } => {
                w.u8(cmd::KIND_COMMIT_OFFSETS).str16(group);
                match fence {
                    Some(f) => w.u8(1).str16(&f.member_id).u64(f.member_epoch),
                    None => w.u8(0),
                };
                w.u64(*now_ms).u32(offsets.len() as u32);
                for (topic, partition, offset) in offsets {
                    w.str16(topic).u32(*partition).u64(*offset);
                }
            }
            MetadataCommand::DeleteGroup { group } => {
                w.u8(cmd::KIND_DELETE_GROUP).str16(group);
            }
            MetadataCommand::ExpireGroupOffsets { group, now_ms, retention_ms } => {
                w.u8(cmd::KIND_EXPIRE_GROUP_OFFSETS).str16(group).u64(*now_ms).u64(*retention_ms);
            }
        }
        w.finish()
    }

    /// Decodes a command written by [`MetadataCommand::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::new("metadata command", bytes);
        let magic = r.u16()?;
        if magic != cmd::MAGIC {
            return Err(r.error(format!("magic {magic:#x}, expected {:#x}", cmd::MAGIC)));
        }
        let version = r.u8()?;
        if version != cmd::VERSION {
            return Err(r.error(format!("format version {version}, this build reads {}", cmd::VERSION)));
        }
        let kind = r.u8()?;
        let command = match kind {
            cmd::KIND_CREATE_TOPIC => MetadataCommand::CreateTopic(read_spec(&mut r)?),
            cmd::KIND_CREATE_TOPIC_WITHIN => MetadataCommand::CreateTopicWithin {
                spec: read_spec(&mut r)?,
                totals: TopicTotals { max_topics: r.u32()?, max_partitions: r.u32()? },
            },
            cmd::KIND_CREATE_TOPIC_BOUNDED => {
                let spec = read_spec(&mut r)?;
                let totals = match r.u8()? {
                    0 => None,
                    1 => Some(TopicTotals { max_topics: r.u32()?, max_partitions: r.u32()? }),
                    other => return Err(r.error(format!("totals flag {other}"))),
                };
                let max_replicas = r.u32()?;
                let limit = match r.u8()? {
                    cmd::NODE_LIMIT_MAX_PARTITIONS => NodeLimit::MaxPartitionsPerNode,
                    cmd::NODE_LIMIT_LOG_CACHE => NodeLimit::LogCacheBudget,
                    other => return Err(r.error(format!("unknown node limit {other}"))),
                };
                MetadataCommand::CreateTopicBounded { spec, totals, per_node: ReplicaLimit { max_replicas, limit } }
            }
            cmd::KIND_ADD_PARTITIONS => {
                let name = r.str16(limits::MAX_TOPIC_NAME_BYTES)?;
                let count = r.u32()?;
                let totals = match r.u8()? {
                    0 => None,
                    1 => Some(TopicTotals { max_topics: r.u32()?, max_partitions: r.u32()? }),
                    other => return Err(r.error(format!("totals flag {other}"))),
                };
                let per_node = match r.u8()? {
                    0 => None,
                    1 => {
                        let max_replicas = r.u32()?;
                        let limit = match r.u8()? {
                            cmd::NODE_LIMIT_MAX_PARTITIONS => NodeLimit::MaxPartitionsPerNode,
                            cmd::NODE_LIMIT_LOG_CACHE => NodeLimit::LogCacheBudget,
                            other => return Err(r.error(format!("unknown node limit {other}"))),
                        };
                        Some(ReplicaLimit { max_replicas, limit })
                    }
                    other => return Err(r.error(format!("per-node limit flag {other}"))),
                };
                MetadataCommand::AddPartitions { name, count, totals, per_node }
            }
            cmd::KIND_DELETE_TOPIC => MetadataCommand::DeleteTopic { name: r.str16(limits::MAX_TOPIC_NAME_BYTES)? },
            cmd::KIND_ALTER_TOPIC => {
                let name = r.str16(limits::MAX_TOPIC_NAME_BYTES)?;
                let retention = match r.u8()? {
                    0 => None,
                    1 => Some(read_retention(&mut r)?),
                    other => return Err(r.error(format!("presence byte {other}"))),
                };
                let codec = match r.u8()? {
                    0 => None,
                    1 => Some(codec_kind::read(&mut r)?),
                    other => return Err(r.error(format!("presence byte {other}"))),
                };
                MetadataCommand::AlterTopic { name, update: TopicUpdate { retention, codec } }
            }
            cmd::KIND_COMMIT_OFFSET => MetadataCommand::CommitOffset {
                group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                topic: r.str16(limits::MAX_TOPIC_NAME_BYTES)?,
                partition: r.u32()?,
                offset: r.u64()?,
            },
            // Kinds 5 and 7 (written before members had a client address) name one address for
            // both; 13 and 14 (before Kafka addresses) an internal and a client address.
            cmd::KIND_ADD_MEMBER | cmd::KIND_ADD_MEMBER_ADDRS | cmd::KIND_ADD_MEMBER_KAFKA => {
                let id = r.u64()?;
                let layout = match kind {
                    cmd::KIND_ADD_MEMBER => AddrLayout::One,
                    cmd::KIND_ADD_MEMBER_ADDRS => AddrLayout::WithClient,
                    _ => AddrLayout::WithKafka,
                };
                MetadataCommand::AddMember { id, addrs: read_addrs(&mut r, layout)? }
            }
            cmd::KIND_REMOVE_MEMBER => MetadataCommand::RemoveMember { id: r.u64()? },
            cmd::KIND_BOOTSTRAP | cmd::KIND_BOOTSTRAP_ADDRS | cmd::KIND_BOOTSTRAP_KAFKA => {
                let raw = u64::from(r.u16()?);
                let n = r.count(raw, MAX_MEMBERS, 10)?;
                let layout = match kind {
                    cmd::KIND_BOOTSTRAP => AddrLayout::One,
                    cmd::KIND_BOOTSTRAP_ADDRS => AddrLayout::WithClient,
                    _ => AddrLayout::WithKafka,
                };
                let mut members = BTreeMap::new();
                for _ in 0..n {
                    let id = r.u64()?;
                    members.insert(id, read_addrs(&mut r, layout)?);
                }
                MetadataCommand::Bootstrap { members }
            }
            cmd::KIND_CREATE_USER => MetadataCommand::CreateUser {
                name: r.str16(access::MAX_PRINCIPAL_BYTES)?,
                token_hash: access::read_hash(&mut r)?,
            },
            cmd::KIND_DELETE_USER => MetadataCommand::DeleteUser { name: r.str16(access::MAX_PRINCIPAL_BYTES)? },
            cmd::KIND_CREATE_PASSWORD_USER => MetadataCommand::CreatePasswordUser {
                name: r.str16(access::MAX_PRINCIPAL_BYTES)?,
                credential: access::read_scram(&mut r)?,
            },
            cmd::KIND_SET_PASSWORD => MetadataCommand::SetPassword {
                name: r.str16(access::MAX_PRINCIPAL_BYTES)?,
                credential: access::read_scram(&mut r)?,
            },
            cmd::KIND_ADD_ACL => MetadataCommand::AddAcl(access::read_rule(&mut r)?),
            cmd::KIND_REMOVE_ACL => MetadataCommand::RemoveAcl(access::read_rule(&mut r)?),
            cmd::KIND_SET_QUOTA => {
                let (entity, quota) = quota::read_entry(&mut r)?;
                MetadataCommand::SetQuota { entity, quota }
            }
            cmd::KIND_REMOVE_QUOTA => MetadataCommand::RemoveQuota { entity: quota::read_entity(&mut r)? },
            cmd::KIND_JOIN_GROUP => {
                let group = r.str16(limits::MAX_GROUP_NAME_BYTES)?;
                let member_id = r.str16(MAX_MEMBER_ID_BYTES)?;
                let client_addr = r.str16(groups::limits::MAX_CLIENT_ADDR_BYTES)?;
                let session_timeout_ms = r.u32()?;
                let assignor = match r.u8()? {
                    1 => groups::Assignor::Uniform,
                    2 => groups::Assignor::Range,
                    other => return Err(r.error(format!("unknown assignor {other}"))),
                };
                let subscriptions: Vec<Subscription> = groups::read_subscriptions(&mut r)?;
                MetadataCommand::JoinGroup {
                    group,
                    member: MemberSpec { member_id, client_addr, subscriptions, session_timeout_ms, assignor },
                }
            }
            cmd::KIND_ACKNOWLEDGE_GROUP => MetadataCommand::AcknowledgeGroup {
                group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                member_id: r.str16(MAX_MEMBER_ID_BYTES)?,
                owned: groups::read_partitions(&mut r)?,
            },
            cmd::KIND_LEAVE_GROUP => MetadataCommand::LeaveGroup {
                group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                member_id: r.str16(MAX_MEMBER_ID_BYTES)?,
            },
            cmd::KIND_COMMIT_OFFSETS => {
                let group = r.str16(limits::MAX_GROUP_NAME_BYTES)?;
                let fence = match r.u8()? {
                    0 => None,
                    1 => Some(MemberFence { member_id: r.str16(MAX_MEMBER_ID_BYTES)?, member_epoch: r.u64()? }),
                    other => return Err(r.error(format!("presence byte {other}"))),
                };
                let now_ms = r.u64()?;
                let raw = u64::from(r.u32()?);
                let n = r.count(raw, MAX_COMMITTED_OFFSETS, 14)?;
                let mut offsets = Vec::with_capacity(n);
                for _ in 0..n {
                    offsets.push((r.str16(limits::MAX_TOPIC_NAME_BYTES)?, r.u32()?, r.u64()?));
                }
                MetadataCommand::CommitOffsets { group, fence, now_ms, offsets }
            }
            cmd::KIND_DELETE_GROUP => MetadataCommand::DeleteGroup { group: r.str16(limits::MAX_GROUP_NAME_BYTES)? },
            cmd::KIND_EXPIRE_GROUP_OFFSETS => MetadataCommand::ExpireGroupOffsets {
                group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                now_ms: r.u64()?,
                retention_ms: r.u64()?,
            },
            other => return Err(r.error(format!("unknown command kind {other}"))),
        };
        r.finish()?;
        Ok(command)
    }
}

impl MetadataReply {
    /// Encodes the reply (what the apply hands back to the proposer).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(reply::VERSION);
        match self {
            MetadataReply::Ok => {
                w.u8(reply::KIND_OK);
            }
            MetadataReply::Topic(t) => {
                w.u8(reply::KIND_TOPIC);
                write_topic(&mut w, t);
            }
            MetadataReply::Rejected(rej) => {
                w.u8(reply::KIND_REJECTED);
                match rej {
                    Rejection::TopicExists { name } => w.u8(1).str16(name),
                    Rejection::UnknownTopic { name } => w.u8(2).str16(name),
                    Rejection::UnknownPartition { topic, partition, count } => {
                        w.u8(3).str16(topic).u32(*partition).u32(*count)
                    }
                    Rejection::NotEnoughNodes { requested, available } => w.u8(4).u32(*requested).u32(*available),
                    Rejection::UnknownMember { id } => w.u8(5).u64(*id),
                    Rejection::Invalid { reason } => w.u8(6).str16(truncate(reason, 1024)),
                    Rejection::ClusterLimit { topic, total, limit, current, requested } => {
                        let total = match total {
                            ClusterTotal::Topics => 1,
                            ClusterTotal::Partitions => 2,
                        };
                        w.u8(7).str16(topic).u8(total).u64(*limit).u64(*current).u64(*requested)
                    }
                    Rejection::Access { reason } => w.u8(8).str16(truncate(reason, 1024)),
                    Rejection::NodeLimit { topic, node, limit, max, current, requested } => {
                        let limit = match limit {
                            NodeLimit::MaxPartitionsPerNode => cmd::NODE_LIMIT_MAX_PARTITIONS,
                            NodeLimit::LogCacheBudget => cmd::NODE_LIMIT_LOG_CACHE,
                        };
                        w.u8(9).str16(topic).u64(*node).u8(limit).u64(*max).u64(*current).u64(*requested)
                    }
                    Rejection::UnknownGroupMember { group, member_id } => w.u8(10).str16(group).str16(member_id),
                    Rejection::FencedMember { group, member_id, reason } => {
                        w.u8(11).str16(group).str16(member_id).str16(truncate(reason, 1024))
                    }
                    Rejection::GroupNotEmpty { group, members } => w.u8(12).str16(group).u32(*members),
                    Rejection::UnknownGroup { group } => w.u8(13).str16(group),
                };
            }
        }
        w.finish()
    }

    /// Decodes a reply written by [`MetadataReply::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ClusterError> {
        let mut r = Reader::new("metadata reply", bytes);
        let version = r.u8()?;
        if version != reply::VERSION {
            return Err(r.error(format!("format version {version}, this build reads {}", reply::VERSION)));
        }
        let out = match r.u8()? {
            reply::KIND_OK => MetadataReply::Ok,
            reply::KIND_TOPIC => MetadataReply::Topic(read_topic(&mut r)?),
            reply::KIND_REJECTED => MetadataReply::Rejected(match r.u8()? {
                1 => Rejection::TopicExists { name: r.str16(limits::MAX_TOPIC_NAME_BYTES)? },
                2 => Rejection::UnknownTopic { name: r.str16(limits::MAX_TOPIC_NAME_BYTES)? },
                3 => Rejection::UnknownPartition {
                    topic: r.str16(limits::MAX_TOPIC_NAME_BYTES)?,
                    partition: r.u32()?,
                    count: r.u32()?,
                },
                4 => Rejection::NotEnoughNodes { requested: r.u32()?, available: r.u32()? },
                5 => Rejection::UnknownMember { id: r.u64()? },
                6 => Rejection::Invalid { reason: r.str16(1024)? },
                7 => Rejection::ClusterLimit {
                    topic: r.str16(limits::MAX_TOPIC_NAME_BYTES)?,
                    total: match r.u8()? {
                        1 => ClusterTotal::Topics,
                        2 => ClusterTotal::Partitions,
                        other => return Err(r.error(format!("unknown cluster total {other}"))),
                    },
                    limit: r.u64()?,
                    current: r.u64()?,
                    requested: r.u64()?,
                },
                8 => Rejection::Access { reason: r.str16(1024)? },
                9 => Rejection::NodeLimit {
                    topic: r.str16(limits::MAX_TOPIC_NAME_BYTES)?,
                    node: r.u64()?,
                    limit: match r.u8()? {
                        cmd::NODE_LIMIT_MAX_PARTITIONS => NodeLimit::MaxPartitionsPerNode,
                        cmd::NODE_LIMIT_LOG_CACHE => NodeLimit::LogCacheBudget,
                        other => return Err(r.error(format!("unknown node limit {other}"))),
                    },
                    max: r.u64()?,
                    current: r.u64()?,
                    requested: r.u64()?,
                },
                10 => Rejection::UnknownGroupMember {
                    group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                    member_id: r.str16(MAX_MEMBER_ID_BYTES)?,
                },
                11 => Rejection::FencedMember {
                    group: r.str16(limits::MAX_GROUP_NAME_BYTES)?,
                    member_id: r.str16(MAX_MEMBER_ID_BYTES)?,
                    reason: r.str16(1024)?,
                },
                12 => Rejection::GroupNotEmpty { group: r.str16(limits::MAX_GROUP_NAME_BYTES)?, members: r.u32()? },
                13 => Rejection::UnknownGroup { group: r.str16(limits::MAX_GROUP_NAME_BYTES)? },
                other => return Err(r.error(format!("unknown rejection {other}"))),
            }),
            other => return Err(r.error(format!("unknown reply kind {other}"))),
        };
        r.finish()?;
        Ok(out)
    }
}

/// Refuses an empty or over-long group name (the node checked it at its edge too).
fn check_group_name(group: &str) -> Result<(), Rejection> {
    if group.is_empty() || group.len() > limits::MAX_GROUP_NAME_BYTES {
        return Err(Rejection::Invalid { reason: format!("group name of {} bytes", group.len()) });
    }
    Ok(())
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use shale_storage::CodecKind;

    use super::*;
    use crate::cluster::api::ShownName;

    fn spec(name: &str, partitions: u32, rf: u32) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: rf,
            retention: RetentionPolicy { retention_bytes: Some(1 << 20), retention_ms: None },
            codec: CodecKind::Zstd { level: 3 },
        }
    }

    fn three_members() -> MetadataState {
        let mut s = MetadataState::new();
        for id in 1..=3 {
            assert_eq!(
                s.apply(&MetadataCommand::AddMember {
                    id,
                    addrs: MemberAddrs::one(format!("127.0.0.1:{}", 7000 + id))
                }),
                MetadataReply::Ok
            );
        }
        s
    }

    fn create(s: &mut MetadataState, name: &str, partitions: u32, rf: u32) -> TopicInfo {
        match s.apply(&MetadataCommand::CreateTopic(spec(name, partitions, rf))) {
            MetadataReply::Topic(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adding_partitions_places_the_new_ones_and_keeps_the_old() {
        let mut s = three_members();
        let before = create(&mut s, "t", 2, 3);
        let add =
            |count, totals, per_node| MetadataCommand::AddPartitions { name: "t".into(), count, totals, per_node };
        let after = match s.apply(&add(5, None, None)) {
            MetadataReply::Topic(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(after.partitions.len(), 5);
        assert_eq!(after.partitions[..2], before.partitions[..], "the old partitions are untouched");
        for (i, p) in after.partitions.iter().enumerate() {
            assert_eq!(p.partition, i as u32);
            assert_eq!(p.group, partition_group_id(after.id, i as u32));
            assert_eq!(p.replicas.len(), 3);
            assert_eq!(p.replica_epoch, 0);
        }
        // Preferred leaders stay spread: 5 partitions on 3 nodes, at most 2 each.
        let mut leads = BTreeMap::new();
        for p in &after.partitions {
            *leads.entry(p.replicas[0]).or_insert(0) += 1;
        }
        assert!(leads.values().all(|n| *n <= 2), "{leads:?}");
        assert_eq!(s.topic("t").unwrap().partitions.len(), 5);
        // Not growing, an unknown topic, past the cluster total: refused, nothing changed.
        assert!(matches!(s.apply(&add(5, None, None)), MetadataReply::Rejected(Rejection::Invalid { .. })));
        let unknown = MetadataCommand::AddPartitions { name: "u".into(), count: 9, totals: None, per_node: None };
        assert!(matches!(s.apply(&unknown), MetadataReply::Rejected(Rejection::UnknownTopic { .. })));
        let totals = TopicTotals { max_topics: 10, max_partitions: 6 };
        assert!(matches!(
            s.apply(&add(7, Some(totals), None)),
            MetadataReply::Rejected(Rejection::ClusterLimit { .. })
        ));
        assert_eq!(s.topic("t").unwrap().partitions.len(), 5);
        let round_trip =
            add(7, Some(totals), Some(ReplicaLimit { max_replicas: 4, limit: NodeLimit::MaxPartitionsPerNode }));
        assert_eq!(MetadataCommand::decode(&round_trip.encode()).unwrap(), round_trip);
    }

    #[test]
    fn placement_spreads_preferred_leaders_evenly() {
        let mut s = three_members();
        let a = create(&mut s, "a", 3, 3);
        let leaders: Vec<NodeId> = a.partitions.iter().map(|p| p.replicas[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3]);
        for p in &a.partitions {
            let mut r = p.replicas.clone();
            r.sort_unstable();
            assert_eq!(r, vec![1, 2, 3]);
        }
        // A second topic continues the spread from the current load.
        let b = create(&mut s, "b", 4, 2);
        let mut leads = BTreeMap::new();
        for t in s.topics().values() {
            for p in &t.partitions {
                *leads.entry(p.replicas[0]).or_insert(0) += 1;
                assert_eq!(p.replicas.len(), t.replication_factor as usize);
                let mut d = p.replicas.clone();
                d.dedup();
                assert_eq!(d.len(), p.replicas.len(), "distinct replicas");
            }
        }
        let (min, max) = (leads.values().min().unwrap(), leads.values().max().unwrap());
        assert!(max - min <= 1, "{leads:?}");
        assert_eq!(b.id, a.id + 1);
        assert_eq!(b.partitions[2].group, partition_group_id(b.id, 2));
    }

    /// Leader and replica counts over many topics of mixed sizes stay even on every cluster
    /// size, because each placement counts what every node already holds across all topics
    /// (bounded creations, whose followers are the least loaded members).
    #[test]
    fn placement_over_many_topics_keeps_leaders_and_replicas_even() {
        for members in [3u64, 4, 5, 7] {
            let mut s = MetadataState::new();
            for id in 1..=members {
                s.apply(&MetadataCommand::AddMember { id, addrs: MemberAddrs::one(format!("h:{id}")) });
            }
            // A fixed pseudo-random mix of sizes (1..=16 partitions, rf 1..=3).
            let mut x = 7u64;
            for t in 0..300 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let partitions = 1 + (x >> 33) % 16;
                let rf = 1 + (x >> 40) % 3;
                let command = MetadataCommand::CreateTopicBounded {
                    spec: spec(&format!("t{t}"), partitions as u32, rf as u32),
                    totals: None,
                    per_node: crate::cluster::api::ReplicaLimit {
                        max_replicas: u32::MAX,
                        limit: crate::cluster::api::NodeLimit::MaxPartitionsPerNode,
                    },
                };
                assert!(matches!(s.apply(&command), MetadataReply::Topic(_)));
            }
            let load = s.load();
            let leads: Vec<usize> = load.values().map(|(l, _)| *l).collect();
            let holds: Vec<usize> = load.values().map(|(_, h)| *h).collect();
            let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
            assert!(spread(&leads) <= 1, "{members} members: leaders {leads:?}");
            assert!(spread(&holds) <= 2, "{members} members: replicas {holds:?}");
            assert_eq!(s.replicas_per_node().values().copied().collect::<Vec<_>>(), holds);
        }
        // Issue 15's target: 3,000 partitions at rf 3 in 16-partition topics on three nodes.
        let mut s = three_members();
        for t in 0..187 {
            create(&mut s, &format!("p{t}"), 16, 3);
        }
        create(&mut s, "rest", 8, 3);
        assert_eq!(s.partition_count(), 3000);
        let leads: Vec<usize> = s.load().values().map(|(l, _)| *l).collect();
        assert_eq!(leads, vec![1000, 1000, 1000]);
    }

    #[test]
    fn a_bounded_creation_is_refused_when_a_node_would_hold_too_many_replicas() {
        use crate::cluster::api::{NodeLimit, ReplicaLimit};
        let mut s = three_members();
        let bounded = |name: &str, partitions, max_replicas, limit| MetadataCommand::CreateTopicBounded {
            spec: spec(name, partitions, 3),
            totals: None,
            per_node: ReplicaLimit { max_replicas, limit },
        };
        let first = bounded("a", 9, 10, NodeLimit::MaxPartitionsPerNode);
        let bytes = first.encode();
        assert_eq!(bytes[3], cmd::KIND_CREATE_TOPIC_BOUNDED);
        assert_eq!(MetadataCommand::decode(&bytes).unwrap(), first);
        assert!(matches!(s.apply(&first), MetadataReply::Topic(_)));
        let before = s.clone();
        let over = s.apply(&bounded("b", 2, 10, NodeLimit::LogCacheBudget));
        let expected = Rejection::NodeLimit {
            topic: "b".into(),
            node: 1,
            limit: NodeLimit::LogCacheBudget,
            max: 10,
            current: 9,
            requested: 2,
        };
        assert_eq!(over, MetadataReply::Rejected(expected.clone()));
        assert_eq!(MetadataReply::decode(&over.encode()).unwrap(), over);
        assert_eq!(s, before, "a refusal changes nothing");
        let message = ClusterError::from(expected).to_string();
        assert!(message.contains("over memory.log_cache_bytes = 10"), "{message}");
        // With totals too, and a creation that fits.
        let within = MetadataCommand::CreateTopicBounded {
            spec: spec("c", 1, 3),
            totals: Some(TopicTotals { max_topics: 2, max_partitions: 100 }),
            per_node: ReplicaLimit { max_replicas: 10, limit: NodeLimit::MaxPartitionsPerNode },
        };
        assert_eq!(MetadataCommand::decode(&within.encode()).unwrap(), within);
        assert!(matches!(s.apply(&within), MetadataReply::Topic(_)));
        assert_eq!(s.replicas_per_node(), BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    }

    #[test]
    fn create_rejections_are_deterministic() {
        let mut s = three_members();
        create(&mut s, "t", 1, 1);
        let before = s.clone();
        assert_eq!(
            s.apply(&MetadataCommand::CreateTopic(spec("t", 2, 1))),
            MetadataReply::Rejected(Rejection::TopicExists { name: "t".into() })
        );
        assert_eq!(
            s.apply(&MetadataCommand::CreateTopic(spec("u", 2, 4))),
            MetadataReply::Rejected(Rejection::NotEnoughNodes { requested: 4, available: 3 })
        );
        assert!(matches!(
            s.apply(&MetadataCommand::CreateTopic(spec("bad name", 1, 1))),
            MetadataReply::Rejected(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            s.apply(&MetadataCommand::CreateTopic(spec("z", 0, 1))),
            MetadataReply::Rejected(Rejection::Invalid { .. })
        ));
        assert_eq!(s, before, "rejections change nothing");
    }

    // Issue 14 item 5: creating 16-partition topics in a loop collapsed a cluster after ~58
    // topics. With totals in the command, the creation that would pass one is refused at apply,
    // and of two racing creations that each fit alone, the one applied second is refused.
    #[test]
    fn creations_past_the_cluster_totals_are_refused_at_apply() {
        let within = |name: &str, partitions, max_topics, max_partitions| MetadataCommand::CreateTopicWithin {
            spec: spec(name, partitions, 1),
            totals: TopicTotals { max_topics, max_partitions },
        };
        let mut s = three_members();
        assert!(matches!(s.apply(&within("a", 16, 3, 40)), MetadataReply::Topic(_)));
        let (b, c) = (within("b", 16, 3, 40), within("c", 16, 3, 40));
        assert!(matches!(s.apply(&b), MetadataReply::Topic(_)));
        assert_eq!(
            s.apply(&c),
            MetadataReply::Rejected(Rejection::ClusterLimit {
                topic: "c".into(),
                total: ClusterTotal::Partitions,
                limit: 40,
                current: 32,
                requested: 16,
            })
        );
        assert!(matches!(s.apply(&within("d", 8, 3, 40)), MetadataReply::Topic(_)), "8 more fit exactly");
        assert_eq!(
            s.apply(&within("e", 1, 3, 1000)),
            MetadataReply::Rejected(Rejection::ClusterLimit {
                topic: "e".into(),
                total: ClusterTotal::Topics,
                limit: 3,
                current: 3,
                requested: 1,
            })
        );
        assert_eq!(s.partition_count(), 40);
        let err = ClusterError::from(Rejection::ClusterLimit {
            topic: "c".into(),
            total: ClusterTotal::Partitions,
            limit: 40,
            current: 32,
            requested: 16,
        });
        assert_eq!(
            err.to_string(),
            "creating topic \"c\" (16 partitions) would make 48 partitions in the cluster, over limits.max_partitions = 40"
        );
        // Without totals only the hard maximum applies; deleting makes room again.
        assert!(matches!(s.apply(&MetadataCommand::CreateTopic(spec("f", 16, 1))), MetadataReply::Topic(_)));
        assert_eq!(s.apply(&MetadataCommand::DeleteTopic { name: "f".into() }), MetadataReply::Ok);
        assert_eq!(s.apply(&MetadataCommand::DeleteTopic { name: "a".into() }), MetadataReply::Ok);
        assert!(matches!(s.apply(&c), MetadataReply::Topic(_)));
    }

    #[test]
    fn names_over_the_limit_are_shown_as_a_prefix_and_a_length() {
        let long = "x".repeat(10_000);
        let text = ClusterError::UnknownTopic { name: long.clone() }.to_string();
        assert_eq!(text, format!("unknown topic \"{}\"... (10000 bytes)", "x".repeat(ShownName::PREFIX_BYTES)));
        let valid = "v".repeat(limits::MAX_TOPIC_NAME_BYTES);
        assert_eq!(ClusterError::UnknownTopic { name: valid.clone() }.to_string(), format!("unknown topic {valid:?}"));
        let invalid = validate_topic_name(&long).unwrap_err().to_string();
        assert!(invalid.len() < 120, "{invalid}");
        // A multi-byte character at the cut is not split.
        let wide = "é".repeat(200);
        assert!(ShownName(&wide).to_string().ends_with("... (400 bytes)"));
    }

    fn join(group: &str, member: &str, topic: &str) -> MetadataCommand {
        MetadataCommand::JoinGroup {
            group: group.into(),
            member: MemberSpec {
                member_id: member.into(),
                client_addr: "10.0.0.9:5000".into(),
                subscriptions: vec![Subscription::Topic(topic.into())],
                session_timeout_ms: 30_000,
                assignor: groups::Assignor::Uniform,
            },
        }
    }

    fn fenced_commit(member: &str, epoch: u64, offsets: &[(u32, u64)]) -> MetadataCommand {
        MetadataCommand::CommitOffsets {
            group: "g".into(),
            fence: Some(MemberFence { member_id: member.into(), member_epoch: epoch }),
            now_ms: 1_000,
            offsets: offsets.iter().map(|(p, o)| ("t".to_string(), *p, *o)).collect(),
        }
    }

    #[test]
    fn group_commands_coordinate_members_and_fence_commits() {
        let mut s = three_members();
        create(&mut s, "t", 4, 3);
        for c in [join("g", "a", "t"), join("g", "b", "t")] {
            assert_eq!(MetadataCommand::decode(&c.encode()).unwrap(), c);
            assert_eq!(s.apply(&c), MetadataReply::Ok);
        }
        let g = s.group("g").unwrap().clone();
        let a = &g.members["a"];
        assert_eq!(a.assigned.len(), 2, "a keeps half");
        assert_eq!(a.revoking.len(), 2, "and gives up half");
        let (theirs, _) = a.revoking.iter().next().cloned().unwrap();
        assert_eq!(theirs, "t");
        // a commits its revoking partitions (allowed: commit before giving up), all at once.
        let all: Vec<(u32, u64)> =
            a.assigned.iter().chain(&a.revoking).map(|(_, p)| (*p, 10 + u64::from(*p))).collect();
        let commit = fenced_commit("a", a.epoch, &all);
        assert_eq!(MetadataCommand::decode(&commit.encode()).unwrap(), commit);
        assert_eq!(s.apply(&commit), MetadataReply::Ok);
        assert_eq!(s.group_offsets("g").len(), 4);
        // b holds nothing yet: its commit of anything is refused, and nothing of it is written.
        let b_epoch = g.members["b"].epoch;
        let refused = s.apply(&fenced_commit("b", b_epoch, &[(0, 99), (1, 99)]));
        assert!(matches!(refused, MetadataReply::Rejected(Rejection::FencedMember { .. })), "{refused:?}");
        assert!(s.group_offsets("g").iter().all(|(_, _, o)| *o < 99), "a refused commit writes nothing");
        // a hands the revoking partitions back; b gets them.
        let owned: Vec<TopicPartition> = a.assigned.iter().cloned().collect();
        let ack = MetadataCommand::AcknowledgeGroup { group: "g".into(), member_id: "a".into(), owned };
        assert_eq!(MetadataCommand::decode(&ack.encode()).unwrap(), ack);
        assert_eq!(s.apply(&ack), MetadataReply::Ok);
        let g2 = s.group("g").unwrap();
        assert!(g2.epoch > g.epoch);
        assert_eq!(g2.members["b"].assigned, a.revoking);
        // The zombie a commits what moved: refused.
        let moved: Vec<(u32, u64)> = a.revoking.iter().map(|(_, p)| (*p, 50)).collect();
        assert!(matches!(
            s.apply(&fenced_commit("a", a.epoch, &moved)),
            MetadataReply::Rejected(Rejection::FencedMember { .. })
        ));
        // An unfenced commit (an admin reset) and a delete need an empty group.
        let reset = MetadataCommand::CommitOffsets {
            group: "g".into(),
            fence: None,
            now_ms: 2_000,
            offsets: vec![("t".into(), 0, 0)],
        };
        assert!(matches!(s.apply(&reset), MetadataReply::Rejected(Rejection::GroupNotEmpty { members: 2, .. })));
        let delete = MetadataCommand::DeleteGroup { group: "g".into() };
        assert_eq!(MetadataCommand::decode(&delete.encode()).unwrap(), delete);
        assert!(matches!(s.apply(&delete), MetadataReply::Rejected(Rejection::GroupNotEmpty { .. })));
        // Both leave (the second as a session expiry would): the group is empty, offsets stay.
        for m in ["a", "b"] {
            let leave = MetadataCommand::LeaveGroup { group: "g".into(), member_id: m.into() };
            assert_eq!(MetadataCommand::decode(&leave.encode()).unwrap(), leave);
            assert_eq!(s.apply(&leave), MetadataReply::Ok);
        }
        assert!(matches!(
            s.apply(&fenced_commit("a", a.epoch, &[(0, 1)])),
            MetadataReply::Rejected(Rejection::UnknownGroupMember { .. })
        ));
        assert_eq!(s.group("g").unwrap().phase(), groups::GroupPhase::Empty);
        assert_eq!(s.apply(&reset), MetadataReply::Ok);
        assert_eq!(s.group("g").unwrap().committed_at_ms, Some(2_000));
        // The snapshot keeps the groups.
        let restored = MetadataState::decode(&s.encode()).unwrap();
        assert_eq!(restored, s);
        assert_eq!(s.apply(&delete), MetadataReply::Ok);
        assert!(s.group_offsets("g").is_empty() && s.group("g").is_none());
        assert!(matches!(s.apply(&delete), MetadataReply::Rejected(Rejection::UnknownGroup { .. })));
        for r in [
            Rejection::UnknownGroupMember { group: "g".into(), member_id: "a".into() },
            Rejection::FencedMember { group: "g".into(), member_id: "a".into(), reason: "x".into() },
            Rejection::GroupNotEmpty { group: "g".into(), members: 3 },
            Rejection::UnknownGroup { group: "g".into() },
        ] {
            let reply = MetadataReply::Rejected(r);
            assert_eq!(MetadataReply::decode(&reply.encode()).unwrap(), reply);
        }
    }

    #[test]
    fn memberless_groups_keep_offsets_until_the_retention_and_new_topics_are_assigned() {
        let mut s = three_members();
        create(&mut s, "t", 2, 1);
        assert_eq!(s.apply(&join("g", "a", "t")), MetadataReply::Ok);
        assert!(s.apply(&fenced_commit("a", s.group("g").unwrap().members["a"].epoch, &[(0, 5)])) == MetadataReply::Ok);
        let expire = |now_ms| MetadataCommand::ExpireGroupOffsets { group: "g".into(), now_ms, retention_ms: 500 };
        assert!(matches!(s.apply(&expire(10_000)), MetadataReply::Rejected(Rejection::GroupNotEmpty { .. })));
        assert_eq!(
            s.apply(&MetadataCommand::LeaveGroup { group: "g".into(), member_id: "a".into() }),
            MetadataReply::Ok
        );
        assert!(matches!(s.apply(&expire(1_400)), MetadataReply::Rejected(Rejection::Invalid { .. })));
        assert_eq!(s.group_offsets("g").len(), 1);
        let c = expire(1_500);
        assert_eq!(MetadataCommand::decode(&c.encode()).unwrap(), c);
        assert_eq!(s.apply(&c), MetadataReply::Ok);
        assert!(s.group_offsets("g").is_empty() && s.group_names().is_empty());
        // A member subscribed by prefix gets a topic created later.
        let mut prefix = join("h", "m", "t");
        if let MetadataCommand::JoinGroup { member, .. } = &mut prefix {
            member.subscriptions = vec![Subscription::Prefix("logs.".into())];
        }
        assert_eq!(s.apply(&prefix), MetadataReply::Ok);
        assert!(s.group("h").unwrap().members["m"].assigned.is_empty());
        create(&mut s, "logs.app", 3, 1);
        assert_eq!(s.group("h").unwrap().members["m"].assigned.len(), 3);
        assert_eq!(s.apply(&MetadataCommand::DeleteTopic { name: "logs.app".into() }), MetadataReply::Ok);
        assert!(s.group("h").unwrap().members["m"].assigned.is_empty());
    }

    #[test]
    fn a_version_3_snapshot_without_groups_still_reads() {
        let mut s = three_members();
        create(&mut s, "t", 2, 2);
        s.apply(&MetadataCommand::CommitOffset { group: "g".into(), topic: "t".into(), partition: 0, offset: 3 });
        // Version 3: today's layout without the groups section after the quotas.
        let mut w = Writer::new();
        w.u32(snap::MAGIC).u16(snap::VERSION_3).u32(s.next_topic_id);
        w.u32(s.members.len() as u32);
        for (id, addrs) in &s.members {
            w.u64(*id).str16(&addrs.internal).str16(&addrs.client);
        }
        w.u32(s.topics.len() as u32);
        for topic in s.topics.values() {
            write_topic(&mut w, topic);
        }
        w.u32(1).str16("g").str16("t").u32(0).u64(3);
        s.access.encode(&mut w);
        s.quotas.encode(&mut w);
        w.crc();
        let old = MetadataState::decode(&w.finish()).unwrap();
        assert_eq!(old, s);
        assert_eq!(old.group_names(), vec!["g".to_string()]);
    }

    #[test]
    fn offsets_follow_topics() {
        let mut s = three_members();
        create(&mut s, "t", 2, 3);
        let commit =
            |p, o| MetadataCommand::CommitOffset { group: "g".into(), topic: "t".into(), partition: p, offset: o };
        assert_eq!(s.apply(&commit(1, 42)), MetadataReply::Ok);
        assert_eq!(s.apply(&commit(1, 43)), MetadataReply::Ok);
        assert_eq!(
            s.apply(&commit(2, 1)),
            MetadataReply::Rejected(Rejection::UnknownPartition { topic: "t".into(), partition: 2, count: 2 })
        );
        assert_eq!(s.group_offsets("g"), vec![("t".to_string(), 1, 43)]);
        assert!(s.group_offsets("other").is_empty());
        assert_eq!(s.apply(&MetadataCommand::DeleteTopic { name: "t".into() }), MetadataReply::Ok);
        assert!(s.group_offsets("g").is_empty());
        assert_eq!(
            s.apply(&MetadataCommand::DeleteTopic { name: "t".into() }),
            MetadataReply::Rejected(Rejection::UnknownTopic { name: "t".into() })
        );
        // Ids are never reused.
        assert_eq!(create(&mut s, "t", 1, 1).id, 2);
    }

    #[test]
    fn alter_changes_only_what_is_named() {
        let mut s = three_members();
        create(&mut s, "t", 1, 1);
        let update = TopicUpdate { retention: None, codec: Some(CodecKind::Lz4) };
        assert_eq!(s.apply(&MetadataCommand::AlterTopic { name: "t".into(), update }), MetadataReply::Ok);
        let t = s.topic("t").unwrap();
        assert_eq!(t.codec, CodecKind::Lz4);
        assert_eq!(t.retention.retention_bytes, Some(1 << 20));
    }

    #[test]
    fn bootstrap_records_members_once() {
        let mut s = MetadataState::new();
        let first = BTreeMap::from([
            (1, MemberAddrs::pair("node-1:7101", "127.0.0.1:7001").with_kafka("127.0.0.1:9092")),
            (2, MemberAddrs::one("b:2")),
        ]);
        assert_eq!(s.apply(&MetadataCommand::Bootstrap { members: first.clone() }), MetadataReply::Ok);
        assert_eq!(s.members(), &first);
        let other = BTreeMap::from([(7, MemberAddrs::one("z:7"))]);
        assert_eq!(s.apply(&MetadataCommand::Bootstrap { members: other }), MetadataReply::Ok);
        assert_eq!(s.members(), &first, "a second bootstrap changes nothing");
        assert!(matches!(
            MetadataState::new().apply(&MetadataCommand::Bootstrap { members: BTreeMap::new() }),
            MetadataReply::Rejected(Rejection::Invalid { .. })
        ));
    }

    #[test]
    fn removing_a_member_moves_its_replicas() {
        let mut s = three_members();
        s.apply(&MetadataCommand::AddMember { id: 4, addrs: MemberAddrs::one("h:4") });
        create(&mut s, "t", 4, 2);
        assert_eq!(s.apply(&MetadataCommand::RemoveMember { id: 2 }), MetadataReply::Ok);
        for p in &s.topic("t").unwrap().partitions {
            assert!(!p.replicas.contains(&2), "{p:?}");
            assert_eq!(p.replicas.len(), 2);
        }
        assert_eq!(
            s.apply(&MetadataCommand::RemoveMember { id: 2 }),
            MetadataReply::Rejected(Rejection::UnknownMember { id: 2 })
        );
    }

    #[test]
    fn removing_a_member_with_no_spare_under_replicates_and_adding_one_restores() {
        let mut s = three_members();
        create(&mut s, "t", 3, 3);
        assert!(s.under_replicated().is_empty());
        assert_eq!(s.apply(&MetadataCommand::RemoveMember { id: 2 }), MetadataReply::Ok);
        let under = s.under_replicated();
        assert_eq!(under, (0..3).map(|p| ("t".to_string(), p, 2, 3)).collect::<Vec<_>>());
        let epochs: Vec<u32> = s.topic("t").unwrap().partitions.iter().map(|p| p.replica_epoch).collect();
        // Adding a member (the same node back, or another) fills every under-replicated partition.
        assert_eq!(s.apply(&MetadataCommand::AddMember { id: 2, addrs: MemberAddrs::one("h:2") }), MetadataReply::Ok);
        assert!(s.under_replicated().is_empty());
        for (p, epoch) in s.topic("t").unwrap().partitions.iter().zip(epochs) {
            assert_eq!(p.replicas.len(), 3, "{p:?}");
            assert_eq!(p.replicas.last(), Some(&2), "the new replica is not the preferred leader: {p:?}");
            assert_eq!(p.replica_epoch, epoch + 1, "{p:?}");
        }
        // A fully replicated partition is left alone.
        assert_eq!(s.apply(&MetadataCommand::AddMember { id: 4, addrs: MemberAddrs::one("h:4") }), MetadataReply::Ok);
        assert!(s.topic("t").unwrap().partitions.iter().all(|p| !p.replicas.contains(&4)));
    }

    #[test]
    fn commands_replies_and_snapshots_round_trip() {
        let mut s = three_members();
        let commands = vec![
            MetadataCommand::CreateTopic(spec("orders", 3, 2)),
            MetadataCommand::AlterTopic {
                name: "orders".into(),
                update: TopicUpdate {
                    retention: Some(RetentionPolicy { retention_bytes: None, retention_ms: Some(60_000) }),
                    codec: None,
                },
            },
            MetadataCommand::CommitOffset { group: "g1".into(), topic: "orders".into(), partition: 2, offset: 9 },
            MetadataCommand::AddMember { id: 9, addrs: MemberAddrs::one("10.0.0.9:7000") },
            MetadataCommand::RemoveMember { id: 9 },
            MetadataCommand::Bootstrap { members: BTreeMap::from([(1, MemberAddrs::one("x:1"))]) },
            MetadataCommand::CreateTopic(spec("orders", 3, 2)),
            MetadataCommand::DeleteTopic { name: "nope".into() },
        ];
        for c in &commands {
            let bytes = c.encode();
            assert_eq!(&MetadataCommand::decode(&bytes).unwrap(), c);
            let reply = s.apply(c);
            assert_eq!(MetadataReply::decode(&reply.encode()).unwrap(), reply);
        }
        let snap = s.encode();
        assert_eq!(MetadataState::decode(&snap).unwrap(), s);
        // Replaying the same commands on a fresh state gives the same snapshot bytes.
        let mut t = three_members();
        for c in &commands {
            t.apply(c);
        }
        assert_eq!(t.encode(), snap);
    }

    #[test]
    fn users_and_acls_replicate_through_commands_and_snapshots() {
        use crate::cluster::access::{Operation, Resource, ResourcePattern};
        let mut s = three_members();
        let rule = AclRule {
            principal: "alice".into(),
            operation: Operation::Produce,
            resource: ResourcePattern::TopicPrefix("orders.".into()),
        };
        for c in [
            MetadataCommand::CreateUser { name: "alice".into(), token_hash: [7; 32] },
            MetadataCommand::AddAcl(rule.clone()),
        ] {
            let c = MetadataCommand::decode(&c.encode()).unwrap();
            assert_eq!(s.apply(&c), MetadataReply::Ok);
        }
        let again = s.apply(&MetadataCommand::CreateUser { name: "alice".into(), token_hash: [8; 32] });
        assert!(matches!(&again, MetadataReply::Rejected(Rejection::Access { reason }) if reason.contains("exists")));
        assert_eq!(MetadataReply::decode(&again.encode()).unwrap(), again);
        let restored = MetadataState::decode(&s.encode()).unwrap();
        assert_eq!(restored, s);
        assert_eq!(restored.access().token_hash("alice"), Some(&[7; 32]));
        assert!(restored.access().allows(Some("alice"), Operation::Produce, Resource::Topic("orders.eu")));
        assert_eq!(s.apply(&MetadataCommand::RemoveAcl(rule.clone())), MetadataReply::Ok);
        assert!(matches!(
            s.apply(&MetadataCommand::RemoveAcl(rule)),
            MetadataReply::Rejected(Rejection::Access { .. })
        ));
        assert_eq!(s.apply(&MetadataCommand::DeleteUser { name: "alice".into() }), MetadataReply::Ok);
        assert!(!s.access().allows(Some("alice"), Operation::Produce, Resource::Topic("orders.eu")));
    }

    fn scram(byte: u8) -> ScramCredential {
        ScramCredential { salt: vec![byte; 16], iterations: 4096, stored_key: [byte; 32], server_key: [!byte; 32] }
    }

    #[test]
    fn password_users_replicate_through_commands_and_snapshots() {
        let mut s = three_members();
        for c in [
            MetadataCommand::CreateUser { name: "alice".into(), token_hash: [7; 32] },
            MetadataCommand::CreatePasswordUser { name: "bob".into(), credential: scram(1) },
            MetadataCommand::SetPassword { name: "bob".into(), credential: scram(2) },
            MetadataCommand::SetPassword { name: "alice".into(), credential: scram(3) },
        ] {
            let bytes = c.encode();
            assert_eq!(
                bytes[3],
                match &c {
                    MetadataCommand::CreateUser { .. } => cmd::KIND_CREATE_USER,
                    MetadataCommand::CreatePasswordUser { .. } => cmd::KIND_CREATE_PASSWORD_USER,
                    _ => cmd::KIND_SET_PASSWORD,
                }
            );
            let c = MetadataCommand::decode(&bytes).unwrap();
            assert_eq!(s.apply(&c), MetadataReply::Ok, "{c:?}");
        }
        assert_eq!(s.access().scram("bob"), Some(&scram(2)));
        assert_eq!(s.access().scram("alice"), Some(&scram(3)));
        assert_eq!(s.access().token_hash("alice"), None);
        let unknown = s.apply(&MetadataCommand::SetPassword { name: "carol".into(), credential: scram(4) });
        assert!(matches!(&unknown, MetadataReply::Rejected(Rejection::Access { reason }) if reason.contains("carol")));
        let weak = MetadataCommand::CreatePasswordUser {
            name: "dave".into(),
            credential: ScramCredential { iterations: 1000, ..scram(5) },
        };
        assert!(MetadataCommand::decode(&weak.encode()).is_err(), "a weak credential does not even decode");
        assert!(matches!(s.apply(&weak), MetadataReply::Rejected(Rejection::Invalid { .. })));
        let snapshot = s.encode();
        assert_eq!(u16::from_le_bytes([snapshot[4], snapshot[5]]), snap::VERSION);
        assert_eq!(MetadataState::decode(&snapshot).unwrap(), s);
        assert_eq!(s.apply(&MetadataCommand::DeleteUser { name: "bob".into() }), MetadataReply::Ok);
        assert_eq!(s.access().scram("bob"), None);
    }

    /// The head of a snapshot of `s` in an older `version` (1 or 2): magic, version, next topic
    /// id, each member with its one (internal) address, the topics and no committed offsets;
    /// the caller writes what that version has after them.
    fn old_snapshot_head(s: &MetadataState, version: u16) -> Writer {
        debug_assert!(version < snap::VERSION);
        let mut w = Writer::new();
        w.u32(snap::MAGIC).u16(version).u32(s.next_topic_id);
        w.u32(s.members.len() as u32);
        for (id, addrs) in &s.members {
            w.u64(*id).str16(&addrs.internal);
        }
        w.u32(s.topics.len() as u32);
        for topic in s.topics.values() {
            write_topic(&mut w, topic);
        }
        w.u32(0);
        w
    }

    #[test]
    fn a_version_2_snapshot_with_token_users_still_reads() {
        let mut s = three_members();
        create(&mut s, "t", 1, 1);
        s.apply(&MetadataCommand::CreateUser { name: "alice".into(), token_hash: [7; 32] });
        s.apply(&MetadataCommand::CreateUser { name: "bob".into(), token_hash: [8; 32] });
        // Version 2: users as `[name][hash]`, no kind byte.
        let mut w = old_snapshot_head(&s, snap::VERSION_2);
        w.u32(2);
        for (name, hash) in [("alice", [7u8; 32]), ("bob", [8; 32])] {
            w.str16(name);
            access::write_hash(&mut w, &hash);
        }
        w.u32(0);
        w.crc();
        let old = MetadataState::decode(&w.finish()).unwrap();
        assert_eq!(old, s);
        assert_eq!(old.access().token_hash("bob"), Some(&[8; 32]));
    }

    #[test]
    fn quotas_replicate_through_commands_and_snapshots() {
        let mut s = three_members();
        let alice = QuotaEntity::User("alice".into());
        let set = |entity: &QuotaEntity, produce, consume| MetadataCommand::SetQuota {
            entity: entity.clone(),
            quota: Quota { produce_bytes_per_sec: produce, consume_bytes_per_sec: consume },
        };
        for c in [set(&QuotaEntity::Default, Some(1_000), Some(2_000)), set(&alice, Some(50), None)] {
            assert_eq!(MetadataCommand::decode(&c.encode()).unwrap(), c);
            assert_eq!(s.apply(&c), MetadataReply::Ok);
        }
        let bad = set(&alice, None, None);
        assert!(matches!(s.apply(&bad), MetadataReply::Rejected(Rejection::Invalid { .. })));
        let restored = MetadataState::decode(&s.encode()).unwrap();
        assert_eq!(restored, s);
        let expect = Quota { produce_bytes_per_sec: Some(50), consume_bytes_per_sec: Some(2_000) };
        assert_eq!(restored.quotas().effective(Some("alice")), expect);
        let remove = MetadataCommand::RemoveQuota { entity: alice.clone() };
        assert_eq!(MetadataCommand::decode(&remove.encode()).unwrap(), remove);
        assert_eq!(s.apply(&remove), MetadataReply::Ok);
        assert!(matches!(s.apply(&remove), MetadataReply::Rejected(Rejection::Access { .. })));
        assert_eq!(s.quotas().effective(Some("alice")).produce_bytes_per_sec, Some(1_000));
    }

    #[test]
    fn a_snapshot_from_before_quotas_still_reads() {
        use crate::cluster::access::{Operation, ResourcePattern};
        let mut s = three_members();
        create(&mut s, "t", 2, 2);
        // (No users: a version-2 user has no credential kind byte, which `encode` now writes.)
        let rule = AclRule {
            principal: "alice".into(),
            operation: Operation::Produce,
            resource: ResourcePattern::Topic("t".into()),
        };
        s.apply(&MetadataCommand::AddAcl(rule));
        // Version 2: the same layout without the quota entries after the access part.
        let mut w = old_snapshot_head(&s, snap::VERSION_2);
        s.access.encode(&mut w);
        w.crc();
        let old = MetadataState::decode(&w.finish()).unwrap();
        assert_eq!(old, s);
        assert!(old.quotas().entries().is_empty());
    }

    #[test]
    fn members_keep_an_internal_a_client_and_a_kafka_address_and_old_encodings_still_read() {
        let mut s = MetadataState::new();
        let two = MemberAddrs::pair("node-2:7101", "127.0.0.1:7002").with_kafka("127.0.0.1:9093");
        let add = MetadataCommand::AddMember { id: 2, addrs: two.clone() };
        let bytes = add.encode();
        assert_eq!(bytes[3], cmd::KIND_ADD_MEMBER_KAFKA, "written with all three addresses");
        assert_eq!(MetadataCommand::decode(&bytes).unwrap(), add);
        assert_eq!(s.apply(&add), MetadataReply::Ok);
        assert_eq!(s.members()[&2], two);
        // Re-addressing a member changes only its addresses.
        let moved = MemberAddrs::pair("node-2:7101", "shale.example:7002").with_kafka("shale.example:9092");
        assert_eq!(s.apply(&MetadataCommand::AddMember { id: 2, addrs: moved.clone() }), MetadataReply::Ok);
        assert_eq!(s.members()[&2], moved);
        // An empty client address is refused like an empty internal one.
        let empty = MemberAddrs::pair("node-3:7101", String::new());
        assert!(matches!(
            s.apply(&MetadataCommand::AddMember { id: 3, addrs: empty }),
            MetadataReply::Rejected(Rejection::Invalid { .. })
        ));
        // Kind 13, written before Kafka addresses: none recorded.
        let mut w = Writer::new();
        w.u16(cmd::MAGIC).u8(cmd::VERSION).u8(cmd::KIND_ADD_MEMBER_ADDRS).u64(4).str16("h:4").str16("c:4");
        assert_eq!(
            MetadataCommand::decode(&w.finish()).unwrap(),
            MetadataCommand::AddMember { id: 4, addrs: MemberAddrs::pair("h:4", "c:4") }
        );
        // Kinds 5 and 7, written before client addresses: the one address serves both.
        let mut w = Writer::new();
        w.u16(cmd::MAGIC).u8(cmd::VERSION).u8(cmd::KIND_ADD_MEMBER).u64(4).str16("h:4");
        assert_eq!(
            MetadataCommand::decode(&w.finish()).unwrap(),
            MetadataCommand::AddMember { id: 4, addrs: MemberAddrs::one("h:4") }
        );
        let mut w = Writer::new();
        w.u16(cmd::MAGIC).u8(cmd::VERSION).u8(cmd::KIND_BOOTSTRAP).u16(2).u64(1).str16("a:1").u64(2).str16("b:2");
        assert_eq!(
            MetadataCommand::decode(&w.finish()).unwrap(),
            MetadataCommand::Bootstrap {
                members: BTreeMap::from([(1, MemberAddrs::one("a:1")), (2, MemberAddrs::one("b:2"))])
            }
        );
        let bootstrap = MetadataCommand::Bootstrap { members: BTreeMap::from([(1, two.clone())]) };
        assert_eq!(bootstrap.encode()[3], cmd::KIND_BOOTSTRAP_KAFKA);
        assert_eq!(MetadataCommand::decode(&bootstrap.encode()).unwrap(), bootstrap);
        // The snapshot (version 5) keeps all three addresses.
        let snap = s.encode();
        assert_eq!(u16::from_le_bytes([snap[4], snap[5]]), snap::VERSION);
        assert_eq!(MetadataState::decode(&snap).unwrap().members()[&2], moved);
    }

    #[test]
    fn a_snapshot_from_before_client_addresses_still_reads() {
        let mut s = three_members();
        create(&mut s, "t", 2, 2);
        assert_eq!(
            s.apply(&MetadataCommand::CreateUser { name: "alice".into(), token_hash: [7; 32] }),
            MetadataReply::Ok
        );
        // Version 2: one address per member, then topics, offsets, users and rules.
        let mut w = old_snapshot_head(&s, snap::VERSION_2);
        // Version-2 users: `[name][token hash]`, no credential kind byte; then the rules (none).
        w.u32(1).str16("alice");
        access::write_hash(&mut w, &[7; 32]);
        w.u32(0);
        w.crc();
        let old = MetadataState::decode(&w.finish()).unwrap();
        assert_eq!(old, s);
        assert_eq!(old.members()[&1], MemberAddrs::one("127.0.0.1:7001"), "the one address serves clients too");
    }

    #[test]
    fn a_snapshot_from_before_users_and_acls_still_reads() {
        let mut s = three_members();
        create(&mut s, "t", 2, 2);
        // Version 1: the same layout without the users and rules after the offsets.
        let mut w = old_snapshot_head(&s, snap::VERSION_BEFORE_ACCESS);
        w.crc();
        let old = MetadataState::decode(&w.finish()).unwrap();
        assert_eq!(old, s);
    }

    #[test]
    fn damaged_bytes_are_errors() {
        let mut s = three_members();
        create(&mut s, "t", 2, 2);
        let snap = s.encode();
        for cut in [0, 3, snap.len() / 2, snap.len() - 1] {
            assert!(MetadataState::decode(&snap[..cut]).is_err());
        }
        let mut flipped = snap.clone();
        flipped[10] ^= 0x40;
        assert!(MetadataState::decode(&flipped).is_err());
        let c = MetadataCommand::CreateTopic(spec("x", 1, 1)).encode();
        for cut in 0..c.len() {
            assert!(MetadataCommand::decode(&c[..cut]).is_err());
        }
        let mut bad_kind = c.clone();
        bad_kind[3] = 77;
        assert!(MetadataCommand::decode(&bad_kind).is_err());
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        fn arb_command() -> impl Strategy<Value = MetadataCommand> {
            let name = "[a-c]{1,2}";
            prop_oneof![
                (name, 1u32..5, 1u32..4, proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>()))
                    .prop_map(|(n, p, rf, b, ms)| MetadataCommand::CreateTopic(TopicSpec {
                        name: n,
                        partitions: p,
                        replication_factor: rf,
                        retention: RetentionPolicy { retention_bytes: b, retention_ms: ms },
                        codec: CodecKind::Lz4,
                    })),
                (name, 1u32..5, 1u32..4, 0u32..4, 0u32..12).prop_map(|(n, p, rf, max_topics, max_partitions)| {
                    MetadataCommand::CreateTopicWithin {
                        spec: TopicSpec {
                            name: n,
                            partitions: p,
                            replication_factor: rf,
                            retention: RetentionPolicy::default(),
                            codec: CodecKind::None,
                        },
                        totals: TopicTotals { max_topics, max_partitions },
                    }
                }),
                (name, 1u32..5, 0u32..12, any::<bool>()).prop_map(|(n, p, max_replicas, budget)| {
                    MetadataCommand::CreateTopicBounded {
                        spec: TopicSpec {
                            name: n,
                            partitions: p,
                            replication_factor: 2,
                            retention: RetentionPolicy::default(),
                            codec: CodecKind::None,
                        },
                        totals: None,
                        per_node: crate::cluster::api::ReplicaLimit {
                            max_replicas,
                            limit: if budget {
                                crate::cluster::api::NodeLimit::LogCacheBudget
                            } else {
                                crate::cluster::api::NodeLimit::MaxPartitionsPerNode
                            },
                        },
                    }
                }),
                name.prop_map(|n| MetadataCommand::DeleteTopic { name: n }),
                (name, proptest::option::of(any::<u64>())).prop_map(|(n, b)| MetadataCommand::AlterTopic {
                    name: n,
                    update: TopicUpdate {
                        retention: b.map(|b| RetentionPolicy { retention_bytes: Some(b), retention_ms: None }),
                        codec: None,
                    },
                }),
                ("[gh]", name, 0u32..5, any::<u64>()).prop_map(|(g, t, p, o)| MetadataCommand::CommitOffset {
                    group: g,
                    topic: t,
                    partition: p,
                    offset: o,
                }),
                (1u64..6).prop_map(|id| MetadataCommand::AddMember { id, addrs: MemberAddrs::one(format!("h:{id}")) }),
                ("[gh]", "[ab]", name).prop_map(|(g, m, t)| join(&g, &m, &t)),
                ("[gh]", "[ab]", name, 0u32..5).prop_map(|(g, m, t, p)| MetadataCommand::AcknowledgeGroup {
                    group: g,
                    member_id: m,
                    owned: vec![(t, p)],
                }),
                ("[gh]", "[ab]").prop_map(|(g, m)| MetadataCommand::LeaveGroup { group: g, member_id: m }),
                ("[gh]", proptest::option::of(("[ab]", 0u64..4)), name, 0u32..5, any::<u64>()).prop_map(
                    |(g, fence, t, p, o)| MetadataCommand::CommitOffsets {
                        group: g,
                        fence: fence.map(|(m, e)| MemberFence { member_id: m, member_epoch: e }),
                        now_ms: o,
                        offsets: vec![(t, p, o)],
                    }
                ),
                "[gh]".prop_map(|g| MetadataCommand::DeleteGroup { group: g }),
                (1u64..6).prop_map(|id| MetadataCommand::RemoveMember { id }),
                proptest::collection::btree_map(1u64..6, ("[a-z]{1,4}:[0-9]{1,4}", "[a-z]{1,4}:[0-9]{1,4}"), 1..4)
                    .prop_map(|members| MetadataCommand::Bootstrap {
                        members: members
                            .into_iter()
                            .map(|(id, (internal, client))| (id, MemberAddrs::pair(internal, client)))
                            .collect()
                    }),
            ]
        }

        proptest! {
            /// Two replicas applying the same commands agree byte for byte; every state invariant
            /// holds after every command; encodings round-trip.
            #[test]
            fn replicas_agree_and_invariants_hold(commands in proptest::collection::vec(arb_command(), 1..60)) {
                let mut a = MetadataState::new();
                let mut b = MetadataState::new();
                for c in &commands {
                    prop_assert_eq!(&MetadataCommand::decode(&c.encode()).unwrap(), c);
                    let ra = a.apply(c);
                    let rb = b.apply(&MetadataCommand::decode(&c.encode()).unwrap());
                    prop_assert_eq!(&ra, &rb);
                    prop_assert_eq!(MetadataReply::decode(&ra.encode()).unwrap(), ra);
                    for t in a.topics().values() {
                        prop_assert!(t.id < a.next_topic_id());
                        for (i, p) in t.partitions.iter().enumerate() {
                            prop_assert_eq!(p.partition as usize, i);
                            prop_assert_eq!(p.group, partition_group_id(t.id, p.partition));
                            prop_assert!(!p.replicas.is_empty());
                            let distinct: std::collections::BTreeSet<_> = p.replicas.iter().collect();
                            prop_assert_eq!(distinct.len(), p.replicas.len());
                        }
                    }
                    for g in a.groups().values() {
                        prop_assert!(g.owners().values().all(|o| o.len() == 1), "a partition with two owners");
                    }
                    for (_, t, p) in a.offsets().keys() {
                        prop_assert!(a.topic(t).is_some_and(|t| (*p as usize) < t.partitions.len()));
                    }
                }
                prop_assert_eq!(a.encode(), b.encode());
                prop_assert_eq!(MetadataState::decode(&a.encode()).unwrap(), a);
            }

            #[test]
            fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = MetadataCommand::decode(&bytes);
                let _ = MetadataReply::decode(&bytes);
                let _ = MetadataState::decode(&bytes);
            }
        }
    }
}
