//! The tail of a group's log kept in memory, so replication and apply (which read back what was
//! just appended) do not pay a storage read, verification and decode per entry. Application reads
//! (`RaftGroup::read_committed`) always go to storage.
//!
//! The cache holds a contiguous run of entries `[start, end)`, bounded by payload bytes (oldest
//! evicted first). Every storage mutation of the log updates it: appends extend it (or replace it
//! when not contiguous), truncations cut it, checkpoint installs clear it.
//!
//! Each entry is kept with the chain hash storage computed for its record when it was appended,
//! so a leader acknowledging a write names the entry's hash without hashing the record again.
//!
//! **One budget per node.** Besides its own cap (`max_bytes`, `RaftGroupConfig::log_cache_bytes`),
//! a cache may be registered with the node's [`CacheBudget`]: the bytes of every registered cache
//! count against one total. An append that takes the node over it reclaims memory, least recently
//! appended caches first (idle groups shrink), each down to the budget's per-group floor, then
//! from the appending cache itself; so hot groups keep long tails and idle ones keep a floor. A
//! cache busy in another thread is skipped (`try_lock`: no lock is ever waited for while a cache
//! is held, so caches cannot deadlock each other). What is evicted is read back from storage.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use shale_storage::ChainHash;

use crate::types::{Entry, EntryPayload};

/// Default node-wide budget of all entry caches (`memory.log_cache_bytes`): sized so a node with
/// 3,000 partition replicas stays under 1 GiB of RSS with the groups' other memory.
pub const DEFAULT_NODE_LOG_CACHE_BYTES: usize = 192 << 20;
/// Default floor a cache keeps under pressure (`memory.log_cache_floor_bytes`).
pub const DEFAULT_LOG_CACHE_FLOOR_BYTES: usize = 32 << 10;

/// The node-wide memory budget of the entry caches (cheap to clone: one shared budget).
#[derive(Clone, Debug)]
pub struct CacheBudget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    total_bytes: usize,
    floor_bytes: usize,
    used: AtomicUsize,
    /// A logical clock: each append takes the next tick, kept by its cache as its last use.
    clock: AtomicU64,
    members: Mutex<Vec<Member>>,
}

#[derive(Debug)]
struct Member {
    cache: Weak<Mutex<EntryCache>>,
    last_append: Arc<AtomicU64>,
}

/// A cache's registration with the budget.
#[derive(Debug)]
struct Budgeted {
    budget: CacheBudget,
    last_append: Arc<AtomicU64>,
}

impl CacheBudget {
    /// A budget of `total_bytes` over all registered caches, none squeezed below `floor_bytes`.
    pub fn new(total_bytes: usize, floor_bytes: usize) -> Self {
        Self(Arc::new(BudgetInner {
            total_bytes,
            floor_bytes,
            used: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            members: Mutex::new(Vec::new()),
        }))
    }

    /// The total.
    pub fn total_bytes(&self) -> usize {
        self.0.total_bytes
    }

    /// What no cache is squeezed below.
    pub fn floor_bytes(&self) -> usize {
        self.0.floor_bytes
    }

    /// How many groups the budget can give their floor: the most group replicas a node with this
    /// budget takes (the cluster layer refuses replicas past it).
    pub fn max_groups(&self) -> usize {
        self.0.total_bytes / self.0.floor_bytes.max(1)
    }

    /// Bytes the registered caches hold now.
    pub fn used_bytes(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Caches registered (and alive).
    pub fn caches(&self) -> usize {
        self.0.members.lock().iter().filter(|m| m.cache.strong_count() > 0).count()
    }

    /// Registers `cache`: its bytes count against the budget from now on.
    pub fn register(&self, cache: &Arc<Mutex<EntryCache>>) {
        let last_append = Arc::new(AtomicU64::new(self.0.clock.fetch_add(1, Ordering::Relaxed)));
        let mut c = cache.lock();
        if c.budget.is_some() {
            return;
        }
        self.0.used.fetch_add(c.bytes, Ordering::Relaxed);
        c.budget = Some(Budgeted { budget: self.clone(), last_append: last_append.clone() });
        let mut members = self.0.members.lock();
        members.retain(|m| m.cache.strong_count() > 0);
        members.push(Member { cache: Arc::downgrade(cache), last_append });
    }

    /// Brings the total back to about 15/16 of the budget after an append took it over: least
    /// recently appended caches first, each down to the floor (`own`, the appending cache, is
    /// skipped here: the caller holds it).
    fn reclaim(&self, own: &Arc<AtomicU64>) {
        let inner = &self.0;
        let target = inner.total_bytes - inner.total_bytes / 16;
        let mut members = inner.members.lock();
        members.retain(|m| m.cache.strong_count() > 0);
        members.sort_by_key(|m| m.last_append.load(Ordering::Relaxed));
        for m in members.iter() {
            if inner.used.load(Ordering::Relaxed) <= target {
                return;
            }
            if Arc::ptr_eq(&m.last_append, own) {
                continue;
            }
            let Some(cache) = m.cache.upgrade() else { continue };
            if let Some(mut c) = cache.try_lock() {
                let over = inner.used.load(Ordering::Relaxed).saturating_sub(target);
                c.shrink_by(over, inner.floor_bytes);
            }
        }
    }
}

/// A bounded, contiguous in-memory tail of the log.
#[derive(Debug, Default)]
pub struct EntryCache {
    /// Each entry with its record's chain hash, as the append that stored it computed it.
    entries: VecDeque<(Entry, ChainHash)>,
    bytes: usize,
    max_bytes: usize,
    /// The node budget this cache counts against, if registered.
    budget: Option<Budgeted>,
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.budget.0.used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// What an entry counts against the budget: its payload plus a fixed overhead.
pub(crate) fn cost(e: &Entry) -> usize {
    64 + match &e.payload {
        EntryPayload::Normal(p) => p.0.len(),
        EntryPayload::Membership(_) => 256,
        EntryPayload::Blank => 0,
    }
}

impl EntryCache {
    /// An empty cache holding at most about `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, max_bytes, budget: None }
    }

    /// Bytes held (as the budget counts them).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn add_bytes(&mut self, n: usize) {
        self.bytes += n;
        if let Some(b) = &self.budget {
            b.budget.0.used.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn sub_bytes(&mut self, n: usize) {
        self.bytes -= n;
        if let Some(b) = &self.budget {
            b.budget.0.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Evicts the oldest entries until `want` bytes are freed or the cache is at `floor`.
    fn shrink_by(&mut self, want: usize, floor: usize) {
        let mut freed = 0;
        while freed < want && self.bytes > floor {
            let Some((e, _)) = self.entries.pop_front() else { break };
            let c = cost(&e);
            self.sub_bytes(c);
            freed += c;
        }
    }

    /// The first cached index.
    pub fn start(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn end(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Changes the budget; evicts the oldest entries down to it.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.max_bytes {
            let Some((e, _)) = self.entries.pop_front() else { break };
            self.sub_bytes(cost(&e));
        }
    }

    /// After an append: marks this cache used now and, if the node is over its budget, reclaims
    /// from the least recently used caches, then from this one (down to the floor).
    fn keep_to_budget(&mut self) {
        let Some(b) = &self.budget else { return };
        let inner = b.budget.0.clone();
        b.last_append.store(inner.clock.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        if inner.used.load(Ordering::Relaxed) <= inner.total_bytes {
            return;
        }
        let own = b.last_append.clone();
        CacheBudget(inner.clone()).reclaim(&own);
        let over = inner.used.load(Ordering::Relaxed).saturating_sub(inner.total_bytes - inner.total_bytes / 16);
        if over > 0 {
            self.shrink_by(over, inner.floor_bytes);
        }
    }

    /// Records entries just appended to storage (consecutive indexes), each with the chain hash
    /// the append computed for its record (`hashes[i]` is `new[i]`'s).
    pub fn appended(&mut self, new: Vec<Entry>, hashes: &[ChainHash]) {
        debug_assert_eq!(new.len(), hashes.len(), "one chain hash per entry");
        let Some(first) = new.first() else { return };
        if self.end() != Some(first.log_id.index) {
            self.clear();
        }
        for (e, h) in new.into_iter().zip(hashes) {
            debug_assert!(self.end().is_none_or(|end| end == e.log_id.index), "cache entries are contiguous");
            self.add_bytes(cost(&e));
            self.entries.push_back((e, *h));
        }
        self.evict();
        self.keep_to_budget();
    }

    /// The chain hash of the cached entry at `index` (as its append computed it), if cached.
    pub fn chain_hash(&self, index: u64) -> Option<ChainHash> {
        let start = self.start()?;
        let i = usize::try_from(index.checked_sub(start)?).ok()?;
        self.entries.get(i).map(|(_, h)| *h)
    }

    /// Drops every entry at or above `index` (after a storage truncation).
    pub fn truncated_from(&mut self, index: u64) {
        while self.end().is_some_and(|end| end > index) {
            let (e, _) = self.entries.pop_back().expect("non-empty");
            self.sub_bytes(cost(&e));
        }
    }

    /// Forgets everything (after a checkpoint install restarted or re-anchored the stream).
    pub fn clear(&mut self) {
        self.entries.clear();
        let bytes = self.bytes;
        self.sub_bytes(bytes);
    }

    /// The cached entries in `[from, end)`, stopping once about `max_bytes` are taken (always at
    /// least one), if the cache holds `from`; `None` if `from` is below or past the cached run.
    pub fn get(&self, from: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let start = self.start()?;
        if from < start || from >= self.end()? {
            return None;
        }
        let skip = (from - start) as usize;
        let take = end.saturating_sub(from) as usize;
        let mut out = Vec::with_capacity(take.min(self.entries.len() - skip));
        let mut bytes = 0;
        for (e, _) in self.entries.iter().skip(skip).take(take) {
            if !out.is_empty() && bytes + cost(e) > max_bytes {
                break;
            }
            bytes += cost(e);
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AppPayload, log_id};

    fn e(i: u64, len: usize) -> Entry {
        Entry { log_id: log_id(1, 1, i), payload: EntryPayload::Normal(AppPayload::new(vec![0u8; len].into())) }
    }

    /// A distinct stand-in hash per index.
    fn h(i: u64) -> ChainHash {
        ChainHash([i as u8; 32])
    }

    fn append(c: &mut EntryCache, entries: Vec<Entry>) {
        let hashes: Vec<ChainHash> = entries.iter().map(|e| h(e.log_id.index)).collect();
        c.appended(entries, &hashes);
    }

    #[test]
    fn serves_contiguous_runs_and_evicts_oldest() {
        let mut c = EntryCache::new(3 * (64 + 100));
        append(&mut c, vec![e(5, 100), e(6, 100)]);
        append(&mut c, vec![e(7, 100), e(8, 100)]);
        // 4 entries over a budget of 3: entry 5 was evicted.
        let all = usize::MAX;
        assert!(c.get(5, 9, all).is_none());
        let got: Vec<u64> = c.get(6, 100, all).unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, vec![6, 7, 8]);
        // A byte budget bounds the run, but never below one entry.
        assert_eq!(c.get(6, 100, 2 * (64 + 100)).unwrap().len(), 2);
        assert_eq!(c.get(6, 100, 1).unwrap().len(), 1);
        assert!(c.get(9, 10, all).is_none());
        c.truncated_from(7);
        assert_eq!(c.get(6, 100, all).unwrap().len(), 1);
        // A non-contiguous append replaces the run.
        append(&mut c, vec![e(20, 1)]);
        assert!(c.get(6, 7, all).is_none());
        assert_eq!(c.get(20, 21, all).unwrap().len(), 1);
        c.clear();
        assert!(c.get(20, 21, all).is_none());
    }

    fn shared(max_bytes: usize, budget: &CacheBudget) -> Arc<Mutex<EntryCache>> {
        let c = Arc::new(Mutex::new(EntryCache::new(max_bytes)));
        budget.register(&c);
        c
    }

    fn fill(c: &Arc<Mutex<EntryCache>>, from: u64, n: u64, len: usize) {
        let entries: Vec<Entry> = (from..from + n).map(|i| e(i, len)).collect();
        append(&mut c.lock(), entries);
    }

    #[test]
    fn caches_share_one_node_budget_where_the_hot_group_grows_and_idle_ones_shrink_to_the_floor() {
        let entry = 64 + 1000;
        let budget = CacheBudget::new(100 * entry, 10 * entry);
        assert_eq!(budget.max_groups(), 10);
        let idle: Vec<_> = (0..4).map(|_| shared(16 << 20, &budget)).collect();
        for c in &idle {
            fill(c, 1, 20, 1000);
        }
        assert_eq!(budget.used_bytes(), 80 * entry, "every cache counts");
        assert_eq!(budget.caches(), 4);
        // A hot group appends far more than the budget: the node total stays within it, the idle
        // caches give up their tails down to the floor, the hot one holds the rest.
        let hot = shared(16 << 20, &budget);
        for k in 0..50 {
            fill(&hot, 1 + k * 10, 10, 1000);
            assert!(budget.used_bytes() <= budget.total_bytes(), "within the budget after append {k}");
        }
        for c in &idle {
            assert_eq!(c.lock().bytes(), 10 * entry, "an idle cache keeps its floor");
        }
        let hot_bytes = hot.lock().bytes();
        assert!(hot_bytes >= 50 * entry, "the hot cache keeps the most: {hot_bytes}");
        assert!(hot_bytes > 4 * idle[0].lock().bytes());
        // The hot cache serves its newest entries.
        assert_eq!(hot.lock().get(500, 501, usize::MAX).map(|v| v.len()), Some(1));
        // A cache that goes away returns its bytes.
        drop(hot);
        assert_eq!(budget.used_bytes(), 40 * entry);
        assert_eq!(budget.caches(), 4);
        // Truncation and clearing are counted too.
        idle[0].lock().truncated_from(15);
        idle[1].lock().clear();
        assert_eq!(budget.used_bytes(), 20 * entry + 4 * entry);
    }

    #[test]
    fn keeps_each_entrys_chain_hash_in_step_with_the_entries() {
        let mut c = EntryCache::new(3 * (64 + 100));
        assert_eq!(c.chain_hash(0), None);
        append(&mut c, vec![e(5, 100), e(6, 100)]);
        append(&mut c, vec![e(7, 100), e(8, 100)]);
        // Entry 5 was evicted with its hash; the others answer theirs.
        assert_eq!(c.chain_hash(5), None);
        assert_eq!((6..9).map(|i| c.chain_hash(i)).collect::<Vec<_>>(), vec![Some(h(6)), Some(h(7)), Some(h(8))]);
        assert_eq!(c.chain_hash(9), None);
        // Truncated entries lose their hashes; re-appended ones carry the new append's.
        c.truncated_from(8);
        assert_eq!(c.chain_hash(8), None);
        c.appended(vec![e(8, 100)], &[ChainHash([0xEE; 32])]);
        assert_eq!(c.chain_hash(8), Some(ChainHash([0xEE; 32])));
        c.clear();
        assert_eq!(c.chain_hash(7), None);
    }
}
