//! What every gRPC service shares: the cluster, limits, metrics, the frame of every handler
//! ([`NodeContext::handle`]), and forwarding to other nodes ([`NodeContext::or_forward`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use shale_client::proto::access_client::AccessClient;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::consumer_groups_client::ConsumerGroupsClient;
use shale_client::proto::fetch_client::FetchClient;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{ErrorCode, meta};
use shale_raft::cluster::access::{Operation, Resource};
use shale_raft::cluster::{Cluster, ClusterError, FromIndexProblem};
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::admission::Connections;
use crate::auth::AuthContext;
use crate::convert::errors::{cluster_error, limit};
use crate::limits::Limits;
use crate::metrics::{Metrics, RequestMetrics};
use crate::quota::{Charge, QuotaConfig, QuotaKind, Quotas};

/// Largest gRPC message the node sends to or accepts from another node when forwarding.
pub const FORWARD_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A generated tonic client of the client API, as the node uses it to forward a request to
/// another node: over a shared channel, with messages up to [`FORWARD_MAX_MESSAGE_BYTES`].
pub trait ForwardClient {
    /// The client over `channel`.
    fn over(channel: Channel) -> Self;
}

macro_rules! forward_clients {
    ($($client:ident),*) => {$(
        impl ForwardClient for $client<Channel> {
            fn over(channel: Channel) -> Self {
                $client::new(channel)
                    .max_decoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(FORWARD_MAX_MESSAGE_BYTES)
            }
        }
    )*};
}

forward_clients!(AccessClient, AdminClient, ConsumerGroupsClient, FetchClient, ProduceClient);

/// Who answers a request: this node (with the value its cluster call returned), or the node it was
/// forwarded to (with that node's whole answer).
#[derive(Debug)]
pub enum Served<T, Resp> {
    /// The cluster call succeeded here.
    Here(T),
    /// Another node answered.
    There(Resp),
}

impl<T, Resp> Served<T, Resp> {
    /// The answer: built from the value with `answer` if served here, else the other node's.
    pub fn answer(self, answer: impl FnOnce(T) -> Resp) -> Resp {
        match self {
            Served::Here(v) => answer(v),
            Served::There(resp) => resp,
        }
    }
}

/// Why [`NodeContext::or_forward`] has no answer.
#[derive(Debug)]
pub enum NotServed {
    /// The cluster call failed here and the request is not forwarded.
    Refused(ClusterError),
    /// The node the request was forwarded to answered this status (or could not be reached).
    Forwarded(Status),
}

impl From<NotServed> for Status {
    /// A refusal is the cluster error's status ([`cluster_error`]); a forwarded request's status
    /// is passed on unchanged.
    fn from(e: NotServed) -> Status {
        match e {
            NotServed::Refused(err) => cluster_error(err),
            NotServed::Forwarded(status) => status,
        }
    }
}

/// Counts client-API requests being served, so shutdown can wait for them to finish.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Held while one request is served.
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    /// Marks a request as started until the guard drops.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// As [`Self::enter`] while fewer than `max` requests are being served; `None` (nothing
    /// counted) at the limit.
    pub fn try_enter(&self, max: usize) -> Option<InFlightGuard<'_>> {
        let before = self.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(self);
        (before < max).then_some(guard)
    }

    /// Requests being served now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no request is being served.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// State shared by the node's services.
#[derive(Debug)]
pub struct NodeContext {
    /// This node's id.
    pub node_id: u64,
    /// The address other nodes reach this node at (its internal advertised address).
    pub advertise: String,
    /// The cluster handle.
    pub cluster: Arc<Cluster>,
    /// Request limits.
    pub limits: Limits,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Bound on a forwarded call.
    pub forward_timeout: Duration,
    /// Flips to `true` when the node shuts down (ends streams).
    pub shutdown: watch::Receiver<bool>,
    /// Client-API requests being served.
    pub in_flight: InFlight,
    /// Damaged log ranges on this node (the scrubber's findings).
    pub damage: Arc<crate::scrub::DamageRegistry>,
    /// The connections this node serves and the Subscribe streams open on them.
    pub connections: Arc<Connections>,
    /// Authentication and authorization settings ([`crate::auth`]).
    pub auth: AuthContext,
    /// Client-quota sensors ([`crate::quota`]).
    pub quotas: Quotas,
    channels: RwLock<HashMap<String, Channel>>,
}

/// Whether another node already forwarded this request (then it is never forwarded again).
pub fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(meta::FORWARDED)
}

impl NodeContext {
    /// A context for `cluster`.
    pub fn new(
        node_id: u64,
        advertise: String,
        cluster: Arc<Cluster>,
        limits: Limits,
        metrics: Arc<Metrics>,
        forward_timeout: Duration,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            node_id,
            advertise,
            cluster,
            connections: Arc::new(Connections::new(&limits, metrics.clone())),
            limits,
            metrics,
            forward_timeout,
            shutdown,
            in_flight: InFlight::default(),
            damage: Arc::default(),
            auth: AuthContext::default(),
            quotas: Quotas::new(QuotaConfig::default()),
            channels: RwLock::new(HashMap::new()),
        }
    }

    /// The context with these authorization settings.
    pub fn with_auth(mut self, auth: AuthContext) -> Self {
        self.auth = auth;
        self
    }

    /// The context with these quota measurement settings.
    pub fn with_quotas(mut self, config: QuotaConfig) -> Self {
        self.quotas = Quotas::new(config);
        self
    }

    /// The quota charge of the current request of `kind` (`None`: not charged, see
    /// [`crate::quota::charge_of`]), after waiting until the caller's last throttle on this node
    /// has passed (the node reads nothing more from an over-quota principal meanwhile). Answers the
    /// charge and the time waited.
    pub async fn quota_admit(&self, kind: QuotaKind) -> (Option<Charge>, Duration) {
        let caller = crate::auth::current();
        let Some(charge) = crate::quota::charge_of(caller.as_ref(), &self.cluster, kind) else {
            return (None, Duration::ZERO);
        };
        let wait = self.quotas.wait_before(&charge);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        (Some(charge), wait)
    }

    /// Charges `bytes` served for `charge`, delays the answer by the throttle time this leaves the
    /// principal owing, counts it, and answers the answer's `throttle_time_ms` (`waited` before
    /// plus the delay now).
    pub async fn quota_settle(&self, charge: Option<&Charge>, kind: QuotaKind, bytes: u64, waited: Duration) -> u32 {
        let delay = charge.map_or(Duration::ZERO, |c| self.quotas.record(c, bytes));
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        crate::quota::count(&self.metrics, kind, waited + delay);
        crate::quota::millis(waited + delay)
    }

    /// Allows the current caller `operation` on `resource`, or refuses it with NOT_AUTHORIZED
    /// (see [`AuthContext::authorize`]).
    pub async fn authorize(&self, operation: Operation, resource: Resource<'_>) -> Result<(), Status> {
        self.auth.authorize(&self.cluster, &self.metrics, operation, resource).await
    }

    /// Whether the current caller may do `operation` on `resource` (for filtering lists).
    pub fn allowed(&self, operation: Operation, resource: Resource<'_>) -> bool {
        let caller = crate::auth::current().unwrap_or_else(crate::auth::Caller::internal);
        self.auth.allows(&self.cluster, &caller.principal, operation, resource)
    }

    /// Where a failed call should be forwarded, if anywhere: the leader a `NotLeader` names, the
    /// partition's leader (hint) for `NotReplica`, or, for a topic or partition this node does not
    /// know, the metadata leader: a follower applies metadata a little after it is committed, so a
    /// topic that was just created (its creator already answered) may not be known here yet, while
    /// the metadata leader knows every committed change. Never for an already-forwarded request,
    /// never to this node itself.
    pub fn redirect(&self, err: &ClusterError, forwarded: bool, partition: Option<(&str, u32)>) -> Option<String> {
        if forwarded {
            return None;
        }
        let addr = match err {
            ClusterError::NotLeader { leader: Some((_, addr)) } => Some(addr.clone()),
            ClusterError::NotReplica { topic, partition, .. } => {
                self.cluster.leader_of(topic, *partition).map(|(_, addr)| addr)
            }
            ClusterError::NotLeader { leader: None } => {
                partition.and_then(|(t, p)| self.cluster.leader_of(t, p)).map(|(_, addr)| addr)
            }
            ClusterError::OffsetOutOfRange { .. } | ClusterError::InvalidFromIndex { .. } => {
                partition.and_then(|(t, p)| self.leader_ahead(err, t, p)).map(|(_, addr)| addr)
            }
            ClusterError::UnknownTopic { .. } | ClusterError::UnknownPartition { .. } => {
                self.cluster.metadata_leader().map(|(_, addr)| addr)
            }
            _ => None,
        }?;
        (addr != self.advertise && !addr.is_empty()).then_some(addr)
    }

    /// For a read past this replica's high watermark, or continuing from a log index past the
    /// last entry it applied: the partition's leader, if it is another node. A follower may lag
    /// the leader, so an offset a producer was just acknowledged (or an entry a client read from
    /// another replica) can be ahead of it; only the leader may call such a read out of range.
    pub fn leader_ahead(&self, err: &ClusterError, topic: &str, partition: u32) -> Option<(u64, String)> {
        match err {
            ClusterError::OffsetOutOfRange { requested, end, .. } if requested > end => {
                self.cluster.leader_of(topic, partition).filter(|(id, _)| *id != self.node_id)
            }
            ClusterError::InvalidFromIndex { reason: FromIndexProblem::PastApplied { .. }, .. } => {
                self.cluster.leader_of(topic, partition).filter(|(id, _)| *id != self.node_id)
            }
            _ => None,
        }
    }

    /// Drops the cached channels to other nodes (after a TLS reload: new ones present the new
    /// certificate).
    pub fn drop_channels(&self) {
        self.channels.write().clear();
    }

    /// The channel to another node.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(ch) = self.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = shale_raft::network::peers::endpoint(addr, self.cluster.router().peers().tls().as_ref())
            .map_err(Status::internal)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        self.channels.write().insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Sends `message` to the node at `addr` with the client method `method` (e.g.
    /// `AdminClient::create_topic`), marked as forwarded, and hands back its answer (success or
    /// status) unchanged.
    pub async fn forward<C, Req, Resp>(
        &self,
        addr: &str,
        message: Req,
        method: impl AsyncFnOnce(&mut C, Request<Req>) -> Result<Response<Resp>, Status>,
    ) -> Result<Resp, Status>
    where
        C: ForwardClient,
    {
        tracing::debug!(to = %addr, "forwarding");
        self.metrics.count_forwarded::<Req>();
        let mut client = C::over(self.channel(addr)?);
        let mut request = Request::new(message);
        if let Ok(v) = self.node_id.to_string().parse() {
            request.metadata_mut().insert(meta::FORWARDED, v);
        }
        crate::auth::principal::forward_headers(crate::auth::current().as_ref(), self.auth.tls, request.metadata_mut());
        request.set_timeout(self.forward_timeout);
        let watch = SlowForward { to: addr, started: Instant::now() };
        let result = method(&mut client, request).await.map(Response::into_inner);
        if let Err(status) = &result
            && watch.started.elapsed() >= SlowForward::THRESHOLD
        {
            tracing::warn!(to = %addr, code = ?status.code(), message = status.message(), "forwarded request failed slowly");
        }
        drop(watch);
        result
    }

    /// The one forwarding rule of the client API. `result` is what this node's cluster call for
    /// `req` returned: its value if it succeeded; if it failed with an error that names another
    /// node that can serve `req` ([`Self::redirect`]; never for a `forwarded` request), that node's
    /// answer to `req`, sent with the client method `method`; else the error, refused here (`?`
    /// makes it a status with [`cluster_error`]).
    pub async fn or_forward<T, C, Req, Resp>(
        &self,
        result: Result<T, ClusterError>,
        forwarded: bool,
        partition: Option<(&str, u32)>,
        req: Req,
        method: impl AsyncFnOnce(&mut C, Request<Req>) -> Result<Response<Resp>, Status>,
    ) -> Result<Served<T, Resp>, NotServed>
    where
        C: ForwardClient,
    {
        match result {
            Ok(v) => Ok(Served::Here(v)),
            Err(err) => match self.redirect(&err, forwarded, partition) {
                Some(addr) => self.forward(&addr, req, method).await.map(Served::There).map_err(NotServed::Forwarded),
                None => Err(NotServed::Refused(err)),
            },
        }
    }

    /// The frame of every client-API handler: authenticates the caller ([`crate::auth::principal`];
    /// the handler authorizes it with [`Self::authorize`]) and counts the request in flight
    /// (shutdown waits for it) while `serve` answers its message, told whether another node
    /// forwarded it. At `limits.max_in_flight_requests` the request is refused with
    /// TOO_MANY_REQUESTS (retryable: nothing was done).
    pub async fn handle<Req, Resp>(
        &self,
        request: Request<Req>,
        serve: impl AsyncFnOnce(Req, bool) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status> {
        let _in_flight = self.enter_in_flight()?;
        let caller = self.authenticate(&request).await?;
        let forwarded = is_forwarded(&request);
        self.serve_as(caller, serve(request.into_inner(), forwarded)).await.map(Response::new)
    }

    /// Counts one request in flight until the guard drops (shutdown waits for it); at
    /// `limits.max_in_flight_requests` it is refused with TOO_MANY_REQUESTS (retryable: nothing
    /// was done).
    pub fn enter_in_flight(&self) -> Result<InFlightGuard<'_>, Status> {
        let max = self.limits.max_in_flight_requests;
        self.in_flight.try_enter(max as usize).ok_or_else(|| {
            self.metrics.count_limit_refusal("max_in_flight_requests");
            limit(
                ErrorCode::TooManyRequests,
                format!("the node is serving max_in_flight_requests = {max} requests; retry after a backoff"),
                u64::from(max),
            )
        })
    }

    /// The caller of `request` ([`crate::auth::principal::authenticate`]).
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<crate::auth::Caller, Status> {
        crate::auth::principal::authenticate(request, &self.cluster, &self.auth, &self.metrics).await
    }

    /// Runs `serve` as `caller` (what [`Self::authorize`] checks), its refusal as a client may be
    /// told it ([`Self::for_clients`]).
    pub async fn serve_as<Resp>(
        &self,
        caller: crate::auth::Caller,
        serve: impl std::future::Future<Output = Result<Resp, Status>>,
    ) -> Result<Resp, Status> {
        crate::auth::serve_as(caller, serve).await.map_err(|status| self.for_clients(status))
    }

    /// `status` as a client may be told it: a leader it names (`shale-leader-id`,
    /// `shale-leader-addr`, and the address in its message) is named by the member's **client**
    /// address. The cluster layer names leaders by their internal address (Raft's), which the
    /// node forwards to; clients are never sent there. A leader the metadata does not list (yet)
    /// keeps the address it had.
    pub fn for_clients(&self, status: Status) -> Status {
        let header = |key: &str| status.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
        let Some(id) = header(meta::LEADER_ID).and_then(|v| v.parse::<u64>().ok()) else { return status };
        let Some(addrs) = self.cluster.member_addrs(id) else { return status };
        let named = header(meta::LEADER_ADDR).unwrap_or_default();
        if named == addrs.client {
            return status;
        }
        let mut metadata = status.metadata().clone();
        match addrs.client.parse() {
            Ok(v) => {
                metadata.insert(meta::LEADER_ADDR, v);
            }
            Err(_) => {
                metadata.remove(meta::LEADER_ADDR);
            }
        }
        let message = if named.is_empty() {
            status.message().to_string()
        } else {
            status.message().replace(&named, &addrs.client)
        };
        Status::with_details_and_metadata(status.code(), message, status.details().to_vec().into(), metadata)
    }

    /// [`Self::handle`], and counts the request in `metrics` (handled, failed, latency).
    pub async fn handle_timed<Req, Resp>(
        &self,
        metrics: &RequestMetrics,
        request: Request<Req>,
        serve: impl AsyncFnOnce(Req, bool) -> Result<Resp, Status>,
    ) -> Result<Response<Resp>, Status> {
        let started = Instant::now();
        let result = self.handle(request, serve).await;
        metrics.record(started, result.is_ok());
        result
    }

    /// The internal address of a member (where this node forwards to).
    pub fn member_addr(&self, id: u64) -> Option<String> {
        self.cluster.member_addrs(id).map(|a| a.internal)
    }
}

/// Logs a forwarded request that took longer than [`SlowForward::THRESHOLD`] (also when it is
/// dropped mid-way by the caller's deadline).
struct SlowForward<'a> {
    to: &'a str,
    started: Instant,
}

impl SlowForward<'_> {
    const THRESHOLD: Duration = Duration::from_secs(1);
}

impl Drop for SlowForward<'_> {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        if took >= Self::THRESHOLD {
            tracing::warn!(to = %self.to, took_ms = took.as_millis() as u64, "slow forwarded request");
        }
    }
}
