//! `shale user`, `shale acl` and `shale quota` against a TLS cluster with authorization on, and `--token`: the
//! super-user (by client certificate) makes a user and rules; the user is refused until a rule
//! allows it.

mod common;

use std::time::Duration;

use common::{assert_exit, run_shale, stderr, stdout};
use shale_node::testing::LocalCluster;
use shale_raft::network::tls::files;

fn auth_on(c: &mut shale_node::NodeConfig) {
    c.auth.enabled = true;
    c.auth.super_users = ["admin".to_string()].into();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_and_rules_from_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.unwrap();
    assert!(c.not_ready(Duration::from_secs(30)).await.is_empty());
    let dir = c.tls_dir();
    let d = dir.to_str().unwrap().to_string();
    assert_exit(
        &run_shale(
            vec!["cert".into(), "client".into(), "--dir".into(), d, "--principal".into(), "admin".into()],
            vec![],
        )
        .await,
        0,
    );
    let path = |name: String| dir.join(name).to_str().unwrap().to_string();
    let tls =
        vec!["--bootstrap".to_string(), c.endpoints().join(","), "--tls-ca".into(), path(files::CA_CERT.to_string())];
    let admin = |args: &[&str]| {
        let mut v = tls.clone();
        v.extend([
            "--tls-cert".to_string(),
            path(files::client_cert("admin")),
            "--tls-key".into(),
            path(files::client_key("admin")),
        ]);
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let as_token = |token: &str, args: &[&str]| {
        let mut v = tls.clone();
        v.extend(["--attempts".to_string(), "1".into(), "--token".into(), token.to_string()]);
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };

    let created = run_shale(admin(&["user", "create", "alice"]), vec![]).await;
    assert_exit(&created, 0);
    let token = stdout(&created).trim().to_string();
    assert!(token.starts_with("alice:") && token.len() == 6 + 64, "{token:?}");
    assert!(stderr(&created).contains("shown this once"), "{}", stderr(&created));

    // The token names alice (once every node applied the user).
    let mut who = String::new();
    for _ in 0..100 {
        let out = run_shale(as_token(&token, &["user", "whoami", "-o", "json"]), vec![]).await;
        if out.status.code() == Some(0) {
            who = stdout(&out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(who.contains("\"principal\": \"user:alice\"") && who.contains("\"source\": \"token\""), "{who}");

    // Refused, with the code, the principal and a hint.
    let refused = run_shale(as_token(&token, &["topic", "create", "a.x", "-p", "1", "-r", "1"]), vec![]).await;
    assert_exit(&refused, 1);
    let err = stderr(&refused);
    assert!(err.contains("NOT_AUTHORIZED") && err.contains("user:alice") && err.contains("shale acl add"), "{err}");

    let rule = ["--principal", "alice", "--operation", "create", "--topic-prefix", "a."];
    let add: Vec<&str> = ["acl", "add"].into_iter().chain(rule).collect();
    assert_exit(&run_shale(admin(&add), vec![]).await, 0);
    let list = run_shale(admin(&["acl", "list", "-o", "json"]), vec![]).await;
    assert_exit(&list, 0);
    assert!(stdout(&list).contains("\"resource_type\": \"topic-prefix\""), "{}", stdout(&list));
    let mut ok = false;
    for _ in 0..100 {
        let out =
            run_shale(as_token(&token, &["topic", "create", "a.x", "-p", "1", "-r", "1", "--if-not-exists"]), vec![])
                .await;
        if out.status.code() == Some(0) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the rule lets alice create a.x");
    let remove: Vec<&str> = ["acl", "remove"].into_iter().chain(rule).collect();
    assert_exit(&run_shale(admin(&remove), vec![]).await, 0);
    assert_exit(&run_shale(admin(&remove), vec![]).await, 1);

    // Quotas: set, listed, refused to a user without cluster-admin, removed; no rate is a usage error.
    let set = run_shale(admin(&["quota", "set", "--principal", "alice", "--produce-rate", "1MiB"]), vec![]).await;
    assert_exit(&set, 0);
    assert!(stdout(&set).contains("quota of user alice: produce 1048576 B/s, consume -"), "{}", stdout(&set));
    let set = run_shale(admin(&["quota", "set", "--default", "--consume-rate", "2MB"]), vec![]).await;
    assert_exit(&set, 0);
    let list = run_shale(admin(&["quota", "list", "-o", "json"]), vec![]).await;
    assert_exit(&list, 0);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(
        shown,
        serde_json::json!([
            {"entity": "*", "produce_bytes_per_sec": null, "consume_bytes_per_sec": 2_000_000},
            {"entity": "alice", "produce_bytes_per_sec": 1_048_576, "consume_bytes_per_sec": null},
        ])
    );
    let refused = run_shale(as_token(&token, &["quota", "set", "--default", "--produce-rate", "1"]), vec![]).await;
    assert_exit(&refused, 1);
    assert!(stderr(&refused).contains("NOT_AUTHORIZED"), "{}", stderr(&refused));
    assert_exit(&run_shale(admin(&["quota", "set", "--principal", "alice"]), vec![]).await, 2);
    assert_exit(&run_shale(admin(&["quota", "remove", "--principal", "alice"]), vec![]).await, 0);
    assert_exit(&run_shale(admin(&["quota", "remove", "--principal", "alice"]), vec![]).await, 1);
    let table = run_shale(admin(&["quota", "list"]), vec![]).await;
    assert!(stdout(&table).contains("2000000 B/s") && !stdout(&table).contains("alice"), "{}", stdout(&table));

    // Users: listed, deleted; a deleted user's token is refused; a malformed one is a usage error.
    let users = run_shale(admin(&["user", "list"]), vec![]).await;
    assert_exit(&users, 0);
    assert!(stdout(&users).contains("alice"), "{}", stdout(&users));
    assert_exit(&run_shale(admin(&["user", "delete", "alice"]), vec![]).await, 0);
    let mut refused = None;
    for _ in 0..100 {
        let out = run_shale(as_token(&token, &["user", "whoami"]), vec![]).await;
        if out.status.code() == Some(1) {
            refused = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a deleted user's token is refused");
    assert!(stderr(&refused).contains("UNAUTHENTICATED"), "{}", stderr(&refused));
    assert_exit(&run_shale(as_token("nonsense", &["user", "whoami"]), vec![]).await, 2);
    c.shutdown().await.unwrap();
}
