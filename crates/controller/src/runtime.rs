//! The controller's job runtime: one task owns every job's engine state and is fed
//! inputs (submissions, results, timers, operator commands, lost nodes) through a
//! channel. Each round takes every input waiting, applies them to the engines, writes
//! the journal and progress to JetStream and waits for the acks (group commit), and only
//! then carries out the engines' actions and acknowledges the results it consumed.

use crate::config::ControllerConfig;
use crate::dispatch;
use crate::lease::Term;
use crate::metrics::Metrics;
use crate::registry::Registry;
use async_nats::jetstream;
use bytes::Bytes;
use drover_bus::{Topology, now_ms};
use drover_core::api::{JobList, JobSummary, JobView, OperatorReply, PlanPreview};
use drover_core::engine::{
    Action, AttemptOutcome, EngineConfig, Event, Job, JobStatus, Millis, Progress, ProgressKind, Timer,
};
use drover_core::parse::{Format, PlanError, PlanErrors, parse_plan};
use drover_core::resolve::JobSpec;
use drover_core::wire::{
    ActionOffer, Command, CommandId, CommandKind, Lines, MAX_BATCH_BYTES, StepResult, split_lines,
};
use drover_core::{Catalog, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why an API request failed, mapped to an HTTP status by the API layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "refusal", content = "detail", rename_all = "snake_case")]
pub enum Refusal {
    Invalid(String, Vec<String>),
    NotFound(String),
    Conflict(String),
    Busy(String),
    Unavailable(String),
}

/// What a submission produced.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Submitted {
    Job(Box<JobView>),
    Preview(PlanPreview),
}

/// What [`Runtime::submit`] admitted; answered as [`Submitted`] once the round is
/// committed.
enum Admitted {
    /// A job, answered with its view as it is after the commit (finished jobs leave
    /// memory only after the round's answers, [`Runtime::evict`]).
    Job(String),
    Preview(PlanPreview),
}

/// An answer to send once the round is committed.
type Reply = Box<dyn FnOnce(&Runtime) + Send>;

/// Inputs to the runtime.
pub enum Input {
    Submit {
        text: String,
        format: Format,
        dry_run: bool,
        reply: oneshot::Sender<Result<Submitted, Refusal>>,
    },
    Operator {
        job: String,
        event: Event,
        reply: oneshot::Sender<Result<OperatorReply, Refusal>>,
    },
    Result {
        result: Box<StepResult>,
        msg: Option<Box<jetstream::Message>>,
    },
    /// A result message that cannot be used (malformed): acknowledged with the round.
    Unusable(Box<jetstream::Message>),
    Timer {
        job: String,
        timer: Timer,
    },
    Lost {
        job: String,
        node: String,
        reason: String,
    },
    Rejected {
        job: String,
        id: CommandId,
        reason: String,
    },
    Tick,
    Get {
        job: String,
        reply: oneshot::Sender<Option<JobView>>,
    },
    List {
        status: Option<JobStatus>,
        limit: usize,
        after: Option<String>,
        reply: oneshot::Sender<JobList>,
    },
    /// `None`: the job is not in memory; `Some(None)`: it is, without that node.
    NodeSteps {
        job: String,
        node: String,
        reply: oneshot::Sender<Option<Option<NodeSteps>>>,
    },
    Busy {
        reply: oneshot::Sender<BTreeMap<String, String>>,
    },
}

/// Jobs that finished within this long of the last one to finish get their progress
/// stream checked at a restart.
const RECENT_MS: u64 = 3_600_000;

/// After a restart, no rebuilt timer fires sooner than this: time for the results that
/// arrived while no controller ran to be read and applied first.
pub const RECOVERY_SETTLE: Duration = Duration::from_secs(2);

/// What [`Runtime::recover`] found and did.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Journal lines read.
    pub lines: usize,
    /// Lines that could not be used (logged).
    pub problems: usize,
    pub active: usize,
    pub queued: usize,
    pub finished: usize,
    /// Commands sent again with their original ids.
    pub resent: usize,
    /// Timers armed again.
    pub timers: usize,
    pub took: Duration,
}

/// A node's steps in a job, for `GET /v1/jobs/{id}/nodes/{node}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeSteps {
    pub report: drover_core::engine::NodeReport,
    pub actions: Vec<String>,
}

/// The API's view of a job.
pub fn job_view(job: &Job, created_at_ms: u64, waiting: Option<String>) -> JobView {
    JobView {
        report: job.report(),
        created_at_ms,
        waiting,
        excluded_offline: job.spec().excluded_offline.clone(),
        last_event: job.last_seq(),
    }
}

/// One node's steps in a job, if the node is one of its targets.
pub fn node_steps(job: &Job, node: &str) -> Option<NodeSteps> {
    let i = job.node_index(node)?;
    Some(NodeSteps {
        report: job.node_report(i),
        actions: job.spec().plan.steps.iter().map(|s| s.action.clone()).collect(),
    })
}

/// One line of a job's journal (`event.<job>.in`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalEntry {
    /// The frozen job, written when it is accepted (a job with no input yet is queued).
    Spec {
        spec: Box<JobSpec>,
        created_at_ms: u64,
        epoch: u64,
        /// The engine settings it runs with, so that a replay decides exactly as before.
        #[serde(default)]
        engine: EngineConfig,
    },
    /// An engine input with the time it was applied; `n` counts a job's inputs from 1,
    /// so a replay can drop a line written twice and keep the order. `epoch`: the lease
    /// term of the controller that wrote it (1 for lines written before leases).
    Input {
        n: u64,
        event: Event,
        now: Millis,
        #[serde(default = "first_epoch")]
        epoch: u64,
    },
    /// A controller took the lead under `epoch` (on [`Names::fence`], never a job's
    /// subject): every later line of an older epoch was written by a deposed leader and
    /// is ignored by replay.
    ///
    /// [`Names::fence`]: drover_core::wire::Names::fence
    Takeover { epoch: u64, owner: String, at_ms: u64 },
}

/// [`JournalEntry`] lines borrowing what they hold: what the runtime writes (the same
/// JSON, without a copy of a 1,000-node spec or of an event).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LineRef<'a> {
    Spec { spec: &'a JobSpec, created_at_ms: u64, epoch: u64, engine: EngineConfig },
    Input { n: u64, event: &'a Event, now: Millis, epoch: u64 },
}

fn first_epoch() -> u64 {
    1
}

impl JournalEntry {
    /// The lease term that wrote this line.
    pub fn epoch(&self) -> u64 {
        match self {
            JournalEntry::Spec { epoch, .. }
            | JournalEntry::Input { epoch, .. }
            | JournalEntry::Takeover { epoch, .. } => *epoch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Queued,
    Active,
    Done,
}

struct Entry {
    job: Job,
    stage: Stage,
    created_at_ms: u64,
    waiting: Option<String>,
    /// Nodes with work in flight (for liveness checks).
    active_nodes: BTreeSet<String>,
    /// Inputs journaled so far.
    inputs: u64,
}

impl Entry {
    /// The job's line in listings (without building its per-node report).
    fn summary(&self) -> JobSummary {
        let (started_at_ms, finished_at_ms) = self.job.times();
        JobSummary {
            id: self.job.spec().job_id.clone(),
            name: self.job.spec().plan.name.clone(),
            status: self.job.status(),
            reason: self.job.reason().map(str::to_string),
            created_at_ms: self.created_at_ms,
            started_at_ms,
            finished_at_ms,
            total_nodes: self.job.spec().nodes.len(),
            counts: self.job.counts(),
            waiting: self.waiting.clone(),
        }
    }
}

/// How a round's commit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Written and carried out.
    Acted,
    /// Written, but the term ended before anything was carried out (the next leader
    /// does that).
    Written,
    /// The term ended before all of it was written.
    Lost,
}

/// This term's takeover line in the journal.
#[derive(Debug, Clone)]
struct Fence {
    subject: String,
    seq: u64,
}

/// Work collected during a round, carried out after the journal is durable.
#[derive(Default)]
struct Round {
    /// Journal and progress lines.
    journal: Lines,
    /// Results that came in replies, stored for the record on `result.<job>.replied.batch`
    /// (results published by agents are in the results stream already).
    records: Lines,
    commands: Vec<Command>,
    cancels: Vec<CommandId>,
    timers: Vec<(String, Millis, Timer)>,
    /// Result messages whose effect this round journals, acknowledged after the commit.
    acks: Vec<jetstream::Message>,
    finished: Vec<String>,
}

pub struct Runtime {
    cfg: ControllerConfig,
    topo: Topology,
    client: async_nats::Client,
    registry: Registry,
    metrics: Metrics,
    tx: mpsc::Sender<Input>,
    jobs: BTreeMap<String, Entry>,
    /// Job ids, oldest first.
    order: Vec<String>,
    queue: VecDeque<String>,
    locks: BTreeMap<String, String>,
    /// This controller's lease term: its epoch goes on every command and journal line,
    /// and nothing is made durable or acted on once it is no longer valid.
    term: Term,
    /// This term's takeover line, which every journal write expects to be the last.
    fence: Option<Fence>,
    timers: crate::timers::Timers,
    /// Finished jobs still held in memory, oldest first (at most `cfg.retain_finished`).
    finished: VecDeque<String>,
    /// The last action catalog compiled, with the offers it was compiled from.
    catalog: Option<(BTreeMap<String, ActionOffer>, Arc<Catalog>)>,
    /// Which job summaries to write to the jobs bucket, and when.
    summary_writes: crate::summaries::SummaryWrites,
    /// When the last commit had sent its commands (for the round's debug line).
    acted_at: Option<std::time::Instant>,
}

impl Runtime {
    pub fn new(
        cfg: ControllerConfig,
        topo: Topology,
        client: async_nats::Client,
        registry: Registry,
        metrics: Metrics,
        tx: mpsc::Sender<Input>,
        term: Term,
    ) -> Runtime {
        Runtime {
            cfg,
            topo,
            client,
            registry,
            metrics,
            tx: tx.clone(),
            jobs: BTreeMap::new(),
            order: Vec::new(),
            queue: VecDeque::new(),
            locks: BTreeMap::new(),
            timers: crate::timers::Timers::start(tx.clone(), term.lost().clone()),
            term,
            fence: None,
            finished: VecDeque::new(),
            catalog: None,
            summary_writes: Default::default(),
            acted_at: None,
        }
    }

    /// Run until the channel closes.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        while let Some(first) = rx.recv().await {
            let taken = std::time::Instant::now();
            let mut round = Round::default();
            let mut replies: Vec<Reply> = Vec::new();
            self.take(first, &mut round, &mut replies);
            // Group commit: take whatever else is already waiting.
            for _ in 0..1024 {
                match rx.try_recv() {
                    Ok(input) => self.take(input, &mut round, &mut replies),
                    Err(_) => break,
                }
            }
            let t0 = std::time::Instant::now();
            let take_us = t0.duration_since(taken).as_micros() as u64;
            let (nj, nc, na) = (round.journal.len(), round.commands.len(), round.acks.len());
            let outcome = self.commit(round).await;
            if outcome == Commit::Lost {
                // Deposed while writing: what was written (if anything) is the next
                // leader's to act on. The callers are told the outcome is unknown.
                return;
            }
            tracing::debug!(
                journal = nj,
                commands = nc,
                acks = na,
                take_us,
                acted_us = self.acted_at.take().map_or(0, |t| t.duration_since(t0).as_micros() as u64),
                took_us = t0.elapsed().as_micros() as u64,
                "round"
            );
            for r in replies {
                r(&self);
            }
            self.evict();
            if outcome == Commit::Written {
                // Durable, so the answers hold; the next leader acts on it.
                return;
            }
        }
    }

    /// Write this term's takeover line to the journal (and wait until it is stored).
    /// Every journal write of this term is then conditional on it still being the last
    /// takeover line, so once a newer leader has written its own, the stream refuses this
    /// term's writes (and replay ignores any older-epoch line after a newer takeover).
    async fn fence(&mut self) -> Result<(), drover_bus::BusError> {
        let line = JournalEntry::Takeover { epoch: self.term.epoch, owner: self.cfg.id.clone(), at_ms: now_ms() };
        let bytes = serde_json::to_vec(&line).unwrap_or_default();
        let subject = self.topo.names.fence();
        let failed = |e: &dyn std::fmt::Display| drover_bus::BusError::Publish {
            subject: self.topo.names.fence(),
            message: e.to_string(),
        };
        let ack = self.topo.js.publish(subject.clone(), bytes.into()).await.map_err(|e| failed(&e))?;
        let ack = ack.await.map_err(|e| failed(&e))?;
        self.fence = Some(Fence { subject, seq: ack.sequence });
        Ok(())
    }

    /// Rebuild every job from the journal (after a restart or a crash) and carry on where
    /// the previous controller stopped: commands that were in flight are sent again with
    /// the same ids (agents answer from their journals instead of running them twice),
    /// pending timers are armed at their original times, progress that was journaled but
    /// not published is published, and queued jobs start when they can.
    pub async fn recover(&mut self) -> Result<Recovery, drover_bus::BusError> {
        let started = std::time::Instant::now();
        self.fence().await?;
        let names = self.topo.names.clone();
        let lines = drover_bus::read_all(&self.topo.js, &names.events_stream(), &names.all_job_inputs()).await?;
        let read = lines.len();
        let mut problems = crate::recovery::Problems::default();
        let rebuilt = crate::recovery::rebuild(&names, lines, &mut problems);
        for p in &problems.0 {
            tracing::warn!("recovery: {p}");
        }
        let now = now_ms();
        // "Recent" is measured from the last job that finished, not from now: after a long
        // outage the jobs that finished just before it are the ones that may lack progress.
        let latest = rebuilt.iter().filter_map(|r| r.job.times().1).max().unwrap_or(now);
        let mut round = Round::default();
        let mut report = Recovery { lines: read, problems: problems.0.len(), ..Recovery::default() };
        for r in rebuilt {
            let stage = if !r.started() {
                Stage::Queued
            } else if r.job.status().is_final() {
                Stage::Done
            } else {
                Stage::Active
            };
            // A job that finished long ago has long been watched to its end; the check is a
            // round trip per job, so only unfinished and recently finished jobs get it.
            let recent = r.job.times().1.is_none_or(|t| latest.saturating_sub(t) < RECENT_MS);
            if recent {
                self.republish_missing_progress(&r.id, &r.progress, &mut round).await;
            }
            let mut entry = Entry {
                job: r.job,
                stage,
                created_at_ms: r.created_at_ms,
                waiting: None,
                active_nodes: BTreeSet::new(),
                inputs: r.inputs,
            };
            let mut actions = Vec::new();
            match stage {
                Stage::Queued => {
                    report.queued += 1;
                    self.queue.push_back(r.id.clone());
                }
                Stage::Done => report.finished += 1,
                Stage::Active => {
                    report.active += 1;
                    if !entry.job.spec().plan.rollout.share_nodes {
                        for n in &entry.job.spec().nodes {
                            self.locks.insert(n.id.clone(), r.id.clone());
                        }
                    }
                    actions = entry.job.in_flight_commands(now);
                    report.resent += actions.len();
                    report.timers += r.timers.len();
                    let settle = now + RECOVERY_SETTLE.as_millis() as u64;
                    let grace = self.cfg.engine.deadline_grace_ms;
                    let timers = crate::recovery::settle_timers(&entry.job, &actions, r.timers, settle, grace);
                    actions.extend(timers.into_iter().map(|(at, timer)| Action::SetTimer { at, timer }));
                    entry.active_nodes = r.active_nodes;
                }
            }
            self.jobs.insert(r.id.clone(), entry);
            self.order.push(r.id.clone());
            self.perform(&r.id, actions, now, &mut round);
            if stage == Stage::Done {
                self.retire(r.id);
            } else {
                self.summary_writes.touch(&r.id);
            }
        }
        self.start_queued(now, &mut round);
        if self.commit(round).await == Commit::Lost {
            return Err(drover_bus::BusError::JetStream {
                what: "recovery".into(),
                message: "the lease was lost while recovering".into(),
            });
        }
        self.evict();
        report.took = started.elapsed();
        if report.lines > 0 {
            tracing::info!(
                active = report.active,
                queued = report.queued,
                finished = report.finished,
                resent = report.resent,
                timers = report.timers,
                lines = report.lines,
                took_ms = report.took.as_millis() as u64,
                "recovered jobs from the journal"
            );
        }
        Ok(report)
    }

    /// A job has finished: keep it in memory among the most recent finished ones (the
    /// oldest beyond `retain_finished` leave at the end of the round, [`Runtime::evict`]).
    fn retire(&mut self, id: String) {
        self.finished.push_back(id);
    }

    /// Finished jobs beyond the `retain_finished` most recent leave memory (their journal
    /// and results stay in JetStream, and the API rebuilds them from there when asked).
    /// Called once a round's answers are sent, so that every job a round answers about
    /// (a submission that failed at once, say) is still there to answer with.
    fn evict(&mut self) {
        while self.finished.len() > self.cfg.retain_finished {
            let Some(old) = self.finished.pop_front() else { break };
            self.jobs.remove(&old);
            self.order.retain(|j| *j != old);
        }
    }

    /// Publish the progress events a replay produced that the progress stream lacks (the
    /// previous controller died between journaling an input and publishing its progress).
    async fn republish_missing_progress(&self, id: &str, progress: &[Progress], round: &mut Round) {
        let Some(last) = progress.last() else { return };
        let subject = self.topo.names.job_progress(id);
        let stored = match self.topo.js.get_stream(self.topo.names.events_stream()).await {
            Ok(stream) => match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => split_lines(&m.payload)
                    .filter_map(|l| serde_json::from_slice::<Progress>(l).ok())
                    .map(|p| p.seq)
                    .max()
                    .unwrap_or(0),
                Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
                // Not known: publishing everything again would repeat events to watchers.
                Err(e) => {
                    tracing::warn!(job = id, "cannot check the job's progress stream: {e}");
                    return;
                }
            },
            Err(_) => return,
        };
        if stored >= last.seq {
            return;
        }
        for p in progress.iter().filter(|p| p.seq > stored) {
            if let Err(e) = round.journal.push(&subject, p) {
                tracing::warn!(job = id, "cannot encode a progress event: {e}");
            }
        }
    }

    fn take(&mut self, input: Input, round: &mut Round, replies: &mut Vec<Reply>) {
        let now = now_ms();
        match input {
            Input::Submit { text, format, dry_run, reply } => {
                let r = self.submit(&text, format, dry_run, now, round);
                // Reply after the commit so that a 201 means the job is journaled.
                replies.push(Box::new(move |rt: &Runtime| {
                    let r = r.and_then(|a| match a {
                        Admitted::Job(id) => match rt.view(&id) {
                            Some(v) => Ok(Submitted::Job(Box::new(v))),
                            None => Err(Refusal::Unavailable(format!("job {id} was accepted but is not in memory"))),
                        },
                        Admitted::Preview(p) => Ok(Submitted::Preview(p)),
                    });
                    let _ = reply.send(r);
                }));
            }
            Input::Operator { job, event, reply } => {
                let name = event.name();
                let r = match self.jobs.get(&job).map(|e| e.stage) {
                    None => Err(Refusal::NotFound(format!("no job {job}"))),
                    Some(Stage::Queued) if matches!(event, Event::Cancel) => {
                        self.cancel_queued(&job, now, round);
                        Ok(())
                    }
                    Some(Stage::Queued) => {
                        Err(Refusal::Conflict(format!("cannot {name}: the job is queued and has not started")))
                    }
                    Some(_) => self.apply(&job, event, now, round).map_err(|e| Refusal::Conflict(e.to_string())),
                };
                // The status it leads to, for a job that finishes and leaves memory in the
                // same round (too many finished jobs retained) before the answer is sent.
                let status_now = self.jobs.get(&job).map(|e| e.job.status()).unwrap_or(JobStatus::Pending);
                replies.push(Box::new(move |rt: &Runtime| {
                    let r = r.map(|_| OperatorReply {
                        job_id: job.clone(),
                        accepted: name.to_string(),
                        status: rt.jobs.get(&job).map_or(status_now, |e| e.job.status()),
                    });
                    let _ = reply.send(r);
                }));
            }
            Input::Result { result, msg } => {
                self.metrics.results.inc();
                if msg.is_none()
                    && self.jobs.contains_key(&result.id.job)
                    && let Err(e) = round.records.push(&self.topo.names.replied_results(&result.id.job), &result)
                {
                    tracing::warn!(key = %result.id.key(), "cannot encode a replied result: {e}");
                }
                let id = &result.id;
                let event = match id.kind {
                    CommandKind::Run => Event::StepResult {
                        node: id.node.clone(),
                        step: id.step,
                        attempt: id.attempt,
                        outcome: result.outcome,
                        metadata: result.metadata.clone(),
                        error: result.error.clone(),
                    },
                    CommandKind::Rollback => Event::RollbackResult {
                        node: id.node.clone(),
                        step: id.step,
                        ok: result.outcome == AttemptOutcome::Succeeded,
                        error: result.error.clone(),
                    },
                };
                if self.jobs.get(&id.job).is_some_and(|e| e.stage == Stage::Active) {
                    let job = id.job.clone();
                    let _ = self.apply(&job, event, now, round);
                }
                if let Some(m) = msg {
                    round.acks.push(*m);
                }
            }
            Input::Unusable(m) => round.acks.push(*m),
            Input::Timer { job, timer } => {
                if self.jobs.get(&job).is_some_and(|e| e.stage == Stage::Active) {
                    let _ = self.apply(&job, Event::Timer { timer }, now, round);
                }
            }
            Input::Lost { job, node, reason } => {
                if self.jobs.get(&job).is_some_and(|e| e.stage == Stage::Active && e.active_nodes.contains(&node)) {
                    let _ = self.apply(&job, Event::NodeLost { node, reason }, now, round);
                }
            }
            Input::Rejected { job, id, reason } => {
                if self.jobs.get(&job).is_some_and(|e| e.stage == Stage::Active) {
                    let error = Some(format!("refused by the agent: {reason}"));
                    let event = match id.kind {
                        CommandKind::Run => Event::StepResult {
                            node: id.node,
                            step: id.step,
                            attempt: id.attempt,
                            outcome: AttemptOutcome::Failed,
                            metadata: serde_json::Value::Null,
                            error,
                        },
                        CommandKind::Rollback => {
                            Event::RollbackResult { node: id.node, step: id.step, ok: false, error }
                        }
                    };
                    let _ = self.apply(&job, event, now, round);
                }
            }
            Input::Tick => self.check_liveness(now, round),
            // Reads are answered after the round's commit, like submissions: nobody sees a
            // state that is not durable yet (a crash could still take it back).
            Input::Get { job, reply } => {
                replies.push(Box::new(move |rt: &Runtime| {
                    let _ = reply.send(rt.view(&job));
                }));
            }
            Input::List { status, limit, after, reply } => {
                replies.push(Box::new(move |rt: &Runtime| {
                    let _ = reply.send(rt.list(status, limit, after));
                }));
            }
            Input::NodeSteps { job, node, reply } => {
                replies.push(Box::new(move |rt: &Runtime| {
                    let _ = reply.send(rt.jobs.get(&job).map(|e| node_steps(&e.job, &node)));
                }));
            }
            Input::Busy { reply } => {
                let _ = reply.send(self.locks.clone());
            }
        }
    }

    // ----- submission and admission ----------------------------------------------------

    fn submit(
        &mut self,
        text: &str,
        format: Format,
        dry_run: bool,
        now: u64,
        round: &mut Round,
    ) -> Result<Admitted, Refusal> {
        let invalid =
            |e: PlanErrors| Refusal::Invalid("invalid plan".into(), e.0.iter().map(PlanError::to_string).collect());
        if !self.registry.loaded() {
            return Err(Refusal::Unavailable(
                "the controller is still reading the node registry; retry in a moment".into(),
            ));
        }
        let offers = self.registry.catalog();
        let catalog = self.catalog_of(&offers)?;
        let plan = parse_plan(text, format, Some(catalog.as_ref())).map_err(|e| {
            if offers.is_empty() {
                let mut e = e;
                e.0.push(PlanError {
                    path: String::new(),
                    message: "no node has registered yet: start an agent (or `drover dev`)".into(),
                });
                invalid(e)
            } else {
                invalid(e)
            }
        })?;
        let job_id = uuid::Uuid::now_v7().to_string();
        let fleet = self.registry.fleet(now);
        let spec = JobSpec::build(&job_id, &plan, &fleet).map_err(invalid)?;
        self.check_offers(&plan, &spec).map_err(invalid)?;
        if dry_run {
            let ids = |v: &[usize]| v.iter().map(|&n| spec.nodes[n].id.clone()).collect::<Vec<_>>();
            return Ok(Admitted::Preview(PlanPreview {
                name: plan.name.clone(),
                targets: spec.nodes.iter().map(|n| n.id.clone()).collect(),
                offline: spec.nodes.iter().filter(|n| n.offline).map(|n| n.id.clone()).collect(),
                excluded_offline: spec.excluded_offline.clone(),
                batches: spec.batches.iter().map(|b| ids(b)).collect(),
                max_failures: spec.failure_limit,
                steps: plan.steps.iter().map(|s| s.name.clone()).collect(),
            }));
        }
        let can_start = self.blocker(&spec).is_none();
        if !can_start && self.queue.len() >= self.cfg.max_pending {
            return Err(Refusal::Busy(format!(
                "the job queue is full: {} jobs are waiting (max_pending {}); retry when some have started",
                self.queue.len(),
                self.cfg.max_pending
            )));
        }
        self.metrics.jobs_submitted.inc();
        let job = Job::new(spec, self.cfg.engine);
        let line =
            LineRef::Spec { spec: job.spec(), created_at_ms: now, epoch: self.term.epoch, engine: self.cfg.engine };
        if let Err(e) = round.journal.push(&self.topo.names.job_inputs(&job_id), &line) {
            return Err(Refusal::Unavailable(format!("cannot journal the job: {e}")));
        }
        let entry = Entry {
            job,
            stage: Stage::Queued,
            created_at_ms: now,
            waiting: None,
            active_nodes: BTreeSet::new(),
            inputs: 0,
        };
        self.jobs.insert(job_id.clone(), entry);
        self.order.push(job_id.clone());
        self.queue.push_back(job_id.clone());
        self.start_queued(now, round);
        self.summary_writes.touch(&job_id);
        // Answered with the job's view after the commit (`take`).
        Ok(Admitted::Job(job_id))
    }

    /// The fleet's action catalog (its schemas compiled), compiled again only when the
    /// offers changed since the last submission.
    fn catalog_of(&mut self, offers: &BTreeMap<String, ActionOffer>) -> Result<Arc<Catalog>, Refusal> {
        if let Some((cached, catalog)) = &self.catalog
            && cached == offers
        {
            return Ok(catalog.clone());
        }
        let catalog = Catalog::new(offers.iter().map(|(k, v)| (k.clone(), v.params_schema.clone())).collect())
            .map_err(|e| Refusal::Invalid("an agent offers an invalid action schema".into(), vec![e.to_string()]))?;
        let catalog = Arc::new(catalog);
        self.catalog = Some((offers.clone(), catalog.clone()));
        Ok(catalog)
    }

    /// Every target must offer every action the plan uses on it.
    fn check_offers(&self, plan: &Plan, spec: &JobSpec) -> Result<(), PlanErrors> {
        let mut errors = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            let mut actions = vec![("action", step.action.as_str())];
            if let Some(rb) = &step.rollback {
                actions.push(("rollback.action", rb.action.as_str()));
            }
            for (field, action) in actions {
                let missing: Vec<&str> =
                    spec.nodes.iter().filter(|n| !self.registry.offers(&n.id, action)).map(|n| n.id.as_str()).collect();
                if !missing.is_empty() {
                    let shown = if missing.len() > 5 {
                        format!("{}, ...", missing[..5].join(", "))
                    } else {
                        missing.join(", ")
                    };
                    errors.push(PlanError {
                        path: format!("steps[{i}] \"{}\".{field}", step.name),
                        message: format!(
                            "action \"{action}\" is not offered by {} target node(s) ({shown}); check their agent policy",
                            missing.len()
                        ),
                    });
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(PlanErrors(errors)) }
    }

    /// Why a job cannot start now, if it cannot.
    fn blocker(&self, spec: &JobSpec) -> Option<String> {
        let running = self.jobs.values().filter(|e| e.stage == Stage::Active).count();
        if running >= self.cfg.max_running {
            return Some(format!(
                "waiting for a run slot: {running} jobs running (max_running {})",
                self.cfg.max_running
            ));
        }
        if spec.plan.rollout.share_nodes {
            return None;
        }
        let mut busy: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for n in &spec.nodes {
            if let Some(j) = self.locks.get(&n.id) {
                busy.entry(j.as_str()).or_default().push(n.id.as_str());
            }
        }
        if busy.is_empty() {
            return None;
        }
        let parts: Vec<String> = busy
            .iter()
            .map(|(j, ns)| {
                let shown = if ns.len() > 5 {
                    format!("{}, ... ({} nodes)", ns[..5].join(", "), ns.len())
                } else {
                    ns.join(", ")
                };
                format!("{shown} (job {j})")
            })
            .collect();
        Some(format!("waiting for busy nodes: {}", parts.join("; ")))
    }

    /// Start queued jobs in order, as far as slots and nodes allow.
    fn start_queued(&mut self, now: u64, round: &mut Round) {
        let queued: Vec<String> = self.queue.iter().cloned().collect();
        for id in queued {
            let Some(entry) = self.jobs.get(&id) else { continue };
            match self.blocker(entry.job.spec()) {
                Some(why) => {
                    if let Some(e) = self.jobs.get_mut(&id) {
                        e.waiting = Some(why);
                    }
                }
                None => {
                    self.queue.retain(|q| *q != id);
                    self.start(&id, now, round);
                }
            }
        }
    }

    fn start(&mut self, id: &str, now: u64, round: &mut Round) {
        let Some(entry) = self.jobs.get_mut(id) else { return };
        entry.stage = Stage::Active;
        entry.waiting = None;
        if !entry.job.spec().plan.rollout.share_nodes {
            for n in &entry.job.spec().nodes {
                self.locks.insert(n.id.clone(), id.to_string());
            }
        }
        let _ = self.apply(id, Event::Start, now, round);
    }

    fn cancel_queued(&mut self, id: &str, now: u64, round: &mut Round) {
        self.queue.retain(|q| q != id);
        if let Some(e) = self.jobs.get_mut(id) {
            // The engine finishes a job cancelled before it started without dispatching
            // anything; it never held nodes or a run slot.
            e.stage = Stage::Active;
            e.waiting = None;
        }
        let _ = self.apply(id, Event::Cancel, now, round);
    }

    // ----- the engine ----------------------------------------------------------------

    /// Apply one event to a job's engine and collect what it asks for.
    fn apply(
        &mut self,
        id: &str,
        event: Event,
        now: u64,
        round: &mut Round,
    ) -> Result<(), drover_core::engine::Rejected> {
        let Some(entry) = self.jobs.get_mut(id) else { return Ok(()) };
        // Written before the engine takes the event, taken back if it refuses it.
        let subject = self.topo.names.job_inputs(id);
        let line = LineRef::Input { n: entry.inputs + 1, event: &event, now, epoch: self.term.epoch };
        let journaled = match round.journal.push(&subject, &line) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(job = id, "cannot encode an engine input for the journal: {e}");
                false
            }
        };
        let t = std::time::Instant::now();
        let decided = entry.job.handle(event, now);
        self.metrics.engine_seconds.inc_by(t.elapsed().as_secs_f64());
        let actions = match decided {
            Ok(a) => a,
            Err(e) => {
                if journaled {
                    round.journal.pop(&subject);
                }
                return Err(e);
            }
        };
        entry.inputs += 1;
        self.summary_writes.touch(id);
        self.perform(id, actions, now, round);
        Ok(())
    }

    /// Turn a job's engine actions into the round's commands, timers and journal lines.
    fn perform(&mut self, id: &str, actions: Vec<Action>, now: u64, round: &mut Round) {
        let epoch = self.term.epoch;
        let Some(entry) = self.jobs.get_mut(id) else { return };
        let mut progress_subject = None;
        for a in actions {
            match a {
                Action::Dispatch { node, step, attempt, timeout_ms, .. } => {
                    let spec = entry.job.spec();
                    let s = &spec.plan.steps[step];
                    let n = entry.job.node_index(&node).unwrap_or(0);
                    let id = CommandId { job: id.to_string(), node, step, attempt, kind: CommandKind::Run };
                    let params = spec.params(n, step);
                    let cmd =
                        command(id, epoch, &s.name, s.action.clone(), params, serde_json::Value::Null, timeout_ms, now);
                    issue(&self.tx, cmd, &mut entry.active_nodes, round);
                }
                Action::Rollback { node, step, metadata, timeout_ms, .. } => {
                    let spec = entry.job.spec();
                    let s = &spec.plan.steps[step];
                    let n = entry.job.node_index(&node).unwrap_or(0);
                    let (action, params) = match spec.rollback_params(n, step) {
                        Some(p) => (s.rollback.as_ref().map(|r| r.action.clone()).unwrap_or_default(), p),
                        None => (s.action.clone(), spec.params(n, step)),
                    };
                    let id = CommandId { job: id.to_string(), node, step, attempt: 1, kind: CommandKind::Rollback };
                    let cmd = command(id, epoch, &s.name, action, params, metadata, timeout_ms, now);
                    issue(&self.tx, cmd, &mut entry.active_nodes, round);
                }
                Action::CancelStep { node, step, attempt } => {
                    round.cancels.push(CommandId { job: id.to_string(), node, step, attempt, kind: CommandKind::Run });
                }
                Action::SetTimer { at, timer } => round.timers.push((id.to_string(), at, timer)),
                Action::Emit(p) => {
                    if p.kind == ProgressKind::NodeFinished
                        && let Some(n) = &p.node
                    {
                        entry.active_nodes.remove(n);
                    }
                    let subject = progress_subject.get_or_insert_with(|| self.topo.names.job_progress(id));
                    if let Err(e) = round.journal.push(subject, &p) {
                        tracing::error!(job = id, "cannot encode a progress event: {e}");
                    }
                }
                Action::Finish { status, .. } => {
                    self.metrics.job_finished(status);
                    round.finished.push(id.to_string());
                }
            }
        }
    }

    fn check_liveness(&mut self, now: u64, round: &mut Round) {
        if !self.registry.judging(now) {
            // Not read yet is not silent: judge nobody before the buckets are read and
            // live heartbeats have had time to arrive.
            return;
        }
        let mut lost = Vec::new();
        for (id, e) in &self.jobs {
            if e.stage != Stage::Active {
                continue;
            }
            for n in &e.active_nodes {
                if let Some(reason) = self.registry.offline_reason(n, now) {
                    lost.push((id.clone(), n.clone(), reason));
                }
            }
        }
        for (job, node, reason) in lost {
            let _ = self.apply(&job, Event::NodeLost { node, reason }, now, round);
        }
    }

    /// Make the round durable, then act on it.
    async fn commit(&mut self, mut round: Round) -> Commit {
        // An expired term waits for its renewal (or for its end), writing nothing.
        if !self.term.usable().await {
            return self.deposed(Commit::Lost);
        }
        // 1. Records of replied results, journal and progress, all published at once (the
        //    records first, on the same connection), then every ack awaited.
        let records = std::mem::take(&mut round.records);
        if !write_all(&self.topo.js, records, std::mem::take(&mut round.journal), &self.term, self.fence.as_ref()).await
        {
            return self.deposed(Commit::Lost);
        }
        // 2. Finished jobs release their nodes; queued jobs may start (another, small round
        //    of journal writes); a job that finishes as it starts releases them in turn.
        let mut finished = std::mem::take(&mut round.finished);
        let mut retired = Vec::new();
        while !finished.is_empty() {
            let now = now_ms();
            for id in finished {
                if let Some(e) = self.jobs.get_mut(&id) {
                    e.stage = Stage::Done;
                    e.active_nodes.clear();
                }
                self.locks.retain(|_, j| *j != id);
                retired.push(id);
            }
            let mut next = Round::default();
            self.start_queued(now, &mut next);
            let journal = std::mem::take(&mut next.journal);
            if !write_all(&self.topo.js, Lines::default(), journal, &self.term, self.fence.as_ref()).await {
                return self.deposed(Commit::Lost);
            }
            round.commands.extend(next.commands);
            round.cancels.extend(next.cancels);
            round.timers.extend(next.timers);
            finished = next.finished;
        }
        // A pause (or a stalled write) may have outlasted the lease: wait for a renewal;
        // if another controller took over instead, what was written is in the journal for
        // it, and it sends the commands again; nothing more is done here.
        if !self.term.usable().await {
            return self.deposed(Commit::Written);
        }
        // 3. Act: commands, cancels, timers (deliveries stop when the term ends).
        let lost = self.term.lost().clone();
        for cmd in round.commands {
            self.metrics.commands.inc();
            // Boxed: the task then moves a pointer, not the whole delivery future.
            tokio::spawn(Box::pin(dispatch::send_command(
                self.client.clone(),
                self.topo.names.clone(),
                cmd,
                self.tx.clone(),
                (self.cfg.ack_timeout, self.cfg.ack_deadline),
                lost.clone(),
            )));
        }
        for id in round.cancels {
            tokio::spawn(dispatch::send_cancel(
                self.client.clone(),
                self.topo.names.clone(),
                id,
                (self.term.epoch, self.cfg.ack_timeout),
                self.tx.clone(),
                lost.clone(),
            ));
        }
        for (job, at, timer) in round.timers {
            self.timers.set(job, at, timer);
        }
        self.acted_at = Some(std::time::Instant::now());
        // 4. Results are acknowledged only now that their effect is journaled, each one
        //    (explicit acks: a cumulative one could cover a result lost in delivery, which
        //    then would never come again).
        for m in round.acks {
            if let Err(e) = m.ack().await {
                tracing::warn!("acking a result: {e}");
            }
        }
        // 5. Job summaries for listing by other processes (of the jobs this round and
        //    earlier ones touched): on a change of status at once, otherwise at most once
        //    a second (crate::summaries).
        let jobs = &self.jobs;
        for summary in self.summary_writes.due(now_ms(), |id| jobs.get(id).map(Entry::summary)) {
            let Ok(bytes) = serde_json::to_vec(&summary) else { continue };
            let bucket = self.topo.jobs.clone();
            tokio::spawn(lost.clone().run_until_cancelled_owned(async move {
                if let Err(e) = bucket.put(&summary.id, bytes.into()).await {
                    tracing::warn!("writing job summary {}: {e}", summary.id);
                }
            }));
        }
        // 6. Finished jobs join the retained ones (after their final summary is written).
        for id in retired {
            self.retire(id);
        }
        let running = self.jobs.values().filter(|e| e.stage == Stage::Active).count();
        self.metrics.jobs_running.set(running as i64);
        self.metrics.jobs_queued.set(self.queue.len() as i64);
        Commit::Acted
    }

    /// The lease is lost (another controller took it): act no more.
    fn deposed(&self, outcome: Commit) -> Commit {
        tracing::error!(epoch = self.term.epoch, "the lease is no longer held: stopping without acting");
        self.term.lose();
        outcome
    }

    // ----- views ---------------------------------------------------------------------

    pub fn view(&self, id: &str) -> Option<JobView> {
        let e = self.jobs.get(id)?;
        Some(job_view(&e.job, e.created_at_ms, e.waiting.clone()))
    }

    fn list(&self, status: Option<JobStatus>, limit: usize, after: Option<String>) -> JobList {
        let mut out = Vec::new();
        let mut started = after.is_none();
        let mut next = None;
        for id in self.order.iter().rev() {
            if !started {
                started = Some(id) == after.as_ref();
                continue;
            }
            let Some(e) = self.jobs.get(id) else { continue };
            let st = e.job.status();
            if status.is_some_and(|s| s != st) {
                continue;
            }
            if out.len() == limit {
                next = out.last().map(|s: &JobSummary| s.id.clone());
                break;
            }
            out.push(e.summary());
        }
        JobList { jobs: out, next }
    }
}

/// Queue a command for sending, or, when its params could not be expanded (which
/// admission checks rule out), fail its attempt clearly.
fn issue(
    tx: &mpsc::Sender<Input>,
    cmd: Result<Command, (CommandId, String)>,
    active: &mut BTreeSet<String>,
    round: &mut Round,
) {
    match cmd {
        Ok(cmd) => {
            active.insert(cmd.id.node.clone());
            round.commands.push(cmd);
        }
        Err((id, reason)) => {
            let _ = tx.try_send(Input::Rejected { job: id.job.clone(), id, reason });
        }
    }
}

/// A command to an agent, or why its params could not be expanded.
#[allow(clippy::too_many_arguments)]
fn command(
    id: CommandId,
    epoch: u64,
    step_name: &str,
    action: String,
    params: Result<serde_json::Value, drover_core::template::TemplateError>,
    metadata: serde_json::Value,
    timeout_ms: u64,
    now: u64,
) -> Result<Command, (CommandId, String)> {
    match params {
        Ok(params) => Ok(Command {
            id,
            epoch,
            step_name: step_name.to_string(),
            action,
            params,
            metadata,
            timeout_ms,
            issued_at_ms: now,
            signature: None,
        }),
        Err(e) => Err((id, format!("params: {}: {}", e.path, e.message))),
    }
}

/// Publish a round: `records` (results stream, not fenced: they are facts reported by
/// agents, whoever stores them) first, then the journal and progress `lines` (events
/// stream), each subject's lines packed into one message (or a few, when they exceed
/// [`MAX_BATCH_BYTES`]). Every message is sent before any ack is awaited, the records
/// first on the same connection: a controller that crashes once its journal lines were
/// sent has sent the records too (only a record whose own send failed, and whose retry
/// the crash cut short, can be missing). A record too large for any message is left out
/// with a warning rather than retried forever. A message whose ack failed is written again (inputs carry their
/// number and progress its sequence, so a line that landed twice is harmless on replay
/// and to watchers; records are told apart by their command key). Each journal write
/// expects `fence` to be the last takeover line. `false` when the term ended (a newer
/// leader's takeover line, or the lease ran out) before everything was stored.
async fn write_all(js: &jetstream::Context, records: Lines, lines: Lines, term: &Term, fence: Option<&Fence>) -> bool {
    // Never more than the server takes in one message (it may be set below the default).
    let server_max = drover_bus::payload_limit(&js.client(), 4096);
    let max_payload = server_max.clamp(1024, MAX_BATCH_BYTES);
    let mut acks = Vec::new();
    let mut failed = Vec::new();
    // A line longer than `max_payload` travels alone. A record longer than the server
    // takes is left out; a journal line never is (the commit waits for it).
    for (lines, fence, limit) in [(records, None, server_max), (lines, fence, usize::MAX)] {
        for s in lines.into_subjects() {
            let (messages, left_out) = s.messages(max_payload, limit);
            for line in left_out {
                tracing::warn!(subject = %s.subject, bytes = line.len(), server_max, "a replied result too large to store is left out");
            }
            let subject = s.subject.clone();
            // Each message is a slice of the subject's buffer: nothing is copied.
            let bytes = Bytes::from(s.into_bytes());
            for m in messages {
                let payload = bytes.slice(m);
                match js.send_publish(subject.clone(), fenced(payload.clone(), fence)).await {
                    Ok(ack) => acks.push((subject.clone(), payload, fence, ack)),
                    Err(_) => failed.push((subject.clone(), payload, fence)),
                }
            }
        }
    }
    for (subject, bytes, fence, ack) in acks {
        match ack.await {
            Ok(_) => {}
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                return superseded(term);
            }
            Err(_) => failed.push((subject, bytes, fence)),
        }
    }
    for (subject, bytes, fence) in failed {
        if !publish_retrying(js.clone(), subject, bytes, term, fence).await {
            return false;
        }
    }
    true
}

/// A journal message that the stream stores only while `fence` is still the last
/// takeover line (`Nats-Expected-Last-Subject-Sequence` on the takeover subject; servers
/// older than 2.11 ignore it, and the term's time limit is then the only fence).
fn fenced(bytes: Bytes, fence: Option<&Fence>) -> jetstream::message::PublishMessage {
    let msg = jetstream::message::PublishMessage::build().payload(bytes);
    match fence {
        Some(f) => msg
            .expected_last_subject_sequence(f.seq)
            .header("Nats-Expected-Last-Subject-Sequence-Subject", f.subject.as_str()),
        None => msg,
    }
}

/// The stream refused a write: a newer leader's takeover line is there.
fn superseded(term: &Term) -> bool {
    tracing::error!(epoch = term.epoch, "a newer controller has taken over: this term's journal writes are refused");
    term.lose();
    false
}

/// Publish one journal line, retrying until the stream acknowledges it (the controller
/// never acts on what is not durable) or the lease term ends (`false`).
async fn publish_retrying(
    js: jetstream::Context,
    subject: String,
    bytes: Bytes,
    term: &Term,
    fence: Option<&Fence>,
) -> bool {
    use jetstream::context::PublishErrorKind;
    let mut delay = Duration::from_millis(50);
    loop {
        let r = match js.send_publish(subject.clone(), fenced(bytes.clone(), fence)).await {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return true,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return superseded(term),
            Err(_) if !term.usable().await => return false,
            Err(e) => {
                tracing::warn!(%subject, "write failed, retrying: {e}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Forward progress to a log line (debug).
pub fn log_progress(job: &str, p: &Progress) {
    tracing::debug!(job, seq = p.seq, kind = ?p.kind, node = ?p.node, step = ?p.step, "progress");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_lines_are_written_as_journal_entries_read_them() {
        let event = Event::StepResult {
            node: "web-1".into(),
            step: 2,
            attempt: 1,
            outcome: AttemptOutcome::Failed,
            metadata: serde_json::json!({ "k": [1, 2] }),
            error: Some("exit 3".into()),
        };
        let written = serde_json::to_value(LineRef::Input { n: 7, event: &event, now: 42, epoch: 3 }).unwrap();
        let owned = JournalEntry::Input { n: 7, event, now: 42, epoch: 3 };
        assert_eq!(written, serde_json::to_value(&owned).unwrap());
        let back: JournalEntry = serde_json::from_value(written).unwrap();
        assert!(matches!(back, JournalEntry::Input { n: 7, now: 42, epoch: 3, .. }));
    }

    #[test]
    fn spec_lines_are_written_as_journal_entries_read_them() {
        use drover_core::resolve::NodeInfo;
        let plan = parse_plan(
            "name: t\ntargets: {all: true}\nsteps:\n  - {name: a, action: echo, with: {message: hi}}\n",
            Format::Yaml,
            None,
        )
        .unwrap();
        let fleet = vec![NodeInfo { id: "n1".into(), labels: Default::default(), groups: vec![], online: true }];
        let spec = JobSpec::build("j", &plan, &fleet).unwrap();
        let engine = EngineConfig::default();
        let written = serde_json::to_value(LineRef::Spec { spec: &spec, created_at_ms: 5, epoch: 2, engine }).unwrap();
        let owned = JournalEntry::Spec { spec: Box::new(spec), created_at_ms: 5, epoch: 2, engine };
        assert_eq!(written, serde_json::to_value(&owned).unwrap());
        let back: JournalEntry = serde_json::from_value(written).unwrap();
        assert!(matches!(back, JournalEntry::Spec { created_at_ms: 5, epoch: 2, .. }));
    }
}
