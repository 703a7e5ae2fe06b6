//! `drover agent`: run the agent of this node against a NATS server (cluster).
//!
//! Settings come from `--config FILE` (YAML, see `docs/agent.md`), then flags, which
//! override the file. SIGTERM or Ctrl-C drains (running steps finish and report); a
//! second signal stops at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_agent::config::{AgentFile, PolicyFile, default_data_dir, default_node_id, parse_labels};
use drover_agent::{Agent, AgentConfig, AgentError};

use crate::exit::Exit;

const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

#[derive(Debug, clap::Args)]
#[command(after_help = "Flags override the config file. Labels from --labels are merged into the file's \
(a flag wins for the same key); --allow, --deny and --allow-path add to the file's policy.\n\n\
The default policy allows every action except `shell`, which must be named: --allow shell.\n\n\
Exit codes: 0 stopped cleanly (drained), 2 invalid flags or config, 3 could not start or \
stopped without draining.")]
pub struct AgentArgs {
    /// NATS server URL(s), comma-separated [default: the config file's, else nats://127.0.0.1:4222].
    #[arg(long, env = "DROVER_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// Node id: letters, digits, '-', '_' [default: the short host name].
    #[arg(long, env = "DROVER_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Labels to select this node by, e.g. role=web,zone=a (repeatable).
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels)]
    pub labels: Vec<BTreeMap<String, String>>,
    /// Groups of this node, e.g. web,eu (repeatable; replaces the config file's).
    #[arg(long, value_name = "G,...", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Where the agent keeps its journal [default: /var/lib/drover/agent as root, else
    /// ./.drover/agent-<ID>].
    #[arg(long, env = "DROVER_AGENT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// YAML config file (node_id, labels, groups, data_dir, policy, ...).
    #[arg(long, env = "DROVER_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Subject prefix shared with the controllers [default: drover].
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Also allow actions matching this pattern (repeatable; `shell` must be named).
    #[arg(long, value_name = "PATTERN")]
    pub allow: Vec<String>,
    /// Deny actions matching this pattern (repeatable; wins over --allow).
    #[arg(long, value_name = "PATTERN")]
    pub deny: Vec<String>,
    /// Restrict file.* actions to paths inside DIR (repeatable; default: anywhere).
    #[arg(long, value_name = "DIR")]
    pub allow_path: Vec<PathBuf>,
    /// Heartbeat interval [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    pub heartbeat: Option<drover_core::Dur>,
    /// Cap on the whole fleet's heartbeats per second: in a larger fleet every agent
    /// beats less often than --heartbeat (0: no cap) [default: 500].
    #[arg(long, value_name = "N")]
    pub fleet_beats_per_s: Option<u32>,
    /// Longest drain on SIGTERM before running steps are cancelled [default: 5m30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    pub drain_timeout: Option<drover_core::Dur>,
    /// Bytes of stdout and of stderr kept per step [default: 262144].
    #[arg(long, value_name = "BYTES")]
    pub output_cap: Option<usize>,
    /// Replicas of the streams and buckets, if the agent is the first to create them [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
}

fn parse_dur(s: &str) -> Result<drover_core::Dur, String> {
    drover_core::Dur::parse(s)
}

impl AgentArgs {
    /// The config file (if any) with the flags applied on top.
    pub fn config(&self) -> Result<AgentConfig, String> {
        let mut file = match &self.config {
            Some(p) => AgentFile::load(p).map_err(|e| e.to_string())?,
            None => AgentFile::default(),
        };
        if let Some(url) = &self.nats_url {
            file.nats_url = Some(url.clone());
        }
        let node_id = match (&self.node_id, &file.node_id) {
            (Some(id), _) => {
                drover_core::wire::check_id("node", id).map_err(|e| format!("--node-id: {e}"))?;
                id.clone()
            }
            (None, Some(id)) => id.clone(),
            (None, None) => {
                let id = default_node_id();
                drover_core::wire::check_id("node", &id)
                    .map_err(|e| format!("the host name does not make a valid node id ({e}); pass --node-id"))?;
                id
            }
        };
        file.node_id = Some(node_id.clone());
        if !self.labels.is_empty() {
            let labels = file.labels.get_or_insert_with(BTreeMap::new);
            for l in &self.labels {
                labels.extend(l.clone());
            }
        }
        if !self.groups.is_empty() {
            file.groups = Some(self.groups.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect());
        }
        if let Some(d) = &self.data_dir {
            file.data_dir = Some(d.clone());
        }
        if file.data_dir.is_none() {
            file.data_dir = Some(default_data_dir(&node_id));
        }
        if let Some(p) = &self.prefix {
            file.prefix = Some(p.clone());
        }
        if let Some(h) = self.heartbeat {
            file.heartbeat = Some(h);
        }
        if let Some(r) = self.fleet_beats_per_s {
            file.fleet_beats_per_s = Some(r);
        }
        if let Some(d) = self.drain_timeout {
            file.drain_timeout = Some(d);
        }
        if let Some(c) = self.output_cap {
            file.output_cap = Some(c);
        }
        if let Some(r) = self.replicas {
            file.replicas = Some(r);
        }
        if !self.allow.is_empty() || !self.deny.is_empty() || !self.allow_path.is_empty() {
            let policy = file.policy.get_or_insert_with(PolicyFile::default);
            if !self.allow.is_empty() {
                let allow = policy.allow.get_or_insert_with(|| drover_actions::Policy::default().allow);
                allow.extend(self.allow.iter().cloned());
            }
            if !self.deny.is_empty() {
                policy.deny.get_or_insert_with(Vec::new).extend(self.deny.iter().cloned());
            }
            if !self.allow_path.is_empty() {
                let mut paths = Vec::new();
                for p in &self.allow_path {
                    let abs = std::path::absolute(p).map_err(|e| format!("--allow-path {}: {e}", p.display()))?;
                    paths.push(abs);
                }
                policy.paths.get_or_insert_with(Vec::new).extend(paths);
            }
        }
        file.into_config().map_err(|e| e.to_string())
    }
}

pub fn run(args: AgentArgs) -> Exit {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let url = cfg.nats_url.clone().unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
    super::block_on_runtime(async move {
        let node_id = cfg.node_id.clone();
        let data_dir = cfg.data_dir.clone();
        let client = match drover_bus::connect(&url, &format!("drover-agent-{node_id}")).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Error;
            }
        };
        let handle = match Agent::start(cfg, client).await {
            Ok(h) => h,
            Err(AgentError::Config(e)) => {
                eprintln!("error: {e}");
                return Exit::Invalid;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Error;
            }
        };
        eprintln!("drover agent {node_id}: connected to {url}; journal in {}", data_dir.display());
        crate::signals::wait_for_stop().await;
        eprintln!("drover agent {node_id}: draining (signal again to stop at once)...");
        tokio::select! {
            _ = handle.shutdown() => {
                eprintln!("drover agent {node_id}: stopped");
                Exit::Success
            }
            _ = async {
                // Let the first signal's repeat (if any) pass, then wait for a new one.
                tokio::time::sleep(Duration::from_millis(200)).await;
                crate::signals::wait_for_stop().await;
            } => {
                eprintln!("drover agent {node_id}: stopped without draining");
                Exit::Error
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(argv: &[&str]) -> Result<AgentArgs, clap::Error> {
        let mut v = vec!["drover-agent"];
        v.extend_from_slice(argv);
        Cli::try_parse_from(v).map(|c| c.args)
    }

    #[test]
    fn flags_make_a_config() {
        let a = parse(&[
            "--node-id",
            "web-1",
            "--labels",
            "role=web,zone=a",
            "--labels",
            "env=prod",
            "--groups",
            "web,eu",
            "--data-dir",
            "/tmp/d",
            "--allow",
            "shell",
            "--allow-path",
            "/etc/app",
            "--prefix",
            "acme",
            "--heartbeat",
            "2s",
            "--fleet-beats-per-s",
            "50",
        ])
        .unwrap();
        let c = a.config().unwrap();
        assert_eq!(c.node_id, "web-1");
        assert_eq!(c.labels.len(), 3);
        assert_eq!(c.groups, vec!["web".to_string(), "eu".to_string()]);
        assert_eq!(c.policy.allow, vec!["*".to_string(), "shell".to_string()]);
        assert!(c.policy.check_action("shell").is_ok());
        assert_eq!(c.names.command("web-1"), "acme.cmd.web-1");
        assert_eq!(c.heartbeat, Duration::from_secs(2));
        assert_eq!(c.fleet_beats_per_s, 50);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = parse(&["--labels", "role=web,zone"]).unwrap_err().to_string();
        assert!(e.contains("--labels") && e.contains("\"zone\" is not key=value"), "{e}");
        let e = parse(&["--node-id", "a.b"]).unwrap().config().unwrap_err();
        assert!(e.contains("--node-id") && e.contains("contains '.'"), "{e}");
    }

    #[test]
    fn flags_override_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("agent.yaml");
        std::fs::write(&f, "node_id: from-file\nlabels: {role: db, zone: b}\npolicy: {allow: ['test.*']}\n").unwrap();
        let c = parse(&["--config", f.to_str().unwrap(), "--labels", "role=web", "--allow", "file.*"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(c.node_id, "from-file");
        assert_eq!(c.labels["role"], "web");
        assert_eq!(c.labels["zone"], "b");
        assert_eq!(c.policy.allow, vec!["test.*".to_string(), "file.*".to_string()]);
        assert!(c.data_dir.ends_with("agent-from-file") || c.data_dir.starts_with("/var/lib/drover"));
        std::fs::write(&f, "node_id: x\nlabelz: {}\n").unwrap();
        let e = parse(&["--config", f.to_str().unwrap()]).unwrap().config().unwrap_err();
        assert!(e.contains("labelz") && e.contains("agent.yaml"), "{e}");
    }
}
