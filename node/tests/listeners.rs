//! Separate client and internal listeners (issue 14): clients are told client addresses only,
//! nodes talk over the internal listener, the client listener serves no Raft, and with TLS the
//! internal listener serves node certificates only.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{WAIT, consumer_config};
use shale_client::admin::NewTopic;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{Client, ClientConfig, ClientError, ProducerConfig, ProducerRecord, meta, proto};
use shale_node::testing::LocalCluster;
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

async fn start(root: &Path, tls: bool) -> LocalCluster {
    let c = LocalCluster::start_split(3, root, tls, quick).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty(), "every node sees a metadata leader");
    assert!(c.internal.iter().zip(&c.grpc).all(|(i, g)| i != g), "two listeners per node");
    c
}

/// A client that knows node 1's client listener only.
fn client_of_one(c: &LocalCluster, tls: Option<ClientTlsConfig>) -> Client {
    let mut config = ClientConfig::new([c.grpc[0].to_string()]);
    config.max_attempts = 40;
    config.tls = tls;
    Client::new(config).expect("client")
}

async fn eventually<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut f: F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn vote(node_id: u64) -> pb::VoteRequest {
    pb::VoteRequest {
        group_id: 0,
        vote: Some(pb::Vote { term: 1, node_id, committed: false }),
        last_log_id: None,
        leadership_transfer: false,
        pre_vote: true,
    }
}

async fn plain_channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_are_told_client_addresses_and_nodes_use_internal_ones() {
    let root = tempfile::tempdir().unwrap();
    let mut c = start(root.path(), false).await;
    let (grpc, internal) = (c.grpc.clone(), c.internal.clone());
    let client_addr = |id: u64| grpc[id as usize - 1].to_string();
    let internal_addr = |id: u64| internal[id as usize - 1].to_string();

    // Members: the client address as `addr`, the internal one beside it, as recorded at bootstrap.
    let client = client_of_one(&c, None);
    let status = client.admin().cluster_status().await.expect("cluster status");
    assert_eq!(status.members.len(), 3);
    for m in &status.members {
        assert_eq!((m.addr.clone(), m.internal_addr.clone()), (client_addr(m.id), internal_addr(m.id)), "{m:?}");
    }
    assert_eq!((status.client_addr.clone(), status.internal_addr.clone()), (client_addr(1), internal_addr(1)));

    // Partition leaders in metadata answers: client addresses.
    client.admin().create_topic(NewTopic::new("split", 3, 3)).await.expect("create topic");
    let topic = eventually("every partition has a leader", async || {
        let t = client.admin().describe_topic("split").await.ok()?;
        t.partitions.iter().all(|p| p.leader_id != 0).then_some(t)
    })
    .await;
    for p in &topic.partitions {
        assert_eq!(p.leader_addr, client_addr(p.leader_id), "{p:?}");
    }

    // A produce sent to a replica that does not lead (and asked not to be forwarded) comes back
    // NOT_LEADER naming the leader's client address, in the header and in the message.
    let p = &topic.partitions[0];
    let other = (1..=3).find(|id| *id != p.leader_id).unwrap();
    let mut request = tonic::Request::new(proto::ProduceRequest {
        topic: "split".into(),
        partition: 0,
        records: vec![proto::Record { key: None, value: b"x".to_vec().into(), headers: vec![], timestamp_ms: 0 }],
        producer: None,
    });
    request.metadata_mut().insert(meta::FORWARDED, "client".parse().unwrap());
    let status = ProduceClient::new(plain_channel(&client_addr(other)).await).produce(request).await.unwrap_err();
    match ClientError::from_status(status.clone()) {
        ClientError::NotLeader { leader_id, leader_addr, message } => {
            assert_eq!(leader_id, Some(p.leader_id), "{status:?}");
            assert_eq!(leader_addr, Some(client_addr(p.leader_id)), "{status:?}");
            assert!(!message.contains(&internal_addr(p.leader_id)), "{message}");
        }
        other => panic!("NOT_LEADER expected: {other:?}"),
    }

    // The client, knowing one node, follows leader hints to every partition and reads it all back.
    let producer = client.producer(ProducerConfig::default());
    for i in 0..30u32 {
        producer
            .send_and_wait(ProducerRecord::new("split", format!("v{i}")).partition(i % 3))
            .await
            .expect("acknowledged");
    }
    producer.close().await.unwrap();
    let mut consumer = client.consumer(consumer_config(None));
    consumer.subscribe("split").await.unwrap();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while got < 30 {
        assert!(tokio::time::Instant::now() < deadline, "only {got} of 30 records read");
        got += consumer.poll().await.unwrap().len();
    }

    // The client listener serves no Raft; the internal one does (a vote from a non-member is
    // refused by the guard there, which shows the service is mounted).
    let on_client = RaftServiceClient::new(plain_channel(&client_addr(2)).await).vote(vote(99)).await.unwrap_err();
    assert_eq!(on_client.code(), Code::Unimplemented, "{on_client:?}");
    let on_internal = RaftServiceClient::new(plain_channel(&internal_addr(2)).await).vote(vote(99)).await.unwrap_err();
    assert_eq!(on_internal.code(), Code::PermissionDenied, "{on_internal:?}");

    // A restarted node comes back on both listeners with the same addresses.
    c.restart(2).await.expect("restart");
    assert!(c.not_ready(WAIT).await.is_empty());
    let status = client.admin().cluster_status().await.expect("cluster status");
    let two = status.members.iter().find(|m| m.id == 2).expect("member 2");
    assert_eq!((two.addr.clone(), two.internal_addr.clone()), (client_addr(2), internal_addr(2)));
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_recorded_with_another_client_address_re_addresses_itself() {
    let root = tempfile::tempdir().unwrap();
    let c = start(root.path(), false).await;
    let leader = c.running(1).unwrap().cluster().metadata_leader().expect("leader").0;
    let leader_cluster = c.running(leader).unwrap().cluster().clone();
    // Record node 3 with a wrong client address (as if the leader had not known it).
    let wrong = shale_raft::cluster::MemberAddrs::pair(c.internal[2].to_string(), "somewhere-else.invalid:1");
    leader_cluster.add_node(3, wrong).await.expect("re-address");
    let right = c.grpc[2].to_string();
    assert_eq!(leader_cluster.member_addrs(3).map(|a| a.client).as_deref(), Some("somewhere-else.invalid:1"));
    // Node 3 notices and records its own client address again through the metadata leader.
    eventually("node 3's client address recorded again", async || {
        (leader_cluster.member_addrs(3)?.client == right).then_some(())
    })
    .await;
    c.shutdown().await.unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A TLS channel to `addr` trusting the cluster CA, presenting `identity` (cert, key PEM).
async fn tls_channel(c: &LocalCluster, addr: &str, identity: Option<(Vec<u8>, Vec<u8>)>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&c.tls_dir().join(CA_CERT))));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

async fn list_topics(channel: Channel) -> Result<(), tonic::Status> {
    AdminClient::new(channel).list_topics(proto::ListTopicsRequest::default()).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tls_the_internal_listener_serves_node_certificates_only() {
    let root = tempfile::tempdir().unwrap();
    let c = start(root.path(), true).await;
    let internal = c.internal[1].to_string();
    let ca = generate::Pem {
        cert: String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap(),
        key: String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap(),
    };

    // Nodes replicate over mutual TLS: a client (on the client listeners, no certificate)
    // produces and reads back.
    let client = client_of_one(&c, c.client_tls());
    client.admin().create_topic(NewTopic::new("secure", 2, 3)).await.expect("create topic");
    let producer = client.producer(ProducerConfig::default());
    for i in 0..10u32 {
        producer.send_and_wait(ProducerRecord::new("secure", format!("v{i}")).partition(i % 2)).await.expect("acked");
    }
    producer.close().await.unwrap();

    // No certificate: the handshake (or the first request on it) fails.
    let refused = match tls_channel(&c, &internal, None).await {
        Err(_) => true,
        Ok(ch) => list_topics(ch).await.is_err(),
    };
    assert!(refused, "a peer without a certificate is refused on the internal listener");

    // A client certificate of the cluster CA names no node: the handshake refuses it, so no request
    // on it reaches a handler (which would answer UNAUTHENTICATED for the client API and
    // PERMISSION_DENIED for Raft). With TLS 1.3 the client learns it from the server's alert, at
    // the connection or at its first request.
    let alice = generate::client(&ca, "alice", 1).unwrap();
    let identity = (alice.cert.into_bytes(), alice.key.into_bytes());
    match tls_channel(&c, &internal, Some(identity.clone())).await {
        Err(e) => assert!(e.contains("Certificate") || e.contains("certificate"), "{e}"),
        Ok(ch) => {
            let api = list_topics(ch.clone()).await.unwrap_err();
            let raft = RaftServiceClient::new(ch).vote(vote(1)).await.unwrap_err();
            for status in [api, raft] {
                assert!(
                    !matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
                        && status.metadata().get("shale-error-code").is_none(),
                    "refused in the handshake, not by a handler: {status:?}"
                );
            }
        }
    }
    // The same certificate is welcome on the client listener.
    let ch = tls_channel(&c, &c.grpc[1].to_string(), Some(identity)).await.expect("client listener");
    list_topics(ch).await.expect("a client certificate on the client listener");

    // A node certificate is served on the internal listener.
    let node = (read(&c.tls_dir().join(files::node_cert(1))), read(&c.tls_dir().join(files::node_key(1))));
    let ch = tls_channel(&c, &internal, Some(node)).await.expect("node handshake");
    list_topics(ch).await.expect("a node certificate on the internal listener");
    c.shutdown().await.unwrap();
}

fn few_connections(c: &mut shale_node::NodeConfig) {
    quick(c);
    c.limits.max_connections = 2;
}

/// Holds every place of `addr`'s connection limit (and of the connections being refused) until
/// aborted: opens a connection every 20 ms and keeps them all.
fn flood(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                held.push(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_flood_does_not_keep_a_restarted_peer_out() {
    let root = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::start_split(3, root.path(), false, few_connections).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    // The peers' connections (Raft, forwarding) are not counted among any node's client connections.
    for http in &c.http {
        let (code, metrics) = common::http_get(*http, "/metrics").await;
        assert_eq!(code, 200);
        let open: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("shale_connections_open "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the connection gauge is exported");
        assert_eq!(open, 0, "peers hold no client places ({http})");
    }
    c.stop(3).await.expect("stop node 3");
    // Every client place of nodes 1 and 2 is taken.
    let floods = [flood(c.grpc[0]), flood(c.grpc[1])];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut config = ClientConfig::new([c.grpc[0].to_string()]);
    config.max_attempts = 1;
    let refused = Client::new(config).unwrap().admin().list_topics().await;
    assert!(refused.is_err(), "the flood holds node 1's client places: {refused:?}");
    // Node 3 comes back over the internal listeners and catches up with the metadata group.
    c.restart(3).await.expect("restart node 3");
    assert!(c.not_ready(WAIT).await.is_empty(), "node 3 reached its peers");
    let leader = c.running(1).unwrap().cluster().clone();
    let three = c.running(3).unwrap().cluster().clone();
    eventually("node 3 applied what node 1 has", async || {
        let want = leader.cluster_status().metadata?.applied_index;
        (three.cluster_status().metadata?.applied_index >= want).then_some(())
    })
    .await;
    for f in floods {
        f.abort();
    }
    c.shutdown().await.unwrap();
}

fn few_internal_connections(c: &mut shale_node::NodeConfig) {
    quick(c);
    c.limits.max_internal_connections = 24;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_internal_listener_serves_at_most_its_connection_limit() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_split(3, root.path(), false, few_internal_connections).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let (http, internal) = (c.http[0], c.internal[0]);
    let peers = common::metric(http, "shale_internal_connections_open").await.expect("the gauge is exported");
    // (Peers connect to node 1 when it has something to ask it: none if it leads every group.)
    assert!(peers <= 24, "the peers' connections: {peers}");
    // A flood of connections to node 1's internal port: it holds no more than the limit.
    let flood = flood(internal);
    eventually("the flood reaches the limit", async || {
        (common::metric(http, "shale_limit_refusals_total{limit=\"max_internal_connections\"}").await? > 0)
            .then_some(())
    })
    .await;
    let open = common::metric(http, "shale_internal_connections_open").await.unwrap();
    assert!(open <= 24, "{open} connections open on the internal listener, over the limit");
    // One more is closed at accept, unanswered.
    let mut extra = tokio::net::TcpStream::connect(internal).await.expect("the kernel accepts");
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read(&mut extra, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a connection over the limit is closed at once: {read:?}");
    flood.abort();
    // The flood's places come free once its connections close.
    eventually("the flood's places are freed", async || {
        (common::metric(http, "shale_internal_connections_open").await? <= peers + 4).then_some(())
    })
    .await;
    c.shutdown().await.unwrap();
}
