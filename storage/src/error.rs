//! The one error type of the storage crate.

use std::io;
use std::path::PathBuf;

use crate::types::{ChainHash, Offset, StreamId};

/// Every way a storage call can fail. Each variant carries what a person needs to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An operating-system call failed.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What we were doing ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `append_batch` was called with an `expected_offset` that is not the stream's next offset.
    #[error("stream {stream}: append expected next offset {expected} but the stream is at {actual}")]
    OffsetMismatch {
        /// The stream appended to.
        stream: StreamId,
        /// The offset the caller expected to write at.
        expected: Offset,
        /// The stream's real next offset.
        actual: Offset,
    },

    /// A read or truncation named an offset the stream does not hold.
    #[error("stream {stream}: offset {requested} is out of range [{start}, {end})")]
    OffsetOutOfRange {
        /// The stream read.
        stream: StreamId,
        /// The offset asked for.
        requested: Offset,
        /// The log start (first offset still held).
        start: Offset,
        /// The next offset (one past the last record).
        end: Offset,
    },

    /// `append_batch` was called with no events.
    #[error("stream {stream}: append_batch needs at least one event")]
    EmptyBatch {
        /// The stream appended to.
        stream: StreamId,
    },

    /// One event is larger than the configured record limit.
    #[error("stream {stream}: event {index} of the batch is {size} bytes, over the limit of {max} bytes")]
    RecordTooLarge {
        /// The stream appended to.
        stream: StreamId,
        /// Its position in the batch.
        index: usize,
        /// Its size in bytes.
        size: usize,
        /// The configured `max_record_bytes`.
        max: usize,
    },

    /// The batch as a whole is larger than the configured limit.
    #[error("stream {stream}: batch of {count} events is too large ({bytes} bytes, limit {max_bytes})")]
    BatchTooLarge {
        /// The stream appended to.
        stream: StreamId,
        /// Events in the batch.
        count: usize,
        /// Total payload bytes.
        bytes: usize,
        /// The configured limit.
        max_bytes: usize,
    },

    /// Data on disk (or handed in from outside) is damaged.
    #[error("corruption in stream {stream}, {file} at byte {position}{}: {reason}",
        offset.map(|o| format!(" (offset {o})")).unwrap_or_default())]
    Corruption {
        /// The stream whose data is damaged.
        stream: StreamId,
        /// The file name within the stream directory (e.g. `segment_000003.log`), or `memory`.
        file: String,
        /// Byte position of the damage within that file.
        position: u64,
        /// The first bad record's offset, where known.
        offset: Option<Offset>,
        /// What exactly is wrong.
        reason: CorruptionReason,
    },

    /// A file starts with the wrong magic number: it is not ours.
    #[error("{}: bad magic number {found:#x}, expected {expected:#x}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What it starts with.
        found: u64,
        /// What our files start with.
        expected: u64,
    },

    /// A file was written by a format version this build does not read.
    #[error("{}: format version {found} is not supported (this build reads {supported})", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its format version.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },

    /// A compressed payload could not be decoded, or would decode past the size limit.
    #[error("stream {stream}: offset {offset}: cannot decompress payload ({codec}): {reason}")]
    Decompression {
        /// The stream.
        stream: StreamId,
        /// The record's offset.
        offset: Offset,
        /// The codec named by the record.
        codec: &'static str,
        /// What went wrong.
        reason: String,
    },

    /// A record names a codec id this build does not know.
    #[error("stream {stream}: offset {offset}: unknown codec id {codec_id}")]
    UnknownCodec {
        /// The stream.
        stream: StreamId,
        /// The record's offset.
        offset: Offset,
        /// The unknown id.
        codec_id: u8,
    },

    /// A checkpoint was asked for at an offset the stream cannot anchor.
    #[error("stream {stream}: cannot checkpoint at offset {offset}: {reason}")]
    InvalidCheckpoint {
        /// The stream.
        stream: StreamId,
        /// The offset asked for.
        offset: Offset,
        /// Why not.
        reason: String,
    },

    /// A checkpoint handed in for installation does not agree with the records already held.
    #[error(
        "stream {stream}: checkpoint at offset {offset} has hash {checkpoint}, but the stream's chain there is {local}"
    )]
    CheckpointConflict {
        /// The stream.
        stream: StreamId,
        /// The checkpoint's offset.
        offset: Offset,
        /// The checkpoint's chain hash.
        checkpoint: ChainHash,
        /// The stream's own chain hash at that offset.
        local: ChainHash,
    },

    /// A stream id that holds nothing was asked for something that needs data.
    #[error("stream {stream} does not exist")]
    UnknownStream {
        /// The stream.
        stream: StreamId,
    },

    /// An earlier I/O failure left this stream in an unknown state; it refuses writes until it is
    /// reopened (`StorageBackend::reopen_stream`, or reopening the storage).
    #[error("stream {stream} is failed after an earlier I/O error ({cause}); it refuses writes until reopened")]
    StreamFailed {
        /// The stream.
        stream: StreamId,
        /// The first failure's message.
        cause: String,
    },

    /// The data directory is already opened by another `Storage` (or another process).
    #[error("{} is locked by another open Storage", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// No segment of the stream starts at `base` (it was compacted, truncated or never existed).
    #[error("stream {stream} has no segment starting at offset {base}")]
    UnknownSegment {
        /// The stream.
        stream: StreamId,
        /// The base offset asked for.
        base: Offset,
    },

    /// A repair was refused: the supplied records do not fit the range they should replace.
    /// Nothing was written.
    #[error("stream {stream}: repair of [{from}, {to}) refused: {reason}")]
    RepairRejected {
        /// The stream.
        stream: StreamId,
        /// First offset of the range.
        from: Offset,
        /// One past its last offset.
        to: Offset,
        /// Why.
        reason: crate::scrub::RepairRejection,
    },

    /// An argument was out of its allowed range (a zero `max_segment_bytes`, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A write (append, truncation, checkpoint, compaction, sync, repair, deletion, reopen) was
    /// asked of a storage opened read-only ([`crate::Storage::open_read_only`]). Nothing was written.
    #[error("{} is opened read-only: it takes no writes", path.display())]
    ReadOnly {
        /// The data directory, or the stream directory written to.
        path: PathBuf,
    },
}

/// Why a piece of stored data is judged corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionReason {
    /// The stored CRC32 does not match the bytes it covers.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes as read.
        computed: u32,
    },
    /// A record's `prev_hash` is not the chain hash of the record before it.
    #[error("chain broken: prev_hash is {found}, expected {expected}")]
    ChainMismatch {
        /// The hash the chain says should be there.
        expected: ChainHash,
        /// The hash the record carries.
        found: ChainHash,
    },
    /// A record is stored under another offset than its position says.
    #[error("offset sequence broken: expected offset {expected}, found {found}")]
    OffsetSequence {
        /// The offset its position implies.
        expected: Offset,
        /// The offset it carries.
        found: Offset,
    },
    /// A start or end marker is not where it must be.
    #[error("bad record marker: {0}")]
    BadMarker(&'static str),
    /// A length field is impossible (past the file end, or over the record limit).
    #[error("impossible length {length} (limit {limit})")]
    BadLength {
        /// The length read.
        length: u64,
        /// The largest it could be.
        limit: u64,
    },
    /// The file ends in the middle of a record (outside the torn tail that recovery may cut).
    #[error("truncated record: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the record needs.
        needed: u64,
        /// Bytes the file still has.
        available: u64,
    },
    /// A field holds a value no writer produces.
    #[error("invalid field {field}: {value}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The segments of a stream do not line up (a gap or overlap between them).
    #[error("segments do not line up: {0}")]
    SegmentLayout(String),
    /// A decoded structure failed its own validation.
    #[error("{0}")]
    Malformed(String),
}

impl StorageError {
    /// The first bad offset named by a corruption error, if any.
    pub fn corrupt_offset(&self) -> Option<Offset> {
        match self {
            StorageError::Corruption { offset, .. } => *offset,
            _ => None,
        }
    }
}

/// The storage crate's result type.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
