//! The `shale` admin CLI inside the image: `verify` online (every replica's chain hash, swept over
//! the log) and offline (a stopped node's files: CRCs and chain links of every stream). The JSON
//! reports are read into the subsets the checkers need.

use std::time::Duration;

use serde::Deserialize;

use crate::docker::run_capture;
use crate::error::HarnessError;

/// Bound on one CLI run.
const CLI_TIMEOUT: Duration = Duration::from_secs(180);

/// `shale verify TOPIC -o json` (online).
#[derive(Debug, Clone, Deserialize)]
pub struct OnlineVerify {
    /// The topic.
    pub topic: String,
    /// One verdict per partition.
    pub partitions: Vec<OnlinePartition>,
}

/// One partition's online verdict.
#[derive(Debug, Clone, Deserialize)]
pub struct OnlinePartition {
    /// The partition.
    pub partition: u32,
    /// `agree`, `disagree`, `unavailable` or `error`.
    pub status: String,
    /// The newest offset compared.
    pub checked_offset: Option<u64>,
    /// Where the replicas part, if they do.
    pub first_divergent_offset: Option<u64>,
    /// Why the check failed, if it did.
    pub error: Option<String>,
}

/// `shale verify --data-dir DIR -o json` (offline).
#[derive(Debug, Clone, Deserialize)]
pub struct OfflineVerify {
    /// The directory checked.
    pub data_dir: String,
    /// Per stream.
    pub streams: Vec<OfflineStream>,
    /// Streams with damage.
    pub damaged_streams: usize,
}

/// One stream's offline verdict.
#[derive(Debug, Clone, Deserialize)]
pub struct OfflineStream {
    /// Stream id.
    pub stream: u64,
    /// What it holds.
    pub role: String,
    /// `ok` or `damaged`.
    pub status: String,
    /// Records verified.
    pub records_verified: Option<u64>,
    /// What was found (kept as JSON for the report).
    pub findings: Vec<serde_json::Value>,
}

fn parse<T: for<'de> Deserialize<'de>>(
    what: &str,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> Result<T, HarnessError> {
    serde_json::from_str(stdout).map_err(|e| HarnessError::Parse {
        what: what.to_string(),
        detail: format!("exit {code:?}: {e}; stdout: {stdout:.2000}; stderr: {stderr:.2000}"),
    })
}

/// Runs the online verify of `topic` with `--sweep` inside `container` against its own node.
pub async fn verify_online(container: &str, topic: &str) -> Result<OnlineVerify, HarnessError> {
    let args = [
        "exec",
        container,
        "/usr/local/bin/shale",
        "--bootstrap",
        "127.0.0.1:7001",
        "verify",
        topic,
        "--sweep",
        "-o",
        "json",
    ];
    let (code, out) = run_capture("docker", &args, CLI_TIMEOUT).await?;
    parse(&format!("shale verify {topic} in {container}"), code, &out.stdout, &out.stderr)
}

/// Runs the offline verify of a (stopped) node's volume in a throw-away container of `image`.
pub async fn verify_offline(image: &str, volume: &str) -> Result<OfflineVerify, HarnessError> {
    let mount = format!("{volume}:/data");
    let args = [
        "run",
        "--rm",
        "-v",
        &mount,
        "--entrypoint",
        "/usr/local/bin/shale",
        image,
        "verify",
        "--data-dir",
        "/data",
        "-o",
        "json",
    ];
    let (code, out) = run_capture("docker", &args, CLI_TIMEOUT).await?;
    parse(&format!("shale verify --data-dir on volume {volume}"), code, &out.stdout, &out.stderr)
}
