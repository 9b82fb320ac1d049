//! Produce: each Kafka record batch of a partition is stored with the same cluster call the gRPC
//! Produce service makes (one Shale batch entry per Kafka batch, dense offsets), answered once a
//! majority has it (acks = 1 and acks = all alike; acks = 0 is not answered, as in Kafka). A
//! request's partitions are stored concurrently; a connection's pipelined requests are too, each
//! partition in the order the requests arrived ([`super::pipeline`]).

use std::time::Instant;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use shale_raft::cluster::ProduceRecord;
use shale_raft::cluster::access::{Operation, Resource};

use super::pipeline::Turn;
use super::records::{ProducedBatch, RecordsError};
use crate::context::NodeContext;
use crate::quota::QuotaKind;

/// Answers a Produce request; `None` for acks = 0. Its partitions are stored concurrently, each
/// after its `turns` entry (one per partition, in the request's order: [`super::pipeline`]) let it.
pub async fn handle(ctx: &NodeContext, req: ProduceRequest, turns: Vec<Turn>) -> Option<ProduceResponse> {
    let started = Instant::now();
    let transactional = req.transactional_id.is_some();
    let mut turns = turns.into_iter();
    let mut names = Vec::with_capacity(req.topic_data.len());
    let mut work = Vec::new();
    for t in req.topic_data {
        let name = t.name.0.as_str().to_string();
        let allowed = ctx.authorize(Operation::Produce, Resource::Topic(&name)).await.is_ok();
        names.push((t.name, t.partition_data.len()));
        for p in t.partition_data {
            work.push(one(ctx, name.clone(), allowed, transactional, p, turns.next()));
        }
    }
    let mut answers = futures::future::join_all(work).await.into_iter();
    let (mut failed, mut throttle_ms) = (false, 0u32);
    let mut topics = Vec::with_capacity(names.len());
    for (name, count) in names {
        let mut partitions = Vec::with_capacity(count);
        for (answer, throttle) in answers.by_ref().take(count) {
            failed |= answer.error_code != 0;
            throttle_ms = throttle_ms.max(throttle);
            partitions.push(answer);
        }
        topics.push(TopicProduceResponse::default().with_name(name).with_partition_responses(partitions));
    }
    ctx.metrics.produce.record(started, !failed);
    (req.acks != 0).then(|| ProduceResponse::default().with_responses(topics).with_throttle_time_ms(throttle_ms as i32))
}

/// One partition of a Produce request: its answer and the throttle time its quota charge asks.
async fn one(
    ctx: &NodeContext,
    topic: String,
    allowed: bool,
    transactional: bool,
    p: PartitionProduceData,
    turn: Option<Turn>,
) -> (PartitionProduceResponse, u32) {
    let answer = PartitionProduceResponse::default().with_index(p.index).with_log_append_time_ms(-1);
    let mut throttle_ms = 0;
    let result = if !allowed {
        Err((ResponseError::TopicAuthorizationFailed.code(), None))
    } else if transactional {
        Err((ResponseError::TransactionalIdAuthorizationFailed.code(), Some("transactions are not supported")))
    } else {
        let records = p.records.unwrap_or_default();
        let (charge, waited) = ctx.quota_admit(QuotaKind::Produce).await;
        let result = partition(ctx, &topic, p.index, &records, turn).await;
        throttle_ms = ctx.quota_settle(charge.as_ref(), QuotaKind::Produce, records.len() as u64, waited).await;
        result
    };
    let answer = match result {
        Ok(base_offset) => answer.with_base_offset(base_offset as i64),
        Err((code, message)) => {
            answer.with_error_code(code).with_base_offset(-1).with_error_message(message.map(StrBytes::from_static_str))
        }
    };
    (answer, throttle_ms)
}

/// A partition's answer: the base offset of its first batch, or an error code and message.
type PartitionResult = Result<u64, (i16, Option<&'static str>)>;

/// Stores one partition's batches, in order, once `turn` lets the first go; stops at the first
/// that fails. The turn is held (the partition's next produce on the connection waits) until then.
async fn partition(
    ctx: &NodeContext,
    topic: &str,
    index: i32,
    records: &bytes::Bytes,
    mut turn: Option<Turn>,
) -> PartitionResult {
    let Ok(partition) = u32::try_from(index) else {
        return Err((ResponseError::UnknownTopicOrPartition.code(), None));
    };
    let batches = super::records::decode_produce(records).map_err(|e| {
        tracing::debug!(topic, partition, error = %e, "kafka produce: refused batches");
        match e {
            RecordsError::Transactional { .. } => {
                (ResponseError::InvalidRecord.code(), Some("transactional and control batches are not supported"))
            }
            RecordsError::Corrupt { .. } | RecordsError::Empty { .. } => (ResponseError::CorruptMessage.code(), None),
        }
    })?;
    if batches.is_empty() {
        return Err((ResponseError::CorruptMessage.code(), Some("no record batch")));
    }
    let mut base = None;
    for ProducedBatch { records, producer, as_sent } in batches {
        check(ctx, &records)?;
        let producer = match producer {
            Some((id, epoch, sequence)) => {
                let shale = super::producer_id::shale_producer(id, epoch, sequence, records.len());
                Some(shale.map_err(|code| (code, Some("sequence out of range: take a new epoch")))?)
            }
            None => None,
        };
        let (count, bytes) = (records.len(), records.iter().map(|r| r.size().bytes).sum::<usize>());
        if let Some(turn) = turn.as_mut() {
            turn.wait().await;
        }
        match ctx.cluster.produce_kafka(topic, partition, records, as_sent, producer).await {
            Ok(acks) => {
                ctx.metrics.produce_records.add(count as u64);
                ctx.metrics.produce_bytes.add(bytes as u64);
                base.get_or_insert(acks.first().map_or(0, |a| a.base_offset));
            }
            Err(e) => return Err((super::errors::code(&e), None)),
        }
    }
    Ok(base.unwrap_or_default())
}

/// The edge's record limits (`limits.max_batch_records`, `limits.max_record_bytes`, headers), as
/// the gRPC Produce service checks them.
fn check(ctx: &NodeContext, records: &[ProduceRecord]) -> Result<(), (i16, Option<&'static str>)> {
    if records.len() > ctx.limits.max_batch_records {
        return Err((ResponseError::RecordListTooLarge.code(), Some("more records than limits.max_batch_records")));
    }
    for r in records {
        if r.size().check(ctx.limits.max_record_bytes).is_err() {
            return Err((ResponseError::MessageTooLarge.code(), Some("a record is over limits.max_record_bytes")));
        }
    }
    Ok(())
}
