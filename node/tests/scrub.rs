//! Damage found and repaired: a bit flipped in a sealed segment of a stopped follower's copy of a
//! partition log is found by the node's scrubber after restart, reported (metrics, cluster status),
//! never served, and repaired from the other replicas, after which the node alone serves every
//! record with the same chain hashes as the others.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use shale_client::admin::NewTopic;
use shale_client::proto;
use shale_client::proto::fetch_client::FetchClient;
use shale_client::{ChainBreak, ChainReader, Client, ClientConfig, ClientError, ProducerConfig, ProducerRecord};
use shale_node::NodeConfig;
use shale_node::testing::LocalCluster;
use shale_storage::{Offset, Record, Storage, StorageBackend, StreamId, format};

const WAIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "scrubbed";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn tune(c: &mut NodeConfig) {
    c.segment_bytes = 8192;
    c.scrub.pass_interval_ms = 300;
    c.scrub.repair_retry_ms = 200;
    c.scrub.bytes_per_sec = 64 << 20;
}

async fn metric(http: std::net::SocketAddr, name: &str) -> u64 {
    let body = reqwest_get(http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// A plain HTTP/1.0 GET on loopback.
async fn reqwest_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Every record of `partition 0` fetched from the node at `addr` alone, as a consumer reads it
/// (each fetch continuing at the last entry, every entry's chain hash recomputed: a node that
/// served anything off the chain fails the test): offset -> chain hash of its entry, value. `Err`
/// with the status of the first failed fetch.
async fn read_alone(addr: std::net::SocketAddr, end: u64) -> Result<BTreeMap<u64, (Vec<u8>, Vec<u8>)>, tonic::Status> {
    let mut client = FetchClient::connect(format!("http://{addr}")).await.expect("connect");
    let mut reader = ChainReader::new(TOPIC, 0, 0, true);
    let codecs = shale_client::chain::default_codecs();
    let mut out = BTreeMap::new();
    while reader.offset() < end {
        let req = proto::FetchRequest {
            topic: TOPIC.into(),
            partition: 0,
            offset: reader.offset(),
            max_bytes: 16 << 10,
            max_wait_ms: 0,
            from_index: reader.from_index(),
            // The replica re-hashes what it serves: a damaged range is refused, not served.
            client_checks_chain: false,
        };
        let resp = client.fetch(req).await?.into_inner();
        if resp.entries.is_empty() {
            break;
        }
        let decoded = reader
            .accept(resp.entries, &resp.prev_chain_hash, &resp.last_chain_hash, &codecs)
            .expect("the node serves one chain");
        for r in decoded.records {
            out.insert(r.offset, (r.chain_hash.expect("checked").0.to_vec(), r.value.to_vec()));
        }
    }
    Ok(out)
}

/// Waits until the node at `addr`, read on its own, serves exactly `reference`: every record with
/// the same chain hashes.
async fn serves_alone(addr: std::net::SocketAddr, reference: &BTreeMap<u64, (Vec<u8>, Vec<u8>)>, who: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match read_alone(addr, u64::MAX).await {
            Ok(records) if records == *reference => return,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "{who} does not serve every record: {:?}",
                other.map(|r| r.len())
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The byte ranges of a segment file's records: (position, stored length).
fn record_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut pos = format::segment::HEADER_LEN;
    while pos + format::record::OVERHEAD <= bytes.len() {
        let at = pos + format::record::STORED_LEN_AT;
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        spans.push((pos, len));
        pos += format::record::encoded_len(len);
    }
    assert_eq!(pos, bytes.len(), "a sealed segment holds whole records");
    spans
}

/// Opens a stopped node's storage and reads a stream's records.
fn offline_records(dir: &Path, stream: StreamId) -> Vec<Record> {
    let s = Storage::open(dir).expect("open the stopped node's storage");
    s.read_records(stream, Offset::ZERO, usize::MAX).expect("every record verifies")
}

/// Three nodes with the topic, about 400 records produced (most acknowledged), and the stream of
/// the partition's Raft log and the number of records acknowledged.
async fn start_with_records(root: &Path) -> (LocalCluster, StreamId, usize) {
    start_with_records_tuned(root, tune).await
}

/// [`start_with_records`] with nodes configured by `configure`.
async fn start_with_records_tuned(root: &Path, configure: fn(&mut NodeConfig)) -> (LocalCluster, StreamId, usize) {
    let c = LocalCluster::start(3, root, configure).await.expect("start");
    assert!(c.not_ready(WAIT).await.is_empty());
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 40;
    let client = Client::new(config).unwrap();
    client.admin().create_topic(NewTopic::new(TOPIC, 1, 3)).await.expect("create topic");
    // Small batches: one stored entry holds a few records, so the log spans several small segments.
    let producer = client.producer(ProducerConfig { batch_max_records: 3, ..ProducerConfig::default() });
    let mut pending = Vec::new();
    for i in 0..400u32 {
        let value = format!("record-{i}-{}", "x".repeat(150));
        pending.push(producer.send(ProducerRecord::new(TOPIC, value)).await.expect("queued"));
    }
    // (A leader change while the group settles may leave a write's outcome unknown: the client's
    // retries are not under test here, so only most writes must be acknowledged.)
    let mut acked = 0;
    for p in pending {
        acked += usize::from(p.await.is_ok());
    }
    assert!(acked >= 300, "only {acked} of 400 writes acknowledged");
    let status = c.running(1).unwrap().cluster().cluster_status();
    let g = status.partitions.iter().find(|g| g.partition.as_ref().is_some_and(|(t, _)| t == TOPIC)).unwrap();
    let stream = StreamId::new(2 * g.group.0);
    (c, stream, acked)
}

/// The partition's leader, as node 1 sees it, once there is one.
async fn partition_leader(c: &LocalCluster) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(l) = c.running(1).unwrap().cluster().leader_of(TOPIC, 0).map(|(id, _)| id) {
            return l;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_bit_in_a_followers_sealed_segment_is_found_reported_and_repaired() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (mut c, stream, acked) = start_with_records(root.path()).await;
    let end = u64::MAX;
    // The partition's leader, and a follower to damage.
    let leader = partition_leader(&c).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let reference = read_alone(c.grpc[leader as usize - 1], end).await.expect("the leader serves every record");
    assert!(reference.len() >= acked);
    // Wait until the follower has applied everything, then stop it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while read_alone(c.grpc[follower as usize - 1], end).await.map(|r| r.len()).unwrap_or(0) < reference.len() {
        assert!(tokio::time::Instant::now() < deadline, "follower never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop(follower).await.expect("stop");
    let dir = c.data_dir(follower).to_path_buf();
    let good = offline_records(&dir, stream);

    // Flip a bit in the payload of a record in the middle of a sealed segment.
    let (file, bad_offset) = {
        let s = Storage::open(&dir).unwrap();
        let segs = s.segments(stream).unwrap();
        assert!(segs.len() >= 4, "small segments: the log spans several ({})", segs.len());
        let seg = &segs[segs.len() / 2];
        assert!(seg.sealed);
        (dir.join(stream.get().to_string()).join(&seg.file), seg.base)
    };
    let mut bytes = std::fs::read(&file).unwrap();
    let spans = record_spans(&bytes);
    let i = spans.len() / 2;
    let (pos, len) = spans[i];
    bytes[pos + format::record::PAYLOAD_AT + len / 2] ^= 0x08;
    std::fs::write(&file, &bytes).unwrap();
    let bad = bad_offset.get() + i as u64;

    // Restart it alone: the scrubber finds the damage and reports it, but cannot repair it with
    // no other replica up.
    let others: Vec<u64> = (1..=3).filter(|id| *id != follower).collect();
    for id in &others {
        c.stop(*id).await.expect("stop");
    }
    c.restart(follower).await.expect("restart");
    let http = c.http[follower as usize - 1];
    let grpc = c.grpc[follower as usize - 1];
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(http, "shale_scrub_damaged_ranges").await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "the damage was never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(http, "shale_scrub_repairs_total").await, 0);
    let mut admin = proto::admin_client::AdminClient::connect(format!("http://{grpc}")).await.unwrap();
    let status = admin.cluster_status(proto::ClusterStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.damaged.len(), 1, "{:?}", status.damaged);
    let d = &status.damaged[0];
    assert_eq!((d.node_id, d.from, d.to), (follower, bad, bad + 1), "{d:?}");
    assert_eq!(d.name, format!("{TOPIC}/0"));
    assert!(d.reason.contains("CRC mismatch"), "{d:?}");

    // With the other replicas back, it is repaired.
    for id in &others {
        c.restart(*id).await.expect("restart");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut served_while_damaged = 0;
    loop {
        // Whatever the node serves meanwhile is never the damaged record's bytes.
        match read_alone(grpc, end).await {
            Ok(records) => {
                for (o, r) in &records {
                    assert_eq!(Some(r), reference.get(o), "offset {o} served as something else");
                }
                served_while_damaged += 1;
            }
            Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "a damaged read is retryable: {s:?}"),
        }
        if metric(http, "shale_scrub_repairs_total").await >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the damage was never repaired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = served_while_damaged;
    assert!(metric(http, "shale_scrub_damage_found_total").await >= 1, "the damage was counted");
    assert!(metric(http, "shale_scrub_bytes_total").await > 0);
    assert_eq!(metric(http, "shale_scrub_damaged_ranges").await, 0, "nothing left damaged");

    // After the repair the node alone serves every record, as the leader does.
    serves_alone(grpc, &reference, "the repaired node").await;
    // And its files hold the same chain as before the damage.
    c.stop(follower).await.expect("stop");
    let repaired = offline_records(&dir, stream);
    assert_eq!(repaired[..good.len()], good[..], "the repaired log has the same records and hashes");
    assert!(good.iter().any(|r| r.offset.get() == bad));
    let _ = c.running(follower);
    c.shutdown().await.expect("shutdown");
}

/// The middle record of the middle sealed segment of `stream` under `dir` (or of the active
/// segment, the last one): its segment file, the file's bytes holding records (an active
/// segment's preallocated zeros cut off), the record's byte position and stored length, and its
/// offset.
fn middle_record(dir: &Path, stream: StreamId, active: bool) -> (std::path::PathBuf, Vec<u8>, usize, usize, u64) {
    let sdir = dir.join(stream.get().to_string());
    let mut segs: Vec<String> = std::fs::read_dir(&sdir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".log"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 4, "small segments: the log spans several ({})", segs.len());
    let name = if active { segs.last().unwrap() } else { &segs[segs.len() / 2] };
    let path = sdir.join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    if active {
        // Past the records: zeros preallocated for later appends.
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    let base = u64::from_le_bytes(
        bytes[format::segment::BASE_OFFSET_AT..format::segment::BASE_OFFSET_AT + 8].try_into().unwrap(),
    );
    let spans = record_spans(&bytes);
    assert!(!spans.is_empty(), "{name} holds records");
    let i = spans.len() / 2;
    let (pos, len) = spans[i];
    (path, bytes, pos, len, base + i as u64)
}

/// Flips one bit of the payload of the middle record of the middle sealed segment of `stream`
/// under `dir` (or of the active segment, the last one), in place (the node may be running);
/// returns the record's offset.
fn flip_in_place(dir: &Path, stream: StreamId, active: bool) -> u64 {
    use std::os::unix::fs::FileExt;
    let (path, _, pos, len, offset) = middle_record(dir, stream, active);
    let at = (pos + format::record::PAYLOAD_AT + len / 2) as u64;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x08;
    f.write_all_at(&b, at).unwrap();
    offset
}

/// Rewrites the last payload byte of the middle record of the middle sealed segment of `stream`
/// under `dir` (the node may be running) and recomputes the record's CRC, so only the chain shows
/// the change; returns the record's offset.
fn rewrite_in_place(dir: &Path, stream: StreamId) -> u64 {
    use std::os::unix::fs::FileExt;
    let (path, bytes, pos, len, offset) = middle_record(dir, stream, false);
    assert_eq!(bytes[pos + format::record::CODEC_AT], 0, "stored uncompressed: the last byte is a record value's");
    let mut record = bytes[pos..pos + format::record::PAYLOAD_AT + len].to_vec();
    *record.last_mut().unwrap() ^= 0x01;
    let crc = crc32fast::hash(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    f.write_all_at(&record, pos as u64).unwrap();
    offset
}

/// A record of a running follower's copy rewritten in place with its CRC recomputed (only the
/// chain shows it): asked to check the chain itself, the follower refuses to serve the range; asked
/// by a consumer that checks the chain (`client_checks_chain`: the node then only CRC-checks and
/// sends the stored links), it serves the stored bytes and the consumer finds the break in the
/// answer that carries them, every record before it genuine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_rewritten_with_its_crc_is_refused_by_the_node_or_caught_by_a_consumer_checking_the_chain() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    // No scrubber: the damage must stay until both reads saw it.
    let (c, stream, _acked) = start_with_records_tuned(root.path(), |n| {
        tune(n);
        n.scrub.enabled = false;
    })
    .await;
    let leader = partition_leader(&c).await;
    let reference = read_alone(c.grpc[leader as usize - 1], u64::MAX).await.expect("the leader serves every record");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let addr = c.grpc[follower as usize - 1];
    serves_alone(addr, &reference, "the follower before the damage").await;
    let bad = rewrite_in_place(c.data_dir(follower), stream);

    let mut fetch = FetchClient::connect(format!("http://{addr}")).await.expect("connect");
    let mut reader = ChainReader::new(TOPIC, 0, 0, true);
    let codecs = shale_client::chain::default_codecs();
    let mut served = Vec::new();
    let err = loop {
        let req = proto::FetchRequest {
            topic: TOPIC.into(),
            partition: 0,
            offset: reader.offset(),
            max_bytes: 4 << 10,
            max_wait_ms: 0,
            from_index: reader.from_index(),
            client_checks_chain: true,
        };
        let resp = fetch.fetch(req).await.expect("asked for stored links, the replica serves the range").into_inner();
        assert!(!resp.entries.is_empty(), "read to the end without meeting the entry rewritten at {bad}");
        match reader.accept(resp.entries, &resp.prev_chain_hash, &resp.last_chain_hash, &codecs) {
            Ok(decoded) => served.extend(decoded.records),
            Err(e) => break e,
        }
    };
    match err {
        ClientError::ChainMismatch { index, reason: ChainBreak::LastHash { .. }, .. } => {
            assert!(index >= bad && index < bad + 64, "entry {bad} rewritten, the break names {index}");
        }
        other => panic!("expected the answer holding entry {bad} to miss its last chain hash: {other}"),
    }
    assert!(!served.is_empty() && served.iter().all(|r| r.entry_index < bad));
    for r in &served {
        let (hash, value) = &reference[&r.offset];
        assert_eq!((r.chain_hash.unwrap().0.to_vec(), r.value.to_vec()), (hash.clone(), value.clone()));
    }

    // Re-hashing, the replica refuses the range and says so.
    match read_alone(addr, u64::MAX).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().contains("damaged"), "{}", status.message());
        }
        Ok(records) => panic!("the damaged replica served {} records", records.len()),
    }
    c.shutdown().await.expect("shutdown");
}

/// The number of entries in the active (last) segment of `stream` under `dir`.
fn active_entries(dir: &Path, stream: StreamId) -> usize {
    let sdir = dir.join(stream.get().to_string());
    let mut segs: Vec<_> = std::fs::read_dir(&sdir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
    segs.retain(|p| p.extension().is_some_and(|x| x == "log"));
    segs.sort();
    let mut bytes = std::fs::read(segs.last().expect("a segment")).unwrap();
    bytes.truncate(bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1));
    record_spans(&bytes).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_with_a_damaged_log_hands_leadership_away_and_is_repaired() {
    damage_running_node(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damage_in_a_running_followers_active_segment_is_repaired() {
    damage_running_node(false).await;
}

/// Damages a running node's copy of the partition log: the leader's (a sealed segment; it must
/// hand leadership away), or a follower's active segment. Either is repaired, after which the node
/// alone serves every record as the leader does.
async fn damage_running_node(leader_damaged: bool) {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (c, stream, _acked) = start_with_records(root.path()).await;
    let end = u64::MAX;
    let leader_of = || c.running(1).unwrap().cluster().leader_of(TOPIC, 0).map(|(id, _)| id);
    let leader = partition_leader(&c).await;
    let reference = read_alone(c.grpc[leader as usize - 1], end).await.expect("the leader serves every record");

    let reference = if leader_damaged {
        reference
    } else {
        // A follower's active segment: wait until it holds everything.
        let follower = (1..=3).find(|id| *id != leader).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while read_alone(c.grpc[follower as usize - 1], end).await.ok().as_ref() != Some(&reference) {
            assert!(tokio::time::Instant::now() < deadline, "follower never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let bad = flip_in_place(c.data_dir(follower), stream, true);
        let http = c.http[follower as usize - 1];
        let deadline = tokio::time::Instant::now() + WAIT;
        while metric(http, "shale_scrub_repairs_total").await < 1 {
            assert!(tokio::time::Instant::now() < deadline, "the damage at {bad} was never repaired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(metric(http, "shale_scrub_damage_found_total").await >= 1);
        serves_alone(c.grpc[follower as usize - 1], &reference, "the repaired follower").await;
        c.shutdown().await.expect("shutdown");
        return;
    };
    // Damage the running leader's copy.
    let bad = flip_in_place(c.data_dir(leader), stream, false);
    let http = c.http[leader as usize - 1];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut moved = false;
    while metric(http, "shale_scrub_repairs_total").await < 1 {
        moved |= metric(http, "shale_scrub_damage_found_total").await >= 1 && leader_of() != Some(leader);
        assert!(tokio::time::Instant::now() < deadline, "the damage at {bad} was never repaired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The scrubber hands leadership away before it repairs.
    let new_leader = leader_of();
    assert!(moved || new_leader != Some(leader), "leadership stayed on the damaged node");
    assert_eq!(metric(http, "shale_scrub_damaged_ranges").await, 0);
    // Repaired: the old leader alone serves every record with the leader's chain hashes.
    serves_alone(c.grpc[leader as usize - 1], &reference, "the repaired old leader").await;
    c.shutdown().await.expect("shutdown");
}

/// A bit flipped in the middle of a stopped follower's active segment (what the chaos test's
/// bit-flip fault does when a log has no sealed segment yet): the node starts anyway, with the
/// damaged record unreadable, and its scrubber repairs it from the other replicas. (Storage used to
/// refuse to open such a segment, so the node could not start again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_bit_in_a_stopped_followers_active_segment_lets_it_start_and_is_repaired() {
    init_tracing();
    let root = tempfile::tempdir().unwrap();
    let (mut c, stream, _acked) = start_with_records(root.path()).await;
    let end = u64::MAX;
    let leader = partition_leader(&c).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 40;
    let producer = Client::new(config).unwrap().producer(ProducerConfig::default());
    // The follower holds everything, with at least three entries in its active segment (so that
    // whole records follow the middle one); one more entry at a time until it does.
    let reference = loop {
        let reference = read_alone(c.grpc[leader as usize - 1], end).await.expect("the leader serves every record");
        let deadline = tokio::time::Instant::now() + WAIT;
        while read_alone(c.grpc[follower as usize - 1], end).await.ok().as_ref() != Some(&reference) {
            assert!(tokio::time::Instant::now() < deadline, "follower never caught up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if active_entries(c.data_dir(follower), stream) >= 3 {
            break reference;
        }
        producer.send_and_wait(ProducerRecord::new(TOPIC, "one more")).await.expect("acknowledged");
    };
    c.stop(follower).await.expect("stop");
    let dir = c.data_dir(follower).to_path_buf();
    let good = offline_records(&dir, stream);
    let bad = flip_in_place(&dir, stream, true);
    assert!(good.last().is_some_and(|r| r.offset.get() > bad), "whole records follow the damaged one");

    c.restart(follower).await.expect("the damaged node starts");
    let http = c.http[follower as usize - 1];
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(http, "shale_scrub_repairs_total").await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the damage at {bad} was never repaired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(http, "shale_scrub_damaged_ranges").await, 0, "nothing left damaged");
    serves_alone(c.grpc[follower as usize - 1], &reference, "the repaired follower").await;
    c.stop(follower).await.expect("stop");
    let repaired = offline_records(&dir, stream);
    assert_eq!(repaired[..good.len()], good[..], "the repaired log has the same records and hashes");
    c.shutdown().await.expect("shutdown");
}
