//! How long a group keeps log records that a snapshot already covers.
//!
//! openraft "purges" the log below a snapshot, and a follower that needs purged entries gets the
//! snapshot instead, skipping them. For Shale the log is the data consumers read, so a partition's
//! log is purged only up to its retention start (what the [`Retention`] policy would remove now),
//! never merely because a snapshot was taken; a keep-all log is never purged. A purge records the
//! purge point durably, and the records themselves are removed (storage compaction) below
//! `min(last purged + 1, purge limit)` and only as the policy allows.

use shale_storage::{CompactionConfig, Offset};

/// What physical log removal a group's retention allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Drop sealed segments as soon as a snapshot covers them (the metadata group).
    #[default]
    SnapshotOnly,
    /// Kafka-style retention: a sealed segment a snapshot covers goes once the log is over
    /// `retain_bytes`, or once the segment's newest record is older than `retain_age_ms`.
    /// Both `None` keeps everything (as [`Retention::KeepAll`]).
    Limits {
        /// Keep at most about this many bytes of log.
        retain_bytes: Option<u64>,
        /// Drop segments whose newest record is older than this.
        retain_age_ms: Option<u64>,
    },
    /// Never drop records.
    KeepAll,
}

impl Retention {
    /// openraft's `max_in_snapshot_log_to_keep` for a group under this policy: `0` (purge right
    /// after each snapshot) only where nothing but the snapshot is kept; otherwise openraft never
    /// purges on its own and the log is purged only to the retention start.
    pub fn max_in_snapshot_log_to_keep(&self) -> u64 {
        match self {
            Retention::SnapshotOnly => 0,
            Retention::Limits { .. } | Retention::KeepAll => u64::MAX,
        }
    }

    /// The storage compaction to run, given the highest log start the snapshot/purge state and the
    /// application's purge limit allow; `None` when nothing may be removed.
    pub fn compaction(&self, max_log_start: u64) -> Option<CompactionConfig> {
        let max_log_start = Some(Offset::new(max_log_start));
        match *self {
            Retention::SnapshotOnly => {
                Some(CompactionConfig { retain_bytes: None, retain_age_ms: None, max_log_start })
            }
            Retention::Limits { retain_bytes: None, retain_age_ms: None } | Retention::KeepAll => None,
            Retention::Limits { retain_bytes, retain_age_ms } => {
                Some(CompactionConfig { retain_bytes, retain_age_ms, max_log_start })
            }
        }
    }
}

/// The highest log start compaction may move to: below the purge point (which openraft only moves
/// up to its last snapshot) and below the application's limit.
pub fn max_log_start(last_purged_index: Option<u64>, purge_limit: Option<u64>) -> u64 {
    let by_purge = last_purged_index.map_or(0, |i| i + 1);
    purge_limit.map_or(by_purge, |limit| limit.min(by_purge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_log_start_is_the_lower_bound() {
        assert_eq!(max_log_start(None, None), 0);
        assert_eq!(max_log_start(Some(9), None), 10);
        assert_eq!(max_log_start(Some(9), Some(4)), 4);
        assert_eq!(max_log_start(Some(9), Some(40)), 10);
    }

    #[test]
    fn keep_all_never_compacts() {
        assert_eq!(Retention::KeepAll.compaction(100), None);
        assert_eq!(Retention::Limits { retain_bytes: None, retain_age_ms: None }.compaction(100), None);
        let c = Retention::Limits { retain_bytes: Some(5), retain_age_ms: None }.compaction(100).unwrap();
        assert_eq!(c.max_log_start, Some(Offset::new(100)));
        assert_eq!(c.retain_bytes, Some(5));
        assert_eq!(Retention::SnapshotOnly.compaction(7).unwrap().max_log_start, Some(Offset::new(7)));
    }

    #[test]
    fn only_snapshot_only_groups_purge_after_a_snapshot() {
        assert_eq!(Retention::SnapshotOnly.max_in_snapshot_log_to_keep(), 0);
        assert_eq!(Retention::KeepAll.max_in_snapshot_log_to_keep(), u64::MAX);
        let limits = Retention::Limits { retain_bytes: Some(1), retain_age_ms: None };
        assert_eq!(limits.max_in_snapshot_log_to_keep(), u64::MAX);
    }
}
