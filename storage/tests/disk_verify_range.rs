//! Disk backend: `verify_range` re-reads sealed segments from their files, so damage the node's
//! open does not rescan (sealed segments are trusted through their index) is found and named.

use std::path::Path;

use bytes::Bytes;
use shale_storage::{ChainHash, CorruptionReason, MemoryStorage, Offset, Storage, StorageBackend, StorageError};

mod common;

use common::small_segments::{S, flip, options, payload, per_segment, position};

/// Appends records `[0, n)` in batches of 10 and returns every record's chain hash, as the memory
/// backend (the reference) computes them for the same events.
fn fill(s: &dyn StorageBackend, n: u64) -> Vec<ChainHash> {
    let reference = MemoryStorage::new();
    for from in (0..n).step_by(10) {
        let events: Vec<Bytes> = (from..(from + 10).min(n)).map(payload).collect();
        s.append_batch(S, events.clone(), Offset::new(from), false).unwrap();
        reference.append_batch(S, events, Offset::new(from), false).unwrap();
    }
    (0..n).map(|o| reference.chain_hash_at(S, Offset::new(o)).unwrap()).collect()
}

/// Five segments of records, the last one active, closed cleanly; returns the hashes.
fn five_segments(dir: &Path) -> (u64, Vec<ChainHash>) {
    let n = 4 * per_segment() + 3;
    let s = Storage::open_with(dir, options()).unwrap();
    let hashes = fill(&s, n);
    s.close().unwrap();
    (n, hashes)
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_named_by_verify_range() {
    let dir = tempfile::tempdir().unwrap();
    let (n, hashes) = five_segments(dir.path());
    let bad = per_segment() + 7; // inside sealed segment 1
    flip(dir.path(), bad, 5, false);
    // Open trusts sealed segments through their index: it succeeds.
    let s = Storage::open_with(dir.path(), options()).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(n));
    match s.verify_range(S, Offset::ZERO, Offset::new(n)) {
        Err(StorageError::Corruption { stream, file, position: at, offset, reason }) => {
            assert_eq!(stream, S);
            assert_eq!(file, "segment_000001.log");
            assert_eq!(at, position(bad) as u64, "the damaged record's first byte");
            assert_eq!(offset, Some(Offset::new(bad)));
            assert!(matches!(reason, CorruptionReason::CrcMismatch { .. }), "{reason}");
        }
        other => panic!("expected corruption at {bad}, got {other:?}"),
    }
    // The range before the damage verifies and ends on the right hash.
    let v = s.verify_range(S, Offset::ZERO, Offset::new(bad)).unwrap();
    assert_eq!((v.records, v.head), (bad, hashes[bad as usize - 1]));
    // A range after it cannot be anchored without reading the damaged record: still named.
    let e = s.verify_range(S, Offset::new(bad + 1), Offset::new(n)).unwrap_err();
    assert_eq!(e.corrupt_offset(), Some(Offset::new(bad)), "{e}");
}

#[test]
fn a_payload_changed_with_its_crc_is_named_by_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (n, hashes) = five_segments(dir.path());
    let bad = 2 * per_segment() + 3; // inside sealed segment 2
    flip(dir.path(), bad, 5, true);
    let s = Storage::open_with(dir.path(), options()).unwrap();
    match s.verify_range(S, Offset::new(per_segment()), Offset::new(n)) {
        Err(StorageError::Corruption { file, offset, reason, .. }) => {
            assert_eq!(file, "segment_000002.log");
            assert_eq!(offset, Some(Offset::new(bad)));
            assert!(matches!(reason, CorruptionReason::ChainMismatch { .. }), "{reason}");
        }
        other => panic!("expected a broken chain at {bad}, got {other:?}"),
    }
    let v = s.verify_range(S, Offset::new(3), Offset::new(bad)).unwrap();
    assert_eq!((v.from, v.records, v.head), (Offset::new(3), bad - 3, hashes[bad as usize - 1]));
}

/// A thread that cuts the last 1..=`span` records of the `n`-record stream and writes the same
/// records again, 30 times over.
fn rewrite_tail(s: std::sync::Arc<Storage>, n: u64, span: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for round in 0..30u64 {
            let cut = n - 1 - (round % span);
            s.truncate_from(S, Offset::new(cut)).unwrap();
            let events: Vec<Bytes> = (cut..n).map(payload).collect();
            s.append_batch(S, events, Offset::new(cut), false).unwrap();
        }
    })
}

#[test]
fn verify_range_while_appending_and_truncating_never_reports_false_damage() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Storage::open_with(dir.path(), options()).unwrap());
    let n = 6 * per_segment();
    let hashes = fill(s.as_ref(), n);
    let writer = rewrite_tail(s.clone(), n, 2 * per_segment());
    let mut checked = 0;
    while !writer.is_finished() || checked == 0 {
        for to in [per_segment(), n / 2, n] {
            match s.verify_range(S, Offset::new(3), Offset::new(to)) {
                Ok(v) => {
                    assert_eq!(v.head, hashes[to as usize - 1], "[3, {to})");
                    checked += 1;
                }
                // The tail was cut below `to` at that moment: out of range, never corruption.
                Err(StorageError::OffsetOutOfRange { .. }) => {}
                Err(e) => panic!("[3, {to}): {e}"),
            }
        }
    }
    writer.join().unwrap();
    assert!(checked > 0);
}

#[test]
fn verify_chain_while_truncating_counts_what_it_verified() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Storage::open_with(dir.path(), options()).unwrap());
    let n = 6 * per_segment();
    let hashes = fill(s.as_ref(), n);
    let writer = rewrite_tail(s.clone(), n, 3 * per_segment());
    let mut checked = 0;
    while !writer.is_finished() || checked == 0 {
        let v = s.verify_chain(S).unwrap();
        assert_eq!((v.from, v.records), (Offset::ZERO, v.to.get()), "{v:?}");
        assert_eq!(v.head, hashes[v.to.get() as usize - 1]);
        checked += 1;
    }
    writer.join().unwrap();
}
