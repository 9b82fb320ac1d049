//! Quiet idle groups and the coalesced node heartbeat (issue 15): idle groups stop their
//! per-group heartbeats and election timers, one node heartbeat per node pair per tick keeps their
//! leases, and none of it delays failover or lets a follower stay deaf when its leader is gone.

mod core_support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use core_support::{AppliedList, ListApp, WAIT, group_config, init_tracing, payload, storage_options};
use shale_raft::{
    GroupId, HeartbeatFault, NetworkConfig, Node, NodeId, QuietState, RaftGroup, RaftGroupConfig, Router,
};
use shale_storage::{Storage, StorageBackend};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The node heartbeat interval of these tests (the groups' heartbeat interval, `group_config`).
const TICK_MS: u64 = 50;

struct Peer {
    id: NodeId,
    addr: String,
    router: Arc<Router>,
    storage: Arc<dyn StorageBackend>,
    groups: HashMap<GroupId, Arc<RaftGroup>>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// Connections its server accepted (each peer keeps one to it while nothing closes it).
    accepted: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Stops every group and the server, as a node that dies (its data stays).
    async fn kill(&mut self) {
        for (_, g) in self.groups.drain() {
            g.shutdown().await.unwrap();
        }
        if let Some((tx, handle)) = self.server.take() {
            let _ = tx.send(());
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

async fn peers(n: u64) -> Vec<Peer> {
    peers_with_tick(n, TICK_MS).await
}

async fn peers_with_tick(n: u64, tick_ms: u64) -> Vec<Peer> {
    peers_with(n, tick_ms, None).await
}

/// `n` peers with node heartbeats every `tick_ms`; `pending_accept_resets`: how many streams a
/// client may reset before the server accepted them before the server closes the connection
/// (`None`: h2's default, 20).
async fn peers_with(n: u64, tick_ms: u64, pending_accept_resets: Option<usize>) -> Vec<Peer> {
    init_tracing();
    let mut out = Vec::new();
    for id in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn StorageBackend> = Arc::new(Storage::open_with(dir.path(), storage_options()).unwrap());
        let network = NetworkConfig { node_heartbeat_interval_ms: tick_ms, ..NetworkConfig::default() };
        let router = Router::new(id, network).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = router.grpc_service();
        let (tx, rx) = oneshot::channel::<()>();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let server = tokio::spawn(async move {
            let incoming =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), move |s| {
                    s.inspect(|s| {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_nodelay(true);
                    })
                });
            tonic::transport::Server::builder()
                .http2_max_pending_accept_reset_streams(pending_accept_resets)
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        out.push(Peer {
            id,
            addr,
            router,
            storage,
            groups: HashMap::new(),
            server: Some((tx, server)),
            accepted,
            _dir: dir,
        });
    }
    out
}

/// Starts `groups` on every peer with `config`, each initialised from node 1, and writes one
/// entry to each through its leader.
async fn start_groups(ps: &mut [Peer], groups: &[GroupId], config: &RaftGroupConfig) {
    start_groups_then(ps, groups, config, true).await;
}

async fn start_groups_then(ps: &mut [Peer], groups: &[GroupId], config: &RaftGroupConfig, write_one: bool) {
    for p in ps.iter_mut() {
        for g in groups {
            let app = Box::new(ListApp::new(AppliedList::default()));
            let group = p.router.start_group(*g, p.storage.clone(), app, config.clone()).await.unwrap();
            p.groups.insert(*g, group);
        }
    }
    let members: BTreeMap<NodeId, Node> = ps.iter().map(|p| (p.id, Node::new(p.addr.clone()))).collect();
    for g in groups {
        ps[0].groups[g].initialize(members.clone()).await.unwrap();
    }
    if write_one {
        for g in groups {
            write(ps, *g, payload(g.0, 64)).await;
        }
    }
}

/// Writes through the group's leader, retrying while leadership settles.
async fn write(ps: &[Peer], g: GroupId, p: bytes::Bytes) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = leader_of(ps, g, &[]).await;
        match leader_group(ps, leader, g).write(p.clone()).await {
            Ok(w) => return w.index,
            Err(e) if Instant::now() < deadline => tracing::info!("write to group {g} retried: {e}"),
            Err(e) => panic!("write to group {g}: {e}"),
        }
    }
}

fn leader_group(ps: &[Peer], leader: NodeId, g: GroupId) -> Arc<RaftGroup> {
    ps.iter().find(|p| p.id == leader).unwrap().groups[&g].clone()
}

/// Waits until the running replicas of `g` (except `excluding`) agree on an established leader
/// outside `excluding`.
async fn leader_of(ps: &[Peer], g: GroupId, excluding: &[NodeId]) -> NodeId {
    let deadline = Instant::now() + WAIT;
    loop {
        let leaders: BTreeSet<Option<NodeId>> = ps
            .iter()
            .filter(|p| !excluding.contains(&p.id))
            .filter_map(|p| p.groups.get(&g))
            .map(|grp| grp.metrics().current_leader)
            .collect();
        if leaders.len() == 1
            && let Some(Some(l)) = leaders.first().copied()
            && !excluding.contains(&l)
            && let Some(lg) = ps.iter().find(|p| p.id == l).and_then(|p| p.groups.get(&g))
            && lg.is_leader()
            && lg.metrics().local_committed.is_some_and(|c| c.leader_id == lg.metrics().vote.leader_id)
        {
            return l;
        }
        assert!(Instant::now() < deadline, "group {g}: no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `pred` holds.
async fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_quiet(ps: &[Peer], groups: &[GroupId]) -> bool {
    ps.iter().all(|p| groups.iter().all(|g| p.groups.get(g).is_none_or(|grp| grp.is_quiet())))
}

/// (append messages, node heartbeats) sent by every peer so far.
fn sent(ps: &[Peer]) -> (u64, u64) {
    ps.iter().fold((0, 0), |(a, h), p| {
        let s = p.router.sent();
        (a + s.append_messages.load(Ordering::Relaxed), h + s.node_heartbeats.load(Ordering::Relaxed))
    })
}

async fn stop(ps: &mut [Peer]) {
    for p in ps.iter_mut() {
        p.kill().await;
    }
}

/// What N idle groups on three nodes send in one second: (append messages, node heartbeats).
async fn idle_cost(config: RaftGroupConfig, n: u64, quiet: bool) -> (u64, u64) {
    let mut ps = peers(3).await;
    let groups: Vec<GroupId> = (1..=n).map(GroupId).collect();
    start_groups(&mut ps, &groups, &config).await;
    if quiet {
        wait_until("every group quiet on every node", || all_quiet(&ps, &groups)).await;
        // The gauge is the heartbeat loop's count, as of its last pass.
        wait_until("every node counts its quiet groups", || ps.iter().all(|p| p.router.quiet_groups() == n)).await;
    } else {
        // Let replication settle (the commit index reaches the followers) before counting.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = sent(&ps);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sent(&ps);
    if quiet {
        assert!(all_quiet(&ps, &groups), "the groups stayed quiet");
    }
    stop(&mut ps).await;
    (after.0 - before.0, after.1 - before.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_groups_cost_one_node_heartbeat_per_peer_per_tick() {
    const N: u64 = 12;
    let (awake_appends, awake_beats) =
        idle_cost(RaftGroupConfig { quiesce_after_ms: 0, ..group_config() }, N, false).await;
    let (quiet_appends, quiet_beats) =
        idle_cost(RaftGroupConfig { quiesce_after_ms: 200, ..group_config() }, N, true).await;
    println!(
        "{N} idle groups on 3 nodes, one second: without quiescence {awake_appends} append messages + \
         {awake_beats} node heartbeats; quiet {quiet_appends} append messages + {quiet_beats} node heartbeats"
    );
    // Without quiescence every leader heartbeats each follower every tick: N groups x 2 followers
    // x 20 ticks a second (each group's leader is on some node); a loaded machine sends fewer, so
    // the check is only that every group heartbeats every follower at all.
    assert!(awake_appends >= N * 2, "per-group heartbeats: {awake_appends}");
    // Quiet: no per-group message at all, and one node heartbeat per ordered node pair per tick
    // (6 pairs x 20 ticks, plus a tick at either end).
    assert_eq!(quiet_appends, 0, "quiet groups send no per-group heartbeats");
    assert!(quiet_beats <= 6 * (1000 / TICK_MS + 2), "one node heartbeat per peer per tick: {quiet_beats}");
    assert!(quiet_beats >= 6 * (1000 / TICK_MS) / 4, "node heartbeats keep flowing: {quiet_beats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_group_whose_leader_node_dies_elects_within_the_election_timeout() {
    let config = RaftGroupConfig { quiesce_after_ms: 200, ..group_config() };
    let mut ps = peers(3).await;
    let groups: Vec<GroupId> = (1..=4).map(GroupId).collect();
    start_groups(&mut ps, &groups, &config).await;
    wait_until("every group quiet on every node", || all_quiet(&ps, &groups)).await;
    let g = groups[0];
    let dead = leader_of(&ps, g, &[]).await;
    let led: Vec<GroupId> = groups.iter().copied().filter(|g| leader_group(&ps, dead, *g).is_leader()).collect();
    assert!(led.contains(&g));
    for p in ps.iter().filter(|p| p.id != dead) {
        assert!(
            matches!(p.groups[&g].quiet_state(), QuietState::Following { leader, .. } if leader == dead),
            "node {} follows the quiet leader with its timer off",
            p.id
        );
    }

    // A crash: the node's heartbeats stop at once, then its groups and server go.
    let victim = ps.iter_mut().find(|p| p.id == dead).unwrap();
    victim.router.set_heartbeat_fault(HeartbeatFault { silent_to: [1, 2, 3].into(), ..HeartbeatFault::default() });
    let killed_at = Instant::now();
    victim.kill().await;
    for g in &led {
        let new = leader_of(&ps, *g, &[dead]).await;
        let took = killed_at.elapsed();
        println!("group {g}: node {new} leads {took:?} after leader node {dead} died");
        // The lease (an election timeout) runs out, the follower's ticker resumes and it
        // campaigns at its next tick: within the election timeout, two ticks and the vote round.
        // The bound leaves a second for a loaded test machine; a follower left deaf never elects.
        let bound = Duration::from_millis(config.election_timeout_max_ms + 2 * TICK_MS + 1_000);
        assert!(took <= bound, "group {g} elected after {took:?}, over {bound:?}");
    }
    // The survivors' groups go quiet again under their new leaders.
    wait_until("quiet again under the new leaders", || all_quiet(&ps, &groups)).await;
    stop(&mut ps).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_heartbeats_keep_leases_right_when_one_groups_entry_is_lost() {
    let config = RaftGroupConfig { quiesce_after_ms: 200, ..group_config() };
    let mut ps = peers(3).await;
    let (a, b) = (GroupId(1), GroupId(2));
    start_groups(&mut ps, &[a, b], &config).await;
    // Both groups led by node 1.
    for g in [a, b] {
        let l = leader_of(&ps, g, &[]).await;
        if l != 1 {
            leader_group(&ps, l, g).transfer_leader(1).await.unwrap();
        }
        assert_eq!(leader_of(&ps, g, &[]).await, 1);
    }
    wait_until("both groups quiet everywhere", || all_quiet(&ps, &[a, b])).await;
    let term = |g: GroupId| ps[0].groups[&g].metrics().vote.leader_id.term;
    let (term_a, term_b) = (term(a), term(b));

    // Node 1's node heartbeats stop naming group a (as if that part of the message were lost),
    // for ten election timeouts.
    ps[0].router.set_heartbeat_fault(HeartbeatFault { omit: [a].into(), ..HeartbeatFault::default() });
    let until = Instant::now() + Duration::from_millis(10 * config.election_timeout_max_ms);
    let mut followers_woke = false;
    while Instant::now() < until {
        for p in &ps[1..] {
            // b is named as before: its followers keep their timers off the whole time.
            assert!(
                matches!(p.groups[&b].quiet_state(), QuietState::Following { leader: 1, .. }),
                "node {}: group b stays quiet",
                p.id
            );
            followers_woke |= p.groups[&a].quiet_state() == QuietState::Awake;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(followers_woke, "group a's followers woke: its lease was no longer renewed");
    // Node 1 kept leading both, in the same terms: the followers of a asked it to wake and its
    // own heartbeats kept their leader leases, so nobody campaigned.
    assert_eq!(leader_of(&ps, a, &[]).await, 1);
    assert_eq!((term(a), term(b)), (term_a, term_b), "no election in either group");
    for p in &ps[1..] {
        assert_ne!(p.groups[&a].quiet_state(), QuietState::Following { leader: 1, term: term_a, index: 0 });
    }

    // Healed, a goes quiet again; a write wakes it and is replicated.
    ps[0].router.set_heartbeat_fault(HeartbeatFault::default());
    wait_until("a quiet again", || all_quiet(&ps, &[a, b])).await;
    let w = ps[0].groups[&a].write(payload(9, 32)).await.expect("a write to a quiet group");
    for p in &ps {
        p.groups[&a].wait_applied(w.index, WAIT).await.unwrap();
    }
    assert_eq!((term(a), term(b)), (term_a, term_b), "waking by a write elects nobody");
    stop(&mut ps).await;
}

/// How long ago the group's leader had its last quorum acknowledgement (openraft's lease clock).
fn quorum_ack_age(group: &RaftGroup) -> Duration {
    let acked = group.metrics().last_quorum_acked.expect("a leader with a quorum acknowledgement");
    openraft::Instant::elapsed(&*acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_to_a_quiet_leader_renews_its_lease_only_once_the_lease_is_about_to_lapse() {
    // Lease (openraft's quorum-ack lease: the election timeout's upper bound) 4 s; a write renews
    // it first when less than 500 ms of it is left (an eighth of it, more than a heartbeat).
    let config = RaftGroupConfig {
        quiesce_after_ms: 200,
        election_timeout_min_ms: 2_000,
        election_timeout_max_ms: 4_000,
        ..group_config()
    };
    let lease = Duration::from_millis(config.election_timeout_max_ms);
    let mut ps = peers(3).await;
    let g = GroupId(1);
    start_groups(&mut ps, &[g], &config).await;
    let leader_node = leader_of(&ps, g, &[]).await;
    let leader = leader_group(&ps, leader_node, g);
    // The leader's node counts the writes that renewed a lease first (only this group runs there).
    let renewed = || {
        let node = ps.iter().find(|p| p.id == leader_node).expect("the leader's node");
        node.router.sent().write_lease_renewals.load(Ordering::Relaxed)
    };

    // Quiet for a moment: the lease is still held, so the write goes at once.
    write(&ps, g, payload(1, 32)).await;
    wait_until("the group quiet everywhere", || all_quiet(&ps, &[g])).await;
    let renewals = renewed();
    let age = quorum_ack_age(&leader);
    assert!(age < lease / 2, "quiet within {age:?} of the last acknowledgement");
    let w = leader.write(payload(2, 32)).await.expect("a write to a quiet leader holding its lease");
    assert_eq!(renewed(), renewals, "no heartbeat round before the write");
    for p in &ps {
        p.groups[&g].wait_applied(w.index, WAIT).await.unwrap();
    }

    // Quiet past the lease: the write renews it first, then goes.
    wait_until("the group quiet again", || all_quiet(&ps, &[g])).await;
    let term = leader.metrics().vote.leader_id.term;
    while quorum_ack_age(&leader) < lease {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(leader.is_quiet(), "nothing woke the group meanwhile");
    let w = leader.write(payload(3, 32)).await.expect("a write to a quiet leader whose lease lapsed");
    assert_eq!(renewed(), renewals + 1, "one heartbeat round renewed the lease");
    // Each replica on its own holds every write, and nobody campaigned.
    for p in &ps {
        p.groups[&g].wait_applied(w.index, WAIT).await.unwrap();
        assert_eq!(p.groups[&g].metrics().vote.leader_id.term, term, "node {}: no election", p.id);
    }
    stop(&mut ps).await;
}

/// CPU seconds this process has used so far (user + system, from /proc/self/stat; Linux).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Measures (does not assert) the idle cost of `SHALE_IDLE_GROUPS` (default 300) groups on three
/// in-process nodes, with and without quiescence: CPU of the whole process and messages sent over
/// ten seconds. `cargo nextest run -p shale-raft --test core_quiet --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it alone and read the figures"]
async fn measure_idle_groups() {
    let n: u64 = std::env::var("SHALE_IDLE_GROUPS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    for quiesce_after_ms in [500, 0] {
        let config = RaftGroupConfig {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            quiesce_after_ms,
            ..group_config()
        };
        let mut ps = peers_with_tick(3, 100).await;
        let groups: Vec<GroupId> = (1..=n).map(GroupId).collect();
        let started = Instant::now();
        // No writes: a loaded machine may take long to settle hundreds of elections; each group's
        // leader commits its own blank entry, which is all quiescence needs.
        start_groups_then(&mut ps, &groups, &config, false).await;
        let up = started.elapsed();
        let settle = Instant::now() + Duration::from_secs(120);
        while quiesce_after_ms > 0 && !all_quiet(&ps, &groups) && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu0, sent0, t0) = (process_cpu_seconds(), sent(&ps), Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (cpu1, sent1, secs) = (process_cpu_seconds(), sent(&ps), t0.elapsed().as_secs_f64());
        let quiet: u64 = ps.iter().map(|p| p.router.quiet_groups()).sum();
        println!(
            "{n} groups x 3 replicas in one process, quiesce_after_ms {quiesce_after_ms}: started in {up:?}; idle \
             {:.1}% of one core, {:.0} append messages/s, {:.0} node heartbeats/s, {quiet} quiet group replicas",
            (cpu1 - cpu0) / secs * 100.0,
            (sent1.0 - sent0.0) as f64 / secs,
            (sent1.1 - sent0.1) as f64 / secs,
        );
        stop(&mut ps).await;
    }
}

/// Many quiet groups woken at once by writes (a produce run over hundreds of idle partitions)
/// keep every peer connection: each node reaches each peer over the one connection it opened
/// first, the whole time, and every write commits. The peers' servers are the strictest an HTTP/2
/// server may be about streams reset before it accepted them (the first one closes the
/// connection; h2's default closes it after 20). A node used to reset every RPC openraft gave up
/// on (a heartbeat gets one heartbeat interval): waking groups on a busy node produced bursts of
/// them, and each burst closed the connection every group's replication to that peer shares
/// (GOAWAY `ENHANCE_YOUR_CALM`), so leaders lost their followers and elections followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_quiet_groups_woken_at_once_by_writes_keep_their_peer_connections() {
    const N: u64 = 24;
    let config = RaftGroupConfig { quiesce_after_ms: 200, ..group_config() };
    let mut ps = peers_with(3, TICK_MS, Some(0)).await;
    let groups: Vec<GroupId> = (1..=N).map(GroupId).collect();
    start_groups_then(&mut ps, &groups, &config, false).await;
    wait_until("every group quiet on every node", || all_quiet(&ps, &groups)).await;
    let mut leaders = HashMap::new();
    for g in &groups {
        leaders.insert(*g, leader_of(&ps, *g, &[]).await);
    }

    // Every group gets writes at once, through the leader it had while quiet.
    let mut writes = Vec::new();
    for g in &groups {
        let group = leader_group(&ps, leaders[g], *g);
        let g = *g;
        writes.push(tokio::spawn(async move {
            let mut first_attempt = Vec::new();
            for i in 0..4u64 {
                first_attempt.push(group.write(payload(g.0 * 10 + i, 1024)).await.is_ok());
            }
            (g, first_attempt)
        }));
    }
    let mut refused = 0;
    for w in writes {
        let (g, first_attempt) = w.await.unwrap();
        refused += first_attempt.iter().filter(|ok| !**ok).count();
        // Whatever the first attempts met, the group takes writes (retried while leadership
        // settles) and every replica applies them.
        let index = write(&ps, g, payload(g.0 * 10 + 9, 64)).await;
        for p in &ps {
            p.groups[&g].wait_applied(index, WAIT).await.unwrap();
        }
    }
    println!("{N} quiet groups woken by 4 writes each: {refused} first attempts refused");
    for p in &ps {
        assert_eq!(
            p.accepted.load(Ordering::Relaxed),
            2,
            "node {} accepted one connection from each of its 2 peers, and none was closed",
            p.id
        );
    }
    stop(&mut ps).await;
}
