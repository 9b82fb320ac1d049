//! TLS on a real three-node cluster in process (issue 14): clients and nodes talk over rustls on
//! loopback; what does not present the right certificate is refused.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{WAIT, consumer_config};
use shale_client::admin::NewTopic;
use shale_client::{Client, ClientConfig, ProducerConfig, ProducerRecord};
use shale_node::testing::LocalCluster;
use shale_raft::network::guard::{ERROR_CODE_KEY, REFUSED_CODE};
use shale_raft::network::pb::{self, raft_service_client::RaftServiceClient};
use shale_raft::network::tls::files::{self, CA_CERT};
use shale_raft::network::tls::generate;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

fn quick(c: &mut shale_node::NodeConfig) {
    c.raft.heartbeat_interval_ms = 50;
    c.raft.election_timeout_min_ms = 300;
    c.raft.election_timeout_max_ms = 600;
}

async fn start(root: &Path) -> LocalCluster {
    let c = LocalCluster::start_tls(3, root, quick).await.expect("TLS cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader over TLS");
    c
}

fn client(c: &LocalCluster, tls: Option<ClientTlsConfig>) -> Client {
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 3;
    config.request_timeout_ms = 3_000;
    config.tls = tls;
    Client::new(config).expect("client")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A raw Raft client to `addr` presenting `identity` (cert, key PEM), trusting the cluster CA.
async fn raft_client(c: &LocalCluster, addr: &str, identity: Option<(Vec<u8>, Vec<u8>)>) -> RaftServiceClient<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&c.tls_dir().join(CA_CERT))));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("TLS connection");
    RaftServiceClient::new(channel)
}

fn node_identity(c: &LocalCluster, id: u64) -> (Vec<u8>, Vec<u8>) {
    (read(&c.tls_dir().join(files::node_cert(id))), read(&c.tls_dir().join(files::node_key(id))))
}

/// A client certificate signed by the cluster's CA, valid from 10 days ago until yesterday.
fn expired_client(c: &LocalCluster) -> (Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::from_pem(&String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap()).unwrap();
    let ca_cert = String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI("shale://client/late".try_into().unwrap()));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(10);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

fn assert_refused(status: tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    let code = status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok());
    assert_eq!(code, Some(REFUSED_CODE), "{what}: {status:?}");
}

fn metadata_leader(c: &LocalCluster) -> u64 {
    c.running(1).unwrap().cluster().metadata_leader().expect("a metadata leader").0
}

/// The term of the metadata group's vote on node `id`.
fn metadata_term(c: &LocalCluster, id: u64) -> u64 {
    let group = c.running(id).unwrap().cluster().router().group(shale_raft::GroupId::METADATA).unwrap();
    group.metrics().vote.leader_id.term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_produces_and_consumes() {
    let root = tempfile::tempdir().unwrap();
    let c = start(root.path()).await;
    let client = client(&c, c.client_tls());
    client.admin().create_topic(NewTopic::new("secure", 3, 3)).await.expect("create topic over TLS");
    // The partition groups elect their leaders over TLS (slow on a loaded machine): the client
    // here retries only 3 times.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = client.admin().describe_topic("secure").await.expect("describe");
        if t.partitions.iter().all(|p| p.leader_id != 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "partitions without a leader: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = client.producer(ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..30u32 {
        acks.push(producer.send_and_wait(ProducerRecord::new("secure", format!("v{i}")).key(i.to_string())).await);
    }
    producer.close().await.unwrap();
    let acks: Vec<_> = acks.into_iter().collect::<Result<_, _>>().expect("every record acknowledged");
    let mut consumer = client.consumer(consumer_config(None));
    consumer.subscribe("secure").await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < acks.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {} records read", got.len(), acks.len());
        got.extend(consumer.poll().await.unwrap());
    }
    assert_eq!(got.len(), acks.len());
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_without_the_cluster_ca_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let c = start(root.path()).await;

    // Plaintext against the TLS listener.
    let plain = client(&c, None);
    plain.admin().list_topics().await.expect_err("a plaintext client is refused");

    // TLS, but trusting another CA: the node's certificate does not verify.
    let other = generate::ca("another CA", 1).unwrap();
    let wrong = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.cert.as_bytes()));
    client(&c, Some(wrong)).admin().list_topics().await.expect_err("a client trusting another CA is refused");

    // A client certificate from another CA is refused by the node, even with the right CA trusted.
    let foreign = generate::client(&other, "mallory", 1).unwrap();
    let tls = c.client_tls().unwrap().identity(Identity::from_pem(foreign.cert, foreign.key));
    client(&c, Some(tls)).admin().list_topics().await.expect_err("a certificate of another CA is refused");

    // A client certificate of the cluster CA that has expired.
    let expired = expired_client(&c);
    let tls = c.client_tls().unwrap().identity(Identity::from_pem(expired.0, expired.1));
    client(&c, Some(tls)).admin().list_topics().await.expect_err("an expired certificate is refused");

    // The right CA works, with no client certificate or with a valid one of the cluster CA.
    client(&c, c.client_tls()).admin().list_topics().await.expect("the cluster CA is trusted");
    let ca = generate::Pem {
        cert: String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap(),
        key: String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap(),
    };
    let alice = generate::client(&ca, "alice", 1).unwrap();
    let tls = c.client_tls().unwrap().identity(Identity::from_pem(alice.cert, alice.key));
    client(&c, Some(tls)).admin().list_topics().await.expect("a valid client certificate is accepted");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_rpcs_need_the_senders_own_node_certificate() {
    let root = tempfile::tempdir().unwrap();
    let c = start(root.path()).await;
    let leader = metadata_leader(&c);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let addr = c.grpc[follower as usize - 1].to_string();
    let term = metadata_term(&c, follower);
    let other = (1..=3).find(|&id| id != leader && id != follower).unwrap();

    // A vote in the name of `other`, at a term that would depose the leader.
    let vote = |node_id: u64, term: u64| pb::VoteRequest {
        group_id: 0,
        vote: Some(pb::Vote { term, node_id, committed: false }),
        last_log_id: None,
        leadership_transfer: true,
        pre_vote: false,
    };

    // No certificate at all.
    let mut anon = raft_client(&c, &addr, None).await;
    assert_refused(anon.vote(vote(other, term + 1)).await.unwrap_err(), "no certificate");

    // A client certificate of the cluster CA: it names no node.
    let ca = generate::Pem {
        cert: String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap(),
        key: String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap(),
    };
    let alice = generate::client(&ca, "alice", 1).unwrap();
    let mut as_client = raft_client(&c, &addr, Some((alice.cert.into_bytes(), alice.key.into_bytes()))).await;
    assert_refused(as_client.vote(vote(other, term + 1)).await.unwrap_err(), "a client certificate");

    // Node `leader`'s certificate presented for a vote claiming to come from `other`.
    let mut impostor = raft_client(&c, &addr, Some(node_identity(&c, leader))).await;
    let status = impostor.vote(vote(other, term + 1)).await.unwrap_err();
    assert_refused(status.clone(), "another member's certificate");
    assert!(status.message().contains("certificate"), "{status:?}");

    // Its own certificate, but a term near the overflow.
    let mut own = raft_client(&c, &addr, Some(node_identity(&c, other))).await;
    assert_refused(own.vote(vote(other, u64::MAX)).await.unwrap_err(), "a huge term");

    // Nothing reached openraft: the same leader, the same term.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(metadata_leader(&c), leader, "the metadata leader did not change");
    let now = metadata_term(&c, follower);
    assert_eq!(now, term, "the follower's term did not move");
    assert!(c.running(follower).unwrap().cluster().router().refused_rpcs() >= 4, "refusals are counted");
    let (code, metrics) = common::http_get(c.http[follower as usize - 1], "/metrics").await;
    assert_eq!(code, 200);
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shale_raft_rpc_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the refusal counter is exported");
    assert!(refused >= 4, "{refused}");
    c.shutdown().await.unwrap();
}
