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
//!
//! On a shared machine the wall-clock figures swing with other load. The yardstick is re-measured
//! around every compared row, and per-CPU-second columns are printed, but the storage paths stream
//! through memory and the page cache while SHA-256 of one 1 KiB buffer stays in L1, so contention
//! still hurts them more. To measure on a busy Linux box, run it in its own scheduler autogroup at
//! top priority (root):
//!
//! ```text
//! setsid sh -c 'echo -20 > /proc/self/autogroup; exec nice -n -20 target/release/storage-bench --dir /some/ext4/dir'
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shale_storage::{
    AppendPipeline, CheckpointPolicy, Offset, Storage, StorageBackend, StorageError, StorageOptions, StreamId,
};

#[path = "../../tests/common/noise.rs"]
mod noise;

use noise::noise;

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
            append_bytes: 128 << 20,
            time_cap: Duration::from_millis(800),
            group_commit_time: Duration::from_millis(800),
            read_bytes: 96 << 20,
            open_bytes: 64 << 20,
            sha_time: Duration::from_millis(500),
        }
    }
}

struct Args {
    quick: bool,
    dir: Option<PathBuf>,
    /// Sections to run; empty runs all.
    only: Vec<String>,
    /// Also time an open after dropping the page cache (Linux, root; affects the whole machine).
    cold_open: bool,
}

const SECTIONS: [&str; 4] = ["append", "group", "read", "open"];

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { quick: false, dir: None, only: Vec::new(), cold_open: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--dir" => args.dir = Some(PathBuf::from(it.next().ok_or("--dir needs a path")?)),
            "--cold-open" => args.cold_open = true,
            "--only" => {
                let section = it.next().ok_or("--only needs a section")?;
                if !SECTIONS.contains(&section.as_str()) {
                    return Err(format!("unknown section {section:?}: one of {SECTIONS:?}"));
                }
                args.only.push(section);
            }
            "-h" | "--help" => {
                return Err("usage: storage-bench [--quick] [--dir PATH] [--only SECTION]... [--cold-open]\n  \
                     --quick         small volumes and short runs (seconds, for a smoke test)\n  \
                     --dir PATH      where to put the data (default: $SHALE_BENCH_DIR, else the temp dir);\n                  \
                     use a real disk, not tmpfs, or the fsync figures mean nothing\n  \
                     --only SECTION  run only append, group, read or open (repeatable; for profiling)\n  \
                     --cold-open     also time an open after dropping the page cache (Linux, root;\n                  \
                     evicts the cache of everything on the machine)"
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

/// The 1/5/15-minute load averages: other work on the machine skews every figure.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux; 10 ms ticks).
fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    const TICKS_PER_S: u64 = 100; // USER_HZ on every Linux architecture we run on
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_S))
}

/// Wall-clock and process CPU time of one measured run. On a shared machine the wall time
/// depends on what else runs; bytes per CPU-second of a single-threaded path does not.
#[derive(Debug, Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Stopwatch {
    start: Instant,
    cpu: Option<Duration>,
}

impl Stopwatch {
    fn start() -> Self {
        Self { start: Instant::now(), cpu: process_cpu_time() }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn stop(&self) -> Timing {
        let wall = self.start.elapsed();
        let cpu = match (self.cpu, process_cpu_time()) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        };
        Timing { wall, cpu }
    }
}

/// Single-core SHA-256 over 1 KiB buffers, one digest per buffer (as the chain hashes one record):
/// (MB per wall-clock second, MB per CPU-second if known).
fn sha256_yardstick(time: Duration) -> (f64, Option<f64>) {
    let buf = noise(1, 1024);
    let mut bytes = 0u64;
    let mut sink = 0u8;
    let watch = Stopwatch::start();
    while watch.elapsed() < time {
        for _ in 0..1024 {
            let d = Sha256::digest(&buf);
            sink ^= d[0];
            bytes += buf.len() as u64;
        }
    }
    let t = watch.stop();
    std::hint::black_box(sink);
    (mb_per_s(bytes, t.wall), t.cpu.map(|c| mb_per_s(bytes, c)))
}

fn options() -> StorageOptions {
    StorageOptions { checkpoint_policy: CheckpointPolicy::Manual, ..StorageOptions::default() }
}

/// What one append figure appends: `record_bytes` records in batches of `batch` (with `fsync`
/// or not), until `max_bytes` of payload or `cap`.
#[derive(Debug, Clone, Copy)]
struct Load {
    record_bytes: usize,
    batch: usize,
    fsync: bool,
    max_bytes: u64,
    cap: Duration,
}

/// Appends `load` to `stream`, one `append_batch` call per batch, or with `pipelined` through
/// [`AppendPipeline`] (batch k+1 is encoded and hashed on this thread while batch k is written,
/// and fsynced, on a helper thread). Returns the records appended and how long it took.
fn append_run(storage: &Storage, stream: StreamId, load: Load, pipelined: bool) -> Result<(u64, Timing), StorageError> {
    let Load { record_bytes, batch, fsync, max_bytes, cap } = load;
    let events: Vec<Bytes> = (0..batch as u64).map(|i| noise(i + 7, record_bytes)).collect();
    let first = storage.next_offset(stream)?;
    let watch = Stopwatch::start();
    let mut fed = 0u64;
    let mut batches = std::iter::from_fn(|| {
        (fed * (record_bytes as u64) < max_bytes && watch.elapsed() < cap).then(|| {
            fed += batch as u64;
            events.clone()
        })
    });
    let next = if pipelined {
        AppendPipeline::new(storage, stream, fsync).run(first, batches)?
    } else {
        batches.try_fold(first, |next, events| storage.append_batch(stream, events, next, fsync))?
    };
    Ok((next.get() - first.get(), watch.stop()))
}

/// `appenders` threads append single 1 KiB records (with `fsync`) to one stream for `time`, each
/// with `append_batch` at the next offset read just before, retried on `OffsetMismatch` when
/// another appender got there first. Returns records/s and the mean number of calls per record
/// appended.
fn group_commit_run(
    storage: &Arc<Storage>,
    stream: StreamId,
    appenders: usize,
    fsync: bool,
    time: Duration,
) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let attempts = AtomicU64::new(0);
    let barrier = Barrier::new(appenders + 1);
    let elapsed = std::thread::scope(|scope| {
        for t in 0..appenders {
            let (storage, stop, appended, attempts, barrier) = (storage, &stop, &appended, &attempts, &barrier);
            scope.spawn(move || {
                let event = noise(t as u64, 1024);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let next = storage.next_offset(stream).expect("next_offset");
                    match storage.append_batch(stream, vec![event.clone()], next, fsync) {
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
    let appended = appended.load(Ordering::Relaxed);
    (appended as f64 / elapsed.as_secs_f64(), attempts.load(Ordering::Relaxed) as f64 / appended.max(1) as f64)
}

/// The device's own rate: 1 KiB positional writes, each followed by `fdatasync`. With
/// `preallocated`, into a file written and synced beforehand (so each flush carries data only,
/// no block allocation or size change: what the storage's preallocated segment tail gives);
/// else appended to a growing file (each flush also commits the new size to the journal).
fn raw_fsync_rate(dir: &Path, time: Duration, preallocated: bool) -> std::io::Result<f64> {
    use std::os::unix::fs::FileExt;
    const FILE_BYTES: u64 = 8 << 20;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raw-fsync");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    if preallocated {
        file.write_all_at(&vec![0u8; FILE_BYTES as usize], 0)?;
    }
    file.sync_all()?;
    let buf = noise(3, 1024);
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < time {
        let at = if preallocated { (n * 1024) % FILE_BYTES } else { n * 1024 };
        file.write_all_at(&buf, at)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// The file system's own buffered write rate: `max_bytes` (or `cap` worth) of 100 KiB positional
/// writes into a fresh file, no fsync, as the appends do. Returns bytes written and the time.
fn raw_write_run(dir: &Path, max_bytes: u64, cap: Duration) -> std::io::Result<(u64, Timing)> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("raw-write");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
    let buf = noise(5, 100 * 1024);
    let mut at = 0u64;
    let watch = Stopwatch::start();
    while at < max_bytes && watch.elapsed() < cap {
        file.write_all_at(&buf, at)?;
        at += buf.len() as u64;
    }
    let t = watch.stop();
    std::fs::remove_file(&path)?;
    Ok((at, t))
}

/// Writes `bytes` of 1 KiB records to `stream` (batches of 1000, no fsync, then one sync).
fn fill(storage: &Storage, stream: StreamId, bytes: u64) -> Result<u64, StorageError> {
    let events: Vec<Bytes> = (0..1000u64).map(|i| noise(i + 99, 1024)).collect();
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

/// A figure's size relative to SHA-256: by wall clock (against the yardstick measured around it)
/// and per CPU-second of this process (against SHA-256 per CPU-second).
#[derive(Debug, Clone, Copy)]
struct Share {
    wall_pct: f64,
    cpu_pct: Option<f64>,
}

impl Share {
    /// The share a target is judged on: throughput, so wall clock. (Per CPU-second tells how much
    /// of the work is hashing; a pipelined path can beat 100% by wall clock, never per CPU-second.)
    fn verdict_pct(&self) -> f64 {
        self.wall_pct
    }

    fn describe(&self) -> String {
        match self.cpu_pct {
            Some(c) => format!("{:.0}% by wall clock ({c:.0}% per CPU-second)", self.wall_pct),
            None => format!("{:.0}% by wall clock", self.wall_pct),
        }
    }
}

/// The table being built, the yardsticks figures are compared with, and the verdicts.
///
/// The machine may be shared, so the wall-clock yardstick is measured again right before
/// ([`Report::fresh_yardstick`]) and right after every figure compared with it, and the row is
/// compared with the mean of the two (shown in the row).
struct Report {
    sha_wall: f64,
    /// The best SHA-256 MB per CPU-second seen (so shares per CPU-second err on the low side).
    sha_cpu: Option<f64>,
    yardstick_time: Duration,
    table: String,
    targets: Vec<Target>,
}

impl Report {
    /// Measures SHA-256 again; the next rows compare with this value.
    fn fresh_yardstick(&mut self) {
        let (wall, cpu) = sha256_yardstick(self.yardstick_time);
        self.sha_wall = wall;
        if let Some(c) = cpu {
            self.sha_cpu = Some(self.sha_cpu.map_or(c, |old| old.max(c)));
        }
    }

    fn header(&mut self) {
        self.line(&format!(
            "{:<56} {:>11} {:>8} {:>6} {:>8} {:>9} {:>6}",
            "figure", "records/s", "MB/s", "% SHA", "SHA MB/s", "MB/CPU-s", "% SHA"
        ));
        self.line(&format!("{:<56} {:>11} {:>8} {:>6} {:>8} {:>9} {:>6}", "", "", "", "(wall)", "(wall)", "", "(CPU)"));
    }

    /// A figure compared with SHA-256: `records` of `bytes` payload in total, taking `t`.
    fn compared_row(&mut self, name: &str, records: u64, bytes: u64, t: Timing) -> Share {
        let before = self.sha_wall;
        self.fresh_yardstick();
        self.sha_wall = (before + self.sha_wall) / 2.0;
        let wall = mb_per_s(bytes, t.wall);
        let per_cpu = t.cpu.filter(|c| *c >= Duration::from_millis(50)).map(|c| mb_per_s(bytes, c));
        let share = Share {
            wall_pct: 100.0 * wall / self.sha_wall,
            cpu_pct: per_cpu.zip(self.sha_cpu).map(|(m, sha)| 100.0 * m / sha),
        };
        let cpu_cols = match (per_cpu, share.cpu_pct) {
            (Some(m), Some(p)) => format!("{m:>9.1} {:>6}", format!("{p:.0}%")),
            _ => format!("{:>9} {:>6}", "-", "-"),
        };
        let _ = writeln!(
            self.table,
            "{name:<56} {:>11.0} {wall:>8.1} {:>6} {:>8.0} {cpu_cols}",
            records as f64 / t.wall.as_secs_f64(),
            format!("{:.0}%", share.wall_pct),
            self.sha_wall
        );
        share
    }

    /// A figure not compared with SHA-256 (fsync-bound, or a count).
    fn plain_row(&mut self, name: &str, records_per_s: f64, mb_per_s: f64) {
        let _ = writeln!(
            self.table,
            "{name:<56} {records_per_s:>11.0} {mb_per_s:>8.1} {:>6} {:>8} {:>9} {:>6}",
            "-", "-", "-", "-"
        );
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.table, "{text}");
    }

    fn target(&mut self, what: &'static str, passed: bool, detail: String) {
        self.targets.push(Target { what, passed, detail });
    }
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
    println!(
        "storage-bench ({} mode), data in {} ({}), {} CPUs, load average at start: {}",
        if args.quick { "quick" } else { "full" },
        dir.display(),
        fs_type(&base),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    let (sha, sha_cpu) = sha256_yardstick(plan.sha_time);
    let mut report =
        Report { sha_wall: sha, sha_cpu, yardstick_time: plan.sha_time / 4, table: String::new(), targets: Vec::new() };
    report.line(&format!(
        "SHA-256 yardstick (1 KiB buffers, one core): {sha:.0} MB/s wall clock, {} MB per CPU-second",
        sha_cpu.map_or("unknown".into(), |c| format!("{c:.0}"))
    ));
    report.line("MB = 10^6 B of payload. % SHA (wall): against the mean of the yardstick re-measured just");
    report.line("before and after the row (SHA MB/s); the targets are judged on it. % SHA (CPU): MB per");
    report.line("CPU-second of this process (user + system) against the best SHA-256 MB per CPU-second seen:");
    report.line("steady under other load; it shows how much of the CPU work is hashing.");
    report.line("");
    report.header();

    let storage = Arc::new(Storage::open_with(dir.join("data"), options())?);
    let mut streams = (1u64..).map(StreamId::new);
    if args.runs("append") {
        append_section(&storage, &plan, &dir, &mut streams, &mut report)?;
        report.line("");
    }
    if args.runs("group") {
        group_section(&storage, &plan, &dir, &mut streams, &mut report)?;
        report.line("");
    }
    if args.runs("read") {
        read_section(&storage, &plan, &mut streams, &mut report)?;
        report.line("");
    }
    drop(storage);
    if args.runs("open") {
        open_section(&dir.join("open"), &plan, args.cold_open, &mut report)?;
        report.line("");
    }

    report.line(&format!("load average at end: {}", load_average()));
    for t in &report.targets {
        let _ = writeln!(report.table, "{} {:<48} {}", if t.passed { "PASS" } else { "MISS" }, t.what, t.detail);
    }
    print!("{}", report.table);
    Ok(())
}

fn on_off(fsync: bool) -> &'static str {
    if fsync { "on" } else { "off" }
}

/// `append_batch` and [`AppendPipeline`] for 100 B and 1 KiB records, batches of 1/100/1000,
/// fsync off and on.
fn append_section(
    storage: &Storage,
    plan: &Plan,
    dir: &Path,
    streams: &mut impl Iterator<Item = StreamId>,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    // What the file system alone does with the same volume: the floor under every append figure.
    report.fresh_yardstick();
    let (bytes, t) = raw_write_run(dir, plan.append_bytes, plan.time_cap)?;
    report.compared_row("raw page-cache write, 100 KiB pwrites (no storage)", bytes / 1024, bytes, t);
    let mut best_1k: Option<(Share, String)> = None;
    // Every 64 MiB (the default segment size) an append seals the full segment with an fsync, so
    // the figures below include the disk's write bandwidth. The same appends with segments larger
    // than the run show the append path itself: no fsync at all, as the target says. They run
    // first, on a fresh page cache (after gigabytes of appends the kernel's writeback of earlier
    // figures competes for the two cores), and each is the median of three runs.
    let unsealed_dir = dir.join("one-segment");
    let unsealed = Storage::open_with(
        &unsealed_dir,
        StorageOptions { max_segment_bytes: (plan.append_bytes * 2).max(1 << 30), ..options() },
    )?;
    for batch in [100usize, 1000] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let stream = streams.next().expect("endless");
            report.fresh_yardstick();
            let before = report.sha_wall;
            let load =
                Load { record_bytes: 1024, batch, fsync: false, max_bytes: plan.append_bytes, cap: plan.time_cap };
            let (records, t) = append_run(&unsealed, stream, load, false)?;
            unsealed.delete_stream(stream)?;
            runs.push((mb_per_s(records * 1024, t.wall), records, t, before));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, records, t, yardstick) = runs[1];
        report.sha_wall = yardstick;
        let name = format!("append 1024 B, batch {batch}, fsync off, no seal, median");
        let share = report.compared_row(&name, records, records * 1024, t);
        if best_1k.as_ref().is_none_or(|(b, _)| share.verdict_pct() > b.verdict_pct()) {
            best_1k = Some((share, name));
        }
    }
    drop(unsealed);
    std::fs::remove_dir_all(&unsealed_dir)?;
    report.line("  (\"no seal\": segments larger than the run, so no segment is sealed with an fsync; median of 3)");
    for pipelined in [false, true] {
        for record_bytes in [100usize, 1024] {
            for fsync in [false, true] {
                let batches: &[usize] = if pipelined { &[100, 1000] } else { &[1, 100, 1000] };
                for &batch in batches {
                    let stream = streams.next().expect("endless");
                    let max_bytes = if fsync { plan.append_bytes / 4 } else { plan.append_bytes };
                    if !fsync {
                        report.fresh_yardstick();
                    }
                    let load = Load { record_bytes, batch, fsync, max_bytes, cap: plan.time_cap };
                    let (records, t) = append_run(storage, stream, load, pipelined)?;
                    let name = format!(
                        "{} {record_bytes} B, batch {batch}, fsync {}",
                        if pipelined { "pipelined" } else { "append" },
                        on_off(fsync)
                    );
                    let bytes = records * record_bytes as u64;
                    if fsync {
                        report.plain_row(&name, records as f64 / t.wall.as_secs_f64(), mb_per_s(bytes, t.wall));
                    } else {
                        let share = report.compared_row(&name, records, bytes, t);
                        if record_bytes == 1024
                            && best_1k.as_ref().is_none_or(|(b, _)| share.verdict_pct() > b.verdict_pct())
                        {
                            best_1k = Some((share, name));
                        }
                    }
                    storage.delete_stream(stream)?;
                }
            }
        }
    }
    if let Some((share, name)) = best_1k {
        report.target(
            "append 1 KiB, no fsync >= 75% of SHA-256",
            share.verdict_pct() >= 75.0,
            format!("{} ({name})", share.describe()),
        );
    }
    Ok(())
}

/// Concurrent single-record fsync appenders on one stream (racing conditional `append_batch`
/// calls, whose fsyncs group commit shares), next to the device's raw fsync rate.
fn group_section(
    storage: &Arc<Storage>,
    plan: &Plan,
    dir: &Path,
    streams: &mut impl Iterator<Item = StreamId>,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let raw = raw_fsync_rate(dir, plan.group_commit_time, true)?;
    report.plain_row("raw 1 KiB pwrite + fdatasync (device yardstick)", raw, raw * 1024.0 / 1e6);
    let growing = raw_fsync_rate(dir, plan.group_commit_time, false)?;
    report.plain_row("raw 1 KiB pwrite + fdatasync, file growing", growing, growing * 1024.0 / 1e6);
    let mut rates = Vec::new();
    for appenders in [1usize, 8, 64] {
        let stream = streams.next().expect("endless");
        let (rps, calls) = group_commit_run(storage, stream, appenders, true, plan.group_commit_time);
        let label = format!("group commit 1 KiB fsync, {appenders} appenders ({calls:.2} calls/rec)");
        report.plain_row(&label, rps, rps * 1024.0 / 1e6);
        storage.verify_chain(stream)?;
        storage.delete_stream(stream)?;
        rates.push(rps);
    }
    let (one, many) = (rates[0], rates[2]);
    let ratio = many / one.max(f64::MIN_POSITIVE);
    // The same 64 threads without fsync: how fast appending and waking threads alone can go on
    // this machine, the ceiling of the fsync row above.
    let stream = streams.next().expect("endless");
    let (ceiling, _) = group_commit_run(storage, stream, 64, false, plan.group_commit_time);
    report.plain_row("append_batch without fsync, 64 appenders (ceiling)", ceiling, ceiling * 1024.0 / 1e6);
    storage.verify_chain(stream)?;
    storage.delete_stream(stream)?;
    report.target(
        "group commit: 64 appenders >= 20x one appender",
        ratio >= 20.0,
        format!(
            "{many:.0} vs {one:.0} records/s = {ratio:.1}x (device: {raw:.0} fsyncs/s, so 20x needs {:.0} records/s; \
             64 threads without fsync: {ceiling:.0})",
            20.0 * one
        ),
    );
    Ok(())
}

/// Verified sequential reads in 1 MiB chunks, and a full `verify_chain`, of a stream of 1 KiB
/// records just written (so in the page cache).
fn read_section(
    storage: &Storage,
    plan: &Plan,
    streams: &mut impl Iterator<Item = StreamId>,
    report: &mut Report,
) -> Result<(), StorageError> {
    let stream = streams.next().expect("endless");
    let records = fill(storage, stream, plan.read_bytes)?;
    report.fresh_yardstick();
    let watch = Stopwatch::start();
    let mut at = Offset::ZERO;
    let mut bytes = 0u64;
    loop {
        let recs = storage.read_records(stream, at, 1 << 20)?;
        let Some(last) = recs.last() else { break };
        at = last.offset.plus(1);
        bytes += recs.iter().map(|r| r.payload.len() as u64).sum::<u64>();
    }
    let t = watch.stop();
    assert_eq!(at.get(), records, "the read saw every record");
    let share = report.compared_row("verified sequential read 1 KiB, 1 MiB chunks (cached)", records, bytes, t);
    report.target(
        "verified sequential read >= 75% of SHA-256",
        share.verdict_pct() >= 75.0,
        format!("{:.0} MB/s; {}", mb_per_s(bytes, t.wall), share.describe()),
    );
    let watch = Stopwatch::start();
    let verified = storage.verify_chain(stream)?;
    let t = watch.stop();
    report.compared_row("verify_chain 1 KiB", verified.records, bytes, t);
    storage.delete_stream(stream)
}

/// Drops the page cache (Linux, root). Returns whether it worked.
fn drop_page_cache() -> bool {
    // `sync` first: only clean pages can be dropped.
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// Writes a stream of `plan.open_bytes`, closes it, and times `Storage::open` (warm, and cold if asked).
fn open_section(dir: &Path, plan: &Plan, cold: bool, report: &mut Report) -> Result<(), StorageError> {
    let stream = StreamId::new(1);
    let records = {
        let s = Storage::open_with(dir, options())?;
        fill(&s, stream, plan.open_bytes)?
    };
    let mib = plan.open_bytes >> 20;
    let mut time_open = |label: &str| -> Result<Duration, StorageError> {
        let start = Instant::now();
        let s = Storage::open_with(dir, options())?;
        let open = start.elapsed();
        assert_eq!(s.next_offset(stream)?.get(), records, "the reopened stream has every record");
        report.line(&format!(
            "{:<60} {:>12.1} ms",
            format!("Storage::open, {mib} MiB stream, clean shutdown, {label}"),
            open.as_secs_f64() * 1e3
        ));
        Ok(open)
    };
    let mut worst = time_open("warm cache")?;
    if cold {
        if drop_page_cache() {
            worst = worst.max(time_open("cold cache")?);
        } else {
            report.line("(--cold-open: could not drop the page cache; needs Linux and root)");
        }
    }
    let scaled = worst.as_secs_f64() * (1u64 << 30) as f64 / plan.open_bytes as f64;
    report.target(
        "open of a 1 GiB stream well under 1 s (< 0.5 s)",
        scaled < 0.5,
        if plan.open_bytes == 1 << 30 {
            format!("{:.1} ms", worst.as_secs_f64() * 1e3)
        } else {
            format!("{:.1} ms for {mib} MiB, ~{:.0} ms scaled to 1 GiB", worst.as_secs_f64() * 1e3, scaled * 1e3)
        },
    );
    Ok(())
}

/// Removes the benchmark's data directory when the run ends (or fails).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
