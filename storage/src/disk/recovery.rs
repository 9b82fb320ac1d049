//! Opening a stream directory: the recovery policy.
//!
//! - Leftover `*.tmp` files (interrupted atomic writes) are deleted.
//! - A directory without segment files is the leftover of an interrupted creation or deletion
//!   and is removed.
//! - Segments older than the newest restart segment (an interrupted `install_checkpoint`) are
//!   deleted.
//! - Sealed segments are trusted through their index files (CRC-checked, and matched against the
//!   segment header and length); a missing or damaged index is rebuilt by a strict scan of the
//!   segment, where any defect is a `Corruption` error.
//! - The active (last) segment's records end at or before its last non-zero byte: the zeros after
//!   it (space preallocated for fsynced appends, or data that never reached the disk) are cut off.
//!   It is scanned from where its index ends (or from its header): a torn last record (partial,
//!   bad CRC, bad end marker, or a length reaching past the last non-zero byte) is cut off with a
//!   warning; a defect followed by a whole record for the next offset is a `Corruption` error.
//! - Segments must line up (each base is the previous end, each base hash the previous last hash).
//! - Checkpoints are loaded; those outside `[log_start, next]` (left by an interrupted truncation,
//!   compaction or install) are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::read::read_bytes;
use super::stream::{Segment, Stream, StreamCore};
use super::{Storage, io_err};
use crate::chain::chain_hash;
use crate::checkpoint::{CheckpointIndex, deserialize_checkpoint_payload};
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
}

impl Storage {
    /// Opens one stream directory; `None` if it holds no stream (a leftover, removed).
    pub(crate) fn open_stream(&self, id: StreamId, dir: PathBuf) -> Result<Option<Stream>> {
        let fs = &self.fs;
        let mut entries = fs.read_dir(&dir).map_err(io_err("list directory", &dir))?;
        entries.sort();
        let mut segs = BTreeSet::new();
        let mut idxs = BTreeSet::new();
        let mut cps = BTreeMap::new();
        let mut dirty = false;
        for name in entries {
            if name.ends_with(names::TMP_SUFFIX) {
                tracing::warn!(stream = %id, file = %name, "removing a leftover temporary file");
                self.remove_if_exists(&dir.join(&name))?;
                dirty = true;
            } else if let Some(seq) = names::parse_segment(&name) {
                segs.insert(seq);
            } else if let Some(seq) = names::parse_index(&name) {
                idxs.insert(seq);
            } else if let Some(offset) = names::parse_checkpoint(&name) {
                cps.insert(offset, name);
            }
        }

        let mut loaded = Vec::new();
        let last_seq = segs.last().copied();
        for &seq in &segs {
            let name = names::segment(seq);
            let path = dir.join(&name);
            let file = fs.open(&path, OpenMode::Existing).map_err(io_err("open", &path))?;
            let file_len = file.file_len().map_err(io_err("stat", &path))?;
            if file_len < seg_fmt::HEADER_LEN as u64 && Some(seq) == last_seq {
                // Created but its header never reached the disk: it holds no record.
                tracing::warn!(stream = %id, file = %name, file_len, "removing a segment whose header is torn");
                self.remove_if_exists(&path)?;
                self.remove_if_exists(&dir.join(names::index(seq)))?;
                dirty = true;
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
        if let Some(pos) = loaded.iter().rposition(|l| l.header.flags & seg_fmt::FLAG_RESTART != 0)
            && pos > 0
        {
            tracing::warn!(stream = %id, count = pos, "removing segments left by an interrupted checkpoint install");
            for l in loaded.drain(..pos) {
                self.remove_if_exists(&dir.join(names::segment(l.seq)))?;
                self.remove_if_exists(&dir.join(names::index(l.seq)))?;
            }
            dirty = true;
        }
        if loaded.is_empty() {
            tracing::warn!(stream = %id, dir = %dir.display(), "removing a stream directory without segments");
            for name in fs.read_dir(&dir).map_err(io_err("list directory", &dir))? {
                self.remove_if_exists(&dir.join(name))?;
            }
            fs.remove_dir(&dir).map_err(io_err("remove directory", &dir))?;
            fs.sync_dir(&self.root).map_err(io_err("fsync directory", &self.root))?;
            return Ok(None);
        }
        if dirty {
            fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
        }

        let count = loaded.len();
        // What each segment must end on: the next segment's base offset and base hash.
        let next_of: Vec<Option<(Offset, ChainHash)>> =
            (0..count).map(|i| loaded.get(i + 1).map(|n| (n.header.base, n.header.base_prev_hash))).collect();
        let mut segments: Vec<Segment> = Vec::with_capacity(count);
        let mut anchors = BTreeMap::new();
        let mut prev_last_hash: Option<ChainHash> = None;
        for (i, l) in loaded.into_iter().enumerate() {
            let is_active = i + 1 == count;
            let name = names::segment(l.seq);
            let idx_path = dir.join(names::index(l.seq));
            let index = if idxs.contains(&l.seq) { self.load_index(id, &idx_path, &l, is_active) } else { None };
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
            if let Some(prev) = segments.last()
                && prev.end() != segment.base
            {
                return Err(StorageError::Corruption {
                    stream: id,
                    file: name,
                    position: seg_fmt::BASE_OFFSET_AT as u64,
                    offset: Some(segment.base),
                    reason: CorruptionReason::SegmentLayout(format!(
                        "{} ends at offset {}, but {} starts at {}",
                        prev.name(),
                        prev.end(),
                        names::segment(l.seq),
                        segment.base
                    )),
                });
            }
            if let Some(prev_hash) = prev_last_hash
                && prev_hash != segment.base_prev_hash
            {
                return Err(StorageError::Corruption {
                    stream: id,
                    file: name,
                    position: seg_fmt::BASE_PREV_HASH_AT as u64,
                    offset: Some(segment.base),
                    reason: CorruptionReason::ChainMismatch { expected: prev_hash, found: segment.base_prev_hash },
                });
            }
            let mut index_last_hash = None;
            // Set (to the hash the segment must end on) when a sealed segment opened damaged.
            let mut salvaged: Option<ChainHash> = None;
            match index {
                Some((f, bytes)) if !is_active || f.segment_len == l.data_len => {
                    segment.positions = f.positions;
                    segment.len = f.segment_len;
                    segment.last_append_ms = f.last_append_ms;
                    segment.idx_bytes = bytes;
                    segment.indexed_len = f.segment_len;
                    index_last_hash = Some(f.last_hash);
                    anchors.extend(f.anchors);
                }
                Some((f, bytes)) => {
                    // The active segment grew past its index: trust the prefix, scan the tail.
                    let scan = self.scan(
                        id,
                        &name,
                        l.file.as_ref(),
                        l.data_len,
                        f.segment_len,
                        f.base.plus(f.positions.len() as u64),
                        true,
                    )?;
                    segment.positions = f.positions;
                    segment.positions.extend(scan.positions);
                    segment.len = scan.end;
                    segment.idx_bytes = bytes;
                    segment.indexed_len = f.segment_len;
                    anchors.extend(f.anchors);
                }
                None => {
                    if !is_active && idxs.contains(&l.seq) {
                        tracing::warn!(stream = %id, file = %name, "index file damaged; rebuilding it from the segment");
                    } else if !is_active {
                        tracing::warn!(stream = %id, file = %name, "index file missing; rebuilding it from the segment");
                    }
                    let scan = match self.scan(
                        id,
                        &name,
                        l.file.as_ref(),
                        l.data_len,
                        seg_fmt::HEADER_LEN as u64,
                        segment.base,
                        is_active,
                    ) {
                        // Damage inside a sealed segment does not stop the storage from opening:
                        // the segment opens with the damaged records unreadable (every read of
                        // them is a `Corruption` error, and a scrub reports them) until
                        // `repair_range` replaces them from another replica.
                        Err(StorageError::Corruption { position, offset, reason, .. }) if !is_active => {
                            let (end, end_hash) = next_of[i].expect("a sealed segment has a successor");
                            tracing::error!(
                                stream = %id, file = %name, position, offset = ?offset.map(|o| o.get()), reason = %reason,
                                "sealed segment is damaged; it opens with the damaged records unreadable until repaired"
                            );
                            salvaged = Some(end_hash);
                            self.salvage(id, &name, l.file.as_ref(), l.file_len, segment.base, end)?
                        }
                        r => r?,
                    };
                    segment.positions = scan.positions;
                    segment.len = scan.end;
                }
            }
            if is_active && segment.len < l.data_len {
                tracing::warn!(
                    stream = %id, file = %name, from = l.data_len, to = segment.len,
                    "cutting a torn record off the end of the active segment"
                );
            }
            if is_active && segment.len < l.file_len {
                tracing::debug!(stream = %id, file = %name, from = l.file_len, to = segment.len, "trimming the active segment");
                let path = dir.join(&name);
                l.file.set_len(segment.len).map_err(io_err("truncate", &path))?;
                l.file.sync_data().map_err(io_err("fsync", &path))?;
            }
            segment.allocated = segment.len;
            let last = match index_last_hash.or(salvaged) {
                Some(h) => h,
                None => {
                    let (hash, ms) = self.last_record(id, &name, &segment)?;
                    if let Some(ms) = ms {
                        segment.last_append_ms = ms;
                    }
                    hash
                }
            };
            if !is_active && index_last_hash.is_none() && salvaged.is_none() {
                // Rebuilt: write the index back so the next open trusts it.
                let f = IndexFile {
                    base: segment.base,
                    segment_len: segment.len,
                    last_append_ms: segment.last_append_ms,
                    base_prev_hash: segment.base_prev_hash,
                    last_hash: last,
                    positions: segment.positions.clone(),
                    anchors: Vec::new(),
                };
                let bytes = f.encode(id);
                self.write_atomic(&dir, &names::index(l.seq), &bytes)?;
                segment.idx_bytes = bytes.len() as u64;
                segment.indexed_len = segment.len;
            }
            prev_last_hash = Some(last);
            segments.push(segment);
        }
        let head = prev_last_hash.expect("at least one segment");
        let log_start = segments[0].base;
        let next = segments.last().expect("at least one segment").end();

        let mut checkpoints = CheckpointIndex::new();
        let mut removed = false;
        for (offset, name) in cps {
            let path = dir.join(&name);
            let bytes = fs.read(&path).map_err(io_err("read", &path))?;
            let cp = deserialize_checkpoint_payload(&bytes, id, &name)?;
            let bad = |reason: String| StorageError::Corruption {
                stream: id,
                file: name.clone(),
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
            if cp.offset < log_start || cp.offset > next {
                tracing::warn!(stream = %id, file = %name, "removing a checkpoint outside the log");
                self.remove_if_exists(&path)?;
                removed = true;
                continue;
            }
            checkpoints.insert(cp);
        }
        if removed {
            fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
        }
        anchors.retain(|k: &Offset, _| *k > log_start && *k <= next);
        let core = StreamCore { segments, head, checkpoints, pending_checkpoints: BTreeSet::new() };
        Ok(Some(Stream::new(id, dir, core, anchors)))
    }

    /// Loads and validates an index file against its segment; `None` (with a warning) if it
    /// cannot be trusted.
    fn load_index(&self, id: StreamId, path: &Path, l: &Loaded, is_active: bool) -> Option<(IndexFile, u64)> {
        let bytes = match self.fs.read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(stream = %id, file = %path.display(), error = %e, "cannot read index file");
                return None;
            }
        };
        let why = match IndexFile::decode(&bytes, id) {
            Ok(f) if f.base != l.header.base => "base offset differs from the segment's".to_string(),
            Ok(f) if f.base_prev_hash != l.header.base_prev_hash => "base hash differs from the segment's".to_string(),
            Ok(f) if f.segment_len > l.data_len => "covers more bytes than the segment holds".to_string(),
            Ok(f) if !is_active && f.segment_len != l.file_len => "does not cover the whole sealed segment".to_string(),
            Ok(f) => return Some((f, bytes.len() as u64)),
            Err(why) => why,
        };
        tracing::warn!(stream = %id, file = %path.display(), reason = %why, "index file not trusted; rebuilding");
        None
    }

    /// Scans records from byte `from` to `file_len`, the first being `first_offset`. With
    /// `torn_ok`, a defect in the last record (one reaching the end of the file) ends the scan
    /// there; any other defect is a `Corruption` error.
    #[allow(clippy::too_many_arguments)]
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
                            return Err(StorageError::Corruption {
                                stream: id,
                                file: name.to_string(),
                                position: abs,
                                offset: Some(offset),
                                reason: CorruptionReason::OffsetSequence { expected: offset, found: v.offset },
                            });
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
                        if torn_ok
                            && (zero_tail
                                || ((claimed_end.is_some_and(|e| e >= file_len) || no_record_here)
                                    && !self.record_follows(file, abs, file_len, offset)))
                        {
                            tracing::warn!(stream = %id, file = %name, position = abs, reason = %d.reason, "torn last record");
                            return Ok(Scan { positions, end: abs });
                        }
                        return Err(StorageError::Corruption {
                            stream: id,
                            file: name.to_string(),
                            position: abs,
                            offset: Some(offset),
                            reason: d.reason,
                        });
                    }
                }
            }
            pos += at as u64;
            want = SCAN_CHUNK_BYTES;
        }
        Ok(Scan { positions, end: pos })
    }

    /// Locates what it can of a damaged sealed segment holding records `[base, end)`: records
    /// that decode with the expected offset keep their place; past a defect, the next record
    /// that decodes with a later offset of the segment (found by its start marker and CRC)
    /// resumes the sequence. Records that cannot be located get an empty span at the defect,
    /// so every read of them fails verification (and a scrub reports them) until repaired.
    fn salvage(
        &self,
        id: StreamId,
        name: &str,
        file: &dyn FsFile,
        file_len: u64,
        base: Offset,
        end: Offset,
    ) -> Result<Scan> {
        let header = seg_fmt::HEADER_LEN as u64;
        let buf =
            read_bytes(file, header, file_len).map_err(|e| e(&self.root.join(id.get().to_string()).join(name)))?;
        let mut positions = Vec::with_capacity((end.get() - base.get()) as usize);
        let mut at = 0usize;
        let mut offset = base;
        while offset < end {
            match decode_record(&buf, at) {
                Ok(v) if v.offset == offset => {
                    positions.push(header + at as u64);
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
                            .filter(|v| v.offset > offset && v.offset < end)
                            .map(|v| (q, v.offset))
                    });
                    let (q, o) = resume.unwrap_or((buf.len(), end));
                    while offset < o {
                        positions.push(header + at as u64);
                        offset = offset.plus(1);
                    }
                    at = q;
                }
            }
        }
        debug_assert!(positions.windows(2).all(|w| w[0] <= w[1]));
        Ok(Scan { positions, end: file_len })
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
