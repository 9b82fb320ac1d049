//! Dropping a stream's synced bytes from the OS page cache once they are well behind its end
//! ([`crate::StorageOptions::page_cache_keep_bytes`]).
//!
//! An append log writes each byte once and, in the usual case, reads it back only while it is
//! new (a consumer at the tail, a follower catching up from the leader's entry cache). Left to
//! itself, the OS keeps every written page cached until memory runs short, so a busy stream keeps
//! taking pages the machine has never used: on a VM whose host backs guest memory lazily, such a
//! page costs several times the copy itself (README "Page cache behind the tail"), and on any
//! machine the cache crowds out memory other streams and processes could use. After each fsync of
//! a segment, [`DropBehind::after_sync`] advises the OS to drop the synced bytes more than
//! `keep` behind that sync's end, in steps of at least [`CACHE_DROP_STEP_BYTES`] (one
//! `posix_fadvise` per step, not per fsync), so a busy stream's next writes reuse the pages it
//! freed.
//!
//! Only bytes an fsync covered are ever named: dropping dirty pages would make the kernel write
//! them back early, and a range not yet durable may still change (`truncate_from`). The advice
//! changes nothing a reader or a recovery sees; it is never an error for the stream (a failed
//! advice is logged and the stream goes on).

use std::sync::Arc;

use parking_lot::Mutex;

use crate::io::FsFile;
use crate::types::StreamId;

/// Fewest bytes one drop names (besides a sealed segment's last drop): a stream writing small
/// batches advises the OS once per MiB, not once per fsync.
pub(crate) const CACHE_DROP_STEP_BYTES: u64 = 1 << 20;

/// The page size drop ranges are aligned to (the kernel drops whole pages only).
const PAGE_BYTES: u64 = 4096;

/// How far one stream's synced bytes have been dropped from the page cache.
#[derive(Debug)]
pub(crate) struct DropBehind {
    /// Bytes of each segment's synced tail left cached; `None`: never drop.
    keep: Option<u64>,
    /// `(segment seq, byte position)`: the segment `seq`'s bytes below the position were dropped.
    /// A sync of another segment starts it over at 0 for that one (a new segment; or, rarely, a
    /// late sync of the one just sealed, after which the new one's bytes are named again: advice
    /// given twice costs a syscall, nothing else).
    dropped: Mutex<(u64, u64)>,
}

impl DropBehind {
    pub fn new(keep: Option<u64>) -> Self {
        Self { keep, dropped: Mutex::new((0, 0)) }
    }

    /// Called after an fsync of segment `seq` made its first `synced_len` bytes durable: drops the
    /// bytes more than `keep` before `synced_len` that are not dropped yet, once they are at least
    /// [`CACHE_DROP_STEP_BYTES`]; with `sealed`, the segment gets no more writes, so what is left
    /// below that point is dropped however little it is.
    pub fn after_sync(&self, stream: StreamId, file: &Arc<dyn FsFile>, seq: u64, synced_len: u64, sealed: bool) {
        let Some(keep) = self.keep else { return };
        let end = synced_len.saturating_sub(keep) / PAGE_BYTES * PAGE_BYTES;
        let start = {
            let mut d = self.dropped.lock();
            if seq != d.0 {
                *d = (seq, 0);
            }
            let step = if sealed { PAGE_BYTES } else { CACHE_DROP_STEP_BYTES };
            if end < d.1 + step {
                return;
            }
            std::mem::replace(&mut d.1, end)
        };
        debug_assert!(start < end && end <= synced_len, "only synced bytes are dropped");
        if let Err(e) = file.drop_cached(start, end) {
            tracing::debug!(%stream, segment = seq, start, end, error = %e, "page cache advice failed");
        }
    }

    /// After `truncate_from` made segment `seq`, cut to `len` bytes, the active one: the bytes
    /// written there again are new and dropped once synced (an older segment that became active
    /// again was dropped when it was sealed).
    pub fn truncated(&self, seq: u64, len: u64) {
        let mut d = self.dropped.lock();
        if seq == d.0 {
            d.1 = d.1.min(len);
        } else {
            *d = (seq, len);
        }
    }
}
