//! drover-actions: the typed action library that a drover agent runs on a node.
//!
//! Every action has a JSON Schema for its params (generated from a typed
//! params struct), `execute`, `rollback` (given the metadata `execute`
//! returned) and a declared dry-run capability. The one entry point that
//! callers use is [`run_action`] (and [`run_rollback`]): it checks the
//! [`Policy`], validates the params against the schema, refuses a dry run that
//! the action cannot honour, enforces the timeout and cancellation (killing
//! the whole process group of any command the action started) and redacts
//! secret params from everything it returns.
//!
//! Contract: `Err(ActionError)` means nothing ran (unknown action, invalid
//! params, policy refusal, dry run unsupported, bad rollback metadata).
//! `Ok(ExecResult)` means the action ran (or was attempted); its `status` says
//! how it went: `succeeded`, `failed`, `timed_out` or `cancelled`.

mod actions;
mod b64;
pub mod docs;
pub mod groups;
mod policy;
pub mod process;
mod redact;
mod registry;
mod schema;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use policy::Policy;
pub use registry::{ActionInfo, Registry};
pub use schema::{ParamDoc, param_docs};

/// A boxed, `Send` future: what [`Action::execute`] and [`Action::rollback`] return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Default cap on captured output, per stream (stdout, stderr): 1 MiB.
pub const DEFAULT_OUTPUT_CAP: usize = 1024 * 1024;
/// Default step timeout (DESIGN.md: step `timeout` 5m).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// After a timeout or cancel, the process group gets SIGTERM, then SIGKILL after this grace.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
/// How long an interrupted action may take to wind down (after [`KILL_GRACE`])
/// before its future is dropped (which SIGKILLs any process group it still owns).
pub const WIND_DOWN: Duration = Duration::from_millis(1500);

/// Extension keyword that marks a param as secret in a params schema.
pub const SECRET_KEYWORD: &str = "x-drover-secret";
/// What a secret value is replaced with in output, metadata, errors and logs.
pub const REDACTED: &str = "***";

/// One action: typed params, execute, rollback.
pub trait Action: Send + Sync {
    /// Dotted name, e.g. `package.install`.
    fn name(&self) -> &'static str;
    /// One line for `drover actions list`.
    fn description(&self) -> &'static str;
    /// JSON Schema (2020-12) of the params object.
    fn params_schema(&self) -> Value;
    /// Whether the action can preview its effect (`ctx.dry_run`); if not, a dry run refuses it.
    fn dry_run(&self) -> bool;
    /// Whether the action has a real rollback (undo) of its effect.
    fn undo(&self) -> bool;
    /// Run the action. Params have already been validated by [`run_action`].
    fn execute<'a>(&'a self, params: Value, ctx: &'a ExecContext) -> BoxFuture<'a, Result<ExecResult, ActionError>>;
    /// Undo a previous execution, given its params and the metadata it returned.
    fn rollback<'a>(
        &'a self,
        params: Value,
        metadata: Value,
        ctx: &'a ExecContext,
    ) -> BoxFuture<'a, Result<ExecResult, ActionError>>;
    /// Checks beyond the schema (durations parse, paths absolute, ...). Run by
    /// [`Registry::validate_params`] after the schema passed.
    fn check(&self, _params: &Value) -> Result<(), Vec<ParamError>> {
        Ok(())
    }
    /// The filesystem paths these (valid) params would touch, for the policy's path allowlist.
    fn paths(&self, _params: &Value) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// Everything an action needs to know about where and how it runs.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub job_id: String,
    pub node_id: String,
    pub step: String,
    /// Attempt number, starting at 1.
    pub attempt: u32,
    /// Wall-clock limit for the whole action (enforced by [`run_action`]).
    pub timeout: Duration,
    /// Cancel the action: its processes are killed, output so far kept.
    pub cancel: CancellationToken,
    /// Preview only: change nothing.
    pub dry_run: bool,
    /// Bytes kept per output stream (stdout, stderr); the rest is counted and dropped.
    pub output_cap: usize,
    pub policy: Arc<Policy>,
    /// Extra or overriding environment for commands (on top of a small
    /// allowlisted base taken from this process: PATH, HOME, LANG, ...).
    pub env: BTreeMap<String, String>,
    /// Where the process groups of running commands are recorded (agents set it to a
    /// directory of their data dir, see [`groups`]), so that a restart after SIGKILL
    /// kills what was left running. `None`: not recorded.
    pub process_groups: Option<std::path::PathBuf>,
}

impl ExecContext {
    /// A context with defaults: attempt 1, timeout 5m, 1 MiB output cap,
    /// default policy, no extra env, not a dry run, a fresh cancel token.
    pub fn new(job_id: impl Into<String>, node_id: impl Into<String>, step: impl Into<String>) -> Self {
        ExecContext {
            job_id: job_id.into(),
            node_id: node_id.into(),
            step: step.into(),
            attempt: 1,
            timeout: DEFAULT_TIMEOUT,
            cancel: CancellationToken::new(),
            dry_run: false,
            output_cap: DEFAULT_OUTPUT_CAP,
            policy: Arc::new(Policy::default()),
            env: BTreeMap::new(),
            process_groups: None,
        }
    }

    /// Builder: set the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builder: set the policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Builder: set one env var for commands.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
}

impl Default for ExecContext {
    fn default() -> Self {
        ExecContext::new("local", "local", "exec")
    }
}

/// How an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecStatus {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl ExecStatus {
    pub fn is_success(self) -> bool {
        self == ExecStatus::Succeeded
    }
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecStatus::Succeeded => "succeeded",
            ExecStatus::Failed => "failed",
            ExecStatus::TimedOut => "timed_out",
            ExecStatus::Cancelled => "cancelled",
        })
    }
}

/// The outcome of an execution or rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub status: ExecStatus,
    /// Whether the action changed (or, in a dry run, would change) anything.
    pub changed: bool,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// True when stdout or stderr was cut at the output cap (a marker line says so in the text).
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// What rollback needs (previous state); action-specific.
    #[serde(default)]
    pub metadata: Value,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub error: Option<String>,
}

impl ExecResult {
    /// An empty result with the given status.
    pub fn new(status: ExecStatus, changed: bool) -> Self {
        ExecResult {
            status,
            changed,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            exit_code: None,
            metadata: Value::Null,
            duration_ms: 0,
            error: None,
        }
    }

    pub fn succeeded(changed: bool) -> Self {
        Self::new(ExecStatus::Succeeded, changed)
    }

    pub fn failed(error: impl Into<String>) -> Self {
        let mut r = Self::new(ExecStatus::Failed, false);
        r.error = Some(error.into());
        r
    }

    pub fn with_stdout(mut self, s: impl Into<String>) -> Self {
        self.stdout = s.into();
        self
    }

    pub fn with_metadata(mut self, m: Value) -> Self {
        self.metadata = m;
        self
    }

    pub fn with_changed(mut self, changed: bool) -> Self {
        self.changed = changed;
        self
    }
}

/// One param problem, naming the param (`mode`, `env.FOO`, `command[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamError {
    pub param: String,
    pub message: String,
}

impl ParamError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        ParamError { param: param.into(), message: message.into() }
    }
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.param.is_empty() {
            write!(f, "params: {}", self.message)
        } else {
            write!(f, "param `{}`: {}", self.param, self.message)
        }
    }
}

fn join_param_errors(errs: &[ParamError]) -> String {
    errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

/// Why an action could not be run (nothing ran), or an action-internal error
/// (turned into a `failed` [`ExecResult`] by [`run_action`]).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("unknown action `{0}` (`drover actions list` shows the available actions)")]
    UnknownAction(String),
    #[error("invalid params: {}", join_param_errors(.0))]
    InvalidParams(Vec<ParamError>),
    #[error("action `{action}` is not allowed by policy: {reason}")]
    PolicyDenied { action: String, reason: String },
    #[error("path `{path}` is not allowed by policy: {reason}")]
    PathDenied { path: PathBuf, reason: String },
    #[error("action `{0}` cannot preview its effect, so a dry run does not run it")]
    DryRunUnsupported(String),
    #[error("invalid rollback metadata for `{action}`: {reason}")]
    InvalidMetadata { action: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

impl ActionError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ActionError::Io { context: context.into(), source }
    }

    /// True when the error is about the caller's input (exit code 2 in the CLI).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            ActionError::UnknownAction(_)
                | ActionError::InvalidParams(_)
                | ActionError::PolicyDenied { .. }
                | ActionError::PathDenied { .. }
                | ActionError::DryRunUnsupported(_)
                | ActionError::InvalidMetadata { .. }
        )
    }
}

/// Run one action: policy -> params validation -> path policy -> dry-run
/// refusal -> execute under timeout/cancel -> secret redaction.
pub async fn run_action(
    registry: &Registry,
    action: &str,
    params: Value,
    ctx: &ExecContext,
) -> Result<ExecResult, ActionError> {
    let act = preflight(registry, action, &params, ctx)?;
    let secret = registry.secret_params(action);
    let secrets = redact::secret_values(secret, &params);
    tracing::info!(
        action,
        job = %ctx.job_id,
        node = %ctx.node_id,
        step = %ctx.step,
        attempt = ctx.attempt,
        dry_run = ctx.dry_run,
        params = %redact::redact_params(secret, &params),
        "executing action"
    );
    let inner = inner_ctx(ctx);
    let result = supervise(ctx, &inner, act.execute(params, &inner)).await;
    Ok(finish(action, "executed", result, &secrets))
}

/// Undo a previous execution of `action`, given its params and the metadata it returned.
pub async fn run_rollback(
    registry: &Registry,
    action: &str,
    params: Value,
    metadata: Value,
    ctx: &ExecContext,
) -> Result<ExecResult, ActionError> {
    let act = preflight(registry, action, &params, ctx)?;
    let secrets = redact::secret_values(registry.secret_params(action), &params);
    tracing::info!(
        action,
        job = %ctx.job_id,
        node = %ctx.node_id,
        step = %ctx.step,
        dry_run = ctx.dry_run,
        "rolling back action"
    );
    let inner = inner_ctx(ctx);
    let result = supervise(ctx, &inner, act.rollback(params, metadata, &inner)).await;
    Ok(finish(action, "rolled back", result, &secrets))
}

/// The action, after the checks.
fn preflight(
    registry: &Registry,
    action: &str,
    params: &Value,
    ctx: &ExecContext,
) -> Result<Arc<dyn Action>, ActionError> {
    let act = registry.get(action).ok_or_else(|| ActionError::UnknownAction(action.to_string()))?;
    ctx.policy.check_action(action)?;
    registry.validate_params(action, params).map_err(ActionError::InvalidParams)?;
    for path in act.paths(params) {
        ctx.policy.check_path(&path)?;
    }
    if ctx.dry_run && !act.dry_run() {
        return Err(ActionError::DryRunUnsupported(action.to_string()));
    }
    Ok(act)
}

fn finish(action: &str, verb: &str, mut result: ExecResult, secrets: &[String]) -> ExecResult {
    redact::redact_result(&mut result, secrets);
    tracing::info!(
        action,
        status = %result.status,
        changed = result.changed,
        duration_ms = result.duration_ms,
        error = result.error.as_deref().unwrap_or(""),
        "{verb} action"
    );
    result
}

/// A copy of `ctx` whose cancel token is a child of `ctx.cancel`: fired by
/// [`supervise`] on timeout, and by the parent on cancel.
fn inner_ctx(ctx: &ExecContext) -> ExecContext {
    let mut inner = ctx.clone();
    inner.cancel = ctx.cancel.child_token();
    inner
}

/// Drive `fut` (started with `inner`, see [`inner_ctx`]) under the context's
/// timeout and cancel token. On either, `inner.cancel` fires (actions stop,
/// process groups get SIGTERM then SIGKILL) and the result is marked
/// `timed_out` or `cancelled`, keeping the output and metadata gathered so far.
/// An action that does not wind down within [`KILL_GRACE`] + [`WIND_DOWN`] is
/// dropped (its process groups are SIGKILLed by their guards).
async fn supervise(
    ctx: &ExecContext,
    inner: &ExecContext,
    mut fut: BoxFuture<'_, Result<ExecResult, ActionError>>,
) -> ExecResult {
    let begun = Instant::now();
    let start = tokio::time::Instant::from_std(begun);
    // A timeout too large to add (e.g. Duration::MAX) means "no timeout" in practice.
    let deadline = start.checked_add(ctx.timeout).unwrap_or_else(|| start + Duration::from_secs(100 * 365 * 24 * 3600));
    // The action first: one that finishes at once (most do) then never arms the timer
    // nor waits on the token, and a result that is ready is kept even if the deadline or
    // the cancel came in the same instant.
    let interrupted = tokio::select! {
        biased;
        r = &mut fut => Err(r),
        _ = tokio::time::sleep_until(deadline) => Ok(ExecStatus::TimedOut),
        _ = ctx.cancel.cancelled() => Ok(ExecStatus::Cancelled),
    };
    let mut result = match interrupted {
        Err(r) => to_result(r),
        Ok(status) => {
            inner.cancel.cancel();
            let mut r = match tokio::time::timeout(KILL_GRACE + WIND_DOWN, &mut fut).await {
                Ok(r) => to_result(r),
                Err(_) => ExecResult::new(status, false),
            };
            drop(fut);
            r.status = status;
            let what = if status == ExecStatus::TimedOut {
                format!("timed out after {}", humantime::format_duration(ctx.timeout))
            } else {
                "cancelled".to_string()
            };
            r.error = Some(match r.error.take() {
                Some(e) if !e.is_empty() && e != "cancelled" => format!("{what} ({e})"),
                _ => what,
            });
            r
        }
    };
    result.duration_ms = u64::try_from(begun.elapsed().as_millis()).unwrap_or(u64::MAX);
    result
}

fn to_result(r: Result<ExecResult, ActionError>) -> ExecResult {
    match r {
        Ok(r) => r,
        Err(e) => ExecResult::failed(e.to_string()),
    }
}
