//! drover-core: the pure heart of drover.
//!
//! Plan model and validation ([`plan`], [`parse`]), label selectors ([`selector`]), target
//! resolution and batching ([`resolve`]), the rollout state machine ([`engine`]) and a
//! virtual-time simulator ([`sim`]). Nothing here does I/O, reads a clock or draws random
//! numbers: runtimes feed the engine events with the current time and carry out its actions.

pub mod api;
pub mod catalog;
pub mod duration;
pub mod engine;
pub mod liveness;
pub mod parse;
pub mod plan;
pub mod resolve;
pub mod selector;
pub mod sim;
pub mod template;
pub mod wire;

pub use catalog::Catalog;
pub use duration::Dur;
pub use parse::{Format, PlanError, PlanErrors, check_plan, parse_plan};
pub use plan::Plan;

/// `1 node`, `2 nodes`: a count with its noun, for messages people read.
pub fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}
