//! The `shale-node` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use shale_node::cli::{Cli, Command};
use shale_node::node::{Node, NodeError};
use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is unset: our info, openraft's warnings only (its info is per-event).
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

async fn run(cli: Cli) -> Result<(), NodeError> {
    match cli.command {
        Some(Command::Dev(args)) => shale_node::dev::run(&args).await,
        Some(Command::Run(args)) => run_node(&args).await,
        None => run_node(&cli.run).await,
    }
}

async fn run_node(args: &shale_node::cli::RunArgs) -> Result<(), NodeError> {
    let node = Node::start(args.to_config()?).await?;
    shale_node::signal::shutdown_signal().await;
    node.shutdown().await
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)))
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "shale-node failed");
            eprintln!("shale-node: {e}");
            ExitCode::FAILURE
        }
    }
}
