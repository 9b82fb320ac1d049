//! The Kafka listener against real Kafka clients: `kcat` (librdkafka) and the `confluent-kafka`
//! Python client, on an in-process three-node cluster. Both must be installed (`.ci/run` installs
//! them: `apt-get install -y kcat`, `pip install confluent-kafka`); a test whose client is missing
//! fails saying so, it is never skipped.
//!
//! Cross-API: records produced over Kafka are read over gRPC (the client's chain-checking
//! consumer) at the same offsets, and records produced over gRPC are read over Kafka at theirs.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::{TestCluster, WAIT, create_topic, partition_leader, read_through};
use shale_client::ProducerRecord;
use shale_client::admin::NewTopic;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A consumed or produced record: (partition, offset, key, value).
type Seen = (u32, u64, String, String);

/// The path of `tool`, or a failure naming how to install it.
fn require(tool: &str, install: &str) -> String {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(tool)).find(|p| p.is_file()))
        .unwrap_or_default();
    match found {
        Some(path) => path.display().to_string(),
        None => panic!("{tool} is not installed, and these tests need the real client: {install} (.ci/run does it)"),
    }
}

fn kcat() -> String {
    require("kcat", "apt-get install -y kcat")
}

/// `python3` with `confluent_kafka` importable.
fn python() -> String {
    let python = require("python3", "apt-get install -y python3");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import confluent_kafka"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "the confluent-kafka Python package is not installed: pip install confluent-kafka (.ci/run does it)");
    python
}

/// Runs `program args`, feeding `stdin`; its stdout, or a failure with its stderr. Bounded by
/// [`WAIT`].
async fn run(program: &str, args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = run_status(program, args, stdin).await;
    assert!(ok, "{program} {args:?} failed:\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout
}

/// Runs `program args`, feeding `stdin`: whether it succeeded, its stdout and its stderr.
async fn run_status(program: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(WAIT * 2, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in time"))
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.success(), stdout, stderr)
}

/// kcat's consumed lines `partition offset key value` (its `-f '%p %o %k %s\n'`).
fn parse_seen(out: &str) -> Vec<Seen> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let p = f.next().unwrap().parse().expect("partition");
            let o = f.next().unwrap().parse().expect("offset");
            (p, o, f.next().unwrap_or_default().to_string(), f.next().unwrap_or_default().to_string())
        })
        .collect()
}

/// Every partition's offsets, in order: dense from 0.
fn assert_dense(seen: &[Seen]) {
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (p, o, ..) in seen {
        by_partition.entry(*p).or_default().push(*o);
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "partition {p}: dense offsets from 0");
    }
}

/// What the gRPC consumer (chain checked) reads of every partition of `topic` up to its end.
async fn read_over_grpc(c: &TestCluster, topic: &str, partitions: u32, seen: &[Seen]) -> Vec<Seen> {
    let client = c.client();
    let mut out = Vec::new();
    for p in 0..partitions {
        let Some(last) = seen.iter().filter(|s| s.0 == p).map(|s| s.1).max() else { continue };
        for r in read_through(&client, topic, p, 0, last).await {
            let key = String::from_utf8(r.key.clone().unwrap_or_default().to_vec()).unwrap();
            out.push((p, r.offset, key, String::from_utf8(r.value.to_vec()).unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kcat_lists_metadata_produces_keyed_records_and_reads_them_back_over_kafka_and_grpc() {
    let kcat = kcat();
    let c = TestCluster::start(3).await;
    create_topic(&c, "orders", 3).await;
    let bootstrap = c.kafka_bootstrap();

    // Metadata: every node is a broker at its Kafka address; the topic has 3 partitions, each with
    // a leader and 3 replicas.
    let listing = run(&kcat, &["-b", &bootstrap, "-L", "-t", "orders"], "").await;
    assert!(listing.contains("3 brokers:"), "{listing}");
    for (i, addr) in c.kafka.iter().enumerate() {
        assert!(listing.contains(&format!("broker {} at {addr}", i + 1)), "broker {} listed: {listing}", i + 1);
    }
    assert!(listing.contains("topic \"orders\" with 3 partitions:"), "{listing}");
    assert_eq!(listing.matches("replicas: ").count(), 3, "{listing}");

    // Keyed records produced with kcat (acks=all).
    let sent: Vec<(String, String)> = (0..60).map(|i| (format!("key-{}", i % 7), format!("value-{i}"))).collect();
    let input: String = sent.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "orders", "-K", ":", "-X", "acks=all"], &input).await;

    // Read back with kcat from the beginning (ListOffsets earliest, Fetch to the end).
    let out =
        run(&kcat, &["-b", &bootstrap, "-C", "-t", "orders", "-o", "beginning", "-e", "-f", "%p %o %k %s\n"], "").await;
    let mut seen = parse_seen(&out);
    seen.sort();
    assert_eq!(seen.len(), sent.len(), "every record once: {out}");
    assert_dense(&seen);
    let mut values: Vec<(String, String)> = seen.iter().map(|(_, _, k, v)| (k.clone(), v.clone())).collect();
    values.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(values, expected);
    // One key, one partition, in send order.
    for key in (0..7).map(|i| format!("key-{i}")) {
        let of_key: Vec<&Seen> = seen.iter().filter(|s| s.2 == key).collect();
        assert!(of_key.iter().all(|s| s.0 == of_key[0].0), "{key} on one partition");
        let order: Vec<&str> = sent.iter().filter(|(k, _)| *k == key).map(|(_, v)| v.as_str()).collect();
        let mut by_offset = of_key.clone();
        by_offset.sort_by_key(|s| s.1);
        assert_eq!(by_offset.iter().map(|s| s.3.as_str()).collect::<Vec<_>>(), order, "{key} in send order");
    }

    // Cross-API: the gRPC consumer (every chain hash recomputed) reads the same records at the
    // same offsets.
    assert_eq!(read_over_grpc(&c, "orders", 3, &seen).await, seen);

    // The latest offset (kcat -o end) answers nothing new; -o -2 reads each partition's last two.
    let tail = run(&kcat, &["-b", &bootstrap, "-C", "-t", "orders", "-o", "-2", "-e", "-f", "%p %o %k %s\n"], "").await;
    let tail = parse_seen(&tail);
    for (p, o, ..) in &tail {
        let end = seen.iter().filter(|s| s.0 == *p).count() as u64;
        assert!(*o + 2 >= end, "partition {p}: offset {o} is one of the last two of {end}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_produced_over_grpc_are_read_over_kafka_at_the_same_offsets() {
    let kcat = kcat();
    let c = TestCluster::start(3).await;
    create_topic(&c, "events", 3).await;
    let client = c.client();
    let producer = client.producer(shale_client::ProducerConfig::default());
    let mut sent = Vec::new();
    for i in 0..45 {
        let (key, value) = (format!("k{}", i % 5), format!("grpc-{i}"));
        let delivery = producer
            .send(ProducerRecord::new("events", value.clone()).key(key.clone()))
            .await
            .expect("produce over gRPC");
        let receipt = delivery.await.expect("acknowledged");
        sent.push((receipt.partition, receipt.offset, key, value));
    }
    sent.sort();
    let out = run(
        &kcat,
        &["-b", &c.kafka_bootstrap(), "-C", "-t", "events", "-o", "beginning", "-e", "-f", "%p %o %k %s\n"],
        "",
    )
    .await;
    let mut seen = parse_seen(&out);
    seen.sort();
    assert_eq!(seen, sent, "Kafka reads every gRPC record at its offset");
    c.shutdown().await;
}

/// A confluent-kafka producer (every compression, acks 0/1/all) and a consumer that assigns
/// itself every partition from the start; prints what it read as `partition offset key value`.
const CONFLUENT_SCRIPT: &str = r#"
import sys
from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
errors = []
def delivered(err, msg):
    if err is not None:
        errors.append(str(err))

count = 0
for compression in ["none", "gzip", "snappy", "lz4", "zstd"]:
    for acks in ["all", "1", "0"]:
        p = Producer({"bootstrap.servers": bootstrap, "compression.type": compression, "acks": acks,
                      "linger.ms": 5})
        for i in range(20):
            p.produce(topic, key=f"{compression}-{acks}-{i % 3}", value=f"{compression}-{acks}-{i}",
                      callback=delivered)
            count += 1
        left = p.flush(30)
        if left:
            sys.exit(f"{left} records not delivered ({compression}, acks={acks})")
if errors:
    sys.exit(f"delivery errors: {errors[:5]}")

c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-assign-only",
              "enable.auto.commit": False, "enable.partition.eof": True, "check.crcs": True})
c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
got, eof = 0, set()
while len(eof) < partitions:
    msg = c.poll(10)
    if msg is None:
        sys.exit(f"no message or end of partition within 10 s (read {got}, at the end of {sorted(eof)})")
    if msg.error():
        if msg.error().code() == -191:  # _PARTITION_EOF
            eof.add(msg.partition())
            continue
        sys.exit(f"consumer error: {msg.error()}")
    eof.discard(msg.partition())
    print(msg.partition(), msg.offset(), msg.key().decode(), msg.value().decode())
    got += 1
c.close()
print(f"produced {count}", file=sys.stderr)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confluent_kafka_produces_with_every_compression_and_acks_and_consumes_everything() {
    let python = python();
    let c = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("clients.py");
    std::fs::write(&script, CONFLUENT_SCRIPT).unwrap();
    // Each topic codec keeps the batches of its own compression as sent (none, lz4, zstd) and
    // re-encodes the others; the consumer checks every fetched batch's CRC.
    use shale_client::proto::Codec;
    for (topic, codec) in [("mixed", Codec::None), ("mixed-lz4", Codec::Lz4), ("mixed-zstd", Codec::Zstd)] {
        let mut new = NewTopic::new(topic, 3, 3);
        new.codec = codec;
        c.client().admin().create_topic(new).await.expect("create topic");
        let out = run(&python, &[script.to_str().unwrap(), &c.kafka_bootstrap(), topic, "3"], "").await;
        let mut seen = parse_seen(&out);
        seen.sort();
        // acks=0 records are sent without an answer, but on a healthy cluster they are all stored.
        assert_eq!(seen.len(), 5 * 3 * 20, "{topic}: every record once:\n{out}");
        assert_dense(&seen);
        for compression in ["none", "gzip", "snappy", "lz4", "zstd"] {
            for acks in ["all", "1", "0"] {
                let values: Vec<&Seen> =
                    seen.iter().filter(|s| s.3.starts_with(&format!("{compression}-{acks}-"))).collect();
                assert_eq!(values.len(), 20, "{topic}: {compression} acks={acks}");
            }
        }
        // The same records at the same offsets over gRPC, chain checked.
        assert_eq!(read_over_grpc(&c, topic, 3, &seen).await, seen, "{topic}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_a_client_certificate_names_the_kafka_principal_and_acls_apply() {
    use shale_raft::network::tls::{files, generate};
    let kcat = kcat();
    let root = tempfile::tempdir().unwrap();
    let c = shale_node::testing::LocalCluster::start_tls(3, root.path(), |c| {
        c.auth.enabled = true;
        c.auth.super_users = ["admin".to_string()].into();
    })
    .await
    .expect("nodes start");
    assert!(c.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
    let dir = c.tls_dir();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = generate::Pem { cert: read(files::CA_CERT), key: read(files::CA_KEY) };
    let identity = |name: &str| {
        let pem = generate::client(&ca, name, 1).unwrap();
        let (cert, key) = (root.path().join(format!("{name}.pem")), root.path().join(format!("{name}.key")));
        std::fs::write(&cert, pem.cert).unwrap();
        std::fs::write(&key, pem.key).unwrap();
        (cert.display().to_string(), key.display().to_string())
    };
    let ca_file = dir.join(files::CA_CERT).display().to_string();
    let bootstrap = c.kafka_bootstrap();
    let tls_args = |(cert, key): &(String, String)| {
        vec![
            "-X".to_string(),
            "security.protocol=ssl".to_string(),
            "-X".to_string(),
            format!("ssl.ca.location={ca_file}"),
            "-X".to_string(),
            format!("ssl.certificate.location={cert}"),
            "-X".to_string(),
            format!("ssl.key.location={key}"),
        ]
    };
    let kcat_as = async |who: &(String, String), args: &[&str], stdin: &str| {
        let mut all: Vec<String> = vec!["-b".into(), bootstrap.clone()];
        all.extend(tls_args(who));
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_status(&kcat, &refs, stdin).await
    };

    // The super-user creates a topic over gRPC, then produces and consumes over Kafka with its
    // client certificate.
    let admin = identity("admin");
    let mut config = shale_client::ClientConfig::new(c.endpoints());
    config.tls = c.client_tls().map(|t| {
        let pem = generate::client(&ca, "admin", 1).unwrap();
        t.identity(tonic::transport::Identity::from_pem(pem.cert, pem.key))
    });
    config.max_attempts = 40;
    let client = shale_client::Client::new(config).unwrap();
    client.admin().create_topic(shale_client::admin::NewTopic::new("secure", 1, 3)).await.expect("create");
    let (ok, _, err) = kcat_as(&admin, &["-P", "-t", "secure", "-K", ":"], "a:1\nb:2\n").await;
    assert!(ok, "admin produces: {err}");
    let (ok, out, err) =
        kcat_as(&admin, &["-C", "-t", "secure", "-o", "beginning", "-e", "-f", "%o %k %s\n"], "").await;
    assert!(ok, "admin consumes: {err}");
    assert_eq!(out, "0 a 1\n1 b 2\n");

    // alice has no rule: the topic's metadata and its records are refused.
    let alice = identity("alice");
    let (_, out, err) = kcat_as(&alice, &["-L", "-t", "secure"], "").await;
    assert!(out.contains("Topic authorization failed") || err.contains("Topic authorization failed"), "{out}{err}");
    // Without TLS the listener does not answer.
    let (ok, _, _) = run_status(&kcat, &["-b", &bootstrap, "-L", "-m", "3"], "").await;
    assert!(!ok, "plaintext Kafka against a TLS listener fails");
    c.shutdown().await.unwrap();
}

/// The committed offsets of `group`, as the metadata leader holds them: partition -> offset.
async fn committed(c: &TestCluster, topic: &str, group: &str) -> BTreeMap<u32, u64> {
    let leader = c.node(1).cluster().metadata_leader().expect("a metadata leader").0;
    let rows = c.node(leader).cluster().fetch_offsets(group).await.expect("offsets");
    rows.into_iter().filter(|r| r.topic == topic).map(|r| (r.partition, r.offset)).collect()
}

/// Each partition's end offset (the next offset), from what was consumed.
fn ends(seen: &[Seen]) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for (p, o, ..) in seen {
        let e = out.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kcat_in_a_consumer_group_commits_and_a_second_run_continues_from_the_commit() {
    let kcat = kcat();
    let c = TestCluster::start(3).await;
    create_topic(&c, "grouped", 3).await;
    let bootstrap = c.kafka_bootstrap();
    let input: String = (0..30).map(|i| format!("k{}:first-{i}\n", i % 6)).collect();
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "grouped", "-K", ":"], &input).await;

    // A balanced consumer (JoinGroup/SyncGroup/Heartbeat, OffsetFetch, Fetch, OffsetCommit at exit).
    let group_args = |extra: &'static str| {
        vec![
            "-b".to_string(),
            bootstrap.clone(),
            "-G".to_string(),
            "kgroup".to_string(),
            "grouped".to_string(),
            "-X".to_string(),
            "auto.offset.reset=earliest".to_string(),
            "-e".to_string(),
            "-f".to_string(),
            format!("%p %o %k %s{extra}\n"),
        ]
    };
    let args = group_args("");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = parse_seen(&run(&kcat, &refs, "").await);
    first.sort();
    assert_eq!(first.len(), 30, "the group member read every record: {first:?}");
    assert_dense(&first);
    // It committed where it stopped: each partition's end.
    assert_eq!(committed(&c, "grouped", "kgroup").await, ends(&first));

    // More records; a second run of the same group reads only those.
    let input: String = (0..6).map(|i| format!("k{i}:second-{i}\n")).collect();
    run(&kcat, &["-b", &bootstrap, "-P", "-t", "grouped", "-K", ":"], &input).await;
    let mut second = parse_seen(&run(&kcat, &refs, "").await);
    second.sort();
    assert_eq!(second.len(), 6, "only the new records: {second:?}");
    assert!(second.iter().all(|s| s.3.starts_with("second-")), "{second:?}");
    let mut all = first.clone();
    all.extend(second);
    assert_eq!(committed(&c, "grouped", "kgroup").await, ends(&all));
    c.shutdown().await;
}

/// Two consumers of one group: they split the partitions (client-side assignment by the group
/// leader), read what is produced meanwhile and commit each record. Prints `assigned NAME p,p`
/// lines, then the records as `partition offset key value NAME`.
const GROUP_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Consumer, Producer

bootstrap, topic, partitions, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assigned = {}
def consumer(name):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "pair", "client.id": name,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 300})
    def on_assign(c, parts):
        assigned[name] = sorted(p.partition for p in parts)
    def on_revoke(c, parts):
        assigned[name] = []
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    return c

a = consumer("a")
a.poll(0.5)
b = consumer("b")
deadline = time.time() + 60
def split():
    parts = assigned.get("a", []) + assigned.get("b", [])
    return assigned.get("a") and assigned.get("b") and sorted(parts) == list(range(partitions))
while not split():
    if time.time() > deadline:
        sys.exit(f"the partitions were never split between the two members: {assigned}")
    for c in (a, b):
        m = c.poll(0.2)
        if m is not None and not m.error():
            sys.exit(f"a record before any was produced: {m.value()}")
for name in ("a", "b"):
    print("assigned", name, ",".join(str(p) for p in assigned[name]))

p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
for i in range(count):
    p.produce(topic, key=f"k{i % 7}", value=f"v{i}")
if p.flush(30):
    sys.exit("records not delivered")

got = 0
deadline = time.time() + 60
while got < count:
    if time.time() > deadline:
        sys.exit(f"read {got} of {count}")
    for name, c in (("a", a), ("b", b)):
        m = c.poll(0.1)
        if m is None:
            continue
        if m.error():
            sys.exit(f"consumer {name}: {m.error()}")
        if m.partition() not in assigned[name]:
            sys.exit(f"consumer {name} read partition {m.partition()} it was not assigned: {assigned}")
        c.commit(message=m, asynchronous=False)
        print(m.partition(), m.offset(), m.key().decode(), m.value().decode(), name)
        got += 1
a.close()
b.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_confluent_kafka_consumers_share_the_partitions_and_commit() {
    let python = python();
    let c = TestCluster::start(3).await;
    create_topic(&c, "shared", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("group.py");
    std::fs::write(&script, GROUP_SCRIPT).unwrap();
    let out = run(&python, &[script.to_str().unwrap(), &c.kafka_bootstrap(), "shared", "3", "60"], "").await;
    let mut owners: BTreeMap<u32, String> = BTreeMap::new();
    let mut seen = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("assigned ") {
            let (name, parts) = rest.split_once(' ').unwrap_or((rest, ""));
            for p in parts.split(',').filter(|p| !p.is_empty()) {
                let previous = owners.insert(p.parse().unwrap(), name.to_string());
                assert!(previous.is_none(), "partition {p} has two owners: {out}");
            }
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let (p, o): (u32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert_eq!(owners.get(&p).map(String::as_str), Some(f[4]), "{line}: read by the partition's owner");
        seen.push((p, o, f[2].to_string(), f[3].to_string()));
    }
    assert_eq!(owners.len(), 3, "every partition has an owner: {out}");
    assert!(owners.values().any(|o| o == "a") && owners.values().any(|o| o == "b"), "both members hold partitions");
    seen.sort();
    assert_eq!(seen.len(), 60, "every record once: {out}");
    assert_dense(&seen);
    // Each record was committed as read: the group's offsets are the partitions' ends.
    assert_eq!(committed(&c, "shared", "pair").await, ends(&seen));
    c.shutdown().await;
}

/// confluent-kafka's AdminClient: create (with configs), describe and alter configs, try to add
/// partitions, delete. Prints one `step result` line per step.
const ADMIN_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic, NewPartitions, ConfigResource

bootstrap = sys.argv[1]
admin = AdminClient({"bootstrap.servers": bootstrap})
def wait(futures):
    out = {}
    for key, f in futures.items():
        try:
            f.result(30)
            out[str(key)] = "ok"
        except KafkaException as e:
            out[str(key)] = e.args[0].name()
    return out

print("create", wait(admin.create_topics([
    NewTopic("admin-a", num_partitions=3, replication_factor=3, config={"retention.ms": "60000"}),
    NewTopic("admin-b", num_partitions=2, replication_factor=1),
    NewTopic("admin-bad", num_partitions=1, replication_factor=1, config={"segment.bytes": "1"}),
]))["admin-a"])
print("again", wait(admin.create_topics([NewTopic("admin-a", num_partitions=1, replication_factor=1)]))["admin-a"])
print("badconfig", wait(admin.create_topics([NewTopic("admin-c", num_partitions=1, replication_factor=1, config={"segment.bytes": "1"})]))["admin-c"])
md = admin.list_topics(timeout=30)
print("partitions", len(md.topics["admin-a"].partitions), len(md.topics["admin-b"].partitions))
print("replicas", sorted(len(p.replicas) for p in md.topics["admin-a"].partitions.values()))

res = ConfigResource(ConfigResource.Type.TOPIC, "admin-a")
configs = list(admin.describe_configs([res]).values())[0].result(30)
print("retention.ms", configs["retention.ms"].value)
print("compression.type", configs["compression.type"].value)
alter = ConfigResource(ConfigResource.Type.TOPIC, "admin-a", set_config={"retention.bytes": "1048576", "compression.type": "zstd"})
print("alter", list(wait(admin.alter_configs([alter])).values())[0])
configs = list(admin.describe_configs([res]).values())[0].result(30)
print("altered", configs["retention.bytes"].value, configs["compression.type"].value, configs["retention.ms"].value)

print("add-partitions", wait(admin.create_partitions([NewPartitions("admin-b", 4)]))["admin-b"])
print("shrink", wait(admin.create_partitions([NewPartitions("admin-b", 3)]))["admin-b"])
deadline = time.time() + 30
while len(admin.list_topics(timeout=30).topics["admin-b"].partitions) != 4:
    if time.time() > deadline:
        sys.exit("admin-b never showed 4 partitions")
    time.sleep(0.2)
from confluent_kafka import Producer
p = Producer({"bootstrap.servers": bootstrap})
delivered = []
p.produce("admin-b", value="to the new partition", partition=3, callback=lambda e, m: delivered.append((e, m.offset() if m else None)))
p.flush(30)
print("new-partition", "ok" if delivered and delivered[0][0] is None else delivered, delivered[0][1] if delivered else None)
print("delete", wait(admin.delete_topics(["admin-b"]))["admin-b"])
deadline = time.time() + 30
while "admin-b" in admin.list_topics(timeout=30).topics:
    if time.time() > deadline:
        sys.exit("admin-b still listed")
    time.sleep(0.2)
print("deleted", "admin-b" not in admin.list_topics(timeout=30).topics)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confluent_kafka_admin_client_creates_configures_and_deletes_topics() {
    let python = python();
    let c = TestCluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("admin.py");
    std::fs::write(&script, ADMIN_SCRIPT).unwrap();
    let out = run(&python, &[script.to_str().unwrap(), &c.kafka_bootstrap()], "").await;
    let lines: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(lines.get("create"), Some(&"ok"), "{out}");
    assert_eq!(lines.get("again"), Some(&"TOPIC_ALREADY_EXISTS"), "{out}");
    assert_eq!(lines.get("badconfig"), Some(&"INVALID_CONFIG"), "{out}");
    assert_eq!(lines.get("partitions"), Some(&"3 2"), "{out}");
    assert_eq!(lines.get("replicas"), Some(&"[3, 3, 3]"), "{out}");
    assert_eq!(lines.get("retention.ms"), Some(&"60000"), "{out}");
    assert_eq!(lines.get("compression.type"), Some(&"uncompressed"), "{out}");
    assert_eq!(lines.get("alter"), Some(&"ok"), "{out}");
    // AlterConfigs replaces the settings: retention.ms not named goes back to unlimited.
    assert_eq!(lines.get("altered"), Some(&"1048576 zstd -1"), "{out}");
    assert_eq!(lines.get("delete"), Some(&"ok"), "{out}");
    assert_eq!(lines.get("deleted"), Some(&"True"), "{out}");
    // The same settings over gRPC.
    let info = c.client().admin().describe_topic("admin-a").await.expect("describe over gRPC");
    assert_eq!(info.partitions.len(), 3);
    let shale = c.node(1).cluster().local_topics().into_iter().find(|t| t.name == "admin-a").unwrap();
    assert_eq!(shale.retention.retention_bytes, Some(1_048_576));
    assert_eq!(shale.retention.retention_ms, None);
    assert!(matches!(shale.codec, shale_storage::CodecKind::Zstd { .. }));
    // admin-b grew from 2 to 4 partitions (shrinking is refused); the new partition 3 took a
    // record at offset 0.
    assert_eq!(lines.get("add-partitions"), Some(&"ok"), "{out}");
    assert_eq!(lines.get("shrink"), Some(&"INVALID_PARTITIONS"), "{out}");
    assert_eq!(lines.get("new-partition"), Some(&"ok 0"), "{out}");
    c.shutdown().await;
}

/// An idempotent confluent-kafka producer (InitProducerId, sequences) sending `count` keyed
/// records over a few seconds; exits non-zero if any record was not delivered.
const IDEMPOTENT_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Producer

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
failed = []
def delivered(err, msg):
    if err is not None:
        failed.append(str(err))
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2,
              "message.timeout.ms": 60000})
for i in range(count):
    p.produce(topic, key=f"k{i % 7}", value=str(i), callback=delivered)
    p.poll(0)
    if i % 50 == 0:
        time.sleep(0.05)
left = p.flush(60)
if left or failed:
    sys.exit(f"{left} records not delivered, errors: {failed[:5]}")
print("delivered", count)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_kafka_producer_writes_each_record_once_in_order_across_a_leader_stop() {
    let python = python();
    let mut c = TestCluster::start(3).await;
    create_topic(&c, "idem", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("idempotent.py");
    std::fs::write(&script, IDEMPOTENT_SCRIPT).unwrap();
    let count = 3_000;
    let (script, bootstrap) = (script.to_str().unwrap().to_string(), c.kafka_bootstrap());
    let producing =
        tokio::spawn(async move { run(&python, &[&script, &bootstrap, "idem", &count.to_string()], "").await });
    // Stop the leader of partition 0 while the producer sends.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    // The partition may be between leaders at this instant (the suite's load delays heartbeats):
    // wait until the cluster names one.
    let leader = partition_leader(&c, "idem", 0).await;
    c.stop(leader).await;
    let out = producing.await.unwrap();
    assert!(out.contains(&format!("delivered {count}")), "{out}");

    // Every record once, and each key's records in send order (per partition, by offset).
    let client = c.client();
    let mut values = Vec::new();
    for p in 0..3 {
        let end = loop {
            match client.admin().describe_topic("idem").await {
                Ok(t) if t.partitions[p as usize].leader_id != 0 && t.partitions[p as usize].log_end.is_some() => {
                    break t.partitions[p as usize].log_end.unwrap_or_default();
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        if end == 0 {
            continue;
        }
        let records = read_through(&client, "idem", p, 0, end - 1).await;
        let mut last_of_key: BTreeMap<String, u64> = BTreeMap::new();
        for r in records {
            let key = String::from_utf8(r.key.unwrap().to_vec()).unwrap();
            let i: u64 = String::from_utf8(r.value.to_vec()).unwrap().parse().unwrap();
            if let Some(previous) = last_of_key.insert(key.clone(), i) {
                assert!(previous < i, "{key}: {i} after {previous} (partition {p})");
            }
            values.push(i);
        }
    }
    values.sort_unstable();
    assert_eq!(values, (0..count).collect::<Vec<u64>>(), "every record exactly once");
    c.shutdown().await;
}

/// Produces three records as `user` with SASL `mechanism` (and `password`), then reads the topic
/// back; prints `delivered N`, `error <name>` for delivery errors, and the records read.
const SASL_SCRIPT: &str = r#"
import sys
from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic, mechanism, user, password = sys.argv[1:6]
conf = {"bootstrap.servers": bootstrap, "message.timeout.ms": 8000}
if mechanism != "none":
    conf.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
                 "sasl.username": user, "sasl.password": password})
errors, ok = [], []
def delivered(err, msg):
    if err is not None:
        errors.append(err.name())
    else:
        ok.append(msg.offset())
p = Producer(dict(conf, error_cb=lambda err: errors.append(err.name())))
for i in range(3):
    p.produce(topic, key=user, value=f"{mechanism}-{i}", callback=delivered)
p.flush(20)
print("delivered", len(ok))
for e in sorted(set(errors)):
    print("error", e)
if errors:
    sys.exit(0)
c = Consumer(dict(conf, **{"group.id": "sasl-readers", "enable.auto.commit": False, "enable.partition.eof": True}))
c.assign([TopicPartition(topic, 0, 0)])
while True:
    m = c.poll(10)
    if m is None or (m.error() and m.error().code() == -191):
        break
    if m.error():
        sys.exit(f"consumer error: {m.error()}")
    print("read", m.offset(), m.value().decode())
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sasl_plain_and_scram_authenticate_shale_password_users_and_acls_apply() {
    use shale_raft::cluster::access::{AclRule, Operation, ResourcePattern, ScramCredential};
    let python = python();
    let root = tempfile::tempdir().unwrap();
    let c = shale_node::testing::LocalCluster::start(3, root.path(), |c| {
        c.auth.enabled = true;
        c.auth.super_users = ["admin".to_string()].into();
    })
    .await
    .expect("nodes start");
    assert!(c.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
    // Set up in-process (the node's own calls need no credentials): a password user alice who may
    // produce to and consume from `sasl`, and the topic.
    let leader = c.running(1).unwrap().cluster().metadata_leader().expect("leader").0;
    let cluster = c.running(leader).unwrap().cluster().clone();
    let credential = shale_client::scram::Credential::generate("alice's secret").unwrap();
    let credential = ScramCredential {
        salt: credential.salt,
        iterations: credential.iterations,
        stored_key: credential.stored_key,
        server_key: credential.server_key,
    };
    cluster.create_password_user("alice", credential).await.expect("create alice");
    for operation in [Operation::Produce, Operation::Consume, Operation::Describe] {
        let rule = AclRule { principal: "alice".into(), operation, resource: ResourcePattern::Topic("sasl".into()) };
        cluster.add_acl(rule).await.expect("allow alice");
    }
    let rule = AclRule {
        principal: "alice".into(),
        operation: Operation::GroupRead,
        resource: ResourcePattern::Group("sasl-readers".into()),
    };
    cluster.add_acl(rule).await.expect("allow alice's group");
    let spec = shale_raft::cluster::TopicSpec {
        name: "sasl".into(),
        partitions: 1,
        replication_factor: 3,
        retention: Default::default(),
        codec: Default::default(),
    };
    cluster.create_topic(spec).await.expect("create the topic");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sasl.py");
    std::fs::write(&script, SASL_SCRIPT).unwrap();
    let script = script.to_str().unwrap();
    let bootstrap = c.kafka_bootstrap();
    let as_user = async |mechanism: &str, user: &str, password: &str| {
        run(&python, &[script, &bootstrap, "sasl", mechanism, user, password], "").await
    };
    let plain = as_user("PLAIN", "alice", "alice's secret").await;
    assert!(plain.contains("delivered 3"), "{plain}");
    let scram = as_user("SCRAM-SHA-256", "alice", "alice's secret").await;
    assert!(scram.contains("delivered 3"), "{scram}");
    // The second run reads both runs' records.
    let read: Vec<&str> = scram.lines().filter(|l| l.starts_with("read ")).collect();
    assert_eq!(read.len(), 6, "{scram}");
    assert!(read.contains(&"read 0 PLAIN-0") && read.contains(&"read 5 SCRAM-SHA-256-2"), "{scram}");

    // A wrong password authenticates nobody; without SASL the caller is anonymous and refused.
    let wrong = as_user("SCRAM-SHA-256", "alice", "guess").await;
    assert!(wrong.contains("delivered 0"), "{wrong}");
    assert!(wrong.contains("AUTHENTICATION"), "an authentication error: {wrong}");
    let anonymous = as_user("none", "", "").await;
    assert!(anonymous.contains("delivered 0") && anonymous.contains("TOPIC_AUTHORIZATION_FAILED"), "{anonymous}");
    c.shutdown().await.unwrap();
}

/// Records stamped 1 s apart, then ListOffsets by timestamp through `offsets_for_times`.
const TIMES_SCRIPT: &str = r#"
import sys
from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, topic = sys.argv[1], sys.argv[2]
base = 1_700_000_000_000
p = Producer({"bootstrap.servers": bootstrap})
for i in range(5):
    p.produce(topic, value=f"t{i}", partition=0, timestamp=base + i * 1000)
    p.flush(20)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "times", "enable.auto.commit": False})
for at in (base - 1, base + 2500, base + 4000, base + 99_000):
    found = c.offsets_for_times([TopicPartition(topic, 0, at)], timeout=20)[0]
    print("at", at - base, found.offset)
c.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_offsets_by_timestamp_finds_the_first_record_at_or_after_it() {
    let python = python();
    let c = TestCluster::start(3).await;
    create_topic(&c, "times", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("times.py");
    std::fs::write(&script, TIMES_SCRIPT).unwrap();
    let out = run(&python, &[script.to_str().unwrap(), &c.kafka_bootstrap(), "times"], "").await;
    let answers: Vec<&str> = out.lines().filter(|l| l.starts_with("at ")).collect();
    // Before every record: the first; between: the next one; exactly on one: that one; after
    // every record: none (-1, the end).
    assert_eq!(answers, vec!["at -1 0", "at 2500 3", "at 4000 4", "at 99000 -1"], "{out}");
    c.shutdown().await;
}
