//! `drover bench`: drover against the NATS floor, on a fleet it starts itself.
//!
//! One managed `nats-server`, a controller and N agents in this process (each agent with
//! its own NATS connection and journal, as real agents have), driven through the REST
//! API like any client. Workloads:
//! - `w1`: one `echo` step on N nodes at once (N from `--nodes`): submit to finish, and
//!   per node the time from the job's start to its result being applied (p50, p99), from
//!   the job's progress events;
//! - `floor`: the same fan-out as bare NATS request/reply to N responders, each on its
//!   own connection, without drover;
//! - `w2`: 3 steps (`echo`, `file.write`, `sleep 100ms`) on 100 nodes in lockstep batches
//!   of 10 (floor: 10 x 100 ms);
//! - `w3`: 20 nodes in batches of 5, `file.write` failing on nodes 7, 8 and 9,
//!   `max_failures: 1`, rollback; checks that exactly the right nodes ran and were undone.
//!
//! Each figure is the median of `--runs` runs, with min and max.

use crate::cmd::dev::{DevArgs, DevFleet};
use crate::exit::Exit;
use drover_cli::client::{Client, PlanText};
use drover_core::api::JobView;
use drover_core::engine::{JobStatus, NodeOutcome, Progress, ProgressKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Fleet sizes for the fan-out (w1) and its floor, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub nodes: Vec<usize>,
    /// Runs per figure (the median is reported, with min and max).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Workloads to run, comma-separated: w1, floor, w2, w3.
    #[arg(long, value_delimiter = ',', default_value = "floor,w1,w2,w3")]
    pub workloads: Vec<String>,
    /// Output format: table or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Figure {
    workload: String,
    nodes: usize,
    runs: usize,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    /// What the figure is compared with (the NATS floor for w1, the sleeps for w2).
    #[serde(skip_serializing_if = "Option::is_none")]
    floor_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    /// Per node, job start (the round that dispatched it) to its result applied: median
    /// over runs of each run's p50 / p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_p99_ms: Option<f64>,
    note: String,
}

#[derive(Debug, Serialize)]
struct Report {
    figures: Vec<Figure>,
    /// This process (controller + agents + bench driver): CPU seconds and peak RSS.
    process_cpu_s: f64,
    process_peak_rss_mb: f64,
}

/// The largest fleet `drover bench` starts (all in this process).
const MAX_NODES: usize = 10_000;

pub fn run(args: BenchArgs) -> Exit {
    if args.runs == 0 || args.nodes.is_empty() || args.nodes.iter().any(|&n| n == 0 || n > MAX_NODES) {
        eprintln!("error: --runs must be at least 1 and every --nodes size between 1 and {MAX_NODES}");
        return Exit::Invalid;
    }
    if let Some(w) = args.workloads.iter().find(|w| !["w1", "floor", "w2", "w3"].contains(&w.as_str())) {
        eprintln!("error: --workloads: unknown workload {w:?} (known: w1, floor, w2, w3)");
        return Exit::Invalid;
    }
    if !["table", "json"].contains(&args.output.as_str()) {
        eprintln!("error: -o: unknown format {:?} (table or json)", args.output);
        return Exit::Invalid;
    }
    super::block_on_runtime(async move {
        match bench(&args).await {
            Ok(report) => {
                print(&report, &args.output);
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Error
            }
        }
    })
}

async fn bench(args: &BenchArgs) -> anyhow::Result<Report> {
    let has = |w: &str| args.workloads.iter().any(|x| x == w);
    let mut fleet_size = 0;
    if has("w1") {
        fleet_size = args.nodes.iter().copied().max().unwrap_or(0);
    }
    if has("w2") {
        fleet_size = fleet_size.max(100);
    }
    if has("w3") {
        fleet_size = fleet_size.max(20);
    }
    let dir = tempfile::tempdir()?;
    let mut figures = Vec::new();
    if has("floor") {
        let nats = drover_bus::server::ManagedServer::start(&dir.path().join("floor-nats"))?;
        for &n in &args.nodes {
            let times = floor(nats.url(), n, args.runs).await?;
            figures.push(figure(
                "floor",
                n,
                &times,
                None,
                None,
                "bare NATS request/reply, one connection per responder",
            ));
        }
    }
    if fleet_size > 0 {
        eprintln!("starting nats-server, a controller and {fleet_size} agents...");
        let dev = DevArgs {
            agents: fleet_size,
            api_addr: "127.0.0.1:0".parse()?,
            data_dir: dir.path().join("fleet"),
            nats_url: None,
            allow_shell: false,
        };
        let fleet = DevFleet::start(&dev).await?;
        let client = Client::new(&fleet.controller.url())?;
        let js = async_nats::jetstream::new(drover_bus::connect(&fleet.nats_url, "drover-bench").await?);
        let out = dir.path().join("out");
        if has("w1") {
            for &n in &args.nodes {
                let floor_ms = figures.iter().find(|f| f.workload == "floor" && f.nodes == n).map(|f| f.median_ms);
                figures.push(w1(&client, &js, n, args.runs, floor_ms).await?);
            }
        }
        if has("w2") {
            figures.push(w2(&client, &out, args.runs).await?);
        }
        if has("w3") {
            figures.push(w3(&client, &out, args.runs).await?);
        }
        fleet.stop().await;
    }
    let (cpu, rss) = process_cost();
    Ok(Report { figures, process_cpu_s: cpu, process_peak_rss_mb: rss })
}

fn figure(
    workload: &str,
    nodes: usize,
    times: &[f64],
    floor_ms: Option<f64>,
    lat: Option<(f64, f64)>,
    note: &str,
) -> Figure {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Figure {
        workload: workload.to_string(),
        nodes,
        runs: times.len(),
        median_ms: median,
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
        floor_ms,
        ratio: floor_ms.filter(|f| *f > 0.0).map(|f| median / f),
        node_p50_ms: lat.map(|l| l.0),
        node_p99_ms: lat.map(|l| l.1),
        note: note.to_string(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Fan out one small request to `n` responders (each on its own connection) and wait for
/// every reply; `runs` times.
async fn floor(url: &str, n: usize, runs: usize) -> anyhow::Result<Vec<f64>> {
    use futures::StreamExt;
    let mut responders = Vec::with_capacity(n);
    for i in 0..n {
        let c = drover_bus::connect(url, &format!("floor-{i}")).await?;
        let mut sub = c.subscribe(format!("bench.floor.{i}")).await?;
        let replier = c.clone();
        responders.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = replier.publish(reply, "ok".into()).await;
                }
            }
        }));
        // One round trip on the responder's own connection: it is subscribed for sure.
        c.flush().await?;
    }
    let client = drover_bus::connect(url, "floor-driver").await?;
    // Warm up (and wait until every responder answers).
    for i in 0..n {
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.request(format!("bench.floor.{i}"), "w".into()).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "floor responder {i} never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let requests = (0..n).map(|i| client.request(format!("bench.floor.{i}"), "x".into()));
        for r in futures::future::join_all(requests).await {
            r?;
        }
        times.push(ms(started.elapsed()));
    }
    for r in responders {
        r.abort();
    }
    Ok(times)
}

fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("local-{i}")).collect()
}

/// Submit a plan (JSON) and wait until the job is final.
async fn run_job(client: &Client, plan: serde_json::Value, limit: Duration) -> anyhow::Result<JobView> {
    let text = PlanText::new("bench", plan.to_string());
    let submitted = client.submit(&text).await?;
    let id = submitted.report.job_id.clone();
    let deadline = Instant::now() + limit;
    loop {
        let v = client.job(&id).await?;
        if v.report.status.is_final() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "job {id} not finished within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Submit-to-finish on the controller's clock.
fn job_ms(v: &JobView) -> f64 {
    v.report.finished_at_ms.unwrap_or(v.created_at_ms).saturating_sub(v.created_at_ms) as f64
}

async fn w1(
    client: &Client,
    js: &async_nats::jetstream::Context,
    n: usize,
    runs: usize,
    floor_ms: Option<f64>,
) -> anyhow::Result<Figure> {
    let plan = serde_json::json!({
        "name": format!("bench-w1-{n}"),
        "targets": { "nodes": nodes(n) },
        "steps": [{ "name": "echo", "action": "echo", "with": { "message": "hi" } }],
    });
    let names = drover_core::wire::Names::default();
    let (mut times, mut p50s, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let v = run_job(client, plan.clone(), Duration::from_secs(300)).await?;
        anyhow::ensure!(v.report.status == JobStatus::Succeeded, "w1 job ended {}", v.report.status);
        times.push(job_ms(&v));
        let events = drover_bus::read_all(js, &names.events_stream(), &names.job_progress(&v.report.job_id)).await?;
        let mut started: BTreeMap<String, u64> = BTreeMap::new();
        let mut lat = Vec::new();
        for (_, bytes) in events {
            let Ok(p) = serde_json::from_slice::<Progress>(&bytes) else { continue };
            match (p.kind, p.node) {
                (ProgressKind::StepStarted, Some(node)) => {
                    started.insert(node, p.at_ms);
                }
                (ProgressKind::StepSucceeded, Some(node)) => {
                    if let Some(s) = started.get(&node) {
                        lat.push(p.at_ms.saturating_sub(*s) as f64);
                    }
                }
                _ => {}
            }
        }
        lat.sort_by(f64::total_cmp);
        if !lat.is_empty() {
            p50s.push(lat[lat.len() / 2]);
            p99s.push(lat[((lat.len() * 99) / 100).min(lat.len() - 1)]);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let lat = med(&mut p50s).zip(med(&mut p99s));
    Ok(figure("w1", n, &times, floor_ms, lat, "one echo step on every node at once"))
}

async fn w2(client: &Client, out: &Path, runs: usize) -> anyhow::Result<Figure> {
    std::fs::create_dir_all(out)?;
    let plan = serde_json::json!({
        "name": "bench-w2",
        "targets": { "nodes": nodes(100) },
        "rollout": { "strategy": "rolling", "batch": 10 },
        "steps": [
            { "name": "echo", "action": "echo", "with": { "message": "hi" } },
            { "name": "write", "action": "file.write",
              "with": { "path": format!("{}/w2-{{{{node.id}}}}.txt", out.display()), "content": "x" } },
            { "name": "sleep", "action": "sleep", "with": { "duration": "100ms" } },
        ],
    });
    let mut times = Vec::new();
    for _ in 0..runs {
        let v = run_job(client, plan.clone(), Duration::from_secs(300)).await?;
        anyhow::ensure!(v.report.status == JobStatus::Succeeded, "w2 job ended {}", v.report.status);
        times.push(job_ms(&v));
    }
    Ok(figure("w2", 100, &times, Some(1000.0), None, "3 steps, lockstep batches of 10; floor = 10 x 100 ms sleeps"))
}

async fn w3(client: &Client, out: &Path, runs: usize) -> anyhow::Result<Figure> {
    let mut times = Vec::new();
    for run in 0..runs {
        // Every node writes into a directory of its own; nodes 7, 8 and 9 have none, so
        // their file.write fails.
        let base = out.join(format!("w3-{run}"));
        for i in (1..=20).filter(|i| !(7..=9).contains(i)) {
            std::fs::create_dir_all(base.join(format!("local-{i}")))?;
        }
        let plan = serde_json::json!({
            "name": "bench-w3",
            "targets": { "nodes": nodes(20) },
            "rollout": { "strategy": "rolling", "batch": 5, "max_failures": 1, "on_budget_exceeded": "rollback" },
            "steps": [
                { "name": "write", "action": "file.write",
                  "with": { "path": format!("{}/{{{{node.id}}}}/f.conf", base.display()), "content": "v2" } },
                { "name": "check", "action": "test.succeed" },
            ],
        });
        let v = run_job(client, plan, Duration::from_secs(300)).await?;
        check_w3(&v, &base)?;
        times.push(job_ms(&v));
    }
    Ok(figure("w3", 20, &times, None, None, "batches of 5, nodes 7-9 fail, budget 1, rollback: outcomes checked"))
}

/// Exactly the right nodes ran, failed, were rolled back and skipped, and no file is left.
fn check_w3(v: &JobView, base: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(v.report.status == JobStatus::RolledBack, "w3 job ended {}", v.report.status);
    for (id, node) in &v.report.nodes {
        let i: usize = id.trim_start_matches("local-").parse()?;
        let want = match i {
            1..=6 | 10 => NodeOutcome::RolledBack,
            7..=9 => NodeOutcome::Failed,
            _ => NodeOutcome::Skipped,
        };
        anyhow::ensure!(node.outcome == want, "w3: {id} ended {:?}, expected {want:?}", node.outcome);
    }
    for i in 1..=20 {
        let f = base.join(format!("local-{i}")).join("f.conf");
        anyhow::ensure!(!f.exists(), "w3: {} is still there after the rollback", f.display());
    }
    Ok(())
}

/// CPU seconds (user + system) and peak RSS of this process.
fn process_cost() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass; no other precondition.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0;
    if !ok {
        return (0.0, 0.0);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(usage.ru_utime) + tv(usage.ru_stime), usage.ru_maxrss as f64 / 1024.0)
}

fn print(r: &Report, output: &str) {
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    let opt = |v: Option<f64>, unit: &str| v.map(|x| format!("{x:.1}{unit}")).unwrap_or_else(|| "-".into());
    println!(
        "{:<6} {:>6} {:>4} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>9}  note",
        "WORK", "NODES", "RUNS", "MEDIAN", "MIN", "MAX", "FLOOR", "RATIO", "NODE p50", "NODE p99"
    );
    for f in &r.figures {
        println!(
            "{:<6} {:>6} {:>4} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>10} {:>7} {:>9} {:>9}  {}",
            f.workload,
            f.nodes,
            f.runs,
            f.median_ms,
            f.min_ms,
            f.max_ms,
            opt(f.floor_ms, "ms"),
            opt(f.ratio, "x"),
            opt(f.node_p50_ms, "ms"),
            opt(f.node_p99_ms, "ms"),
            f.note
        );
    }
    println!(
        "process (controller + agents + driver): {:.1} CPU s, peak RSS {:.0} MB",
        r.process_cpu_s, r.process_peak_rss_mb
    );
}
