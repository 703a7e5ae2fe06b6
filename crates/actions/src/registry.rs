//! The set of actions an agent offers, with compiled params validators.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Action, ParamError, redact, schema};

/// What `drover actions list|describe -o json` and the node facts show about an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    pub name: String,
    pub description: String,
    pub params_schema: Value,
    /// Can preview its effect in a dry run.
    pub dry_run: bool,
    /// Has a real rollback.
    pub undo: bool,
}

struct Entry {
    action: Arc<dyn Action>,
    schema: Value,
    validator: Option<jsonschema::Validator>,
    schema_error: Option<String>,
    /// Names of the params marked secret in the schema (found once, here).
    secret: Vec<String>,
}

/// The actions on offer, by name.
pub struct Registry {
    entries: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("actions", &self.entries.keys().collect::<Vec<_>>()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry { entries: BTreeMap::new() }
    }

    /// Every built-in action.
    pub fn builtin() -> Self {
        let mut r = Registry::new();
        for a in crate::actions::builtin() {
            r.register(a);
        }
        r
    }

    /// Add (or replace) an action.
    pub fn register(&mut self, action: Arc<dyn Action>) {
        let schema = action.params_schema();
        let (validator, schema_error) = match jsonschema::validator_for(&schema) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(e) = &schema_error {
            tracing::error!(action = action.name(), error = %e, "invalid params schema");
        }
        let secret = redact::secret_params(&schema);
        self.entries.insert(action.name().to_string(), Entry { action, schema, validator, schema_error, secret });
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Action>> {
        self.entries.get(name).map(|e| e.action.clone())
    }

    /// An action's params schema, made once when the registry was built (making it is
    /// not free: it is generated from the params type).
    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.entries.get(name).map(|e| &e.schema)
    }

    /// All actions, by name.
    pub fn list(&self) -> Vec<ActionInfo> {
        self.entries
            .values()
            .map(|e| ActionInfo {
                name: e.action.name().to_string(),
                description: e.action.description().to_string(),
                params_schema: e.schema.clone(),
                dry_run: e.action.dry_run(),
                undo: e.action.undo(),
            })
            .collect()
    }

    /// One action's info.
    pub fn info(&self, name: &str) -> Option<ActionInfo> {
        self.list().into_iter().find(|i| i.name == name)
    }

    /// Action name -> params JSON Schema (what a node advertises).
    pub fn catalog(&self) -> BTreeMap<String, Value> {
        self.entries.iter().map(|(k, e)| (k.clone(), e.schema.clone())).collect()
    }

    /// Validate params against the action's schema, then its own checks.
    /// An unknown action is reported as a param error on `""`.
    pub fn validate_params(&self, action: &str, params: &Value) -> Result<(), Vec<ParamError>> {
        let Some(e) = self.entries.get(action) else {
            return Err(vec![ParamError::new("", format!("unknown action `{action}`"))]);
        };
        let Some(validator) = &e.validator else {
            return Err(vec![ParamError::new(
                "",
                format!(
                    "action `{action}` has an invalid params schema: {}",
                    e.schema_error.as_deref().unwrap_or("unknown error")
                ),
            )]);
        };
        let errs = schema::validate(validator, &e.schema, params);
        if !errs.is_empty() {
            return Err(errs);
        }
        e.action.check(params)
    }

    /// `params` with the action's secret params replaced by `***` (for results and logs).
    pub fn redact_params(&self, action: &str, params: &Value) -> Value {
        match self.entries.get(action) {
            Some(e) => redact::redact_params(&e.secret, params),
            None => params.clone(),
        }
    }

    /// Names of the action's secret params.
    pub fn secret_params(&self, action: &str) -> &[String] {
        self.entries.get(action).map(|e| e.secret.as_slice()).unwrap_or_default()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::builtin()
    }
}
