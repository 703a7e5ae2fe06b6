//! `drover bench`: drover against the NATS floor, on a fleet it starts itself.
//!
//! One managed `nats-server`, a controller in this process and N agents running the real
//! agent code in child processes of up to 2,000 agents each (each agent with its own NATS
//! connection and journal, as real agents have), driven through the REST API like any
//! client. The controller's CPU and memory are this process's; the agents' are measured
//! apart, and one real idle `drover agent` process gives the agent's own footprint.
//! Workloads:
//! - `w1`: one `echo` step on N nodes at once (N from `--nodes`): from submit to the last
//!   result stored (the job's final progress event, written with it, seen from the
//!   nats-server), and per node the time from the job's start to its result being applied
//!   (p50, p99), from the job's progress events;
//! - `floor`: the same fan-out as bare NATS request/reply to N responders, each on its
//!   own connection, without drover: on the fleet's server while the fleet idles, its runs
//!   alternating with w1's (on a server of its own when the fleet's cannot take that many
//!   more connections, or without w1);
//! - `w2`: 3 steps (`echo`, `file.write`, `sleep 100ms`) on 100 nodes in lockstep batches
//!   of 10 (floor: 10 x 100 ms);
//! - `w3`: 20 nodes in batches of 5, `file.write` failing on nodes 7, 8 and 9,
//!   `max_failures: 1`, rollback; checks that exactly the right nodes ran and were undone.
//!
//! Each figure is the median of `--runs` runs, with min and max, with what the workload
//! cost (each workload first runs once unmeasured, as the floor first asks every
//! responder once: the first job on a fresh fleet pays one-time costs): CPU and peak memory by process, and the NATS messages per node-step as the
//! nats-server counts them (its monitoring endpoint's `/varz`).

use crate::exit::Exit;
use drover_cli::client::{Client, PlanText};
use drover_core::api::JobView;
use drover_core::engine::{JobStatus, NodeOutcome, Progress, ProgressKind};
use drover_core::liveness::DEFAULT_FLEET_BEATS_PER_S;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Fleet sizes for the fan-out (w1) and its floor, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub nodes: Vec<usize>,
    /// Runs per figure (the median is reported, with min and max), after one unmeasured
    /// warm-up run of each workload.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Workloads to run, comma-separated: w1, floor, w2, w3.
    #[arg(long, value_delimiter = ',', default_value = "floor,w1,w2,w3")]
    pub workloads: Vec<String>,
    /// Where the agents keep their journals. By default a temporary directory on
    /// `/dev/shm` (tmpfs) when there is one: on a real fleet every agent fsyncs to its own
    /// disk, while here a thousand agents would queue on one. Pass a directory on disk to
    /// measure that instead. The NATS store stays on disk either way.
    #[arg(long)]
    pub agent_dir: Option<std::path::PathBuf>,
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
    /// Every run's time, in the order they ran.
    runs_ms: Vec<f64>,
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
    /// What the workload cost (all its runs); not for the floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<WorkloadCost>,
    /// NATS messages per node-step (for the floor: per request), over all its runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<MsgsPerStep>,
    /// What the floor's runs cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    floor_cost: Option<FloorCost>,
}

impl Figure {
    fn measured(&mut self, (cost, messages): (WorkloadCost, MsgsPerStep)) {
        self.cost = Some(cost);
        self.messages = Some(messages);
    }
}

#[derive(Debug, Serialize)]
struct Report {
    figures: Vec<Figure>,
    /// This process (controller + bench driver; the agents run in child processes): CPU
    /// seconds and peak RSS over the whole bench.
    process_cpu_s: f64,
    process_peak_rss_mb: f64,
    /// Resident memory of one idle `drover agent` process.
    agent_idle_rss_mb: Option<f64>,
    /// CPU seconds per second of the idle fleet (heartbeats), before the workloads.
    idle_cpu: Option<IdleCost>,
    /// Where the agents' journals were.
    agent_journals: String,
}

/// CPU seconds per second of wall time, by process.
#[derive(Debug, Serialize)]
struct IdleCost {
    /// The controller's resident memory with the fleet registered and idle.
    controller_rss_mb: f64,
    controller: f64,
    agents: f64,
    nats: f64,
    /// Messages the nats-server received per second (heartbeats, mostly).
    nats_msgs_in: f64,
}

/// How long the idle fleet is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

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
        // On Ctrl-C or SIGTERM the bench stops, and what it started stops with it: its
        // nats-servers, agent and floor processes and controller are dropped.
        let outcome = tokio::select! {
            r = bench(&args) => r,
            _ = crate::signals::wait_for_stop() => Err(anyhow::anyhow!("interrupted: stopped the fleet")),
        };
        match outcome {
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
    let shm = std::path::Path::new("/dev/shm");
    let agents_tmp = match &args.agent_dir {
        Some(_) => None,
        None if shm.is_dir() && fleet_size > 0 => Some(tempfile::tempdir_in(shm)?),
        None => None,
    };
    let agents_dir = args
        .agent_dir
        .clone()
        .or_else(|| agents_tmp.as_ref().map(|t| t.path().to_path_buf()))
        .unwrap_or_else(|| dir.path().join("agents"));
    let mut figures = Vec::new();
    if has("floor") && !has("w1") {
        // No fleet to share a server with: the floor alone, on a server of its own.
        let nats = drover_bus::server::ManagedServer::start_monitored(&dir.path().join("floor-nats"))?;
        let varz = Varz::of(&nats)?;
        for &n in &args.nodes {
            let mut floor = FloorRuns::start(&nats, &varz, n).await?;
            for _ in 0..args.runs {
                floor.run().await?;
            }
            figures.push(floor.figure("bare NATS request/reply, one connection per responder, no fleet").await);
        }
    }
    let mut agent_idle_rss_mb = None;
    let mut idle_cpu = None;
    let mut peak_before_resets_mb = 0.0;
    if fleet_size > 0 {
        eprintln!("starting nats-server, a controller and {fleet_size} agents...");
        let nats = drover_bus::server::ManagedServer::start_monitored(&dir.path().join("nats"))?;
        let cfg = drover_controller::ControllerConfig {
            api_addr: "127.0.0.1:0".parse()?,
            ..drover_controller::ControllerConfig::default()
        };
        let controller =
            drover_controller::start(cfg, drover_bus::connect(nats.url(), "drover-controller").await?).await?;
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out)?;
        let mut hosts = AgentHosts::start(nats.url(), fleet_size, &agents_dir, &out)?;
        let ids = nodes(fleet_size);
        let deadline = Instant::now() + Duration::from_secs(60 + fleet_size as u64 / 50);
        while !ids.iter().all(|id| controller.sees_online(id)) {
            hosts.check()?;
            if Instant::now() > deadline {
                let missing = ids.iter().filter(|id| !controller.sees_online(id)).count();
                anyhow::bail!("{missing} agents not online in time (their processes' errors are above)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{fleet_size} agents online in {} processes", hosts.children.len());
        agent_idle_rss_mb = idle_agent_rss(nats.url(), &controller, dir.path()).await?;
        let bench_nats = drover_bus::connect(nats.url(), "drover-bench").await?;
        let jobs = Jobs { client: Client::new(&controller.url())?, finished: FinishWatch::start(&bench_nats).await? };
        let js = async_nats::jetstream::new(bench_nats);
        let cost = Cost {
            controller: &controller,
            hosts: &hosts,
            nats_pid: nats.pid(),
            nats: Varz::of(&nats)?,
            peak_before_resets_mb: std::cell::Cell::new(0.0),
        };
        // What the idle fleet costs (heartbeats), per second. Past 1,000 agents they beat
        // less often than every 2 s, each once it has counted the whole fleet: when it
        // starts, or else at its 30th beat, at most 60 s after the last one came online
        // (agent.md, "Heartbeats in a large fleet"). Where that makes a difference (beats a
        // quarter further apart or more), the idle fleet is measured after that.
        let (beat, cap) = (drover_agent::config::DEFAULT_HEARTBEAT.as_millis() as u64, DEFAULT_FLEET_BEATS_PER_S);
        if drover_core::liveness::beat_interval_ms(beat, fleet_size as u64 + 1, cap) >= beat * 5 / 4 {
            eprintln!("waiting 65 s, until every agent has counted the whole fleet...");
            tokio::time::sleep(Duration::from_secs(65)).await;
        }
        let start = cost.now().await?;
        tokio::time::sleep(IDLE_WINDOW).await;
        let idle = cost.now().await?.minus(start);
        let per_s = |x: f64| x / IDLE_WINDOW.as_secs_f64();
        idle_cpu = Some(IdleCost {
            controller_rss_mb: proc_status_kb(std::process::id(), "VmRSS:").unwrap_or(0.0) / 1024.0,
            controller: per_s(idle.cpu_s),
            agents: per_s(idle.agents_cpu_s),
            nats: per_s(idle.nats_cpu_s),
            nats_msgs_in: per_s(idle.msgs.in_msgs as f64),
        });
        if has("w1") {
            // The floor on this fleet's server, while the fleet idles, its runs alternating
            // with w1's: both see the same server and the same machine (whose speed drifts).
            // Unless the server cannot take the floor's connections too: then on a server
            // of its own, still alternating.
            let mut own_server: Option<(drover_bus::server::ManagedServer, Varz)> = None;
            for &n in &args.nodes {
                let mut floor = match has("floor") {
                    false => None,
                    true if fleet_size + n + FD_HEADROOM <= open_files_limit() => {
                        Some((FloorRuns::start(&nats, &cost.nats, n).await?, "same server as the fleet"))
                    }
                    true => {
                        if own_server.is_none() {
                            let s = drover_bus::server::ManagedServer::start_monitored(&dir.path().join("floor-nats"))?;
                            let v = Varz::of(&s)?;
                            own_server = Some((s, v));
                        }
                        let (s, v) = own_server.as_ref().ok_or_else(|| anyhow::anyhow!("no floor server"))?;
                        let why = "own server (the fleet's has too few open files for both)";
                        Some((FloorRuns::start(s, v, n).await?, why))
                    }
                };
                // Unmeasured, as the floor's first request to each responder: the first
                // job on a fresh fleet was a third slower than the next ones.
                W1Runs::new(n).run(&jobs, &js, &cost).await?;
                let mut runs = W1Runs::new(n);
                cost.reset_peak_rss();
                let mut spent = Spent::default();
                for _ in 0..args.runs {
                    if let Some((f, _)) = floor.as_mut() {
                        f.run().await?;
                    }
                    spent = spent.plus(runs.run(&jobs, &js, &cost).await?);
                }
                let floor_ms = match floor {
                    Some((f, server)) => {
                        let note = format!(
                            "bare NATS request/reply, one connection per responder, {server}, runs alternating with w1"
                        );
                        let f = f.figure(&note).await;
                        let ms = f.median_ms;
                        figures.push(f);
                        Some(ms)
                    }
                    None => None,
                };
                let mut f = runs.figure(floor_ms);
                f.measured(cost.report(spent));
                figures.push(f);
            }
        }
        if has("w2") {
            w2(&jobs, &out, 1).await?;
            cost.reset_peak_rss();
            let start = cost.now().await?;
            let mut f = w2(&jobs, &out, args.runs).await?;
            f.measured(cost.report(cost.now().await?.minus(start)));
            figures.push(f);
        }
        if has("w3") {
            w3(&jobs, &out.join("warm-up"), 1).await?;
            cost.reset_peak_rss();
            let start = cost.now().await?;
            let mut f = w3(&jobs, &out, args.runs).await?;
            f.measured(cost.report(cost.now().await?.minus(start)));
            figures.push(f);
        }
        peak_before_resets_mb = cost.peak_before_resets_mb.get();
        hosts.stop();
        controller.shutdown().await;
    }
    let (cpu, rss) = process_cost();
    // The kernel's high-water mark was reset at the start of each workload: the whole
    // bench's peak is the largest of what came before the last reset and after it.
    let rss = rss.max(peak_before_resets_mb);
    Ok(Report {
        figures,
        process_cpu_s: cpu,
        process_peak_rss_mb: rss,
        agent_idle_rss_mb,
        idle_cpu,
        agent_journals: if fleet_size > 0 { agents_dir.display().to_string() } else { "nowhere (no fleet)".into() },
    })
}

/// Agents per `drover bench-agents` process (each agent holds three files open).
const AGENTS_PER_PROCESS: usize = 2_000;

/// The fleet's agents, in child processes of `AGENTS_PER_PROCESS` each: the controller
/// (in this process) is measured alone, and no process needs more open files than a
/// default limit allows.
struct AgentHosts {
    children: Vec<std::process::Child>,
}

impl AgentHosts {
    fn start(nats_url: &str, n: usize, agents_dir: &Path, files_dir: &Path) -> anyhow::Result<AgentHosts> {
        let exe = std::env::current_exe()?;
        let mut hosts = AgentHosts { children: Vec::new() };
        let mut first = 1;
        while first <= n {
            let last = (first + AGENTS_PER_PROCESS - 1).min(n);
            let child = std::process::Command::new(&exe)
                .arg("bench-agents")
                .args(["--nats-url", nats_url, "--first", &first.to_string(), "--last", &last.to_string()])
                .arg("--agent-dir")
                .arg(agents_dir)
                .arg("--files-dir")
                .arg(files_dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()?;
            hosts.children.push(child);
            first = last + 1;
        }
        Ok(hosts)
    }

    /// Fail when an agent process has exited (it printed why).
    fn check(&mut self) -> anyhow::Result<()> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                anyhow::bail!("an agent process (bench-agents) exited: {status}");
            }
        }
        Ok(())
    }

    /// CPU seconds (user + system) of the agent processes so far.
    fn cpu_s(&self) -> f64 {
        self.children.iter().map(|c| proc_cpu_s(c.id())).sum()
    }

    /// Drain: SIGTERM, then wait (killed after 30 s).
    fn stop(mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &mut self.children {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for AgentHosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_online(
    controller: &drover_controller::ControllerHandle,
    ids: &[String],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !ids.iter().all(|id| controller.sees_online(id)) {
        if Instant::now() > deadline {
            let missing = ids.iter().filter(|id| !controller.sees_online(id)).count();
            anyhow::bail!("{missing} agents not online within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The resident memory of one real `drover agent` process, idle (registered, heartbeating)
/// for 3 s.
async fn idle_agent_rss(
    nats_url: &str,
    controller: &drover_controller::ControllerHandle,
    dir: &Path,
) -> anyhow::Result<Option<f64>> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["agent", "--nats-url", nats_url, "--node-id", "bench-idle", "--data-dir"])
        .arg(dir.join("idle-agent"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let seen = wait_online(controller, &["bench-idle".to_string()], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = child.id().and_then(|pid| proc_status_kb(pid, "VmRSS:")).map(|kb| kb / 1024.0);
    let _ = child.kill().await;
    seen?;
    Ok(rss)
}

/// CPU and memory of the controller (this process) and the agents during one workload.
struct Cost<'a> {
    controller: &'a drover_controller::ControllerHandle,
    hosts: &'a AgentHosts,
    nats_pid: Option<u32>,
    nats: Varz,
    /// This process's peak resident memory before the last [`Cost::reset_peak_rss`].
    peak_before_resets_mb: std::cell::Cell<f64>,
}

/// Counters of the processes and the server: read at a moment ([`Cost::now`]), or what
/// they grew by between two moments ([`Spent::minus`]), summed over runs ([`Spent::plus`]).
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    cpu_s: f64,
    agents_cpu_s: f64,
    nats_cpu_s: f64,
    engine_s: f64,
    commands: u64,
    msgs: Msgs,
}

impl Spent {
    fn minus(self, earlier: Spent) -> Spent {
        Spent {
            cpu_s: self.cpu_s - earlier.cpu_s,
            agents_cpu_s: (self.agents_cpu_s - earlier.agents_cpu_s).max(0.0),
            nats_cpu_s: self.nats_cpu_s - earlier.nats_cpu_s,
            engine_s: self.engine_s - earlier.engine_s,
            commands: self.commands.saturating_sub(earlier.commands),
            msgs: self.msgs.minus(earlier.msgs),
        }
    }

    fn plus(self, other: Spent) -> Spent {
        Spent {
            cpu_s: self.cpu_s + other.cpu_s,
            agents_cpu_s: self.agents_cpu_s + other.agents_cpu_s,
            nats_cpu_s: self.nats_cpu_s + other.nats_cpu_s,
            engine_s: self.engine_s + other.engine_s,
            commands: self.commands + other.commands,
            msgs: self.msgs.plus(other.msgs),
        }
    }
}

/// Messages a nats-server has received from its clients (`in`) and delivered to them
/// (`out`), from its monitoring endpoint's `/varz`.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
struct Msgs {
    in_msgs: u64,
    out_msgs: u64,
}

impl Msgs {
    fn minus(self, earlier: Msgs) -> Msgs {
        Msgs {
            in_msgs: self.in_msgs.saturating_sub(earlier.in_msgs),
            out_msgs: self.out_msgs.saturating_sub(earlier.out_msgs),
        }
    }

    fn plus(self, other: Msgs) -> Msgs {
        Msgs { in_msgs: self.in_msgs + other.in_msgs, out_msgs: self.out_msgs + other.out_msgs }
    }
}

/// Reads a managed server's message counters.
struct Varz {
    http: reqwest::Client,
    url: String,
}

impl Varz {
    fn of(server: &drover_bus::server::ManagedServer) -> anyhow::Result<Varz> {
        let base = server.monitoring_url().ok_or_else(|| anyhow::anyhow!("nats-server has no monitoring endpoint"))?;
        Ok(Varz { http: drover_cli::client::http_builder().build()?, url: format!("{base}/varz") })
    }

    async fn read(&self) -> anyhow::Result<Msgs> {
        let r = self.http.get(&self.url).timeout(Duration::from_secs(5)).send().await?;
        Ok(r.error_for_status()?.json().await?)
    }
}

/// NATS messages per node-step of a workload: published to the server and delivered by
/// it, heartbeats and JetStream acks included.
#[derive(Debug, Clone, Copy, Serialize)]
struct MsgsPerStep {
    /// Node-steps: the commands the controller sent (step attempts and rollbacks).
    node_steps: u64,
    msgs_in: f64,
    msgs_out: f64,
}

impl MsgsPerStep {
    /// `msgs`: what the server counted over the node-steps.
    fn of(node_steps: u64, msgs: Msgs) -> MsgsPerStep {
        let per = |m: u64| m as f64 / node_steps.max(1) as f64;
        MsgsPerStep { node_steps, msgs_in: per(msgs.in_msgs), msgs_out: per(msgs.out_msgs) }
    }

    fn show(&self) -> String {
        format!("{:.1}/{:.1}", self.msgs_in, self.msgs_out)
    }
}

/// What one workload cost (every run of it).
#[derive(Debug, Clone, Serialize)]
struct WorkloadCost {
    /// CPU seconds of the bench process: the controller, plus the driver's HTTP polling.
    controller_cpu_s: f64,
    /// Its peak resident memory during the workload.
    controller_peak_rss_mb: f64,
    /// CPU seconds inside the rollout engine, and their share of the controller's.
    engine_cpu_s: f64,
    engine_share: f64,
    /// CPU seconds of the agent processes.
    agents_cpu_s: f64,
    /// CPU seconds of the nats-server.
    nats_cpu_s: f64,
}

impl Cost<'_> {
    /// The counters now.
    async fn now(&self) -> anyhow::Result<Spent> {
        let msgs = self.nats.read().await?;
        Ok(Spent {
            cpu_s: process_cost().0,
            agents_cpu_s: self.hosts.cpu_s(),
            nats_cpu_s: cpu_s_of(self.nats_pid),
            engine_s: self.controller.engine_seconds(),
            commands: self.controller.commands_sent(),
            msgs,
        })
    }

    /// Start a workload's peak memory from here (where the kernel allows), keeping the
    /// peak so far.
    fn reset_peak_rss(&self) {
        let peak = proc_status_kb(std::process::id(), "VmHWM:").unwrap_or(0.0) / 1024.0;
        self.peak_before_resets_mb.set(self.peak_before_resets_mb.get().max(peak));
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }

    /// A workload's cost from what its runs spent, with this process's peak memory since
    /// [`Cost::reset_peak_rss`], and its NATS messages per node-step.
    fn report(&self, spent: Spent) -> (WorkloadCost, MsgsPerStep) {
        let cost = WorkloadCost {
            controller_cpu_s: spent.cpu_s,
            controller_peak_rss_mb: proc_status_kb(std::process::id(), "VmHWM:").unwrap_or(0.0) / 1024.0,
            engine_cpu_s: spent.engine_s,
            engine_share: if spent.cpu_s > 0.0 { spent.engine_s / spent.cpu_s } else { 0.0 },
            agents_cpu_s: spent.agents_cpu_s,
            nats_cpu_s: spent.nats_cpu_s,
        };
        (cost, MsgsPerStep::of(spent.commands, spent.msgs))
    }
}

/// A `/proc/<pid>/status` field in kB.
fn proc_status_kb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// [`proc_cpu_s`] of a process whose pid may be unknown (0 then).
fn cpu_s_of(pid: Option<u32>) -> f64 {
    pid.map_or(0.0, proc_cpu_s)
}

/// User + system CPU seconds of a process (its own threads), from `/proc/<pid>/stat`.
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) close with ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no precondition.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    if hz <= 0.0 { 0.0 } else { (ticks(11) + ticks(12)) / hz }
}

/// `drover bench-agents` (hidden): run agents `local-FIRST..=local-LAST` in this process
/// for `drover bench` until SIGTERM, then drain them.
#[derive(Debug, clap::Args)]
pub struct BenchAgentsArgs {
    #[arg(long)]
    pub nats_url: String,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub last: usize,
    #[arg(long)]
    pub agent_dir: std::path::PathBuf,
    /// Where `file.*` steps may write.
    #[arg(long)]
    pub files_dir: std::path::PathBuf,
}

pub fn run_agents(args: BenchAgentsArgs) -> Exit {
    if args.first == 0 || args.last < args.first {
        eprintln!("error: --first must be at least 1 and --last at least --first");
        return Exit::Invalid;
    }
    // Each agent holds its socket, journal and lock file open.
    raise_fd_limit();
    super::block_on_runtime(async move {
        let agents = match crate::cmd::dev::start_agents(
            &args.nats_url,
            args.first..=args.last,
            &args.agent_dir,
            &args.files_dir,
            false,
        )
        .await
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Exit::Error;
            }
        };
        crate::signals::wait_for_stop().await;
        let drains: Vec<_> = agents.into_iter().map(|a| a.shutdown()).collect();
        let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(drains)).await;
        Exit::Success
    })
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
        runs_ms: times.to_vec(),
        floor_ms,
        ratio: floor_ms.filter(|f| *f > 0.0).map(|f| median / f),
        node_p50_ms: lat.map(|l| l.0),
        node_p99_ms: lat.map(|l| l.1),
        note: note.to_string(),
        cost: None,
        messages: None,
        floor_cost: None,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `drover bench-floor` child process, asked for one fan-out at a time. In a process of
/// its own, its `n` client connections (buffers the allocator keeps after they close) do
/// not count in the resident memory measured for the controller, which runs in this
/// process: at 10,000 nodes they made it look like 370 MB at idle instead of about 80.
struct FloorProcess {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl FloorProcess {
    /// Start it and wait until every responder has answered once.
    async fn start(url: &str, n: usize) -> anyhow::Result<FloorProcess> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("bench-floor")
            .args(["--nats-url", url, "--nodes", &n.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("the floor process (bench-floor) has no standard input or output");
        };
        let mut p = FloorProcess { child, stdin, stdout: tokio::io::BufReader::new(stdout).lines() };
        let ready = p.line(Duration::from_secs(60 + n as u64 / 50)).await?;
        anyhow::ensure!(
            ready == FLOOR_READY,
            "the floor process (bench-floor) said {ready:?} instead of {FLOOR_READY:?}"
        );
        Ok(p)
    }

    /// One fan-out: its time in ms.
    async fn run(&mut self) -> anyhow::Result<f64> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(FLOOR_RUN.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        let line = self.line(Duration::from_secs(120)).await?;
        line.parse().map_err(|_| anyhow::anyhow!("the floor process (bench-floor) answered {line:?}, not a time in ms"))
    }

    async fn line(&mut self, limit: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(limit, self.stdout.next_line()).await {
            Err(_) => anyhow::bail!("the floor process (bench-floor) did not answer within {limit:?}"),
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => anyhow::bail!("the floor process (bench-floor) ended: {:?}", self.child.try_wait()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Close its input, which ends it (killed if it does not end within 10 s).
    async fn stop(self) {
        let FloorProcess { mut child, stdin, stdout } = self;
        drop(stdin);
        drop(stdout);
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// What `drover bench-floor` prints once its responders are up, and the request for one
/// fan-out (a line each).
const FLOOR_READY: &str = "ready";
const FLOOR_RUN: &str = "run";

/// The floor's runs at one size, with the messages its server counted during them.
struct FloorRuns<'a> {
    process: FloorProcess,
    server: &'a drover_bus::server::ManagedServer,
    varz: &'a Varz,
    n: usize,
    times: Vec<f64>,
    msgs: Msgs,
    cost: FloorCost,
}

/// CPU seconds of the floor's runs (all of them).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct FloorCost {
    /// The `drover bench-floor` process: its responders and its driver.
    process_cpu_s: f64,
    /// The nats-server (on a fleet's server, with what the idle fleet cost it meanwhile).
    nats_cpu_s: f64,
}

impl FloorRuns<'_> {
    async fn start<'a>(
        server: &'a drover_bus::server::ManagedServer,
        varz: &'a Varz,
        n: usize,
    ) -> anyhow::Result<FloorRuns<'a>> {
        let process = FloorProcess::start(server.url(), n).await?;
        Ok(FloorRuns { process, server, varz, n, times: Vec::new(), msgs: Msgs::default(), cost: FloorCost::default() })
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let (process, nats) = (self.process.child.id(), self.server.pid());
        let before = self.varz.read().await?;
        let cpu_before = (cpu_s_of(process), cpu_s_of(nats));
        self.times.push(self.process.run().await?);
        self.cost.process_cpu_s += cpu_s_of(process) - cpu_before.0;
        self.cost.nats_cpu_s += cpu_s_of(nats) - cpu_before.1;
        self.msgs = self.msgs.plus(self.varz.read().await?.minus(before));
        Ok(())
    }

    /// Its figure (the process is stopped): messages per request over the measured runs
    /// (on a fleet's server, with what the idle fleet sent meanwhile).
    async fn figure(self, note: &str) -> Figure {
        self.process.stop().await;
        let mut f = figure("floor", self.n, &self.times, None, None, note);
        f.messages = Some(MsgsPerStep::of((self.n * self.times.len()) as u64, self.msgs));
        f.floor_cost = Some(self.cost);
        f
    }
}

/// What the bench leaves free of the open files the nats-server may hold (its inherited
/// limit, ours) besides one connection per agent and per floor responder: its store's
/// files, the controller's and the bench's connections.
const FD_HEADROOM: usize = 1_000;

/// This process's limit on open files (soft, hard).
fn open_files() -> Option<libc::rlimit> {
    // SAFETY: getrlimit fills the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0).then_some(lim)
    }
}

/// The soft limit on open files of this process, which the nats-server it starts inherits.
fn open_files_limit() -> usize {
    open_files().map_or(0, |lim| usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX))
}

/// `drover bench-floor` (hidden): the floor's responders and driver, alone in a process.
#[derive(Debug, clap::Args)]
pub struct BenchFloorArgs {
    #[arg(long)]
    pub nats_url: String,
    #[arg(long)]
    pub nodes: usize,
}

/// Take the whole open-file allowance (the soft limit up to the hard one).
fn raise_fd_limit() {
    if let Some(mut lim) = open_files().filter(|l| l.rlim_cur < l.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Start the responders, print `ready` once each has answered, then fan out once per
/// `run` line on standard input and print each fan-out's time in ms; end at end of input.
pub fn run_floor(args: BenchFloorArgs) -> Exit {
    // One connection per responder.
    raise_fd_limit();
    super::block_on_runtime(async move {
        match serve_floor(&args.nats_url, args.nodes).await {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("error: {e:#}");
                Exit::Error
            }
        }
    })
}

async fn serve_floor(url: &str, n: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let floor = Floor::start(url, n).await?;
    let say = |line: &str| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    };
    say(FLOOR_READY)?;
    // Standard input is read on a thread of its own (a blocking read).
    let (tx, mut requests) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(request) = requests.recv().await {
        anyhow::ensure!(request.trim() == FLOOR_RUN, "unknown request {request:?} (expected {FLOOR_RUN:?})");
        say(&floor.fan_out().await?.to_string())?;
    }
    floor.stop();
    Ok(())
}

/// `n` responders, each on its own connection, and the driver that asks them all at once.
struct Floor {
    client: async_nats::Client,
    responders: Vec<tokio::task::JoinHandle<()>>,
    n: usize,
}

impl Floor {
    /// Start the responders and ask each once (which waits until it answers).
    async fn start(url: &str, n: usize) -> anyhow::Result<Floor> {
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
        for i in 0..n {
            let deadline = Instant::now() + Duration::from_secs(10);
            while client.request(format!("bench.floor.{i}"), "w".into()).await.is_err() {
                anyhow::ensure!(Instant::now() < deadline, "floor responder {i} never answered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Floor { client, responders, n })
    }

    /// One small request to every responder at once; the time until every reply is in, in ms.
    async fn fan_out(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let requests = (0..self.n).map(|i| self.client.request(format!("bench.floor.{i}"), "x".into()));
        for r in futures::future::join_all(requests).await {
            r?;
        }
        Ok(ms(started.elapsed()))
    }

    fn stop(self) {
        for r in self.responders {
            r.abort();
        }
    }
}

fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("local-{i}")).collect()
}

/// Runs bench jobs through the controller's API, and times each from its submission to
/// its last result stored.
struct Jobs {
    client: Client,
    finished: FinishWatch,
}

impl Jobs {
    /// Submit a plan (JSON), wait until the job is final, and return its view and its time
    /// in ms: from when the controller took the submission (its clock) to when the job's
    /// `job_finished` progress event, written in the same round as its last result,
    /// reached this process from the nats-server (this machine's clock).
    async fn run(&self, plan: serde_json::Value, limit: Duration) -> anyhow::Result<(JobView, f64)> {
        let (id, created_at_ms, stored_ms) = self.run_timed(plan, limit).await?;
        Ok((self.client.job(&id).await?, stored_ms.saturating_sub(created_at_ms) as f64))
    }

    /// [`Jobs::run`] without reading the job's view: its id, when the controller took it
    /// and when its last result was stored.
    async fn run_timed(&self, plan: serde_json::Value, limit: Duration) -> anyhow::Result<(String, u64, u64)> {
        let text = PlanText::new("bench", plan.to_string());
        let submitted = self.client.submit(&text).await?;
        let id = submitted.report.job_id.clone();
        let deadline = Instant::now() + limit;
        loop {
            // Poll the listing (a line per job), not the job (a report of every node): at
            // 10,000 nodes the full view every 10 ms would be most of the controller's work.
            // Bench jobs run one at a time, so this one is the newest.
            let newest = self.client.jobs(None, Some(1), None).await?;
            if newest.jobs.first().is_some_and(|j| j.id == id && j.status.is_final()) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "job {id} not finished within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stored_ms = self.finished.at_ms(&id, Duration::from_secs(10)).await?;
        Ok((id, submitted.created_at_ms, stored_ms))
    }
}

/// When each job's `job_finished` progress event reached this process: a subscription to
/// every job's progress subject, taken before any job is submitted.
struct FinishWatch {
    seen: std::sync::Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FinishWatch {
    async fn start(nats: &async_nats::Client) -> anyhow::Result<FinishWatch> {
        use futures::StreamExt;
        let mut sub = nats.subscribe(drover_core::wire::Names::default().job_progress("*")).await?;
        // The server has the subscription before anything is submitted.
        nats.flush().await?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let at = drover_bus::now_ms();
                // A job's last event is the last line of its last progress message.
                let last = m.payload.rsplit(|b| *b == b'\n').find(|l| !l.iter().all(u8::is_ascii_whitespace));
                let last = last.unwrap_or_default();
                let pattern = br#""kind":"job_finished""#;
                if !last.windows(pattern.len()).any(|w| w == pattern) {
                    continue;
                }
                // `<prefix>.event.<job>.progress`
                if let Some(job) = m.subject.rsplit('.').nth(1) {
                    record.lock().unwrap_or_else(|e| e.into_inner()).insert(job.to_string(), at);
                }
            }
        });
        Ok(FinishWatch { seen, task })
    }

    /// When `job`'s `job_finished` event came, waiting up to `limit` for it.
    async fn at_ms(&self, job: &str, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(job) {
                return Ok(at);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "job {job}: no job_finished progress event seen within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Drop for FinishWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a job did not succeed: its reason and its first failed nodes with their errors.
fn why(v: &JobView) -> String {
    let failed: Vec<String> = v
        .report
        .nodes
        .iter()
        .filter(|(_, n)| n.failure.is_some() || matches!(n.outcome, NodeOutcome::Failed | NodeOutcome::Unreachable))
        .take(3)
        .map(|(id, n)| {
            let errors: Vec<&str> = n.steps.iter().filter_map(|s| s.error.as_deref()).collect();
            format!("{id} {:?}: {}", n.failure.unwrap_or(n.outcome), errors.join("; "))
        })
        .collect();
    format!(": {}; {}", v.report.reason.as_deref().unwrap_or("no reason given"), failed.join(" | "))
}

/// W1 at one size: one `echo` step on `n` nodes at once, a run at a time.
struct W1Runs {
    n: usize,
    plan: serde_json::Value,
    times: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
}

impl W1Runs {
    fn new(n: usize) -> W1Runs {
        let plan = serde_json::json!({
            "name": format!("bench-w1-{n}"),
            "targets": { "nodes": nodes(n) },
            "steps": [{ "name": "echo", "action": "echo", "with": { "message": "hi" } }],
        });
        W1Runs { n, plan, times: Vec::new(), p50s: Vec::new(), p99s: Vec::new() }
    }

    /// One job: its time, what it cost (from its submission until it was seen finished:
    /// not the reading of its view and progress after it), and its nodes' latencies from
    /// its progress events.
    async fn run(
        &mut self,
        jobs: &Jobs,
        js: &async_nats::jetstream::Context,
        cost: &Cost<'_>,
    ) -> anyhow::Result<Spent> {
        let start = cost.now().await?;
        let (id, created_at_ms, stored_ms) = jobs.run_timed(self.plan.clone(), Duration::from_secs(300)).await?;
        let spent = cost.now().await?.minus(start);
        let v = jobs.client.job(&id).await?;
        anyhow::ensure!(v.report.status == JobStatus::Succeeded, "w1 job ended {}{}", v.report.status, why(&v));
        self.times.push(stored_ms.saturating_sub(created_at_ms) as f64);
        let names = drover_core::wire::Names::default();
        let events = drover_bus::read_all(js, &names.events_stream(), &names.job_progress(&v.report.job_id)).await?;
        let mut started: BTreeMap<String, u64> = BTreeMap::new();
        let mut lat = Vec::new();
        let lines = events.iter().flat_map(|(_, bytes)| drover_core::wire::split_lines(bytes));
        for line in lines {
            let Ok(p) = serde_json::from_slice::<Progress>(line) else { continue };
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
            self.p50s.push(lat[lat.len() / 2]);
            self.p99s.push(lat[((lat.len() * 99) / 100).min(lat.len() - 1)]);
        }
        Ok(spent)
    }

    /// The figure over the runs so far, against `floor_ms`.
    fn figure(mut self, floor_ms: Option<f64>) -> Figure {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let lat = med(&mut self.p50s).zip(med(&mut self.p99s));
        figure("w1", self.n, &self.times, floor_ms, lat, "one echo step on every node at once")
    }
}

async fn w2(jobs: &Jobs, out: &Path, runs: usize) -> anyhow::Result<Figure> {
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
        let (v, ms) = jobs.run(plan.clone(), Duration::from_secs(300)).await?;
        anyhow::ensure!(v.report.status == JobStatus::Succeeded, "w2 job ended {}{}", v.report.status, why(&v));
        times.push(ms);
    }
    Ok(figure("w2", 100, &times, Some(1000.0), None, "3 steps, lockstep batches of 10; floor = 10 x 100 ms sleeps"))
}

async fn w3(jobs: &Jobs, out: &Path, runs: usize) -> anyhow::Result<Figure> {
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
        let (v, ms) = jobs.run(plan, Duration::from_secs(300)).await?;
        check_w3(&v, &base)?;
        times.push(ms);
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
        "{:<6} {:>6} {:>4} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9}  note",
        "WORK",
        "NODES",
        "RUNS",
        "MEDIAN",
        "MIN",
        "MAX",
        "FLOOR",
        "RATIO",
        "NODE p50",
        "NODE p99",
        "CTRL CPU",
        "ENGINE",
        "CTRL RSS",
        "AGENTS CPU",
        "NATS CPU",
        "MSGS/STEP"
    );
    for f in &r.figures {
        let c = f.cost.as_ref();
        println!(
            "{:<6} {:>6} {:>4} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>10} {:>9} {:>9}  {}",
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
            opt(c.map(|c| c.controller_cpu_s), "s"),
            c.map(|c| format!("{:.1}%", c.engine_share * 100.0)).unwrap_or_else(|| "-".into()),
            opt(c.map(|c| c.controller_peak_rss_mb), "MB"),
            opt(c.map(|c| c.agents_cpu_s).or(f.floor_cost.map(|c| c.process_cpu_s)), "s"),
            opt(c.map(|c| c.nats_cpu_s).or(f.floor_cost.map(|c| c.nats_cpu_s)), "s"),
            f.messages.map(|m| m.show()).unwrap_or_else(|| "-".into()),
            f.note
        );
    }
    println!("MSGS/STEP: NATS messages per node-step (floor: per request), received/delivered by the server");
    println!(
        "CPU: over the measured runs (w1: each from submit until the job was seen finished); floor: AGENTS CPU is its process (responders and driver)"
    );
    if let Some(i) = &r.idle_cpu {
        println!(
            "idle fleet, CPU seconds per second: controller {:.2}, agents {:.2}, nats-server {:.2}; nats-server received {:.0} messages/s; controller RSS {:.0} MB",
            i.controller, i.agents, i.nats, i.nats_msgs_in, i.controller_rss_mb
        );
    }
    println!(
        "controller process (+ driver), whole bench: {:.1} CPU s, peak RSS {:.0} MB; idle `drover agent` process: {} RSS; agent journals in {}",
        r.process_cpu_s,
        r.process_peak_rss_mb,
        opt(r.agent_idle_rss_mb, " MB"),
        r.agent_journals
    );
}
