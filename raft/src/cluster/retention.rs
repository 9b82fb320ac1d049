//! The retention loop: every `retention_interval_ms`, each local partition whose topic has a
//! retention limit is snapshotted and then purged through raft-core's retention hook, which never
//! removes records above the last snapshot. So committed records not yet covered by a snapshot are
//! never lost, and purging never races the application state.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;

use super::Cluster;

/// Runs until shutdown (or until the cluster is dropped).
pub(super) async fn run(cluster: Weak<Cluster>, shutdown: watch::Receiver<bool>) {
    let Some(interval) = cluster.upgrade().map(|c| Duration::from_millis(c.config.retention_interval_ms.max(100)))
    else {
        return;
    };
    super::run_every(cluster, shutdown, interval, |c| async move { c.enforce_retention_once().await }).await;
}

impl Cluster {
    async fn enforce_retention_once(&self) {
        let locals: Vec<_> = self.partitions.read().values().cloned().collect();
        for local in locals {
            let Some(policy) = *local.retention.lock() else { continue };
            if policy.retention_bytes.is_none() && policy.retention_ms.is_none() {
                continue;
            }
            let group = &local.group;
            if let Err(e) = group.trigger_snapshot(self.timeout()).await {
                tracing::debug!(group = %group.id(), error = %e, "retention: snapshot failed");
                continue;
            }
            match self.bounded("retention purge", group.enforce_retention(self.timeout() / 2)).await {
                Ok(log_start) => {
                    local.state.write().prune_below(log_start);
                    // Refresh the record offset the log now starts at (served by sync readers).
                    if let Err(e) = self.record_log_start(&local).await {
                        tracing::debug!(group = %group.id(), error = %e, "retention: log start offset");
                    }
                }
                Err(e) => tracing::debug!(group = %group.id(), error = %e, "retention: purge failed"),
            }
        }
    }
}
