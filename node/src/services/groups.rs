//! `shale.api.v1.ConsumerGroups`: committed offsets live in the metadata group; calls that reach a
//! follower are forwarded to the metadata leader.

use std::sync::Arc;

use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::consumer_groups_client::ConsumerGroupsClient;
use shale_raft::cluster::{ClusterError, ConsumerOffset};
use tonic::{Request, Response, Status};

use shale_raft::cluster::access::{Operation, Resource};

use crate::context::{NodeContext, Served};
use crate::convert::errors::cluster_error;
use crate::convert::groups::{group_lag, partition_offsets};
use crate::limits;

/// The ConsumerGroups service.
#[derive(Debug, Clone)]
pub struct GroupsService {
    ctx: Arc<NodeContext>,
}

impl GroupsService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
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
        let resp = self.ctx.forward(&addr, req, AdminClient::local_chain_hash).await?;
        Ok(resp.log_end)
    }
}

#[tonic::async_trait]
impl proto::consumer_groups_server::ConsumerGroups for GroupsService {
    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                for o in &req.offsets {
                    limits::check_topic_name(&o.topic)?;
                }
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                for o in &req.offsets {
                    self.ctx.authorize(Operation::Consume, Resource::Topic(&o.topic)).await?;
                }
                for (i, o) in req.offsets.iter().enumerate() {
                    if let Err(err) = self.ctx.cluster.commit_offset(&req.group, &o.topic, o.partition, o.offset).await
                    {
                        // Only the first commit can be redirected whole: later ones would repeat earlier ones
                        // (harmless, commits are idempotent), but a mid-way leader change is simply retried by the client.
                        let no_forward = forwarded || i > 0;
                        let method = ConsumerGroupsClient::commit_offsets;
                        let served = self.ctx.or_forward(Err::<(), _>(err), no_forward, None, req, method).await?;
                        return Ok(served.answer(|()| proto::CommitOffsetsResponse {}));
                    }
                }
                Ok(proto::CommitOffsetsResponse {})
            })
            .await
    }

    async fn fetch_offsets(
        &self,
        request: Request<proto::FetchOffsetsRequest>,
    ) -> Result<Response<proto::FetchOffsetsResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let (group, partitions) = (req.group.clone(), req.partitions.clone());
                let result = self.ctx.cluster.fetch_offsets(&group).await;
                let served =
                    self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::fetch_offsets).await?;
                Ok(served.answer(|offsets| proto::FetchOffsetsResponse {
                    offsets: partition_offsets(&offsets, &partitions),
                    group,
                }))
            })
            .await
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let result = self.ctx.cluster.list_groups().await;
                let served =
                    self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::list_groups).await?;
                // Only the groups the caller may read (a forwarded answer was filtered there).
                Ok(served.answer(|groups| proto::ListGroupsResponse {
                    groups: groups
                        .into_iter()
                        .filter(|g| self.ctx.allowed(Operation::GroupRead, Resource::Group(g)))
                        .collect(),
                }))
            })
            .await
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::DescribeGroupResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let group = req.group.clone();
                let result = self.ctx.cluster.fetch_offsets(&group).await;
                let offsets = match self
                    .ctx
                    .or_forward(result, forwarded, None, req, ConsumerGroupsClient::describe_group)
                    .await?
                {
                    Served::Here(offsets) => offsets,
                    Served::There(resp) => return Ok(resp),
                };
                let mut partitions = Vec::with_capacity(offsets.len());
                for o in &offsets {
                    partitions.push(group_lag(o, self.log_end(o).await?));
                }
                let total_lag = partitions.iter().map(|p| p.lag).sum();
                Ok(proto::DescribeGroupResponse { group, partitions, total_lag })
            })
            .await
    }
}
