//! `shale-storage`: append-only, CRC32-checked, SHA-256 hash-chained segment storage.
//!
//! Events are appended to numbered streams. Every record carries the chain hash of the record
//! before it, so a replica (or an export) can prove that its log was not altered: two replicas that
//! hold the same events have the same chain hash at every offset, whatever codec each uses.
//!
//! This crate is plain, synchronous and thread-safe: it never depends on an async runtime.
//! [`StorageBackend`] is the interface the Raft layer programs against; [`MemoryStorage`] implements
//! it in memory with identical semantics.

pub mod backend;
pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod compaction;
pub mod error;
pub mod format;
pub mod memory;
pub mod options;
pub mod types;

pub use backend::StorageBackend;
pub use chain::chain_hash;
pub use checkpoint::{
    Checkpoint, CheckpointIndex, CheckpointPolicy, deserialize_checkpoint_payload, serialize_checkpoint_payload,
    should_create_checkpoint,
};
pub use codec::{Codec, CodecId, CodecKind, CodecRegistry, Lz4Codec, NoneCodec, ZstdCodec};
pub use compaction::{CompactionConfig, CompactionResult};
pub use error::{CorruptionReason, Result, StorageError};
pub use memory::MemoryStorage;
pub use options::StorageOptions;
pub use types::{ChainHash, ChainVerification, Offset, Record, StreamId};
