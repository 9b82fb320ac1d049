//! openraft's state machine for one group: blank and membership entries are handled here, normal
//! entries go to the application's [`StateMachineApp`]. The application state is in memory; its
//! durable form is the latest snapshot checkpoint plus the log above it (re-applied on start).

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use shale_storage::Offset;
use tokio::sync::watch;

use crate::format::{SnapshotState, encode_snapshot_state};
use crate::log_store::{GroupLog, blocking, io_err};
use crate::snapshot::{SnapshotData, latest_snapshot};
use crate::types::{AppResponse, EntryPayload, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// An error an application returns from [`StateMachineApp::restore`].
pub type RestoreError = Box<dyn std::error::Error + Send + Sync>;

/// The application part of one group's state machine. Payloads are opaque to the Raft layer.
pub trait StateMachineApp: Send + Sync + 'static {
    /// Applies one committed application payload at log index `index` (the storage offset of its
    /// record). Must be deterministic: every replica applies the same payloads in the same order.
    /// Returns the response handed back to the writer. Blank and membership entries never arrive.
    fn apply(&mut self, index: u64, payload: &Bytes) -> Bytes;

    /// Serialises the whole application state (taken when a snapshot is built).
    fn snapshot(&self) -> Bytes;

    /// Replaces the whole application state with bytes from [`StateMachineApp::snapshot`]
    /// (a follower installing a leader's snapshot, and every restart). Undecodable bytes are an
    /// error, never a panic.
    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError>;
}

/// openraft's state machine for one group.
pub struct GroupStateMachine {
    log: Arc<GroupLog>,
    app: Box<dyn StateMachineApp>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    applied_tx: watch::Sender<Option<u64>>,
}

impl fmt::Debug for GroupStateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupStateMachine")
            .field("group", &self.log.group())
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

impl GroupStateMachine {
    /// A state machine with nothing applied; openraft restores it from the latest snapshot on start.
    pub fn new(log: Arc<GroupLog>, app: Box<dyn StateMachineApp>) -> Self {
        let (applied_tx, _) = watch::channel(None);
        Self { log, app, last_applied: None, membership: StoredMembership::default(), applied_tx }
    }

    /// A watch of the last applied index.
    pub fn subscribe_applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied_tx.subscribe()
    }

    fn publish_applied(&self) {
        let index = self.last_applied.map(|l| l.index);
        self.applied_tx.send_if_modified(|v| {
            let changed = *v != index;
            *v = index;
            changed
        });
    }
}

/// Builds one snapshot from state captured when the builder was made.
pub struct SnapshotBuilder {
    log: Arc<GroupLog>,
    state: SnapshotState,
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder").field("last_log_id", &self.state.last_log_id).finish_non_exhaustive()
    }
}

/// An openraft snapshot of this configuration.
pub type GroupSnapshot = Snapshot<crate::types::LeaderId, crate::types::NodeId, crate::types::Node, SnapshotData>;

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<GroupSnapshot, io::Error> {
        let log = self.log.clone();
        let state = self.state.clone();
        blocking(move || {
            let data = encode_snapshot_state(&state);
            let offset = state.last_log_id.map_or(0, |l| l.index + 1);
            let storage = log.storage();
            let existing = storage
                .checkpoint_at_or_below(log.stream(), Offset::new(offset))
                .map_err(io_err)?
                .filter(|cp| cp.offset.get() == offset && cp.data == data);
            let cp = match existing {
                Some(cp) => cp,
                None => log.write_snapshot_checkpoint(offset, data).map_err(io_err)?,
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_log_id,
                last_membership: StoredMembership::new(state.membership_log_id, state.membership.clone()),
            };
            tracing::debug!(group = %log.group(), offset, "snapshot checkpoint written");
            Ok(Snapshot { meta, snapshot: SnapshotData { offset, chain_hash: cp.chain_hash, data: cp.data } })
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = match entry.payload {
                EntryPayload::Normal(p) => self.app.apply(entry.log_id.index, &p.0),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Bytes::new()
                }
                EntryPayload::Blank => Bytes::new(),
            };
            debug_assert!(self.last_applied.is_none_or(|l| l.index < entry.log_id.index));
            self.last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                // The writer learns its outcome only once the applied index covers the entry, so
                // a read it makes next (bounded by the applied index) sees what it wrote.
                self.publish_applied();
                r.send(AppResponse(response));
            }
        }
        self.publish_applied();
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force && self.last_applied.is_none() {
            return None;
        }
        Some(self.get_snapshot_builder().await)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            log: self.log.clone(),
            state: SnapshotState {
                last_log_id: self.last_applied,
                membership_log_id: self.membership.log_id().to_owned(),
                membership: self.membership.membership().clone(),
                app: self.app.snapshot(),
            },
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let state = snapshot.state().map_err(io_err)?;
        let expected_offset = meta.last_log_id.map_or(0, |l| l.index + 1);
        if state.last_log_id != meta.last_log_id || snapshot.offset != expected_offset {
            return Err(io_err(format!(
                "group {}: snapshot data (last log id {:?}, offset {}) does not match its meta (last log id {:?})",
                self.log.group(),
                state.last_log_id,
                snapshot.offset,
                meta.last_log_id
            )));
        }
        let log = self.log.clone();
        let snap = snapshot.clone();
        blocking(move || {
            let storage = log.storage();
            let same =
                storage.checkpoint_at_or_below(log.stream(), Offset::new(snap.offset)).map_err(io_err)?.is_some_and(
                    |cp| cp.offset.get() == snap.offset && cp.chain_hash == snap.chain_hash && cp.data == snap.data,
                );
            if !same {
                log.install_checkpoint(snap.to_checkpoint()).map_err(io_err)?;
            }
            Ok(())
        })
        .await?;
        self.app.restore(&state.app).map_err(|e| {
            io_err(format!("group {}: application rejected snapshot at {:?}: {e}", self.log.group(), meta.last_log_id))
        })?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish_applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<GroupSnapshot>, io::Error> {
        let log = self.log.clone();
        blocking(move || {
            let Some((data, state)) = latest_snapshot(log.storage().as_ref(), log.stream()).map_err(io_err)? else {
                return Ok(None);
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_log_id,
                last_membership: StoredMembership::new(state.membership_log_id, state.membership),
            };
            Ok(Some(Snapshot { meta, snapshot: data }))
        })
        .await
    }
}
