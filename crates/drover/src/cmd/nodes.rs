//! `drover nodes list|get` (in drover-cli).

use crate::exit::Exit;

pub use drover_cli::cmd::nodes::NodesArgs;

pub fn run(args: NodesArgs) -> Exit {
    super::run::exit(drover_cli::cmd::nodes::run(args))
}
