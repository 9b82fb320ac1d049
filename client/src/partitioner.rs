//! Choosing a record's partition.
//!
//! Keyed records go to `(murmur2(key) & 0x7fffffff) % partitions`: the same hash and seed as
//! Kafka's default partitioner, so a key lands on the same partition as it would in Kafka with the
//! same partition count, and any client in any language can reproduce it. Keyless records are
//! spread round-robin per topic. An explicit partition always wins.

use std::sync::atomic::{AtomicU32, Ordering};

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

/// Picks partitions for records that do not name one.
#[derive(Debug, Default)]
pub struct Partitioner {
    round_robin: AtomicU32,
}

impl Partitioner {
    /// A partitioner whose round-robin starts at partition 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The partition for a record: `explicit` if given, else by key hash, else round-robin.
    pub fn partition(&self, explicit: Option<u32>, key: Option<&[u8]>, partitions: u32) -> u32 {
        if let Some(p) = explicit {
            return p;
        }
        match key {
            Some(k) => partition_for_key(k, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions.max(1),
        }
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
    fn explicit_partition_wins_and_keyless_round_robins() {
        let p = Partitioner::new();
        assert_eq!(p.partition(Some(7), Some(b"k"), 3), 7);
        let spread: Vec<u32> = (0..6).map(|_| p.partition(None, None, 3)).collect();
        assert_eq!(spread, vec![0, 1, 2, 0, 1, 2]);
    }

    proptest! {
        #[test]
        fn a_key_always_maps_to_the_same_partition_in_range(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1u32..1000) {
            let p = Partitioner::new();
            let a = p.partition(None, Some(&key), n);
            prop_assert!(a < n);
            prop_assert_eq!(a, p.partition(None, Some(&key), n));
        }
    }
}
