//! `drover dev`: a whole local fleet in one command — a managed nats-server, a
//! controller and N in-process agents.

use crate::exit::Exit;
use drover_bus::server::ManagedServer;
use drover_controller::ControllerConfig;
use futures::StreamExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of in-process agents (nodes local-1..local-N).
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// Address the REST API listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api_addr: SocketAddr,
    /// Where the NATS store, agent journals and logs go.
    #[arg(long, default_value = ".drover")]
    pub data_dir: PathBuf,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Let the agents run `shell` steps (off by default, as on real agents).
    #[arg(long)]
    pub allow_shell: bool,
    /// Where the agents keep their journals (default: `<data-dir>/agents`). `drover
    /// bench` sets it.
    #[arg(skip)]
    pub agents_dir: Option<PathBuf>,
}

/// Agents [`start_agents`] starts concurrently.
const AGENTS_STARTING_AT_ONCE: usize = 16;

/// Start in-process agents `local-<i>` for `i` in `ids` (labels from `demo_labels`), each
/// with its own NATS connection and journal under `agents_dir`; `file.*` may touch the
/// temp dir and `files_dir` only. Returns once every agent is registered.
pub async fn start_agents(
    nats_url: &str,
    ids: std::ops::RangeInclusive<usize>,
    agents_dir: &std::path::Path,
    files_dir: &std::path::Path,
    allow_shell: bool,
) -> anyhow::Result<Vec<drover_agent::AgentHandle>> {
    use anyhow::Context;
    let starts = ids.map(|i| {
        let id = format!("local-{i}");
        let mut cfg = drover_agent::AgentConfig::new(&id, agents_dir.join(&id));
        cfg.labels = drover_core::resolve::demo_labels(i);
        let mut policy = drover_actions::Policy::default();
        if allow_shell {
            policy.allow.push("shell".into());
        }
        policy.paths = vec![std::env::temp_dir(), files_dir.to_path_buf()];
        cfg.policy = policy;
        async move {
            let client = drover_bus::connect(nats_url, &format!("drover-agent-{id}")).await?;
            drover_agent::Agent::start(cfg, client).await.with_context(|| format!("starting agent {id}"))
        }
    });
    let mut agents = Vec::new();
    let mut started = futures::stream::iter(starts).buffered(AGENTS_STARTING_AT_ONCE);
    while let Some(a) = started.next().await {
        agents.push(a?);
    }
    Ok(agents)
}

/// A running local fleet.
pub struct DevFleet {
    pub server: Option<ManagedServer>,
    pub nats_url: String,
    pub controller: drover_controller::ControllerHandle,
    pub agents: Vec<drover_agent::AgentHandle>,
}

impl DevFleet {
    /// Start everything; agents are ready when this returns.
    pub async fn start(args: &DevArgs) -> anyhow::Result<DevFleet> {
        use anyhow::Context;
        if args.agents == 0 {
            anyhow::bail!("a fleet needs at least one agent");
        }
        std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
        let data_dir =
            std::fs::canonicalize(&args.data_dir).with_context(|| format!("resolving {}", args.data_dir.display()))?;
        let (server, nats_url) = match &args.nats_url {
            Some(url) => (None, url.clone()),
            None => {
                let s = ManagedServer::start(&data_dir.join("nats"))?;
                let url = s.url().to_string();
                (Some(s), url)
            }
        };
        let client = drover_bus::connect(&nats_url, "drover-dev-controller").await?;
        let cfg = ControllerConfig { api_addr: args.api_addr, ..ControllerConfig::default() };
        let controller = drover_controller::start(cfg, client).await?;
        let agents_dir = args.agents_dir.clone().unwrap_or_else(|| data_dir.join("agents"));
        let agents = start_agents(&nats_url, 1..=args.agents, &agents_dir, &data_dir, args.allow_shell).await?;
        // Ready means targetable: the controller has seen every agent's registration and
        // heartbeat, so a plan submitted right after this sees the whole fleet.
        let ids: Vec<String> = (1..=args.agents).map(|i| format!("local-{i}")).collect();
        let seen_all = async {
            while !ids.iter().all(|id| controller.sees_online(id)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), seen_all).await.is_err() {
            let missing: Vec<&str> = ids.iter().filter(|id| !controller.sees_online(id)).map(String::as_str).collect();
            anyhow::bail!("the controller did not see these agents online within 15s: {}", missing.join(", "));
        }
        Ok(DevFleet { server, nats_url, controller, agents })
    }

    /// Drain the agents, stop the controller and the server.
    pub async fn stop(mut self) {
        let drains: Vec<_> = self.agents.drain(..).map(|a| a.shutdown()).collect();
        let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(drains)).await;
        self.controller.shutdown().await;
        if let Some(mut s) = self.server.take() {
            s.stop();
        }
    }
}

pub fn run(args: DevArgs) -> Exit {
    if args.agents == 0 || args.agents > 1000 {
        eprintln!("error: --agents must be between 1 and 1000, got {}", args.agents);
        return Exit::Invalid;
    }
    super::block_on_runtime(async move {
        let fleet = match DevFleet::start(&args).await {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Exit::Error;
            }
        };
        let url = fleet.controller.url();
        let api_hint =
            if url == "http://127.0.0.1:7070" { String::new() } else { format!("export DROVER_API={url}\n  ") };
        println!(
            "drover dev: a local fleet is running\n\n  API        {url}\n  NATS       {}\n  nodes      local-1..local-{} (labels role=web|db, zone=a|b)\n  data       {}\n\nTry, in another shell:\n  {api_hint}drover nodes list\n  drover run examples/rolling-rollback.yaml --watch\n\nCtrl-C stops everything.",
            fleet.nats_url,
            args.agents,
            args.data_dir.display()
        );
        crate::signals::wait_for_stop().await;
        eprintln!("stopping the local fleet...");
        fleet.stop().await;
        Exit::Success
    })
}
