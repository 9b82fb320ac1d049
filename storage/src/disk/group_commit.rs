//! Group commit: how far a stream is known durable, and the fsync that appenders share.
//!
//! An appender that needs its records durable either finds them durable already (one atomic
//! load), or becomes the fsync leader when no fsync runs, or parks until the running one ends.
//! The leader syncs everything written before it started, then wakes exactly the parked
//! appenders it made durable (as a tree, see [`super::wake`]): they return without touching a
//! shared lock. An appender whose records were written after the fsync started stays parked,
//! and the first of them is woken (first) to lead the next fsync.
//!
//! (A condvar does not do here: waking all its waiters makes each re-take the mutex in turn,
//! a convoy of one context switch per appender before any of them can return.)

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::wake::{Wakeup, wake_tree};
use crate::error::Result;
use crate::types::Offset;

/// One parked appender.
#[derive(Debug)]
struct Waiter {
    /// It returns once every record below this is durable.
    end: Offset,
    /// Woken when its entry is taken off the list.
    wakeup: Arc<Wakeup>,
}

#[derive(Debug, Default)]
struct State {
    /// An fsync leader is at work.
    syncing: bool,
    /// Parked appenders, in the order they parked.
    waiters: Vec<Waiter>,
}

/// The group-commit state of one stream.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    /// Every record below this offset is durable. Only grows, except when `epoch` moves.
    durable: AtomicU64,
    /// Bumped by truncation, checkpoint install and deletion (which sync everything they keep):
    /// a waiter whose epoch is stale returns.
    epoch: AtomicU64,
    state: Mutex<State>,
}

impl GroupCommit {
    /// Every record below the returned offset is durable.
    pub fn durable(&self) -> Offset {
        Offset::new(self.durable.load(Ordering::Acquire))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Notes that every record below `end` is durable (synced outside [`Self::wait`]).
    pub fn note_durable(&self, end: Offset) {
        self.durable.fetch_max(end.get(), Ordering::AcqRel);
    }

    /// After an operation that made everything it kept durable (and may have removed records):
    /// moves to a new epoch with `durable` as the durable end, and wakes every waiter.
    pub fn reset(&self, durable: Offset) {
        let waiters = {
            let mut s = self.state.lock();
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.durable.store(durable.get(), Ordering::Release);
            std::mem::take(&mut s.waiters)
        };
        wake_tree(waiters.into_iter().map(|w| w.wakeup).collect());
    }

    /// Wakes every waiter (to see that the stream failed).
    pub fn wake_all(&self) {
        let waiters = std::mem::take(&mut self.state.lock().waiters);
        wake_tree(waiters.into_iter().map(|w| w.wakeup).collect());
    }

    /// Whether a waiter for `end` in `epoch` is done.
    fn done(&self, end: Offset, epoch: u64) -> bool {
        self.epoch() != epoch || self.durable() >= end
    }

    /// Returns once every record below `end` is durable (or `epoch` is stale). `usable` is
    /// asked before each round of waiting; `sync` is the leader's fsync, which returns the end of
    /// what it made durable (read before syncing).
    pub fn wait(
        &self,
        end: Offset,
        epoch: u64,
        usable: impl Fn() -> Result<()>,
        mut sync: impl FnMut() -> Result<Offset>,
    ) -> Result<()> {
        loop {
            if self.done(end, epoch) {
                return Ok(());
            }
            usable()?;
            let mut s = self.state.lock();
            if self.done(end, epoch) {
                return Ok(());
            }
            if s.syncing {
                let wakeup = Wakeup::for_current_thread();
                s.waiters.push(Waiter { end, wakeup: Arc::clone(&wakeup) });
                drop(s);
                wakeup.wait();
                continue;
            }
            s.syncing = true;
            drop(s);
            let r = sync();
            let woken = {
                let mut s = self.state.lock();
                s.syncing = false;
                if let Ok(target) = &r
                    && self.epoch() == epoch
                {
                    self.note_durable(*target);
                }
                self.take_woken(&mut s.waiters, r.is_err())
            };
            let durable_now = self.durable();
            // The next leader (if any) alone and first, so the next fsync starts at once.
            let (leader, woken): (Vec<Waiter>, Vec<Waiter>) = woken.into_iter().partition(|w| w.end > durable_now);
            leader.into_iter().for_each(|w| w.wakeup.wake());
            wake_tree(woken.into_iter().map(|w| w.wakeup).collect());
            r?;
        }
    }

    /// Takes the waiters to wake after an fsync off the list: those now durable, and the first
    /// still waiting, to lead the next fsync. After a failed fsync, all (to see it).
    fn take_woken(&self, waiters: &mut Vec<Waiter>, all: bool) -> Vec<Waiter> {
        if all {
            return std::mem::take(waiters);
        }
        let durable = self.durable();
        let mut leader_picked = false;
        waiters.extract_if(.., |w| w.end <= durable || !std::mem::replace(&mut leader_picked, true)).collect()
    }
}
