//! A record of the process groups that steps are running, on disk, so that an agent
//! killed with SIGKILL (which cannot clean up) kills what its steps left running when it
//! starts again, before it reports those steps as interrupted: otherwise a step reported
//! failed could still be changing the machine while its retry runs.
//!
//! One file per running group, named by the group id, holding the boot id and the group
//! leader's start time. At start, a recorded group is killed unless that is unsafe: after
//! a reboot (another boot id) the number means nothing; and when a process with the
//! group's id exists but started at another time, the id was reused, which the kernel
//! allows only once our group is gone. (While any member of our group lives, no new
//! process can get its id, so a group with that id and no leader is ours.)

use std::path::{Path, PathBuf};

/// The file of one running group; removed when dropped (after the group was killed).
#[derive(Debug)]
pub struct GroupRecord {
    path: PathBuf,
}

impl GroupRecord {
    /// Record the group `pgid` (whose leader is the process `pgid`) in `dir`. Best effort:
    /// a failure is logged and only loses the clean-up after a SIGKILL.
    pub fn create(dir: &Path, pgid: i32) -> Option<GroupRecord> {
        let boot = boot_id()?;
        let started = start_time(pgid)?;
        let path = dir.join(pgid.to_string());
        let write = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, format!("{boot}\n{started}\n")));
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

/// Kill (SIGKILL) every group recorded in `dir` by a previous run that may still be ours,
/// and forget every record. Returns the groups signalled.
pub fn kill_leftover_groups(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let boot = boot_id();
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let pgid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i32>().ok());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = text.lines();
        let (recorded_boot, recorded_start) = (lines.next(), lines.next().and_then(|s| s.parse::<u64>().ok()));
        if let (Some(pgid), Some(boot), Some(rb), Some(rs)) = (pgid, boot.as_deref(), recorded_boot, recorded_start)
            && pgid > 1
            && rb == boot
            && start_time(pgid).is_none_or(|now| now == rs)
        {
            // SAFETY: killpg has no memory-safety preconditions; ESRCH (already gone) is fine.
            if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
                killed.push(pgid);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
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

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
    }

    fn spawn_group_leader() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep starts")
    }

    #[test]
    fn a_recorded_group_is_killed_at_the_next_start_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group_leader();
        let pgid = child.id() as i32;
        let record = GroupRecord::create(dir.path(), pgid).expect("recorded");
        std::mem::forget(record); // the agent died: nothing removed the record
        assert_eq!(kill_leftover_groups(dir.path()), vec![pgid]);
        let _ = child.wait();
        assert!(!alive(child.id()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_reused_id_or_another_boot_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group_leader();
        let pgid = child.id();
        // Another start time: the id belongs to another process now.
        std::fs::write(dir.path().join(pgid.to_string()), format!("{}\n1\n", boot_id().unwrap())).unwrap();
        // Another boot.
        std::fs::write(dir.path().join("1234567"), "another-boot\n5\n").unwrap();
        assert!(kill_leftover_groups(dir.path()).is_empty());
        assert!(alive(pgid));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_record_goes_away_with_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_group_leader();
        let record = GroupRecord::create(dir.path(), child.id() as i32).expect("recorded");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(record);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let _ = child.kill();
        let _ = child.wait();
    }
}
