//! `shale cert` makes a CA and certificates that a node and the CLI accept; the CLI reaches a TLS
//! cluster with `--tls-ca` and is refused without it.

mod common;

use common::{assert_exit, run_shale, stderr, stdout};
use shale_node::testing::LocalCluster;
use shale_raft::network::tls::{TlsPem, certified_node, files};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).expect("base64 PEM body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_commands_make_a_ca_and_certificates_that_name_their_holder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_exit(&run_shale(args(&["cert", "node", "--dir", d, "--id", "1"]), vec![]).await, 1);
    assert_exit(&run_shale(args(&["cert", "init-ca", "--dir", d]), vec![]).await, 0);
    let again = run_shale(args(&["cert", "init-ca", "--dir", d]), vec![]).await;
    assert_exit(&again, 2);
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let node =
        run_shale(args(&["cert", "node", "--dir", d, "--id", "2", "--dns", "node-2", "--ip", "127.0.0.1"]), vec![])
            .await;
    assert_exit(&node, 0);
    assert!(stdout(&node).contains("shale://node/2"), "{}", stdout(&node));
    assert_exit(&run_shale(args(&["cert", "client", "--dir", d, "--principal", "alice"]), vec![]).await, 0);
    assert_exit(&run_shale(args(&["cert", "client", "--dir", d, "--principal", "../etc"]), vec![]).await, 2);

    let p = dir.path();
    let pem = TlsPem::load(&p.join(files::CA_CERT), &p.join(files::node_cert(2)), &p.join(files::node_key(2))).unwrap();
    assert_eq!(certified_node(&der(&pem.cert)).unwrap(), Some(2));
    let client = std::fs::read(p.join(files::client_cert("alice"))).unwrap();
    assert_eq!(certified_node(&der(&client)).unwrap(), None, "a client certificate names no node");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [files::CA_KEY.to_string(), files::node_key(2), files::client_key("alice")] {
            let mode = std::fs::metadata(p.join(&key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key} is readable by its owner only");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_reaches_a_tls_cluster_with_its_ca() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), |_| {}).await.unwrap();
    assert!(c.not_ready(std::time::Duration::from_secs(30)).await.is_empty());
    let bootstrap = c.endpoints().join(",");
    let ca = c.tls_dir().join(files::CA_CERT);
    let ca = ca.to_str().unwrap();
    let ok =
        run_shale(args(&["--bootstrap", &bootstrap, "--tls-ca", ca, "topic", "create", "t", "-p", "2"]), vec![]).await;
    assert_exit(&ok, 0);
    let plain = run_shale(args(&["--bootstrap", &bootstrap, "--attempts", "1", "topic", "list"]), vec![]).await;
    assert_exit(&plain, 1);
    let status = run_shale(args(&["--bootstrap", &bootstrap, "--tls-ca", ca, "cluster", "status"]), vec![]).await;
    assert_exit(&status, 0);
    c.shutdown().await.unwrap();
}
