//! `storage-bench`: throughput and latency figures of the disk [`Storage`], next to a SHA-256
//! yardstick measured in the same run.
//!
//! ```text
//! cargo run --release -p shale-storage --bin storage-bench -- [--quick] [--dir PATH]
//! ```
//!
//! Every record is hashed once on append and once on a verified read, so single-core SHA-256
//! throughput (over 1 KiB buffers) bounds both paths; the targets are stated as a share of it.
//! Figures, not tests: nothing here fails a build. `MB` is 10^6 bytes of payload.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shale_storage::{CheckpointPolicy, Offset, Storage, StorageError, StorageOptions, StreamId};

/// What one run measures, and how much.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Payload bytes written by one no-fsync append figure (or less if `time_cap` hits first).
    append_bytes: u64,
    /// Longest time one append figure may take.
    time_cap: Duration,
    /// How long each group-commit figure runs.
    group_commit_time: Duration,
    /// Payload bytes of the stream read back for the verified-read figure.
    read_bytes: u64,
    /// Payload bytes of the stream whose open is timed.
    open_bytes: u64,
    /// How long the SHA-256 yardstick runs.
    sha_time: Duration,
}

impl Plan {
    fn full() -> Self {
        Self {
            append_bytes: 512 << 20,
            time_cap: Duration::from_secs(4),
            group_commit_time: Duration::from_secs(3),
            read_bytes: 512 << 20,
            open_bytes: 1 << 30,
            sha_time: Duration::from_secs(2),
        }
    }

    fn quick() -> Self {
        Self {
            append_bytes: 48 << 20,
            time_cap: Duration::from_millis(800),
            group_commit_time: Duration::from_millis(800),
            read_bytes: 48 << 20,
            open_bytes: 64 << 20,
            sha_time: Duration::from_millis(500),
        }
    }
}

struct Args {
    quick: bool,
    dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { quick: false, dir: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--dir" => args.dir = Some(PathBuf::from(it.next().ok_or("--dir needs a path")?)),
            "-h" | "--help" => {
                return Err("usage: storage-bench [--quick] [--dir PATH]\n  \
                     --quick     small volumes and short runs (seconds, for a smoke test)\n  \
                     --dir PATH  where to put the data (default: $SHALE_BENCH_DIR, else the temp dir);\n              \
                     use a real disk, not tmpfs, or the fsync figures mean nothing"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// The file-system type the path lives on, from /proc/mounts (longest matching mount point).
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(mnt), Some(kind)) = (f.next(), f.next(), f.next()) else { continue };
        if path.starts_with(mnt) && best.as_ref().is_none_or(|(len, _)| mnt.len() > *len) {
            best = Some((mnt.len(), kind.to_string()));
        }
    }
    best.map_or_else(|| "unknown".into(), |(_, k)| k)
}

/// A payload of `len` pseudo-random bytes (incompressible, though the codec is `None` anyway).
fn payload(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Single-core SHA-256 over 1 KiB buffers, one digest per buffer (as the chain hashes one record).
fn sha256_yardstick(time: Duration) -> f64 {
    let buf = payload(1, 1024);
    let mut bytes = 0u64;
    let mut sink = 0u8;
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..1024 {
            let d = Sha256::digest(&buf);
            sink ^= d[0];
            bytes += buf.len() as u64;
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(sink);
    mb_per_s(bytes, elapsed)
}

fn options() -> StorageOptions {
    StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..StorageOptions::default() }
}

/// Appends `record_bytes` records in batches of `batch` until `max_bytes` of payload or `cap`.
/// Returns (records, elapsed).
fn append_run(
    storage: &Storage,
    stream: StreamId,
    record_bytes: usize,
    batch: usize,
    fsync: bool,
    max_bytes: u64,
    cap: Duration,
) -> Result<(u64, Duration), StorageError> {
    let events: Vec<Bytes> = (0..batch as u64).map(|i| payload(i + 7, record_bytes)).collect();
    let mut next = storage.next_offset(stream)?;
    let mut records = 0u64;
    let start = Instant::now();
    while records * (record_bytes as u64) < max_bytes && start.elapsed() < cap {
        next = storage.append_batch(stream, events.clone(), next, fsync)?;
        records += batch as u64;
    }
    Ok((records, start.elapsed()))
}

/// `appenders` threads append single 1 KiB records with fsync to one stream for `time`,
/// each retrying on `OffsetMismatch` when another got there first. Returns records/s.
fn group_commit_run(storage: &Arc<Storage>, stream: StreamId, appenders: usize, time: Duration) -> f64 {
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let barrier = Barrier::new(appenders + 1);
    let elapsed = std::thread::scope(|scope| {
        for t in 0..appenders {
            let (storage, stop, appended, barrier) = (storage, &stop, &appended, &barrier);
            scope.spawn(move || {
                let event = payload(t as u64, 1024);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let next = storage.next_offset(stream).expect("next_offset");
                    match storage.append_batch(stream, vec![event.clone()], next, true) {
                        Ok(_) => {
                            appended.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(StorageError::OffsetMismatch { .. }) => {}
                        Err(e) => panic!("group-commit appender {t}: {e}"),
                    }
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(time);
        stop.store(true, Ordering::Relaxed);
        start.elapsed()
    });
    appended.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

/// Writes `bytes` of 1 KiB records to `stream` (batches of 1000, no fsync, then one sync).
fn fill(storage: &Storage, stream: StreamId, bytes: u64) -> Result<u64, StorageError> {
    let events: Vec<Bytes> = (0..1000u64).map(|i| payload(i + 99, 1024)).collect();
    let mut next = storage.next_offset(stream)?;
    while next.get() * 1024 < bytes {
        next = storage.append_batch(stream, events.clone(), next, false)?;
    }
    storage.sync(stream)?;
    Ok(next.get())
}

struct Target {
    what: &'static str,
    passed: bool,
    detail: String,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("storage-bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let plan = if args.quick { Plan::quick() } else { Plan::full() };
    let base = args
        .dir
        .clone()
        .or_else(|| std::env::var_os("SHALE_BENCH_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let dir = base.join(format!("storage-bench-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(dir.clone());
    let mut out = String::new();
    writeln!(
        out,
        "storage-bench ({} mode), data in {} ({}), {} CPUs",
        if args.quick { "quick" } else { "full" },
        dir.display(),
        fs_type(&base),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    println!("{out}");

    let sha = sha256_yardstick(plan.sha_time);
    let mut table = String::new();
    writeln!(table, "SHA-256 yardstick (1 KiB buffers, one core): {sha:.0} MB/s")?;
    writeln!(table)?;
    writeln!(table, "{:<44} {:>12} {:>10} {:>9}", "figure", "records/s", "MB/s", "% SHA")?;
    let row = |table: &mut String, name: &str, rps: f64, mbps: f64, pct: bool| {
        let p = if pct { format!("{:.0}%", 100.0 * mbps / sha) } else { "-".into() };
        let _ = writeln!(table, "{name:<44} {rps:>12.0} {mbps:>10.1} {p:>9}");
    };
    let mut targets = Vec::new();

    let storage = Arc::new(Storage::open_with(dir.join("append"), options())?);
    let mut stream_no = 0u64;
    let mut append_1k_best = 0.0f64;
    let mut fsync_single = 0.0f64;
    for record_bytes in [100usize, 1024] {
        for fsync in [false, true] {
            for batch in [1usize, 100, 1000] {
                stream_no += 1;
                let stream = StreamId::new(stream_no);
                let max_bytes = if fsync { plan.append_bytes / 4 } else { plan.append_bytes };
                let (records, elapsed) =
                    append_run(&storage, stream, record_bytes, batch, fsync, max_bytes, plan.time_cap)?;
                let rps = records as f64 / elapsed.as_secs_f64();
                let mbps = mb_per_s(records * record_bytes as u64, elapsed);
                let name =
                    format!("append {} B, batch {batch}, fsync {}", record_bytes, if fsync { "on" } else { "off" });
                row(&mut table, &name, rps, mbps, !fsync);
                if record_bytes == 1024 && !fsync {
                    append_1k_best = append_1k_best.max(mbps);
                }
                if record_bytes == 1024 && fsync && batch == 1 {
                    fsync_single = rps;
                }
                storage.delete_stream(stream)?;
            }
        }
    }
    targets.push(Target {
        what: "append 1 KiB, no fsync >= 75% of SHA-256",
        passed: append_1k_best >= 0.75 * sha,
        detail: format!("{append_1k_best:.0} MB/s = {:.0}% (best batch size)", 100.0 * append_1k_best / sha),
    });

    writeln!(table)?;
    let mut group = Vec::new();
    for appenders in [1usize, 8, 64] {
        stream_no += 1;
        let stream = StreamId::new(stream_no);
        let rps = group_commit_run(&storage, stream, appenders, plan.group_commit_time);
        row(&mut table, &format!("group commit 1 KiB fsync, {appenders} appenders"), rps, rps * 1024.0 / 1e6, false);
        storage.verify_chain(stream)?;
        storage.delete_stream(stream)?;
        group.push(rps);
    }
    let ratio = group[2] / group[0].max(f64::MIN_POSITIVE);
    targets.push(Target {
        what: "group commit: 64 appenders >= 20x one appender",
        passed: ratio >= 20.0,
        detail: format!(
            "{:.0} vs {:.0} records/s = {ratio:.1}x (append batch 1 fsync on: {fsync_single:.0}/s)",
            group[2], group[0]
        ),
    });

    writeln!(table)?;
    stream_no += 1;
    let stream = StreamId::new(stream_no);
    let records = fill(&storage, stream, plan.read_bytes)?;
    let start = Instant::now();
    let mut at = Offset::ZERO;
    let mut bytes = 0u64;
    loop {
        let recs = storage.read_records(stream, at, 1 << 20)?;
        let Some(last) = recs.last() else { break };
        at = last.offset.plus(1);
        bytes += recs.iter().map(|r| r.payload.len() as u64).sum::<u64>();
    }
    let elapsed = start.elapsed();
    assert_eq!(at.get(), records, "the read saw every record");
    let read = mb_per_s(bytes, elapsed);
    row(&mut table, "verified sequential read 1 KiB (page cache)", records as f64 / elapsed.as_secs_f64(), read, true);
    targets.push(Target {
        what: "verified sequential read >= 75% of SHA-256",
        passed: read >= 0.75 * sha,
        detail: format!("{read:.0} MB/s = {:.0}%", 100.0 * read / sha),
    });
    let start = Instant::now();
    let verified = storage.verify_chain(stream)?;
    let verify = mb_per_s(bytes, start.elapsed());
    row(&mut table, "verify_chain 1 KiB", verified.records as f64 / start.elapsed().as_secs_f64(), verify, true);
    storage.delete_stream(stream)?;
    drop(storage);

    let open_dir = dir.join("open");
    let records = {
        let s = Storage::open_with(&open_dir, options())?;
        fill(&s, StreamId::new(1), plan.open_bytes)?
    };
    let start = Instant::now();
    let s = Storage::open_with(&open_dir, options())?;
    let open = start.elapsed();
    assert_eq!(s.next_offset(StreamId::new(1))?.get(), records, "the reopened stream has every record");
    let open_mib = plan.open_bytes >> 20;
    writeln!(table, "{:<44} {:>12} {:>10}", format!("open a {open_mib} MiB stream (clean shutdown)"), "", "")?;
    writeln!(table, "{:<44} {:>12.1} ms", "  time to Storage::open", open.as_secs_f64() * 1e3)?;
    let scaled = open.as_secs_f64() * (1u64 << 30) as f64 / plan.open_bytes as f64;
    targets.push(Target {
        what: "open of a 1 GiB stream well under 1 s",
        passed: scaled < 0.5,
        detail: if plan.open_bytes == 1 << 30 {
            format!("{:.1} ms", open.as_secs_f64() * 1e3)
        } else {
            format!("{:.1} ms for {open_mib} MiB, ~{:.0} ms scaled to 1 GiB", open.as_secs_f64() * 1e3, scaled * 1e3)
        },
    });
    drop(s);

    writeln!(table)?;
    for t in &targets {
        writeln!(table, "{} {:<48} {}", if t.passed { "PASS" } else { "MISS" }, t.what, t.detail)?;
    }
    print!("{table}");
    Ok(())
}

/// Removes the benchmark's data directory when the run ends (or fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
