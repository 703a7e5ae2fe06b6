//! The controllers' lease: which controller leads (runs every job) and under which
//! fencing epoch.
//!
//! One key, [`LEASE_KEY`] in `<prefix>_leases`, holds `{owner, epoch, ttl_ms, ...}`. It is
//! only ever changed by compare-and-set on its revision, so two controllers can never both
//! win it. Expiry is judged without comparing clocks across machines: a controller that
//! does not lead remembers when it *first saw* the current write of the lease, on its own
//! monotonic clock, and may take the lease once that write has stood for the holder's
//! `ttl_ms`. The holder renews every third of the TTL and acts only until a quarter of
//! the TTL before the earliest moment anyone could judge it expired (counted from when it
//! *sent* its last successful renewal). Past that it pauses: a later renewal that succeeds
//! (a compare-and-set on its own last revision) proves nobody else acted, and it carries
//! on; one that finds another controller's write ends its term. Whatever slips past the
//! clocks (a process or VM frozen between a check and a write) is caught by the journal:
//! every journal write of a term is conditional on its takeover line being the last one
//! (see `runtime::Fence`), and agents refuse commands of an older epoch than one seen.
use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use drover_core::wire::LEASE_KEY;

/// The lease's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The leading controller, or `None` when the last one released the lease (stopped).
    pub owner: Option<String>,
    /// Raised by every takeover; commands and journal lines carry it.
    pub epoch: u64,
    /// How long the holder's silence must last before another may take over.
    pub ttl_ms: u64,
    /// When it was last written (for people; no decision reads it).
    pub renewed_at_ms: u64,
}

/// Why the lease could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another controller changed the lease first.
    #[error("the lease changed under us (another controller took it)")]
    Lost,
    #[error("lease: {0}")]
    Bus(String),
}

/// What a controller that does not lead decides at each look at the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Somebody leads and has been heard from recently.
    Wait,
    /// Try to take it (by compare-and-set on this revision; `None`: create the key).
    Take { revision: Option<u64> },
}

/// What identifies one write of the lease: revisions alone restart if the bucket is
/// recreated.
type Stamp = (u64, u64, Option<String>);

/// The pure rule a follower applies to what it reads from the lease (no I/O, no clock).
#[derive(Debug, Default)]
pub struct Observer {
    /// The lease write last seen and when it was first seen.
    seen: Option<(Stamp, Instant)>,
    /// The last lease write of this process's own term, after that term ended.
    own: Option<Stamp>,
}

impl Observer {
    /// This process's term ended (it could not renew in time, or could not start);
    /// `revision` and `epoch` are of the last lease write it made. If nobody has changed
    /// the lease since, it may take it again at once: nobody else has acted.
    pub fn stepped_down(&mut self, me: &str, revision: u64, epoch: u64) {
        self.own = Some((revision, epoch, Some(me.to_string())));
    }

    /// `current`: the lease's revision and value, or `None` when there is none yet.
    /// A released lease, or one still as this process's own ended term left it, is taken
    /// at once. Any other holder, this controller's id included (a previous process
    /// under the same id may still be running), is deposed only after its TTL of
    /// silence.
    pub fn look(&mut self, current: Option<(u64, &LeaseRecord)>, now: Instant) -> Verdict {
        let Some((revision, rec)) = current else {
            self.seen = None;
            return Verdict::Take { revision: None };
        };
        let stamp: Stamp = (revision, rec.epoch, rec.owner.clone());
        if rec.owner.is_none() || self.own.as_ref() == Some(&stamp) {
            return Verdict::Take { revision: Some(revision) };
        }
        match &self.seen {
            Some((s, since)) if *s == stamp => {
                if now.duration_since(*since) >= Duration::from_millis(rec.ttl_ms) {
                    Verdict::Take { revision: Some(revision) }
                } else {
                    Verdict::Wait
                }
            }
            _ => {
                self.seen = Some((stamp, now));
                Verdict::Wait
            }
        }
    }
}

/// How long a leader may act after sending a renewal that succeeded: three quarters of the
/// TTL, so it stops a quarter of the TTL before any follower may take over.
pub fn valid_for(ttl: Duration) -> Duration {
    ttl - ttl / 4
}

/// One leadership term: its epoch, until when it may act, and whether it was lost.
/// Shared by the runtime (which checks it before making a round durable) and the renewer.
#[derive(Clone, Debug)]
pub struct Term {
    pub epoch: u64,
    valid_until: Arc<Mutex<Instant>>,
    lost: CancellationToken,
}

impl Term {
    pub fn new(epoch: u64, valid_until: Instant) -> Term {
        Term { epoch, valid_until: Arc::new(Mutex::new(valid_until)), lost: CancellationToken::new() }
    }

    /// Whether this controller may still act as the leader.
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.until()
    }

    fn until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A renewal sent at `sent` succeeded.
    pub fn extend(&self, sent: Instant, ttl: Duration) {
        let mut until = self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        *until = (*until).max(sent + valid_for(ttl));
    }

    /// The term is over: every task of it stops.
    pub fn lose(&self) {
        self.lost.cancel();
    }

    /// Cancelled when the term is over.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Wait until the term may act: `true` once it is valid (again), `false` once it is
    /// lost. A term whose renewals are late (NATS overloaded or unreachable) is paused,
    /// not lost: only a renewal that finds another controller's write ends it, and one
    /// that succeeds on this term's own last revision proves nobody else has acted.
    pub async fn usable(&self) -> bool {
        loop {
            if self.lost.is_cancelled() {
                return false;
            }
            if self.valid() {
                return true;
            }
            tokio::select! {
                _ = self.lost.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
}

/// The lease in KV, for one controller.
#[derive(Clone)]
pub struct Lease {
    kv: kv::Store,
    pub me: String,
    pub ttl: Duration,
}

impl Lease {
    pub fn new(kv: kv::Store, me: String, ttl: Duration) -> Lease {
        Lease { kv, me, ttl }
    }

    /// The lease's revision and value, or `None` when there is none (or it was deleted).
    pub async fn read(&self) -> Result<Option<(u64, LeaseRecord)>, LeaseError> {
        let entry = self.kv.entry(LEASE_KEY).await.map_err(|e| LeaseError::Bus(e.to_string()))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { return Ok(None) };
        let rec = serde_json::from_slice(&entry.value)
            .map_err(|e| LeaseError::Bus(format!("the lease holds something unreadable: {e}")))?;
        Ok(Some((entry.revision, rec)))
    }

    fn record(&self, owner: Option<String>, epoch: u64) -> bytes::Bytes {
        let rec =
            LeaseRecord { owner, epoch, ttl_ms: self.ttl.as_millis() as u64, renewed_at_ms: drover_bus::now_ms() };
        serde_json::to_vec(&rec).unwrap_or_default().into()
    }

    /// Take the lease under `epoch`: create it, or compare-and-set on `revision`. Returns
    /// the new revision; [`LeaseError::Lost`] when another controller was first.
    pub async fn take(&self, revision: Option<u64>, epoch: u64) -> Result<u64, LeaseError> {
        let value = self.record(Some(self.me.clone()), epoch);
        match revision {
            None => self.kv.create(LEASE_KEY, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => LeaseError::Lost,
                _ => LeaseError::Bus(e.to_string()),
            }),
            Some(r) => self.update(r, value).await,
        }
    }

    /// Renew a held lease (same epoch).
    pub async fn renew(&self, revision: u64, epoch: u64) -> Result<u64, LeaseError> {
        self.update(revision, self.record(Some(self.me.clone()), epoch)).await
    }

    /// Give the lease up (keeping its epoch) so that another controller leads at once.
    pub async fn release(&self, revision: u64, epoch: u64) -> Result<u64, LeaseError> {
        self.update(revision, self.record(None, epoch)).await
    }

    async fn update(&self, revision: u64, value: bytes::Bytes) -> Result<u64, LeaseError> {
        self.kv.update(LEASE_KEY, value, revision).await.map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => LeaseError::Lost,
            _ => LeaseError::Bus(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(owner: &str, ttl_ms: u64) -> LeaseRecord {
        LeaseRecord { owner: Some(owner.into()), epoch: 3, ttl_ms, renewed_at_ms: 0 }
    }

    #[test]
    fn nobody_holding_it_means_take_it() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(o.look(None, t0), Verdict::Take { revision: None });
        let released = LeaseRecord { owner: None, ..held("a", 1000) };
        assert_eq!(o.look(Some((7, &released)), t0), Verdict::Take { revision: Some(7) });
    }

    #[test]
    fn a_holder_is_deposed_only_after_its_ttl_of_silence_seen_locally() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut o = Observer::default();
        let rec = held("a", 1000);
        assert_eq!(o.look(Some((5, &rec)), t0), Verdict::Wait);
        assert_eq!(o.look(Some((5, &rec)), t0 + ms(999)), Verdict::Wait);
        // A renewal (new revision) restarts the count from when it is seen.
        assert_eq!(o.look(Some((6, &rec)), t0 + ms(999)), Verdict::Wait);
        assert_eq!(o.look(Some((6, &rec)), t0 + ms(1998)), Verdict::Wait);
        assert_eq!(o.look(Some((6, &rec)), t0 + ms(1999)), Verdict::Take { revision: Some(6) });
        // A recreated bucket can repeat a revision: another epoch or owner is a new write.
        let other = LeaseRecord { epoch: 9, ..held("c", 1000) };
        assert_eq!(o.look(Some((6, &other)), t0 + ms(1999)), Verdict::Wait);
    }

    #[test]
    fn only_this_process_s_own_ended_term_is_taken_back_at_once() {
        let t0 = Instant::now();
        let rec = held("a", 1000);
        // A new process under the holder's id waits like anyone: the old process may live.
        let mut o = Observer::default();
        assert_eq!(o.look(Some((5, &rec)), t0), Verdict::Wait);
        // A process whose own term ended (it could not renew in time) takes the lease
        // back at once if nobody changed it since its last write.
        o.stepped_down("a", 9, 3);
        assert_eq!(o.look(Some((9, &rec)), t0), Verdict::Take { revision: Some(9) });
        assert_eq!(o.look(Some((10, &rec)), t0), Verdict::Wait);
        let raised = LeaseRecord { epoch: 4, ..held("a", 1000) };
        assert_eq!(o.look(Some((9, &raised)), t0), Verdict::Wait);
    }

    #[test]
    fn a_leader_stops_acting_before_anyone_may_take_over() {
        let ttl = Duration::from_secs(4);
        let sent = Instant::now();
        let term = Term::new(2, sent);
        assert!(!term.valid());
        term.extend(sent, ttl);
        assert!(term.valid());
        // The follower's count starts no earlier than `sent`: the leader's validity ends
        // a quarter of the TTL before it.
        assert_eq!(valid_for(ttl), Duration::from_secs(3));
        // An older renewal never shortens the term.
        term.extend(sent - Duration::from_secs(10), ttl);
        assert!(term.valid());
        term.lose();
        assert!(!term.valid());
    }
}
