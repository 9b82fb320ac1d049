//! Certificates for a local cluster (`shale-node dev --tls` and `testing::LocalCluster`): a fresh
//! cluster CA and one certificate per node, written as PEM files into a directory with the same
//! names `shale cert` uses (docs/security.md "Certificate layout").

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use shale_raft::network::tls::{TlsError, generate};

use crate::config::TlsFiles;

/// Days the certificates of a local cluster are valid.
pub const LOCAL_CERT_DAYS: u32 = 30;

/// The CA certificate file in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key file in a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Node `id`'s certificate file name.
pub fn node_cert_file(id: u64) -> String {
    format!("node-{id}.pem")
}

/// Node `id`'s key file name.
pub fn node_key_file(id: u64) -> String {
    format!("node-{id}.key")
}

/// Writes `contents` to `path`; a private key is readable by its owner only.
pub fn write_pem(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Write { path: path.to_path_buf(), source };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// Makes a CA and a certificate for each of `ids` (valid for `localhost`, `127.0.0.1` and `::1`
/// besides the node's own names) in `dir`; returns each node's `[tls]` files, in `ids` order.
pub fn write_local_certs(dir: &Path, ids: &[u64]) -> Result<Vec<TlsFiles>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let ca = generate::ca("shale local cluster CA", LOCAL_CERT_DAYS)?;
    write_pem(&dir.join(CA_CERT_FILE), &ca.cert, false)?;
    write_pem(&dir.join(CA_KEY_FILE), &ca.key, true)?;
    ids.iter().map(|&id| issue_local(dir, &ca, id)).collect()
}

/// Adds a certificate for node `id` to a directory made by [`write_local_certs`] (signed by its
/// CA); returns the node's `[tls]` files.
pub fn write_node_cert(dir: &Path, id: u64) -> Result<TlsFiles, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| TlsError::Read { what: "CA file", path, source })
    };
    let ca = generate::Pem { cert: read(CA_CERT_FILE)?, key: read(CA_KEY_FILE)? };
    issue_local(dir, &ca, id)
}

fn issue_local(dir: &Path, ca: &generate::Pem, id: u64) -> Result<TlsFiles, TlsError> {
    let ips: [IpAddr; 2] = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    let node = generate::node(ca, id, &["localhost".to_string()], &ips, LOCAL_CERT_DAYS)?;
    let (cert, key): (PathBuf, PathBuf) = (dir.join(node_cert_file(id)), dir.join(node_key_file(id)));
    write_pem(&cert, &node.cert, false)?;
    write_pem(&key, &node.key, true)?;
    Ok(TlsFiles { ca: dir.join(CA_CERT_FILE), cert, key })
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
        assert!(dir.path().join(CA_KEY_FILE).exists());
        assert!(matches!(
            TlsPem::load(&files[0].cert, &files[0].key, &files[0].key),
            Err(TlsError::NotPem { what: "cert", .. })
        ));
    }
}
