//! deploy/docker-compose.yml is read by every Compose installed here (docker-compose v1 and/or the
//! `docker compose` plugin) and describes three nodes that fit together.

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
        assert_eq!(services.len(), 3, "{compose:?}");
        let mut ids = BTreeSet::new();
        let mut volumes = BTreeSet::new();
        for (name, svc) in services {
            let name = s(name);
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
            let peers = s(&env["SHALE_PEERS"]);
            assert_eq!(peers, "1=node-1:7101,2=node-2:7101,3=node-3:7101");
            assert!(peers.contains(&format!("{id}={name}:7101")));
            assert_eq!(s(&env["SHALE_DATA_DIR"]), "/data");
            assert_eq!(s(&env["RUST_LOG"]), shale_tests::NODE_LOG_FILTER, "{name}: the node's default log filter");
            let test: Vec<String> = svc["healthcheck"]["test"].as_sequence().unwrap().iter().map(s).collect();
            assert_eq!(test, ["CMD", "/usr/local/bin/shale-node", "healthcheck"], "the node probes its own /readyz");
            assert_eq!(s(&env["SHALE_HTTP_LISTEN"]), "0.0.0.0:8001", "the probe finds the HTTP port through this");
            assert_eq!(s(&svc["restart"]), "unless-stopped");
            // Published ports bind loopback only by default (v1 renders strings, v2 mappings).
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
            let volume = svc["volumes"].as_sequence().unwrap().first().cloned().unwrap();
            let (source, target) = match &volume {
                Value::String(v) => {
                    let mut parts = v.split(':');
                    (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
                }
                m => (s(&m["source"]), s(&m["target"])),
            };
            assert_eq!(target, "/data");
            volumes.insert(source);
        }
        assert_eq!(ids, BTreeSet::from(["1".to_string(), "2".to_string(), "3".to_string()]));
        assert_eq!(volumes.len(), 3, "each node has its own volume: {volumes:?}");
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
