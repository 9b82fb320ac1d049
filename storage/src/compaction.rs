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

/// One segment as the retention decision sees it (oldest first; the last one is the active segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentSpan {
    /// The offset of its first record (the first segment's is the log start).
    pub base: Offset,
    /// One past the segment's last offset.
    pub end: Offset,
    /// Bytes the segment counts for retention.
    pub bytes: u64,
    /// When its newest record was appended (ms since the Unix epoch).
    pub last_append_ms: u64,
}

/// The one retention decision both backends run, for [`crate::StorageBackend::compaction_target`]
/// and [`crate::StorageBackend::compact`]: which of `segments` (oldest first, never empty) a
/// compaction under `config` at `now_ms` removes, as the result it reports: how many (a prefix),
/// the bytes they hold, and the log start left (the base of the first segment kept). The last
/// segment (the active one) is never removed.
pub(crate) fn plan(config: &CompactionConfig, now_ms: u64, segments: &[SegmentSpan]) -> CompactionResult {
    let mut total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut removed = 0usize;
    let mut freed = 0u64;
    while segments.len() - removed > 1 {
        let seg = &segments[removed];
        if config.max_log_start.is_some_and(|max| seg.end > max) {
            break;
        }
        let over_bytes = config.retain_bytes.is_some_and(|b| total > b);
        let too_old = config.retain_age_ms.is_some_and(|age| now_ms.saturating_sub(seg.last_append_ms) > age);
        let unlimited = config.retain_bytes.is_none() && config.retain_age_ms.is_none();
        if !(over_bytes || too_old || unlimited) {
            break;
        }
        total -= seg.bytes;
        freed += seg.bytes;
        removed += 1;
    }
    CompactionResult { segments_removed: removed, bytes_freed: freed, new_log_start: segments[removed].base }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of 10 offsets ending at `end`.
    fn span(end: u64, bytes: u64, last_append_ms: u64) -> SegmentSpan {
        SegmentSpan { base: Offset::new(end - 10), end: Offset::new(end), bytes, last_append_ms }
    }

    /// What `plan` says, as (segments removed, bytes freed), checking the new log start on the way.
    fn removable_prefix(config: &CompactionConfig, now_ms: u64, segs: &[SegmentSpan]) -> (usize, u64) {
        let r = plan(config, now_ms, segs);
        assert_eq!(r.new_log_start, segs[r.segments_removed].base);
        (r.segments_removed, r.bytes_freed)
    }

    #[test]
    fn the_active_segment_is_never_removed() {
        let segs = [span(10, 100, 0)];
        assert_eq!(removable_prefix(&CompactionConfig::default(), 1_000, &segs), (0, 0));
    }

    #[test]
    fn max_log_start_bounds_every_limit() {
        let segs = [span(10, 100, 0), span(20, 100, 0), span(30, 100, 0)];
        let config =
            CompactionConfig { retain_bytes: Some(0), max_log_start: Some(Offset::new(15)), ..Default::default() };
        assert_eq!(removable_prefix(&config, 0, &segs), (1, 100));
        let unlimited = CompactionConfig { max_log_start: Some(Offset::new(20)), ..Default::default() };
        assert_eq!(removable_prefix(&unlimited, 0, &segs), (2, 200));
    }

    #[test]
    fn bytes_and_age_limits_stop_at_the_first_segment_they_keep() {
        let segs = [span(10, 100, 0), span(20, 100, 500), span(30, 100, 900)];
        let by_bytes = CompactionConfig { retain_bytes: Some(150), ..Default::default() };
        assert_eq!(removable_prefix(&by_bytes, 1_000, &segs), (2, 200));
        let by_age = CompactionConfig { retain_age_ms: Some(600), ..Default::default() };
        assert_eq!(removable_prefix(&by_age, 1_000, &segs), (1, 100));
    }
}
