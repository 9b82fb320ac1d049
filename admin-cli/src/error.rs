//! The CLI's one error type: what failed, the exit code it maps to, and a hint that says what to do.

use std::io;
use std::path::PathBuf;

use shale_client::{ClientError, ErrorCode};

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code of an operational failure (the cluster refused, data is damaged, replicas disagree...).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage error (bad flags or arguments; clap's own errors use it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of an incomplete report: the command printed what it could read, but part of what
/// it should show could not be read (`shale cluster status` with members that did not answer).
pub const EXIT_INCOMPLETE: u8 = 3;

/// Everything a `shale` command can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The arguments are valid for clap but make no sense together (exit code 2).
    #[error("{0}")]
    Usage(String),

    /// A cluster call failed.
    #[error("{action}: {source}")]
    Client {
        /// What we were doing ("create topic orders", ...).
        action: String,
        /// The endpoints the CLI was pointed at, for the hint.
        bootstrap: String,
        /// What the client said.
        #[source]
        source: ClientError,
    },

    /// An input file (or stdin) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Input {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// Input data (stdin or a file) cannot be turned into records.
    #[error("{0}")]
    BadInput(String),

    /// Writing to stdout failed (other than the reader going away).
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),

    /// A value could not be rendered in the requested format.
    #[error("cannot render output as {format}: {reason}")]
    Encode {
        /// `json` or `yaml`.
        format: &'static str,
        /// What the encoder said.
        reason: String,
    },

    /// A local file operation of `verify --data-dir` failed.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What we were doing ("copy", "list directory", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },

    /// A certificate could not be made, read or written (`shale cert`, the `--tls-*` files).
    #[error("{action}: {source}")]
    Tls {
        /// What we were doing.
        action: String,
        /// Why.
        #[source]
        source: shale_raft::network::tls::TlsError,
    },

    /// The profile file could not be read, parsed or written, or names no such profile (exit
    /// code 2).
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),

    /// The async runtime could not start (out of threads or file descriptors).
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),

    /// The command ran and its report (already printed) says the check failed: replicas disagree,
    /// files are damaged, records could not be delivered...
    #[error("{0}")]
    CheckFailed(String),

    /// The report (already printed) is incomplete: part of it could not be read (exit code 3).
    #[error("{message}")]
    Incomplete {
        /// What is missing and why.
        message: String,
        /// What the operator can do about it.
        hint: String,
    },
}

impl CliError {
    /// A failed cluster call while doing `action`.
    pub fn client(action: impl Into<String>, bootstrap: &str, source: ClientError) -> Self {
        CliError::Client { action: action.into(), bootstrap: bootstrap.to_string(), source }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Profile(_) => EXIT_USAGE,
            CliError::Incomplete { .. } => EXIT_INCOMPLETE,
            _ => EXIT_FAILURE,
        }
    }

    /// True when stdout was closed by its reader (`shale consume ... | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// What the operator can do about it, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Client { bootstrap, source, .. } => client_hint(bootstrap, source),
            CliError::Usage(_) => Some("see `shale --help` or `shale <command> --help` for usage and examples".into()),
            CliError::Incomplete { hint, .. } => Some(hint.clone()),
            CliError::Output(_)
            | CliError::Encode { .. }
            | CliError::CheckFailed(_)
            | CliError::BadInput(_)
            | CliError::Runtime(_) => None,
            CliError::Input { .. } => Some("check the path and its permissions".into()),
            CliError::Profile(_) => Some(
                "fix the profile file, or point SHALE_CONFIG at another (`shale profile --help` shows its format)"
                    .into(),
            ),
            CliError::Local { .. } => Some("check the path and its permissions".into()),
            CliError::Tls { .. } => Some(
                "check the PEM files (`shale cert init-ca` makes a CA, `shale cert node|client` certificates)".into(),
            ),
        }
    }
}

/// The innermost error of a (possibly retried) client failure.
fn innermost(e: &ClientError) -> &ClientError {
    match e {
        ClientError::RetriesExhausted { last, .. } => innermost(last),
        other => other,
    }
}

fn client_hint(bootstrap: &str, e: &ClientError) -> Option<String> {
    let unreachable = format!(
        "is a node running at {bootstrap}? point the CLI at the cluster with --bootstrap host:port[,host:port] or \
         SHALE_BOOTSTRAP (a local 3-node cluster: `cargo run -p shale-node -- dev`)"
    );
    match innermost(e) {
        ClientError::Status { code: tonic::Code::Unavailable | tonic::Code::DeadlineExceeded, .. } => Some(unreachable),
        ClientError::NoEndpoints | ClientError::InvalidEndpoint { .. } => {
            Some("give --bootstrap as comma-separated host:port pairs, e.g. 127.0.0.1:7001,127.0.0.1:7002".into())
        }
        ClientError::OffsetOutOfRange { log_start, log_end, .. } => Some(format!(
            "the partition holds offsets [{log_start}, {log_end}); pick one in range, use --from-beginning, or \
             choose a reset with --reset-out-of-range earliest|latest"
        )),
        ClientError::NotLeader { .. } => Some("leadership is moving; retry in a moment".into()),
        ClientError::Server { code, .. } => match code {
            ErrorCode::UnknownTopic => Some("`shale topic list` shows the existing topics".into()),
            ErrorCode::UnknownPartition => Some("`shale topic describe TOPIC` shows its partitions".into()),
            ErrorCode::TopicExists => Some("use --if-not-exists to accept an existing topic".into()),
            ErrorCode::UnknownNode => Some("`shale cluster status` lists the members".into()),
            ErrorCode::GroupNotEmpty => Some(
                "the group has members: stop its consumers (they leave the group) and wait for `shale group \
                 describe GROUP` to show state empty"
                    .into(),
            ),
            ErrorCode::UnknownGroup => Some("`shale group list` shows the existing groups".into()),
            ErrorCode::FencedMember | ErrorCode::UnknownMemberId => Some(
                "this consumer's partitions moved to another member of the group (its session expired); run it \
                 again to rejoin"
                    .into(),
            ),
            ErrorCode::FailedPrecondition => Some(
                "the cluster's current state does not allow it; `shale cluster status` shows members and leaders"
                    .into(),
            ),
            ErrorCode::NoLeader | ErrorCode::NotLeader | ErrorCode::Unavailable => Some(format!(
                "the cluster is electing a leader or a replica is down; retry, and check `shale cluster status`. {unreachable}"
            )),
            ErrorCode::Timeout => Some("the operation may still take effect; check with `shale cluster status`".into()),
            ErrorCode::RecordTooLarge | ErrorCode::BatchTooLarge | ErrorCode::RequestTooLarge => {
                Some("send smaller records (the node's limits are in its config, [limits])".into())
            }
            ErrorCode::Corruption => {
                Some("run `shale verify TOPIC` and, with the node stopped, `shale verify --data-dir DIR`".into())
            }
            ErrorCode::Unauthenticated => Some(
                "the credentials were not accepted: check --token / SHALE_TOKEN (`<user>:<secret>` from `shale user \
                 create`), or --user / SHALE_USER with --password-file / SHALE_PASSWORD, or the profile's"
                    .into(),
            ),
            ErrorCode::NotAuthorized => Some(
                "ask an operator for a rule (`shale acl add --principal P --operation OP --topic T`);                  `shale user whoami` shows who the cluster sees"
                    .into(),
            ),
            _ => None,
        },
        ClientError::ChainMismatch { .. } | ClientError::MalformedEntry { .. } => Some(
            "a replica served log entries that do not continue the partition's hash chain: run `shale verify TOPIC \
             --sweep` to compare the replicas, and `shale verify --data-dir DIR` on the node that served them"
                .into(),
        ),
        _ => None,
    }
}

/// The CLI's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_incomplete_reports_3_and_others_exit_1() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), EXIT_USAGE);
        assert_eq!(CliError::Incomplete { message: "x".into(), hint: "y".into() }.exit_code(), EXIT_INCOMPLETE);
        assert_eq!(CliError::CheckFailed("x".into()).exit_code(), EXIT_FAILURE);
        let e = CliError::client("list topics", "a:1", ClientError::NoEndpoints);
        assert_eq!(e.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn unreachable_cluster_hint_names_the_bootstrap_and_the_way_out() {
        let inner = ClientError::Status { code: tonic::Code::Unavailable, message: "connection refused".into() };
        let e = CliError::client(
            "list topics",
            "10.0.0.1:7001",
            ClientError::RetriesExhausted { attempts: 3, last: Box::new(inner) },
        );
        let hint = e.hint().unwrap();
        assert!(hint.contains("10.0.0.1:7001"), "{hint}");
        assert!(hint.contains("SHALE_BOOTSTRAP"), "{hint}");
    }

    #[test]
    fn unknown_topic_hint_points_at_topic_list() {
        let e = CliError::client(
            "describe topic x",
            "a:1",
            ClientError::Server { code: ErrorCode::UnknownTopic, limit: None, message: "no topic x".into() },
        );
        assert!(e.hint().unwrap().contains("shale topic list"));
        assert!(e.to_string().starts_with("describe topic x: "), "{e}");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        assert!(CliError::Output(io::Error::from(io::ErrorKind::BrokenPipe)).is_broken_pipe());
        assert!(!CliError::Output(io::Error::from(io::ErrorKind::Other)).is_broken_pipe());
    }
}
