//! Produce and fetch messages <-> cluster records.

use std::time::Duration;

use shale_client::proto;
use shale_raft::cluster::{ConsumedRecord, FetchRequest, FetchResult, ProduceRecord, ProducedOffset, ProducerInfo};

use super::hash_bytes;
use crate::limits::Limits;

/// The records of a Produce request, as the cluster takes them.
pub fn produce_records(records: Vec<proto::Record>) -> Vec<ProduceRecord> {
    records
        .into_iter()
        .map(|r| ProduceRecord {
            key: r.key,
            value: r.value,
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            timestamp_ms: (r.timestamp_ms != 0).then_some(r.timestamp_ms),
        })
        .collect()
}

/// An idempotent producer's identity.
pub fn producer_info(p: Option<proto::ProducerIdentity>) -> Option<ProducerInfo> {
    p.map(|p| ProducerInfo { producer_id: p.producer_id, base_sequence: p.base_sequence })
}

/// The reply to a committed produce.
pub fn produce_response(topic: String, partition: u32, offsets: &[ProducedOffset]) -> proto::ProduceResponse {
    proto::ProduceResponse {
        topic,
        partition,
        acks: offsets
            .iter()
            .map(|o| proto::RecordAck { offset: o.offset, chain_hash: hash_bytes(&o.chain_hash) })
            .collect(),
    }
}

/// A fetch as the cluster takes it, with the node's byte and wait limits applied.
pub fn fetch_request(
    topic: String,
    partition: u32,
    offset: u64,
    max_bytes: u32,
    max_wait_ms: u32,
    limits: &Limits,
) -> FetchRequest {
    let max_bytes = if max_bytes == 0 { limits.max_fetch_bytes } else { max_bytes.min(limits.max_fetch_bytes) };
    FetchRequest {
        topic,
        partition,
        offset,
        max_bytes: max_bytes as usize,
        wait: Duration::from_millis(u64::from(max_wait_ms.min(limits.max_wait_ms))),
    }
}

/// One consumed record on the wire.
pub fn consumed_record(r: ConsumedRecord) -> proto::ConsumedRecord {
    proto::ConsumedRecord {
        offset: r.offset,
        chain_hash: hash_bytes(&r.chain_hash),
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|(key, value)| proto::Header { key, value }).collect(),
        timestamp_ms: r.timestamp_ms,
    }
}

/// The reply to a fetch that started at `offset`.
pub fn fetch_response(topic: String, partition: u32, offset: u64, result: FetchResult) -> proto::FetchResponse {
    let next_offset = match result.records.last() {
        Some(last) => last.offset + 1,
        // Offsets have gaps: nothing returned means nothing committed in [offset, high_watermark).
        None => offset.max(result.high_watermark),
    };
    proto::FetchResponse {
        topic,
        partition,
        records: result.records.into_iter().map(consumed_record).collect(),
        log_start: result.log_start,
        log_end: result.high_watermark,
        next_offset,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_storage::ChainHash;

    use super::*;

    #[test]
    fn produce_records_keep_keys_headers_and_leave_zero_timestamps_to_the_leader() {
        let records = produce_records(vec![
            proto::Record {
                key: Some(Bytes::from_static(b"k")),
                value: Bytes::from_static(b"v"),
                headers: vec![proto::Header { key: "h".into(), value: Bytes::from_static(b"1") }],
                timestamp_ms: 0,
            },
            proto::Record { key: None, value: Bytes::new(), headers: vec![], timestamp_ms: 42 },
        ]);
        assert_eq!(records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[0].headers, vec![("h".to_string(), Bytes::from_static(b"1"))]);
        assert_eq!(records[0].timestamp_ms, None);
        assert_eq!(records[1].timestamp_ms, Some(42));
    }

    #[test]
    fn fetch_limits_cap_bytes_and_wait() {
        let limits = Limits { max_fetch_bytes: 1000, max_wait_ms: 50, ..Limits::default() };
        let r = fetch_request("t".into(), 1, 5, 0, 10_000, &limits);
        assert_eq!(r.max_bytes, 1000);
        assert_eq!(r.wait, Duration::from_millis(50));
        assert_eq!(fetch_request("t".into(), 1, 5, 10, 0, &limits).max_bytes, 10);
    }

    #[test]
    fn next_offset_skips_gaps() {
        let rec = |offset| ConsumedRecord {
            offset,
            chain_hash: ChainHash([offset as u8; 32]),
            key: None,
            value: Bytes::new(),
            headers: vec![],
            timestamp_ms: 1,
        };
        let r = fetch_response(
            "t".into(),
            0,
            3,
            FetchResult { records: vec![rec(4), rec(7)], log_start: 1, high_watermark: 9 },
        );
        assert_eq!((r.next_offset, r.log_end, r.records.len()), (8, 9, 2));
        assert_eq!(r.records[1].chain_hash.as_ref(), &[7u8; 32]);
        let empty = fetch_response("t".into(), 0, 3, FetchResult { records: vec![], log_start: 1, high_watermark: 9 });
        assert_eq!(empty.next_offset, 9);
    }
}
