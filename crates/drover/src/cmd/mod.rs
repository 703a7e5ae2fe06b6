//! One module per subcommand.

pub mod actions;
pub mod exec;
pub mod schema;
pub mod simulate;
pub mod validate;
