//! `shale completions SHELL`.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{CliError, Result};

/// Prints the completion script for `shell` to stdout.
pub fn run(shell: Shell) -> Result<()> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shale", &mut buf);
    crate::output::print_stdout(&String::from_utf8_lossy(&buf)).map_err(|e| match e {
        CliError::Output(io) => CliError::Output(io),
        other => other,
    })
}
