//! deploy/docker-compose.yml brought up for real (under its own project name and loopback ports):
//! the `certs` job makes the certificates, every node becomes healthy through the image's
//! healthcheck, a plaintext client is refused and an anonymous one may not create a topic, and a
//! client outside the network with the job's super-user certificate writes through one published
//! port and reads the same records back from every node's port.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{Client, NewTopic, proto};
use shale_tests::checkers;
use shale_tests::compose::{ComposeCommand, ComposeProject};
use shale_tests::image::ensure_image;
use shale_tests::workload::{self, Ack, History, node_channel, test_client_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_becomes_healthy_and_serves_through_published_ports() {
    shale_tests::init_logging();
    let image = ensure_image().await.unwrap();
    let compose = ComposeCommand::installed().await.into_iter().next().expect("a Compose is installed");
    let project = ComposeProject::up(compose, &image).await.unwrap();
    project.wait_healthy(Duration::from_secs(120)).await.unwrap();

    let grpc: BTreeMap<u64, String> =
        project.ports.iter().map(|(id, (g, _))| (*id, format!("127.0.0.1:{g}"))).collect();

    // Secure by default: the host client uses the CA and the super-user certificate the `certs` job
    // made, copied out of its container (deploy/README.md).
    let files = tempfile::tempdir().unwrap();
    let credentials = project.client_credentials(files.path()).await.unwrap();
    shale_tests::tls::use_credentials(credentials.clone()).unwrap();
    let mut plain = test_client_config(grpc.values().cloned().collect());
    plain.tls = None;
    plain.max_attempts = 1;
    let refused = Client::new(plain).unwrap().admin().cluster_status().await;
    assert!(refused.is_err(), "a plaintext client is served: {refused:?}");
    let mut anonymous = test_client_config(grpc.values().cloned().collect());
    anonymous.tls = Some(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&credentials.ca)),
    );
    anonymous.max_attempts = 1;
    let denied = Client::new(anonymous).unwrap().admin().create_topic(NewTopic::new("anonymous", 1, 3)).await;
    assert!(
        matches!(&denied, Err(e) if e.to_string().contains("NOT_AUTHORIZED") || e.to_string().contains("not allowed")),
        "authorization is on: an anonymous client may not create a topic: {denied:?}"
    );
    let client = Client::new(test_client_config(grpc.values().cloned().collect())).unwrap();
    client.admin().create_topic(NewTopic::new("compose", 1, 3)).await.unwrap();
    // Members are advertised to clients at their published ports on the host (issue 14: they were
    // `node-N:7001`, which a host client cannot resolve), so a host client follows leaders itself.
    let status = client.admin().cluster_status().await.unwrap();
    let advertised: BTreeMap<u64, String> = status.members.iter().map(|m| (m.id, m.addr.clone())).collect();
    assert_eq!(advertised, grpc, "{status:?}");

    // Produce through node 1's published port: the node forwards to the partition leader.
    let mut produce = ProduceClient::new(node_channel(&grpc[&1]).unwrap());
    let mut history = History::default();
    for batch in 0..5u64 {
        let values: Vec<Bytes> = (0..4).map(|i| Bytes::from(format!("compose/b{batch}/r{i}"))).collect();
        let records = values
            .iter()
            .map(|v| proto::Record { key: None, value: v.clone(), headers: Vec::new(), timestamp_ms: 0 })
            .collect();
        let req = proto::ProduceRequest { topic: "compose".into(), partition: 0, records, producer: None };
        // Right after creation the partition may not have elected its leader yet (UNAVAILABLE): retry,
        // bounded. No other error is retried, and a batch is only resent when it was refused.
        let mut attempts = 0;
        let resp = loop {
            attempts += 1;
            match produce.produce(req.clone()).await {
                Ok(r) => break r.into_inner(),
                Err(s) if s.code() == tonic::Code::Unavailable && attempts < 50 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => panic!("produce through node 1 failed after {attempts} attempts: {s}"),
            }
        };
        // One stored batch per request (4 small records fit one entry); record i at base + i.
        assert_eq!(resp.batches.len(), 1, "{resp:?}");
        let stored = &resp.batches[0];
        assert_eq!(stored.record_count as usize, values.len());
        for (i, value) in values.into_iter().enumerate() {
            history.acks.push(Ack {
                run: "compose".into(),
                producer: 0,
                seq: batch * 4 + i as u64,
                value,
                partition: 0,
                offset: stored.base_offset + i as u64,
                chain_hash: stored.chain_hash.as_ref().try_into().unwrap(),
                entry_index: stored.entry_index,
            });
        }
    }

    // Every node's published port serves its own replica with every record.
    workload::wait_replicas_converged(&grpc, "compose", 1, Duration::from_secs(60)).await.unwrap();
    let views = workload::read_all_replicas(&grpc, "compose", 1).await.unwrap();
    let verify = workload::verify_all(&client, "compose", 1, &BTreeMap::new()).await.unwrap();
    if let Err(violations) = checkers::check_all(&history, &views, &verify, 3, true) {
        panic!("{}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
    eprintln!("compose project {}: 20 records on every node", project.name());
}
