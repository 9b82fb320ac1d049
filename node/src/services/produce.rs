//! `shale.api.v1.Produce`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use prost::Message;
use shale_client::codec::SizedProstCodec;
use shale_client::proto;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::proto::produce_server::ProduceServer;
use tonic::codec::Codec;
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

use shale_raft::cluster::access::{Operation, Resource};
use shale_raft::network::body_messages::{MethodFromBody, ServeMethod, serve_call};

use crate::context::{NodeContext, Served};
use crate::convert::records::{produce_records, produce_response, producer_info};
use crate::limits;
use crate::quota::QuotaKind;

/// The Produce service.
#[derive(Debug, Clone)]
pub struct ProduceService {
    ctx: Arc<NodeContext>,
}

impl ProduceService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    async fn produce_inner(
        &self,
        req: proto::ProduceRequest,
        forwarded: bool,
    ) -> Result<proto::ProduceResponse, Status> {
        limits::check_request_bytes(req.encoded_len(), &self.ctx.limits)?;
        limits::check_produce(&req, &self.ctx.limits)?;
        self.ctx.authorize(Operation::Produce, Resource::Topic(&req.topic)).await?;
        let (charge, waited) = self.ctx.quota_admit(QuotaKind::Produce).await;
        let records = produce_records(req.records.clone());
        let producer = producer_info(req.producer);
        let (topic, partition) = (req.topic.clone(), req.partition);
        let (count, bytes) = (req.records.len(), req.records.iter().map(limits::record_bytes).sum::<usize>());
        let result = self.ctx.cluster.produce(&topic, partition, records, producer).await;
        let served =
            self.ctx.or_forward(result, forwarded, Some((&topic, partition)), req, ProduceClient::produce).await?;
        match served {
            Served::Here(batches) => {
                let stored: usize = batches.iter().map(|b| b.record_count as usize).sum();
                debug_assert_eq!(stored, count, "the stored batches hold every record, once");
                self.ctx.metrics.produce_records.add(stored as u64);
                self.ctx.metrics.produce_bytes.add(bytes as u64);
                let mut response = produce_response(topic, partition, &batches);
                // Charged where served (here), once; the answer waits out the throttle.
                response.throttle_time_ms =
                    self.ctx.quota_settle(charge.as_ref(), QuotaKind::Produce, bytes as u64, waited).await;
                Ok(response)
            }
            // Charged (and throttled) by the node that served it.
            Served::There(response) => Ok(response),
        }
    }
}

/// Answers a produce stream keeps queued for its caller before it stops reading requests.
const STREAM_ANSWERS_QUEUED: usize = 64;

impl ProduceService {
    /// Serves one `ProduceStream` call: every request as a unary Produce with the call's
    /// metadata would be served (its caller authenticated again for each, so a revoked token or
    /// changed password stops the next request), all of them on this one task, each answered as
    /// it completes. Returns when the caller ended its requests (or the call broke, or the node
    /// began to shut down: no request is read after that) and every request read was answered,
    /// or when nobody reads the answers any more. The answers then end, and the caller opens a new
    /// call for its next request (a stopping node refuses it, so it goes elsewhere).
    async fn serve_stream(
        self,
        call: Request<()>,
        mut input: impl Stream<Item = Result<proto::ProduceStreamRequest, Status>> + Unpin,
        answers: tokio::sync::mpsc::Sender<Result<proto::ProduceStreamResponse, Status>>,
    ) {
        let _open = self.ctx.metrics.produce_calls_open.hold();
        let mut running = FuturesUnordered::new();
        let mut reading = true;
        let mut shutdown = self.ctx.shutdown.clone();
        while reading || !running.is_empty() {
            tokio::select! {
                () = async { drop(shutdown.wait_for(|stopping| *stopping).await) }, if reading => reading = false,
                item = input.next(), if reading => match item {
                    Some(Ok(item)) => running.push(self.serve_stream_request(&call, item)),
                    // A broken call: what was read is still answered if the answers get through.
                    Some(Err(_)) | None => reading = false,
                },
                Some(answer) = running.next(), if !running.is_empty() => {
                    if answers.send(Ok(answer)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One request of a produce stream, served as a unary Produce and answered under its id.
    async fn serve_stream_request(
        &self,
        call: &Request<()>,
        item: proto::ProduceStreamRequest,
    ) -> proto::ProduceStreamResponse {
        let started = Instant::now();
        let result = async {
            let _in_flight = self.ctx.enter_in_flight()?;
            let caller = self.ctx.authenticate(call).await?;
            let req =
                item.request.ok_or_else(|| Status::invalid_argument("a produce stream request without a request"))?;
            self.ctx.serve_as(caller, self.produce_inner(req, item.answer_here)).await
        }
        .await;
        self.ctx.metrics.produce.record(started, result.is_ok());
        match result {
            Ok(response) => proto::ProduceStreamResponse { id: item.id, response: Some(response), error: None },
            Err(status) => {
                proto::ProduceStreamResponse { id: item.id, response: None, error: Some(stream_status(&status)) }
            }
        }
    }
}

impl ProduceService {
    /// Opens a `ProduceStream` call whose requests `request` carries: they are served on a task of
    /// their own ([`Self::serve_stream`]), and the answer is the stream of their answers.
    async fn open_stream<S>(&self, request: Request<S>) -> Result<Response<ProduceStreamAnswers>, Status>
    where
        S: Stream<Item = Result<proto::ProduceStreamRequest, Status>> + Unpin + Send + 'static,
    {
        let (metadata, extensions, input) = request.into_parts();
        let call = Request::from_parts(metadata, extensions, ());
        // Refused at once when its metadata names nobody (checked again for each request).
        self.ctx.authenticate(&call).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_ANSWERS_QUEUED);
        tokio::spawn(self.clone().serve_stream(call, input, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// The answers of a `ProduceStream` call, as they are sent.
pub type ProduceStreamAnswers =
    Pin<Box<dyn Stream<Item = Result<proto::ProduceStreamResponse, Status>> + Send + 'static>>;

/// The path of `ProduceStream`, which [`ProduceServing`] serves itself.
const PRODUCE_STREAM_PATH: &str = "/shale.api.v1.Produce/ProduceStream";

/// The Produce service as the node mounts it: tonic's generated server over [`ProduceService`]
/// for `Produce`, and `ProduceStream` (the client's produce path) with its requests read straight
/// from the HTTP/2 body ([`BodyMessages`](shale_raft::network::body_messages::BodyMessages), by
/// [`serve_call`]): a record's value is a slice of the frame it arrived in, as a follower's
/// entries are (`shale_raft::server::RaftServer`), instead of a copy in tonic's receive buffer and
/// another in a fresh one each time that buffer is full. The edge checks (an interceptor around
/// this service) run for both.
pub type ProduceServing = MethodFromBody<ProduceServer<ProduceService>>;

/// [`ProduceServing`] over `service`, taking messages of at most `max_decoding_bytes` and sending
/// at most `max_encoding_bytes`.
pub fn produce_serving(
    service: ProduceService,
    max_decoding_bytes: usize,
    max_encoding_bytes: usize,
) -> ProduceServing {
    let generated = ProduceServer::new(service.clone())
        .max_decoding_message_size(max_decoding_bytes)
        .max_encoding_message_size(max_encoding_bytes);
    let serve: ServeMethod = Arc::new(move |request: http::Request<tonic::body::Body>| {
        let service = service.clone();
        Box::pin(async move {
            let encoder =
                SizedProstCodec::<proto::ProduceStreamResponse, proto::ProduceStreamRequest>::default().encoder();
            Ok(serve_call(request, max_decoding_bytes, encoder, max_encoding_bytes, |request| {
                service.open_stream(request)
            })
            .await)
        })
    });
    MethodFromBody::new(generated, PRODUCE_STREAM_PATH, serve)
}

/// `status` as a produce stream's answer carries it: code, message and its ASCII metadata.
fn stream_status(status: &Status) -> proto::StreamStatus {
    let metadata = status
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.to_string(), v.to_str().ok()?.to_string())),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    proto::StreamStatus { code: status.code() as i32, message: status.message().to_string(), metadata }
}

#[tonic::async_trait]
impl proto::produce_server::Produce for ProduceService {
    type ProduceStreamStream = ProduceStreamAnswers;

    /// Served by [`ProduceServing`] from the request's body directly; this path (tonic's receive
    /// buffer) is taken only where the generated server is mounted on its own.
    async fn produce_stream(
        &self,
        request: Request<Streaming<proto::ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        self.open_stream(request).await
    }

    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        self.ctx
            .handle_timed(&self.ctx.metrics.produce, request, async |req, forwarded| {
                self.produce_inner(req, forwarded).await
            })
            .await
    }
}
