//! Shared harness of Shale's whole-cluster tests (`tests/tests/`).
//!
//! - [`docker`]: the `docker` CLI, one method per operation the tests need.
//! - [`image`]: makes sure the `shale:dev` image exists and is newer than the node binary.
//! - [`cluster`]: a three-node cluster of containers on its own network, removed on drop.
//! - [`workload`]: concurrent producers that record every acknowledgement, and readers of every
//!   replica's log.
//! - [`checkers`]: one function per safety property over a workload history and replica logs.
//! - [`k8s`]: validation of the Kubernetes manifests against the Kubernetes JSON schemas.
//! - [`lock`]: a cross-process file lock (parallel test processes build things once).
//! - [`tls`]: the certificates of the secure clusters and the harness's client credentials.

pub mod checkers;
pub mod cli;
pub mod cluster;
pub mod compose;
pub mod docker;
pub mod error;
pub mod http;
pub mod image;
pub mod k8s;
pub mod lock;
pub mod paths;
pub mod scenario;
pub mod tls;
pub mod workload;

pub use error::HarnessError;

/// The nodes' log filter when `RUST_LOG` is unset (`DEFAULT_LOG_FILTER` in node/src/main.rs), which
/// every deploy file (the image, Compose, the Kubernetes ConfigMap) sets too: openraft logs every
/// snapshot and election at info.
pub const NODE_LOG_FILTER: &str = "info,openraft=warn";

/// Installs a test log subscriber (RUST_LOG, default `info` for the harness); safe to call often.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("shale_tests=info,shale_client=error,warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
