//! `shale-node dev`: a whole local cluster in one process, for a first try with no setup.

use std::time::Duration;

use crate::cli::DevArgs;
use crate::error::NodeError;
use crate::node::{Node, NodeHandle};
use crate::signal::shutdown_signal;

/// How long `dev` waits for the cluster to elect a metadata leader before saying so.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts every node, prints the endpoints, runs until Ctrl-C / SIGTERM, then stops them all.
pub async fn run(args: &DevArgs) -> Result<(), NodeError> {
    let mut configs = args.configs()?;
    let tls_dir = args.data_dir.join("tls");
    if args.tls {
        let ids: Vec<u64> = configs.iter().map(|c| c.node_id).collect();
        for (config, files) in configs.iter_mut().zip(crate::tls::write_local_certs(&tls_dir, &ids)?) {
            config.tls = Some(files);
        }
    }
    let mut handles: Vec<NodeHandle> = Vec::with_capacity(configs.len());
    for config in configs {
        match Node::start(config).await {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in handles {
                    let _ = h.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    let endpoints: Vec<String> = handles.iter().map(|h| h.client_advertise_addr.clone()).collect();
    println!("shale dev cluster: {} nodes", handles.len());
    for h in &handles {
        println!(
            "  node {}: gRPC {}  Kafka {}  HTTP http://{}  (/healthz /readyz /metrics)",
            h.node_id, h.client_advertise_addr, h.kafka_advertise_addr, h.http_addr
        );
    }
    println!("bootstrap endpoints: {}", endpoints.join(","));
    let tls_flag = if args.tls {
        let ca = tls_dir.join(shale_raft::network::tls::files::CA_CERT);
        println!("TLS on: CA certificate {} (node certificates beside it)", ca.display());
        format!(" --tls-ca {}", ca.display())
    } else {
        String::new()
    };
    if handles[0].wait_ready(READY_TIMEOUT).await {
        println!("ready. Try: shale --endpoints {}{tls_flag} topic create demo --partitions 3", endpoints.join(","));
    } else {
        println!("no metadata leader after {}s; see the logs (RUST_LOG=debug)", READY_TIMEOUT.as_secs());
    }
    // SIGHUP reloads every node's certificates (each re-reads its files under `<data-dir>/tls/`).
    if args.tls {
        for h in &handles {
            crate::signal::reload_on_sighup(h.tls_reloader());
        }
    } else {
        crate::signal::reload_on_sighup(None);
    }
    println!("Ctrl-C to stop.");
    shutdown_signal().await;
    // The nodes stop in parallel, so the whole process keeps to one grace period.
    let grace = handles.iter().map(NodeHandle::grace).max().unwrap_or_default();
    crate::signal::after_first_signal(grace);
    let mut result = Ok(());
    for r in futures::future::join_all(handles.into_iter().map(NodeHandle::shutdown)).await {
        if let Err(e) = r {
            tracing::error!(error = %e, "node shutdown failed");
            result = Err(e);
        }
    }
    result
}
