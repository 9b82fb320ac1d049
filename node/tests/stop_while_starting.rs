//! A node stopped while it is still starting a new topic's Raft groups stops them all within its
//! grace period and releases its storage (the directory lock, every stream closed), so a restart
//! opens it at once. (A chaos run saw a SIGTERM'd node keep going past its grace period with
//! "storage still referenced after shutdown"; closing hundreds of streams in the storage's drop,
//! after the deadline, one after another, was part of it.)

use std::time::Duration;

use shale_client::admin::NewTopic;
use shale_client::{Client, ClientConfig};
use shale_node::testing::LocalCluster;
use shale_storage::Storage;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_while_starting_a_topics_groups_releases_its_storage_within_its_grace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::start(3, root.path(), |_| {}).await.expect("start");
    assert!(c.not_ready(WAIT).await.is_empty());
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 40;
    let client = Client::new(config).unwrap();
    // Stop right away, and a little later, while the victim's reconcile starts the groups.
    for (round, delay_ms) in [0u64, 30, 100].into_iter().enumerate() {
        let victim = 1 + round as u64;
        client
            .admin()
            .create_topic(NewTopic::new(format!("t{round}"), 16, 3))
            .await
            .unwrap_or_else(|e| panic!("round {round}: create topic: {e:?}"));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let grace = c.running(victim).unwrap().grace();
        let started = std::time::Instant::now();
        let stopped = c.stop(victim).await;
        let took = started.elapsed();
        // The directory lock is free: every group and task let the storage go.
        let reopened = Storage::open(c.data_dir(victim));
        assert!(
            reopened.is_ok(),
            "round {round}: storage still held after the stop ({stopped:?}): {:?}",
            reopened.err()
        );
        drop(reopened);
        assert!(stopped.is_ok(), "round {round}: {stopped:?}");
        assert!(took <= grace + Duration::from_millis(500), "round {round}: the stop overran its grace: {took:?}");
        c.restart(victim).await.expect("restart");
        assert!(c.not_ready(WAIT).await.is_empty());
    }
    c.shutdown().await.unwrap();
}
