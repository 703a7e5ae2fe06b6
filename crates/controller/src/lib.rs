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
pub mod summaries;
pub mod timers;

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

    /// Commands sent to agents so far (step attempts and rollbacks; a re-send of the
    /// same command is not counted again).
    pub fn commands_sent(&self) -> u64 {
        self.metrics.commands.get()
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
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), &mut self.elector).await.is_err() {
            self.elector.abort();
        }
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
/// the lease (or its holder released it): its jobs are rebuilt from the journal before
/// this returns. Otherwise it serves the API as a standby and takes the lead when the
/// leader's lease expires.
pub async fn start(cfg: ControllerConfig, client: async_nats::Client) -> Result<ControllerHandle, ControllerError> {
    let topo = drover_bus::ensure_topology(client.clone(), &cfg.names, &cfg.topology).await?;
    let listener = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .map_err(|source| ControllerError::Listen { addr: cfg.api_addr, source })?;
    let addr = listener.local_addr().map_err(|source| ControllerError::Listen { addr: cfg.api_addr, source })?;
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
    // The first look: a lone controller leads before serving.
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
    /// However the term ends (stepping down, a failed start, the elector stopped or
    /// aborted), nothing of it goes on acting.
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
            self.step_down(false);
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
        let verdict = self.observer.look(current.as_ref().map(|(r, rec)| (*r, rec)), Instant::now());
        let lease::Verdict::Take { revision } = verdict else { return self.poll() };
        // Above every epoch used so far, even if the lease bucket was lost or recreated;
        // unknown (the journal cannot be read) means no takeover now.
        let fenced = match last_fence_epoch(&self.s.topo).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("reading the last takeover line: {e}");
                return self.poll();
            }
        };
        let epoch = current.as_ref().map_or(0, |(_, rec)| rec.epoch).max(fenced) + 1;
        let sent = Instant::now();
        match self.lease.take(revision, epoch).await {
            Ok(rev) => match lead(&self.s, &self.lease, epoch, rev, sent).await {
                Ok(l) => {
                    self.leading = Some(l);
                    return Duration::from_secs(3600);
                }
                Err((e, rev)) => {
                    tracing::error!(epoch, "could not take the lead: {e}");
                    // Nobody else acted on this write of the lease: try again at the
                    // next look.
                    self.observer.stepped_down(&self.lease.me, rev, epoch);
                }
            },
            Err(lease::LeaseError::Lost) => tracing::info!("another controller took the lease first"),
            Err(e) => tracing::warn!("taking the lease: {e}"),
        }
        self.poll()
    }

    /// The term is over (`stopping`: because this controller stops): stop its tasks and
    /// serve as a standby.
    fn step_down(&mut self, stopping: bool) {
        let Some(l) = self.leading.take() else { return };
        self.s.link.set(None);
        self.observer.stepped_down(&self.lease.me, l.revision.load(Ordering::Relaxed), l.term.epoch);
        self.s.metrics.leader.set(0);
        self.s.role.update(|r| r.leading = false);
        if !stopping {
            tracing::warn!(epoch = l.term.epoch, "no longer leading; serving as a standby");
        }
    }

    /// Stop leading and hand the lease over (a clean stop).
    async fn resign(&mut self) {
        let Some(l) = &self.leading else { return };
        let (revision, epoch) = (l.revision.load(Ordering::Relaxed), l.term.epoch);
        self.step_down(true);
        match self.lease.release(revision, epoch).await {
            Ok(_) => tracing::info!(epoch, "lease released"),
            Err(e) => tracing::warn!("releasing the lease (another controller takes over when it expires): {e}"),
        }
    }
}

/// The epoch of the last takeover line in the journal (0 when there is none). Takeover
/// lines are written in increasing epochs, so the last is the highest.
async fn last_fence_epoch(topo: &drover_bus::Topology) -> Result<u64, String> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let stream = topo.js.get_stream(topo.names.events_stream()).await.map_err(|e| e.to_string())?;
    match stream.get_last_raw_message_by_subject(&topo.names.fence()).await {
        Ok(m) => serde_json::from_slice::<runtime::JournalEntry>(&m.payload)
            .map(|e| e.epoch())
            .map_err(|e| format!("unreadable takeover line: {e}")),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

/// Start a term: renew the lease, rebuild the jobs from the journal (behind this term's
/// takeover line), and run them. On failure, the lease revision last written.
async fn lead(
    s: &Shared,
    lease: &lease::Lease,
    epoch: u64,
    revision: u64,
    sent: Instant,
) -> Result<Leading, (ControllerError, u64)> {
    let term = lease::Term::new(epoch, sent + lease::valid_for(lease.ttl));
    let revision = Arc::new(AtomicU64::new(revision));
    // The guard first: whatever happens below (an error, this future dropped), the
    // term's tasks stop with it.
    let mut leading = Leading { term: term.clone(), revision: revision.clone(), tasks: Vec::new() };
    leading.tasks.push(tokio::spawn(renew(lease.clone(), term.clone(), revision.clone())));
    let failed = |e: ControllerError| (e, revision.load(Ordering::Relaxed));
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
    // Jobs of a previous term (a crash, a restart, a takeover) carry on before anything
    // new is taken.
    let recovery = rt.recover().await.map_err(|e| failed(e.into()))?;
    leading.tasks.push(consume_results(&s.topo, epoch, tx.clone()).await.map_err(failed)?);
    let forwarded = s
        .client
        .queue_subscribe(s.topo.names.ctl_api(), "leader".into())
        .await
        .map_err(|e| failed(ControllerError::Consumer(format!("cannot serve forwarded API calls: {e}"))))?;
    leading.tasks.push(tokio::spawn(rt.run(rx)));
    let tick_tx = tx.clone();
    leading.tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            if tick_tx.send(Input::Tick).await.is_err() {
                return;
            }
        }
    }));
    leading.tasks.push(tokio::spawn(forward::serve(s.client.clone(), forwarded, tx.clone(), term.clone())));
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
    Ok(leading)
}

/// Renew the lease every third of its TTL while the term lasts. A renewal that finds
/// another controller's write ends the term. Renewals that fail or stall only let the
/// term run out (the runtime then pauses); the next one that succeeds, being a
/// compare-and-set on this term's own last revision, proves nobody else acted, and the
/// term carries on. A standby takes over only by writing the lease, which ends the term
/// at its next renewal.
async fn renew(lease: lease::Lease, term: lease::Term, revision: Arc<AtomicU64>) {
    let every = lease.ttl / 3;
    let mut next = Instant::now() + every;
    let mut late = false;
    loop {
        tokio::select! {
            _ = term.lost().cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let sent = Instant::now();
        let attempt = lease.renew(revision.load(Ordering::Relaxed), term.epoch);
        let outcome = match tokio::time::timeout(every, attempt).await {
            Ok(r) => r,
            Err(_) => Err(lease::LeaseError::Bus(format!("no answer within {} ms", every.as_millis()))),
        };
        match outcome {
            Ok(r) => {
                revision.store(r, Ordering::Relaxed);
                term.extend(sent, lease.ttl);
                next = sent + every;
                if std::mem::take(&mut late) {
                    tracing::info!(epoch = term.epoch, "lease renewed again; carrying on");
                }
            }
            Err(lease::LeaseError::Lost) => {
                // A renewal that was stored but whose answer was lost makes the next one
                // look like a lost lease: a lease still in this term's epoch is ours.
                match lease.read().await {
                    Ok(Some((r, rec))) if rec.owner.as_deref() == Some(&lease.me) && rec.epoch == term.epoch => {
                        revision.store(r, Ordering::Relaxed);
                        next = Instant::now();
                    }
                    _ => {
                        tracing::error!(epoch = term.epoch, "another controller took the lease");
                        term.lose();
                        return;
                    }
                }
            }
            Err(e) => {
                if !term.valid() && !std::mem::replace(&mut late, true) {
                    tracing::warn!(
                        epoch = term.epoch,
                        "the lease ran out before a renewal succeeded ({e}); pausing until one does"
                    );
                }
                tracing::debug!("renewing the lease: {e}; retrying");
                next = Instant::now() + Duration::from_millis(200);
            }
        }
    }
}

/// The results consumer of one term: a durable consumer named after the epoch (a deposed
/// leader's pulls then reach nothing of the new term's), starting at the first result
/// the previous terms' consumers had not acknowledged (results taken by a leader that
/// died or was deposed before acknowledging them come again at once, not after
/// `ack_wait`; one whose effect is journaled already is ignored as a copy). The previous
/// terms' consumers are then deleted. Each result is acknowledged once its effect is
/// journaled.
async fn consume_results(
    topo: &drover_bus::Topology,
    epoch: u64,
    results_tx: mpsc::Sender<Input>,
) -> Result<JoinHandle<()>, ControllerError> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
    let fail = |e: &dyn std::fmt::Display| ControllerError::Consumer(e.to_string());
    let stream = topo.js.get_stream(topo.names.results_stream()).await.map_err(|e| fail(&e))?;
    let base = format!("{}-controller", topo.names.prefix().replace('.', "-"));
    let durable = format!("{base}-{epoch}");
    let mut previous = Vec::new();
    let mut names = stream.consumer_names();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| fail(&e))?;
        if name != durable && (name == base || name.strip_prefix(&format!("{base}-")).is_some()) {
            previous.push(name);
        }
    }
    let mut start: Option<u64> = None;
    for name in &previous {
        if let Ok(info) = stream.consumer_info(name).await {
            let first_unacked = info.ack_floor.stream_sequence + 1;
            start = Some(start.map_or(first_unacked, |s| s.min(first_unacked)));
        }
    }
    let consumer_cfg = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(durable.clone()),
        // Results the agents returned in their replies are stored as records, not consumed.
        filter_subject: topo.names.published_results(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 50_000,
        deliver_policy: match start {
            Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            None => DeliverPolicy::All,
        },
        ..Default::default()
    };
    let consumer = stream.get_or_create_consumer(&durable, consumer_cfg).await.map_err(|e| fail(&e))?;
    for name in previous {
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::warn!(consumer = %name, "deleting a previous term's results consumer: {e}");
        }
    }
    if let Some(start_sequence) = start {
        tracing::info!(start_sequence, consumer = %durable, "results from the first one not acknowledged");
    }
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
