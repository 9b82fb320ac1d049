//! Disk backend under injected faults and simulated power cuts ([`FaultyFileSystem`]):
//! no record acknowledged by an fsynced append is ever lost, nothing unacknowledged is
//! half-visible after reopen, and a failed write or fsync fails the stream until reopen.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    Checkpoint, CheckpointPolicy, CompactionConfig, Offset, Storage, StorageBackend, StorageError, StorageOptions,
    StreamId,
};

const S: StreamId = StreamId::new(3);
const ROOT: &str = "/data";

fn options() -> StorageOptions {
    StorageOptions {
        max_segment_bytes: 4096,
        checkpoint_policy: CheckpointPolicy::EveryRecords(20),
        ..Default::default()
    }
}

fn open(fs: &FaultyFileSystem) -> Result<Storage, StorageError> {
    Storage::open_with_fs(ROOT, options(), Arc::new(fs.clone()))
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record {i} {}", "p".repeat((i * 37 % 300) as usize)))
}

/// Reopens after a crash and checks: the stream opens, verifies, every visible record is the one
/// written at its offset, and at least `acked` records are there. Returns the next offset.
fn check_after_crash(fs: &FaultyFileSystem, written: &[Bytes], acked: u64) -> u64 {
    let s = open(fs).unwrap_or_else(|e| panic!("reopen after crash failed: {e}"));
    let next = s.next_offset(S).unwrap().get();
    assert!(next >= acked, "acknowledged records lost: next {next} < acked {acked}");
    assert!(next as usize <= written.len(), "more records than were ever written");
    if next > 0 {
        let v = s.verify_chain(S).unwrap();
        assert_eq!(v.to.get(), next);
    }
    let start = s.log_start(S).unwrap().get();
    let recs = s.read_records(S, Offset::new(start), usize::MAX).unwrap();
    assert_eq!(recs.len() as u64, next - start);
    for r in &recs {
        assert_eq!(r.payload, written[r.offset.get() as usize], "offset {} holds something else", r.offset);
    }
    // The stream takes appends again after reopen.
    let n = s.append_batch(S, vec![Bytes::from_static(b"after")], Offset::new(next), true).unwrap();
    assert_eq!(n.get(), next + 1);
    next
}

/// Appends batches (every other one fsynced) until the armed fault hits; returns what was
/// written (in offset order) and how many records were acknowledged durable.
fn append_until_fault(s: &Storage) -> (Vec<Bytes>, u64, bool) {
    let mut written = Vec::new();
    let mut acked = 0u64;
    for b in 0..60u64 {
        let events: Vec<Bytes> = (0..3).map(|k| payload(b * 3 + k)).collect();
        let at = Offset::new(written.len() as u64);
        let fsync = b % 2 == 0;
        match s.append_batch(S, events.clone(), at, fsync) {
            Ok(n) => {
                written.extend(events);
                if fsync {
                    acked = n.get();
                }
            }
            Err(e) => {
                assert!(matches!(e, StorageError::Io { .. }), "a fault surfaces as an I/O error: {e}");
                if written.is_empty() && s.streams().is_empty() {
                    // Creating the stream failed: there is no stream to fail, nothing was written.
                    return (written, acked, true);
                }
                // Whatever reached the page cache may become visible, so it counts as written.
                written.extend(events);
                let again = s.append_batch(S, vec![payload(9999)], s.next_offset(S).unwrap(), false);
                assert!(matches!(again, Err(StorageError::StreamFailed { .. })), "{again:?}");
                assert!(matches!(s.sync(S), Err(StorageError::StreamFailed { .. })));
                return (written, acked, true);
            }
        }
    }
    (written, acked, false)
}

/// Runs `each(t)` for every `t` in `0..threads`, all at once, each on a thread of its own;
/// returns everything they returned.
fn on_threads<T: Send>(threads: u64, each: impl Fn(u64) -> Vec<T> + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn({
                    let each = &each;
                    move || each(t)
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Appends `batch` with fsync at the stream's next offset, retrying while other appenders get
/// there first; returns the offsets it got.
fn append_racing(s: &Storage, batch: Vec<Bytes>) -> Result<std::ops::Range<Offset>, StorageError> {
    loop {
        let at = s.next_offset(S)?;
        match s.append_batch(S, batch.clone(), at, true) {
            Err(StorageError::OffsetMismatch { .. }) => continue,
            r => return r.map(|end| at..end),
        }
    }
}

/// Crashes `fs` (every byte since the last fsync is lost), closes `s` and opens the storage
/// again; returns it with every record of `S` it holds.
fn crash_and_read_back(fs: &FaultyFileSystem, s: Storage) -> (Storage, Vec<Bytes>) {
    fs.crash();
    drop(s);
    let s = open(fs).unwrap();
    let all = s.read_from(S, Offset::ZERO, usize::MAX).unwrap();
    (s, all)
}

#[test]
fn fsync_failure_at_every_point_loses_no_acknowledged_record() {
    let mut faults_hit = 0;
    for fail_at in 0..80 {
        let fs = FaultyFileSystem::new();
        let s = open(&fs).unwrap();
        fs.fail_fsync_after(fail_at);
        let (written, acked, hit) = append_until_fault(&s);
        faults_hit += usize::from(hit);
        fs.crash();
        drop(s);
        check_after_crash(&fs, &written, acked);
    }
    assert!(faults_hit > 40, "the sweep really injected faults ({faults_hit})");
}

#[test]
fn write_failure_at_every_point_loses_no_acknowledged_record() {
    for fail_at in 0..70 {
        for crash in [true, false] {
            let fs = FaultyFileSystem::new();
            let s = open(&fs).unwrap();
            fs.fail_write_after(fail_at);
            let (written, acked, _) = append_until_fault(&s);
            if crash {
                fs.crash();
            }
            // Without a crash the half-written batch is still in the file: recovery cuts it.
            drop(s);
            check_after_crash(&fs, &written, acked);
        }
    }
}

#[test]
fn crash_without_fsync_keeps_a_whole_prefix() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    let mut written = Vec::new();
    for b in 0..10u64 {
        let events: Vec<Bytes> = (0..5).map(|k| payload(b * 5 + k)).collect();
        s.append_batch(S, events.clone(), Offset::new(b * 5), b == 3).unwrap();
        written.extend(events);
    }
    fs.crash();
    drop(s);
    let next = check_after_crash(&fs, &written, 20);
    assert!(next >= 20);
}

type Step<'a> = Box<dyn Fn(&Storage) -> Result<(), StorageError> + 'a>;

/// Maintenance operations interrupted at every fsync: the stream always reopens consistent, and
/// an operation that returned Ok is durable.
#[test]
fn maintenance_interrupted_at_every_fsync_reopens_consistent() {
    for fail_at in 0..60 {
        let fs = FaultyFileSystem::new();
        let s = open(&fs).unwrap();
        let written: Vec<Bytes> = (0..120).map(payload).collect();
        for (i, chunk) in written.chunks(10).enumerate() {
            s.append_batch(S, chunk.to_vec(), Offset::new(i as u64 * 10), true).unwrap();
        }
        let foreign = Checkpoint::new(Offset::new(500), shale_storage::ChainHash([9; 32]), Bytes::from_static(b"snap"));
        fs.fail_fsync_after(fail_at);
        let mut done = Vec::new();
        let steps: Vec<Step> = vec![
            Box::new(|s| s.truncate_from(S, Offset::new(95))),
            Box::new(|s| s.create_checkpoint_at(S, Offset::new(60), Bytes::from_static(b"x")).map(|_| ())),
            Box::new(|s| {
                s.compact(S, &CompactionConfig { max_log_start: Some(Offset::new(60)), ..Default::default() })
                    .map(|_| ())
            }),
            Box::new(|s| s.install_checkpoint(S, foreign.clone())),
            Box::new(|s| s.append_batch(S, vec![payload(1000)], Offset::new(500), true).map(|_| ())),
        ];
        for (i, step) in steps.iter().enumerate() {
            match step(&s) {
                Ok(()) => done.push(i),
                Err(_) => break,
            }
        }
        fs.crash();
        drop(s);
        let s = open(&fs).unwrap_or_else(|e| panic!("fail_at {fail_at}: reopen failed: {e}"));
        let next = s.next_offset(S).unwrap();
        let start = s.log_start(S).unwrap();
        if next > start {
            s.verify_chain(S).unwrap_or_else(|e| panic!("fail_at {fail_at}: {e}"));
        }
        let recs = s.read_records(S, start, usize::MAX).unwrap();
        assert_eq!(recs.len() as u64, next.get() - start.get());
        if done.contains(&3) {
            assert_eq!(start, Offset::new(500), "fail_at {fail_at}: an acknowledged install is durable");
            assert_eq!(s.latest_checkpoint(S).unwrap().unwrap().data, foreign.data);
            if done.contains(&4) {
                assert_eq!(next, Offset::new(501));
            }
        } else if start == Offset::new(500) {
            // The interrupted install got as far as its restart segment: the stream restarted,
            // whole, anchored on the checkpoint's hash.
            assert_eq!(done, vec![0, 1, 2], "fail_at {fail_at}");
            assert_eq!(next, start);
            assert_eq!(s.latest_chain_hash(S).unwrap(), foreign.chain_hash);
        } else {
            if done.contains(&0) {
                assert!(next <= Offset::new(95), "fail_at {fail_at}: an acknowledged truncation is durable");
            }
            for r in &recs {
                assert_eq!(r.payload, written[r.offset.get() as usize]);
            }
            if done.contains(&2) {
                assert!(start > Offset::ZERO, "an acknowledged compaction is durable");
                let cp = s.checkpoint_at_or_below(S, start).unwrap().expect("anchoring checkpoint");
                assert_eq!(cp.offset, start);
            }
        }
    }
}

#[test]
fn failed_fsync_reports_error_and_stream_refuses_until_reopen() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    s.append_batch(S, vec![payload(0)], Offset::ZERO, true).unwrap();
    fs.fail_next_fsync();
    let err = s.append_batch(S, vec![payload(1)], Offset::new(1), true).unwrap_err();
    assert!(matches!(err, StorageError::Io { op: "fsync", .. }), "{err}");
    let err = s.append_batch(S, vec![payload(2)], Offset::new(2), false).unwrap_err();
    assert!(matches!(err, StorageError::StreamFailed { stream, .. } if stream == S), "{err}");
    // Other streams are unaffected, reads still work.
    s.append_batch(StreamId::new(4), vec![payload(0)], Offset::ZERO, true).unwrap();
    assert_eq!(s.read_from(S, Offset::ZERO, usize::MAX).unwrap()[0], payload(0));
    drop(s);
    let s = open(&fs).unwrap();
    let next = s.next_offset(S).unwrap();
    s.append_batch(S, vec![payload(5)], next, true).unwrap();
    s.verify_chain(S).unwrap();
}

#[test]
fn lock_is_exclusive_and_released_on_drop() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    assert!(matches!(open(&fs), Err(StorageError::Locked { .. })));
    drop(s);
    open(&fs).unwrap();
    assert!(fs.list_files().iter().any(|p| p == Path::new("/data/LOCK")));
}

#[test]
fn group_commit_appenders_all_durable() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    let acked = on_threads(8, |t| {
        let mut mine = Vec::new();
        for i in 0..25u64 {
            let p = Bytes::from(format!("t{t}-{i}"));
            append_racing(&s, vec![p.clone()]).unwrap();
            mine.push(p);
        }
        mine
    });
    let (s, all) = crash_and_read_back(&fs, s);
    assert_eq!(all.len(), 200);
    for p in acked {
        assert!(all.contains(&p), "acknowledged {p:?} lost");
    }
    s.verify_chain(S).unwrap();
}

#[test]
fn sealed_indexes_wait_for_a_sync_point_and_are_rebuilt_after_a_crash() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    let idx_count =
        |fs: &FaultyFileSystem| fs.list_files().iter().filter(|p| p.to_string_lossy().ends_with(".idx")).count();
    let written: Vec<Bytes> = (0..60).map(payload).collect();
    for (i, p) in written.iter().enumerate() {
        s.append_batch(S, vec![p.clone()], Offset::new(i as u64), false).unwrap();
    }
    let segments = fs.list_files().iter().filter(|p| p.to_string_lossy().ends_with(".log")).count();
    assert!((3..=4).contains(&segments), "{segments} segments");
    assert_eq!(idx_count(&fs), 0, "no index written on the append path yet");
    s.sync(S).unwrap();
    assert_eq!(idx_count(&fs), segments - 1, "sync writes the sealed segments' indexes");
    let more: Vec<Bytes> = (60..120).map(payload).collect();
    for (i, p) in more.iter().enumerate() {
        s.append_batch(S, vec![p.clone()], Offset::new(60 + i as u64), false).unwrap();
    }
    // Rotation made the sealed segments durable, but their indexes wait: lost in the crash.
    fs.crash();
    drop(s);
    let all: Vec<Bytes> = written.into_iter().chain(more).collect();
    let next = check_after_crash(&fs, &all, 60);
    assert!(next > 100, "records in segments sealed before the crash survive ({next})");
    let segments = fs.list_files().iter().filter(|p| p.to_string_lossy().ends_with(".log")).count();
    assert!(idx_count(&fs) >= segments - 1, "rebuilt indexes are written back");
}

#[test]
fn clean_close_writes_only_what_changed() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    for i in 0..50u64 {
        s.append_batch(S, vec![payload(i)], Offset::new(i), false).unwrap();
    }
    let (_, before) = fs.op_counts();
    s.close().unwrap();
    let (_, after) = fs.op_counts();
    assert!(after > before, "close syncs the appended records and writes the index files");
    // Nothing lost without a crash-free close being needed: a crash now loses nothing.
    fs.crash();
    let s = open(&fs).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(50));
    let (_, before) = fs.op_counts();
    s.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    s.close().unwrap();
    assert_eq!(fs.op_counts().1, before, "an unchanged stream costs no fsync on close");
}

#[test]
fn concurrent_fsync_appenders_all_learn_of_a_failed_fsync() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    s.append_batch(S, vec![payload(0)], Offset::ZERO, true).unwrap();
    fs.fail_fsync_after(40);
    let acked = on_threads(6, |t| {
        let mut acked = Vec::new();
        for i in 0..40u64 {
            let p = Bytes::from(format!("t{t}-{i}"));
            match append_racing(&s, vec![p.clone()]) {
                Ok(_) => acked.push(p),
                Err(StorageError::Io { .. } | StorageError::StreamFailed { .. }) => return acked,
                Err(e) => panic!("{e}"),
            }
        }
        acked
    });
    assert!(matches!(
        s.append_batch(S, vec![payload(1)], s.next_offset(S).unwrap(), false),
        Err(StorageError::StreamFailed { .. })
    ));
    let (s, all) = crash_and_read_back(&fs, s);
    for p in &acked {
        assert!(all.contains(p), "acknowledged {p:?} lost");
    }
    s.verify_chain(S).unwrap();
}

/// Racing fsynced appends of batches: every range a caller was told survives a crash, holding
/// that caller's records.
#[test]
fn racing_fsync_batches_survive_a_crash_at_their_ranges() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    let acked = on_threads(8, |t| {
        (0..25u64)
            .map(|i| {
                let batch: Vec<Bytes> = (0..1 + i % 3).map(|j| Bytes::from(format!("t{t}-{i}-{j}"))).collect();
                (append_racing(&s, batch.clone()).unwrap(), batch)
            })
            .collect()
    });
    let (s, all) = crash_and_read_back(&fs, s);
    for (r, batch) in &acked {
        assert_eq!(
            &all[r.start.get() as usize..r.end.get() as usize],
            batch.as_slice(),
            "acknowledged {r:?} lost or moved"
        );
    }
    s.verify_chain(S).unwrap();
}

#[test]
fn write_failure_inside_large_batches_loses_no_acknowledged_record() {
    let big = StorageOptions { max_segment_bytes: 300 << 10, ..options() };
    let kib = |i: u64| Bytes::from(vec![(i % 251) as u8; 1024]);
    let mut failed_mid_stream = 0;
    for fail_at in 0..24 {
        for crash in [true, false] {
            let fs = FaultyFileSystem::new();
            let s = Storage::open_with_fs(ROOT, big.clone(), Arc::new(fs.clone())).unwrap();
            fs.fail_write_after(fail_at);
            let mut written = Vec::new();
            let mut acked = 0u64;
            for b in 0..12u64 {
                let events: Vec<Bytes> = (b * 80..(b + 1) * 80).map(kib).collect();
                let fsync = b % 2 == 1;
                let r = s.append_batch(S, events.clone(), Offset::new(b * 80), fsync);
                written.extend(events);
                match r {
                    Ok(n) if fsync => acked = n.get(),
                    Ok(_) => {}
                    Err(e) => {
                        assert!(matches!(e, StorageError::Io { .. }), "fail_at {fail_at}: {e}");
                        failed_mid_stream += usize::from(b > 0);
                        break;
                    }
                }
            }
            if crash {
                fs.crash();
            }
            drop(s);
            let s = Storage::open_with_fs(ROOT, big.clone(), Arc::new(fs.clone()))
                .unwrap_or_else(|e| panic!("fail_at {fail_at}: reopen failed: {e}"));
            let next = s.next_offset(S).unwrap().get();
            assert!(next >= acked, "fail_at {fail_at}: acknowledged records lost: {next} < {acked}");
            if next > 0 {
                assert_eq!(s.verify_chain(S).unwrap().to.get(), next);
            }
            let recs = s.read_records(S, Offset::ZERO, usize::MAX).unwrap();
            assert_eq!(recs.len() as u64, next);
            for r in &recs {
                assert_eq!(r.payload, written[r.offset.get() as usize]);
            }
        }
    }
    assert!(failed_mid_stream >= 20, "the sweep really failed writes of large batches ({failed_mid_stream})");
}
