//! The order of a connection's pipelined produce requests, per partition.
//!
//! A connection's Produce requests are served concurrently ([`super::listener`]), but what they
//! store in a partition must land in the order the requests arrived (Kafka clients rely on it, and
//! an idempotent producer's sequences require it). Each partition a request produces to gets a
//! [`Turn`] when the request is read, chained to the previous produce of that partition on the
//! connection:
//!
//! - an idempotent producer's batch that continues the previous one (same producer id and epoch,
//!   base sequence = the previous batches' next sequence) starts as soon as the previous one has
//!   *started* producing: Shale's proposer numbers a producer's batches in sequence order (a batch
//!   that arrives ahead of its predecessor waits for it), so both can be committing at once;
//! - any other batch (no producer, another producer, a retry, a sequence that does not follow)
//!   starts once the previous one is *done* (answered or failed): nothing else keeps their order.
//!
//! A turn that is dropped counts as done, so a request that fails early never holds up the next.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::ProduceRequest;
use tokio::sync::watch;

/// Where a produce is; "done" is its [`Turn`] dropped (the sender closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Waiting for the produce before it.
    Waiting,
    /// Handed to the cluster (an idempotent successor may start).
    Started,
}

/// An idempotent producer's batches in one partition's records: `(producer id, epoch, first
/// sequence, the sequence after the last record)`.
type Sequences = (i64, i16, i32, i64);

/// The last produce of one partition on the connection.
#[derive(Debug)]
struct Last {
    stage: watch::Receiver<Stage>,
    sequences: Option<Sequences>,
}

/// Per connection: the last produce of each partition (see the module docs).
#[derive(Debug, Default)]
pub struct PartitionOrder {
    last: HashMap<(String, i32), Last>,
}

/// Past this many partitions remembered, those whose last produce is done are forgotten.
const PRUNE_AT: usize = 256;

impl PartitionOrder {
    /// One turn per partition of `req`, in the order of its topics and their partitions.
    pub fn turns(&mut self, req: &ProduceRequest) -> Vec<Turn> {
        let mut turns = Vec::new();
        for t in &req.topic_data {
            for p in &t.partition_data {
                let sequences = p.records.as_ref().and_then(peek_sequences);
                turns.push(self.turn(t.name.0.as_str(), p.index, sequences));
            }
        }
        turns
    }

    fn turn(&mut self, topic: &str, partition: i32, sequences: Option<Sequences>) -> Turn {
        if self.last.len() >= PRUNE_AT {
            self.last.retain(|_, l| l.stage.has_changed().is_ok());
        }
        let (mine, stage) = watch::channel(Stage::Waiting);
        let previous = self.last.insert((topic.to_string(), partition), Last { stage, sequences });
        let after = previous.map(|p| {
            let follows = match (p.sequences, sequences) {
                (Some((id, epoch, _, next)), Some((id2, epoch2, first, _))) => {
                    (id, epoch) == (id2, epoch2) && next == i64::from(first)
                }
                _ => false,
            };
            (p.stage, !follows)
        });
        Turn { after, mine }
    }
}

/// One partition's place in its connection's order: [`Turn::wait`] before producing; dropping
/// it lets the next produce of the partition go.
#[derive(Debug)]
pub struct Turn {
    /// The previous produce of the partition, and whether it must be done (not only started).
    after: Option<(watch::Receiver<Stage>, bool)>,
    mine: watch::Sender<Stage>,
}

impl Turn {
    /// Waits until this produce may start, then marks it started.
    /// Cancel-safe: a wait dropped early is taken up again by the next.
    pub async fn wait(&mut self) {
        if let Some((previous, until_done)) = &mut self.after {
            if *until_done {
                // `changed` fails once the previous turn is dropped.
                while previous.changed().await.is_ok() {}
            } else {
                let _ = previous.wait_for(|s| *s == Stage::Started).await;
            }
        }
        self.after = None;
        self.mine.send_replace(Stage::Started);
    }
}

/// The producer and sequences of the v2 record batches in `records`, read from their headers
/// (nothing is decoded); `None` unless every batch is the same idempotent producer's and their
/// sequences follow each other. Malformed bytes are `None` too (the produce refuses them later).
pub fn peek_sequences(records: &Bytes) -> Option<Sequences> {
    // v2 batch header: base offset i64 @0, batch length i32 @8, leader epoch i32 @12, magic i8 @16,
    // crc u32 @17, attributes i16 @21, last offset delta i32 @23, timestamps 2 x i64 @27,
    // producer id i64 @43, producer epoch i16 @51, base sequence i32 @53, record count i32 @57.
    const HEADER: usize = 61;
    let be_i16 = |b: &[u8], at: usize| i16::from_be_bytes([b[at], b[at + 1]]);
    let be_i32 = |b: &[u8], at: usize| i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let be_i64 = |b: &[u8], at: usize| i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let mut rest: &[u8] = records;
    let mut found: Option<Sequences> = None;
    while !rest.is_empty() {
        if rest.len() < HEADER || rest[16] != 2 {
            return None;
        }
        let size = 12usize.checked_add(usize::try_from(be_i32(rest, 8)).ok()?)?;
        if size < HEADER || size > rest.len() {
            return None;
        }
        let (id, epoch, first, count) = (be_i64(rest, 43), be_i16(rest, 51), be_i32(rest, 53), be_i32(rest, 57));
        if id < 0 || first < 0 || count <= 0 {
            return None;
        }
        let next = i64::from(first) + i64::from(count);
        found = match found {
            None => Some((id, epoch, first, next)),
            Some((i, e, f, n)) if (i, e, n) == (id, epoch, i64::from(first)) => Some((i, e, f, next)),
            Some(_) => return None,
        };
        rest = &rest[size..];
    }
    found
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use kafka_protocol::records::{
        Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE, Record,
        RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    fn batch(out: &mut BytesMut, producer: Option<(i64, i16, i32)>, count: i32) {
        let (id, epoch, seq) = producer.unwrap_or((NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE));
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
                producer_id: id,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                sequence: if seq < 0 { NO_SEQUENCE + i } else { seq + i },
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: Default::default(),
            })
            .collect();
        RecordBatchEncoder::encode(out, &records, &RecordEncodeOptions { version: 2, compression: Compression::Lz4 })
            .unwrap();
    }

    #[test]
    fn sequences_are_read_from_the_batch_headers() {
        let mut one = BytesMut::new();
        batch(&mut one, Some((7, 2, 10)), 5);
        assert_eq!(peek_sequences(&one.clone().freeze()), Some((7, 2, 10, 15)));
        batch(&mut one, Some((7, 2, 15)), 3);
        assert_eq!(peek_sequences(&one.clone().freeze()), Some((7, 2, 10, 18)), "consecutive batches");
        let mut gap = BytesMut::new();
        batch(&mut gap, Some((7, 2, 10)), 5);
        batch(&mut gap, Some((7, 2, 16)), 1);
        assert_eq!(peek_sequences(&gap.freeze()), None, "batches that skip sequences");
        let mut plain = BytesMut::new();
        batch(&mut plain, None, 4);
        assert_eq!(peek_sequences(&plain.clone().freeze()), None, "no producer");
        assert_eq!(peek_sequences(&plain.freeze().slice(..40)), None, "truncated");
        assert_eq!(peek_sequences(&Bytes::new()), None);
    }

    /// Whether `turn` gets past its wait within a moment.
    async fn goes(turn: &mut Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(50), turn.wait()).await.is_ok()
    }

    #[tokio::test]
    async fn a_following_idempotent_batch_waits_for_its_predecessor_to_start_any_other_for_it_to_end() {
        let mut order = PartitionOrder::default();
        let mut first = order.turn("t", 0, Some((7, 0, 0, 5)));
        let mut follows = order.turn("t", 0, Some((7, 0, 5, 6)));
        let mut plain = order.turn("t", 0, None);
        let mut other_partition = order.turn("t", 1, None);
        assert!(goes(&mut other_partition).await, "another partition does not wait");
        assert!(!goes(&mut follows).await, "the first has not started");
        assert!(goes(&mut first).await);
        assert!(goes(&mut follows).await, "the first started: its successor in sequence may go");
        assert!(!goes(&mut plain).await, "a batch without producer waits for the one before to end");
        drop(follows);
        assert!(goes(&mut plain).await);

        // A retry (a sequence that does not follow) waits for the end of the one before it.
        let mut order = PartitionOrder::default();
        let mut first = order.turn("t", 0, Some((7, 0, 0, 5)));
        let mut retry = order.turn("t", 0, Some((7, 0, 0, 5)));
        assert!(goes(&mut first).await);
        assert!(!goes(&mut retry).await);
        drop(first);
        assert!(goes(&mut retry).await);
    }
}
