//! The threads that fsync streams side by side for [`crate::StorageBackend::sync_streams`].
//!
//! A flush round syncs tens to hundreds of streams; their fsyncs in flight together cost the
//! device about as much as one or two (see `benches/sync_rounds.rs`), so they run on several
//! threads at once. Those threads are kept: a round used to start its helpers as scoped threads
//! and end them with it, and under load (thousands of rounds a second across a node's groups)
//! starting and ending threads (stack mappings, page faults, clone and exit) cost more CPU than
//! the fsyncs they ran (issue 15). [`SyncHelpers`] starts a helper the first time a round wants
//! more than are idle, up to its limit, and keeps it waiting for the next round.
//!
//! A round ([`SyncCall`]) is worked on by its caller too: the caller and every helper that joins
//! take the next stream of the list in turn, so a round never waits for a helper that is busy or
//! could not be started; a helper that comes late finds the list done and goes back to wait. The
//! caller returns once every stream of the list has its answer.
//!
//! Helpers hold no reference to the storage, only to the round they work on; they end when
//! their [`SyncHelpers`] is dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Condvar, Mutex};

use super::stream::Stream;
use crate::error::Result;

/// One stream's answer in a round, or the panic its sync ended in.
type Answer = std::thread::Result<Result<()>>;

/// One `sync_streams` round: the streams to make durable and their answers.
#[derive(Debug)]
struct SyncCall {
    streams: Vec<Arc<Stream>>,
    /// The next stream of `streams` a worker takes.
    next: AtomicUsize,
    /// Each stream's answer (or the panic its sync ended in), in the order of `streams`, and how
    /// many are in.
    answers: Mutex<(Vec<Option<Answer>>, usize)>,
    /// Signalled when the last answer is in.
    all_in: Condvar,
}

impl SyncCall {
    fn new(streams: Vec<Arc<Stream>>) -> Self {
        let n = streams.len();
        Self {
            streams,
            next: AtomicUsize::new(0),
            answers: Mutex::new(((0..n).map(|_| None).collect(), 0)),
            all_in: Condvar::new(),
        }
    }

    /// Takes the next stream of the list and syncs it, until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(stream) = self.streams.get(i) else { return };
            // A panic is carried to the caller (as scoped threads' joins did), so an answer is in
            // for every stream and the helper lives on.
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stream.sync_records()));
            let mut answers = self.answers.lock();
            debug_assert!(answers.0[i].is_none(), "each stream is synced once per round");
            answers.0[i] = Some(answer);
            answers.1 += 1;
            if answers.1 == self.streams.len() {
                self.all_in.notify_all();
            }
        }
    }

    /// Waits until every stream has its answer; the answers in the order of the list. A sync
    /// that panicked, on whichever thread, panics here with its payload.
    fn wait(&self) -> Vec<Result<()>> {
        let answers = {
            let mut answers = self.answers.lock();
            while answers.1 < self.streams.len() {
                self.all_in.wait(&mut answers);
            }
            std::mem::take(&mut answers.0)
        };
        answers
            .into_iter()
            .map(|a| a.expect("every answer is in").unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    }
}

/// The waiting helpers and the rounds they are asked to join.
#[derive(Debug, Default)]
struct Queue {
    /// One entry per helper asked to join a round.
    calls: VecDeque<Arc<SyncCall>>,
    /// Helpers started and not ended.
    threads: usize,
    /// Helpers waiting for a round.
    idle: usize,
    /// Set when the [`SyncHelpers`] is dropped: helpers end.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// A storage's fsync helper threads (see the module docs).
#[derive(Debug)]
pub(crate) struct SyncHelpers {
    shared: Arc<Shared>,
    /// Most helpers at once (a round runs on at most this many threads plus its caller).
    max_threads: usize,
}

impl SyncHelpers {
    /// Helpers for rounds of up to `max_threads + 1` threads (the caller included). None is
    /// started before a round wants one.
    pub fn new(max_threads: usize) -> Self {
        Self { shared: Arc::default(), max_threads }
    }

    /// `sync_records` of every stream of `streams`, by this thread and up to
    /// `max_threads` helpers (at most one thread per stream); the answers in the order of
    /// `streams`.
    pub fn sync_records(&self, streams: Vec<Arc<Stream>>) -> Vec<Result<()>> {
        let helpers = self.max_threads.min(streams.len().saturating_sub(1));
        let call = Arc::new(SyncCall::new(streams));
        if helpers > 0 {
            self.ask(&call, helpers);
        }
        call.work();
        if helpers > 0 {
            // Helpers that have not joined yet would find nothing left to do.
            self.shared.queue.lock().calls.retain(|c| !Arc::ptr_eq(c, &call));
        }
        call.wait()
    }

    /// Asks `helpers` helpers to join `call`, starting helpers while fewer are idle than asked
    /// (up to the limit; one that cannot be started leaves its share to the others).
    fn ask(&self, call: &Arc<SyncCall>, helpers: usize) {
        let mut q = self.shared.queue.lock();
        if q.closed {
            return;
        }
        for _ in 0..helpers {
            q.calls.push_back(Arc::clone(call));
        }
        let mut started = 0;
        while q.threads < self.max_threads && q.idle + started < q.calls.len() {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new().name("shale-sync".into()).spawn(move || serve(&shared)) {
                Ok(_) => {
                    q.threads += 1;
                    started += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start an fsync helper thread; the round goes on with fewer");
                    break;
                }
            }
        }
        for _ in 0..helpers.min(q.idle) {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for SyncHelpers {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        q.calls.clear();
        self.shared.wake.notify_all();
    }
}

/// A helper's life: join each round it is asked to, wait in between, end once closed.
fn serve(shared: &Shared) {
    let mut q = shared.queue.lock();
    loop {
        if let Some(call) = q.calls.pop_front() {
            drop(q);
            call.work();
            drop(call);
            q = shared.queue.lock();
            continue;
        }
        if q.closed {
            q.threads -= 1;
            return;
        }
        q.idle += 1;
        shared.wake.wait(&mut q);
        q.idle -= 1;
    }
}
