//! ListOffsets: the earliest (-2) and latest (-1) offsets of a partition, from its leader
//! (read-index, as gRPC's `end_offsets`), and by timestamp the first record at or after it
//! (`Cluster::offset_for_time`, as gRPC's ListOffsets; none: offset and timestamp -1, as Kafka
//! answers). Other special timestamps (-3, the largest timestamp) answer
//! UNSUPPORTED_FOR_MESSAGE_FORMAT.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use shale_raft::cluster::access::{Operation, Resource};

use crate::context::NodeContext;

/// Kafka's "latest" timestamp: the high watermark.
pub const LATEST: i64 = -1;
/// Kafka's "earliest" timestamp: the log start.
pub const EARLIEST: i64 = -2;

/// Answers every partition of the request.
pub async fn handle(ctx: &NodeContext, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let allowed = ctx.authorize(Operation::Describe, Resource::Topic(&name)).await.is_ok();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let answer =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index).with_leader_epoch(-1);
            let answer = if !allowed {
                answer.with_error_code(ResponseError::TopicAuthorizationFailed.code())
            } else if let (Ok(partition), Ok(timestamp)) =
                (u32::try_from(p.partition_index), u64::try_from(p.timestamp))
            {
                // The offset of the first record at or after the timestamp. The answer's timestamp
                // is the one asked (Shale's lookup names the offset only; it is a lower bound of
                // that record's, and never negative, which the Java client rejects).
                match ctx.cluster.offset_for_time(&name, partition, timestamp).await {
                    Ok(Some(offset)) => answer.with_offset(offset as i64).with_timestamp(p.timestamp),
                    Ok(None) => answer.with_offset(-1).with_timestamp(-1),
                    Err(e) => answer.with_error_code(super::errors::code(&e)),
                }
            } else if p.timestamp != LATEST && p.timestamp != EARLIEST {
                answer.with_error_code(ResponseError::UnsupportedForMessageFormat.code())
            } else if let Ok(partition) = u32::try_from(p.partition_index) {
                match ctx.cluster.end_offsets(&name, partition).await {
                    Ok((start, end)) => {
                        let offset = if p.timestamp == LATEST { end } else { start };
                        answer.with_offset(offset as i64).with_timestamp(-1)
                    }
                    Err(e) => answer.with_error_code(super::errors::code(&e)),
                }
            } else {
                answer.with_error_code(ResponseError::UnknownTopicOrPartition.code())
            };
            partitions.push(answer);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}
