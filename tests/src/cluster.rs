//! A cluster of `shale-node` containers on a private network of its own, removed (containers,
//! volumes, network) when the value is dropped, also when a test fails.
//!
//! Each node gets a fixed address on the network (`<subnet>.1N` for node N) so that its address
//! survives restarts, disconnects and a wiped volume; the nodes advertise these addresses, so the
//! test process (on the host, which routes to the bridge) reaches every node directly, exactly as
//! the nodes reach each other. Nothing is published on the host's ports.
//!
//! The nodes run secure, as the deploy files run them: TLS on their listener (certificates made for
//! the cluster by [`crate::tls::node_certificates`], mounted read-only) and authorization on with
//! the harness's principal as the super-user; every client the harness makes presents its
//! certificate ([`crate::tls`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shale_client::proto::admin_client::AdminClient;
use shale_client::{Client, proto};
use tokio::time::Instant;

use crate::docker::{self, RunSpec, docker, docker_blocking};
use crate::error::HarnessError;
use crate::http;
use crate::image;
use crate::tls;
use crate::workload::{node_channel, test_client_config};

/// gRPC port inside the containers.
pub const GRPC_PORT: u16 = 7001;
/// HTTP port inside the containers.
pub const HTTP_PORT: u16 = 8001;
/// Label on everything the harness creates (value: the cluster name).
pub const LABEL: &str = "io.shale.test";
/// Bound on a node becoming ready after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// One node container.
#[derive(Debug, Clone)]
pub struct NodeContainer {
    /// Node id (1-based).
    pub id: u64,
    /// Container name.
    pub container: String,
    /// Its named volume (mounted on /data).
    pub volume: String,
    /// Its fixed address on the cluster network.
    pub ip: String,
}

impl NodeContainer {
    /// `ip:7001`.
    pub fn grpc_addr(&self) -> String {
        format!("{}:{GRPC_PORT}", self.ip)
    }

    /// `ip:8001`.
    pub fn http_addr(&self) -> String {
        format!("{}:{HTTP_PORT}", self.ip)
    }
}

/// How a cluster's nodes differ from the defaults.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra environment for every node (e.g. `SHALE_SNAPSHOT_EVERY_ENTRIES`).
    pub env: Vec<(String, String)>,
    /// Nodes whose `/data` is a size-limited volume of this many MiB (a `tmpfs` volume, kept
    /// mounted across the node's restarts by a holder container), so a test can fill it with
    /// [`ContainerCluster::fill_disk`].
    pub small_volumes_mib: BTreeMap<u64, u64>,
}

/// The file [`ContainerCluster::fill_disk`] writes into a node's `/data`.
pub const FILLER: &str = "shale-test-filler";

/// A running cluster of containers; see the module docs.
#[derive(Debug)]
pub struct ContainerCluster {
    name: String,
    network: String,
    image: String,
    nodes: Vec<NodeContainer>,
    peers: String,
    extra_env: Vec<(String, String)>,
    /// Node id -> (holder container, volume size in MiB) of the size-limited volumes.
    holders: BTreeMap<u64, (String, u64)>,
    /// The nodes' certificates (host directory, mounted on [`tls::CONTAINER_TLS_DIR`]).
    tls_dir: std::path::PathBuf,
    /// Containers running the `shale` CLI ([`ContainerCluster::run_cli`]), removed with the cluster.
    cli_containers: std::sync::Mutex<Vec<String>>,
}

impl ContainerCluster {
    /// Builds the image if needed, creates a network and starts `size` nodes, then waits until
    /// every node reports ready (the metadata group has a leader).
    pub async fn start(size: u64) -> Result<Self, HarnessError> {
        Self::start_with_env(size, Vec::new()).await
    }

    /// As [`ContainerCluster::start`], with extra environment for every node.
    pub async fn start_with_env(size: u64, extra_env: Vec<(String, String)>) -> Result<Self, HarnessError> {
        Self::start_with(size, ClusterOptions { env: extra_env, ..ClusterOptions::default() }).await
    }

    /// As [`ContainerCluster::start`], with [`ClusterOptions`].
    pub async fn start_with(size: u64, options: ClusterOptions) -> Result<Self, HarnessError> {
        let ClusterOptions { env: extra_env, small_volumes_mib } = options;
        crate::record_panics();
        if size == 0 || size > 9 {
            return Err(HarnessError::Usage(format!("cluster size {size} is not in 1..=9")));
        }
        let image = image::ensure_image().await?;
        remove_orphans().await;
        let seq = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("shale-t{}-{seq}", std::process::id());
        let (network, prefix) = create_network(&name).await?;
        let nodes: Vec<NodeContainer> = (1..=size)
            .map(|id| NodeContainer {
                id,
                container: format!("{name}-node-{id}"),
                volume: format!("{name}-data-{id}"),
                ip: format!("{prefix}.{}", 10 + id),
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.grpc_addr())).collect::<Vec<_>>().join(",");
        let addresses: Vec<(u64, String)> = nodes.iter().map(|n| (n.id, n.ip.clone())).collect();
        let tls_dir = tls::node_certificates(&name, &addresses)?;
        let mut cluster = Self {
            name,
            network,
            image,
            nodes,
            peers,
            extra_env,
            holders: BTreeMap::new(),
            tls_dir,
            cli_containers: std::sync::Mutex::new(Vec::new()),
        };
        tracing::info!(cluster = %cluster.name, peers = %cluster.peers, "starting a container cluster");
        for (id, mib) in small_volumes_mib {
            cluster.create_small_volume(id, mib).await?;
        }
        for id in 1..=size {
            cluster.run_node(id).await?;
        }
        if let Err(e) = cluster.wait_all_ready(READY_TIMEOUT).await {
            cluster.dump_logs(60);
            return Err(e);
        }
        Ok(cluster)
    }

    /// The cluster's name (prefix of every container, volume and the network).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image the nodes run.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeContainer] {
        &self.nodes
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// One node.
    pub fn node(&self, id: u64) -> Result<&NodeContainer, HarnessError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| HarnessError::Usage(format!("no node {id} in {}", self.name)))
    }

    /// Every node's gRPC address, by id.
    pub fn grpc_addrs(&self) -> BTreeMap<u64, String> {
        self.nodes.iter().map(|n| (n.id, n.grpc_addr())).collect()
    }

    /// Every node's gRPC address, as a client bootstrap list.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(NodeContainer::grpc_addr).collect()
    }

    /// The host directory holding the nodes' certificates.
    pub fn tls_dir(&self) -> &std::path::Path {
        &self.tls_dir
    }

    /// A client for the whole cluster (test settings: retries cover an election; the harness's
    /// client certificate).
    pub fn client(&self) -> Result<Client, HarnessError> {
        Client::new(test_client_config(self.endpoints())).map_err(HarnessError::client("creating a client"))
    }

    fn spec(&self, node: &NodeContainer) -> RunSpec {
        let mut env = vec![
            ("SHALE_NODE_ID".to_string(), node.id.to_string()),
            ("SHALE_PEERS".to_string(), self.peers.clone()),
            ("SHALE_GRPC_LISTEN".to_string(), format!("0.0.0.0:{GRPC_PORT}")),
            ("SHALE_GRPC_ADVERTISE".to_string(), node.grpc_addr()),
            ("SHALE_HTTP_LISTEN".to_string(), format!("0.0.0.0:{HTTP_PORT}")),
            ("SHALE_DATA_DIR".to_string(), "/data".to_string()),
            (
                "RUST_LOG".to_string(),
                std::env::var("SHALE_TEST_NODE_LOG").unwrap_or_else(|_| crate::NODE_LOG_FILTER.to_string()),
            ),
        ];
        env.extend(tls::node_env(node.id));
        env.extend(self.extra_env.iter().cloned());
        let certificates = format!("{}:{}:ro", self.tls_dir.display(), tls::CONTAINER_TLS_DIR);
        RunSpec {
            name: node.container.clone(),
            image: self.image.clone(),
            hostname: Some(format!("node-{}", node.id)),
            network: Some(self.network.clone()),
            ip: Some(node.ip.clone()),
            aliases: vec![format!("node-{}", node.id)],
            env,
            volumes: vec![(node.volume.clone(), "/data".to_string())],
            // No published ports: the test reaches the nodes over the bridge. (A random loopback port
            // can be one that a stale in-process node elsewhere on the machine still sends Raft
            // traffic to; that happened, and a foreign node's votes reached these containers.)
            publish_loopback: Vec::new(),
            labels: vec![(LABEL.to_string(), self.name.clone())],
            options: vec!["-v".to_string(), certificates],
            args: Vec::new(),
        }
    }

    /// Creates node `id`'s volume as a `tmpfs` of `mib` MiB owned by the image's user, and starts a
    /// holder container that keeps it mounted (a tmpfs volume is emptied when no container has it
    /// mounted, so without one a restart of the node would wipe it). The holder runs the image's
    /// single-node dev mode in memory, on no network.
    async fn create_small_volume(&mut self, id: u64, mib: u64) -> Result<(), HarnessError> {
        let node = self.node(id)?.clone();
        docker(&[
            "volume",
            "create",
            "--driver",
            "local",
            "--opt",
            "type=tmpfs",
            "--opt",
            "device=tmpfs",
            "--opt",
            &format!("o=size={mib}m,uid=10001,gid=10001,mode=0755"),
            "--label",
            &format!("{LABEL}={}", self.name),
            &node.volume,
        ])
        .await?;
        let holder = format!("{}-holder-{id}", self.name);
        let spec = RunSpec {
            name: holder.clone(),
            image: self.image.clone(),
            network: Some("none".to_string()),
            env: vec![("RUST_LOG".to_string(), "error".to_string())],
            volumes: vec![(node.volume.clone(), "/data".to_string())],
            labels: vec![(LABEL.to_string(), self.name.clone())],
            args: vec!["dev".into(), "--memory".into(), "--nodes".into(), "1".into()],
            ..RunSpec::default()
        };
        docker::run(&spec).await?;
        self.holders.insert(id, (holder, mib));
        Ok(())
    }

    fn holder(&self, id: u64) -> Result<&(String, u64), HarnessError> {
        self.holders.get(&id).ok_or_else(|| {
            HarnessError::Usage(format!("node {id} of {} has no size-limited volume (ClusterOptions)", self.name))
        })
    }

    /// Fills node `id`'s size-limited volume: copies a file larger than the volume into its `/data`
    /// (as [`FILLER`]); the copy stops at "no space left on device" and leaves the volume full.
    pub async fn fill_disk(&self, id: u64) -> Result<(), HarnessError> {
        let (holder, mib) = self.holder(id)?.clone();
        let dir = crate::paths::target_dir().join("shale-tests").join(format!("filler-{}", std::process::id()));
        let file = dir.join(FILLER);
        let bytes = (mib + 1) << 20;
        let io = |action| {
            let file = file.clone();
            move |source| HarnessError::Io { action, path: file, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating the directory of"))?;
        let f = std::fs::File::create(&file).map_err(io("creating"))?;
        // Real zeros (not a sparse file): the copy must write every byte.
        std::io::Write::write_all(&mut std::io::BufWriter::new(f), &vec![0u8; bytes as usize])
            .map_err(io("writing"))?;
        tracing::info!(node = id, mib, "filling the data volume");
        let result = docker(&["cp", &file.to_string_lossy(), &format!("{holder}:/data/{FILLER}")]).await;
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Err(HarnessError::Command { stderr, .. }) if stderr.contains("no space left on device") => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(HarnessError::Usage(format!("a {mib} MiB volume took {bytes} bytes without filling up"))),
        }
    }

    /// Copies node `id`'s data directory `/data/{dir}` out of its container (running or stopped)
    /// into `local` (which must not exist yet).
    pub async fn copy_out(&self, id: u64, dir: &str, local: &std::path::Path) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        docker(&["cp", &format!("{}:/data/{dir}", node.container), &local.to_string_lossy()]).await.map(drop)
    }

    /// The Raft log streams of partitions in node `id`'s data dir (copied out of its container),
    /// each as (stream directory, its segment files in order with their lengths); the stream with
    /// the most segments first. Stream 0 is the metadata log and odd streams hold Raft metadata, so
    /// these are the even streams above 0.
    pub async fn partition_logs(&self, id: u64) -> Result<Vec<(String, Vec<(String, u64)>)>, HarnessError> {
        let local = crate::paths::target_dir().join("shale-tests").join(format!("data-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&local);
        self.copy_out(id, ".", &local).await?;
        let io = |action, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| HarnessError::Io { action, path, source }
        };
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(&local).map_err(io("listing", &local))?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(stream) = name.parse::<u64>() else { continue };
            if stream == 0 || stream % 2 == 1 {
                continue;
            }
            let mut segments = Vec::new();
            for f in std::fs::read_dir(entry.path()).map_err(io("listing", &entry.path()))?.flatten() {
                let n = f.file_name().to_string_lossy().to_string();
                if n.starts_with("segment_") && n.ends_with(".log") {
                    segments.push((n, f.metadata().map_err(io("reading the size of", &f.path()))?.len()));
                }
            }
            segments.sort();
            logs.push((name, segments));
        }
        let _ = std::fs::remove_dir_all(&local);
        logs.sort_by_key(|(_, segments)| std::cmp::Reverse(segments.len()));
        Ok(logs)
    }

    /// Flips bit 0 of the byte at `position` of node `id`'s file `/data/{path}` (the node should be
    /// stopped: a running node keeps reading the file it opened). The file is copied out, changed
    /// and copied back in (the copy is owned by root inside the container, so it is made readable
    /// and writable by all: the node's user must still open it read-write); answers the byte's old
    /// value.
    pub async fn flip_byte(&self, id: u64, path: &str, position: u64) -> Result<u8, HarnessError> {
        let node = self.node(id)?;
        let dir = crate::paths::target_dir().join("shale-tests").join(format!("flip-{}-{id}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        let local = dir.join("file");
        let remote = format!("{}:/data/{path}", node.container);
        docker(&["cp", &remote, &local.to_string_lossy()]).await?;
        let io = |action| {
            let local = local.clone();
            move |source| HarnessError::Io { action, path: local, source }
        };
        let mut bytes = std::fs::read(&local).map_err(io("reading"))?;
        let at = usize::try_from(position).ok().filter(|p| *p < bytes.len()).ok_or_else(|| {
            HarnessError::Usage(format!("{path} of node {id} has {} bytes, no byte {position}", bytes.len()))
        })?;
        let old = bytes[at];
        bytes[at] ^= 1;
        std::fs::write(&local, &bytes).map_err(io("writing"))?;
        let all_rw = std::os::unix::fs::PermissionsExt::from_mode(0o666);
        std::fs::set_permissions(&local, all_rw).map_err(io("setting the permissions of"))?;
        docker(&["cp", &local.to_string_lossy(), &remote]).await?;
        let _ = std::fs::remove_dir_all(&dir);
        tracing::info!(node = id, path, position, "flipped a bit");
        Ok(old)
    }

    /// Gives the space [`ContainerCluster::fill_disk`] took back (the filler is replaced by an
    /// empty file: the image has no shell to delete it with).
    pub async fn free_disk(&self, id: u64) -> Result<(), HarnessError> {
        let (holder, _) = self.holder(id)?.clone();
        let dir = crate::paths::target_dir().join("shale-tests").join(format!("empty-{}", std::process::id()));
        let file = dir.join(FILLER);
        std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, b"")).map_err(|source| HarnessError::Io {
            action: "creating",
            path: file.clone(),
            source,
        })?;
        tracing::info!(node = id, "freeing the data volume");
        let result = docker(&["cp", &file.to_string_lossy(), &format!("{holder}:/data/{FILLER}")]).await;
        let _ = std::fs::remove_dir_all(&dir);
        result.map(drop)
    }

    async fn run_node(&self, id: u64) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        docker::run(&self.spec(node)).await?;
        Ok(())
    }

    /// `GET /readyz` on a node answers 200.
    pub async fn is_ready(&self, id: u64) -> Result<bool, HarnessError> {
        let addr = self.node(id)?.http_addr();
        Ok(matches!(http::get(&addr, "/readyz", Duration::from_secs(2)).await, Ok(r) if r.status == 200))
    }

    /// Waits until a node's `/readyz` answers 200.
    pub async fn wait_ready(&self, id: u64, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready(id).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let state =
                    docker::inspect(&self.node(id)?.container, "{{.State.Status}} exit={{.State.ExitCode}}").await;
                return Err(HarnessError::Timeout {
                    what: format!("node {id} of {} to be ready (container: {state:?})", self.name),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every node is ready.
    pub async fn wait_all_ready(&self, timeout: Duration) -> Result<(), HarnessError> {
        for id in self.ids() {
            self.wait_ready(id, timeout).await?;
        }
        Ok(())
    }

    /// `docker kill` (SIGKILL): the node dies with no chance to flush or say goodbye.
    pub async fn kill(&self, id: u64) -> Result<(), HarnessError> {
        tracing::info!(node = id, "SIGKILL");
        docker(&["kill", "--signal", "KILL", &self.node(id)?.container]).await.map(drop)
    }

    /// `docker stop` (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop(&self, id: u64, grace: Duration) -> Result<(), HarnessError> {
        tracing::info!(node = id, "SIGTERM (docker stop)");
        docker(&["stop", "--time", &grace.as_secs().max(1).to_string(), &self.node(id)?.container]).await.map(drop)
    }

    /// `docker restart` (SIGTERM, then SIGKILL after `grace`, then start again).
    pub async fn restart(&self, id: u64, grace: Duration) -> Result<(), HarnessError> {
        tracing::info!(node = id, "restart (docker restart)");
        docker(&["restart", "--time", &grace.as_secs().max(1).to_string(), &self.node(id)?.container]).await.map(drop)
    }

    /// `docker pause`: every process of the node is frozen (cgroup freezer); its connections stay open.
    pub async fn pause(&self, id: u64) -> Result<(), HarnessError> {
        tracing::info!(node = id, "pause");
        docker(&["pause", &self.node(id)?.container]).await.map(drop)
    }

    /// `docker unpause`.
    pub async fn unpause(&self, id: u64) -> Result<(), HarnessError> {
        tracing::info!(node = id, "unpause");
        docker(&["unpause", &self.node(id)?.container]).await.map(drop)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the node's process.
    pub async fn signal(&self, id: u64, signal: &str) -> Result<(), HarnessError> {
        tracing::info!(node = id, signal, "signal");
        docker(&["kill", "--signal", signal, &self.node(id)?.container]).await.map(drop)
    }

    /// The node's whole log (stdout and stderr).
    pub async fn logs(&self, id: u64) -> Result<String, HarnessError> {
        let container = self.node(id)?.container.clone();
        let (_, out) = docker::run_capture("docker", &["logs", &container], Duration::from_secs(60)).await?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// Whether the node's container is running.
    pub async fn is_running(&self, id: u64) -> Result<bool, HarnessError> {
        Ok(docker::inspect(&self.node(id)?.container, "{{.State.Running}}").await? == "true")
    }

    /// The exit code of a stopped node's container.
    pub async fn exit_code(&self, id: u64) -> Result<i64, HarnessError> {
        let out = docker::inspect(&self.node(id)?.container, "{{.State.ExitCode}}").await?;
        out.parse().map_err(|_| HarnessError::Parse { what: format!("exit code of node {id}"), detail: out })
    }

    /// Waits until the node's container has stopped.
    pub async fn wait_stopped(&self, id: u64, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while self.is_running(id).await? {
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout { what: format!("node {id} to stop"), timeout });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Runs a command inside a node's container; answers its exit code and output.
    pub async fn exec(&self, id: u64, command: &[&str]) -> Result<(Option<i32>, docker::Output), HarnessError> {
        let container = self.node(id)?.container.clone();
        let mut args = vec!["exec", container.as_str()];
        args.extend(command);
        docker::run_capture("docker", &args, Duration::from_secs(60)).await
    }

    /// `docker start` of a stopped or killed node (same volume, same address).
    pub async fn start_node(&self, id: u64) -> Result<(), HarnessError> {
        tracing::info!(node = id, "start");
        docker(&["start", &self.node(id)?.container]).await.map(drop)
    }

    /// Starts a container `<cluster>-<name>` of the image on the cluster's network (its own
    /// address, no node's) running the `shale` CLI with `args`, bootstrapped with every node, as the
    /// harness's super-user (its client certificate and the CA mounted read-only). It is removed
    /// with the cluster. Answers the container's name; its output is [`ContainerCluster::cli_output`].
    pub async fn run_cli(&self, name: &str, args: &[&str]) -> Result<String, HarnessError> {
        let container = format!("{}-{name}", self.name);
        let dir = self.tls_dir.join(format!("cli-{name}"));
        let io = |action, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| HarnessError::Io { action, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let credentials = tls::credentials();
        for (file, bytes) in
            [("ca.pem", &credentials.ca), ("client.pem", &credentials.cert), ("client.key", &credentials.key)]
        {
            std::fs::write(dir.join(file), bytes).map_err(io("writing", &dir.join(file)))?;
        }
        use std::os::unix::fs::PermissionsExt;
        // The container runs as the image's user, not as the files' owner (a test key).
        for e in std::fs::read_dir(&dir).map_err(io("listing", &dir))?.flatten() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(io("making readable", &e.path()))?;
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io("opening", &dir))?;
        let mount = "/etc/shale/cli";
        let bootstrap = self.endpoints().join(",");
        let mut command = vec![
            "--bootstrap".to_string(),
            bootstrap,
            "--tls-ca".to_string(),
            format!("{mount}/ca.pem"),
            "--tls-cert".to_string(),
            format!("{mount}/client.pem"),
            "--tls-key".to_string(),
            format!("{mount}/client.key"),
        ];
        command.extend(args.iter().map(|a| a.to_string()));
        let spec = RunSpec {
            name: container.clone(),
            image: self.image.clone(),
            network: Some(self.network.clone()),
            env: vec![("RUST_LOG".to_string(), "warn".to_string())],
            labels: vec![(LABEL.to_string(), self.name.clone())],
            options: vec![
                "-v".to_string(),
                format!("{}:{mount}:ro", dir.display()),
                "--entrypoint".to_string(),
                "/usr/local/bin/shale".to_string(),
            ],
            args: command,
            ..RunSpec::default()
        };
        self.cli_containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(container.clone());
        docker::run(&spec).await?;
        Ok(container)
    }

    /// A [`ContainerCluster::run_cli`] container's whole output: (stdout, stderr).
    pub async fn cli_output(&self, container: &str) -> Result<(String, String), HarnessError> {
        let (_, out) = docker::run_capture("docker", &["logs", container], Duration::from_secs(60)).await?;
        Ok((out.stdout, out.stderr))
    }

    /// Cuts a node off the cluster network (it keeps running).
    pub async fn disconnect(&self, id: u64) -> Result<(), HarnessError> {
        tracing::info!(node = id, "network disconnect");
        docker(&["network", "disconnect", &self.network, &self.node(id)?.container]).await.map(drop)
    }

    /// Reconnects a node with its own address.
    pub async fn connect(&self, id: u64) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        tracing::info!(node = id, "network connect");
        let alias = format!("node-{id}");
        docker(&["network", "connect", "--ip", &node.ip, "--alias", &alias, &self.network, &node.container])
            .await
            .map(drop)
    }

    /// Destroys a node's container and volume (all its data) and starts it again, empty, with the
    /// same id and address: it must catch up from the others.
    pub async fn wipe_and_restart(&self, id: u64) -> Result<(), HarnessError> {
        let node = self.node(id)?;
        tracing::info!(node = id, "wipe: remove the container and its volume, start afresh");
        docker(&["rm", "--force", &node.container]).await?;
        docker(&["volume", "rm", &node.volume]).await?;
        self.run_node(id).await
    }

    /// The node's own cluster status (no forwarding).
    pub async fn status_of(&self, id: u64) -> Result<proto::ClusterStatusResponse, HarnessError> {
        let node = self.node(id)?;
        let mut admin = AdminClient::new(node_channel(&node.grpc_addr())?);
        let mut req = tonic::Request::new(proto::ClusterStatusRequest {});
        req.set_timeout(Duration::from_secs(3));
        Ok(admin
            .cluster_status(req)
            .await
            .map_err(|s| HarnessError::Client {
                what: format!("ClusterStatus at node {id}"),
                source: shale_client::ClientError::from_status(s),
            })?
            .into_inner())
    }

    /// Each partition's Raft log end (last log index) of `topic`, the highest any of `nodes`
    /// reports for its own replica; partitions no node answered for are missing. Raft entries,
    /// not record offsets: snapshot intervals count entries, and one entry holds a whole batch.
    pub async fn last_log_indexes(&self, topic: &str, nodes: &[u64]) -> BTreeMap<u32, u64> {
        let mut last = BTreeMap::new();
        for id in nodes {
            if let Ok(s) = self.status_of(*id).await {
                for g in s.partitions.iter().filter(|g| g.topic == topic) {
                    let e = last.entry(g.partition).or_insert(0);
                    *e = (*e).max(g.last_log_index);
                }
            }
        }
        last
    }

    /// Waits until every partition `0..partitions` of `topic`, as [`Self::last_log_indexes`] of
    /// `nodes` reports it, is at least `by` Raft entries past `from`; answers the new ends.
    pub async fn wait_groups_past(
        &self,
        topic: &str,
        partitions: u32,
        nodes: &[u64],
        from: &BTreeMap<u32, u64>,
        by: u64,
        timeout: Duration,
    ) -> Result<BTreeMap<u32, u64>, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.last_log_indexes(topic, nodes).await;
            let behind: Vec<u32> = (0..partitions)
                .filter(|p| now.get(p).copied().unwrap_or(0) < from.get(p).copied().unwrap_or(0) + by)
                .collect();
            if behind.is_empty() {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "every Raft group of {topic} {by} entries past {from:?} on {nodes:?} (now {now:?}, behind: {behind:?})"
                    ),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The node among `candidates` that itself reports leading the metadata group.
    pub async fn metadata_leader(&self, candidates: &[u64]) -> Option<u64> {
        for id in candidates {
            if let Ok(s) = self.status_of(*id).await
                && s.meta.as_ref().is_some_and(|m| m.leader_id == *id)
            {
                return Some(*id);
            }
        }
        None
    }

    /// The node among `candidates` that itself reports leading a partition.
    pub async fn partition_leader(&self, topic: &str, partition: u32, candidates: &[u64]) -> Option<u64> {
        for id in candidates {
            if let Ok(s) = self.status_of(*id).await
                && s.partitions.iter().any(|g| g.topic == topic && g.partition == partition && g.leader_id == *id)
            {
                return Some(*id);
            }
        }
        None
    }

    /// Waits until some node among `candidates` leads the metadata group.
    pub async fn wait_metadata_leader(&self, candidates: &[u64], timeout: Duration) -> Result<u64, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.metadata_leader(candidates).await {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout { what: format!("a metadata leader among {candidates:?}"), timeout });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until some node among `candidates` leads the partition.
    pub async fn wait_partition_leader(
        &self,
        topic: &str,
        partition: u32,
        candidates: &[u64],
        timeout: Duration,
    ) -> Result<u64, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(id) = self.partition_leader(topic, partition, candidates).await {
                return Ok(id);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("a leader of {topic}/{partition} among {candidates:?}"),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Prints the tail of every node's log to stderr and saves the whole logs under
    /// `<target>/shale-tests/logs/<cluster>/` (called on failure).
    pub fn dump_logs(&self, lines: u32) {
        let dir = crate::paths::target_dir().join("shale-tests").join("logs").join(&self.name);
        let _ = std::fs::create_dir_all(&dir);
        for n in &self.nodes {
            eprintln!("===== {} (node {}) last {lines} log lines =====", n.container, n.id);
            eprintln!("{}", docker::logs_tail_blocking(&n.container, lines));
            let full = docker::logs_tail_blocking(&n.container, u32::MAX);
            let path = dir.join(format!("node-{}.log", n.id));
            if std::fs::write(&path, full).is_ok() {
                eprintln!("===== whole log of node {}: {}", n.id, path.display());
            }
        }
        for c in self.cli_containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            let full = docker::logs_tail_blocking(c, u32::MAX);
            let path = dir.join(format!("{c}.log"));
            if std::fs::write(&path, full).is_ok() {
                eprintln!("===== whole output of {c}: {}", path.display());
            }
        }
    }
}

impl Drop for ContainerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var("SHALE_TEST_DUMP_LOGS").is_ok_and(|v| v == "1") {
            self.dump_logs(40);
        }
        if std::thread::panicking() {
            // Repeated after the logs: the output's tail is what a CI summary shows.
            let failure = crate::last_panic().unwrap_or_else(|| "(no panic recorded)".to_string());
            eprintln!("===== {} failed: {failure}", self.name);
        }
        if std::env::var("SHALE_TEST_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("SHALE_TEST_KEEP=1: leaving {} (containers, volumes, network) in place", self.name);
            return;
        }
        let cli = self.cli_containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut containers: Vec<&str> = self.nodes.iter().map(|n| n.container.as_str()).collect();
        containers.extend(self.holders.values().map(|(h, _)| h.as_str()));
        containers.extend(cli.iter().map(String::as_str));
        let mut args = vec!["rm", "--force", "--volumes"];
        args.extend(&containers);
        if let Err(e) = docker_blocking(&args) {
            eprintln!("cleanup of {}: {e}", self.name);
        }
        for n in &self.nodes {
            // Named volumes are not removed by `rm --volumes`; a wiped node's volume may be gone.
            let _ = docker_blocking(&["volume", "rm", "--force", &n.volume]);
        }
        let _ = std::fs::remove_dir_all(&self.tls_dir);
        if let Err(e) = docker_blocking(&["network", "rm", &self.network]) {
            eprintln!("cleanup of {}: {e}", self.name);
        }
    }
}

/// Creates the cluster's network with a /24 subnet of its own (fixed container addresses need a
/// configured subnet); tries other subnets when one is taken. Answers (network, "a.b.c").
async fn create_network(name: &str) -> Result<(String, String), HarnessError> {
    let network = format!("{name}-net");
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut last_err = None;
    for attempt in 0..16u64 {
        let n = seed.wrapping_add(attempt.wrapping_mul(7_919)) % (56 * 256);
        let prefix = format!("10.{}.{}", 200 + n / 256, n % 256);
        let subnet = format!("{prefix}.0/24");
        match docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            &subnet,
            "--label",
            &format!("{LABEL}={name}"),
            &network,
        ])
        .await
        {
            Ok(_) => return Ok((network, prefix)),
            Err(e) => {
                tracing::debug!(%subnet, error = %e, "subnet taken, trying another");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| HarnessError::Usage("no subnet attempt was made".into())))
}

/// Removes what earlier test processes left behind when they were killed before their drop ran
/// (a test timeout): every container, volume and network of a cluster whose process is gone.
/// Clusters of live processes (tests running in parallel) are left alone.
pub async fn remove_orphans() {
    let Ok(listing) =
        docker(&["ps", "-a", "--filter", &format!("label={LABEL}"), "--format", "{{.Label \"io.shale.test\"}}"]).await
    else {
        return;
    };
    let networks = docker(&["network", "ls", "--filter", &format!("label={LABEL}"), "--format", "{{.Name}}"])
        .await
        .unwrap_or_default();
    let mut clusters: Vec<String> = listing.lines().map(str::to_string).collect();
    clusters.extend(networks.lines().filter_map(|n| n.strip_suffix("-net")).map(str::to_string));
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        let Some(pid) = owner_pid(&cluster) else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!(%cluster, pid, "removing the leftovers of a test process that is gone");
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}={cluster}")]).await {
            for id in ids.lines() {
                let _ = docker(&["rm", "--force", id]).await;
            }
        }
        if let Ok(vols) = docker(&["volume", "ls", "-q", "--filter", &format!("name={cluster}-data-")]).await {
            for v in vols.lines() {
                let _ = docker(&["volume", "rm", "--force", v]).await;
            }
        }
        let _ = docker(&["network", "rm", &format!("{cluster}-net")]).await;
    }
}

/// The process id in a cluster name `shale-t<pid>-<seq>`.
fn owner_pid(cluster: &str) -> Option<u32> {
    cluster.strip_prefix("shale-t")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_carry_their_owner_process() {
        assert_eq!(owner_pid("shale-t4242-3"), Some(4242));
        assert_eq!(owner_pid("shale-compose-1"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
