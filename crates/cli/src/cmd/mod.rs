//! The subcommands that talk to a controller. Each has clap arguments, an async
//! `execute(args) -> Result<Code, CliError>` and a blocking `run(args) -> Code`.

pub mod jobs;
pub mod nodes;
pub mod plan;
pub mod run;

use crate::client::{CliError, Client, code_for};
use crate::format::{step_names, summary_text};
use crate::watch::{Bars, Ended, Follow, Lines, PauseHint, Quiet, Sink, follow};
use crate::{ApiArgs, Code, DEFAULT_API, OutputFormat, print_structured};
use drover_core::api::JobView;
use indicatif::ProgressDrawTarget;
use std::io::IsTerminal;

/// ` --api URL` when a command printed as a hint needs it to reach the same controller.
pub fn api_flag(api: &ApiArgs) -> String {
    let from_env = std::env::var("DROVER_API").ok().is_some_and(|v| v == api.api);
    if api.api == DEFAULT_API || from_env { String::new() } else { format!(" --api {}", api.api) }
}

/// How to follow a job to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// Progress bars on a terminal, timeline lines otherwise.
    Watch,
    /// Nothing but a hint when the job pauses.
    Wait,
}

/// Follow a job to its end with `display`, print the result (`output`), and give the exit
/// code of its final status.
pub async fn follow_job(
    client: &Client,
    view: &JobView,
    display: Display,
    output: OutputFormat,
    api: &ApiArgs,
    opts: &Follow,
) -> Result<Code, CliError> {
    let r = &view.report;
    let id = r.job_id.clone();
    let hint = PauseHint::new(&id, &api_flag(api));
    // Tables go to stdout with the live display; with -o json|yaml stdout is for the document.
    let to_stdout = output.is_table();
    let terminal = if to_stdout { std::io::stdout().is_terminal() } else { std::io::stderr().is_terminal() };
    let out = || -> Box<dyn std::io::Write + Send> {
        if to_stdout { Box::new(std::io::stdout()) } else { Box::new(std::io::stderr()) }
    };
    let mut sink: Box<dyn Sink> = match display {
        Display::Wait => Box::new(Quiet::new(Box::new(std::io::stderr()), hint)),
        Display::Watch if terminal => {
            let target = if to_stdout { ProgressDrawTarget::stdout() } else { ProgressDrawTarget::stderr() };
            Box::new(Bars::new(target, &r.name, r.total_nodes, r.planned_batches, step_names(r), hint))
        }
        Display::Watch => Box::new(Lines::new(out(), step_names(r), r.started_at_ms).with_hint(hint)),
    };
    if let Some(w) = &view.waiting {
        eprintln!("job {id} is waiting: {w}");
    }
    let ended = follow(client, &id, 1, None, sink.as_mut(), opts).await;
    sink.done();
    let end_status = match ended? {
        Ended::End(s) => s,
        Ended::Reached => None,
    };
    let last = client.job(&id).await?;
    // The job view may lag the event stream for a moment: the `end` event decides.
    let status = match end_status {
        Some(s) => s,
        None => last.report.status,
    };
    if output.is_table() {
        if display == Display::Watch {
            println!();
        }
        print!("{}", summary_text(&last));
    } else {
        print_structured(&last, output)?;
    }
    Ok(code_for(status))
}

#[cfg(test)]
mod tests {
    use super::jobs::{JobsArgs, JobsCommand};
    use super::nodes::{NodesArgs, NodesCommand};
    use super::run::RunArgs;
    use crate::OutputFormat;
    use clap::Parser;

    #[derive(Debug, Parser)]
    #[command(name = "drover")]
    enum Cli {
        Run(RunArgs),
        Jobs(JobsArgs),
        Nodes(NodesArgs),
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("drover").chain(args.iter().copied()))
    }

    #[test]
    fn run_plan_and_adhoc_args() {
        let Cli::Run(r) = parse(&["run", "plan.yaml", "--watch", "-o", "json", "--api", "http://h:1"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.args.as_slice(), r.watch, r.output, r.api.api.as_str()),
            (&["plan.yaml".to_string()][..], true, OutputFormat::Json, "http://h:1")
        );
        let Cli::Run(r) = parse(&[
            "run",
            "-t",
            "role=web,zone in (a,b)",
            "shell",
            "command=uptime",
            "--batch",
            "20%",
            "--max-failures",
            "-1",
            "--retries",
            "2",
            "--timeout",
            "30s",
            "--wait",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.target.as_deref(), Some("role=web,zone in (a,b)"));
        assert_eq!(r.args, ["shell", "command=uptime"]);
        assert_eq!((r.batch.as_deref(), r.max_failures.as_deref(), r.retries), (Some("20%"), Some("-1"), Some(2)));
        // Ad hoc flags need targets; --watch and --wait exclude each other and --dry-run.
        assert!(parse(&["run", "plan.yaml", "--batch", "2"]).is_err());
        assert!(parse(&["run", "plan.yaml", "--watch", "--wait"]).is_err());
        assert!(parse(&["run", "plan.yaml", "--wait", "--dry-run"]).is_err());
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["run", "--node", "web-1", "shell", "command=id", "--name", "x"]).is_ok());
    }

    #[test]
    fn jobs_and_nodes_args() {
        let Cli::Jobs(j) =
            parse(&["jobs", "list", "--status", "running", "-o", "yaml", "--api", "http://h:2"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((j.output, j.api.api.as_str()), (OutputFormat::Yaml, "http://h:2"));
        let JobsCommand::List(l) = j.command else { panic!() };
        assert_eq!((l.status.as_deref(), l.limit), (Some("running"), 50));
        assert!(parse(&["jobs", "list", "--status", "bogus"]).is_err());
        let Cli::Jobs(j) = parse(&["jobs", "logs", "J", "--node", "web-1", "-f"]).unwrap() else { panic!() };
        let JobsCommand::Logs(l) = j.command else { panic!() };
        assert_eq!((l.id.as_str(), l.node.as_deref(), l.follow), ("J", Some("web-1"), true));
        for op in ["cancel", "pause", "resume", "approve", "rollback", "get", "watch"] {
            assert!(parse(&["jobs", op, "J"]).is_ok(), "{op}");
            assert!(parse(&["jobs", op]).is_err(), "{op} needs an id");
        }
        let Cli::Nodes(n) = parse(&["nodes", "list", "-l", "role=web"]).unwrap() else { panic!() };
        let NodesCommand::List(l) = n.command else { panic!() };
        assert_eq!(l.selector.as_deref(), Some("role=web"));
        assert_eq!(n.api.api, std::env::var("DROVER_API").unwrap_or_else(|_| crate::DEFAULT_API.into()));
    }
}
