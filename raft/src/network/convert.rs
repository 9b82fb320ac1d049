//! Conversions between openraft messages and the generated protobuf types, in one place.
//! Entries and membership configs travel as their deterministic [`crate::format`] encodings.

use bytes::{Bytes, BytesMut};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, StreamAppendResult, VoteRequest, VoteResponse,
};

use crate::format::{DecodeError, decode_entry, decode_membership, encode_entry, encode_membership};
use crate::network::pb;
use crate::types::{GroupId, LogId, Membership, TypeConfig, Vote, log_id};

/// A protobuf message that cannot be turned into an openraft message.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent.
    #[error("field {0} is missing")]
    Missing(&'static str),
    /// An enum field holds an unknown value.
    #[error("field {field} has unknown value {value}")]
    UnknownValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// An encoded entry or membership does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Log id to protobuf.
pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, node_id: id.leader_id.node_id, index: id.index }
}

/// Log id from protobuf.
pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    log_id(id.term, id.node_id, id.index)
}

fn opt_log_id_to_pb(id: Option<&LogId>) -> Option<pb::LogId> {
    id.map(log_id_to_pb)
}

fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Option<LogId> {
    id.map(log_id_from_pb)
}

/// Vote to protobuf.
pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

/// Vote from protobuf.
pub fn vote_from_pb(v: &pb::Vote) -> Vote {
    if v.committed { Vote::new_committed(v.term, v.node_id) } else { Vote::new(v.term, v.node_id) }
}

fn required_vote(v: Option<&pb::Vote>, field: &'static str) -> Result<Vote, ConvertError> {
    v.map(vote_from_pb).ok_or(ConvertError::Missing(field))
}

/// Membership to its byte encoding.
pub fn membership_to_bytes(m: &Membership) -> Bytes {
    let mut out = BytesMut::new();
    encode_membership(m, &mut out);
    out.freeze()
}

/// Membership from its byte encoding.
pub fn membership_from_bytes(b: &[u8]) -> Result<Membership, ConvertError> {
    Ok(decode_membership(b)?)
}

/// Vote request to protobuf.
pub fn vote_request_to_pb(group: GroupId, r: &VoteRequest<TypeConfig>, pre_vote: bool) -> pb::VoteRequest {
    pb::VoteRequest {
        group_id: group.0,
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(r.last_log_id.as_ref()),
        leadership_transfer: r.leadership_transfer,
        pre_vote,
    }
}

/// Vote request from protobuf.
pub fn vote_request_from_pb(r: &pb::VoteRequest) -> Result<VoteRequest<TypeConfig>, ConvertError> {
    let mut req = VoteRequest::new(required_vote(r.vote.as_ref(), "vote")?, opt_log_id_from_pb(r.last_log_id.as_ref()));
    req.leadership_transfer = r.leadership_transfer;
    Ok(req)
}

/// Vote response to protobuf.
pub fn vote_response_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(r.last_log_id.as_ref()),
    }
}

/// Vote response from protobuf.
pub fn vote_response_from_pb(r: &pb::VoteResponse) -> Result<VoteResponse<TypeConfig>, ConvertError> {
    Ok(VoteResponse::new(
        required_vote(r.vote.as_ref(), "vote")?,
        opt_log_id_from_pb(r.last_log_id.as_ref()),
        r.vote_granted,
    ))
}

/// Append-entries request to protobuf.
pub fn append_request_to_pb(group: GroupId, r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        group_id: group.0,
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(r.prev_log_id.as_ref()),
        entries: r.entries.iter().map(encode_entry).collect(),
        leader_commit: opt_log_id_to_pb(r.leader_commit.as_ref()),
    }
}

/// Append-entries request from protobuf.
pub fn append_request_from_pb(r: &pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>, ConvertError> {
    let entries = r.entries.iter().map(decode_entry).collect::<Result<Vec<_>, _>>()?;
    Ok(AppendEntriesRequest {
        vote: required_vote(r.vote.as_ref(), "vote")?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id.as_ref()),
        entries,
        leader_commit: opt_log_id_from_pb(r.leader_commit.as_ref()),
    })
}

use pb::append_entries_response::Outcome;

/// Unary append-entries response to protobuf.
pub fn append_response_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    let (outcome, last_log_id, rejected_by) = match r {
        AppendEntriesResponse::Success => (Outcome::Success, None, None),
        AppendEntriesResponse::PartialSuccess(l) => (Outcome::PartialSuccess, opt_log_id_to_pb(l.as_ref()), None),
        AppendEntriesResponse::Conflict => (Outcome::Conflict, None, None),
        AppendEntriesResponse::HigherVote(v) => (Outcome::HigherVote, None, Some(vote_to_pb(v))),
    };
    pb::AppendEntriesResponse { outcome: outcome as i32, last_log_id, rejected_by }
}

/// Unary append-entries response from protobuf.
pub fn append_response_from_pb(
    r: &pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, ConvertError> {
    match Outcome::try_from(r.outcome) {
        Ok(Outcome::Success) => Ok(AppendEntriesResponse::Success),
        Ok(Outcome::PartialSuccess) => {
            Ok(AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(r.last_log_id.as_ref())))
        }
        Ok(Outcome::Conflict) => Ok(AppendEntriesResponse::Conflict),
        Ok(Outcome::HigherVote) => {
            Ok(AppendEntriesResponse::HigherVote(required_vote(r.rejected_by.as_ref(), "rejected_by")?))
        }
        _ => Err(ConvertError::UnknownValue { field: "outcome", value: r.outcome }),
    }
}

/// Stream-append result to protobuf.
pub fn stream_result_to_pb(r: &StreamAppendResult<TypeConfig>) -> pb::AppendEntriesResponse {
    let (outcome, last_log_id, rejected_by) = match r {
        Ok(l) => (Outcome::Success, opt_log_id_to_pb(l.as_ref()), None),
        Err(StreamAppendError::Conflict(l)) => (Outcome::Conflict, Some(log_id_to_pb(l)), None),
        Err(StreamAppendError::HigherVote(v)) => (Outcome::HigherVote, None, Some(vote_to_pb(v))),
    };
    pb::AppendEntriesResponse { outcome: outcome as i32, last_log_id, rejected_by }
}

/// Stream-append result from protobuf.
pub fn stream_result_from_pb(r: &pb::AppendEntriesResponse) -> Result<StreamAppendResult<TypeConfig>, ConvertError> {
    match Outcome::try_from(r.outcome) {
        Ok(Outcome::Success) => Ok(Ok(opt_log_id_from_pb(r.last_log_id.as_ref()))),
        Ok(Outcome::Conflict) => Ok(Err(StreamAppendError::Conflict(
            opt_log_id_from_pb(r.last_log_id.as_ref()).ok_or(ConvertError::Missing("last_log_id"))?,
        ))),
        Ok(Outcome::HigherVote) => {
            Ok(Err(StreamAppendError::HigherVote(required_vote(r.rejected_by.as_ref(), "rejected_by")?)))
        }
        _ => Err(ConvertError::UnknownValue { field: "outcome", value: r.outcome }),
    }
}

/// Optional log id helpers for the snapshot and transfer messages.
pub fn opt_to_pb(id: Option<&LogId>) -> Option<pb::LogId> {
    opt_log_id_to_pb(id)
}

/// Optional log id from protobuf.
pub fn opt_from_pb(id: Option<&pb::LogId>) -> Option<LogId> {
    opt_log_id_from_pb(id)
}

/// A required vote from protobuf.
pub fn required_vote_from_pb(v: Option<&pb::Vote>, field: &'static str) -> Result<Vote, ConvertError> {
    required_vote(v, field)
}
