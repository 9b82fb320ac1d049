//! Everything the harness can fail with.

use std::path::PathBuf;
use std::time::Duration;

/// A harness failure: what was attempted and why it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A command could not be started at all (not installed, not executable).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` exited with {status}: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A command ran longer than it may.
    #[error("`{command}` did not finish within {timeout:?}")]
    CommandTimeout {
        /// The command line.
        command: String,
        /// The bound.
        timeout: Duration,
    },
    /// A condition was not reached in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The bound.
        timeout: Duration,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was done (`reading`, `locking`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool's output could not be understood.
    #[error("unexpected output from {what}: {detail}")]
    Parse {
        /// The tool or file.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A client call failed.
    #[error("{what}: {source}")]
    Client {
        /// The call.
        what: String,
        /// The client's error.
        #[source]
        source: shale_client::ClientError,
    },
    /// The test setup is wrong (a node index out of range, ...).
    #[error("harness misuse: {0}")]
    Usage(String),
}

impl HarnessError {
    /// Wraps a client error with the call it came from.
    pub fn client(what: impl Into<String>) -> impl FnOnce(shale_client::ClientError) -> Self {
        let what = what.into();
        move |source| HarnessError::Client { what, source }
    }
}
