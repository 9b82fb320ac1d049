//! The gRPC client side: openraft's network factory for one group, sending over the node's shared
//! per-peer channels. Transport failures map to openraft's `Unreachable` (back off, retry later) or
//! `NetworkError` (retry now); a peer that does not run the group answers `NOT_FOUND` -> unreachable.
//!
//! Every RPC runs on a task of its own ([`detached`], [`PeerClient::stream_append`]): when openraft
//! stops waiting for one (a heartbeat gets one heartbeat interval, a vote the election timeout),
//! the call goes on to its end instead of being reset. A busy peer has often not even accepted
//! such a stream yet, and HTTP/2 servers (h2) answer more than a few resets of streams not yet
//! accepted with GOAWAY (`ENHANCE_YOUR_CALM`, the rapid-reset defence), which closes the node's one
//! connection to that peer: every group's replication, heartbeats and votes with it at once (issue
//! 15: hundreds of groups waking on a loaded machine did exactly that, over and over).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderError,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::storage::Snapshot;
use openraft::{OptionalSend, RPCTypes};
use tonic::Code;
use tonic::transport::Channel;

use crate::network::commit_notices::CommitNotices;
use crate::network::convert;
use crate::network::multiplex;
use crate::network::pb::{self, raft_service_client::RaftServiceClient};
use crate::network::peers::Peers;
use crate::snapshot::SnapshotData;
use crate::types::{GroupId, LeaderId, Node, NodeId, TypeConfig, Vote};

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct GroupNetworkFactory {
    peers: Arc<Peers>,
    group: GroupId,
}

impl GroupNetworkFactory {
    /// A factory sending group `group`'s messages through the channels of `peers`.
    pub fn new(peers: Arc<Peers>, group: GroupId) -> Self {
        Self { peers, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        let tls_generation = self.peers.tls_generation();
        PeerClient {
            group: self.group,
            me: self.peers.node_id(),
            target,
            addr: node.addr.clone(),
            client: raft_client(&self.peers, &node.addr),
            peers: self.peers.clone(),
            tls_generation,
            request_timeout: Duration::from_millis(self.peers.config().request_timeout_ms),
            chunk_bytes: self.peers.config().snapshot_chunk_bytes,
            retry_not_before: None,
            retry_pause: MIN_RETRY_PAUSE,
        }
    }
}

pub(crate) fn raft_client(peers: &Peers, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
    let max = peers.config().max_message_bytes;
    peers.channel(addr).map(|c| RaftServiceClient::new(c).max_decoding_message_size(max).max_encoding_message_size(max))
}

/// Runs `rpc` on a task of its own and waits `wait` for its outcome (`None`: not in time, or the
/// task failed). When the wait ends first the call is not cancelled: it runs to its end, or until
/// `limit`, so the peer does not see the stream reset (see the module docs).
pub(crate) async fn detached<T: Send + 'static>(
    wait: Duration,
    limit: Duration,
    rpc: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    let task = tokio::spawn(tokio::time::timeout(limit.max(wait), rpc));
    match tokio::time::timeout(wait, task).await {
        Ok(Ok(Ok(out))) => Some(out),
        _ => None,
    }
}

/// Sends one group's messages to one peer.
#[derive(Debug)]
pub struct PeerClient {
    group: GroupId,
    me: NodeId,
    target: NodeId,
    addr: String,
    /// `Err` when the peer's address does not parse (reported as unreachable on every call).
    client: Result<RaftServiceClient<Channel>, String>,
    /// Where `client` came from, and [`Peers::tls_generation`] then: after a certificate reload
    /// the next RPC takes a new channel (which presents the new certificate).
    peers: Arc<Peers>,
    tls_generation: u64,
    request_timeout: Duration,
    chunk_bytes: usize,
    /// After the peer was found unreachable: no new attempt before this instant.
    retry_not_before: Option<tokio::time::Instant>,
    /// The current pause between attempts to an unreachable peer.
    retry_pause: Duration,
}

/// First pause after a peer was found unreachable; it doubles up to [`MAX_RETRY_PAUSE`].
const MIN_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between attempts to an unreachable peer.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
#[error("node {target} at {addr}: {reason}")]
struct TransportError {
    target: NodeId,
    addr: String,
    reason: String,
}

impl PeerClient {
    fn err(&self, reason: impl Into<String>) -> TransportError {
        TransportError { target: self.target, addr: self.addr.clone(), reason: reason.into() }
    }

    /// Paces attempts to a peer that was unreachable: waits out the current pause (at most
    /// `budget`). Heartbeats and votes are retried by openraft as fast as they fail, so without this
    /// a dead peer costs a busy loop of failed connects.
    async fn pace(&self, budget: Duration) {
        if let Some(at) = self.retry_not_before {
            let now = tokio::time::Instant::now();
            if at > now {
                tokio::time::sleep((at - now).min(budget)).await;
            }
        }
    }

    /// Records the outcome of an attempt for [`PeerClient::pace`].
    fn observe<T>(&mut self, r: &Result<T, RPCError<TypeConfig>>) {
        match r {
            Err(RPCError::Unreachable(_)) => {
                self.retry_not_before = Some(tokio::time::Instant::now() + self.retry_pause);
                self.retry_pause = (self.retry_pause * 2).min(MAX_RETRY_PAUSE);
            }
            _ => {
                self.retry_not_before = None;
                self.retry_pause = MIN_RETRY_PAUSE;
            }
        }
    }

    fn client(&mut self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        let generation = self.peers.tls_generation();
        if generation != self.tls_generation {
            self.tls_generation = generation;
            self.client = raft_client(&self.peers, &self.addr);
        }
        self.client.clone().map_err(|e| RPCError::Unreachable(Unreachable::new(&self.err(e))))
    }

    fn status_err(&self, s: &tonic::Status) -> RPCError<TypeConfig> {
        let e = self.err(format!("{:?}: {}", s.code(), s.message()));
        match s.code() {
            Code::NotFound | Code::Unavailable | Code::Unknown | Code::Cancelled => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn timeout(&self, action: RPCTypes, timeout: Duration) -> RPCError<TypeConfig> {
        RPCError::Timeout(Timeout { action, id: self.me, target: self.target, timeout })
    }

    fn ttl(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().min(self.request_timeout)
    }

    fn bad_reply(&self, e: convert::ConvertError) -> RPCError<TypeConfig> {
        RPCError::Network(NetworkError::new(&self.err(format!("undecodable reply: {e}"))))
    }
}

/// The answers of one replication session; it also ends the session's requests.
///
/// openraft's request streams are not independent: all the sessions of one replication target
/// pull from one shared state (the entries still to send, behind a mutex that a pull holds while
/// it waits for new log entries). A request stream still pulled after openraft gave up its session
/// would take the next entries away from the following session and send them into that dead
/// session; the new session then waits for entries that never come (nothing is lost, but
/// replication to that follower stalls until the next write, indefinitely on an idle group), and
/// the stale pull can hold the mutex meanwhile. (A follower whose group stops ends the answers
/// while the requests could still flow: tonic kept pulling a `StreamAppend` call's requests for as
/// long as the HTTP/2 stream was open for sending.)
///
/// So the request stream is cut (`take_until`, checked before every pull) when this stream ends
/// or is dropped (openraft drops it as soon as the session is over, whatever the reason), and the
/// multiplexed session ([`multiplex::Session`], dropped with it) stops its sender and queues the
/// session's end. A dropped request stream also releases any pull in progress, mutex included.
struct SessionStream<'s, T> {
    responses: BoxStream<'s, T>,
    /// Dropping it ends the session's request stream.
    session: Option<tokio::sync::oneshot::Sender<()>>,
    /// The session on the peer's multiplexed call.
    _multiplexed: multiplex::Session,
}

impl<T> Stream for SessionStream<'_, T> {
    type Item = T;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        let next = self.responses.poll_next_unpin(cx);
        if let std::task::Poll::Ready(None) = next {
            self.session = None;
        }
        next
    }
}

fn streaming(e: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Timeout(t) => StreamingError::Timeout(t),
        RPCError::Unreachable(u) => StreamingError::Unreachable(u),
        RPCError::Network(n) => StreamingError::Network(n),
        RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.pace(self.ttl(&option)).await;
        let r = self.send_append(rpc, option).await;
        self.observe(&r);
        r
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>, RPCError<TypeConfig>>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let group = self.group;
        Box::pin(async move {
            let client = self.client()?;
            // Take the first request before connecting: openraft waits out its replication
            // backoff while producing it, so a peer that is down is retried at the backoff pace
            // instead of in a tight connect/fail loop.
            let mut input = input.fuse();
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, _>);
            };
            // A stream of one message (openraft's heartbeats are sent so, one per follower per
            // heartbeat interval and group) goes as one `once` request on the peer's multiplexed
            // call: answered like a unary AppendEntries, with no session to open, feed and close
            // on either side and no HTTP/2 stream of its own.
            let second = match input.next().now_or_never() {
                Some(None) => {
                    let prev = first.prev_log_id;
                    let last = first.entries.last().map(|e| e.log_id).or(prev);
                    let r = self.send_append_once(&client, first).await;
                    self.observe(&r);
                    let result = r.map(|resp| resp.into_stream_result(prev, last));
                    return Ok(Box::pin(futures::stream::once(futures::future::ready(result))) as BoxStream<'s, _>);
                }
                Some(Some(second)) => Some(second),
                None => None,
            };
            // The session goes on the peer's multiplexed call (`multiplex`): its requests share
            // messages with every other group's replication to that peer.
            let limit = self.request_timeout;
            let mut multiplexed = self.peers.multiplexer().session(&self.addr, &client, limit, self.tls_generation);
            let counters = self.peers.clone();
            let sent = Arc::new(AtomicU64::new(0));
            let sent_here = sent.clone();
            // The request stream ends as soon as this session is over (see [`SessionStream`]).
            let (session, session_over) = tokio::sync::oneshot::channel::<()>();
            let input = futures::stream::iter(std::iter::once(first).chain(second)).chain(input);
            let delay = match group {
                GroupId::METADATA => Duration::ZERO,
                _ => Duration::from_millis(self.peers.config().commit_notice_delay_ms),
            };
            let requests = CommitNotices::new(input, delay).take_until(session_over).map(move |r| {
                Peers::count(&counters.counters().append_messages);
                if r.entries.is_empty() {
                    Peers::count(&counters.counters().entryless_session_messages);
                }
                sent_here.fetch_add(1, Ordering::Relaxed);
                convert::append_request_to_pb(group, &r)
            });
            // The sender runs on a task of its own: it pulls as credit allows, and ends with the
            // session.
            tokio::spawn(multiplexed.send_all(requests));
            let answers = multiplexed.answers(sent, limit);
            let this: &PeerClient = self;
            let output = answers.map(move |item| match item {
                Ok(r) => convert::stream_result_from_pb(&r).map_err(|e| this.bad_reply(e)),
                Err(s) => Err(this.status_err(&s)),
            });
            Ok(Box::pin(SessionStream {
                responses: Box::pin(output),
                session: Some(session),
                _multiplexed: multiplexed,
            }) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(rpc, option, true).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot<LeaderId, NodeId, Node, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(streaming)?;
        let wire = snapshot.snapshot.to_wire();
        let meta = pb::SnapshotMeta {
            group_id: self.group.0,
            vote: Some(convert::vote_to_pb(&vote)),
            last_log_id: convert::opt_to_pb(snapshot.meta.last_log_id.as_ref()),
            last_membership_log_id: convert::opt_to_pb(snapshot.meta.last_membership.log_id().as_ref()),
            last_membership: convert::membership_to_bytes(snapshot.meta.last_membership.membership()),
            data_len: wire.len() as u64,
            data_crc32: crc32fast::hash(&wire),
        };
        let mut messages =
            vec![pb::InstallSnapshotRequest { payload: Some(pb::install_snapshot_request::Payload::Meta(meta)) }];
        let mut at = 0;
        while at < wire.len() {
            let end = (at + self.chunk_bytes).min(wire.len());
            messages.push(pb::InstallSnapshotRequest {
                payload: Some(pb::install_snapshot_request::Payload::Chunk(wire.slice(at..end))),
            });
            at = end;
        }
        let ttl = option.hard_ttl();
        let send = tokio::time::timeout(ttl, client.install_snapshot(futures::stream::iter(messages)));
        let resp = tokio::select! {
            r = send => r
                .map_err(|_| StreamingError::Timeout(Timeout { action: RPCTypes::InstallSnapshot, id: self.me, target: self.target, timeout: ttl }))?
                .map_err(|s| streaming(self.status_err(&s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let vote = convert::required_vote_from_pb(resp.get_ref().vote.as_ref(), "vote")
            .map_err(|e| streaming(self.bad_reply(e)))?;
        Ok(SnapshotResponse::new(vote))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        use pb::transfer_leader_response::Outcome;
        let mut client = self.client()?;
        let msg = pb::TransferLeaderRequest {
            group_id: self.group.0,
            from_leader: Some(convert::vote_to_pb(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: convert::opt_to_pb(req.last_log_id()),
        };
        let ttl = self.ttl(&option);
        let resp = detached(ttl, self.request_timeout, async move { client.transfer_leader(msg).await })
            .await
            .ok_or_else(|| self.timeout(RPCTypes::TransferLeader, ttl))?
            .map_err(|s| self.status_err(&s))?
            .into_inner();
        match Outcome::try_from(resp.outcome) {
            Ok(Outcome::Ok) => Ok(Ok(())),
            Ok(Outcome::VoteChanged) => {
                let expected = convert::required_vote_from_pb(resp.expected_vote.as_ref(), "expected_vote")
                    .map_err(|e| self.bad_reply(e))?;
                let actual = convert::required_vote_from_pb(resp.actual_vote.as_ref(), "actual_vote")
                    .map_err(|e| self.bad_reply(e))?;
                Ok(Err(TransferLeaderError::VoteChanged { expected, actual }))
            }
            Ok(Outcome::LogNotFlushed) => Ok(Err(TransferLeaderError::LogNotFlushed {
                expected: convert::opt_from_pb(resp.expected_log_id.as_ref()),
                actual: convert::opt_from_pb(resp.actual_log_id.as_ref()),
            })),
            _ => Err(self.bad_reply(convert::ConvertError::UnknownValue { field: "outcome", value: resp.outcome })),
        }
    }
}

impl PeerClient {
    /// `rpc` as a lone request on the peer's multiplexed call (see [`Self::stream_append`]).
    async fn send_append_once(
        &self,
        client: &RaftServiceClient<Channel>,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Peers::count(&self.peers.counters().append_messages);
        Peers::count(&self.peers.counters().lone_append_messages);
        let req = convert::append_request_to_pb(self.group, &rpc);
        let limit = self.request_timeout;
        let session = self.peers.multiplexer().session(&self.addr, client, limit, self.tls_generation);
        let resp = session.once(req, limit).await.map_err(|s| self.status_err(&s))?;
        convert::append_response_from_pb(&resp).map_err(|e| self.bad_reply(e))
    }

    async fn send_append(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client()?;
        Peers::count(&self.peers.counters().append_messages);
        let req = convert::append_request_to_pb(self.group, &rpc);
        let ttl = self.ttl(&option);
        let resp = detached(ttl, self.request_timeout, async move { client.append_entries(req).await })
            .await
            .ok_or_else(|| self.timeout(RPCTypes::AppendEntries, ttl))?
            .map_err(|s| self.status_err(&s))?;
        convert::append_response_from_pb(resp.get_ref()).map_err(|e| self.bad_reply(e))
    }

    async fn send_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre_vote: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.pace(self.ttl(&option)).await;
        let r = self.send_vote_once(rpc, option, pre_vote).await;
        self.observe(&r);
        r
    }

    async fn send_vote_once(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre_vote: bool,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self.client()?;
        Peers::count(&self.peers.counters().votes);
        let req = convert::vote_request_to_pb(self.group, &rpc, pre_vote);
        let ttl = self.ttl(&option);
        let resp = detached(ttl, self.request_timeout, async move { client.vote(req).await })
            .await
            .ok_or_else(|| self.timeout(RPCTypes::Vote, ttl))?
            .map_err(|s| self.status_err(&s))?;
        convert::vote_response_from_pb(resp.get_ref()).map_err(|e| self.bad_reply(e))
    }
}
