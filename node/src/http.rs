//! The HTTP side: `/healthz` (the process serves), `/readyz` (no local group stopped by an error, and
//! the metadata group has a leader that a quorum still acknowledges, so the node can serve requests) and `/metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

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
    /// Readiness bound on the age of the metadata leader's last quorum acknowledgement.
    pub ready_quorum_ack_max: Duration,
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

/// Whether a node can serve: no local Raft group is stopped by an error (e.g. a full disk), the
/// metadata group has a leader, the leader still has a majority, and the applied metadata lists
/// this node as a member. `Ok` names the leader, `Err` says what is
/// missing.
///
/// The majority is checked where it can be seen: on the metadata leader, a quorum of voters must
/// have acknowledged it within `quorum_ack_max` (openraft keeps a leader whose peers are gone
/// leading). A follower knows a leader only while it hears from one: without heartbeats it starts
/// an election within `election_timeout_max_ms` and then knows no leader.
pub fn readiness(cluster: &Cluster, node_id: u64, quorum_ack_max: Duration) -> Result<String, String> {
    // A group stopped by an error (a full disk) does not serve here until it is restarted.
    let stopped = cluster.stopped_groups();
    if let Some(first) = stopped.first() {
        return Err(format!(
            "{} raft group(s) stopped on an error here (restarted from disk automatically; ready once each has run again for {} s); group {} stopped {} ms ago{}: {}",
            stopped.len(),
            shale_raft::cluster::HEALTHY_AFTER.as_secs(),
            first.group,
            first.stopped_for.as_millis(),
            first.running_again_for.map_or(String::new(), |d| format!(", running again for {} ms", d.as_millis())),
            first.reason
        ));
    }
    let Some((id, addr)) = cluster.metadata_leader() else {
        return Err("the metadata group has no leader".into());
    };
    if id == node_id {
        let limit_ms = quorum_ack_max.as_millis();
        match cluster.metadata_quorum_ack_age() {
            None => return Err("this node leads the metadata group but no quorum has acknowledged it yet".into()),
            Some(age) if age > quorum_ack_max => {
                return Err(format!(
                    "this node leads the metadata group but a quorum last acknowledged it {} ms ago (limit {limit_ms} ms)",
                    age.as_millis()
                ));
            }
            Some(_) => {}
        }
    }
    if !cluster.cluster_status().members.iter().any(|m| m.id == node_id) {
        return Err(format!("node {node_id} is not yet a member in the applied metadata"));
    }
    Ok(format!("metadata leader is node {id} at {addr}"))
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match readiness(&state.ctx.cluster, state.ctx.node_id, state.ready_quorum_ack_max) {
        Ok(what) => (StatusCode::OK, format!("ready: {what}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.ctx.metrics.requests_in_flight.set(state.ctx.in_flight.count() as u64);
    let body = state.ctx.metrics.render(&state.ctx.cluster, state.storage.as_ref());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}
