//! Running commands: own process group, controlled environment, capped output,
//! and the whole group killed on cancel (SIGTERM, then SIGKILL after
//! [`KILL_GRACE`](crate::KILL_GRACE)) or when the leader exits (no step leaves
//! processes behind).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{ActionError, ExecContext, ExecResult, ExecStatus, KILL_GRACE};

/// Env vars taken from this process into every command's environment
/// (before `ctx.env` and the command's own env, which override them).
pub const BASE_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "USER",
    "LOGNAME",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "APT_CONFIG",
];

/// PATH used when neither this process nor the context has one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for output pipes to close after the group is gone.
const DRAIN: Duration = Duration::from_millis(500);

/// A command to run.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Env on top of the base env and `ctx.env`.
    pub env: BTreeMap<String, String>,
    pub stdin: Option<Vec<u8>>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd { program: program.into(), ..Cmd::default() }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// `program arg1 arg2` for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `Succeeded` (exit 0), `Failed` (other exit or signal) or `Cancelled`
    /// (`ctx.cancel` fired; [`run_action`](crate::run_action) turns that into
    /// `timed_out` when the deadline caused it).
    pub status: ExecStatus,
    pub exit_code: Option<i32>,
    /// The signal that ended the leader, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == ExecStatus::Succeeded
    }

    /// A one-line reason for a non-success.
    pub fn describe(&self, what: &str) -> String {
        match (self.status, self.exit_code, self.signal) {
            (ExecStatus::Succeeded, _, _) => format!("{what} succeeded"),
            (ExecStatus::Cancelled, _, _) => "cancelled".into(),
            (_, Some(c), _) => format!("{what} exited with code {c}"),
            (_, None, Some(s)) => format!("{what} was killed by signal {s}"),
            _ => format!("{what} failed"),
        }
    }

    /// Into an [`ExecResult`] (status, output, exit code; error when not a success).
    pub fn into_result(self, what: &str, changed: bool) -> ExecResult {
        let error = (!self.success()).then(|| self.describe(what));
        ExecResult {
            status: self.status,
            changed,
            stdout: self.stdout,
            stderr: self.stderr,
            truncated: self.truncated,
            exit_code: self.exit_code,
            metadata: serde_json::Value::Null,
            duration_ms: 0,
            error,
        }
    }
}

/// The environment a command gets: the [`BASE_ENV`] vars of this process,
/// then `ctx.env`, then `extra`; PATH defaulted to [`DEFAULT_PATH`]; plus
/// `DROVER_JOB_ID`, `DROVER_NODE_ID`, `DROVER_STEP`, `DROVER_ATTEMPT`, `DROVER_DRY_RUN`.
pub fn command_env(ctx: &ExecContext, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> =
        BASE_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.to_string());
    env.insert("DROVER_JOB_ID".into(), ctx.job_id.clone());
    env.insert("DROVER_NODE_ID".into(), ctx.node_id.clone());
    env.insert("DROVER_STEP".into(), ctx.step.clone());
    env.insert("DROVER_ATTEMPT".into(), ctx.attempt.to_string());
    env.insert("DROVER_DRY_RUN".into(), ctx.dry_run.to_string());
    env.extend(ctx.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The variables of a command's environment that identify the step its processes belong
/// to (the process-group record uses them to find them after an agent crash).
fn step_marker(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    ["DROVER_JOB_ID", "DROVER_NODE_ID", "DROVER_STEP", "DROVER_ATTEMPT"]
        .iter()
        .filter_map(|k| env.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect()
}

/// Find `program` on the PATH the command would get (for "which manager is here" probes).
pub fn which(ctx: &ExecContext, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let env = command_env(ctx, &BTreeMap::new());
    let path = env.get("PATH")?;
    path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
        let p = PathBuf::from(dir).join(program);
        let meta = std::fs::metadata(&p).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(p)
    })
}

/// Kills the process group when dropped (unless disarmed).
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn signal(&self, sig: i32) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions; errors (ESRCH) are ignored.
            unsafe {
                libc::killpg(pgid, sig);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Capped capture of one stream: keeps `cap` bytes, counts the rest.
#[derive(Debug, Default)]
struct Capture {
    kept: Vec<u8>,
    dropped: u64,
}

async fn capture<R: AsyncRead + Unpin>(mut r: R, cap: usize, buf: Arc<Mutex<Capture>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(mut b) = buf.lock() else { return };
                let room = cap.saturating_sub(b.kept.len());
                let take = room.min(n);
                b.kept.extend_from_slice(&chunk[..take]);
                b.dropped += (n - take) as u64;
            }
        }
    }
}

/// Text of a capped buffer, with an explicit marker when bytes were dropped.
pub fn capped_text(kept: &[u8], dropped: u64, stream: &str, cap: usize) -> (String, bool) {
    let mut s = String::from_utf8_lossy(kept).into_owned();
    if dropped > 0 {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&truncation_marker(stream, dropped, cap));
        (s, true)
    } else {
        (s, false)
    }
}

/// The line appended to a stream cut at the cap.
pub fn truncation_marker(stream: &str, dropped: u64, cap: usize) -> String {
    format!("[drover: {stream} truncated: {dropped} more bytes not kept (cap {cap} bytes)]\n")
}

fn take_capture(buf: &Arc<Mutex<Capture>>) -> Capture {
    match buf.lock() {
        Ok(mut b) => std::mem::take(&mut *b),
        Err(_) => Capture::default(),
    }
}

/// Run `cmd` in its own process group under `ctx` (env, cancel, output cap).
/// `Err` only when the command could not be started.
pub async fn run(cmd: &Cmd, ctx: &ExecContext) -> Result<Output, ActionError> {
    if ctx.cancel.is_cancelled() {
        return Ok(Output {
            status: ExecStatus::Cancelled,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
        });
    }
    let env = command_env(ctx, &cmd.env);
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .env_clear()
        .envs(&env)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &cmd.cwd {
        c.current_dir(dir);
    }
    let mut child = c.spawn().map_err(|e| ActionError::io(format!("cannot start `{}`", cmd.program), e))?;
    let guard = GroupGuard { pgid: child.id().and_then(|p| i32::try_from(p).ok()) };
    let record = match (&ctx.process_groups, guard.pgid) {
        (Some(dir), Some(pgid)) => crate::groups::GroupRecord::create(dir, pgid, &step_marker(&env)),
        _ => None,
    };
    tracing::debug!(command = %cmd.display(), pgid = ?guard.pgid, "started command");

    let out_buf = Arc::new(Mutex::new(Capture::default()));
    let err_buf = Arc::new(Mutex::new(Capture::default()));
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(tokio::spawn(capture(o, ctx.output_cap, out_buf.clone())));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(tokio::spawn(capture(e, ctx.output_cap, err_buf.clone())));
    }
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), cmd.stdin.clone()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }

    let (exit, cancelled) = tokio::select! {
        st = child.wait() => (st.ok(), false),
        _ = ctx.cancel.cancelled() => {
            guard.signal(libc::SIGTERM);
            let st = tokio::select! {
                st = child.wait() => st.ok(),
                _ = tokio::time::sleep(KILL_GRACE) => {
                    guard.signal(libc::SIGKILL);
                    child.wait().await.ok()
                }
            };
            (st, true)
        }
    };
    // The leader is gone: kill whatever it left in its group.
    guard.signal(libc::SIGKILL);
    for r in &mut readers {
        if tokio::time::timeout(DRAIN, &mut *r).await.is_err() {
            r.abort();
        }
    }
    drop(guard);
    drop(record);

    let (stdout, t1) = {
        let c = take_capture(&out_buf);
        capped_text(&c.kept, c.dropped, "stdout", ctx.output_cap)
    };
    let (stderr, t2) = {
        let c = take_capture(&err_buf);
        capped_text(&c.kept, c.dropped, "stderr", ctx.output_cap)
    };
    use std::os::unix::process::ExitStatusExt;
    let exit_code = exit.and_then(|s| s.code());
    let signal = exit.and_then(|s| s.signal());
    let status = if cancelled {
        ExecStatus::Cancelled
    } else if exit_code == Some(0) {
        ExecStatus::Succeeded
    } else {
        ExecStatus::Failed
    };
    Ok(Output { status, exit_code, signal, stdout, stderr, truncated: t1 || t2 })
}

/// The combined output of several commands run for one action, each
/// introduced by a `$ command` line on stdout.
#[derive(Debug, Default)]
pub struct Transcript {
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    pub exit_code: Option<i32>,
}

impl Transcript {
    /// Run `cmd`, appending its output.
    pub async fn run(&mut self, cmd: &Cmd, ctx: &ExecContext) -> Result<Output, ActionError> {
        self.stdout.push_str(&format!("$ {}\n", cmd.display()));
        let out = run(cmd, ctx).await?;
        self.stdout.push_str(&out.stdout);
        self.stderr.push_str(&out.stderr);
        self.truncated |= out.truncated;
        self.exit_code = out.exit_code;
        Ok(out)
    }

    /// Append a note line to stdout.
    pub fn note(&mut self, line: impl AsRef<str>) {
        self.stdout.push_str(line.as_ref());
        self.stdout.push('\n');
    }

    /// Into a result with this status.
    pub fn into_result(self, status: ExecStatus, changed: bool) -> ExecResult {
        let mut r = ExecResult::new(status, changed);
        r.stdout = self.stdout;
        r.stderr = self.stderr;
        r.truncated = self.truncated;
        r.exit_code = self.exit_code;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_explicit() {
        let (s, t) = capped_text(b"abc", 10, "stdout", 3);
        assert!(t);
        assert_eq!(s, "abc\n[drover: stdout truncated: 10 more bytes not kept (cap 3 bytes)]\n");
        let (s, t) = capped_text(b"abc", 0, "stdout", 3);
        assert!(!t);
        assert_eq!(s, "abc");
    }

    #[tokio::test]
    async fn env_is_controlled() {
        // A var outside the allowlist (CARGO_PKG_NAME, set by cargo) must not leak through.
        let ctx = ExecContext::default().with_env("FOO", "bar");
        let out = run(&Cmd::new("/bin/sh").args(["-c", "echo \"$FOO/$CARGO_PKG_NAME/$DROVER_ATTEMPT\""]), &ctx)
            .await
            .unwrap();
        assert_eq!(out.stdout, "bar//1\n");
        assert!(out.success());
    }

    #[tokio::test]
    async fn exit_code_and_stderr() {
        let ctx = ExecContext::default();
        let out = run(&Cmd::new("/bin/sh").args(["-c", "echo oops >&2; exit 3"]), &ctx).await.unwrap();
        assert_eq!(out.status, ExecStatus::Failed);
        assert_eq!(out.exit_code, Some(3));
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.describe("sh"), "sh exited with code 3");
    }

    #[tokio::test]
    async fn spawn_failure_is_an_error() {
        let ctx = ExecContext::default();
        let e = run(&Cmd::new("/nonexistent/prog"), &ctx).await.unwrap_err();
        assert!(e.to_string().contains("cannot start `/nonexistent/prog`"), "{e}");
    }

    #[tokio::test]
    async fn stdin_is_fed() {
        let ctx = ExecContext::default();
        let mut cmd = Cmd::new("/bin/cat");
        cmd.stdin = Some(b"hello".to_vec());
        let out = run(&cmd, &ctx).await.unwrap();
        assert_eq!(out.stdout, "hello");
    }
}
