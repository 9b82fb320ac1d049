//! A long randomized run: while a workload of idempotent producers writes, one fault after another
//! hits the cluster: SIGKILL and restart, graceful restart, `docker pause` (cgroup freezer),
//! SIGSTOP/SIGCONT, network partitions (`docker network disconnect`) and bit flips in a stopped
//! node's log segments (found and repaired by its scrubber), on a random node, the
//! metadata leader or a partition leader, held for a random while and then healed; now and then a
//! second node is hit at the same time (no majority: writes stall, nothing acknowledged may be
//! lost). Every Raft group snapshots every [`SMALL_SNAPSHOT_EVERY`] entries, so nodes that were
//! down come back behind snapshots.
//!
//! After each healed step the cluster must acknowledge writes again; at the end every checker runs:
//! every replica (read on its own) holds every acknowledged record from offset 0 at its offset with
//! its chain hash, exactly once; offsets are never reused; each producer's records are in order
//! without duplicates in every replica and in a consumer's view.
//!
//! `SHALE_CHAOS_SECS` sets the length of the fault phase (default 300; CI runs the default).
//! `SHALE_CHAOS_SEED` replays a run: the seed is printed at the start, and the same seed gives the
//! same sequence of faults, victims (a node id, or a role such as "metadata leader", whose holder
//! is up to the cluster) and durations.

use std::time::Duration;

use shale_tests::cluster::{ClusterOptions, ContainerCluster, READY_TIMEOUT};
use shale_tests::scenario::{PROGRESS_TIMEOUT, SMALL_SNAPSHOT_EVERY, STOP_GRACE, Setup, snapshot_env};
use shale_tests::workload::Workload;
use tokio::time::Instant;

/// Default length of the fault phase.
const DEFAULT_SECS: u64 = 300;
/// Partitions of the topic.
const PARTITIONS: u32 = 3;
/// Acknowledgements required after each healed step (availability returns).
const ACKS_AFTER_HEAL: u64 = 50;

/// splitmix64: a small seeded generator, so a seed replays a run on any machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL, then start.
    Kill,
    /// SIGTERM (`docker stop`), then start.
    Restart,
    /// `docker pause`, then unpause.
    Pause,
    /// SIGSTOP, then SIGCONT.
    Stop,
    /// Network disconnect, then connect.
    Partition,
    /// `docker stop`, one bit flipped in the middle of the newest sealed segment of the node's
    /// longest partition log (the active one if none is sealed), then start: the scrubber must
    /// find and repair it, and no damaged record may be served.
    BitFlip,
}

const FAULTS: [Fault; 6] = [Fault::Kill, Fault::Restart, Fault::Pause, Fault::Stop, Fault::Partition, Fault::BitFlip];

impl Fault {
    /// Injects the fault; answers the one injected (the cgroup freezer can fail to freeze a
    /// process in the middle of disk I/O: after three tries a pause becomes a SIGSTOP).
    async fn inject(self, cluster: &ContainerCluster, id: u64) -> Fault {
        match self {
            Fault::Kill => cluster.kill(id).await.unwrap(),
            Fault::Restart => cluster.stop(id, STOP_GRACE).await.unwrap(),
            Fault::Pause => {
                for attempt in 1..=3 {
                    match cluster.pause(id).await {
                        Ok(()) => return Fault::Pause,
                        Err(e) => eprintln!("chaos: pause of node {id} failed (attempt {attempt}): {e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                eprintln!("chaos: SIGSTOP of node {id} instead of the pause");
                cluster.signal(id, "STOP").await.unwrap();
                return Fault::Stop;
            }
            Fault::Stop => cluster.signal(id, "STOP").await.unwrap(),
            Fault::Partition => cluster.disconnect(id).await.unwrap(),
            Fault::BitFlip => {
                cluster.stop(id, STOP_GRACE).await.unwrap();
                cluster.wait_stopped(id, STOP_GRACE + Duration::from_secs(5)).await.unwrap();
                let logs = cluster.partition_logs(id).await.unwrap();
                if let Some((stream, segments)) = logs.first().filter(|(_, s)| !s.is_empty()) {
                    let (file, len) = &segments[segments.len().saturating_sub(2)];
                    eprintln!("chaos: flipping a bit of node {id}'s {stream}/{file} at byte {}", len / 2);
                    cluster.flip_byte(id, &format!("{stream}/{file}"), len / 2).await.unwrap();
                }
            }
        }
        self
    }

    async fn heal(self, cluster: &ContainerCluster, id: u64) {
        match self {
            Fault::Kill | Fault::Restart | Fault::BitFlip => {
                // A SIGKILL or stop may still be under way.
                cluster.wait_stopped(id, STOP_GRACE + Duration::from_secs(5)).await.unwrap();
                cluster.start_node(id).await.unwrap();
            }
            Fault::Pause => cluster.unpause(id).await.unwrap(),
            Fault::Stop => cluster.signal(id, "CONT").await.unwrap(),
            Fault::Partition => cluster.connect(id).await.unwrap(),
        }
    }
}

/// A victim: a random node, the metadata leader, or the leader of a random partition.
async fn pick_victim(rng: &mut Rng, cluster: &ContainerCluster, topic: &str, exclude: Option<u64>) -> (u64, String) {
    let ids: Vec<u64> = cluster.ids().into_iter().filter(|id| Some(*id) != exclude).collect();
    let random = ids[rng.below(ids.len() as u64) as usize];
    let kind = rng.below(3);
    let partition = rng.below(u64::from(PARTITIONS)) as u32;
    let chosen = match kind {
        0 => cluster.metadata_leader(&ids).await.map(|id| (id, "metadata leader".to_string())),
        1 => cluster
            .partition_leader(topic, partition, &ids)
            .await
            .map(|id| (id, format!("leader of {topic}/{partition}"))),
        _ => None,
    };
    chosen.unwrap_or((random, "random node".to_string()))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn randomized_kills_pauses_partitions_and_restarts_lose_no_acknowledged_record() {
    let secs = env_u64("SHALE_CHAOS_SECS").unwrap_or(DEFAULT_SECS);
    let seed = env_u64("SHALE_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("chaos: seed {seed}, {secs} s of faults (replay: SHALE_CHAOS_SEED={seed} SHALE_CHAOS_SECS={secs})");
    let mut rng = Rng(seed);

    // Small segments, so bit flips land in sealed segments too.
    let mut env = snapshot_env(SMALL_SNAPSHOT_EVERY);
    env.push(("SHALE_SEGMENT_BYTES".to_string(), (256 << 10).to_string()));
    let options = ClusterOptions { env, ..ClusterOptions::default() };
    let setup = Setup::start_with("chaos", PARTITIONS, options).await.unwrap();
    let cluster = &setup.cluster;
    let mut config = setup.workload_config();
    config.max_records_per_producer = u64::MAX;
    let workload = Workload::start("chaos", &config).unwrap();
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();

    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < Duration::from_secs(secs) {
        step += 1;
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let hold = rng.millis(1_000, 8_000);
        let (victim, role) = pick_victim(&mut rng, cluster, &setup.topic, None).await;
        // Now and then a second node at once: no majority while both are down.
        let second = if rng.below(100) < 15 {
            let fault2 = FAULTS[rng.below(FAULTS.len() as u64) as usize];
            let (id, role2) = pick_victim(&mut rng, cluster, &setup.topic, Some(victim)).await;
            Some((fault2, id, role2))
        } else {
            None
        };
        eprintln!(
            "chaos step {step} at {:.1}s: {fault:?} node {victim} ({role}) for {hold:?}{}; acked {} failed {}",
            started.elapsed().as_secs_f64(),
            second.as_ref().map_or(String::new(), |(f, id, r)| format!(", and {f:?} node {id} ({r})")),
            workload.acked(),
            workload.unacked(),
        );
        let injected = fault.inject(cluster, victim).await;
        let second = match second {
            Some((f, id, _)) => Some((f.inject(cluster, id).await, id)),
            None => None,
        };
        tokio::time::sleep(hold).await;
        if let Some((f, id)) = second {
            f.heal(cluster, id).await;
        }
        injected.heal(cluster, victim).await;
        for id in cluster.ids() {
            cluster
                .wait_ready(id, READY_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("chaos step {step}, seed {seed}: {e}"));
        }
        workload
            .wait_for_more_acks(ACKS_AFTER_HEAL, PROGRESS_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("chaos step {step}, seed {seed}: writes did not resume: {e}"));
        tokio::time::sleep(rng.millis(0, 3_000)).await;
    }

    let history = workload.stop().await;
    match setup.check(&history).await {
        Ok(summary) => eprintln!("chaos: seed {seed}, {step} steps: {summary}"),
        Err(report) => panic!("chaos: seed {seed}, {step} steps: {report}"),
    }
}
