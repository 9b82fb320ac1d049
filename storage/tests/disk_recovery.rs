//! Disk backend: tamper detection, torn-tail recovery, index rebuild, damaged and foreign files,
//! truncation / compaction / checkpoint install across reopen.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shale_storage::format::{record as rec, segment as seg};
use shale_storage::{
    ChainHash, Checkpoint, CodecKind, CompactionConfig, CorruptionReason, MemoryStorage, Offset, RecoveryKind, Storage,
    StorageBackend, StorageError, StorageOptions,
};

mod common;

use common::small_segments::{LEN, S, flip, options, payload, per_segment, position, seg_path};

fn append(s: &dyn StorageBackend, from: u64, to: u64) {
    for o in from..to {
        s.append_batch(S, vec![payload(o)], Offset::new(o), false).unwrap();
    }
}

fn idx_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("1").join(format!("segment_{seq:06}.idx"))
}

/// Flips a payload byte of record `offset` and rewrites its CRC so only the chain can tell.
fn tamper(dir: &Path, offset: u64) {
    flip(dir, offset, 3, true);
}

fn corrupt_offset(e: &StorageError) -> Option<Offset> {
    match e {
        StorageError::Corruption { offset, .. } => *offset,
        _ => None,
    }
}

#[test]
fn tampered_payload_with_fixed_crc_is_named_by_verify_chain_and_reads() {
    for victim in [5, per_segment() - 1, per_segment() + 3, 3 * per_segment() - 1] {
        let dir = tempfile::tempdir().unwrap();
        drop({
            let s = Storage::open_with(dir.path(), options()).unwrap();
            append(&s, 0, 4 * per_segment() + 5);
            s
        });
        tamper(dir.path(), victim);
        let s = Storage::open_with(dir.path(), options()).unwrap();
        let e = s.verify_chain(S).unwrap_err();
        assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "{e}");
        match &e {
            StorageError::Corruption { file, reason, .. } => {
                assert_eq!(file, &format!("segment_{:06}.log", victim / per_segment()));
                assert!(matches!(reason, CorruptionReason::ChainMismatch { .. }));
            }
            _ => unreachable!(),
        }
        // A verified read of the record fails too, naming it; reads elsewhere still work.
        let e = s.read_records(S, Offset::new(victim), 1).unwrap_err();
        assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "{e}");
        let far = 4 * per_segment();
        assert_eq!(s.read_records(S, Offset::new(far), 1).unwrap()[0].payload, payload(far));
    }
}

#[test]
fn tampered_last_record_is_caught_against_the_head_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 30);
    s.sync(S).unwrap();
    tamper(dir.path(), 29);
    let e = s.verify_chain(S).unwrap_err();
    assert_eq!(corrupt_offset(&e), Some(Offset::new(29)), "{e}");
    let e = s.read_records(S, Offset::new(29), 100).unwrap_err();
    assert_eq!(corrupt_offset(&e), Some(Offset::new(29)), "{e}");
}

/// Writes `n` records, closes, and returns the active segment's path and record 9's position.
fn ten_records(dir: &Path, keep_index: bool) -> (PathBuf, usize) {
    let s = Storage::open_with(dir, options()).unwrap();
    append(&s, 0, 10);
    drop(s);
    if !keep_index {
        fs::remove_file(idx_path(dir, 0)).unwrap();
    }
    (seg_path(dir, 0), position(9))
}

#[test]
fn torn_last_record_is_cut_at_every_byte() {
    let full = rec::encoded_len(LEN);
    for cut in 0..full {
        for keep_index in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let (path, last) = ten_records(dir.path(), keep_index);
            let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len((last + cut) as u64).unwrap();
            drop(f);
            let s = Storage::open_with(dir.path(), options()).unwrap();
            assert_eq!(s.next_offset(S).unwrap(), Offset::new(9), "cut {cut}");
            assert_eq!(fs::metadata(&path).unwrap().len(), last as u64, "the torn bytes are gone");
            s.verify_chain(S).unwrap();
            let all = s.read_from(S, Offset::ZERO, usize::MAX).unwrap();
            assert_eq!(all, (0..9).map(payload).collect::<Vec<_>>());
            s.append_batch(S, vec![payload(9)], Offset::new(9), true).unwrap();
            drop(s);
            let s = Storage::open_with(dir.path(), options()).unwrap();
            assert_eq!(s.read_from(S, Offset::ZERO, usize::MAX).unwrap().len(), 10);
        }
    }
}

#[test]
fn bad_crc_or_end_marker_in_last_record_is_cut_and_zero_tail_too() {
    let full = rec::encoded_len(LEN);
    for damage in [rec::PAYLOAD_AT + 7, full - 5, full - 1] {
        let dir = tempfile::tempdir().unwrap();
        let (path, last) = ten_records(dir.path(), false);
        let mut b = fs::read(&path).unwrap();
        b[last + damage] ^= 0x20;
        fs::write(&path, b).unwrap();
        let s = Storage::open_with(dir.path(), options()).unwrap();
        assert_eq!(s.next_offset(S).unwrap(), Offset::new(9), "damage at {damage}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = ten_records(dir.path(), false);
    let mut b = fs::read(&path).unwrap();
    b.extend_from_slice(&[0u8; 300]);
    fs::write(&path, b).unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(10));
}

/// The offsets of the damaged records open found in the active segment of `S`.
fn damaged_in_active(s: &Storage) -> Vec<Offset> {
    s.recovery_report()
        .iter()
        .filter_map(|f| match &f.kind {
            RecoveryKind::DamagedSegment { offset, sealed: false, .. } => *offset,
            _ => None,
        })
        .collect()
}

#[test]
fn damage_before_the_tail_is_salvaged_not_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = ten_records(dir.path(), false);
    let mut b = fs::read(&path).unwrap();
    b[position(4) + rec::PAYLOAD_AT] ^= 0x01;
    fs::write(&path, &b).unwrap();
    let s = Storage::open_with(dir.path(), options()).expect("damage in the active segment is salvaged");
    assert_eq!(damaged_in_active(&s), vec![Offset::new(4)]);
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(10), "the records after the damage are kept");
    assert!(matches!(
        s.read_from(S, Offset::new(4), 1),
        Err(StorageError::Corruption { offset: Some(o), reason: CorruptionReason::CrcMismatch { .. }, .. }) if o == Offset::new(4)
    ));
    // Nothing was cut: all ten records are still in the file.
    assert_eq!(fs::read(&path).unwrap().len(), b.len());
}

#[test]
fn missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5 * per_segment() + 3;
    drop({
        let s = Storage::open_with(dir.path(), options()).unwrap();
        append(&s, 0, n);
        s
    });
    let good = fs::read(idx_path(dir.path(), 2)).unwrap();
    fs::remove_file(idx_path(dir.path(), 1)).unwrap();
    let mut bad = good.clone();
    bad[30] ^= 0xff;
    fs::write(idx_path(dir.path(), 2), &bad).unwrap();
    fs::write(idx_path(dir.path(), 3), b"garbage").unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(n));
    s.verify_chain(S).unwrap();
    assert_eq!(s.read_from(S, Offset::new(per_segment() + 1), 1).unwrap()[0], payload(per_segment() + 1));
    assert!(idx_path(dir.path(), 1).exists(), "rebuilt index written back");
    assert_ne!(fs::read(idx_path(dir.path(), 2)).unwrap(), bad);
    assert!(fs::read(idx_path(dir.path(), 3)).unwrap().len() > 100);
}

#[test]
fn sealed_segments_are_trusted_through_their_index_on_open() {
    // Damage inside a sealed segment does not stop open (it is not rescanned), but the first
    // verified read or verification that touches it reports it.
    let dir = tempfile::tempdir().unwrap();
    drop({
        let s = Storage::open_with(dir.path(), options()).unwrap();
        append(&s, 0, 3 * per_segment());
        s
    });
    let path = seg_path(dir.path(), 0);
    let mut b = fs::read(&path).unwrap();
    b[position(2) + rec::PAYLOAD_AT] ^= 0x01;
    fs::write(&path, b).unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    let e = s.verify_chain(S).unwrap_err();
    assert_eq!(corrupt_offset(&e), Some(Offset::new(2)));
    assert!(s.read_records(S, Offset::new(2), 1).is_err());
}

#[test]
fn foreign_and_damaged_files_are_typed_errors() {
    let make = || {
        let dir = tempfile::tempdir().unwrap();
        drop({
            let s = Storage::open_with(dir.path(), options()).unwrap();
            append(&s, 0, 3 * per_segment());
            s
        });
        dir
    };
    let dir = make();
    let mut b = fs::read(seg_path(dir.path(), 0)).unwrap();
    b[..8].copy_from_slice(b"NOTSHALE");
    fs::write(seg_path(dir.path(), 0), b).unwrap();
    assert!(matches!(Storage::open_with(dir.path(), options()), Err(StorageError::BadMagic { .. })));

    let dir = make();
    let mut b = fs::read(seg_path(dir.path(), 1)).unwrap();
    b[seg::VERSION_AT] = 99;
    fs::write(seg_path(dir.path(), 1), b).unwrap();
    assert!(matches!(
        Storage::open_with(dir.path(), options()),
        Err(StorageError::UnsupportedVersion { found: 99, supported: 1, .. })
    ));

    let dir = make();
    fs::remove_file(seg_path(dir.path(), 1)).unwrap();
    fs::remove_file(idx_path(dir.path(), 1)).unwrap();
    let e = Storage::open_with(dir.path(), options()).unwrap_err();
    assert!(matches!(e, StorageError::Corruption { reason: CorruptionReason::SegmentLayout(_), .. }), "{e}");

    let dir = make();
    fs::write(seg_path(dir.path(), 0), vec![0xAB; 5000]).unwrap();
    assert!(Storage::open_with(dir.path(), options()).is_err());

    // A hostile or merely wrong length in a middle record of the active segment: damage (no
    // allocation, and not mistaken for a torn tail although it reaches past the end), salvaged
    // with the record unreadable; a read of it is a typed error.
    for length in [0x7fff_fff0u32, 1 << 20, 200] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = ten_records(dir.path(), false);
        let mut b = fs::read(&path).unwrap();
        let p = position(3) + rec::STORED_LEN_AT;
        b[p..p + 4].copy_from_slice(&length.to_le_bytes());
        fs::write(&path, b).unwrap();
        let s = Storage::open_with(dir.path(), options()).unwrap();
        assert_eq!(damaged_in_active(&s), vec![Offset::new(3)], "length {length}");
        assert_eq!(s.next_offset(S).unwrap(), Offset::new(10));
        let e = s.read_from(S, Offset::new(3), 1).unwrap_err();
        assert_eq!(corrupt_offset(&e), Some(Offset::new(3)), "{e}");
    }

    // Garbage checkpoint file.
    let dir = make();
    fs::write(dir.path().join("1").join("checkpoint_00000000000000000010.ckp"), b"junk").unwrap();
    assert!(matches!(Storage::open_with(dir.path(), options()), Err(StorageError::Corruption { .. })));
}

#[test]
fn decompression_bomb_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StorageOptions { codec: CodecKind::Zstd { level: 1 }, ..options() };
    drop({
        let s = Storage::open_with(dir.path(), opts.clone()).unwrap();
        s.append_batch(S, vec![Bytes::from(vec![7u8; 2000])], Offset::ZERO, true).unwrap();
        s
    });
    // Rewrite record 0 as a zstd frame of 4 MiB of zeros that claims to be 2000 bytes.
    let path = seg_path(dir.path(), 0);
    let _ = fs::remove_file(idx_path(dir.path(), 0));
    let mut b = fs::read(&path).unwrap();
    let bomb = zstd::bulk::compress(&vec![0u8; 4 << 20], 3).unwrap();
    b.truncate(seg::HEADER_LEN);
    let start = b.len();
    b.extend_from_slice(&[rec::START_MARKER, rec::KIND_DATA, 2, 0]);
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&[0u8; 32]);
    b.extend_from_slice(&2000u32.to_le_bytes());
    b.extend_from_slice(&(bomb.len() as u32).to_le_bytes());
    b.extend_from_slice(&bomb);
    let crc = crc32fast::hash(&b[start..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.push(rec::END_MARKER);
    fs::write(&path, b).unwrap();
    let e = Storage::open_with(dir.path(), opts).unwrap_err();
    assert!(matches!(e, StorageError::Decompression { .. }), "{e}");
}

/// Runs the same operations on disk (with a reopen after each) and in memory and compares.
#[test]
fn truncate_compact_install_across_reopen_match_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mem = MemoryStorage::with_options(options()).unwrap();
    let reopen = |d: &Path| Storage::open_with(d, options()).unwrap();
    let compare = |disk: &Storage, mem: &MemoryStorage, what: &str| {
        assert_eq!(disk.next_offset(S).unwrap(), mem.next_offset(S).unwrap(), "{what}");
        assert_eq!(disk.log_start(S).unwrap(), mem.log_start(S).unwrap(), "{what}");
        assert_eq!(disk.latest_chain_hash(S).unwrap(), mem.latest_chain_hash(S).unwrap(), "{what}");
        let start = mem.log_start(S).unwrap();
        assert_eq!(
            disk.read_records(S, start, usize::MAX).unwrap(),
            mem.read_records(S, start, usize::MAX).unwrap(),
            "{what}"
        );
        assert_eq!(disk.verify_chain(S).unwrap(), mem.verify_chain(S).unwrap(), "{what}");
        let key = |c: Option<Checkpoint>| c.map(|c| (c.offset, c.chain_hash, c.data));
        assert_eq!(key(disk.latest_checkpoint(S).unwrap()), key(mem.latest_checkpoint(S).unwrap()), "{what}");
    };
    let p = per_segment();
    let mut disk = reopen(dir.path());
    append(&disk, 0, 6 * p);
    append(&mem, 0, 6 * p);
    // Cut at a segment boundary, inside a sealed segment, then append across a boundary.
    for (cut, grow_to) in [(5 * p, 5 * p + 3), (3 * p + 7, 4 * p + 9), (4 * p, 6 * p + 2)] {
        disk.truncate_from(S, Offset::new(cut)).unwrap();
        mem.truncate_from(S, Offset::new(cut)).unwrap();
        compare(&disk, &mem, &format!("truncate {cut}"));
        append(&disk, cut, grow_to);
        append(&mem, cut, grow_to);
        drop(disk);
        disk = reopen(dir.path());
        compare(&disk, &mem, &format!("reopen after truncate {cut}"));
    }
    let cp = disk.create_checkpoint_at(S, Offset::new(2 * p + 1), Bytes::from_static(b"raft")).unwrap();
    let mcp = mem.create_checkpoint_at(S, Offset::new(2 * p + 1), Bytes::from_static(b"raft")).unwrap();
    assert_eq!(cp.chain_hash, mcp.chain_hash);
    let cfg = CompactionConfig { max_log_start: Some(Offset::new(3 * p)), ..Default::default() };
    assert_eq!(disk.compact(S, &cfg).unwrap(), mem.compact(S, &cfg).unwrap());
    assert_eq!(disk.log_start(S).unwrap(), Offset::new(3 * p));
    // Verified reads right at the new log start are anchored by its checkpoint.
    assert_eq!(disk.read_records(S, Offset::new(3 * p), 1).unwrap()[0].payload, payload(3 * p));
    assert!(matches!(
        disk.read_records(S, Offset::new(3), 1),
        Err(StorageError::OffsetOutOfRange { start, .. }) if start == Offset::new(3 * p)
    ));
    drop(disk);
    disk = reopen(dir.path());
    compare(&disk, &mem, "reopen after compaction");
    assert_eq!(
        disk.chain_hash_at(S, Offset::new(3 * p - 1)).unwrap(),
        mem.chain_hash_at(S, Offset::new(3 * p - 1)).unwrap()
    );

    // install_checkpoint, matching branch: records kept.
    let at = Offset::new(4 * p);
    let matching = Checkpoint::new(at, mem.chain_hash_at(S, Offset::new(4 * p - 1)).unwrap(), Bytes::from_static(b"m"));
    disk.install_checkpoint(S, matching.clone()).unwrap();
    mem.install_checkpoint(S, matching).unwrap();
    drop(disk);
    disk = reopen(dir.path());
    compare(&disk, &mem, "matching install");
    // Conflicting branch: the stream restarts empty at the checkpoint.
    let foreign = Checkpoint::new(Offset::new(1000), ChainHash([4; 32]), Bytes::from_static(b"snapshot"));
    disk.install_checkpoint(S, foreign.clone()).unwrap();
    mem.install_checkpoint(S, foreign).unwrap();
    compare(&disk, &mem, "restart install");
    drop(disk);
    disk = reopen(dir.path());
    compare(&disk, &mem, "reopen after restart install");
    append(&disk, 1000, 1000 + p + 2);
    append(&mem, 1000, 1000 + p + 2);
    drop(disk);
    disk = reopen(dir.path());
    compare(&disk, &mem, "appends after restart");
    let segs = fs::read_dir(dir.path().join("1"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert_eq!(segs, 2, "only the restarted stream's segments remain");
}

#[test]
fn storage_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Storage>();
}

#[test]
fn tampered_prev_hash_field_names_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    drop({
        let s = Storage::open_with(dir.path(), options()).unwrap();
        append(&s, 0, 3 * per_segment());
        s
    });
    let victim = per_segment() + 5;
    let path = seg_path(dir.path(), victim / per_segment());
    let mut b = fs::read(&path).unwrap();
    let p = position(victim);
    b[p + rec::PREV_HASH_AT] ^= 0x80;
    let crc_at = p + rec::PAYLOAD_AT + LEN;
    let crc = crc32fast::hash(&b[p..crc_at]);
    b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, b).unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    let e = s.verify_chain(S).unwrap_err();
    assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "{e}");
    let e = s.read_records(S, Offset::new(victim - 2), 10_000).unwrap_err();
    assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "{e}");
}

#[test]
fn tampering_around_a_read_cursor_is_still_named() {
    // A sequential reader's next read starts from the hash its last read ended on. Damage after
    // that point, or just before it, must still be found and named by the reads that cover it.
    let k = per_segment() + 7; // off the anchor grid, in the second segment
    for victim in [k - 1, k, k + 2] {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open_with(dir.path(), options()).unwrap();
        append(&s, 0, 3 * per_segment());
        let first = s.read_range(S, Offset::ZERO, Offset::new(k), usize::MAX).unwrap();
        assert_eq!(first.last().unwrap().offset, Offset::new(k - 1));
        tamper(dir.path(), victim);
        let from = victim.min(k);
        let e = s.read_records(S, Offset::new(from), usize::MAX).unwrap_err();
        assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "victim {victim}: {e}");
        let e = s.verify_chain(S).unwrap_err();
        assert_eq!(corrupt_offset(&e), Some(Offset::new(victim)), "victim {victim}: {e}");
    }
}
