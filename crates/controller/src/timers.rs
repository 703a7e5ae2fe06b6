//! The runtime's timers (step deadlines, retry backoffs, batch delays, job deadlines):
//! one task holds every pending timer in a [`DelayQueue`] and hands each to the runtime
//! when it is due. A sleeping task per timer cost about 1.8 KB each, kept until it fired,
//! and a quick step's deadline outlives the step by minutes: 10,000-node jobs left tens
//! of megabytes of them behind (heap profile in docs/PERFORMANCE.md).

use crate::runtime::Input;
use drover_core::engine::{Millis, Timer};
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

/// Where the runtime sets timers.
#[derive(Clone)]
pub struct Timers {
    tx: mpsc::UnboundedSender<(String, Millis, Timer)>,
}

impl Timers {
    /// Start the timer task: due timers go to `out` as [`Input::Timer`], until `stop` is
    /// cancelled or every [`Timers`] handle is dropped.
    pub fn start(out: mpsc::Sender<Input>, stop: CancellationToken) -> Timers {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, out, stop));
        Timers { tx }
    }

    /// Fire `timer` of `job` at `at` (wall-clock ms; at once if past).
    pub fn set(&self, job: String, at: Millis, timer: Timer) {
        let _ = self.tx.send((job, at, timer));
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<(String, Millis, Timer)>,
    out: mpsc::Sender<Input>,
    stop: CancellationToken,
) {
    let mut queue: DelayQueue<(String, Timer)> = DelayQueue::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            set = rx.recv() => match set {
                Some((job, at, timer)) => {
                    let delay = Duration::from_millis(at.saturating_sub(drover_bus::now_ms()));
                    queue.insert((job, timer), delay);
                }
                None => return,
            },
            Some(due) = queue.next(), if !queue.is_empty() => {
                let (job, timer) = due.into_inner();
                if out.send(Input::Timer { job, timer }).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timers_fire_in_time_order_and_stop_with_their_term() {
        let (out, mut inputs) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let timers = Timers::start(out, stop.clone());
        let now = drover_bus::now_ms();
        timers.set("late".into(), now + 60, Timer::JobTimeout);
        timers.set("early".into(), now + 10, Timer::JobTimeout);
        timers.set("past".into(), now.saturating_sub(1_000), Timer::JobTimeout);
        let mut order = Vec::new();
        for _ in 0..3 {
            match tokio::time::timeout(Duration::from_secs(2), inputs.recv()).await {
                Ok(Some(Input::Timer { job, .. })) => order.push(job),
                _ => panic!("a timer did not fire"),
            }
        }
        assert_eq!(order, ["past", "early", "late"]);
        timers.set("never".into(), now + 50, Timer::JobTimeout);
        stop.cancel();
        // The task ends without firing it: its channel closes.
        assert!(matches!(tokio::time::timeout(Duration::from_millis(500), inputs.recv()).await, Ok(None)));
    }
}
