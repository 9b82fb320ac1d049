//! `sync_streams`: one call makes many streams' unsynced appends durable (the Raft layer's shared
//! flush round), and a failed fsync fails exactly the stream it was for.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    CheckpointPolicy, MemoryStorage, Offset, Storage, StorageBackend, StorageError, StorageOptions, StreamId,
};

const ROOT: &str = "/data";
const STREAMS: u64 = 40;

fn open(fs: &FaultyFileSystem) -> Storage {
    let options = StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() };
    Storage::open_with_fs(ROOT, options, Arc::new(fs.clone())).expect("open")
}

fn ids() -> Vec<StreamId> {
    (1..=STREAMS).map(StreamId::new).collect()
}

fn payload(stream: StreamId, i: u64) -> Bytes {
    Bytes::from(format!("stream {stream} record {i}"))
}

/// Each stream gets records `0..n`, none fsynced.
fn append_unsynced(s: &Storage, n: u64) {
    for id in ids() {
        let events = (0..n).map(|i| payload(id, i)).collect();
        s.append_batch(id, events, Offset::ZERO, false).expect("append");
    }
}

#[test]
fn synced_streams_survive_a_power_cut() {
    let fs = FaultyFileSystem::new();
    {
        let s = open(&fs);
        append_unsynced(&s, 5);
        let answers = s.sync_streams(&ids());
        assert_eq!(answers.len(), STREAMS as usize);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        // Written after the sync: not covered, lost by the power cut.
        s.append_batch(StreamId::new(1), vec![Bytes::from_static(b"late")], Offset::new(5), false).unwrap();
        fs.crash();
    }
    let s = open(&fs);
    for id in ids() {
        assert_eq!(s.next_offset(id).unwrap(), Offset::new(5), "stream {id}");
        let recs = s.read_records(id, Offset::ZERO, usize::MAX).unwrap();
        let expected: Vec<Bytes> = (0..5).map(|i| payload(id, i)).collect();
        assert_eq!(recs.into_iter().map(|r| r.payload).collect::<Vec<_>>(), expected, "stream {id}");
    }
}

#[test]
fn a_failed_fsync_fails_exactly_its_stream_with_an_error_naming_it() {
    let fs = FaultyFileSystem::new();
    let failed = {
        let s = open(&fs);
        append_unsynced(&s, 3);
        // One fsync in the middle of the round fails (which stream's depends on the threads).
        fs.fail_fsync_after(STREAMS / 2);
        let answers = s.sync_streams(&ids());
        let failed: Vec<StreamId> =
            ids().into_iter().zip(&answers).filter(|(_, a)| a.is_err()).map(|(id, _)| id).collect();
        assert_eq!(failed.len(), 1, "one fsync failed, so one stream: {answers:?}");
        let bad = failed[0];
        let err = answers[(bad.get() - 1) as usize].as_ref().unwrap_err();
        match err {
            StorageError::Io { op: "fsync", path, .. } => {
                assert!(path.starts_with(Path::new(ROOT).join(bad.get().to_string())), "{path:?} names stream {bad}");
            }
            other => panic!("expected the fsync's I/O error, got {other}"),
        }
        for id in ids() {
            assert_eq!(s.stream_failure(id).is_some(), id == bad, "stream {id}: only the failed one refuses writes");
        }
        match s.append_batch(bad, vec![Bytes::from_static(b"x")], Offset::new(3), false) {
            Err(StorageError::StreamFailed { stream, .. }) => assert_eq!(stream, bad),
            other => panic!("the failed stream must refuse writes, got {other:?}"),
        }
        // Asked again, it answers `StreamFailed` naming it; the others are (still) durable.
        let again = s.sync_streams(&ids());
        for (id, a) in ids().into_iter().zip(&again) {
            match a {
                Err(StorageError::StreamFailed { stream, .. }) => assert_eq!((*stream, id), (bad, bad)),
                Ok(()) => assert_ne!(id, bad),
                Err(e) => panic!("stream {id}: {e}"),
            }
        }
        fs.crash();
        bad
    };
    let s = open(&fs);
    for id in ids() {
        if id != failed {
            assert_eq!(s.next_offset(id).unwrap(), Offset::new(3), "stream {id} was synced");
        }
    }
}

#[test]
fn unknown_and_repeated_streams_are_answered_in_order() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs);
    append_unsynced(&s, 1);
    let list = [StreamId::new(2), StreamId::new(999), StreamId::new(2), StreamId::new(1)];
    let answers = s.sync_streams(&list);
    assert_eq!(answers.len(), 4);
    assert!(answers.iter().all(Result::is_ok));
    assert!(s.sync_streams(&[]).is_empty());

    let m = MemoryStorage::new();
    m.append_batch(StreamId::new(1), vec![Bytes::from_static(b"a")], Offset::ZERO, false).unwrap();
    let answers = m.sync_streams(&list);
    assert_eq!(answers.len(), 4);
    assert!(answers.iter().all(Result::is_ok));
}
