//! What controller and agents say to each other over NATS, and where.
//!
//! Plain serde types (JSON on the wire) and subject names; no I/O. See
//! `docs/architecture.md` for the message flow.

use crate::engine::AttemptOutcome;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "drover";

/// The key of the controllers' lease in [`Names::leases_bucket`].
pub const LEASE_KEY: &str = "leader";

/// Subject, stream and bucket names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names::new(DEFAULT_PREFIX)
    }
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names { prefix: prefix.to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Requests to one node's agent (core NATS request/reply).
    pub fn command(&self, node: &str) -> String {
        format!("{}.cmd.{node}", self.prefix)
    }

    /// Results of one node in one job (stream `results_stream`).
    pub fn result(&self, job: &str, node: &str) -> String {
        format!("{}.result.{job}.{node}", self.prefix)
    }

    /// Every result of one job.
    pub fn job_results(&self, job: &str) -> String {
        format!("{}.result.{job}.*", self.prefix)
    }

    pub fn all_results(&self) -> String {
        format!("{}.result.>", self.prefix)
    }

    /// Where earlier agents stored a copy of a result they also returned in their reply
    /// (`ReplyStatus::Done`); still read, no longer written.
    pub fn result_record(&self, job: &str, node: &str) -> String {
        format!("{}.result.{job}.{node}.record", self.prefix)
    }

    /// The results of a job that came back in replies, stored by the controller: JSON
    /// lines, a message per round (four tokens, so the controller's consumer of
    /// `result.*.*` never takes it, and never a node's `.record` subject).
    pub fn replied_results(&self, job: &str) -> String {
        format!("{}.result.{job}.replied.batch", self.prefix)
    }

    /// What the controller consumes: results published on their own (not the records).
    pub fn published_results(&self) -> String {
        format!("{}.result.*.*", self.prefix)
    }

    /// The engine inputs of a job, in order: replaying them rebuilds the job.
    pub fn job_inputs(&self, job: &str) -> String {
        format!("{}.event.{job}.in", self.prefix)
    }

    /// The engine inputs of every job (what a restarted controller replays).
    pub fn all_job_inputs(&self) -> String {
        format!("{}.event.*.in", self.prefix)
    }

    /// The job whose inputs go to `subject`, if it is a job-inputs subject.
    pub fn inputs_job<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let job = subject.strip_prefix(&self.prefix)?.strip_prefix(".event.")?.strip_suffix(".in")?;
        (!job.is_empty() && !job.contains('.')).then_some(job)
    }

    /// Takeover lines of the controllers' lease: written by a controller as it takes the
    /// lead, in the journal stream (it matches [`Names::all_job_inputs`], so replay reads
    /// them in stream order with the jobs' lines, and fences out lines a deposed leader
    /// wrote after them). Job ids are UUIDs, so `_lease` never names a job.
    pub fn fence(&self) -> String {
        format!("{}.event._lease.in", self.prefix)
    }

    /// Where the leading controller answers API calls forwarded by the others.
    pub fn ctl_api(&self) -> String {
        format!("{}.ctl.api", self.prefix)
    }

    /// KV bucket: the controllers' lease (key [`LEASE_KEY`]).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.prefix.replace('.', "_"))
    }

    /// The progress events of a job (what operators watch).
    pub fn job_progress(&self, job: &str) -> String {
        format!("{}.event.{job}.progress", self.prefix)
    }

    pub fn all_events(&self) -> String {
        format!("{}.event.>", self.prefix)
    }

    fn upper(&self) -> String {
        self.prefix.to_ascii_uppercase().replace(['-', '.'], "_")
    }

    /// Stream of step results, deduplicated by `Nats-Msg-Id` = command key.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.upper())
    }

    /// Stream of job journals (inputs and progress).
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// KV bucket: node registrations (labels, facts, actions), written at agent start.
    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.prefix.replace('.', "_"))
    }

    /// Heartbeats of one node (core NATS publish, every `heartbeat_ms`).
    pub fn heartbeat(&self, node: &str) -> String {
        format!("{}.hb.{node}", self.prefix)
    }

    pub fn all_heartbeats(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }

    /// KV bucket: the last stored heartbeat of each node (see
    /// [`crate::liveness::BEATS_PER_STORED_BEAT`]).
    pub fn heartbeats_bucket(&self) -> String {
        format!("{}_heartbeats", self.prefix.replace('.', "_"))
    }

    /// Object store: whole step results too large for one message.
    pub fn outputs_bucket(&self) -> String {
        format!("{}_outputs", self.prefix.replace('.', "_"))
    }

    /// KV bucket: job records (spec and summary).
    pub fn jobs_bucket(&self) -> String {
        format!("{}_jobs", self.prefix.replace('.', "_"))
    }
}

/// Why a name cannot be a node or job id (it must be one NATS subject token and a KV key).
pub fn check_id(kind: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{kind} id is empty"));
    }
    if id.len() > 128 {
        return Err(format!("{kind} id \"{id}\" is longer than 128 characters"));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("{kind} id \"{id}\" contains '{c}': use letters, digits, '-' and '_' only"));
    }
    Ok(())
}

/// Run a step, or undo one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Run,
    Rollback,
}

/// The identity of one command: exactly-once is keyed on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandId {
    pub job: String,
    pub node: String,
    pub step: usize,
    /// Attempt number for `run` (1, 2, ...); 1 for `rollback`.
    pub attempt: u32,
    pub kind: CommandKind,
}

impl CommandId {
    /// `job/node/step/attempt` for runs, `job/node/step/rollback` for undos: the
    /// `Nats-Msg-Id` of the result and the agent journal key.
    pub fn key(&self) -> String {
        match self.kind {
            CommandKind::Run => format!("{}/{}/{}/{}", self.job, self.node, self.step, self.attempt),
            CommandKind::Rollback => format!("{}/{}/{}/rollback", self.job, self.node, self.step),
        }
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// A command for one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Command {
    pub id: CommandId,
    /// Fencing epoch of the job's owner; agents refuse an older epoch than one they saw.
    pub epoch: u64,
    /// The step's name, for logs.
    pub step_name: String,
    pub action: String,
    /// Params with templates expanded for this node.
    pub params: Value,
    /// For a rollback: the metadata the step's execution returned.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    /// The agent kills the work after this long.
    pub timeout_ms: u64,
    /// Controller clock when issued (for logs only: agents never compare clocks).
    pub issued_at_ms: u64,
    /// Room for a signature over the command (authentication comes later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A request on `cmd.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Run (or undo) a step. Sent again with the same id until acknowledged.
    Run(Command),
    /// Cancel a running command (kill its process group).
    Cancel { id: CommandId, epoch: u64 },
    /// Are you there? (readiness round trip)
    Ping,
}

impl Request {
    /// Decode a request. A run request written as drover writes it (the `type` tag
    /// first) has its command read directly: serde reads an internally tagged enum by
    /// first buffering the whole document into a tree, which was most of the cost of
    /// decoding a command. Anything else, and a command that does not decode that way,
    /// goes through the general path (and its error message).
    pub fn from_json(bytes: &[u8]) -> Result<Request, serde_json::Error> {
        const RUN: &[u8] = br#"{"type":"run","#;
        if let Some(rest) = bytes.strip_prefix(RUN) {
            let mut doc = Vec::with_capacity(rest.len() + 1);
            doc.push(b'{');
            doc.extend_from_slice(rest);
            if let Ok(cmd) = serde_json::from_slice::<Command>(&doc) {
                return Ok(Request::Run(cmd));
            }
        }
        serde_json::from_slice(bytes)
    }
}

/// The agent's immediate answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Reply {
    pub status: ReplyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `done`, the command's result; with `duplicate` and `not_running`, its recorded
    /// result when it has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<StepResult>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplyStatus {
    /// New command: journaled, running now; its result will be published on
    /// `result.<job>.<node>`.
    Accepted,
    /// New command that finished quickly: journaled, run, its result journaled and in
    /// this reply, and not published (the controller stores the results it gets in
    /// replies on `result.<job>.replied.batch`).
    Done,
    /// Seen before: running, or its recorded result was published again.
    Duplicate,
    /// Refused (unknown action, policy, stale epoch, draining...); the reason says why.
    /// A result with the refusal is published too.
    Rejected,
    /// Cancel delivered to a running command.
    Cancelling,
    /// Cancel for a command that is not running (finished: with its recorded result; or
    /// unknown).
    NotRunning,
    /// Answer to `Ping`.
    Pong,
}

/// The end of a command, published on `result.<job>.<node>` with `Nats-Msg-Id` = the
/// command key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepResult {
    pub id: CommandId,
    /// For a rollback, `succeeded` means undone.
    pub outcome: AttemptOutcome,
    #[serde(default)]
    pub changed: bool,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Output was cut at the agent's cap.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What undoing the step needs (rollback metadata).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub metadata: Value,
    /// Agent clock at the end (for display).
    #[serde(default)]
    pub finished_at_ms: u64,
    /// This message was cut to fit the server's message size; the whole result is in
    /// the outputs object store under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_output: Option<String>,
}

/// An action as a node offers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ActionOffer {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub params_schema: Value,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub undo: bool,
}

/// Facts an agent reports about its machine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub started_at_ms: u64,
}

/// A node's registration (bucket `nodes`), written when its agent starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeRecord {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub facts: NodeFacts,
    /// The actions it offers, inline; empty when `catalog` names them instead.
    #[serde(default)]
    pub actions: Vec<ActionOffer>,
    /// The key (in the same bucket) of the action list it offers, stored once for every
    /// node that offers the same: see [`catalog_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<String>,
    /// How often the agent heartbeats.
    pub heartbeat_ms: u64,
}

/// Keys of action catalogs in the nodes bucket start with this (node ids have no dot).
pub const CATALOG_KEY_PREFIX: &str = "catalog.";

/// Whether a nodes-bucket key holds an action catalog rather than a node.
pub fn is_catalog_key(key: &str) -> bool {
    key.starts_with(CATALOG_KEY_PREFIX)
}

/// A heartbeat: published every `interval_ms` on `<prefix>.hb.<node>` (core NATS: cheap,
/// not stored), and one in [`crate::liveness::BEATS_PER_STORED_BEAT`] stored in the
/// `heartbeats` bucket, besides each change of status or interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Heartbeat {
    pub node: String,
    pub status: AgentStatus,
    /// Agent clock (the controller uses its own receive time for liveness).
    pub at_ms: u64,
    /// Keys of commands running now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
    /// The interval the agent beats at now (ms): its configured one, or longer in a large
    /// fleet (see [`crate::liveness`]). 0 from an agent that does not say it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    /// Finishing its running work; takes no new command.
    Draining,
    /// Stopped cleanly.
    Stopped,
}

/// The largest message drover packs journal or progress lines into (NATS' default
/// `max_payload` is 1 MiB; a line longer than this travels alone).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// JSON documents for the streams, one per line (serde_json never writes a raw newline
/// inside a document), grouped by subject as they are written, to be sent as a few
/// messages per subject.
///
/// A job's journal and progress are written this way: one message per job per round
/// instead of one per line. Each document is serialized once, straight into its
/// subject's buffer; [`SubjectLines::messages`] then cuts that buffer into messages
/// without copying it. [`split_lines`] reads both forms (a message written before
/// batching holds one document and no newline).
#[derive(Debug, Default)]
pub struct Lines {
    subjects: Vec<SubjectLines>,
    /// The subject written last (the next line is most often for it again).
    last: usize,
}

/// One subject's lines: `buf` holds them separated by newlines, `ends[i]` is where line
/// `i` ends.
#[derive(Debug)]
pub struct SubjectLines {
    pub subject: String,
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Lines {
    /// Append `doc` as a line of `subject`. On an error nothing is appended.
    pub fn push<T: Serialize + ?Sized>(&mut self, subject: &str, doc: &T) -> serde_json::Result<()> {
        let i = match self.subjects.get(self.last) {
            Some(s) if s.subject == subject => self.last,
            _ => match self.subjects.iter().position(|s| s.subject == subject) {
                Some(i) => i,
                None => {
                    self.subjects.push(SubjectLines {
                        subject: subject.to_string(),
                        buf: Vec::new(),
                        ends: Vec::new(),
                    });
                    self.subjects.len() - 1
                }
            },
        };
        self.last = i;
        let s = &mut self.subjects[i];
        let before = s.buf.len();
        if !s.ends.is_empty() {
            s.buf.push(b'\n');
        }
        if let Err(e) = serde_json::to_writer(&mut s.buf, doc) {
            s.buf.truncate(before);
            return Err(e);
        }
        s.ends.push(s.buf.len());
        Ok(())
    }

    /// Take back the last line of `subject` (one just pushed that is not to be sent).
    pub fn pop(&mut self, subject: &str) {
        let Some(s) = self.subjects.iter_mut().find(|s| s.subject == subject) else { return };
        if s.ends.pop().is_some() {
            s.buf.truncate(s.ends.last().copied().unwrap_or(0));
        }
    }

    /// Lines over all subjects.
    pub fn len(&self) -> usize {
        self.subjects.iter().map(|s| s.ends.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.subjects.iter().all(|s| s.ends.is_empty())
    }

    /// The subjects, in the order of their first line.
    pub fn into_subjects(self) -> Vec<SubjectLines> {
        self.subjects
    }
}

impl SubjectLines {
    /// The messages to send, as ranges of [`SubjectLines::into_bytes`]: consecutive lines
    /// packed up to `max` bytes each (a longer line travels alone), in order, leaving out
    /// every line longer than `limit` (returned apart, for the caller to report).
    pub fn messages(&self, max: usize, limit: usize) -> (Vec<std::ops::Range<usize>>, Vec<std::ops::Range<usize>>) {
        let (mut out, mut left_out) = (Vec::new(), Vec::new());
        let mut cur: Option<std::ops::Range<usize>> = None;
        let mut start = 0;
        for &end in &self.ends {
            let line = start..end;
            start = end + 1;
            if line.len() > limit {
                out.extend(cur.take());
                left_out.push(line);
                continue;
            }
            cur = match cur.take() {
                Some(c) if line.end - c.start <= max => Some(c.start..line.end),
                Some(c) => {
                    out.push(c);
                    Some(line)
                }
                None => Some(line),
            };
        }
        out.extend(cur);
        (out, left_out)
    }

    /// The lines, separated by newlines (what [`SubjectLines::messages`] ranges over).
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// The documents of a message written from [`Lines`] (empty lines skipped).
pub fn split_lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_pack_per_subject_and_split_back_in_order_within_the_size() {
        let mut lines = Lines::default();
        let docs: Vec<Value> = (0..100).map(|i| serde_json::json!({ "n": i, "s": "a\nb" })).collect();
        for (i, d) in docs.iter().enumerate() {
            lines.push(if i % 3 == 0 { "x" } else { "y" }, d).unwrap();
        }
        assert_eq!(lines.len(), 100);
        let subjects = lines.into_subjects();
        assert_eq!(subjects.iter().map(|s| s.subject.as_str()).collect::<Vec<_>>(), ["x", "y"]);
        let mut back: Vec<(usize, Value)> = Vec::new();
        for s in subjects {
            let (messages, left_out) = s.messages(100, usize::MAX);
            assert!(left_out.is_empty());
            assert!(messages.len() > 1);
            let bytes = s.into_bytes();
            for m in messages {
                assert!(m.len() <= 100, "{}", m.len());
                for l in split_lines(&bytes[m]) {
                    let v: Value = serde_json::from_slice(l).unwrap();
                    back.push((v["n"].as_u64().unwrap() as usize, v));
                }
            }
        }
        back.sort_by_key(|(n, _)| *n);
        assert_eq!(back.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), docs);
        // A document longer than the packing size travels alone; one longer than the
        // limit is left out; an old single-document message reads as one line.
        let mut lines = Lines::default();
        for d in ["a".to_string(), "x".repeat(300), "b".to_string(), "y".repeat(2000), "c".to_string()] {
            lines.push("s", &d).unwrap();
        }
        let s = lines.into_subjects().pop().unwrap();
        let (messages, left_out) = s.messages(100, 1000);
        let bytes = s.into_bytes();
        let texts: Vec<&[u8]> = messages.iter().map(|m| &bytes[m.clone()]).collect();
        let x = format!("\"{}\"", "x".repeat(300));
        assert_eq!(texts, [&b"\"a\""[..], x.as_bytes(), b"\"b\"", b"\"c\""]);
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].len(), 2002);
        assert_eq!(split_lines(b"{\"a\":1}").count(), 1);
        assert_eq!(split_lines(b"").count(), 0);
        assert!(Lines::default().is_empty());
        // A line taken back leaves the others as they were.
        let mut lines = Lines::default();
        lines.push("s", "a").unwrap();
        lines.push("t", "b").unwrap();
        lines.push("s", "c").unwrap();
        lines.pop("s");
        assert_eq!(lines.len(), 2);
        let bytes: Vec<Vec<u8>> = lines.into_subjects().into_iter().map(SubjectLines::into_bytes).collect();
        assert_eq!(bytes, [b"\"a\"".to_vec(), b"\"b\"".to_vec()]);
    }

    use super::*;

    #[test]
    fn requests_decode_the_same_on_the_fast_path_and_the_general_one() {
        let cmd = Command {
            id: CommandId { job: "j1".into(), node: "web-1".into(), step: 0, attempt: 1, kind: CommandKind::Run },
            epoch: 3,
            step_name: "echo".into(),
            action: "echo".into(),
            params: serde_json::json!({"message": "hi \"there\"", "n": [1, 2]}),
            metadata: Value::Null,
            timeout_ms: 1000,
            issued_at_ms: 5,
            signature: None,
        };
        for req in [Request::Run(cmd.clone()), Request::Cancel { id: cmd.id.clone(), epoch: 3 }, Request::Ping] {
            let bytes = serde_json::to_vec(&req).unwrap();
            assert_eq!(Request::from_json(&bytes).unwrap(), req);
            assert_eq!(serde_json::from_slice::<Request>(&bytes).unwrap(), req);
        }
        assert!(serde_json::to_vec(&Request::Run(cmd.clone())).unwrap().starts_with(br#"{"type":"run","#));
        // The tag elsewhere, or spaces: the general path.
        let moved = br#"{"epoch":3,"type":"run","id":{"job":"j1","node":"web-1","step":0,"attempt":1,"kind":"run"},"step_name":"echo","action":"echo","params":{},"timeout_ms":1,"issued_at_ms":0}"#;
        assert!(matches!(Request::from_json(moved).unwrap(), Request::Run(c) if c.epoch == 3));
        // A broken command says what is wrong, as before.
        let broken = br#"{"type":"run","id":{"job":"j1"}}"#;
        let e = Request::from_json(broken).unwrap_err().to_string();
        assert_eq!(e, serde_json::from_slice::<Request>(broken).unwrap_err().to_string());
        assert!(Request::from_json(b"{\"type\":\"run\",").is_err());
        assert!(Request::from_json(b"").is_err());
    }

    #[test]
    fn keys_and_subjects() {
        let id = CommandId { job: "j1".into(), node: "web-1".into(), step: 2, attempt: 3, kind: CommandKind::Run };
        assert_eq!(id.key(), "j1/web-1/2/3");
        let rb = CommandId { kind: CommandKind::Rollback, attempt: 1, ..id };
        assert_eq!(rb.key(), "j1/web-1/2/rollback");
        let n = Names::default();
        assert_eq!(n.command("web-1"), "drover.cmd.web-1");
        assert_eq!(n.result("j1", "web-1"), "drover.result.j1.web-1");
        assert_eq!(n.results_stream(), "DROVER_RESULTS");
        assert_eq!(n.jobs_bucket(), "drover_jobs");
        assert_eq!(n.inputs_job(&n.job_inputs("j1")), Some("j1"));
        assert_eq!(n.inputs_job(&n.job_progress("j1")), None);
        assert_eq!(n.inputs_job("drover.event..in"), None);
        assert_eq!(n.inputs_job("other.event.j1.in"), None);
    }

    #[test]
    fn ids_must_be_one_subject_token() {
        assert!(check_id("node", "web-01").is_ok());
        assert!(check_id("node", "web.example.com").unwrap_err().contains("contains '.'"));
        assert!(check_id("node", "a*").is_err());
        assert!(check_id("node", "").is_err());
    }

    #[test]
    fn requests_round_trip() {
        let r = Request::Cancel {
            id: CommandId { job: "j".into(), node: "n".into(), step: 0, attempt: 1, kind: CommandKind::Run },
            epoch: 1,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.starts_with("{\"type\":\"cancel\""), "{s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }
}
