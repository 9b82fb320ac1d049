//! Topic messages <-> cluster topic types.

use shale_client::proto;
use shale_raft::cluster::{PartitionState, RetentionPolicy, TopicDescription, TopicInfo, TopicSpec, TopicUpdate};
use shale_storage::CodecKind;
use tonic::Status;

use crate::convert::errors::invalid;

/// The zstd level used when a topic asks for zstd.
pub const ZSTD_LEVEL: i32 = 3;

/// A wire codec as a storage codec.
pub fn codec_kind(codec: i32) -> Result<CodecKind, Status> {
    match proto::Codec::try_from(codec) {
        Ok(proto::Codec::Unspecified | proto::Codec::None) => Ok(CodecKind::None),
        Ok(proto::Codec::Lz4) => Ok(CodecKind::Lz4),
        Ok(proto::Codec::Zstd) => Ok(CodecKind::Zstd { level: ZSTD_LEVEL }),
        Err(_) => Err(invalid("codec", format!("unknown codec {codec}"))),
    }
}

/// A storage codec on the wire.
pub fn codec_proto(codec: CodecKind) -> proto::Codec {
    match codec {
        CodecKind::None => proto::Codec::None,
        CodecKind::Lz4 => proto::Codec::Lz4,
        CodecKind::Zstd { .. } => proto::Codec::Zstd,
    }
}

/// A CreateTopic request as a topic spec.
pub fn topic_spec(req: proto::CreateTopicRequest) -> Result<TopicSpec, Status> {
    let config = req.config.ok_or_else(|| invalid("config", "CreateTopic needs a config"))?;
    Ok(TopicSpec {
        name: req.name,
        partitions: config.partitions,
        replication_factor: config.replication_factor,
        retention: RetentionPolicy { retention_bytes: config.retention_bytes, retention_ms: config.retention_ms },
        codec: codec_kind(config.codec)?,
    })
}

/// An AlterTopic request as an update of a topic whose retention is now `current`.
pub fn topic_update(req: &proto::AlterTopicRequest, current: RetentionPolicy) -> Result<TopicUpdate, Status> {
    let touches_retention = req.retention_bytes.is_some()
        || req.retention_ms.is_some()
        || req.clear_retention_bytes
        || req.clear_retention_ms;
    let retention = touches_retention.then(|| RetentionPolicy {
        retention_bytes: if req.clear_retention_bytes { None } else { req.retention_bytes.or(current.retention_bytes) },
        retention_ms: if req.clear_retention_ms { None } else { req.retention_ms.or(current.retention_ms) },
    });
    let codec = req.codec.map(codec_kind).transpose()?;
    if retention.is_none() && codec.is_none() {
        return Err(invalid("AlterTopic", "nothing to change: set a retention or a codec"));
    }
    Ok(TopicUpdate { retention, codec })
}

/// A topic on the wire. `states` adds live partition state (leader, bounds) where known;
/// `leader_hint` gives a leader for partitions without a state.
pub fn topic_info(
    info: &TopicInfo,
    states: Option<&[PartitionState]>,
    leader_hint: impl Fn(u32) -> Option<(u64, String)>,
) -> proto::TopicInfo {
    let partitions = info
        .partitions
        .iter()
        .map(|a| {
            let state = states.and_then(|s| s.iter().find(|s| s.partition == a.partition));
            let leader = state.and_then(|s| s.leader.clone()).or_else(|| leader_hint(a.partition));
            let (leader_id, leader_addr) = leader.unwrap_or((0, String::new()));
            proto::PartitionInfo {
                partition: a.partition,
                leader_id,
                leader_addr,
                replicas: a.replicas.clone(),
                log_start: state.and_then(|s| s.log_start),
                log_end: state.and_then(|s| s.high_watermark),
            }
        })
        .collect();
    proto::TopicInfo {
        name: info.name.clone(),
        config: Some(proto::TopicConfig {
            partitions: info.partitions.len() as u32,
            replication_factor: info.replication_factor,
            retention_bytes: info.retention.retention_bytes,
            retention_ms: info.retention.retention_ms,
            codec: codec_proto(info.codec) as i32,
        }),
        partitions,
    }
}

/// A described topic on the wire.
pub fn topic_description(d: &TopicDescription, leader_hint: impl Fn(u32) -> Option<(u64, String)>) -> proto::TopicInfo {
    topic_info(&d.info, Some(&d.partitions), leader_hint)
}

#[cfg(test)]
mod tests {
    use shale_raft::GroupId;
    use shale_raft::cluster::PartitionAssignment;

    use super::*;

    #[test]
    fn create_topic_maps_every_setting() {
        let spec = topic_spec(proto::CreateTopicRequest {
            name: "orders".into(),
            config: Some(proto::TopicConfig {
                partitions: 3,
                replication_factor: 3,
                retention_bytes: Some(1 << 30),
                retention_ms: None,
                codec: proto::Codec::Zstd as i32,
            }),
        })
        .unwrap();
        assert_eq!(spec.partitions, 3);
        assert_eq!(spec.retention.retention_bytes, Some(1 << 30));
        assert_eq!(spec.codec, CodecKind::Zstd { level: ZSTD_LEVEL });
        assert!(topic_spec(proto::CreateTopicRequest { name: "x".into(), config: None }).is_err());
        assert!(codec_kind(99).is_err());
    }

    #[test]
    fn alter_merges_retention_with_the_current_policy() {
        let current = RetentionPolicy { retention_bytes: Some(100), retention_ms: Some(5) };
        let req = proto::AlterTopicRequest { name: "t".into(), retention_ms: Some(9), ..Default::default() };
        let u = topic_update(&req, current).unwrap();
        assert_eq!(u.retention, Some(RetentionPolicy { retention_bytes: Some(100), retention_ms: Some(9) }));
        assert_eq!(u.codec, None);
        let clear = proto::AlterTopicRequest { name: "t".into(), clear_retention_bytes: true, ..Default::default() };
        assert_eq!(topic_update(&clear, current).unwrap().retention.unwrap().retention_bytes, None);
        assert!(topic_update(&proto::AlterTopicRequest { name: "t".into(), ..Default::default() }, current).is_err());
    }

    #[test]
    fn topic_info_fills_leaders_from_state_then_hint() {
        let info = TopicInfo {
            name: "t".into(),
            id: 1,
            replication_factor: 2,
            retention: RetentionPolicy::default(),
            codec: CodecKind::Lz4,
            partitions: (0..2)
                .map(|p| PartitionAssignment {
                    partition: p,
                    group: GroupId(p as u64 + 1),
                    replicas: vec![1, 2],
                    replica_epoch: 0,
                })
                .collect(),
        };
        let states = [PartitionState {
            partition: 0,
            replicas: vec![1, 2],
            leader: Some((2, "b:1".into())),
            log_start: Some(1),
            high_watermark: Some(10),
        }];
        let t = topic_info(&info, Some(&states), |_| Some((1, "a:1".into())));
        assert_eq!(t.config.unwrap().codec, proto::Codec::Lz4 as i32);
        assert_eq!((t.partitions[0].leader_id, t.partitions[0].log_end), (2, Some(10)));
        assert_eq!((t.partitions[1].leader_id, t.partitions[1].log_end), (1, None));
    }
}
