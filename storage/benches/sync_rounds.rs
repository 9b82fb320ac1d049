//! How to make many streams' small unsynced appends durable at once (issue 15: one flush round
//! covering every Raft group with unsynced appends): `streams` streams each get one unsynced
//! 1 KiB append, then all of them are made durable by
//!
//! - `sequential`: one `sync` (one `fdatasync`) per stream, one after the other (what one flusher
//!   per group amounts to when the groups' flushes do not overlap);
//! - `parallel-N`: the same `sync` calls from N threads at once, so the device sees N flushes
//!   in flight (a journaling file system can fold concurrent ones into one journal commit);
//! - `syncfs`: one `syncfs(2)` of the file system holding the data directory (flushes every
//!   dirty page of that file system, other processes' too);
//! - `sync_streams`: [`StorageBackend::sync_streams`], the call the Raft layer's shared flush
//!   round makes.
//!
//! ```text
//! cargo bench -p shale-storage --bench sync_rounds -- [--streams 300] [--rounds 20]
//! ```
//!
//! The temp dir is under `$SHALE_BENCH_DIR` (default: the system temp dir); point it at the disk
//! the node writes to, not tmpfs. Figures, not a test; each round of each strategy runs on its own
//! storage, the strategies interleaved round by round so a load swing hits them all alike.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_storage::{CheckpointPolicy, Offset, Storage, StorageBackend, StorageOptions, StreamId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Sequential,
    Parallel(usize),
    Syncfs,
    SyncStreams,
}

impl Strategy {
    fn name(self) -> String {
        match self {
            Self::Sequential => "sequential".into(),
            Self::Parallel(n) => format!("parallel-{n}"),
            Self::Syncfs => "syncfs".into(),
            Self::SyncStreams => "sync_streams".into(),
        }
    }
}

/// One storage with `streams` streams, each already synced once (so, as a Raft log's, its
/// appends write into preallocated blocks).
struct Bed {
    _dir: tempfile::TempDir,
    storage: Storage,
    streams: Vec<StreamId>,
    next: Vec<Offset>,
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("SHALE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

impl Bed {
    fn new(streams: usize) -> Self {
        let dir = bench_dir();
        let options = StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..StorageOptions::default() };
        let storage = Storage::open_with(dir.path(), options).expect("open");
        let ids: Vec<StreamId> = (1..=streams as u64).map(StreamId::new).collect();
        let mut next = Vec::with_capacity(streams);
        for id in &ids {
            next.push(
                storage.append_batch(*id, vec![Bytes::from(vec![7u8; 1024])], Offset::ZERO, true).expect("append"),
            );
        }
        Self { _dir: dir, storage, streams: ids, next }
    }

    /// One unsynced 1 KiB append per stream.
    fn dirty(&mut self) {
        for (id, next) in self.streams.iter().zip(self.next.iter_mut()) {
            *next = self.storage.append_batch(*id, vec![Bytes::from(vec![9u8; 1024])], *next, false).expect("append");
        }
    }

    /// Makes every stream durable as `how` does.
    fn sync(&self, how: Strategy) {
        match how {
            Strategy::Sequential => {
                for id in &self.streams {
                    self.storage.sync(*id).expect("sync");
                }
            }
            Strategy::Parallel(n) => {
                let at = AtomicUsize::new(0);
                std::thread::scope(|s| {
                    for _ in 0..n.min(self.streams.len()) {
                        s.spawn(|| {
                            while let Some(id) = self.streams.get(at.fetch_add(1, Ordering::Relaxed)) {
                                self.storage.sync(*id).expect("sync");
                            }
                        });
                    }
                });
            }
            Strategy::Syncfs => {
                let dir = std::fs::File::open(self.storage.path()).expect("open data dir");
                rustix::fs::syncfs(&dir).expect("syncfs");
            }
            Strategy::SyncStreams => {
                for r in self.storage.sync_streams(&self.streams) {
                    r.expect("sync_streams");
                }
            }
        }
    }
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let streams = arg(&args, "--streams", 300);
    let rounds = arg(&args, "--rounds", 20);
    let strategies = [
        Strategy::Sequential,
        Strategy::Parallel(8),
        Strategy::Parallel(16),
        Strategy::Parallel(32),
        Strategy::Syncfs,
        Strategy::SyncStreams,
    ];
    let mut beds: Vec<Bed> = strategies.iter().map(|_| Bed::new(streams)).collect();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); strategies.len()];
    for _ in 0..rounds {
        for (i, how) in strategies.iter().enumerate() {
            beds[i].dirty();
            let t = Instant::now();
            beds[i].sync(*how);
            times[i].push(t.elapsed());
        }
    }
    println!("{streams} streams, one unsynced 1 KiB append each, made durable; {rounds} rounds per strategy");
    println!("{:<14} {:>10} {:>10} {:>10} {:>12}", "strategy", "median ms", "p90 ms", "max ms", "us/stream");
    for (how, t) in strategies.iter().zip(times.iter_mut()) {
        t.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let median = t[t.len() / 2];
        let p90 = t[(t.len() * 9 / 10).min(t.len() - 1)];
        let max = t[t.len() - 1];
        let per_stream = median.as_secs_f64() * 1e6 / streams as f64;
        println!("{:<14} {:>10.2} {:>10.2} {:>10.2} {:>12.1}", how.name(), ms(median), ms(p90), ms(max), per_stream);
    }
}
