//! The Kafka listener: accepts connections, reads size-prefixed frames, decodes each request with
//! the `kafka-protocol` crate, and answers a connection's requests strictly in the order they
//! arrived (clients pipeline requests and match answers by order). Pipelined Produce requests
//! (and Metadata, ApiVersions) are served concurrently, so a producer's requests in flight commit
//! together rather than one Raft commit after another; their partitions' records are still stored
//! in the order the requests arrived ([`super::pipeline`]). Every other request is served alone,
//! after everything before it, as a Kafka broker serves each request.
//!
//! A frame that cannot be decoded (a bad size, an unknown API key, a body that does not decode
//! at its version) closes only its connection, with a WARN line naming the peer and client id.
//! A request of an API or version that is not served is answered with that API's response
//! carrying UNSUPPORTED_VERSION ([`super::unsupported`]); ApiVersions past what is served is
//! answered at version 0 with the served list, as Kafka does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::pipeline::Turn;
use super::{admin, coordinator};
use crate::auth::Caller;
use crate::auth::principal::{Principal, Source};
use crate::conn::KillableStream;
use crate::context::NodeContext;

/// What the Kafka listener serves with: the node's context and the classic groups it
/// coordinates.
#[derive(Debug)]
pub struct Kafka {
    /// The node's shared state.
    pub ctx: Arc<NodeContext>,
    /// Classic consumer groups (on the coordinator, the metadata leader).
    pub groups: super::groups::ClassicGroups,
}

impl Kafka {
    /// The listener's state over `ctx`, with the task that expires silent group members (until
    /// `shutdown` flips).
    fn start(ctx: Arc<NodeContext>, shutdown: &watch::Receiver<bool>) -> Arc<Self> {
        let kafka = Arc::new(Self { ctx, groups: super::groups::ClassicGroups::default() });
        let (weak, mut stop) = (Arc::downgrade(&kafka), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(GROUP_CHECK_INTERVAL) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let Some(kafka) = weak.upgrade() else { return };
                kafka.groups.expire(std::time::Instant::now());
            }
        });
        kafka
    }
}

/// How often silent group members are looked for.
const GROUP_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

tokio::task_local! {
    /// The client id of the request this task serves (its header's).
    pub static CLIENT_ID: String;
}

/// Requests of one connection served at once, and as many more read ahead of them; the connection
/// reads no more frames past that.
const MAX_PIPELINED: usize = 32;

/// Serves the Kafka protocol in plaintext on `listener` until `shutdown` flips; `admit` wraps each
/// accepted connection (admission, kill at shutdown) or refuses it (`None`: closed at once).
pub async fn serve<F>(listener: TcpListener, mut admit: F, ctx: Arc<NodeContext>, mut shutdown: watch::Receiver<bool>)
where
    F: FnMut(TcpStream) -> Option<KillableStream> + Send + 'static,
{
    let kafka = Kafka::start(ctx, &shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(error = %e, "kafka listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(stream) = admit(stream) else { continue };
        let peer = stream.connect_info().remote_addr();
        let caller = Caller::new(Principal::Anonymous, Source::Anonymous, peer);
        spawn_connection(stream, peer, caller, &kafka, &shutdown);
    }
}

/// Serves the Kafka protocol on TLS connections (handshaken by [`crate::tls_reload::incoming`],
/// whose certificates a reload swaps) until `shutdown` flips. A client certificate names the
/// connection's principal ([`crate::auth::principal::connection_caller`]).
pub async fn serve_tls(
    mut incoming: impl Stream<Item = std::io::Result<TlsStream<KillableStream>>> + Unpin + Send + 'static,
    ctx: Arc<NodeContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kafka = Kafka::start(ctx, &shutdown);
    let ctx = &kafka.ctx;
    loop {
        let next = tokio::select! {
            n = incoming.next() => n,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match next {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "kafka listener: TLS connection failed");
                continue;
            }
            None => return,
        };
        let peer = stream.get_ref().0.connect_info().remote_addr();
        let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
        let caller = match crate::auth::principal::connection_caller(leaf.as_deref(), peer) {
            Ok(caller) => caller,
            Err(why) => {
                ctx.metrics.auth_unauthenticated.inc();
                tracing::warn!(peer = ?peer, reason = why, "kafka: connection refused");
                continue;
            }
        };
        spawn_connection(stream, peer, caller, &kafka, &shutdown);
    }
}

fn spawn_connection<S>(
    stream: S,
    peer: Option<SocketAddr>,
    caller: Caller,
    kafka: &Arc<Kafka>,
    shutdown: &watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Connection { kafka: kafka.clone(), peer, caller, shutdown: shutdown.clone() };
    tokio::spawn(connection.run(stream));
}

/// Why a connection was closed by the node.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("frame of {size} bytes is not in 1..={max} (limits.max_request_bytes)")]
    FrameSize { size: i64, max: usize },
    #[error("request header: {0}")]
    Header(String),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("{api:?} v{version} request: {reason}")]
    Body { api: ApiKey, version: i16, reason: String },
    #[error("encoding the {api:?} v{version} response: {reason}")]
    Encode { api: ApiKey, version: i16, reason: String },
}

/// One client connection: who it is, where from.
struct Connection {
    kafka: Arc<Kafka>,
    peer: Option<SocketAddr>,
    caller: Caller,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    /// Reads frames on this task and answers them on another ([`answer_in_order`]).
    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(mut self, stream: S) {
        let (mut reader, writer) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<(Request, String)>(MAX_PIPELINED);
        let answering = tokio::spawn(answer_in_order(self.kafka.clone(), self.caller.clone(), self.peer, rx, writer));
        let max = self.kafka.ctx.limits.max_request_bytes;
        let mut client_id = String::new();
        loop {
            let frame = tokio::select! {
                f = read_frame(&mut reader, max) => f,
                _ = self.shutdown.wait_for(|s| *s) => break,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(closed) => {
                    tracing::warn!(peer = ?self.peer, client_id, error = %closed, "kafka: malformed frame; closing the connection");
                    break;
                }
            };
            let request = match decode(frame) {
                Ok(r) => r,
                Err((closed, id)) => {
                    let id = id.unwrap_or(client_id);
                    tracing::warn!(peer = ?self.peer, client_id = id, error = %closed, "kafka: malformed request; closing the connection");
                    break;
                }
            };
            if let Some(id) = &request.header.client_id {
                client_id.clear();
                client_id.push_str(id.as_str());
            }
            if tx.send((request, client_id.clone())).await.is_err() {
                break;
            }
        }
        drop(tx);
        let _ = answering.await;
    }
}

/// Whether `request` may be served while earlier requests of its connection are: Produce (its
/// partitions keep the connection's order, [`super::pipeline`]) and the read-only Metadata and
/// ApiVersions. Every other request is served alone, after the ones before it and before the ones
/// after it are started, as a Kafka broker serves every request (a commit, a group step or a SASL
/// step sees the effects of the requests sent before it, and the ones after see its effects).
fn pipelined(request: &Request) -> bool {
    matches!(request.api, ApiKey::Produce | ApiKey::Metadata | ApiKey::ApiVersions)
}

/// Serves a connection's requests (from `rx`, in the order read) and writes their answers to
/// `writer` strictly in that order. Up to [`MAX_PIPELINED`] [`pipelined`] requests are served at
/// once (a producer's requests commit together instead of one after another); any other waits until
/// everything before it is answered and is served alone. A produce stores its partitions' records
/// in the order the requests arrived ([`super::pipeline::PartitionOrder`]).
async fn answer_in_order<W: AsyncWrite + Unpin>(
    kafka: Arc<Kafka>,
    mut caller: Caller,
    peer: Option<SocketAddr>,
    mut rx: mpsc::Receiver<(Request, String)>,
    mut writer: W,
) {
    let mut sasl = super::sasl::Exchange::default();
    let mut order = super::pipeline::PartitionOrder::default();
    let mut running = FuturesOrdered::new();
    // The request running is one served alone.
    let mut alone = false;
    // A request read but not started yet (it waits for the ones running).
    let mut held: Option<(Request, String)> = None;
    let mut read_all = false;
    loop {
        if let Some((request, client_id)) = held.take() {
            if running.is_empty() && is_sasl(&request) {
                let answered = authenticate(&kafka.ctx, &mut sasl, &mut caller, peer, request).await;
                if !write_answer(&mut writer, answered, peer).await {
                    return;
                }
                continue;
            }
            let own = !pipelined(&request);
            if running.is_empty() || (!alone && !own) {
                alone = own;
                let turns = match &request.body {
                    Some(RequestKind::Produce(req)) => order.turns(req),
                    _ => Vec::new(),
                };
                let serve = answer(kafka.clone(), request, turns);
                running.push_back(CLIENT_ID.scope(client_id, crate::auth::serve_as(caller.clone(), serve)));
            } else {
                held = Some((request, client_id));
            }
        }
        if running.is_empty() && held.is_none() && read_all {
            return;
        }
        let read = held.is_none() && !read_all && running.len() < MAX_PIPELINED;
        tokio::select! {
            Some(answered) = running.next(), if !running.is_empty() => {
                if !write_answer(&mut writer, answered, peer).await {
                    return;
                }
            }
            next = rx.recv(), if read => match next {
                Some(r) => held = Some(r),
                None => read_all = true,
            },
        }
    }
}

/// Writes an answer (none for acks = 0); `false` once the connection is to be closed.
async fn write_answer<W: AsyncWrite + Unpin>(
    writer: &mut W,
    answered: Result<Option<Bytes>, Closed>,
    peer: Option<SocketAddr>,
) -> bool {
    match answered {
        Ok(Some(frame)) => writer.write_all(&frame).await.is_ok(),
        Ok(None) => true,
        Err(closed) => {
            tracing::warn!(peer = ?peer, error = %closed, "kafka: closing the connection");
            false
        }
    }
}

/// Whether `request` is a SASL step (answered with the connection's authentication state).
fn is_sasl(request: &Request) -> bool {
    matches!(request.body, Some(RequestKind::SaslHandshake(_) | RequestKind::SaslAuthenticate(_)))
        && super::api_versions::serves(request.api, request.header.request_api_version)
}

/// Answers a SASL step; a successful SaslAuthenticate makes the connection's caller the user.
async fn authenticate(
    ctx: &NodeContext,
    sasl: &mut super::sasl::Exchange,
    caller: &mut Caller,
    peer: Option<SocketAddr>,
    request: Request,
) -> Result<Option<Bytes>, Closed> {
    use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
    let Request { header, api, body } = request;
    let version = header.request_api_version;
    let response = match body {
        Some(RequestKind::SaslHandshake(req)) => {
            let mechanisms = super::sasl::MECHANISMS.iter().map(|m| StrBytes::from_static_str(m)).collect();
            let code = sasl.handshake(req.mechanism.as_str()).err().unwrap_or(0);
            ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default().with_error_code(code).with_mechanisms(mechanisms),
            )
        }
        Some(RequestKind::SaslAuthenticate(req)) => {
            let answer = SaslAuthenticateResponse::default();
            ResponseKind::SaslAuthenticate(match sasl.step(ctx, peer, &req.auth_bytes).await {
                Ok((bytes, authenticated)) => {
                    if let Some(who) = authenticated {
                        tracing::debug!(peer = ?peer, principal = %who.principal, "kafka: SASL authenticated");
                        *caller = who;
                    }
                    answer.with_auth_bytes(Bytes::from(bytes))
                }
                Err((code, message)) => {
                    ctx.metrics.auth_unauthenticated.inc();
                    tracing::debug!(peer = ?peer, reason = %message, "kafka: SASL authentication failed");
                    answer.with_error_code(code).with_error_message(Some(StrBytes::from_string(message)))
                }
            })
        }
        _ => unreachable!("only SASL requests are answered here"),
    };
    encode(api, version, header.correlation_id, &response).map(Some)
}

/// Reads one size-prefixed frame; `None` at a clean end of the stream.
async fn read_frame(reader: &mut (impl AsyncReadExt + Unpin), max: usize) -> Result<Option<Bytes>, Closed> {
    let mut size = [0u8; 4];
    match reader.read_exact(&mut size).await {
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let size = i32::from_be_bytes(size);
    if size <= 0 || size as usize > max {
        return Err(Closed::FrameSize { size: i64::from(size), max });
    }
    let mut body = BytesMut::zeroed(size as usize);
    reader.read_exact(&mut body).await.map_err(|_| Closed::Header("connection closed mid-frame".into()))?;
    Ok(Some(body.freeze()))
}

/// A decoded request.
struct Request {
    header: RequestHeader,
    api: ApiKey,
    /// `None`: ApiVersions at a version past what is served (answered without its body).
    body: Option<RequestKind>,
}

/// Decodes a frame's header and body; on failure, why, and the client id if the header decoded.
fn decode(mut frame: Bytes) -> Result<Request, (Closed, Option<String>)> {
    if frame.len() < 4 {
        return Err((Closed::Header(format!("{} bytes", frame.len())), None));
    }
    let key = frame.slice(0..2).get_i16();
    let version = frame.slice(2..4).get_i16();
    let api = ApiKey::try_from(key).map_err(|()| (Closed::UnknownApi(key), None))?;
    // A client's first ApiVersions may be newer than the node knows: its header is decoded at the
    // newest header version (Kafka keeps ApiVersions' request header decodable for this).
    let header_version = api.request_header_version(version.min(api.valid_versions().max));
    let header =
        RequestHeader::decode(&mut frame, header_version).map_err(|e| (Closed::Header(e.to_string()), None))?;
    let id = header.client_id.as_ref().map(|c| c.as_str().to_string());
    if api == ApiKey::ApiVersions && !super::api_versions::serves(api, version) {
        return Ok(Request { header, api, body: None });
    }
    let body = RequestKind::decode(api, &mut frame, version)
        .map_err(|e| (Closed::Body { api, version, reason: e.to_string() }, id))?;
    Ok(Request { header, api, body: Some(body) })
}

/// Serves one request; its answer as a size-prefixed frame (`None`: Produce with acks = 0, which
/// Kafka answers with nothing). `turns`: a Produce's place in its connection's order, per
/// partition ([`super::pipeline`]).
async fn answer(kafka: Arc<Kafka>, request: Request, turns: Vec<Turn>) -> Result<Option<Bytes>, Closed> {
    let kafka = &*kafka;
    let ctx = &*kafka.ctx;
    let Request { header, api, body } = request;
    let mut version = header.request_api_version;
    let Some(_in_flight) = ctx.in_flight.try_enter(ctx.limits.max_in_flight_requests as usize) else {
        // Over the node's in-flight limit: the request's own error, retriable.
        ctx.metrics.count_limit_refusal("max_in_flight_requests");
        let refusal = super::unsupported::refusal(api, ResponseError::RequestTimedOut.code());
        return encode(api, version, header.correlation_id, &refusal).map(Some);
    };
    let response = match body {
        None => {
            // ApiVersions past what is served: the list, at version 0, with UNSUPPORTED_VERSION.
            version = 0;
            ResponseKind::ApiVersions(super::api_versions::response(false))
        }
        Some(_) if !super::api_versions::serves(api, version) => {
            super::unsupported::refusal(api, ResponseError::UnsupportedVersion.code())
        }
        Some(RequestKind::ApiVersions(_)) => ResponseKind::ApiVersions(super::api_versions::response(true)),
        Some(RequestKind::Metadata(req)) => ResponseKind::Metadata(super::metadata::handle(ctx, req, version).await),
        Some(RequestKind::Produce(req)) => match super::produce::handle(ctx, req, turns).await {
            Some(r) => ResponseKind::Produce(r),
            None => return Ok(None),
        },
        Some(RequestKind::Fetch(req)) => ResponseKind::Fetch(super::fetch::handle(ctx, req).await),
        Some(RequestKind::ListOffsets(req)) => ResponseKind::ListOffsets(super::list_offsets::handle(ctx, req).await),
        Some(RequestKind::FindCoordinator(req)) => {
            ResponseKind::FindCoordinator(coordinator::find_coordinator(ctx, req, version))
        }
        Some(RequestKind::JoinGroup(req)) => ResponseKind::JoinGroup(coordinator::join(kafka, req).await),
        Some(RequestKind::SyncGroup(req)) => ResponseKind::SyncGroup(coordinator::sync(kafka, req).await),
        Some(RequestKind::Heartbeat(req)) => ResponseKind::Heartbeat(coordinator::heartbeat(kafka, req).await),
        Some(RequestKind::LeaveGroup(req)) => ResponseKind::LeaveGroup(coordinator::leave(kafka, req, version).await),
        Some(RequestKind::OffsetCommit(req)) => {
            ResponseKind::OffsetCommit(coordinator::offset_commit(kafka, req).await)
        }
        Some(RequestKind::OffsetFetch(req)) => {
            ResponseKind::OffsetFetch(coordinator::offset_fetch(ctx, req, version).await)
        }
        Some(RequestKind::ListGroups(req)) => ResponseKind::ListGroups(coordinator::list(kafka, req).await),
        Some(RequestKind::InitProducerId(req)) => ResponseKind::InitProducerId(super::producer_id::init(&req)),
        Some(RequestKind::CreateTopics(req)) => ResponseKind::CreateTopics(admin::create_topics(ctx, req).await),
        Some(RequestKind::DeleteTopics(req)) => {
            ResponseKind::DeleteTopics(admin::delete_topics(ctx, req, version).await)
        }
        Some(RequestKind::CreatePartitions(req)) => {
            ResponseKind::CreatePartitions(admin::create_partitions(ctx, req).await)
        }
        Some(RequestKind::DescribeConfigs(req)) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(ctx, req).await)
        }
        Some(RequestKind::AlterConfigs(req)) => ResponseKind::AlterConfigs(admin::alter_configs(ctx, req).await),
        Some(RequestKind::DescribeGroups(req)) => ResponseKind::DescribeGroups(coordinator::describe(kafka, req).await),
        Some(_) => super::unsupported::refusal(api, ResponseError::UnsupportedVersion.code()),
    };
    encode(api, version, header.correlation_id, &response).map(Some)
}

/// `response` to a request of `api` at `version`, framed: size, header, body.
fn encode(api: ApiKey, version: i16, correlation_id: i32, response: &ResponseKind) -> Result<Bytes, Closed> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api.response_header_version(version)).map_err(|e| Closed::Encode {
        api,
        version,
        reason: e.to_string(),
    })?;
    response.encode(&mut buf, version).map_err(|e| Closed::Encode { api, version, reason: e.to_string() })?;
    let size = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}
