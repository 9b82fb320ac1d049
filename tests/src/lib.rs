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

/// The last panic's location and message in this test process (see [`record_panics`]).
static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Keeps each panic's location and message for [`last_panic`] (installed once; the default hook
/// still prints it). A failing cluster test prints hundreds of node log lines after its panic, and
/// CI shows only the tail of the output: the cluster's drop repeats the failure after the logs.
pub fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            *LAST_PANIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(info.to_string());
            previous(info);
        }));
    });
}

/// The location and message of the last panic recorded since [`record_panics`], if any.
pub fn last_panic() -> Option<String> {
    LAST_PANIC.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}
