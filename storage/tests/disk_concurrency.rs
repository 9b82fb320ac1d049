//! Disk backend under concurrent readers, an appender that also truncates and compacts, and
//! appenders to other streams: every read is verified and sees exactly the payloads written.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use shale_storage::{
    CheckpointPolicy, CompactionConfig, MemoryStorage, Offset, Storage, StorageBackend, StorageError, StorageOptions,
    StreamId,
};

const S: StreamId = StreamId::new(9);

/// The payload at `offset` depends on the offset only, so any truncate-and-re-append history
/// leaves the same bytes at every offset.
fn payload(offset: u64) -> Bytes {
    Bytes::from(format!("{offset}:{}", "z".repeat((offset % 97) as usize)))
}

#[test]
fn readers_see_verified_consistent_data_while_the_stream_changes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions {
        max_segment_bytes: 8192,
        checkpoint_policy: CheckpointPolicy::EveryRecords(50),
        ..Default::default()
    };
    let s = Arc::new(Storage::open_with(dir.path(), opts.clone()).unwrap());
    s.append_batch(S, (0..20).map(payload).collect(), Offset::ZERO, true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                let mut x = r + 1;
                while !done.load(Ordering::Acquire) || reads < 50 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let next = s.next_offset(S).unwrap().get();
                    let from = (x >> 33) % next.max(1);
                    match s.read_records(S, Offset::new(from), 4096) {
                        Ok(recs) => {
                            for rec in recs {
                                assert_eq!(rec.payload, payload(rec.offset.get()), "reader {r}");
                            }
                        }
                        Err(StorageError::OffsetOutOfRange { .. }) => {} // compacted meanwhile
                        Err(e) => panic!("reader {r}: {e}"),
                    }
                    if reads.is_multiple_of(16) {
                        s.verify_chain(S).unwrap();
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let other = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..300u64 {
                s.append_batch(StreamId::new(10), vec![payload(i)], Offset::new(i), i.is_multiple_of(10)).unwrap();
            }
        })
    };
    let mut next = 20u64;
    for round in 0..300u64 {
        let n = 1 + round % 7;
        next = s
            .append_batch(S, (next..next + n).map(payload).collect(), Offset::new(next), round.is_multiple_of(3))
            .unwrap()
            .get();
        if round % 25 == 24 {
            let cut = next - 9;
            s.truncate_from(S, Offset::new(cut)).unwrap();
            next = cut;
        }
        if round % 60 == 59 {
            let start = s.log_start(S).unwrap().get();
            let cfg =
                CompactionConfig { max_log_start: Some(Offset::new(start + (next - start) / 3)), ..Default::default() };
            s.compact(S, &cfg).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().unwrap() >= 50);
    }
    other.join().unwrap();
    let head = s.latest_chain_hash(S).unwrap();
    let v = s.verify_chain(S).unwrap();
    assert_eq!(v.head, head);
    drop(s);
    let s = Storage::open_with(dir.path(), opts).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(next));
    assert_eq!(s.verify_chain(S).unwrap().head, head);
    assert_eq!(s.next_offset(StreamId::new(10)).unwrap(), Offset::new(300));
}

#[test]
fn large_batches_on_many_streams_at_once_match_memory() {
    // One hashing thread serves the whole storage: while one stream's batch uses it, the others
    // hash inline. Whoever gets it, every stream must hold exactly what memory holds.
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { max_segment_bytes: 256 << 10, ..StorageOptions::default() };
    let disk = Storage::open_with(dir.path(), opts.clone()).unwrap();
    let batch = |stream: u64, b: u64| -> Vec<Bytes> {
        (0..70u64).map(|i| Bytes::from(vec![(stream * 31 + b * 7 + i) as u8; 1000 + (i as usize % 50)])).collect()
    };
    std::thread::scope(|scope| {
        for stream in 1..=4u64 {
            let disk = &disk;
            scope.spawn(move || {
                let mut at = Offset::ZERO;
                for b in 0..15 {
                    at = disk.append_batch(StreamId::new(stream), batch(stream, b), at, b % 3 == 0).unwrap();
                }
            });
        }
    });
    for stream in 1..=4u64 {
        let mem = MemoryStorage::with_options(opts.clone()).unwrap();
        let mut at = Offset::ZERO;
        for b in 0..15 {
            at = mem.append_batch(StreamId::new(stream), batch(stream, b), at, false).unwrap();
        }
        let id = StreamId::new(stream);
        assert_eq!(disk.verify_chain(id).unwrap(), mem.verify_chain(id).unwrap());
        assert_eq!(
            disk.read_records(id, Offset::new(333), usize::MAX).unwrap(),
            mem.read_records(id, Offset::new(333), usize::MAX).unwrap()
        );
    }
}
