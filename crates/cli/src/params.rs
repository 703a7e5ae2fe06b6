//! `key=value` params, as `drover exec` and `drover run -t` take them.
//!
//! Values are parsed as JSON when the param takes something other than a string (numbers,
//! `true`/`false`, `["a","b"]`, `{"K":"V"}`); otherwise they are strings. `key=@FILE` reads
//! the value from FILE. A dotted key sets a map entry: `env.FOO=bar`. Without a schema (an
//! empty one), a value is JSON when it parses, else a string.

use serde_json::{Map, Value};

/// The subschema at a dotted key path (`env.FOO` -> properties.env.additionalProperties).
fn subschema<'a>(schema: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut s = schema;
    for key in path {
        s = match s.get("properties").and_then(|p| p.get(*key)) {
            Some(p) => p,
            None => s.get("additionalProperties").filter(|a| a.is_object())?,
        };
    }
    Some(s)
}

fn types_of(s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match s.get("type") {
        Some(Value::String(t)) => out.push(t.clone()),
        Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = s.get(key).and_then(Value::as_array) {
            for b in branches {
                out.extend(types_of(b));
            }
        }
    }
    out
}

/// Parse one value for the param at `path`, guided by its schema: a param that
/// only takes strings gets the raw text; one that also takes lists/maps gets
/// JSON when the text is a JSON list/map; anything else gets JSON when it parses.
pub fn parse_value(schema: &Value, path: &[&str], raw: &str) -> Value {
    let types = subschema(schema, path).map(types_of).unwrap_or_default();
    let json = serde_json::from_str::<Value>(raw).ok();
    let takes_string = types.iter().any(|t| t == "string");
    let only_string = takes_string && types.iter().all(|t| t == "string");
    match json {
        _ if only_string => Value::String(raw.to_string()),
        Some(v @ (Value::Array(_) | Value::Object(_))) => v,
        Some(v) if !takes_string => v,
        _ => Value::String(raw.to_string()),
    }
}

/// `key=value` args into a params object. Errors name the arg (no `error:` prefix).
pub fn parse_params(schema: &Value, args: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for arg in args {
        let Some((key, raw)) = arg.split_once('=') else {
            return Err(format!("param `{arg}`: expected KEY=VALUE"));
        };
        if key.is_empty() {
            return Err(format!("param `{arg}`: empty key"));
        }
        let text = match raw.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).map_err(|e| format!("param `{key}`: cannot read `{file}`: {e}"))?
            }
            None => raw.to_string(),
        };
        let path: Vec<&str> = key.split('.').collect();
        let value = parse_value(schema, &path, &text);
        // Build nested maps for dotted keys.
        let mut cur = &mut out;
        for (i, seg) in path.iter().enumerate() {
            if i + 1 == path.len() {
                cur.insert((*seg).to_string(), value.clone());
            } else {
                let entry = cur.entry((*seg).to_string()).or_insert_with(|| Value::Object(Map::new()));
                if !entry.is_object() {
                    *entry = Value::Object(Map::new());
                }
                let Value::Object(m) = entry else { unreachable!("just made an object") };
                cur = m;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"properties": {
            "message": {"type": "string"},
            "count": {"type": "integer"},
            "flag": {"type": "boolean"},
            "command": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]},
            "env": {"type": "object", "additionalProperties": {"type": "string"}}
        }})
    }

    fn parse(args: &[&str]) -> Value {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Value::Object(parse_params(&schema(), &args).unwrap())
    }

    #[test]
    fn values_follow_the_schema() {
        assert_eq!(
            parse(&["message=123", "count=5", "flag=true", "env.A=1", "env.B=x"]),
            json!({"message": "123", "count": 5, "flag": true, "env": {"A": "1", "B": "x"}})
        );
        assert_eq!(parse(&["command=[\"ls\",\"-l\"]"]), json!({"command": ["ls", "-l"]}));
        assert_eq!(parse(&["command=echo 5"]), json!({"command": "echo 5"}));
        assert_eq!(parse(&["command=5"]), json!({"command": "5"}));
        assert_eq!(parse(&["count=abc"]), json!({"count": "abc"}));
        assert_eq!(parse(&["unknown=[1]"]), json!({"unknown": [1]}));
        assert_eq!(parse(&["message=a=b"]), json!({"message": "a=b"}));
    }

    #[test]
    fn without_a_schema_json_when_it_parses() {
        let args: Vec<String> = ["n=5", "b=false", "s=hello world", "l=[1,2]", "q=\"5\""].map(String::from).to_vec();
        assert_eq!(
            Value::Object(parse_params(&json!({}), &args).unwrap()),
            json!({"n": 5, "b": false, "s": "hello world", "l": [1, 2], "q": "5"})
        );
        assert_eq!(parse_params(&json!({}), &["nokey".into()]).unwrap_err(), "param `nokey`: expected KEY=VALUE");
        assert_eq!(parse_params(&json!({}), &["=1".into()]).unwrap_err(), "param `=1`: empty key");
    }
}
