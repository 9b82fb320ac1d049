//! The background scrubber: re-reads every segment of every Raft log stream on this node at a
//! bounded rate, and repairs what it finds damaged from the other replicas.
//!
//! - Every segment of every group's log stream (`2g`), sealed ones and the active one up to its
//!   current end, is scrubbed in turn
//!   (`StorageBackend::scrub_segment`, on the blocking pool), sleeping after each so the pass
//!   reads at most `bytes_per_sec`; a pass starts at node start and every `pass_interval_ms`.
//!   A read (fetch) that meets damage reports it here and that segment is scrubbed next.
//! - A damaged range is recorded in the [`DamageRegistry`] (shown by `ClusterStatus`, counted in
//!   `shale_scrub_damaged_ranges`), logged at ERROR, and never served: storage's verified reads
//!   refuse it, and the fetch service answers such a read with a retryable UNAVAILABLE
//!   ([`damaged_read`]) so the client reads another replica.
//! - While a group has a damaged range here, this node starts no election for it and hands its
//!   leadership to another voter if it leads.
//! - Repair: the range's records are read (`ReadLog` on the Raft transport) from every other
//!   replica; the answers are grouped by the chain hash they end on, and the largest group is
//!   tried first if, counting this node (whose storage accepts only records that end on its own
//!   known-good hash), it is a majority of the group's voters. Storage's `repair_range` checks
//!   the chain again before it writes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use shale_raft::cluster::{Cluster, ClusterError};
use shale_raft::{GroupId, RaftError, repair};
use shale_storage::{ChainHash, Damage, Offset, Record, StorageBackend, StorageError, StreamId};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::metrics::Metrics;

/// Scrubber settings (`[scrub]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    /// Whether the background scrubber runs.
    pub enabled: bool,
    /// Most bytes per second a scrub pass reads.
    pub bytes_per_sec: u64,
    /// Pause between the end of one pass and the start of the next.
    pub pass_interval_ms: u64,
    /// How often a damaged range whose repair failed is tried again.
    pub repair_retry_ms: u64,
    /// Bound on one `ReadLog` call to a peer during a repair.
    pub repair_timeout_ms: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bytes_per_sec: 16 << 20,
            pass_interval_ms: 60_000,
            repair_retry_ms: 5_000,
            repair_timeout_ms: 10_000,
        }
    }
}

/// One damaged range of this node's copy of a group's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedRange {
    /// The Raft group.
    pub group: GroupId,
    /// Its log stream.
    pub stream: StreamId,
    /// The segment file.
    pub file: String,
    /// First damaged offset.
    pub from: u64,
    /// One past the last damaged offset.
    pub to: u64,
    /// What is wrong with the first damaged record.
    pub reason: String,
}

/// The damaged ranges this node knows of, and reads that met damage.
#[derive(Debug, Default)]
pub struct DamageRegistry {
    ranges: Mutex<BTreeMap<(StreamId, u64), DamagedRange>>,
    /// (stream, offset) a read found damaged, to scrub next.
    reported: Mutex<BTreeSet<(StreamId, u64)>>,
    wake: Notify,
}

impl DamageRegistry {
    /// Every damaged range, in stream and offset order.
    pub fn all(&self) -> Vec<DamagedRange> {
        self.ranges.lock().values().cloned().collect()
    }

    /// Damaged ranges now.
    pub fn len(&self) -> usize {
        self.ranges.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ranges.lock().is_empty()
    }

    /// Whether `group` has a damaged range here.
    pub fn is_damaged(&self, group: GroupId) -> bool {
        self.ranges.lock().values().any(|d| d.group == group)
    }

    /// Records a damaged range; true if it was not known.
    fn insert(&self, d: DamagedRange) -> bool {
        self.ranges.lock().insert((d.stream, d.from), d).is_none()
    }

    /// Forgets the ranges of `stream` inside `[from, to)` (repaired, or found clean).
    fn clear(&self, stream: StreamId, from: u64, to: u64) -> usize {
        let mut r = self.ranges.lock();
        let before = r.len();
        r.retain(|(s, f), _| !(*s == stream && *f >= from && *f < to));
        before - r.len()
    }

    /// A read of `stream` met damage at `offset`: the scrubber looks at it next.
    pub fn report_read(&self, stream: StreamId, offset: u64) {
        if self.reported.lock().insert((stream, offset)) {
            self.wake.notify_one();
        }
    }

    fn take_reported(&self) -> Vec<(StreamId, u64)> {
        std::mem::take(&mut *self.reported.lock()).into_iter().collect()
    }
}

/// If `err` is a read that met damaged data here: reports it to the scrubber and returns the
/// retryable status to answer with (UNAVAILABLE: the client reads another replica).
pub fn damaged_read(registry: &DamageRegistry, err: &ClusterError) -> Option<Status> {
    let storage = match err {
        ClusterError::Storage(e) => e,
        ClusterError::Raft(RaftError::Storage { source, .. }) => source,
        _ => return None,
    };
    let StorageError::Corruption { stream, offset, .. } = storage else { return None };
    if let Some(o) = offset {
        registry.report_read(*stream, o.get());
    }
    let at = offset.map_or_else(|| "a record".to_string(), |o| format!("offset {o}"));
    Some(shale_client::error::status(
        shale_client::ErrorCode::Unavailable,
        format!(
            "this replica's copy of {at} is damaged and is not served until repaired; read another replica ({storage})"
        ),
    ))
}

/// The scrubber of one node.
pub struct Scrubber {
    cluster: Arc<Cluster>,
    storage: Arc<dyn StorageBackend>,
    registry: Arc<DamageRegistry>,
    metrics: Arc<Metrics>,
    config: ScrubConfig,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why a repair did not happen (logged; retried later).
#[derive(Debug, thiserror::Error)]
enum RepairFailure {
    #[error("group {0} is not in the applied metadata")]
    NoGroup(GroupId),
    #[error("no majority of replicas agrees on the range's records ({answers} answers, {voters} voters): {errors}")]
    NoMajority { answers: usize, voters: usize, errors: String },
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("blocking task failed: {0}")]
    Join(String),
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, RepairFailure> {
    Ok(tokio::task::spawn_blocking(f).await.map_err(|e| RepairFailure::Join(e.to_string()))??)
}

impl Scrubber {
    /// Starts the scrubber task (nothing if disabled); it ends when `shutdown` flips.
    pub fn spawn(
        cluster: Arc<Cluster>,
        storage: Arc<dyn StorageBackend>,
        registry: Arc<DamageRegistry>,
        metrics: Arc<Metrics>,
        config: ScrubConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        if !config.enabled {
            return None;
        }
        let s = Scrubber { cluster, storage, registry, metrics, config };
        Some(tokio::spawn(async move { s.run(shutdown).await }))
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if self.pass(&mut shutdown).await.is_err() {
                return;
            }
            // Between passes: scrub what reads report, retry repairs, until the next pass.
            let next_pass = tokio::time::Instant::now() + Duration::from_millis(self.config.pass_interval_ms);
            loop {
                let now = tokio::time::Instant::now();
                if now >= next_pass {
                    break;
                }
                let wait = Duration::from_millis(self.config.repair_retry_ms).min(next_pass - now);
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    () = self.registry.wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                if self.reported(&mut shutdown).await.is_err() {
                    return;
                }
                if self.repair_all_until(&mut shutdown).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One pass over every segment of every log stream. `Err` on shutdown.
    async fn pass(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), ()> {
        let storage = self.storage.clone();
        let streams = tokio::task::spawn_blocking(move || storage.streams()).await.unwrap_or_default();
        for stream in streams.into_iter().filter(|s| s.get() % 2 == 0) {
            let storage = self.storage.clone();
            let Ok(Ok(segments)) = tokio::task::spawn_blocking(move || storage.segments(stream)).await else {
                continue;
            };
            for seg in segments {
                self.reported(shutdown).await?;
                self.scrub(stream, seg.base, shutdown).await?;
            }
            self.repair_all_until(shutdown).await?;
        }
        Ok(())
    }

    /// Scrubs the segments reads reported damaged.
    async fn reported(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), ()> {
        for (stream, offset) in self.registry.take_reported() {
            let storage = self.storage.clone();
            let Ok(Ok(segments)) = tokio::task::spawn_blocking(move || storage.segments(stream)).await else {
                continue;
            };
            let offset = Offset::new(offset);
            if let Some(seg) = segments.into_iter().find(|s| s.base <= offset && offset < s.end) {
                self.scrub(stream, seg.base, shutdown).await?;
            }
        }
        Ok(())
    }

    /// Scrubs one segment, records what it found, and sleeps for the rate limit. `Err` on shutdown.
    async fn scrub(&self, stream: StreamId, base: Offset, shutdown: &mut watch::Receiver<bool>) -> Result<(), ()> {
        if *shutdown.borrow() {
            return Err(());
        }
        let storage = self.storage.clone();
        let report = match tokio::task::spawn_blocking(move || storage.scrub_segment(stream, base)).await {
            Ok(Ok(r)) => r,
            Ok(Err(StorageError::UnknownSegment { .. })) => return Ok(()), // compacted meanwhile
            Ok(Err(e)) => {
                tracing::warn!(stream = %stream, base = %base, error = %e, "scrub of a segment failed");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "scrub task failed");
                return Ok(());
            }
        };
        self.metrics.scrub_bytes.add(report.bytes);
        self.metrics.scrub_segments.inc();
        match &report.damage {
            Some(d) => self.damaged(d).await,
            None => {
                if self.registry.clear(stream, report.base.get(), report.end.get()) > 0 {
                    tracing::info!(stream = %stream, file = %report.file, "segment scrubbed clean; damage cleared");
                    self.leadership_allowed(stream).await;
                }
            }
        }
        self.metrics.scrub_damaged_ranges.set(self.registry.len() as u64);
        let pause = Duration::from_secs_f64(report.bytes as f64 / self.config.bytes_per_sec.max(1) as f64);
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Err(()),
            () = tokio::time::sleep(pause) => Ok(()),
        }
    }

    async fn damaged(&self, d: &Damage) {
        let group = GroupId(d.stream.get() / 2);
        let range = DamagedRange {
            group,
            stream: d.stream,
            file: d.file.clone(),
            from: d.first_bad.get(),
            to: d.good_from.get(),
            reason: d.reason.to_string(),
        };
        if self.registry.insert(range) {
            self.metrics.scrub_damage_found.inc();
            tracing::error!(
                group = %group, stream = %d.stream, file = %d.file, position = d.position,
                from = d.first_bad.get(), to = d.good_from.get(), reason = %d.reason,
                "damaged log range found; not served, repairing from the other replicas"
            );
        }
        if let Some(g) = self.cluster.router().group(group) {
            repair::avoid_leadership(&g, true);
            match repair::hand_over_leadership(&g).await {
                Ok(Some(to)) => {
                    tracing::warn!(group = %group, to, "handed leadership away while the log is damaged here")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(group = %group, error = %e, "cannot hand leadership away"),
            }
        }
    }

    /// Lets this node lead `stream`'s group again once nothing of it is damaged here.
    async fn leadership_allowed(&self, stream: StreamId) {
        let group = GroupId(stream.get() / 2);
        if !self.registry.is_damaged(group)
            && let Some(g) = self.cluster.router().group(group)
        {
            repair::avoid_leadership(&g, false);
        }
    }

    /// [`Scrubber::repair_all`], abandoned when the node shuts down (`Err`): a repair waiting on
    /// unreachable peers must not hold the storage past shutdown.
    async fn repair_all_until(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), ()> {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => Err(()),
            () = self.repair_all() => Ok(()),
        }
    }

    /// Tries to repair every known damaged range.
    async fn repair_all(&self) {
        for d in self.registry.all() {
            match self.repair(&d).await {
                Ok(()) => {
                    self.registry.clear(d.stream, d.from, d.from + 1);
                    self.metrics.scrub_repairs.inc();
                    tracing::warn!(group = %d.group, stream = %d.stream, from = d.from, to = d.to, "damaged range repaired from the replicas");
                    // Look again: the segment may hold more damage.
                    let storage = self.storage.clone();
                    let (stream, from) = (d.stream, Offset::new(d.from));
                    if let Ok(Ok(segs)) = tokio::task::spawn_blocking(move || storage.segments(stream)).await
                        && let Some(seg) = segs.into_iter().find(|s| s.base <= from && from < s.end)
                    {
                        let (tx, mut rx) = watch::channel(false);
                        let _ = self.scrub(stream, seg.base, &mut rx).await;
                        drop(tx);
                    }
                    self.leadership_allowed(d.stream).await;
                }
                Err(e) => {
                    self.metrics.scrub_repair_failures.inc();
                    tracing::warn!(group = %d.group, from = d.from, to = d.to, error = %e, "repair failed; will retry");
                }
            }
        }
        self.metrics.scrub_damaged_ranges.set(self.registry.len() as u64);
    }

    /// The group's replicas per the applied metadata (for the metadata group: its voters), with
    /// their addresses. Does not need the group to run here: a group whose log is damaged in
    /// the range its Raft core re-applies at start cannot start until it is repaired.
    fn replicas(&self, group: GroupId) -> Option<Vec<(u64, String)>> {
        let status = self.cluster.cluster_status();
        let ids: Vec<u64> = if group.0 == 0 {
            status.metadata.as_ref()?.replicas.clone()
        } else {
            self.cluster.local_topics().into_iter().flat_map(|t| t.partitions).find(|p| p.group == group)?.replicas
        };
        Some(
            ids.into_iter()
                .filter_map(|id| status.members.iter().find(|m| m.id == id).map(|m| (id, m.addr.clone())))
                .collect(),
        )
    }

    async fn repair(&self, d: &DamagedRange) -> Result<(), RepairFailure> {
        let router = self.cluster.router();
        let me = self.cluster.node_id();
        let replicas = self.replicas(d.group).ok_or(RepairFailure::NoGroup(d.group))?;
        let voters = replicas.len();
        let peers: Vec<(u64, String)> = replicas.into_iter().filter(|(id, _)| *id != me).collect();
        let timeout = Duration::from_millis(self.config.repair_timeout_ms);
        let reads = futures::future::join_all(
            peers.iter().map(|(_, addr)| repair::read_remote(router.peers(), addr, d.group, d.from, d.to, timeout)),
        )
        .await;
        let mut by_end: BTreeMap<ChainHash, (usize, Vec<Record>)> = BTreeMap::new();
        let mut errors = Vec::new();
        for ((id, _), r) in peers.iter().zip(reads) {
            match r {
                Ok(records) if records.len() as u64 == d.to - d.from => {
                    let end = records.last().expect("non-empty").hash;
                    by_end.entry(end).or_insert((0, records)).0 += 1;
                }
                Ok(_) => errors.push(format!("node {id}: short answer")),
                Err(e) => errors.push(format!("node {id}: {e}")),
            }
        }
        let answers = by_end.values().map(|(n, _)| n).sum();
        let mut candidates: Vec<(usize, Vec<Record>)> = by_end.into_values().collect();
        candidates.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let majority = voters / 2 + 1;
        for (agree, records) in candidates {
            // This node counts as one more: storage accepts only records that end on its own
            // known-good hash.
            if agree + 1 < majority {
                break;
            }
            let storage = self.storage.clone();
            let (stream, from) = (d.stream, Offset::new(d.from));
            match blocking(move || storage.repair_range(stream, from, records)).await {
                Ok(_) => return Ok(()),
                Err(RepairFailure::Storage(e @ StorageError::RepairRejected { .. })) => {
                    errors.push(format!("records refused: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(RepairFailure::NoMajority { answers, voters, errors: errors.join("; ") })
    }
}
