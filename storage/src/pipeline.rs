//! The two-stage append pipeline.
//!
//! Stage 1 ([`PreparedBatch::prepare`]) validates a batch, compresses each payload (kept only
//! when smaller), chains the SHA-256 hashes and encodes every record into one contiguous buffer.
//! It needs nothing from the disk, only the chain head the batch continues from, so it can run
//! for batch k+1 while stage 2 ([`crate::Storage::commit`]) writes batch k with one positional
//! write per segment touched and, if asked, waits for a (shared) fsync.
//!
//! [`AppendPipeline`] runs the two stages on two threads for a sequence of batches;
//! [`crate::Storage::append_batch`] runs them back to back, except that a large batch is prepared
//! part by part on the storage's preparing thread while the caller writes it (`prepare_ahead.rs`).

use std::ops::Range;

use bytes::Bytes;

use crate::chain::chain_hash;
use crate::codec::{Codec, compress_payload};
use crate::disk::{Storage, now_ms};
use crate::error::{Result, StorageError};
use crate::options::StorageOptions;
use crate::record::{encode_record, seal_record};
use crate::types::{ChainHash, Offset, StreamId};

/// A batch encoded, compressed and hashed, ready to be written at [`PreparedBatch::base`].
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    pub(crate) stream: StreamId,
    pub(crate) base: Offset,
    pub(crate) prev_hash: ChainHash,
    /// The payloads, kept (cheap `Bytes` clones) so the batch can be re-hashed if the stream's
    /// head changed between preparation and commit (a truncation and re-append at the same offset).
    pub(crate) events: Vec<Bytes>,
    /// Every record, back to back, exactly as it goes to disk.
    pub(crate) encoded: Vec<u8>,
    /// `starts[i]` is where record `i` begins in `encoded`; `starts[len]` is `encoded.len()`.
    pub(crate) starts: Vec<usize>,
    /// Chain hash of each record.
    pub(crate) hashes: Vec<ChainHash>,
    pub(crate) append_time_ms: u64,
    /// Whether every record's CRC is filled in (see [`PreparedBatch::seal`]); only sealed
    /// batches are written.
    pub(crate) sealed: bool,
}

/// Checks a batch against the limits, in the same order as [`crate::MemoryStorage`].
pub(crate) fn validate_batch(stream: StreamId, events: &[Bytes], options: &StorageOptions) -> Result<()> {
    if events.is_empty() {
        return Err(StorageError::EmptyBatch { stream });
    }
    let mut total = 0usize;
    for (index, e) in events.iter().enumerate() {
        if e.len() > options.max_record_bytes {
            return Err(StorageError::RecordTooLarge { stream, index, size: e.len(), max: options.max_record_bytes });
        }
        total += e.len();
    }
    if total > options.max_batch_bytes {
        return Err(StorageError::BatchTooLarge {
            stream,
            count: events.len(),
            bytes: total,
            max_bytes: options.max_batch_bytes,
        });
    }
    Ok(())
}

impl PreparedBatch {
    /// Stage 1: validates `events` against `options`, then encodes them as records
    /// `base, base + 1, ...` continuing the chain from `prev_hash` (the hash of record `base - 1`).
    pub fn prepare(
        stream: StreamId,
        base: Offset,
        prev_hash: ChainHash,
        events: Vec<Bytes>,
        options: &StorageOptions,
        codec: &dyn Codec,
    ) -> Result<Self> {
        validate_batch(stream, &events, options)?;
        if base == Offset::ZERO && prev_hash != ChainHash::ZERO {
            return Err(StorageError::InvalidConfig("a batch at offset 0 must continue from the zero hash".into()));
        }
        let append_time_ms = now_ms();
        let payload_bytes: usize = events.iter().map(Bytes::len).sum();
        let mut encoded = Vec::with_capacity(payload_bytes + events.len() * crate::format::record::OVERHEAD);
        let mut starts = Vec::with_capacity(events.len() + 1);
        let mut hashes = Vec::with_capacity(events.len());
        let mut prev = prev_hash;
        for (i, payload) in events.iter().enumerate() {
            let offset = base.plus(i as u64);
            let hash = chain_hash(offset, &prev, payload);
            let (codec_id, compressed) = compress_payload(codec, payload);
            starts.push(encoded.len());
            let stored = compressed.as_deref().unwrap_or(payload);
            encode_record(&mut encoded, offset, codec_id, append_time_ms, &prev, payload.len(), stored);
            hashes.push(hash);
            prev = hash;
        }
        starts.push(encoded.len());
        let mut batch =
            Self { stream, base, prev_hash, events, encoded, starts, hashes, append_time_ms, sealed: false };
        batch.seal();
        Ok(batch)
    }

    /// Fills in the CRC of every record encoded without one.
    pub(crate) fn seal(&mut self) {
        if !self.sealed {
            for i in 0..self.len() {
                let range = self.byte_range(i, i + 1);
                seal_record(&mut self.encoded[range]);
            }
            self.sealed = true;
        }
    }

    /// The stream it is for.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// The offset of its first record.
    pub fn base(&self) -> Offset {
        self.base
    }

    /// The offset after its last record.
    pub fn next(&self) -> Offset {
        self.base.plus(self.hashes.len() as u64)
    }

    /// The chain hash it continues from.
    pub fn prev_hash(&self) -> ChainHash {
        self.prev_hash
    }

    /// The chain hash of its last record: the stream's head once it is committed.
    pub fn head(&self) -> ChainHash {
        *self.hashes.last().expect("a prepared batch is never empty")
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Always false: empty batches are refused by [`PreparedBatch::prepare`].
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Bytes it takes on disk.
    pub fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    /// Where records `[from, to)` lie in the encoded buffer.
    pub(crate) fn byte_range(&self, from: usize, to: usize) -> Range<usize> {
        self.starts[from]..self.starts[to]
    }

    /// Encoded length of record `i`.
    pub(crate) fn record_len(&self, i: usize) -> usize {
        self.starts[i + 1] - self.starts[i]
    }
}

/// Appends a sequence of batches to one stream with stage 1 (encode, compress, hash) of batch
/// k+1 running on the calling thread while stage 2 (write, fsync) of batch k runs on a helper thread.
#[derive(Debug)]
pub struct AppendPipeline<'a> {
    storage: &'a Storage,
    stream: StreamId,
    fsync: bool,
}

impl<'a> AppendPipeline<'a> {
    /// A pipeline appending to `stream`; with `fsync`, every batch is durable before the next
    /// one's result is counted.
    pub fn new(storage: &'a Storage, stream: StreamId, fsync: bool) -> Self {
        Self { storage, stream, fsync }
    }

    /// Appends every batch of `batches` in order, the first at `expected_offset` (which must be
    /// the stream's next offset). Returns the next offset after the last batch. On the first
    /// error, the batches before it are written and nothing after it is.
    pub fn run<I>(&self, expected_offset: Offset, batches: I) -> Result<Offset>
    where
        I: IntoIterator<Item = Vec<Bytes>>,
    {
        let actual = self.storage.next_offset(self.stream)?;
        if actual != expected_offset {
            return Err(StorageError::OffsetMismatch { stream: self.stream, expected: expected_offset, actual });
        }
        let head = self.storage.latest_chain_hash(self.stream)?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<PreparedBatch>(1);
            let (storage, fsync) = (self.storage, self.fsync);
            let stage2 = scope.spawn(move || -> Result<Offset> {
                let mut next = expected_offset;
                for batch in rx {
                    next = storage.commit(batch, fsync)?;
                }
                Ok(next)
            });
            let (mut base, mut prev) = (expected_offset, head);
            let mut stage1_err = None;
            for events in batches {
                match PreparedBatch::prepare(
                    self.stream,
                    base,
                    prev,
                    events,
                    self.storage.options(),
                    self.storage.codec().as_ref(),
                ) {
                    Ok(batch) => {
                        base = batch.next();
                        prev = batch.head();
                        if tx.send(batch).is_err() {
                            break; // stage 2 stopped on an error it will report
                        }
                    }
                    Err(e) => {
                        stage1_err = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            let written = match stage2.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            match (written, stage1_err) {
                (Err(e), _) | (Ok(_), Some(e)) => Err(e),
                (Ok(next), None) => Ok(next),
            }
        })
    }
}
