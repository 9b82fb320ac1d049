//! Stage 1 of an append: a [`PreparedBatch`] is a batch validated, compressed (each payload kept
//! compressed only when smaller), chained and encoded into one contiguous buffer, exactly as it
//! goes to disk. It needs nothing from the disk, only the chain head the batch continues from, so
//! it can be made while another batch is written: by [`crate::AppendPipeline`] for a sequence of
//! batches, and part by part on the storage's preparing thread for one large batch
//! (`prepare_ahead.rs`). Stage 2, writing it, is the disk backend's (`disk/write.rs`).

use std::ops::Range;

use bytes::Bytes;

use crate::chain::chain_hash;
use crate::clock::now_ms;
use crate::codec::{Codec, compress_payload};
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
        options.check_batch(stream, &events)?;
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
