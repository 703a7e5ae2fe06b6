//! Text output: the event timeline, job / node / plan tables.

use drover_core::api::{JobSummary, JobView, NodeDetail, NodeView, PlanPreview};
use drover_core::engine::{JobReport, NodeOutcome, Progress, ProgressKind};
use drover_core::resolve::natural_cmp;
use drover_core::wire::CommandKind;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Fleets up to this size get every node in tables and timelines; larger ones only the
/// nodes that did not succeed.
pub const SMALL_FLEET: usize = 50;

/// A plain table with a header row, no borders.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.to_vec());
    t
}

/// `12.345s`.
pub fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

/// One timeline line for an event. `step_names` are the plan's steps in order.
pub fn describe(e: &Progress, step_names: &[String]) -> String {
    let step = e.step.and_then(|s| step_names.get(s)).map(String::as_str).unwrap_or("?");
    let node = e.node.as_deref().unwrap_or("");
    let attempt = e.attempt.filter(|a| *a > 1).map(|a| format!(" (attempt {a})")).unwrap_or_default();
    let detail = e.detail.as_deref().unwrap_or("");
    let with_detail = |s: String| if detail.is_empty() { s } else { format!("{s}: {detail}") };
    match e.kind {
        ProgressKind::JobStarted => format!("job started: {detail}"),
        ProgressKind::BatchStarted => format!("batch {} started ({detail})", e.batch.unwrap_or(0)),
        ProgressKind::StepStarted => format!("{node} {step} started{attempt}"),
        ProgressKind::StepSucceeded => format!("{node} {step} succeeded{attempt}"),
        ProgressKind::StepFailed => with_detail(format!("{node} {step} FAILED{attempt}")),
        ProgressKind::StepTimedOut => with_detail(format!("{node} {step} TIMED OUT{attempt}")),
        ProgressKind::StepCancelled => format!("{node} {step} cancelled{attempt}"),
        ProgressKind::StepSkipped => with_detail(format!("{node} {step} skipped")),
        ProgressKind::RetryScheduled => format!("{node} {step} retry{attempt} {detail}"),
        ProgressKind::NodeFinished => format!("{node} finished: {detail}"),
        ProgressKind::NodeLost => with_detail(format!("{node} LOST")),
        ProgressKind::BudgetExceeded => format!("FAILURE BUDGET EXCEEDED ({detail})"),
        ProgressKind::Paused => match e.batch {
            Some(b) => format!("paused after batch {b}: waiting for approve"),
            None => format!("paused ({detail})"),
        },
        ProgressKind::Resumed => "resumed".into(),
        ProgressKind::Approved => format!("approved: going on after batch {}", e.batch.unwrap_or(0)),
        ProgressKind::RollbackRequested => "rollback requested by operator".into(),
        ProgressKind::RollbackStarted => format!("fleet rollback started ({detail})"),
        ProgressKind::RollbackStepStarted => format!("{node} undo {step} started"),
        ProgressKind::RollbackStepSucceeded => format!("{node} undo {step} done"),
        ProgressKind::RollbackStepFailed => with_detail(format!("{node} undo {step} FAILED")),
        ProgressKind::CancelRequested => format!("cancel requested ({detail})"),
        ProgressKind::StaleResultIgnored => with_detail(format!("{node} {step} late result ignored{attempt}")),
        ProgressKind::JobFinished => format!("job finished: {detail}"),
    }
}

/// A timeline line with its time since `t0`: `     1.500s  web-1 upgrade started`.
pub fn timeline_line(e: &Progress, t0: u64, step_names: &[String]) -> String {
    format!("  {:>9}  {}", secs(e.at_ms.saturating_sub(t0)), describe(e, step_names))
}

/// The plan's step names, as a job's report lists them.
pub fn step_names(r: &JobReport) -> Vec<String> {
    r.nodes.values().next().map(|n| n.steps.iter().map(|s| s.name.clone()).collect()).unwrap_or_default()
}

/// `3 succeeded, 1 failed`.
pub fn counts_line(counts: &BTreeMap<NodeOutcome, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
}

/// The per-node table (NODE, BATCH, OUTCOME, STEPS): every node on small fleets, the ones
/// that did not succeed on large ones; at most 200 rows. `None` when there is no row.
pub fn node_table(r: &JobReport) -> Option<comfy_table::Table> {
    let mut order: Vec<_> =
        r.nodes.iter().filter(|(_, n)| r.total_nodes <= SMALL_FLEET || n.outcome != NodeOutcome::Succeeded).collect();
    if order.is_empty() {
        return None;
    }
    order.sort_by(|a, b| natural_cmp(a.0, b.0));
    let mut t = table(&["NODE", "BATCH", "OUTCOME", "STEPS"]);
    for (id, n) in order.into_iter().take(200) {
        let steps: Vec<String> = n
            .steps
            .iter()
            .map(|s| {
                if s.attempts > 1 {
                    format!("{}:{}x{}", s.name, s.status, s.attempts)
                } else {
                    format!("{}:{}", s.name, s.status)
                }
            })
            .collect();
        let outcome = match n.failure {
            Some(f) => format!("{} ({f})", n.outcome),
            None => n.outcome.to_string(),
        };
        t.add_row(vec![id.to_string(), n.batch.to_string(), outcome, steps.join(" ")]);
    }
    Some(t)
}

/// RFC 3339 (seconds) of milliseconds since the Unix epoch.
pub fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `4m 10s`: a duration in whole seconds (milliseconds under one second).
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// `5m ago` from a Unix-epoch time in milliseconds.
pub fn age(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let d = now_ms.saturating_sub(ms) / 1000;
    let (n, unit) = match d {
        0..60 => (d, "s"),
        60..3600 => (d / 60, "m"),
        3600..86_400 => (d / 3600, "h"),
        _ => (d / 86_400, "d"),
    };
    format!("{n}{unit} ago")
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A job as `drover jobs get` (and the end of `run --watch|--wait`) prints it.
pub fn job_text(v: &JobView) -> String {
    let r = &v.report;
    let mut s = String::new();
    let reason = r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default();
    let _ = writeln!(s, "job:      {}", r.job_id);
    let _ = writeln!(s, "name:     {}", r.name);
    let _ = writeln!(s, "status:   {}{reason}", r.status);
    if let Some(w) = &v.waiting {
        let _ = writeln!(s, "waiting:  {w}");
    }
    let _ = writeln!(s, "created:  {}", timestamp(v.created_at_ms));
    match (r.started_at_ms, r.finished_at_ms) {
        (Some(a), Some(b)) => {
            let _ = writeln!(s, "ran:      {} (started {})", human(b.saturating_sub(a)), timestamp(a));
        }
        (Some(a), None) => {
            let _ = writeln!(s, "started:  {}", timestamp(a));
        }
        _ => {}
    }
    let budget = match r.max_failures {
        Some(m) => format!("{} failed of max {m}", r.failed_nodes),
        None => format!("{} failed (no budget)", r.failed_nodes),
    };
    let _ = writeln!(s, "nodes:    {} ({})", r.total_nodes, counts_line(&r.counts));
    let _ = writeln!(s, "budget:   {budget}");
    let _ = writeln!(s, "batches:  {} of {} started", r.batches.len(), r.planned_batches);
    if !v.excluded_offline.is_empty() {
        let _ = writeln!(s, "excluded (offline at submission): {}", v.excluded_offline.join(", "));
    }
    if let Some(t) = node_table(r) {
        let _ = writeln!(s);
        let _ = writeln!(s, "{t}");
        let shown =
            r.nodes.values().filter(|n| r.total_nodes <= SMALL_FLEET || n.outcome != NodeOutcome::Succeeded).count();
        if shown > 200 {
            let _ = writeln!(s, "({} more nodes not shown; -o json has them all)", shown - 200);
        }
    }
    s
}

/// The last lines of `run --watch|--wait`: a summary, the node table.
pub fn summary_text(v: &JobView) -> String {
    let r = &v.report;
    let mut s = String::new();
    if let Some(t) = node_table(r) {
        let _ = writeln!(s, "{t}");
    }
    let took = match (r.started_at_ms, r.finished_at_ms) {
        (Some(a), Some(b)) => format!(" after {}", human(b.saturating_sub(a))),
        _ => String::new(),
    };
    let reason = r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default();
    let _ = writeln!(s, "nodes: {}", counts_line(&r.counts));
    let _ = writeln!(s, "job {} \"{}\": {}{reason}{took}", r.job_id, r.name, r.status);
    s
}

/// `drover jobs list`.
pub fn jobs_table(jobs: &[JobSummary], now_ms: u64) -> comfy_table::Table {
    let mut t = table(&["ID", "NAME", "STATUS", "NODES", "CREATED", "DURATION"]);
    for j in jobs {
        let duration = match (j.started_at_ms, j.finished_at_ms) {
            (Some(a), Some(b)) => human(b.saturating_sub(a)),
            (Some(a), None) => format!("{} (running)", human(now_ms.saturating_sub(a))),
            _ => "-".into(),
        };
        let mut status = j.status.to_string();
        if j.waiting.is_some() && !j.status.is_final() {
            status.push_str(" (waiting)");
        }
        t.add_row(vec![
            j.id.clone(),
            j.name.clone(),
            status,
            format!("{}: {}", j.total_nodes, counts_line(&j.counts)),
            age(j.created_at_ms, now_ms),
            duration,
        ]);
    }
    t
}

fn labels(l: &BTreeMap<String, String>) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn node_state(n: &NodeView) -> String {
    use drover_core::wire::AgentStatus;
    match (n.online, n.status) {
        (false, _) => "offline",
        (true, AgentStatus::Online) => "online",
        (true, AgentStatus::Draining) => "draining",
        (true, AgentStatus::Stopped) => "stopped",
    }
    .to_string()
}

/// `drover nodes list`.
pub fn nodes_table(nodes: &[NodeView]) -> comfy_table::Table {
    let mut t = table(&["ID", "STATUS", "LABELS", "GROUPS", "LAST SEEN", "BUSY WITH", "VERSION"]);
    let mut order: Vec<&NodeView> = nodes.iter().collect();
    order.sort_by(|a, b| natural_cmp(&a.id, &b.id));
    for n in order {
        t.add_row(vec![
            n.id.clone(),
            node_state(n),
            labels(&n.labels),
            if n.groups.is_empty() { "-".into() } else { n.groups.join(",") },
            n.last_seen_ago_ms.map(|ms| format!("{} ago", human(ms))).unwrap_or_else(|| "-".into()),
            n.busy_with.clone().unwrap_or_else(|| "-".into()),
            if n.facts.agent_version.is_empty() { "-".into() } else { n.facts.agent_version.clone() },
        ]);
    }
    t
}

/// `drover nodes get`.
pub fn node_text(info: &crate::client::NodeInfo) -> String {
    let n = &info.node;
    let mut s = String::new();
    let _ = writeln!(s, "node:      {}", n.id);
    let _ = writeln!(s, "status:    {}", node_state(n));
    let _ = writeln!(s, "labels:    {}", labels(&n.labels));
    if !n.groups.is_empty() {
        let _ = writeln!(s, "groups:    {}", n.groups.join(", "));
    }
    if let Some(ms) = n.last_seen_ago_ms {
        let _ = write!(s, "last seen: {} ago", human(ms));
        match (n.heartbeat_ms, n.lost_after_ms) {
            (Some(beat), Some(lost)) => {
                let _ = write!(s, " (beats every {}; lost after {} of silence)", human(beat), human(lost));
            }
            (None, Some(lost)) => {
                let _ = write!(s, " (lost after {} of silence)", human(lost));
            }
            _ => {}
        }
        s.push('\n');
    }
    let _ = writeln!(s, "busy with: {}", n.busy_with.as_deref().unwrap_or("-"));
    let f = &n.facts;
    let _ = writeln!(s, "host:      {} ({} {})", f.hostname, f.os, f.arch);
    let _ = writeln!(s, "agent:     {} (started {})", f.agent_version, timestamp(f.started_at_ms));
    match &info.record {
        Some(rec) if !rec.actions.is_empty() => {
            let mut t = table(&["ACTION", "DRY RUN", "UNDO", "DESCRIPTION"]);
            for a in &rec.actions {
                let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
                t.add_row(vec![a.name.clone(), yes(a.dry_run), yes(a.undo), a.description.clone()]);
            }
            let _ = writeln!(s, "\n{t}");
        }
        _ => {
            let _ = writeln!(s, "actions:   {}", n.actions.join(", "));
        }
    }
    s
}

/// A list of ids, cut after `max` with a count of the rest.
pub fn id_list(ids: &[String], max: usize) -> String {
    if ids.len() <= max {
        return ids.join(", ");
    }
    format!("{}, ... (+{} more)", ids[..max].join(", "), ids.len() - max)
}

/// `drover plan` / `drover run --dry-run`.
pub fn preview_text(p: &PlanPreview) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan \"{}\": {} targets in {} batches, {} steps ({})",
        p.name,
        p.targets.len(),
        p.batches.len(),
        p.steps.len(),
        p.steps.join(", ")
    );
    let budget = match p.max_failures {
        Some(0) => "the first failed node trips it (max_failures 0)".to_string(),
        Some(m) => format!(
            "trips when more than {} fail{}",
            drover_core::count(m, "node", "nodes"),
            if m == 1 { "s" } else { "" }
        ),
        None => "none (max_failures -1)".to_string(),
    };
    let _ = writeln!(s, "targets:  {}", id_list(&p.targets, 20));
    let _ = writeln!(s, "budget:   {budget}");
    if !p.offline.is_empty() {
        let _ = writeln!(s, "offline (count as failed at start): {}", id_list(&p.offline, 20));
    }
    if !p.excluded_offline.is_empty() {
        let _ = writeln!(s, "offline (left out): {}", id_list(&p.excluded_offline, 20));
    }
    let _ = writeln!(s, "batches:");
    let shown = 100;
    for (i, b) in p.batches.iter().enumerate().take(shown) {
        let _ = writeln!(s, "  {:>3}  {:>10}  {}", i + 1, drover_core::count(b.len(), "node", "nodes"), id_list(b, 12));
    }
    if p.batches.len() > shown {
        let _ = writeln!(s, "  ... {} more batches (-o json has them all)", p.batches.len() - shown);
    }
    let _ = writeln!(s, "nothing was run (dry run)");
    s
}

fn indent(text: &str) -> String {
    let mut s = String::new();
    for line in text.lines() {
        let _ = writeln!(s, "    {line}");
    }
    s
}

/// `drover jobs logs ID --node N`: every step, attempt and undo with its output.
pub fn node_detail_text(d: &NodeDetail) -> String {
    let mut s = String::new();
    let failure = d.failure.map(|f| format!(" ({f})")).unwrap_or_default();
    let _ = writeln!(s, "node {} in job {}: {}{failure}, batch {}", d.node, d.job_id, d.outcome, d.batch);
    let total = d.steps.len();
    for (i, st) in d.steps.iter().enumerate() {
        let attempts = if st.attempts == 1 { "1 attempt".to_string() } else { format!("{} attempts", st.attempts) };
        let _ = writeln!(s, "\n== step {}/{total} {} ({}): {}, {attempts}", i + 1, st.name, st.action, st.status);
        for r in &st.results {
            let what = match r.id.kind {
                CommandKind::Run => format!("attempt {}", r.id.attempt),
                CommandKind::Rollback => "undo".to_string(),
            };
            let mut line = format!("-- {what}: {}", outcome_str(r.outcome));
            if r.changed {
                line.push_str(", changed");
            }
            if let Some(c) = r.exit_code {
                let _ = write!(line, ", exit code {c}");
            }
            let _ = write!(line, ", {}", human(r.duration_ms));
            if r.truncated {
                line.push_str(", output truncated");
            }
            let _ = writeln!(s, "{line}");
            if let Some(e) = &r.error {
                let _ = writeln!(s, "   error: {e}");
            }
            if !r.stdout.is_empty() {
                let _ = write!(s, "   stdout:\n{}", indent(&r.stdout));
            }
            if !r.stderr.is_empty() {
                let _ = write!(s, "   stderr:\n{}", indent(&r.stderr));
            }
        }
    }
    s
}

fn outcome_str(o: drover_core::engine::AttemptOutcome) -> &'static str {
    use drover_core::engine::AttemptOutcome::*;
    match o {
        Succeeded => "succeeded",
        Failed => "failed",
        TimedOut => "timed out",
        Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::engine::{JobStatus, NodeReport, StepReport, StepStatus};

    fn ev(seq: u64, at_ms: u64, kind: ProgressKind) -> Progress {
        Progress { seq, at_ms, kind, node: None, step: None, attempt: None, batch: None, detail: None }
    }

    #[test]
    fn a_node_says_how_often_it_beats_and_when_it_would_be_lost() {
        let node = NodeView {
            id: "web-1".into(),
            labels: Default::default(),
            groups: vec![],
            facts: Default::default(),
            online: true,
            status: drover_core::wire::AgentStatus::Online,
            last_seen_ago_ms: Some(3_000),
            heartbeat_ms: Some(20_000),
            lost_after_ms: Some(60_000),
            busy_with: None,
            actions: vec![],
        };
        let info = crate::client::NodeInfo { node, record: None };
        let text = node_text(&info);
        assert!(text.contains("last seen: 3s ago (beats every 20s; lost after 1m of silence)\n"), "{text}");
    }

    #[test]
    fn timeline_lines() {
        let names = vec!["upgrade".to_string(), "restart".to_string()];
        let mut e = ev(3, 2500, ProgressKind::StepFailed);
        e.node = Some("web-1".into());
        e.step = Some(1);
        e.attempt = Some(2);
        e.detail = Some("exit code 1".into());
        assert_eq!(describe(&e, &names), "web-1 restart FAILED (attempt 2): exit code 1");
        assert_eq!(timeline_line(&e, 1000, &names), "     1.500s  web-1 restart FAILED (attempt 2): exit code 1");
        let mut p = ev(4, 0, ProgressKind::Paused);
        p.batch = Some(1);
        assert_eq!(describe(&p, &names), "paused after batch 1: waiting for approve");
        let mut b = ev(1, 0, ProgressKind::BatchStarted);
        b.batch = Some(2);
        b.detail = Some("5 nodes".into());
        assert_eq!(describe(&b, &names), "batch 2 started (5 nodes)");
        let mut s = ev(1, 0, ProgressKind::StepStarted);
        s.step = Some(9);
        assert_eq!(describe(&s, &names), " ? started");
    }

    fn report() -> JobReport {
        let node = |outcome, batch, status, attempts| NodeReport {
            outcome,
            failure: None,
            batch,
            steps: vec![StepReport { name: "upgrade".into(), status, attempts, error: None }],
        };
        let mut nodes = BTreeMap::new();
        nodes.insert("web-10".to_string(), node(NodeOutcome::Succeeded, 2, StepStatus::Succeeded, 1));
        nodes.insert("web-2".to_string(), node(NodeOutcome::Failed, 1, StepStatus::Failed, 3));
        let mut counts = BTreeMap::new();
        counts.insert(NodeOutcome::Succeeded, 1);
        counts.insert(NodeOutcome::Failed, 1);
        JobReport {
            job_id: "j1".into(),
            name: "up".into(),
            status: JobStatus::Failed,
            reason: Some("failure budget exceeded".into()),
            started_at_ms: Some(1_000),
            finished_at_ms: Some(63_500),
            total_nodes: 2,
            counts,
            failed_nodes: 1,
            max_failures: Some(0),
            batches: vec![vec!["web-2".into()], vec!["web-10".into()]],
            planned_batches: 2,
            nodes,
        }
    }

    #[test]
    fn summary_and_tables() {
        let v = JobView { report: report(), created_at_ms: 0, waiting: None, excluded_offline: vec![], last_event: 9 };
        assert_eq!(step_names(&v.report), vec!["upgrade".to_string()]);
        let s = summary_text(&v);
        let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
        assert_eq!(
            lines,
            vec![
                " NODE    BATCH  OUTCOME    STEPS",
                " web-2   1      failed     upgrade:failedx3",
                " web-10  2      succeeded  upgrade:succeeded",
                "nodes: 1 succeeded, 1 failed",
                "job j1 \"up\": failed (failure budget exceeded) after 1m 2s",
            ]
        );
        let g = job_text(&v);
        assert!(g.contains("status:   failed (failure budget exceeded)"), "{g}");
        assert!(g.contains("budget:   1 failed of max 0"), "{g}");
        assert!(g.contains("batches:  2 of 2 started"), "{g}");
    }

    #[test]
    fn preview_lines() {
        let p = PlanPreview {
            name: "up".into(),
            targets: vec!["a".into(), "b".into(), "c".into()],
            offline: vec!["c".into()],
            excluded_offline: vec![],
            batches: vec![vec!["a".into()], vec!["b".into(), "c".into()]],
            max_failures: Some(1),
            steps: vec!["s1".into(), "s2".into()],
        };
        let t = preview_text(&p);
        assert!(t.starts_with("plan \"up\": 3 targets in 2 batches, 2 steps (s1, s2)\n"), "{t}");
        assert!(t.contains("targets:  a, b, c\n"), "{t}");
        assert!(t.contains("budget:   trips when more than 1 node fails"));
        assert!(t.contains("offline (count as failed at start): c"));
        assert!(t.contains("    2     2 nodes  b, c\n"), "{t}");
        assert_eq!(id_list(&["a".into(), "b".into(), "c".into()], 2), "a, b, ... (+1 more)");
    }

    #[test]
    fn ages_and_durations() {
        assert_eq!(age(1_000, 61_000), "1m ago");
        assert_eq!(age(0, 61_000), "-");
        assert_eq!(age(1_000, 1_000 + 3 * 86_400_000), "3d ago");
        assert_eq!(human(999), "999ms");
        assert_eq!(human(62_500), "1m 2s");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    }
}
