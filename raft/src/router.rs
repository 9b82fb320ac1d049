//! The node's Raft transport hub: which groups run locally (for the gRPC server) and one lazily
//! connected, self-reconnecting tonic channel per peer address (for every group's clients).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use crate::error::RaftError;
use crate::group::RaftGroup;
use crate::network::NetworkConfig;
use crate::network::pb::raft_service_server::RaftServiceServer;
use crate::network::server::RaftGrpcService;
use crate::types::{GroupId, NodeId};

/// Routes Raft messages between this node's groups and its peers.
#[derive(Debug)]
pub struct Router {
    node_id: NodeId,
    config: NetworkConfig,
    groups: RwLock<HashMap<GroupId, Arc<RaftGroup>>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Router {
    /// A router for node `node_id`.
    pub fn new(node_id: NodeId, config: NetworkConfig) -> Result<Arc<Self>, RaftError> {
        config.validate()?;
        Ok(Arc::new(Self {
            node_id,
            config,
            groups: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
        }))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The transport settings.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The tonic service serving every local group; mount it in any tonic `Server`:
    /// `Server::builder().add_service(router.grpc_service())`.
    pub fn grpc_service(self: &Arc<Self>) -> RaftServiceServer<RaftGrpcService> {
        RaftServiceServer::new(RaftGrpcService::new(self.clone()))
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes)
    }

    /// A running local group.
    pub fn group(&self, id: GroupId) -> Option<Arc<RaftGroup>> {
        self.groups.read().get(&id).cloned()
    }

    /// Every running local group, in id order.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.groups.read().keys().copied().collect();
        ids.sort();
        ids
    }

    pub(crate) fn register(&self, group: Arc<RaftGroup>) -> Result<(), RaftError> {
        let mut groups = self.groups.write();
        if groups.contains_key(&group.id()) {
            return Err(RaftError::InvalidConfig(format!(
                "group {} is already running on node {}",
                group.id(),
                self.node_id
            )));
        }
        groups.insert(group.id(), group);
        Ok(())
    }

    pub(crate) fn unregister(&self, id: GroupId) {
        self.groups.write().remove(&id);
    }

    /// The shared channel to `addr` ("host:port"), created lazily: no connection is made until the
    /// first request, and tonic reconnects on its own after a failure.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
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
