//! `echo` and `sleep`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::schema::{HumanDuration, Typed};
use crate::{ActionError, ExecContext, ExecResult, ExecStatus};

pub struct Echo;

/// Params of `echo`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EchoParams {
    /// Text printed on stdout (a newline is added).
    pub message: String,
}

impl Typed for Echo {
    type Params = EchoParams;
    const NAME: &'static str = "echo";
    const DESCRIPTION: &'static str = "Print a message on stdout; changes nothing.";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    async fn execute(&self, p: EchoParams, _ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        Ok(ExecResult::succeeded(false).with_stdout(format!("{}\n", p.message)))
    }
}

pub struct Sleep;

/// Params of `sleep`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepParams {
    /// How long to wait, e.g. `500ms`, `2s`, `1m 30s`. Cancel and timeout end it at once.
    pub duration: HumanDuration,
}

impl Typed for Sleep {
    type Params = SleepParams;
    const NAME: &'static str = "sleep";
    const DESCRIPTION: &'static str = "Wait for a duration, in the agent (no process); cancellable.";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    async fn execute(&self, p: SleepParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let shown = humantime::format_duration(p.duration.0).to_string();
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(false).with_stdout(format!("would sleep {shown}\n")));
        }
        let started = std::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(p.duration.0) => {
                Ok(ExecResult::succeeded(false).with_stdout(format!("slept {shown}\n")))
            }
            _ = ctx.cancel.cancelled() => {
                let slept = started.elapsed().as_millis();
                let mut r = ExecResult::new(ExecStatus::Cancelled, false)
                    .with_stdout(format!("interrupted after {slept}ms of {shown}\n"))
                    .with_metadata(json!({ "slept_ms": slept as u64 }));
                r.error = Some("cancelled".into());
                Ok(r)
            }
        }
    }
}
