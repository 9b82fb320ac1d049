//! `shale verify`: online (replicas agree on chain hashes) and offline (`--data-dir`).

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
}

/// Every replica's answer at one offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The offset compared.
    pub offset: u64,
    /// Per replica.
    pub replicas: Vec<ReplicaView>,
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
            })
            .collect();
        replicas.sort_by_key(|r| r.node_id);
        Self { offset: r.offset, replicas }
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
    /// is no majority.
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
                    (None, None, _) => "gave no chain hash".into(),
                    _ => return None,
                };
                Some(Suspect { node_id: r.node_id, addr: r.addr.clone(), reason })
            })
            .collect()
    }

    /// The highest log start of the replicas that answered (the start of the common range).
    pub fn common_start(&self) -> u64 {
        self.replicas.iter().filter(|r| r.error.is_none()).map(|r| r.log_start).max().unwrap_or(0)
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

/// The verdict on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionVerdict {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// `agree`, `disagree` (replicas differ from an offset on), `unavailable` (some replicas
    /// cannot answer at any offset) or `error` (the check itself failed).
    pub status: String,
    /// The newest offset compared (where every replica agreed, when they do).
    pub checked_offset: Option<u64>,
    /// The first offset where the replicas part.
    pub first_divergent_offset: Option<u64>,
    /// Probes sent (each asks every replica).
    pub probes: u32,
    /// Replicas named as differing.
    pub suspects: Vec<Suspect>,
    /// The replicas' answers at the decisive offset.
    pub detail: Option<Probe>,
    /// Why the partition could not be verified at all.
    pub error: Option<String>,
}

/// The whole online report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OnlineReport {
    /// Topic.
    pub topic: String,
    /// Per partition.
    pub partitions: Vec<PartitionVerdict>,
}

impl OnlineReport {
    /// True when every partition agrees.
    pub fn ok(&self) -> bool {
        self.partitions.iter().all(|p| p.status == "agree")
    }
}

/// The human report.
pub fn online_text(r: &OnlineReport) -> String {
    let mut t = Table::new(["partition", "status", "offset", "replicas", "chain hash"]);
    for p in &r.partitions {
        let offset = p.first_divergent_offset.or(p.checked_offset).map_or_else(|| "-".into(), |o| o.to_string());
        let (replicas, hash) = match &p.detail {
            Some(d) => (
                d.replicas.iter().map(|x| x.node_id.to_string()).collect::<Vec<_>>().join(","),
                d.majority_hash().map_or_else(|| "-".into(), |h| h[..12].to_string()),
            ),
            None => ("-".into(), "-".into()),
        };
        t.row([p.partition.to_string(), p.status.clone(), offset, replicas, hash]);
    }
    let mut out = format!("TOPIC {}\n{}", r.topic, t.render());
    for p in r.partitions.iter().filter(|p| p.status != "agree") {
        out.push('\n');
        match (&p.error, p.first_divergent_offset) {
            (Some(e), _) => out.push_str(&format!("{}/{}: cannot verify: {e}\n", r.topic, p.partition)),
            (None, Some(o)) => {
                out.push_str(&format!("{}/{}: replicas first differ at offset {o}\n", r.topic, p.partition));
                for s in &p.suspects {
                    out.push_str(&format!("  replica node {} ({}) at offset {o}: {}\n", s.node_id, s.addr, s.reason));
                }
                if let Some(d) = &p.detail {
                    for x in &d.replicas {
                        let answer = x.chain_hash.clone().or_else(|| x.error.clone()).unwrap_or_default();
                        out.push_str(&format!("    node {}: {answer}\n", x.node_id));
                    }
                }
            }
            (None, None) => {
                out.push_str(&format!(
                    "{}/{}: some replicas cannot answer at any offset (unreachable, or their log cannot be read)\n",
                    r.topic, p.partition
                ));
                for s in &p.suspects {
                    out.push_str(&format!("  replica node {} ({}): {}\n", s.node_id, s.addr, s.reason));
                }
                out.push_str("  check it with `shale cluster status` and, with the node stopped, `shale verify --data-dir DIR`\n");
            }
        }
    }
    out.push_str(&if r.ok() {
        format!("\nOK: {} partition(s), every replica agrees\n", r.partitions.len())
    } else {
        let bad = r.partitions.iter().filter(|p| p.status != "agree").count();
        format!("\nFAILED: {bad} of {} partition(s) do not agree\n", r.partitions.len())
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

async fn verify_partition(ctx: &Ctx, a: &VerifyArgs, topic: &str, partition: u32) -> PartitionVerdict {
    let mut verdict = PartitionVerdict {
        topic: topic.to_string(),
        partition,
        status: "agree".into(),
        checked_offset: None,
        first_divergent_offset: None,
        probes: 0,
        suspects: Vec::new(),
        detail: None,
        error: None,
    };
    match verify_partition_inner(ctx, a, topic, partition, &mut verdict).await {
        Ok(()) => {}
        Err(e) => {
            verdict.status = "error".into();
            verdict.error = Some(e.to_string());
        }
    }
    verdict
}

async fn verify_partition_inner(
    ctx: &Ctx,
    a: &VerifyArgs,
    topic: &str,
    partition: u32,
    v: &mut PartitionVerdict,
) -> Result<()> {
    let newest = probe(ctx, topic, partition, a.offset).await?;
    v.probes += 1;
    v.checked_offset = Some(newest.offset);
    let lo = newest.common_start();
    // The offset range where the first divergence must lie, and the probe known to disagree.
    let mut bad: Option<(u64, u64, Probe)> = None;
    if !newest.agrees() {
        bad = Some((lo, newest.offset, newest.clone()));
    } else if a.sweep {
        let mut after_good = lo;
        for point in search::sweep_points(lo, newest.offset, a.step) {
            let p =
                if point == newest.offset { newest.clone() } else { probe(ctx, topic, partition, Some(point)).await? };
            v.probes += u32::from(point != newest.offset);
            if !p.agrees() {
                bad = Some((after_good, point, p));
                break;
            }
            after_good = point + 1;
        }
    }
    let Some((lo, hi, at_hi)) = bad else {
        v.detail = Some(newest);
        return Ok(());
    };
    let mut probes = 0u32;
    let (first, answer) = search::first_disagreement(lo, hi, |o| {
        probes += 1;
        async move {
            let p = probe(ctx, topic, partition, Some(o)).await?;
            Ok::<_, CliError>((p.agrees(), p))
        }
    })
    .await?;
    v.probes += probes;
    let decisive = answer.unwrap_or(at_hi);
    v.suspects = decisive.suspects();
    if first == lo && decisive.hashes_agree() {
        // The answering replicas agree from the very first offset; the others fail everywhere:
        // they are unreachable or cannot read their log at all, which names no offset.
        v.status = "unavailable".into();
    } else {
        v.status = "disagree".into();
        v.first_divergent_offset = Some(first);
    }
    v.detail = Some(decisive);
    Ok(())
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
    let report = OnlineReport { topic: topic.clone(), partitions: verdicts };
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
    let report = offline::verify_data_dir(dir, a.scratch_dir.as_deref())?;
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
        }
    }

    #[test]
    fn agreement_needs_every_replica_to_answer_the_same() {
        let p = Probe { offset: 9, replicas: vec![replica(1, Some("a"), None), replica(2, Some("a"), None)] };
        assert!(p.agrees());
        assert!(p.suspects().is_empty());
        let p = Probe { offset: 9, replicas: vec![replica(1, Some("a"), None), replica(2, None, Some("down"))] };
        assert!(!p.agrees());
        assert!(!Probe { offset: 0, replicas: vec![] }.agrees());
    }

    #[test]
    fn the_minority_replica_is_the_suspect() {
        let p = Probe {
            offset: 9,
            replicas: vec![replica(1, Some("a"), None), replica(2, Some("b"), None), replica(3, Some("a"), None)],
        };
        assert_eq!(p.majority_hash().map(|h| &h[..1]), Some("a"));
        let s = p.suspects();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].node_id, 2);
        assert!(s[0].reason.contains("differs from the majority"), "{}", s[0].reason);
        let p = Probe {
            offset: 9,
            replicas: vec![
                replica(1, Some("a"), None),
                replica(2, None, Some("corruption at offset 7")),
                replica(3, Some("a"), None),
            ],
        };
        let s = p.suspects();
        assert_eq!(s.len(), 1);
        assert!(s[0].reason.contains("corruption at offset 7"));
        assert_eq!(p.common_start(), 3, "replicas that failed do not bound the range");
    }

    #[test]
    fn a_replica_failing_everywhere_is_unavailable_not_divergent() {
        let detail = Probe {
            offset: 0,
            replicas: vec![replica(1, Some("a"), None), replica(3, None, Some("does not host t/0"))],
        };
        assert!(detail.hashes_agree() && !detail.agrees());
        let r = OnlineReport {
            topic: "t".into(),
            partitions: vec![PartitionVerdict {
                topic: "t".into(),
                partition: 0,
                status: "unavailable".into(),
                checked_offset: Some(40),
                first_divergent_offset: None,
                probes: 7,
                suspects: detail.suspects(),
                detail: Some(detail),
                error: None,
            }],
        };
        let text = online_text(&r);
        assert!(text.contains("cannot answer at any offset"), "{text}");
        assert!(text.contains("replica node 3 (h:3): cannot answer: does not host t/0"), "{text}");
        assert!(!r.ok());
    }

    #[test]
    fn without_a_majority_every_replica_is_named() {
        let p = Probe { offset: 1, replicas: vec![replica(1, Some("a"), None), replica(2, Some("b"), None)] };
        assert_eq!(p.suspects().len(), 2);
    }

    #[test]
    fn the_text_report_names_replica_and_offset() {
        let detail = Probe {
            offset: 17,
            replicas: vec![
                replica(1, Some("a"), None),
                replica(2, None, Some("CRC mismatch")),
                replica(3, Some("a"), None),
            ],
        };
        let r = OnlineReport {
            topic: "t".into(),
            partitions: vec![PartitionVerdict {
                topic: "t".into(),
                partition: 0,
                status: "disagree".into(),
                checked_offset: Some(40),
                first_divergent_offset: Some(17),
                probes: 6,
                suspects: detail.suspects(),
                detail: Some(detail),
                error: None,
            }],
        };
        assert!(!r.ok());
        let text = online_text(&r);
        assert!(text.contains("replicas first differ at offset 17"), "{text}");
        assert!(text.contains("replica node 2 (h:2) at offset 17: cannot answer: CRC mismatch"), "{text}");
        assert!(text.contains("FAILED: 1 of 1"), "{text}");
    }
}
