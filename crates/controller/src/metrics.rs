//! Prometheus metrics, served at `/metrics`.

use drover_core::engine::JobStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// The controller's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub jobs_submitted: Counter,
    pub jobs_finished: Family<StatusLabel, Counter>,
    pub jobs_running: Gauge,
    pub jobs_queued: Gauge,
    /// 1 while this controller holds the lease.
    pub leader: Gauge,
    /// The lease epoch this controller last saw or took.
    pub lease_epoch: Gauge,
    pub takeovers: Counter,
    pub commands: Counter,
    pub results: Counter,
    pub nodes: Gauge,
    /// Time spent inside the rollout engine (`Job::handle`), to show its share of the
    /// controller's CPU.
    pub engine_seconds: Counter<f64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drover");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            jobs_submitted: Counter::default(),
            jobs_finished: Family::default(),
            jobs_running: Gauge::default(),
            jobs_queued: Gauge::default(),
            leader: Gauge::default(),
            lease_epoch: Gauge::default(),
            takeovers: Counter::default(),
            commands: Counter::default(),
            results: Counter::default(),
            nodes: Gauge::default(),
            engine_seconds: Counter::default(),
        };
        registry.register("jobs_submitted", "Jobs accepted", m.jobs_submitted.clone());
        registry.register("jobs_finished", "Jobs finished, by final status", m.jobs_finished.clone());
        registry.register("jobs_running", "Jobs running now", m.jobs_running.clone());
        registry.register("jobs_queued", "Jobs waiting to start", m.jobs_queued.clone());
        registry.register("leader", "1 while this controller holds the lease and runs the jobs", m.leader.clone());
        registry.register("lease_epoch", "The lease epoch this controller last saw or took", m.lease_epoch.clone());
        registry.register("lease_takeovers", "Times this controller took the lead", m.takeovers.clone());
        registry.register("commands_sent", "Commands sent to agents", m.commands.clone());
        registry.register("results_received", "Step results consumed", m.results.clone());
        registry.register("nodes_registered", "Nodes in the registry", m.nodes.clone());
        registry.register(
            "engine_seconds",
            "Time spent in the rollout engine deciding (its share of the controller's CPU)",
            m.engine_seconds.clone(),
        );
        Metrics { registry: Arc::new(registry), ..m }
    }

    pub fn job_finished(&self, status: JobStatus) {
        self.jobs_finished.get_or_create(&StatusLabel { status: status.to_string() }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
