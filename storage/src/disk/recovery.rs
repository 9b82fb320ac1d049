//! Opening a data directory and its stream directories: the recovery policy, one step per
//! function ([`Recovery`]), in the order they run on each stream directory:
//!
//! 1. [`Recovery::list`]: the directory's entries, by kind (segments, index files, checkpoints,
//!    temporary files).
//! 2. [`Recovery::remove_temp_files`]: leftover `*.tmp` files (interrupted atomic writes) are
//!    deleted.
//! 3. [`Recovery::load_segments`]: every segment is opened and its header checked; a last segment
//!    shorter than its header (created, header never durable) is deleted; the active (last)
//!    segment's data ends at its last non-zero byte.
//! 4. [`Recovery::drop_interrupted_install`]: segments older than the newest restart segment (an
//!    interrupted `install_checkpoint`) are deleted.
//! 5. [`Recovery::remove_empty_dir`]: a directory without segment files is the leftover of an
//!    interrupted creation or deletion and is removed.
//! 6. [`Recovery::recover_segments`], per segment:
//!    - [`check_lines_up`]: segments must line up (each base is the previous end, each base hash
//!      the previous last hash);
//!    - [`Recovery::find_records`]: sealed segments are trusted through their index files
//!      (CRC-checked, and matched against the segment header and length); a missing or damaged
//!      index is rebuilt by a strict scan of the segment, and a sealed segment that scan finds
//!      damaged is salvaged (it opens with the damaged records unreadable). The active segment is
//!      scanned from where its index ends (or from its header);
//!    - [`Recovery::salvage_active`]: a defect in the active segment followed by a whole record
//!      for the next offset is damage, not a torn write: the segment is salvaged like a sealed
//!      one (the damaged records unreadable until the scrubber repairs them from a replica);
//!    - [`Recovery::end_active_segment`]: the active segment's records end at or before its last
//!      non-zero byte: the zeros after it (space preallocated for fsynced appends, or data that
//!      never reached the disk) are cut off, and so is a torn last record (partial, bad CRC, bad
//!      end marker, a length reaching past the last non-zero byte, or bytes that are no record
//!      followed by no whole record), with a warning;
//!    - [`Recovery::write_back_index`]: a sealed segment's rebuilt index is written back, so the
//!      next open trusts it.
//! 7. [`Recovery::load_checkpoints`]: checkpoints are loaded; those outside `[log_start, next]`
//!    (left by an interrupted truncation, compaction or install) are deleted.
//!
//! A read-write open ([`Storage::open_with_fs`]) repairs as above. A read-only open
//! ([`Storage::open_read_only`]) runs the same steps but changes nothing: files are opened
//! read-only, nothing is deleted, cut or written, and every repair the read-write open would make
//! is only reported as a [`RecoveryFinding`]; so is an error the read-write open fails with
//! ([`RecoveryKind::Refused`]), which leaves that one stream unopened (the others open). Both
//! modes record their findings in [`Storage::recovery_report`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::read::read_bytes;
use super::stream::{Segment, Stream, StreamCore};
use super::{Storage, io_err};
use crate::chain::chain_hash;
use crate::checkpoint::{Checkpoint, CheckpointIndex, deserialize_checkpoint_payload};
use crate::codec::CodecId;
use crate::error::{CorruptionReason, Result, StorageError};
use crate::format::{self, names, segment as seg_fmt};
use crate::index::IndexFile;
use crate::io::{FsFile, OpenMode};
use crate::record::{RecordView, SegmentHeader, decode_record};
use crate::types::{ChainHash, Offset, StreamId};

/// Bytes read per I/O while scanning a segment on open.
const SCAN_CHUNK_BYTES: u64 = 8 << 20;
/// Bytes read per I/O while looking for the end of the active segment's zero tail.
const ZERO_SCAN_BYTES: u64 = 1 << 20;

/// Whether a [`Storage`] may change its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Recovery repairs what it finds; writes are taken.
    ReadWrite,
    /// Nothing is changed on disk; recovery only reports; writes are refused.
    ReadOnly,
}

/// One thing opening a stream found that a cleanly closed, undamaged stream does not have.
#[derive(Debug)]
#[non_exhaustive]
pub struct RecoveryFinding {
    /// The stream.
    pub stream: StreamId,
    /// The file within the stream directory it concerns, when one does.
    pub file: Option<String>,
    /// What was found, and what a read-write open does about it.
    pub kind: RecoveryKind,
}

/// What recovery found in a stream directory, and what a read-write open does about it (a
/// read-only open does none of it). See `docs/format.md`, "Recovery policy".
#[derive(Debug)]
#[non_exhaustive]
pub enum RecoveryKind {
    /// A `*.tmp` file (an interrupted atomic write): deleted.
    LeftoverTempFile,
    /// A last segment shorter than its header (created, its header never durable; it holds no
    /// record): deleted with its index file.
    TornSegmentHeader {
        /// The file's length.
        len: u64,
    },
    /// A segment older than the newest restart segment (left by an interrupted checkpoint
    /// install): deleted with its index file.
    InterruptedInstall,
    /// A stream directory without segments (an interrupted creation or deletion): removed.
    EmptyStreamDir,
    /// A sealed segment's index file (the finding's file; missing, damaged or disagreeing with its
    /// segment): rebuilt by a scan of the segment and written back.
    IndexRebuilt {
        /// Why the index was not trusted.
        reason: String,
    },
    /// A segment holds damaged records (a defect followed by a whole record of a later offset):
    /// the stream opens with them unreadable (every read of them is a `Corruption` error) until
    /// `repair_range` replaces them from another replica.
    DamagedSegment {
        /// Byte position of the first defect.
        position: u64,
        /// The record expected there.
        offset: Option<Offset>,
        /// What is wrong.
        reason: CorruptionReason,
        /// A sealed segment, or the active one.
        sealed: bool,
    },
    /// Bytes after the active segment's last whole record that fail their checks and are
    /// followed by no whole record (a torn write, or a damaged last record): cut off.
    TornTail {
        /// Where they start (the end of the last whole record).
        position: u64,
        /// The offset a record there would have had.
        offset: Offset,
        /// How many bytes are cut, up to the last non-zero byte (zeros after it are not counted).
        bytes: u64,
        /// Why the first of them is no whole record, when a scan says.
        reason: Option<CorruptionReason>,
    },
    /// A checkpoint outside `[log_start, next]` (left by an interrupted truncation, compaction or
    /// install): deleted.
    StaleCheckpoint,
    /// Read-only opens only: the error a read-write open fails with; the stream is not open.
    Refused(StorageError),
}

struct Loaded {
    seq: u64,
    file: Arc<dyn FsFile>,
    header: SegmentHeader,
    file_len: u64,
    /// Where its records can end: the file length, or for the active segment, the end of its
    /// last non-zero byte (the zeros after it were preallocated, or never written).
    data_len: u64,
}

/// What a scan of a segment's records found.
struct Scan {
    positions: Vec<u64>,
    /// End of the last whole record.
    end: u64,
    /// Why the scan stopped before the end, if it did.
    defect: Option<Defect>,
}

/// Where and why a scan stopped.
struct Defect {
    position: u64,
    /// The offset the record there should have.
    offset: Offset,
    reason: CorruptionReason,
    /// A torn tail (the last record, followed by no whole record), not damage.
    torn: bool,
}

/// A stream directory's entries, by kind.
struct Listing {
    temp_files: Vec<String>,
    segments: BTreeSet<u64>,
    indexes: BTreeSet<u64>,
    /// Offset (from the file name) -> file name.
    checkpoints: BTreeMap<u64, String>,
}

/// How a segment's records were located.
enum Found {
    /// Through a trusted index covering all of them; the hash of its last record.
    Indexed(ChainHash),
    /// By a scan (of the whole segment, or of the active segment past its index), which stopped
    /// at `defect` if it did. `rebuilt`: a sealed segment's index was rebuilt and is to be
    /// written back.
    Scanned { defect: Option<Defect>, rebuilt: bool },
    /// A damaged sealed segment, salvaged; the hash it must end on (the next segment's base hash).
    Salvaged(ChainHash),
}

/// The segments of a stream as recovered.
struct Recovered {
    segments: Vec<Segment>,
    /// Sparse chain-table entries from the index files.
    anchors: BTreeMap<Offset, ChainHash>,
    /// The hash of the last record.
    head: ChainHash,
}

/// The streams of a data directory, as opened.
pub(crate) type OpenStreams = BTreeMap<StreamId, Arc<Stream>>;

/// Recovery of one stream directory: the steps of the policy (see the module documentation).
struct Recovery<'a> {
    storage: &'a Storage,
    id: StreamId,
    dir: &'a Path,
    /// Read-write: repair what is found. Read-only: only report it.
    repair: bool,
    findings: &'a mut Vec<RecoveryFinding>,
    /// A directory entry was removed: the directory is fsynced before the stream opens.
    dirty: bool,
}

impl Storage {
    /// Opens every stream directory of the data directory. Read-write, the first error fails the
    /// open; read-only, it is reported ([`RecoveryKind::Refused`]) and the other streams open.
    pub(crate) fn open_streams(&self) -> Result<(OpenStreams, Vec<RecoveryFinding>)> {
        let mut entries = self.fs.read_dir(&self.root).map_err(io_err("list directory", &self.root))?;
        entries.sort();
        let mut streams = BTreeMap::new();
        let mut findings = Vec::new();
        for name in entries {
            let Some(id) = names::parse_stream_dir(&name) else { continue };
            let dir = self.root.join(&name);
            if !self.fs.is_dir(&dir) {
                continue;
            }
            let id = StreamId::new(id);
            match self.recover_stream(id, dir, &mut findings) {
                Ok(Some(stream)) => {
                    streams.insert(id, Arc::new(stream));
                }
                Ok(None) => {}
                Err(e) if self.access == Access::ReadOnly => {
                    findings.push(RecoveryFinding { stream: id, file: None, kind: RecoveryKind::Refused(e) });
                }
                Err(e) => return Err(e),
            }
        }
        Ok((streams, findings))
    }

    /// Opens one stream directory; `None` if it holds no stream (a leftover, removed).
    pub(crate) fn open_stream(&self, id: StreamId, dir: PathBuf) -> Result<Option<Stream>> {
        self.recover_stream(id, dir, &mut Vec::new())
    }

    /// Whether the storage was opened read-only ([`Storage::open_read_only`]).
    pub fn is_read_only(&self) -> bool {
        self.access == Access::ReadOnly
    }

    /// What opening the storage found in its stream directories, stream by stream in id order:
    /// what a read-write open repaired, or what a read-only open would have repaired or refused.
    /// Empty after opening a cleanly closed, undamaged data directory.
    pub fn recovery_report(&self) -> &[RecoveryFinding] {
        &self.recovery
    }

    /// `Err(ReadOnly)` on a read-only storage.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(StorageError::ReadOnly { path: self.root.clone() }),
        }
    }

    /// Runs the recovery steps on one stream directory, adding what they find to `findings`.
    fn recover_stream(
        &self,
        id: StreamId,
        dir: PathBuf,
        findings: &mut Vec<RecoveryFinding>,
    ) -> Result<Option<Stream>> {
        let repair = self.access == Access::ReadWrite;
        let mut r = Recovery { storage: self, id, dir: &dir, repair, findings, dirty: false };
        let listing = r.list()?;
        r.remove_temp_files(&listing.temp_files)?;
        let mut loaded = r.load_segments(&listing.segments)?;
        r.drop_interrupted_install(&mut loaded)?;
        if loaded.is_empty() {
            r.remove_empty_dir()?;
            return Ok(None);
        }
        if r.dirty {
            self.fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
        }
        let Recovered { segments, mut anchors, head } = r.recover_segments(loaded, &listing.indexes)?;
        let log_start = segments[0].base;
        let next = segments.last().expect("at least one segment").end();
        let checkpoints = r.load_checkpoints(listing.checkpoints, log_start, next)?;
        anchors.retain(|k: &Offset, _| *k > log_start && *k <= next);
        let core = StreamCore { segments, head, checkpoints, pending_checkpoints: BTreeSet::new() };
        let mut stream = Stream::new(id, dir, core, anchors, self.cached_tails.clone());
        stream.read_only = !repair;
        Ok(Some(stream))
    }
}

impl Recovery<'_> {
    fn found(&mut self, file: Option<String>, kind: RecoveryKind) {
        self.findings.push(RecoveryFinding { stream: self.id, file, kind });
    }

    /// Step 1: the directory's entries, by kind (others are ignored).
    fn list(&self) -> Result<Listing> {
        let dir = self.dir;
        let mut entries = self.storage.fs.read_dir(dir).map_err(io_err("list directory", dir))?;
        entries.sort();
        let mut l = Listing {
            temp_files: Vec::new(),
            segments: BTreeSet::new(),
            indexes: BTreeSet::new(),
            checkpoints: BTreeMap::new(),
        };
        for name in entries {
            if name.ends_with(names::TMP_SUFFIX) {
                l.temp_files.push(name);
            } else if let Some(seq) = names::parse_segment(&name) {
                l.segments.insert(seq);
            } else if let Some(seq) = names::parse_index(&name) {
                l.indexes.insert(seq);
            } else if let Some(offset) = names::parse_checkpoint(&name) {
                l.checkpoints.insert(offset, name);
            }
        }
        Ok(l)
    }

    /// Step 2: temporary files of interrupted atomic writes are deleted.
    fn remove_temp_files(&mut self, names: &[String]) -> Result<()> {
        for name in names {
            self.found(Some(name.clone()), RecoveryKind::LeftoverTempFile);
            if self.repair {
                tracing::warn!(stream = %self.id, file = %name, "removing a leftover temporary file");
                self.storage.remove_if_exists(&self.dir.join(name))?;
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Step 3: opens every segment and checks its header. A last segment too short to hold its
    /// header is deleted (it holds no record); the last one's data ends at its last non-zero byte.
    fn load_segments(&mut self, seqs: &BTreeSet<u64>) -> Result<Vec<Loaded>> {
        let (id, fs) = (self.id, &self.storage.fs);
        let mode = if self.repair { OpenMode::Existing } else { OpenMode::ReadOnly };
        let last_seq = seqs.last().copied();
        let mut loaded = Vec::new();
        for &seq in seqs {
            let name = names::segment(seq);
            let path = self.dir.join(&name);
            let file = fs.open(&path, mode).map_err(io_err("open", &path))?;
            let file_len = file.file_len().map_err(io_err("stat", &path))?;
            if file_len < seg_fmt::HEADER_LEN as u64 && Some(seq) == last_seq {
                // Created but its header never reached the disk: it holds no record.
                if self.repair {
                    tracing::warn!(stream = %id, file = %name, file_len, "removing a segment whose header is torn");
                    self.storage.remove_if_exists(&path)?;
                    self.storage.remove_if_exists(&self.dir.join(names::index(seq)))?;
                    self.dirty = true;
                }
                self.found(Some(name), RecoveryKind::TornSegmentHeader { len: file_len });
                continue;
            }
            let mut hb = vec![0u8; seg_fmt::HEADER_LEN.min(file_len as usize)];
            file.read_exact_at(&mut hb, 0).map_err(io_err("read", &path))?;
            let header = SegmentHeader::decode(&hb, &path, id, &name)?;
            let data_len = if Some(seq) == last_seq {
                data_len(file.as_ref(), file_len).map_err(io_err("read", &path))?
            } else {
                file_len
            };
            loaded.push(Loaded { seq, file, header, file_len, data_len });
        }
        Ok(loaded)
    }

    /// Step 4: segments older than the newest restart segment were left by an interrupted
    /// checkpoint install; they are deleted.
    fn drop_interrupted_install(&mut self, loaded: &mut Vec<Loaded>) -> Result<()> {
        let Some(pos) = loaded.iter().rposition(|l| l.header.flags & seg_fmt::FLAG_RESTART != 0) else {
            return Ok(());
        };
        if pos == 0 {
            return Ok(());
        }
        if self.repair {
            tracing::warn!(stream = %self.id, count = pos, "removing segments left by an interrupted checkpoint install");
        }
        for l in loaded.drain(..pos) {
            if self.repair {
                self.storage.remove_if_exists(&self.dir.join(names::segment(l.seq)))?;
                self.storage.remove_if_exists(&self.dir.join(names::index(l.seq)))?;
            }
            self.found(Some(names::segment(l.seq)), RecoveryKind::InterruptedInstall);
        }
        self.dirty |= self.repair;
        Ok(())
    }

    /// Step 5: a directory without segments holds no stream (an interrupted creation or
    /// deletion); it is removed.
    fn remove_empty_dir(&mut self) -> Result<()> {
        self.found(None, RecoveryKind::EmptyStreamDir);
        if !self.repair {
            return Ok(());
        }
        let (fs, dir, root) = (&self.storage.fs, self.dir, &self.storage.root);
        tracing::warn!(stream = %self.id, dir = %dir.display(), "removing a stream directory without segments");
        for name in fs.read_dir(dir).map_err(io_err("list directory", dir))? {
            self.storage.remove_if_exists(&dir.join(name))?;
        }
        fs.remove_dir(dir).map_err(io_err("remove directory", dir))?;
        fs.sync_dir(root).map_err(io_err("fsync directory", root))?;
        Ok(())
    }

    /// Step 6: each segment's records, its last hash and (active segment) its true end.
    fn recover_segments(&mut self, loaded: Vec<Loaded>, indexes: &BTreeSet<u64>) -> Result<Recovered> {
        let count = loaded.len();
        // What each segment must end on: the next segment's base offset and base hash.
        let next_of: Vec<Option<(Offset, ChainHash)>> =
            (0..count).map(|i| loaded.get(i + 1).map(|n| (n.header.base, n.header.base_prev_hash))).collect();
        let mut segments: Vec<Segment> = Vec::with_capacity(count);
        let mut anchors = BTreeMap::new();
        let mut prev_last_hash: Option<ChainHash> = None;
        for (i, l) in loaded.into_iter().enumerate() {
            let is_active = i + 1 == count;
            let mut segment = Segment {
                seq: l.seq,
                base: l.header.base,
                base_prev_hash: l.header.base_prev_hash,
                file: l.file.clone(),
                positions: Vec::new(),
                len: seg_fmt::HEADER_LEN as u64,
                allocated: seg_fmt::HEADER_LEN as u64,
                last_append_ms: l.header.created_ms,
                idx_bytes: 0,
                indexed_len: 0,
                index_pending: false,
            };
            check_lines_up(self.id, segments.last(), prev_last_hash, &segment)?;
            let index = indexes
                .contains(&l.seq)
                .then(|| self.storage.load_index(self.id, &self.dir.join(names::index(l.seq)), &l, is_active));
            let found = self.find_records(&l, &mut segment, index, is_active, next_of[i], &mut anchors)?;
            let (last_hash, defect, rebuilt) = match found {
                Found::Indexed(h) | Found::Salvaged(h) => (Some(h), None, false),
                Found::Scanned { defect, rebuilt } => (None, defect, rebuilt),
            };
            let defect = match defect {
                Some(d) if is_active && !d.torn => {
                    self.salvage_active(&l, &mut segment, d)?;
                    None
                }
                defect => defect,
            };
            if is_active {
                self.end_active_segment(&l, &segment, defect)?;
            }
            segment.allocated = segment.len;
            let last = match last_hash {
                Some(h) => h,
                None => {
                    let (hash, ms) = self.storage.last_record(self.id, &segment.name(), &segment)?;
                    if let Some(ms) = ms {
                        segment.last_append_ms = ms;
                    }
                    hash
                }
            };
            if rebuilt {
                self.write_back_index(&mut segment, last)?;
            }
            prev_last_hash = Some(last);
            segments.push(segment);
        }
        let head = prev_last_hash.expect("at least one segment");
        Ok(Recovered { segments, anchors, head })
    }

    /// Locates a segment's records (filling `segment.positions` and `len`): through its index if
    /// it is trusted (the active segment's tail past it scanned), else by a scan from its header.
    /// A sealed segment the scan finds damaged is salvaged.
    fn find_records(
        &mut self,
        l: &Loaded,
        segment: &mut Segment,
        index: Option<std::result::Result<(IndexFile, u64), String>>,
        is_active: bool,
        next: Option<(Offset, ChainHash)>,
        anchors: &mut BTreeMap<Offset, ChainHash>,
    ) -> Result<Found> {
        let (id, name) = (self.id, segment.name());
        match index {
            Some(Ok((f, bytes))) if !is_active || f.segment_len == l.data_len => {
                segment.positions = f.positions;
                segment.len = f.segment_len;
                segment.last_append_ms = f.last_append_ms;
                segment.idx_bytes = bytes;
                segment.indexed_len = f.segment_len;
                anchors.extend(f.anchors);
                Ok(Found::Indexed(f.last_hash))
            }
            Some(Ok((f, bytes))) => {
                // The active segment grew past its index: trust the prefix, scan the tail.
                let first = f.base.plus(f.positions.len() as u64);
                let scan = self.storage.scan(id, &name, l.file.as_ref(), l.data_len, f.segment_len, first, true)?;
                segment.positions = f.positions;
                segment.positions.extend(scan.positions);
                segment.len = scan.end;
                segment.idx_bytes = bytes;
                segment.indexed_len = f.segment_len;
                anchors.extend(f.anchors);
                Ok(Found::Scanned { defect: scan.defect, rebuilt: false })
            }
            untrusted => {
                let why = match untrusted {
                    _ if is_active => None,
                    Some(Err(why)) => {
                        tracing::warn!(stream = %id, file = %name, "index file damaged; rebuilding it from the segment");
                        Some(why)
                    }
                    _ => {
                        tracing::warn!(stream = %id, file = %name, "index file missing; rebuilding it from the segment");
                        Some("missing".to_string())
                    }
                };
                let header = seg_fmt::HEADER_LEN as u64;
                let scan =
                    self.storage.scan(id, &name, l.file.as_ref(), l.data_len, header, segment.base, is_active)?;
                if !is_active && let Some(d) = scan.defect {
                    // Damage inside a sealed segment does not stop the storage from opening: the
                    // segment opens with the damaged records unreadable (every read of them is a
                    // `Corruption` error, and a scrub reports them) until `repair_range` replaces
                    // them from another replica.
                    let (end, end_hash) = next.expect("a sealed segment has a successor");
                    tracing::error!(
                        stream = %id, file = %name, position = d.position, offset = d.offset.get(), reason = %d.reason,
                        "sealed segment is damaged; it opens with the damaged records unreadable until repaired"
                    );
                    let header = seg_fmt::HEADER_LEN as u64;
                    let salvaged = self.storage.salvage(
                        id,
                        &name,
                        l.file.as_ref(),
                        header,
                        l.file_len,
                        segment.base,
                        Some(end),
                    )?;
                    segment.positions = salvaged.positions;
                    segment.len = salvaged.end;
                    let (position, offset, reason) = (d.position, Some(d.offset), d.reason);
                    self.found(Some(name), RecoveryKind::DamagedSegment { position, offset, reason, sealed: true });
                    return Ok(Found::Salvaged(end_hash));
                }
                if let Some(reason) = why.clone() {
                    self.found(Some(names::index(l.seq)), RecoveryKind::IndexRebuilt { reason });
                }
                segment.positions = scan.positions;
                segment.len = scan.end;
                Ok(Found::Scanned { defect: scan.defect, rebuilt: why.is_some() })
            }
        }
    }

    /// Damage in the active segment (a defect at `d` followed by a whole record of a later
    /// offset): the records past it are located as in a damaged sealed segment, the damaged ones
    /// stay unreadable until the scrubber repairs them from another replica, and the segment ends
    /// after its last record that decodes in sequence (a torn tail after it is cut as usual).
    fn salvage_active(&mut self, l: &Loaded, segment: &mut Segment, d: Defect) -> Result<()> {
        let (id, name) = (self.id, segment.name());
        debug_assert_eq!(segment.len, d.position, "the scan stopped at the defect");
        debug_assert_eq!(segment.end(), d.offset, "the scan located every record before the defect");
        tracing::error!(
            stream = %id, file = %name, position = d.position, offset = d.offset.get(), reason = %d.reason,
            "active segment is damaged; it opens with the damaged records unreadable until repaired"
        );
        let tail = self.storage.salvage(id, &name, l.file.as_ref(), d.position, l.data_len, d.offset, None)?;
        segment.positions.extend(tail.positions);
        segment.len = tail.end;
        let kind = RecoveryKind::DamagedSegment {
            position: d.position,
            offset: Some(d.offset),
            reason: d.reason,
            sealed: false,
        };
        self.found(Some(name), kind);
        Ok(())
    }

    /// The active segment ends at its last whole record: a torn tail after it (and the zeros past
    /// its last non-zero byte) are cut off the file and the cut made durable. (Damage followed by
    /// whole records was salvaged before: see [`Recovery::salvage_active`].)
    fn end_active_segment(&mut self, l: &Loaded, segment: &Segment, defect: Option<Defect>) -> Result<()> {
        let name = segment.name();
        debug_assert!(defect.as_ref().is_none_or(|d| d.torn), "only a torn tail is left to cut");
        match defect {
            defect if segment.len < l.data_len => {
                if self.repair {
                    tracing::warn!(
                        stream = %self.id, file = %name, from = l.data_len, to = segment.len,
                        "cutting a torn record off the end of the active segment"
                    );
                }
                let kind = RecoveryKind::TornTail {
                    position: segment.len,
                    offset: segment.end(),
                    bytes: l.data_len - segment.len,
                    reason: defect.map(|d| d.reason),
                };
                self.found(Some(name.clone()), kind);
            }
            _ => {}
        }
        if self.repair && segment.len < l.file_len {
            tracing::debug!(stream = %self.id, file = %name, from = l.file_len, to = segment.len, "trimming the active segment");
            let path = self.dir.join(&name);
            l.file.set_len(segment.len).map_err(io_err("truncate", &path))?;
            l.file.sync_data().map_err(io_err("fsync", &path))?;
        }
        Ok(())
    }

    /// A sealed segment's rebuilt index is written back so the next open trusts it.
    fn write_back_index(&mut self, segment: &mut Segment, last_hash: ChainHash) -> Result<()> {
        if !self.repair {
            return Ok(());
        }
        let f = IndexFile {
            base: segment.base,
            segment_len: segment.len,
            last_append_ms: segment.last_append_ms,
            base_prev_hash: segment.base_prev_hash,
            last_hash,
            positions: segment.positions.clone(),
            anchors: Vec::new(),
        };
        let bytes = f.encode(self.id);
        self.storage.write_atomic(self.dir, &names::index(segment.seq), &bytes)?;
        segment.idx_bytes = bytes.len() as u64;
        segment.indexed_len = segment.len;
        Ok(())
    }

    /// Step 7: loads the checkpoints; a damaged one is a `Corruption` error, one outside
    /// `[log_start, next]` is deleted.
    fn load_checkpoints(
        &mut self,
        files: BTreeMap<u64, String>,
        log_start: Offset,
        next: Offset,
    ) -> Result<CheckpointIndex> {
        let mut checkpoints = CheckpointIndex::new();
        let mut removed = false;
        for (offset, name) in files {
            let path = self.dir.join(&name);
            let cp = self.read_checkpoint(&path, offset, &name)?;
            if cp.offset < log_start || cp.offset > next {
                if self.repair {
                    tracing::warn!(stream = %self.id, file = %name, "removing a checkpoint outside the log");
                    self.storage.remove_if_exists(&path)?;
                    removed = true;
                }
                self.found(Some(name), RecoveryKind::StaleCheckpoint);
                continue;
            }
            checkpoints.insert(cp);
        }
        if removed {
            self.storage.fs.sync_dir(self.dir).map_err(io_err("fsync directory", self.dir))?;
        }
        Ok(checkpoints)
    }

    /// Reads and checks one checkpoint file named for `offset`.
    fn read_checkpoint(&self, path: &Path, offset: u64, name: &str) -> Result<Checkpoint> {
        let bytes = self.storage.fs.read(path).map_err(io_err("read", path))?;
        let cp = deserialize_checkpoint_payload(&bytes, self.id, name)?;
        let bad = |reason: String| StorageError::Corruption {
            stream: self.id,
            file: name.to_string(),
            position: format::checkpoint::OFFSET_AT as u64,
            offset: Some(cp.offset),
            reason: CorruptionReason::Malformed(reason),
        };
        if cp.offset.get() != offset {
            return Err(bad(format!("file name says offset {offset}, content says {}", cp.offset)));
        }
        if cp.offset > format::MAX_OFFSET {
            return Err(bad(format!("offset past the largest allowed, {}", format::MAX_OFFSET)));
        }
        if cp.offset == Offset::ZERO && cp.chain_hash != ChainHash::ZERO {
            return Err(bad("a checkpoint at offset 0 must carry the zero hash".into()));
        }
        Ok(cp)
    }
}

/// Segments must line up: `segment` starts where the one before it ends, on its last hash.
fn check_lines_up(
    id: StreamId,
    prev: Option<&Segment>,
    prev_last_hash: Option<ChainHash>,
    segment: &Segment,
) -> Result<()> {
    if let Some(prev) = prev
        && prev.end() != segment.base
    {
        return Err(StorageError::Corruption {
            stream: id,
            file: segment.name(),
            position: seg_fmt::BASE_OFFSET_AT as u64,
            offset: Some(segment.base),
            reason: CorruptionReason::SegmentLayout(format!(
                "{} ends at offset {}, but {} starts at {}",
                prev.name(),
                prev.end(),
                segment.name(),
                segment.base
            )),
        });
    }
    if let Some(prev_hash) = prev_last_hash
        && prev_hash != segment.base_prev_hash
    {
        return Err(StorageError::Corruption {
            stream: id,
            file: segment.name(),
            position: seg_fmt::BASE_PREV_HASH_AT as u64,
            offset: Some(segment.base),
            reason: CorruptionReason::ChainMismatch { expected: prev_hash, found: segment.base_prev_hash },
        });
    }
    Ok(())
}

impl Storage {
    /// Loads and validates an index file against its segment; why not (with a warning) if it
    /// cannot be trusted.
    fn load_index(
        &self,
        id: StreamId,
        path: &Path,
        l: &Loaded,
        is_active: bool,
    ) -> std::result::Result<(IndexFile, u64), String> {
        let bytes = match self.fs.read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(stream = %id, file = %path.display(), error = %e, "cannot read index file");
                return Err(format!("cannot be read: {e}"));
            }
        };
        let why = match IndexFile::decode(&bytes, id) {
            Ok(f) if f.base != l.header.base => "base offset differs from the segment's".to_string(),
            Ok(f) if f.base_prev_hash != l.header.base_prev_hash => "base hash differs from the segment's".to_string(),
            Ok(f) if f.segment_len > l.data_len => "covers more bytes than the segment holds".to_string(),
            Ok(f) if !is_active && f.segment_len != l.file_len => "does not cover the whole sealed segment".to_string(),
            Ok(f) => return Ok((f, bytes.len() as u64)),
            Err(why) => why,
        };
        tracing::warn!(stream = %id, file = %path.display(), reason = %why, "index file not trusted; rebuilding");
        Err(why)
    }

    /// Scans records from byte `from` to `file_len`, the first being `first_offset`, up to the
    /// first defect. With `torn_ok`, a defect in the last record (one reaching the end of the
    /// file, or bytes that are no record followed by no whole record) is a torn tail; any other
    /// defect is damage.
    #[allow(
        clippy::too_many_arguments,
        reason = "the file, where its scan starts and the torn-tail policy are each the caller's"
    )]
    fn scan(
        &self,
        id: StreamId,
        name: &str,
        file: &dyn FsFile,
        file_len: u64,
        from: u64,
        first_offset: Offset,
        torn_ok: bool,
    ) -> Result<Scan> {
        let mut positions = Vec::new();
        let mut pos = from;
        let mut offset = first_offset;
        let mut want = SCAN_CHUNK_BYTES;
        'chunks: while pos < file_len {
            let to = (pos + want).min(file_len);
            let buf = read_bytes(file, pos, to).map_err(|e| e(&self.root.join(id.get().to_string()).join(name)))?;
            let mut at = 0usize;
            while at < buf.len() {
                let abs = pos + at as u64;
                match decode_record(&buf, at) {
                    Ok(v) => {
                        if v.offset != offset {
                            let reason = CorruptionReason::OffsetSequence { expected: offset, found: v.offset };
                            let defect = Defect { position: abs, offset, reason, torn: false };
                            return Ok(Scan { positions, end: abs, defect: Some(defect) });
                        }
                        positions.push(abs);
                        offset = offset.plus(1);
                        at += v.len;
                    }
                    Err(d) => {
                        let claimed_end = match d.reason {
                            CorruptionReason::Truncated { needed, .. } => Some(abs.saturating_add(needed)),
                            _ => d.claimed_end.map(|e| pos + e as u64),
                        };
                        if let CorruptionReason::Truncated { needed, .. } = d.reason
                            && abs + needed <= file_len
                        {
                            // The record continues past this chunk: read again from its start.
                            pos = abs;
                            want = needed.max(SCAN_CHUNK_BYTES);
                            continue 'chunks;
                        }
                        // A tail of zeros is what some file systems show for a write whose
                        // size update reached the disk but whose data did not.
                        let zero_tail = to == file_len && buf[at..].iter().all(|&b| b == 0);
                        // Bytes that claim to run to the end of the file, or bytes that are no
                        // record at all (no start marker: a torn write whose later pages reached
                        // the disk before its first, or stray bytes in the preallocated zeros),
                        // with no whole later record after them, are a torn tail too.
                        let no_record_here = buf[at] != crate::format::record::START_MARKER;
                        let torn = torn_ok
                            && (zero_tail
                                || ((claimed_end.is_some_and(|e| e >= file_len) || no_record_here)
                                    && !self.record_follows(file, abs, file_len, offset)));
                        if torn {
                            tracing::warn!(stream = %id, file = %name, position = abs, reason = %d.reason, "torn last record");
                        }
                        let defect = Defect { position: abs, offset, reason: d.reason, torn };
                        return Ok(Scan { positions, end: abs, defect: Some(defect) });
                    }
                }
            }
            pos += at as u64;
            want = SCAN_CHUNK_BYTES;
        }
        Ok(Scan { positions, end: pos, defect: None })
    }

    /// Locates what it can of a damaged segment, from byte `from` (where record `base` should
    /// start) to `file_len`: records that decode with the expected offset keep their place; past
    /// a defect, the next record that decodes with a later offset (found by its start marker and
    /// CRC) resumes the sequence. Records that cannot be located get an empty span at the defect,
    /// so every read of them fails verification (and a scrub reports them) until repaired.
    ///
    /// A sealed segment holds records `[base, end)` (`end` is `Some`: the next segment's base), and
    /// the scan ends at the file's end. The active segment (`end` is `None`) ends after its last
    /// record that decodes in sequence: bytes after it that resume nothing are a torn tail.
    #[allow(
        clippy::too_many_arguments,
        reason = "the file, where the salvage starts and the segment's bounds are each the caller's"
    )]
    fn salvage(
        &self,
        id: StreamId,
        name: &str,
        file: &dyn FsFile,
        from: u64,
        file_len: u64,
        base: Offset,
        end: Option<Offset>,
    ) -> Result<Scan> {
        let buf = read_bytes(file, from, file_len).map_err(|e| e(&self.root.join(id.get().to_string()).join(name)))?;
        let mut positions = Vec::with_capacity(end.map_or(0, |e| (e.get() - base.get()) as usize));
        let mut at = 0usize;
        let mut offset = base;
        while end.map_or(at < buf.len(), |e| offset < e) {
            match decode_record(&buf, at) {
                Ok(v) if v.offset == offset => {
                    positions.push(from + at as u64);
                    at += v.len;
                    offset = offset.plus(1);
                }
                _ => {
                    let resume = (at + 1..buf.len()).find_map(|q| {
                        if buf[q] != crate::format::record::START_MARKER {
                            return None;
                        }
                        decode_record(&buf, q)
                            .ok()
                            .filter(|v| v.offset > offset && end.is_none_or(|e| v.offset < e))
                            .map(|v| (q, v.offset))
                    });
                    let (q, o) = match (resume, end) {
                        (Some(r), _) => r,
                        (None, Some(e)) => (buf.len(), e),
                        // The active segment: nothing whole follows, the rest is a torn tail.
                        (None, None) => break,
                    };
                    while offset < o {
                        positions.push(from + at as u64);
                        offset = offset.plus(1);
                    }
                    at = q;
                }
            }
        }
        debug_assert!(positions.windows(2).all(|w| w[0] <= w[1]));
        let scanned_to = if end.is_some() { file_len } else { from + at as u64 };
        Ok(Scan { positions, end: scanned_to, defect: None })
    }

    /// Whether a whole record for `offset + 1` starts anywhere after byte `at`: if so, the
    /// defect at `at` is not a torn tail but damage in the middle of the log.
    fn record_follows(&self, file: &dyn FsFile, at: u64, file_len: u64, offset: Offset) -> bool {
        let Ok(buf) = read_bytes(file, at, file_len) else { return false };
        let want = offset.plus(1);
        (1..buf.len()).any(|q| {
            buf[q] == crate::format::record::START_MARKER && decode_record(&buf, q).is_ok_and(|v| v.offset == want)
        })
    }

    /// The chain hash and append time of a segment's last record (its base hash if empty).
    fn last_record(&self, id: StreamId, name: &str, s: &Segment) -> Result<(ChainHash, Option<u64>)> {
        let Some(&p) = s.positions.last() else {
            return Ok((s.base_prev_hash, None));
        };
        let path = self.root.join(id.get().to_string()).join(name);
        let buf = read_bytes(s.file.as_ref(), p, s.len).map_err(|e| e(&path))?;
        let offset = Offset::new(s.end().get() - 1);
        let corrupt = |reason| StorageError::Corruption {
            stream: id,
            file: name.to_string(),
            position: p,
            offset: Some(offset),
            reason,
        };
        let v: RecordView = decode_record(&buf, 0).map_err(|d| corrupt(d.reason))?;
        if v.offset != offset {
            return Err(corrupt(CorruptionReason::OffsetSequence { expected: offset, found: v.offset }));
        }
        if offset == Offset::ZERO && v.prev_hash != ChainHash::ZERO {
            return Err(corrupt(CorruptionReason::ChainMismatch { expected: ChainHash::ZERO, found: v.prev_hash }));
        }
        let stored = buf.slice(v.payload_at..v.payload_at + v.stored_len);
        let payload: Bytes = if v.codec == CodecId::NONE {
            stored
        } else {
            let codec = self.registry.get(v.codec).ok_or(StorageError::UnknownCodec {
                stream: id,
                offset,
                codec_id: v.codec.0,
            })?;
            if v.uncompressed_len > self.options.max_record_bytes.max(v.stored_len) {
                return Err(StorageError::Decompression {
                    stream: id,
                    offset,
                    codec: codec.name(),
                    reason: format!("declared length {} is over max_record_bytes", v.uncompressed_len),
                });
            }
            Bytes::from(codec.decompress(&stored, v.uncompressed_len).map_err(|e| StorageError::Decompression {
                stream: id,
                offset,
                codec: codec.name(),
                reason: e.to_string(),
            })?)
        };
        Ok((chain_hash(offset, &v.prev_hash, &payload), Some(v.append_time_ms)))
    }
}

/// The end of the last non-zero byte of a segment file of `file_len` bytes (at least the header's
/// end). Every record ends in a non-zero end marker, so no record ends after it.
fn data_len(file: &dyn FsFile, file_len: u64) -> std::io::Result<u64> {
    let floor = (seg_fmt::HEADER_LEN as u64).min(file_len);
    let mut end = file_len;
    let mut buf = Vec::new();
    while end > floor {
        let from = end.saturating_sub(ZERO_SCAN_BYTES).max(floor);
        buf.resize((end - from) as usize, 0);
        file.read_exact_at(&mut buf, from)?;
        if let Some(i) = buf.iter().rposition(|&b| b != 0) {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(floor)
}
