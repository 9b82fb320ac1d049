//! Validation of Kubernetes manifests against the Kubernetes JSON schemas, offline (no cluster):
//! the PyPI package `kubernetes-validate` ships the schemas of every Kubernetes release.
//!
//! The tool is installed on first use into a virtualenv under the target directory (under a file
//! lock), pinned to [`VALIDATOR_VERSION`]; set `SHALE_KUBERNETES_VALIDATE=/path/to/kubernetes-validate`
//! to use another installation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::docker::run_program;
use crate::error::HarnessError;
use crate::lock::FileLock;
use crate::paths;

/// The pinned validator release (its newest schemas are Kubernetes 1.37).
pub const VALIDATOR_VERSION: &str = "1.37.0";
/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";
/// Bound on installing the validator.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Bound on one validation.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(120);

static VALIDATOR: OnceCell<PathBuf> = OnceCell::const_new();

/// The `kubernetes-validate` executable, installed if needed.
pub async fn validator() -> Result<PathBuf, HarnessError> {
    VALIDATOR.get_or_try_init(install).await.cloned()
}

async fn install() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("SHALE_KUBERNETES_VALIDATE") {
        return Ok(PathBuf::from(path));
    }
    let root = paths::target_dir().join("shale-tests");
    let venv = root.join(format!("kubernetes-validate-{VALIDATOR_VERSION}"));
    let exe = venv.join("bin").join("kubernetes-validate");
    let lock_path = root.join("kubernetes-validate.lock");
    let lock = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path))
        .await
        .map_err(|e| HarnessError::Usage(format!("lock task failed: {e}")))??;
    // A completed install leaves a marker, so a half-made virtualenv is redone.
    let marker = venv.join(".installed");
    if !marker.exists() {
        tracing::info!(venv = %venv.display(), "installing kubernetes-validate {VALIDATOR_VERSION}");
        let _ = std::fs::remove_dir_all(&venv);
        let venv_s = venv.to_string_lossy().into_owned();
        run_program("python3", &["-m", "venv", &venv_s], INSTALL_TIMEOUT).await?;
        let pip = venv.join("bin").join("pip").to_string_lossy().into_owned();
        let pkg = format!("kubernetes-validate=={VALIDATOR_VERSION}");
        run_program(&pip, &["install", "--quiet", "--disable-pip-version-check", &pkg], INSTALL_TIMEOUT).await?;
        std::fs::write(&marker, VALIDATOR_VERSION).map_err(|source| HarnessError::Io {
            action: "writing",
            path: marker.clone(),
            source,
        })?;
    }
    drop(lock);
    Ok(exe)
}

/// The outcome of validating some files.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Whether every document passed.
    pub ok: bool,
    /// The tool's report (stdout and stderr).
    pub report: String,
}

/// Validates `files` strictly (unknown fields are errors) against [`KUBERNETES_VERSION`].
pub async fn validate(files: &[&Path]) -> Result<Validation, HarnessError> {
    let exe = validator().await?;
    let exe_s = exe.to_string_lossy().into_owned();
    let mut args: Vec<String> = vec!["--strict".into(), "--kubernetes-version".into(), KUBERNETES_VERSION.into()];
    args.extend(files.iter().map(|f| f.to_string_lossy().into_owned()));
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(&args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(VALIDATE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| HarnessError::CommandTimeout {
            command: format!("{exe_s} {}", args.join(" ")),
            timeout: VALIDATE_TIMEOUT,
        })?
        .map_err(|source| HarnessError::Spawn { program: exe_s.clone(), source })?;
    // The tool exits 0 when every document is valid and 1 (reporting on stdout) when one is not.
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    match out.status.code() {
        Some(0) => Ok(Validation { ok: true, report }),
        Some(1) => Ok(Validation { ok: false, report }),
        _ => Err(HarnessError::Command {
            command: format!("{exe_s} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: report,
        }),
    }
}

/// The manifest files of `deploy/k8s/` (`*.yaml`), sorted.
pub fn manifest_files() -> Result<Vec<PathBuf>, HarnessError> {
    let dir = paths::deploy_dir().join("k8s");
    let entries =
        std::fs::read_dir(&dir).map_err(|source| HarnessError::Io { action: "listing", path: dir.clone(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Every document of every manifest in deploy/k8s, by `Kind/name`.
pub fn documents() -> Result<std::collections::BTreeMap<String, serde_yaml_ng::Value>, HarnessError> {
    use serde::Deserialize;
    let mut docs = std::collections::BTreeMap::new();
    for file in manifest_files()? {
        let text = std::fs::read_to_string(&file).map_err(|source| HarnessError::Io {
            action: "reading",
            path: file.clone(),
            source,
        })?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .map_err(|e| HarnessError::Parse { what: file.display().to_string(), detail: e.to_string() })?;
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or("?");
            let name = v["metadata"]["name"].as_str().unwrap_or("?");
            let key = format!("{kind}/{name}");
            if docs.insert(key.clone(), v).is_some() {
                return Err(HarnessError::Parse {
                    what: file.display().to_string(),
                    detail: format!("{key} defined twice"),
                });
            }
        }
    }
    Ok(docs)
}

/// Expands Kubernetes `$(VAR)` references in an env value from the variables defined so far
/// (unknown references stay as they are, as Kubernetes does).
pub fn expand_env(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')') {
            Some(end) => {
                let name = &after[..end];
                match defined.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 1]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_references_expand_like_kubernetes() {
        let defined = vec![("POD_NAME".to_string(), "shale-1".to_string())];
        assert_eq!(expand_env("$(POD_NAME).shale-peers:7001", &defined), "shale-1.shale-peers:7001");
        assert_eq!(expand_env("/etc/shale/$(POD_NAME).toml", &defined), "/etc/shale/shale-1.toml");
        assert_eq!(expand_env("$(UNKNOWN)/x", &defined), "$(UNKNOWN)/x");
        assert_eq!(expand_env("plain", &defined), "plain");
        assert_eq!(expand_env("open $(", &defined), "open $(");
    }
}
