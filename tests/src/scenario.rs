//! The steps every container fault test shares: start a cluster with a topic and a workload, and
//! at the end collect every replica's log, a consumer's view and `Verify` answers, then run the
//! [`crate::checkers`].

use std::collections::BTreeMap;
use std::time::Duration;

use shale_client::{Client, NewTopic};

use crate::checkers;
use crate::cluster::ContainerCluster;
use crate::error::HarnessError;
use crate::workload::{self, History, Workload, WorkloadConfig};

/// Replicas per partition (every node holds every partition).
pub const REPLICATION: u32 = 3;
/// Bound on replicas converging after the faults healed.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on an election after a fault.
pub const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the workload making progress (availability) while a majority is up.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);

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
        crate::init_logging();
        let cluster = ContainerCluster::start(3).await?;
        let client = cluster.client()?;
        client
            .admin()
            .create_topic(NewTopic::new(topic, partitions, REPLICATION))
            .await
            .map_err(HarnessError::client(format!("creating topic {topic}")))?;
        for p in 0..partitions {
            cluster.wait_partition_leader(topic, p, &cluster.ids(), ELECTION_TIMEOUT).await?;
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

    /// After the faults are healed: waits for the replicas to converge, reads every replica and a
    /// consumer's view, asks `Verify` (at the common end and at each partition's first and last
    /// acknowledged offsets), and runs every checker. Answers a summary for the test log.
    pub async fn check(&self, history: &History) -> Result<String, String> {
        // On failure the test panics and the cluster's drop prints and saves the node logs.
        self.collect_and_check(history).await
    }

    async fn collect_and_check(&self, history: &History) -> Result<String, String> {
        let addrs = self.cluster.grpc_addrs();
        workload::wait_replicas_converged(&addrs, &self.topic, self.partitions, CONVERGE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let mut views =
            workload::read_all_replicas(&addrs, &self.topic, self.partitions).await.map_err(|e| e.to_string())?;
        let ends: BTreeMap<u32, u64> = views.iter().map(|v| (v.partition, v.log_end)).collect();
        let consumed = workload::consume_all(&self.client, &self.topic, &ends, Duration::from_secs(60))
            .await
            .map_err(|e| e.to_string())?;
        views.extend(consumed);
        let mut probe: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for ack in &history.acks {
            let e = probe.entry(ack.partition).or_default();
            match e.len() {
                0 | 1 => e.push(ack.offset),
                _ => {
                    e[0] = e[0].min(ack.offset);
                    e[1] = e[1].max(ack.offset);
                }
            }
        }
        // A failing Verify call is itself a violation, reported together with every checker's verdict.
        let (verify, verify_error) =
            match workload::verify_all(&self.client, &self.topic, self.partitions, &probe).await {
                Ok(v) => (v, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
        let summary = format!(
            "{} acknowledged, {} not; {} records per replica; {} verify answers",
            history.acks.len(),
            history.unacked.len(),
            views
                .iter()
                .filter(|v| v.source == workload::ViewSource::Replica(1))
                .map(|v| v.records.len())
                .sum::<usize>(),
            verify.len()
        );
        let mut violations =
            checkers::check_all(history, &views, &verify, REPLICATION as usize).err().unwrap_or_default();
        if let Some(error) = verify_error {
            violations
                .push(checkers::Violation { property: "verify answers for every partition", problems: vec![error] });
        }
        if violations.is_empty() {
            Ok(summary)
        } else {
            Err(format!("{summary}\n{}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))
        }
    }
}
