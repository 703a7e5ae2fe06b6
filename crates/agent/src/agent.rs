//! The agent runtime: registration, heartbeats, the command subscription, execution,
//! result publication, drain and kill.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drover_actions::{ActionError, ExecContext, ExecResult, ExecStatus, Registry, run_action, run_rollback};
use drover_bus::{BusError, Topology, ensure_topology, now_ms, publish_once};
use drover_core::engine::AttemptOutcome;
use drover_core::wire::{
    ActionOffer, AgentStatus, Command, CommandId, CommandKind, Heartbeat, NodeFacts, NodeRecord, Reply, ReplyStatus,
    Request, StepResult,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AgentConfig, ConfigError};
use crate::journal::{Journal, JournalError};

/// The error of a step that was running when its agent stopped abruptly.
pub const INTERRUPTED: &str = "interrupted: the agent restarted while the step ran";
/// Key of the object that replaces rollback metadata too large for a result message; the
/// metadata stays in the agent's journal and a rollback command carrying this object (or
/// no metadata) gets it from there.
pub const METADATA_ON_AGENT: &str = "x-drover-metadata-on-agent";

/// How long `start` keeps pinging its own subject before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Headroom under the server's `max_payload` for headers.
const PAYLOAD_HEADROOM: usize = 16 * 1024;
/// Error text kept in a published result.
const ERROR_CAP: usize = 16 * 1024;

/// Why an agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("agent journal: {0}")]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("registering node {node} in bucket {bucket}: {message}")]
    Register { node: String, bucket: String, message: String },
    #[error("subscribing to {subject}: {message}")]
    Subscribe { subject: String, message: String },
    #[error("the agent's own subject {subject} did not answer a ping within {timeout:?} (last error: {last})")]
    NotReady { subject: String, timeout: Duration, last: String },
    #[error("agent task failed: {0}")]
    Task(String),
}

/// Starts agents.
pub struct Agent;

struct State {
    /// `None` once the agent was killed or stopped: nothing is written any more.
    journal: Option<Journal>,
    /// Running commands by key.
    running: crate::journal::Map<CancellationToken>,
    /// Running commands that were sent again meanwhile: the sender gave up waiting for
    /// the first answer, so their results must be published, not only answered.
    resent: crate::journal::Set,
    draining: bool,
}

struct Shared {
    node_id: String,
    cfg: AgentConfig,
    client: async_nats::Client,
    topo: Topology,
    registry: Arc<Registry>,
    policy: Arc<drover_actions::Policy>,
    state: Mutex<State>,
    /// Request handlers, command runs and result publications.
    tracker: TaskTracker,
    /// Drop every task at once (kill, or the end of a shutdown).
    kill: CancellationToken,
    /// Stop retrying publications (the end of a drain); results stay in the journal.
    give_up: CancellationToken,
    /// How long journal appends take lately (decides where they run).
    journal_speed: JournalSpeed,
    /// The interval it beats at now (ms): `cfg.heartbeat`, or longer in a large fleet.
    beat_ms: std::sync::atomic::AtomicU64,
}

/// A moving average of how long journal work takes, to run it inline while it is fast.
#[derive(Debug, Default)]
struct JournalSpeed {
    /// Exponential moving average, in microseconds (weight 1/8 per sample).
    avg_us: std::sync::atomic::AtomicU64,
}

impl JournalSpeed {
    /// Journal work shorter than this on average runs on the async thread.
    const FAST: Duration = Duration::from_micros(250);

    fn starting_at(first: Duration) -> JournalSpeed {
        let s = JournalSpeed::default();
        s.avg_us.store(u64::try_from(first.as_micros()).unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
        s
    }

    fn is_fast(&self) -> bool {
        self.avg_us.load(std::sync::atomic::Ordering::Relaxed) < Self::FAST.as_micros() as u64
    }

    fn record(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Lost updates between threads only blur the average.
        let avg = self.avg_us.load(Relaxed);
        self.avg_us.store(avg - avg / 8 + sample / 8, Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawn a tracked task that a kill drops.
    ///
    /// The future is boxed first: a request's future is several kilobytes, and the
    /// wrappers (this select, the tracker's, the task cell) each moved it again. Those
    /// copies were a tenth of the agents' CPU in a 1,000-node fan-out (docs/PERFORMANCE.md).
    fn spawn<F: Future<Output = ()> + Send + 'static>(self: &Arc<Self>, fut: F) {
        let kill = self.kill.clone();
        let fut = Box::pin(fut);
        self.tracker.spawn(async move {
            tokio::select! {
                _ = kill.cancelled() => {}
                _ = fut => {}
            }
        });
    }

    /// Run `f` on the state, on this thread: for work in memory only.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.lock())
    }

    /// Run `f` on the state with its journal I/O (appends, `fdatasync`): on this thread
    /// while appends are fast, in tokio's blocking pool while they are slow.
    ///
    /// An append is a few hundred bytes and one `fdatasync`, and the command waits for it
    /// either way. On fast storage (tmpfs, a disk with a power-safe cache) it takes tens
    /// of microseconds, and the hop to the blocking pool (two thread wake-ups) costs
    /// more than the append itself: it was the largest share of the agents' CPU in
    /// `drover bench` (docs/PERFORMANCE.md). On a slow disk an `fdatasync` takes
    /// milliseconds, which must not hold an async worker thread.
    async fn with_journal<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Shared, &mut State) -> T + Send + 'static,
    ) -> T {
        if self.journal_speed.is_fast() {
            return self.timed(f);
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.timed(f)).await {
            Ok(t) => t,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn timed<T>(&self, f: impl FnOnce(&Shared, &mut State) -> T) -> T {
        let started = Instant::now();
        let t = f(self, &mut self.lock());
        self.journal_speed.record(started.elapsed());
        t
    }

    /// The largest message to send, with headroom for headers (see
    /// [`drover_bus::payload_limit`]).
    fn max_payload(&self) -> usize {
        drover_bus::payload_limit(&self.client, PAYLOAD_HEADROOM).max(4096)
    }

    /// Publish a heartbeat; also store it in the bucket when `store` (every few beats and
    /// on every change of status).
    async fn heartbeat(&self, status: AgentStatus, store: bool) {
        let running = {
            let st = self.lock();
            let mut r: Vec<String> = st.running.keys().cloned().collect();
            r.sort();
            r
        };
        let interval_ms = self.beat_ms.load(std::sync::atomic::Ordering::Relaxed);
        let hb = Heartbeat { node: self.node_id.clone(), status, at_ms: now_ms(), running, interval_ms };
        let body: bytes::Bytes = match serde_json::to_vec(&hb) {
            Ok(b) => b.into(),
            Err(e) => return tracing::error!(error = %e, "cannot encode heartbeat"),
        };
        if let Err(e) = self.client.publish(self.topo.names.heartbeat(&self.node_id), body.clone()).await {
            tracing::warn!(node = %self.node_id, error = %e, "heartbeat not published");
        }
        if store && let Err(e) = self.topo.heartbeats.put(&self.node_id, body).await {
            tracing::warn!(node = %self.node_id, error = %e, "heartbeat not stored");
        }
    }
}

/// A running agent. Dropping it without [`AgentHandle::shutdown`] kills it.
pub struct AgentHandle {
    shared: Arc<Shared>,
    stop_serving: CancellationToken,
    stop_heartbeat: CancellationToken,
    serve: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    done: bool,
}

impl Agent {
    /// Open the journal, create the topology if missing, register the node, report what
    /// an earlier run left (interrupted steps, unpublished results), subscribe to the
    /// node's command subject, start heartbeating, and return once a request to the
    /// node's subject is answered.
    pub async fn start(cfg: AgentConfig, client: async_nats::Client) -> Result<AgentHandle, AgentError> {
        cfg.validate()?;
        let node_id = cfg.node_id.clone();
        let dir = cfg.data_dir.clone();
        let retention = cfg.retention;
        // Opening compacts the journal (a rewrite, two fsyncs): its time is the first
        // guess of how long appends take.
        let (journal, open_took) = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            Journal::open(&dir, retention).map(|j| (j, started.elapsed()))
        })
        .await
        .map_err(|e| AgentError::Task(e.to_string()))??;
        tracing::info!(node = %node_id, journal = %journal.path().display(), commands = journal.len(), "agent journal loaded");
        // First of all (this data dir is ours now, under the journal's lock), the processes
        // of steps that were running when a previous run was killed: a step is reported
        // interrupted (and may be retried) only once nothing of it runs any more.
        let groups = cfg.data_dir.join(PROCESS_GROUPS_DIR);
        let killed = tokio::task::spawn_blocking(move || drover_actions::groups::kill_leftover_groups(&groups))
            .await
            .unwrap_or_default();
        if !killed.is_empty() {
            tracing::warn!(processes = ?killed, "killed processes left running by steps of the previous run");
        }
        let topo = ensure_topology(client.clone(), &cfg.names, &cfg.topology).await?;
        let registry = Arc::new(Registry::builtin());
        let mut record = node_record(&cfg, &registry);
        // The action list (every action's JSON Schema: most of a registration) is stored
        // once per distinct list, under its content hash; the registration names it. A
        // fleet registering at once then sends the controller a few hundred bytes a node.
        let actions = serde_json::to_vec(&record.actions).map_err(|e| AgentError::Task(e.to_string()))?;
        let key = catalog_key(&actions);
        let register_err =
            |e: String| AgentError::Register { node: node_id.clone(), bucket: cfg.names.nodes_bucket(), message: e };
        // `create`: the first agent with this list writes it; for the others it exists.
        if let Err(e) = topo.nodes.create(&key, actions.into()).await
            && e.kind() != async_nats::jetstream::kv::CreateErrorKind::AlreadyExists
        {
            return Err(register_err(format!("storing the action catalog {key}: {e}")));
        }
        record.actions.clear();
        record.catalog = Some(key);
        let body = serde_json::to_vec(&record).map_err(|e| AgentError::Task(e.to_string()))?;
        topo.nodes.put(&node_id, body.into()).await.map_err(|e| register_err(e.to_string()))?;
        let beat_ms = fleet_beat_ms(&topo, &cfg, configured_beat_ms(&cfg)).await;
        let shared = Arc::new(Shared {
            node_id: node_id.clone(),
            policy: Arc::new(cfg.policy.clone()),
            cfg,
            client: client.clone(),
            topo,
            registry,
            state: Mutex::new(State {
                journal: Some(journal),
                running: Default::default(),
                resent: Default::default(),
                draining: false,
            }),
            tracker: TaskTracker::new(),
            kill: CancellationToken::new(),
            give_up: CancellationToken::new(),
            journal_speed: JournalSpeed::starting_at(open_took),
            beat_ms: std::sync::atomic::AtomicU64::new(beat_ms),
        });
        let mut handle = AgentHandle {
            shared: shared.clone(),
            stop_serving: CancellationToken::new(),
            stop_heartbeat: CancellationToken::new(),
            serve: None,
            heartbeat: None,
            done: false,
        };
        // What the previous run left behind (its processes are already gone, see above).
        let pending = shared
            .with_journal(|_, st| {
                let Some(j) = st.journal.as_mut() else { return Vec::new() };
                for id in j.unfinished() {
                    tracing::warn!(key = %id, "step was interrupted by an agent restart; reporting it as failed");
                    let mut r = empty_result(&id, AttemptOutcome::Failed);
                    r.error = Some(INTERRUPTED.to_string());
                    if let Err(e) = j.finish(r) {
                        tracing::error!(key = %id, error = %e, "cannot journal the interrupted step's result");
                    }
                }
                j.unpublished()
            })
            .await;
        for result in pending {
            let s = shared.clone();
            tracing::info!(key = %result.id, outcome = ?result.outcome, "publishing a result left from the previous run");
            shared.spawn(async move { publish_and_mark(&s, &result).await });
        }
        let subject = shared.cfg.names.command(&node_id);
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| AgentError::Subscribe { subject: subject.clone(), message: e.to_string() })?;
        {
            let s = shared.clone();
            let stop = handle.stop_serving.clone();
            let kill = shared.kill.clone();
            handle.serve = Some(tokio::spawn(async move {
                tokio::select! {
                    _ = kill.cancelled() => {}
                    _ = serve(s, sub, stop) => {}
                }
            }));
        }
        // Registered and alive when `start` returns.
        shared.heartbeat(AgentStatus::Online, true).await;
        {
            let s = shared.clone();
            let stop = handle.stop_heartbeat.clone();
            let kill = shared.kill.clone();
            handle.heartbeat = Some(tokio::spawn(async move {
                tokio::select! {
                    _ = kill.cancelled() => {}
                    _ = heartbeat_loop(s, stop) => {}
                }
            }));
        }
        // The subscription is live once a request on our own connection is answered.
        let started = Instant::now();
        loop {
            let r: Result<Reply, BusError> =
                drover_bus::request_json(&client, subject.clone(), &Request::Ping, Duration::from_secs(1)).await;
            match r {
                Ok(reply) if reply.status == ReplyStatus::Pong => break,
                other => {
                    let last = match other {
                        Ok(reply) => format!("unexpected reply {reply:?}"),
                        Err(e) => e.to_string(),
                    };
                    if started.elapsed() > READY_TIMEOUT {
                        handle.kill_now();
                        return Err(AgentError::NotReady { subject, timeout: READY_TIMEOUT, last });
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
        tracing::info!(
            node = %node_id,
            subject = %subject,
            actions = record.actions.len(),
            labels = ?record.labels,
            "agent started"
        );
        Ok(handle)
    }
}

impl AgentHandle {
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// Keys of the commands running now.
    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.lock().running.keys().cloned().collect();
        v.sort();
        v
    }

    /// Drain and stop: heartbeat `draining`, refuse new commands, let running commands
    /// finish (or be killed at their own deadline), publish their results, heartbeat
    /// `stopped`, unsubscribe. Bounded by `drain_timeout`: past it, running commands are
    /// cancelled, and results that still cannot be published stay in the journal (they
    /// are published at the next start).
    pub async fn shutdown(mut self) {
        let s = self.shared.clone();
        let running = {
            let mut st = s.lock();
            st.draining = true;
            st.running.len()
        };
        tracing::info!(node = %s.node_id, running, "agent draining");
        s.heartbeat(AgentStatus::Draining, true).await;
        s.tracker.close();
        if tokio::time::timeout(s.cfg.drain_timeout, s.tracker.wait()).await.is_err() {
            let tokens: Vec<(String, CancellationToken)> =
                s.lock().running.iter().map(|(k, t)| (k.clone(), t.clone())).collect();
            for (key, t) in tokens {
                tracing::warn!(key = %key, "drain timeout reached: cancelling the step");
                t.cancel();
            }
            let grace = drover_actions::KILL_GRACE + drover_actions::WIND_DOWN + Duration::from_secs(2);
            if tokio::time::timeout(grace, s.tracker.wait()).await.is_err() {
                tracing::warn!("results not yet published stay in the journal for the next start");
                s.give_up.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), s.tracker.wait()).await;
            }
        }
        self.stop_serving.cancel();
        if let Some(h) = self.serve.take() {
            let _ = h.await;
        }
        // Refusals answered while we stopped serving.
        if tokio::time::timeout(Duration::from_secs(2), s.tracker.wait()).await.is_err() {
            s.give_up.cancel();
        }
        self.stop_heartbeat.cancel();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.await;
        }
        s.heartbeat(AgentStatus::Stopped, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), s.client.flush()).await;
        if let Some(Err(e)) = s.with_journal(|_, st| st.journal.as_mut().map(|j| j.flush())).await {
            tracing::warn!(error = %e, "cannot write the last delivery marks (those results are published again at the next start)");
        }
        self.kill_now();
        tracing::info!(node = %s.node_id, "agent stopped");
    }

    /// Stop at once, like SIGKILL of the process: tasks are dropped (running steps'
    /// process groups are killed), nothing more is written to the journal or to NATS.
    pub fn kill(mut self) {
        tracing::info!(node = %self.shared.node_id, "agent killed");
        self.kill_now();
    }

    fn kill_now(&mut self) {
        self.done = true;
        self.shared.kill.cancel();
        self.shared.give_up.cancel();
        if let Some(h) = self.serve.take() {
            h.abort();
        }
        if let Some(h) = self.heartbeat.take() {
            h.abort();
        }
        let journal = {
            let mut st = self.shared.lock();
            st.running.clear();
            st.journal.take()
        };
        // Closing the journal releases the data dir's lock.
        drop(journal);
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if !self.done {
            self.kill_now();
        }
    }
}

/// The nodes-bucket key of an action list: its SHA-256, so equal lists share one key.
fn catalog_key(actions_json: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(actions_json);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", drover_core::wire::CATALOG_KEY_PREFIX)
}

fn node_record(cfg: &AgentConfig, registry: &Registry) -> NodeRecord {
    let actions = registry
        .list()
        .into_iter()
        .filter(|a| cfg.policy.check_action(&a.name).is_ok())
        .map(|a| ActionOffer {
            name: a.name,
            description: a.description,
            params_schema: a.params_schema,
            dry_run: a.dry_run,
            undo: a.undo,
        })
        .collect();
    NodeRecord {
        id: cfg.node_id.clone(),
        labels: cfg.labels.clone(),
        groups: cfg.groups.clone(),
        facts: NodeFacts {
            hostname: crate::config::hostname(),
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: now_ms(),
        },
        actions,
        catalog: None,
        heartbeat_ms: u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Beats between two counts of the fleet (one JetStream API request each): an agent
/// follows a fleet that grows (or shrinks) within this many beats, and a fleet of any
/// size counts itself about once per 30 of its beats.
const BEATS_PER_FLEET_COUNT: u64 = 30;

fn configured_beat_ms(cfg: &AgentConfig) -> u64 {
    u64::try_from(cfg.heartbeat.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The interval to beat at in the fleet as it is now (`drover_core::liveness`). The
/// nodes bucket's entries count the fleet: the registrations, plus the few action
/// catalogs. `current` when they cannot be counted.
async fn fleet_beat_ms(topo: &Topology, cfg: &AgentConfig, current: u64) -> u64 {
    let configured = configured_beat_ms(cfg);
    if cfg.fleet_beats_per_s == 0 {
        return configured;
    }
    match drover_bus::kv_entries(&topo.js, &topo.names.nodes_bucket()).await {
        Ok(n) => drover_core::liveness::beat_interval_ms(configured, n, cfg.fleet_beats_per_s),
        Err(e) => {
            tracing::debug!(error = %e, "cannot count the fleet; the heartbeat interval stays");
            current
        }
    }
}

async fn heartbeat_loop(s: Arc<Shared>, stop: CancellationToken) {
    use std::sync::atomic::Ordering::Relaxed;
    let ticker = |ms: u64| {
        let every = Duration::from_millis(ms);
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut interval = s.beat_ms.load(Relaxed);
    let mut tick = ticker(interval);
    let mut last = AgentStatus::Online;
    let mut since_stored = 0u64;
    let mut beats = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = if s.lock().draining { AgentStatus::Draining } else { AgentStatus::Online };
        // One beat in BEATS_PER_STORED_BEAT is stored (the start stored one), and each
        // change: what a starting controller reads (`drover_core::liveness`). Counted in
        // beats, not measured, so that timer jitter cannot make every beat a write.
        since_stored += 1;
        let store = status != last || since_stored >= drover_core::liveness::BEATS_PER_STORED_BEAT;
        s.heartbeat(status, store).await;
        if store {
            since_stored = 0;
        }
        last = status;
        beats += 1;
        if beats.is_multiple_of(BEATS_PER_FLEET_COUNT) {
            let next = fleet_beat_ms(&s.topo, &s.cfg, interval).await;
            if next != interval {
                tracing::info!(from_ms = interval, to_ms = next, "the fleet's size changes the heartbeat interval");
                interval = next;
                s.beat_ms.store(next, Relaxed);
                tick = ticker(next);
                // Said at once (and stored): the controller allows a node the silence of
                // three of the beats its last beat said, so it learns of a longer interval
                // before the first longer wait.
                s.heartbeat(status, true).await;
                since_stored = 0;
            }
        }
    }
}

async fn serve(s: Arc<Shared>, mut sub: async_nats::Subscriber, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let me = s.clone();
        s.spawn(async move { handle_request(me, msg).await });
    }
    let _ = sub.unsubscribe().await;
}

async fn reply(s: &Shared, msg: &async_nats::Message, status: ReplyStatus, reason: Option<String>) {
    send_reply(s, msg, Reply { status, reason, result: None }).await;
}

/// Answer a request; `false` when the answer could not be handed to the connection.
async fn send_reply(s: &Shared, msg: &async_nats::Message, r: Reply) -> bool {
    match serde_json::to_vec(&r) {
        Ok(body) => send_encoded(s, msg, body.into()).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode reply");
            false
        }
    }
}

/// Send an encoded answer; `false` when it could not be handed to the connection.
async fn send_encoded(s: &Shared, msg: &async_nats::Message, body: Bytes) -> bool {
    let Some(to) = msg.reply.clone() else { return false };
    match s.client.publish(to, body).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot send reply");
            false
        }
    }
}

enum Decision {
    Rejected(String, Option<StepResult>),
    Duplicate(Option<StepResult>),
    Accepted(Box<Command>, CancellationToken),
}

async fn handle_request(s: Arc<Shared>, msg: async_nats::Message) {
    let req = match Request::from_json(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "malformed request");
            return reply(&s, &msg, ReplyStatus::Rejected, Some(format!("malformed request: {e}"))).await;
        }
    };
    match req {
        Request::Ping => reply(&s, &msg, ReplyStatus::Pong, None).await,
        Request::Cancel { id, epoch } => {
            let node = s.node_id.clone();
            let key = id.key();
            let fits = s.max_payload() / 2;
            let answer = s
                .with_journal(move |_, st| {
                    let refuse = |why: String| Reply { status: ReplyStatus::Rejected, reason: Some(why), result: None };
                    let Some(j) = st.journal.as_mut() else {
                        return refuse("the agent is stopping".to_string());
                    };
                    if id.node != node {
                        return refuse(format!("cancel for node {} sent to node {node}", id.node));
                    }
                    if let Some(seen) = j.epoch(&id.job)
                        && epoch < seen
                    {
                        return refuse(format!("stale epoch {epoch} < {seen}"));
                    }
                    if j.raise_epoch(&id.job, epoch).is_ok_and(|raised| raised)
                        && let Err(e) = j.sync()
                    {
                        tracing::warn!(error = %e, "cannot fsync the journal");
                    }
                    let key = id.key();
                    // A finished command's recorded result goes back with the answer: the
                    // sender may be a restarted controller that never saw it.
                    let recorded = j
                        .get(&key)
                        .and_then(|e| e.result.clone())
                        .filter(|r| serde_json::to_vec(r).is_ok_and(|b| b.len() <= fits))
                        .map(Box::new);
                    match st.running.get(&key) {
                        Some(t) => {
                            t.cancel();
                            // Its requester may be gone by the end: publish the result.
                            st.resent.insert(key);
                            Reply { status: ReplyStatus::Cancelling, reason: None, result: None }
                        }
                        None => Reply { status: ReplyStatus::NotRunning, reason: None, result: recorded },
                    }
                })
                .await;
            tracing::info!(key = %key, status = ?answer.status, "cancel request");
            send_reply(&s, &msg, answer).await;
        }
        Request::Run(cmd) => {
            let key = cmd.id.key();
            let decision = s.with_journal(move |me, st| decide(me, st, cmd)).await;
            match decision {
                Decision::Rejected(reason, result) => {
                    tracing::warn!(key = %key, reason = %reason, "command rejected");
                    reply(&s, &msg, ReplyStatus::Rejected, Some(reason)).await;
                    if let Some(r) = result {
                        publish_and_mark(&s, &r).await;
                    }
                }
                Decision::Duplicate(result) => {
                    tracing::info!(key = %key, finished = result.is_some(), "duplicate command: not run again");
                    // The recorded result goes back with the answer when it fits.
                    match result.as_ref().and_then(|r| encoded_with_result(&s, ReplyStatus::Duplicate, r)) {
                        Some(body) => send_encoded(&s, &msg, body).await,
                        None => {
                            send_reply(&s, &msg, Reply { status: ReplyStatus::Duplicate, reason: None, result: None })
                                .await
                        }
                    };
                    if let Some(r) = result {
                        publish_and_mark(&s, &r).await;
                    }
                }
                Decision::Accepted(cmd, token) => {
                    tracing::info!(key = %key, action = %cmd.action, step = %cmd.step_name, "command accepted");
                    // Boxed: the action's future then does not add to the size of this
                    // request's future, which is moved when it is spawned.
                    let mut run = Box::pin(execute(&s, &cmd, token));
                    // A quick command is answered with its result (one round trip); a
                    // longer one is acknowledged now and its result published at its end.
                    let quick = if s.cfg.result_in_reply.is_zero() {
                        None
                    } else {
                        tokio::time::timeout(s.cfg.result_in_reply, &mut run).await.ok()
                    };
                    let answered = quick.is_some();
                    if !answered {
                        reply(&s, &msg, ReplyStatus::Accepted, None).await;
                    }
                    let result = match quick {
                        Some(r) => r,
                        None => run.await,
                    };
                    tracing::info!(
                        key = %key,
                        outcome = ?result.outcome,
                        duration_ms = result.duration_ms,
                        error = result.error.as_deref().unwrap_or(""),
                        "command finished"
                    );
                    let (r, k) = (result.clone(), key.clone());
                    let (journaled, resent) = s
                        .with_journal(move |_, st| {
                            st.running.remove(&k);
                            let resent = st.resent.remove(&k);
                            (st.journal.as_mut().map(|j| j.finish(r)), resent)
                        })
                        .await;
                    let durable = match journaled {
                        None => return, // killed meanwhile
                        Some(Err(e)) => {
                            tracing::error!(key = %key, error = %e, "cannot journal the result");
                            false
                        }
                        Some(Ok(())) => true,
                    };
                    if answered {
                        // Only a journaled result may be handed over: a re-sent command is
                        // answered from the journal, never run again.
                        // A copy of the command that came meanwhile was answered
                        // `duplicate` with no result: its sender waits for the published
                        // one (and may no longer wait for this answer).
                        // The controller stores what it gets in replies, so the result
                        // needs no publication: it is delivered once the reply is sent (a
                        // lost reply means a re-sent command, answered from the journal).
                        let done =
                            (durable && !resent).then(|| encoded_with_result(&s, ReplyStatus::Done, &result)).flatten();
                        match done {
                            Some(body) => {
                                if send_encoded(&s, &msg, body).await {
                                    s.with_state(|st| st.journal.as_mut().map(|j| j.mark_delivered(&key)));
                                    return;
                                }
                                // Not sent: published below for the controller to consume.
                            }
                            None => reply(&s, &msg, ReplyStatus::Accepted, None).await,
                        }
                    }
                    publish_and_mark(&s, &result).await;
                }
            }
        }
    }
}

/// Decide what to do with a run request (under the state lock, with journal I/O).
fn decide(s: &Shared, st: &mut State, cmd: Command) -> Decision {
    let Some(j) = st.journal.as_mut() else {
        return Decision::Rejected("the agent is stopping".into(), None);
    };
    if cmd.id.node != s.node_id {
        return Decision::Rejected(format!("command for node {} sent to node {}", cmd.id.node, s.node_id), None);
    }
    if let Some(seen) = j.epoch(&cmd.id.job)
        && cmd.epoch < seen
    {
        return Decision::Rejected(format!("stale epoch {} < {seen}", cmd.epoch), None);
    }
    let key = cmd.id.key();
    if let Some(e) = j.get(&key) {
        let result = e.result.clone();
        if result.is_none() && st.running.contains_key(&key) {
            st.resent.insert(key.clone());
        }
        if let Err(e) = j.raise_epoch(&cmd.id.job, cmd.epoch).and_then(|_| j.sync()) {
            tracing::warn!(error = %e, "cannot journal the epoch");
        }
        return Decision::Duplicate(result);
    }
    // What the journal keeps of the command: no secrets, no (possibly large) metadata.
    let kept = Command {
        id: cmd.id.clone(),
        epoch: cmd.epoch,
        step_name: cmd.step_name.clone(),
        action: cmd.action.clone(),
        params: s.registry.redact_params(&cmd.action, &cmd.params),
        metadata: Value::Null,
        timeout_ms: cmd.timeout_ms,
        issued_at_ms: cmd.issued_at_ms,
        signature: None,
    };
    // `accept` records a raised epoch in the same write.
    if st.draining {
        let reason = "the agent is draining (shutting down) and takes no new command".to_string();
        let mut r = empty_result(&cmd.id, AttemptOutcome::Failed);
        r.error = Some(format!("refused: {reason}"));
        if let Err(e) = j.accept(kept).and_then(|()| j.finish(r.clone())) {
            tracing::error!(error = %e, "cannot journal a refusal");
            return Decision::Rejected(reason, None);
        }
        return Decision::Rejected(reason, Some(r));
    }
    if let Err(e) = j.accept(kept) {
        return Decision::Rejected(format!("cannot write the agent journal: {e}"), None);
    }
    let mut cmd = cmd;
    if cmd.id.kind == CommandKind::Rollback
        && needs_metadata(&cmd.metadata)
        && let Some(m) = j.run_metadata(&cmd.id.job, &cmd.id.node, cmd.id.step)
    {
        tracing::info!(key = %key, "rollback metadata taken from the agent journal");
        cmd.metadata = m;
    }
    let token = CancellationToken::new();
    st.running.insert(key, token.clone());
    Decision::Accepted(Box::new(cmd), token)
}

/// Under the data dir: one file per process group a running step has started.
const PROCESS_GROUPS_DIR: &str = "pgroups";

fn needs_metadata(m: &Value) -> bool {
    m.is_null() || m.get(METADATA_ON_AGENT).is_some()
}

async fn execute(s: &Shared, cmd: &Command, cancel: CancellationToken) -> StepResult {
    let ctx = ExecContext {
        job_id: cmd.id.job.clone(),
        node_id: s.node_id.clone(),
        step: cmd.step_name.clone(),
        attempt: cmd.id.attempt,
        timeout: Duration::from_millis(cmd.timeout_ms),
        cancel,
        dry_run: false,
        output_cap: s.cfg.output_cap,
        policy: s.policy.clone(),
        env: Default::default(),
        process_groups: Some(s.cfg.data_dir.join(PROCESS_GROUPS_DIR)),
    };
    let started = Instant::now();
    let r = match cmd.id.kind {
        CommandKind::Run => run_action(&s.registry, &cmd.action, cmd.params.clone(), &ctx).await,
        CommandKind::Rollback => {
            run_rollback(&s.registry, &cmd.action, cmd.params.clone(), cmd.metadata.clone(), &ctx).await
        }
    };
    to_step_result(&cmd.id, r, started)
}

fn empty_result(id: &CommandId, outcome: AttemptOutcome) -> StepResult {
    StepResult {
        id: id.clone(),
        outcome,
        changed: false,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        exit_code: None,
        duration_ms: 0,
        error: None,
        metadata: Value::Null,
        finished_at_ms: now_ms(),
        full_output: None,
    }
}

fn to_step_result(id: &CommandId, r: Result<ExecResult, ActionError>, started: Instant) -> StepResult {
    match r {
        Ok(x) => StepResult {
            id: id.clone(),
            outcome: match x.status {
                ExecStatus::Succeeded => AttemptOutcome::Succeeded,
                ExecStatus::Failed => AttemptOutcome::Failed,
                ExecStatus::TimedOut => AttemptOutcome::TimedOut,
                ExecStatus::Cancelled => AttemptOutcome::Cancelled,
            },
            changed: x.changed,
            stdout: x.stdout,
            stderr: x.stderr,
            truncated: x.truncated,
            exit_code: x.exit_code,
            duration_ms: x.duration_ms,
            error: x.error,
            metadata: x.metadata,
            finished_at_ms: now_ms(),
            full_output: None,
        },
        Err(e) => {
            let mut r = empty_result(id, AttemptOutcome::Failed);
            r.error = Some(e.to_string());
            r.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            r
        }
    }
}

/// Put a whole result into the outputs object store: `Some(true)` once stored,
/// `Some(false)` after [`STORE_TRIES`] failures (the cut result is published alone),
/// `None` when the agent gives up on publishing at shutdown (the result stays unpublished
/// in the journal for the next start).
async fn store_whole_result(s: &Arc<Shared>, key: &str, whole: Vec<u8>) -> Option<bool> {
    let mut delay = Duration::from_millis(100);
    for _ in 0..STORE_TRIES {
        let mut reader: &[u8] = &whole;
        let put = s.topo.outputs.put(key, &mut reader);
        let r = tokio::select! {
            r = put => r,
            _ = s.give_up.cancelled() => return None,
        };
        match r {
            Ok(_) => return Some(true),
            Err(e) => tracing::warn!(key = %key, error = %e, retry_in = ?delay, "whole result not stored yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = s.give_up.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    tracing::error!(key = %key, "cannot store the whole result; publishing it cut to fit");
    Some(false)
}

/// Attempts to store a whole result before publishing it cut instead (about 15 s).
const STORE_TRIES: usize = 6;

/// The JSON of a result, made to fit in `limit` bytes: rollback metadata too large is
/// replaced by `{"x-drover-metadata-on-agent": <bytes>}` (the journal keeps it), then
/// stdout and stderr are cut (and `truncated` set). Deterministic, so every copy of a
/// result published again is the same message.
pub fn fit_payload(result: &StepResult, limit: usize) -> Vec<u8> {
    let encode = |r: &StepResult| serde_json::to_vec(r).unwrap_or_else(|_| b"{}".to_vec());
    let bytes = encode(result);
    if bytes.len() <= limit {
        return bytes;
    }
    let mut r = result.clone();
    if let Some(e) = &r.error
        && e.len() > ERROR_CAP
    {
        r.error = Some(format!("{} [cut]", cut_str(e, ERROR_CAP)));
    }
    let meta_len = serde_json::to_vec(&r.metadata).map(|v| v.len()).unwrap_or(0);
    if meta_len > 1024 {
        r.metadata = json!({ METADATA_ON_AGENT: meta_len });
    }
    let mut keep = r.stdout.len().max(r.stderr.len());
    loop {
        let bytes = encode(&r);
        if bytes.len() <= limit || keep == 0 {
            return bytes;
        }
        keep /= 2;
        for (out, orig) in [(&mut r.stdout, &result.stdout), (&mut r.stderr, &result.stderr)] {
            if orig.len() > keep {
                *out = format!("{}\n[drover: output cut to fit the message size limit]\n", cut_str(orig, keep));
            }
        }
        r.truncated = true;
    }
}

fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// A reply carrying `result`, encoded once, when it stays well under the message size
/// limit; a larger result takes the published path (with the object store).
fn encoded_with_result(s: &Shared, status: ReplyStatus, result: &StepResult) -> Option<Bytes> {
    let reply = Reply { status, reason: None, result: Some(Box::new(result.clone())) };
    let body = serde_json::to_vec(&reply).ok()?;
    (body.len() <= s.max_payload() / 2).then(|| body.into())
}

/// Publish a result to the results stream on `result.<job>.<node>`, which the controller
/// consumes (retrying with backoff until acknowledged or given up), then mark it
/// delivered in the journal.
async fn publish_and_mark(s: &Arc<Shared>, result: &StepResult) {
    let key = result.id.key();
    let subject = s.cfg.names.result(&result.id.job, &result.id.node);
    let msg_id = key.clone();
    let limit = s.max_payload();
    let whole = serde_json::to_vec(result).unwrap_or_default();
    let payload = if whole.len() > limit {
        // Too large for one message: the whole result goes to the outputs object store
        // first, and the message (cut to fit) says where it is.
        let mut cut = result.clone();
        match store_whole_result(s, &key, whole).await {
            Some(true) => cut.full_output = Some(key.clone()),
            // The store keeps failing: the cut result is still better than none.
            Some(false) => {}
            None => return, // shutting down: published at the next start
        }
        Bytes::from(fit_payload(&cut, limit))
    } else {
        Bytes::from(whole)
    };
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = publish_once(&s.topo.js, subject.clone(), &msg_id, payload.clone());
        let r = tokio::select! {
            r = attempt => r,
            _ = s.give_up.cancelled() => return,
        };
        match r {
            Ok(()) => break,
            Err(e) => tracing::warn!(key = %key, error = %e, retry_in = ?delay, "result not published yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = s.give_up.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    tracing::debug!(key = %key, subject = %subject, "result published");
    s.with_state(|st| st.journal.as_mut().map(|j| j.mark_delivered(&key)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_work_leaves_the_async_thread_while_it_is_slow() {
        let speed = JournalSpeed::default();
        assert!(speed.is_fast(), "inline until measured otherwise");
        for _ in 0..20 {
            speed.record(Duration::from_micros(30));
        }
        assert!(speed.is_fast(), "tmpfs-like appends stay inline");
        // A disk whose fdatasync takes 2 ms: off the async thread after one append.
        speed.record(Duration::from_millis(2));
        assert!(!speed.is_fast());
        for _ in 0..3 {
            speed.record(Duration::from_millis(2));
        }
        // Fast again: back inline once the average has come down.
        let mut back_after = 0;
        while !speed.is_fast() {
            speed.record(Duration::from_micros(30));
            back_after += 1;
            assert!(back_after < 50, "never came back inline");
        }
        assert!(back_after > 5, "one fast append does not hide a slow disk ({back_after})");
        // The first guess is the time the journal took to open (and compact).
        assert!(!JournalSpeed::starting_at(Duration::from_millis(3)).is_fast());
        assert!(JournalSpeed::starting_at(Duration::from_micros(80)).is_fast());
    }

    #[test]
    fn fit_payload_cuts_output_then_metadata() {
        let id = CommandId { job: "j".into(), node: "n".into(), step: 0, attempt: 1, kind: CommandKind::Run };
        let mut r = empty_result(&id, AttemptOutcome::Succeeded);
        r.stdout = "é".repeat(300_000);
        r.stderr = "\u{1}".repeat(100_000);
        r.metadata = json!({ "previous": "x".repeat(500_000) });
        let out = fit_payload(&r, 200_000);
        assert!(out.len() <= 200_000, "{}", out.len());
        let back: StepResult = serde_json::from_slice(&out).unwrap();
        assert!(back.truncated);
        assert!(back.metadata.get(METADATA_ON_AGENT).is_some());
        assert!(back.stdout.ends_with("size limit]\n"));
        assert_eq!(fit_payload(&r, 200_000), out, "deterministic");
        // Small results are untouched.
        let small = empty_result(&id, AttemptOutcome::Failed);
        assert_eq!(serde_json::from_slice::<StepResult>(&fit_payload(&small, 1000)).unwrap(), small);
    }
}
