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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::partition::ApplyOutcome;

    #[test]
    fn metadata_app_applies_snapshots_and_rejects_garbage() {
        let state = Arc::new(RwLock::new(MetadataState::new()));
        let (tx, rx) = watch::channel(0);
        let mut app = MetadataApp::new(state.clone(), tx);
        let add = MetadataCommand::AddMember { id: 1, addr: "h:1".into() };
        let reply = app.apply(1, &Bytes::from(add.encode()));
        assert_eq!(MetadataReply::decode(&reply).unwrap(), MetadataReply::Ok);
        assert_eq!(*rx.borrow(), 1, "readers are told about every apply");
        let garbage = app.apply(2, &Bytes::from_static(b"\x00\x01garbage"));
        assert!(matches!(MetadataReply::decode(&garbage).unwrap(), MetadataReply::Rejected(Rejection::Invalid { .. })));

        let snap = app.snapshot();
        let (tx2, _rx2) = watch::channel(0);
        let other = Arc::new(RwLock::new(MetadataState::new()));
        let mut restored = MetadataApp::new(other.clone(), tx2);
        restored.restore(&snap).unwrap();
        assert_eq!(*other.read(), *state.read());
        assert!(restored.restore(&Bytes::from_static(b"not a snapshot")).is_err());
        assert_eq!(*other.read(), *state.read(), "a failed restore changes nothing");
    }

    #[test]
    fn partition_app_round_trips_through_its_snapshot() {
        let state = Arc::new(RwLock::new(PartitionMachine::new()));
        let mut app = PartitionApp::new(state.clone());
        let reply = app.apply(3, &Bytes::from_static(b"garbage"));
        assert_eq!(ApplyOutcome::decode(&reply).unwrap(), ApplyOutcome::Invalid);
        let other = Arc::new(RwLock::new(PartitionMachine::new()));
        let mut restored = PartitionApp::new(other.clone());
        restored.restore(&app.snapshot()).unwrap();
        assert!(!other.read().is_visible(3));
        assert!(restored.restore(&Bytes::from_static(b"\xff\xff")).is_err());
    }
}
