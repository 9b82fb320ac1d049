//! Three in-process nodes (real tonic on 127.0.0.1, disk storage in temp dirs) running one group.

mod core_support;

use bytes::Bytes;
use std::sync::atomic::Ordering::Relaxed;

use core_support::{TestCluster, WAIT, group_config, payload, storage_options};
use shale_raft::{NetworkConfig, RaftError, Retention};

/// Reads every applied entry of `node`'s group from `from`, in pages.
async fn read_all(c: &TestCluster, id: u64, from: u64) -> Vec<(u64, Option<Bytes>)> {
    let g = c.nodes.iter().find(|n| n.id == id).unwrap().group().clone();
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let page = g.read_committed(at, 64 << 10).await.expect("read_committed");
        if page.is_empty() {
            return out;
        }
        for e in page {
            assert_eq!(e.index, at, "read pages are contiguous");
            assert_eq!(e.chain_hash, g.chain_hash_at(e.index).unwrap());
            out.push((e.index, e.payload()));
            at += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicates_and_reads_back_on_every_node() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);

    let mut written = Vec::new();
    for i in 0..20u64 {
        let r = g.write(payload(i, 100)).await.expect("write");
        assert_eq!(r.response, Bytes::copy_from_slice(&r.index.to_le_bytes()), "the app's response comes back");
        written.push((r.index, payload(i, 100)));
    }
    let batch: Vec<Bytes> = (20..120u64).map(|i| payload(i, 1024)).collect();
    let results = g.write_many(batch.clone()).await.expect("write_many");
    assert_eq!(results.len(), batch.len());
    for (r, p) in results.into_iter().zip(batch) {
        let r = r.expect("batched write");
        written.push((r.index, p));
    }
    for w in written.windows(2) {
        assert!(w[0].0 < w[1].0, "indexes increase in write order");
    }
    let last = written.last().unwrap().0;
    c.wait_applied_everywhere(last).await;

    for n in [1, 2, 3] {
        let entries = read_all(&c, n, 0).await;
        let app: Vec<(u64, Bytes)> = entries.iter().filter_map(|(i, p)| p.clone().map(|p| (*i, p))).collect();
        assert_eq!(app, written, "node {n} holds exactly the acknowledged payloads, in order");
        assert_eq!(*c.node(n).applied.lock(), written, "node {n}'s app applied every payload once");
    }
    // Non-leaders refuse writes with a redirect to the leader.
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    match c.node(follower).group().write(payload(0, 8)).await {
        Err(RaftError::NotLeader { leader: Some((id, addr)), .. }) => {
            assert_eq!(id, leader);
            assert_eq!(addr, c.node(leader).addr.to_string());
        }
        other => panic!("expected NotLeader with the leader, got {other:?}"),
    }
    assert!(c.assert_chains_agree().await >= 3 * (last + 1));
    let read_index = g.ensure_linearizable().await.expect("read index on the leader");
    assert!(read_index >= last);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_keeps_every_acknowledged_entry() {
    let mut c = TestCluster::start(3, group_config()).await;
    let old = c.wait_leader(&[]).await;
    let mut acked = Vec::new();
    for i in 0..50u64 {
        acked.push(c.leader_group(old).write(payload(i, 256)).await.expect("write").index);
    }
    c.node(old).stop().await;

    let new = c.wait_leader(&[old]).await;
    assert_ne!(new, old);
    for i in 50..80u64 {
        acked.push(c.leader_group(new).write(payload(i, 256)).await.expect("write after failover").index);
    }
    let last = *acked.last().unwrap();
    c.wait_applied_everywhere(last).await;
    for n in c.running().map(|n| n.id).collect::<Vec<_>>() {
        let held: Vec<u64> = c.node(n).applied.lock().iter().map(|(i, _)| *i).collect();
        for i in &acked {
            assert!(held.contains(i), "node {n} lost acknowledged index {i}");
        }
        let payloads: Vec<u64> =
            c.node(n).applied.lock().iter().map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap())).collect();
        assert_eq!(payloads, (0..80).collect::<Vec<u64>>(), "node {n} applied every payload exactly once, in order");
    }

    // The old leader comes back as a follower and converges.
    c.node(old).restart(group_config()).await;
    c.node(old).group().wait_applied(last, WAIT).await.expect("old leader catches up");
    assert!(c.assert_chains_agree().await > 0);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_follower_catches_up_from_its_data_dir() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    for i in 0..30u64 {
        g.write(payload(i, 512)).await.expect("write");
    }
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    let before = c.node(follower).group().wait_applied(g.applied_index().unwrap(), WAIT).await.unwrap();
    c.node(follower).stop().await;
    let mut last = 0;
    for i in 30..90u64 {
        last = g.write(payload(i, 512)).await.expect("write with a follower down").index;
    }
    c.node(follower).restart(group_config()).await;
    // Its own log (kept on disk) is re-applied on start; the rest comes from the leader.
    c.node(follower).group().wait_applied(before, WAIT).await.unwrap();
    c.node(follower).group().wait_applied(last, WAIT).await.expect("restarted follower catches up");
    assert_eq!(c.node(follower).group().log_start().unwrap(), 0, "caught up by log, not snapshot");
    let compared = c.assert_chains_agree().await;
    assert!(compared >= 3 * (last + 1), "compared {compared}");
    c.stop_all().await;
}

/// Stops a follower, writes more than three snapshot intervals' worth of entries across many
/// segments while it is down (snapshots taken by the policy on the running nodes), restarts it and
/// waits until it has applied everything. Returns (leader, lagging follower, last index).
async fn lag_one_follower_past_snapshots(c: &mut TestCluster, before: u64, during: u64) -> (u64, u64, u64) {
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let lagger = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    for i in 0..before {
        g.write(payload(i, 1024)).await.expect("write");
    }
    c.wait_applied_everywhere(g.applied_index().unwrap()).await;
    c.node(lagger).stop().await;
    let mut last = 0;
    for i in before..before + during {
        last = g.write(payload(i, 1024)).await.expect("write with a follower down").index;
    }
    g.wait_metrics("snapshots taken while the follower was down", WAIT, |m| {
        m.snapshot.is_some_and(|s| s.index > before + 3 * SNAPSHOT_EVERY)
    })
    .await
    .expect("the policy snapshotted the leader more than three times");
    (leader, lagger, last)
}

const SNAPSHOT_EVERY: u64 = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_several_snapshots_of_a_keep_all_log_catches_up_with_every_entry() {
    let mut config = group_config();
    config.retention = Retention::KeepAll;
    config.snapshot_every_entries = SNAPSHOT_EVERY;
    let mut c = TestCluster::start_with(3, config.clone(), core_support::storage_options()).await;
    let (leader, lagger, last) = lag_one_follower_past_snapshots(&mut c, 10, 8 * SNAPSHOT_EVERY).await;
    let g = c.leader_group(leader);
    // The retention loop runs on a keep-all log too: it must not purge anything.
    assert_eq!(g.enforce_retention(WAIT).await.unwrap(), 0);
    assert_eq!(g.metrics().purged, None, "snapshots never purge a keep-all log");

    c.node(lagger).restart(config).await;
    let lg = c.node(lagger).group().clone();
    lg.wait_applied(last, WAIT).await.expect("lagging follower catches up");
    // Read from the lagging replica alone: every entry from 0, each payload once, in order.
    assert_eq!(lg.log_start().unwrap(), 0, "the follower kept its history: caught up by entries, not a snapshot");
    let entries = read_all(&c, lagger, 0).await;
    assert_eq!(entries.len() as u64, last + 1, "every index from 0 is on the lagging replica");
    let tags: Vec<u64> = entries
        .iter()
        .filter_map(|(_, p)| p.as_ref())
        .map(|p| u64::from_le_bytes(p[..8].try_into().unwrap()))
        .collect();
    assert_eq!(tags, (0..10 + 8 * SNAPSHOT_EVERY).collect::<Vec<u64>>());
    let compared = c.assert_chains_agree().await;
    assert!(compared >= 3 * (last + 1), "every replica compared from 0: {compared}");
    c.stop_all().await;
}

/// The lagging follower of the keep-all case catches up while the leader keeps writing, with an
/// in-memory tail of a few entries on every replica, so catch-up and apply reads start below the
/// tail while appends evict its front. Read on its own, the returning replica applied every payload
/// exactly once, in order, and holds every entry. (The race such a read once lost, ending short, is
/// too narrow to show here reliably: 3 of 3 runs on the old code passed; the regression test is
/// `core_durability::a_read_spanning_storage_and_the_in_memory_tail_returns_every_entry_while_appends_evict_the_tail`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_several_snapshots_catches_up_under_writes_with_a_tail_of_a_few_entries() {
    let mut config = group_config();
    config.retention = Retention::KeepAll;
    config.snapshot_every_entries = SNAPSHOT_EVERY;
    config.log_cache_bytes = 4 * 1_200;
    let mut c = TestCluster::start_with(3, config.clone(), core_support::storage_options()).await;
    let (leader, lagger, _) = lag_one_follower_past_snapshots(&mut c, 10, 8 * SNAPSHOT_EVERY).await;
    let g = c.leader_group(leader);
    c.node(lagger).restart(config).await;
    const MORE: u64 = 150;
    let mut last = 0;
    for i in 10 + 8 * SNAPSHOT_EVERY..10 + 8 * SNAPSHOT_EVERY + MORE {
        last = g.write(payload(i, 1024)).await.expect("write while the follower catches up").index;
    }
    c.wait_applied_everywhere(last).await;
    let total = 10 + 8 * SNAPSHOT_EVERY + MORE;
    for n in [leader, lagger] {
        let tags: Vec<u64> =
            c.node(n).applied.lock().iter().map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap())).collect();
        assert_eq!(tags, (0..total).collect::<Vec<u64>>(), "node {n} applied every payload exactly once, in order");
    }
    let entries = read_all(&c, lagger, 0).await;
    assert_eq!(entries.len() as u64, last + 1, "every index from 0 is on the lagging replica");
    let compared = c.assert_chains_agree().await;
    assert!(compared >= 3 * (last + 1), "every replica compared from 0: {compared}");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retention_limited_log_is_purged_only_to_its_retention_start() {
    let mut config = group_config();
    // Keep about 240 KiB (~30 segments of 8 KiB) of a ~340 KiB log.
    config.retention = Retention::Limits { retain_bytes: Some(240 << 10), retain_age_ms: None };
    config.snapshot_every_entries = SNAPSHOT_EVERY;
    let mut c = TestCluster::start_with(3, config.clone(), core_support::storage_options()).await;
    let (leader, lagger, last) = lag_one_follower_past_snapshots(&mut c, 150, 6 * SNAPSHOT_EVERY).await;
    let g = c.leader_group(leader);
    let snapshot = g.metrics().snapshot.expect("snapshots").index;
    let start = g.enforce_retention(WAIT).await.expect("retention");
    assert!(start > 0, "retention removed the oldest segments");
    assert!(start < 150, "retention start {start} is below where the follower stopped");
    assert!(start < snapshot, "retention start {start} is below the snapshot {snapshot}");
    assert_eq!(g.metrics().purged.map(|p| p.index + 1), Some(start), "purged exactly to the retention start");

    // The follower stopped above the retention start: it catches up with entries, keeping its log.
    c.node(lagger).restart(config).await;
    let lg = c.node(lagger).group().clone();
    lg.wait_applied(last, WAIT).await.expect("lagging follower catches up");
    assert_eq!(lg.log_start().unwrap(), 0, "no snapshot install cut the follower's log");
    assert_eq!(read_all(&c, lagger, 0).await.len() as u64, last + 1);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_follower_catches_up_by_snapshot_from_a_compacted_leader() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let lagger = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    for i in 0..10u64 {
        g.write(payload(i, 1024)).await.expect("write");
    }
    c.wait_applied_everywhere(g.applied_index().unwrap()).await;
    c.node(lagger).stop().await;

    let mut last = 0;
    for i in 10..200u64 {
        last = g.write(payload(i, 1024)).await.expect("write").index;
    }
    // Snapshot on every running node, then compact: the leader's log no longer holds what the
    // lagging follower needs.
    for n in c.running() {
        n.group().wait_applied(last, WAIT).await.unwrap();
        let snap = n.group().trigger_snapshot(WAIT).await.expect("snapshot").expect("something applied");
        assert!(snap >= last);
    }
    g.wait_metrics("log purged", WAIT, |m| m.purged.is_some_and(|p| p.index >= last)).await.expect("purged");
    let start = g.enforce_retention(WAIT).await.expect("compaction");
    assert!(start > 11, "leader log start {start} is past the lagging follower's log");

    c.node(lagger).restart(group_config()).await;
    let lg = c.node(lagger).group().clone();
    lg.wait_applied(last, WAIT).await.expect("lagging follower catches up");
    lg.wait_metrics("caught up by snapshot", WAIT, |m| m.snapshot.is_some_and(|s| s.index > 11))
        .await
        .expect("the lagging follower installed a snapshot");
    assert!(lg.log_start().unwrap() > 11, "its stream restarted at the snapshot");
    // Reads below the new log start are refused with the start.
    match lg.read_committed(0, 1 << 20).await {
        Err(RaftError::OffsetOutOfRange { log_start, .. }) => assert_eq!(log_start, lg.log_start().unwrap()),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    // The snapshot carried the application state: every payload, in order.
    let payloads: Vec<u64> =
        c.node(lagger).applied.lock().iter().map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap())).collect();
    assert_eq!(payloads, (0..200).collect::<Vec<u64>>());

    // New writes replicate to it normally afterwards, and every common index agrees.
    for i in 200..220u64 {
        last = g.write(payload(i, 1024)).await.expect("write").index;
    }
    c.wait_applied_everywhere(last).await;
    assert!(c.assert_chains_agree().await > 0);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_keeps_records_for_readers_below_the_snapshot() {
    let mut config = group_config();
    config.retention = Retention::KeepAll;
    let mut c = TestCluster::start(3, config).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let mut last = 0;
    for i in 0..100u64 {
        last = g.write(payload(i, 1024)).await.expect("write").index;
    }
    let snap = g.trigger_snapshot(WAIT).await.expect("snapshot").expect("something applied");
    assert_eq!(g.enforce_retention(WAIT).await.unwrap(), 0, "KeepAll keeps every record");
    assert_eq!(g.metrics().purged, None, "a keep-all log is never purged, not even below a snapshot");
    assert_eq!(read_all(&c, leader, 0).await.len() as u64, last + 1, "all records still readable");

    // Switching to snapshot-only retention with a purge limit purges and removes only whole
    // segments below it.
    g.set_retention(Retention::SnapshotOnly);
    g.set_purge_limit(Some(40));
    let start = g.enforce_retention(WAIT).await.unwrap();
    assert!(start > 0 && start <= 40, "log start {start} moved up, bounded by the purge limit");
    assert_eq!(g.metrics().purged.map(|p| p.index), Some(start - 1), "purged exactly to the retention start");
    g.set_purge_limit(None);
    let start2 = g.enforce_retention(WAIT).await.unwrap();
    assert!(start2 > 40 && start2 <= snap + 1, "log start {start2} moved up to the snapshot");
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_transfer_and_membership_change() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let last = g.write(payload(1, 64)).await.unwrap().index;
    c.wait_applied_everywhere(last).await;
    let target = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    // A follower cannot serve linearizable reads; it names the leader.
    match c.node(target).group().ensure_linearizable().await {
        Err(RaftError::NotLeader { leader: Some((id, _)), .. }) => assert_eq!(id, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    g.transfer_leader(target).await.expect("transfer");
    assert_eq!(c.wait_leader(&[leader]).await, target);
    let ng = c.leader_group(target);
    let idx = ng.write(payload(2, 64)).await.expect("write at the new leader").index;

    // Shrink to two voters, the old leader stays as a learner and still receives the log.
    let voters = [1, 2, 3].into_iter().filter(|&n| n != leader).collect();
    ng.change_membership(voters, true).await.expect("membership change");
    let m = ng.metrics();
    assert_eq!(m.membership_config.membership().voter_ids().count(), 2);
    assert!(m.membership_config.membership().learner_ids().any(|l| l == leader));
    let idx2 = ng.write(payload(3, 64)).await.unwrap().index;
    assert!(idx2 > idx);
    c.node(leader).group().wait_applied(idx2, WAIT).await.expect("learner keeps replicating");
    assert!(c.assert_chains_agree().await > 0);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_follower_is_refilled_without_hurting_the_leader() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let mut last = 0;
    for i in 0..40u64 {
        last = g.write(payload(i, 300)).await.unwrap().index;
    }
    c.wait_applied_everywhere(last).await;
    let wiped = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    c.node(wiped).stop().await;
    // The disk is replaced: the node restarts empty with the same id and address.
    let dir = c.node(wiped).dir.clone();
    // The stopped node's storage may still be finishing its clean close (index files) on a
    // blocking thread; wipe once it has.
    for attempt in 0.. {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => break,
            Err(e) if attempt < 50 && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("wiping {}: {e}", dir.display()),
        }
    }
    std::fs::create_dir_all(&dir).unwrap();
    c.node(wiped).restart(group_config()).await;
    for i in 40..60u64 {
        last = g.write(payload(i, 300)).await.expect("writes continue").index;
    }
    c.node(wiped).group().wait_applied(last, WAIT).await.expect("wiped follower is refilled");
    g.health().expect("the leader's core survived the follower's log reversion");
    let tags: Vec<u64> =
        c.node(wiped).applied.lock().iter().map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap())).collect();
    assert_eq!(tags, (0..60).collect::<Vec<u64>>());
    assert!(c.assert_chains_agree().await >= 3 * (last + 1));
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_restores_the_snapshot_then_replays_the_log_above_it() {
    let mut c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    let mut last = 0;
    for i in 0..60u64 {
        last = g.write(payload(i, 700)).await.unwrap().index;
    }
    let follower = [1, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    let fg = c.node(follower).group().clone();
    fg.wait_applied(last, WAIT).await.unwrap();
    let snap = fg.trigger_snapshot(WAIT).await.unwrap().expect("snapshot index");
    // The snapshot is a checkpoint of the log stream at snapshot + 1 (data = raft snapshot state).
    let (data, state) = shale_raft::snapshot::latest_snapshot(fg.log().storage().as_ref(), fg.log().stream())
        .unwrap()
        .expect("a snapshot checkpoint");
    assert_eq!(data.offset, snap + 1);
    assert_eq!(state.last_log_id.map(|l| l.index), Some(snap));
    assert_eq!(data.chain_hash, fg.chain_hash_at(snap).unwrap());
    for i in 60..80u64 {
        last = g.write(payload(i, 700)).await.unwrap().index;
    }
    fg.wait_applied(last, WAIT).await.unwrap();
    drop(fg);
    c.node(follower).stop().await;
    // Restart while the rest of the cluster is idle: the state comes back from this node's own disk.
    c.node(follower).restart(group_config()).await;
    let fg = c.node(follower).group().clone();
    fg.wait_applied(last, WAIT).await.expect("restored");
    let tags: Vec<u64> =
        c.node(follower).applied.lock().iter().map(|(_, p)| u64::from_le_bytes(p[..8].try_into().unwrap())).collect();
    assert_eq!(tags, (0..80).collect::<Vec<u64>>(), "snapshot (0..=snap) + replayed tail, each payload once");
    assert!(c.assert_chains_agree().await > 0);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_payloads_and_oversized_batches_replicate_or_are_refused() {
    // Storage refuses batches over 17 MiB; one openraft append below carries 18 MiB.
    let storage = shale_storage::StorageOptions {
        max_segment_bytes: 64 << 20,
        max_batch_bytes: 17 << 20,
        checkpoint_policy: shale_storage::CheckpointPolicy::Manual,
        ..Default::default()
    };
    // Debug builds move these megabytes slowly on a loaded machine: keep elections out of the way.
    let config =
        shale_raft::RaftGroupConfig { election_timeout_min_ms: 3000, election_timeout_max_ms: 6000, ..group_config() };
    let mut c = core_support::TestCluster::start_with(3, config, storage).await;
    let leader = c.wait_leader(&[]).await;
    let g = c.leader_group(leader);
    // 6 x 3 MiB in one write_many: more than the storage batch limit in one openraft append, and
    // more than one replication message carries (8 MiB).
    let big: Vec<Bytes> = (0..6u64).map(|i| payload(i, 3 << 20)).collect();
    let results = g.write_many(big.clone()).await.expect("write_many");
    let last = results.iter().map(|r| r.as_ref().expect("each committed").index).max().unwrap();
    c.wait_applied_everywhere(last).await;
    for n in [1, 2, 3] {
        let applied: Vec<Bytes> = c.node(n).applied.lock().iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(applied, big, "node {n}");
    }
    let too_big = payload(99, (8 << 20) + 1);
    match g.write_many(vec![payload(1, 10), too_big]).await {
        Err(RaftError::PayloadTooLarge { position: 1, .. }) => {}
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    g.health().expect("the group still runs");
    assert_eq!(g.write(payload(5, 10)).await.unwrap().index, last + 1, "nothing of the refused batch was proposed");
    c.stop_all().await;
}

/// Commit notices held back (`NetworkConfig::commit_notice_delay_ms`): one write after another
/// goes with about one message per write and follower instead of two (the entries, then a
/// notice of their commit), and every follower still applies the last write though no write
/// comes after it. Each replica is read on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_commit_notices_save_a_message_per_write_and_followers_still_apply_the_last_write() {
    let mut sent = Vec::new();
    for delay_ms in [0, 60_000] {
        let network = NetworkConfig {
            snapshot_chunk_bytes: 16 << 10,
            commit_notice_delay_ms: delay_ms,
            ..NetworkConfig::default()
        };
        let mut c = TestCluster::start_with_network(3, group_config(), storage_options(), network).await;
        let leader = c.wait_leader(&[]).await;
        let g = c.leader_group(leader);
        g.write(payload(0, 100)).await.expect("first write");
        let router = c.node(leader).router.clone().expect("leader runs");
        let before = router.sent().append_messages.load(Relaxed);
        let mut written = Vec::new();
        for i in 1..=100u64 {
            let r = g.write(payload(i, 100)).await.expect("write");
            written.push((r.index, payload(i, 100)));
        }
        sent.push(router.sent().append_messages.load(Relaxed) - before);
        let last = written.last().unwrap().0;
        c.wait_applied_everywhere(last).await;
        for n in [1, 2, 3] {
            let applied = c.node(n).applied.lock().clone();
            assert!(
                applied.ends_with(&written),
                "delay {delay_ms} ms: node {n} applied every write, the last included"
            );
        }
        drop(router);
        c.stop_all().await;
    }
    assert!(
        sent[1] * 4 < sent[0] * 3,
        "100 writes took {} AppendEntries with notices sent at once, {} with them held back",
        sent[0],
        sent[1]
    );
}

/// `ReadIndex` (what a restarted node asks before it trusts its metadata): the leader answers at
/// least everything it committed, a follower refuses (FAILED_PRECONDITION), and a leader restored
/// from its stored vote after the others moved on never answers its own stale commit index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_index_comes_from_the_current_leader_never_from_a_deposed_one() {
    use core_support::GROUP;
    use shale_raft::network::read_index::{ReadIndexError, read_index_from};

    let mut c = TestCluster::start(3, group_config()).await;
    let old = c.wait_leader(&[]).await;
    let first = c.leader_group(old).write(payload(0, 64)).await.expect("write").index;
    c.wait_applied_everywhere(first).await;
    let ids: Vec<u64> = c.running().map(|n| n.id).filter(|id| *id != old).collect();
    let (asker, other) = (ids[0], ids[1]);
    let peers = c.node(asker).router.as_ref().expect("running").peers().clone();
    let addr = |c: &mut TestCluster, id| c.node(id).node().addr;

    let at_leader = read_index_from(&peers, GROUP, old, &addr(&mut c, old), WAIT).await.expect("the leader answers");
    assert!(at_leader >= first, "read index {at_leader} covers the committed write {first}");
    match read_index_from(&peers, GROUP, other, &addr(&mut c, other), WAIT).await {
        Err(ReadIndexError::Rpc { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "a follower refuses: {status:?}")
        }
        other => panic!("a follower must not answer a read index: {other:?}"),
    }

    // The leader goes away; the others elect a leader and commit more without it.
    c.node(old).stop().await;
    let new = c.wait_leader(&[old]).await;
    let mut last = first;
    for i in 1..20u64 {
        last = c.leader_group(new).write(payload(i, 64)).await.expect("write after failover").index;
    }
    // It comes back from its data dir, where its vote says it leads (openraft restores it as
    // leader until it hears the newer term). Asked at once, it answers an index covering every
    // write the others committed, or refuses; never its own old commit index.
    c.node(old).restart(group_config()).await;
    match read_index_from(&peers, GROUP, old, &addr(&mut c, old), WAIT).await {
        Ok(index) => assert!(index >= last, "the returning node answered {index}, below the committed {last}"),
        Err(e) => tracing::info!("the returning node refused the read index: {e}"),
    }
    let now = read_index_from(&peers, GROUP, new, &addr(&mut c, new), WAIT).await.expect("the new leader answers");
    assert!(now >= last, "read index {now} covers the committed write {last}");
    c.stop_all().await;
}
