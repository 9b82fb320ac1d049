//! Node configuration: defaults, a TOML file, `SHALE_*` environment variables and flags, in
//! increasing precedence (flags and env vars are handled by [`crate::cli`]; this module holds the
//! values, the file format and validation).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shale_storage::limits;

/// Where a node keeps its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Segment files under `data_dir` (the default).
    #[default]
    Disk,
    /// In memory only: lost on restart. For tests and experiments.
    Memory,
}

/// Request limits (`[limits]`), checked once, at the node's edge ([`crate::limits`]); each refusal
/// names the limit and its value. Defaults and hard maximums come from the one table,
/// [`shale_storage::limits`] (also listed in docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest record (key + value + headers), in bytes.
    pub max_record_bytes: usize,
    /// Most records in one Produce request.
    pub max_batch_records: usize,
    /// Largest gRPC request, in bytes.
    pub max_request_bytes: usize,
    /// Most partitions one topic may have.
    pub max_partitions_per_topic: u32,
    /// Largest (and default) `max_bytes` of a fetch.
    pub max_fetch_bytes: u32,
    /// Longest long-poll wait of a fetch, in ms.
    pub max_wait_ms: u32,
    /// Most topics the cluster may hold (the metadata leader's value decides).
    pub max_topics: u32,
    /// Most partitions, over all topics, the cluster may hold (the metadata leader's value decides).
    pub max_partitions: u32,
    /// Most partition replicas one node may hold (the metadata leader's value decides; the
    /// `[memory]` budget may set a tighter bound).
    pub max_partitions_per_node: u32,
    /// Most TCP connections this node serves at once; one more is answered TOO_MANY_CONNECTIONS
    /// and closed.
    pub max_connections: u32,
    /// Most TCP connections the internal listener (when separate) serves at once. Only peers use
    /// it, so one more is closed at accept, before its TLS handshake, unanswered: a flood of
    /// connections to the internal port holds at most this many.
    pub max_internal_connections: u32,
    /// Most Subscribe streams open on one connection.
    pub max_subscriptions_per_connection: u32,
    /// Most Subscribe streams this node serves at once.
    pub max_subscriptions: u32,
    /// Most client-API requests this node serves at once; one more is answered TOO_MANY_REQUESTS.
    pub max_in_flight_requests: u32,
}

/// Default of `limits.max_internal_connections`: a peer keeps a few connections to each node
/// (Raft, replication streams, forwarding, repair reads), so this leaves room for hundreds of peers.
pub const DEFAULT_INTERNAL_CONNECTIONS: u32 = 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: limits::DEFAULT_RECORD_BYTES,
            max_batch_records: limits::DEFAULT_BATCH_RECORDS,
            max_request_bytes: limits::DEFAULT_REQUEST_BYTES,
            max_partitions_per_topic: limits::DEFAULT_PARTITIONS_PER_TOPIC,
            max_fetch_bytes: limits::DEFAULT_FETCH_BYTES,
            max_wait_ms: limits::DEFAULT_FETCH_WAIT_MS,
            max_topics: limits::DEFAULT_TOPICS,
            max_partitions: limits::DEFAULT_CLUSTER_PARTITIONS,
            max_partitions_per_node: limits::DEFAULT_PARTITIONS_PER_NODE,
            max_connections: limits::DEFAULT_CONNECTIONS,
            max_internal_connections: DEFAULT_INTERNAL_CONNECTIONS,
            max_subscriptions_per_connection: limits::DEFAULT_SUBSCRIPTIONS_PER_CONNECTION,
            max_subscriptions: limits::DEFAULT_SUBSCRIPTIONS,
            max_in_flight_requests: limits::DEFAULT_IN_FLIGHT_REQUESTS,
        }
    }
}

/// The node's memory budget (`[memory]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Memory {
    /// Bytes the in-memory log tails of all Raft groups on the node hold together (hot groups
    /// get more, idle ones shrink to the floor).
    pub log_cache_bytes: usize,
    /// Bytes no group's log tail is squeezed below. The node takes at most
    /// `log_cache_bytes / log_cache_floor_bytes - 1` partition replicas.
    pub log_cache_floor_bytes: usize,
    /// Bytes of each log segment's synced tail left in the OS page cache after an fsync; older
    /// synced bytes are dropped from it (`posix_fadvise(DONTNEED)`) and read from the disk when
    /// asked for (README "Page cache behind the tail"). 0: leave the page cache to the OS.
    pub page_cache_keep_bytes: u64,
    /// The most bytes of synced tails all of the node's log segments together leave in the OS
    /// page cache; past it, the tails synced longest ago are dropped whole (README "Many
    /// partitions write into pages they freed"). 0: no shared limit.
    pub page_cache_budget_bytes: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            log_cache_bytes: shale_raft::entry_cache::DEFAULT_NODE_LOG_CACHE_BYTES,
            log_cache_floor_bytes: shale_raft::entry_cache::DEFAULT_LOG_CACHE_FLOOR_BYTES,
            page_cache_keep_bytes: shale_storage::DEFAULT_PAGE_CACHE_KEEP_BYTES,
            page_cache_budget_bytes: shale_storage::DEFAULT_PAGE_CACHE_BUDGET_BYTES,
        }
    }
}

/// Raft timing for every group on the node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Bound on every wait inside a cluster call (commit, read-index).
    pub request_timeout_ms: u64,
    /// Every Raft group snapshots after this many log entries since its last snapshot; 0 = only
    /// when retention asks for one.
    pub snapshot_every_entries: u64,
    /// A partition group idle this long (every follower matched) goes quiet: no per-group
    /// heartbeats or election timers while the coalesced node heartbeat keeps its lease; 0 = never.
    pub quiesce_after_ms: u64,
    /// Longest a partition leader holds a retention purge back for a live follower still catching
    /// up below the retention start (past it, that follower catches up by snapshot).
    pub retention_hold_max_ms: u64,
    /// Longest a partition leader holds back a commit notice (an AppendEntries carrying only a
    /// newer commit index) to a follower, hoping the next entries carry it: a follower of an idle
    /// partition applies a batch, and serves it to follower reads, up to this much later (group
    /// heartbeats carry the commit too). Acknowledgements do not wait for it; 0 = send at once.
    pub commit_notice_delay_ms: u64,
}

/// How many election timeouts (the maximum) a metadata leader may go without a quorum
/// acknowledgement before `/readyz` reports it not ready.
pub const READY_QUORUM_ACK_ELECTION_TIMEOUTS: u64 = 4;

impl RaftTiming {
    /// The readiness bound on the age of the metadata leader's last quorum acknowledgement:
    /// [`READY_QUORUM_ACK_ELECTION_TIMEOUTS`] x `election_timeout_max_ms`.
    pub fn ready_quorum_ack_max_ms(&self) -> u64 {
        READY_QUORUM_ACK_ELECTION_TIMEOUTS.saturating_mul(self.election_timeout_max_ms)
    }
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            // A heartbeat's answer counts only if it comes back within one interval, and a
            // follower answers once its group's log is flushed: with hundreds of groups fsyncing
            // on a small machine, 100 ms intervals let leaders' leases lapse while followers kept
            // following (writes refused with no leader to name, for minutes; see ARCHITECTURE.md
            // "Heartbeats and quiet groups"). Kafka's KRaft uses 500 ms / 1 s, etcd 100 ms / 1 s.
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            request_timeout_ms: 10_000,
            snapshot_every_entries: 10_000,
            quiesce_after_ms: 500,
            retention_hold_max_ms: 300_000,
            // One heartbeat interval: producing to 300 partitions, it took AppendEntries per batch
            // from ~4.6 to ~3.0-3.5 (README "Threads kept, and commit notices held").
            commit_notice_delay_ms: 250,
        }
    }
}

/// TLS (`[tls]`): PEM files of the cluster CA, this node's certificate and its key. With it the
/// gRPC listener speaks only TLS: clients must trust the CA (a client certificate is optional and
/// must chain to the CA when presented), and every Raft RPC must come with a node certificate
/// (URI SAN `shale://node/<id>`) naming the node the RPC claims to come from, a member of the group.
/// Nodes reach each other with their own certificate. See docs/security.md.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), made by `shale cert node`.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// How often the three files are checked for a change (modification time and length; a
    /// Kubernetes Secret update swaps a symlink, which this sees too): a change reloads them
    /// (docs/security.md, "Certificate reload"). 0: only on SIGHUP.
    #[serde(default = "default_tls_watch_ms")]
    pub watch_interval_ms: u64,
}

/// Default [`TlsFiles::watch_interval_ms`].
pub const DEFAULT_TLS_WATCH_MS: u64 = 5_000;

fn default_tls_watch_ms() -> u64 {
    DEFAULT_TLS_WATCH_MS
}

/// Everything a node needs to run.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: unique in the cluster, stable across restarts, at least 1.
    pub node_id: u64,
    /// Where the gRPC server listens when `client_listen` is not set; with no `internal_listen`
    /// this one listener serves the client API and the Raft transport. Port 0 picks one.
    pub grpc_listen: SocketAddr,
    /// The address advertised for `grpc_listen` (to clients, and to nodes while there is no
    /// `internal_listen`) unless `client_advertise` / `internal_advertise` say otherwise; defaults to
    /// the listener's bound address, which must then not be a wildcard address.
    pub grpc_advertise: Option<String>,
    /// Where the client listener (client API only; no Raft) listens; default `grpc_listen`.
    pub client_listen: Option<SocketAddr>,
    /// The `host:port` clients are told for this node (leaders, redirects, `cluster status`);
    /// default `grpc_advertise`, else the client listener's bound address.
    pub client_advertise: Option<String>,
    /// Where the internal listener (Raft transport, repair reads, requests forwarded by other
    /// nodes; with `[tls]` only node certificates) listens. Not set: the client listener serves
    /// both (one listener, as before).
    pub internal_listen: Option<SocketAddr>,
    /// The `host:port` other nodes reach this node at (Raft membership, forwarding, `peers`);
    /// default: the internal listener's bound address, or with one listener `grpc_advertise`, else
    /// its bound address.
    pub internal_advertise: Option<String>,
    /// Where the HTTP server (health, readiness, metrics) listens. Port 0 picks one.
    pub http_listen: SocketAddr,
    /// The initial cluster members, id -> `host:port`, this node included. The lowest id
    /// bootstraps the cluster once all are reachable. Empty: a single-node cluster of this node.
    pub peers: BTreeMap<u64, String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Disk or memory.
    pub storage: StorageKind,
    /// Request limits.
    pub limits: Limits,
    /// Memory budget.
    pub memory: Memory,
    /// Raft timing.
    pub raft: RaftTiming,
    /// How long a graceful shutdown waits for in-flight requests before cutting them.
    pub shutdown_grace_ms: u64,
    /// Size at which a log segment is sealed and the next one started (at least 4096 bytes).
    pub segment_bytes: u64,
    /// Whether a log append of 64 KiB or more is hashed and encoded on a storage helper thread
    /// while the appending thread writes the parts already done (`StorageOptions::prepare_ahead`).
    /// Off by default: on a node whose cores are busy (the usual case under load) the two threads'
    /// hand-offs and waits for each other cost more CPU than they save time (README "One thread
    /// per append").
    pub prepare_ahead: bool,
    /// How often each node applies its topics' retention limits to its replicas.
    pub retention_interval_ms: u64,
    /// The background scrubber (`[scrub]`).
    pub scrub: crate::scrub::ScrubConfig,
    /// TLS on the gRPC listener and between nodes (`[tls]`); absent: plaintext.
    pub tls: Option<TlsFiles>,
    /// Authorization (`[auth]`): off by default. See docs/security.md.
    pub auth: crate::auth::AuthConfig,
    /// How client quotas are measured (`[quotas]`; the rates are set with `shale quota`).
    pub quotas: crate::quota::QuotaConfig,
    /// The consumer-group coordinator (`[groups]`; it runs on the metadata leader, whose values
    /// decide). See docs/operations.md and ARCHITECTURE.md ("Consumer groups").
    pub groups: shale_raft::cluster::GroupsConfig,
    /// The Kafka listener (`[kafka]`): on by default. See docs/kafka.md.
    pub kafka: crate::kafka::KafkaConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            grpc_advertise: None,
            client_listen: None,
            client_advertise: None,
            internal_listen: None,
            internal_advertise: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            peers: BTreeMap::new(),
            data_dir: PathBuf::from("./data/node-1"),
            storage: StorageKind::Disk,
            limits: Limits::default(),
            memory: Memory::default(),
            raft: RaftTiming::default(),
            shutdown_grace_ms: 5_000,
            segment_bytes: shale_storage::StorageOptions::default().max_segment_bytes,
            prepare_ahead: false,
            retention_interval_ms: 30_000,
            scrub: crate::scrub::ScrubConfig::default(),
            tls: None,
            auth: crate::auth::AuthConfig::default(),
            quotas: crate::quota::QuotaConfig::default(),
            groups: shale_raft::cluster::GroupsConfig::default(),
            kafka: crate::kafka::KafkaConfig::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: toml::de::Error,
    },
    /// A `peers` list entry is not `id=host:port`.
    #[error("invalid peer entry {entry:?}: {reason} (expected `id=host:port`, comma-separated)")]
    Peer {
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A value is out of range or values contradict each other.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

impl NodeConfig {
    /// Reads a TOML file; keys not in the file keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Where the client listener listens: `client_listen`, else `grpc_listen`.
    pub fn client_listen_addr(&self) -> SocketAddr {
        self.client_listen.unwrap_or(self.grpc_listen)
    }

    /// The address clients are told for this node, given the client listener's bound address:
    /// `client_advertise`, else `grpc_advertise`, else the bound address.
    pub fn client_advertise_addr(&self, client_bound: SocketAddr) -> String {
        self.client_advertise
            .clone()
            .or_else(|| self.grpc_advertise.clone())
            .unwrap_or_else(|| client_bound.to_string())
    }

    /// The address other nodes reach this node at, given the bound address of the listener that
    /// serves them (the internal one, or the one listener): `internal_advertise`, else (one
    /// listener only) `grpc_advertise`, else the bound address.
    pub fn internal_advertise_addr(&self, internal_bound: SocketAddr) -> String {
        let shared = if self.internal_listen.is_none() { self.grpc_advertise.clone() } else { None };
        self.internal_advertise.clone().or(shared).unwrap_or_else(|| internal_bound.to_string())
    }

    /// The initial members' internal addresses: `peers`, or this node alone when empty.
    pub fn initial_members(&self, internal_advertise: &str) -> BTreeMap<u64, String> {
        if self.peers.is_empty() {
            BTreeMap::from([(self.node_id, internal_advertise.to_string())])
        } else {
            self.peers.clone()
        }
    }

    /// Checks values and their consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.node_id == 0 {
            return invalid("node_id", "must be at least 1".into());
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return invalid("peers", format!("must include this node (id {})", self.node_id));
        }
        let g = &self.groups;
        let max_session = shale_raft::cluster::groups::limits::MAX_SESSION_TIMEOUT_MS;
        if g.min_session_timeout_ms == 0
            || g.min_session_timeout_ms > g.max_session_timeout_ms
            || g.max_session_timeout_ms > max_session
            || !(g.min_session_timeout_ms..=g.max_session_timeout_ms).contains(&g.default_session_timeout_ms)
        {
            return invalid(
                "groups",
                format!(
                    "need 0 < min_session_timeout_ms <= default_session_timeout_ms <= max_session_timeout_ms <= \
                     {max_session}, got {} / {} / {}",
                    g.min_session_timeout_ms, g.default_session_timeout_ms, g.max_session_timeout_ms
                ),
            );
        }
        if g.heartbeat_interval_ms == 0
            || g.check_interval_ms == 0
            || g.offsets_retention_ms == 0
            || g.rebalance_timeout_ms == 0
        {
            return invalid(
                "groups",
                "heartbeat_interval_ms, check_interval_ms, offsets_retention_ms and rebalance_timeout_ms are > 0"
                    .into(),
            );
        }
        let client_listen = self.client_listen_addr();
        if self.client_advertise.is_none() && self.grpc_advertise.is_none() && client_listen.ip().is_unspecified() {
            let field = if self.client_listen.is_some() { "client_advertise" } else { "grpc_advertise" };
            return invalid(
                field,
                format!("required when the client listener is a wildcard address ({client_listen})"),
            );
        }
        match self.internal_listen {
            Some(internal) => {
                if self.internal_advertise.is_none() && internal.ip().is_unspecified() {
                    return invalid(
                        "internal_advertise",
                        format!("required when internal_listen is a wildcard address ({internal})"),
                    );
                }
                if internal == client_listen && internal.port() != 0 {
                    return invalid("internal_listen", format!("{internal} is also the client listener"));
                }
            }
            None => {
                // One listener: nodes are told `internal_advertise`, else `grpc_advertise`, else
                // the bound address (a client-only `client_advertise` is not for nodes).
                if self.internal_advertise.is_none()
                    && self.grpc_advertise.is_none()
                    && client_listen.ip().is_unspecified()
                {
                    return invalid(
                        "internal_advertise",
                        format!("required when the one listener is a wildcard address ({client_listen})"),
                    );
                }
            }
        }
        if let Some(advertise) = &self.kafka.advertise
            && crate::kafka::split_host_port(advertise).is_none()
        {
            return invalid("kafka.advertise", format!("{advertise:?} is not host:port"));
        }
        let l = &self.limits;
        let in_range = |field, value: u64, max: u64| {
            if (1..=max).contains(&value) { Ok(()) } else { invalid(field, format!("{value} is not in 1..={max}")) }
        };
        in_range("limits.max_record_bytes", l.max_record_bytes as u64, limits::MAX_RECORD_BYTES as u64)?;
        in_range("limits.max_batch_records", l.max_batch_records as u64, limits::MAX_RECORDS_PER_PRODUCE as u64)?;
        if l.max_request_bytes < l.max_record_bytes {
            return invalid(
                "limits.max_request_bytes",
                format!("{} is below max_record_bytes ({})", l.max_request_bytes, l.max_record_bytes),
            );
        }
        in_range(
            "limits.max_partitions_per_topic",
            u64::from(l.max_partitions_per_topic),
            u64::from(limits::MAX_PARTITIONS),
        )?;
        if l.max_fetch_bytes == 0 {
            return invalid("limits.max_fetch_bytes", "must be positive".into());
        }
        if u64::from(l.max_wait_ms) > limits::MAX_FETCH_WAIT_MS {
            return invalid("limits.max_wait_ms", format!("{} is over {}", l.max_wait_ms, limits::MAX_FETCH_WAIT_MS));
        }
        in_range("limits.max_topics", u64::from(l.max_topics), limits::MAX_TOPICS as u64)?;
        in_range("limits.max_partitions", u64::from(l.max_partitions), u64::from(limits::MAX_CLUSTER_PARTITIONS))?;
        in_range(
            "limits.max_partitions_per_node",
            u64::from(l.max_partitions_per_node),
            u64::from(limits::MAX_PARTITIONS_PER_NODE),
        )?;
        let m = &self.memory;
        if m.log_cache_floor_bytes == 0 {
            return invalid("memory.log_cache_floor_bytes", "must be positive".into());
        }
        if m.log_cache_bytes < 2 * m.log_cache_floor_bytes {
            return invalid(
                "memory.log_cache_bytes",
                format!(
                    "{} leaves no room for a partition beside the metadata group (floor {} each)",
                    m.log_cache_bytes, m.log_cache_floor_bytes
                ),
            );
        }
        for (field, value) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_internal_connections", l.max_internal_connections),
            ("limits.max_subscriptions_per_connection", l.max_subscriptions_per_connection),
            ("limits.max_subscriptions", l.max_subscriptions),
            ("limits.max_in_flight_requests", l.max_in_flight_requests),
        ] {
            in_range(field, u64::from(value), u64::from(u32::MAX))?;
        }
        if let Some(bad) =
            self.auth.super_users.iter().find(|u| shale_raft::cluster::access::validate_principal(u).is_err())
        {
            return invalid("auth.super_users", format!("{bad:?} is not a principal name"));
        }
        if let Err((field, reason)) = self.quotas.check() {
            return invalid(field, reason);
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return invalid("raft.election_timeout_min_ms", "must be above heartbeat_interval_ms (> 0)".into());
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return invalid("raft.election_timeout_max_ms", "must be above election_timeout_min_ms".into());
        }
        Ok(())
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(list: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let peer_err = |reason: &str| ConfigError::Peer { entry: entry.to_string(), reason: reason.to_string() };
        let (id, addr) = entry.split_once('=').ok_or_else(|| peer_err("no `=`"))?;
        let id: u64 = id.trim().parse().map_err(|_| peer_err("the id is not a number"))?;
        if id == 0 {
            return Err(peer_err("node ids start at 1"));
        }
        let addr = addr.trim();
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| peer_err("the address has no port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(peer_err("the address is not host:port"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(peer_err("duplicate node id"));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_entries_say_why() {
        let p = parse_peers("1=127.0.0.1:7001, 2=node-2:7001,3=[::1]:7003").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "node-2:7001");
        assert_eq!(p[&3], "[::1]:7003");
        for bad in ["1", "x=a:1", "0=a:1", "1=a", "1=a:notaport", "1=a:1,1=b:2"] {
            assert!(matches!(parse_peers(bad), Err(ConfigError::Peer { .. })), "{bad}");
        }
    }

    #[test]
    fn toml_file_overrides_defaults_and_rejects_unknown_keys() {
        let c = NodeConfig::from_toml(
            r#"
            node_id = 2
            grpc_listen = "0.0.0.0:7100"
            grpc_advertise = "node-2:7100"
            data_dir = "/var/lib/shale"
            storage = "memory"
            [peers]
            1 = "node-1:7100"
            2 = "node-2:7100"
            [limits]
            max_record_bytes = 2048
            "#,
        )
        .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.storage, StorageKind::Memory);
        assert_eq!(c.limits.max_record_bytes, 2048);
        assert_eq!(c.limits.max_batch_records, Limits::default().max_batch_records);
        assert_eq!(c.peers.len(), 2);
        c.validate().unwrap();
        assert_eq!(c.tls, None);
        assert!(NodeConfig::from_toml("nodeid = 3").is_err());
        let c = NodeConfig::from_toml("[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n").unwrap();
        assert_eq!(c.tls.map(|t| t.key), Some(PathBuf::from("n.key")));
        assert!(NodeConfig::from_toml("[tls]\nca = \"ca.pem\"\n").is_err(), "all three files are needed");
        assert!(!c.auth.enabled, "authorization is off by default");
        let c = NodeConfig::from_toml("[auth]\nenabled = true\nsuper_users = [\"admin\"]\n").unwrap();
        assert!(c.auth.enabled && c.auth.super_users.contains("admin"));
        c.validate().unwrap();
        let c = NodeConfig::from_toml("[auth]\nsuper_users = [\"a:b\"]\n").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "auth.super_users", .. })));
        let c = NodeConfig::from_toml("[quotas]\nsample_ms = 100\n").unwrap();
        assert_eq!((c.quotas.sample_ms, c.quotas.samples, c.quotas.max_throttle_ms), (100, 11, 4_000));
        c.validate().unwrap();
        let c = NodeConfig::from_toml("[quotas]\nsamples = 1\n").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "quotas.samples", .. })));
        assert!(NodeConfig::from_toml("[quotas]\nwindow = 3\n").is_err(), "unknown keys are refused");
        let c = NodeConfig::from_toml("[groups]\ndefault_session_timeout_ms = 10000\n").unwrap();
        let defaults = shale_raft::cluster::GroupsConfig::default();
        assert_eq!(c.groups.default_session_timeout_ms, 10_000);
        assert_eq!(c.groups.offsets_retention_ms, defaults.offsets_retention_ms, "the other keys keep their defaults");
        assert!(NodeConfig::from_toml("[groups]\nsession_ms = 3\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn listeners_and_advertised_addresses_follow_the_documented_precedence() {
        let bound: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let c = NodeConfig::default();
        assert_eq!(c.client_listen_addr(), c.grpc_listen);
        assert_eq!(
            (c.client_advertise_addr(bound), c.internal_advertise_addr(bound)),
            (bound.to_string(), bound.to_string())
        );
        // One listener, grpc_advertise for both unless one is named.
        let c = NodeConfig { grpc_advertise: Some("n1:7001".into()), ..NodeConfig::default() };
        assert_eq!(
            (c.client_advertise_addr(bound), c.internal_advertise_addr(bound)),
            ("n1:7001".into(), "n1:7001".into())
        );
        let c = NodeConfig { client_advertise: Some("127.0.0.1:7001".into()), ..c };
        assert_eq!(
            (c.client_advertise_addr(bound), c.internal_advertise_addr(bound)),
            ("127.0.0.1:7001".into(), "n1:7001".into())
        );
        // Two listeners: grpc_advertise is the client listener's; the internal one's is its own.
        let c = NodeConfig {
            grpc_advertise: Some("n1:7001".into()),
            internal_listen: Some("127.0.0.1:7101".parse().unwrap()),
            ..NodeConfig::default()
        };
        assert_eq!(
            (c.client_advertise_addr(bound), c.internal_advertise_addr(bound)),
            ("n1:7001".into(), bound.to_string())
        );
        let c = NodeConfig { internal_advertise: Some("node-1:7101".into()), ..c };
        assert_eq!(c.internal_advertise_addr(bound), "node-1:7101");
        let c = NodeConfig::from_toml(
            "client_listen = \"0.0.0.0:7001\"\nclient_advertise = \"127.0.0.1:7001\"\n\
             internal_listen = \"0.0.0.0:7101\"\ninternal_advertise = \"node-1:7101\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.client_listen_addr().port(), 7001);
        assert_eq!(c.internal_listen.map(|a| a.port()), Some(7101));
    }

    #[test]
    fn validation_names_the_bad_key() {
        let mut c = NodeConfig { node_id: 0, ..NodeConfig::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "node_id", .. })));
        c.node_id = 4;
        c.peers = parse_peers("1=a:1,2=b:2").unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "peers", .. })));
        c.peers.clear();
        c.grpc_listen = "0.0.0.0:7001".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "grpc_advertise", .. })));
        c.grpc_listen = "127.0.0.1:7001".parse().unwrap();
        c.internal_listen = Some("0.0.0.0:7101".parse().unwrap());
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "internal_advertise", .. })));
        c.internal_listen = Some("127.0.0.1:7001".parse().unwrap());
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "internal_listen", .. })));
        c.internal_listen = None;
        c.client_listen = Some("0.0.0.0:7001".parse().unwrap());
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "client_advertise", .. })));
        c.client_advertise = Some("127.0.0.1:7001".into());
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid { field: "internal_advertise", .. })),
            "one wildcard listener needs an address for the nodes too"
        );
        c.internal_advertise = Some("node-1:7001".into());
        c.validate().unwrap();
        c.client_listen = None;
        c.client_advertise = None;
        c.internal_advertise = None;
        c.limits.max_record_bytes = usize::MAX;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "limits.max_record_bytes", .. })));
        c.limits = Limits { max_connections: 0, ..Limits::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "limits.max_connections", .. })));
        c.limits = Limits { max_partitions: limits::MAX_CLUSTER_PARTITIONS + 1, ..Limits::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "limits.max_partitions", .. })));
    }
}
