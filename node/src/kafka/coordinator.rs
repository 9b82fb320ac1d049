//! The group APIs: FindCoordinator (the metadata leader), JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup (over [`super::groups::ClassicGroups`] on the coordinator), OffsetCommit /
//! OffsetFetch (Shale's committed offsets), ListGroups, DescribeGroups.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use shale_raft::cluster::ClusterError;
use shale_raft::cluster::access::{Operation, Resource};

use super::groups::{JoinSpec, Refusal};
use super::listener::Kafka;
use crate::context::NodeContext;

/// FindCoordinator's key type of a consumer group (1 is a transactional id: not served).
const KEY_TYPE_GROUP: i8 = 0;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Where the coordinator is: the metadata leader's id and Kafka address, or the error.
fn coordinator(ctx: &NodeContext) -> Result<(i32, String, i32), i16> {
    let (id, _) = ctx.cluster.metadata_leader().ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    let addrs = ctx.cluster.member_addrs(id).ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    let (host, port) = super::split_host_port(&addrs.kafka).ok_or(ResponseError::CoordinatorNotAvailable.code())?;
    Ok((id as i32, host.to_string(), i32::from(port)))
}

/// Answers FindCoordinator: every group's coordinator is the metadata leader.
pub fn find_coordinator(ctx: &NodeContext, req: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let answer = |key: StrBytes| -> Coordinator {
        let c = Coordinator::default().with_key(key);
        if req.key_type != KEY_TYPE_GROUP {
            return c
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_error_message(Some(s("transactions are not supported")))
                .with_node_id(BrokerId(-1))
                .with_port(-1);
        }
        match coordinator(ctx) {
            Ok((id, host, port)) => c.with_node_id(BrokerId(id)).with_host(s(host)).with_port(port),
            Err(code) => c.with_error_code(code).with_node_id(BrokerId(-1)).with_port(-1),
        }
    };
    if version >= 4 {
        let coordinators = req.coordinator_keys.iter().cloned().map(answer).collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let one = answer(req.key.clone());
    FindCoordinatorResponse::default()
        .with_error_code(one.error_code)
        .with_error_message(one.error_message)
        .with_node_id(one.node_id)
        .with_host(one.host)
        .with_port(one.port)
}

/// Why a group request is not served here: not the coordinator, or not allowed.
async fn refuse(ctx: &NodeContext, group: &str) -> Option<i16> {
    if ctx.authorize(Operation::GroupRead, Resource::Group(group)).await.is_err() {
        return Some(ResponseError::GroupAuthorizationFailed.code());
    }
    if !ctx.cluster.is_metadata_leader() {
        return Some(ResponseError::NotCoordinator.code());
    }
    None
}

/// The Kafka code of a failed cluster call of a group API: a lost metadata leadership is
/// NOT_COORDINATOR (the client finds the coordinator again).
fn group_code(err: &ClusterError) -> i16 {
    match err {
        ClusterError::NotLeader { .. } | ClusterError::NotBootstrapped | ClusterError::Shutdown => {
            ResponseError::NotCoordinator.code()
        }
        other => super::errors::code(other),
    }
}

/// JoinGroup: waits for the join round to complete.
pub async fn join(kafka: &Kafka, req: JoinGroupRequest) -> JoinGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    let failed = |code: i16| JoinGroupResponse::default().with_error_code(code).with_generation_id(-1);
    if let Some(code) = refuse(&kafka.ctx, &group).await {
        return failed(code);
    }
    let spec = JoinSpec {
        member_id: req.member_id.as_str().to_string(),
        client_id: kafka_client_id(),
        client_host: client_host(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        protocol_type: req.protocol_type.as_str().to_string(),
        protocols: req.protocols.iter().map(|p| (p.name.as_str().to_string(), p.metadata.clone())).collect(),
    };
    let protocol_type = spec.protocol_type.clone();
    match kafka.groups.join(&group, spec).await {
        Ok(joined) => JoinGroupResponse::default()
            .with_generation_id(joined.generation)
            .with_protocol_type(Some(s(protocol_type)))
            .with_protocol_name(joined.protocol.map(s))
            .with_leader(s(joined.leader))
            .with_member_id(s(joined.member_id))
            .with_members(
                joined
                    .members
                    .into_iter()
                    .map(|(id, metadata)| {
                        JoinGroupResponseMember::default().with_member_id(s(id)).with_metadata(metadata)
                    })
                    .collect(),
            ),
        Err(refusal) => failed(refusal.code()).with_member_id(req.member_id),
    }
}

/// SyncGroup: the leader's assignment in, each member's share out.
pub async fn sync(kafka: &Kafka, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    if let Some(code) = refuse(&kafka.ctx, &group).await {
        return SyncGroupResponse::default().with_error_code(code);
    }
    let assignments =
        req.assignments.iter().map(|a| (a.member_id.as_str().to_string(), a.assignment.clone())).collect();
    match kafka.groups.sync(&group, req.member_id.as_str(), req.generation_id, assignments).await {
        Ok((protocol, assignment)) => SyncGroupResponse::default()
            .with_protocol_type(req.protocol_type)
            .with_protocol_name(protocol.map(s))
            .with_assignment(assignment),
        Err(refusal) => SyncGroupResponse::default().with_error_code(refusal.code()),
    }
}

/// Heartbeat.
pub async fn heartbeat(kafka: &Kafka, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.as_str().to_string();
    if let Some(code) = refuse(&kafka.ctx, &group).await {
        return HeartbeatResponse::default().with_error_code(code);
    }
    let code = kafka.groups.heartbeat(&group, req.member_id.as_str(), req.generation_id).err().map_or(0, Refusal::code);
    HeartbeatResponse::default().with_error_code(code)
}

/// LeaveGroup: one member (v0-2) or several (v3+).
pub async fn leave(kafka: &Kafka, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    if let Some(code) = refuse(&kafka.ctx, &group).await {
        return LeaveGroupResponse::default().with_error_code(code);
    }
    if version < 3 {
        let code = kafka.groups.leave(&group, req.member_id.as_str()).err().map_or(0, Refusal::code);
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let members = req
        .members
        .into_iter()
        .map(|m| {
            let code = kafka.groups.leave(&group, m.member_id.as_str()).err().map_or(0, Refusal::code);
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// OffsetCommit: fenced by the member's generation, then one Shale commit of every offset.
pub async fn offset_commit(kafka: &Kafka, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.as_str().to_string();
    let mut code = refuse(&kafka.ctx, &group).await;
    if code.is_none() {
        code = kafka
            .groups
            .may_commit(&group, req.member_id.as_str(), req.generation_id_or_member_epoch)
            .err()
            .map(Refusal::code);
    }
    let mut offsets = Vec::new();
    let mut invalid = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            match (u32::try_from(p.partition_index), u64::try_from(p.committed_offset)) {
                (Ok(partition), Ok(offset)) => offsets.push((t.name.0.as_str().to_string(), partition, offset)),
                _ => invalid.push((t.name.clone(), p.partition_index)),
            }
        }
    }
    if code.is_none() {
        code = match kafka.ctx.cluster.commit_offsets(&group, None, offsets).await {
            Ok(()) => None,
            Err(e) => Some(group_code(&e)),
        };
    }
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let bad = invalid.contains(&(t.name.clone(), p.partition_index));
                    let code = if bad { ResponseError::InvalidCommitOffsetSize.code() } else { code.unwrap_or(0) };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// OffsetFetch: one group (v1-7) or several (v8+); -1 for a partition without a commit.
pub async fn offset_fetch(ctx: &NodeContext, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            let asked: Option<Vec<(TopicName, Vec<i32>)>> =
                g.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.clone(), t.partition_indexes.clone())).collect());
            let (code, rows) = committed(ctx, g.group_id.0.as_str(), asked).await;
            let topics = rows
                .into_iter()
                .map(|(name, parts)| {
                    let partitions = parts
                        .into_iter()
                        .map(|(p, o)| {
                            OffsetFetchResponsePartitions::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(StrBytes::default()))
                        })
                        .collect();
                    OffsetFetchResponseTopics::default().with_name(name).with_partitions(partitions)
                })
                .collect();
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_error_code(code)
                    .with_topics(topics),
            );
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let asked =
        req.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.clone(), t.partition_indexes.clone())).collect());
    let (code, rows) = committed(ctx, req.group_id.0.as_str(), asked).await;
    let topics = rows
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, o)| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(o)
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(StrBytes::default()))
                        // Before v2 a group error is told per partition.
                        .with_error_code(if version < 2 { code } else { 0 })
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(name).with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_error_code(code).with_topics(topics)
}

/// A group's committed offsets for `asked` (`None`: every partition with a commit): the group's
/// error code and, per topic, (partition, offset or -1).
async fn committed(
    ctx: &NodeContext,
    group: &str,
    asked: Option<Vec<(TopicName, Vec<i32>)>>,
) -> (i16, Vec<(TopicName, Vec<(i32, i64)>)>) {
    let fail = |code: i16, asked: &Option<Vec<(TopicName, Vec<i32>)>>| {
        let rows = asked
            .iter()
            .flatten()
            .map(|(name, parts)| (name.clone(), parts.iter().map(|p| (*p, -1)).collect()))
            .collect();
        (code, rows)
    };
    if let Some(code) = refuse(ctx, group).await {
        return fail(code, &asked);
    }
    let rows = match ctx.cluster.fetch_offsets(group).await {
        Ok(rows) => rows,
        // A group nothing was ever committed for has no offsets.
        Err(ClusterError::UnknownGroup { .. }) => Vec::new(),
        Err(e) => return fail(group_code(&e), &asked),
    };
    let offset_of = |topic: &str, p: i32| {
        rows.iter().find(|r| r.topic == topic && r.partition as i32 == p).map_or(-1, |r| r.offset as i64)
    };
    let out = match asked {
        Some(asked) => asked
            .into_iter()
            .map(|(name, parts)| {
                let offsets = parts.iter().map(|p| (*p, offset_of(name.0.as_str(), *p))).collect();
                (name, offsets)
            })
            .collect(),
        None => {
            let mut by_topic: std::collections::BTreeMap<String, Vec<(i32, i64)>> = Default::default();
            for r in &rows {
                by_topic.entry(r.topic.clone()).or_default().push((r.partition as i32, r.offset as i64));
            }
            by_topic.into_iter().map(|(t, parts)| (TopicName(s(t)), parts)).collect()
        }
    };
    (0, out)
}

/// ListGroups: the classic groups this coordinator holds and every group with Shale state.
pub async fn list(kafka: &Kafka, req: ListGroupsRequest) -> ListGroupsResponse {
    let ctx = &kafka.ctx;
    if !ctx.cluster.is_metadata_leader() {
        return ListGroupsResponse::default().with_error_code(ResponseError::NotCoordinator.code());
    }
    let mut listed: Vec<(String, String, String)> =
        kafka.groups.list().into_iter().map(|(n, state, t)| (n, state.to_string(), t)).collect();
    match ctx.cluster.list_groups().await {
        Ok(names) => {
            for name in names {
                if !listed.iter().any(|(n, ..)| *n == name) {
                    listed.push((name, "Empty".to_string(), "consumer".to_string()));
                }
            }
        }
        Err(e) => return ListGroupsResponse::default().with_error_code(group_code(&e)),
    }
    let states: Vec<&str> = req.states_filter.iter().map(|s| s.as_str()).collect();
    let groups = listed
        .into_iter()
        .filter(|(name, ..)| ctx.allowed(Operation::GroupRead, Resource::Group(name)))
        .filter(|(_, state, _)| states.is_empty() || states.iter().any(|s| s.eq_ignore_ascii_case(state)))
        .map(|(name, state, protocol_type)| {
            ListedGroup::default()
                .with_group_id(GroupId(s(name)))
                .with_protocol_type(s(protocol_type))
                .with_group_state(s(state))
                .with_group_type(s("classic"))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// DescribeGroups: a classic group's members and assignments; a group with only Shale state is
/// Empty, an unknown one Dead (as Kafka answers).
pub async fn describe(kafka: &Kafka, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let ctx = &kafka.ctx;
    let mut groups = Vec::with_capacity(req.groups.len());
    for id in req.groups {
        let name = id.0.as_str().to_string();
        let answer = DescribedGroup::default().with_group_id(id);
        if let Some(code) = refuse(ctx, &name).await {
            groups.push(answer.with_error_code(code));
            continue;
        }
        let described = match kafka.groups.describe(&name) {
            Some(d) => answer
                .with_group_state(s(d.state))
                .with_protocol_type(s(d.protocol_type))
                .with_protocol_data(s(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                ),
            None => {
                let known = ctx.cluster.list_groups().await.map(|names| names.contains(&name)).unwrap_or(false);
                let state = if known { "Empty" } else { "Dead" };
                answer.with_group_state(s(state)).with_protocol_type(s(if known { "consumer" } else { "" }))
            }
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

/// The connection's client id, as the request header named it (set by the listener per request).
fn kafka_client_id() -> String {
    super::listener::CLIENT_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The caller's address, `/host` as Kafka shows it.
fn client_host() -> String {
    crate::auth::current().and_then(|c| c.peer).map(|p| format!("/{}", p.ip())).unwrap_or_default()
}
