//! `shale cert`: a cluster CA and node and client certificates (PEM files) for TLS, made with
//! rcgen by `shale_raft::network::tls::generate`, laid out as `shale_raft::network::tls::files`
//! says (docs/security.md "Certificate layout"). No network; no runtime.

use std::path::Path;

use shale_raft::network::tls::files::{self, write_pem};
use shale_raft::network::tls::{TlsError, generate, node_uri};

use crate::cli::{CertArgs, CertCommand};
use crate::error::{CliError, Result};

fn tls_err(action: impl Into<String>) -> impl FnOnce(TlsError) -> CliError {
    let action = action.into();
    move |source| CliError::Tls { action, source }
}

/// Refuses to overwrite `paths` unless `--force`.
fn check_free(common: &CertArgs, paths: &[&Path]) -> Result<()> {
    if common.force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(CliError::Usage(format!("{} exists; pass --force to overwrite it", p.display()))),
        None => Ok(()),
    }
}

fn write_pair(common: &CertArgs, cert_name: &str, key_name: &str, pem: &generate::Pem) -> Result<()> {
    let (cert, key) = (common.dir.join(cert_name), common.dir.join(key_name));
    check_free(common, &[&cert, &key])?;
    write_pem(&cert, &pem.cert, false).map_err(tls_err("write the certificate"))?;
    write_pem(&key, &pem.key, true).map_err(tls_err("write the key"))?;
    crate::output::print_stdout(&format!("wrote {} and {}\n", cert.display(), key.display()))
}

/// A principal is a name, not a path: the rule the nodes apply to principals
/// (`shale_raft::cluster::access::validate_principal`: 1..=64 of `[A-Za-z0-9._-]`).
fn check_principal(principal: &str) -> Result<()> {
    shale_raft::cluster::access::validate_principal(principal).map_err(|e| CliError::Usage(e.to_string()))
}

/// Whether both files of a pair exist (and are kept); says so. One of the two alone is an error:
/// a half-written pair is not silently completed with a mismatched half.
fn kept(common: &CertArgs, cert_name: &str, key_name: &str) -> Result<bool> {
    if common.force {
        return Ok(false);
    }
    let (cert, key) = (common.dir.join(cert_name), common.dir.join(key_name));
    match (cert.exists(), key.exists()) {
        (true, true) => {
            crate::output::print_stdout(&format!("kept {} and {}\n", cert.display(), key.display()))?;
            Ok(true)
        }
        (false, false) => Ok(false),
        (true, false) | (false, true) => Err(CliError::Usage(format!(
            "only one of {} and {} exists; remove it or pass --force",
            cert.display(),
            key.display()
        ))),
    }
}

/// The node certificates `shale cert init-cluster` makes.
struct NodeCerts<'a> {
    count: u64,
    /// DNS names, `{id}` replaced by the node's id.
    dns: &'a [String],
    ips: &'a [std::net::IpAddr],
    /// Their directory (with a copy of the CA certificate); `None`: the CA's.
    dir: Option<&'a Path>,
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Local {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// `shale cert init-cluster`: the CA (or the one in --dir), every node's and client's certificate,
/// keeping what exists.
fn init_cluster(common: &CertArgs, name: &str, nodes: &NodeCerts<'_>, clients: &[String]) -> Result<()> {
    for principal in clients {
        check_principal(principal)?;
    }
    create_dir(&common.dir)?;
    let ca = if kept(common, files::CA_CERT, files::CA_KEY)? {
        files::read_ca(&common.dir).map_err(tls_err("read the CA"))?
    } else {
        let ca = generate::ca(name, common.days).map_err(tls_err("make the CA"))?;
        write_pair(common, files::CA_CERT, files::CA_KEY, &ca)?;
        ca
    };
    let node_common = CertArgs {
        dir: nodes.dir.map_or_else(|| common.dir.clone(), Path::to_path_buf),
        days: common.days,
        force: common.force,
    };
    if node_common.dir != common.dir {
        create_dir(&node_common.dir)?;
        // The nodes' copy of the CA certificate follows the CA (a new CA replaces it).
        let path = node_common.dir.join(files::CA_CERT);
        write_pem(&path, &ca.cert, false).map_err(tls_err("write the CA certificate"))?;
    }
    for id in 1..=nodes.count {
        if kept(&node_common, &files::node_cert(id), &files::node_key(id))? {
            continue;
        }
        let dns: Vec<String> = nodes.dns.iter().map(|d| d.replace("{id}", &id.to_string())).collect();
        let node = generate::node(&ca, id, &dns, nodes.ips, common.days).map_err(tls_err("make a node certificate"))?;
        write_pair(&node_common, &files::node_cert(id), &files::node_key(id), &node)?;
    }
    for principal in clients {
        if kept(common, &files::client_cert(principal), &files::client_key(principal))? {
            continue;
        }
        let client = generate::client(&ca, principal, common.days).map_err(tls_err("make a client certificate"))?;
        write_pair(common, &files::client_cert(principal), &files::client_key(principal), &client)?;
    }
    Ok(())
}

/// Runs one `shale cert` command.
pub fn run(command: CertCommand) -> Result<()> {
    match command {
        CertCommand::InitCa { common, name } => {
            std::fs::create_dir_all(&common.dir).map_err(|source| CliError::Local {
                op: "create directory",
                path: common.dir.clone(),
                source,
            })?;
            let ca = generate::ca(&name, common.days).map_err(tls_err("make the CA"))?;
            write_pair(&common, files::CA_CERT, files::CA_KEY, &ca)
        }
        CertCommand::Node { common, id, dns, ip } => {
            let ca = files::read_ca(&common.dir).map_err(tls_err("read the CA (run `shale cert init-ca` first)"))?;
            let node = generate::node(&ca, id, &dns, &ip, common.days).map_err(tls_err("make the node certificate"))?;
            write_pair(&common, &files::node_cert(id), &files::node_key(id), &node)?;
            crate::output::print_stdout(&format!("node {id} is {}\n", node_uri(id)))
        }
        CertCommand::InitCluster { common, name, nodes, node_dns, node_ip, client, node_dir } => {
            let nodes = NodeCerts { count: nodes, dns: &node_dns, ips: &node_ip, dir: node_dir.as_deref() };
            init_cluster(&common, &name, &nodes, &client)
        }
        CertCommand::Client { common, principal } => {
            check_principal(&principal)?;
            let ca = files::read_ca(&common.dir).map_err(tls_err("read the CA (run `shale cert init-ca` first)"))?;
            let client =
                generate::client(&ca, &principal, common.days).map_err(tls_err("make the client certificate"))?;
            write_pair(&common, &files::client_cert(&principal), &files::client_key(&principal), &client)
        }
    }
}
