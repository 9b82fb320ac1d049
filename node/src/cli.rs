//! Command line: `shale-node [run] [flags]`, `shale-node dev` and `shale-node healthcheck`. Every `run` flag can also be
//! given as a `SHALE_*` environment variable; flags and env vars override the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, NodeConfig, StorageKind, parse_peers};
use crate::healthcheck::{HealthcheckError, ProbeTarget};

/// The Shale node.
#[derive(Debug, Parser)]
#[command(name = "shale-node", version, about = "A Shale node: replicated, hash-chained log over gRPC")]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, accepted without the subcommand too.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node (the default).
    Run(RunArgs),
    /// Run a local cluster of several nodes in this process (127.0.0.1, data under ./data/node-N).
    Dev(DevArgs),
    /// GET this node's own HTTP endpoint (default /readyz); exit 0 on HTTP 200, 1 otherwise.
    Healthcheck(HealthcheckArgs),
}

/// Flags of `healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Full URL to probe (`http://host:port/path`) instead of this node's own HTTP address.
    #[arg(long, conflicts_with = "path")]
    pub url: Option<String>,
    /// Path to probe on this node's own HTTP address.
    #[arg(long, default_value = "/readyz")]
    pub path: String,
    /// Bound on the whole request (connect included).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// TOML config file of the node (for `http_listen`).
    #[arg(long, env = "SHALE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The node's HTTP listen address, as given to the node (a wildcard means loopback).
    #[arg(long, env = "SHALE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
}

/// Storage choice on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StorageArg {
    /// Segment files under the data dir.
    Disk,
    /// In memory (lost on exit).
    Memory,
}

/// Flags of `run`.
#[derive(Debug, Default, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, env = "SHALE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (>= 1).
    #[arg(long, env = "SHALE_NODE_ID")]
    pub node_id: Option<u64>,
    /// gRPC listen address (client API, and the Raft transport unless --internal-listen is set).
    #[arg(long, env = "SHALE_GRPC_LISTEN")]
    pub grpc_listen: Option<SocketAddr>,
    /// Address other nodes and clients use to reach this node (host:port), unless
    /// --client-advertise / --internal-advertise say otherwise.
    #[arg(long, env = "SHALE_GRPC_ADVERTISE")]
    pub grpc_advertise: Option<String>,
    /// Client listener (client API only); default --grpc-listen.
    #[arg(long, env = "SHALE_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Address clients are told for this node (leaders, redirects); default --grpc-advertise.
    #[arg(long, env = "SHALE_CLIENT_ADVERTISE")]
    pub client_advertise: Option<String>,
    /// Internal listener (Raft, repair, forwarded requests; node certificates only with TLS).
    /// Not set: the client listener serves both.
    #[arg(long, env = "SHALE_INTERNAL_LISTEN")]
    pub internal_listen: Option<SocketAddr>,
    /// Address other nodes reach this node at (what --peers names).
    #[arg(long, env = "SHALE_INTERNAL_ADVERTISE")]
    pub internal_advertise: Option<String>,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "SHALE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Serve the Kafka protocol (`[kafka] enabled`, default true).
    #[arg(long, env = "SHALE_KAFKA_ENABLED", num_args = 0..=1, default_missing_value = "true")]
    pub kafka_enabled: Option<bool>,
    /// Kafka listen address (`[kafka] listen`, default 127.0.0.1:9092).
    #[arg(long, env = "SHALE_KAFKA_LISTEN")]
    pub kafka_listen: Option<SocketAddr>,
    /// Address Kafka clients are told for this node (`[kafka] advertise`, Kafka's
    /// advertised.listeners).
    #[arg(long, env = "SHALE_KAFKA_ADVERTISE")]
    pub kafka_advertise: Option<String>,
    /// Initial members: `1=host:port,2=host:port,...` (this node included).
    #[arg(long, env = "SHALE_PEERS")]
    pub peers: Option<String>,
    /// Data directory.
    #[arg(long, env = "SHALE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage kind.
    #[arg(long, env = "SHALE_STORAGE", value_enum)]
    pub storage: Option<StorageArg>,
    /// Largest record in bytes.
    #[arg(long, env = "SHALE_MAX_RECORD_BYTES")]
    pub max_record_bytes: Option<usize>,
    /// Most records per Produce request.
    #[arg(long, env = "SHALE_MAX_BATCH_RECORDS")]
    pub max_batch_records: Option<usize>,
    /// Largest gRPC request in bytes.
    #[arg(long, env = "SHALE_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most partitions per topic.
    #[arg(long, env = "SHALE_MAX_PARTITIONS_PER_TOPIC")]
    pub max_partitions_per_topic: Option<u32>,
    /// Most topics the cluster may hold (`limits.max_topics`; the metadata leader's value decides).
    #[arg(long, env = "SHALE_MAX_TOPICS")]
    pub max_topics: Option<u32>,
    /// Most partitions (Raft groups) the cluster may hold, all topics together (`limits.max_partitions`).
    #[arg(long, env = "SHALE_MAX_PARTITIONS")]
    pub max_partitions: Option<u32>,
    /// Most partition replicas this node may hold (`limits.max_partitions_per_node`).
    #[arg(long, env = "SHALE_MAX_PARTITIONS_PER_NODE")]
    pub max_partitions_per_node: Option<u32>,
    /// Bytes all Raft groups' in-memory log tails hold together (`memory.log_cache_bytes`).
    #[arg(long, env = "SHALE_LOG_CACHE_BYTES")]
    pub log_cache_bytes: Option<usize>,
    /// Most TCP connections this node serves, clients and peers (`limits.max_connections`).
    #[arg(long, env = "SHALE_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Most TCP connections the internal listener serves (`limits.max_internal_connections`).
    #[arg(long, env = "SHALE_MAX_INTERNAL_CONNECTIONS")]
    pub max_internal_connections: Option<u32>,
    /// Most Subscribe streams per connection (`limits.max_subscriptions_per_connection`).
    #[arg(long, env = "SHALE_MAX_SUBSCRIPTIONS_PER_CONNECTION")]
    pub max_subscriptions_per_connection: Option<u32>,
    /// Most Subscribe streams this node serves (`limits.max_subscriptions`).
    #[arg(long, env = "SHALE_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<u32>,
    /// Most client-API requests this node serves at once (`limits.max_in_flight_requests`).
    #[arg(long, env = "SHALE_MAX_IN_FLIGHT_REQUESTS")]
    pub max_in_flight_requests: Option<u32>,
    /// Snapshot every Raft group after this many entries (0 = only for retention).
    #[arg(long, env = "SHALE_SNAPSHOT_EVERY_ENTRIES")]
    pub snapshot_every_entries: Option<u64>,
    /// Size at which a log segment is sealed and the next one started (bytes, at least 4096).
    #[arg(long, env = "SHALE_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,
    /// Bytes of each log segment's synced tail left in the OS page cache; older synced bytes are
    /// dropped from it (`memory.page_cache_keep_bytes`; 0 = leave the cache to the OS).
    #[arg(long, env = "SHALE_PAGE_CACHE_KEEP_BYTES")]
    pub page_cache_keep_bytes: Option<u64>,
    /// The most bytes of synced tails all log segments together leave in the OS page cache; the
    /// tails synced longest ago are dropped past it (`memory.page_cache_budget_bytes`; 0 = none).
    #[arg(long, env = "SHALE_PAGE_CACHE_BUDGET_BYTES")]
    pub page_cache_budget_bytes: Option<u64>,
    /// Hash and encode log appends of 64 KiB or more on a storage helper thread while the
    /// appending thread writes (`prepare_ahead`; off by default).
    #[arg(long, env = "SHALE_PREPARE_AHEAD", num_args = 0..=1, default_missing_value = "true")]
    pub prepare_ahead: Option<bool>,
    /// TLS: the cluster CA certificate (PEM); with --tls-cert and --tls-key turns TLS on.
    #[arg(long, env = "SHALE_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// TLS: this node's certificate (PEM, `shale cert node`).
    #[arg(long, env = "SHALE_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// TLS: this node's private key (PEM).
    #[arg(long, env = "SHALE_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Enforce ACLs (`[auth] enabled`): deny what no rule allows.
    #[arg(long, env = "SHALE_AUTH_ENABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_enabled: Option<bool>,
    /// Super-users (`[auth] super_users`), comma-separated principal names.
    #[arg(long, env = "SHALE_SUPER_USERS", value_delimiter = ',')]
    pub super_users: Option<Vec<String>>,
}

/// Flags of `dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// gRPC port of node 1 (node N uses this + N - 1).
    #[arg(long, default_value_t = 7001)]
    pub grpc_port: u16,
    /// HTTP port of node 1 (node N uses this + N - 1).
    #[arg(long, default_value_t = 8001)]
    pub http_port: u16,
    /// Kafka port of node 1 (node N uses this + N - 1).
    #[arg(long, default_value_t = crate::kafka::DEFAULT_PORT)]
    pub kafka_port: u16,
    /// Run without the Kafka listeners.
    #[arg(long)]
    pub no_kafka: bool,
    /// Parent data directory (node N uses `<dir>/node-N`).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep data in memory instead of on disk.
    #[arg(long)]
    pub memory: bool,
    /// Bytes of each log segment's synced tail left in the OS page cache on every node
    /// (`memory.page_cache_keep_bytes`; 0 = leave the cache to the OS).
    #[arg(long, env = "SHALE_PAGE_CACHE_KEEP_BYTES")]
    pub page_cache_keep_bytes: Option<u64>,
    /// The most bytes of synced tails each node's log segments together leave in the OS page
    /// cache (`memory.page_cache_budget_bytes`; 0 = no shared limit).
    #[arg(long, env = "SHALE_PAGE_CACHE_BUDGET_BYTES")]
    pub page_cache_budget_bytes: Option<u64>,
    /// Hash and encode log appends of 64 KiB or more on a storage helper thread while the
    /// appending thread writes (`prepare_ahead`; off by default).
    #[arg(long, env = "SHALE_PREPARE_AHEAD", num_args = 0..=1, default_missing_value = "true")]
    pub prepare_ahead: Option<bool>,
    /// Run with TLS: a fresh CA and node certificates are written to `<data-dir>/tls`
    /// (`ca.pem` is what clients trust: `shale --tls-ca <data-dir>/tls/ca.pem ...`).
    #[arg(long)]
    pub tls: bool,
}

impl RunArgs {
    /// The config: defaults, then the file, then these flags / env vars.
    pub fn to_config(&self) -> Result<NodeConfig, ConfigError> {
        let mut c = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(v) = self.node_id {
            c.node_id = v;
            if self.data_dir.is_none() && self.config.is_none() {
                c.data_dir = PathBuf::from(format!("./data/node-{v}"));
            }
        }
        if let Some(v) = self.grpc_listen {
            c.grpc_listen = v;
        }
        if let Some(v) = &self.grpc_advertise {
            c.grpc_advertise = Some(v.clone());
        }
        if let Some(v) = self.client_listen {
            c.client_listen = Some(v);
        }
        if let Some(v) = &self.client_advertise {
            c.client_advertise = Some(v.clone());
        }
        if let Some(v) = self.internal_listen {
            c.internal_listen = Some(v);
        }
        if let Some(v) = &self.internal_advertise {
            c.internal_advertise = Some(v.clone());
        }
        if let Some(v) = self.kafka_enabled {
            c.kafka.enabled = v;
        }
        if let Some(v) = self.kafka_listen {
            c.kafka.listen = v;
        }
        if let Some(v) = &self.kafka_advertise {
            c.kafka.advertise = Some(v.clone());
        }
        if let Some(v) = self.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = &self.peers {
            c.peers = parse_peers(v)?;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.storage {
            c.storage = match v {
                StorageArg::Disk => StorageKind::Disk,
                StorageArg::Memory => StorageKind::Memory,
            };
        }
        if let Some(v) = self.max_record_bytes {
            c.limits.max_record_bytes = v;
        }
        if let Some(v) = self.max_batch_records {
            c.limits.max_batch_records = v;
        }
        if let Some(v) = self.max_request_bytes {
            c.limits.max_request_bytes = v;
        }
        if let Some(v) = self.max_partitions_per_topic {
            c.limits.max_partitions_per_topic = v;
        }
        if let Some(v) = self.max_topics {
            c.limits.max_topics = v;
        }
        if let Some(v) = self.max_partitions {
            c.limits.max_partitions = v;
        }
        if let Some(v) = self.max_partitions_per_node {
            c.limits.max_partitions_per_node = v;
        }
        if let Some(v) = self.log_cache_bytes {
            c.memory.log_cache_bytes = v;
        }
        if let Some(v) = self.max_connections {
            c.limits.max_connections = v;
        }
        if let Some(v) = self.max_internal_connections {
            c.limits.max_internal_connections = v;
        }
        if let Some(v) = self.max_subscriptions_per_connection {
            c.limits.max_subscriptions_per_connection = v;
        }
        if let Some(v) = self.max_subscriptions {
            c.limits.max_subscriptions = v;
        }
        if let Some(v) = self.max_in_flight_requests {
            c.limits.max_in_flight_requests = v;
        }
        if let Some(v) = self.snapshot_every_entries {
            c.raft.snapshot_every_entries = v;
        }
        if let Some(v) = self.segment_bytes {
            c.segment_bytes = v;
        }
        if let Some(v) = self.page_cache_keep_bytes {
            c.memory.page_cache_keep_bytes = v;
        }
        if let Some(v) = self.page_cache_budget_bytes {
            c.memory.page_cache_budget_bytes = v;
        }
        if let Some(v) = self.prepare_ahead {
            c.prepare_ahead = v;
        }
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            c.tls = Some(crate::config::TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                watch_interval_ms: crate::config::DEFAULT_TLS_WATCH_MS,
            });
        }
        if let Some(v) = self.auth_enabled {
            c.auth.enabled = v;
        }
        if let Some(users) = &self.super_users {
            c.auth.super_users = users.iter().map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect();
        }
        c.validate()?;
        Ok(c)
    }
}

impl HealthcheckArgs {
    /// What to probe: `--url`, else `--path` on the node's HTTP listen address (flag / env var,
    /// then the config file, then the default), a wildcard address mapped to loopback.
    pub fn target(&self) -> Result<ProbeTarget, HealthcheckTargetError> {
        if let Some(url) = &self.url {
            return Ok(ProbeTarget::from_url(url)?);
        }
        let listen = match (self.http_listen, &self.config) {
            (Some(addr), _) => addr,
            (None, Some(path)) => NodeConfig::from_file(path)?.http_listen,
            (None, None) => NodeConfig::default().http_listen,
        };
        Ok(ProbeTarget::local(listen, &self.path)?)
    }
}

/// Why `healthcheck` could not work out what to probe.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckTargetError {
    /// The config file could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL or path is invalid.
    #[error(transparent)]
    Target(#[from] HealthcheckError),
}

impl DevArgs {
    /// One config per local node, all peers of each other.
    pub fn configs(&self) -> Result<Vec<NodeConfig>, ConfigError> {
        if self.nodes == 0 || self.nodes > 9 {
            return Err(ConfigError::Invalid { field: "nodes", reason: format!("{} is not in 1..=9", self.nodes) });
        }
        let port = |base: u16, id: u64| -> Result<u16, ConfigError> {
            base.checked_add((id - 1) as u16)
                .ok_or_else(|| ConfigError::Invalid { field: "port", reason: format!("{base} + {id} overflows") })
        };
        let mut peers = std::collections::BTreeMap::new();
        for id in 1..=self.nodes {
            peers.insert(id, format!("127.0.0.1:{}", port(self.grpc_port, id)?));
        }
        (1..=self.nodes)
            .map(|id| {
                let mut c = NodeConfig {
                    node_id: id,
                    grpc_listen: SocketAddr::from(([127, 0, 0, 1], port(self.grpc_port, id)?)),
                    grpc_advertise: None,
                    client_listen: None,
                    client_advertise: None,
                    internal_listen: None,
                    internal_advertise: None,
                    http_listen: SocketAddr::from(([127, 0, 0, 1], port(self.http_port, id)?)),
                    kafka: crate::kafka::KafkaConfig {
                        enabled: !self.no_kafka,
                        listen: SocketAddr::from(([127, 0, 0, 1], port(self.kafka_port, id)?)),
                        ..crate::kafka::KafkaConfig::default()
                    },
                    peers: peers.clone(),
                    data_dir: self.data_dir.join(format!("node-{id}")),
                    storage: if self.memory { StorageKind::Memory } else { StorageKind::Disk },
                    ..NodeConfig::default()
                };
                if let Some(v) = self.page_cache_keep_bytes {
                    c.memory.page_cache_keep_bytes = v;
                }
                if let Some(v) = self.page_cache_budget_bytes {
                    c.memory.page_cache_budget_bytes = v;
                }
                if let Some(v) = self.prepare_ahead {
                    c.prepare_ahead = v;
                }
                c.validate()?;
                Ok(c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = 2\n[peers]\n1 = \"a:1\"\n2 = \"b:1\"\n").unwrap();
        let cli = Cli::try_parse_from([
            "shale-node",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--node-id",
            "1",
            "--max-record-bytes",
            "4096",
            "--page-cache-budget-bytes",
            "0",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else { panic!("run expected") };
        let c = args.to_config().unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.limits.max_record_bytes, 4096);
        assert_eq!(c.memory.page_cache_budget_bytes, 0);
    }

    #[test]
    fn listener_flags_set_both_listeners() {
        let cli = Cli::try_parse_from([
            "shale-node",
            "run",
            "--client-listen",
            "0.0.0.0:7001",
            "--client-advertise",
            "127.0.0.1:7001",
            "--internal-listen",
            "0.0.0.0:7101",
            "--internal-advertise",
            "node-1:7101",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else { panic!("run expected") };
        let c = args.to_config().unwrap();
        c.validate().unwrap();
        let bound = "0.0.0.0:7101".parse().unwrap();
        assert_eq!(c.client_listen.map(|a| a.to_string()).as_deref(), Some("0.0.0.0:7001"));
        assert_eq!(c.client_advertise_addr(bound), "127.0.0.1:7001");
        assert_eq!(c.internal_advertise_addr(bound), "node-1:7101");
    }

    #[test]
    fn load_limit_flags_override_the_file_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "node_id = 1\n[peers]\n1 = \"a:1\"\n[limits]\nmax_connections = 100\n").unwrap();
        let cli = Cli::try_parse_from([
            "shale-node",
            "run",
            "--config",
            path.to_str().unwrap(),
            "--max-topics",
            "7",
            "--max-partitions",
            "21",
            "--max-connections",
            "300",
            "--max-subscriptions-per-connection",
            "4",
            "--max-subscriptions",
            "40",
            "--max-in-flight-requests",
            "99",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else { panic!("run expected") };
        let l = args.to_config().unwrap().limits;
        assert_eq!(
            (l.max_topics, l.max_partitions, l.max_connections, l.max_subscriptions_per_connection),
            (7, 21, 300, 4)
        );
        assert_eq!((l.max_subscriptions, l.max_in_flight_requests), (40, 99));
        // Out of range is refused like the same value in the file.
        let cli =
            Cli::try_parse_from(["shale-node", "--node-id", "1", "--peers", "1=a:1", "--max-partitions", "0"]).unwrap();
        assert!(matches!(cli.run.to_config(), Err(ConfigError::Invalid { .. })), "max_partitions 0 accepted");
    }

    #[test]
    fn run_is_the_default_and_bad_peers_are_refused() {
        let cli = Cli::try_parse_from(["shale-node", "--node-id", "3", "--peers", "3=x:1"]).unwrap();
        assert!(cli.command.is_none());
        let c = cli.run.to_config().unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data/node-3"));
        let bad = Cli::try_parse_from(["shale-node", "--peers", "1=x"]).unwrap();
        assert!(matches!(bad.run.to_config(), Err(ConfigError::Peer { .. })));
    }

    #[test]
    fn healthcheck_targets_the_nodes_own_http_address() {
        let cli = Cli::try_parse_from(["shale-node", "healthcheck", "--http-listen", "0.0.0.0:8001"]).unwrap();
        let Some(Command::Healthcheck(args)) = cli.command else { panic!("healthcheck expected") };
        assert_eq!(args.timeout_ms, 2000);
        let t = args.target().unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:8001", "/readyz"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "http_listen = \"0.0.0.0:9100\"\n").unwrap();
        let cli = Cli::try_parse_from([
            "shale-node",
            "healthcheck",
            "--config",
            path.to_str().unwrap(),
            "--path",
            "/healthz",
        ])
        .unwrap();
        let Some(Command::Healthcheck(args)) = cli.command else { panic!("healthcheck expected") };
        let t = args.target().unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("127.0.0.1:9100", "/healthz"));

        let cli = Cli::try_parse_from(["shale-node", "healthcheck", "--url", "http://node-2:8001/healthz"]).unwrap();
        let Some(Command::Healthcheck(args)) = cli.command else { panic!("healthcheck expected") };
        assert_eq!(args.target().unwrap().authority, "node-2:8001");
        assert!(Cli::try_parse_from(["shale-node", "healthcheck", "--url", "http://a:1/", "--path", "/x"]).is_err());
    }

    #[test]
    fn dev_builds_a_local_cluster() {
        let cli = Cli::try_parse_from(["shale-node", "dev"]).unwrap();
        let Some(Command::Dev(dev)) = cli.command else { panic!("dev expected") };
        let configs = dev.configs().unwrap();
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[2].grpc_listen.port(), 7003);
        assert_eq!(configs[2].http_listen.port(), 8003);
        assert_eq!(configs[1].data_dir, PathBuf::from("./data/node-2"));
        assert!(configs.iter().all(|c| c.peers.len() == 3));
        assert!(
            configs.iter().all(|c| c.memory.page_cache_budget_bytes == shale_storage::DEFAULT_PAGE_CACHE_BUDGET_BYTES)
        );
        let cli = Cli::try_parse_from(["shale-node", "dev", "--page-cache-budget-bytes", "1048576"]).unwrap();
        let Some(Command::Dev(dev)) = cli.command else { panic!("dev expected") };
        assert!(dev.configs().unwrap().iter().all(|c| c.memory.page_cache_budget_bytes == 1 << 20));
    }
}
