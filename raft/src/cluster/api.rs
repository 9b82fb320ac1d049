//! The public domain types of the cluster layer: what the node's gRPC layer sends in and gets back.
//!
//! Everything here is plain data (no Raft, no tonic). The node converts its protobuf messages to and
//! from these types in one place; the [`crate::cluster::Cluster`] handle speaks only these.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use shale_storage::kafka_batch::KafkaCompression;
use shale_storage::{ChainHash, CodecKind, ReadCheck, StorageError};

pub use crate::{GroupId, NodeId};

/// The Raft group that holds the cluster metadata.
pub const METADATA_GROUP: GroupId = GroupId::METADATA;

/// The one table of limits (it lives in shale-storage, the crate every layer sees): the node
/// checks each request limit once, at its edge; this layer asserts them.
pub use shale_storage::limits;

/// A topic's number, allocated by the metadata group (never reused while the metadata lives).
pub type TopicId = u32;

/// How long a partition keeps records. `None` in a field means "no limit of that kind".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at most about this many bytes per partition.
    pub retention_bytes: Option<u64>,
    /// Drop records older than this many milliseconds.
    pub retention_ms: Option<u64>,
}

/// What a client asks for when creating a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// `[a-zA-Z0-9._-]{1,249}`, not `.` or `..`.
    pub name: String,
    /// Number of partitions, `1..=limits::MAX_PARTITIONS`.
    pub partitions: u32,
    /// Replicas per partition, `1..=` the number of cluster members.
    pub replication_factor: u32,
    /// Retention limits.
    pub retention: RetentionPolicy,
    /// Codec record values are compressed with (kept only where it makes a value smaller).
    pub codec: CodecKind,
}

/// A change to a topic's settings; `None` fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicUpdate {
    /// New retention limits.
    pub retention: Option<RetentionPolicy>,
    /// New codec for values produced from now on.
    pub codec: Option<CodecKind>,
}

/// Where one partition lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// Partition number, `0..partitions`.
    pub partition: u32,
    /// The Raft group that replicates it (see [`partition_group_id`]).
    pub group: GroupId,
    /// Its replicas; the first is the preferred leader and initialises the group.
    pub replicas: Vec<NodeId>,
    /// 0 at creation, +1 each time the replica list changes. Only a replica that sees epoch 0
    /// may initialise the group (a replica added later joins through the group's leader).
    pub replica_epoch: u32,
}

/// A topic as the metadata holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: TopicId,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Retention limits.
    pub retention: RetentionPolicy,
    /// Value codec.
    pub codec: CodecKind,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionAssignment>,
}

/// A topic with the live state of its partitions, as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDescription {
    /// The metadata of the topic.
    pub info: TopicInfo,
    /// One entry per partition, in partition order.
    pub partitions: Vec<PartitionState>,
}

/// The live state of one partition as known to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// Partition number.
    pub partition: u32,
    /// Its replicas (preferred leader first).
    pub replicas: Vec<NodeId>,
    /// The current leader and its address, if known here.
    pub leader: Option<(NodeId, String)>,
    /// First offset still held here (`None` if this node is not a replica, or for a moment after
    /// a purge or snapshot install moved its log start, until the offset is computed again;
    /// [`crate::cluster::Cluster::local_bounds`] computes it).
    pub log_start: Option<u64>,
    /// One past the last committed and applied offset here (`None` if this node is not a replica).
    pub high_watermark: Option<u64>,
}

/// Identifies an idempotent producer's batch: record `i` of the batch has sequence `base_sequence + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerInfo {
    /// Chosen by the producer; unique per producer session.
    pub producer_id: u64,
    /// Sequence of the batch's first record. Sequences of one producer follow each other without
    /// a gap: a batch that skips ahead waits (bounded) for the batches before it, then is refused
    /// ([`ClusterError::SequenceGap`]).
    pub base_sequence: u64,
}

/// A Kafka producer's v2 record batch, checked by the node, that may be stored as sent
/// ([`shale_storage::record_batch::FLAG_KAFKA_BATCH`]) instead of re-encoded from its records: it
/// is when the topic's codec is its compression (none, lz4 or zstd at any level) and it fits one
/// Raft entry; otherwise its records are encoded as a gRPC producer's are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaBatch {
    /// The whole batch as received: its CRC and every record checked, offset deltas `0..n`, every
    /// timestamp a create time >= 0, neither transactional nor control
    /// ([`shale_storage::kafka_batch::decode_header`] accepts it).
    pub bytes: Bytes,
    /// Its compression.
    pub compression: KafkaCompression,
    /// The first record's timestamp and the largest, ms since the Unix epoch.
    pub timestamps: (u64, u64),
}

impl KafkaBatch {
    /// Whether a topic compressing with `codec` stores this batch as sent.
    pub fn matches(&self, codec: CodecKind) -> bool {
        matches!(
            (self.compression, codec),
            (KafkaCompression::None, CodecKind::None)
                | (KafkaCompression::Lz4, CodecKind::Lz4)
                | (KafkaCompression::Zstd, CodecKind::Zstd { .. })
        )
    }
}

/// One record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceRecord {
    /// Optional key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Headers, in order (names need not be unique).
    pub headers: Vec<(String, Bytes)>,
    /// Producer-supplied time; `None` means the leader stamps its wall clock when proposing.
    pub timestamp_ms: Option<u64>,
}

impl ProduceRecord {
    /// What of this record its limits apply to ([`limits::RecordSize::check`]).
    pub fn size(&self) -> limits::RecordSize {
        limits::RecordSize::new(
            self.key.as_ref().map_or(0, Bytes::len),
            self.value.len(),
            self.headers.iter().map(|(name, value)| (name.len(), value.len())),
        )
    }
}

/// Where one stored batch of a produce landed (one per Raft entry the produce wrote, in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchAck {
    /// Offset of the batch's first record; record `i` of the batch has offset `base_offset + i`.
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// The Raft log index of the entry holding the batch (its storage offset).
    pub entry_index: u64,
    /// The storage chain hash of that entry (all replicas agree on it).
    pub chain_hash: ChainHash,
}

/// One stored log entry, as a fetch returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedEntry {
    /// Its Raft log index (storage offset).
    pub index: u64,
    /// The stored entry payload, envelope included: exactly what the chain hash covers
    /// (`chain_hash(index, previous hash, data)`), shared with the storage read, not re-encoded.
    /// A normal entry's body (after the envelope) is a record batch.
    pub data: Bytes,
    /// Whether this is a hidden batch (a duplicate, refused or undecodable one): its records are
    /// not part of the partition. Blank and membership entries have `hidden == false`; a client
    /// skips them by their kind byte.
    pub hidden: bool,
}

/// The answer to a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchResult {
    /// Consecutive log entries (no index gaps), from the requested start, up to about `max_bytes`
    /// (at least one visible batch when any has records at or past the requested offset).
    pub entries: Vec<FetchedEntry>,
    /// The storage chain hash of the entry before the first one returned (`None` when the first
    /// is index 0, or nothing was returned): a client recomputes every entry's hash from it.
    pub prev_chain_hash: Option<ChainHash>,
    /// The storage chain hash of the last entry returned, as this replica holds it (`None` when
    /// nothing was returned): a client's recomputed chain must arrive at it. With
    /// [`ReadCheck::Frames`] it is the link the next entry stores (the head for the last entry),
    /// so entries rewritten in place show as a mismatch in the answer that carries them.
    pub last_chain_hash: Option<ChainHash>,
    /// First record offset the replica that answered still holds.
    pub log_start: u64,
    /// One past the last record the replica that answered has applied (its next record offset).
    pub high_watermark: u64,
    /// The record offset to fetch next: one past the last record returned (the requested offset
    /// if no record at or past it was returned).
    pub next_offset: u64,
    /// The log index to continue from (`FetchRequest::from_index` of the next fetch): one past the
    /// last entry returned.
    pub next_index: u64,
}

/// What a fetch asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// First record offset wanted (it may lie inside a batch: the batch is returned whole).
    pub offset: u64,
    /// Start at this log index instead of at the entry holding `offset` (a consumer continuing
    /// from the previous answer's `next_index`, so the entries it gets chain on from the ones it
    /// has). Must be at or above the log start and at or below the entry holding `offset`.
    pub from_index: Option<u64>,
    /// About this many bytes of entries at most (always at least one batch if any).
    pub max_bytes: usize,
    /// If nothing is available, wait up to this long for new commits (at most
    /// `limits::MAX_FETCH_WAIT_MS`: the node caps it at its `limits.max_wait_ms`).
    pub wait: Duration,
    /// How the replica checks the entries it reads: [`ReadCheck::Chain`] re-hashes them (a
    /// replica never serves a range whose chain is broken); [`ReadCheck::Frames`] checks CRCs
    /// only and answers with the links the entries store, for a client that recomputes the chain
    /// itself and compares it with `prev_chain_hash` and `last_chain_hash`.
    pub check: ReadCheck,
}

/// A consumer group's committed position in one partition, with its lag where known here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The committed offset (the next offset the group will read).
    pub offset: u64,
    /// The partition's high watermark, if this node is a replica of it.
    pub high_watermark: Option<u64>,
    /// `high_watermark - offset` (saturating), if the high watermark is known here.
    pub lag: Option<u64>,
}

/// One consumer group as applied on this node, for metrics ([`super::Cluster::local_group_stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    /// Group name.
    pub group: String,
    /// Members now (0 for a group with only offsets).
    pub members: usize,
    /// The group epoch: bumped on every change of membership or assignment (joins, leaves,
    /// expiries, hand-overs, topic changes), so its increase counts rebalance steps.
    pub epoch: u64,
    /// Committed offsets, each with its lag where this node replicates the partition.
    pub offsets: Vec<ConsumerOffset>,
}

/// A cluster member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Its internal address (`host:port`): Raft, repair reads, forwarding between nodes.
    pub addr: String,
    /// Its client address (`host:port`): what clients are told (leaders, redirects).
    pub client_addr: String,
    /// Its Kafka listener's advertised address (`host:port`; empty: none recorded).
    pub kafka_addr: String,
}

/// Where a member is reached: by other nodes (`internal`: Raft, repair reads, forwarded requests,
/// bootstrap probes) and by clients (`client`: every leader or member address a client is told).
/// Equal when the node serves both on one listener. `kafka` is where Kafka clients reach the
/// node's Kafka listener (what Metadata responses name as the broker); empty when the member has
/// none or has not recorded it yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberAddrs {
    /// The internal listener's advertised `host:port`.
    pub internal: String,
    /// The client listener's advertised `host:port`.
    pub client: String,
    /// The Kafka listener's advertised `host:port` (empty: none).
    pub kafka: String,
}

impl MemberAddrs {
    /// One address for both (one listener), no Kafka listener.
    pub fn one(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        Self { client: addr.clone(), internal: addr, kafka: String::new() }
    }

    /// An internal and a client address, no Kafka listener.
    pub fn pair(internal: impl Into<String>, client: impl Into<String>) -> Self {
        Self { internal: internal.into(), client: client.into(), kafka: String::new() }
    }

    /// These addresses with `kafka` as the Kafka listener's.
    pub fn with_kafka(mut self, kafka: impl Into<String>) -> Self {
        self.kafka = kafka.into();
        self
    }

    /// Why these addresses cannot be recorded (internal or client empty, any over
    /// [`limits::MAX_ADDR_BYTES`]), if so.
    pub fn invalid(&self) -> Option<String> {
        [("internal", &self.internal, false), ("client", &self.client, false), ("kafka", &self.kafka, true)]
            .into_iter()
            .find(|(_, a, may_be_empty)| (a.is_empty() && !may_be_empty) || a.len() > limits::MAX_ADDR_BYTES)
            .map(|(what, a, _)| format!("{what} address of {} bytes", a.len()))
    }
}

/// The Raft state of one group as seen from this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// Topic and partition, for partition groups (`None` for the metadata group).
    pub partition: Option<(String, u32)>,
    /// Replicas per the metadata (for the metadata group: the voters).
    pub replicas: Vec<NodeId>,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: u64,
    /// Highest index known committed here.
    pub commit_index: u64,
    /// Highest index applied here.
    pub applied_index: u64,
    /// Last index in this node's log.
    pub last_log_index: u64,
    /// On the leader: each replica's lag (`last_log_index - matched`); empty elsewhere.
    pub replica_lag: Vec<(NodeId, u64)>,
}

/// What `cluster_status` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// Members per the metadata.
    pub members: Vec<MemberInfo>,
    /// The metadata group (absent before bootstrap).
    pub metadata: Option<GroupStatus>,
    /// Every partition group this node hosts, by topic then partition.
    pub partitions: Vec<GroupStatus>,
}

/// What compacting a partition did (in log indexes: retention works on whole entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactOutcome {
    /// The snapshot (checkpoint) the purge was bounded by: records below it are covered.
    pub snapshot_index: u64,
    /// The log start before.
    pub log_start_before: u64,
    /// The log start after.
    pub log_start_after: u64,
}

/// The group id of a topic partition: `(topic_id << 16) | (partition + 1)`; never 0 (the metadata
/// group) because `partition + 1 >= 1`.
pub fn partition_group_id(topic: TopicId, partition: u32) -> GroupId {
    debug_assert!(partition < limits::MAX_PARTITIONS);
    GroupId((u64::from(topic) << 16) | u64::from(partition + 1))
}

/// The topic id and partition of a partition group (the inverse of [`partition_group_id`]); `None`
/// for the metadata group and for ids no partition has.
pub fn group_partition(group: GroupId) -> Option<(TopicId, u32)> {
    let topic = TopicId::try_from(group.0 >> 16).ok().filter(|&t| t != 0)?;
    let partition = ((group.0 & 0xffff) as u32).checked_sub(1)?;
    (partition < limits::MAX_PARTITIONS).then_some((topic, partition))
}

/// Checks a topic name against the naming rules; `Err` says why not.
pub fn validate_topic_name(name: &str) -> Result<(), ClusterError> {
    let bad = |reason: &str| Err(ClusterError::InvalidTopicName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > limits::MAX_TOPIC_NAME_BYTES {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// How an error message shows a name a client sent (a topic): quoted as `{:?}` when it is at most
/// [`limits::MAX_TOPIC_NAME_BYTES`] long (every valid name is shown whole); a longer one as its
/// first [`ShownName::PREFIX_BYTES`] bytes and its length, so an error never echoes unbounded input
/// (a 10 KB name in a status message overflows the clients' header limits).
#[derive(Clone, Copy, Debug)]
pub struct ShownName<'a>(pub &'a str);

impl ShownName<'_> {
    /// Bytes of an over-long name shown.
    pub const PREFIX_BYTES: usize = 32;
}

impl fmt::Display for ShownName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.0;
        if name.len() <= limits::MAX_TOPIC_NAME_BYTES {
            return write!(f, "{name:?}");
        }
        let mut end = Self::PREFIX_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}... ({} bytes)", &name[..end], name.len())
    }
}

/// A cluster-wide total a topic creation would pass ([`ClusterError::ClusterLimit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterTotal {
    /// Topics in the cluster (`limits.max_topics`).
    Topics,
    /// Partitions (Raft groups) of all topics in the cluster (`limits.max_partitions`).
    Partitions,
}

impl ClusterTotal {
    /// The node config key that sets the limit.
    pub fn config_key(self) -> &'static str {
        match self {
            ClusterTotal::Topics => "limits.max_topics",
            ClusterTotal::Partitions => "limits.max_partitions",
        }
    }

    /// What is counted, in words.
    pub fn counted(self) -> &'static str {
        match self {
            ClusterTotal::Topics => "topics",
            ClusterTotal::Partitions => "partitions",
        }
    }
}

/// The cluster totals a topic creation must stay within, as the proposing node is configured
/// (`limits.max_topics`, `limits.max_partitions`). They travel in the command, so every replica
/// decides the same at apply time, and two creations racing cannot both pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicTotals {
    /// Most topics the cluster may hold.
    pub max_topics: u32,
    /// Most partitions (over all topics) the cluster may hold.
    pub max_partitions: u32,
}

/// What bounds the partition replicas one node takes ([`ClusterError::NodeLimit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeLimit {
    /// The configured `limits.max_partitions_per_node`.
    MaxPartitionsPerNode,
    /// The node's entry-cache budget (`memory.log_cache_bytes`): every replica needs its floor
    /// (`memory.log_cache_floor_bytes`) of it.
    LogCacheBudget,
}

impl NodeLimit {
    /// The node config key that sets the limit.
    pub fn config_key(self) -> &'static str {
        match self {
            NodeLimit::MaxPartitionsPerNode => "limits.max_partitions_per_node",
            NodeLimit::LogCacheBudget => "memory.log_cache_bytes",
        }
    }
}

/// The most partition replicas any one node may hold, as the proposing node is configured (the
/// smaller of `limits.max_partitions_per_node` and what its cache budget gives a floor to), and
/// which of the two it is. Travels in the creation command, like [`TopicTotals`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaLimit {
    /// Most partition replicas per node.
    pub max_replicas: u32,
    /// What sets it.
    pub limit: NodeLimit,
}

impl ReplicaLimit {
    /// The tighter of the configured maximum and the budget's (`budget_groups`: how many groups
    /// the cache budget gives their floor; the metadata group takes one of them).
    pub fn of(max_partitions_per_node: u32, budget_groups: usize) -> Self {
        let budget = u32::try_from(budget_groups.saturating_sub(1)).unwrap_or(u32::MAX);
        if budget < max_partitions_per_node {
            ReplicaLimit { max_replicas: budget, limit: NodeLimit::LogCacheBudget }
        } else {
            ReplicaLimit { max_replicas: max_partitions_per_node, limit: NodeLimit::MaxPartitionsPerNode }
        }
    }
}

/// Every way a cluster call can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// This node does not lead the group that must serve the call; retry at `leader` if known.
    #[error("not the leader{}", leader.as_ref().map(|(id, addr)| format!("; leader is node {id} at {addr}")).unwrap_or_default())]
    NotLeader {
        /// The leader and its address, if known.
        leader: Option<(NodeId, String)>,
    },
    /// The metadata group is not initialised yet (call `bootstrap`).
    #[error("the cluster is not bootstrapped yet")]
    NotBootstrapped,
    /// No topic of that name.
    #[error("unknown topic {}", ShownName(name))]
    UnknownTopic {
        /// The name asked for.
        name: String,
    },
    /// A topic of that name exists already.
    #[error("topic {} already exists", ShownName(name))]
    TopicExists {
        /// The name.
        name: String,
    },
    /// The topic has no such partition.
    #[error("topic {} has {count} partitions; there is no partition {partition}", ShownName(topic))]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many it has.
        count: u32,
    },
    /// This node is not a replica of the partition (ask one of `replicas`).
    #[error("node does not host {topic}/{partition}; replicas are {replicas:?}")]
    NotReplica {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// Its replicas.
        replicas: Vec<NodeId>,
    },
    /// The topic name breaks the naming rules.
    #[error("invalid topic name {}: {reason}", ShownName(name))]
    InvalidTopicName {
        /// The name.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Creating a topic would pass a cluster total; nothing was created.
    #[error(
        "creating topic {} ({requested} partitions) would make {} {} in the cluster, over {} = {limit}",
        ShownName(topic), current + requested, total.counted(), total.config_key()
    )]
    ClusterLimit {
        /// The topic asked for.
        topic: String,
        /// Which total.
        total: ClusterTotal,
        /// Its limit.
        limit: u64,
        /// What the cluster holds now.
        current: u64,
        /// What the creation adds (1 topic, or its partitions).
        requested: u64,
    },
    /// Creating the topic would put more partition replicas on a node than it takes.
    #[error(
        "creating topic {} ({requested} partition replicas on node {node}) would make {} on that node, over {} = {max}",
        ShownName(topic), current + requested, limit.config_key()
    )]
    NodeLimit {
        /// The topic asked for.
        topic: String,
        /// The first node (lowest id) that would pass the limit.
        node: NodeId,
        /// Which limit.
        limit: NodeLimit,
        /// Its value (replicas per node).
        max: u64,
        /// Replicas the node holds now.
        current: u64,
        /// Replicas the creation would add to it.
        requested: u64,
    },
    /// A request field is out of its allowed range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The replication factor asks for more nodes than the cluster has.
    #[error("replication factor {requested} needs {requested} nodes, the cluster has {available}")]
    NotEnoughNodes {
        /// Replicas asked for.
        requested: u32,
        /// Members available.
        available: u32,
    },
    /// The fetch offset (a record offset) is outside what the replica holds.
    #[error("offset {requested} is out of range [{start}, {end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// First offset held.
        start: u64,
        /// The high watermark (reading at it waits for new data).
        end: u64,
    },
    /// An idempotent producer sent a sequence below what it already wrote, and the original
    /// offsets are no longer remembered (outside the dedup window).
    #[error(
        "producer {producer_id}: sequence {sequence} was already written (last is {last_sequence}) and is outside the dedup window"
    )]
    DuplicateSequenceOutOfWindow {
        /// The producer.
        producer_id: u64,
        /// The sequence retried.
        sequence: u64,
        /// The last sequence written by that producer.
        last_sequence: u64,
    },
    /// An idempotent producer's batch skips sequences: the partition expects `expected` next from
    /// that producer (an earlier batch is not written yet, e.g. still being retried). Nothing of
    /// the batch was written; the producer sends it again after the batch before it.
    #[error("producer {producer_id}: sequence {sequence} skips ahead; the partition expects sequence {expected} next")]
    SequenceGap {
        /// The producer.
        producer_id: u64,
        /// The batch's first sequence.
        sequence: u64,
        /// The sequence the partition expects next from the producer.
        expected: u64,
    },
    /// The partition refused a batch this leader proposed, because the leader's prediction of
    /// the partition's next offset or of a producer's sequence was out of date (a leader change
    /// or an earlier failed proposal). Nothing of that batch was written; the leader resyncs
    /// before its next proposal. Retryable: send the request again.
    #[error("the partition refused a proposed batch at log index {entry_index}: {reason}; retry")]
    ProposalRefused {
        /// The log index of the refused entry.
        entry_index: u64,
        /// Why.
        reason: ProposalRefusal,
    },
    /// A fetch's `from_index` is not a log index this replica can serve from.
    #[error("fetch from log index {requested}: {reason}")]
    InvalidFromIndex {
        /// The index asked for.
        requested: u64,
        /// Why it cannot be served.
        reason: FromIndexProblem,
    },
    /// An idempotent retry: the batch was already written (its first record is durable at
    /// `offset`), but its entry has since been purged by retention, so its chain hash can no
    /// longer be reported.
    #[error(
        "producer {producer_id}: sequence {sequence} was already written at offset {offset}, since purged by retention"
    )]
    DuplicateOfPurgedRecord {
        /// The producer.
        producer_id: u64,
        /// The sequence retried.
        sequence: u64,
        /// Where the original was written.
        offset: u64,
    },
    /// A node added to a group did not catch up with the leader in time, so it was not made a
    /// voter (nor a member): it was removed from the group again.
    #[error(
        "node {id} did not catch up with group {group} within {waited_ms} ms (replicated up to {}, leader at {leader_last}); it was removed again and is not a member",
        matched.map_or_else(|| "nothing".to_string(), |m| m.to_string())
    )]
    NotCaughtUp {
        /// The node.
        id: NodeId,
        /// The group it was to join.
        group: GroupId,
        /// The last index the leader knows the node holds (`None`: it never answered).
        matched: Option<u64>,
        /// The leader's last log index at the end of the wait.
        leader_last: u64,
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// The node no longer has a member of that id / the member exists with another address.
    #[error("member {id}: {reason}")]
    Membership {
        /// The node id.
        id: NodeId,
        /// What is wrong.
        reason: String,
    },
    /// The consumer group has no member of that id: it left, or its session expired (a zombie).
    /// The member joins again.
    #[error("group {group:?} has no member {member_id:?} (it left or its session expired): join again")]
    UnknownGroupMember {
        /// Group.
        group: String,
        /// Member id.
        member_id: String,
    },

    /// A commit from a member that does not own a partition it names: refused whole.
    #[error("commit of member {member_id:?} of group {group:?} refused: {reason}")]
    FencedMember {
        /// Group.
        group: String,
        /// Member id.
        member_id: String,
        /// What is wrong.
        reason: String,
    },

    /// The operation needs a consumer group without members.
    #[error("group {group:?} has {members} member(s); this needs a group without members")]
    GroupNotEmpty {
        /// Group.
        group: String,
        /// Its members.
        members: u32,
    },

    /// No consumer group of that name.
    #[error("no consumer group {group:?}")]
    UnknownGroup {
        /// Group.
        group: String,
    },
    /// A quorum could not be reached in time.
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        waited_ms: u64,
    },
    /// The node is shutting down.
    #[error("the cluster handle is shut down")]
    Shutdown,
    /// The Raft layer failed (other than "not leader" and timeouts, which map to their own variants).
    #[error("raft: {0}")]
    Raft(#[source] crate::RaftError),
    /// Local storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Bytes from the log or a snapshot could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
}

/// Why a partition refused a batch its leader proposed ([`ClusterError::ProposalRefused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalRefusal {
    /// The batch was numbered from a stale next offset.
    #[error("base offset {proposed} is not the partition's next offset {expected}")]
    OffsetMismatch {
        /// The base offset the leader gave the batch.
        proposed: u64,
        /// The partition's next offset.
        expected: u64,
    },
    /// The batch skips sequences of its producer.
    #[error("producer {producer_id}: sequence {sequence} skips ahead of {expected}")]
    OutOfSequence {
        /// The producer.
        producer_id: u64,
        /// The batch's first sequence.
        sequence: u64,
        /// The sequence the partition expects next.
        expected: u64,
    },
    /// The partition could not read the batch (a bug of the leader that encoded it).
    #[error("the entry is not a record batch")]
    Invalid,
    /// The outcome said the producer already wrote the batch, where the leader predicted new
    /// sequences (its prediction was stale).
    #[error("producer {producer_id}: sequence {sequence} was already written")]
    UnexpectedDuplicate {
        /// The producer.
        producer_id: u64,
        /// The batch's first sequence.
        sequence: u64,
    },
}

/// Why a fetch's `from_index` cannot be served ([`ClusterError::InvalidFromIndex`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FromIndexProblem {
    /// Below the replica's log start (purged): fetch by offset instead.
    #[error("below the log start index {log_start}")]
    BelowLogStart {
        /// The first log index held.
        log_start: u64,
    },
    /// Past the entry holding the requested offset: the entry at `batch_index` already starts
    /// past it.
    #[error("past the entry holding offset {offset} (the batch at index {batch_index} starts at offset {base_offset})")]
    PastOffset {
        /// The requested offset.
        offset: u64,
        /// A batch at or after `from_index`.
        batch_index: u64,
        /// Its base offset (above `offset`).
        base_offset: u64,
    },
    /// Past the last entry applied here.
    #[error("past the last applied index {applied:?}")]
    PastApplied {
        /// The last applied index (`None`: nothing applied).
        applied: Option<u64>,
    },
}

impl From<crate::RaftError> for ClusterError {
    /// Keeps "not leader" and timeouts actionable; everything else is wrapped.
    fn from(e: crate::RaftError) -> Self {
        match e {
            crate::RaftError::NotLeader { leader, .. } => ClusterError::NotLeader { leader },
            crate::RaftError::Timeout { group, what, timeout_ms } => {
                ClusterError::Timeout { what: format!("{what} in group {group}"), waited_ms: timeout_ms }
            }
            other => ClusterError::Raft(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_replica_limit_is_the_tighter_of_the_configured_one_and_the_budgets() {
        // 100 groups fit the budget: the metadata group takes one.
        assert_eq!(ReplicaLimit::of(4096, 100), ReplicaLimit { max_replicas: 99, limit: NodeLimit::LogCacheBudget });
        assert_eq!(
            ReplicaLimit::of(50, 100),
            ReplicaLimit { max_replicas: 50, limit: NodeLimit::MaxPartitionsPerNode }
        );
        assert_eq!(ReplicaLimit::of(10, 0).max_replicas, 0);
    }

    use super::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        for bad in ["", ".", "..", "a b", "ü", &"x".repeat(250)] {
            assert!(matches!(validate_topic_name(bad), Err(ClusterError::InvalidTopicName { .. })), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(249)).is_ok());
    }

    #[test]
    fn group_partition_inverts_partition_group_id() {
        for (topic, partition) in [(1, 0), (2, 7), (TopicId::MAX, limits::MAX_PARTITIONS - 1)] {
            assert_eq!(group_partition(partition_group_id(topic, partition)), Some((topic, partition)));
        }
        assert_eq!(group_partition(METADATA_GROUP), None);
        assert_eq!(group_partition(GroupId(1)), None, "topic id 0");
        assert_eq!(group_partition(GroupId(2 << 16)), None, "partition bits 0");
        assert_eq!(group_partition(GroupId((1 << 48) | 1)), None, "topic id past u32");
    }

    #[test]
    fn group_ids_never_collide_with_metadata() {
        assert_eq!(partition_group_id(0, 0), GroupId(1));
        assert_eq!(partition_group_id(1, 0), GroupId((1 << 16) | 1));
        assert_ne!(partition_group_id(3, 7), partition_group_id(7, 3));
        assert_ne!(partition_group_id(0, 0), METADATA_GROUP);
    }
}
