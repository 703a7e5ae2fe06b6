//! Params schemas: generation from typed structs, validation with errors that
//! name the param, param docs for `drover actions describe` and docs/actions.md,
//! and the typed-action adapter behind every built-in action.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::{Action, ActionError, BoxFuture, ExecContext, ExecResult, ParamError};

/// JSON Schema (2020-12, subschemas inlined, no `null` for optional params) of `T`.
pub(crate) fn schema_for<T: JsonSchema>(title: &str) -> Value {
    let generator: SchemaGenerator =
        SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    let mut v = generator.into_root_schema_for::<T>().to_value();
    strip_null(&mut v);
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), Value::String(title.to_string()));
    }
    v
}

/// Optional params are "absent", not "null": remove `null` from `type` lists
/// and `{"type":"null"}` branches from `anyOf`, recursively.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if let Some(Value::Array(types)) = o.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types.remove(0);
                    o.insert("type".into(), t);
                }
            }
            if let Some(Value::Array(branches)) = o.get_mut("anyOf") {
                branches.retain(|b| b.get("type").and_then(Value::as_str) != Some("null"));
                if branches.len() == 1
                    && let Some(Value::Object(only)) = branches.pop()
                {
                    o.remove("anyOf");
                    for (k, val) in only {
                        o.entry(k).or_insert(val);
                    }
                }
            }
            if o.get("default") == Some(&Value::Null) {
                o.remove("default");
            }
            o.values_mut().for_each(strip_null);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// Deserialize params into `P`, errors naming the param.
pub(crate) fn parse<P: DeserializeOwned>(params: Value) -> Result<P, Vec<ParamError>> {
    serde_path_to_error::deserialize::<_, P>(params).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        vec![ParamError::new(path, e.inner().to_string())]
    })
}

// ---------------------------------------------------------------- validation

/// Map jsonschema errors to param errors.
pub(crate) fn validate(validator: &jsonschema::Validator, schema: &Value, params: &Value) -> Vec<ParamError> {
    use jsonschema::error::ValidationErrorKind as K;
    let mut out: Vec<ParamError> = Vec::new();
    if !params.is_object() {
        out.push(ParamError::new("", format!("expected an object of params, got {}", show(params))));
        return out;
    }
    // Most params are valid: a yes/no check is several times cheaper than collecting
    // errors (the agent checks every command it runs).
    if validator.is_valid(params) {
        return out;
    }
    for e in validator.iter_errors(params) {
        let base = param_path(e.instance_path().as_str());
        let join = |name: &str| {
            if base.is_empty() { name.to_string() } else { format!("{base}.{name}") }
        };
        let at_schema = || {
            let sp = e.schema_path().as_str().to_string();
            schema.pointer(&sp).cloned().unwrap_or(Value::Null)
        };
        match e.kind() {
            K::AdditionalProperties { unexpected } => {
                for u in unexpected {
                    let msg = if base.is_empty() {
                        format!("unknown param (known params: {})", known_params(schema))
                    } else {
                        "unknown key".to_string()
                    };
                    out.push(ParamError::new(join(u), msg));
                }
            }
            K::Required { property } => {
                let name = property.as_str().map(str::to_string).unwrap_or_else(|| property.to_string());
                out.push(ParamError::new(join(&name), "required param missing"));
            }
            K::Type { .. } => {
                out.push(ParamError::new(
                    base,
                    format!("expected {}, got {}", type_words(&at_schema()), show(e.instance())),
                ));
            }
            K::AnyOf { .. } | K::OneOfNotValid { .. } => {
                let alts = at_schema();
                let branches = alts.as_array().cloned().unwrap_or_default();
                let expected = match const_values(&json!({ "anyOf": branches })) {
                    Some(values) => format!("one of {}", values.iter().map(show).collect::<Vec<_>>().join(", ")),
                    None => branches.iter().map(type_label).collect::<Vec<_>>().join(" or "),
                };
                out.push(ParamError::new(base, format!("expected {expected}, got {}", show(e.instance()))));
            }
            K::Enum { options } => {
                let opts: Vec<String> = options.as_array().map(|a| a.iter().map(show).collect()).unwrap_or_default();
                out.push(ParamError::new(
                    base,
                    format!("expected one of {}, got {}", opts.join(", "), show(e.instance())),
                ));
            }
            K::Pattern { pattern } => {
                let sp = e.schema_path().as_str().trim_end_matches("/pattern").to_string();
                let examples = schema
                    .pointer(&sp)
                    .and_then(|s| s.get("examples"))
                    .and_then(Value::as_array)
                    .map(|a| format!(" (e.g. {})", a.iter().map(show).collect::<Vec<_>>().join(", ")))
                    .unwrap_or_default();
                out.push(ParamError::new(
                    base,
                    format!("{} does not match the pattern `{pattern}`{examples}", show(e.instance())),
                ));
            }
            K::Minimum { limit } => {
                out.push(ParamError::new(base, format!("must be at least {limit}, got {}", show(e.instance()))))
            }
            K::Maximum { limit } => {
                out.push(ParamError::new(base, format!("must be at most {limit}, got {}", show(e.instance()))))
            }
            _ => out.push(ParamError::new(base, e.to_string())),
        }
    }
    out.dedup();
    out
}

/// `/env/FOO` -> `env.FOO`, `/command/1` -> `command[1]`.
fn param_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !out.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
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

fn known_params(schema: &Value) -> String {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect::<Vec<_>>().join(", "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_string())
}

/// A value for an error message: JSON, shortened.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}...", s.chars().take(57).collect::<String>()) } else { s }
}

fn type_words(t: &Value) -> String {
    match t {
        Value::String(s) => article(s),
        Value::Array(a) => a.iter().filter_map(Value::as_str).map(article).collect::<Vec<_>>().join(" or "),
        _ => "another type".into(),
    }
}

fn article(t: &str) -> String {
    match t {
        "object" => "an object".into(),
        "array" => "a list".into(),
        "integer" => "an integer".into(),
        other => other.into(),
    }
}

/// Human type of a (sub)schema: `string`, `integer`, `duration`, `list of strings`,
/// `map of string to string`, `"a" | "b"`, `string or list of strings`.
pub(crate) fn type_label(s: &Value) -> String {
    if let Some(t) = s.get("x-drover-type").and_then(Value::as_str) {
        return t.to_string();
    }
    if let Some(values) = const_values(s) {
        return values.iter().map(show).collect::<Vec<_>>().join(" | ");
    }
    if let Some(a) = s.get("anyOf").or_else(|| s.get("oneOf")).and_then(Value::as_array) {
        return a.iter().map(type_label).collect::<Vec<_>>().join(" or ");
    }
    match s.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = s.get("items").map(type_label).unwrap_or_else(|| "any".into());
            format!("list of {}", plural(&item))
        }
        Some(Value::String(t)) if t == "object" => match s.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of string to {}", type_label(v)),
            _ => "object".into(),
        },
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        _ => "any".into(),
    }
}

/// The allowed values when a schema is a closed set (`const`, `enum`, or
/// `oneOf`/`anyOf` of those, as schemars writes documented enums).
fn const_values(s: &Value) -> Option<Vec<Value>> {
    if let Some(c) = s.get("const") {
        return Some(vec![c.clone()]);
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(e.clone());
    }
    let branches = s.get("oneOf").or_else(|| s.get("anyOf"))?.as_array()?;
    let mut out = Vec::new();
    for b in branches {
        out.extend(const_values(b)?);
    }
    Some(out)
}

fn plural(t: &str) -> String {
    match t {
        "string" | "integer" | "boolean" | "number" | "duration" => format!("{t}s"),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- docs

/// One param of an action, for describe output and docs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParamDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    pub description: String,
    pub secret: bool,
}

/// The params of a params schema, in schema order (required first).
pub fn param_docs(schema: &Value) -> Vec<ParamDoc> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut docs: Vec<ParamDoc> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| ParamDoc {
                    name: name.clone(),
                    type_: type_label(s),
                    required: required.contains(&name.as_str()),
                    default: s.get("default").cloned(),
                    description: s.get("description").and_then(Value::as_str).unwrap_or("").to_string(),
                    secret: s.get(crate::SECRET_KEYWORD).and_then(Value::as_bool) == Some(true),
                })
                .collect()
        })
        .unwrap_or_default();
    docs.sort_by_key(|d| !d.required);
    docs
}

// ---------------------------------------------------------------- param types

/// A duration written the humantime way: `500ms`, `2s`, `1m 30s`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e} (examples: 500ms, 2s, 1m 30s)")))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "x-drover-type": "duration",
            "examples": ["500ms", "2s", "1m 30s"]
        })
    }
}

/// A Unix file mode written in octal: `"0644"`, `"755"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (3..=4).contains(&s.len()) && s.chars().all(|c| ('0'..='7').contains(&c));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "invalid mode `{s}`: expected 3 or 4 octal digits such as \"0644\""
            )));
        }
        u32::from_str_radix(&s, 8)
            .map(FileMode)
            .map_err(|e| serde::de::Error::custom(format!("invalid mode `{s}`: {e}")))
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FileMode".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "x-drover-type": "octal mode",
            "pattern": "^[0-7]{3,4}$",
            "examples": ["0644", "0755"]
        })
    }
}

// ---------------------------------------------------------------- typed adapter

/// What a built-in action implements: typed params, typed execute/rollback.
pub(crate) trait Typed: Send + Sync + 'static {
    type Params: DeserializeOwned + JsonSchema + Send + 'static;
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    const DRY_RUN: bool;
    const UNDO: bool;

    /// Semantic checks beyond the schema.
    fn check(_p: &Self::Params) -> Vec<ParamError> {
        Vec::new()
    }

    /// Paths these params touch (policy allowlist).
    fn paths(_p: &Self::Params) -> Vec<PathBuf> {
        Vec::new()
    }

    fn execute(
        &self,
        p: Self::Params,
        ctx: &ExecContext,
    ) -> impl Future<Output = Result<ExecResult, ActionError>> + Send;

    /// Default: nothing to undo.
    fn rollback(
        &self,
        _p: Self::Params,
        _metadata: Value,
        ctx: &ExecContext,
    ) -> impl Future<Output = Result<ExecResult, ActionError>> + Send {
        let dry = ctx.dry_run;
        async move {
            Ok(ExecResult::succeeded(false)
                .with_stdout(format!("{}: nothing to undo\n", Self::NAME))
                .with_metadata(json!({ "dry_run": dry })))
        }
    }
}

/// Adapter from [`Typed`] to [`Action`].
pub(crate) struct TypedAction<T>(pub T);

impl<T: Typed> Action for TypedAction<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn description(&self) -> &'static str {
        T::DESCRIPTION
    }
    fn params_schema(&self) -> Value {
        schema_for::<T::Params>(T::NAME)
    }
    fn dry_run(&self) -> bool {
        T::DRY_RUN
    }
    fn undo(&self) -> bool {
        T::UNDO
    }
    fn execute<'a>(&'a self, params: Value, ctx: &'a ExecContext) -> BoxFuture<'a, Result<ExecResult, ActionError>> {
        Box::pin(async move {
            let p = parse::<T::Params>(params).map_err(ActionError::InvalidParams)?;
            self.0.execute(p, ctx).await
        })
    }
    fn rollback<'a>(
        &'a self,
        params: Value,
        metadata: Value,
        ctx: &'a ExecContext,
    ) -> BoxFuture<'a, Result<ExecResult, ActionError>> {
        Box::pin(async move {
            let p = parse::<T::Params>(params).map_err(ActionError::InvalidParams)?;
            self.0.rollback(p, metadata, ctx).await
        })
    }
    fn check(&self, params: &Value) -> Result<(), Vec<ParamError>> {
        let p = parse::<T::Params>(params.clone())?;
        let errs = T::check(&p);
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
    fn paths(&self, params: &Value) -> Vec<PathBuf> {
        parse::<T::Params>(params.clone()).map(|p| T::paths(&p)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_like_params() {
        assert_eq!(param_path(""), "");
        assert_eq!(param_path("/mode"), "mode");
        assert_eq!(param_path("/env/FOO"), "env.FOO");
        assert_eq!(param_path("/command/1"), "command[1]");
        assert_eq!(param_path("/a~1b"), "a/b");
    }

    #[test]
    fn durations_and_modes() {
        let d: HumanDuration = serde_json::from_value(json!("1m 30s")).unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        assert!(serde_json::from_value::<HumanDuration>(json!("5x")).is_err());
        let m: FileMode = serde_json::from_value(json!("0644")).unwrap();
        assert_eq!(m.0, 0o644);
        assert_eq!(serde_json::to_value(FileMode(0o755)).unwrap(), json!("0755"));
        assert!(serde_json::from_value::<FileMode>(json!("0648")).is_err());
        assert!(serde_json::from_value::<FileMode>(json!("64")).is_err());
    }

    #[test]
    fn type_labels() {
        assert_eq!(type_label(&json!({"type": "string"})), "string");
        assert_eq!(type_label(&json!({"type": "array", "items": {"type": "string"}})), "list of strings");
        assert_eq!(
            type_label(&json!({"type": "object", "additionalProperties": {"type": "string"}})),
            "map of string to string"
        );
        assert_eq!(type_label(&json!({"enum": ["a", "b"]})), "\"a\" | \"b\"");
        assert_eq!(
            type_label(&json!({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})),
            "string or list of strings"
        );
    }

    #[test]
    fn strip_null_simplifies_optionals() {
        let mut v = json!({"properties": {
            "a": {"type": ["string", "null"]},
            "b": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}], "description": "x"},
            "c": {"type": "string", "default": null}
        }});
        strip_null(&mut v);
        assert_eq!(
            v,
            json!({"properties": {
                "a": {"type": "string"},
                "b": {"type": "integer", "minimum": 0, "description": "x"},
                "c": {"type": "string"}
            }})
        );
    }
}
