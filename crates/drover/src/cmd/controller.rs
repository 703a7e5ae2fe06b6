//! `drover controller`: run a controller against an existing NATS (cluster).

use crate::exit::Exit;
use drover_controller::ControllerConfig;
use drover_core::wire::Names;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "DROVER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Address the REST API listens on.
    #[arg(long, env = "DROVER_API_ADDR", default_value = "127.0.0.1:7070")]
    pub api_addr: SocketAddr,
    /// Subject prefix shared with the agents.
    #[arg(long, default_value = drover_core::wire::DEFAULT_PREFIX)]
    pub prefix: String,
    /// This controller's name in the lease and in /v1/health: unique among the
    /// controllers sharing a prefix (default: `<host>-<pid>`). A controller restarted
    /// under the same id waits for its old lease to expire like any standby.
    #[arg(long, env = "DROVER_CONTROLLER_ID")]
    pub id: Option<String>,
    /// How long the leading controller may go unheard before a standby takes over (it
    /// renews every third of it).
    #[arg(long, default_value = "10s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,
    /// Jobs running at once (at least 1); more wait in the queue.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub max_running: usize,
    /// Jobs waiting at once; beyond it, submissions get 429.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// A node without a heartbeat for this long is offline (lost if a job uses it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// Replicas of streams and buckets (3 in a NATS cluster).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub replicas: usize,
    /// Finished jobs kept in memory and in listings (at least 1); older ones are still
    /// served by id, rebuilt from their journal.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub retain_finished: usize,
}

/// A count of 1 or more.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A lease TTL: long enough for a renewal round trip, short enough to take over.
fn parse_lease_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(500) {
        return Err("must be at least 500ms (the leader renews every third of it)".into());
    }
    Ok(d)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    drover_core::Dur::parse(s).map(|d| d.as_std())
}

impl ControllerArgs {
    pub fn config(&self) -> ControllerConfig {
        let mut cfg = ControllerConfig {
            names: Names::new(&self.prefix),
            api_addr: self.api_addr,
            max_running: self.max_running,
            max_pending: self.max_pending,
            heartbeat_timeout: self.heartbeat_timeout,
            retain_finished: self.retain_finished,
            lease_ttl: self.lease_ttl,
            ..ControllerConfig::default()
        };
        if let Some(id) = &self.id {
            cfg.id = id.clone();
        }
        cfg.topology.replicas = self.replicas;
        cfg
    }
}

pub fn run(args: ControllerArgs) -> Exit {
    super::block_on_runtime(async move {
        let client = match drover_bus::connect(&args.nats_url, "drover-controller").await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Error;
            }
        };
        let handle = match drover_controller::start(args.config(), client).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Error;
            }
        };
        eprintln!("drover controller: API on {} (NATS {})", handle.url(), args.nats_url);
        crate::signals::wait_for_stop().await;
        eprintln!("stopping...");
        handle.shutdown().await;
        Exit::Success
    })
}
