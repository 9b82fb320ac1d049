//! What compaction may remove, and what it reports.

use crate::types::Offset;

/// Which old records a [`crate::StorageBackend::compact`] call may remove.
///
/// Only whole sealed segments are removed, oldest first, and only while every limit allows it:
/// a segment goes when it lies wholly below `max_log_start` (if set) and either the stream is over
/// `retain_bytes`, or the segment's newest record is older than `retain_age_ms`. If neither
/// retention limit is set, every sealed segment below `max_log_start` goes (plain prefix removal,
/// as the Raft layer uses after a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionConfig {
    /// Keep at most about this many bytes (never less than the active segment).
    pub retain_bytes: Option<u64>,
    /// Remove segments whose newest record was appended longer ago than this.
    pub retain_age_ms: Option<u64>,
    /// Never move the log start past this offset (the Raft layer passes its last snapshot).
    pub max_log_start: Option<Offset>,
}

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionResult {
    /// Sealed segments deleted.
    pub segments_removed: usize,
    /// Bytes of segment files deleted (their index and checkpoint files are not counted, so memory and
    /// disk backends report the same figure).
    pub bytes_freed: u64,
    /// The log start afterwards (unchanged if nothing was removed).
    pub new_log_start: Offset,
}
