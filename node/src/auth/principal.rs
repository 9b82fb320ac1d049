//! Authentication: the principal of a client-API request, from (in this order) a forwarded
//! principal (`shale-principal`, trusted only from a peer with a node certificate), a bearer token
//! (`authorization: Bearer <user>:<secret>`), a password (`authorization: Basic
//! base64(<user>:<password>)`, [`crate::auth::password`]), a client certificate (`shale://client/<name>`), a
//! node certificate, or nothing (anonymous).

use std::fmt;
use std::net::SocketAddr;

use shale_client::error::status;
use shale_client::scram::{BASIC, Password};
use shale_client::token::{AUTHORIZATION, BEARER, Token, hash_secret};
use shale_client::{ErrorCode, meta};
use shale_raft::cluster::Cluster;
use shale_raft::cluster::access::{TOKEN_HASH_BYTES, validate_principal};
use shale_raft::network::tls::{certified_client, certified_node};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::auth::AuthContext;
use crate::metrics::Metrics;

/// Who a request acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials: matched only by `*` rules.
    Anonymous,
    /// A user (bearer token) or a client certificate's name: one namespace.
    User(String),
    /// A cluster member (its node certificate), acting for itself.
    Node(u64),
}

impl Principal {
    /// The name ACL rules match, `None` for anonymous callers and nodes.
    pub fn user(&self) -> Option<&str> {
        match self {
            Principal::User(name) => Some(name),
            _ => None,
        }
    }

    /// Reads the form [`fmt::Display`] writes (`user:<name>`, `node:<id>`, `anonymous`).
    pub fn parse(text: &str) -> Option<Self> {
        if text == "anonymous" {
            return Some(Principal::Anonymous);
        }
        if let Some(name) = text.strip_prefix("user:") {
            return validate_principal(name).is_ok().then(|| Principal::User(name.to_string()));
        }
        let id: u64 = text.strip_prefix("node:")?.parse().ok()?;
        (id > 0).then_some(Principal::Node(id))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::User(name) => write!(f, "user:{name}"),
            Principal::Node(id) => write!(f, "node:{id}"),
        }
    }
}

/// How a principal was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// No credentials.
    Anonymous,
    /// A bearer token.
    Token,
    /// A user name and password.
    Password,
    /// A client certificate.
    Certificate,
    /// A node certificate, the node acting for itself.
    Node,
    /// Named by the node that forwarded the request (`by`).
    Forwarded {
        /// The forwarding node.
        by: u64,
    },
}

impl Source {
    /// The name the API (`WhoAmI`) and the audit log use.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Anonymous => "anonymous",
            Source::Token => "token",
            Source::Password => "password",
            Source::Certificate => "certificate",
            Source::Node => "node",
            Source::Forwarded { .. } => "forwarded",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// How that was established.
    pub source: Source,
    /// The address the request came from (the forwarding node's, for a forwarded request).
    pub peer: Option<SocketAddr>,
    /// The `authorization` value as sent (bearer token or password), kept to forward the request
    /// without TLS (where a forwarded principal cannot be trusted, the next node checks it itself).
    authorization: Option<String>,
}

impl Caller {
    /// The node's own work (no client request): a node principal.
    pub fn internal() -> Self {
        Self::new(Principal::Node(0), Source::Node, None)
    }

    /// A caller established otherwise than by a bearer token.
    pub fn new(principal: Principal, source: Source, peer: Option<SocketAddr>) -> Self {
        Self { principal, source, peer, authorization: None }
    }
}

/// Compared with a token's hash when its user is unknown, so an unknown user takes the same path as
/// a wrong secret (no secret hashes to it in practice).
const NO_USER_HASH: [u8; TOKEN_HASH_BYTES] = [0xa5; TOKEN_HASH_BYTES];

/// Compares two hashes in time independent of where they differ.
fn same_hash(a: &[u8; TOKEN_HASH_BYTES], b: &[u8; TOKEN_HASH_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks a bearer token against the users this node has applied. An unknown user and a wrong
/// secret take the same steps (hash the secret, compare in constant time with the stored hash or a
/// stand-in) and give the same answer.
pub fn check_token(cluster: &Cluster, token: &Token) -> bool {
    let stored = cluster.user_token_hash(token.user());
    let known = stored.is_some();
    let expected = stored.unwrap_or(NO_USER_HASH);
    let matches = same_hash(&hash_secret(token.secret()), &expected);
    known & matches
}

/// Checks a password against the user's SCRAM credential as this node has applied it (an unknown
/// or token user: the same steps against a stand-in, the same `false`). A key derivation runs off
/// the async threads; a cached verified password answers at once.
pub async fn check_password(cluster: &Cluster, auth: &AuthContext, password: &Password) -> bool {
    let credential = cluster.user_scram(password.user());
    let verifier = auth.passwords.clone();
    let password = password.clone();
    tokio::task::spawn_blocking(move || verifier.check(password.user(), password.password(), credential.as_ref()))
        .await
        .unwrap_or(false)
}

fn unauthenticated(metrics: &Metrics, message: &str) -> Status {
    metrics.auth_unauthenticated.inc();
    status(ErrorCode::Unauthenticated, message.to_string())
}

/// The node and client names in the peer's certificate, if it presented one over TLS.
pub fn peer_identity<T>(request: &Request<T>) -> (Option<u64>, Option<String>) {
    let Some(certs) = request.peer_certs() else { return (None, None) };
    let Some(leaf) = certs.first() else { return (None, None) };
    leaf_identity(leaf.as_ref())
}

/// The node and client names in a peer's leaf certificate (DER).
pub fn leaf_identity(leaf: &[u8]) -> (Option<u64>, Option<String>) {
    let node = certified_node(leaf).ok().flatten();
    let client = if node.is_some() { None } else { certified_client(leaf).ok().flatten() };
    (node, client)
}

/// The caller of a connection that is not a gRPC request (the Kafka listener), from the peer's
/// leaf certificate (DER) over TLS, as [`authenticate`] decides for a request without credentials
/// in its headers: a node certificate is that node, a client certificate its user, none is
/// anonymous. `Err` (why) for a client certificate whose name is not a valid principal.
pub fn connection_caller(leaf: Option<&[u8]>, peer: Option<SocketAddr>) -> Result<Caller, &'static str> {
    let (node, client) = leaf.map(leaf_identity).unwrap_or_default();
    if let Some(name) = client {
        if validate_principal(&name).is_err() {
            return Err("the client certificate's name is not a valid principal");
        }
        return Ok(Caller::new(Principal::User(name), Source::Certificate, peer));
    }
    if let Some(id) = node {
        return Ok(Caller::new(Principal::Node(id), Source::Node, peer));
    }
    Ok(Caller::new(Principal::Anonymous, Source::Anonymous, peer))
}

/// The caller of `request`, or UNAUTHENTICATED: a token that is malformed or not accepted (unknown
/// user or wrong secret, one answer, decided after the metadata caught up with recent changes), a client certificate whose name is not a valid principal, or
/// a forwarded principal from a peer without a node certificate while authorization is on (without
/// it, such a marker is ignored).
pub async fn authenticate<T>(
    request: &Request<T>,
    cluster: &Cluster,
    auth: &AuthContext,
    metrics: &Metrics,
) -> Result<Caller, Status> {
    let peer = request.remote_addr();
    let headers = request.metadata();
    let (node, client) = if auth.tls { peer_identity(request) } else { (None, None) };
    if let Some(claimed) = headers.get(meta::PRINCIPAL) {
        match node {
            Some(by) => {
                let principal = claimed
                    .to_str()
                    .ok()
                    .and_then(Principal::parse)
                    .ok_or_else(|| unauthenticated(metrics, "malformed forwarded principal"))?;
                return Ok(Caller { principal, source: Source::Forwarded { by }, peer, authorization: None });
            }
            None if auth.config.enabled => {
                return Err(unauthenticated(
                    metrics,
                    "a forwarded principal is only accepted from a node (a peer with a node certificate)",
                ));
            }
            None => {}
        }
    }
    if let Some(value) = headers.get(AUTHORIZATION)
        && value.to_str().is_ok_and(|v| v.starts_with(BASIC))
    {
        let sent = value.to_str().unwrap_or_default();
        let password = Password::parse_header(sent).map_err(|_| {
            unauthenticated(metrics, "malformed Basic authorization (expected `Basic base64(<user>:<password>)`)")
        })?;
        // As for tokens: a user created or changed a moment ago may not be applied here yet.
        if !check_password(cluster, auth, &password).await {
            cluster.settle_metadata().await;
            if !check_password(cluster, auth, &password).await {
                return Err(unauthenticated(metrics, "user name or password not accepted"));
            }
        }
        let principal = Principal::User(password.user().to_string());
        return Ok(Caller { principal, source: Source::Password, peer, authorization: Some(sent.to_string()) });
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let text = value.to_str().ok().and_then(|v| v.strip_prefix(BEARER));
        let token = text
            .and_then(|t| Token::parse(t).ok())
            .ok_or_else(|| unauthenticated(metrics, "malformed bearer token (expected `Bearer <user>:<secret>`)"))?;
        // A user created a moment ago may not be applied here yet: catch up once before refusing
        // (the same wait for an unknown user and a wrong secret).
        if !check_token(cluster, &token) {
            cluster.settle_metadata().await;
            if !check_token(cluster, &token) {
                return Err(unauthenticated(metrics, "bearer token not accepted"));
            }
        }
        let principal = Principal::User(token.user().to_string());
        let authorization = text.map(|t| format!("{BEARER}{t}"));
        return Ok(Caller { principal, source: Source::Token, peer, authorization });
    }
    if let Some(name) = client {
        if validate_principal(&name).is_err() {
            return Err(unauthenticated(metrics, "the client certificate's name is not a valid principal"));
        }
        return Ok(Caller { principal: Principal::User(name), source: Source::Certificate, peer, authorization: None });
    }
    if let Some(id) = node {
        return Ok(Caller { principal: Principal::Node(id), source: Source::Node, peer, authorization: None });
    }
    Ok(Caller { principal: Principal::Anonymous, source: Source::Anonymous, peer, authorization: None })
}

/// Sets on a request this node forwards what names its caller to the next node: with TLS the
/// principal (`shale-principal`, which the next node trusts because this node presents its node
/// certificate), without TLS the caller's bearer token or password, if any (the next node checks
/// it itself).
/// The node's own requests carry nothing: the next node sees this node.
pub fn forward_headers(caller: Option<&Caller>, tls: bool, headers: &mut MetadataMap) {
    let Some(caller) = caller else { return };
    if tls {
        if let Ok(v) = caller.principal.to_string().parse() {
            headers.insert(meta::PRINCIPAL, v);
        }
    } else if let Some(sent) = &caller.authorization
        && let Ok(v) = sent.parse()
    {
        headers.insert(AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_print_and_parse() {
        for p in [Principal::Anonymous, Principal::User("a.b-c_d".into()), Principal::Node(3)] {
            assert_eq!(Principal::parse(&p.to_string()), Some(p));
        }
        for bad in ["", "user:", "user:a:b", "node:0", "node:x", "alice", "user:*"] {
            assert_eq!(Principal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_tls_the_callers_authorization_is_forwarded_as_sent() {
        let basic = Password::new("erin", "pw").unwrap().header_value();
        let caller = Caller {
            principal: Principal::User("erin".into()),
            source: Source::Password,
            peer: None,
            authorization: Some(basic.clone()),
        };
        let mut headers = MetadataMap::new();
        forward_headers(Some(&caller), false, &mut headers);
        assert_eq!(headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()), Some(basic.as_str()));
        assert!(headers.get(meta::PRINCIPAL).is_none());
        let mut headers = MetadataMap::new();
        forward_headers(Some(&caller), true, &mut headers);
        assert_eq!(headers.get(meta::PRINCIPAL).and_then(|v| v.to_str().ok()), Some("user:erin"));
        assert!(headers.get(AUTHORIZATION).is_none(), "with TLS the password is not passed on");
    }

    #[test]
    fn hashes_compare_whole() {
        let a = [1u8; 32];
        let mut b = a;
        assert!(same_hash(&a, &b));
        b[31] ^= 1;
        assert!(!same_hash(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!same_hash(&a, &b));
    }
}
