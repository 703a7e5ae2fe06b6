//! `drover jobs list|get|watch|cancel|pause|resume|approve|rollback|logs`.

use super::{Display, follow_job};
use crate::client::{CliError, Client, Operator};
use crate::format::{job_text, jobs_table, node_detail_text, now_ms, step_names};
use crate::watch::{Follow, Lines, Sink, Structured, follow};
use crate::{ApiArgs, Code, OutputFormat, print_structured};
use drover_core::engine::{Progress, ProgressKind};

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit codes: 0 success (watch: the job succeeded), 1 the watched job did not succeed or an \
operator command does not apply now, 2 unknown job or bad flags, 3 drover error.")]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List(ListArgs),
    /// Show a job: status, counts, budget, batches, every node's outcome and steps.
    Get(IdArg),
    /// Follow a job live until it ends (exit code by its final status).
    Watch(IdArg),
    /// Stop new work at once and cancel running steps.
    Cancel(IdArg),
    /// Start no new node until resumed.
    Pause(IdArg),
    /// Go on after a pause (operator or failure budget).
    Resume(IdArg),
    /// Go on past a `pause_after_batches` gate.
    Approve(IdArg),
    /// Stop new work and roll back every node that completed a step.
    Rollback(IdArg),
    /// The job's event timeline, or with --node one node's step output.
    Logs(LogsArgs),
}

/// Statuses `jobs list --status` accepts.
const STATUSES: [&str; 9] =
    ["pending", "running", "paused", "rolling_back", "succeeded", "failed", "rolled_back", "halted", "cancelled"];

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only jobs with this status.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(STATUSES))]
    pub status: Option<String>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// The page after this job id (the `next` of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct IdArg {
    /// The job id (in full, as `drover jobs list` shows it).
    pub id: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The job id.
    pub id: String,
    /// One node: its steps, attempts and undos with stdout / stderr.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Keep following until the job ends (with --node: until the node finishes).
    #[arg(short, long)]
    pub follow: bool,
}

pub async fn execute(args: JobsArgs) -> Result<Code, CliError> {
    execute_with(args, &Follow::default()).await
}

/// [`execute`] with explicit follow settings (tests use short ones).
pub async fn execute_with(args: JobsArgs, opts: &Follow) -> Result<Code, CliError> {
    let client = Client::new(&args.api.api)?;
    let output = args.output;
    match args.command {
        JobsCommand::List(l) => {
            let list = client.jobs(l.status.as_deref(), Some(l.limit), l.after.as_deref()).await?;
            if output.is_table() {
                if list.jobs.is_empty() {
                    println!("no jobs");
                } else {
                    println!("{}", jobs_table(&list.jobs, now_ms()));
                }
                if let Some(next) = &list.next {
                    eprintln!("more: drover jobs list --after {next}");
                }
            } else {
                print_structured(&list, output)?;
            }
            Ok(Code::Success)
        }
        JobsCommand::Get(IdArg { id }) => {
            let v = client.job(&id).await?;
            if output.is_table() {
                print!("{}", job_text(&v));
            } else {
                print_structured(&v, output)?;
            }
            Ok(Code::Success)
        }
        JobsCommand::Watch(IdArg { id }) => {
            let v = client.job(&id).await?;
            follow_job(&client, &v, Display::Watch, output, &args.api, opts).await
        }
        JobsCommand::Cancel(a) => operate(&client, &a.id, Operator::Cancel, output).await,
        JobsCommand::Pause(a) => operate(&client, &a.id, Operator::Pause, output).await,
        JobsCommand::Resume(a) => operate(&client, &a.id, Operator::Resume, output).await,
        JobsCommand::Approve(a) => operate(&client, &a.id, Operator::Approve, output).await,
        JobsCommand::Rollback(a) => operate(&client, &a.id, Operator::Rollback, output).await,
        JobsCommand::Logs(l) => logs(&client, l, output, opts).await,
    }
}

async fn operate(client: &Client, id: &str, op: Operator, output: OutputFormat) -> Result<Code, CliError> {
    let reply = client.operate(id, op).await?;
    if output.is_table() {
        println!("job {}: {} accepted (status now {})", reply.job_id, reply.accepted, reply.status);
    } else {
        print_structured(&reply, output)?;
    }
    Ok(Code::Success)
}

/// Stops at the node's `node_finished` (for `logs --node N --follow`).
struct UntilNode<'a> {
    inner: &'a mut dyn Sink,
    node: String,
    done: bool,
}

impl Sink for UntilNode<'_> {
    fn event(&mut self, e: &Progress) {
        self.inner.event(e);
        if e.kind == ProgressKind::NodeFinished && e.node.as_deref() == Some(&self.node) {
            self.done = true;
        }
    }
    fn idle(&mut self) {
        self.inner.idle();
    }
    fn finished(&self) -> bool {
        self.done
    }
}

async fn logs(client: &Client, l: LogsArgs, output: OutputFormat, opts: &Follow) -> Result<Code, CliError> {
    let view = client.job(&l.id).await?;
    let r = &view.report;
    if let (Some(node), false) = (&l.node, l.follow) {
        let d = client.node_detail(&l.id, node).await?;
        if output.is_table() {
            print!("{}", node_detail_text(&d));
        } else {
            print_structured(&d, output)?;
        }
        return Ok(Code::Success);
    }
    if let Some(node) = &l.node
        && !r.nodes.contains_key(node)
    {
        return Err(CliError::Invalid(format!("node {node} is not a target of job {}", r.job_id)));
    }
    let mut sink: Box<dyn Sink> = if output.is_table() {
        Box::new(Lines::new(Box::new(std::io::stdout()), step_names(r), r.started_at_ms).only_node(l.node.clone()))
    } else {
        Box::new(Structured::new(Box::new(std::io::stdout()), output == OutputFormat::Yaml, l.node.clone()))
    };
    if !l.follow {
        if view.last_event == 0 {
            eprintln!("job {}: no events yet ({})", r.job_id, r.status);
            return Ok(Code::Success);
        }
        follow(client, &r.job_id, 1, Some(view.last_event), sink.as_mut(), opts).await?;
        return Ok(Code::Success);
    }
    let Some(node) = l.node else {
        follow(client, &r.job_id, 1, None, sink.as_mut(), opts).await?;
        return Ok(Code::Success);
    };
    // --node --follow: the node's timeline until it finishes (or the job ends), then its output.
    let mut until = UntilNode { inner: sink.as_mut(), node: node.clone(), done: false };
    follow(client, &r.job_id, 1, None, &mut until, opts).await?;
    let d = client.node_detail(&r.job_id, &node).await?;
    if output.is_table() {
        println!();
        print!("{}", node_detail_text(&d));
    } else {
        print_structured(&d, output)?;
    }
    Ok(Code::Success)
}

/// `drover jobs`: the exit code.
pub fn run(args: JobsArgs) -> Code {
    crate::block_on(async move { crate::finish(execute(args).await) })
}
