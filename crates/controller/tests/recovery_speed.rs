//! How long a restarted controller takes to resume a job with 1,000 node-steps in its
//! journal (a real nats-server; the journal written as a live controller writes it).
//! The figure is printed and recorded in docs/PERFORMANCE.md:
//!   cargo test --release -p drover-controller --test recovery_speed -- --nocapture

use drover_bus::server::ManagedServer;
use drover_controller::ControllerConfig;
use drover_controller::runtime::JournalEntry;
use drover_core::engine::{Action, AttemptOutcome, EngineConfig, Event, Job};
use drover_core::parse::{Format, parse_plan};
use drover_core::resolve::{JobSpec, NodeInfo};
use std::time::{Duration, Instant};

const NODES: usize = 550;
const STEPS: usize = 2;

/// A journal for a rolling job on NODES nodes, driven by a live engine until every node
/// but the last batch finished, with 1,000 step results in all.
fn journal(job_id: &str) -> (Vec<JournalEntry>, usize) {
    let plan = parse_plan(
        "name: big\ntargets: {all: true}\nrollout: {strategy: rolling, batch: 50}\nsteps:\n  - {name: a, action: echo}\n  - {name: b, action: echo}\n",
        Format::Yaml,
        None,
    )
    .expect("plan");
    let fleet: Vec<NodeInfo> = (1..=NODES)
        .map(|i| NodeInfo { id: format!("n{i:04}"), labels: Default::default(), groups: vec![], online: true })
        .collect();
    let spec = JobSpec::build(job_id, &plan, &fleet).expect("spec");
    let mut job = Job::new(spec.clone(), EngineConfig::default());
    let mut lines =
        vec![JournalEntry::Spec { spec: Box::new(spec), created_at_ms: 1, epoch: 1, engine: EngineConfig::default() }];
    let mut now = 1_000u64;
    let mut pending: Vec<Event> = vec![Event::Start];
    let mut results = 0;
    while let Some(event) = pending.pop() {
        if matches!(event, Event::StepResult { .. }) {
            if results == NODES * STEPS - 50 * STEPS {
                break; // the last batch stays in flight
            }
            results += 1;
        }
        now += 1;
        let n = lines.len() as u64;
        lines.push(JournalEntry::Input { n, event: event.clone(), now, epoch: 1 });
        for a in job.handle(event, now).expect("accepted") {
            if let Action::Dispatch { node, step, attempt, .. } = a {
                pending.insert(
                    0,
                    Event::StepResult {
                        node,
                        step,
                        attempt,
                        outcome: AttemptOutcome::Succeeded,
                        metadata: serde_json::Value::Null,
                        error: None,
                    },
                );
            }
        }
    }
    (lines, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_resumes_a_thousand_node_step_job_quickly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ManagedServer::start(&dir.path().join("nats")).expect("nats-server starts");
    let client = drover_bus::connect(server.url(), "writer").await.expect("connect");
    let cfg = ControllerConfig { api_addr: "127.0.0.1:0".parse().expect("addr"), ..ControllerConfig::default() };
    let topo = drover_bus::ensure_topology(client.clone(), &cfg.names, &cfg.topology).await.expect("topology");
    let job_id = "0199-big";
    let (lines, results) = journal(job_id);
    assert_eq!(results, 1000);
    let subject = cfg.names.job_inputs(job_id);
    let mut acks = Vec::new();
    for l in &lines {
        let bytes = serde_json::to_vec(l).expect("json");
        acks.push(topo.js.publish(subject.clone(), bytes.into()).await.expect("publish"));
    }
    for a in acks {
        a.await.expect("stored");
    }

    let started = Instant::now();
    let controller = drover_controller::start(cfg, client).await.expect("controller starts");
    let start_took = started.elapsed();
    let r = controller.recovery().clone();
    eprintln!(
        "recovery: {} journal lines ({} step results, {} nodes) replayed in {:?}; controller start to serving {:?}; {} commands re-sent",
        r.lines, results, NODES, r.took, start_took, r.resent
    );
    // Every line, and the controller's own takeover line read with them.
    assert_eq!((r.lines, r.active, r.problems), (lines.len() + 1, 1, 0));
    // The last batch of 50 nodes was in flight: each gets its command again.
    assert_eq!(r.resent, 50);
    assert!(r.took < Duration::from_secs(10), "recovery took {:?}", r.took);
    controller.shutdown().await;
}
