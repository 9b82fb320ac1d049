//! `shale.api.v1.Produce`.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use shale_client::proto;
use shale_client::proto::produce_client::ProduceClient;
use tonic::{Request, Response, Status};

use crate::context::{FORWARD_MAX_MESSAGE_BYTES, NodeContext, is_forwarded};
use crate::convert::errors::cluster_error;
use crate::convert::records::{produce_records, produce_response, producer_info};
use crate::limits;

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
        let records = produce_records(req.records.clone());
        let producer = producer_info(req.producer);
        match self.ctx.cluster.produce(&req.topic, req.partition, records, producer).await {
            Ok(offsets) => {
                debug_assert_eq!(offsets.len(), req.records.len(), "one offset per record");
                self.ctx.metrics.produce_records.add(offsets.len() as u64);
                self.ctx.metrics.produce_bytes.add(req.records.iter().map(limits::record_bytes).sum::<usize>() as u64);
                Ok(produce_response(req.topic, req.partition, &offsets))
            }
            Err(err) => match self.ctx.redirect(&err, forwarded, Some((&req.topic, req.partition))) {
                Some(addr) => {
                    self.ctx
                        .forward(&addr, req, |ch, r| async move {
                            ProduceClient::new(ch)
                                .max_decoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
                                .max_encoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
                                .produce(r)
                                .await
                        })
                        .await
                }
                None => Err(cluster_error(err)),
            },
        }
    }
}

#[tonic::async_trait]
impl proto::produce_server::Produce for ProduceService {
    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        let _in_flight = self.ctx.in_flight.enter();
        let started = Instant::now();
        let forwarded = is_forwarded(&request);
        let result = self.produce_inner(request.into_inner(), forwarded).await;
        let m = &self.ctx.metrics;
        m.produce_requests.inc();
        match &result {
            Ok(_) => m.produce_latency.observe(started.elapsed()),
            Err(_) => m.produce_errors.inc(),
        }
        result.map(Response::new)
    }
}
