//! A helper thread that computes a batch's chain hashes ahead of the thread encoding and writing it.
//!
//! The chain is sequential (each hash covers the one before it), so one batch's hashing cannot be
//! split across cores; but everything else an append does (compressing, encoding, CRCs, the copy
//! into the page cache) only needs the hash of the *previous* record. With the hashing on its own
//! core, an append of a large batch takes about as long as hashing it alone.
//!
//! One [`HashAhead`] serves a whole [`crate::Storage`]: one job at a time ([`HashAhead::try_start`]
//! refuses while another append holds it, and that append hashes inline instead). The thread is
//! started on first use and stops when the storage is dropped.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::chain::chain_hash;
use crate::types::{ChainHash, Offset};

/// How long the thread keeps polling for the next job after finishing one before it sleeps:
/// back-to-back appends then seldom pay for waking it up.
const LINGER: Duration = Duration::from_micros(50);
/// How many times an appender polls for a hash before it sleeps.
const SPINS: u32 = 2000;
/// The longest an appender sleeps before it looks again (a backstop: it is woken).
const PARK_LIMIT: Duration = Duration::from_millis(1);

/// The chain hashes of one batch, filled in order by the hashing thread.
#[derive(Debug)]
pub(crate) struct HashJob {
    base: Offset,
    prev: ChainHash,
    events: Arc<Vec<Bytes>>,
    hashes: Vec<OnceLock<ChainHash>>,
    /// Set by the appender when it gives up (an error): the thread stops early.
    cancelled: AtomicBool,
    /// Cleared when the hashing thread ends (even by a panic): the appender hashes the rest.
    alive: Arc<AtomicBool>,
    /// Whether the appender sleeps (or is about to) waiting for a hash; the lock it sleeps
    /// with, and its wake-up call.
    parked: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

impl HashJob {
    /// The hash of record `i` of the batch, waiting for the thread to get there: spinning for
    /// a few microseconds (it hashes a record in well under one), then sleeping until woken.
    pub fn hash(&self, i: usize) -> ChainHash {
        for _ in 0..SPINS {
            if let Some(h) = self.hashes[i].get() {
                return *h;
            }
            std::hint::spin_loop();
        }
        loop {
            if let Some(h) = self.hashes[i].get() {
                return *h;
            }
            if !self.alive.load(Ordering::Acquire) {
                return self.hash_inline(i);
            }
            let mut sleeping = self.sleep.lock();
            self.parked.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // Checked again with the flag up: the thread looks at the flag after each record.
            if self.hashes[i].get().is_none() {
                self.wake.wait_for(&mut sleeping, PARK_LIMIT);
            }
            self.parked.store(false, Ordering::Relaxed);
        }
    }

    /// Hashes records `..=i` here (those the thread did not fill).
    fn hash_inline(&self, i: usize) -> ChainHash {
        let mut prev = self.prev;
        for k in 0..=i {
            let h = match self.hashes[k].get() {
                Some(h) => *h,
                None => *self.hashes[k].get_or_init(|| chain_hash(self.base.plus(k as u64), &prev, &self.events[k])),
            };
            prev = h;
        }
        prev
    }

    /// Tells the thread to stop working on this batch.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn run(&self) {
        let mut prev = self.prev;
        for (k, payload) in self.events.iter().enumerate() {
            if self.cancelled.load(Ordering::Acquire) {
                return;
            }
            let h = chain_hash(self.base.plus(k as u64), &prev, payload);
            // `set` fails only if the appender filled it itself (thread ending): same value.
            let _ = self.hashes[k].set(h);
            prev = h;
            // Pairs with the fence in `hash`: either the appender sees this hash before it
            // sleeps, or this sees its flag and wakes it (once it sleeps: the lock tells).
            fence(Ordering::SeqCst);
            if self.parked.load(Ordering::Relaxed) {
                let _sleeping = self.sleep.lock();
                self.wake.notify_one();
            }
        }
    }
}

/// Clears the thread's `alive` flag however it ends.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The hashing thread of one storage.
#[derive(Debug)]
pub(crate) struct HashAhead {
    jobs: Mutex<Option<Sender<Arc<HashJob>>>>,
    /// Held by the append whose batch the thread is hashing.
    user: Mutex<()>,
    alive: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl HashAhead {
    /// Starts the thread. `None` if the OS refuses a thread: appends then hash inline.
    pub fn start() -> Option<Self> {
        let (tx, rx) = channel::<Arc<HashJob>>();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = ClearOnDrop(Arc::clone(&alive));
        let thread = std::thread::Builder::new()
            .name("shale-hash-ahead".into())
            .spawn(move || {
                let _flag = flag;
                serve(rx)
            })
            .ok()?;
        Some(Self { jobs: Mutex::new(Some(tx)), user: Mutex::new(()), alive, thread: Mutex::new(Some(thread)) })
    }

    /// Hands the thread the batch `events`, whose first record is at `base` and continues the
    /// chain from `prev`. `None` when another append is using the thread (or it is gone): the
    /// caller hashes inline. The returned guard keeps other appends off until dropped.
    pub fn try_start(
        &self,
        base: Offset,
        prev: ChainHash,
        events: Arc<Vec<Bytes>>,
    ) -> Option<(MutexGuard<'_, ()>, Arc<HashJob>)> {
        let guard = self.user.try_lock()?;
        let job = Arc::new(HashJob {
            base,
            prev,
            hashes: (0..events.len()).map(|_| OnceLock::new()).collect(),
            events,
            cancelled: AtomicBool::new(false),
            alive: Arc::clone(&self.alive),
            parked: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        self.jobs.lock().as_ref()?.send(Arc::clone(&job)).ok()?;
        Some((guard, job))
    }
}

impl Drop for HashAhead {
    fn drop(&mut self) {
        self.jobs.lock().take(); // the thread's `recv` fails and it returns
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn serve(rx: Receiver<Arc<HashJob>>) {
    loop {
        let job = match rx.recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let mut next = Some(job);
        while let Some(job) = next.take() {
            job.run();
            drop(job);
            // Linger briefly: the next batch of a busy stream usually follows at once.
            let idle = Instant::now();
            while idle.elapsed() < LINGER {
                match rx.try_recv() {
                    Ok(job) => {
                        next = Some(job);
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
        }
    }
}
