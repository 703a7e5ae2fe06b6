//! `shell`: run a command (argv or `/bin/sh -c` script).

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::process::{Cmd, run};
use crate::schema::Typed;
use crate::{ActionError, ExecContext, ExecResult, ParamError};

pub struct Shell;

/// A command: a list is an argv run directly (no shell); a string is a script run by `/bin/sh -c`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandSpec {
    /// Program and arguments, run without a shell.
    Argv(Vec<String>),
    /// Script text, run by `/bin/sh -c`.
    Script(String),
}

impl CommandSpec {
    fn to_cmd(&self) -> Option<Cmd> {
        match self {
            CommandSpec::Argv(v) => {
                let (first, rest) = v.split_first()?;
                Some(Cmd::new(first.clone()).args(rest.iter().cloned()))
            }
            CommandSpec::Script(s) => Some(Cmd::new("/bin/sh").args(["-c", s.as_str()])),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            CommandSpec::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
            CommandSpec::Script(s) => s.trim().is_empty(),
        }
    }
}

/// Params of `shell`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// The command: a list of strings is an argv run directly (no shell, first item
    /// looked up on PATH); a string is a script run by `/bin/sh -c`. Exit code 0 is success.
    pub command: CommandSpec,
    /// Extra environment variables (on top of the agent's controlled base env).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Extra environment variables whose values are secret: passed to the command,
    /// replaced by `***` in output, metadata, errors and logs, and not kept in
    /// `drover exec -o json` results.
    #[serde(default)]
    #[schemars(extend("x-drover-secret" = true))]
    pub secret_env: BTreeMap<String, String>,
    /// Working directory (absolute). Default: the agent's working directory.
    pub cwd: Option<PathBuf>,
    /// Command that undoes this one (same forms as `command`), run by rollback
    /// with the same env and cwd plus `DROVER_ROLLBACK=1`. Without it, rollback
    /// has nothing to undo.
    pub rollback: Option<CommandSpec>,
}

impl ShellParams {
    fn cmd(&self, spec: &CommandSpec) -> Result<Cmd, ActionError> {
        let mut cmd = spec.to_cmd().ok_or_else(|| ActionError::Failed("empty command".into()))?;
        cmd.cwd = self.cwd.clone();
        cmd.env.extend(self.env.clone());
        cmd.env.extend(self.secret_env.clone());
        Ok(cmd)
    }
}

impl Typed for Shell {
    type Params = ShellParams;
    const NAME: &'static str = "shell";
    const DESCRIPTION: &'static str =
        "Run a command or /bin/sh script in its own process group (denied unless the policy allows `shell` by name).";
    const DRY_RUN: bool = false;
    const UNDO: bool = true;

    fn check(p: &ShellParams) -> Vec<ParamError> {
        let mut errs = Vec::new();
        if p.command.is_empty() {
            errs.push(ParamError::new("command", "must not be empty"));
        }
        if p.rollback.as_ref().is_some_and(CommandSpec::is_empty) {
            errs.push(ParamError::new("rollback", "must not be empty"));
        }
        if let Some(cwd) = &p.cwd
            && !cwd.is_absolute()
        {
            errs.push(ParamError::new("cwd", "must be an absolute path"));
        }
        for k in p.env.keys().chain(p.secret_env.keys()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                errs.push(ParamError::new(format!("env.{k}"), "not a valid environment variable name"));
            }
        }
        errs
    }

    async fn execute(&self, p: ShellParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let cmd = p.cmd(&p.command)?;
        let out = run(&cmd, ctx).await?;
        // A command cannot tell what it changed: once started, it may have changed anything.
        Ok(out.into_result("command", true).with_metadata(json!({ "has_rollback": p.rollback.is_some() })))
    }

    async fn rollback(&self, p: ShellParams, _metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let Some(spec) = &p.rollback else {
            return Ok(
                ExecResult::succeeded(false).with_stdout("shell: no `rollback` command given; nothing to undo\n")
            );
        };
        let cmd = p.cmd(spec)?.env("DROVER_ROLLBACK", "1");
        let out = run(&cmd, ctx).await?;
        Ok(out.into_result("rollback command", true))
    }
}
