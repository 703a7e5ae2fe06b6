//! The plan model (v1): what to do on which nodes and how to roll it out.
//!
//! These types are the typed form of a plan after [`crate::parse`] checked it. They also
//! serialize (the controller stores the accepted plan) and describe themselves as a JSON
//! Schema (`drover schema plan`).

use crate::duration::Dur;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// Default step timeout when neither the step nor the plan sets one.
pub const DEFAULT_STEP_TIMEOUT: Dur = Dur(5 * 60 * 1000);
/// Default first retry delay; it doubles per attempt.
pub const DEFAULT_RETRY_BACKOFF: Dur = Dur(1000);
/// Default cap on the retry delay.
pub const DEFAULT_RETRY_MAX: Dur = Dur(30_000);
/// The most retries a step may ask for.
pub const MAX_RETRIES: u32 = 100;

/// A plan: what to run, where, and how to roll it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "drover plan (v1)")]
pub struct Plan {
    /// A short name for the operation, e.g. `upgrade-nginx`.
    pub name: String,
    /// Free text shown with the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Which nodes to run on; resolved and frozen when the job is submitted.
    pub targets: Targets,
    /// How to roll the steps out across the targets.
    #[serde(default)]
    pub rollout: Rollout,
    /// Default timeout of every step that sets none (default 5m).
    #[serde(default = "default_step_timeout")]
    pub timeout: Dur,
    /// Deadline of the whole job; when it passes, running steps are cancelled and the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_timeout: Option<Dur>,
    /// The steps every node runs, in order.
    pub steps: Vec<Step>,
}

fn default_step_timeout() -> Dur {
    DEFAULT_STEP_TIMEOUT
}
fn default_retry_backoff() -> Dur {
    DEFAULT_RETRY_BACKOFF
}
fn default_retry_max() -> Dur {
    DEFAULT_RETRY_MAX
}
fn default_true() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// Which nodes a plan runs on. Any combination; the union of `nodes`, `selector`, `groups`
/// and `all`, minus `exclude`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Node ids, run in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// A label selector: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`; comma = AND.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Node groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Every registered node.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Node ids never to run on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// What to do with targeted nodes that are offline at submission (default `fail`).
    #[serde(default)]
    pub offline: OfflinePolicy,
}

/// How the steps roll out across the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// `parallel` (all at once, default), `sequential` (one node at a time) or `rolling`.
    #[serde(default)]
    pub strategy: Strategy,
    /// Rolling only: batch size as a count, a percentage of the targets, or a ramp list
    /// whose last entry repeats (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// Rolling only: `lockstep` (default) or `sliding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// Wait between batches (lockstep windows; default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_delay: Option<Dur>,
    /// Failure budget: the budget trips when failed nodes exceed it. A count, a percentage
    /// of the targets (rounded down), or -1 for no budget (default 0).
    #[serde(default)]
    pub max_failures: Budget,
    /// What happens when the budget trips: `rollback` (default), `halt` or `pause`.
    #[serde(default)]
    pub on_budget_exceeded: OnBudgetExceeded,
    /// Wait for `approve` after these batches (1-based).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_after_batches: Vec<u32>,
    /// Undo a failed node's own completed steps (default true).
    #[serde(default = "default_true")]
    pub rollback_failed_nodes: bool,
    /// Run even while another job uses some of the same nodes (default false: the job
    /// waits until its nodes are free, and says so).
    #[serde(default, skip_serializing_if = "is_false")]
    pub share_nodes: bool,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            strategy: Strategy::default(),
            batch: None,
            window: None,
            batch_delay: None,
            max_failures: Budget::default(),
            on_budget_exceeded: OnBudgetExceeded::default(),
            pause_after_batches: Vec::new(),
            rollback_failed_nodes: true,
            share_nodes: false,
        }
    }
}

/// One step: an action with params, run on every target node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique within the plan.
    pub name: String,
    /// The action to run, e.g. `package.install`.
    pub action: String,
    /// The action's params. Strings may use `{{node.id}}`, `{{node.labels.KEY}}`, `{{job.id}}`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub with: Map<String, Value>,
    /// Per-attempt timeout (default: the plan's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Extra attempts after a failure (default 0, at most 100).
    #[serde(default)]
    pub retries: u32,
    /// First retry delay; doubles each attempt (default 1s).
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: Dur,
    /// Cap on the retry delay (default 30s).
    #[serde(default = "default_retry_max")]
    pub retry_max: Dur,
    /// `fail` (default: the node fails) or `continue` (recorded; the node goes on).
    #[serde(default)]
    pub on_error: OnError,
    /// `always` (default), `on_success` (no earlier step failed on this node) or
    /// `on_failure` (an earlier step failed on this node with `on_error: continue`).
    #[serde(default)]
    pub when: When,
    /// Every node of the batch finishes the previous steps before any starts this one.
    #[serde(default, skip_serializing_if = "is_false")]
    pub barrier: bool,
    /// An explicit undo; without it the action's own rollback is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSpec>,
}

/// An explicit undo for a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackSpec {
    /// The action to run to undo the step.
    pub action: String,
    /// Its params (templates allowed).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub with: Map<String, Value>,
    /// Timeout of the undo (default: the step's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// Declares a string enum that parses case-insensitively and names the accepted values
/// when it does not.
macro_rules! word_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? } default $def:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }

        impl $name {
            /// Every accepted spelling, lower case.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }

            /// Parse case-insensitively.
            pub fn parse(s: &str) -> Result<Self, String> {
                let lower = s.trim().to_ascii_lowercase();
                match lower.as_str() {
                    $($text => Ok($name::$var),)+
                    _ => Err(format!("\"{}\" is not one of {}", s, Self::NAMES.join(", "))),
                }
            }
        }

        impl Default for $name {
            fn default() -> Self { $name::$def }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.as_str()) }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> { stringify!($name).into() }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": Self::NAMES, "description": "Case-insensitive." })
            }
        }
    };
}

word_enum!(
    /// Rollout strategy.
    Strategy { Parallel = "parallel", Sequential = "sequential", Rolling = "rolling" } default Parallel
);
word_enum!(
    /// Batch window.
    Window { Lockstep = "lockstep", Sliding = "sliding" } default Lockstep
);
word_enum!(
    /// What happens when the failure budget trips.
    OnBudgetExceeded { Rollback = "rollback", Halt = "halt", Pause = "pause" } default Rollback
);
word_enum!(
    /// What a failed step does to its node.
    OnError { Fail = "fail", Continue = "continue" } default Fail
);
word_enum!(
    /// When a step runs on a node.
    When { Always = "always", OnSuccess = "on_success", OnFailure = "on_failure" } default Always
);
word_enum!(
    /// What to do with targeted nodes that are offline at submission.
    OfflinePolicy {
        /// Count them as failed (unreachable); they use up the failure budget.
        Fail = "fail",
        /// Leave them out of the job (reported at submission).
        Exclude = "exclude"
    } default Fail
);

/// A size: a count of nodes or a percentage of the targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Count(u32),
    /// Percent in (0, 100].
    Percent(f64),
}

impl Size {
    /// Parse `5`, `"5"` or `"20%"`.
    pub fn from_value(v: &Value) -> Result<Size, String> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(0) => Err("must be at least 1".into()),
                Some(c) => u32::try_from(c).map(Size::Count).map_err(|_| format!("{c} is too large")),
                None => Err(format!("{n} is not a whole positive number")),
            },
            Value::String(s) if s.trim().ends_with('%') => Size::parse(s),
            Value::String(s) => {
                Err(format!("\"{s}\" is a string: write a count as a number (5) or a percentage as \"20%\""))
            }
            other => Err(format!("expected a count or a percentage like \"20%\", got {}", kind(other))),
        }
    }

    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let pct: f64 = p.trim().parse().map_err(|_| format!("\"{s}\" is not a percentage"))?;
            if !(pct.is_finite()) || pct <= 0.0 {
                return Err(format!("\"{s}\" must be more than 0%"));
            }
            if pct > 100.0 {
                return Err(format!("\"{s}\" is over 100%"));
            }
            Ok(Size::Percent(pct))
        } else {
            match t.parse::<u32>() {
                Ok(0) => Err("must be at least 1".into()),
                Ok(c) => Ok(Size::Count(c)),
                Err(_) => Err(format!("\"{s}\" is neither a count nor a percentage like \"20%\"")),
            }
        }
    }

    /// The size on `total` targets: percentages round down, and a batch is never empty.
    pub fn of(self, total: usize) -> usize {
        match self {
            Size::Count(c) => c as usize,
            Size::Percent(p) => percent_of(p, total).max(1),
        }
    }
}

/// `p`% of `total`, rounded down (exactly, for percentages written with few decimals).
pub fn percent_of(p: f64, total: usize) -> usize {
    // Work in hundredths of a percent so that "10%" of 20 is exactly 2, not 1.9999.
    let hundredths = (p * 100.0).round() as u128;
    ((hundredths * total as u128) / 10_000) as usize
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Count(c) => write!(f, "{c}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Size::Count(c) => s.serialize_u32(*c),
            Size::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Size::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

fn size_schema() -> Value {
    serde_json::json!({
        "oneOf": [
            { "type": "integer", "minimum": 1 },
            { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?%$" }
        ]
    })
}

/// Batch shape: one size, or a ramp whose last entry repeats.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchSpec {
    Size(Size),
    Ramp(Vec<Size>),
}

impl BatchSpec {
    /// The batch sizes for `total` targets, in order, summing to `total`.
    pub fn sizes(&self, total: usize) -> Vec<usize> {
        let ramp: Vec<usize> = match self {
            BatchSpec::Size(s) => vec![s.of(total)],
            BatchSpec::Ramp(r) => r.iter().map(|s| s.of(total)).collect(),
        };
        let mut out = Vec::new();
        let mut left = total;
        let mut i = 0;
        while left > 0 {
            let want = ramp[i.min(ramp.len() - 1)].max(1);
            let take = want.min(left);
            out.push(take);
            left -= take;
            i += 1;
        }
        out
    }

    pub fn from_value(v: &Value) -> Result<BatchSpec, String> {
        match v {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err("a ramp needs at least one size".into());
                }
                let mut sizes = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    sizes.push(Size::from_value(it).map_err(|e| format!("[{i}]: {e}"))?);
                }
                Ok(BatchSpec::Ramp(sizes))
            }
            other => Size::from_value(other).map(BatchSpec::Size),
        }
    }
}

impl Serialize for BatchSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSpec::Size(x) => x.serialize(s),
            BatchSpec::Ramp(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BatchSpec::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for BatchSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BatchSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let size = size_schema();
        schemars::json_schema!({
            "description": "A count (5), a percentage of the targets (\"20%\", rounded down, at least 1), or a ramp ([1, \"10%\", \"50%\"]) whose last entry repeats.",
            "oneOf": [ size, { "type": "array", "minItems": 1, "items": size } ]
        })
    }
}

/// The failure budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// Trips when more than this many nodes failed.
    Count(u32),
    /// Trips when more than this percentage of the targets (rounded down) failed.
    Percent(f64),
    /// Never trips (`-1`).
    Unlimited,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::Count(0)
    }
}

impl Budget {
    /// The most failed nodes tolerated on `total` targets; `None` = no limit.
    pub fn limit(self, total: usize) -> Option<usize> {
        match self {
            Budget::Count(c) => Some(c as usize),
            Budget::Percent(p) => Some(percent_of(p, total)),
            Budget::Unlimited => None,
        }
    }

    pub fn from_value(v: &Value) -> Result<Budget, String> {
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(-1) => Ok(Budget::Unlimited),
                Some(c) if c >= 0 => u32::try_from(c).map(Budget::Count).map_err(|_| format!("{c} is too large")),
                _ => {
                    Err(format!("{n} is not allowed: use a count >= 0, a percentage like \"5%\", or -1 for no budget"))
                }
            },
            Value::String(s) => {
                let t = s.trim();
                if let Some(p) = t.strip_suffix('%') {
                    let pct: f64 = p.trim().parse().map_err(|_| format!("\"{s}\" is not a percentage"))?;
                    if !pct.is_finite() || !(0.0..=100.0).contains(&pct) {
                        return Err(format!("\"{s}\" must be between 0% and 100%"));
                    }
                    return Ok(Budget::Percent(pct));
                }
                Err(format!(
                    "\"{s}\" is a string: write a count as a number (2, or -1 for no budget) or a percentage as \"5%\""
                ))
            }
            other => Err(format!("expected a count, a percentage or -1, got {}", kind(other))),
        }
    }
}

impl Serialize for Budget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Budget::Count(c) => s.serialize_u32(*c),
            Budget::Percent(p) => s.serialize_str(&format!("{p}%")),
            Budget::Unlimited => s.serialize_i64(-1),
        }
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Budget::from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Budget {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Budget".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Failed nodes tolerated: a count (0 = the first failure trips), a percentage of the targets rounded down (\"5%\"), or -1 (never trips).",
            "oneOf": [
                { "type": "integer", "minimum": -1 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?%$" }
            ]
        })
    }
}

/// A short name for a JSON value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

impl Step {
    /// This step's timeout, falling back to the plan's.
    pub fn timeout_or(&self, plan_default: Dur) -> Dur {
        self.timeout.unwrap_or(plan_default)
    }
}

/// The JSON Schema of a plan, as printed by `drover schema plan`.
pub fn plan_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Plan)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes() {
        let ramp = BatchSpec::Ramp(vec![Size::Count(1), Size::Percent(10.0), Size::Percent(50.0)]);
        assert_eq!(ramp.sizes(20), vec![1, 2, 10, 7]);
        assert_eq!(BatchSpec::Size(Size::Count(50)).sizes(3), vec![3]);
        assert_eq!(BatchSpec::Size(Size::Percent(5.0)).sizes(10), vec![1; 10]);
        assert_eq!(BatchSpec::Size(Size::Percent(30.0)).sizes(10), vec![3, 3, 3, 1]);
        assert_eq!(BatchSpec::Size(Size::Count(2)).sizes(0), Vec::<usize>::new());
    }

    #[test]
    fn budget_limits_round_down() {
        assert_eq!(Budget::Percent(5.0).limit(10), Some(0));
        assert_eq!(Budget::Percent(10.0).limit(20), Some(2));
        assert_eq!(Budget::Percent(33.0).limit(10), Some(3));
        assert_eq!(Budget::Unlimited.limit(10), None);
        assert_eq!(Budget::Count(3).limit(1), Some(3));
    }

    #[test]
    fn sizes_reject_nonsense() {
        assert_eq!(Size::parse("120%").unwrap_err(), "\"120%\" is over 100%");
        assert!(Size::parse("0%").is_err());
        assert!(Size::parse("0").is_err());
        assert!(Size::from_value(&serde_json::json!(-3)).is_err());
        assert!(Budget::from_value(&serde_json::json!(-2)).is_err());
        assert_eq!(Budget::from_value(&serde_json::json!(-1)), Ok(Budget::Unlimited));
    }

    #[test]
    fn enums_are_case_insensitive_and_strict() {
        assert_eq!(Strategy::parse("Rolling"), Ok(Strategy::Rolling));
        assert_eq!(Strategy::parse("roling").unwrap_err(), "\"roling\" is not one of parallel, sequential, rolling");
    }

    #[test]
    fn schema_is_generated() {
        let s = plan_schema();
        assert_eq!(s["title"], "drover plan (v1)");
        assert!(s["properties"]["steps"].is_object());
    }
}
