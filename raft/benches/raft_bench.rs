//! Replication throughput and latency of one group on a 3-node in-process cluster (real tonic on
//! 127.0.0.1, disk storage, fsync before every acknowledgement), 1 KiB payloads.
//!
//! `cargo bench -p shale-raft --bench raft_bench -- [--seconds N] [--payload-bytes B]`
//!
//! For each (writers, records per request) pair it reports acknowledged records/s, MB/s of payload,
//! and p50/p99/max request latency. A "request" is one `write` (1 record) or one `write_many`.

#[path = "../tests/core_support/mod.rs"]
mod core_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use core_support::{TestCluster, group_config};
use hdrhistogram::Histogram;
use shale_raft::{RaftGroup, RaftGroupConfig, Retention};
use shale_storage::{CheckpointPolicy, StorageOptions};

struct Args {
    seconds: u64,
    payload_bytes: usize,
    /// (writers, records per request) pairs to run.
    runs: Vec<(usize, usize)>,
    /// Per-group in-memory log tail (RaftGroupConfig::log_cache_bytes), MiB.
    cache_mib: usize,
}

fn args() -> Args {
    let mut a = Args { seconds: 8, payload_bytes: 1024, runs: vec![(1, 1), (64, 1), (1, 64), (64, 64)], cache_mib: 16 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--payload-bytes" => a.payload_bytes = it.next().and_then(|v| v.parse().ok()).expect("--payload-bytes N"),
            "--cache-mib" => a.cache_mib = it.next().and_then(|v| v.parse().ok()).expect("--cache-mib N"),
            // `--runs 64x64,1x1`: writers x records per request.
            "--runs" => {
                a.runs = it
                    .next()
                    .expect("--runs WxR,...")
                    .split(',')
                    .map(|r| {
                        let (w, n) = r.split_once('x').expect("WxR");
                        (w.parse().expect("writers"), n.parse().expect("records per request"))
                    })
                    .collect()
            }
            // cargo bench passes --bench; ignore anything else it adds.
            _ => {}
        }
    }
    a
}

struct RunResult {
    records: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

async fn run(g: Arc<RaftGroup>, writers: usize, per_request: usize, payload: Bytes, seconds: u64) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (g, stop, records, payload) = (g.clone(), stop.clone(), records.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if per_request == 1 {
                    g.write(payload.clone()).await.expect("write");
                } else {
                    let batch = vec![payload.clone(); per_request];
                    for r in g.write_many(batch).await.expect("write_many") {
                        r.expect("batched write");
                    }
                }
                hist.record(t0.elapsed().as_micros().max(1) as u64).expect("record latency");
                records.fetch_add(per_request as u64, Ordering::Relaxed);
            }
            hist
        }));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        latency_us.add(t.await.expect("writer")).expect("merge histograms");
    }
    RunResult { records: records.load(Ordering::Relaxed), elapsed: t0.elapsed(), latency_us }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let config = RaftGroupConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every_entries: 0,
            max_payload_entries: 1024,
            retention: Retention::KeepAll,
            log_cache_bytes: a.cache_mib << 20,
            ..group_config()
        };
        let options = StorageOptions {
            max_segment_bytes: 256 << 20,
            checkpoint_policy: CheckpointPolicy::Manual,
            ..Default::default()
        };
        let mut c = TestCluster::start_with(3, config, options).await;
        for n in &c.nodes {
            n.group().set_retention(Retention::KeepAll);
        }
        let leader = c.wait_leader(&[]).await;
        let g = c.leader_group(leader);
        // The bench app keeps payloads in memory; drop them as we go to bound memory.
        let payload = Bytes::from(vec![0xabu8; a.payload_bytes]);
        println!(
            "shale-raft bench: 3 nodes in one process, {} cores, {} B payloads, fsync before ack, {} s per run, {} MiB log cache",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            a.payload_bytes,
            a.seconds,
            a.cache_mib
        );
        println!(
            "{:>8} {:>8} {:>12} {:>9} {:>10} {:>10} {:>10}",
            "writers", "rec/req", "records/s", "MB/s", "p50 ms", "p99 ms", "max ms"
        );
        for &(writers, per_request) in &a.runs {
            for n in &c.nodes {
                n.applied.lock().clear();
            }
            let r = run(g.clone(), writers, per_request, payload.clone(), a.seconds).await;
            let secs = r.elapsed.as_secs_f64();
            let rps = r.records as f64 / secs;
            println!(
                "{:>8} {:>8} {:>12.0} {:>9.1} {:>10.2} {:>10.2} {:>10.2}",
                writers,
                per_request,
                rps,
                rps * a.payload_bytes as f64 / 1e6,
                r.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
                r.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                r.latency_us.max() as f64 / 1000.0,
            );
        }
        c.stop_all().await;
    });
}
