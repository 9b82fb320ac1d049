//! Who is calling, and may they: principals from client certificates, bearer tokens and passwords
//! ([`principal`], [`password`]), ACL checks against the metadata group's rules ([`AuthContext::authorize`]), and
//! the audit log of admin changes ([`audit`]). See docs/security.md ("Principals", "ACLs").
//!
//! [`crate::context::NodeContext::handle`] authenticates every client-API request before its
//! handler runs and keeps the [`Caller`] for the handler's task ([`current`]): handlers authorize
//! with [`AuthContext::authorize`], and a forwarded request carries the caller on
//! ([`principal::forward_headers`]).

pub mod audit;
pub mod password;
pub mod principal;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use shale_client::ErrorCode;
use shale_client::error::status;
use shale_raft::cluster::Cluster;
use shale_raft::cluster::access::{Operation, Resource};
use tonic::Status;

use crate::metrics::Metrics;
pub use principal::{Caller, Principal, Source};

/// `[auth]` in the node config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Enforce ACLs (`SHALE_AUTH_ENABLED`): what no rule allows is refused with NOT_AUTHORIZED.
    /// Off (the default): every request is allowed, as before; credentials that are presented are
    /// still checked.
    pub enabled: bool,
    /// Principals allowed everything without a rule (`SHALE_SUPER_USERS`, comma-separated): user
    /// or client-certificate names. Nodes (a node certificate without a forwarded principal) are
    /// always allowed.
    pub super_users: BTreeSet<String>,
}

/// The authorization settings a node runs with.
#[derive(Clone, Debug, Default)]
pub struct AuthContext {
    /// The `[auth]` settings.
    pub config: AuthConfig,
    /// Whether the listener speaks TLS (then peers can be told apart by their certificates).
    pub tls: bool,
    /// Checks passwords and caches the verified ones (one per node).
    pub passwords: Arc<password::PasswordVerifier>,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The caller of the request this task serves (`None` outside a client-API handler: the node's
/// own background work).
pub fn current() -> Option<Caller> {
    CALLER.try_with(Caller::clone).ok()
}

/// Runs `fut` as `caller`'s request ([`current`] answers it inside).
pub async fn serve_as<F: Future>(caller: Caller, fut: F) -> F::Output {
    CALLER.scope(caller, fut).await
}

/// At most this many bytes of a resource name go into a refusal (the name was checked against its
/// limits before, but a refusal must never echo a huge value).
const MAX_NAME_IN_MESSAGE: usize = 256;

impl AuthContext {
    /// Whether `principal` may do anything: a node, or a configured super-user.
    pub fn is_super(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Node(_) => true,
            Principal::User(name) => self.config.super_users.contains(name),
            Principal::Anonymous => false,
        }
    }

    /// Allows the current caller `operation` on `resource`, or refuses it: PERMISSION_DENIED with
    /// `NOT_AUTHORIZED`, naming the principal, the operation and the resource, counted in
    /// `metrics`. A refusal is decided only after the node's metadata caught up with recent changes
    /// ([`Cluster::settle_metadata`]), so a rule added a moment ago counts. Always allowed while
    /// authorization is off.
    pub async fn authorize(
        &self,
        cluster: &Cluster,
        metrics: &Metrics,
        operation: Operation,
        resource: Resource<'_>,
    ) -> Result<(), Status> {
        if !self.config.enabled {
            return Ok(());
        }
        let caller = current().unwrap_or_else(Caller::internal);
        if self.allows(cluster, &caller.principal, operation, resource) {
            return Ok(());
        }
        cluster.settle_metadata().await;
        if self.allows(cluster, &caller.principal, operation, resource) {
            return Ok(());
        }
        metrics.count_denied(operation.as_str());
        let resource = shorten(&resource.to_string());
        tracing::debug!(principal = %caller.principal, %operation, %resource, peer = ?caller.peer, "not authorized");
        Err(status(
            ErrorCode::NotAuthorized,
            format!("principal {} is not allowed {operation} on {resource}", caller.principal),
        ))
    }

    /// Whether `principal` may do `operation` on `resource` (super-users and nodes always; others
    /// by the rules this node has applied). Always while authorization is off.
    pub fn allows(
        &self,
        cluster: &Cluster,
        principal: &Principal,
        operation: Operation,
        resource: Resource<'_>,
    ) -> bool {
        !self.config.enabled || self.is_super(principal) || cluster.access_allows(principal.user(), operation, resource)
    }
}

/// `s`, cut to a bounded length for a message or log line.
pub(crate) fn shorten(s: &str) -> String {
    if s.len() <= MAX_NAME_IN_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_NAME_IN_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
