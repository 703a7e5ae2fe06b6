//! drover-controller: admits jobs, drives the pure rollout engine over NATS JetStream,
//! persists every engine input to a journal, and serves the REST API.
//!
//! Layout: [`runtime`] owns the jobs (one task, group commit), [`dispatch`] delivers
//! commands to agents, [`registry`] keeps the fleet view from the KV buckets, [`api`]
//! serves `/v1`, [`openapi`] describes it, [`metrics`] counts.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod metrics;
pub mod openapi;
pub mod recovery;
pub mod registry;
pub mod runtime;

pub use config::ControllerConfig;

use futures::StreamExt;
use runtime::Input;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
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
}

/// A running controller.
pub struct ControllerHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
    registry: registry::Registry,
    recovery: runtime::Recovery,
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

    /// What this controller rebuilt from the journal when it started.
    pub fn recovery(&self) -> &runtime::Recovery {
        &self.recovery
    }

    /// Stop serving and stop every task. Jobs in flight stay in the journal.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Start a controller on an existing NATS connection.
pub async fn start(cfg: ControllerConfig, client: async_nats::Client) -> Result<ControllerHandle, ControllerError> {
    let topo = drover_bus::ensure_topology(client.clone(), &cfg.names, &cfg.topology).await?;
    let registry = registry::Registry::new(cfg.heartbeat_timeout);
    let metrics = metrics::Metrics::new();
    let (tx, rx) = mpsc::channel(65_536);
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(registry::watch(registry.clone(), topo.clone())));
    let mut rt =
        runtime::Runtime::new(cfg.clone(), topo.clone(), client.clone(), registry.clone(), metrics.clone(), tx.clone());
    // Jobs of a previous run (a crash, a restart) carry on before anything new is taken.
    let recovery = rt.recover().await?;
    tasks.push(tokio::spawn(rt.run(rx)));

    // Results: one durable consumer; each result is acknowledged once its effect is
    // journaled.
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
    // Results delivered to a controller that died before acknowledging them would only be
    // delivered again after `ack_wait`: start the consumer again from the first result not
    // acknowledged (one controller per prefix; a result taken twice is ignored as a copy).
    // A consumer made with another ack policy or filter is replaced the same way.
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
    let results_tx = tx.clone();
    tasks.push(tokio::spawn(async move {
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
    }));

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

    let ready = Arc::new(AtomicBool::new(false));
    let state = api::AppState { tx, registry: registry.clone(), topo, metrics: metrics.clone(), ready: ready.clone() };
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
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(%addr, "controller ready");
    Ok(ControllerHandle { addr, stop, tasks, server, registry, recovery, metrics })
}
