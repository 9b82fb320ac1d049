//! Waking many parked threads at once, as a tree.
//!
//! After an fsync, every appender it made durable must be woken. Waking them one after the other
//! from one thread took longer than the fsync itself on a 2-core VM (each wake is a system call
//! and often an inter-processor interrupt), and the next round could not start before they were
//! back. So [`wake_tree`] wakes one thread, and every thread woken wakes two more before it goes
//! on: the wakes spread over the cores and take log2(n) steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::Thread;

use parking_lot::Mutex;

/// How a parked thread learns that it may go on.
#[derive(Debug)]
pub(crate) struct Wakeup {
    thread: Thread,
    /// Set (before the thread is unparked) once it may go on.
    done: AtomicBool,
    /// Those it wakes in turn.
    children: Mutex<Vec<Arc<Wakeup>>>,
}

impl Wakeup {
    /// A wake-up for the calling thread.
    pub fn for_current_thread() -> Arc<Self> {
        Arc::new(Self {
            thread: std::thread::current(),
            done: AtomicBool::new(false),
            children: Mutex::new(Vec::new()),
        })
    }

    /// Parks until woken, then wakes this one's children.
    pub fn wait(&self) {
        // `park` may return spuriously: only the flag says this one was woken.
        while !self.done.load(Ordering::Acquire) {
            std::thread::park();
        }
        let children = std::mem::take(&mut *self.children.lock());
        for c in children {
            c.thread.unpark();
        }
    }

    /// Wakes this one alone.
    pub fn wake(&self) {
        self.done.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Wakes every one of `wakeups`: the first from here, the others from the threads woken before
/// them, two each.
pub(crate) fn wake_tree(wakeups: Vec<Arc<Wakeup>>) {
    for (i, w) in wakeups.iter().enumerate() {
        let children: Vec<Arc<Wakeup>> = wakeups.iter().skip(2 * i + 1).take(2).cloned().collect();
        if !children.is_empty() {
            *w.children.lock() = children;
        }
    }
    // All marked before any is unparked: a thread that sees its flag early (a spurious wake-up)
    // may wake its children at once.
    for w in &wakeups {
        w.done.store(true, Ordering::Release);
    }
    if let Some(root) = wakeups.first() {
        root.thread.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_of_a_tree_is_woken() {
        for n in [1usize, 2, 3, 7, 64] {
            let (tx, rx) = std::sync::mpsc::channel();
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        let w = Wakeup::for_current_thread();
                        tx.send(Arc::clone(&w)).unwrap();
                        w.wait();
                    })
                })
                .collect();
            let wakeups: Vec<Arc<Wakeup>> = (0..n).map(|_| rx.recv().unwrap()).collect();
            wake_tree(wakeups);
            for h in handles {
                h.join().unwrap();
            }
        }
    }
}
