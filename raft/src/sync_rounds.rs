//! The node-wide flush round: one [`SyncRounds`] per storage makes the unsynced appends of every
//! Raft group on it durable together, with one [`StorageBackend::sync_streams`] per round,
//! instead of one `sync` (one fsync) per group (issue 15: 300 partitions produced to at once
//! multiplied fsyncs by 300).
//!
//! A group's [`crate::LogStore`] hands each flush operation (entries written, to report flushed;
//! a barrier, to answer) to its storage's `SyncRounds`. At most one round runs at a time; it
//! takes every operation pending from every group, syncs each stream they name once, then
//! completes each operation with its own stream's result, in the order the operations were
//! handed over. Operations handed over while a round runs go into the next one. The rounds run
//! on a blocking-pool thread, not on the runtime: no thread runs them while nothing is pending;
//! the first operation handed over to an idle `SyncRounds` hands the rounds to the blocking pool,
//! whose thread runs rounds until one finds nothing pending.
//!
//! Invariants kept from the per-group flusher this replaces:
//! - an operation completes only after a sync that started after it was handed over (so it
//!   covers every append written before it): a barrier returns once everything written before
//!   it is durable, or with the error of the sync that covered it;
//! - a group's operations complete in the order it handed them over;
//! - a group's [`crate::GroupLog::wait_flusher_stopped`] waits until every operation it handed
//!   over has completed (its shutdown lets the storage go only then).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use openraft::storage::IOFlushed;
use parking_lot::Mutex;
use shale_storage::{StorageBackend, StreamId};
use tokio::sync::oneshot;

use crate::log_store::{GroupLog, io_err};
use crate::types::TypeConfig;

/// One operation of a group's log that waits for a sync of its stream.
pub(crate) enum FlushOp {
    /// Entries written; report them flushed after the next sync.
    Written(IOFlushed<TypeConfig>),
    /// Sync everything written so far, then answer.
    Barrier(oneshot::Sender<Result<(), String>>),
    /// Sync everything written so far to the log and to the group's meta stream (a vote appended
    /// without fsync), then answer with the first error of the two.
    MetaBarrier(oneshot::Sender<Result<(), String>>),
}

impl FlushOp {
    fn complete(self, result: &Result<(), String>) {
        match self {
            FlushOp::Written(cb) => cb.io_completed(result.clone().map_err(io_err)),
            FlushOp::Barrier(tx) | FlushOp::MetaBarrier(tx) => {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// An operation handed over, counted in its group's in-flight flushes until it is dropped
/// (completed, or dropped with a round task that stopped, or with the `SyncRounds`).
struct Pending {
    log: Option<Arc<GroupLog>>,
    op: Option<FlushOp>,
}

impl Pending {
    fn log(&self) -> &Arc<GroupLog> {
        self.log.as_ref().expect("taken only on drop")
    }

    /// The streams of its log a sync must cover before this operation completes: the log's, and
    /// for a [`FlushOp::MetaBarrier`] the group's meta stream too.
    fn streams(&self) -> impl Iterator<Item = StreamId> {
        let meta = matches!(self.op, Some(FlushOp::MetaBarrier(_))).then(|| self.log().meta_stream());
        std::iter::once(self.log().stream()).chain(meta)
    }

    fn complete(mut self, result: &Result<(), String>) {
        if let Some(op) = self.op.take() {
            op.complete(result);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        drop(self.op.take());
        if let Some(log) = self.log.take() {
            // The log goes before its count drops: a shutdown waiting for the count then finds
            // no reference to the log (and so to the storage) left here.
            let flushes = log.in_flight_flushes();
            drop(log);
            flushes.send_modify(|n| *n -= 1);
        }
    }
}

#[derive(Default)]
struct State {
    /// Handed over since the running round took its operations, in order.
    pending: Vec<Pending>,
    /// A round task exists (running a round, or about to look for more).
    running: bool,
}

/// Counters of a [`SyncRounds`], for the node's metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncRoundStats {
    /// Rounds run (each one `sync_streams` call).
    pub rounds: u64,
    /// Streams synced, summed over the rounds (over `rounds`: the streams per round).
    pub streams: u64,
    /// Flush operations completed (entries reported flushed, barriers answered).
    pub ops: u64,
    /// Streams of the largest round so far.
    pub max_streams: u64,
}

/// The shared flush rounds of one storage (see the module docs). Get the one of a storage with
/// [`SyncRounds::for_storage`].
pub struct SyncRounds {
    state: Mutex<State>,
    rounds: AtomicU64,
    streams: AtomicU64,
    ops: AtomicU64,
    max_streams: AtomicU64,
}

impl fmt::Debug for SyncRounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncRounds").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// Every live `SyncRounds`, by the storage it serves (the weak storage pointer keeps its
/// address from being reused while the entry exists).
type Registry = Vec<(Weak<dyn StorageBackend>, Weak<SyncRounds>)>;
static REGISTRY: Mutex<Registry> = Mutex::new(Vec::new());

impl SyncRounds {
    /// The flush rounds of `storage`: every group log on one storage shares them (created on
    /// first use; they live while a log store or a caller holds them).
    pub fn for_storage(storage: &Arc<dyn StorageBackend>) -> Arc<SyncRounds> {
        let mut registry = REGISTRY.lock();
        registry.retain(|(s, r)| s.strong_count() > 0 && r.strong_count() > 0);
        let found = registry
            .iter()
            .find(|(s, _)| std::ptr::addr_eq(s.as_ptr(), Arc::as_ptr(storage)))
            .and_then(|(_, r)| r.upgrade());
        if let Some(rounds) = found {
            return rounds;
        }
        let rounds = Arc::new(SyncRounds {
            state: Mutex::new(State::default()),
            rounds: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            ops: AtomicU64::new(0),
            max_streams: AtomicU64::new(0),
        });
        registry.push((Arc::downgrade(storage), Arc::downgrade(&rounds)));
        rounds
    }

    /// The counters of `storage`'s flush rounds (all zero if none are live: no group log on it
    /// has a log store). Creates nothing.
    pub fn stats_of(storage: &dyn StorageBackend) -> SyncRoundStats {
        let registry = REGISTRY.lock();
        registry
            .iter()
            .filter(|(s, _)| {
                s.strong_count() > 0 && std::ptr::addr_eq(s.as_ptr(), storage as *const dyn StorageBackend)
            })
            .find_map(|(_, r)| r.upgrade())
            .map_or_else(SyncRoundStats::default, |r| r.stats())
    }

    /// The counters so far.
    pub fn stats(&self) -> SyncRoundStats {
        SyncRoundStats {
            rounds: self.rounds.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            max_streams: self.max_streams.load(Ordering::Relaxed),
        }
    }

    /// Hands `op` of `log` over to the next round (which it starts, on the current tokio
    /// runtime, if no round task is running).
    pub(crate) fn submit(self: &Arc<Self>, log: Arc<GroupLog>, op: FlushOp) {
        log.in_flight_flushes().send_modify(|n| *n += 1);
        let start = {
            let mut s = self.state.lock();
            s.pending.push(Pending { log: Some(log), op: Some(op) });
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            // The rounds run on a blocking-pool thread, which makes the fsyncs itself: one hand-off
            // to it and one completion notice back per round (a round task on the runtime that
            // handed each `sync_streams` to the blocking pool woke one more thread per round).
            let mut task = RoundTask { rounds: Arc::clone(self), done: false };
            tokio::task::spawn_blocking(move || task.run());
        }
    }
}

/// The rounds' runner (on a blocking-pool thread); if it is dropped before it is done (its runtime
/// shutting down before it started), the next operation handed over starts a new one.
struct RoundTask {
    rounds: Arc<SyncRounds>,
    done: bool,
}

impl Drop for RoundTask {
    fn drop(&mut self) {
        if !self.done {
            self.rounds.state.lock().running = false;
        }
    }
}

impl RoundTask {
    fn run(&mut self) {
        loop {
            let batch = {
                let mut s = self.rounds.state.lock();
                if s.pending.is_empty() {
                    s.running = false;
                    self.done = true;
                    return;
                }
                std::mem::take(&mut s.pending)
            };
            self.round(batch);
        }
    }

    /// One round: each stream named in `batch` synced once, then every operation completed.
    fn round(&self, batch: Vec<Pending>) {
        // The streams to sync, each once, by storage (one storage per `SyncRounds`, unless a
        // caller shares one `SyncRounds` between storages).
        let mut calls: Vec<(Arc<dyn StorageBackend>, Vec<StreamId>)> = Vec::new();
        let mut seen: HashMap<(usize, StreamId), ()> = HashMap::with_capacity(batch.len());
        for p in &batch {
            let storage = p.log().storage();
            for stream in p.streams() {
                if seen.insert(key_of(storage, stream), ()).is_some() {
                    continue;
                }
                match calls.iter_mut().find(|(s, _)| Arc::ptr_eq(s, storage)) {
                    Some((_, streams)) => streams.push(stream),
                    None => calls.push((Arc::clone(storage), vec![stream])),
                }
            }
        }
        let mut results: HashMap<(usize, StreamId), Result<(), String>> = HashMap::new();
        for (storage, streams) in calls {
            let n = streams.len() as u64;
            self.rounds.rounds.fetch_add(1, Ordering::Relaxed);
            self.rounds.streams.fetch_add(n, Ordering::Relaxed);
            self.rounds.max_streams.fetch_max(n, Ordering::Relaxed);
            let storage_key = key_of(&storage, StreamId::new(0)).0;
            // A panic in the storage fails this round's operations, as an error would, instead of
            // dropping them unanswered.
            let answers =
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| storage.sync_streams(&streams))) {
                    Ok(answers) => answers.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(),
                    Err(_) => vec![Err("log sync panicked".to_string()); streams.len()],
                };
            debug_assert_eq!(answers.len(), streams.len(), "one answer per stream");
            for (i, stream) in streams.into_iter().enumerate() {
                let r = answers.get(i).cloned().unwrap_or_else(|| Err("the storage gave no answer".to_string()));
                results.insert((storage_key, stream), r);
            }
        }
        // Counted before the reports go out: whoever a report wakes sees the count.
        self.rounds.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let result_of = |storage: &Arc<dyn StorageBackend>, stream: StreamId| {
            results
                .get(&key_of(storage, stream))
                .cloned()
                .unwrap_or_else(|| Err("the stream was not synced".to_string()))
        };
        for p in batch {
            // The first error of the streams it needed synced.
            let r = p.streams().map(|stream| result_of(p.log().storage(), stream)).find(Result::is_err);
            p.complete(&r.unwrap_or(Ok(())));
        }
    }
}

/// A stream of a storage, as a map key (the storage by its address: every storage in a round is
/// held by an operation's log meanwhile).
fn key_of(storage: &Arc<dyn StorageBackend>, stream: StreamId) -> (usize, StreamId) {
    (Arc::as_ptr(storage) as *const () as usize, stream)
}
