//! `shale-node`: the Shale server.
//!
//! [`Node::start`] runs a whole node in-process (storage, cluster layer, gRPC and HTTP servers,
//! bootstrap), which is what the binary, the `dev` subcommand and the tests use.
//!
//! - [`config`] / [`cli`]: settings from a TOML file, `SHALE_*` env vars and flags.
//! - [`services`]: the gRPC client API; [`convert`] is the only place wire types meet domain types,
//!   and [`convert::errors`] the only place cluster errors become statuses.
//! - [`kafka`]: the Kafka protocol listener (docs/kafka.md).
//! - [`auth`]: principals (client certificates, bearer tokens), ACL checks and the audit log.
//! - [`context`]: state the services share, and forwarding to the node that can answer.
//! - [`admission`] / [`limits`] / [`transport_errors`]: what a client may hold and send, and a
//!   Shale error code for what the transport refuses.
//! - [`http`] / [`metrics`]: health, readiness and Prometheus metrics.
//! - [`scrub`]: the background scrubber that finds and repairs damaged log ranges.
//! - [`tls`]: certificates for a local cluster (`dev --tls`, tests); [`tls_reload`]: the TLS
//!   handshake on the node's listeners, with certificates reloaded on SIGHUP or a file change.

pub mod admission;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod conn;
pub mod context;
pub mod convert;
pub mod dev;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod quota;
pub mod scrub;
pub mod services;
pub mod signal;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod tls_reload;
pub mod transport_errors;

pub use config::{Limits, NodeConfig, StorageKind};
pub use error::NodeError;
pub use node::{Node, NodeHandle};
