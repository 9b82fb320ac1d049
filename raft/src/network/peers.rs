//! The node's connections to its peers: one lazily connected, self-reconnecting tonic channel per
//! peer address, shared by every group's clients (and the repair reads), with the transport
//! settings they use.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tonic::transport::{Channel, Endpoint};

use crate::error::RaftError;
use crate::network::NetworkConfig;
use crate::network::multiplex::Multiplexer;
use crate::network::tls::TlsPem;
use crate::types::{GroupId, NodeId};

/// What this node last heard from a peer's node heartbeat (`crate::heartbeat`).
#[derive(Debug)]
struct Heard {
    /// When a node heartbeat from the peer (or its answer to ours) last arrived.
    at: Instant,
    /// The quiet groups its last node heartbeat named: group -> (term, last index).
    named: HashMap<GroupId, (u64, u64)>,
    /// That heartbeat's number.
    seq: u64,
}

/// How many messages of each kind this node sent to its peers (metrics, and the tests that count
/// what idle groups cost).
#[derive(Debug, Default)]
pub struct SentCounters {
    /// AppendEntries messages (unary, or one message of a replication or heartbeat stream):
    /// per-group heartbeats and replication.
    pub append_messages: AtomicU64,
    /// Of those, the ones sent alone (a replication stream of one request: openraft's per-group
    /// heartbeats), as `once` requests on the multiplexed call.
    pub lone_append_messages: AtomicU64,
    /// Of those, the ones sent on a replication session that carried no entries (commit notices
    /// that were not dropped, probes).
    pub entryless_session_messages: AtomicU64,
    /// Messages of the multiplexed replication calls (`network::multiplex`): each carries the
    /// replication requests of one or more groups' sessions, so `append_messages` sent on those
    /// calls divided by this is how many shared a message.
    pub multiplexed_messages: Arc<AtomicU64>,
    /// Vote and pre-vote requests.
    pub votes: AtomicU64,
    /// Node heartbeats sent (one per peer per tick, whatever the number of groups).
    pub node_heartbeats: AtomicU64,
    /// Node heartbeats received.
    pub node_heartbeats_received: AtomicU64,
    /// Writes whose group leader renewed its quorum-ack lease with a heartbeat round before
    /// proposing (`RaftGroup::wake_for_write`), over all the node's groups.
    pub write_lease_renewals: AtomicU64,
}

/// The endpoint of another node at `addr` ("host:port"): plaintext, or with `tls` TLS that
/// trusts only the cluster CA and presents this node's certificate. Every node-to-node connection
/// (Raft, repair reads, forwarded client requests, bootstrap probes) is made from it.
pub fn endpoint(addr: &str, tls: Option<&TlsPem>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.client_config()).map_err(|e| format!("TLS to {addr}: {e}")),
        None => Ok(endpoint),
    }
}

/// One channel per peer address, and the transport settings.
#[derive(Debug)]
pub struct Peers {
    node_id: NodeId,
    config: NetworkConfig,
    /// The certificates new connections present: `config.tls` until [`Peers::set_tls`].
    tls: RwLock<Option<TlsPem>>,
    /// How many times [`Peers::set_tls`] replaced it: holders of a channel compare it to know
    /// theirs is stale.
    tls_generation: AtomicU64,
    channels: Mutex<HashMap<String, Channel>>,
    /// The peers' node heartbeats: when each was last heard, and what it named.
    heard: Mutex<HashMap<NodeId, Heard>>,
    sent: SentCounters,
    /// The multiplexed replication call to each peer.
    multiplexer: Multiplexer,
}

impl Peers {
    /// The peers of node `node_id`, reached with `config`.
    pub fn new(node_id: NodeId, config: NetworkConfig) -> Result<Self, RaftError> {
        config.validate()?;
        let tls = RwLock::new(config.tls.clone());
        let sent = SentCounters::default();
        let multiplexer = Multiplexer::new(sent.multiplexed_messages.clone());
        Ok(Self {
            node_id,
            config,
            tls,
            tls_generation: AtomicU64::new(0),
            channels: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            sent,
            multiplexer,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The transport settings (with the TLS material the node started with: whether TLS is on;
    /// [`Peers::tls`] is what connections use now).
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The TLS material connections to peers are made with now (`None`: plaintext).
    pub fn tls(&self) -> Option<TlsPem> {
        self.tls.read().clone()
    }

    /// Replaces the certificates connections to peers present (a certificate reload) and drops
    /// the cached channels, so every channel made from now on uses them. Channels already handed
    /// out (and their connections) carry on until they are dropped; a group's Raft clients take a
    /// new one before their next RPC (`GroupNetworkFactory`).
    pub fn set_tls(&self, tls: TlsPem) {
        let mut channels = self.channels.lock();
        *self.tls.write() = Some(tls);
        channels.clear();
        self.multiplexer.clear();
        self.tls_generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every [`Peers::set_tls`]: a channel taken under another value presents
    /// certificates that were replaced since.
    pub fn tls_generation(&self) -> u64 {
        self.tls_generation.load(Ordering::Acquire)
    }

    /// The multiplexed replication calls to the peers.
    pub(crate) fn multiplexer(&self) -> &Multiplexer {
        &self.multiplexer
    }

    /// What this node sent (and how many node heartbeats it received).
    pub fn counters(&self) -> &SentCounters {
        &self.sent
    }

    /// Counts one message of a kind (`SentCounters` field).
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a node heartbeat from `from`, naming these quiet groups (group -> (term, last index)).
    /// Returns what the node's previous node heartbeat named (empty if none was heard).
    pub(crate) fn note_heartbeat(
        &self,
        from: NodeId,
        seq: u64,
        named: HashMap<GroupId, (u64, u64)>,
    ) -> HashMap<GroupId, (u64, u64)> {
        Self::count(&self.sent.node_heartbeats_received);
        self.heard.lock().insert(from, Heard { at: Instant::now(), named, seq }).map(|h| h.named).unwrap_or_default()
    }

    /// When each node was last heard (a node heartbeat, or its answer to ours).
    pub(crate) fn heard_at(&self) -> HashMap<NodeId, Instant> {
        self.heard.lock().iter().map(|(id, h)| (*id, h.at)).collect()
    }

    /// The number of the last node heartbeat heard from `node` (0: none).
    pub(crate) fn seen_seq(&self, node: NodeId) -> u64 {
        self.heard.lock().get(&node).map_or(0, |h| h.seq)
    }

    /// Records that `from` answered a node heartbeat (it is alive; what it leads quietly is
    /// unchanged until its own next heartbeat).
    pub(crate) fn note_alive(&self, from: NodeId) {
        let mut heard = self.heard.lock();
        match heard.get_mut(&from) {
            Some(h) => h.at = Instant::now(),
            None => {
                heard.insert(from, Heard { at: Instant::now(), named: HashMap::new(), seq: 0 });
            }
        }
    }

    /// Whether a node heartbeat from `node` (or its answer to ours) arrived within `within`.
    pub fn heard_within(&self, node: NodeId, within: Duration) -> bool {
        self.heard.lock().get(&node).is_some_and(|h| h.at.elapsed() <= within)
    }

    /// What `node`'s last node heartbeat said about `group`: `Some((term, last index))` if it
    /// named the group as a quiet group it leads, and when it arrived.
    pub(crate) fn named_by(&self, node: NodeId, group: GroupId) -> (Option<(u64, u64)>, Option<Instant>) {
        let heard = self.heard.lock();
        match heard.get(&node) {
            Some(h) => (h.named.get(&group).copied(), Some(h.at)),
            None => (None, None),
        }
    }

    /// The shared channel to `addr` ("host:port"), created lazily: no connection is made until the
    /// first request, and tonic reconnects on its own after a failure.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(addr, self.tls.read().as_ref())?
            .connect_timeout(Duration::from_millis(self.config.connect_timeout_ms))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(Some(crate::server::HTTP2_MAX_FRAME_BYTES));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tls::generate;

    fn pem(ca: &generate::Pem, id: NodeId) -> TlsPem {
        let node = generate::node(ca, id, &["localhost".into()], &[], 1).unwrap();
        TlsPem { ca: ca.cert.clone().into_bytes(), cert: node.cert.into_bytes(), key: node.key.into_bytes() }
    }

    #[tokio::test]
    async fn a_certificate_reload_replaces_the_material_and_the_cached_channels() {
        let ca = generate::ca("test CA", 1).unwrap();
        let first = pem(&ca, 1);
        let config = NetworkConfig { tls: Some(first.clone()), ..NetworkConfig::default() };
        let peers = Peers::new(1, config).unwrap();
        peers.channel("127.0.0.1:1").unwrap();
        assert_eq!(peers.channels.lock().len(), 1);
        assert_eq!(peers.tls(), Some(first.clone()));
        let generation = peers.tls_generation();

        let second = pem(&ca, 1);
        peers.set_tls(second.clone());
        assert_eq!(peers.tls(), Some(second), "new channels present the new certificate");
        assert!(peers.channels.lock().is_empty(), "cached channels were made with the old one");
        assert_ne!(peers.tls_generation(), generation, "holders of a channel can tell it is stale");
        assert_eq!(peers.config().tls, Some(first), "the start-up settings stay (TLS on)");
    }
}
