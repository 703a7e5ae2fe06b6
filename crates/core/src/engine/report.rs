//! A job's state as operators and APIs see it: the shared vocabulary of `drover simulate
//! -o json` and the controller's job JSON.

use super::job::Job;
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job at a point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobReport {
    pub job_id: String,
    pub name: String,
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    pub total_nodes: usize,
    /// Nodes per outcome.
    pub counts: BTreeMap<NodeOutcome, usize>,
    /// Nodes that count against the failure budget, and the budget.
    pub failed_nodes: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<usize>,
    /// Node ids per batch that started, in dispatch order.
    pub batches: Vec<Vec<String>>,
    /// Batches planned in all.
    pub planned_batches: usize,
    pub nodes: BTreeMap<String, NodeReport>,
}

/// One node in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeReport {
    pub outcome: NodeOutcome,
    /// How the node failed, when a rollback then changed its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<NodeOutcome>,
    /// 1-based batch number.
    pub batch: usize,
    pub steps: Vec<StepReport>,
}

/// One step on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepReport {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Job {
    /// The whole job as a report.
    pub fn report(&self) -> JobReport {
        let spec = self.spec();
        let mut counts = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (i, t) in spec.nodes.iter().enumerate() {
            let r = self.node_report(i);
            *counts.entry(r.outcome).or_insert(0) += 1;
            nodes.insert(t.id.clone(), r);
        }
        let batches = spec
            .batches
            .iter()
            .enumerate()
            .filter(|(b, _)| self.batch_started(*b))
            .map(|(_, m)| m.iter().map(|&n| spec.nodes[n].id.clone()).collect())
            .collect();
        let (started_at_ms, finished_at_ms) = self.times();
        JobReport {
            job_id: spec.job_id.clone(),
            name: spec.plan.name.clone(),
            status: self.status(),
            reason: self.reason().map(str::to_string),
            started_at_ms,
            finished_at_ms,
            total_nodes: spec.nodes.len(),
            counts,
            failed_nodes: self.failed_nodes(),
            max_failures: self.failure_limit(),
            batches,
            planned_batches: spec.batches.len(),
            nodes,
        }
    }
}
