//! The producer: batching per partition, pipelining, idempotent delivery, retries.
//!
//! [`Producer::send`] picks the record's partition (see [`crate::partitioner`]) and queues it; a
//! background task (the batcher) gathers each partition's records into batches and sends them to
//! the partition's leader (see [`Client`]).
//!
//! **When a batch goes.** A partition with nothing in flight sends what it has at once, so a lone
//! record never waits. While batches of the partition are in flight, the next one fills until it
//! reaches `batch_max_bytes` or `batch_max_records`, until `linger_ms` passed since its oldest
//! record, or until nothing is in flight any more; [`Producer::flush`] and [`Producer::close`] send
//! everything at once. One exception: a sticky run of keyless records (see
//! [`crate::partitioner`]) that starts on a partition with nothing in flight while the producer has
//! batches in flight elsewhere fills its first batch too (the run's records keep coming to it), so
//! that under load every run starts with a full batch instead of a lone record, each batch being a
//! Raft entry with its fsyncs and replication round (README "Runs that start full").
//!
//! **Flow control per node.** At most `max_in_flight_per_node` batches are in flight to one node
//! (its address as the partition's cached leader), across every partition it leads: with
//! hundreds of partitions per node, records of the partitions waiting for a slot gather into
//! bigger batches instead of going as thousands of tiny ones (each a Raft entry, fsync and
//! replication round on three nodes). Free slots go round the partitions, so none starves.
//!
//! **Pipelining and order.** Up to `max_in_flight` batches per partition are in flight (always one
//! without `idempotent`), from a producer id's first batch on. Each batch carries the producer id
//! and the sequence of its first record, and the partition writes a producer's sequences without
//! gaps: a batch that arrives ahead of an earlier one waits there (bounded) for it, also before the
//! partition knows the producer (a new producer starts at sequence 0); one that overtook an
//! earlier one for longer (a retry of the earlier one) is refused as a [`ErrorCode::SequenceGap`]
//! and nothing of it is written. The batcher then sends it again, with
//! the same sequences, once every batch before it is acknowledged; a batch retried after a lost
//! reply is recognised as already written. So records of a partition are written in `send` order,
//! each once, however the in-flight batches are retried.
//!
//! **A batch that fails for good** (retries exhausted, or an error no retry can fix) fails its
//! records; it may or may not have been written. The partition then sends nothing new until its
//! other in-flight batches settled: those written after it are acknowledged; those refused because
//! it is missing go back, in order, to the front of the queue, and the partition starts again under
//! a fresh producer id with sequence 0 (a missing sequence is never filled, so the old id cannot
//! continue). Known limit: if a request of the failed batch is still on its way inside the node
//! when the next batch is refused (its client-side attempt given up), it may be written later,
//! after records sent after it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::config::ProducerConfig;
use crate::error::{ClientError, ErrorCode};
use crate::partitioner::{Partitioner, StickyRun};
use crate::proto;
use crate::records::{ProducerRecord, RecordMetadata, hash32};

type Ack = oneshot::Sender<Result<RecordMetadata, ClientError>>;
type TopicPartition = (String, u32);

/// Commands (sends, flushes) the batcher takes in one go before sending, at most.
const MAX_EVENTS_PER_ROUND: usize = 4096;

/// Resolves to where the record was written, once its batch is committed.
#[derive(Debug)]
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata, ClientError>>);

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or(Err(ClientError::ProducerClosed)))
    }
}

enum Command {
    Send {
        tp: TopicPartition,
        record: proto::Record,
        size_bytes: usize,
        /// The record has neither key nor partition: the partitioner placed it in a sticky run.
        sticky: bool,
        ack: Ack,
        permit: OwnedSemaphorePermit,
    },
    Flush(oneshot::Sender<()>),
}

/// Sends records to a cluster. See the module documentation.
#[derive(Debug)]
pub struct Producer {
    client: Client,
    partitioner: Partitioner,
    buffered: Arc<Semaphore>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// A random non-zero producer id.
fn new_producer_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish().max(1)
}

impl Producer {
    /// A producer over `client`. Needs a tokio runtime (it spawns its batching task).
    pub fn new(client: Client, config: ProducerConfig) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(Semaphore::new(config.max_buffered_records.max(1)));
        let run = StickyRun::of_producer(&config);
        let task = tokio::spawn(Batcher::new(client.clone(), config).run(rx));
        Self { client, partitioner: Partitioner::new(run), buffered, commands, task }
    }

    /// Queues a record; the returned future resolves once it is committed (or failed for good).
    /// Waits first if `max_buffered_records` are already queued.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::InvalidRequest("a record needs a topic".into()));
        }
        let partitions = self.client.partition_count(&record.topic).await?;
        let size_bytes = record.size_bytes();
        let partition =
            self.partitioner.partition(&record.topic, record.partition, record.key.as_deref(), size_bytes, partitions);
        if partition >= partitions {
            return Err(ClientError::InvalidRequest(format!(
                "partition {partition} does not exist: topic {} has {partitions} partitions",
                record.topic
            )));
        }
        let sticky = record.partition.is_none() && record.key.is_none();
        let permit = self.buffered.clone().acquire_owned().await.map_err(|_| ClientError::ProducerClosed)?;
        let (ack, rx) = oneshot::channel();
        let (topic, record) = record.into_proto();
        let command = Command::Send { tp: (topic, partition), record, size_bytes, sticky, ack, permit };
        self.commands.send(command).map_err(|_| ClientError::ProducerClosed)?;
        Ok(DeliveryFuture(rx))
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: ProducerRecord) -> Result<RecordMetadata, ClientError> {
        self.send(record).await?.await
    }

    /// Sends every queued record now and waits until each is acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Flush(tx)).map_err(|_| ClientError::ProducerClosed)?;
        rx.await.map_err(|_| ClientError::ProducerClosed)
    }

    /// Flushes and stops the batching task.
    pub async fn close(self) -> Result<(), ClientError> {
        let flushed = self.flush().await;
        drop(self.commands);
        let _ = self.task.await;
        flushed
    }
}

struct Pending {
    record: proto::Record,
    size_bytes: usize,
    /// Placed by a sticky run of keyless records (more of the run follow it to this partition).
    sticky: bool,
    queued_at: Instant,
    ack: Ack,
    _permit: OwnedSemaphorePermit,
}

/// How a sent batch ended, as its task reports it to the batcher.
enum Outcome {
    /// Written: every record's waiter has its offset.
    Acked,
    /// Failed for good: every record's waiter has the error. It may still have been written.
    Failed,
    /// Refused because it skips sequences (a batch before it is not written yet): nothing of it
    /// was written, and its records come back to be sent again.
    Gap(Vec<Pending>, ClientError),
}

/// A batch to send (again): its number in its partition, identity and records.
struct Outgoing {
    batch: u64,
    identity: proto::ProducerIdentity,
    records: Vec<Pending>,
}

/// A batch sent and not yet settled.
struct Flight {
    batch: u64,
    identity: proto::ProducerIdentity,
    /// Its records while it waits to be sent again (it was refused as a sequence gap).
    parked: Option<Vec<Pending>>,
    /// Sequence-gap refusals so far.
    gaps: u32,
}

/// When a partition's batches go (from [`ProducerConfig`]).
#[derive(Clone, Copy, Debug)]
struct Limits {
    batch_max_bytes: usize,
    batch_max_records: usize,
    linger: Duration,
    max_in_flight: usize,
    /// Batches in flight to one node, across its partitions.
    max_in_flight_per_node: usize,
    /// Sequence-gap refusals of one batch after which it fails (a guard: a batch is only sent
    /// again once the batches before it settled, when the partition must take it).
    max_gaps: u32,
}

impl Limits {
    fn new(config: &ProducerConfig, max_attempts: u32) -> Self {
        Self {
            batch_max_bytes: config.batch_max_bytes,
            batch_max_records: config.batch_max_records.max(1),
            linger: Duration::from_millis(config.linger_ms),
            max_in_flight: if config.idempotent { config.max_in_flight.max(1) } else { 1 },
            max_in_flight_per_node: config.max_in_flight_per_node.max(1),
            max_gaps: max_attempts.max(1),
        }
    }
}

/// One partition's queue and in-flight batches. Pure bookkeeping: [`PartitionState::take_sends`]
/// says what to send, [`PartitionState::settle`] takes each outcome.
struct PartitionState {
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    /// Sent and not yet settled, in sequence order.
    flights: VecDeque<Flight>,
    next_batch: u64,
    producer_id: u64,
    next_sequence: u64,
    /// A batch under `producer_id` failed for good: nothing new is sent until every flight settled,
    /// then the partition starts again under a fresh producer id (see the module documentation).
    broken: bool,
    /// The address of the partition's leader as last seen ("" while unknown): whose in-flight
    /// count ([`ProducerConfig::max_in_flight_per_node`]) its batches take a slot of.
    node: String,
    /// `node`'s number in the batcher ([`Batcher::node_number`]).
    node_number: usize,
}

impl PartitionState {
    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            queued_bytes: 0,
            flights: VecDeque::new(),
            next_batch: 0,
            producer_id: new_producer_id(),
            next_sequence: 0,
            broken: false,
            node: String::new(),
            node_number: 0,
        }
    }

    fn push(&mut self, pending: Pending) {
        self.queued_bytes += pending.size_bytes;
        self.queue.push_back(pending);
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.flights.is_empty()
    }

    /// Whether a new batch may go in flight now.
    fn may_send(&self, limits: &Limits) -> bool {
        !self.broken && self.flights.len() < limits.max_in_flight
    }

    /// Whether the queue's next batch should go now (given that it may). `producer_busy`: the
    /// producer has batches in flight (to any partition); then a sticky run's first batch fills.
    fn ready(&self, now: Instant, limits: &Limits, urgent: bool, producer_busy: bool) -> bool {
        let Some(oldest) = self.queue.front() else { return false };
        urgent
            || (self.flights.is_empty() && !(producer_busy && oldest.sticky))
            || self.queued_bytes >= limits.batch_max_bytes
            || self.queue.len() >= limits.batch_max_records
            || now >= oldest.queued_at + limits.linger
    }

    /// When the queue's next batch is due by linger, if it waits for nothing else.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let oldest = self.queue.front()?;
        self.may_send(limits).then_some(oldest.queued_at + limits.linger)
    }

    /// [`PartitionState::take_sends_up_to`] with no limit but the partition's own.
    #[cfg(test)]
    fn take_sends(&mut self, now: Instant, limits: &Limits, urgent: bool) -> Vec<Outgoing> {
        self.take_sends_up_to(now, limits, urgent, false, usize::MAX)
    }

    /// Everything to send now, in sequence order, at most `max` batches: refused batches whose
    /// turn came again, then new batches from the queue while a flight slot is free and a batch
    /// is ready (`producer_busy` as for [`PartitionState::ready`]).
    fn take_sends_up_to(
        &mut self,
        now: Instant,
        limits: &Limits,
        urgent: bool,
        producer_busy: bool,
        max: usize,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if self.broken {
            self.restart_when_settled();
        } else {
            // Refused batches at the front go again: every batch before them is settled (written)
            // or goes again just before them, in order.
            for flight in &mut self.flights {
                if out.len() >= max {
                    return out;
                }
                let Some(records) = flight.parked.take() else { break };
                out.push(Outgoing { batch: flight.batch, identity: flight.identity, records });
            }
        }
        while out.len() < max && self.may_send(limits) && self.ready(now, limits, urgent, producer_busy) {
            let records = self.take_batch(limits);
            let identity = proto::ProducerIdentity { producer_id: self.producer_id, base_sequence: self.next_sequence };
            self.next_sequence += records.len() as u64;
            let batch = self.next_batch;
            self.next_batch += 1;
            self.flights.push_back(Flight { batch, identity, parked: None, gaps: 0 });
            out.push(Outgoing { batch, identity, records });
        }
        out
    }

    /// The queue's next batch: records in order up to the batch limits (at least one).
    fn take_batch(&mut self, limits: &Limits) -> Vec<Pending> {
        // Count first, so that the batch is allocated once at its size (growing it record by
        // record reallocated it about eight times per batch).
        let (mut count, mut bytes) = (0, 0);
        for next in &self.queue {
            let fits =
                count < limits.batch_max_records && (count == 0 || bytes + next.size_bytes <= limits.batch_max_bytes);
            if !fits {
                break;
            }
            bytes += next.size_bytes;
            count += 1;
        }
        self.queued_bytes -= bytes;
        self.queue.drain(..count).collect()
    }

    /// Takes a batch's outcome.
    fn settle(&mut self, batch: u64, outcome: Outcome, limits: &Limits) {
        let Some(i) = self.flights.iter().position(|f| f.batch == batch) else {
            debug_assert!(false, "batch {batch} settled twice");
            return;
        };
        match outcome {
            Outcome::Acked => {
                self.flights.remove(i);
            }
            Outcome::Failed => {
                self.flights.remove(i);
                self.broken = true;
            }
            Outcome::Gap(records, err) => {
                let flight = &mut self.flights[i];
                flight.gaps += 1;
                if flight.gaps >= limits.max_gaps {
                    tracing::warn!(batch, gaps = flight.gaps, error = %err, "batch refused as a sequence gap too often");
                    fail(records, &err);
                    self.flights.remove(i);
                    self.broken = true;
                } else {
                    tracing::debug!(batch, error = %err, "batch overtook an earlier one; it goes again after it");
                    flight.parked = Some(records);
                }
            }
        }
    }

    /// After a batch failed for good, once nothing is in flight any more: refused batches go back
    /// to the front of the queue, in order, and the partition starts again under a fresh producer
    /// id from sequence 0.
    fn restart_when_settled(&mut self) {
        if !self.flights.iter().all(|f| f.parked.is_some()) {
            return;
        }
        let parked: Vec<Pending> = self.flights.drain(..).filter_map(|f| f.parked).flatten().collect();
        for pending in parked.into_iter().rev() {
            self.queued_bytes += pending.size_bytes;
            self.queue.push_front(pending);
        }
        self.producer_id = new_producer_id();
        self.next_sequence = 0;
        self.broken = false;
    }
}

/// Answers every record of a batch with `err`.
fn fail(records: Vec<Pending>, err: &ClientError) {
    for pending in records {
        let _ = pending.ack.send(Err(err.clone()));
    }
}

/// A batch's end.
struct Settled {
    tp: TopicPartition,
    batch: u64,
    outcome: Outcome,
    /// The node whose in-flight slot it took ([`PartitionState::node_number`] when it was sent).
    node: usize,
}

/// A batch being sent (with its retries).
type Sending = Pin<Box<dyn Future<Output = Settled> + Send>>;

struct Batcher {
    client: Client,
    config: ProducerConfig,
    limits: Limits,
    /// Every partition sent to, in the order it was first sent to (the order free node slots go
    /// round in), and where each one is in it.
    partitions: Vec<(TopicPartition, PartitionState)>,
    partition_numbers: HashMap<TopicPartition, usize>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Every batch being sent, polled by the batcher itself: a batch is first polled, and so put
    /// on the connection, after every batch taken before it (separate tasks could start in any
    /// order, and a batch that overtakes another is refused and must go again).
    sending: FuturesUnordered<Sending>,
    /// Batches in flight per node, by node number. Numbers, not addresses, are what the passes
    /// over every partition look up: with hundreds of partitions, hashing an address per partition
    /// and pass was a good part of a producer's CPU.
    node_flights: Vec<usize>,
    /// The number of each node address ([`PartitionState::node`]) seen.
    node_numbers: HashMap<String, usize>,
    /// Partitions per node number (whose cached leader it is).
    node_partitions: Vec<usize>,
    /// Where the next dispatch starts in the partitions, so that free node slots go to each
    /// partition in turn.
    cursor: usize,
}

impl Batcher {
    fn new(client: Client, config: ProducerConfig) -> Self {
        let limits = Limits::new(&config, client.config().max_attempts);
        Self {
            client,
            config,
            limits,
            partitions: Vec::new(),
            partition_numbers: HashMap::new(),
            flush_waiters: Vec::new(),
            sending: FuturesUnordered::new(),
            node_flights: Vec::new(),
            node_numbers: HashMap::new(),
            node_partitions: Vec::new(),
            cursor: 0,
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut closing = false;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = commands.recv(), if !closing => match cmd {
                    Some(cmd) => {
                        // One clock read for the round: every record taken in it is queued now.
                        let now = Instant::now();
                        self.command(cmd, now);
                        // Take what else is queued too, so a burst of sends forms one batch.
                        for _ in 1..MAX_EVENTS_PER_ROUND {
                            match commands.try_recv() {
                                Ok(cmd) => self.command(cmd, now),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => {
                                    closing = true;
                                    break;
                                }
                            }
                        }
                    }
                    None => closing = true,
                },
                Some(settled) = self.sending.next(), if !self.sending.is_empty() => self.settle(settled),
                () = sleep_until(deadline) => {}
            }
            let urgent = closing || !self.flush_waiters.is_empty();
            self.dispatch(urgent);
            if urgent && self.partitions.iter().all(|(_, s)| s.is_idle()) {
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                if closing {
                    return;
                }
            }
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Send { tp, record, size_bytes, sticky, ack, permit } => {
                self.partition(tp).push(Pending { record, size_bytes, sticky, queued_at: now, ack, _permit: permit });
            }
            Command::Flush(done) => self.flush_waiters.push(done),
        }
    }

    /// The state of partition `tp`, made on its first record (its leader as the client knows it).
    fn partition(&mut self, tp: TopicPartition) -> &mut PartitionState {
        let i = match self.partition_numbers.get(&tp) {
            Some(i) => *i,
            None => {
                let mut state = PartitionState::new();
                state.node = self.client.cached_leader(&tp.0, tp.1).unwrap_or_default();
                state.node_number = self.node_number(&state.node);
                self.node_partitions[state.node_number] += 1;
                self.partition_numbers.insert(tp.clone(), self.partitions.len());
                self.partitions.push((tp, state));
                self.partitions.len() - 1
            }
        };
        &mut self.partitions[i].1
    }

    /// The number of node address `node` (given on its first sight; a producer sees a handful).
    fn node_number(&mut self, node: &str) -> usize {
        if let Some(n) = self.node_numbers.get(node) {
            return *n;
        }
        let n = self.node_flights.len();
        self.node_flights.push(0);
        self.node_partitions.push(0);
        self.node_numbers.insert(node.to_string(), n);
        n
    }

    fn settle(&mut self, s: Settled) {
        debug_assert!(self.node_flights[s.node] > 0, "a settled batch held a slot of node {}", s.node);
        self.node_flights[s.node] -= 1;
        if let Some(&i) = self.partition_numbers.get(&s.tp) {
            self.partitions[i].1.settle(s.batch, s.outcome, &self.limits);
            // The send may have found a new leader.
            let node = self.client.cached_leader(&s.tp.0, s.tp.1).unwrap_or_default();
            if node != self.partitions[i].1.node {
                let number = self.node_number(&node);
                let state = &mut self.partitions[i].1;
                self.node_partitions[state.node_number] -= 1;
                self.node_partitions[number] += 1;
                state.node = node;
                state.node_number = number;
            }
        }
    }

    /// Whether every node that leads a partition has all its in-flight slots taken (then no
    /// partition can send, and none is due by linger: they wait for a batch to settle).
    fn all_nodes_busy(&self) -> bool {
        let cap = self.limits.max_in_flight_per_node;
        self.node_flights.iter().zip(&self.node_partitions).all(|(flights, led)| *led == 0 || *flights >= cap)
    }

    /// When the next partition's batch is due by linger (partitions whose node has no free slot
    /// wait for a batch to settle instead).
    fn next_deadline(&self) -> Option<Instant> {
        if self.all_nodes_busy() {
            return None;
        }
        let cap = self.limits.max_in_flight_per_node;
        self.partitions
            .iter()
            .filter(|(_, s)| self.node_flights[s.node_number] < cap)
            .filter_map(|(_, s)| s.deadline(&self.limits))
            .min()
    }

    /// Sends what is ready, within each node's free slots, starting at the partition after the
    /// last one served so that the slots go round.
    fn dispatch(&mut self, urgent: bool) {
        let count = self.partitions.len();
        // With every node's slots taken nothing can go (refused batches going again take slots
        // too); this is most passes under load.
        if count == 0 || self.all_nodes_busy() {
            return;
        }
        let now = Instant::now();
        let cap = self.limits.max_in_flight_per_node;
        let start = self.cursor % count;
        let mut last_served = None;
        for i in 0..count {
            let (tp, state) = &mut self.partitions[(start + i) % count];
            let used = self.node_flights[state.node_number];
            if used >= cap {
                continue;
            }
            let producer_busy = self.node_flights.iter().any(|n| *n > 0);
            let sends = state.take_sends_up_to(now, &self.limits, urgent, producer_busy, cap - used);
            if sends.is_empty() {
                continue;
            }
            last_served = Some(i);
            self.node_flights[state.node_number] += sends.len();
            for out in sends {
                let identity = self.config.idempotent.then_some(out.identity);
                let (client, tp, node) = (self.client.clone(), tp.clone(), state.node_number);
                self.sending.push(Box::pin(async move {
                    let outcome = send_batch(&client, &tp, out.records, identity).await;
                    Settled { tp, batch: out.batch, outcome, node }
                }));
            }
        }
        if let Some(i) = last_served {
            self.cursor = (start + i + 1) % count;
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends one batch to the partition leader (with retries inside [`Client`]) and answers every
/// record's waiter, unless the batch was refused as a sequence gap (then it comes back).
async fn send_batch(
    client: &Client,
    (topic, partition): &TopicPartition,
    batch: Vec<Pending>,
    producer: Option<proto::ProducerIdentity>,
) -> Outcome {
    let request = proto::ProduceRequest {
        topic: topic.clone(),
        partition: *partition,
        records: batch.iter().map(|p| p.record.clone()).collect(),
        producer,
    };
    let result = client
        .call_to_leader(topic, *partition, |addr, ch, to_leader| {
            let (addr, request) = (addr.to_string(), request.clone());
            async move { client.produce_on_call(&addr, ch, request, to_leader).await }
        })
        .await
        .and_then(|resp| {
            client.note_throttle(true, resp.throttle_time_ms);
            receipts(topic, *partition, batch.len(), &resp.batches)
        });
    match result {
        Ok(receipts) => {
            for (pending, receipt) in batch.into_iter().zip(receipts) {
                let _ = pending.ack.send(Ok(receipt));
            }
            Outcome::Acked
        }
        Err(err) if err.code() == Some(ErrorCode::SequenceGap) => Outcome::Gap(batch, err),
        Err(err) => {
            tracing::warn!(%topic, partition, error = %err, "batch failed");
            fail(batch, &err);
            Outcome::Failed
        }
    }
}

/// Each record's receipt from the stored batches of one request: record `i` of a batch lands at
/// `base_offset + i`, in the batch's entry. The batches must cover the request's `count` records,
/// in order.
fn receipts(
    topic: &str,
    partition: u32,
    count: usize,
    batches: &[proto::BatchAck],
) -> Result<Vec<RecordMetadata>, ClientError> {
    let covered: u64 = batches.iter().map(|b| u64::from(b.record_count)).sum();
    if covered != count as u64 || batches.iter().any(|b| b.record_count == 0) {
        return Err(ClientError::Protocol(format!(
            "Produce to {topic}/{partition} answered {} batches holding {covered} records for {count} records",
            batches.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for b in batches {
        let chain_hash = hash32(&b.chain_hash)?;
        out.extend((0..b.record_count).map(|position| RecordMetadata {
            topic: topic.to_string(),
            partition,
            offset: b.base_offset + u64::from(position),
            chain_hash,
            entry_index: b.entry_index,
            position,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        batch_max_bytes: 1_000,
        batch_max_records: 4,
        linger: Duration::from_secs(3_600),
        max_in_flight: 3,
        max_in_flight_per_node: 8,
        max_gaps: 5,
    };

    type Delivery = oneshot::Receiver<Result<RecordMetadata, ClientError>>;

    fn pending(value: &str) -> (Pending, Delivery) {
        let (ack, rx) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let record = proto::Record { value: bytes::Bytes::from(value.to_string()), ..Default::default() };
        (Pending { record, size_bytes: 10, sticky: false, queued_at: Instant::now(), ack, _permit: permit }, rx)
    }

    fn queue(state: &mut PartitionState, values: &[&str]) -> Vec<Delivery> {
        values
            .iter()
            .map(|v| {
                let (p, rx) = pending(v);
                state.push(p);
                rx
            })
            .collect()
    }

    fn values(out: &Outgoing) -> Vec<String> {
        out.records.iter().map(|p| String::from_utf8_lossy(&p.record.value).to_string()).collect()
    }

    fn gap() -> ClientError {
        ClientError::Server { code: ErrorCode::SequenceGap, limit: None, message: "gap".into() }
    }

    /// A partition whose first batch (one record, sequence 0) was acknowledged; with the time and
    /// the producer id.
    fn known_partition() -> (PartitionState, Instant, u64) {
        let mut s = PartitionState::new();
        let now = Instant::now();
        queue(&mut s, &["a"]);
        let first = s.take_sends(now, &LIMITS, false);
        s.settle(first[0].batch, Outcome::Acked, &LIMITS);
        assert!(s.flights.is_empty());
        (s, now, first[0].identity.producer_id)
    }

    #[test]
    fn a_lone_record_goes_at_once_and_later_ones_fill_while_a_batch_is_in_flight() {
        let mut s = PartitionState::new();
        let now = Instant::now();
        queue(&mut s, &["a"]);
        // Nothing in flight: no linger, even an hour long.
        let first = s.take_sends(now, &LIMITS, false);
        assert_eq!(first.iter().map(values).collect::<Vec<_>>(), vec![vec!["a"]]);
        // While it is in flight, the next records fill a batch: a full one (at most 4 records) goes
        // at once behind the first, before the partition acknowledged the producer's first batch,
        // with consecutive sequences (the partition holds a new producer's batch that arrives
        // before its first until the first is in).
        queue(&mut s, &["b", "c", "d", "e", "f"]);
        let next = s.take_sends(now, &LIMITS, false);
        assert_eq!(next.iter().map(values).collect::<Vec<_>>(), vec![vec!["b", "c", "d", "e"]]);
        assert_eq!(next[0].identity.base_sequence, 1);
        s.settle(first[0].batch, Outcome::Acked, &LIMITS);
        // With a batch in flight, a partial batch lingers...
        assert!(s.take_sends(now, &LIMITS, false).is_empty());
        let due = s.queue[0].queued_at + LIMITS.linger;
        assert_eq!(s.deadline(&LIMITS), Some(due));
        // ...until linger passed, or a flush.
        assert_eq!(s.take_sends(due, &LIMITS, false).iter().map(values).collect::<Vec<_>>(), vec![vec!["f"]]);
        queue(&mut s, &["g"]);
        let flushed = s.take_sends(now, &LIMITS, true);
        assert_eq!((flushed.len(), flushed[0].identity.base_sequence), (1, 6));
    }

    #[test]
    fn a_sticky_run_starting_while_the_producer_is_busy_fills_its_first_batch() {
        let sticky = |s: &mut PartitionState, values: &[&str]| {
            let rx = queue(s, values);
            for p in s.queue.iter_mut() {
                p.sticky = true;
            }
            rx
        };
        let now = Instant::now();
        // The producer has nothing in flight: a sticky run's lone record goes at once.
        let mut idle = PartitionState::new();
        sticky(&mut idle, &["a"]);
        assert_eq!(idle.take_sends_up_to(now, &LIMITS, false, false, usize::MAX).len(), 1);
        // Batches in flight elsewhere: the run's first records wait for the batch to fill...
        let mut s = PartitionState::new();
        sticky(&mut s, &["a", "b"]);
        assert!(s.take_sends_up_to(now, &LIMITS, false, true, usize::MAX).is_empty());
        assert_eq!(s.deadline(&LIMITS), Some(s.queue[0].queued_at + LIMITS.linger), "due by linger");
        // ...and go as one full batch.
        sticky(&mut s, &["c", "d", "e"]);
        let sent = s.take_sends_up_to(now, &LIMITS, false, true, usize::MAX);
        assert_eq!(sent.iter().map(values).collect::<Vec<_>>(), vec![vec!["a", "b", "c", "d"]]);
        // Or at linger, or once the producer has nothing in flight any more.
        let mut s = PartitionState::new();
        sticky(&mut s, &["a"]);
        let due = s.queue[0].queued_at + LIMITS.linger;
        assert_eq!(s.take_sends_up_to(due, &LIMITS, false, true, usize::MAX).len(), 1);
        let mut s = PartitionState::new();
        sticky(&mut s, &["a"]);
        assert_eq!(s.take_sends_up_to(now, &LIMITS, false, false, usize::MAX).len(), 1);
        // Keyed (or explicitly placed) records on a partition with nothing in flight go at once
        // even while the producer is busy: nothing says more are coming to that partition.
        let mut keyed = PartitionState::new();
        queue(&mut keyed, &["k"]);
        assert_eq!(keyed.take_sends_up_to(now, &LIMITS, false, true, usize::MAX).len(), 1);
    }

    #[test]
    fn up_to_max_in_flight_batches_go_from_the_producers_first_batch_on() {
        let mut s = PartitionState::new();
        let now = Instant::now();
        queue(&mut s, &["b"; 20]);
        let sent = s.take_sends(now, &LIMITS, false);
        assert_eq!(sent.len(), LIMITS.max_in_flight, "full batches go while a slot is free, the first one's too");
        let bases: Vec<u64> = sent.iter().map(|o| o.identity.base_sequence).collect();
        assert_eq!(bases, vec![0, 4, 8]);
        assert!(sent.iter().all(|o| o.identity.producer_id == s.producer_id));
        assert!(s.take_sends(now, &LIMITS, true).is_empty(), "no slot free");
        s.settle(sent[1].batch, Outcome::Acked, &LIMITS);
        assert_eq!(s.take_sends(now, &LIMITS, false)[0].identity.base_sequence, 12);
    }

    #[test]
    fn a_batch_refused_as_a_gap_goes_again_with_its_sequences_after_the_batches_before_it() {
        let (mut s, now, _) = known_partition();
        queue(&mut s, &["b1", "b2", "b3", "b4", "c1", "c2", "c3", "c4", "d1", "d2", "d3", "d4"]);
        let id = |o: &Outgoing| (o.batch, o.identity);
        let mut sent = s.take_sends(now, &LIMITS, false).into_iter();
        let (b, c, d) = (sent.next().unwrap(), sent.next().unwrap(), sent.next().unwrap());
        let (b_id, c_id, d_id) = (id(&b), id(&c), id(&d));
        // c and d overtook b (b is being retried): both refused, both wait for b.
        s.settle(d.batch, Outcome::Gap(d.records, gap()), &LIMITS);
        s.settle(c.batch, Outcome::Gap(c.records, gap()), &LIMITS);
        assert!(s.take_sends(now, &LIMITS, true).is_empty(), "nothing goes before b settles");
        s.settle(b_id.0, Outcome::Acked, &LIMITS);
        // Now c and d go again, in order, with their own sequences.
        let again = s.take_sends(now, &LIMITS, false);
        assert_eq!(again.iter().map(id).collect::<Vec<_>>(), vec![c_id, d_id]);
        assert_eq!(values(&again[0]), vec!["c1", "c2", "c3", "c4"]);
        // d overtook c again; it waits for c once more.
        let d = again.into_iter().nth(1).unwrap();
        s.settle(d.batch, Outcome::Gap(d.records, gap()), &LIMITS);
        assert!(s.take_sends(now, &LIMITS, false).is_empty());
        s.settle(c_id.0, Outcome::Acked, &LIMITS);
        let last = s.take_sends(now, &LIMITS, false);
        assert_eq!(last.iter().map(id).collect::<Vec<_>>(), vec![d_id]);
    }

    #[test]
    fn after_a_batch_fails_for_good_the_partition_restarts_under_a_fresh_producer_id() {
        let (mut s, now, old_id) = known_partition();
        queue(&mut s, &["b1", "b2", "b3", "b4", "c1", "c2", "c3", "c4", "d1", "d2", "d3", "d4", "e"]);
        let mut sent = s.take_sends(now, &LIMITS, false).into_iter();
        let (b, c, d) = (sent.next().unwrap(), sent.next().unwrap(), sent.next().unwrap());
        // b fails for good (its records were answered by its task); c was refused because b is
        // missing; d is still in flight.
        s.settle(b.batch, Outcome::Failed, &LIMITS);
        s.settle(c.batch, Outcome::Gap(c.records, gap()), &LIMITS);
        assert!(s.take_sends(now, &LIMITS, true).is_empty(), "nothing new while d is in flight");
        s.settle(d.batch, Outcome::Gap(d.records, gap()), &LIMITS);
        // Settled: c and d's records go first, then e, under a fresh id from sequence 0, pipelined
        // as before (e, a partial batch, lingers behind them).
        let restarted = s.take_sends(now, &LIMITS, false);
        let batches: Vec<Vec<String>> = restarted.iter().map(values).collect();
        assert_eq!(batches, vec![vec!["c1", "c2", "c3", "c4"], vec!["d1", "d2", "d3", "d4"]]);
        assert!(restarted.iter().all(|o| o.identity.producer_id != old_id));
        assert_eq!(restarted.iter().map(|o| o.identity.base_sequence).collect::<Vec<_>>(), vec![0, 4]);
        s.settle(restarted[0].batch, Outcome::Acked, &LIMITS);
        let rest = s.take_sends(now, &LIMITS, true);
        assert_eq!(rest.iter().map(values).collect::<Vec<_>>(), vec![vec!["e"]]);
        assert_eq!(rest[0].identity.base_sequence, 8);
    }

    #[test]
    fn a_batch_refused_too_often_fails_instead_of_looping() {
        let mut s = PartitionState::new();
        let now = Instant::now();
        let mut deliveries = queue(&mut s, &["a"]);
        let mut out = s.take_sends(now, &LIMITS, false);
        for _ in 0..LIMITS.max_gaps {
            let o = out.pop().unwrap();
            s.settle(o.batch, Outcome::Gap(o.records, gap()), &LIMITS);
            out = s.take_sends(now, &LIMITS, false);
        }
        let answer = deliveries.pop().unwrap().try_recv().unwrap();
        assert!(matches!(answer, Err(ref e) if e.code() == Some(ErrorCode::SequenceGap)), "{answer:?}");
        assert!(s.is_idle());
    }

    #[test]
    fn receipts_number_each_batch_from_its_base_offset() {
        let ack = |base_offset, record_count, entry_index, h: u8| proto::BatchAck {
            base_offset,
            record_count,
            entry_index,
            chain_hash: bytes::Bytes::from(vec![h; 32]),
        };
        let r = receipts("t", 2, 5, &[ack(10, 3, 40, 1), ack(13, 2, 41, 2)]).unwrap();
        let got: Vec<(u64, u64, u32, u8)> =
            r.iter().map(|m| (m.offset, m.entry_index, m.position, m.chain_hash.0[0])).collect();
        assert_eq!(got, vec![(10, 40, 0, 1), (11, 40, 1, 1), (12, 40, 2, 1), (13, 41, 0, 2), (14, 41, 1, 2)]);
        assert!(r.iter().all(|m| m.topic == "t" && m.partition == 2));
        assert!(matches!(receipts("t", 0, 4, &[ack(0, 3, 1, 0)]), Err(ClientError::Protocol(_))));
        assert!(matches!(receipts("t", 0, 0, &[ack(0, 0, 1, 0)]), Err(ClientError::Protocol(_))));
        let short_hash = proto::BatchAck { chain_hash: bytes::Bytes::from_static(b"x"), ..ack(0, 1, 1, 0) };
        assert!(matches!(receipts("t", 0, 1, &[short_hash]), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn without_idempotence_one_batch_is_in_flight() {
        let config = ProducerConfig { idempotent: false, max_in_flight: 5, ..ProducerConfig::default() };
        assert_eq!(Limits::new(&config, 3).max_in_flight, 1);
        let config = ProducerConfig { max_in_flight: 0, ..ProducerConfig::default() };
        assert_eq!(Limits::new(&config, 3).max_in_flight, 1);
        assert_eq!(Limits::new(&ProducerConfig::default(), 3).max_in_flight, 5);
    }

    /// A batcher over a client that is never called (its sends are not polled here).
    fn batcher(max_in_flight_per_node: usize) -> Batcher {
        let client = Client::new(crate::ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let config = ProducerConfig { max_in_flight_per_node, ..ProducerConfig::default() };
        Batcher::new(client, config)
    }

    /// The batches in flight, per partition.
    fn in_flight(b: &Batcher) -> Vec<(u32, usize)> {
        let mut v: Vec<(u32, usize)> = b.partitions.iter().map(|(tp, s)| (tp.1, s.flights.len())).collect();
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn a_nodes_in_flight_slots_are_capped_across_partitions_and_go_round() {
        let mut b = batcher(4);
        // Ten partitions of one node (leader unknown: all count as one), two records each.
        for p in 0..10u32 {
            queue(b.partition(("t".to_string(), p)), &["a", "b"]);
        }
        b.dispatch(false);
        let flying: usize = in_flight(&b).iter().map(|(_, n)| n).sum();
        assert_eq!(flying, 4, "no more than the node's slots: {:?}", in_flight(&b));
        let node = b.node_numbers[""];
        assert_eq!(b.node_flights[node], 4);
        assert!(in_flight(&b).iter().all(|(_, n)| *n <= 1), "two records make one batch: one per partition");
        // Partitions waiting for a slot have no linger deadline: they wait for a settle.
        let due_in = b.next_deadline();
        assert!(due_in.is_none(), "a node without a free slot sets no deadline: {due_in:?}");
        // Settle one batch at a time: each frees a slot, which goes to a partition not yet served
        // before any partition is served a second time.
        let mut served: Vec<u32> = in_flight(&b).iter().filter(|(_, n)| *n > 0).map(|(p, _)| *p).collect();
        for _ in 0..6 {
            let (tp, batch) = b
                .partitions
                .iter()
                .find_map(|(tp, s)| s.flights.front().map(|f| (tp.clone(), f.batch)))
                .expect("a batch in flight");
            b.settle(Settled { tp, batch, outcome: Outcome::Acked, node });
            b.dispatch(false);
            assert_eq!(b.node_flights[node], 4, "{:?}", in_flight(&b));
            for (p, n) in in_flight(&b) {
                if n > 0 && !served.contains(&p) {
                    served.push(p);
                }
            }
        }
        served.sort_unstable();
        assert_eq!(served, (0..10).collect::<Vec<_>>(), "every partition got a slot in turn");
    }

    /// Caches `leaders` (partition -> address) of topic `t` in the batcher's client.
    fn lead(b: &Batcher, leaders: &[(u32, &str)]) {
        let partitions = leaders
            .iter()
            .map(|(p, addr)| proto::PartitionInfo {
                partition: *p,
                leader_id: 1,
                leader_addr: (*addr).to_string(),
                ..Default::default()
            })
            .collect();
        b.client.learn_topic(&proto::TopicInfo { name: "t".into(), config: None, partitions });
    }

    #[tokio::test]
    async fn a_partition_whose_leader_moved_takes_the_new_nodes_slots_and_frees_the_old_ones() {
        let mut b = batcher(1);
        lead(&b, &[(0, "a:1"), (1, "a:1")]);
        let (p0, p1) = (("t".to_string(), 0), ("t".to_string(), 1));
        queue(b.partition(p0.clone()), &["x"]);
        queue(b.partition(p1.clone()), &["y"]);
        b.dispatch(false);
        assert_eq!(in_flight(&b), [(0, 1), (1, 0)], "node a has one slot, partition 0 took it");
        assert!(b.next_deadline().is_none(), "partition 1 waits for node a's slot");
        // Partition 0's leader moves to node b; its batch settles.
        queue(b.partition(p0.clone()), &["z"]);
        lead(&b, &[(0, "b:1"), (1, "a:1")]);
        let batch = b.partitions[b.partition_numbers[&p0]].1.flights.front().unwrap().batch;
        b.settle(Settled { tp: p0, batch, outcome: Outcome::Acked, node: b.node_numbers["a:1"] });
        b.dispatch(false);
        assert_eq!(in_flight(&b), [(0, 1), (1, 1)], "partition 0 sent to node b, partition 1 took node a's slot");
        assert_eq!(b.node_flights[b.node_numbers["a:1"]], 1);
        assert_eq!(b.node_flights[b.node_numbers["b:1"]], 1);
        // Both nodes busy: nothing goes and nothing is due until a batch settles.
        queue(b.partition(p1), &["w"]);
        b.dispatch(false);
        assert_eq!(in_flight(&b), [(0, 1), (1, 1)]);
        assert!(b.next_deadline().is_none());
    }
}
