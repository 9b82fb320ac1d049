//! `shale.api.v1.Admin`: topics, membership, leadership, maintenance and cross-replica verification.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use shale_client::ErrorCode;
use shale_client::error::status;
use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_raft::RaftError;
use shale_raft::cluster::{Cluster, ClusterError, FetchRequest, MemberAddrs, TopicInfo};
use shale_storage::{ReadCheck, StorageError};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use shale_raft::cluster::access::{Operation, Resource};

use crate::auth::audit::audited;
use crate::context::{NodeContext, Served};
use crate::convert::errors::{cluster_error, invalid};
use crate::convert::{hash_bytes, status as status_conv, topics};
use crate::limits;

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Arc<NodeContext>,
}

impl AdminService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    fn leader_hint(&self, topic: &str) -> impl Fn(u32) -> Option<(u64, String)> + '_ {
        let topic = topic.to_string();
        // Clients are told the leader's client address.
        move |p| self.ctx.cluster.client_view(self.ctx.cluster.leader_of(&topic, p))
    }

    fn wire_topic(&self, info: &TopicInfo) -> proto::TopicInfo {
        topics::topic_info(info, None, self.leader_hint(&info.name))
    }

    fn members(&self) -> Vec<proto::NodeInfo> {
        status_conv::cluster_status(&self.ctx.cluster.cluster_status()).members
    }

    /// The partitions a checkpoint/compaction request selects among those hosted here.
    fn local_partitions(&self, topic: &str, partition: Option<u32>) -> Result<Vec<(String, u32)>, Status> {
        if !topic.is_empty() {
            limits::check_topic_name(topic)?;
        }
        if let Some(p) = partition {
            if topic.is_empty() {
                return Err(invalid("partition", "a partition needs a topic"));
            }
            return Ok(vec![(topic.to_string(), p)]);
        }
        Ok(self
            .ctx
            .cluster
            .cluster_status()
            .partitions
            .into_iter()
            .filter_map(|g| g.partition)
            .filter(|(t, _)| topic.is_empty() || t == topic)
            .collect())
    }

    /// Runs `op` on each partition hosted here that `selected` (topic, partition) picks, in order
    /// (checkpoint and compaction requests). If one of them must be run by another node, the
    /// whole request `req` goes there instead (with `method`, at most once: this node stops at
    /// that partition), and that node's answer is the answer.
    async fn on_local_partitions<T, Req: Clone, Resp, Fut>(
        &self,
        req: &Req,
        selected: (&str, Option<u32>),
        forwarded: bool,
        op: impl Fn(String, u32) -> Fut,
        method: impl AsyncFnOnce(&mut AdminClient<Channel>, Request<Req>) -> Result<Response<Resp>, Status> + Copy,
    ) -> Result<Served<Vec<(String, u32, T)>, Resp>, Status>
    where
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let mut done = Vec::new();
        for (topic, partition) in self.local_partitions(selected.0, selected.1)? {
            let result = op(topic.clone(), partition).await;
            match self.ctx.or_forward(result, forwarded, Some((&topic, partition)), req.clone(), method).await? {
                Served::Here(v) => done.push((topic, partition, v)),
                Served::There(resp) => return Ok(Served::There(resp)),
            }
        }
        Ok(Served::Here(done))
    }

    /// This replica's bounds and (with `offset`) its chain hash there: from memory, or, with
    /// `reread_from`, from a re-read of `[max(reread_from, log start), offset]` from disk that
    /// reports the damage it finds.
    async fn local_chain_hash(
        &self,
        req: &proto::LocalChainHashRequest,
    ) -> Result<proto::LocalChainHashResponse, Status> {
        limits::check_topic_name(&req.topic)?;
        let cluster = &self.ctx.cluster;
        cluster.apply_what_is_held(&req.topic, req.partition).await.map_err(cluster_error)?;
        let state = cluster.local_partition_state(&req.topic, req.partition).map_err(cluster_error)?;
        let log_start = state.log_start.unwrap_or(0);
        let mut resp = proto::LocalChainHashResponse {
            node_id: self.ctx.node_id,
            chain_hash: None,
            log_start,
            log_end: state.high_watermark.unwrap_or(0),
            reread_from: None,
            records_reread: 0,
            damage: None,
        };
        // Offsets here are record offsets; chain hashes are per log entry: the hash compared for
        // offset `o` is that of the entry holding record `o` (the hash its producer was given).
        match (req.offset, req.reread_from) {
            (None, _) => {}
            (Some(offset), None) => {
                let index = entry_holding(cluster, &req.topic, req.partition, offset).await.map_err(cluster_error)?;
                resp.chain_hash =
                    Some(hash_bytes(&cluster.verify(&req.topic, req.partition, index).map_err(cluster_error)?));
            }
            (Some(offset), Some(from)) => {
                let from = from.max(log_start);
                if from > offset {
                    // The replica holds nothing of the range: its start is past the offset.
                    return Err(cluster_error(ClusterError::OffsetOutOfRange {
                        requested: offset,
                        start: log_start,
                        end: resp.log_end,
                    }));
                }
                resp.reread_from = Some(from);
                // The entries holding records `from ..= offset` (Raft's own and hidden ones between
                // them included), by log index. Finding them reads entries too: damage met there is
                // this replica's damage, reported as the re-read's.
                let range = async {
                    let first = entry_holding(cluster, &req.topic, req.partition, from).await?;
                    let last = entry_holding(cluster, &req.topic, req.partition, offset).await?;
                    cluster.verify_range(&req.topic, req.partition, first, last + 1).await
                };
                match range.await {
                    Ok(v) => {
                        resp.records_reread = v.records;
                        resp.chain_hash = Some(hash_bytes(&v.head));
                    }
                    Err(e) => match damage_of(&e) {
                        Some(damage) => resp.damage = Some(damage),
                        None => return Err(cluster_error(e)),
                    },
                }
            }
        }
        Ok(resp)
    }

    /// Asks every replica of a partition for its chain hash at one offset (by default the newest
    /// offset every replica holds) and compares them.
    async fn verify_replicas(&self, req: proto::VerifyRequest) -> Result<proto::VerifyResponse, Status> {
        limits::check_topic_name(&req.topic)?;
        let cluster = &self.ctx.cluster;
        let topic = match cluster.local_topics().into_iter().find(|t| t.name == req.topic) {
            Some(t) => t,
            None => cluster.describe_topic(&req.topic).await.map_err(cluster_error)?.info,
        };
        let assignment = topic.partitions.iter().find(|a| a.partition == req.partition).ok_or_else(|| {
            cluster_error(ClusterError::UnknownPartition {
                topic: req.topic.clone(),
                partition: req.partition,
                count: topic.partitions.len() as u32,
            })
        })?;
        let addrs: HashMap<u64, String> =
            cluster.cluster_status().members.into_iter().map(|m| (m.id, m.addr)).collect();
        let replicas: Vec<(u64, String)> =
            assignment.replicas.iter().map(|id| (*id, addrs.get(id).cloned().unwrap_or_default())).collect();
        let offset = match req.offset {
            Some(o) => o,
            None => {
                let probe = proto::LocalChainHashRequest {
                    topic: req.topic.clone(),
                    partition: req.partition,
                    offset: None,
                    reread_from: None,
                };
                let bounds = self.ask_replicas(&replicas, &probe).await;
                let ends: Vec<u64> = bounds.iter().filter_map(|(_, _, r)| r.as_ref().ok().map(|r| r.log_end)).collect();
                match compare_point(&ends) {
                    ComparePoint::At(offset) => offset,
                    ComparePoint::NothingInCommon => {
                        // Nothing written yet (a keyless producer's sticky runs leave partitions
                        // empty for a while), or a replica holds nothing while others hold records
                        // (it is behind, or lost its log): no record to compare. Each replica's
                        // bounds say what it holds; the caller judges the lag.
                        let answers = self.replica_answers(bounds);
                        let agree = answers.iter().all(|a| a.error.is_empty() && a.log_end == 0);
                        return Ok(proto::VerifyResponse {
                            topic: req.topic,
                            partition: req.partition,
                            offset: 0,
                            partition_start: partition_start(&topic, &answers),
                            keep_all: keeps_all(&topic),
                            replicas: answers,
                            agree,
                            empty: true,
                        });
                    }
                    ComparePoint::NoAnswer => {
                        return Err(status(
                            ErrorCode::Unavailable,
                            format!("no replica of {}/{} answered", req.topic, req.partition),
                        ));
                    }
                }
            }
        };
        let ask = proto::LocalChainHashRequest {
            topic: req.topic.clone(),
            partition: req.partition,
            offset: Some(offset),
            reread_from: req.reread_from,
        };
        let answers = self.replica_answers(self.ask_replicas(&replicas, &ask).await);
        let first = answers.first().and_then(|a| a.chain_hash.clone());
        let agree = first.is_some() && answers.iter().all(|a| a.chain_hash == first);
        Ok(proto::VerifyResponse {
            topic: req.topic,
            partition: req.partition,
            offset,
            partition_start: partition_start(&topic, &answers),
            keep_all: keeps_all(&topic),
            replicas: answers,
            agree,
            empty: false,
        })
    }

    /// Each replica's answer as the verify response shows it.
    fn replica_answers(
        &self,
        asked: Vec<(u64, String, Result<proto::LocalChainHashResponse, Status>)>,
    ) -> Vec<proto::ReplicaChainHash> {
        asked
            .into_iter()
            .map(|(node_id, addr, r)| (node_id, self.ctx.cluster.member_addrs(node_id).map_or(addr, |a| a.client), r))
            // Asked at its internal address; shown as clients reach it.
            .map(|(node_id, addr, r)| match r {
                Ok(r) => proto::ReplicaChainHash {
                    node_id,
                    addr,
                    chain_hash: r.chain_hash,
                    log_start: r.log_start,
                    log_end: r.log_end,
                    // A damaged replica fails the check for clients that only read `error` too.
                    error: r.damage.as_ref().map(damage_text).unwrap_or_default(),
                    reread_from: r.reread_from,
                    records_reread: r.records_reread,
                    damage: r.damage,
                },
                Err(s) => proto::ReplicaChainHash {
                    node_id,
                    addr,
                    chain_hash: None,
                    log_start: 0,
                    log_end: 0,
                    error: format!("{:?}: {}", s.code(), s.message()),
                    reread_from: None,
                    records_reread: 0,
                    damage: None,
                },
            })
            .collect()
    }

    /// Asks every replica (this node directly, others over gRPC) for `LocalChainHash`.
    async fn ask_replicas(
        &self,
        replicas: &[(u64, String)],
        req: &proto::LocalChainHashRequest,
    ) -> Vec<(u64, String, Result<proto::LocalChainHashResponse, Status>)> {
        let calls = replicas.iter().map(|(id, addr)| {
            let req = req.clone();
            async move {
                if *id == self.ctx.node_id {
                    return (*id, addr.clone(), self.local_chain_hash(&req).await);
                }
                // A read: asked again when the call broke in transport. A channel to a peer that
                // was killed and came back fails its first call on the dead connection (no reset
                // came from the killed process) and reconnects for the next.
                let mut pauses = TRANSPORT_RETRY_PAUSES.iter();
                loop {
                    let result = self.ctx.forward(addr, req.clone(), AdminClient::local_chain_hash).await;
                    match (result, pauses.next()) {
                        (Err(s), Some(pause)) if failed_in_transport(&s) => tokio::time::sleep(*pause).await,
                        (result, _) => return (*id, addr.clone(), result),
                    }
                }
            }
        });
        join_all(calls).await
    }
}

/// Pauses before asking a replica again after a call to it broke in transport (see
/// [`failed_in_transport`]); bounded so a replica that is down costs a Verify well under a second.
const TRANSPORT_RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(300)];

/// Whether a call to a peer failed before the peer answered: the connection could not be made
/// (`Unavailable`) or broke under the call (`Unknown`, from tonic's transport error), as opposed to
/// an answer the peer gave.
fn failed_in_transport(s: &Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => {
            std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
                || s.message() == "transport error"
        }
        _ => false,
    }
}

/// The damage a failed read or re-read of this replica's log names, if that is why it failed.
fn damage_of(err: &ClusterError) -> Option<proto::ReplicaDamage> {
    let storage = match err {
        ClusterError::Storage(e) | ClusterError::Raft(RaftError::Storage { source: e, .. }) => e,
        _ => return None,
    };
    match storage {
        StorageError::Corruption { file, position, offset, reason, .. } => Some(proto::ReplicaDamage {
            offset: offset.map(|o| o.get()),
            reason: reason.to_string(),
            file: file.clone(),
            position: *position,
        }),
        _ => None,
    }
}

/// The log index of the entry holding record `offset` on this replica (a fetch by offset starts
/// at it). Past the replica's records: `OffsetOutOfRange`.
async fn entry_holding(cluster: &Cluster, topic: &str, partition: u32, offset: u64) -> Result<u64, ClusterError> {
    let request = FetchRequest {
        topic: topic.to_string(),
        partition,
        offset,
        from_index: None,
        max_bytes: 1,
        wait: Duration::ZERO,
        check: ReadCheck::Chain,
    };
    let answer = cluster.fetch(request).await?;
    match answer.entries.first() {
        Some(e) => Ok(e.index),
        None => Err(ClusterError::OffsetOutOfRange {
            requested: offset,
            start: answer.log_start,
            end: answer.high_watermark,
        }),
    }
}

#[tonic::async_trait]
impl proto::admin_server::Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::CreateTopicResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("create_topic", &format!("topic {name}"), "", async {
                    limits::check_topic_name(&req.name)?;
                    self.ctx.authorize(Operation::Create, Resource::Topic(&name)).await?;
                    let spec = topics::topic_spec(req.clone())?;
                    limits::check_partition_count(spec.partitions, &self.ctx.limits)?;
                    let result = self.ctx.cluster.create_topic(spec).await;
                    match &result {
                        Err(shale_raft::cluster::ClusterError::ClusterLimit { total, .. }) => {
                            self.ctx.metrics.count_limit_refusal(total.config_key().trim_start_matches("limits."));
                        }
                        Err(shale_raft::cluster::ClusterError::NodeLimit { limit, .. }) => {
                            self.ctx.metrics.count_limit_refusal(limit.config_key().trim_start_matches("limits."));
                        }
                        _ => {}
                    }
                    let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::create_topic).await?;
                    Ok(served.answer(|info| proto::CreateTopicResponse { topic: Some(self.wire_topic(&info)) }))
                })
                .await
            })
            .await
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("delete_topic", &format!("topic {name}"), "", async {
                    limits::check_topic_name(&name)?;
                    self.ctx.authorize(Operation::Delete, Resource::Topic(&name)).await?;
                    let result = self.ctx.cluster.delete_topic(&name).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::delete_topic).await?;
                    Ok(served.answer(|()| proto::DeleteTopicResponse {}))
                })
                .await
            })
            .await
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let result = self.ctx.cluster.list_topics().await;
                let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::list_topics).await?;
                // Only the topics the caller may describe (a forwarded answer was filtered there).
                Ok(served.answer(|list| proto::ListTopicsResponse {
                    topics: list
                        .iter()
                        .filter(|t| self.ctx.allowed(Operation::Describe, Resource::Topic(&t.name)))
                        .map(|t| self.wire_topic(t))
                        .collect(),
                }))
            })
            .await
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::DescribeTopicResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                limits::check_topic_name(&req.name)?;
                let name = req.name.clone();
                self.ctx.authorize(Operation::Describe, Resource::Topic(&name)).await?;
                let result = self.ctx.cluster.describe_topic(&name).await;
                let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::describe_topic).await?;
                Ok(served.answer(|mut d| {
                    // Leaders as clients reach them (the cluster names their internal address).
                    for p in &mut d.partitions {
                        p.leader = self.ctx.cluster.client_view(p.leader.take());
                    }
                    proto::DescribeTopicResponse { topic: Some(topics::topic_description(&d, self.leader_hint(&name))) }
                }))
            })
            .await
    }

    async fn alter_topic(
        &self,
        request: Request<proto::AlterTopicRequest>,
    ) -> Result<Response<proto::AlterTopicResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let name = req.name.clone();
                audited("alter_topic", &format!("topic {name}"), "", async {
                    limits::check_topic_name(&req.name)?;
                    self.ctx.authorize(Operation::Alter, Resource::Topic(&name)).await?;
                    let current = self
                        .ctx
                        .cluster
                        .local_topics()
                        .into_iter()
                        .find(|t| t.name == req.name)
                        .map(|t| t.retention)
                        .unwrap_or_default();
                    let update = topics::topic_update(&req, current)?;
                    let result = self.ctx.cluster.alter_topic(&req.name, update).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::alter_topic).await?;
                    Ok(served.answer(|info| proto::AlterTopicResponse { topic: Some(self.wire_topic(&info)) }))
                })
                .await
            })
            .await
    }

    async fn cluster_status(
        &self,
        request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        self.ctx
            .handle(request, async |_, _| {
                // No permission needed: clients find partition leaders with it, and a node starting
                // a cluster without TLS probes its peers with it (as nobody in particular). What it
                // shows (members, topic and partition placement) /metrics shows too.
                let status = self.ctx.cluster.cluster_status();
                let mut response = status_conv::cluster_status(&status);
                response.client_addr = self.ctx.cluster.own_client_addr();
                response.internal_addr = self.ctx.cluster.own_internal_addr().to_string();
                response.kafka_addr = self.ctx.cluster.own_kafka_addr();
                response.damaged =
                    status_conv::damaged(&self.ctx.cluster.local_topics(), self.ctx.node_id, &self.ctx.damage.all());
                Ok(response)
            })
            .await
    }

    async fn add_node(
        &self,
        request: Request<proto::AddNodeRequest>,
    ) -> Result<Response<proto::AddNodeResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                audited("add_node", &format!("node {}", req.node_id), "", async {
                    self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await?;
                    if req.node_id == 0 {
                        return Err(invalid("node_id", "node ids start at 1"));
                    }
                    let max = shale_raft::cluster::limits::MAX_ADDR_BYTES;
                    if req.addr.is_empty() || req.addr.len() > max {
                        return Err(invalid("addr", "a node address is a non-empty host:port"));
                    }
                    if req.client_addr.len() > max {
                        return Err(invalid("client_addr", "a client address is a host:port"));
                    }
                    if req.kafka_addr.len() > max {
                        return Err(invalid("kafka_addr", "a Kafka address is a host:port"));
                    }
                    // Only the metadata leader adds (elsewhere the call is forwarded as it came).
                    let result = if self.ctx.cluster.is_metadata_leader() {
                        let probed = if req.client_addr.is_empty() || req.kafka_addr.is_empty() {
                            crate::bootstrap::probe_addrs(&req.addr, self.ctx.cluster.router().peers().tls().as_ref())
                                .await
                        } else {
                            None
                        };
                        let recorded = self.ctx.cluster.member_addrs(req.node_id);
                        let client = match (req.client_addr.is_empty(), &probed) {
                            (false, _) => req.client_addr.clone(),
                            (true, Some(p)) if !p.client.is_empty() => p.client.clone(),
                            (true, _) => req.addr.clone(),
                        };
                        let kafka = match (req.kafka_addr.is_empty(), &probed) {
                            (false, _) => req.kafka_addr.clone(),
                            (true, Some(p)) => p.kafka.clone(),
                            (true, None) => recorded.map(|r| r.kafka).unwrap_or_default(),
                        };
                        let addrs = MemberAddrs::pair(req.addr.clone(), client).with_kafka(kafka);
                        self.ctx.cluster.add_node(req.node_id, addrs).await
                    } else {
                        Err(ClusterError::NotLeader { leader: self.ctx.cluster.metadata_leader() })
                    };
                    let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::add_node).await?;
                    Ok(served.answer(|()| proto::AddNodeResponse { members: self.members() }))
                })
                .await
            })
            .await
    }

    async fn remove_node(
        &self,
        request: Request<proto::RemoveNodeRequest>,
    ) -> Result<Response<proto::RemoveNodeResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                audited("remove_node", &format!("node {}", req.node_id), "", async {
                    self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await?;
                    let result = self.ctx.cluster.remove_node(req.node_id).await;
                    let served = self.ctx.or_forward(result, forwarded, None, req, AdminClient::remove_node).await?;
                    Ok(served.answer(|()| proto::RemoveNodeResponse { members: self.members() }))
                })
                .await
            })
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let (topic, partition, to) = (req.topic.clone(), req.partition, req.to_node_id);
                let target = format!("topic {topic} partition {partition}");
                audited("transfer_leader", &target, &format!("to node {to}"), async {
                    limits::check_topic_name(&topic)?;
                    self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await?;
                    let result = self.ctx.cluster.transfer_leader(&topic, partition, to).await;
                    let served = self
                        .ctx
                        .or_forward(result, forwarded, Some((&topic, partition)), req, AdminClient::transfer_leader)
                        .await?;
                    Ok(served.answer(|()| proto::TransferLeaderResponse { leader_id: to }))
                })
                .await
            })
            .await
    }

    async fn checkpoint(
        &self,
        request: Request<proto::CheckpointRequest>,
    ) -> Result<Response<proto::CheckpointResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let target = scope_of(&req.topic, req.partition);
                audited("checkpoint", &target, "", async {
                    self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await?;
                    let checkpoint = |topic: String, partition| async move {
                        let index = self.ctx.cluster.checkpoint(&topic, partition).await?;
                        Ok(index.map(|offset| {
                            let hash = self.ctx.cluster.verify(&topic, partition, offset).map(|h| hash_bytes(&h));
                            (offset, hash.unwrap_or_default())
                        }))
                    };
                    let selected = (req.topic.as_str(), req.partition);
                    let served = self
                        .on_local_partitions(&req, selected, forwarded, checkpoint, AdminClient::checkpoint)
                        .await?;
                    Ok(served.answer(|done| proto::CheckpointResponse {
                        checkpoints: done
                            .into_iter()
                            .filter_map(|(topic, partition, index)| {
                                index.map(|(offset, chain_hash)| proto::PartitionCheckpoint {
                                    topic,
                                    partition,
                                    offset,
                                    chain_hash,
                                })
                            })
                            .collect(),
                    }))
                })
                .await
            })
            .await
    }

    async fn compact(
        &self,
        request: Request<proto::CompactRequest>,
    ) -> Result<Response<proto::CompactResponse>, Status> {
        self.ctx
            .handle(request, async |req, forwarded| {
                let target = scope_of(&req.topic, req.partition);
                audited("compact", &target, "", async {
                    self.ctx.authorize(Operation::ClusterAdmin, Resource::Cluster).await?;
                    let compact =
                        |topic: String, partition| async move { self.ctx.cluster.compact(&topic, partition).await };
                    let selected = (req.topic.as_str(), req.partition);
                    let served =
                        self.on_local_partitions(&req, selected, forwarded, compact, AdminClient::compact).await?;
                    Ok(served.answer(|done| proto::CompactResponse {
                        partitions: done
                            .iter()
                            .map(|(topic, partition, outcome)| status_conv::compaction(topic, *partition, outcome))
                            .collect(),
                    }))
                })
                .await
            })
            .await
    }

    async fn verify(&self, request: Request<proto::VerifyRequest>) -> Result<Response<proto::VerifyResponse>, Status> {
        self.ctx
            .handle(request, async |req, _| {
                limits::check_topic_name(&req.topic)?;
                self.ctx.authorize(Operation::Describe, Resource::Topic(&req.topic)).await?;
                self.verify_replicas(req).await
            })
            .await
    }

    async fn local_chain_hash(
        &self,
        request: Request<proto::LocalChainHashRequest>,
    ) -> Result<Response<proto::LocalChainHashResponse>, Status> {
        self.ctx
            .handle(request, async |req, _| {
                limits::check_topic_name(&req.topic)?;
                self.ctx.authorize(Operation::Describe, Resource::Topic(&req.topic)).await?;
                self.local_chain_hash(&req).await
            })
            .await
    }
}

/// What a checkpoint or compaction request selects, for the audit log.
fn scope_of(topic: &str, partition: Option<u32>) -> String {
    match (topic, partition) {
        ("", _) => "every partition here".to_string(),
        (t, None) => format!("topic {t}"),
        (t, Some(p)) => format!("topic {t} partition {p}"),
    }
}

/// A damage report as one line (the `error` of a damaged replica's answer).
/// True when the topic keeps every record (no retention limit).
fn keeps_all(topic: &TopicInfo) -> bool {
    topic.retention.retention_bytes.is_none() && topic.retention.retention_ms.is_none()
}

/// Where `verify` compares the replicas when no offset was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ComparePoint {
    /// The last record every replica that answered holds (the lowest log end, less one).
    At(u64),
    /// A replica that answered holds no record: nothing was written yet, or it holds nothing
    /// while others do (behind, or it lost its log). There is no record to compare.
    NothingInCommon,
    /// No replica answered.
    NoAnswer,
}

/// The compare point for the log ends of the replicas that answered.
fn compare_point(ends: &[u64]) -> ComparePoint {
    match ends.iter().min() {
        Some(0) => ComparePoint::NothingInCommon,
        Some(end) => ComparePoint::At(end - 1),
        None => ComparePoint::NoAnswer,
    }
}

/// What every replica should hold from: everything for a topic without retention; otherwise the
/// lowest start any replica that answered still has (retention may have moved it). A replica
/// holding no record says nothing about where the partition starts, unless none holds one.
fn partition_start(topic: &TopicInfo, answers: &[proto::ReplicaChainHash]) -> u64 {
    if keeps_all(topic) { 0 } else { lowest_start(answers) }
}

/// The lowest log start among the replicas that answered and hold a record (among all that
/// answered when none holds one).
fn lowest_start(answers: &[proto::ReplicaChainHash]) -> u64 {
    let answered = || answers.iter().filter(|a| a.error.is_empty() || a.damage.is_some());
    let holding = answered().filter(|a| a.log_end > 0).map(|a| a.log_start).min();
    holding.or_else(|| answered().map(|a| a.log_start).min()).unwrap_or(0)
}

fn damage_text(d: &proto::ReplicaDamage) -> String {
    let at = d.offset.map_or_else(String::new, |o| format!(" at offset {o}"));
    format!("CORRUPTION{at}: {} ({} byte {})", d.reason, d.file, d.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_compared_at_the_last_record_all_of_them_hold() {
        assert_eq!(compare_point(&[100, 90, 100]), ComparePoint::At(89));
        assert_eq!(compare_point(&[1]), ComparePoint::At(0));
        // Nothing written yet, or one replica holds nothing while the others hold records: no
        // record in common (an error here, before: "holds no committed entry yet").
        assert_eq!(compare_point(&[0, 0, 0]), ComparePoint::NothingInCommon);
        assert_eq!(compare_point(&[100, 0, 100]), ComparePoint::NothingInCommon);
        assert_eq!(compare_point(&[]), ComparePoint::NoAnswer);
    }

    #[test]
    fn a_replica_holding_nothing_does_not_move_the_partition_start() {
        let answer = |start: u64, end: u64, error: &str| proto::ReplicaChainHash {
            log_start: start,
            log_end: end,
            error: error.into(),
            ..Default::default()
        };
        // Retention moved every holding replica's start to 500; the empty one reports 0.
        assert_eq!(lowest_start(&[answer(500, 900, ""), answer(0, 0, ""), answer(520, 900, "")]), 500);
        // A replica that did not answer reports nothing.
        assert_eq!(lowest_start(&[answer(500, 900, ""), answer(0, 0, "Unavailable: down")]), 500);
        assert_eq!(lowest_start(&[answer(0, 0, ""), answer(0, 0, "")]), 0);
        assert_eq!(lowest_start(&[answer(300, 900, ""), answer(500, 900, "")]), 300);
    }

    #[test]
    fn only_calls_that_broke_before_an_answer_count_as_transport_failures() {
        assert!(failed_in_transport(&Status::unavailable("tcp connect error")));
        assert!(failed_in_transport(&Status::unknown("transport error")));
        // Answers the peer gave are not asked again.
        assert!(!failed_in_transport(&Status::unknown("the replica's log is damaged")));
        assert!(!failed_in_transport(&Status::not_found("no such partition")));
        assert!(!failed_in_transport(&Status::deadline_exceeded("timeout")));
    }
}
