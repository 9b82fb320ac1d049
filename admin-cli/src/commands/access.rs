//! `shale user create|delete|list|whoami`, `shale acl add|remove|list` and
//! `shale quota set|remove|list`.

use serde::Serialize;
use shale_client::access::{acl_rule, quota};
use shale_client::proto;

use std::io::{BufRead, IsTerminal};

use crate::cli::{AclCommand, AclRuleArgs, NewPasswordArgs, QuotaCommand, UserCommand};
use crate::context::{Ctx, read_password_file};
use crate::error::{CliError, Result};
use crate::output::{self, Table};

/// One rule, as `acl list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AclView {
    /// A principal name or `*`.
    pub principal: String,
    /// The operation.
    pub operation: String,
    /// `topic`, `topic-prefix`, `group` or `cluster`.
    pub resource_type: String,
    /// The name or prefix (empty for the cluster).
    pub resource_name: String,
}

/// `user whoami`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WhoAmIView {
    /// `user:<name>`, `node:<id>` or `anonymous`.
    pub principal: String,
    /// How the node established it.
    pub source: String,
    /// Whether the node enforces ACLs.
    pub authorization: bool,
    /// Whether the principal is a super-user.
    pub super_user: bool,
}

/// The wire rule the flags name.
pub fn rule_of(a: &AclRuleArgs) -> proto::AclRule {
    let (kind, name) = match (&a.topic, &a.topic_prefix, &a.group) {
        (Some(t), _, _) => ("topic", t.as_str()),
        (_, Some(p), _) => ("topic-prefix", p.as_str()),
        (_, _, Some(g)) => ("group", g.as_str()),
        _ => ("cluster", ""),
    };
    acl_rule(&a.principal, &a.operation, kind, name)
}

fn describe(r: &proto::AclRule) -> String {
    match r.resource_type.as_str() {
        "cluster" => format!("allow {} {} on cluster", r.principal, r.operation),
        kind => format!("allow {} {} on {kind} {:?}", r.principal, r.operation, r.resource_name),
    }
}

/// The new password the options name: prompted for (twice) on a terminal, or read from a file
/// or stdin (the first line).
pub fn new_password(args: &NewPasswordArgs, name: &str) -> Result<String> {
    let password = if let Some(path) = &args.new_password_file {
        read_password_file(path)?
    } else if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|source| CliError::Input { path: "-".into(), source })?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage(
                "--password prompts on a terminal; without one use --new-password-file FILE or --password-stdin".into(),
            ));
        }
        let read = |prompt: &str| {
            rpassword::prompt_password(prompt).map_err(|source| CliError::Input { path: "/dev/tty".into(), source })
        };
        let first = read(&format!("password for {name}: "))?;
        if read("again: ")? != first {
            return Err(CliError::Usage("the passwords differ".into()));
        }
        first
    };
    shale_client::scram::check_password(&password).map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(password)
}

/// Runs a `user` command.
pub async fn run_user(ctx: &Ctx, command: UserCommand) -> Result<()> {
    let admin = ctx.client()?.admin();
    match command {
        UserCommand::Create { name, password } if password.given() => {
            let password = new_password(&password, &name)?;
            admin
                .create_password_user(&name, &password)
                .await
                .map_err(|e| ctx.err(format!("create user {name}"), e))?;
            output::print_stdout(&format!(
                "created user {name} with a password (the cluster keeps only its SCRAM-SHA-256 credential)\n"
            ))
        }
        UserCommand::SetPassword { name, password } => {
            if !password.given() {
                return Err(CliError::Usage("give --password, --new-password-file FILE or --password-stdin".into()));
            }
            let password = new_password(&password, &name)?;
            admin
                .set_user_password(&name, &password)
                .await
                .map_err(|e| ctx.err(format!("set the password of user {name}"), e))?;
            output::print_stdout(&format!("changed the password of user {name}\n"))
        }
        UserCommand::Create { name, .. } => {
            let token = admin.create_user(&name).await.map_err(|e| ctx.err(format!("create user {name}"), e))?;
            eprintln!("created user {name}; its token follows, shown this once (the cluster keeps only a hash)");
            output::print_stdout(&format!("{token}\n"))
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await.map_err(|e| ctx.err(format!("delete user {name}"), e))?;
            output::print_stdout(&format!("deleted user {name}\n"))
        }
        UserCommand::List(o) => {
            let names = admin.list_users().await.map_err(|e| ctx.err("list users", e))?;
            output::emit(o.output, &names, |names| {
                let mut t = Table::new(["user"]);
                for n in names {
                    t.row([n.clone()]);
                }
                t.render()
            })
        }
        UserCommand::Whoami(o) => {
            let me = admin.who_am_i().await.map_err(|e| ctx.err("ask who am I", e))?;
            let view = WhoAmIView {
                principal: me.principal,
                source: me.source,
                authorization: me.authorization,
                super_user: me.super_user,
            };
            output::emit(o.output, &view, |v| {
                format!(
                    "{} ({}){}; authorization {}\n",
                    v.principal,
                    v.source,
                    if v.super_user { ", super-user" } else { "" },
                    if v.authorization { "on" } else { "off" }
                )
            })
        }
    }
}

/// Runs an `acl` command.
pub async fn run_acl(ctx: &Ctx, command: AclCommand) -> Result<()> {
    let admin = ctx.client()?.admin();
    match command {
        AclCommand::Add(a) => {
            let rule = rule_of(&a);
            let shown = describe(&rule);
            admin.add_acl(rule).await.map_err(|e| ctx.err(format!("add `{shown}`"), e))?;
            output::print_stdout(&format!("added: {shown}\n"))
        }
        AclCommand::Remove(a) => {
            let rule = rule_of(&a);
            let shown = describe(&rule);
            admin.remove_acl(rule).await.map_err(|e| ctx.err(format!("remove `{shown}`"), e))?;
            output::print_stdout(&format!("removed: {shown}\n"))
        }
        AclCommand::List(o) => {
            let rules = admin.list_acls().await.map_err(|e| ctx.err("list ACL rules", e))?;
            let views: Vec<AclView> = rules
                .into_iter()
                .map(|r| AclView {
                    principal: r.principal,
                    operation: r.operation,
                    resource_type: r.resource_type,
                    resource_name: r.resource_name,
                })
                .collect();
            output::emit(o.output, &views, |views| {
                let mut t = Table::new(["principal", "operation", "resource", "name"]);
                for v in views {
                    t.row([v.principal.clone(), v.operation.clone(), v.resource_type.clone(), v.resource_name.clone()]);
                }
                t.render()
            })
        }
    }
}

/// One quota entry, as `quota list` shows it (rates in bytes per second; `None`: unset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaView {
    /// A user name, or `*` for the default.
    pub entity: String,
    /// Produce bytes per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Consume bytes per second.
    pub consume_bytes_per_sec: Option<u64>,
}

fn rate(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

fn show_rate(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v} B/s"))
}

fn entity_name(entity: &str) -> String {
    if entity == "*" { "the default (*)".to_string() } else { format!("user {entity}") }
}

/// Runs a `quota` command.
pub async fn run_quota(ctx: &Ctx, command: QuotaCommand) -> Result<()> {
    let admin = ctx.client()?.admin();
    match command {
        QuotaCommand::Set(a) => {
            let entity = a.entity.entity();
            let what = entity_name(&entity);
            admin
                .set_quota(quota(&entity, a.produce_rate, a.consume_rate))
                .await
                .map_err(|e| ctx.err(format!("set the quota of {what}"), e))?;
            output::print_stdout(&format!(
                "quota of {what}: produce {}, consume {}\n",
                show_rate(a.produce_rate),
                show_rate(a.consume_rate)
            ))
        }
        QuotaCommand::Remove(a) => {
            let entity = a.entity();
            let what = entity_name(&entity);
            admin.remove_quota(&entity).await.map_err(|e| ctx.err(format!("remove the quota of {what}"), e))?;
            output::print_stdout(&format!("removed the quota of {what}\n"))
        }
        QuotaCommand::List(o) => {
            let quotas = admin.list_quotas().await.map_err(|e| ctx.err("list quotas", e))?;
            let views: Vec<QuotaView> = quotas
                .into_iter()
                .map(|q| QuotaView {
                    entity: q.entity,
                    produce_bytes_per_sec: rate(q.produce_bytes_per_sec),
                    consume_bytes_per_sec: rate(q.consume_bytes_per_sec),
                })
                .collect();
            output::emit(o.output, &views, |views| {
                let mut t = Table::new(["entity", "produce", "consume"]);
                for v in views {
                    t.row([v.entity.clone(), show_rate(v.produce_bytes_per_sec), show_rate(v.consume_bytes_per_sec)]);
                }
                t.render()
            })
        }
    }
}
