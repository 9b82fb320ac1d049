//! The transport's edge checks against a live three-node group (issue 14): the hostile Vote that
//! used to stop a group for good, votes and appends from nodes that are not members, and huge
//! terms or indexes are refused before openraft sees them; the group keeps its leader and term and
//! still takes writes.

mod core_support;

use bytes::Bytes;
use core_support::{GROUP, TestCluster, TestNode, WAIT, group_config};
use shale_raft::network::convert;
use shale_raft::network::guard::{ERROR_CODE_KEY, REFUSED_CODE};
use shale_raft::network::pb::raft_service_client::RaftServiceClient;
use shale_raft::network::pb::{self};
use shale_raft::types::log_id;
use tonic::Code;

/// The node's openraft metrics once they show `index` applied: the state machine's own applied
/// index (what `wait_applied_everywhere` waits for) moves before openraft publishes its metrics.
async fn metrics_applied(node: &TestNode, index: u64) -> openraft::RaftMetrics<shale_raft::types::TypeConfig> {
    node.group()
        .wait_metrics("last_applied in metrics", WAIT, |m| m.last_applied.is_some_and(|l| l.index >= index))
        .await
        .unwrap_or_else(|e| panic!("node {}'s metrics show {index} applied: {e}", node.id))
}

/// The next items of a multiplexed call's answers until `n` sessions answered, by session: one
/// item each (an end, or an answer with its end).
async fn session_items(
    answers: &mut tonic::Streaming<pb::MultiplexResponse>,
    n: usize,
) -> std::collections::BTreeMap<u64, pb::SessionResponse> {
    let mut items = std::collections::BTreeMap::new();
    while items.len() < n {
        let message = answers.message().await.expect("the call goes on").expect("a message");
        for i in message.items {
            let session = i.session;
            assert!(items.insert(session, i).is_none(), "one item for session {session}");
        }
    }
    items
}

fn assert_refused(status: tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    let code = status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(code, Some(REFUSED_CODE), "{what}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_raft_rpcs_are_refused_and_the_group_keeps_its_leader() {
    let c = TestCluster::start(3, group_config()).await;
    let leader = c.wait_leader(&[]).await;
    let w = c.leader_group(leader).write(Bytes::from_static(b"before")).await.expect("write");
    c.wait_applied_everywhere(w.index).await;
    let follower = c.running().find(|n| n.id != leader).expect("a follower");
    let before = metrics_applied(follower, w.index).await;
    let mut client = RaftServiceClient::connect(format!("http://{}", follower.addr)).await.unwrap();

    // The exact Vote from issue 14: term 2^64-1, node 99, last log id {2^64-1, 99, 2^64-1},
    // leadership transfer set.
    let hostile = pb::VoteRequest {
        group_id: GROUP.0,
        vote: Some(pb::Vote { term: u64::MAX, node_id: 99, committed: false }),
        last_log_id: Some(pb::LogId { term: u64::MAX, node_id: 99, index: u64::MAX }),
        leadership_transfer: true,
        pre_vote: false,
    };
    assert_refused(client.vote(hostile).await.unwrap_err(), "the issue's vote");
    assert_refused(client.vote(pb::VoteRequest { pre_vote: true, ..hostile }).await.unwrap_err(), "as a pre-vote");

    // A sane term, but a candidate that is not a member, with the transfer flag.
    let stranger = pb::VoteRequest {
        group_id: GROUP.0,
        vote: Some(pb::Vote { term: before.vote.leader_id.term + 1, node_id: 99, committed: false }),
        last_log_id: before.last_log_index.map(|i| pb::LogId {
            term: before.vote.leader_id.term,
            node_id: 99,
            index: i,
        }),
        leadership_transfer: true,
        pre_vote: false,
    };
    assert_refused(client.vote(stranger).await.unwrap_err(), "a non-member candidate");

    // A member with a term near the overflow.
    let member_huge = pb::VoteRequest {
        group_id: GROUP.0,
        vote: Some(pb::Vote { term: (1 << 62) + 1, node_id: leader, committed: false }),
        ..Default::default()
    };
    assert_refused(client.vote(member_huge).await.unwrap_err(), "a member's huge term");

    // A forged append from a node that is not a member, one entry past the follower's log.
    let last = before.last_applied.expect("the follower applied entries");
    let forged_entry = shale_raft::types::Entry {
        log_id: log_id(before.vote.leader_id.term + 1, 99, last.index + 1),
        payload: shale_raft::types::EntryPayload::Blank,
    };
    let forged = convert::append_request_to_pb(
        GROUP,
        &openraft::raft::AppendEntriesRequest {
            vote: shale_raft::types::Vote::new_committed(before.vote.leader_id.term + 1, 99),
            prev_log_id: Some(last),
            entries: vec![forged_entry],
            leader_commit: Some(last),
        },
    );
    assert_refused(client.append_entries(forged.clone()).await.unwrap_err(), "a non-member's append");
    let stream = client.stream_append(tokio_stream::iter(vec![forged.clone()])).await;
    assert_refused(stream.map(|_| ()).unwrap_err(), "a non-member's stream append");

    // The same append as a session of a multiplexed call: that session ends refused; a malformed
    // item ends its own session; a late request of an ended session starts nothing; the call
    // goes on serving new sessions.
    let (requests, queued) = tokio::sync::mpsc::channel(4);
    let request = |session: u64, append: Option<pb::AppendEntriesRequest>, open: bool, once: bool| pb::SessionRequest {
        session,
        append,
        end: false,
        open,
        once,
    };
    let item =
        |session: u64, append: Option<pb::AppendEntriesRequest>, open: bool| request(session, append, open, false);
    requests
        .send(pb::MultiplexRequest { items: vec![item(1, Some(forged.clone()), true), item(2, None, true)] })
        .await
        .unwrap();
    let mut answers = client
        .multiplex(tokio_stream::wrappers::ReceiverStream::new(queued))
        .await
        .expect("the call is accepted: each session is checked on its own")
        .into_inner();
    let ends: std::collections::BTreeMap<u64, pb::SessionEnd> = session_items(&mut answers, 2)
        .await
        .into_values()
        .map(|i| {
            assert!(i.append.is_none(), "no session was answered: {i:?}");
            (i.session, i.end.expect("a session end"))
        })
        .collect();
    assert_eq!(ends[&1].code, Code::PermissionDenied as i32, "the forged session: {:?}", ends[&1]);
    assert_eq!(ends[&2].code, Code::InvalidArgument as i32, "the malformed session: {:?}", ends[&2]);
    let mut elsewhere = forged.clone();
    elsewhere.group_id = 4242;
    requests
        .send(pb::MultiplexRequest {
            items: vec![item(1, Some(forged.clone()), false), item(3, Some(elsewhere), true)],
        })
        .await
        .unwrap();
    let message = answers.message().await.expect("the call goes on").expect("a message");
    assert_eq!(message.items.len(), 1, "only the new session answers: {message:?}");
    assert_eq!(message.items[0].session, 3);
    assert_eq!(message.items[0].end.as_ref().map(|e| e.code), Some(Code::NotFound as i32), "no such group here");
    let late = tokio::time::timeout(std::time::Duration::from_millis(300), answers.message()).await;
    assert!(late.is_err(), "the ended session 1 did not start again: {late:?}");
    // Sessions' first requests reach the call in any order: a lower id opened later is served.
    let mut elsewhere = forged.clone();
    elsewhere.group_id = 4242;
    requests
        .send(pb::MultiplexRequest {
            items: vec![item(6, Some(elsewhere.clone()), true), item(5, Some(elsewhere), true)],
        })
        .await
        .unwrap();
    let answered = session_items(&mut answers, 2).await;
    for i in answered.values() {
        assert_eq!(i.end.as_ref().map(|e| e.code), Some(Code::NotFound as i32), "session {}", i.session);
    }
    assert_eq!(answered.keys().copied().collect::<Vec<_>>(), [5, 6], "both sessions were started");
    // Lone (`once`) requests, as per-group heartbeats go: the forged one is refused, one that
    // does not open its session is malformed, the leader's heartbeat is answered and ended in one
    // item, and none of them leaves a session behind.
    let heartbeat = convert::append_request_to_pb(
        GROUP,
        &openraft::raft::AppendEntriesRequest {
            vote: before.vote,
            prev_log_id: Some(last),
            entries: vec![],
            leader_commit: Some(last),
        },
    );
    let once = |session: u64, append: pb::AppendEntriesRequest, open: bool| request(session, Some(append), open, true);
    requests
        .send(pb::MultiplexRequest {
            items: vec![once(7, forged.clone(), true), once(8, heartbeat.clone(), false), once(9, heartbeat, true)],
        })
        .await
        .unwrap();
    let lone = session_items(&mut answers, 3).await;
    assert_eq!(lone[&7].end.as_ref().map(|e| e.code), Some(Code::PermissionDenied as i32), "forged: {:?}", lone[&7]);
    assert!(lone[&7].append.is_none());
    assert_eq!(lone[&8].end.as_ref().map(|e| e.code), Some(Code::InvalidArgument as i32), "not open: {:?}", lone[&8]);
    let answer = lone[&9].append.expect("the heartbeat is answered");
    let answer = convert::append_response_from_pb(&answer).expect("a well-formed answer");
    assert!(answer.is_success(), "the leader's heartbeat succeeds: {answer:?}");
    assert_eq!(lone[&9].end.as_ref().map(|e| e.code), Some(0), "and its session ends with it");
    let late = tokio::time::timeout(std::time::Duration::from_millis(300), answers.message()).await;
    assert!(late.is_err(), "nothing more for the lone requests: {late:?}");
    drop(requests);

    // A transfer to a stranger.
    let transfer = pb::TransferLeaderRequest {
        group_id: GROUP.0,
        from_leader: Some(convert::vote_to_pb(&before.vote)),
        to_node_id: 99,
        last_log_id: None,
    };
    assert_refused(client.transfer_leader(transfer).await.unwrap_err(), "a transfer to a stranger");

    // Nothing reached openraft: same leader, same term, and the group takes writes.
    let after = follower.group().metrics();
    assert_eq!(after.vote.leader_id, before.vote.leader_id, "the follower's vote did not move");
    assert_eq!(c.wait_leader(&[]).await, leader, "the leader did not change");
    let g = c.leader_group(leader);
    let w = g.write(Bytes::from_static(b"after the attack")).await.expect("the group still takes writes");
    c.wait_applied_everywhere(w.index).await;
    for n in c.running() {
        let m = metrics_applied(n, w.index).await;
        let last = m.last_applied.expect("applied");
        assert_eq!(last.leader_id.node_id, leader, "node {}'s last entry is the leader's write, nothing forged", n.id);
        assert_eq!(m.vote.leader_id.term, before.vote.leader_id.term, "node {} term", n.id);
    }
}
