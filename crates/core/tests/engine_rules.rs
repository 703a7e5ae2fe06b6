//! Table tests for the exact edge cases of the rollout rules, run through the simulator
//! (the real engine in virtual time).

use drover_core::engine::{JobStatus, NodeOutcome, ProgressKind, StepStatus};
use drover_core::parse::{Format, parse_plan};
use drover_core::sim::{Fault, FaultKind, SimConfig, SimRun, StepRef, simulate};

fn plan(rollout: &str, steps: &str) -> drover_core::Plan {
    let text = format!("name: t\ntargets: {{all: true}}\nrollout: {rollout}\nsteps:\n{steps}");
    parse_plan(&text, Format::Yaml, None).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const ONE_STEP: &str = "  - {name: s, action: echo}\n";
const THREE_STEPS: &str = "  - {name: a, action: echo}\n  - {name: b, action: echo}\n  - {name: c, action: echo}\n";

fn fail(node: &str, step: &str) -> Fault {
    Fault { node: node.into(), step: StepRef::parse(step), kind: FaultKind::Fail { first: None } }
}

fn run(rollout: &str, steps: &str, n: usize, faults: Vec<Fault>) -> SimRun {
    let mut cfg = SimConfig::with_nodes(n);
    cfg.faults = faults;
    simulate(&plan(rollout, steps), &cfg).unwrap()
}

fn outcome(r: &SimRun, node: &str) -> NodeOutcome {
    r.report.nodes[node].outcome
}

fn started(r: &SimRun) -> Vec<String> {
    r.report.nodes.iter().filter(|(_, n)| n.outcome != NodeOutcome::Skipped).map(|(k, _)| k.clone()).collect()
}

#[test]
fn max_failures_zero_trips_on_first_failure() {
    let r = run(
        "{strategy: rolling, batch: 1, max_failures: 0, on_budget_exceeded: halt}",
        ONE_STEP,
        5,
        vec![fail("node-2", "s")],
    );
    assert_eq!(r.report.status, JobStatus::Halted);
    assert_eq!(outcome(&r, "node-1"), NodeOutcome::Succeeded);
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Failed);
    for n in ["node-3", "node-4", "node-5"] {
        assert_eq!(outcome(&r, n), NodeOutcome::Skipped, "{n}");
    }
}

#[test]
fn max_failures_n_trips_on_n_plus_one() {
    let faults = vec![fail("node-1", "s"), fail("node-2", "s"), fail("node-3", "s")];
    let r = run("{strategy: sequential, max_failures: 2, on_budget_exceeded: halt}", ONE_STEP, 6, faults.clone());
    assert_eq!(r.report.status, JobStatus::Halted);
    assert_eq!(r.report.counts.get(&NodeOutcome::Failed), Some(&3));
    assert_eq!(r.report.counts.get(&NodeOutcome::Skipped), Some(&3));
    // Two failures are within the budget: the rollout goes on, and the job reports failure.
    let r = run("{strategy: sequential, max_failures: 2, on_budget_exceeded: halt}", ONE_STEP, 6, faults[..2].to_vec());
    assert_eq!(r.report.status, JobStatus::Failed);
    assert_eq!(r.report.counts.get(&NodeOutcome::Succeeded), Some(&4));
}

#[test]
fn max_failures_minus_one_never_trips() {
    let faults = (1..=5).map(|i| fail(&format!("node-{i}"), "s")).collect();
    let r = run("{strategy: rolling, batch: 2, max_failures: -1}", ONE_STEP, 6, faults);
    assert_eq!(r.report.status, JobStatus::Failed);
    assert_eq!(r.report.counts.get(&NodeOutcome::Failed), Some(&5));
    assert_eq!(r.report.counts.get(&NodeOutcome::Succeeded), Some(&1));
    assert!(!r.events.iter().any(|e| e.kind == ProgressKind::BudgetExceeded));
}

#[test]
fn percentage_budget_rounds_down() {
    // 15% of 10 = 1.5 -> 1: the second failure trips.
    let faults = vec![fail("node-1", "s"), fail("node-2", "s")];
    let r = run("{strategy: sequential, max_failures: \"15%\", on_budget_exceeded: halt}", ONE_STEP, 10, faults);
    assert_eq!(r.report.max_failures, Some(1));
    assert_eq!(r.report.status, JobStatus::Halted);
    assert_eq!(r.report.counts.get(&NodeOutcome::Skipped), Some(&8));
    // 5% of 10 = 0.5 -> 0: the first failure trips.
    let r = run(
        "{strategy: sequential, max_failures: \"5%\", on_budget_exceeded: halt}",
        ONE_STEP,
        10,
        vec![fail("node-3", "s")],
    );
    assert_eq!(r.report.max_failures, Some(0));
    assert_eq!(r.report.counts.get(&NodeOutcome::Skipped), Some(&7));
}

#[test]
fn ramp_on_twenty_nodes() {
    let r = run("{strategy: rolling, batch: [1, \"10%\", \"50%\"]}", ONE_STEP, 20, vec![]);
    let sizes: Vec<usize> = r.report.batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![1, 2, 10, 7]);
    assert_eq!(r.report.status, JobStatus::Succeeded);
    // Lockstep: four batches of one 1s step each.
    assert_eq!(r.duration_ms, 4_000);
}

#[test]
fn batch_larger_than_fleet_is_one_batch() {
    let r = run("{strategy: rolling, batch: 50}", ONE_STEP, 3, vec![]);
    assert_eq!(r.report.batches.len(), 1);
    assert_eq!(r.report.batches[0].len(), 3);
    assert_eq!(r.duration_ms, 1_000);
}

#[test]
fn sliding_window_beats_lockstep_on_uneven_steps() {
    let steps = "  - {name: s, action: echo}\n";
    let mk = |window: &str| {
        let mut cfg = SimConfig::with_nodes(4);
        // node-1 is slow (hangs for the 10s timeout); the others are 1s.
        cfg.faults = vec![Fault { node: "node-1".into(), step: StepRef::Index(0), kind: FaultKind::Hang }];
        let p = plan(
            &format!("{{strategy: rolling, batch: 2, window: {window}, max_failures: -1}}"),
            &steps.replace("echo}", "echo, timeout: 10s}"),
        );
        simulate(&p, &cfg).unwrap()
    };
    let lock = mk("lockstep");
    let slide = mk("sliding");
    // Lockstep: batch 1 (node-1, node-2) ends at 10s, batch 2 at 11s.
    assert_eq!(lock.duration_ms, 11_000);
    // Sliding: node-3 starts when node-2 ends (1s), node-4 at 2s; node-1 times out at 10s.
    assert_eq!(slide.duration_ms, 10_000);
    assert_eq!(outcome(&slide, "node-1"), NodeOutcome::TimedOut);
    let starts: Vec<u64> =
        slide.events.iter().filter(|e| e.kind == ProgressKind::StepStarted).map(|e| e.at_ms).collect();
    assert_eq!(starts, vec![0, 0, 1_000, 2_000]);
}

#[test]
fn on_failure_steps_run_only_where_an_earlier_step_failed() {
    let steps = "  - {name: try, action: echo, on_error: continue}\n  - {name: fix, action: echo, when: on_failure}\n  - {name: ok, action: echo, when: on_success}\n  - {name: all, action: echo}\n";
    let r = run("{strategy: parallel}", steps, 3, vec![fail("node-2", "try")]);
    let st = |n: &str| r.report.nodes[n].steps.iter().map(|s| s.status).collect::<Vec<_>>();
    use StepStatus::*;
    assert_eq!(st("node-1"), vec![Succeeded, Skipped, Succeeded, Succeeded]);
    assert_eq!(st("node-2"), vec![Failed, Succeeded, Skipped, Succeeded]);
    // A tolerated failure does not fail the node.
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Succeeded);
    assert_eq!(r.report.status, JobStatus::Succeeded);
}

#[test]
fn hung_step_times_out_and_retries() {
    let mut cfg = SimConfig::with_nodes(1);
    cfg.faults = vec![Fault { node: "node-1".into(), step: StepRef::Index(0), kind: FaultKind::Hang }];
    let p = plan("{max_failures: -1}", "  - {name: s, action: echo, timeout: 3s, retries: 2, retry_backoff: 1s}\n");
    let r = simulate(&p, &cfg).unwrap();
    assert_eq!(outcome(&r, "node-1"), NodeOutcome::TimedOut);
    assert_eq!(r.report.nodes["node-1"].steps[0].attempts, 3);
    assert_eq!(r.report.nodes["node-1"].steps[0].status, StepStatus::TimedOut);
    // 3s + 1s backoff + 3s + 2s backoff + 3s.
    assert_eq!(r.duration_ms, 12_000);
    assert_eq!(r.report.status, JobStatus::Failed);
}

#[test]
fn flaky_step_succeeds_after_retries_with_capped_backoff() {
    let mut cfg = SimConfig::with_nodes(1);
    cfg.faults =
        vec![Fault { node: "node-1".into(), step: StepRef::Index(0), kind: FaultKind::Fail { first: Some(3) } }];
    let p = plan("{}", "  - {name: s, action: echo, retries: 3, retry_backoff: 1s, retry_max: 3s}\n");
    let r = simulate(&p, &cfg).unwrap();
    assert_eq!(outcome(&r, "node-1"), NodeOutcome::Succeeded);
    assert_eq!(r.report.nodes["node-1"].steps[0].attempts, 4);
    // 4 attempts of 1s + backoffs 1s, 2s, 3s (capped from 4s).
    assert_eq!(r.duration_ms, 4_000 + 6_000);
}

#[test]
fn budget_rollback_undoes_the_fleet_in_reverse_order() {
    let r = run("{strategy: rolling, batch: 2, max_failures: 0}", THREE_STEPS, 6, vec![fail("node-3", "b")]);
    assert_eq!(r.report.status, JobStatus::RolledBack);
    for n in ["node-1", "node-2", "node-4"] {
        assert_eq!(outcome(&r, n), NodeOutcome::RolledBack, "{n}");
        assert!(r.report.nodes[n].steps.iter().all(|s| s.status == StepStatus::RolledBack), "{n}");
    }
    // node-3 failed at b; its a was undone (rollback_failed_nodes defaults to true).
    assert_eq!(outcome(&r, "node-3"), NodeOutcome::RolledBack);
    assert_eq!(r.report.nodes["node-3"].failure, Some(NodeOutcome::Failed));
    assert_eq!(r.report.nodes["node-3"].steps[0].status, StepStatus::RolledBack);
    assert_eq!(r.report.nodes["node-3"].steps[2].status, StepStatus::NotRun);
    assert_eq!(started(&r), vec!["node-1", "node-2", "node-3", "node-4"]);
    // Reverse order on node-1: c, b, a.
    let undone: Vec<usize> = r
        .events
        .iter()
        .filter(|e| e.kind == ProgressKind::RollbackStepStarted && e.node.as_deref() == Some("node-1"))
        .filter_map(|e| e.step)
        .collect();
    assert_eq!(undone, vec![2, 1, 0]);
}

#[test]
fn failed_rollback_fails_the_job_and_stops_that_nodes_undo() {
    let mut cfg = SimConfig::with_nodes(2);
    cfg.faults = vec![
        fail("node-2", "c"),
        Fault { node: "node-1".into(), step: StepRef::Index(1), kind: FaultKind::FailRollback },
    ];
    let r = simulate(&plan("{strategy: sequential}", THREE_STEPS), &cfg).unwrap();
    assert_eq!(r.report.status, JobStatus::Failed);
    assert_eq!(r.report.reason.as_deref(), Some("rollback failed on 1 node"));
    let st: Vec<StepStatus> = r.report.nodes["node-1"].steps.iter().map(|s| s.status).collect();
    assert_eq!(st, vec![StepStatus::Succeeded, StepStatus::RollbackFailed, StepStatus::RolledBack]);
    assert_eq!(outcome(&r, "node-1"), NodeOutcome::RollbackFailed);
}

#[test]
fn pause_after_batch_waits_for_approval() {
    let p = plan("{strategy: rolling, batch: [1, \"50%\"], pause_after_batches: [1]}", ONE_STEP);
    let cfg = SimConfig::with_nodes(5);
    let r = simulate(&p, &cfg).unwrap();
    assert_eq!(r.report.status, JobStatus::Paused);
    assert_eq!(started(&r).len(), 5);
    assert_eq!(r.report.counts.get(&NodeOutcome::Succeeded), Some(&1));
    assert_eq!(r.report.counts.get(&NodeOutcome::Pending), Some(&4));
    let mut cfg = cfg;
    cfg.auto_approve = true;
    let r = simulate(&p, &cfg).unwrap();
    assert_eq!(r.report.status, JobStatus::Succeeded);
    assert!(r.events.iter().any(|e| e.kind == ProgressKind::Approved));
}

#[test]
fn budget_pause_stops_new_nodes_and_waits() {
    let r = run("{strategy: rolling, batch: 2, on_budget_exceeded: pause}", ONE_STEP, 6, vec![fail("node-1", "s")]);
    assert_eq!(r.report.status, JobStatus::Paused);
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Succeeded);
    assert_eq!(r.report.counts.get(&NodeOutcome::Pending), Some(&4));
}

#[test]
fn lost_node_is_unreachable_and_counts() {
    let mut cfg = SimConfig::with_nodes(4);
    cfg.faults = vec![Fault { node: "node-2".into(), step: StepRef::Index(1), kind: FaultKind::Lose }];
    let r = simulate(
        &plan("{strategy: rolling, batch: 2, max_failures: 0, on_budget_exceeded: rollback}", THREE_STEPS),
        &cfg,
    )
    .unwrap();
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Unreachable);
    assert_eq!(r.report.nodes["node-2"].steps[1].status, StepStatus::Unknown);
    assert_eq!(outcome(&r, "node-1"), NodeOutcome::RolledBack);
    assert_eq!(outcome(&r, "node-3"), NodeOutcome::Skipped);
    assert_eq!(r.report.status, JobStatus::RolledBack);
}

#[test]
fn barrier_holds_the_batch_until_every_node_reached_it() {
    let steps = "  - {name: drain, action: echo}\n  - {name: switch, action: echo, barrier: true}\n";
    let mut cfg = SimConfig::with_nodes(3);
    cfg.step_times = vec![(StepRef::Index(0), drover_core::Dur::from_secs(1))];
    cfg.faults =
        vec![Fault { node: "node-3".into(), step: StepRef::Index(0), kind: FaultKind::Fail { first: Some(2) } }];
    let p = plan(
        "{}",
        &steps.replace(
            "action: echo}\n  - {name: switch",
            "action: echo, retries: 2, retry_backoff: 1s}\n  - {name: switch",
        ),
    );
    let r = simulate(&p, &cfg).unwrap();
    // node-3 finishes drain at 1+1+1+2+1 = 6s; nobody starts switch before that.
    let first_switch =
        r.events.iter().filter(|e| e.kind == ProgressKind::StepStarted && e.step == Some(1)).map(|e| e.at_ms).min();
    assert_eq!(first_switch, Some(6_000));
    assert_eq!(r.report.status, JobStatus::Succeeded);
}

#[test]
fn job_timeout_cancels_running_steps() {
    let p = parse_plan("name: t\ntargets: {all: true}\njob_timeout: 2500ms\nrollout: {strategy: sequential}\nsteps: [{name: s, action: echo}]\n", Format::Yaml, None).unwrap();
    let r = simulate(&p, &SimConfig::with_nodes(4)).unwrap();
    assert_eq!(r.report.status, JobStatus::Failed);
    assert_eq!(r.report.reason.as_deref(), Some("the job timed out"));
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Succeeded);
    assert_eq!(outcome(&r, "node-3"), NodeOutcome::TimedOut);
    assert_eq!(outcome(&r, "node-4"), NodeOutcome::Skipped);
    assert_eq!(r.duration_ms, 2_500);
}

#[test]
fn batch_delay_waits_between_lockstep_batches() {
    let r = run("{strategy: rolling, batch: 2, batch_delay: 30s}", ONE_STEP, 6, vec![]);
    assert_eq!(r.duration_ms, 3_000 + 2 * 30_000);
}

#[test]
fn offline_nodes_count_as_failed_or_are_excluded() {
    let mut cfg = SimConfig::with_nodes(3);
    cfg.nodes[1].online = false;
    let r = simulate(&plan("{max_failures: 0, on_budget_exceeded: halt}", ONE_STEP), &cfg).unwrap();
    assert_eq!(outcome(&r, "node-2"), NodeOutcome::Unreachable);
    assert_eq!(r.report.status, JobStatus::Halted);
    assert_eq!(r.report.counts.get(&NodeOutcome::Skipped), Some(&2));
}

#[test]
fn ten_thousand_nodes_rolling_three_steps_is_fast() {
    // A guard against accidental O(n^2): the release figure is in docs/PERFORMANCE.md;
    // this bound is loose enough for a debug build on a loaded 2-core machine.
    let p = plan("{strategy: rolling, batch: \"10%\"}", THREE_STEPS);
    let started = std::time::Instant::now();
    let r = simulate(&p, &SimConfig::with_nodes(10_000)).unwrap();
    let took = started.elapsed();
    assert_eq!(r.report.status, JobStatus::Succeeded);
    assert_eq!(r.report.counts.get(&NodeOutcome::Succeeded), Some(&10_000));
    assert!(took < std::time::Duration::from_secs(10), "10,000-node simulation took {took:?}");
}
