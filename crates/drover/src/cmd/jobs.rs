//! `drover jobs list|get|watch|cancel|pause|resume|approve|rollback|logs` (in drover-cli).

use crate::exit::Exit;

pub use drover_cli::cmd::jobs::JobsArgs;

pub fn run(args: JobsArgs) -> Exit {
    super::run::exit(drover_cli::cmd::jobs::run(args))
}
