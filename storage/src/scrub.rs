//! Scrubbing and repair: the types both backends share.
//!
//! A **scrub** re-reads one segment from the medium (never from a cache or an index) and checks
//! every record's CRC, markers, offset and chain link, from the segment's base hash (the previous
//! segment's last hash, checked at open) to the hash the segment must end on (the next segment's
//! `base_prev_hash` for a sealed segment, the stream head for the active one). Damage is reported
//! as a value ([`ScrubReport::damage`]), not an error: the range `[first_bad, good_from)` names the
//! records that cannot be trusted, where `good_from` is the first offset from which every record
//! up to the segment's end decodes and links to the known-good end hash.
//!
//! A **repair** replaces the records of such a range of one segment (sealed, or the active one,
//! whose known-good end hash is the stream head) with records supplied by the caller (read from another replica). It is accepted only if the supplied records chain
//! exactly from the trusted hash of record `from - 1` to the trusted hash of record `to - 1`
//! ([`check_repair_chain`]); anything else is [`crate::StorageError::RepairRejected`].

use crate::chain::chain_hash;
use crate::error::CorruptionReason;
use crate::types::{ChainHash, Offset, Record, StreamId};

/// One segment of a stream, as [`crate::StorageBackend::segments`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's file name (`segment_NNNNNN.log`; `memory` for the in-memory backend).
    pub file: String,
    /// Offset of its first record.
    pub base: Offset,
    /// One past its last record.
    pub end: Offset,
    /// Sealed (immutable, a later segment exists) or the active segment.
    pub sealed: bool,
    /// Bytes of the segment (header and records).
    pub bytes: u64,
}

/// Damage a scrub found in one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The stream.
    pub stream: StreamId,
    /// The segment's file name.
    pub file: String,
    /// Byte position of the first bad record within the file.
    pub position: u64,
    /// The first offset that cannot be trusted.
    pub first_bad: Offset,
    /// The first offset from which the records up to the segment's end are known good: the
    /// damaged range is `[first_bad, good_from)`.
    pub good_from: Offset,
    /// What is wrong with the first bad record.
    pub reason: CorruptionReason,
}

impl Damage {
    /// The damaged offsets `[first_bad, good_from)`.
    pub fn range(&self) -> std::ops::Range<Offset> {
        self.first_bad..self.good_from
    }
}

/// What a scrub of one segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubReport {
    /// The stream.
    pub stream: StreamId,
    /// The segment's file name.
    pub file: String,
    /// Offset of the segment's first record.
    pub base: Offset,
    /// One past its last record (at the time of the scrub).
    pub end: Offset,
    /// Whether the segment was sealed.
    pub sealed: bool,
    /// Bytes re-read from the medium.
    pub bytes: u64,
    /// `None` if every record checked out.
    pub damage: Option<Damage>,
}

/// Why a repair was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepairRejection {
    /// No records were supplied.
    #[error("no records supplied")]
    Empty,
    /// The range does not lie inside one segment of the stream.
    #[error("range [{from}, {to}) does not lie inside one segment of the stream")]
    OutsideSegment {
        /// First offset of the range.
        from: Offset,
        /// One past its last offset.
        to: Offset,
    },
    /// The hash before the range (or at its end) cannot be trusted: the range must cover the
    /// whole damaged range the segment's scrub reports.
    #[error(
        "the chain hash {which} the range is not known good (the segment's damaged range is {damaged_from}..{damaged_to})"
    )]
    UntrustedBoundary {
        /// "before" or "at the end of".
        which: &'static str,
        /// The damaged range's start.
        damaged_from: Offset,
        /// The damaged range's end.
        damaged_to: Offset,
    },
    /// A supplied record carries another offset than its place in the range.
    #[error("record {index} has offset {found}, expected {expected}")]
    OffsetSequence {
        /// Its position in the supplied list.
        index: usize,
        /// The offset its place implies.
        expected: Offset,
        /// The offset it carries.
        found: Offset,
    },
    /// A supplied record's `prev_hash` is not the hash of the record before it.
    #[error("record at offset {offset}: prev_hash {found}, expected {expected}")]
    ChainMismatch {
        /// The record's offset.
        offset: Offset,
        /// The hash it must link to.
        expected: ChainHash,
        /// The hash it carries.
        found: ChainHash,
    },
    /// A supplied record's `hash` is not the chain hash of its payload.
    #[error("record at offset {offset}: payload hashes to {computed}, the record says {claimed}")]
    HashMismatch {
        /// The record's offset.
        offset: Offset,
        /// The hash the record claims.
        claimed: ChainHash,
        /// The hash of its payload.
        computed: ChainHash,
    },
    /// The supplied chain does not end on the known-good hash of record `to - 1`.
    #[error("the supplied chain ends on {found}, the known-good hash of offset {offset} is {expected}")]
    EndMismatch {
        /// The range's last offset.
        offset: Offset,
        /// The known-good hash.
        expected: ChainHash,
        /// Where the supplied chain ends.
        found: ChainHash,
    },
    /// A supplied payload is larger than the record limit.
    #[error("record at offset {offset} is {size} bytes, over the limit of {max}")]
    TooLarge {
        /// The record's offset.
        offset: Offset,
        /// Its payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    /// The stream.
    pub stream: StreamId,
    /// The rewritten segment's file name.
    pub file: String,
    /// The replaced offsets.
    pub range: std::ops::Range<Offset>,
}

/// The first checks of a [`crate::StorageBackend::repair_range`], in both backends: at least one
/// record (else [`RepairRejection::Empty`]), into a stream that exists (`handle`, else the range
/// lies outside every segment). Returns the handle.
pub(crate) fn repair_target<H>(
    stream: StreamId,
    from: Offset,
    records: &[Record],
    handle: Option<H>,
) -> crate::error::Result<H> {
    let to = from.plus(records.len() as u64);
    let reject = |reason| crate::error::StorageError::RepairRejected { stream, from, to, reason };
    if records.is_empty() {
        return Err(reject(RepairRejection::Empty));
    }
    handle.ok_or_else(|| reject(RepairRejection::OutsideSegment { from, to }))
}

/// Checks that `records` are exactly the records `[from, from + len)` of a chain that continues
/// from `before` (the hash of record `from - 1`) and ends on `after` (the hash of the last
/// record): offsets in sequence, every `prev_hash` the hash before it, every `hash` the chain hash
/// of its payload. `max_record_bytes` bounds each payload.
pub fn check_repair_chain(
    from: Offset,
    records: &[Record],
    before: ChainHash,
    after: ChainHash,
    max_record_bytes: usize,
) -> Result<(), RepairRejection> {
    if records.is_empty() {
        return Err(RepairRejection::Empty);
    }
    let mut prev = before;
    for (i, r) in records.iter().enumerate() {
        let expected = from.plus(i as u64);
        if r.offset != expected {
            return Err(RepairRejection::OffsetSequence { index: i, expected, found: r.offset });
        }
        if r.payload.len() > max_record_bytes {
            return Err(RepairRejection::TooLarge { offset: r.offset, size: r.payload.len(), max: max_record_bytes });
        }
        if r.prev_hash != prev || (r.offset == Offset::ZERO && r.prev_hash != ChainHash::ZERO) {
            return Err(RepairRejection::ChainMismatch { offset: r.offset, expected: prev, found: r.prev_hash });
        }
        let computed = chain_hash(r.offset, &r.prev_hash, &r.payload);
        if computed != r.hash {
            return Err(RepairRejection::HashMismatch { offset: r.offset, claimed: r.hash, computed });
        }
        prev = computed;
    }
    if prev != after {
        let offset = from.plus(records.len() as u64 - 1);
        return Err(RepairRejection::EndMismatch { offset, expected: after, found: prev });
    }
    Ok(())
}

/// Tracks, during a forward pass over a segment, where the damaged range ends: the first offset
/// from which every record decodes and links to its successor (the caller checks the last link
/// against the segment's known-good end hash).
#[derive(Debug, Default)]
pub(crate) struct GoodSuffix {
    /// Start of the current run of good, linked records, and the `prev_hash` its first carries.
    run: Option<(Offset, ChainHash)>,
    /// Hash of the last record of the run.
    last: Option<ChainHash>,
}

impl GoodSuffix {
    /// A record that decoded cleanly: `offset`, the `prev_hash` it carries, its own hash.
    pub fn good(&mut self, offset: Offset, prev_hash: ChainHash, hash: ChainHash) {
        match (self.run, self.last) {
            (Some(_), Some(last)) if last == prev_hash => {}
            _ => self.run = Some((offset, prev_hash)),
        }
        self.last = Some(hash);
    }

    /// A record that did not decode (or could not be located).
    pub fn bad(&mut self) {
        self.run = None;
        self.last = None;
    }

    /// Given the segment's end offset and its known-good end hash: the first offset of the good
    /// suffix and the (now trusted) hash before it. With no good suffix, `(end, end_hash)`.
    pub fn finish(self, end: Offset, end_hash: ChainHash) -> (Offset, ChainHash) {
        match (self.run, self.last) {
            (Some((start, prev)), Some(last)) if last == end_hash => (start, prev),
            _ => (end, end_hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chain(from: u64, prev: ChainHash, n: u64) -> Vec<Record> {
        let mut prev = prev;
        (from..from + n)
            .map(|o| {
                let payload = Bytes::from(format!("p{o}"));
                let hash = chain_hash(Offset::new(o), &prev, &payload);
                let r = Record { offset: Offset::new(o), prev_hash: prev, hash, payload };
                prev = hash;
                r
            })
            .collect()
    }

    #[test]
    fn repair_chain_checks() {
        let all = chain(0, ChainHash::ZERO, 10);
        let part = all[3..7].to_vec();
        let before = all[2].hash;
        let after = all[6].hash;
        assert_eq!(check_repair_chain(Offset::new(3), &part, before, after, 1 << 20), Ok(()));
        assert!(matches!(
            check_repair_chain(Offset::new(3), &part, before, all[7].hash, 1 << 20),
            Err(RepairRejection::EndMismatch { .. })
        ));
        assert!(matches!(
            check_repair_chain(Offset::new(4), &part, before, after, 1 << 20),
            Err(RepairRejection::OffsetSequence { index: 0, .. })
        ));
        let mut bad = part.clone();
        bad[1].payload = Bytes::from_static(b"evil");
        assert!(matches!(
            check_repair_chain(Offset::new(3), &bad, before, after, 1 << 20),
            Err(RepairRejection::HashMismatch { .. })
        ));
        assert!(matches!(
            check_repair_chain(Offset::new(3), &part, all[1].hash, after, 1 << 20),
            Err(RepairRejection::ChainMismatch { .. })
        ));
        assert_eq!(check_repair_chain(Offset::new(3), &[], before, after, 1 << 20), Err(RepairRejection::Empty));
    }

    #[test]
    fn good_suffix_finds_the_run_that_reaches_the_end() {
        let all = chain(0, ChainHash::ZERO, 6);
        let mut g = GoodSuffix::default();
        g.good(all[0].offset, all[0].prev_hash, all[0].hash);
        g.bad();
        g.good(all[2].offset, all[2].prev_hash, all[2].hash);
        for r in &all[3..] {
            g.good(r.offset, r.prev_hash, r.hash);
        }
        assert_eq!(g.finish(Offset::new(6), all[5].hash), (Offset::new(2), all[1].hash));
        let mut g = GoodSuffix::default();
        g.good(all[4].offset, all[4].prev_hash, all[4].hash);
        assert_eq!(g.finish(Offset::new(6), all[5].hash), (Offset::new(6), all[5].hash));
    }
}
