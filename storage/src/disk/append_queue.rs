//! Appends at a stream's end ([`crate::Storage::append`]), combined: concurrent callers queue
//! their batches here, and one of them (the combiner) writes everything queued with one write
//! and waits for one fsync, then hands each caller its offsets.
//!
//! A caller that finds no combiner at work becomes the next one. The combiner takes the
//! stream's writer lock first and only then the queue, so while one round is written, the
//! next round's combiner waits for the lock and everything submitted meanwhile joins its round.
//! Once a round is taken, the next caller starts a new round: it is written while this one's
//! fsync runs.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::wake::{Wakeup, wake_tree};
use crate::error::Result;
use crate::types::Offset;

/// One caller's batch, waiting to be written.
#[derive(Debug)]
pub(crate) struct Request {
    pub events: Vec<Bytes>,
    pub fsync: bool,
    reply: Arc<Reply>,
}

/// Hands each caller its result, and wakes them all (as a tree, see [`super::wake`]).
pub(crate) fn complete_all(results: Vec<(Request, Result<Range<Offset>>)>) {
    let wakeups = results
        .into_iter()
        .map(|(r, result)| {
            *r.reply.result.lock() = Some(result);
            Arc::clone(&r.reply.wakeup)
        })
        .collect();
    wake_tree(wakeups);
}

/// Where a caller's result arrives.
#[derive(Debug)]
struct Reply {
    result: Mutex<Option<Result<Range<Offset>>>>,
    wakeup: Arc<Wakeup>,
}

/// A caller's claim on its result.
#[derive(Debug)]
pub(crate) struct Ticket {
    reply: Arc<Reply>,
    /// No combiner was at work when it was submitted: the caller must combine.
    pub combine: bool,
}

impl Ticket {
    /// Parks until the request was completed, and returns its result.
    pub fn wait(self) -> Result<Range<Offset>> {
        self.reply.wakeup.wait();
        self.reply.result.lock().take().expect("a completed request holds its result")
    }
}

#[derive(Debug, Default)]
struct State {
    /// A caller has become the combiner and has not taken the queue yet.
    combining: bool,
    pending: Vec<Request>,
}

/// The queue of one stream.
#[derive(Debug, Default)]
pub(crate) struct AppendQueue {
    state: Mutex<State>,
}

impl AppendQueue {
    /// Queues a batch. The ticket says whether the caller must run a round (and so take the
    /// queue with [`Self::take`]) before it waits.
    pub fn submit(&self, events: Vec<Bytes>, fsync: bool) -> Ticket {
        let reply = Arc::new(Reply { result: Mutex::new(None), wakeup: Wakeup::for_current_thread() });
        let mut s = self.state.lock();
        s.pending.push(Request { events, fsync, reply: Arc::clone(&reply) });
        let combine = !std::mem::replace(&mut s.combining, true);
        Ticket { reply, combine }
    }

    /// The combiner, holding the writer lock, takes every queued request (in submission order,
    /// its own among them); the next caller starts a new round.
    pub fn take(&self) -> Vec<Request> {
        let mut s = self.state.lock();
        debug_assert!(s.combining, "only a combiner takes the queue");
        s.combining = false;
        std::mem::take(&mut s.pending)
    }
}
