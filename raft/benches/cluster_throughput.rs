//! A measurement, not a check: produce throughput of a 3-node in-process cluster through the
//! cluster layer (memory storage, real gRPC on loopback). Run with
//! `cargo bench -p shale-raft --bench cluster_throughput`.

#[path = "../tests/cluster_support/mod.rs"]
mod cluster_support;

use std::time::Instant;

use cluster_support::*;

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(produce_throughput());
}

async fn produce_throughput() {
    let c = TestCluster::start(3).await;
    c.create_topic("bench", 1, 3).await;
    let leader = c.settled_leaders("bench").await[0];
    let value = "x".repeat(100);
    for batch_size in [1usize, 100, 1000] {
        let batches = (20_000 / batch_size).clamp(50, 2_000);
        let started = Instant::now();
        for b in 0..batches {
            let records = (0..batch_size).map(|i| record(&format!("{b}-{i}"), &value)).collect();
            c.node(leader).produce("bench", 0, records, None).await.expect("produce");
        }
        let secs = started.elapsed().as_secs_f64();
        let n = (batches * batch_size) as f64;
        eprintln!(
            "batch {batch_size:>5}: {:>8.0} records/s, {:>7.3} ms per produce call",
            n / secs,
            secs * 1000.0 / batches as f64
        );
    }
    c.shutdown().await;
}
