//! Several groups per node over one shared transport and one storage per node (multi-Raft): groups
//! stay independent, and a group that is not running on a peer does not disturb the others.

mod core_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use core_support::{AppliedList, ListApp, WAIT, group_config, init_tracing, payload, storage_options};
use shale_raft::{GroupId, NetworkConfig, Node, NodeId, RaftGroup, Router};
use shale_storage::{Storage, StorageBackend};
use tokio::net::TcpListener;

struct Peer {
    id: NodeId,
    addr: String,
    router: Arc<Router>,
    storage: Arc<dyn StorageBackend>,
    groups: HashMap<GroupId, (Arc<RaftGroup>, AppliedList)>,
    _dir: tempfile::TempDir,
}

async fn peers(n: u64) -> Vec<Peer> {
    init_tracing();
    let mut out = Vec::new();
    for id in 1..=n {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn StorageBackend> = Arc::new(Storage::open_with(dir.path(), storage_options()).unwrap());
        let router = Router::new(id, NetworkConfig::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let service = router.grpc_service();
        tokio::spawn(async move {
            let incoming =
                tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
                    s.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                });
            tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await.unwrap();
        });
        out.push(Peer { id, addr, router, storage, groups: HashMap::new(), _dir: dir });
    }
    out
}

async fn start_group(p: &mut Peer, g: GroupId) {
    let applied = AppliedList::default();
    let app = Box::new(ListApp::new(applied.clone()));
    let group = p.router.start_group(g, p.storage.clone(), app, group_config()).await.unwrap();
    p.groups.insert(g, (group, applied));
}

async fn leader_of(p: &Peer, g: GroupId) -> NodeId {
    let m = p.groups[&g]
        .0
        .wait_metrics("leader", WAIT, |m| m.current_leader.is_some() && m.local_committed.is_some())
        .await
        .unwrap();
    m.current_leader.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn groups_share_transport_and_storage_but_not_state() {
    let mut ps = peers(3).await;
    let (g1, g2) = (GroupId(1), GroupId(2));
    for p in ps.iter_mut() {
        start_group(p, g1).await;
        start_group(p, g2).await;
    }
    assert_eq!(ps[0].router.groups(), vec![g1, g2]);
    let members: BTreeMap<NodeId, Node> = ps.iter().map(|p| (p.id, Node::new(p.addr.clone()))).collect();
    ps[0].groups[&g1].0.initialize(members.clone()).await.unwrap();
    ps[1].groups[&g2].0.initialize(members.clone()).await.unwrap();
    assert!(
        matches!(
            ps[0].groups[&g1].0.initialize(members.clone()).await,
            Err(shale_raft::RaftError::AlreadyInitialized { .. })
        ),
        "a second initialize is refused"
    );

    let mut last = HashMap::new();
    for g in [g1, g2] {
        let leader = leader_of(&ps[0], g).await;
        let lg = ps.iter().find(|p| p.id == leader).unwrap().groups[&g].0.clone();
        lg.wait_metrics("leader established", WAIT, |m| m.state == openraft::ServerState::Leader).await.unwrap();
        let mut idx = 0;
        for i in 0..40u64 {
            let tag = if g == g1 { i } else { 1000 + i };
            idx = lg.write(payload(tag, 200)).await.expect("write").index;
        }
        last.insert(g, idx);
    }
    for p in &ps {
        for g in [g1, g2] {
            let (group, applied) = &p.groups[&g];
            group.wait_applied(last[&g], WAIT).await.unwrap();
            let tags: Vec<u64> =
                applied.lock().iter().map(|(_, b)| u64::from_le_bytes(b[..8].try_into().unwrap())).collect();
            let want: Vec<u64> = if g == g1 { (0..40).collect() } else { (1000..1040).collect() };
            assert_eq!(tags, want, "node {} group {g} holds only its own payloads", p.id);
        }
        // Each group's log lives in its own streams of the shared storage.
        assert!(p.storage.next_offset(g1.log_stream()).unwrap().get() > 40);
        assert!(p.storage.next_offset(g2.log_stream()).unwrap().get() > 40);
    }

    // Stop group 1 on node 3 only: group 2 keeps replicating to node 3, group 1 keeps a majority.
    let (stopped, _) = ps[2].groups.remove(&g1).unwrap();
    stopped.shutdown().await.unwrap();
    assert_eq!(ps[2].router.groups(), vec![g2]);
    for g in [g1, g2] {
        let leader = leader_of(&ps[0], g).await;
        let lg = ps.iter().find(|p| p.id == leader).unwrap().groups[&g].0.clone();
        let r = lg.write(payload(7, 10)).await.expect("write with group 1 down on node 3");
        last.insert(g, r.index);
    }
    ps[2].groups[&g2].0.wait_applied(last[&g2], WAIT).await.expect("group 2 still replicates to node 3");

    // Group 1 comes back on node 3 from the shared storage and catches up.
    start_group(&mut ps[2], g1).await;
    ps[2].groups[&g1].0.wait_applied(last[&g1], WAIT).await.expect("group 1 catches up on node 3");
    for p in &ps {
        for g in [g1, g2] {
            p.groups[&g].0.wait_applied(last[&g], WAIT).await.unwrap();
        }
    }
    for g in [g1, g2] {
        for i in 0..=last[&g] {
            let h: Vec<_> = ps.iter().map(|p| p.groups[&g].0.chain_hash_at(i).unwrap()).collect();
            assert!(h.windows(2).all(|w| w[0] == w[1]), "group {g} index {i}: replicas disagree");
        }
    }
    for p in &ps {
        for (g, _) in p.groups.values() {
            g.shutdown().await.unwrap();
        }
    }
}
