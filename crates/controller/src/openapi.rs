//! The OpenAPI 3.1 document served at `/v1/openapi.json`. Schemas are generated from the
//! same Rust types the API serializes (schemars), so they cannot drift.

use drover_core::api::*;
use drover_core::engine::Progress;
use drover_core::wire::{ActionOffer, NodeRecord};
use serde_json::{Value, json};

fn schemas() -> Value {
    let mut gen_ = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let mut out = serde_json::Map::new();
    macro_rules! add {
        ($($t:ty => $name:literal),* $(,)?) => {
            $( out.insert($name.to_string(), serde_json::to_value(gen_.subschema_for::<$t>()).unwrap_or(Value::Null)); )*
        };
    }
    add!(
        JobView => "JobViewRef", JobList => "JobListRef", PlanPreview => "PlanPreviewRef", NodeDetail => "NodeDetailRef",
        NodeList => "NodeListRef", ApiError => "ApiErrorRef", OperatorReply => "OperatorReplyRef", Health => "HealthRef",
        Progress => "ProgressRef", NodeRecord => "NodeRecordRef", ActionOffer => "ActionOfferRef", drover_core::Plan => "PlanRef",
    );
    for (k, v) in gen_.take_definitions(true) {
        out.insert(k, v);
    }
    // The *Ref entries above are `$ref`s into the definitions; keep only the definitions.
    out.retain(|k, _| !k.ends_with("Ref"));
    Value::Object(out)
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": schema } } })
}

fn err(desc: &str) -> Value {
    ok(desc, r("ApiError"))
}

fn id_param(name: &str, desc: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": desc, "schema": { "type": "string" } })
}

/// The whole document.
pub fn document() -> Value {
    let job_id = id_param("id", "Job id");
    let op = |summary: &str| {
        json!({ "post": {
            "summary": summary, "parameters": [job_id.clone()],
            "responses": { "200": ok("Accepted", r("OperatorReply")), "404": err("No such job"), "409": err("Not applicable now") }
        }})
    };
    json!({
        "openapi": "3.1.0",
        "info": { "title": "drover", "version": env!("CARGO_PKG_VERSION"), "description": "drover controller API: jobs, nodes, actions, progress." },
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a plan (YAML or JSON body); dry_run=true previews targets and batches",
                    "parameters": [{ "name": "dry_run", "in": "query", "schema": { "type": "boolean" } }],
                    "requestBody": { "required": true, "content": {
                        "application/yaml": { "schema": r("Plan") }, "application/json": { "schema": r("Plan") } } },
                    "responses": {
                        "201": ok("Job accepted", r("JobView")), "200": ok("Dry run", r("PlanPreview")),
                        "400": err("Invalid plan: details name every fault"), "429": err("Job queue full"), "503": err("Not ready")
                    }
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": [
                        { "name": "status", "in": "query", "schema": { "type": "string" } },
                        { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
                        { "name": "after", "in": "query", "description": "`next` of the previous page", "schema": { "type": "string" } }
                    ],
                    "responses": { "200": ok("Jobs", r("JobList")), "400": err("Bad query") }
                }
            },
            "/v1/jobs/{id}": { "get": { "summary": "A job: status, counts, per-node outcome and steps", "parameters": [job_id.clone()],
                "responses": { "200": ok("The job", r("JobView")), "404": err("No such job") } } },
            "/v1/jobs/{id}/nodes/{node}": { "get": { "summary": "A node's step results with output", "parameters": [job_id.clone(), id_param("node", "Node id")],
                "responses": { "200": ok("The node's steps", r("NodeDetail")), "404": err("No such job or node") } } },
            "/v1/jobs/{id}/events": { "get": {
                "summary": "Progress as Server-Sent Events (id = seq, event = progress, data = Progress JSON; a final `end` event)",
                "parameters": [job_id.clone(), { "name": "from", "in": "query", "description": "First seq to send (or Last-Event-ID)", "schema": { "type": "integer" } }],
                "responses": { "200": { "description": "text/event-stream of Progress", "content": { "text/event-stream": { "schema": r("Progress") } } }, "404": err("No such job") } } },
            "/v1/jobs/{id}/cancel": op("Cancel: stop new work, cancel running steps"),
            "/v1/jobs/{id}/pause": op("Pause: start no new node"),
            "/v1/jobs/{id}/resume": op("Resume after pause or a budget pause"),
            "/v1/jobs/{id}/approve": op("Approve a pause_after_batches gate"),
            "/v1/jobs/{id}/rollback": op("Stop and roll back every node that completed a step"),
            "/v1/nodes": { "get": { "summary": "Registered nodes", "responses": { "200": ok("Nodes", r("NodeList")) } } },
            "/v1/nodes/{id}": { "get": { "summary": "A node with its registration (actions and schemas)", "parameters": [id_param("id", "Node id")],
                "responses": { "200": ok("The node", json!({ "type": "object", "properties": { "node": r("NodeView"), "record": r("NodeRecord") } })), "404": err("No such node") } } },
            "/v1/actions": { "get": { "summary": "Actions offered by the fleet", "responses": { "200": ok("Actions",
                json!({ "type": "object", "properties": { "actions": { "type": "array", "items": r("ActionOffer") } } })) } } },
            "/v1/health": { "get": { "summary": "Liveness", "responses": { "200": ok("Alive", r("Health")) } } },
            "/v1/ready": { "get": { "summary": "Readiness (connected to NATS, topology ready)", "responses": { "200": ok("Ready", r("Health")), "503": ok("Not ready", r("Health")) } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "OpenMetrics text" } } } }
        },
        "components": { "schemas": schemas() }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_ref_resolves() {
        let doc = super::document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
        assert!(schemas.contains_key("JobView"));
    }
}
