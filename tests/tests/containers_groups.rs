//! `shale consume --group` in two containers of their own keeps consuming while the metadata
//! leader (the group coordinator) is killed with SIGKILL and restarted: every acknowledged record
//! is consumed by exactly one member, at least once, and none is skipped (each partition's
//! consumed offsets cover its whole log).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use shale_tests::cluster::READY_TIMEOUT;
use shale_tests::scenario::{ELECTION_TIMEOUT, PROGRESS_TIMEOUT, Setup};

const TOPIC: &str = "grouped";
const PARTITIONS: u32 = 4;
const GROUP: &str = "printers";
/// Bound on the members catching up with the log once the workload stopped.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// The fields of a `shale consume -o json` line the checks need.
#[derive(Debug, Deserialize)]
struct Line {
    partition: u32,
    offset: u64,
    value: Option<String>,
}

/// One record as the members printed it: which members did, and its value.
type Printed<'a> = (BTreeSet<&'a str>, Option<String>);

/// Waits until `what` holds for the group's description (answered by any node).
async fn wait_group(
    setup: &Setup,
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut(&shale_client::proto::DescribeGroupResponse) -> bool,
) -> shale_client::proto::DescribeGroupResponse {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match setup.client.admin().describe_group(GROUP).await {
            Ok(d) if ok(&d) => return d,
            Ok(d) => assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {d:?}"),
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_group_members_in_containers_keep_consuming_while_the_coordinator_is_killed() {
    let setup = Setup::start(TOPIC, PARTITIONS).await.unwrap();
    let cluster = &setup.cluster;
    let ids = cluster.ids();
    let consume = ["consume", TOPIC, "--group", GROUP, "--from-beginning", "--follow", "-o", "json"];
    let a = cluster.run_cli("member-a", &consume).await.unwrap();
    let b = cluster.run_cli("member-b", &consume).await.unwrap();
    wait_group(&setup, "two members sharing the partitions", READY_TIMEOUT, |d| {
        d.state == "stable" && d.members.len() == 2 && d.members.iter().all(|m| m.assigned.len() == 2)
    })
    .await;

    let workload = setup.start_workload("groups").unwrap();
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();
    // The coordinator dies without warning; the members keep heartbeating (to the next metadata
    // leader) and reading, and the producers keep writing.
    let coordinator = cluster.wait_metadata_leader(&ids, ELECTION_TIMEOUT).await.unwrap();
    cluster.kill(coordinator).await.unwrap();
    let survivors: Vec<u64> = ids.iter().copied().filter(|id| *id != coordinator).collect();
    cluster.wait_metadata_leader(&survivors, ELECTION_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(300, PROGRESS_TIMEOUT).await.unwrap();
    // While the node is down, the members consume and commit what was written since it died.
    let written = setup.log_ends(&survivors).await.unwrap();
    wait_group(&setup, "commits past what was written while the coordinator is down", CATCH_UP_TIMEOUT, |d| {
        d.members.len() == 2
            && written
                .iter()
                .all(|(p, end)| d.partitions.iter().any(|c| c.partition == *p && c.committed_offset >= *end))
    })
    .await;
    cluster.start_node(coordinator).await.unwrap();
    cluster.wait_ready(coordinator, READY_TIMEOUT).await.unwrap();
    workload.wait_for_more_acks(200, PROGRESS_TIMEOUT).await.unwrap();
    let history = workload.stop().await;

    // The members commit what they printed every few seconds: wait until no lag is left, then
    // stop them as Ctrl-C does (they commit and leave).
    let ends = setup.log_ends(&ids).await.unwrap();
    wait_group(&setup, "the members to commit the whole log", CATCH_UP_TIMEOUT, |d| {
        d.members.len() == 2
            && d.partitions.len() == PARTITIONS as usize
            && d.partitions.iter().all(|p| ends.get(&p.partition).is_some_and(|end| p.committed_offset >= *end))
    })
    .await;
    for c in [&a, &b] {
        shale_tests::docker::docker(&["kill", "--signal", "INT", c]).await.unwrap();
    }
    wait_group(&setup, "both members to leave", Duration::from_secs(30), |d| d.members.is_empty()).await;

    let mut seen: BTreeMap<u32, BTreeMap<u64, Printed>> = BTreeMap::new();
    let outputs = [("a", cluster.cli_output(&a).await.unwrap()), ("b", cluster.cli_output(&b).await.unwrap())];
    for (member, (stdout, stderr)) in &outputs {
        let mut lines = 0;
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            let r: Line = serde_json::from_str(line).unwrap_or_else(|e| panic!("member {member}: {e}: {line}"));
            let entry = seen.entry(r.partition).or_default().entry(r.offset).or_insert_with(|| (BTreeSet::new(), None));
            entry.0.insert(member);
            if let (Some(before), Some(now)) = (&entry.1, &r.value) {
                assert_eq!(before, now, "{}/{} read twice with different values", r.partition, r.offset);
            }
            entry.1 = entry.1.take().or(r.value);
            lines += 1;
        }
        eprintln!("member {member} printed {lines} records; stderr:\n{stderr}");
        assert!(lines > 0, "member {member} consumed nothing");
    }
    // None skipped: each partition's consumed offsets are exactly its log.
    for p in 0..PARTITIONS {
        let offsets: Vec<u64> = seen.get(&p).map(|m| m.keys().copied().collect()).unwrap_or_default();
        let end = ends[&p];
        assert_eq!(offsets, (0..end).collect::<Vec<_>>(), "partition {p}: consumed offsets vs the log [0, {end})");
    }
    // Each record went to exactly one member (the members held their partitions throughout: a
    // coordinator failover costs no member its session).
    let shared: Vec<(u32, u64, &BTreeSet<&str>)> = seen
        .iter()
        .flat_map(|(p, m)| m.iter().filter(|(_, (who, _))| who.len() > 1).map(move |(o, (who, _))| (*p, *o, who)))
        .collect();
    assert!(shared.is_empty(), "records read by both members: {:?}", &shared[..shared.len().min(20)]);
    // Every acknowledged record was consumed, at its acknowledged offset, with its value.
    for ack in &history.acks {
        let value = String::from_utf8_lossy(&ack.value).into_owned();
        let got = seen.get(&ack.partition).and_then(|m| m.get(&ack.offset));
        assert_eq!(
            got.and_then(|(_, v)| v.as_deref()),
            Some(value.as_str()),
            "acknowledged {}/{} ({value}) not consumed as written",
            ack.partition,
            ack.offset
        );
    }
    eprintln!(
        "groups: {} acknowledged records, {} partitions consumed by two members through a coordinator kill",
        history.acks.len(),
        PARTITIONS
    );
}
