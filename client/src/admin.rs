//! Topic management, cluster status and operations.
//!
//! Answers are the wire messages from [`crate::proto`]; they are plain data.

use std::time::Duration;

use crate::client::{Client, Route};
use crate::error::{ClientError, ErrorCode};
use crate::proto;

/// The admin API. Every call goes to any member; the node forwards to the leader that must answer.
#[derive(Clone, Debug)]
pub struct Admin {
    pub(crate) client: Client,
}

/// Settings of a new topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    /// Topic name (`[a-zA-Z0-9._-]`, 1..=249 characters).
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Retention by size per partition.
    pub retention_bytes: Option<u64>,
    /// Retention by age.
    pub retention_ms: Option<u64>,
    /// Payload compression.
    pub codec: proto::Codec,
}

impl NewTopic {
    /// A topic with `partitions` partitions, `replication_factor` replicas, no retention limit and no codec.
    pub fn new(name: impl Into<String>, partitions: u32, replication_factor: u32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            retention_bytes: None,
            retention_ms: None,
            codec: proto::Codec::None,
        }
    }

    fn to_proto(&self) -> proto::CreateTopicRequest {
        proto::CreateTopicRequest {
            name: self.name.clone(),
            config: Some(proto::TopicConfig {
                partitions: self.partitions,
                replication_factor: self.replication_factor,
                retention_bytes: self.retention_bytes,
                retention_ms: self.retention_ms,
                codec: self.codec as i32,
            }),
        }
    }
}

macro_rules! admin_call {
    ($self:ident, $method:ident, $req:expr) => {{
        let message = $req;
        $self
            .client
            .call(Route::Any, |ch| {
                let req = $self.client.request(message.clone(), Duration::ZERO);
                async move { Client::admin_client(ch).$method(req).await }
            })
            .await
    }};
}

impl Admin {
    /// The admin API over `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Creates a topic.
    ///
    /// Retried like every call; if an attempt failed in a way that may have taken effect (a
    /// timeout, a cut connection) and a later one answers TOPIC_EXISTS, the existing topic is
    /// taken as this call's own when its partitions and replication factor are the ones asked.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<proto::TopicInfo, ClientError> {
        let message = topic.to_proto();
        let (result, attempts) = self
            .client
            .call_tracked(Route::Any, |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::admin_client(ch).create_topic(req).await }
            })
            .await;
        match result {
            Ok(resp) => resp.topic.ok_or_else(|| ClientError::Protocol("CreateTopic answered without a topic".into())),
            Err(e) if attempts.maybe_applied && e.code() == Some(ErrorCode::TopicExists) => {
                let existing = self.describe_topic(&topic.name).await?;
                let same = existing.config.as_ref().is_some_and(|c| {
                    c.partitions == topic.partitions && c.replication_factor == topic.replication_factor
                });
                if same { Ok(existing) } else { Err(e) }
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic and its data.
    ///
    /// Retried like every call; UNKNOWN_TOPIC after an attempt that may have taken effect counts
    /// as done (that attempt deleted it).
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let message = proto::DeleteTopicRequest { name: name.to_string() };
        let (result, attempts) = self
            .client
            .call_tracked(Route::Any, |ch| {
                let req = self.client.request(message.clone(), Duration::ZERO);
                async move { Client::admin_client(ch).delete_topic(req).await }
            })
            .await;
        match result {
            Ok(_) => {}
            Err(e) if attempts.maybe_applied && e.code() == Some(ErrorCode::UnknownTopic) => {}
            Err(e) => return Err(e),
        }
        self.client.forget_topic(name);
        Ok(())
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<proto::TopicInfo>, ClientError> {
        Ok(admin_call!(self, list_topics, proto::ListTopicsRequest {})?.topics)
    }

    /// One topic with its partitions.
    pub async fn describe_topic(&self, name: &str) -> Result<proto::TopicInfo, ClientError> {
        let resp = admin_call!(self, describe_topic, proto::DescribeTopicRequest { name: name.to_string() })?;
        let topic = resp.topic.ok_or_else(|| ClientError::Protocol("DescribeTopic answered without a topic".into()))?;
        self.client.learn_topic(&topic);
        Ok(topic)
    }

    /// Changes a topic's settings (fields left `None` stay as they are).
    pub async fn alter_topic(&self, request: proto::AlterTopicRequest) -> Result<proto::TopicInfo, ClientError> {
        let name = request.name.clone();
        let resp = admin_call!(self, alter_topic, request)?;
        self.client.forget_topic(&name);
        resp.topic.ok_or_else(|| ClientError::Protocol("AlterTopic answered without a topic".into()))
    }

    /// Members, groups, leaders and replication progress.
    pub async fn cluster_status(&self) -> Result<proto::ClusterStatusResponse, ClientError> {
        self.client.refresh_metadata().await
    }

    /// Adds a node to the cluster: `addr` is its internal address (where other nodes reach it);
    /// its client address is asked from the node itself (see [`Admin::add_node_with_client_addr`]).
    pub async fn add_node(&self, node_id: u64, addr: &str) -> Result<Vec<proto::NodeInfo>, ClientError> {
        self.add_node_with_client_addr(node_id, addr, "").await
    }

    /// Adds a node (or re-addresses a member) with its internal address `addr` and the address
    /// clients are told, `client_addr` (empty: asked from the node itself, else `addr`).
    pub async fn add_node_with_client_addr(
        &self,
        node_id: u64,
        addr: &str,
        client_addr: &str,
    ) -> Result<Vec<proto::NodeInfo>, ClientError> {
        let request = proto::AddNodeRequest {
            node_id,
            addr: addr.to_string(),
            client_addr: client_addr.to_string(),
            kafka_addr: String::new(),
        };
        Ok(admin_call!(self, add_node, request)?.members)
    }

    /// Removes a node from the cluster.
    ///
    /// Retried like every call; UNKNOWN_NODE after an attempt that may have taken effect counts as
    /// done (that attempt removed it), answering the members as they are now.
    pub async fn remove_node(&self, node_id: u64) -> Result<Vec<proto::NodeInfo>, ClientError> {
        let message = proto::RemoveNodeRequest { node_id };
        let (result, attempts) = self
            .client
            .call_tracked(Route::Any, |ch| {
                let req = self.client.request(message, Duration::ZERO);
                async move { Client::admin_client(ch).remove_node(req).await }
            })
            .await;
        match result {
            Ok(resp) => Ok(resp.members),
            Err(e) if attempts.maybe_applied && e.code() == Some(ErrorCode::UnknownNode) => {
                let members = self.client.refresh_metadata().await?.members;
                if members.iter().any(|m| m.id == node_id) { Err(e) } else { Ok(members) }
            }
            Err(e) => Err(e),
        }
    }

    /// Moves a partition's leadership to `to_node_id`; answers the new leader.
    pub async fn transfer_leader(&self, topic: &str, partition: u32, to_node_id: u64) -> Result<u64, ClientError> {
        let req = proto::TransferLeaderRequest { topic: topic.to_string(), partition, to_node_id };
        let resp = admin_call!(self, transfer_leader, req)?;
        self.client.forget_topic(topic);
        Ok(resp.leader_id)
    }

    /// Checkpoints one partition, a topic (`partition = None`) or everything (`topic = ""`).
    pub async fn checkpoint(
        &self,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<Vec<proto::PartitionCheckpoint>, ClientError> {
        let req = proto::CheckpointRequest { topic: topic.to_string(), partition };
        Ok(admin_call!(self, checkpoint, req)?.checkpoints)
    }

    /// Applies retention now, as [`Admin::checkpoint`] selects partitions.
    pub async fn compact(
        &self,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<Vec<proto::PartitionCompaction>, ClientError> {
        let req = proto::CompactRequest { topic: topic.to_string(), partition };
        Ok(admin_call!(self, compact, req)?.partitions)
    }

    /// The chain hash at `offset` (default: the last offset every replica holds) on every replica.
    pub async fn verify(
        &self,
        topic: &str,
        partition: u32,
        offset: Option<u64>,
    ) -> Result<proto::VerifyResponse, ClientError> {
        admin_call!(
            self,
            verify,
            proto::VerifyRequest { topic: topic.to_string(), partition, offset, reread_from: None }
        )
    }

    /// Every replica re-reads its records `[reread_from, offset]` from disk (from its own log start
    /// if that is higher) and answers the chain hash the re-read ends on, or the damage it found.
    pub async fn verify_reread(
        &self,
        topic: &str,
        partition: u32,
        reread_from: u64,
        offset: u64,
    ) -> Result<proto::VerifyResponse, ClientError> {
        let req = proto::VerifyRequest {
            topic: topic.to_string(),
            partition,
            offset: Some(offset),
            reread_from: Some(reread_from),
        };
        admin_call!(self, verify, req)
    }

    /// Consumer groups that have committed offsets.
    pub async fn list_groups(&self) -> Result<Vec<String>, ClientError> {
        let resp = self
            .client
            .call(Route::Any, |ch| {
                let req = self.client.request(proto::ListGroupsRequest {}, Duration::ZERO);
                async move { Client::groups_client(ch).list_groups(req).await }
            })
            .await?;
        Ok(resp.groups)
    }

    /// Deletes a consumer group without members and its committed offsets (GROUP_NOT_EMPTY while
    /// it has members).
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        self.client
            .call(Route::Any, |ch| {
                let req = self.client.request(proto::DeleteGroupRequest { group: group.to_string() }, Duration::ZERO);
                async move { Client::groups_client(ch).delete_group(req).await }
            })
            .await?;
        Ok(())
    }

    /// A group's committed offsets and lag per partition, and its coordinator state (epoch,
    /// assignor, members).
    pub async fn describe_group(&self, group: &str) -> Result<proto::DescribeGroupResponse, ClientError> {
        self.client
            .call(Route::Any, |ch| {
                let req = self.client.request(proto::DescribeGroupRequest { group: group.to_string() }, Duration::ZERO);
                async move { Client::groups_client(ch).describe_group(req).await }
            })
            .await
    }
}
