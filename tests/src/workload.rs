//! The workload: concurrent producers writing records with unique values, recording every
//! acknowledgement and every failure; and readers that collect what each replica (and a consumer)
//! holds, for the [`crate::checkers`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shale_client::proto::fetch_client::FetchClient;
use shale_client::{
    ChainReader, Client, ClientConfig, ConsumerConfig, OffsetReset, ProducerConfig, ProducerRecord, meta, proto,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

use crate::error::HarnessError;

/// What the producers do.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The topic (must exist).
    pub topic: String,
    /// Its partition count (records go round-robin over them).
    pub partitions: u32,
    /// Concurrent producers (each with its own client and connections).
    pub producers: usize,
    /// Records each producer sends per second at most.
    pub records_per_second: u32,
    /// Unacknowledged records each producer keeps in flight at most.
    pub max_in_flight: usize,
    /// Records each producer sends at most (bounds the run).
    pub max_records_per_producer: u64,
    /// Bound on waiting for outstanding acknowledgements once stopped.
    pub drain_timeout: Duration,
    /// The client settings of each producer.
    pub client: ClientConfig,
}

impl WorkloadConfig {
    /// Three producers at 100 records/s each, 32 in flight, against `endpoints`.
    pub fn new(topic: &str, partitions: u32, endpoints: Vec<String>) -> Self {
        Self {
            topic: topic.to_string(),
            partitions,
            producers: 3,
            records_per_second: 100,
            max_in_flight: 32,
            max_records_per_producer: 20_000,
            drain_timeout: Duration::from_secs(90),
            client: test_client_config(endpoints),
        }
    }
}

/// Client settings for the tests: retries cover a leader election (seconds), not a long outage;
/// TLS with the process's client certificate ([`crate::tls::credentials`]).
pub fn test_client_config(endpoints: Vec<String>) -> ClientConfig {
    let mut c = crate::tls::credentials().apply(ClientConfig::new(endpoints));
    c.connect_timeout_ms = 1_000;
    c.request_timeout_ms = 5_000;
    c.max_attempts = 20;
    c.initial_backoff_ms = 50;
    c.max_backoff_ms = 1_000;
    c
}

/// One acknowledged record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The workload run that sent it.
    pub run: String,
    /// Which producer of that run sent it.
    pub producer: usize,
    /// Its position in that producer's send order.
    pub seq: u64,
    /// The (unique) value.
    pub value: Bytes,
    /// The partition it went to.
    pub partition: u32,
    /// The acknowledged offset.
    pub offset: u64,
    /// The acknowledged chain hash: that of the log entry (the stored batch) holding the record.
    pub chain_hash: [u8; 32],
    /// The log index of that entry.
    pub entry_index: u64,
}

/// One record that was sent but not acknowledged (it may or may not have been written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unacked {
    /// The workload run that sent it.
    pub run: String,
    /// Which producer of that run sent it.
    pub producer: usize,
    /// Its position in that producer's send order.
    pub seq: u64,
    /// The (unique) value.
    pub value: Bytes,
    /// The partition it went to.
    pub partition: u32,
    /// Why it was not acknowledged.
    pub error: String,
}

/// Everything the producers saw.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Acknowledged records.
    pub acks: Vec<Ack>,
    /// Records sent and not acknowledged.
    pub unacked: Vec<Unacked>,
}

impl History {
    /// Records sent in all.
    pub fn sent(&self) -> usize {
        self.acks.len() + self.unacked.len()
    }

    /// Appends another history (e.g. a second workload phase).
    pub fn extend(&mut self, other: History) {
        self.acks.extend(other.acks);
        self.unacked.extend(other.unacked);
    }
}

/// The unique value of record `seq` of producer `producer` in run `run`.
pub fn record_value(run: &str, producer: usize, seq: u64) -> Bytes {
    Bytes::from(format!("{run}/p{producer:02}/s{seq:09}"))
}

/// `(run, producer, seq)` of a value [`record_value`] made; `None` for any other value.
pub fn parse_record_value(value: &[u8]) -> Option<(&str, usize, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (rest, seq) = text.rsplit_once("/s")?;
    let (run, producer) = rest.rsplit_once("/p")?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if run.is_empty() || !all_digits(producer) || !all_digits(seq) {
        return None;
    }
    Some((run, producer.parse().ok()?, seq.parse().ok()?))
}

/// Running producers.
#[derive(Debug)]
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<History>>,
    acked: Arc<AtomicU64>,
    unacked: Arc<AtomicU64>,
}

impl Workload {
    /// Starts `config.producers` producers; values carry `run` so runs never collide.
    pub fn start(run: &str, config: &WorkloadConfig) -> Result<Self, HarnessError> {
        let (stop, stop_rx) = watch::channel(false);
        let acked = Arc::new(AtomicU64::new(0));
        let unacked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for producer in 0..config.producers {
            let client =
                Client::new(config.client.clone()).map_err(HarnessError::client("creating a producer client"))?;
            let task = ProducerTask {
                run: run.to_string(),
                producer,
                config: config.clone(),
                client,
                stop: stop_rx.clone(),
                acked: acked.clone(),
                unacked: unacked.clone(),
            };
            tasks.push(tokio::spawn(task.run()));
        }
        Ok(Self { stop, tasks, acked, unacked })
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Records that failed so far.
    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Relaxed)
    }

    /// Waits until `more` records are acknowledged beyond the count at the call (the cluster is
    /// available for writes); fails after `timeout`.
    pub async fn wait_for_more_acks(&self, more: u64, timeout: Duration) -> Result<(), HarnessError> {
        let target = self.acked() + more;
        let deadline = Instant::now() + timeout;
        while self.acked() < target {
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{more} more acknowledgements (acked {}, target {target}, failed {})",
                        self.acked(),
                        self.unacked()
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Stops sending, waits for outstanding acknowledgements (bounded) and answers the history.
    pub async fn stop(self) -> History {
        let _ = self.stop.send(true);
        let mut history = History::default();
        for task in self.tasks {
            match task.await {
                Ok(h) => history.extend(h),
                Err(e) => tracing::error!(error = %e, "a producer task failed"),
            }
        }
        history
    }
}

struct ProducerTask {
    run: String,
    producer: usize,
    config: WorkloadConfig,
    client: Client,
    stop: watch::Receiver<bool>,
    acked: Arc<AtomicU64>,
    unacked: Arc<AtomicU64>,
}

type Delivery = (u64, u32, Bytes, Result<shale_client::RecordMetadata, String>);

impl ProducerTask {
    async fn run(self) -> History {
        let producer_config = ProducerConfig { linger_ms: 2, max_buffered_records: 4_096, ..ProducerConfig::default() };
        let producer = self.client.producer(producer_config);
        let period = Duration::from_secs(1) / self.config.records_per_second.max(1);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut inflight: FuturesUnordered<futures::future::BoxFuture<'static, Delivery>> = FuturesUnordered::new();
        let mut history = History::default();
        let mut seq = 0u64;
        // Producers start on different partitions so every partition gets load from the start.
        let first_partition = self.producer as u32;
        let mut stop = self.stop.clone();
        loop {
            let may_send = inflight.len() < self.config.max_in_flight && seq < self.config.max_records_per_producer;
            tokio::select! {
                biased;
                () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                Some(done) = inflight.next(), if !inflight.is_empty() => self.record(&mut history, done),
                _ = ticker.tick(), if may_send => {
                    let partition = (first_partition + seq as u32) % self.config.partitions.max(1);
                    let value = record_value(&self.run, self.producer, seq);
                    let record = ProducerRecord::new(self.config.topic.clone(), value.clone()).partition(partition);
                    let this_seq = seq;
                    seq += 1;
                    match tokio::time::timeout(Duration::from_secs(10), producer.send(record)).await {
                        Ok(Ok(delivery)) => inflight.push(Box::pin(async move {
                            (this_seq, partition, value, delivery.await.map_err(|e| e.to_string()))
                        })),
                        Ok(Err(e)) => self.record(&mut history, (this_seq, partition, value, Err(e.to_string()))),
                        Err(_) => self.record(&mut history, (this_seq, partition, value, Err("send did not queue within 10s".into()))),
                    }
                }
            }
        }
        let deadline = Instant::now() + self.config.drain_timeout;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.next()).await {
                Ok(Some(done)) => self.record(&mut history, done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(producer = self.producer, outstanding = inflight.len(), "drain timed out");
                    break;
                }
            }
        }
        // Whatever is still outstanding has an unknown outcome: count it as unacknowledged. (The
        // futures are dropped, so a late acknowledgement cannot be missed by the checkers: only
        // acknowledgements the history holds must be present.)
        drop(inflight);
        let _ = tokio::time::timeout(Duration::from_secs(10), producer.close()).await;
        history
    }

    fn record(&self, history: &mut History, (seq, partition, value, result): Delivery) {
        match result {
            Ok(meta) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                debug_assert_eq!(meta.partition, partition);
                history.acks.push(Ack {
                    run: self.run.clone(),
                    producer: self.producer,
                    seq,
                    value,
                    partition: meta.partition,
                    offset: meta.offset,
                    chain_hash: meta.chain_hash.0,
                    entry_index: meta.entry_index,
                });
            }
            Err(error) => {
                self.unacked.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(producer = self.producer, seq, %error, "record not acknowledged");
                history.unacked.push(Unacked {
                    run: self.run.clone(),
                    producer: self.producer,
                    seq,
                    value,
                    partition,
                    error,
                });
            }
        }
    }
}

/// One record as a log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its offset.
    pub offset: u64,
    /// Its value.
    pub value: Bytes,
    /// The chain hash of the log entry holding it (its batch), recomputed by the reader.
    pub chain_hash: [u8; 32],
    /// The log index of that entry.
    pub entry_index: u64,
}

/// Where a view of a partition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ViewSource {
    /// One replica's own log (read with no forwarding).
    Replica(u64),
    /// What a consumer read through the client library.
    Consumer,
}

impl std::fmt::Display for ViewSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewSource::Replica(id) => write!(f, "replica {id}"),
            ViewSource::Consumer => f.write_str("consumer"),
        }
    }
}

/// A whole partition as one source sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// The source.
    pub source: ViewSource,
    /// The partition.
    pub partition: u32,
    /// The first offset the source holds.
    pub log_start: u64,
    /// One past the last committed offset the source holds.
    pub log_end: u64,
    /// Every record in `[log_start, log_end)` the source served, in offset order.
    pub records: Vec<LogRecord>,
    /// Where the source's entries stopped continuing its hash chain (a replica's view ends there):
    /// the reader's [`shale_client::ClientError::ChainMismatch`] or unreadable entry.
    pub chain_break: Option<String>,
}

/// One `Verify` answer, reduced to what the checkers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The partition.
    pub partition: u32,
    /// The offset compared.
    pub offset: u64,
    /// The node's own verdict.
    pub agree: bool,
    /// Each replica: node id, its chain hash (if it answered), its error text.
    pub replicas: Vec<(u64, Option<Vec<u8>>, String)>,
}

impl VerifyReport {
    /// From the wire answer.
    pub fn from_proto(r: &proto::VerifyResponse) -> Self {
        Self {
            partition: r.partition,
            offset: r.offset,
            agree: r.agree,
            replicas: r
                .replicas
                .iter()
                .map(|x| (x.node_id, x.chain_hash.as_ref().map(|h| h.to_vec()), x.error.clone()))
                .collect(),
        }
    }
}

/// A channel to one node's gRPC address (TLS, with the process's client certificate).
pub fn node_channel(addr: &str) -> Result<Channel, HarnessError> {
    crate::tls::credentials().channel(addr)
}

/// A request the node answers itself (marked forwarded, so it is never forwarded on).
fn local<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert(meta::FORWARDED, tonic::metadata::MetadataValue::from_static("harness"));
    req
}

/// `(log_start, log_end)` of one node's replica of a partition, from a local fetch at offset 0
/// (answered, or refused as out of range with the bounds in the status).
pub async fn replica_bounds(addr: &str, topic: &str, partition: u32) -> Result<(u64, u64), HarnessError> {
    let mut fetch = FetchClient::new(node_channel(addr)?);
    let req = proto::FetchRequest {
        topic: topic.to_string(),
        partition,
        offset: 0,
        max_bytes: 1,
        max_wait_ms: 0,
        from_index: None,
        client_checks_chain: false,
    };
    match fetch.fetch(local(req)).await {
        Ok(r) => {
            let r = r.into_inner();
            Ok((r.log_start, r.log_end))
        }
        Err(status) => match shale_client::ClientError::from_status(status) {
            shale_client::ClientError::OffsetOutOfRange { log_start: start, log_end: end, .. } => Ok((start, end)),
            source => Err(HarnessError::Client { what: format!("Fetch {topic}/{partition}@0 at {addr}"), source }),
        },
    }
}

/// Waits until every node in `addrs` holds each partition up to the same log end (replication
/// caught up); fails after `timeout`.
pub async fn wait_replicas_converged(
    addrs: &BTreeMap<u64, String>,
    topic: &str,
    partitions: u32,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ends: BTreeMap<u32, BTreeMap<u64, Result<u64, String>>> = BTreeMap::new();
        let mut converged = true;
        for p in 0..partitions {
            let row = ends.entry(p).or_default();
            for (id, addr) in addrs {
                let end = replica_bounds(addr, topic, p).await.map(|b| b.1).map_err(|e| e.to_string());
                row.insert(*id, end);
            }
            let values: Vec<_> = row.values().collect();
            if values.iter().any(|v| v.is_err()) || values.windows(2).any(|w| w[0] != w[1]) {
                converged = false;
            }
        }
        if converged {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: format!("replicas of {topic} to reach the same log end: {ends:?}"),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads one node's replica of a partition from its log start to its log end, with no forwarding,
/// as a consumer does: each fetch continues at the log index the last one ended, every entry's
/// chain hash is recomputed and each answer must continue the chain (anchored at the replica's
/// first answer) with dense offsets. A break ends the view there ([`PartitionView::chain_break`]).
/// With `client_checks_chain` the replica serves its stored links without re-hashing (as to a
/// verifying consumer); without it, it re-hashes too and refuses a broken range.
pub async fn read_replica(
    addr: &str,
    node_id: u64,
    topic: &str,
    partition: u32,
    client_checks_chain: bool,
) -> Result<PartitionView, HarnessError> {
    let (log_start, log_end) = replica_bounds(addr, topic, partition).await?;
    let mut fetch = FetchClient::new(node_channel(addr)?).max_decoding_message_size(64 << 20);
    let codecs = shale_client::chain::default_codecs();
    let mut reader = ChainReader::new(topic, partition, log_start, true);
    let mut records = Vec::new();
    let mut chain_break = None;
    // Each answer holds at least one entry; bound the rounds anyway.
    let max_rounds = 100_000;
    for _ in 0..max_rounds {
        let offset = reader.offset();
        if offset >= log_end {
            break;
        }
        let req = proto::FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            from_index: reader.from_index(),
            client_checks_chain,
        };
        let what = || {
            format!("Fetch {topic}/{partition}@{offset} (index {:?}) at node {node_id} ({addr})", reader.from_index())
        };
        let resp = fetch
            .fetch(local(req))
            .await
            .map_err(|s| HarnessError::Client { what: what(), source: shale_client::ClientError::from_status(s) })?
            .into_inner();
        if resp.entries.is_empty() {
            return Err(HarnessError::Parse { what: what(), detail: format!("no entry below the log end {log_end}") });
        }
        match reader.accept(resp.entries, &resp.prev_chain_hash, &resp.last_chain_hash, &codecs) {
            Ok(decoded) => {
                records.extend(decoded.records.into_iter().filter(|r| r.offset < log_end).map(|r| LogRecord {
                    offset: r.offset,
                    value: r.value,
                    chain_hash: r.chain_hash.map(|h| h.0).unwrap_or_default(),
                    entry_index: r.entry_index,
                }))
            }
            Err(e) => {
                chain_break = Some(e.to_string());
                break;
            }
        }
    }
    Ok(PartitionView { source: ViewSource::Replica(node_id), partition, log_start, log_end, records, chain_break })
}

/// Reads every partition on every node in `addrs`.
pub async fn read_all_replicas(
    addrs: &BTreeMap<u64, String>,
    topic: &str,
    partitions: u32,
) -> Result<Vec<PartitionView>, HarnessError> {
    let mut views = Vec::new();
    for p in 0..partitions {
        for (id, addr) in addrs {
            // Each replica twice: re-hashing on the node (it refuses a broken range), and serving
            // its stored links as to a verifying consumer. Both must give the same records over
            // the range both saw; a difference is reported as a break of the first view.
            let mut view = read_replica(addr, *id, topic, p, false).await?;
            let linked = read_replica(addr, *id, topic, p, true).await?;
            if let Some(difference) = views_differ(&view, &linked) {
                view.chain_break.get_or_insert(format!(
                    "node {id}: read with stored links (client_checks_chain) differs from the re-hashing read: {difference}"
                ));
            }
            views.push(view);
        }
    }
    Ok(views)
}

/// Where two views of one replica differ over the offsets both cover, if they do: a record, or
/// whether (and where) the chain broke.
fn views_differ(a: &PartitionView, b: &PartitionView) -> Option<String> {
    if a.chain_break.is_some() != b.chain_break.is_some() {
        return Some(format!("chain break {:?} against {:?}", a.chain_break, b.chain_break));
    }
    let (from, to) = (a.log_start.max(b.log_start), a.log_end.min(b.log_end));
    let within = |v: &PartitionView| -> Vec<LogRecord> {
        v.records.iter().filter(|r| r.offset >= from && r.offset < to).cloned().collect()
    };
    let (x, y) = (within(a), within(b));
    if x == y {
        return None;
    }
    let first = x.iter().zip(&y).position(|(r, s)| r != s).unwrap_or(x.len().min(y.len()));
    Some(format!("{} against {} records in [{from}, {to}), first difference at the {first}th", x.len(), y.len()))
}

/// Reads every partition from the start with the client library's consumer (leader routing,
/// retries) until each reaches `ends[partition]`; bounded by `timeout`.
pub async fn consume_all(
    client: &Client,
    topic: &str,
    ends: &BTreeMap<u32, u64>,
    timeout: Duration,
) -> Result<Vec<PartitionView>, HarnessError> {
    let config = ConsumerConfig {
        group: None,
        max_wait_ms: 200,
        offset_reset: OffsetReset::Earliest,
        verify_chain: true,
        ..ConsumerConfig::default()
    };
    let mut consumer = client.consumer(config);
    consumer.assign(topic, ends.keys().copied());
    let mut records: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
    let deadline = Instant::now() + timeout;
    loop {
        let done = ends.iter().all(|(p, end)| consumer.position(topic, *p).is_some_and(|pos| pos >= *end));
        if done {
            break;
        }
        if Instant::now() >= deadline {
            let positions: Vec<_> = ends.keys().map(|p| (p, consumer.position(topic, *p))).collect();
            return Err(HarnessError::Timeout {
                what: format!("a consumer to reach the log ends {ends:?} (positions {positions:?})"),
                timeout,
            });
        }
        let batch = consumer.poll().await.map_err(HarnessError::client(format!("polling {topic}")))?;
        for r in batch {
            let chain_hash = r.chain_hash.map(|h| h.0).ok_or_else(|| HarnessError::Parse {
                what: format!("consuming {topic}/{}", r.partition),
                detail: format!("record {} carries no chain hash although the consumer checks the chain", r.offset),
            })?;
            records.entry(r.partition).or_default().push(LogRecord {
                offset: r.offset,
                value: r.value,
                chain_hash,
                entry_index: r.entry_index,
            });
        }
    }
    Ok(ends
        .iter()
        .map(|(p, end)| {
            let mut recs: Vec<LogRecord> = records.remove(p).unwrap_or_default();
            recs.retain(|r| r.offset < *end);
            // The consumer starts at the earliest offset, so its view claims the whole log.
            PartitionView {
                source: ViewSource::Consumer,
                partition: *p,
                log_start: 0,
                log_end: *end,
                records: recs,
                chain_break: None,
            }
        })
        .collect())
}

/// `Verify` on `addr` for every partition at the default offset (the last one every replica
/// holds) and at each extra offset given per partition.
pub async fn verify_all(
    client: &Client,
    topic: &str,
    partitions: u32,
    extra_offsets: &BTreeMap<u32, Vec<u64>>,
) -> Result<Vec<VerifyReport>, HarnessError> {
    let admin = client.admin();
    let mut reports = Vec::new();
    for p in 0..partitions {
        let mut offsets: Vec<Option<u64>> = vec![None];
        offsets.extend(extra_offsets.get(&p).into_iter().flatten().map(|o| Some(*o)));
        for offset in offsets {
            let r =
                admin.verify(topic, p, offset).await.map_err(HarnessError::client(format!("verify {topic}/{p}")))?;
            reports.push(VerifyReport::from_proto(&r));
        }
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_parse_back() {
        let v = record_value("snap-follower", 7, 1_234);
        assert_eq!(parse_record_value(&v), Some(("snap-follower", 7, 1_234)));
        // A run name may itself hold the separators.
        let v = record_value("a/pb/sc", 0, 0);
        assert_eq!(parse_record_value(&v), Some(("a/pb/sc", 0, 0)));
        for other in [&b"hello"[..], b"run/p01/sxyz", b"run/p/s000000001", b"/p01/s000000001", &[0xff, 0xfe]] {
            assert_eq!(parse_record_value(other), None, "{other:?}");
        }
    }
}
