//! The group consumer: a member of a consumer group whose partitions the cluster assigns.
//!
//! [`Consumer::join`] joins the group with subscriptions (topic names or prefixes). A background
//! task heartbeats the coordinator (the metadata leader) at the interval it asks for, sending the
//! partitions the member holds; each answer carries the member's assignment: what it may read, and
//! what it must give up. [`GroupConsumer::poll`] acts on it before reading: a partition to give up
//! is committed (its position, past every record `poll` returned) and dropped, then the next
//! heartbeat tells the coordinator, which only then gives it to its new owner; a new partition
//! starts at the group's committed offset. So a partition is read by one member at a time, and
//! after a clean hand-over the next member continues exactly where the last one stopped. A member
//! that stops heartbeating loses its partitions after its session timeout; its successor resumes
//! from the last commit (records after it are delivered again: at least once).
//!
//! Commits carry the member id and epoch: a member whose partitions moved (a zombie) is refused
//! with [`ErrorCode::FencedMember`] or [`ErrorCode::UnknownMemberId`], and its positions are
//! dropped ([`GroupEvent::Lost`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::client::{Client, Route};
use crate::consumer::Consumer;
use crate::error::{ClientError, ErrorCode};
use crate::proto;
use crate::records::ConsumedRecord;

/// A partition, by topic name and number.
pub type TopicPartition = (String, u32);

/// What a member reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// One topic.
    Topic(String),
    /// Every topic whose name starts with this (present and future).
    Prefix(String),
}

impl Subscription {
    fn to_proto(&self) -> proto::GroupSubscription {
        let kind = match self {
            Subscription::Topic(t) => proto::group_subscription::Kind::Topic(t.clone()),
            Subscription::Prefix(p) => proto::group_subscription::Kind::Prefix(p.clone()),
        };
        proto::GroupSubscription { kind: Some(kind) }
    }
}

impl From<&str> for Subscription {
    /// `name` subscribes to that topic; `prefix*` to every topic starting with `prefix`.
    fn from(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => Subscription::Prefix(prefix.to_string()),
            None => Subscription::Topic(s.to_string()),
        }
    }
}

/// How a group member behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Session timeout asked for, ms (`None`: the server's default; it must be within the
    /// server's bounds).
    pub session_timeout_ms: Option<u32>,
    /// Commit every held partition's position this often while polling (`None`: only on
    /// [`GroupConsumer::commit`], before a partition is given up, and on close).
    pub auto_commit_interval_ms: Option<u64>,
    /// `"uniform"` (default) or `"range"`: decides only for a group without members.
    pub assignor: String,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self { session_timeout_ms: None, auto_commit_interval_ms: Some(5_000), assignor: String::new() }
    }
}

/// A change of what this member reads, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupEvent {
    /// These partitions are now this member's (read from the group's committed offset).
    Assigned(Vec<TopicPartition>),
    /// These were handed back after committing their positions.
    Revoked(Vec<TopicPartition>),
    /// These were taken away without a commit (the session expired, or a commit was fenced):
    /// records read from them since the last commit will be read again by their new owner.
    Lost(Vec<TopicPartition>),
}

/// What the heartbeat task and `poll` share.
#[derive(Debug, Default)]
struct MemberState {
    member_id: String,
    member_epoch: u64,
    /// The coordinator's word: what to read.
    assigned: BTreeSet<TopicPartition>,
    /// The coordinator's word: what to give up.
    revoking: BTreeSet<TopicPartition>,
    /// What `poll` holds (positions), reported in heartbeats.
    owned: BTreeSet<TopicPartition>,
    heartbeat_interval: Duration,
    /// The member was removed (session expired): drop everything without committing; the task
    /// joined again under a new id.
    lost: bool,
    /// The last heartbeat error (each call retries within the client's budget first), reported
    /// once by the next `poll`.
    last_error: Option<ClientError>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<MemberState>,
    /// Heartbeat now (a revocation was handed back).
    wake: Notify,
    /// The assignment changed.
    changed: Notify,
}

/// A member of a consumer group. Dropping it stops heartbeating without leaving (as a crash
/// would): its partitions move after its session timeout. Call [`GroupConsumer::close`] to leave.
#[derive(Debug)]
pub struct GroupConsumer {
    consumer: Consumer,
    client: Client,
    group: String,
    subscriptions: Vec<Subscription>,
    config: GroupConfig,
    shared: Arc<Shared>,
    heartbeat: JoinHandle<()>,
    events: VecDeque<GroupEvent>,
    last_commit: Instant,
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Consumer {
    /// Joins `group` reading `subscriptions` (topic names, or `prefix*`), with the default
    /// [`GroupConfig`].
    pub async fn join<S: Into<Subscription>>(
        self,
        group: &str,
        subscriptions: impl IntoIterator<Item = S>,
    ) -> Result<GroupConsumer, ClientError> {
        self.join_with(group, subscriptions, GroupConfig::default()).await
    }

    /// [`Consumer::join`] with a [`GroupConfig`].
    pub async fn join_with<S: Into<Subscription>>(
        mut self,
        group: &str,
        subscriptions: impl IntoIterator<Item = S>,
        config: GroupConfig,
    ) -> Result<GroupConsumer, ClientError> {
        let subscriptions: Vec<Subscription> = subscriptions.into_iter().map(Into::into).collect();
        if subscriptions.is_empty() {
            return Err(ClientError::InvalidRequest("a group member subscribes to at least one topic".into()));
        }
        self.set_group(group);
        let client = self.client().clone();
        let shared = Arc::new(Shared::default());
        let answer = join_call(&client, group, &new_member_id()?, &subscriptions, &config).await?;
        apply_answer(&mut shared.state.lock(), &answer);
        let heartbeat = tokio::spawn(heartbeat_loop(
            client.clone(),
            group.to_string(),
            subscriptions.clone(),
            config.clone(),
            Arc::downgrade(&shared),
        ));
        Ok(GroupConsumer {
            consumer: self,
            client,
            group: group.to_string(),
            subscriptions,
            config,
            shared,
            heartbeat,
            events: VecDeque::new(),
            last_commit: Instant::now(),
        })
    }
}

/// A fresh member id, chosen by the client: `m-` and 16 random bytes in hex. A join names it, so
/// a retried JoinGroup (its answer lost to a timeout or a coordinator change) joins the same
/// member again instead of adding a second one that would hold partitions, never heartbeating,
/// until its session expired. A new membership (after UNKNOWN_MEMBER_ID) gets a new id.
fn new_member_id() -> Result<String, ClientError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ClientError::Config(format!("no random source: {e}")))?;
    Ok(std::iter::once("m-".to_string()).chain(bytes.iter().map(|b| format!("{b:02x}"))).collect())
}

/// One JoinGroup (retried as every call is) as member `member_id`.
async fn join_call(
    client: &Client,
    group: &str,
    member_id: &str,
    subscriptions: &[Subscription],
    config: &GroupConfig,
) -> Result<proto::GroupAssignment, ClientError> {
    let message = proto::JoinGroupRequest {
        group: group.to_string(),
        member_id: member_id.to_string(),
        subscriptions: subscriptions.iter().map(Subscription::to_proto).collect(),
        session_timeout_ms: config.session_timeout_ms.unwrap_or(0),
        assignor: config.assignor.clone(),
        client_addr: String::new(),
    };
    client
        .call(Route::Any, |ch| {
            let req = client.request(message.clone(), Duration::ZERO);
            async move { Client::groups_client(ch).join_group(req).await }
        })
        .await
}

fn apply_answer(state: &mut MemberState, a: &proto::GroupAssignment) {
    state.member_id = a.member_id.clone();
    state.member_epoch = a.member_epoch;
    state.assigned = a.assigned.iter().map(|p| (p.topic.clone(), p.partition)).collect();
    state.revoking = a.revoking.iter().map(|p| (p.topic.clone(), p.partition)).collect();
    state.heartbeat_interval = Duration::from_millis(u64::from(a.heartbeat_interval_ms.max(10)));
}

/// Heartbeats until the consumer is dropped; joins again (as a new member) if the coordinator
/// no longer knows this one.
async fn heartbeat_loop(
    client: Client,
    group: String,
    subscriptions: Vec<Subscription>,
    config: GroupConfig,
    shared: std::sync::Weak<Shared>,
) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let interval = s.state.lock().heartbeat_interval;
        tokio::select! {
            _ = s.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let (member_id, member_epoch, owned) = {
            let st = s.state.lock();
            (st.member_id.clone(), st.member_epoch, st.owned.iter().cloned().collect::<Vec<_>>())
        };
        let message = proto::GroupHeartbeatRequest {
            group: group.clone(),
            member_id: member_id.clone(),
            member_epoch,
            owned: owned.into_iter().map(|(topic, partition)| proto::TopicPartition { topic, partition }).collect(),
        };
        let answer = client
            .call(Route::Any, |ch| {
                let req = client.request(message.clone(), Duration::ZERO);
                async move { Client::groups_client(ch).heartbeat(req).await }
            })
            .await;
        match answer {
            Ok(a) => {
                let mut st = s.state.lock();
                apply_answer(&mut st, &a);
                st.last_error = None;
            }
            Err(e) if e.code() == Some(ErrorCode::UnknownMemberId) => {
                tracing::warn!(%group, member = %member_id, "the group no longer knows this member; joining again");
                let joined = match new_member_id() {
                    Ok(id) => join_call(&client, &group, &id, &subscriptions, &config).await,
                    Err(e) => Err(e),
                };
                match joined {
                    Ok(a) => {
                        let mut st = s.state.lock();
                        apply_answer(&mut st, &a);
                        st.lost = true;
                        st.last_error = None;
                    }
                    Err(e) => s.state.lock().last_error = Some(e),
                }
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "group heartbeat failed");
                s.state.lock().last_error = Some(e);
            }
        }
        s.changed.notify_waiters();
    }
}

impl GroupConsumer {
    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The member id the coordinator gave this member (it changes if the member had to join again).
    pub fn member_id(&self) -> String {
        self.shared.state.lock().member_id.clone()
    }

    /// The member epoch of the last heartbeat answer.
    pub fn member_epoch(&self) -> u64 {
        self.shared.state.lock().member_epoch
    }

    /// The subscriptions.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }

    /// The partitions this member reads now.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.consumer.assignment()
    }

    /// The last heartbeat's error, if the last one failed and `poll` has not reported it yet.
    pub fn last_heartbeat_error(&self) -> Option<ClientError> {
        self.shared.state.lock().last_error.clone()
    }

    /// Assignment changes since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        self.events.drain(..).collect()
    }

    /// The underlying consumer (positions, chain statistics).
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Acts on the coordinator's last answer: gives up what it must (committing first), drops
    /// what it lost, and takes up new partitions.
    pub async fn reconcile(&mut self) -> Result<(), ClientError> {
        let (lost_all, assigned, revoking, owned) = {
            let mut st = self.shared.state.lock();
            let lost = std::mem::take(&mut st.lost);
            (lost, st.assigned.clone(), st.revoking.clone(), st.owned.clone())
        };
        let mut handed_back = false;
        if lost_all && !owned.is_empty() {
            self.drop_partitions(&owned);
            self.events.push_back(GroupEvent::Lost(owned.iter().cloned().collect()));
            handed_back = true;
        }
        let owned = self.shared.state.lock().owned.clone();
        let give_up: BTreeSet<TopicPartition> = owned.intersection(&revoking).cloned().collect();
        if !give_up.is_empty() {
            match self.commit_partitions(Some(&give_up)).await {
                Ok(()) => self.events.push_back(GroupEvent::Revoked(give_up.iter().cloned().collect())),
                Err(e) if is_fenced(&e) => self.events.push_back(GroupEvent::Lost(give_up.iter().cloned().collect())),
                Err(e) => return Err(e),
            }
            self.drop_partitions(&give_up);
            handed_back = true;
        }
        // Held but neither assigned nor revoking: no longer ours (a deleted topic, a new member id).
        let gone: BTreeSet<TopicPartition> =
            owned.iter().filter(|p| !assigned.contains(*p) && !revoking.contains(*p)).cloned().collect();
        if !gone.is_empty() {
            self.drop_partitions(&gone);
            self.events.push_back(GroupEvent::Lost(gone.into_iter().collect()));
            handed_back = true;
        }
        let owned = self.shared.state.lock().owned.clone();
        let new: Vec<TopicPartition> = assigned.difference(&owned).cloned().collect();
        if !new.is_empty() {
            for (topic, partition) in &new {
                self.consumer.assign(topic, [*partition]);
            }
            self.shared.state.lock().owned.extend(new.iter().cloned());
            self.events.push_back(GroupEvent::Assigned(new));
        }
        // Revocations of partitions it never took up are acknowledged at once too (the coordinator
        // still counts them as held until a heartbeat leaves them out).
        if handed_back || !revoking.is_empty() {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    fn drop_partitions(&mut self, parts: &BTreeSet<TopicPartition>) {
        for (topic, partition) in parts {
            self.consumer.unassign(topic, *partition);
        }
        self.shared.state.lock().owned.retain(|p| !parts.contains(p));
    }

    /// Records from this member's partitions: acts on assignment changes first (see
    /// [`GroupConsumer::reconcile`]), commits if the auto-commit interval passed, then polls as
    /// [`Consumer::poll`] does. With nothing assigned it waits up to the consumer's
    /// `max_wait_ms` for an assignment and answers empty.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        // A heartbeat that failed for good (not authorized, the cluster unreachable past the retry
        // budget) is reported once; the task keeps trying.
        if let Some(e) = self.shared.state.lock().last_error.take() {
            return Err(e);
        }
        self.reconcile().await?;
        if let Some(every) = self.config.auto_commit_interval_ms
            && self.last_commit.elapsed() >= Duration::from_millis(every)
        {
            match self.commit().await {
                Ok(()) => {}
                // The coordinator took partitions away: the next reconcile drops them.
                Err(e) if is_fenced(&e) => tracing::warn!(group = %self.group, error = %e, "auto-commit refused"),
                Err(e) => return Err(e),
            }
        }
        if self.consumer.assignment().is_empty() {
            let wait = Duration::from_millis(u64::from(self.consumer.config().max_wait_ms.max(1)));
            let _ = tokio::time::timeout(wait, self.shared.changed.notified()).await;
            return Ok(Vec::new());
        }
        self.consumer.poll().await
    }

    /// Commits the position of every partition this member holds (one atomic, fenced request).
    pub async fn commit(&mut self) -> Result<(), ClientError> {
        self.commit_partitions(None).await
    }

    /// Commits explicit `(topic, partition, next offset)` triples as this member (one atomic,
    /// fenced request): every partition must be this member's.
    pub async fn commit_offsets(&mut self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        let (member_id, member_epoch) = {
            let st = self.shared.state.lock();
            (st.member_id.clone(), st.member_epoch)
        };
        self.consumer.commit_fenced(Some((member_id, member_epoch)), offsets).await?;
        self.last_commit = Instant::now();
        Ok(())
    }

    async fn commit_partitions(&mut self, only: Option<&BTreeSet<TopicPartition>>) -> Result<(), ClientError> {
        let offsets: Vec<(String, u32, u64)> = self
            .consumer
            .assignment()
            .into_iter()
            .filter(|p| only.is_none_or(|o| o.contains(p)))
            .filter_map(|(t, p)| self.consumer.position(&t, p).map(|o| (t, p, o)))
            .collect();
        self.commit_offsets(&offsets).await
    }

    /// Commits, then leaves the group: the partitions go to the other members at once.
    pub async fn close(mut self) -> Result<(), ClientError> {
        let committed = self.commit().await;
        self.leave().await?;
        committed
    }

    /// Leaves the group without committing (commit what was processed first, e.g. with
    /// [`GroupConsumer::commit_offsets`]).
    pub async fn leave(self) -> Result<(), ClientError> {
        self.heartbeat.abort();
        let message = proto::LeaveGroupRequest { group: self.group.clone(), member_id: self.member_id() };
        self.client
            .call(Route::Any, |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::groups_client(ch).leave_group(req).await }
            })
            .await?;
        Ok(())
    }
}

/// Whether a commit was refused because this member no longer owns what it committed.
fn is_fenced(e: &ClientError) -> bool {
    matches!(e.code(), Some(ErrorCode::FencedMember | ErrorCode::UnknownMemberId))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_fresh_and_within_the_coordinators_bound() {
        let a = new_member_id().unwrap();
        let b = new_member_id().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("m-") && a.len() == 2 + 32, "{a}");
        // The coordinator's limit on a member id (`groups::limits::MAX_MEMBER_ID_BYTES`).
        assert!(a.len() <= 64);
    }
}
