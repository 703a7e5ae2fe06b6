//! The rollout state machine: `(state, event, now) -> actions`.
//!
//! One [`Job`] holds everything about one run of a plan. [`Job::handle`] applies one event
//! at a time and returns what the runtime must do. It never does I/O, never reads a clock
//! and never draws a random number, so replaying the same events at the same times gives
//! the same state (the controller's crash recovery relies on it).

use super::types::*;
use crate::plan::{OnBudgetExceeded, OnError, When, Window};
use crate::resolve::JobSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    /// Not started.
    Pending,
    /// An attempt is running.
    Running,
    /// Waiting for a retry timer.
    Retrying,
    /// Waiting for the rest of its batch at a barrier.
    AtBarrier,
    /// Undoing its own completed steps after failing.
    RollingBack,
    /// Finished (see the outcome).
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StepRun {
    status: StepStatus,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    metadata: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeRun {
    stage: Stage,
    outcome: NodeOutcome,
    /// Why the node failed, kept when a rollback changes its outcome.
    failure: Option<NodeOutcome>,
    batch: usize,
    /// Index of the step the node is at (== steps.len() when it went past the last).
    pos: usize,
    /// Current attempt of step `pos` (0 before the first dispatch).
    attempt: u32,
    /// An earlier step failed with `on_error: continue`.
    had_failure: bool,
    /// A cancel was sent for the running attempt; no confirmation yet.
    cancel_sent: bool,
    /// Steps still to undo, the next one last.
    undo: Vec<usize>,
    /// The step being undone.
    undoing: Option<usize>,
    /// Being undone by the fleet rollback (it was done before).
    in_fleet_rollback: bool,
    steps: Vec<StepRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BatchRun {
    size: usize,
    started: bool,
    /// Nodes of the batch that are done.
    done: usize,
    /// reached[i] = nodes of the batch at step i or beyond (or done).
    reached: Vec<usize>,
}

/// Why no new node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
enum Pause {
    Operator,
    /// Waiting for `approve` after this batch (0-based).
    Gate {
        batch: usize,
    },
    /// The failure budget tripped with `on_budget_exceeded: pause`.
    Budget,
}

/// Why the job is winding down: no new node starts, and when nothing is in flight the
/// job does what the reason says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stop {
    /// Budget tripped: `rollback` or `halt` once in-flight nodes finished.
    Budget(OnBudgetExceeded),
    /// Operator asked for a fleet rollback.
    Rollback,
    /// Operator cancel: running steps cancelled.
    Cancel,
    /// The job's own deadline passed: running steps cancelled, the job fails.
    JobTimeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Pending,
    Running,
    /// Fleet rollback after the budget tripped or an operator asked.
    RollingBack,
    Done(JobStatus),
}

/// One job's engine state. Serializes whole (snapshots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    spec: JobSpec,
    cfg: EngineConfig,
    index: BTreeMap<String, usize>,
    phase: Phase,
    nodes: Vec<NodeRun>,
    batches: Vec<BatchRun>,
    /// The next node (in dispatch order) to start.
    next_node: usize,
    /// Nodes started and not done.
    in_flight: usize,
    /// Nodes that count against the budget.
    failed: usize,
    /// Nodes done.
    done: usize,
    /// Failed nodes tolerated; raised by `resume` after a budget pause.
    limit: Option<usize>,
    pause: Option<Pause>,
    stop: Option<Stop>,
    /// Gates passed with `approve`.
    approved: BTreeSet<usize>,
    /// Batches whose `batch_delay` is over.
    delay_done: BTreeSet<usize>,
    /// A batch delay timer is running for this batch.
    delay_pending: Option<usize>,
    /// Nodes waiting for a fleet-rollback slot.
    rollback_queue: VecDeque<usize>,
    /// Nodes in fleet rollback now.
    rolling_back: usize,
    seq: u64,
    started_at: Option<Millis>,
    finished_at: Option<Millis>,
    reason: Option<String>,
}

impl Job {
    pub fn new(spec: JobSpec, cfg: EngineConfig) -> Job {
        let steps = spec.plan.steps.len();
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        let mut batch_of = vec![0; spec.nodes.len()];
        for (b, members) in spec.batches.iter().enumerate() {
            for &n in members {
                batch_of[n] = b;
            }
        }
        for b in batch_of {
            nodes.push(NodeRun {
                stage: Stage::Pending,
                outcome: NodeOutcome::Pending,
                failure: None,
                batch: b,
                pos: 0,
                attempt: 0,
                had_failure: false,
                cancel_sent: false,
                undo: Vec::new(),
                undoing: None,
                in_fleet_rollback: false,
                steps: vec![
                    StepRun { status: StepStatus::NotRun, attempts: 0, metadata: Value::Null, error: None };
                    steps
                ],
            });
        }
        let batches = spec
            .batches
            .iter()
            .map(|m| {
                let mut reached = vec![0; steps + 1];
                reached[0] = m.len();
                BatchRun { size: m.len(), started: false, done: 0, reached }
            })
            .collect();
        let index = spec.nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        Job {
            limit: spec.failure_limit,
            spec,
            cfg,
            index,
            phase: Phase::Pending,
            nodes,
            batches,
            next_node: 0,
            in_flight: 0,
            failed: 0,
            done: 0,
            pause: None,
            stop: None,
            approved: BTreeSet::new(),
            delay_done: BTreeSet::new(),
            delay_pending: None,
            rollback_queue: VecDeque::new(),
            rolling_back: 0,
            seq: 0,
            started_at: None,
            finished_at: None,
            reason: None,
        }
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The job's status now.
    pub fn status(&self) -> JobStatus {
        match self.phase {
            Phase::Pending => JobStatus::Pending,
            Phase::Done(s) => s,
            Phase::RollingBack => JobStatus::RollingBack,
            Phase::Running if self.pause.is_some() && self.stop.is_none() => JobStatus::Paused,
            Phase::Running => JobStatus::Running,
        }
    }

    /// Why the job ended the way it did (or is paused), when there is more to say.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Paused at a `pause_after_batches` gate, waiting for `approve`.
    pub fn awaiting_approval(&self) -> bool {
        matches!(self.pause, Some(Pause::Gate { .. })) && self.stop.is_none()
    }

    /// Number of nodes started and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Number of nodes that count against the failure budget.
    pub fn failed_nodes(&self) -> usize {
        self.failed
    }

    /// The sequence number of the last progress event.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The failed nodes tolerated now (`None` = no budget).
    pub fn failure_limit(&self) -> Option<usize> {
        self.limit
    }

    /// When the job started and finished.
    pub fn times(&self) -> (Option<Millis>, Option<Millis>) {
        (self.started_at, self.finished_at)
    }

    pub(crate) fn batch_started(&self, b: usize) -> bool {
        self.batches.get(b).is_some_and(|x| x.started)
    }

    /// One node's state, by index in dispatch order.
    /// How many nodes have each outcome (cheap: no per-node report is built).
    pub fn counts(&self) -> BTreeMap<NodeOutcome, usize> {
        let mut counts = BTreeMap::new();
        for n in &self.nodes {
            *counts.entry(n.outcome).or_insert(0) += 1;
        }
        counts
    }

    pub fn node_report(&self, n: usize) -> super::report::NodeReport {
        let nr = &self.nodes[n];
        super::report::NodeReport {
            outcome: nr.outcome,
            failure: nr.failure.filter(|f| *f != nr.outcome),
            batch: nr.batch + 1,
            steps: nr
                .steps
                .iter()
                .zip(&self.spec.plan.steps)
                .map(|(s, p)| super::report::StepReport {
                    name: p.name.clone(),
                    status: s.status,
                    attempts: s.attempts,
                    error: s.error.clone(),
                })
                .collect(),
        }
    }

    /// The metadata a step's successful execution returned on a node (for rollback).
    pub fn step_metadata(&self, node: &str, step: usize) -> Option<&Value> {
        let n = self.lookup(node)?;
        self.nodes[n].steps.get(step).map(|s| &s.metadata)
    }

    /// Index of a node in dispatch order.
    pub fn node_index(&self, node: &str) -> Option<usize> {
        self.lookup(node)
    }

    /// The commands running now, as the actions that started them (without timers): what
    /// a runtime re-sends, with the same ids, after rebuilding a job from its journal.
    /// Deadlines are `now` plus the step timeout; the engine's own deadline timers (armed
    /// again from the journal) still decide.
    pub fn in_flight_commands(&self, now: Millis) -> Vec<Action> {
        let mut out = Vec::new();
        for (n, nr) in self.nodes.iter().enumerate() {
            let id = self.spec.nodes[n].id.clone();
            match nr.stage {
                Stage::Running if !nr.cancel_sent => {
                    let timeout = self.spec.plan.steps[nr.pos].timeout_or(self.spec.plan.timeout).as_millis();
                    out.push(Action::Dispatch {
                        node: id,
                        step: nr.pos,
                        attempt: nr.attempt,
                        timeout_ms: timeout,
                        deadline: now + timeout,
                    });
                }
                Stage::Running => {
                    out.push(Action::CancelStep { node: id, step: nr.pos, attempt: nr.attempt });
                }
                Stage::RollingBack => {
                    if let Some(step) = nr.undoing {
                        let s = &self.spec.plan.steps[step];
                        let timeout = s
                            .rollback
                            .as_ref()
                            .and_then(|r| r.timeout)
                            .unwrap_or(s.timeout_or(self.spec.plan.timeout))
                            .as_millis();
                        let metadata = nr.steps[step].metadata.clone();
                        out.push(Action::Rollback {
                            node: id,
                            step,
                            metadata,
                            timeout_ms: timeout,
                            deadline: now + timeout,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Would this timer still do something if it fired? (Runtimes use it to re-arm only
    /// the timers that matter after rebuilding a job.)
    pub fn timer_matters(&self, timer: &Timer) -> bool {
        if matches!(self.phase, Phase::Done(_) | Phase::Pending) {
            return false;
        }
        match *timer {
            Timer::StepDeadline { node, step, attempt } => {
                self.nodes.get(node).is_some_and(|n| n.stage == Stage::Running && n.pos == step && n.attempt == attempt)
            }
            Timer::Retry { node, step, attempt } => self
                .nodes
                .get(node)
                .is_some_and(|n| n.stage == Stage::Retrying && n.pos == step && n.attempt + 1 == attempt),
            Timer::RollbackDeadline { node, step } => {
                self.nodes.get(node).is_some_and(|n| n.stage == Stage::RollingBack && n.undoing == Some(step))
            }
            Timer::BatchDelay { batch } => self.delay_pending == Some(batch),
            Timer::JobTimeout => self.phase == Phase::Running,
            Timer::CancelGrace => self.nodes.iter().any(|n| n.cancel_sent && n.stage == Stage::Running),
        }
    }

    /// Apply one event at time `now`. An operator command that does not apply now is
    /// rejected and changes nothing; every other event is accepted (a stale result is
    /// recorded as ignored).
    pub fn handle(&mut self, event: Event, now: Millis) -> Result<Vec<Action>, Rejected> {
        let mut out = Vec::new();
        self.check(&event)?;
        match event {
            Event::Start => self.start(now, &mut out),
            Event::StepResult { node, step, attempt, outcome, metadata, error } => {
                self.step_result(&node, step, attempt, outcome, metadata, error, now, &mut out)
            }
            Event::RollbackResult { node, step, ok, error } => {
                self.rollback_result(&node, step, ok, error, now, &mut out)
            }
            Event::NodeLost { node, reason } => self.node_lost(&node, reason, now, &mut out),
            Event::Timer { timer } => self.timer(timer, now, &mut out),
            Event::Cancel if self.phase == Phase::Pending => self.cancel_before_start(now, &mut out),
            Event::Cancel => self.cancel(Stop::Cancel, now, &mut out),
            Event::Pause => {
                self.pause = Some(Pause::Operator);
                self.emit(&mut out, now, ProgressKind::Paused, |p| p.detail = Some("operator".into()));
            }
            Event::Resume => {
                if self.pause == Some(Pause::Budget) {
                    // Accept the failures so far; the next one trips the budget again.
                    self.limit = Some(self.failed);
                }
                self.pause = None;
                self.reason = None;
                self.emit(&mut out, now, ProgressKind::Resumed, |_| {});
            }
            Event::Approve => {
                if let Some(Pause::Gate { batch }) = self.pause {
                    self.approved.insert(batch);
                    self.pause = None;
                    self.reason = None;
                    self.emit(&mut out, now, ProgressKind::Approved, |p| p.batch = Some(batch + 1));
                }
            }
            Event::Rollback => {
                self.pause = None;
                self.emit(&mut out, now, ProgressKind::RollbackRequested, |p| p.detail = Some("operator".into()));
                self.begin_stop(Stop::Rollback, now, &mut out);
            }
        }
        self.advance(now, &mut out);
        Ok(out)
    }

    /// Reject operator commands that do not apply in the current state.
    fn check(&self, event: &Event) -> Result<(), Rejected> {
        let reject = |reason: String| Err(Rejected { event: event.name(), reason });
        let status = self.status();
        match event {
            Event::Start if self.phase != Phase::Pending => reject("the job has already started".into()),
            Event::Start => Ok(()),
            // A queued job is cancelled without ever starting anything.
            Event::Cancel if self.phase == Phase::Pending => Ok(()),
            _ if self.phase == Phase::Pending => reject("the job has not started".into()),
            Event::Cancel | Event::Pause | Event::Resume | Event::Approve | Event::Rollback if status.is_final() => {
                reject(format!("the job is already {status}"))
            }
            Event::Cancel if matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout)) => {
                reject("the job is already being cancelled".into())
            }
            Event::Pause if self.stop.is_some() || self.phase == Phase::RollingBack => {
                reject("the job is winding down; nothing new would start anyway".into())
            }
            Event::Pause if self.pause.is_some() => reject("the job is already paused".into()),
            Event::Resume => match self.pause {
                Some(Pause::Operator) | Some(Pause::Budget) => Ok(()),
                Some(Pause::Gate { batch }) => {
                    reject(format!("the job waits for approval after batch {}; use approve", batch + 1))
                }
                None => reject("the job is not paused".into()),
            },
            Event::Approve => match self.pause {
                Some(Pause::Gate { .. }) => Ok(()),
                Some(_) => reject("the job is paused, not waiting for approval; use resume".into()),
                None => reject("the job is not waiting for approval".into()),
            },
            Event::Rollback
                if self.phase == Phase::RollingBack
                    || matches!(self.stop, Some(Stop::Rollback | Stop::Budget(OnBudgetExceeded::Rollback))) =>
            {
                reject("the job is already rolling back".into())
            }
            Event::Rollback if matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout)) => {
                reject("the job is being cancelled".into())
            }
            _ => Ok(()),
        }
    }

    fn emit(&mut self, out: &mut Vec<Action>, now: Millis, kind: ProgressKind, f: impl FnOnce(&mut Progress)) {
        self.seq += 1;
        let mut p = Progress {
            seq: self.seq,
            at_ms: now,
            kind,
            node: None,
            step: None,
            attempt: None,
            batch: None,
            detail: None,
        };
        f(&mut p);
        out.push(Action::Emit(p));
    }

    fn node_id(&self, n: usize) -> String {
        self.spec.nodes[n].id.clone()
    }

    fn start(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.phase = Phase::Running;
        self.started_at = Some(now);
        let (nodes, batches) = (self.nodes.len(), self.batches.len());
        self.emit(out, now, ProgressKind::JobStarted, |p| {
            p.detail = Some(format!(
                "{} in {}",
                crate::count(nodes, "node", "nodes"),
                crate::count(batches, "batch", "batches")
            ))
        });
        if let Some(t) = self.spec.plan.job_timeout {
            out.push(Action::SetTimer { at: now + t.as_millis(), timer: Timer::JobTimeout });
        }
        // Nodes offline at submission count as failed from the start.
        for n in 0..self.nodes.len() {
            if self.spec.nodes[n].offline {
                self.finish_node(n, NodeOutcome::Unreachable, true, now, out);
                let id = self.node_id(n);
                self.emit(out, now, ProgressKind::NodeLost, |p| {
                    p.node = Some(id);
                    p.detail = Some("offline at submission".into());
                });
            }
        }
        self.check_budget(now, out);
    }

    // ----- starting nodes -------------------------------------------------------------

    /// Start whatever may start now, and finish the job when nothing is left.
    fn advance(&mut self, now: Millis, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Pending | Phase::Done(_) => return,
            Phase::RollingBack => {
                match self.stop {
                    Some(Stop::Cancel) if self.rolling_back == 0 => self.finish(
                        JobStatus::Cancelled,
                        Some("cancelled by operator during rollback".into()),
                        now,
                        out,
                    ),
                    Some(Stop::Cancel) => {}
                    _ => self.pump_rollback(now, out),
                }
                return;
            }
            Phase::Running => {}
        }
        if self.stop.is_none() && self.pause.is_none() {
            match self.spec.window {
                Window::Lockstep => self.open_lockstep(now, out),
                Window::Sliding => self.fill_sliding(now, out),
            }
        }
        if self.in_flight > 0 {
            return;
        }
        let all_done = self.done == self.nodes.len();
        match self.stop {
            Some(Stop::Cancel) => self.finish(JobStatus::Cancelled, Some("cancelled by operator".into()), now, out),
            Some(Stop::JobTimeout) => self.finish(JobStatus::Failed, Some("the job timed out".into()), now, out),
            Some(Stop::Budget(OnBudgetExceeded::Halt)) => {
                let r = self.reason.clone();
                self.finish(JobStatus::Halted, r, now, out)
            }
            Some(Stop::Budget(OnBudgetExceeded::Rollback)) | Some(Stop::Rollback) => {
                self.begin_fleet_rollback(now, out)
            }
            Some(Stop::Budget(OnBudgetExceeded::Pause)) => {}
            None if all_done && self.pause != Some(Pause::Budget) => {
                let bad = self.nodes.iter().filter(|n| n.outcome != NodeOutcome::Succeeded).count();
                if bad == 0 {
                    self.finish(JobStatus::Succeeded, None, now, out);
                } else {
                    self.finish(
                        JobStatus::Failed,
                        Some(format!("{bad} of {} nodes did not succeed", self.nodes.len())),
                        now,
                        out,
                    );
                }
            }
            None => {}
        }
    }

    fn open_lockstep(&mut self, now: Millis, out: &mut Vec<Action>) {
        loop {
            // The batch of the next node to start; every earlier batch has started.
            if self.next_node >= self.nodes.len() {
                return;
            }
            let b = self.nodes[self.next_node].batch;
            if b > 0 {
                let prev = &self.batches[b - 1];
                if prev.done < prev.size {
                    return;
                }
                if !self.gate_open(b, now, out) {
                    return;
                }
            }
            self.start_batch(b, now, out);
            // A batch whose nodes all finished at once (offline nodes) lets the next open.
            if self.batches[b].done < self.batches[b].size {
                return;
            }
        }
    }

    fn fill_sliding(&mut self, now: Millis, out: &mut Vec<Action>) {
        while self.next_node < self.nodes.len() {
            let n = self.next_node;
            let b = self.nodes[n].batch;
            if b > 0 && !self.batches[b].started {
                let prev = &self.batches[b - 1];
                let gated = self.spec.pause_after.contains(&(b - 1));
                if gated && prev.done < prev.size {
                    return;
                }
                if !self.gate_open(b, now, out) {
                    return;
                }
            }
            if self.nodes[n].stage == Stage::Pending && self.nodes[n].outcome == NodeOutcome::Pending {
                if self.in_flight >= self.batches[b].size {
                    return;
                }
                self.mark_batch_started(b, now, out);
                self.start_node(n, now, out);
            } else {
                self.mark_batch_started(b, now, out);
            }
            self.next_node += 1;
        }
    }

    /// May batch `b` open? Handles approval gates and batch delays (lockstep only).
    fn gate_open(&mut self, b: usize, now: Millis, out: &mut Vec<Action>) -> bool {
        if self.spec.pause_after.contains(&(b - 1)) && !self.approved.contains(&(b - 1)) {
            if self.pause.is_none() {
                self.pause = Some(Pause::Gate { batch: b - 1 });
                self.reason = Some(format!("waiting for approval after batch {b}"));
                self.emit(out, now, ProgressKind::Paused, |p| {
                    p.batch = Some(b); // 1-based: the batch just finished
                    p.detail = Some("approval gate".into());
                });
            }
            return false;
        }
        if self.spec.window == Window::Lockstep
            && self.spec.batch_delay.as_millis() > 0
            && !self.delay_done.contains(&b)
        {
            if self.delay_pending != Some(b) {
                self.delay_pending = Some(b);
                out.push(Action::SetTimer {
                    at: now + self.spec.batch_delay.as_millis(),
                    timer: Timer::BatchDelay { batch: b },
                });
            }
            return false;
        }
        true
    }

    fn mark_batch_started(&mut self, b: usize, now: Millis, out: &mut Vec<Action>) {
        if !self.batches[b].started {
            self.batches[b].started = true;
            let size = self.batches[b].size;
            self.emit(out, now, ProgressKind::BatchStarted, |p| {
                p.batch = Some(b + 1);
                p.detail = Some(crate::count(size, "node", "nodes"));
            });
        }
    }

    fn start_batch(&mut self, b: usize, now: Millis, out: &mut Vec<Action>) {
        self.mark_batch_started(b, now, out);
        let members = self.spec.batches[b].clone();
        for n in members {
            self.next_node = self.next_node.max(n + 1);
            if self.nodes[n].stage == Stage::Pending && self.nodes[n].outcome == NodeOutcome::Pending {
                self.start_node(n, now, out);
            }
        }
    }

    fn start_node(&mut self, n: usize, now: Millis, out: &mut Vec<Action>) {
        self.in_flight += 1;
        self.nodes[n].outcome = NodeOutcome::Running;
        self.nodes[n].stage = Stage::Running;
        self.run_from(n, now, out);
    }

    /// Move node `n` to its next step that applies and dispatch it, or finish the node.
    fn run_from(&mut self, n: usize, now: Millis, out: &mut Vec<Action>) {
        let steps = self.spec.plan.steps.len();
        loop {
            let pos = self.nodes[n].pos;
            if pos >= steps {
                self.finish_node(n, NodeOutcome::Succeeded, false, now, out);
                return;
            }
            let step = &self.spec.plan.steps[pos];
            let applies = match step.when {
                When::Always => true,
                When::OnSuccess => !self.nodes[n].had_failure,
                When::OnFailure => self.nodes[n].had_failure,
            };
            if !applies {
                self.nodes[n].steps[pos].status = StepStatus::Skipped;
                let detail = format!("when: {}", step.when);
                let id = self.node_id(n);
                self.emit(out, now, ProgressKind::StepSkipped, |p| {
                    p.node = Some(id);
                    p.step = Some(pos);
                    p.detail = Some(detail);
                });
                self.move_to(n, pos + 1, now, out);
                continue;
            }
            if step.barrier {
                let b = self.nodes[n].batch;
                if self.batches[b].reached[pos] < self.batches[b].size {
                    self.nodes[n].stage = Stage::AtBarrier;
                    return;
                }
            }
            self.dispatch(n, 1, now, out);
            return;
        }
    }

    fn dispatch(&mut self, n: usize, attempt: u32, now: Millis, out: &mut Vec<Action>) {
        let pos = self.nodes[n].pos;
        let timeout = self.spec.plan.steps[pos].timeout_or(self.spec.plan.timeout).as_millis();
        let node = &mut self.nodes[n];
        node.stage = Stage::Running;
        node.attempt = attempt;
        node.steps[pos].status = StepStatus::Running;
        node.steps[pos].attempts = attempt;
        let id = self.node_id(n);
        let deadline = now + timeout;
        out.push(Action::Dispatch { node: id.clone(), step: pos, attempt, timeout_ms: timeout, deadline });
        out.push(Action::SetTimer {
            at: deadline + self.cfg.deadline_grace_ms,
            timer: Timer::StepDeadline { node: n, step: pos, attempt },
        });
        self.emit(out, now, ProgressKind::StepStarted, |p| {
            p.node = Some(id);
            p.step = Some(pos);
            p.attempt = Some(attempt);
        });
    }

    /// Advance node `n`'s position, keeping the barrier counts.
    fn move_to(&mut self, n: usize, to: usize, now: Millis, out: &mut Vec<Action>) {
        let from = self.nodes[n].pos;
        if to <= from {
            return;
        }
        self.nodes[n].pos = to;
        let b = self.nodes[n].batch;
        let mut released = Vec::new();
        for i in from + 1..=to {
            self.batches[b].reached[i] += 1;
            if self.batches[b].reached[i] == self.batches[b].size
                && i < self.spec.plan.steps.len()
                && self.spec.plan.steps[i].barrier
            {
                released.push(i);
            }
        }
        if matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout)) {
            return; // nothing new starts; nodes at the barrier are being cancelled
        }
        for i in released {
            for &m in &self.spec.batches[b].clone() {
                if m != n && self.nodes[m].stage == Stage::AtBarrier && self.nodes[m].pos == i {
                    self.dispatch(m, 1, now, out);
                }
            }
        }
    }

    // ----- results ----------------------------------------------------------------------

    fn lookup(&self, node: &str) -> Option<usize> {
        self.index.get(node).copied()
    }

    fn stale(&mut self, node: &str, step: usize, attempt: Option<u32>, why: &str, now: Millis, out: &mut Vec<Action>) {
        let why = why.to_string();
        self.emit(out, now, ProgressKind::StaleResultIgnored, |p| {
            p.node = Some(node.to_string());
            p.step = Some(step);
            p.attempt = attempt;
            p.detail = Some(why);
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn step_result(
        &mut self,
        node: &str,
        step: usize,
        attempt: u32,
        outcome: AttemptOutcome,
        metadata: Value,
        error: Option<String>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(n) = self.lookup(node) else {
            return self.stale(node, step, Some(attempt), "not a node of this job", now, out);
        };
        let nr = &self.nodes[n];
        if nr.stage != Stage::Running || nr.pos != step || nr.attempt != attempt {
            return self.stale(node, step, Some(attempt), "not the running attempt", now, out);
        }
        self.settle_attempt(n, outcome, metadata, error, now, out);
    }

    /// The running attempt of node `n` ended with `outcome`.
    fn settle_attempt(
        &mut self,
        n: usize,
        outcome: AttemptOutcome,
        metadata: Value,
        error: Option<String>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let pos = self.nodes[n].pos;
        let attempt = self.nodes[n].attempt;
        let id = self.node_id(n);
        let kind = match outcome {
            AttemptOutcome::Succeeded => ProgressKind::StepSucceeded,
            AttemptOutcome::Failed => ProgressKind::StepFailed,
            AttemptOutcome::TimedOut => ProgressKind::StepTimedOut,
            AttemptOutcome::Cancelled => ProgressKind::StepCancelled,
        };
        let detail = error.clone();
        self.emit(out, now, kind, |p| {
            p.node = Some(id.clone());
            p.step = Some(pos);
            p.attempt = Some(attempt);
            p.detail = detail;
        });
        let cancelling = self.nodes[n].cancel_sent;
        {
            let s = &mut self.nodes[n].steps[pos];
            s.error = error;
            s.status = match outcome {
                AttemptOutcome::Succeeded => StepStatus::Succeeded,
                AttemptOutcome::Failed => StepStatus::Failed,
                AttemptOutcome::TimedOut => StepStatus::TimedOut,
                AttemptOutcome::Cancelled => StepStatus::Cancelled,
            };
            if outcome == AttemptOutcome::Succeeded {
                s.metadata = metadata;
            }
        }
        // Winding down after cancel or job timeout: the node stops here.
        if cancelling || matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout)) {
            self.nodes[n].cancel_sent = false;
            let o = match (outcome, self.stop) {
                (AttemptOutcome::Failed, _) => NodeOutcome::Failed,
                (AttemptOutcome::TimedOut, _) | (_, Some(Stop::JobTimeout)) => NodeOutcome::TimedOut,
                _ => NodeOutcome::Cancelled,
            };
            // Only a step that really failed counts; one stopped by the cancel or the job
            // deadline does not (the budget no longer decides anything).
            let counts = o == NodeOutcome::Failed;
            self.finish_node(n, o, counts, now, out);
            return;
        }
        if outcome == AttemptOutcome::Succeeded {
            self.move_to(n, pos + 1, now, out);
            self.run_from(n, now, out);
            return;
        }
        let step = &self.spec.plan.steps[pos];
        if attempt <= step.retries {
            let delay = backoff(step.retry_backoff.as_millis(), step.retry_max.as_millis(), attempt);
            self.nodes[n].stage = Stage::Retrying;
            out.push(Action::SetTimer {
                at: now + delay,
                timer: Timer::Retry { node: n, step: pos, attempt: attempt + 1 },
            });
            self.emit(out, now, ProgressKind::RetryScheduled, |p| {
                p.node = Some(id);
                p.step = Some(pos);
                p.attempt = Some(attempt + 1);
                p.detail = Some(format!("in {delay}ms"));
            });
            return;
        }
        if step.on_error == OnError::Continue {
            self.nodes[n].had_failure = true;
            self.move_to(n, pos + 1, now, out);
            self.run_from(n, now, out);
            return;
        }
        let failure = if outcome == AttemptOutcome::TimedOut { NodeOutcome::TimedOut } else { NodeOutcome::Failed };
        self.fail_node(n, failure, now, out);
    }

    /// Node `n` failed: undo its own steps if the plan says so, and count it.
    fn fail_node(&mut self, n: usize, failure: NodeOutcome, now: Millis, out: &mut Vec<Action>) {
        self.nodes[n].failure = Some(failure);
        self.failed += 1;
        let undo = self.completed_steps(n);
        if self.spec.plan.rollout.rollback_failed_nodes
            && !undo.is_empty()
            && self.stop.is_none_or(|s| !matches!(s, Stop::Cancel | Stop::JobTimeout))
        {
            self.nodes[n].outcome = failure;
            self.nodes[n].stage = Stage::RollingBack;
            self.nodes[n].undo = undo;
            self.check_budget(now, out);
            self.next_undo(n, now, out);
        } else {
            self.finish_node(n, failure, false, now, out);
            self.check_budget(now, out);
        }
    }

    /// Steps of node `n` that succeeded and are not undone, in the order to undo them
    /// (the next one last).
    fn completed_steps(&self, n: usize) -> Vec<usize> {
        self.nodes[n]
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.status == StepStatus::Succeeded)
            .map(|(i, _)| i)
            .collect()
    }

    /// Mark node `n` done with `outcome`; `counts` adds it to the failed nodes.
    fn finish_node(&mut self, n: usize, outcome: NodeOutcome, counts: bool, now: Millis, out: &mut Vec<Action>) {
        if self.nodes[n].stage == Stage::Done {
            return;
        }
        if self.nodes[n].stage != Stage::Pending {
            self.in_flight -= 1;
        }
        self.done += 1;
        if counts {
            self.failed += 1;
            if self.nodes[n].failure.is_none()
                && matches!(outcome, NodeOutcome::Failed | NodeOutcome::TimedOut | NodeOutcome::Unreachable)
            {
                self.nodes[n].failure = Some(outcome);
            }
        }
        let node = &mut self.nodes[n];
        node.stage = Stage::Done;
        node.outcome = outcome;
        node.cancel_sent = false;
        let steps = self.spec.plan.steps.len();
        let b = node.batch;
        self.batches[b].done += 1;
        let id = self.node_id(n);
        self.emit(out, now, ProgressKind::NodeFinished, |p| {
            p.node = Some(id);
            p.batch = Some(b + 1);
            p.detail = Some(outcome.as_str().into());
        });
        self.move_to(n, steps, now, out);
    }

    fn check_budget(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(limit) = self.limit else { return };
        if self.failed <= limit
            || self.stop.is_some()
            || self.pause == Some(Pause::Budget)
            || self.phase != Phase::Running
        {
            return;
        }
        let failed = self.failed;
        let policy = self.spec.plan.rollout.on_budget_exceeded;
        self.reason = Some(format!("failure budget exceeded: {failed} failed nodes > max_failures {limit}"));
        self.emit(out, now, ProgressKind::BudgetExceeded, |p| {
            p.detail = Some(format!("{failed} failed > {limit}; {policy}"))
        });
        match policy {
            OnBudgetExceeded::Pause => {
                self.pause = Some(Pause::Budget);
                self.emit(out, now, ProgressKind::Paused, |p| p.detail = Some("failure budget".into()));
            }
            other => self.begin_stop(Stop::Budget(other), now, out),
        }
    }

    /// No new node starts from now on: the ones not started are skipped.
    fn begin_stop(&mut self, stop: Stop, now: Millis, out: &mut Vec<Action>) {
        self.stop = Some(stop);
        self.pause = None;
        for n in 0..self.nodes.len() {
            if self.nodes[n].stage == Stage::Pending && self.nodes[n].outcome == NodeOutcome::Pending {
                self.finish_node(n, NodeOutcome::Skipped, false, now, out);
            }
        }
        self.next_node = self.nodes.len();
    }

    /// Cancel a job that never started (it waited in a queue): every node is skipped and
    /// nothing is dispatched.
    fn cancel_before_start(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.emit(out, now, ProgressKind::CancelRequested, |p| {
            p.detail = Some("operator, before the job started".into())
        });
        self.stop = Some(Stop::Cancel);
        for n in 0..self.nodes.len() {
            self.finish_node(n, NodeOutcome::Skipped, false, now, out);
        }
        self.finish(JobStatus::Cancelled, Some("cancelled by operator before it started".into()), now, out);
    }

    fn cancel(&mut self, why: Stop, now: Millis, out: &mut Vec<Action>) {
        let detail = if why == Stop::JobTimeout { "job timeout" } else { "operator" };
        self.emit(out, now, ProgressKind::CancelRequested, |p| p.detail = Some(detail.into()));
        self.begin_stop(why, now, out);
        self.rollback_queue.clear();
        let mut waiting = false;
        for n in 0..self.nodes.len() {
            match self.nodes[n].stage {
                Stage::Running => {
                    let (step, attempt) = (self.nodes[n].pos, self.nodes[n].attempt);
                    self.nodes[n].cancel_sent = true;
                    out.push(Action::CancelStep { node: self.node_id(n), step, attempt });
                    waiting = true;
                }
                // A running undo is left to finish (killing half an undo helps nobody);
                // no further undo starts.
                Stage::RollingBack => waiting = true,
                Stage::Retrying | Stage::AtBarrier => {
                    let o = if why == Stop::JobTimeout { NodeOutcome::TimedOut } else { NodeOutcome::Cancelled };
                    self.finish_node(n, o, false, now, out);
                }
                Stage::Pending | Stage::Done => {}
            }
        }
        if waiting {
            out.push(Action::SetTimer { at: now + self.cfg.cancel_grace_ms, timer: Timer::CancelGrace });
        }
    }

    fn node_lost(&mut self, node: &str, reason: String, now: Millis, out: &mut Vec<Action>) {
        let Some(n) = self.lookup(node) else {
            return self.stale(node, 0, None, "not a node of this job", now, out);
        };
        let stage = self.nodes[n].stage;
        if stage == Stage::Done {
            return;
        }
        let id = self.node_id(n);
        self.emit(out, now, ProgressKind::NodeLost, |p| {
            p.node = Some(id);
            p.detail = Some(reason);
        });
        match stage {
            Stage::RollingBack => {
                if let Some(s) = self.nodes[n].undoing.take() {
                    self.nodes[n].steps[s].status = StepStatus::RollbackFailed;
                }
                self.nodes[n].undo.clear();
                self.end_rollback(n, NodeOutcome::RollbackFailed, now, out);
            }
            _ => {
                if stage == Stage::Running {
                    let pos = self.nodes[n].pos;
                    self.nodes[n].steps[pos].status = StepStatus::Unknown;
                }
                self.finish_node(n, NodeOutcome::Unreachable, true, now, out);
                self.check_budget(now, out);
            }
        }
    }

    fn timer(&mut self, timer: Timer, now: Millis, out: &mut Vec<Action>) {
        match timer {
            Timer::StepDeadline { node, step, attempt } => {
                let Some(nr) = self.nodes.get(node) else { return };
                if nr.stage == Stage::Running && nr.pos == step && nr.attempt == attempt {
                    out.push(Action::CancelStep { node: self.node_id(node), step, attempt });
                    let err = Some("no result by the deadline".to_string());
                    self.settle_attempt(node, AttemptOutcome::TimedOut, Value::Null, err, now, out);
                }
            }
            Timer::Retry { node, step, attempt } => {
                let Some(nr) = self.nodes.get(node) else { return };
                if nr.stage == Stage::Retrying && nr.pos == step && nr.attempt + 1 == attempt {
                    self.dispatch(node, attempt, now, out);
                }
            }
            Timer::RollbackDeadline { node, step } => {
                let Some(nr) = self.nodes.get(node) else { return };
                if nr.stage == Stage::RollingBack && nr.undoing == Some(step) {
                    self.undo_done(node, step, false, Some("no result by the deadline".into()), now, out);
                }
            }
            Timer::BatchDelay { batch } => {
                if self.delay_pending == Some(batch) {
                    self.delay_pending = None;
                    self.delay_done.insert(batch);
                }
            }
            Timer::JobTimeout => {
                // A fleet rollback is repair work: the job deadline does not interrupt it,
                // nor the wait for in-flight nodes before a planned one.
                let rollback_planned =
                    matches!(self.stop, Some(Stop::Rollback | Stop::Budget(OnBudgetExceeded::Rollback)));
                if self.phase == Phase::Running
                    && !rollback_planned
                    && !matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout))
                {
                    self.cancel(Stop::JobTimeout, now, out);
                }
            }
            Timer::CancelGrace => {
                for n in 0..self.nodes.len() {
                    if self.nodes[n].cancel_sent && self.nodes[n].stage == Stage::Running {
                        let pos = self.nodes[n].pos;
                        self.nodes[n].steps[pos].status = StepStatus::Unknown;
                        self.finish_node(n, NodeOutcome::Unknown, false, now, out);
                    }
                }
            }
        }
    }

    // ----- rollback -----------------------------------------------------------------------

    fn begin_fleet_rollback(&mut self, now: Millis, out: &mut Vec<Action>) {
        self.phase = Phase::RollingBack;
        let keep_failed = !self.spec.plan.rollout.rollback_failed_nodes;
        let mut queue = VecDeque::new();
        for n in 0..self.nodes.len() {
            let nr = &self.nodes[n];
            if matches!(
                nr.outcome,
                NodeOutcome::Unreachable | NodeOutcome::RolledBack | NodeOutcome::RollbackFailed | NodeOutcome::Unknown
            ) {
                continue;
            }
            if keep_failed && nr.failure.is_some() {
                continue;
            }
            if nr.steps.iter().any(|s| s.status == StepStatus::Succeeded) {
                queue.push_back(n);
            }
        }
        let count = queue.len();
        if count == 0 {
            // Nothing changed anywhere: there is nothing to undo, and the job failed.
            let why = self.reason.clone().unwrap_or_else(|| "rollback requested".into());
            self.finish(
                JobStatus::Failed,
                Some(format!("{why}; no node had completed a step, nothing to roll back")),
                now,
                out,
            );
            return;
        }
        self.rollback_queue = queue;
        self.emit(out, now, ProgressKind::RollbackStarted, |p| {
            p.detail = Some(format!("{} to roll back", crate::count(count, "node", "nodes")))
        });
        self.pump_rollback(now, out);
    }

    fn pump_rollback(&mut self, now: Millis, out: &mut Vec<Action>) {
        let limit = self.spec.max_batch();
        while self.rolling_back < limit {
            let Some(n) = self.rollback_queue.pop_front() else { break };
            self.rolling_back += 1;
            self.in_flight += 1;
            self.nodes[n].stage = Stage::RollingBack;
            self.nodes[n].in_fleet_rollback = true;
            self.nodes[n].undo = self.completed_steps(n);
            self.next_undo(n, now, out);
        }
        if self.rolling_back == 0 && self.rollback_queue.is_empty() {
            let failed = self.nodes.iter().filter(|n| n.outcome == NodeOutcome::RollbackFailed).count();
            if failed == 0 {
                let r = self.reason.clone();
                self.finish(JobStatus::RolledBack, r, now, out);
            } else {
                self.finish(
                    JobStatus::Failed,
                    Some(format!("rollback failed on {}", crate::count(failed, "node", "nodes"))),
                    now,
                    out,
                );
            }
        }
    }

    /// Dispatch the next undo of node `n`, or finish its rollback.
    fn next_undo(&mut self, n: usize, now: Millis, out: &mut Vec<Action>) {
        let Some(step) = self.nodes[n].undo.pop() else {
            let o = NodeOutcome::RolledBack;
            self.end_rollback(n, o, now, out);
            return;
        };
        let s = &self.spec.plan.steps[step];
        let timeout =
            s.rollback.as_ref().and_then(|r| r.timeout).unwrap_or(s.timeout_or(self.spec.plan.timeout)).as_millis();
        let deadline = now + timeout;
        self.nodes[n].undoing = Some(step);
        self.nodes[n].steps[step].status = StepStatus::RollingBack;
        let metadata = self.nodes[n].steps[step].metadata.clone();
        let id = self.node_id(n);
        out.push(Action::Rollback { node: id.clone(), step, metadata, timeout_ms: timeout, deadline });
        out.push(Action::SetTimer {
            at: deadline + self.cfg.deadline_grace_ms,
            timer: Timer::RollbackDeadline { node: n, step },
        });
        self.emit(out, now, ProgressKind::RollbackStepStarted, |p| {
            p.node = Some(id);
            p.step = Some(step);
        });
    }

    fn rollback_result(
        &mut self,
        node: &str,
        step: usize,
        ok: bool,
        error: Option<String>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        let Some(n) = self.lookup(node) else {
            return self.stale(node, step, None, "not a node of this job", now, out);
        };
        if self.nodes[n].stage != Stage::RollingBack || self.nodes[n].undoing != Some(step) {
            return self.stale(node, step, None, "not the running rollback", now, out);
        }
        self.undo_done(n, step, ok, error, now, out);
    }

    fn undo_done(
        &mut self,
        n: usize,
        step: usize,
        ok: bool,
        error: Option<String>,
        now: Millis,
        out: &mut Vec<Action>,
    ) {
        self.nodes[n].undoing = None;
        let id = self.node_id(n);
        let detail = error.clone();
        self.emit(
            out,
            now,
            if ok { ProgressKind::RollbackStepSucceeded } else { ProgressKind::RollbackStepFailed },
            |p| {
                p.node = Some(id);
                p.step = Some(step);
                p.detail = detail;
            },
        );
        let s = &mut self.nodes[n].steps[step];
        if ok {
            s.status = StepStatus::RolledBack;
        } else {
            s.status = StepStatus::RollbackFailed;
            s.error = error;
        }
        if !ok {
            // Undoing earlier steps after a failed undo could make things worse: stop here.
            self.nodes[n].undo.clear();
            self.end_rollback(n, NodeOutcome::RollbackFailed, now, out);
        } else if matches!(self.stop, Some(Stop::Cancel | Stop::JobTimeout)) {
            // Cancelled: no further undo starts. A node whose undo was cut short is
            // `cancelled`, with its step statuses showing how far the undo got.
            let o = if self.nodes[n].undo.is_empty() { NodeOutcome::RolledBack } else { NodeOutcome::Cancelled };
            self.nodes[n].undo.clear();
            self.end_rollback(n, o, now, out);
        } else {
            self.next_undo(n, now, out);
        }
    }

    fn end_rollback(&mut self, n: usize, outcome: NodeOutcome, now: Millis, out: &mut Vec<Action>) {
        if !self.nodes[n].in_fleet_rollback {
            // A failed node undoing its own steps: this ends the node.
            self.finish_node(n, outcome, false, now, out);
            return;
        }
        // A node the fleet rollback re-opened: it was done before, close it again.
        self.rolling_back -= 1;
        self.in_flight -= 1;
        let node = &mut self.nodes[n];
        node.in_fleet_rollback = false;
        node.stage = Stage::Done;
        node.outcome = outcome;
        let id = self.node_id(n);
        self.emit(out, now, ProgressKind::NodeFinished, |p| {
            p.node = Some(id);
            p.detail = Some(outcome.as_str().into());
        });
    }

    fn finish(&mut self, status: JobStatus, reason: Option<String>, now: Millis, out: &mut Vec<Action>) {
        self.phase = Phase::Done(status);
        self.finished_at = Some(now);
        self.reason = reason.clone();
        self.pause = None;
        self.emit(out, now, ProgressKind::JobFinished, |p| p.detail = Some(status.as_str().into()));
        out.push(Action::Finish { status, reason });
    }
}

/// Delay before attempt `attempt + 1`: `base`, doubling per attempt, capped at `max`.
pub fn backoff(base: u64, max: u64, attempt: u32) -> u64 {
    let shift = attempt.saturating_sub(1).min(40);
    base.saturating_mul(1u64 << shift).min(max)
}
