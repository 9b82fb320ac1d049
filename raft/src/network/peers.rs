//! The node's connections to its peers: one lazily connected, self-reconnecting tonic channel per
//! peer address, shared by every group's clients (and the repair reads), with the transport
//! settings they use.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::RaftError;
use crate::network::NetworkConfig;
use crate::network::tls::TlsPem;
use crate::types::NodeId;

/// The endpoint of another node at `addr` ("host:port"): plaintext, or with `tls` TLS that
/// trusts only the cluster CA and presents this node's certificate. Every node-to-node connection
/// (Raft, repair reads, forwarded client requests, bootstrap probes) is made from it.
pub fn endpoint(addr: &str, tls: Option<&TlsPem>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client_config()).map_err(|e| format!("TLS to {addr}: {e}")),
        None => Ok(endpoint),
    }
}

/// One channel per peer address, and the transport settings.
#[derive(Debug)]
pub struct Peers {
    node_id: NodeId,
    config: NetworkConfig,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    /// The peers of node `node_id`, reached with `config`.
    pub fn new(node_id: NodeId, config: NetworkConfig) -> Result<Self, RaftError> {
        config.validate()?;
        Ok(Self { node_id, config, channels: Mutex::new(HashMap::new()) })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The transport settings.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The shared channel to `addr` ("host:port"), created lazily: no connection is made until the
    /// first request, and tonic reconnects on its own after a failure.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(addr, self.config.tls.as_ref())?
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}
