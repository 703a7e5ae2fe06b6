//! The CLI against a fake controller (axum on 127.0.0.1:0): submit, wait, errors, the event
//! stream with reconnects. Every test is bounded by a timeout.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use drover_cli::Code;
use drover_cli::client::{CliError, Client};
use drover_cli::cmd::{jobs::JobsArgs, run::RunArgs};
use drover_cli::watch::{Ended, Follow, PauseHint, Quiet, Sink, follow};
use drover_core::api::{ApiError, JobView};
use drover_core::engine::{
    JobReport, JobStatus, NodeOutcome, NodeReport, Progress, ProgressKind, StepReport, StepStatus,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JOB: &str = "0190f3a4-7b1c-7def-8000-000000000001";

/// What the fake controller answers.
#[derive(Default)]
struct Fake {
    /// The job's final status (sent in `end` and in the job view).
    status: Option<JobStatus>,
    /// `POST /v1/jobs`: an error instead of 201.
    submit_error: Option<(u16, ApiError)>,
    events: Vec<Progress>,
    /// Per events connection (in order): send this many events, then close without `end`.
    drop_after: Vec<usize>,
    /// Pause this long before sending events with these sequence numbers.
    delays: HashMap<u64, Duration>,
    /// `GET /v1/actions` body.
    actions: Value,
    /// Requests seen: "METHOD path?query", and submitted bodies with their content type.
    seen: Mutex<Vec<String>>,
    bodies: Mutex<Vec<(String, String)>>,
    connections: Mutex<usize>,
}

type Shared = Arc<Fake>;

fn ev(seq: u64, kind: ProgressKind, node: Option<&str>, batch: Option<usize>, detail: Option<&str>) -> Progress {
    Progress {
        seq,
        at_ms: 1_000 + seq * 100,
        kind,
        node: node.map(String::from),
        step: node.map(|_| 0),
        attempt: None,
        batch,
        detail: detail.map(String::from),
    }
}

/// A two-node job's events ending in `status`.
fn events(status: JobStatus) -> Vec<Progress> {
    let outcome = if status == JobStatus::Succeeded { "succeeded" } else { "failed" };
    vec![
        ev(1, ProgressKind::JobStarted, None, None, Some("2 nodes in 1 batch")),
        ev(2, ProgressKind::BatchStarted, None, Some(1), Some("2 nodes")),
        ev(3, ProgressKind::StepStarted, Some("web-1"), None, None),
        ev(4, ProgressKind::StepStarted, Some("web-2"), None, None),
        ev(5, ProgressKind::StepSucceeded, Some("web-1"), None, None),
        ev(6, ProgressKind::NodeFinished, Some("web-1"), Some(1), Some("succeeded")),
        ev(7, ProgressKind::StepSucceeded, Some("web-2"), None, None),
        ev(8, ProgressKind::NodeFinished, Some("web-2"), Some(1), Some(outcome)),
        ev(9, ProgressKind::JobFinished, None, None, Some(status.as_str())),
    ]
}

fn view(status: JobStatus) -> JobView {
    let node = |outcome| NodeReport {
        outcome,
        failure: None,
        batch: 1,
        steps: vec![StepReport { name: "echo".into(), status: StepStatus::Succeeded, attempts: 1, error: None }],
    };
    let second = if status == JobStatus::Succeeded { NodeOutcome::Succeeded } else { NodeOutcome::Failed };
    let mut counts = BTreeMap::new();
    *counts.entry(NodeOutcome::Succeeded).or_insert(0) += 1;
    *counts.entry(second).or_insert(0) += 1;
    JobView {
        report: JobReport {
            job_id: JOB.into(),
            name: "hello".into(),
            status,
            reason: None,
            started_at_ms: Some(1_100),
            finished_at_ms: status.is_final().then_some(1_900),
            total_nodes: 2,
            counts,
            failed_nodes: usize::from(second != NodeOutcome::Succeeded),
            max_failures: Some(0),
            batches: vec![vec!["web-1".into(), "web-2".into()]],
            planned_batches: 1,
            nodes: [("web-1".to_string(), node(NodeOutcome::Succeeded)), ("web-2".to_string(), node(second))].into(),
        },
        created_at_ms: 1_000,
        waiting: None,
        excluded_offline: vec![],
        last_event: 9,
    }
}

fn api_error(status: u16, e: &ApiError) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(e.clone())).into_response()
}

async fn submit(State(f): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    f.seen.lock().unwrap().push("POST /v1/jobs".into());
    f.bodies.lock().unwrap().push((ct, body));
    if let Some((status, e)) = &f.submit_error {
        return api_error(*status, e);
    }
    let mut v = view(f.status.unwrap_or(JobStatus::Succeeded));
    v.report.status = JobStatus::Pending;
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn job(State(f): State<Shared>, Path(id): Path<String>) -> Response {
    f.seen.lock().unwrap().push(format!("GET /v1/jobs/{id}"));
    if id != JOB {
        return api_error(404, &ApiError { error: format!("job {id} not found"), details: vec![] });
    }
    axum::Json(view(f.status.unwrap_or(JobStatus::Succeeded))).into_response()
}

fn frame(p: &Progress) -> String {
    format!("id: {}\nevent: progress\ndata: {}\n\n", p.seq, serde_json::to_string(p).unwrap())
}

async fn stream(State(f): State<Shared>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let from: u64 = q.get("from").and_then(|s| s.parse().ok()).unwrap_or(1);
    f.seen.lock().unwrap().push(format!("GET /v1/jobs/{id}/events?from={from}"));
    if id != JOB {
        return api_error(404, &ApiError { error: format!("job {id} not found"), details: vec![] });
    }
    let conn = {
        let mut c = f.connections.lock().unwrap();
        *c += 1;
        *c - 1
    };
    let mut chunks: Vec<(Duration, String)> = vec![(Duration::ZERO, ": hello\n\n".into())];
    let pending: Vec<&Progress> = f.events.iter().filter(|e| e.seq >= from).collect();
    let cut = f.drop_after.get(conn).copied();
    for (i, e) in pending.iter().enumerate() {
        if cut == Some(i) {
            break;
        }
        chunks.push((f.delays.get(&e.seq).copied().unwrap_or_default(), frame(e)));
    }
    if cut.is_none_or(|c| c >= pending.len()) {
        let status = f.status.unwrap_or(JobStatus::Succeeded);
        // Split the end frame across two chunks, as a proxy might.
        chunks.push((Duration::ZERO, "event: end\nda".into()));
        chunks.push((Duration::ZERO, format!("ta: {{\"status\":\"{status}\"}}\n\n")));
    }
    let body = futures::stream::iter(chunks).then(|(d, s)| async move {
        tokio::time::sleep(d).await;
        Ok::<_, Infallible>(Bytes::from(s))
    });
    ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body)).into_response()
}

async fn actions(State(f): State<Shared>) -> Response {
    f.seen.lock().unwrap().push("GET /v1/actions".into());
    axum::Json(f.actions.clone()).into_response()
}

async fn operate(State(f): State<Shared>, Path((id, op)): Path<(String, String)>) -> Response {
    f.seen.lock().unwrap().push(format!("POST /v1/jobs/{id}/{op}"));
    if op == "approve" {
        return api_error(409, &ApiError { error: "the job is not waiting for approval".into(), details: vec![] });
    }
    axum::Json(json!({"job_id": id, "accepted": op, "status": "running"})).into_response()
}

use futures::StreamExt as _;

/// Start the fake on a free port; returns its base URL.
async fn start(fake: Fake) -> (String, Shared) {
    let shared = Arc::new(fake);
    let app = Router::new()
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/events", get(stream))
        .route("/v1/jobs/{id}/{op}", post(operate))
        .route("/v1/actions", get(actions))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

fn quick() -> Follow {
    Follow {
        idle: Duration::from_millis(50),
        give_up_after: Duration::from_secs(2),
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f).await.expect("the test took too long")
}

#[derive(Parser)]
enum Cli {
    Run(RunArgs),
    Jobs(JobsArgs),
}

fn run_args(args: &[&str]) -> RunArgs {
    match Cli::try_parse_from(std::iter::once("drover").chain(["run"]).chain(args.iter().copied())).unwrap() {
        Cli::Run(r) => r,
        Cli::Jobs(_) => unreachable!(),
    }
}

fn jobs_args(args: &[&str]) -> JobsArgs {
    match Cli::try_parse_from(std::iter::once("drover").chain(["jobs"]).chain(args.iter().copied())).unwrap() {
        Cli::Jobs(j) => j,
        Cli::Run(_) => unreachable!(),
    }
}

fn plan_file() -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(f.path(), "name: hello\ntargets: {all: true}\nsteps:\n  - {name: echo, action: test.echo}\n")
        .unwrap();
    f
}

#[tokio::test]
async fn submit_and_wait_exit_code_follows_final_status() {
    bounded(async {
        let plan = plan_file();
        let path = plan.path().to_str().unwrap();
        for (status, code) in [
            (JobStatus::Succeeded, Code::Success),
            (JobStatus::Failed, Code::Failed),
            (JobStatus::RolledBack, Code::Failed),
            (JobStatus::Halted, Code::Failed),
            (JobStatus::Cancelled, Code::Failed),
        ] {
            let (url, fake) = start(Fake { status: Some(status), events: events(status), ..Fake::default() }).await;
            for output in ["table", "json"] {
                let args = run_args(&[path, "--wait", "-o", output, "--api", &url]);
                let got = drover_cli::cmd::run::execute_with(args, &quick()).await.unwrap();
                assert_eq!(got, code, "{status} -o {output}");
            }
            let bodies = fake.bodies.lock().unwrap();
            assert_eq!(bodies[0].0, "application/yaml");
            assert!(bodies[0].1.starts_with("name: hello\n"));
        }
        // Without --wait: submitted, exit 0, whatever happens later.
        let (url, _) =
            start(Fake { status: Some(JobStatus::Failed), events: events(JobStatus::Failed), ..Fake::default() }).await;
        let got = drover_cli::cmd::run::execute_with(run_args(&[path, "--api", &url]), &quick()).await.unwrap();
        assert_eq!(got, Code::Success);
    })
    .await
}

#[tokio::test]
async fn invalid_plan_400_shows_every_detail_and_exits_2() {
    bounded(async {
        let plan = plan_file();
        let details = vec![
            "steps[0] \"echo\".with.message: unknown param".to_string(),
            "rollout.batch: must be at least 1".to_string(),
        ];
        let (url, _) = start(Fake {
            submit_error: Some((
                400,
                ApiError { error: "the plan is invalid (2 errors)".into(), details: details.clone() },
            )),
            ..Fake::default()
        })
        .await;
        let path = plan.path().to_str().unwrap();
        let err = drover_cli::cmd::run::execute(run_args(&[path, "--wait", "--api", &url])).await.unwrap_err();
        assert_eq!(err.code(), Code::Invalid);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{path}: the plan is invalid (2 errors)")), "{msg}");
        for d in &details {
            assert!(msg.contains(&format!("\n  - {d}")), "{msg}");
        }
        // An unreadable file is invalid input too, and nothing is sent.
        let err =
            drover_cli::cmd::run::execute(run_args(&["/nonexistent/plan.yaml", "--api", &url])).await.unwrap_err();
        assert_eq!(err.code(), Code::Invalid);
        assert!(err.to_string().starts_with("cannot read plan file /nonexistent/plan.yaml"), "{err}");
    })
    .await
}

#[tokio::test]
async fn queue_full_429_has_a_clear_message() {
    bounded(async {
        let (url, _) = start(Fake {
            submit_error: Some((429, ApiError { error: "64 jobs pending (max_pending 64)".into(), details: vec![] })),
            ..Fake::default()
        })
        .await;
        let plan = plan_file();
        let err =
            drover_cli::cmd::run::execute(run_args(&[plan.path().to_str().unwrap(), "--api", &url])).await.unwrap_err();
        assert_eq!(err.code(), Code::Error);
        let msg = err.to_string();
        assert!(msg.contains("the controller's job queue is full"), "{msg}");
        assert!(msg.contains("64 jobs pending (max_pending 64)"), "{msg}");
    })
    .await
}

#[tokio::test]
async fn connection_refused_names_the_url_and_exits_3() {
    bounded(async {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let plan = plan_file();
        let err =
            drover_cli::cmd::run::execute(run_args(&[plan.path().to_str().unwrap(), "--api", &url])).await.unwrap_err();
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
        assert_eq!(err.code(), Code::Error);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("cannot reach the drover controller at {url}: ")), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(msg.ends_with("(is `drover dev` or `drover controller` running? set --api or DROVER_API)"), "{msg}");
        let err = drover_cli::cmd::jobs::execute(jobs_args(&["list", "--api", &url])).await.unwrap_err();
        assert_eq!(err.code(), Code::Error);
    })
    .await
}

#[derive(Default)]
struct Record(Vec<u64>);

impl Sink for Record {
    fn event(&mut self, e: &Progress) {
        self.0.push(e.seq);
    }
}

#[tokio::test]
async fn watch_reconnects_from_the_last_event_until_end() {
    bounded(async {
        let (url, fake) = start(Fake {
            status: Some(JobStatus::RolledBack),
            events: events(JobStatus::RolledBack),
            // First connection: 4 events, then the stream drops; second: 2 more, drops again.
            drop_after: vec![4, 2],
            ..Fake::default()
        })
        .await;
        let client = Client::new(&url).unwrap();
        let mut rec = Record::default();
        let end = follow(&client, JOB, 1, None, &mut rec, &quick()).await.unwrap();
        assert_eq!(end, Ended::End(Some(JobStatus::RolledBack)));
        assert_eq!(rec.0, (1..=9).collect::<Vec<_>>());
        let seen: Vec<String> = fake.seen.lock().unwrap().iter().filter(|s| s.contains("/events")).cloned().collect();
        assert_eq!(
            seen,
            [1, 5, 7].map(|n| format!("GET /v1/jobs/{JOB}/events?from={n}")).to_vec(),
            "reconnects resume after the last event"
        );
        // The same through `jobs watch`: exit code by the final status.
        *fake.connections.lock().unwrap() = 0;
        let code =
            drover_cli::cmd::jobs::execute_with(jobs_args(&["watch", JOB, "--api", &url]), &quick()).await.unwrap();
        assert_eq!(code, Code::Failed);
        // An unknown job is invalid input, not retried.
        let err = drover_cli::cmd::jobs::execute_with(jobs_args(&["watch", "nope", "--api", &url]), &quick())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Invalid);
        let mut rec = Record::default();
        let err = follow(&client, "nope", 1, None, &mut rec, &quick()).await.unwrap_err();
        assert_eq!(err.status(), Some(404));
    })
    .await
}

#[tokio::test]
async fn watch_gives_up_when_the_controller_is_gone() {
    bounded(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let opts = Follow { give_up_after: Duration::from_millis(200), ..quick() };
        let started = std::time::Instant::now();
        let err = follow(&client, JOB, 3, None, &mut Record::default(), &opts).await.unwrap_err();
        assert!(matches!(err, CliError::Unreachable { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn wait_hints_once_while_paused_and_keeps_waiting() {
    bounded(async {
        let mut evs = events(JobStatus::Succeeded);
        // After batch 1: an approval gate, approved from "another shell" 400 ms later.
        evs.insert(8, ev(0, ProgressKind::Paused, None, Some(1), Some("approval gate")));
        evs.insert(9, ev(0, ProgressKind::Approved, None, Some(1), None));
        for (i, e) in evs.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        let (url, _) = start(Fake {
            status: Some(JobStatus::Succeeded),
            events: evs,
            delays: [(10, Duration::from_millis(400))].into(),
            ..Fake::default()
        })
        .await;
        let client = Client::new(&url).unwrap();
        let buf = Buf::default();
        let mut quiet = Quiet::new(Box::new(buf.clone()), PauseHint::new(JOB, ""));
        let end = follow(&client, JOB, 1, None, &mut quiet, &quick()).await.unwrap();
        assert_eq!(end, Ended::End(Some(JobStatus::Succeeded)));
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out, format!("job paused: waiting for `drover jobs approve {JOB}`\n"));
    })
    .await
}

#[tokio::test]
async fn adhoc_run_sends_a_one_step_plan_with_typed_params() {
    bounded(async {
        let (url, fake) = start(Fake {
            status: Some(JobStatus::Succeeded),
            events: events(JobStatus::Succeeded),
            actions: json!({"actions": [{"name": "test.echo", "description": "", "offered_by": 2,
                "params_schema": {"properties": {"message": {"type": "string"}, "count": {"type": "integer"}}}}]}),
            ..Fake::default()
        })
        .await;
        let args = run_args(&[
            "-t",
            "role=web",
            "test.echo",
            "message=123",
            "count=5",
            "extra=[1]",
            "--retries",
            "1",
            "--batch",
            "1",
            "--api",
            &url,
            "--wait",
        ]);
        let code = drover_cli::cmd::run::execute_with(args, &quick()).await.unwrap();
        assert_eq!(code, Code::Success);
        let (ct, body) = fake.bodies.lock().unwrap()[0].clone();
        assert_eq!(ct, "application/json");
        let plan: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            plan,
            json!({"name": "adhoc-test.echo", "targets": {"selector": "role=web"},
                   "rollout": {"strategy": "rolling", "batch": 1},
                   "steps": [{"name": "test.echo", "action": "test.echo", "retries": 1,
                              "with": {"message": "123", "count": 5, "extra": [1]}}]})
        );
        // A malformed selector never reaches the controller.
        let before = fake.seen.lock().unwrap().len();
        let err = drover_cli::cmd::run::execute(run_args(&["-t", "role in (", "test.echo", "--api", &url]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Invalid);
        assert_eq!(fake.seen.lock().unwrap().len(), before);
    })
    .await
}

#[tokio::test]
async fn operator_commands_and_409() {
    bounded(async {
        let (url, fake) = start(Fake::default()).await;
        let code = drover_cli::cmd::jobs::execute(jobs_args(&["cancel", JOB, "--api", &url])).await.unwrap();
        assert_eq!(code, Code::Success);
        let err = drover_cli::cmd::jobs::execute(jobs_args(&["approve", JOB, "--api", &url])).await.unwrap_err();
        assert_eq!(err.code(), Code::Failed);
        assert_eq!(err.to_string(), format!("cannot approve job {JOB}: the job is not waiting for approval"));
        assert!(fake.seen.lock().unwrap().contains(&format!("POST /v1/jobs/{JOB}/cancel")));
    })
    .await
}

#[tokio::test]
async fn logs_without_follow_stop_at_the_last_event() {
    bounded(async {
        // The stream never sends `end` on the first connection; logs stop at last_event (9).
        let (url, fake) = start(Fake {
            status: Some(JobStatus::Succeeded),
            events: events(JobStatus::Succeeded),
            drop_after: vec![100],
            delays: [(9, Duration::from_millis(10))].into(),
            ..Fake::default()
        })
        .await;
        let code =
            drover_cli::cmd::jobs::execute_with(jobs_args(&["logs", JOB, "--api", &url]), &quick()).await.unwrap();
        assert_eq!(code, Code::Success);
        let n = fake.seen.lock().unwrap().iter().filter(|s| s.contains("/events")).count();
        assert_eq!(n, 1);
    })
    .await
}
