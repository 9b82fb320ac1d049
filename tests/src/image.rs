//! The node image the container tests run: `shale:dev`, rebuilt by `deploy/build-image.sh` from
//! this test run's own (debug) `shale-node` and `shale` (admin CLI) binaries when it is missing or
//! older than either of them.
//!
//! Set `SHALE_TEST_IMAGE=<tag>` to use a prebuilt image as it is (nothing is built), or
//! `SHALE_TEST_SKIP_CARGO_BUILD=1` to use the binaries already in the target dir without
//! asking cargo whether it is up to date.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use crate::docker::{docker, run_program};
use crate::error::HarnessError;
use crate::lock::FileLock;
use crate::paths;

/// The image tag the tests use (and `deploy/build-image.sh` builds by default).
pub const IMAGE: &str = "shale:dev";
/// Bound on building the node binary.
const CARGO_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Bound on building the image from a binary.
const IMAGE_BUILD_TIMEOUT: Duration = Duration::from_secs(5 * 60);

static ENSURED: OnceCell<String> = OnceCell::const_new();

/// Makes sure the test image exists and is current; answers its tag. Built at most once per
/// process, and under a file lock so parallel test processes build it once.
pub async fn ensure_image() -> Result<String, HarnessError> {
    ENSURED.get_or_try_init(ensure_image_uncached).await.cloned()
}

async fn ensure_image_uncached() -> Result<String, HarnessError> {
    if let Ok(tag) = std::env::var("SHALE_TEST_IMAGE") {
        docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).await?;
        return Ok(tag);
    }
    let lock_path = paths::target_dir().join("shale-tests").join("image.lock");
    let lock = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path))
        .await
        .map_err(|e| HarnessError::Usage(format!("lock task failed: {e}")))??;
    let binary = cargo_binary("shale-node", "shale-node").await?;
    let cli = cargo_binary("shale-cli", "shale").await?;
    let newest = [&binary, &cli]
        .iter()
        .map(|path| {
            std::fs::metadata(path).and_then(|m| m.modified()).map_err(|source| HarnessError::Io {
                action: "reading the mtime of",
                path: path.to_path_buf(),
                source,
            })
        })
        .collect::<Result<Vec<SystemTime>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(UNIX_EPOCH);
    match image_created().await? {
        Some(created) if created >= newest => {
            tracing::info!(image = IMAGE, binary = %binary.display(), "image is newer than the binaries; reusing it");
        }
        existing => {
            tracing::info!(image = IMAGE, binary = %binary.display(), stale = existing.is_some(), "building the image");
            let script = paths::deploy_dir().join("build-image.sh");
            let script_s = script.to_string_lossy().into_owned();
            let binary_s = binary.to_string_lossy().into_owned();
            let cli_s = cli.to_string_lossy().into_owned();
            run_program(
                "bash",
                &[&script_s, "--profile", "debug", "--binary", &binary_s, "--cli", &cli_s, "--tag", IMAGE],
                IMAGE_BUILD_TIMEOUT,
            )
            .await?;
        }
    }
    drop(lock);
    Ok(IMAGE.to_string())
}

/// Builds (if needed) and locates binary `bin` of package `package` in this run's profile directory.
async fn cargo_binary(package: &str, bin: &str) -> Result<PathBuf, HarnessError> {
    let profile_dir = paths::profile_dir();
    let binary = profile_dir.join(bin);
    let skip = std::env::var("SHALE_TEST_SKIP_CARGO_BUILD").is_ok_and(|v| v == "1");
    if !(skip && binary.exists()) {
        let target = paths::target_dir();
        let mut args = vec!["build".to_string(), "-p".into(), package.into(), "--bin".into(), bin.into()];
        args.extend(profile_flags(&profile_dir));
        let mut cmd = tokio::process::Command::new(paths::cargo());
        cmd.args(&args)
            .current_dir(paths::workspace_root())
            .env("CARGO_TARGET_DIR", &target)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        tracing::info!(?args, target = %target.display(), "building {bin}");
        let status = tokio::time::timeout(CARGO_BUILD_TIMEOUT, cmd.status())
            .await
            .map_err(|_| HarnessError::CommandTimeout {
                command: format!("cargo {}", args.join(" ")),
                timeout: CARGO_BUILD_TIMEOUT,
            })?
            .map_err(|source| HarnessError::Spawn { program: paths::cargo(), source })?;
        if !status.success() {
            return Err(HarnessError::Command {
                command: format!("cargo {}", args.join(" ")),
                status: status.to_string(),
                stderr: "see the test output above".into(),
            });
        }
    }
    if binary.exists() {
        Ok(binary)
    } else {
        Err(HarnessError::Io {
            action: "finding the built binary",
            path: binary,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }
}

/// Cargo flags selecting the profile that builds into `profile_dir`.
fn profile_flags(profile_dir: &Path) -> Vec<String> {
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => Vec::new(),
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// When the image was created; `None` if it does not exist.
async fn image_created() -> Result<Option<SystemTime>, HarnessError> {
    let Ok(created) = docker(&["image", "inspect", "--format", "{{.Created}}", IMAGE]).await else {
        return Ok(None);
    };
    parse_rfc3339_utc(&created)
        .map(Some)
        .ok_or_else(|| HarnessError::Parse { what: format!("docker image inspect {IMAGE}"), detail: created })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (what docker prints for `.Created`).
pub fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3_600 + mm * 60 + ss;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps_parse() {
        let t = parse_rfc3339_utc("2026-11-25T13:11:02.5Z").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap(), Duration::new(1_795_612_262, 500_000_000));
        let epoch = parse_rfc3339_utc("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(epoch, UNIX_EPOCH);
        let leap = parse_rfc3339_utc("2024-02-29T23:59:59.123456789Z").unwrap();
        assert_eq!(leap.duration_since(UNIX_EPOCH).unwrap(), Duration::new(1_709_251_199, 123_456_789));
        assert!(parse_rfc3339_utc("2026-13-01T00:00:00Z").is_none());
        assert!(parse_rfc3339_utc("yesterday").is_none());
    }

    #[test]
    fn profile_flags_follow_the_directory() {
        assert!(profile_flags(Path::new("/t/debug")).is_empty());
        assert_eq!(profile_flags(Path::new("/t/release")), vec!["--release"]);
        assert_eq!(profile_flags(Path::new("/t/ci")), vec!["--profile", "ci"]);
    }
}
