//! Produce and fetch messages <-> cluster records.

use std::time::Duration;

use shale_client::proto;
use shale_raft::cluster::{BatchAck, FetchRequest, FetchResult, FetchedEntry, ProduceRecord, ProducerInfo};
use shale_storage::ReadCheck;

use super::hash_bytes;
use crate::limits::Limits;

/// The records of a Produce request, as the cluster takes them (keys, values and header values
/// stay the request's buffers: `Bytes` are shared, not copied).
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

/// The reply to a committed produce: one `BatchAck` per stored batch, in order.
pub fn produce_response(topic: String, partition: u32, batches: &[BatchAck]) -> proto::ProduceResponse {
    proto::ProduceResponse {
        topic,
        partition,
        batches: batches
            .iter()
            .map(|b| proto::BatchAck {
                base_offset: b.base_offset,
                record_count: b.record_count,
                entry_index: b.entry_index,
                chain_hash: hash_bytes(&b.chain_hash),
            })
            .collect(),
        throttle_time_ms: 0,
    }
}

/// A fetch as the cluster takes it, with the node's byte and wait limits applied.
pub fn fetch_request(
    topic: String,
    partition: u32,
    offset: u64,
    from_index: Option<u64>,
    max_bytes: u32,
    max_wait_ms: u32,
    limits: &Limits,
) -> FetchRequest {
    let max_bytes = if max_bytes == 0 { limits.max_fetch_bytes } else { max_bytes.min(limits.max_fetch_bytes) };
    FetchRequest {
        topic,
        partition,
        offset,
        from_index,
        max_bytes: max_bytes as usize,
        wait: Duration::from_millis(u64::from(max_wait_ms.min(limits.max_wait_ms))),
        check: ReadCheck::Chain,
    }
}

/// How a replica checks the entries it serves to a client that does (or does not) recompute
/// their chain itself (`FetchRequest.client_checks_chain`): such a client gets CRC-checked
/// entries and their stored links, so the chain is hashed once, by the client.
pub fn read_check(client_checks_chain: bool) -> ReadCheck {
    if client_checks_chain { ReadCheck::Frames } else { ReadCheck::Chain }
}

/// One stored entry on the wire (its bytes shared with the storage read, not copied).
pub fn log_entry(e: FetchedEntry) -> proto::LogEntry {
    proto::LogEntry { index: e.index, data: e.data, hidden: e.hidden }
}

/// The reply to a fetch: the stored entries as read (no record is decoded here), the hash they
/// chain from, and where to continue.
pub fn fetch_response(topic: String, partition: u32, result: FetchResult) -> proto::FetchResponse {
    let prev_chain_hash = match (&result.prev_chain_hash, result.entries.first()) {
        (Some(h), Some(_)) => hash_bytes(h),
        // The chain of entry 0 starts from nothing: 32 zero bytes.
        (None, Some(_)) => hash_bytes(&shale_storage::ChainHash::ZERO),
        (_, None) => bytes::Bytes::new(),
    };
    debug_assert!(result.entries.windows(2).all(|w| w[1].index == w[0].index + 1), "consecutive entries");
    debug_assert!(result.prev_chain_hash.is_some() || result.entries.first().is_none_or(|e| e.index == 0));
    proto::FetchResponse {
        topic,
        partition,
        log_start: result.log_start,
        log_end: result.high_watermark,
        next_offset: result.next_offset,
        next_index: result.next_index,
        prev_chain_hash,
        last_chain_hash: result
            .last_chain_hash
            .as_ref()
            .filter(|_| !result.entries.is_empty())
            .map_or_else(bytes::Bytes::new, hash_bytes),
        entries: result.entries.into_iter().map(log_entry).collect(),
        throttle_time_ms: 0,
    }
}

/// Records a fetch hands to its client: those in `[offset, next_offset)` (offsets are dense; the
/// first batch's records below `offset` are the client's to skip). For the node's metrics.
pub fn fetched_records(offset: u64, response: &proto::FetchResponse) -> u64 {
    if response.entries.is_empty() { 0 } else { response.next_offset.saturating_sub(offset) }
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
        let r = fetch_request("t".into(), 1, 5, Some(3), 0, 10_000, &limits);
        assert_eq!((r.max_bytes, r.from_index), (1000, Some(3)));
        assert_eq!(r.wait, Duration::from_millis(50));
        assert_eq!(fetch_request("t".into(), 1, 5, None, 10, 0, &limits).max_bytes, 10);
    }

    #[test]
    fn fetch_answers_carry_the_stored_entries_and_where_the_chain_starts() {
        let entry = |index| FetchedEntry { index, data: Bytes::from(vec![index as u8; 30]), hidden: index == 4 };
        let r = fetch_response(
            "t".into(),
            0,
            FetchResult {
                entries: vec![entry(3), entry(4), entry(5)],
                prev_chain_hash: Some(ChainHash([9; 32])),
                last_chain_hash: Some(ChainHash([7; 32])),
                log_start: 0,
                high_watermark: 40,
                next_offset: 17,
                next_index: 6,
            },
        );
        assert_eq!((r.log_end, r.next_offset, r.next_index), (40, 17, 6));
        assert_eq!(r.prev_chain_hash.as_ref(), &[9u8; 32]);
        assert_eq!(r.last_chain_hash.as_ref(), &[7u8; 32]);
        assert_eq!(
            r.entries.iter().map(|e| (e.index, e.hidden)).collect::<Vec<_>>(),
            vec![(3, false), (4, true), (5, false)]
        );
        assert_eq!(r.entries[2].data.as_ref(), &[5u8; 30]);
        assert_eq!(fetched_records(12, &r), 5);
        let from_zero = FetchResult {
            entries: vec![entry(0)],
            prev_chain_hash: None,
            last_chain_hash: None,
            log_start: 0,
            high_watermark: 1,
            next_offset: 1,
            next_index: 1,
        };
        assert_eq!(fetch_response("t".into(), 0, from_zero).prev_chain_hash.as_ref(), &[0u8; 32]);
        let empty = FetchResult {
            entries: vec![],
            prev_chain_hash: None,
            last_chain_hash: None,
            log_start: 0,
            high_watermark: 9,
            next_offset: 9,
            next_index: 12,
        };
        let r = fetch_response("t".into(), 0, empty);
        assert!(r.prev_chain_hash.is_empty() && r.last_chain_hash.is_empty() && r.entries.is_empty());
        assert_eq!((r.next_index, fetched_records(9, &r)), (12, 0));
    }

    #[test]
    fn produce_answers_one_ack_per_stored_batch() {
        let acks = [
            BatchAck { base_offset: 10, record_count: 3, entry_index: 7, chain_hash: ChainHash([1; 32]) },
            BatchAck { base_offset: 13, record_count: 1, entry_index: 8, chain_hash: ChainHash([2; 32]) },
        ];
        let r = produce_response("t".into(), 2, &acks);
        assert_eq!(r.batches.len(), 2);
        assert_eq!((r.batches[1].base_offset, r.batches[1].record_count, r.batches[1].entry_index), (13, 1, 8));
        assert_eq!(r.batches[0].chain_hash.as_ref(), &[1u8; 32]);
    }
}
