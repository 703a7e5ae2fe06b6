//! `drover`: controller, agent and CLI in one binary.

mod cmd;
mod exit;
mod plan_input;
mod signals;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the controller spent over a third of its CPU in
/// malloc/free; see docs/PERFORMANCE.md, "The allocator and whole-program optimization".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the agent on this node: execute commands from the controller.
    Agent(cmd::agent::AgentArgs),
    /// Measure drover against the NATS floor on a local fleet it starts itself.
    Bench(cmd::bench::BenchArgs),
    /// Agents for `drover bench` (internal).
    #[command(hide = true, name = "bench-agents")]
    BenchAgents(cmd::bench::BenchAgentsArgs),
    /// The bare-NATS floor for `drover bench` (internal).
    #[command(hide = true, name = "bench-floor")]
    BenchFloor(cmd::bench::BenchFloorArgs),
    /// Run a controller (REST API, job engine) against an existing NATS.
    Controller(cmd::controller::ControllerArgs),
    /// Start a whole local fleet: nats-server, controller and N agents.
    Dev(cmd::dev::DevArgs),
    /// Submit a plan (or, with -t, one ad hoc step) to the controller.
    Run(cmd::run::RunArgs),
    /// List, inspect, follow and steer jobs.
    Jobs(cmd::jobs::JobsArgs),
    /// List and inspect the controller's nodes.
    Nodes(cmd::nodes::NodesArgs),
    /// What a plan would do on the live fleet (dry run on the controller).
    Plan(cmd::plan::PlanArgs),
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
    // Long-running roles log what they do; one-shot commands only warnings.
    let daemon = matches!(cli.command, Command::Agent(_) | Command::Controller(_));
    init_tracing(cli.log_json, if daemon { "info" } else { "warn" });
    let code = match cli.command {
        Command::Actions(args) => cmd::actions::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::BenchAgents(args) => cmd::bench::run_agents(args),
        Command::BenchFloor(args) => cmd::bench::run_floor(args),
        Command::Controller(args) => cmd::controller::run(args),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Jobs(args) => cmd::jobs::run(args),
        Command::Nodes(args) => cmd::nodes::run(args),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Schema(args) => cmd::schema::run(args),
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Validate(args) => cmd::validate::run(args),
    };
    code.into()
}

fn init_tracing(json: bool, default_level: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("DROVER_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
