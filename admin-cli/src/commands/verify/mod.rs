//! `shale verify`: online (every replica holds the partition from its start, and the replicas
//! agree on chain hashes) and offline (`--data-dir`).
//!
//! Online, per partition: every replica's bounds are compared with the partition's start (0 for a
//! topic without retention) and the committed end (a replica that lacks records it should hold is
//! `missing`); the chain hash at the newest offset every replica holds is compared (from the
//! hashes the replicas hold in memory, which is quick); and with `--sweep` every replica re-reads
//! its whole range from disk in pieces of `--step` records, recomputing every CRC and chain link,
//! so damage anywhere is found and named (`damaged`, with the replica and the first bad offset).

pub mod names;
pub mod offline;
pub mod search;

use std::collections::BTreeMap;

use serde::Serialize;
use shale_client::proto;

use crate::cli::VerifyArgs;
use crate::commands::select_partitions;
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::{self, Table, hex};

/// What a replica's storage found wrong with its own log when re-reading it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// The first bad record's offset, when known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub reason: String,
    /// The file within the stream directory.
    pub file: String,
    /// Byte position in that file.
    pub position: u64,
}

/// One replica's answer at one offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaView {
    /// Node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// Its chain hash there (hex), when it answered.
    pub chain_hash: Option<String>,
    /// Its log start.
    pub log_start: u64,
    /// Its log end.
    pub log_end: u64,
    /// Why it did not answer.
    pub error: Option<String>,
    /// For a re-read: where it started (its log start when that is above the range start).
    pub reread_from: Option<u64>,
    /// For a re-read: records it re-read from disk.
    pub records_reread: u64,
    /// For a re-read: the damage it found in its own log.
    pub damage: Option<Damage>,
}

/// Every replica's answer at one offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The offset compared.
    pub offset: u64,
    /// Per replica.
    pub replicas: Vec<ReplicaView>,
    /// What every replica should hold from (0 for a topic without retention).
    pub partition_start: u64,
    /// True when the topic keeps every record (no retention limit).
    pub keep_all: bool,
    /// True when some replica that answered holds no committed record, so no record was compared:
    /// nothing was written yet, or that replica holds nothing while others do (each replica's
    /// log end says which).
    pub empty: bool,
}

impl Probe {
    /// From the wire form.
    pub fn from_proto(r: &proto::VerifyResponse) -> Self {
        let mut replicas: Vec<ReplicaView> = r
            .replicas
            .iter()
            .map(|x| ReplicaView {
                node_id: x.node_id,
                addr: x.addr.clone(),
                chain_hash: x.chain_hash.as_ref().map(|h| hex(h, false)),
                log_start: x.log_start,
                log_end: x.log_end,
                error: (!x.error.is_empty()).then(|| x.error.clone()),
                reread_from: x.reread_from,
                records_reread: x.records_reread,
                damage: x.damage.as_ref().map(|d| Damage {
                    offset: d.offset,
                    reason: d.reason.clone(),
                    file: d.file.clone(),
                    position: d.position,
                }),
            })
            .collect();
        replicas.sort_by_key(|r| r.node_id);
        Self { offset: r.offset, replicas, partition_start: r.partition_start, keep_all: r.keep_all, empty: r.empty }
    }

    /// True when every replica answered with the same hash.
    pub fn agrees(&self) -> bool {
        let mut hashes = self.replicas.iter().map(|r| r.chain_hash.as_ref());
        match hashes.next() {
            Some(Some(first)) => hashes.all(|h| h == Some(first)) && self.replicas.iter().all(|r| r.error.is_none()),
            _ => false,
        }
    }

    /// True when every replica that answered gave the same hash (failed replicas aside).
    pub fn hashes_agree(&self) -> bool {
        let mut hashes = self.replicas.iter().filter_map(|r| r.chain_hash.as_ref());
        let first = hashes.next();
        hashes.all(|h| Some(h) == first)
    }

    /// The hash more than half of the replicas hold, if any.
    pub fn majority_hash(&self) -> Option<&str> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for h in self.replicas.iter().filter_map(|r| r.chain_hash.as_deref()) {
            *counts.entry(h).or_default() += 1;
        }
        counts.into_iter().find(|(_, n)| *n * 2 > self.replicas.len()).map(|(h, _)| h)
    }

    /// Replicas that disagree with the majority, or could not answer; every replica when there
    /// is no majority. In an [`Probe::empty`] probe no replica gives a hash: only those that could
    /// not answer are suspects.
    pub fn suspects(&self) -> Vec<Suspect> {
        let majority = self.majority_hash();
        self.replicas
            .iter()
            .filter_map(|r| {
                let reason = match (&r.error, &r.chain_hash, majority) {
                    (Some(e), _, _) => format!("cannot answer: {e}"),
                    (None, Some(h), Some(m)) if h != m => {
                        format!("chain hash {} differs from the majority's {}", &h[..12], &m[..12])
                    }
                    (None, Some(h), None) => format!("chain hash {} (no majority among the replicas)", &h[..12]),
                    (None, None, _) if !self.empty => "gave no chain hash".into(),
                    _ => return None,
                };
                Some(Suspect { node_id: r.node_id, addr: r.addr.clone(), reason })
            })
            .collect()
    }

    /// The highest log start of the replicas that answered (where every one of them can answer).
    pub fn common_start(&self) -> u64 {
        self.replicas.iter().filter(|r| r.error.is_none()).map(|r| r.log_start).max().unwrap_or(0)
    }

    /// The highest log end a replica that answered reports: the committed end, as far as the
    /// replicas know it.
    pub fn committed_end(&self) -> u64 {
        self.replicas.iter().filter(|r| r.error.is_none()).map(|r| r.log_end).max().unwrap_or(0)
    }
}

/// A replica named by a failed verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Suspect {
    /// Node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// Why.
    pub reason: String,
}

/// Records a replica lacks although it should hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// Node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// First offset missing.
    pub from: u64,
    /// One past the last offset missing.
    pub to: u64,
    /// `start` (its log starts above the partition start) or `end` (its log ends short of the
    /// committed end by more than `--max-lag`).
    pub side: String,
}

/// A replica whose re-read found its own log damaged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Damaged {
    /// Node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// What its storage found.
    pub damage: Damage,
}

/// One replica's verdict on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaVerdict {
    /// Node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// `ok`, `missing`, `damaged`, `differs` or `unavailable`.
    pub verdict: String,
    /// Its log start (when it answered).
    pub log_start: Option<u64>,
    /// Its log end (when it answered).
    pub log_end: Option<u64>,
    /// Its chain hash at the checked offset (hex), when it gave one.
    pub chain_hash: Option<String>,
    /// With `--sweep`: the range it re-read from disk, `[from, to)`.
    pub reread: Option<(u64, u64)>,
    /// With `--sweep`: records it re-read from disk.
    pub records_reread: u64,
    /// What is wrong, when the verdict is not `ok`.
    pub detail: Option<String>,
}

/// The verdict on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionVerdict {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// `agree`; `damaged` (a replica's re-read found damage), `disagree` (replicas differ from an
    /// offset on), `missing` (a replica lacks records it should hold), `unavailable` (some
    /// replicas cannot answer at any offset) or `error` (the check itself failed). The worst
    /// finding gives the status; every finding is listed.
    pub status: String,
    /// What every replica should hold from (0 for a topic without retention).
    pub partition_start: Option<u64>,
    /// The highest log end any replica reports.
    pub committed_end: Option<u64>,
    /// The newest offset compared (where every replica agreed, when they do).
    pub checked_offset: Option<u64>,
    /// The first offset where the replicas part.
    pub first_divergent_offset: Option<u64>,
    /// The first damaged offset a re-read found (the lowest over the replicas).
    pub first_bad_offset: Option<u64>,
    /// Requests sent (each asks every replica).
    pub probes: u32,
    /// Records re-read from disk, summed over the replicas (`--sweep`).
    pub records_reread: u64,
    /// Replicas named as wrong, and why.
    pub suspects: Vec<Suspect>,
    /// Records replicas lack although they should hold them.
    pub missing: Vec<Missing>,
    /// Replicas whose own log is damaged.
    pub damaged: Vec<Damaged>,
    /// Per replica.
    pub replicas: Vec<ReplicaVerdict>,
    /// The replicas' answers at the decisive offset.
    pub detail: Option<Probe>,
    /// Why the partition could not be verified at all.
    pub error: Option<String>,
}

impl PartitionVerdict {
    /// The offset the report shows next to the partition's status, replicas and hash: the first
    /// damaged or divergent offset when there is one, else the offset of the probe whose answers
    /// (hashes and errors) are shown, `detail`; an `unavailable` replica's error was answered
    /// there, not necessarily at the newest offset checked.
    pub fn shown_offset(&self) -> Option<u64> {
        self.first_bad_offset
            .or(self.first_divergent_offset)
            .or(self.detail.as_ref().map(|d| d.offset))
            .or(self.checked_offset)
    }
}

/// The whole online report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OnlineReport {
    /// Topic.
    pub topic: String,
    /// True when every record was re-read from disk (`--sweep`).
    pub sweep: bool,
    /// Per partition.
    pub partitions: Vec<PartitionVerdict>,
}

impl OnlineReport {
    /// True when every partition agrees.
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.status == "agree")
    }
}

fn range_text(from: u64, to: u64) -> String {
    format!("[{from}, {to})")
}

/// The human report.
pub fn online_text(r: &OnlineReport) -> String {
    let mut t = Table::new(["partition", "status", "start", "end", "offset", "replicas", "chain hash"]);
    for p in &r.partitions {
        let opt = |o: Option<u64>| o.map_or_else(|| "-".into(), |o| o.to_string());
        let offset = opt(p.shown_offset());
        let (replicas, hash) = match &p.detail {
            Some(d) => (
                d.replicas.iter().map(|x| x.node_id.to_string()).collect::<Vec<_>>().join(","),
                d.majority_hash().map_or_else(|| "-".into(), |h| h[..12].to_string()),
            ),
            None => ("-".into(), "-".into()),
        };
        t.row([
            p.partition.to_string(),
            p.status.clone(),
            opt(p.partition_start),
            opt(p.committed_end),
            offset,
            replicas,
            hash,
        ]);
    }
    let mut out = format!("TOPIC {}\n{}", r.topic, t.render());
    let mut per_replica = Table::new(["partition", "node", "log start", "log end", "re-read", "chain hash", "verdict"]);
    for p in &r.partitions {
        for x in &p.replicas {
            let opt = |o: Option<u64>| o.map_or_else(|| "-".into(), |o| o.to_string());
            let reread = match x.reread {
                Some((a, b)) => format!("{} {} records", range_text(a, b), x.records_reread),
                None => "-".into(),
            };
            let hash = x.chain_hash.as_deref().map_or_else(|| "-".into(), |h| h[..12.min(h.len())].to_string());
            let verdict = x.detail.clone().unwrap_or_else(|| x.verdict.clone());
            per_replica.row([
                p.partition.to_string(),
                x.node_id.to_string(),
                opt(x.log_start),
                opt(x.log_end),
                reread,
                hash,
                verdict,
            ]);
        }
    }
    out.push('\n');
    out.push_str(&per_replica.render());
    for p in r.partitions.iter().filter(|p| p.status != "agree") {
        let name = format!("{}/{}", r.topic, p.partition);
        out.push('\n');
        if let Some(e) = &p.error {
            out.push_str(&format!("{name}: cannot verify: {e}\n"));
            continue;
        }
        for d in &p.damaged {
            let at = d.damage.offset.map_or_else(|| "at an unknown offset".into(), |o| format!("at offset {o}"));
            out.push_str(&format!(
                "{name}: DAMAGED {at} on node {} ({}): {} ({} byte {})\n",
                d.node_id, d.addr, d.damage.reason, d.damage.file, d.damage.position
            ));
        }
        for m in &p.missing {
            let why = match m.side.as_str() {
                "start" => format!("its log starts at {}, the partition at {}", m.to, m.from),
                _ => format!("its log ends at {}, the committed end is {}", m.from, m.to),
            };
            out.push_str(&format!(
                "{name}: MISSING {} on node {} ({}): {why}\n",
                range_text(m.from, m.to),
                m.node_id,
                m.addr
            ));
        }
        if let Some(o) = p.first_divergent_offset {
            out.push_str(&format!("{name}: replicas first differ at offset {o}\n"));
            for s in p.suspects.iter().filter(|s| !p.damaged.iter().any(|d| d.node_id == s.node_id)) {
                out.push_str(&format!("  replica node {} ({}) at offset {o}: {}\n", s.node_id, s.addr, s.reason));
            }
            if let Some(d) = &p.detail {
                for x in &d.replicas {
                    let answer = x.chain_hash.clone().or_else(|| x.error.clone()).unwrap_or_default();
                    out.push_str(&format!("    node {}: {answer}\n", x.node_id));
                }
            }
        } else if p.status == "unavailable" {
            out.push_str(&format!(
                "{name}: some replicas cannot answer at any offset (unreachable, or their log cannot be read)\n"
            ));
            for s in &p.suspects {
                out.push_str(&format!("  replica node {} ({}): {}\n", s.node_id, s.addr, s.reason));
            }
            out.push_str(
                "  check it with `shale cluster status` and, with the node stopped, `shale verify --data-dir DIR`\n",
            );
        }
    }
    let what = if r.sweep { "every record re-read from disk" } else { "newest offset compared" };
    out.push_str(&if r.ok() {
        format!("\nOK: {} partition(s), every replica agrees ({what})\n", r.partitions.len())
    } else {
        let bad = r.partitions.iter().filter(|p| p.status != "agree").count();
        format!("\nFAILED: {bad} of {} partition(s) do not agree ({what})\n", r.partitions.len())
    });
    out
}

async fn probe(ctx: &Ctx, topic: &str, partition: u32, offset: Option<u64>) -> Result<Probe> {
    let client = ctx.client()?;
    let what = match offset {
        Some(o) => format!("verify {topic}/{partition} at offset {o}"),
        None => format!("verify {topic}/{partition}"),
    };
    let r = client.admin().verify(topic, partition, offset).await.map_err(|e| ctx.err(what, e))?;
    Ok(Probe::from_proto(&r))
}

/// Every replica re-reads `[from, to]` (from its own log start if that is higher) from disk.
async fn reread(ctx: &Ctx, topic: &str, partition: u32, from: u64, to: u64) -> Result<Probe> {
    let client = ctx.client()?;
    let what = format!("re-read {topic}/{partition} offsets [{from}, {to}] on every replica");
    let r = client.admin().verify_reread(topic, partition, from, to).await.map_err(|e| ctx.err(what, e))?;
    Ok(Probe::from_proto(&r))
}

fn empty_verdict(topic: &str, partition: u32) -> PartitionVerdict {
    PartitionVerdict {
        topic: topic.to_string(),
        partition,
        status: "agree".into(),
        partition_start: None,
        committed_end: None,
        checked_offset: None,
        first_divergent_offset: None,
        first_bad_offset: None,
        probes: 0,
        records_reread: 0,
        suspects: Vec::new(),
        missing: Vec::new(),
        damaged: Vec::new(),
        replicas: Vec::new(),
        detail: None,
        error: None,
    }
}

async fn verify_partition(ctx: &Ctx, a: &VerifyArgs, topic: &str, partition: u32) -> PartitionVerdict {
    let mut verdict = empty_verdict(topic, partition);
    if let Err(e) = verify_partition_inner(ctx, a, topic, partition, &mut verdict).await {
        verdict.status = "error".into();
        verdict.error = Some(e.to_string());
    }
    verdict
}

/// What each replica lacks of `[partition_start, committed_end)`: below its start, and past its
/// end by more than `max_lag`.
pub fn missing_ranges(p: &Probe, max_lag: u64) -> Vec<Missing> {
    let (start, end) = (p.partition_start, p.committed_end());
    let mut out = Vec::new();
    for r in p.replicas.iter().filter(|r| r.error.is_none() || r.damage.is_some()) {
        if r.log_start > start {
            out.push(Missing {
                node_id: r.node_id,
                addr: r.addr.clone(),
                from: start,
                to: r.log_start,
                side: "start".into(),
            });
        }
        if end.saturating_sub(r.log_end) > max_lag {
            out.push(Missing {
                node_id: r.node_id,
                addr: r.addr.clone(),
                from: r.log_end,
                to: end,
                side: "end".into(),
            });
        }
    }
    out
}

/// Names each replica missing records as a suspect, unless it is one already.
fn name_missing(suspects: &mut Vec<Suspect>, missing: &[Missing]) {
    for m in missing {
        if !suspects.iter().any(|s| s.node_id == m.node_id) {
            suspects.push(Suspect {
                node_id: m.node_id,
                addr: m.addr.clone(),
                reason: format!("missing {}", range_text(m.from, m.to)),
            });
        }
    }
}

/// The verdict on a partition where some replica holds no record ([`Probe::empty`]), so there is
/// no record to compare: nothing was written yet (a keyless producer's sticky runs leave partitions
/// empty for a while: the replicas agree on holding nothing), or a replica holds nothing while
/// others hold records. Such a replica is judged on its lag as any other: missing what the others
/// hold beyond `max_lag` (it lost its log, or is far behind), else only behind (the first write
/// has not reached it yet).
fn judge_without_records_in_common(newest: &Probe, max_lag: u64, v: &mut PartitionVerdict) {
    v.partition_start = Some(newest.partition_start);
    v.committed_end = Some(newest.committed_end());
    v.missing = missing_ranges(newest, max_lag);
    let mut suspects = newest.suspects();
    name_missing(&mut suspects, &v.missing);
    suspects.sort_by_key(|s| s.node_id);
    v.status = if !v.missing.is_empty() {
        "missing"
    } else if !suspects.is_empty() {
        "unavailable"
    } else {
        "agree"
    }
    .into();
    v.suspects = suspects;
    v.replicas = replica_verdicts(newest, newest, v, &Reread::new());
}

/// Per-replica re-read totals over a sweep: `(first offset, one past the last, records)`.
type Reread = BTreeMap<u64, (u64, u64, u64)>;

async fn verify_partition_inner(
    ctx: &Ctx,
    a: &VerifyArgs,
    topic: &str,
    partition: u32,
    v: &mut PartitionVerdict,
) -> Result<()> {
    let newest = probe(ctx, topic, partition, a.offset).await?;
    v.probes += 1;
    if newest.empty {
        judge_without_records_in_common(&newest, a.max_lag, v);
        return Ok(());
    }
    v.checked_offset = Some(newest.offset);
    v.partition_start = Some(newest.partition_start);
    v.committed_end = Some(newest.committed_end());
    v.missing = missing_ranges(&newest, a.max_lag);
    // The offset range where the first divergence must lie, and the probe known to disagree.
    let mut bad: Option<(u64, u64, Probe)> = None;
    let mut reread_totals = Reread::new();
    // Replicas that could not re-read a piece they hold (the first such piece and why): the
    // sweep did not read all of them, so they cannot count as agreeing.
    let mut incomplete: BTreeMap<u64, (u64, u64, String)> = BTreeMap::new();
    let mut decisive = newest.clone();
    if a.sweep {
        for (from, to) in search::sweep_pieces(newest.partition_start, newest.offset, a.step) {
            let p = reread(ctx, topic, partition, from, to).await?;
            v.probes += 1;
            for r in &p.replicas {
                let starts_above =
                    newest.replicas.iter().any(|x| x.node_id == r.node_id && x.error.is_none() && x.log_start > to);
                if let Some(e) = r.error.as_ref().filter(|_| r.damage.is_none() && !starts_above) {
                    incomplete.entry(r.node_id).or_insert_with(|| (from, to, e.clone()));
                }
                if let Some(start) = r.reread_from {
                    let e = reread_totals.entry(r.node_id).or_insert((start, start, 0));
                    // A damaged replica's re-read got as far as the damage.
                    match r.damage.as_ref().and_then(|d| d.offset) {
                        Some(bad) => {
                            e.1 = bad;
                            e.2 += bad.saturating_sub(start);
                        }
                        None => {
                            e.1 = to + 1;
                            e.2 += r.records_reread;
                        }
                    }
                }
                if let Some(d) = &r.damage
                    && !v.damaged.iter().any(|x| x.node_id == r.node_id)
                {
                    v.damaged.push(Damaged { node_id: r.node_id, addr: r.addr.clone(), damage: d.clone() });
                }
            }
            let damaged = p.replicas.iter().any(|r| r.damage.is_some());
            if !p.hashes_agree() {
                bad = Some((from, to, p.clone()));
            }
            if damaged || bad.is_some() {
                decisive = p;
                break;
            }
            if to == newest.offset {
                decisive = p;
            }
        }
    } else if !newest.agrees() {
        bad = Some((newest.common_start(), newest.offset, newest.clone()));
    }
    v.records_reread = reread_totals.values().map(|t| t.2).sum();
    v.first_bad_offset = v.damaged.iter().filter_map(|d| d.damage.offset).min();
    let mut unavailable = false;
    if let Some((lo, hi, at_hi)) = bad {
        // Plain probes from here: each replica's records in [lo, hi] were just re-read (sweep),
        // or its chain is compared as it holds it.
        let mut probes = 0u32;
        let (first, answer) = search::first_disagreement(lo, hi, |o| {
            probes += 1;
            async move {
                let p = probe(ctx, topic, partition, Some(o)).await?;
                let agrees = if a.sweep { p.hashes_agree() } else { p.agrees() };
                Ok::<_, CliError>((agrees, p))
            }
        })
        .await?;
        v.probes += probes;
        decisive = answer.unwrap_or(at_hi);
        if !a.sweep && first == lo && decisive.hashes_agree() {
            // The answering replicas agree from the very first offset; the others fail everywhere:
            // they are unreachable or cannot read their log at all, which names no offset.
            unavailable = true;
        } else {
            v.first_divergent_offset = Some(first);
        }
    } else if decisive.replicas.iter().any(|r| r.error.is_some() && r.damage.is_none()) {
        unavailable = decisive.hashes_agree();
    }
    unavailable |= !incomplete.is_empty();
    let mut suspects: Vec<Suspect> = Vec::new();
    if v.first_divergent_offset.is_some() || unavailable {
        suspects.extend(decisive.suspects().into_iter().filter(|s| !v.damaged.iter().any(|d| d.node_id == s.node_id)));
    }
    for (node, (from, to, e)) in &incomplete {
        if !suspects.iter().any(|s| s.node_id == *node) {
            let addr = newest.replicas.iter().find(|r| r.node_id == *node).map(|r| r.addr.clone()).unwrap_or_default();
            suspects.push(Suspect {
                node_id: *node,
                addr,
                reason: format!("could not re-read offsets [{from}, {to}]: {e}"),
            });
        }
    }
    for d in &v.damaged {
        let at = d.damage.offset.map_or_else(String::new, |o| format!(" at offset {o}"));
        suspects.push(Suspect {
            node_id: d.node_id,
            addr: d.addr.clone(),
            reason: format!("damaged{at}: {}", d.damage.reason),
        });
    }
    name_missing(&mut suspects, &v.missing);
    suspects.sort_by_key(|s| s.node_id);
    v.suspects = suspects;
    v.status = if !v.damaged.is_empty() {
        "damaged"
    } else if v.first_divergent_offset.is_some() {
        "disagree"
    } else if !v.missing.is_empty() {
        "missing"
    } else if unavailable {
        "unavailable"
    } else {
        "agree"
    }
    .into();
    v.replicas = replica_verdicts(&newest, &decisive, v, &reread_totals);
    for x in v.replicas.iter_mut().filter(|x| x.verdict == "ok") {
        if let Some((from, to, e)) = incomplete.get(&x.node_id) {
            x.verdict = "unavailable".into();
            x.detail = Some(format!("unavailable: could not re-read offsets [{from}, {to}]: {e}"));
        }
    }
    v.detail = Some(decisive);
    Ok(())
}

/// The per-replica table: every replica of the newest probe, with what was found about it.
fn replica_verdicts(newest: &Probe, decisive: &Probe, v: &PartitionVerdict, reread: &Reread) -> Vec<ReplicaVerdict> {
    newest
        .replicas
        .iter()
        .map(|r| {
            let at_decisive = decisive.replicas.iter().find(|x| x.node_id == r.node_id).unwrap_or(r);
            let mut problems: Vec<(&str, String)> = Vec::new();
            if let Some(d) = v.damaged.iter().find(|d| d.node_id == r.node_id) {
                let at = d.damage.offset.map_or_else(String::new, |o| format!(" at offset {o}"));
                problems.push(("damaged", format!("damaged{at}: {}", d.damage.reason)));
            }
            if let Some(o) = v.first_divergent_offset
                && let Some(s) = v.suspects.iter().find(|s| s.node_id == r.node_id && !s.reason.starts_with("missing"))
                && !v.damaged.iter().any(|d| d.node_id == r.node_id)
            {
                problems.push(("differs", format!("differs from offset {o}: {}", s.reason)));
            }
            for m in v.missing.iter().filter(|m| m.node_id == r.node_id) {
                problems.push(("missing", format!("missing {}", range_text(m.from, m.to))));
            }
            let error = at_decisive.error.as_ref().or(r.error.as_ref());
            if problems.is_empty()
                && let Some(e) = error
            {
                problems.push(("unavailable", format!("unavailable: {e}")));
            }
            let answered = r.error.is_none() || r.damage.is_some();
            ReplicaVerdict {
                node_id: r.node_id,
                addr: r.addr.clone(),
                verdict: problems.first().map_or("ok", |p| p.0).to_string(),
                log_start: answered.then_some(r.log_start),
                log_end: answered.then_some(r.log_end),
                chain_hash: at_decisive.chain_hash.clone(),
                reread: reread.get(&r.node_id).map(|t| (t.0, t.1)),
                records_reread: reread.get(&r.node_id).map_or(0, |t| t.2),
                detail: (!problems.is_empty())
                    .then(|| problems.iter().map(|p| p.1.clone()).collect::<Vec<_>>().join("; ")),
            }
        })
        .collect()
}

/// Runs `shale verify TOPIC`.
pub async fn run_online(ctx: &Ctx, a: &VerifyArgs) -> Result<()> {
    let Some(topic) = a.topic.clone() else {
        return Err(CliError::Usage("give a TOPIC to verify online, or --data-dir DIR to check files offline".into()));
    };
    let client = ctx.client()?;
    let given: Vec<u32> = a.partition.into_iter().collect();
    let partitions =
        select_partitions(&client, &topic, &given).await.map_err(|e| ctx.err(format!("read topic {topic}"), e))?;
    // Partitions are independent: verify them concurrently (each one's probes stay sequential).
    let verdicts = futures::future::join_all(partitions.iter().map(|&p| verify_partition(ctx, a, &topic, p))).await;
    let report = OnlineReport { topic: topic.clone(), sweep: a.sweep, partitions: verdicts };
    output::emit(a.output.output, &report, online_text)?;
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::CheckFailed(format!("replicas of {topic} do not agree (see the report above)")))
    }
}

/// Runs `shale verify --data-dir DIR`.
pub fn run_offline(a: &VerifyArgs) -> Result<()> {
    let Some(dir) = &a.data_dir else {
        return Err(CliError::Usage("--data-dir DIR is required for an offline check".into()));
    };
    let report = offline::verify_data_dir(dir)?;
    output::emit(a.output.output, &report, offline::report_text)?;
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::CheckFailed(format!(
            "damage found in {} of {} stream(s) of {}",
            report.damaged_streams,
            report.streams.len(),
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: u64, hash: Option<&str>, error: Option<&str>) -> ReplicaView {
        ReplicaView {
            node_id: id,
            addr: format!("h:{id}"),
            chain_hash: hash.map(|h| h.repeat(64 / h.len())),
            log_start: id,
            log_end: 100,
            error: error.map(str::to_string),
            reread_from: None,
            records_reread: 0,
            damage: None,
        }
    }

    fn probe_of(offset: u64, replicas: Vec<ReplicaView>) -> Probe {
        Probe { offset, replicas, partition_start: 0, keep_all: true, empty: false }
    }

    fn report(v: PartitionVerdict) -> OnlineReport {
        OnlineReport { topic: "t".into(), sweep: false, partitions: vec![v] }
    }

    /// A probe with nothing compared: each replica `(node, log end, error)`.
    fn empty_probe(replicas: &[(u64, u64, Option<&str>)]) -> Probe {
        let replicas = replicas
            .iter()
            .map(|&(id, end, error)| ReplicaView { log_start: 0, log_end: end, ..replica(id, None, error) })
            .collect();
        Probe { offset: 0, replicas, partition_start: 0, keep_all: true, empty: true }
    }

    #[test]
    fn a_replica_holding_nothing_while_the_others_hold_records_is_missing_them() {
        // Node 3 holds nothing (it lost its log) while nodes 1 and 2 hold offsets [0, 5000).
        let mut v = empty_verdict("t", 0);
        judge_without_records_in_common(
            &empty_probe(&[(1, 5_000, None), (2, 5_000, None), (3, 0, None)]),
            1_000,
            &mut v,
        );
        assert_eq!(v.status, "missing");
        assert_eq!(v.committed_end, Some(5_000));
        assert_eq!(v.missing, vec![Missing { node_id: 3, addr: "h:3".into(), from: 0, to: 5_000, side: "end".into() }]);
        assert_eq!(v.suspects.len(), 1);
        assert_eq!((v.suspects[0].node_id, v.suspects[0].reason.as_str()), (3, "missing [0, 5000)"));
        let verdicts: Vec<(u64, &str)> = v.replicas.iter().map(|r| (r.node_id, r.verdict.as_str())).collect();
        assert_eq!(verdicts, vec![(1, "ok"), (2, "ok"), (3, "missing")]);
        let text = online_text(&report(v));
        assert!(text.contains("MISSING [0, 5000) on node 3"), "{text}");

        // Within --max-lag it is behind, as any lagging replica (the first write has not reached it).
        let mut v = empty_verdict("t", 0);
        judge_without_records_in_common(&empty_probe(&[(1, 40, None), (2, 40, None), (3, 0, None)]), 1_000, &mut v);
        assert_eq!(v.status, "agree");
        assert!(v.suspects.is_empty() && v.missing.is_empty(), "{v:?}");
    }

    #[test]
    fn a_partition_nothing_was_written_to_agrees_unless_a_replica_cannot_answer() {
        let mut v = empty_verdict("t", 0);
        judge_without_records_in_common(&empty_probe(&[(1, 0, None), (2, 0, None), (3, 0, None)]), 0, &mut v);
        assert_eq!((v.status.as_str(), v.committed_end), ("agree", Some(0)));
        let mut v = empty_verdict("t", 0);
        judge_without_records_in_common(&empty_probe(&[(1, 0, None), (2, 0, Some("down")), (3, 0, None)]), 0, &mut v);
        assert_eq!(v.status, "unavailable");
        assert_eq!(v.suspects.iter().map(|s| s.node_id).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn agreement_needs_every_replica_to_answer_the_same() {
        let p = probe_of(9, vec![replica(1, Some("a"), None), replica(2, Some("a"), None)]);
        assert!(p.agrees());
        assert!(p.suspects().is_empty());
        let p = probe_of(9, vec![replica(1, Some("a"), None), replica(2, None, Some("down"))]);
        assert!(!p.agrees());
        assert!(!probe_of(0, vec![]).agrees());
    }

    #[test]
    fn the_minority_replica_is_the_suspect() {
        let p =
            probe_of(9, vec![replica(1, Some("a"), None), replica(2, Some("b"), None), replica(3, Some("a"), None)]);
        assert_eq!(p.majority_hash().map(|h| &h[..1]), Some("a"));
        let s = p.suspects();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].node_id, 2);
        assert!(s[0].reason.contains("differs from the majority"), "{}", s[0].reason);
        let p = probe_of(
            9,
            vec![
                replica(1, Some("a"), None),
                replica(2, None, Some("corruption at offset 7")),
                replica(3, Some("a"), None),
            ],
        );
        let s = p.suspects();
        assert_eq!(s.len(), 1);
        assert!(s[0].reason.contains("corruption at offset 7"));
        assert_eq!(p.common_start(), 3, "replicas that failed do not bound the range");
    }

    #[test]
    fn a_replica_starting_above_the_partition_start_or_far_behind_is_missing_records() {
        let mut late = replica(2, Some("a"), None);
        late.log_start = 40;
        let mut behind = replica(3, Some("a"), None);
        behind.log_start = 0;
        behind.log_end = 60;
        let mut first = replica(1, Some("a"), None);
        first.log_start = 0;
        let p = probe_of(59, vec![first, late, behind, replica(4, None, Some("down"))]);
        assert_eq!(p.committed_end(), 100);
        let m = missing_ranges(&p, 10);
        let got: Vec<(u64, u64, u64, &str)> = m.iter().map(|m| (m.node_id, m.from, m.to, m.side.as_str())).collect();
        assert_eq!(got, vec![(2, 0, 40, "start"), (3, 60, 100, "end")], "an unreachable replica names no range");
        assert_eq!(missing_ranges(&p, 40).len(), 1, "a lag within --max-lag is normal");
    }

    #[test]
    fn a_replica_failing_everywhere_is_unavailable_not_divergent() {
        let detail = probe_of(0, vec![replica(1, Some("a"), None), replica(3, None, Some("does not host t/0"))]);
        assert!(detail.hashes_agree() && !detail.agrees());
        let mut v = empty_verdict("t", 0);
        v.status = "unavailable".into();
        v.checked_offset = Some(40);
        v.probes = 7;
        v.suspects = detail.suspects();
        v.detail = Some(detail);
        let r = report(v);
        let text = online_text(&r);
        assert!(text.contains("cannot answer at any offset"), "{text}");
        assert!(text.contains("replica node 3 (h:3): cannot answer: does not host t/0"), "{text}");
        assert!(!r.ok());
    }

    #[test]
    fn an_unavailable_partition_shows_the_offset_its_errors_were_answered_at() {
        // Checked at the newest offset 40; the search ended at offset 12, where node 3 answered
        // with the error (and nodes 1 and 2 with the hash) the report shows.
        let detail = probe_of(
            12,
            vec![replica(1, Some("a"), None), replica(2, Some("a"), None), replica(3, None, Some("log unreadable"))],
        );
        let mut v = empty_verdict("t", 0);
        v.status = "unavailable".into();
        v.checked_offset = Some(40);
        v.suspects = detail.suspects();
        v.detail = Some(detail);
        assert_eq!(v.shown_offset(), Some(12));
        let text = online_text(&report(v));
        let row: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(row[..2], ["0", "unavailable"], "{text}");
        assert_eq!(row[4], "12", "the offset next to the error is where it was answered:\n{text}");
        assert_eq!(row[6], "a".repeat(12), "{text}");
    }

    #[test]
    fn without_a_majority_every_replica_is_named() {
        let p = probe_of(1, vec![replica(1, Some("a"), None), replica(2, Some("b"), None)]);
        assert_eq!(p.suspects().len(), 2);
    }

    #[test]
    fn the_text_report_names_replica_and_offset() {
        let detail = probe_of(
            17,
            vec![replica(1, Some("a"), None), replica(2, None, Some("CRC mismatch")), replica(3, Some("a"), None)],
        );
        let mut v = empty_verdict("t", 0);
        v.status = "disagree".into();
        v.checked_offset = Some(40);
        v.first_divergent_offset = Some(17);
        v.suspects = detail.suspects();
        v.detail = Some(detail);
        let r = report(v);
        assert!(!r.ok());
        let text = online_text(&r);
        assert!(text.contains("replicas first differ at offset 17"), "{text}");
        assert!(text.contains("replica node 2 (h:2) at offset 17: cannot answer: CRC mismatch"), "{text}");
        assert!(text.contains("FAILED: 1 of 1"), "{text}");
    }

    #[test]
    fn the_text_report_names_damage_and_missing_ranges_per_replica() {
        let newest = probe_of(99, vec![replica(1, Some("a"), None), replica(2, Some("a"), None)]);
        let mut v = empty_verdict("t", 0);
        v.status = "damaged".into();
        v.damaged = vec![Damaged {
            node_id: 1,
            addr: "h:1".into(),
            damage: Damage {
                offset: Some(42),
                reason: "CRC mismatch".into(),
                file: "segment_000001.log".into(),
                position: 4242,
            },
        }];
        v.missing = vec![Missing { node_id: 2, addr: "h:2".into(), from: 0, to: 2, side: "start".into() }];
        let reread = Reread::from([(2, (2, 100, 98))]);
        v.replicas = replica_verdicts(&newest, &newest, &v, &reread);
        assert_eq!(v.replicas[0].verdict, "damaged");
        assert_eq!(v.replicas[1].verdict, "missing");
        assert_eq!(v.replicas[1].reread, Some((2, 100)));
        let text = online_text(&report(v));
        assert!(
            text.contains("t/0: DAMAGED at offset 42 on node 1 (h:1): CRC mismatch (segment_000001.log byte 4242)"),
            "{text}"
        );
        assert!(
            text.contains("t/0: MISSING [0, 2) on node 2 (h:2): its log starts at 2, the partition at 0"),
            "{text}"
        );
        assert!(text.contains("[2, 100) 98 records"), "{text}");
    }
}
