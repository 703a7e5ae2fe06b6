//! The rollout state machine and its vocabulary.

mod job;
mod report;
mod types;

pub use job::{Job, backoff};
pub use report::{JobReport, NodeReport, StepReport};
pub use types::*;
