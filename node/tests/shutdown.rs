//! Graceful shutdown of the real `shale-node` binary under produce load: SIGINT makes the process
//! exit within its grace period (plus slack), and every acknowledged record is on every replica
//! after a restart (each node read on its own).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shale_client::admin::NewTopic;
use shale_client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord};

/// Acknowledged records: (partition, offset) -> value.
type Acked = BTreeMap<(u32, u64), Vec<u8>>;

/// The default `shutdown_grace_ms` (what `dev` runs with).
const GRACE: Duration = Duration::from_millis(5_000);
/// Process exit and scheduling on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(2_000);
/// Bound on every wait for the cluster to come up or answer.
const WAIT: Duration = Duration::from_secs(60);

/// A base port with `n` free consecutive ports after it (gRPC) and another (HTTP).
fn free_ports(n: u16) -> (u16, u16) {
    let mut found = Vec::new();
    for _ in 0..200 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        if base > 65_000 {
            continue;
        }
        let all: Option<Vec<std::net::TcpListener>> =
            (0..n).map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if all.is_some() && !found.iter().any(|b: &u16| b.abs_diff(base) < n) {
            found.push(base);
            if found.len() == 2 {
                return (found[0], found[1]);
            }
        }
    }
    panic!("no free port range");
}

fn spawn_dev(dir: &Path, grpc: u16, http: u16, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_shale-node"))
        .args(["dev", "--nodes", "3", "--grpc-port", &grpc.to_string(), "--http-port", &http.to_string()])
        // Tests run in parallel: no fixed Kafka ports.
        .arg("--no-kafka")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("shale-node starts")
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill {sig} failed");
}

/// Waits up to `limit` for the process to exit; how long it took, or `None` if it still runs.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<(Duration, std::process::ExitStatus)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some((started.elapsed(), status));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn client(endpoints: Vec<String>) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.max_attempts = 20;
    Client::new(config).expect("client")
}

async fn create_topic_when_up(c: &Client, name: &str, partitions: u32) {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.admin().create_topic(NewTopic::new(name, partitions, 3)).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cluster never took the topic: {e}"),
        }
    }
}

/// Every record of `topic/partition` node at `endpoint` serves (a client that knows only it).
async fn read_from(endpoint: &str, topic: &str, partition: u32) -> Option<BTreeMap<u64, Vec<u8>>> {
    let consumer = client(vec![endpoint.to_string()]).consumer(ConsumerConfig::default());
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let batch = consumer.fetch(topic, partition, offset, 0).await.ok()?;
        for r in &batch.records {
            out.insert(r.offset, r.value.to_vec());
        }
        if batch.next_offset >= batch.log_end || batch.records.is_empty() {
            return Some(out);
        }
        offset = batch.next_offset;
    }
}

/// Produce load on topic `load` (3 partitions): `workers` producers, each sending windows of 16
/// records; every acknowledged record is kept.
struct Load {
    acked: Arc<Mutex<Acked>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the load and waits until `at_least` records are acknowledged.
    async fn start(c: &Client, workers: u32, at_least: usize) -> Load {
        let acked: Arc<Mutex<Acked>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for w in 0..workers {
            let (acked, stop, c) = (acked.clone(), stop.clone(), c.clone());
            handles.push(tokio::spawn(async move {
                let producer = c.producer(ProducerConfig::default());
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let mut window = Vec::new();
                    for _ in 0..16 {
                        let value = format!("w{w}-{i}").into_bytes();
                        let record = ProducerRecord::new("load", value.clone()).partition((i % 3) as u32);
                        i += 1;
                        if let Ok(delivery) = producer.send(record).await {
                            window.push((value, delivery));
                        }
                    }
                    for (value, delivery) in window {
                        if let Ok(meta) = delivery.await {
                            acked.lock().insert((meta.partition, meta.offset), value);
                        }
                    }
                }
            }));
        }
        let deadline = Instant::now() + WAIT;
        while acked.lock().len() < at_least {
            assert!(Instant::now() < deadline, "the cluster never took produce load");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Load { acked, stop, workers: handles }
    }

    /// Stops the producers (each within a bound) and returns every acknowledged record.
    async fn stop(self) -> Acked {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        for w in self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        self.acked.lock().clone()
    }
}

/// Waits until the node at `endpoint` serves every acknowledged record of `load`.
async fn node_holds_all(endpoint: &str, acked: &Acked) {
    for partition in 0..3u32 {
        let want: BTreeMap<u64, Vec<u8>> =
            acked.iter().filter(|((p, _), _)| *p == partition).map(|((_, o), v)| (*o, v.clone())).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let held = read_from(endpoint, "load", partition).await.unwrap_or_default();
            let missing = want.iter().filter(|(o, v)| held.get(*o) != Some(*v)).count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{endpoint} load/{partition}: {missing} of {} acknowledged records missing",
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One `shale-node run` process of a three-node cluster.
fn spawn_run(dir: &Path, id: u16, grpc: u16, http: u16, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log file");
    let peers: Vec<String> = (1..=3u16).map(|i| format!("{i}=127.0.0.1:{}", grpc + i - 1)).collect();
    Command::new(env!("CARGO_BIN_EXE_shale-node"))
        .arg("run")
        .args(["--node-id", &id.to_string()])
        .args(["--grpc-listen", &format!("127.0.0.1:{}", grpc + id - 1)])
        .args(["--http-listen", &format!("127.0.0.1:{}", http + id - 1)])
        // Three processes on one host (and tests in parallel): no Kafka listener on 9092.
        .args(["--kafka-enabled", "false"])
        .args(["--peers", &peers.join(",")])
        .arg("--data-dir")
        .arg(dir.join(format!("node-{id}")))
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("shale-node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_to_one_node_process_under_load_exits_within_the_grace_period_and_it_keeps_every_record() {
    let root = tempfile::tempdir().expect("temp dir");
    let (grpc, http) = free_ports(3);
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", grpc + i)).collect();
    let mut nodes: Vec<Child> =
        (1..=3).map(|id| spawn_run(root.path(), id, grpc, http, &format!("node-{id}.log"))).collect();
    let c = client(endpoints.clone());
    create_topic_when_up(&c, "load", 3).await;
    let load = Load::start(&c, 8, 500).await;

    // SIGINT to node 1 while the load runs (the other two keep the majority and the load going).
    signal(&nodes[0], "-INT");
    let exited = tokio::task::block_in_place(|| wait_exit(&mut nodes[0], GRACE + SLACK));
    let Some((took, status)) = exited else {
        for n in &mut nodes {
            let _ = n.kill();
        }
        let log = std::fs::read_to_string(root.path().join("node-1.log")).unwrap_or_default();
        panic!("node 1 still running {:?} after SIGINT; log:\n{log}", GRACE + SLACK);
    };
    eprintln!("node 1 exited {status} in {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = load.stop().await;
    eprintln!("{} records acknowledged", acked.len());

    // Node 1 restarts on its data; every node, read on its own, holds every acknowledged record.
    nodes[0] = spawn_run(root.path(), 1, grpc, http, "node-1-again.log");
    for endpoint in &endpoints {
        node_holds_all(endpoint, &acked).await;
    }
    for n in &nodes {
        signal(n, "-TERM");
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        let exited = tokio::task::block_in_place(|| wait_exit(n, GRACE + SLACK));
        if exited.is_none() {
            let _ = n.kill();
            panic!("node {} still running after SIGTERM", i + 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigint_under_produce_load_exits_within_the_grace_period_and_keeps_every_acknowledged_record() {
    let root = tempfile::tempdir().expect("temp dir");
    let (grpc, http) = free_ports(3);
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", grpc + i)).collect();
    let mut child = spawn_dev(root.path(), grpc, http, "first.log");
    let c = client(endpoints.clone());
    create_topic_when_up(&c, "load", 3).await;

    let load = Load::start(&c, 4, 300).await;
    // SIGINT while the load runs: out within the grace period.
    signal(&child, "-INT");
    let exited = tokio::task::block_in_place(|| wait_exit(&mut child, GRACE + SLACK));
    let Some((took, status)) = exited else {
        let _ = child.kill();
        let log = std::fs::read_to_string(root.path().join("first.log")).unwrap_or_default();
        panic!("shale-node still running {:?} after SIGINT; log:\n{log}", GRACE + SLACK);
    };
    let acked = load.stop().await;
    eprintln!("exited {status} in {took:?} with {} records acknowledged", acked.len());

    // Restart on the same data: every acknowledged record is on every node's replica.
    let mut child = spawn_dev(root.path(), grpc, http, "second.log");
    for endpoint in &endpoints {
        node_holds_all(endpoint, &acked).await;
    }
    // A second signal ends a slow shutdown at once; here a plain SIGTERM finishes in time.
    signal(&child, "-TERM");
    let exited = tokio::task::block_in_place(|| wait_exit(&mut child, GRACE + SLACK));
    if exited.is_none() {
        let _ = child.kill();
        panic!("shale-node still running after SIGTERM");
    }
}
