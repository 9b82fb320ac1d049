//! A full disk on one node, as an operator sees it: node 3 runs on a storage whose file system
//! (`FaultyFileSystem`) is made full under produce load. Its `/readyz` answers 503 naming the
//! stopped groups and the OS error, `/metrics` counts them, the other two nodes stay ready and
//! keep acknowledging; once space returns (no restart) its groups restart from disk, `/readyz`
//! is 200 again, and node 3's own replica holds every acknowledged record.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{http_get, read_own_replica};
use shale_node::config::{NodeConfig, StorageKind};
use shale_node::node::{Node, NodeHandle};
use shale_raft::cluster::{ProduceRecord, TopicSpec};
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{ChainHash, Storage, StorageBackend};
use tokio::net::TcpListener;

const TOPIC: &str = "full-disk";
const FULL: u64 = 3;
const SLOW: Duration = Duration::from_secs(60);

async fn wait_long<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {SLOW:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric in a Prometheus text body.
fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
}

/// Produces one batch through whichever node accepts it; the acknowledged (offset, hash, value)s.
async fn produce(nodes: &[&NodeHandle], batch: u64) -> Vec<(u64, ChainHash, Bytes)> {
    let values: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("v-{batch:06}-{i}"))).collect();
    let records: Vec<ProduceRecord> = values
        .iter()
        .map(|v| ProduceRecord { key: None, value: v.clone(), headers: Vec::new(), timestamp_ms: None })
        .collect();
    for n in nodes {
        if let Ok(offsets) = n.cluster().produce(TOPIC, 0, records.clone(), None).await {
            // Four small records: one stored batch, record i at its base offset + i.
            assert_eq!(offsets.len(), 1, "{offsets:?}");
            let stored = offsets[0];
            return values.into_iter().zip(stored.base_offset..).map(|(v, o)| (o, stored.chain_hash, v)).collect();
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_a_full_disk_makes_the_node_unready_and_it_resumes_by_itself_once_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = TcpListener::bind("127.0.0.1:0").await.unwrap();
        peers.insert(id, g.local_addr().unwrap().to_string());
        listeners.push((g, h));
    }
    let fs = FaultyFileSystem::new();
    let mut nodes = Vec::new();
    let mut http: Vec<SocketAddr> = Vec::new();
    for (i, (g, h)) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = NodeConfig {
            node_id: id,
            peers: peers.clone(),
            data_dir: root.path().join(format!("node-{id}")),
            storage: StorageKind::Disk,
            shutdown_grace_ms: 2_000,
            // Small segments: the space preallocated past the records is capped by the segment
            // size, so the full disk is hit after a few KiB.
            segment_bytes: 8192,
            // Three nodes in one process: each its own Kafka port.
            kafka: shale_node::kafka::KafkaConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..shale_node::kafka::KafkaConfig::default()
            },
            ..NodeConfig::default()
        };
        http.push(h.local_addr().unwrap());
        let node = if id == FULL {
            let options = shale_node::storage::options(&config);
            let storage: Arc<dyn StorageBackend> =
                Arc::new(Storage::open_with_fs("/data", options, Arc::new(fs.clone())).unwrap());
            Node::start_on_storage(config, g, h, storage).await.unwrap()
        } else {
            Node::start_on(config, g, h).await.unwrap()
        };
        nodes.push(node);
    }
    for n in &nodes {
        assert!(n.wait_ready(SLOW).await, "node {} never became ready", n.node_id);
    }
    let leader = nodes[0].cluster().metadata_leader().unwrap().0;
    nodes[leader as usize - 1]
        .cluster()
        .create_topic(TopicSpec {
            name: TOPIC.into(),
            partitions: 1,
            replication_factor: 3,
            retention: Default::default(),
            codec: Default::default(),
        })
        .await
        .unwrap();
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    let mut acked = Vec::new();
    let mut batch = 0u64;
    while acked.len() < 400 {
        batch += 1;
        acked.extend(produce(&all, batch).await);
    }
    let (code, _) = http_get(http[FULL as usize - 1], "/readyz").await;
    assert_eq!(code, 200, "node {FULL} is ready before its disk fills up");

    // The disk fills up; produce goes on (through every node: the full one may have led).
    fs.set_disk_full(true);
    let deadline = tokio::time::Instant::now() + SLOW;
    let body = loop {
        batch += 1;
        acked.extend(produce(&all, batch).await);
        let (code, body) = http_get(http[FULL as usize - 1], "/readyz").await;
        if code == 503 {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {FULL} stayed ready with a full disk: {body}");
    };
    eprintln!("node {FULL} /readyz: {body}");
    assert!(body.contains("stopped on an error"), "{body}");
    assert!(body.contains("No space left on device"), "the reason names the full disk: {body}");
    // The supervisor counts the stop at its next pass (readiness looks at the groups directly).
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        let (_, m) = http_get(http[FULL as usize - 1], "/metrics").await;
        if metric(&m, "shale_group_failures_total") >= 1 {
            assert!(metric(&m, "shale_groups_stopped") >= 1, "{m}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failure counted: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other two keep acknowledging and stay ready.
    let before = acked.len();
    while acked.len() < before + 400 {
        batch += 1;
        acked.extend(produce(&all[..2], batch).await);
    }
    for id in [1u64, 2] {
        let (code, body) = http_get(http[id as usize - 1], "/readyz").await;
        assert_eq!(code, 200, "node {id} with space left stays ready: {body}");
    }
    let (code, _) = http_get(http[FULL as usize - 1], "/readyz").await;
    assert_eq!(code, 503, "node {FULL} stays unready while its disk is full");

    // Space returns: node 3 resumes by itself.
    fs.set_disk_full(false);
    let deadline = tokio::time::Instant::now() + SLOW;
    loop {
        batch += 1;
        acked.extend(produce(&all[..2], batch).await);
        let (code, body) = http_get(http[FULL as usize - 1], "/readyz").await;
        if code == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {FULL} never got ready again: {body}");
    }
    let (_, m) = http_get(http[FULL as usize - 1], "/metrics").await;
    assert_eq!(metric(&m, "shale_groups_stopped"), 0, "{m}");
    assert!(metric(&m, "shale_group_restarts_total") >= 1, "{m}");

    // Node 3's own replica holds every acknowledged record (Cluster::fetch on a node reads its
    // own replica; it never forwards).
    let last = acked.iter().map(|a| a.0).max().unwrap();
    let full = nodes[FULL as usize - 1].cluster().clone();
    let records = wait_long("node 3 to catch up", || {
        let full = full.clone();
        async move {
            let out = read_own_replica(&full, TOPIC, 0).await?;
            out.last().is_some_and(|r| r.offset >= last).then_some(out)
        }
    })
    .await;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(o, h, v)| {
            records
                .binary_search_by_key(o, |r| r.offset)
                .map_or(true, |i| records[i].value != *v || records[i].chain_hash != Some(*h))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "node {FULL} lacks {} of {} acknowledged records: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for n in nodes {
        let _ = n.shutdown().await;
    }
}
