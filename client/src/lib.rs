//! `shale-client`: the Shale gRPC protocol and a Rust client for it.
//!
//! - [`proto`]: the generated protobuf messages, tonic clients and servers (the node uses the
//!   server side).
//! - [`Client`]: a connection to a cluster from a bootstrap list of endpoints, with leader discovery
//!   and bounded retries; [`Producer`], [`Consumer`] and [`Admin`] are built on it.
//! - [`ClientError`]: every failure, typed; [`ErrorCode`] and [`meta`] define how a server status
//!   carries machine-readable details (shared with the node, so both sides agree).
//! - [`chain`]: decoding the stored log entries a fetch returns, and checking their hash chain
//!   (on by default: [`ConsumerConfig::verify_chain`]).
//! - [`partitioner`]: how a record's partition is chosen (murmur2 of the key, as Kafka).

pub mod access;
pub mod admin;
pub mod chain;
pub mod client;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
mod produce_stream;
pub mod producer;
pub mod proto;
pub mod records;
pub mod scram;
pub mod token;

pub use admin::{Admin, NewTopic};
pub use chain::{ChainBreak, ChainPoint, ChainReader, ChainStats};
pub use client::{Client, ThrottleStats};
pub use config::{ClientConfig, ConsumerConfig, OffsetReset, ProducerConfig};
pub use consumer::{Consumer, FetchedBatch, ListedOffset, OffsetSpec};
pub use error::{ClientError, ErrorCode, Retry, meta};
pub use group::{GroupConfig, GroupConsumer, GroupEvent, Subscription};
pub use partitioner::{Partitioner, StickyRun, murmur2};
pub use producer::{DeliveryFuture, Producer};
pub use records::{ConsumedRecord, Header, ProducerRecord, RecordMetadata};
pub use scram::Password;
pub use shale_storage::ChainHash;
pub use token::Token;
