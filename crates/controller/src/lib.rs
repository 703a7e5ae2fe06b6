//! drover-controller: admits jobs, drives the pure rollout engine over NATS JetStream,
//! persists every engine input to a journal, and serves the REST API.
//!
//! Layout: [`runtime`] owns the jobs (one task, group commit), [`dispatch`] delivers
//! commands to agents, [`registry`] keeps the fleet view from the KV buckets, [`api`]
//! serves `/v1`, [`openapi`] describes it, [`metrics`] counts. [`lease`] decides which of
//! several controllers leads (runs the jobs); the others serve the API and pass what
//! needs the leader to it through [`forward`].

pub mod api;
pub mod config;
pub mod dispatch;
pub mod forward;
pub mod lease;
pub mod metrics;
pub mod openapi;
pub mod recovery;
pub mod registry;
pub mod runtime;

pub use config::ControllerConfig;

use futures::StreamExt;
use runtime::Input;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Bus(#[from] drover_bus::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot consume results: {0}")]
    Consumer(String),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
}

/// What this controller knows of the lease.
#[derive(Debug, Clone, Default)]
pub struct RoleState {
    /// This controller leads (runs the jobs).
    pub leading: bool,
    /// The lease's holder, as last seen.
    pub leader: Option<String>,
    pub epoch: u64,
    /// What this controller rebuilt from the journal when it last took the lead.
    pub recovery: runtime::Recovery,
}

/// [`RoleState`], shared with the API.
#[derive(Clone, Default)]
pub struct Role(Arc<Mutex<RoleState>>);

impl Role {
    pub fn get(&self) -> RoleState {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut RoleState)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A running controller.
pub struct ControllerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    elector: JoinHandle<()>,
    server: JoinHandle<()>,
    registry: registry::Registry,
    role: Role,
    metrics: metrics::Metrics,
}

impl ControllerHandle {
    /// Where the API listens (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether the controller sees this node online now (registered, recent heartbeat).
    pub fn sees_online(&self, node: &str) -> bool {
        self.registry.is_online(node, drover_bus::now_ms())
    }

    /// Seconds spent inside the rollout engine so far.
    pub fn engine_seconds(&self) -> f64 {
        self.metrics.engine_seconds.get()
    }

    /// What this controller rebuilt from the journal when it last took the lead.
    pub fn recovery(&self) -> runtime::Recovery {
        self.role.get().recovery
    }

    /// Whether this controller leads now, who does, and under which epoch.
    pub fn role(&self) -> RoleState {
        self.role.get()
    }

    /// Stop serving and stop every task, giving the lease up so that another controller
    /// leads at once. Jobs in flight stay in the journal.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.elector).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        for t in self.tasks {
            t.abort();
        }
    }

    /// Stop at once without giving the lease up or finishing anything, as a crashed
    /// process would (for tests of takeovers).
    pub fn abandon(self) {
        self.elector.abort();
        self.server.abort();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Start a controller on an existing NATS connection. It leads at once when nobody holds
/// the lease (or it held it under the same id before a restart): its jobs are rebuilt
/// from the journal before this returns. Otherwise it serves the API as a standby and
/// takes the lead when the leader's lease expires.
pub async fn start(cfg: ControllerConfig, client: async_nats::Client) -> Result<ControllerHandle, ControllerError> {
    let topo = drover_bus::ensure_topology(client.clone(), &cfg.names, &cfg.topology).await?;
    let registry = registry::Registry::new(cfg.heartbeat_timeout);
    let metrics = metrics::Metrics::new();
    let stop = CancellationToken::new();
    let tasks = vec![tokio::spawn(registry::watch(registry.clone(), topo.clone()))];

    let shared = Shared {
        cfg: cfg.clone(),
        topo: topo.clone(),
        client: client.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        link: forward::Link::default(),
        role: Role::default(),
    };
    let lease = lease::Lease::new(topo.leases.clone(), cfg.id.clone(), cfg.lease_ttl);
    let mut elector = Elector { s: shared.clone(), lease, observer: lease::Observer::default(), leading: None };
    // The first look: a lone controller (or one restarted) leads before serving.
    let first_wait = elector.step().await;
    let elector = tokio::spawn(elector.run(first_wait, stop.clone()));

    let ready = Arc::new(AtomicBool::new(false));
    let state = api::AppState {
        link: shared.link.clone(),
        role: shared.role.clone(),
        registry: registry.clone(),
        topo,
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .map_err(|source| ControllerError::Listen { addr: cfg.api_addr, source })?;
    let addr = listener.local_addr().map_err(|source| ControllerError::Listen { addr: cfg.api_addr, source })?;
    let app = api::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
    let token = stop.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move { token.cancelled().await };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!("API server: {e}");
        }
    });
    ready.store(true, Ordering::Relaxed);
    let role = shared.role.get();
    tracing::info!(%addr, id = %cfg.id, leading = role.leading, leader = ?role.leader, "controller ready");
    Ok(ControllerHandle { addr, stop, tasks, elector, server, registry, role: shared.role, metrics })
}

/// What a leadership term needs to start the runtime.
#[derive(Clone)]
struct Shared {
    cfg: ControllerConfig,
    topo: drover_bus::Topology,
    client: async_nats::Client,
    registry: registry::Registry,
    metrics: metrics::Metrics,
    link: forward::Link,
    role: Role,
}

/// A term in progress: the runtime and its helpers, stopped together.
struct Leading {
    term: lease::Term,
    revision: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Leading {
    /// However the term ends (stepping down, the elector stopped or aborted), nothing of
    /// it goes on acting.
    fn drop(&mut self) {
        self.term.lose();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Watches the lease, takes it when it is free or expired, and runs a term while it holds it.
struct Elector {
    s: Shared,
    lease: lease::Lease,
    observer: lease::Observer,
    leading: Option<Leading>,
}

impl Elector {
    /// How often a standby looks at the lease.
    fn poll(&self) -> Duration {
        (self.lease.ttl / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    async fn run(mut self, first_wait: Duration, stop: CancellationToken) {
        let mut wait = first_wait;
        loop {
            let lost = self.leading.as_ref().map(|l| l.term.lost().clone());
            tokio::select! {
                _ = stop.cancelled() => {
                    self.resign().await;
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = async {
                    match &lost {
                        Some(t) => t.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            wait = self.step().await;
        }
    }

    /// One look at the lease (or at the term in progress); returns when to look again.
    async fn step(&mut self) -> Duration {
        if let Some(l) = &self.leading {
            if !l.term.lost().is_cancelled() {
                return Duration::from_secs(3600);
            }
            self.step_down();
        }
        let current = match self.lease.read().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("reading the lease: {e}");
                return self.poll();
            }
        };
        if let Some((_, rec)) = &current {
            self.s.metrics.lease_epoch.set(rec.epoch as i64);
            self.s.role.update(|r| {
                r.leader = rec.owner.clone();
                r.epoch = rec.epoch;
            });
        }
        let verdict = self.observer.look(&self.lease.me, current.as_ref().map(|(r, rec)| (*r, rec)), Instant::now());
        let lease::Verdict::Take { revision } = verdict else { return self.poll() };
        // Above every epoch used so far, even if the lease bucket was lost or recreated.
        let epoch = current.as_ref().map_or(0, |(_, rec)| rec.epoch).max(last_fence_epoch(&self.s.topo).await) + 1;
        let sent = Instant::now();
        match self.lease.take(revision, epoch).await {
            Ok(rev) => match lead(&self.s, &self.lease, epoch, rev, sent).await {
                Ok(l) => {
                    self.leading = Some(l);
                    return Duration::from_secs(3600);
                }
                Err(e) => tracing::error!(epoch, "could not take the lead: {e}"),
            },
            Err(lease::LeaseError::Lost) => tracing::info!("another controller took the lease first"),
            Err(e) => tracing::warn!("taking the lease: {e}"),
        }
        self.poll()
    }

    /// The term is over: stop its tasks and serve as a standby.
    fn step_down(&mut self) {
        let Some(l) = self.leading.take() else { return };
        self.s.link.set(None);
        self.observer.stepped_down(l.revision.load(Ordering::Relaxed));
        self.s.metrics.leader.set(0);
        self.s.role.update(|r| r.leading = false);
        tracing::warn!(epoch = l.term.epoch, "no longer leading; serving as a standby");
    }

    /// Stop leading and hand the lease over (a clean stop).
    async fn resign(&mut self) {
        let Some(l) = &self.leading else { return };
        let (revision, epoch) = (l.revision.load(Ordering::Relaxed), l.term.epoch);
        self.step_down();
        match self.lease.release(revision, epoch).await {
            Ok(_) => tracing::info!(epoch, "lease released"),
            Err(e) => tracing::warn!("releasing the lease (another controller takes over when it expires): {e}"),
        }
    }
}

/// The epoch of the last takeover line in the journal (0 when there is none).
async fn last_fence_epoch(topo: &drover_bus::Topology) -> u64 {
    let Ok(stream) = topo.js.get_stream(topo.names.events_stream()).await else { return 0 };
    match stream.get_last_raw_message_by_subject(&topo.names.fence()).await {
        Ok(m) => serde_json::from_slice::<runtime::JournalEntry>(&m.payload).map_or(0, |e| e.epoch()),
        Err(_) => 0,
    }
}

/// Start a term: renew the lease, rebuild the jobs from the journal (behind this term's
/// takeover line), and run them.
async fn lead(
    s: &Shared,
    lease: &lease::Lease,
    epoch: u64,
    revision: u64,
    sent: Instant,
) -> Result<Leading, ControllerError> {
    let term = lease::Term::new(epoch, sent + lease::valid_for(lease.ttl));
    let revision = Arc::new(AtomicU64::new(revision));
    let mut tasks = vec![tokio::spawn(renew(lease.clone(), term.clone(), revision.clone()))];
    let (tx, rx) = mpsc::channel(65_536);
    let mut rt = runtime::Runtime::new(
        s.cfg.clone(),
        s.topo.clone(),
        s.client.clone(),
        s.registry.clone(),
        s.metrics.clone(),
        tx.clone(),
        term.clone(),
    );
    let started = async {
        // Jobs of a previous term (a crash, a restart, a takeover) carry on before
        // anything new is taken.
        let recovery = rt.recover().await?;
        let results = consume_results(&s.topo, tx.clone()).await?;
        Ok::<_, ControllerError>((recovery, results))
    };
    let (recovery, results) = match started.await {
        Ok(r) => r,
        Err(e) => {
            term.lose();
            for t in tasks {
                t.abort();
            }
            return Err(e);
        }
    };
    tasks.push(tokio::spawn(rt.run(rx)));
    tasks.push(results);
    let tick_tx = tx.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if tick_tx.send(Input::Tick).await.is_err() {
                return;
            }
        }
    }));
    tasks.push(tokio::spawn(forward::serve(s.client.clone(), s.topo.names.ctl_api(), tx.clone(), term.lost().clone())));
    s.link.set(Some(tx));
    s.metrics.leader.set(1);
    s.metrics.lease_epoch.set(epoch as i64);
    s.metrics.takeovers.inc();
    s.role.update(|r| {
        r.leading = true;
        r.leader = Some(lease.me.clone());
        r.epoch = epoch;
        r.recovery = recovery;
    });
    tracing::info!(epoch, id = %lease.me, "leading: this controller runs the jobs");
    Ok(Leading { term, revision, tasks })
}

/// Renew the lease every third of its TTL while the term lasts; end the term when another
/// controller changed the lease or when a renewal cannot be made in time.
async fn renew(lease: lease::Lease, term: lease::Term, revision: Arc<AtomicU64>) {
    loop {
        tokio::select! {
            _ = term.lost().cancelled() => return,
            _ = tokio::time::sleep(lease.ttl / 3) => {}
        }
        loop {
            let sent = Instant::now();
            match lease.renew(revision.load(Ordering::Relaxed), term.epoch).await {
                Ok(r) => {
                    revision.store(r, Ordering::Relaxed);
                    term.extend(sent, lease.ttl);
                    break;
                }
                Err(lease::LeaseError::Lost) => {
                    tracing::error!(epoch = term.epoch, "another controller took the lease");
                    term.lose();
                    return;
                }
                Err(e) if !term.valid() => {
                    tracing::error!(epoch = term.epoch, "the lease could not be renewed in time: {e}");
                    term.lose();
                    return;
                }
                Err(e) => {
                    tracing::warn!("renewing the lease: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The results consumer: one durable consumer; each result is acknowledged once its
/// effect is journaled.
async fn consume_results(
    topo: &drover_bus::Topology,
    results_tx: mpsc::Sender<Input>,
) -> Result<JoinHandle<()>, ControllerError> {
    let stream =
        topo.js.get_stream(topo.names.results_stream()).await.map_err(|e| ControllerError::Consumer(e.to_string()))?;
    let durable = format!("{}-controller", topo.names.prefix().replace('.', "-"));
    let mut consumer_cfg = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(durable.clone()),
        // Results the agents returned in their replies are stored as records, not consumed.
        filter_subject: topo.names.published_results(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 50_000,
        ..Default::default()
    };
    // Results delivered to a controller that died (or was deposed) before acknowledging
    // them would only be delivered again after `ack_wait`: start the consumer again from
    // the first result not acknowledged (only the leader consumes; a result taken twice
    // is ignored as a copy). A consumer made with another ack policy or filter is
    // replaced the same way.
    if let Ok(info) = stream.consumer_info(&durable).await
        && (info.num_ack_pending > 0
            || info.config.ack_policy != consumer_cfg.ack_policy
            || info.config.filter_subject != consumer_cfg.filter_subject)
    {
        let start_sequence = info.ack_floor.stream_sequence + 1;
        stream.delete_consumer(&durable).await.map_err(|e| ControllerError::Consumer(e.to_string()))?;
        consumer_cfg.deliver_policy =
            async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence };
        tracing::info!(start_sequence, pending = info.num_ack_pending, "re-reading unacknowledged results");
    }
    let consumer = stream
        .get_or_create_consumer(&durable, consumer_cfg)
        .await
        .map_err(|e| ControllerError::Consumer(e.to_string()))?;
    let mut messages = consumer.messages().await.map_err(|e| ControllerError::Consumer(e.to_string()))?;
    Ok(tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("result consumer: {e}");
                    continue;
                }
            };
            match serde_json::from_slice::<drover_core::wire::StepResult>(&m.payload) {
                Ok(result) => {
                    if results_tx
                        .send(Input::Result { result: Box::new(result), msg: Some(Box::new(m)) })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(subject = %m.subject, "dropping a malformed result: {e}");
                    if results_tx.send(Input::Unusable(Box::new(m))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }))
}
