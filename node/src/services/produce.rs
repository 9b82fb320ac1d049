//! `shale.api.v1.Produce`.

use std::sync::Arc;

use prost::Message;
use shale_client::proto;
use shale_client::proto::produce_client::ProduceClient;
use tonic::{Request, Response, Status};

use shale_raft::cluster::access::{Operation, Resource};

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

#[tonic::async_trait]
impl proto::produce_server::Produce for ProduceService {
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
