//! The two [`StateMachineApp`]s of the cluster layer: thin adapters from raft-core's apply /
//! snapshot / restore calls to the pure state machines in [`super::metadata`] and
//! [`super::partition`]. State is shared with readers through an `Arc<RwLock<..>>`.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::cluster::metadata::{MetadataCommand, MetadataReply, MetadataState, Rejection};
use crate::cluster::partition::PartitionMachine;
use crate::{RestoreError, StateMachineApp};

/// The metadata group's application: applies [`MetadataCommand`]s.
#[derive(Debug)]
pub struct MetadataApp {
    state: Arc<RwLock<MetadataState>>,
    /// Bumped after every applied command or restore, so the reconcile loop wakes.
    changed: watch::Sender<u64>,
}

impl MetadataApp {
    /// An app over `state`, announcing changes on `changed`.
    pub fn new(state: Arc<RwLock<MetadataState>>, changed: watch::Sender<u64>) -> Self {
        Self { state, changed }
    }

    fn announce(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl StateMachineApp for MetadataApp {
    fn apply(&mut self, _index: u64, payload: &Bytes) -> Bytes {
        let reply = match MetadataCommand::decode(payload) {
            Ok(command) => self.state.write().apply(&command),
            // Every replica sees the same bytes, so every replica rejects them alike.
            Err(e) => MetadataReply::Rejected(Rejection::Invalid { reason: e.to_string() }),
        };
        self.announce();
        Bytes::from(reply.encode())
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(self.state.read().encode())
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let state = if snapshot.is_empty() { MetadataState::new() } else { MetadataState::decode(snapshot)? };
        *self.state.write() = state;
        self.announce();
        Ok(())
    }
}

/// A partition group's application: the producer dedup table and the hidden-entry set.
#[derive(Debug)]
pub struct PartitionApp {
    state: Arc<RwLock<PartitionMachine>>,
}

impl PartitionApp {
    /// An app over `state`.
    pub fn new(state: Arc<RwLock<PartitionMachine>>) -> Self {
        Self { state }
    }
}

impl StateMachineApp for PartitionApp {
    fn apply(&mut self, index: u64, payload: &Bytes) -> Bytes {
        self.state.write().apply(index, payload).encode()
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(self.state.read().encode())
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let state = if snapshot.is_empty() { PartitionMachine::new() } else { PartitionMachine::decode(snapshot)? };
        *self.state.write() = state;
        Ok(())
    }
}
