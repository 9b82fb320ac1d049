//! The audit log: one structured line per admin, user or ACL change this node was asked for (by a
//! client, not a forwarding node: the node a client called logs it once, with the client's
//! address), on the tracing target [`TARGET`], whatever came of it (done, refused, failed).
//!
//! Fields: `action` (the RPC, e.g. `create_topic`), `resource`, `principal`, `source` (how the
//! principal was established), `peer` (the client's address), `outcome` (`ok`, or the error
//! code), `at_ms` (Unix milliseconds; the log line's own timestamp says the same) and `detail`.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::auth::{Caller, Source, current, shorten};

/// The tracing target of audit lines (`RUST_LOG=shale_audit=info` keeps them on).
pub const TARGET: &str = "shale_audit";

/// Logs one admin action of the current caller and what came of it.
pub fn record(action: &'static str, resource: &str, detail: &str, result: Result<(), &Status>) {
    let caller = current().unwrap_or_else(Caller::internal);
    if matches!(caller.source, Source::Forwarded { .. }) {
        // The node the client called logs it.
        return;
    }
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let peer = caller.peer.map(|p| p.to_string()).unwrap_or_default();
    let outcome = match result {
        Ok(()) => "ok".to_string(),
        Err(status) => status
            .metadata()
            .get(shale_client::meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("{:?}", status.code()), str::to_string),
    };
    let (resource, detail) = (shorten(resource), shorten(detail));
    tracing::info!(
        target: TARGET,
        action,
        resource,
        principal = %caller.principal,
        source = caller.source.as_str(),
        peer,
        outcome,
        at_ms,
        detail,
        "audit"
    );
}

/// Runs an admin action and records it ([`record`]) with its outcome.
pub async fn audited<T>(
    action: &'static str,
    resource: &str,
    detail: &str,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let result = fut.await;
    record(action, resource, detail, result.as_ref().map(|_| ()));
    result
}
