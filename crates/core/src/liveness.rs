//! How often agents beat, and how long a silence means a node is lost.
//!
//! A fleet's heartbeats load its NATS servers and its controller in proportion to its
//! size: 10,000 agents beating every 2 s send 5,000 messages a second while nothing
//! runs. As Nomad does, the fleet's total rate is capped instead: an agent beats at its
//! configured interval, or less often when the fleet is large enough that all of them
//! together would send more than a fleet rate (beats per second, for the whole fleet).
//! Each beat says the interval its agent beats at, and the controller judges each node
//! by its own interval.
//!
//! Beats go over core NATS; only one in [`BEATS_PER_STORED_BEAT`] (and each change of
//! status or interval) is also written to the heartbeats bucket, for a controller that
//! starts to read. A stored write costs the NATS server a JetStream write (and, in a
//! cluster, a replication round), many times a published beat; a restarted controller
//! needs only to know who was alive lately, which [`silence_counted_from_ms`] decides.
//! The rules are pure and live here, once.

/// The default cap on a whole fleet's heartbeats: with agents' default 2 s beat it
/// binds from 1,000 nodes on (10,000 nodes beat every 20 s).
pub const DEFAULT_FLEET_BEATS_PER_S: u32 = 500;

/// Beats a node may miss before the controller judges it lost, when that is longer than
/// the controller's own heartbeat timeout.
pub const BEATS_BEFORE_LOST: u64 = 3;

/// The interval (ms) an agent configured to beat every `configured_ms` beats at in a
/// fleet of `fleet` nodes, so that the fleet sends about `fleet_beats_per_s` beats a
/// second at most (0: no cap, always `configured_ms`). The fleet's share is rounded to
/// 100 ms: a fleet just past the cap (1,001 entries at 500 a second) keeps its beat.
pub fn beat_interval_ms(configured_ms: u64, fleet: u64, fleet_beats_per_s: u32) -> u64 {
    if fleet_beats_per_s == 0 {
        return configured_ms;
    }
    let share = fleet.saturating_mul(1000) / u64::from(fleet_beats_per_s);
    configured_ms.max(share.saturating_add(50) / 100 * 100)
}

/// How long (ms) a node that beats every `interval_ms` may stay silent before it is
/// judged lost: the controller's `timeout_ms`, or [`BEATS_BEFORE_LOST`] beats when that
/// is longer. An unknown interval (0: an agent that does not say it) gets the timeout.
pub fn silence_limit_ms(timeout_ms: u64, interval_ms: u64) -> u64 {
    timeout_ms.max(interval_ms.saturating_mul(BEATS_BEFORE_LOST))
}

/// An agent stores one beat in this many in the heartbeats bucket (and every beat that
/// changes its status or interval).
pub const BEATS_PER_STORED_BEAT: u64 = 10;

/// When a controller that began listening to live beats at `listening_ms` should count
/// the silence of a node from, given the node's last stored beat, stamped `stored_at_ms`
/// and saying the node beats every `interval_ms`.
///
/// Had the node still been beating at `listening_ms`, its last stored beat would be at
/// most [`BEATS_PER_STORED_BEAT`] beats old, plus one beat of slack for a late timer. A
/// stored beat that recent tells nothing about the time since: the node may be alive,
/// and its silence counts from `listening_ms`, so it is lost only after a whole silence
/// limit during which the controller heard nothing from it. An older stored beat means
/// the node stopped beating before `listening_ms`: its silence counts from the beat. An
/// agent that does not say its interval (0) gets no such allowance.
pub fn silence_counted_from_ms(stored_at_ms: u64, interval_ms: u64, listening_ms: u64) -> u64 {
    let vouched = interval_ms.saturating_mul(BEATS_PER_STORED_BEAT + 1);
    if interval_ms > 0 && listening_ms.saturating_sub(stored_at_ms) <= vouched {
        listening_ms.max(stored_at_ms)
    } else {
        stored_at_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_grows_with_the_fleet_only_past_the_cap() {
        // Small fleets beat as configured.
        assert_eq!(beat_interval_ms(2_000, 10, DEFAULT_FLEET_BEATS_PER_S), 2_000);
        assert_eq!(beat_interval_ms(2_000, 1_000, DEFAULT_FLEET_BEATS_PER_S), 2_000);
        // The nodes bucket also holds the fleet's action catalogs: 1,001 entries.
        assert_eq!(beat_interval_ms(2_000, 1_001, DEFAULT_FLEET_BEATS_PER_S), 2_000);
        assert_eq!(beat_interval_ms(2_000, 1_030, DEFAULT_FLEET_BEATS_PER_S), 2_100);
        // Past 1,000 nodes the fleet's rate stays at 500 beats a second.
        assert_eq!(beat_interval_ms(2_000, 2_000, DEFAULT_FLEET_BEATS_PER_S), 4_000);
        assert_eq!(beat_interval_ms(2_000, 10_000, DEFAULT_FLEET_BEATS_PER_S), 20_000);
        assert_eq!(beat_interval_ms(2_000, 10_003, DEFAULT_FLEET_BEATS_PER_S), 20_000);
        // A longer configured interval is kept; 0 switches the cap off.
        assert_eq!(beat_interval_ms(30_000, 10_000, DEFAULT_FLEET_BEATS_PER_S), 30_000);
        assert_eq!(beat_interval_ms(2_000, 10_000, 0), 2_000);
        assert_eq!(beat_interval_ms(2_000, u64::MAX, 1), u64::MAX / 100 * 100);
    }

    #[test]
    fn a_node_is_lost_after_the_timeout_or_three_of_its_beats() {
        assert_eq!(silence_limit_ms(10_000, 2_000), 10_000);
        assert_eq!(silence_limit_ms(10_000, 20_000), 60_000);
        assert_eq!(silence_limit_ms(10_000, 0), 10_000);
        assert_eq!(silence_limit_ms(10_000, u64::MAX), u64::MAX);
    }

    #[test]
    fn a_recent_stored_beat_counts_silence_from_when_the_controller_listens() {
        // Beats every 2 s, one in 10 stored: a stored beat up to 22 s old may be followed
        // by live (unstored) ones.
        assert_eq!(silence_counted_from_ms(100_000, 2_000, 100_000), 100_000);
        assert_eq!(silence_counted_from_ms(100_000, 2_000, 122_000), 122_000);
        // Older: the node stopped beating before the controller listened.
        assert_eq!(silence_counted_from_ms(100_000, 2_000, 122_001), 100_000);
        // A stamp ahead of the controller's clock is not moved back.
        assert_eq!(silence_counted_from_ms(100_500, 2_000, 100_000), 100_500);
        // An agent that does not say its interval: its beat, as stored.
        assert_eq!(silence_counted_from_ms(100_000, 0, 101_000), 100_000);
        // A large fleet's slow beat (20 s) vouches for 220 s.
        assert_eq!(silence_counted_from_ms(0, 20_000, 220_000), 220_000);
        assert_eq!(silence_counted_from_ms(0, u64::MAX, u64::MAX), u64::MAX);
    }
}
