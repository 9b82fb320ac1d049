//! Snapshots are log-stream checkpoints: a snapshot covering entries `..=L` is the storage
//! checkpoint at offset `L + 1` whose data is a [`crate::format::snapshot`] record (last log id,
//! membership, application snapshot). Its chain hash is the hash of record `L`, so a follower that
//! installs it can keep its own log when the chains agree, or restart its stream at `L + 1`.

use bytes::{BufMut, Bytes, BytesMut};
use shale_storage::{ChainHash, Checkpoint, Offset, StorageBackend, StorageError, StreamId};

use crate::format::{DecodeError, SnapshotState, decode_snapshot_state};

/// Length of the chain hash prefix of a snapshot on the wire.
pub const WIRE_HASH_LEN: usize = 32;

/// A snapshot as openraft moves it around: the checkpoint's offset, chain hash and data.
#[derive(Clone, PartialEq, Eq)]
pub struct SnapshotData {
    /// The checkpoint offset: last included index + 1 (0 for an empty snapshot).
    pub offset: u64,
    /// The chain hash of the record before `offset`.
    pub chain_hash: ChainHash,
    /// The checkpoint data ([`crate::format::snapshot`] layout).
    pub data: Bytes,
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotData")
            .field("offset", &self.offset)
            .field("chain_hash", &self.chain_hash)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl SnapshotData {
    /// The bytes sent to a follower: chain hash (32 bytes) then the checkpoint data.
    pub fn to_wire(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(WIRE_HASH_LEN + self.data.len());
        out.put_slice(&self.chain_hash.0);
        out.put_slice(&self.data);
        out.freeze()
    }

    /// Parses [`SnapshotData::to_wire`] output for a snapshot whose last included index is
    /// `last_index`.
    pub fn from_wire(last_index: Option<u64>, wire: Bytes) -> Result<Self, DecodeError> {
        if wire.len() < WIRE_HASH_LEN {
            return Err(DecodeError::Truncated {
                what: "snapshot transfer",
                needed: WIRE_HASH_LEN,
                available: wire.len(),
            });
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&wire[..WIRE_HASH_LEN]);
        Ok(Self {
            offset: last_index.map_or(0, |i| i + 1),
            chain_hash: ChainHash(hash),
            data: wire.slice(WIRE_HASH_LEN..),
        })
    }

    /// The decoded snapshot state.
    pub fn state(&self) -> Result<SnapshotState, DecodeError> {
        decode_snapshot_state(&self.data)
    }

    /// The storage checkpoint this snapshot is.
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint::new(Offset::new(self.offset), self.chain_hash, self.data.clone())
    }
}

/// The newest checkpoint of `stream` that holds snapshot data (storage may also hold checkpoints of
/// its own, with empty data; those are skipped).
pub fn latest_snapshot(
    storage: &dyn StorageBackend,
    stream: StreamId,
) -> Result<Option<(SnapshotData, SnapshotState)>, StorageError> {
    let mut cp = storage.latest_checkpoint(stream)?;
    while let Some(c) = cp {
        if !c.data.is_empty()
            && let Ok(state) = decode_snapshot_state(&c.data)
        {
            let expected = state.last_log_id.map_or(0, |l| l.index + 1);
            if expected == c.offset.get() {
                return Ok(Some((
                    SnapshotData { offset: c.offset.get(), chain_hash: c.chain_hash, data: c.data },
                    state,
                )));
            }
        }
        if c.offset == Offset::ZERO {
            break;
        }
        cp = storage.checkpoint_at_or_below(stream, Offset::new(c.offset.get() - 1))?;
    }
    Ok(None)
}
