//! Secret params: top-level params marked `"x-drover-secret": true` in the
//! params schema. Their string values (for a map or list: every string inside)
//! are replaced by `***` in stdout, stderr, error, metadata and logs.

use serde_json::Value;

use crate::{ExecResult, REDACTED, SECRET_KEYWORD};

/// Names of the top-level params marked secret in `schema`.
pub fn secret_params(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .filter(|(_, s)| s.get(SECRET_KEYWORD).and_then(Value::as_bool) == Some(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn strings_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_in(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings_in(x, out)),
        _ => {}
    }
}

/// The secret values found in `params` under the secret param names `secret` (from
/// [`secret_params`]), longest first (so that a secret that contains another is replaced
/// whole).
pub fn secret_values(secret: &[String], params: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for name in secret {
        if let Some(v) = params.get(name) {
            strings_in(v, &mut out);
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `text` with every secret replaced by `***`.
pub fn redact_str(text: &str, secrets: &[String]) -> String {
    let mut s = text.to_string();
    for secret in secrets {
        if s.contains(secret.as_str()) {
            s = s.replace(secret.as_str(), REDACTED);
        }
    }
    s
}

fn redact_value(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => *s = redact_str(s, secrets),
        Value::Array(a) => a.iter_mut().for_each(|x| redact_value(x, secrets)),
        Value::Object(o) => o.values_mut().for_each(|x| redact_value(x, secrets)),
        _ => {}
    }
}

/// Redact a result in place.
pub fn redact_result(r: &mut ExecResult, secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    r.stdout = redact_str(&r.stdout, secrets);
    r.stderr = redact_str(&r.stderr, secrets);
    if let Some(e) = &r.error {
        r.error = Some(redact_str(e, secrets));
    }
    redact_value(&mut r.metadata, secrets);
}

/// `params` with every string inside a secret param (named in `secret`) replaced by `***`.
pub fn redact_params(secret: &[String], params: &Value) -> Value {
    let mut p = params.clone();
    for name in secret {
        if let Some(v) = p.get_mut(name) {
            mask(v);
        }
    }
    p
}

fn mask(v: &mut Value) {
    match v {
        Value::String(s) => *s = REDACTED.to_string(),
        Value::Array(a) => a.iter_mut().for_each(mask),
        Value::Object(o) => o.values_mut().for_each(mask),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"properties": {
            "token": {"type": "string", "x-drover-secret": true},
            "env": {"type": "object", "x-drover-secret": true},
            "name": {"type": "string"}
        }})
    }

    #[test]
    fn finds_and_masks_secrets() {
        let params = json!({"token": "s3cr3t", "env": {"A": "abc", "B": "s3cr3t-long"}, "name": "n"});
        let names = secret_params(&schema());
        assert_eq!(names, vec!["env", "token"]);
        let secrets = secret_values(&names, &params);
        assert_eq!(secrets, vec!["s3cr3t-long", "s3cr3t", "abc"]);
        assert_eq!(redact_str("x s3cr3t-long y s3cr3t abc", &secrets), "x *** y *** ***");
        assert_eq!(
            redact_params(&names, &params),
            json!({"token": "***", "env": {"A": "***", "B": "***"}, "name": "n"})
        );
        let mut r = ExecResult::failed("bad s3cr3t").with_stdout("s3cr3t").with_metadata(json!({"k": ["abc"]}));
        redact_result(&mut r, &secrets);
        assert_eq!(r.stdout, "***");
        assert_eq!(r.error.as_deref(), Some("bad ***"));
        assert_eq!(r.metadata, json!({"k": ["***"]}));
    }
}
