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

/// A leader's replication reads its log tail from the entry cache, off the blocking pool
/// ([`GroupLog::read_cached_entries`]). Whatever it answers must be exactly what a read through
/// storage gives, for every range and both read modes, also after a purge; below the purge point
/// it answers nothing (the slow path decides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_log_reads_answer_what_storage_reads_do() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::testing::{blank_ent, log_id};

    let dir = tempfile::tempdir().unwrap();
    let (mut ls, _sm) = build(Arc::new(Storage::open(dir.path()).unwrap())).unwrap();
    let entries: Vec<_> = (1..=20).map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
    let (tx, rx) = TypeConfig::oneshot();
    ls.append(entries, IOFlushed::signal(tx)).await.unwrap();
    rx.await.unwrap().unwrap();
    ls.purge(log_id::<TypeConfig>(1, 1, 5)).await.unwrap();
    let log = ls.log().clone();
    let ids = |v: Vec<shale_raft::types::Entry>| v.into_iter().map(|e| e.log_id.index).collect::<Vec<_>>();
    let mut answered = 0;
    for start in 0..=22 {
        for end in start..=23 {
            for all in [true, false] {
                if let Some(cached) = log.read_cached_entries(start, end, all) {
                    answered += 1;
                    let stored = log.read_entries(start, end, all).unwrap();
                    assert_eq!(ids(cached), ids(stored), "[{start}, {end}) all={all}");
                }
            }
        }
    }
    assert!(answered > 100, "the cache answered {answered} ranges");
    assert!(log.read_cached_entries(3, 10, true).is_none(), "purged entries are not served from the cache");
    assert!(log.read_cached_entries(21, 30, true).is_none(), "nothing past the end");
}
