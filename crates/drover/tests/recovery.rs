//! A controller killed with SIGKILL in the middle of a job: a new controller process
//! rebuilds the job from the JetStream journal and finishes it. Exactly-once is checked
//! by the side effects themselves: every step appends a line to a per-node file, so a
//! step that ran twice (or an undo that ran twice) shows as an extra line.

mod common;

use common::{Fleet, Options};
use drover_core::engine::{JobStatus, NodeOutcome};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

async fn crash_fleet(agents: usize) -> Fleet {
    Fleet::start(Options { agents, controller_as_process: true, ..Options::default() }).await
}

/// Kill the controller after each delay (measured from the previous restart) and start a
/// new one; return once the job is final.
async fn kill_at(fleet: &mut Fleet, job: &str, delays_ms: &[u64]) -> drover_core::api::JobView {
    for &d in delays_ms {
        tokio::time::sleep(Duration::from_millis(d)).await;
        fleet.kill_controller();
        fleet.spawn_controller().await;
    }
    let v = fleet.wait_final(job, LIMIT).await;
    if v.report.status != JobStatus::Succeeded && v.report.status != JobStatus::RolledBack {
        eprintln!("{}", fleet.controller_logs());
    }
    v
}

/// Every progress event of the job is in the events stream, in order: a controller
/// killed after a round's journal was stored, but before its progress was, publishes that
/// progress after its replay (events stored twice are allowed: watchers skip a number
/// seen).
async fn assert_progress_complete(fleet: &Fleet, id: &str) {
    let client = async_nats::connect(fleet.nats_urls.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names = drover_core::wire::Names::default();
    let messages = drover_bus::read_all(&js, &names.events_stream(), &names.job_progress(id)).await.unwrap();
    let mut seqs: Vec<u64> = Vec::new();
    let mut last = None;
    for (_, payload) in &messages {
        for line in drover_core::wire::split_lines(payload) {
            let p: drover_core::engine::Progress = serde_json::from_slice(line).unwrap();
            if !seqs.contains(&p.seq) {
                seqs.push(p.seq);
                last = Some(p.kind);
            }
        }
    }
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want, "the job's progress events, first copies in stream order");
    assert_eq!(last, Some(drover_core::engine::ProgressKind::JobFinished), "the last event");
}

/// The job succeeded, every node ran each step exactly once, and every node is seen
/// online afterwards (the registry kept following heartbeats).
async fn assert_succeeded_once(fleet: &Fleet, id: &str, nodes: &[&str]) {
    let v = fleet.wait_final(id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}", v.report);
    for n in nodes {
        assert_eq!(fleet.side_effects(n), "first\nlast\n", "side effects on {n}");
    }
    fleet.wait_nodes(nodes.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_a_rolling_job_with_retries_and_runs_nothing_twice() {
    let mut fleet = crash_fleet(6).await;
    let plan = fleet.append_plan("crash", "{strategy: rolling, batch: 2, batch_delay: 200ms}", "400ms", Some("300ms"));
    let id = fleet.submit(&plan).await;
    // 12 kill points spread over the job (the controller is down ~0.1-0.2 s each time
    // while agents go on): dispatches, retry backoffs, sleeps, batch delays, results.
    let v = kill_at(&mut fleet, &id, &[100, 150, 200, 120, 180, 250, 90, 160, 210, 130, 170, 240]).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}", v.report);
    assert_eq!(v.report.counts.get(&NodeOutcome::Succeeded), Some(&6));
    for n in ["n1", "n2", "n3", "n4", "n5", "n6"] {
        assert_eq!(fleet.side_effects(n), "first\nlast\n", "side effects on {n}");
        let steps = &v.report.nodes[n].steps;
        assert_eq!(steps[1].attempts, 2, "{n}: the flaky step ran twice (one retry), no more");
    }
    assert_progress_complete(&fleet, &id).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_resumes_a_fleet_rollback_and_undoes_each_step_once() {
    let mut fleet = crash_fleet(4).await;
    let out = fleet.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let plan = format!(
        r#"name: crash-rollback
targets: {{all: true}}
rollout: {{strategy: rolling, batch: 2, max_failures: 0, on_budget_exceeded: rollback}}
steps:
  - name: change
    action: shell
    with:
      command: "echo change >> {dir}/{{{{node.id}}}}.log"
      rollback: "echo undo >> {dir}/{{{{node.id}}}}.log"
  - {{name: check, action: test.fail, with: {{nodes: [n3]}}}}
  - {{name: wait, action: sleep, with: {{duration: 400ms}}}}
"#,
        dir = out.display()
    );
    let id = fleet.submit(&plan).await;
    // 8 more kill points: the first batch, the failure, the budget trip, the fleet rollback.
    let v = kill_at(&mut fleet, &id, &[120, 200, 90, 160, 220, 110, 180, 140]).await;
    assert_eq!(v.report.status, JobStatus::RolledBack, "{:?}", v.report);
    for n in ["n1", "n2", "n3", "n4"] {
        assert_eq!(fleet.side_effects(n), "change\nundo\n", "side effects on {n}");
    }
    assert_eq!(v.report.nodes["n3"].outcome, NodeOutcome::RolledBack);
    assert_progress_complete(&fleet, &id).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_the_dead_controller_had_not_stored_is_published_after_the_replay() {
    let mut fleet = crash_fleet(2).await;
    let id = fleet
        .submit("name: slow\ntargets: {all: true}\nsteps: [{name: s, action: sleep, with: {duration: 1500ms}}]\n")
        .await;
    fleet.wait_status(&id, &[JobStatus::Running], LIMIT).await;
    // The controller dies having journaled the job's inputs but before their progress was
    // stored (its message failed, or the crash came between the acks): here, the stored
    // progress is purged while no controller runs.
    fleet.kill_controller();
    let client = async_nats::connect(fleet.nats_urls.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let names = drover_core::wire::Names::default();
    let stream = js.get_stream(names.events_stream()).await.unwrap();
    stream.purge().filter(names.job_progress(&id)).await.unwrap();
    fleet.spawn_controller().await;
    assert_eq!(fleet.wait_final(&id, LIMIT).await.report.status, JobStatus::Succeeded);
    assert_progress_complete(&fleet, &id).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_sees_live_nodes_online_though_their_stored_beats_are_old() {
    // Agents beat every 3 s and store one beat in ten (at their start, then every 30 s);
    // with the controller's 2 s timeout a node is lost after 9 s of silence (three beats).
    let mut fleet = crash_fleet(0).await;
    for i in 1..=3 {
        let mut cfg = fleet.agent_config(&format!("n{i}"), Default::default(), false);
        cfg.heartbeat = Duration::from_secs(3);
        fleet.start_agent_with(cfg).await;
    }
    fleet.wait_nodes(3).await;
    // Their stored beats grow older than 9 s; a new controller reads them, and may lead
    // before their next live beats arrive: every node is still online at once, as the
    // stored beats may have been followed by beats that were not stored.
    tokio::time::sleep(Duration::from_secs(10)).await;
    fleet.kill_controller();
    fleet.spawn_controller().await;
    let v = fleet.get("/v1/nodes").await;
    let online = v["nodes"].as_array().map(|a| a.iter().filter(|n| n["online"] == true).count());
    assert_eq!(online, Some(3), "{v}");
    let id = fleet.submit("name: hi\ntargets: {all: true}\nsteps: [{name: hi, action: test.succeed}]\n").await;
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}", v.report);
    assert_eq!(v.report.counts.get(&NodeOutcome::Succeeded), Some(&3));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_finished_jobs_survive_a_restart() {
    let mut fleet = crash_fleet(1).await;
    let done = fleet.submit("name: quick\ntargets: {all: true}\nsteps: [{name: hi, action: test.succeed}]\n").await;
    assert_eq!(fleet.wait_final(&done, LIMIT).await.report.status, JobStatus::Succeeded);
    // A long job holds n1, so the next one waits in the queue.
    let long = fleet
        .submit("name: long\ntargets: {all: true}\nsteps: [{name: s, action: sleep, with: {duration: 1s}}]\n")
        .await;
    let queued = fleet.submit("name: next\ntargets: {all: true}\nsteps: [{name: hi, action: test.succeed}]\n").await;
    let v = fleet.job(&queued).await;
    assert_eq!(v.report.status, JobStatus::Pending, "{:?}", v.report);
    fleet.kill_controller();
    fleet.spawn_controller().await;
    // Every job is known to the new controller; both waiting jobs finish.
    assert_eq!(fleet.job(&done).await.report.status, JobStatus::Succeeded);
    assert_eq!(fleet.wait_final(&long, LIMIT).await.report.status, JobStatus::Succeeded);
    assert_eq!(fleet.wait_final(&queued, LIMIT).await.report.status, JobStatus::Succeeded);
    let list = fleet.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(3), "{list}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_job_loses_nothing_and_runs_nothing_twice() {
    let mut fleet = Fleet::start(Options { agents: 3, ..Options::default() }).await;
    let id = fleet.submit(&fleet.append_plan("nats-restart", "{strategy: rolling, batch: 1}", "700ms", None)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Same port, same store: the controller and the agents reconnect.
    let t = std::time::Instant::now();
    fleet.server.restart().expect("nats-server restarts");
    eprintln!("restart took {:?}", t.elapsed());
    assert_succeeded_once(&fleet, &id, &["n1", "n2", "n3"]).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_step_kills_the_leftover_processes_before_it_reports_the_step() {
    let fleet = Fleet::start(Options { agents: 0, ..Options::default() }).await;
    let mut agent = fleet.spawn_agent_process("a1");
    fleet.wait_nodes(1).await;
    let id = fleet
        .submit("name: long\ntargets: {nodes: [a1]}\nsteps: [{name: s, action: test.sleep, with: {duration: 60s}}]\n")
        .await;
    // The step's `sleep` process leads its own group, recorded under the data dir.
    let groups = fleet.path("agents").join("a1").join("pgroups");
    let deadline = tokio::time::Instant::now() + LIMIT;
    let pgid: u32 = loop {
        let found = std::fs::read_dir(&groups)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok()?.file_name().to_str()?.parse().ok());
        if let Some(p) = found {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "no process group recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // SIGKILL: the agent cannot clean up, and its step's process lives on.
    agent.kill().unwrap();
    agent.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!common::process_gone(pgid), "the step's process should have outlived the agent");
    // The restarted agent kills it before reporting the step as interrupted.
    let mut agent = fleet.spawn_agent_process("a1");
    let v = fleet.wait_final(&id, LIMIT).await;
    assert!(common::process_gone(pgid), "the leftover process is still running");
    assert_eq!(v.report.status, JobStatus::Failed, "{:?}", v.report);
    let err = v.report.nodes["a1"].steps[0].error.clone().unwrap_or_default();
    assert!(err.contains("interrupted"), "{err}");
    let _ = agent.kill();
    let _ = agent.wait();
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_cluster_losing_a_server_mid_job_loses_nothing() {
    // Streams and buckets replicated on 3 servers; the controller and the agents know
    // every server. The first server (the one clients try first) goes away mid-job.
    let mut fleet = Fleet::start(Options { agents: 3, cluster: 3, ..Options::default() }).await;
    let id = fleet.submit(&fleet.append_plan("cluster", "{strategy: rolling, batch: 1}", "700ms", None)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.server.stop();
    assert_succeeded_once(&fleet, &id, &["n1", "n2", "n3"]).await;
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_is_unreachable_and_rejoins_without_stale_work() {
    let ns = match common::Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not available on this machine: {e}");
            return;
        }
    };
    // NATS listens on our end of the veth pair; agent p1 runs inside the namespace.
    let fleet = Fleet::start(Options { agents: 1, nats_host: Some(ns.host_ip.clone()), ..Options::default() }).await;
    let mut agent = fleet.spawn_agent_process_in("p1", Some(&ns.name));
    fleet.wait_nodes(2).await;
    let plan = fleet.append_plan("partition", "{max_failures: 1}", "2s", None);
    let id = fleet.submit(&plan).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    ns.link(false);
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.nodes["p1"].outcome, NodeOutcome::Unreachable, "{:?}", v.report);
    assert_eq!(v.report.nodes["n1"].outcome, NodeOutcome::Succeeded);
    // The link comes back: p1 rejoins; its late result changes nothing and no new work
    // reaches it.
    ns.link(true);
    fleet.wait_nodes(2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = fleet.job(&id).await;
    assert_eq!(after.report.status, v.report.status);
    assert_eq!(after.report.nodes["p1"].outcome, NodeOutcome::Unreachable);
    assert_eq!(fleet.side_effects("p1"), "first\n", "p1 ran only what it had before the partition");
    assert_eq!(fleet.side_effects("n1"), "first\nlast\n");
    let _ = agent.kill();
    let _ = agent.wait();
    fleet.stop().await;
}
