//! The Kubernetes manifests in deploy/k8s: valid against the Kubernetes JSON schemas (strict, offline,
//! with the `kubernetes-validate` tool), the validation really rejects broken copies, and the pieces
//! fit together (names, selectors, ports, probes, peers, TLS and authorization on with the Secret
//! deploy/k8s-certs.sh makes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;
use shale_tests::k8s;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn documents() -> BTreeMap<String, Value> {
    k8s::documents().unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn copy_manifests(dir: &Path) -> Vec<PathBuf> {
    k8s::manifest_files()
        .unwrap()
        .iter()
        .map(|f| {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            to
        })
        .collect()
}

#[tokio::test]
async fn manifests_validate_against_the_kubernetes_schemas() {
    shale_tests::init_logging();
    let files = k8s::manifest_files().unwrap();
    assert!(files.len() >= 5, "expected configmap, two services, statefulset, pdb: {files:?}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let result = k8s::validate(&refs).await.unwrap();
    assert!(result.ok, "deploy/k8s does not validate:\n{}", result.report);
    for kind in
        ["configmap/", "service/shale-peers", "service/shale ", "statefulset/shale", "poddisruptionbudget/shale"]
    {
        assert!(result.report.contains(kind), "no verdict for {kind} in:\n{}", result.report);
    }
    assert!(!result.report.contains("ERROR"), "{}", result.report);
}

#[tokio::test]
async fn broken_manifests_fail_validation() {
    shale_tests::init_logging();
    // Each breakage: file, text to replace, replacement, what the validator must name.
    let breakages = [
        ("20-statefulset.yaml", "  replicas: 3\n", "  replicas: \"three\"\n", "replicas"),
        (
            "20-statefulset.yaml",
            "          imagePullPolicy: IfNotPresent\n",
            "          imagePullPolicy: IfNotPresent\n          imagePulPolicy: Always\n",
            "imagePulPolicy",
        ),
        ("30-pdb.yaml", "  maxUnavailable: 1\n", "  maxUnavailable: [1]\n", "maxUnavailable"),
        ("10-service-peers.yaml", "      port: 7001\n", "      port: seven\n", "port"),
        ("00-configmap.yaml", "  RUST_LOG: \"info,openraft=warn\"\n", "  RUST_LOG:\n    level: info\n", "RUST_LOG"),
    ];
    // Control: the untouched copies pass, so each failure below is its breakage's.
    let control_dir = tempfile::tempdir().unwrap();
    let copies = copy_manifests(control_dir.path());
    let refs: Vec<&Path> = copies.iter().map(PathBuf::as_path).collect();
    let control = k8s::validate(&refs).await.unwrap();
    assert!(control.ok, "control copies failed:\n{}", control.report);
    for (file, from, to, named) in breakages {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join(file);
        let text = read(&control_dir.path().join(file));
        assert!(text.contains(from), "{file} no longer contains {from:?}: update this test");
        std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
        let result = k8s::validate(&[target.as_path()]).await.unwrap();
        assert!(!result.ok, "{file} with {to:?} passed validation:\n{}", result.report);
        assert!(result.report.contains(named), "the report on {file} does not name {named}:\n{}", result.report);
    }
}

#[test]
fn manifests_fit_together() {
    let docs = documents();
    let sts = &docs["StatefulSet/shale"];
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let replicas = spec["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    assert_eq!(s(&spec["podManagementPolicy"]), "Parallel", "OrderedReady deadlocks: no node is ready alone");
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);

    // Headless service for peers, matching the StatefulSet.
    let peers_svc = &docs[&format!("Service/{}", s(&spec["serviceName"]))];
    assert_eq!(s(&peers_svc["spec"]["clusterIP"]), "None");
    assert_eq!(peers_svc["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));
    // Every selector selects the pods.
    for key in ["Service/shale-peers", "Service/shale"] {
        assert_eq!(&docs[key]["spec"]["selector"], pod_labels, "{key}");
    }
    let pdb = &docs["PodDisruptionBudget/shale"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], pod_labels);
    assert_eq!(pdb["spec"]["maxUnavailable"].as_u64(), Some(1));

    // The container: ports, probes, config, volumes, resources, graceful stop.
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let ports: BTreeMap<&str, u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(ports, BTreeMap::from([("grpc", 7001), ("internal", 7101), ("http", 8001), ("kafka", 9092)]));
    for svc in ["Service/shale-peers", "Service/shale"] {
        for p in docs[svc]["spec"]["ports"].as_sequence().unwrap() {
            assert!(ports.contains_key(s(&p["targetPort"])), "{svc} targets an unknown port {p:?}");
        }
    }
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(s(&c[probe]["httpGet"]["port"]), "http", "{probe}");
    }
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 10);
    assert!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["requests"]["memory"].is_string());
    let claim = s(&spec["volumeClaimTemplates"][0]["metadata"]["name"]);
    let mounts: BTreeMap<&str, &str> =
        c["volumeMounts"].as_sequence().unwrap().iter().map(|m| (s(&m["name"]), s(&m["mountPath"]))).collect();
    assert_eq!(mounts.get(claim), Some(&"/data"));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(10001), "the image's user");

    // The ConfigMap the pods read: data dir on the claim, the id from the hostname, and one peer per
    // pod with node id = ordinal + 1 under the headless service's name.
    let cm_name = s(&c["envFrom"][0]["configMapRef"]["name"]);
    let cm = &docs[&format!("ConfigMap/{cm_name}")]["data"];
    assert_eq!(s(&cm["SHALE_DATA_DIR"]), "/data");
    assert_eq!(s(&cm["RUST_LOG"]), shale_tests::NODE_LOG_FILTER, "the node's default filter, not openraft's chatter");
    let sts_name = s(&sts["metadata"]["name"]);
    let peers_name = s(&peers_svc["metadata"]["name"]);
    let expected: Vec<String> =
        (0..replicas).map(|ordinal| format!("{}={sts_name}-{ordinal}.{peers_name}:7101", ordinal + 1)).collect();
    assert_eq!(s(&cm["SHALE_PEERS"]), expected.join(","));
    let env = |name: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| s(&e["name"]) == name)
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(s(&env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"]), "metadata.name");
    // Nodes reach each other on the internal listener; clients are told the client listener.
    assert_eq!(s(&cm["SHALE_CLIENT_LISTEN"]), "0.0.0.0:7001");
    assert_eq!(s(&cm["SHALE_INTERNAL_LISTEN"]), "0.0.0.0:7101");
    assert_eq!(s(&env("SHALE_CLIENT_ADVERTISE")["value"]), format!("$(POD_NAME).{peers_name}:7001"));
    assert_eq!(s(&env("SHALE_INTERNAL_ADVERTISE")["value"]), format!("$(POD_NAME).{peers_name}:7101"));
    let client_svc: Vec<&str> =
        docs["Service/shale"]["spec"]["ports"].as_sequence().unwrap().iter().map(|p| s(&p["targetPort"])).collect();
    assert!(!client_svc.contains(&"internal"), "the client Service exposes no internal port");
    assert!(client_svc.contains(&"kafka"), "Kafka clients bootstrap from the client Service");
    assert_eq!(s(&cm["SHALE_KAFKA_LISTEN"]), "0.0.0.0:9092");
    assert_eq!(s(&env("SHALE_KAFKA_ADVERTISE")["value"]), format!("$(POD_NAME).{peers_name}:9092"));

    // Secure by default: TLS with each pod's own certificate from the Secret the script makes, and
    // authorization on with the script's client a super-user.
    let tls_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["secret"].is_mapping())
        .expect("a Secret volume with the certificates");
    let script = read(&shale_tests::paths::deploy_dir().join("k8s-certs.sh"));
    let script_value = |name: &str| -> String {
        let line = script.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap_or_else(|| panic!("no {name}="));
        line.split_once('=').unwrap().1.to_string()
    };
    assert_eq!(s(&tls_volume["secret"]["secretName"]), script_value("secret"), "the Secret k8s-certs.sh makes");
    assert_eq!(tls_volume["secret"]["defaultMode"].as_u64(), Some(0o440), "readable by the pod's group only");
    assert_eq!(script_value("sts"), sts_name);
    assert_eq!(script_value("peers"), peers_name);
    let tls_mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == tls_volume["name"])
        .expect("the certificates are mounted");
    assert_eq!(tls_mount["readOnly"].as_bool(), Some(true));
    let tls_dir = s(&tls_mount["mountPath"]);
    assert_eq!(s(&cm["SHALE_TLS_CA"]), format!("{tls_dir}/ca.pem"));
    assert_eq!(s(&env("SHALE_TLS_CERT")["value"]), format!("{tls_dir}/$(POD_NAME).pem"));
    assert_eq!(s(&env("SHALE_TLS_KEY")["value"]), format!("{tls_dir}/$(POD_NAME).key"));
    assert_eq!(s(&cm["SHALE_AUTH_ENABLED"]), "true", "authorization on");
    let supers: Vec<&str> = s(&cm["SHALE_SUPER_USERS"]).split(',').map(str::trim).collect();
    assert!(supers.contains(&script_value("client").as_str()), "the script's client is a super-user: {supers:?}");

    // Node id = ordinal + 1: SHALE_CONFIG names the pod's own file in the mounted id ConfigMap.
    let config_path = s(&env("SHALE_CONFIG")["value"]);
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    assert_eq!(file, "$(POD_NAME).toml");
    let mount = c["volumeMounts"].as_sequence().unwrap().iter().find(|m| s(&m["mountPath"]) == dir).unwrap();
    let volume = pod["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    let ids = &docs[&format!("ConfigMap/{}", s(&volume["configMap"]["name"]))]["data"];
    assert_eq!(ids.as_mapping().unwrap().len() as u64, replicas);
    for ordinal in 0..replicas {
        let text = s(&ids[format!("{sts_name}-{ordinal}.toml").as_str()]);
        assert_eq!(text.trim(), format!("node_id = {}", ordinal + 1));
    }
}
