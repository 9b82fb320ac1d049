//! The edge: every request limit is checked here, once, before anything reaches the cluster (the
//! layers inside only assert them; see the table in [`shale_storage::limits`], which also says
//! which inner layers keep a typed error and why). Each refusal names the limit and its value
//! (also in `shale-limit` metadata).

use shale_client::ErrorCode;
use shale_client::proto;
use shale_storage::limits::{RecordLimitError, RecordSize};
use tonic::Status;

pub use crate::config::Limits;
use crate::convert::errors::{cluster_error, invalid, limit};

/// What of a record its limits apply to: bytes against `max_record_bytes` (key, value, header
/// names and values), header count and longest header name.
pub fn record_size(r: &proto::Record) -> RecordSize {
    RecordSize::new(
        r.key.as_ref().map_or(0, |k| k.len()),
        r.value.len(),
        r.headers.iter().map(|h| (h.key.len(), h.value.len())),
    )
}

/// Bytes a record takes against `max_record_bytes`.
pub fn record_bytes(r: &proto::Record) -> usize {
    record_size(r).bytes
}

/// Refuses a request whose encoded size is over `max_request_bytes`.
pub fn check_request_bytes(encoded_len: usize, limits: &Limits) -> Result<(), Status> {
    if encoded_len > limits.max_request_bytes {
        return Err(limit(
            ErrorCode::RequestTooLarge,
            format!("request is {encoded_len} bytes, over max_request_bytes = {}", limits.max_request_bytes),
            limits.max_request_bytes as u64,
        ));
    }
    Ok(())
}

/// Refuses empty batches, batches over `max_batch_records`, records over `max_record_bytes` and
/// records with too many headers or too long a header name.
pub fn check_produce(req: &proto::ProduceRequest, limits: &Limits) -> Result<(), Status> {
    check_topic_name(&req.topic)?;
    if req.records.is_empty() {
        return Err(invalid("records", "a Produce request needs at least one record"));
    }
    if req.records.len() > limits.max_batch_records {
        return Err(limit(
            ErrorCode::BatchTooLarge,
            format!("batch has {} records, over max_batch_records = {}", req.records.len(), limits.max_batch_records),
            limits.max_batch_records as u64,
        ));
    }
    for (index, r) in req.records.iter().enumerate() {
        let refusal = match record_size(r).check(limits.max_record_bytes) {
            Ok(()) => continue,
            Err(e) => e,
        };
        let at = format!("record {index} of {}/{}", req.topic, req.partition);
        return Err(match refusal {
            RecordLimitError::TooLarge { max, .. } => {
                limit(ErrorCode::RecordTooLarge, format!("{at} is {refusal}"), max as u64)
            }
            _ => invalid("headers", format!("{at} has {refusal}")),
        });
    }
    Ok(())
}

/// Topic names: `[a-zA-Z0-9._-]`, 1..=249 characters, not `.` or `..` (the cluster's rule).
pub fn check_topic_name(name: &str) -> Result<(), Status> {
    shale_raft::cluster::validate_topic_name(name).map_err(cluster_error)
}

/// Refuses partition counts outside `1..=max_partitions_per_topic`.
pub fn check_partition_count(partitions: u32, limits: &Limits) -> Result<(), Status> {
    if partitions == 0 || partitions > limits.max_partitions_per_topic {
        return Err(limit(
            ErrorCode::InvalidConfig,
            format!(
                "{partitions} partitions is not in 1..=max_partitions_per_topic ({})",
                limits.max_partitions_per_topic
            ),
            u64::from(limits.max_partitions_per_topic),
        ));
    }
    Ok(())
}

/// Consumer-group names: 1..=249 bytes.
pub fn check_group_name(group: &str) -> Result<(), Status> {
    let max = shale_raft::cluster::limits::MAX_GROUP_NAME_BYTES;
    if group.is_empty() || group.len() > max {
        return Err(invalid("group", format!("a group name is 1..={max} bytes, got {}", group.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_client::ClientError;
    use shale_storage::limits::{MAX_HEADER_NAME_BYTES, MAX_HEADERS, MAX_RECORD_BYTES};

    use super::*;

    fn code(s: Status) -> Option<ErrorCode> {
        ClientError::from_status(s).code()
    }

    fn req(records: Vec<proto::Record>) -> proto::ProduceRequest {
        proto::ProduceRequest { topic: "t".into(), partition: 0, records, producer: None }
    }

    fn rec(value_len: usize) -> proto::Record {
        proto::Record { key: Some(Bytes::from_static(b"kk")), value: vec![0; value_len].into(), ..Default::default() }
    }

    #[test]
    fn produce_limits_are_enforced_with_their_codes() {
        let limits = Limits { max_record_bytes: 100, max_batch_records: 2, ..Limits::default() };
        assert!(check_produce(&req(vec![rec(98)]), &limits).is_ok());
        assert_eq!(code(check_produce(&req(vec![rec(99)]), &limits).unwrap_err()), Some(ErrorCode::RecordTooLarge));
        assert_eq!(
            code(check_produce(&req(vec![rec(1), rec(1), rec(1)]), &limits).unwrap_err()),
            Some(ErrorCode::BatchTooLarge)
        );
        assert_eq!(code(check_produce(&req(vec![]), &limits).unwrap_err()), Some(ErrorCode::InvalidArgument));
        let mut bad_topic = req(vec![rec(1)]);
        bad_topic.topic = "no spaces".into();
        assert_eq!(code(check_produce(&bad_topic, &limits).unwrap_err()), Some(ErrorCode::InvalidTopicName));
    }

    #[test]
    fn headers_are_limited_in_count_and_name_length() {
        let limits = Limits::default();
        let header = |key: String| proto::Header { key, value: Bytes::from_static(b"v") };
        let mut many = rec(1);
        many.headers = (0..=MAX_HEADERS).map(|i| header(format!("h{i}"))).collect();
        let e = ClientError::from_status(check_produce(&req(vec![rec(1), many]), &limits).unwrap_err());
        assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
        assert!(e.to_string().contains("record 1 of t/0 has 257 headers, over the limit of 256"), "{e}");
        let mut long = rec(1);
        long.headers = vec![header("n".repeat(MAX_HEADER_NAME_BYTES + 1))];
        assert_eq!(code(check_produce(&req(vec![long]), &limits).unwrap_err()), Some(ErrorCode::InvalidArgument));
        let mut fine = rec(1);
        fine.headers = vec![header("n".repeat(MAX_HEADER_NAME_BYTES)); MAX_HEADERS];
        assert!(check_produce(&req(vec![fine]), &limits).is_ok());
    }

    // Moved here from the cluster layer's encoder (raft/src/cluster/partition.rs), which now only
    // asserts the limit: at the largest limit a node may be configured with, a record one byte over
    // it is refused, naming its position and the limit.
    #[test]
    fn the_largest_record_limit_refuses_one_byte_more() {
        let limits = Limits { max_record_bytes: MAX_RECORD_BYTES, ..Limits::default() };
        let at_limit = rec(MAX_RECORD_BYTES - 2);
        assert!(check_produce(&req(vec![at_limit]), &limits).is_ok());
        let records = vec![rec(1), rec(1), rec(1), rec(MAX_RECORD_BYTES - 1)];
        let e = ClientError::from_status(check_produce(&req(records), &limits).unwrap_err());
        match &e {
            ClientError::Server { code: ErrorCode::RecordTooLarge, limit, message } => {
                assert_eq!(*limit, Some(MAX_RECORD_BYTES as u64));
                assert!(message.starts_with("record 3 of t/0 is"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_and_partition_limits_name_the_limit() {
        let limits = Limits { max_request_bytes: 1000, max_partitions_per_topic: 8, ..Limits::default() };
        let e = ClientError::from_status(check_request_bytes(1001, &limits).unwrap_err());
        assert!(matches!(e, ClientError::Server { code: ErrorCode::RequestTooLarge, limit: Some(1000), .. }), "{e:?}");
        assert!(check_partition_count(8, &limits).is_ok());
        assert_eq!(code(check_partition_count(9, &limits).unwrap_err()), Some(ErrorCode::InvalidConfig));
        assert_eq!(code(check_partition_count(0, &limits).unwrap_err()), Some(ErrorCode::InvalidConfig));
        assert!(check_group_name("").is_err());
        assert!(check_group_name("g1").is_ok());
    }
}
