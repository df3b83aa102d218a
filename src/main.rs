//! The `shieldgate` binary: parse the command line, set up logging, run the command and map
//! the result to an exit code (0 clean, 1 policy violated, 2 error, 3 some inputs unscored).

use std::process::ExitCode;

use clap::Parser;
use shieldgate::cli::{Cli, Command};
use shieldgate::commands;

#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

fn main() -> ExitCode {
    let cli = Cli::parse();
    shieldgate::telemetry::init(cli.log_format, &cli.log_level);
    let result = match &cli.command {
        Command::Score(args) => commands::score::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::CheckConfig(args) => commands::check_config::run(args),
        Command::Audit(args) => commands::audit::run(args),
        Command::AuditMerge(args) => commands::audit::merge(args),
        Command::Tune(args) => commands::tune::run(args),
    };
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("shieldgate: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
