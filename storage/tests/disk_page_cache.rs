//! Disk backend: synced bytes well behind a segment's end are dropped from the OS page cache
//! (`StorageOptions::page_cache_keep_bytes`), and the tails every stream keeps share one budget
//! (`StorageOptions::page_cache_budget_bytes`). The fault file system records every drop and
//! checks that each named only durable bytes; the drops must cover each segment up to its kept
//! tail, in steps of at least 1 MiB, and change nothing a reader or a reopen sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{CheckpointPolicy, Offset, Storage, StorageBackend, StorageOptions, StreamId};

const S: StreamId = StreamId::new(7);
const LEN: usize = 1000;
const KEEP: u64 = 256 << 10;
const SEGMENT: u64 = 4 << 20;
const STEP: u64 = 1 << 20;
const PAGE: u64 = 4096;

fn options(keep: Option<u64>) -> StorageOptions {
    StorageOptions {
        max_segment_bytes: SEGMENT,
        checkpoint_policy: CheckpointPolicy::Manual,
        page_cache_keep_bytes: keep,
        ..Default::default()
    }
}

/// Appends records `[from, to)` to `stream` without fsync, in batches of 100.
fn append_to(s: &Storage, stream: StreamId, from: u64, to: u64) {
    let mut o = from;
    while o < to {
        let end = (o + 100).min(to);
        s.append_batch(stream, (o..end).map(payload).collect(), Offset::new(o), false).unwrap();
        o = end;
    }
}

/// What of `stream`'s first segment is still cached as the drops tell it: its length less the
/// furthest byte any drop reached.
fn cached_tail(fs: &FaultyFileSystem, stream: StreamId) -> u64 {
    let path = Path::new("/data").join(stream.get().to_string()).join("segment_000000.log");
    let len = fs.file_bytes(&path).unwrap().len() as u64;
    let dropped = fs.cache_drops(&path).iter().map(|d| d.1).max().unwrap_or(0);
    len - dropped
}

fn payload(i: u64) -> Bytes {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(LEN, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

/// Appends records `[from, to)` without fsync, `per_batch` to an `append_batch`.
fn append(s: &Storage, from: u64, to: u64, per_batch: u64) {
    let mut o = from;
    while o < to {
        let end = (o + per_batch).min(to);
        s.append_batch(S, (o..end).map(payload).collect(), Offset::new(o), false).unwrap();
        o = end;
    }
}

fn seg_path(seq: u64) -> PathBuf {
    Path::new("/data").join(S.get().to_string()).join(format!("segment_{seq:06}.log"))
}

fn segments(fs: &FaultyFileSystem) -> Vec<PathBuf> {
    let prefix = Path::new("/data").join(S.get().to_string());
    fs.list_files()
        .into_iter()
        .filter(|p| p.starts_with(&prefix) && p.extension().is_some_and(|e| e == "log"))
        .collect()
}

/// Every record of the stream reads back, chain-verified, as written.
fn assert_reads_back(s: &Storage, n: u64) {
    let mut next = 0;
    while next < n {
        let got = s.read_records(S, Offset::new(next), 1 << 20).unwrap();
        assert!(!got.is_empty(), "records from {next} are missing");
        for r in got {
            assert_eq!(r.offset.get(), next);
            assert_eq!(r.payload, payload(next), "record {next}");
            next += 1;
        }
    }
    assert_eq!(next, n);
}

/// The drops of one segment file: they start at 0, follow each other without gap or overlap, are
/// page-aligned, and each (but a sealed segment's last) names at least a step.
fn assert_contiguous_steps(path: &Path, drops: &[(u64, u64)], sealed: bool) {
    let mut at = 0;
    for (i, &(start, end)) in drops.iter().enumerate() {
        assert_eq!(start, at, "{}: drop {i} {drops:?} does not continue the one before", path.display());
        assert_eq!(end % PAGE, 0, "{}: drop {i} ends off a page", path.display());
        let last_of_sealed = sealed && i == drops.len() - 1;
        assert!(last_of_sealed || end - start >= STEP, "{}: drop {i} {drops:?} is under a step", path.display());
        at = end;
    }
}

#[test]
fn synced_bytes_behind_the_kept_tail_are_dropped_in_steps_and_nothing_unsynced_is() {
    let fs = FaultyFileSystem::new();
    let s = Storage::open_with_fs("/data", options(Some(KEEP)), Arc::new(fs.clone())).unwrap();
    // About 10 MiB in batches of 64 records (~64 KiB), each synced: past two segment rotations.
    let n = 10_500;
    let mut o = 0;
    while o < n {
        let end = (o + 64).min(n);
        append(&s, o, end, 64);
        s.sync(S).unwrap();
        o = end;
    }
    // Written but not synced: nothing of it may be dropped, however far behind the end it is.
    let drops_before: usize = segments(&fs).iter().map(|p| fs.cache_drops(p).len()).sum();
    append(&s, n, n + 1000, 100);
    let drops_unsynced: usize = segments(&fs).iter().map(|p| fs.cache_drops(p).len()).sum();
    assert_eq!(drops_unsynced, drops_before, "an append without fsync dropped cached bytes");
    s.sync(S).unwrap();
    let n = n + 1000;
    assert_eq!(fs.undurable_cache_drops(), 0, "a drop named bytes that were not durable");
    assert_reads_back(&s, n);
    drop(s); // close: trims the active segment's preallocated zeros, so file lengths are record bytes

    let files = segments(&fs);
    assert!(files.len() >= 3, "the run must seal segments: {files:?}");
    for (i, path) in files.iter().enumerate() {
        let sealed = i + 1 < files.len();
        let len = fs.file_bytes(path).unwrap().len() as u64;
        let drops = fs.cache_drops(path);
        assert_contiguous_steps(path, &drops, sealed);
        let dropped = drops.last().map_or(0, |d| d.1);
        let kept_from = (len - KEEP) / PAGE * PAGE;
        assert!(dropped <= kept_from, "{}: dropped to {dropped}, into the kept tail from {kept_from}", path.display());
        // A sealed segment is dropped up to its kept tail; the active one to within a step of it.
        let slack = if sealed { 0 } else { STEP };
        assert!(dropped + slack >= kept_from, "{}: dropped only to {dropped} of {len} bytes", path.display());
    }
    assert_eq!(files[0], seg_path(0));

    // Nothing about the stored bytes changed: a reopen reads every record verified.
    let s = Storage::open_with_fs("/data", options(Some(KEEP)), Arc::new(fs.clone())).unwrap();
    assert_reads_back(&s, n);
}

#[test]
fn without_a_kept_tail_setting_nothing_is_dropped() {
    let fs = FaultyFileSystem::new();
    let s = Storage::open_with_fs("/data", options(None), Arc::new(fs.clone())).unwrap();
    for k in 0..100 {
        append(&s, k * 100, (k + 1) * 100, 100);
        s.sync(S).unwrap();
    }
    assert!(segments(&fs).len() >= 3);
    for path in segments(&fs) {
        assert_eq!(fs.cache_drops(&path), Vec::new(), "{}", path.display());
    }
    assert_reads_back(&s, 10_000);
}

#[test]
fn bytes_written_again_after_a_truncation_below_the_dropped_point_are_dropped_once_synced() {
    let fs = FaultyFileSystem::new();
    let s = Storage::open_with_fs("/data", options(Some(KEEP)), Arc::new(fs.clone())).unwrap();
    // ~3 MiB into the first segment, synced: dropped up to within a step of its kept tail.
    append(&s, 0, 3000, 100);
    s.sync(S).unwrap();
    let dropped = fs.cache_drops(&seg_path(0)).last().unwrap().1;
    assert!(dropped >= STEP, "dropped only to {dropped}");
    // Cut back to record 500 (below the dropped point), then write other records there.
    s.truncate_from(S, Offset::new(500)).unwrap();
    let rewrite = |i: u64| Bytes::from(vec![b'z'; LEN + (i % 7) as usize]);
    for o in (500..3500).step_by(100) {
        s.append_batch(S, (o..o + 100).map(rewrite).collect(), Offset::new(o), false).unwrap();
    }
    s.sync(S).unwrap();
    assert_eq!(fs.undurable_cache_drops(), 0, "a drop named bytes that were not durable");
    let drops = fs.cache_drops(&seg_path(0));
    let after_cut = &drops[drops.iter().rposition(|d| d.1 == dropped).unwrap() + 1..];
    let cut_at = after_cut.first().expect("the rewritten bytes are dropped once synced").0;
    assert!(
        cut_at < dropped,
        "the drop after the cut starts at {cut_at}, past the rewritten bytes from below {dropped}"
    );
    let read = s.read_records(S, Offset::new(499), 4 * LEN).unwrap();
    assert_eq!(read[0].payload, payload(499));
    assert_eq!(read[1].payload, rewrite(500));
}

#[test]
fn a_real_file_system_reads_dropped_bytes_back_from_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let n = 12_000; // ~12 MiB: three sealed segments, each dropped behind a 64 KiB tail
    {
        let s = Storage::open_with(dir.path(), options(Some(64 << 10))).unwrap();
        for k in 0..n / 500 {
            append(&s, k * 500, (k + 1) * 500, 100);
            s.sync(S).unwrap();
        }
        assert_reads_back(&s, n);
        assert_eq!(s.verify_chain(S).unwrap().records, n);
    }
    let s = Storage::open_with(dir.path(), options(Some(64 << 10))).unwrap();
    assert_reads_back(&s, n);
}

#[test]
fn the_tails_of_many_streams_share_one_budget_and_the_longest_synced_ago_go_first() {
    const STREAMS: u64 = 20;
    const BUDGET: u64 = 1 << 20;
    // Twenty streams written in turn (as a keyless producer's runs over many partitions), each
    // ~1.5 MiB then synced: each keeps a 256 KiB tail, four of which fill the budget.
    let run = |budget: Option<u64>| {
        let fs = FaultyFileSystem::new();
        let opts = StorageOptions { page_cache_budget_bytes: budget, ..options(Some(KEEP)) };
        let s = Storage::open_with_fs("/data", opts, Arc::new(fs.clone())).unwrap();
        for id in 1..=STREAMS {
            let stream = StreamId::new(id);
            append_to(&s, stream, 0, 1500);
            s.sync(stream).unwrap();
        }
        assert_eq!(fs.undurable_cache_drops(), 0, "a drop named bytes that were not durable");
        let tails: Vec<u64> = (1..=STREAMS).map(|id| cached_tail(&fs, StreamId::new(id))).collect();
        for id in 1..=STREAMS {
            let stream = StreamId::new(id);
            let got = s.read_records(stream, Offset::new(0), 1 << 30).unwrap();
            assert_eq!(got.len(), 1500, "stream {id} reads back whole");
            assert!(got.iter().enumerate().all(|(i, r)| r.payload == payload(i as u64)), "stream {id}");
        }
        tails
    };

    // Without a shared budget every stream keeps its tail: the total grows with the streams.
    let alone = run(None);
    assert!(alone.iter().all(|t| *t >= KEEP && *t < KEEP + PAGE), "{alone:?}");
    assert!(alone.iter().sum::<u64>() > 4 * BUDGET);

    // With it, the streams synced last keep theirs, the ones synced longest ago are dropped
    // whole (all but the page their end falls in), and the total stays within the budget.
    let shared = run(Some(BUDGET));
    let total: u64 = shared.iter().sum();
    assert!(total <= BUDGET + PAGE * STREAMS, "{total} bytes cached: {shared:?}");
    let kept = shared.iter().filter(|t| **t >= KEEP).count();
    assert!((3..=4).contains(&kept), "{kept} streams keep a tail: {shared:?}");
    assert!(shared[STREAMS as usize - kept..].iter().all(|t| *t >= KEEP), "the last synced keep theirs: {shared:?}");
    assert!(shared[..STREAMS as usize - kept].iter().all(|t| *t < PAGE), "the older are dropped: {shared:?}");
}

#[test]
fn a_stream_written_again_after_its_tail_was_dropped_for_the_budget_keeps_a_new_tail() {
    let fs = FaultyFileSystem::new();
    let opts = StorageOptions { page_cache_budget_bytes: Some(KEEP + PAGE), ..options(Some(KEEP)) };
    let s = Storage::open_with_fs("/data", opts, Arc::new(fs.clone())).unwrap();
    let (a, b) = (StreamId::new(1), StreamId::new(2));
    append_to(&s, a, 0, 1500);
    s.sync(a).unwrap();
    append_to(&s, b, 0, 1500);
    s.sync(b).unwrap();
    assert!(cached_tail(&fs, a) < PAGE, "a's tail went for b's");
    // a is written again: it keeps a tail again and b's goes.
    append_to(&s, a, 1500, 3000);
    s.sync(a).unwrap();
    assert!(cached_tail(&fs, a) >= KEEP, "a keeps a new tail");
    assert!(cached_tail(&fs, b) < PAGE, "b's tail went for a's");
    assert_eq!(fs.undurable_cache_drops(), 0, "a drop named bytes that were not durable");
    assert_eq!(s.read_records(a, Offset::new(0), 1 << 30).unwrap().len(), 3000);
    assert_eq!(s.read_records(b, Offset::new(0), 1 << 30).unwrap().len(), 1500);
}
