//! `drover`: controller, agent and CLI in one binary.

mod cmd;
mod exit;
mod output;
mod plan_input;

use clap::{Parser, Subcommand};

/// drover: run multi-step operations across fleets of servers, safely.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, propagate_version = true)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "DROVER_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the actions this binary offers, or describe one.
    Actions(cmd::actions::ActionsArgs),
    /// Run one action on this machine (no controller needed).
    Exec(cmd::exec::ExecArgs),
    /// Print a JSON Schema (the plan format).
    Schema(cmd::schema::SchemaArgs),
    /// Run a plan on a simulated fleet in virtual time and show what would happen.
    Simulate(cmd::simulate::SimulateArgs),
    /// Check a plan (fields, durations, selectors, actions and their params) without running it.
    Validate(cmd::validate::ValidateArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let code = match cli.command {
        Command::Actions(args) => cmd::actions::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Schema(args) => cmd::schema::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Validate(args) => cmd::validate::run(args),
    };
    code.into()
}

fn init_tracing(json: bool) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
