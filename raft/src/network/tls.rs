//! TLS for the node's gRPC listener and its connections to peers (rustls through tonic, ring
//! provider; no OpenSSL), and the one rule for where a certificate names a node or a client.
//!
//! **Certificate layout** (docs/security.md): one cluster CA signs every certificate.
//! - A node certificate carries the URI SAN `shale://node/<id>` (its identity: exactly one such
//!   SAN), the DNS SAN `node-<id>.shale.internal`, and the DNS names / IP addresses peers and
//!   clients reach it at (the TLS host check uses those).
//! - A client certificate carries the URI SAN `shale://client/<principal>` and no node SAN, so a
//!   client certificate can never pass as a node.
//!
//! [`certified_node`] reads the node id out of a peer's certificate; the Raft server compares it
//! with the node id each RPC claims ([`crate::network::guard::check_identity`]).
//! [`generate`] makes a CA and certificates with rcgen (`shale cert`, `shale-node dev --tls`).

use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::types::NodeId;

/// The URI SAN prefix of a node certificate: `shale://node/<id>`.
pub const NODE_URI_PREFIX: &str = "shale://node/";
/// The URI SAN prefix of a client certificate: `shale://client/<principal>`.
pub const CLIENT_URI_PREFIX: &str = "shale://client/";
/// The DNS SAN every node certificate carries: `node-<id>` + this suffix.
pub const NODE_DNS_SUFFIX: &str = ".shale.internal";

/// The identity URI of node `id`.
pub fn node_uri(id: NodeId) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The DNS name every certificate of node `id` carries.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}{NODE_DNS_SUFFIX}")
}

/// A TLS setting that cannot be used, or a certificate that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which file (`ca`, `cert`, `key`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate, key or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("{what} {} holds no PEM `{label}` block", path.display())]
    NotPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The PEM label looked for.
        label: &'static str,
    },
    /// A certificate does not parse as X.509.
    #[error("certificate does not parse: {reason}")]
    Parse {
        /// What the parser said.
        reason: String,
    },
    /// A certificate names more than one node (it could pass as either).
    #[error("certificate names {count} nodes ({NODE_URI_PREFIX}<id> SANs); a node certificate names exactly one")]
    AmbiguousNode {
        /// How many node URIs it has.
        count: usize,
    },
    /// A node URI whose id is not a number.
    #[error("certificate SAN {uri:?} is not `{NODE_URI_PREFIX}<id>`")]
    BadNodeUri {
        /// The URI.
        uri: String,
    },
    /// A PEM file's contents do not parse (no block of the kind, or a damaged one).
    #[error("{what} does not parse as PEM: {reason}")]
    BadPem {
        /// Which file ("ca", "cert", "key").
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The private key does not belong to the certificate (or cannot be used).
    #[error("the private key does not match the certificate or cannot be used: {reason}")]
    KeyMismatch {
        /// What rustls said.
        reason: String,
    },
    /// The certificate is not signed by the cluster CA (or is expired, or not for client and
    /// server authentication).
    #[error("the certificate does not verify against the cluster CA: {reason}")]
    NotSignedByCa {
        /// What the verifier said.
        reason: String,
    },
    /// The certificate does not name the node that loads it (`shale://node/<id>`): peers would
    /// refuse its Raft RPCs.
    #[error("the certificate names node {found:?}, not this node ({expected})")]
    WrongNode {
        /// This node's id.
        expected: NodeId,
        /// The node the certificate names (`None`: none).
        found: Option<NodeId>,
    },
    /// rustls refused the configuration (e.g. a CA file with no usable certificate).
    #[error("cannot build the TLS configuration: {reason}")]
    Config {
        /// What rustls said.
        reason: String,
    },
    /// rcgen refused to make a certificate.
    #[error("cannot generate {what}: {reason}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// The PEM material of one node: the cluster CA, the node's certificate chain and its key.
/// Compared by content; its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPem {
    /// The cluster CA certificate(s), PEM.
    pub ca: Vec<u8>,
    /// This node's certificate (chain), PEM.
    pub cert: Vec<u8>,
    /// This node's private key, PEM.
    pub key: Vec<u8>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca_bytes", &self.ca.len())
            .field("cert_bytes", &self.cert.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains(&format!("-----BEGIN {label}")) {
        return Err(TlsError::NotPem { what, path: path.into(), label });
    }
    Ok(bytes)
}

impl TlsPem {
    /// Reads the three PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read_pem("ca", ca, "CERTIFICATE")?,
            cert: read_pem("cert", cert, "CERTIFICATE")?,
            // PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) all end so.
            key: read_pem("key", key, "")?,
        })
    }

    /// The server side as rustls configuration, checked: the key must match the certificate and
    /// the certificate must verify against the cluster CA (now, for client authentication, which
    /// node certificates carry besides server authentication). Clients may present a certificate
    /// signed by the cluster CA: optional without `require_client_cert` (whatever is presented
    /// must still chain to the CA); with it (the internal listener) a certificate is required and
    /// must name a node ([`NodeCertVerifier`]), or the handshake fails. ALPN `h2` (gRPC).
    pub fn rustls_server_config(&self, require_client_cert: bool) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = self.cert_chain()?;
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| TlsError::BadPem { what: "key", reason: e.to_string() })?;
        let roots = Arc::new(self.ca_roots()?);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let verifier: Arc<dyn ClientCertVerifier> = if require_client_cert {
            let inner = verifier.build().map_err(|e| TlsError::Config { reason: e.to_string() })?;
            Arc::new(NodeCertVerifier { inner })
        } else {
            verifier.allow_unauthenticated().build().map_err(|e| TlsError::Config { reason: e.to_string() })?
        };
        // Our own certificate must chain to the CA peers check it against.
        let strict = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Config { reason: e.to_string() })?;
        strict
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| TlsError::NotSignedByCa { reason: e.to_string() })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config { reason: e.to_string() })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::KeyMismatch { reason: e.to_string() })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// This node's certificate chain, leaf first (at least one certificate).
    pub fn cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem { what: "cert", reason: e.to_string() })?;
        if chain.is_empty() {
            return Err(TlsError::BadPem { what: "cert", reason: "no certificate".into() });
        }
        Ok(chain)
    }

    fn ca_roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca) {
            let cert = cert.map_err(|e| TlsError::BadPem { what: "ca", reason: e.to_string() })?;
            roots.add(cert).map_err(|e| TlsError::BadPem { what: "ca", reason: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(TlsError::BadPem { what: "ca", reason: "no certificate".into() });
        }
        Ok(roots)
    }

    /// The client side of a connection to a peer: trusts only the cluster CA and presents this
    /// node's certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// The internal listener's client-certificate check: the cluster CA's (webpki: chain, validity,
/// client-authentication usage), then [`certified_node`] must name a node. A client certificate
/// of the cluster CA, or one naming two nodes, fails the handshake, before any request is read.
/// Whether that node is a member, and the one an RPC claims to come from, is the Raft guard's
/// check per request (membership changes; a handshake does not see them).
#[derive(Debug)]
pub struct NodeCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match certified_node(end_entity.as_ref()) {
            Ok(Some(_)) => Ok(verified),
            Ok(None) | Err(_) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a log line says about a certificate: its serial number (hex) and its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The serial number, lowercase hex without separators.
    pub serial: String,
    /// `notAfter`, as the certificate writes it (RFC 2822-like text of x509-parser).
    pub not_after: String,
    /// `notAfter` in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// The serial number and expiry of a DER certificate.
pub fn cert_summary(der: &[u8]) -> Result<CertSummary, TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse { reason: e.to_string() })?;
    let serial = cert.tbs_certificate.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
    let not_after = &cert.validity().not_after;
    Ok(CertSummary { serial, not_after: not_after.to_string(), not_after_unix: not_after.timestamp() })
}

/// Every URI subject alternative name of a DER certificate (none without the extension); an error
/// when the certificate or its SAN extension cannot be read.
fn uri_sans(der: &[u8]) -> Result<Vec<&str>, TlsError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse { reason: e.to_string() })?;
    let san = cert.subject_alternative_name().map_err(|e| TlsError::Parse { reason: e.to_string() })?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| if let GeneralName::URI(u) = n { Some(*u) } else { None })
                .collect()
        })
        .unwrap_or_default())
}

/// The node a DER certificate names: `Some(id)` for exactly one `shale://node/<id>` URI SAN,
/// `None` when it names no node (a client certificate), an error when it cannot be read or names
/// more than one.
pub fn certified_node(der: &[u8]) -> Result<Option<NodeId>, TlsError> {
    let uris: Vec<&str> = uri_sans(der)?.into_iter().filter(|u| u.starts_with(NODE_URI_PREFIX)).collect();
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => {
            let id = &uri[NODE_URI_PREFIX.len()..];
            // Digits only: `+1`, ` 1` or `01` would parse but are not how a node id is written.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || (id.len() > 1 && id.starts_with('0')) {
                return Err(TlsError::BadNodeUri { uri: (*uri).to_string() });
            }
            id.parse().map(Some).map_err(|_| TlsError::BadNodeUri { uri: (*uri).to_string() })
        }
        many => Err(TlsError::AmbiguousNode { count: many.len() }),
    }
}

/// The client principal a DER certificate names: `Some(name)` for exactly one
/// `shale://client/<name>` URI SAN and no node SAN; without any such SAN (a certificate another
/// CA tool made), its subject's common name, when it has exactly one and names no node; `None`
/// when it names no client; an error when it cannot be read, names more than one client, or names
/// a node too. (Whether the name is a valid principal is the caller's check.)
pub fn certified_client(der: &[u8]) -> Result<Option<String>, TlsError> {
    let uris = uri_sans(der)?;
    let clients: Vec<&str> = uris.iter().filter_map(|u| u.strip_prefix(CLIENT_URI_PREFIX)).collect();
    let nodes = uris.iter().filter(|u| u.starts_with(NODE_URI_PREFIX)).count();
    match (clients.as_slice(), nodes) {
        ([], 0) => subject_common_name(der),
        ([], _) => Ok(None),
        ([name], 0) => Ok(Some((*name).to_string())),
        (many, nodes) => Err(TlsError::Parse {
            reason: format!(
                "certificate names {} clients and {nodes} nodes; a client certificate names one client",
                many.len()
            ),
        }),
    }
}

/// The subject's common name: `Some` when the subject has exactly one CN and it is a string.
fn subject_common_name(der: &[u8]) -> Result<Option<String>, TlsError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::Parse { reason: e.to_string() })?;
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    match names.as_slice() {
        [cn] => Ok(cn.as_str().ok().map(str::to_string)),
        _ => Ok(None),
    }
}

/// The certificate directory's layout, shared by `shale cert` and local clusters: `ca.pem` /
/// `ca.key`, `node-<id>.pem` / `.key`, `client-<principal>.pem` / `.key`.
pub mod files {
    use std::path::Path;

    use super::TlsError;
    use crate::types::NodeId;

    /// The CA certificate file.
    pub const CA_CERT: &str = "ca.pem";
    /// The CA key file.
    pub const CA_KEY: &str = "ca.key";

    /// Node `id`'s certificate file.
    pub fn node_cert(id: NodeId) -> String {
        format!("node-{id}.pem")
    }

    /// Node `id`'s key file.
    pub fn node_key(id: NodeId) -> String {
        format!("node-{id}.key")
    }

    /// A client's certificate file.
    pub fn client_cert(principal: &str) -> String {
        format!("client-{principal}.pem")
    }

    /// A client's key file.
    pub fn client_key(principal: &str) -> String {
        format!("client-{principal}.key")
    }

    /// Writes PEM `contents` to `path`; a private key is made readable by its owner only.
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

    /// Reads the CA (certificate and key) from `dir`.
    pub fn read_ca(dir: &Path) -> Result<super::generate::Pem, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TlsError::Read { what: "CA file", path, source })
        };
        Ok(super::generate::Pem { cert: read(CA_CERT)?, key: read(CA_KEY)? })
    }
}

/// Making a CA and certificates (rcgen), for `shale cert` and `shale-node dev --tls`.
pub mod generate {
    use std::net::IpAddr;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };

    use super::{CLIENT_URI_PREFIX, TlsError, node_dns_name, node_uri};
    use crate::types::NodeId;

    /// A certificate and its private key, PEM.
    #[derive(Clone)]
    pub struct Pem {
        /// The certificate.
        pub cert: String,
        /// The private key (PKCS#8).
        pub key: String,
    }

    impl std::fmt::Debug for Pem {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Pem").field("cert", &self.cert).field("key", &"<redacted>").finish()
        }
    }

    fn err(what: &'static str) -> impl Fn(rcgen::Error) -> TlsError {
        move |e| TlsError::Generate { what, reason: e.to_string() }
    }

    /// Valid from an hour ago (clocks of a cluster are never exactly in step) for `days`.
    fn validity(params: &mut CertificateParams, days: u32) {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(i64::from(days));
    }

    /// A new self-signed cluster CA named `name`, valid for `days`.
    pub fn ca(name: &str, days: u32) -> Result<Pem, TlsError> {
        let key = KeyPair::generate().map_err(err("CA key"))?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        validity(&mut params, days);
        let cert = params.self_signed(&key).map_err(err("CA certificate"))?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }

    pub(super) fn issue(
        ca: &Pem,
        mut params: CertificateParams,
        days: u32,
        what: &'static str,
    ) -> Result<Pem, TlsError> {
        let ca_key = KeyPair::from_pem(&ca.key).map_err(err("CA key (reading it)"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(err("CA certificate (reading it)"))?;
        let key = KeyPair::generate().map_err(err(what))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut params, days);
        let cert = params.signed_by(&key, &issuer).map_err(err(what))?;
        Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
    }

    fn uri(u: String) -> Result<SanType, TlsError> {
        Ok(SanType::URI(u.try_into().map_err(err("a URI SAN"))?))
    }

    fn dns(d: &str) -> Result<SanType, TlsError> {
        Ok(SanType::DnsName(d.try_into().map_err(err("a DNS SAN"))?))
    }

    /// A certificate for node `id`, signed by `ca`: URI SAN `shale://node/<id>`, DNS SANs
    /// `node-<id>.shale.internal` and `dns`, IP SANs `ips`; usable as server and client
    /// certificate (a node is both).
    pub fn node(ca: &Pem, id: NodeId, dns_names: &[String], ips: &[IpAddr], days: u32) -> Result<Pem, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_dns_name(id));
        params.distinguished_name = dn;
        params.subject_alt_names.push(uri(node_uri(id))?);
        params.subject_alt_names.push(dns(&node_dns_name(id))?);
        for d in dns_names {
            params.subject_alt_names.push(dns(d)?);
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        issue(ca, params, days, "node certificate")
    }

    /// A client certificate for `principal`, signed by `ca`: CN and URI SAN
    /// `shale://client/<principal>`, client authentication only (it names no node).
    pub fn client(ca: &Pem, principal: &str, days: u32) -> Result<Pem, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, principal);
        params.distinguished_name = dn;
        params.subject_alt_names.push(uri(format!("{CLIENT_URI_PREFIX}{principal}"))?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        issue(ca, params, days, "client certificate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let mut reader = std::io::Cursor::new(pem.as_bytes());
        let block = x509_parser::pem::Pem::read(&mut reader).expect("pem").0;
        block.contents
    }

    #[test]
    fn node_and_client_certificates_name_what_they_are() {
        let ca = generate::ca("test CA", 1).unwrap();
        let node = generate::node(&ca, 7, &["localhost".into()], &["127.0.0.1".parse().unwrap()], 1).unwrap();
        assert_eq!(certified_node(&der_of(&node.cert)).unwrap(), Some(7));
        let client = generate::client(&ca, "alice", 1).unwrap();
        assert_eq!(certified_node(&der_of(&client.cert)).unwrap(), None, "a client certificate names no node");
        assert_eq!(certified_client(&der_of(&client.cert)).unwrap().as_deref(), Some("alice"));
        assert_eq!(certified_client(&der_of(&node.cert)).unwrap(), None, "a node certificate names no client");
        assert_eq!(certified_node(&der_of(&ca.cert)).unwrap(), None);
        assert!(matches!(certified_node(b"not a certificate"), Err(TlsError::Parse { .. })));
    }

    /// A client certificate with a subject and no principal SAN (as another CA tool makes
    /// them): the principal is its common name; with a URI SAN, the SAN wins; two CNs name none.
    #[test]
    fn a_certificate_without_a_principal_san_names_its_subject_common_name() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose};
        let ca = generate::ca("test CA", 1).unwrap();
        let with_subject = |names: &[&str]| {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::OrganizationName, "Example Inc");
            for n in names {
                dn.push(DnType::CommonName, *n);
            }
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            der_of(&generate::issue(&ca, params, 1, "test certificate").unwrap().cert)
        };
        assert_eq!(certified_client(&with_subject(&["bob"])).unwrap().as_deref(), Some("bob"));
        assert_eq!(certified_node(&with_subject(&["bob"])).unwrap(), None, "a subject names no node");
        assert_eq!(certified_client(&with_subject(&[])).unwrap(), None, "no CN: no principal");
        let client = generate::client(&ca, "alice", 1).unwrap();
        assert_eq!(certified_client(&der_of(&client.cert)).unwrap().as_deref(), Some("alice"), "the SAN");
        // A node certificate (its CN is node-7.shale.internal) never names a client.
        let node = generate::node(&ca, 7, &[], &[], 1).unwrap();
        assert_eq!(certified_client(&der_of(&node.cert)).unwrap(), None);
        let summary = cert_summary(&der_of(&client.cert)).unwrap();
        let in_a_day = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
        assert!((summary.not_after_unix - in_a_day).abs() < 120, "{summary:?}");
    }
}
