//! `shale verify --data-dir DIR`: checks a node's storage files offline with `shale-storage`.
//!
//! The data directory is never written: each stream directory is copied to a scratch directory and
//! opened there, one stream at a time, so a damaged stream cannot stop the others from being
//! checked and the storage's recovery (which cuts torn tails and rebuilds indexes) changes only the
//! copy. What recovery changed in the copy is itself reported: a cut tail or a rebuilt index is
//! damage the node would silently repair or lose on its next start.
//!
//! Checks per stream: segment headers and layout, index files (CRC, agreement with their segment),
//! every record's framing and CRC, offsets, and the SHA-256 chain from the log start (anchored by
//! its checkpoint) to the end (`verify_chain`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Serialize;
use shale_storage::format::names;
use shale_storage::{Storage, StorageBackend, StorageError, StorageOptions, StreamId};

use crate::error::{CliError, Result};
use crate::output::{Table, human_bytes};

/// Bound on the record size the checker accepts (a hostile length field allocates at most this).
pub const MAX_RECORD_BYTES: usize = 256 << 20;

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
    /// What the stream holds, from the cluster layer's id scheme.
    pub role: String,
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
    /// True when another process held the data directory's lock while we copied it.
    pub node_running: bool,
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

/// What a stream id holds under the cluster layer's scheme (`docs`: partition group id =
/// `(topic_id << 16) | (partition + 1)`, group 0 = metadata; streams per group: log = 2g, state = 2g+1).
pub fn stream_role(stream: u64) -> String {
    let group = stream / 2;
    let part = if stream.is_multiple_of(2) { "raft log" } else { "raft state" };
    if group == 0 {
        return format!("metadata group, {part}");
    }
    let topic_id = group >> 16;
    let partition = group & 0xffff;
    if topic_id == 0 || partition == 0 {
        return format!("group {group}, {part}");
    }
    format!("topic #{topic_id} partition {}, {part}", partition - 1)
}

fn local(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.to_path_buf();
    move |source| CliError::Local { op, path, source }
}

/// Regular files of a directory with their lengths.
fn list_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut files = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(local("list directory", dir))? {
        let entry = entry.map_err(local("list directory", dir))?;
        let meta = entry.metadata().map_err(local("stat", &entry.path()))?;
        if meta.is_file() {
            files.insert(entry.file_name().to_string_lossy().into_owned(), meta.len());
        }
    }
    Ok(files)
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

/// What recovery changed in the copy, compared with the original files in `src` (`pristine`
/// holds untouched copies of the original index files).
fn recovery_findings(
    src: &Path,
    original: &BTreeMap<String, u64>,
    copy_dir: &Path,
    pristine: &Path,
    next_offset: Option<u64>,
) -> Result<Vec<Finding>> {
    let now = if copy_dir.exists() { list_files(copy_dir)? } else { BTreeMap::new() };
    let mut out = Vec::new();
    let finding = |severity, kind: &str, file: &str, position, offset, detail: String| Finding {
        severity,
        kind: kind.into(),
        file: Some(file.to_string()),
        position,
        offset,
        detail,
    };
    for (name, &len) in original {
        match now.get(name) {
            None if name.ends_with(names::TMP_SUFFIX) => out.push(finding(
                Severity::Notice,
                "leftover-temp-file",
                name,
                None,
                None,
                "temporary file of an interrupted write; removed on open".into(),
            )),
            None if names::parse_segment(name).is_some() || names::parse_index(name).is_some() => out.push(finding(
                Severity::Notice,
                "leftover-segment",
                name,
                None,
                None,
                "left by an interrupted checkpoint install (or a torn segment header); removed on open".into(),
            )),
            None if names::parse_checkpoint(name).is_some() => out.push(finding(
                Severity::Notice,
                "stale-checkpoint",
                name,
                None,
                None,
                "checkpoint outside the log (left by an interrupted truncation or compaction); removed on open".into(),
            )),
            None => {}
            Some(&new_len) if names::parse_segment(name).is_some() && new_len < len => {
                // Zeros past the records are space preallocated for fsynced appends, left by a
                // node that did not close cleanly: not damage.
                let torn = nonzero_len(&src.join(name), new_len, len)?;
                if torn > 0 {
                    out.push(finding(
                        Severity::Damage,
                        "torn-tail",
                        name,
                        Some(new_len),
                        next_offset,
                        format!(
                            "{torn} bytes after the last whole record fail their checks (a torn write, or a damaged \
                             last record); the node cuts them on open"
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for name in now.keys() {
        if let Some(seq) = names::parse_index(name) {
            let changed = match original.get(name) {
                None => true,
                Some(_) => {
                    let now = fs::read(copy_dir.join(name)).map_err(local("read", &copy_dir.join(name)))?;
                    let before = fs::read(pristine.join(name)).map_err(local("read", &pristine.join(name)))?;
                    before != now
                }
            };
            if changed && original.contains_key(&names::segment(seq)) {
                out.push(finding(
                    Severity::Damage,
                    "index-rebuilt",
                    name,
                    None,
                    None,
                    "the index file is missing, damaged or disagrees with its segment; the node rebuilds it on open"
                        .into(),
                ));
            }
        }
    }
    Ok(out)
}

/// How many bytes of `path` in `[from, to)` lie before its last non-zero byte (0 if all are zero).
fn nonzero_len(path: &Path, from: u64, to: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = fs::File::open(path).map_err(local("open", path))?;
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from).map_err(local("read", path))?;
    Ok(buf.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1))
}

/// Copies, opens and verifies one stream.
fn check_stream(data_dir: &Path, id: u64, scratch: &Path) -> Result<StreamReport> {
    let src = data_dir.join(id.to_string());
    let original = list_files(&src)?;
    let work = scratch.join(format!("stream-{id}"));
    let root = work.join("root");
    let copy_dir = root.join(id.to_string());
    let pristine = work.join("pristine");
    fs::create_dir_all(&copy_dir).map_err(local("create directory", &copy_dir))?;
    fs::create_dir_all(&pristine).map_err(local("create directory", &pristine))?;
    for name in original.keys() {
        fs::copy(src.join(name), copy_dir.join(name)).map_err(local("copy", &src.join(name)))?;
        if names::parse_index(name).is_some() {
            fs::copy(src.join(name), pristine.join(name)).map_err(local("copy", &src.join(name)))?;
        }
    }
    let mut report = StreamReport {
        stream: id,
        role: stream_role(id),
        status: "ok".into(),
        log_start: None,
        next_offset: None,
        records_verified: None,
        head: None,
        bytes: original.values().sum(),
        findings: Vec::new(),
    };
    let options = StorageOptions {
        max_record_bytes: MAX_RECORD_BYTES,
        max_batch_bytes: MAX_RECORD_BYTES,
        ..StorageOptions::default()
    };
    let stream = StreamId::new(id);
    match Storage::open_with(&root, options) {
        Err(e) => {
            report.findings.extend(recovery_findings(&src, &original, &copy_dir, &pristine, None)?);
            report.findings.push(finding_from_error(&e));
        }
        Ok(storage) => {
            if !storage.streams().contains(&stream) {
                report.findings.push(Finding {
                    severity: Severity::Notice,
                    kind: "empty-stream-dir".into(),
                    file: None,
                    position: None,
                    offset: None,
                    detail: "no segment file: a leftover of an interrupted create or delete; removed on open".into(),
                });
            } else {
                report.log_start = storage.log_start(stream).ok().map(|o| o.get());
                report.next_offset = storage.next_offset(stream).ok().map(|o| o.get());
                report.findings.extend(recovery_findings(&src, &original, &copy_dir, &pristine, report.next_offset)?);
                match storage.verify_chain(stream) {
                    Ok(v) => {
                        report.records_verified = Some(v.records);
                        report.head = Some(v.head.to_hex());
                    }
                    Err(e) => report.findings.push(finding_from_error(&e)),
                }
            }
            drop(storage);
        }
    }
    if report.findings.iter().any(|f| f.severity == Severity::Damage) {
        report.status = "damaged".into();
    }
    let _ = fs::remove_dir_all(&work);
    Ok(report)
}

/// Checks every stream of `data_dir`, copying each into `scratch_dir` (default: the temp dir).
pub fn verify_data_dir(data_dir: &Path, scratch_dir: Option<&Path>) -> Result<OfflineReport> {
    let meta = fs::metadata(data_dir).map_err(local("open data directory", data_dir))?;
    if !meta.is_dir() {
        return Err(CliError::Usage(format!("{} is not a directory: give a node's data_dir", data_dir.display())));
    }
    let node_running = lock_is_held(data_dir);
    let mut ids = Vec::new();
    for entry in fs::read_dir(data_dir).map_err(local("list directory", data_dir))? {
        let entry = entry.map_err(local("list directory", data_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = names::parse_stream_dir(&name)
            && entry.path().is_dir()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(CliError::CheckFailed(format!(
            "{} holds no stream directory: is it a Shale node's data_dir?",
            data_dir.display()
        )));
    }
    let scratch = match scratch_dir {
        Some(dir) => tempfile::Builder::new().prefix("shale-verify-").tempdir_in(dir),
        None => tempfile::Builder::new().prefix("shale-verify-").tempdir(),
    }
    .map_err(local("create scratch directory in", scratch_dir.unwrap_or(&std::env::temp_dir())))?;
    let mut streams = Vec::with_capacity(ids.len());
    for id in ids {
        streams.push(check_stream(data_dir, id, scratch.path())?);
    }
    let damaged_streams = streams.iter().filter(|s| s.status != "ok").count();
    Ok(OfflineReport { data_dir: data_dir.display().to_string(), node_running, streams, damaged_streams })
}

/// The human report.
pub fn report_text(r: &OfflineReport) -> String {
    let mut out = format!("Data dir: {}\n", r.data_dir);
    if r.node_running {
        out.push_str(
            "WARNING: another process holds the storage lock (is the node running?); files may have changed while \
             they were copied. Stop the node for a reliable check.\n",
        );
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
    use shale_storage::format::{record, segment};
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
    fn stream_roles_follow_the_cluster_id_scheme() {
        assert_eq!(stream_role(0), "metadata group, raft log");
        assert_eq!(stream_role(1), "metadata group, raft state");
        // topic 2, partition 0 -> group (2 << 16) | 1 = 131073 -> log stream 262146.
        assert_eq!(stream_role(262_146), "topic #2 partition 0, raft log");
        assert_eq!(stream_role(262_147), "topic #2 partition 0, raft state");
        assert_eq!(stream_role(6), "group 3, raft log");
    }

    #[test]
    fn a_clean_data_dir_verifies_and_is_left_untouched() {
        let dir = data_dir(50);
        let before: Vec<_> = walk(dir.path());
        let scratch = tempfile::tempdir().unwrap();
        let report = verify_data_dir(dir.path(), Some(scratch.path())).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert_eq!(report.streams.len(), 2);
        for s in &report.streams {
            assert_eq!(s.records_verified, Some(50));
            assert_eq!((s.log_start, s.next_offset), (Some(0), Some(50)));
            assert!(s.findings.is_empty(), "{:?}", s.findings);
        }
        assert!(!report.node_running);
        assert_eq!(walk(dir.path()), before, "the data dir must not change");
        assert_eq!(fs::read_dir(scratch.path()).unwrap().count(), 0, "the scratch copy is removed");
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
        let report = verify_data_dir(dir.path(), None).unwrap();
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
        let report = verify_data_dir(dir.path(), None).unwrap();
        let s = &report.streams[0];
        assert_eq!(s.status, "damaged", "{}", report_text(&report));
        let f = s.findings.iter().find(|f| f.kind == "torn-tail").unwrap();
        assert_eq!(f.offset, Some(9));
        assert!(f.position.unwrap() < len);
        assert_eq!(fs::metadata(&path).unwrap().len(), len, "the original keeps its bytes");
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
        assert!(len >= shale_storage::format::segment::PREALLOCATION_BYTES, "the copy holds the zeros");
        let report = verify_data_dir(dir.path(), None).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert_eq!(report.streams[0].records_verified, Some(10));
        assert!(report.streams[0].findings.is_empty(), "{:?}", report.streams[0].findings);
        assert_eq!(fs::metadata(&segment).unwrap().len(), len, "the original keeps its bytes");

        // A torn record in the zeros is still reported.
        let (path, pos) = payload_position(dir.path(), 0, 9);
        flip(&path, pos);
        let report = verify_data_dir(dir.path(), None).unwrap();
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
        let report = verify_data_dir(dir.path(), None).unwrap();
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
    fn a_directory_without_streams_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = verify_data_dir(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("no stream directory"), "{err}");
        assert_eq!(err.exit_code(), 1);
        let err = verify_data_dir(&dir.path().join("missing"), None).unwrap_err();
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_held_lock_is_reported_as_a_running_node() {
        let dir = data_dir(3);
        let open = Storage::open(dir.path()).unwrap();
        let report = verify_data_dir(dir.path(), None).unwrap();
        assert!(report.node_running);
        assert!(report_text(&report).contains("is the node running?"));
        drop(open);
        assert!(!verify_data_dir(dir.path(), None).unwrap().node_running);
    }

    #[test]
    fn a_stream_dir_without_segments_is_a_notice() {
        let dir = data_dir(3);
        fs::create_dir(dir.path().join("77")).unwrap();
        let report = verify_data_dir(dir.path(), None).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        let s = report.streams.iter().find(|s| s.stream == 77).unwrap();
        assert_eq!(s.findings[0].kind, "empty-stream-dir");
        assert!(dir.path().join("77").is_dir(), "the original is left alone");
    }

    #[test]
    fn leftover_temp_files_are_notices_not_damage() {
        let dir = data_dir(5);
        fs::write(dir.path().join("0").join("segment_000009.idx.tmp"), b"partial").unwrap();
        let report = verify_data_dir(dir.path(), None).unwrap();
        assert!(report.ok(), "{}", report_text(&report));
        assert!(
            report.streams[0].findings.iter().any(|f| f.kind == "leftover-temp-file" && f.severity == Severity::Notice)
        );
    }
}
