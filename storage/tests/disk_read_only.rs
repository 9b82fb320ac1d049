//! Disk backend opened read-only (`Storage::open_read_only`): whatever it finds (a torn tail,
//! stray bytes in the preallocated zeros, a damaged record, leftovers of interrupted operations)
//! it changes no byte of any file, reports what a read-write open would repair or refuse, serves
//! the records before the damage, and refuses every write with `StorageError::ReadOnly`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use shale_storage::format::{names, record as rec, segment as seg};
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    ChainHash, Checkpoint, CheckpointPolicy, CompactionConfig, FileSystem, Offset, RecoveryFinding, RecoveryKind,
    Storage, StorageBackend, StorageError, StorageOptions, StreamId, serialize_checkpoint_payload,
};

const S: StreamId = StreamId::new(5);
const ROOT: &str = "/d";

fn options() -> StorageOptions {
    StorageOptions { max_segment_bytes: 4096, checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() }
}

fn event(i: u64) -> Bytes {
    Bytes::from(format!("event {i:04} {}", "x".repeat(90)))
}

fn stream_dir() -> PathBuf {
    Path::new(ROOT).join(S.get().to_string())
}

fn open_rw(fs: &FaultyFileSystem) -> Result<Storage, StorageError> {
    Storage::open_with_fs(ROOT, options(), Arc::new(fs.clone()))
}

fn open_ro(fs: &FaultyFileSystem) -> Storage {
    Storage::open_read_only_with_fs(ROOT, options(), Arc::new(fs.clone())).expect("a read-only open succeeds")
}

/// `n` records appended with fsync to stream `S` (about 25 per 4 KiB segment). With `close`, the
/// storage is closed cleanly; otherwise the power is cut with it open (the active segment keeps
/// its preallocated zeros and has no index file).
fn written(n: u64, close: bool) -> FaultyFileSystem {
    let fs = FaultyFileSystem::new();
    let s = open_rw(&fs).unwrap();
    for i in 0..n {
        s.append_batch(S, vec![event(i)], Offset::new(i), true).unwrap();
    }
    if close {
        s.close().unwrap();
    } else {
        fs.crash();
        drop(s);
    }
    fs
}

/// Every file with its bytes, and the write and fsync counts.
type FsState = (Vec<(PathBuf, Vec<u8>)>, (u64, u64));

fn state(fs: &FaultyFileSystem) -> FsState {
    let files = fs.list_files().into_iter().map(|p| (p.clone(), fs.file_bytes(&p).unwrap())).collect();
    (files, fs.op_counts())
}

/// The segment files of `S`, oldest first.
fn segments(fs: &FaultyFileSystem) -> Vec<PathBuf> {
    let dir = stream_dir();
    fs.list_files()
        .into_iter()
        .filter(|p| p.parent() == Some(&dir) && p.extension().is_some_and(|e| e == "log"))
        .collect()
}

/// Byte position of record `offset` in a segment file's bytes.
fn record_start(bytes: &[u8], offset: u64) -> usize {
    let field = |at: usize, len: usize| bytes[at..at + len].iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
    let mut pos = seg::HEADER_LEN;
    while field(pos + rec::OFFSET_AT, 8) != offset {
        pos += rec::encoded_len(field(pos + rec::STORED_LEN_AT, 4) as usize);
    }
    pos
}

/// Edits a file's bytes in place.
fn edit(fs: &FaultyFileSystem, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs.file_bytes(path).unwrap();
    f(&mut bytes);
    fs.set_file_bytes(path, bytes).unwrap();
}

/// Flips a bit of record `offset`'s payload in the segment file `path`.
fn flip_payload(fs: &FaultyFileSystem, path: &Path, offset: u64) {
    edit(fs, path, |b| {
        let at = record_start(b, offset) + rec::PAYLOAD_AT + 1;
        b[at] ^= 0x10;
    });
}

/// The one finding of `s`'s open, which must be of kind `kind` (as [`kinds`] names it).
fn single_finding<'a>(s: &'a Storage, kind: &str) -> &'a RecoveryKind {
    let report = s.recovery_report();
    assert_eq!(kinds(report), [kind], "{report:?}");
    &report[0].kind
}

/// The records of `S` in `[from, to)` are there, verified, and hold what was appended.
fn assert_records(s: &Storage, from: u64, to: u64) {
    let got = s.read_range(S, Offset::new(from), Offset::new(to), usize::MAX).unwrap();
    let want: Vec<(u64, Bytes)> = (from..to).map(|i| (i, event(i))).collect();
    assert_eq!(got.into_iter().map(|r| (r.offset.get(), r.payload)).collect::<Vec<_>>(), want);
}

/// The kinds of `S`'s findings, by name.
fn kinds(report: &[RecoveryFinding]) -> Vec<&'static str> {
    report
        .iter()
        .map(|f| match &f.kind {
            RecoveryKind::LeftoverTempFile => "temp",
            RecoveryKind::TornSegmentHeader { .. } => "torn-header",
            RecoveryKind::InterruptedInstall => "interrupted-install",
            RecoveryKind::EmptyStreamDir => "empty-dir",
            RecoveryKind::IndexRebuilt { .. } => "index-rebuilt",
            RecoveryKind::DamagedSegment { sealed: true, .. } => "damaged-sealed",
            RecoveryKind::DamagedSegment { sealed: false, .. } => "damaged-active",
            RecoveryKind::TornTail { .. } => "torn-tail",
            RecoveryKind::StaleCheckpoint => "stale-checkpoint",
            RecoveryKind::Refused(_) => "refused",
            _ => "other",
        })
        .collect()
}

#[test]
fn a_torn_tail_is_reported_not_cut_and_the_records_before_it_are_read() {
    let fs = written(60, false);
    let active = segments(&fs).pop().unwrap();
    let start = record_start(&fs.file_bytes(&active).unwrap(), 59);
    let mut torn = 0;
    edit(&fs, &active, |b| {
        b.truncate(start + 30);
        torn = b.iter().rposition(|&x| x != 0).unwrap() + 1 - start;
    });
    let before = state(&fs);

    let s = open_ro(&fs);
    assert!(s.is_read_only());
    let report = s.recovery_report();
    assert_eq!(kinds(report), ["torn-tail"], "{report:?}");
    match &report[0].kind {
        RecoveryKind::TornTail { position, offset, bytes, reason } => {
            assert_eq!((*position, *offset, *bytes), (start as u64, Offset::new(59), torn as u64));
            assert!(reason.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report[0].file.as_deref(), active.file_name().unwrap().to_str());
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(59));
    assert_records(&s, 0, 59);
    assert_eq!(s.verify_chain(S).unwrap().records, 59);
    drop(s);
    assert_eq!(state(&fs), before, "no byte of any file changed, nothing written or fsynced");

    // A read-write open finds the same and cuts it.
    let s = open_rw(&fs).unwrap();
    assert_eq!(kinds(s.recovery_report()), ["torn-tail"]);
    assert_eq!(s.next_offset(S).unwrap(), Offset::new(59));
    assert_eq!(fs.file_bytes(&active).unwrap().len(), start, "cut at the last whole record");
}

#[test]
fn stray_bytes_in_the_preallocated_zeros_are_reported_not_cut() {
    let fs = written(10, false);
    let active = segments(&fs).pop().unwrap();
    let records_end = fs.file_bytes(&active).unwrap().iter().rposition(|&b| b != 0).unwrap() + 1;
    edit(&fs, &active, |b| {
        assert!(b.len() > records_end + 700, "the crash left preallocated zeros");
        b[records_end + 600..records_end + 604].copy_from_slice(b"junk");
    });
    let before = state(&fs);

    let s = open_ro(&fs);
    match single_finding(&s, "torn-tail") {
        RecoveryKind::TornTail { position, offset, bytes, .. } => {
            assert_eq!((*position, *offset, *bytes), (records_end as u64, Offset::new(10), 604));
        }
        other => panic!("{other:?}"),
    }
    assert_records(&s, 0, 10);
    drop(s);
    assert_eq!(state(&fs), before);
}

#[test]
fn damage_before_whole_records_in_the_active_segment_is_reported_and_salvaged() {
    let fs = written(60, false);
    let active = segments(&fs).pop().unwrap();
    let (base, last) = {
        let s = open_ro(&fs);
        (s.segments(S).unwrap().last().unwrap().base.get(), s.next_offset(S).unwrap().get())
    };
    let bad = base + 3;
    assert!(bad + 2 < last, "whole records follow the damage");
    flip_payload(&fs, &active, bad);
    let before = state(&fs);

    let s = open_ro(&fs);
    match single_finding(&s, "damaged-active") {
        RecoveryKind::DamagedSegment { offset, sealed: false, .. } => assert_eq!(*offset, Some(Offset::new(bad))),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.next_offset(S).unwrap().get(), last, "the records after the damage are still the stream's");
    // Reads up to the damaged record's predecessor (checked against the damaged record's
    // `prev_hash`) work; the damaged record is an error.
    assert_records(&s, 0, bad - 1);
    assert!(matches!(
        s.read_range(S, Offset::new(bad), Offset::new(bad + 1), usize::MAX),
        Err(StorageError::Corruption { .. })
    ));
    drop(s);
    assert_eq!(state(&fs), before);

    // A read-write open salvages the same way and cuts nothing.
    let s = open_rw(&fs).expect("the read-write open salvages the active segment");
    assert_eq!(s.next_offset(S).unwrap().get(), last);
    drop(s);
    // (Only zeros past the last record may have been cut.)
    let after = fs.file_bytes(&active).unwrap();
    let was = before.0.iter().find(|(p, _)| *p == active).map(|(_, b)| b.clone()).unwrap();
    assert_eq!(after[..], was[..after.len()], "no record byte was changed");
    assert!(was[after.len()..].iter().all(|&b| b == 0), "only zeros were cut");
}

#[test]
fn a_damaged_sealed_segment_without_its_index_is_reported_and_read_around() {
    let fs = written(60, true);
    let first = segments(&fs)[0].clone();
    fs.remove_file(&first.with_extension("idx")).unwrap();
    flip_payload(&fs, &first, 5);
    let before = state(&fs);

    let s = open_ro(&fs);
    match single_finding(&s, "damaged-sealed") {
        RecoveryKind::DamagedSegment { offset, sealed: true, .. } => assert_eq!(*offset, Some(Offset::new(5))),
        other => panic!("{other:?}"),
    }
    // A verified read checks its last record against the next record's `prev_hash`, so every
    // record before the damaged one's predecessor reads; the damaged one is an error.
    assert_records(&s, 0, 4);
    assert!(matches!(
        s.read_range(S, Offset::new(5), Offset::new(6), usize::MAX),
        Err(StorageError::Corruption { .. })
    ));
    let second = s.segments(S).unwrap()[1].base.get();
    assert_records(&s, second, 60);
    drop(s);
    assert_eq!(state(&fs), before);
}

#[test]
fn a_missing_index_is_reported_and_only_the_read_write_open_writes_it_back() {
    let fs = written(60, true);
    let idx = segments(&fs)[1].with_extension("idx");
    fs.remove_file(&idx).unwrap();
    let before = state(&fs);

    let s = open_ro(&fs);
    assert_eq!(kinds(s.recovery_report()), ["index-rebuilt"]);
    assert_eq!(s.recovery_report()[0].file.as_deref(), idx.file_name().unwrap().to_str(), "names the index file");
    assert_records(&s, 0, 60);
    drop(s);
    assert_eq!(state(&fs), before);
    assert!(fs.file_bytes(&idx).is_none());

    let s = open_rw(&fs).unwrap();
    assert_eq!(kinds(s.recovery_report()), ["index-rebuilt"]);
    assert!(fs.file_bytes(&idx).is_some(), "written back");
}

#[test]
fn leftovers_of_interrupted_operations_are_reported_and_left_alone() {
    let fs = written(60, true);
    let dir = stream_dir();
    let put = |name: &str, bytes: &[u8]| {
        let f = fs.open(&dir.join(name), shale_storage::OpenMode::CreateNew).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    };
    put("segment_000001.idx.tmp", b"partial");
    put(&names::segment(99), b"torn");
    let stale = Checkpoint::new(Offset::new(500), ChainHash([7; 32]), Bytes::new());
    put(&names::checkpoint(500), &serialize_checkpoint_payload(&stale));
    fs.create_dir_all(&Path::new(ROOT).join("9")).unwrap();
    let before = state(&fs);

    let s = open_ro(&fs);
    let found: BTreeMap<(u64, &str), Option<String>> = s
        .recovery_report()
        .iter()
        .zip(kinds(s.recovery_report()))
        .map(|(f, k)| ((f.stream.get(), k), f.file.clone()))
        .collect();
    let want: BTreeMap<(u64, &str), Option<String>> = [
        ((5, "temp"), Some("segment_000001.idx.tmp".to_string())),
        ((5, "torn-header"), Some(names::segment(99))),
        ((5, "stale-checkpoint"), Some(names::checkpoint(500))),
        ((9, "empty-dir"), None),
    ]
    .into();
    assert_eq!(found, want);
    assert_eq!(s.streams(), vec![S]);
    assert_records(&s, 0, 60);
    assert!(s.latest_checkpoint(S).unwrap().is_none(), "the stale checkpoint is not loaded");
    drop(s);
    assert_eq!(state(&fs), before);
    assert!(fs.is_dir(&Path::new(ROOT).join("9")));

    // The read-write open finds the same and removes them.
    let s = open_rw(&fs).unwrap();
    assert_eq!(s.recovery_report().len(), 4);
    drop(s);
    let left: Vec<PathBuf> = fs.list_files();
    assert!(left.iter().all(|p| !p.ends_with("segment_000001.idx.tmp") && !p.ends_with(names::segment(99))));
    assert!(!fs.is_dir(&Path::new(ROOT).join("9")));
}

#[test]
fn every_write_on_a_read_only_storage_is_refused() {
    let fs = written(60, true);
    let before = state(&fs);
    let s = open_ro(&fs);
    let b: &dyn StorageBackend = &s;
    let read_only = |what: &str, r: Result<(), StorageError>| match r {
        Err(StorageError::ReadOnly { .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    let records = b.read_range(S, Offset::new(1), Offset::new(3), usize::MAX).unwrap();
    let cp = Checkpoint::new(Offset::new(10), b.chain_hash_at(S, Offset::new(9)).unwrap(), Bytes::new());
    let drop_all = CompactionConfig { retain_bytes: Some(0), retain_age_ms: None, max_log_start: None };
    read_only("append_batch", b.append_batch(S, vec![event(60)], Offset::new(60), true).map(drop));
    read_only(
        "append_batch to a new stream",
        b.append_batch(StreamId::new(8), vec![event(0)], Offset::ZERO, false).map(drop),
    );
    read_only("truncate_from", b.truncate_from(S, Offset::new(30)));
    read_only("create_checkpoint", b.create_checkpoint(S).map(drop));
    read_only("create_checkpoint_at", b.create_checkpoint_at(S, Offset::new(10), Bytes::from_static(b"d")).map(drop));
    read_only("install_checkpoint", b.install_checkpoint(S, cp));
    read_only("compact", b.compact(S, &drop_all).map(drop));
    read_only("sync", b.sync(S));
    read_only("repair_range", b.repair_range(S, Offset::new(1), records).map(drop));
    read_only("delete_stream", b.delete_stream(S));
    read_only("reopen_stream", b.reopen_stream(S).map(drop));
    assert_eq!(b.next_offset(S).unwrap(), Offset::new(60));
    assert_records(&s, 0, 60);
    drop(s);
    assert_eq!(state(&fs), before);
}

/// Every file and directory below `dir` with its bytes (directories: none).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.insert(p.clone(), None);
            out.extend(tree(&p));
        } else {
            out.insert(p.clone(), Some(fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn on_a_real_disk_a_read_only_open_changes_nothing_and_takes_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open_with(dir.path(), options()).unwrap();
    for i in 0..40 {
        s.append_batch(S, vec![event(i)], Offset::new(i), true).unwrap();
    }
    s.close().unwrap();
    fs::remove_file(dir.path().join(shale_storage::format::lock::FILE_NAME)).unwrap();
    let stream_dir = dir.path().join(S.get().to_string());
    let active = (0..).map(|seq| stream_dir.join(names::segment(seq))).take_while(|p| p.exists()).last().unwrap();
    let mut bytes = fs::read(&active).unwrap();
    let end = bytes.len();
    bytes.extend_from_slice(b"a torn write");
    fs::write(&active, &bytes).unwrap();
    fs::remove_file(active.with_extension("idx")).unwrap();
    let before = tree(dir.path());

    let s = Storage::open_read_only(dir.path(), options()).unwrap();
    assert_eq!(kinds(s.recovery_report()), ["torn-tail"]);
    assert_records(&s, 0, 40);
    drop(s);
    assert_eq!(tree(dir.path()), before, "no file changed, none created (no LOCK either)");

    // It takes no lock: it opens while a read-write storage holds the directory.
    let rw = Storage::open_with(dir.path(), options()).unwrap();
    assert_eq!(fs::read(&active).unwrap().len(), end, "the read-write open cut the torn write");
    let s = Storage::open_read_only(dir.path(), options()).unwrap();
    assert!(s.recovery_report().is_empty(), "{:?}", s.recovery_report());
    assert_records(&s, 0, 40);
    drop((s, rw));

    // A read-only open of a missing directory fails and creates nothing.
    let missing = dir.path().join("missing");
    assert!(matches!(Storage::open_read_only(&missing, options()), Err(StorageError::Io { .. })));
    assert!(!missing.exists());
}
