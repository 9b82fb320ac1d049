//! [`NodeError`]: why a node could not start or stop cleanly (shared by [`crate::node`], which runs
//! a node, and [`crate::storage`], which opens its storage).

use std::net::SocketAddr;
use std::path::PathBuf;

use shale_raft::cluster::ClusterError;

use crate::config::ConfigError;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `grpc` or `http`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cannot create data dir {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed to open or flush.
    #[error("storage: {0}")]
    Storage(#[source] shale_storage::StorageError),
    /// The cluster layer failed to start or stop.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The TLS files could not be read.
    #[error("tls: {0}")]
    Tls(#[from] shale_raft::network::tls::TlsError),
    /// A TLS reload was asked of a node that runs without TLS.
    #[error("this node runs without TLS: there are no certificates to reload")]
    TlsNotConfigured,
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}
