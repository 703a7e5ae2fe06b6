//! `{{node.id}}`, `{{node.labels.KEY}}` and `{{job.id}}` references in step params.

use serde_json::Value;
use std::collections::BTreeMap;

/// One reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    NodeId,
    JobId,
    NodeLabel(String),
}

/// What a template is expanded with.
pub struct TemplateContext<'a> {
    pub job_id: &'a str,
    pub node_id: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// A template fault, with the JSON path of the string inside the params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// `with.path.to[0].field`-style path relative to the params (empty = the params root).
    pub path: String,
    pub message: String,
}

const HELP: &str = "use {{node.id}}, {{node.labels.KEY}} or {{job.id}}";

/// Parse every `{{...}}` in `s`. Text outside braces is literal.
pub fn references(s: &str) -> Result<Vec<Reference>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed \"{{{{\" in \"{s}\""));
        };
        let inner = after[..end].trim();
        out.push(parse_ref(inner).ok_or_else(|| format!("unknown reference \"{{{{{inner}}}}}\"; {HELP}"))?);
        rest = &after[end + 2..];
    }
    Ok(out)
}

fn parse_ref(inner: &str) -> Option<Reference> {
    match inner {
        "node.id" => Some(Reference::NodeId),
        "job.id" => Some(Reference::JobId),
        _ => {
            let key = inner.strip_prefix("node.labels.")?;
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '{' || c == '}') {
                return None;
            }
            Some(Reference::NodeLabel(key.to_string()))
        }
    }
}

/// Every string inside `v` with its path.
pub fn strings<'v>(v: &'v Value, path: String, out: &mut Vec<(String, &'v str)>) {
    match v {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                strings(it, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(m) => {
            for (k, it) in m {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                strings(it, p, out);
            }
        }
        _ => {}
    }
}

/// Check the syntax of every reference in `params` (no node needed).
pub fn check(params: &Value) -> Vec<TemplateError> {
    let mut found = Vec::new();
    strings(params, String::new(), &mut found);
    found
        .into_iter()
        .filter_map(|(path, s)| references(s).err().map(|message| TemplateError { path, message }))
        .collect()
}

/// Label keys that `params` refers to, with the path of the first use of each.
pub fn label_keys(params: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    strings(params, String::new(), &mut found);
    let mut keys: Vec<(String, String)> = Vec::new();
    for (path, s) in found {
        for r in references(s).unwrap_or_default() {
            if let Reference::NodeLabel(k) = r
                && !keys.iter().any(|(kk, _)| *kk == k)
            {
                keys.push((k, path.clone()));
            }
        }
    }
    keys
}

/// Expand every reference in `params` for one node. A label the node lacks is an error,
/// never an empty string.
pub fn expand(params: &Value, cx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    expand_at(params, cx, String::new())
}

fn expand_at(v: &Value, cx: &TemplateContext<'_>, path: String) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) => Value::String(expand_str(s, cx).map_err(|message| TemplateError { path, message })?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, it)| expand_at(it, cx, format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, it) in m {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                out.insert(k.clone(), expand_at(it, cx, p)?);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

fn expand_str(s: &str, cx: &TemplateContext<'_>) -> Result<String, String> {
    if !s.contains("{{") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("unclosed \"{{{{\" in \"{s}\""))?;
        let inner = after[..end].trim();
        match parse_ref(inner) {
            Some(Reference::NodeId) => out.push_str(cx.node_id),
            Some(Reference::JobId) => out.push_str(cx.job_id),
            Some(Reference::NodeLabel(k)) => match cx.labels.get(&k) {
                Some(v) => out.push_str(v),
                None => return Err(format!("node \"{}\" has no label \"{k}\"", cx.node_id)),
            },
            None => return Err(format!("unknown reference \"{{{{{inner}}}}}\"; {HELP}")),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_per_node() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let cx = TemplateContext { job_id: "j1", node_id: "web-1", labels: &labels };
        let v = json!({"path": "/tmp/{{job.id}}/{{ node.id }}-{{node.labels.zone}}", "n": 3, "l": ["{{node.id}}"]});
        assert_eq!(expand(&v, &cx).unwrap(), json!({"path": "/tmp/j1/web-1-a", "n": 3, "l": ["web-1"]}));
    }

    #[test]
    fn unknown_references_are_errors() {
        let errs = check(&json!({"a": {"b": "x {{node.name}}"}}));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "a.b");
        assert!(errs[0].message.contains("unknown reference \"{{node.name}}\""), "{}", errs[0].message);
        assert!(check(&json!({"a": "{{node.id"})).len() == 1);
        assert!(check(&json!({"a": "{{node.labels.}}"})).len() == 1);
    }

    #[test]
    fn missing_label_is_an_error_not_empty() {
        let labels = BTreeMap::new();
        let cx = TemplateContext { job_id: "j", node_id: "n1", labels: &labels };
        let e = expand(&json!({"x": ["{{node.labels.zone}}"]}), &cx).unwrap_err();
        assert_eq!(e.path, "x[0]");
        assert_eq!(e.message, "node \"n1\" has no label \"zone\"");
    }
}
