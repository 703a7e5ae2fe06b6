//! The engine's vocabulary: events in, actions out, statuses.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// Milliseconds on the runtime's clock (any epoch; only differences matter).
pub type Millis = u64;

/// What happened, as the runtime tells the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Start the job (once).
    Start,
    /// An attempt of a step ended on a node.
    StepResult {
        node: String,
        step: usize,
        attempt: u32,
        outcome: AttemptOutcome,
        /// What the action returned to undo it later (kept for rollback).
        #[serde(default, skip_serializing_if = "Value::is_null")]
        metadata: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The undo of a step ended on a node.
    RollbackResult {
        node: String,
        step: usize,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The node stopped answering (no heartbeat, no ack within the deadline).
    NodeLost { node: String, reason: String },
    /// A timer the engine asked for is due.
    Timer { timer: Timer },
    /// Operator: stop new work at once and cancel running steps.
    Cancel,
    /// Operator: start no new node until resumed.
    Pause,
    /// Operator: go on after `Pause` or after a budget pause.
    Resume,
    /// Operator: go on past a `pause_after_batches` gate.
    Approve,
    /// Operator: stop new work and roll back every node that completed a step.
    Rollback,
}

impl Event {
    /// The short name used in logs and errors.
    /// The operator command of this name (case-insensitive): cancel, pause, resume,
    /// approve or rollback.
    pub fn operator(name: &str) -> Option<Event> {
        match name.to_ascii_lowercase().as_str() {
            "cancel" => Some(Event::Cancel),
            "pause" => Some(Event::Pause),
            "resume" => Some(Event::Resume),
            "approve" => Some(Event::Approve),
            "rollback" => Some(Event::Rollback),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Event::Start => "start",
            Event::StepResult { .. } => "step_result",
            Event::RollbackResult { .. } => "rollback_result",
            Event::NodeLost { .. } => "node_lost",
            Event::Timer { .. } => "timer",
            Event::Cancel => "cancel",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Approve => "approve",
            Event::Rollback => "rollback",
        }
    }
}

/// How one attempt of a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// A timer the engine owns. Timers are never cancelled: a timer that no longer matters
/// is ignored when it fires, so runtimes only need "call me back at".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Timer {
    /// The controller-side deadline of an attempt (the agent's own kill comes first).
    StepDeadline { node: usize, step: usize, attempt: u32 },
    /// Time to dispatch attempt `attempt` after a backoff.
    Retry { node: usize, step: usize, attempt: u32 },
    /// The deadline of a rollback step.
    RollbackDeadline { node: usize, step: usize },
    /// The delay before batch `batch` opens is over.
    BatchDelay { batch: usize },
    /// The whole job's deadline.
    JobTimeout,
    /// Nodes that have not confirmed a cancel by now are `unknown`.
    CancelGrace,
}

/// What the engine asks the runtime to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Run attempt `attempt` of step `step` on `node`; the agent kills it at `deadline`.
    Dispatch { node: String, step: usize, attempt: u32, timeout_ms: u64, deadline: Millis },
    /// Undo step `step` on `node` with the metadata its execution returned.
    Rollback { node: String, step: usize, metadata: Value, timeout_ms: u64, deadline: Millis },
    /// Stop a running attempt (kill its process group).
    CancelStep { node: String, step: usize, attempt: u32 },
    /// Send `Event::Timer { timer }` at `at`.
    SetTimer { at: Millis, timer: Timer },
    /// Record and publish a progress event.
    Emit(Progress),
    /// The job ended.
    Finish { status: JobStatus, reason: Option<String> },
}

/// A progress event: the job's visible history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Progress {
    /// 1, 2, 3, ... per job.
    pub seq: u64,
    pub at_ms: Millis,
    pub kind: ProgressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Kinds of progress events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    JobStarted,
    BatchStarted,
    StepStarted,
    StepSucceeded,
    StepFailed,
    StepTimedOut,
    StepCancelled,
    StepSkipped,
    RetryScheduled,
    NodeFinished,
    NodeLost,
    BudgetExceeded,
    Paused,
    Resumed,
    Approved,
    RollbackRequested,
    RollbackStarted,
    RollbackStepStarted,
    RollbackStepSucceeded,
    RollbackStepFailed,
    CancelRequested,
    StaleResultIgnored,
    JobFinished,
}

impl ProgressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressKind::JobStarted => "job_started",
            ProgressKind::BatchStarted => "batch_started",
            ProgressKind::StepStarted => "step_started",
            ProgressKind::StepSucceeded => "step_succeeded",
            ProgressKind::StepFailed => "step_failed",
            ProgressKind::StepTimedOut => "step_timed_out",
            ProgressKind::StepCancelled => "step_cancelled",
            ProgressKind::StepSkipped => "step_skipped",
            ProgressKind::RetryScheduled => "retry_scheduled",
            ProgressKind::NodeFinished => "node_finished",
            ProgressKind::NodeLost => "node_lost",
            ProgressKind::BudgetExceeded => "budget_exceeded",
            ProgressKind::Paused => "paused",
            ProgressKind::Resumed => "resumed",
            ProgressKind::Approved => "approved",
            ProgressKind::RollbackRequested => "rollback_requested",
            ProgressKind::RollbackStarted => "rollback_started",
            ProgressKind::RollbackStepStarted => "rollback_step_started",
            ProgressKind::RollbackStepSucceeded => "rollback_step_succeeded",
            ProgressKind::RollbackStepFailed => "rollback_step_failed",
            ProgressKind::CancelRequested => "cancel_requested",
            ProgressKind::StaleResultIgnored => "stale_result_ignored",
            ProgressKind::JobFinished => "job_finished",
        }
    }
}

macro_rules! status_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($var),+ }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $text),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

status_enum!(
    /// A job's status. `pending`, `running`, `rolling_back` and `paused` are not final.
    JobStatus {
        Pending = "pending",
        Running = "running",
        Paused = "paused",
        RollingBack = "rolling_back",
        Succeeded = "succeeded",
        Failed = "failed",
        RolledBack = "rolled_back",
        Halted = "halted",
        Cancelled = "cancelled",
    }
);

impl JobStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::RolledBack | JobStatus::Halted | JobStatus::Cancelled
        )
    }
}

status_enum!(
    /// A node's outcome in a job. `pending` and `running` are not final.
    NodeOutcome {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        TimedOut = "timed_out",
        Unreachable = "unreachable",
        Skipped = "skipped",
        Cancelled = "cancelled",
        Unknown = "unknown",
        RolledBack = "rolled_back",
        RollbackFailed = "rollback_failed",
    }
);

status_enum!(
    /// A step's status on one node.
    StepStatus {
        NotRun = "not_run",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        TimedOut = "timed_out",
        Cancelled = "cancelled",
        Skipped = "skipped",
        Unknown = "unknown",
        RollingBack = "rolling_back",
        RolledBack = "rolled_back",
        RollbackFailed = "rollback_failed",
    }
);

/// Engine settings that are the runtime's, not the plan's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EngineConfig {
    /// Extra time after a step's deadline before the controller declares it timed out
    /// itself (the agent's kill and report normally come first).
    pub deadline_grace_ms: u64,
    /// How long nodes have to confirm a cancel before they are `unknown`.
    pub cancel_grace_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { deadline_grace_ms: 5_000, cancel_grace_ms: 10_000 }
    }
}

/// An operator command that does not apply now; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event}: {reason}")]
pub struct Rejected {
    pub event: &'static str,
    pub reason: String,
}
