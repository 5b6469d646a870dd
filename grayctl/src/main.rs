//! grayctl: operate a gray rollout. It reads and writes the keys the gateways load, with the
//! module's own parser, rule set compiler and evaluator (the `gray-core` crate) and Redis client
//! (`gray-io`), so what grayctl accepts is exactly what the gateways accept, and `explain`
//! decides as they do.

mod cli;
mod commands;
mod failure;
mod fleet_status;
mod rules_edit;
mod store;
mod whitelist_edit;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("grayctl: {failure}");
            failure.exit_code()
        }
    }
}
