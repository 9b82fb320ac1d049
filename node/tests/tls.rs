//! TLS on a real three-node cluster in process (issue 14): clients and nodes talk over rustls on
//! loopback; what does not present the right certificate is refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{WAIT, consumer_config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use shale_client::admin::NewTopic;
use shale_client::{Client, ClientConfig, ProducerConfig, ProducerRecord};
use shale_node::testing::LocalCluster;
use shale_raft::network::guard::{ERROR_CODE_KEY, REFUSED_CODE};
use shale_raft::network::pb::{self, raft_service_client::RaftServiceClient};
use shale_raft::network::tls::files::{self, CA_CERT};
use shale_raft::network::tls::{cert_summary, generate};
use tokio::sync::watch;
use tokio::task::JoinHandle;
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

/// Waits until every partition of `topic` has a leader (a new topic's first elections), so the
/// produces that follow measure TLS, not elections.
async fn wait_for_leaders(client: &Client, topic: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(info) = client.admin().describe_topic(topic).await
            && !info.partitions.is_empty()
            && info.partitions.iter().all(|p| p.leader_id != 0)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{topic} has a partition without a leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    wait_for_leaders(&client, "secure").await;
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

// ---- Certificate reload (issue 14: "certificate rotation under load with no failed request") ----

/// Reload only when asked (no file watch), so the tests count every reload themselves.
fn quick_no_watch(c: &mut shale_node::NodeConfig) {
    quick(c);
    if let Some(tls) = c.tls.as_mut() {
        tls.watch_interval_ms = 0;
    }
}

/// The file watch checks every 100 ms.
fn quick_fast_watch(c: &mut shale_node::NodeConfig) {
    quick(c);
    if let Some(tls) = c.tls.as_mut() {
        tls.watch_interval_ms = 100;
    }
}

/// `notAfter` (Unix seconds) of the certificate in a PEM file.
fn not_after_of_file(path: &Path) -> u64 {
    let der = CertificateDer::pem_slice_iter(&read(path)).next().expect("a certificate").expect("PEM");
    cert_summary(der.as_ref()).unwrap().not_after_unix as u64
}

/// The serial number of the certificate in a PEM file.
fn serial_of_file(path: &Path) -> String {
    let der = CertificateDer::pem_slice_iter(&read(path)).next().expect("a certificate").expect("PEM");
    cert_summary(der.as_ref()).unwrap().serial
}

/// Opens a new TLS connection to `addr` with a raw tokio-rustls client (trusting the cluster CA,
/// presenting `identity` if given) and returns the serial of the certificate the node served.
async fn served_serial(c: &LocalCluster, addr: SocketAddr, identity: Option<(Vec<u8>, Vec<u8>)>) -> String {
    served_serial_ca(&c.tls_dir().join(CA_CERT), addr, identity).await
}

/// As [`served_serial`], trusting the CA in the PEM file `ca`.
async fn served_serial_ca(ca: &Path, addr: SocketAddr, identity: Option<(Vec<u8>, Vec<u8>)>) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(ca)) {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(&key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS handshake");
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().expect("the node presents a certificate")[0].clone();
    cert_summary(leaf.as_ref()).unwrap().serial
}

/// A counter's value in node `id`'s /metrics.
async fn metric(c: &LocalCluster, id: u64, name: &str) -> u64 {
    let (code, body) = common::http_get(c.http[id as usize - 1], "/metrics").await;
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Produces one record after another to `topic` until `stop`; returns (acknowledged, failures).
fn produce_until(client: Client, topic: &'static str, stop: watch::Receiver<bool>) -> JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let producer = client.producer(ProducerConfig::default());
        let (mut acked, mut failed) = (0u64, Vec::new());
        let mut i = 0u64;
        while !*stop.borrow() {
            i += 1;
            let record = ProducerRecord::new(topic, format!("v{i}")).key((i % 7).to_string());
            match producer.send_and_wait(record).await {
                Ok(_) => acked += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
        producer.close().await.unwrap();
        (acked, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_under_load_with_no_failed_produce() {
    let root = tempfile::tempdir().unwrap();
    // Separate client and internal listeners: both serve the new certificate.
    let c = LocalCluster::start_split(3, root.path(), true, quick_no_watch).await.unwrap();
    assert!(c.not_ready(WAIT).await.is_empty());
    let client = client(&c, c.client_tls());
    client.admin().create_topic(NewTopic::new("rotating", 3, 3)).await.unwrap();
    wait_for_leaders(&client, "rotating").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = produce_until(client.clone(), "rotating", stop_rx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let node_identity_2 = node_identity(&c, 2);
    for id in 1..=3u64 {
        let cert_path = c.tls_dir().join(files::node_cert(id));
        let old = serial_of_file(&cert_path);
        assert_eq!(served_serial(&c, c.grpc[id as usize - 1], None).await, old);
        // The expiry gauge (for alerting) shows the certificate served.
        let expiry = "shale_tls_cert_not_after_seconds";
        assert_eq!(metric(&c, id, expiry).await, not_after_of_file(&cert_path), "node {id}");
        // A new certificate for the node, same CA, new serial.
        shale_node::tls::write_node_cert(&c.tls_dir(), id).unwrap();
        let new = serial_of_file(&cert_path);
        assert_ne!(new, old);
        // Files changed but not reloaded: still the old certificate.
        assert_eq!(served_serial(&c, c.grpc[id as usize - 1], None).await, old);
        let summary = c.running(id).unwrap().reload_tls().expect("a valid certificate reloads");
        assert_eq!(summary.serial, new);
        // New connections get the new certificate, on the client and the internal listener.
        assert_eq!(served_serial(&c, c.grpc[id as usize - 1], None).await, new, "client listener of node {id}");
        let internal = c.internal[id as usize - 1];
        let as_peer = if id == 2 { node_identity(&c, 1) } else { node_identity_2.clone() };
        assert_eq!(served_serial(&c, internal, Some(as_peer)).await, new, "internal listener of node {id}");
        // Connections to peers are made with it from now on.
        let peers_pem = c.running(id).unwrap().cluster().router().peers().tls().unwrap();
        assert_eq!(peers_pem.cert, read(&cert_path), "node {id} presents its new certificate to peers");
        assert_eq!(metric(&c, id, "shale_tls_reloads_total").await, 1);
        assert_eq!(metric(&c, id, expiry).await, not_after_of_file(&cert_path), "node {id} after the reload");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    stop_tx.send(true).unwrap();
    let (acked, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} produces failed during the rotation: {failed:?}", failed.len());
    assert!(acked > 0, "the producer made progress");
    // A fresh client (new connections everywhere) still works, and so does Raft between the nodes.
    let fresh = self::client(&c, c.client_tls());
    fresh.admin().create_topic(NewTopic::new("after-rotation", 3, 3)).await.expect("metadata writes after rotation");
    let producer = fresh.producer(ProducerConfig::default());
    for i in 0..10u32 {
        producer.send_and_wait(ProducerRecord::new("after-rotation", format!("v{i}"))).await.unwrap();
    }
    producer.close().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Writes node `id`'s certificate signed by `ca` (valid for what LocalCluster's are: localhost,
/// 127.0.0.1, ::1) into the cluster's directory.
fn write_node_cert_of(c: &LocalCluster, ca: &generate::Pem, id: u64) {
    let ips = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let node = generate::node(ca, id, &["localhost".to_string()], &ips, 1).unwrap();
    files::write_pem(&c.tls_dir().join(files::node_cert(id)), &node.cert, false).unwrap();
    files::write_pem(&c.tls_dir().join(files::node_key(id)), &node.key, true).unwrap();
}

/// Reloads every node's certificates, each must be accepted.
fn reload_all(c: &LocalCluster, step: &str) {
    for id in 1..=3u64 {
        c.running(id).unwrap().reload_tls().unwrap_or_else(|e| panic!("{step}: node {id} refused the reload: {e}"));
    }
}

/// Rotating the CA itself under load: the nodes first trust a bundle of the old and the new CA,
/// then get certificates of the new CA one by one (peers with old and new certificates talk, as
/// both are trusted), then trust the new CA only. A client that trusts the bundle throughout
/// sees no failed produce; a client of the old CA only is refused at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ca_rotates_under_load_with_no_failed_produce() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_split(3, root.path(), true, quick_no_watch).await.unwrap();
    assert!(c.not_ready(WAIT).await.is_empty());
    let ca_path = c.tls_dir().join(CA_CERT);
    let old_ca = String::from_utf8(read(&ca_path)).unwrap();
    let new_ca = generate::ca("the new CA", 2).unwrap();
    let bundle = format!("{old_ca}{}", new_ca.cert);
    let bundle_tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&bundle));
    let old_tls = c.client_tls();
    let client = client(&c, Some(bundle_tls.clone()));
    client.admin().create_topic(NewTopic::new("ca-rotation", 3, 3)).await.unwrap();
    wait_for_leaders(&client, "ca-rotation").await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let load = produce_until(client.clone(), "ca-rotation", stop_rx);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. Every node trusts both CAs.
    files::write_pem(&ca_path, &bundle, false).unwrap();
    reload_all(&c, "the bundle");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 2. One node after the other presents a certificate of the new CA.
    for id in 1..=3u64 {
        write_node_cert_of(&c, &new_ca, id);
        c.running(id).unwrap().reload_tls().expect("a certificate of the new CA, trusted through the bundle");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 3. The old CA is no longer trusted.
    files::write_pem(&ca_path, &new_ca.cert, false).unwrap();
    reload_all(&c, "the new CA alone");
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop_tx.send(true).unwrap();
    let (acked, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} produces failed during the CA rotation: {failed:?}", failed.len());
    assert!(acked > 0, "the producer made progress");
    // Raft and metadata writes work between nodes that now know only the new CA.
    let fresh = self::client(&c, Some(bundle_tls));
    fresh.admin().create_topic(NewTopic::new("after-ca-rotation", 3, 3)).await.expect("metadata writes");
    wait_for_leaders(&fresh, "after-ca-rotation").await;
    let producer = fresh.producer(ProducerConfig::default());
    for i in 0..10u32 {
        producer.send_and_wait(ProducerRecord::new("after-ca-rotation", format!("v{i}"))).await.unwrap();
    }
    producer.close().await.unwrap();
    // A client that trusts the old CA only cannot verify the nodes any more.
    let mut config = ClientConfig::new(c.endpoints());
    config.tls = old_tls;
    config.max_attempts = 1;
    assert!(Client::new(config).unwrap().admin().list_topics().await.is_err(), "the old CA's client is refused");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_replacement_is_refused_and_the_old_certificate_stays() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), quick_no_watch).await.unwrap();
    assert!(c.not_ready(WAIT).await.is_empty());
    let addr = c.grpc[0];
    let (cert_path, key_path) = (c.tls_dir().join(files::node_cert(1)), c.tls_dir().join(files::node_key(1)));
    let old = serial_of_file(&cert_path);
    let (old_cert, old_key) = (read(&cert_path), read(&key_path));
    let node = c.running(1).unwrap();
    let mut failures = 0;
    let mut refuse = |what: &str, cert: &[u8], key: &[u8]| {
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let e = node.reload_tls().expect_err(what);
        failures += 1;
        e
    };

    // A garbage key.
    let e = refuse("a garbage key", &old_cert, b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n");
    assert!(e.to_string().contains("key"), "{e}");
    // A valid key that is not the certificate's (node 2's).
    let e = refuse("another certificate's key", &old_cert, &read(&c.tls_dir().join(files::node_key(2))));
    assert!(e.to_string().contains("does not match"), "{e}");
    // A certificate for node 1 from another CA.
    let other = generate::ca("another CA", 1).unwrap();
    let foreign = generate::node(&other, 1, &["localhost".into()], &[], 1).unwrap();
    let e = refuse("a certificate of another CA", foreign.cert.as_bytes(), foreign.key.as_bytes());
    assert!(e.to_string().contains("cluster CA"), "{e}");
    // A certificate of the cluster CA for another node.
    let ca = generate::Pem {
        cert: String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap(),
        key: String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap(),
    };
    let node3 = generate::node(&ca, 3, &["localhost".into()], &[], 1).unwrap();
    let e = refuse("another node's certificate", node3.cert.as_bytes(), node3.key.as_bytes());
    assert!(e.to_string().contains("node"), "{e}");

    // Every refusal counted; the old certificate is still served and the node still works.
    assert_eq!(metric(&c, 1, "shale_tls_reload_failures_total").await, failures);
    assert_eq!(metric(&c, 1, "shale_tls_reloads_total").await, 0);
    assert_eq!(served_serial(&c, addr, None).await, old);
    let only_node_1 = {
        let mut config = ClientConfig::new(vec![addr.to_string()]);
        config.tls = c.client_tls();
        Client::new(config).unwrap()
    };
    only_node_1.admin().list_topics().await.expect("node 1 still serves over TLS");
    only_node_1.admin().create_topic(NewTopic::new("still-fine", 1, 3)).await.expect("and Raft still works");

    // Putting the valid files back is accepted.
    std::fs::write(&cert_path, &old_cert).unwrap();
    std::fs::write(&key_path, &old_key).unwrap();
    assert_eq!(node.reload_tls().unwrap().serial, old);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_certificate_file_is_picked_up_without_a_reload_call() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), quick_fast_watch).await.unwrap();
    assert!(c.not_ready(WAIT).await.is_empty());
    let addr = c.grpc[1];
    let cert_path = c.tls_dir().join(files::node_cert(2));
    let old = serial_of_file(&cert_path);
    // Connections that never start their handshake do not hold up the others (each handshake
    // runs on its own task, bounded by HANDSHAKE_TIMEOUT).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let served = tokio::time::timeout(Duration::from_secs(5), served_serial(&c, addr, None)).await;
    assert_eq!(served.expect("a handshake behind silent connections completes"), old);
    shale_node::tls::write_node_cert(&c.tls_dir(), 2).unwrap();
    let new = serial_of_file(&cert_path);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let served = served_serial(&c, addr, None).await;
        if served == new {
            break;
        }
        assert_eq!(served, old, "either certificate, nothing else");
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&c, 2, "shale_tls_reloads_total").await >= 1);
    // Nodes whose files did not change did not reload.
    assert_eq!(metric(&c, 1, "shale_tls_reloads_total").await, 0);
    drop(silent);
    c.shutdown().await.unwrap();
}

/// The real binary: SIGHUP reloads the certificates (the file watch is off), and the node keeps
/// running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let tls = shale_node::tls::write_local_certs(&dir.path().join("tls"), &[1]).unwrap().remove(0);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (grpc, http) = (free(), free());
    let config = dir.path().join("node.toml");
    let toml = format!(
        "node_id = 1\ngrpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ndata_dir = {:?}\n\
         [peers]\n1 = \"{grpc}\"\n[kafka]\nenabled = false\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\nwatch_interval_ms = 0\n",
        dir.path().join("data"),
        tls.ca,
        tls.cert,
        tls.key
    );
    std::fs::write(&config, toml).unwrap();
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shale-node"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("shale-node starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(grpc).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the node never listened");
        assert!(child.try_wait().unwrap().is_none(), "the node exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = serial_of_file(&tls.cert);
    assert_eq!(served_serial_ca(&tls.ca, grpc, None).await, old);
    shale_node::tls::write_node_cert(&dir.path().join("tls"), 1).unwrap();
    let new = serial_of_file(&tls.cert);
    assert_eq!(served_serial_ca(&tls.ca, grpc, None).await, old, "no reload before the signal");
    let hup = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    loop {
        assert!(child.try_wait().unwrap().is_none(), "SIGHUP does not end the node");
        if served_serial_ca(&tls.ca, grpc, None).await == new {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP never reloaded the certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new certificate is served from the moment it is swapped in; the log line follows it.
    loop {
        let logged = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
        if logged.lines().any(|l| l.contains("TLS certificates reloaded") && l.contains("SIGHUP") && l.contains(&new)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reload is logged with the new serial:\n{logged}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGTERM: a clean stop. The SIGHUP listener must not keep the node's storage alive (it did:
    // every stop of a TLS node waited out its grace and left the storage unclosed).
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let logged = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(logged.contains("stopped"), "the node stopped gracefully ({status}):\n{logged}");
    assert!(!logged.contains("storage still referenced"), "the storage was closed:\n{logged}");
}
