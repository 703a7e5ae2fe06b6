//! `test.*`: deterministic actions for tests and demos.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::process::{Cmd, capped_text, run};
use crate::schema::{HumanDuration, Typed};
use crate::{ActionError, ExecContext, ExecResult, ExecStatus, ParamError};

pub struct Succeed;

/// Params of `test.succeed`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SucceedParams {
    /// Printed on stdout.
    #[serde(default = "default_ok")]
    pub message: String,
    /// Reported as `changed`.
    #[serde(default = "yes")]
    pub changed: bool,
    /// Make the rollback of this step fail (to exercise `rollback_failed`).
    #[serde(default)]
    pub fail_rollback: bool,
}

fn default_ok() -> String {
    "ok".into()
}
fn yes() -> bool {
    true
}

impl Typed for Succeed {
    type Params = SucceedParams;
    const NAME: &'static str = "test.succeed";
    const DESCRIPTION: &'static str = "Succeed at once; its rollback succeeds too (or fails when asked).";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    async fn execute(&self, p: SucceedParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        Ok(ExecResult::succeeded(p.changed)
            .with_stdout(format!("{}\n", p.message))
            .with_metadata(json!({ "attempt": ctx.attempt, "step": ctx.step })))
    }

    async fn rollback(&self, p: SucceedParams, metadata: Value, _ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        if p.fail_rollback {
            return Ok(ExecResult::failed("rollback failed on purpose (fail_rollback: true)"));
        }
        Ok(ExecResult::succeeded(true)
            .with_stdout(format!("undone: {}\n", p.message))
            .with_metadata(json!({ "undid": metadata })))
    }
}

pub struct Fail;

/// Params of `test.fail`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailParams {
    /// The error message of the failure, also printed on stderr.
    #[serde(default = "default_fail")]
    pub message: String,
    /// Reported as the exit code.
    #[serde(default = "one")]
    pub exit_code: i32,
    /// Fail only on these node ids and succeed (changing nothing) on every other node.
    /// Absent: fail everywhere. For demos and tests of failure budgets on a real fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
}

fn default_fail() -> String {
    "failed on purpose".into()
}
fn one() -> i32 {
    1
}

impl Typed for Fail {
    type Params = FailParams;
    const NAME: &'static str = "test.fail";
    const DESCRIPTION: &'static str =
        "Fail at once with a message and exit code (on every node, or only on the nodes listed in `nodes`).";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    async fn execute(&self, p: FailParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        if p.nodes.as_ref().is_some_and(|ns| !ns.contains(&ctx.node_id)) {
            return Ok(ExecResult::succeeded(false).with_stdout(format!("not failing on {}\n", ctx.node_id)));
        }
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(false).with_stdout("would fail\n"));
        }
        let mut r = ExecResult::failed(p.message.clone());
        r.stderr = format!("{}\n", p.message);
        r.exit_code = Some(p.exit_code);
        Ok(r)
    }
}

pub struct Sleep;

/// Params of `test.sleep`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSleepParams {
    /// How long the `sleep` process runs.
    pub duration: HumanDuration,
}

impl Typed for Sleep {
    type Params = TestSleepParams;
    const NAME: &'static str = "test.sleep";
    const DESCRIPTION: &'static str =
        "Run a real `sleep` process for a duration (exercises timeouts and process-group kills).";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    async fn execute(&self, p: TestSleepParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let d = p.duration.0;
        let secs = format!("{}.{:03}", d.as_secs(), d.subsec_millis());
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(false).with_stdout(format!("would run: sleep {secs}\n")));
        }
        let out = run(&Cmd::new("sleep").arg(secs), ctx).await?;
        Ok(out.into_result("sleep", false))
    }
}

pub struct Flaky;

/// Params of `test.flaky`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyParams {
    /// Fail attempts 1..=fail_times (the attempt number comes from the context), succeed after.
    #[serde(default = "one_u32")]
    pub fail_times: u32,
}

fn one_u32() -> u32 {
    1
}

impl Typed for Flaky {
    type Params = FlakyParams;
    const NAME: &'static str = "test.flaky";
    const DESCRIPTION: &'static str = "Fail the first `fail_times` attempts, then succeed (exercises retries).";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    async fn execute(&self, p: FlakyParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let meta = json!({ "attempt": ctx.attempt, "fail_times": p.fail_times });
        if ctx.attempt <= p.fail_times && !ctx.dry_run {
            let mut r =
                ExecResult::failed(format!("attempt {} of the first {} fails on purpose", ctx.attempt, p.fail_times));
            r.metadata = meta;
            r.exit_code = Some(1);
            return Ok(r);
        }
        Ok(ExecResult::succeeded(true).with_stdout(format!("attempt {} succeeded\n", ctx.attempt)).with_metadata(meta))
    }
}

pub struct Output;

/// Which stream(s) `test.output` writes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    Both,
}

/// Params of `test.output`. Give `bytes` or `lines`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputParams {
    /// Write this many bytes (`x` repeated).
    #[schemars(range(max = 1_000_000_000u64))]
    pub bytes: Option<u64>,
    /// Write this many lines (`line 1`, `line 2`, ...).
    #[schemars(range(max = 100_000_000u64))]
    pub lines: Option<u64>,
    /// Where to write.
    #[serde(default = "stdout")]
    pub stream: Stream,
}

fn stdout() -> Stream {
    Stream::Stdout
}

/// Generate the text, keeping at most `cap` bytes, counting the rest.
fn generate(p: &OutputParams, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut push = |chunk: &[u8]| {
        let room = cap.saturating_sub(kept.len());
        let take = room.min(chunk.len());
        kept.extend_from_slice(&chunk[..take]);
        dropped += (chunk.len() - take) as u64;
    };
    if let Some(n) = p.bytes {
        let block = [b'x'; 8192];
        let mut left = n;
        while left > 0 {
            let take = left.min(block.len() as u64) as usize;
            push(&block[..take]);
            left -= take as u64;
        }
    }
    if let Some(n) = p.lines {
        for i in 1..=n {
            push(format!("line {i}\n").as_bytes());
        }
    }
    (kept, dropped)
}

impl Typed for Output {
    type Params = OutputParams;
    const NAME: &'static str = "test.output";
    const DESCRIPTION: &'static str = "Print N bytes or N lines on stdout and/or stderr (exercises output caps).";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    fn check(p: &OutputParams) -> Vec<ParamError> {
        match (p.bytes, p.lines) {
            (Some(_), Some(_)) => vec![ParamError::new("lines", "give `bytes` or `lines`, not both")],
            (None, None) => vec![ParamError::new("bytes", "required param missing (or give `lines`)")],
            _ => Vec::new(),
        }
    }

    async fn execute(&self, p: OutputParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let mut r = ExecResult::new(ExecStatus::Succeeded, false);
        if ctx.dry_run {
            return Ok(r.with_stdout("would print output\n"));
        }
        let (kept, dropped) = generate(&p, ctx.output_cap);
        if matches!(p.stream, Stream::Stdout | Stream::Both) {
            let (s, t) = capped_text(&kept, dropped, "stdout", ctx.output_cap);
            r.stdout = s;
            r.truncated |= t;
        }
        if matches!(p.stream, Stream::Stderr | Stream::Both) {
            let (s, t) = capped_text(&kept, dropped, "stderr", ctx.output_cap);
            r.stderr = s;
            r.truncated |= t;
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_caps_and_counts() {
        let p = OutputParams { bytes: Some(10), lines: None, stream: Stream::Stdout };
        assert_eq!(generate(&p, 4), (b"xxxx".to_vec(), 6));
        let p = OutputParams { bytes: None, lines: Some(3), stream: Stream::Stdout };
        assert_eq!(generate(&p, 100), (b"line 1\nline 2\nline 3\n".to_vec(), 0));
        assert_eq!(generate(&p, 8), (b"line 1\nl".to_vec(), 13));
    }
}
