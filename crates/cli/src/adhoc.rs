//! Ad hoc one-step plans: `drover run -t SELECTOR ACTION key=value...`.

use serde_json::{Map, Value, json};

/// What an ad hoc run asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdHoc {
    /// A label selector, or `all`.
    pub selector: Option<String>,
    /// Node ids.
    pub nodes: Vec<String>,
    pub action: String,
    pub params: Map<String, Value>,
    pub name: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub batch: Option<String>,
    pub max_failures: Option<String>,
}

/// A number when the text is an integer, else the text (`5` -> 5, `"20%"` -> "20%").
fn count_or_text(s: &str) -> Value {
    match s.trim().parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(s.trim()),
    }
}

impl AdHoc {
    /// The plan document (JSON), checked locally for everything but the action and its params
    /// (the controller checks those against what the targeted nodes offer).
    pub fn plan(&self) -> Result<Value, String> {
        let mut targets = Map::new();
        match self.selector.as_deref().map(str::trim) {
            Some("all") => {
                targets.insert("all".into(), json!(true));
            }
            Some(sel) => {
                drover_core::selector::Selector::parse(sel).map_err(|e| format!("-t {sel}: {e}"))?;
                targets.insert("selector".into(), json!(sel));
            }
            None => {}
        }
        if !self.nodes.is_empty() {
            targets.insert("nodes".into(), json!(self.nodes));
        }
        if targets.is_empty() {
            return Err("an ad hoc run needs targets: -t SELECTOR (or -t all) and/or --node ID".into());
        }
        let mut step = Map::new();
        step.insert("name".into(), json!(self.action));
        step.insert("action".into(), json!(self.action));
        if !self.params.is_empty() {
            step.insert("with".into(), Value::Object(self.params.clone()));
        }
        if let Some(t) = &self.timeout {
            step.insert("timeout".into(), json!(t));
        }
        if let Some(r) = self.retries {
            step.insert("retries".into(), json!(r));
        }
        let mut rollout = Map::new();
        if let Some(b) = &self.batch {
            rollout.insert("strategy".into(), json!("rolling"));
            rollout.insert("batch".into(), count_or_text(b));
        }
        if let Some(m) = &self.max_failures {
            rollout.insert("max_failures".into(), count_or_text(m));
        }
        let mut plan = Map::new();
        plan.insert("name".into(), json!(self.name.clone().unwrap_or_else(|| format!("adhoc-{}", self.action))));
        plan.insert("targets".into(), Value::Object(targets));
        if !rollout.is_empty() {
            plan.insert("rollout".into(), Value::Object(rollout));
        }
        plan.insert("steps".into(), json!([Value::Object(step)]));
        let plan = Value::Object(plan);
        drover_core::check_plan(&plan, None).map_err(|e| {
            // The paths name plan fields; say which flag set them.
            let lines: Vec<String> =
                e.0.iter()
                    .map(|pe| {
                        let flag = if pe.path.contains("timeout") {
                            "--timeout: "
                        } else if pe.path.contains("retries") {
                            "--retries: "
                        } else if pe.path.contains("batch") {
                            "--batch: "
                        } else if pe.path.contains("max_failures") {
                            "--max-failures: "
                        } else if pe.path.contains("name") {
                            "--name/ACTION: "
                        } else {
                            ""
                        };
                        format!("{flag}{pe}")
                    })
                    .collect();
            lines.join("\n")
        })?;
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adhoc() -> AdHoc {
        let mut params = Map::new();
        params.insert("command".into(), json!("uptime"));
        AdHoc { selector: Some("role=web".into()), action: "shell".into(), params, ..AdHoc::default() }
    }

    #[test]
    fn one_step_plan() {
        assert_eq!(
            adhoc().plan().unwrap(),
            json!({"name": "adhoc-shell", "targets": {"selector": "role=web"},
                   "steps": [{"name": "shell", "action": "shell", "with": {"command": "uptime"}}]})
        );
        let a = AdHoc {
            selector: Some("all".into()),
            nodes: vec!["db-1".into()],
            name: Some("uptime".into()),
            timeout: Some("30s".into()),
            retries: Some(2),
            batch: Some("20%".into()),
            max_failures: Some("-1".into()),
            ..adhoc()
        };
        assert_eq!(
            a.plan().unwrap(),
            json!({"name": "uptime", "targets": {"all": true, "nodes": ["db-1"]},
                   "rollout": {"strategy": "rolling", "batch": "20%", "max_failures": -1},
                   "steps": [{"name": "shell", "action": "shell", "with": {"command": "uptime"}, "timeout": "30s", "retries": 2}]})
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let e = AdHoc { timeout: Some("5 parsecs".into()), ..adhoc() }.plan().unwrap_err();
        assert!(e.starts_with("--timeout: "), "{e}");
        let e = AdHoc { batch: Some("0".into()), ..adhoc() }.plan().unwrap_err();
        assert!(e.starts_with("--batch: "), "{e}");
        let e = AdHoc { selector: Some("role in (".into()), ..adhoc() }.plan().unwrap_err();
        assert!(e.starts_with("-t role in (: at column"), "{e}");
        let e = AdHoc { selector: None, ..adhoc() }.plan().unwrap_err();
        assert!(e.contains("needs targets"), "{e}");
    }
}
