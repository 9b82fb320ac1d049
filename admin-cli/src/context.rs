//! What every networked command shares: the global flags merged with the profile, and one lazily
//! built client.
//!
//! Precedence, field by field: flags, then environment variables (clap reads both into
//! [`GlobalArgs`]), then the profile (`--profile` / `SHALE_PROFILE`, else the file's
//! `current_profile`), then defaults. Credentials are taken whole from the first layer that has
//! any: a token or a user from flags/environment, else the profile's token or user. A user's
//! password comes from `--password-file`, else `SHALE_PASSWORD`, else the profile's
//! `password_file`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shale_client::{Client, ClientConfig, ClientError, Password};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::cli::{DEFAULT_BOOTSTRAP, GlobalArgs};
use crate::error::{CliError, Result};
use crate::profile::{self, Profile, ProfileFile};

/// Environment variable holding the password of `--user` / `SHALE_USER`.
pub const PASSWORD_ENV: &str = "SHALE_PASSWORD";

/// How the CLI authenticates, once flags, environment and profile are merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Nothing (or only a client certificate).
    None,
    /// A bearer token.
    Token(String),
    /// A user and where its password comes from.
    Password {
        /// The user name.
        user: String,
        /// A password file, or `None`: `SHALE_PASSWORD`.
        file: Option<PathBuf>,
    },
}

/// The connection settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The profile used, if any.
    pub profile: Option<String>,
    /// Comma-separated endpoints.
    pub bootstrap: String,
    /// The CA to trust (TLS on).
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and key.
    pub tls_identity: Option<(PathBuf, PathBuf)>,
    /// How to authenticate.
    pub credentials: Credentials,
}

fn credentials_of(token: Option<&String>, user: Option<&String>, what: &str) -> Result<Credentials> {
    match (token, user) {
        (Some(_), Some(_)) => Err(CliError::Usage(format!("{what}: give a token or a user, not both"))),
        (Some(t), None) => Ok(Credentials::Token(t.clone())),
        (None, Some(u)) => Ok(Credentials::Password { user: u.clone(), file: None }),
        (None, None) => Ok(Credentials::None),
    }
}

impl Settings {
    /// Merges the flags (and environment) with `profile`.
    pub fn merge(global: &GlobalArgs, profile: Option<(String, Profile)>) -> Result<Self> {
        let (name, p) = match profile {
            Some((n, p)) => (Some(n), p),
            None => (None, Profile::default()),
        };
        let bootstrap = global
            .bootstrap
            .clone()
            .or_else(|| (!p.addresses.is_empty()).then(|| p.addresses.join(",")))
            .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_string());
        let tls_identity = match (&global.tls_cert, &global.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => match (p.tls_cert, p.tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(CliError::Usage("the profile needs both tls_cert and tls_key, or neither".into())),
            },
        };
        let tls_ca = global.tls_ca.clone().or(p.tls_ca);
        if tls_identity.is_some() && tls_ca.is_none() {
            return Err(CliError::Usage("a client certificate needs --tls-ca (or the profile's tls_ca)".into()));
        }
        let mut credentials = credentials_of(global.token.as_ref(), global.user.as_ref(), "--token/--user")?;
        if credentials == Credentials::None {
            credentials = credentials_of(p.token.as_ref(), p.user.as_ref(), "the profile")?;
            if let Credentials::Password { file, .. } = &mut credentials {
                *file = p.password_file;
            }
        }
        if let Credentials::Password { file, .. } = &mut credentials {
            // --password-file wins over SHALE_PASSWORD, which wins over the profile's file.
            if let Some(f) = &global.password_file {
                *file = Some(f.clone());
            } else if std::env::var_os(PASSWORD_ENV).is_some() {
                *file = None;
            }
        } else if global.password_file.is_some() {
            return Err(CliError::Usage("--password-file needs --user (or a profile with a user)".into()));
        }
        Ok(Self { profile: name, bootstrap, tls_ca, tls_identity, credentials })
    }

    /// The flags merged with the profile file (`$SHALE_CONFIG` or ~/.config/shale/config.toml).
    pub fn resolve(global: &GlobalArgs) -> Result<Self> {
        let profile = match profile::default_path() {
            Ok(path) => ProfileFile::load(&path)?.select(global.profile.as_deref(), &path)?,
            Err(e) if global.profile.is_some() => return Err(e.into()),
            Err(_) => None,
        };
        Self::merge(global, profile)
    }
}

/// The first line of a password file.
pub fn read_password_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Input { path: path.to_path_buf(), source })?;
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        return Err(CliError::Usage(format!("the password file {} is empty", path.display())));
    }
    Ok(line)
}

/// The global flags and the cluster client built from them.
#[derive(Debug)]
pub struct Ctx {
    /// The flags every command takes.
    pub global: GlobalArgs,
    /// The flags merged with the profile.
    pub settings: Settings,
    client: OnceLock<Client>,
}

impl Ctx {
    /// A context for these flags and the profile they select; the client is built on first use.
    pub fn new(global: GlobalArgs) -> Result<Self> {
        let settings = Settings::resolve(&global)?;
        Ok(Self { global, settings, client: OnceLock::new() })
    }

    /// The client settings the flags ask for.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let s = &self.settings;
        let mut config = ClientConfig::from_endpoint_list(&s.bootstrap).map_err(|e| self.err("read --bootstrap", e))?;
        config.request_timeout_ms = self.global.timeout.max(1);
        config.max_attempts = self.global.attempts;
        if let Some(ca) = &s.tls_ca {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| CliError::Local { op: "read", path: path.clone(), source })
            };
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let Some((cert, key)) = &s.tls_identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            config.tls = Some(tls);
        }
        match &s.credentials {
            Credentials::None => {}
            Credentials::Token(token) => {
                config.token = Some(
                    shale_client::Token::parse(token)
                        .map_err(|e| CliError::Usage(format!("--token / SHALE_TOKEN: {e}")))?,
                );
            }
            Credentials::Password { user, file } => {
                let password = match file {
                    Some(f) => read_password_file(f)?,
                    None => std::env::var(PASSWORD_ENV)
                        .map_err(|_| CliError::Usage(format!("user {user}: give --password-file or {PASSWORD_ENV}")))?,
                };
                config.password =
                    Some(Password::new(user, &password).map_err(|e| CliError::Usage(format!("--user {user}: {e}")))?);
            }
        }
        Ok(config)
    }

    /// The cluster client.
    pub fn client(&self) -> Result<Client> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let client = Client::new(self.client_config()?).map_err(|e| self.err("connect", e))?;
        Ok(self.client.get_or_init(|| client).clone())
    }

    /// A failed cluster call while doing `action`, with the bootstrap list for the hint.
    pub fn err(&self, action: impl Into<String>, e: ClientError) -> CliError {
        CliError::client(action, &self.settings.bootstrap, e)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn global(args: &[&str]) -> GlobalArgs {
        Cli::try_parse_from(["shale"].iter().chain(args).chain(&["topic", "list"])).unwrap().global
    }

    fn prod() -> Option<(String, Profile)> {
        let p = Profile {
            addresses: vec!["a:1".into(), "b:2".into()],
            tls_ca: Some("/ca.pem".into()),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/c.key".into()),
            user: Some("alice".into()),
            password_file: Some("/alice.pw".into()),
            ..Profile::default()
        };
        Some(("prod".into(), p))
    }

    #[test]
    fn flags_win_over_the_profile_field_by_field() {
        // (SHALE_* variables of whoever runs the tests would count as flags here.)
        if std::env::vars().any(|(k, _)| k.starts_with("SHALE_")) {
            return;
        }
        let s = Settings::merge(&global(&[]), prod()).unwrap();
        assert_eq!(s.bootstrap, "a:1,b:2");
        assert_eq!(s.tls_ca.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(s.credentials, Credentials::Password { user: "alice".into(), file: Some("/alice.pw".into()) });
        let s = Settings::merge(&global(&["--bootstrap", "x:9", "--password-file", "/other.pw"]), prod()).unwrap();
        assert_eq!(s.bootstrap, "x:9");
        assert_eq!(s.credentials, Credentials::Password { user: "alice".into(), file: Some("/other.pw".into()) });
        // A token from the flags replaces the profile's user whole.
        let token = format!("bob:{}", "0".repeat(64));
        let s = Settings::merge(&global(&["--token", &token]), prod()).unwrap();
        assert_eq!(s.credentials, Credentials::Token(token.clone()));
        let s = Settings::merge(&global(&["--tls-cert", "/mine.pem", "--tls-key", "/mine.key"]), prod()).unwrap();
        assert_eq!(s.tls_identity, Some(("/mine.pem".into(), "/mine.key".into())));
        // Without a profile: the defaults.
        let s = Settings::merge(&global(&[]), None).unwrap();
        assert_eq!((s.bootstrap.as_str(), &s.credentials, &s.tls_ca), (DEFAULT_BOOTSTRAP, &Credentials::None, &None));
        // Usage errors: a token and a user; a password file without a user; a certificate without a CA.
        assert!(Settings::merge(&global(&["--token", &token, "--user", "bob"]), None).is_err());
        assert!(Settings::merge(&global(&["--password-file", "/pw"]), None).is_err());
        assert!(Settings::merge(&global(&["--tls-cert", "/c", "--tls-key", "/k"]), None).is_err());
    }
}
