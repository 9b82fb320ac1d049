//! `shale topic create|list|describe|delete|alter`.

use serde::Serialize;
use shale_client::proto::{self, AlterTopicRequest};
use shale_client::{ClientError, ErrorCode, NewTopic};

use crate::args::{Limit, codec_name};
use crate::cli::{TopicAlterArgs, TopicCommand, TopicCreateArgs};
use crate::context::Ctx;
use crate::error::Result;
use crate::output::{self, OutputFormat, Table, human_bytes, human_ms, id_list, or_unlimited};

/// Replication factor of a new topic when none is given (capped at the number of members).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// A topic as the CLI prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicView {
    /// Name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Retention by size per partition; `None` = unlimited.
    pub retention_bytes: Option<u64>,
    /// Retention by age; `None` = unlimited.
    pub retention_ms: Option<u64>,
    /// Payload codec.
    pub codec: String,
    /// Per partition: leader, replicas, bounds.
    pub partition_details: Vec<PartitionView>,
}

/// One partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    /// Partition number.
    pub partition: u32,
    /// Leader node id, 0 when there is none.
    pub leader: u64,
    /// Leader's address ("" when unknown).
    pub leader_addr: String,
    /// Replica node ids.
    pub replicas: Vec<u64>,
    /// First offset held (as seen by the answering node, when it hosts the partition).
    pub log_start: Option<u64>,
    /// One past the last committed offset (same caveat).
    pub log_end: Option<u64>,
}

impl TopicView {
    /// From the wire form.
    pub fn from_proto(t: &proto::TopicInfo) -> Self {
        let config = t.config.unwrap_or_default();
        let mut partition_details: Vec<PartitionView> = t
            .partitions
            .iter()
            .map(|p| PartitionView {
                partition: p.partition,
                leader: p.leader_id,
                leader_addr: p.leader_addr.clone(),
                replicas: p.replicas.clone(),
                log_start: p.log_start,
                log_end: p.log_end,
            })
            .collect();
        partition_details.sort_by_key(|p| p.partition);
        Self {
            name: t.name.clone(),
            partitions: if config.partitions > 0 { config.partitions } else { t.partitions.len() as u32 },
            replication_factor: config.replication_factor,
            retention_bytes: config.retention_bytes,
            retention_ms: config.retention_ms,
            codec: codec_name(config.codec).to_string(),
            partition_details,
        }
    }
}

/// The `topic list` table.
pub fn list_table(topics: &[TopicView]) -> String {
    let mut t = Table::new(["name", "partitions", "replicas", "retention.bytes", "retention.ms", "codec"]);
    for topic in topics {
        t.row([
            topic.name.clone(),
            topic.partitions.to_string(),
            topic.replication_factor.to_string(),
            or_unlimited(topic.retention_bytes, human_bytes),
            or_unlimited(topic.retention_ms, human_ms),
            topic.codec.clone(),
        ]);
    }
    t.render()
}

/// The `topic describe` text: settings, then one row per partition.
pub fn describe_table(topic: &TopicView) -> String {
    let mut out = format!(
        "Name:                {}\nPartitions:          {}\nReplication factor:  {}\nRetention size:      {}\nRetention age:       {}\nCodec:               {}\n\n",
        topic.name,
        topic.partitions,
        topic.replication_factor,
        or_unlimited(topic.retention_bytes, human_bytes),
        or_unlimited(topic.retention_ms, human_ms),
        topic.codec
    );
    let mut t = Table::new(["partition", "leader", "replicas", "log start", "log end"]);
    for p in &topic.partition_details {
        let leader = if p.leader == 0 { "none".to_string() } else { format!("{} ({})", p.leader, p.leader_addr) };
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let mut replicas = id_list(&p.replicas);
        if p.replicas.len() < topic.replication_factor as usize {
            replicas.push_str(&format!(" (under-replicated: {} of {})", p.replicas.len(), topic.replication_factor));
        }
        t.row([p.partition.to_string(), leader, replicas, opt(p.log_start), opt(p.log_end)]);
    }
    out.push_str(&t.render());
    out
}

/// Runs a `topic` command.
pub async fn run(ctx: &Ctx, command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::Create(args) => create(ctx, args).await,
        TopicCommand::List(o) => {
            let admin = ctx.client()?.admin();
            let topics = admin.list_topics().await.map_err(|e| ctx.err("list topics", e))?;
            let mut views: Vec<TopicView> = topics.iter().map(TopicView::from_proto).collect();
            views.sort_by(|a, b| a.name.cmp(&b.name));
            output::emit(o.output, &views, |v| list_table(v))
        }
        TopicCommand::Describe { name, output } => {
            let admin = ctx.client()?.admin();
            let topic = admin.describe_topic(&name).await.map_err(|e| ctx.err(format!("describe topic {name}"), e))?;
            output::emit(output.output, &TopicView::from_proto(&topic), describe_table)
        }
        TopicCommand::Delete { name, if_exists } => {
            let admin = ctx.client()?.admin();
            match admin.delete_topic(&name).await {
                Ok(()) => eprintln!("deleted topic {name}"),
                Err(e) if if_exists && is_code(&e, ErrorCode::UnknownTopic) => eprintln!("topic {name} does not exist"),
                Err(e) => return Err(ctx.err(format!("delete topic {name}"), e)),
            }
            Ok(())
        }
        TopicCommand::Alter(args) => alter(ctx, args).await,
    }
}

/// True when `e` (or the last retry of it) is a server error with `code`.
pub fn is_code(e: &ClientError, code: ErrorCode) -> bool {
    match e {
        ClientError::Server { code: c, .. } => *c == code,
        ClientError::RetriesExhausted { last, .. } => is_code(last, code),
        _ => false,
    }
}

/// The replication factor to ask for: the flag, else the default capped at the member count.
pub fn effective_replication_factor(flag: Option<u32>, members: usize) -> u32 {
    flag.unwrap_or_else(|| DEFAULT_REPLICATION_FACTOR.min(members.max(1) as u32))
}

async fn create(ctx: &Ctx, a: TopicCreateArgs) -> Result<()> {
    let client = ctx.client()?;
    let admin = client.admin();
    let replication_factor = match a.replication_factor {
        Some(r) => r,
        None => {
            let status = admin.cluster_status().await.map_err(|e| ctx.err("read cluster members", e))?;
            effective_replication_factor(None, status.members.len())
        }
    };
    let mut topic = NewTopic::new(&a.name, a.partitions, replication_factor);
    topic.retention_bytes = a.retention_bytes.and_then(Limit::value);
    topic.retention_ms = a.retention_ms.and_then(Limit::value);
    topic.codec = a.codec;
    let created = match admin.create_topic(topic).await {
        Ok(t) => {
            eprintln!("created topic {}", a.name);
            t
        }
        Err(e) if a.if_not_exists && is_code(&e, ErrorCode::TopicExists) => {
            eprintln!("topic {} already exists", a.name);
            admin.describe_topic(&a.name).await.map_err(|e| ctx.err(format!("describe topic {}", a.name), e))?
        }
        Err(e) => return Err(ctx.err(format!("create topic {}", a.name), e)),
    };
    emit_topic(a.output.output, &created)
}

/// The alter request for these flags; `None` if no flag asks for a change.
pub fn alter_request(a: &TopicAlterArgs) -> Option<AlterTopicRequest> {
    if a.retention_bytes.is_none() && a.retention_ms.is_none() && a.codec.is_none() {
        return None;
    }
    Some(AlterTopicRequest {
        name: a.name.clone(),
        retention_bytes: a.retention_bytes.and_then(Limit::value),
        retention_ms: a.retention_ms.and_then(Limit::value),
        codec: a.codec.map(|c| c as i32),
        clear_retention_bytes: a.retention_bytes == Some(Limit::Unlimited),
        clear_retention_ms: a.retention_ms == Some(Limit::Unlimited),
    })
}

async fn alter(ctx: &Ctx, a: TopicAlterArgs) -> Result<()> {
    let Some(request) = alter_request(&a) else {
        return Err(crate::CliError::Usage(
            "nothing to change: give --retention-bytes, --retention-ms or --codec".into(),
        ));
    };
    let admin = ctx.client()?.admin();
    let topic = admin.alter_topic(request).await.map_err(|e| ctx.err(format!("alter topic {}", a.name), e))?;
    eprintln!("altered topic {}", a.name);
    emit_topic(a.output.output, &topic)
}

fn emit_topic(format: OutputFormat, topic: &proto::TopicInfo) -> Result<()> {
    output::emit(format, &TopicView::from_proto(topic), describe_table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::OutputArgs;

    fn info() -> proto::TopicInfo {
        proto::TopicInfo {
            name: "orders".into(),
            config: Some(proto::TopicConfig {
                partitions: 2,
                replication_factor: 3,
                retention_bytes: Some(1 << 30),
                retention_ms: None,
                codec: proto::Codec::Zstd as i32,
            }),
            partitions: vec![
                proto::PartitionInfo {
                    partition: 1,
                    leader_id: 0,
                    leader_addr: String::new(),
                    replicas: vec![2, 3, 1],
                    log_start: None,
                    log_end: None,
                },
                proto::PartitionInfo {
                    partition: 0,
                    leader_id: 2,
                    leader_addr: "127.0.0.1:7002".into(),
                    replicas: vec![1, 2, 3],
                    log_start: Some(0),
                    log_end: Some(17),
                },
            ],
        }
    }

    #[test]
    fn views_sort_partitions_and_name_the_codec() {
        let v = TopicView::from_proto(&info());
        assert_eq!(v.partitions, 2);
        assert_eq!(v.codec, "zstd");
        assert_eq!(v.partition_details.iter().map(|p| p.partition).collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn tables_show_units_and_missing_leaders() {
        let v = TopicView::from_proto(&info());
        let list = list_table(std::slice::from_ref(&v));
        assert!(list.contains("1.0 GiB"), "{list}");
        assert!(list.contains("unlimited"), "{list}");
        let d = describe_table(&v);
        assert!(d.contains("2 (127.0.0.1:7002)"), "{d}");
        assert!(d.contains("none"), "{d}");
        assert!(d.lines().any(|l| l.starts_with('0') && l.trim_end().ends_with("17")), "{d}");
    }

    #[test]
    fn replication_factor_defaults_to_three_capped_by_members() {
        assert_eq!(effective_replication_factor(None, 5), 3);
        assert_eq!(effective_replication_factor(None, 1), 1);
        assert_eq!(effective_replication_factor(None, 0), 1);
        assert_eq!(effective_replication_factor(Some(2), 1), 2);
    }

    #[test]
    fn alter_maps_unlimited_to_clear_flags() {
        let a = TopicAlterArgs {
            name: "t".into(),
            retention_bytes: Some(Limit::Unlimited),
            retention_ms: Some(Limit::Value(5)),
            codec: None,
            output: OutputArgs { output: OutputFormat::Table },
        };
        let r = alter_request(&a).unwrap();
        assert!(r.clear_retention_bytes);
        assert_eq!(r.retention_bytes, None);
        assert!(!r.clear_retention_ms);
        assert_eq!(r.retention_ms, Some(5));
        assert_eq!(r.codec, None);
        let none = TopicAlterArgs { retention_bytes: None, retention_ms: None, ..a };
        assert!(alter_request(&none).is_none());
    }

    #[test]
    fn error_codes_are_found_through_retries() {
        let e = ClientError::RetriesExhausted {
            attempts: 2,
            last: Box::new(ClientError::Server { code: ErrorCode::TopicExists, limit: None, message: String::new() }),
        };
        assert!(is_code(&e, ErrorCode::TopicExists));
        assert!(!is_code(&e, ErrorCode::UnknownTopic));
    }
}
