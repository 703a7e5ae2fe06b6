//! Human durations (`500ms`, `30s`, `5m`, `1h30m`) as whole milliseconds.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A duration with millisecond resolution, written in human form (`1h30m`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub u64);

impl Dur {
    pub const ZERO: Dur = Dur(0);

    pub fn from_secs(s: u64) -> Dur {
        Dur(s.saturating_mul(1000))
    }

    pub fn from_millis(ms: u64) -> Dur {
        Dur(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }

    /// Parse `500ms`, `30s`, `5m`, `1h30m`, `2d`, `1h 30m`: whole numbers with the units
    /// `ms`, `s`, `m`, `h`, `d`. A bare `0` is accepted; any other bare number is rejected
    /// because its unit would be a guess.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration".into());
        }
        if t == "0" {
            return Ok(Dur::ZERO);
        }
        if t.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("\"{t}\" has no unit; write e.g. \"{t}s\" or \"{t}ms\""));
        }
        let bad = || {
            format!("\"{t}\" is not a duration: use whole numbers with ms, s, m, h or d, e.g. 500ms, 30s, 5m, 1h30m")
        };
        let mut total: u64 = 0;
        let mut rest = t;
        while !rest.is_empty() {
            rest = rest.trim_start();
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = rest[digits..].trim_start();
            let unit = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let per = match &rest[..unit] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(bad()),
            };
            total =
                n.checked_mul(per).and_then(|x| total.checked_add(x)).ok_or_else(|| format!("\"{t}\" is too long"))?;
            rest = &rest[unit..];
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&compact(*self))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&compact(*self))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration in human form: 500ms, 30s, 5m, 1h30m.",
            "pattern": "^ *(0|([0-9]+ *(ms|s|m|h|d) *)+)$",
            "examples": ["500ms", "30s", "5m", "1h30m"]
        })
    }
}

/// `1h30m`, `500ms`, `2d3h`: the largest units first, no spaces.
fn compact(d: Dur) -> String {
    if d.0 == 0 {
        return "0s".into();
    }
    let mut left = d.0;
    let mut out = String::new();
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if left >= per {
            out.push_str(&format!("{}{unit}", left / per));
            left %= per;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_forms() {
        assert_eq!(Dur::parse("500ms"), Ok(Dur(500)));
        assert_eq!(Dur::parse("30s"), Ok(Dur(30_000)));
        assert_eq!(Dur::parse("5m"), Ok(Dur(300_000)));
        assert_eq!(Dur::parse("1h30m"), Ok(Dur(5_400_000)));
        assert_eq!(Dur::parse("0"), Ok(Dur(0)));
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(Dur::parse("").is_err());
        assert!(Dur::parse("5").unwrap_err().contains("no unit"));
        assert!(Dur::parse("5x").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert!(Dur::parse("1.5s").is_err());
        assert!(Dur::parse("1min").is_err());
        assert!(Dur::parse("1month").is_err());
        assert!(Dur::parse("10ns").is_err());
        assert_eq!(Dur::parse("1h 30m"), Ok(Dur(5_400_000)));
        assert_eq!(Dur::parse("2d"), Ok(Dur(172_800_000)));
    }

    #[test]
    fn round_trips_compactly() {
        for s in ["500ms", "30s", "5m", "1h30m", "0s", "2d", "1d2h3m4s5ms"] {
            let d = Dur::parse(s).unwrap();
            assert_eq!(compact(d), s);
        }
    }
}
