//! One module per command family.

pub mod access;
pub mod bench;
pub mod cert;
pub mod cluster;
pub mod completions;
pub mod consume;
pub mod group;
pub mod produce;
pub mod profile;
pub mod topic;
pub mod verify;

use shale_client::{Client, ClientError, ConsumerConfig};

/// `(log_start, log_end)` of a partition, as the replica that answers sees them.
///
/// Asks for an offset no partition holds: the out-of-range answer carries both bounds.
pub async fn partition_bounds(client: &Client, topic: &str, partition: u32) -> Result<(u64, u64), ClientError> {
    let consumer = client.consumer(ConsumerConfig { max_bytes: 1, ..ConsumerConfig::default() });
    match consumer.fetch(topic, partition, u64::MAX, 0).await {
        Ok(batch) => Ok((batch.log_start, batch.log_end)),
        Err(ClientError::OffsetOutOfRange { log_start, log_end, .. }) => Ok((log_start, log_end)),
        Err(e) => Err(e),
    }
}

/// The partitions a command works on: those given, else all of the topic's.
pub async fn select_partitions(client: &Client, topic: &str, given: &[u32]) -> Result<Vec<u32>, ClientError> {
    let count = client.partition_count(topic).await?;
    if given.is_empty() {
        return Ok((0..count).collect());
    }
    if let Some(bad) = given.iter().find(|p| **p >= count) {
        return Err(ClientError::InvalidRequest(format!(
            "partition {bad} does not exist: topic {topic} has {count} partitions (0..={})",
            count - 1
        )));
    }
    let mut v = given.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}
