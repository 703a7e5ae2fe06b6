//! A simulated fleet in virtual time: runs the real engine on a plan with injected faults
//! and records what would happen. Deterministic: the same inputs give the same run.

use crate::duration::Dur;
use crate::engine::{Action, AttemptOutcome, EngineConfig, Event, Job, JobReport, Millis, Progress};
use crate::parse::{PlanError, PlanErrors};
use crate::plan::Plan;
use crate::resolve::{JobSpec, NodeInfo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A step named by its name or 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StepRef {
    Index(usize),
    Name(String),
}

impl StepRef {
    /// `3` is an index, anything else a name.
    pub fn parse(s: &str) -> StepRef {
        match s.parse::<usize>() {
            Ok(i) => StepRef::Index(i),
            Err(_) => StepRef::Name(s.to_string()),
        }
    }

    fn resolve(&self, plan: &Plan) -> Option<usize> {
        match self {
            StepRef::Index(i) => (*i < plan.steps.len()).then_some(*i),
            StepRef::Name(n) => plan.steps.iter().position(|s| s.name == *n),
        }
    }
}

impl std::fmt::Display for StepRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepRef::Index(i) => write!(f, "{i}"),
            StepRef::Name(n) => f.write_str(n),
        }
    }
}

/// What goes wrong, where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// The step fails: every attempt, or only the first `first` attempts.
    Fail { first: Option<u32> },
    /// The step never answers: the timeout decides.
    Hang,
    /// The node is lost when the step is dispatched.
    Lose,
    /// Undoing the step fails.
    FailRollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub node: String,
    pub step: StepRef,
    #[serde(flatten)]
    pub kind: FaultKind,
}

/// A simulation's fleet, faults and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    pub nodes: Vec<NodeInfo>,
    pub faults: Vec<Fault>,
    /// Time every step takes unless overridden.
    pub step_time: Dur,
    /// Per-step times.
    pub step_times: Vec<(StepRef, Dur)>,
    /// Approve every `pause_after_batches` gate at once.
    pub auto_approve: bool,
    pub job_id: String,
    /// Operator commands (`Cancel`, `Pause`, `Resume`, `Approve`, `Rollback`) at virtual
    /// times; one that does not apply at its time is ignored.
    #[serde(default)]
    pub operator: Vec<(Millis, Event)>,
    /// Engine settings; the simulator uses no deadline grace so a hung step times out at
    /// its timeout.
    pub engine: EngineConfig,
}

impl SimConfig {
    /// `node-1..node-N` (labelled with [`crate::resolve::demo_labels`]), every step 1s,
    /// no faults.
    pub fn with_nodes(n: usize) -> SimConfig {
        SimConfig {
            nodes: (1..=n)
                .map(|i| NodeInfo { labels: crate::resolve::demo_labels(i), ..NodeInfo::new(format!("node-{i}")) })
                .collect(),
            faults: Vec::new(),
            step_time: Dur::from_secs(1),
            step_times: Vec::new(),
            auto_approve: false,
            job_id: "sim".into(),
            operator: Vec::new(),
            engine: EngineConfig { deadline_grace_ms: 0, cancel_grace_ms: 1_000 },
        }
    }
}

/// What a simulation produced.
#[derive(Debug, Clone, Serialize)]
pub struct SimRun {
    pub report: JobReport,
    pub events: Vec<Progress>,
    /// Virtual time at the end, from the start.
    pub duration_ms: Millis,
    /// Every event fed to the engine with its time (for replay).
    #[serde(skip)]
    pub journal: Vec<(Event, Millis)>,
    /// Every rollback the engine asked for: node, step, metadata.
    #[serde(skip)]
    pub rollbacks: Vec<(String, usize, serde_json::Value)>,
    /// Operator commands (`--at`) that did not apply when they came, with why.
    pub ignored: Vec<(Millis, String)>,
    /// The engine state at the end.
    #[serde(skip)]
    pub final_state: Job,
}

/// The most engine events one simulation may process (a bound against runaway plans).
pub const MAX_SIM_EVENTS: usize = 50_000_000;

/// Resolve the plan on the simulated fleet and run it to the end (or to a pause).
pub fn simulate(plan: &Plan, cfg: &SimConfig) -> Result<SimRun, PlanErrors> {
    let spec = JobSpec::build(&cfg.job_id, plan, &cfg.nodes)?;
    let mut errors = Vec::new();
    let mut faults: BTreeMap<(String, usize), FaultKind> = BTreeMap::new();
    let mut fail_rollback: BTreeSet<(String, usize)> = BTreeSet::new();
    let ids: BTreeSet<&str> = spec.nodes.iter().map(|n| n.id.as_str()).collect();
    for (i, f) in cfg.faults.iter().enumerate() {
        let Some(step) = f.step.resolve(plan) else {
            errors.push(PlanError {
                path: format!("faults[{i}]"),
                message: format!("the plan has no step \"{}\"", f.step),
            });
            continue;
        };
        if !ids.contains(f.node.as_str()) {
            errors.push(PlanError {
                path: format!("faults[{i}]"),
                message: format!("\"{}\" is not a target of the plan", f.node),
            });
            continue;
        }
        if f.kind == FaultKind::FailRollback {
            fail_rollback.insert((f.node.clone(), step));
        } else {
            faults.insert((f.node.clone(), step), f.kind.clone());
        }
    }
    let mut times = vec![cfg.step_time.as_millis(); plan.steps.len()];
    for (r, d) in &cfg.step_times {
        match r.resolve(plan) {
            Some(i) => times[i] = d.as_millis(),
            None => {
                errors.push(PlanError { path: "step_time".into(), message: format!("the plan has no step \"{r}\"") })
            }
        }
    }
    if !errors.is_empty() {
        return Err(PlanErrors(errors));
    }
    let mut sim = Sim::new(spec, cfg, faults, fail_rollback, times);
    sim.at(0, Event::Start);
    for (t, e) in &cfg.operator {
        sim.at(*t, e.clone());
    }
    Ok(sim.run())
}

struct Sim {
    job: Job,
    queue: BTreeMap<(Millis, u64), Event>,
    seq: u64,
    /// Where the pending result of a running attempt sits in the queue.
    running: BTreeMap<(String, usize, u32), (Millis, u64)>,
    faults: BTreeMap<(String, usize), FaultKind>,
    fail_rollback: BTreeSet<(String, usize)>,
    lost: BTreeSet<String>,
    /// Attempts that never answer.
    hung: BTreeSet<(String, usize, u32)>,
    times: Vec<u64>,
    auto_approve: bool,
    events: Vec<Progress>,
    journal: Vec<(Event, Millis)>,
    rollbacks: Vec<(String, usize, serde_json::Value)>,
    ignored: Vec<(Millis, String)>,
}

impl Sim {
    fn new(
        spec: JobSpec,
        cfg: &SimConfig,
        faults: BTreeMap<(String, usize), FaultKind>,
        fail_rollback: BTreeSet<(String, usize)>,
        times: Vec<u64>,
    ) -> Sim {
        Sim {
            job: Job::new(spec, cfg.engine),
            queue: BTreeMap::new(),
            seq: 0,
            running: BTreeMap::new(),
            faults,
            fail_rollback,
            lost: BTreeSet::new(),
            hung: BTreeSet::new(),
            times,
            auto_approve: cfg.auto_approve,
            events: Vec::new(),
            journal: Vec::new(),
            rollbacks: Vec::new(),
            ignored: Vec::new(),
        }
    }

    fn at(&mut self, t: Millis, e: Event) -> (Millis, u64) {
        self.seq += 1;
        self.queue.insert((t, self.seq), e);
        (t, self.seq)
    }

    fn run(mut self) -> SimRun {
        let mut now = 0;
        let mut processed = 0;
        loop {
            // Approve a gate at the moment the job reaches it. Only gates: a budget or
            // operator pause ends the run.
            if self.auto_approve && self.job.awaiting_approval() {
                if let Ok(actions) = self.job.handle(Event::Approve, now) {
                    self.journal.push((Event::Approve, now));
                    self.apply(actions, now);
                }
                continue;
            }
            let Some(((t, _), event)) = self.queue.pop_first() else {
                break;
            };
            now = t;
            processed += 1;
            if processed > MAX_SIM_EVENTS {
                break;
            }
            if let Event::StepResult { node, step, attempt, .. } = &event {
                self.running.remove(&(node.clone(), *step, *attempt));
            }
            let actions = match self.job.handle(event.clone(), now) {
                Ok(a) => a,
                Err(rejected) => {
                    self.ignored.push((now, rejected.to_string()));
                    continue;
                }
            };
            self.journal.push((event, now));
            self.apply(actions, now);
            if self.job.status().is_final() {
                break;
            }
        }
        SimRun {
            report: self.job.report(),
            events: self.events,
            duration_ms: now,
            journal: self.journal,
            rollbacks: self.rollbacks,
            ignored: self.ignored,
            final_state: self.job,
        }
    }

    fn apply(&mut self, actions: Vec<Action>, now: Millis) {
        for a in actions {
            match a {
                Action::Dispatch { node, step, attempt, timeout_ms, .. } => {
                    self.dispatch(node, step, attempt, timeout_ms, now)
                }
                Action::Rollback { node, step, timeout_ms, metadata, .. } => {
                    self.rollbacks.push((node.clone(), step, metadata));
                    if self.lost.contains(&node) {
                        continue;
                    }
                    let t = self.times[step];
                    let ok = !self.fail_rollback.contains(&(node.clone(), step));
                    if t > timeout_ms {
                        continue; // never answers in time: the rollback deadline decides
                    }
                    let error = (!ok).then(|| "simulated rollback failure".to_string());
                    self.at(now + t, Event::RollbackResult { node, step, ok, error });
                }
                Action::CancelStep { node, step, attempt } => {
                    if self.lost.contains(&node) {
                        continue;
                    }
                    let key = (node.clone(), step, attempt);
                    let was_running = match self.running.remove(&key) {
                        Some(slot) => self.queue.remove(&slot).is_some(),
                        None => self.hung.remove(&key),
                    };
                    // The agent kills the process group and reports at once.
                    if was_running {
                        let error = Some("cancelled".to_string());
                        self.at(
                            now,
                            Event::StepResult {
                                node,
                                step,
                                attempt,
                                outcome: AttemptOutcome::Cancelled,
                                metadata: serde_json::Value::Null,
                                error,
                            },
                        );
                    }
                }
                Action::SetTimer { at, timer } => {
                    self.at(at.max(now), Event::Timer { timer });
                }
                Action::Emit(p) => self.events.push(p),
                Action::Finish { .. } => {}
            }
        }
    }

    fn dispatch(&mut self, node: String, step: usize, attempt: u32, timeout_ms: u64, now: Millis) {
        if self.lost.contains(&node) {
            return; // nobody answers; the deadline decides
        }
        let fault = self.faults.get(&(node.clone(), step)).cloned();
        let t = self.times[step];
        let outcome = match fault {
            Some(FaultKind::Lose) => {
                self.lost.insert(node.clone());
                self.at(now, Event::NodeLost { node, reason: "simulated loss".into() });
                return;
            }
            Some(FaultKind::Hang) => {
                self.hung.insert((node, step, attempt));
                return;
            }
            Some(FaultKind::Fail { first: None }) => AttemptOutcome::Failed,
            Some(FaultKind::Fail { first: Some(k) }) if attempt <= k => AttemptOutcome::Failed,
            _ => AttemptOutcome::Succeeded,
        };
        // A step longer than its timeout is killed by the agent at the deadline.
        let (at, outcome) =
            if t > timeout_ms { (now + timeout_ms, AttemptOutcome::TimedOut) } else { (now + t, outcome) };
        let metadata = if outcome == AttemptOutcome::Succeeded {
            serde_json::json!({ "sim": format!("{node}/{step}/{attempt}") })
        } else {
            serde_json::Value::Null
        };
        let error = match outcome {
            AttemptOutcome::Failed => Some("simulated failure".to_string()),
            AttemptOutcome::TimedOut => Some(format!("killed at the {timeout_ms}ms timeout")),
            _ => None,
        };
        let slot = self.at(at, Event::StepResult { node: node.clone(), step, attempt, outcome, metadata, error });
        self.running.insert((node, step, attempt), slot);
    }
}
