//! `shale`, the operator CLI of Shale, as a library: the binary (`src/main.rs`) only parses the
//! command line and calls [`run`]; tests run the binary itself.
//!
//! - [`cli`]: every command and flag (clap derive).
//! - [`commands`]: one module per command family; each turns arguments into client calls (or, for
//!   `verify --data-dir`, storage calls) and a serializable report.
//! - [`output`]: tables, JSON, YAML and value formatting; the only place that prints reports.
//! - [`error`]: [`CliError`], its exit code and the hint printed with it.

pub mod args;
pub mod cli;
pub mod commands;
pub mod context;
pub mod error;
pub mod output;
pub mod profile;

pub use error::{CliError, EXIT_FAILURE, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, Result};

use cli::{Cli, Command};
use context::Ctx;

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Completions { shell } => commands::completions::run(shell),
        Command::Cert(c) => commands::cert::run(c),
        Command::Profile(c) => commands::profile::run(&cli.global, c),
        Command::Verify(args) if args.data_dir.is_some() => commands::verify::run_offline(&args),
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let ctx = Ctx::new(cli.global)?;
            runtime.block_on(dispatch(&ctx, command))
        }
    }
}

async fn dispatch(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Cluster(c) => commands::cluster::run(ctx, c).await,
        Command::Topic(c) => commands::topic::run(ctx, c).await,
        Command::Produce(a) => commands::produce::run(ctx, a).await,
        Command::Consume(a) => commands::consume::run(ctx, a).await,
        Command::Group(c) => commands::group::run(ctx, c).await,
        Command::Verify(a) => commands::verify::run_online(ctx, &a).await,
        Command::Bench(c) => commands::bench::run(ctx, c).await,
        Command::Completions { shell } => commands::completions::run(shell),
        Command::Cert(c) => commands::cert::run(c),
        Command::Profile(_) => Err(CliError::Usage("`shale profile` runs without a cluster".into())),
        Command::User(c) => commands::access::run_user(ctx, c).await,
        Command::Acl(c) => commands::access::run_acl(ctx, c).await,
        Command::Quota(c) => commands::access::run_quota(ctx, c).await,
    }
}

/// Sends logs to stderr: warnings by default, more with each `-v`; `RUST_LOG` overrides.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,shale_storage=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
