//! `shale bench produce|consume`: load generators in the manner of kafka-producer-perf-test;
//! `shale bench partitions` (`partitions.rs`): the many-partition figures of issue 15.

pub mod partitions;
pub mod stats;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use shale_client::{ClientError, ConsumerConfig, ErrorCode, NewTopic, OffsetReset, ProducerConfig, ProducerRecord};

use crate::cli::{BenchCommand, BenchConsumeArgs, BenchProduceArgs};
use crate::commands::partition_bounds;
use crate::commands::topic::{effective_replication_factor, is_code};
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use stats::{LatencyRecorder, LatencySummary, scheduled_at, task_indices, throughput};

/// The final report of a benchmark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// `produce` or `consume`.
    pub kind: String,
    /// Topic.
    pub topic: String,
    /// Records sent and acknowledged (produce) or read (consume).
    pub records: u64,
    /// Records that failed.
    pub errors: u64,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// Records per second.
    pub records_per_sec: f64,
    /// MB per second (MB = 2^20 bytes).
    pub mb_per_sec: f64,
    /// What the latency measures: `ack` (send to acknowledgement) or `fetch` (one poll round trip).
    pub latency_kind: String,
    /// Latency percentiles.
    pub latency: LatencySummary,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Consume: whether every entry read had its chain hash recomputed and checked (absent for
    /// produce).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_verified: Option<bool>,
}

/// The human report.
pub fn report_text(r: &BenchReport) -> String {
    let mut out = format!(
        "{} records {} ({} errors), {:.1} records/s, {:.2} MB/s over {:.2} s\n\n",
        r.records,
        if r.kind == "produce" { "sent" } else { "read" },
        r.errors,
        r.records_per_sec,
        r.mb_per_sec,
        r.elapsed_s
    );
    let mut t = Table::new([format!("{} latency", r.latency_kind).as_str(), "ms"]);
    let l = &r.latency;
    for (name, v) in [
        ("mean", l.mean_ms),
        ("p50", l.p50_ms),
        ("p95", l.p95_ms),
        ("p99", l.p99_ms),
        ("p99.9", l.p999_ms),
        ("max", l.max_ms),
    ] {
        t.row([name.to_string(), format!("{v:.3}")]);
    }
    out.push_str(&t.render());
    match r.chain_verified {
        Some(true) => out.push_str("\nchain: every entry read was hashed and checked against the chain\n"),
        Some(false) => out.push_str("\nchain: not checked (--no-verify)\n"),
        None => {}
    }
    if let Some(e) = &r.first_error {
        out.push_str(&format!("\nfirst error: {e}\n"));
    }
    out
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let template = format!("{what} {{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs a `bench` command.
pub async fn run(ctx: &Ctx, command: BenchCommand) -> Result<()> {
    let (report, format) = match command {
        BenchCommand::Produce(a) => (produce(ctx, &a).await?, a.output),
        BenchCommand::Consume(a) => (consume(ctx, &a).await?, a.output),
        BenchCommand::Partitions(a) => {
            let report = partitions::run(&a).await?;
            return output::emit(a.output, &report, partitions::report_text);
        }
    };
    output::emit(format, &report, report_text)?;
    if report.errors > 0 {
        return Err(CliError::CheckFailed(format!("{} of the benchmark's records failed", report.errors)));
    }
    Ok(())
}

async fn ensure_topic(ctx: &Ctx, topic: &str, partitions: u32) -> Result<()> {
    let client = ctx.client()?;
    let admin = client.admin();
    match admin.describe_topic(topic).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, ErrorCode::UnknownTopic) => {
            let status = admin.cluster_status().await.map_err(|e| ctx.err("read cluster members", e))?;
            let rf = effective_replication_factor(None, status.members.len());
            match admin.create_topic(NewTopic::new(topic, partitions, rf)).await {
                Ok(_) => {
                    eprintln!("created topic {topic} ({partitions} partitions, replication factor {rf})");
                    Ok(())
                }
                Err(e) if is_code(&e, ErrorCode::TopicExists) => Ok(()),
                Err(e) => Err(ctx.err(format!("create topic {topic}"), e)),
            }
        }
        Err(e) => Err(ctx.err(format!("describe topic {topic}"), e)),
    }
}

/// How long `bench produce` waits for every partition of its topic to have a leader.
const LEADERS_WAIT: Duration = Duration::from_secs(30);

/// Waits (at most `limit`) until every partition of `topic` has a leader, so that the clock of a
/// produce bench starts once the topic can take writes: a new topic's partition groups elect
/// their leaders after `create_topic` returns, and records sent meanwhile wait for them (as a
/// JetStream stream's leader is chosen inside its creation, before peers' benches start theirs).
async fn wait_for_leaders(ctx: &Ctx, topic: &str, limit: Duration) -> Result<()> {
    let client = ctx.client()?;
    let admin = client.admin();
    let started = Instant::now();
    loop {
        let info = admin.describe_topic(topic).await.map_err(|e| ctx.err(format!("describe topic {topic}"), e))?;
        let leaderless: Vec<u32> = info.partitions.iter().filter(|p| p.leader_id == 0).map(|p| p.partition).collect();
        if leaderless.is_empty() {
            if started.elapsed() >= Duration::from_millis(100) {
                eprintln!("every partition of {topic} has a leader after {:.1} s", started.elapsed().as_secs_f64());
            }
            return Ok(());
        }
        if started.elapsed() >= limit {
            return Err(CliError::CheckFailed(format!(
                "topic {topic}: partitions {leaderless:?} have no leader after {} s",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one sender task measured.
#[derive(Default)]
struct SenderResult {
    latency: LatencyRecorder,
    acked: u64,
    errors: u64,
    first_error: Option<ClientError>,
}

/// One record in flight: resolves, once it is acknowledged or failed, to its latency and outcome.
type Delivering =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Duration, std::result::Result<(), ClientError>)> + Send>>;

/// A sender's collector: awaits every record the sender hands over until the sender is done and
/// none is left, counting each as it settles.
async fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivering>, pb: ProgressBar) -> SenderResult {
    let mut r = SenderResult::default();
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            Some((latency, result)) = inflight.next(), if !inflight.is_empty() => {
                match result {
                    Ok(()) => {
                        r.latency.record(latency);
                        r.acked += 1;
                    }
                    Err(e) => {
                        r.errors += 1;
                        r.first_error.get_or_insert(e);
                    }
                }
                pb.inc(1);
            }
            next = rx.recv(), if open => match next {
                Some(d) => inflight.push(d),
                None => open = false,
            },
        }
    }
    r
}

async fn produce(ctx: &Ctx, a: &BenchProduceArgs) -> Result<BenchReport> {
    ensure_topic(ctx, &a.topic, a.create_partitions).await?;
    wait_for_leaders(ctx, &a.topic, LEADERS_WAIT).await?;
    let client = ctx.client()?;
    let mut config = ProducerConfig::default();
    if let Some(bytes) = a.batch_max_bytes {
        config.batch_max_bytes = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
    }
    if let Some(ms) = a.linger_ms {
        config.linger_ms = ms;
    }
    if let Some(n) = a.max_in_flight {
        config.max_in_flight = n as usize;
    }
    if let Some(n) = a.keyless_run_batches {
        config.keyless_run_batches = n as usize;
    }
    let producer = Arc::new(client.producer(config));
    let payload = Bytes::from((0..a.record_size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    let pb = progress_bar(a.records, "produce");
    let start = Instant::now();
    let tasks = u64::from(a.concurrency);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let producer = producer.clone();
        let payload = payload.clone();
        let topic = a.topic.clone();
        let pb = pb.clone();
        let (total, rate, window) = (a.records, a.throughput, a.window as usize);
        handles.push(tokio::spawn(async move {
            // The records in flight are awaited by one collector task per sender, which takes each
            // record's time as its acknowledgement arrives (it is woken by it), not when this loop
            // next looks at its window; a permit per record in flight bounds the window. (A task
            // per record did the same at the cost of a spawn, a join handle and a wake-up each:
            // about a fifth of the bench's own CPU, on the cores the nodes under test share.)
            let permits = Arc::new(tokio::sync::Semaphore::new(window.max(1)));
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Delivering>();
            let collector = tokio::spawn(collect(rx, pb));
            for i in task_indices(task, tasks, total) {
                if let Some(at) = scheduled_at(start, i, rate) {
                    tokio::time::sleep_until(at.into()).await;
                }
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
                let sent_at = Instant::now();
                let delivering: Delivering =
                    match producer.send(ProducerRecord::new(topic.clone(), payload.clone())).await {
                        Ok(delivery) => Box::pin(async move {
                            let result = delivery.await;
                            let latency = sent_at.elapsed();
                            drop(permit);
                            (latency, result.map(|_| ()))
                        }),
                        Err(e) => Box::pin(std::future::ready((sent_at.elapsed(), Err(e)))),
                    };
                if tx.send(delivering).is_err() {
                    break;
                }
            }
            drop(tx);
            collector.await.unwrap_or_else(|e| SenderResult {
                errors: 1,
                first_error: Some(ClientError::Protocol(format!("delivery collector failed: {e}"))),
                ..SenderResult::default()
            })
        }));
    }
    let mut latency = LatencyRecorder::new();
    let (mut acked, mut errors, mut first_error) = (0u64, 0u64, None);
    for h in handles {
        match h.await {
            Ok(r) => {
                latency.merge(&r.latency);
                acked += r.acked;
                errors += r.errors;
                if first_error.is_none() {
                    first_error = r.first_error.map(|e| e.to_string());
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("sender task failed: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    if let Ok(p) = Arc::try_unwrap(producer) {
        let _ = p.close().await;
    }
    let bytes = acked * a.record_size;
    let (records_per_sec, mb_per_sec) = throughput(acked, bytes, elapsed);
    Ok(BenchReport {
        kind: "produce".into(),
        topic: a.topic.clone(),
        records: acked,
        errors,
        bytes,
        elapsed_s: elapsed.as_secs_f64(),
        records_per_sec,
        mb_per_sec,
        latency_kind: "ack".into(),
        latency: latency.summary(),
        first_error,
        chain_verified: None,
    })
}

async fn consume(ctx: &Ctx, a: &BenchConsumeArgs) -> Result<BenchReport> {
    let client = ctx.client()?;
    let partitions =
        client.partition_count(&a.topic).await.map_err(|e| ctx.err(format!("read topic {}", a.topic), e))?;
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (_, end) = partition_bounds(&client, &a.topic, p)
            .await
            .map_err(|e| ctx.err(format!("read the bounds of {}/{p}", a.topic), e))?;
        ends.insert(p, end);
    }
    let config = ConsumerConfig {
        group: None,
        max_bytes: u32::try_from(a.fetch_bytes).unwrap_or(u32::MAX),
        max_wait_ms: 100,
        offset_reset: OffsetReset::Earliest,
        verify_chain: !a.no_verify,
        ..ConsumerConfig::default()
    };
    let mut consumer = client.consumer(config);
    consumer.assign(&a.topic, 0..partitions);
    let pb = progress_bar(a.records, "consume");
    let mut latency = LatencyRecorder::new();
    let (mut records, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while records < a.records {
        let done = ends.iter().all(|(p, end)| consumer.position(&a.topic, *p).is_some_and(|pos| pos >= *end));
        if done {
            break;
        }
        let t0 = Instant::now();
        let batch = consumer.poll().await.map_err(|e| ctx.err(format!("consume {}", a.topic), e))?;
        latency.record(t0.elapsed());
        for r in batch.iter().take((a.records - records) as usize) {
            records += 1;
            bytes += (r.value.len() + r.key.as_ref().map_or(0, Bytes::len)) as u64;
        }
        pb.set_position(records);
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    if records < a.records {
        eprintln!("the topic held {records} records, fewer than the {} asked for", a.records);
    }
    let (records_per_sec, mb_per_sec) = throughput(records, bytes, elapsed);
    Ok(BenchReport {
        kind: "consume".into(),
        topic: a.topic.clone(),
        records,
        errors: 0,
        bytes,
        elapsed_s: elapsed.max(Duration::from_nanos(1)).as_secs_f64(),
        records_per_sec,
        mb_per_sec,
        latency_kind: "fetch".into(),
        latency: latency.summary(),
        first_error: None,
        chain_verified: Some(!a.no_verify),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_collector_settles_every_record_handed_over_including_those_still_in_flight_at_the_end() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Delivering>();
        let collector = tokio::spawn(collect(rx, ProgressBar::hidden()));
        let (late_tx, late_rx) = tokio::sync::oneshot::channel::<()>();
        tx.send(Box::pin(std::future::ready((Duration::from_millis(1), Ok(()))))).unwrap();
        tx.send(Box::pin(std::future::ready((Duration::from_millis(2), Err(ClientError::Protocol("refused".into()))))))
            .unwrap();
        tx.send(Box::pin(async move {
            let _ = late_rx.await;
            (Duration::from_millis(3), Ok(()))
        }))
        .unwrap();
        drop(tx); // the sender is done while one record is still in flight
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!collector.is_finished(), "the collector ended before its last record settled");
        late_tx.send(()).unwrap();
        let r = collector.await.unwrap();
        assert_eq!((r.acked, r.errors, r.latency.count()), (2, 1, 2));
        assert!(matches!(r.first_error, Some(ClientError::Protocol(m)) if m == "refused"));
    }

    #[test]
    fn the_report_lists_every_percentile() {
        let mut l = LatencyRecorder::new();
        l.record(Duration::from_millis(2));
        let r = BenchReport {
            kind: "produce".into(),
            topic: "b".into(),
            records: 10,
            errors: 0,
            bytes: 5120,
            elapsed_s: 1.0,
            records_per_sec: 10.0,
            mb_per_sec: 0.005,
            latency_kind: "ack".into(),
            latency: l.summary(),
            first_error: None,
            chain_verified: None,
        };
        let text = report_text(&r);
        assert!(!text.contains("chain:"), "produce says nothing of the chain");
        for name in ["p50", "p95", "p99", "p99.9", "max", "10.0 records/s"] {
            assert!(text.contains(name), "{name} missing in {text}");
        }
        let json: serde_json::Value = serde_json::from_str(&output::to_json(&r).unwrap()).unwrap();
        assert_eq!(json["records"], 10);
        assert!(json["latency"]["p999_ms"].as_f64().unwrap() > 1.9);
        assert!(json.get("chain_verified").is_none());
        let consume = BenchReport { kind: "consume".into(), chain_verified: Some(true), ..r.clone() };
        assert!(report_text(&consume).contains("chain: every entry read was hashed and checked"));
        let json: serde_json::Value = serde_json::from_str(&output::to_json(&consume).unwrap()).unwrap();
        assert_eq!(json["chain_verified"], true);
        let unchecked = BenchReport { chain_verified: Some(false), ..consume };
        assert!(report_text(&unchecked).contains("chain: not checked (--no-verify)"));
    }
}
