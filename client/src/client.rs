//! The connection to a cluster: endpoints, channels, leader discovery and bounded retries.
//!
//! Calls about one partition go to its leader from the first request: the leaders come from the
//! cluster's metadata (a topic's description, fetched with its partition count, or on a miss) and
//! are kept current by NOT_LEADER answers, which name the new leader. A call whose leader is
//! unknown goes to any member, which forwards it (the fallback).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tonic::transport::{Channel, Endpoint};

use crate::admin::Admin;
use crate::config::{ClientConfig, ConsumerConfig, ProducerConfig};
use crate::consumer::Consumer;
use crate::error::{ClientError, Retry};
use crate::producer::Producer;
use crate::proto;
use crate::proto::access_client::AccessClient;
use crate::proto::admin_client::AdminClient;
use crate::proto::consumer_groups_client::ConsumerGroupsClient;
use crate::proto::fetch_client::FetchClient;
use crate::proto::produce_client::ProduceClient;

/// Largest gRPC message the client sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The largest HTTP/2 frame the client accepts from a node (h2's default is 16 KiB): a fetch
/// answer arrives in frames of at most this, and each frame costs a header, a flow-control step
/// and a wake-up of the reader (the nodes accept the same from the client).
const HTTP2_MAX_FRAME_BYTES: u32 = 1 << 20;

/// Which node a call should go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Any member (the node forwards to whichever leader must answer).
    Any,
    /// The leader of one partition, when known.
    Partition(String, u32),
    /// A read of one partition: the replica that last served its reads (after another replica
    /// answered that its log starts past the offset), else as [`Route::Partition`]. Any replica
    /// serves reads.
    Read(String, u32),
}

/// A handle on a Shale cluster, cheap to clone and share.
///
/// It knows the bootstrap endpoints and every member it has learned of, caches partition leaders
/// (looked up in the topic's description before the first call about a partition whose leader it
/// does not know), and retries calls that fail because leadership moved or a node is unreachable,
/// stopping, timed out or cut the call ([`ClientError::retry`] is the one classification): on
/// `NOT_LEADER` it goes straight to the named leader and remembers it; otherwise it forgets the
/// leader and tries the next endpoint (which forwards) after a backoff. Every call is bounded by
/// [`ClientConfig::max_attempts`].
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    channels: RwLock<HashMap<String, Channel>>,
    endpoints: RwLock<Vec<String>>,
    leaders: RwLock<HashMap<(String, u32), String>>,
    /// Per partition: the replica that served the last read another replica could not (its log
    /// starts later); reads go there first until it fails.
    read_replicas: RwLock<HashMap<(String, u32), String>>,
    /// Member id -> address, from the last cluster status.
    members: RwLock<HashMap<u64, String>>,
    partition_counts: RwLock<HashMap<String, u32>>,
    next_endpoint: AtomicUsize,
    /// Held while a topic's leaders are looked up, so concurrent misses ask once.
    lookup: tokio::sync::Mutex<()>,
    /// Per topic, lookups finished (successful or not): a call that waited for another's lookup
    /// of its topic uses its answer instead of asking again.
    lookups_done: RwLock<HashMap<String, u64>>,
    /// Quota throttling the nodes reported.
    throttle: Throttle,
    /// The open produce calls, one per node ([`crate::produce_stream`]).
    produce_streams: crate::produce_stream::ProduceStreams,
}

/// Counts of the answers nodes delayed because this client's principal was over a quota.
#[derive(Debug, Default)]
struct Throttle {
    produce_answers: AtomicU64,
    produce_ms: AtomicU64,
    consume_answers: AtomicU64,
    consume_ms: AtomicU64,
}

/// How much the nodes throttled this client for its principal's quotas (docs/security.md
/// "Quotas"): answers delayed and the time they were delayed, per kind. Throttling is not an error:
/// the delayed answers carried their records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Produce answers that came with a `throttle_time_ms`.
    pub produce_throttled: u64,
    /// Their `throttle_time_ms`, summed.
    pub produce_throttle_ms: u64,
    /// Fetch answers and subscription messages that came with a `throttle_time_ms`.
    pub consume_throttled: u64,
    /// Their `throttle_time_ms`, summed.
    pub consume_throttle_ms: u64,
}

/// Where one attempt of a call goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    addr: String,
    /// `addr` is the partition leader as far as the client knows (see [`Client::call_to_leader`]).
    leader: bool,
}

/// What [`Client::call_tracked`] reports besides the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attempts {
    /// Attempts made.
    pub made: u32,
    /// Whether an earlier attempt failed in a way that may have taken effect
    /// ([`Retry::MaybeApplied`]), so an "already done" answer may be this call's own doing.
    pub maybe_applied: bool,
}

/// `http://host:port` for a `host:port` (or an address that already has a scheme).
fn endpoint_uri(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

impl Client {
    /// A client for the cluster behind `config.endpoints`. Connections open lazily, on first use.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        for e in &config.endpoints {
            Endpoint::from_shared(endpoint_uri(e))
                .map_err(|err| ClientError::InvalidEndpoint { endpoint: e.clone(), reason: err.to_string() })?;
        }
        let endpoints = config.endpoints.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                channels: RwLock::new(HashMap::new()),
                endpoints: RwLock::new(endpoints),
                leaders: RwLock::new(HashMap::new()),
                read_replicas: RwLock::new(HashMap::new()),
                members: RwLock::new(HashMap::new()),
                partition_counts: RwLock::new(HashMap::new()),
                next_endpoint: AtomicUsize::new(0),
                lookup: tokio::sync::Mutex::new(()),
                lookups_done: RwLock::new(HashMap::new()),
                throttle: Throttle::default(),
                produce_streams: Default::default(),
            }),
        })
    }

    /// A client for a comma-separated endpoint list with default settings.
    pub fn connect_to(endpoints: &str) -> Result<Self, ClientError> {
        Self::new(ClientConfig::from_endpoint_list(endpoints)?)
    }

    /// How much the nodes throttled this client (and its producers and consumers) for quotas.
    pub fn throttle_stats(&self) -> ThrottleStats {
        let t = &self.inner.throttle;
        ThrottleStats {
            produce_throttled: t.produce_answers.load(Ordering::Relaxed),
            produce_throttle_ms: t.produce_ms.load(Ordering::Relaxed),
            consume_throttled: t.consume_answers.load(Ordering::Relaxed),
            consume_throttle_ms: t.consume_ms.load(Ordering::Relaxed),
        }
    }

    /// Notes an answer's `throttle_time_ms` (of a produce if `produce`, else of a read), logged
    /// at DEBUG; 0 is no throttle.
    pub(crate) fn note_throttle(&self, produce: bool, throttle_time_ms: u32) {
        if throttle_time_ms == 0 {
            return;
        }
        let t = &self.inner.throttle;
        let (answers, ms) =
            if produce { (&t.produce_answers, &t.produce_ms) } else { (&t.consume_answers, &t.consume_ms) };
        answers.fetch_add(1, Ordering::Relaxed);
        ms.fetch_add(u64::from(throttle_time_ms), Ordering::Relaxed);
        let kind = if produce { "produce" } else { "consume" };
        tracing::debug!(kind, throttle_time_ms, "the node delayed its answer: this principal is over its quota");
    }

    /// The settings in use.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A producer on this client.
    pub fn producer(&self, config: ProducerConfig) -> Producer {
        Producer::new(self.clone(), config)
    }

    /// A consumer on this client.
    pub fn consumer(&self, config: ConsumerConfig) -> Consumer {
        Consumer::new(self.clone(), config)
    }

    /// The admin API on this client.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }

    /// The (lazily connecting) channel to `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(ch) = self.inner.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        let invalid = |err: tonic::transport::Error| ClientError::InvalidEndpoint {
            endpoint: addr.to_string(),
            reason: err.to_string(),
        };
        let tls = self.inner.config.tls.as_ref();
        let uri = match tls {
            Some(_) if !addr.contains("://") => format!("https://{addr}"),
            _ => endpoint_uri(addr),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(invalid)?
            .connect_timeout(Duration::from_millis(self.inner.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .max_frame_size(Some(HTTP2_MAX_FRAME_BYTES));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(invalid)?;
        }
        let ch = endpoint.connect_lazy();
        self.inner.channels.write().insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub(crate) fn produce_client(ch: Channel) -> ProduceClient<Channel> {
        ProduceClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn fetch_client(ch: Channel) -> FetchClient<Channel> {
        FetchClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn groups_client(ch: Channel) -> ConsumerGroupsClient<Channel> {
        ConsumerGroupsClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn access_client(ch: Channel) -> AccessClient<Channel> {
        AccessClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn admin_client(ch: Channel) -> AdminClient<Channel> {
        AdminClient::new(ch).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Wraps a message in a request with the configured timeout plus `extra`.
    pub(crate) fn request<T>(&self, message: T, extra: Duration) -> tonic::Request<T> {
        let mut req = self.authorized(message);
        req.set_timeout(Duration::from_millis(self.inner.config.request_timeout_ms) + extra);
        req
    }

    /// Wraps a message in a request that carries the configured token, or else password, if any
    /// (no timeout).
    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let config = &self.inner.config;
        let value = match (&config.token, &config.password) {
            (Some(token), _) => Some(token.header_value()),
            (None, Some(password)) => Some(password.header_value()),
            (None, None) => None,
        };
        if let Some(value) = value
            && let Ok(value) = value.parse()
        {
            req.metadata_mut().insert(crate::token::AUTHORIZATION, value);
        }
        req
    }

    /// Where `route` goes from what is cached: the preferred read replica of a read, else the
    /// partition's leader; `None` if neither is known.
    fn cached_target(&self, route: &Route) -> Option<Target> {
        if let Route::Read(topic, partition) = route
            && let Some(addr) = self.inner.read_replicas.read().get(&(topic.clone(), *partition))
        {
            return Some(Target { addr: addr.clone(), leader: false });
        }
        if let Route::Partition(topic, partition) | Route::Read(topic, partition) = route
            && let Some(addr) = self.inner.leaders.read().get(&(topic.clone(), *partition))
        {
            return Some(Target { addr: addr.clone(), leader: true });
        }
        None
    }

    /// Where the first attempt of a call on `route` goes. A partition whose leader is not cached
    /// has it looked up first (once, however many calls miss together); if the metadata does not
    /// name one, any member (which forwards).
    async fn first_target(&self, route: &Route) -> Target {
        if let Some(target) = self.cached_target(route) {
            return target;
        }
        if let Route::Partition(topic, _) | Route::Read(topic, _) = route {
            let done = || self.inner.lookups_done.read().get(topic).copied().unwrap_or(0);
            let done_before = done();
            let _lookup = self.inner.lookup.lock().await;
            if let Some(target) = self.cached_target(route) {
                return target;
            }
            if done() == done_before {
                // Best effort: if the lookup fails, the call itself reports what is wrong.
                if let Err(e) = self.describe_boxed(topic.clone()).await {
                    tracing::debug!(%topic, error = %e, "leader lookup failed; sending to any member");
                }
                *self.inner.lookups_done.write().entry(topic.clone()).or_default() += 1;
                if let Some(target) = self.cached_target(route) {
                    return target;
                }
            }
        }
        Target { addr: self.next_endpoint(), leader: false }
    }

    /// [`Admin::describe_topic`] (which caches what it learns), boxed: it is a call itself, and a
    /// call may start with a lookup.
    fn describe_boxed(&self, topic: String) -> Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + '_>> {
        Box::pin(async move { self.admin().describe_topic(&topic).await.map(drop) })
    }

    fn next_endpoint(&self) -> String {
        let endpoints = self.inner.endpoints.read();
        debug_assert!(!endpoints.is_empty(), "validated at construction");
        let i = self.inner.next_endpoint.fetch_add(1, Ordering::Relaxed);
        endpoints[i % endpoints.len()].clone()
    }

    fn learn_endpoint(&self, addr: &str) {
        if addr.is_empty() {
            return;
        }
        let mut endpoints = self.inner.endpoints.write();
        if !endpoints.iter().any(|e| e == addr) {
            endpoints.push(addr.to_string());
        }
    }

    fn remember_leader(&self, route: &Route, addr: &str) {
        if let Route::Partition(topic, partition) | Route::Read(topic, partition) = route {
            self.inner.leaders.write().insert((topic.clone(), *partition), addr.to_string());
        }
        self.learn_endpoint(addr);
    }

    fn forget_leader(&self, route: &Route) {
        if let Route::Partition(topic, partition) | Route::Read(topic, partition) = route {
            let key = (topic.clone(), *partition);
            self.inner.leaders.write().remove(&key);
            self.inner.read_replicas.write().remove(&key);
        }
    }

    /// Reads of `topic`/`partition` go to `addr` first from now on (until it fails).
    pub(crate) fn prefer_read_replica(&self, topic: &str, partition: u32, addr: &str) {
        self.learn_endpoint(addr);
        self.inner.read_replicas.write().insert((topic.to_string(), partition), addr.to_string());
    }

    /// Drops the preferred read replica of a partition.
    pub(crate) fn forget_read_replica(&self, topic: &str, partition: u32) {
        self.inner.read_replicas.write().remove(&(topic.to_string(), partition));
    }

    /// Runs `call` against the node `route` names, retrying retriable failures (bounded).
    pub(crate) async fn call<T, F, Fut>(&self, route: Route, call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_tracked(route, call).await.0
    }

    /// [`Client::call`] for a write that only the partition leader can serve: `call` is also told
    /// the node's address and whether it is the leader as far as the client knows, and then marks
    /// the request to be answered there (a produce stream request's `answer_here`, as the
    /// [`crate::meta::FORWARDED`] header marks a unary one) so a node that is no longer the leader
    /// answers NOT_LEADER naming the new one (remembered for the next call) rather than forwarding
    /// every request from now on.
    pub(crate) async fn call_to_leader<T, F, Fut>(&self, topic: &str, partition: u32, call: F) -> Result<T, ClientError>
    where
        F: FnMut(&str, Channel, bool) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(Route::Partition(topic.to_string(), partition), call).await.0
    }

    /// Sends a produce request on the produce call to `addr` (opened on `channel` if none is),
    /// with the configured request timeout; `answer_here` asks the node to answer itself (no
    /// forwarding), as the [`crate::meta::FORWARDED`] header asks of a unary request.
    pub(crate) async fn produce_on_call(
        &self,
        addr: &str,
        channel: Channel,
        request: proto::ProduceRequest,
        answer_here: bool,
    ) -> Result<tonic::Response<proto::ProduceResponse>, tonic::Status> {
        let metadata = || self.authorized(()).into_parts().0;
        let timeout = Duration::from_millis(self.inner.config.request_timeout_ms);
        self.inner
            .produce_streams
            .produce(addr, channel, metadata, request, answer_here, timeout)
            .await
            .map(tonic::Response::new)
    }

    /// One attempt of `call` at the node `addr` (no retry, no other node): for reads that must
    /// be answered by one particular replica.
    pub(crate) async fn call_at<T, F, Fut>(&self, addr: &str, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self.channel(addr)?;
        call(channel).await.map(tonic::Response::into_inner).map_err(ClientError::from_status)
    }

    /// [`Client::call`], also reporting how many attempts were made and whether one of them may
    /// have taken effect before failing (see [`Retry::MaybeApplied`]): a non-idempotent change
    /// uses it to recognise its own earlier attempt in an "already exists"/"not found" answer.
    pub(crate) async fn call_tracked<T, F, Fut>(&self, route: Route, mut call: F) -> (Result<T, ClientError>, Attempts)
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(route, |_, ch, _| call(ch)).await
    }

    /// The one retry loop: [`Client::call_tracked`], telling `call` the node's address and
    /// whether it is the partition leader as far as the client knows.
    async fn call_with<T, F, Fut>(&self, route: Route, mut call: F) -> (Result<T, ClientError>, Attempts)
    where
        F: FnMut(&str, Channel, bool) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let max_attempts = self.inner.config.max_attempts;
        let Target { addr: mut target, leader: mut to_leader } = self.first_target(&route).await;
        let mut attempts = Attempts::default();
        loop {
            attempts.made += 1;
            let attempt = attempts.made;
            let channel = match self.channel(&target) {
                Ok(ch) => ch,
                Err(e) => return (Err(e), attempts),
            };
            let err = match call(&target, channel, to_leader).await {
                Ok(response) => return (Ok(response.into_inner()), attempts),
                Err(status) => ClientError::from_status(status),
            };
            let retry = err.retry();
            if retry == Retry::Never {
                return (Err(err), attempts);
            }
            if attempt >= max_attempts {
                return (Err(ClientError::RetriesExhausted { attempts: attempt, last: Box::new(err) }), attempts);
            }
            attempts.maybe_applied |= retry == Retry::MaybeApplied;
            tracing::debug!(%target, attempt, error = %err, "retrying");
            match &err {
                ClientError::NotLeader { leader_addr: Some(addr), .. } if *addr != target => {
                    self.remember_leader(&route, addr);
                    target = addr.clone();
                    to_leader = matches!(route, Route::Partition(..) | Route::Read(..));
                    // A redirect is immediate the first time; later ones back off (leadership flapping).
                    if attempt > 1 {
                        tokio::time::sleep(self.inner.config.backoff(attempt - 1)).await;
                    }
                }
                _ => {
                    // The leader is unknown (or unreachable): any member, which forwards. The next
                    // call about the partition looks its leader up again.
                    self.forget_leader(&route);
                    target = self.next_endpoint();
                    to_leader = false;
                    tokio::time::sleep(self.inner.config.backoff(attempt)).await;
                }
            }
        }
    }

    /// Asks the cluster for its members and partition leaders and updates the caches.
    pub async fn refresh_metadata(&self) -> Result<proto::ClusterStatusResponse, ClientError> {
        let status = self
            .call(Route::Any, |ch| {
                let req = self.request(proto::ClusterStatusRequest {}, Duration::ZERO);
                async move { Self::admin_client(ch).cluster_status(req).await }
            })
            .await?;
        let addr_of: HashMap<u64, String> = status.members.iter().map(|m| (m.id, m.addr.clone())).collect();
        for m in &status.members {
            self.learn_endpoint(&m.addr);
        }
        self.inner.members.write().extend(addr_of.iter().map(|(id, addr)| (*id, addr.clone())));
        let mut leaders = self.inner.leaders.write();
        for p in &status.partitions {
            let key = (p.topic.clone(), p.partition);
            match addr_of.get(&p.leader_id) {
                Some(addr) if p.leader_id != 0 => {
                    leaders.insert(key, addr.clone());
                }
                _ => {
                    leaders.remove(&key);
                }
            }
        }
        Ok(status)
    }

    /// The number of partitions of `topic` (cached after the first lookup, which also caches the
    /// partitions' leaders).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self.inner.partition_counts.read().get(topic) {
            return Ok(*n);
        }
        let described = self.admin().describe_topic(topic).await?;
        let n = described.config.as_ref().map_or(described.partitions.len() as u32, |c| c.partitions);
        if n == 0 {
            return Err(ClientError::Protocol(format!("topic {topic} reports zero partitions")));
        }
        Ok(n)
    }

    /// Caches what a topic's description says: its partition count and each partition's leader
    /// (a partition without a leader right now is forgotten, so its next call looks again).
    pub(crate) fn learn_topic(&self, topic: &proto::TopicInfo) {
        let count = topic.config.as_ref().map_or(topic.partitions.len() as u32, |c| c.partitions);
        if count > 0 {
            self.inner.partition_counts.write().insert(topic.name.clone(), count);
        }
        for p in &topic.partitions {
            let route = Route::Partition(topic.name.clone(), p.partition);
            if p.leader_id != 0 && !p.leader_addr.is_empty() {
                self.remember_leader(&route, &p.leader_addr);
            } else {
                self.inner.leaders.write().remove(&(topic.name.clone(), p.partition));
            }
        }
    }

    /// The cached leader address of a partition, if any.
    pub fn cached_leader(&self, topic: &str, partition: u32) -> Option<String> {
        self.inner.leaders.read().get(&(topic.to_string(), partition)).cloned()
    }

    /// The replicas of a partition, `(node id, address)`, from a topic description (linearizable,
    /// on the metadata leader) and the members' addresses (refreshed when one is unknown).
    pub async fn partition_replicas(&self, topic: &str, partition: u32) -> Result<Vec<(u64, String)>, ClientError> {
        let described = self.admin().describe_topic(topic).await?;
        let info = described.partitions.iter().find(|p| p.partition == partition).ok_or_else(|| {
            ClientError::InvalidRequest(format!(
                "partition {partition} does not exist: topic {topic} has {} partitions",
                described.partitions.len()
            ))
        })?;
        if info.replicas.iter().any(|id| !self.inner.members.read().contains_key(id)) {
            self.refresh_metadata().await?;
        }
        let members = self.inner.members.read();
        Ok(info.replicas.iter().filter_map(|id| Some((*id, members.get(id)?.clone()))).collect())
    }

    /// Drops the cached partition count of `topic` (after it was altered or recreated).
    pub fn forget_topic(&self, topic: &str) {
        self.inner.partition_counts.write().remove(topic);
        self.inner.leaders.write().retain(|(t, _), _| t != topic);
        self.inner.read_replicas.write().retain(|(t, _), _| t != topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_endpoints_are_refused_up_front() {
        assert!(matches!(Client::new(ClientConfig::new(Vec::<String>::new())), Err(ClientError::NoEndpoints)));
        let err = Client::new(ClientConfig::new(["not a uri\n"])).unwrap_err();
        assert!(matches!(err, ClientError::InvalidEndpoint { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn unreachable_cluster_gives_up_after_the_configured_attempts() {
        // Port 1 on localhost refuses connections at once.
        let mut config = ClientConfig::new(["127.0.0.1:1"]);
        config.max_attempts = 3;
        config.initial_backoff_ms = 1;
        let client = Client::new(config).unwrap();
        let err = client.refresh_metadata().await.unwrap_err();
        match err {
            ClientError::RetriesExhausted { attempts, last } => {
                assert_eq!(attempts, 3);
                assert!(last.is_retriable(), "{last:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
