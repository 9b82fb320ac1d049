//! The steps every container fault test shares: start a cluster with a topic and a workload, and
//! at the end collect every replica's log, a consumer's view and `Verify` answers, then run the
//! [`crate::checkers`].

use std::collections::BTreeMap;
use std::time::Duration;

use shale_client::{Client, NewTopic};

use crate::checkers;
use crate::cli;
use crate::cluster::{ClusterOptions, ContainerCluster};
use crate::error::HarnessError;
use crate::workload::{self, History, Workload, WorkloadConfig};

/// Replicas per partition (every node holds every partition).
pub const REPLICATION: u32 = 3;
/// Convergence waits and reads of every replica before the checkers judge the last reading.
const READ_ATTEMPTS: usize = 3;
/// Bound on replicas converging after the faults healed.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// SIGKILL follows SIGTERM after this long when the cluster is stopped for the offline check.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// Bound on an election after a fault.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the workload making progress (availability) while a majority is up.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// The snapshot interval of the clusters that drive nodes past snapshots (`raft.snapshot_every_entries`;
/// the default, 10 000, would take minutes of writes per snapshot).
pub const SMALL_SNAPSHOT_EVERY: u64 = 500;

/// Node environment making every Raft group snapshot every `entries` entries.
pub fn snapshot_env(entries: u64) -> Vec<(String, String)> {
    vec![("SHALE_SNAPSHOT_EVERY_ENTRIES".to_string(), entries.to_string())]
}

/// A started cluster with a topic and a client.
#[derive(Debug)]
pub struct Setup {
    /// The containers.
    pub cluster: ContainerCluster,
    /// A client for the cluster.
    pub client: Client,
    /// The topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: u32,
}

impl Setup {
    /// Starts three nodes and creates `topic` with `partitions` partitions, 3 replicas each, then
    /// waits until every partition has a leader.
    pub async fn start(topic: &str, partitions: u32) -> Result<Self, HarnessError> {
        Self::start_with(topic, partitions, ClusterOptions::default()).await
    }

    /// As [`Setup::start`], with the nodes set up by `options`.
    pub async fn start_with(topic: &str, partitions: u32, options: ClusterOptions) -> Result<Self, HarnessError> {
        crate::init_logging();
        let cluster = ContainerCluster::start_with(3, options).await?;
        let client = cluster.client()?;
        let created = async {
            client
                .admin()
                .create_topic(NewTopic::new(topic, partitions, REPLICATION))
                .await
                .map_err(HarnessError::client(format!("creating topic {topic}")))?;
            for p in 0..partitions {
                cluster.wait_partition_leader(topic, p, &cluster.ids(), ELECTION_TIMEOUT).await?;
            }
            Ok::<_, HarnessError>(())
        };
        if let Err(e) = created.await {
            // The error returns before any test panics, so the cluster's drop would not save the logs.
            cluster.dump_logs(40);
            return Err(e);
        }
        Ok(Self { cluster, client, topic: topic.to_string(), partitions })
    }

    /// The default workload on this setup's topic.
    pub fn workload_config(&self) -> WorkloadConfig {
        WorkloadConfig::new(&self.topic, self.partitions, self.cluster.endpoints())
    }

    /// Starts a workload whose values are tagged `run`.
    pub fn start_workload(&self, run: &str) -> Result<Workload, HarnessError> {
        Workload::start(run, &self.workload_config())
    }

    /// The highest log end of each partition among `nodes`' own replicas (local reads).
    pub async fn log_ends(&self, nodes: &[u64]) -> Result<BTreeMap<u32, u64>, HarnessError> {
        let mut ends = BTreeMap::new();
        for p in 0..self.partitions {
            let mut best = None;
            let mut last_err = None;
            for id in nodes {
                match workload::replica_bounds(&self.cluster.node(*id)?.grpc_addr(), &self.topic, p).await {
                    Ok((_, end)) => best = best.max(Some(end)),
                    Err(e) => last_err = Some(e),
                }
            }
            match (best, last_err) {
                (Some(end), _) => ends.insert(p, end),
                (None, Some(e)) => return Err(e),
                (None, None) => return Err(HarnessError::Usage("log_ends of no nodes".into())),
            };
        }
        Ok(ends)
    }

    /// After the faults are healed: waits for the replicas to converge, reads every replica and a
    /// consumer's view, asks `Verify` (at the common end and at each partition's first and last
    /// acknowledged offsets), and runs every checker. Answers a summary for the test log.
    pub async fn check(&self, history: &History) -> Result<String, String> {
        // On failure the test panics and the cluster's drop prints and saves the node logs.
        self.collect_and_check(history).await
    }

    async fn collect_and_check(&self, history: &History) -> Result<String, String> {
        let addrs = self.cluster.grpc_addrs();
        // A Raft entry without records (a new leader's blank entry) can still be committed between
        // the convergence wait and the reads, leaving one replica an entry behind in what was read.
        // Observe again while the cluster settles; the checkers then judge the last reading, so a
        // replica that stays behind is still reported.
        let mut views = Vec::new();
        for _ in 0..READ_ATTEMPTS {
            workload::wait_replicas_converged(&addrs, &self.topic, self.partitions, CONVERGE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            views =
                workload::read_all_replicas(&addrs, &self.topic, self.partitions).await.map_err(|e| e.to_string())?;
            let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
            if views.iter().all(|v| *ends.entry(v.partition).or_insert(v.log_end) == v.log_end) {
                break;
            }
        }
        let ends: BTreeMap<u32, u64> = views.iter().map(|v| (v.partition, v.log_end)).collect();
        let consumed = workload::consume_all(&self.client, &self.topic, &ends, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        views.extend(consumed);
        // Verify at each partition's first and last acknowledged offsets, besides the common end.
        let mut bounds: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for ack in &history.acks {
            let b = bounds.entry(ack.partition).or_insert((ack.offset, ack.offset));
            b.0 = b.0.min(ack.offset);
            b.1 = b.1.max(ack.offset);
        }
        let probe: BTreeMap<u32, Vec<u64>> = bounds.into_iter().map(|(p, (lo, hi))| (p, vec![lo, hi])).collect();
        // A failing Verify call is itself a violation, reported together with every checker's verdict.
        // A replica that restarted moments ago can still be unreachable from the node that fans the
        // Verify out (its channel to the replica is in reconnect backoff): ask again, up to
        // READ_ATTEMPTS times, while a replica answers with a transport error; the checkers judge
        // the last answer, so a replica that stays unreachable is still reported.
        let (mut verify, mut verify_error) = (Vec::new(), None);
        for attempt in 0..READ_ATTEMPTS {
            (verify, verify_error) =
                match workload::verify_all(&self.client, &self.topic, self.partitions, &probe).await {
                    Ok(v) => (v, None),
                    Err(e) => (Vec::new(), Some(e.to_string())),
                };
            let unreachable = verify.iter().any(|r: &workload::VerifyReport| {
                r.replicas.iter().any(|(_, hash, error)| hash.is_none() && error.contains("Unavailable"))
            });
            if !unreachable || attempt + 1 == READ_ATTEMPTS {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let records_per_replica: usize =
            views.iter().filter(|v| v.source == workload::ViewSource::Replica(1)).map(|v| v.records.len()).sum();
        let mut violations =
            checkers::check_all(history, &views, &verify, REPLICATION as usize, true).err().unwrap_or_default();
        let failed =
            |property: &'static str, problem: String| checkers::Violation { property, problems: vec![problem] };
        if let Some(error) = verify_error {
            violations.push(failed("verify answers for every partition", error));
        }
        let container = self.cluster.nodes()[0].container.clone();
        match cli::verify_online(&container, &self.topic).await {
            Ok(report) => violations.extend(checkers::cli_verify_agrees(&report, self.partitions).err()),
            Err(e) => violations.push(failed("shale verify runs", e.to_string())),
        }
        // Offline: every node stopped cleanly, then its files checked record by record.
        for node in self.cluster.nodes() {
            if let Err(e) = self.cluster.stop(node.id, STOP_GRACE).await {
                violations.push(failed("nodes stop", e.to_string()));
            }
        }
        let mut offline = Vec::new();
        for node in self.cluster.nodes() {
            match cli::verify_offline(self.cluster.image(), &node.volume).await {
                Ok(report) => offline.push((node.id, report)),
                Err(e) => violations.push(failed("shale verify --data-dir runs", format!("node {}: {e}", node.id))),
            }
        }
        violations.extend(checkers::disks_undamaged(&offline).err());
        let verified_records: u64 =
            offline.iter().flat_map(|(_, r)| &r.streams).filter_map(|s| s.records_verified).sum();
        let summary = format!(
            "{} acknowledged, {} not; {records_per_replica} records per replica; {} Verify answers; \
             offline verify of {} nodes ({verified_records} records)",
            history.acks.len(),
            history.unacked.len(),
            verify.len(),
            offline.len(),
        );
        if violations.is_empty() {
            Ok(summary)
        } else {
            Err(format!("{summary}\n{}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
        }
    }
}
