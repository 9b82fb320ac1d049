//! `shale profile list|show|use|create|delete`: the profile file (no cluster needed).

use serde::Serialize;

use crate::cli::{GlobalArgs, ProfileCommand};
use crate::error::{CliError, Result};
use crate::output::{self, Table};
use crate::profile::{self, Profile, ProfileFile};

/// One profile as `profile list` and `profile show` print it (a token is never shown).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProfileView {
    /// The name.
    pub name: String,
    /// Whether it is the current profile.
    pub current: bool,
    /// Bootstrap endpoints.
    pub addresses: Vec<String>,
    /// The CA file.
    pub tls_ca: Option<String>,
    /// The client certificate file.
    pub tls_cert: Option<String>,
    /// The client key file.
    pub tls_key: Option<String>,
    /// `token`, `password` (with `user`) or `none`.
    pub auth: String,
    /// The user name.
    pub user: Option<String>,
    /// The password file.
    pub password_file: Option<String>,
}

fn view(name: &str, p: &Profile, current: bool) -> ProfileView {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    ProfileView {
        name: name.to_string(),
        current,
        addresses: p.addresses.clone(),
        tls_ca: path(&p.tls_ca),
        tls_cert: path(&p.tls_cert),
        tls_key: path(&p.tls_key),
        auth: match (&p.token, &p.user) {
            (Some(_), _) => "token".into(),
            (None, Some(_)) => "password".into(),
            (None, None) => "none".into(),
        },
        user: p.user.clone(),
        password_file: path(&p.password_file),
    }
}

/// Runs a `profile` command.
pub fn run(global: &GlobalArgs, command: ProfileCommand) -> Result<()> {
    let path = profile::default_path()?;
    let mut file = ProfileFile::load(&path)?;
    let current = global.profile.clone().or_else(|| file.current_profile.clone());
    match command {
        ProfileCommand::List(o) => {
            let views: Vec<ProfileView> =
                file.profiles.iter().map(|(n, p)| view(n, p, current.as_deref() == Some(n.as_str()))).collect();
            output::emit(o.output, &views, |views| {
                let mut t = Table::new(["", "name", "addresses", "tls", "auth"]);
                for v in views {
                    t.row([
                        if v.current { "*".into() } else { String::new() },
                        v.name.clone(),
                        v.addresses.join(","),
                        if v.tls_ca.is_some() { "on".into() } else { "off".into() },
                        match &v.user {
                            Some(u) if v.auth == "password" => format!("password ({u})"),
                            _ => v.auth.clone(),
                        },
                    ]);
                }
                t.render()
            })
        }
        ProfileCommand::Show { name, output } => {
            let name = name.or(current).ok_or_else(|| {
                CliError::Usage(format!("no profile named and no current_profile in {}", path.display()))
            })?;
            let p = file.get(&name, &path)?;
            let v = view(&name, p, file.current_profile.as_deref() == Some(name.as_str()));
            output::emit(output.output, &v, |v| {
                let mut t = Table::new(["field", "value"]);
                let opt = |o: &Option<String>| o.clone().unwrap_or_default();
                t.row(["name".into(), v.name.clone()]);
                t.row(["current".into(), v.current.to_string()]);
                t.row(["addresses".into(), v.addresses.join(",")]);
                t.row(["tls_ca".into(), opt(&v.tls_ca)]);
                t.row(["tls_cert".into(), opt(&v.tls_cert)]);
                t.row(["tls_key".into(), opt(&v.tls_key)]);
                t.row(["auth".into(), v.auth.clone()]);
                t.row(["user".into(), opt(&v.user)]);
                t.row(["password_file".into(), opt(&v.password_file)]);
                t.render()
            })
        }
        ProfileCommand::Use { name } => {
            file.get(&name, &path)?;
            file.current_profile = Some(name.clone());
            file.save(&path)?;
            output::print_stdout(&format!("using profile {name} ({})\n", path.display()))
        }
        ProfileCommand::Create { name, make_current } => {
            if name.is_empty() {
                return Err(CliError::Usage("a profile needs a name".into()));
            }
            let p = Profile {
                addresses: global
                    .bootstrap
                    .as_deref()
                    .map(|b| b.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
                tls_ca: global.tls_ca.clone(),
                tls_cert: global.tls_cert.clone(),
                tls_key: global.tls_key.clone(),
                token: global.token.clone(),
                user: global.user.clone(),
                password_file: global.password_file.clone(),
            };
            if p.token.is_some() && p.user.is_some() {
                return Err(CliError::Usage("give a token or a user, not both".into()));
            }
            file.profiles.insert(name.clone(), p);
            if make_current {
                file.current_profile = Some(name.clone());
            }
            file.save(&path)?;
            output::print_stdout(&format!("saved profile {name} in {}\n", path.display()))
        }
        ProfileCommand::Delete { name } => {
            file.get(&name, &path)?;
            file.profiles.remove(&name);
            if file.current_profile.as_deref() == Some(name.as_str()) {
                file.current_profile = None;
            }
            file.save(&path)?;
            output::print_stdout(&format!("deleted profile {name}\n"))
        }
    }
}
