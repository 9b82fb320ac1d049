//! Where things are: the workspace, the cargo target directory of this test run, the deploy files.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `deploy/` in the workspace.
pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// The profile directory this test binary was built into (`<target>/debug`), derived from the
/// running executable (`<target>/debug/deps/<test>-<hash>`); falls back to `CARGO_TARGET_DIR` or
/// `<workspace>/target`, then `debug`.
pub fn profile_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent()
        && deps.file_name().is_some_and(|n| n == "deps")
        && let Some(profile) = deps.parent()
    {
        return profile.to_path_buf();
    }
    target_dir_from_env().join("debug")
}

/// The target directory of this test run.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map_or_else(target_dir_from_env, Path::to_path_buf)
}

fn target_dir_from_env() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The cargo program that runs this test (cargo and nextest set `CARGO`), else `cargo`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}
