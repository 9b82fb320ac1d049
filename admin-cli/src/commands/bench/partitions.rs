//! `shale bench partitions`: issue 15's many-partition figures on three local `shale-node run`
//! processes this command starts (and stops): time until every partition has a leader, leaders
//! per node, idle CPU and RSS of the nodes, failover and restart times, leader balance after the
//! restart, and produce throughput to many partitions at once. Prints figures; asserts nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::{ClusterStatusRequest, ClusterStatusResponse};
use shale_client::{Client, ClientConfig, NewTopic, ProducerConfig, ProducerRecord};
use tokio::process::{Child, Command};

use crate::cli::BenchPartitionsArgs;
use crate::error::{CliError, Result};
use crate::output::Table;

/// What `shale bench partitions` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionsReport {
    /// Partitions created (replication factor 3), in topics of `partitions_per_topic`.
    pub partitions: u32,
    /// Partitions per topic.
    pub partitions_per_topic: u32,
    /// Seconds from the first creation until every partition had a leader.
    pub all_leaders_s: f64,
    /// Partitions each node led then.
    pub leaders_at_creation: BTreeMap<u64, u32>,
    /// Partitions each node led after the idle period (preferred leaders had time to take over).
    pub leaders_settled: BTreeMap<u64, u32>,
    /// CPU of the three nodes together over the idle period, in % of one core.
    pub idle_cpu_percent: f64,
    /// Seconds of idle measurement.
    pub idle_s: u64,
    /// Resident memory of each node after the idle period, MiB.
    pub rss_mib: BTreeMap<u64, f64>,
    /// Partitions the killed node led.
    pub killed_node_led: u32,
    /// Seconds from the kill until every partition it led had another leader (`None`: not
    /// within the wait).
    pub failover_s: Option<f64>,
    /// Seconds from the kill until half, and until 90%, of the partitions it led had another
    /// leader (as polled, every 250 ms or so).
    pub failover_half_s: Option<f64>,
    pub failover_90_s: Option<f64>,
    /// Seconds from the restart until the node ran every group it replicates, each with a leader.
    pub restart_groups_back_s: Option<f64>,
    /// Seconds from the restart until every node led a third of the partitions within 5%.
    pub restart_rebalanced_s: Option<f64>,
    /// Partitions each node led at the end of that wait.
    pub leaders_after_restart: BTreeMap<u64, u32>,
    /// Partitions of the produce topic.
    pub produce_partitions: u32,
    /// Record payload size.
    pub record_bytes: u64,
    /// Records acknowledged during the produce run.
    pub produce_records: u64,
    /// Records that failed.
    pub produce_errors: u64,
    /// The first produce error, as the client reported it.
    pub produce_first_error: Option<String>,
    /// Produce throughput, MB/s (2^20 bytes).
    pub produce_mb_per_sec: f64,
    /// Produce throughput, records/s.
    pub produce_records_per_sec: f64,
    /// Where the nodes kept their data and logs.
    pub dir: String,
}

/// The human report.
pub fn report_text(r: &PartitionsReport) -> String {
    let opt = |v: Option<f64>| v.map_or_else(|| "not within the wait".to_string(), |s| format!("{s:.1} s"));
    let counts =
        |m: &BTreeMap<u64, u32>| m.iter().map(|(n, c)| format!("node {n}: {c}")).collect::<Vec<_>>().join(", ");
    let mut t = Table::new(["figure", "value"]);
    let rows = [
        ("partitions (rf 3)", format!("{} in topics of {}", r.partitions, r.partitions_per_topic)),
        ("every partition has a leader", format!("{:.1} s after the first creation", r.all_leaders_s)),
        ("leaders at that point", counts(&r.leaders_at_creation)),
        ("leaders after the idle period", counts(&r.leaders_settled)),
        ("idle CPU, 3 nodes together", format!("{:.1}% of one core over {} s", r.idle_cpu_percent, r.idle_s)),
        ("RSS per node", r.rss_mib.iter().map(|(n, m)| format!("node {n}: {m:.0} MiB")).collect::<Vec<_>>().join(", ")),
        (
            "new leaders after a kill",
            format!(
                "{} ({} partitions it led; half by {}, 90% by {})",
                opt(r.failover_s),
                r.killed_node_led,
                opt(r.failover_half_s),
                opt(r.failover_90_s)
            ),
        ),
        ("groups back after the restart", opt(r.restart_groups_back_s)),
        ("leaders balanced again", opt(r.restart_rebalanced_s)),
        ("leaders after the restart", counts(&r.leaders_after_restart)),
        (
            "produce throughput",
            format!(
                "{:.1} MB/s, {:.0} records/s ({} partitions, {} B records, {} errors)",
                r.produce_mb_per_sec, r.produce_records_per_sec, r.produce_partitions, r.record_bytes, r.produce_errors
            ),
        ),
        ("first produce error", r.produce_first_error.clone().unwrap_or_else(|| "none".to_string())),
        ("data and logs", r.dir.clone()),
    ];
    for (k, v) in rows {
        t.row([k.to_string(), v]);
    }
    t.render()
}

/// Three `shale-node run` processes on 127.0.0.1.
struct Nodes {
    bin: PathBuf,
    dir: PathBuf,
    base_port: u16,
    max_partitions: u32,
    children: BTreeMap<u64, Child>,
}

impl Nodes {
    fn grpc(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.base_port + id as u16)
    }

    fn start(&mut self, id: u64) -> Result<()> {
        let data = self.dir.join(format!("node-{id}"));
        let log = self.dir.join(format!("node-{id}.log"));
        let local = |op, path: &Path, source| CliError::Local { op, path: path.to_path_buf(), source };
        std::fs::create_dir_all(&data).map_err(|e| local("create", &data, e))?;
        let out =
            std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| local("open", &log, e))?;
        let err = out.try_clone().map_err(|e| local("open", &log, e))?;
        let peers = (1..=3).map(|i| format!("{i}={}", self.grpc(i))).collect::<Vec<_>>().join(",");
        let child = Command::new(&self.bin)
            .arg("run")
            .args(["--node-id", &id.to_string(), "--grpc-listen", &self.grpc(id)])
            .args(["--http-listen", &format!("127.0.0.1:{}", self.base_port + 10 + id as u16)])
            // Each its own Kafka port (the default, 127.0.0.1:9092, would let only one node start).
            .args(["--kafka-listen", &format!("127.0.0.1:{}", self.base_port + 20 + id as u16)])
            .args(["--peers", &peers, "--data-dir"])
            .arg(&data)
            .args(["--max-topics", "100000", "--max-partitions", &self.max_partitions.to_string()])
            .args(["--max-partitions-per-topic", "4096"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| local("start", &self.bin, e))?;
        self.children.insert(id, child);
        Ok(())
    }

    async fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            let _ = c.kill().await;
        }
    }

    /// The first node process that has exited, with how it ended and the last lines of its log
    /// (a node that cannot start, e.g. on a bad flag or an unusable data directory, says why there).
    fn exited(&mut self) -> Option<(u64, std::process::ExitStatus, String)> {
        let (id, status) =
            self.children.iter_mut().find_map(|(id, c)| c.try_wait().ok().flatten().map(|status| (*id, status)))?;
        let log = std::fs::read_to_string(self.dir.join(format!("node-{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        Some((id, status, lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..].join("\n")))
    }

    fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).and_then(|c| c.id())
    }

    fn client(&self, ids: &[u64]) -> Result<Client> {
        let mut config = ClientConfig::new(ids.iter().map(|i| format!("http://{}", self.grpc(*i))));
        config.request_timeout_ms = 10_000;
        Client::new(config).map_err(|e| CliError::client("connect to the bench nodes", "127.0.0.1", e))
    }
}

/// Lines of a node's log shown when it exits while starting.
const LOG_LINES_SHOWN: usize = 5;

/// CPU ticks (user + system) of a process so far, from `/proc` (Linux; ticks of 1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line, counted from the state (field 3) here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process, MiB, from `/proc`.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Who leads each partition of the topics named `prefix*`: a partition is led once a node's own
/// status says it leads it (a node's `describe` names the preferred replica of a group it does
/// not run yet, so it is not used). Each node is asked itself, at its address (a client's status
/// call goes to whichever member it picks). Nodes that do not answer are skipped.
async fn led(nodes: &[(u64, Client, String)], prefix: &str) -> BTreeMap<(String, u32), u64> {
    let mut out = BTreeMap::new();
    for (id, client, addr) in nodes {
        let status = match own_status(client, addr).await {
            Ok(status) if status.node_id == *id => status,
            Ok(status) => {
                eprintln!("node {id} at {addr} answered as node {}", status.node_id);
                continue;
            }
            Err(e) => {
                eprintln!("node {id} did not answer its status: {e}");
                continue;
            }
        };
        for p in status.partitions.iter().filter(|p| p.leader_id == status.node_id && p.topic.starts_with(prefix)) {
            out.insert((p.topic.clone(), p.partition), status.node_id);
        }
    }
    out
}

/// The status of the node at `addr`, asked directly (no forwarding, no other member).
async fn own_status(client: &Client, addr: &str) -> std::result::Result<ClusterStatusResponse, String> {
    let channel = client.channel(addr).map_err(|e| e.to_string())?;
    let mut admin = AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.set_timeout(Duration::from_secs(10));
    admin.cluster_status(req).await.map(|r| r.into_inner()).map_err(|s| s.to_string())
}

fn count(led: &BTreeMap<(String, u32), u64>) -> BTreeMap<u64, u32> {
    let mut m: BTreeMap<u64, u32> = (1..=3).map(|i| (i, 0)).collect();
    for l in led.values() {
        *m.entry(*l).or_default() += 1;
    }
    m
}

fn balanced(counts: &BTreeMap<u64, u32>, total: usize) -> bool {
    let third = total as f64 / 3.0;
    counts.values().all(|c| (f64::from(*c) - third).abs() <= third * 0.05)
}

/// Polls `check` every 250 ms for up to `limit`; the seconds it took, or `None`.
async fn time_until<F, Fut>(limit: Duration, mut check: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Runs the benchmark.
pub async fn run(a: &BenchPartitionsArgs) -> Result<PartitionsReport> {
    let bin = match &a.node_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("shale-node")))
            .unwrap_or_else(|| PathBuf::from("shale-node")),
    };
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("shale-bench-partitions-{}", std::process::id())),
    };
    let mut nodes = Nodes {
        bin,
        dir: dir.clone(),
        base_port: a.base_port,
        max_partitions: a.partitions + a.produce_partitions + 16,
        children: BTreeMap::new(),
    };
    for id in 1..=3 {
        nodes.start(id)?;
    }
    let wait = Duration::from_secs(a.wait_seconds);
    let mut r = PartitionsReport {
        partitions: a.partitions,
        partitions_per_topic: a.per_topic,
        idle_s: a.idle_seconds,
        produce_partitions: a.produce_partitions,
        record_bytes: a.record_size,
        dir: dir.display().to_string(),
        ..PartitionsReport::default()
    };
    let client = nodes.client(&[1, 2, 3])?;
    let fail = |what: &str| CliError::CheckFailed(format!("{what} (node logs in {})", dir.display()));
    // Until the cluster forms, a node process that ends is reported at once, with its log's last
    // lines, instead of waiting out `--wait-seconds` for a cluster that cannot form.
    let mut exited = None;
    let formed = time_until(wait, || {
        exited = exited.take().or_else(|| nodes.exited());
        let gone = exited.is_some();
        let client = &client;
        async move { gone || client.admin().cluster_status().await.is_ok_and(|s| s.members.len() == 3) }
    })
    .await;
    if let Some((id, status, log)) = exited {
        return Err(fail(&format!(
            "node {id} ({}) exited while starting ({status}); its log ends:\n{log}\n",
            nodes.bin.display()
        )));
    }
    formed.ok_or_else(|| fail("the three nodes did not form a cluster"))?;

    // Create the topics; time until every partition has a leader.
    let mut topics = Vec::new();
    let started = Instant::now();
    let mut left = a.partitions;
    while left > 0 {
        let n = left.min(a.per_topic);
        let name = format!("bench-p{}", topics.len());
        client
            .admin()
            .create_topic(NewTopic::new(&name, n, 3))
            .await
            .map_err(|e| CliError::client(format!("create topic {name}"), "127.0.0.1", e))?;
        topics.push(name);
        left -= n;
    }
    eprintln!(
        "created {} partitions in {} topics in {:.1} s",
        a.partitions,
        topics.len(),
        started.elapsed().as_secs_f64()
    );
    let each: Vec<(u64, Client, String)> =
        (1..=3).map(|i| Ok((i, nodes.client(&[i])?, nodes.grpc(i)))).collect::<Result<_>>()?;
    let total = a.partitions as usize;
    let last = std::sync::Mutex::new(BTreeMap::new());
    let all_led = time_until(wait, || async {
        let l = led(&each, "bench-p").await;
        let done = l.len() == total;
        *last.lock().unwrap_or_else(|e| e.into_inner()) = l;
        done
    })
    .await;
    r.all_leaders_s =
        all_led.map(|_| started.elapsed().as_secs_f64()).ok_or_else(|| fail("not every partition got a leader"))?;
    r.leaders_at_creation = count(&last.lock().unwrap_or_else(|e| e.into_inner()));
    eprintln!("every partition has a leader after {:.1} s", r.all_leaders_s);

    // Idle: CPU of the three nodes over the idle period, then RSS and the settled leaders.
    let ticks = |nodes: &Nodes| (1..=3).filter_map(|i| nodes.pid(i).and_then(cpu_ticks)).sum::<u64>();
    let (t0, at) = (ticks(&nodes), Instant::now());
    tokio::time::sleep(Duration::from_secs(a.idle_seconds)).await;
    let used_s = ticks(&nodes).saturating_sub(t0) as f64 / 100.0;
    r.idle_cpu_percent = 100.0 * used_s / at.elapsed().as_secs_f64();
    r.rss_mib = (1..=3).filter_map(|i| Some((i, rss_mib(nodes.pid(i)?)?))).collect();
    // Every partition's leader, as soon as every node has answered for all of them.
    let snapshot = std::sync::Mutex::new(BTreeMap::new());
    time_until(wait, || async {
        let l = led(&each, "bench-p").await;
        let done = l.len() == total;
        *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = l;
        done
    })
    .await;
    let settled = snapshot.into_inner().unwrap_or_else(|e| e.into_inner());
    r.leaders_settled = count(&settled);

    // Kill node 3: time until every partition it led has another leader.
    let on_3: Vec<(String, u32)> = settled.iter().filter(|(_, l)| **l == 3).map(|(k, _)| k.clone()).collect();
    r.killed_node_led = on_3.len() as u32;
    nodes.kill(3).await;
    let survivors = &each[..2];
    let killed_at = Instant::now();
    let (half, most) = (std::cell::Cell::new(None), std::cell::Cell::new(None));
    r.failover_s = time_until(wait, || async {
        let l = led(survivors, "bench-p").await;
        let moved = on_3.iter().filter(|k| l.contains_key(*k)).count();
        let at = Some(killed_at.elapsed().as_secs_f64());
        eprintln!(
            "failover: {moved} of {} led again after {:.2} s (leaders now {:?})",
            on_3.len(),
            killed_at.elapsed().as_secs_f64(),
            count(&l)
        );
        if half.get().is_none() && moved * 2 >= on_3.len() {
            half.set(at);
        }
        if most.get().is_none() && moved * 10 >= on_3.len() * 9 {
            most.set(at);
        }
        moved == on_3.len()
    })
    .await;
    (r.failover_half_s, r.failover_90_s) = (half.get(), most.get());
    eprintln!("failover: {:?} s for {} partitions", r.failover_s, on_3.len());

    // Restart it: time until it runs all its groups with leaders, then until leaders balance.
    nodes.start(3)?;
    let third = nodes.client(&[3])?;
    let expected = a.partitions as usize + 1;
    r.restart_groups_back_s = time_until(wait, || async {
        third.admin().cluster_status().await.is_ok_and(|s| {
            s.node_id == 3 && s.partitions.len() + 1 >= expected && s.partitions.iter().all(|p| p.leader_id != 0)
        })
    })
    .await;
    let after = std::sync::Mutex::new(BTreeMap::new());
    r.restart_rebalanced_s = time_until(wait.max(Duration::from_secs(60)), || async {
        let l = led(&each, "bench-p").await;
        let counts = count(&l);
        let done = l.len() == total && balanced(&counts, total);
        *after.lock().unwrap_or_else(|e| e.into_inner()) = counts;
        done
    })
    .await;
    r.leaders_after_restart = after.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!("restart: groups back {:?} s, balanced {:?} s", r.restart_groups_back_s, r.restart_rebalanced_s);

    // Produce to many partitions at once.
    if a.produce_partitions > 0 {
        produce(a, &client, &each, &mut r).await?;
    }
    for id in 1..=3 {
        nodes.kill(id).await;
    }
    if !a.keep && a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(r)
}

async fn produce(
    a: &BenchPartitionsArgs,
    client: &Client,
    each: &[(u64, Client, String)],
    r: &mut PartitionsReport,
) -> Result<()> {
    let topic = "bench-produce".to_string();
    let partitions = a.produce_partitions;
    client
        .admin()
        .create_topic(NewTopic::new(&topic, partitions, 3))
        .await
        .map_err(|e| CliError::client(format!("create topic {topic}"), "127.0.0.1", e))?;
    time_until(Duration::from_secs(a.wait_seconds), || async {
        led(each, "bench-produce").await.len() == partitions as usize
    })
    .await;
    let mut config = ProducerConfig::default();
    if let Some(n) = a.max_in_flight_per_node {
        config.max_in_flight_per_node = n as usize;
    }
    let producer = Arc::new(client.producer(config));
    let keyless = a.produce_keyless;
    let payload = Bytes::from(vec![b'x'; a.record_size as usize]);
    let (acked, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let start = Instant::now();
    let until = start + Duration::from_secs(a.produce_seconds);
    let mut tasks = Vec::new();
    for task in 0..a.concurrency {
        let (producer, payload, topic) = (producer.clone(), payload.clone(), topic.clone());
        let (acked, errors, first_error) = (acked.clone(), errors.clone(), first_error.clone());
        let failed = move |e: String| {
            errors.fetch_add(1, Ordering::Relaxed);
            first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
        };
        tasks.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let mut i = u64::from(task);
            while Instant::now() < until {
                let record = ProducerRecord::new(topic.clone(), payload.clone());
                let record = if keyless { record } else { record.partition((i % u64::from(partitions)) as u32) };
                i += 1;
                match producer.send(record).await {
                    Ok(d) => inflight.push(d),
                    Err(e) => failed(e.to_string()),
                }
                while inflight.len() >= 1000 {
                    if let Some(done) = inflight.next().await {
                        match done {
                            Ok(_) => _ = acked.fetch_add(1, Ordering::Relaxed),
                            Err(e) => failed(e.to_string()),
                        }
                    }
                }
            }
            while let Some(done) = inflight.next().await {
                match done {
                    Ok(_) => _ = acked.fetch_add(1, Ordering::Relaxed),
                    Err(e) => failed(e.to_string()),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    r.produce_records = acked.load(Ordering::Relaxed);
    r.produce_errors = errors.load(Ordering::Relaxed);
    r.produce_first_error = first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    r.produce_records_per_sec = r.produce_records as f64 / elapsed;
    r.produce_mb_per_sec = (r.produce_records * a.record_size) as f64 / elapsed / f64::from(1u32 << 20);
    Ok(())
}
