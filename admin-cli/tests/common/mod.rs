//! An in-process three-node cluster (disk storage in a temp dir, real gRPC on 127.0.0.1) and a way
//! to run the real `shale` binary against it.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use shale_node::testing::LocalCluster;
use shale_storage::format::{names, record, segment};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(30);

/// Three (or `n`) real nodes, and the temp dir holding their data.
pub struct TestCluster {
    cluster: LocalCluster,
    _root: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes on 127.0.0.1:0 and waits until each sees a metadata leader.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, |_| {}).await
    }

    /// As [`TestCluster::start`], each node's configuration passed through `configure`.
    pub async fn start_with(n: u64, configure: fn(&mut shale_node::config::NodeConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let root = tempfile::tempdir().expect("temp dir");
        let cluster = LocalCluster::start(n, root.path(), configure).await.expect("nodes start");
        let late = cluster.not_ready(WAIT).await;
        assert!(late.is_empty(), "nodes {late:?} never saw a metadata leader");
        Self { cluster, _root: root }
    }

    /// `host:port,host:port,...` of every node.
    pub fn bootstrap(&self) -> String {
        self.cluster.endpoints().join(",")
    }

    /// Node `id`, which must be running (for in-process calls on its own replicas).
    pub fn node(&self, id: u64) -> &shale_node::NodeHandle {
        self.cluster.running(id).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        self.cluster.data_dir(id)
    }

    /// Stops node `id` gracefully.
    pub async fn stop(&mut self, id: u64) {
        assert!(self.cluster.running(id).is_some(), "node {id} is running");
        self.cluster.stop(id).await.expect("clean shutdown");
    }

    /// Restarts a stopped node on its old port and data dir and waits for a metadata leader.
    pub async fn restart(&mut self, id: u64) {
        let node = self.cluster.restart(id).await.expect("node restarts");
        assert!(node.wait_ready(WAIT).await, "node {id} never saw a metadata leader after restart");
    }

    /// Starts one more node (id = current count + 1) that is not a member yet: it knows the others
    /// as peers but does not bootstrap; `shale cluster add-node` makes it a member. Returns its
    /// gRPC address.
    pub async fn start_joiner(&mut self) -> String {
        let id = self.cluster.start_joiner().await.expect("joiner starts");
        self.cluster.grpc[id as usize - 1].to_string()
    }

    /// Runs `shale ARGS --bootstrap <this cluster>` with `stdin`, off the async runtime.
    pub async fn shale(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push("--bootstrap".into());
        full.push(self.bootstrap());
        // Generous retries: the tests share two cores with whole clusters electing leaders.
        full.push("--attempts".into());
        full.push("20".into());
        run_shale(full, stdin.to_vec()).await
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        self.cluster.shutdown().await.expect("clean shutdown");
    }
}

/// Runs the `shale` binary with `args` and `stdin`, on a blocking thread.
pub async fn run_shale(args: Vec<String>, stdin: Vec<u8>) -> Output {
    run_shale_env(args, stdin, vec![]).await
}

/// As [`run_shale`], with these environment variables set. The caller's own `SHALE_*` settings
/// are removed, and the profile file is one that does not exist unless `SHALE_CONFIG` is given.
pub async fn run_shale_env(args: Vec<String>, stdin: Vec<u8>, env: Vec<(String, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("shale"));
        cmd.args(&args);
        for var in [
            "SHALE_TOKEN",
            "SHALE_USER",
            "SHALE_PASSWORD",
            "SHALE_PROFILE",
            "SHALE_TLS_CA",
            "SHALE_TLS_CERT",
            "SHALE_TLS_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("SHALE_CONFIG", std::env::temp_dir().join("shale-cli-tests-no-such-dir/config.toml"));
        cmd.env_remove("SHALE_BOOTSTRAP").env_remove("RUST_LOG").envs(env);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn shale");
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(&stdin).expect("write stdin");
        drop(input);
        child.wait_with_output().expect("shale runs")
    })
    .await
    .expect("blocking task")
}

/// Stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code `code`, showing both streams otherwise.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

/// Stdout parsed as JSON.
pub fn json(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(o)))
}

/// What `shale verify --data-dir` found in a damaged data directory.
pub struct OfflineDamage {
    /// The whole JSON report.
    pub report: Value,
    /// Its entry for topic #1 partition 0's Raft log ([`FIRST_PARTITION_LOG_STREAM`]).
    pub stream: Value,
    /// That stream's first damage finding.
    pub damage: Value,
}

/// Runs `shale verify --data-dir DIR -o json` on a stopped node's data directory, which must report
/// damage (exit code 1) in topic #1 partition 0's Raft log.
pub async fn verify_offline_damaged(dir: &Path) -> OfflineDamage {
    let dir = dir.to_string_lossy().into_owned();
    let o = run_shale(vec!["verify".into(), "--data-dir".into(), dir, "-o".into(), "json".into()], Vec::new()).await;
    assert_exit(&o, 1);
    let report = json(&o);
    let stream = report["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == FIRST_PARTITION_LOG_STREAM)
        .cloned()
        .unwrap_or_else(|| panic!("{report}"));
    let damage = stream["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["severity"] == "damage")
        .cloned()
        .unwrap_or_else(|| panic!("{stream}"));
    OfflineDamage { report, stream, damage }
}

/// Stream id of topic #1 partition 0's Raft log: group `(1 << 16) | 1`, log stream `2 * group`.
pub const FIRST_PARTITION_LOG_STREAM: u64 = 2 * ((1 << 16) | 1);

/// In `dir`'s stream, the segment holding a record whose payload contains `needle`, the byte
/// position of the needle, and the record's offset.
pub fn find_record(dir: &Path, needle: &[u8]) -> (PathBuf, usize, u64) {
    let stream_dir = dir.join(FIRST_PARTITION_LOG_STREAM.to_string());
    let mut segs: Vec<PathBuf> = fs::read_dir(&stream_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", stream_dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| names::parse_segment(&p.file_name().unwrap().to_string_lossy()).is_some())
        .collect();
    segs.sort();
    for path in segs {
        let bytes = fs::read(&path).unwrap();
        let mut pos = segment::HEADER_LEN;
        while pos + record::HEADER_LEN <= bytes.len() {
            let field = |at: usize, len: usize| &bytes[pos + at..pos + at + len];
            let offset = u64::from_le_bytes(field(record::OFFSET_AT, 8).try_into().unwrap());
            let stored = u32::from_le_bytes(field(record::STORED_LEN_AT, 4).try_into().unwrap()) as usize;
            let payload = &bytes[pos + record::PAYLOAD_AT..pos + record::PAYLOAD_AT + stored];
            if let Some(i) = payload.windows(needle.len()).position(|w| w == needle) {
                return (path, pos + record::PAYLOAD_AT + i, offset);
            }
            pos += record::encoded_len(stored);
        }
    }
    panic!("no record holds {:?}", String::from_utf8_lossy(needle));
}
