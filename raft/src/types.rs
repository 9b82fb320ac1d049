//! Identities and the openraft type configuration every Shale Raft group shares.

use std::fmt;

use bytes::Bytes;
use shale_storage::StreamId;

/// A node's id, unique in the cluster and stable across restarts.
pub type NodeId = u64;

/// What a node needs to be reached: `Node { addr: "host:port" }` (its gRPC listen address).
pub type Node = openraft::BasicNode;

/// Names one Raft group. [`GroupId::METADATA`] is the cluster metadata group; every topic
/// partition has its own group with an id the cluster layer assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The cluster metadata group.
    pub const METADATA: GroupId = GroupId(0);

    /// The largest group id: `2g + 1` must fit in a stream id with room to spare.
    pub const MAX: u64 = (1 << 62) - 1;

    /// The storage stream that holds this group's Raft log: stream `2g`. Record offset `i` is the
    /// Raft entry with log index `i`.
    pub const fn log_stream(self) -> StreamId {
        StreamId::new(self.0 * 2)
    }

    /// The storage stream that holds this group's vote, committed and purged log ids: stream `2g+1`.
    pub const fn meta_stream(self) -> StreamId {
        StreamId::new(self.0 * 2 + 1)
    }

    /// The group whose log or meta stream `stream` is (the inverse of [`GroupId::log_stream`] and
    /// [`GroupId::meta_stream`]).
    pub const fn of_stream(stream: StreamId) -> GroupId {
        GroupId(stream.get() / 2)
    }

    /// Whether the id is in the range the stream mapping supports.
    pub const fn is_valid(self) -> bool {
        self.0 <= Self::MAX
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// An opaque application payload carried by a normal Raft entry.
///
/// The second field remembers the entry's encoding (`crate::format::encode_entry`: header, then
/// these bytes) once one was made or received, so the log append and every follower's
/// AppendEntries reuse it instead of copying the payload again. Only the payload bytes are
/// compared, serialized and shown.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppPayload(pub Bytes, #[serde(skip)] pub(crate) EntryEncoding);

impl AppPayload {
    /// A payload of `data`, with no encoding remembered yet.
    pub fn new(data: Bytes) -> Self {
        Self(data, EntryEncoding::default())
    }
}

impl PartialEq for AppPayload {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for AppPayload {}

/// The encoded entry an [`AppPayload`] is the body of, when known: a cheap clone of the bytes
/// that hold the entry header and then the payload itself (the payload is a slice of them).
/// `crate::format::encode_entry` uses it only for the log id and payload it was made for.
#[derive(Clone, Default)]
pub(crate) struct EntryEncoding(pub(crate) Option<Bytes>);

impl fmt::Debug for AppPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppPayload({} bytes)", self.0.len())
    }
}

impl fmt::Display for AppPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// An opaque application response, returned to the writer of an entry once it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct AppResponse(pub Bytes);

openraft::declare_raft_types!(
    /// The openraft type configuration of every Shale Raft group: opaque byte payloads and
    /// responses, `u64` node ids, [`Node`] addresses, tokio runtime, and openraft's default
    /// ("advanced") leader ids: a log id names the term and the node that proposed the entry.
    pub TypeConfig:
        D = AppPayload,
        R = AppResponse,
        NodeId = NodeId,
        Node = Node,
);

/// A log id of this configuration.
pub type LogId = openraft::LogId<openraft::impls::leader_id_adv::LeaderId<u64, NodeId>>;
/// The leader id (term, node) used in votes and log ids.
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
/// A vote of this configuration.
pub type Vote = openraft::impls::Vote<LeaderId>;
/// A log entry of this configuration.
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// An entry payload of this configuration.
pub type EntryPayload = openraft::EntryPayload<AppPayload, NodeId, Node>;
/// A membership config of this configuration.
pub type Membership = openraft::Membership<NodeId, Node>;
/// A stored membership (config plus the log id it was written at).
pub type StoredMembership = openraft::StoredMembership<LeaderId, NodeId, Node>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::SnapshotMeta<LeaderId, NodeId, Node>;

/// Builds a log id from its three parts.
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}
