//! `service.start|stop|restart|enable|disable|status` via `systemctl` (found
//! on the command PATH). The metadata records the previous active and enabled
//! states; rollback brings both back.

use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::process::{Cmd, Transcript, run};
use crate::schema::Typed;
use crate::{ActionError, ExecContext, ExecResult, ExecStatus, ParamError};

/// Params of `service.start|stop|restart|enable|disable`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceParams {
    /// Unit name, e.g. `nginx` or `nginx.service`.
    #[schemars(pattern(r"^[A-Za-z0-9_][A-Za-z0-9@:._\\-]*$"))]
    pub name: String,
}

/// Params of `service.status`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Unit name, e.g. `nginx` or `nginx.service`.
    #[schemars(pattern(r"^[A-Za-z0-9_][A-Za-z0-9@:._\\-]*$"))]
    pub name: String,
    /// Fail unless the unit is active (`true`) or not active (`false`). Default: report only.
    pub expect_active: Option<bool>,
    /// Fail unless the unit is enabled (`true`) or not enabled (`false`). Default: report only.
    pub expect_enabled: Option<bool>,
}

/// A unit's state as `systemctl is-active` / `is-enabled` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// `active`, `inactive`, `failed`, `activating`, ...
    pub active: String,
    /// `enabled`, `disabled`, `static`, `masked`, ...
    pub enabled: String,
}

impl UnitState {
    fn is_active(&self) -> bool {
        self.active == "active" || self.active == "reloading" || self.active == "activating"
    }
    fn is_enabled(&self) -> bool {
        self.enabled == "enabled" || self.enabled == "enabled-runtime"
    }
}

/// What the service actions record for rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMeta {
    pub name: String,
    pub previous: UnitState,
    pub current: UnitState,
}

async fn systemctl_word(verb: &str, name: &str, ctx: &ExecContext) -> Result<String, ActionError> {
    let out = run(&Cmd::new("systemctl").args([verb, name]), ctx).await?;
    let word = out.stdout.trim().to_string();
    if word.is_empty() {
        return Err(ActionError::Failed(format!(
            "`systemctl {verb} {name}` printed nothing ({}): {}",
            out.describe("systemctl"),
            out.stderr.trim()
        )));
    }
    Ok(word)
}

async fn query(name: &str, ctx: &ExecContext) -> Result<UnitState, ActionError> {
    Ok(UnitState {
        active: systemctl_word("is-active", name, ctx).await?,
        enabled: systemctl_word("is-enabled", name, ctx).await?,
    })
}

fn meta(name: &str, previous: &UnitState, current: &UnitState) -> Value {
    serde_json::to_value(ServiceMeta { name: name.to_string(), previous: previous.clone(), current: current.clone() })
        .unwrap_or(Value::Null)
}

fn describe(s: &UnitState) -> String {
    format!("{}, {}", s.active, s.enabled)
}

/// Run the `systemctl` verbs, then report the state reached.
async fn apply(name: &str, verbs: &[&str], previous: UnitState, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
    if verbs.is_empty() {
        return Ok(ExecResult::succeeded(false)
            .with_stdout(format!("{name}: {} (unchanged)\n", describe(&previous)))
            .with_metadata(meta(name, &previous, &previous)));
    }
    if ctx.dry_run {
        return Ok(ExecResult::succeeded(true)
            .with_stdout(format!(
                "would run: {}\n",
                verbs.iter().map(|v| format!("systemctl {v} {name}")).collect::<Vec<_>>().join("; ")
            ))
            .with_metadata(meta(name, &previous, &previous)));
    }
    let mut t = Transcript::default();
    let mut ok = true;
    for verb in verbs {
        ok = t.run(&Cmd::new("systemctl").args([*verb, name]), ctx).await?.success();
        if !ok {
            break;
        }
    }
    let cancelled = ctx.cancel.is_cancelled();
    let current = if cancelled { previous.clone() } else { query(name, ctx).await? };
    t.note(format!("{name}: {} -> {}", describe(&previous), describe(&current)));
    let status = if cancelled {
        ExecStatus::Cancelled
    } else if ok {
        ExecStatus::Succeeded
    } else {
        ExecStatus::Failed
    };
    let mut r = t.into_result(status, true).with_metadata(meta(name, &previous, &current));
    if status == ExecStatus::Failed {
        r.error = Some(format!("systemctl failed for `{name}` (see output)"));
    }
    Ok(r)
}

/// The `systemctl` verbs that bring `now` back to `want`.
fn restore_verbs(want: &UnitState, now: &UnitState) -> Vec<&'static str> {
    let mut v = Vec::new();
    if want.is_enabled() && !now.is_enabled() && now.enabled == "disabled" {
        v.push("enable");
    }
    if !want.is_enabled() && want.enabled == "disabled" && now.is_enabled() {
        v.push("disable");
    }
    if want.is_active() && !now.is_active() {
        v.push("start");
    }
    if !want.is_active() && now.is_active() {
        v.push("stop");
    }
    v
}

async fn restore(action: &str, name: &str, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
    let md: ServiceMeta = serde_json::from_value(metadata)
        .map_err(|e| ActionError::InvalidMetadata { action: action.to_string(), reason: e.to_string() })?;
    if md.name != name {
        return Err(ActionError::InvalidMetadata {
            action: action.to_string(),
            reason: format!("metadata is for `{}`, params for `{name}`", md.name),
        });
    }
    let now = query(name, ctx).await?;
    let verbs = restore_verbs(&md.previous, &now);
    apply(name, &verbs, now, ctx).await
}

fn check_name(name: &str) -> Vec<ParamError> {
    if name.starts_with('-') { vec![ParamError::new("name", "must not start with `-`")] } else { Vec::new() }
}

/// One of the state-changing operations.
pub trait Op: Send + Sync + 'static {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    /// The verbs to run given the current state.
    fn verbs(now: &UnitState) -> Vec<&'static str>;
}

pub struct Start;
pub struct Stop;
pub struct Restart;
pub struct Enable;
pub struct Disable;

impl Op for Start {
    const NAME: &'static str = "service.start";
    const DESCRIPTION: &'static str =
        "Start a systemd unit if it is not active; rollback stops it if it was not active.";
    fn verbs(now: &UnitState) -> Vec<&'static str> {
        if now.is_active() { vec![] } else { vec!["start"] }
    }
}

impl Op for Stop {
    const NAME: &'static str = "service.stop";
    const DESCRIPTION: &'static str = "Stop a systemd unit if it is active; rollback starts it again if it was active.";
    fn verbs(now: &UnitState) -> Vec<&'static str> {
        if now.is_active() { vec!["stop"] } else { vec![] }
    }
}

impl Op for Restart {
    const NAME: &'static str = "service.restart";
    const DESCRIPTION: &'static str = "Restart a systemd unit (starts it if stopped); rollback stops it if it was not active before (a restart itself cannot be undone).";
    fn verbs(_now: &UnitState) -> Vec<&'static str> {
        vec!["restart"]
    }
}

impl Op for Enable {
    const NAME: &'static str = "service.enable";
    const DESCRIPTION: &'static str = "Enable a systemd unit at boot; rollback disables it if it was disabled.";
    fn verbs(now: &UnitState) -> Vec<&'static str> {
        if now.is_enabled() { vec![] } else { vec!["enable"] }
    }
}

impl Op for Disable {
    const NAME: &'static str = "service.disable";
    const DESCRIPTION: &'static str = "Disable a systemd unit at boot; rollback enables it if it was enabled.";
    fn verbs(now: &UnitState) -> Vec<&'static str> {
        if now.is_enabled() { vec!["disable"] } else { vec![] }
    }
}

/// A state-changing service action.
pub struct Service<O>(PhantomData<O>);

impl<O> Default for Service<O> {
    fn default() -> Self {
        Service(PhantomData)
    }
}

impl<O: Op> Typed for Service<O> {
    type Params = ServiceParams;
    const NAME: &'static str = O::NAME;
    const DESCRIPTION: &'static str = O::DESCRIPTION;
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &ServiceParams) -> Vec<ParamError> {
        check_name(&p.name)
    }

    async fn execute(&self, p: ServiceParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let now = query(&p.name, ctx).await?;
        let verbs = O::verbs(&now);
        apply(&p.name, &verbs, now, ctx).await
    }

    async fn rollback(&self, p: ServiceParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(O::NAME, &p.name, metadata, ctx).await
    }
}

/// `service.status`: read-only.
pub struct Status;

impl Typed for Status {
    type Params = StatusParams;
    const NAME: &'static str = "service.status";
    const DESCRIPTION: &'static str =
        "Report a systemd unit's active and enabled state; optionally fail unless it is as expected.";
    const DRY_RUN: bool = true;
    const UNDO: bool = false;

    fn check(p: &StatusParams) -> Vec<ParamError> {
        check_name(&p.name)
    }

    async fn execute(&self, p: StatusParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let now = query(&p.name, ctx).await?;
        let mut problems = Vec::new();
        if let Some(want) = p.expect_active
            && want != now.is_active()
        {
            problems.push(format!(
                "expected {} to be {}active, it is {}",
                p.name,
                if want { "" } else { "not " },
                now.active
            ));
        }
        if let Some(want) = p.expect_enabled
            && want != now.is_enabled()
        {
            problems.push(format!(
                "expected {} to be {}enabled, it is {}",
                p.name,
                if want { "" } else { "not " },
                now.enabled
            ));
        }
        let r =
            if problems.is_empty() { ExecResult::succeeded(false) } else { ExecResult::failed(problems.join("; ")) };
        Ok(r.with_stdout(format!("{}: {}\n", p.name, describe(&now)))
            .with_metadata(serde_json::to_value(&now).unwrap_or(Value::Null)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(a: &str, e: &str) -> UnitState {
        UnitState { active: a.into(), enabled: e.into() }
    }

    #[test]
    fn restore_verbs_bring_state_back() {
        assert_eq!(restore_verbs(&st("inactive", "disabled"), &st("active", "enabled")), vec!["disable", "stop"]);
        assert_eq!(restore_verbs(&st("active", "enabled"), &st("inactive", "disabled")), vec!["enable", "start"]);
        assert_eq!(restore_verbs(&st("active", "static"), &st("active", "static")), Vec::<&str>::new());
        assert_eq!(restore_verbs(&st("failed", "enabled"), &st("active", "enabled")), vec!["stop"]);
    }
}
