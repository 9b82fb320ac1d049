//! Disk backend: round trips, reopen, hand-computed chain values, rotation, reads across segments.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shale_storage::{
    ChainHash, CheckpointPolicy, CodecKind, MemoryStorage, Offset, Storage, StorageBackend, StorageError,
    StorageOptions, StreamId,
};

const S: StreamId = StreamId::new(7);

fn small_segments() -> StorageOptions {
    StorageOptions { max_segment_bytes: 4096, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("event-{i:05}-{}", "x".repeat((i % 50) as usize)))
}

fn fill(b: &dyn StorageBackend, from: u64, to: u64, per_batch: u64) {
    let mut o = from;
    while o < to {
        let n = per_batch.min(to - o);
        let events = (o..o + n).map(payload).collect();
        assert_eq!(b.append_batch(S, events, Offset::new(o), false).unwrap(), Offset::new(o + n));
        o += n;
    }
}

#[test]
fn round_trip_and_reopen_match_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::with_options(small_segments()).unwrap();
    {
        let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
        fill(&disk, 0, 300, 7);
        fill(&mem, 0, 300, 7);
        let a = disk.read_records(S, Offset::ZERO, usize::MAX).unwrap();
        let b = mem.read_records(S, Offset::ZERO, usize::MAX).unwrap();
        assert_eq!(a, b);
        assert_eq!(disk.latest_chain_hash(S).unwrap(), mem.latest_chain_hash(S).unwrap());
        assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
    }
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    assert_eq!(disk.next_offset(S).unwrap(), Offset::new(300));
    assert_eq!(disk.streams(), vec![S]);
    let a = disk.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    assert_eq!(a, mem.read_records(S, Offset::ZERO, usize::MAX).unwrap());
    assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
    for k in [0u64, 1, 63, 64, 65, 150, 299] {
        assert_eq!(disk.chain_hash_at(S, Offset::new(k)).unwrap(), mem.chain_hash_at(S, Offset::new(k)).unwrap());
        assert_eq!(
            disk.read_records(S, Offset::new(k), 1).unwrap(),
            mem.read_records(S, Offset::new(k), 1).unwrap(),
            "at {k}"
        );
    }
    fill(&disk, 300, 420, 13);
    fill(&mem, 300, 420, 13);
    assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
}

#[test]
fn chain_values_are_the_hand_computed_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open(dir.path()).unwrap();
    disk.append_batch(S, vec![Bytes::from_static(b"hello"), Bytes::from_static(b"world")], Offset::ZERO, true).unwrap();
    let r = disk.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    // SHA-256("hello"), a well-known value.
    assert_eq!(r[0].hash.to_hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_eq!(r[0].prev_hash, ChainHash::ZERO);
    let mut h = Sha256::new();
    h.update(r[0].hash.0);
    h.update(b"world");
    let h1: [u8; 32] = h.finalize().into();
    assert_eq!(r[1].hash.0, h1);
    assert_eq!(r[1].prev_hash, r[0].hash);
    assert_eq!(disk.latest_chain_hash(S).unwrap().0, h1);
}

#[test]
fn compressed_streams_hash_the_uncompressed_payload() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("{i} ").repeat(100))).collect();
    let mem = MemoryStorage::new();
    mem.append_batch(S, events.clone(), Offset::ZERO, false).unwrap();
    for codec in [CodecKind::Lz4, CodecKind::Zstd { level: 3 }] {
        let sub = dir.path().join(format!("{codec:?}"));
        let opts = StorageOptions { codec, ..small_segments() };
        {
            let disk = Storage::open_with(&sub, opts.clone()).unwrap();
            disk.append_batch(S, events.clone(), Offset::ZERO, true).unwrap();
            assert_eq!(disk.latest_chain_hash(S).unwrap(), mem.latest_chain_hash(S).unwrap());
            // Compression really happened: far fewer bytes than the payloads.
            let raw: usize = events.iter().map(Bytes::len).sum();
            assert!(disk.stream_bytes(S).unwrap() < raw as u64 / 2, "{codec:?}");
        }
        let disk = Storage::open_with(&sub, opts).unwrap();
        assert_eq!(disk.read_from(S, Offset::ZERO, usize::MAX).unwrap(), events);
        assert_eq!(disk.verify_chain(S).unwrap().head, mem.latest_chain_hash(S).unwrap());
    }
}

#[test]
fn rotation_follows_memory_accounting_and_reads_cross_segments() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    fill(&disk, 0, 500, 9);
    let segs: Vec<_> = std::fs::read_dir(dir.path().join("7"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(segs.len() > 5, "{segs:?}");
    for f in std::fs::read_dir(dir.path().join("7")).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().ends_with(".log") {
            // Each segment respects the limit unless it holds a single record.
            assert!(f.metadata().unwrap().len() <= 4096);
        }
    }
    // A read spanning many segments, bounded by max_bytes.
    let r = disk.read_records(S, Offset::new(3), 2000).unwrap();
    assert!(!r.is_empty());
    let total: usize = r.iter().map(|r| r.payload.len()).sum();
    assert!(total <= 2000);
    for (i, rec) in r.iter().enumerate() {
        assert_eq!(rec.offset, Offset::new(3 + i as u64));
        assert_eq!(rec.payload, payload(3 + i as u64));
    }
    // Compaction with no limits removes every sealed segment, as memory does.
    let mem = MemoryStorage::with_options(small_segments()).unwrap();
    fill(&mem, 0, 500, 9);
    let cfg = shale_storage::CompactionConfig::default();
    assert_eq!(disk.compact(S, &cfg).unwrap(), mem.compact(S, &cfg).unwrap());
    assert_eq!(disk.log_start(S).unwrap(), mem.log_start(S).unwrap());
}

#[test]
fn offsets_and_limits_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    assert!(matches!(
        disk.append_batch(S, vec![Bytes::from_static(b"a")], Offset::new(3), false),
        Err(StorageError::OffsetMismatch { actual, .. }) if actual == Offset::ZERO
    ));
    assert!(disk.streams().is_empty(), "a rejected append creates nothing");
    assert!(matches!(disk.append_batch(S, vec![], Offset::ZERO, false), Err(StorageError::EmptyBatch { .. })));
    let big = Bytes::from(vec![0u8; small_segments().max_record_bytes + 1]);
    assert!(matches!(
        disk.append_batch(S, vec![big], Offset::ZERO, false),
        Err(StorageError::RecordTooLarge { index: 0, .. })
    ));
    fill(&disk, 0, 10, 10);
    assert!(disk.read_records(S, Offset::new(10), 100).unwrap().is_empty());
    assert!(disk.read_records(S, Offset::new(99), 100).unwrap().is_empty());
    // At least one record even over max_bytes.
    assert_eq!(disk.read_records(S, Offset::new(2), 0).unwrap().len(), 1);
    let locked = Storage::open(dir.path()).unwrap_err();
    assert!(matches!(locked, StorageError::Locked { .. }), "{locked}");
}

#[test]
fn large_batches_are_pipelined_in_parts_with_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { max_segment_bytes: 64 << 10, ..small_segments() };
    let disk = Storage::open_with(dir.path(), opts.clone()).unwrap();
    let mem = MemoryStorage::with_options(opts.clone()).unwrap();
    // 600 KiB per batch: split into parts, and rotating segments in the middle of parts.
    for b in 0..3u64 {
        let events: Vec<Bytes> = (0..600).map(|i| Bytes::from(vec![(b * 7 + i % 13) as u8; 1024])).collect();
        let at = Offset::new(b * 600);
        assert_eq!(
            disk.append_batch(S, events.clone(), at, b == 1).unwrap(),
            mem.append_batch(S, events, at, false).unwrap()
        );
    }
    assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
    assert!(disk.stream_bytes(S).unwrap() >= mem.stream_bytes(S).unwrap());
    drop(disk);
    let disk = Storage::open_with(dir.path(), opts).unwrap();
    assert_eq!(
        disk.read_records(S, Offset::new(555), usize::MAX).unwrap(),
        mem.read_records(S, Offset::new(555), usize::MAX).unwrap()
    );
}

#[test]
fn append_pipeline_writes_every_batch_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    let mem = MemoryStorage::with_options(small_segments()).unwrap();
    disk.append_batch(S, vec![payload(0)], Offset::ZERO, false).unwrap();
    mem.append_batch(S, vec![payload(0)], Offset::ZERO, false).unwrap();
    let batches: Vec<Vec<Bytes>> = (0..20u64).map(|b| (0..7).map(|i| payload(1 + b * 7 + i)).collect()).collect();
    let next = shale_storage::AppendPipeline::new(&disk, S, true).run(Offset::new(1), batches.clone()).unwrap();
    assert_eq!(next, Offset::new(141));
    let mut at = Offset::new(1);
    for b in batches {
        at = mem.append_batch(S, b, at, false).unwrap();
    }
    assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
    // A stale expected offset is refused before anything is written.
    let err = shale_storage::AppendPipeline::new(&disk, S, false).run(Offset::new(5), vec![vec![payload(1)]]);
    assert!(matches!(err, Err(StorageError::OffsetMismatch { .. })));
    assert_eq!(disk.next_offset(S).unwrap(), Offset::new(141));
}

/// 1 KiB payloads, half of them compressible, so byte limits meet records whose stored size
/// differs from their payload size.
fn kib_payload(i: u64) -> Bytes {
    if i.is_multiple_of(2) {
        Bytes::from(vec![(i % 251) as u8; 1024])
    } else {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        Bytes::from(
            (0..1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>(),
        )
    }
}

#[test]
fn sequential_reads_in_byte_limited_steps_match_memory() {
    // Reads of up to a few MiB go in several chunks, read ahead on a second thread; each read
    // leaves a cursor the next one starts from. Every step must return what memory returns.
    for codec in [CodecKind::None, CodecKind::Lz4] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StorageOptions { max_segment_bytes: 3 << 20, codec, ..small_segments() };
        let disk = Storage::open_with(dir.path(), opts.clone()).unwrap();
        let mem = MemoryStorage::with_options(opts).unwrap();
        let total = 9000u64;
        for b in 0..(total / 500) {
            let events: Vec<Bytes> = (b * 500..(b + 1) * 500).map(kib_payload).collect();
            disk.append_batch(S, events.clone(), Offset::new(b * 500), false).unwrap();
            mem.append_batch(S, events, Offset::new(b * 500), false).unwrap();
        }
        for max_bytes in [1usize, 1000, 1024, 64 << 10, (1 << 20) + 17, 3 << 20] {
            // Small limits take a step per record: a stretch of the stream is enough for them.
            let end = if max_bytes < (64 << 10) { 700 } else { total };
            let mut at = Offset::ZERO;
            let mut steps = 0;
            while at.get() < end {
                let d = disk.read_records(S, at, max_bytes).unwrap();
                let m = mem.read_records(S, at, max_bytes).unwrap();
                assert_eq!(d, m, "{codec:?}, max_bytes {max_bytes}, from {at}");
                assert!(!d.is_empty());
                at = d.last().unwrap().offset.plus(1);
                steps += 1;
            }
            assert_eq!(at.get(), end);
            assert!(steps >= end as usize * 1024 / (max_bytes.max(1024) + 1024), "{steps} steps");
        }
        // Bounded ranges stop where asked, whatever the byte limit.
        let r = disk.read_range(S, Offset::new(4321), Offset::new(4400), usize::MAX).unwrap();
        assert_eq!(r, mem.read_range(S, Offset::new(4321), Offset::new(4400), usize::MAX).unwrap());
        assert_eq!(r.len(), 79);
    }
}

#[test]
fn a_read_cursor_never_outlives_a_truncation_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    let mem = MemoryStorage::with_options(small_segments()).unwrap();
    fill(&disk, 0, 200, 10);
    fill(&mem, 0, 200, 10);
    // The read stops at 130 (off the anchor grid): the next read would start from its cursor.
    let first = disk.read_range(S, Offset::new(100), Offset::new(130), usize::MAX).unwrap();
    assert_eq!(first.last().unwrap().offset, Offset::new(129));
    for b in [&disk as &dyn StorageBackend, &mem] {
        b.truncate_from(S, Offset::new(125)).unwrap();
        let other: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("rewritten-{i}"))).collect();
        b.append_batch(S, other, Offset::new(125), false).unwrap();
    }
    for from in [125u64, 129, 130, 131] {
        assert_eq!(
            disk.read_records(S, Offset::new(from), usize::MAX).unwrap(),
            mem.read_records(S, Offset::new(from), usize::MAX).unwrap(),
            "from {from}"
        );
    }
    assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap());
    assert_eq!(disk.chain_hash_at(S, Offset::new(129)).unwrap(), mem.chain_hash_at(S, Offset::new(129)).unwrap());
}

#[test]
fn an_append_said_to_fit_the_active_segment_does_not_rotate_and_the_first_that_does_not_fit_does() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Storage::open_with(dir.path(), small_segments()).unwrap();
    assert!(!disk.append_fits_active_segment(S, 10), "no stream yet: nothing to append into without creating it");
    disk.append_batch(S, vec![payload(0)], Offset::ZERO, false).unwrap();
    let segments = || {
        std::fs::read_dir(dir.path().join("7"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("segment_"))
            .count()
    };
    assert_eq!(segments(), 1);
    assert!(disk.append_fits_active_segment(S, 200));
    assert!(!disk.append_fits_active_segment(S, 4096), "more than a whole segment");
    // A 100-byte record counted with a 256-byte margin for its framing (the Raft log store counts more).
    let mut at = 1;
    while disk.append_fits_active_segment(S, 100 + 256) {
        disk.append_batch(S, vec![Bytes::from(vec![b'x'; 100])], Offset::new(at), false).unwrap();
        at += 1;
        assert_eq!(segments(), 1, "an append said to fit rotated (offset {})", at - 1);
    }
    assert!(at > 10, "the segment took only {at} records");
    // Less than 356 bytes are left: a 600-byte record rotates.
    disk.append_batch(S, vec![Bytes::from(vec![b'y'; 600])], Offset::new(at), false).unwrap();
    assert_eq!(segments(), 2);
    assert!(disk.append_fits_active_segment(S, 356), "a fresh active segment has room again");
    let mem = MemoryStorage::with_options(small_segments()).unwrap();
    assert!(!mem.append_fits_active_segment(S, 10));
    mem.append_batch(S, vec![payload(0)], Offset::ZERO, false).unwrap();
    assert!(mem.append_fits_active_segment(S, 1 << 30), "memory: an append is a copy, whatever its size");
}
