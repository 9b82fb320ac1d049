//! The `shale-node` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use std::time::Duration;

use shale_node::NodeError;
use shale_node::cli::{Cli, Command, HealthcheckArgs};
use shale_node::node::Node;
use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is unset: our info, openraft's warnings only (its info is per-event).
/// Every deploy file (deploy/Dockerfile, docker-compose.yml, k8s ConfigMap) sets the same, checked by
/// the tests crate (`NODE_LOG_FILTER`).
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

async fn run(cli: Cli) -> Result<(), NodeError> {
    match cli.command {
        Some(Command::Dev(args)) => shale_node::dev::run(&args).await,
        Some(Command::Run(args)) => run_node(&args).await,
        Some(Command::Healthcheck(_)) => unreachable!("main runs healthcheck before logging is set up"),
        None => run_node(&cli.run).await,
    }
}

async fn run_node(args: &shale_node::cli::RunArgs) -> Result<(), NodeError> {
    let node = Node::start(args.to_config()?).await?;
    shale_node::signal::reload_on_sighup(node.tls_reloader());
    shale_node::signal::shutdown_signal().await;
    shale_node::signal::after_first_signal(node.grace());
    node.shutdown().await
}

/// `shale-node healthcheck`: exit 0 on HTTP 200, 1 (with the status or error on stderr) otherwise.
async fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let target = match args.target() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("shale-node healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match target.probe(Duration::from_millis(args.timeout_ms)).await {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("shale-node healthcheck: GET http://{}{} answered HTTP {status}", target.authority, target.path);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("shale-node healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck(args)) = &cli.command {
        return healthcheck(args).await;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)))
        .init();
    // Exit here rather than return: dropping the runtime would wait for every blocking task
    // (a storage call stuck on a sick disk), past the shutdown grace period.
    match run(cli).await {
        Ok(()) => shale_node::signal::exit_now(0),
        Err(e) => {
            tracing::error!(error = %e, "shale-node failed");
            eprintln!("shale-node: {e}");
            shale_node::signal::exit_now(1)
        }
    }
}
