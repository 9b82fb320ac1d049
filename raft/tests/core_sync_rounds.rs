//! The node-wide flush round (`shale_raft::sync_rounds`): many groups' unsynced appends are made
//! durable by one `sync_streams` per round instead of one `sync` per group; a failed fsync reaches
//! the callbacks of the group whose stream it was, and only those; one group's shutdown waits for
//! its own pending flushes while other groups keep flushing.
//!
//! The storage is wrapped in [`Gated`], which counts the sync calls the Raft layer makes and can
//! hold a round inside `sync_streams` until the test lets it go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use shale_raft::types::{AppPayload, Entry, EntryPayload, log_id};
use shale_raft::{GroupId, GroupLog, LogStore, Retention, SyncRounds, TypeConfig};
use shale_storage::scrub::{RepairOutcome, ScrubReport, SegmentInfo};
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{
    ChainHash, ChainVerification, Checkpoint, CheckpointPolicy, CompactionConfig, CompactionResult, Offset, Record,
    Result, Storage, StorageBackend, StorageOptions, StreamId,
};

/// A disk storage (on the fault-injecting file system) that counts `sync` and `sync_streams`
/// calls and holds `sync_streams` while its gate is closed.
#[derive(Debug)]
struct Gated {
    inner: Storage,
    /// `sync` calls (one fsync of one stream each).
    syncs: AtomicU64,
    /// The streams of each `sync_streams` call, in call order.
    rounds: Mutex<Vec<Vec<StreamId>>>,
    /// `sync_streams` calls that started (held at the gate or not).
    entered: AtomicU64,
    /// Open: `sync_streams` proceeds.
    gate: (Mutex<bool>, Condvar),
}

impl Gated {
    fn new(fs: &FaultyFileSystem) -> Arc<Self> {
        let options = StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() };
        let inner = Storage::open_with_fs("/data", options, Arc::new(fs.clone())).expect("open storage");
        Arc::new(Self {
            inner,
            syncs: AtomicU64::new(0),
            rounds: Mutex::new(Vec::new()),
            entered: AtomicU64::new(0),
            gate: (Mutex::new(true), Condvar::new()),
        })
    }

    fn set_gate(&self, open: bool) {
        *self.gate.0.lock().unwrap() = open;
        self.gate.1.notify_all();
    }

    fn round_sizes(&self) -> Vec<usize> {
        self.rounds.lock().unwrap().iter().map(Vec::len).collect()
    }

    /// Waits until `n` `sync_streams` calls have started.
    async fn entered(&self, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.entered.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("a sync round started");
    }
}

impl StorageBackend for Gated {
    fn append_batch_hashed(&self, s: StreamId, e: Vec<Bytes>, at: Offset, fsync: bool) -> Result<Vec<ChainHash>> {
        self.inner.append_batch_hashed(s, e, at, fsync)
    }
    fn read_range(&self, s: StreamId, from: Offset, end: Offset, max: usize) -> Result<Vec<Record>> {
        self.inner.read_range(s, from, end, max)
    }
    fn verify_chain(&self, s: StreamId) -> Result<ChainVerification> {
        self.inner.verify_chain(s)
    }
    fn verify_range(&self, s: StreamId, from: Offset, to: Offset) -> Result<ChainVerification> {
        self.inner.verify_range(s, from, to)
    }
    fn chain_hash_at(&self, s: StreamId, o: Offset) -> Result<ChainHash> {
        self.inner.chain_hash_at(s, o)
    }
    fn latest_chain_hash(&self, s: StreamId) -> Result<ChainHash> {
        self.inner.latest_chain_hash(s)
    }
    fn next_offset(&self, s: StreamId) -> Result<Offset> {
        self.inner.next_offset(s)
    }
    fn log_start(&self, s: StreamId) -> Result<Offset> {
        self.inner.log_start(s)
    }
    fn streams(&self) -> Vec<StreamId> {
        self.inner.streams()
    }
    fn truncate_from(&self, s: StreamId, o: Offset) -> Result<()> {
        self.inner.truncate_from(s, o)
    }
    fn create_checkpoint(&self, s: StreamId) -> Result<Checkpoint> {
        self.inner.create_checkpoint(s)
    }
    fn create_checkpoint_at(&self, s: StreamId, o: Offset, d: Bytes) -> Result<Checkpoint> {
        self.inner.create_checkpoint_at(s, o, d)
    }
    fn latest_checkpoint(&self, s: StreamId) -> Result<Option<Checkpoint>> {
        self.inner.latest_checkpoint(s)
    }
    fn checkpoint_at_or_below(&self, s: StreamId, o: Offset) -> Result<Option<Checkpoint>> {
        self.inner.checkpoint_at_or_below(s, o)
    }
    fn install_checkpoint(&self, s: StreamId, cp: Checkpoint) -> Result<()> {
        self.inner.install_checkpoint(s, cp)
    }
    fn compaction_target(&self, s: StreamId, c: &CompactionConfig) -> Result<Offset> {
        self.inner.compaction_target(s, c)
    }
    fn compact(&self, s: StreamId, c: &CompactionConfig) -> Result<CompactionResult> {
        self.inner.compact(s, c)
    }
    fn sync(&self, s: StreamId) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync(s)
    }
    fn sync_streams(&self, streams: &[StreamId]) -> Vec<Result<()>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.0.lock().unwrap();
        while !*open {
            open = self.gate.1.wait(open).unwrap();
        }
        drop(open);
        self.rounds.lock().unwrap().push(streams.to_vec());
        self.inner.sync_streams(streams)
    }
    fn delete_stream(&self, s: StreamId) -> Result<()> {
        self.inner.delete_stream(s)
    }
    fn reopen_stream(&self, s: StreamId) -> Result<bool> {
        self.inner.reopen_stream(s)
    }
    fn stream_failure(&self, s: StreamId) -> Option<String> {
        self.inner.stream_failure(s)
    }
    fn stream_bytes(&self, s: StreamId) -> Result<u64> {
        self.inner.stream_bytes(s)
    }
    fn segments(&self, s: StreamId) -> Result<Vec<SegmentInfo>> {
        self.inner.segments(s)
    }
    fn scrub_segment(&self, s: StreamId, base: Offset) -> Result<ScrubReport> {
        self.inner.scrub_segment(s, base)
    }
    fn repair_range(&self, s: StreamId, from: Offset, records: Vec<Record>) -> Result<RepairOutcome> {
        self.inner.repair_range(s, from, records)
    }
}

const GROUPS: u64 = 40;

fn entry(i: u64) -> Entry {
    Entry {
        log_id: log_id(1, 1, i),
        payload: EntryPayload::Normal(AppPayload::new(Bytes::from(format!("record {i}")))),
    }
}

/// One log store per group, all on `storage`.
fn stores(storage: &Arc<dyn StorageBackend>) -> Vec<(Arc<GroupLog>, LogStore)> {
    (1..=GROUPS)
        .map(|g| {
            let log = GroupLog::open(GroupId(g), storage.clone(), Retention::SnapshotOnly).expect("open group log");
            let store = LogStore::new(log.clone());
            (log, store)
        })
        .collect()
}

type Report = openraft::type_config::alias::OneshotReceiverOf<TypeConfig, std::result::Result<(), std::io::Error>>;

/// Appends `count` entries from `first` to `store`; the receiver gets its flush report.
async fn append(store: &mut LogStore, first: u64, count: u64) -> Report {
    let (tx, rx) = TypeConfig::oneshot();
    let entries = (first..first + count).map(entry).collect::<Vec<_>>();
    store.append(entries, IOFlushed::signal(tx)).await.expect("written");
    rx
}

async fn report(rx: Report) -> std::result::Result<(), std::io::Error> {
    tokio::time::timeout(Duration::from_secs(10), rx).await.expect("reported in time").expect("a report")
}

/// Storage over a faulty file system with a gate on `sync_streams`, and [`GROUPS`] log stores on
/// it; group 0 appends `count` entries and its flush is held inside round 1, so whatever the
/// others hand over next waits for round 2. Answers group 0's report with the rest.
async fn hold_round_one(
    count: u64,
) -> (FaultyFileSystem, Arc<Gated>, Arc<dyn StorageBackend>, Vec<(Arc<GroupLog>, LogStore)>, Report) {
    let fs = FaultyFileSystem::new();
    let gated = Gated::new(&fs);
    let storage: Arc<dyn StorageBackend> = gated.clone();
    let mut stores = stores(&storage);
    gated.set_gate(false);
    let first = append(&mut stores[0].1, 0, count).await;
    gated.entered(1).await;
    (fs, gated, storage, stores, first)
}

/// Group 0's flush is held in round 1 while every other group appends: their flushes all wait
/// for, and share, round 2: one `sync_streams` for the other `GROUPS - 1` groups, no `sync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_groups_share_one_sync_round() {
    let (fs, gated, storage, mut stores, first) = hold_round_one(3).await;
    let mut reports = Vec::new();
    for (_, store) in stores.iter_mut().skip(1) {
        reports.push(append(store, 0, 3).await);
    }
    gated.set_gate(true);
    report(first).await.expect("flushed");
    for rx in reports {
        report(rx).await.expect("flushed");
    }
    assert_eq!(gated.syncs.load(Ordering::SeqCst), 0, "no per-group sync");
    assert_eq!(gated.round_sizes(), vec![1, GROUPS as usize - 1], "one round for the first group, one for the rest");
    let stats = SyncRounds::for_storage(&storage).stats();
    assert_eq!((stats.rounds, stats.streams, stats.max_streams, stats.ops), (2, GROUPS, GROUPS - 1, GROUPS));

    // What the rounds reported flushed survives a power cut.
    fs.crash();
    let after = Storage::open_with_fs("/data", StorageOptions::default(), Arc::new(fs.clone())).expect("reopen");
    for (log, _) in &stores {
        assert_eq!(after.next_offset(log.stream()).unwrap(), Offset::new(3), "group {}", log.group());
    }
}

/// One fsync of a shared round fails: the group whose stream it was gets the error on its
/// callback, and its stream refuses writes; every other group of the round is reported flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_reaches_only_its_groups_callbacks() {
    let (fs, gated, storage, mut stores, first) = hold_round_one(2).await;
    let mut reports = Vec::new();
    for (_, store) in stores.iter_mut().skip(1) {
        // Two appends per group: both reports of a group must carry its stream's result.
        let a = append(store, 0, 1).await;
        let b = append(store, 1, 1).await;
        reports.push((a, b));
    }
    // Round 1 is one fsync (group 0's); the 20th fsync of round 2 fails.
    fs.fail_fsync_after(1 + 19);
    gated.set_gate(true);
    report(first).await.expect("round 1 flushed");
    let mut failed = Vec::new();
    for ((log, _), (a, b)) in stores.iter().skip(1).zip(reports) {
        let (a, b) = (report(a).await, report(b).await);
        assert_eq!(a.is_ok(), b.is_ok(), "group {}: both appends share the stream's sync", log.group());
        let stream_failed = storage.stream_failure(log.stream()).is_some();
        assert_eq!(a.is_err(), stream_failed, "group {}: error reported iff its stream failed", log.group());
        if let Err(e) = a {
            assert!(e.to_string().contains("fsync"), "the fsync's error: {e}");
            failed.push(log.group());
        }
    }
    assert_eq!(failed.len(), 1, "one fsync failed, one group told: {failed:?}");
    assert_eq!(gated.round_sizes(), vec![1, GROUPS as usize - 1]);
}

/// A group shut down while its flush waits in a round: its `wait_flusher_stopped` returns only
/// once that flush completed (reported, and nothing holds its log), while the other groups'
/// flushes of the same round complete too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_groups_shutdown_waits_for_its_flushes_while_others_flush() {
    let (_fs, gated, _storage, mut stores, first) = hold_round_one(1).await;
    let mut reports = Vec::new();
    for (_, store) in stores.iter_mut().skip(1) {
        reports.push(append(store, 0, 1).await);
    }
    // Group 5 stops: openraft drops its log store, then the group waits for its flusher.
    let (log5, store5) = stores.remove(5);
    drop(store5);
    let waiting = tokio::spawn({
        let log5 = log5.clone();
        async move { log5.wait_flusher_stopped().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "group 5's flush is still pending in a held round");
    gated.set_gate(true);
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("stopped in time").expect("no panic");
    assert_eq!(Arc::strong_count(&log5), 1, "no flush holds group 5's log once it stopped");
    report(first).await.expect("flushed");
    for (i, rx) in reports.into_iter().enumerate() {
        let r = report(rx).await;
        assert!(r.is_ok(), "group {} (index {}): {r:?}", i + 2, i + 1);
    }
    // The other groups keep flushing after group 5 left.
    let (_, store) = &mut stores[3];
    let again = append(store, 1, 1).await;
    report(again).await.expect("flushed after another group stopped");
}
