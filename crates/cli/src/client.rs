//! The REST client: one method per endpoint, errors mapped to messages and exit codes.

use crate::Code;
use drover_core::api::{
    ApiError, Health, JobList, JobView, NodeDetail, NodeList, NodeView, OperatorReply, PlanPreview,
};
use drover_core::engine::JobStatus;
use drover_core::wire::{ActionOffer, NodeRecord};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

const HINT: &str = "is `drover dev` or `drover controller` running? set --api or DROVER_API";

/// Everything that can stop a command, with the exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection to the controller (exit 3).
    #[error("cannot reach the drover controller at {url}: {cause} ({HINT})")]
    Unreachable { url: String, cause: String },
    /// The controller answered with an error status.
    #[error("{}", render_api(*.status, .context.as_deref(), .body))]
    Api { status: u16, context: Option<String>, body: ApiError },
    /// Bad input: a file, a flag, a selector (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// Anything else drover could not do (exit 3).
    #[error("{0}")]
    Other(String),
}

fn render_api(status: u16, context: Option<&str>, body: &ApiError) -> String {
    let mut s = match context {
        Some(c) => format!("{c}: {}", body.error),
        None => body.error.clone(),
    };
    match status {
        429 => {
            s = format!(
                "the controller's job queue is full: {s} (try again when running jobs finish; `drover jobs list --status pending` shows the queue)"
            )
        }
        503 => s = format!("the controller is not ready: {s} (try again in a moment)"),
        400 | 404 | 409 => {}
        _ => s = format!("the controller answered {status}: {s}"),
    }
    for d in &body.details {
        s.push_str("\n  - ");
        s.push_str(d);
    }
    s
}

impl CliError {
    /// The exit code: 400/404 and bad input 2, 409 1, everything else 3.
    pub fn code(&self) -> Code {
        match self {
            CliError::Api { status: 400 | 404 | 422, .. } | CliError::Invalid(_) => Code::Invalid,
            CliError::Api { status: 409, .. } => Code::Failed,
            _ => Code::Error,
        }
    }

    /// The HTTP status, for errors the controller answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CliError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Put `context` in front of the controller's message.
    pub fn context(self, context: impl Into<String>) -> CliError {
        match self {
            CliError::Api { status, body, .. } => CliError::Api { status, context: Some(context.into()), body },
            other => other,
        }
    }
}

/// An operator command on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Operator {
    Cancel,
    Pause,
    Resume,
    Approve,
    Rollback,
}

impl Operator {
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Cancel => "cancel",
            Operator::Pause => "pause",
            Operator::Resume => "resume",
            Operator::Approve => "approve",
            Operator::Rollback => "rollback",
        }
    }
}

/// `GET /v1/nodes/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: NodeView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<NodeRecord>,
}

/// One action of `GET /v1/actions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    #[serde(flatten)]
    pub offer: ActionOffer,
    /// How many nodes offer it.
    #[serde(default)]
    pub offered_by: usize,
}

/// `GET /v1/actions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionList {
    pub actions: Vec<ActionInfo>,
}

/// A plan's text and how to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanText {
    /// The file name, `-` for stdin, or `ad hoc`.
    pub source: String,
    pub text: String,
    pub json: bool,
}

impl PlanText {
    /// `.json` is JSON, `.yaml`/`.yml` YAML; anything else (stdin too) is JSON when it starts with `{`.
    pub fn new(source: &str, text: String) -> PlanText {
        let lower = source.to_ascii_lowercase();
        let json = if lower.ends_with(".json") {
            true
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            false
        } else {
            text.trim_start().starts_with('{')
        };
        PlanText { source: source.to_string(), text, json }
    }

    /// Read a plan file, or stdin for `-`.
    pub fn read(path: &str) -> Result<PlanText, CliError> {
        let text = if path == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| CliError::Invalid(format!("cannot read the plan from stdin: {e}")))?;
            s
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Invalid(format!("cannot read plan file {path}: {e}")))?
        };
        if text.trim().is_empty() {
            return Err(CliError::Invalid(format!("{path}: the plan is empty")));
        }
        Ok(PlanText::new(if path == "-" { "stdin" } else { path }, text))
    }

    pub fn content_type(&self) -> &'static str {
        if self.json { "application/json" } else { "application/yaml" }
    }
}

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct Client {
    base: reqwest::Url,
    http: reqwest::Client,
    /// Per-request timeout of everything but the event stream.
    timeout: Duration,
}

/// Percent-encode one path segment (ids are usually plain, but never trust that).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A reqwest client builder that can build: reqwest is built without a TLS crypto
/// provider, so ring is installed first (once per process).
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

impl Client {
    /// A client for the API at `api` (`http://host:port`, with or without a path prefix).
    pub fn new(api: &str) -> Result<Client, CliError> {
        let trimmed = api.trim().trim_end_matches('/');
        let base = reqwest::Url::parse(&format!("{trimmed}/"))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| CliError::Invalid(format!("--api {api}: expected a URL like {}", crate::DEFAULT_API)))?;
        let http = http_builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("drover-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { base, http, timeout: Duration::from_secs(30) })
    }

    /// The base URL as given (no trailing slash).
    pub fn base(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// `path` (no leading slash) under the base URL.
    fn url(&self, path: &str) -> reqwest::Url {
        // The base always ends with '/', and `path` is made of encoded segments.
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    fn transport(&self, e: reqwest::Error) -> CliError {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        if e.is_connect() || (e.is_timeout() && !e.is_body()) {
            if e.is_timeout() {
                cause = format!("timed out ({cause})");
            }
            CliError::Unreachable { url: self.base(), cause }
        } else {
            CliError::Other(format!("request to the controller at {} failed: {cause}", self.base()))
        }
    }

    /// Send a request; a non-2xx answer becomes [`CliError::Api`].
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, CliError> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ApiError>(&text).unwrap_or_else(|_| {
            let t = text.trim();
            let error = if t.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                t.chars().take(500).collect()
            };
            ApiError { error, details: Vec::new() }
        });
        Err(CliError::Api { status: status.as_u16(), context: None, body })
    }

    async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, CliError> {
        let resp = self.send(req.timeout(self.timeout)).await?;
        let url = resp.url().path().to_string();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(format!("the controller's answer to {url} is not what this drover expects: {e}"))
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.http.get(self.url(path))).await
    }

    /// `POST /v1/jobs`: submit a plan.
    pub async fn submit(&self, plan: &PlanText) -> Result<JobView, CliError> {
        let req = self
            .http
            .post(self.url("v1/jobs"))
            .header(reqwest::header::CONTENT_TYPE, plan.content_type())
            .body(plan.text.clone());
        self.json(req).await.map_err(|e| e.context(&plan.source))
    }

    /// `POST /v1/jobs?dry_run=true`: what a plan would do.
    pub async fn preview(&self, plan: &PlanText) -> Result<PlanPreview, CliError> {
        let req = self
            .http
            .post(self.url("v1/jobs?dry_run=true"))
            .header(reqwest::header::CONTENT_TYPE, plan.content_type())
            .body(plan.text.clone());
        self.json(req).await.map_err(|e| e.context(&plan.source))
    }

    /// `GET /v1/jobs`.
    pub async fn jobs(
        &self,
        status: Option<&str>,
        limit: Option<usize>,
        after: Option<&str>,
    ) -> Result<JobList, CliError> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(s) = status {
            q.push(("status", s.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        let mut url = self.url("v1/jobs");
        if !q.is_empty() {
            url.query_pairs_mut().extend_pairs(q.iter().map(|(k, v)| (*k, v.as_str())));
        }
        self.json(self.http.get(url)).await
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<JobView, CliError> {
        self.get(&format!("v1/jobs/{}", segment(id))).await
    }

    /// `GET /v1/jobs/{id}/nodes/{node}`.
    pub async fn node_detail(&self, id: &str, node: &str) -> Result<NodeDetail, CliError> {
        self.get(&format!("v1/jobs/{}/nodes/{}", segment(id), segment(node))).await
    }

    /// `POST /v1/jobs/{id}/{op}`.
    pub async fn operate(&self, id: &str, op: Operator) -> Result<OperatorReply, CliError> {
        let req = self.http.post(self.url(&format!("v1/jobs/{}/{}", segment(id), op.as_str())));
        self.json(req).await.map_err(|e| match e.status() {
            // The controller's reason may already say "cannot <op>: ...".
            Some(409) => match &e {
                CliError::Api { body, .. } if body.error.starts_with("cannot") => e.context(format!("job {id}")),
                _ => e.context(format!("cannot {} job {id}", op.as_str())),
            },
            _ => e,
        })
    }

    /// `GET /v1/jobs/{id}/events?from=N`: the open event stream (no overall timeout).
    pub async fn events(&self, id: &str, from: u64) -> Result<reqwest::Response, CliError> {
        let mut url = self.url(&format!("v1/jobs/{}/events", segment(id)));
        url.query_pairs_mut().append_pair("from", &from.to_string());
        let req = self.http.get(url).header(reqwest::header::ACCEPT, "text/event-stream");
        self.send(req).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<NodeList, CliError> {
        self.get("v1/nodes").await
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &str) -> Result<NodeInfo, CliError> {
        self.get(&format!("v1/nodes/{}", segment(id))).await
    }

    /// `GET /v1/actions`.
    pub async fn actions(&self) -> Result<ActionList, CliError> {
        self.get("v1/actions").await
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, CliError> {
        self.get("v1/health").await
    }

    /// `GET /v1/ready`.
    pub async fn ready(&self) -> Result<Health, CliError> {
        self.get("v1/ready").await
    }
}

/// The exit code for a job that ended in `status`.
pub fn code_for(status: JobStatus) -> Code {
    if status == JobStatus::Succeeded { Code::Success } else { Code::Failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_render_details_and_codes() {
        let e = CliError::Api {
            status: 400,
            context: Some("plan.yaml".into()),
            body: ApiError {
                error: "the plan is invalid (2 errors)".into(),
                details: vec!["a: x".into(), "b: y".into()],
            },
        };
        assert_eq!(e.to_string(), "plan.yaml: the plan is invalid (2 errors)\n  - a: x\n  - b: y");
        assert_eq!(e.code(), Code::Invalid);
        let q = CliError::Api {
            status: 429,
            context: None,
            body: ApiError { error: "2 jobs pending".into(), details: vec![] },
        };
        assert!(q.to_string().starts_with("the controller's job queue is full: 2 jobs pending"));
        assert_eq!(q.code(), Code::Error);
        let c = CliError::Api { status: 409, context: None, body: ApiError { error: "x".into(), details: vec![] } };
        assert_eq!(c.code(), Code::Failed);
        let u = CliError::Unreachable { url: "http://h:1".into(), cause: "Connection refused".into() };
        assert_eq!(
            u.to_string(),
            "cannot reach the drover controller at http://h:1: Connection refused (is `drover dev` or `drover controller` running? set --api or DROVER_API)"
        );
        assert_eq!(u.code(), Code::Error);
    }

    #[test]
    fn plan_content_type() {
        assert!(PlanText::new("p.json", "x".into()).json);
        assert!(!PlanText::new("p.yml", "{}".into()).json);
        assert!(PlanText::new("-", "  {\"name\":1}".into()).json);
        assert!(!PlanText::new("-", "name: x".into()).json);
        assert_eq!(PlanText::new("-", "name: x".into()).content_type(), "application/yaml");
    }

    #[test]
    fn urls() {
        let c = Client::new("http://127.0.0.1:7070/").unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:7070");
        assert_eq!(c.url("v1/jobs/a%2Fb").as_str(), "http://127.0.0.1:7070/v1/jobs/a%2Fb");
        let p = Client::new("https://ops.example.com/drover").unwrap();
        assert_eq!(p.url("v1/nodes").as_str(), "https://ops.example.com/drover/v1/nodes");
        assert_eq!(segment("web 1/x"), "web%201%2Fx");
        assert!(matches!(Client::new("localhost:7070"), Err(CliError::Invalid(_))));
        assert!(matches!(Client::new("ftp://x"), Err(CliError::Invalid(_))));
    }
}
