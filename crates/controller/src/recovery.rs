//! Rebuilding jobs from their journals after a controller restart.
//!
//! Every engine input of a job is journaled (with the time it was applied) before the
//! controller acts on it, and the first line of a job's journal is its frozen spec. So
//! replaying the lines through a fresh engine gives exactly the state the dead controller
//! had when it last made anything durable. What the replay yields besides the state is
//! what the runtime needs to carry on: the timers still pending (with their original
//! times) and the progress events, so that any the dead controller journaled but had not
//! yet published can be published now.
//!
//! With several controllers, the lines are read together with the takeover lines of the
//! lease ([`Names::fence`]), in stream order: a line written under an older epoch than a
//! takeover before it came from a deposed leader that had not noticed yet, and is left
//! out, so that the new leader and every later replay agree on what happened.

use crate::runtime::JournalEntry;
use bytes::Bytes;
use drover_core::engine::{Action, Event, Job, Millis, Progress, ProgressKind, Timer};
use drover_core::wire::{Names, split_lines};
use std::collections::{BTreeMap, BTreeSet};

/// One job, rebuilt.
pub struct Rebuilt {
    pub id: String,
    pub job: Job,
    pub created_at_ms: u64,
    /// The number of the last input replayed (the next one journaled is this + 1).
    pub inputs: u64,
    /// Timers that still matter, at their original times.
    pub timers: Vec<(Millis, Timer)>,
    /// Every progress event the replay produced, in order.
    pub progress: Vec<Progress>,
    /// Nodes that were given work and have not finished (watched for liveness).
    pub active_nodes: BTreeSet<String>,
}

impl Rebuilt {
    /// A job whose journal has its spec but no input yet was queued, not started (one
    /// cancelled in the queue has an input and is final).
    pub fn started(&self) -> bool {
        self.inputs > 0
    }
}

/// What went wrong with individual journal lines (the rest is still rebuilt).
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

/// Rebuild every job from the journal lines `(subject, payload)` in stream order.
pub fn rebuild(names: &Names, lines: Vec<(String, Bytes)>, problems: &mut Problems) -> Vec<Rebuilt> {
    // Group by job, keeping the order in which jobs first appear (their submission order).
    let mut order: Vec<String> = Vec::new();
    let mut by_job: BTreeMap<String, Vec<JournalEntry>> = BTreeMap::new();
    let fence_subject = names.fence();
    let mut fence = 0u64;
    let mut fenced: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for (subject, payload) in lines {
        if subject == fence_subject {
            for line in split_lines(&payload) {
                match serde_json::from_slice::<JournalEntry>(line) {
                    Ok(JournalEntry::Takeover { epoch, .. }) => fence = fence.max(epoch),
                    Ok(_) => problems.0.push("a job line on the lease's subject was ignored".into()),
                    Err(e) => problems.0.push(format!("unreadable takeover line skipped: {e}")),
                }
            }
            continue;
        }
        let Some(job) = names.inputs_job(&subject) else { continue };
        // A message holds one round's lines of the job (one per line).
        for line in split_lines(&payload) {
            match serde_json::from_slice::<JournalEntry>(line) {
                Ok(entry) if entry.epoch() < fence => {
                    *fenced.entry((job.to_string(), entry.epoch())).or_default() += 1;
                }
                Ok(entry) => {
                    if !by_job.contains_key(job) {
                        order.push(job.to_string());
                    }
                    by_job.entry(job.to_string()).or_default().push(entry);
                }
                Err(e) => problems.0.push(format!("job {job}: unreadable journal line skipped: {e}")),
            }
        }
    }
    for ((job, epoch), n) in fenced {
        problems.0.push(format!(
            "job {job}: {n} line(s) of epoch {epoch} written after a newer controller took over were left out"
        ));
    }
    let mut out = Vec::with_capacity(order.len());
    for id in order {
        let entries = by_job.remove(&id).unwrap_or_default();
        if let Some(r) = replay(&id, entries, problems) {
            out.push(r);
        }
    }
    out
}

/// Replay one job's journal. Inputs are applied in the order of their numbers, whatever
/// order the stream holds them in (a line whose publish was retried can land after its
/// successor), and a number seen twice is applied once.
fn replay(id: &str, entries: Vec<JournalEntry>, problems: &mut Problems) -> Option<Rebuilt> {
    let mut spec_line = None;
    let mut inputs_in: Vec<(u64, Event, Millis)> = Vec::new();
    for entry in entries {
        match entry {
            JournalEntry::Spec { spec, created_at_ms, engine, .. } => {
                if spec_line.is_none() {
                    spec_line = Some((spec, created_at_ms, engine));
                } else {
                    problems.0.push(format!("job {id}: a second spec line was ignored"));
                }
            }
            JournalEntry::Input { n, event, now, .. } => inputs_in.push((n, event, now)),
            JournalEntry::Takeover { .. } => {}
        }
    }
    let Some((spec, created_at_ms, engine)) = spec_line else {
        problems.0.push(format!("job {id}: no spec in its journal; not rebuilt"));
        return None;
    };
    if let Err(e) = spec.check_consistent() {
        problems.0.push(format!("job {id}: its journaled spec is damaged ({e}); not rebuilt"));
        return None;
    }
    inputs_in.sort_by_key(|(n, _, _)| *n);
    let mut job = Job::new(*spec, engine);
    let mut inputs = 0u64;
    let mut timers: BTreeMap<Timer, Millis> = BTreeMap::new();
    let mut progress = Vec::new();
    let mut active_nodes = BTreeSet::new();
    for (n, event, now) in inputs_in {
        if n <= inputs {
            continue; // written twice (a publish retried after its ack was lost)
        }
        if n != inputs + 1 {
            problems.0.push(format!("job {id}: journal inputs {} to {} are missing", inputs + 1, n - 1));
        }
        inputs = n;
        match job.handle(event, now) {
            Ok(actions) => {
                for a in actions {
                    match a {
                        Action::SetTimer { at, timer } => {
                            timers.insert(timer, at);
                        }
                        Action::Dispatch { node, .. } | Action::Rollback { node, .. } => {
                            active_nodes.insert(node);
                        }
                        Action::Emit(p) => {
                            if p.kind == ProgressKind::NodeFinished
                                && let Some(node) = &p.node
                            {
                                active_nodes.remove(node);
                            }
                            progress.push(p);
                        }
                        Action::CancelStep { .. } | Action::Finish { .. } => {}
                    }
                }
            }
            Err(e) => problems.0.push(format!("job {id}: journal input {n} no longer applies: {e}")),
        }
    }
    let timers = timers.into_iter().filter(|(t, _)| job.timer_matters(t)).map(|(t, at)| (at, t)).collect();
    Some(Rebuilt { id: id.to_string(), job, created_at_ms, inputs, timers, progress, active_nodes })
}

/// When a rebuilt job's timers fire. A timer that came due while no controller ran must
/// not fire before the results waiting in the stream are applied (a step that succeeded
/// during the outage would be timed out and retried): every timer fires no earlier than
/// `settle`, and the deadline of a step (or undo) whose command is sent again (`resent`)
/// runs from the new send, plus `grace`, as the agent's own timeout does if the command
/// never reached it. A timer only ever fires later than it would have, never earlier.
pub fn settle_timers(
    job: &Job,
    resent: &[Action],
    timers: Vec<(Millis, Timer)>,
    settle: Millis,
    grace: Millis,
) -> Vec<(Millis, Timer)> {
    let resent_deadline = |node: usize| {
        resent.iter().find_map(|a| match a {
            Action::Dispatch { node: id, deadline, .. } | Action::Rollback { node: id, deadline, .. }
                if job.node_index(id) == Some(node) =>
            {
                Some(*deadline + grace)
            }
            _ => None,
        })
    };
    timers
        .into_iter()
        .map(|(at, timer)| {
            let at = match timer {
                Timer::StepDeadline { node, .. } | Timer::RollbackDeadline { node, .. } => {
                    at.max(resent_deadline(node).unwrap_or(settle))
                }
                _ => at,
            };
            (at.max(settle), timer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::engine::{AttemptOutcome, EngineConfig, JobStatus};
    use drover_core::parse::{Format, parse_plan};
    use drover_core::resolve::{JobSpec, NodeInfo};

    fn spec(id: &str) -> JobSpec {
        let plan = parse_plan(
            "name: t\ntargets: {all: true}\nrollout: {strategy: rolling, batch: 1}\nsteps:\n  - {name: a, action: echo, timeout: 10s}\n  - {name: b, action: echo}\n",
            Format::Yaml,
            None,
        )
        .unwrap();
        let fleet: Vec<NodeInfo> = ["n1", "n2"]
            .iter()
            .map(|n| NodeInfo { id: n.to_string(), labels: Default::default(), groups: vec![], online: true })
            .collect();
        JobSpec::build(id, &plan, &fleet).unwrap()
    }

    fn line(names: &Names, job: &str, e: &JournalEntry) -> (String, Bytes) {
        (names.job_inputs(job), serde_json::to_vec(e).unwrap().into())
    }

    fn input(n: u64, event: Event, now: Millis) -> JournalEntry {
        JournalEntry::Input { n, event, now, epoch: 1 }
    }

    fn result(node: &str, step: usize) -> Event {
        Event::StepResult {
            node: node.into(),
            step,
            attempt: 1,
            outcome: AttemptOutcome::Succeeded,
            metadata: serde_json::Value::Null,
            error: None,
        }
    }

    fn spec_line(id: &str) -> JournalEntry {
        JournalEntry::Spec { spec: Box::new(spec(id)), created_at_ms: 5, epoch: 1, engine: EngineConfig::default() }
    }

    #[test]
    fn replay_gives_the_same_state_as_the_live_engine() {
        let names = Names::default();
        let events = [(Event::Start, 10), (result("n1", 0), 20), (result("n1", 1), 30)];
        let mut live = Job::new(spec("j1"), EngineConfig::default());
        let mut lines = vec![line(&names, "j1", &spec_line("j1"))];
        for (i, (e, now)) in events.iter().enumerate() {
            live.handle(e.clone(), *now).unwrap();
            lines.push(line(&names, "j1", &input(i as u64 + 1, e.clone(), *now)));
        }
        // A line written twice and a line of another subject change nothing.
        lines.insert(2, lines[1].clone());
        lines.push((names.job_progress("j1"), Bytes::from_static(b"{}")));
        let mut problems = Problems::default();
        let rebuilt = rebuild(&names, lines, &mut problems);
        assert!(problems.0.is_empty(), "{problems:?}");
        assert_eq!(rebuilt.len(), 1);
        let r = &rebuilt[0];
        assert_eq!((r.id.as_str(), r.inputs, r.created_at_ms), ("j1", 3, 5));
        assert!(r.started());
        assert_eq!(serde_json::to_value(&r.job).unwrap(), serde_json::to_value(&live).unwrap());
        // n2 is now running step a: its deadline timer is pending; n1's are not.
        assert!(r.timers.iter().all(|(_, t)| r.job.timer_matters(t)));
        assert!(!r.timers.is_empty());
        assert_eq!(r.progress.last().map(|p| p.seq), Some(live.last_seq()));
        let inflight = r.job.in_flight_commands(40);
        assert_eq!(inflight.len(), 1, "{inflight:?}");
        assert!(matches!(&inflight[0], Action::Dispatch { node, step: 0, attempt: 1, .. } if node == "n2"));
    }

    #[test]
    fn timers_due_during_the_outage_wait_for_the_results() {
        let names = Names::default();
        let lines = vec![
            line(&names, "j", &spec_line("j")),
            line(&names, "j", &input(1, Event::Start, 10)),
            line(&names, "j", &input(2, result("n1", 0), 20)),
        ];
        let mut problems = Problems::default();
        let r = rebuild(&names, lines, &mut problems).remove(0);
        // n1 runs step b (default 5m timeout); its deadline timer is pending.
        let (at, timer) = r.timers[0];
        assert!(matches!(timer, Timer::StepDeadline { node: 0, step: 1, attempt: 1 }), "{timer:?}");
        // The controller comes back long after that deadline: the command is sent again
        // and its deadline runs from now (plus grace), not at once.
        let now = at + 60_000;
        let resent = r.job.in_flight_commands(now);
        let settled = settle_timers(&r.job, &resent, r.timers.clone(), now + 2_000, 1_000);
        assert_eq!(settled, vec![(now + 300_000 + 1_000, timer)]);
        // A timer still in the future keeps its time; one due now waits for the settle.
        let later = settle_timers(&r.job, &[], vec![(at, timer)], 15, 1_000);
        assert_eq!(later, vec![(at, timer)]);
        let due = settle_timers(&r.job, &[], vec![(5, Timer::JobTimeout)], 15, 1_000);
        assert_eq!(due, vec![(15, Timer::JobTimeout)]);
    }

    #[test]
    fn a_job_with_only_its_spec_was_queued() {
        let names = Names::default();
        let mut problems = Problems::default();
        let rebuilt = rebuild(&names, vec![line(&names, "q", &spec_line("q"))], &mut problems);
        assert_eq!(rebuilt.len(), 1);
        assert!(!rebuilt[0].started());
        assert_eq!(rebuilt[0].job.status(), JobStatus::Pending);
        assert!(rebuilt[0].timers.is_empty());
    }

    #[test]
    fn inputs_apply_in_number_order_whatever_the_stream_order() {
        let names = Names::default();
        // A retried publish landed after its successor, and the spec after an input.
        let lines = vec![
            line(&names, "j", &input(1, Event::Start, 10)),
            line(&names, "j", &spec_line("j")),
            line(&names, "j", &input(3, result("n1", 1), 30)),
            line(&names, "j", &input(2, result("n1", 0), 20)),
        ];
        let mut problems = Problems::default();
        let rebuilt = rebuild(&names, lines, &mut problems);
        assert!(problems.0.is_empty(), "{problems:?}");
        let r = &rebuilt[0];
        assert_eq!(r.inputs, 3);
        assert_eq!(r.job.report().nodes["n1"].outcome, drover_core::engine::NodeOutcome::Succeeded);
        // n2 got its first command and has not finished: it is watched again.
        assert_eq!(r.active_nodes.iter().map(String::as_str).collect::<Vec<_>>(), ["n2"]);
    }

    #[test]
    fn lines_of_a_deposed_leader_after_a_takeover_are_left_out() {
        let names = Names::default();
        let fence = |epoch| {
            let t = JournalEntry::Takeover { epoch, owner: "b".into(), at_ms: 0 };
            (names.fence(), Bytes::from(serde_json::to_vec(&t).unwrap()))
        };
        let at = |n, event, epoch| line(&names, "j", &JournalEntry::Input { n, event, now: 10 * n, epoch });
        let lines = vec![
            fence(1),
            line(&names, "j", &spec_line("j")),
            at(1, Event::Start, 1),
            // Epoch 1 made n1's first step durable before epoch 2 took over: kept.
            at(2, result("n1", 0), 1),
            fence(2),
            // Epoch 1 had not noticed: its next line is not part of the job.
            at(3, result("n1", 1), 1),
            // Epoch 2's own line with the same number is.
            at(3, Event::Pause, 2),
        ];
        let mut problems = Problems::default();
        let r = rebuild(&names, lines, &mut problems).remove(0);
        assert_eq!(r.inputs, 3);
        assert_eq!(r.job.status(), JobStatus::Paused);
        let n1 = &r.job.report().nodes["n1"];
        assert_eq!(n1.steps[1].attempts, 1, "step b was dispatched, its result fenced out: {n1:?}");
        assert_eq!(n1.outcome, drover_core::engine::NodeOutcome::Running);
        let text = problems.0.join("\n");
        assert!(text.contains("job j: 1 line(s) of epoch 1 written after a newer controller took over"), "{text}");
        // Lines written before any lease (no epoch field) count as epoch 1.
        let old: JournalEntry =
            serde_json::from_str(r#"{"type":"input","n":1,"event":{"type":"start"},"now":5}"#).unwrap();
        assert_eq!(old.epoch(), 1);
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let names = Names::default();
        let lines = vec![
            line(&names, "a", &input(1, Event::Start, 1)),
            (names.job_inputs("b"), Bytes::from_static(b"not json")),
            line(&names, "c", &spec_line("c")),
            line(&names, "c", &input(2, Event::Start, 1)),
        ];
        let mut problems = Problems::default();
        let rebuilt = rebuild(&names, lines, &mut problems);
        assert_eq!(rebuilt.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["c"]);
        let text = problems.0.join("\n");
        assert!(text.contains("job a: no spec"), "{text}");
        assert!(text.contains("job b: unreadable journal line"), "{text}");
        assert!(text.contains("job c: journal inputs 1 to 1 are missing"), "{text}");
    }
}
