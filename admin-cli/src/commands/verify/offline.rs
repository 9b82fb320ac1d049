//! `shale verify --data-dir DIR`: checks a node's storage files offline with `shale-storage`.
//!
//! The data directory is opened read-only (`Storage::open_read_only`): nothing in it is created,
//! cut, renamed, removed or written, and one damaged stream does not keep the others from being
//! checked. What the storage's recovery would change on the node's next start is reported from
//! the storage's own account of it (`Storage::recovery_report`): a torn tail the node would cut
//! or an index it would rebuild is damage; leftovers of interrupted operations are notices.
//!
//! Checks per stream: segment headers and layout, index files (CRC, agreement with their segment),
//! every record's framing and CRC, offsets, and the SHA-256 chain from the log start (anchored by
//! its checkpoint) to the end (`verify_chain`). Each stream is named by what it holds (the metadata
//! group, or a topic and partition, from the node's own metadata: see [`super::names`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Serialize;
use shale_storage::{RecoveryFinding, RecoveryKind, Storage, StorageBackend, StorageError, StorageOptions, StreamId};

use super::names::{StreamNames, StreamRole};
use crate::error::{CliError, Result};
use crate::output::{Table, human_bytes};

/// Bound on the record size the checker accepts (a hostile length field allocates at most this):
/// the node's own storage record limit, so a record is judged as the node would read it.
pub const MAX_RECORD_BYTES: usize = shale_storage::limits::STORAGE_RECORD_BYTES;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data is damaged or would be lost or rewritten on the next open.
    Damage,
    /// A leftover of an interrupted operation that recovery removes; no data is affected.
    Notice,
}

/// One thing found wrong (or worth knowing) in a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Damage or notice.
    pub severity: Severity,
    /// A short machine-readable kind: `corruption`, `torn-tail`, `index-rebuilt`, ...
    pub kind: String,
    /// The file within the stream directory.
    pub file: Option<String>,
    /// Byte position within that file.
    pub position: Option<u64>,
    /// The first affected record offset.
    pub offset: Option<u64>,
    /// What exactly.
    pub detail: String,
}

/// The verdict on one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    /// Stream id (its directory name).
    pub stream: u64,
    /// What the stream holds, in words: `topic orders partition 3, raft log`.
    pub role: String,
    /// What the stream holds: its Raft group, and the topic and partition of a partition group.
    pub holds: StreamRole,
    /// `ok` or `damaged`.
    pub status: String,
    /// First offset held (when the stream could be opened).
    pub log_start: Option<u64>,
    /// One past the last record (when the stream could be opened).
    pub next_offset: Option<u64>,
    /// Records whose CRC and chain link were verified.
    pub records_verified: Option<u64>,
    /// Chain hash of the last record (hex).
    pub head: Option<String>,
    /// Bytes of the stream's files.
    pub bytes: u64,
    /// What was found.
    pub findings: Vec<Finding>,
}

/// The whole offline report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OfflineReport {
    /// The directory checked.
    pub data_dir: String,
    /// True when another process held the data directory's lock while we read it.
    pub node_running: bool,
    /// Why topic names could not be read from the node's metadata (streams are then named by
    /// topic id), if they could not.
    pub names_problem: Option<String>,
    /// Per stream, in id order.
    pub streams: Vec<StreamReport>,
    /// Streams with at least one damage finding.
    pub damaged_streams: usize,
}

impl OfflineReport {
    /// True when nothing is damaged.
    pub fn ok(&self) -> bool {
        self.damaged_streams == 0
    }
}

fn local(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.to_path_buf();
    move |source| CliError::Local { op, path, source }
}

/// Total length of the regular files of a directory.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).map_err(local("list directory", dir))? {
        let entry = entry.map_err(local("list directory", dir))?;
        let meta = entry.metadata().map_err(local("stat", &entry.path()))?;
        if meta.is_file() {
            bytes += meta.len();
        }
    }
    Ok(bytes)
}

/// True when another process holds the storage lock of `data_dir` (a running node).
fn lock_is_held(data_dir: &Path) -> bool {
    let path = data_dir.join(shale_storage::format::lock::FILE_NAME);
    let Ok(file) = fs::File::open(&path) else { return false };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(_)) => false,
    }
}

/// A finding for a storage error.
pub fn finding_from_error(e: &StorageError) -> Finding {
    let file_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let (kind, file, position, offset) = match e {
        StorageError::Corruption { file, position, offset, .. } => {
            ("corruption", Some(file.clone()), Some(*position), offset.map(|o| o.get()))
        }
        StorageError::BadMagic { path, .. } => ("bad-magic", file_of(path), Some(0), None),
        StorageError::UnsupportedVersion { path, .. } => ("unsupported-version", file_of(path), None, None),
        StorageError::Decompression { offset, .. } => ("decompression", None, None, Some(offset.get())),
        StorageError::UnknownCodec { offset, .. } => ("unknown-codec", None, None, Some(offset.get())),
        StorageError::Io { path, .. } => ("io", file_of(path), None, None),
        _ => ("error", None, None, None),
    };
    Finding { severity: Severity::Damage, kind: kind.into(), file, position, offset, detail: e.to_string() }
}

/// A finding for what the storage's recovery found: what the node would repair on its next open,
/// or damage it would refuse to open with.
fn finding_from_recovery(f: &RecoveryFinding) -> Finding {
    let (severity, kind, position, offset, detail) = match &f.kind {
        RecoveryKind::Refused(e) => return finding_from_error(e),
        RecoveryKind::LeftoverTempFile => (
            Severity::Notice,
            "leftover-temp-file",
            None,
            None,
            "temporary file of an interrupted write; removed on open".to_string(),
        ),
        RecoveryKind::TornSegmentHeader { len } => (
            Severity::Notice,
            "leftover-segment",
            None,
            None,
            format!(
                "a last segment of {len} bytes, shorter than its header (its creation was cut short); removed on open"
            ),
        ),
        RecoveryKind::InterruptedInstall => (
            Severity::Notice,
            "leftover-segment",
            None,
            None,
            "left by an interrupted checkpoint install; removed on open (with its index file)".to_string(),
        ),
        RecoveryKind::EmptyStreamDir => (
            Severity::Notice,
            "empty-stream-dir",
            None,
            None,
            "no segment file: a leftover of an interrupted create or delete; removed on open".to_string(),
        ),
        RecoveryKind::StaleCheckpoint => (
            Severity::Notice,
            "stale-checkpoint",
            None,
            None,
            "checkpoint outside the log (left by an interrupted truncation or compaction); removed on open".to_string(),
        ),
        RecoveryKind::IndexRebuilt { reason } => (
            Severity::Damage,
            "index-rebuilt",
            None,
            None,
            format!(
                "the index file is missing, damaged or disagrees with its segment ({reason}); the node rebuilds it on open"
            ),
        ),
        RecoveryKind::DamagedSegment { position, offset, reason, .. } => (
            Severity::Damage,
            "corruption",
            Some(*position),
            offset.map(|o| o.get()),
            format!("{reason}; the node opens the segment with these records unreadable until they are repaired"),
        ),
        RecoveryKind::TornTail { position, offset, bytes, reason } => {
            let why = reason.as_ref().map_or_else(String::new, |r| format!(" ({r})"));
            (
                Severity::Damage,
                "torn-tail",
                Some(*position),
                Some(offset.get()),
                format!(
                    "{bytes} bytes after the last whole record fail their checks{why} (a torn write, or a damaged last \
                     record); the node cuts them on open"
                ),
            )
        }
        other => (Severity::Damage, "recovery", None, None, format!("{other:?}")),
    };
    Finding { severity, kind: kind.into(), file: f.file.clone(), position, offset, detail }
}

/// Verifies one stream of the read-only `storage`, with what opening it found.
fn check_stream(
    storage: &Storage,
    names: &StreamNames,
    id: StreamId,
    found: &[&RecoveryFinding],
) -> Result<StreamReport> {
    let holds = names.role(id);
    let mut report = StreamReport {
        stream: id.get(),
        role: holds.describe(),
        holds,
        status: "ok".into(),
        log_start: None,
        next_offset: None,
        records_verified: None,
        head: None,
        bytes: dir_bytes(&storage.path().join(id.get().to_string()))?,
        findings: found.iter().map(|f| finding_from_recovery(f)).collect(),
    };
    if storage.streams().contains(&id) {
        report.log_start = storage.log_start(id).ok().map(|o| o.get());
        report.next_offset = storage.next_offset(id).ok().map(|o| o.get());
        match storage.verify_chain(id) {
            Ok(v) => {
                report.records_verified = Some(v.records);
                report.head = Some(v.head.to_hex());
            }
            Err(e) => {
                let f = finding_from_error(&e);
                // Damage the open already found (in a sealed segment) is reported once.
                if !report.findings.iter().any(|g| g.kind == f.kind && g.file == f.file && g.offset == f.offset) {
                    report.findings.push(f);
                }
            }
        }
    }
    if report.findings.iter().any(|f| f.severity == Severity::Damage) {
        report.status = "damaged".into();
    }
    Ok(report)
}

/// Checks every stream of `data_dir`, opened read-only.
pub fn verify_data_dir(data_dir: &Path) -> Result<OfflineReport> {
    let meta = fs::metadata(data_dir).map_err(local("open data directory", data_dir))?;
    if !meta.is_dir() {
        return Err(CliError::Usage(format!("{} is not a directory: give a node's data_dir", data_dir.display())));
    }
    let node_running = lock_is_held(data_dir);
    let options = StorageOptions {
        max_record_bytes: MAX_RECORD_BYTES,
        max_batch_bytes: MAX_RECORD_BYTES,
        ..StorageOptions::default()
    };
    let storage = Storage::open_read_only(data_dir, options).map_err(|e| match e {
        StorageError::Io { op, path, source } => CliError::Local { op, path, source },
        e => CliError::CheckFailed(format!("cannot open {}: {e}", data_dir.display())),
    })?;
    let mut found: BTreeMap<StreamId, Vec<&RecoveryFinding>> = BTreeMap::new();
    for f in storage.recovery_report() {
        found.entry(f.stream).or_default().push(f);
    }
    let ids: BTreeSet<StreamId> = storage.streams().into_iter().chain(found.keys().copied()).collect();
    if ids.is_empty() {
        return Err(CliError::CheckFailed(format!(
            "{} holds no stream directory: is it a Shale node's data_dir?",
            data_dir.display()
        )));
    }
    let names = StreamNames::read(&storage);
    let mut streams = Vec::with_capacity(ids.len());
    for id in ids {
        streams.push(check_stream(&storage, &names, id, found.get(&id).map_or(&[], Vec::as_slice))?);
    }
    let damaged_streams = streams.iter().filter(|s| s.status != "ok").count();
    Ok(OfflineReport {
        data_dir: data_dir.display().to_string(),
        node_running,
        names_problem: names.problem().map(str::to_string),
        streams,
        damaged_streams,
    })
}

/// The human report.
pub fn report_text(r: &OfflineReport) -> String {
    let mut out = format!("Data dir: {}\n", r.data_dir);
    if r.node_running {
        out.push_str(
            "WARNING: another process holds the storage lock (is the node running?); files may have changed while \
             they were read. Stop the node for a reliable check.\n",
        );
    }
    if let Some(why) = &r.names_problem {
        out.push_str(&format!("NOTE: topic names unavailable ({why}); streams are named by topic id\n"));
    }
    out.push('\n');
    let mut t = Table::new(["stream", "role", "status", "offsets", "verified", "size", "head"]);
    for s in &r.streams {
        let offsets = match (s.log_start, s.next_offset) {
            (Some(a), Some(b)) => format!("[{a}, {b})"),
            _ => "-".into(),
        };
        t.row([
            s.stream.to_string(),
            s.role.clone(),
            s.status.clone(),
            offsets,
            s.records_verified.map_or_else(|| "-".into(), |n| n.to_string()),
            human_bytes(s.bytes),
            s.head.as_deref().map_or_else(|| "-".into(), |h| h[..12.min(h.len())].to_string()),
        ]);
    }
    out.push_str(&t.render());
    let findings: Vec<(&StreamReport, &Finding)> =
        r.streams.iter().flat_map(|s| s.findings.iter().map(move |f| (s, f))).collect();
    if !findings.is_empty() {
        out.push_str("\nFINDINGS\n");
        for (s, f) in findings {
            let mut place = format!("stream {} ({})", s.stream, s.role);
            if let Some(file) = &f.file {
                place.push_str(&format!(", {file}"));
            }
            if let Some(p) = f.position {
                place.push_str(&format!(" at byte {p}"));
            }
            if let Some(o) = f.offset {
                place.push_str(&format!(", offset {o}"));
            }
            let severity = match f.severity {
                Severity::Damage => "DAMAGE",
                Severity::Notice => "notice",
            };
            out.push_str(&format!("{severity} [{}] {place}: {}\n", f.kind, f.detail));
        }
    }
    out.push_str(&if r.ok() {
        format!("\nOK: {} stream(s) verified, no damage found\n", r.streams.len())
    } else {
        format!("\nDAMAGED: {} of {} stream(s)\n", r.damaged_streams, r.streams.len())
    });
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_storage::format::{names, record, segment};
    use std::path::PathBuf;

    use shale_storage::Offset;

    use super::*;

    /// A data dir with two streams of `n` records each, closed cleanly.
    fn data_dir(n: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        for stream in [0u64, 131_074] {
            let events: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("event-{stream}-{i}"))).collect();
            s.append_batch(StreamId::new(stream), events, Offset::ZERO, true).unwrap();
        }
        s.close().unwrap();
        dir
    }

    /// Byte position of record `offset`'s first payload byte in stream `stream`'s first segment.
    fn payload_position(dir: &Path, stream: u64, offset: u64) -> (PathBuf, u64) {
        let path = dir.join(stream.to_string()).join(names::segment(0));
        let bytes = fs::read(&path).unwrap();
        let mut pos = segment::HEADER_LEN;
        loop {
            let at = |field: usize, len: usize| &bytes[pos + field..pos + field + len];
            let this = u64::from_le_bytes(at(record::OFFSET_AT, 8).try_into().unwrap());
            let stored = u32::from_le_bytes(at(record::STORED_LEN_AT, 4).try_into().unwrap()) as usize;
            if this == offset {
                return (path, (pos + record::PAYLOAD_AT) as u64);
            }
            pos += record::encoded_len(stored);
        }
    }

    fn flip(path: &Path, position: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[position as usize] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_clean_data_dir_verifies_and_is_left_untouched() {
        let dir = data_dir(50);
        let before: Vec<_> = walk(dir.path());
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert_eq!(report.streams.len(), 2);
        for s in &report.streams {
            assert_eq!(s.records_verified, Some(50));
            assert_eq!((s.log_start, s.next_offset), (Some(0), Some(50)));
            assert!(s.findings.is_empty(), "{:?}", s.findings);
        }
        assert!(!report.node_running);
        assert_eq!(walk(dir.path()), before, "the data dir must not change");
        assert!(report_text(&report).contains("OK: 2 stream(s) verified"));
    }

    fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_flipped_payload_byte_is_named_by_stream_file_position_and_offset() {
        let dir = data_dir(50);
        let (path, pos) = payload_position(dir.path(), 131_074, 20);
        flip(&path, pos);
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(!report.ok());
        assert_eq!(report.damaged_streams, 1);
        let s = report.streams.iter().find(|s| s.stream == 131_074).unwrap();
        assert_eq!(s.status, "damaged");
        let f = s.findings.iter().find(|f| f.severity == Severity::Damage).unwrap();
        assert_eq!(f.offset, Some(20), "{f:?}");
        assert_eq!(f.file.as_deref(), Some("segment_000000.log"));
        let record_start = pos - record::PAYLOAD_AT as u64;
        assert_eq!(f.position, Some(record_start), "the position is the damaged record's first byte: {f:?}");
        let ok = report.streams.iter().find(|s| s.stream == 0).unwrap();
        assert_eq!(ok.status, "ok", "the other stream is still checked");
        let text = report_text(&report);
        assert!(text.contains("DAMAGE [corruption] stream 131074"), "{text}");
        assert!(text.contains("offset 20"), "{text}");
    }

    #[test]
    fn a_damaged_last_record_is_reported_as_a_torn_tail() {
        let dir = data_dir(10);
        let (path, pos) = payload_position(dir.path(), 0, 9);
        let len = fs::metadata(&path).unwrap().len();
        // Drop the index so the active segment is scanned on open, as after a crash.
        fs::remove_file(dir.path().join("0").join(names::index(0))).unwrap();
        flip(&path, pos);
        let before = walk(dir.path());
        let report = verify_data_dir(dir.path()).unwrap();
        let s = &report.streams[0];
        assert_eq!(s.status, "damaged", "{}", report_text(&report));
        let f = s.findings.iter().find(|f| f.kind == "torn-tail").unwrap();
        assert_eq!(f.offset, Some(9));
        assert!(f.position.unwrap() < len);
        assert_eq!(s.records_verified, Some(9), "the records before the torn tail verify");
        assert_eq!(walk(dir.path()), before, "no file changes: the torn tail is reported, not cut");
    }

    #[test]
    fn preallocated_zeros_left_by_a_crash_are_not_damage() {
        let live = tempfile::tempdir().unwrap();
        let s = Storage::open(live.path()).unwrap();
        // The first fsync marks the stream as synced; the second batch preallocates.
        for from in [0u64, 5] {
            let events: Vec<Bytes> = (from..from + 5).map(|i| Bytes::from(format!("event-{i}"))).collect();
            s.append_batch(StreamId::new(0), events, Offset::new(from), true).unwrap();
        }
        // A copy taken while the storage is open is what a crash (kill -9) leaves.
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("0")).unwrap();
        for e in fs::read_dir(live.path().join("0")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.path().join("0").join(e.file_name())).unwrap();
        }
        drop(s);
        let segment = dir.path().join("0").join(names::segment(0));
        let len = fs::metadata(&segment).unwrap().len();
        assert!(len >= shale_storage::format::segment::PREALLOCATION_MIN_BYTES, "the copy holds the zeros");
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert_eq!(report.streams[0].records_verified, Some(10));
        assert!(report.streams[0].findings.is_empty(), "{:?}", report.streams[0].findings);
        assert_eq!(fs::metadata(&segment).unwrap().len(), len, "the original keeps its bytes");

        // A torn record in the zeros is still reported.
        let (path, pos) = payload_position(dir.path(), 0, 9);
        flip(&path, pos);
        let report = verify_data_dir(dir.path()).unwrap();
        let f = report.streams[0].findings.iter().find(|f| f.kind == "torn-tail").unwrap();
        assert_eq!(f.offset, Some(9), "{f:?}");
    }

    #[test]
    fn a_damaged_index_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let options = StorageOptions { max_segment_bytes: 4096, ..StorageOptions::default() };
        let s = Storage::open_with(dir.path(), options).unwrap();
        let events: Vec<Bytes> = (0..100).map(|i| Bytes::from(vec![i as u8; 200])).collect();
        s.append_batch(StreamId::new(4), events, Offset::ZERO, true).unwrap();
        s.close().unwrap();
        let idx = dir.path().join("4").join(names::index(0));
        flip(&idx, 20);
        let report = verify_data_dir(dir.path()).unwrap();
        let s = &report.streams[0];
        assert!(
            s.findings.iter().any(|f| f.kind == "index-rebuilt" && f.file.as_deref() == Some("segment_000000.idx")),
            "{:?}",
            s.findings
        );
        assert_eq!(s.records_verified, Some(100), "the records themselves are fine");
        assert!(!report.ok());
    }

    #[test]
    fn a_stream_that_cannot_be_opened_does_not_stop_the_others() {
        let dir = data_dir(20);
        let path = dir.path().join("0").join(names::segment(0));
        flip(&path, 0);
        let before = walk(dir.path());
        let report = verify_data_dir(dir.path()).unwrap();
        let bad = report.streams.iter().find(|s| s.stream == 0).unwrap();
        assert_eq!(bad.findings[0].kind, "bad-magic", "{:?}", bad.findings);
        assert_eq!((bad.status.as_str(), bad.next_offset), ("damaged", None));
        let good = report.streams.iter().find(|s| s.stream == 131_074).unwrap();
        assert_eq!((good.status.as_str(), good.records_verified), ("ok", Some(20)));
        assert_eq!(walk(dir.path()), before);
    }

    #[test]
    fn a_directory_without_streams_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_data_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no stream directory"), "{err}");
        assert_eq!(err.exit_code(), 1);
        let err = verify_data_dir(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_held_lock_is_reported_as_a_running_node() {
        let dir = data_dir(3);
        let open = Storage::open(dir.path()).unwrap();
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(report.node_running);
        assert!(report_text(&report).contains("is the node running?"));
        drop(open);
        assert!(!verify_data_dir(dir.path()).unwrap().node_running);
    }

    #[test]
    fn a_stream_dir_without_segments_is_a_notice() {
        let dir = data_dir(3);
        fs::create_dir(dir.path().join("77")).unwrap();
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        let s = report.streams.iter().find(|s| s.stream == 77).unwrap();
        assert_eq!(s.findings[0].kind, "empty-stream-dir");
        assert!(dir.path().join("77").is_dir(), "the original is left alone");
    }

    #[test]
    fn leftover_temp_files_are_notices_not_damage() {
        let dir = data_dir(5);
        fs::write(dir.path().join("0").join("segment_000009.idx.tmp"), b"partial").unwrap();
        let report = verify_data_dir(dir.path()).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert!(
            report.streams[0].findings.iter().any(|f| f.kind == "leftover-temp-file" && f.severity == Severity::Notice)
        );
    }
}
