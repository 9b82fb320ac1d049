//! `deploy/docker-compose.yml` driven by whichever Compose is installed: `docker-compose` (v1) or the
//! `docker compose` plugin (v2). A [`ComposeProject`] runs under a unique project name with its own
//! loopback ports and is taken down with its volumes when dropped.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::docker::{self, run_program};
use crate::error::HarnessError;
use crate::paths;

/// Bound on `up` / `down`.
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(180);

/// A Compose command line prefix: program and leading arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeCommand {
    /// `docker-compose` or `docker`.
    pub program: String,
    /// `[]` or `["compose"]`.
    pub prefix: Vec<String>,
}

impl ComposeCommand {
    /// Every Compose installed here, v1 first.
    pub async fn installed() -> Vec<ComposeCommand> {
        let mut found = Vec::new();
        if run_program("docker-compose", &["version"], Duration::from_secs(30)).await.is_ok() {
            found.push(ComposeCommand { program: "docker-compose".into(), prefix: Vec::new() });
        }
        if run_program("docker", &["compose", "version"], Duration::from_secs(30)).await.is_ok() {
            found.push(ComposeCommand { program: "docker".into(), prefix: vec!["compose".into()] });
        }
        found
    }

    /// Runs `<compose> -f deploy/docker-compose.yml [-p project] args...` with extra environment.
    pub async fn run(
        &self,
        project: Option<&str>,
        env: &[(String, String)],
        args: &[&str],
        timeout: Duration,
    ) -> Result<docker::Output, HarnessError> {
        let file = paths::deploy_dir().join("docker-compose.yml");
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.prefix).arg("-f").arg(&file);
        if let Some(p) = project {
            cmd.args(["-p", p]);
        }
        cmd.args(args).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let rendered = format!("{} {} -f {} {}", self.program, self.prefix.join(" "), file.display(), args.join(" "));
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| HarnessError::CommandTimeout { command: rendered.clone(), timeout })?
            .map_err(|source| HarnessError::Spawn { program: self.program.clone(), source })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            Ok(docker::Output { stdout, stderr })
        } else {
            Err(HarnessError::Command {
                command: rendered,
                status: out.status.to_string(),
                stderr: stderr.trim().into(),
            })
        }
    }
}

/// A free loopback TCP port (bound and released; good enough for a test that binds it at once).
pub fn free_loopback_port() -> Result<u16, HarnessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| HarnessError::Io {
        action: "binding",
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr().map(|a| a.port()).map_err(|source| HarnessError::Io {
        action: "reading the address of",
        path: "127.0.0.1:0".into(),
        source,
    })
}

/// A running Compose project, taken down (with volumes) on drop.
#[derive(Debug)]
pub struct ComposeProject {
    compose: ComposeCommand,
    name: String,
    env: Vec<(String, String)>,
    /// Published loopback ports: node id -> (gRPC, HTTP).
    pub ports: BTreeMap<u64, (u16, u16)>,
}

impl ComposeProject {
    /// `up -d` of deploy/docker-compose.yml with `image`, on free loopback ports.
    pub async fn up(compose: ComposeCommand, image: &str) -> Result<Self, HarnessError> {
        let name = format!("shale-compose-{}", std::process::id());
        let mut env = vec![("SHALE_IMAGE".to_string(), image.to_string())];
        let mut ports = BTreeMap::new();
        for id in 1..=3u64 {
            let (grpc, http) = (free_loopback_port()?, free_loopback_port()?);
            env.push((format!("SHALE_NODE{id}_GRPC_PORT"), grpc.to_string()));
            env.push((format!("SHALE_NODE{id}_HTTP_PORT"), http.to_string()));
            ports.insert(id, (grpc, http));
        }
        let project = Self { compose, name, env, ports };
        project.compose.run(Some(&project.name), &project.env, &["up", "-d"], COMPOSE_TIMEOUT).await?;
        Ok(project)
    }

    /// The project name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container of a service.
    pub async fn container(&self, service: &str) -> Result<String, HarnessError> {
        let out = self.compose.run(Some(&self.name), &self.env, &["ps", "-q", service], COMPOSE_TIMEOUT).await?;
        out.stdout
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| HarnessError::Parse { what: format!("compose ps -q {service}"), detail: out.stdout.clone() })
    }

    /// The client credentials the `certs` job made (the CA and the super-user's certificate),
    /// copied out of its container into `dir` as deploy/README.md shows (`docker cp`).
    pub async fn client_credentials(&self, dir: &std::path::Path) -> Result<crate::tls::Credentials, HarnessError> {
        let container = self.container("certs").await?;
        let principal = crate::tls::SUPER_USER;
        for file in ["ca.pem".to_string(), format!("client-{principal}.pem"), format!("client-{principal}.key")] {
            let to = dir.join(&file);
            docker::docker(&["cp", &format!("{container}:/data/{file}"), &to.to_string_lossy()]).await?;
        }
        crate::tls::Credentials::load(dir, principal)
    }

    /// Waits until Docker reports every service's container `healthy` (the image's healthcheck).
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        for service in ["node-1", "node-2", "node-3"] {
            let container = self.container(service).await?;
            loop {
                let health = docker::inspect(&container, "{{if .State.Health}}{{.State.Health.Status}}{{end}}").await?;
                if health == "healthy" {
                    break;
                }
                if Instant::now() >= deadline {
                    let log = docker::inspect(&container, "{{json .State.Health}}").await.unwrap_or_default();
                    return Err(HarnessError::Timeout {
                        what: format!("{service} to be healthy (health: {log})"),
                        timeout,
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Service logs (tail), for failure reports.
    pub fn logs_blocking(&self) -> String {
        let file = paths::deploy_dir().join("docker-compose.yml");
        let mut args: Vec<String> = self.compose.prefix.clone();
        args.extend(["-f".into(), file.to_string_lossy().into_owned(), "-p".into(), self.name.clone()]);
        args.extend(["logs".into(), "--no-color".into(), "--tail".into(), "40".into()]);
        match std::process::Command::new(&self.compose.program).args(&args).envs(self.env.iter().cloned()).output() {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => format!("(no logs: {e})"),
        }
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== compose project {} logs =====\n{}", self.name, self.logs_blocking());
        }
        let file = paths::deploy_dir().join("docker-compose.yml");
        let mut args: Vec<String> = self.compose.prefix.clone();
        args.extend(["-f".into(), file.to_string_lossy().into_owned(), "-p".into(), self.name.clone()]);
        args.extend(["down".into(), "--volumes".into(), "--timeout".into(), "10".into()]);
        let result = std::process::Command::new(&self.compose.program)
            .args(&args)
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .output();
        match result {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("compose down {}: {}", self.name, String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("compose down {}: {e}", self.name),
        }
    }
}

/// The healthcheck command of deploy/docker-compose.yml's nodes (without the leading `CMD`).
pub fn healthcheck_command() -> Result<Vec<String>, HarnessError> {
    let file = paths::deploy_dir().join("docker-compose.yml");
    let text = std::fs::read_to_string(&file).map_err(|source| HarnessError::Io {
        action: "reading",
        path: file.clone(),
        source,
    })?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| HarnessError::Parse { what: file.display().to_string(), detail: e.to_string() })?;
    let test = doc["x-shale-node"]["healthcheck"]["test"].as_sequence().ok_or_else(|| HarnessError::Parse {
        what: file.display().to_string(),
        detail: "no x-shale-node.healthcheck.test list".into(),
    })?;
    let mut command: Vec<String> = test.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    if command.first().map(String::as_str) == Some("CMD") {
        command.remove(0);
    }
    Ok(command)
}
