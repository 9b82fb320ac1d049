//! Fetch: each partition is read with the same cluster call the gRPC Fetch service makes (any
//! replica serves it), and its stored batches answered as Kafka v2 batches with the same offsets.
//! Long poll: when the first pass finds fewer than `min_bytes`, the partitions are read again,
//! together, each waiting up to what is left of `max_wait_ms` (bounded by `limits.max_wait_ms`),
//! and the answer goes out as soon as one of them has records.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use shale_raft::cluster::ClusterError;
use shale_raft::cluster::access::{Operation, Resource};

use crate::context::NodeContext;
use crate::convert::records::fetch_request;
use crate::quota::QuotaKind;

/// One partition of the request.
#[derive(Clone)]
struct Wanted {
    topic: TopicName,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    allowed: bool,
}

/// Answers a Fetch request.
pub async fn handle(ctx: &NodeContext, req: FetchRequest) -> FetchResponse {
    let started = Instant::now();
    let mut wanted = Vec::new();
    for t in &req.topics {
        let name = t.topic.0.as_str();
        let allowed = ctx.authorize(Operation::Consume, Resource::Topic(name)).await.is_ok();
        for p in &t.partitions {
            wanted.push(Wanted {
                topic: t.topic.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                allowed,
            });
        }
    }
    let (charge, waited) = ctx.quota_admit(QuotaKind::Consume).await;
    let mut answers: Vec<PartitionData> = Vec::with_capacity(wanted.len());
    for w in &wanted {
        answers.push(read(ctx, w, 0).await);
    }
    let bytes =
        |answers: &[PartitionData]| answers.iter().map(|a| a.records.as_ref().map_or(0, Bytes::len)).sum::<usize>();
    let wait_ms = u32::try_from(req.max_wait_ms).unwrap_or(0).min(ctx.limits.max_wait_ms);
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0).max(1);
    if bytes(&answers) < min_bytes && wait_ms > 0 {
        // Every partition that answered without error or records waits for its next record; the
        // first to get some ends the wait.
        let mut waits: FuturesUnordered<_> = wanted
            .iter()
            .enumerate()
            .filter(|(i, _)| answers[*i].error_code == 0 && answers[*i].records.as_ref().is_none_or(Bytes::is_empty))
            .map(|(i, w)| async move { (i, read(ctx, w, wait_ms).await) })
            .collect();
        let deadline = tokio::time::sleep(Duration::from_millis(u64::from(wait_ms)));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = waits.next() => match next {
                    Some((i, answer)) => {
                        let has_records = answer.records.as_ref().is_some_and(|r| !r.is_empty());
                        answers[i] = answer;
                        if has_records {
                            break;
                        }
                    }
                    None => break,
                },
                () = &mut deadline => break,
            }
        }
    }
    let served = bytes(&answers) as u64;
    let throttle = ctx.quota_settle(charge.as_ref(), QuotaKind::Consume, served, waited).await;
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (w, answer) in wanted.into_iter().zip(answers) {
        match topics.last_mut() {
            Some(t) if t.topic == w.topic => t.partitions.push(answer),
            _ => topics.push(FetchableTopicResponse::default().with_topic(w.topic).with_partitions(vec![answer])),
        }
    }
    ctx.metrics.fetch.record(started, true);
    FetchResponse::default().with_throttle_time_ms(throttle as i32).with_responses(topics)
}

/// One partition's answer, waiting up to `wait_ms` for a record at its offset.
async fn read(ctx: &NodeContext, w: &Wanted, wait_ms: u32) -> PartitionData {
    let answer = PartitionData::default().with_partition_index(w.partition);
    if !w.allowed {
        return answer.with_error_code(ResponseError::TopicAuthorizationFailed.code());
    }
    let (Ok(partition), Ok(offset)) = (u32::try_from(w.partition), u64::try_from(w.offset)) else {
        return answer.with_error_code(ResponseError::OffsetOutOfRange.code());
    };
    let topic = w.topic.0.as_str().to_string();
    let max_bytes = u32::try_from(w.max_bytes).unwrap_or(0).max(1);
    let result =
        ctx.cluster.fetch(fetch_request(topic.clone(), partition, offset, None, max_bytes, wait_ms, &ctx.limits)).await;
    match result {
        Ok(r) => match super::records::encode_fetched(&r.entries) {
            Ok(records) => {
                let count = records_in(&records);
                ctx.metrics.fetch_records.add(count);
                answer
                    .with_high_watermark(r.high_watermark as i64)
                    .with_last_stable_offset(r.high_watermark as i64)
                    .with_log_start_offset(r.log_start as i64)
                    .with_records(Some(records))
            }
            Err(e) => {
                tracing::error!(%topic, partition, error = %e, "kafka fetch: cannot answer stored batches");
                answer.with_error_code(ResponseError::UnknownServerError.code())
            }
        },
        Err(e) => {
            if !matches!(e, ClusterError::OffsetOutOfRange { .. } | ClusterError::NotReplica { .. }) {
                tracing::debug!(%topic, partition, error = %e, "kafka fetch failed");
            }
            answer.with_error_code(super::errors::code(&e))
        }
    }
}

/// Records in Kafka batches (their headers' record counts), for the fetch metrics.
fn records_in(batches: &Bytes) -> u64 {
    let mut buf = batches.clone();
    kafka_protocol::records::RecordBatchDecoder::decode_batch_info(&mut buf)
        .map_or(0, |infos| infos.iter().map(|i| i.record_count.max(0) as u64).sum())
}
