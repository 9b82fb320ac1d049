//! The serving side of the Raft transport: one gRPC service for every local group, dispatching on
//! `group_id` to the node's [`LocalGroups`].
//! A message for a group this node does not run is answered `NOT_FOUND`, which the sender treats
//! as "unreachable" and retries with backoff.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use openraft::Raft;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use openraft::storage::Snapshot;
use tonic::codec::Codec;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::group::{LocalGroups, RaftGroup};
use crate::heartbeat::NodeHeartbeats;
use crate::network::body_messages::{MethodFromBody, ServeMethod, serve_call};
use crate::network::codec::RaftCodec;
use crate::network::convert::{self, ConvertError};
use crate::network::guard::{self, ERROR_CODE_KEY, KnownNodes, REFUSED_CODE, Receiver, Refusal};
use crate::network::multiplex;
use crate::network::pb;
use crate::network::pb::raft_service_server::{RaftService, RaftServiceServer};
use crate::network::peers::Peers;
use crate::network::tls;
use crate::snapshot::SnapshotData;
use crate::state_machine::GroupStateMachine;
use crate::types::{GroupId, NodeId, SnapshotMeta, StoredMembership, TypeConfig};

/// The tonic service implementation; build it with [`crate::Router::grpc_service`].
#[derive(Debug, Clone)]
pub struct RaftGrpcService {
    groups: Arc<LocalGroups>,
    peers: Arc<Peers>,
    /// RPCs refused at the edge ([`guard`]), for the node's metrics.
    refused: Arc<AtomicU64>,
    /// Paces the WARN lines of refusals (a flood of hostile RPCs must not flood the log).
    warn_pace: Arc<WarnPace>,
    /// The receiving side of node heartbeats.
    heartbeats: Arc<NodeHeartbeats>,
}

/// The answers of a multiplexed call, as they are sent.
pub type MultiplexAnswers = Pin<Box<dyn Stream<Item = Result<pb::MultiplexResponse, Status>> + Send>>;

/// The path of the `Multiplex` method, which [`RaftServer`] serves itself.
const MULTIPLEX_PATH: &str = "/shale.raft.v1.RaftService/Multiplex";

/// The node's Raft gRPC service; mount it in any tonic `Server` (build it with
/// [`crate::Router::grpc_service`]). Every method is tonic's generated server over
/// [`RaftGrpcService`], except `Multiplex` (the replication path of every group): its requests are
/// read straight from the request's HTTP/2 body
/// ([`BodyMessages`](crate::network::body_messages::BodyMessages)), so a follower's entries are
/// slices of the frames they arrived in instead of being copied into tonic's receive buffer and
/// again into a fresh one each time that buffer is full (README "Entries decoded where they
/// arrived").
pub type RaftServer = MethodFromBody<RaftServiceServer<RaftGrpcService>>;

/// [`RaftServer`] over `service`, taking and sending messages of at most `max_message_bytes`.
pub(crate) fn raft_server(service: RaftGrpcService, max_message_bytes: usize) -> RaftServer {
    let generated = RaftServiceServer::new(service.clone())
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let serve: ServeMethod = Arc::new(move |request| {
        let service = service.clone();
        Box::pin(async move { Ok(service.serve_multiplex(request, max_message_bytes, max_message_bytes).await) })
    });
    MethodFromBody::new(generated, MULTIPLEX_PATH, serve)
}

/// How many streams a peer may reset before this server accepted them, per connection, on a
/// server that serves [`RaftGrpcService`] (`tonic::transport::Server::http2_max_pending_accept_reset_streams`).
/// h2's default (20) is a defence against rapid-reset floods from clients; past it the whole
/// connection is closed (GOAWAY `ENHANCE_YOUR_CALM`). Between nodes that connection carries every
/// group's replication, and a busy node has not accepted many of its peers' short RPCs yet when
/// they are given up: the senders do not reset them any more (`network::client`), and this bound
/// keeps an older or misbehaving peer from tearing the connection down for a burst of them.
pub const PEER_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// The largest HTTP/2 frame a server of [`RaftGrpcService`] and a peer's channel accept
/// (`max_frame_size`; h2's default is 16 KiB). A message is sent in frames of at most what its
/// receiver accepts, and every frame costs both sides a frame header, a flow-control step and a
/// wake-up of the stream's reader: a 128 KiB produce batch or AppendEntries went as nine frames.
/// With 1 MiB frames it goes as one, which cut the nodes' CPU per record by about a tenth on the
/// development machine (README "One frame per message").
pub const HTTP2_MAX_FRAME_BYTES: u32 = 1 << 20;

/// The shortest time between two WARN lines about refused RPCs; the refusals in between are
/// counted and the next line says how many were not logged.
pub const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(1);

/// At most one WARN line per [`REFUSAL_WARN_INTERVAL`].
#[derive(Debug, Default)]
struct WarnPace {
    last: parking_lot::Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnPace {
    /// `Some(n)`: log now, `n` refusals since the last line were not logged. `None`: count this one.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_WARN_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

impl RaftGrpcService {
    pub(crate) fn new(
        groups: Arc<LocalGroups>,
        peers: Arc<Peers>,
        refused: Arc<AtomicU64>,
        heartbeats: Arc<NodeHeartbeats>,
    ) -> Self {
        Self { groups, peers, refused, warn_pace: Arc::default(), heartbeats }
    }

    /// What the receiving group checks a message against: this node, the group, and the nodes of
    /// the group's membership and of the metadata group's (see [`KnownNodes`]).
    fn receiver(&self, group: GroupId, raft: &Raft<TypeConfig, GroupStateMachine>) -> Receiver {
        let mut nodes = BTreeSet::new();
        let mut add = |raft: &Raft<TypeConfig, GroupStateMachine>| {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            nodes.extend(m.membership_config.membership().nodes().map(|(id, _)| *id));
        };
        add(raft);
        if group != GroupId::METADATA
            && let Some(meta) = self.groups.get(GroupId::METADATA)
        {
            add(meta.raft());
        }
        let known = KnownNodes((!nodes.is_empty()).then_some(nodes));
        Receiver { node: self.peers.node_id(), group, known }
    }

    /// The node the peer's TLS certificate names, when this node checks certificates (TLS on):
    /// `Ok(None)` without TLS; refused when TLS is on and the peer presented no node certificate.
    fn certified<T>(&self, request: &Request<T>) -> Result<Option<NodeId>, Refusal> {
        if self.peers.config().tls.is_none() {
            return Ok(None);
        }
        let certs = request.peer_certs().ok_or(Refusal::NoNodeCertificate)?;
        let leaf = certs.first().ok_or(Refusal::NoNodeCertificate)?;
        match tls::certified_node(leaf.as_ref()) {
            Ok(Some(node)) => Ok(Some(node)),
            Ok(None) => Err(Refusal::NoNodeCertificate),
            Err(e) => Err(Refusal::BadCertificate { reason: e.to_string() }),
        }
    }

    /// Opens a multiplexed call whose requests `request` carries: its sessions run on a task of
    /// their own, and the answer is the stream of their batched answers.
    fn open_multiplex<S>(&self, request: Request<S>) -> Result<Response<MultiplexAnswers>, Status>
    where
        S: Stream<Item = Result<pb::MultiplexRequest, Status>> + Send + 'static,
    {
        let peer = request.remote_addr();
        // A refused certificate refuses the whole call; every request is checked against it.
        let certified = self.certified(&request).map_err(|r| self.refuse("Multiplex", 0, peer, &r))?;
        let (answers, queued) = tokio::sync::mpsc::channel(MULTIPLEX_ANSWER_QUEUE);
        // The call ends when the node stops: its sessions' groups are gone, and a peer must not
        // keep sending into a call that a stopped node's service still holds (a graceful server
        // stop lets open calls run on).
        let input = request.into_inner().take_until(self.node_stopping());
        tokio::spawn(self.clone().demultiplex(certified, peer, input, answers));
        let output = multiplex::batches(queued, multiplex::MAX_ITEMS_PER_MESSAGE, usize::MAX, |_| 0)
            .map(|items| Ok(pb::MultiplexResponse { items }))
            .take_until(self.node_stopping());
        Ok(Response::new(Box::pin(output)))
    }

    /// A `Multiplex` call whose requests are read from the HTTP/2 body as it arrives
    /// ([`BodyMessages`](crate::network::body_messages::BodyMessages): an entry is a slice of the
    /// frame it came in), by [`serve_call`].
    async fn serve_multiplex(
        self,
        request: http::Request<tonic::body::Body>,
        max_decoding_bytes: usize,
        max_encoding_bytes: usize,
    ) -> http::Response<tonic::body::Body> {
        let encoder = RaftCodec::<pb::MultiplexResponse, pb::MultiplexRequest>::default().encoder();
        serve_call(request, max_decoding_bytes, encoder, max_encoding_bytes, |request| {
            std::future::ready(self.open_multiplex(request))
        })
        .await
    }

    /// Counts and logs a refused RPC and builds its status: `PERMISSION_DENIED` with
    /// [`REFUSED_CODE`] in [`ERROR_CODE_KEY`].
    fn refuse(&self, rpc: &'static str, group: u64, peer: Option<SocketAddr>, refusal: &Refusal) -> Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(not_logged) = self.warn_pace.admit() {
            tracing::warn!(rpc, group, peer = ?peer, reason = %refusal, not_logged, "raft rpc refused");
        }
        refused_status(refusal)
    }

    /// The local group `group`, or `NOT_FOUND` (which the sender treats as unreachable).
    fn group(&self, group: u64) -> Result<Arc<RaftGroup>, Status> {
        let id = GroupId(group);
        self.groups
            .get(id)
            .ok_or_else(|| Status::not_found(format!("group {id} is not running on node {}", self.peers.node_id())))
    }

    /// The local group's Raft handle, once the group is awake: a message for a quiet group wakes
    /// it first (`RaftGroup::wake_for_message`; a quiet follower renews its leader lease before a
    /// vote is judged against it).
    async fn raft(&self, group: u64) -> Result<Raft<TypeConfig, GroupStateMachine>, Status> {
        let g = self.group(group)?;
        if g.is_quiet() {
            g.wake_for_message().await;
        }
        Ok(g.raft().clone())
    }

    /// The local group a read RPC (ReadLog, ReadIndex) names, with the request: with TLS, the
    /// certified peer must be a member of the group (`guard::check_reader`), else refused.
    fn reader_group<T>(
        &self,
        rpc: &'static str,
        request: Request<T>,
        group_of: impl Fn(&T) -> u64,
    ) -> Result<(Arc<RaftGroup>, T), Status> {
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let req = request.into_inner();
        let id = group_of(&req);
        let group = self.group(id)?;
        certified
            .and_then(|c| guard::check_reader(&self.receiver(GroupId(id), group.raft()), c))
            .map_err(|r| self.refuse(rpc, id, peer, &r))?;
        Ok((group, req))
    }

    /// What a node heartbeat is checked against: this node and the metadata group's members as
    /// it knows them (a node running no metadata group checks the named groups one by one).
    fn heartbeat_receiver(&self) -> Receiver {
        match self.groups.get(GroupId::METADATA) {
            Some(meta) => self.receiver(GroupId::METADATA, meta.raft()),
            None => Receiver { node: self.peers.node_id(), group: GroupId::METADATA, known: KnownNodes(None) },
        }
    }
}

/// The status of a refused RPC.
pub fn refused_status(refusal: &Refusal) -> Status {
    let mut map = MetadataMap::new();
    map.insert(ERROR_CODE_KEY, REFUSED_CODE.parse().expect("the code is ASCII"));
    Status::with_metadata(Code::PermissionDenied, refusal.to_string(), map)
}

fn bad(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft group stopped: {e}"))
}

type AppendStream = Pin<Box<dyn Stream<Item = Result<pb::AppendEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftGrpcService {
    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let req = request.into_inner();
        let raft = self.raft(req.group_id).await?;
        let vote_req = convert::vote_request_from_pb(&req).map_err(bad)?;
        certified
            .and_then(|c| guard::check_identity(c, vote_req.vote.leader_id.node_id))
            .and_then(|()| guard::check_vote(&self.receiver(GroupId(req.group_id), &raft), &vote_req))
            .map_err(|r| self.refuse("Vote", req.group_id, peer, &r))?;
        let resp = if req.pre_vote { raft.pre_vote(vote_req).await } else { raft.vote(vote_req).await };
        Ok(Response::new(convert::vote_response_to_pb(&resp.map_err(fatal)?)))
    }

    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let req = request.into_inner();
        self.append_one("AppendEntries", certified, peer, req).await.map(Response::new)
    }

    type StreamAppendStream = AppendStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let peer = request.remote_addr();
        // A refused certificate refuses the whole stream.
        let certified = self.certified(&request).map_err(|r| self.refuse("StreamAppend", 0, peer, &r))?;
        let mut input = request.into_inner();
        // The group is named by every message; the first one picks the group for the stream.
        let Some(first) = input.next().await else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let output = self.append_session("StreamAppend", certified, peer, first?, input).await?;
        Ok(Response::new(output))
    }

    type MultiplexStream = MultiplexAnswers;

    /// Served by [`RaftServer`] from the request's body directly; this path (tonic's receive
    /// buffer) is taken only where the generated server is mounted on its own.
    async fn multiplex(
        &self,
        request: Request<Streaming<pb::MultiplexRequest>>,
    ) -> Result<Response<Self::MultiplexStream>, Status> {
        self.open_multiplex(request)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotRequest>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let mut input = request.into_inner();
        let first = input.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let Some(pb::install_snapshot_request::Payload::Meta(meta)) = first.payload else {
            return Err(Status::invalid_argument("the first snapshot message must be its meta"));
        };
        let raft = self.raft(meta.group_id).await?;
        {
            // The sender and the log ids are checked before any data is read.
            let vote = convert::required_vote_from_pb(meta.vote.as_ref(), "vote").map_err(bad)?;
            let last = convert::opt_from_pb(meta.last_log_id.as_ref());
            let membership = convert::opt_from_pb(meta.last_membership_log_id.as_ref());
            certified
                .and_then(|c| guard::check_identity(c, vote.leader_id.node_id))
                .and_then(|()| {
                    guard::check_snapshot(
                        &self.receiver(GroupId(meta.group_id), &raft),
                        &vote,
                        last.as_ref(),
                        membership.as_ref(),
                    )
                })
                .map_err(|r| self.refuse("InstallSnapshot", meta.group_id, peer, &r))?;
        }
        let max = self.peers.config().max_snapshot_bytes;
        if meta.data_len > max {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {} bytes is over the limit of {max} bytes",
                meta.data_len
            )));
        }
        // Grow with what actually arrives; do not trust the announced length for the allocation.
        let mut data = BytesMut::with_capacity(meta.data_len.min(64 << 20) as usize);
        while let Some(msg) = input.next().await {
            match msg?.payload {
                Some(pb::install_snapshot_request::Payload::Chunk(chunk)) => {
                    if data.len() as u64 + chunk.len() as u64 > meta.data_len {
                        return Err(Status::invalid_argument(format!(
                            "snapshot data exceeds its announced length {}",
                            meta.data_len
                        )));
                    }
                    data.extend_from_slice(&chunk);
                }
                _ => return Err(Status::invalid_argument("snapshot messages after the first must be chunks")),
            }
        }
        if data.len() as u64 != meta.data_len {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {} bytes",
                data.len(),
                meta.data_len
            )));
        }
        let crc = crc32fast::hash(&data);
        if crc != meta.data_crc32 {
            return Err(Status::data_loss(format!(
                "snapshot data CRC32 is {crc:#010x}, the sender announced {:#010x}",
                meta.data_crc32
            )));
        }
        let vote = convert::required_vote_from_pb(meta.vote.as_ref(), "vote").map_err(bad)?;
        let last_log_id = convert::opt_from_pb(meta.last_log_id.as_ref());
        let membership = convert::membership_from_bytes(&meta.last_membership).map_err(bad)?;
        let snapshot_meta = SnapshotMeta {
            last_log_id,
            last_membership: StoredMembership::new(
                convert::opt_from_pb(meta.last_membership_log_id.as_ref()),
                membership,
            ),
        };
        let data = SnapshotData::from_wire(last_log_id.map(|l| l.index), data.freeze())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // openraft panics on a snapshot no correct leader can send; refuse such input here.
        let state = data.state().map_err(|e| Status::invalid_argument(e.to_string()))?;
        if state.last_log_id != last_log_id
            || state.membership_log_id != *snapshot_meta.last_membership.log_id()
            || state.membership != *snapshot_meta.last_membership.membership()
        {
            return Err(Status::invalid_argument("snapshot data disagrees with its meta"));
        }
        if last_log_id.is_some_and(|l| l.leader_id > vote.leader_id) {
            return Err(Status::invalid_argument("snapshot last log id is beyond the sender's vote"));
        }
        let resp =
            raft.install_full_snapshot(vote, Snapshot { meta: snapshot_meta, snapshot: data }).await.map_err(fatal)?;
        Ok(Response::new(pb::InstallSnapshotResponse { vote: Some(convert::vote_to_pb(&resp.vote)) }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        use openraft::raft::TransferLeaderError;
        use pb::transfer_leader_response::Outcome;
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let req = request.into_inner();
        let raft = self.raft(req.group_id).await?;
        let from = convert::required_vote_from_pb(req.from_leader.as_ref(), "from_leader").map_err(bad)?;
        let last = convert::opt_from_pb(req.last_log_id.as_ref());
        certified
            .and_then(|c| guard::check_identity(c, from.leader_id.node_id))
            .and_then(|()| {
                guard::check_transfer(
                    &self.receiver(GroupId(req.group_id), &raft),
                    &from,
                    req.to_node_id,
                    last.as_ref(),
                )
            })
            .map_err(|r| self.refuse("TransferLeader", req.group_id, peer, &r))?;
        let rpc = TransferLeaderRequest::new(from, req.to_node_id, convert::opt_from_pb(req.last_log_id.as_ref()));
        let resp = raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        let out = match resp {
            Ok(()) => pb::TransferLeaderResponse { outcome: Outcome::Ok as i32, ..Default::default() },
            Err(TransferLeaderError::VoteChanged { expected, actual }) => pb::TransferLeaderResponse {
                outcome: Outcome::VoteChanged as i32,
                expected_vote: Some(convert::vote_to_pb(&expected)),
                actual_vote: Some(convert::vote_to_pb(&actual)),
                ..Default::default()
            },
            Err(TransferLeaderError::LogNotFlushed { expected, actual }) => pb::TransferLeaderResponse {
                outcome: Outcome::LogNotFlushed as i32,
                expected_log_id: convert::opt_to_pb(expected.as_ref()),
                actual_log_id: convert::opt_to_pb(actual.as_ref()),
                ..Default::default()
            },
        };
        Ok(Response::new(out))
    }

    async fn read_log(&self, request: Request<pb::ReadLogRequest>) -> Result<Response<pb::ReadLogResponse>, Status> {
        let (group, req) = self.reader_group("ReadLog", request, |r| r.group_id)?;
        let records = crate::repair::read_local(&group, req.from, req.to, req.max_bytes).await?;
        Ok(Response::new(pb::ReadLogResponse { records }))
    }

    async fn node_heartbeat(
        &self,
        request: Request<pb::NodeHeartbeatRequest>,
    ) -> Result<Response<pb::NodeHeartbeatResponse>, Status> {
        let peer = request.remote_addr();
        let certified = self.certified(&request);
        let req = request.into_inner();
        certified
            .and_then(|c| guard::check_identity(c, req.from_node_id))
            .and_then(|()| guard::check_node_heartbeat(&self.heartbeat_receiver(), &req))
            .map_err(|r| self.refuse("NodeHeartbeat", 0, peer, &r))?;
        Ok(Response::new(self.heartbeats.receive(req)))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        let (group, req) = self.reader_group("ReadIndex", request, |r| r.group_id)?;
        let limit = Duration::from_millis(self.peers.config().request_timeout_ms);
        let index = tokio::time::timeout(limit, group.ensure_linearizable())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("group {}: read index not confirmed within {limit:?}", req.group_id))
            })?
            .map_err(|e| match e {
                e @ crate::RaftError::NotLeader { .. } => Status::failed_precondition(e.to_string()),
                e => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(pb::ReadIndexResponse { index }))
    }
}

/// Answers a multiplexed call's sessions queue (all sessions together) before they wait for the
/// call's writer.
const MULTIPLEX_ANSWER_QUEUE: usize = 4096;

impl RaftGrpcService {
    /// One AppendEntries on its own (a unary call, or a `once` request of a multiplexed call):
    /// checked at the edge ([`guard`]) against the peer's certificate (`certified`), then handed
    /// to the group's openraft.
    async fn append_one(
        &self,
        rpc_name: &'static str,
        certified: Result<Option<NodeId>, Refusal>,
        peer: Option<SocketAddr>,
        req: pb::AppendEntriesRequest,
    ) -> Result<pb::AppendEntriesResponse, Status> {
        let raft = self.raft(req.group_id).await?;
        let rpc = convert::append_request_from_pb(&req).map_err(bad)?;
        certified
            .and_then(|c| guard::check_identity(c, rpc.vote.leader_id.node_id))
            .and_then(|()| guard::check_append(&self.receiver(GroupId(req.group_id), &raft), &rpc))
            .map_err(|r| self.refuse(rpc_name, req.group_id, peer, &r))?;
        if !rpc.entries.is_empty()
            && let Ok(g) = self.group(req.group_id)
        {
            g.appends_released().await;
        }
        let resp = raft.append_entries(rpc).await.map_err(fatal)?;
        Ok(convert::append_response_to_pb(&resp))
    }

    /// One group's replication session: `first` picks the group (every later request must name
    /// it too), and each request is checked at the edge ([`guard`]) before openraft sees it. The
    /// answers come in the order of the requests; a request that does not decode, names another
    /// group or is refused ends the requests (openraft then ends the answers, and the leader
    /// starts a new session).
    async fn append_session(
        &self,
        rpc_name: &'static str,
        certified: Option<NodeId>,
        peer: Option<SocketAddr>,
        first: pb::AppendEntriesRequest,
        input: impl Stream<Item = Result<pb::AppendEntriesRequest, Status>> + Send + 'static,
    ) -> Result<AppendStream, Status> {
        let group = first.group_id;
        let (raft, stopped, input_stopped, held) = {
            let g = self.group(group)?;
            if g.is_quiet() {
                g.wake_for_message().await;
            }
            (g.raft().clone(), g.stopped(), g.stopped(), Arc::downgrade(&g))
        };
        let raft_for_checks = raft.clone();
        let first = convert::append_request_from_pb(&first).map_err(bad)?;
        guard::check_identity(certified, first.vote.leader_id.node_id)
            .and_then(|()| guard::check_append(&self.receiver(GroupId(group), &raft), &first))
            .map_err(|r| self.refuse(rpc_name, group, peer, &r))?;
        let this = self.clone();
        let rest = input.scan((), move |_, item| {
            let next = match item {
                Ok(m) if m.group_id == group => convert::append_request_from_pb(&m).ok().and_then(|rpc| {
                    let checked = guard::check_identity(certified, rpc.vote.leader_id.node_id)
                        .and_then(|()| guard::check_append(&this.receiver(GroupId(group), &raft_for_checks), &rpc));
                    match checked {
                        Ok(()) => Some(rpc),
                        Err(r) => {
                            let _ = this.refuse(rpc_name, group, peer, &r);
                            None
                        }
                    }
                }),
                Ok(m) => {
                    tracing::warn!(
                        group,
                        other = m.group_id,
                        rpc = rpc_name,
                        "replication session message for another group; ending the session"
                    );
                    None
                }
                Err(_) => None,
            };
            futures::future::ready(next)
        });
        // The answers end when the group shuts down, so a node stopping its server is not held
        // up by a leader's open replication session. The requests end then too: openraft keeps
        // reading its input until a message fails to reach the stopped core, and meanwhile the
        // leader would keep sending entries into a session nobody answers.
        let requests = futures::stream::once(futures::future::ready(first))
            .chain(rest)
            .then(move |rpc| {
                let held = held.clone();
                async move {
                    if !rpc.entries.is_empty()
                        && let Some(g) = held.upgrade()
                    {
                        g.appends_released().await;
                    }
                    rpc
                }
            })
            .take_until(turned_true(input_stopped));
        let output = raft
            .stream_append(requests)
            .map(|r| match r {
                Ok(result) => Ok(convert::stream_result_to_pb(&result)),
                Err(e) => Err(fatal(e)),
            })
            .take_until(turned_true(stopped));
        Ok(Box::pin(output))
    }

    /// Resolves once the node is stopping ([`LocalGroups::closing`]).
    fn node_stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        turned_true(self.groups.closing())
    }

    /// Reads a multiplexed call: a request marked `open` starts its session
    /// ([`Self::run_session`]), and each later request goes to its session's queue, in order; a
    /// request marked `open` and `once` is answered on its own ([`Self::append_one`]) by one item
    /// carrying the answer and the end, and leaves no session. A
    /// request of a session not running (one already over, here or by the sender's `end`) is
    /// dropped: the sender hears of the end from the session's `end` item. When the call's
    /// requests end (or fail), every session's requests end with them.
    async fn demultiplex(
        self,
        certified: Option<NodeId>,
        peer: Option<SocketAddr>,
        input: impl Stream<Item = Result<pb::MultiplexRequest, Status>> + Send + 'static,
        answers: tokio::sync::mpsc::Sender<pb::SessionResponse>,
    ) {
        struct Queue {
            tx: tokio::sync::mpsc::UnboundedSender<pb::AppendEntriesRequest>,
            queued: Arc<AtomicU64>,
        }
        let mut input = std::pin::pin!(input);
        let mut sessions: HashMap<u64, Queue> = HashMap::new();
        while let Some(Ok(message)) = input.next().await {
            for item in message.items {
                let end = |status: Status| pb::SessionResponse {
                    session: item.session,
                    append: None,
                    end: Some(session_end(&status)),
                };
                if item.end {
                    sessions.remove(&item.session);
                    continue;
                }
                let Some(append) = item.append else {
                    // Malformed: the session ends (its queue is dropped) with an answer saying why.
                    sessions.remove(&item.session);
                    let _ = answers
                        .send(end(Status::invalid_argument("a session request with neither append nor end")))
                        .await;
                    continue;
                };
                if item.once {
                    // A lone request: answered like a unary AppendEntries, no session kept. It
                    // must open its session (an id the receiver does not run).
                    if !item.open || sessions.remove(&item.session).is_some() {
                        let _ = answers
                            .send(end(Status::invalid_argument("a once request must open a session of its own")))
                            .await;
                        continue;
                    }
                    tokio::spawn(self.clone().answer_once(certified, peer, item.session, append, answers.clone()));
                    continue;
                }
                if item.open {
                    if sessions.remove(&item.session).is_some() {
                        let _ = answers.send(end(Status::invalid_argument("a session opened twice"))).await;
                        continue;
                    }
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let queued = Arc::new(AtomicU64::new(0));
                    sessions.insert(item.session, Queue { tx, queued: queued.clone() });
                    let rest = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(move |r| {
                        queued.fetch_sub(1, Ordering::Relaxed);
                        Ok(r)
                    });
                    tokio::spawn(self.clone().run_session(
                        certified,
                        peer,
                        item.session,
                        append,
                        rest,
                        answers.clone(),
                    ));
                    continue;
                }
                let Some(queue) = sessions.get(&item.session) else { continue };
                if queue.queued.load(Ordering::Relaxed) >= multiplex::SESSION_QUEUE_LIMIT {
                    // The sender ignores its credit: end the session rather than buffer without bound.
                    sessions.remove(&item.session);
                    let _ = answers
                        .send(end(Status::resource_exhausted(format!(
                            "more than {} requests of session {} queued",
                            multiplex::SESSION_QUEUE_LIMIT,
                            item.session
                        ))))
                        .await;
                    continue;
                }
                queue.queued.fetch_add(1, Ordering::Relaxed);
                if queue.tx.send(append).is_err() {
                    sessions.remove(&item.session);
                }
            }
        }
    }

    /// Answers a lone (`once`) request of a multiplexed call as a unary AppendEntries: one item
    /// with the answer and the end, or only the end with the status.
    async fn answer_once(
        self,
        certified: Option<NodeId>,
        peer: Option<SocketAddr>,
        session: u64,
        request: pb::AppendEntriesRequest,
        answers: tokio::sync::mpsc::Sender<pb::SessionResponse>,
    ) {
        let answer = match self.append_one("Multiplex", Ok(certified), peer, request).await {
            Ok(append) => pb::SessionResponse { session, append: Some(append), end: Some(pb::SessionEnd::default()) },
            Err(status) => pb::SessionResponse { session, append: None, end: Some(session_end(&status)) },
        };
        let _ = answers.send(answer).await;
    }

    /// Runs one session of a multiplexed call and queues its answers, then its end.
    async fn run_session(
        self,
        certified: Option<NodeId>,
        peer: Option<SocketAddr>,
        session: u64,
        first: pb::AppendEntriesRequest,
        rest: impl Stream<Item = Result<pb::AppendEntriesRequest, Status>> + Send + 'static,
        answers: tokio::sync::mpsc::Sender<pb::SessionResponse>,
    ) {
        let end = match self.append_session("Multiplex", certified, peer, first, rest).await {
            Ok(mut output) => loop {
                match output.next().await {
                    Some(Ok(append)) => {
                        let answer = pb::SessionResponse { session, append: Some(append), end: None };
                        if answers.send(answer).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) => break session_end(&status),
                    None => break pb::SessionEnd::default(),
                }
            },
            Err(status) => session_end(&status),
        };
        let _ = answers.send(pb::SessionResponse { session, append: None, end: Some(end) }).await;
    }
}

/// Resolves once `flag` is true (or its sender is gone).
async fn turned_true(mut flag: tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|f| *f).await;
}

/// A session's end item for `status`.
fn session_end(status: &Status) -> pb::SessionEnd {
    pb::SessionEnd { code: status.code() as i32, message: status.message().to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_warnings_are_paced_and_count_what_they_skip() {
        let pace = WarnPace::default();
        assert_eq!(pace.admit(), Some(0), "the first refusal is logged");
        assert_eq!(pace.admit(), None);
        assert_eq!(pace.admit(), None);
        *pace.last.lock() = Some(Instant::now() - REFUSAL_WARN_INTERVAL);
        assert_eq!(pace.admit(), Some(2), "the next line says how many were not logged");
    }
}
