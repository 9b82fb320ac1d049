//! Verified reads: every record read is CRC-checked, decompressed within its declared length and
//! chain-linked from the nearest trusted anchor (a sparse-table entry, a checkpoint, or a
//! segment's base hash), so a read at offset k re-hashes at most [`ANCHOR_INTERVAL`] extra records
//! once the table is warm (at most one segment when it is cold).

use bytes::{Bytes, BytesMut};

use super::stream::{Stream, StreamCore};
use super::{ANCHOR_INTERVAL, Storage, io_err};
use crate::backend::check_verify_range;
use crate::chain::{anchor_mismatch, chain_hash};
use crate::codec::CodecId;
use crate::error::{CorruptionReason, Result, StorageError};
use crate::record::{RecordDefect, RecordView, decode_record};
use crate::types::{ChainHash, ChainVerification, Offset, ReadCheck, Record, StreamId};

/// Bytes read per I/O by a sequential scan (and the most a ranged read reads at once).
const SCAN_CHUNK_BYTES: u64 = 2 << 20;
/// Chunks the read-ahead thread may have read before the verifier takes them: enough that a
/// ranged read's thread never waits (and never needs waking) in the middle of a read.
const READ_AHEAD_CHUNKS: usize = 4;
/// Read buffers kept for reuse.
const READ_BUFFER_POOL: usize = 8;
/// Smallest read a ranged read makes.
const MIN_READ_BYTES: u64 = 64 << 10;

/// One record that passed verification.
pub(crate) struct Verified {
    pub offset: Offset,
    pub prev_hash: ChainHash,
    pub hash: ChainHash,
    pub payload: Bytes,
}

impl Storage {
    /// [`crate::StorageBackend::read_range_checked`] of an existing stream: records in
    /// `[from, end)`, up to about `max_bytes` of payload (at least one record if any is in range),
    /// checked as `check` says.
    ///
    /// [`ReadCheck::Chain`]: re-hashed from the nearest trusted anchor, and the last record's hash
    /// becomes a read cursor. [`ReadCheck::Frames`]: the walk starts at `from` and hashes nothing;
    /// each record's `hash` is the `prev_hash` its successor stores (the successor is read for its
    /// link only), or the in-memory head for the stream's last record, and nothing is trusted later
    /// (no sparse anchor or read cursor is taken from these hashes).
    pub(super) fn read_stream(
        &self,
        h: &Stream,
        from: Offset,
        end: Offset,
        max_bytes: usize,
        check: ReadCheck,
    ) -> Result<Vec<Record>> {
        let c = h.core.read();
        if from < c.log_start() {
            return Err(c.range_error(h.id, from));
        }
        let end = end.min(c.next());
        if from >= end {
            return Ok(Vec::new());
        }
        let (anchor_at, anchor) = match check {
            ReadCheck::Chain => self.nearest_anchor(h, &c, from),
            ReadCheck::Frames => (from, ChainHash::ZERO),
        };
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        // One record past the range is read too (when there is one), so the last returned
        // record's hash is checked against (or, for frames, taken from) its successor's link.
        let full = end.plus(1).min(c.next());
        let stop = bytes_stop(&c, from, full, max_bytes);
        // The record before `stop` is that successor (not returned) when the byte limit or `end`
        // cut the read; only its link is read.
        let successor = (stop < full || full > end).then(|| Offset::new(stop.get() - 1));
        let hint = (max_bytes as u64 / 4).clamp(MIN_READ_BYTES, SCAN_CHUNK_BYTES);
        // For frames the walk returns the link stored by the last record it looked at: the
        // successor of the last record kept whenever the walk went past it (see below).
        let link = self.walk_after(h, &c, anchor_at, anchor, None, stop, successor, hint, check, |r| {
            if r.offset < from {
                return true;
            }
            if r.offset >= end || (!out.is_empty() && bytes + r.payload.len() > max_bytes) {
                return false;
            }
            bytes += r.payload.len();
            out.push(Record { offset: r.offset, prev_hash: r.prev_hash, hash: r.hash, payload: r.payload });
            true
        })?;
        match check {
            ReadCheck::Chain => {
                if let Some(last) = out.last() {
                    // A sequential reader continues right after the last record: let its next read
                    // start from this verified hash instead of re-hashing from the sparse anchor below.
                    h.set_read_cursor(last.offset.plus(1), last.hash);
                }
            }
            ReadCheck::Frames => {
                for i in 1..out.len() {
                    out[i - 1].hash = out[i].prev_hash;
                }
                if let Some(last) = out.last_mut() {
                    let after = last.offset.plus(1);
                    // The walk stops at `stop` or right after the first record it does not keep, so
                    // unless the last record kept is the stream's last, the walk looked at its successor.
                    debug_assert!(after == c.next() || after < stop, "{after:?} {stop:?} {:?}", c.next());
                    last.hash = if after == c.next() { c.head } else { link };
                }
                debug_assert!(out.windows(2).all(|w| w[1].offset == w[0].offset.plus(1)));
            }
        }
        Ok(out)
    }

    /// The walk both `verify_chain` (`from`, `to` = `None`: from the log start to the end as it is
    /// when reached) and `verify_range` (`from`, `to` = `Some`) run: re-reads the records from the
    /// segment files and verifies each one (framing, CRC, offset, decompression, chain link),
    /// starting from the verified chain hash of record `from - 1` (the anchor at the log start),
    /// and returns the chain hash of record `to - 1` as `head`. Nothing is answered from memory:
    /// the sparse chain table only supplies the hash before `from` and is compared with (never
    /// substituted for) the hashes the re-read gives. One segment per hold of the read
    /// lock, so appends are not held up for the whole verification. A truncation or install in
    /// between (the sync epoch moves) or a compaction past the position reached restarts it: from
    /// the new log start, or, for a fixed range, from `from` again if the stream still holds it.
    pub(super) fn verify_span(
        &self,
        h: &Stream,
        from: Option<Offset>,
        to: Option<Offset>,
    ) -> Result<ChainVerification> {
        let stream = h.id;
        'restart: loop {
            let epoch = h.sync.epoch();
            let (start, mut prev) = {
                let c = h.core.read();
                let start = from.unwrap_or(c.log_start());
                if let Some(to) = to {
                    check_verify_range(stream, start, to, c.log_start(), c.next())?;
                }
                (start, self.verified_start_hash(h, &c, start)?)
            };
            let mut pos = start;
            let mut records = 0u64;
            loop {
                let c = h.core.read();
                if h.sync.epoch() != epoch || c.log_start() > pos {
                    continue 'restart;
                }
                let end = to.unwrap_or(c.next());
                if end > c.next() || pos > end {
                    // A truncation cut the range (its epoch moves just after): check the bounds again.
                    continue 'restart;
                }
                if pos >= end {
                    debug_assert_eq!(records, end.get() - start.get(), "every record of the range was re-read");
                    return Ok(ChainVerification { stream, from: start, to: end, records, head: prev });
                }
                let seg = &c.segments[c.segment_index(pos)];
                let stop = seg.end().min(end);
                // The record before `pos` was verified (or is the hash the range starts from): a
                // broken link into `pos` names it.
                let before = (pos > c.log_start()).then(|| c.locate(Offset::new(pos.get() - 1)));
                prev =
                    self.walk_after(h, &c, pos, prev, before, stop, None, SCAN_CHUNK_BYTES, ReadCheck::Chain, |_| {
                        records += 1;
                        true
                    })?;
                pos = stop;
            }
        }
    }

    /// The hash a verification starting at `start` (in `[log_start, next]`) chains from: at the
    /// log start the first segment's anchor, which must equal the checkpoint there; above it, the
    /// verified hash of record `start - 1`.
    fn verified_start_hash(&self, h: &Stream, c: &StreamCore, start: Offset) -> Result<ChainHash> {
        if start > c.log_start() {
            return self.hash_before(h, c, start);
        }
        let first = &c.segments[0];
        let anchor = first.base_prev_hash;
        match anchor_mismatch(start, anchor, &c.checkpoints) {
            Some(reason) => Err(StorageError::Corruption {
                stream: h.id,
                file: first.name(),
                position: crate::format::segment::BASE_PREV_HASH_AT as u64,
                offset: Some(start),
                reason,
            }),
            None => Ok(anchor),
        }
    }

    /// The verified chain hash of record `k - 1`, for `k` in `[log_start, next]` (the anchor at
    /// the log start; `OffsetOutOfRange` at 0 or outside).
    pub(crate) fn hash_before(&self, h: &Stream, c: &StreamCore, k: Offset) -> Result<ChainHash> {
        if k == c.log_start() && k > Offset::ZERO {
            return Ok(c.segments[0].base_prev_hash);
        }
        if k <= c.log_start() || k > c.next() {
            return Err(c.range_error(h.id, k));
        }
        if k == c.next() {
            return Ok(c.head);
        }
        if let Some(hash) = h.anchors.lock().get(&k) {
            return Ok(*hash);
        }
        let target = Offset::new(k.get() - 1);
        let (at, anchor) = self.nearest_anchor(h, c, target);
        let mut found = anchor;
        // Record `k` (when there is one) is read to check the link into `k - 1` only.
        let successor = (k < c.next()).then_some(k);
        self.walk(h, c, at, anchor, k.plus(1).min(c.next()), successor, MIN_READ_BYTES, |r| {
            if r.offset == target {
                found = r.hash;
            }
            r.offset < target
        })?;
        Ok(found)
    }

    /// The trusted anchor closest below (or at) `offset`: `(k, hash of record k - 1)`.
    pub(crate) fn nearest_anchor(&self, h: &Stream, c: &StreamCore, offset: Offset) -> (Offset, ChainHash) {
        let seg = &c.segments[c.segment_index(offset)];
        let mut best = (seg.base, seg.base_prev_hash);
        if let Some((k, hash)) = h.anchors.lock().range(..=offset).next_back()
            && *k > best.0
        {
            best = (*k, *hash);
        }
        if let Some(cp) = c.checkpoints.at_or_below(offset)
            && cp.offset > best.0
            && cp.offset > Offset::ZERO
            && cp.offset <= c.next()
        {
            best = (cp.offset, cp.chain_hash);
        }
        best
    }

    /// Reads and verifies records from `start` (whose predecessor's hash is the trusted
    /// `anchor`) up to `stop` (exclusive, at most the next offset), calling `visit` for each
    /// verified record until it returns false (right after the record it was given). Returns the
    /// hash of the last record verified. Reaching the end of the stream also checks the result
    /// against the in-memory head; passing a sparse-table offset checks against the table.
    ///
    /// A record at `link_only_at` (the one past a range, read so the range's last record is
    /// checked against its successor's link) is checked for that link only and ends the walk
    /// without being decompressed, hashed or visited.
    ///
    /// Reads go in chunks of about `chunk_bytes`; when more than one chunk is needed, a helper
    /// thread reads chunk k+1 while this one verifies chunk k.
    #[allow(
        clippy::too_many_arguments,
        reason = "the stream, its range, the trusted anchor and the visitor are each the caller's"
    )]
    pub(crate) fn walk(
        &self,
        h: &Stream,
        c: &StreamCore,
        start: Offset,
        anchor: ChainHash,
        stop: Offset,
        link_only_at: Option<Offset>,
        chunk_bytes: u64,
        visit: impl FnMut(Verified) -> bool,
    ) -> Result<ChainHash> {
        self.walk_after(h, c, start, anchor, None, stop, link_only_at, chunk_bytes, ReadCheck::Chain, visit)
    }

    /// [`Storage::walk`] where `anchor` was computed (not trusted) from the record at
    /// `anchor_at` (segment index, byte position): a broken link into `start` blames that record.
    ///
    /// With `check` [`ReadCheck::Frames`] nothing is hashed and links are not compared (`anchor`
    /// is unused; record 0 must still chain from zero): each record visited has `hash` zero, no
    /// sparse anchor is learned, and the walk returns the `prev_hash` stored by the last record it
    /// looked at (visited, refused by `visit`, or read for its link only).
    #[allow(clippy::too_many_arguments, reason = "walk's inputs plus where the anchor was computed")]
    pub(crate) fn walk_after(
        &self,
        h: &Stream,
        c: &StreamCore,
        start: Offset,
        anchor: ChainHash,
        anchor_at: Option<(usize, u64)>,
        stop: Offset,
        link_only_at: Option<Offset>,
        chunk_bytes: u64,
        check: ReadCheck,
        mut visit: impl FnMut(Verified) -> bool,
    ) -> Result<ChainHash> {
        let hashing = check == ReadCheck::Chain;
        debug_assert!(link_only_at.is_none_or(|k| k > start && k < stop), "{link_only_at:?} in ({start:?}, {stop:?})");
        let stream = h.id;
        let mut expected_prev = anchor;
        let mut offset = start;
        // Where the previous verified record lies (segment index, byte position), to blame it
        // when its successor's link fails.
        let mut last: Option<(usize, u64)> = anchor_at;
        let mut new_anchors = Vec::new();
        // Reading a chunk also parses and CRC-checks its records: on the read-ahead thread when
        // there is one, so the verifying thread is left with the hashing.
        let read = |ch: &Chunk| {
            let seg = &c.segments[ch.seg_i];
            self.read_pooled(seg.file.as_ref(), ch.from_pos, ch.to_pos)
                .map(|buf| ParsedChunk::parse(c, ch, buf))
                .map_err(|e| e(&h.dir.join(seg.name())))
        };
        // Verifies one chunk; Ok(false) once `visit` asked to stop.
        let mut verify_chunk = |ch: &Chunk, parsed: ParsedChunk| -> Result<bool> {
            let seg = &c.segments[ch.seg_i];
            let buf = &parsed.buf;
            let mut at = 0usize;
            for (k, view) in (ch.i..ch.j).zip(&parsed.views) {
                let position = ch.from_pos + at as u64;
                let corrupt = |offset: Offset, reason| StorageError::Corruption {
                    stream,
                    file: seg.name(),
                    position,
                    offset: Some(offset),
                    reason,
                };
                if view.offset != offset {
                    return Err(corrupt(
                        offset,
                        CorruptionReason::OffsetSequence { expected: offset, found: view.offset },
                    ));
                }
                let (span_start, span_end) = seg.span(k);
                if view.len as u64 != span_end - span_start {
                    return Err(corrupt(
                        offset,
                        CorruptionReason::BadLength { length: view.len as u64, limit: span_end - span_start },
                    ));
                }
                if !hashing {
                    // The link is the reader's to check: take the one stored.
                    expected_prev = view.prev_hash;
                }
                if view.prev_hash != expected_prev || (offset == Offset::ZERO && view.prev_hash != ChainHash::ZERO) {
                    // The link into this record is broken: the record before it (whose payload
                    // no longer hashes to what this record remembers) is the one to name, unless
                    // there is none in this walk and the anchor itself disagrees.
                    let blame_this =
                        offset == Offset::ZERO || self.prev_field_is_wrong(h, c, buf, at, view, k + 1 < ch.j);
                    return Err(match last.filter(|_| !blame_this) {
                        Some((seg_i, pos)) => StorageError::Corruption {
                            stream,
                            file: c.segments[seg_i].name(),
                            position: pos,
                            offset: Some(Offset::new(offset.get() - 1)),
                            reason: CorruptionReason::ChainMismatch { expected: view.prev_hash, found: expected_prev },
                        },
                        None => corrupt(
                            offset,
                            CorruptionReason::ChainMismatch { expected: expected_prev, found: view.prev_hash },
                        ),
                    });
                }
                if link_only_at == Some(offset) {
                    // Read only to check the link into it (done above): the walk's last record is
                    // verified, and this one is not wanted, so it is not decompressed or hashed.
                    return Ok(false);
                }
                let stored = buf.slice(view.payload_at..view.payload_at + view.stored_len);
                let payload = self.decompress(stream, offset, view.codec, stored, view.uncompressed_len)?;
                let after = offset.plus(1);
                if !hashing {
                    let rec = Verified { offset, prev_hash: view.prev_hash, hash: ChainHash::ZERO, payload };
                    offset = after;
                    at += view.len;
                    if !visit(rec) {
                        return Ok(false);
                    }
                    continue;
                }
                let hash = chain_hash(offset, &view.prev_hash, &payload);
                let trusted = if after == c.next() {
                    Some(c.head)
                } else if after.get().is_multiple_of(ANCHOR_INTERVAL) {
                    h.anchors.lock().get(&after).copied()
                } else {
                    None
                };
                if let Some(t) = trusted
                    && t != hash
                {
                    return Err(corrupt(offset, CorruptionReason::ChainMismatch { expected: t, found: hash }));
                }
                if trusted.is_none() && after.get().is_multiple_of(ANCHOR_INTERVAL) {
                    new_anchors.push((after, hash));
                }
                let rec = Verified { offset, prev_hash: view.prev_hash, hash, payload };
                expected_prev = hash;
                last = Some((ch.seg_i, position));
                offset = after;
                at += view.len;
                if !visit(rec) {
                    return Ok(false);
                }
            }
            if let Some(defect) = parsed.defect {
                // Every record before the damaged one checked out: name the damaged one.
                return Err(StorageError::Corruption {
                    stream,
                    file: seg.name(),
                    position: ch.from_pos + at as u64,
                    offset: Some(offset),
                    reason: defect.reason,
                });
            }
            Ok(true)
        };
        let result = match plan_chunk(c, start, stop, chunk_bytes) {
            None => Ok(()),
            Some(first) if first.end(c) >= stop => read(&first).and_then(|p| verify_chunk(&first, p).map(|_| ())),
            Some(first) => std::thread::scope(|scope| {
                // This thread reads the first chunk itself while the read-ahead thread starts on
                // the second, so neither waits for the other at the start.
                let (tx, rx) = std::sync::mpsc::sync_channel::<(Chunk, Result<ParsedChunk>)>(READ_AHEAD_CHUNKS);
                let read_ahead = move || {
                    let mut next = plan_chunk(c, first.end(c), stop, chunk_bytes);
                    while let Some(ch) = next {
                        next = plan_chunk(c, ch.end(c), stop, chunk_bytes);
                        let parsed = read(&ch);
                        let failed = parsed.is_err();
                        if tx.send((ch, parsed)).is_err() || failed {
                            break;
                        }
                    }
                };
                std::thread::Builder::new()
                    .name("shale-read-ahead".into())
                    .spawn_scoped(scope, read_ahead)
                    .map_err(|e| io_err("spawn a read-ahead thread for", &h.dir)(e))?;
                if !verify_chunk(&first, read(&first)?)? {
                    return Ok(());
                }
                for (ch, parsed) in rx {
                    if !verify_chunk(&ch, parsed?)? {
                        break;
                    }
                }
                Ok(())
            }),
        };
        h.add_anchors(new_anchors);
        result.map(|()| expected_prev)
    }

    /// After a broken link into the record `view` (at `at` in `buf`): whether the record's own
    /// `prev_hash` field is the damaged part, rather than its predecessor's payload. It is when
    /// the record, hashed from the `prev_hash` it carries, does not give what its successor
    /// remembers (or the head, for the last record); when nothing follows to tell, the
    /// predecessor is blamed.
    fn prev_field_is_wrong(
        &self,
        h: &Stream,
        c: &StreamCore,
        buf: &Bytes,
        at: usize,
        view: &crate::record::RecordView,
        successor_in_buf: bool,
    ) -> bool {
        let remembered = if view.offset.plus(1) == c.next() {
            c.head
        } else if successor_in_buf {
            match decode_record(buf, at + view.len) {
                Ok(next) => next.prev_hash,
                Err(_) => return false,
            }
        } else {
            return false;
        };
        let stored = buf.slice(view.payload_at..view.payload_at + view.stored_len);
        match self.decompress(h.id, view.offset, view.codec, stored, view.uncompressed_len) {
            Ok(payload) => chain_hash(view.offset, &view.prev_hash, &payload) != remembered,
            Err(_) => false,
        }
    }

    /// Reads bytes `[from, to)` of a file into a buffer from the pool of recently used read
    /// buffers (one no record refers to any more), or a new one: reading into fresh memory
    /// costs more in page faults than the read itself.
    fn read_pooled(
        &self,
        file: &dyn crate::io::FsFile,
        from: u64,
        to: u64,
    ) -> std::result::Result<Bytes, impl FnOnce(&std::path::Path) -> StorageError + use<>> {
        let len = (to - from) as usize;
        let mut reused = None;
        {
            // Buffers still referenced by records handed out stay in the pool for later.
            let mut pool = self.read_buffers.lock();
            if let Some(i) = pool.iter().position(Bytes::is_unique) {
                match pool.swap_remove(i).try_into_mut() {
                    Ok(m) => reused = Some(m),
                    Err(b) => pool.push(b), // cloned meanwhile
                }
            }
        }
        let mut buf = reused.unwrap_or_else(|| BytesMut::with_capacity(len));
        // The read overwrites every byte it keeps, so only bytes past the old length need zeroing.
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        match file.read_exact_at(&mut buf, from) {
            Ok(()) => {
                let buf = buf.freeze();
                let mut pool = self.read_buffers.lock();
                if pool.len() < READ_BUFFER_POOL {
                    pool.push(buf.clone());
                }
                Ok(buf)
            }
            Err(e) => Err(move |path: &std::path::Path| io_err("read", path)(e)),
        }
    }

    fn decompress(&self, stream: StreamId, offset: Offset, codec: CodecId, stored: Bytes, len: usize) -> Result<Bytes> {
        if codec == CodecId::NONE {
            return Ok(stored);
        }
        let Some(c) = self.registry.get(codec) else {
            return Err(StorageError::UnknownCodec { stream, offset, codec_id: codec.0 });
        };
        if len > self.options.max_record_bytes.max(stored.len()) {
            return Err(StorageError::Decompression {
                stream,
                offset,
                codec: c.name(),
                reason: format!("declared length {len} is over max_record_bytes {}", self.options.max_record_bytes),
            });
        }
        c.decompress(&stored, len).map(Bytes::from).map_err(|e| StorageError::Decompression {
            stream,
            offset,
            codec: c.name(),
            reason: e.to_string(),
        })
    }
}

/// Reads bytes `[from, to)` of a file into one buffer.
pub(crate) fn read_bytes(
    file: &dyn crate::io::FsFile,
    from: u64,
    to: u64,
) -> std::result::Result<Bytes, impl FnOnce(&std::path::Path) -> StorageError> {
    let mut buf = BytesMut::zeroed((to - from) as usize);
    match file.read_exact_at(&mut buf, from) {
        Ok(()) => Ok(buf.freeze()),
        Err(e) => Err(move |path: &std::path::Path| io_err("read", path)(e)),
    }
}

/// Where a read of at most `max_bytes` of payload from `from` can stop reading (exclusive, at
/// most `stop`): past the first record that would exceed the limit, which the read needs to check
/// the link into it. A stored record is never longer than its payload plus the record overhead
/// (payloads are stored compressed only when that is smaller), so the bound is safe.
fn bytes_stop(c: &StreamCore, from: Offset, stop: Offset, max_bytes: usize) -> Offset {
    if max_bytes == usize::MAX {
        return stop; // no payload total reaches it: nothing to count
    }
    let overhead = crate::format::record::OVERHEAD as u64;
    let mut at = from;
    let mut payload = 0u64;
    let mut seg_i = c.segment_index(from);
    while at < stop {
        let Some(seg) = c.segments.get(seg_i) else { break };
        if at >= seg.end() {
            seg_i += 1;
            continue;
        }
        let (start, end) = seg.span((at.get() - seg.base.get()) as usize);
        let least = (end - start).saturating_sub(overhead);
        if at > from && payload + least > max_bytes as u64 {
            return at.plus(1).min(stop);
        }
        payload += least;
        at = at.plus(1);
    }
    stop
}

/// A chunk's bytes with its records parsed and CRC-checked, in order, up to the first defect
/// (or the first record whose length disagrees with the offset index, which the verifier reports).
struct ParsedChunk {
    buf: Bytes,
    views: Vec<RecordView>,
    /// Why the record after the last view is not a valid record.
    defect: Option<RecordDefect>,
}

impl ParsedChunk {
    fn parse(c: &StreamCore, ch: &Chunk, buf: Bytes) -> Self {
        let seg = &c.segments[ch.seg_i];
        let mut views = Vec::with_capacity(ch.j - ch.i);
        let mut at = 0usize;
        for k in ch.i..ch.j {
            match decode_record(&buf, at) {
                Ok(view) => {
                    views.push(view);
                    let (span_start, span_end) = seg.span(k);
                    if view.len as u64 != span_end - span_start {
                        break;
                    }
                    at += view.len;
                }
                Err(defect) => return Self { buf, views, defect: Some(defect) },
            }
        }
        Self { buf, views, defect: None }
    }
}

/// Records `[i, j)` of segment `seg_i`, at bytes `[from_pos, to_pos)` of its file.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    seg_i: usize,
    i: usize,
    j: usize,
    from_pos: u64,
    to_pos: u64,
}

impl Chunk {
    /// The offset after its last record.
    fn end(&self, c: &StreamCore) -> Offset {
        c.segments[self.seg_i].base.plus(self.j as u64)
    }
}

/// The next chunk of about `chunk_bytes` (at least one record) from `offset`, short of `stop`.
fn plan_chunk(c: &StreamCore, offset: Offset, stop: Offset, chunk_bytes: u64) -> Option<Chunk> {
    if offset >= stop {
        return None;
    }
    let mut seg_i = c.segment_index(offset);
    while c.segments.get(seg_i).is_some_and(|s| offset >= s.end()) {
        seg_i += 1;
    }
    let seg = c.segments.get(seg_i)?;
    let i = (offset.get() - seg.base.get()) as usize;
    let from_pos = seg.positions[i];
    let limit = (stop.get() - seg.base.get()).min(seg.positions.len() as u64) as usize;
    let j = seg.positions[..limit].partition_point(|&p| p < from_pos + chunk_bytes).max(i + 1);
    Some(Chunk { seg_i, i, j, from_pos, to_pos: seg.span(j - 1).1 })
}
