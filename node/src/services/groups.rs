//! `shale.api.v1.ConsumerGroups`: committed offsets live in the metadata group; calls that reach a
//! follower are forwarded to the metadata leader.

use std::sync::Arc;

use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::consumer_groups_client::ConsumerGroupsClient;
use shale_raft::cluster::{ClusterError, ConsumerOffset};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::context::{FORWARD_MAX_MESSAGE_BYTES, NodeContext, is_forwarded};
use crate::convert::errors::cluster_error;
use crate::convert::groups::{group_lag, partition_offsets};
use crate::limits;

/// The ConsumerGroups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    ctx: Arc<NodeContext>,
}

fn groups_client(ch: Channel) -> ConsumerGroupsClient<Channel> {
    ConsumerGroupsClient::new(ch)
        .max_decoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
}

impl GroupsService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// Where a metadata call that failed with `err` goes instead, if anywhere.
    fn redirect(&self, err: &ClusterError, forwarded: bool) -> Option<String> {
        self.ctx.redirect(err, forwarded, None)
    }

    /// The high watermark of a partition: known locally on a replica, else asked of its leader.
    async fn log_end(&self, o: &ConsumerOffset) -> Result<u64, Status> {
        if let Some(hw) = o.high_watermark {
            return Ok(hw);
        }
        let (_, addr) = self
            .ctx
            .cluster
            .leader_of(&o.topic, o.partition)
            .ok_or_else(|| cluster_error(ClusterError::NotLeader { leader: None }))?;
        let req = proto::LocalChainHashRequest {
            topic: o.topic.clone(),
            partition: o.partition,
            offset: None,
            reread_from: None,
        };
        let resp =
            self.ctx.forward(&addr, req, |ch, r| async move { AdminClient::new(ch).local_chain_hash(r).await }).await?;
        Ok(resp.log_end)
    }
}

#[tonic::async_trait]
impl proto::consumer_groups_server::ConsumerGroups for GroupsService {
    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        let _in_flight = self.ctx.in_flight.enter();
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        limits::check_group_name(&req.group)?;
        for o in &req.offsets {
            limits::check_topic_name(&o.topic)?;
        }
        for (i, o) in req.offsets.iter().enumerate() {
            if let Err(err) = self.ctx.cluster.commit_offset(&req.group, &o.topic, o.partition, o.offset).await {
                // Only the first commit can be redirected whole: later ones would repeat earlier ones
                // (harmless, commits are idempotent), but a mid-way leader change is simply retried by the client.
                if let Some(addr) = self.redirect(&err, forwarded).filter(|_| i == 0) {
                    let resp = self
                        .ctx
                        .forward(&addr, req, |ch, r| async move { groups_client(ch).commit_offsets(r).await })
                        .await?;
                    return Ok(Response::new(resp));
                }
                return Err(cluster_error(err));
            }
        }
        Ok(Response::new(proto::CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<proto::FetchOffsetsRequest>,
    ) -> Result<Response<proto::FetchOffsetsResponse>, Status> {
        let _in_flight = self.ctx.in_flight.enter();
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        limits::check_group_name(&req.group)?;
        match self.ctx.cluster.fetch_offsets(&req.group).await {
            Ok(offsets) => Ok(Response::new(proto::FetchOffsetsResponse {
                offsets: partition_offsets(&offsets, &req.partitions),
                group: req.group,
            })),
            Err(err) => match self.redirect(&err, forwarded) {
                Some(addr) => Ok(Response::new(
                    self.ctx
                        .forward(&addr, req, |ch, r| async move { groups_client(ch).fetch_offsets(r).await })
                        .await?,
                )),
                None => Err(cluster_error(err)),
            },
        }
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let _in_flight = self.ctx.in_flight.enter();
        let forwarded = is_forwarded(&request);
        match self.ctx.cluster.list_groups().await {
            Ok(groups) => Ok(Response::new(proto::ListGroupsResponse { groups })),
            Err(err) => {
                match self.redirect(&err, forwarded) {
                    Some(addr) => Ok(Response::new(
                        self.ctx
                            .forward(&addr, request.into_inner(), |ch, r| async move {
                                groups_client(ch).list_groups(r).await
                            })
                            .await?,
                    )),
                    None => Err(cluster_error(err)),
                }
            }
        }
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::DescribeGroupResponse>, Status> {
        let _in_flight = self.ctx.in_flight.enter();
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        limits::check_group_name(&req.group)?;
        let offsets = match self.ctx.cluster.fetch_offsets(&req.group).await {
            Ok(offsets) => offsets,
            Err(err) => {
                return match self.redirect(&err, forwarded) {
                    Some(addr) => Ok(Response::new(
                        self.ctx
                            .forward(&addr, req, |ch, r| async move { groups_client(ch).describe_group(r).await })
                            .await?,
                    )),
                    None => Err(cluster_error(err)),
                };
            }
        };
        let mut partitions = Vec::with_capacity(offsets.len());
        for o in &offsets {
            partitions.push(group_lag(o, self.log_end(o).await?));
        }
        let total_lag = partitions.iter().map(|p| p.lag).sum();
        Ok(Response::new(proto::DescribeGroupResponse { group: req.group, partitions, total_lag }))
    }
}
