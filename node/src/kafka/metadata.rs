//! Metadata: brokers are the cluster's members at their recorded Kafka addresses, topics and
//! partitions are Shale's, a partition's leader is its Raft group's leader as this node sees it
//! (the preferred replica as a hint where this node hosts no replica).

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use shale_raft::cluster::TopicInfo;
use shale_raft::cluster::access::{Operation, Resource};

use crate::context::NodeContext;

/// The cluster id Kafka clients are told (Shale has one cluster per metadata group).
pub const CLUSTER_ID: &str = "shale";

/// Answers a Metadata request from this node's applied metadata.
pub async fn handle(ctx: &NodeContext, req: MetadataRequest, _version: i16) -> MetadataResponse {
    let status = ctx.cluster.cluster_status();
    let brokers: Vec<MetadataResponseBroker> = status
        .members
        .iter()
        .filter_map(|m| {
            let (host, port) = super::split_host_port(&m.kafka_addr)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(m.id as i32))
                    .with_host(StrBytes::from_string(host.to_string()))
                    .with_port(i32::from(port)),
            )
        })
        .collect();
    let controller = ctx.cluster.metadata_leader().map_or(-1, |(id, _)| id as i32);
    let topics = ctx.cluster.local_topics();
    let wanted: Vec<TopicInfo> = match &req.topics {
        // All topics: those the caller may describe.
        None => topics.into_iter().filter(|t| ctx.allowed(Operation::Describe, Resource::Topic(&t.name))).collect(),
        Some(asked) => {
            let mut out = Vec::new();
            let mut answers = Vec::new();
            for t in asked {
                let Some(name) = t.name.as_ref().map(|n| n.0.as_str().to_string()) else { continue };
                if !ctx.allowed(Operation::Describe, Resource::Topic(&name)) {
                    answers.push(topic_error(&name, ResponseError::TopicAuthorizationFailed.code()));
                    continue;
                }
                match topics.iter().find(|t| t.name == name) {
                    Some(info) => out.push(info.clone()),
                    // Topics are not created by a Metadata request (`allow_auto_topic_creation`
                    // is ignored): create them with CreateTopics or `shale topic create`.
                    None => answers.push(topic_error(&name, ResponseError::UnknownTopicOrPartition.code())),
                }
            }
            return response(brokers, controller, out.iter().map(|t| topic(ctx, t)).chain(answers).collect());
        }
    };
    response(brokers, controller, wanted.iter().map(|t| topic(ctx, t)).collect())
}

fn response(
    brokers: Vec<MetadataResponseBroker>,
    controller: i32,
    topics: Vec<MetadataResponseTopic>,
) -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

fn topic_error(name: &str, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))))
        .with_error_code(code)
}

/// A topic's partitions: leader, replicas, and as ISR the replicas (every voter of a partition's
/// group is in its Raft configuration; see docs/kafka.md for how that differs from Kafka's ISR).
fn topic(ctx: &NodeContext, t: &TopicInfo) -> MetadataResponseTopic {
    let partitions = t
        .partitions
        .iter()
        .map(|p| {
            let replicas: Vec<BrokerId> = p.replicas.iter().map(|id| BrokerId(*id as i32)).collect();
            let (code, leader) = match ctx.cluster.leader_of(&t.name, p.partition) {
                Some((id, _)) => (0, id as i32),
                None => (ResponseError::LeaderNotAvailable.code(), -1),
            };
            MetadataResponsePartition::default()
                .with_error_code(code)
                .with_partition_index(p.partition as i32)
                .with_leader_id(BrokerId(leader))
                // No leader epochs: clients then skip OffsetForLeaderEpoch validation.
                .with_leader_epoch(-1)
                .with_replica_nodes(replicas.clone())
                .with_isr_nodes(replicas)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name.clone()))))
        .with_partitions(partitions)
}
