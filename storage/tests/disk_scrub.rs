//! Scrub and repair of the disk backend against real damage: a flipped bit in a sealed segment
//! (found at its exact byte position and offset, unseen by open), and power cuts at every step of a
//! repair (the segment is then the old one or the new one, never a mix, and the storage opens).

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    CheckpointPolicy, CorruptionReason, Offset, Record, Storage, StorageBackend, StorageError, StorageOptions,
    StreamId, format,
};

const S: StreamId = StreamId::new(4);
const ROOT: &str = "/data";
const PAYLOAD: usize = 200;

fn options() -> StorageOptions {
    StorageOptions { max_segment_bytes: 4096, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

fn open(fs: &FaultyFileSystem) -> Result<Storage, StorageError> {
    Storage::open_with_fs(ROOT, options(), Arc::new(fs.clone()))
}

fn payload(i: u64) -> Bytes {
    Bytes::from((0..PAYLOAD).map(|j| (i as usize * 31 + j * 7) as u8).collect::<Vec<u8>>())
}

/// A cleanly closed stream of four sealed segments and an active one; returns its records.
fn written(fs: &FaultyFileSystem) -> Vec<Record> {
    let s = open(fs).unwrap();
    let events: Vec<Bytes> = (0..80).map(payload).collect();
    s.append_batch(S, events, Offset::ZERO, true).unwrap();
    assert!(s.segments(S).unwrap().len() >= 5);
    let recs = s.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    s.close().unwrap();
    recs
}

fn seg_path(name: &str) -> PathBuf {
    PathBuf::from(ROOT).join(S.get().to_string()).join(name)
}

/// Flips a bit in the middle of the payload of `offset`; returns the file name and the record's
/// byte position.
fn flip(fs: &FaultyFileSystem, s: &Storage, offset: Offset) -> (String, u64) {
    let seg = s.segments(S).unwrap().into_iter().find(|g| g.base <= offset && offset < g.end).unwrap();
    assert!(seg.sealed);
    let record = format::record::encoded_len(PAYLOAD) as u64;
    let pos = format::segment::HEADER_LEN as u64 + (offset.get() - seg.base.get()) * record;
    let path = seg_path(&seg.file);
    let mut bytes = fs.file_bytes(&path).unwrap();
    bytes[(pos as usize) + format::record::HEADER_LEN + PAYLOAD / 2] ^= 0x01;
    fs.set_file_bytes(&path, bytes).unwrap();
    (seg.file, pos)
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_found_where_it_is() {
    let fs = FaultyFileSystem::new();
    let good = written(&fs);
    let s = open(&fs).unwrap();
    let bad = Offset::new(20);
    let (file, pos) = flip(&fs, &s, bad);
    // Open trusts the sealed segment through its index: nothing is noticed until it is read.
    drop(s);
    let s = open(&fs).expect("open does not read sealed segments");
    let seg = s.segments(S).unwrap().into_iter().find(|g| g.file == file).unwrap();
    let report = s.scrub_segment(S, seg.base).unwrap();
    let d = report.damage.expect("the scrub finds it");
    assert_eq!(d.file, file);
    assert_eq!(d.position, pos, "the damaged record's byte position");
    assert_eq!(d.range(), bad..bad.plus(1));
    assert!(matches!(d.reason, CorruptionReason::CrcMismatch { .. }), "{:?}", d.reason);
    assert_eq!(report.bytes, seg.bytes - format::segment::HEADER_LEN as u64, "every record was re-read");

    s.repair_range(S, bad, good[20..21].to_vec()).unwrap();
    drop(s);
    let s = open(&fs).unwrap();
    assert_eq!(s.read_records(S, Offset::ZERO, usize::MAX).unwrap(), good, "the repair survives a reopen");
    for g in s.segments(S).unwrap() {
        assert_eq!(s.scrub_segment(S, g.base).unwrap().damage, None);
    }
}

/// A power cut at every write and every fsync of a repair: the storage opens, and the segment is
/// either still damaged (and a new repair works) or repaired.
#[test]
fn a_crash_during_repair_leaves_the_old_or_the_new_segment() {
    let mut outcomes = (0, 0);
    for fault in 0..12 {
        for fsync in [false, true] {
            let fs = FaultyFileSystem::new();
            let good = written(&fs);
            let bad = Offset::new(33);
            let s = open(&fs).unwrap();
            flip(&fs, &s, bad);
            let base = s.segments(S).unwrap().into_iter().find(|g| g.base <= bad && bad < g.end).unwrap().base;
            if fsync {
                fs.fail_fsync_after(fault);
            } else {
                fs.fail_write_after(fault);
            }
            let result = s.repair_range(S, bad, good[33..34].to_vec());
            fs.crash();
            drop(s);
            let s = open(&fs).unwrap_or_else(|e| panic!("open after a crash in a repair (fault {fault}): {e}"));
            match s.scrub_segment(S, base).unwrap().damage {
                Some(d) => {
                    assert!(result.is_err(), "a repair that returned Ok is durable");
                    assert_eq!(d.range(), bad..bad.plus(1));
                    outcomes.0 += 1;
                    s.repair_range(S, bad, good[33..34].to_vec()).unwrap();
                }
                None => outcomes.1 += 1,
            }
            assert_eq!(s.read_records(S, Offset::ZERO, usize::MAX).unwrap(), good);
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "both outcomes were exercised: {outcomes:?}");
}

/// A sealed segment whose index is gone (a crash between sealing and writing the index) and whose
/// records are damaged opens anyway: the damaged records are unreadable, everything else reads,
/// and a repair restores it. Damage to a length field or a start marker needs the open to find
/// the next record by its marker and CRC.
#[test]
fn a_damaged_sealed_segment_without_index_opens_and_is_repaired() {
    for field in [format::record::HEADER_LEN + PAYLOAD / 2, format::record::STORED_LEN_AT, 0] {
        let fs = FaultyFileSystem::new();
        let good = written(&fs);
        let s = open(&fs).unwrap();
        let bad = Offset::new(41);
        let seg = s.segments(S).unwrap().into_iter().find(|g| g.base <= bad && bad < g.end).unwrap();
        drop(s);
        let path = seg_path(&seg.file);
        let record = format::record::encoded_len(PAYLOAD);
        let pos = format::segment::HEADER_LEN + (bad.get() - seg.base.get()) as usize * record;
        let mut bytes = fs.file_bytes(&path).unwrap();
        bytes[pos + field] ^= 0x40;
        fs.set_file_bytes(&path, bytes).unwrap();
        let idx = path.with_extension("idx");
        assert!(fs.file_bytes(&idx).is_some(), "{} exists", idx.display());
        fs.set_file_bytes(&idx, b"damaged".to_vec()).unwrap();

        let s = open(&fs).unwrap_or_else(|e| panic!("field at {field}: open fails: {e}"));
        let d = s.scrub_segment(S, seg.base).unwrap().damage.expect("damage reported");
        assert_eq!(d.range(), bad..bad.plus(1), "field at {field}");
        assert_eq!(d.position, pos as u64);
        assert!(matches!(s.read_range(S, bad, bad.plus(1), usize::MAX), Err(StorageError::Corruption { .. })));
        // (A read checks its last record against its successor's link, so it stops one short.)
        let before = s.read_range(S, Offset::ZERO, Offset::new(40), usize::MAX).unwrap();
        assert_eq!(before, good[..40].to_vec(), "records before the damage read");
        let after = s.read_range(S, bad.plus(1), Offset::new(80), usize::MAX).unwrap();
        assert_eq!(after, good[42..].to_vec(), "records after the damage read");
        s.repair_range(S, bad, good[41..42].to_vec()).unwrap();
        assert_eq!(s.read_records(S, Offset::ZERO, usize::MAX).unwrap(), good);
        drop(s);
        let s = open(&fs).unwrap();
        assert_eq!(s.read_records(S, Offset::ZERO, usize::MAX).unwrap(), good);
        assert_eq!(s.scrub_segment(S, seg.base).unwrap().damage, None);
    }
}

/// Damage in the active segment of a stream written with fsync (so its file has preallocated
/// zeros past the records): scrubbed against the head, repaired, appended to, and a power cut
/// after that loses nothing acknowledged.
#[test]
fn the_active_segment_is_repaired_and_survives_a_crash() {
    let fs = FaultyFileSystem::new();
    let s = open(&fs).unwrap();
    for i in 0..70u64 {
        s.append_batch(S, vec![payload(i)], Offset::new(i), true).unwrap();
    }
    let good = s.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    let active = s.segments(S).unwrap().pop().unwrap();
    assert!(!active.sealed && active.end.get() - active.base.get() >= 3, "{active:?}");
    let bad = active.base.plus(1);
    let path = seg_path(&active.file);
    let mut bytes = fs.file_bytes(&path).unwrap();
    let record = format::record::encoded_len(PAYLOAD);
    bytes[format::segment::HEADER_LEN + record + format::record::HEADER_LEN + 3] ^= 0x02;
    fs.set_file_bytes(&path, bytes).unwrap();

    let d = s.scrub_segment(S, active.base).unwrap().damage.expect("found");
    assert_eq!(d.range(), bad..bad.plus(1));
    s.repair_range(S, bad, good[bad.get() as usize..bad.get() as usize + 1].to_vec()).unwrap();
    for i in 70..75u64 {
        s.append_batch(S, vec![payload(i)], Offset::new(i), true).unwrap();
    }
    fs.crash();
    drop(s);
    let s = open(&fs).unwrap();
    let recs = s.read_records(S, Offset::ZERO, usize::MAX).unwrap();
    assert_eq!(recs.len(), 75, "every acknowledged record survives");
    assert_eq!(recs[..70], good[..]);
    s.verify_chain(S).unwrap();
}
