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

/// `shale cert init-cluster` (the Compose `certs` job): one run makes the CA, every node's and
/// client's certificate; a second run keeps every file (a restarted job changes nothing); a CA
/// already in the directory signs the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_cluster_makes_every_certificate_once_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let p = dir.path();
    let cmd = args(&[
        "cert",
        "init-cluster",
        "--dir",
        d,
        "--nodes",
        "3",
        "--node-dns",
        "node-{id}",
        "--node-ip",
        "127.0.0.1",
        "--client",
        "admin",
    ]);
    assert_exit(&run_shale(cmd.clone(), vec![]).await, 0);
    let mut before = Vec::new();
    for id in 1..=3 {
        let pem =
            TlsPem::load(&p.join(files::CA_CERT), &p.join(files::node_cert(id)), &p.join(files::node_key(id))).unwrap();
        assert_eq!(certified_node(&der(&pem.cert)).unwrap(), Some(id));
        // The DNS SAN is an IA5String in the DER: `{id}` was replaced.
        let name = format!("node-{id}");
        assert!(der(&pem.cert).windows(name.len()).any(|w| w == name.as_bytes()), "node {id} names {name}");
        before.push(pem.cert.clone());
    }
    let admin = std::fs::read(p.join(files::client_cert("admin"))).unwrap();
    assert_eq!(shale_raft::network::tls::certified_client(&der(&admin)).unwrap().as_deref(), Some("admin"));
    let ca = std::fs::read(p.join(files::CA_CERT)).unwrap();

    let again = run_shale(cmd.clone(), vec![]).await;
    assert_exit(&again, 0);
    assert!(stdout(&again).contains("kept"), "{}", stdout(&again));
    assert_eq!(std::fs::read(p.join(files::CA_CERT)).unwrap(), ca, "the CA is kept");
    for id in 1..=3u64 {
        assert_eq!(std::fs::read(p.join(files::node_cert(id))).unwrap(), before[id as usize - 1], "node {id} kept");
    }
    assert_eq!(std::fs::read(p.join(files::client_cert("admin"))).unwrap(), admin);

    // A new node with the CA already there: signed by it (it loads against the kept CA).
    std::fs::remove_file(p.join(files::node_cert(2))).unwrap();
    std::fs::remove_file(p.join(files::node_key(2))).unwrap();
    assert_exit(&run_shale(cmd.clone(), vec![]).await, 0);
    TlsPem::load(&p.join(files::CA_CERT), &p.join(files::node_cert(2)), &p.join(files::node_key(2))).unwrap();
    assert_ne!(std::fs::read(p.join(files::node_cert(2))).unwrap(), before[1], "node 2 made anew");
    // Half a pair is an error, not silently completed.
    std::fs::remove_file(p.join(files::node_key(3))).unwrap();
    assert_exit(&run_shale(cmd, vec![]).await, 2);

    // --node-dir: the nodes' directory gets the CA certificate and the node pairs, and no other key.
    let nodes = tempfile::tempdir().unwrap();
    let n = nodes.path();
    let cmd = args(&[
        "cert",
        "init-cluster",
        "--dir",
        d,
        "--nodes",
        "4",
        "--client",
        "admin",
        "--node-dir",
        n.to_str().unwrap(),
        "--force",
    ]);
    assert_exit(&run_shale(cmd, vec![]).await, 0);
    let mut listed: Vec<String> =
        std::fs::read_dir(n).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    listed.sort();
    let mut expected = vec![files::CA_CERT.to_string()];
    for id in 1..=4 {
        expected.extend([files::node_key(id), files::node_cert(id)]);
    }
    expected.sort();
    assert_eq!(listed, expected, "the node directory holds no CA key and no client key");
    assert_ne!(std::fs::read(p.join(files::CA_CERT)).unwrap(), ca, "--force made a new CA");
    assert_eq!(std::fs::read(n.join(files::CA_CERT)).unwrap(), std::fs::read(p.join(files::CA_CERT)).unwrap());
    for id in 1..=4 {
        TlsPem::load(&n.join(files::CA_CERT), &n.join(files::node_cert(id)), &n.join(files::node_key(id))).unwrap();
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
