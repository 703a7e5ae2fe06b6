//! The agent's policy: which actions may run, which paths `file.*` may touch.

use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ActionError;

/// Actions that run arbitrary commands: allowed only when `allow` names them
/// exactly (a wildcard such as `*` does not enable them).
pub const EXPLICIT_ONLY: &[&str] = &["shell"];

/// Which actions may run and which paths `file.*` actions may touch.
///
/// - An action runs when some `allow` pattern matches its name and no `deny`
///   pattern does. Patterns are globs over the dotted name: `*` matches any
///   run of characters (dots included), `?` one character (`file.*`, `test.*`,
///   `*`).
/// - `shell` is never matched by a wildcard: it runs only when `allow` lists
///   `shell` by name.
/// - `paths`: when empty, `file.*` may touch any path (the agent's own Unix
///   permissions still apply). When set, a `file.*` path must lie inside one
///   of these directories after symlinks and `..` are resolved (the target
///   itself when it exists, else its nearest existing ancestor).
///
/// Default: `allow: ["*"]`, `deny: []`, `paths: []` = every action except
/// `shell`, any path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Action name patterns that may run.
    pub allow: Vec<String>,
    /// Action name patterns that may not run (wins over `allow`).
    pub deny: Vec<String>,
    /// Directories `file.*` actions may touch; empty = anywhere.
    pub paths: Vec<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { allow: vec!["*".to_string()], deny: Vec::new(), paths: Vec::new() }
    }
}

impl Policy {
    /// Allow everything, including `shell`, any path (tests, trusted local use).
    pub fn permissive() -> Self {
        let mut allow = vec!["*".to_string()];
        allow.extend(EXPLICIT_ONLY.iter().map(|s| s.to_string()));
        Policy { allow, deny: Vec::new(), paths: Vec::new() }
    }

    /// Whether `action` may run; the error says why not.
    pub fn check_action(&self, action: &str) -> Result<(), ActionError> {
        let denied = |reason: String| ActionError::PolicyDenied { action: action.to_string(), reason };
        if let Some(p) = self.deny.iter().find(|p| glob_match(p, action)) {
            return Err(denied(format!("it matches deny pattern `{p}`")));
        }
        if EXPLICIT_ONLY.contains(&action) {
            if self.allow.iter().any(|p| p == action) {
                return Ok(());
            }
            return Err(denied(format!(
                "`{action}` runs arbitrary commands and must be allowed by name (policy allow: [{action}])"
            )));
        }
        if self.allow.iter().any(|p| glob_match(p, action)) {
            Ok(())
        } else {
            Err(denied(format!("it matches no allow pattern (allow: [{}])", self.allow.join(", "))))
        }
    }

    /// Whether `path` may be touched by `file.*`; the error says why not.
    pub fn check_path(&self, path: &Path) -> Result<(), ActionError> {
        if self.paths.is_empty() {
            return Ok(());
        }
        let denied = |reason: String| ActionError::PathDenied { path: path.to_path_buf(), reason };
        let resolved = resolve_path(path).map_err(|e| denied(format!("cannot resolve it: {e}")))?;
        for dir in &self.paths {
            let dir = resolve_path(dir).unwrap_or_else(|_| dir.clone());
            if resolved.starts_with(&dir) {
                return Ok(());
            }
        }
        let shown = if resolved == path { String::new() } else { format!(" (resolves to `{}`)", resolved.display()) };
        Err(denied(format!(
            "it is outside the allowed paths{shown}; allowed: [{}]",
            self.paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )))
    }
}

/// Resolve `path` to an absolute path without symlinks or `..`: the path itself
/// when it exists (following a final symlink), else its nearest existing
/// ancestor resolved, with the remaining plain components appended (a `..` or
/// `.` among them is refused). A dangling symlink is an error.
pub fn resolve_path(path: &Path) -> io::Result<PathBuf> {
    if !path.is_absolute() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "path is not absolute"));
    }
    match std::fs::canonicalize(path) {
        Ok(p) => return Ok(p),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "path is a dangling symlink"));
    }
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    let mut cur = path.to_path_buf();
    loop {
        let name = match cur.components().next_back() {
            Some(Component::Normal(name)) => name.to_os_string(),
            Some(Component::RootDir) | None => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path has no existing ancestor"));
            }
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a `..` below a directory that does not exist",
                ));
            }
        };
        rest.push(name);
        if !cur.pop() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "path has no existing ancestor"));
        }
        match std::fs::canonicalize(&cur) {
            Ok(mut base) => {
                for c in rest.iter().rev() {
                    base.push(c);
                }
                return Ok(base);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&cur).is_ok() {
                    return Err(io::Error::new(io::ErrorKind::NotFound, "an ancestor is a dangling symlink"));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Glob match: `*` any run of characters, `?` one character, anything else literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "file.write"));
        assert!(glob_match("file.*", "file.write"));
        assert!(!glob_match("file.*", "filex"));
        assert!(glob_match("*.status", "service.status"));
        assert!(glob_match("te?t.*", "test.fail"));
        assert!(glob_match("shell", "shell"));
        assert!(!glob_match("shell", "shell2"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn default_denies_shell_only() {
        let p = Policy::default();
        assert!(p.check_action("file.write").is_ok());
        assert!(p.check_action("package.install").is_ok());
        let e = p.check_action("shell").unwrap_err().to_string();
        assert!(e.contains("allowed by name"), "{e}");
        let p = Policy { allow: vec!["shell".into()], ..Policy::default() };
        assert!(p.check_action("shell").is_ok());
        assert!(p.check_action("echo").is_err());
    }

    #[test]
    fn deny_wins() {
        let p = Policy { allow: vec!["*".into()], deny: vec!["package.*".into()], paths: vec![] };
        assert!(p.check_action("package.remove").is_err());
        assert!(p.check_action("echo").is_ok());
    }

    #[test]
    fn policy_deserializes_with_defaults() {
        let p: Policy = serde_json::from_str(r#"{"paths":["/etc/app"]}"#).unwrap();
        assert_eq!(p.allow, vec!["*".to_string()]);
        assert_eq!(p.paths, vec![PathBuf::from("/etc/app")]);
        assert!(serde_json::from_str::<Policy>(r#"{"alow":[]}"#).is_err());
    }

    #[test]
    fn resolve_handles_missing_tail_and_dotdot() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        assert_eq!(resolve_path(&d.path().join("a/b.txt")).unwrap(), base.join("a/b.txt"));
        std::fs::create_dir(d.path().join("sub")).unwrap();
        assert_eq!(resolve_path(&d.path().join("sub/../x")).unwrap(), base.join("x"));
        assert!(resolve_path(&d.path().join("nope/../x")).is_err());
        assert!(resolve_path(Path::new("relative")).is_err());
    }
}
