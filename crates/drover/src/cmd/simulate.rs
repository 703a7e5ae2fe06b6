//! `drover simulate PLAN`: run the real engine on a simulated fleet in virtual time.

use crate::exit::Exit;
use crate::plan_input::{load_plan, read_plan_text, report_errors};
use drover_cli::format::{counts_line, describe, node_table, secs};
use drover_cli::{OutputFormat, print_structured};
use drover_core::Dur;
use drover_core::engine::{Event, JobStatus};
use drover_core::resolve::NodeInfo;
use drover_core::sim::{Fault, FaultKind, SimConfig, SimRun, StepRef, simulate};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The plan file (YAML or JSON), or - for stdin.
    plan: String,
    /// Simulated nodes node-1..node-N (labelled role=web|db, zone=a|b; see docs/simulator.md).
    #[arg(short = 'n', long)]
    nodes: Option<usize>,
    /// Add a node with labels: ID or ID:k=v,k=v (repeatable).
    #[arg(long = "node", value_name = "ID[:k=v,...]")]
    extra_nodes: Vec<String>,
    /// Make a step fail on a node: every attempt, or only the first K attempts.
    #[arg(long, value_name = "NODE:STEP[:K]")]
    fail: Vec<String>,
    /// Make a step never answer on a node (its timeout decides).
    #[arg(long, value_name = "NODE:STEP")]
    hang: Vec<String>,
    /// Lose a node when a step is dispatched to it.
    #[arg(long, value_name = "NODE:STEP")]
    lose: Vec<String>,
    /// Make the undo of a step fail on a node.
    #[arg(long, value_name = "NODE:STEP")]
    fail_rollback: Vec<String>,
    /// How long steps take: DURATION for all, or STEP=DURATION (STEP = name or 0-based index).
    #[arg(long, value_name = "[STEP=]DURATION")]
    step_time: Vec<String>,
    /// An operator command at a virtual time: TIME:cancel|pause|resume|approve|rollback.
    #[arg(long = "at", value_name = "TIME:COMMAND")]
    operator: Vec<String>,
    /// Approve every pause_after_batches gate at once (else the run ends paused).
    #[arg(long)]
    auto_approve: bool,
    /// Print the event timeline: auto shows it for fleets of up to 50 nodes.
    #[arg(long, value_enum, default_value = "auto")]
    timeline: Timeline,
    /// Output format; json and yaml print the whole run (status, batches, nodes, events).
    #[arg(short, long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Timeline {
    Auto,
    Always,
    Never,
}

pub fn run(args: SimulateArgs) -> Exit {
    let text = match read_plan_text(&args.plan) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Exit::Invalid;
        }
    };
    let plan = match load_plan(&args.plan, &text) {
        Ok(p) => p,
        Err(e) => {
            report_errors(&args.plan, &e);
            return Exit::Invalid;
        }
    };
    let cfg = match sim_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let started = std::time::Instant::now();
    let run = match simulate(&plan, &cfg) {
        Ok(r) => r,
        Err(e) => {
            report_errors(&args.plan, &e);
            return Exit::Invalid;
        }
    };
    let elapsed = started.elapsed();
    tracing::info!(events = run.events.len(), elapsed_ms = elapsed.as_millis() as u64, "simulation done");
    let printed = if args.output == OutputFormat::Table {
        print_text(&plan, &cfg, &run, args.timeline);
        Ok(())
    } else {
        print_structured(&sim_json(&run), args.output)
    };
    if let Err(e) = printed {
        eprintln!("error: {e}");
        return Exit::Error;
    }
    if run.report.status == JobStatus::Succeeded { Exit::Success } else { Exit::Failed }
}

/// The `-o json` document: the job report's fields plus the event list.
fn sim_json(run: &SimRun) -> serde_json::Value {
    let mut v = serde_json::to_value(&run.report).unwrap_or_default();
    v["duration_ms"] = run.duration_ms.into();
    v["events"] = serde_json::to_value(&run.events).unwrap_or_default();
    v
}

fn split_fault(flag: &str, s: &str) -> Result<(String, String, Option<u32>), String> {
    let mut parts: Vec<&str> = s.split(':').collect();
    let k = if parts.len() == 3 {
        let k = parts.pop().unwrap_or_default();
        Some(k.parse::<u32>().map_err(|_| format!("--{flag} {s}: K must be a whole number, got \"{k}\""))?)
    } else {
        None
    };
    match parts.as_slice() {
        [node, step] if !node.is_empty() && !step.is_empty() => Ok((node.to_string(), step.to_string(), k)),
        _ => Err(format!("--{flag} {s}: expected NODE:STEP{}", if flag == "fail" { "[:K]" } else { "" })),
    }
}

fn sim_config(args: &SimulateArgs) -> Result<SimConfig, String> {
    let mut cfg = SimConfig::with_nodes(args.nodes.unwrap_or(0));
    if args.nodes.is_none() && args.extra_nodes.is_empty() {
        return Err("give the simulated fleet: --nodes N and/or --node ID[:k=v,...]".into());
    }
    for spec in &args.extra_nodes {
        let (id, labels) = spec.split_once(':').unwrap_or((spec.as_str(), ""));
        if id.is_empty() {
            return Err(format!("--node {spec}: the node id is empty"));
        }
        let mut node = NodeInfo::new(id);
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("--node {spec}: label \"{pair}\" is not k=v"))?;
            node.labels.insert(k.to_string(), v.to_string());
        }
        cfg.nodes.retain(|n| n.id != node.id);
        cfg.nodes.push(node);
    }
    let mut add = |flag: &str, list: &[String], make: &dyn Fn(Option<u32>) -> FaultKind| -> Result<(), String> {
        for s in list {
            let (node, step, k) = split_fault(flag, s)?;
            if k.is_some() && flag != "fail" {
                return Err(format!("--{flag} {s}: expected NODE:STEP"));
            }
            cfg.faults.push(Fault { node, step: StepRef::parse(&step), kind: make(k) });
        }
        Ok(())
    };
    add("fail", &args.fail, &|k| FaultKind::Fail { first: k })?;
    add("hang", &args.hang, &|_| FaultKind::Hang)?;
    add("lose", &args.lose, &|_| FaultKind::Lose)?;
    add("fail-rollback", &args.fail_rollback, &|_| FaultKind::FailRollback)?;
    for s in &args.step_time {
        match s.split_once('=') {
            Some((step, d)) => {
                let d = Dur::parse(d).map_err(|e| format!("--step-time {s}: {e}"))?;
                cfg.step_times.push((StepRef::parse(step), d));
            }
            None => cfg.step_time = Dur::parse(s).map_err(|e| format!("--step-time {s}: {e}"))?,
        }
    }
    for s in &args.operator {
        let (t, cmd) = s.split_once(':').ok_or_else(|| format!("--at {s}: expected TIME:COMMAND, e.g. 30s:cancel"))?;
        let t = Dur::parse(t).map_err(|e| format!("--at {s}: {e}"))?;
        let e = Event::operator(cmd)
            .ok_or_else(|| format!("--at {s}: unknown command \"{cmd}\" (cancel, pause, resume, approve, rollback)"))?;
        cfg.operator.push((t.as_millis(), e));
    }
    cfg.auto_approve = args.auto_approve;
    Ok(cfg)
}

fn print_text(plan: &drover_core::Plan, cfg: &SimConfig, run: &SimRun, timeline: Timeline) {
    let r = &run.report;
    let step_names: Vec<String> = plan.steps.iter().map(|s| s.name.clone()).collect();
    println!(
        "simulating \"{}\": {}, {} planned, {}, {} per step (virtual time)",
        plan.name,
        drover_core::count(r.total_nodes, "node", "nodes"),
        drover_core::count(r.planned_batches, "batch", "batches"),
        drover_core::count(plan.steps.len(), "step", "steps"),
        cfg.step_time
    );
    let show = match timeline {
        Timeline::Always => true,
        Timeline::Never => false,
        Timeline::Auto => r.total_nodes <= 50,
    };
    if show {
        println!();
        for e in &run.events {
            println!("  {:>9}  {}", secs(e.at_ms), describe(e, &step_names));
        }
    } else if timeline == Timeline::Auto {
        println!(
            "(timeline of {} events not shown for {} nodes; use --timeline always)",
            run.events.len(),
            r.total_nodes
        );
    }
    println!();
    let sizes: Vec<usize> = r.batches.iter().map(Vec::len).collect();
    println!("batches run: {} (sizes {})", r.batches.len(), run_lengths(&sizes));
    println!("nodes: {}", counts_line(&r.counts));
    // The per-node table: every node on small fleets, the ones that did not succeed on large.
    if let Some(t) = node_table(r) {
        println!("{t}");
    }
    let reason = r.reason.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
    println!("result: {}{} after {} of virtual time", r.status, reason, secs(run.duration_ms));
}

/// `1, 2 x3, 5`: equal neighbours folded, so that 5,000 batches of 2 take one line.
fn run_lengths(sizes: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sizes.len() {
        let run = sizes[i..].iter().take_while(|&&s| s == sizes[i]).count();
        parts.push(if run > 1 { format!("{} x{run}", sizes[i]) } else { sizes[i].to_string() });
        i += run;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_lengths_fold_equal_neighbours() {
        assert_eq!(super::run_lengths(&[1, 2, 2, 2, 5, 2]), "1, 2 x3, 5, 2");
        assert_eq!(super::run_lengths(&[]), "");
    }
}
