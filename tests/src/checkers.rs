//! The safety properties the container tests assert, one function each, over what the workload
//! recorded ([`History`]) and what the replicas and a consumer hold ([`PartitionView`]s).
//!
//! Each returns every problem it finds (not just the first) so a failure report shows its extent.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;

use crate::cli::{OfflineVerify, OnlineVerify};
use crate::workload::{History, LogRecord, PartitionView, VerifyReport, ViewSource, parse_record_value};

/// A property that does not hold, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violation {
    /// The property.
    pub property: &'static str,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// How many problems a [`Violation`] prints.
const SHOWN_PROBLEMS: usize = 25;

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} violated ({} problems):", self.property, self.problems.len())?;
        for p in self.problems.iter().take(SHOWN_PROBLEMS) {
            writeln!(f, "  - {p}")?;
        }
        if self.problems.len() > SHOWN_PROBLEMS {
            writeln!(f, "  ... and {} more", self.problems.len() - SHOWN_PROBLEMS)?;
        }
        Ok(())
    }
}

fn verdict(property: &'static str, problems: Vec<String>) -> Result<(), Violation> {
    if problems.is_empty() { Ok(()) } else { Err(Violation { property, problems }) }
}

fn show(value: &Bytes) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn hex8(hash: &[u8]) -> String {
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn record_at(view: &PartitionView, offset: u64) -> Option<&LogRecord> {
    view.records.binary_search_by_key(&offset, |r| r.offset).ok().map(|i| &view.records[i])
}

/// **No acknowledged record is lost**: every acknowledged record is, in every view of its partition
/// (each replica and the consumer), at its acknowledged offset with its value, in the log entry
/// (index and chain hash of its batch) the acknowledgement named.
pub fn no_acknowledged_record_lost(history: &History, views: &[PartitionView]) -> Result<(), Violation> {
    let mut problems = Vec::new();
    for ack in &history.acks {
        let mut seen_in = 0;
        for view in views.iter().filter(|v| v.partition == ack.partition) {
            seen_in += 1;
            let what = format!(
                "{} (p{} s{}) acked at {}/{}",
                show(&ack.value),
                ack.producer,
                ack.seq,
                ack.partition,
                ack.offset
            );
            if ack.offset < view.log_start || ack.offset >= view.log_end {
                problems.push(format!("{what}: {} holds only [{}, {})", view.source, view.log_start, view.log_end));
                continue;
            }
            match record_at(view, ack.offset) {
                None => problems.push(format!("{what}: {} has no record at that offset", view.source)),
                Some(r) if r.value != ack.value => {
                    problems.push(format!("{what}: {} holds {} there instead", view.source, show(&r.value)))
                }
                Some(r) if r.chain_hash != ack.chain_hash => problems.push(format!(
                    "{what}: {} has chain hash {}.. there, the ack said {}..",
                    view.source,
                    hex8(&r.chain_hash),
                    hex8(&ack.chain_hash)
                )),
                Some(r) if r.entry_index != ack.entry_index => problems.push(format!(
                    "{what}: {} holds it in log entry {}, the ack said entry {}",
                    view.source, r.entry_index, ack.entry_index
                )),
                Some(_) => {}
            }
        }
        if seen_in == 0 {
            problems.push(format!(
                "{} acked in partition {}: no view of that partition was read",
                show(&ack.value),
                ack.partition
            ));
        }
    }
    verdict("no acknowledged record lost", problems)
}

/// **No duplicates**: in every source's view of the topic, every value appears at most once
/// (the workload never sends a value twice, so a second copy is a retry written twice).
pub fn no_duplicates(views: &[PartitionView]) -> Result<(), Violation> {
    let mut problems = Vec::new();
    let mut by_source: BTreeMap<ViewSource, HashMap<&Bytes, (u32, u64)>> = BTreeMap::new();
    for view in views {
        let seen = by_source.entry(view.source).or_default();
        for r in &view.records {
            if let Some((p, o)) = seen.insert(&r.value, (view.partition, r.offset)) {
                problems.push(format!(
                    "{}: {} at {}/{} and again at {}/{}",
                    view.source,
                    show(&r.value),
                    p,
                    o,
                    view.partition,
                    r.offset
                ));
            }
        }
    }
    verdict("no duplicates", problems)
}

/// **Replicas agree**: every replica of a partition ends at the same offset and holds the same
/// records (offset, value, chain hash) in the same order over the range all of them hold; and
/// every `Verify` answer lists `expected_replicas` replicas that all answered with one chain hash.
pub fn replicas_agree(
    views: &[PartitionView],
    verify: &[VerifyReport],
    expected_replicas: usize,
) -> Result<(), Violation> {
    let mut problems = Vec::new();
    let mut by_partition: BTreeMap<u32, Vec<&PartitionView>> = BTreeMap::new();
    for v in views.iter().filter(|v| matches!(v.source, ViewSource::Replica(_))) {
        by_partition.entry(v.partition).or_default().push(v);
    }
    for (partition, replicas) in &by_partition {
        if replicas.len() != expected_replicas {
            problems
                .push(format!("partition {partition}: {} replica views, expected {expected_replicas}", replicas.len()));
        }
        let Some(reference) = replicas.first() else { continue };
        for other in &replicas[1..] {
            if other.log_end != reference.log_end {
                problems.push(format!(
                    "partition {partition}: {} ends at {}, {} at {}",
                    reference.source, reference.log_end, other.source, other.log_end
                ));
            }
            let from = reference.log_start.max(other.log_start);
            let to = reference.log_end.min(other.log_end);
            let a: Vec<&LogRecord> = reference.records.iter().filter(|r| (from..to).contains(&r.offset)).collect();
            let b: Vec<&LogRecord> = other.records.iter().filter(|r| (from..to).contains(&r.offset)).collect();
            let mut i = 0;
            let mut j = 0;
            while i < a.len() || j < b.len() {
                match (a.get(i), b.get(j)) {
                    (Some(x), Some(y)) if x.offset == y.offset => {
                        if x.value != y.value || x.chain_hash != y.chain_hash || x.entry_index != y.entry_index {
                            problems.push(format!(
                                "partition {partition} offset {}: {} holds {} (entry {}, {}..), {} holds {} (entry {}, \
                                 {}..)",
                                x.offset,
                                reference.source,
                                show(&x.value),
                                x.entry_index,
                                hex8(&x.chain_hash),
                                other.source,
                                show(&y.value),
                                y.entry_index,
                                hex8(&y.chain_hash)
                            ));
                        }
                        i += 1;
                        j += 1;
                    }
                    (Some(x), y) if y.is_none_or(|y| x.offset < y.offset) => {
                        problems.push(format!(
                            "partition {partition} offset {}: {} holds {}, {} has no record there",
                            x.offset,
                            reference.source,
                            show(&x.value),
                            other.source
                        ));
                        i += 1;
                    }
                    (_, Some(y)) => {
                        problems.push(format!(
                            "partition {partition} offset {}: {} holds {}, {} has no record there",
                            y.offset,
                            other.source,
                            show(&y.value),
                            reference.source
                        ));
                        j += 1;
                    }
                    (Some(_), None) | (None, None) => unreachable!("handled above / loop condition"),
                }
            }
        }
    }
    for report in verify {
        let at = format!("verify partition {} at offset {}", report.partition, report.offset);
        if !report.agree {
            problems.push(format!("{at}: the node reports disagreement: {:?}", summarize(report)));
        }
        if report.replicas.len() != expected_replicas {
            problems.push(format!("{at}: {} replicas answered, expected {expected_replicas}", report.replicas.len()));
        }
        let mut hashes: Vec<&Vec<u8>> = Vec::new();
        for (node, hash, error) in &report.replicas {
            match hash {
                Some(h) => hashes.push(h),
                None => problems.push(format!("{at}: replica {node} gave no chain hash: {error}")),
            }
        }
        if hashes.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("{at}: chain hashes differ: {:?}", summarize(report)));
        }
        // The answer must match what the replicas' logs hold where that offset is a record.
        if let Some(first) = hashes.first() {
            for view in by_partition.get(&report.partition).into_iter().flatten() {
                if let Some(r) = record_at(view, report.offset)
                    && r.chain_hash.as_slice() != first.as_slice()
                {
                    problems.push(format!(
                        "{at}: verify says {}.., {} holds {}..",
                        hex8(first),
                        view.source,
                        hex8(&r.chain_hash)
                    ));
                }
            }
        }
    }
    verdict("replicas agree on offsets and chain hashes", problems)
}

fn summarize(report: &VerifyReport) -> Vec<(u64, Option<String>, String)> {
    report.replicas.iter().map(|(n, h, e)| (*n, h.as_deref().map(hex8), e.clone())).collect()
}

/// **Offsets are dense and chained**: every view of a partition, each replica read on its own and
/// the consumer's, holds one record at every offset from where it starts to its log end, with no
/// gap (Raft's own entries and hidden batches take no offsets), and the reader found every entry
/// continuing the hash chain with the offsets the batches name (no chain break). A replica's view
/// starts at its log start; the consumer's at its first record.
pub fn offsets_dense(views: &[PartitionView]) -> Result<(), Violation> {
    let mut problems = Vec::new();
    for view in views {
        let at = format!("{} partition {}", view.source, view.partition);
        if let Some(why) = &view.chain_break {
            problems.push(format!("{at}: the chain breaks: {why}"));
        }
        let start = match view.source {
            ViewSource::Replica(_) => view.log_start,
            ViewSource::Consumer => view.records.first().map_or(view.log_end, |r| r.offset),
        };
        let mut expected = start;
        for r in &view.records {
            if r.offset != expected {
                problems.push(format!(
                    "{at}: offset {} follows offset {} (expected {expected})",
                    r.offset,
                    expected.wrapping_sub(1)
                ));
            }
            expected = r.offset + 1;
        }
        if expected != view.log_end && view.chain_break.is_none() {
            problems.push(format!("{at}: records end at offset {expected}, the log end is {}", view.log_end));
        }
    }
    verdict("offsets dense and chained in every view", problems)
}

/// **One order**: a producer's acknowledged records of one partition sit at increasing offsets in
/// the order it sent them (the client keeps one batch per partition in flight).
pub fn acks_in_send_order(history: &History) -> Result<(), Violation> {
    let mut problems = Vec::new();
    // (run, producer, partition) -> (seq, offset) of each acknowledgement.
    type Stream<'a> = (&'a str, usize, u32);
    let mut by_stream: BTreeMap<Stream<'_>, Vec<(u64, u64)>> = BTreeMap::new();
    for ack in &history.acks {
        by_stream.entry((&ack.run, ack.producer, ack.partition)).or_default().push((ack.seq, ack.offset));
    }
    for ((run, producer, partition), mut acks) in by_stream {
        acks.sort_unstable();
        for w in acks.windows(2) {
            if w[1].1 <= w[0].1 {
                problems.push(format!(
                    "run {run} producer {producer} partition {partition}: seq {} acked at offset {}, later seq {} at offset {}",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ));
            }
        }
    }
    verdict("acknowledged records in send order", problems)
}

/// **Keep-all replicas are whole**: on a topic without retention limits every replica holds every
/// record from offset 0, i.e. each replica's own log starts at 0. (A replica that caught up by
/// installing a snapshot and dropped the history below it starts later: the records there are gone
/// from that replica even where no acknowledged record happens to sit.)
pub fn keep_all_replicas_complete(views: &[PartitionView]) -> Result<(), Violation> {
    let problems = views
        .iter()
        .filter(|v| matches!(v.source, ViewSource::Replica(_)) && v.log_start != 0)
        .map(|v| {
            format!(
                "partition {}: {} starts at offset {} (holds [{}, {})), a keep-all replica must start at 0",
                v.partition, v.source, v.log_start, v.log_start, v.log_end
            )
        })
        .collect();
    verdict("every replica of a keep-all topic holds the whole log", problems)
}

/// **Offsets are never reused**: no two acknowledgements (of any run or producer) name the same
/// partition and offset; a second one means an acknowledged record was overwritten.
pub fn offsets_never_reused(history: &History) -> Result<(), Violation> {
    let mut problems = Vec::new();
    let mut seen: HashMap<(u32, u64), &Bytes> = HashMap::new();
    for ack in &history.acks {
        if let Some(first) = seen.insert((ack.partition, ack.offset), &ack.value)
            && *first != ack.value
        {
            problems.push(format!(
                "offset {}/{} acknowledged for {} and again for {}",
                ack.partition,
                ack.offset,
                show(first),
                show(&ack.value)
            ));
        }
    }
    verdict("offsets never reused", problems)
}

/// **Idempotent producers' records are in order, once**: in every view (each replica and the
/// consumer), the records one producer sent to one partition sit at increasing offsets in the
/// order it sent them (sequence numbers strictly increase), acknowledged or not: a retried batch
/// is neither written twice nor written after a later one (a batch the client gave up on that
/// reached the leader late, after later batches, breaks the order). Values that are not workload
/// values are not checked. Each problem says whether the two records were acknowledged.
pub fn producer_records_in_order(history: &History, views: &[PartitionView]) -> Result<(), Violation> {
    let outcome: HashMap<&Bytes, String> = history
        .acks
        .iter()
        .map(|a| (&a.value, format!("acked at {}", a.offset)))
        .chain(history.unacked.iter().map(|u| (&u.value, format!("not acked: {}", u.error))))
        .collect();
    let outcome_of = |v: &Bytes| outcome.get(v).cloned().unwrap_or_else(|| "never sent".to_string());
    let mut problems = Vec::new();
    for view in views {
        // (run, producer) -> (seq, offset) of the last record seen in this view, and where each
        // (run, producer, seq) was first seen.
        let mut last: HashMap<(&str, usize), (u64, u64, &Bytes)> = HashMap::new();
        let mut first: HashMap<(&str, usize, u64), u64> = HashMap::new();
        for r in &view.records {
            let Some((run, producer, seq)) = parse_record_value(&r.value) else { continue };
            let at = format!("{} partition {}: run {run} producer {producer} seq {seq}", view.source, view.partition);
            if let Some(earlier) = first.insert((run, producer, seq), r.offset) {
                problems.push(format!("{at} at offset {earlier} and again at offset {}", r.offset));
                continue;
            }
            if let Some((prev_seq, prev_offset, prev_value)) = last.insert((run, producer), (seq, r.offset, &r.value))
                && seq < prev_seq
            {
                problems.push(format!(
                    "{at} ({}) at offset {} after its later seq {prev_seq} ({}) at offset {prev_offset}",
                    outcome_of(&r.value),
                    r.offset,
                    outcome_of(prev_value)
                ));
            }
        }
    }
    verdict("each idempotent producer's records in order without duplicates", problems)
}

/// **No write acknowledged without a majority**: a history recorded while a majority of the nodes
/// was down holds no acknowledgement, and did try to write.
pub fn writes_refused(history: &History) -> Result<(), Violation> {
    let mut problems: Vec<String> = history
        .acks
        .iter()
        .map(|a| format!("{} acknowledged at {}/{} without a majority", show(&a.value), a.partition, a.offset))
        .collect();
    if history.sent() == 0 {
        problems.push("no write was attempted, so refusal was not tested".to_string());
    }
    verdict("no write acknowledged without a majority", problems)
}

/// **The CLI's verify agrees**: `shale verify TOPIC --sweep` reports `agree` for every partition
/// (every replica answered the same chain hash at every probed offset).
pub fn cli_verify_agrees(report: &OnlineVerify, partitions: u32) -> Result<(), Violation> {
    let mut problems = Vec::new();
    if report.partitions.len() != partitions as usize {
        problems.push(format!("{} partitions reported, expected {partitions}", report.partitions.len()));
    }
    for p in report.partitions.iter().filter(|p| p.status != "agree") {
        problems.push(format!(
            "{}/{}: {} (first divergent offset {:?}, checked {:?}): {}",
            report.topic,
            p.partition,
            p.status,
            p.first_divergent_offset,
            p.checked_offset,
            p.error.as_deref().unwrap_or("")
        ));
    }
    verdict("shale verify reports agreement", problems)
}

/// **Disks are undamaged**: the offline verify of every stopped node's data finds no damaged
/// stream (every record's CRC and chain link check out after the faults).
pub fn disks_undamaged(reports: &[(u64, OfflineVerify)]) -> Result<(), Violation> {
    let mut problems = Vec::new();
    for (node, report) in reports {
        if report.streams.is_empty() {
            problems.push(format!("node {node}: no stream found in {}", report.data_dir));
        }
        for s in report.streams.iter().filter(|s| s.status != "ok") {
            problems.push(format!("node {node}: stream {} ({}) is {}: {:?}", s.stream, s.role, s.status, s.findings));
        }
        if report.damaged_streams > 0 && !report.streams.iter().any(|s| s.status != "ok") {
            problems.push(format!("node {node}: {} damaged streams reported", report.damaged_streams));
        }
    }
    verdict("disks undamaged (offline verify)", problems)
}

/// Runs the safety checkers (loss, duplicates, agreement, dense offsets, offsets never reused, and for a keep-all
/// topic whole replicas) and the order checkers (acknowledgements and each producer's records in
/// every view), collecting every violation.
pub fn check_all(
    history: &History,
    views: &[PartitionView],
    verify: &[VerifyReport],
    expected_replicas: usize,
    keep_all: bool,
) -> Result<(), Vec<Violation>> {
    let violations: Vec<Violation> = [
        no_acknowledged_record_lost(history, views),
        no_duplicates(views),
        replicas_agree(views, verify, expected_replicas),
        offsets_dense(views),
        if keep_all { keep_all_replicas_complete(views) } else { Ok(()) },
        offsets_never_reused(history),
        acks_in_send_order(history),
        producer_records_in_order(history, views),
    ]
    .into_iter()
    .filter_map(Result::err)
    .collect();
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Ack, Unacked};

    fn hash(offset: u64, value: &str) -> [u8; 32] {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&offset.to_le_bytes());
        for (i, b) in value.bytes().enumerate() {
            h[8 + i % 24] ^= b;
        }
        h
    }

    /// A synthetic consistent run: 2 producers, 2 partitions, 3 replicas; offsets dense, each record
    /// in its own log entry after an election's blank entry and a membership entry (entry index =
    /// offset + 2); one unacked record was written (p1 s3) and one was not (p0 s5).
    fn scenario() -> (History, Vec<PartitionView>, Vec<VerifyReport>) {
        let mut history = History::default();
        let mut logs: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
        let mut next: BTreeMap<u32, u64> = BTreeMap::from([(0, 0), (1, 0)]);
        for seq in 0..6u64 {
            for producer in 0..2usize {
                let partition = ((producer as u64 + seq) % 2) as u32;
                let value = Bytes::from(format!("run/p{producer:02}/s{seq:09}"));
                let unacked_written = producer == 1 && seq == 3;
                let unacked_lost = producer == 0 && seq == 5;
                if unacked_lost {
                    history.unacked.push(Unacked {
                        run: "run".into(),
                        producer,
                        seq,
                        value,
                        partition,
                        error: "timeout".into(),
                    });
                    continue;
                }
                let offset = next[&partition];
                *next.get_mut(&partition).unwrap() += 1;
                let chain_hash = hash(offset, &show(&value));
                let entry_index = offset + 2;
                logs.entry(partition).or_default().push(LogRecord {
                    offset,
                    value: value.clone(),
                    chain_hash,
                    entry_index,
                });
                if unacked_written {
                    history.unacked.push(Unacked {
                        run: "run".into(),
                        producer,
                        seq,
                        value,
                        partition,
                        error: "lost reply".into(),
                    });
                } else {
                    history.acks.push(Ack {
                        run: "run".into(),
                        producer,
                        seq,
                        value,
                        partition,
                        offset,
                        chain_hash,
                        entry_index,
                    });
                }
            }
        }
        let mut views = Vec::new();
        let mut verify = Vec::new();
        for (partition, records) in &logs {
            let log_end = next[partition];
            for node in 1..=3 {
                views.push(PartitionView {
                    source: ViewSource::Replica(node),
                    partition: *partition,
                    log_start: 0,
                    log_end,
                    records: records.clone(),
                    chain_break: None,
                });
            }
            views.push(PartitionView {
                source: ViewSource::Consumer,
                partition: *partition,
                log_start: 0,
                log_end,
                records: records.clone(),
                chain_break: None,
            });
            let last = records.last().unwrap();
            verify.push(VerifyReport {
                partition: *partition,
                offset: last.offset,
                agree: true,
                replicas: (1..=3).map(|n| (n, Some(last.chain_hash.to_vec()), String::new())).collect(),
            });
        }
        (history, views, verify)
    }

    fn replica(views: &mut [PartitionView], node: u64, partition: u32) -> &mut PartitionView {
        views.iter_mut().find(|v| v.source == ViewSource::Replica(node) && v.partition == partition).unwrap()
    }

    #[test]
    fn a_consistent_run_passes_every_checker() {
        let (history, views, verify) = scenario();
        assert!(history.acks.len() > 8 && history.unacked.len() == 2);
        check_all(&history, &views, &verify, 3, true).unwrap();
    }

    #[test]
    fn a_record_missing_on_one_replica_is_a_loss() {
        let (history, mut views, verify) = scenario();
        let victim = history.acks[3].clone();
        replica(&mut views, 2, victim.partition).records.retain(|r| r.offset != victim.offset);
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("replica 2 has no record"), "{err}");
        // The same hole makes the replicas disagree.
        assert!(replicas_agree(&views, &verify, 3).is_err());
    }

    #[test]
    fn a_record_the_consumer_missed_is_a_loss() {
        let (history, mut views, _) = scenario();
        let victim = history.acks[0].clone();
        let consumer =
            views.iter_mut().find(|v| v.source == ViewSource::Consumer && v.partition == victim.partition).unwrap();
        consumer.records.retain(|r| r.offset != victim.offset);
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert!(err.problems[0].contains("consumer has no record"), "{err}");
    }

    #[test]
    fn an_ack_for_an_offset_holding_another_value_is_a_loss() {
        let (mut history, views, _) = scenario();
        // Two acks claiming the same offset: at most one can be right.
        let (a, b) = (
            history.acks[0].clone(),
            history
                .acks
                .iter()
                .find(|x| x.partition == history.acks[0].partition && x.offset != history.acks[0].offset)
                .unwrap()
                .clone(),
        );
        history.acks.iter_mut().find(|x| x.value == b.value).unwrap().offset = a.offset;
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert!(err.problems.iter().all(|p| p.contains("instead")), "{err}");
        assert_eq!(err.problems.len(), 4, "one per view of that partition: {err}");
    }

    #[test]
    fn an_ack_past_the_log_end_or_with_another_chain_hash_is_a_loss() {
        let (mut history, views, _) = scenario();
        history.acks[0].chain_hash[31] ^= 1;
        history.acks[1].offset = 1_000;
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("chain hash")), "{err}");
        assert!(err.problems.iter().any(|p| p.contains("holds only")), "{err}");
    }

    #[test]
    fn an_ack_in_a_partition_nobody_read_is_reported() {
        let (mut history, views, _) = scenario();
        history.acks[0].partition = 9;
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("no view of that partition")), "{err}");
    }

    #[test]
    fn a_value_written_twice_is_a_duplicate_even_across_partitions() {
        let (_, mut views, _) = scenario();
        let dup = replica(&mut views, 1, 0).records[0].clone();
        let p1 = replica(&mut views, 1, 1);
        let offset = p1.log_end;
        p1.records.push(LogRecord { offset, value: dup.value.clone(), chain_hash: hash(offset, "x"), entry_index: 99 });
        p1.log_end += 1;
        let err = no_duplicates(&views).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].starts_with("replica 1:"), "{err}");
        // A duplicate within one partition (a retried batch written twice) too.
        let (_, mut views, _) = scenario();
        let consumer = views.iter_mut().find(|v| v.source == ViewSource::Consumer && v.partition == 0).unwrap();
        let again = LogRecord { offset: consumer.log_end, ..consumer.records[2].clone() };
        consumer.records.push(again);
        assert!(no_duplicates(&views).is_err());
    }

    #[test]
    fn replicas_with_different_chain_hashes_values_or_ends_disagree() {
        let (_, mut views, verify) = scenario();
        replica(&mut views, 3, 1).records[2].chain_hash[0] ^= 0xff;
        let err = replicas_agree(&views, &verify, 3).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("replica 3"), "{err}");

        let (_, mut views, verify) = scenario();
        replica(&mut views, 2, 0).records[1].value = Bytes::from_static(b"other");
        assert!(replicas_agree(&views, &verify, 3).is_err());

        let (_, mut views, verify) = scenario();
        let lagging = replica(&mut views, 2, 0);
        lagging.records.pop();
        lagging.log_end -= 1;
        let err = replicas_agree(&views, &verify, 3).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("ends at")), "{err}");
    }

    #[test]
    fn an_ack_naming_another_entry_is_a_loss_and_replicas_must_agree_on_entries() {
        let (mut history, mut views, verify) = scenario();
        history.acks[2].entry_index += 1;
        let err = no_acknowledged_record_lost(&history, &views).unwrap_err();
        assert_eq!(err.problems.len(), 4, "one per view of that partition: {err}");
        assert!(err.problems.iter().all(|p| p.contains("the ack said entry")), "{err}");
        replica(&mut views, 2, 1).records[0].entry_index += 1;
        let err = replicas_agree(&views, &verify, 3).unwrap_err();
        assert!(err.problems[0].contains("replica 2 holds") && err.problems[0].contains("entry"), "{err}");
    }

    #[test]
    fn a_gap_a_chain_break_or_a_short_view_breaks_dense_offsets() {
        let (_, views, _) = scenario();
        offsets_dense(&views).unwrap();
        // A record hidden by one replica (the view skips an offset).
        let (_, mut views, _) = scenario();
        let gap = replica(&mut views, 2, 0);
        let hole = gap.records.remove(3).offset;
        let err = offsets_dense(&views).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].starts_with("replica 2 partition 0")
                && err.problems[0].contains(&format!("expected {hole}")),
            "{err}"
        );
        // A replica whose entries stop continuing the chain.
        let (_, mut views, _) = scenario();
        let broken = replica(&mut views, 3, 1);
        broken.records.truncate(2);
        broken.chain_break = Some("chain mismatch in t/1 at log index 4".into());
        let err = offsets_dense(&views).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("the chain breaks"), "{err}");
        // A view that stops short of its log end, and a replica starting after its log start.
        let (_, mut views, _) = scenario();
        replica(&mut views, 1, 1).records.pop();
        replica(&mut views, 3, 0).log_start = 1;
        let err = offsets_dense(&views).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        // The consumer's view is judged from its first record.
        let (_, mut views, _) = scenario();
        let consumer = views.iter_mut().find(|v| v.source == ViewSource::Consumer && v.partition == 0).unwrap();
        consumer.records.drain(..2);
        offsets_dense(&views).unwrap();
        let consumer = views.iter_mut().find(|v| v.source == ViewSource::Consumer && v.partition == 0).unwrap();
        consumer.records.remove(1);
        assert!(offsets_dense(&views).is_err());
    }

    #[test]
    fn replicas_agree_over_the_range_they_all_hold() {
        // A replica that compacted its head away still agrees on the rest.
        let (_, mut views, verify) = scenario();
        let compacted = replica(&mut views, 1, 0);
        compacted.log_start = compacted.records[2].offset;
        compacted.records.drain(..2);
        replicas_agree(&views, &verify, 3).unwrap();
    }

    #[test]
    fn verify_answers_must_list_every_replica_with_one_hash() {
        let (_, views, verify) = scenario();
        let mut bad = verify.clone();
        bad[0].replicas[1].1 = Some(vec![0; 32]);
        let err = replicas_agree(&views, &bad, 3).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("chain hashes differ")), "{err}");

        let mut bad = verify.clone();
        bad[0].replicas.pop();
        assert!(replicas_agree(&views, &bad, 3).is_err());

        let mut bad = verify.clone();
        bad[1].replicas[0].1 = None;
        bad[1].replicas[0].2 = "unreachable".into();
        let err = replicas_agree(&views, &bad, 3).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("unreachable")), "{err}");

        let mut bad = verify.clone();
        bad[0].agree = false;
        assert!(replicas_agree(&views, &bad, 3).is_err());

        // All replicas agree with each other but not with what their logs hold.
        let mut bad = verify;
        for r in &mut bad[0].replicas {
            r.1 = Some(vec![7; 32]);
        }
        let err = replicas_agree(&views, &bad, 3).unwrap_err();
        assert!(err.problems.iter().any(|p| p.contains("verify says")), "{err}");
    }

    #[test]
    fn a_missing_replica_view_is_reported() {
        let (_, mut views, verify) = scenario();
        views.retain(|v| v.source != ViewSource::Replica(3) || v.partition != 0);
        let err = replicas_agree(&views, &verify, 3).unwrap_err();
        assert!(err.problems[0].contains("2 replica views"), "{err}");
    }

    #[test]
    fn acks_out_of_send_order_are_reported() {
        let (mut history, _, _) = scenario();
        acks_in_send_order(&history).unwrap();
        let (i, j) = {
            let first = &history.acks[0];
            let j = history
                .acks
                .iter()
                .position(|a| a.producer == first.producer && a.partition == first.partition && a.seq > first.seq)
                .unwrap();
            (0, j)
        };
        let (oi, oj) = (history.acks[i].offset, history.acks[j].offset);
        history.acks[i].offset = oj;
        history.acks[j].offset = oi;
        let err = acks_in_send_order(&history).unwrap_err();
        assert!(err.problems[0].contains("later seq"), "{err}");
    }

    #[test]
    fn send_order_is_per_run_so_a_second_workload_may_reuse_producer_numbers() {
        let (mut history, _, _) = scenario();
        // A later run's producer 0 starts again at seq 0, at higher offsets: no violation.
        let later: Vec<Ack> =
            history.acks.iter().map(|a| Ack { run: "later".into(), offset: a.offset + 1_000, ..a.clone() }).collect();
        history.acks.extend(later);
        acks_in_send_order(&history).unwrap();
    }

    #[test]
    fn a_keep_all_replica_that_lost_its_head_is_incomplete() {
        let (history, mut views, verify) = scenario();
        keep_all_replicas_complete(&views).unwrap();
        // Replica 3 restarted its log at a snapshot: it serves nothing below offset 1.
        let cut = replica(&mut views, 3, 1);
        cut.log_start = 1;
        cut.records.remove(0);
        let err = keep_all_replicas_complete(&views).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("replica 3 starts at offset 1"), "{err}");
        let property = |keep_all| {
            let violations = check_all(&history, &views, &verify, 3, keep_all).unwrap_err();
            violations.iter().any(|v| v.property == "every replica of a keep-all topic holds the whole log")
        };
        assert!(property(true));
        // Not a keep-all topic: the cut is no violation of its own (the acknowledged record that
        // sat there is still reported lost on that replica).
        assert!(!property(false));
    }

    #[test]
    fn two_acks_for_one_offset_are_a_reused_offset() {
        let (mut history, _, _) = scenario();
        offsets_never_reused(&history).unwrap();
        // The same record acknowledged twice at its offset (a retry answered from the table) is fine.
        let again = history.acks[0].clone();
        history.acks.push(again);
        offsets_never_reused(&history).unwrap();
        let mut other = history.acks[1].clone();
        other.partition = history.acks[0].partition;
        other.offset = history.acks[0].offset;
        history.acks.push(other);
        let err = offsets_never_reused(&history).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("acknowledged for"), "{err}");
    }

    #[test]
    fn a_producer_record_out_of_order_or_twice_in_a_view_is_reported() {
        let (history, views, _) = scenario();
        producer_records_in_order(&history, &views).unwrap();
        // Swap the values of two records of one producer in one replica's log.
        let (_, mut views, _) = scenario();
        let log = replica(&mut views, 2, 0);
        let first = parse_record_value(&log.records[0].value).unwrap().1;
        let j =
            log.records.iter().rposition(|r| parse_record_value(&r.value).is_some_and(|(_, p, _)| p == first)).unwrap();
        let (a, b) = (log.records[0].value.clone(), log.records[j].value.clone());
        log.records[0].value = b;
        log.records[j].value = a;
        let err = producer_records_in_order(&history, &views).unwrap_err();
        assert!(err.problems.iter().all(|p| p.starts_with("replica 2 partition 0")), "{err}");
        assert!(err.problems.iter().any(|p| p.contains("after its later seq")), "{err}");
        // Each problem says what became of the two records.
        assert!(err.problems.iter().all(|p| p.contains("(acked at") || p.contains("(not acked:")), "{err}");
        // A retried batch written a second time, later in the consumer's view.
        let (_, mut views, _) = scenario();
        let consumer = views.iter_mut().find(|v| v.source == ViewSource::Consumer && v.partition == 1).unwrap();
        let again = LogRecord { offset: consumer.log_end, ..consumer.records[0].clone() };
        consumer.records.push(again);
        consumer.log_end += 1;
        let err = producer_records_in_order(&history, &views).unwrap_err();
        assert!(err.problems[0].contains("again"), "{err}");
        // Values that are not the workload's are not judged.
        let (_, mut views, _) = scenario();
        replica(&mut views, 1, 0).records[0].value = Bytes::from_static(b"not a workload value");
        producer_records_in_order(&history, &views).unwrap();
    }

    #[test]
    fn writes_refused_needs_attempts_and_no_acks() {
        let (history, _, _) = scenario();
        assert!(writes_refused(&history).is_err());
        let refused = History { acks: Vec::new(), unacked: history.unacked.clone() };
        writes_refused(&refused).unwrap();
        let err = writes_refused(&History::default()).unwrap_err();
        assert!(err.problems[0].contains("not tested"), "{err}");
    }

    #[test]
    fn cli_verify_must_agree_on_every_partition() {
        use crate::cli::OnlinePartition;
        let part = |partition, status: &str| OnlinePartition {
            partition,
            status: status.into(),
            checked_offset: Some(10),
            first_divergent_offset: None,
            error: None,
        };
        let ok = OnlineVerify { topic: "t".into(), partitions: vec![part(0, "agree"), part(1, "agree")] };
        cli_verify_agrees(&ok, 2).unwrap();
        assert!(cli_verify_agrees(&ok, 3).is_err());
        let bad = OnlineVerify { topic: "t".into(), partitions: vec![part(0, "agree"), part(1, "disagree")] };
        let err = cli_verify_agrees(&bad, 2).unwrap_err();
        assert!(err.problems[0].contains("t/1: disagree"), "{err}");
    }

    #[test]
    fn offline_damage_on_any_node_is_reported() {
        use crate::cli::OfflineStream;
        let stream = |id, status: &str| OfflineStream {
            stream: id,
            role: "raft log".into(),
            status: status.into(),
            records_verified: Some(5),
            findings: Vec::new(),
        };
        let clean = OfflineVerify {
            data_dir: "/data".into(),
            streams: vec![stream(0, "ok"), stream(1, "ok")],
            damaged_streams: 0,
        };
        disks_undamaged(&[(1, clean.clone()), (2, clean.clone())]).unwrap();
        let damaged =
            OfflineVerify { streams: vec![stream(0, "ok"), stream(3, "damaged")], damaged_streams: 1, ..clean.clone() };
        let err = disks_undamaged(&[(1, clean.clone()), (2, damaged)]).unwrap_err();
        assert!(err.problems[0].starts_with("node 2: stream 3"), "{err}");
        let empty = OfflineVerify { streams: Vec::new(), ..clean };
        assert!(disks_undamaged(&[(3, empty)]).is_err());
    }

    #[test]
    fn violations_print_a_bounded_list() {
        let v = Violation { property: "p", problems: (0..40).map(|i| format!("problem {i}")).collect() };
        let text = v.to_string();
        assert!(text.contains("problem 24") && !text.contains("problem 25") && text.contains("15 more"), "{text}");
    }
}
