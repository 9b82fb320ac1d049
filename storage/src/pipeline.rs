//! [`AppendPipeline`]: the two stages of an append on two threads.
//!
//! Stage 1 ([`PreparedBatch::prepare`], see `prepared.rs`) validates, compresses, hashes and encodes
//! a batch; stage 2 writes it with one positional write per segment touched and, if asked, waits
//! for a (shared) fsync. The pipeline runs stage 1 for batch k+1 on the calling thread while stage
//! 2 writes batch k on a helper thread. [`crate::StorageBackend::append_batch`] runs the two back
//! to back, except that a large batch is prepared part by part on the storage's preparing thread
//! while the caller writes it (`prepare_ahead.rs`).

use bytes::Bytes;

use crate::backend::StorageBackend;
use crate::disk::Storage;
use crate::error::{Result, StorageError};
use crate::prepared::PreparedBatch;
use crate::types::{Offset, StreamId};

/// Appends a sequence of batches to one stream with stage 1 (encode, compress, hash) of batch
/// k+1 running on the calling thread while stage 2 (write, fsync) of batch k runs on a helper thread.
#[derive(Debug)]
pub struct AppendPipeline<'a> {
    storage: &'a Storage,
    stream: StreamId,
    fsync: bool,
}

impl<'a> AppendPipeline<'a> {
    /// A pipeline appending to `stream`; with `fsync`, every batch is durable before the next
    /// one's result is counted.
    pub fn new(storage: &'a Storage, stream: StreamId, fsync: bool) -> Self {
        Self { storage, stream, fsync }
    }

    /// Appends every batch of `batches` in order, the first at `expected_offset` (which must be
    /// the stream's next offset). Returns the next offset after the last batch. On the first
    /// error, the batches before it are written and nothing after it is.
    pub fn run<I>(&self, expected_offset: Offset, batches: I) -> Result<Offset>
    where
        I: IntoIterator<Item = Vec<Bytes>>,
    {
        let actual = self.storage.next_offset(self.stream)?;
        if actual != expected_offset {
            return Err(StorageError::OffsetMismatch { stream: self.stream, expected: expected_offset, actual });
        }
        let head = self.storage.latest_chain_hash(self.stream)?;
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<PreparedBatch>(1);
            let (storage, fsync) = (self.storage, self.fsync);
            let stage2 = scope.spawn(move || -> Result<Offset> {
                let mut next = expected_offset;
                for batch in rx {
                    next = storage.commit(batch, fsync)?;
                }
                Ok(next)
            });
            let (mut base, mut prev) = (expected_offset, head);
            let mut stage1_err = None;
            for events in batches {
                match self.storage.prepare(self.stream, base, prev, events) {
                    Ok(batch) => {
                        base = batch.next();
                        prev = batch.head();
                        if tx.send(batch).is_err() {
                            break; // stage 2 stopped on an error it will report
                        }
                    }
                    Err(e) => {
                        stage1_err = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            let written = match stage2.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            match (written, stage1_err) {
                (Err(e), _) | (Ok(_), Some(e)) => Err(e),
                (Ok(next), None) => Ok(next),
            }
        })
    }
}
