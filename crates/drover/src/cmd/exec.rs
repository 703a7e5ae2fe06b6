//! `drover exec ACTION k=v...` (owned by the action-library work): run one
//! action on this machine, or undo a previous run from its JSON result.
use std::path::PathBuf;
use std::time::Duration;

use drover_actions::{ActionError, ExecContext, ExecResult, Policy, Registry, run_action, run_rollback};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::exit::Exit;

/// Output format of `drover exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Yaml,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Values are parsed as JSON when the param takes something other than a string \
(numbers, true/false, [\"a\",\"b\"], {\"K\":\"V\"}); otherwise they are strings. key=@FILE reads the value \
from FILE. A dotted key sets a map entry: env.FOO=bar.\n\n\
Exit codes: 0 succeeded, 1 failed / timed out / cancelled, 2 invalid input (nothing ran), 3 internal error.")]
pub struct ExecArgs {
    /// Action to run (`drover actions list`).
    #[arg(value_name = "ACTION", required_unless_present = "rollback")]
    pub action: Option<String>,
    /// Params as key=value.
    #[arg(value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Stop the action (kill its process group) after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Preview: change nothing (refused by actions that cannot preview).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Format,
    /// Also allow actions matching this pattern (`shell` must be named to be allowed).
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,
    /// Deny actions matching this pattern.
    #[arg(long, value_name = "PATTERN")]
    pub deny: Vec<String>,
    /// Restrict file.* to paths inside DIR (repeatable; default: anywhere).
    #[arg(long, value_name = "DIR")]
    pub allow_path: Vec<PathBuf>,
    /// Undo a previous `drover exec -o json` run: read its result from this file
    /// (`-` for stdin). KEY=VALUE args give secret params again.
    #[arg(long, value_name = "RESULT.json")]
    pub rollback: Option<PathBuf>,
    /// Extra environment variable for commands the action runs (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bytes of stdout and of stderr kept (the rest is counted and dropped).
    #[arg(long, default_value_t = drover_actions::DEFAULT_OUTPUT_CAP)]
    pub output_cap: usize,
    /// Attempt number given to the action (test.flaky uses it).
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
}

/// What `drover exec -o json` prints, and `--rollback` reads back.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRecord {
    pub action: String,
    /// The params, with secret params replaced by `***`.
    pub params: Value,
    /// Whether this was a rollback of an earlier record.
    #[serde(default)]
    pub rollback: bool,
    #[serde(default)]
    pub dry_run: bool,
    /// Names of params that were redacted (give them again on `--rollback`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted: Vec<String>,
    pub result: ExecResult,
}

/// Why exec stops before running anything.
struct Stop(Exit, String);

fn invalid(msg: impl Into<String>) -> Stop {
    Stop(Exit::Invalid, msg.into())
}

pub fn run(args: ExecArgs) -> Exit {
    match run_inner(args) {
        Ok(code) => code,
        Err(Stop(code, msg)) => {
            eprintln!("{msg}");
            code
        }
    }
}

fn run_inner(args: ExecArgs) -> Result<Exit, Stop> {
    let registry = Registry::builtin();
    let mut policy = Policy::default();
    policy.allow.extend(args.allow.iter().cloned());
    policy.deny.extend(args.deny.iter().cloned());
    policy.paths.extend(args.allow_path.iter().cloned());

    let mut ctx = ExecContext::new("local", hostname(), "exec").with_timeout(args.timeout).with_policy(policy);
    ctx.dry_run = args.dry_run;
    ctx.output_cap = args.output_cap;
    ctx.attempt = args.attempt;
    for kv in &args.env {
        let (k, v) = kv.split_once('=').ok_or_else(|| invalid(format!("error: --env `{kv}`: expected KEY=VALUE")))?;
        ctx.env.insert(k.to_string(), v.to_string());
    }

    let (action, params, metadata) = match &args.rollback {
        Some(file) => {
            // In rollback mode every positional is a KEY=VALUE override.
            let overrides: Vec<String> = args.action.iter().chain(args.params.iter()).cloned().collect();
            let record = read_record(file)?;
            if record.rollback {
                return Err(invalid("error: this result is itself a rollback; it cannot be rolled back"));
            }
            let schema = registry
                .get(&record.action)
                .map(|a| a.params_schema())
                .ok_or_else(|| invalid(format!("error: unknown action `{}` in the result file", record.action)))?;
            let given = parse_params(&schema, &overrides)?;
            let mut params = record.params.clone();
            merge(&mut params, given.clone());
            let missing: Vec<&String> = record.redacted.iter().filter(|p| given.get(p.as_str()).is_none()).collect();
            if !missing.is_empty() {
                return Err(invalid(format!(
                    "error: secret param(s) {} were redacted in the result; give them again, e.g. drover exec --rollback {} {}=...",
                    missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", "),
                    file.display(),
                    missing[0]
                )));
            }
            (record.action, params, Some(record.result.metadata))
        }
        None => {
            let action = args.action.clone().unwrap_or_default();
            let Some(act) = registry.get(&action) else {
                return Err(invalid(format!("error: {}", ActionError::UnknownAction(action))));
            };
            let params = parse_params(&act.params_schema(), &args.params)?;
            (action, Value::Object(params), None)
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Stop(Exit::Error, format!("error: cannot start the async runtime: {e}")))?;
    let is_rollback = metadata.is_some();
    let outcome = rt.block_on(async {
        let cancel = ctx.cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        match metadata {
            Some(m) => run_rollback(&registry, &action, params.clone(), m, &ctx).await,
            None => run_action(&registry, &action, params.clone(), &ctx).await,
        }
    });
    let result = match outcome {
        Ok(r) => r,
        Err(e) => return Err(explain(&registry, &action, e)),
    };
    let record = ExecRecord {
        redacted: registry.secret_params(&action).iter().filter(|p| params.get(p).is_some()).cloned().collect(),
        params: registry.redact_params(&action, &params),
        action,
        rollback: is_rollback,
        dry_run: args.dry_run,
        result,
    };
    print_record(&record, args.output);
    Ok(if record.result.status.is_success() { Exit::Success } else { Exit::Failed })
}

fn explain(registry: &Registry, action: &str, e: ActionError) -> Stop {
    let code = if e.is_invalid_input() { Exit::Invalid } else { Exit::Error };
    let msg = match &e {
        ActionError::InvalidParams(errs) => {
            let mut s = format!("error: invalid params for `{action}`:\n");
            for pe in errs {
                s.push_str(&format!("  {pe}\n"));
            }
            if registry.get(action).is_some() {
                s.push_str(&format!("(`drover actions describe {action}` lists its params)"));
            }
            s
        }
        ActionError::PolicyDenied { action, .. } => format!("error: {e}; pass --allow {action}"),
        ActionError::PathDenied { .. } => format!("error: {e}; pass --allow-path DIR"),
        _ => format!("error: {e}"),
    };
    Stop(code, msg.trim_end().to_string())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "local".into())
}

fn read_record(file: &PathBuf) -> Result<ExecRecord, Stop> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| invalid(format!("error: cannot read the result from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| invalid(format!("error: cannot read `{}`: {e}", file.display())))?
    };
    serde_json::from_str(&text)
        .map_err(|e| invalid(format!("error: `{}` is not a `drover exec -o json` result: {e}", file.display())))
}

/// Deep-merge `extra` into `base` (objects merge, anything else replaces).
fn merge(base: &mut Value, extra: Map<String, Value>) {
    if !base.is_object() {
        *base = Value::Object(Map::new());
    }
    if let Some(b) = base.as_object_mut() {
        for (k, v) in extra {
            match (b.get_mut(&k), v) {
                (Some(existing @ Value::Object(_)), Value::Object(m)) => merge(existing, m),
                (_, v) => {
                    b.insert(k, v);
                }
            }
        }
    }
}

/// `key=value` args into a params object (the rule is shared with `drover run -t`).
fn parse_params(schema: &Value, args: &[String]) -> Result<Map<String, Value>, Stop> {
    drover_cli::params::parse_params(schema, args).map_err(|e| invalid(format!("error: {e}")))
}

fn print_record(record: &ExecRecord, format: Format) {
    match format {
        Format::Json => match serde_json::to_string_pretty(record) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot render the result: {e}"),
        },
        Format::Yaml => match serde_saphyr::to_string(record) {
            Ok(s) => print!("{s}"),
            Err(e) => eprintln!("error: cannot render the result: {e}"),
        },
        Format::Text => {
            let r = &record.result;
            print!("{}", r.stdout);
            if !r.stdout.is_empty() && !r.stdout.ends_with('\n') {
                println!();
            }
            eprint!("{}", r.stderr);
            if !r.stderr.is_empty() && !r.stderr.ends_with('\n') {
                eprintln!();
            }
            let what = if record.rollback { "rollback of " } else { "" };
            let mut summary = format!("{what}{}: {}", record.action, r.status);
            summary.push_str(if r.changed { ", changed" } else { ", unchanged" });
            if record.dry_run {
                summary.push_str(" (dry run)");
            }
            if let Some(c) = r.exit_code {
                summary.push_str(&format!(", exit code {c}"));
            }
            summary.push_str(&format!(", {} ms", r.duration_ms));
            if r.truncated {
                summary.push_str(", output truncated");
            }
            println!("--- {summary}");
            if let Some(e) = &r.error {
                println!("--- error: {e}");
            }
            if !r.metadata.is_null() {
                println!("--- metadata: {}", r.metadata);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_overrides_nested() {
        let mut base = json!({"a": 1, "env": {"X": "***", "Y": "y"}});
        let extra = json!({"env": {"X": "real"}});
        merge(&mut base, extra.as_object().cloned().unwrap());
        assert_eq!(base, json!({"a": 1, "env": {"X": "real", "Y": "y"}}));
    }
}
