//! Turning plan text into a checked [`Plan`], reporting every fault at once.
//!
//! The text is first read into a JSON value (YAML or JSON), then walked field by field.
//! Each fault is recorded with its path (`steps[2] "restart".timeout`) and the walk goes
//! on, so one submission shows every problem.

use crate::catalog::Catalog;
use crate::duration::Dur;
use crate::plan::*;
use crate::selector::Selector;
use crate::template;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// One fault in a plan: where and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanError {
    /// `rollout.batch`, `steps[2] "restart".timeout`, or empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every fault found in a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlanErrors(pub Vec<PlanError>);

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "the plan is invalid ({n} {}):", if n == 1 { "error" } else { "errors" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// The text format of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Yaml,
    Json,
    /// JSON when the text starts with `{`, YAML otherwise.
    Auto,
}

impl Format {
    /// From a file name: `.json` is JSON, `.yaml`/`.yml` YAML, anything else auto.
    pub fn from_path(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Format::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            Format::Yaml
        } else {
            Format::Auto
        }
    }
}

/// Read plan text into a JSON value, with line and column on syntax errors.
pub fn read_document(text: &str, format: Format) -> Result<Value, PlanErrors> {
    let fmt = match format {
        Format::Auto if text.trim_start().starts_with('{') => Format::Json,
        Format::Auto => Format::Yaml,
        f => f,
    };
    let one = |message: String| PlanErrors(vec![PlanError { path: String::new(), message }]);
    let v: Value = match fmt {
        Format::Json => serde_json::from_str(text).map_err(|e| one(format!("not valid JSON: {e}")))?,
        _ => serde_saphyr::from_str(text).map_err(|e| one(format!("not valid YAML: {e}")))?,
    };
    if v.is_null() {
        return Err(one("the plan is empty".into()));
    }
    Ok(v)
}

/// Parse and check a plan. With a catalog, actions and their params are checked too.
pub fn parse_plan(text: &str, format: Format, catalog: Option<&Catalog>) -> Result<Plan, PlanErrors> {
    check_plan(&read_document(text, format)?, catalog)
}

/// Check a plan given as a JSON value.
pub fn check_plan(doc: &Value, catalog: Option<&Catalog>) -> Result<Plan, PlanErrors> {
    let mut w = Walk { errors: Vec::new(), catalog };
    let plan = w.plan(doc);
    match plan {
        Some(p) if w.errors.is_empty() => Ok(p),
        _ => {
            if w.errors.is_empty() {
                w.err("", "the plan is invalid");
            }
            Err(PlanErrors(w.errors))
        }
    }
}

struct Walk<'c> {
    errors: Vec<PlanError>,
    catalog: Option<&'c Catalog>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// Levenshtein distance, for "did you mean" hints on short field names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `known` to `word`, if it is close.
pub fn suggest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

const PLAN_FIELDS: &[&str] = &["name", "description", "targets", "rollout", "timeout", "job_timeout", "steps"];
const TARGET_FIELDS: &[&str] = &["nodes", "selector", "groups", "all", "exclude", "offline"];
const ROLLOUT_FIELDS: &[&str] = &[
    "strategy",
    "batch",
    "window",
    "batch_delay",
    "max_failures",
    "on_budget_exceeded",
    "pause_after_batches",
    "rollback_failed_nodes",
    "share_nodes",
];
const STEP_FIELDS: &[&str] = &[
    "name",
    "action",
    "with",
    "timeout",
    "retries",
    "retry_backoff",
    "retry_max",
    "on_error",
    "when",
    "barrier",
    "rollback",
];
const ROLLBACK_FIELDS: &[&str] = &["action", "with", "timeout"];

impl Walk<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(PlanError { path: path.to_string(), message: message.into() });
    }

    fn object<'v>(&mut self, v: &'v Value, path: &str, known: &[&str]) -> Option<&'v Map<String, Value>> {
        let Some(m) = v.as_object() else {
            self.err(path, format!("expected a map, got {}", kind(v)));
            return None;
        };
        for k in m.keys() {
            if !known.contains(&k.as_str()) {
                let hint = match suggest(k, known) {
                    Some(s) => format!(" (did you mean \"{s}\"?)"),
                    None => format!(" (known fields: {})", known.join(", ")),
                };
                self.err(path, format!("unknown field \"{k}\"{hint}"));
            }
        }
        Some(m)
    }

    /// Read an optional field with `parse`; a fault is recorded and gives `None`.
    fn opt<T>(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let v = m.get(key)?;
        match parse(v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(&join(path, key), e);
                None
            }
        }
    }

    fn required<T>(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        parse: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        if !m.contains_key(key) {
            self.err(path, format!("missing required field \"{key}\""));
            return None;
        }
        self.opt(m, path, key, parse)
    }

    fn plan(&mut self, doc: &Value) -> Option<Plan> {
        let m = self.object(doc, "", PLAN_FIELDS)?;
        let name = self.required(m, "", "name", name_str);
        let description = self.opt(m, "", "description", string).map(Some).unwrap_or(None);
        let targets = if m.contains_key("targets") {
            m.get("targets").and_then(|v| self.targets(v))
        } else {
            self.err("", "missing required field \"targets\"");
            None
        };
        let rollout = match m.get("rollout") {
            Some(v) => self.rollout(v),
            None => Some(Rollout::default()),
        };
        let timeout = self.opt(m, "", "timeout", positive_dur);
        let job_timeout = self.opt(m, "", "job_timeout", positive_dur);
        let steps = if m.contains_key("steps") {
            m.get("steps").and_then(|v| self.steps(v))
        } else {
            self.err("", "missing required field \"steps\"");
            None
        };
        if let (Some(r), Some(s)) = (&rollout, &steps) {
            self.cross_checks(r, s);
        }
        Some(Plan {
            name: name?,
            description,
            targets: targets?,
            rollout: rollout?,
            timeout: timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
            job_timeout,
            steps: steps?,
        })
    }

    fn targets(&mut self, v: &Value) -> Option<Targets> {
        let p = "targets";
        let m = self.object(v, p, TARGET_FIELDS)?;
        let before = self.errors.len();
        let nodes = self.opt(m, p, "nodes", string_list).unwrap_or_default();
        let selector = self.opt(m, p, "selector", |v| {
            let s = string(v)?;
            Selector::parse(&s).map_err(|e| format!("\"{s}\" is not a valid selector: {e}"))?;
            Ok(s)
        });
        let groups = self.opt(m, p, "groups", string_list).unwrap_or_default();
        let all = self.opt(m, p, "all", boolean).unwrap_or(false);
        let exclude = self.opt(m, p, "exclude", string_list).unwrap_or_default();
        let offline = self.opt(m, p, "offline", word(OfflinePolicy::parse)).unwrap_or_default();
        let mut seen = BTreeMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(first) = seen.insert(n.as_str(), i) {
                self.err(&format!("targets.nodes[{i}]"), format!("\"{n}\" is listed twice (also at [{first}])"));
            }
        }
        let chose_something = m.contains_key("nodes") || m.contains_key("selector") || m.contains_key("groups") || all;
        if self.errors.len() == before && !chose_something {
            self.err(p, "selects no node: give nodes, selector, groups or all: true");
        } else if m.contains_key("nodes")
            && nodes.is_empty()
            && !m.contains_key("selector")
            && !m.contains_key("groups")
            && !all
        {
            self.err("targets.nodes", "is empty");
        }
        (self.errors.len() == before).then_some(Targets { nodes, selector, groups, all, exclude, offline })
    }

    fn rollout(&mut self, v: &Value) -> Option<Rollout> {
        let p = "rollout";
        let m = self.object(v, p, ROLLOUT_FIELDS)?;
        let before = self.errors.len();
        let strategy = self.opt(m, p, "strategy", word(Strategy::parse));
        // An unreadable strategy has its own error; the fields that depend on it are not
        // judged against a default the operator did not choose.
        let strategy_known = strategy.is_some() || !m.contains_key("strategy");
        let strategy = strategy.unwrap_or_default();
        let batch = self.opt(m, p, "batch", BatchSpec::from_value);
        let window = self.opt(m, p, "window", word(Window::parse));
        let batch_delay = self.opt(m, p, "batch_delay", duration);
        let max_failures = self.opt(m, p, "max_failures", Budget::from_value).unwrap_or_default();
        let on_budget_exceeded =
            self.opt(m, p, "on_budget_exceeded", word(OnBudgetExceeded::parse)).unwrap_or_default();
        let pause_after_batches = self.opt(m, p, "pause_after_batches", batch_numbers).unwrap_or_default();
        let rollback_failed_nodes = self.opt(m, p, "rollback_failed_nodes", boolean).unwrap_or(true);
        let share_nodes = self.opt(m, p, "share_nodes", boolean).unwrap_or(false);
        if strategy != Strategy::Rolling && strategy_known {
            for f in ["batch", "window"] {
                if m.contains_key(f) {
                    self.err(&join(p, f), format!("only applies to strategy rolling (strategy is {strategy})"));
                }
            }
        }
        if strategy == Strategy::Parallel {
            for f in ["batch_delay", "pause_after_batches"] {
                if m.contains_key(f) {
                    self.err(&join(p, f), "strategy parallel runs one batch; use strategy rolling or sequential");
                }
            }
        }
        if window == Some(Window::Sliding) && m.contains_key("batch_delay") {
            self.err("rollout.batch_delay", "only applies to window lockstep (a sliding window refills slots at once)");
        }
        (self.errors.len() == before).then_some(Rollout {
            strategy,
            batch,
            window,
            batch_delay,
            max_failures,
            on_budget_exceeded,
            pause_after_batches,
            rollback_failed_nodes,
            share_nodes,
        })
    }

    fn steps(&mut self, v: &Value) -> Option<Vec<Step>> {
        let Some(items) = v.as_array() else {
            self.err("steps", format!("expected a list of steps, got {}", kind(v)));
            return None;
        };
        if items.is_empty() {
            self.err("steps", "the plan has no steps");
            return None;
        }
        let before = self.errors.len();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let label = item
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!("steps[{i}] \"{n}\""))
                .unwrap_or_else(|| format!("steps[{i}]"));
            if let Some(n) = item.get("name").and_then(Value::as_str)
                && let Some(first) = names.insert(n.to_string(), i)
            {
                self.err(&format!("{label}.name"), format!("duplicate step name \"{n}\" (also steps[{first}])"));
            }
            if let Some(s) = self.step(item, &label, i) {
                out.push(s);
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn step(&mut self, v: &Value, p: &str, index: usize) -> Option<Step> {
        let m = self.object(v, p, STEP_FIELDS)?;
        let name = self.required(m, p, "name", name_str);
        let action = self.required(m, p, "action", name_str);
        let with = self.opt(m, p, "with", params_map).unwrap_or_default();
        let timeout = self.opt(m, p, "timeout", positive_dur);
        let retries = self.opt(m, p, "retries", |v| {
            let n = v.as_u64().ok_or_else(|| format!("expected a whole number >= 0, got {v}"))?;
            if n > u64::from(MAX_RETRIES) {
                return Err(format!("{n} is more than the limit of {MAX_RETRIES}"));
            }
            Ok(n as u32)
        });
        let retry_backoff = self.opt(m, p, "retry_backoff", positive_dur);
        let retry_max = self.opt(m, p, "retry_max", positive_dur);
        let on_error = self.opt(m, p, "on_error", word(OnError::parse));
        let when = self.opt(m, p, "when", word(When::parse));
        let barrier = self.opt(m, p, "barrier", boolean);
        let rollback = m.get("rollback").and_then(|v| self.rollback(v, &join(p, "rollback")));
        if let (Some(b), Some(mx)) = (retry_backoff, retry_max)
            && mx < b
        {
            self.err(&join(p, "retry_max"), format!("{mx} is less than retry_backoff {b}"));
        }
        if index == 0 && when == Some(When::OnFailure) {
            self.err(&join(p, "when"), "on_failure on the first step can never run (no earlier step can have failed)");
        }
        if let Some(a) = &action
            && m.get("with").is_none_or(Value::is_object)
        {
            self.params(a, &Value::Object(with.clone()), p);
        }
        Some(Step {
            name: name?,
            action: action?,
            with,
            timeout,
            retries: retries.unwrap_or(0),
            retry_backoff: retry_backoff.unwrap_or(DEFAULT_RETRY_BACKOFF),
            retry_max: retry_max.unwrap_or(DEFAULT_RETRY_MAX),
            on_error: on_error.unwrap_or_default(),
            when: when.unwrap_or_default(),
            barrier: barrier.unwrap_or(false),
            rollback,
        })
    }

    fn rollback(&mut self, v: &Value, p: &str) -> Option<RollbackSpec> {
        let m = self.object(v, p, ROLLBACK_FIELDS)?;
        let action = self.required(m, p, "action", name_str);
        let with = self.opt(m, p, "with", params_map).unwrap_or_default();
        let timeout = self.opt(m, p, "timeout", positive_dur);
        if let Some(a) = &action
            && m.get("with").is_none_or(Value::is_object)
        {
            self.params(a, &Value::Object(with.clone()), p);
        }
        Some(RollbackSpec { action: action?, with, timeout })
    }

    /// The action must exist and its params fit its schema; templates must be well formed.
    fn params(&mut self, action: &str, with: &Value, p: &str) {
        for t in template::check(with) {
            self.err(&join(&join(p, "with"), &t.path), t.message);
        }
        let Some(catalog) = self.catalog else { return };
        match catalog.check(action, with) {
            None => {
                let names = catalog.names();
                let hint = match suggest(action, &names) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("known actions: {}", names.join(", ")),
                };
                self.err(&join(p, "action"), format!("unknown action \"{action}\" ({hint})"));
            }
            Some(faults) => {
                for f in faults {
                    self.err(&join(&join(p, "with"), &f.param), f.message);
                }
            }
        }
    }

    fn cross_checks(&mut self, r: &Rollout, _steps: &[Step]) {
        if r.strategy == Strategy::Parallel && !r.pause_after_batches.is_empty() {
            // Already reported field by field.
        }
    }
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("expected a string, got {}", kind(v)))
}

fn name_str(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s)
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected true or false, got {}", kind(v)))
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    let items = v.as_array().ok_or_else(|| format!("expected a list of strings, got {}", kind(v)))?;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| match it.as_str() {
            Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
            Some(_) => Err(format!("[{i}] is empty")),
            None => Err(format!("[{i}]: expected a string, got {}", kind(it))),
        })
        .collect()
}

fn batch_numbers(v: &Value) -> Result<Vec<u32>, String> {
    let items = v.as_array().ok_or_else(|| format!("expected a list of batch numbers, got {}", kind(v)))?;
    let mut out = Vec::new();
    for (i, it) in items.iter().enumerate() {
        match it.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => out.push(n as u32),
            _ => return Err(format!("[{i}]: batch numbers start at 1, got {it}")),
        }
    }
    Ok(out)
}

fn params_map(v: &Value) -> Result<Map<String, Value>, String> {
    v.as_object().cloned().ok_or_else(|| format!("expected a map of params, got {}", kind(v)))
}

fn duration(v: &Value) -> Result<Dur, String> {
    match v {
        Value::String(s) => Dur::parse(s),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Dur::ZERO),
        Value::Number(n) => Err(format!("{n} has no unit; write e.g. \"{n}s\" or \"{n}ms\"")),
        other => Err(format!("expected a duration like \"30s\", got {}", kind(other))),
    }
}

fn positive_dur(v: &Value) -> Result<Dur, String> {
    let d = duration(v)?;
    if d == Dur::ZERO {
        return Err("must be more than 0s".into());
    }
    Ok(d)
}

fn word<T>(parse: fn(&str) -> Result<T, String>) -> impl FnOnce(&Value) -> Result<T, String> {
    move |v| parse(&string(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(yaml: &str) -> Vec<String> {
        match parse_plan(yaml, Format::Yaml, None) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn minimal_plan_gets_every_default() {
        let p = parse_plan("name: x\ntargets: {all: true}\nsteps:\n  - {name: a, action: echo}\n", Format::Yaml, None)
            .unwrap();
        assert_eq!(p.rollout, Rollout::default());
        assert_eq!(p.timeout, DEFAULT_STEP_TIMEOUT);
        let s = &p.steps[0];
        assert_eq!(
            (s.retries, s.retry_backoff, s.retry_max, s.on_error, s.when, s.barrier),
            (0, Dur(1000), Dur(30_000), OnError::Fail, When::Always, false)
        );
        assert!(p.rollout.rollback_failed_nodes);
        assert_eq!(p.rollout.max_failures, Budget::Count(0));
    }

    #[test]
    fn reports_every_fault_with_its_path() {
        let e = errors(
            r#"
name: x
targets: {selector: "role=", bogus: 1}
rollout: {strategy: rolling, batch: "120%", on_budget_exceeded: explode, max_failures: -4}
steps:
  - {name: a, action: echo, timeout: 5x}
  - {name: restart, action: echo, retires: 2}
  - {name: a, action: echo, when: sometimes}
"#,
        );
        let want = [
            "targets: unknown field \"bogus\"",
            "targets.selector: \"role=\" is not a valid selector: at column 6: expected a value after '=', found end of selector",
            "rollout.batch: \"120%\" is over 100%",
            "rollout.max_failures: -4 is not allowed",
            "rollout.on_budget_exceeded: \"explode\" is not one of rollback, halt, pause",
            "steps[0] \"a\".timeout: \"5x\" is not a duration",
            "steps[1] \"restart\": unknown field \"retires\" (did you mean \"retries\"?)",
            "steps[2] \"a\".name: duplicate step name \"a\" (also steps[0])",
            "steps[2] \"a\".when: \"sometimes\" is not one of always, on_success, on_failure",
        ];
        for w in want {
            assert!(e.iter().any(|x| x.starts_with(w)), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn rejects_empty_and_misplaced() {
        assert_eq!(errors(""), vec!["the plan is empty"]);
        assert!(
            errors("name: x\ntargets: {all: true}\nsteps: []\n").contains(&"steps: the plan has no steps".to_string())
        );
        assert!(
            errors("name: x\ntargets: {}\nsteps: [{name: a, action: echo}]\n")
                .contains(&"targets: selects no node: give nodes, selector, groups or all: true".to_string())
        );
        let e = errors("name: x\ntargets: {all: true}\nrollout: {batch: 2}\nsteps: [{name: a, action: echo}]\n");
        assert_eq!(e, vec!["rollout.batch: only applies to strategy rolling (strategy is parallel)"]);
        // A misspelled strategy is one error, not also a complaint about `batch`.
        let e = errors(
            "name: x\ntargets: {all: true}\nrollout: {strategy: rollin, batch: 2}\nsteps: [{name: a, action: echo}]\n",
        );
        assert_eq!(e, vec!["rollout.strategy: \"rollin\" is not one of parallel, sequential, rolling"]);
        let e =
            errors("name: x\ntargets: {all: true}\ntimeout: 30\nsteps: [{name: a, action: echo, when: on_failure}]\n");
        assert!(e.iter().any(|x| x.starts_with("timeout: 30 has no unit")), "{e:?}");
        assert!(e.iter().any(|x| x.starts_with("steps[0] \"a\".when: on_failure on the first step")), "{e:?}");
        assert!(errors("name: [").iter().any(|x| x.starts_with("not valid YAML")));
    }

    #[test]
    fn checks_params_against_the_catalog() {
        let cat = Catalog::new(
            [("echo".to_string(), json!({"type":"object","properties":{"message":{"type":"string"}},"required":["message"],"additionalProperties":false}))].into(),
        )
        .unwrap();
        let text = "name: x\ntargets: {all: true}\nsteps:\n  - {name: a, action: echo, with: {mesage: hi}}\n  - {name: b, action: ecko}\n  - {name: c, action: echo, with: {message: \"{{node.nme}}\"}}\n";
        let e: Vec<String> =
            parse_plan(text, Format::Yaml, Some(&cat)).unwrap_err().0.iter().map(|e| e.to_string()).collect();
        assert!(e.contains(&"steps[0] \"a\".with.mesage: unknown param".to_string()), "{e:#?}");
        assert!(e.contains(&"steps[0] \"a\".with.message: required param missing".to_string()), "{e:#?}");
        assert!(
            e.contains(&"steps[1] \"b\".action: unknown action \"ecko\" (did you mean \"echo\"?)".to_string()),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|x| x.starts_with("steps[2] \"c\".with.message: unknown reference \"{{node.nme}}\"")),
            "{e:#?}"
        );
    }

    #[test]
    fn json_and_yaml_are_the_same_plan() {
        let y = parse_plan("name: x\ntargets: {nodes: [a, b]}\nrollout: {strategy: Rolling, batch: [1, \"50%\"]}\nsteps: [{name: s, action: echo, timeout: 1h30m}]\n", Format::Yaml, None).unwrap();
        let j = parse_plan(r#"{"name":"x","targets":{"nodes":["a","b"]},"rollout":{"strategy":"rolling","batch":[1,"50%"]},"steps":[{"name":"s","action":"echo","timeout":"1h30m"}]}"#, Format::Auto, None).unwrap();
        assert_eq!(y, j);
        // The typed plan serializes back into a plan that parses to itself.
        let again = check_plan(&serde_json::to_value(&y).unwrap(), None).unwrap();
        assert_eq!(again, y);
    }
}
