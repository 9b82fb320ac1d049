//! openraft's own storage conformance suite, run against the shale-raft log store and state machine
//! over both storage backends (disk `Storage` in a temp dir, and `MemoryStorage`).

use std::sync::Arc;

use bytes::Bytes;
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use shale_raft::{
    GroupId, GroupLog, GroupStateMachine, LogStore, RestoreError, Retention, StateMachineApp, TypeConfig,
};
use shale_storage::{MemoryStorage, Storage, StorageBackend};

/// A tiny application: counts the payload bytes it applied.
#[derive(Default)]
struct ByteCounter {
    bytes: u64,
}

impl StateMachineApp for ByteCounter {
    fn apply(&mut self, _index: u64, payload: &Bytes) -> Bytes {
        self.bytes += payload.len() as u64;
        Bytes::copy_from_slice(&self.bytes.to_le_bytes())
    }

    fn snapshot(&self) -> Bytes {
        Bytes::copy_from_slice(&self.bytes.to_le_bytes())
    }

    fn restore(&mut self, snapshot: &Bytes) -> Result<(), RestoreError> {
        let b: [u8; 8] = snapshot.as_ref().try_into().map_err(|_| format!("bad snapshot length {}", snapshot.len()))?;
        self.bytes = u64::from_le_bytes(b);
        Ok(())
    }
}

fn build(storage: Arc<dyn StorageBackend>) -> Result<(LogStore, GroupStateMachine), StorageError<TypeConfig>> {
    build_with_cache(storage, shale_raft::log_store::DEFAULT_ENTRY_CACHE_BYTES)
}

fn build_with_cache(
    storage: Arc<dyn StorageBackend>,
    cache_bytes: usize,
) -> Result<(LogStore, GroupStateMachine), StorageError<TypeConfig>> {
    let log = GroupLog::open(GroupId(7), storage, Retention::SnapshotOnly)
        .map_err(|e| StorageError::read(TypeConfig::err_from_string(e)))?;
    log.set_cache_bytes(cache_bytes);
    Ok((LogStore::new(log.clone()), GroupStateMachine::new(log, Box::new(ByteCounter::default()))))
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let (ls, sm) = build(Arc::new(MemoryStorage::new()))?;
        Ok(((), ls, sm))
    }
}

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = Storage::open(dir.path()).map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (ls, sm) = build(Arc::new(storage))?;
        Ok((dir, ls, sm))
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_on_memory_storage() {
    init_tracing();
    Suite::test_all(MemoryBuilder).await.expect("storage suite on MemoryStorage");
}

/// Disk storage with the in-memory log tail disabled: every read goes to storage.
struct UncachedDiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, GroupStateMachine, tempfile::TempDir> for UncachedDiskBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let storage = Storage::open(dir.path()).map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (ls, sm) = build_with_cache(Arc::new(storage), 0)?;
        Ok((dir, ls, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_on_disk_storage_without_tail_cache() {
    init_tracing();
    Suite::test_all(UncachedDiskBuilder).await.expect("storage suite on disk Storage, no tail cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_suite_on_disk_storage() {
    init_tracing();
    Suite::test_all(DiskBuilder).await.expect("storage suite on disk Storage");
}
