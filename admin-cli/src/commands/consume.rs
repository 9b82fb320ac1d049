//! `shale consume TOPIC`: print records, stop at the log end (or follow), optionally as a group.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use shale_client::{
    ChainStats, ConsumedRecord, ConsumerConfig, GroupConfig, GroupConsumer, GroupEvent, OffsetReset, OffsetSpec,
};

use crate::cli::{ConsumeArgs, OutOfRangePolicy, RecordFormat};
use crate::commands::{partition_bounds, select_partitions};
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::text_or_base64;
use crate::output::{hex, to_json_line};

/// Long-poll wait per poll when following.
const FOLLOW_WAIT_MS: u32 = 500;
/// Long-poll wait per poll when reading up to the log end (only met on a gap at the end).
const DRAIN_WAIT_MS: u32 = 100;
/// How often a following group consumer commits what it printed.
const FOLLOW_COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Without --follow, how long a group member that gets no partition waits before it stops.
const NO_ASSIGNMENT_WAIT: Duration = Duration::from_secs(5);

/// Bytes as JSON: a UTF-8 string when they are one, else base64 in a sibling field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderView {
    /// Header name.
    pub key: String,
    /// The value, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

/// One record as `--format json` prints it (one object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Key, when present and UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Key in base64, when present and not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Value, when UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Value in base64, when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    /// Headers in order.
    pub headers: Vec<HeaderView>,
    /// Chain hash (hex) of the log entry holding the record, as recomputed; absent with --no-verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_hash: Option<String>,
    /// Log index of that entry.
    pub entry_index: u64,
    /// The record's position in its batch.
    pub position: u32,
}

impl RecordView {
    /// From a consumed record.
    pub fn from_record(r: &ConsumedRecord) -> Self {
        let (key, key_base64) = match &r.key {
            Some(k) => text_or_base64(k),
            None => (None, None),
        };
        let (value, value_base64) = text_or_base64(&r.value);
        Self {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key,
            key_base64,
            value,
            value_base64,
            headers: r
                .headers
                .iter()
                .map(|h| {
                    let (value, value_base64) = text_or_base64(&h.value);
                    HeaderView { key: h.key.clone(), value, value_base64 }
                })
                .collect(),
            chain_hash: r.chain_hash.map(|h| hex(&h.0, false)),
            entry_index: r.entry_index,
            position: r.position,
        }
    }
}

/// How records are written out.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    /// Plain or JSON lines.
    pub format: RecordFormat,
    /// Plain: prefix the key.
    pub print_key: bool,
    /// Plain: prefix `partition:offset`.
    pub print_offset: bool,
}

impl Printer {
    /// Writes one record (one line; plain values are written as is).
    pub fn write(&self, out: &mut impl Write, r: &ConsumedRecord) -> Result<()> {
        match self.format {
            RecordFormat::Json => {
                let line = to_json_line(&RecordView::from_record(r))?;
                writeln!(out, "{line}").map_err(CliError::Output)
            }
            RecordFormat::Plain => {
                let mut write = || -> std::io::Result<()> {
                    if self.print_offset {
                        write!(out, "{}:{}\t", r.partition, r.offset)?;
                    }
                    if self.print_key {
                        out.write_all(r.key.as_deref().unwrap_or(b""))?;
                        out.write_all(b"\t")?;
                    }
                    out.write_all(&r.value)?;
                    out.write_all(b"\n")
                };
                write().map_err(CliError::Output)
            }
        }
    }
}

/// True once every partition's position has reached the end seen at start.
pub fn reached_ends(positions: &BTreeMap<u32, Option<u64>>, ends: &BTreeMap<u32, u64>) -> bool {
    ends.iter().all(|(p, end)| positions.get(p).copied().flatten().is_some_and(|pos| pos >= *end))
}

/// The consumer settings the flags ask for.
fn consumer_config(a: &ConsumeArgs) -> ConsumerConfig {
    // --from-beginning: the partition's start, the lowest offset ANY replica holds (the consumer
    // asks the others when one replica's log starts later), not the start of the replica asked.
    let offset_reset = if a.from_beginning { OffsetReset::Earliest } else { OffsetReset::Latest };
    ConsumerConfig {
        group: a.group.clone(),
        max_bytes: 1 << 20,
        max_wait_ms: if a.follow { FOLLOW_WAIT_MS } else { DRAIN_WAIT_MS },
        offset_reset,
        // A position no replica holds is an error unless the operator chose a reset.
        reset_out_of_range: match a.reset_out_of_range {
            OutOfRangePolicy::Error => OffsetReset::None,
            OutOfRangePolicy::Earliest => OffsetReset::Earliest,
            OutOfRangePolicy::Latest => OffsetReset::Latest,
        },
        verify_chain: !a.no_verify,
        ..ConsumerConfig::default()
    }
}

/// Runs `shale consume`.
pub async fn run(ctx: &Ctx, a: ConsumeArgs) -> Result<()> {
    if let Some(group) = a.group.clone() {
        return run_member(ctx, a, group).await;
    }
    let client = ctx.client()?;
    let topic = a.topic.clone();
    let partitions = select_partitions(&client, &topic, &a.partitions)
        .await
        .map_err(|e| ctx.err(format!("read topic {topic}"), e))?;
    let mut consumer = client.consumer(consumer_config(&a));
    consumer.assign(&topic, partitions.iter().copied());
    if let Some(offset) = a.offset {
        for &p in &partitions {
            consumer.seek(&topic, p, offset);
        }
    }
    if let Some(ts) = a.from_time {
        for &p in &partitions {
            let listed = consumer
                .list_offset(&topic, p, OffsetSpec::Timestamp(ts))
                .await
                .map_err(|e| ctx.err(format!("find the offset for time {ts} in {topic}/{p}"), e))?;
            consumer.seek(&topic, p, listed.offset.unwrap_or(listed.log_end));
        }
    }
    let mut ends = BTreeMap::new();
    if !a.follow {
        for &p in &partitions {
            let (_, end) = partition_bounds(&client, &topic, p)
                .await
                .map_err(|e| ctx.err(format!("read the bounds of {topic}/{p}"), e))?;
            ends.insert(p, end);
        }
    }
    let printer = Printer { format: a.format, print_key: a.print_key, print_offset: a.print_offset };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Poll once before looking at the ends: a start position no replica holds (`--offset` past
    // the end, or below every replica's start) must fail, not read as "already at the end".
    let mut polled = false;
    'outer: loop {
        if a.max_records.is_some_and(|max| printed >= max) {
            break;
        }
        if !a.follow && polled {
            let positions = partitions.iter().map(|&p| (p, consumer.position(&topic, p))).collect();
            if reached_ends(&positions, &ends) {
                break;
            }
        }
        let records = tokio::select! {
            r = consumer.poll() => r.map_err(|e| ctx.err(format!("consume {topic}"), e))?,
            _ = &mut ctrl_c => break 'outer,
        };
        polled = true;
        for r in &records {
            printer.write(&mut out, r)?;
            printed += 1;
            if a.max_records.is_some_and(|max| printed >= max) {
                break;
            }
        }
        out.flush().map_err(CliError::Output)?;
    }
    out.flush().map_err(CliError::Output)?;
    drop(out);
    if a.verify {
        for &p in &partitions {
            let stats = consumer.chain_stats(&topic, p).unwrap_or_default();
            eprintln!("{}", chain_report(&topic, p, &stats));
        }
    }
    if printed == 0 && !a.follow && a.offset.is_none() && a.from_time.is_none() && !a.from_beginning {
        eprintln!("no new records: consume starts at the log end; use --from-beginning, --offset N or --follow");
    }
    tracing::info!(printed, "consume done");
    Ok(())
}

/// The `--verify` line of one partition.
pub fn chain_report(topic: &str, partition: u32, stats: &ChainStats) -> String {
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let head = format!(
        "chain verified: {topic}/{partition}: {}, {}",
        count(stats.entries, "entry", "entries"),
        count(stats.records, "record", "records")
    );
    let line = match stats.point {
        Some(p) if p.next_index > 0 => {
            format!("{head}, last hash {} at index {}", hex(&p.prev_hash.0, false), p.next_index - 1)
        }
        _ => format!("{head} (nothing read)"),
    };
    match stats.reanchors {
        0 => line,
        n => format!("{line}; the chain was started again {n} time(s) where a replica no longer held the next index"),
    }
}

/// `shale consume --group G`: a member of the group; the cluster assigns its partitions (shared
/// with the group's other members). Commits, fenced, one past the last printed record of each
/// partition it holds: every few seconds with --follow, and at the end; before a partition is
/// handed to another member, the member commits its position (everything read was printed). Then
/// it leaves the group, so its partitions move at once.
async fn run_member(ctx: &Ctx, a: ConsumeArgs, group: String) -> Result<()> {
    let client = ctx.client()?;
    let topic = a.topic.clone();
    let config = GroupConfig { auto_commit_interval_ms: None, ..GroupConfig::default() };
    let mut member = client
        .consumer(consumer_config(&a))
        .join_with(&group, [topic.as_str()], config)
        .await
        .map_err(|e| ctx.err(format!("join group {group}"), e))?;
    let mut ends = BTreeMap::new();
    if !a.follow {
        let count = client.partition_count(&topic).await.map_err(|e| ctx.err(format!("read topic {topic}"), e))?;
        for p in 0..count {
            let (_, end) = partition_bounds(&client, &topic, p)
                .await
                .map_err(|e| ctx.err(format!("read the bounds of {topic}/{p}"), e))?;
            ends.insert(p, end);
        }
    }
    let printer = Printer { format: a.format, print_key: a.print_key, print_offset: a.print_offset };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut last_printed: BTreeMap<u32, u64> = BTreeMap::new();
    let mut last_commit = Instant::now();
    let started = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut polled = false;
    'outer: loop {
        if a.max_records.is_some_and(|max| printed >= max) {
            break;
        }
        let held: Vec<u32> = member.assignment().into_iter().map(|(_, p)| p).collect();
        if !a.follow && polled {
            if held.is_empty() && started.elapsed() >= NO_ASSIGNMENT_WAIT {
                eprintln!("group {group}: this member was assigned no partition of {topic}");
                break;
            }
            let positions = held.iter().map(|&p| (p, member.consumer().position(&topic, p))).collect();
            let mine = ends.iter().filter(|(p, _)| held.contains(p)).map(|(p, e)| (*p, *e)).collect();
            if !held.is_empty() && reached_ends(&positions, &mine) {
                break;
            }
        }
        let records = tokio::select! {
            r = member.poll() => r.map_err(|e| ctx.err(format!("consume {topic} in group {group}"), e))?,
            _ = &mut ctrl_c => break 'outer,
        };
        polled = true;
        for event in member.take_events() {
            match &event {
                GroupEvent::Assigned(p) => tracing::info!(?p, "assigned"),
                GroupEvent::Revoked(p) | GroupEvent::Lost(p) => {
                    tracing::info!(?event, "partitions given up");
                    for (_, partition) in p {
                        last_printed.remove(partition);
                    }
                }
            }
        }
        for r in &records {
            printer.write(&mut out, r)?;
            last_printed.insert(r.partition, r.offset);
            printed += 1;
            if a.max_records.is_some_and(|max| printed >= max) {
                break;
            }
        }
        out.flush().map_err(CliError::Output)?;
        if a.follow && last_commit.elapsed() >= FOLLOW_COMMIT_INTERVAL {
            commit(ctx, &mut member, &topic, &last_printed).await?;
            last_commit = Instant::now();
        }
    }
    out.flush().map_err(CliError::Output)?;
    drop(out);
    commit(ctx, &mut member, &topic, &last_printed).await?;
    if a.verify {
        for (t, p) in member.assignment() {
            let stats = member.consumer().chain_stats(&t, p).unwrap_or_default();
            eprintln!("{}", chain_report(&t, p, &stats));
        }
    }
    member.leave().await.map_err(|e| ctx.err(format!("leave group {group}"), e))?;
    tracing::info!(printed, "consume done");
    Ok(())
}

/// Commits, for the group, one past the last printed record of each partition the member holds.
async fn commit(ctx: &Ctx, member: &mut GroupConsumer, topic: &str, last_printed: &BTreeMap<u32, u64>) -> Result<()> {
    let held: Vec<u32> = member.assignment().into_iter().map(|(_, p)| p).collect();
    let offsets: Vec<(String, u32, u64)> =
        last_printed.iter().filter(|(p, _)| held.contains(p)).map(|(p, o)| (topic.to_string(), *p, o + 1)).collect();
    if offsets.is_empty() {
        return Ok(());
    }
    member.commit_offsets(&offsets).await.map_err(|e| ctx.err("commit the group's offsets", e))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shale_client::Header;

    use super::*;

    fn record(value: &[u8], key: Option<&[u8]>) -> ConsumedRecord {
        ConsumedRecord {
            topic: "t".into(),
            partition: 1,
            offset: 42,
            chain_hash: Some(shale_client::ChainHash([7; 32])),
            entry_index: 12,
            position: 3,
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            headers: vec![Header { key: "h".into(), value: Bytes::from_static(&[0xff, 0x00]) }],
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn print(p: Printer, r: &ConsumedRecord) -> String {
        let mut buf = Vec::new();
        p.write(&mut buf, r).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn plain_prints_the_value_with_optional_prefixes() {
        let r = record(b"hello", Some(b"k"));
        let p = Printer { format: RecordFormat::Plain, print_key: false, print_offset: false };
        assert_eq!(print(p, &r), "hello\n");
        let p = Printer { format: RecordFormat::Plain, print_key: true, print_offset: true };
        assert_eq!(print(p, &r), "1:42\tk\thello\n");
    }

    #[test]
    fn json_lines_parse_and_binary_goes_base64() {
        let r = record(&[0xff, 0xfe], None);
        let p = Printer { format: RecordFormat::Json, print_key: false, print_offset: false };
        let line = print(p, &r);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["offset"], 42);
        assert_eq!(v["value_base64"], "//4=");
        assert!(v.get("value").is_none());
        assert!(v.get("key").is_none());
        assert_eq!(v["headers"][0]["value_base64"], "/wA=");
        assert_eq!(v["chain_hash"].as_str().unwrap().len(), 64);
        assert_eq!((v["entry_index"].as_u64(), v["position"].as_u64()), (Some(12), Some(3)));
        let unverified = ConsumedRecord { chain_hash: None, ..record(b"x", None) };
        let v: serde_json::Value = serde_json::from_str(&print(p, &unverified)).unwrap();
        assert!(v.get("chain_hash").is_none(), "no hash is printed when none was computed");
        let text = RecordView::from_record(&record(b"hi", Some(b"user")));
        assert_eq!(text.value.as_deref(), Some("hi"));
        assert_eq!(text.key.as_deref(), Some("user"));
    }

    #[test]
    fn the_verify_report_names_the_partition_counts_and_last_hash() {
        let stats = ChainStats {
            entries: 12,
            records: 1,
            bytes: 900,
            point: Some(shale_client::ChainPoint::after(41, shale_client::ChainHash([0xab; 32]))),
            reanchors: 0,
        };
        assert_eq!(
            chain_report("orders", 2, &stats),
            format!("chain verified: orders/2: 12 entries, 1 record, last hash {} at index 41", "ab".repeat(32))
        );
        let one = ChainStats { entries: 1, records: 0, ..stats };
        assert!(chain_report("t", 0, &one).starts_with("chain verified: t/0: 1 entry, 0 records, last hash"));
        assert_eq!(
            chain_report("t", 0, &ChainStats::default()),
            "chain verified: t/0: 0 entries, 0 records (nothing read)"
        );
    }

    #[test]
    fn ends_are_reached_only_when_every_position_is_known_and_past() {
        let ends = BTreeMap::from([(0, 10), (1, 0)]);
        assert!(!reached_ends(&BTreeMap::from([(0, Some(10)), (1, None)]), &ends));
        assert!(!reached_ends(&BTreeMap::from([(0, Some(9)), (1, Some(0))]), &ends));
        assert!(reached_ends(&BTreeMap::from([(0, Some(12)), (1, Some(0))]), &ends));
    }
}
