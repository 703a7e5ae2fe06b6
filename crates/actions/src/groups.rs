//! A record of the processes that steps are running, on disk, so that an agent killed
//! with SIGKILL (which cannot clean up) kills what its steps left running when it starts
//! again, before it reports those steps as interrupted: otherwise a step reported failed
//! could still be changing the machine while its retry runs.
//!
//! One file per running command, named by its process group id, holding the boot id, the
//! group leader's start time and the command's marker: the `DROVER_JOB_ID`,
//! `DROVER_NODE_ID`, `DROVER_STEP` and `DROVER_ATTEMPT` values every process of the step
//! inherits in its environment. At start, for each record of this boot:
//! - every process whose environment carries the marker is killed (the step's processes,
//!   also those that left the group with `setsid`, never anyone else's);
//! - the whole group is killed too when its leader is still the recorded process (same
//!   start time), which also catches members that cleared their environment.
//!
//! A group id alone is never trusted once its leader is gone: the id may have been reused.

use std::path::{Path, PathBuf};

/// The file of one running command; removed when dropped (after its group was killed).
#[derive(Debug)]
pub struct GroupRecord {
    path: PathBuf,
}

impl GroupRecord {
    /// Record the group `pgid` (whose leader is the process `pgid`), whose processes carry
    /// `marker` in their environment, in `dir`. Best effort: a failure is logged and only
    /// loses the clean-up after a SIGKILL.
    pub fn create(dir: &Path, pgid: i32, marker: &[(String, String)]) -> Option<GroupRecord> {
        let boot = boot_id()?;
        let started = start_time(pgid)?;
        let path = dir.join(pgid.to_string());
        let mut text = format!("{boot}\n{started}\n");
        for (k, v) in marker {
            text.push_str(&format!("{k}={v}\n"));
        }
        let write = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text));
        match write {
            Ok(()) => Some(GroupRecord { path }),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot record a running process group: {e}");
                None
            }
        }
    }
}

impl Drop for GroupRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Kill (SIGKILL) what the commands recorded in `dir` by a previous run left running (see
/// the module docs), wait until it is gone (up to 2 s), and forget every record. Returns
/// the processes and groups signalled.
pub fn kill_leftover_groups(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let boot = boot_id();
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i32>().ok());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let (Some(pgid), Some(boot)) = (pgid, boot.as_deref()) {
            killed.extend(kill_recorded(pgid, &text, boot));
        }
        // Forgotten only once its processes are signalled: a crash before this finds the
        // record again at the next start.
        let _ = std::fs::remove_file(&path);
    }
    // SIGKILL is delivered asynchronously: wait until the processes are really gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while killed.iter().any(|&p| alive(p.abs())) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed
}

/// Kill what one record (`text`, of group `pgid`) names, if it is of this boot. Returns the
/// processes signalled (a group as its negative id).
fn kill_recorded(pgid: i32, text: &str, boot: &str) -> Vec<i32> {
    let mut lines = text.lines();
    let (recorded_boot, recorded_start) = (lines.next(), lines.next().and_then(|s| s.parse::<u64>().ok()));
    let marker: Vec<&str> = lines.filter(|l| l.contains('=')).collect();
    let mut killed = Vec::new();
    if pgid <= 1 || recorded_boot != Some(boot) {
        return killed; // another boot: those processes are gone, the numbers mean nothing
    }
    if recorded_start.is_some() && start_time(pgid) == recorded_start {
        // SAFETY: killpg has no memory-safety preconditions; ESRCH (gone) is fine.
        if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
            killed.push(-pgid);
        }
    }
    if !marker.is_empty() {
        for pid in processes_with(&marker) {
            // SAFETY: kill has no memory-safety preconditions; ESRCH (gone) is fine.
            if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                killed.push(pid);
            }
        }
    }
    killed
}

/// Processes whose environment holds every `KEY=VALUE` of `marker`.
fn processes_with(marker: &[&str]) -> Vec<i32> {
    let Ok(proc) = std::fs::read_dir("/proc") else { return Vec::new() };
    let me = std::process::id() as i32;
    proc.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                marker.iter().all(|m| vars.contains(&m.as_bytes()))
            })
        })
        .collect()
}

/// A process that exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X'])))
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The start time of process `pid` (clock ticks since boot), if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is
    // field 3, start time field 22.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn marker(tag: &str) -> Vec<(String, String)> {
        vec![
            ("DROVER_JOB_ID".into(), format!("test-{tag}-{}", std::process::id())),
            ("DROVER_ATTEMPT".into(), "1".into()),
        ]
    }

    fn spawn(script: &str, marker: &[(String, String)]) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .envs(marker.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh starts")
    }

    /// The pids of the processes carrying a marker.
    fn carrying(m: &[(String, String)]) -> Vec<i32> {
        let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
        processes_with(&pairs.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn a_recorded_group_is_killed_at_the_next_start_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let m = marker("group");
        let mut child = spawn("sleep 30 & sleep 30; wait", &m);
        let pgid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let record = GroupRecord::create(dir.path(), pgid, &m).expect("recorded");
        std::mem::forget(record); // the agent died: nothing removed the record
        assert!(!kill_leftover_groups(dir.path()).is_empty());
        let _ = child.wait();
        assert!(carrying(&m).is_empty(), "a process of the step survived");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn processes_that_outlived_their_leader_are_found_by_their_marker() {
        let dir = tempfile::tempdir().unwrap();
        let m = marker("orphan");
        let mut child = spawn("sleep 30 & sleep 0.3", &m);
        let pgid = child.id() as i32;
        let record = GroupRecord::create(dir.path(), pgid, &m).expect("recorded");
        std::mem::forget(record);
        let _ = child.wait(); // the leader is gone; its `sleep 30` lives on
        assert_eq!(carrying(&m).len(), 1);
        kill_leftover_groups(dir.path());
        assert!(carrying(&m).is_empty(), "the orphan survived");
    }

    #[test]
    fn a_reused_id_or_another_boot_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = marker("other");
        let mut child = spawn("sleep 30", &other);
        let pgid = child.id();
        // Another start time and a marker nobody carries: the id belongs to someone else.
        let text = format!("{}\n1\nDROVER_JOB_ID=nobody-{}\n", boot_id().unwrap(), std::process::id());
        std::fs::write(dir.path().join(pgid.to_string()), text).unwrap();
        // Another boot.
        std::fs::write(dir.path().join("1234567"), "another-boot\n5\n").unwrap();
        assert!(kill_leftover_groups(dir.path()).is_empty());
        assert!(alive(pgid as i32));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_record_goes_away_with_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn("sleep 30", &marker("drop"));
        let record = GroupRecord::create(dir.path(), child.id() as i32, &[]).expect("recorded");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(record);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
