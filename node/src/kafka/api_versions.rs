//! ApiVersions: the one table of the APIs this listener serves and their version ranges (what
//! docs/kafka.md lists). A request of an API outside it is answered by [`super::unsupported`].

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, api_versions_response::ApiVersion};

/// Every API served, with the versions served: within what the `kafka-protocol` crate codes and
/// what Shale's model answers (Fetch and Produce stop before the versions that name topics by id,
/// ListOffsets before tiered-storage offsets, Metadata before its top-level error code).
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    // Version 0 would switch the connection to raw SASL frames; clients use 1.
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The versions of `key` served, if it is.
pub fn served(key: ApiKey) -> Option<(i16, i16)> {
    SERVED.iter().find(|(k, ..)| *k == key).map(|(_, min, max)| (*min, *max))
}

/// Whether version `version` of `key` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    served(key).is_some_and(|(min, max)| (min..=max).contains(&version))
}

/// The ApiVersions answer: every served API, and `UNSUPPORTED_VERSION` when the request's own
/// version was past what is served (the client then retries with a version from the list; the
/// answer is then encoded as version 0, as Kafka does).
pub fn response(supported: bool) -> ApiVersionsResponse {
    let api_keys = SERVED
        .iter()
        .map(|(key, min, max)| {
            ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)
        })
        .collect();
    let error_code = if supported { 0 } else { ResponseError::UnsupportedVersion.code() };
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_within_what_the_codec_knows() {
        for (key, min, max) in SERVED {
            let known = key.valid_versions();
            assert!(known.min <= *min && *max <= known.max && min <= max, "{key:?} {min}..={max} vs {known}");
        }
    }
}
