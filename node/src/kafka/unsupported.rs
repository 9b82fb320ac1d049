//! The answer to a request of an API this listener does not serve (or a version it does not
//! serve): the API's own response, carrying `code` in its top-level error code, so the client
//! reads a Kafka error instead of losing the connection. Generated from the `kafka-protocol`
//! crate's list of responses that have a top-level error code; the rest answer their empty
//! response (see docs/kafka.md, "Unsupported APIs").

use kafka_protocol::messages::{self, ApiKey, ResponseKind};

/// The response of `key` for a request this listener refuses with `code`: the top-level
/// `error_code` set where the response has one, else the response with nothing in it.
pub fn refusal(key: ApiKey, code: i16) -> ResponseKind {
    match key {
        ApiKey::Fetch => ResponseKind::Fetch(messages::FetchResponse::default().with_error_code(code)),
        ApiKey::Metadata => ResponseKind::Metadata(messages::MetadataResponse::default().with_error_code(code)),
        ApiKey::OffsetFetch => {
            ResponseKind::OffsetFetch(messages::OffsetFetchResponse::default().with_error_code(code))
        }
        ApiKey::FindCoordinator => {
            ResponseKind::FindCoordinator(messages::FindCoordinatorResponse::default().with_error_code(code))
        }
        ApiKey::JoinGroup => ResponseKind::JoinGroup(messages::JoinGroupResponse::default().with_error_code(code)),
        ApiKey::Heartbeat => ResponseKind::Heartbeat(messages::HeartbeatResponse::default().with_error_code(code)),
        ApiKey::LeaveGroup => ResponseKind::LeaveGroup(messages::LeaveGroupResponse::default().with_error_code(code)),
        ApiKey::SyncGroup => ResponseKind::SyncGroup(messages::SyncGroupResponse::default().with_error_code(code)),
        ApiKey::ListGroups => ResponseKind::ListGroups(messages::ListGroupsResponse::default().with_error_code(code)),
        ApiKey::SaslHandshake => {
            ResponseKind::SaslHandshake(messages::SaslHandshakeResponse::default().with_error_code(code))
        }
        ApiKey::ApiVersions => {
            ResponseKind::ApiVersions(messages::ApiVersionsResponse::default().with_error_code(code))
        }
        ApiKey::InitProducerId => {
            ResponseKind::InitProducerId(messages::InitProducerIdResponse::default().with_error_code(code))
        }
        ApiKey::AddPartitionsToTxn => {
            ResponseKind::AddPartitionsToTxn(messages::AddPartitionsToTxnResponse::default().with_error_code(code))
        }
        ApiKey::AddOffsetsToTxn => {
            ResponseKind::AddOffsetsToTxn(messages::AddOffsetsToTxnResponse::default().with_error_code(code))
        }
        ApiKey::EndTxn => ResponseKind::EndTxn(messages::EndTxnResponse::default().with_error_code(code)),
        ApiKey::DescribeAcls => {
            ResponseKind::DescribeAcls(messages::DescribeAclsResponse::default().with_error_code(code))
        }
        ApiKey::DescribeLogDirs => {
            ResponseKind::DescribeLogDirs(messages::DescribeLogDirsResponse::default().with_error_code(code))
        }
        ApiKey::SaslAuthenticate => {
            ResponseKind::SaslAuthenticate(messages::SaslAuthenticateResponse::default().with_error_code(code))
        }
        ApiKey::CreateDelegationToken => ResponseKind::CreateDelegationToken(
            messages::CreateDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::RenewDelegationToken => {
            ResponseKind::RenewDelegationToken(messages::RenewDelegationTokenResponse::default().with_error_code(code))
        }
        ApiKey::ExpireDelegationToken => ResponseKind::ExpireDelegationToken(
            messages::ExpireDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::DescribeDelegationToken => ResponseKind::DescribeDelegationToken(
            messages::DescribeDelegationTokenResponse::default().with_error_code(code),
        ),
        ApiKey::ElectLeaders => {
            ResponseKind::ElectLeaders(messages::ElectLeadersResponse::default().with_error_code(code))
        }
        ApiKey::AlterPartitionReassignments => ResponseKind::AlterPartitionReassignments(
            messages::AlterPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::ListPartitionReassignments => ResponseKind::ListPartitionReassignments(
            messages::ListPartitionReassignmentsResponse::default().with_error_code(code),
        ),
        ApiKey::OffsetDelete => {
            ResponseKind::OffsetDelete(messages::OffsetDeleteResponse::default().with_error_code(code))
        }
        ApiKey::DescribeClientQuotas => {
            ResponseKind::DescribeClientQuotas(messages::DescribeClientQuotasResponse::default().with_error_code(code))
        }
        ApiKey::DescribeUserScramCredentials => ResponseKind::DescribeUserScramCredentials(
            messages::DescribeUserScramCredentialsResponse::default().with_error_code(code),
        ),
        ApiKey::Vote => ResponseKind::Vote(messages::VoteResponse::default().with_error_code(code)),
        ApiKey::BeginQuorumEpoch => {
            ResponseKind::BeginQuorumEpoch(messages::BeginQuorumEpochResponse::default().with_error_code(code))
        }
        ApiKey::EndQuorumEpoch => {
            ResponseKind::EndQuorumEpoch(messages::EndQuorumEpochResponse::default().with_error_code(code))
        }
        ApiKey::DescribeQuorum => {
            ResponseKind::DescribeQuorum(messages::DescribeQuorumResponse::default().with_error_code(code))
        }
        ApiKey::AlterPartition => {
            ResponseKind::AlterPartition(messages::AlterPartitionResponse::default().with_error_code(code))
        }
        ApiKey::UpdateFeatures => {
            ResponseKind::UpdateFeatures(messages::UpdateFeaturesResponse::default().with_error_code(code))
        }
        ApiKey::Envelope => ResponseKind::Envelope(messages::EnvelopeResponse::default().with_error_code(code)),
        ApiKey::FetchSnapshot => {
            ResponseKind::FetchSnapshot(messages::FetchSnapshotResponse::default().with_error_code(code))
        }
        ApiKey::DescribeCluster => {
            ResponseKind::DescribeCluster(messages::DescribeClusterResponse::default().with_error_code(code))
        }
        ApiKey::BrokerRegistration => {
            ResponseKind::BrokerRegistration(messages::BrokerRegistrationResponse::default().with_error_code(code))
        }
        ApiKey::BrokerHeartbeat => {
            ResponseKind::BrokerHeartbeat(messages::BrokerHeartbeatResponse::default().with_error_code(code))
        }
        ApiKey::UnregisterBroker => {
            ResponseKind::UnregisterBroker(messages::UnregisterBrokerResponse::default().with_error_code(code))
        }
        ApiKey::ListTransactions => {
            ResponseKind::ListTransactions(messages::ListTransactionsResponse::default().with_error_code(code))
        }
        ApiKey::AllocateProducerIds => {
            ResponseKind::AllocateProducerIds(messages::AllocateProducerIdsResponse::default().with_error_code(code))
        }
        ApiKey::ConsumerGroupHeartbeat => ResponseKind::ConsumerGroupHeartbeat(
            messages::ConsumerGroupHeartbeatResponse::default().with_error_code(code),
        ),
        ApiKey::ControllerRegistration => ResponseKind::ControllerRegistration(
            messages::ControllerRegistrationResponse::default().with_error_code(code),
        ),
        ApiKey::GetTelemetrySubscriptions => ResponseKind::GetTelemetrySubscriptions(
            messages::GetTelemetrySubscriptionsResponse::default().with_error_code(code),
        ),
        ApiKey::PushTelemetry => {
            ResponseKind::PushTelemetry(messages::PushTelemetryResponse::default().with_error_code(code))
        }
        ApiKey::AssignReplicasToDirs => {
            ResponseKind::AssignReplicasToDirs(messages::AssignReplicasToDirsResponse::default().with_error_code(code))
        }
        ApiKey::ListConfigResources => {
            ResponseKind::ListConfigResources(messages::ListConfigResourcesResponse::default().with_error_code(code))
        }
        ApiKey::ShareGroupHeartbeat => {
            ResponseKind::ShareGroupHeartbeat(messages::ShareGroupHeartbeatResponse::default().with_error_code(code))
        }
        ApiKey::ShareFetch => ResponseKind::ShareFetch(messages::ShareFetchResponse::default().with_error_code(code)),
        ApiKey::ShareAcknowledge => {
            ResponseKind::ShareAcknowledge(messages::ShareAcknowledgeResponse::default().with_error_code(code))
        }
        ApiKey::AddRaftVoter => {
            ResponseKind::AddRaftVoter(messages::AddRaftVoterResponse::default().with_error_code(code))
        }
        ApiKey::RemoveRaftVoter => {
            ResponseKind::RemoveRaftVoter(messages::RemoveRaftVoterResponse::default().with_error_code(code))
        }
        ApiKey::UpdateRaftVoter => {
            ResponseKind::UpdateRaftVoter(messages::UpdateRaftVoterResponse::default().with_error_code(code))
        }
        ApiKey::AlterShareGroupOffsets => ResponseKind::AlterShareGroupOffsets(
            messages::AlterShareGroupOffsetsResponse::default().with_error_code(code),
        ),
        ApiKey::DeleteShareGroupOffsets => ResponseKind::DeleteShareGroupOffsets(
            messages::DeleteShareGroupOffsetsResponse::default().with_error_code(code),
        ),
        ApiKey::Produce => ResponseKind::Produce(messages::ProduceResponse::default()),
        ApiKey::ListOffsets => ResponseKind::ListOffsets(messages::ListOffsetsResponse::default()),
        ApiKey::OffsetCommit => ResponseKind::OffsetCommit(messages::OffsetCommitResponse::default()),
        ApiKey::DescribeGroups => ResponseKind::DescribeGroups(messages::DescribeGroupsResponse::default()),
        ApiKey::CreateTopics => ResponseKind::CreateTopics(messages::CreateTopicsResponse::default()),
        ApiKey::DeleteTopics => ResponseKind::DeleteTopics(messages::DeleteTopicsResponse::default()),
        ApiKey::DeleteRecords => ResponseKind::DeleteRecords(messages::DeleteRecordsResponse::default()),
        ApiKey::OffsetForLeaderEpoch => {
            ResponseKind::OffsetForLeaderEpoch(messages::OffsetForLeaderEpochResponse::default())
        }
        ApiKey::WriteTxnMarkers => ResponseKind::WriteTxnMarkers(messages::WriteTxnMarkersResponse::default()),
        ApiKey::TxnOffsetCommit => ResponseKind::TxnOffsetCommit(messages::TxnOffsetCommitResponse::default()),
        ApiKey::CreateAcls => ResponseKind::CreateAcls(messages::CreateAclsResponse::default()),
        ApiKey::DeleteAcls => ResponseKind::DeleteAcls(messages::DeleteAclsResponse::default()),
        ApiKey::DescribeConfigs => ResponseKind::DescribeConfigs(messages::DescribeConfigsResponse::default()),
        ApiKey::AlterConfigs => ResponseKind::AlterConfigs(messages::AlterConfigsResponse::default()),
        ApiKey::AlterReplicaLogDirs => {
            ResponseKind::AlterReplicaLogDirs(messages::AlterReplicaLogDirsResponse::default())
        }
        ApiKey::CreatePartitions => ResponseKind::CreatePartitions(messages::CreatePartitionsResponse::default()),
        ApiKey::DeleteGroups => ResponseKind::DeleteGroups(messages::DeleteGroupsResponse::default()),
        ApiKey::IncrementalAlterConfigs => {
            ResponseKind::IncrementalAlterConfigs(messages::IncrementalAlterConfigsResponse::default())
        }
        ApiKey::AlterClientQuotas => ResponseKind::AlterClientQuotas(messages::AlterClientQuotasResponse::default()),
        ApiKey::AlterUserScramCredentials => {
            ResponseKind::AlterUserScramCredentials(messages::AlterUserScramCredentialsResponse::default())
        }
        ApiKey::DescribeProducers => ResponseKind::DescribeProducers(messages::DescribeProducersResponse::default()),
        ApiKey::DescribeTransactions => {
            ResponseKind::DescribeTransactions(messages::DescribeTransactionsResponse::default())
        }
        ApiKey::ConsumerGroupDescribe => {
            ResponseKind::ConsumerGroupDescribe(messages::ConsumerGroupDescribeResponse::default())
        }
        ApiKey::DescribeTopicPartitions => {
            ResponseKind::DescribeTopicPartitions(messages::DescribeTopicPartitionsResponse::default())
        }
        ApiKey::ShareGroupDescribe => ResponseKind::ShareGroupDescribe(messages::ShareGroupDescribeResponse::default()),
        ApiKey::InitializeShareGroupState => {
            ResponseKind::InitializeShareGroupState(messages::InitializeShareGroupStateResponse::default())
        }
        ApiKey::ReadShareGroupState => {
            ResponseKind::ReadShareGroupState(messages::ReadShareGroupStateResponse::default())
        }
        ApiKey::WriteShareGroupState => {
            ResponseKind::WriteShareGroupState(messages::WriteShareGroupStateResponse::default())
        }
        ApiKey::DeleteShareGroupState => {
            ResponseKind::DeleteShareGroupState(messages::DeleteShareGroupStateResponse::default())
        }
        ApiKey::ReadShareGroupStateSummary => {
            ResponseKind::ReadShareGroupStateSummary(messages::ReadShareGroupStateSummaryResponse::default())
        }
        ApiKey::DescribeShareGroupOffsets => {
            ResponseKind::DescribeShareGroupOffsets(messages::DescribeShareGroupOffsetsResponse::default())
        }
    }
}
