//! The `docker` CLI (the engine here speaks API 1.41; the CLI negotiates it, so no client library
//! has to). Every call is bounded in time; failures carry the command line and its stderr.

use std::process::Stdio;
use std::time::Duration;

use crate::error::HarnessError;

/// Bound on one ordinary docker command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

fn render(program: &str, args: &[&str]) -> String {
    std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// Runs `program args` (async), failing on a non-zero exit or after `timeout` (the child is killed).
pub async fn run_program(program: &str, args: &[&str], timeout: Duration) -> Result<Output, HarnessError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| HarnessError::Spawn { program: program.to_string(), source })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| HarnessError::Spawn { program: program.to_string(), source })?,
        Err(_) => return Err(HarnessError::CommandTimeout { command: render(program, args), timeout }),
    };
    finish(program, args, out)
}

/// Runs `program args` (async) and answers its exit code and output whatever the code (for tools
/// that report on stdout and signal a finding with a non-zero exit); fails only if it cannot run or
/// runs longer than `timeout`.
pub async fn run_capture(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<(Option<i32>, Output), HarnessError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| HarnessError::Spawn { program: program.to_string(), source })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| HarnessError::Spawn { program: program.to_string(), source })?,
        Err(_) => return Err(HarnessError::CommandTimeout { command: render(program, args), timeout }),
    };
    let output = Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    Ok((out.status.code(), output))
}

/// Runs `program args` (blocking; for `Drop` cleanups), failing on a non-zero exit.
pub fn run_program_blocking(program: &str, args: &[&str]) -> Result<Output, HarnessError> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Spawn { program: program.to_string(), source })?;
    finish(program, args, out)
}

fn finish(program: &str, args: &[&str], out: std::process::Output) -> Result<Output, HarnessError> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(Output { stdout, stderr })
    } else {
        Err(HarnessError::Command {
            command: render(program, args),
            status: out.status.to_string(),
            stderr: stderr.trim().to_string(),
        })
    }
}

/// `docker args...`, bounded by [`COMMAND_TIMEOUT`]; answers trimmed stdout.
pub async fn docker(args: &[&str]) -> Result<String, HarnessError> {
    Ok(run_program("docker", args, COMMAND_TIMEOUT).await?.stdout.trim().to_string())
}

/// `docker args...` blocking (for cleanups); answers trimmed stdout.
pub fn docker_blocking(args: &[&str]) -> Result<String, HarnessError> {
    Ok(run_program_blocking("docker", args)?.stdout.trim().to_string())
}

/// Whether the docker engine answers.
pub async fn engine_available() -> bool {
    docker(&["version", "--format", "{{.Server.Version}}"]).await.is_ok()
}

/// How to start one container.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Container name.
    pub name: String,
    /// Image.
    pub image: String,
    /// Host name inside the container.
    pub hostname: Option<String>,
    /// Network to attach to.
    pub network: Option<String>,
    /// Fixed address on that network (it must have a configured subnet).
    pub ip: Option<String>,
    /// Extra DNS names on the network.
    pub aliases: Vec<String>,
    /// `name=value` environment.
    pub env: Vec<(String, String)>,
    /// `volume:path` mounts.
    pub volumes: Vec<(String, String)>,
    /// Container ports to publish on a random loopback port.
    pub publish_loopback: Vec<u16>,
    /// `key=value` labels (cleanup finds leftovers by label).
    pub labels: Vec<(String, String)>,
    /// Further `docker run` options (before the image), e.g. `--read-only`.
    pub options: Vec<String>,
    /// Arguments after the image (the entrypoint's arguments).
    pub args: Vec<String>,
}

impl RunSpec {
    /// The `docker run -d ...` argument list.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string(), "-d".to_string(), "--name".to_string(), self.name.clone()];
        if let Some(h) = &self.hostname {
            a.extend(["--hostname".to_string(), h.clone()]);
        }
        if let Some(n) = &self.network {
            a.extend(["--network".to_string(), n.clone()]);
        }
        if let Some(ip) = &self.ip {
            a.extend(["--ip".to_string(), ip.clone()]);
        }
        for alias in &self.aliases {
            a.extend(["--network-alias".to_string(), alias.clone()]);
        }
        for (k, v) in &self.env {
            a.extend(["-e".to_string(), format!("{k}={v}")]);
        }
        for (vol, path) in &self.volumes {
            a.extend(["-v".to_string(), format!("{vol}:{path}")]);
        }
        for port in &self.publish_loopback {
            a.extend(["-p".to_string(), format!("127.0.0.1::{port}")]);
        }
        for (k, v) in &self.labels {
            a.extend(["--label".to_string(), format!("{k}={v}")]);
        }
        a.extend(self.options.iter().cloned());
        a.push(self.image.clone());
        a.extend(self.args.iter().cloned());
        a
    }
}

/// Starts a container; answers its id.
pub async fn run(spec: &RunSpec) -> Result<String, HarnessError> {
    let args = spec.to_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&refs).await
}

/// The loopback port a container port is published on.
pub async fn published_port(container: &str, port: u16) -> Result<u16, HarnessError> {
    let out = docker(&["port", container, &format!("{port}/tcp")]).await?;
    // Lines like `127.0.0.1:49153`.
    out.lines()
        .filter_map(|l| l.rsplit_once(':').and_then(|(_, p)| p.trim().parse::<u16>().ok()))
        .next()
        .ok_or_else(|| HarnessError::Parse { what: format!("docker port {container} {port}"), detail: out.clone() })
}

/// `docker inspect --format <format> <object>`.
pub async fn inspect(object: &str, format: &str) -> Result<String, HarnessError> {
    docker(&["inspect", "--format", format, object]).await
}

/// The last `lines` lines of a container's output (stdout and stderr), for diagnostics.
pub fn logs_tail_blocking(container: &str, lines: u32) -> String {
    let tail = if lines == u32::MAX { "all".to_string() } else { lines.to_string() };
    match run_program_blocking("docker", &["logs", "--tail", &tail, container]) {
        Ok(out) => format!("{}{}", out.stdout, out.stderr),
        Err(e) => format!("(no logs: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_spec_renders_every_option() {
        let spec = RunSpec {
            name: "c".into(),
            image: "img:tag".into(),
            hostname: Some("h".into()),
            network: Some("n".into()),
            ip: Some("10.0.0.2".into()),
            aliases: vec!["a".into()],
            env: vec![("K".into(), "V".into())],
            volumes: vec![("vol".into(), "/data".into())],
            publish_loopback: vec![8001],
            labels: vec![("l".into(), "1".into())],
            options: vec!["--read-only".into()],
            args: vec!["run".into()],
        };
        assert_eq!(
            spec.to_args().join(" "),
            "run -d --name c --hostname h --network n --ip 10.0.0.2 --network-alias a -e K=V -v vol:/data \
             -p 127.0.0.1::8001 --label l=1 --read-only img:tag run"
        );
    }
}
