//! The HTTP side: `/healthz` (the process serves), `/readyz` (the metadata group has a leader, so
//! the node can serve requests) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use shale_raft::cluster::Cluster;
use shale_storage::StorageBackend;

use crate::context::NodeContext;

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The node's shared context.
    pub ctx: Arc<NodeContext>,
    /// The node's storage (for byte counts).
    pub storage: Arc<dyn StorageBackend>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether a node can serve: the metadata group has a leader and the applied metadata lists this
/// node as a member. `Ok` names the leader, `Err` says what is missing.
pub fn readiness(cluster: &Cluster, node_id: u64) -> Result<String, String> {
    let Some((id, addr)) = cluster.metadata_leader() else {
        return Err("the metadata group has no leader".into());
    };
    if !cluster.cluster_status().members.iter().any(|m| m.id == node_id) {
        return Err(format!("node {node_id} is not yet a member in the applied metadata"));
    }
    Ok(format!("metadata leader is node {id} at {addr}"))
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match readiness(&state.ctx.cluster, state.ctx.node_id) {
        Ok(what) => (StatusCode::OK, format!("ready: {what}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    // Consumer-group lag export waits for `Cluster::list_groups` (see notes/cluster-api.md).
    let lag = Vec::new();
    let body = state.ctx.metrics.render(&state.ctx.cluster, state.storage.as_ref(), &lag);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}
