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

use std::collections::VecDeque;

use shale_storage::ChainHash;

use crate::types::{Entry, EntryPayload};

/// A bounded, contiguous in-memory tail of the log.
#[derive(Debug, Default)]
pub struct EntryCache {
    /// Each entry with its record's chain hash, as the append that stored it computed it.
    entries: VecDeque<(Entry, ChainHash)>,
    bytes: usize,
    max_bytes: usize,
}

/// What an entry counts against the budget: its payload plus a fixed overhead.
fn cost(e: &Entry) -> usize {
    64 + match &e.payload {
        EntryPayload::Normal(p) => p.0.len(),
        EntryPayload::Membership(_) => 256,
        EntryPayload::Blank => 0,
    }
}

impl EntryCache {
    /// An empty cache holding at most about `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self { entries: VecDeque::new(), bytes: 0, max_bytes }
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
            self.bytes -= cost(&e);
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
            self.bytes += cost(&e);
            self.entries.push_back((e, *h));
        }
        self.evict();
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
            self.bytes -= cost(&e);
        }
    }

    /// Forgets everything (after a checkpoint install restarted or re-anchored the stream).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
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
        Entry { log_id: log_id(1, 1, i), payload: EntryPayload::Normal(AppPayload(vec![0u8; len].into())) }
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
