//! Property tests of the rollout rules over random plans, fleets, fault patterns and
//! operator commands. Each case runs the real engine in the simulator and checks the
//! rules on what it did (its progress events and rollback requests).

use drover_core::engine::{EngineConfig, Event, Job, JobStatus, NodeOutcome, Progress, ProgressKind};
use drover_core::plan::Plan;
use drover_core::resolve::JobSpec;
use drover_core::sim::{Fault, FaultKind, SimConfig, SimRun, StepRef, simulate};
use drover_core::{Dur, check_plan};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
struct Case {
    plan: Plan,
    cfg: SimConfig,
}

fn step_json() -> impl Strategy<Value = Value> {
    (0u32..3, any::<bool>(), 0u8..3, any::<bool>(), prop::option::of(1u64..6)).prop_map(
        |(retries, cont, when, barrier, timeout)| {
            let mut s = json!({
                "action": "echo",
                "retries": retries,
                "retry_backoff": "1s",
                "retry_max": "3s",
                "on_error": if cont { "continue" } else { "fail" },
                "when": (["always", "on_success", "on_failure"][when as usize]),
                "barrier": barrier,
            });
            if let Some(t) = timeout {
                s["timeout"] = json!(format!("{t}s"));
            }
            s
        },
    )
}

fn rollout_json() -> impl Strategy<Value = Value> {
    let batch = prop_oneof![
        (1u32..6).prop_map(|c| json!(c)),
        (1u32..=100).prop_map(|p| json!(format!("{p}%"))),
        prop::collection::vec(
            prop_oneof![(1u32..4).prop_map(|c| json!(c)), (5u32..60).prop_map(|p| json!(format!("{p}%")))],
            1..4
        )
        .prop_map(Value::Array),
    ];
    let budget = prop_oneof![(-1i64..4).prop_map(|c| json!(c)), (0u32..60).prop_map(|p| json!(format!("{p}%")))];
    (0u8..3, batch, any::<bool>(), budget, 0u8..3, any::<bool>(), prop::option::of(1u32..3), any::<bool>()).prop_map(
        |(strategy, batch, sliding, budget, on_budget, rb_failed, pause_after, delay)| {
            let mut r = json!({
                "max_failures": budget,
                "on_budget_exceeded": (["rollback", "halt", "pause"][on_budget as usize]),
                "rollback_failed_nodes": rb_failed,
            });
            match strategy {
                0 => r["strategy"] = json!("parallel"),
                1 => r["strategy"] = json!("sequential"),
                _ => {
                    r["strategy"] = json!("rolling");
                    r["batch"] = batch;
                    r["window"] = json!(if sliding { "sliding" } else { "lockstep" });
                    if delay && !sliding {
                        r["batch_delay"] = json!("2s");
                    }
                }
            }
            if strategy != 0
                && let Some(p) = pause_after
            {
                r["pause_after_batches"] = json!([p]);
            }
            r
        },
    )
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..14,
        rollout_json(),
        prop::collection::vec(step_json(), 1..5),
        prop::collection::vec((0usize..14, 0usize..5, 0u8..6, 1u32..3), 0..6),
        prop::collection::vec(1u64..4, 4),
        any::<bool>(),
        prop::option::of((0u64..20, 0u8..5)),
    )
        .prop_filter_map("plan must build", |(n, rollout, mut steps, faults, times, auto_approve, op)| {
            for (i, s) in steps.iter_mut().enumerate() {
                s["name"] = json!(format!("s{i}"));
                if i == 0 && s["when"] == "on_failure" {
                    s["when"] = json!("always");
                }
            }
            let doc = json!({ "name": "prop", "targets": { "all": true }, "rollout": rollout, "steps": steps, "timeout": "4s" });
            let plan = check_plan(&doc, None).ok()?;
            let mut cfg = SimConfig::with_nodes(n);
            JobSpec::build("prop", &plan, &cfg.nodes).ok()?;
            cfg.auto_approve = auto_approve;
            cfg.step_times = times.iter().enumerate().map(|(i, t)| (StepRef::Index(i), Dur::from_secs(*t))).collect();
            cfg.step_times.truncate(plan.steps.len());
            let mut seen = BTreeSet::new();
            for (node, step, kind, k) in faults {
                if node >= n || step >= plan.steps.len() || !seen.insert((node, step)) {
                    continue;
                }
                let kind = match kind {
                    0 => FaultKind::Fail { first: None },
                    1 => FaultKind::Fail { first: Some(k) },
                    2 => FaultKind::Hang,
                    3 => FaultKind::Lose,
                    _ => FaultKind::FailRollback,
                };
                cfg.faults.push(Fault { node: format!("node-{}", node + 1), step: StepRef::Index(step), kind });
            }
            if let Some((t, which)) = op {
                let e = [Event::Cancel, Event::Pause, Event::Resume, Event::Rollback, Event::Approve][which as usize].clone();
                cfg.operator.push((t * 1000, e));
                if which == 1 {
                    cfg.operator.push((t * 1000 + 3000, Event::Resume));
                }
            }
            Some(Case { plan, cfg })
        })
}

/// Checks every rule on one run; returns the first broken one.
fn check_rules(c: &Case, r: &SimRun) -> Result<(), String> {
    let spec = JobSpec::build(&c.cfg.job_id, &c.plan, &c.cfg.nodes).map_err(|e| e.to_string())?;
    let nodes = &spec.nodes;
    let batch_of: BTreeMap<&str, usize> =
        spec.batches.iter().enumerate().flat_map(|(b, m)| m.iter().map(move |&n| (nodes[n].id.as_str(), b))).collect();
    let window = spec.batches.iter().map(Vec::len).max().unwrap_or(1);
    let steps = &c.plan.steps;

    let mut active: BTreeSet<String> = BTreeSet::new(); // started and not finished
    let mut ever_started: BTreeSet<String> = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut tripped = false;
    let mut cancelled = false;
    let mut running: BTreeMap<String, (usize, u32)> = BTreeMap::new();
    // Per node: highest step index with a terminal event.
    let mut settled: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut succeeded: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut undo_order: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut max_attempt: BTreeMap<(String, usize), u32> = BTreeMap::new();
    // The budget, counted independently of the engine.
    let mut limit = spec.failure_limit;
    let mut failed_nodes: BTreeSet<String> = BTreeSet::new();
    let mut over_budget = false;
    let mut saw_trip = false;

    let ev = |e: &Progress| {
        format!("{:?} at {}ms node {:?} step {:?} attempt {:?}", e.kind, e.at_ms, e.node, e.step, e.attempt)
    };
    for e in &r.events {
        let node = e.node.clone().unwrap_or_default();
        match e.kind {
            ProgressKind::BudgetExceeded => {
                tripped = true;
                saw_trip = true;
            }
            // Resuming a budget pause accepts the failures so far (documented rule).
            ProgressKind::Resumed => {
                if tripped {
                    limit = Some(failed_nodes.len());
                    over_budget = false;
                }
                tripped = false;
            }
            // An operator rollback stops new nodes like a tripped budget.
            ProgressKind::RollbackRequested => {
                tripped = true;
                saw_trip = true;
            }
            ProgressKind::NodeLost => {
                failed_nodes.insert(node.clone());
            }
            ProgressKind::CancelRequested => cancelled = true,
            ProgressKind::StepStarted => {
                let (s, a) = (e.step.unwrap_or(0), e.attempt.unwrap_or(0));
                if cancelled {
                    return Err(format!("dispatch after cancel: {}", ev(e)));
                }
                if !ever_started.contains(&node) {
                    if tripped || over_budget {
                        return Err(format!("a new node started after the budget tripped: {}", ev(e)));
                    }
                    ever_started.insert(node.clone());
                    active.insert(node.clone());
                }
                if let Some(prev) = running.get(&node) {
                    return Err(format!("two attempts at once on {node}: {prev:?} and {}", ev(e)));
                }
                // Step s starts only after every earlier step settled on this node.
                let done = settled.get(&node).cloned().unwrap_or_default();
                if (0..s).any(|k| !done.contains(&k)) {
                    return Err(format!("step {s} started before earlier steps settled on {node}: {}", ev(e)));
                }
                // Barrier: every node of the batch reached step s (settled s-1 or finished).
                if steps[s].barrier && s > 0 {
                    let b = batch_of[node.as_str()];
                    for &m in &spec.batches[b] {
                        let mid = &spec.nodes[m].id;
                        let reached =
                            finished.contains(mid) || settled.get(mid).is_some_and(|d| d.iter().any(|k| *k >= s - 1));
                        if !reached {
                            return Err(format!("{node} passed the barrier at step {s} before {mid} reached it"));
                        }
                    }
                }
                if a > steps[s].retries + 1 {
                    return Err(format!("attempt {a} exceeds retries+1 on {}", ev(e)));
                }
                let m = max_attempt.entry((node.clone(), s)).or_insert(0);
                if a != *m + 1 {
                    return Err(format!("attempt {a} after attempt {m}: {}", ev(e)));
                }
                *m = a;
                running.insert(node.clone(), (s, a));
            }
            ProgressKind::StepSucceeded
            | ProgressKind::StepFailed
            | ProgressKind::StepTimedOut
            | ProgressKind::StepCancelled => {
                let (s, a) = (e.step.unwrap_or(0), e.attempt.unwrap_or(0));
                if running.remove(&node) != Some((s, a)) {
                    return Err(format!("result for an attempt that was not running: {}", ev(e)));
                }
                if e.kind == ProgressKind::StepSucceeded {
                    succeeded.insert((node.clone(), s));
                } else if a > steps[s].retries && steps[s].on_error.as_str() == "fail" && !cancelled {
                    failed_nodes.insert(node.clone());
                }
                // Settled unless a retry follows.
                if e.kind == ProgressKind::StepSucceeded || a > steps[s].retries || cancelled {
                    settled.entry(node.clone()).or_default().insert(s);
                }
            }
            ProgressKind::StepSkipped => {
                settled.entry(node.clone()).or_default().insert(e.step.unwrap_or(0));
            }
            ProgressKind::RollbackStepStarted => {
                let s = e.step.unwrap_or(0);
                if !succeeded.contains(&(node.clone(), s)) {
                    return Err(format!("rolled back a step that had not succeeded: {}", ev(e)));
                }
                if cancelled {
                    return Err(format!("rollback started after cancel: {}", ev(e)));
                }
                let order = undo_order.entry(node.clone()).or_default();
                if order.last().is_some_and(|l| *l <= s) {
                    return Err(format!("rollback not in reverse step order on {node}: {order:?} then {s}"));
                }
                order.push(s);
                active.insert(node.clone());
            }
            ProgressKind::NodeFinished => {
                running.remove(&node);
                active.remove(&node);
                finished.insert(node.clone());
            }
            _ => {}
        }
        if !cancelled && limit.is_some_and(|l| failed_nodes.len() > l) {
            over_budget = true;
        }
        if active.len() > window {
            return Err(format!("{} nodes in flight, window is {window}: {}", active.len(), ev(e)));
        }
        if spec.window.as_str() == "lockstep" && spec.batches.len() > 1 && !tripped && !cancelled {
            let batches: BTreeSet<usize> =
                active.iter().filter(|n| !undo_order.contains_key(*n)).map(|n| batch_of[n.as_str()]).collect();
            if batches.len() > 1 {
                return Err(format!("lockstep with nodes of batches {batches:?} in flight: {}", ev(e)));
            }
        }
    }
    if over_budget && !saw_trip && !cancelled {
        return Err(format!(
            "{} nodes failed, over the budget {limit:?}, and the budget never tripped",
            failed_nodes.len()
        ));
    }
    // Each rollback carries the metadata of the attempt that succeeded.
    for (node, step, meta) in &r.rollbacks {
        let a = max_attempt.get(&(node.clone(), *step)).copied().unwrap_or(0);
        let want = json!({ "sim": format!("{node}/{step}/{a}") });
        if *meta != want {
            return Err(format!("rollback of {node} step {step} got metadata {meta}, want {want}"));
        }
    }
    // Every node ends in exactly one final outcome when the job is over.
    let status = r.report.status;
    for (id, n) in &r.report.nodes {
        if status.is_final() && matches!(n.outcome, NodeOutcome::Pending | NodeOutcome::Running) {
            return Err(format!("job {status} but {id} is {}", n.outcome));
        }
        for s in &n.steps {
            if s.attempts > c.plan.steps.iter().find(|p| p.name == s.name).map(|p| p.retries + 1).unwrap_or(0) {
                return Err(format!("{id} step {} has {} attempts", s.name, s.attempts));
            }
        }
    }
    if !status.is_final() && status != JobStatus::Paused {
        return Err(format!("simulation ended with status {status}"));
    }
    Ok(())
}

fn replay(c: &Case, r: &SimRun) -> Job {
    let spec = JobSpec::build(&c.cfg.job_id, &c.plan, &c.cfg.nodes).unwrap();
    let mut job = Job::new(spec, c.cfg.engine);
    for (e, t) in &r.journal {
        job.handle(e.clone(), *t).expect("a journaled event is accepted again");
    }
    job
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn rollout_rules_hold(c in case()) {
        let r = simulate(&c.plan, &c.cfg).unwrap();
        if let Err(e) = check_rules(&c, &r) {
            let events: Vec<String> = r.events.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
            prop_assert!(false, "{e}\nplan: {}\nfaults: {:?}\nop: {:?}\nevents:\n{}", serde_json::to_string(&c.plan).unwrap(), c.cfg.faults, c.cfg.operator, events.join("\n"));
        }
    }

    #[test]
    fn replaying_the_events_gives_the_same_state(c in case()) {
        let r = simulate(&c.plan, &c.cfg).unwrap();
        let again = replay(&c, &r);
        prop_assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&r.final_state).unwrap());
    }

    #[test]
    fn a_snapshot_resumes_exactly(c in case(), cut in 0.0f64..1.0) {
        let r = simulate(&c.plan, &c.cfg).unwrap();
        let spec = JobSpec::build(&c.cfg.job_id, &c.plan, &c.cfg.nodes).unwrap();
        let mut job = Job::new(spec, EngineConfig { ..c.cfg.engine });
        let k = (r.journal.len() as f64 * cut) as usize;
        let mut actions_direct = Vec::new();
        for (e, t) in &r.journal[..k] {
            job.handle(e.clone(), *t).unwrap();
        }
        // Snapshot, restore, go on.
        let text = serde_json::to_string(&job).unwrap();
        let mut restored: Job = serde_json::from_str(&text).unwrap();
        for (e, t) in &r.journal[k..] {
            actions_direct.push(restored.handle(e.clone(), *t).unwrap());
        }
        prop_assert_eq!(serde_json::to_value(&restored).unwrap(), serde_json::to_value(&r.final_state).unwrap());
    }
}
