//! When the leader writes a job's summary to the jobs bucket, which a standby reads to
//! list jobs while no controller leads.
//!
//! A summary changes in every round that touches its job (the counts move with each
//! result), but nobody needs each of those versions: a summary is written at once when
//! its status or its waiting reason changed, and otherwise at most once per
//! [`SUMMARY_EVERY_MS`]. A change held back is written by a later round, at the latest
//! by the runtime's tick (every second), so a quiet job's stored summary is never more
//! than about two seconds behind. Before, a 1,000-node fan-out wrote its summary in each
//! of its 20 or so rounds.

use drover_core::api::JobSummary;
use drover_core::engine::JobStatus;
use std::collections::BTreeMap;

/// The shortest time between two writes of a job's summary whose status did not change.
pub const SUMMARY_EVERY_MS: u64 = 1_000;

/// What was written for each job whose summary may have changed since.
#[derive(Debug, Default)]
pub struct SummaryWrites {
    marks: BTreeMap<String, Mark>,
}

#[derive(Debug)]
struct Mark {
    /// Status and waiting reason last written, and when.
    written: Option<(JobStatus, Option<String>, u64)>,
    /// Changed since the last write.
    dirty: bool,
}

impl SummaryWrites {
    /// The job's summary may have changed.
    pub fn touch(&mut self, job: &str) {
        match self.marks.get_mut(job) {
            Some(m) => m.dirty = true,
            None => {
                self.marks.insert(job.to_string(), Mark { written: None, dirty: true });
            }
        }
    }

    /// The summaries to write now (see the module docs), given each job's current one
    /// (`None`: the job is gone). A job whose final summary is returned is forgotten.
    pub fn due(&mut self, now_ms: u64, current: impl Fn(&str) -> Option<JobSummary>) -> Vec<JobSummary> {
        let mut out = Vec::new();
        self.marks.retain(|job, mark| {
            if !mark.dirty {
                return true;
            }
            let Some(s) = current(job) else { return false };
            let changed = mark.written.as_ref().is_none_or(|(status, waiting, at)| {
                *status != s.status || *waiting != s.waiting || now_ms.saturating_sub(*at) >= SUMMARY_EVERY_MS
            });
            if !changed {
                return true;
            }
            let keep = !s.status.is_final();
            *mark = Mark { written: Some((s.status, s.waiting.clone(), now_ms)), dirty: false };
            out.push(s);
            keep
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(status: JobStatus, done: usize) -> JobSummary {
        JobSummary {
            id: "j".into(),
            name: "n".into(),
            status,
            reason: None,
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            total_nodes: 10,
            counts: [(drover_core::engine::NodeOutcome::Succeeded, done)].into(),
            waiting: None,
        }
    }

    #[test]
    fn a_summary_is_written_on_a_change_of_status_and_otherwise_once_a_second() {
        let mut w = SummaryWrites::default();
        // Nothing touched, nothing written.
        assert!(w.due(0, |_| Some(summary(JobStatus::Running, 0))).is_empty());
        // The first version of a job is written at once.
        w.touch("j");
        assert_eq!(w.due(0, |_| Some(summary(JobStatus::Running, 0))).len(), 1);
        // The counts move within the second: held back, then written once it has passed
        // (by a later round, or by the tick with nothing new).
        w.touch("j");
        assert!(w.due(400, |_| Some(summary(JobStatus::Running, 3))).is_empty());
        w.touch("j");
        assert!(w.due(900, |_| Some(summary(JobStatus::Running, 5))).is_empty());
        let due = w.due(1_000, |_| Some(summary(JobStatus::Running, 6)));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].counts.values().sum::<usize>(), 6);
        // Untouched since: the tick writes nothing.
        assert!(w.due(5_000, |_| Some(summary(JobStatus::Running, 6))).is_empty());
        // A change of status is written at once, and a final summary ends the job's mark.
        w.touch("j");
        assert_eq!(w.due(5_100, |_| Some(summary(JobStatus::Paused, 6))).len(), 1);
        w.touch("j");
        assert_eq!(w.due(5_200, |_| Some(summary(JobStatus::Succeeded, 10))).len(), 1);
        assert!(w.marks.is_empty());
        // A job that is gone is forgotten.
        w.touch("k");
        assert!(w.due(6_000, |_| None).is_empty());
        assert!(w.marks.is_empty());
    }
}
