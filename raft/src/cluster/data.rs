//! The data path of [`Cluster`]: produce, fetch, offsets, and per-partition operations.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shale_storage::{ChainHash, ChainVerification, Offset, StorageError};

use super::partition::{ApplyOutcome, decode_record, encode_record};
use super::{Cluster, LocalPartition, high_watermark};
use crate::RaftError;
use crate::cluster::api::*;

impl Cluster {
    /// The running local group of a partition, or why there is none.
    pub(super) fn local_partition(&self, topic: &str, partition: u32) -> Result<Arc<LocalPartition>, ClusterError> {
        let info = self.topic(topic)?;
        let count = info.partitions.len() as u32;
        let assignment = info.partitions.get(partition as usize).ok_or_else(|| ClusterError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            count,
        })?;
        self.partitions.read().get(&assignment.group).cloned().ok_or_else(|| ClusterError::NotReplica {
            topic: topic.to_string(),
            partition,
            replicas: assignment.replicas.clone(),
        })
    }

    /// This replica's view of one partition: replicas, leader, log start and high watermark here.
    /// `NotReplica` if this node does not host it.
    pub fn local_partition_state(&self, topic: &str, partition: u32) -> Result<PartitionState, ClusterError> {
        let local = self.local_partition(topic, partition)?;
        Ok(PartitionState {
            partition,
            replicas: self.assignment(topic, partition).map(|a| a.replicas).unwrap_or_default(),
            leader: local.group.leader().map(|(id, node)| (id, node.addr)),
            log_start: Some(local.group.log_start()?),
            high_watermark: Some(high_watermark(&local.group)),
        })
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

    /// Appends records (one Raft entry each) and returns once a majority has them. With
    /// `producer`, record `i` has sequence `base_sequence + i`, and a retry is written once: its
    /// reply carries the original offsets; a batch that skips sequences is refused
    /// ([`ClusterError::SequenceGap`], nothing written). Partition leader only. The records must be within the
    /// limits ([`limits::RecordSize::check`], 1..=[`limits::MAX_RECORDS_PER_PRODUCE`] of them),
    /// which the node checks at its edge; this asserts them.
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<ProduceRecord>,
        producer: Option<ProducerInfo>,
    ) -> Result<Vec<ProducedOffset>, ClusterError> {
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
        let local = self.leading_partition(topic, partition)?;
        if let Some(p) = producer {
            let known = local.state.read().known_retry(p.producer_id, p.base_sequence, records.len());
            if let Some(offsets) = known {
                return offsets
                    .into_iter()
                    .enumerate()
                    .map(|(i, offset)| self.produced(&local, offset, Some((p, i))))
                    .collect();
            }
        }
        let codec = self.topic(topic)?.codec.codec();
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let payloads = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let seq = producer.map(|p| (p.producer_id, p.base_sequence + i as u64));
                Bytes::from(encode_record(r, r.timestamp_ms.unwrap_or(now_ms), seq, codec.as_ref()))
            })
            .collect();
        let results =
            tokio::time::timeout(self.timeout(), local.group.write_many(payloads)).await.map_err(|_| {
                ClusterError::Timeout { what: "produce commit".into(), waited_ms: self.config.request_timeout_ms }
            })??;
        let mut out = Vec::with_capacity(results.len());
        for (i, result) in results.into_iter().enumerate() {
            let written = result?;
            let offset = match ApplyOutcome::decode(&written.response)? {
                ApplyOutcome::Appended { offset } => offset,
                ApplyOutcome::Duplicate { original: Some(offset), .. } => offset,
                ApplyOutcome::Duplicate { original: None, last_sequence } => {
                    let p = producer.ok_or_else(|| ClusterError::Decode {
                        what: "produce reply",
                        reason: "duplicate reported for a record without producer".into(),
                    })?;
                    return Err(ClusterError::DuplicateSequenceOutOfWindow {
                        producer_id: p.producer_id,
                        sequence: p.base_sequence + i as u64,
                        last_sequence,
                    });
                }
                ApplyOutcome::OutOfSequence { expected } => {
                    // A batch's sequences are consecutive, so only its first record can skip ahead,
                    // and then every record does: none was written.
                    let p = producer.ok_or_else(|| ClusterError::Decode {
                        what: "produce reply",
                        reason: "sequence gap reported for a record without producer".into(),
                    })?;
                    return Err(ClusterError::SequenceGap {
                        producer_id: p.producer_id,
                        sequence: p.base_sequence + i as u64,
                        expected,
                    });
                }
                ApplyOutcome::Invalid => {
                    return Err(ClusterError::Decode {
                        what: "produced record",
                        reason: format!("record {i} was refused at apply"),
                    });
                }
            };
            out.push(self.produced(&local, offset, producer.map(|p| (p, i)))?);
        }
        Ok(out)
    }

    /// The acknowledgement of a record at `offset`; `retry` names the producer and the record's
    /// position in its batch, for the error when a retried original was purged.
    fn produced(
        &self,
        local: &LocalPartition,
        offset: u64,
        retry: Option<(ProducerInfo, usize)>,
    ) -> Result<ProducedOffset, ClusterError> {
        match local.group.chain_hash_at(offset) {
            Ok(chain_hash) => Ok(ProducedOffset { offset, chain_hash }),
            Err(e) => match (out_of_range(&e), retry) {
                (Some((log_start, _)), Some((p, i))) if offset < log_start => {
                    Err(ClusterError::DuplicateOfPurgedRecord {
                        producer_id: p.producer_id,
                        sequence: p.base_sequence + i as u64,
                        offset,
                    })
                }
                _ => Err(e.into()),
            },
        }
    }

    /// Committed records from `req.offset` (applied on this replica). If none are there yet,
    /// waits up to `req.wait` for new commits. Any replica serves it.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResult, ClusterError> {
        let local = self.local_partition(&req.topic, req.partition)?;
        let group = &local.group;
        // The node capped the wait at its `limits.max_wait_ms` (at most MAX_FETCH_WAIT_MS).
        debug_assert!(req.wait <= Duration::from_millis(limits::MAX_FETCH_WAIT_MS), "{:?}", req.wait);
        let wait = req.wait;
        let deadline = tokio::time::Instant::now() + wait;
        let max_bytes = req.max_bytes.max(1);
        let mut applied = group.subscribe_applied();
        let start = group.log_start()?;
        let hw = high_watermark(group);
        if req.offset < start || req.offset > hw {
            return Err(ClusterError::OffsetOutOfRange { requested: req.offset, start, end: hw });
        }
        let mut from = req.offset;
        loop {
            let hw = high_watermark(group);
            if from < hw {
                let entries = match group.read_committed(from, max_bytes).await {
                    Ok(e) => e,
                    Err(e) => {
                        return Err(match out_of_range(&e) {
                            Some((start, _)) => ClusterError::OffsetOutOfRange { requested: from, start, end: hw },
                            None => e.into(),
                        });
                    }
                };
                if entries.is_empty() {
                    // Nothing readable below the high watermark (cannot happen with a consistent
                    // log; answer rather than spin).
                    return Ok(FetchResult { records: Vec::new(), log_start: group.log_start()?, high_watermark: hw });
                }
                let mut records = Vec::new();
                let mut bytes = 0usize;
                for entry in entries {
                    debug_assert!(entry.index >= from, "read_committed returns entries from `from` on");
                    from = entry.index + 1;
                    let Some(payload) = entry.payload else { continue };
                    if !local.state.read().is_visible(entry.index) {
                        continue;
                    }
                    let r = decode_record(&payload, &self.codecs)?;
                    bytes += r.value.len() + r.key.as_ref().map_or(0, Bytes::len);
                    records.push(ConsumedRecord {
                        offset: entry.index,
                        chain_hash: entry.chain_hash,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                        timestamp_ms: r.timestamp_ms,
                    });
                    if bytes >= max_bytes {
                        break;
                    }
                }
                if !records.is_empty() {
                    return Ok(FetchResult {
                        records,
                        log_start: group.log_start()?,
                        high_watermark: high_watermark(group),
                    });
                }
                continue;
            }
            // Nothing visible in [req.offset, hw): long-poll for the next applied entry.
            let need = from;
            let woke = tokio::time::timeout_at(deadline, applied.wait_for(|a| a.is_some_and(|a| a + 1 > need))).await;
            match woke {
                Ok(Ok(_)) => continue,
                Ok(Err(_)) => return Err(ClusterError::Shutdown),
                Err(_) => {
                    return Ok(FetchResult {
                        records: Vec::new(),
                        log_start: group.log_start()?,
                        high_watermark: high_watermark(group),
                    });
                }
            }
        }
    }

    /// `(log_start, high_watermark)` of a partition, confirmed by read-index on its leader.
    pub async fn end_offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError> {
        let local = self.leading_partition(topic, partition)?;
        let applied =
            tokio::time::timeout(self.timeout(), local.group.ensure_linearizable()).await.map_err(|_| {
                ClusterError::Timeout { what: "partition read-index".into(), waited_ms: self.config.request_timeout_ms }
            })??;
        Ok((local.group.log_start()?, high_watermark(&local.group).max(applied + 1)))
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
        local.state.write().prune_hidden_below(log_start_after);
        Ok(CompactOutcome { snapshot_index, log_start_before, log_start_after })
    }

    /// This replica's chain hash at `offset` (the node compares every replica's answer).
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
    /// Re-reads this replica's records `[from, to)` of a partition's log from storage (CRCs,
    /// offsets, chain links from the hash before `from`) and returns the chain hash of record
    /// `to - 1`. Damage is `ClusterError::Storage(StorageError::Corruption { .. })` naming the
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
