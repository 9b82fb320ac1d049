//! The command line: every command, flag and example, as clap derive types. No behaviour here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use shale_client::proto::Codec;

use crate::args::{self, Limit};
use crate::output::OutputFormat;

/// Where the CLI looks for a cluster when neither `--bootstrap` nor `SHALE_BOOTSTRAP` is given:
/// the first node of the local dev cluster (`shale-node`'s default gRPC address).
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:7001";

const MAIN_EXAMPLES: &str = "\
Examples:
  shale cluster status
  shale topic create orders --partitions 6 --replication-factor 3 --retention-ms 7d
  printf 'a\\nb\\n' | shale produce orders --key user-1
  shale consume orders --from-beginning --max-records 2
  shale verify orders
  shale bench produce --topic bench --records 100000 --record-size 512

Environment:
  SHALE_BOOTSTRAP   comma-separated host:port endpoints (same as --bootstrap)
  SHALE_TLS_CA, SHALE_TLS_CERT, SHALE_TLS_KEY   TLS files (same as --tls-ca, --tls-cert, --tls-key)
  SHALE_TOKEN       a bearer token from `shale user create` (same as --token)
  SHALE_USER, SHALE_PASSWORD   a user name (same as --user) and its password (--password-file wins)
  SHALE_PROFILE     the profile to use (same as --profile)
  SHALE_CONFIG      the profile file (default ~/.config/shale/config.toml)

Settings come from flags, then environment variables, then the profile (`shale profile --help`),
then defaults.

Exit codes: 0 ok, 1 operational failure (cluster error, damage found, replicas disagree, records not
delivered), 2 usage error, 3 incomplete report (printed, but part of it could not be read: `cluster
status` with members that did not answer).";

/// `shale`: operate a Shale cluster.
#[derive(Debug, Parser)]
#[command(
    name = "shale",
    version,
    about = "Operate a Shale cluster: topics, data, consumer groups, verification, benchmarks"
)]
#[command(after_help = MAIN_EXAMPLES, propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Connection and logging flags, accepted before or after the command.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Cluster endpoints, comma-separated host:port (any member will do). Default: the profile's
    /// addresses, else 127.0.0.1:7001.
    #[arg(
        long,
        short = 'b',
        alias = "endpoints",
        global = true,
        env = "SHALE_BOOTSTRAP",
        value_name = "HOST:PORT[,...]"
    )]
    pub bootstrap: Option<String>,
    /// Per-request timeout.
    #[arg(long, global = true, default_value = "10s", value_parser = args::parse_duration_ms, value_name = "DURATION")]
    pub timeout: u64,
    /// Attempts per request before giving up (leader changes and unreachable nodes are retried).
    #[arg(long, global = true, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub attempts: u32,
    /// TLS: the cluster CA certificate (PEM) to trust; turns TLS on.
    #[arg(long, global = true, env = "SHALE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: a client certificate to present (PEM, `shale cert client`); needs --tls-key.
    #[arg(long, global = true, env = "SHALE_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM).
    #[arg(long, global = true, env = "SHALE_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token (`<user>:<secret>`, from `shale user create`), sent with every request.
    /// Prefer SHALE_TOKEN: a flag shows in the process list.
    #[arg(long, global = true, env = "SHALE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A user name to authenticate as with a password (`shale user create NAME --password`): the
    /// password from --password-file, else SHALE_PASSWORD, else the profile's password_file.
    #[arg(long, global = true, env = "SHALE_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// A file whose first line is the password of --user (or of the profile's user).
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The profile (named cluster) to use from the profile file; default: its current_profile.
    #[arg(long, global = true, env = "SHALE_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Log more to stderr (-v info, -vv debug, -vvv trace).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--output` of read commands.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster members, health, leaders and membership changes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Write records from stdin (one per line) or files.
    Produce(ProduceArgs),
    /// Read records and print them.
    Consume(ConsumeArgs),
    /// Consumer groups: committed offsets, lag, offset resets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Prove replicas agree (online), or check a node's data files (offline, --data-dir).
    Verify(VerifyArgs),
    /// Load generators with latency percentiles.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Make a cluster CA and node or client certificates (PEM files) for TLS.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Users with bearer tokens or passwords (stored hashed in the cluster).
    #[command(subcommand)]
    User(UserCommand),
    /// ACL allow rules (enforced when the nodes run with `[auth] enabled`).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Client quotas: produce and consume bytes per second per user, or for every user (`*`).
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Named clusters in the profile file (~/.config/shale/config.toml or $SHALE_CONFIG).
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  shale completions bash > /etc/bash_completion.d/shale\n  shale completions zsh > \"${fpath[1]}/_shale\"\n  shale completions fish > ~/.config/fish/completions/shale.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `shale user ...` (docs/security.md "Principals").
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its token (`<user>:<secret>`) once: the cluster keeps only a hash.
    /// With a password option: a password user instead (the CLI derives its SCRAM-SHA-256
    /// credential; the password is never sent to the cluster).
    #[command(
        after_help = "Examples:\n  shale user create alice\n  export SHALE_TOKEN=$(shale user create alice)\n  shale user create bob --password            # prompts twice\n  shale user create bob --new-password-file pw.txt\n  printf '%s' \"$PW\" | shale user create bob --password-stdin"
    )]
    Create {
        /// The user name (1..=64 ASCII letters, digits, '.', '_', '-').
        name: String,
        /// How to read the new user's password (none: a token user).
        #[command(flatten)]
        password: NewPasswordArgs,
    },
    /// Give a user a new password (its token or old password stops working).
    #[command(
        name = "set-password",
        after_help = "Examples:\n  shale user set-password bob --password\n  shale user set-password bob --new-password-file pw.txt"
    )]
    SetPassword {
        /// The user name.
        name: String,
        /// How to read the new password.
        #[command(flatten)]
        password: NewPasswordArgs,
    },
    /// Delete a user: its token stops working (rules naming it stay).
    #[command(after_help = "Examples:\n  shale user delete alice")]
    Delete {
        /// The user name.
        name: String,
    },
    /// Every user.
    #[command(alias = "ls", after_help = "Examples:\n  shale user list -o json")]
    List(OutputArgs),
    /// The principal the cluster sees for this CLI (token, client certificate or anonymous).
    #[command(after_help = "Examples:\n  SHALE_TOKEN=... shale user whoami")]
    Whoami(OutputArgs),
}

/// Where a new password comes from (`user create`, `user set-password`). Named apart from the global
/// `--password-file`, which is the CLI's own login.
#[derive(Debug, Args, Clone, Default)]
#[group(multiple = false)]
pub struct NewPasswordArgs {
    /// Prompt for the password on the terminal (twice, not echoed).
    #[arg(long)]
    pub password: bool,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
}

impl NewPasswordArgs {
    /// Whether any password option was given.
    pub fn given(&self) -> bool {
        self.password || self.new_password_file.is_some() || self.password_stdin
    }
}

/// `shale profile ...`: the profile file (`$SHALE_CONFIG` or ~/.config/shale/config.toml).
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Every profile; `*` marks the current one.
    #[command(alias = "ls", after_help = "Examples:\n  shale profile list")]
    List(OutputArgs),
    /// One profile (default: the one in use), token hidden.
    #[command(after_help = "Examples:\n  shale profile show prod -o json")]
    Show {
        /// The profile name.
        name: Option<String>,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Make a profile the current one.
    #[command(after_help = "Examples:\n  shale profile use prod")]
    Use {
        /// The profile name.
        name: String,
    },
    /// Save the connection flags given (--bootstrap, --tls-*, --token or --user/--password-file)
    /// as a profile, replacing one of that name; `--use` also makes it current.
    #[command(
        after_help = "Examples:\n  shale profile create prod --bootstrap a:7001,b:7001 --tls-ca ca.pem --user alice --password-file ~/.shale-pw --use"
    )]
    Create {
        /// The profile name.
        name: String,
        /// Make it the current profile.
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Remove a profile (and unset it as current).
    #[command(after_help = "Examples:\n  shale profile delete old")]
    Delete {
        /// The profile name.
        name: String,
    },
}

/// `shale acl ...` (docs/security.md "ACLs").
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow a principal an operation on a resource.
    #[command(
        after_help = "Examples:\n  shale acl add --principal alice --operation produce --topic orders\n  shale acl add --principal '*' --operation consume --topic-prefix public.\n  shale acl add --principal billing --operation group-read --group billing\n  shale acl add --principal ops --operation cluster-admin --cluster"
    )]
    Add(AclRuleArgs),
    /// Remove a rule (exactly as added).
    #[command(after_help = "Examples:\n  shale acl remove --principal alice --operation produce --topic orders")]
    Remove(AclRuleArgs),
    /// Every rule.
    #[command(alias = "ls", after_help = "Examples:\n  shale acl list\n  shale acl list -o json")]
    List(OutputArgs),
}

/// `shale quota ...` (docs/security.md "Quotas").
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set (replace) the quota of a user, or the default of every user (`--default`). A rate left
    /// out falls back to the default's (for a user) or is unlimited.
    #[command(
        after_help = "Examples:\n  shale quota set --default --produce-rate 10MiB --consume-rate 20MiB\n  shale quota set --principal alice --produce-rate 1MiB\n  shale quota set --principal batch-loader --produce-rate 1GiB"
    )]
    Set(QuotaSetArgs),
    /// Remove the quota of a user (it then gets the default's) or the default.
    #[command(after_help = "Examples:\n  shale quota remove --principal alice\n  shale quota remove --default")]
    Remove(QuotaEntityArgs),
    /// Every quota entry, the default first.
    #[command(alias = "ls", after_help = "Examples:\n  shale quota list\n  shale quota list -o json")]
    List(OutputArgs),
}

/// Who a quota entry is for: one user, or the default (exactly one).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("entity").required(true).args(["principal", "default"])))]
pub struct QuotaEntityArgs {
    /// A user or client-certificate name.
    #[arg(long)]
    pub principal: Option<String>,
    /// The default entry, for every user (and anonymous caller) without one of its own.
    #[arg(long)]
    pub default: bool,
}

impl QuotaEntityArgs {
    /// The entity as the API names it (`*` for the default).
    pub fn entity(&self) -> String {
        self.principal.clone().unwrap_or_else(|| "*".to_string())
    }
}

/// `shale quota set`: the entity and its rates (at least one).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("rates").required(true).multiple(true).args(["produce_rate", "consume_rate"])))]
pub struct QuotaSetArgs {
    /// Who.
    #[command(flatten)]
    pub entity: QuotaEntityArgs,
    /// Record bytes per second the principal may produce (e.g. `1MiB`), on each node.
    #[arg(long, value_parser = crate::args::parse_bytes)]
    pub produce_rate: Option<u64>,
    /// Bytes per second Fetch and Subscribe may serve the principal (e.g. `2MiB`), on each node.
    #[arg(long, value_parser = crate::args::parse_bytes)]
    pub consume_rate: Option<u64>,
}

/// One ACL rule: who, what, on which resource (exactly one of the resource flags).
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("resource").required(true).args(["topic", "topic_prefix", "group", "cluster"])))]
pub struct AclRuleArgs {
    /// A principal (user or client-certificate name), or `*` for every caller, anonymous included.
    #[arg(long)]
    pub principal: String,
    /// The operation allowed.
    #[arg(long, value_parser = ["produce", "consume", "describe", "create", "delete", "alter", "group-read", "cluster-admin"])]
    pub operation: String,
    /// One topic.
    #[arg(long)]
    pub topic: Option<String>,
    /// Every topic whose name starts with this ('' for every topic).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// One consumer group.
    #[arg(long)]
    pub group: Option<String>,
    /// The cluster (operations: cluster-admin, describe).
    #[arg(long)]
    pub cluster: bool,
}

/// `shale cert ...`: certificates for a dev or test cluster (docs/security.md).
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a new cluster CA: `<dir>/ca.pem` (give it to nodes and clients) and `<dir>/ca.key`
    /// (keep it secret; it signs every certificate).
    #[command(after_help = "Examples:\n  shale cert init-ca --dir certs")]
    InitCa {
        #[command(flatten)]
        common: CertArgs,
        /// The CA's common name.
        #[arg(long, default_value = "shale cluster CA")]
        name: String,
    },
    /// Make node N's certificate, signed by the CA in --dir: `<dir>/node-N.pem` and `node-N.key`.
    /// It names the node (URI SAN shale://node/N, DNS node-N.shale.internal) and the names and
    /// addresses peers and clients reach it at.
    #[command(
        after_help = "Examples:\n  shale cert node --dir certs --id 1 --dns node-1 --dns localhost --ip 127.0.0.1"
    )]
    Node {
        #[command(flatten)]
        common: CertArgs,
        /// The node's id.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// A DNS name the node is reached at (repeatable).
        #[arg(long)]
        dns: Vec<String>,
        /// An IP address the node is reached at (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
    },
    /// Make what a whole cluster needs in one run (for a container's one-shot job, where there is
    /// no shell to chain commands): the CA, unless `<dir>/ca.pem` and `ca.key` exist (then it signs
    /// with that one), a certificate for each node 1..=N and each --client. Files that exist are
    /// kept (run it again after a restart: nothing changes), unless --force.
    #[command(
        after_help = "Examples:\n  shale cert init-cluster --dir certs --nodes 3 --node-dns node-{id} --node-dns localhost --node-ip 127.0.0.1 --client admin"
    )]
    InitCluster {
        #[command(flatten)]
        common: CertArgs,
        /// The CA's common name (when a CA is made).
        #[arg(long, default_value = "shale cluster CA")]
        name: String,
        /// How many nodes: certificates for node ids 1..=N.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
        nodes: u64,
        /// A DNS name of every node, `{id}` replaced by its id (repeatable), e.g. `node-{id}`.
        #[arg(long)]
        node_dns: Vec<String>,
        /// An IP address every node certificate names (repeatable), e.g. 127.0.0.1.
        #[arg(long)]
        node_ip: Vec<std::net::IpAddr>,
        /// A client certificate to make for this principal (repeatable), e.g. a super-user `admin`.
        #[arg(long)]
        client: Vec<String>,
        /// Where the node certificates go, with a copy of `ca.pem` (default: --dir). Give the nodes
        /// this directory: it holds neither the CA's key nor the clients' keys.
        #[arg(long)]
        node_dir: Option<PathBuf>,
    },
    /// Make a client certificate for PRINCIPAL, signed by the CA in --dir: `<dir>/client-NAME.pem`
    /// and `client-NAME.key` (URI SAN shale://client/NAME; it can never pass as a node).
    #[command(after_help = "Examples:\n  shale cert client --dir certs --principal alice")]
    Client {
        #[command(flatten)]
        common: CertArgs,
        /// The client's name (letters, digits, `.`, `_`, `-`).
        #[arg(long)]
        principal: String,
    },
}

/// Flags of every `shale cert` command.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// The certificate directory (the CA's files are read from and written to it).
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

/// `shale cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members and their health, the metadata group, and every partition's leader, replicas and lag.
    ///
    /// Each member is asked at the address it advertises. If any does not answer, the report is
    /// still printed (its groups' lag shows as unknown), and the command exits with code 3 naming
    /// each such member, its address and the error.
    #[command(
        after_help = "Exit codes: 0 every member answered, 3 the report is incomplete (members that did not answer are named on stderr), 1 no node answered at all.\n\nExamples:\n  shale cluster status\n  shale cluster status -o json | jq '.partitions[] | select(.leader == 0)'"
    )]
    Status(OutputArgs),
    /// Add a node (it joins as a learner, catches up, then votes).
    #[command(
        after_help = "Examples:\n  shale cluster add-node 4 10.0.0.4:7001\n  shale cluster add-node 4 node-4:7101 --client-addr shale-4.example.com:7001"
    )]
    AddNode {
        /// The new node's id (unique, at least 1).
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node_id: u64,
        /// Its internal address, host:port (where other nodes reach it: its internal listener's
        /// advertised address, or its one gRPC listener's).
        addr: String,
        /// The address clients are told for it; default: what the node itself advertises (asked
        /// at ADDR), else ADDR. Given for a member, only records the new address (a running
        /// member puts back its own configured client address).
        #[arg(long)]
        client_addr: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove a node (its replicas move elsewhere, each new one caught up first; with no spare
    /// member the partitions are left under-replicated, and a warning names each).
    #[command(after_help = "Examples:\n  shale cluster remove-node 4")]
    RemoveNode {
        /// The node's id.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        node_id: u64,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move a partition's leadership to another of its replicas.
    #[command(after_help = "Examples:\n  shale cluster transfer-leader orders 0 --to 2")]
    TransferLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The replica (node id) to lead.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
    },
}

/// `shale topic ...`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    #[command(
        after_help = "Examples:\n  shale topic create orders\n  shale topic create orders -p 12 -r 3 --retention-bytes 10GiB --retention-ms 7d --codec zstd"
    )]
    Create(TopicCreateArgs),
    /// List topics.
    #[command(alias = "ls", after_help = "Examples:\n  shale topic list\n  shale topic list -o json")]
    List(OutputArgs),
    /// Show a topic's settings and partitions.
    #[command(after_help = "Examples:\n  shale topic describe orders\n  shale topic describe orders -o yaml")]
    Describe {
        /// The topic.
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Delete a topic and all its data.
    #[command(
        alias = "rm",
        after_help = "Examples:\n  shale topic delete orders\n  shale topic delete orders --if-exists"
    )]
    Delete {
        /// The topic.
        name: String,
        /// Succeed when the topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
    /// Change retention or codec (partitions and replication factor are fixed at creation).
    #[command(
        after_help = "Examples:\n  shale topic alter orders --retention-ms 30d\n  shale topic alter orders --retention-bytes unlimited --codec lz4"
    )]
    Alter(TopicAlterArgs),
}

/// `shale topic create`.
#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name ([a-zA-Z0-9._-], 1 to 249 characters).
    pub name: String,
    /// Number of partitions.
    #[arg(long, short = 'p', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Replicas per partition [default: 3, or the number of members if fewer].
    #[arg(long, short = 'r', value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,
    /// Retention by size per partition (e.g. 10GiB), or `unlimited`.
    #[arg(long, value_parser = args::parse_bytes_limit, value_name = "SIZE")]
    pub retention_bytes: Option<Limit>,
    /// Retention by age (e.g. 7d, 12h), or `unlimited`.
    #[arg(long, value_parser = args::parse_duration_limit, value_name = "DURATION")]
    pub retention_ms: Option<Limit>,
    /// Payload compression: none, lz4 or zstd.
    #[arg(long, value_parser = args::parse_codec, default_value = "none")]
    pub codec: Codec,
    /// Succeed when the topic already exists.
    #[arg(long)]
    pub if_not_exists: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `shale topic alter`.
#[derive(Debug, Args)]
pub struct TopicAlterArgs {
    /// The topic.
    pub name: String,
    /// New retention by size per partition, or `unlimited`.
    #[arg(long, value_parser = args::parse_bytes_limit, value_name = "SIZE")]
    pub retention_bytes: Option<Limit>,
    /// New retention by age, or `unlimited`.
    #[arg(long, value_parser = args::parse_duration_limit, value_name = "DURATION")]
    pub retention_ms: Option<Limit>,
    /// New payload compression for records written from now on.
    #[arg(long, value_parser = args::parse_codec)]
    pub codec: Option<Codec>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `shale produce`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  echo hello | shale produce orders
  shale produce orders --key user-7 --header source=cli < events.txt
  shale produce orders --key-separator ':' <<< 'user-7:{\"total\":12}'
  shale produce images --file a.png --file b.png      (one record per file)
  cat report.json | shale produce reports --whole      (all of stdin as one record)")]
pub struct ProduceArgs {
    /// The topic.
    pub topic: String,
    /// Key of every record (records with one key go to one partition).
    #[arg(long, short = 'k', conflicts_with = "key_separator")]
    pub key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header for every record, key=value (repeatable).
    #[arg(long = "header", short = 'H', value_parser = args::parse_header, value_name = "KEY=VALUE")]
    pub headers: Vec<(String, String)>,
    /// Write to this partition (default: by key hash; keyless records go to one partition in runs
    /// of a few full batches, then to the next).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Send each file as one record instead of reading stdin (repeatable).
    #[arg(long = "file", short = 'f', value_name = "PATH", conflicts_with_all = ["whole", "key_separator"])]
    pub files: Vec<PathBuf>,
    /// Send all of stdin as one record instead of one per line.
    #[arg(long, conflicts_with = "key_separator")]
    pub whole: bool,
    /// Print each record's partition, offset and chain hash, or its error: json prints one line per
    /// record as it is acknowledged or fails; table and yaml print all at the end.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<OutputFormat>,
}

/// Consume output formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    /// The value, one record per line (add --print-key / --print-offset for more).
    #[default]
    Plain,
    /// One JSON object per line: topic, partition, offset, key, value, headers, timestamp, hash.
    Json,
}

/// `shale consume --reset-out-of-range`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutOfRangePolicy {
    /// Fail (exit code 1) naming the partition's range.
    #[default]
    Error,
    /// Move to the partition's start (the lowest offset any replica holds).
    Earliest,
    /// Move to the partition's end.
    Latest,
}

/// `shale consume`.
#[derive(Debug, Args)]
#[command(after_help = "Without --follow, consume stops once it reaches the log end it saw at start.
With --group G, consume joins group G: the cluster assigns it a share of the partitions (start
several to share the work; one that stops or dies hands its partitions to the others), reads them
from the group's committed offsets, commits what it printed, and leaves the group at the end.
Start position: --offset, else the group's committed offset (--group), else the partition's start
with --from-beginning (the lowest offset any replica holds), else the log end (only new records;
useful with --follow). Any replica serves reads: if the one asked no longer holds an offset, another
replica that does is read. A position no replica holds (--offset past the end or below every
replica's start, an old committed offset) fails with exit code 1 naming the partition's range,
unless --reset-out-of-range earliest|latest says where to go instead.

Examples:
  shale consume orders --from-beginning
  shale consume orders --partition 0 --offset 42 --max-records 10
  shale consume orders --group billing --follow --format json
  shale consume orders --from-beginning --print-key --print-offset
  shale consume orders --from-beginning --verify

Every log entry read is checked against the partition's hash chain (its chain hash recomputed, each
answer continuing the chain read so far, offsets without gaps); a break fails with exit code 1
naming the partition, log index and offset. --verify also reports, per partition, how much of the
chain was verified and the last hash; --no-verify skips the check (faster).")]
pub struct ConsumeArgs {
    /// The topic.
    pub topic: String,
    /// Read only these partitions (repeatable; default: all).
    #[arg(long = "partition", short = 'p', value_name = "P")]
    pub partitions: Vec<u32>,
    /// Start at the first offset still held.
    #[arg(long, conflicts_with = "offset")]
    pub from_beginning: bool,
    /// Start at this offset (in every partition read).
    #[arg(long)]
    pub offset: Option<u64>,
    /// Start, in every partition read, at the first record whose timestamp is at or after this
    /// time (ms since the Unix epoch, or RFC 3339 such as 2026-12-03T10:00:00Z); a partition
    /// whose records are all older starts at its end. For a group, see `group reset-offsets
    /// --to-time`.
    #[arg(long, value_name = "TIME", value_parser = crate::args::parse_time_ms,
          conflicts_with_all = ["offset", "from_beginning", "group"])]
    pub from_time: Option<u64>,
    /// Where to go when a position is one no replica holds: `error` (exit 1, the default),
    /// `earliest` (the partition's start) or `latest` (its end).
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = OutOfRangePolicy::Error)]
    pub reset_out_of_range: OutOfRangePolicy,
    /// Consume as a member of this consumer group: the cluster assigns this member its share of
    /// the topic's partitions (other members share the rest), each starts at the group's
    /// committed offset, and what was printed is committed.
    #[arg(long, short = 'g', conflicts_with_all = ["partitions", "offset"])]
    pub group: Option<String>,
    /// Keep waiting for new records (until Ctrl-C or --max-records).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, short = 'n', value_name = "N")]
    pub max_records: Option<u64>,
    /// How records are printed (`-o json` as on read commands).
    #[arg(long, short = 'o', visible_alias = "output", value_enum, default_value_t = RecordFormat::Plain)]
    pub format: RecordFormat,
    /// Plain format: print `key<TAB>` before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Plain format: print `partition:offset<TAB>` before the value.
    #[arg(long)]
    pub print_offset: bool,
    /// Report on stderr, per partition, the entries and records whose chain was verified and the
    /// last chain hash (the check itself is on unless --no-verify).
    #[arg(long, conflicts_with = "no_verify")]
    pub verify: bool,
    /// Do not recompute and check the chain hashes (records then print no chain hash).
    #[arg(long)]
    pub no_verify: bool,
}

/// `shale group ...`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Groups that have committed offsets.
    #[command(alias = "ls", after_help = "Examples:\n  shale group list")]
    List(OutputArgs),
    /// A group's state, epoch, assignor, members (id, client address, partitions) and its
    /// committed offsets and lag per partition.
    #[command(after_help = "Examples:\n  shale group describe billing\n  shale group describe billing -o json")]
    Describe {
        /// The group.
        group: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Move a group's committed offsets (shows the plan; add --execute to apply it, which needs a
    /// group without members).
    ResetOffsets(ResetOffsetsArgs),
    /// Delete a group without members and its committed offsets.
    #[command(after_help = "Examples:\n  shale group delete billing")]
    Delete {
        /// The group.
        group: String,
    },
}

/// `shale group reset-offsets`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to_earliest", "to_latest", "to_offset", "shift_by", "to_time"])))]
#[command(after_help = "Examples:
  shale group reset-offsets billing --topic orders --to-earliest            (dry run: prints the plan)
  shale group reset-offsets billing --topic orders --to-time 2026-12-03T10:00:00Z --execute
  shale group reset-offsets billing --topic orders --to-latest --execute
  shale group reset-offsets billing --topic orders -p 0 --shift-by -100 --execute")]
pub struct ResetOffsetsArgs {
    /// The group.
    pub group: String,
    /// The topic whose offsets move.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Only these partitions (repeatable; default: all).
    #[arg(long = "partition", short = 'p', value_name = "P")]
    pub partitions: Vec<u32>,
    /// To the first offset still held.
    #[arg(long)]
    pub to_earliest: bool,
    /// To the log end (skip everything written so far).
    #[arg(long)]
    pub to_latest: bool,
    /// To this offset (clamped to what the partition holds).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<u64>,
    /// By this many offsets from the committed one (negative goes back; clamped).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
    /// To the first record whose timestamp is at or after this time (ms since the Unix epoch, or
    /// RFC 3339); a partition whose records are all older goes to its end.
    #[arg(long, value_name = "TIME", value_parser = crate::args::parse_time_ms)]
    pub to_time: Option<u64>,
    /// Apply the plan (without it, only print it).
    #[arg(long)]
    pub execute: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `shale verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Online: asks every replica of each partition for its chain hash at the same offset (with --sweep,
at every STEP offsets from the log start too). If they differ, or a replica cannot read its log
there, a binary search over offsets finds the first offset where they part, and the replica that
differs from the majority is named.

Offline (--data-dir): checks a stopped node's files directly: segment and index CRCs, record
framing, offsets and the SHA-256 chain of every stream, each named by its topic and partition.
The directory is opened read-only and never modified.

Exit code 1 when replicas disagree or damage is found.

Examples:
  shale verify orders
  shale verify orders --partition 3 --offset 1000
  shale verify orders --sweep
  shale verify --data-dir /var/lib/shale/node-2
  shale verify --data-dir ./data/node-1 -o json"
)]
pub struct VerifyArgs {
    /// The topic to verify online.
    #[arg(required_unless_present = "data_dir")]
    pub topic: Option<String>,
    /// Only this partition (default: all).
    #[arg(long, short = 'p', requires = "topic")]
    pub partition: Option<u32>,
    /// Compare at this offset (default: the last offset every replica has applied).
    #[arg(long, requires = "topic")]
    pub offset: Option<u64>,
    /// Make every replica re-read every record from the partition's start from disk (CRCs, offsets,
    /// chain links recomputed), so damage anywhere is found and named with its replica and first
    /// bad offset (the default compares only the newest common offset, which replicas answer from
    /// memory).
    #[arg(long, requires = "topic")]
    pub sweep: bool,
    /// Records each replica re-reads per request during --sweep (every record is re-read either
    /// way; smaller pieces mean shorter requests).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..), requires = "sweep")]
    pub step: u64,
    /// A replica whose log ends more than this many offsets short of the committed end is reported
    /// as missing that range (within it, it is lagging normally).
    #[arg(long, default_value_t = 1_000, requires = "topic")]
    pub max_lag: u64,
    /// Check a node's data directory offline instead (stop the node first).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["topic", "partition", "offset", "sweep", "max_lag"])]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `shale bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce load: records/s, MB/s and acknowledgement latency percentiles.
    #[command(after_help = "Examples:
  shale bench produce --topic bench --records 100000 --record-size 1KiB
  shale bench produce --topic bench --records 50000 --concurrency 4 --throughput 5000 -o json")]
    Produce(BenchProduceArgs),
    /// Consume load: reads records from the start of a topic; records/s, MB/s, fetch latency.
    #[command(
        after_help = "The chain of every entry read is checked (as `shale consume` does) unless --no-verify; the \
                      report says which.\n\nExamples:\n  shale bench consume --topic bench --records 100000\n  \
                      shale bench consume --topic bench --records 100000 --no-verify"
    )]
    Consume(BenchConsumeArgs),
    /// Many partitions (issue 15): starts three local `shale-node run` processes, creates
    /// partitions at replication factor 3 and prints leader, idle, memory, failover, restart and
    /// produce figures; stops the nodes at the end.
    #[command(
        after_help = "Linux only (CPU and RSS come from /proc). Needs free ports base-port+1..3 and +11..13.\n\n\
                      Examples:\n  shale bench partitions --partitions 600\n  \
                      shale bench partitions --partitions 3000 --idle-seconds 30 -o json"
    )]
    Partitions(BenchPartitionsArgs),
}

/// `shale bench partitions`.
#[derive(Debug, Args)]
pub struct BenchPartitionsArgs {
    /// Partitions to create (replication factor 3), in topics of --per-topic.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Partitions per topic.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub per_topic: u32,
    /// Seconds over which idle CPU is measured (also lets preferred leaders take over).
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// Partitions of the topic produced to at the end (0: no produce run).
    #[arg(long, default_value_t = 300)]
    pub produce_partitions: u32,
    /// Seconds of the produce run.
    #[arg(long, default_value_t = 10)]
    pub produce_seconds: u64,
    /// Payload size of each produced record.
    #[arg(long, default_value = "1KiB", value_parser = args::parse_bytes, value_name = "SIZE")]
    pub record_size: u64,
    /// Concurrent sender tasks of the produce run (each keeps up to 1000 records in flight).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// The producer's batches in flight per node, across partitions (default: the client's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_per_node: Option<u32>,
    /// Send the produce run's records without a partition, so the producer's sticky partitioner
    /// places them (runs of a few full batches per partition), instead of record i to partition
    /// i % --produce-partitions.
    #[arg(long)]
    pub produce_keyless: bool,
    /// The longest wait for any one step (cluster up, leaders, failover, restart).
    #[arg(long, default_value_t = 120)]
    pub wait_seconds: u64,
    /// The `shale-node` binary (default: next to this `shale`).
    #[arg(long)]
    pub node_bin: Option<std::path::PathBuf>,
    /// Directory for the nodes' data and logs (default: a new one under the temp dir, removed
    /// at the end unless --keep).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the default directory at the end.
    #[arg(long)]
    pub keep: bool,
    /// Node i listens on 127.0.0.1:(base-port + i) (gRPC) and (base-port + 10 + i) (HTTP).
    #[arg(long, default_value_t = 17100)]
    pub base_port: u16,
    /// Report format (table is the human report).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `shale bench produce`.
#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    /// Topic to write to (created with --create-partitions if missing).
    #[arg(long, short = 't')]
    pub topic: String,
    /// Records to send.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub records: u64,
    /// Payload size of each record.
    #[arg(long, short = 's', default_value = "512", value_parser = args::parse_bytes, value_name = "SIZE")]
    pub record_size: u64,
    /// Concurrent sender tasks.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Unacknowledged records each sender keeps in flight.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub window: u32,
    /// Target rate in records/s over all senders (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub throughput: u64,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_partitions: u32,
    /// The producer's batch size in payload bytes [default: the client's, 128KiB].
    #[arg(long, value_parser = args::parse_bytes, value_name = "SIZE")]
    pub batch_max_bytes: Option<u64>,
    /// The producer's linger while a batch of the partition is in flight, ms [default: the client's, 5].
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// The producer's batches in flight per partition [default: the client's, 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_in_flight: Option<u32>,
    /// Full batches the producer writes to one partition before moving its keyless records to
    /// the next (the bench's records have no key) [default: the client's, 32; 1 is Kafka's sticky
    /// partitioner].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub keyless_run_batches: Option<u32>,
    /// Report format (table is the human report).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `shale bench consume`.
#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    /// Topic to read from the start.
    #[arg(long, short = 't')]
    pub topic: String,
    /// Records to read (stops early at the log end seen at start).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub records: u64,
    /// Payload bytes per partition fetch.
    #[arg(long, default_value = "1MiB", value_parser = args::parse_bytes, value_name = "SIZE")]
    pub fetch_bytes: u64,
    /// Do not recompute and check the chain hashes (measures decoding alone).
    #[arg(long)]
    pub no_verify: bool,
    /// Report format (table is the human report).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shale").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bootstrap_defaults_to_the_dev_cluster_and_is_global() {
        let cli = parse(&["topic", "list"]).unwrap();
        // SHALE_BOOTSTRAP may be set in the environment of whoever runs the tests.
        if std::env::var_os("SHALE_BOOTSTRAP").is_none() {
            assert_eq!(cli.global.bootstrap, None, "the default is applied after the profile");
        }
        let cli = parse(&["topic", "list", "--bootstrap", "a:1,b:2"]).unwrap();
        assert_eq!(cli.global.bootstrap.as_deref(), Some("a:1,b:2"));
        assert_eq!(cli.global.timeout, 10_000);
    }

    #[test]
    fn topic_create_parses_units_and_codec() {
        let cli = parse(&[
            "topic",
            "create",
            "orders",
            "-p",
            "6",
            "-r",
            "3",
            "--retention-bytes",
            "1GiB",
            "--retention-ms",
            "7d",
            "--codec",
            "zstd",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Topic(TopicCommand::Create(a)) = cli.command else { panic!("wrong command") };
        assert_eq!(a.partitions, 6);
        assert_eq!(a.replication_factor, Some(3));
        assert_eq!(a.retention_bytes, Some(Limit::Value(1 << 30)));
        assert_eq!(a.retention_ms, Some(Limit::Value(7 * 86_400_000)));
        assert_eq!(a.codec, Codec::Zstd);
        assert_eq!(a.output.output, OutputFormat::Json);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        assert_eq!(parse(&["topic", "create", "t", "-p", "0"]).unwrap_err().kind(), ErrorKind::ValueValidation);
        assert_eq!(parse(&["topic", "list", "--no-such-flag"]).unwrap_err().kind(), ErrorKind::UnknownArgument);
        assert_eq!(parse(&["topic", "list", "-o", "xml"]).unwrap_err().kind(), ErrorKind::InvalidValue);
        assert_eq!(
            parse(&["consume", "t", "--from-beginning", "--offset", "3"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(parse(&["verify"]).unwrap_err().kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(parse(&["verify", "t", "--data-dir", "/x"]).unwrap_err().kind(), ErrorKind::ArgumentConflict);
        assert_eq!(
            parse(&["group", "reset-offsets", "g", "--topic", "t"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["group", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--to-latest"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            parse(&["produce", "t", "--key", "k", "--key-separator", ":"]).unwrap_err().kind(),
            ErrorKind::ArgumentConflict
        );
        // clap exits with 2 for all of these.
        assert_eq!(parse(&["topic", "list", "--no-such-flag"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn produce_collects_headers_and_files() {
        let cli = parse(&["produce", "t", "-H", "a=1", "--header", "b=x=y", "-p", "2"]).unwrap();
        let Command::Produce(a) = cli.command else { panic!("wrong command") };
        assert_eq!(a.headers, vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]);
        assert_eq!(a.partition, Some(2));
        let cli = parse(&["produce", "t", "--file", "a", "--file", "b"]).unwrap();
        let Command::Produce(a) = cli.command else { panic!("wrong command") };
        assert_eq!(a.files.len(), 2);
    }

    #[test]
    fn consume_takes_output_as_an_alias_of_format() {
        for args in [
            &["consume", "t", "-o", "json"][..],
            &["consume", "t", "--output", "json"],
            &["consume", "t", "--format", "json"],
        ] {
            let Command::Consume(a) = parse(args).unwrap().command else { panic!("wrong command") };
            assert_eq!(a.format, RecordFormat::Json);
        }
    }

    #[test]
    fn reset_offsets_accepts_negative_shifts() {
        let cli = parse(&["group", "reset-offsets", "g", "-t", "orders", "--shift-by", "-100"]).unwrap();
        let Command::Group(GroupCommand::ResetOffsets(a)) = cli.command else { panic!("wrong command") };
        assert_eq!(a.shift_by, Some(-100));
        assert!(!a.execute);
    }

    #[test]
    fn bench_sizes_parse() {
        let cli =
            parse(&["bench", "produce", "-t", "b", "--record-size", "1KiB", "-c", "4", "--throughput", "500"]).unwrap();
        let Command::Bench(BenchCommand::Produce(a)) = cli.command else { panic!("wrong command") };
        assert_eq!(a.record_size, 1024);
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.throughput, 500);
    }
}
