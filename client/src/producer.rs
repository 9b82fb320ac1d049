//! The producer: batching per partition, idempotent delivery, retries.
//!
//! [`Producer::send`] picks the record's partition (see [`crate::partitioner`]) and queues it; a
//! background task gathers each partition's records into a batch, sent when it reaches
//! `batch_max_bytes` or `batch_max_records`, after `linger_ms`, or on [`Producer::flush`]. At most
//! one batch per partition is in flight, so records of a partition are written in `send` order even
//! across retries. With `idempotent`, each batch carries the producer id and the sequence number of
//! its first record: a batch retried after a lost reply is written once. If a batch fails for good,
//! its records fail and the partition continues under the same producer id with the next
//! sequences: the failed batch may still be in flight and commit later, and the partition then
//! sees sequences at or below what it already wrote and hides it as a duplicate, so records of one
//! producer never appear out of `send` order. (A fresh producer id would let such a late batch land
//! after records sent after it.)

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Route};
use crate::config::ProducerConfig;
use crate::error::ClientError;
use crate::partitioner::Partitioner;
use crate::proto;
use crate::records::{ProducerRecord, RecordMetadata, hash32};

type Ack = oneshot::Sender<Result<RecordMetadata, ClientError>>;
type TopicPartition = (String, u32);

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
    Send { tp: TopicPartition, record: proto::Record, size_bytes: usize, ack: Ack, permit: OwnedSemaphorePermit },
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
        let task = tokio::spawn(Batcher::new(client.clone(), config).run(rx));
        Self { client, partitioner: Partitioner::new(), buffered, commands, task }
    }

    /// Queues a record; the returned future resolves once it is committed (or failed for good).
    /// Waits first if `max_buffered_records` are already queued.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::InvalidRequest("a record needs a topic".into()));
        }
        let partitions = self.client.partition_count(&record.topic).await?;
        let partition = self.partitioner.partition(record.partition, record.key.as_deref(), partitions);
        if partition >= partitions {
            return Err(ClientError::InvalidRequest(format!(
                "partition {partition} does not exist: topic {} has {partitions} partitions",
                record.topic
            )));
        }
        let permit = self.buffered.clone().acquire_owned().await.map_err(|_| ClientError::ProducerClosed)?;
        let (ack, rx) = oneshot::channel();
        let size_bytes = record.size_bytes();
        let command =
            Command::Send { tp: (record.topic.clone(), partition), record: record.to_proto(), size_bytes, ack, permit };
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
    ack: Ack,
    _permit: OwnedSemaphorePermit,
}

struct PartitionState {
    queue: VecDeque<Pending>,
    queued_bytes: usize,
    oldest: Option<Instant>,
    in_flight: bool,
    producer_id: u64,
    next_sequence: u64,
}

impl PartitionState {
    /// Marks a batch of `records` in flight and answers its identity: this partition's producer
    /// id and the sequence of its first record.
    fn start_batch(&mut self, records: usize) -> proto::ProducerIdentity {
        debug_assert!(!self.in_flight, "one batch per partition in flight");
        self.in_flight = true;
        let identity = proto::ProducerIdentity { producer_id: self.producer_id, base_sequence: self.next_sequence };
        self.next_sequence += records as u64;
        identity
    }

    /// The batch in flight ended. A failed batch keeps its sequences used: it may still commit
    /// later, and must then be older than every later batch (a duplicate to the partition).
    fn batch_done(&mut self) {
        self.in_flight = false;
    }

    fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            queued_bytes: 0,
            oldest: None,
            in_flight: false,
            producer_id: new_producer_id(),
            next_sequence: 0,
        }
    }
}

struct Batcher {
    client: Client,
    config: ProducerConfig,
    partitions: HashMap<TopicPartition, PartitionState>,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Batcher {
    fn new(client: Client, config: ProducerConfig) -> Self {
        Self { client, config, partitions: HashMap::new(), flush_waiters: Vec::new() }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TopicPartition>();
        let mut closing = false;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = commands.recv(), if !closing => match cmd {
                    Some(Command::Send { tp, record, size_bytes, ack, permit }) => {
                        let state = self.partitions.entry(tp).or_insert_with(PartitionState::new);
                        state.oldest.get_or_insert_with(Instant::now);
                        state.queued_bytes += size_bytes;
                        state.queue.push_back(Pending { record, size_bytes, ack, _permit: permit });
                    }
                    Some(Command::Flush(done)) => self.flush_waiters.push(done),
                    None => closing = true,
                },
                Some(tp) = done_rx.recv() => {
                    if let Some(state) = self.partitions.get_mut(&tp) {
                        state.batch_done();
                    }
                }
                () = sleep_until(deadline) => {}
            }
            let urgent = closing || !self.flush_waiters.is_empty();
            self.dispatch(urgent, &done_tx);
            let idle = self.partitions.values().all(|s| s.queue.is_empty() && !s.in_flight);
            if idle {
                for waiter in self.flush_waiters.drain(..) {
                    let _ = waiter.send(());
                }
                if closing {
                    return;
                }
            }
        }
    }

    /// When the oldest queued record of an idle partition reaches its linger time.
    fn next_deadline(&self) -> Option<Instant> {
        let linger = Duration::from_millis(self.config.linger_ms);
        self.partitions.values().filter(|s| !s.in_flight).filter_map(|s| s.oldest).min().map(|t| t + linger)
    }

    fn dispatch(&mut self, urgent: bool, done: &mpsc::UnboundedSender<TopicPartition>) {
        let linger = Duration::from_millis(self.config.linger_ms);
        let now = Instant::now();
        for (tp, state) in &mut self.partitions {
            if state.in_flight || state.queue.is_empty() {
                continue;
            }
            let full =
                state.queued_bytes >= self.config.batch_max_bytes || state.queue.len() >= self.config.batch_max_records;
            let lingered = state.oldest.is_some_and(|t| now >= t + linger);
            if !(urgent || full || lingered) {
                continue;
            }
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(next) = state.queue.front() {
                let fits = batch.len() < self.config.batch_max_records.max(1)
                    && (batch.is_empty() || bytes + next.size_bytes <= self.config.batch_max_bytes);
                if !fits {
                    break;
                }
                bytes += next.size_bytes;
                batch.push(state.queue.pop_front().expect("front exists"));
            }
            state.queued_bytes -= bytes;
            if state.queue.is_empty() {
                state.oldest = None;
            }
            let identity = state.start_batch(batch.len());
            let identity = self.config.idempotent.then_some(identity);
            let client = self.client.clone();
            let tp = tp.clone();
            let done = done.clone();
            tokio::spawn(async move {
                send_batch(&client, &tp, batch, identity).await;
                let _ = done.send(tp);
            });
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends one batch (with retries inside [`Client::call`]) and answers every record's waiter.
async fn send_batch(
    client: &Client,
    (topic, partition): &TopicPartition,
    batch: Vec<Pending>,
    producer: Option<proto::ProducerIdentity>,
) {
    let request = proto::ProduceRequest {
        topic: topic.clone(),
        partition: *partition,
        records: batch.iter().map(|p| p.record.clone()).collect(),
        producer,
    };
    let result = client
        .call(Route::Partition(topic.clone(), *partition), |ch| {
            let req = client.request(request.clone(), Duration::ZERO);
            async move { Client::produce_client(ch).produce(req).await }
        })
        .await
        .and_then(|resp| {
            if resp.acks.len() == batch.len() {
                Ok(resp.acks)
            } else {
                Err(ClientError::Protocol(format!(
                    "Produce answered {} acks for {} records",
                    resp.acks.len(),
                    batch.len()
                )))
            }
        });
    match result {
        Ok(acks) => {
            for (pending, ack) in batch.into_iter().zip(acks) {
                let meta = hash32(&ack.chain_hash).map(|chain_hash| RecordMetadata {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: ack.offset,
                    chain_hash,
                });
                let _ = pending.ack.send(meta);
            }
        }
        Err(err) => {
            tracing::warn!(%topic, partition, error = %err, "batch failed");
            for pending in batch {
                let _ = pending.ack.send(Err(err.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_batch_keeps_the_producer_id_and_its_sequences_used() {
        let mut state = PartitionState::new();
        let first = state.start_batch(3);
        assert_eq!(first.base_sequence, 0);
        state.batch_done();
        // The next batch comes after the failed one in the same producer's sequence space, so if
        // the failed batch commits late it is a duplicate, never a record after this batch.
        let next = state.start_batch(2);
        assert_eq!((next.producer_id, next.base_sequence), (first.producer_id, 3));
        state.batch_done();
        assert_eq!(state.start_batch(1).base_sequence, 5);
    }
}
