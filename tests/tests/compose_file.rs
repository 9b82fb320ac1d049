//! deploy/docker-compose.yml is read by every Compose installed here (docker-compose v1 and/or the
//! `docker compose` plugin) and describes three nodes that fit together, secure by default: TLS with
//! certificates a one-shot job makes, and authorization on.

use std::collections::BTreeSet;

use serde_yaml_ng::Value;
use shale_tests::compose::ComposeCommand;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's volumes as (source, target, read-only); v1 renders strings, v2 mappings.
fn volumes(svc: &Value) -> Vec<(String, String, bool)> {
    svc["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| match v {
            Value::String(v) => {
                let parts: Vec<&str> = v.split(':').collect();
                (parts[0].to_string(), parts[1].to_string(), parts.get(2) == Some(&"ro"))
            }
            m => (s(&m["source"]), s(&m["target"]), m["read_only"].as_bool() == Some(true)),
        })
        .collect()
}

/// The value after `flag` in a command line (each occurrence).
fn flag_values(command: &[String], flag: &str) -> Vec<String> {
    command.windows(2).filter(|w| w[0] == flag).map(|w| w[1].clone()).collect()
}

#[tokio::test]
async fn compose_file_is_valid_and_describes_three_healthchecked_nodes() {
    let installed = ComposeCommand::installed().await;
    assert!(!installed.is_empty(), "neither docker-compose nor `docker compose` is installed");
    for compose in &installed {
        // SHALE_LOG empty: the file's own default filter, whatever the caller's environment holds.
        let env = [("SHALE_LOG".to_string(), String::new())];
        let out = compose.run(None, &env, &["config"], std::time::Duration::from_secs(60)).await.unwrap();
        let config: Value = serde_yaml_ng::from_str(&out.stdout).unwrap();
        let services = config["services"].as_mapping().unwrap();
        assert_eq!(services.len(), 4, "three nodes and the certs job: {compose:?}");

        // The one-shot certificate job: `shale cert init-cluster` from the same image, the CA (and the
        // clients' keys) in one volume, what the nodes need in another.
        let certs = &config["services"]["certs"];
        let entrypoint: Vec<String> = certs["entrypoint"].as_sequence().unwrap().iter().map(s).collect();
        assert_eq!(entrypoint, ["/usr/local/bin/shale"]);
        let command: Vec<String> = certs["command"].as_sequence().unwrap().iter().map(s).collect();
        assert_eq!(command[..2], ["cert".to_string(), "init-cluster".to_string()], "{command:?}");
        assert_eq!(flag_values(&command, "--nodes"), ["3"]);
        assert!(flag_values(&command, "--node-dns").contains(&"node-{id}".to_string()), "{command:?}");
        assert!(flag_values(&command, "--node-ip").contains(&"127.0.0.1".to_string()), "{command:?}");
        let clients = flag_values(&command, "--client");
        assert!(!clients.is_empty(), "a client certificate for the operator: {command:?}");
        let certs_volumes = volumes(certs);
        let volume_at = |dir: &str| -> String {
            certs_volumes
                .iter()
                .find(|(_, target, _)| target == dir)
                .unwrap_or_else(|| panic!("no volume on {dir}"))
                .0
                .clone()
        };
        let ca_volume = volume_at(&flag_values(&command, "--dir")[0]);
        let tls_volume = volume_at(&flag_values(&command, "--node-dir")[0]);
        assert_ne!(ca_volume, tls_volume, "the CA key stays off the nodes");

        let mut ids = BTreeSet::new();
        let mut data_volumes = BTreeSet::new();
        for (name, svc) in services {
            let name = s(name);
            if name == "certs" {
                continue;
            }
            let env = &svc["environment"];
            let id = s(&env["SHALE_NODE_ID"]);
            ids.insert(id.clone());
            assert_eq!(name, format!("node-{id}"), "{compose:?}");
            // Nodes talk on the internal listener over the Docker network; clients on the host are
            // told the published client port on loopback, so they follow leader redirects.
            assert_eq!(s(&env["SHALE_CLIENT_LISTEN"]), "0.0.0.0:7001");
            assert_eq!(s(&env["SHALE_INTERNAL_LISTEN"]), "0.0.0.0:7101");
            assert_eq!(s(&env["SHALE_INTERNAL_ADVERTISE"]), format!("{name}:7101"));
            assert_eq!(s(&env["SHALE_CLIENT_ADVERTISE"]), format!("127.0.0.1:700{id}"));
            // Kafka clients on the host are told the published Kafka port (9092 + id - 1).
            let kafka_port = 9091 + id.parse::<u16>().unwrap();
            assert_eq!(s(&env["SHALE_KAFKA_LISTEN"]), "0.0.0.0:9092");
            assert_eq!(s(&env["SHALE_KAFKA_ADVERTISE"]), format!("127.0.0.1:{kafka_port}"));
            let peers = s(&env["SHALE_PEERS"]);
            assert_eq!(peers, "1=node-1:7101,2=node-2:7101,3=node-3:7101");
            assert!(peers.contains(&format!("{id}={name}:7101")));
            assert_eq!(s(&env["SHALE_DATA_DIR"]), "/data");
            assert_eq!(s(&env["RUST_LOG"]), shale_tests::NODE_LOG_FILTER, "{name}: the node's default log filter");
            let test: Vec<String> = svc["healthcheck"]["test"].as_sequence().unwrap().iter().map(s).collect();
            assert_eq!(test, ["CMD", "/usr/local/bin/shale-node", "healthcheck"], "the node probes its own /readyz");
            assert_eq!(s(&env["SHALE_HTTP_LISTEN"]), "0.0.0.0:8001", "the probe finds the HTTP port through this");
            assert_eq!(s(&svc["restart"]), "unless-stopped");

            // Secure by default: TLS with this node's own certificate from the certs job's node
            // volume (read-only), authorization on, the job's client a super-user.
            let mounts = volumes(svc);
            let tls_dir = mounts
                .iter()
                .find(|(source, _, _)| *source == tls_volume)
                .unwrap_or_else(|| panic!("{name} does not mount the certificates: {mounts:?}"));
            assert!(tls_dir.2, "{name} mounts its certificates read-only");
            assert!(!mounts.iter().any(|(source, _, _)| *source == ca_volume), "{name} mounts the CA key");
            let dir = &tls_dir.1;
            assert_eq!(s(&env["SHALE_TLS_CA"]), format!("{dir}/ca.pem"), "{name}");
            assert_eq!(s(&env["SHALE_TLS_CERT"]), format!("{dir}/node-{id}.pem"), "{name}");
            assert_eq!(s(&env["SHALE_TLS_KEY"]), format!("{dir}/node-{id}.key"), "{name}");
            assert_eq!(s(&env["SHALE_AUTH_ENABLED"]), "true", "{name}: authorization on");
            let supers: Vec<&str> = env["SHALE_SUPER_USERS"].as_str().unwrap().split(',').map(str::trim).collect();
            for client in &clients {
                assert!(supers.contains(&client.as_str()), "{name}: {client} is a super-user: {supers:?}");
            }
            assert_eq!(
                s(&svc["depends_on"]["certs"]["condition"]),
                "service_completed_successfully",
                "{name} starts once the certificates exist"
            );

            // Published ports bind loopback only by default (v1 renders strings, v2 mappings).
            let published: Vec<String> = svc["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|port| match port {
                    Value::String(p) => p.clone(),
                    m => format!("{}:{}:{}", s(&m["host_ip"]), s(&m["published"]), s(&m["target"])),
                })
                .collect();
            assert!(
                published.iter().any(|p| p.trim_end_matches("/tcp") == format!("127.0.0.1:{kafka_port}:9092")),
                "{name} publishes its Kafka listener at the advertised port: {published:?}"
            );
            for port in svc["ports"].as_sequence().unwrap() {
                let text = match port {
                    Value::String(p) => p.clone(),
                    m => format!("{}:{}:{}", s(&m["host_ip"]), s(&m["published"]), s(&m["target"])),
                };
                assert!(text.starts_with("127.0.0.1:"), "{name} publishes {text}");
                assert!(!text.ends_with(":7101"), "{name} publishes its internal listener: {text}");
                if text.ends_with(":7001") {
                    assert_eq!(
                        text,
                        format!("127.0.0.1:700{id}:7001"),
                        "the advertised client port is the published one"
                    );
                }
            }
            let data = mounts.iter().find(|(_, target, _)| target == "/data").expect("a data volume");
            data_volumes.insert(data.0.clone());
        }
        assert_eq!(ids, BTreeSet::from(["1".to_string(), "2".to_string(), "3".to_string()]));
        assert_eq!(data_volumes.len(), 3, "each node has its own volume: {data_volumes:?}");
    }
}

#[test]
fn the_image_sets_the_nodes_default_log_filter() {
    let path = shale_tests::paths::deploy_dir().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RUST_LOG="))
        .map(|v| v.trim_end_matches('\\').trim().trim_matches('"'))
        .collect();
    assert_eq!(values, [shale_tests::NODE_LOG_FILTER], "the image's RUST_LOG (ENV) in {}", path.display());
}
