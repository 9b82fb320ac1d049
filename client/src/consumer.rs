//! The consumer: positions per partition, polling with long poll, streaming, group offsets.
//!
//! Every partition is read through a [`ChainReader`]: each fetch continues at the log index the
//! last one ended (`from_index`), and, unless [`ConsumerConfig::verify_chain`] is off, its entries'
//! chain hashes are recomputed and checked against the chain read so far (see [`crate::chain`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use shale_storage::codec::CodecRegistry;
use tonic::transport::Channel;

use crate::chain::{ChainPoint, ChainReader, ChainStats, default_codecs};
use crate::client::{Client, Route};
use crate::config::{ConsumerConfig, OffsetReset};
use crate::error::{ClientError, ErrorCode};
use crate::proto;
use crate::records::ConsumedRecord;

/// One fetch's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedBatch {
    /// The records at or past the offset asked for, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// The first offset the partition still holds.
    pub log_start: u64,
    /// One past the last committed offset.
    pub log_end: u64,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// Log entries the answer held.
    pub entries: u64,
    /// Where the chain continues: the log index after the last entry, and that entry's hash (when
    /// checked); `None` when no entry was returned.
    pub chain: Option<ChainPoint>,
}

/// Which offset of a partition [`Consumer::list_offset`] asks for (Kafka's ListOffsets specs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset the answering replica holds.
    Earliest,
    /// One past the last committed record (the high watermark).
    Latest,
    /// The first record, in offset order, whose timestamp is at or after this time (ms since the
    /// Unix epoch).
    Timestamp(u64),
}

/// [`Consumer::list_offset`]'s answer, from one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    /// The offset asked for; `None` for a time when every record is older.
    pub offset: Option<u64>,
    /// The first offset the replica holds.
    pub log_start: u64,
    /// One past the last committed offset on the replica.
    pub log_end: u64,
}

/// Reads committed records from assigned partitions. See [`ConsumerConfig`].
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    codecs: CodecRegistry,
    /// Read position and chain state per assigned partition; `None` until resolved from the
    /// group's commit or the reset policy. What `poll` returned last ends here; a prefetch may be
    /// reading past it.
    positions: BTreeMap<(String, u32), Option<ChainReader>>,
    /// Fetches already running for the next `poll`, by partition: one is started as soon as an
    /// answer shows the partition holds more than it returned (while they fit in
    /// `prefetch_max_bytes`), so the node reads (and the chain of the next answer is checked, on
    /// another thread) while the caller handles this one.
    /// Dropped, and so cancelled, when the partition's position is set, it is unassigned or the
    /// consumer is dropped.
    prefetched: BTreeMap<(String, u32), Pending>,
}

type Key = (String, u32);

/// A fetch running on its own task: the reader it moved on, and its answer.
#[derive(Debug)]
struct Pending {
    task: tokio::task::JoinHandle<(ChainReader, Result<FetchedBatch, ClientError>)>,
    /// It may wait for new records (a long poll), so a `poll` answering at once does not wait for it.
    long_poll: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// A consumer over `client` with nothing assigned.
    pub fn new(client: Client, config: ConsumerConfig) -> Self {
        Self { client, config, codecs: default_codecs(), positions: BTreeMap::new(), prefetched: BTreeMap::new() }
    }

    /// Adds partitions of `topic`; each starts at the group's committed offset, else as
    /// `offset_reset` says.
    pub fn assign(&mut self, topic: &str, partitions: impl IntoIterator<Item = u32>) {
        for p in partitions {
            self.positions.entry((topic.to_string(), p)).or_insert(None);
        }
    }

    /// Drops a partition (its position is forgotten).
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        let key = (topic.to_string(), partition);
        self.prefetched.remove(&key);
        self.positions.remove(&key);
    }

    /// The client it reads through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Its configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// Uses `group`'s committed offsets (a group member's consumer).
    pub(crate) fn set_group(&mut self, group: &str) {
        self.config.group = Some(group.to_string());
    }

    /// Assigns every partition of `topic`.
    pub async fn subscribe(&mut self, topic: &str) -> Result<(), ClientError> {
        let n = self.client.partition_count(topic).await?;
        self.assign(topic, 0..n);
        Ok(())
    }

    /// The assigned partitions.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    /// Moves a partition's position (assigning it if needed). The chain there is trusted on first
    /// use: the next answer's `prev_chain_hash` starts it.
    pub fn seek(&mut self, topic: &str, partition: u32, offset: u64) {
        let reader = self.reader(topic, partition, offset);
        self.set_position((topic.to_string(), partition), reader);
    }

    /// Moves a partition's position to `offset`, reading from the log entry after a point of the
    /// chain the caller already trusts (e.g. a producer's receipt: `ChainPoint::after(entry_index,
    /// chain_hash)`, or [`ChainPoint::GENESIS`] for the start of a log that still holds entry 0):
    /// the next answer must chain from it. `point.next_index` must not be past the entry holding
    /// `offset`. Checks the chain even if `verify_chain` is off.
    pub fn seek_anchored(&mut self, topic: &str, partition: u32, offset: u64, point: ChainPoint) {
        let reader = ChainReader::anchored(topic, partition, offset, point);
        self.set_position((topic.to_string(), partition), reader);
    }

    /// A fetch where `reader` is, on its own task, waiting up to `max_wait_ms` for records.
    fn start_fetch(&self, mut reader: ChainReader, max_wait_ms: u32) -> Pending {
        let (client, codecs, max_bytes) = (self.client.clone(), self.codecs.clone(), self.config.max_bytes);
        let task = tokio::spawn(async move {
            let result = fetch(&client, &codecs, max_bytes, &mut reader, max_wait_ms).await;
            (reader, result)
        });
        Pending { task, long_poll: max_wait_ms > 0 }
    }

    /// Puts a partition's position at `reader`; a prefetch from the old position is cancelled.
    fn set_position(&mut self, key: Key, reader: ChainReader) {
        self.prefetched.remove(&key);
        self.positions.insert(key, Some(reader));
    }

    fn reader(&self, topic: &str, partition: u32, offset: u64) -> ChainReader {
        ChainReader::new(topic, partition, offset, self.config.verify_chain)
    }

    /// The next offset `poll` reads from a partition, once known.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.positions.get(&(topic.to_string(), partition)).and_then(|r| r.as_ref()).map(ChainReader::offset)
    }

    /// What was read from a partition since its position was last set: entries, records, bytes,
    /// and the chain point reached (with its hash when the chain is checked).
    pub fn chain_stats(&self, topic: &str, partition: u32) -> Option<ChainStats> {
        self.positions.get(&(topic.to_string(), partition)).and_then(|r| r.as_ref()).map(ChainReader::stats)
    }

    /// One fetch from `offset`, waiting up to `max_wait_ms` for data; its chain is checked within
    /// the answer (trusting its `prev_chain_hash`) when `verify_chain` is on.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait_ms: u32,
    ) -> Result<FetchedBatch, ClientError> {
        let mut reader = self.reader(topic, partition, offset);
        fetch(&self.client, &self.codecs, self.config.max_bytes, &mut reader, max_wait_ms).await
    }

    /// Records from the assigned partitions: answers at once with whatever is ready, else waits up
    /// to `max_wait_ms` for the first partition to get data (an empty vector if none does).
    /// Advances the positions past what it returns.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.positions.is_empty() {
            return Err(ClientError::InvalidRequest("poll with no assigned partition".into()));
        }
        self.resolve_positions().await?;
        let ready = self.fetch_all(0).await?;
        if !ready.is_empty() || self.config.max_wait_ms == 0 {
            return Ok(ready);
        }
        self.fetch_all(self.config.max_wait_ms).await
    }

    /// Fetches every assigned partition concurrently (each on its own task, taking over a prefetch
    /// where one runs); with a wait, returns at the first that has data, the other fetches going
    /// on for the next call. Without a wait, a prefetch that is a long poll still waiting is left
    /// running.
    async fn fetch_all(&mut self, max_wait_ms: u32) -> Result<Vec<ConsumedRecord>, ClientError> {
        let mut running: Vec<(Key, Pending)> = Vec::new();
        for (key, reader) in self.positions.iter().filter_map(|(k, r)| r.as_ref().map(|r| (k, r))) {
            let pending = match self.prefetched.remove(key) {
                Some(p) if max_wait_ms == 0 && p.long_poll && !p.task.is_finished() => {
                    self.prefetched.insert(key.clone(), p);
                    continue;
                }
                Some(p) => p,
                None => self.start_fetch(reader.clone(), max_wait_ms),
            };
            running.push((key.clone(), pending));
        }
        let mut answered = vec![false; running.len()];
        let mut out = Vec::new();
        let mut inflight: FuturesUnordered<_> = running
            .iter_mut()
            .enumerate()
            .map(|(i, (key, p))| async move { (i, key.clone(), (&mut p.task).await) })
            .collect();
        let mut failed = None;
        while let Some((i, key, joined)) = inflight.next().await {
            answered[i] = true;
            let (reader, result) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: only a dropped `Pending` is, and this one is held here.
                Err(_) => continue,
            };
            match result {
                Ok(batch) => {
                    // The reader moved past what it returned (and past Raft's own entries).
                    let more = batch.next_offset < batch.log_end;
                    let ahead = (self.prefetched.len() as u64 + 1) * u64::from(self.config.max_bytes);
                    if more && ahead <= self.config.prefetch_max_bytes {
                        self.prefetched.insert(key.clone(), self.start_fetch(reader.clone(), 0));
                    }
                    self.positions.insert(key, Some(reader));
                    out.extend(batch.records);
                    if max_wait_ms > 0 && !out.is_empty() {
                        break;
                    }
                }
                Err(ClientError::OffsetOutOfRange { log_start, log_end, replica, replicas, message }) => {
                    // No replica holds the position (the fetch already read from another replica
                    // where one could serve it). Move it only if the caller chose a reset.
                    let position = reader.offset();
                    let reset = match self.config.reset_out_of_range {
                        OffsetReset::Earliest => match earliest(&self.client, &key.0, key.1).await {
                            Ok(start) => start,
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        },
                        OffsetReset::Latest => log_end,
                        OffsetReset::None => {
                            failed = Some(ClientError::OffsetOutOfRange {
                                log_start,
                                log_end,
                                replica,
                                replicas,
                                message: format!("position {position} of {}/{}: {message}", key.0, key.1),
                            });
                            break;
                        }
                    };
                    tracing::warn!(
                        topic = %key.0,
                        partition = key.1,
                        position,
                        reset,
                        policy = ?self.config.reset_out_of_range,
                        "position held by no replica; reset as configured (reset_out_of_range)"
                    );
                    self.seek(&key.0, key.1, reset);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        drop(inflight);
        // Fetches not answered yet go on; the next call takes their answers.
        for ((key, pending), answered) in running.into_iter().zip(answered) {
            if !answered {
                self.prefetched.insert(key, pending);
            }
        }
        match failed {
            // Records of other partitions were read and their positions moved: they are returned,
            // and the failing partition, whose position did not move, fails again at the next call.
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Gives every unresolved position a value: the group's committed offset, else the reset policy.
    async fn resolve_positions(&mut self) -> Result<(), ClientError> {
        let unresolved: Vec<Key> = self.positions.iter().filter(|(_, p)| p.is_none()).map(|(k, _)| k.clone()).collect();
        if unresolved.is_empty() {
            return Ok(());
        }
        let committed = match &self.config.group {
            Some(group) => self.fetch_committed(group, &unresolved).await?,
            None => BTreeMap::new(),
        };
        for key in unresolved {
            let offset = match committed.get(&key) {
                Some(o) => *o,
                None => match self.config.offset_reset {
                    OffsetReset::Earliest => earliest(&self.client, &key.0, key.1).await?,
                    OffsetReset::Latest => match self.fetch(&key.0, key.1, u64::MAX, 0).await {
                        Ok(b) => b.log_end,
                        Err(ClientError::OffsetOutOfRange { log_end, .. }) => log_end,
                        Err(e) => return Err(e),
                    },
                    OffsetReset::None => {
                        return Err(ClientError::InvalidRequest(format!(
                            "{}/{} has no position: none was sought, the group has no committed offset, and \
                             offset_reset is None",
                            key.0, key.1
                        )));
                    }
                },
            };
            self.seek(&key.0, key.1, offset);
        }
        Ok(())
    }

    async fn fetch_committed(&self, group: &str, keys: &[Key]) -> Result<BTreeMap<Key, u64>, ClientError> {
        let partitions: Vec<proto::TopicPartition> = keys
            .iter()
            .map(|(topic, partition)| proto::TopicPartition { topic: topic.clone(), partition: *partition })
            .collect();
        let message = proto::FetchOffsetsRequest { group: group.to_string(), partitions };
        let resp = self
            .client
            .call(Route::Any, |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::groups_client(ch).fetch_offsets(req).await }
            })
            .await?;
        Ok(resp.offsets.into_iter().map(|o| ((o.topic, o.partition), o.offset)).collect())
    }

    /// An offset of one partition by `spec`, answered by a replica from its own log (the one this
    /// partition's reads go to; a follower may lag the leader slightly).
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<ListedOffset, ClientError> {
        use proto::list_offsets_request::Spec;
        let spec = match spec {
            OffsetSpec::Earliest => Spec::Earliest(true),
            OffsetSpec::Latest => Spec::Latest(true),
            OffsetSpec::Timestamp(ts) => Spec::TimestampMs(ts),
        };
        let message = proto::ListOffsetsRequest { topic: topic.to_string(), partition, spec: Some(spec) };
        let resp = self
            .client
            .call(Route::Read(topic.to_string(), partition), |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::fetch_client(ch).list_offsets(req).await }
            })
            .await?;
        Ok(ListedOffset { offset: resp.offset, log_start: resp.log_start, log_end: resp.log_end })
    }

    /// The offset of the first record of a partition whose timestamp is at or after
    /// `timestamp_ms` (in offset order), `None` if every record is older:
    /// [`Consumer::list_offset`] with [`OffsetSpec::Timestamp`].
    pub async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: u64,
    ) -> Result<Option<u64>, ClientError> {
        Ok(self.list_offset(topic, partition, OffsetSpec::Timestamp(timestamp_ms)).await?.offset)
    }

    /// The group's committed offset for one partition, if any.
    pub async fn committed(&self, topic: &str, partition: u32) -> Result<Option<u64>, ClientError> {
        let group = self.group()?;
        let key = (topic.to_string(), partition);
        Ok(self.fetch_committed(group, std::slice::from_ref(&key)).await?.get(&key).copied())
    }

    fn group(&self) -> Result<&str, ClientError> {
        self.config.group.as_deref().ok_or_else(|| ClientError::InvalidRequest("the consumer has no group".into()))
    }

    /// Commits the current positions of every assigned partition for the group.
    pub async fn commit(&self) -> Result<(), ClientError> {
        let offsets: Vec<(String, u32, u64)> =
            self.positions.iter().filter_map(|((t, p), r)| r.as_ref().map(|r| (t.clone(), *p, r.offset()))).collect();
        self.commit_offsets(&offsets).await
    }

    /// Commits explicit `(topic, partition, next offset)` triples for the group, all or none. Only
    /// for a group without members (else GROUP_NOT_EMPTY): members commit through
    /// [`crate::GroupConsumer::commit`].
    pub async fn commit_offsets(&self, offsets: &[(String, u32, u64)]) -> Result<(), ClientError> {
        self.commit_fenced(None, offsets).await
    }

    /// Commits as [`Consumer::commit_offsets`], fenced by `(member id, member epoch)` when given.
    pub(crate) async fn commit_fenced(
        &self,
        fence: Option<(String, u64)>,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), ClientError> {
        let group = self.group()?;
        if offsets.is_empty() {
            return Ok(());
        }
        let message = proto::CommitOffsetsRequest {
            group: group.to_string(),
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| proto::PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            member_id: fence.as_ref().map(|f| f.0.clone()).unwrap_or_default(),
            member_epoch: fence.map_or(0, |f| f.1),
        };
        self.client
            .call(Route::Any, |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::groups_client(ch).commit_offsets(req).await }
            })
            .await?;
        Ok(())
    }

    /// Follows one partition from `offset` as records are committed (server streaming), checking
    /// the chain as [`Consumer::poll`] does. Reconnects after a leader change or an unreachable
    /// node, resuming after the last entry read (the chain continues across replicas); gives up
    /// after `max_attempts` consecutive failures, yielding the error last. A chain mismatch ends
    /// the stream.
    pub fn stream(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> impl Stream<Item = Result<ConsumedRecord, ClientError>> + Send + 'static {
        self.stream_from(self.reader(topic, partition, offset))
    }

    /// As [`Consumer::stream`], from a reader the caller set up (e.g. [`ChainReader::anchored`]).
    pub fn stream_from(
        &self,
        reader: ChainReader,
    ) -> impl Stream<Item = Result<ConsumedRecord, ClientError>> + Send + 'static {
        let state = StreamState {
            client: self.client.clone(),
            codecs: self.codecs.clone(),
            reader,
            max_bytes: self.config.max_bytes,
            inner: None,
            buffered: VecDeque::new(),
            failures: 0,
            done: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
    }
}

struct StreamState {
    client: Client,
    codecs: CodecRegistry,
    /// Where the stream is: past every record buffered.
    reader: ChainReader,
    max_bytes: u32,
    inner: Option<tonic::Streaming<proto::FetchResponse>>,
    buffered: VecDeque<ConsumedRecord>,
    failures: u32,
    done: bool,
}

impl StreamState {
    async fn next(&mut self) -> Option<Result<ConsumedRecord, ClientError>> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            let err = match self.inner.as_mut() {
                None => match self.open().await {
                    Ok(s) => {
                        self.inner = Some(s);
                        continue;
                    }
                    Err(e) => e,
                },
                Some(s) => match s.message().await {
                    Ok(Some(batch)) => {
                        self.failures = 0;
                        self.client.note_throttle(false, batch.throttle_time_ms);
                        match self.reader.accept(
                            batch.entries,
                            &batch.prev_chain_hash,
                            &batch.last_chain_hash,
                            &self.codecs,
                        ) {
                            Ok(decoded) => self.buffered.extend(decoded.records),
                            Err(e) => {
                                self.done = true;
                                return Some(Err(e));
                            }
                        }
                        continue;
                    }
                    Ok(None) => ClientError::Status { code: tonic::Code::Unavailable, message: "stream ended".into() },
                    Err(status) => ClientError::from_status(status),
                },
            };
            // A replica that cannot continue the chain at the index asked: reopen by offset alone,
            // the chain starting again there (the offsets stay checked).
            if self.reader.from_index().is_some() && err.code() == Some(ErrorCode::InvalidFromIndex) {
                tracing::warn!(topic = self.reader.topic(), partition = self.reader.partition(), error = %err,
                    "chain started again at this offset");
                self.reader.reanchor();
                self.inner = None;
                continue;
            }
            // A replica that cut its log below the position while streaming: reopen, which reads
            // from a replica that holds it (or reports that none does).
            let cut_below = self.inner.is_some()
                && matches!(&err, ClientError::OffsetOutOfRange { log_start, .. } if self.reader.offset() < *log_start);
            self.inner = None;
            self.failures += 1;
            if !(err.is_retriable() || cut_below) || self.failures >= self.client.config().max_attempts {
                self.done = true;
                return Some(Err(err));
            }
            tokio::time::sleep(self.client.config().backoff(self.failures)).await;
        }
    }

    /// Opens the subscription where the reader is, at a replica that holds its offset (as
    /// [`fetch`] chooses one).
    async fn open(&self) -> Result<tonic::Streaming<proto::FetchResponse>, ClientError> {
        let (topic, partition, offset) = (self.reader.topic(), self.reader.partition(), self.reader.offset());
        let message = proto::SubscribeRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: self.max_bytes,
            from_index: self.reader.from_index(),
            client_checks_chain: self.reader.verifies(),
        };
        let call = |ch| {
            let req = self.client.authorized(message.clone());
            async move { Client::fetch_client(ch).subscribe(req).await }
        };
        match self.client.call(Route::Read(topic.to_string(), partition), call).await {
            Err(ClientError::OffsetOutOfRange { log_start, log_end, replica, replicas, .. }) if offset < log_start => {
                self.client.forget_read_replica(topic, partition);
                let first = ReplicaBounds { replica, log_start, log_end };
                read_elsewhere(&self.client, topic, partition, offset, first, replicas, Sweep::Every, call).await
            }
            r => r,
        }
    }
}

/// How far [`fetch_with`] goes to find a replica that holds the offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sweep {
    /// "No replica holds it" only once every replica answered so: while one cannot be reached the
    /// read fails retriably (UNAVAILABLE, then `RetriesExhausted`), so no position is ever judged
    /// out of range on partial knowledge.
    Every,
    /// Replicas that cannot be reached are left out (finding where the partition starts).
    Reachable,
}

/// One fetch where `reader` is, taken by it (checked, decoded, and the reader moved past it).
async fn fetch(
    client: &Client,
    codecs: &CodecRegistry,
    max_bytes: u32,
    reader: &mut ChainReader,
    max_wait_ms: u32,
) -> Result<FetchedBatch, ClientError> {
    let (topic, partition, offset) = (reader.topic().to_string(), reader.partition(), reader.offset());
    let from_index = reader.from_index();
    // A reader that checks the chain asks the replica not to hash it again (it only CRC-checks
    // what it serves and sends the stored links, which the check below compares with).
    let message = proto::FetchRequest {
        topic: topic.clone(),
        partition,
        offset,
        max_bytes,
        max_wait_ms,
        from_index,
        client_checks_chain: reader.verifies(),
    };
    let resp = match fetch_with(client, message.clone(), Sweep::Every).await {
        // The replica cannot continue the chain at that index (it no longer holds it): read by
        // offset and start the chain again there; the offsets stay checked.
        Err(e) if from_index.is_some() && e.code() == Some(ErrorCode::InvalidFromIndex) => {
            tracing::warn!(%topic, partition, offset, ?from_index, error = %e, "chain started again at this offset");
            reader.reanchor();
            fetch_with(client, proto::FetchRequest { from_index: None, ..message }, Sweep::Every).await?
        }
        r => r?,
    };
    let (log_start, log_end) = (resp.log_start, resp.log_end);
    let decoded = reader.accept(resp.entries, &resp.prev_chain_hash, &resp.last_chain_hash, codecs)?;
    let chain = (decoded.entries > 0).then(|| reader.stats().point).flatten();
    Ok(FetchedBatch {
        records: decoded.records,
        log_start,
        log_end,
        next_offset: reader.offset(),
        entries: decoded.entries,
        chain,
    })
}

/// Where the partition starts: offset 0 if a replica holds it, else the lowest log start among
/// the replicas that answer. Not one replica's start: a replica whose log was cut starts later.
async fn earliest(client: &Client, topic: &str, partition: u32) -> Result<u64, ClientError> {
    let message = proto::FetchRequest { topic: topic.to_string(), partition, max_bytes: 1, ..Default::default() };
    match fetch_with(client, message, Sweep::Reachable).await {
        Ok(_) => Ok(0),
        Err(ClientError::OffsetOutOfRange { log_start, .. }) => Ok(log_start),
        Err(e) => Err(e),
    }
}

/// One read at `offset` (from log index `from_index`, when the reader knows it) from whichever
/// replica holds it: the routed node first (the replica that served this partition's last such
/// read, else the leader, else any member, which forwards); if that replica's log starts past
/// `offset`, every other replica in turn.
async fn fetch_with(
    client: &Client,
    message: proto::FetchRequest,
    sweep: Sweep,
) -> Result<proto::FetchResponse, ClientError> {
    let (topic, partition, offset) = (message.topic.as_str(), message.partition, message.offset);
    let wait = Duration::from_millis(u64::from(message.max_wait_ms));
    let call = |ch| {
        let req = client.request(message.clone(), wait);
        async move { Client::fetch_client(ch).fetch(req).await }
    };
    let answer = match client.call(Route::Read(topic.to_string(), partition), call).await {
        Err(ClientError::OffsetOutOfRange { log_start, log_end, replica, replicas, .. }) if offset < log_start => {
            client.forget_read_replica(topic, partition);
            let first = ReplicaBounds { replica, log_start, log_end };
            read_elsewhere(client, topic, partition, offset, first, replicas, sweep, call).await
        }
        r => r,
    };
    if let Ok(resp) = &answer {
        client.note_throttle(false, resp.throttle_time_ms);
    }
    answer
}

/// One replica's answer that its log starts past the offset asked.
#[derive(Clone, Copy, Debug)]
struct ReplicaBounds {
    replica: Option<u64>,
    log_start: u64,
    log_end: u64,
}

/// After one replica answered that its log starts past `offset` (`first`): sends `call` to every
/// other replica of the partition (`hint`, from that answer, else the topic's description) and
/// answers with the first that holds `offset`, which then serves this partition's next reads.
/// If none does: `OffsetOutOfRange` with the partition's bounds (the lowest start and the highest
/// end any replica reported), naming each replica's start. See [`Sweep`] for unreachable replicas.
#[allow(
    clippy::too_many_arguments,
    reason = "each argument is a distinct input of one sweep; a struct would exist only to carry them here"
)]
async fn read_elsewhere<T, F, Fut>(
    client: &Client,
    topic: &str,
    partition: u32,
    offset: u64,
    first: ReplicaBounds,
    hint: Vec<(u64, String)>,
    sweep: Sweep,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut(Channel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let max_attempts = client.config().max_attempts;
    let mut replicas = hint;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if replicas.is_empty() {
            replicas = client.partition_replicas(topic, partition).await?;
        }
        let mut later: BTreeMap<u64, ReplicaBounds> = BTreeMap::new();
        if let Some(id) = first.replica {
            later.insert(id, first);
        }
        let mut unreachable: Vec<(u64, ClientError)> = Vec::new();
        for (id, addr) in &replicas {
            if later.contains_key(id) {
                continue;
            }
            match client.call_at(addr, &mut call).await {
                Ok(answer) => {
                    tracing::debug!(%topic, partition, offset, replica = id, "read from another replica");
                    client.prefer_read_replica(topic, partition, addr);
                    return Ok(answer);
                }
                Err(ClientError::OffsetOutOfRange { log_start, log_end, replica, .. }) if offset < log_start => {
                    let id = replica.unwrap_or(*id);
                    later.insert(id, ReplicaBounds { replica: Some(id), log_start, log_end });
                }
                Err(e) if e.is_retriable() => unreachable.push((*id, e)),
                Err(e) => return Err(e),
            }
        }
        let log_start = later.values().map(|b| b.log_start).chain([first.log_start]).min().unwrap_or(first.log_start);
        let log_end = later.values().map(|b| b.log_end).chain([first.log_end]).max().unwrap_or(first.log_end);
        let starts = later.iter().map(|(id, b)| format!("node {id} starts at {}", b.log_start)).collect::<Vec<_>>();
        let starts =
            if starts.is_empty() { format!("a replica starts at {}", first.log_start) } else { starts.join(", ") };
        if unreachable.is_empty() || sweep == Sweep::Reachable {
            let left_out = if unreachable.is_empty() {
                String::new()
            } else {
                let ids = unreachable.iter().map(|(id, _)| id.to_string()).collect::<Vec<_>>().join(", ");
                format!("; node(s) {ids} did not answer")
            };
            return Err(ClientError::OffsetOutOfRange {
                log_start,
                log_end,
                replica: None,
                replicas,
                message: format!(
                    "no replica of {topic}/{partition} holds offset {offset} ({starts}{left_out}); the partition \
                     holds [{log_start}, {log_end})"
                ),
            });
        }
        let (ids, last): (Vec<String>, Vec<String>) =
            unreachable.iter().map(|(id, e)| (id.to_string(), format!("node {id}: {e}"))).unzip();
        let err = ClientError::Server {
            code: ErrorCode::Unavailable,
            limit: None,
            message: format!(
                "offset {offset} of {topic}/{partition} is below the log start of every replica that answered \
                 ({starts}); node(s) {} could not be asked whether they hold it ({})",
                ids.join(", "),
                last.join("; ")
            ),
        };
        if attempt >= max_attempts {
            return Err(ClientError::RetriesExhausted { attempts: attempt, last: Box::new(err) });
        }
        tracing::debug!(%topic, partition, offset, attempt, error = %err, "retrying the replicas");
        tokio::time::sleep(client.config().backoff(attempt)).await;
    }
}
