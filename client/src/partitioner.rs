//! Choosing a record's partition.
//!
//! Keyed records go to `(murmur2(key) & 0x7fffffff) % partitions`: the same hash and seed as
//! Kafka's default partitioner, so a key lands on the same partition as it would in Kafka with the
//! same partition count, and any client in any language can reproduce it. An explicit partition
//! always wins.
//!
//! Keyless records are **sticky** (as Kafka's default partitioner since KIP-480/KIP-794): a
//! topic's keyless records go to one partition until they fill a run there
//! (`ProducerConfig::keyless_run_batches` full batches, `batch_max_bytes` or `batch_max_records`
//! each, counted as the batcher counts them; Kafka's run is one batch), then to the next partition
//! in turn. Spread one record per partition in turn, `n` records in flight over `p` partitions make
//! batches of `n / p` records, each a Raft entry with its fsyncs and replication round on three
//! nodes; sticky runs make full batches whatever the partition count, and every partition still
//! gets an equal share over time. A topic's first run starts at a random partition, so short-lived
//! producers (one `shale produce` each) do not all start on partition 0.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Kafka's murmur2 (32-bit, seed `0x9747b28c`), over the key bytes.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a key maps to among `partitions` (which must be at least 1).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The size of one sticky run of keyless records: what fills one producer batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StickyRun {
    /// Bytes of records (as [`crate::ProducerRecord::size_bytes`] counts them) a run holds at most;
    /// a record larger than this is a run of its own.
    pub max_bytes: usize,
    /// Records a run holds at most.
    pub max_records: usize,
}

impl StickyRun {
    /// A producer's run: `keyless_run_batches` full batches.
    pub fn of_producer(config: &crate::ProducerConfig) -> Self {
        let batches = config.keyless_run_batches.max(1);
        Self {
            max_bytes: config.batch_max_bytes.saturating_mul(batches),
            max_records: config.batch_max_records.saturating_mul(batches),
        }
    }
}

impl Default for StickyRun {
    /// The default producer's run (32 batches of 128 KiB / 1,000 records: 4 MiB).
    fn default() -> Self {
        Self::of_producer(&crate::ProducerConfig::default())
    }
}

/// Where a topic's keyless records go now.
#[derive(Debug)]
struct Run {
    partition: u32,
    records: usize,
    bytes: usize,
}

/// Picks partitions for records that do not name one.
#[derive(Debug)]
pub struct Partitioner {
    run: StickyRun,
    /// Each topic's current sticky run.
    runs: Mutex<HashMap<String, Run>>,
}

impl Default for Partitioner {
    fn default() -> Self {
        Self::new(StickyRun::default())
    }
}

/// A random partition below `partitions`, the start of a topic's first run (partition 0 if the
/// system has no random source: the run still moves on in turn).
fn random_partition(partitions: u32) -> u32 {
    (getrandom::u64().unwrap_or(0) % u64::from(partitions.max(1))) as u32
}

impl Partitioner {
    /// A partitioner whose keyless runs are `run` long (the producer's batch limits).
    pub fn new(run: StickyRun) -> Self {
        let run = StickyRun { max_bytes: run.max_bytes.max(1), max_records: run.max_records.max(1) };
        Self { run, runs: Mutex::new(HashMap::new()) }
    }

    /// The partition for a record of `topic` of `size_bytes`: `explicit` if given, else by key
    /// hash, else the topic's sticky run (see the module documentation).
    pub fn partition(
        &self,
        topic: &str,
        explicit: Option<u32>,
        key: Option<&[u8]>,
        size_bytes: usize,
        partitions: u32,
    ) -> u32 {
        if let Some(p) = explicit {
            return p;
        }
        if let Some(k) = key {
            return partition_for_key(k, partitions);
        }
        let partitions = partitions.max(1);
        let mut runs = self.runs.lock();
        let run = match runs.get_mut(topic) {
            Some(run) => run,
            None => runs.entry(topic.to_string()).or_insert(Run {
                partition: random_partition(partitions),
                records: 0,
                bytes: 0,
            }),
        };
        let full = run.records >= self.run.max_records
            || (run.records > 0 && run.bytes.saturating_add(size_bytes) > self.run.max_bytes);
        if full || run.partition >= partitions {
            // The next partition in turn (a topic that lost partitions starts over below the count).
            run.partition = (run.partition + 1) % partitions;
            run.records = 0;
            run.bytes = 0;
        }
        run.records += 1;
        run.bytes = run.bytes.saturating_add(size_bytes);
        debug_assert!(run.partition < partitions);
        run.partition
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn murmur2_matches_kafka_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2 (signed ints there, as u32 here).
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input), *expected as u32, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn an_explicit_partition_wins_and_a_key_is_hashed() {
        let p = Partitioner::default();
        assert_eq!(p.partition("t", Some(7), Some(b"k"), 10, 3), 7);
        assert_eq!(p.partition("t", None, Some(b"21"), 10, 3), partition_for_key(b"21", 3));
    }

    /// Takes `n` keyless records of `size` bytes for `topic` and groups them into runs
    /// (partition, records).
    fn runs_of(p: &Partitioner, topic: &str, n: usize, size: usize, partitions: u32) -> Vec<(u32, usize)> {
        let mut runs: Vec<(u32, usize)> = Vec::new();
        for _ in 0..n {
            let at = p.partition(topic, None, None, size, partitions);
            assert!(at < partitions, "partition {at} of {partitions}");
            match runs.last_mut() {
                Some((last, count)) if *last == at => *count += 1,
                _ => runs.push((at, 1)),
            }
        }
        runs
    }

    #[test]
    fn keyless_records_fill_one_run_per_partition_then_move_to_the_next() {
        // 100-byte records, runs of at most 1,000 bytes: 10 records each.
        let p = Partitioner::new(StickyRun { max_bytes: 1_000, max_records: 1_000 });
        let runs = runs_of(&p, "t", 95, 100, 4);
        assert_eq!(runs.len(), 10, "{runs:?}");
        for (i, (partition, count)) in runs.iter().enumerate() {
            assert_eq!(*partition, (runs[0].0 + i as u32) % 4, "runs go to partitions in turn: {runs:?}");
            assert_eq!(*count, if i < 9 { 10 } else { 5 }, "{runs:?}");
        }
        // The record limit ends a run too.
        let p = Partitioner::new(StickyRun { max_bytes: 1 << 20, max_records: 3 });
        let runs = runs_of(&p, "t", 9, 100, 2);
        assert_eq!(runs.iter().map(|r| r.1).collect::<Vec<_>>(), vec![3, 3, 3]);
        // A record larger than a run is a run of its own.
        let p = Partitioner::new(StickyRun { max_bytes: 50, max_records: 1_000 });
        assert_eq!(runs_of(&p, "t", 3, 100, 3).len(), 3);
    }

    #[test]
    fn each_topic_keeps_its_own_run_and_a_shrunk_topic_stays_in_range() {
        let p = Partitioner::new(StickyRun { max_bytes: 1_000, max_records: 1_000 });
        let a = p.partition("a", None, None, 100, 1_000);
        let b = p.partition("b", None, None, 100, 1_000);
        for _ in 0..8 {
            assert_eq!(p.partition("a", None, None, 100, 1_000), a);
            assert_eq!(p.partition("b", None, None, 100, 1_000), b);
        }
        // The topic now has 1 partition (a client that saw a different count).
        assert_eq!(p.partition("a", None, None, 100, 1), 0);
    }

    #[test]
    fn first_runs_start_at_different_partitions() {
        let starts: std::collections::HashSet<u32> =
            (0..64).map(|_| Partitioner::default().partition("t", None, None, 10, 1_000)).collect();
        assert!(starts.len() > 1, "64 producers all started their first run at {starts:?}");
    }

    proptest! {
        #[test]
        fn a_key_always_maps_to_the_same_partition_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1u32..1000) {
            let p = Partitioner::default();
            let a = p.partition("t", None, Some(&key), 10, n);
            prop_assert!(a < n);
            prop_assert_eq!(a, p.partition("t", None, Some(&key), 10, n));
        }
    }
}
