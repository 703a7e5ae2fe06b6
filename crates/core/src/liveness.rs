//! How often agents beat, and how long a silence means a node is lost.
//!
//! A fleet's heartbeats load its NATS servers and its controller in proportion to its
//! size: 10,000 agents beating every 2 s send 5,000 messages a second while nothing
//! runs. As Nomad does, the fleet's total rate is capped instead: an agent beats at its
//! configured interval, or less often when the fleet is large enough that all of them
//! together would send more than a fleet rate (beats per second, for the whole fleet).
//! Each beat says the interval its agent beats at, and the controller judges each node
//! by its own interval. Both rules are pure and live here, once.

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
}
