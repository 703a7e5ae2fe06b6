//! `drover run PLAN` and `drover run -t SELECTOR ACTION key=value...`: submit a job.

use super::{Display, api_flag, follow_job};
use crate::adhoc::AdHoc;
use crate::client::{CliError, Client, PlanText};
use crate::format::{counts_line, preview_text};
use crate::watch::Follow;
use crate::{ApiArgs, Code, OutputFormat, print_structured};
use clap::ArgGroup;
use drover_core::api::JobView;
use serde_json::Value;

#[derive(Debug, Clone, clap::Args)]
#[command(group(ArgGroup::new("targets").args(["target", "node"]).multiple(true)))]
#[command(after_help = "Examples:\n  \
drover run examples/rolling-rollback.yaml --watch\n  \
drover run plan.yaml --wait -o json > job.json\n  \
drover run -t role=web shell command=uptime --watch\n  \
drover run -t all service.restart name=nginx --batch 2 --max-failures 1 --wait\n\n\
Ad hoc values are JSON when the action's param takes something other than a string \
(numbers, true/false, [\"a\"], {\"K\":\"V\"}), else strings; key=@FILE reads FILE; env.FOO=bar sets a map entry.\n\n\
Exit codes: 0 submitted (with --watch/--wait: the job succeeded), 1 the job ended failed, rolled_back, \
halted or cancelled, 2 invalid input (bad plan or flags; nothing ran), 3 drover error (controller unreachable, \
not ready, queue full).")]
pub struct RunArgs {
    /// The plan file (YAML or JSON; - for stdin). With -t/--node: ACTION [KEY=VALUE]...
    #[arg(value_name = "PLAN | ACTION [KEY=VALUE]...", required = true)]
    pub args: Vec<String>,
    /// Ad hoc: run ACTION on the nodes this label selector matches (`all`: every node).
    #[arg(short = 't', long = "target", value_name = "SELECTOR")]
    pub target: Option<String>,
    /// Ad hoc: run ACTION on this node (repeatable; adds to -t).
    #[arg(long = "node", value_name = "ID")]
    pub node: Vec<String>,
    /// Ad hoc: the job's name (default adhoc-ACTION).
    #[arg(long, requires = "targets")]
    pub name: Option<String>,
    /// Ad hoc: the step's timeout (default 5m).
    #[arg(long, requires = "targets", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Ad hoc: retries of the step on a node (default 0).
    #[arg(long, requires = "targets", value_name = "N")]
    pub retries: Option<u32>,
    /// Ad hoc: roll out in batches of N nodes or P% of them (default: all at once).
    #[arg(long, requires = "targets", value_name = "N|P%")]
    pub batch: Option<String>,
    /// Ad hoc: failed nodes tolerated before the job stops and rolls back (default 0; -1: no limit).
    #[arg(long, requires = "targets", value_name = "N|P%|-1", allow_hyphen_values = true)]
    pub max_failures: Option<String>,
    /// Follow the job live (progress bars on a terminal, a timeline otherwise), then print a summary.
    #[arg(long, conflicts_with_all = ["wait", "dry_run"])]
    pub watch: bool,
    /// Wait for the job to end without a live display (with -o json: print the final job).
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Show the resolved targets and batches; run nothing (same as `drover plan`).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub api: ApiArgs,
}

impl RunArgs {
    fn is_adhoc(&self) -> bool {
        self.target.is_some() || !self.node.is_empty()
    }
}

/// Build the plan to send: the file's text, or an ad hoc one-step plan.
async fn plan_text(args: &RunArgs, client: &Client) -> Result<PlanText, CliError> {
    if !args.is_adhoc() {
        if args.args.len() > 1 {
            return Err(CliError::Invalid(format!(
                "`drover run PLAN` takes one plan file, got {} arguments; for an ad hoc step give targets: \
                 drover run -t SELECTOR ACTION key=value...",
                args.args.len()
            )));
        }
        return PlanText::read(&args.args[0]);
    }
    let action = args.args[0].clone();
    let raw = &args.args[1..];
    // Params are typed by the action's schema, as the controller's nodes offer it.
    let schema = if raw.is_empty() {
        Value::Null
    } else {
        match client.actions().await {
            Ok(list) => list
                .actions
                .into_iter()
                .find(|a| a.offer.name == action)
                .map(|a| a.offer.params_schema)
                .unwrap_or(Value::Null),
            Err(e @ CliError::Unreachable { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!("cannot list the controller's actions ({e}); params are JSON when they parse");
                Value::Null
            }
        }
    };
    let params = crate::params::parse_params(&schema, raw).map_err(CliError::Invalid)?;
    let adhoc = AdHoc {
        selector: args.target.clone(),
        nodes: args.node.clone(),
        action,
        params,
        name: args.name.clone(),
        timeout: args.timeout.clone(),
        retries: args.retries,
        batch: args.batch.clone(),
        max_failures: args.max_failures.clone(),
    };
    let plan = adhoc.plan().map_err(CliError::Invalid)?;
    Ok(PlanText { source: "ad hoc plan".into(), text: plan.to_string(), json: true })
}

/// What `drover run` prints after submitting without --watch/--wait.
pub fn submitted_text(v: &JobView, api_flag: &str) -> String {
    let r = &v.report;
    let id = &r.job_id;
    let mut s = format!(
        "job {id} submitted: \"{}\", {} nodes in {} batches ({})\n",
        r.name, r.total_nodes, r.planned_batches, r.status
    );
    if let Some(w) = &v.waiting {
        s.push_str(&format!("waiting: {w}\n"));
    }
    if !v.excluded_offline.is_empty() {
        s.push_str(&format!("excluded (offline): {}\n", v.excluded_offline.join(", ")));
    }
    if r.status.is_final() {
        s.push_str(&format!("nodes: {}\n", counts_line(&r.counts)));
    }
    s.push_str(&format!("watch it:  drover jobs watch {id}{api_flag}\n"));
    s.push_str(&format!("details:   drover jobs get {id}{api_flag}\n"));
    s
}

pub async fn execute(args: RunArgs) -> Result<Code, CliError> {
    execute_with(args, &Follow::default()).await
}

/// [`execute`] with explicit follow settings (tests use short ones).
pub async fn execute_with(args: RunArgs, opts: &Follow) -> Result<Code, CliError> {
    let client = Client::new(&args.api.api)?;
    let plan = plan_text(&args, &client).await?;
    if args.dry_run {
        let p = client.preview(&plan).await?;
        if args.output.is_table() {
            print!("{}", preview_text(&p));
        } else {
            print_structured(&p, args.output)?;
        }
        return Ok(Code::Success);
    }
    let view = client.submit(&plan).await?;
    if !args.watch && !args.wait {
        if args.output.is_table() {
            print!("{}", submitted_text(&view, &api_flag(&args.api)));
        } else {
            print_structured(&view, args.output)?;
        }
        return Ok(Code::Success);
    }
    if args.wait && args.output.is_table() {
        eprintln!("job {} submitted; waiting for it to end", view.report.job_id);
    }
    let display = if args.watch { Display::Watch } else { Display::Wait };
    follow_job(&client, &view, display, args.output, &args.api, opts).await
}

/// `drover run`: the exit code.
pub fn run(args: RunArgs) -> Code {
    crate::block_on(async move { crate::finish(execute(args).await) })
}
