//! The gRPC server refuses what it must not hand to openraft: unknown groups (NOT_FOUND, which
//! senders treat as unreachable), undecodable entries, and damaged or inconsistent snapshots.

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
    let group =
        RaftGroup::start(1, GroupId(4), Arc::new(MemoryStorage::new()), app, &router, group_config()).await.unwrap();
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
