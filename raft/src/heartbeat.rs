//! The coalesced node heartbeat and quiet groups (issue 15).
//!
//! Every tick (`NetworkConfig::node_heartbeat_interval_ms`) a node sends each peer that shares a
//! group with it ONE `NodeHeartbeat`, whatever the number of groups: it says the node is alive and
//! names the quiet groups it leads that have the peer as a member, each with its term and last
//! (committed) log index. The same pass decides, group by group, what goes quiet and what wakes
//! ([`RaftGroup::evaluate_quiet`]): a quiet group has its openraft ticker off on every replica, so
//! it sends no per-group heartbeats and runs no election timer. The receiving side
//! ([`NodeHeartbeats::receive`]) lets a follower go quiet when it holds exactly the named state,
//! and answers the groups it cannot be quiet for, which the leader then wakes.
//!
//! Quiescence never changes what Raft decides, only when its timers run: every message a quiet
//! group gets is handled as usual (and wakes it), and a follower's timer is off only while its
//! leader's node is heard within an election timeout and names the group at the follower's own
//! vote and log. See ARCHITECTURE.md "Heartbeats and quiet groups".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::group::{LocalGroups, QuietState, RaftGroup, other_members};
use crate::network::client::{detached, raft_client};
use crate::network::pb;
use crate::network::peers::Peers;
use crate::types::{GroupId, NodeId};

/// Faults injected into this node's outgoing node heartbeats (tests of the lease rules: a lost or
/// partial node heartbeat must wake groups, never leave a follower deaf).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatFault {
    /// No node heartbeat is sent to these nodes.
    pub silent_to: BTreeSet<NodeId>,
    /// These groups are never named, even when quiet here.
    pub omit: BTreeSet<GroupId>,
}

/// The node's heartbeat loop and its receiving side.
#[derive(Debug)]
pub struct NodeHeartbeats {
    groups: Arc<LocalGroups>,
    peers: Arc<Peers>,
    interval: Duration,
    started: AtomicBool,
    /// Peers a node heartbeat is on its way to (one at a time per peer).
    in_flight: Mutex<HashSet<NodeId>>,
    fault: RwLock<HeartbeatFault>,
    quiet_groups: AtomicU64,
    /// The number of the last pass (and of the node heartbeats it sent).
    seq: AtomicU64,
    /// What the last pass that looked at every group found.
    last_pass: Mutex<Option<LastPass>>,
}

/// Every how many passes the heartbeat loop reads every quiet group's metrics too (a safety
/// net: between those passes a quiet group is judged by its quiet state and the node heartbeats
/// heard, see [`RaftGroup::evaluate_quiet_cached`]).
const FULL_LOOK_EVERY: u64 = 16;

/// What a pass that looked at every group found, for the passes after it (see
/// [`NodeHeartbeats::pass`]).
#[derive(Debug)]
struct LastPass {
    /// The node's quiet generation before it looked.
    generation: u64,
    fault: HeartbeatFault,
    /// Per peer: its address and the quiet groups this node leads that have it as a member.
    quiet: HashMap<NodeId, (String, Vec<pb::QuietGroup>)>,
    /// The groups that were awake (not kept alive by it: a group that stopped lets its storage
    /// go, whatever heartbeat task is still running).
    awake: Vec<Weak<RaftGroup>>,
    quiet_count: u64,
    /// The shortest lease of any group.
    min_lease: Duration,
}

/// One peer's node heartbeat being built.
struct Outgoing {
    addr: String,
    quiet: Vec<pb::QuietGroup>,
    wake: Vec<u64>,
}

impl NodeHeartbeats {
    pub(crate) fn new(groups: Arc<LocalGroups>, peers: Arc<Peers>) -> Arc<Self> {
        let interval = Duration::from_millis(peers.config().node_heartbeat_interval_ms);
        Arc::new(Self {
            groups,
            peers,
            interval,
            started: AtomicBool::new(false),
            in_flight: Mutex::default(),
            fault: RwLock::default(),
            quiet_groups: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            last_pass: Mutex::new(None),
        })
    }

    /// Starts the loop once (on the first group start, which runs inside the runtime). It ends
    /// when the node's router and server are gone.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(run(weak, interval));
    }

    /// How many local groups are quiet now (as of the last pass; leaders and followers).
    pub fn quiet_groups(&self) -> u64 {
        self.quiet_groups.load(Ordering::Relaxed)
    }

    /// Replaces the injected faults (tests).
    pub fn set_fault(&self, fault: HeartbeatFault) {
        *self.fault.write() = fault;
    }

    /// One pass: every group's quiet state, then one node heartbeat per peer.
    ///
    /// Quiet groups are looked at without their metrics, except on every `FULL_LOOK_EVERY`th
    /// pass (see [`RaftGroup::evaluate_quiet_cached`]), and while no group changed its quiet state
    /// (the node's quiet generation is unchanged) and every peer was heard within the shortest
    /// lease, not at all: the pass then sends what the last one listed and looks only at the
    /// groups that were awake. With thousands of quiet groups, looking at each one four times a
    /// second was most of an idle node's work.
    async fn pass(self: &Arc<Self>) {
        let now = Instant::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let me = self.peers.node_id();
        let fault = self.fault.read().clone();
        let full = seq.is_multiple_of(FULL_LOOK_EVERY);
        let generation = self.groups.quiet_generation();
        let heard_at = self.peers.heard_at();
        let cached = self.last_pass.lock().take().filter(|c| {
            !full
                && c.generation == generation
                && c.fault == fault
                && c.quiet
                    .keys()
                    .all(|p| heard_at.get(p).is_some_and(|at| now.saturating_duration_since(*at) <= c.min_lease))
        });
        let mut out: HashMap<NodeId, Outgoing> = HashMap::new();
        let mut quiet = 0;
        let mut visit = |g: &Arc<RaftGroup>, out: &mut HashMap<NodeId, Outgoing>, cheap: bool| {
            let cached = if cheap { g.evaluate_quiet_cached(now, &heard_at) } else { None };
            let (state, renew, leader, members) = match cached {
                Some((state, members)) => (state, false, None, members),
                None => g.with_metrics(|m| {
                    let (state, renew) = g.evaluate_quiet(m, now, seq);
                    (state, renew, m.current_leader, other_members(m, me))
                }),
            };
            for (id, addr) in members.iter() {
                let o = out.entry(*id).or_insert_with(|| Outgoing {
                    addr: addr.clone(),
                    quiet: Vec::new(),
                    wake: Vec::new(),
                });
                if let QuietState::Leading { term, index } = state
                    && !fault.omit.contains(&g.id())
                {
                    o.quiet.push(pb::QuietGroup { group_id: g.id().0, term, last_index: index });
                }
            }
            if state != QuietState::Awake {
                quiet += 1;
            }
            if renew {
                let g = g.clone();
                tokio::spawn(async move { g.wake_for_message().await });
            }
            // Awake here as a follower: the leader must not be quiet (the group's heartbeats keep
            // this node's election timer from firing). Usually it is not and this is a no-op
            // there; it matters when the leader went quiet and this node missed that (its node
            // heartbeat lost the group, or came late).
            if state == QuietState::Awake
                && let Some(leader) = leader.filter(|l| *l != me)
                && let Some(o) = out.get_mut(&leader)
            {
                o.wake.push(g.id().0);
            }
            state
        };
        let next = match cached {
            Some(c) => {
                // Nothing quiet changed: the quiet groups stand as the last pass listed them.
                for (peer, (addr, list)) in &c.quiet {
                    out.insert(*peer, Outgoing { addr: addr.clone(), quiet: list.clone(), wake: Vec::new() });
                }
                for g in c.awake.iter().filter_map(Weak::upgrade) {
                    visit(&g, &mut out, false);
                }
                quiet += c.quiet_count;
                c
            }
            None => {
                let mut awake = Vec::new();
                let mut quiet_count = 0;
                let mut min_lease = Duration::MAX;
                for g in self.groups.all() {
                    min_lease = min_lease.min(g.lease());
                    if visit(&g, &mut out, !full) == QuietState::Awake {
                        awake.push(Arc::downgrade(&g));
                    } else {
                        quiet_count += 1;
                    }
                }
                let quiet = out.iter().map(|(p, o)| (*p, (o.addr.clone(), o.quiet.clone()))).collect();
                LastPass { generation, fault: fault.clone(), quiet, awake, quiet_count, min_lease }
            }
        };
        *self.last_pass.lock() = Some(next);
        self.quiet_groups.store(quiet, Ordering::Relaxed);
        for (peer, o) in out {
            if fault.silent_to.contains(&peer) || !self.in_flight.lock().insert(peer) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                this.send(peer, seq, o).await;
                this.in_flight.lock().remove(&peer);
            });
        }
    }

    async fn send(&self, peer: NodeId, seq: u64, o: Outgoing) {
        let Ok(mut client) = raft_client(&self.peers, &o.addr) else {
            return;
        };
        let req = pb::NodeHeartbeatRequest {
            from_node_id: self.peers.node_id(),
            quiet: o.quiet,
            wake: o.wake,
            seq,
            seen_seq: self.peers.seen_seq(peer),
        };
        Peers::count(&self.peers.counters().node_heartbeats);
        // A peer that does not answer within a few ticks is skipped until it does (the call is
        // not reset meanwhile: `detached`).
        let limit = Duration::from_millis(self.peers.config().request_timeout_ms);
        let Some(Ok(resp)) = detached(self.interval * 5, limit, async move { client.node_heartbeat(req).await }).await
        else {
            return;
        };
        self.peers.note_alive(peer);
        for g in resp.into_inner().wake {
            self.wake_requested(peer, GroupId(g), None);
        }
    }

    /// `from` (a member of `group`) asks this node, the group's quiet leader, to wake it: in
    /// answer to a node heartbeat that named the group (`seen: None`), or because it is awake for
    /// the group, having seen our node heartbeat number `seen`. The latter counts only if the
    /// group was already quiet when that heartbeat was sent: a follower that had not yet heard
    /// that a group went quiet must not wake it (it would never stay quiet while heartbeats
    /// cross), whatever the delays.
    fn wake_requested(&self, from: NodeId, group: GroupId, seen: Option<u64>) {
        if let Some(g) = self.groups.get(group)
            && let Some(since) = g.quiet_since_seq()
            && seen.is_none_or(|seen| seen >= since)
            && is_member(&g, from)
        {
            tokio::spawn(async move { g.wake_on_request().await });
        }
    }

    /// A node heartbeat that passed the edge checks: records `from` as alive with what it named,
    /// lets each named group that this node follows in exactly that state go quiet, wakes the
    /// groups `from` asks to wake, and answers the named groups that cannot be quiet here.
    pub(crate) fn receive(&self, req: pb::NodeHeartbeatRequest) -> pb::NodeHeartbeatResponse {
        let from = req.from_node_id;
        let named = req.quiet.iter().map(|q| (GroupId(q.group_id), (q.term, q.last_index))).collect();
        let mut before = self.peers.note_heartbeat(from, req.seq, named);
        let mut wake = Vec::new();
        for q in &req.quiet {
            // Named in the same state by the sender's previous node heartbeat: already handled
            // then (this node went quiet for it, or asked to wake it; a follower woken since asks
            // the leader to wake it in its own pass, and the group is named again only after it
            // went quiet again).
            if before.remove(&GroupId(q.group_id)) == Some((q.term, q.last_index)) {
                continue;
            }
            let Some(g) = self.groups.get(GroupId(q.group_id)) else {
                continue;
            };
            // A group the sender is not a member of (as this node knows it) is not its to name.
            if !is_member(&g, from) {
                continue;
            }
            if !g.follow_quiet(from, q.term, q.last_index) {
                wake.push(q.group_id);
            }
        }
        // Groups the sender named before and no longer does: a quiet follower of it renews its
        // lease and wakes (the leader woke the group, or no longer leads it).
        for gid in before.into_keys() {
            if let Some(g) = self.groups.get(gid)
                && g.is_quiet_following(from)
            {
                tokio::spawn(async move { g.wake_for_message().await });
            }
        }
        for g in req.wake {
            self.wake_requested(from, GroupId(g), Some(req.seen_seq));
        }
        pb::NodeHeartbeatResponse { wake }
    }
}

fn is_member(g: &RaftGroup, node: NodeId) -> bool {
    g.with_metrics(|m| m.membership_config.membership().get_node(&node).is_some())
}

async fn run(weak: Weak<NodeHeartbeats>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(this) = weak.upgrade() else {
            return;
        };
        this.pass().await;
    }
}
