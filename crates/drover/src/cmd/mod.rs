//! One module per subcommand.

pub mod actions;
pub mod exec;
