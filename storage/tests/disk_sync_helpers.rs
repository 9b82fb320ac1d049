//! `sync_streams` runs its fsyncs side by side on helper threads that the storage keeps from
//! round to round (starting and ending threads for every round cost more CPU than the fsyncs
//! under a node's thousands of rounds a second), and that end with the storage.
#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_storage::testing::FaultyFileSystem;
use shale_storage::{CheckpointPolicy, Offset, Storage, StorageBackend, StorageOptions, StreamId};

/// Most helper threads a storage keeps (`SYNC_THREADS` less the caller's own).
const MAX_HELPERS: usize = 15;
const STREAMS: u64 = 40;

/// The thread ids of this process's fsync helpers.
fn helper_threads() -> BTreeSet<u64> {
    std::fs::read_dir("/proc/self/task")
        .expect("list threads")
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim() == "shale-sync").then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

#[test]
fn fsync_helpers_are_kept_across_rounds_and_end_with_the_storage() {
    let fs = FaultyFileSystem::new();
    let options = StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..Default::default() };
    let storage = Storage::open_with_fs("/data", options, Arc::new(fs.clone())).expect("open");
    let ids: Vec<StreamId> = (1..=STREAMS).map(StreamId::new).collect();
    assert!(helper_threads().is_empty(), "no helper before the first round");

    let mut seen = BTreeSet::new();
    for round in 0..30u64 {
        for id in &ids {
            let record = Bytes::from(format!("stream {id} round {round}"));
            storage.append_batch(*id, vec![record], Offset::new(round), false).expect("append");
        }
        let answers = storage.sync_streams(&ids);
        assert_eq!(answers.len(), ids.len());
        assert!(answers.iter().all(Result::is_ok), "round {round}: {answers:?}");
        // A helper names itself once it runs (std sets a thread's name from the thread): on a
        // loaded machine one started by this round may not have run yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut now = helper_threads();
        while now.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            now = helper_threads();
        }
        assert!(!now.is_empty(), "round {round}: the helpers outlive the round");
        seen.extend(now);
    }
    assert!(
        seen.len() <= MAX_HELPERS,
        "30 rounds of {STREAMS} streams started {} helper threads, at most {MAX_HELPERS} are kept",
        seen.len()
    );

    // What the rounds synced is durable.
    fs.crash();
    drop(storage);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !helper_threads().is_empty() {
        assert!(Instant::now() < deadline, "helpers still running after the storage was dropped");
        std::thread::sleep(Duration::from_millis(10));
    }
    let storage = Storage::open_with_fs("/data", StorageOptions::default(), Arc::new(fs)).expect("reopen");
    for id in &ids {
        assert_eq!(storage.next_offset(*id).unwrap(), Offset::new(30), "stream {id}");
    }
}
