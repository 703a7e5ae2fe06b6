//! The REST API under `/v1` (JSON), Server-Sent Events for progress, `/metrics`.

use crate::forward::{Answer, Ask, Link};
use crate::registry::Registry;
use crate::runtime::{Refusal, Submitted};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use drover_bus::{Topology, now_ms};
use drover_core::api::{ApiError, Health, JobView, NodeDetail, NodeList, StepDetail};
use drover_core::engine::{Event, JobStatus, Progress, ProgressKind};
use drover_core::parse::Format;
use drover_core::wire::{StepResult, split_lines};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The local runtime while this controller leads.
    pub link: Link,
    pub role: crate::Role,
    pub registry: Registry,
    pub topo: Topology,
    pub metrics: crate::metrics::Metrics,
    pub ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// An error response: `{error, details}` with its status code.
pub struct ApiFailure(StatusCode, ApiError);

impl ApiFailure {
    fn new(code: StatusCode, error: impl Into<String>) -> ApiFailure {
        ApiFailure(code, ApiError { error: error.into(), details: Vec::new() })
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<Refusal> for ApiFailure {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(e, details) => ApiFailure(StatusCode::BAD_REQUEST, ApiError { error: e, details }),
            Refusal::NotFound(e) => ApiFailure::new(StatusCode::NOT_FOUND, e),
            Refusal::Conflict(e) => ApiFailure::new(StatusCode::CONFLICT, e),
            Refusal::Busy(e) => ApiFailure::new(StatusCode::TOO_MANY_REQUESTS, e),
            Refusal::Unavailable(e) => ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

/// Ask the jobs' runtime: this controller's own while it leads, the leader's otherwise.
async fn ask(state: &AppState, ask: Ask) -> ApiResult<Answer> {
    let answer = match state.link.get() {
        Some(tx) => crate::forward::local(&tx, ask).await,
        None => crate::forward::remote(&state.topo.js.client(), &state.topo.names, &ask).await,
    };
    match answer {
        Answer::Refused(r) => Err(r.into()),
        a => Ok(a),
    }
}

fn unexpected(a: Answer) -> ApiFailure {
    tracing::error!("unexpected answer from the runtime: {a:?}");
    ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer from the leading controller")
}

pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/v1/jobs", post(create_job).get(list_jobs))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/nodes/{node}", get(get_job_node))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/{op}", post(operate))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}", get(get_node))
        .route("/v1/actions", get(list_actions))
        .route("/v1/health", get(health))
        .route("/v1/ready", get(ready))
        .route("/v1/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiFailure::new(StatusCode::NOT_FOUND, "no such endpoint; see /v1/openapi.json") })
        .with_state(state)
}

#[derive(Deserialize)]
struct CreateQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn create_job(
    State(s): State<AppState>,
    Query(q): Query<CreateQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiFailure::new(StatusCode::BAD_REQUEST, "the plan is not UTF-8 text"))?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let format = if ct.contains("json") {
        Format::Json
    } else if ct.contains("yaml") || ct.contains("yml") {
        Format::Yaml
    } else {
        Format::Auto
    };
    let r = match ask(&s, Ask::Submit { text, format, dry_run: q.dry_run }).await? {
        Answer::Submitted(r) => r,
        other => return Err(unexpected(other)),
    };
    match r? {
        Submitted::Job(view) => Ok((StatusCode::CREATED, Json(*view)).into_response()),
        Submitted::Preview(p) => Ok((StatusCode::OK, Json(p)).into_response()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

async fn list_jobs(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Response> {
    let status = match q.status {
        None => None,
        Some(st) => Some(serde_json::from_value::<JobStatus>(json!(st)).map_err(|_| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("query param status: \"{st}\" is not one of pending, running, paused, rolling_back, succeeded, failed, rolled_back, halted, cancelled"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let list = match ask(&s, Ask::List { status, limit, after: q.after.clone() }).await {
        Ok(Answer::List(list)) => list,
        Ok(other) => return Err(unexpected(other)),
        Err(_) if s.link.get().is_none() => listed_summaries(&s, status, limit, q.after.as_deref()).await?,
        Err(e) => return Err(e),
    };
    Ok(Json(list).into_response())
}

/// The job listing from the summaries the leader keeps in the jobs bucket (while no
/// controller leads): newest first, as the leader lists them.
async fn listed_summaries(
    s: &AppState,
    status: Option<JobStatus>,
    limit: usize,
    after: Option<&str>,
) -> ApiResult<drover_core::api::JobList> {
    use drover_core::api::{JobList, JobSummary};
    let bucket = s.topo.names.jobs_bucket();
    let all = drover_bus::read_all(&s.topo.js, &drover_bus::kv_stream(&bucket), &format!("$KV.{bucket}.>"))
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, format!("reading job summaries: {e}")))?;
    // One summary per job (the bucket keeps the last); deletions have no body.
    let mut jobs: Vec<JobSummary> =
        all.iter().filter_map(|(_, body)| serde_json::from_slice::<JobSummary>(body).ok()).collect();
    // Job ids are UUIDv7: ordered by creation time.
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    jobs.dedup_by(|a, b| a.id == b.id);
    let mut jobs: Vec<JobSummary> = jobs
        .into_iter()
        .skip_while(|j| after.is_some_and(|a| j.id.as_str() >= a))
        .filter(|j| status.is_none_or(|st| st == j.status))
        .take(limit + 1)
        .collect();
    let next = (jobs.len() > limit).then(|| {
        jobs.truncate(limit);
        jobs.last().map(|j| j.id.clone())
    });
    Ok(JobList { jobs, next: next.flatten() })
}

async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let v = view_of(&s, &id).await?;
    v.map(|v| Json(v).into_response()).ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no job {id}")))
}

/// A job's view: from the leader's runtime, or, for a job finished long ago that the
/// runtime no longer holds (or while no controller leads), rebuilt from its journal.
async fn view_of(s: &AppState, id: &str) -> ApiResult<Option<JobView>> {
    let rebuilt = match ask(s, Ask::Get { job: id.to_string() }).await {
        Ok(Answer::View(Some(v))) => return Ok(Some(*v)),
        Ok(Answer::View(None)) => archived(s, id, true).await?,
        Ok(other) => return Err(unexpected(other)),
        Err(_) if s.link.get().is_none() => archived(s, id, false).await?,
        Err(e) => return Err(e),
    };
    Ok(rebuilt.map(|r| crate::runtime::job_view(&r.job, r.created_at_ms, None)))
}

/// Rebuild a job from its journal (read only): one the runtime no longer holds
/// (`finished_only`), or, while no controller leads, any job as its journal has it.
async fn archived(s: &AppState, id: &str, finished_only: bool) -> ApiResult<Option<crate::recovery::Rebuilt>> {
    if drover_core::wire::check_id("job", id).is_err() {
        return Ok(None);
    }
    let names = &s.topo.names;
    // With the takeover lines, so that lines a deposed leader wrote are left out.
    let filters = [names.job_inputs(id), names.fence()];
    let lines = drover_bus::read_all_of(&s.topo.js, &names.events_stream(), &filters)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, format!("reading the journal: {e}")))?;
    let mut problems = crate::recovery::Problems::default();
    let mut rebuilt = crate::recovery::rebuild(names, lines, &mut problems);
    for p in problems.0 {
        tracing::warn!("rebuilding an archived job: {p}");
    }
    Ok(rebuilt.pop().filter(|r| !finished_only || r.job.status().is_final()))
}

async fn get_job_node(State(s): State<AppState>, Path((id, node)): Path<(String, String)>) -> ApiResult<Response> {
    let from_journal = |r: Option<crate::recovery::Rebuilt>| r.and_then(|r| crate::runtime::node_steps(&r.job, &node));
    let steps = match ask(&s, Ask::NodeSteps { job: id.clone(), node: node.clone() }).await {
        Ok(Answer::NodeSteps(Some(in_memory))) => in_memory,
        Ok(Answer::NodeSteps(None)) => from_journal(archived(&s, &id, true).await?),
        Ok(other) => return Err(unexpected(other)),
        Err(_) if s.link.get().is_none() => from_journal(archived(&s, &id, false).await?),
        Err(e) => return Err(e),
    };
    let steps = steps.ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no node {node} in job {id}")))?;
    // Results the agent published, and those it returned in replies: stored by the
    // controller a round at a time for the whole job (or, by earlier agents, one by one).
    let names = &s.topo.names;
    let mut results: Vec<StepResult> = Vec::new();
    let subjects = [names.result(&id, &node), names.result_record(&id, &node), names.replied_results(&id)];
    let read = drover_bus::read_all_of(&s.topo.js, &names.results_stream(), &subjects)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, format!("reading results: {e}")))?;
    let lines = read.iter().flat_map(|(_, b)| drover_core::wire::split_lines(b));
    results.extend(lines.filter_map(|l| serde_json::from_slice::<StepResult>(l).ok()).filter(|r| r.id.node == node));
    // One copy of each (a record and a later re-publication can both exist), in order.
    results.sort_by_key(|r| r.finished_at_ms);
    let mut keys = std::collections::HashSet::new();
    results.retain(|r| keys.insert(r.id.key()));
    for r in &mut results {
        if let Some(name) = r.full_output.clone() {
            match whole_result(&s.topo, &name).await {
                Ok(whole) if whole.id == r.id => *r = whole,
                Ok(whole) => {
                    tracing::warn!(%name, "the stored result is for {}, not {}; showing the cut one", whole.id, r.id)
                }
                Err(e) => tracing::warn!(%name, "the whole result is not available; showing the cut one: {e}"),
            }
        }
    }
    let r = steps.report;
    let details = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, st)| StepDetail {
            name: st.name.clone(),
            action: steps.actions.get(i).cloned().unwrap_or_default(),
            status: st.status,
            attempts: st.attempts,
            results: results.iter().filter(|x| x.id.step == i).cloned().collect(),
        })
        .collect();
    Ok(Json(NodeDetail { job_id: id, node, outcome: r.outcome, failure: r.failure, batch: r.batch, steps: details })
        .into_response())
}

/// A whole step result from the outputs object store (its message was cut to fit).
async fn whole_result(topo: &Topology, name: &str) -> Result<StepResult, String> {
    use tokio::io::AsyncReadExt;
    let mut object = topo.outputs.get(name).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<u64>,
}

async fn job_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let view = view_of(&s, &id).await?.ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no job {id}")))?;
    let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let from = q.from.or(last_id.map(|l| l + 1)).unwrap_or(1);
    let final_now = view.report.status.is_final();
    let end_now = final_now && from > view.last_event;
    let status = view.report.status;
    let stream = s
        .topo
        .js
        .get_stream(s.topo.names.events_stream())
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: s.topo.names.job_progress(&id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let messages =
        consumer.messages().await.map_err(|e| ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let body = progress_events(messages, from, end_now, status);
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn end(status: JobStatus) -> SseEvent {
    SseEvent::default().event("end").data(json!({ "status": status }).to_string())
}

/// Progress messages (each holding one round's events, one per line) as SSE events from
/// `from` on, each sequence number once, ending after `job_finished`.
fn progress_events(
    messages: async_nats::jetstream::consumer::pull::Ordered,
    from: u64,
    end_now: bool,
    status: JobStatus,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    enum St {
        Run(Box<async_nats::jetstream::consumer::pull::Ordered>, std::collections::HashSet<u64>),
        Done,
    }
    let start = if end_now { None } else { Some(St::Run(Box::new(messages), Default::default())) };
    let first: Vec<Result<SseEvent, Infallible>> = if end_now { vec![Ok(end(status))] } else { vec![] };
    futures::stream::iter(first).chain(
        futures::stream::unfold(start, move |st| async move {
            let Some(St::Run(mut m, mut seen)) = st else { return None };
            loop {
                match m.next().await {
                    Some(Ok(msg)) => {
                        let mut out = Vec::new();
                        for line in split_lines(&msg.payload) {
                            let Ok(p) = serde_json::from_slice::<Progress>(line) else { continue };
                            // Before `from`, or a copy (a line written again after a failed
                            // ack; such a retry can also land after later lines, so copies
                            // are known by number, not by order).
                            if p.seq < from || !seen.insert(p.seq) {
                                continue;
                            }
                            let data = String::from_utf8_lossy(line).into_owned();
                            out.push(Ok(SseEvent::default().id(p.seq.to_string()).event("progress").data(data)));
                            if p.kind == ProgressKind::JobFinished {
                                let status = p
                                    .detail
                                    .as_deref()
                                    .and_then(|d| serde_json::from_value(json!(d)).ok())
                                    .unwrap_or(JobStatus::Failed);
                                out.push(Ok(end(status)));
                                return Some((out, Some(St::Done)));
                            }
                        }
                        if !out.is_empty() {
                            return Some((out, Some(St::Run(m, seen))));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!("event stream: {e}");
                        return None;
                    }
                    None => return None,
                }
            }
        })
        .flat_map(futures::stream::iter),
    )
}

async fn operate(State(s): State<AppState>, Path((id, op)): Path<(String, String)>) -> ApiResult<Response> {
    let event = Event::operator(&op).ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("unknown operation \"{op}\": use cancel, pause, resume, approve or rollback"),
        )
    })?;
    let name = event.name();
    let r = match ask(&s, Ask::Operator { job: id.clone(), event }).await? {
        Answer::Operated(r) => r,
        other => return Err(unexpected(other)),
    };
    if let Err(Refusal::NotFound(_)) = &r
        && let Some(old) = archived(&s, &id, true).await?
    {
        // Finished long ago and no longer in memory: as for any finished job, a conflict.
        let status = old.job.status();
        return Err(ApiFailure::new(StatusCode::CONFLICT, format!("cannot {name}: the job is already {status}")));
    }
    Ok(Json(r?).into_response())
}

/// Which job holds each busy node (empty while no controller leads: nodes are shown
/// without it).
async fn busy(s: &AppState) -> ApiResult<std::collections::BTreeMap<String, String>> {
    match ask(s, Ask::Busy).await {
        Ok(Answer::Busy(b)) => Ok(b),
        Ok(other) => Err(unexpected(other)),
        Err(_) if s.link.get().is_none() => Ok(Default::default()),
        Err(e) => Err(e),
    }
}

async fn list_nodes(State(s): State<AppState>) -> ApiResult<Response> {
    let busy = busy(&s).await?;
    let now = now_ms();
    let mut nodes: Vec<_> =
        s.registry.ids().into_iter().filter_map(|id| s.registry.view(&id, now, busy.get(&id).cloned())).collect();
    nodes.sort_by(|a, b| drover_core::resolve::natural_cmp(&a.id, &b.id));
    s.metrics.nodes.set(nodes.len() as i64);
    Ok(Json(NodeList { nodes }).into_response())
}

async fn get_node(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let busy = busy(&s).await?;
    let view = s
        .registry
        .view(&id, now_ms(), busy.get(&id).cloned())
        .ok_or_else(|| ApiFailure::new(StatusCode::NOT_FOUND, format!("no node {id}")))?;
    Ok(Json(json!({ "node": view, "record": s.registry.record(&id) })).into_response())
}

async fn list_actions(State(s): State<AppState>) -> ApiResult<Response> {
    let counts = s.registry.offered_by();
    let actions: Vec<_> = s
        .registry
        .catalog()
        .into_values()
        .map(|a| {
            let n = counts.get(&a.name).copied().unwrap_or(0);
            let mut v = serde_json::to_value(a).unwrap_or_default();
            v["offered_by"] = n.into();
            v
        })
        .collect();
    Ok(Json(json!({ "actions": actions })).into_response())
}

fn health_body(s: &AppState, status: &str, detail: Option<String>) -> Health {
    let role = s.role.get();
    Health {
        status: status.into(),
        detail,
        version: env!("CARGO_PKG_VERSION").into(),
        role: Some(if role.leading { "leader" } else { "standby" }.into()),
        leader: role.leader,
        epoch: Some(role.epoch),
    }
}

async fn health(State(s): State<AppState>) -> Json<Health> {
    Json(health_body(&s, "ok", None))
}

async fn ready(State(s): State<AppState>) -> Response {
    let connected = matches!(s.topo.js.client().connection_state(), async_nats::connection::State::Connected);
    let loaded = s.registry.loaded();
    if s.ready.load(std::sync::atomic::Ordering::Relaxed) && connected && loaded {
        Json(health_body(&s, "ready", Some(format!("{} nodes registered", s.registry.len())))).into_response()
    } else {
        let why = if !connected {
            "not connected to NATS"
        } else if !loaded {
            "reading the node registry"
        } else {
            "starting"
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(health_body(&s, "not_ready", Some(why.into())))).into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
        .into_response()
}
