//! The actions a plan may use, given to the core as JSON Schemas of their params.

use serde_json::Value;
use std::collections::BTreeMap;

/// Action name -> compiled params schema.
pub struct Catalog {
    actions: BTreeMap<String, (Value, jsonschema::Validator)>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("actions", &self.names()).finish()
    }
}

/// A schema in the catalog that is not a valid JSON Schema.
#[derive(Debug, thiserror::Error)]
#[error("action \"{action}\": invalid params schema: {message}")]
pub struct CatalogError {
    pub action: String,
    pub message: String,
}

/// One param fault: the param's path inside `with` and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamFault {
    pub param: String,
    pub message: String,
}

impl Catalog {
    pub fn new(schemas: BTreeMap<String, Value>) -> Result<Catalog, CatalogError> {
        let mut actions = BTreeMap::new();
        for (name, schema) in schemas {
            let v = jsonschema::validator_for(&schema)
                .map_err(|e| CatalogError { action: name.clone(), message: e.to_string() })?;
            actions.insert(name, (schema, v));
        }
        Ok(Catalog { actions })
    }

    pub fn names(&self) -> Vec<&str> {
        self.actions.keys().map(String::as_str).collect()
    }

    pub fn contains(&self, action: &str) -> bool {
        self.actions.contains_key(action)
    }

    pub fn schema(&self, action: &str) -> Option<&Value> {
        self.actions.get(action).map(|(s, _)| s)
    }

    /// Check `params` against the action's schema. `None` when the action is unknown.
    pub fn check(&self, action: &str, params: &Value) -> Option<Vec<ParamFault>> {
        let (_, validator) = self.actions.get(action)?;
        Some(param_faults(validator, params))
    }
}

/// Validate and turn jsonschema's errors into faults naming the param.
pub fn param_faults(validator: &jsonschema::Validator, params: &Value) -> Vec<ParamFault> {
    use jsonschema::error::ValidationErrorKind as K;
    let mut out = Vec::new();
    for e in validator.iter_errors(params) {
        let base = pointer_to_path(&e.instance_path().to_string());
        let join = |k: &str| if base.is_empty() { k.to_string() } else { format!("{base}.{k}") };
        match e.kind() {
            K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
                for u in unexpected {
                    out.push(ParamFault { param: join(u), message: "unknown param".into() });
                }
            }
            K::Required { property } => {
                let p = property.as_str().map(str::to_string).unwrap_or_else(|| property.to_string());
                out.push(ParamFault { param: join(&p), message: "required param missing".into() });
            }
            _ => {
                let got = e.instance().clone().into_owned();
                let mut msg = e.to_string();
                // jsonschema says `5 is not of type "string"`; name what was given plainly.
                if let K::Type { .. } = e.kind() {
                    msg = format!("{msg} (got {})", crate::plan::kind(&got));
                }
                out.push(ParamFault { param: if base.is_empty() { "(params)".into() } else { base }, message: msg });
            }
        }
    }
    out
}

/// `/a/0/b` -> `a[0].b`.
fn pointer_to_path(ptr: &str) -> String {
    let mut out = String::new();
    for seg in ptr.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cat() -> Catalog {
        Catalog::new(
            [(
                "file.write".to_string(),
                json!({
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "mode": {"type": "string"}, "opts": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false}},
                    "required": ["path"],
                    "additionalProperties": false
                }),
            )]
            .into(),
        )
        .unwrap()
    }

    #[test]
    fn names_the_param() {
        let c = cat();
        let f = c.check("file.write", &json!({"pth": "/x"})).unwrap();
        assert!(f.contains(&ParamFault { param: "pth".into(), message: "unknown param".into() }), "{f:?}");
        assert!(f.contains(&ParamFault { param: "path".into(), message: "required param missing".into() }), "{f:?}");
        let f = c.check("file.write", &json!({"path": 5, "opts": {"n": "x", "m": 1}})).unwrap();
        assert!(f.iter().any(|x| x.param == "path" && x.message.contains("got a number")), "{f:?}");
        assert!(f.iter().any(|x| x.param == "opts.n"), "{f:?}");
        assert!(f.iter().any(|x| x.param == "opts.m" && x.message == "unknown param"), "{f:?}");
        assert!(c.check("nope", &json!({})).is_none());
        assert!(c.check("file.write", &json!({"path": "/x"})).unwrap().is_empty());
    }
}
