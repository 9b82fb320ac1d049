//! `shale-storage`: append-only, CRC32-checked, SHA-256 hash-chained segment storage.
//!
//! Events are appended to numbered streams. Every record carries the chain hash of the record
//! before it, so a replica (or an export) can prove that its log was not altered: two replicas that
//! hold the same events have the same chain hash at every offset, whatever codec each uses.
//!
//! An append ([`StorageBackend::append_batch`]) is conditional: it names the offset the caller
//! expects next (the Raft layer's next log index), and nothing is written if the stream's end is
//! elsewhere. With `fsync`, it returns once the records are durable, and concurrent fsyncing
//! appenders to one stream share fsyncs; without, [`StorageBackend::sync`] makes everything
//! appended so far durable (the Raft log appends without fsync, then syncs once per flush).
//!
//! This crate is plain, synchronous and thread-safe: it never depends on an async runtime. To use
//! a second core it runs threads of its own: one per [`Storage`] that prepares large batches
//! ahead of their writer (see [`StorageOptions::prepare_ahead`]), and scoped read-ahead threads
//! for reads of more than one chunk.
//!
//! [`StorageBackend`] is the interface the Raft layer programs against, and the whole API of both
//! backends: [`Storage`] implements it on disk and [`MemoryStorage`] in memory, with identical
//! semantics (import the trait to call either). [`AppendPipeline`] appends a sequence of batches
//! to a [`Storage`], preparing each ([`PreparedBatch`]) while the one before is written. All disk
//! I/O goes through the [`FileSystem`] trait, so tests can inject faults and crashes
//! ([`testing::FaultyFileSystem`]).

pub mod backend;
pub mod byteio;
pub mod chain;
pub mod checkpoint;
mod clock;
pub mod codec;
pub mod compaction;
mod disk;
pub mod error;
pub mod format;
mod index;
pub mod io;
pub mod kafka_batch;
pub mod limits;
pub mod memory;
pub mod options;
pub mod pipeline;
mod prepare_ahead;
mod prepared;
mod record;
pub mod record_batch;
pub mod scrub;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use backend::StorageBackend;
pub use byteio::{ByteError, ByteErrorKind, ByteReader, ByteWriter};
pub use chain::chain_hash;
pub use checkpoint::{
    Checkpoint, CheckpointIndex, CheckpointPolicy, deserialize_checkpoint_payload, serialize_checkpoint_payload,
    should_create_checkpoint,
};
pub use codec::{Codec, CodecId, CodecKind, CodecRegistry, Lz4Codec, NoneCodec, ZstdCodec};
pub use compaction::{CompactionConfig, CompactionResult};
pub use disk::{RecoveryFinding, RecoveryKind, Storage};
pub use error::{CorruptionReason, Result, StorageError};
pub use io::{FileSystem, FsFile, OpenMode, StdFileSystem};
pub use memory::MemoryStorage;
pub use options::{DEFAULT_PAGE_CACHE_BUDGET_BYTES, DEFAULT_PAGE_CACHE_KEEP_BYTES, StorageOptions};
pub use pipeline::AppendPipeline;
pub use prepared::PreparedBatch;
pub use scrub::{Damage, RepairOutcome, RepairRejection, ScrubReport, SegmentInfo};
pub use types::{ChainHash, ChainVerification, Offset, ReadCheck, Record, StreamId};
