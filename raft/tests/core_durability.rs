//! What a group writes survives reopening its storage (a crash that keeps the page cache, i.e.
//! kill -9, behaves like this; storage's own tests cover torn tails).

use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use shale_raft::format::{MetaState, encode_entry};
use shale_raft::meta_store::MetaStore;
use shale_raft::types::{AppPayload, Entry, EntryPayload, Vote, log_id};
use shale_raft::{GroupId, GroupLog, LogStore, Retention};
use shale_storage::{ChainHash, Offset, Storage, StorageBackend, chain_hash};

fn open(dir: &std::path::Path) -> Arc<dyn StorageBackend> {
    Arc::new(Storage::open(dir).expect("open storage"))
}

#[test]
fn vote_committed_and_purged_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(5);
    {
        let meta = MetaStore::open(g, open(dir.path())).unwrap();
        assert_eq!(meta.state(), MetaState::default());
        meta.update(true, |m| m.vote = Some(Vote::new(3, 1))).unwrap();
        meta.update(false, |m| m.committed = Some(log_id(3, 1, 10))).unwrap();
        meta.update(true, |m| m.vote = Some(Vote::new_committed(4, 2))).unwrap();
        meta.update(true, |m| m.last_purged = Some(log_id(3, 1, 7))).unwrap();
        meta.update(false, |m| m.committed = Some(log_id(4, 2, 12))).unwrap();
    }
    let meta = MetaStore::open(g, open(dir.path())).unwrap();
    assert_eq!(
        meta.state(),
        MetaState {
            vote: Some(Vote::new_committed(4, 2)),
            committed: Some(log_id(4, 2, 12)),
            last_purged: Some(log_id(3, 1, 7)),
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_groups_committed_id_is_written_at_most_once_per_interval_and_the_rest_with_its_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(11);
    let storage = open(dir.path());
    let log = GroupLog::open(g, storage.clone(), Retention::SnapshotOnly).unwrap();
    let interval = std::time::Duration::from_millis(500);
    let mut store = LogStore::new(log.clone()).with_committed_write_interval(interval);
    // A committed id past the durable log is ignored on reopen: write the entries first.
    store.blocking_append((0..10).map(|i| entry(i, 1)).collect::<Vec<_>>()).await.unwrap();
    let records = |s: &Arc<dyn StorageBackend>| s.next_offset(g.meta_stream()).unwrap().get();
    // The first committed id is written at once; the next ones within the interval are not.
    store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
    let count = records(&storage);
    store.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
    store.save_committed(Some(log_id(1, 1, 5))).await.unwrap();
    assert_eq!(records(&storage), count, "committed ids within the interval are deferred");
    assert_eq!(log.meta().state().committed, Some(log_id(1, 1, 5)), "the in-memory state has the newest");
    // What a crash now leaves (the meta stream's newest record) is the older id: re-applying less.
    let written = |s: &Arc<dyn StorageBackend>| MetaStore::open(g, s.clone()).unwrap().state().committed;
    assert_eq!(written(&storage), Some(log_id(1, 1, 3)));
    // The next record the meta stream gets (a vote here) carries the deferred id.
    store.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    assert_eq!(written(&storage), Some(log_id(1, 1, 5)));
    // Past the interval a committed id is written at once again; `write_deferred` writes one left.
    tokio::time::sleep(interval).await;
    store.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
    store.save_committed(Some(log_id(1, 1, 7))).await.unwrap();
    assert_eq!(written(&storage), Some(log_id(1, 1, 6)));
    log.meta().write_deferred().unwrap();
    assert_eq!(written(&storage), Some(log_id(1, 1, 7)));
    drop(store);
    log.wait_flusher_stopped().await;
    // Reopened, the log store reads the newest id back.
    drop((log, storage));
    let log = GroupLog::open(g, open(dir.path()), Retention::SnapshotOnly).unwrap();
    assert_eq!(LogStore::new(log).read_committed().await.unwrap(), Some(log_id(1, 1, 7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_groups_committed_id_is_written_on_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let log = GroupLog::open(GroupId::METADATA, storage.clone(), Retention::SnapshotOnly).unwrap();
    let mut store = LogStore::new(log.clone());
    store.blocking_append((0..10).map(|i| entry(i, 1)).collect::<Vec<_>>()).await.unwrap();
    for i in 1..=3 {
        store.save_committed(Some(log_id(1, 1, i))).await.unwrap();
        let written = MetaStore::open(GroupId::METADATA, storage.clone()).unwrap().state().committed;
        assert_eq!(written, Some(log_id(1, 1, i)));
    }
    drop(store);
    log.wait_flusher_stopped().await;
}

fn entry(i: u64, term: u64) -> Entry {
    Entry {
        log_id: log_id(term, 1, i),
        payload: EntryPayload::Normal(AppPayload::new(Bytes::from(format!("record {i}")))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_entries_are_the_storage_records_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(9);
    let entries: Vec<Entry> = (0..50).map(|i| entry(i, 1 + i / 20)).collect();
    {
        let log = GroupLog::open(g, open(dir.path()), Retention::SnapshotOnly).unwrap();
        let mut store = LogStore::new(log.clone());
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        store.blocking_append(entries[..30].to_vec()).await.unwrap();
        store.blocking_append(entries[30..].to_vec()).await.unwrap();
        store.save_committed(Some(entries[45].log_id)).await.unwrap();
        // Truncate a tail and rewrite it (a follower resolving a conflict).
        store.truncate_after(Some(entries[39].log_id)).await.unwrap();
        store.blocking_append(entries[40..].to_vec()).await.unwrap();
        drop(store);
        log.wait_flusher_stopped().await;
    }
    let storage = open(dir.path());
    // Record i of stream 2g is entry i, encoded; the chain is plain storage chaining of those bytes.
    let recs = storage.read_records(g.log_stream(), Offset::ZERO, usize::MAX).unwrap();
    assert_eq!(recs.len(), 50);
    let mut prev = ChainHash::ZERO;
    for (r, e) in recs.iter().zip(&entries) {
        assert_eq!(r.offset.get(), e.log_id.index);
        assert_eq!(r.payload, encode_entry(e));
        prev = chain_hash(r.offset, &prev, &encode_entry(e));
        assert_eq!(r.hash, prev);
    }
    let log = GroupLog::open(g, storage, Retention::SnapshotOnly).unwrap();
    let mut store = LogStore::new(log.clone());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(entries[49].log_id));
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(store.read_committed().await.unwrap(), Some(entries[45].log_id));
    let mut reader = store.get_log_reader().await;
    assert_eq!(reader.read_vote().await.unwrap(), Some(Vote::new_committed(3, 1)));
    assert_eq!(reader.try_get_log_entries(10..20).await.unwrap(), entries[10..20].to_vec());

    // Purge records only the purge point; with KeepAll nothing is removed and app reads still work.
    log.set_retention(Retention::KeepAll);
    store.purge(entries[24].log_id).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, Some(entries[24].log_id));
    assert_eq!(reader.try_get_log_entries(0..30).await.unwrap(), entries[25..30].to_vec());
    assert_eq!(log.log_start().unwrap(), 0);
    let app = log.read_for_app(0, 50, usize::MAX).unwrap();
    assert_eq!(app.len(), 50);
    assert_eq!(app[3].payload().as_deref(), Some(&b"record 3"[..]));
}

/// Appends made one after another without waiting for their flush (as openraft pipelines them) are
/// each reported flushed only after a sync covered them, in append order: everything reported
/// survives a power cut. A failed sync is reported as an error, never as flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_are_reported_flushed_in_order_only_once_durable() {
    use openraft::storage::IOFlushed;
    use openraft::type_config::TypeConfigExt;
    use shale_raft::TypeConfig;
    use shale_storage::testing::FaultyFileSystem;

    let fs = FaultyFileSystem::new();
    let open_faulty = |fs: &FaultyFileSystem| -> Arc<dyn StorageBackend> {
        let storage = Storage::open_with_fs("/data", shale_storage::StorageOptions::default(), Arc::new(fs.clone()));
        Arc::new(storage.expect("open storage"))
    };
    let g = GroupId(11);
    let entries: Vec<Entry> = (0..40).map(|i| entry(i, 1)).collect();
    {
        let log = GroupLog::open(g, open_faulty(&fs), Retention::SnapshotOnly).unwrap();
        let mut store = LogStore::new(log.clone());
        let mut flushed = Vec::new();
        for chunk in entries.chunks(10) {
            let (tx, rx) = TypeConfig::oneshot();
            store.append(chunk.to_vec(), IOFlushed::signal(tx)).await.expect("append");
            flushed.push(rx);
        }
        // Awaiting the last report: every earlier one was made before it (append order).
        let last = flushed.pop().expect("four appends");
        last.await.expect("reported").expect("flushed");
        for (i, mut rx) in flushed.into_iter().enumerate() {
            let reported = rx.try_recv().unwrap_or_else(|e| panic!("append {i} not reported before a later one: {e}"));
            reported.expect("flushed");
        }
        // A sync that fails is reported as an error.
        fs.fail_next_fsync();
        let (tx, rx) = TypeConfig::oneshot();
        store.append(vec![entry(40, 1)], IOFlushed::signal(tx)).await.expect("written");
        assert!(rx.await.expect("reported").is_err(), "a failed sync is not reported flushed");
        drop(store);
        log.wait_flusher_stopped().await;
    }
    // A power cut keeps every entry reported flushed.
    fs.crash();
    let storage = open_faulty(&fs);
    let recs = storage.read_records(g.log_stream(), Offset::ZERO, usize::MAX).unwrap();
    assert!(recs.len() >= entries.len(), "{} of {} flushed entries survived", recs.len(), entries.len());
    for (r, e) in recs.iter().zip(&entries) {
        assert_eq!(r.payload, encode_entry(e));
    }
}

/// openraft applies committed entries it reads back through `try_get_log_entries`, which must
/// return every entry of the range the log holds. A read that starts below the in-memory tail reads
/// storage up to where the tail began, then takes the rest from the tail; appends meanwhile evict
/// the tail's front (a full cache drops its oldest entry per append). The full suite once caught
/// the tail moved past that point between the two steps: the read ended short and openraft's state
/// machine worker applied 22 of the 25 entries it was asked to (its debug assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_spanning_storage_and_the_in_memory_tail_returns_every_entry_while_appends_evict_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let g = GroupId(13);
    let log = GroupLog::open(g, open(dir.path()), Retention::SnapshotOnly).unwrap();
    let big = |i: u64| Entry {
        log_id: log_id(1, 1, i),
        payload: EntryPayload::Normal(AppPayload::new(Bytes::from(vec![(i % 251) as u8; 2_000]))),
    };
    // A tail of about four entries: every append evicts its oldest one.
    log.set_cache_bytes(4 * 2_100);
    let mut store = LogStore::new(log.clone());
    store.blocking_append((0..16).map(big).collect::<Vec<_>>()).await.unwrap();
    const TOTAL: u64 = 6_000;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, done) = (log.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let next = log.next_index().unwrap();
                // From a few entries below the tail's start to the end the log held when asked.
                let start = next - 12;
                let got = log.read_entries(start, next, true).unwrap();
                let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
                assert_eq!(indexes, (start..next).collect::<Vec<_>>(), "read [{start}, {next}) after {reads} reads");
                reads += 1;
            }
            reads
        })
    };
    for i in 16..TOTAL {
        store.blocking_append(vec![big(i)]).await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.expect("every read returned the whole range");
    assert!(reads > 0);
}
