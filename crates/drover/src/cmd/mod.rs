//! One module per subcommand.

pub mod actions;
pub mod agent;
pub mod controller;
pub mod dev;
pub mod exec;
pub mod jobs;
pub mod nodes;
pub mod plan;
pub mod run;
pub mod schema;
pub mod simulate;
pub mod validate;
