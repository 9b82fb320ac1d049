//! A stream failed by a full disk (ENOSPC) or a failed fsync is brought back with
//! `reopen_stream`, without reopening the storage: every record durable before the failure still
//! reads (and survives a power cut afterwards), appends resume after it, and while the disk is
//! still full the stream keeps refusing writes with the OS's error.

use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{CheckpointPolicy, Offset, Storage, StorageBackend, StorageError, StorageOptions, StreamId};

const S: StreamId = StreamId::new(5);
/// A stream the failure does not touch.
const OTHER: StreamId = StreamId::new(6);
const ROOT: &str = "/data";

fn options() -> StorageOptions {
    StorageOptions {
        max_segment_bytes: 16 * 1024,
        checkpoint_policy: CheckpointPolicy::EveryRecords(50),
        ..Default::default()
    }
}

fn open(fs: &FaultyFileSystem) -> Storage {
    Storage::open_with_fs(ROOT, options(), Arc::new(fs.clone())).unwrap()
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("record {i} {}", "x".repeat((i * 53 % 700) as usize)))
}

/// Appends `count` records one fsynced batch of 5 at a time; every one must be acknowledged.
fn append_ok(s: &Storage, stream: StreamId, from: u64, count: u64) {
    for first in (from..from + count).step_by(5) {
        let batch: Vec<Bytes> = (first..(first + 5).min(from + count)).map(payload).collect();
        let n = batch.len() as u64;
        let next = s.append_batch(stream, batch, Offset::new(first), true).unwrap();
        assert_eq!(next.get(), first + n);
    }
}

/// Every record in `[0, upto)` reads back as written, and the whole stream verifies.
fn assert_holds(s: &Storage, stream: StreamId, upto: u64) {
    let recs = s.read_range(stream, Offset::ZERO, Offset::new(upto), usize::MAX).unwrap();
    assert_eq!(recs.len() as u64, upto, "records below {upto} missing");
    for r in &recs {
        assert_eq!(r.payload, payload(r.offset.get()), "offset {} holds something else", r.offset);
    }
    let next = s.next_offset(stream).unwrap();
    assert_eq!(s.verify_chain(stream).unwrap().to, next);
}

fn is_enospc(e: &StorageError) -> bool {
    matches!(e, StorageError::Io { source, .. } if source.raw_os_error() == Some(28))
}

#[test]
fn a_stream_failed_by_a_full_disk_is_reopened_once_space_returns_and_keeps_every_durable_record() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs);
    append_ok(&s, S, 0, 300);
    append_ok(&s, OTHER, 0, 20);

    // Fill the disk and keep appending (fsynced) until a write needs space it cannot get: the
    // preallocated zeros past the active segment's records take a few more first.
    fs.set_disk_full(true);
    let mut acked = 300u64;
    let err = loop {
        let batch: Vec<Bytes> = (acked..acked + 5).map(payload).collect();
        match s.append_batch(S, batch, Offset::new(acked), true) {
            Ok(next) => acked = next.get(),
            Err(e) => break e,
        }
        assert!(acked < 100_000, "a full disk never failed a write");
    };
    assert!(is_enospc(&err), "the full disk must surface as ENOSPC, got: {err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    let cause = s.stream_failure(S).expect("the stream is failed");
    assert!(cause.contains("No space left on device"), "{cause}");
    let refused = s.append_batch(S, vec![payload(acked)], Offset::new(acked), true).unwrap_err();
    assert!(matches!(refused, StorageError::StreamFailed { stream, .. } if stream == S), "{refused}");
    assert!(s.stream_failure(OTHER).is_none(), "only the stream that hit the full disk fails");
    assert_holds(&s, S, acked);

    // Still full: a reopen may succeed (nothing it must write), but the stream cannot take a
    // write that needs space; whatever happens, nothing durable goes.
    for _ in 0..3 {
        let _ = s.reopen_stream(S);
        let next = s.next_offset(S).unwrap().get();
        assert!(next >= acked);
        let batch: Vec<Bytes> = (next..next + 200).map(payload).collect();
        assert!(s.append_batch(S, batch, Offset::new(next), true).is_err(), "a full disk took 200 records");
        assert!(s.stream_failure(S).is_some());
        assert_holds(&s, S, acked);
    }

    // Space returns: the stream comes back without reopening the storage.
    fs.set_disk_full(false);
    assert!(s.reopen_stream(S).unwrap(), "the failed stream is reopened");
    assert!(s.stream_failure(S).is_none());
    assert!(!s.reopen_stream(S).unwrap(), "a usable stream needs no reopen");
    assert_holds(&s, S, acked);
    // Whole records written into preallocated space before the failure may be kept (a torn one
    // is cut); each is the record written at its offset.
    let next = s.next_offset(S).unwrap().get();
    assert!(next >= acked);
    let recs = s.read_range(S, Offset::ZERO, Offset::new(next), usize::MAX).unwrap();
    assert!(recs.iter().all(|r| r.payload == payload(r.offset.get())));
    append_ok(&s, S, next, 100);
    append_ok(&s, OTHER, 20, 5);
    assert_holds(&s, S, next + 100);

    // Everything acknowledged, before and after the failure, survives a power cut.
    drop(s);
    fs.crash();
    let s = open(&fs);
    assert_holds(&s, S, next + 100);
    assert_holds(&s, OTHER, 25);
}

#[test]
fn a_stream_failed_by_a_failed_fsync_is_reopened_without_losing_durable_records() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs);
    append_ok(&s, S, 0, 120);
    fs.fail_next_fsync();
    let batch: Vec<Bytes> = (120..125).map(payload).collect();
    let err = s.append_batch(S, batch, Offset::new(120), true).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(matches!(
        s.append_batch(S, vec![payload(125)], Offset::new(125), true),
        Err(StorageError::StreamFailed { .. })
    ));
    assert!(s.reopen_stream(S).unwrap());
    assert_holds(&s, S, 120);
    // The batch whose fsync failed was written; reopening keeps it and makes it durable.
    let next = s.next_offset(S).unwrap().get();
    assert!((120..=125).contains(&next));
    append_ok(&s, S, next, 30);
    drop(s);
    fs.crash();
    let s = open(&fs);
    assert_holds(&s, S, next + 30);
}

#[test]
fn memory_streams_never_need_a_reopen() {
    let m = shale_storage::MemoryStorage::new();
    m.append_batch(S, vec![payload(0)], Offset::ZERO, true).unwrap();
    assert!(!m.reopen_stream(S).unwrap());
    assert!(m.stream_failure(S).is_none());
}
