//! The REST API's JSON bodies (`/v1`), shared by the controller and the CLI.

use crate::engine::{JobReport, JobStatus, NodeOutcome, StepStatus};
use crate::wire::{AgentStatus, NodeFacts, StepResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job: the engine's report plus what the controller knows around it.
/// `POST /v1/jobs` (201) and `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobView {
    #[serde(flatten)]
    pub report: JobReport,
    pub created_at_ms: u64,
    /// Why a job that is accepted has not started (queue position, busy nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Targets that were offline at submission and left out (`targets.offline: exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_offline: Vec<String>,
    /// The last progress event's sequence number (resume `events` from here).
    #[serde(default)]
    pub last_event: u64,
}

/// One line of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobSummary {
    pub id: String,
    pub name: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub total_nodes: usize,
    pub counts: BTreeMap<NodeOutcome, usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// `GET /v1/jobs?status=&limit=&after=`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// Pass as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `POST /v1/jobs?dry_run=true` and `drover plan`: what a plan would do, nothing run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlanPreview {
    pub name: String,
    /// Targets in dispatch order.
    pub targets: Vec<String>,
    /// Targets offline now (counted as failed at start with `targets.offline: fail`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<String>,
    /// Targets offline now and left out (`targets.offline: exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_offline: Vec<String>,
    pub batches: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<usize>,
    pub steps: Vec<String>,
}

/// `GET /v1/jobs/{id}/nodes/{node}`: a node's steps with every result and its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeDetail {
    pub job_id: String,
    pub node: String,
    pub outcome: NodeOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<NodeOutcome>,
    pub batch: usize,
    pub steps: Vec<StepDetail>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepDetail {
    pub name: String,
    pub action: String,
    pub status: StepStatus,
    pub attempts: u32,
    /// Every result recorded for this step (attempts in order, then the undo).
    pub results: Vec<StepResult>,
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    pub facts: NodeFacts,
    pub online: bool,
    pub status: AgentStatus,
    /// Milliseconds since the last heartbeat the controller saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ago_ms: Option<u64>,
    /// The interval its agent beats at, as its last heartbeat said (longer than
    /// configured in a fleet past the heartbeat cap; see `crate::liveness`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// How long a silence the controller allows it before judging it lost: its
    /// heartbeat timeout, or three of its beats when they are further apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_ms: Option<u64>,
    /// The job whose steps it runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_with: Option<String>,
    /// Actions offered (names; `GET /v1/nodes/{id}` has the schemas).
    pub actions: Vec<String>,
}

/// `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// Every error body: `{error, details}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// `POST /v1/jobs/{id}/{cancel|pause|resume|approve|rollback}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OperatorReply {
    pub job_id: String,
    pub accepted: String,
    pub status: JobStatus,
}

/// `GET /v1/health` and `/v1/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub version: String,
    /// `leader` (this controller runs the jobs) or `standby` (it serves reads and
    /// forwards submissions and operator commands to the leader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The controller holding the lease, as far as this one knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The lease's fencing epoch (raised at every takeover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}
