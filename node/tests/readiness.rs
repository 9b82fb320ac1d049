//! Readiness follows the metadata group's majority, and `shale-node healthcheck`'s probe reads it.

mod common;

use std::time::Duration;

use common::{TestCluster, WAIT, http_get};
use shale_node::healthcheck::ProbeTarget;

/// Polls `GET /readyz` on node `id` until it answers `want`; panics after [`WAIT`]. Returns the body.
async fn wait_readyz(c: &TestCluster, id: u64, want: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = http_get(c.http[id as usize - 1], "/readyz").await;
        if code == want {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {id} /readyz never answered {want}; last {code}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_majority_is_not_ready_until_one_peer_returns() {
    let mut c = TestCluster::start(3).await;
    // Keep the metadata leader: openraft keeps it leading after its peers die, which is the case
    // readiness must catch (a lone follower simply loses its leader).
    let survivor = c.node(1).cluster().metadata_leader().expect("a metadata leader").0;
    wait_readyz(&c, survivor, 200).await;
    let probe = ProbeTarget::local(c.http[survivor as usize - 1], "/readyz").unwrap();
    assert_eq!(probe.probe(Duration::from_secs(2)).await.unwrap(), 200);

    let others: Vec<u64> = (1..=3).filter(|&id| id != survivor).collect();
    for &id in &others {
        c.stop(id).await;
    }
    let body = wait_readyz(&c, survivor, 503).await;
    assert!(body.starts_with("not ready:"), "{body}");
    assert!(c.node(survivor).readiness().is_err(), "the handle agrees with /readyz");
    assert_eq!(probe.probe(Duration::from_secs(2)).await.unwrap(), 503, "healthcheck sees the 503");

    c.restart(others[0]).await;
    wait_readyz(&c, survivor, 200).await;
    assert!(c.node(others[0]).wait_ready(WAIT).await, "the restarted node becomes ready too");
    assert_eq!(probe.probe(Duration::from_secs(2)).await.unwrap(), 200);
    let missing = ProbeTarget::local(c.http[survivor as usize - 1], "/no-such-path").unwrap();
    assert_eq!(missing.probe(Duration::from_secs(2)).await.unwrap(), 404);
    c.shutdown().await;
}
