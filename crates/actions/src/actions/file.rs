//! `file.write` and `file.delete`, undoable: the metadata records whether the
//! file existed and its previous content, mode and owner; rollback restores
//! exactly that (deleting a file that did not exist).
//!
//! Both follow symlinks: they act on the file a symlink points to (and the
//! policy checks that resolved path). Writes are atomic (temp file in the same
//! directory, fsync, rename).
//!
//! The file work runs on tokio's blocking pool ([`off_async`]): an `fsync` on a slow or
//! busy disk then stalls neither the agent's heartbeats nor its other commands. A step
//! timed out or cancelled while the work runs changes nothing more: the work checks the
//! step's cancel token just before it replaces or deletes the file.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::b64;
use crate::policy::{Policy, resolve_path};
use crate::schema::{FileMode, Typed};
use crate::{ActionError, ExecContext, ExecResult, ParamError};
use tokio_util::sync::CancellationToken;

/// Previous contents larger than this are not kept, so such files are not written or deleted.
pub const MAX_BACKUP: u64 = 16 * 1024 * 1024;

/// Mode of a file `file.write` creates when no `mode` is given.
pub const DEFAULT_MODE: u32 = 0o644;

/// How `content` is encoded.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// The text as is.
    #[default]
    Utf8,
    /// Base64 (standard alphabet, padded): for binary content.
    Base64,
}

/// File content in metadata: text when it is valid UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub encoding: Encoding,
    pub data: String,
}

impl Content {
    fn of(bytes: &[u8]) -> Content {
        match std::str::from_utf8(bytes) {
            Ok(s) => Content { encoding: Encoding::Utf8, data: s.to_string() },
            Err(_) => Content { encoding: Encoding::Base64, data: b64::encode(bytes) },
        }
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        match self.encoding {
            Encoding::Utf8 => Ok(self.data.as_bytes().to_vec()),
            Encoding::Base64 => b64::decode(&self.data),
        }
    }
}

/// What `file.write` / `file.delete` record for rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// The resolved path acted on.
    pub path: PathBuf,
    /// Whether the file existed before.
    pub existed: bool,
    /// Previous content (when it existed).
    pub previous: Option<Content>,
    /// Previous permission bits, octal (when it existed).
    pub previous_mode: Option<String>,
    pub previous_uid: Option<u32>,
    pub previous_gid: Option<u32>,
}

struct Prev {
    bytes: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Run blocking file work on tokio's blocking pool, handing it the step's cancel token.
/// A file call cannot be interrupted, but the work checks the token ([`go_on`]) before
/// it changes anything, so a step timed out or cancelled meanwhile leaves the file as it
/// was, even when its result was given up waiting for (see `supervise`), or when the
/// caller dropped this future.
async fn off_async<T: Send + 'static>(
    cancel: &CancellationToken,
    work: impl FnOnce(&CancellationToken) -> Result<T, ActionError> + Send + 'static,
) -> Result<T, ActionError> {
    // A caller that stops waiting without cancelling (an agent killed in-process drops
    // its tasks) cancels the work's token by dropping this guard: the work then changes
    // nothing either.
    let guard = cancel.clone().drop_guard();
    let token = cancel.clone();
    let done = tokio::task::spawn_blocking(move || work(&token)).await;
    guard.disarm();
    done.map_err(|e| ActionError::Failed(format!("the file operation's thread failed: {e}")))?
}

/// Refuse to change `path` once the step was timed out or cancelled.
fn go_on(cancel: &CancellationToken, path: &Path) -> Result<(), ActionError> {
    if cancel.is_cancelled() {
        return Err(ActionError::Failed(format!("stopped before `{}` was changed", path.display())));
    }
    Ok(())
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ActionError {
    ActionError::io(format!("{what} `{}`", path.display()), e)
}

/// Read the current state of `path` (None when absent). Only regular files.
fn read_prev(path: &Path) -> Result<Option<Prev>, ActionError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot stat", path, e)),
    };
    if !meta.is_file() {
        return Err(ActionError::Failed(format!("`{}` exists and is not a regular file", path.display())));
    }
    if meta.len() > MAX_BACKUP {
        return Err(ActionError::Failed(format!(
            "`{}` is {} bytes; files over {MAX_BACKUP} bytes are not changed because their previous content could not be kept for rollback",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| io_err("cannot read", path, e))?;
    Ok(Some(Prev { bytes, mode: meta.permissions().mode() & 0o7777, uid: meta.uid(), gid: meta.gid() }))
}

fn meta_of(path: &Path, prev: &Option<Prev>) -> FileMeta {
    FileMeta {
        path: path.to_path_buf(),
        existed: prev.is_some(),
        previous: prev.as_ref().map(|p| Content::of(&p.bytes)),
        previous_mode: prev.as_ref().map(|p| format!("{:04o}", p.mode)),
        previous_uid: prev.as_ref().map(|p| p.uid),
        previous_gid: prev.as_ref().map(|p| p.gid),
    }
}

fn to_value(m: &FileMeta) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// Write `bytes` to `path` atomically with `mode` (and owner when given).
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
    cancel: &CancellationToken,
) -> Result<(), ActionError> {
    let dir =
        path.parent().ok_or_else(|| ActionError::Failed(format!("`{}` has no parent directory", path.display())))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(".{name}.drover-{}-{nanos}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("cannot create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| io_err("cannot write", &tmp, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| io_err("cannot chown", &tmp, e))?;
        }
        // After chown (which may clear setuid bits), set the exact mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io_err("cannot chmod", &tmp, e))?;
        f.sync_all().map_err(|e| io_err("cannot sync", &tmp, e))?;
        go_on(cancel, path)?;
        std::fs::rename(&tmp, path).map_err(|e| io_err("cannot rename into", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn check_path(param: &str, path: &Path) -> Vec<ParamError> {
    if !path.is_absolute() {
        vec![ParamError::new(param, "must be an absolute path")]
    } else if path.file_name().is_none() {
        vec![ParamError::new(param, "must name a file")]
    } else {
        Vec::new()
    }
}

fn resolve(path: &Path) -> Result<PathBuf, ActionError> {
    resolve_path(path).map_err(|e| io_err("cannot resolve", path, e))
}

/// Restore the state recorded in `meta` (both rollbacks), off the async threads.
async fn restore(meta: Value, action: &'static str, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
    let (policy, dry_run) = (ctx.policy.clone(), ctx.dry_run);
    off_async(&ctx.cancel, move |c| restore_now(meta, action, &policy, dry_run, c)).await
}

fn restore_now(
    meta: Value,
    action: &str,
    policy: &Policy,
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<ExecResult, ActionError> {
    let bad = |reason: String| ActionError::InvalidMetadata { action: action.to_string(), reason };
    let m: FileMeta = serde_json::from_value(meta).map_err(|e| bad(e.to_string()))?;
    if !m.path.is_absolute() {
        return Err(bad("`path` is not absolute".into()));
    }
    policy.check_path(&m.path)?;
    let current = read_prev(&m.path)?;
    if !m.existed {
        if current.is_none() {
            return Ok(ExecResult::succeeded(false)
                .with_stdout(format!("`{}` did not exist and does not exist\n", m.path.display())));
        }
        if dry_run {
            return Ok(ExecResult::succeeded(true)
                .with_stdout(format!("would delete `{}` (it did not exist)\n", m.path.display())));
        }
        go_on(cancel, &m.path)?;
        std::fs::remove_file(&m.path).map_err(|e| io_err("cannot delete", &m.path, e))?;
        return Ok(
            ExecResult::succeeded(true).with_stdout(format!("deleted `{}` (it did not exist)\n", m.path.display()))
        );
    }
    let content = m.previous.as_ref().ok_or_else(|| bad("`previous` missing for a file that existed".into()))?;
    let bytes = content.bytes().map_err(|e| bad(format!("`previous`: {e}")))?;
    let mode_s = m.previous_mode.as_deref().ok_or_else(|| bad("`previous_mode` missing".into()))?;
    let mode = u32::from_str_radix(mode_s, 8).map_err(|e| bad(format!("`previous_mode`: {e}")))?;
    let owner = m.previous_uid.zip(m.previous_gid);
    let same = current
        .as_ref()
        .is_some_and(|c| c.bytes == bytes && c.mode == mode && owner.is_none_or(|(u, g)| (c.uid, c.gid) == (u, g)));
    if same {
        return Ok(ExecResult::succeeded(false).with_stdout(format!("`{}` is already as it was\n", m.path.display())));
    }
    if dry_run {
        return Ok(ExecResult::succeeded(true).with_stdout(format!(
            "would restore `{}` ({} bytes, mode {mode_s})\n",
            m.path.display(),
            bytes.len()
        )));
    }
    write_atomic(&m.path, &bytes, mode, owner, cancel)?;
    Ok(ExecResult::succeeded(true).with_stdout(format!(
        "restored `{}` ({} bytes, mode {mode_s})\n",
        m.path.display(),
        bytes.len()
    )))
}

// ---------------------------------------------------------------- file.write

pub struct Write;

/// Params of `file.write`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Absolute path of the file. Its directory must exist. A symlink is followed.
    pub path: PathBuf,
    /// The whole new content.
    pub content: String,
    /// How `content` is encoded.
    #[serde(default)]
    pub encoding: Encoding,
    /// Permission bits in octal, e.g. `"0644"`. Default: keep the existing file's
    /// mode, or `0644` for a new file.
    pub mode: Option<FileMode>,
}

impl Typed for Write {
    type Params = WriteParams;
    const NAME: &'static str = "file.write";
    const DESCRIPTION: &'static str = "Write a file atomically (content, mode); rollback restores the previous bytes, mode and owner, or deletes it if it was new.";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &WriteParams) -> Vec<ParamError> {
        let mut errs = check_path("path", &p.path);
        if p.encoding == Encoding::Base64
            && let Err(e) = b64::decode(&p.content)
        {
            errs.push(ParamError::new("content", format!("invalid base64: {e}")));
        }
        errs
    }

    fn paths(p: &WriteParams) -> Vec<PathBuf> {
        vec![p.path.clone()]
    }

    async fn execute(&self, p: WriteParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let dry_run = ctx.dry_run;
        off_async(&ctx.cancel, move |c| write_file(p, dry_run, c)).await
    }

    async fn rollback(&self, _p: WriteParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(metadata, Self::NAME, ctx).await
    }
}

fn write_file(p: WriteParams, dry_run: bool, cancel: &CancellationToken) -> Result<ExecResult, ActionError> {
    let bytes = match p.encoding {
        Encoding::Utf8 => p.content.into_bytes(),
        Encoding::Base64 => b64::decode(&p.content).map_err(ActionError::Failed)?,
    };
    let path = resolve(&p.path)?;
    let prev = read_prev(&path)?;
    let mode = p.mode.map(|m| m.0).or(prev.as_ref().map(|x| x.mode)).unwrap_or(DEFAULT_MODE);
    let changed = prev.as_ref().is_none_or(|x| x.bytes != bytes || x.mode != mode);
    let meta = meta_of(&path, &prev);
    let verb = match (changed, dry_run) {
        (false, _) => "unchanged",
        (true, true) => "would write",
        (true, false) => "wrote",
    };
    if changed && !dry_run {
        write_atomic(&path, &bytes, mode, prev.as_ref().map(|x| (x.uid, x.gid)), cancel)?;
    }
    Ok(ExecResult::succeeded(changed)
        .with_stdout(format!(
            "{verb} `{}` ({} bytes, mode {:04o}{})\n",
            path.display(),
            bytes.len(),
            mode,
            if prev.is_some() { "" } else { ", new file" }
        ))
        .with_metadata(to_value(&meta)))
}

// ---------------------------------------------------------------- file.delete

pub struct Delete;

/// Params of `file.delete`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Absolute path of the regular file to delete (a symlink is followed: the
    /// file it points to is deleted). An absent file is not an error (unchanged).
    pub path: PathBuf,
}

impl Typed for Delete {
    type Params = DeleteParams;
    const NAME: &'static str = "file.delete";
    const DESCRIPTION: &'static str =
        "Delete a regular file; rollback recreates it with its previous bytes, mode and owner.";
    const DRY_RUN: bool = true;
    const UNDO: bool = true;

    fn check(p: &DeleteParams) -> Vec<ParamError> {
        check_path("path", &p.path)
    }

    fn paths(p: &DeleteParams) -> Vec<PathBuf> {
        vec![p.path.clone()]
    }

    async fn execute(&self, p: DeleteParams, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        let dry_run = ctx.dry_run;
        off_async(&ctx.cancel, move |c| delete_file(p, dry_run, c)).await
    }

    async fn rollback(&self, _p: DeleteParams, metadata: Value, ctx: &ExecContext) -> Result<ExecResult, ActionError> {
        restore(metadata, Self::NAME, ctx).await
    }
}

fn delete_file(p: DeleteParams, dry_run: bool, cancel: &CancellationToken) -> Result<ExecResult, ActionError> {
    let path = resolve(&p.path)?;
    let prev = read_prev(&path)?;
    let meta = to_value(&meta_of(&path, &prev));
    let Some(prev) = prev else {
        return Ok(ExecResult::succeeded(false)
            .with_stdout(format!("`{}` does not exist\n", path.display()))
            .with_metadata(meta));
    };
    if dry_run {
        return Ok(ExecResult::succeeded(true)
            .with_stdout(format!("would delete `{}` ({} bytes)\n", path.display(), prev.bytes.len()))
            .with_metadata(meta));
    }
    go_on(cancel, &path)?;
    std::fs::remove_file(&path).map_err(|e| io_err("cannot delete", &path, e))?;
    Ok(ExecResult::succeeded(true)
        .with_stdout(format!("deleted `{}` ({} bytes)\n", path.display(), prev.bytes.len()))
        .with_metadata(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(path: &Path) -> WriteParams {
        WriteParams { path: path.to_path_buf(), content: "new".into(), encoding: Encoding::Utf8, mode: None }
    }

    #[test]
    fn a_step_stopped_while_its_file_work_runs_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, absent) = (dir.path().join("kept"), dir.path().join("absent"));
        std::fs::write(&kept, "old").unwrap();
        let stopped = CancellationToken::new();
        stopped.cancel();

        let e = write_file(params(&kept), false, &stopped).unwrap_err().to_string();
        assert!(e.contains("stopped before"), "{e}");
        let e = write_file(params(&absent), false, &stopped).unwrap_err().to_string();
        assert!(e.contains("stopped before"), "{e}");
        let e = delete_file(DeleteParams { path: kept.clone() }, false, &stopped).unwrap_err().to_string();
        assert!(e.contains("stopped before"), "{e}");
        // Nothing changed, and no temporary file is left behind.
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("kept")]);

        // A dry run changes nothing anyway, so it still reports what it would do.
        assert!(write_file(params(&kept), true, &stopped).unwrap().changed);
        // The same work with a live token does it.
        let live = CancellationToken::new();
        assert!(write_file(params(&kept), false, &live).unwrap().changed);
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "new");
    }

    #[tokio::test]
    async fn file_work_whose_caller_stopped_waiting_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (done, outcome) = std::sync::mpsc::channel();
        let (p, token) = (path.clone(), CancellationToken::new());
        let work = off_async(&token, move |c| {
            let _ = wait.recv();
            let r = write_file(params(&p), false, c);
            let _ = done.send(r.is_ok());
            r
        });
        // The caller gives up (its future is dropped) while the work is blocked.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), work).await.is_err());
        go.send(()).unwrap();
        assert!(!outcome.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
        assert!(!path.exists());
        assert!(token.is_cancelled());
    }
}
