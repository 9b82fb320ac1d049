//! Consumer-group coordination, pure: members, their subscriptions, and the partitions each may
//! read (a server-side assignment in the model of Kafka's KIP-848 consumer protocol).
//!
//! The state lives in the metadata ([`crate::cluster::metadata::MetadataState`]) and changes only
//! by applied metadata commands, so every replica holds the same groups. The rules:
//!
//! - Every change to a group (a member joins, leaves or expires, acknowledges a revocation, a
//!   topic it subscribes to appears or goes) bumps the group's **epoch**. A member's own epoch is
//!   the group epoch at which its assignment last changed; the heartbeat answer carries it.
//! - The assignor computes each member's **target** partitions. A partition a member holds but is
//!   no longer its target is **revoking**: the member stops reading it, commits, and says so in its
//!   next heartbeat (or its session expires). Only then is the partition free, and only a free
//!   partition is **assigned** to its new target owner. So no partition ever has two owners:
//!   [`GroupState::owners`] is checked after every change in the tests.
//! - A member that leaves hands back every partition at once (it committed before leaving).
//!
//! Times never come from a clock here: the commands that need one carry the proposer's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::cluster::api::{ClusterError, TopicInfo};
use crate::cluster::layout::{Reader, Writer};

/// Bounds on what a group holds (checked at apply and when decoding).
pub mod limits {
    /// Most members in one group.
    pub const MAX_GROUP_MEMBERS: usize = 1_000;
    /// Most groups with coordinator state in the cluster.
    pub const MAX_GROUPS: usize = 100_000;
    /// Longest member id, in bytes.
    pub const MAX_MEMBER_ID_BYTES: usize = 64;
    /// Most subscriptions of one member.
    pub const MAX_SUBSCRIPTIONS: usize = 64;
    /// Longest client address recorded for a member, in bytes.
    pub const MAX_CLIENT_ADDR_BYTES: usize = 256;
    /// Longest session timeout any server allows, in ms.
    pub const MAX_SESSION_TIMEOUT_MS: u32 = 3_600_000;
    /// Most partitions one member may hold in a set (target, assigned, revoking).
    pub const MAX_MEMBER_PARTITIONS: usize = 1 << 20;
}

/// A partition of a topic, by name.
pub type TopicPartition = (String, u32);

/// What a member reads: one topic, or every topic whose name starts with a prefix (present and
/// future).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subscription {
    /// The topic of this name.
    Topic(String),
    /// Every topic whose name starts with this.
    Prefix(String),
}

impl Subscription {
    /// Whether the subscription covers `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Subscription::Topic(t) => t == topic,
            Subscription::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::Topic(t) => f.write_str(t),
            Subscription::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// How a group's partitions are spread over its members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Balance the number of partitions per member, keeping partitions where they are when that
    /// keeps the balance (few moves on a change).
    #[default]
    Uniform,
    /// Per topic, contiguous ranges of partitions to the members subscribed to it, in member-id
    /// order.
    Range,
}

impl Assignor {
    /// The name used by the API, the CLI and describe.
    pub fn as_str(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }

    /// Parses [`Assignor::as_str`]'s names (empty: the default).
    pub fn parse(s: &str) -> Result<Self, ClusterError> {
        match s {
            "" | "uniform" => Ok(Assignor::Uniform),
            "range" => Ok(Assignor::Range),
            other => Err(ClusterError::InvalidArgument {
                field: "assignor",
                reason: format!("{other:?} is not an assignor (uniform, range)"),
            }),
        }
    }

    fn code(self) -> u8 {
        match self {
            Assignor::Uniform => 1,
            Assignor::Range => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Assignor::Uniform),
            2 => Some(Assignor::Range),
            _ => None,
        }
    }
}

/// What a member asks for when it joins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSpec {
    /// Its id (chosen by the node that proposes the join; unique).
    pub member_id: String,
    /// Where its client connects from (for describe).
    pub client_addr: String,
    /// What it reads.
    pub subscriptions: Vec<Subscription>,
    /// After how long without a heartbeat it is removed, in ms (within the server's bounds, which
    /// the proposing node checked).
    pub session_timeout_ms: u32,
    /// The assignor it asks for; decides only when the group has no members.
    pub assignor: Assignor,
}

/// A commit's proof of ownership: the member and the epoch it was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberFence {
    /// Member id.
    pub member_id: String,
    /// The member epoch of its last heartbeat answer.
    pub member_epoch: u64,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Where its client connects from.
    pub client_addr: String,
    /// What it reads.
    pub subscriptions: Vec<Subscription>,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
    /// The group epoch at which its assignment last changed.
    pub epoch: u64,
    /// What the assignor wants it to hold.
    pub target: BTreeSet<TopicPartition>,
    /// What it holds and may read.
    pub assigned: BTreeSet<TopicPartition>,
    /// What it holds but must give up (stop reading, commit, acknowledge).
    pub revoking: BTreeSet<TopicPartition>,
}

impl GroupMember {
    /// Whether it holds `p` (assigned or revoking).
    pub fn holds(&self, p: &TopicPartition) -> bool {
        self.assigned.contains(p) || self.revoking.contains(p)
    }
}

/// Where a group is in its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupPhase {
    /// No members (offsets may remain).
    Empty,
    /// Some member holds a partition it must give up, or waits for one to be freed.
    Reconciling,
    /// Every member holds exactly its target.
    Stable,
}

impl GroupPhase {
    /// The name describe shows.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPhase::Empty => "empty",
            GroupPhase::Reconciling => "reconciling",
            GroupPhase::Stable => "stable",
        }
    }
}

/// Why a group command changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRejection {
    /// The group has no member of that id (it left, or its session expired).
    UnknownMember {
        /// Member id.
        member_id: String,
    },
    /// A commit for a partition the member does not hold, or with an epoch it was never given.
    Fenced {
        /// Member id.
        member_id: String,
        /// What is wrong.
        reason: String,
    },
    /// The operation needs a group without members.
    NotEmpty {
        /// How many members it has.
        members: u32,
    },
    /// No group of that name.
    UnknownGroup,
    /// A field out of range.
    Invalid(String),
}

/// One consumer group's coordinator state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Bumped on every change.
    pub epoch: u64,
    /// How partitions are spread.
    pub assignor: Assignor,
    /// Members by id.
    pub members: BTreeMap<String, GroupMember>,
    /// Wall-clock ms (the proposer's) of the last offset commit, if any since coordination began.
    pub committed_at_ms: Option<u64>,
}

impl GroupState {
    /// The group's phase.
    pub fn phase(&self) -> GroupPhase {
        if self.members.is_empty() {
            GroupPhase::Empty
        } else if self.members.values().all(|m| m.revoking.is_empty() && m.assigned == m.target) {
            GroupPhase::Stable
        } else {
            GroupPhase::Reconciling
        }
    }

    /// Every held partition and the members holding it (never more than one: the invariant).
    pub fn owners(&self) -> BTreeMap<TopicPartition, Vec<String>> {
        let mut owners: BTreeMap<TopicPartition, Vec<String>> = BTreeMap::new();
        for (id, m) in &self.members {
            for p in m.assigned.iter().chain(&m.revoking) {
                owners.entry(p.clone()).or_default().push(id.clone());
            }
        }
        owners
    }

    /// Adds a member (or updates a known one's subscriptions, address and session) and
    /// rebalances.
    pub fn join(&mut self, spec: &MemberSpec, topics: &BTreeMap<String, TopicInfo>) -> Result<(), GroupRejection> {
        validate_spec(spec)?;
        if self.members.is_empty() {
            self.assignor = spec.assignor;
        }
        let before = self.members.clone();
        match self.members.get_mut(&spec.member_id) {
            Some(m) => {
                m.client_addr = spec.client_addr.clone();
                m.subscriptions = spec.subscriptions.clone();
                m.session_timeout_ms = spec.session_timeout_ms;
            }
            None => {
                if self.members.len() >= limits::MAX_GROUP_MEMBERS {
                    return Err(GroupRejection::Invalid(format!(
                        "the group holds the maximum of {} members",
                        limits::MAX_GROUP_MEMBERS
                    )));
                }
                self.members.insert(
                    spec.member_id.clone(),
                    GroupMember {
                        client_addr: spec.client_addr.clone(),
                        subscriptions: spec.subscriptions.clone(),
                        session_timeout_ms: spec.session_timeout_ms,
                        epoch: 0,
                        target: BTreeSet::new(),
                        assigned: BTreeSet::new(),
                        revoking: BTreeSet::new(),
                    },
                );
            }
        }
        self.rebalance(topics);
        self.settle(&before, true);
        Ok(())
    }

    /// A heartbeat's report of what the member still holds: every revoking partition it no longer
    /// holds is free, and given to its new owner.
    pub fn acknowledge(&mut self, member_id: &str, owned: &BTreeSet<TopicPartition>) -> Result<(), GroupRejection> {
        let before = self.members.clone();
        let m = self
            .members
            .get_mut(member_id)
            .ok_or_else(|| GroupRejection::UnknownMember { member_id: member_id.to_string() })?;
        m.revoking.retain(|p| owned.contains(p));
        self.fill();
        self.settle(&before, false);
        Ok(())
    }

    /// Removes a member (it left, or its session expired): its partitions are free at once.
    pub fn remove(&mut self, member_id: &str, topics: &BTreeMap<String, TopicInfo>) -> Result<(), GroupRejection> {
        let before = self.members.clone();
        if self.members.remove(member_id).is_none() {
            return Err(GroupRejection::UnknownMember { member_id: member_id.to_string() });
        }
        self.rebalance(topics);
        self.settle(&before, true);
        Ok(())
    }

    /// Recomputes the targets after the topics changed (created, deleted); partitions of deleted
    /// topics are dropped from every set.
    pub fn topics_changed(&mut self, topics: &BTreeMap<String, TopicInfo>) {
        if self.members.is_empty() {
            return;
        }
        let before = self.members.clone();
        self.rebalance(topics);
        self.settle(&before, false);
    }

    /// Checks that `fence` may commit `partitions` (all of them, or the commit is refused whole).
    pub fn check_commit<'a>(
        &self,
        fence: &MemberFence,
        mut partitions: impl Iterator<Item = (&'a str, u32)>,
    ) -> Result<(), GroupRejection> {
        let m = self
            .members
            .get(&fence.member_id)
            .ok_or_else(|| GroupRejection::UnknownMember { member_id: fence.member_id.clone() })?;
        if fence.member_epoch > m.epoch {
            return Err(GroupRejection::Fenced {
                member_id: fence.member_id.clone(),
                reason: format!("member epoch {} is newer than its current epoch {}", fence.member_epoch, m.epoch),
            });
        }
        if let Some((topic, partition)) = partitions.find(|(t, p)| !m.holds(&((*t).to_string(), *p))) {
            return Err(GroupRejection::Fenced {
                member_id: fence.member_id.clone(),
                reason: format!("it does not own {topic}/{partition}"),
            });
        }
        Ok(())
    }

    /// New targets from the assignor; what a member holds beyond its target starts revoking;
    /// free partitions go to their targets.
    fn rebalance(&mut self, topics: &BTreeMap<String, TopicInfo>) {
        let exists = |p: &TopicPartition| topics.get(&p.0).is_some_and(|t| (p.1 as usize) < t.partitions.len());
        for m in self.members.values_mut() {
            m.assigned.retain(exists);
            m.revoking.retain(exists);
        }
        let targets = match self.assignor {
            Assignor::Uniform => uniform(&self.members, topics),
            Assignor::Range => range(&self.members, topics),
        };
        for (id, m) in &mut self.members {
            m.target = targets.get(id).cloned().unwrap_or_default();
            let gone: Vec<TopicPartition> = m.assigned.difference(&m.target).cloned().collect();
            for p in gone {
                m.assigned.remove(&p);
                m.revoking.insert(p);
            }
        }
        self.fill();
    }

    /// Gives every free partition (held by no member) to the member whose target it is.
    fn fill(&mut self) {
        let mut held: BTreeSet<TopicPartition> =
            self.members.values().flat_map(|m| m.assigned.iter().chain(&m.revoking).cloned()).collect();
        for m in self.members.values_mut() {
            for p in &m.target {
                if !held.contains(p) {
                    held.insert(p.clone());
                    m.assigned.insert(p.clone());
                }
            }
        }
    }

    /// Bumps the group epoch if anything changed (always when `membership` changed), and moves
    /// each member whose holdings changed (or who is new) to the new epoch.
    fn settle(&mut self, before: &BTreeMap<String, GroupMember>, membership: bool) {
        if !membership && &self.members == before {
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        for (id, m) in &mut self.members {
            let changed = before.get(id).is_none_or(|b| b.assigned != m.assigned || b.revoking != m.revoking);
            if changed {
                m.epoch = epoch;
            }
        }
    }

    /// Writes the group (the metadata snapshot's groups section; layout in docs/format.md).
    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.epoch).u8(self.assignor.code());
        match self.committed_at_ms {
            Some(t) => w.u8(1).u64(t),
            None => w.u8(0).u64(0),
        };
        w.u32(self.members.len() as u32);
        for (id, m) in &self.members {
            w.str16(id).str16(&m.client_addr).u32(m.session_timeout_ms).u64(m.epoch);
            write_subscriptions(w, &m.subscriptions);
            for set in [&m.target, &m.assigned, &m.revoking] {
                write_partitions(w, set.iter());
            }
        }
    }

    /// Reads what [`GroupState::encode`] wrote.
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, ClusterError> {
        let epoch = r.u64()?;
        let code = r.u8()?;
        let assignor = Assignor::from_code(code).ok_or_else(|| r.error(format!("unknown assignor {code}")))?;
        let committed_at_ms = match (r.u8()?, r.u64()?) {
            (0, _) => None,
            (1, t) => Some(t),
            (other, _) => return Err(r.error(format!("presence byte {other}"))),
        };
        let raw = u64::from(r.u32()?);
        let n = r.count(raw, limits::MAX_GROUP_MEMBERS, 24)?;
        let mut members = BTreeMap::new();
        for _ in 0..n {
            let id = r.str16(limits::MAX_MEMBER_ID_BYTES)?;
            let client_addr = r.str16(limits::MAX_CLIENT_ADDR_BYTES)?;
            let session_timeout_ms = r.u32()?;
            let epoch = r.u64()?;
            let subscriptions = read_subscriptions(r)?;
            let target = read_partitions(r)?.into_iter().collect();
            let assigned = read_partitions(r)?.into_iter().collect();
            let revoking = read_partitions(r)?.into_iter().collect();
            members.insert(
                id,
                GroupMember { client_addr, subscriptions, session_timeout_ms, epoch, target, assigned, revoking },
            );
        }
        Ok(GroupState { epoch, assignor, members, committed_at_ms })
    }
}

/// Checks a join's fields (the node checked them too; a hand-made command is refused here).
fn validate_spec(spec: &MemberSpec) -> Result<(), GroupRejection> {
    if spec.member_id.is_empty() || spec.member_id.len() > limits::MAX_MEMBER_ID_BYTES {
        return Err(GroupRejection::Invalid(format!("member id of {} bytes", spec.member_id.len())));
    }
    if spec.subscriptions.is_empty() || spec.subscriptions.len() > limits::MAX_SUBSCRIPTIONS {
        return Err(GroupRejection::Invalid(format!(
            "{} subscriptions (1..={})",
            spec.subscriptions.len(),
            limits::MAX_SUBSCRIPTIONS
        )));
    }
    if spec.session_timeout_ms == 0 || spec.session_timeout_ms > limits::MAX_SESSION_TIMEOUT_MS {
        return Err(GroupRejection::Invalid(format!("session timeout of {} ms", spec.session_timeout_ms)));
    }
    Ok(())
}

/// Every partition of every topic a member subscribes to, in (topic, partition) order.
fn subscribed(m: &GroupMember, topics: &BTreeMap<String, TopicInfo>) -> BTreeSet<TopicPartition> {
    topics
        .values()
        .filter(|t| m.subscriptions.iter().any(|s| s.matches(&t.name)))
        .flat_map(|t| (0..t.partitions.len() as u32).map(|p| (t.name.clone(), p)))
        .collect()
}

/// The uniform assignor: each member gets `floor` or `floor + 1` of the subscribed partitions
/// (`n % members` of them get one more), first keeping what it targeted before (so a change moves
/// few partitions), then the rest to the eligible member with the fewest (lowest id on ties).
/// With unequal subscriptions a member only ever gets what it subscribes to.
fn uniform(
    members: &BTreeMap<String, GroupMember>,
    topics: &BTreeMap<String, TopicInfo>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let eligible: BTreeMap<&String, BTreeSet<TopicPartition>> =
        members.iter().map(|(id, m)| (id, subscribed(m, topics))).collect();
    let all: BTreeSet<TopicPartition> = eligible.values().flatten().cloned().collect();
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> =
        members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    if members.is_empty() || all.is_empty() {
        return out;
    }
    let floor = all.len() / members.len();
    let mut extra = all.len() % members.len();
    let mut taken: BTreeSet<TopicPartition> = BTreeSet::new();
    // Keep up to `floor` of the previous target, then one more where an extra slot is left.
    let mut leftovers: Vec<(&String, Vec<TopicPartition>)> = Vec::new();
    for (id, m) in members {
        let keep: Vec<TopicPartition> = m.target.iter().filter(|p| eligible[id].contains(*p)).cloned().collect();
        let set = out.get_mut(id).expect("every member has a slot");
        let mut rest = Vec::new();
        for p in keep {
            if set.len() < floor {
                taken.insert(p.clone());
                set.insert(p);
            } else {
                rest.push(p);
            }
        }
        leftovers.push((id, rest));
    }
    for (id, rest) in leftovers {
        if extra == 0 {
            break;
        }
        if let Some(p) = rest.into_iter().find(|p| !taken.contains(p)) {
            let set = out.get_mut(id).expect("every member has a slot");
            if set.len() == floor {
                taken.insert(p.clone());
                set.insert(p);
                extra -= 1;
            }
        }
    }
    for p in all {
        if taken.contains(&p) {
            continue;
        }
        let pick = out
            .iter()
            .filter(|(id, _)| eligible[*id].contains(&p))
            .min_by_key(|(id, set)| (set.len(), (*id).clone()))
            .map(|(id, _)| id.clone());
        if let Some(id) = pick {
            out.get_mut(&id).expect("picked from the slots").insert(p);
        }
    }
    out
}

/// The range assignor: per topic, the members subscribed to it (in id order) each get a
/// contiguous range; the first `count % members` get one more.
fn range(
    members: &BTreeMap<String, GroupMember>,
    topics: &BTreeMap<String, TopicInfo>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut out: BTreeMap<String, BTreeSet<TopicPartition>> =
        members.keys().map(|id| (id.clone(), BTreeSet::new())).collect();
    for t in topics.values() {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.subscriptions.iter().any(|s| s.matches(&t.name)))
            .map(|(id, _)| id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let count = t.partitions.len();
        let (per, extra) = (count / subscribers.len(), count % subscribers.len());
        let mut next = 0;
        for (i, id) in subscribers.into_iter().enumerate() {
            let take = per + usize::from(i < extra);
            let set = out.get_mut(id).expect("every member has a slot");
            for p in next..next + take {
                set.insert((t.name.clone(), p as u32));
            }
            next += take;
        }
    }
    out
}

/// `[count:u16]` then per subscription `[kind:u8 (1 topic, 2 prefix)][name:str16]`.
pub fn write_subscriptions(w: &mut Writer, subs: &[Subscription]) {
    w.u16(subs.len() as u16);
    for s in subs {
        match s {
            Subscription::Topic(t) => w.u8(1).str16(t),
            Subscription::Prefix(p) => w.u8(2).str16(p),
        };
    }
}

/// Reads what [`write_subscriptions`] wrote.
pub fn read_subscriptions(r: &mut Reader<'_>) -> Result<Vec<Subscription>, ClusterError> {
    let raw = u64::from(r.u16()?);
    let n = r.count(raw, limits::MAX_SUBSCRIPTIONS, 3)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let name = r.str16(crate::cluster::api::limits::MAX_TOPIC_NAME_BYTES)?;
        out.push(match kind {
            1 => Subscription::Topic(name),
            2 => Subscription::Prefix(name),
            other => return Err(r.error(format!("unknown subscription kind {other}"))),
        });
    }
    Ok(out)
}

/// `[count:u32]` then per partition `[topic:str16][partition:u32]`.
pub fn write_partitions<'a>(w: &mut Writer, parts: impl ExactSizeIterator<Item = &'a TopicPartition>) {
    w.u32(parts.len() as u32);
    for (t, p) in parts {
        w.str16(t).u32(*p);
    }
}

/// Reads what [`write_partitions`] wrote.
pub fn read_partitions(r: &mut Reader<'_>) -> Result<Vec<TopicPartition>, ClusterError> {
    let raw = u64::from(r.u32()?);
    let n = r.count(raw, limits::MAX_MEMBER_PARTITIONS, 6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.str16(crate::cluster::api::limits::MAX_TOPIC_NAME_BYTES)?;
        out.push((topic, r.u32()?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use shale_storage::CodecKind;

    use super::*;
    use crate::cluster::api::{PartitionAssignment, RetentionPolicy, partition_group_id};

    fn topics(spec: &[(&str, u32)]) -> BTreeMap<String, TopicInfo> {
        spec.iter()
            .enumerate()
            .map(|(i, (name, n))| {
                let id = i as u32 + 1;
                let partitions = (0..*n)
                    .map(|p| PartitionAssignment {
                        partition: p,
                        group: partition_group_id(id, p),
                        replicas: vec![1],
                        replica_epoch: 0,
                    })
                    .collect();
                let info = TopicInfo {
                    name: name.to_string(),
                    id,
                    replication_factor: 1,
                    retention: RetentionPolicy::default(),
                    codec: CodecKind::None,
                    partitions,
                };
                (name.to_string(), info)
            })
            .collect()
    }

    fn spec(id: &str, subs: &[Subscription]) -> MemberSpec {
        MemberSpec {
            member_id: id.into(),
            client_addr: "127.0.0.1:1".into(),
            subscriptions: subs.to_vec(),
            session_timeout_ms: 10_000,
            assignor: Assignor::Uniform,
        }
    }

    fn topic(t: &str) -> Subscription {
        Subscription::Topic(t.into())
    }

    /// No partition has two owners, and no member holds what it does not subscribe to.
    fn check(g: &GroupState, topics: &BTreeMap<String, TopicInfo>) {
        for (p, owners) in g.owners() {
            assert_eq!(owners.len(), 1, "{p:?} owned by {owners:?}");
        }
        for m in g.members.values() {
            let subscribed = subscribed(m, topics);
            assert!(m.target.is_subset(&subscribed));
            assert!(m.assigned.is_subset(&m.target), "assigned beyond target");
            assert!(m.assigned.is_disjoint(&m.revoking));
        }
    }

    /// Every member acknowledges every revocation (as clients do in their next heartbeat).
    fn ack_all(g: &mut GroupState, topics: &BTreeMap<String, TopicInfo>) {
        for _ in 0..4 {
            let ids: Vec<String> = g.members.keys().cloned().collect();
            for id in ids {
                let owned = g.members[&id].assigned.clone();
                g.acknowledge(&id, &owned).unwrap();
                check(g, topics);
            }
        }
    }

    #[test]
    fn three_members_share_six_partitions_evenly_and_a_new_member_waits_for_revocations() {
        let t = topics(&[("orders", 6)]);
        let mut g = GroupState::default();
        g.join(&spec("a", &[topic("orders")]), &t).unwrap();
        assert_eq!(g.members["a"].assigned.len(), 6);
        assert_eq!(g.epoch, 1);
        g.join(&spec("b", &[topic("orders")]), &t).unwrap();
        check(&g, &t);
        // b's target is half, but a still holds it: nothing is given to b yet.
        assert_eq!(g.members["b"].target.len(), 3);
        assert!(g.members["b"].assigned.is_empty());
        assert_eq!(g.members["a"].revoking.len(), 3);
        assert_eq!(g.phase(), GroupPhase::Reconciling);
        let epoch_before = g.epoch;
        ack_all(&mut g, &t);
        assert!(g.epoch > epoch_before);
        assert_eq!(g.members["b"].assigned.len(), 3);
        g.join(&spec("c", &[topic("orders")]), &t).unwrap();
        check(&g, &t);
        ack_all(&mut g, &t);
        assert_eq!(g.phase(), GroupPhase::Stable);
        for m in g.members.values() {
            assert_eq!(m.assigned.len(), 2);
        }
        assert_eq!(g.owners().len(), 6);
    }

    #[test]
    fn a_leaving_member_hands_back_at_once_and_commits_are_fenced() {
        let t = topics(&[("orders", 4)]);
        let mut g = GroupState::default();
        g.join(&spec("a", &[topic("orders")]), &t).unwrap();
        g.join(&spec("b", &[topic("orders")]), &t).unwrap();
        ack_all(&mut g, &t);
        let a_parts: Vec<TopicPartition> = g.members["a"].assigned.iter().cloned().collect();
        let fence_a = MemberFence { member_id: "a".into(), member_epoch: g.members["a"].epoch };
        assert!(g.check_commit(&fence_a, a_parts.iter().map(|(t, p)| (t.as_str(), *p))).is_ok());
        let b_part = g.members["b"].assigned.iter().next().cloned().unwrap();
        assert!(matches!(
            g.check_commit(&fence_a, std::iter::once((b_part.0.as_str(), b_part.1))),
            Err(GroupRejection::Fenced { .. })
        ));
        let future = MemberFence { member_id: "a".into(), member_epoch: g.members["a"].epoch + 1 };
        assert!(matches!(g.check_commit(&future, std::iter::empty()), Err(GroupRejection::Fenced { .. })));
        g.remove("a", &t).unwrap();
        check(&g, &t);
        assert_eq!(g.members["b"].assigned.len(), 4, "a's partitions went to b without waiting");
        assert!(matches!(
            g.check_commit(&fence_a, a_parts.iter().map(|(t, p)| (t.as_str(), *p))),
            Err(GroupRejection::UnknownMember { .. })
        ));
        assert!(matches!(g.remove("a", &t), Err(GroupRejection::UnknownMember { .. })));
    }

    #[test]
    fn prefix_subscriptions_pick_up_new_topics_and_deleted_topics_drop_out() {
        let mut t = topics(&[("logs.a", 2)]);
        let mut g = GroupState::default();
        g.join(&spec("a", &[Subscription::Prefix("logs.".into())]), &t).unwrap();
        g.join(&spec("b", &[Subscription::Prefix("logs.".into())]), &t).unwrap();
        ack_all(&mut g, &t);
        assert_eq!(g.owners().len(), 2);
        t = topics(&[("logs.a", 2), ("logs.b", 2), ("other", 3)]);
        g.topics_changed(&t);
        check(&g, &t);
        ack_all(&mut g, &t);
        assert_eq!(g.owners().len(), 4, "logs.b is assigned, other is not");
        assert!(g.owners().keys().all(|(topic, _)| topic.starts_with("logs.")));
        t.remove("logs.a");
        g.topics_changed(&t);
        check(&g, &t);
        ack_all(&mut g, &t);
        assert_eq!(g.owners().len(), 2);
    }

    #[test]
    fn the_range_assignor_gives_contiguous_ranges_and_is_chosen_by_the_first_member() {
        let t = topics(&[("x", 5)]);
        let mut g = GroupState::default();
        let mut first = spec("a", &[topic("x")]);
        first.assignor = Assignor::Range;
        g.join(&first, &t).unwrap();
        g.join(&spec("b", &[topic("x")]), &t).unwrap();
        ack_all(&mut g, &t);
        assert_eq!(g.assignor, Assignor::Range);
        let parts = |id: &str| g.members[id].assigned.iter().map(|(_, p)| *p).collect::<Vec<_>>();
        assert_eq!(parts("a"), vec![0, 1, 2]);
        assert_eq!(parts("b"), vec![3, 4]);
    }

    #[test]
    fn uniform_keeps_partitions_in_place_when_a_member_joins() {
        let t = topics(&[("x", 6)]);
        let mut g = GroupState::default();
        g.join(&spec("a", &[topic("x")]), &t).unwrap();
        g.join(&spec("b", &[topic("x")]), &t).unwrap();
        ack_all(&mut g, &t);
        let a_before = g.members["a"].assigned.clone();
        let b_before = g.members["b"].assigned.clone();
        g.join(&spec("c", &[topic("x")]), &t).unwrap();
        ack_all(&mut g, &t);
        assert!(g.members["a"].assigned.is_subset(&a_before), "a only lost partitions");
        assert!(g.members["b"].assigned.is_subset(&b_before), "b only lost partitions");
    }

    #[test]
    fn the_group_state_round_trips() {
        let t = topics(&[("x", 3), ("y", 2)]);
        let mut g = GroupState { committed_at_ms: Some(77), ..GroupState::default() };
        g.join(&spec("a", &[topic("x"), Subscription::Prefix("y".into())]), &t).unwrap();
        g.join(&spec("b", &[topic("x")]), &t).unwrap();
        let mut w = Writer::new();
        g.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::new("group", &bytes);
        assert_eq!(GroupState::decode(&mut r).unwrap(), g);
        r.finish().unwrap();
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Step {
            Join(u8, bool),
            Leave(u8),
            Ack(u8),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0u8..5, any::<bool>()).prop_map(|(m, prefix)| Step::Join(m, prefix)),
                (0u8..5).prop_map(Step::Leave),
                (0u8..5).prop_map(Step::Ack),
            ]
        }

        proptest! {
            /// Whatever members do, no partition ever has two owners, and once everyone has
            /// acknowledged, the group is stable and holds every subscribed partition.
            #[test]
            fn no_partition_ever_has_two_owners(steps in proptest::collection::vec(step(), 1..40)) {
                let t = topics(&[("a", 3), ("ab", 4)]);
                let mut g = GroupState::default();
                for s in steps {
                    match s {
                        Step::Join(m, prefix) => {
                            let sub = if prefix { Subscription::Prefix("a".into()) } else { topic("a") };
                            g.join(&spec(&format!("m{m}"), &[sub]), &t).unwrap();
                        }
                        Step::Leave(m) => { let _ = g.remove(&format!("m{m}"), &t); }
                        Step::Ack(m) => {
                            let id = format!("m{m}");
                            if let Some(owned) = g.members.get(&id).map(|m| m.assigned.clone()) {
                                g.acknowledge(&id, &owned).unwrap();
                            }
                        }
                    }
                    check(&g, &t);
                }
                ack_all(&mut g, &t);
                if !g.members.is_empty() {
                    prop_assert_eq!(g.phase(), GroupPhase::Stable);
                    let all: BTreeSet<TopicPartition> =
                        g.members.values().flat_map(|m| subscribed(m, &t)).collect();
                    prop_assert_eq!(g.owners().len(), all.len());
                }
            }
        }
    }
}
