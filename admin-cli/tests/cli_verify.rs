//! `shale verify` against real damage on an in-process three-node cluster: a replica that lacks
//! the start of the log, a byte flipped in a sealed segment of one replica, and a partition nothing
//! was written to (agreeing on nothing, unless a replica cannot answer).

mod common;

use std::fs;
use std::time::Instant;

use common::{FIRST_PARTITION_LOG_STREAM, TestCluster, WAIT, assert_exit, find_record, json, stdout};
use serde_json::Value;
use shale_node::NodeConfig;
use shale_raft::cluster::{ClusterError, FetchRequest};

/// 4 KiB segments, so a few dozen records seal several; no retention pass of its own during the test,
/// and no background scrubber (it would find and repair the damage these tests plant for `verify`).
fn small_segments(c: &mut NodeConfig) {
    c.segment_bytes = 4096;
    c.retention_interval_ms = 3_600_000;
    c.scrub.enabled = false;
}

/// `n` records of about 100 bytes: `entry-0000 ...`.
fn records(n: usize) -> String {
    (0..n).map(|i| format!("entry-{i:04} {}\n", "x".repeat(90))).collect()
}

/// Produces [`records`]`(n)` to `topic` in stored batches of at most `per_batch` records (one
/// produce request is one log entry), so the log spans several small segments.
async fn produce_in_batches(c: &TestCluster, topic: &str, n: usize, per_batch: usize) {
    let client = shale_client::Client::connect_to(&c.bootstrap()).expect("client");
    let config = shale_client::ProducerConfig { batch_max_records: per_batch, ..Default::default() };
    let producer = client.producer(config);
    let mut pending = Vec::new();
    for line in records(n).lines() {
        let record = shale_client::ProducerRecord::new(topic, line.to_string()).partition(0);
        pending.push(producer.send(record).await.expect("queued"));
    }
    for p in pending {
        p.await.expect("acknowledged");
    }
    producer.close().await.expect("producer closes");
}

/// Waits until every node in `ids` has applied the same, non-zero end of `topic`/0.
async fn wait_applied(c: &TestCluster, topic: &str, ids: &[u64]) -> u64 {
    let start = Instant::now();
    loop {
        let ends: Vec<Option<u64>> = ids
            .iter()
            .map(|&id| c.node(id).cluster().local_partition_state(topic, 0).ok().and_then(|s| s.high_watermark))
            .collect();
        if let Some(Some(first)) = ends.first()
            && *first > 0
            && ends.iter().all(|e| *e == Some(*first))
        {
            return *first;
        }
        assert!(start.elapsed() < WAIT, "replicas of {topic}/0 never caught up: {ends:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The first record offset node `id`'s replica of `topic`/0 holds (a local fetch at offset 0
/// answers it, or is refused naming it).
async fn record_start(c: &TestCluster, id: u64, topic: &str) -> u64 {
    let req = FetchRequest {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        from_index: None,
        max_bytes: 1,
        wait: std::time::Duration::ZERO,
        check: shale_storage::ReadCheck::Chain,
    };
    match c.node(id).cluster().fetch(req).await {
        Ok(r) => r.log_start,
        Err(ClusterError::OffsetOutOfRange { start, .. }) => start,
        Err(e) => panic!("node {id} cannot read {topic}/0: {e}"),
    }
}

fn replica(partition: &Value, node: u64) -> &Value {
    partition["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node_id"] == node)
        .unwrap_or_else(|| panic!("no verdict for node {node}: {partition}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_names_a_replica_that_lacks_the_start_of_the_log() {
    let c = TestCluster::start_with(3, small_segments).await;
    let o = c.shale(&["topic", "create", "trimmed", "-p", "1", "-r", "3", "--retention-bytes", "8KiB"], b"").await;
    assert_exit(&o, 0);
    produce_in_batches(&c, "trimmed", 300, 10).await;
    wait_applied(&c, "trimmed", &[1, 2, 3]).await;
    let o = c.shale(&["verify", "trimmed", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["partitions"][0]["status"], "agree");

    // Retention applied on node 2 only: its log now starts above the others'.
    let outcome = c.node(2).cluster().compact("trimmed", 0).await.unwrap();
    assert!(outcome.log_start_after > 0, "retention removed sealed segments on node 2: {outcome:?}");
    // Compaction speaks log indexes; verify speaks record offsets: node 2's first record.
    let cut = record_start(&c, 2, "trimmed").await;
    assert!(cut > 0, "node 2 no longer holds offset 0");

    for sweep in [false, true] {
        let mut args = vec!["verify", "trimmed", "-o", "json"];
        if sweep {
            args.extend(["--sweep", "--step", "100"]);
        }
        let o = c.shale(&args, b"").await;
        assert_exit(&o, 1);
        let v = json(&o);
        let p = &v["partitions"][0];
        assert_eq!(p["status"], "missing", "{v}");
        assert_eq!(p["partition_start"], 0, "{v}");
        let missing: Vec<(u64, u64, u64, &str)> = p["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["node_id"].as_u64().unwrap(),
                    m["from"].as_u64().unwrap(),
                    m["to"].as_u64().unwrap(),
                    m["side"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(missing, vec![(2, 0, cut, "start")], "{v}");
        let suspects: Vec<u64> =
            p["suspects"].as_array().unwrap().iter().map(|s| s["node_id"].as_u64().unwrap()).collect();
        assert_eq!(suspects, vec![2], "{v}");
        assert_eq!(replica(p, 2)["verdict"], "missing", "{v}");
        assert_eq!(replica(p, 1)["verdict"], "ok", "{v}");
        if sweep {
            // Node 2 re-read what it holds, from its own start; the others from 0.
            let end = p["checked_offset"].as_u64().unwrap() + 1;
            assert_eq!(replica(p, 2)["reread"], serde_json::json!([cut, end]), "{v}");
            assert_eq!(replica(p, 1)["reread"], serde_json::json!([0, end]), "{v}");
            // Log entries re-read: the batches holding the records, and Raft's own entries.
            assert!(replica(p, 1)["records_reread"].as_u64().unwrap() > 0, "{v}");
        }
    }
    let o = c.shale(&["verify", "trimmed"], b"").await;
    assert_exit(&o, 1);
    let text = stdout(&o);
    assert!(text.contains(&format!("trimmed/0: MISSING [0, {cut}) on node 2")), "{text}");
    assert!(text.contains("FAILED: 1 of 1"), "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_sweep_rereads_sealed_segments_and_names_a_flipped_byte() {
    let mut c = TestCluster::start_with(3, small_segments).await;
    assert_exit(&c.shale(&["topic", "create", "ledger", "-p", "1", "-r", "3"], b"").await, 0);
    // One record per entry: a log of ~300 entries. (Known issue, raft side: openraft reads some
    // log entries when a group starts (key log ids, membership); a damaged entry it happens to
    // read keeps the group from starting. In a 300-entry log the damaged early entry is not one of
    // them; in a ~35-entry log it was.)
    produce_in_batches(&c, "ledger", 300, 1).await;
    let end = wait_applied(&c, "ledger", &[1, 2, 3]).await;

    // A clean cluster agrees, plainly and record by record from 0 (keep-all: the partition start).
    let o = c.shale(&["verify", "ledger", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["partitions"][0]["status"], "agree");
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "128", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let v = json(&o);
    let p = &v["partitions"][0];
    assert_eq!((&p["status"], &p["partition_start"]), (&Value::from("agree"), &Value::from(0)), "{v}");
    let checked = p["checked_offset"].as_u64().unwrap();
    assert_eq!(checked + 1, end, "{v}");
    for node in 1..=3 {
        assert_eq!(replica(p, node)["reread"], serde_json::json!([0, end]), "{v}");
        assert!(replica(p, node)["records_reread"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(p["probes"], 1 + end.div_ceil(128), "the newest offset, then one request per piece: {v}");

    // Snapshot every replica, so a restart does not re-apply (and read) the old records.
    for node in 1..=3 {
        c.node(node).cluster().checkpoint("ledger", 0).await.unwrap();
    }
    // Damage node 3 offline: one byte of a record in a sealed segment.
    let victim = 3;
    c.stop(victim).await;
    let (segment_path, position, offset) = find_record(c.data_dir(victim), b"entry-0020");
    let segments = fs::read_dir(c.data_dir(victim).join(FIRST_PARTITION_LOG_STREAM.to_string()))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log"))
        .count();
    assert!(segments >= 3, "the record lies in a sealed segment ({segments} segments)");
    let mut bytes = fs::read(&segment_path).unwrap();
    bytes[position + 3] ^= 0x01;
    fs::write(&segment_path, &bytes).unwrap();

    // Offline, the stopped node's files show it.
    let common::OfflineDamage { stream, damage, .. } = common::verify_offline_damaged(c.data_dir(victim)).await;
    assert_eq!(stream["role"], "topic ledger partition 0, raft log", "{stream}");
    assert_eq!(damage["offset"], offset, "{damage}");
    assert_eq!(damage["file"], segment_path.file_name().unwrap().to_string_lossy().as_ref());

    // Online, after a restart: the sweep re-reads node 3's disk and names it and the offset.
    c.restart(victim).await;
    wait_applied(&c, "ledger", &[1, 2, 3]).await;
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "128", "-o", "json"], b"").await;
    assert_exit(&o, 1);
    let v = json(&o);
    let p = &v["partitions"][0];
    assert_eq!(p["status"], "damaged", "{v}");
    assert_eq!(p["first_bad_offset"], offset, "{v}");
    let damaged: Vec<(u64, u64)> = p["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["node_id"].as_u64().unwrap(), d["damage"]["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(damaged, vec![(victim, offset)], "{v}");
    assert!(p["damaged"][0]["damage"]["reason"].as_str().unwrap().contains("CRC mismatch"), "{v}");
    let suspects: Vec<u64> = p["suspects"].as_array().unwrap().iter().map(|s| s["node_id"].as_u64().unwrap()).collect();
    assert_eq!(suspects, vec![victim], "{v}");
    assert_eq!(replica(p, victim)["verdict"], "damaged", "{v}");
    assert_eq!(replica(p, 1)["verdict"], "ok", "{v}");
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "128"], b"").await;
    assert_exit(&o, 1);
    let text = stdout(&o);
    assert!(text.contains(&format!("ledger/0: DAMAGED at offset {offset} on node {victim}")), "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_partition_verifies_as_agreeing_on_nothing_unless_a_replica_cannot_answer() {
    let mut c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "e", "-p", "2", "-r", "3"], b"").await, 0);
    // Records in partition 0 only (as a keyless producer's sticky run leaves other partitions).
    produce_in_batches(&c, "e", 5, 5).await;
    wait_applied(&c, "e", &[1, 2, 3]).await;
    for args in [&["verify", "e", "-o", "json"][..], &["verify", "e", "--sweep", "-o", "json"][..]] {
        let o = c.shale(args, b"").await;
        assert_exit(&o, 0);
        let v = json(&o);
        assert_eq!(v["partitions"][0]["status"], "agree", "{v}");
        let empty = &v["partitions"][1];
        assert_eq!(empty["status"], "agree", "{v}");
        assert_eq!(empty["committed_end"], 0, "{v}");
        assert!(empty["checked_offset"].is_null() && empty["error"].is_null(), "{v}");
        let replicas = empty["replicas"].as_array().expect("replicas");
        assert_eq!(replicas.len(), 3, "{v}");
        assert!(replicas.iter().all(|r| r["verdict"] == "ok" && r["log_end"] == 0), "{v}");
    }
    let o = c.shale(&["verify", "e"], b"").await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("OK: 2 partition(s), every replica agrees"), "{}", stdout(&o));

    // A replica that cannot answer fails the check even where there is nothing to compare.
    c.stop(3).await;
    let o = c.shale(&["verify", "e", "-o", "json"], b"").await;
    assert_exit(&o, 1);
    let v = json(&o);
    let empty = &v["partitions"][1];
    assert_eq!(empty["status"], "unavailable", "{v}");
    let suspects: Vec<u64> =
        empty["suspects"].as_array().expect("suspects").iter().map(|s| s["node_id"].as_u64().expect("id")).collect();
    assert_eq!(suspects, vec![3], "{v}");
    assert!(
        empty["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .any(|r| r["node_id"] == 3 && r["verdict"] == "unavailable"),
        "{v}"
    );
}
