//! The data path of [`Cluster`]: produce, fetch, offsets, and per-partition operations.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shale_storage::record_batch::{self, NewRecord};
use shale_storage::{ChainHash, ChainVerification, Codec, CodecKind, Offset, StorageError};

use super::partition::{ApplyOutcome, BatchPosition};
use super::proposer::{Predicted, Proposal, UnplacedBatch};
use super::{Cluster, LocalPartition};
use crate::RaftError;
use crate::cluster::api::*;

impl Cluster {
    /// The running local group of a partition, or why there is none.
    pub(super) fn local_partition(&self, topic: &str, partition: u32) -> Result<Arc<LocalPartition>, ClusterError> {
        // On every produce and fetch: look the group up under the metadata lock, cloning nothing
        // (a topic's whole assignment is hundreds of entries on a topic of many partitions).
        let group = {
            let metadata = self.metadata.read();
            let info = metadata.topic(topic).ok_or_else(|| ClusterError::UnknownTopic { name: topic.to_string() })?;
            let assignment = info.partitions.get(partition as usize).ok_or_else(|| ClusterError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                count: info.partitions.len() as u32,
            })?;
            assignment.group
        };
        self.partitions.read().get(&group).cloned().ok_or_else(|| ClusterError::NotReplica {
            topic: topic.to_string(),
            partition,
            replicas: self.assignment(topic, partition).map(|a| a.replicas).unwrap_or_default(),
        })
    }

    /// The codec a topic's new batches are compressed with.
    fn topic_codec(&self, topic: &str) -> Result<CodecKind, ClusterError> {
        let metadata = self.metadata.read();
        let info = metadata.topic(topic).ok_or_else(|| ClusterError::UnknownTopic { name: topic.to_string() })?;
        Ok(info.codec)
    }

    /// This replica's view of one partition: replicas, leader, log start and high watermark here.
    /// `NotReplica` if this node does not host it.
    pub fn local_partition_state(&self, topic: &str, partition: u32) -> Result<PartitionState, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        Ok(PartitionState {
            partition,
            replicas: self.assignment(topic, partition).map(|a| a.replicas).unwrap_or_default(),
            leader: local.group.leader().map(|(id, node)| (id, node.addr)),
            log_start: local.cached_log_start()?,
            high_watermark: Some(local.high_watermark()),
        })
    }

    /// [`Self::local_partition`], but looked up again for a partition this node should host and
    /// soon will, waiting at most [`Self::leader_wait`] in all: a topic or partition unknown here
    /// while this node's metadata is behind what it knows the metadata leader committed (a topic
    /// created a moment ago, its creator already answered) once the metadata applied that far,
    /// and a partition the applied metadata assigns to this node whose group is not running yet
    /// (the reconcile loop is starting it, or restarting it after an error) once it runs. A
    /// client may send a new partition's first request to the replica it was told leads it,
    /// marked not to be forwarded, before that replica applied the topic or started its group;
    /// without the second wait that replica refused it as `NotLeader` naming itself (the
    /// assignment's first replica is the leader a node names for a group it does not run).
    /// Every client-facing lookup (produce, fetch, ListOffsets) goes through it.
    async fn local_partition_current(&self, topic: &str, partition: u32) -> Result<Arc<LocalPartition>, ClusterError> {
        let deadline = tokio::time::Instant::now() + self.leader_wait();
        let mut found = self.local_partition(topic, partition);
        if matches!(found, Err(ClusterError::UnknownTopic { .. } | ClusterError::UnknownPartition { .. }))
            && self.metadata_catch_up(self.leader_wait()).await
        {
            found = self.local_partition(topic, partition);
        }
        let me = self.config.node_id;
        // Assigned here by the applied metadata, its group not running here (yet).
        let starting_here = |found: &Result<Arc<LocalPartition>, ClusterError>| match found {
            Err(ClusterError::NotReplica { replicas, .. }) => replicas.contains(&me),
            _ => false,
        };
        if !starting_here(&found) {
            return found;
        }
        let mut added = self.partition_starts.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            // Looked up after subscribing, so a group added since the last look is not missed.
            found = self.local_partition(topic, partition);
            if !starting_here(&found) || *shutdown.borrow_and_update() {
                return found;
            }
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, added.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        return found;
                    }
                }
                _ = shutdown.changed() => return found,
            }
        }
    }

    /// Waits (at most `wait`) until this node's metadata applied everything it knows the metadata
    /// group committed; `false` if it did not get there, or had nothing to wait for.
    ///
    /// A follower of the metadata group that applied all it heard of may still not have heard of
    /// the latest commit: a topic's creator is answered once the metadata leader commits, and the
    /// commit index reaches followers a moment later. So a follower with nothing left to apply
    /// waits (at most two heartbeat intervals, within `wait`) for its next metadata change to
    /// apply; `true` if one did.
    async fn metadata_catch_up(&self, wait: Duration) -> bool {
        let meta = self.meta();
        let m = meta.metrics();
        let committed = m.cluster_committed.map(|l| l.index);
        let applied = |m: &openraft::RaftMetrics<crate::TypeConfig>| m.last_applied.map(|l| l.index) >= committed;
        if applied(&m) {
            if meta.is_leader() {
                return false;
            }
            let now = m.last_applied.map(|l| l.index);
            let notice = Duration::from_millis(self.config.raft.heartbeat_interval_ms.saturating_mul(2)).min(wait);
            let next = |m: &openraft::RaftMetrics<crate::TypeConfig>| m.last_applied.map(|l| l.index) > now;
            return meta.wait_metrics("the next metadata change applied", notice, next).await.is_ok();
        }
        meta.wait_metrics("metadata applied to the committed index", wait, applied).await.is_ok()
    }

    /// The local partition if this node leads it; otherwise `NotLeader` with the best leader known.
    fn leading_partition(&self, topic: &str, partition: u32) -> Result<Arc<LocalPartition>, ClusterError> {
        match self.local_partition(topic, partition) {
            Ok(p) if p.group.is_leader() => Ok(p),
            Ok(_) | Err(ClusterError::NotReplica { .. }) => {
                Err(ClusterError::NotLeader { leader: self.leader_of(topic, partition) })
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::leading_partition`], but when this node hosts the partition and its group knows no
    /// leader right now (an election, or a leadership transfer, under way), waits up to
    /// [`Self::leader_wait`] for one first: a client then meets the leader change as latency
    /// instead of a `NotLeader` without a hint that it can only retry blindly.
    async fn leading_partition_soon(&self, topic: &str, partition: u32) -> Result<Arc<LocalPartition>, ClusterError> {
        if let Ok(p) = self.local_partition_current(topic, partition).await
            && p.group.leader().is_none()
        {
            let _ =
                p.group.wait_metrics("a partition leader", self.leader_wait(), |m| m.current_leader.is_some()).await;
        }
        self.leading_partition(topic, partition)
    }

    /// How long a request waits for a leaderless group it hosts to elect one: two election
    /// timeouts (an election that splits once), at most a quarter of the request timeout.
    fn leader_wait(&self) -> Duration {
        let election = Duration::from_millis(self.config.raft.election_timeout_max_ms.saturating_mul(2));
        election.min(self.timeout() / 4)
    }

    /// The partition's leader: the local group's view if this node hosts it, else the preferred
    /// replica as a hint (a wrong hint answers `NotLeader` with the real leader).
    pub fn leader_of(&self, topic: &str, partition: u32) -> Option<(NodeId, String)> {
        match self.local_partition(topic, partition) {
            Ok(p) => p.group.leader().map(|(id, node)| (id, node.addr)),
            Err(_) => {
                let first = *self.assignment(topic, partition)?.replicas.first()?;
                Some((first, self.member_addr(first)?))
            }
        }
    }

    /// Appends records and returns once a majority has them: one [`BatchAck`] per stored batch,
    /// in order. The records are stored as one record batch per Raft entry (a request larger than
    /// about [`limits::BATCH_TARGET_BYTES`] of records is split into consecutive batches, proposed
    /// together), and get consecutive dense offsets. With `producer`, record `i` has sequence
    /// `base_sequence + i`, and a retry is written once: it is answered with the original batches.
    /// A batch whose sequences are ahead of what its producer wrote waits (up to half the request
    /// timeout) for the batches before it, then is refused ([`ClusterError::SequenceGap`], nothing
    /// written). Partition leader only. The records must be within the limits
    /// ([`limits::RecordSize::check`], 1..=[`limits::MAX_RECORDS_PER_PRODUCE`] of them), which the
    /// node checks at its edge; this asserts them. Record bytes are copied once, into the batch.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<ProduceRecord>,
        producer: Option<ProducerInfo>,
    ) -> Result<Vec<BatchAck>, ClusterError> {
        self.produce_kafka(topic, partition, records, None, producer).await
    }

    /// [`Cluster::produce`] of the records of one Kafka batch: with `kafka`, the batch is stored
    /// as sent, as one entry, when the topic's codec is its compression and it fits one Raft
    /// entry ([`KafkaBatch::matches`]), so a Kafka fetch returns it without re-encoding; else
    /// `records` (the same records, decoded) are stored as [`Cluster::produce`] stores them.
    pub async fn produce_kafka(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<ProduceRecord>,
        kafka: Option<KafkaBatch>,
        producer: Option<ProducerInfo>,
    ) -> Result<Vec<BatchAck>, ClusterError> {
        // The node checked the batch (and each record) against its limits at its edge.
        debug_assert!((1..=limits::MAX_RECORDS_PER_PRODUCE).contains(&records.len()), "{} records", records.len());
        if let Some(p) = producer
            && p.base_sequence.checked_add(records.len() as u64).is_none()
        {
            return Err(ClusterError::InvalidArgument {
                field: "base_sequence",
                reason: "sequence overflows u64".into(),
            });
        }
        let mut watch = SlowProduce::new(topic, partition);
        let local = self.leading_partition_soon(topic, partition).await?;
        if let Some(p) = producer {
            let known = local.state.read().known_retry(p.producer_id, p.base_sequence, records.len());
            if let Some(batches) = known {
                return self.all_acknowledged(&local, batches, p).await;
            }
        }
        let codec = self.topic_codec(topic)?;
        let as_sent = kafka
            .filter(|k| k.matches(codec) && record_batch::HEADER_LEN + k.bytes.len() <= limits::RAFT_PAYLOAD_BYTES);
        let batches = match as_sent {
            Some(k) => {
                let record_count = records.len() as u32;
                let seq = producer.map(|p| (p.producer_id, p.base_sequence));
                let bytes = record_batch::encode_kafka_batch(&k.bytes, 0, record_count, seq, k.timestamps);
                vec![UnplacedBatch { bytes, record_count, producer: seq }]
            }
            None => {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                split_into_batches(records, producer, now_ms, codec.codec().as_ref())
            }
        };
        watch.stage = "propose";
        let proposal = local
            .proposer
            .propose(&local.group, &local.state, batches, self.timeout())
            .await
            .inspect_err(|e| watch.failed(e))?;
        let pending = match proposal {
            Proposal::Retry(batches) => {
                let p = producer.expect("only a producer's request is a retry");
                return self.all_acknowledged(&local, batches, p).await;
            }
            Proposal::Pending(in_flight) => in_flight,
        };
        watch.stage = "commit";
        let settled = tokio::time::timeout(self.timeout(), pending.settle())
            .await
            .map_err(|_| ClusterError::Timeout {
                what: "produce commit".into(),
                waited_ms: self.config.request_timeout_ms,
            })
            .inspect_err(|e| watch.failed(e))?;
        watch.stage = "done";
        let mut acks = Vec::with_capacity(settled.len());
        for s in settled {
            let written = s.result?;
            let refused = |reason| ClusterError::ProposalRefused { entry_index: written.index, reason };
            let ack = match ApplyOutcome::decode(&written.response)? {
                ApplyOutcome::Appended { base_offset, record_count } => {
                    let position = BatchPosition { base_offset, record_count, entry_index: written.index };
                    self.ack(&local, position).await?
                }
                ApplyOutcome::Duplicate { original, last_sequence } => {
                    let p = producer.ok_or_else(|| ClusterError::Decode {
                        what: "produce reply",
                        reason: "duplicate reported for a batch without producer".into(),
                    })?;
                    let sequence = p.base_sequence;
                    if s.predicted != Predicted::Duplicate {
                        return Err(refused(ProposalRefusal::UnexpectedDuplicate {
                            producer_id: p.producer_id,
                            sequence,
                        }));
                    }
                    match original {
                        Some(b) => self.acknowledged(&local, b, p).await?,
                        None => {
                            return Err(ClusterError::DuplicateSequenceOutOfWindow {
                                producer_id: p.producer_id,
                                sequence,
                                last_sequence,
                            });
                        }
                    }
                }
                ApplyOutcome::OutOfSequence { expected } => {
                    let p = producer.ok_or_else(|| ClusterError::Decode {
                        what: "produce reply",
                        reason: "sequence gap reported for a batch without producer".into(),
                    })?;
                    return Err(refused(ProposalRefusal::OutOfSequence {
                        producer_id: p.producer_id,
                        sequence: p.base_sequence,
                        expected,
                    }));
                }
                ApplyOutcome::OffsetMismatch { expected } => {
                    let proposed = match s.predicted {
                        Predicted::Appended { base_offset } => base_offset,
                        Predicted::Duplicate => expected,
                    };
                    return Err(refused(ProposalRefusal::OffsetMismatch { proposed, expected }));
                }
                ApplyOutcome::Invalid => return Err(refused(ProposalRefusal::Invalid)),
            };
            acks.push(ack);
        }
        Ok(acks)
    }

    /// The acknowledgement of a batch written at `position`. Its chain hash is the one this
    /// replica's append computed when it stored the entry (the record is not hashed again while the
    /// entry is in the log's in-memory tail; an older one is asked of storage).
    async fn ack(&self, local: &LocalPartition, position: BatchPosition) -> Result<BatchAck, ClusterError> {
        Ok(BatchAck {
            base_offset: position.base_offset,
            record_count: position.record_count,
            entry_index: position.entry_index,
            chain_hash: local.group.appended_chain_hash(position.entry_index).await?,
        })
    }

    /// The acknowledgements of a retry's batches, in order (see [`Cluster::acknowledged`]).
    async fn all_acknowledged(
        &self,
        local: &LocalPartition,
        batches: Vec<BatchPosition>,
        p: ProducerInfo,
    ) -> Result<Vec<BatchAck>, ClusterError> {
        let mut acks = Vec::with_capacity(batches.len());
        for b in batches {
            acks.push(self.acknowledged(local, b, p).await?);
        }
        Ok(acks)
    }

    /// The acknowledgement of a retried batch originally written at `position` by producer `p`:
    /// [`ClusterError::DuplicateOfPurgedRecord`] if its entry was purged since.
    async fn acknowledged(
        &self,
        local: &LocalPartition,
        position: BatchPosition,
        p: ProducerInfo,
    ) -> Result<BatchAck, ClusterError> {
        self.ack(local, position).await.map_err(|e| match e {
            ClusterError::Raft(ref r) if out_of_range(r).is_some_and(|(start, _)| position.entry_index < start) => {
                ClusterError::DuplicateOfPurgedRecord {
                    producer_id: p.producer_id,
                    sequence: p.base_sequence,
                    offset: position.base_offset,
                }
            }
            e => e,
        })
    }

    /// Stored entries from the one holding record `req.offset` (or from `req.from_index`), applied
    /// on this replica, as stored (see [`FetchResult`]). If no record at or past `req.offset` is
    /// applied yet, waits up to `req.wait` for one. Any replica serves it. Records are not decoded:
    /// a batch is found from the sparse offset index and the batch headers.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResult, ClusterError> {
        let local = self.local_partition_current(&req.topic, req.partition).await?;
        let group = &local.group;
        // The node capped the wait at its `limits.max_wait_ms` (at most MAX_FETCH_WAIT_MS).
        debug_assert!(req.wait <= Duration::from_millis(limits::MAX_FETCH_WAIT_MS), "{:?}", req.wait);
        let deadline = tokio::time::Instant::now() + req.wait;
        let max_bytes = req.max_bytes.max(1);
        let mut applied = group.subscribe_applied();
        let log_start = self.record_log_start(&local).await?;
        let hw = local.high_watermark();
        if req.offset < log_start || req.offset > hw {
            return Err(ClusterError::OffsetOutOfRange { requested: req.offset, start: log_start, end: hw });
        }
        if let Some(from) = req.from_index {
            let start = group.log_start()?;
            if from < start {
                return Err(ClusterError::InvalidFromIndex {
                    requested: from,
                    reason: FromIndexProblem::BelowLogStart { log_start: start },
                });
            }
            let applied_index = group.applied_index();
            if applied_index.is_none_or(|a| from > a + 1) {
                return Err(ClusterError::InvalidFromIndex {
                    requested: from,
                    reason: FromIndexProblem::PastApplied { applied: applied_index },
                });
            }
        }
        loop {
            applied.borrow_and_update();
            if req.offset < local.high_watermark() {
                return self.read_batches(&local, &req, max_bytes).await;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(ClusterError::Shutdown),
                Err(_) => {
                    // Nothing at or past the offset yet: every applied entry holds records below it.
                    let next_index = req.from_index.unwrap_or_else(|| group.applied_index().map_or(0, |a| a + 1));
                    return Ok(FetchResult {
                        entries: Vec::new(),
                        prev_chain_hash: None,
                        last_chain_hash: None,
                        log_start: self.record_log_start(&local).await?,
                        high_watermark: local.high_watermark(),
                        next_offset: req.offset,
                        next_index,
                    });
                }
            }
        }
    }

    /// The entries of a fetch whose offset is below the high watermark (so the batch holding it is
    /// applied here): from `from_index`, or from the entry holding the offset, found from the
    /// sparse index (the closest point at or below, else the log start) and a scan of batch headers.
    async fn read_batches(
        &self,
        local: &LocalPartition,
        req: &FetchRequest,
        max_bytes: usize,
    ) -> Result<FetchResult, ClusterError> {
        let group = &local.group;
        let offset = req.offset;
        let log_start_index = group.log_start()?;
        // Without `from_index`, entries before the batch holding `offset` are skipped.
        let (mut cursor, mut skipping) = match req.from_index {
            Some(from) => (from, false),
            None => {
                let floor = local.state.read().index_floor(offset).map_or(log_start_index, |(_, i)| i);
                (floor.max(log_start_index), true)
            }
        };
        let mut entries = Vec::new();
        let mut prev_chain_hash = None;
        let mut last_chain_hash = None;
        let mut bytes = 0usize;
        let mut found = false;
        let mut next_offset = offset;
        let chunk = max_bytes.max(SCAN_CHUNK_BYTES);
        'read: loop {
            // Once the batch holding `offset` is found, read only what the answer still has room
            // for: the entries read are then exactly the entries answered, so the storage's read
            // cursor (after the last entry read) is where this consumer's next fetch starts, and
            // that fetch chains from it instead of re-hashing from the sparse anchor below.
            let want = if found { max_bytes.saturating_sub(bytes).max(1) } else { chunk };
            let read =
                group.read_committed_checked(cursor, want, req.check).await.map_err(|e| match out_of_range(&e) {
                    Some((start, _)) => ClusterError::InvalidFromIndex {
                        requested: cursor,
                        reason: FromIndexProblem::BelowLogStart { log_start: start },
                    },
                    None => e.into(),
                })?;
            if read.is_empty() {
                break;
            }
            for e in read {
                debug_assert_eq!(e.index, cursor, "read_committed returns consecutive entries");
                cursor = e.index + 1;
                let batch = match e.payload() {
                    Some(body) if local.state.read().is_visible(e.index) => {
                        Some(record_batch::decode_header(&body).map_err(|err| ClusterError::Decode {
                            what: "stored record batch",
                            reason: err.to_string(),
                        })?)
                    }
                    _ => None,
                };
                if let Some(h) = &batch
                    && !found
                {
                    if h.base_offset > offset {
                        return Err(ClusterError::InvalidFromIndex {
                            requested: req.from_index.unwrap_or(e.index),
                            reason: FromIndexProblem::PastOffset {
                                offset,
                                batch_index: e.index,
                                base_offset: h.base_offset,
                            },
                        });
                    }
                    if h.end_offset() > offset {
                        found = true;
                        skipping = false;
                    }
                }
                if skipping {
                    continue;
                }
                if entries.is_empty() {
                    prev_chain_hash = (e.index > 0).then_some(e.prev_hash);
                }
                if let Some(h) = &batch {
                    next_offset = next_offset.max(h.end_offset());
                }
                bytes += e.data.len();
                last_chain_hash = Some(e.chain_hash);
                let hidden = e.kind == crate::format::entry::KIND_NORMAL && batch.is_none();
                entries.push(FetchedEntry { index: e.index, data: e.data, hidden });
                if found && bytes >= max_bytes {
                    break 'read;
                }
            }
        }
        let next_index = entries.last().map_or(cursor, |e| e.index + 1);
        Ok(FetchResult {
            entries,
            prev_chain_hash,
            last_chain_hash,
            log_start: self.record_log_start(local).await?,
            high_watermark: local.high_watermark(),
            next_offset,
            next_index,
        })
    }

    /// The first record offset this replica holds: the base offset of the first visible batch at
    /// or after the log start index (the next offset if there is none). Cached per log start.
    pub(super) async fn record_log_start(&self, local: &LocalPartition) -> Result<u64, ClusterError> {
        let start_index = local.group.log_start()?;
        if start_index == 0 {
            return Ok(0);
        }
        if let Some((index, offset)) = *local.log_start_offset.lock()
            && index == start_index
        {
            return Ok(offset);
        }
        // A snapshot being installed moves the log start before the state machine holds the
        // snapshot's state (the checkpoint is written, then the state restored): computed in
        // between, the offset would come from the old state (its high watermark) and stay cached
        // for the new log start. Wait for the state to cover everything below the log start.
        local.group.wait_applied(start_index - 1, LOG_START_STATE_WAIT).await?;
        let mut cursor = start_index;
        let offset = loop {
            let read = local.group.read_committed(cursor, SCAN_CHUNK_BYTES).await?;
            let Some(last) = read.last() else { break local.high_watermark() };
            cursor = last.index + 1;
            let first = read.iter().find_map(|e| {
                let body = e.payload()?;
                local.state.read().is_visible(e.index).then(|| record_batch::decode_header(&body))
            });
            match first {
                Some(Ok(h)) => break h.base_offset,
                Some(Err(e)) => {
                    return Err(ClusterError::Decode { what: "stored record batch", reason: e.to_string() });
                }
                None => continue,
            }
        };
        *local.log_start_offset.lock() = Some((start_index, offset));
        Ok(offset)
    }

    /// The offset of the first record of a partition whose timestamp is at or after
    /// `timestamp_ms` (Kafka's ListOffsets by timestamp), among the records this replica holds and
    /// has applied; `None` if every one is older (a reader then starts at the end). Records are in
    /// offset order, not time order (producers stamp them), so this is the first in offset order,
    /// as in Kafka. Any replica answers from its own log: the sparse index's running maximum
    /// timestamps ([`super::partition::PartitionMachine::time_floor`]) give where to start, then
    /// at most [`super::partition::INDEX_EVERY`] visible batch headers are read and one batch is
    /// decoded ([`record_batch::offset_for_time`]). `NotReplica` if this node does not host it.
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, ClusterError> {
        let local = self.local_partition_current(topic, partition).await?;
        let (floor, untimed_below, max_timestamp, applied) = {
            let s = local.state.read();
            (s.time_floor(timestamp_ms), s.untimed_below(), s.max_timestamp(), s.last_applied())
        };
        let log_start = local.group.log_start()?;
        if log_start < untimed_below
            && let Some(offset) = self.scan_for_time(&local, log_start, untimed_below, timestamp_ms).await?
        {
            return Ok(Some(offset));
        }
        if max_timestamp < timestamp_ms {
            return Ok(None);
        }
        let from = floor.unwrap_or(0).max(log_start).max(untimed_below);
        self.scan_for_time(&local, from, applied + 1, timestamp_ms).await
    }

    /// The first record at or after `timestamp_ms` in the visible batches of log entries
    /// `[from, to)`, reading batch headers and decoding only a batch whose largest timestamp
    /// reaches the time.
    async fn scan_for_time(
        &self,
        local: &LocalPartition,
        from: u64,
        to: u64,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, ClusterError> {
        let decode_error =
            |e: record_batch::BatchError| ClusterError::Decode { what: "stored record batch", reason: e.to_string() };
        let mut cursor = from;
        // The batch sought is at most INDEX_EVERY visible batches on: start with small reads (a
        // few small batches' worth) and double, so small batches are not read by the hundred.
        let mut chunk = TIME_SCAN_FIRST_CHUNK_BYTES;
        while cursor < to {
            let read = local.group.read_committed(cursor, chunk).await?;
            chunk = (chunk * 2).min(SCAN_CHUNK_BYTES);
            if read.is_empty() {
                break;
            }
            for e in read {
                if e.index >= to {
                    return Ok(None);
                }
                cursor = e.index + 1;
                let Some(body) = e.payload() else { continue };
                if !local.state.read().is_visible(e.index) {
                    continue;
                }
                if record_batch::decode_header(&body).map_err(decode_error)?.max_timestamp_ms < timestamp_ms {
                    continue;
                }
                if let Some(offset) =
                    record_batch::offset_for_time(&body, &self.codecs, timestamp_ms).map_err(decode_error)?
                {
                    return Ok(Some(offset));
                }
            }
        }
        Ok(None)
    }

    /// `(log_start, high_watermark)` of a partition in record offsets on this replica (no
    /// read-index: a follower may lag the leader). `NotReplica` if this node does not host it.
    pub async fn local_bounds(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError> {
        let local = self.local_partition_current(topic, partition).await?;
        Ok((self.record_log_start(&local).await?, local.high_watermark()))
    }

    /// `(log_start, high_watermark)` of a partition in record offsets, confirmed by read-index on
    /// its leader.
    pub async fn end_offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError> {
        let local = self.leading_partition_soon(topic, partition).await?;
        tokio::time::timeout(self.timeout(), local.group.ensure_linearizable()).await.map_err(|_| {
            ClusterError::Timeout { what: "partition read-index".into(), waited_ms: self.config.request_timeout_ms }
        })??;
        Ok((self.record_log_start(&local).await?, local.high_watermark()))
    }

    /// Moves a partition's leadership to `to` (one of its replicas). Partition leader only.
    pub async fn transfer_leader(&self, topic: &str, partition: u32, to: NodeId) -> Result<(), ClusterError> {
        let local = self.leading_partition(topic, partition)?;
        let replicas = self.assignment(topic, partition).map(|a| a.replicas).unwrap_or_default();
        if !replicas.contains(&to) {
            return Err(ClusterError::InvalidArgument {
                field: "to",
                reason: format!("node {to} is not a replica of {topic}/{partition} ({replicas:?})"),
            });
        }
        self.bounded("leader transfer", local.group.transfer_leader(to)).await?;
        Ok(())
    }

    /// Snapshots a partition now (a storage checkpoint); returns the snapshot's last index.
    pub async fn checkpoint(&self, topic: &str, partition: u32) -> Result<Option<u64>, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        Ok(local.group.trigger_snapshot(self.timeout()).await?)
    }

    /// Snapshots a partition, then purges what lies both below the snapshot and outside the
    /// topic's retention. Committed records a snapshot does not cover are never removed.
    pub async fn compact(&self, topic: &str, partition: u32) -> Result<CompactOutcome, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        let log_start_before = local.group.log_start()?;
        let snapshot_index = local.group.trigger_snapshot(self.timeout()).await?.unwrap_or(0);
        let log_start_after =
            self.bounded("retention purge", local.group.enforce_retention(self.timeout() / 2)).await?;
        local.state.write().prune_below(log_start_after);
        Ok(CompactOutcome { snapshot_index, log_start_before, log_start_after })
    }

    /// On a follower, waits until this replica has applied every entry its log held when called,
    /// for at most the commit-notice delay plus two group heartbeats (less if they come sooner; a
    /// replica behind for longer answers with what it has). A follower learns that entries it holds are
    /// committed from the leader's next message, which a held-back commit notice
    /// (`NetworkConfig::commit_notice_delay_ms`) makes up to that delay later: checks that compare
    /// replicas (`verify`) wait this out first instead of finding a follower "behind" right
    /// after a write. Nothing to wait for when notices are not held.
    pub async fn apply_what_is_held(&self, topic: &str, partition: u32) -> Result<(), ClusterError> {
        let delay = self.config.network.commit_notice_delay_ms;
        if delay == 0 {
            return Ok(());
        }
        let local = self.local_partition(topic, partition)?;
        if local.group.is_leader() {
            // The leader learns of its commits first-hand.
            return Ok(());
        }
        let Some(last) = local.group.metrics().last_log_index else { return Ok(()) };
        let bound = Duration::from_millis(delay + 2 * self.config.raft.heartbeat_interval_ms);
        // Past the bound the replica answers with what it has applied (it may well be behind).
        let _ = local.group.wait_applied(last, bound).await;
        Ok(())
    }

    /// This replica's chain hash of the log entry at log index `offset` (not a record offset: chain
    /// hashes are per entry; the node compares every replica's answer). Outside the log:
    /// `OffsetOutOfRange` with the log's index bounds.
    pub fn verify(&self, topic: &str, partition: u32, offset: u64) -> Result<ChainHash, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        match local.group.chain_hash_at(offset) {
            Ok(h) => Ok(h),
            Err(e) => match out_of_range(&e) {
                Some((start, end)) => Err(ClusterError::OffsetOutOfRange { requested: offset, start, end }),
                None => Err(e.into()),
            },
        }
    }
}

impl Cluster {
    /// Re-reads this replica's log entries at log indexes `[from, to)` of a partition's log from
    /// storage (CRCs, offsets, chain links from the hash before `from`) and returns the chain hash
    /// of entry `to - 1`. Speaks log indexes, not record offsets (a scrub compares replicas entry
    /// by entry, Raft's own entries included). Damage is `ClusterError::Storage(StorageError::Corruption { .. })` naming the
    /// first bad offset; a range the replica does not hold is `OffsetOutOfRange`. Runs on the
    /// blocking pool: it reads the whole range.
    pub async fn verify_range(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
    ) -> Result<ChainVerification, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        let (storage, stream) = (local.group.log().storage().clone(), local.group.log().stream());
        let verified =
            tokio::task::spawn_blocking(move || storage.verify_range(stream, Offset::new(from), Offset::new(to)))
                .await
                .map_err(|e| {
                    ClusterError::Raft(RaftError::Fatal {
                        group: local.group.id(),
                        reason: format!("verify task failed: {e}"),
                    })
                })?;
        verified.map_err(|e| match e {
            StorageError::OffsetOutOfRange { requested, start, end, .. } => {
                ClusterError::OffsetOutOfRange { requested: requested.get(), start: start.get(), end: end.get() }
            }
            e => ClusterError::Storage(e),
        })
    }
}

/// `(log_start, next)` if `e` says an offset is outside the log, however the Raft layer reports it.
fn out_of_range(e: &RaftError) -> Option<(u64, u64)> {
    match e {
        RaftError::OffsetOutOfRange { log_start, next, .. } => Some((*log_start, *next)),
        RaftError::Storage { source: StorageError::OffsetOutOfRange { start, end, .. }, .. } => {
            Some((start.get(), end.get()))
        }
        _ => None,
    }
}

/// Bytes read per step while scanning for the batch holding an offset (or the log start's first
/// record).
const SCAN_CHUNK_BYTES: usize = 256 << 10;
/// Bytes of the first read of a search by time (each next read doubles, up to
/// [`SCAN_CHUNK_BYTES`]).
const TIME_SCAN_FIRST_CHUNK_BYTES: usize = 16 << 10;

/// How long finding the record offset a replica's log starts at waits for the state machine to
/// reach the log start (a snapshot install in progress restores it within milliseconds).
const LOG_START_STATE_WAIT: Duration = Duration::from_secs(5);

/// Splits a request's records into batches of about [`limits::BATCH_TARGET_BYTES`] of records (a
/// record larger than that is a batch of its own) and encodes each (base offset 0 until the
/// proposer places it). Deterministic in the records, so a retry of a request splits the same way.
/// Each record's bytes are copied once, into its batch.
fn split_into_batches(
    records: Vec<ProduceRecord>,
    producer: Option<ProducerInfo>,
    now_ms: u64,
    codec: &dyn Codec,
) -> Vec<UnplacedBatch> {
    let mut batches = Vec::new();
    let mut current: Vec<NewRecord> = Vec::new();
    let mut current_bytes = 0usize;
    let mut sequence = producer.map(|p| p.base_sequence);
    let mut flush = |current: &mut Vec<NewRecord>| {
        let record_count = current.len() as u32;
        let seq = producer.zip(sequence).map(|(p, s)| (p.producer_id, s));
        let bytes = record_batch::encode_batch(current, 0, seq, codec);
        debug_assert!(bytes.len() <= limits::RAFT_PAYLOAD_BYTES, "a batch of {} bytes", bytes.len());
        if let Some(s) = sequence.as_mut() {
            *s += u64::from(record_count);
        }
        batches.push(UnplacedBatch { bytes, record_count, producer: seq });
        current.clear();
    };
    for r in records {
        debug_assert_eq!(r.size().check(limits::MAX_RECORD_BYTES), Ok(()), "a record past the edge's limits");
        let record = NewRecord {
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp_ms: r.timestamp_ms.unwrap_or(now_ms),
        };
        let len = record.encoded_len();
        if !current.is_empty() && current_bytes + len > limits::BATCH_TARGET_BYTES {
            flush(&mut current);
            current_bytes = 0;
        }
        current_bytes += len;
        current.push(record);
    }
    if !current.is_empty() {
        flush(&mut current);
    }
    batches
}

/// Decodes the records of fetched entries (visible batches only), for internal users and tests:
/// the fetch path itself never decodes records.
pub fn decode_entries(
    entries: &[FetchedEntry],
    codecs: &shale_storage::CodecRegistry,
) -> Result<Vec<record_batch::BatchRecord>, ClusterError> {
    let mut out = Vec::new();
    for e in entries {
        if e.hidden || e.data.get(record_batch::envelope::KIND_AT) != Some(&record_batch::envelope::KIND_NORMAL) {
            continue;
        }
        let body = e.data.slice(record_batch::envelope::HEADER_LEN..);
        let (_, records) = record_batch::decode_batch(&body, codecs)
            .map_err(|err| ClusterError::Decode { what: "stored record batch", reason: err.to_string() })?;
        out.extend(records);
    }
    Ok(out)
}

/// Logs a produce request that took longer than [`SlowProduce::THRESHOLD`], with the stage it was
/// in (also when the request is dropped mid-way, e.g. by the caller's deadline): a stalled
/// partition leader names itself in its log.
struct SlowProduce<'a> {
    topic: &'a str,
    partition: u32,
    started: std::time::Instant,
    stage: &'static str,
    error: Option<String>,
}

impl<'a> SlowProduce<'a> {
    const THRESHOLD: Duration = Duration::from_secs(1);

    fn new(topic: &'a str, partition: u32) -> Self {
        Self { topic, partition, started: std::time::Instant::now(), stage: "leader check", error: None }
    }

    fn failed(&mut self, e: &ClusterError) {
        self.error = Some(e.to_string());
    }
}

impl Drop for SlowProduce<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        if took >= Self::THRESHOLD {
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                took_ms = took.as_millis() as u64,
                stage = self.stage,
                error = self.error.as_deref().unwrap_or(if self.stage == "done" { "none" } else { "abandoned" }),
                "slow produce"
            );
        }
    }
}
