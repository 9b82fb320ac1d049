//! The Kafka listener: existing Kafka clients (librdkafka, kcat, the Java client) produce to and
//! consume from Shale's partitions over the Kafka wire protocol, beside the gRPC API. Every
//! request and response is encoded and decoded by the `kafka-protocol` crate (no codec is written
//! here); each module maps one family of Kafka APIs onto the same cluster calls the gRPC services
//! make (docs/kafka.md lists the APIs, versions and differences).
//!
//! - [`listener`]: accept loop, framing, request dispatch, in-order responses per connection
//!   (pipelined Produce requests served concurrently).
//! - [`pipeline`]: per connection and partition, the order pipelined produces store in.
//! - [`api_versions`]: the APIs and versions served (one table).
//! - [`metadata`]: brokers (members, at their recorded Kafka addresses), topics, partition leaders.
//! - [`produce`] / [`records`]: v2 record batches in, one Shale batch entry per Kafka batch.
//! - [`producer_id`]: InitProducerId; a Kafka idempotent producer as a Shale one.
//! - [`fetch`]: Shale batches out as v2 record batches, long poll.
//! - [`list_offsets`]: earliest / latest offsets.
//! - [`groups`] / [`coordinator`]: the classic consumer-group protocol on the metadata leader, with
//!   Shale's committed offsets.
//! - [`admin`]: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs, AlterConfigs.
//! - [`sasl`]: SaslHandshake / SaslAuthenticate (PLAIN, SCRAM-SHA-256) onto Shale's password users.
//! - [`errors`]: the one mapping of cluster errors to Kafka error codes.
//! - [`unsupported`]: the answer to an API that is not served.

pub mod admin;
pub mod api_versions;
pub mod coordinator;
pub mod errors;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod listener;
pub mod metadata;
pub mod pipeline;
pub mod produce;
pub mod producer_id;
pub mod records;
pub mod sasl;
pub mod unsupported;

use std::net::SocketAddr;

use serde::Deserialize;

/// The `[kafka]` section of the node's config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Whether the node serves the Kafka protocol (on by default).
    pub enabled: bool,
    /// Where the Kafka listener listens (default `127.0.0.1:9092`, like the gRPC listener: set `0.0.0.0:9092` to serve other hosts).
    pub listen: SocketAddr,
    /// The `host:port` Kafka clients are told for this node (Kafka's `advertised.listeners`):
    /// Metadata responses name every broker by the address it advertises. Default: the listener's
    /// bound address, or for a wildcard listener the host of the node's client advertised address
    /// with the Kafka listener's port.
    pub advertise: Option<String>,
}

/// The default Kafka port.
pub const DEFAULT_PORT: u16 = 9092;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)), advertise: None }
    }
}

impl KafkaConfig {
    /// The address Kafka clients are told for this node, whose Kafka listener is bound at `bound`
    /// and whose client advertised address is `client_advertise` (see [`KafkaConfig::advertise`]).
    pub fn advertise_addr(&self, bound: SocketAddr, client_advertise: &str) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        if !bound.ip().is_unspecified() {
            return bound.to_string();
        }
        match split_host_port(client_advertise) {
            Some((host, _)) => format!("{host}:{}", bound.port()),
            None => bound.to_string(),
        }
    }
}

/// `host:port` split into its host (brackets of an IPv6 literal kept) and port; `None` if it is
/// not of that form.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_configured_bound_or_the_client_host_with_the_kafka_port() {
        let bound: SocketAddr = "0.0.0.0:9092".parse().unwrap();
        let c = KafkaConfig::default();
        assert_eq!(c.advertise_addr(bound, "node-1.example:7001"), "node-1.example:9092");
        assert_eq!(c.advertise_addr("127.0.0.1:9999".parse().unwrap(), "node-1.example:7001"), "127.0.0.1:9999");
        let c = KafkaConfig { advertise: Some("kafka.example:19092".into()), ..KafkaConfig::default() };
        assert_eq!(c.advertise_addr(bound, "node-1.example:7001"), "kafka.example:19092");
        assert_eq!(split_host_port("[::1]:9092"), Some(("[::1]", 9092)));
        assert_eq!(split_host_port("no-port"), None);
        assert_eq!(split_host_port(":9092"), None);
    }
}
