//! The gRPC server refuses what it must not hand to openraft: unknown groups (NOT_FOUND, which
//! senders treat as unreachable), undecodable entries, and damaged or inconsistent snapshots. The
//! client stops pulling a replication session's requests once the session is over.

mod core_support;

use std::sync::Arc;

use bytes::Bytes;
use core_support::{AppliedList, ListApp, group_config, init_tracing};
use shale_raft::network::pb::raft_service_client::RaftServiceClient;
use shale_raft::network::pb::{self, install_snapshot_request::Payload};
use shale_raft::{GroupId, NetworkConfig, RaftGroup, Router};
use shale_storage::MemoryStorage;
use tonic::Code;

async fn serve() -> (Arc<Router>, Arc<RaftGroup>, RaftServiceClient<tonic::transport::Channel>) {
    init_tracing();
    let network = NetworkConfig { max_snapshot_bytes: 1 << 20, ..NetworkConfig::default() };
    let router = Router::new(1, network).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = router.grpc_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let app = Box::new(ListApp::new(AppliedList::default()));
    let group = router.start_group(GroupId(4), Arc::new(MemoryStorage::new()), app, group_config()).await.unwrap();
    let client = RaftServiceClient::connect(format!("http://{addr}")).await.unwrap();
    (router, group, client)
}

fn vote(term: u64) -> Option<pb::Vote> {
    Some(pb::Vote { term, node_id: 2, committed: true })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_groups_and_bad_messages_are_refused() {
    let (_router, group, mut client) = serve().await;
    let req = pb::VoteRequest { group_id: 77, vote: vote(1), ..Default::default() };
    assert_eq!(client.vote(req).await.unwrap_err().code(), Code::NotFound);

    let req = pb::VoteRequest { group_id: 4, vote: None, ..Default::default() };
    assert_eq!(client.vote(req).await.unwrap_err().code(), Code::InvalidArgument, "a vote request needs a vote");

    let req = pb::AppendEntriesRequest {
        group_id: 4,
        vote: vote(1),
        entries: vec![Bytes::from_static(b"\x07not an entry")],
        ..Default::default()
    };
    assert_eq!(client.append_entries(req).await.unwrap_err().code(), Code::InvalidArgument);

    // A real vote request for the running group is answered.
    let req = pb::VoteRequest {
        group_id: 4,
        vote: Some(pb::Vote { term: 1, node_id: 2, committed: false }),
        ..Default::default()
    };
    let resp = client.vote(req).await.expect("vote answered").into_inner();
    assert!(resp.vote.is_some());
    group.shutdown().await.unwrap();
}

fn snapshot_stream(
    meta: pb::SnapshotMeta,
    data: Vec<u8>,
) -> impl tokio_stream::Stream<Item = pb::InstallSnapshotRequest> {
    let mut msgs = vec![pb::InstallSnapshotRequest { payload: Some(Payload::Meta(meta)) }];
    for chunk in data.chunks(100) {
        msgs.push(pb::InstallSnapshotRequest { payload: Some(Payload::Chunk(Bytes::copy_from_slice(chunk))) });
    }
    tokio_stream::iter(msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_inconsistent_snapshots_are_refused() {
    let (_router, group, mut client) = serve().await;
    let state = shale_raft::format::SnapshotState {
        last_log_id: Some(shale_raft::types::log_id(1, 2, 9)),
        membership_log_id: None,
        membership: Default::default(),
        app: Bytes::from_static(b"\0\0\0\0\0\0\0\0"),
    };
    let mut wire = vec![0u8; 32];
    wire.extend_from_slice(&shale_raft::format::encode_snapshot_state(&state));
    let meta = |len: u64, crc: u32, last_index: u64| pb::SnapshotMeta {
        group_id: 4,
        vote: vote(1),
        last_log_id: Some(pb::LogId { term: 1, node_id: 2, index: last_index }),
        last_membership_log_id: None,
        last_membership: shale_raft::network::convert::membership_to_bytes(&Default::default()),
        data_len: len,
        data_crc32: crc,
    };
    let crc = crc32fast::hash(&wire);

    let bad_crc = client.install_snapshot(snapshot_stream(meta(wire.len() as u64, crc ^ 1, 9), wire.clone())).await;
    assert_eq!(bad_crc.unwrap_err().code(), Code::DataLoss);

    let short = client.install_snapshot(snapshot_stream(meta(wire.len() as u64 + 5, crc, 9), wire.clone())).await;
    assert_eq!(short.unwrap_err().code(), Code::InvalidArgument);

    let huge = client.install_snapshot(snapshot_stream(meta(2 << 20, crc, 9), wire.clone())).await;
    assert_eq!(huge.unwrap_err().code(), Code::ResourceExhausted);

    // Data says last index 9, meta says 10: refused before openraft sees it.
    let mismatch = client.install_snapshot(snapshot_stream(meta(wire.len() as u64, crc, 10), wire.clone())).await;
    assert_eq!(mismatch.unwrap_err().code(), Code::InvalidArgument);

    // The group is still healthy after all of that.
    group.health().expect("core still running");
    group.shutdown().await.unwrap();
}

/// A peer whose replication sessions answer the first request, then end while the peer keeps
/// reading (and reporting) requests: what a follower does when its group stops mid-session.
struct HalfClosingPeer {
    received: tokio::sync::mpsc::UnboundedSender<pb::AppendEntriesRequest>,
    /// Lone (`open` + `once`) requests read on multiplexed calls.
    lone: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serves a [`HalfClosingPeer`] on a free port: its address, the requests it reads, and its count
/// of lone requests.
async fn half_closing_peer() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<pb::AppendEntriesRequest>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (received_tx, received) = tokio::sync::mpsc::unbounded_channel();
    let lone = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service =
        pb::raft_service_server::RaftServiceServer::new(HalfClosingPeer { received: received_tx, lone: lone.clone() });
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (addr, received, lone)
}

/// Node 1's network client of group 9 to the test peer at `addr` (as node 2), and the router whose
/// connections it uses (kept alive by the caller).
async fn client_of_group_9(
    addr: std::net::SocketAddr,
) -> (Arc<Router>, impl openraft::network::RaftNetworkV2<shale_raft::TypeConfig>) {
    use openraft::network::RaftNetworkFactory;
    let router = Router::new(1, NetworkConfig::default()).unwrap();
    let mut factory = shale_raft::network::client::GroupNetworkFactory::new(router.peers().clone(), GroupId(9));
    let peer = factory.new_client(2, &shale_raft::Node::new(addr.to_string())).await;
    (router, peer)
}

/// An entry-less AppendEntries of leader 1 in term 1 (what a heartbeat or a commit notice carries).
fn entryless_append() -> openraft::raft::AppendEntriesRequest<shale_raft::TypeConfig> {
    openraft::raft::AppendEntriesRequest {
        vote: shale_raft::types::Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    }
}

type ResponseStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::AppendEntriesResponse, tonic::Status>> + Send>>;
type MultiplexStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::MultiplexResponse, tonic::Status>> + Send>>;

fn success() -> pb::AppendEntriesResponse {
    pb::AppendEntriesResponse {
        outcome: pb::append_entries_response::Outcome::Success as i32,
        last_log_id: None,
        rejected_by: None,
    }
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for HalfClosingPeer {
    async fn vote(
        &self,
        _: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("vote"))
    }

    async fn append_entries(
        &self,
        _: tonic::Request<pb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("append_entries"))
    }

    type StreamAppendStream = ResponseStream;

    async fn stream_append(
        &self,
        request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        let mut input = request.into_inner();
        let first = input.next().await.ok_or_else(|| tonic::Status::invalid_argument("empty stream"))??;
        let received = self.received.clone();
        let _ = received.send(first);
        tokio::spawn(async move {
            while let Some(Ok(m)) = input.next().await {
                let _ = received.send(m);
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter([Ok(success())]))))
    }

    type MultiplexStream = MultiplexStream;

    /// Answers each session's first request and ends the session in the same message; reports
    /// every request it reads, and keeps the call open.
    async fn multiplex(
        &self,
        request: tonic::Request<tonic::Streaming<pb::MultiplexRequest>>,
    ) -> Result<tonic::Response<MultiplexStream>, tonic::Status> {
        use tokio_stream::StreamExt;
        let mut input = request.into_inner();
        let received = self.received.clone();
        let lone = self.lone.clone();
        let (answers, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut answered = std::collections::HashSet::new();
            while let Some(Ok(message)) = input.next().await {
                for item in message.items {
                    if item.open && item.once {
                        lone.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let Some(append) = item.append else { continue };
                    let _ = received.send(append);
                    if answered.insert(item.session) {
                        let _ = answers.send(Ok(pb::MultiplexResponse {
                            items: vec![
                                pb::SessionResponse { session: item.session, append: Some(success()), end: None },
                                pb::SessionResponse {
                                    session: item.session,
                                    append: None,
                                    end: Some(pb::SessionEnd::default()),
                                },
                            ],
                        }));
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(queued))))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<tonic::Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<tonic::Response<pb::InstallSnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("install_snapshot"))
    }

    async fn transfer_leader(
        &self,
        _: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("transfer_leader"))
    }

    async fn read_log(
        &self,
        _: tonic::Request<pb::ReadLogRequest>,
    ) -> Result<tonic::Response<pb::ReadLogResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("read_log"))
    }

    async fn node_heartbeat(
        &self,
        _: tonic::Request<pb::NodeHeartbeatRequest>,
    ) -> Result<tonic::Response<pb::NodeHeartbeatResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("node_heartbeat"))
    }

    async fn read_index(
        &self,
        _: tonic::Request<pb::ReadIndexRequest>,
    ) -> Result<tonic::Response<pb::ReadIndexResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("read_index"))
    }
}

/// Regression: openraft's request streams of one replication target share their state, so a
/// request stream still pulled after its session ended steals the next session's entries (seen
/// as a follower that never received a committed entry after it restarted, on an idle group).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_replication_session_pulls_no_more_requests() {
    use futures::StreamExt;
    use openraft::network::{RPCOption, RaftNetworkV2};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    init_tracing();
    let (addr, mut received, _) = half_closing_peer().await;
    let (_router, mut peer) = client_of_group_9(addr).await;
    let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let input = tokio_stream::wrappers::UnboundedReceiverStream::new(requests_rx).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    requests_tx.send(entryless_append()).unwrap();
    let option = RPCOption::new(Duration::from_secs(1));
    let mut responses = peer.stream_append(input, option).await.expect("session opened");
    assert!(matches!(responses.next().await, Some(Ok(Ok(None)))), "the first request is answered");
    assert!(responses.next().await.is_none(), "the peer ended the response");
    drop(responses);
    assert!(received.recv().await.is_some(), "the peer got the first request");

    // The session is over: what the replication core produces next belongs to the next session.
    // The ended request stream may already be dropped (then nothing can pull it: the send fails).
    let _ = requests_tx.send(entryless_append());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pulled.load(Ordering::SeqCst), 1, "a finished session pulled another request");
    assert!(received.try_recv().is_err(), "a finished session sent another request");
}

/// openraft's per-group heartbeat is a replication stream of one request: it goes as one lone
/// (`open` + `once`) request on the peer's multiplexed call, not as a unary AppendEntries (which
/// this peer does not serve), and its answer comes back as the stream's one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_goes_on_the_multiplexed_call() {
    use futures::StreamExt;
    use openraft::network::{RPCOption, RaftNetworkV2};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    init_tracing();
    let (addr, mut received, lone) = half_closing_peer().await;
    let (router, mut peer) = client_of_group_9(addr).await;
    for round in 1..=2 {
        let input = Box::pin(futures::stream::once(futures::future::ready(entryless_append())));
        let mut responses =
            peer.stream_append(input, RPCOption::new(Duration::from_secs(1))).await.expect("a lone request is sent");
        assert!(matches!(responses.next().await, Some(Ok(Ok(None)))), "round {round}: the heartbeat is answered");
        assert!(responses.next().await.is_none(), "round {round}: one result");
        assert!(received.recv().await.is_some(), "round {round}: the peer read it");
        assert_eq!(lone.load(Ordering::SeqCst), round, "round {round}: as a lone request on the call");
    }
    assert_eq!(router.peers().counters().lone_append_messages.load(Ordering::SeqCst), 2);
}
