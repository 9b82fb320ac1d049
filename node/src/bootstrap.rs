//! Cluster bootstrap: the lowest-id initial peer initialises the metadata group once every
//! initial peer answers `ClusterStatus`. Restarted nodes rejoin from their storage: nothing happens
//! when this node already knows a metadata leader, or when any peer reports one (a node whose disk
//! was wiped must not re-initialise a cluster whose membership may have changed since; it is
//! re-added with AddNode instead). `Cluster::bootstrap` is idempotent anyway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_raft::cluster::Cluster;
use shale_raft::network::tls::TlsPem;
use tokio::sync::watch;

/// Pause between reachability rounds and failed attempts.
const RETRY: Duration = Duration::from_millis(200);
/// Bound on one peer probe (connect + ClusterStatus).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether `node_id` is the one that bootstraps `members`.
pub fn is_bootstrapper(node_id: u64, members: &BTreeMap<u64, String>) -> bool {
    members.keys().next() == Some(&node_id)
}

/// What a peer said about the metadata group: `None` if it did not answer in time.
async fn probe(addr: &str, tls: Option<&TlsPem>) -> Option<PeerView> {
    let endpoint = shale_raft::network::peers::endpoint(addr, tls).ok()?.connect_timeout(PROBE_TIMEOUT);
    let call = async {
        let channel = endpoint.connect().await.ok()?;
        let status = AdminClient::new(channel).cluster_status(proto::ClusterStatusRequest {}).await.ok()?;
        Some(match status.into_inner().meta {
            Some(meta) if meta.leader_id != 0 => PeerView::HasLeader(meta.leader_id),
            _ => PeerView::NoLeader,
        })
    };
    tokio::time::timeout(PROBE_TIMEOUT, call).await.ok().flatten()
}

/// A peer's answer to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerView {
    /// The peer knows a metadata leader: the cluster exists.
    HasLeader(u64),
    /// The peer is up and knows no leader.
    NoLeader,
}

/// Runs until the cluster is bootstrapped (or this node is not the bootstrapper, or shutdown).
pub async fn run(
    cluster: Arc<Cluster>,
    node_id: u64,
    members: BTreeMap<u64, String>,
    mut shutdown: watch::Receiver<bool>,
) {
    if !is_bootstrapper(node_id, &members) {
        return;
    }
    loop {
        if *shutdown.borrow() {
            return;
        }
        if cluster.metadata_leader().is_some() {
            tracing::debug!("metadata group already has a leader; no bootstrap needed");
            return;
        }
        let mut missing = Vec::new();
        let mut existing_leader = None;
        for (id, addr) in &members {
            if *id == node_id {
                continue;
            }
            match probe(addr, cluster.router().config().tls.as_ref()).await {
                None => missing.push(*id),
                Some(PeerView::HasLeader(leader)) => existing_leader = Some((*id, leader)),
                Some(PeerView::NoLeader) => {}
            }
        }
        if let Some((peer, leader)) = existing_leader {
            tracing::info!(peer, leader, "a peer already knows a metadata leader; not bootstrapping");
            return;
        }
        if missing.is_empty() {
            tracing::info!(members = ?members, "bootstrapping the cluster");
            match cluster.bootstrap(members.clone()).await {
                Ok(()) => {
                    tracing::info!("cluster bootstrapped");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "bootstrap failed; retrying"),
            }
        } else {
            tracing::debug!(?missing, "waiting for initial peers before bootstrapping");
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_id_bootstraps() {
        let members = BTreeMap::from([(3, "c:1".to_string()), (1, "a:1".to_string()), (2, "b:1".to_string())]);
        assert!(is_bootstrapper(1, &members));
        assert!(!is_bootstrapper(2, &members));
        assert!(!is_bootstrapper(3, &members));
    }
}
