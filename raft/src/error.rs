//! The one error type of the raft crate's public API.

use shale_storage::StorageError;

use crate::format::DecodeError;
use crate::types::{GroupId, NodeId};

/// Every way a group operation can fail. Variants name the group and carry what a caller needs to
/// act (the leader to redirect to, the valid range, the timeout that expired).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// This node is not the group's leader; retry at `leader` (id and gRPC address) if known.
    #[error("group {group}: this node is not the leader (leader: {})",
        leader.as_ref().map(|(id, addr)| format!("{id} at {addr}")).unwrap_or_else(|| "unknown".into()))]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The current leader, if this node knows it.
        leader: Option<(NodeId, String)>,
    },

    /// A storage call failed.
    #[error("group {group}: storage error: {source}")]
    Storage {
        /// The group.
        group: GroupId,
        /// The storage error.
        #[source]
        source: StorageError,
    },

    /// Stored raft data could not be decoded.
    #[error("group {group}: stored data at index {index} is undecodable: {source}")]
    Decode {
        /// The group.
        group: GroupId,
        /// The log index (or meta record offset) of the bad data.
        index: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },

    /// A read asked for an index the log no longer (or does not yet) hold.
    #[error("group {group}: index {requested} is out of range [{log_start}, {next})")]
    OffsetOutOfRange {
        /// The group.
        group: GroupId,
        /// The index asked for.
        requested: u64,
        /// The first index still stored.
        log_start: u64,
        /// One past the last readable index.
        next: u64,
    },

    /// A payload is larger than the group accepts (`RaftGroupConfig::max_payload_bytes`).
    #[error("group {group}: payload {position} is {size} bytes, over the limit of {max} bytes")]
    PayloadTooLarge {
        /// The group.
        group: GroupId,
        /// Its position in the write (0 for a single write).
        position: usize,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// `initialize` was called on a group that already has a membership.
    #[error("group {group}: already initialized")]
    AlreadyInitialized {
        /// The group.
        group: GroupId,
    },

    /// A wait ran out of time.
    #[error("group {group}: timed out after {timeout_ms} ms waiting for {what}")]
    Timeout {
        /// The group.
        group: GroupId,
        /// What was awaited.
        what: &'static str,
        /// The timeout.
        timeout_ms: u64,
    },

    /// The leader could not confirm with a quorum in time (a read index, or a write that needs one):
    /// retryable, the quorum may be back a moment later.
    #[error("group {group}: no quorum answered in time: {reason}")]
    NoQuorum {
        /// The group.
        group: GroupId,
        /// openraft's account of it.
        reason: String,
    },

    /// A peer could not be reached or answered with a transport error.
    #[error("network error talking to node {peer}: {reason}")]
    Network {
        /// The peer.
        peer: NodeId,
        /// What went wrong.
        reason: String,
    },

    /// A membership change was refused.
    #[error("group {group}: membership change refused: {reason}")]
    MembershipChange {
        /// The group.
        group: GroupId,
        /// Why.
        reason: String,
    },

    /// A write was accepted but then lost its leader before it was known committed: it may or may
    /// not be in the log. Retries must be idempotent (or deduplicated by the application).
    #[error("group {group}: write outcome unknown: {reason}")]
    Indeterminate {
        /// The group.
        group: GroupId,
        /// What happened.
        reason: String,
    },

    /// The group is shutting down or stopped.
    #[error("group {group}: shutting down")]
    ShuttingDown {
        /// The group.
        group: GroupId,
    },

    /// The group's Raft core stopped on an unrecoverable error (usually storage); restart the node.
    #[error("group {group}: fatal raft error: {reason}")]
    Fatal {
        /// The group.
        group: GroupId,
        /// The rendered openraft error.
        reason: String,
    },

    /// A leadership transfer was refused before anything was sent: the target could not take
    /// over now, and handing over to it would leave the group without a writable leader until an
    /// election (a leader that hands over stops its heartbeats and refuses writes).
    #[error("group {group}: leadership not handed to node {to}: {reason}")]
    TransferRefused {
        /// The group.
        group: GroupId,
        /// The node asked to take over.
        to: NodeId,
        /// Why it cannot.
        reason: TransferRefusal,
    },

    /// A leadership transfer was sent but another node took over (the target went down while
    /// it was handed over, and another replica was elected).
    #[error("group {group}: leadership did not go to node {to}; the leader now is {}",
        leader.map_or_else(|| "unknown".to_string(), |l| format!("node {l}")))]
    TransferFailed {
        /// The group.
        group: GroupId,
        /// The node asked to take over.
        to: NodeId,
        /// Who leads now.
        leader: Option<NodeId>,
    },

    /// A configuration value was rejected.
    #[error("invalid raft configuration: {0}")]
    InvalidConfig(String),

    /// Any other error openraft reported, rendered.
    #[error("group {group}: raft error: {reason}")]
    Openraft {
        /// The group.
        group: GroupId,
        /// The rendered error.
        reason: String,
    },
}

/// Why a leadership transfer was refused ([`RaftError::TransferRefused`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferRefusal {
    /// The target is not one of the group's voters.
    #[error("it is not a voter of the group (voters: {voters:?})")]
    NotAVoter {
        /// The group's voters.
        voters: Vec<NodeId>,
    },
    /// The target's replica did not answer this leader within `within_ms` (the node is down,
    /// unreachable, or does not run the group yet).
    #[error("its replica has not answered this leader within {within_ms} ms")]
    NotAnswering {
        /// How recent an answer had to be.
        within_ms: u64,
    },
    /// The target's replica does not hold every committed entry (`matched`: the last index the
    /// leader knows it holds).
    #[error("its replica is behind: it holds up to index {}, the group committed {committed}",
        matched.map_or_else(|| "none".to_string(), |m| m.to_string()))]
    Behind {
        /// The last index the leader knows it holds (`None`: none).
        matched: Option<u64>,
        /// The group's commit index.
        committed: u64,
    },
}
