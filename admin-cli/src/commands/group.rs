//! `shale group list|describe|reset-offsets|delete`.

use std::collections::BTreeMap;

use serde::Serialize;
use shale_client::ConsumerConfig;

use crate::cli::{GroupCommand, ResetOffsetsArgs};
use crate::commands::{partition_bounds, select_partitions};
use crate::context::Ctx;
use crate::error::Result;
use crate::output::{self, Table};

/// One partition of `group describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupPartitionView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset the group reads.
    pub committed_offset: u64,
    /// One past the last committed record.
    pub log_end: u64,
    /// `log_end - committed_offset`.
    pub lag: u64,
}

/// One member of `group describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupMemberView {
    /// Member id.
    pub member_id: String,
    /// Where its client connects from.
    pub client_addr: String,
    /// The epoch of its assignment.
    pub member_epoch: u64,
    /// Its subscriptions (`prefix*` for a prefix).
    pub subscriptions: Vec<String>,
    /// Session timeout, ms.
    pub session_timeout_ms: u32,
    /// What it reads, `topic/partition`.
    pub assigned: Vec<String>,
    /// What it is giving up, `topic/partition`.
    pub revoking: Vec<String>,
}

/// `group describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Group name.
    pub group: String,
    /// `empty`, `reconciling`, `stable` (empty string: only offsets from before coordination).
    pub state: String,
    /// The group epoch (bumped on every change).
    pub epoch: u64,
    /// `uniform` or `range`.
    pub assignor: String,
    /// Members.
    pub members: Vec<GroupMemberView>,
    /// Per partition.
    pub partitions: Vec<GroupPartitionView>,
    /// Sum of the lags.
    pub total_lag: u64,
}

/// Where `reset-offsets` moves a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start.
    Earliest,
    /// The log end.
    Latest,
    /// This offset.
    Offset(u64),
    /// The committed offset (else the log start) plus this.
    Shift(i64),
    /// The first record at or after this time (ms since the Unix epoch); looked up per partition
    /// ([`shale_client::Consumer::offset_for_time`]) and resolved as that offset.
    Time(u64),
}

impl ResetTarget {
    /// From the flags (clap guarantees exactly one is set).
    pub fn from_args(a: &ResetOffsetsArgs) -> Self {
        if a.to_earliest {
            ResetTarget::Earliest
        } else if a.to_latest {
            ResetTarget::Latest
        } else if let Some(o) = a.to_offset {
            ResetTarget::Offset(o)
        } else if let Some(t) = a.to_time {
            ResetTarget::Time(t)
        } else {
            ResetTarget::Shift(a.shift_by.unwrap_or(0))
        }
    }

    /// The new committed offset, always within `[log_start, log_end]`. A [`ResetTarget::Time`]
    /// must be looked up first (it resolves as the log end here).
    pub fn resolve(self, committed: Option<u64>, log_start: u64, log_end: u64) -> u64 {
        let wanted = match self {
            ResetTarget::Earliest => log_start,
            ResetTarget::Latest | ResetTarget::Time(_) => log_end,
            ResetTarget::Offset(o) => o,
            ResetTarget::Shift(d) => {
                let base = committed.unwrap_or(log_start);
                if d >= 0 { base.saturating_add(d.unsigned_abs()) } else { base.saturating_sub(d.unsigned_abs()) }
            }
        };
        wanted.clamp(log_start, log_end.max(log_start))
    }
}

/// One row of the reset plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset before (none if the group never committed here).
    pub current_offset: Option<u64>,
    /// Committed offset after.
    pub new_offset: u64,
    /// First offset held.
    pub log_start: u64,
    /// Log end.
    pub log_end: u64,
}

/// The `reset-offsets` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetPlan {
    /// Group.
    pub group: String,
    /// Applied, or only planned.
    pub executed: bool,
    /// Rows.
    pub partitions: Vec<ResetRow>,
}

fn describe_table(v: &GroupView) -> String {
    let mut t = Table::new(["topic", "partition", "committed", "log end", "lag"]);
    for p in &v.partitions {
        t.row([
            p.topic.clone(),
            p.partition.to_string(),
            p.committed_offset.to_string(),
            p.log_end.to_string(),
            p.lag.to_string(),
        ]);
    }
    let mut m = Table::new(["member", "client", "epoch", "assigned", "revoking"]);
    for member in &v.members {
        let list = |l: &[String]| if l.is_empty() { "-".to_string() } else { l.join(",") };
        m.row([
            member.member_id.clone(),
            member.client_addr.clone(),
            member.member_epoch.to_string(),
            list(&member.assigned),
            list(&member.revoking),
        ]);
    }
    let state = if v.state.is_empty() { "-" } else { v.state.as_str() };
    let assignor = if v.assignor.is_empty() { "-" } else { v.assignor.as_str() };
    format!(
        "GROUP {} (state {state}, epoch {}, assignor {assignor}, {} member(s), total lag {})\n{}{}",
        v.group,
        v.epoch,
        v.members.len(),
        v.total_lag,
        if v.members.is_empty() { String::new() } else { format!("{}\n", m.render()) },
        t.render()
    )
}

fn plan_table(p: &ResetPlan) -> String {
    let mut t = Table::new(["topic", "partition", "current", "new", "log start", "log end"]);
    for r in &p.partitions {
        t.row([
            r.topic.clone(),
            r.partition.to_string(),
            r.current_offset.map_or_else(|| "-".into(), |o| o.to_string()),
            r.new_offset.to_string(),
            r.log_start.to_string(),
            r.log_end.to_string(),
        ]);
    }
    t.render()
}

/// Runs a `group` command.
pub async fn run(ctx: &Ctx, command: GroupCommand) -> Result<()> {
    match command {
        GroupCommand::List(o) => {
            let mut groups = ctx.client()?.admin().list_groups().await.map_err(|e| ctx.err("list groups", e))?;
            groups.sort();
            output::emit(o.output, &groups, |g| {
                let mut t = Table::new(["group"]);
                for name in g {
                    t.row([name.clone()]);
                }
                t.render()
            })
        }
        GroupCommand::Describe { group, output } => {
            let view = describe(ctx, &group).await?;
            output::emit(output.output, &view, describe_table)
        }
        GroupCommand::ResetOffsets(a) => reset(ctx, a).await,
        GroupCommand::Delete { group } => {
            ctx.client()?
                .admin()
                .delete_group(&group)
                .await
                .map_err(|e| ctx.err(format!("delete group {group}"), e))?;
            eprintln!("deleted group {group}");
            Ok(())
        }
    }
}

async fn describe(ctx: &Ctx, group: &str) -> Result<GroupView> {
    let d =
        ctx.client()?.admin().describe_group(group).await.map_err(|e| ctx.err(format!("describe group {group}"), e))?;
    let mut partitions: Vec<GroupPartitionView> = d
        .partitions
        .iter()
        .map(|p| GroupPartitionView {
            topic: p.topic.clone(),
            partition: p.partition,
            committed_offset: p.committed_offset,
            log_end: p.log_end,
            lag: p.lag,
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let names = |l: &[shale_client::proto::TopicPartition]| -> Vec<String> {
        l.iter().map(|p| format!("{}/{}", p.topic, p.partition)).collect()
    };
    let members = d
        .members
        .iter()
        .map(|m| GroupMemberView {
            member_id: m.member_id.clone(),
            client_addr: m.client_addr.clone(),
            member_epoch: m.member_epoch,
            subscriptions: m
                .subscriptions
                .iter()
                .filter_map(|s| match &s.kind {
                    Some(shale_client::proto::group_subscription::Kind::Topic(t)) => Some(t.clone()),
                    Some(shale_client::proto::group_subscription::Kind::Prefix(p)) => Some(format!("{p}*")),
                    None => None,
                })
                .collect(),
            session_timeout_ms: m.session_timeout_ms,
            assigned: names(&m.assigned),
            revoking: names(&m.revoking),
        })
        .collect();
    Ok(GroupView {
        group: d.group,
        state: d.state,
        epoch: d.epoch,
        assignor: d.assignor,
        members,
        partitions,
        total_lag: d.total_lag,
    })
}

async fn reset(ctx: &Ctx, a: ResetOffsetsArgs) -> Result<()> {
    let client = ctx.client()?;
    let target = ResetTarget::from_args(&a);
    let partitions = select_partitions(&client, &a.topic, &a.partitions)
        .await
        .map_err(|e| ctx.err(format!("read topic {}", a.topic), e))?;
    let current: BTreeMap<u32, u64> = describe(ctx, &a.group)
        .await?
        .partitions
        .into_iter()
        .filter(|p| p.topic == a.topic)
        .map(|p| (p.partition, p.committed_offset))
        .collect();
    let mut rows = Vec::new();
    for p in partitions {
        let (log_start, log_end) = partition_bounds(&client, &a.topic, p)
            .await
            .map_err(|e| ctx.err(format!("read the bounds of {}/{p}", a.topic), e))?;
        let committed = current.get(&p).copied();
        let target = match target {
            ResetTarget::Time(ts) => match client
                .consumer(ConsumerConfig::default())
                .offset_for_time(&a.topic, p, ts)
                .await
                .map_err(|e| ctx.err(format!("find the offset for time {ts} in {}/{p}", a.topic), e))?
            {
                Some(offset) => ResetTarget::Offset(offset),
                None => ResetTarget::Latest,
            },
            other => other,
        };
        rows.push(ResetRow {
            topic: a.topic.clone(),
            partition: p,
            current_offset: committed,
            new_offset: target.resolve(committed, log_start, log_end),
            log_start,
            log_end,
        });
    }
    if a.execute {
        let consumer = client.consumer(ConsumerConfig { group: Some(a.group.clone()), ..ConsumerConfig::default() });
        let offsets: Vec<(String, u32, u64)> =
            rows.iter().map(|r| (r.topic.clone(), r.partition, r.new_offset)).collect();
        consumer
            .commit_offsets(&offsets)
            .await
            .map_err(|e| ctx.err(format!("commit offsets for group {}", a.group), e))?;
        eprintln!("reset {} partition offset(s) of group {}", rows.len(), a.group);
    } else {
        eprintln!("dry run: nothing changed; add --execute to apply this plan");
    }
    let plan = ResetPlan { group: a.group, executed: a.execute, partitions: rows };
    output::emit(a.output.output, &plan, plan_table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_within_the_log() {
        assert_eq!(ResetTarget::Earliest.resolve(Some(50), 10, 100), 10);
        assert_eq!(ResetTarget::Latest.resolve(Some(50), 10, 100), 100);
        assert_eq!(ResetTarget::Offset(5).resolve(None, 10, 100), 10);
        assert_eq!(ResetTarget::Offset(500).resolve(None, 10, 100), 100);
        assert_eq!(ResetTarget::Offset(42).resolve(None, 10, 100), 42);
        assert_eq!(ResetTarget::Shift(-20).resolve(Some(50), 10, 100), 30);
        assert_eq!(ResetTarget::Shift(-200).resolve(Some(50), 10, 100), 10);
        assert_eq!(ResetTarget::Shift(5).resolve(None, 10, 100), 15);
        assert_eq!(ResetTarget::Shift(i64::MAX).resolve(Some(u64::MAX - 1), 10, 100), 100);
        assert_eq!(ResetTarget::Shift(i64::MIN).resolve(Some(3), 0, 100), 0);
    }

    #[test]
    fn plan_table_marks_missing_commits() {
        let plan = ResetPlan {
            group: "g".into(),
            executed: false,
            partitions: vec![ResetRow {
                topic: "t".into(),
                partition: 0,
                current_offset: None,
                new_offset: 3,
                log_start: 3,
                log_end: 9,
            }],
        };
        let text = plan_table(&plan);
        assert!(
            text.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>() == ["t", "0", "-", "3", "3", "9"],
            "{text}"
        );
    }
}
