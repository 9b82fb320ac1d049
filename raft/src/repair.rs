//! Repairing a damaged range of a group's log from a peer: the `ReadLog` RPC (server and client
//! side) and the leadership switch a damaged replica uses.
//!
//! Any replica answers `ReadLog` with verified records of its own log stream (CRC- and
//! chain-checked by storage on the way out). The receiver trusts none of it: storage's
//! `repair_range` accepts the records only if they chain exactly from its own known-good hash
//! before the range to its own known-good hash at the range's end.

use std::time::Duration;

use bytes::Bytes;
use shale_storage::{ChainHash, Offset, Record, StorageError};
use tonic::Status;

use crate::group::RaftGroup;
use crate::network::pb;
use crate::network::peers::Peers;
use crate::types::{GroupId, NodeId};

/// Payload bytes per `ReadLog` response a repair asks for.
pub const READ_LOG_BYTES: u64 = 4 << 20;

/// Why records could not be read from a peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadLogError {
    /// The peer's address is unusable.
    #[error("peer {addr}: {reason}")]
    Address {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call failed (unreachable, group not running there, damaged there too, ...).
    #[error("peer {addr}: ReadLog failed: {status}")]
    Rpc {
        /// The peer's address.
        addr: String,
        /// The gRPC status.
        status: Box<Status>,
    },
    /// The call did not finish in time.
    #[error("peer {addr}: ReadLog timed out after {timeout_ms} ms")]
    Timeout {
        /// The peer's address.
        addr: String,
        /// The bound.
        timeout_ms: u64,
    },
    /// The answer is not the records asked for.
    #[error("peer {addr}: bad ReadLog answer at offset {offset}: {reason}")]
    Malformed {
        /// The peer's address.
        addr: String,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Serves `ReadLog` from this node's copy of `group`'s log.
pub(crate) async fn read_local(
    group: &RaftGroup,
    from: u64,
    to: u64,
    max_bytes: u64,
) -> Result<Vec<pb::LogRecord>, Status> {
    let storage = group.log().storage().clone();
    let stream = group.log().stream();
    let max = max_bytes.clamp(1, READ_LOG_BYTES) as usize;
    let read = tokio::task::spawn_blocking(move || storage.read_range(stream, Offset::new(from), Offset::new(to), max))
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?;
    match read {
        Ok(records) => Ok(records
            .into_iter()
            .map(|r| pb::LogRecord {
                offset: r.offset.get(),
                prev_hash: Bytes::copy_from_slice(&r.prev_hash.0),
                hash: Bytes::copy_from_slice(&r.hash.0),
                payload: r.payload,
            })
            .collect()),
        Err(e @ StorageError::OffsetOutOfRange { .. }) => Err(Status::out_of_range(e.to_string())),
        Err(e @ StorageError::Corruption { .. }) => Err(Status::data_loss(e.to_string())),
        Err(e) => Err(Status::unavailable(e.to_string())),
    }
}

/// Reads records `[from, to)` of `group`'s log from the peer at `addr`, each call bounded by
/// `timeout`. The records are as the peer holds them: the caller checks them (storage's
/// `repair_range` does).
pub async fn read_remote(
    peers: &Peers,
    addr: &str,
    group: GroupId,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<Vec<Record>, ReadLogError> {
    let channel = peers.channel(addr).map_err(|reason| ReadLogError::Address { addr: addr.to_string(), reason })?;
    let mut client = pb::raft_service_client::RaftServiceClient::new(channel)
        .max_decoding_message_size(peers.config().max_message_bytes)
        .max_encoding_message_size(peers.config().max_message_bytes);
    let mut out = Vec::with_capacity((to - from) as usize);
    let mut at = from;
    while at < to {
        let req = pb::ReadLogRequest { group_id: group.0, from: at, to, max_bytes: READ_LOG_BYTES };
        let resp = tokio::time::timeout(timeout, client.read_log(req))
            .await
            .map_err(|_| ReadLogError::Timeout { addr: addr.to_string(), timeout_ms: timeout.as_millis() as u64 })?
            .map_err(|status| ReadLogError::Rpc { addr: addr.to_string(), status: Box::new(status) })?
            .into_inner();
        let malformed = |offset, reason| ReadLogError::Malformed { addr: addr.to_string(), offset, reason };
        if resp.records.is_empty() {
            return Err(malformed(at, "no records"));
        }
        for r in resp.records {
            if r.offset != at {
                return Err(malformed(r.offset, "offsets out of sequence"));
            }
            let hash = |b: &[u8]| -> Option<ChainHash> { b.try_into().ok().map(ChainHash) };
            let (Some(prev_hash), Some(hash)) = (hash(&r.prev_hash), hash(&r.hash)) else {
                return Err(malformed(r.offset, "a hash is not 32 bytes"));
            };
            out.push(Record { offset: Offset::new(r.offset), prev_hash, hash, payload: r.payload });
            at += 1;
            if at == to {
                break;
            }
        }
    }
    Ok(out)
}

/// While `avoid`, this node starts no election for `group` on its own (it still votes, and
/// still follows); see [`hand_over_leadership`] for giving up leadership it holds.
pub fn avoid_leadership(group: &RaftGroup, avoid: bool) {
    group.raft().runtime_config().elect(!avoid);
}

/// If this node leads `group`, hands leadership to the voter that has replicated the most (one
/// that has the whole log, or the closest); returns who it went to. `None` if this node does not
/// lead or no other voter is known.
pub async fn hand_over_leadership(group: &RaftGroup) -> Result<Option<NodeId>, crate::RaftError> {
    if !group.is_leader() {
        return Ok(None);
    }
    let me = group.node_id();
    let m = group.metrics();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().filter(|id| *id != me).collect();
    let matched = |id: &NodeId| crate::group::matched_index(&m, *id).map_or(0, |i| i + 1);
    let Some(to) = voters.iter().copied().max_by_key(|id| (matched(id), std::cmp::Reverse(*id))) else {
        return Ok(None);
    };
    group.transfer_leader_to_live(to).await?;
    Ok(Some(to))
}
