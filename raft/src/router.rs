//! The node's Raft transport hub: the groups running locally ([`LocalGroups`], which the gRPC
//! server dispatches to) and the channels to the peers ([`Peers`], which every group's clients
//! share). Groups start through it ([`Router::start_group`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shale_storage::StorageBackend;

use crate::error::RaftError;
use crate::group::{LocalGroups, RaftGroup, RaftGroupConfig};
use crate::heartbeat::{HeartbeatFault, NodeHeartbeats};
use crate::network::NetworkConfig;
use crate::network::peers::{Peers, SentCounters};
use crate::server::{RaftGrpcService, RaftServer, raft_server};
use crate::state_machine::StateMachineApp;
use crate::types::{GroupId, NodeId};

/// Routes Raft messages between this node's groups and its peers.
#[derive(Debug)]
pub struct Router {
    peers: Arc<Peers>,
    groups: Arc<LocalGroups>,
    /// Raft RPCs the server refused at its edge (`network::guard`).
    refused: Arc<AtomicU64>,
    /// The coalesced node heartbeat and quiet groups.
    heartbeats: Arc<NodeHeartbeats>,
}

impl Router {
    /// A router for node `node_id`.
    pub fn new(node_id: NodeId, config: NetworkConfig) -> Result<Arc<Self>, RaftError> {
        let peers = Arc::new(Peers::new(node_id, config)?);
        let groups: Arc<LocalGroups> = Arc::default();
        let heartbeats = NodeHeartbeats::new(groups.clone(), peers.clone());
        Ok(Arc::new(Self { peers, groups, refused: Arc::default(), heartbeats }))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.peers.node_id()
    }

    /// The transport settings.
    pub fn config(&self) -> &NetworkConfig {
        self.peers.config()
    }

    /// How many Raft RPCs this node's server refused at its edge (a term or index near
    /// `u64::MAX`, a sender that is not a member, a certificate naming another node).
    pub fn refused_rpcs(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How many local groups are quiet (ticker off: no per-group heartbeats or election timer).
    pub fn quiet_groups(&self) -> u64 {
        self.heartbeats.quiet_groups()
    }

    /// Messages sent to peers, by kind, and node heartbeats received.
    pub fn sent(&self) -> &SentCounters {
        self.peers.counters()
    }

    /// Injects faults into this node's outgoing node heartbeats (tests).
    pub fn set_heartbeat_fault(&self, fault: HeartbeatFault) {
        self.heartbeats.set_fault(fault);
    }

    /// The channels to the peers.
    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The tonic service serving every local group; mount it in any tonic `Server`:
    /// `Server::builder().add_service(router.grpc_service())`.
    pub fn grpc_service(&self) -> RaftServer {
        let service = RaftGrpcService::new(
            self.groups.clone(),
            self.peers.clone(),
            self.refused.clone(),
            self.heartbeats.clone(),
        );
        raft_server(service, self.config().max_message_bytes)
    }

    /// Opens (or creates) group `group`'s streams in `storage`, restores the application from the
    /// latest snapshot and re-applies the committed log above it, starts Raft on this node and
    /// registers the group here (so peers' messages reach it) until [`RaftGroup::shutdown`].
    pub async fn start_group(
        &self,
        group: GroupId,
        storage: Arc<dyn StorageBackend>,
        app: Box<dyn StateMachineApp>,
        config: RaftGroupConfig,
    ) -> Result<Arc<RaftGroup>, RaftError> {
        self.heartbeats.start();
        // On a task of its own: a caller cancelled halfway (a reconcile pass aborted at
        // shutdown) must not leave a Raft core running that no one registered, and so no one
        // stops, holding the node's storage. The task ends registered (stopped by the shutdown's
        // sweep, [`Router::close`]) or stopped (refused once the node is closing).
        let (peers, groups) = (self.peers.clone(), self.groups.clone());
        let counted = self.groups.starting();
        tokio::spawn(async move {
            let _counted = counted;
            RaftGroup::start(group, storage, app, &peers, &groups, config).await
        })
        .await
        .map_err(|e| RaftError::Fatal { group, reason: format!("the task starting the group failed: {e}") })?
    }

    /// Refuses every later group start and returns every group running now (see
    /// [`LocalGroups::close`]): the node is stopping.
    pub fn close(&self) -> Vec<Arc<RaftGroup>> {
        self.groups.close()
    }

    /// Waits (at most `limit`) until no group start is under way; see
    /// [`LocalGroups::starts_finished`].
    pub async fn starts_finished(&self, limit: Duration) -> bool {
        self.groups.starts_finished(limit).await
    }

    /// A running local group.
    pub fn group(&self, id: GroupId) -> Option<Arc<RaftGroup>> {
        self.groups.get(id)
    }

    /// Every running local group, in id order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.groups.ids()
    }
}
