//! Dropping synced bytes from the OS page cache once they are well behind a stream's end
//! ([`crate::StorageOptions::page_cache_keep_bytes`]), and once the tails all streams keep
//! together pass a shared budget ([`crate::StorageOptions::page_cache_budget_bytes`]).
//!
//! An append log writes each byte once and, in the usual case, reads it back only while it is
//! new (a consumer at the tail, a follower catching up from the leader's entry cache). Left to
//! itself, the OS keeps every written page cached until memory runs short, so a busy stream keeps
//! taking pages the machine has never used: on a VM whose host backs guest memory lazily, such a
//! page costs several times the copy itself (README "Page cache behind the tail"), and on any
//! machine the cache crowds out memory other streams and processes could use. After each fsync of
//! a segment, [`CachedTails::after_sync`] advises the OS to drop the synced bytes more than
//! `keep` behind that sync's end, in steps of at least [`CACHE_DROP_STEP_BYTES`] (one
//! `posix_fadvise` per step, not per fsync), so a busy stream's next writes reuse the pages it
//! freed.
//!
//! A tail of `keep` bytes per stream is cheap with a few busy streams, not with hundreds written
//! in turn (a keyless producer's sticky runs over a 300-partition topic): each keeps its tail
//! while it waits for its next run, so together they hold gigabytes and every write lands on a
//! page the machine never used. The storage therefore counts every active segment's kept tail
//! (synced, not dropped) against one budget: when a sync takes the total past it, the tails synced
//! longest ago are dropped whole (their streams are not being written, or they would have synced
//! since), until the total is within the budget again. The stream just synced keeps its own tail.
//! A sealed segment's tail is left to the OS as before (counting it would hold its file open after
//! retention removed it): one counted segment per stream.
//!
//! Only bytes an fsync covered are ever named: dropping dirty pages would make the kernel write
//! them back early, and a range not yet durable may still change (`truncate_from`). The advice
//! changes nothing a reader or a recovery sees; it is never an error for the stream (a failed
//! advice is logged and the stream goes on).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::io::FsFile;
use crate::types::StreamId;

/// Fewest bytes one drop names (besides a sealed segment's last drop): a stream writing small
/// batches advises the OS once per MiB, not once per fsync.
pub(crate) const CACHE_DROP_STEP_BYTES: u64 = 1 << 20;

/// The page size drop ranges are aligned to (the kernel drops whole pages only).
const PAGE_BYTES: u64 = 4096;

/// A stream's active segment's synced bytes still in the page cache: `[dropped, synced)`.
#[derive(Debug)]
struct Tail {
    /// The segment's sequence number.
    seq: u64,
    file: Arc<dyn FsFile>,
    /// Bytes below this were dropped (a page boundary).
    dropped: u64,
    /// The segment's synced end, as the last sync of it reported it.
    synced: u64,
    /// When it was last synced (the key in [`Tails::by_age`]).
    tick: u64,
}

impl Tail {
    fn cached(&self) -> u64 {
        self.synced.saturating_sub(self.dropped)
    }
}

#[derive(Debug, Default)]
struct Tails {
    /// Per stream, the tail of the segment it synced last (one segment per stream is counted).
    by_stream: HashMap<StreamId, Tail>,
    /// Streams by the tick of their last sync, oldest first.
    by_age: BTreeMap<u64, StreamId>,
    next_tick: u64,
    /// The sum of every tail's cached bytes.
    total: u64,
}

impl Tails {
    /// Removes `stream`'s tail, returning it.
    fn remove(&mut self, stream: StreamId) -> Option<Tail> {
        let tail = self.by_stream.remove(&stream)?;
        self.by_age.remove(&tail.tick);
        self.total -= tail.cached();
        Some(tail)
    }

    /// Counts `tail` as `stream`'s.
    fn insert(&mut self, stream: StreamId, tail: Tail) {
        self.total += tail.cached();
        self.by_age.insert(tail.tick, stream);
        self.by_stream.insert(stream, tail);
    }
}

/// A range to advise the OS to drop.
type Advice = (Arc<dyn FsFile>, StreamId, u64, u64, u64);

/// The synced tails of every segment of one storage that are still in the page cache.
#[derive(Debug)]
pub(crate) struct CachedTails {
    /// Bytes of each segment's synced tail left cached; `None`: never drop.
    keep: Option<u64>,
    /// The most bytes all tails together keep; `None`: no shared limit.
    budget: Option<u64>,
    tails: Mutex<Tails>,
}

impl CachedTails {
    pub fn new(keep: Option<u64>, budget: Option<u64>) -> Self {
        Self { keep, budget, tails: Mutex::new(Tails::default()) }
    }

    /// Called after an fsync of segment `seq` of `stream` made its first `synced_len` bytes
    /// durable: drops the bytes more than `keep` before `synced_len` that are not dropped yet,
    /// once they are at least [`CACHE_DROP_STEP_BYTES`] (with `sealed`, the segment gets no more
    /// writes, so what is left below that point is dropped however little it is); then, while the
    /// tails of all segments pass the budget, drops the tails synced longest ago whole.
    pub fn after_sync(&self, stream: StreamId, file: &Arc<dyn FsFile>, seq: u64, synced_len: u64, sealed: bool) {
        let Some(keep) = self.keep else { return };
        let mut drops: Vec<Advice> = Vec::new();
        {
            let mut t = self.tails.lock();
            let tick = t.next_tick;
            t.next_tick += 1;
            // A sync of another segment starts the count over at 0 for that one (a new segment;
            // or, rarely, a late sync of the one just sealed, after which the new one's bytes are
            // named again: advice given twice costs a syscall, nothing else).
            let mut tail = match t.remove(stream) {
                Some(tail) if tail.seq == seq => tail,
                _ => Tail { seq, file: file.clone(), dropped: 0, synced: 0, tick },
            };
            tail.tick = tick;
            tail.synced = tail.synced.max(synced_len);
            let end = synced_len.saturating_sub(keep) / PAGE_BYTES * PAGE_BYTES;
            let step = if sealed { PAGE_BYTES } else { CACHE_DROP_STEP_BYTES };
            if end >= tail.dropped + step {
                drops.push((file.clone(), stream, seq, tail.dropped, end));
                tail.dropped = end;
            }
            if sealed {
                // A sealed segment's kept tail is left to the OS, as it was before the budget:
                // counting it would hold its file open after retention removed it. Only the
                // segment each stream writes is counted.
                drop(t);
                return Self::advise(drops);
            }
            t.insert(stream, tail);
            if let Some(budget) = self.budget {
                while t.total > budget {
                    let Some((_, &oldest)) = t.by_age.first_key_value() else { break };
                    if oldest == stream {
                        break; // only this stream's own tail is left: `keep` bounds it
                    }
                    let old = t.remove(oldest).expect("every aged stream has a tail");
                    // Its whole synced tail, to the page its synced end falls in.
                    let end = old.synced / PAGE_BYTES * PAGE_BYTES;
                    if end > old.dropped {
                        drops.push((old.file.clone(), oldest, old.seq, old.dropped, end));
                    }
                    // The tail is no longer counted: the part of a page left cached is too small
                    // to track, and a later sync of the segment starts it over (naming bytes
                    // dropped before again costs a syscall, nothing else).
                }
            }
        }
        Self::advise(drops);
    }

    /// Gives the advice (outside the lock).
    fn advise(drops: Vec<Advice>) {
        for (file, stream, seq, start, end) in drops {
            debug_assert!(start < end, "an empty drop");
            if let Err(e) = file.drop_cached(start, end) {
                tracing::debug!(%stream, segment = seq, start, end, error = %e, "page cache advice failed");
            }
        }
    }

    /// After `truncate_from` made segment `seq` of `stream`, cut to `len` bytes, the active one:
    /// a tail counted for a later segment (now gone) stops counting, and the bytes written there
    /// again are new and dropped once synced (an older segment that became active again was
    /// dropped when it was sealed; its next sync starts its count over).
    pub fn truncated(&self, stream: StreamId, seq: u64, len: u64) {
        let mut t = self.tails.lock();
        if let Some(mut tail) = t.remove(stream)
            && tail.seq == seq
        {
            tail.synced = tail.synced.min(len);
            tail.dropped = tail.dropped.min(len) / PAGE_BYTES * PAGE_BYTES;
            t.insert(stream, tail);
        }
    }

    /// Stops counting `stream`'s tail (it was deleted, or is opened again), and lets its file go.
    pub fn forget(&self, stream: StreamId) {
        self.tails.lock().remove(stream);
    }

    /// The bytes all tails keep cached (synced, not dropped), as counted.
    #[cfg(test)]
    pub fn cached_bytes(&self) -> u64 {
        self.tails.lock().total
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::io::{FileSystem, OpenMode};
    use crate::testing::FaultyFileSystem;

    const MIB: u64 = 1 << 20;

    /// A synced file of `len` bytes at `path`.
    fn synced_file(fs: &FaultyFileSystem, path: &str, len: u64) -> Arc<dyn FsFile> {
        let f = fs.open(Path::new(path), OpenMode::CreateNew).unwrap();
        f.write_all_at(&vec![7; len as usize], 0).unwrap();
        f.sync_data().unwrap();
        f
    }

    fn furthest_drop(fs: &FaultyFileSystem, path: &str) -> u64 {
        fs.cache_drops(&PathBuf::from(path)).iter().map(|d| d.1).max().unwrap_or(0)
    }

    #[test]
    fn past_the_budget_the_tails_synced_longest_ago_are_dropped_whole() {
        let fs = FaultyFileSystem::new();
        let tails = CachedTails::new(Some(MIB), Some(2 * MIB + MIB / 2));
        let files: Vec<Arc<dyn FsFile>> = (0..4).map(|i| synced_file(&fs, &format!("/s{i}"), 3 * MIB)).collect();
        for (i, f) in files.iter().enumerate().take(2) {
            tails.after_sync(StreamId::new(i as u64), f, 0, 3 * MIB, false);
        }
        // Each dropped up to its 1 MiB tail; two tails are within the budget.
        assert_eq!(tails.cached_bytes(), 2 * MIB);
        assert_eq!((furthest_drop(&fs, "/s0"), furthest_drop(&fs, "/s1")), (2 * MIB, 2 * MIB));
        // A third passes it: the oldest (stream 0) goes whole.
        tails.after_sync(StreamId::new(2), &files[2], 0, 3 * MIB, false);
        assert_eq!(furthest_drop(&fs, "/s0"), 3 * MIB);
        assert_eq!(furthest_drop(&fs, "/s1"), 2 * MIB);
        assert_eq!(tails.cached_bytes(), 2 * MIB);
        // Stream 1 syncs again (more written): now stream 2 is the oldest and goes for stream 3.
        tails.after_sync(StreamId::new(1), &files[1], 0, 3 * MIB, false);
        tails.after_sync(StreamId::new(3), &files[3], 0, 3 * MIB, false);
        assert_eq!(furthest_drop(&fs, "/s2"), 3 * MIB);
        assert_eq!(furthest_drop(&fs, "/s1"), 2 * MIB);
        assert_eq!(tails.cached_bytes(), 2 * MIB);
        assert_eq!(fs.undurable_cache_drops(), 0);
    }

    #[test]
    fn a_tail_alone_over_the_budget_is_bounded_by_keep_only() {
        let fs = FaultyFileSystem::new();
        let tails = CachedTails::new(Some(2 * MIB), Some(MIB));
        let f = synced_file(&fs, "/s", 5 * MIB);
        tails.after_sync(StreamId::new(1), &f, 0, 5 * MIB, false);
        assert_eq!(furthest_drop(&fs, "/s"), 3 * MIB);
        assert_eq!(tails.cached_bytes(), 2 * MIB);
    }

    #[test]
    fn a_forgotten_or_truncated_stream_stops_counting_what_it_no_longer_holds() {
        let fs = FaultyFileSystem::new();
        let tails = CachedTails::new(Some(MIB), None);
        let (a, b) = (synced_file(&fs, "/a", 3 * MIB), synced_file(&fs, "/b", 3 * MIB));
        tails.after_sync(StreamId::new(1), &a, 0, 3 * MIB, false);
        tails.after_sync(StreamId::new(2), &b, 0, 3 * MIB, false);
        assert_eq!(tails.cached_bytes(), 2 * MIB);
        tails.forget(StreamId::new(1));
        assert_eq!(tails.cached_bytes(), MIB);
        // Cut back to 2.5 MiB: segment 0 of stream 2 holds [2 MiB, 2.5 MiB) of cached synced bytes.
        tails.truncated(StreamId::new(2), 0, 2 * MIB + MIB / 2);
        assert_eq!(tails.cached_bytes(), MIB / 2);
        tails.forget(StreamId::new(2));
        assert_eq!(tails.cached_bytes(), 0);
    }

    #[test]
    fn a_sealed_segment_is_dropped_to_its_tail_and_then_left_to_the_os() {
        let fs = FaultyFileSystem::new();
        let tails = CachedTails::new(Some(MIB), Some(64 * MIB));
        let (s0, s1) = (synced_file(&fs, "/s0", 3 * MIB), synced_file(&fs, "/s1", 2 * MIB));
        tails.after_sync(StreamId::new(1), &s0, 0, 2 * MIB, false);
        assert_eq!(tails.cached_bytes(), MIB);
        // Sealed at 3 MiB: dropped to its 1 MiB tail, which is no longer counted.
        tails.after_sync(StreamId::new(1), &s0, 0, 3 * MIB, true);
        assert_eq!(furthest_drop(&fs, "/s0"), 2 * MIB);
        assert_eq!(tails.cached_bytes(), 0);
        // A late sync of the sealed segment counts it again until the next segment's first sync.
        tails.after_sync(StreamId::new(1), &s0, 0, 3 * MIB, false);
        assert_eq!(tails.cached_bytes(), MIB);
        tails.after_sync(StreamId::new(1), &s1, 1, 2 * MIB, false);
        assert_eq!(tails.cached_bytes(), MIB, "only the active segment counts");
    }
}
