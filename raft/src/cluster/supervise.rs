//! The group supervisor: restarts local groups whose Raft core stopped on an error.
//!
//! openraft stops a group's core for good when its storage fails (a full disk: ENOSPC on a write
//! or fsync), and a storage stream that failed refuses writes until it is reopened. Each reconcile
//! pass (see [`super::reconcile`]) looks at every local group, the metadata group included:
//! - a group whose core stopped, or one of whose two streams failed, is reported once (ERROR log,
//!   [`Cluster::group_failures_total`]) and listed by [`Cluster::stopped_groups`] (the node's
//!   readiness is 503 while any is);
//! - a restart is then tried after [`RESTART_BACKOFF_MIN`], doubling up to
//!   [`RESTART_BACKOFF_MAX`]: the stopped group is shut down, its streams are reopened from their
//!   files ([`shale_storage::StorageBackend::reopen_stream`]: recovery of what is on disk, never a
//!   deletion) and the group is started again from disk ([`crate::Router::start_group`]); it then catches up
//!   from its leader like a restarted node. While the disk is still full, the restart or the
//!   group's next write fails again and is retried;
//! - a restarted group is still listed by [`Cluster::stopped_groups`] (so the node stays unready)
//!   until it has run for [`HEALTHY_AFTER`], then forgotten (a later failure is a new one, logged
//!   at ERROR again).
//!
//! Nothing in this path deletes data: a group that cannot be restarted stays stopped, keeps its
//! streams, and is retried.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::apps::MetadataApp;
use super::reconcile::Wanted;
use super::{Cluster, LocalPartition};
use crate::cluster::api::*;
use crate::{RaftGroup, Retention};

/// First wait before restarting a stopped group.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two restart attempts of one group.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A restarted group that has kept running this long counts as recovered.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(5);

/// A local group whose Raft core stopped on an error, as the supervisor tracks it.
#[derive(Debug, Clone)]
pub(super) struct GroupFailure {
    /// The newest error that stopped it.
    reason: String,
    /// When it was first found stopped.
    since: Instant,
    /// Restart attempts so far (successful or not).
    attempts: u32,
    /// The next restart attempt is not made before this.
    next_attempt: Instant,
    /// When it was last restarted, while it runs again (not stopped).
    restarted_at: Option<Instant>,
    /// The metadata group only: the highest index the shared metadata state reflected before a
    /// restart (a restarted group's app takes over the shared state only past it).
    applied_floor: Option<u64>,
}

/// A local group that is stopped and not running again yet (for readiness, metrics, status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedGroup {
    /// The group.
    pub group: GroupId,
    /// The error that stopped it.
    pub reason: String,
    /// How long it has been stopped.
    pub stopped_for: Duration,
    /// Restart attempts made so far.
    pub restart_attempts: u32,
    /// Set once it was restarted and runs again, for how long: it is still listed until it has
    /// run for [`HEALTHY_AFTER`] (a restart on a disk that is still full stops again at once).
    pub running_again_for: Option<Duration>,
}

fn backoff(attempts: u32) -> Duration {
    RESTART_BACKOFF_MIN.saturating_mul(1 << attempts.min(8)).min(RESTART_BACKOFF_MAX)
}

impl Cluster {
    /// Local groups (metadata and partitions) whose Raft core stopped on an error and that have
    /// not run again for [`HEALTHY_AFTER`] since (see [`StoppedGroup::running_again_for`]). Empty
    /// on a healthy node.
    pub fn stopped_groups(&self) -> Vec<StoppedGroup> {
        let mut out: Vec<StoppedGroup> = self
            .failed_groups
            .lock()
            .iter()
            .filter(|(_, f)| f.restarted_at.is_none_or(|at| at.elapsed() < HEALTHY_AFTER))
            .map(|(g, f)| StoppedGroup {
                group: *g,
                reason: f.reason.clone(),
                stopped_for: f.since.elapsed(),
                restart_attempts: f.attempts,
                running_again_for: f.restarted_at.map(|at| at.elapsed()),
            })
            .collect();
        // A group found stopped since the last pass is reported before the supervisor sees it.
        let mut running: Vec<Arc<RaftGroup>> = self.partitions.read().values().map(|p| p.group.clone()).collect();
        running.push(self.meta());
        for g in running {
            if out.iter().all(|s| s.group != g.id())
                && let Some(reason) = self.stopped_reason(&g)
            {
                out.push(StoppedGroup {
                    group: g.id(),
                    reason,
                    stopped_for: Duration::ZERO,
                    restart_attempts: 0,
                    running_again_for: None,
                });
            }
        }
        out.sort_by_key(|s| s.group);
        out
    }

    /// Groups found stopped by an error since start (each stop counts, also a repeated one).
    pub fn group_failures_total(&self) -> u64 {
        self.group_failures_total.load(Ordering::Relaxed)
    }

    /// Stopped groups restarted from disk since start.
    pub fn group_restarts_total(&self) -> u64 {
        self.group_restarts_total.load(Ordering::Relaxed)
    }

    /// Why `group` is stopped (its core stopped, or one of its streams refuses writes), if it is.
    pub(super) fn stopped_reason(&self, group: &RaftGroup) -> Option<String> {
        if let Err(e) = group.health() {
            return Some(e.to_string());
        }
        let id = group.id();
        [id.log_stream(), id.meta_stream()].into_iter().find_map(|stream| {
            self.config.storage.stream_failure(stream).map(|cause| format!("storage stream {stream} failed: {cause}"))
        })
    }

    /// Notes that `gid` is stopped with `reason`: reported at ERROR the first time. Returns whether
    /// a restart attempt is due now.
    fn note_stopped(&self, gid: GroupId, reason: &str) -> bool {
        let now = Instant::now();
        let mut failed = self.failed_groups.lock();
        match failed.get_mut(&gid) {
            None => {
                tracing::error!(group = %gid, error = %reason, retry_in_ms = RESTART_BACKOFF_MIN.as_millis() as u64,
                    "raft group stopped on an error (a full disk?); it is not serving here and will be restarted from disk");
                self.group_failures_total.fetch_add(1, Ordering::Relaxed);
                failed.insert(
                    gid,
                    GroupFailure {
                        reason: reason.to_string(),
                        since: now,
                        attempts: 0,
                        next_attempt: now + RESTART_BACKOFF_MIN,
                        restarted_at: None,
                        applied_floor: None,
                    },
                );
                false
            }
            Some(f) => {
                if f.restarted_at.take().is_some() {
                    // Restarted, and stopped again (the disk is still full).
                    tracing::warn!(group = %gid, error = %reason, attempts = f.attempts, "restarted raft group stopped again; retrying");
                    self.group_failures_total.fetch_add(1, Ordering::Relaxed);
                    f.next_attempt = now + backoff(f.attempts);
                }
                f.reason = reason.to_string();
                now >= f.next_attempt
            }
        }
    }

    /// Whether a restart of a group that is tracked as stopped (and not running) is due.
    fn restart_due(&self, gid: GroupId) -> bool {
        self.failed_groups.lock().get(&gid).is_some_and(|f| Instant::now() >= f.next_attempt)
    }

    /// Records the outcome of one restart attempt.
    fn restart_attempted(&self, gid: GroupId, outcome: Result<(), String>) {
        let now = Instant::now();
        let mut failed = self.failed_groups.lock();
        let Some(f) = failed.get_mut(&gid) else { return };
        f.attempts += 1;
        match outcome {
            Ok(()) => {
                tracing::info!(group = %gid, attempts = f.attempts, stopped_ms = f.since.elapsed().as_millis() as u64,
                    "raft group restarted from disk; it catches up from its leader");
                self.group_restarts_total.fetch_add(1, Ordering::Relaxed);
                f.restarted_at = Some(now);
            }
            Err(reason) => {
                let wait = backoff(f.attempts);
                tracing::warn!(group = %gid, error = %reason, attempts = f.attempts, retry_in_ms = wait.as_millis() as u64,
                    "restarting a stopped raft group failed; will retry");
                f.reason = reason;
                f.next_attempt = now + wait;
            }
        }
    }

    /// Forgets groups that run again since [`HEALTHY_AFTER`], and groups no longer hosted here.
    fn forget_recovered(&self, wanted: &(dyn Fn(GroupId) -> bool + Sync)) {
        self.failed_groups.lock().retain(|gid, f| {
            if *gid != METADATA_GROUP && !wanted(*gid) {
                return false;
            }
            f.restarted_at.is_none_or(|at| at.elapsed() < HEALTHY_AFTER)
        });
    }

    /// Reopens a group's two streams (a no-op for streams that did not fail).
    async fn reopen_streams(&self, gid: GroupId) -> Result<(), String> {
        let storage = self.config.storage.clone();
        tokio::task::spawn_blocking(move || {
            for stream in [gid.log_stream(), gid.meta_stream()] {
                storage.reopen_stream(stream).map_err(|e| format!("reopening storage stream {stream}: {e}"))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("reopen task failed: {e}"))?
    }

    /// One supervisor step for a partition group this node should run: `existing` is the
    /// running (possibly stopped) group, if any. Returns the group to tend this pass, or `None`
    /// when it is stopped (and not restarted now). Called with the lifecycle lock held.
    pub(super) async fn supervise_partition(
        &self,
        gid: GroupId,
        existing: Option<Arc<LocalPartition>>,
        w: &Wanted,
    ) -> Option<Arc<LocalPartition>> {
        match &existing {
            Some(local) => {
                let reason = self.stopped_reason(&local.group)?;
                if !self.note_stopped(gid, &reason) {
                    return None;
                }
                // Out of the map first: nothing routes to the stopped group while it restarts.
                self.partitions.write().remove(&gid);
                if let Err(e) = self.bounded_ignoring_shutdown("stopped group shutdown", local.group.shutdown()).await {
                    tracing::debug!(group = %gid, error = %e, "shutting down a stopped group");
                }
            }
            None if !self.restart_due(gid) => return None,
            None => {}
        }
        if let Err(e) = self.reopen_streams(gid).await {
            self.restart_attempted(gid, Err(e));
            return None;
        }
        match self.start_partition(gid, w).await {
            Ok(local) => {
                self.restart_attempted(gid, Ok(()));
                Some(local)
            }
            Err(e) => {
                self.restart_attempted(gid, Err(e.to_string()));
                None
            }
        }
    }

    /// Whether `gid` is tracked as stopped and not running (its start goes through
    /// [`Cluster::supervise_partition`]).
    pub(super) fn is_stopped(&self, gid: GroupId) -> bool {
        self.failed_groups.lock().get(&gid).is_some_and(|f| f.restarted_at.is_none())
    }

    /// One supervisor step for the metadata group (called with the lifecycle lock held): restarts
    /// it from disk when it has stopped. Until the restarted group's state has caught up with what
    /// readers saw before, they keep seeing that (see [`MetadataApp::resuming`]).
    pub(super) async fn supervise_metadata(&self, wanted: &(dyn Fn(GroupId) -> bool + Sync)) {
        self.forget_recovered(wanted);
        let meta = self.meta();
        let Some(reason) = self.stopped_reason(&meta) else { return };
        if !self.note_stopped(METADATA_GROUP, &reason) {
            return;
        }
        let floor = {
            let mut failed = self.failed_groups.lock();
            let f = failed.get_mut(&METADATA_GROUP).expect("noted above");
            f.applied_floor = f.applied_floor.max(meta.applied_index());
            f.applied_floor
        };
        if let Err(e) = self.bounded_ignoring_shutdown("stopped metadata group shutdown", meta.shutdown()).await {
            tracing::debug!(error = %e, "shutting down the stopped metadata group");
        }
        if let Err(e) = self.reopen_streams(METADATA_GROUP).await {
            self.restart_attempted(METADATA_GROUP, Err(e));
            return;
        }
        let app = match floor {
            Some(applied) => MetadataApp::resuming(self.metadata.clone(), self.metadata_changed_tx.clone(), applied),
            None => MetadataApp::new(self.metadata.clone(), self.metadata_changed_tx.clone()),
        };
        let mut config = self.config.raft.clone();
        config.retention = Retention::SnapshotOnly;
        let started = self.router.start_group(METADATA_GROUP, self.config.storage.clone(), Box::new(app), config).await;
        match started {
            Ok(group) => {
                if let Some(budget) = &self.config.log_cache_budget {
                    group.log().set_cache_budget(budget);
                }
                *self.metadata_group.write() = group;
                self.restart_attempted(METADATA_GROUP, Ok(()));
            }
            Err(e) => self.restart_attempted(METADATA_GROUP, Err(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_from_the_minimum_to_the_maximum() {
        assert_eq!(backoff(0), RESTART_BACKOFF_MIN);
        assert_eq!(backoff(1), RESTART_BACKOFF_MIN * 2);
        assert_eq!(backoff(2), RESTART_BACKOFF_MIN * 4);
        assert_eq!(backoff(3), RESTART_BACKOFF_MAX);
        assert_eq!(backoff(40), RESTART_BACKOFF_MAX);
    }
}
