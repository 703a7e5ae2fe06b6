//! Following a job's events (`GET /v1/jobs/{id}/events`, SSE) with reconnects, and the
//! displays fed by them: progress bars, timeline lines, JSON lines, quiet.

use crate::client::{CliError, Client};
use crate::format::{describe, timeline_line};
use crate::sse::SseParser;
use drover_core::engine::{JobStatus, NodeOutcome, Progress, ProgressKind};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

/// What consumes a job's events.
pub trait Sink {
    /// A new event (never one seen before, in sequence order).
    fn event(&mut self, e: &Progress);
    /// No event for a while.
    fn idle(&mut self) {}
    /// The stream dropped before the job ended; reconnecting.
    fn reconnecting(&mut self, _why: &str) {}
    /// Following is over (clear live displays).
    fn done(&mut self) {}
    /// Stop following now (checked after every event).
    fn finished(&self) -> bool {
        false
    }
}

/// How to follow.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Call [`Sink::idle`] after this long without data.
    pub idle: Duration,
    /// Give up when no connection worked for this long.
    pub give_up_after: Duration,
    /// First reconnect delay; it doubles up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            idle: Duration::from_millis(500),
            give_up_after: Duration::from_secs(60),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// How following ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The server sent `end` with this status (`None`: it did not parse).
    End(Option<JobStatus>),
    /// The sequence number asked for was reached, or the sink had enough.
    Reached,
}

fn retryable(e: &CliError) -> bool {
    match e {
        CliError::Unreachable { .. } | CliError::Other(_) => true,
        CliError::Api { status, .. } => matches!(status, 502..=504),
        CliError::Invalid(_) => false,
    }
}

/// Follow job `job` from event `from` (1 = the start) until its `end`, or until event
/// `until` was seen. Reconnects with `from=<last seq + 1>` when the stream drops.
pub async fn follow(
    client: &Client,
    job: &str,
    from: u64,
    until: Option<u64>,
    sink: &mut dyn Sink,
    opts: &Follow,
) -> Result<Ended, CliError> {
    let mut next = from.max(1);
    let mut failing_since: Option<Instant> = None;
    let mut delay = opts.first_delay;
    loop {
        if until.is_some_and(|u| next > u) {
            return Ok(Ended::Reached);
        }
        let why = match client.events(job, next).await {
            Err(e) if retryable(&e) => e,
            Err(e) => return Err(e),
            Ok(mut resp) => {
                let opened = Instant::now();
                let mut parser = SseParser::new();
                let mut got_event = false;
                let why = loop {
                    let chunk = match tokio::time::timeout(opts.idle, resp.chunk()).await {
                        Err(_) => {
                            sink.idle();
                            continue;
                        }
                        Ok(Ok(Some(bytes))) => bytes,
                        Ok(Ok(None)) => break CliError::Other("the event stream closed before the job ended".into()),
                        Ok(Err(e)) => break CliError::Other(format!("the event stream broke: {e}")),
                    };
                    for ev in parser.feed(&chunk) {
                        match ev.event.as_str() {
                            "end" => {
                                let status = serde_json::from_str::<serde_json::Value>(&ev.data)
                                    .ok()
                                    .and_then(|v| serde_json::from_value::<JobStatus>(v.get("status")?.clone()).ok());
                                return Ok(Ended::End(status));
                            }
                            "progress" | "message" => match serde_json::from_str::<Progress>(&ev.data) {
                                Ok(p) => {
                                    if p.seq < next {
                                        continue; // already seen
                                    }
                                    next = p.seq + 1;
                                    got_event = true;
                                    sink.event(&p);
                                    if until.is_some_and(|u| p.seq >= u) || sink.finished() {
                                        return Ok(Ended::Reached);
                                    }
                                }
                                Err(e) => {
                                    // A newer controller's event this drover does not know: skip it.
                                    tracing::warn!("skipping an event that does not parse: {e}: {}", ev.data);
                                    if let Some(seq) = ev.id.as_deref().and_then(|s| s.parse::<u64>().ok()) {
                                        next = next.max(seq + 1);
                                    }
                                }
                            },
                            _ => {}
                        }
                    }
                };
                if got_event || opened.elapsed() >= Duration::from_secs(5) {
                    failing_since = None;
                    delay = opts.first_delay;
                }
                why
            }
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= opts.give_up_after {
            return Err(why);
        }
        tracing::debug!("reconnecting to the event stream of {job} from {next}: {why}");
        sink.reconnecting(&why.to_string());
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(opts.max_delay);
    }
}

/// The "job paused" hint, printed once per pause when the stream goes quiet.
#[derive(Debug)]
pub struct PauseHint {
    job: String,
    api_flag: String,
    pending: Option<String>,
}

impl PauseHint {
    /// `api_flag`: ` --api URL` when the hint's command needs it, else empty.
    pub fn new(job: &str, api_flag: &str) -> PauseHint {
        PauseHint { job: job.to_string(), api_flag: api_flag.to_string(), pending: None }
    }

    pub fn event(&mut self, e: &Progress) {
        match e.kind {
            ProgressKind::Paused => {
                let (job, api) = (&self.job, &self.api_flag);
                self.pending = Some(match (e.batch, e.detail.as_deref()) {
                    (Some(_), _) => format!("job paused: waiting for `drover jobs approve {job}{api}`"),
                    (None, Some("failure budget")) => format!(
                        "job paused (failure budget): waiting for `drover jobs resume {job}{api}` (or rollback / cancel)"
                    ),
                    _ => format!("job paused: waiting for `drover jobs resume {job}{api}`"),
                });
            }
            ProgressKind::Resumed
            | ProgressKind::Approved
            | ProgressKind::CancelRequested
            | ProgressKind::RollbackRequested
            | ProgressKind::RollbackStarted
            | ProgressKind::JobFinished => self.pending = None,
            _ => {}
        }
    }

    /// The hint to print now, once.
    pub fn take(&mut self) -> Option<String> {
        self.pending.take()
    }
}

/// Prints nothing but the pause hint (`run --wait`).
pub struct Quiet {
    out: Box<dyn Write + Send>,
    hint: PauseHint,
}

impl Quiet {
    pub fn new(out: Box<dyn Write + Send>, hint: PauseHint) -> Quiet {
        Quiet { out, hint }
    }
}

impl Sink for Quiet {
    fn event(&mut self, e: &Progress) {
        self.hint.event(e);
    }
    fn idle(&mut self) {
        if let Some(h) = self.hint.take() {
            let _ = writeln!(self.out, "{h}");
        }
    }
}

/// Timeline lines, one per event (`run --watch` without a terminal, `jobs logs`).
pub struct Lines {
    out: Box<dyn Write + Send>,
    steps: Vec<String>,
    t0: Option<u64>,
    /// Only this node's events (and the job's end).
    node: Option<String>,
    hint: Option<PauseHint>,
}

impl Lines {
    /// `t0`: the time the offsets count from (the job's start); the first event's when `None`.
    pub fn new(out: Box<dyn Write + Send>, steps: Vec<String>, t0: Option<u64>) -> Lines {
        Lines { out, steps, t0, node: None, hint: None }
    }

    pub fn only_node(mut self, node: Option<String>) -> Lines {
        self.node = node;
        self
    }

    pub fn with_hint(mut self, hint: PauseHint) -> Lines {
        self.hint = Some(hint);
        self
    }
}

impl Sink for Lines {
    fn event(&mut self, e: &Progress) {
        if let Some(h) = &mut self.hint {
            h.event(e);
        }
        if let Some(n) = &self.node
            && e.node.as_ref() != Some(n)
            && e.kind != ProgressKind::JobFinished
        {
            return;
        }
        let t0 = *self.t0.get_or_insert(e.at_ms);
        let _ = writeln!(self.out, "{}", timeline_line(e, t0, &self.steps));
        let _ = self.out.flush();
    }
    fn idle(&mut self) {
        if let Some(h) = self.hint.as_mut().and_then(PauseHint::take) {
            let _ = writeln!(self.out, "{h}");
            let _ = self.out.flush();
        }
    }
    fn reconnecting(&mut self, why: &str) {
        tracing::info!("event stream dropped ({why}); reconnecting");
    }
}

/// One JSON object per event (`jobs logs -o json`), or one YAML document per event.
pub struct Structured {
    out: Box<dyn Write + Send>,
    yaml: bool,
    node: Option<String>,
}

impl Structured {
    pub fn new(out: Box<dyn Write + Send>, yaml: bool, node: Option<String>) -> Structured {
        Structured { out, yaml, node }
    }
}

impl Sink for Structured {
    fn event(&mut self, e: &Progress) {
        if let Some(n) = &self.node
            && e.node.as_ref() != Some(n)
        {
            return;
        }
        let text = if self.yaml {
            serde_saphyr::to_string(e).map(|s| format!("---\n{s}")).unwrap_or_default()
        } else {
            serde_json::to_string(e).map(|s| s + "\n").unwrap_or_default()
        };
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// Most per-node lines shown at once under the batch bars.
const NODE_LINES: usize = 8;
/// Most batch bars shown at once (finished ones go first).
const BATCH_BARS: usize = 4;

/// The live display of `run --watch` / `jobs watch` on a terminal: a bar for the job (nodes
/// finished / total), one per batch as batches start, a line per running node (up to
/// [`NODE_LINES`]); failures, pauses and rollbacks are printed above the bars.
pub struct Bars {
    mp: MultiProgress,
    job: ProgressBar,
    batches: BTreeMap<usize, ProgressBar>,
    batch_done: BTreeMap<usize, u64>,
    nodes: HashMap<String, ProgressBar>,
    finished: HashSet<String>,
    steps: Vec<String>,
    planned: usize,
    hint: PauseHint,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ")
}

impl Bars {
    pub fn new(
        target: ProgressDrawTarget,
        name: &str,
        total_nodes: usize,
        planned_batches: usize,
        steps: Vec<String>,
        hint: PauseHint,
    ) -> Bars {
        let mp = MultiProgress::with_draw_target(target);
        let job = mp.add(ProgressBar::new(total_nodes as u64));
        job.set_style(style("{spinner} {prefix} [{wide_bar}] {pos}/{len} nodes finished, {elapsed} {msg}"));
        job.set_prefix(name.to_string());
        job.set_message("pending");
        job.enable_steady_tick(Duration::from_millis(120));
        Bars {
            mp,
            job,
            batches: BTreeMap::new(),
            batch_done: BTreeMap::new(),
            nodes: HashMap::new(),
            finished: HashSet::new(),
            steps,
            planned: planned_batches,
            hint,
        }
    }

    fn step(&self, e: &Progress) -> &str {
        e.step.and_then(|s| self.steps.get(s)).map(String::as_str).unwrap_or("?")
    }

    fn node_line(&mut self, node: &str, msg: String) {
        if let Some(pb) = self.nodes.get(node) {
            pb.set_message(msg);
            return;
        }
        if self.nodes.len() >= NODE_LINES {
            return;
        }
        let pb = self.mp.add(ProgressBar::new_spinner());
        pb.set_style(style("  {spinner} {prefix:20} {msg}"));
        pb.set_prefix(node.to_string());
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(120));
        self.nodes.insert(node.to_string(), pb);
    }

    fn start_batch(&mut self, b: usize, size: u64) {
        if self.batches.contains_key(&b) {
            return;
        }
        // Keep a few batch bars: drop the oldest finished ones.
        while self.batches.len() >= BATCH_BARS {
            let Some((&old, _)) = self.batches.iter().find(|(_, pb)| pb.is_finished()) else { break };
            if let Some(pb) = self.batches.remove(&old) {
                self.mp.remove(&pb);
            }
        }
        let after = self.batches.values().next_back().unwrap_or(&self.job).clone();
        let pb = self.mp.insert_after(&after, ProgressBar::new(size));
        pb.set_style(style("  batch {prefix} [{bar:30}] {pos}/{len} {msg}"));
        pb.set_prefix(format!("{b}/{}", self.planned));
        pb.set_position(self.batch_done.get(&b).copied().unwrap_or(0).min(size));
        if pb.position() >= size {
            pb.finish_with_message("done");
        }
        self.batches.insert(b, pb);
    }

    fn print(&self, line: String) {
        let _ = self.mp.println(line);
    }
}

impl Sink for Bars {
    fn event(&mut self, e: &Progress) {
        self.hint.event(e);
        let node = e.node.clone().unwrap_or_default();
        let attempt = e.attempt.filter(|a| *a > 1).map(|a| format!(" (attempt {a})")).unwrap_or_default();
        match e.kind {
            ProgressKind::JobStarted | ProgressKind::Resumed | ProgressKind::Approved => {
                self.job.set_message("running");
            }
            ProgressKind::BatchStarted => {
                let size = e
                    .detail
                    .as_deref()
                    .and_then(|d| d.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                self.start_batch(e.batch.unwrap_or(0), size);
            }
            ProgressKind::StepStarted => {
                let msg = format!("{}{attempt}", self.step(e));
                self.node_line(&node, msg);
            }
            ProgressKind::RetryScheduled => {
                let msg = format!("{} retry{attempt} {}", self.step(e), e.detail.as_deref().unwrap_or(""));
                self.node_line(&node, msg);
            }
            ProgressKind::RollbackStepStarted => {
                let msg = format!("undo {}", self.step(e));
                self.node_line(&node, msg);
            }
            ProgressKind::NodeFinished => {
                if let Some(pb) = self.nodes.remove(&node) {
                    pb.finish_and_clear();
                    self.mp.remove(&pb);
                }
                if self.finished.insert(node.clone()) {
                    self.job.inc(1);
                    if let Some(b) = e.batch {
                        *self.batch_done.entry(b).or_insert(0) += 1;
                        if let Some(pb) = self.batches.get(&b) {
                            pb.inc(1);
                            if pb.length().is_some_and(|l| pb.position() >= l) {
                                pb.finish_with_message("done");
                            }
                        }
                    }
                }
                // Failures are worth a line; successes, skips and cancels show in the bars.
                let quiet = [NodeOutcome::Succeeded, NodeOutcome::Skipped, NodeOutcome::Cancelled];
                if !quiet.iter().any(|o| e.detail.as_deref() == Some(o.as_str())) {
                    self.print(describe(e, &self.steps));
                }
            }
            ProgressKind::Paused => {
                self.job.set_message("PAUSED");
                self.print(describe(e, &self.steps));
            }
            ProgressKind::BudgetExceeded => {
                self.job.set_message("failure budget exceeded");
                self.print(describe(e, &self.steps));
            }
            ProgressKind::RollbackStarted | ProgressKind::RollbackRequested => {
                self.job.set_message("rolling back");
                self.print(describe(e, &self.steps));
            }
            ProgressKind::CancelRequested => {
                self.job.set_message("cancelling");
                self.print(describe(e, &self.steps));
            }
            ProgressKind::StepFailed
            | ProgressKind::StepTimedOut
            | ProgressKind::NodeLost
            | ProgressKind::RollbackStepFailed => self.print(describe(e, &self.steps)),
            ProgressKind::JobFinished => self.job.set_message(e.detail.clone().unwrap_or_default()),
            _ => {}
        }
    }

    fn idle(&mut self) {
        if let Some(h) = self.hint.take() {
            self.print(h);
        }
    }

    fn reconnecting(&mut self, _why: &str) {
        self.job.set_message("reconnecting to the controller...");
    }

    fn done(&mut self) {
        for pb in self.nodes.values().chain(self.batches.values()) {
            pb.finish_and_clear();
        }
        self.job.finish_and_clear();
        let _ = self.mp.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: ProgressKind, batch: Option<usize>, detail: Option<&str>) -> Progress {
        Progress {
            seq: 1,
            at_ms: 0,
            kind,
            node: None,
            step: None,
            attempt: None,
            batch,
            detail: detail.map(String::from),
        }
    }

    #[test]
    fn pause_hint_once_per_pause() {
        let mut h = PauseHint::new("J", "");
        h.event(&ev(ProgressKind::Paused, Some(1), Some("approval gate")));
        assert_eq!(h.take().as_deref(), Some("job paused: waiting for `drover jobs approve J`"));
        assert_eq!(h.take(), None);
        h.event(&ev(ProgressKind::Paused, None, Some("operator")));
        h.event(&ev(ProgressKind::Resumed, None, None));
        assert_eq!(h.take(), None);
        let mut h = PauseHint::new("J", " --api http://x:1");
        h.event(&ev(ProgressKind::Paused, None, Some("failure budget")));
        assert_eq!(
            h.take().as_deref(),
            Some(
                "job paused (failure budget): waiting for `drover jobs resume J --api http://x:1` (or rollback / cancel)"
            )
        );
    }

    #[test]
    fn bars_count_nodes_once() {
        let mut b = Bars::new(ProgressDrawTarget::hidden(), "j", 2, 2, vec!["s".into()], PauseHint::new("J", ""));
        let fin = |b: &mut Bars, node: &str, batch: Option<usize>, outcome: &str| {
            let mut e = ev(ProgressKind::NodeFinished, batch, Some(outcome));
            e.node = Some(node.into());
            b.event(&e);
        };
        fin(&mut b, "a", Some(1), "succeeded");
        fin(&mut b, "a", None, "rolled_back");
        assert_eq!(b.job.position(), 1);
        // A node finished before its batch bar exists (offline at submission).
        fin(&mut b, "b", Some(2), "unreachable");
        b.event(&ev(ProgressKind::BatchStarted, Some(2), Some("1 node")));
        assert_eq!(b.batches[&2].position(), 1);
        assert!(b.batches[&2].is_finished());
        assert_eq!(b.job.position(), 2);
        b.done();
    }
}
