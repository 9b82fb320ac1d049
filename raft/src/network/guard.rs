//! The Raft transport's edge checks: what no correct peer sends is refused here, before openraft
//! sees it. openraft trusts its peers (it adds 1 to terms and indexes unchecked, and a vote with
//! `leadership_transfer` set skips the leader lease), so one hostile or buggy message could
//! otherwise stop a group for good (issue 14: a Vote with term `u64::MAX` is granted and saved, and
//! the next election's `term + 1` panics, also after a restart).
//!
//! Every check is a pure function of the message and the set of nodes the receiver knows
//! ([`KnownNodes`]); the server ([`crate::server`]) calls them and turns a [`Refusal`] into a
//! `PERMISSION_DENIED` status carrying [`REFUSED_CODE`] in [`ERROR_CODE_KEY`].

use std::collections::BTreeSet;

use openraft::raft::{AppendEntriesRequest, VoteRequest};

use crate::types::{GroupId, LogId, NodeId, TypeConfig, Vote};

/// The largest term a Raft RPC may carry.
///
/// Why 2^62: openraft computes `term + 1` and `index + 1` without overflow checks, so a value near
/// `u64::MAX` panics a group's core. A correct cluster never comes near this bound: electing a
/// leader every millisecond for 146 million years reaches 2^62 terms, and appending ten million
/// entries a second takes 14 600 years to reach 2^62 indexes. Anything above is hostile or
/// corrupt, and refusing it leaves a 2^62-wide margin below the overflow. The same bound is
/// [`GroupId::MAX`]'s.
pub const MAX_TERM: u64 = 1 << 62;

/// The largest log index a Raft RPC may carry; see [`MAX_TERM`] for the reasoning.
pub const MAX_INDEX: u64 = 1 << 62;

/// The status metadata key that carries Shale's stable error code (the client API's
/// `shale-error-code`; the Raft crate does not depend on the client crate, so it names it here).
pub const ERROR_CODE_KEY: &str = "shale-error-code";

/// The error code of a refused Raft RPC (sent with gRPC `PERMISSION_DENIED`).
pub const REFUSED_CODE: &str = "RAFT_RPC_REFUSED";

/// Why a Raft RPC was refused at the edge.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A term or index is above its bound ([`MAX_TERM`], [`MAX_INDEX`]).
    #[error("{field} is {value}, above the bound {bound}")]
    OutOfRange {
        /// Which field (`vote.term`, `prev_log_id.index`, ...).
        field: &'static str,
        /// Its value.
        value: u64,
        /// The bound it broke.
        bound: u64,
    },
    /// The node the message claims to come from (or names) is not a member of the group, as the
    /// receiver knows it.
    #[error("node {node} ({role}) is not a member of group {group} as node {receiver} knows it")]
    NotAMember {
        /// The group.
        group: GroupId,
        /// The node named.
        node: NodeId,
        /// Its role in the message (`candidate`, `leader`, `transfer target`).
        role: &'static str,
        /// The receiving node.
        receiver: NodeId,
    },
    /// The peer's TLS certificate names another node than the one the message claims to come from.
    #[error("the peer's certificate is node {certified}'s, but the message claims to come from node {claimed}")]
    IdentityMismatch {
        /// The node id in the certificate.
        certified: NodeId,
        /// The node id the message claims.
        claimed: NodeId,
    },
    /// The internal listener requires a node certificate, and the peer presented none that names a
    /// node (no TLS, or a client certificate).
    #[error("the peer presented no node certificate (a node certificate names `shale://node/<id>`)")]
    NoNodeCertificate,
    /// The peer's certificate cannot be read, or names more than one node.
    #[error("the peer's certificate is unusable: {reason}")]
    BadCertificate {
        /// Why.
        reason: String,
    },
}

/// The nodes a receiving group accepts messages from: every node of the group's membership
/// config (voters and learners, both halves of a joint config) and of the metadata group's (the
/// cluster's members), as this node knows them. `None`: this node knows no membership for the
/// group yet (a replica that has not been initialised or reached), so no member check is possible.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownNodes(pub Option<BTreeSet<NodeId>>);

impl KnownNodes {
    /// Whether `node` may send to (or be named by a message to) the group.
    pub fn contains(&self, node: NodeId) -> bool {
        self.0.as_ref().is_none_or(|nodes| nodes.contains(&node))
    }
}

/// What the receiver knows when it checks a message: its own id, the group and its known nodes.
#[derive(Clone, Debug)]
pub struct Receiver {
    /// This node.
    pub node: NodeId,
    /// The group the message names.
    pub group: GroupId,
    /// The nodes the group accepts messages from.
    pub known: KnownNodes,
}

impl Receiver {
    fn member(&self, node: NodeId, role: &'static str) -> Result<(), Refusal> {
        if self.known.contains(node) {
            Ok(())
        } else {
            Err(Refusal::NotAMember { group: self.group, node, role, receiver: self.node })
        }
    }
}

fn bounded(field: &'static str, value: u64, bound: u64) -> Result<(), Refusal> {
    if value > bound { Err(Refusal::OutOfRange { field, value, bound }) } else { Ok(()) }
}

/// Checks a vote's term.
pub fn check_vote_value(field: &'static str, vote: &Vote) -> Result<(), Refusal> {
    bounded(field, vote.leader_id.term, MAX_TERM)
}

/// Checks a log id's term and index.
pub fn check_log_id(term_field: &'static str, index_field: &'static str, id: Option<&LogId>) -> Result<(), Refusal> {
    if let Some(id) = id {
        bounded(term_field, id.leader_id.term, MAX_TERM)?;
        bounded(index_field, id.index, MAX_INDEX)?;
    }
    Ok(())
}

/// A vote or pre-vote request: bounded term and last log id, and a candidate that is a member.
/// (A request with `leadership_transfer` set skips the leader lease, so it must come from a member
/// too; that is the same check, as the flag is only honoured for the candidate.)
pub fn check_vote(rx: &Receiver, req: &VoteRequest<TypeConfig>) -> Result<(), Refusal> {
    check_vote_value("vote.term", &req.vote)?;
    check_log_id("last_log_id.term", "last_log_id.index", req.last_log_id.as_ref())?;
    rx.member(req.vote.leader_id.node_id, if req.leadership_transfer { "transferring candidate" } else { "candidate" })
}

/// An append-entries request (unary or one message of a stream): bounded term, log ids and entry
/// ids, and a leader that is a member.
pub fn check_append(rx: &Receiver, req: &AppendEntriesRequest<TypeConfig>) -> Result<(), Refusal> {
    check_vote_value("vote.term", &req.vote)?;
    check_log_id("prev_log_id.term", "prev_log_id.index", req.prev_log_id.as_ref())?;
    check_log_id("leader_commit.term", "leader_commit.index", req.leader_commit.as_ref())?;
    for entry in &req.entries {
        check_log_id("entry.log_id.term", "entry.log_id.index", Some(&entry.log_id))?;
    }
    rx.member(req.vote.leader_id.node_id, "leader")
}

/// A snapshot's meta: the sender's vote and the snapshot's log ids bounded, the sender a member.
pub fn check_snapshot(
    rx: &Receiver,
    vote: &Vote,
    last_log_id: Option<&LogId>,
    membership_log_id: Option<&LogId>,
) -> Result<(), Refusal> {
    check_vote_value("vote.term", vote)?;
    check_log_id("last_log_id.term", "last_log_id.index", last_log_id)?;
    check_log_id("last_membership_log_id.term", "last_membership_log_id.index", membership_log_id)?;
    rx.member(vote.leader_id.node_id, "leader")
}

/// A leadership transfer: the leader's vote and log id bounded; the leader and the target members.
pub fn check_transfer(rx: &Receiver, from: &Vote, to: NodeId, last_log_id: Option<&LogId>) -> Result<(), Refusal> {
    check_vote_value("from_leader.term", from)?;
    check_log_id("last_log_id.term", "last_log_id.index", last_log_id)?;
    rx.member(from.leader_id.node_id, "transferring leader")?;
    rx.member(to, "transfer target")
}

/// The most groups one node heartbeat may name (quiet or to wake): every partition the cluster
/// may hold, and the metadata group.
pub const MAX_HEARTBEAT_GROUPS: usize = shale_storage::limits::MAX_CLUSTER_PARTITIONS as usize + 1;

/// A node heartbeat: bounded lists, terms, indexes and group ids, and a sender that is a member
/// of the cluster (`rx.known`: the metadata group's members, as this node knows them). Each named
/// group is checked against that group's own membership where it is used (`crate::heartbeat`).
pub fn check_node_heartbeat(rx: &Receiver, req: &crate::network::pb::NodeHeartbeatRequest) -> Result<(), Refusal> {
    bounded("quiet.len", req.quiet.len() as u64, MAX_HEARTBEAT_GROUPS as u64)?;
    bounded("wake.len", req.wake.len() as u64, MAX_HEARTBEAT_GROUPS as u64)?;
    for q in &req.quiet {
        bounded("quiet.group_id", q.group_id, GroupId::MAX)?;
        bounded("quiet.term", q.term, MAX_TERM)?;
        bounded("quiet.last_index", q.last_index, MAX_INDEX)?;
    }
    for g in &req.wake {
        bounded("wake.group_id", *g, GroupId::MAX)?;
    }
    rx.member(req.from_node_id, "heartbeat sender")
}

/// A log read for repair (`ReadLog`, which names no sender): with certificates checked, the
/// certified node must be a member.
pub fn check_reader(rx: &Receiver, certified: Option<NodeId>) -> Result<(), Refusal> {
    match certified {
        Some(node) => rx.member(node, "reader"),
        None => Ok(()),
    }
}

/// The node the peer's certificate names must be the node the message claims to come from.
/// `certified` is `None` when the listener does not check certificates (then nothing is checked).
pub fn check_identity(certified: Option<NodeId>, claimed: NodeId) -> Result<(), Refusal> {
    match certified {
        Some(certified) if certified != claimed => Err(Refusal::IdentityMismatch { certified, claimed }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::log_id;

    fn rx(known: &[NodeId]) -> Receiver {
        Receiver { node: 1, group: GroupId(0), known: KnownNodes(Some(known.iter().copied().collect())) }
    }

    /// The Vote from issue 14 that stopped a metadata group for good.
    fn hostile_vote() -> VoteRequest<TypeConfig> {
        let mut req = VoteRequest::new(Vote::new(u64::MAX, 99), Some(log_id(u64::MAX, 99, u64::MAX)));
        req.leadership_transfer = true;
        req
    }

    #[test]
    fn the_hostile_vote_of_issue_14_is_refused() {
        let err = check_vote(&rx(&[1, 2, 3]), &hostile_vote()).unwrap_err();
        assert_eq!(err, Refusal::OutOfRange { field: "vote.term", value: u64::MAX, bound: MAX_TERM });
        // Even from a member, and with a sane term, the huge last log id is refused.
        let mut req = VoteRequest::new(Vote::new(5, 2), Some(log_id(4, 2, u64::MAX)));
        req.leadership_transfer = true;
        assert!(matches!(
            check_vote(&rx(&[1, 2, 3]), &req),
            Err(Refusal::OutOfRange { field: "last_log_id.index", .. })
        ));
    }

    #[test]
    fn bounds_are_inclusive_and_sane_values_pass() {
        let at_bound = VoteRequest::new(Vote::new(MAX_TERM, 2), Some(log_id(MAX_TERM, 3, MAX_INDEX)));
        assert_eq!(check_vote(&rx(&[1, 2, 3]), &at_bound), Ok(()));
        let above = VoteRequest::new(Vote::new(MAX_TERM + 1, 2), None);
        assert!(matches!(check_vote(&rx(&[1, 2, 3]), &above), Err(Refusal::OutOfRange { .. })));
        let above = VoteRequest::new(Vote::new(3, 2), Some(log_id(MAX_TERM + 1, 2, 1)));
        assert!(matches!(
            check_vote(&rx(&[1, 2, 3]), &above),
            Err(Refusal::OutOfRange { field: "last_log_id.term", .. })
        ));
    }

    #[test]
    fn votes_and_transfers_from_non_members_are_refused() {
        let mut req = VoteRequest::new(Vote::new(7, 99), Some(log_id(6, 1, 10)));
        assert_eq!(
            check_vote(&rx(&[1, 2, 3]), &req),
            Err(Refusal::NotAMember { group: GroupId(0), node: 99, role: "candidate", receiver: 1 })
        );
        req.leadership_transfer = true;
        assert!(matches!(
            check_vote(&rx(&[1, 2, 3]), &req),
            Err(Refusal::NotAMember { role: "transferring candidate", .. })
        ));
        // A group whose membership this node does not know yet checks only the bounds.
        let unknown = Receiver { node: 1, group: GroupId(0), known: KnownNodes(None) };
        assert_eq!(check_vote(&unknown, &req), Ok(()));

        assert!(check_transfer(&rx(&[1, 2, 3]), &Vote::new_committed(4, 2), 3, None).is_ok());
        assert!(matches!(
            check_transfer(&rx(&[1, 2, 3]), &Vote::new_committed(4, 9), 3, None),
            Err(Refusal::NotAMember { role: "transferring leader", .. })
        ));
        assert!(matches!(
            check_transfer(&rx(&[1, 2, 3]), &Vote::new_committed(4, 2), 9, None),
            Err(Refusal::NotAMember { role: "transfer target", .. })
        ));
    }

    #[test]
    fn appends_are_checked_field_by_field() {
        let ok = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: Some(log_id(2, 2, 10)),
            entries: vec![crate::types::Entry { log_id: log_id(3, 2, 11), payload: crate::types::EntryPayload::Blank }],
            leader_commit: Some(log_id(2, 2, 10)),
        };
        assert_eq!(check_append(&rx(&[1, 2, 3]), &ok), Ok(()));
        let mut forged = ok.clone();
        forged.vote = Vote::new_committed(3, 42);
        assert!(matches!(check_append(&rx(&[1, 2, 3]), &forged), Err(Refusal::NotAMember { node: 42, .. })));
        let mut huge = ok.clone();
        huge.entries =
            vec![crate::types::Entry { log_id: log_id(3, 2, u64::MAX), payload: crate::types::EntryPayload::Blank }];
        assert!(matches!(
            check_append(&rx(&[1, 2, 3]), &huge),
            Err(Refusal::OutOfRange { field: "entry.log_id.index", .. })
        ));
        let mut huge = ok.clone();
        huge.leader_commit = Some(log_id(u64::MAX - 1, 2, 3));
        assert!(matches!(
            check_append(&rx(&[1, 2, 3]), &huge),
            Err(Refusal::OutOfRange { field: "leader_commit.term", .. })
        ));
        let mut huge = ok;
        huge.prev_log_id = Some(log_id(1, 2, MAX_INDEX + 1));
        assert!(matches!(
            check_append(&rx(&[1, 2, 3]), &huge),
            Err(Refusal::OutOfRange { field: "prev_log_id.index", .. })
        ));
    }

    #[test]
    fn snapshots_are_checked() {
        let vote = Vote::new_committed(3, 2);
        assert_eq!(check_snapshot(&rx(&[1, 2]), &vote, Some(&log_id(3, 2, 5)), None), Ok(()));
        assert!(check_snapshot(&rx(&[1, 2]), &Vote::new_committed(3, 5), None, None).is_err());
        assert!(check_snapshot(&rx(&[1, 2]), &vote, None, Some(&log_id(u64::MAX, 2, 1))).is_err());
    }

    #[test]
    fn node_heartbeats_are_bounded_and_come_from_members() {
        use crate::network::pb::{NodeHeartbeatRequest, QuietGroup};
        let ok = NodeHeartbeatRequest {
            from_node_id: 2,
            quiet: vec![QuietGroup { group_id: 7, term: 3, last_index: 10 }],
            wake: vec![9],
            ..NodeHeartbeatRequest::default()
        };
        assert_eq!(check_node_heartbeat(&rx(&[1, 2]), &ok), Ok(()));
        assert!(matches!(check_node_heartbeat(&rx(&[1, 3]), &ok), Err(Refusal::NotAMember { node: 2, .. })));
        let mut bad = ok.clone();
        bad.quiet[0].term = u64::MAX;
        assert!(matches!(
            check_node_heartbeat(&rx(&[1, 2]), &bad),
            Err(Refusal::OutOfRange { field: "quiet.term", .. })
        ));
        let mut bad = ok.clone();
        bad.quiet[0].last_index = MAX_INDEX + 1;
        assert!(matches!(
            check_node_heartbeat(&rx(&[1, 2]), &bad),
            Err(Refusal::OutOfRange { field: "quiet.last_index", .. })
        ));
        let mut bad = ok.clone();
        bad.wake = vec![u64::MAX];
        assert!(matches!(
            check_node_heartbeat(&rx(&[1, 2]), &bad),
            Err(Refusal::OutOfRange { field: "wake.group_id", .. })
        ));
        let mut bad = ok;
        bad.quiet = vec![QuietGroup::default(); MAX_HEARTBEAT_GROUPS + 1];
        assert!(matches!(
            check_node_heartbeat(&rx(&[1, 2]), &bad),
            Err(Refusal::OutOfRange { field: "quiet.len", .. })
        ));
    }

    #[test]
    fn a_certificate_must_name_the_claimed_node() {
        assert_eq!(check_identity(None, 3), Ok(()));
        assert_eq!(check_identity(Some(3), 3), Ok(()));
        assert_eq!(check_identity(Some(2), 3), Err(Refusal::IdentityMismatch { certified: 2, claimed: 3 }));
    }
}
