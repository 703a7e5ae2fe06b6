//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use drover_actions::{ExecContext, Policy};

/// A context that allows every action (including `shell`), with a timeout.
pub fn ctx(timeout: Duration) -> ExecContext {
    ExecContext::new("test-job", "test-node", "test-step").with_timeout(timeout).with_policy(Policy::permissive())
}

/// Whether a process is gone: no /proc entry, or a zombie (dead, waiting to be reaped).
pub fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            // Format: pid (comm) state ...; comm may contain spaces, so split after the last ')'.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next());
            state == Some(Some('Z')) || state == Some(Some('X'))
        }
    }
}

/// Read pids written one per line.
pub fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Wait until `f` holds, up to `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
