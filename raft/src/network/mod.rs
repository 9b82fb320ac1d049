//! The shared gRPC transport of a node: one tonic service serving every local group
//! ([`server`]), and per-group openraft network clients over one channel per peer ([`client`]).

pub mod client;
pub mod convert;
pub mod server;

/// The generated protobuf messages, client and server of `shale.raft.v1`.
#[allow(missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("shale.raft.v1");
}

/// Transport limits and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// How long a connection attempt to a peer may take.
    pub connect_timeout_ms: u64,
    /// Upper bound on one unary RPC (openraft usually asks for less).
    pub request_timeout_ms: u64,
    /// Snapshot data per `InstallSnapshot` chunk message.
    pub snapshot_chunk_bytes: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Largest snapshot a follower accepts.
    pub max_snapshot_bytes: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            snapshot_chunk_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            max_snapshot_bytes: 2 << 30,
        }
    }
}

impl NetworkConfig {
    /// Rejects settings the transport cannot run with.
    pub fn validate(&self) -> Result<(), crate::RaftError> {
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes + 4096 > self.max_message_bytes {
            return Err(crate::RaftError::InvalidConfig(format!(
                "snapshot_chunk_bytes ({}) must be > 0 and fit in max_message_bytes ({}) with 4 KiB to spare",
                self.snapshot_chunk_bytes, self.max_message_bytes
            )));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(crate::RaftError::InvalidConfig("network timeouts must be > 0 ms".into()));
        }
        Ok(())
    }
}
