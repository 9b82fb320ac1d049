//! Tunables shared by the disk and memory backends.

use bytes::Bytes;

use crate::checkpoint::CheckpointPolicy;
use crate::codec::CodecKind;
use crate::error::{Result, StorageError};
use crate::limits;
use crate::types::StreamId;

/// The default [`StorageOptions::page_cache_keep_bytes`]: 4 MiB of each active segment's synced
/// tail (at 100 MB/s into one stream, the last ~40 ms of writes).
pub const DEFAULT_PAGE_CACHE_KEEP_BYTES: u64 = 4 << 20;

/// The default [`StorageOptions::page_cache_budget_bytes`]: 64 MiB of synced tails, every
/// stream's together (sixteen streams' full tails).
pub const DEFAULT_PAGE_CACHE_BUDGET_BYTES: u64 = 64 << 20;

/// How a storage instance behaves. Every limit is enforced with a typed error naming it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// A segment is sealed and a new one started once the next record would take it past this size
    /// (a segment always takes at least one record).
    pub max_segment_bytes: u64,
    /// The largest single event accepted by `append_batch`; also the bound at which a read takes a
    /// record's declared length for damage. Default [`limits::STORAGE_RECORD_BYTES`], what a node
    /// runs with.
    pub max_record_bytes: usize,
    /// The largest total payload of one `append_batch` call. Default
    /// [`limits::STORAGE_BATCH_BYTES`].
    pub max_batch_bytes: usize,
    /// When checkpoints are written without being asked for.
    pub checkpoint_policy: CheckpointPolicy,
    /// The codec new records are compressed with (kept only where it makes a record smaller).
    pub codec: CodecKind,
    /// Whether a batch of 64 KiB or more is prepared (compressed, hashed, encoded) on a helper
    /// thread while the appending thread writes it. The two threads poll for each other only
    /// while the other is seen working (or batches come back to back), else sleep; turn it off to
    /// keep every append on its caller's thread. The memory backend ignores it.
    pub prepare_ahead: bool,
    /// After an fsync, how many of a segment's bytes before its synced end stay in the OS page
    /// cache: older synced bytes are dropped from it (`posix_fadvise(DONTNEED)`, in steps of at
    /// least 1 MiB), so a busy stream's writes reuse
    /// the pages it freed instead of growing the cache, and readers near the tail (the usual
    /// consumer, a follower's catch-up) still read from memory. Older bytes are read from the disk
    /// when asked for. `None` leaves the cache to the OS. Advice only: no effect on what is stored
    /// or durable; the memory backend ignores it.
    pub page_cache_keep_bytes: Option<u64>,
    /// The most synced bytes all streams together leave in the OS page cache (the tails
    /// `page_cache_keep_bytes` keeps, summed over every stream's active segment): when a sync
    /// takes the sum past it, the tails synced longest ago are dropped whole. Hundreds of streams written in turn
    /// would otherwise each keep a tail while they wait for their next write, and together take
    /// gigabytes of pages. `None`: no shared limit. Ignored without `page_cache_keep_bytes`.
    pub page_cache_budget_bytes: Option<u64>,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: 64 << 20,
            max_record_bytes: limits::STORAGE_RECORD_BYTES,
            max_batch_bytes: limits::STORAGE_BATCH_BYTES,
            checkpoint_policy: CheckpointPolicy::default(),
            codec: CodecKind::None,
            prepare_ahead: true,
            page_cache_keep_bytes: Some(DEFAULT_PAGE_CACHE_KEEP_BYTES),
            page_cache_budget_bytes: Some(DEFAULT_PAGE_CACHE_BUDGET_BYTES),
        }
    }
}

impl StorageOptions {
    /// Rejects settings no storage can run with.
    pub fn validate(&self) -> Result<()> {
        if self.max_segment_bytes < 4096 {
            return Err(StorageError::InvalidConfig(format!(
                "max_segment_bytes is {}, it must be at least 4096",
                self.max_segment_bytes
            )));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u32::MAX as usize / 2 {
            return Err(StorageError::InvalidConfig(format!(
                "max_record_bytes is {}, it must be between 1 and {}",
                self.max_record_bytes,
                u32::MAX / 2
            )));
        }
        if self.max_batch_bytes < self.max_record_bytes {
            return Err(StorageError::InvalidConfig(format!(
                "max_batch_bytes ({}) must be at least max_record_bytes ({})",
                self.max_batch_bytes, self.max_record_bytes
            )));
        }
        Ok(())
    }

    /// Checks a batch against the limits, as both backends do before an append: not empty, no
    /// event over `max_record_bytes` (the first one over is named), at most `max_batch_bytes` in
    /// all. Nothing else is looked at, so a rejected batch never touches (or creates) its stream.
    /// A typed error, not an assertion: the storage is a public API of its own that callers reach
    /// with unchecked input (see [`crate::limits`]).
    pub(crate) fn check_batch(&self, stream: StreamId, events: &[Bytes]) -> Result<()> {
        if events.is_empty() {
            return Err(StorageError::EmptyBatch { stream });
        }
        let mut total = 0usize;
        for (index, e) in events.iter().enumerate() {
            if e.len() > self.max_record_bytes {
                return Err(StorageError::RecordTooLarge { stream, index, size: e.len(), max: self.max_record_bytes });
            }
            total += e.len();
        }
        if total > self.max_batch_bytes {
            return Err(StorageError::BatchTooLarge {
                stream,
                count: events.len(),
                bytes: total,
                max_bytes: self.max_batch_bytes,
            });
        }
        Ok(())
    }
}
