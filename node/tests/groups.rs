//! Consumer groups that coordinate, on an in-process cluster: server-side assignment, hand-over
//! without two owners, session expiry, fenced commits.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{WAIT, consumer_config, wait_until};
use parking_lot::Mutex;
use shale_client::proto::consumer_groups_client::ConsumerGroupsClient;
use shale_client::{
    ClientError, ErrorCode, GroupConfig, GroupConsumer, GroupEvent, ProducerConfig, ProducerRecord, proto,
};
use shale_node::NodeConfig;
use shale_node::testing::LocalCluster;
use tonic::transport::Channel;

/// Short sessions, so an expiry is quick to see.
fn tune(c: &mut NodeConfig) {
    c.groups.min_session_timeout_ms = 100;
    c.groups.heartbeat_interval_ms = 100;
    c.groups.check_interval_ms = 50;
    c.groups.rebalance_timeout_ms = 1_500;
}

/// [`tune`], with a rebalance timeout that outlasts a metadata leader change: a member giving
/// partitions back commits first, and that commit waits for the new leader (elections take 1-2 s,
/// more on a loaded machine). With 1.5 s the member was removed as stuck mid-hand-over and its
/// partitions read again from the last commit (at least once, but not the clean hand-over tested).
fn tune_for_leader_change(c: &mut NodeConfig) {
    tune(c);
    c.groups.rebalance_timeout_ms = 20_000;
}

struct Groups {
    cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl std::ops::Deref for Groups {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl Groups {
    async fn start() -> Self {
        Self::start_with(tune).await
    }

    async fn start_with(configure: fn(&mut NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("temp dir");
        let cluster = LocalCluster::start(3, root.path(), configure).await.expect("nodes start");
        assert!(cluster.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
        Self { cluster, _root: root }
    }

    fn client(&self) -> shale_client::Client {
        let mut config = shale_client::ClientConfig::new(self.endpoints());
        config.max_attempts = 40;
        shale_client::Client::new(config).expect("client")
    }

    async fn member(&self, group: &str, topic: &str, session_timeout_ms: u32) -> GroupConsumer {
        let config = GroupConfig {
            session_timeout_ms: Some(session_timeout_ms),
            auto_commit_interval_ms: Some(200),
            ..GroupConfig::default()
        };
        self.client().consumer(consumer_config(Some(group))).join_with(group, [topic], config).await.expect("join")
    }

    /// A raw gRPC client of the ConsumerGroups service at node 1 (it forwards to the leader).
    async fn raw(&self) -> ConsumerGroupsClient<Channel> {
        ConsumerGroupsClient::connect(format!("http://{}", self.endpoints()[0])).await.expect("connect")
    }

    async fn describe(&self, group: &str) -> proto::DescribeGroupResponse {
        let req = proto::DescribeGroupRequest { group: group.into() };
        self.raw().await.describe_group(req).await.expect("describe").into_inner()
    }
}

/// Each node's own view of each partition of `topic` (leader, log start, high watermark), for a
/// failure message: a replica that lags shows here, where reading "the cluster" would hide it.
fn replica_views(c: &Groups, topic: &str, partitions: u32) -> String {
    let mut views = Vec::new();
    for id in 1..=3 {
        let Some(node) = c.running(id) else { continue };
        for p in 0..partitions {
            let view = node.cluster().local_partition_state(topic, p);
            views.push(format!("node {id} {topic}/{p}: {view:?}"));
        }
    }
    views.join("; ")
}

async fn produce(client: &shale_client::Client, topic: &str, partitions: u32, per_partition: u32, tag: &str) {
    let producer = client.producer(ProducerConfig::default());
    let mut deliveries = Vec::new();
    for p in 0..partitions {
        for i in 0..per_partition {
            let record = ProducerRecord::new(topic, format!("{tag}-{p}-{i}")).partition(p);
            deliveries.push((p, i, producer.send(record).await.expect("send")));
        }
    }
    producer.flush().await.expect("flush");
    // `flush` waits for every record to be acknowledged *or failed*: each delivery says which.
    for (p, i, delivery) in deliveries {
        if let Err(e) = delivery.await {
            panic!("record {i} of {topic}/{p} was not written: {e:?}");
        }
    }
}

/// What one polling member saw: `(topic, partition, offset)` of each record, and its assignment.
#[derive(Default)]
struct Seen {
    records: Mutex<Vec<(String, u32, u64)>>,
    assignment: Mutex<Vec<(String, u32)>>,
    /// Failed polls (an application polls again after one; the leader-change test expects some).
    errors: Mutex<Vec<String>>,
}

/// Polls `member` until `stop`, recording what it reads (and each failed poll, after which it polls
/// again, as an application would); hands the member back.
fn run(mut member: GroupConsumer, seen: Arc<Seen>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<GroupConsumer> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match member.poll().await {
                Ok(records) => {
                    seen.records.lock().extend(records.into_iter().map(|r| (r.topic, r.partition, r.offset)))
                }
                Err(e) => {
                    seen.errors.lock().push(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            *seen.assignment.lock() = member.assignment();
        }
        member
    })
}

/// Every poll of every member succeeded.
fn no_errors(seen: &[Arc<Seen>]) {
    let errors: Vec<String> = seen.iter().flat_map(|s| s.errors.lock().clone()).collect();
    assert!(errors.is_empty(), "failed polls: {errors:?}");
}

/// Every partition is held (assigned or revoking) by at most one member, per describe.
fn single_owners(d: &proto::DescribeGroupResponse) -> BTreeMap<(String, u32), String> {
    let mut owners = BTreeMap::new();
    for m in &d.members {
        for p in m.assigned.iter().chain(&m.revoking) {
            let before = owners.insert((p.topic.clone(), p.partition), m.member_id.clone());
            assert!(
                before.is_none(),
                "{}/{} owned by {} and {:?} at epoch {}",
                p.topic,
                p.partition,
                m.member_id,
                before,
                d.epoch
            );
        }
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_share_six_partitions_evenly_and_each_record_goes_to_exactly_one_member() {
    let c = Groups::start().await;
    let client = c.client();
    create_topic_rf(&c, "orders", 6).await;
    produce(&client, "orders", 6, 5, "before").await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Seen>> = (0..3).map(|_| Arc::new(Seen::default())).collect();
    let mut tasks = Vec::new();
    for s in &seen {
        // Members join one after another while records are being read: hand-overs happen mid-read.
        let member = c.member("billing", "orders", 5_000).await;
        tasks.push(run(member, s.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_until("three members with two partitions each", || seen.iter().all(|s| s.assignment.lock().len() == 2)).await;
    let d = c.describe("billing").await;
    assert_eq!(d.state, "stable");
    assert_eq!(d.assignor, "uniform");
    assert_eq!(d.members.len(), 3);
    assert_eq!(single_owners(&d).len(), 6);
    produce(&client, "orders", 6, 5, "after").await;
    wait_until("all 60 records read", || seen.iter().map(|s| s.records.lock().len()).sum::<usize>() >= 60).await;
    // A moment more, for any duplicate to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(String, u32, u64)> = seen.iter().flat_map(|s| s.records.lock().clone()).collect();
    assert_eq!(all.len(), 60, "each record exactly once");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60, "no record read twice");
    no_errors(&seen);
    // After the rebalance each member read only its own two partitions.
    for s in &seen {
        let mine: BTreeSet<(String, u32)> = s.assignment.lock().iter().cloned().collect();
        assert_eq!(mine.len(), 2);
    }
    for t in tasks {
        t.await.expect("member task").close().await.expect("leave");
    }
    let d = c.describe("billing").await;
    assert_eq!(d.state, "empty");
    assert!(d.partitions.iter().all(|p| p.lag == 0), "every record committed: {:?}", d.partitions);
    c.cluster.shutdown().await.expect("shutdown");
}

async fn create_topic_rf(c: &Groups, name: &str, partitions: u32) {
    c.client().admin().create_topic(shale_client::NewTopic::new(name, partitions, 3)).await.expect("create topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_without_leaving_loses_its_partitions_after_its_session_and_the_next_resumes_from_its_commit() {
    let c = Groups::start().await;
    let client = c.client();
    create_topic_rf(&c, "events", 4).await;
    let config =
        GroupConfig { session_timeout_ms: Some(1_000), auto_commit_interval_ms: None, ..GroupConfig::default() };
    let mut a =
        client.consumer(consumer_config(Some("g"))).join_with("g", ["events"], config.clone()).await.expect("a joins");
    let mut b = client.consumer(consumer_config(Some("g"))).join_with("g", ["events"], config).await.expect("b joins");
    // Both poll until each holds two partitions.
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.assignment().len() != 2 || b.assignment().len() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "no even split");
        a.poll().await.expect("a polls");
        b.poll().await.expect("b polls");
    }
    let a_parts: BTreeSet<(String, u32)> = a.assignment().into_iter().collect();
    produce(&client, "events", 4, 6, "x").await;
    // a reads everything of its partitions, commits, then reads nothing more (all was read) - so
    // produce more, read it, and die without committing it.
    let mut a_read = Vec::new();
    while a_read.len() < 12 {
        a_read.extend(a.poll().await.expect("a polls"));
    }
    a.commit().await.expect("a commits");
    let committed: BTreeMap<(String, u32), u64> =
        a_parts.iter().map(|(t, p)| ((t.clone(), *p), a.consumer().position(t, *p).unwrap())).collect();
    produce(&client, "events", 4, 3, "y").await;
    let mut after_commit = Vec::new();
    while after_commit.len() < 6 {
        after_commit.extend(a.poll().await.expect("a polls"));
    }
    let epoch_before = c.describe("g").await.epoch;
    drop(a); // killed: no leave, no further heartbeat
    // b takes a's partitions once a's session expired, and reads them from a's last commit.
    let mut b_read = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.assignment().len() != 4 {
        assert!(tokio::time::Instant::now() < deadline, "b never got a's partitions");
        b_read.extend(b.poll().await.expect("b polls"));
    }
    let events = b.take_events();
    assert!(events.iter().any(|e| matches!(e, GroupEvent::Assigned(p) if p.len() == 2)), "{events:?}");
    while b_read
        .iter()
        .filter(|r: &&shale_client::ConsumedRecord| a_parts.contains(&(r.topic.clone(), r.partition)))
        .count()
        < 6
    {
        assert!(tokio::time::Instant::now() < deadline, "b never read a's uncommitted records");
        b_read.extend(b.poll().await.expect("b polls"));
    }
    for (key, from) in &committed {
        let first = b_read.iter().filter(|r| (r.topic.clone(), r.partition) == *key).map(|r| r.offset).min();
        assert_eq!(first, Some(*from), "{key:?} resumes exactly at a's commit (nothing skipped)");
    }
    let d = c.describe("g").await;
    assert!(d.epoch > epoch_before);
    assert_eq!(d.members.len(), 1);
    b.close().await.expect("b leaves");
    c.cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombies_commit_after_its_partitions_moved_is_refused_and_commits_are_atomic() {
    let c = Groups::start().await;
    create_topic_rf(&c, "t", 2).await;
    let mut raw = c.raw().await;
    let sub = proto::GroupSubscription { kind: Some(proto::group_subscription::Kind::Topic("t".into())) };
    let join = |_: ()| proto::JoinGroupRequest {
        group: "z".into(),
        member_id: String::new(),
        subscriptions: vec![sub.clone()],
        session_timeout_ms: 3_000,
        assignor: String::new(),
        client_addr: String::new(),
    };
    let a = raw.join_group(join(())).await.expect("a joins").into_inner();
    assert_eq!(a.assigned.len(), 2);
    assert!(!a.member_id.is_empty());
    let commit = |member: &proto::GroupAssignment, partitions: &[u32], offset: u64| proto::CommitOffsetsRequest {
        group: "z".into(),
        offsets: partitions
            .iter()
            .map(|p| proto::PartitionOffset { topic: "t".into(), partition: *p, offset })
            .collect(),
        member_id: member.member_id.clone(),
        member_epoch: member.member_epoch,
    };
    raw.commit_offsets(commit(&a, &[0, 1], 3)).await.expect("a owns both");
    // b joins: a must give one partition up; b gets it only after a says so.
    let b = raw.join_group(join(())).await.expect("b joins").into_inner();
    assert!(b.assigned.is_empty(), "nothing is given while a still holds it");
    let hb = |m: &proto::GroupAssignment, owned: &[proto::TopicPartition]| proto::GroupHeartbeatRequest {
        group: "z".into(),
        member_id: m.member_id.clone(),
        member_epoch: m.member_epoch,
        owned: owned.to_vec(),
    };
    let a2 = raw.heartbeat(hb(&a, &a.assigned)).await.expect("a heartbeats").into_inner();
    assert_eq!(a2.revoking.len(), 1);
    let moved = a2.revoking[0].partition;
    // Commit before giving up is allowed; then a hands it back.
    raw.commit_offsets(commit(&a2, &[moved], 5)).await.expect("a commits what it gives up");
    let a3 = raw.heartbeat(hb(&a2, &a2.assigned)).await.expect("a hands back").into_inner();
    assert!(a3.revoking.is_empty() && a3.assigned.len() == 1);
    let b2 = raw.heartbeat(hb(&b, &[])).await.expect("b heartbeats").into_inner();
    assert_eq!(b2.assigned.iter().map(|p| p.partition).collect::<Vec<_>>(), vec![moved]);
    // The zombie a commits the moved partition (with the other one): refused whole.
    let kept = a3.assigned[0].partition;
    let err = ClientError::from_status(raw.commit_offsets(commit(&a3, &[kept, moved], 9)).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::FencedMember), "{err}");
    let offsets = raw
        .fetch_offsets(proto::FetchOffsetsRequest { group: "z".into(), partitions: vec![] })
        .await
        .expect("fetch")
        .into_inner()
        .offsets;
    assert!(offsets.iter().all(|o| o.offset != 9), "nothing of a refused commit is written: {offsets:?}");
    // An admin reset (unfenced) and a delete are refused while the group has members.
    let reset =
        proto::CommitOffsetsRequest { group: "z".into(), offsets: commit(&a3, &[0], 0).offsets, ..Default::default() };
    let err = ClientError::from_status(raw.commit_offsets(reset.clone()).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::GroupNotEmpty));
    let err =
        ClientError::from_status(raw.delete_group(proto::DeleteGroupRequest { group: "z".into() }).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::GroupNotEmpty));
    // Nobody heartbeats: both sessions expire; a's commit is refused as an unknown member.
    wait_until_async("both sessions expire", || async { c.describe("z").await.members.is_empty() }).await;
    let err = ClientError::from_status(raw.commit_offsets(commit(&a3, &[kept], 10)).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::UnknownMemberId), "{err}");
    let err = ClientError::from_status(raw.heartbeat(hb(&a3, &[])).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::UnknownMemberId));
    // Empty now: the reset and the delete go through; the offsets were kept until then.
    let d = c.describe("z").await;
    assert_eq!(d.state, "empty");
    assert_eq!(d.partitions.len(), 2);
    raw.commit_offsets(reset).await.expect("reset an empty group");
    raw.delete_group(proto::DeleteGroupRequest { group: "z".into() }).await.expect("delete");
    let err =
        ClientError::from_status(raw.delete_group(proto::DeleteGroupRequest { group: "z".into() }).await.unwrap_err());
    assert_eq!(err.code(), Some(ErrorCode::UnknownGroup));
    c.cluster.shutdown().await.expect("shutdown");
}

async fn wait_until_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_members_never_gives_a_partition_two_owners() {
    let c = Groups::start().await;
    create_topic_rf(&c, "many", 8).await;
    produce(&c.client(), "many", 8, 20, "r").await;
    let stop = Arc::new(AtomicBool::new(false));
    // An observer checks ownership at every epoch it sees.
    let observer = {
        let stop = stop.clone();
        let mut raw = c.raw().await;
        tokio::spawn(async move {
            let mut epochs = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(d) = raw.describe_group(proto::DescribeGroupRequest { group: "obs".into() }).await {
                    let d = d.into_inner();
                    single_owners(&d);
                    epochs.insert(d.epoch);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            epochs
        })
    };
    let mut tasks = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let s = Arc::new(Seen::default());
        tasks.push(run(c.member("obs", "many", 5_000).await, s.clone(), stop.clone()));
        seen.push(s);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_until("four members with two partitions each", || seen.iter().all(|s| s.assignment.lock().len() == 2)).await;
    wait_until("all 160 records read", || seen.iter().map(|s| s.records.lock().len()).sum::<usize>() >= 160).await;
    stop.store(true, Ordering::Relaxed);
    let epochs = observer.await.expect("observer");
    assert!(epochs.len() >= 4, "the observer saw the rebalances: {epochs:?}");
    let mut all: Vec<(String, u32, u64)> = seen.iter().flat_map(|s| s.records.lock().clone()).collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, all.len(), "no record was read by two owners");
    no_errors(&seen);
    for t in tasks {
        t.await.expect("member").close().await.expect("leave");
    }
    c.cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metadata_leader_change_during_a_rebalance_loses_no_member_and_no_commit() {
    let mut c = Groups::start_with(tune_for_leader_change).await;
    create_topic_rf(&c, "ha", 6).await;
    produce(&c.client(), "ha", 6, 10, "one").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut seen = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let s = Arc::new(Seen::default());
        tasks.push(run(c.member("ha-readers", "ha", 5_000).await, s.clone(), stop.clone()));
        seen.push(s);
    }
    let read = |seen: &[Arc<Seen>]| seen.iter().map(|s| s.records.lock().len()).sum::<usize>();
    wait_until("two members with three partitions each", || seen.iter().all(|s| s.assignment.lock().len() == 3)).await;
    wait_until("the first 60 records read", || read(&seen) >= 60).await;
    wait_until_async("every partition committed at 10", || async {
        let d = c.describe("ha-readers").await;
        d.partitions.len() == 6 && d.partitions.iter().all(|p| p.committed_offset == 10)
    })
    .await;
    // A third member joins while the metadata leader (the coordinator) goes down.
    let leader = c.running(1).or_else(|| c.running(2)).unwrap().cluster().metadata_leader().unwrap().0;
    let joining = {
        let client = c.client();
        let config = GroupConfig {
            session_timeout_ms: Some(5_000),
            auto_commit_interval_ms: Some(200),
            ..GroupConfig::default()
        };
        tokio::spawn(async move {
            client.consumer(consumer_config(Some("ha-readers"))).join_with("ha-readers", ["ha"], config).await
        })
    };
    c.cluster.stop(leader).await.expect("the metadata leader stops");
    let s = Arc::new(Seen::default());
    tasks.push(run(joining.await.expect("join task").expect("the third member joins"), s.clone(), stop.clone()));
    seen.push(s);
    let alive = (1..=3).find(|id| *id != leader).unwrap();
    let client = {
        let mut config = shale_client::ClientConfig::new([c.endpoints()[alive as usize - 1].clone()]);
        config.max_attempts = 40;
        shale_client::Client::new(config).expect("client")
    };
    produce(&client, "ha", 6, 10, "two").await;
    wait_until("three members with two partitions each", || seen.iter().all(|s| s.assignment.lock().len() == 2)).await;
    wait_until("all 120 records read", || read(&seen) >= 120).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<(String, u32, u64)> = seen.iter().flat_map(|s| s.records.lock().clone()).collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), 120, "every record read");
    assert_eq!(n, 120, "none read twice: the hand-overs stayed clean across the leader change");
    let errors: Vec<String> = seen.iter().flat_map(|s| s.errors.lock().clone()).collect();
    eprintln!("polls that failed during the leader change (polled again): {errors:?}");
    let mut raw =
        ConsumerGroupsClient::connect(format!("http://{}", c.endpoints()[alive as usize - 1])).await.expect("connect");
    let d = raw
        .describe_group(proto::DescribeGroupRequest { group: "ha-readers".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(d.members.len(), 3, "no member was lost to the leader change");
    single_owners(&d);
    for t in tasks {
        t.await.expect("member").close().await.expect("leave");
    }
    let d = raw
        .describe_group(proto::DescribeGroupRequest { group: "ha-readers".into() })
        .await
        .expect("describe")
        .into_inner();
    assert!(d.partitions.iter().all(|p| p.committed_offset == 20), "{:?}", d.partitions);
    c.cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_heartbeats_but_never_gives_back_is_removed_after_the_rebalance_timeout() {
    let c = Groups::start().await;
    create_topic_rf(&c, "stuck", 2).await;
    let mut raw = c.raw().await;
    let join = || proto::JoinGroupRequest {
        group: "s".into(),
        subscriptions: vec![proto::GroupSubscription {
            kind: Some(proto::group_subscription::Kind::Prefix("stu".into())),
        }],
        session_timeout_ms: 3_000,
        ..Default::default()
    };
    let a = raw.join_group(join()).await.expect("a joins").into_inner();
    assert_eq!(a.assigned.len(), 2, "a prefix subscription covers the topic");
    let b = raw.join_group(join()).await.expect("b joins").into_inner();
    let hb = |m: &proto::GroupAssignment, owned: Vec<proto::TopicPartition>| proto::GroupHeartbeatRequest {
        group: "s".into(),
        member_id: m.member_id.clone(),
        member_epoch: m.member_epoch,
        owned,
    };
    // a heartbeats (its session stays alive) but keeps everything; b waits.
    let deadline = tokio::time::Instant::now() + WAIT;
    let removed = loop {
        assert!(tokio::time::Instant::now() < deadline, "a was never removed");
        match raw.heartbeat(hb(&a, a.assigned.clone())).await {
            Ok(_) => {}
            Err(status) => break ClientError::from_status(status),
        }
        raw.heartbeat(hb(&b, vec![])).await.expect("b heartbeats");
        // b gets nothing while a holds it.
        single_owners(&c.describe("s").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(removed.code(), Some(ErrorCode::UnknownMemberId), "{removed}");
    let b_now = raw.heartbeat(hb(&b, vec![])).await.expect("b heartbeats").into_inner();
    assert_eq!(b_now.assigned.len(), 2, "a's partitions went to b");
    c.cluster.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_without_members_keeps_its_offsets_until_the_retention_then_goes() {
    fn short_retention(c: &mut NodeConfig) {
        tune(c);
        c.groups.offsets_retention_ms = 3_000;
    }
    let c = Groups::start_with(short_retention).await;
    create_topic_rf(&c, "r", 1).await;
    let mut raw = c.raw().await;
    let list = |mut raw: ConsumerGroupsClient<Channel>| async move {
        raw.list_groups(proto::ListGroupsRequest {}).await.expect("list").into_inner().groups
    };
    let mut member = c.member("kept", "r", 5_000).await;
    produce(&c.client(), "r", 1, 3, "v").await;
    let mut read = 0;
    while read < 3 {
        read += member.poll().await.expect("poll").len();
    }
    member.close().await.expect("commit and leave");
    // Just left: the offsets are there (the group is empty, not gone).
    let d = c.describe("kept").await;
    assert_eq!((d.state.as_str(), d.partitions.len()), ("empty", 1));
    assert_eq!(d.partitions[0].committed_offset, 3);
    assert_eq!(list(raw.clone()).await, vec!["kept".to_string()]);
    wait_until_async("the retention removes the group", || {
        let raw = raw.clone();
        async move { list(raw).await.is_empty() }
    })
    .await;
    let offsets = raw
        .fetch_offsets(proto::FetchOffsetsRequest { group: "kept".into(), partitions: vec![] })
        .await
        .expect("fetch")
        .into_inner()
        .offsets;
    assert!(offsets.is_empty(), "{offsets:?}");
    c.cluster.shutdown().await.expect("shutdown");
}

/// ListOffsets by timestamp: every replica answers from its own log with the first record (in
/// offset order) whose timestamp is at or after the time, over many batches (past several sparse
/// index points), with producer timestamps out of order; earliest and latest are the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_finds_the_first_offset_at_or_after_a_time() {
    use shale_client::proto::fetch_client::FetchClient;
    use shale_client::proto::list_offsets_request::Spec;

    let c = Groups::start().await;
    create_topic_rf(&c, "timed", 1).await;
    let client = c.client();
    let producer = client.producer(ProducerConfig::default());
    // 120 batches of 3 records; record i has timestamp 1000 + 10 i, except every 50th, stamped
    // late (1000 + 10 i + 2500), so a time can be reached first by a record far before the ones
    // around it.
    let stamp = |i: u64| if i % 50 == 49 { 3_500 + 10 * i } else { 1_000 + 10 * i };
    let mut stamps = Vec::new();
    for batch in 0..120u64 {
        for i in batch * 3..batch * 3 + 3 {
            let record = ProducerRecord::new("timed", format!("r{i}")).partition(0).timestamp_ms(stamp(i));
            producer.send(record).await.expect("send");
            stamps.push(stamp(i));
        }
        producer.flush().await.expect("flush");
    }
    let expected = |t: u64| stamps.iter().position(|s| *s >= t).map(|o| o as u64);
    let mut times = vec![0, 999, 1_000, 1_001, 1_005, 1_500, 3_000, 3_985, 3_986, 4_000, 4_590, 4_591];
    times.extend([5_000, 6_000, 7_480, 7_490, 7_491, 8_000, u64::MAX]);
    for id in 1..=3 {
        let cluster = c.running(id).expect("running").cluster().clone();
        wait_until_async("every replica applied every record", || {
            let cluster = cluster.clone();
            async move { cluster.local_bounds("timed", 0).await.ok() == Some((0, 360)) }
        })
        .await;
    }
    for node in c.endpoints() {
        let mut raw = FetchClient::connect(format!("http://{node}")).await.expect("connect");
        let mut ask = async |spec| {
            let mut req = tonic::Request::new(proto::ListOffsetsRequest {
                topic: "timed".into(),
                partition: 0,
                spec: Some(spec),
            });
            // Answered by this replica itself.
            req.metadata_mut().insert(shale_client::meta::FORWARDED, "test".parse().unwrap());
            raw.list_offsets(req).await.expect("list offsets").into_inner()
        };
        for t in &times {
            let got = ask(Spec::TimestampMs(*t)).await;
            assert_eq!(got.offset, expected(*t), "time {t} on {node}");
            assert_eq!((got.log_start, got.log_end), (0, 360));
        }
        assert_eq!(ask(Spec::Earliest(true)).await.offset, Some(0));
        assert_eq!(ask(Spec::Latest(true)).await.offset, Some(360));
    }
    // The client's call, routed to any replica.
    let consumer = client.consumer(consumer_config(None));
    assert_eq!(consumer.offset_for_time("timed", 0, 4_000).await.expect("offset for time"), expected(4_000));
    c.cluster.shutdown().await.expect("shutdown");
}

/// The value of the first `/metrics` line of `node` starting with `series`, once there is one.
async fn metric(c: &Groups, node: usize, series: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = common::http_get(c.http[node], "/metrics").await;
        if let Some(line) = body.lines().find(|l| l.starts_with(series)) {
            return line.rsplit(' ').next().unwrap().parse().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {series} at node {}:\n{body}", node + 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every node, not only the metadata leader, exports each group's members, its rebalances (epoch
/// bumps) and the lag of the partitions it replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_exports_group_members_rebalances_and_lag() {
    let c = Groups::start().await;
    create_topic_rf(&c, "watched", 2).await;
    let mut a = c.member("observed", "watched", 5_000).await;
    produce(&c.client(), "watched", 2, 4, "w").await;
    let mut read = 0;
    while read < 3 {
        read += a.poll().await.expect("poll").len();
    }
    a.commit().await.expect("commit");
    // Written after the commit: lag of at least 6 over the two partitions, at most all 14 records.
    produce(&c.client(), "watched", 2, 3, "x").await;
    let members = "shale_consumer_group_members{group=\"observed\"}";
    let rebalances = "shale_consumer_group_rebalances_total{group=\"observed\"}";
    let lag = |p: u32| format!("shale_consumer_group_lag{{group=\"observed\",topic=\"watched\",partition=\"{p}\"}}");
    let mut before = Vec::new();
    for node in 0..3 {
        assert_eq!(metric(&c, node, members).await, 1, "node {}", node + 1);
        before.push(metric(&c, node, rebalances).await);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let total = metric(&c, node, &lag(0)).await + metric(&c, node, &lag(1)).await;
            assert!(total <= 14, "node {}: lag {total} of 14 records", node + 1);
            if total >= 6 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "node {}: lag {total} stays below 6", node + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let b = c.member("observed", "watched", 5_000).await;
    for (node, before) in before.into_iter().enumerate() {
        let deadline = tokio::time::Instant::now() + WAIT;
        while metric(&c, node, members).await != 2 {
            assert!(tokio::time::Instant::now() < deadline, "node {} never counts the second member", node + 1);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(metric(&c, node, rebalances).await > before, "a join bumps the epoch (node {})", node + 1);
    }
    drop((a, b));
    c.cluster.shutdown().await.expect("shutdown");
}

/// A JoinGroup retried after its answer was lost (the client names its member id, as shale-client
/// does) joins the same member again: no second member holds partitions until its session expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_join_under_the_same_member_id_adds_no_second_member() {
    let c = Groups::start().await;
    create_topic_rf(&c, "retried", 2).await;
    let join = proto::JoinGroupRequest {
        group: "once".into(),
        member_id: "m-0123456789abcdef".into(),
        subscriptions: vec![proto::GroupSubscription {
            kind: Some(proto::group_subscription::Kind::Topic("retried".into())),
        }],
        session_timeout_ms: 5_000,
        assignor: String::new(),
        client_addr: String::new(),
    };
    let first = c.raw().await.join_group(join.clone()).await.expect("join").into_inner();
    let again = c.raw().await.join_group(join).await.expect("join again").into_inner();
    assert_eq!((first.member_id.as_str(), again.member_id.as_str()), ("m-0123456789abcdef", "m-0123456789abcdef"));
    let d = c.describe("once").await;
    assert_eq!(d.members.len(), 1, "{d:?}");
    assert_eq!(d.members[0].assigned.len() + d.members[0].revoking.len(), 2, "the one member holds both partitions");
    // The client names a fresh id of its own on every join.
    let member = c.member("once-more", "retried", 5_000).await;
    assert!(member.member_id().starts_with("m-"), "{}", member.member_id());
    c.cluster.shutdown().await.expect("shutdown");
}

/// Measures ListOffsets by timestamp as a partition grows (ignored: a measurement, not a check; run
/// with `--run-ignored only`): the mean latency of lookups at spread times, answered by one replica,
/// at 300, 3,000 and 10,000 batches. A lookup reads at most 32 batch headers past an index point, so it
/// should not grow with the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement"]
async fn measure_offset_for_time_as_the_partition_grows() {
    use shale_client::proto::fetch_client::FetchClient;
    use shale_client::proto::list_offsets_request::Spec;

    let c = Groups::start().await;
    create_topic_rf(&c, "sized", 1).await;
    let producer = c.client().producer(ProducerConfig::default());
    let node = c.endpoints()[0].clone();
    let mut raw = FetchClient::connect(format!("http://{node}")).await.expect("connect");
    let mut written = 0u64;
    for target in [300u64, 3_000, 10_000] {
        while written < target {
            for i in 0..4u64 {
                let ts = 1_000_000 + (written * 4 + i) * 10;
                producer.send(ProducerRecord::new("sized", "v").partition(0).timestamp_ms(ts)).await.expect("send");
            }
            producer.flush().await.expect("flush");
            written += 1;
        }
        let lookups = 200u64;
        let started = std::time::Instant::now();
        for k in 0..lookups {
            let ts = 1_000_000 + (k * 7_919 % (written * 4)) * 10;
            let mut req = tonic::Request::new(proto::ListOffsetsRequest {
                topic: "sized".into(),
                partition: 0,
                spec: Some(Spec::TimestampMs(ts)),
            });
            req.metadata_mut().insert(shale_client::meta::FORWARDED, "test".parse().unwrap());
            let got = raw.list_offsets(req).await.expect("list offsets").into_inner();
            assert_eq!(got.offset, Some((ts - 1_000_000) / 10));
        }
        let mean = started.elapsed() / lookups as u32;
        eprintln!("offset for time: {written} batches ({} records): mean {mean:?} per lookup", written * 4);
    }
    c.cluster.shutdown().await.expect("shutdown");
}

/// A prefix subscription picks up a topic created after the member joined, without a restart:
/// the member is assigned its partitions and reads what is written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_created_later_that_matches_a_prefix_is_assigned_to_the_running_member() {
    let c = Groups::start().await;
    create_topic_rf(&c, "feed-a", 1).await;
    let mut member = c.member("feeds", "feed-*", 5_000).await;
    create_topic_rf(&c, "feed-b", 2).await;
    produce(&c.client(), "feed-b", 2, 2, "late").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut read: BTreeSet<(String, u32, u64)> = BTreeSet::new();
    while read.iter().filter(|(t, _, _)| t == "feed-b").count() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read from feed-b: {read:?}; held {:?}; positions {:?}; replicas {}",
            member.assignment(),
            [0, 1].map(|p| member.consumer().position("feed-b", p)),
            replica_views(&c, "feed-b", 2),
        );
        read.extend(member.poll().await.expect("poll").into_iter().map(|r| (r.topic, r.partition, r.offset)));
    }
    let mut held = member.assignment();
    held.sort();
    assert_eq!(held, [("feed-a".to_string(), 0), ("feed-b".to_string(), 0), ("feed-b".to_string(), 1)]);
    c.cluster.shutdown().await.expect("shutdown");
}
