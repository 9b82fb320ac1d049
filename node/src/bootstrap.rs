//! Cluster bootstrap: the lowest-id initial peer initialises the metadata group once every
//! initial peer answers `ClusterStatus`. Restarted nodes rejoin from their storage: nothing happens
//! when this node already knows a metadata leader, or when any peer reports one (a node whose disk
//! was wiped must not re-initialise a cluster whose membership may have changed since; it is
//! re-added with AddNode instead). `Cluster::bootstrap` is idempotent anyway.
//!
//! `peers` name internal addresses; the probe also learns each peer's client address (its
//! ClusterStatus answer), so the members are recorded with both. Afterwards every node keeps
//! checking that the metadata records its own client address ([`register`]) and re-addresses itself
//! (AddNode through the metadata leader) when it does not: the metadata leader that recorded the
//! members was not the bootstrapper, or the node was restarted with another `client_advertise`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shale_client::proto;
use shale_client::proto::admin_client::AdminClient;
use shale_raft::cluster::{Cluster, MemberAddrs};
use shale_raft::network::tls::TlsPem;
use tokio::sync::watch;

use crate::context::NodeContext;

/// Pause between reachability rounds and failed attempts.
const RETRY: Duration = Duration::from_millis(200);
/// Bound on one peer probe (connect + ClusterStatus).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether `node_id` is the one that bootstraps `members`.
pub fn is_bootstrapper(node_id: u64, members: &BTreeMap<u64, String>) -> bool {
    members.keys().next() == Some(&node_id)
}

/// A node's ClusterStatus, asked at its internal address: `None` if it did not answer in time.
async fn status_of(addr: &str, tls: Option<&TlsPem>) -> Option<proto::ClusterStatusResponse> {
    let endpoint = shale_raft::network::peers::endpoint(addr, tls).ok()?.connect_timeout(PROBE_TIMEOUT);
    let call = async {
        let channel = endpoint.connect().await.ok()?;
        let status = AdminClient::new(channel).cluster_status(proto::ClusterStatusRequest {}).await.ok()?;
        Some(status.into_inner())
    };
    tokio::time::timeout(PROBE_TIMEOUT, call).await.ok().flatten()
}

/// The addresses the node at internal address `addr` advertises (its ClusterStatus
/// `client_addr` and `kafka_addr`, either empty when it names none), if it answers.
pub async fn probe_addrs(addr: &str, tls: Option<&TlsPem>) -> Option<MemberAddrs> {
    status_of(addr, tls).await.map(|s| MemberAddrs::pair(addr, s.client_addr).with_kafka(s.kafka_addr))
}

/// What a peer said about the metadata group, and the client and Kafka addresses it advertises
/// (either empty when it names none): `None` if it did not answer in time.
async fn probe(addr: &str, tls: Option<&TlsPem>) -> Option<(PeerView, String, String)> {
    let status = status_of(addr, tls).await?;
    let view = match status.meta {
        Some(meta) if meta.leader_id != 0 => PeerView::HasLeader(meta.leader_id),
        _ => PeerView::NoLeader,
    };
    Some((view, status.client_addr, status.kafka_addr))
}

/// A peer's answer to the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerView {
    /// The peer knows a metadata leader: the cluster exists.
    HasLeader(u64),
    /// The peer is up and knows no leader.
    NoLeader,
}

/// Bootstraps the cluster if this node is the bootstrapper, then keeps this node's recorded client
/// address current ([`register`]); ends at shutdown.
pub async fn run(ctx: Arc<NodeContext>, node_id: u64, members: BTreeMap<u64, String>, shutdown: watch::Receiver<bool>) {
    if is_bootstrapper(node_id, &members) {
        bootstrap(ctx.cluster.clone(), node_id, members, shutdown.clone()).await;
    }
    register(&ctx, shutdown).await;
}

/// Pause between checks of this node's recorded addresses.
const REGISTER_EVERY: Duration = Duration::from_secs(1);

/// For the node's lifetime (until shutdown), every [`REGISTER_EVERY`]: when the metadata lists this
/// node with another client address than it advertises, asks the metadata leader to re-address it
/// (AddNode with the recorded internal address and this node's client address; the leader may be
/// this node). A member's own `client_advertise` is what clients are told of it: a different
/// address recorded by `shale cluster add-node --client-addr` is replaced once the node runs. Over TLS the request carries this node's certificate (a node may do
/// anything); without TLS and with authorization on it is refused (the probe at bootstrap and
/// AddNode's `client_addr` record client addresses then).
pub async fn register(ctx: &NodeContext, mut shutdown: watch::Receiver<bool>) {
    let cluster = &ctx.cluster;
    let id = cluster.node_id();
    let own = cluster.own_client_addr();
    let own_kafka = cluster.own_kafka_addr();
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Some(recorded) = cluster.member_addrs(id).filter(|r| r.client != own || r.kafka != own_kafka) {
            let addrs = MemberAddrs::pair(recorded.internal.clone(), own.clone()).with_kafka(own_kafka.clone());
            let result = match cluster.metadata_leader() {
                Some((leader, _)) if leader == id => cluster.add_node(id, addrs).await.map_err(|e| e.to_string()),
                Some((_, leader_addr)) => {
                    let req = proto::AddNodeRequest {
                        node_id: id,
                        addr: addrs.internal,
                        client_addr: addrs.client,
                        kafka_addr: addrs.kafka,
                    };
                    ctx.forward(&leader_addr, req, AdminClient::add_node).await.map(|_| ()).map_err(|s| s.to_string())
                }
                None => Err("no metadata leader".to_string()),
            };
            match result {
                Ok(()) => tracing::info!(
                    node_id = id,
                    client_addr = %own,
                    kafka_addr = %own_kafka,
                    "recorded this node's client and Kafka addresses"
                ),
                Err(e) => tracing::debug!(node_id = id, error = %e, "cannot record this node's client address yet"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(REGISTER_EVERY) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs until the cluster is bootstrapped (or shutdown).
async fn bootstrap(
    cluster: Arc<Cluster>,
    node_id: u64,
    members: BTreeMap<u64, String>,
    mut shutdown: watch::Receiver<bool>,
) {
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
        let mut addrs = BTreeMap::new();
        for (id, addr) in &members {
            if *id == node_id {
                let own =
                    MemberAddrs::pair(addr.clone(), cluster.own_client_addr()).with_kafka(cluster.own_kafka_addr());
                addrs.insert(*id, own);
                continue;
            }
            match probe(addr, cluster.router().peers().tls().as_ref()).await {
                None => missing.push(*id),
                Some((view, client, kafka)) => {
                    if let PeerView::HasLeader(leader) = view {
                        existing_leader = Some((*id, leader));
                    }
                    // A peer that names no client address serves clients where nodes reach it.
                    let client = if client.is_empty() { addr.clone() } else { client };
                    addrs.insert(*id, MemberAddrs::pair(addr.clone(), client).with_kafka(kafka));
                }
            }
        }
        if let Some((peer, leader)) = existing_leader {
            tracing::info!(peer, leader, "a peer already knows a metadata leader; not bootstrapping");
            return;
        }
        if missing.is_empty() {
            tracing::info!(members = ?members, "bootstrapping the cluster");
            match cluster.bootstrap(addrs).await {
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
