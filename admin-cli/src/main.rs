//! The `shale` binary: parse, run, print the error and its hint, exit with its code.

use std::process::ExitCode;

use clap::Parser;
use shale_cli::cli::Cli;

/// mimalloc keeps freed pages for reuse: with the system allocator every large fetch answer the
/// client decoded came in fresh pages, and page faults took ~15% of `shale bench consume`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    shale_cli::init_logging(cli.global.verbose);
    match shale_cli::run(cli) {
        Ok(()) => ExitCode::from(shale_cli::EXIT_OK),
        Err(e) if e.is_broken_pipe() => ExitCode::from(shale_cli::EXIT_OK),
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
