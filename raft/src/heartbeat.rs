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

use crate::group::{LocalGroups, QuietState, RaftGroup};
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
    async fn pass(self: &Arc<Self>) {
        let now = Instant::now();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let me = self.peers.node_id();
        let fault = self.fault.read().clone();
        let mut out: HashMap<NodeId, Outgoing> = HashMap::new();
        let mut quiet = 0;
        for g in self.groups.all() {
            let (state, renew, leader) = g.with_metrics(|m| {
                let (state, renew) = g.evaluate_quiet(m, now, seq);
                for (id, node) in m.membership_config.membership().nodes() {
                    if *id == me {
                        continue;
                    }
                    let o = out.entry(*id).or_insert_with(|| Outgoing {
                        addr: node.addr.clone(),
                        quiet: Vec::new(),
                        wake: Vec::new(),
                    });
                    if let QuietState::Leading { term, index } = state
                        && !fault.omit.contains(&g.id())
                    {
                        o.quiet.push(pb::QuietGroup { group_id: g.id().0, term, last_index: index });
                    }
                }
                (state, renew, m.current_leader)
            });
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
        }
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
        self.peers.note_heartbeat(from, req.seq, named);
        let mut wake = Vec::new();
        for q in &req.quiet {
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
