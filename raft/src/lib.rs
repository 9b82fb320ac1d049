//! `shale-raft`: multi-Raft replication for Shale, openraft over shale-storage.
//!
//! Every Raft group (the metadata group and one per topic partition) keeps its log as a storage
//! stream whose record offsets are the Raft log indexes, its vote/committed/purged state in a small
//! meta stream, and its snapshots as checkpoints of the log stream. Application payloads and
//! snapshots are opaque bytes handled by a [`StateMachineApp`]. All groups of a node share one gRPC
//! transport ([`Router`]).
//!
//! Stream mapping: group `g` uses stream `2g` (log) and `2g + 1` (meta). Byte layouts are in
//! [`format`].
//!
//! Entry points: [`Router::new`] once per node (mount [`Router::grpc_service`] in the node's tonic
//! server), then [`Router::start_group`] per group with the node's shared storage.

pub mod cluster;
pub mod entry_cache;
pub mod error;
pub mod format;
pub mod group;
pub mod heartbeat;
pub mod log_store;
pub mod meta_store;
pub mod network;
pub mod repair;
pub mod retention;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod state_machine;
pub mod sync_rounds;
pub mod types;

pub use error::{RaftError, TransferRefusal};
pub use group::{LocalGroups, PendingWrite, QuietState, RaftGroup, RaftGroupConfig, WriteResult};
pub use heartbeat::HeartbeatFault;
pub use log_store::{CommittedEntry, GroupLog, LogReader, LogStore};
pub use network::NetworkConfig;
pub use retention::Retention;
pub use router::Router;
pub use snapshot::SnapshotData;
pub use state_machine::{GroupStateMachine, RestoreError, StateMachineApp};
pub use sync_rounds::{SyncRoundStats, SyncRounds};
pub use types::{AppPayload, AppResponse, GroupId, LeaderId, Node, NodeId, TypeConfig};
