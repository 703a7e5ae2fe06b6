//! Target resolution and batching: from a plan and a fleet to a frozen [`JobSpec`].

use crate::duration::Dur;
use crate::parse::{PlanError, PlanErrors};
use crate::plan::{OfflinePolicy, Plan, Strategy, Window};
use crate::selector::Selector;
use crate::template;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What the resolver knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeInfo {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Groups the node belongs to (a `group` label counts as one too).
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default = "yes")]
    pub online: bool,
}

fn yes() -> bool {
    true
}

impl NodeInfo {
    pub fn new(id: impl Into<String>) -> NodeInfo {
        NodeInfo { id: id.into(), labels: BTreeMap::new(), groups: Vec::new(), online: true }
    }

    pub fn with_label(mut self, k: &str, v: &str) -> NodeInfo {
        self.labels.insert(k.into(), v.into());
        self
    }

    fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g) || self.labels.get("group").is_some_and(|x| x == g)
    }
}

/// Labels of the n-th node (1-based) of a demo fleet, shared by `drover simulate` and
/// `drover dev` so that example selectors select the same nodes in both: `role=db` on
/// every third node and `role=web` on the others; `zone=a` on odd nodes, `zone=b` on even.
pub fn demo_labels(n: usize) -> BTreeMap<String, String> {
    let role = if n.is_multiple_of(3) { "db" } else { "web" };
    let zone = if n.is_multiple_of(2) { "b" } else { "a" };
    [("role".to_string(), role.to_string()), ("zone".to_string(), zone.to_string())].into()
}

/// A node of a job, frozen at submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetNode {
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Offline at submission and counted as failed (`targets.offline: fail`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offline: bool,
}

/// Everything the engine needs to run a job, fixed at submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JobSpec {
    pub job_id: String,
    pub plan: Plan,
    /// Target nodes in dispatch order.
    pub nodes: Vec<TargetNode>,
    /// Node indices per batch, in order.
    pub batches: Vec<Vec<usize>>,
    /// Most failed nodes tolerated; `None` = no budget.
    pub failure_limit: Option<usize>,
    pub window: Window,
    pub batch_delay: Dur,
    /// 0-based batch indices after which the job waits for approval.
    pub pause_after: BTreeSet<usize>,
    /// Nodes offline at submission and left out (`targets.offline: exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_offline: Vec<String>,
}

impl JobSpec {
    /// Check what [`JobSpec::build`] guarantees, for a spec read back from storage (a
    /// journal written by another version, or damaged): every node in exactly one batch,
    /// at least one node and one step. The engine relies on it.
    pub fn check_consistent(&self) -> Result<(), String> {
        if self.nodes.is_empty() {
            return Err("it has no nodes".into());
        }
        if self.plan.steps.is_empty() {
            return Err("it has no steps".into());
        }
        let mut seen = vec![false; self.nodes.len()];
        for (b, members) in self.batches.iter().enumerate() {
            for &n in members {
                match seen.get_mut(n) {
                    None => {
                        return Err(format!(
                            "batch {} names node {n}, but there are {} nodes",
                            b + 1,
                            self.nodes.len()
                        ));
                    }
                    Some(true) => return Err(format!("node {n} is in two batches")),
                    Some(s) => *s = true,
                }
            }
        }
        match seen.iter().position(|s| !s) {
            Some(n) => Err(format!("node {n} is in no batch")),
            None => Ok(()),
        }
    }

    /// Resolve the plan's targets on `fleet` and freeze the job.
    pub fn build(job_id: &str, plan: &Plan, fleet: &[NodeInfo]) -> Result<JobSpec, PlanErrors> {
        let mut errors = Vec::new();
        let err = |errors: &mut Vec<PlanError>, path: &str, m: String| {
            errors.push(PlanError { path: path.into(), message: m })
        };
        let selected = match select(plan, fleet) {
            Ok(s) => s,
            Err(e) => return Err(PlanErrors(e)),
        };
        let by_id: BTreeMap<&str, &NodeInfo> = fleet.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut nodes = Vec::new();
        let mut excluded_offline = Vec::new();
        for id in selected {
            let info = by_id[id.as_str()];
            if !info.online && plan.targets.offline == OfflinePolicy::Exclude {
                excluded_offline.push(id);
                continue;
            }
            nodes.push(TargetNode { id, labels: info.labels.clone(), offline: !info.online });
        }
        if nodes.is_empty() {
            let why = if excluded_offline.is_empty() {
                "match no node".to_string()
            } else {
                format!("match only offline nodes ({})", excluded_offline.join(", "))
            };
            err(&mut errors, "targets", why);
            return Err(PlanErrors(errors));
        }
        let total = nodes.len();
        let r = &plan.rollout;
        let (sizes, window) = match r.strategy {
            Strategy::Parallel => (vec![total], Window::Lockstep),
            Strategy::Sequential => (vec![1; total], Window::Lockstep),
            Strategy::Rolling => (
                r.batch.clone().unwrap_or(crate::plan::BatchSpec::Size(crate::plan::Size::Count(1))).sizes(total),
                r.window.unwrap_or_default(),
            ),
        };
        let mut batches = Vec::new();
        let mut next = 0;
        for s in sizes {
            batches.push((next..next + s).collect::<Vec<_>>());
            next += s;
        }
        let mut pause_after = BTreeSet::new();
        for (i, b) in r.pause_after_batches.iter().enumerate() {
            let b = *b as usize;
            if b >= batches.len() {
                err(
                    &mut errors,
                    &format!("rollout.pause_after_batches[{i}]"),
                    format!(
                        "there is no batch after batch {b}: the job has {} batches on {total} nodes",
                        batches.len()
                    ),
                );
            } else {
                pause_after.insert(b - 1);
            }
        }
        // Every label a step refers to must exist on every node that runs it.
        for (si, step) in plan.steps.iter().enumerate() {
            let mut check = |params: &serde_json::Map<String, serde_json::Value>, what: &str| {
                for (key, path) in template::label_keys(&serde_json::Value::Object(params.clone())) {
                    let missing: Vec<&str> =
                        nodes.iter().filter(|n| !n.labels.contains_key(&key)).map(|n| n.id.as_str()).collect();
                    if !missing.is_empty() {
                        err(
                            &mut errors,
                            &format!("steps[{si}] \"{}\".{what}.{path}", step.name),
                            format!(
                                "{{{{node.labels.{key}}}}}: {} target node(s) have no label \"{key}\": {}",
                                missing.len(),
                                preview(&missing)
                            ),
                        );
                    }
                }
            };
            check(&step.with, "with");
            if let Some(rb) = &step.rollback {
                check(&rb.with, "rollback.with");
            }
        }
        if !errors.is_empty() {
            return Err(PlanErrors(errors));
        }
        Ok(JobSpec {
            job_id: job_id.to_string(),
            failure_limit: r.max_failures.limit(total),
            batch_delay: r.batch_delay.unwrap_or(Dur::ZERO),
            plan: plan.clone(),
            nodes,
            batches,
            window,
            pause_after,
            excluded_offline,
        })
    }

    /// The params of `step` on node `node`, references expanded.
    pub fn params(&self, node: usize, step: usize) -> Result<serde_json::Value, template::TemplateError> {
        let n = &self.nodes[node];
        let cx = template::TemplateContext { job_id: &self.job_id, node_id: &n.id, labels: &n.labels };
        template::expand(&serde_json::Value::Object(self.plan.steps[step].with.clone()), &cx)
    }

    /// The params of the explicit rollback of `step` on `node`, if the step has one.
    pub fn rollback_params(
        &self,
        node: usize,
        step: usize,
    ) -> Option<Result<serde_json::Value, template::TemplateError>> {
        let rb = self.plan.steps[step].rollback.as_ref()?;
        let n = &self.nodes[node];
        let cx = template::TemplateContext { job_id: &self.job_id, node_id: &n.id, labels: &n.labels };
        Some(template::expand(&serde_json::Value::Object(rb.with.clone()), &cx))
    }

    /// The largest batch: the bound on parallel fleet rollback.
    pub fn max_batch(&self) -> usize {
        self.batches.iter().map(Vec::len).max().unwrap_or(1).max(1)
    }
}

fn preview(ids: &[&str]) -> String {
    if ids.len() <= 5 { ids.join(", ") } else { format!("{}, ... ({} more)", ids[..5].join(", "), ids.len() - 5) }
}

/// Compare ids so that `node-2` comes before `node-10` (runs of digits compare as numbers).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let nx = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let ny = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (&x[..nx], &y[..ny]);
                let tx = dx.iter().skip_while(|c| **c == b'0').count();
                let ty = dy.iter().skip_while(|c| **c == b'0').count();
                let ord = tx.cmp(&ty).then_with(|| dx[nx - tx..].cmp(&dy[ny - ty..]));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[nx..];
                y = &y[ny..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// The selected node ids in dispatch order: explicitly listed nodes first in their order,
/// then the rest sorted by id; `exclude` removed.
pub fn select(plan: &Plan, fleet: &[NodeInfo]) -> Result<Vec<String>, Vec<PlanError>> {
    let t = &plan.targets;
    let mut errors = Vec::new();
    let known: BTreeSet<&str> = fleet.iter().map(|n| n.id.as_str()).collect();
    for (i, n) in t.nodes.iter().enumerate() {
        if !known.contains(n.as_str()) {
            errors.push(PlanError { path: format!("targets.nodes[{i}]"), message: format!("unknown node \"{n}\"") });
        }
    }
    let selector = match &t.selector {
        Some(s) => match Selector::parse(s) {
            Ok(sel) => Some(sel),
            Err(e) => {
                errors.push(PlanError {
                    path: "targets.selector".into(),
                    message: format!("\"{s}\" is not a valid selector: {e}"),
                });
                None
            }
        },
        None => None,
    };
    for (i, g) in t.groups.iter().enumerate() {
        if !fleet.iter().any(|n| n.in_group(g)) {
            errors.push(PlanError {
                path: format!("targets.groups[{i}]"),
                message: format!("no node is in group \"{g}\""),
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let exclude: BTreeSet<&str> = t.exclude.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for n in &t.nodes {
        if !exclude.contains(n.as_str()) && seen.insert(n.clone()) {
            out.push(n.clone());
        }
    }
    let mut rest: Vec<&NodeInfo> = fleet
        .iter()
        .filter(|n| {
            t.all || selector.as_ref().is_some_and(|s| s.matches(&n.labels)) || t.groups.iter().any(|g| n.in_group(g))
        })
        .filter(|n| !exclude.contains(n.id.as_str()) && !seen.contains(&n.id))
        .collect();
    rest.sort_by(|a, b| natural_cmp(&a.id, &b.id));
    rest.dedup_by(|a, b| a.id == b.id);
    out.extend(rest.into_iter().map(|n| n.id.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_damaged_spec_is_caught_before_the_engine_uses_it() {
        let plan = crate::parse::parse_plan(
            "name: t\ntargets: {all: true}\nrollout: {strategy: rolling, batch: 1}\nsteps: [{name: a, action: echo}]\n",
            crate::parse::Format::Yaml,
            None,
        )
        .unwrap();
        let fleet = vec![NodeInfo::new("a"), NodeInfo::new("b")];
        let good = JobSpec::build("j", &plan, &fleet).unwrap();
        assert_eq!(good.check_consistent(), Ok(()));
        let mut bad = good.clone();
        bad.batches[1] = vec![7];
        assert_eq!(bad.check_consistent().unwrap_err(), "batch 2 names node 7, but there are 2 nodes");
        let mut bad = good.clone();
        bad.batches[1] = vec![0];
        assert_eq!(bad.check_consistent().unwrap_err(), "node 0 is in two batches");
        let mut bad = good;
        bad.batches.pop();
        assert_eq!(bad.check_consistent().unwrap_err(), "node 1 is in no batch");
    }
    use super::*;
    use crate::parse::{Format, parse_plan};

    fn fleet() -> Vec<NodeInfo> {
        (1..=6)
            .map(|i| {
                NodeInfo::new(format!("n{i}"))
                    .with_label("role", if i <= 4 { "web" } else { "db" })
                    .with_label("zone", if i % 2 == 0 { "a" } else { "b" })
            })
            .collect()
    }

    fn plan(targets: &str, rollout: &str) -> Plan {
        parse_plan(
            &format!("name: t\ntargets: {targets}\nrollout: {rollout}\nsteps: [{{name: s, action: echo}}]\n"),
            Format::Yaml,
            None,
        )
        .unwrap()
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["node-10", "node-2", "node-1", "a", "node-02", "web-1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["a", "node-1", "node-02", "node-2", "node-10", "web-1"]);
    }

    #[test]
    fn explicit_order_first_then_sorted() {
        let p = plan("{nodes: [n5, n2], selector: \"role=web\", exclude: [n3]}", "{}");
        assert_eq!(select(&p, &fleet()).unwrap(), vec!["n5", "n2", "n1", "n4"]);
    }

    #[test]
    fn unknown_nodes_and_empty_selections_are_errors() {
        let p = plan("{nodes: [n9]}", "{}");
        assert_eq!(select(&p, &fleet()).unwrap_err()[0].to_string(), "targets.nodes[0]: unknown node \"n9\"");
        let p = plan("{selector: \"role=cache\"}", "{}");
        assert_eq!(JobSpec::build("j", &p, &fleet()).unwrap_err().0[0].to_string(), "targets: match no node");
    }

    #[test]
    fn batches_by_strategy() {
        let f = fleet();
        assert_eq!(JobSpec::build("j", &plan("{all: true}", "{}"), &f).unwrap().batches, vec![vec![0, 1, 2, 3, 4, 5]]);
        assert_eq!(JobSpec::build("j", &plan("{all: true}", "{strategy: sequential}"), &f).unwrap().batches.len(), 6);
        let s = JobSpec::build(
            "j",
            &plan("{all: true}", "{strategy: rolling, batch: [1, \"50%\"], pause_after_batches: [1]}"),
            &f,
        )
        .unwrap();
        assert_eq!(s.batches, vec![vec![0], vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(s.pause_after, [0].into());
        let e =
            JobSpec::build("j", &plan("{all: true}", "{strategy: rolling, batch: 3, pause_after_batches: [2]}"), &f)
                .unwrap_err();
        assert!(e.0[0].to_string().contains("no batch after batch 2"), "{e}");
    }

    #[test]
    fn offline_nodes_fail_or_are_excluded() {
        let mut f = fleet();
        f[0].online = false;
        let s = JobSpec::build("j", &plan("{all: true}", "{}"), &f).unwrap();
        assert!(s.nodes[0].offline);
        let s = JobSpec::build("j", &plan("{all: true, offline: exclude}", "{}"), &f).unwrap();
        assert_eq!(s.nodes.len(), 5);
        assert_eq!(s.excluded_offline, vec!["n1"]);
    }

    #[test]
    fn missing_labels_are_caught_at_submission() {
        let p = parse_plan(
            "name: t\ntargets: {all: true}\nsteps: [{name: s, action: echo, with: {m: \"{{node.labels.rack}}\"}}]\n",
            Format::Yaml,
            None,
        )
        .unwrap();
        let e = JobSpec::build("j", &p, &fleet()).unwrap_err();
        assert!(
            e.0[0]
                .to_string()
                .starts_with("steps[0] \"s\".with.m: {{node.labels.rack}}: 6 target node(s) have no label \"rack\""),
            "{e}"
        );
    }
}
