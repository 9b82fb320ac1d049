//! The Kubernetes StatefulSet run as Docker containers (no Kubernetes here): three containers built
//! from the pod template exactly as the kubelet would (environment from the ConfigMap and the env
//! list with `$(VAR)` expansion and `metadata.name`, ConfigMap volumes as read-only files, the data
//! claim as a volume, `emptyDir` as tmpfs, the security context's user and read-only root file system,
//! names `<pod>.<serviceName>` as the headless Service gives them, the Secret `shale-tls` as
//! deploy/k8s-certs.sh makes it). The nodes must take ids ordinal + 1, find each other over mutual
//! TLS, become ready on the readiness probe's path and port, and serve the script's super-user.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_yaml_ng::Value;
use shale_tests::docker::{self, RunSpec, docker, docker_blocking};
use shale_tests::{cluster, http, image, k8s, tls};
use tokio::time::Instant;

/// Removes the pods, volumes and network on drop.
struct Pods {
    network: String,
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                eprintln!("===== {c} =====\n{}", docker::logs_tail_blocking(c, 40));
            }
        }
        let mut args = vec!["rm", "--force"];
        args.extend(self.containers.iter().map(String::as_str));
        let _ = docker_blocking(&args);
        for v in &self.volumes {
            let _ = docker_blocking(&["volume", "rm", "--force", v]);
        }
        let _ = docker_blocking(&["network", "rm", &self.network]);
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_take_their_ordinal_ids_and_become_ready() {
    shale_tests::init_logging();
    let image = image::ensure_image().await.unwrap();
    cluster::remove_orphans().await;
    let docs = k8s::documents().unwrap();
    let sts = &docs["StatefulSet/shale"];
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    let sts_name = text(&sts["metadata"]["name"]);
    let service = text(&spec["serviceName"]);
    let replicas = spec["replicas"].as_u64().unwrap();
    let security = &pod["securityContext"];
    let user = format!("{}:{}", text(&security["runAsUser"]), text(&security["runAsGroup"]));
    let read_only = c["securityContext"]["readOnlyRootFilesystem"].as_bool() == Some(true);
    let http_port = c["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == "http").unwrap()["containerPort"]
        .as_u64()
        .unwrap();
    let readiness_path = text(&c["readinessProbe"]["httpGet"]["path"]);

    let name = format!("shale-k8s{}", std::process::id());
    let mut pods = Pods { network: format!("{name}-net"), containers: Vec::new(), volumes: Vec::new() };
    docker(&["network", "create", "--label", &format!("{}={name}", cluster::LABEL), &pods.network]).await.unwrap();
    let files = tempfile::tempdir().unwrap();
    // The Secret's files as deploy/k8s-certs.sh makes them (with this run's `shale` CLI), and its
    // client certificate for the harness.
    let certs = files.path().join("certs");
    let shale = shale_tests::paths::profile_dir().join("shale");
    let script = shale_tests::paths::deploy_dir().join("k8s-certs.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .args(["--no-apply", "--replicas", &replicas.to_string(), "--dir"])
        .arg(&certs)
        .env("SHALE", &shale)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let credentials = tls::Credentials::load(&certs.join("client"), tls::SUPER_USER).unwrap();
    tls::use_credentials(credentials.clone()).unwrap();

    for ordinal in 0..replicas {
        let pod_name = format!("{sts_name}-{ordinal}");
        // Environment: envFrom ConfigMaps first, then the env list in order (later wins, refs expand).
        let mut env: Vec<(String, String)> = Vec::new();
        for from in c["envFrom"].as_sequence().into_iter().flatten() {
            let cm = &docs[&format!("ConfigMap/{}", text(&from["configMapRef"]["name"]))]["data"];
            for (k, v) in cm.as_mapping().unwrap() {
                env.push((text(k), text(v)));
            }
        }
        for e in c["env"].as_sequence().into_iter().flatten() {
            let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(v), _) => k8s::expand_env(v, &env),
                (_, Value::String(path)) if path == "metadata.name" => pod_name.clone(),
                other => panic!("env {e:?}: unsupported source {other:?}"),
            };
            env.push((text(&e["name"]), value));
        }
        // Volumes: ConfigMaps as read-only files, emptyDir as tmpfs, the claim template as a volume.
        let mut options = vec!["--user".to_string(), user.clone()];
        // fsGroup: the pod's processes carry it as a supplementary group.
        options.extend(["--group-add".to_string(), text(&security["fsGroup"])]);
        if read_only {
            options.push("--read-only".into());
        }
        let mut volumes = Vec::new();
        for m in c["volumeMounts"].as_sequence().unwrap() {
            let (vol, path) = (text(&m["name"]), text(&m["mountPath"]));
            let source = pod["volumes"].as_sequence().into_iter().flatten().find(|v| text(&v["name"]) == vol);
            match source {
                Some(v) if v["configMap"].is_mapping() => {
                    let dir = files.path().join(format!("{pod_name}-{vol}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
                    let cm = &docs[&format!("ConfigMap/{}", text(&v["configMap"]["name"]))]["data"];
                    for (k, data) in cm.as_mapping().unwrap() {
                        let f = dir.join(text(k));
                        std::fs::write(&f, text(data)).unwrap();
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
                    }
                    options.extend(["-v".into(), format!("{}:{path}:ro", dir.display())]);
                }
                Some(v) if v["secret"].is_mapping() => {
                    // The kubelet's copy: owner root, group fsGroup, defaultMode. (Without the right to
                    // change the owner, the files are made readable by all instead.)
                    let name = text(&v["secret"]["secretName"]);
                    assert_eq!(name, "shale-tls", "the Secret deploy/k8s-certs.sh makes");
                    let mode = v["secret"]["defaultMode"].as_u64().unwrap() as u32;
                    let group = security["fsGroup"].as_u64().unwrap() as u32;
                    let dir = files.path().join(format!("{pod_name}-{vol}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
                    for f in std::fs::read_dir(certs.join("secret")).unwrap().flatten() {
                        let to = dir.join(f.file_name());
                        std::fs::copy(f.path(), &to).unwrap();
                        let mode =
                            if std::os::unix::fs::chown(&to, Some(0), Some(group)).is_ok() { mode } else { 0o444 };
                        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
                    }
                    options.extend(["-v".into(), format!("{}:{path}:ro", dir.display())]);
                }
                Some(v) if v["emptyDir"].is_mapping() => {
                    options
                        .extend(["--tmpfs".into(), format!("{path}:uid={},mode=0700", text(&security["runAsUser"]))]);
                }
                Some(other) => panic!("unsupported volume {other:?}"),
                None => {
                    // A volumeClaimTemplate: a named volume (it inherits /data's ownership from the image).
                    let volume = format!("{name}-{vol}-{pod_name}");
                    pods.volumes.push(volume.clone());
                    volumes.push((volume, path));
                }
            }
        }
        let container = format!("{name}-{pod_name}");
        pods.containers.push(container.clone());
        let spec = RunSpec {
            name: container,
            image: image.clone(),
            hostname: Some(pod_name.clone()),
            network: Some(pods.network.clone()),
            aliases: vec![format!("{pod_name}.{service}")],
            env,
            volumes,
            labels: vec![(cluster::LABEL.to_string(), name.clone())],
            options,
            ..RunSpec::default()
        };
        docker::run(&spec).await.unwrap();
    }

    // Every pod becomes ready on the readiness probe, and reports node id = ordinal + 1.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut ids = BTreeMap::new();
    for (ordinal, container) in pods.containers.iter().enumerate() {
        let ip = docker::inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}").await.unwrap();
        let http_addr = format!("{ip}:{http_port}");
        loop {
            if matches!(http::get(&http_addr, &readiness_path, Duration::from_secs(2)).await, Ok(r) if r.status == 200)
            {
                break;
            }
            let state = docker::inspect(container, "{{.State.Status}}").await.unwrap();
            assert!(Instant::now() < deadline, "{container} not ready within 90 s (state {state})");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let metrics = http::get(&http_addr, "/metrics", Duration::from_secs(5)).await.unwrap();
        assert_eq!(metrics.status, 200);
        let status = {
            // TLS with the script's client certificate; the pod's certificate names the client
            // Service `shale` (the container's address is not in it).
            let mut admin = shale_client::proto::admin_client::AdminClient::new(
                credentials.channel_named(&format!("{ip}:7001"), "shale").unwrap(),
            );
            admin.cluster_status(shale_client::proto::ClusterStatusRequest {}).await.unwrap().into_inner()
        };
        assert_eq!(status.node_id, ordinal as u64 + 1, "{container}");
        // The client is the script's super-user, and the nodes enforce authorization.
        let who = shale_client::proto::access_client::AccessClient::new(
            credentials.channel_named(&format!("{ip}:7001"), "shale").unwrap(),
        )
        .who_am_i(shale_client::proto::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
        assert_eq!((who.principal.as_str(), who.super_user, who.authorization), ("user:admin", true, true));
        let members: BTreeMap<u64, String> = status.members.iter().map(|m| (m.id, m.addr.clone())).collect();
        ids.insert(status.node_id, members);
    }
    let expected: BTreeMap<u64, String> =
        (0..replicas).map(|o| (o + 1, format!("{sts_name}-{o}.{service}:7001"))).collect();
    for (id, members) in &ids {
        assert_eq!(members, &expected, "members as node {id} sees them");
    }
}
