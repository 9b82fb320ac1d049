//! TLS and authorization for the container tests: the clusters run as Compose and Kubernetes do
//! (docs/security.md), with TLS on every listener and authorization on (deny by default, the
//! super-user [`SUPER_USER`]), and every client of the harness (the workload's producers, the
//! replica readers, the checkers' status and verify calls) presents the super-user's client
//! certificate.
//!
//! One CA per test process (nextest runs each test in a process of its own), made by the `shale`
//! CLI this run built (`shale cert init-ca`, `shale cert client`, `shale cert node`: the tool the
//! deploy files use), under `<target>/shale-tests/tls/<pid>/`. A test against certificates made
//! elsewhere (the Compose `certs` job, the Kubernetes script) installs those with
//! [`use_credentials`] before its first client.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use shale_client::ClientConfig;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::HarnessError;
use crate::paths;

/// The principal the harness acts as; every cluster names it in `SHALE_SUPER_USERS`.
pub const SUPER_USER: &str = "admin";
/// Where a node container finds its certificates (mounted read-only).
pub const CONTAINER_TLS_DIR: &str = "/etc/shale/tls";

/// A client's TLS material: the cluster CA to trust and a client certificate with its key.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Where the files are (for tools that take paths).
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: Vec<u8>,
    /// The client certificate (PEM).
    pub cert: Vec<u8>,
    /// Its key (PEM).
    pub key: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, HarnessError> {
    std::fs::read(path).map_err(|source| HarnessError::Io { action: "reading", path: path.to_path_buf(), source })
}

impl Credentials {
    /// `ca.pem`, `client-<principal>.pem` and `.key` in `dir` (the layout of `shale cert`).
    pub fn load(dir: &Path, principal: &str) -> Result<Self, HarnessError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            ca: read(&dir.join("ca.pem"))?,
            cert: read(&dir.join(format!("client-{principal}.pem")))?,
            key: read(&dir.join(format!("client-{principal}.key")))?,
        })
    }

    /// tonic's TLS settings: trust the CA, present the client certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }

    /// `config` with these credentials.
    pub fn apply(&self, mut config: ClientConfig) -> ClientConfig {
        config.tls = Some(self.client_tls());
        config
    }

    /// A lazily connecting TLS channel to one node at `addr` (`host:port`); the node's certificate
    /// must name `host`.
    pub fn channel(&self, addr: &str) -> Result<Channel, HarnessError> {
        self.endpoint(addr, self.client_tls())
    }

    /// As [`Credentials::channel`], checking the node's certificate against `server_name` instead
    /// of the host in `addr` (a container reached at an address its certificate does not name).
    pub fn channel_named(&self, addr: &str, server_name: &str) -> Result<Channel, HarnessError> {
        self.endpoint(addr, self.client_tls().domain_name(server_name))
    }

    fn endpoint(&self, addr: &str, tls: ClientTlsConfig) -> Result<Channel, HarnessError> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| HarnessError::Usage(format!("bad node address {addr}: {e}")))?
            .tls_config(tls)
            .map_err(|e| HarnessError::Usage(format!("TLS settings for {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10))
            .connect_lazy())
    }
}

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// The credentials of this test process: those given to [`use_credentials`], else the harness's
/// own (its CA and a client certificate for [`SUPER_USER`], made on first use).
///
/// # Panics
/// When the harness's certificates cannot be made (the `shale` CLI is not built: start a cluster
/// first, which builds it).
pub fn credentials() -> &'static Credentials {
    CREDENTIALS.get_or_init(|| match harness_ca() {
        Ok(c) => c,
        Err(e) => panic!("making the harness's CA and client certificate: {e}"),
    })
}

/// Makes every client of this process use `credentials` (certificates a deploy file's own job
/// made). Refused once the process's credentials are in use.
pub fn use_credentials(credentials: Credentials) -> Result<(), HarnessError> {
    CREDENTIALS
        .set(credentials)
        .map_err(|_| HarnessError::Usage("this process's TLS credentials are already in use".into()))
}

/// The process's certificate directory.
fn process_dir() -> PathBuf {
    paths::target_dir().join("shale-tests").join("tls").join(std::process::id().to_string())
}

/// Runs the `shale` CLI of this run (blocking; it only writes files, in milliseconds).
fn shale_cli(args: &[&str]) -> Result<(), HarnessError> {
    let program = paths::profile_dir().join("shale");
    let rendered = format!("{} {}", program.display(), args.join(" "));
    let out = std::process::Command::new(&program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn { program: program.display().to_string(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command: rendered,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn harness_ca() -> Result<Credentials, HarnessError> {
    remove_stale_dirs();
    let dir = process_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_string_lossy().into_owned();
    shale_cli(&["cert", "init-ca", "--dir", &d, "--name", "shale test CA", "--days", "2"])?;
    shale_cli(&["cert", "client", "--dir", &d, "--principal", SUPER_USER, "--days", "2"])?;
    Credentials::load(&dir, SUPER_USER)
}

/// Removes the certificate directories of test processes that are gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(paths::target_dir().join("shale-tests").join("tls")) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{name}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Makes node certificates for a cluster with the process's CA into a directory of their own
/// (mounted read-only on [`CONTAINER_TLS_DIR`] in every node): `ca.pem` and `node-<id>.pem` /
/// `.key` for each `(id, ip)`, naming `ip`, `node-<id>`, `localhost` and `127.0.0.1` (the CLI
/// inside a container reaches its own node there). No CA key is left in it. The keys are made
/// readable by all: the containers run as the image's user, not as the files' owner (test
/// certificates, valid two days, on a test machine).
pub fn node_certificates(cluster: &str, nodes: &[(u64, String)]) -> Result<PathBuf, HarnessError> {
    credentials();
    let ca_dir = process_dir();
    let dir = ca_dir.join(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Io { action, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(ca_dir.join(f), dir.join(f)).map_err(io("copying the CA into", &dir))?;
    }
    let d = dir.to_string_lossy().into_owned();
    for (id, ip) in nodes {
        let (id, dns) = (id.to_string(), format!("node-{id}"));
        shale_cli(&[
            "cert",
            "node",
            "--dir",
            &d,
            "--id",
            &id,
            "--ip",
            ip,
            "--ip",
            "127.0.0.1",
            "--dns",
            &dns,
            "--dns",
            "localhost",
            "--days",
            "2",
        ])?;
    }
    std::fs::remove_file(dir.join("ca.key")).map_err(io("removing the CA key from", &dir))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io("opening", &dir))?;
    for e in std::fs::read_dir(&dir).map_err(io("listing", &dir))?.flatten() {
        std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io("making readable", &e.path()))?;
    }
    Ok(dir)
}

/// The environment that turns TLS and authorization on in a node container whose certificates
/// ([`node_certificates`]) are mounted on [`CONTAINER_TLS_DIR`].
pub fn node_env(id: u64) -> Vec<(String, String)> {
    vec![
        ("SHALE_TLS_CA".into(), format!("{CONTAINER_TLS_DIR}/ca.pem")),
        ("SHALE_TLS_CERT".into(), format!("{CONTAINER_TLS_DIR}/node-{id}.pem")),
        ("SHALE_TLS_KEY".into(), format!("{CONTAINER_TLS_DIR}/node-{id}.key")),
        ("SHALE_AUTH_ENABLED".into(), "true".into()),
        ("SHALE_SUPER_USERS".into(), SUPER_USER.into()),
    ]
}
