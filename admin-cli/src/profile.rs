//! The profile file: named clusters the CLI connects to, like `rpk` profiles.
//!
//! `$SHALE_CONFIG`, else `$XDG_CONFIG_HOME/shale/config.toml`, else `~/.config/shale/config.toml`:
//! ```toml
//! current_profile = "prod"
//!
//! [profiles.prod]
//! addresses = ["node-1.example:7001", "node-2.example:7001"]
//! tls_ca = "/etc/shale/ca.pem"
//! tls_cert = "/etc/shale/alice.pem"   # optional client certificate
//! tls_key = "/etc/shale/alice.key"
//! user = "alice"                      # with password_file; or token = "<user>:<secret>"
//! password_file = "/home/alice/.shale-password"
//! ```
//! Every field of a profile is optional. A profile is chosen by `--profile NAME` / `SHALE_PROFILE`,
//! else `current_profile`. Flags and environment variables win over the profile, field by field
//! (see `context`). `shale profile create|use|delete` rewrite the file (comments are not kept).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the profile file.
pub const CONFIG_ENV: &str = "SHALE_CONFIG";

/// One named cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Bootstrap endpoints, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The cluster CA (PEM); turns TLS on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token (`<user>:<secret>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A user name (with `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A file whose first line is the user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_profile: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// What went wrong with the profile file.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read profile file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid profile file.
    #[error("profile file {}, line {line}, column {column}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the TOML reader said.
        message: String,
    },
    /// The file could not be written.
    #[error("cannot write profile file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No profile of that name in the file.
    #[error("no profile {name:?} in {} (profiles: {known})", path.display())]
    Unknown {
        /// The name asked for.
        name: String,
        /// The file.
        path: PathBuf,
        /// The names it has, comma-separated.
        known: String,
    },
    /// Neither `$SHALE_CONFIG`, `$XDG_CONFIG_HOME` nor `$HOME` is set.
    #[error("no profile file location: set SHALE_CONFIG (or HOME)")]
    NoLocation,
}

/// Where the profile file is: `$SHALE_CONFIG`, `$XDG_CONFIG_HOME/shale/config.toml`, or
/// `$HOME/.config/shale/config.toml`.
pub fn default_path() -> Result<PathBuf, ProfileError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = var(CONFIG_ENV) {
        return Ok(p);
    }
    if let Some(xdg) = var("XDG_CONFIG_HOME") {
        return Ok(xdg.join("shale").join("config.toml"));
    }
    var("HOME").map(|h| h.join(".config").join("shale").join("config.toml")).ok_or(ProfileError::NoLocation)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl ProfileFile {
    /// Parses the file's text; `path` is only for the error.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ProfileError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            ProfileError::Malformed { path: path.to_path_buf(), line, column, message: e.message().trim().to_string() }
        })
    }

    /// Reads the file at `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ProfileError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Writes the file (creating its directory), readable by its owner only where supported (it
    /// may hold a token).
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let write = |source| ProfileError::Write { path: path.to_path_buf(), source };
        let text = toml::to_string_pretty(self).map_err(|e| write(io::Error::other(e.to_string())))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(write)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(write)?;
        }
        std::fs::rename(&tmp, path).map_err(write)
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Profile, ProfileError> {
        self.profiles.get(name).ok_or_else(|| ProfileError::Unknown {
            name: name.to_string(),
            path: path.to_path_buf(),
            known: if self.profiles.is_empty() {
                "none".into()
            } else {
                self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }

    /// The profile to use: `named` (from `--profile` / `SHALE_PROFILE`), else the current one;
    /// `None` when neither is set.
    pub fn select(&self, named: Option<&str>, path: &Path) -> Result<Option<(String, Profile)>, ProfileError> {
        match named.or(self.current_profile.as_deref()) {
            Some(name) => Ok(Some((name.to_string(), self.get(name, path)?.clone()))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_select() {
        let text = r#"
current_profile = "dev"
[profiles.dev]
addresses = ["127.0.0.1:7001"]
[profiles.prod]
addresses = ["a:1", "b:2"]
tls_ca = "/ca.pem"
user = "alice"
password_file = "/pw"
"#;
        let path = Path::new("/x/config.toml");
        let f = ProfileFile::parse(text, path).unwrap();
        assert_eq!(f.select(None, path).unwrap().unwrap().0, "dev");
        let (name, prod) = f.select(Some("prod"), path).unwrap().unwrap();
        assert_eq!((name.as_str(), prod.user.as_deref()), ("prod", Some("alice")));
        let e = f.select(Some("staging"), path).unwrap_err().to_string();
        assert!(e.contains("staging") && e.contains("dev, prod"), "{e}");
        assert_eq!(ProfileFile::default().select(None, path).unwrap(), None);
        assert_eq!(ProfileFile::parse(&toml::to_string_pretty(&f).unwrap(), path).unwrap(), f);
    }

    #[test]
    fn a_malformed_file_names_the_file_and_line() {
        let path = Path::new("/home/a/.config/shale/config.toml");
        for (text, line) in [
            ("[profiles.dev]\naddresses = [\"a:1\"\nuser = \"x\"\n", 3),
            ("[profiles.dev]\naddresses = [\"a:1\"]\nuser = 7\n", 3),
            ("current_profile = \"a\"\n\n[profiles.dev]\nbrokers = [\"a:1\"]\n", 4),
        ] {
            match ProfileFile::parse(text, path) {
                Err(e @ ProfileError::Malformed { line: l, .. }) => {
                    assert_eq!(l, line, "{e}");
                    assert!(e.to_string().contains("config.toml, line"), "{e}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
