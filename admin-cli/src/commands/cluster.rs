//! `shale cluster status|add-node|remove-node|transfer-leader`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::{self, ClusterStatusRequest};
use shale_client::{Client, ClientError};

use crate::cli::ClusterCommand;
use crate::context::Ctx;
use crate::error::{CliError, Result};
use crate::output::{self, Table, id_list};

/// How long `cluster status` waits for each member's own answer.
pub const MEMBER_PROBE_TIMEOUT_MS: u64 = 2_000;

/// The whole `cluster status` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The node that answered the first request.
    pub answered_by: u64,
    /// Every member with its health.
    pub members: Vec<MemberView>,
    /// The metadata group, as its leader sees it (else as any member does).
    pub meta: Option<GroupView>,
    /// Every partition group, each as its leader sees it (else as any replica does).
    pub partitions: Vec<GroupView>,
    /// Damaged log ranges each member reports of its own replicas (not yet repaired).
    pub damaged: Vec<DamageView>,
}

/// One damaged range of one replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamageView {
    /// `meta` or `topic/partition`.
    pub group: String,
    /// The node whose copy is damaged.
    pub node: u64,
    /// First damaged offset.
    pub from: u64,
    /// One past the last damaged offset.
    pub to: u64,
    /// Segment file.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

impl DamageView {
    fn from_proto(d: &proto::DamagedRange) -> Self {
        Self {
            group: d.name.clone(),
            node: d.node_id,
            from: d.from,
            to: d.to,
            file: d.file.clone(),
            reason: d.reason.clone(),
        }
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// Node id.
    pub id: u64,
    /// Its client address (the client listener, as advertised): where clients reach it.
    pub addr: String,
    /// Its internal address (Raft, forwarding: where other nodes reach it); the same as `addr`
    /// when the node serves both on one listener.
    pub internal_addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// `up` when it answered a status request directly, else `unreachable`.
    pub health: String,
    /// Why it did not answer.
    pub error: Option<String>,
    /// Groups (metadata and partitions) it leads.
    pub leader_of: u32,
}

/// One Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// `meta` or `topic/partition`.
    pub name: String,
    /// Topic ("" for the metadata group).
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Leader node id (0: none).
    pub leader: u64,
    /// Replica node ids.
    pub replicas: Vec<u64>,
    /// Raft term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub apply_index: u64,
    /// Partition log end.
    pub log_end: u64,
    /// Per replica lag behind the leader's log, when the reporter is the leader.
    pub lag: Vec<ReplicaLagView>,
    /// The node whose view this is.
    pub reported_by: u64,
}

/// One replica's replication progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplicaLagView {
    /// Replica node id.
    pub node: u64,
    /// Last index the leader knows it holds.
    pub matched_index: Option<u64>,
    /// Entries behind the leader.
    pub lag: u64,
}

impl GroupView {
    /// From the wire form, as reported by `reporter`.
    pub fn from_proto(g: &proto::GroupStatus, reporter: u64) -> Self {
        Self {
            name: g.name.clone(),
            topic: g.topic.clone(),
            partition: g.partition,
            leader: g.leader_id,
            replicas: g.replicas.clone(),
            term: g.term,
            last_log_index: g.last_log_index,
            commit_index: g.commit_index,
            apply_index: g.apply_index,
            log_end: g.log_end,
            lag: g
                .progress
                .iter()
                .map(|p| ReplicaLagView { node: p.node_id, matched_index: p.matched_index, lag: p.lag })
                .collect(),
            reported_by: reporter,
        }
    }

    /// True when this view is the group leader's own.
    pub fn from_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.reported_by
    }

    /// The largest lag of any replica, when known.
    pub fn max_lag(&self) -> Option<u64> {
        self.lag.iter().filter(|l| l.matched_index.is_some()).map(|l| l.lag).max()
    }
}

/// Keeps, per group, the best view: the leader's own, else the one with the highest term
/// (then the highest commit index).
pub fn merge_views(views: impl IntoIterator<Item = GroupView>) -> Vec<GroupView> {
    let mut best: BTreeMap<(String, u32), GroupView> = BTreeMap::new();
    for v in views {
        let key = (v.topic.clone(), v.partition);
        let better = match best.get(&key) {
            None => true,
            Some(cur) => (v.from_leader(), v.term, v.commit_index) > (cur.from_leader(), cur.term, cur.commit_index),
        };
        if better {
            best.insert(key, v);
        }
    }
    best.into_values().collect()
}

/// Counts groups led by each node.
fn leader_counts(meta: Option<&GroupView>, partitions: &[GroupView]) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for g in meta.into_iter().chain(partitions) {
        if g.leader != 0 {
            *counts.entry(g.leader).or_insert(0) += 1;
        }
    }
    counts
}

/// The `cluster status` text.
pub fn status_table(v: &ClusterView) -> String {
    let mut members = Table::new(["id", "addr", "internal addr", "role", "health", "leads"]);
    for m in &v.members {
        let health = match &m.error {
            Some(e) => format!("{} ({e})", m.health),
            None => m.health.clone(),
        };
        members.row([
            m.id.to_string(),
            m.addr.clone(),
            m.internal_addr.clone(),
            m.role.clone(),
            health,
            m.leader_of.to_string(),
        ]);
    }
    let mut groups = Table::new(["group", "leader", "replicas", "term", "commit", "applied", "log end", "lag"]);
    for g in v.meta.iter().chain(&v.partitions) {
        let lag = if g.from_leader() {
            g.lag
                .iter()
                .map(|l| match l.matched_index {
                    Some(_) => format!("{}:{}", l.node, l.lag),
                    None => format!("{}:?", l.node),
                })
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            "unknown (leader did not answer)".to_string()
        };
        let leader = if g.leader == 0 { "none".to_string() } else { g.leader.to_string() };
        groups.row([
            g.name.clone(),
            leader,
            id_list(&g.replicas),
            g.term.to_string(),
            g.commit_index.to_string(),
            g.apply_index.to_string(),
            if g.topic.is_empty() { "-".to_string() } else { g.log_end.to_string() },
            lag,
        ]);
    }
    let mut out =
        format!("MEMBERS (answered by node {})\n{}\nGROUPS\n{}", v.answered_by, members.render(), groups.render());
    if !v.damaged.is_empty() {
        let mut damaged = Table::new(["group", "node", "offsets", "file", "reason"]);
        for d in &v.damaged {
            damaged.row([
                d.group.clone(),
                d.node.to_string(),
                format!("{}..{}", d.from, d.to),
                d.file.clone(),
                d.reason.clone(),
            ]);
        }
        out.push_str(&format!("\nDAMAGED (not served; repairing from the other replicas)\n{}", damaged.render()));
    }
    out
}

/// A failed call's status with its causes: a transport error's own message is often no more than
/// "transport error" or "dns error"; its causes say which name did not resolve, or why.
fn with_causes(status: &tonic::Status) -> String {
    let mut text = ClientError::from_status(status.clone()).to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        let line = c.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = c.source();
    }
    text
}

/// Asks one member directly for its status (no retries, no forwarding); `Err` says why it did not
/// answer.
async fn probe(client: &Client, addr: &str) -> std::result::Result<proto::ClusterStatusResponse, String> {
    let channel = client.channel(addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(ClusterStatusRequest {});
    req.set_timeout(Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS));
    let mut admin = AdminClient::new(channel);
    match tokio::time::timeout(Duration::from_millis(MEMBER_PROBE_TIMEOUT_MS), admin.cluster_status(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(with_causes(&status)),
        Err(_) => Err(format!("no answer within {MEMBER_PROBE_TIMEOUT_MS} ms")),
    }
}

/// The members that did not answer their own status probe, as the error `cluster status` exits
/// with (code 3) after printing its report: each member's id, address and error.
pub fn unanswered(view: &ClusterView) -> Option<CliError> {
    let silent: Vec<String> = view
        .members
        .iter()
        .filter_map(|m| m.error.as_ref().map(|e| format!("\n  node {} at {}: {e}", m.id, m.addr)))
        .collect();
    if silent.is_empty() {
        return None;
    }
    Some(CliError::Incomplete {
        message: format!(
            "cluster status is incomplete: {} of {} members did not answer (their view of the groups, and the lag \
             of groups they lead, is missing from the report):{}",
            silent.len(),
            view.members.len(),
            silent.concat()
        ),
        hint: "each member is asked at the address it advertises; from outside the cluster's network those names \
               may not resolve or be reachable (Docker Compose nodes advertise node-N:7001: run the CLI inside the \
               network, see deploy/README.md); otherwise check that the node runs"
            .into(),
    })
}

/// Gathers the cluster's status from every member.
pub async fn gather(ctx: &Ctx) -> Result<ClusterView> {
    let client = ctx.client()?;
    let first = client.admin().cluster_status().await.map_err(|e| ctx.err("read cluster status", e))?;
    let probes = futures::future::join_all(first.members.iter().map(|m| probe(&client, &m.addr))).await;
    let mut metas = Vec::new();
    let mut partitions = Vec::new();
    let mut members = Vec::new();
    let mut damaged: BTreeMap<(u64, String, u64), DamageView> = BTreeMap::new();
    let mut note_damage = |status: &proto::ClusterStatusResponse| {
        for d in status.damaged.iter().map(DamageView::from_proto) {
            damaged.insert((d.node, d.group.clone(), d.from), d);
        }
    };
    note_damage(&first);
    for (m, answer) in first.members.iter().zip(probes) {
        let (health, error) = match answer {
            Ok(status) => {
                note_damage(&status);
                metas.extend(status.meta.as_ref().map(|g| GroupView::from_proto(g, status.node_id)));
                partitions.extend(status.partitions.iter().map(|g| GroupView::from_proto(g, status.node_id)));
                ("up".to_string(), None)
            }
            Err(e) => ("unreachable".to_string(), Some(e)),
        };
        members.push(MemberView {
            id: m.id,
            addr: m.addr.clone(),
            internal_addr: internal_addr(m),
            role: m.role.clone(),
            health,
            error,
            leader_of: 0,
        });
    }
    // The first answer counts too (its node may not be listed, e.g. while it joins).
    metas.extend(first.meta.as_ref().map(|g| GroupView::from_proto(g, first.node_id)));
    partitions.extend(first.partitions.iter().map(|g| GroupView::from_proto(g, first.node_id)));
    let meta = merge_views(metas).into_iter().next();
    let partitions = merge_views(partitions);
    let counts = leader_counts(meta.as_ref(), &partitions);
    for m in &mut members {
        m.leader_of = counts.get(&m.id).copied().unwrap_or(0);
    }
    members.sort_by_key(|m| m.id);
    let damaged = damaged.into_values().collect();
    Ok(ClusterView { answered_by: first.node_id, members, meta, partitions, damaged })
}

/// A member's internal address; a node that reports none (an older one) serves both on `addr`.
fn internal_addr(m: &proto::NodeInfo) -> String {
    if m.internal_addr.is_empty() { m.addr.clone() } else { m.internal_addr.clone() }
}

/// The members table of `add-node` / `remove-node`.
fn members_table(members: &[MemberRow]) -> String {
    let mut t = Table::new(["id", "addr", "internal addr", "role"]);
    for m in members {
        t.row([m.id.to_string(), m.addr.clone(), m.internal_addr.clone(), m.role.clone()]);
    }
    t.render()
}

/// A member as `add-node` / `remove-node` print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    /// Node id.
    pub id: u64,
    /// Its client address.
    pub addr: String,
    /// Its internal address (Raft, forwarding).
    pub internal_addr: String,
    /// `voter` or `learner`.
    pub role: String,
}

fn rows(members: &[proto::NodeInfo]) -> Vec<MemberRow> {
    let mut v: Vec<MemberRow> = members
        .iter()
        .map(|m| MemberRow { id: m.id, addr: m.addr.clone(), internal_addr: internal_addr(m), role: m.role.clone() })
        .collect();
    v.sort_by_key(|m| m.id);
    v
}

/// Runs a `cluster` command.
pub async fn run(ctx: &Ctx, command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status(o) => {
            let view = gather(ctx).await?;
            output::emit(o.output, &view, status_table)?;
            unanswered(&view).map_or(Ok(()), Err)
        }
        ClusterCommand::AddNode { node_id, addr, client_addr, output } => {
            let admin = ctx.client()?.admin();
            let members = admin
                .add_node_with_client_addr(node_id, &addr, client_addr.as_deref().unwrap_or(""))
                .await
                .map_err(|e| ctx.err(format!("add node {node_id}"), e))?;
            eprintln!(
                "added node {node_id} ({addr}): it caught up and votes; under-replicated partitions take it as a replica"
            );
            output::emit(output.output, &rows(&members), |m| members_table(m))
        }
        ClusterCommand::RemoveNode { node_id, output } => {
            let admin = ctx.client()?.admin();
            let members = admin.remove_node(node_id).await.map_err(|e| ctx.err(format!("remove node {node_id}"), e))?;
            eprintln!(
                "removed node {node_id}; its replicas move to other members (each new replica catches up before the old one leaves)"
            );
            // With no spare member a partition keeps fewer replicas than its factor: say which.
            match admin.list_topics().await {
                Ok(topics) => {
                    for line in under_replicated(&topics) {
                        eprintln!("warning: {line}");
                    }
                }
                Err(e) => eprintln!("warning: cannot list topics to check replication: {e}"),
            }
            output::emit(output.output, &rows(&members), |m| members_table(m))
        }
        ClusterCommand::TransferLeader { topic, partition, to } => {
            let admin = ctx.client()?.admin();
            let leader = admin
                .transfer_leader(&topic, partition, to)
                .await
                .map_err(|e| ctx.err(format!("transfer leadership of {topic}/{partition} to node {to}"), e))?;
            output::print_stdout(&format!("{topic}/{partition}: leader is now node {leader}\n"))
        }
    }
}

/// One line per partition that has fewer replicas than its topic's replication factor.
pub fn under_replicated(topics: &[proto::TopicInfo]) -> Vec<String> {
    let mut lines = Vec::new();
    for t in topics {
        let factor = t.config.as_ref().map_or(0, |c| c.replication_factor);
        for p in &t.partitions {
            if p.replicas.len() < factor as usize {
                lines.push(format!(
                    "{}/{} is under-replicated: {} of {} replicas ({}); add a node to restore it",
                    t.name,
                    p.partition,
                    p.replicas.len(),
                    factor,
                    id_list(&p.replicas)
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(topic: &str, leader: u64, reporter: u64, term: u64) -> GroupView {
        GroupView {
            name: format!("{topic}/0"),
            topic: topic.into(),
            partition: 0,
            leader,
            replicas: vec![1, 2, 3],
            term,
            last_log_index: 10,
            commit_index: 10,
            apply_index: 10,
            log_end: 11,
            lag: vec![
                ReplicaLagView { node: 1, matched_index: Some(10), lag: 0 },
                ReplicaLagView { node: 2, matched_index: Some(7), lag: 3 },
                ReplicaLagView { node: 3, matched_index: None, lag: 0 },
            ],
            reported_by: reporter,
        }
    }

    #[test]
    fn merge_prefers_the_leaders_view_then_the_newest_term() {
        let merged = merge_views([group("a", 1, 2, 5), group("a", 1, 1, 5), group("a", 1, 3, 5)]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].reported_by, 1);
        let merged = merge_views([group("b", 0, 2, 4), group("b", 0, 3, 6)]);
        assert_eq!(merged[0].reported_by, 3);
        assert_eq!(merge_views([group("a", 1, 1, 1), group("b", 2, 2, 1)]).len(), 2);
    }

    #[test]
    fn max_lag_ignores_unknown_progress() {
        assert_eq!(group("a", 1, 1, 1).max_lag(), Some(3));
    }

    #[test]
    fn status_table_shows_health_leads_and_lag() {
        let v = ClusterView {
            answered_by: 1,
            members: vec![
                MemberView {
                    id: 1,
                    addr: "h:1".into(),
                    internal_addr: "n1:7101".into(),
                    role: "voter".into(),
                    health: "up".into(),
                    error: None,
                    leader_of: 1,
                },
                MemberView {
                    id: 2,
                    addr: "h:2".into(),
                    internal_addr: "n2:7101".into(),
                    role: "voter".into(),
                    health: "unreachable".into(),
                    error: Some("connection refused".into()),
                    leader_of: 0,
                },
            ],
            meta: None,
            partitions: vec![group("a", 1, 1, 2), group("b", 1, 2, 2)],
            damaged: Vec::new(),
        };
        let text = status_table(&v);
        assert!(!text.contains("DAMAGED"), "{text}");
        // Each member's client and internal address, side by side.
        assert!(text.contains("INTERNAL ADDR"), "{text}");
        assert!(text.lines().any(|l| l.contains("h:1") && l.contains("n1:7101")), "{text}");
        let mut v = v;
        v.damaged.push(DamageView {
            group: "a/0".into(),
            node: 2,
            from: 40,
            to: 41,
            file: "segment_000001.log".into(),
            reason: "CRC mismatch".into(),
        });
        let text = status_table(&v);
        assert!(text.contains("DAMAGED"), "{text}");
        assert!(text.contains("40..41"), "{text}");
        assert!(text.contains("unreachable (connection refused)"), "{text}");
        assert!(text.contains("1:0 2:3 3:?"), "{text}");
        assert!(text.contains("unknown (leader did not answer)"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&output::to_json(&v).unwrap()).unwrap();
        assert_eq!(json["members"][1]["health"], "unreachable");
        assert_eq!(json["members"][1]["internal_addr"], "n2:7101");
    }

    #[test]
    fn members_that_did_not_answer_make_the_status_incomplete_naming_each() {
        let member = |id: u64, error: Option<&str>| MemberView {
            id,
            addr: format!("node-{id}:7001"),
            internal_addr: format!("node-{id}:7101"),
            role: "voter".into(),
            health: if error.is_some() { "unreachable" } else { "up" }.into(),
            error: error.map(str::to_string),
            leader_of: 0,
        };
        let mut v = ClusterView {
            answered_by: 1,
            members: vec![member(1, None), member(2, None)],
            meta: None,
            partitions: Vec::new(),
            damaged: Vec::new(),
        };
        assert!(unanswered(&v).is_none());
        v.members.push(member(3, Some("gRPC status Unavailable: dns error: failed to lookup address information")));
        let e = unanswered(&v).expect("incomplete");
        assert_eq!(e.exit_code(), crate::error::EXIT_INCOMPLETE);
        let text = e.to_string();
        assert!(text.contains("1 of 3 members did not answer"), "{text}");
        assert!(text.contains("node 3 at node-3:7001: gRPC status Unavailable: dns error"), "{text}");
        assert!(!text.contains("node 2 at"), "{text}");
        assert!(e.hint().unwrap().contains("advertises"), "{:?}", e.hint());
    }

    #[tokio::test]
    async fn a_probe_of_a_name_that_does_not_resolve_says_why() {
        let client = Client::connect_to("127.0.0.1:1").unwrap();
        // `.invalid` never resolves (RFC 6761).
        let err = probe(&client, "shale-no-such-host.invalid:7001").await.unwrap_err();
        // The status says only "dns error"; its cause names the failed lookup (unless the resolver
        // does not answer in time).
        assert!(err.contains("dns error") || err.contains("no answer within"), "{err}");
        assert!(!err.contains("dns error") || err.contains("failed to lookup address"), "the cause is included: {err}");
    }

    #[test]
    fn leader_counts_cover_meta_and_partitions() {
        let meta = group("", 2, 2, 1);
        let counts = leader_counts(Some(&meta), &[group("a", 2, 2, 1), group("b", 1, 1, 1), group("c", 0, 1, 1)]);
        assert_eq!(counts.get(&2), Some(&2));
        assert_eq!(counts.get(&1), Some(&1));
        assert_eq!(counts.get(&0), None);
    }
}
