//! `shale completions SHELL`.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::Result;

/// Prints the completion script for `shell` to stdout.
pub fn run(shell: Shell) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shale", &mut script);
    crate::output::print_stdout(&String::from_utf8_lossy(&script))
}
