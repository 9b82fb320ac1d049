//! Disk backend: the zeros preallocated past the active segment's records for fsynced appends.
//! They are trimmed when the segment is sealed and on close; a copy of the directory taken while
//! the storage is open (what a crash leaves) opens with the zeros cut off, torn records in the
//! preallocated space cut, and damage before a whole record salvaged and reported, never cut.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use shale_storage::format::{record as rec, segment as seg};
use shale_storage::{
    CheckpointPolicy, CorruptionReason, Offset, RecoveryKind, Storage, StorageBackend, StorageError, StorageOptions,
    StreamId,
};

const S: StreamId = StreamId::new(3);
const LEN: usize = 100;
const SEGMENT: u64 = 64 << 10;

fn options() -> StorageOptions {
    StorageOptions { max_segment_bytes: SEGMENT, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

fn payload(i: u64) -> Bytes {
    let mut v = format!("{i:08}").into_bytes();
    v.resize(LEN, b'a' + (i % 26) as u8);
    Bytes::from(v)
}

fn append(s: &Storage, from: u64, to: u64, fsync: bool) {
    for o in from..to {
        s.append_batch(S, vec![payload(o)], Offset::new(o), fsync).unwrap();
    }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(S.get().to_string()).join(format!("segment_{seq:06}.log"))
}

/// Byte length of a segment holding `n` records.
fn records_len(n: u64) -> u64 {
    (seg::HEADER_LEN + n as usize * rec::encoded_len(LEN)) as u64
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// Copies the data directory as it is on disk now (the storage may be open): what a crash of
/// the process leaves.
fn snapshot(from: &Path) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(from, dir.path());
    dir
}

/// What a crash of `live` leaves: a copy of `dir` taken while it is open, opened once `live` is
/// gone.
fn open_crash_copy(dir: &Path, live: Storage) -> (tempfile::TempDir, Storage) {
    let copy = snapshot(dir);
    drop(live);
    let opened = Storage::open_with(copy.path(), options()).unwrap();
    (copy, opened)
}

/// A crash copy of a stream of ten records appended with fsync (its segment ends in zeros), and
/// the path of that segment in the copy.
fn crashed_ten_records() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 10, true);
    let crashed = snapshot(dir.path());
    drop(s);
    let path = seg_path(crashed.path(), 0);
    (crashed, path)
}

#[test]
fn fsynced_appends_preallocate_and_close_trims() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 10, true);
    let path = seg_path(dir.path(), 0);
    assert_eq!(file_len(&path), SEGMENT, "zeros up to the segment limit (under PREALLOCATION_BYTES past the end)");
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[records_len(10) as usize..].iter().all(|&b| b == 0));
    s.close().unwrap();
    assert_eq!(file_len(&path), records_len(10), "close trims the zeros");
    let s = Storage::open_with(dir.path(), options()).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(10));
    s.verify_chain(S).unwrap();
}

#[test]
fn appends_without_fsync_preallocate_only_once_the_stream_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 10, false);
    let path = seg_path(dir.path(), 0);
    assert_eq!(file_len(&path), records_len(10), "a stream never synced grows record by record");
    // The Raft log's pattern: appends without fsync, then `sync` for all of them.
    s.sync(S).unwrap();
    append(&s, 10, 20, false);
    assert_eq!(file_len(&path), SEGMENT);
    s.sync(S).unwrap();
    let (_crashed, r) = open_crash_copy(dir.path(), s);
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(20));
    r.verify_chain(S).unwrap();
}

#[test]
fn preallocation_stops_at_the_segment_limit_and_sealing_trims() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    let per_segment = (SEGMENT - seg::HEADER_LEN as u64) / rec::encoded_len(LEN) as u64;
    let n = 2 * per_segment + 5;
    // Batches of 7, so that some straddle a segment boundary.
    let mut o = 0;
    while o < n {
        let k = 7.min(n - o);
        s.append_batch(S, (o..o + k).map(payload).collect(), Offset::new(o), true).unwrap();
        o += k;
    }
    for seq in 0..2 {
        assert_eq!(file_len(&seg_path(dir.path(), seq)), records_len(per_segment), "sealed segment {seq} is trimmed");
    }
    assert_eq!(file_len(&seg_path(dir.path(), 2)), SEGMENT, "the active one is preallocated up to the limit");
    let (crashed, r) = open_crash_copy(dir.path(), s);
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(n));
    r.verify_chain(S).unwrap();
    assert_eq!(file_len(&seg_path(crashed.path(), 2)), records_len(5), "open cut the zeros off");
    assert_eq!(r.read_from(S, Offset::new(n - 1), usize::MAX).unwrap(), vec![payload(n - 1)]);
}

#[test]
fn a_crash_leaves_zeros_that_open_cuts_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 10, true);
    let (crashed, r) = open_crash_copy(dir.path(), s);
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(10));
    assert_eq!(file_len(&seg_path(crashed.path(), 0)), records_len(10));
    append(&r, 10, 20, true);
    let (_again, r) = open_crash_copy(crashed.path(), r);
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(20));
    r.verify_chain(S).unwrap();
    assert_eq!(r.read_from(S, Offset::ZERO, usize::MAX).unwrap(), (0..20).map(payload).collect::<Vec<_>>());
}

#[test]
fn a_torn_record_in_preallocated_space_is_cut() {
    let last = records_len(9) as usize;
    // The last record reached the disk only in part; the rest of its bytes are still the
    // preallocated zeros (a torn write), at every length from none of it to all but its last byte.
    for kept in [0, 1, 13, rec::PAYLOAD_AT, rec::encoded_len(LEN) / 2, rec::encoded_len(LEN) - 1] {
        let (crashed, path) = crashed_ten_records();
        let mut b = fs::read(&path).unwrap();
        b[last + kept..last + rec::encoded_len(LEN)].fill(0);
        fs::write(&path, &b).unwrap();
        let r = Storage::open_with(crashed.path(), options()).unwrap();
        assert_eq!(r.next_offset(S).unwrap(), Offset::new(9), "kept {kept}");
        assert_eq!(file_len(&path), last as u64);
        r.verify_chain(S).unwrap();
        r.append_batch(S, vec![payload(9)], Offset::new(9), true).unwrap();
    }
}

#[test]
fn stray_bytes_in_the_preallocated_zeros_are_cut_not_corruption() {
    // A bit flipped in the zeros past the last record (seen in the chaos run: the node refused to
    // start), or the later page of a torn write that reached the disk before its first: bytes that
    // are no record, with no whole record after them, are a torn tail. The records stay.
    let end = records_len(10) as usize;
    let zeros = file_len(&crashed_ten_records().1) as usize - end;
    assert!(zeros > 4096, "the crash copy holds preallocated zeros past the records: {zeros}");
    // Right after the records, a little later, a page later, and the file's last byte.
    for gap in [0usize, 1, 4096, zeros - 1] {
        let (crashed, path) = crashed_ten_records();
        let mut b = fs::read(&path).unwrap();
        b[end + gap] ^= 0x01;
        fs::write(&path, &b).unwrap();
        let r = Storage::open_with(crashed.path(), options()).unwrap();
        assert_eq!(r.next_offset(S).unwrap(), Offset::new(10), "gap {gap}");
        assert_eq!(file_len(&path), end as u64, "the stray byte and the zeros were cut");
        r.verify_chain(S).unwrap();
        r.append_batch(S, vec![payload(10)], Offset::new(10), true).unwrap();
    }
}

#[test]
fn damage_before_a_whole_record_is_salvaged_not_cut_even_with_zeros_after() {
    // A flipped bit in record 4 of the active segment, whole records after it, then zeros: not a
    // torn write. The stream opens with all ten records, record 4 unreadable (the node's
    // scrubber repairs it from a replica); nothing is cut but the zeros.
    let (crashed, path) = crashed_ten_records();
    let mut b = fs::read(&path).unwrap();
    b[records_len(4) as usize + rec::PAYLOAD_AT] ^= 0x01;
    fs::write(&path, &b).unwrap();
    let s = Storage::open_with(crashed.path(), options()).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(10));
    let damaged: Vec<_> = s
        .recovery_report()
        .iter()
        .filter_map(|f| match &f.kind {
            RecoveryKind::DamagedSegment {
                offset,
                reason: CorruptionReason::CrcMismatch { .. },
                sealed: false,
                ..
            } => *offset,
            _ => None,
        })
        .collect();
    assert_eq!(damaged, vec![Offset::new(4)]);
    // Record 4 is unreadable, and so (until a repair) is what the chain links through it.
    assert!(matches!(s.read_from(S, Offset::new(4), 1), Err(StorageError::Corruption { .. })));
    let before: Vec<Bytes> =
        s.read_range(S, Offset::ZERO, Offset::new(3), usize::MAX).unwrap().into_iter().map(|r| r.payload).collect();
    assert_eq!(before, (0..3).map(payload).collect::<Vec<_>>());
    assert_eq!(fs::read(&path).unwrap(), b[..records_len(10) as usize], "only the zeros were cut");
    // Appends go on after the last record, chained to it.
    s.append_batch(S, vec![payload(10)], Offset::new(10), true).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(11));
}

#[test]
fn truncation_cuts_the_zeros_and_appends_preallocate_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    append(&s, 0, 10, true);
    s.truncate_from(S, Offset::new(6)).unwrap();
    let path = seg_path(dir.path(), 0);
    assert_eq!(file_len(&path), records_len(6));
    append(&s, 6, 8, true);
    assert_eq!(file_len(&path), SEGMENT);
    let (_crashed, r) = open_crash_copy(dir.path(), s);
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(8));
    r.verify_chain(S).unwrap();
}

#[test]
fn a_stream_of_large_writes_grows_without_zeros_and_small_writes_preallocate_again() {
    const BIG: usize = 100 << 10;
    let options = StorageOptions { max_segment_bytes: 16 << 20, ..options() };
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options.clone()).unwrap();
    let path = seg_path(dir.path(), 0);
    // The first fsync marks the stream as synced; the next small write preallocates.
    append(&s, 0, 2, true);
    let mut end = records_len(2);
    assert_eq!(file_len(&path), end + seg::PREALLOCATION_MIN_BYTES, "a small fsynced write preallocates the least");
    // Large writes: once their running mean passes PREALLOCATE_BELOW_BYTES (within 8), the writes
    // past the zeros already there grow the file by exactly their records.
    assert!(BIG as u64 >= seg::PREALLOCATE_BELOW_BYTES);
    let mut o = 2;
    for _ in 0..30 {
        s.append_batch(S, vec![Bytes::from(vec![b'x'; BIG])], Offset::new(o), true).unwrap();
        end += rec::encoded_len(BIG) as u64;
        o += 1;
    }
    assert!(end > records_len(2) + 10 * BIG as u64 + seg::PREALLOCATION_BYTES, "past any zeros of the first writes");
    assert_eq!(file_len(&path), end, "a stream of large writes adds no zeros");
    // Small writes bring the mean down again: the stream preallocates again.
    for _ in 0..20 {
        s.append_batch(S, vec![payload(o)], Offset::new(o), true).unwrap();
        end += rec::encoded_len(LEN) as u64;
        o += 1;
    }
    let len = file_len(&path);
    assert!(len > end && len <= end + seg::PREALLOCATION_BYTES, "zeros past the records: {len} vs {end}");
    let (_crashed, r) = {
        let copy = snapshot(dir.path());
        drop(s);
        let opened = Storage::open_with(copy.path(), options).unwrap();
        (copy, opened)
    };
    assert_eq!(r.next_offset(S).unwrap(), Offset::new(o));
    r.verify_chain(S).unwrap();
}

#[test]
fn past_a_mib_each_preallocation_adds_a_whole_mib_of_zeros() {
    let options = StorageOptions { max_segment_bytes: 8 << 20, ..options() };
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options.clone()).unwrap();
    let path = seg_path(dir.path(), 0);
    let batch = |from: u64| (from..from + 100).map(payload).collect::<Vec<_>>();
    let mut next = 0;
    let mut grown_past_a_mib = 0;
    // Batches of 100 small records, each fsynced: once the records pass 1 MiB, every write that
    // grows the segment adds exactly PREALLOCATION_BYTES of zeros past its own end.
    while grown_past_a_mib < 2 {
        let before = fs::metadata(&path).map_or(0, |m| m.len());
        s.append_batch(S, batch(next), Offset::new(next), true).unwrap();
        next += 100;
        let (after, end) = (file_len(&path), records_len(next));
        assert!(after >= end, "the records fit the file: {after} < {end}");
        if after != before && records_len(next - 100) > seg::PREALLOCATION_BYTES {
            assert_eq!(after, end + seg::PREALLOCATION_BYTES, "a whole step of zeros past the write's end");
            let bytes = fs::read(&path).unwrap();
            assert!(bytes[end as usize..].iter().all(|&b| b == 0), "only zeros past the records");
            grown_past_a_mib += 1;
        }
    }
    for (i, r) in s.read_range(S, Offset::ZERO, Offset::new(next), usize::MAX).unwrap().iter().enumerate() {
        assert_eq!(r.payload, payload(i as u64), "record {i}");
    }
    s.verify_chain(S).unwrap();
    s.close().unwrap();
    assert_eq!(file_len(&path), records_len(next), "close trims the zeros");
    let s = Storage::open_with(dir.path(), options).unwrap();
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(next));
    s.verify_chain(S).unwrap();
}
