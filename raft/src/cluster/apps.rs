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
    /// While a restarted group rebuilds its state (restore, then re-apply), the state it builds and
    /// the index the shared `state` already reflects: `state` is replaced only once the rebuilt
    /// one has caught up with it, so readers never see the metadata go back in time.
    replay: Option<(MetadataState, u64)>,
}

impl MetadataApp {
    /// An app over `state`, announcing changes on `changed`.
    pub fn new(state: Arc<RwLock<MetadataState>>, changed: watch::Sender<u64>) -> Self {
        Self { state, changed, replay: None }
    }

    /// An app for a restarted metadata group whose shared `state` already reflects every entry up
    /// to `applied`: it rebuilds from the snapshot and the log on the side and takes over `state`
    /// at the first entry it applies past `applied` (readers keep the state they had meanwhile).
    pub fn resuming(state: Arc<RwLock<MetadataState>>, changed: watch::Sender<u64>, applied: u64) -> Self {
        Self { state, changed, replay: Some((MetadataState::new(), applied)) }
    }

    fn announce(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl StateMachineApp for MetadataApp {
    fn apply(&mut self, index: u64, payload: &Bytes) -> Bytes {
        let reply = match (MetadataCommand::decode(payload), &mut self.replay) {
            (Ok(command), Some((staging, _))) => staging.apply(&command),
            (Ok(command), None) => self.state.write().apply(&command),
            // Every replica sees the same bytes, so every replica rejects them alike.
            (Err(e), _) => MetadataReply::Rejected(Rejection::Invalid { reason: e.to_string() }),
        };
        if let Some((_, caught_up_at)) = &self.replay
            && index >= *caught_up_at
            && let Some((staging, _)) = self.replay.take()
        {
            *self.state.write() = staging;
        }
        if self.replay.is_none() {
            self.announce();
        }
        Bytes::from(reply.encode())
    }

    fn snapshot(&self) -> Bytes {
        match &self.replay {
            Some((staging, _)) => Bytes::from(staging.encode()),
            None => Bytes::from(self.state.read().encode()),
        }
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let state = if snapshot.is_empty() { MetadataState::new() } else { MetadataState::decode(snapshot)? };
        match &mut self.replay {
            Some((staging, _)) => *staging = state,
            None => {
                *self.state.write() = state;
                self.announce();
            }
        }
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
    use crate::cluster::MemberAddrs;
    use crate::cluster::partition::ApplyOutcome;

    #[test]
    fn metadata_app_applies_snapshots_and_rejects_garbage() {
        let state = Arc::new(RwLock::new(MetadataState::new()));
        let (tx, rx) = watch::channel(0);
        let mut app = MetadataApp::new(state.clone(), tx);
        let add = MetadataCommand::AddMember { id: 1, addrs: MemberAddrs::one("h:1") };
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
    fn a_resuming_metadata_app_never_shows_older_state_and_takes_over_once_caught_up() {
        let add = |id: u64| {
            Bytes::from(MetadataCommand::AddMember { id, addrs: MemberAddrs::one(format!("h:{id}")) }.encode())
        };
        let state = Arc::new(RwLock::new(MetadataState::new()));
        let (tx, rx) = watch::channel(0);
        let mut app = MetadataApp::new(state.clone(), tx.clone());
        app.apply(1, &add(1));
        let snap = app.snapshot();
        app.apply(2, &add(2));
        app.apply(3, &add(3));
        let before = state.read().clone();
        let seen = *rx.borrow();

        // A restart: restore from the snapshot at 1, re-apply 2 and 3, then a new entry 4.
        let mut resumed = MetadataApp::resuming(state.clone(), tx, 3);
        resumed.restore(&snap).unwrap();
        assert_eq!(*state.read(), before, "readers never see the snapshot's older state");
        resumed.apply(2, &add(2));
        assert_eq!(*state.read(), before);
        assert_eq!(*rx.borrow(), seen, "nothing new to announce while replaying");
        resumed.apply(3, &add(3));
        assert_eq!(*state.read(), before, "caught up: the rebuilt state is the same");
        resumed.apply(4, &add(4));
        assert!(state.read().members().contains_key(&4), "later entries apply to the shared state");
        assert!(*rx.borrow() > seen);
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
