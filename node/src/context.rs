//! What every gRPC service shares: the cluster, limits, metrics, and forwarding to other nodes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use shale_client::meta;
use shale_raft::cluster::{Cluster, ClusterError};
use tokio::sync::{Notify, watch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::limits::Limits;
use crate::metrics::Metrics;

/// Largest gRPC message the node sends to or accepts from another node when forwarding.
pub const FORWARD_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

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
    /// The address this node advertises.
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
            limits,
            metrics,
            forward_timeout,
            shutdown,
            in_flight: InFlight::default(),
            damage: Arc::default(),
            channels: RwLock::new(HashMap::new()),
        }
    }

    /// Where a failed call should be forwarded, if anywhere: the leader a `NotLeader` names, or the
    /// partition's leader (hint) for `NotReplica`. Never for an already-forwarded request, never to
    /// this node itself.
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
            ClusterError::OffsetOutOfRange { .. } => {
                partition.and_then(|(t, p)| self.leader_ahead(err, t, p)).map(|(_, addr)| addr)
            }
            _ => None,
        }?;
        (addr != self.advertise && !addr.is_empty()).then_some(addr)
    }

    /// For a read past this replica's high watermark: the partition's leader, if it is another
    /// node. A follower may lag the leader, so an offset a producer was just acknowledged can be
    /// ahead of it; only the leader may call such an offset out of range.
    pub fn leader_ahead(&self, err: &ClusterError, topic: &str, partition: u32) -> Option<(u64, String)> {
        match err {
            ClusterError::OffsetOutOfRange { requested, end, .. } if requested > end => {
                self.cluster.leader_of(topic, partition).filter(|(id, _)| *id != self.node_id)
            }
            _ => None,
        }
    }

    /// The channel to another node.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(ch) = self.channels.read().get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        self.channels.write().insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Sends `message` to the node at `addr`, marked as forwarded, and hands back its answer
    /// (success or status) unchanged.
    pub async fn forward<Req, Resp, F, Fut>(&self, addr: &str, message: Req, call: F) -> Result<Resp, Status>
    where
        F: FnOnce(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        tracing::debug!(to = %addr, "forwarding");
        self.metrics.count_forwarded::<Req>();
        let channel = self.channel(addr)?;
        let mut request = Request::new(message);
        if let Ok(v) = self.node_id.to_string().parse() {
            request.metadata_mut().insert(meta::FORWARDED, v);
        }
        request.set_timeout(self.forward_timeout);
        call(channel, request).await.map(Response::into_inner)
    }

    /// The advertised address of a member.
    pub fn member_addr(&self, id: u64) -> Option<String> {
        self.cluster.cluster_status().members.into_iter().find(|m| m.id == id).map(|m| m.addr)
    }
}
