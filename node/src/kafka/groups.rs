//! Kafka's classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup; the
//! group leader assigns partitions in the client) beside Shale's coordinator.
//!
//! The coordinator of every group is the metadata leader (FindCoordinator names it; elsewhere the
//! group APIs answer NOT_COORDINATOR, and clients look it up again). A classic group's membership
//! (members, generation, the leader's assignment) lives in that node's memory, as in Kafka's
//! coordinator; its offsets are Shale's: OffsetCommit is one `CommitOffsets` metadata command
//! (replicated, all or none, fenced here by the member's generation), OffsetFetch reads them, and
//! gRPC's `shale group` commands see the same offsets. A coordinator change loses the membership:
//! members get UNKNOWN_MEMBER_ID or NOT_COORDINATOR, find the new coordinator and rejoin (their
//! committed offsets stay). A group has Kafka members or Shale (gRPC) members, not both at once:
//! a commit by a Kafka member of a group with Shale members answers NON_EMPTY_GROUP (docs/kafka.md
//! "Known differences").
//!
//! States (Kafka's names): Empty -> PreparingRebalance (a member joined, left, or expired: every
//! member must join again) -> CompletingRebalance (generation + 1, the leader got every member's
//! subscription and must SyncGroup the assignment) -> Stable (assignment handed out) -> ...

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A member that has not rejoined within this long after a rebalance started is dropped (when
/// it gave no rebalance timeout of its own: JoinGroup v0).
const DEFAULT_REBALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds on a member's session timeout (Kafka's `group.min/max.session.timeout.ms`).
pub const MIN_SESSION_TIMEOUT_MS: i32 = 1_000;
/// See [`MIN_SESSION_TIMEOUT_MS`].
pub const MAX_SESSION_TIMEOUT_MS: i32 = 300_000;
/// Longest rebalance timeout honoured (a member that never rejoins holds a rebalance this long).
const MAX_REBALANCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Most members one group holds.
pub const MAX_MEMBERS: usize = 1_000;

/// Kafka's group states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No members.
    Empty,
    /// Waiting for every member to join again, until `deadline`.
    PreparingRebalance {
        /// When members that have not joined are dropped.
        deadline: Instant,
    },
    /// The leader was given the members; waiting for its SyncGroup.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl Phase {
    /// Kafka's name of the state (DescribeGroups, ListGroups).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance { .. } => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// One member.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its client id.
    pub client_id: String,
    /// Its address.
    pub client_host: String,
    /// Dropped after this long without a request.
    pub session_timeout: Duration,
    /// How long a rebalance waits for it to join again.
    pub rebalance_timeout: Duration,
    /// Its protocols (assignor name, subscription metadata), in its order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// When it was last heard from.
    pub last_seen: Instant,
}

/// One classic group.
#[derive(Debug)]
pub struct Group {
    /// Its state.
    pub phase: Phase,
    /// Bumped by every completed join round.
    pub generation: i32,
    /// The protocol type the members speak (`consumer`).
    pub protocol_type: String,
    /// The protocol (assignor) chosen for this generation.
    pub protocol: Option<String>,
    /// The member that assigns.
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Members that joined in the current round.
    joined: BTreeSet<String>,
    /// The leader's assignment for this generation.
    assignments: HashMap<String, Bytes>,
    /// Woken at every change waiters look for.
    changed: Arc<Notify>,
}

impl Group {
    fn new(protocol_type: String) -> Self {
        Self {
            phase: Phase::Empty,
            generation: 0,
            protocol_type,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            joined: BTreeSet::new(),
            assignments: HashMap::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Starts a join round (unless one runs): every member must join again.
    fn prepare_rebalance(&mut self, now: Instant) {
        if matches!(self.phase, Phase::PreparingRebalance { .. }) {
            return;
        }
        let wait = self.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(DEFAULT_REBALANCE_TIMEOUT);
        self.phase = Phase::PreparingRebalance { deadline: now + wait };
        self.joined.clear();
        self.assignments.clear();
        self.changed.notify_waiters();
    }

    /// Ends the join round if every member joined, or (`force`) drops those that did not.
    fn try_complete_join(&mut self, force: bool) {
        if !matches!(self.phase, Phase::PreparingRebalance { .. }) {
            return;
        }
        if !force && !self.members.keys().all(|m| self.joined.contains(m)) {
            return;
        }
        self.members.retain(|id, _| self.joined.contains(id));
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol = None;
            self.generation += 1;
            self.changed.notify_waiters();
            return;
        }
        self.generation += 1;
        if !self.leader.as_ref().is_some_and(|l| self.members.contains_key(l)) {
            self.leader = self.joined.iter().next().cloned();
        }
        // The leader's most preferred protocol every member supports.
        let leader = &self.members[self.leader.as_ref().expect("a member leads")];
        self.protocol = leader
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| self.members.values().all(|m| m.protocols.iter().any(|(n, _)| n == *name)))
            .cloned();
        self.phase = Phase::CompletingRebalance;
        self.changed.notify_waiters();
    }

    /// Removes `id`; the others rebalance.
    fn remove(&mut self, id: &str, now: Instant) {
        if self.members.remove(id).is_none() {
            return;
        }
        self.joined.remove(id);
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            self.protocol = None;
            self.assignments.clear();
            self.changed.notify_waiters();
        } else {
            self.prepare_rebalance(now);
            self.try_complete_join(false);
        }
    }
}

/// A refusal of a group request, as a Kafka error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The member is not (or no longer) in the group: join again.
    UnknownMember,
    /// The request names another generation.
    IllegalGeneration,
    /// A rebalance runs: join again.
    RebalanceInProgress,
    /// The member's protocol type or protocols do not match the group's.
    InconsistentProtocol,
    /// Session timeout outside the allowed range.
    InvalidSessionTimeout,
    /// The group is full.
    GroupFull,
}

impl Refusal {
    /// The Kafka error code.
    pub fn code(self) -> i16 {
        use kafka_protocol::ResponseError as E;
        match self {
            Refusal::UnknownMember => E::UnknownMemberId,
            Refusal::IllegalGeneration => E::IllegalGeneration,
            Refusal::RebalanceInProgress => E::RebalanceInProgress,
            Refusal::InconsistentProtocol => E::InconsistentGroupProtocol,
            Refusal::InvalidSessionTimeout => E::InvalidSessionTimeout,
            Refusal::GroupFull => E::GroupMaxSizeReached,
        }
        .code()
    }
}

/// What a JoinGroup answers a member.
#[derive(Debug)]
pub struct Joined {
    /// The member's id (new for a first join).
    pub member_id: String,
    /// The new generation.
    pub generation: i32,
    /// The chosen protocol.
    pub protocol: Option<String>,
    /// The leader.
    pub leader: String,
    /// For the leader: every member with its subscription for the chosen protocol.
    pub members: Vec<(String, Bytes)>,
}

/// A join request.
#[derive(Debug)]
pub struct JoinSpec {
    /// Its member id (empty: a new member).
    pub member_id: String,
    /// The client id.
    pub client_id: String,
    /// The client address.
    pub client_host: String,
    /// The session timeout asked for.
    pub session_timeout_ms: i32,
    /// The rebalance timeout asked for (-1: none given).
    pub rebalance_timeout_ms: i32,
    /// The protocol type (`consumer`).
    pub protocol_type: String,
    /// The protocols, preferred first.
    pub protocols: Vec<(String, Bytes)>,
}

/// Every classic group this node coordinates.
#[derive(Debug, Default)]
pub struct ClassicGroups {
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

impl ClassicGroups {
    /// Joins (or rejoins) `group` and waits for the round to complete.
    pub async fn join(&self, group: &str, spec: JoinSpec) -> Result<Joined, Refusal> {
        if !(MIN_SESSION_TIMEOUT_MS..=MAX_SESSION_TIMEOUT_MS).contains(&spec.session_timeout_ms) {
            return Err(Refusal::InvalidSessionTimeout);
        }
        let now = Instant::now();
        let (member_id, changed) = {
            let mut groups = self.groups.lock();
            let g = groups.entry(group.to_string()).or_insert_with(|| Group::new(spec.protocol_type.clone()));
            if g.members.is_empty() {
                g.protocol_type = spec.protocol_type.clone();
            } else if g.protocol_type != spec.protocol_type
                || !spec
                    .protocols
                    .iter()
                    .any(|(n, _)| g.members.values().all(|m| m.protocols.iter().any(|(o, _)| o == n)))
            {
                return Err(Refusal::InconsistentProtocol);
            }
            let member_id = if spec.member_id.is_empty() {
                let n = self.next_member.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("{}-{n}", if spec.client_id.is_empty() { "member" } else { spec.client_id.as_str() })
            } else if g.members.contains_key(&spec.member_id) {
                spec.member_id.clone()
            } else {
                return Err(Refusal::UnknownMember);
            };
            if !g.members.contains_key(&member_id) && g.members.len() >= MAX_MEMBERS {
                return Err(Refusal::GroupFull);
            }
            let rebalance_timeout = u64::try_from(spec.rebalance_timeout_ms)
                .map_or(DEFAULT_REBALANCE_TIMEOUT, Duration::from_millis)
                .min(MAX_REBALANCE_TIMEOUT);
            let member = Member {
                client_id: spec.client_id,
                client_host: spec.client_host,
                session_timeout: Duration::from_millis(spec.session_timeout_ms as u64),
                rebalance_timeout,
                protocols: spec.protocols,
                last_seen: now,
            };
            // A stable member rejoining with the same subscription still starts a round (the
            // client asks for one: its subscription or metadata changed).
            g.members.insert(member_id.clone(), member);
            g.prepare_rebalance(now);
            g.joined.insert(member_id.clone());
            g.try_complete_join(false);
            (member_id, g.changed.clone())
        };
        loop {
            let notified = changed.notified();
            let wake = {
                let mut groups = self.groups.lock();
                let Some(g) = groups.get_mut(group) else { return Err(Refusal::UnknownMember) };
                if let Phase::PreparingRebalance { deadline } = g.phase
                    && Instant::now() >= deadline
                {
                    g.try_complete_join(true);
                }
                if !g.members.contains_key(&member_id) {
                    return Err(Refusal::UnknownMember);
                }
                // A round that started after this member's join completed but before it saw the
                // answer: the member is still joining, so it is part of the new round.
                if matches!(g.phase, Phase::PreparingRebalance { .. }) && g.joined.insert(member_id.clone()) {
                    g.try_complete_join(false);
                }
                if g.phase == Phase::CompletingRebalance || g.phase == Phase::Stable {
                    if let Some(m) = g.members.get_mut(&member_id) {
                        m.last_seen = Instant::now();
                    }
                    let leader = g.leader.clone().unwrap_or_default();
                    let protocol = g.protocol.clone();
                    let members = if leader == member_id {
                        g.members
                            .iter()
                            .map(|(id, m)| {
                                let meta = m
                                    .protocols
                                    .iter()
                                    .find(|(n, _)| Some(n) == protocol.as_ref())
                                    .map(|(_, meta)| meta.clone())
                                    .unwrap_or_default();
                                (id.clone(), meta)
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    return Ok(Joined { member_id, generation: g.generation, protocol, leader, members });
                }
                match g.phase {
                    Phase::PreparingRebalance { deadline } => deadline,
                    _ => Instant::now() + Duration::from_secs(1),
                }
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// The leader hands out the assignment (`assignments` non-empty only from the leader); every
    /// member waits for it and gets its own.
    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<(Option<String>, Bytes), Refusal> {
        let (changed, deadline) = {
            let mut groups = self.groups.lock();
            let g = groups.get_mut(group).ok_or(Refusal::UnknownMember)?;
            let m = g.members.get_mut(member_id).ok_or(Refusal::UnknownMember)?;
            m.last_seen = Instant::now();
            let deadline = Instant::now() + m.rebalance_timeout;
            if generation != g.generation {
                return Err(Refusal::IllegalGeneration);
            }
            if matches!(g.phase, Phase::PreparingRebalance { .. } | Phase::Empty) {
                return Err(Refusal::RebalanceInProgress);
            }
            if g.phase == Phase::CompletingRebalance && g.leader.as_deref() == Some(member_id) {
                g.assignments = assignments.into_iter().collect();
                g.phase = Phase::Stable;
                g.changed.notify_waiters();
            }
            (g.changed.clone(), deadline)
        };
        loop {
            let notified = changed.notified();
            {
                let groups = self.groups.lock();
                let g = groups.get(group).ok_or(Refusal::UnknownMember)?;
                if !g.members.contains_key(member_id) {
                    return Err(Refusal::UnknownMember);
                }
                if g.generation != generation || matches!(g.phase, Phase::PreparingRebalance { .. } | Phase::Empty) {
                    return Err(Refusal::RebalanceInProgress);
                }
                if g.phase == Phase::Stable {
                    return Ok((g.protocol.clone(), g.assignments.get(member_id).cloned().unwrap_or_default()));
                }
                if Instant::now() >= deadline {
                    return Err(Refusal::RebalanceInProgress);
                }
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// A member is alive; tells it to rejoin while a rebalance runs.
    pub fn heartbeat(&self, group: &str, member_id: &str, generation: i32) -> Result<(), Refusal> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(group).ok_or(Refusal::UnknownMember)?;
        let m = g.members.get_mut(member_id).ok_or(Refusal::UnknownMember)?;
        m.last_seen = Instant::now();
        if matches!(g.phase, Phase::PreparingRebalance { .. }) {
            return Err(Refusal::RebalanceInProgress);
        }
        if generation != g.generation {
            return Err(Refusal::IllegalGeneration);
        }
        Ok(())
    }

    /// Members leave; the others rebalance.
    pub fn leave(&self, group: &str, member_id: &str) -> Result<(), Refusal> {
        let mut groups = self.groups.lock();
        let g = groups.get_mut(group).ok_or(Refusal::UnknownMember)?;
        if !g.members.contains_key(member_id) {
            return Err(Refusal::UnknownMember);
        }
        g.remove(member_id, Instant::now());
        Ok(())
    }

    /// Whether `member_id` may commit at `generation` (Kafka's fencing of OffsetCommit): a member of
    /// the current generation, not while a rebalance runs. `generation` -1 with an empty member id
    /// is an admin commit (allowed while the group has no members).
    pub fn may_commit(&self, group: &str, member_id: &str, generation: i32) -> Result<(), Refusal> {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return if generation < 0 && member_id.is_empty() { Ok(()) } else { Err(Refusal::IllegalGeneration) };
        };
        if generation < 0 && member_id.is_empty() {
            return if g.members.is_empty() { Ok(()) } else { Err(Refusal::RebalanceInProgress) };
        }
        let m = g.members.get_mut(member_id).ok_or(Refusal::UnknownMember)?;
        m.last_seen = Instant::now();
        if generation != g.generation {
            return Err(Refusal::IllegalGeneration);
        }
        if matches!(g.phase, Phase::PreparingRebalance { .. }) {
            return Err(Refusal::RebalanceInProgress);
        }
        Ok(())
    }

    /// Drops members whose session expired and ends join rounds past their deadline; called
    /// periodically.
    pub fn expire(&self, now: Instant) {
        let mut groups = self.groups.lock();
        for g in groups.values_mut() {
            let in_round = matches!(g.phase, Phase::PreparingRebalance { .. });
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| !(in_round && g.joined.contains(*id)) && now >= m.last_seen + m.session_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                tracing::info!(member = %id, "kafka group member's session expired");
                g.remove(&id, now);
            }
            if let Phase::PreparingRebalance { deadline } = g.phase
                && now >= deadline
            {
                g.try_complete_join(true);
            }
        }
        groups.retain(|_, g| !g.members.is_empty());
    }

    /// A snapshot of a group: (state, protocol type, protocol, members as (id, client id, host,
    /// subscription, assignment)).
    pub fn describe(&self, group: &str) -> Option<Described> {
        let groups = self.groups.lock();
        let g = groups.get(group)?;
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == g.protocol.as_ref())
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                DescribedMember {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: meta,
                    assignment: g.assignments.get(id).cloned().unwrap_or_default(),
                }
            })
            .collect();
        Some(Described {
            state: g.phase.name(),
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone().unwrap_or_default(),
            members,
        })
    }

    /// Every group with members: (name, state, protocol type).
    pub fn list(&self) -> Vec<(String, &'static str, String)> {
        let groups = self.groups.lock();
        let mut out: Vec<_> =
            groups.iter().map(|(name, g)| (name.clone(), g.phase.name(), g.protocol_type.clone())).collect();
        out.sort();
        out
    }
}

/// A group as DescribeGroups shows it.
#[derive(Debug)]
pub struct Described {
    /// Kafka's state name.
    pub state: &'static str,
    /// The protocol type.
    pub protocol_type: String,
    /// The chosen protocol.
    pub protocol: String,
    /// The members.
    pub members: Vec<DescribedMember>,
}

/// One member as DescribeGroups shows it.
#[derive(Debug)]
pub struct DescribedMember {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Its subscription for the chosen protocol.
    pub metadata: Bytes,
    /// Its assignment.
    pub assignment: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(member_id: &str) -> JoinSpec {
        JoinSpec {
            member_id: member_id.into(),
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"sub"))],
        }
    }

    #[tokio::test]
    async fn two_members_join_the_leader_assigns_and_each_gets_its_share() {
        let groups = Arc::new(ClassicGroups::default());
        let first = groups.join("g", spec("")).await.unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(first.leader, first.member_id);
        // A second member starts a round; the first learns it from its heartbeat and rejoins.
        let g2 = groups.clone();
        let second = tokio::spawn(async move { g2.join("g", spec("")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(groups.heartbeat("g", &first.member_id, 1), Err(Refusal::RebalanceInProgress));
        let again = groups.join("g", spec(&first.member_id)).await.unwrap();
        let second = second.await.unwrap().unwrap();
        assert_eq!((again.generation, second.generation), (2, 2));
        assert_eq!(again.members.len(), 2, "the leader sees both subscriptions");
        assert!(second.members.is_empty());
        // The follower's sync waits for the leader's.
        let g2 = groups.clone();
        let follower = second.member_id.clone();
        let waiting = tokio::spawn(async move { g2.sync("g", &follower, 2, vec![]).await });
        let plan = vec![
            (again.member_id.clone(), Bytes::from_static(b"p0")),
            (second.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        assert_eq!(groups.sync("g", &again.member_id, 2, plan).await.unwrap().1, Bytes::from_static(b"p0"));
        assert_eq!(waiting.await.unwrap().unwrap().1, Bytes::from_static(b"p1"));
        assert_eq!(groups.heartbeat("g", &second.member_id, 2), Ok(()));
        assert_eq!(groups.may_commit("g", &second.member_id, 1), Err(Refusal::IllegalGeneration));
        assert_eq!(groups.may_commit("g", &second.member_id, 2), Ok(()));
        // One leaves: the other must rejoin.
        groups.leave("g", &second.member_id).unwrap();
        assert_eq!(groups.heartbeat("g", &again.member_id, 2), Err(Refusal::RebalanceInProgress));
        assert_eq!(groups.describe("g").unwrap().state, "PreparingRebalance");
    }

    #[tokio::test]
    async fn a_silent_member_expires_and_the_group_rebalances() {
        let groups = ClassicGroups::default();
        let mut s = spec("");
        s.session_timeout_ms = 1_000;
        let only = groups.join("g", s).await.unwrap();
        groups.expire(Instant::now() + Duration::from_millis(1_500));
        assert_eq!(groups.heartbeat("g", &only.member_id, 1), Err(Refusal::UnknownMember));
        assert_eq!(groups.may_commit("g", "", -1), Ok(()), "an empty group takes admin commits");
    }
}
