//! Criterion benchmarks of the storage hot paths, with the SHA-256 yardstick that bounds them.
//!
//! `cargo bench -p shale-storage --bench storage`. The disk figures use a temp dir under
//! `$SHALE_BENCH_DIR` (default: the system temp dir); point it at a real disk, not tmpfs.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use shale_storage::{CheckpointPolicy, MemoryStorage, Offset, Storage, StorageBackend, StorageOptions, StreamId};

#[path = "../tests/common/noise.rs"]
mod noise;

use noise::noise;

const RECORD_BYTES: usize = 1024;

fn options() -> StorageOptions {
    StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..StorageOptions::default() }
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("SHALE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn sha256_yardstick(c: &mut Criterion) {
    let buf = noise(1, RECORD_BYTES);
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(RECORD_BYTES as u64));
    g.bench_function("1KiB", |b| b.iter(|| Sha256::digest(black_box(&buf))));
    g.finish();
}

/// Appends batches of `batch` 1 KiB records without fsync; a fresh stream every 64 MiB or so keeps
/// the disk use bounded.
fn append_to<B: StorageBackend>(c: &mut Criterion, name: &str, storage: &B) {
    let mut g = c.benchmark_group(format!("append/{name}"));
    for batch in [1usize, 100, 1000] {
        let events: Vec<Bytes> = (0..batch as u64).map(|i| noise(i, RECORD_BYTES)).collect();
        g.throughput(Throughput::Bytes((batch * RECORD_BYTES) as u64));
        let mut stream = 0u64;
        let mut next = Offset::ZERO;
        g.bench_with_input(BenchmarkId::new("1KiB_batch", batch), &events, |b, events| {
            b.iter(|| {
                if next.get() >= 64 * 1024 {
                    storage.delete_stream(StreamId::new(stream)).expect("delete");
                    stream += 1;
                    next = Offset::ZERO;
                }
                next = storage.append_batch(StreamId::new(stream), events.clone(), next, false).expect("append");
            });
        });
        storage.delete_stream(StreamId::new(stream)).expect("delete");
    }
    g.finish();
}

/// Verified reads of 1 MiB chunks from a 64 MiB stream.
fn read_from<B: StorageBackend>(c: &mut Criterion, name: &str, storage: &B) {
    let stream = StreamId::new(1_000_000);
    let events: Vec<Bytes> = (0..1000u64).map(|i| noise(i, RECORD_BYTES)).collect();
    let mut next = Offset::ZERO;
    while next.get() < 64 * 1024 {
        next = storage.append_batch(stream, events.clone(), next, false).expect("fill");
    }
    storage.sync(stream).expect("sync");
    let end = next;
    let mut g = c.benchmark_group(format!("read/{name}"));
    let chunk = storage.read_records(stream, Offset::ZERO, 1 << 20).expect("read");
    g.throughput(Throughput::Bytes(chunk.iter().map(|r| r.payload.len() as u64).sum()));
    let mut at = Offset::ZERO;
    g.bench_function("verified_1MiB_chunk", |b| {
        b.iter(|| {
            let recs = storage.read_records(stream, at, 1 << 20).expect("read");
            at = recs.last().map_or(Offset::ZERO, |r| r.offset.plus(1));
            if at.get() + chunk.len() as u64 > end.get() {
                at = Offset::ZERO;
            }
            black_box(recs)
        });
    });
    g.finish();
    storage.delete_stream(stream).expect("delete");
}

fn memory(c: &mut Criterion) {
    let storage = MemoryStorage::with_options(options()).expect("options");
    append_to(c, "memory", &storage);
    read_from(c, "memory", &storage);
}

fn disk(c: &mut Criterion) {
    let dir = bench_dir();
    let storage = Storage::open_with(dir.path(), options()).expect("open");
    append_to(c, "disk", &storage);
    read_from(c, "disk", &storage);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sha256_yardstick, memory, disk
}
criterion_main!(benches);
