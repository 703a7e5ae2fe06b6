//! `drover plan PLAN`: a dry run against the live fleet (in drover-cli).

use crate::exit::Exit;

pub use drover_cli::cmd::plan::PlanArgs;

pub fn run(args: PlanArgs) -> Exit {
    super::run::exit(drover_cli::cmd::plan::run(args))
}
