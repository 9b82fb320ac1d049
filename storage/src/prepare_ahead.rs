//! A helper thread that prepares a large batch (compresses, hashes, encodes) part by part while
//! the appending thread writes the parts already prepared.
//!
//! The chain is sequential (each hash covers the one before it), so one batch's hashing cannot be
//! split across cores. What can be split is hashing from writing: the copy into the page cache
//! costs about as much CPU as the hashing, so with the two on two cores an append of a large
//! batch takes about as long as the slower of the two alone.
//!
//! One [`PrepareAhead`] serves a whole [`crate::Storage`], one batch at a time:
//! [`PrepareAhead::try_start`] refuses while another append holds it, and that append prepares
//! its batch inline instead. The thread is started on first use and stops when the storage is
//! dropped; if it dies, the append prepares the rest of its batch inline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};

use crate::chain::chain_hash;
use crate::codec::{Codec, compress_payload};
use crate::prepared::PreparedBatch;
use crate::record::encode_record;
use crate::types::{ChainHash, Offset, StreamId};

/// How long the thread keeps polling for the next batch after finishing one before it sleeps,
/// while batches keep coming within that time: back-to-back appends then seldom pay for waking
/// it up, and sporadic ones cost no polling.
const LINGER: Duration = Duration::from_micros(200);
/// How long the appender keeps polling for the next part without seeing the thread make progress
/// (it prepares 8 records of 1 KiB in about 6 microseconds) before it sleeps: it spins while the
/// thread is running, not while the thread waits for a core.
const STALL: Duration = Duration::from_micros(50);
/// The thread tells its progress every this many records (more often costs it cache misses).
const PROGRESS_EVERY: usize = 8;
/// Parts prepared but not yet written, at most (bounds the memory a batch holds twice).
const PARTS_AHEAD: usize = 8;

/// A batch to prepare: `events` for `stream`, the first at `base`, continuing the chain from
/// `prev`, cut into parts of about `part_bytes` encoded bytes.
#[derive(Debug)]
pub(crate) struct BatchToPrepare {
    pub stream: StreamId,
    pub base: Offset,
    pub prev: ChainHash,
    pub events: Arc<Vec<Bytes>>,
    pub codec: Arc<dyn Codec>,
    pub append_time_ms: u64,
    pub part_bytes: usize,
}

/// A batch handed to the thread, with where its parts go, in order.
#[derive(Debug)]
struct Job {
    batch: BatchToPrepare,
    parts: SyncSender<PreparedBatch>,
    /// Records prepared so far.
    progress: Arc<AtomicUsize>,
}

impl std::ops::Deref for Job {
    type Target = BatchToPrepare;

    fn deref(&self) -> &BatchToPrepare {
        &self.batch
    }
}

impl Job {
    /// Prepares every record, sending each part once it holds `part_bytes` (or the last record).
    /// Stops early if the appender gave up (the receiver is gone).
    fn run(self) {
        let mut part = self.empty_part(self.base, self.prev);
        let mut prev = self.prev;
        for (i, payload) in self.events.iter().enumerate() {
            let offset = self.base.plus(i as u64);
            let (codec_id, compressed) = compress_payload(self.codec.as_ref(), payload);
            let stored = compressed.as_deref().unwrap_or(payload);
            part.starts.push(part.encoded.len());
            // The appending thread fills in the CRCs: that balances the two threads' work.
            encode_record(&mut part.encoded, offset, codec_id, self.append_time_ms, &prev, payload.len(), stored);
            prev = chain_hash(offset, &prev, payload);
            part.hashes.push(prev);
            if i % PROGRESS_EVERY == 0 {
                self.progress.store(i + 1, Ordering::Relaxed);
            }
            if part.encoded.len() >= self.part_bytes || i + 1 == self.events.len() {
                part.starts.push(part.encoded.len());
                let full = std::mem::replace(&mut part, self.empty_part(offset.plus(1), prev));
                if self.parts.send(full).is_err() {
                    return;
                }
            }
        }
    }

    fn empty_part(&self, base: Offset, prev_hash: ChainHash) -> PreparedBatch {
        PreparedBatch {
            stream: self.stream,
            base,
            prev_hash,
            events: Vec::new(),
            encoded: Vec::with_capacity(self.part_bytes + self.part_bytes / 8),
            starts: Vec::new(),
            hashes: Vec::new(),
            append_time_ms: self.append_time_ms,
            sealed: false,
        }
    }
}

/// The parts of one batch, in order, as the thread prepares them.
#[derive(Debug)]
pub(crate) struct Parts<'a> {
    rx: Receiver<PreparedBatch>,
    progress: Arc<AtomicUsize>,
    _user: MutexGuard<'a, ()>,
}

impl Parts<'_> {
    /// The next part: polled for while the thread is seen preparing records (a part takes it tens
    /// of microseconds), else waited for. `None` once the batch is done, or if the thread died:
    /// the caller then prepares whatever it did not receive itself.
    pub fn next_part(&mut self) -> Option<PreparedBatch> {
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let mut polls = 0u32;
        loop {
            match self.rx.try_recv() {
                Ok(part) => return Some(part),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(32) {
                let now = self.progress.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() > STALL {
                    break;
                }
            }
        }
        self.rx.recv().ok()
    }
}

/// The preparing thread of one storage.
#[derive(Debug)]
pub(crate) struct PrepareAhead {
    jobs: Mutex<Option<Sender<Job>>>,
    /// Held by the append whose batch the thread is preparing.
    user: Mutex<()>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl PrepareAhead {
    /// Starts the thread. `None` if the OS refuses a thread: appends then prepare inline.
    pub fn start() -> Option<Self> {
        let (tx, rx) = channel::<Job>();
        let thread = std::thread::Builder::new().name("shale-prepare".into()).spawn(move || serve(rx)).ok()?;
        Some(Self { jobs: Mutex::new(Some(tx)), user: Mutex::new(()), thread: Mutex::new(Some(thread)) })
    }

    /// Hands the thread `batch`. `None` when another append is using the thread (or it is
    /// gone): the caller prepares inline. The parts hold the thread for this append until dropped.
    pub fn try_start(&self, batch: BatchToPrepare) -> Option<Parts<'_>> {
        let user = self.user.try_lock()?;
        let (parts, rx) = sync_channel(PARTS_AHEAD);
        let progress = Arc::new(AtomicUsize::new(0));
        self.jobs.lock().as_ref()?.send(Job { batch, parts, progress: Arc::clone(&progress) }).ok()?;
        Some(Parts { rx, progress, _user: user })
    }
}

impl Drop for PrepareAhead {
    fn drop(&mut self) {
        self.jobs.lock().take(); // the thread's `recv` fails and it returns
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

fn serve(rx: Receiver<Job>) {
    let mut next = None;
    // Whether to poll for the next batch before sleeping: on while batches come back to back.
    let mut linger = true;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                let idle = Instant::now();
                match rx.recv() {
                    Ok(job) => {
                        linger = idle.elapsed() < LINGER;
                        job
                    }
                    Err(_) => return,
                }
            }
        };
        job.run();
        let idle = Instant::now();
        while linger && idle.elapsed() < LINGER {
            match rx.try_recv() {
                Ok(job) => {
                    next = Some(job);
                    break;
                }
                Err(TryRecvError::Empty) => {
                    for _ in 0..64 {
                        std::hint::spin_loop();
                    }
                }
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if next.is_none() {
            linger = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::NoneCodec;

    #[test]
    fn parts_cover_the_batch_in_order_and_match_an_inline_prepare() {
        let ahead = PrepareAhead::start().unwrap();
        let events: Arc<Vec<Bytes>> = Arc::new((0..300u32).map(|i| Bytes::from(vec![i as u8; 700])).collect());
        let codec: Arc<dyn Codec> = Arc::new(NoneCodec);
        let prev = ChainHash([3; 32]);
        let batch = |stream: u64, base: Offset, prev: ChainHash, part_bytes: usize| BatchToPrepare {
            stream: StreamId::new(stream),
            base,
            prev,
            events: Arc::clone(&events),
            codec: Arc::clone(&codec),
            append_time_ms: 5,
            part_bytes,
        };
        let mut parts = ahead.try_start(batch(1, Offset::new(10), prev, 16 << 10)).unwrap();
        // One batch at a time.
        assert!(ahead.try_start(batch(2, Offset::ZERO, ChainHash::ZERO, 1)).is_none());
        let whole = PreparedBatch::prepare(
            StreamId::new(1),
            Offset::new(10),
            prev,
            events.to_vec(),
            &crate::options::StorageOptions::default(),
            &NoneCodec,
        )
        .unwrap();
        let (mut encoded, mut hashes, mut at, mut head) = (Vec::new(), Vec::new(), Offset::new(10), prev);
        let mut count = 0;
        while let Some(mut part) = parts.next_part() {
            assert_eq!((part.base(), part.prev_hash()), (at, head));
            assert!(!part.sealed);
            part.seal();
            assert!(part.encoded_len() >= 16 << 10 || part.next() == Offset::new(310));
            encoded.extend_from_slice(&part.encoded);
            hashes.extend_from_slice(&part.hashes);
            at = part.next();
            head = part.head();
            count += 1;
        }
        assert!(count > 10);
        assert_eq!(at, Offset::new(310));
        assert_eq!(hashes, whole.hashes);
        // Same bytes once sealed, but for the append time, which the inline batch took from the
        // clock: every record decodes (its CRC holds) to the same fields.
        assert_eq!(encoded.len(), whole.encoded.len());
        let (mut a, mut b) = (0, 0);
        for _ in 0..300 {
            let (x, y) = (
                crate::record::decode_record(&encoded, a).unwrap(),
                crate::record::decode_record(&whole.encoded, b).unwrap(),
            );
            assert_eq!((x.offset, x.prev_hash, x.len), (y.offset, y.prev_hash, y.len));
            assert_eq!(
                encoded[x.payload_at..x.payload_at + x.stored_len],
                whole.encoded[y.payload_at..y.payload_at + y.stored_len]
            );
            a += x.len;
            b += y.len;
        }
    }
}
