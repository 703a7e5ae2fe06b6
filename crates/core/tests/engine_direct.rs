//! Rules checked by driving the engine by hand: operator commands that do not apply,
//! unconfirmed cancels, stale results, planned rollbacks vs the job deadline.

use drover_core::engine::*;
use drover_core::parse::{Format, parse_plan};
use drover_core::resolve::{JobSpec, NodeInfo};

fn job(plan: &str, nodes: usize) -> Job {
    let p = parse_plan(plan, Format::Yaml, None).unwrap();
    let fleet: Vec<NodeInfo> = (1..=nodes).map(|i| NodeInfo::new(format!("n{i}"))).collect();
    Job::new(JobSpec::build("j", &p, &fleet).unwrap(), EngineConfig { deadline_grace_ms: 1000, cancel_grace_ms: 2000 })
}

const ONE: &str = "name: t\ntargets: {all: true}\nsteps: [{name: s, action: echo, timeout: 10s}]\n";

fn result(node: &str, attempt: u32, outcome: AttemptOutcome) -> Event {
    Event::StepResult { node: node.into(), step: 0, attempt, outcome, metadata: serde_json::Value::Null, error: None }
}

#[test]
fn operator_commands_that_do_not_apply_are_rejected_and_change_nothing() {
    let mut j = job(ONE, 2);
    assert_eq!(j.handle(Event::Pause, 0).unwrap_err().reason, "the job has not started");
    j.handle(Event::Start, 0).unwrap();
    assert_eq!(j.handle(Event::Start, 0).unwrap_err().reason, "the job has already started");
    let before = serde_json::to_value(&j).unwrap();
    assert_eq!(j.handle(Event::Resume, 1).unwrap_err().reason, "the job is not paused");
    assert_eq!(j.handle(Event::Approve, 1).unwrap_err().reason, "the job is not waiting for approval");
    assert_eq!(serde_json::to_value(&j).unwrap(), before, "a rejected command changed the state");
    j.handle(Event::Pause, 2).unwrap();
    assert_eq!(j.status(), JobStatus::Paused);
    assert_eq!(j.handle(Event::Pause, 3).unwrap_err().reason, "the job is already paused");
    assert!(j.handle(Event::Approve, 3).unwrap_err().reason.contains("use resume"));
    j.handle(Event::Resume, 4).unwrap();
    j.handle(result("n1", 1, AttemptOutcome::Succeeded), 5).unwrap();
    j.handle(result("n2", 1, AttemptOutcome::Succeeded), 6).unwrap();
    assert_eq!(j.status(), JobStatus::Succeeded);
    assert_eq!(j.handle(Event::Cancel, 7).unwrap_err().reason, "the job is already succeeded");
}

#[test]
fn a_node_that_does_not_confirm_a_cancel_is_unknown() {
    let mut j = job(ONE, 2);
    j.handle(Event::Start, 0).unwrap();
    let actions = j.handle(Event::Cancel, 100).unwrap();
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::CancelStep { .. })).count(), 2);
    let grace = actions.iter().find_map(|a| match a {
        Action::SetTimer { at, timer: Timer::CancelGrace } => Some(*at),
        _ => None,
    });
    assert_eq!(grace, Some(2100));
    j.handle(result("n1", 1, AttemptOutcome::Cancelled), 200).unwrap();
    let actions = j.handle(Event::Timer { timer: Timer::CancelGrace }, 2100).unwrap();
    assert!(actions.iter().any(|a| matches!(a, Action::Finish { status: JobStatus::Cancelled, .. })));
    let r = j.report();
    assert_eq!(r.nodes["n1"].outcome, NodeOutcome::Cancelled);
    assert_eq!(r.nodes["n2"].outcome, NodeOutcome::Unknown);
    assert_eq!(r.nodes["n2"].steps[0].status, StepStatus::Unknown);
}

#[test]
fn stale_and_duplicate_results_are_ignored() {
    let plan = "name: t\ntargets: {all: true}\nsteps: [{name: s, action: echo, retries: 1, retry_backoff: 1s}]\n";
    let mut j = job(plan, 1);
    j.handle(Event::Start, 0).unwrap();
    j.handle(result("n1", 1, AttemptOutcome::Failed), 10).unwrap();
    // The same result again, and one for an attempt that never ran: ignored.
    for e in [
        result("n1", 1, AttemptOutcome::Succeeded),
        result("n1", 7, AttemptOutcome::Succeeded),
        result("zz", 1, AttemptOutcome::Succeeded),
    ] {
        let a = j.handle(e, 20).unwrap();
        assert!(matches!(&a[..], [Action::Emit(Progress { kind: ProgressKind::StaleResultIgnored, .. })]), "{a:?}");
    }
    j.handle(Event::Timer { timer: Timer::Retry { node: 0, step: 0, attempt: 2 } }, 1010).unwrap();
    // A late result of attempt 1 does not count for attempt 2.
    let a = j.handle(result("n1", 1, AttemptOutcome::Succeeded), 1020).unwrap();
    assert!(matches!(&a[..], [Action::Emit(Progress { kind: ProgressKind::StaleResultIgnored, .. })]));
    j.handle(result("n1", 2, AttemptOutcome::Succeeded), 1030).unwrap();
    assert_eq!(j.status(), JobStatus::Succeeded);
    assert_eq!(j.report().nodes["n1"].steps[0].attempts, 2);
}

#[test]
fn the_job_deadline_does_not_stop_a_planned_rollback() {
    let plan = "name: t\ntargets: {all: true}\njob_timeout: 1m\nrollout: {max_failures: 0}\nsteps: [{name: s, action: echo}]\n";
    let mut j = job(plan, 2);
    j.handle(Event::Start, 0).unwrap();
    j.handle(result("n1", 1, AttemptOutcome::Succeeded), 10).unwrap();
    j.handle(Event::NodeLost { node: "n2".into(), reason: "gone".into() }, 20).unwrap();
    // Budget tripped, n1 is done: the fleet rollback is under way.
    assert_eq!(j.status(), JobStatus::RollingBack);
    j.handle(Event::Timer { timer: Timer::JobTimeout }, 60_000).unwrap();
    assert_eq!(j.status(), JobStatus::RollingBack);
    j.handle(Event::RollbackResult { node: "n1".into(), step: 0, ok: true, error: None }, 60_010).unwrap();
    assert_eq!(j.status(), JobStatus::RolledBack);
    assert_eq!(j.report().nodes["n1"].outcome, NodeOutcome::RolledBack);
    assert_eq!(j.report().nodes["n2"].outcome, NodeOutcome::Unreachable);
}

#[test]
fn a_tripped_budget_with_nothing_to_undo_fails_the_job() {
    let mut j = job(ONE, 1);
    j.handle(Event::Start, 0).unwrap();
    j.handle(result("n1", 1, AttemptOutcome::Failed), 10).unwrap();
    assert_eq!(j.status(), JobStatus::Failed);
    assert!(j.reason().unwrap().contains("nothing to roll back"), "{:?}", j.reason());
}

#[test]
fn a_job_cancelled_before_it_started_dispatches_nothing() {
    let mut j = job(ONE, 3);
    let actions = j.handle(Event::Cancel, 5).unwrap();
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Dispatch { .. } | Action::SetTimer { .. })),
        "a queued job's cancel must not start anything: {actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(a, Action::Finish { status: JobStatus::Cancelled, .. })));
    assert_eq!(j.status(), JobStatus::Cancelled);
    let r = j.report();
    assert_eq!(r.counts.get(&NodeOutcome::Skipped), Some(&3));
    assert_eq!(j.handle(Event::Start, 6).unwrap_err().reason, "the job has already started");
}
