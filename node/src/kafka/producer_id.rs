//! InitProducerId and the idempotent producer: a Kafka producer id and epoch name one Shale
//! idempotent producer, and a Kafka batch's base sequence is its Shale base sequence, so a retried
//! batch is written once (its retry answered with the original offset) and a producer's batches
//! to a partition are stored in sequence order, as for a gRPC idempotent producer.
//!
//! Ids are drawn at random below 2^47 (no coordination: Shale's producer ids are chosen by the
//! producers, and a collision among 2^47 is as unlikely as among gRPC's 2^64); the Shale producer
//! id is `kafka_id << 16 | epoch`, so an epoch bump (KIP-360, after a fatal sequence error) is a
//! fresh Shale producer that may start at sequence 0.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use shale_raft::cluster::ProducerInfo;

/// Kafka producer ids handed out are below this.
pub const MAX_PRODUCER_ID: i64 = 1 << 47;

/// A new random producer id in `1..MAX_PRODUCER_ID`.
fn new_id() -> Option<i64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).ok()?;
    Some((i64::from_le_bytes(bytes) & (MAX_PRODUCER_ID - 1)).max(1))
}

/// Answers InitProducerId: a new id (epoch 0), or the same id with the next epoch when the
/// producer names its current one. Transactional ids are refused (transactions are not served).
pub fn init(req: &InitProducerIdRequest) -> InitProducerIdResponse {
    let answer = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    // Clients send a null id for an idempotent-only producer (an empty one is no id either).
    if req.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        return answer.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    let (id, epoch) = (req.producer_id.0, req.producer_epoch);
    let bumped = (0..MAX_PRODUCER_ID).contains(&id) && (0..i16::MAX).contains(&epoch);
    let (id, epoch) = match bumped {
        true => (Some(id), epoch + 1),
        false => (new_id(), 0),
    };
    match id {
        Some(id) => answer.with_producer_id(ProducerId(id)).with_producer_epoch(epoch),
        None => answer.with_error_code(ResponseError::UnknownServerError.code()),
    }
}

/// The Shale producer of a Kafka batch of `count` records from producer `id` at `epoch` whose
/// first record has sequence `base_sequence`; `Err` with the Kafka error code when they are not
/// ones this listener hands out. A batch whose sequences would wrap past `i32::MAX` (Kafka's
/// sequences wrap, Shale's do not: the next batch would look like a duplicate) is refused with
/// OUT_OF_ORDER_SEQUENCE_NUMBER, after which the producer takes a new epoch and starts at 0.
pub fn shale_producer(id: i64, epoch: i16, base_sequence: i32, count: usize) -> Result<ProducerInfo, i16> {
    if !(0..MAX_PRODUCER_ID).contains(&id) {
        return Err(ResponseError::UnknownProducerId.code());
    }
    if epoch < 0 {
        return Err(ResponseError::InvalidProducerEpoch.code());
    }
    if base_sequence < 0 || i64::from(base_sequence) + count as i64 > i64::from(i32::MAX) {
        return Err(ResponseError::OutOfOrderSequenceNumber.code());
    }
    Ok(ProducerInfo { producer_id: ((id as u64) << 16) | u64::from(epoch as u16), base_sequence: base_sequence as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_a_bump_keeps_the_id_with_the_next_epoch() {
        let idempotent = InitProducerIdRequest::default().with_transactional_id(None);
        let first = init(&idempotent.clone().with_producer_id(ProducerId(-1)).with_producer_epoch(-1));
        assert_eq!(first.error_code, 0);
        assert!((1..MAX_PRODUCER_ID).contains(&first.producer_id.0));
        assert_eq!(first.producer_epoch, 0);
        let bumped = init(&idempotent.with_producer_id(first.producer_id).with_producer_epoch(0));
        assert_eq!((bumped.producer_id, bumped.producer_epoch), (first.producer_id, 1));
        let a = shale_producer(first.producer_id.0, 0, 5, 3).unwrap();
        let b = shale_producer(first.producer_id.0, 1, 0, 3).unwrap();
        assert_ne!(a.producer_id, b.producer_id, "each epoch is its own Shale producer");
        assert_eq!(a.base_sequence, 5);
        assert!(shale_producer(MAX_PRODUCER_ID, 0, 0, 1).is_err());
        assert!(shale_producer(1, 0, i32::MAX - 2, 2).is_ok());
        assert_eq!(
            shale_producer(1, 0, i32::MAX - 2, 3),
            Err(ResponseError::OutOfOrderSequenceNumber.code()),
            "a batch reaching i32::MAX would wrap the next one"
        );
        let txn = InitProducerIdRequest::default()
            .with_transactional_id(Some(kafka_protocol::messages::TransactionalId("t".into())));
        assert_eq!(init(&txn).error_code, ResponseError::TransactionalIdAuthorizationFailed.code());
    }
}
