//! Scrubbing one segment from disk and repairing a damaged range of one segment (see
//! [`crate::scrub`] for the rules). A scrub holds no lock while it reads: it takes a snapshot of
//! the segment's layout (file handle, positions, base and end hashes) and reads the file through
//! it; sealed segments are immutable, and a truncation or checkpoint install meanwhile (the sync
//! epoch moves) makes it start over.

use std::path::Path;
use std::sync::Arc;

use super::read::read_bytes;
use super::stream::Stream;
use super::{Storage, io_err};
use crate::chain::chain_hash;
use crate::codec::{CodecId, compress_payload};
use crate::error::{CorruptionReason, Result, StorageError};
use crate::format::names;
use crate::io::{FsFile, OpenMode};
use crate::record::{decode_record, encode_record, seal_record};
use crate::scrub::{Damage, GoodSuffix, RepairOutcome, RepairRejection, ScrubReport, check_repair_chain};
use crate::types::{ChainHash, Offset, Record, StreamId};

/// Bytes read per I/O by a scrub and by the copy a repair makes.
const CHUNK_BYTES: u64 = 4 << 20;

/// What a scrub needs of a segment, copied out under the read lock.
struct Layout {
    seq: u64,
    name: String,
    base: Offset,
    base_prev_hash: ChainHash,
    /// The hash the segment's last record must have.
    end_hash: ChainHash,
    positions: Vec<u64>,
    len: u64,
    file: Arc<dyn FsFile>,
    sealed: bool,
    last_append_ms: u64,
}

impl Layout {
    fn end(&self) -> Offset {
        self.base.plus(self.positions.len() as u64)
    }

    fn span(&self, i: usize) -> (u64, u64) {
        (self.positions[i], self.positions.get(i + 1).copied().unwrap_or(self.len))
    }
}

/// The result of one pass over a segment.
struct Pass {
    bytes: u64,
    damage: Option<Damage>,
    /// Hash of record `want_before - 1`, if it lies in the verified prefix.
    before: Option<ChainHash>,
    /// Hash of record `want_end - 1`, if it lies in the verified suffix (or is the end hash).
    end: Option<ChainHash>,
    /// With damage: the start of the good suffix and the (verified) hash before it.
    good_anchor: Option<(Offset, ChainHash)>,
}

impl Storage {
    /// [`crate::StorageBackend::scrub_segment`] of an existing stream: re-reads the segment
    /// starting at `base` and checks every record.
    pub(super) fn scrub(&self, h: &Stream, base: Offset) -> Result<ScrubReport> {
        let stream = h.id;
        loop {
            let epoch = h.sync.epoch();
            let l = layout(h, base)?;
            let pass = self.pass(h, &l, None, None)?;
            if h.sync.epoch() != epoch {
                continue; // truncated or restarted meanwhile: look again
            }
            if let Some(anchor) = pass.good_anchor {
                // The records after the damage link to the known-good end hash: reads of them
                // may start from the hash before them instead of walking through the damage.
                h.add_anchors([anchor]);
            }
            if let Some(d) = &pass.damage {
                // The caller reports it (once per range); this is for tracing a pass.
                tracing::debug!(
                    stream = %stream, file = %d.file, position = d.position, first_bad = %d.first_bad,
                    good_from = %d.good_from, reason = %d.reason, "scrub found damage"
                );
            }
            return Ok(ScrubReport {
                stream,
                file: l.name.clone(),
                base: l.base,
                end: l.end(),
                sealed: l.sealed,
                bytes: pass.bytes,
                damage: pass.damage,
            });
        }
    }

    /// [`crate::StorageBackend::repair_range`] of an existing stream, with at least one record:
    /// replaces records `[from, from + records.len())` of one segment.
    pub(super) fn repair(&self, h: &Stream, from: Offset, records: Vec<Record>) -> Result<RepairOutcome> {
        let stream = h.id;
        let to = from.plus(records.len() as u64);
        let reject = |reason| StorageError::RepairRejected { stream, from, to, reason };
        // Every mutation of the stream waits: the segment cannot be truncated, compacted,
        // appended to or sealed while it is rewritten.
        let _w = h.writer.lock();
        h.check_usable()?;
        let base = {
            let c = h.core.read();
            let i = c.segment_index(from);
            let s = &c.segments[i];
            if from < s.base || to > s.end() {
                return Err(reject(RepairRejection::OutsideSegment { from, to }));
            }
            s.base
        };
        let l = layout(h, base)?;
        let pass = self.pass(h, &l, Some(from), Some(to))?;
        let (damaged_from, damaged_to) =
            pass.damage.as_ref().map_or((l.end(), l.end()), |d| (d.first_bad, d.good_from));
        let untrusted = |which| reject(RepairRejection::UntrustedBoundary { which, damaged_from, damaged_to });
        let before = pass.before.ok_or_else(|| untrusted("before"))?;
        let after = pass.end.ok_or_else(|| untrusted("at the end of"))?;
        check_repair_chain(from, &records, before, after, self.options.max_record_bytes).map_err(reject)?;

        // The new segment: header and records before the range as they are, the supplied
        // records encoded as an append would, the records after the range as they are.
        let dir = h.dir.clone();
        let path = dir.join(&l.name);
        let tmp = dir.join(format!("{}{}", l.name, names::TMP_SUFFIX));
        let i_from = (from.get() - l.base.get()) as usize;
        let i_to = (to.get() - l.base.get()) as usize;
        let cut_from = l.positions[i_from];
        let cut_to = l.positions.get(i_to).copied().unwrap_or(l.len);
        let mut middle = Vec::new();
        let mut new_positions = l.positions[..i_from].to_vec();
        for r in &records {
            new_positions.push(cut_from + middle.len() as u64);
            let (codec_id, compressed) = compress_payload(self.codec.as_ref(), &r.payload);
            let stored = compressed.as_deref().unwrap_or(&r.payload);
            let at = middle.len();
            encode_record(&mut middle, r.offset, codec_id, l.last_append_ms, &r.prev_hash, r.payload.len(), stored);
            seal_record(&mut middle[at..]);
        }
        let shift = (cut_from + middle.len() as u64) as i128 - cut_to as i128;
        new_positions.extend(l.positions[i_to..].iter().map(|&p| (p as i128 + shift) as u64));
        let new_len = (l.len as i128 + shift) as u64;
        debug_assert_eq!(new_positions.len(), l.positions.len());

        let f = self.fs.open(&tmp, OpenMode::CreateTruncate).map_err(io_err("create", &tmp))?;
        copy(l.file.as_ref(), f.as_ref(), 0, cut_from, 0, &path, &tmp)?;
        f.write_all_at(&middle, cut_from).map_err(io_err("write", &tmp))?;
        copy(l.file.as_ref(), f.as_ref(), cut_to, l.len, cut_from + middle.len() as u64, &path, &tmp)?;
        f.sync_data().map_err(io_err("fsync", &tmp))?;
        // Check what was written before it replaces anything.
        let check = Layout {
            seq: l.seq,
            name: l.name.clone(),
            base: l.base,
            base_prev_hash: l.base_prev_hash,
            end_hash: l.end_hash,
            positions: new_positions.clone(),
            len: new_len,
            file: f.clone(),
            sealed: true,
            last_append_ms: l.last_append_ms,
        };
        if let Some(d) = self.pass(h, &check, None, None)?.damage {
            let _ = self.fs.remove_file(&tmp);
            return Err(StorageError::Corruption {
                stream,
                file: tmp.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                position: d.position,
                offset: Some(d.first_bad),
                reason: d.reason,
            });
        }
        let same_layout = new_positions == l.positions && new_len == l.len;
        let idx = dir.join(names::index(l.seq));
        let r = (|| {
            if !same_layout {
                // The old index must never describe the new file: remove it first (a crash
                // before the rename then rebuilds it from the old segment by a scan).
                self.remove_if_exists(&idx)?;
                self.fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
            }
            self.fs.rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
            self.fs.sync_dir(&dir).map_err(io_err("fsync directory", &dir))?;
            self.fs.open(&path, OpenMode::Existing).map_err(io_err("open", &path))
        })();
        let file = h.guard(r)?;
        {
            let mut c = h.core.write();
            let s = c.segments.iter_mut().find(|s| s.seq == l.seq).expect("the writer lock keeps the segment in place");
            s.file = file;
            s.positions = new_positions;
            s.len = new_len;
            s.allocated = new_len;
            if !same_layout {
                s.idx_bytes = 0;
                s.indexed_len = 0;
            }
        }
        if !same_layout {
            let r = self.write_index_locked(h, Some(l.seq));
            h.guard(r)?;
        }
        tracing::warn!(stream = %stream, file = %l.name, from = %from, to = %to, "repaired a damaged range");
        Ok(RepairOutcome { stream, file: l.name, range: from..to })
    }

    /// One pass over a segment's records. `want_before`: report the verified hash of the record
    /// before it; `want_end`: report the trusted hash of the record before it (end of a range).
    fn pass(&self, h: &Stream, l: &Layout, want_before: Option<Offset>, want_end: Option<Offset>) -> Result<Pass> {
        let stream = h.id;
        let path = h.dir.join(&l.name);
        let end = l.end();
        let mut expected_prev = l.base_prev_hash;
        let mut first_bad: Option<(Offset, u64, CorruptionReason)> = None;
        let mut suffix = GoodSuffix::default();
        let mut before = (want_before == Some(l.base)).then_some(l.base_prev_hash);
        // The `prev_hash` record `want_end` carries (trusted once it lies in the good suffix).
        let mut end_prev: Option<ChainHash> = None;
        let mut bytes = 0u64;
        let mut i = 0usize;
        while i < l.positions.len() {
            // A chunk of whole records of about CHUNK_BYTES (at least one).
            let from_pos = l.positions[i];
            let j = l.positions.partition_point(|&p| p < from_pos + CHUNK_BYTES).max(i + 1);
            let to_pos = l.span(j - 1).1;
            let buf = read_bytes(l.file.as_ref(), from_pos, to_pos).map_err(|e| e(&path))?;
            bytes += buf.len() as u64;
            for k in i..j {
                let offset = l.base.plus(k as u64);
                let (s, e) = l.span(k);
                let at = (s - from_pos) as usize;
                let checked = match decode_record(&buf[..(e - from_pos) as usize], at) {
                    Err(d) => Err(d.reason),
                    Ok(v) if v.offset != offset => {
                        Err(CorruptionReason::OffsetSequence { expected: offset, found: v.offset })
                    }
                    Ok(v) if v.len as u64 != e - s => {
                        Err(CorruptionReason::BadLength { length: v.len as u64, limit: e - s })
                    }
                    Ok(v) => {
                        let stored = buf.slice(v.payload_at..v.payload_at + v.stored_len);
                        match self.scrub_decompress(stream, offset, v.codec, stored, v.uncompressed_len) {
                            Ok(payload) => Ok((v.prev_hash, chain_hash(offset, &v.prev_hash, &payload))),
                            Err(reason) => Err(reason),
                        }
                    }
                };
                match checked {
                    Err(reason) => {
                        first_bad.get_or_insert((offset, s, reason));
                        suffix.bad();
                    }
                    Ok((prev_hash, hash)) => {
                        if want_end == Some(offset) {
                            end_prev = Some(prev_hash);
                        }
                        if first_bad.is_none() {
                            if prev_hash != expected_prev || (offset == Offset::ZERO && prev_hash != ChainHash::ZERO) {
                                // The link into this record breaks: blame its predecessor (whose
                                // payload no longer hashes to what this record remembers), or this
                                // record if it is the segment's first.
                                let reason =
                                    CorruptionReason::ChainMismatch { expected: prev_hash, found: expected_prev };
                                if k > 0 {
                                    let prev_offset = Offset::new(offset.get() - 1);
                                    first_bad = Some((prev_offset, l.positions[k - 1], reason));
                                    if want_before == Some(offset) {
                                        before = None;
                                    }
                                } else {
                                    first_bad = Some((offset, s, reason));
                                }
                            } else {
                                expected_prev = hash;
                                if want_before == Some(offset.plus(1)) {
                                    before = Some(hash);
                                }
                            }
                        }
                        suffix.good(offset, prev_hash, hash);
                    }
                }
            }
            i = j;
        }
        if first_bad.is_none() && expected_prev != l.end_hash {
            let last = Offset::new(end.get().saturating_sub(1));
            let position = l.positions.last().copied().unwrap_or(0);
            first_bad =
                Some((last, position, CorruptionReason::ChainMismatch { expected: l.end_hash, found: expected_prev }));
        }
        let mut good_anchor = None;
        let (damage, end_hash) = match first_bad {
            None => (None, want_end.map(|w| if w == end { l.end_hash } else { end_prev.unwrap_or(l.end_hash) })),
            Some((first, position, reason)) => {
                let (good_from, good_prev) = suffix.finish(end, l.end_hash);
                let (good_from, good_prev) =
                    if good_from <= first { (end, l.end_hash) } else { (good_from, good_prev) };
                let trusted_end = want_end.and_then(|w| {
                    if w == end {
                        Some(l.end_hash)
                    } else if w == good_from {
                        Some(good_prev)
                    } else if w > good_from {
                        end_prev
                    } else {
                        None
                    }
                });
                if good_from < end {
                    good_anchor = Some((good_from, good_prev));
                }
                if want_before.is_some_and(|w| w > first) {
                    before = None;
                }
                let d = Damage { stream, file: l.name.clone(), position, first_bad: first, good_from, reason };
                (Some(d), trusted_end)
            }
        };
        Ok(Pass { bytes, damage, before, end: end_hash, good_anchor })
    }

    fn scrub_decompress(
        &self,
        stream: StreamId,
        offset: Offset,
        codec: CodecId,
        stored: bytes::Bytes,
        len: usize,
    ) -> std::result::Result<bytes::Bytes, CorruptionReason> {
        if codec == CodecId::NONE {
            return Ok(stored);
        }
        let Some(c) = self.registry.get(codec) else {
            return Err(CorruptionReason::InvalidField { field: "codec", value: codec.0 as u64 });
        };
        if len > self.options.max_record_bytes.max(stored.len()) {
            return Err(CorruptionReason::BadLength {
                length: len as u64,
                limit: self.options.max_record_bytes as u64,
            });
        }
        c.decompress(&stored, len).map(bytes::Bytes::from).map_err(|e| {
            CorruptionReason::Malformed(format!(
                "stream {stream} offset {offset}: cannot decompress ({}): {e}",
                c.name()
            ))
        })
    }
}

/// The layout of the segment starting at `base`, copied out under the read lock.
fn layout(h: &Stream, base: Offset) -> Result<Layout> {
    let c = h.core.read();
    let i =
        c.segments.iter().position(|s| s.base == base).ok_or(StorageError::UnknownSegment { stream: h.id, base })?;
    let s = &c.segments[i];
    let sealed = i + 1 < c.segments.len();
    let end_hash = c.segments.get(i + 1).map_or(c.head, |n| n.base_prev_hash);
    Ok(Layout {
        seq: s.seq,
        name: s.name(),
        base: s.base,
        base_prev_hash: s.base_prev_hash,
        end_hash,
        positions: s.positions.clone(),
        len: s.len,
        file: s.file.clone(),
        sealed,
        last_append_ms: s.last_append_ms,
    })
}

/// Copies bytes `[from, to)` of `src` to `dst` at `at`, in chunks.
fn copy(
    src: &dyn FsFile,
    dst: &dyn FsFile,
    from: u64,
    to: u64,
    at: u64,
    src_path: &Path,
    dst_path: &Path,
) -> Result<()> {
    let mut pos = from;
    while pos < to {
        let end = (pos + CHUNK_BYTES).min(to);
        let buf = read_bytes(src, pos, end).map_err(|e| e(src_path))?;
        dst.write_all_at(&buf, at + (pos - from)).map_err(io_err("write", dst_path))?;
        pos = end;
    }
    Ok(())
}
