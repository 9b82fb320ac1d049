//! Produce and fetch on a 3-node in-process cluster.

mod cluster_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cluster_support::*;
use shale_raft::cluster::{Cluster, ClusterError, FetchRequest, ProduceRecord, ProducerInfo, TopicSpec};
use shale_storage::{CodecKind, ReadCheck};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_round_trip_in_order_on_every_replica() {
    let c = TestCluster::start(3).await;
    // Values are stored zstd-compressed (where that is smaller) and read back decompressed.
    let ml = c.metadata_leader().await;
    let spec = TopicSpec { codec: CodecKind::Zstd { level: 3 }, ..spec("events", 1, 3) };
    c.node(ml).create_topic(spec).await.expect("create");
    let leader = c.settled_leaders("events").await[0];

    let mut sent = Vec::new();
    let mut acked = Vec::new();
    for batch in 0..5 {
        let records: Vec<ProduceRecord> = (0..20)
            .map(|i| {
                let mut r = record(&format!("k{batch}-{i}"), &format!("value {batch}-{i} {}", "z".repeat(i * 50)));
                r.headers.push(("n".into(), Bytes::from(vec![i as u8; 3])));
                if i % 5 == 0 {
                    r.key = None;
                }
                r.timestamp_ms = (i % 2 == 0).then_some(1_000 + i as u64);
                r
            })
            .collect();
        let acks = c.node(leader).produce("events", 0, records.clone(), None).await.expect("produce");
        assert_eq!(acks.len(), 1, "a small request is one batch");
        let offsets = per_record(&acks);
        assert_eq!(offsets.len(), records.len());
        sent.extend(records);
        acked.extend(offsets);
    }
    let offsets: Vec<u64> = acked.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (0..100).collect::<Vec<u64>>(), "offsets are dense, in produce order");

    // Every replica serves the same records, in order, with the acknowledged offsets and hashes.
    for id in 1..=3 {
        let got = wait_for("replica caught up", || async {
            let all = c.try_read_all(id, "events", 0).await.ok()?;
            (all.len() == sent.len()).then_some(all)
        })
        .await;
        for ((r, s), a) in got.iter().zip(&sent).zip(&acked) {
            assert_eq!(r.offset, a.offset);
            assert_eq!(r.chain_hash, a.chain_hash);
            assert_eq!(r.key, s.key);
            assert_eq!(r.value, s.value);
            assert_eq!(r.headers, s.headers);
            if let Some(ts) = s.timestamp_ms {
                assert_eq!(r.timestamp_ms, ts);
            } else {
                assert!(r.timestamp_ms > 1_600_000_000_000, "stamped by the leader");
            }
        }
    }

    // All replicas agree on the chain hash at every offset of the log, Raft entries included.
    let last = acked.last().expect("acked").offset;
    c.check_replicas_agree("events", 0, last).await;

    // Out-of-range fetches say where the log is.
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let req = FetchRequest {
        topic: "events".into(),
        partition: 0,
        offset: last + 1000,
        from_index: None,
        max_bytes: 1024,
        wait: Duration::ZERO,
        check: ReadCheck::Chain,
    };
    assert!(matches!(c.node(follower).fetch(req).await, Err(ClusterError::OffsetOutOfRange { start: 0, .. })));
    // A follower refuses to produce and names the leader.
    assert!(matches!(
        c.node(follower).produce("events", 0, vec![record("a", "b")], None).await,
        Err(ClusterError::NotLeader { leader: Some((l, _)) }) if l == leader
    ));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retry_is_written_once_with_original_offsets() {
    let c = TestCluster::start(3).await;
    c.create_topic("idem", 1, 3).await;
    let leader = c.settled_leaders("idem").await[0];
    let producer = ProducerInfo { producer_id: 77, base_sequence: 0 };
    let batch: Vec<_> = (0..4).map(|i| record("k", &format!("v{i}"))).collect();
    let first = c.node(leader).produce("idem", 0, batch.clone(), Some(producer)).await.expect("produce");
    let retry = c.node(leader).produce("idem", 0, batch.clone(), Some(producer)).await.expect("retry");
    assert_eq!(first, retry, "a retry answers the original batch");
    // A retry overlapping new sequences is not a batch the partition wrote: refused, nothing written.
    let overlap = ProducerInfo { producer_id: 77, base_sequence: 2 };
    let more: Vec<_> = (2..6).map(|i| record("k", &format!("v{i}"))).collect();
    let refused = c.node(leader).produce("idem", 0, more.clone(), Some(overlap)).await;
    assert!(matches!(refused, Err(ClusterError::DuplicateSequenceOutOfWindow { producer_id: 77, .. })), "{refused:?}");
    let next = ProducerInfo { producer_id: 77, base_sequence: 4 };
    let written = c.node(leader).produce("idem", 0, more[2..].to_vec(), Some(next)).await.expect("next");
    assert_eq!((written[0].base_offset, written[0].record_count), (4, 2), "the refused batch consumed no offsets");
    let values: Vec<_> = c.read_all(leader, "idem", 0).await.into_iter().map(|r| r.value).collect();
    let expected: Vec<Bytes> = (0..6).map(|i| Bytes::from(format!("v{i}"))).collect();
    assert_eq!(values, expected, "each sequence is visible exactly once");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_new_data() {
    let c = TestCluster::start(3).await;
    c.create_topic("poll", 1, 3).await;
    let leader = c.settled_leaders("poll").await[0];
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let first = c.node(leader).produce("poll", 0, vec![record("a", "1")], None).await.expect("produce")[0];
    // Wait for the follower to have applied the first record, then park a long poll after it.
    wait_for("follower has the first record", || async {
        (c.try_read_all(follower, "poll", 0).await.ok()?.len() == 1).then_some(())
    })
    .await;
    let node = c.node(follower).clone();
    let poll = tokio::spawn(async move {
        let req = FetchRequest {
            topic: "poll".into(),
            partition: 0,
            offset: first.base_offset + 1,
            from_index: None,
            max_bytes: 1 << 20,
            wait: Duration::from_secs(30),
            check: ReadCheck::Chain,
        };
        node.fetch(req).await
    });
    let second = c.node(leader).produce("poll", 0, vec![record("b", "2")], None).await.expect("produce")[0];
    let res = tokio::time::timeout(WAIT, poll).await.expect("poll returns").expect("join").expect("fetch");
    let (records, _) = decode_fetch(&res, first.base_offset + 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset, second.base_offset);
    assert_eq!(second.base_offset, 1, "dense offsets");
    assert_eq!(records[0].value, Bytes::from_static(b"2"));

    // With nothing new the poll returns empty at the high watermark once its wait is over.
    let req = FetchRequest {
        topic: "poll".into(),
        partition: 0,
        offset: res.high_watermark,
        from_index: None,
        max_bytes: 1024,
        wait: Duration::from_millis(100),
        check: ReadCheck::Chain,
    };
    let empty = c.node(follower).fetch(req).await.expect("fetch");
    assert!(empty.entries.is_empty());
    assert_eq!(empty.high_watermark, res.high_watermark);
    c.shutdown().await;
}

/// Sends five batches of three records (values `s{sequence}`) of `producer_id` to partition 0 of
/// `topic`, from sequence `first` on, all at once and the later ones first (5 ms apart), and
/// expects each written at the offset of its first sequence (the partition's offsets so far equal
/// the producer's sequences).
async fn send_last_first_and_expect_sequence_order(node: &Arc<Cluster>, topic: &str, producer_id: u64, first: u64) {
    let mut tasks = Vec::new();
    for b in (0..5u64).rev() {
        let (node, topic) = (node.clone(), topic.to_string());
        let base_sequence = first + b * 3;
        let records: Vec<_> = (0..3).map(|i| record("k", &format!("s{}", base_sequence + i))).collect();
        let producer = ProducerInfo { producer_id, base_sequence };
        tasks.push((b, tokio::spawn(async move { node.produce(&topic, 0, records, Some(producer)).await })));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (b, t) in tasks {
        let acks = t.await.expect("join").unwrap_or_else(|e| panic!("batch {b}: {e:?}"));
        assert_eq!((acks[0].base_offset, acks[0].record_count), (first + b * 3, 3), "batch {b} in sequence order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_batches_arriving_out_of_order_are_written_in_sequence_order() {
    let c = TestCluster::start(3).await;
    c.create_topic("pipe", 1, 3).await;
    let leader = c.settled_leaders("pipe").await[0];
    let node = c.node(leader).clone();
    // The producer is known to the partition (its first batch is written).
    let first = ProducerInfo { producer_id: 5, base_sequence: 0 };
    node.produce("pipe", 0, vec![record("k", "s0")], Some(first)).await.expect("first");
    // Five batches sent at once, the later ones first: each waits for the one before it.
    send_last_first_and_expect_sequence_order(&node, "pipe", 5, 1).await;
    let values: Vec<Bytes> = c.read_all(leader, "pipe", 0).await.into_iter().map(|r| r.value).collect();
    let expected: Vec<Bytes> = (0..16).map(|i| Bytes::from(format!("s{i}"))).collect();
    assert_eq!(values, expected);
    // A batch whose predecessor never comes is refused after the wait, naming what is expected,
    // and well before the request timeout (10 s here): the producer must hear SEQUENCE_GAP and
    // park the batch, not time out and spend an attempt.
    let ahead = ProducerInfo { producer_id: 5, base_sequence: 100 };
    let asked = std::time::Instant::now();
    match node.produce("pipe", 0, vec![record("k", "x")], Some(ahead)).await {
        Err(ClusterError::SequenceGap { producer_id: 5, sequence: 100, expected: 16 }) => {}
        other => panic!("expected a sequence gap, got {other:?}"),
    }
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(4), "the gap was answered after {waited:?}, half the request timeout or more");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_producers_pipelined_batches_arriving_before_its_first_are_written_in_sequence_order() {
    let c = TestCluster::start(3).await;
    c.create_topic("fresh", 1, 3).await;
    let leader = c.settled_leaders("fresh").await[0];
    let node = c.node(leader).clone();
    // A producer the partition has never seen pipelines from its first batch on: five batches
    // sent at once, the later ones first, its first (sequence 0) last. Each waits for the one
    // before it; none is taken as the producer's start.
    send_last_first_and_expect_sequence_order(&node, "fresh", 6, 0).await;
    let values: Vec<Bytes> = c.read_all(leader, "fresh", 0).await.into_iter().map(|r| r.value).collect();
    let expected: Vec<Bytes> = (0..15).map(|i| Bytes::from(format!("s{i}"))).collect();
    assert_eq!(values, expected);
    // A producer the partition does not know that starts past sequence 0 (one the partition
    // forgot) is taken at its sequence once the wait is over, well before the request timeout
    // (10 s here), and followed from there.
    let forgotten = ProducerInfo { producer_id: 7, base_sequence: 40 };
    let asked = std::time::Instant::now();
    let acks = node.produce("fresh", 0, vec![record("k", "f40")], Some(forgotten)).await.expect("taken after the wait");
    assert_eq!(acks[0].base_offset, 15);
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}, half the request timeout or more");
    let next = ProducerInfo { producer_id: 7, base_sequence: 41 };
    let acks = node.produce("fresh", 0, vec![record("k", "f41")], Some(next)).await.expect("next");
    assert_eq!(acks[0].base_offset, 16);
    let skip = ProducerInfo { producer_id: 7, base_sequence: 50 };
    match node.produce("fresh", 0, vec![record("k", "x")], Some(skip)).await {
        Err(ClusterError::SequenceGap { producer_id: 7, sequence: 50, expected: 42 }) => {}
        other => panic!("a known producer's gap is refused, got {other:?}"),
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_is_split_into_consecutive_batches_and_retried_whole() {
    let c = TestCluster::start(3).await;
    c.create_topic("big", 1, 3).await;
    let leader = c.settled_leaders("big").await[0];
    let producer = ProducerInfo { producer_id: 8, base_sequence: 0 };
    let records: Vec<_> = (0..5).map(|i| record("k", &format!("{i}{}", "v".repeat(600 << 10)))).collect();
    let acks = c.node(leader).produce("big", 0, records.clone(), Some(producer)).await.expect("produce");
    assert_eq!(acks.len(), 5, "about 1 MiB of records per batch: one 600 KiB record each");
    for (i, a) in acks.iter().enumerate() {
        assert_eq!((a.base_offset, a.record_count), (i as u64, 1));
        if i > 0 {
            assert_eq!(a.entry_index, acks[i - 1].entry_index + 1, "proposed together, consecutive entries");
        }
    }
    let retry = c.node(leader).produce("big", 0, records, Some(producer)).await.expect("retry");
    assert_eq!(retry, acks, "a retry answers every original batch");
    let got = c.read_all(leader, "big", 0).await;
    assert_eq!(got.len(), 5);
    assert!(got.iter().zip(&acks).all(|(r, a)| r.chain_hash == a.chain_hash && r.entry_index == a.entry_index));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_returns_stored_entries_that_chain_including_hidden_and_raft_entries() {
    let c = TestCluster::start(3).await;
    c.create_topic("chain", 1, 3).await;
    let leader = c.settled_leaders("chain").await[0];
    let node = c.node(leader).clone();
    let p = |s| Some(ProducerInfo { producer_id: 3, base_sequence: s });
    let a = node.produce("chain", 0, vec![record("a", "0"), record("a", "1")], p(0)).await.expect("a")[0];
    // An overlapping retry: stored in the log, hidden from consumers.
    let refused = node.produce("chain", 0, vec![record("a", "1"), record("a", "2")], p(1)).await;
    assert!(refused.is_err());
    let b = node.produce("chain", 0, vec![record("b", "2")], p(2)).await.expect("b")[0];
    assert_eq!(b.base_offset, 2, "the hidden batch consumed no offset");
    assert!(b.entry_index >= a.entry_index + 2, "the hidden entry lies between");

    // From the start of the log: Raft's own entries first (not hidden, skipped by kind), then A.
    let req = |offset, from_index, max_bytes| FetchRequest {
        topic: "chain".into(),
        partition: 0,
        offset,
        from_index,
        max_bytes,
        wait: Duration::ZERO,
        check: ReadCheck::Chain,
    };
    let all = node.fetch(req(0, Some(0), 1 << 20)).await.expect("fetch from index 0");
    assert_eq!(all.prev_chain_hash, None, "nothing before index 0");
    assert_eq!(all.entries[0].index, 0);
    let kinds: Vec<(u8, bool)> =
        all.entries.iter().map(|e| (e.data[shale_storage::record_batch::envelope::KIND_AT], e.hidden)).collect();
    assert!(kinds[0].0 != shale_storage::record_batch::envelope::KIND_NORMAL && !kinds[0].1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|(_, hidden)| *hidden).count(), 1, "{kinds:?}");
    let (records, head) = decode_fetch(&all, 0);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(head, b.chain_hash, "the hashes recomputed from the stored bytes end at the acknowledged one");
    assert_eq!((all.next_offset, all.next_index, all.high_watermark), (3, b.entry_index + 1, 3));

    // By offset, one batch at a time, continued by index: the answers chain across the hidden entry.
    let first = node.fetch(req(1, None, 1)).await.expect("offset 1");
    assert_eq!(first.entries.len(), 1, "the batch holding offset 1, whole");
    assert_eq!(first.entries[0].index, a.entry_index);
    let (records, head) = decode_fetch(&first, 1);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![1]);
    assert_eq!(head, a.chain_hash);
    let next = node.fetch(req(first.next_offset, Some(first.next_index), 1)).await.expect("continue");
    assert_eq!(next.prev_chain_hash, Some(a.chain_hash));
    assert!(next.entries.first().is_some_and(|e| e.hidden), "the hidden entry is returned, marked");
    let (records, head) = decode_fetch(&next, 2);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2]);
    assert_eq!(head, b.chain_hash);
    // A from_index past the entry holding the offset, or below the log, is refused.
    assert!(matches!(
        node.fetch(req(0, Some(b.entry_index), 1)).await,
        Err(ClusterError::InvalidFromIndex { reason: shale_raft::cluster::FromIndexProblem::PastOffset { .. }, .. })
    ));
    c.shutdown().await;
}

/// Pipelined produce requests (acknowledged while later entries are appended, so an entry is
/// rarely the log's head when its acknowledgement is made) on disk-backed replicas: every
/// acknowledgement names the chain hash the entry's record has in each replica's segment files,
/// re-read and re-verified from disk. With the in-memory log tail (hashes kept from the append)
/// and without it (storage answers).
async fn acks_name_the_stored_chain_hash(log_cache_bytes: usize) {
    let setup =
        Setup { backing: Backing::Disk(shale_storage::StorageOptions::default()), log_cache_bytes, ..Setup::new(3) };
    let c = TestCluster::start_with(setup).await;
    c.create_topic("acked", 1, 3).await;
    let leader = c.settled_leaders("acked").await[0];
    let node = c.node(leader).clone();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let node = node.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..12 {
                    let records =
                        (0..3).map(|r| record(&format!("{t}"), &format!("{i}-{r}-{}", "x".repeat(700)))).collect();
                    acks.extend(node.produce("acked", 0, records, None).await.expect("produce"));
                }
                acks
            })
        })
        .collect();
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.expect("producer task"));
    }
    assert_eq!(acks.len(), 8 * 12);
    let last = acks.iter().map(|a| a.entry_index).max().expect("acks");
    for id in 1..=3 {
        let replica = c.node(id);
        wait_for("replica holds every acknowledged entry", || async {
            replica.verify_range("acked", 0, last, last + 1).await.ok()
        })
        .await;
        for a in &acks {
            let stored = replica.verify_range("acked", 0, a.entry_index, a.entry_index + 1).await.expect("verify");
            assert_eq!(stored.head, a.chain_hash, "node {id}, entry {}", a.entry_index);
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_the_chain_hash_stored_on_every_replica() {
    acks_name_the_stored_chain_hash(shale_raft::RaftGroupConfig::default().log_cache_bytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_the_chain_hash_stored_on_every_replica_without_a_log_tail_cache() {
    acks_name_the_stored_chain_hash(0).await;
}

/// The first offset at or after a time skips hidden batches: a retry committed as a duplicate,
/// stamped later than every visible record, never answers; every replica answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_time_never_answers_from_a_hidden_batch() {
    let c = TestCluster::start(3).await;
    c.create_topic("timed", 1, 3).await;
    let leader = c.settled_leaders("timed").await[0];
    let node = c.node(leader).clone();
    let p = |s| Some(ProducerInfo { producer_id: 9, base_sequence: s });
    let at = |value: &str, ts| ProduceRecord { timestamp_ms: Some(ts), ..record("k", value) };
    node.produce("timed", 0, vec![at("a0", 100), at("a1", 110)], p(0)).await.expect("a");
    // An overlapping retry with later stamps: stored in the log, hidden (a duplicate). Were it
    // read, its third record (stamped 520, at its base offset + 2) would answer for 515.
    assert!(node.produce("timed", 0, vec![at("a1", 500), at("a2", 510), at("a3", 520)], p(1)).await.is_err());
    let b = node.produce("timed", 0, vec![at("b2", 300)], p(2)).await.expect("b")[0];
    let c3 = node.produce("timed", 0, vec![at("c3", 600)], p(3)).await.expect("c")[0];
    assert_eq!((b.base_offset, c3.base_offset), (2, 3));
    for id in 1..=3 {
        let n = c.node(id).clone();
        wait_for("the replica applied c", || {
            let n = n.clone();
            async move { (n.local_bounds("timed", 0).await.ok() == Some((0, 4))).then_some(()) }
        })
        .await;
        let cases = [(0, Some(0)), (105, Some(1)), (111, Some(2)), (300, Some(2)), (301, Some(3)), (515, Some(3))];
        for (t, expected) in cases.into_iter().chain([(601, None)]) {
            assert_eq!(n.offset_for_time("timed", 0, t).await.expect("offset for time"), expected, "time {t} on {id}");
        }
    }
    c.shutdown().await;
}
