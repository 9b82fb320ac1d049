//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs and
//! AlterConfigs for the topic settings Shale has (retention by time and size, the stored codec),
//! with the same cluster calls the gRPC Admin service makes. They are served by the metadata
//! leader (Kafka's controller: Metadata names it); elsewhere they answer NOT_CONTROLLER and the
//! client asks the controller.
//!
//! Topic configs: `retention.ms`, `retention.bytes` (-1: unlimited) and `compression.type`
//! (`uncompressed`, `lz4`, `zstd`: how Shale stores batches, whatever a producer sent), with
//! `compression.zstd.level`; `cleanup.policy` (`delete`) is shown read-only. Others are refused
//! with INVALID_CONFIG.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shale_raft::cluster::access::{Operation, Resource};
use shale_raft::cluster::{ClusterError, RetentionPolicy, TopicInfo, TopicSpec, TopicUpdate};
use shale_storage::CodecKind;

use crate::context::NodeContext;

/// DescribeConfigs / AlterConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Resource type of a broker (answered with no configs).
const RESOURCE_BROKER: i8 = 4;
/// A config's source: set for the topic.
const SOURCE_TOPIC: i8 = 1;
/// A config's source: the default.
const SOURCE_DEFAULT: i8 = 5;
/// Replicas of a topic created without a replication factor: three, or every member if fewer.
const DEFAULT_REPLICATION: u32 = 3;
/// The zstd level a topic stored with zstd and no level gets.
const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Records an admin change in the audit log ([`crate::auth::audit`]) with what came of it (a
/// refusal as the Kafka error code).
fn audit<T>(action: &'static str, resource: &str, outcome: &Result<T, Refused>) {
    let status = outcome.as_ref().err().map(|(code, _)| tonic::Status::aborted(format!("kafka error code {code}")));
    crate::auth::audit::record(action, resource, "", status.as_ref().map_or(Ok(()), Err));
}

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// An admin call's refusal: code and message.
type Refused = (i16, Option<StrBytes>);

fn refused(code: ResponseError, message: impl Into<String>) -> Refused {
    (code.code(), Some(s(message)))
}

/// A failed admin cluster call: a lost metadata leadership is NOT_CONTROLLER.
fn admin_error(err: &ClusterError) -> Refused {
    let code = match err {
        ClusterError::NotLeader { .. } => ResponseError::NotController.code(),
        other => super::errors::code(other),
    };
    (code, Some(s(err.to_string())))
}

/// A topic's settings, from Kafka config entries over `base` (what is not named keeps `base`'s).
fn settings(
    base: (RetentionPolicy, CodecKind),
    configs: impl IntoIterator<Item = (String, Option<String>)>,
) -> Result<(RetentionPolicy, CodecKind), Refused> {
    let (mut retention, mut codec) = base;
    let mut level = None;
    let limit = |name: &str, value: Option<&str>| -> Result<Option<u64>, Refused> {
        match value.map(str::parse::<i64>) {
            None | Some(Ok(-1)) => Ok(None),
            Some(Ok(v)) if v >= 0 => Ok(Some(v as u64)),
            _ => Err(refused(ResponseError::InvalidConfig, format!("{name} is -1 or a count"))),
        }
    };
    for (name, value) in configs {
        match name.as_str() {
            "retention.ms" => retention.retention_ms = limit(&name, value.as_deref())?,
            "retention.bytes" => retention.retention_bytes = limit(&name, value.as_deref())?,
            "compression.type" => {
                codec = match value.as_deref() {
                    None | Some("uncompressed") | Some("producer") => CodecKind::None,
                    Some("lz4") => CodecKind::Lz4,
                    Some("zstd") => CodecKind::Zstd { level: DEFAULT_ZSTD_LEVEL },
                    Some(other) => {
                        return Err(refused(
                            ResponseError::InvalidConfig,
                            format!("compression.type {other:?}: Shale stores batches uncompressed, lz4 or zstd"),
                        ));
                    }
                }
            }
            "compression.zstd.level" => {
                level = Some(
                    value
                        .as_deref()
                        .unwrap_or_default()
                        .parse::<i32>()
                        .map_err(|_| refused(ResponseError::InvalidConfig, "compression.zstd.level is a number"))?,
                );
            }
            "cleanup.policy" if value.as_deref().is_none_or(|v| v == "delete") => {}
            other => {
                return Err(refused(ResponseError::InvalidConfig, format!("{other}: not a setting Shale has")));
            }
        }
    }
    if let (Some(level), CodecKind::Zstd { .. }) = (level, codec) {
        codec = CodecKind::Zstd { level };
    }
    Ok((retention, codec))
}

/// A topic's configs as Kafka names them: (name, value, read-only, set for the topic).
fn configs_of(t: &TopicInfo) -> Vec<(&'static str, String, bool, bool)> {
    let limit = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let (codec, level) = match t.codec {
        CodecKind::None => ("uncompressed", None),
        CodecKind::Lz4 => ("lz4", None),
        CodecKind::Zstd { level } => ("zstd", Some(level)),
    };
    let mut out = vec![
        ("retention.ms", limit(t.retention.retention_ms), false, t.retention.retention_ms.is_some()),
        ("retention.bytes", limit(t.retention.retention_bytes), false, t.retention.retention_bytes.is_some()),
        ("compression.type", codec.to_string(), false, t.codec != CodecKind::None),
        ("cleanup.policy", "delete".to_string(), true, false),
    ];
    if let Some(level) = level {
        out.push(("compression.zstd.level", level.to_string(), false, true));
    }
    out
}

/// CreateTopics.
pub async fn create_topics(ctx: &NodeContext, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let created = create_one(ctx, &name, &t, req.validate_only).await;
        topics.push(match created {
            Ok(info) => {
                let configs = configs_of(&info)
                    .into_iter()
                    .map(|(name, value, read_only, set)| {
                        CreatableTopicConfigs::default()
                            .with_name(StrBytes::from_static_str(name))
                            .with_value(Some(s(value)))
                            .with_read_only(read_only)
                            .with_config_source(if set { SOURCE_TOPIC } else { SOURCE_DEFAULT })
                    })
                    .collect();
                result
                    .with_num_partitions(info.partitions.len() as i32)
                    .with_replication_factor(info.replication_factor as i16)
                    .with_configs(Some(configs))
            }
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(message)
                .with_num_partitions(-1)
                .with_replication_factor(-1),
        });
    }
    CreateTopicsResponse::default().with_topics(topics)
}

async fn create_one(
    ctx: &NodeContext,
    name: &str,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<TopicInfo, Refused> {
    if ctx.authorize(Operation::Create, Resource::Topic(name)).await.is_err() {
        return Err(refused(ResponseError::TopicAuthorizationFailed, format!("not allowed to create {name}")));
    }
    if !t.assignments.is_empty() {
        return Err(refused(ResponseError::InvalidRequest, "Shale places replicas itself: give no replica assignment"));
    }
    let partitions = if t.num_partitions == -1 { 1 } else { u32::try_from(t.num_partitions).unwrap_or(0) };
    crate::limits::check_partition_count(partitions, &ctx.limits)
        .map_err(|status| refused(ResponseError::InvalidPartitions, status.message()))?;
    let members = ctx.cluster.cluster_status().members.len().max(1) as u32;
    let replication_factor = match t.replication_factor {
        -1 => DEFAULT_REPLICATION.min(members),
        rf => u32::try_from(rf).map_err(|_| refused(ResponseError::InvalidReplicationFactor, "below 1"))?,
    };
    let configs =
        t.configs.iter().map(|c| (c.name.as_str().to_string(), c.value.as_ref().map(|v| v.as_str().to_string())));
    let (retention, codec) = settings((RetentionPolicy::default(), CodecKind::None), configs)?;
    let spec = TopicSpec { name: name.to_string(), partitions, replication_factor, retention, codec };
    shale_raft::cluster::metadata::validate_spec(&spec).map_err(|e| admin_error(&e))?;
    if replication_factor > members {
        return Err(refused(
            ResponseError::InvalidReplicationFactor,
            format!("replication factor {replication_factor}: the cluster has {members} nodes"),
        ));
    }
    if validate_only {
        if ctx.cluster.local_topics().iter().any(|t| t.name == name) {
            return Err(refused(ResponseError::TopicAlreadyExists, format!("topic {name} already exists")));
        }
        return Ok(TopicInfo {
            name: spec.name,
            id: 0,
            replication_factor,
            retention,
            codec,
            partitions: (0..partitions)
                .map(|p| shale_raft::cluster::PartitionAssignment {
                    partition: p,
                    group: shale_raft::cluster::partition_group_id(0, p),
                    replicas: Vec::new(),
                    replica_epoch: 0,
                })
                .collect(),
        });
    }
    let info = ctx.cluster.create_topic(spec).await.map_err(|e| admin_error(&e));
    audit("kafka_create_topics", name, &info);
    info
}

/// DeleteTopics (by name; topic ids are not served).
pub async fn delete_topics(ctx: &NodeContext, req: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let names: Vec<Option<TopicName>> = if version >= 6 {
        req.topics.into_iter().map(|t| t.name).collect()
    } else {
        req.topic_names.into_iter().map(Some).collect()
    };
    let mut responses = Vec::with_capacity(names.len());
    for name in names {
        let result = DeletableTopicResult::default().with_name(name.clone());
        let Some(name) = name else {
            responses.push(
                result
                    .with_error_code(ResponseError::UnsupportedVersion.code())
                    .with_error_message(Some(s("topics are named, not given by id"))),
            );
            continue;
        };
        let topic = name.0.as_str();
        let outcome = if ctx.authorize(Operation::Delete, Resource::Topic(topic)).await.is_err() {
            Err(refused(ResponseError::TopicAuthorizationFailed, format!("not allowed to delete {topic}")))
        } else {
            ctx.cluster.delete_topic(topic).await.map_err(|e| admin_error(&e))
        };
        audit("kafka_delete_topics", topic, &outcome);
        responses.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => result.with_error_code(code).with_error_message(message),
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions: a topic grows to `count` partitions (placed by load as at creation; the
/// existing ones keep their records and offsets). No manual replica assignment.
pub async fn create_partitions(ctx: &NodeContext, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topic = t.name.0.as_str().to_string();
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = add_partitions(ctx, &topic, &t, req.validate_only).await;
        audit("kafka_create_partitions", &topic, &outcome);
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => result.with_error_code(code).with_error_message(message),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn add_partitions(
    ctx: &NodeContext,
    topic: &str,
    t: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Refused> {
    if ctx.authorize(Operation::Alter, Resource::Topic(topic)).await.is_err() {
        return Err(refused(ResponseError::TopicAuthorizationFailed, format!("not allowed to alter {topic}")));
    }
    if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
        return Err(refused(ResponseError::InvalidRequest, "Shale places replicas itself: give no replica assignment"));
    }
    let Some(info) = ctx.cluster.local_topics().into_iter().find(|i| i.name == topic) else {
        return Err(refused(ResponseError::UnknownTopicOrPartition, format!("unknown topic {topic}")));
    };
    let count = u32::try_from(t.count).unwrap_or(0);
    let current = info.partitions.len() as u32;
    if count <= current {
        return Err(refused(
            ResponseError::InvalidPartitions,
            format!("topic {topic} has {current} partitions; the new count must be larger"),
        ));
    }
    crate::limits::check_partition_count(count, &ctx.limits)
        .map_err(|status| refused(ResponseError::InvalidPartitions, status.message()))?;
    if validate_only {
        return Ok(());
    }
    ctx.cluster.add_partitions(topic, count).await.map(|_| ()).map_err(|e| admin_error(&e))
}

/// DescribeConfigs: a topic's settings; a broker has none that Kafka clients may set.
pub async fn describe_configs(ctx: &NodeContext, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        if r.resource_type == RESOURCE_BROKER {
            results.push(result);
            continue;
        }
        if r.resource_type != RESOURCE_TOPIC {
            results.push(
                result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(s("only topic and broker configs are described"))),
            );
            continue;
        }
        if ctx.authorize(Operation::Describe, Resource::Topic(&name)).await.is_err() {
            results.push(result.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
            continue;
        }
        let Some(info) = ctx.cluster.local_topics().into_iter().find(|t| t.name == name) else {
            results.push(result.with_error_code(ResponseError::UnknownTopicOrPartition.code()));
            continue;
        };
        let wanted = r.configuration_keys.map(|keys| keys.iter().map(|k| k.as_str().to_string()).collect::<Vec<_>>());
        let configs = configs_of(&info)
            .into_iter()
            .filter(|(n, ..)| wanted.as_ref().is_none_or(|w| w.iter().any(|k| k == n)))
            .map(|(n, value, read_only, set)| {
                DescribeConfigsResourceResult::default()
                    .with_name(StrBytes::from_static_str(n))
                    .with_value(Some(s(value)))
                    .with_read_only(read_only)
                    .with_config_source(if set { SOURCE_TOPIC } else { SOURCE_DEFAULT })
            })
            .collect();
        results.push(result.with_configs(configs));
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// AlterConfigs: Kafka's replace semantics, a topic's settings become exactly those named (the
/// others their defaults: unlimited retention, uncompressed).
pub async fn alter_configs(ctx: &NodeContext, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let outcome = async {
            if r.resource_type != RESOURCE_TOPIC {
                return Err(refused(ResponseError::InvalidRequest, "only topic configs can be altered"));
            }
            if ctx.authorize(Operation::Alter, Resource::Topic(&name)).await.is_err() {
                return Err(refused(ResponseError::TopicAuthorizationFailed, format!("not allowed to alter {name}")));
            }
            let configs = r
                .configs
                .iter()
                .map(|c| (c.name.as_str().to_string(), c.value.as_ref().map(|v| v.as_str().to_string())));
            let (retention, codec) = settings((RetentionPolicy::default(), CodecKind::None), configs)?;
            if !ctx.cluster.local_topics().iter().any(|t| t.name == name) {
                return Err(refused(ResponseError::UnknownTopicOrPartition, format!("unknown topic {name}")));
            }
            if req.validate_only {
                return Ok(());
            }
            let update = TopicUpdate { retention: Some(retention), codec: Some(codec) };
            let altered = ctx.cluster.alter_topic(&name, update).await.map(|_| ()).map_err(|e| admin_error(&e));
            audit("kafka_alter_configs", &name, &altered);
            altered
        }
        .await;
        responses.push(match outcome {
            Ok(()) => response,
            Err((code, message)) => response.with_error_code(code).with_error_message(message),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        pairs.iter().map(|(n, v)| (n.to_string(), Some(v.to_string()))).collect()
    }

    #[test]
    fn kafka_topic_configs_map_onto_shale_settings_and_unknown_ones_are_refused() {
        let base = (RetentionPolicy::default(), CodecKind::None);
        let (retention, codec) = settings(
            base,
            named(&[
                ("retention.ms", "60000"),
                ("retention.bytes", "-1"),
                ("compression.type", "zstd"),
                ("compression.zstd.level", "7"),
            ]),
        )
        .unwrap();
        assert_eq!(retention, RetentionPolicy { retention_ms: Some(60_000), retention_bytes: None });
        assert_eq!(codec, CodecKind::Zstd { level: 7 });
        for bad in [("segment.bytes", "1"), ("retention.ms", "soon"), ("compression.type", "gzip")] {
            let err = settings(base, named(&[bad])).unwrap_err();
            assert_eq!(err.0, ResponseError::InvalidConfig.code(), "{bad:?}");
        }
    }
}
