//! Disk backend: reads with [`ReadCheck::Frames`] (for readers that recompute the chain
//! themselves) return what a full read returns, hashes included (taken from the stored links),
//! over every range and byte limit across segment boundaries; they still refuse accidental damage
//! (a CRC that does not match) and name it; a record rewritten with a recomputed CRC is served,
//! with the link its successor stores, so the reader's own hash of it disagrees; and such a read
//! never makes a later full read trust what it served.

use std::path::Path;

use bytes::Bytes;
use shale_storage::{
    ChainHash, CorruptionReason, MemoryStorage, Offset, ReadCheck, Storage, StorageBackend, StorageError, chain_hash,
};

mod common;

use common::small_segments::{LEN, S, flip, options, payload, per_segment};

/// Four sealed segments and an active one: records `[0, n)`.
fn setup(dir: &Path) -> (Storage, u64) {
    let n = 4 * per_segment() + 3;
    let s = Storage::open_with(dir, options()).unwrap();
    for from in (0..n).step_by(10) {
        let events: Vec<Bytes> = (from..(from + 10).min(n)).map(payload).collect();
        s.append_batch(S, events, Offset::new(from), false).unwrap();
    }
    (s, n)
}

fn frames(s: &Storage, from: u64, end: u64, max_bytes: usize) -> Result<Vec<shale_storage::Record>, StorageError> {
    s.read_range_checked(S, Offset::new(from), Offset::new(end), max_bytes, ReadCheck::Frames)
}

#[test]
fn a_frames_read_returns_what_a_full_read_returns_over_every_range_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (s, n) = setup(dir.path());
    let reference = MemoryStorage::new();
    reference.append_batch(S, (0..n).map(payload).collect(), Offset::ZERO, false).unwrap();
    let per = per_segment();
    let starts = [0, 1, per - 1, per, per + 1, 2 * per - 2, 3 * per, n - 2, n - 1];
    let limits = [1, LEN, 3 * LEN, 10 * LEN + 1, per as usize * LEN, usize::MAX];
    let mut reads = 0;
    for &from in &starts {
        for end in [from + 1, from + 2, from + per, from + 2 * per + 5, n, n + 10] {
            for &max in &limits {
                let got = frames(&s, from, end, max).unwrap();
                let full = s.read_range(S, Offset::new(from), Offset::new(end), max).unwrap();
                assert_eq!(got, full, "[{from}, {end}) max {max}");
                let want = reference.read_range(S, Offset::new(from), Offset::new(end), max).unwrap();
                assert_eq!(got, want, "[{from}, {end}) max {max} against the memory backend");
                assert!(!got.is_empty());
                reads += 1;
            }
        }
    }
    assert!(reads > 300);
    // At and past the end: nothing; below the log start: the same error as a full read.
    assert!(frames(&s, n, n + 5, usize::MAX).unwrap().is_empty());
    assert!(frames(&s, 5, 5, usize::MAX).unwrap().is_empty());
}

#[test]
fn a_frames_read_refuses_a_crc_mismatch_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (s, n) = setup(dir.path());
    let bad = per_segment() + 4; // in sealed segment 1
    s.close().unwrap();
    flip(dir.path(), bad, 3, false);
    let s = Storage::open_with(dir.path(), options()).unwrap();
    // Reads around it still work (a read up to `bad` reads record `bad` for its link: it fails).
    assert_eq!(frames(&s, 0, bad - 1, usize::MAX).unwrap().len() as u64, bad - 1);
    assert_eq!(frames(&s, bad + 1, n, usize::MAX).unwrap().len() as u64, n - bad - 1);
    match frames(&s, bad - 2, bad + 3, usize::MAX) {
        Err(StorageError::Corruption { stream, file, offset, reason, .. }) => {
            assert_eq!(stream, S);
            assert_eq!(file, "segment_000001.log");
            assert_eq!(offset, Some(Offset::new(bad)));
            assert!(matches!(reason, CorruptionReason::CrcMismatch { .. }), "{reason}");
        }
        other => panic!("expected the damaged record named, got {other:?}"),
    }
}

#[test]
fn a_record_rewritten_with_its_crc_is_served_with_the_stored_link_and_a_full_read_still_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (s, n) = setup(dir.path());
    let bad = 2 * per_segment() + 6; // in sealed segment 2
    let before = s.read_range(S, Offset::new(bad - 1), Offset::new(bad + 2), usize::MAX).unwrap();
    s.close().unwrap();
    flip(dir.path(), bad, 9, true);
    let s = Storage::open_with(dir.path(), options()).unwrap();

    let got = frames(&s, bad - 1, bad + 2, usize::MAX).unwrap();
    assert_eq!(got.len(), 3);
    assert_ne!(got[1].payload, before[1].payload, "the rewritten payload is served");
    // The hashes served are the stored links: the original chain, which the served bytes no
    // longer hash to. A reader recomputing from the record before finds the break at once.
    assert_eq!(got.iter().map(|r| r.hash).collect::<Vec<_>>(), before.iter().map(|r| r.hash).collect::<Vec<_>>());
    let recomputed = chain_hash(Offset::new(bad), &got[0].hash, &got[1].payload);
    assert_ne!(recomputed, got[1].hash);

    // A full read refuses the range, before and after the frames reads (which taught the
    // storage nothing it would trust).
    for _ in 0..2 {
        match s.read_range(S, Offset::new(bad - 1), Offset::new(bad + 2), usize::MAX) {
            Err(StorageError::Corruption { offset, reason, .. }) => {
                assert_eq!(offset, Some(Offset::new(bad)));
                assert!(matches!(reason, CorruptionReason::ChainMismatch { .. }), "{reason}");
            }
            other => panic!("expected a chain mismatch at {bad}, got {other:?}"),
        }
        let _ = frames(&s, bad, n, usize::MAX).unwrap();
        let _ = frames(&s, bad + 1, bad + 2, usize::MAX).unwrap();
    }
    // The next segment chains from its own base hash: full reads there are untouched.
    assert!(s.read_range(S, Offset::new(3 * per_segment()), Offset::new(n), usize::MAX).is_ok());
}

#[test]
fn the_last_record_of_the_stream_carries_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let (s, n) = setup(dir.path());
    let last = frames(&s, n - 1, n, usize::MAX).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].hash, s.chain_hash_at(S, Offset::new(n - 1)).unwrap());
    assert_ne!(last[0].hash, ChainHash::ZERO);
}
