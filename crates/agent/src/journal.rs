//! The agent's local journal: every command it accepted, its result, whether the result
//! reached the controller, and the highest fencing epoch seen per job.
//!
//! One append-only file of JSON lines (`<data_dir>/journal.jsonl`), each line written
//! and (where it matters) fsynced before the agent acts on it:
//!
//! ```text
//! {"t":"epoch","at_ms":..,"job":"j1","epoch":3}
//! {"t":"accepted","at_ms":..,"cmd":{..command, secret params redacted..}}
//! {"t":"result","at_ms":..,"result":{..StepResult..}}
//! {"t":"published","at_ms":..,"key":"j1/web-1/0/1"}
//! ```
//!
//! `accepted`, `result` and `epoch` lines are fsynced. A `published` line says the result
//! reached the controller (in the reply to its command, or acknowledged by the results
//! stream). It is not fsynced, nor even written at once: it goes out with the next line
//! appended, at the next compaction, or at a graceful stop ([`Journal::flush`]). Losing one
//! only means the result is published again after a crash; the results stream drops the
//! copy by its `Nats-Msg-Id`, and the controller ignores a result it already applied.
//!
//! The whole file is loaded into an index when the agent starts, then compacted: rewritten
//! (to a temporary file, fsynced, renamed) with only the live entries. A torn last line
//! (a crash in the middle of a write) is skipped with a warning. The file is compacted
//! again every [`COMPACT_EVERY`] appended lines. Retention ([`Retention`]): a command whose
//! result was published is forgotten once it is older than `max_age` or when more than
//! `max_commands` such commands are kept (oldest first); a command without a result or
//! with an unpublished one is never forgotten. An epoch is forgotten with the last
//! command of its job, once older than `max_age`.
//!
//! A lock file (`<data_dir>/agent.lock`, `flock`) keeps a second agent off the same
//! directory.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use drover_bus::now_ms;
use drover_core::wire::{Command, CommandId, CommandKind, StepResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Retention;

/// The journal's maps are keyed by command keys and job ids, which come from the
/// controller: a fast hasher (foldhash, seeded per process) instead of SipHash, which was
/// a few percent of an agent's work per command.
pub(crate) type Map<V> = HashMap<String, V, foldhash::fast::RandomState>;
/// A set of command keys, hashed the same way.
pub(crate) type Set = std::collections::HashSet<String, foldhash::fast::RandomState>;

/// The journal's file name inside the data directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";
/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "agent.lock";
/// Compact after this many appended lines.
pub const COMPACT_EVERY: usize = 10_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Epoch { at_ms: u64, job: String, epoch: u64 },
    Accepted { at_ms: u64, cmd: Box<Command> },
    Result { at_ms: u64, result: Box<StepResult> },
    Published { at_ms: u64, key: String },
}

/// What the journal knows about one command.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: CommandId,
    /// The command as accepted (secret params redacted, rollback metadata dropped).
    pub cmd: Option<Command>,
    pub accepted_at_ms: u64,
    /// Its result, once it finished.
    pub result: Option<StepResult>,
    /// The result reached the controller (in a reply, or acknowledged by the results
    /// stream).
    pub published: bool,
    /// Time of the last line about this command.
    pub touched_ms: u64,
}

impl Entry {
    fn is_settled(&self) -> bool {
        self.result.is_some() && self.published
    }
}

/// Errors opening the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, source: std::io::Error },
    #[error("data dir {0} is in use by another drover agent (its lock file {1} is held)")]
    Locked(PathBuf, PathBuf),
}

fn io_err<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io { context, path: path.to_path_buf(), source }
}

/// The journal of one agent (see the module docs).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes in the file known to end with a whole line.
    len: u64,
    _lock: File,
    cmds: Map<Entry>,
    epochs: Map<(u64, u64)>,
    retention: Retention,
    appended: usize,
    skipped: usize,
    /// `published` lines not written yet (see the module docs).
    unwritten: Vec<u8>,
}

impl Journal {
    /// Open (creating) the journal in `dir`, load it, and compact it.
    pub fn open(dir: &Path, retention: Retention) -> Result<Journal, JournalError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("cannot create data dir", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("cannot open lock file", &lock_path))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(JournalError::Locked(dir.to_path_buf(), lock_path));
            }
            return Err(JournalError::Io { context: "cannot lock", path: lock_path, source: err });
        }
        let path = dir.join(JOURNAL_FILE);
        let mut cmds: Map<Entry> = Map::default();
        let mut epochs: Map<(u64, u64)> = Map::default();
        let mut skipped = 0;
        match File::open(&path) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
                    let line = line.map_err(io_err("cannot read journal", &path))?;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Line>(&line) {
                        Ok(l) => apply(&mut cmds, &mut epochs, l),
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(journal = %path.display(), line = n + 1, error = %e, "skipping an unreadable journal line (torn write?)");
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(JournalError::Io { context: "cannot open journal", path, source: e }),
        }
        let file = open_append(&path)?;
        let mut j = Journal {
            dir: dir.to_path_buf(),
            path,
            file,
            len: 0,
            _lock: lock,
            cmds,
            epochs,
            retention,
            appended: 0,
            skipped,
            unwritten: Vec::new(),
        };
        j.compact()?;
        Ok(j)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unreadable lines skipped when the journal was loaded.
    pub fn skipped_lines(&self) -> usize {
        self.skipped
    }

    /// Number of commands known.
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// What the journal knows about a command key.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.cmds.get(key)
    }

    /// Every command known.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.cmds.values()
    }

    /// The highest fencing epoch seen for a job.
    pub fn epoch(&self, job: &str) -> Option<u64> {
        self.epochs.get(job).map(|e| e.0)
    }

    /// Remember a higher epoch for a job (written, not fsynced: call [`Journal::sync`] or
    /// let the next fsynced line carry it). Returns whether it was higher.
    pub fn raise_epoch(&mut self, job: &str, epoch: u64) -> std::io::Result<bool> {
        if self.epoch(job).is_some_and(|e| e >= epoch) {
            return Ok(false);
        }
        self.append(Line::Epoch { at_ms: now_ms(), job: job.to_string(), epoch }, false)?;
        Ok(true)
    }

    /// Record an accepted command (fsynced). When its epoch is higher than its job's
    /// recorded one, the raised epoch is recorded too, in the same write.
    pub fn accept(&mut self, cmd: Command) -> std::io::Result<()> {
        let at_ms = now_ms();
        let raise = self.epoch(&cmd.id.job).is_none_or(|e| e < cmd.epoch);
        let epoch = raise.then(|| Line::Epoch { at_ms, job: cmd.id.job.clone(), epoch: cmd.epoch });
        let accepted = Line::Accepted { at_ms, cmd: Box::new(cmd) };
        self.append_lines(epoch, accepted, true)
    }

    /// Record a command's result (fsynced).
    pub fn finish(&mut self, result: StepResult) -> std::io::Result<()> {
        self.append(Line::Result { at_ms: now_ms(), result: Box::new(result) }, true)
    }

    /// Record that a result reached the controller: at once in memory, in the file with
    /// the next append (see the module docs).
    pub fn mark_delivered(&mut self, key: &str) {
        if self.cmds.get(key).is_none_or(|e| e.published) {
            return;
        }
        let line = Line::Published { at_ms: now_ms(), key: key.to_string() };
        if let Ok(bytes) = serde_json::to_vec(&line) {
            self.unwritten.extend_from_slice(&bytes);
            self.unwritten.push(b'\n');
        }
        apply(&mut self.cmds, &mut self.epochs, line);
    }

    /// Write the `published` lines not written yet (at a graceful stop; not fsynced).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.write_lines(Vec::new(), false)
    }

    /// fsync what was written.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Commands accepted without a result: the agent stopped while they ran.
    pub fn unfinished(&self) -> Vec<CommandId> {
        let mut v: Vec<&Entry> = self.cmds.values().filter(|e| e.result.is_none()).collect();
        v.sort_by_key(|e| e.accepted_at_ms);
        v.into_iter().map(|e| e.id.clone()).collect()
    }

    /// Results not yet delivered to the controller (by a reply or the results stream),
    /// oldest first.
    pub fn unpublished(&self) -> Vec<StepResult> {
        let mut v: Vec<&Entry> = self.cmds.values().filter(|e| e.result.is_some() && !e.published).collect();
        v.sort_by_key(|e| e.touched_ms);
        v.into_iter().filter_map(|e| e.result.clone()).collect()
    }

    /// The metadata returned by the latest successful run of a step (for a rollback
    /// whose command carries none). Only a successful attempt counts: only succeeded
    /// steps are undone, and a failed attempt's metadata describes another change.
    pub fn run_metadata(&self, job: &str, node: &str, step: usize) -> Option<Value> {
        self.cmds
            .values()
            .filter(|e| e.id.job == job && e.id.node == node && e.id.step == step && e.id.kind == CommandKind::Run)
            .filter_map(|e| e.result.as_ref())
            .filter(|r| r.outcome == drover_core::engine::AttemptOutcome::Succeeded && !r.metadata.is_null())
            .max_by_key(|r| r.id.attempt)
            .map(|r| r.metadata.clone())
    }

    fn append(&mut self, line: Line, sync: bool) -> std::io::Result<()> {
        self.append_lines(None, line, sync)
    }

    /// Append `first` (if any) and `line` in one write (and one fsync when `sync`), then
    /// apply them.
    fn append_lines(&mut self, first: Option<Line>, line: Line, sync: bool) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(512);
        for l in first.iter().chain([&line]) {
            serde_json::to_writer(&mut bytes, l).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        self.write_lines(bytes, sync)?;
        for l in first.into_iter().chain([line]) {
            apply(&mut self.cmds, &mut self.epochs, l);
            self.appended += 1;
        }
        if self.appended >= COMPACT_EVERY
            && let Err(e) = self.compact()
        {
            tracing::warn!(journal = %self.path.display(), error = %e, "journal compaction failed; will retry later");
            self.appended = 0;
        }
        Ok(())
    }

    /// Write the unwritten `published` lines, then `bytes` (whole lines), in one write.
    fn write_lines(&mut self, bytes: Vec<u8>, sync: bool) -> std::io::Result<()> {
        let marks = self.unwritten.len();
        let bytes = if marks == 0 {
            bytes
        } else {
            let mut all = std::mem::take(&mut self.unwritten);
            all.extend_from_slice(&bytes);
            all
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let res = self.file.write_all(&bytes).and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            // Cut a partial line off so the next append starts on a line of its own; the
            // marks wait for the next write.
            let _ = self.file.set_len(self.len);
            let mut bytes = bytes;
            bytes.truncate(marks);
            self.unwritten = bytes;
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Forget what retention allows, then rewrite the file with the live entries only.
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let now = now_ms();
        let max_age = u64::try_from(self.retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(max_age);
        self.cmds.retain(|_, e| !(e.is_settled() && e.touched_ms < cutoff));
        let mut settled: Vec<(u64, String)> =
            self.cmds.iter().filter(|(_, e)| e.is_settled()).map(|(k, e)| (e.touched_ms, k.clone())).collect();
        if settled.len() > self.retention.max_commands {
            settled.sort();
            let excess = settled.len() - self.retention.max_commands;
            for (_, k) in settled.into_iter().take(excess) {
                self.cmds.remove(&k);
            }
        }
        let live_jobs: std::collections::HashSet<&str> = self.cmds.values().map(|e| e.id.job.as_str()).collect();
        self.epochs.retain(|job, (_, at)| *at >= cutoff || live_jobs.contains(job.as_str()));

        let tmp = self.dir.join(format!("{JOURNAL_FILE}.tmp"));
        let mut out = std::io::BufWriter::new(
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err("cannot create", &tmp))?,
        );
        let mut written: u64 = 0;
        let mut put = |out: &mut std::io::BufWriter<File>, line: &Line| -> Result<(), JournalError> {
            let mut b = serde_json::to_vec(line).map_err(|e| JournalError::Io {
                context: "cannot encode",
                path: tmp.clone(),
                source: e.into(),
            })?;
            b.push(b'\n');
            out.write_all(&b).map_err(io_err("cannot write", &tmp))?;
            written += b.len() as u64;
            Ok(())
        };
        let mut epochs: Vec<_> = self.epochs.iter().collect();
        epochs.sort();
        for (job, (epoch, at)) in epochs {
            put(&mut out, &Line::Epoch { at_ms: *at, job: job.clone(), epoch: *epoch })?;
        }
        let mut entries: Vec<&Entry> = self.cmds.values().collect();
        entries.sort_by(|a, b| (a.accepted_at_ms, &a.id).cmp(&(b.accepted_at_ms, &b.id)));
        for e in entries {
            if let Some(cmd) = &e.cmd {
                put(&mut out, &Line::Accepted { at_ms: e.accepted_at_ms, cmd: Box::new(cmd.clone()) })?;
            }
            if let Some(r) = &e.result {
                put(&mut out, &Line::Result { at_ms: e.touched_ms, result: Box::new(r.clone()) })?;
            }
            if e.published {
                put(&mut out, &Line::Published { at_ms: e.touched_ms, key: e.id.key() })?;
            }
        }
        let f = out.into_inner().map_err(|e| JournalError::Io {
            context: "cannot write",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err("cannot fsync", &tmp))?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io_err("cannot replace journal", &self.path))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.file = open_append(&self.path)?;
        self.len = written;
        self.appended = 0;
        // The rewrite holds every `published` mark.
        self.unwritten.clear();
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io_err("cannot open journal", path))
}

fn apply(cmds: &mut Map<Entry>, epochs: &mut Map<(u64, u64)>, line: Line) {
    let mut raise = |job: &str, epoch: u64, at: u64| {
        let e = epochs.entry(job.to_string()).or_insert((epoch, at));
        if epoch > e.0 {
            *e = (epoch, at);
        } else if epoch == e.0 {
            e.1 = e.1.max(at);
        }
    };
    match line {
        Line::Epoch { at_ms, job, epoch } => raise(&job, epoch, at_ms),
        Line::Accepted { at_ms, cmd } => {
            raise(&cmd.id.job, cmd.epoch, at_ms);
            let key = cmd.id.key();
            let e = cmds.entry(key).or_insert_with(|| Entry {
                id: cmd.id.clone(),
                cmd: None,
                accepted_at_ms: at_ms,
                result: None,
                published: false,
                touched_ms: at_ms,
            });
            e.cmd = Some(*cmd);
            e.touched_ms = e.touched_ms.max(at_ms);
        }
        Line::Result { at_ms, result } => {
            let key = result.id.key();
            let e = cmds.entry(key).or_insert_with(|| Entry {
                id: result.id.clone(),
                cmd: None,
                accepted_at_ms: at_ms,
                result: None,
                published: false,
                touched_ms: at_ms,
            });
            e.result = Some(*result);
            e.touched_ms = e.touched_ms.max(at_ms);
        }
        Line::Published { at_ms, key } => {
            if let Some(e) = cmds.get_mut(&key) {
                e.published = true;
                e.touched_ms = e.touched_ms.max(at_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::engine::AttemptOutcome;
    use std::time::Duration;

    fn cmd(job: &str, step: usize, attempt: u32, epoch: u64) -> Command {
        Command {
            id: CommandId { job: job.into(), node: "n1".into(), step, attempt, kind: CommandKind::Run },
            epoch,
            step_name: "s".into(),
            action: "test.succeed".into(),
            params: serde_json::json!({}),
            metadata: Value::Null,
            timeout_ms: 1000,
            issued_at_ms: 0,
            signature: None,
        }
    }

    fn result(c: &Command, meta: Value) -> StepResult {
        StepResult {
            id: c.id.clone(),
            outcome: AttemptOutcome::Succeeded,
            changed: true,
            stdout: "ok\n".into(),
            stderr: String::new(),
            truncated: false,
            exit_code: None,
            duration_ms: 1,
            error: None,
            metadata: meta,
            finished_at_ms: 1,
            full_output: None,
        }
    }

    #[test]
    fn accepting_a_command_of_a_higher_epoch_records_the_epoch_in_the_same_write() {
        let d = tempfile::tempdir().unwrap();
        let lines = || std::fs::read_to_string(d.path().join(JOURNAL_FILE)).unwrap().lines().count();
        {
            let mut j = Journal::open(d.path(), Retention::default()).unwrap();
            let before = lines();
            j.accept(cmd("j1", 0, 1, 2)).unwrap();
            assert_eq!(j.epoch("j1"), Some(2));
            assert_eq!(lines(), before + 2, "an epoch line and an accepted line");
            // Same epoch: only the command.
            j.accept(cmd("j1", 1, 1, 2)).unwrap();
            assert_eq!(lines(), before + 3);
            // Higher: raised again.
            j.accept(cmd("j1", 2, 1, 5)).unwrap();
            assert_eq!(j.epoch("j1"), Some(5));
            assert_eq!(lines(), before + 5);
            assert!(!j.raise_epoch("j1", 4).unwrap());
        }
        let j = Journal::open(d.path(), Retention::default()).unwrap();
        assert_eq!(j.epoch("j1"), Some(5));
        assert_eq!(j.unfinished().len(), 3);
    }

    #[test]
    fn survives_reopen_and_keeps_what_matters() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(d.path(), Retention::default()).unwrap();
            let a = cmd("j1", 0, 1, 2);
            j.accept(a.clone()).unwrap();
            j.finish(result(&a, serde_json::json!({"m": 1}))).unwrap();
            j.mark_delivered(&a.id.key());
            let b = cmd("j1", 1, 1, 2);
            j.accept(b.clone()).unwrap();
            j.finish(result(&b, Value::Null)).unwrap();
            j.accept(cmd("j1", 2, 1, 2)).unwrap();
            assert!(j.raise_epoch("j1", 3).unwrap());
            assert!(!j.raise_epoch("j1", 3).unwrap());
            j.sync().unwrap();
            // A second agent cannot open the same dir.
            assert!(matches!(Journal::open(d.path(), Retention::default()), Err(JournalError::Locked(..))));
        }
        // A torn last line is skipped.
        let path = d.path().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"t\":\"result\",\"at_").unwrap();
        drop(f);
        let mut j = Journal::open(d.path(), Retention::default()).unwrap();
        assert_eq!(j.skipped_lines(), 1);
        assert_eq!(j.len(), 3);
        assert_eq!(j.epoch("j1"), Some(3));
        assert_eq!(j.unfinished().len(), 1);
        assert_eq!(j.unpublished().len(), 1);
        assert_eq!(j.run_metadata("j1", "n1", 0), Some(serde_json::json!({"m": 1})));
        assert_eq!(j.run_metadata("j1", "n1", 1), None);
        // A failed attempt's metadata is never taken for a rollback.
        let f = cmd("j1", 3, 1, 2);
        j.accept(f.clone()).unwrap();
        j.finish(StepResult { outcome: AttemptOutcome::Failed, ..result(&f, serde_json::json!({"m": 9})) }).unwrap();
        assert_eq!(j.run_metadata("j1", "n1", 3), None);
        // Appends after the compaction land on lines of their own.
        let c = cmd("j2", 0, 1, 1);
        j.accept(c.clone()).unwrap();
        drop(j);
        let j = Journal::open(d.path(), Retention::default()).unwrap();
        assert_eq!(j.skipped_lines(), 0);
        assert!(j.get(&c.id.key()).is_some());
    }

    #[test]
    fn delivery_marks_are_written_with_the_next_line_or_a_flush() {
        let d = tempfile::tempdir().unwrap();
        let a = cmd("j1", 0, 1, 1);
        let b = cmd("j1", 1, 1, 1);
        {
            let mut j = Journal::open(d.path(), Retention::default()).unwrap();
            j.accept(a.clone()).unwrap();
            j.finish(result(&a, Value::Null)).unwrap();
            j.mark_delivered(&a.id.key());
            assert!(j.unpublished().is_empty(), "delivered at once in memory");
            // Dropped like a killed process: the mark was never written.
        }
        {
            let mut j = Journal::open(d.path(), Retention::default()).unwrap();
            assert_eq!(j.unpublished().len(), 1, "published again after a crash");
            j.mark_delivered(&a.id.key());
            j.accept(b.clone()).unwrap();
        }
        {
            let mut j = Journal::open(d.path(), Retention::default()).unwrap();
            assert!(j.unpublished().is_empty(), "written with the next line");
            j.finish(result(&b, Value::Null)).unwrap();
            j.mark_delivered(&b.id.key());
            j.flush().unwrap();
        }
        let j = Journal::open(d.path(), Retention::default()).unwrap();
        assert!(j.unpublished().is_empty(), "written by the flush");
        assert!(j.get(&b.id.key()).is_some_and(|e| e.published));
    }

    #[test]
    fn retention_forgets_settled_commands_only() {
        let d = tempfile::tempdir().unwrap();
        let ret = Retention { max_age: Duration::from_secs(3600), max_commands: 2 };
        let mut j = Journal::open(d.path(), ret).unwrap();
        for step in 0..4 {
            let c = cmd("j1", step, 1, 1);
            j.accept(c.clone()).unwrap();
            j.finish(result(&c, Value::Null)).unwrap();
            if step < 3 {
                j.mark_delivered(&c.id.key());
            }
        }
        j.accept(cmd("j1", 9, 1, 1)).unwrap();
        j.compact().unwrap();
        // 2 settled kept (the newest), the unpublished one and the running one kept.
        assert_eq!(j.len(), 4);
        assert!(j.get("j1/n1/0/1").is_none());
        assert!(j.get("j1/n1/3/1").is_some());
        assert!(j.get("j1/n1/9/1").is_some());
        assert_eq!(j.epoch("j1"), Some(1));
    }
}
