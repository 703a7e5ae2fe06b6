//! The fleet runtime end to end: a real nats-server per test, a controller and agents,
//! driven through the REST API.

mod common;

use common::{Fleet, Options, process_gone};
use drover_core::engine::{JobStatus, NodeOutcome, StepStatus};
use std::collections::BTreeMap;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_job_on_five_agents() {
    let fleet = Fleet::start(Options { agents: 5, ..Options::default() }).await;
    let dir = fleet.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let plan = format!(
        "name: hello\ntargets: {{all: true}}\nsteps:\n  - {{name: hi, action: echo, with: {{message: 'hi from {{{{node.id}}}}'}}}}\n  - {{name: mark, action: file.write, with: {{path: '{}/{{{{node.id}}}}.txt', content: 'job {{{{job.id}}}}'}}}}\n",
        dir.display()
    );
    let id = fleet.submit(&plan).await;
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}", v.report);
    assert_eq!(v.report.counts.get(&NodeOutcome::Succeeded), Some(&5));
    for i in 1..=5 {
        let text = std::fs::read_to_string(dir.join(format!("n{i}.txt"))).unwrap();
        assert_eq!(text, format!("job {id}"));
    }
    // Per-node detail has the output of every step.
    let d = fleet.get(&format!("/v1/jobs/{id}/nodes/n2")).await;
    assert_eq!(d["steps"][0]["results"][0]["stdout"], "hi from n2\n", "{d}");
    assert_eq!(d["steps"][1]["status"], "succeeded");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_job_trips_the_budget_and_rolls_the_fleet_back() {
    // n4's files go to a directory that does not exist, so its write fails.
    let base = tempfile::tempdir().unwrap();
    let good = base.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let bad = base.path().join("missing");
    let (g, b) = (good.display().to_string(), bad.display().to_string());
    let labels = move |i: usize| -> BTreeMap<String, String> {
        [("dir".to_string(), if i == 4 { b.clone() } else { g.clone() })].into()
    };
    let fleet = Fleet::start(Options { agents: 6, labels: Box::new(labels), ..Options::default() }).await;
    let plan = "name: roll\ntargets: {all: true}\nrollout: {strategy: rolling, batch: 2, max_failures: 0, on_budget_exceeded: rollback}\nsteps:\n  - {name: write, action: file.write, with: {path: '{{node.labels.dir}}/{{node.id}}.conf', content: 'v2'}}\n  - {name: check, action: test.succeed}\n";
    let id = fleet.submit(plan).await;
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::RolledBack, "{:?}", v.report);
    let n = &v.report.nodes;
    assert_eq!(n["n4"].outcome, NodeOutcome::Failed);
    for done in ["n1", "n2", "n3"] {
        assert_eq!(n[done].outcome, NodeOutcome::RolledBack, "{done}: {:?}", n[done]);
    }
    for skipped in ["n5", "n6"] {
        assert_eq!(n[skipped].outcome, NodeOutcome::Skipped);
    }
    // The files written by file.write are gone again on every node.
    let left: Vec<_> = std::fs::read_dir(&good).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "files left after rollback: {left:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_step_succeeds_on_retry() {
    let fleet = Fleet::start(Options { agents: 2, ..Options::default() }).await;
    let plan = "name: flaky\ntargets: {all: true}\nsteps:\n  - {name: f, action: test.flaky, with: {fail_times: 2}, retries: 2, retry_backoff: 100ms}\n";
    let id = fleet.submit(plan).await;
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}", v.report);
    assert_eq!(v.report.nodes["n1"].steps[0].attempts, 3);
    let d = fleet.get(&format!("/v1/jobs/{id}/nodes/n1")).await;
    let outcomes: Vec<&str> =
        d["steps"][0]["results"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["failed", "failed", "succeeded"]);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_kills_the_work_on_the_agent() {
    let fleet = Fleet::start(Options { agents: 1, ..Options::default() }).await;
    let pidfile = fleet.path("pid");
    let plan = format!(
        "name: slow\ntargets: {{all: true}}\nrollout: {{max_failures: -1}}\nsteps:\n  - {{name: s, action: shell, timeout: 1s, with: {{command: 'echo $$ > {}; sleep 30'}}}}\n",
        pidfile.display()
    );
    let started = std::time::Instant::now();
    let id = fleet.submit(&plan).await;
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.nodes["n1"].outcome, NodeOutcome::TimedOut, "{:?}", v.report);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(process_gone(pid), "the step's process {pid} survived its timeout");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_running_steps() {
    let fleet = Fleet::start(Options { agents: 3, ..Options::default() }).await;
    let dir = fleet.path("pids");
    std::fs::create_dir_all(&dir).unwrap();
    let plan = format!(
        "name: long\ntargets: {{all: true}}\nsteps:\n  - {{name: s, action: shell, timeout: 5m, with: {{command: 'echo $$ > {}/{{{{node.id}}}}; sleep 60'}}}}\n  - {{name: after, action: echo, with: {{message: never}}}}\n",
        dir.display()
    );
    let id = fleet.submit(&plan).await;
    // Wait until every node runs the step.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while std::fs::read_dir(&dir).unwrap().count() < 3 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, r) = fleet.post(&format!("/v1/jobs/{id}/cancel"), "", "application/json").await;
    assert_eq!(code, 200, "{r}");
    let v = fleet.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(v.report.status, JobStatus::Cancelled);
    for i in 1..=3 {
        let n = &v.report.nodes[&format!("n{i}")];
        assert_eq!(n.outcome, NodeOutcome::Cancelled, "{n:?}");
        assert_eq!(n.steps[1].status, StepStatus::NotRun);
        let pid: u32 = std::fs::read_to_string(dir.join(format!("n{i}"))).unwrap().trim().parse().unwrap();
        assert!(process_gone(pid), "n{i}'s step process {pid} survived the cancel");
    }
    // A second cancel is refused with the reason.
    let (code, r) = fleet.post(&format!("/v1/jobs/{id}/cancel"), "", "application/json").await;
    assert_eq!(code, 409, "{r}");
    assert!(r["error"].as_str().unwrap().contains("already cancelled"), "{r}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_after_a_batch_waits_for_approve() {
    let fleet = Fleet::start(Options { agents: 4, ..Options::default() }).await;
    let plan = "name: canary\ntargets: {all: true}\nrollout: {strategy: rolling, batch: [1, \"50%\"], pause_after_batches: [1]}\nsteps:\n  - {name: s, action: test.succeed}\n";
    let id = fleet.submit(plan).await;
    let v = fleet.wait_status(&id, &[JobStatus::Paused], LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Paused);
    // Wait for the canary to finish; nothing else starts while paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = fleet.job(&id).await;
    assert_eq!(v.report.counts.get(&NodeOutcome::Succeeded), Some(&1), "{:?}", v.report.counts);
    assert_eq!(v.report.counts.get(&NodeOutcome::Pending), Some(&3));
    let (code, _) = fleet.post(&format!("/v1/jobs/{id}/resume"), "", "application/json").await;
    assert_eq!(code, 409, "resume is not approve");
    let (code, r) = fleet.post(&format!("/v1/jobs/{id}/approve"), "", "application/json").await;
    assert_eq!(code, 200, "{r}");
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded);
    assert_eq!(v.report.batches.len(), 3);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_dies_mid_job_is_unreachable_and_counts() {
    let mut fleet = Fleet::start(Options { agents: 3, ..Options::default() }).await;
    let plan = "name: die\ntargets: {all: true}\nrollout: {max_failures: 0, on_budget_exceeded: halt}\nsteps:\n  - {name: s, action: sleep, with: {duration: 3s}}\n";
    let id = fleet.submit(plan).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // n2 dies like a SIGKILLed process: no drain, no result.
    fleet.agents.remove("n2").unwrap().kill();
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.nodes["n2"].outcome, NodeOutcome::Unreachable, "{:?}", v.report);
    assert_eq!(v.report.failed_nodes, 1);
    assert_eq!(v.report.status, JobStatus::Halted);
    assert_eq!(v.report.nodes["n1"].outcome, NodeOutcome::Succeeded);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_a_large_fleet_beat_less_often_and_are_judged_by_their_interval() {
    // A fleet cap of 1 beat a second makes these two agents "a large fleet": they beat
    // every 2-3 s (fleet entries x 1 s), longer than the controller's 2 s timeout.
    let mut fleet = Fleet::start(Options { agents: 0, ..Options::default() }).await;
    for id in ["n1", "n2"] {
        let mut cfg = fleet.agent_config(id, BTreeMap::new(), false);
        cfg.fleet_beats_per_s = 1;
        fleet.start_agent_with(cfg).await;
    }
    fleet.wait_nodes(2).await;
    // n2 counted 3 entries (n1, its catalog, n2): 3 s beats, lost after 9 s of silence.
    let node = fleet.get("/v1/nodes/n2").await;
    assert_eq!(node["node"]["heartbeat_ms"], 3000, "{node}");
    assert_eq!(node["node"]["lost_after_ms"], 9000, "{node}");
    let plan = "name: slow-beats\ntargets: {all: true}\nrollout: {max_failures: 1}\nsteps:\n  - {name: s, action: sleep, with: {duration: 5s}}\n";
    let id = fleet.submit(plan).await;
    // Past the agents' 500 ms `result_in_reply`: n2 has acknowledged its step, so only
    // its silence can tell that it is gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = std::time::Instant::now();
    fleet.agents.remove("n2").unwrap().kill();
    let v = fleet.wait_final(&id, LIMIT).await;
    // n1 stayed online through silences longer than the timeout: its beats said why.
    assert_eq!(v.report.nodes["n1"].outcome, NodeOutcome::Succeeded, "{:?}", v.report);
    // n2 was lost once silent for three of its beats (6-9 s), not after the 2 s timeout.
    assert_eq!(v.report.nodes["n2"].outcome, NodeOutcome::Unreachable, "{:?}", v.report);
    assert!(
        killed.elapsed() >= Duration::from_secs(5),
        "lost after {:?}: {:?}",
        killed.elapsed(),
        v.report.nodes["n2"]
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_rejected_with_every_field_named() {
    let fleet = Fleet::start(Options { agents: 1, ..Options::default() }).await;
    let plan = "name: bad\ntargets: {selector: 'role in (web'}\nrollout: {strategy: rolling, batch: \"120%\"}\nsteps:\n  - {name: a, action: file.write, with: {pth: /tmp/x}, retires: 2}\n  - {name: b, action: no.such}\n";
    let (code, v) = fleet.post("/v1/jobs", plan, "application/yaml").await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"], "invalid plan");
    let details: Vec<String> =
        v["details"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    for want in [
        "targets.selector:",
        "rollout.batch: \"120%\" is over 100%",
        "steps[0] \"a\": unknown field \"retires\"",
        "steps[0] \"a\".with.pth: unknown param",
        "steps[0] \"a\".with.path: required param missing",
        "steps[1] \"b\".action: unknown action \"no.such\"",
    ] {
        assert!(details.iter().any(|d| d.starts_with(want)), "missing {want:?} in {details:#?}");
    }
    // Malformed JSON says so.
    let (code, v) = fleet.post("/v1/jobs", "{\"name\": ", "application/json").await;
    assert_eq!(code, 400);
    assert!(v["details"][0].as_str().unwrap().starts_with("not valid JSON"), "{v}");
    // A node that does not offer an action (shell is off on this agent's policy? no: on).
    let (code, v) = fleet
        .post(
            "/v1/jobs",
            "name: x\ntargets: {nodes: [n9]}\nsteps: [{name: a, action: echo, with: {message: hi}}]\n",
            "application/yaml",
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(v["details"][0], "targets.nodes[0]: unknown node \"n9\"");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limits_give_429() {
    let mut opts = Options { agents: 1, ..Options::default() };
    opts.controller.max_running = 1;
    opts.controller.max_pending = 1;
    let fleet = Fleet::start(opts).await;
    let long = "name: long\ntargets: {all: true}\nsteps: [{name: s, action: sleep, with: {duration: 30s}}]\n";
    let a = fleet.submit(long).await;
    let b = fleet.submit(long).await;
    let vb = fleet.job(&b).await;
    assert_eq!(vb.report.status, JobStatus::Pending);
    let waiting = vb.waiting.unwrap_or_default();
    assert!(waiting.contains("max_running 1") || waiting.contains("busy"), "{waiting}");
    let (code, v) = fleet.post("/v1/jobs", long, "application/yaml").await;
    assert_eq!(code, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("queue is full"), "{v}");
    // Cancelling the running job lets the queued one start.
    fleet.post(&format!("/v1/jobs/{a}/cancel"), "", "application/json").await;
    fleet.wait_status(&b, &[JobStatus::Running], LIMIT).await;
    fleet.post(&format!("/v1/jobs/{b}/cancel"), "", "application/json").await;
    fleet.wait_final(&b, LIMIT).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_command_is_not_run_twice() {
    use drover_core::wire::{Command, CommandId, CommandKind, Names, Reply, ReplyStatus, Request};
    let fleet = Fleet::start(Options { agents: 1, ..Options::default() }).await;
    let file = fleet.path("count");
    let cmd = Command {
        id: CommandId { job: "manual".into(), node: "n1".into(), step: 0, attempt: 1, kind: CommandKind::Run },
        epoch: 1,
        step_name: "append".into(),
        action: "shell".into(),
        params: serde_json::json!({ "command": format!("echo once >> {}", file.display()) }),
        metadata: serde_json::Value::Null,
        timeout_ms: 10_000,
        issued_at_ms: 0,
        signature: None,
    };
    let client = drover_bus::connect(fleet.server.url(), "test").await.unwrap();
    let subject = Names::default().command("n1");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r: Reply =
            drover_bus::request_json(&client, subject.clone(), &Request::Run(cmd.clone()), Duration::from_secs(2))
                .await
                .unwrap();
        statuses.push(r.status);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A quick command is answered with its result (`done`), a slower one `accepted`.
    assert!(matches!(statuses[0], ReplyStatus::Done | ReplyStatus::Accepted), "{statuses:?}");
    assert_eq!(statuses[1..], [ReplyStatus::Duplicate, ReplyStatus::Duplicate]);
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 1, "the command ran more than once: {lines:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_describes_itself_and_reports_health() {
    let fleet = Fleet::start(Options { agents: 1, ..Options::default() }).await;
    let doc = fleet.get("/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/jobs/{id}/events"].is_object());
    assert_eq!(fleet.get("/v1/health").await["status"], "ok");
    assert_eq!(fleet.get("/v1/ready").await["status"], "ready");
    let actions = fleet.get("/v1/actions").await;
    assert!(
        actions["actions"].as_array().unwrap().iter().any(|a| a["name"] == "file.write" && a["offered_by"] == 1),
        "{actions}"
    );
    let node = fleet.get("/v1/nodes/n1").await;
    assert_eq!(node["node"]["online"], true, "{node}");
    // Beats every 200 ms; lost after the controller's 2 s timeout (longer than 3 beats).
    assert_eq!(node["node"]["heartbeat_ms"], 200, "{node}");
    assert_eq!(node["node"]["lost_after_ms"], 2000, "{node}");
    let (code, v) = fleet.post("/v1/jobs?dry_run=true", "name: x\ntargets: {all: true}\nrollout: {strategy: sequential}\nsteps: [{name: a, action: echo, with: {message: hi}}]\n", "application/yaml").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["batches"], serde_json::json!([["n1"]]));
    let r = fleet.http.get(format!("{}/metrics", fleet.url)).send().await.unwrap().text().await.unwrap();
    assert!(r.contains("drover_jobs_submitted"), "{r}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_as_server_sent_events_and_resumes() {
    let fleet = Fleet::start(Options { agents: 2, ..Options::default() }).await;
    let id = fleet
        .submit("name: sse\ntargets: {all: true}\nsteps: [{name: s, action: sleep, with: {duration: 300ms}}]\n")
        .await;
    // Subscribe while the job runs; the stream ends after job_finished.
    let text = tokio::time::timeout(LIMIT, async {
        fleet.http.get(format!("{}/v1/jobs/{id}/events", fleet.url)).send().await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the event stream ends");
    let ids: Vec<u64> = text.lines().filter_map(|l| l.strip_prefix("id: ")).map(|v| v.parse().unwrap()).collect();
    assert!(ids.len() >= 6, "{text}");
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids not consecutive: {ids:?}");
    assert!(text.contains("\"kind\":\"job_finished\""), "{text}");
    assert!(text.contains("event: end"), "{text}");
    // Resume from an event number: only the later events come.
    let from = ids[3];
    let again = fleet
        .http
        .get(format!("{}/v1/jobs/{id}/events?from={from}", fleet.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids2: Vec<u64> = again.lines().filter_map(|l| l.strip_prefix("id: ")).map(|v| v.parse().unwrap()).collect();
    assert_eq!(ids2, ids[3..].to_vec());
    // Past the end of a finished job: just `end`.
    let last = ids.last().unwrap() + 1;
    let tail = fleet
        .http
        .get(format!("{}/v1/jobs/{id}/events?from={last}", fleet.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(tail.contains("event: end") && !tail.contains("event: progress"), "{tail}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_leave_memory_but_stay_readable_by_id() {
    let mut opts = Options { agents: 2, ..Options::default() };
    opts.controller.retain_finished = 2;
    let fleet = Fleet::start(opts).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let plan = format!(
            "name: j{i}\ntargets: {{all: true}}\nsteps: [{{name: hi, action: echo, with: {{message: 'run {i}'}}}}]\n"
        );
        let id = fleet.submit(&plan).await;
        assert_eq!(fleet.wait_final(&id, LIMIT).await.report.status, JobStatus::Succeeded);
        ids.push(id);
    }
    // Listings hold the two most recent finished jobs only...
    let list = fleet.get("/v1/jobs").await;
    let listed: Vec<&str> = list["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed, [ids[3].as_str(), ids[2].as_str()], "{list}");
    // ...and the oldest is still served by id, rebuilt from its journal, with its results.
    let v = fleet.job(&ids[0]).await;
    assert_eq!(v.report.status, JobStatus::Succeeded);
    assert_eq!(v.report.counts.get(&NodeOutcome::Succeeded), Some(&2));
    let d = fleet.get(&format!("/v1/jobs/{}/nodes/n1", ids[0])).await;
    assert_eq!(d["steps"][0]["results"][0]["stdout"], "run 0\n", "{d}");
    let missing = fleet.http.get(format!("{}/v1/jobs/no-such-job", fleet.url)).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_large_for_a_message_is_served_whole_from_the_object_store() {
    let mut fleet = Fleet::start(Options { agents: 0, ..Options::default() }).await;
    let mut cfg = fleet.agent_config("n1", BTreeMap::new(), false);
    cfg.output_cap = 1 << 20;
    fleet.start_agent_with(cfg).await;
    fleet.wait_nodes(1).await;
    // 700 kB on stdout and on stderr: 1.4 MB of output, over the 1 MB message limit.
    let plan = "name: big\ntargets: {all: true}\nsteps: [{name: out, action: test.output, with: {bytes: 700000, stream: both}}]\n";
    let id = fleet.submit(plan).await;
    assert_eq!(fleet.wait_final(&id, LIMIT).await.report.status, JobStatus::Succeeded);
    let d = fleet.get(&format!("/v1/jobs/{id}/nodes/n1")).await;
    let r = &d["steps"][0]["results"][0];
    assert_eq!(r["stdout"].as_str().map(str::len), Some(700_000), "stdout was cut");
    assert_eq!(r["stderr"].as_str().map(str::len), Some(700_000), "stderr was cut");
    assert_eq!(r["truncated"], false);
    assert!(r["full_output"].is_null(), "the whole result replaces the cut one");
    // 300 kB: returned in the reply, and larger than a journal batch (256 kB), so its
    // record travels in a message of its own.
    let plan = "name: mid\ntargets: {all: true}\nsteps: [{name: out, action: test.output, with: {bytes: 150000, stream: both}}]\n";
    let id = fleet.submit(plan).await;
    assert_eq!(fleet.wait_final(&id, LIMIT).await.report.status, JobStatus::Succeeded);
    let d = fleet.get(&format!("/v1/jobs/{id}/nodes/n1")).await;
    let r = &d["steps"][0]["results"][0];
    assert_eq!(r["stdout"].as_str().map(str::len), Some(150_000), "{}", fleet.controller_logs());
    assert_eq!(r["stderr"].as_str().map(str::len), Some(150_000));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_that_ends_at_once_is_answered_even_when_no_finished_job_is_kept() {
    let mut opts = Options { agents: 2, ..Options::default() };
    opts.controller.retain_finished = 0;
    let mut fleet = Fleet::start(opts).await;
    fleet.agents.remove("n2").unwrap().shutdown().await;
    let deadline = std::time::Instant::now() + LIMIT;
    while fleet.get("/v1/nodes/n2").await["node"]["online"] != false {
        assert!(std::time::Instant::now() < deadline, "n2 never went offline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its only node is offline: the job fails as it starts, in the round that admits it,
    // and leaves memory at the end of that round (no finished job is kept). Its answer is
    // still its view.
    let plan = "name: gone\ntargets: {nodes: [n2]}\nsteps: [{name: hi, action: echo, with: {message: hi}}]\n";
    let (code, v) = fleet.post("/v1/jobs", plan, "application/yaml").await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"], "failed", "{v}");
    let id = v["job_id"].as_str().expect("job_id").to_string();
    // Gone from memory, still served by id from its journal.
    let list = fleet.get("/v1/jobs").await;
    assert!(list["jobs"].as_array().unwrap().iter().all(|j| j["id"] != id.as_str()), "{list}");
    assert_eq!(fleet.job(&id).await.report.status, JobStatus::Failed);
    fleet.stop().await;
}
