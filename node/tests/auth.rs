//! Authentication and authorization on real three-node clusters in process (issue 14): principals
//! from client certificates and bearer tokens, every ACL operation allowed and denied, refusals
//! named and counted, tokens refused alike for an unknown user and a wrong secret, forged forwarded
//! principals refused, and rules that survive a restart of every node from snapshots.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use common::{WAIT, consumer_config};
use shale_client::access::acl_rule;
use shale_client::admin::NewTopic;
use shale_client::proto::access_client::AccessClient;
use shale_client::proto::admin_client::AdminClient;
use shale_client::proto::produce_client::ProduceClient;
use shale_client::{
    Client, ClientConfig, ClientError, ErrorCode, Password, ProducerConfig, ProducerRecord, Token, meta, proto,
};
use shale_node::testing::LocalCluster;
use shale_raft::cluster::access::ScramCredential;
use shale_raft::network::tls::files::{self, CA_CERT};
use shale_raft::network::tls::generate;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn auth_on(c: &mut shale_node::NodeConfig) {
    c.raft.heartbeat_interval_ms = 50;
    c.raft.election_timeout_min_ms = 300;
    c.raft.election_timeout_max_ms = 600;
    // Small, so the metadata group snapshots (users and rules included) within the test.
    c.raft.snapshot_every_entries = 8;
    c.auth.enabled = true;
    c.auth.super_users = ["admin".to_string()].into();
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ca_of(c: &LocalCluster) -> generate::Pem {
    generate::Pem {
        cert: String::from_utf8(read(&c.tls_dir().join(CA_CERT))).unwrap(),
        key: String::from_utf8(read(&c.tls_dir().join(files::CA_KEY))).unwrap(),
    }
}

/// TLS trusting the cluster CA, presenting a client certificate for `principal` if given.
fn tls_as(c: &LocalCluster, principal: Option<&str>) -> Option<ClientTlsConfig> {
    let tls = c.client_tls()?;
    Some(match principal {
        Some(p) => {
            let cert = generate::client(&ca_of(c), p, 1).unwrap();
            tls.identity(Identity::from_pem(cert.cert, cert.key))
        }
        None => tls,
    })
}

fn client(c: &LocalCluster, tls: Option<ClientTlsConfig>, token: Option<Token>) -> Client {
    let mut config = ClientConfig::new(c.endpoints());
    config.max_attempts = 20;
    config.request_timeout_ms = 5_000;
    config.tls = tls;
    config.token = token;
    Client::new(config).expect("client")
}

/// A raw channel to `addr`, over `tls` if given.
async fn channel(addr: &str, tls: Option<ClientTlsConfig>) -> Channel {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap(),
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    endpoint.connect_timeout(Duration::from_secs(2)).connect().await.expect("connection")
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

/// Asserts NOT_AUTHORIZED naming `principal`, `operation` and `resource`.
fn assert_denied<T: std::fmt::Debug>(r: Result<T, ClientError>, principal: &str, operation: &str, resource: &str) {
    let e = r.expect_err(&format!("{principal} {operation} {resource} is refused"));
    assert_eq!(code_of(&e), Some(ErrorCode::NotAuthorized), "{e}");
    let text = e.to_string();
    for part in [principal, operation, resource] {
        assert!(text.contains(part), "{text:?} names {part:?}");
    }
}

/// Retries `f` until it succeeds (a new rule reaches every node as it applies it) or `WAIT` passes.
async fn eventually<T, F: Future<Output = Result<T, ClientError>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(what, error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

async fn denied_total(c: &LocalCluster) -> u64 {
    let mut total = 0;
    for id in 1..=3 {
        let addr = c.http[id - 1];
        let (_, body) = common::http_get(addr, "/metrics").await;
        total += body
            .lines()
            .filter(|l| l.starts_with("shale_auth_denied_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

async fn produce(client: &Client, topic: &str) -> Result<(), ClientError> {
    let producer = client.producer(ProducerConfig::default());
    let result = producer.send_and_wait(ProducerRecord::new(topic, "v").key("k")).await.map(|_| ());
    let _ = producer.close().await;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acl_operation_is_denied_until_a_rule_allows_it() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());

    // The super-user, by its client certificate.
    let admin = client(&c, tls_as(&c, Some("admin")), None).admin();
    let me = admin.who_am_i().await.unwrap();
    assert_eq!((me.principal.as_str(), me.source.as_str(), me.super_user), ("user:admin", "certificate", true));
    admin.create_topic(NewTopic::new("orders", 2, 3)).await.expect("a super-user creates topics");
    admin.create_topic(NewTopic::new("secret", 1, 3)).await.unwrap();

    // Alice, by a token the super-user made.
    let token = admin.create_user("alice").await.expect("create user");
    assert_eq!(token.user(), "alice");
    let alice_client = client(&c, tls_as(&c, None), Some(token.clone()));
    let alice = alice_client.admin();
    let me = eventually("alice's token is accepted", || alice.who_am_i()).await;
    assert_eq!((me.principal.as_str(), me.source.as_str(), me.super_user), ("user:alice", "token", false));

    let denied_before = denied_total(&c).await;
    // describe: a producer looks the topic up first
    assert_denied(produce(&alice_client, "orders").await, "user:alice", "describe", "topic orders");
    assert_denied(alice.describe_topic("orders").await, "user:alice", "describe", "topic orders");
    admin.add_acl(acl_rule("alice", "describe", "topic", "orders")).await.unwrap();
    eventually("describe allowed", || alice.describe_topic("orders")).await;
    // produce
    assert_denied(produce(&alice_client, "orders").await, "user:alice", "produce", "topic orders");
    admin.add_acl(acl_rule("alice", "produce", "topic", "orders")).await.unwrap();
    eventually("produce allowed", || produce(&alice_client, "orders")).await;
    assert_denied(produce(&alice_client, "secret").await, "user:alice", "describe", "topic secret");
    assert!(denied_total(&c).await > denied_before, "refusals are counted");
    assert_denied(alice.describe_topic("secret").await, "user:alice", "describe", "topic secret");
    let listed: Vec<String> = alice.list_topics().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(listed, vec!["orders".to_string()], "a list shows only what the caller may describe");

    // consume, by a prefix rule
    let mut consumer = alice_client.consumer(consumer_config(None));
    consumer.assign("orders", [0, 1]);
    assert_denied(consumer.poll().await, "user:alice", "consume", "topic orders");
    admin.add_acl(acl_rule("alice", "consume", "topic-prefix", "ord")).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match consumer.poll().await {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "consume allowed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // group-read (a commit also needs consume on the topic, which alice has)
    let commit = |alice_client: Client| async move {
        let consumer = alice_client.consumer(consumer_config(Some("g1")));
        consumer.commit_offsets(&[("orders".to_string(), 0, 0)]).await
    };
    assert_denied(commit(alice_client.clone()).await, "user:alice", "group-read", "group g1");
    admin.add_acl(acl_rule("alice", "group-read", "group", "g1")).await.unwrap();
    eventually("group-read allowed", || commit(alice_client.clone())).await;
    alice.describe_group("g1").await.expect("group-read allows describing the group");

    // create, alter, delete, by prefix
    let t = || NewTopic::new("alice.t1", 1, 1);
    assert_denied(alice.create_topic(t()).await, "user:alice", "create", "topic alice.t1");
    admin.add_acl(acl_rule("alice", "create", "topic-prefix", "alice.")).await.unwrap();
    eventually("create allowed", || alice.create_topic(t())).await;
    let alter = || {
        alice.alter_topic(proto::AlterTopicRequest {
            name: "alice.t1".into(),
            retention_bytes: Some(1 << 20),
            ..Default::default()
        })
    };
    assert_denied(alter().await, "user:alice", "alter", "topic alice.t1");
    admin.add_acl(acl_rule("alice", "alter", "topic", "alice.t1")).await.unwrap();
    eventually("alter allowed", alter).await;
    assert_denied(alice.delete_topic("alice.t1").await, "user:alice", "delete", "topic alice.t1");
    admin.add_acl(acl_rule("alice", "delete", "topic-prefix", "alice.")).await.unwrap();
    eventually("delete allowed", || alice.delete_topic("alice.t1")).await;

    // cluster-admin
    assert_denied(alice.list_users().await, "user:alice", "cluster-admin", "cluster");
    assert_denied(alice.transfer_leader("orders", 0, 2).await, "user:alice", "cluster-admin", "cluster");
    assert_denied(alice.remove_node(3).await, "user:alice", "cluster-admin", "cluster");
    admin.add_acl(acl_rule("alice", "cluster-admin", "cluster", "")).await.unwrap();
    let users = eventually("cluster-admin allowed", || alice.list_users()).await;
    assert_eq!(users, vec!["alice".to_string()]);
    let rules = alice.list_acls().await.unwrap();
    assert_eq!(rules.len(), 8, "{rules:?}");

    // Removing a rule takes the permission away again.
    admin.remove_acl(acl_rule("alice", "produce", "topic", "orders")).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while produce(&alice_client, "orders").await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the removed rule stops allowing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = admin.remove_acl(acl_rule("alice", "produce", "topic", "orders")).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::InvalidArgument), "{e}");

    // An anonymous TLS client (no certificate, no token) sees the cluster status and nothing else,
    // until a `*` rule allows it more.
    let anon = client(&c, tls_as(&c, None), None).admin();
    anon.cluster_status().await.expect("the cluster status needs no permission");
    assert_denied(anon.describe_topic("orders").await, "anonymous", "describe", "topic orders");
    admin.add_acl(acl_rule("*", "describe", "topic-prefix", "")).await.unwrap();
    eventually("a * rule covers anonymous callers", || anon.describe_topic("orders")).await;
    anon.describe_topic("secret").await.expect("an empty prefix covers every topic");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_refused_alike_for_an_unknown_user_and_a_wrong_secret() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let admin = client(&c, tls_as(&c, Some("admin")), None).admin();
    let token = admin.create_user("bob").await.unwrap();
    let bob_client = client(&c, tls_as(&c, None), Some(token.clone()));
    let bob = bob_client.admin();
    eventually("bob's token is accepted", || bob.who_am_i()).await;
    // Bob produces: his producer's requests go on one ProduceStream call per node.
    admin.create_topic(NewTopic::new("bobs", 1, 3)).await.unwrap();
    admin.add_acl(acl_rule("bob", "produce", "topic", "bobs")).await.unwrap();
    let producer = bob_client.producer(ProducerConfig::default());
    let send = |value: &'static str| producer.send_and_wait(ProducerRecord::new("bobs", value).partition(0));
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = send("before").await {
        assert!(tokio::time::Instant::now() < deadline, "bob may produce: {e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let forged = |user: &str| Token::parse(&format!("{user}:{}", "ab".repeat(32))).unwrap();
    let mut answers = Vec::new();
    for wrong in [forged("bob"), forged("mallory")] {
        let e = client(&c, tls_as(&c, None), Some(wrong)).admin().list_topics().await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
        answers.push(e.to_string());
    }
    assert_eq!(answers[0], answers[1], "an unknown user and a wrong secret get the same answer");

    // A deleted user's token stops working.
    admin.delete_user("bob").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.who_am_i().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "a deleted user's token is refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = bob.who_am_i().await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    assert_eq!(e.to_string(), answers[0]);
    // The producer's call to the partition leader opened while bob's token was good: its next
    // request is authenticated again, and refused.
    let e = send("after").await.expect_err("a deleted user's open produce call writes nothing more");
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    let _ = producer.close().await;
    c.shutdown().await.unwrap();
}

/// A client of node 1 only (so its password cache is the one a test reads), by user and password.
fn password_client(c: &LocalCluster, user: &str, password: &str) -> Client {
    let mut config = ClientConfig::new(c.endpoints().into_iter().take(1));
    config.max_attempts = 3;
    config.request_timeout_ms = 5_000;
    config.tls = tls_as(c, None);
    config.password = Some(Password::new(user, password).unwrap());
    Client::new(config).expect("client")
}

/// Key derivations run by every node's password verifier.
fn derivations(c: &LocalCluster) -> u64 {
    (1..=3).filter_map(|id| c.running(id)).map(|n| n.auth().passwords.derivations()).sum()
}

/// Waits until every node has applied `check` to `user`'s credential.
async fn applied_everywhere(c: &LocalCluster, user: &str, check: impl Fn(Option<ScramCredential>) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(1..=3).all(|id| check(c.running(id).unwrap().cluster().user_scram(user))) {
        assert!(tokio::time::Instant::now() < deadline, "every node applies the change to {user}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passwords_authenticate_alike_refusals_and_a_changed_or_deleted_password_is_refused_at_once() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let admin = client(&c, tls_as(&c, Some("admin")), None).admin();
    admin.create_password_user("erin", "correct horse").await.expect("create a password user");
    let stored = eventually("erin is applied", || async {
        c.running(1).unwrap().cluster().user_scram("erin").ok_or(ClientError::NoEndpoints)
    })
    .await;
    assert_eq!(stored.iterations, shale_client::scram::DEFAULT_ITERATIONS);

    let erin = password_client(&c, "erin", "correct horse").admin();
    let me = eventually("erin's password is accepted", || erin.who_am_i()).await;
    assert_eq!((me.principal.as_str(), me.source.as_str(), me.super_user), ("user:erin", "password", false));
    // Verified once: later requests are cache hits, no key derivation.
    let before = derivations(&c);
    for _ in 0..5 {
        erin.who_am_i().await.expect("cached");
    }
    assert_eq!(derivations(&c), before, "a verified password is cached");

    // A wrong password and an unknown user: the same answer, the same key derivations.
    let mut answers = Vec::new();
    let mut runs = Vec::new();
    for (user, password) in [("erin", "wrong horse"), ("mallory", "wrong horse")] {
        let before = derivations(&c);
        let e = password_client(&c, user, password).admin().list_topics().await.unwrap_err();
        assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
        answers.push(e.to_string());
        runs.push(derivations(&c) - before);
    }
    assert_eq!(answers[0], answers[1], "an unknown user and a wrong password get the same answer");
    assert!(runs[0] > 0 && runs[0] == runs[1], "both ran PBKDF2 as often: {runs:?}");

    // A changed password: the old one is refused as soon as the node applied the change, even
    // though it was cached.
    admin.set_user_password("erin", "battery staple").await.expect("change erin's password");
    applied_everywhere(&c, "erin", |s| s.is_some_and(|s| s.salt != stored.salt)).await;
    let e = erin.who_am_i().await.expect_err("the old password is refused");
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    let erin = password_client(&c, "erin", "battery staple").admin();
    erin.who_am_i().await.expect("the new password is accepted");

    // A deleted user: refused at once, with the same answer as any wrong password.
    admin.delete_user("erin").await.unwrap();
    applied_everywhere(&c, "erin", |s| s.is_none()).await;
    let e = erin.who_am_i().await.expect_err("a deleted user's password is refused");
    assert_eq!(e.to_string(), answers[0]);
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_principal_is_trusted_from_nodes_only_and_kept_across_forwarding() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let admin = client(&c, tls_as(&c, Some("admin")), None).admin();
    admin.create_topic(NewTopic::new("t", 1, 3)).await.unwrap();
    let token = admin.create_user("carol").await.unwrap();
    admin.add_acl(acl_rule("carol", "create", "topic-prefix", "carol.")).await.unwrap();
    let leader = c.running(1).unwrap().cluster().metadata_leader().unwrap().0;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let follower_addr = c.grpc[follower as usize - 1].to_string();
    let leader_addr = c.grpc[leader as usize - 1].to_string();

    // A client (no certificate, or a client certificate) claiming to be forwarded for the
    // super-user: refused before anything runs.
    for (who, tls) in [("anonymous", tls_as(&c, None)), ("a client certificate", tls_as(&c, Some("carol")))] {
        let mut raw = AdminClient::new(channel(&leader_addr, tls).await);
        let mut req = tonic::Request::new(proto::DeleteTopicRequest { name: "t".into() });
        req.metadata_mut().insert(meta::PRINCIPAL, "user:admin".parse().unwrap());
        req.metadata_mut().insert(meta::FORWARDED, "1".parse().unwrap());
        let status = raw.delete_topic(req).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{who}: {status:?}");
        assert_eq!(status.metadata().get(meta::ERROR_CODE).unwrap(), "UNAUTHENTICATED", "{who}");
    }
    admin.describe_topic("t").await.expect("the topic was not deleted");

    // A node forwarding for a principal: that principal's rules apply, not the node's.
    let node_tls = c.client_tls().unwrap().identity(Identity::from_pem(
        read(&c.tls_dir().join(files::node_cert(follower))),
        read(&c.tls_dir().join(files::node_key(follower))),
    ));
    let mut as_node = AdminClient::new(channel(&leader_addr, Some(node_tls.clone())).await);
    let mut req = tonic::Request::new(proto::DeleteTopicRequest { name: "t".into() });
    req.metadata_mut().insert(meta::PRINCIPAL, "user:carol".parse().unwrap());
    req.metadata_mut().insert(meta::FORWARDED, follower.to_string().parse().unwrap());
    let status = as_node.delete_topic(req).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("user:carol"), "{status:?}");
    let mut who = AccessClient::new(channel(&leader_addr, Some(node_tls)).await);
    let me = who.who_am_i(proto::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!((me.principal.as_str(), me.source.as_str()), (format!("node:{follower}").as_str(), "node"));

    // Real forwarding: carol's create reaches a metadata follower, which forwards it to the leader
    // as carol (allowed by her prefix rule); a name outside it is refused as carol.
    let mut raw = AdminClient::new(channel(&follower_addr, tls_as(&c, None)).await);
    let create = |name: &str| {
        let mut req = tonic::Request::new(proto::CreateTopicRequest {
            name: name.into(),
            config: Some(proto::TopicConfig { partitions: 1, replication_factor: 1, ..Default::default() }),
        });
        req.metadata_mut().insert("authorization", token.header_value().parse().unwrap());
        req
    };
    let mut created = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !created {
        match raw.create_topic(create("carol.x")).await {
            Ok(_) => created = true,
            Err(s) => {
                assert!(tokio::time::Instant::now() < deadline, "carol's create via a follower: {s:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let status = raw.create_topic(create("other")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("user:carol"), "{status:?}");

    // Carol by her client certificate instead of her token: the same principal, the same rules.
    let by_cert = client(&c, tls_as(&c, Some("carol")), None).admin();
    let me = by_cert.who_am_i().await.unwrap();
    assert_eq!((me.principal.as_str(), me.source.as_str()), ("user:carol", "certificate"));
    by_cert.create_topic(NewTopic::new("carol.y", 1, 1)).await.expect("the certificate's principal has the rule");
    assert_denied(by_cert.create_topic(NewTopic::new("dave.y", 1, 1)).await, "user:carol", "create", "topic dave.y");
    c.shutdown().await.unwrap();
}

fn auth_on_plaintext(c: &mut shale_node::NodeConfig) {
    auth_on(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_tls_tokens_work_forwarded_principals_are_refused_and_rules_survive_restarts() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let mut c = LocalCluster::start(3, root.path(), auth_on_plaintext).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());

    // Without TLS nothing proves a node: no super-user certificate either. Bootstrap the first
    // user through the cluster handle of a node (what an operator does with a super-user token
    // from a TLS deployment); here: a token for the configured super-user `admin`.
    let admin_token = Token::generate("admin").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = c.running(1).unwrap().cluster().metadata_leader().map(|l| l.0);
        if let Some(id) = leader
            && c.running(id).unwrap().cluster().create_user("admin", admin_token.secret_hash()).await.is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the admin user is created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = client(&c, None, Some(admin_token.clone())).admin();
    eventually("admin's token", || admin.who_am_i()).await;
    admin.create_topic(NewTopic::new("orders", 1, 3)).await.unwrap();
    let dave_token = admin.create_user("dave").await.unwrap();
    admin.add_acl(acl_rule("dave", "produce", "topic", "orders")).await.unwrap();
    let dave = client(&c, None, Some(dave_token.clone()));
    eventually("dave produces with a token over plaintext", || produce(&dave, "orders")).await;

    // A metadata follower forwards the admin's create to the leader with the admin's token (no
    // TLS: the leader checks the token itself).
    let leader = c.running(1).unwrap().cluster().metadata_leader().unwrap().0;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut raw = AdminClient::new(channel(&c.grpc[follower as usize - 1].to_string(), None).await);
    let mut req = tonic::Request::new(proto::CreateTopicRequest {
        name: "via-follower".into(),
        config: Some(proto::TopicConfig { partitions: 1, replication_factor: 1, ..Default::default() }),
    });
    req.metadata_mut().insert("authorization", admin_token.header_value().parse().unwrap());
    raw.create_topic(req).await.expect("forwarded with the caller's token");

    // A password user through the same follower: its Basic authorization is forwarded as sent and
    // the leader checks the password itself.
    admin.create_password_user("gina", "gina's password").await.unwrap();
    admin.add_acl(acl_rule("gina", "create", "topic-prefix", "g.")).await.unwrap();
    let gina = Password::new("gina", "gina's password").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut req = tonic::Request::new(proto::CreateTopicRequest {
            name: "g.via-follower".into(),
            config: Some(proto::TopicConfig { partitions: 1, replication_factor: 1, ..Default::default() }),
        });
        req.metadata_mut().insert("authorization", gina.header_value().parse().unwrap());
        match raw.create_topic(req).await {
            Ok(_) => break,
            Err(status) => {
                assert!(tokio::time::Instant::now() < deadline, "forwarded with gina's password: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // A forwarded principal cannot be proven without TLS: refused.
    let leader = c.running(1).unwrap().cluster().metadata_leader().unwrap().0;
    let mut raw = ProduceClient::new(channel(&c.grpc[leader as usize - 1].to_string(), None).await);
    let mut req = tonic::Request::new(proto::ProduceRequest { topic: "orders".into(), ..Default::default() });
    req.metadata_mut().insert(meta::PRINCIPAL, "node:1".parse().unwrap());
    let status = raw.produce(req).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Metadata changes past a few snapshots, then every node restarts: users and rules are back.
    for i in 0..20 {
        admin.add_acl(acl_rule("dave", "consume", "topic", &format!("t{i}"))).await.unwrap();
    }
    for id in 1..=3 {
        c.restart(id).await.expect("restart");
    }
    assert!(c.not_ready(WAIT).await.is_empty());
    let snapshotted = (1..=3).any(|id| {
        let group = c.running(id).unwrap().cluster().router().group(shale_raft::GroupId::METADATA).unwrap();
        group.metrics().snapshot.is_some()
    });
    assert!(snapshotted, "the metadata group took a snapshot");
    let dave = client(&c, None, Some(dave_token));
    eventually("dave's token and rule survive the restart", || produce(&dave, "orders")).await;
    assert_denied(dave.admin().describe_topic("zz").await, "user:dave", "describe", "topic zz");
    dave.admin().describe_topic("orders").await.expect("dave's produce rule survived");
    let rules = eventually("admin lists the rules", || admin.list_acls()).await;
    assert_eq!(rules.len(), 22);
    // A password user survives the restart too (its SCRAM credential in the snapshot).
    let mut config = ClientConfig::new(c.endpoints());
    config.password = Some(gina);
    let gina = Client::new(config).unwrap().admin();
    eventually("gina's password survives the restart", || gina.describe_topic("g.via-follower")).await;
    c.shutdown().await.unwrap();
}

fn quick(c: &mut shale_node::NodeConfig) {
    c.raft.heartbeat_interval_ms = 50;
    c.raft.election_timeout_min_ms = 300;
    c.raft.election_timeout_max_ms = 600;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authorization_off_everything_is_allowed_but_a_bad_token_is_still_refused() {
    logs();
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(1, root.path(), quick).await.expect("cluster starts");
    assert!(c.not_ready(WAIT).await.is_empty());
    let anon = client(&c, None, None).admin();
    anon.create_topic(NewTopic::new("open", 1, 1)).await.expect("no rule needed while authorization is off");
    let me = anon.who_am_i().await.unwrap();
    assert_eq!((me.principal.as_str(), me.authorization), ("anonymous", false));

    // A forwarded principal from a client is ignored (not refused) while authorization is off.
    let mut raw = AccessClient::new(channel(&c.grpc[0].to_string(), None).await);
    let mut req = tonic::Request::new(proto::WhoAmIRequest {});
    req.metadata_mut().insert(meta::PRINCIPAL, "user:admin".parse().unwrap());
    assert_eq!(raw.who_am_i(req).await.unwrap().into_inner().principal, "anonymous");

    let token = anon.create_user("erin").await.unwrap();
    let erin = client(&c, None, Some(token)).admin();
    assert_eq!(erin.who_am_i().await.unwrap().principal, "user:erin");
    let wrong = Token::parse(&format!("erin:{}", "00".repeat(32))).unwrap();
    let e = client(&c, None, Some(wrong)).admin().list_topics().await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    c.shutdown().await.unwrap();
}
