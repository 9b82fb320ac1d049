//! Asking a group's leader for its read index (`ReadIndex`): the leader confirms with a quorum
//! that it still leads and answers its commit index. A node that then applies up to that index
//! holds everything the group committed before it asked, whatever messages (old heartbeats, a
//! stored vote, its own replayed log) it saw meanwhile.

use std::time::Duration;

use tonic::Status;

use crate::network::client::{detached, raft_client};
use crate::network::pb;
use crate::network::peers::Peers;
use crate::types::{GroupId, NodeId};

/// Why a read index could not be had from a peer.
#[derive(Debug, thiserror::Error)]
pub enum ReadIndexError {
    /// The peer's address is unusable.
    #[error("group {group}: read index from node {node} at {addr}: {reason}")]
    Address {
        /// The group.
        group: GroupId,
        /// The node asked.
        node: NodeId,
        /// Its address.
        addr: String,
        /// Why the address is unusable.
        reason: String,
    },
    /// The call failed: unreachable, not the leader (FAILED_PRECONDITION), no quorum, refused.
    #[error("group {group}: read index from node {node} at {addr}: {status}")]
    Rpc {
        /// The group.
        group: GroupId,
        /// The node asked.
        node: NodeId,
        /// Its address.
        addr: String,
        /// The gRPC status.
        status: Box<Status>,
    },
    /// No answer in time.
    #[error("group {group}: read index from node {node} at {addr}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The group.
        group: GroupId,
        /// The node asked.
        node: NodeId,
        /// Its address.
        addr: String,
        /// How long it waited.
        timeout_ms: u64,
    },
}

/// Asks node `node` at `addr`, which should lead `group`, for the group's read index; waits at
/// most `timeout`.
pub async fn read_index_from(
    peers: &Peers,
    group: GroupId,
    node: NodeId,
    addr: &str,
    timeout: Duration,
) -> Result<u64, ReadIndexError> {
    let mut client = raft_client(peers, addr).map_err(|reason| ReadIndexError::Address {
        group,
        node,
        addr: addr.to_string(),
        reason,
    })?;
    // On a task of its own, not reset when the wait ends (see `client`'s module docs).
    let call = async move { client.read_index(pb::ReadIndexRequest { group_id: group.0 }).await };
    match detached(timeout, timeout, call).await {
        Some(Ok(resp)) => Ok(resp.into_inner().index),
        Some(Err(status)) => Err(ReadIndexError::Rpc { group, node, addr: addr.to_string(), status: Box::new(status) }),
        None => {
            Err(ReadIndexError::Timeout { group, node, addr: addr.to_string(), timeout_ms: timeout.as_millis() as u64 })
        }
    }
}
