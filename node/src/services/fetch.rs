//! `shale.api.v1.Fetch`: single fetches with long poll, and server-streaming subscriptions.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use shale_client::proto;
use shale_client::proto::fetch_client::FetchClient;
use shale_raft::cluster::access::{Operation, Resource};
use shale_raft::cluster::{ClusterError, FetchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::admission::SubscriptionSlot;
use crate::context::{NodeContext, NotServed, Served};
use crate::convert::errors::{cluster_error, not_leader, replica_out_of_range};
use crate::convert::records::{fetch_request, fetch_response, fetched_records, read_check};
use crate::limits;
use crate::quota::QuotaKind;

/// How long one step of a subscription waits for new records before checking for shutdown and a
/// closed client.
const SUBSCRIBE_POLL_MS: u32 = 1_000;
/// Batches buffered per subscription before the server waits for the client.
const SUBSCRIBE_BUFFER: usize = 4;

/// The Fetch service.
#[derive(Debug, Clone)]
pub struct FetchService {
    ctx: Arc<NodeContext>,
}

impl FetchService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    async fn fetch_inner(&self, req: proto::FetchRequest, forwarded: bool) -> Result<proto::FetchResponse, Status> {
        limits::check_topic_name(&req.topic)?;
        self.ctx.authorize(Operation::Consume, Resource::Topic(&req.topic)).await?;
        let (charge, waited) = self.ctx.quota_admit(QuotaKind::Consume).await;
        let (topic, partition, offset) = (req.topic.clone(), req.partition, req.offset);
        let domain = FetchRequest {
            check: read_check(req.client_checks_chain),
            ..fetch_request(
                topic.clone(),
                partition,
                offset,
                req.from_index,
                req.max_bytes,
                req.max_wait_ms,
                &self.ctx.limits,
            )
        };
        let result = self.ctx.cluster.fetch(domain).await;
        // A damaged range here is not the partition's answer: the client reads another replica.
        if let Err(err) = &result
            && let Some(status) = crate::scrub::damaged_read(&self.ctx.damage, err)
        {
            return Err(status);
        }
        let served =
            match self.ctx.or_forward(result, forwarded, Some((&topic, partition)), req, FetchClient::fetch).await {
                Ok(served) => served,
                Err(NotServed::Refused(err)) => return Err(read_error(&self.ctx, err, &topic, partition)),
                Err(other) => return Err(other.into()),
            };
        match served {
            Served::Here(result) => {
                let mut response = fetch_response(topic, partition, result);
                self.ctx.metrics.fetch_records.add(fetched_records(offset, &response));
                // Paced by the bytes served, charged here (where served), once.
                let bytes = response.encoded_len() as u64;
                response.throttle_time_ms =
                    self.ctx.quota_settle(charge.as_ref(), QuotaKind::Consume, bytes, waited).await;
                Ok(response)
            }
            // Charged (and throttled) by the node that served it.
            Served::There(response) => Ok(response),
        }
    }

    /// [`proto::fetch_server::Fetch::list_offsets`]: this replica's answer, else (this node holds
    /// no replica) a replica's.
    async fn list_offsets_inner(
        &self,
        req: proto::ListOffsetsRequest,
        forwarded: bool,
    ) -> Result<proto::ListOffsetsResponse, Status> {
        use proto::list_offsets_request::Spec;
        limits::check_topic_name(&req.topic)?;
        self.ctx.authorize(Operation::Consume, Resource::Topic(&req.topic)).await?;
        let (topic, partition) = (req.topic.clone(), req.partition);
        let spec =
            req.spec.ok_or_else(|| Status::invalid_argument("spec: earliest, latest or timestamp_ms is required"))?;
        let cluster = &self.ctx.cluster;
        let result = async {
            let (log_start, log_end) = cluster.local_bounds(&topic, partition).await?;
            let offset = match spec {
                Spec::Earliest(_) => Some(log_start),
                Spec::Latest(_) => Some(log_end),
                Spec::TimestampMs(ts) => cluster.offset_for_time(&topic, partition, ts).await?,
            };
            Ok::<_, ClusterError>(proto::ListOffsetsResponse {
                topic: topic.clone(),
                partition,
                offset,
                log_start,
                log_end,
            })
        }
        .await;
        if let Err(err) = &result
            && let Some(status) = crate::scrub::damaged_read(&self.ctx.damage, err)
        {
            return Err(status);
        }
        match self.ctx.or_forward(result, forwarded, Some((&topic, partition)), req, FetchClient::list_offsets).await {
            Ok(Served::Here(response) | Served::There(response)) => Ok(response),
            Err(NotServed::Refused(err)) => Err(cluster_error(err)),
            Err(other) => Err(other.into()),
        }
    }

    /// The stream of a subscription (see [`proto::fetch_server::Fetch::subscribe`]); `slot` is its
    /// place among the node's and the connection's Subscribe streams, held until it ends.
    async fn subscribe_inner(
        &self,
        req: proto::SubscribeRequest,
        slot: SubscriptionSlot,
    ) -> Result<SubscribeStream, Status> {
        limits::check_topic_name(&req.topic)?;
        self.ctx.authorize(Operation::Consume, Resource::Topic(&req.topic)).await?;
        let ctx = self.ctx.clone();
        // Charged to the caller, here (a subscription is served where it is opened), under the
        // quota applied when each message is sent (a change reaches open subscriptions too).
        let caller = crate::auth::current();
        let charge =
            move |ctx: &NodeContext| crate::quota::charge_of(caller.as_ref(), &ctx.cluster, QuotaKind::Consume);
        let check = read_check(req.client_checks_chain);
        let first = ctx
            .cluster
            .fetch(FetchRequest {
                check,
                ..fetch_request(
                    req.topic.clone(),
                    req.partition,
                    req.offset,
                    req.from_index,
                    req.max_bytes,
                    0,
                    &ctx.limits,
                )
            })
            .await
            .map_err(|err| match err {
                ClusterError::NotReplica { .. } => {
                    let message = err.to_string();
                    not_leader(message, ctx.cluster.leader_of(&req.topic, req.partition))
                }
                ClusterError::OffsetOutOfRange { .. } | ClusterError::InvalidFromIndex { .. } => {
                    match ctx.leader_ahead(&err, &req.topic, req.partition) {
                        Some(leader) => {
                            not_leader(format!("{err} on this replica; the leader may hold it"), Some(leader))
                        }
                        None => read_error(&ctx, err, &req.topic, req.partition),
                    }
                }
                other => crate::scrub::damaged_read(&ctx.damage, &other).unwrap_or_else(|| cluster_error(other)),
            })?;
        let (tx, rx) = mpsc::channel(SUBSCRIBE_BUFFER);
        tokio::spawn(async move {
            let _slot = slot;
            let mut shutdown = ctx.shutdown.clone();
            // Each answer continues at the log index the previous one ended, so the client's chain
            // check sees one unbroken run of entries.
            let mut offset = req.offset;
            let mut from_index = req.from_index;
            let mut pending = Some(first);
            loop {
                let result = match pending.take() {
                    Some(r) => Ok(r),
                    None => {
                        // An over-quota principal's subscription reads nothing until its
                        // throttle has passed.
                        let owed = charge(&ctx).map_or(Duration::ZERO, |c| ctx.quotas.wait_before(&c));
                        if !owed.is_zero() && !pause(&tx, &mut shutdown, owed).await {
                            return;
                        }
                        let wait = SUBSCRIBE_POLL_MS.min(ctx.limits.max_wait_ms.max(1));
                        let fetch = ctx.cluster.fetch(FetchRequest {
                            check,
                            ..fetch_request(
                                req.topic.clone(),
                                req.partition,
                                offset,
                                from_index,
                                req.max_bytes,
                                wait,
                                &ctx.limits,
                            )
                        });
                        let stopping = async {
                            let _ = shutdown.wait_for(|s| *s).await;
                        };
                        tokio::select! {
                            r = fetch => r,
                            () = stopping => {
                                let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                                return;
                            }
                            () = tx.closed() => return,
                        }
                    }
                };
                match result {
                    Ok(r) => {
                        let mut response = fetch_response(req.topic.clone(), req.partition, r);
                        // Nothing read: wait again from the same place. Entries without records
                        // (Raft's own, hidden batches) are sent all the same: the client's chain
                        // continues through them.
                        if response.entries.is_empty() {
                            continue;
                        }
                        ctx.metrics.fetch_records.add(fetched_records(offset, &response));
                        offset = response.next_offset;
                        from_index = Some(response.next_index);
                        if let Some(c) = charge(&ctx) {
                            let delay = ctx.quotas.record(&c, response.encoded_len() as u64);
                            crate::quota::count(&ctx.metrics, QuotaKind::Consume, delay);
                            response.throttle_time_ms = crate::quota::millis(delay);
                            if !delay.is_zero() && !pause(&tx, &mut shutdown, delay).await {
                                return;
                            }
                        }
                        if tx.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        let status = crate::scrub::damaged_read(&ctx.damage, &err)
                            .unwrap_or_else(|| read_error(&ctx, err, &req.topic, req.partition));
                        let _ = tx.send(Err(ctx.for_clients(status))).await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Waits `delay` (a subscription's quota throttle); `false` if the node shuts down (the client is
/// told) or the client went away meanwhile.
async fn pause(
    tx: &mpsc::Sender<Result<proto::FetchResponse, Status>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    delay: Duration,
) -> bool {
    let stopping = async {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stopping => {
            let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
            false
        }
        () = tx.closed() => false,
    }
}

/// The status of a read this replica cannot serve. Out of range also names this node and the
/// partition's replicas (`shale-replica-id`, `shale-replicas`): an offset below this replica's log
/// start may still be held by another replica, and the client reads it there.
fn read_error(ctx: &NodeContext, err: ClusterError, topic: &str, partition: u32) -> Status {
    match err {
        ClusterError::OffsetOutOfRange { start, end, .. } => {
            let message = format!("{err} on node {}", ctx.node_id);
            let ids = ctx.cluster.local_partition_state(topic, partition).map(|s| s.replicas).unwrap_or_default();
            let members = ctx.cluster.cluster_status().members;
            let replicas: Vec<(u64, String)> = ids
                .into_iter()
                .filter_map(|id| members.iter().find(|m| m.id == id).map(|m| (id, m.client_addr.clone())))
                .collect();
            replica_out_of_range(message, start, end, ctx.node_id, &replicas)
        }
        other => cluster_error(other),
    }
}

/// A subscription's stream of batches.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<proto::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl proto::fetch_server::Fetch for FetchService {
    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        self.ctx
            .handle_timed(&self.ctx.metrics.fetch, request, async |req, forwarded| {
                self.fetch_inner(req, forwarded).await
            })
            .await
    }

    type SubscribeStream = SubscribeStream;

    async fn list_offsets(
        &self,
        request: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        self.ctx.handle(request, async |req, forwarded| self.list_offsets_inner(req, forwarded).await).await
    }

    /// Served by a replica of the partition; elsewhere answers NOT_LEADER naming the leader (a
    /// stream is not forwarded). The first fetch runs before the stream opens, so a bad topic,
    /// partition or offset fails the call itself. Past `limits.max_subscriptions_per_connection`
    /// streams on the connection or `limits.max_subscriptions` on the node: TOO_MANY_SUBSCRIPTIONS.
    async fn subscribe(&self, request: Request<proto::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let conn = self.ctx.connections.of(&request);
        self.ctx
            .handle(request, async |req, _| {
                let slot = self.ctx.connections.subscribe(conn)?;
                self.subscribe_inner(req, slot).await
            })
            .await
    }
}
