//! Controller settings.

use drover_bus::TopologyConfig;
use drover_core::engine::EngineConfig;
use drover_core::wire::Names;
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a controller is started with.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub names: Names,
    /// This controller's name in the lease and in `/v1/health` (unique among the
    /// controllers of a prefix).
    pub id: String,
    /// How long a leader may go unheard before another controller takes over.
    pub lease_ttl: Duration,
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// Jobs running at once; more wait in the queue.
    pub max_running: usize,
    /// Jobs waiting at once; beyond it, submissions get 429.
    pub max_pending: usize,
    /// A node whose last heartbeat is older than this is offline, and lost if a job uses it.
    pub heartbeat_timeout: Duration,
    /// How long one command request waits for the agent's ack.
    pub ack_timeout: Duration,
    /// How long a command is re-sent without an ack before the node is declared lost.
    pub ack_deadline: Duration,
    pub engine: EngineConfig,
    pub topology: TopologyConfig,
    /// Finished jobs kept in memory (and in `GET /v1/jobs` listings); older ones are
    /// rebuilt from their journal when asked for by id.
    pub retain_finished: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            names: Names::default(),
            id: default_id(),
            lease_ttl: Duration::from_secs(10),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_running: 16,
            max_pending: 256,
            heartbeat_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(2),
            ack_deadline: Duration::from_secs(15),
            engine: EngineConfig::default(),
            topology: TopologyConfig::default(),
            retain_finished: 1000,
        }
    }
}

/// `<host name>-<process id>`: unique per process, so two controllers never share an id
/// by default.
pub fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "controller".into());
    format!("{host}-{}", std::process::id())
}
