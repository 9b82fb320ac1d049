//! `shale consume` never silently skips: through a replica whose log starts later than the
//! others', `--from-beginning` and `--offset` still read every record (from the other replicas),
//! and an offset no replica holds exits 1 naming the partition's range.

mod common;

use std::time::Duration;

use common::{WAIT, assert_exit, run_shale, stderr, stdout};
use shale_client::admin::NewTopic;
use shale_client::{Client, ClientConfig, ProducerConfig, ProducerRecord, proto};
use shale_node::testing::LocalCluster;
use shale_node::{NodeConfig, StorageKind};

/// Just over one 64 MiB segment (storage removes whole sealed segments only).
const RECORDS: usize = 70;
const RECORD_BYTES: usize = 1_000_000;

/// In-memory storage: the same segments and compaction as on disk, without the disk traffic.
fn in_memory(c: &mut NodeConfig) {
    c.storage = StorageKind::Memory;
}

fn client(endpoints: Vec<String>) -> Client {
    let mut config = ClientConfig::new(endpoints);
    config.max_attempts = 40;
    Client::new(config).expect("client")
}

/// Runs `shale ARGS --bootstrap ADDR` against one node only.
async fn shale_at(addr: &str, args: &[&str]) -> std::process::Output {
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.extend(["--bootstrap".to_string(), addr.to_string(), "--attempts".into(), "20".into()]);
    run_shale(full, Vec::new()).await
}

/// Record `i`'s value: a line `record-i` padded with dots to [`RECORD_BYTES`].
fn value(i: usize) -> String {
    let head = format!("record-{i}");
    format!("{head}{}", ".".repeat(RECORD_BYTES - head.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_reads_past_a_cut_replica_and_fails_on_offsets_no_replica_holds() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = LocalCluster::start(3, root.path(), in_memory).await.expect("nodes start");
    assert!(cluster.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
    let all = client(cluster.endpoints());
    let admin = all.admin();
    admin.create_topic(NewTopic::new("cut", 1, 3)).await.expect("create topic");
    let producer = all.producer(ProducerConfig::default());
    let mut offsets = Vec::new();
    for i in 0..RECORDS {
        let meta = producer.send_and_wait(ProducerRecord::new("cut", value(i)).partition(0)).await.expect("ack");
        offsets.push(meta.offset);
    }
    producer.close().await.expect("producer closes");
    let end = offsets.last().unwrap() + 1;

    // Every replica applied everything; then cut the start of one follower's replica (retention
    // applied on that node alone through its own Compact; the topic is keep-all again after).
    let deadline = tokio::time::Instant::now() + WAIT;
    let hw = |id: u64| {
        let node = cluster.running(id).expect("running");
        node.cluster().local_partition_state("cut", 0).expect("replica").high_watermark.unwrap()
    };
    while (1..=3).any(|id| hw(id) < end) {
        assert!(tokio::time::Instant::now() < deadline, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = admin.describe_topic("cut").await.expect("describe").partitions[0].leader_id;
    let cut = (1..=3).find(|id| *id != leader).unwrap();
    let cut_addr = cluster.grpc[cut as usize - 1].to_string();
    admin
        .alter_topic(proto::AlterTopicRequest { name: "cut".into(), retention_bytes: Some(1), ..Default::default() })
        .await
        .expect("limit retention");
    // Compact snapshots first; the purge that lets retention remove the sealed segment may land
    // just after the call's retention pass, so compact again until the start moved.
    let cut_admin = client(vec![cut_addr.clone()]).admin();
    let deadline = tokio::time::Instant::now() + WAIT;
    let compacted = loop {
        let compacted = cut_admin.compact("cut", Some(0)).await.expect("compact");
        if compacted[0].log_start_after > offsets[0] || tokio::time::Instant::now() >= deadline {
            break compacted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    admin
        .alter_topic(proto::AlterTopicRequest { name: "cut".into(), clear_retention_bytes: true, ..Default::default() })
        .await
        .expect("keep all again");
    let cut_start = compacted[0].log_start_after;
    assert!(cut_start > offsets[0], "the cut replica lost its first records: {compacted:?}");

    // --from-beginning through the cut replica alone: every record, in order.
    let expected: Vec<String> = (0..RECORDS).map(|i| format!("{}:{}\trecord-{i}", 0, offsets[i])).collect();
    let printed = |o: &std::process::Output| -> Vec<String> {
        stdout(o).lines().map(|l| l.trim_end_matches('.').to_string()).collect()
    };
    let o = shale_at(&cut_addr, &["consume", "cut", "--from-beginning", "--print-offset"]).await;
    assert_exit(&o, 0);
    assert_eq!(printed(&o), expected, "stderr:\n{}", stderr(&o));

    // --offset of the first record (below the cut replica's start): read from the others.
    let first = offsets[0].to_string();
    let o = shale_at(&cut_addr, &["consume", "cut", "--offset", &first, "--print-offset"]).await;
    assert_exit(&o, 0);
    assert_eq!(printed(&o), expected, "stderr:\n{}", stderr(&o));

    // An offset no replica holds: exit 1, naming the partition's range; nothing printed.
    let past = (end + 5_000).to_string();
    for addr in [cut_addr.as_str(), &cluster.endpoints().join(",")] {
        let o = shale_at(addr, &["consume", "cut", "--offset", &past]).await;
        assert_exit(&o, 1);
        assert!(stdout(&o).is_empty(), "{}", stdout(&o));
        let err = stderr(&o);
        assert!(err.contains("out of range"), "{err}");
        assert!(err.contains("the partition holds offsets ["), "names the range: {err}");
    }
    // ... unless the operator chose a reset: latest reads nothing new and succeeds.
    let o = shale_at(&cut_addr, &["consume", "cut", "--offset", &past, "--reset-out-of-range", "latest"]).await;
    assert_exit(&o, 0);
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));

    cluster.shutdown().await.expect("clean shutdown");
}
