//! Certificates for a local cluster (`shale-node dev --tls` and `testing::LocalCluster`): a fresh
//! cluster CA and one certificate per node, written as PEM files into a directory laid out as
//! `shale cert` lays it out (`shale_raft::network::tls::files`; docs/security.md).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use shale_raft::network::tls::files::{self, write_pem};
use shale_raft::network::tls::{TlsError, generate};

use crate::config::TlsFiles;

/// Days the certificates of a local cluster are valid.
pub const LOCAL_CERT_DAYS: u32 = 30;

/// Makes a CA and a certificate for each of `ids` (valid for `localhost`, `127.0.0.1` and `::1`
/// besides the node's own names) in `dir`; returns each node's `[tls]` files, in `ids` order.
pub fn write_local_certs(dir: &Path, ids: &[u64]) -> Result<Vec<TlsFiles>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let ca = generate::ca("shale local cluster CA", LOCAL_CERT_DAYS)?;
    write_pem(&dir.join(files::CA_CERT), &ca.cert, false)?;
    write_pem(&dir.join(files::CA_KEY), &ca.key, true)?;
    ids.iter().map(|&id| issue_local(dir, &ca, id)).collect()
}

/// Adds a certificate for node `id` to a directory made by [`write_local_certs`] (signed by its
/// CA); returns the node's `[tls]` files.
pub fn write_node_cert(dir: &Path, id: u64) -> Result<TlsFiles, TlsError> {
    issue_local(dir, &files::read_ca(dir)?, id)
}

fn issue_local(dir: &Path, ca: &generate::Pem, id: u64) -> Result<TlsFiles, TlsError> {
    let ips: [IpAddr; 2] = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    let node = generate::node(ca, id, &["localhost".to_string()], &ips, LOCAL_CERT_DAYS)?;
    let (cert, key): (PathBuf, PathBuf) = (dir.join(files::node_cert(id)), dir.join(files::node_key(id)));
    write_pem(&cert, &node.cert, false)?;
    write_pem(&key, &node.key, true)?;
    Ok(TlsFiles { ca: dir.join(files::CA_CERT), cert, key, watch_interval_ms: crate::config::DEFAULT_TLS_WATCH_MS })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_raft::network::tls::TlsPem;

    #[test]
    fn local_certificates_load_as_node_tls() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_local_certs(dir.path(), &[1, 2]).unwrap();
        assert_eq!(files.len(), 2);
        for f in &files {
            TlsPem::load(&f.ca, &f.cert, &f.key).unwrap();
        }
        let joiner = write_node_cert(dir.path(), 3).unwrap();
        TlsPem::load(&joiner.ca, &joiner.cert, &joiner.key).unwrap();
        assert!(matches!(
            TlsPem::load(&files[0].cert, &files[0].key, &files[0].key),
            Err(TlsError::NotPem { what: "cert", .. })
        ));
    }
}
