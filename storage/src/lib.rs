//! `shale-storage`: append-only, CRC32-checked, SHA-256 hash-chained segment storage.
//!
//! Events are appended to numbered streams. Every record carries the chain hash of the record
//! before it, so a replica (or an export) can prove that its log was not altered: two replicas that
//! hold the same events have the same chain hash at every offset, whatever codec each uses.
//!
//! An append is either conditional ([`Storage::append_batch`] at the offset the caller expects
//! next, as the Raft layer does) or at the end ([`Storage::append`]: the storage assigns the
//! offsets, and concurrent callers on one stream share one write and one fsync).
//!
//! This crate is plain, synchronous and thread-safe: it never depends on an async runtime. To use
//! a second core it runs threads of its own: one per [`Storage`] that prepares large batches
//! ahead of their writer (see [`StorageOptions::prepare_ahead`]), and scoped read-ahead threads
//! for reads of more than one chunk.
//! [`StorageBackend`] is the interface the Raft layer programs against; [`Storage`] implements it on
//! disk and [`MemoryStorage`] in memory, with identical semantics. All disk I/O goes through the
//! [`FileSystem`] trait, so tests can inject faults and crashes ([`testing::FaultyFileSystem`]).

pub mod backend;
pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod compaction;
mod disk;
pub mod error;
pub mod format;
mod index;
pub mod io;
pub mod memory;
pub mod options;
pub mod pipeline;
mod prepare_ahead;
mod record;
pub mod scrub;
pub mod testing;
pub mod types;

pub use backend::StorageBackend;
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
pub use options::StorageOptions;
pub use pipeline::{AppendPipeline, PreparedBatch};
pub use scrub::{Damage, RepairOutcome, RepairRejection, ScrubReport, SegmentInfo};
pub use types::{ChainHash, ChainVerification, Offset, Record, StreamId};
