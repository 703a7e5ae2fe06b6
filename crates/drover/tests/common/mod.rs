//! A real fleet for integration tests: a nats-server on a random loopback port in a temp
//! dir, a controller on a free port, and agents in-process, each with its own NATS
//! connection. Everything stops when the `Fleet` is dropped or stopped.

#![allow(dead_code)]

use drover_agent::{Agent, AgentConfig, AgentHandle};
use drover_bus::server::ManagedServer;
use drover_controller::{ControllerConfig, ControllerHandle};
use drover_core::api::JobView;
use drover_core::engine::JobStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub server: ManagedServer,
    /// The other servers of a cluster (`Options::cluster`), and every server's URL.
    pub others: Vec<ManagedServer>,
    pub nats_urls: String,
    pub controller: Option<ControllerHandle>,
    /// A controller running as a `drover controller` child process (killable with SIGKILL).
    pub controller_process: Option<std::process::Child>,
    pub agents: BTreeMap<String, AgentHandle>,
    pub url: String,
    pub http: reqwest::Client,
}

/// How to build a test fleet.
pub struct Options {
    pub agents: usize,
    pub labels: Box<dyn Fn(usize) -> BTreeMap<String, String>>,
    pub controller: ControllerConfig,
    pub allow_shell: bool,
    /// Run the controller as a child process instead of in this process.
    pub controller_as_process: bool,
    /// Servers in the NATS cluster (0 or 1: a single server); streams and buckets get
    /// this many replicas (at most 3).
    pub cluster: usize,
    /// The address a single server listens on (default loopback).
    pub nats_host: Option<String>,
    /// More arguments for a controller process (`--id`, `--lease-ttl`).
    pub controller_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        let mut controller = ControllerConfig {
            api_addr: "127.0.0.1:0".parse().unwrap(),
            heartbeat_timeout: Duration::from_secs(2),
            ack_deadline: Duration::from_secs(3),
            ..ControllerConfig::default()
        };
        controller.engine.deadline_grace_ms = 1_000;
        controller.engine.cancel_grace_ms = 3_000;
        Options {
            agents: 3,
            labels: Box::new(drover_core::resolve::demo_labels),
            controller,
            allow_shell: true,
            controller_as_process: false,
            cluster: 0,
            nats_host: None,
            controller_args: Vec::new(),
        }
    }
}

impl Fleet {
    pub async fn start(opts: Options) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut servers = if opts.cluster > 1 {
            ManagedServer::start_cluster(&dir.path().join("nats"), opts.cluster).expect("nats cluster starts")
        } else {
            let host = opts.nats_host.as_deref().unwrap_or("127.0.0.1");
            vec![ManagedServer::start_on(&dir.path().join("nats"), host).expect("nats-server starts")]
        };
        let nats_urls = drover_bus::server::cluster_urls(&servers);
        let replicas = opts.cluster.clamp(1, 3);
        if opts.cluster > 1 {
            wait_for_jetstream(&nats_urls, replicas).await;
        }
        let server = servers.remove(0);
        let mut opts = opts;
        opts.controller.topology.replicas = replicas;
        let mut fleet = Fleet {
            dir,
            server,
            others: servers,
            nats_urls,
            controller: None,
            controller_process: None,
            agents: BTreeMap::new(),
            url: String::new(),
            http: drover_cli::client::http_builder().build().expect("HTTP client"),
        };
        if opts.controller_as_process {
            let args: Vec<&str> = opts.controller_args.iter().map(String::as_str).collect();
            let (child, url) = fleet.controller_process(&args).await;
            fleet.controller_process = Some(child);
            fleet.url = url;
        } else {
            let client = drover_bus::connect(&fleet.nats_urls, "test-controller").await.expect("connect");
            let controller = drover_controller::start(opts.controller, client).await.expect("controller starts");
            fleet.url = controller.url();
            fleet.controller = Some(controller);
        }
        for i in 1..=opts.agents {
            let id = format!("n{i}");
            fleet.start_agent(&id, (opts.labels)(i), opts.allow_shell).await;
        }
        fleet.wait_nodes(opts.agents).await;
        fleet
    }

    /// Start `drover controller` as a child process on a free port and wait until it
    /// leads (a killed predecessor's lease expires first: 1 s here); it becomes the
    /// fleet's controller.
    pub async fn spawn_controller(&mut self) {
        let (child, url) = self.controller_process(&[]).await;
        self.controller_process = Some(child);
        self.url = url;
        self.wait_leader(&self.url.clone()).await;
    }

    /// Wait until the controller at `url` leads.
    pub async fn wait_leader(&self, url: &str) {
        self.wait_role(url, "leader", Duration::from_secs(15)).await;
    }

    /// `GET /v1/health` of the controller at `url` (`None` while it does not answer).
    pub async fn health(&self, url: &str) -> Option<drover_core::api::Health> {
        let r = self.http.get(format!("{url}/v1/health")).send().await.ok()?;
        r.json().await.ok()
    }

    /// Wait until the controller at `url` reports `role` (`leader` or `standby`).
    pub async fn wait_role(&self, url: &str, role: &str, limit: Duration) -> drover_core::api::Health {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(h) = self.health(url).await
                && h.role.as_deref() == Some(role)
            {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} not {role} within {limit:?}:\n{}",
                self.controller_logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Start one more `drover controller` process (with `args`; a lease TTL of 1 s unless
    /// they set one) on a free port and wait until it is ready; returns it and its URL.
    // The caller owns the child and kills and waits for it.
    #[allow(clippy::zombie_processes)]
    pub async fn controller_process(&self, args: &[&str]) -> (std::process::Child, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let log = std::fs::File::create(self.dir.path().join(format!("controller-{port}.log"))).expect("log file");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["controller", "--nats-url", &self.nats_urls, "--heartbeat-timeout", "2s"])
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .args(if args.contains(&"--lease-ttl") { &[][..] } else { &["--lease-ttl", "1s"][..] })
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("drover controller starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(r) = self.http.get(format!("{url}/v1/ready")).send().await
                && r.status().is_success()
            {
                return (child, url);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("controller process not ready in 15s:\n{}", self.controller_logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Start `drover agent` as a child process with its data dir under the fleet's dir.
    pub fn spawn_agent_process(&self, id: &str) -> std::process::Child {
        self.spawn_agent_process_in(id, None)
    }

    /// The same, inside a network namespace (`ip netns exec NS drover agent ...`).
    pub fn spawn_agent_process_in(&self, id: &str, netns: Option<&str>) -> std::process::Child {
        let data = self.dir.path().join("agents").join(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("agent-{id}.log")))
            .expect("log file");
        let drover = env!("CARGO_BIN_EXE_drover");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, drover]);
                c
            }
            None => std::process::Command::new(drover),
        };
        cmd.args(["agent", "--nats-url", &self.nats_urls, "--node-id", id, "--heartbeat", "200ms", "--allow", "shell"])
            .arg("--data-dir")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("drover agent starts")
    }

    /// SIGKILL the controller process: no shutdown, nothing flushed.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller_process.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log of every controller process started so far.
    pub fn controller_logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("controller-") {
                    out += &format!("--- {name}\n{}", std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn agent_config(&self, id: &str, labels: BTreeMap<String, String>, allow_shell: bool) -> AgentConfig {
        let mut cfg = AgentConfig::new(id, self.dir.path().join("agents").join(id));
        cfg.labels = labels;
        cfg.heartbeat = Duration::from_millis(200);
        if allow_shell {
            cfg.policy.allow.push("shell".into());
        }
        cfg
    }

    pub async fn start_agent(&mut self, id: &str, labels: BTreeMap<String, String>, allow_shell: bool) {
        let cfg = self.agent_config(id, labels, allow_shell);
        self.start_agent_with(cfg).await;
    }

    pub async fn start_agent_with(&mut self, cfg: AgentConfig) {
        let id = cfg.node_id.clone();
        let client = drover_bus::connect(&self.nats_urls, &format!("test-agent-{id}")).await.expect("connect");
        let h = Agent::start(cfg, client).await.expect("agent starts");
        self.agents.insert(id, h);
    }

    /// Wait until the controller sees `n` online nodes.
    pub async fn wait_nodes(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let v: serde_json::Value = self.get("/v1/nodes").await;
            let online = v["nodes"].as_array().map(|a| a.iter().filter(|n| n["online"] == true).count()).unwrap_or(0);
            if online >= n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {online} of {n} nodes online: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> serde_json::Value {
        let r = self.http.get(format!("{}{path}", self.url)).send().await.expect("GET");
        r.json().await.expect("JSON body")
    }

    pub async fn post(&self, path: &str, body: &str, content_type: &str) -> (u16, serde_json::Value) {
        self.post_to(&self.url, path, body, content_type).await
    }

    /// POST to the controller at `url` (another one than the fleet's).
    pub async fn post_to(&self, url: &str, path: &str, body: &str, content_type: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{url}{path}"))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("POST");
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Submit a YAML plan; panics unless it is accepted.
    pub async fn submit(&self, plan: &str) -> String {
        let (code, v) = self.post("/v1/jobs", plan, "application/yaml").await;
        assert_eq!(code, 201, "submit failed: {v}");
        v["job_id"].as_str().expect("job_id").to_string()
    }

    pub async fn job(&self, id: &str) -> JobView {
        let r = self.http.get(format!("{}/v1/jobs/{id}", self.url)).send().await.expect("GET job");
        r.json().await.expect("job JSON")
    }

    /// Wait until the job's status is one of `want` (or final), within `limit`.
    pub async fn wait_status(&self, id: &str, want: &[JobStatus], limit: Duration) -> JobView {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.job(id).await;
            if want.contains(&v.report.status) || v.report.status.is_final() {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still {} after {limit:?}: {:?}",
                v.report.status,
                v.report.counts
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_final(&self, id: &str, limit: Duration) -> JobView {
        self.wait_status(id, &[], limit).await
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The lines a node's steps appended to its file in the fleet's `out` dir.
    pub fn side_effects(&self, node: &str) -> String {
        std::fs::read_to_string(self.path("out").join(format!("{node}.log"))).unwrap_or_default()
    }

    /// A plan on every node whose first and last steps append a line to the node's file
    /// in the fleet's `out` dir, with a sleep of `wait` between them (the window for a
    /// fault), after a step that fails once and is retried after `flaky_backoff`, if given.
    pub fn append_plan(&self, name: &str, rollout: &str, wait: &str, flaky_backoff: Option<&str>) -> String {
        let out = self.path("out");
        std::fs::create_dir_all(&out).expect("out dir");
        let flaky = flaky_backoff.map_or(String::new(), |b| {
            format!(
                "  - {{name: flaky, action: test.flaky, with: {{fail_times: 1}}, retries: 1, retry_backoff: {b}}}\n"
            )
        });
        format!(
            r#"name: {name}
targets: {{all: true}}
rollout: {rollout}
steps:
  - {{name: first, action: shell, with: {{command: "echo first >> {dir}/{{{{node.id}}}}.log"}}}}
{flaky}  - {{name: wait, action: sleep, with: {{duration: {wait}}}}}
  - {{name: last, action: shell, with: {{command: "echo last >> {dir}/{{{{node.id}}}}.log"}}}}
"#,
            dir = out.display()
        )
    }

    pub async fn stop(mut self) {
        for (_, a) in std::mem::take(&mut self.agents) {
            a.kill();
        }
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
        self.kill_controller();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A failed test must not leave a controller process behind.
        self.kill_controller();
    }
}

/// A network namespace joined to this one by a veth pair (`host_ip` here, `ns_ip` in
/// the namespace), removed when dropped: an agent inside it can be cut off from NATS by
/// taking the link down.
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Netns {
    /// Create it, or say why this machine cannot (not root, no netns support).
    pub fn create() -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let octet = id % 250 + 1;
        let ns = Netns {
            name: format!("drv{id}"),
            host_if: format!("dvh{id}"),
            host_ip: format!("10.231.{octet}.1"),
            ns_ip: format!("10.231.{octet}.2"),
        };
        let ns_if = format!("dva{id}");
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &ns.name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&["netns", "exec", &ns.name, "ip", "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"])?;
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Take the link down (a partition) or bring it back.
    pub fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).expect("set the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Wait until a fresh JetStream cluster accepts streams with `replicas` replicas.
async fn wait_for_jetstream(urls: &str, replicas: usize) {
    let client = drover_bus::connect(urls, "test-probe").await.expect("connect to the cluster");
    let names = drover_core::wire::Names::new("probe");
    let cfg = drover_bus::TopologyConfig { replicas, ..Default::default() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match drover_bus::ensure_topology(client.clone(), &names, &cfg).await {
            Ok(_) => return,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "JetStream cluster not ready in 30s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Is a process gone (or a zombie)?
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
