//! `drover run PLAN` / `drover run -t SELECTOR ACTION k=v...`: submit a job to the controller
//! (the work is in drover-cli).

use crate::exit::Exit;

pub use drover_cli::cmd::run::RunArgs;

/// The binary's exit status for a drover-cli result.
pub fn exit(code: drover_cli::Code) -> Exit {
    match code {
        drover_cli::Code::Success => Exit::Success,
        drover_cli::Code::Failed => Exit::Failed,
        drover_cli::Code::Invalid => Exit::Invalid,
        drover_cli::Code::Error => Exit::Error,
    }
}

pub fn run(args: RunArgs) -> Exit {
    exit(drover_cli::cmd::run::run(args))
}
