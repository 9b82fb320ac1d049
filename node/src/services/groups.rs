//! `shale.api.v1.ConsumerGroups`: committed offsets and the group coordinator live in the
//! metadata group; calls that reach a follower are forwarded to the metadata leader (the
//! coordinator). Joining, heartbeating and committing are the group protocol of ARCHITECTURE.md
//! ("Consumer groups").

use std::sync::Arc;

use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::consumer_groups_client::ConsumerGroupsClient;
use shale_raft::cluster::groups::{Assignor, MemberFence};
use shale_raft::cluster::{ClusterError, ConsumerOffset, JoinRequest};
use tonic::{Request, Response, Status};

use shale_raft::cluster::access::{Operation, Resource};

use crate::context::{NodeContext, Served};
use crate::convert::errors::cluster_error;
use crate::convert::groups::{assignment_proto, group_lag, members_proto, partition_offsets, partitions, subscription};
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

    /// The high watermark of a partition, as its leader knows it (as Kafka's lag uses the leader's):
    /// here if this node leads it, else asked of the leader. A follower's own trails it (a follower
    /// hears of a commit with the leader's next message, up to `raft.commit_notice_delay_ms`
    /// later); it is the answer only when the leader cannot be asked.
    async fn log_end(&self, o: &ConsumerOffset) -> Result<u64, Status> {
        let leader = self.ctx.cluster.leader_of(&o.topic, o.partition);
        if let (Some(hw), Some((id, _))) = (o.high_watermark, &leader)
            && *id == self.ctx.node_id
        {
            return Ok(hw);
        }
        let asked = async {
            let (_, addr) = leader.ok_or_else(|| cluster_error(ClusterError::NotLeader { leader: None }))?;
            let req = proto::LocalChainHashRequest {
                topic: o.topic.clone(),
                partition: o.partition,
                offset: None,
                reread_from: None,
            };
            Ok::<_, Status>(self.ctx.forward(&addr, req, AdminClient::local_chain_hash).await?.log_end)
        };
        match (asked.await, o.high_watermark) {
            (Ok(end), _) => Ok(end),
            (Err(_), Some(hw)) => Ok(hw),
            (Err(e), None) => Err(e),
        }
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
                let fence = (!req.member_id.is_empty())
                    .then(|| MemberFence { member_id: req.member_id.clone(), member_epoch: req.member_epoch });
                let offsets = req.offsets.iter().map(|o| (o.topic.clone(), o.partition, o.offset)).collect();
                // One proposal for every offset: all are committed or none.
                let result = self.ctx.cluster.commit_offsets(&req.group, fence, offsets).await;
                let method = ConsumerGroupsClient::commit_offsets;
                let served = self.ctx.or_forward(result, forwarded, None, req, method).await?;
                Ok(served.answer(|()| proto::CommitOffsetsResponse {}))
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
                let mut partitions: Vec<proto::GroupPartitionLag> = Vec::with_capacity(offsets.len());
                for o in &offsets {
                    partitions.push(group_lag(o, self.log_end(o).await?));
                }
                let total_lag = partitions.iter().map(|p| p.lag).sum();
                // The metadata leader answered the offsets, so this node's state is as current.
                let state = self.ctx.cluster.group_state(&group).await.map_err(cluster_error)?;
                let (state, epoch, assignor, members) = match state {
                    Some(g) => {
                        (g.phase().as_str().to_string(), g.epoch, g.assignor.as_str().to_string(), members_proto(&g))
                    }
                    None => (String::new(), 0, String::new(), Vec::new()),
                };
                Ok(proto::DescribeGroupResponse { group, partitions, total_lag, state, epoch, assignor, members })
            })
            .await
    }

    async fn join_group(
        &self,
        request: Request<proto::JoinGroupRequest>,
    ) -> Result<Response<proto::GroupAssignment>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        self.ctx
            .handle(request, async |mut req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let subscriptions = req.subscriptions.iter().map(subscription).collect::<Result<Vec<_>, _>>()?;
                for s in &subscriptions {
                    // A prefix subscription is authorized per topic as its partitions are read.
                    if let shale_raft::cluster::groups::Subscription::Topic(t) = s {
                        limits::check_topic_name(t)?;
                        self.ctx.authorize(Operation::Consume, Resource::Topic(t)).await?;
                    }
                }
                let assignor = Assignor::parse(&req.assignor).map_err(cluster_error)?;
                if !forwarded && req.client_addr.is_empty() {
                    req.client_addr = peer;
                }
                let join = JoinRequest {
                    member_id: (!req.member_id.is_empty()).then(|| req.member_id.clone()),
                    client_addr: req.client_addr.clone(),
                    subscriptions,
                    session_timeout_ms: (req.session_timeout_ms != 0).then_some(req.session_timeout_ms),
                    assignor,
                };
                let result = self.ctx.cluster.join_group(&req.group, join).await;
                let served =
                    self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::join_group).await?;
                Ok(served.answer(|a| assignment_proto(&a)))
            })
            .await
    }

    async fn heartbeat(
        &self,
        request: Request<proto::GroupHeartbeatRequest>,
    ) -> Result<Response<proto::GroupAssignment>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let owned = partitions(&req.owned);
                let result = self.ctx.cluster.group_heartbeat(&req.group, &req.member_id, owned).await;
                let served = self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::heartbeat).await?;
                Ok(served.answer(|a| assignment_proto(&a)))
            })
            .await
    }

    async fn leave_group(
        &self,
        request: Request<proto::LeaveGroupRequest>,
    ) -> Result<Response<proto::LeaveGroupResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let result = self.ctx.cluster.leave_group(&req.group, &req.member_id).await;
                let served =
                    self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::leave_group).await?;
                Ok(served.answer(|()| proto::LeaveGroupResponse {}))
            })
            .await
    }

    async fn delete_group(
        &self,
        request: Request<proto::DeleteGroupRequest>,
    ) -> Result<Response<proto::DeleteGroupResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_group_name(&req.group)?;
                self.ctx.authorize(Operation::GroupRead, Resource::Group(&req.group)).await?;
                let result = self.ctx.cluster.delete_group(&req.group).await;
                let served =
                    self.ctx.or_forward(result, forwarded, None, req, ConsumerGroupsClient::delete_group).await?;
                Ok(served.answer(|()| proto::DeleteGroupResponse {}))
            })
            .await
    }
}
