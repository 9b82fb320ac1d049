//! The SHA-256 hash chain that links every record to the one before it.

use sha2::{Digest, Sha256};

use crate::checkpoint::CheckpointIndex;
use crate::error::CorruptionReason;
use crate::types::{ChainHash, Offset};

/// The chain hash of a record given its predecessor's hash and its uncompressed payload.
///
/// Record 0 (whose `prev_hash` is [`ChainHash::ZERO`]) hashes its payload alone; every later
/// record hashes `prev_hash || payload`. The rule is keyed on the offset, not on the value of
/// `prev_hash`, so a chain can never be "restarted" by a record that claims an all-zero predecessor.
pub fn chain_hash(offset: Offset, prev_hash: &ChainHash, payload: &[u8]) -> ChainHash {
    let mut hasher = Sha256::new();
    if offset != Offset::ZERO {
        hasher.update(prev_hash.0);
    } else {
        debug_assert_eq!(*prev_hash, ChainHash::ZERO, "record 0 must have a zero prev_hash");
    }
    hasher.update(payload);
    ChainHash(hasher.finalize().into())
}

/// Hashes a run of payloads starting at `start` after `prev`; returns each record's hash.
pub fn chain_hashes<'a>(
    start: Offset,
    mut prev: ChainHash,
    payloads: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<ChainHash> {
    let mut out = Vec::new();
    let mut offset = start;
    for p in payloads {
        prev = chain_hash(offset, &prev, p);
        out.push(prev);
        offset = offset.plus(1);
    }
    out
}

/// The first check of a verification from a stream's log start, in both backends: the hash the
/// stream's first record chains from (`anchor`) must be the chain hash of the checkpoint at the log
/// start, if there is one (after a compaction there is: it anchors the chain). At offset 0 there is
/// nothing to anchor. Returns the mismatch, which the caller reports where it found the anchor.
pub(crate) fn anchor_mismatch(
    log_start: Offset,
    anchor: ChainHash,
    checkpoints: &CheckpointIndex,
) -> Option<CorruptionReason> {
    let cp = checkpoints.get(log_start).filter(|_| log_start > Offset::ZERO)?;
    (cp.chain_hash != anchor).then_some(CorruptionReason::ChainMismatch { expected: cp.chain_hash, found: anchor })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn record_zero_hashes_payload_alone() {
        let h = chain_hash(Offset::ZERO, &ChainHash::ZERO, b"hello");
        // SHA-256("hello"), computed independently.
        assert_eq!(h.to_hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    }

    #[test]
    fn later_records_hash_prev_then_payload() {
        let h0 = chain_hash(Offset::ZERO, &ChainHash::ZERO, b"a");
        let h1 = chain_hash(Offset::new(1), &h0, b"b");
        let mut buf = h0.0.to_vec();
        buf.extend_from_slice(b"b");
        assert_eq!(h1.0, sha(&buf));
        assert_eq!(chain_hashes(Offset::ZERO, ChainHash::ZERO, [&b"a"[..], b"b"]), vec![h0, h1]);
    }

    #[test]
    fn hex_round_trip() {
        let h = chain_hash(Offset::ZERO, &ChainHash::ZERO, b"x");
        assert_eq!(ChainHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ChainHash::from_hex("zz"), None);
    }
}
