//! The edge between the wire and the domain: protobuf messages <-> `shale_raft::cluster` types,
//! and cluster errors -> gRPC statuses. One file per family; nothing else in the node touches
//! both sides.

pub mod errors;
pub mod groups;
pub mod records;
pub mod status;
pub mod topics;

use shale_storage::ChainHash;

/// A chain hash as wire bytes.
pub fn hash_bytes(hash: &ChainHash) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&hash.0)
}
