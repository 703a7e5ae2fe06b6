//! `package.install`, `package.upgrade`, `package.remove`: apt/dpkg on
//! Debian-family systems, dnf (or yum) with rpm on RHEL-family systems,
//! detected from what is on PATH. The metadata records the version installed
//! before (or absence); rollback returns the package to exactly that state
//! (reinstalling that version, downgrading if needed, or removing it).
//!
//! Commands get `DEBIAN_FRONTEND=noninteractive` and the context env, so an
//! agent (or a test) can point apt at other sources with `APT_CONFIG`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::process::{Cmd, Transcript, run, which};
use crate::schema::Typed;
use crate::{ActionError, ExecContext, ExecResult, ExecStatus, ParamError};

/// Which package manager to use.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    /// Detect: apt-get + dpkg-query, else dnf + rpm, else yum + rpm.
    #[default]
    Auto,
    Apt,
    Dnf,
    Yum,
}

impl Manager {
    fn name(self) -> &'static str {
        match self {
            Manager::Auto => "auto",
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Yum => "yum",
        }
    }
}

/// Params of `package.install` and `package.upgrade`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallParams {
    /// Package name, e.g. `nginx`.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$"))]
    pub name: String,
    /// Exact version (apt: `1.24.0-1`, rpm: `1.24.0-1.el9` or `2:1.24.0-1.el9`).
    /// Default: the candidate (newest available) version.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9.+~:_-]*$"))]
    pub version: Option<String>,
    /// Refresh the package indexes first (`apt-get update` / `dnf makecache`).
    #[serde(default)]
    pub update: bool,
    /// Package manager.
    #[serde(default)]
    pub manager: Manager,
}

/// Params of `package.remove`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveParams {
    /// Package name, e.g. `nginx`.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$"))]
    pub name: String,
    /// Refresh the package indexes before a rollback reinstalls the package.
    #[serde(default)]
    pub update: bool,
    /// Package manager.
    #[serde(default)]
    pub manager: Manager,
}

/// What the package actions record for rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageMeta {
    pub manager: Manager,
    pub name: String,
    /// Version installed before; `null` = not installed.
    pub previous: Option<String>,
    /// Version installed after; `null` = not installed.
    pub current: Option<String>,
}

fn detect(requested: Manager, ctx: &ExecContext) -> Result<Manager, ActionError> {
    let has = |p: &str| which(ctx, p).is_some();
    let found = match requested {
        Manager::Auto => {
            if has("apt-get") && has("dpkg-query") {
                Some(Manager::Apt)
            } else if has("dnf") && has("rpm") {
                Some(Manager::Dnf)
            } else if has("yum") && has("rpm") {
                Some(Manager::Yum)
            } else {
                None
            }
        }
        Manager::Apt => (has("apt-get") && has("dpkg-query")).then_some(Manager::Apt),
        Manager::Dnf => (has("dnf") && has("rpm")).then_some(Manager::Dnf),
        Manager::Yum => (has("yum") && has("rpm")).then_some(Manager::Yum),
    };
    found.ok_or_else(|| {
        ActionError::Failed(format!(
            "no usable package manager ({}) on PATH: need apt-get + dpkg-query, dnf + rpm, or yum + rpm",
            requested.name()
        ))
    })
}

fn pm_cmd(m: Manager) -> Cmd {
    match m {
        Manager::Apt | Manager::Auto => Cmd::new("apt-get")
            .args([
                "-y",
                "-q",
                "-o",
                "Dpkg::Options::=--force-confdef",
                "-o",
                "Dpkg::Options::=--force-confold",
                "-o",
                "Dpkg::Use-Pty=0",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        Manager::Dnf => Cmd::new("dnf").arg("-y"),
        Manager::Yum => Cmd::new("yum").arg("-y"),
    }
}

/// The installed version of `name`, or None.
async fn installed(m: Manager, name: &str, ctx: &ExecContext) -> Result<Option<String>, ActionError> {
    let out = match m {
        Manager::Apt | Manager::Auto => {
            run(&Cmd::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}|${Version}\\n", name]), ctx).await?
        }
        Manager::Dnf | Manager::Yum => {
            run(&Cmd::new("rpm").args(["-q", "--qf", "%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n", name]), ctx)
                .await?
        }
    };
    if out.status == ExecStatus::Cancelled {
        return Err(ActionError::Failed("cancelled".into()));
    }
    if !out.success() {
        // dpkg-query: "no packages found matching"; rpm: "package x is not installed".
        let text = format!("{}{}", out.stdout, out.stderr);
        if text.contains("no packages found") || text.contains("not installed") {
            return Ok(None);
        }
        return Err(ActionError::Failed(format!("cannot query the installed version of `{name}`: {}", text.trim())));
    }
    let line = out.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    Ok(match m {
        Manager::Apt | Manager::Auto => {
            let (status, version) = line.split_once('|').unwrap_or(("", ""));
            // Second letter of the abbreviated status: `i` = installed.
            (status.chars().nth(1) == Some('i')).then(|| version.trim().to_string())
        }
        Manager::Dnf | Manager::Yum => Some(line.trim().to_string()).filter(|v| !v.is_empty()),
    })
}

fn spec(m: Manager, name: &str, version: Option<&str>) -> String {
    match (m, version) {
        (_, None) => name.to_string(),
        (Manager::Apt | Manager::Auto, Some(v)) => format!("{name}={v}"),
        (Manager::Dnf | Manager::Yum, Some(v)) => format!("{name}-{v}"),
    }
}

/// Install `name` at `version` (or the candidate), downgrading if needed.
async fn install_to(
    t: &mut Transcript,
    m: Manager,
    name: &str,
    version: Option<&str>,
    ctx: &ExecContext,
) -> Result<bool, ActionError> {
    let s = spec(m, name, version);
    let cmd = match m {
        Manager::Apt | Manager::Auto => pm_cmd(m).args(["install", "--allow-downgrades", s.as_str()]),
        Manager::Dnf | Manager::Yum => pm_cmd(m).args(["install", s.as_str()]),
    };
    let mut ok = t.run(&cmd, ctx).await?.success();
    if matches!(m, Manager::Dnf | Manager::Yum) && version.is_some() && ok {
        let now = installed(m, name, ctx).await?;
        if now.as_deref() != version {
            ok = t.run(&pm_cmd(m).args(["downgrade", s.as_str()]), ctx).await?.success();
        }
    }
    Ok(ok)
}

async fn remove_pkg(t: &mut Transcript, m: Manager, name: &str, ctx: &ExecContext) -> Result<bool, ActionError> {
    Ok(t.run(&pm_cmd(m).args(["remove", name]), ctx).await?.success())
}

async fn refresh(t: &mut Transcript, m: Manager, ctx: &ExecContext) -> Result<bool, ActionError> {
    let cmd = match m {
        Manager::Apt | Manager::Auto => pm_cmd(m).arg("update"),
        Manager::Dnf | Manager::Yum => pm_cmd(m).arg("makecache"),
    };
    Ok(t.run(&cmd, ctx).await?.success())
}

/// The version after a change; when cancelled (no more commands run) the
/// state is unknown and `before` is reported.
async fn state_after(
    m: Manager,
    name: &str,
    before: &Option<String>,
    ctx: &ExecContext,
) -> Result<Option<String>, ActionError> {
    if ctx.cancel.is_cancelled() {
        return Ok(before.clone());
    }
    installed(m, name, ctx).await
}

fn show(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "absent".into())
}

fn meta(m: Manager, name: &str, previous: &Option<String>, current: &Option<String>) -> Value {
    serde_json::to_value(PackageMeta {
        manager: m,
        name: name.to_string(),
        previous: previous.clone(),
        current: current.clone(),
    })
    .unwrap_or(Value::Null)
}

/// Finish a change: compare the state reached with the one wanted.
fn conclude(
    mut t: Transcript,
    cmd_ok: bool,
    state: PackageMeta,
    wanted: Result<(), String>,
    ctx: &ExecContext,
) -> ExecResult {
    let PackageMeta { manager: m, name, previous, current } = &state;
    let cancelled = ctx.cancel.is_cancelled();
    // Cancelled mid-way: the state is unknown, so report a change (rollback will check).
    let changed = previous != current || cancelled;
    t.note(format!("{name}: {} -> {}", show(previous), show(current)));
    let status = if cancelled {
        ExecStatus::Cancelled
    } else if cmd_ok && wanted.is_ok() {
        ExecStatus::Succeeded
    } else {
        ExecStatus::Failed
    };
    let mut r = t.into_result(status, changed).with_metadata(meta(*m, name, previous, current));
    if status == ExecStatus::Failed {
        r.error = Some(match wanted {
            Err(e) => e,
            Ok(()) => "the package manager failed (see output)".into(),
        });
    }
    r
}

fn check_name_version(name: &str, version: Option<&str>) -> Vec<ParamError> {
    let mut errs = Vec::new();
    if name.starts_with('-') {
        errs.push(ParamError::new("name", "must not start with `-`"));
    }
    if version.is_some_and(|v| v.starts_with('-')) {
        errs.push(ParamError::new("version", "must not start with `-`"));
    }
    errs
}

// ---------------------------------------------------------------- install

pub struct Install;

impl Typed for Install {
    type Params = InstallParams;
    const NAME: &'static str = "package.install";
    const DESCRIPTION: &'static str = "Install a package (a given version, downgrading if needed); rollback returns it to the previous version or removes it.";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &InstallParams) -> Vec<ParamError> {
        check_name_version(&p.name, p.version.as_deref())
    }

    async fn execute(&self, p: InstallParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let m = detect(p.manager, ctx)?;
        let previous = installed(m, &p.name, ctx).await?;
        let satisfied = match (&previous, &p.version) {
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
            (None, _) => false,
        };
        if satisfied {
            return Ok(ExecResult::succeeded(false)
                .with_stdout(format!("{} {} is installed\n", p.name, show(&previous)))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        let target = spec(m, &p.name, p.version.as_deref());
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(true)
                .with_stdout(format!("would install {target} (now {})\n", show(&previous)))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        let mut t = Transcript::default();
        let mut ok = true;
        if p.update {
            ok = refresh(&mut t, m, ctx).await?;
        }
        if ok {
            ok = install_to(&mut t, m, &p.name, p.version.as_deref(), ctx).await?;
        }
        let current = state_after(m, &p.name, &previous, ctx).await?;
        let wanted = match (&current, &p.version) {
            (None, _) => Err(format!("{} is not installed after the install", p.name)),
            (Some(have), Some(want)) if have != want => Err(format!("{} is at {have}, not {want}", p.name)),
            _ => Ok(()),
        };
        Ok(conclude(t, ok, PackageMeta { manager: m, name: p.name.clone(), previous, current }, wanted, ctx))
    }

    async fn rollback(&self, p: InstallParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(Self::NAME, &p.name, p.update, metadata, ctx).await
    }
}

// ---------------------------------------------------------------- upgrade

pub struct Upgrade;

impl Typed for Upgrade {
    type Params = InstallParams;
    const NAME: &'static str = "package.upgrade";
    const DESCRIPTION: &'static str = "Upgrade an installed package (to a given version or the newest); never installs or downgrades; rollback returns it to the previous version.";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &InstallParams) -> Vec<ParamError> {
        check_name_version(&p.name, p.version.as_deref())
    }

    async fn execute(&self, p: InstallParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let m = detect(p.manager, ctx)?;
        let previous = installed(m, &p.name, ctx).await?;
        if previous.is_none() {
            return Ok(ExecResult::failed(format!(
                "{} is not installed (package.upgrade does not install; use package.install)",
                p.name
            ))
            .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        if p.version.is_some() && p.version == previous {
            return Ok(ExecResult::succeeded(false)
                .with_stdout(format!("{} {} is installed\n", p.name, show(&previous)))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        let target = spec(m, &p.name, p.version.as_deref());
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(true)
                .with_stdout(format!("would upgrade {target} (now {})\n", show(&previous)))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        let mut t = Transcript::default();
        let mut ok = true;
        if p.update {
            ok = refresh(&mut t, m, ctx).await?;
        }
        if ok {
            let cmd = match m {
                Manager::Apt | Manager::Auto => pm_cmd(m).args(["install", "--only-upgrade", target.as_str()]),
                Manager::Dnf | Manager::Yum => pm_cmd(m).args(["upgrade", target.as_str()]),
            };
            ok = t.run(&cmd, ctx).await?.success();
        }
        let current = state_after(m, &p.name, &previous, ctx).await?;
        let wanted = match (&current, &p.version) {
            (None, _) => Err(format!("{} is not installed after the upgrade", p.name)),
            (Some(have), Some(want)) if have != want => Err(format!("{} is at {have}, not {want}", p.name)),
            _ => Ok(()),
        };
        Ok(conclude(t, ok, PackageMeta { manager: m, name: p.name.clone(), previous, current }, wanted, ctx))
    }

    async fn rollback(&self, p: InstallParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(Self::NAME, &p.name, p.update, metadata, ctx).await
    }
}

// ---------------------------------------------------------------- remove

pub struct Remove;

impl Typed for Remove {
    type Params = RemoveParams;
    const NAME: &'static str = "package.remove";
    const DESCRIPTION: &'static str =
        "Remove a package (configuration files are kept); rollback reinstalls the version that was installed.";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &RemoveParams) -> Vec<ParamError> {
        check_name_version(&p.name, None)
    }

    async fn execute(&self, p: RemoveParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let m = detect(p.manager, ctx)?;
        let previous = installed(m, &p.name, ctx).await?;
        if previous.is_none() {
            return Ok(ExecResult::succeeded(false)
                .with_stdout(format!("{} is not installed\n", p.name))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        if ctx.dry_run {
            return Ok(ExecResult::succeeded(true)
                .with_stdout(format!("would remove {} {}\n", p.name, show(&previous)))
                .with_metadata(meta(m, &p.name, &previous, &previous)));
        }
        let mut t = Transcript::default();
        let ok = remove_pkg(&mut t, m, &p.name, ctx).await?;
        let current = state_after(m, &p.name, &previous, ctx).await?;
        let wanted = match &current {
            Some(v) => Err(format!("{} {v} is still installed", p.name)),
            None => Ok(()),
        };
        Ok(conclude(t, ok, PackageMeta { manager: m, name: p.name.clone(), previous, current }, wanted, ctx))
    }

    async fn rollback(&self, p: RemoveParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(Self::NAME, &p.name, p.update, metadata, ctx).await
    }
}

// ---------------------------------------------------------------- rollback

/// Return the package to `metadata.previous`: remove it if it was absent,
/// else install exactly that version (downgrading if needed).
async fn restore(
    action: &str,
    name: &str,
    update: bool,
    metadata: Value,
    ctx: &ExecContext,
) -> Result<ExecResult, ActionError> {
    let bad = |reason: String| ActionError::InvalidMetadata { action: action.to_string(), reason };
    let md: PackageMeta = serde_json::from_value(metadata).map_err(|e| bad(e.to_string()))?;
    if md.name != name {
        return Err(bad(format!("metadata is for `{}`, params for `{name}`", md.name)));
    }
    let m = detect(md.manager, ctx)?;
    let now = installed(m, name, ctx).await?;
    if now == md.previous {
        return Ok(ExecResult::succeeded(false)
            .with_stdout(format!("{name} is already {}\n", show(&md.previous)))
            .with_metadata(meta(m, name, &now, &now)));
    }
    if ctx.dry_run {
        return Ok(ExecResult::succeeded(true)
            .with_stdout(format!("would return {name} from {} to {}\n", show(&now), show(&md.previous)))
            .with_metadata(meta(m, name, &now, &now)));
    }
    let mut t = Transcript::default();
    let ok = match &md.previous {
        None => remove_pkg(&mut t, m, name, ctx).await?,
        Some(v) => {
            let mut ok = true;
            if update {
                ok = refresh(&mut t, m, ctx).await?;
            }
            ok && install_to(&mut t, m, name, Some(v), ctx).await?
        }
    };
    let after = state_after(m, name, &now, ctx).await?;
    let wanted = if after == md.previous {
        Ok(())
    } else {
        Err(format!("{name} is {} after the rollback, not {}", show(&after), show(&md.previous)))
    };
    let r = conclude(
        t,
        ok,
        PackageMeta { manager: m, name: name.to_string(), previous: now.clone(), current: after.clone() },
        wanted,
        ctx,
    );
    Ok(r.with_metadata(json!({ "restored": md, "from": now, "to": after })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(spec(Manager::Apt, "nginx", Some("1.2-1")), "nginx=1.2-1");
        assert_eq!(spec(Manager::Dnf, "nginx", Some("1.2-1.el9")), "nginx-1.2-1.el9");
        assert_eq!(spec(Manager::Apt, "nginx", None), "nginx");
    }
}
