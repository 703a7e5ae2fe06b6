//! Several controllers on one NATS: one leads (holds the lease and runs every job), the
//! others serve the API and forward what needs the leader. The leader is killed with
//! SIGKILL in the middle of a job; a standby takes the lease over once it expires, resumes
//! the job from the journal, and finishes it. Exactly-once is checked by the side effects:
//! every step appends a line to a per-node file.

mod common;

use common::{Fleet, Options};
use drover_core::engine::JobStatus;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const TTL: &str = "2s";

/// A controller process killed when the test ends, however it ends.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader_and_runs_nothing_twice() {
    let args = |id: &str| ["--id", id, "--lease-ttl", TTL].iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut fleet = Fleet::start(Options {
        agents: 6,
        controller_as_process: true,
        controller_args: args("a"),
        ..Options::default()
    })
    .await;
    let a_url = fleet.url.clone();
    let (b, b_url) = fleet.controller_process(&["--id", "b", "--lease-ttl", TTL]).await;
    let _b = Proc(b);
    let a = fleet.wait_role(&a_url, "leader", Duration::from_secs(5)).await;
    let standby = fleet.wait_role(&b_url, "standby", Duration::from_secs(5)).await;
    assert_eq!(standby.leader.as_deref(), Some("a"));

    let plan = fleet.append_plan("ha", "{strategy: rolling, batch: 2}", "500ms", Some("200ms"));
    // Submitted to the standby: it reaches the leader, which admits and runs it.
    let (code, v) = fleet.post_to(&b_url, "/v1/jobs", &plan, "application/yaml").await;
    assert_eq!(code, 201, "{v}");
    let id = v["job_id"].as_str().expect("job_id").to_string();
    // Reads and operator commands through the standby, too.
    let (code, v) = fleet.post_to(&b_url, &format!("/v1/jobs/{id}/pause"), "", "application/yaml").await;
    assert_eq!((code, v["accepted"].as_str()), (200, Some("pause")), "{v}");
    let seen = fleet.wait_status(&id, &[JobStatus::Paused], LIMIT).await;
    assert_eq!(seen.report.status, JobStatus::Paused);
    let via_b: serde_json::Value =
        fleet.http.get(format!("{b_url}/v1/jobs/{id}")).send().await.expect("GET").json().await.expect("JSON");
    assert_eq!(via_b["status"], "paused", "{via_b}");
    let (code, v) = fleet.post_to(&b_url, &format!("/v1/jobs/{id}/resume"), "", "application/yaml").await;
    assert_eq!(code, 200, "{v}");

    // The leader dies in the middle of the job (after the first batch).
    let deadline = Instant::now() + LIMIT;
    loop {
        let v = fleet.job(&id).await;
        let done = v.report.counts.get(&drover_core::engine::NodeOutcome::Succeeded).copied().unwrap_or(0);
        if done >= 2 {
            assert!(done < 6 && !v.report.status.is_final(), "the job ended before the kill: {:?}", v.report.counts);
            break;
        }
        assert!(Instant::now() < deadline, "the first batch did not finish: {:?}", v.report.counts);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fleet.kill_controller();
    let killed = Instant::now();
    // While nobody leads, the standby still serves reads: the listing from the job
    // summaries, the job from its journal; a write is refused with a reason.
    let list: serde_json::Value =
        fleet.http.get(format!("{b_url}/v1/jobs")).send().await.expect("GET").json().await.expect("JSON");
    assert_eq!(list["jobs"][0]["id"].as_str(), Some(id.as_str()), "{list}");
    let job: serde_json::Value =
        fleet.http.get(format!("{b_url}/v1/jobs/{id}")).send().await.expect("GET").json().await.expect("JSON");
    assert_eq!(job["job_id"].as_str(), Some(id.as_str()), "{job}");
    // A dry run (harmless if the standby leads by then): refused with the reason while
    // nobody leads; answered only once the standby leads, which cannot be before the old
    // lease has stood for its TTL (2 s, renewed every 2/3 s: at least 1.33 s after the
    // kill). Either answer is checked, so this never depends on the machine's speed.
    let (code, v) = fleet.post_to(&b_url, "/v1/jobs?dry_run=true", &plan, "application/yaml").await;
    match code {
        503 => assert!(v["error"].as_str().is_some_and(|e| e.contains("no controller leads")), "{v}"),
        200 => assert!(
            killed.elapsed() >= Duration::from_secs(1),
            "a preview {} ms after the kill, before the old lease could expire: {v}",
            killed.elapsed().as_millis()
        ),
        _ => panic!("a dry run while the leader is dead answered {code}: {v}"),
    }
    let b_health = fleet.wait_role(&b_url, "leader", Duration::from_secs(10)).await;
    let takeover = killed.elapsed();
    eprintln!("takeover: the standby led {} ms after the leader was killed (lease TTL {TTL})", takeover.as_millis());
    assert!(b_health.epoch > a.epoch, "the takeover raised the epoch: {:?} then {:?}", a.epoch, b_health.epoch);
    assert_eq!(b_health.leader.as_deref(), Some("b"));

    fleet.url = b_url.clone();
    let v = fleet.wait_final(&id, LIMIT).await;
    assert_eq!(v.report.status, JobStatus::Succeeded, "{:?}\n{}", v.report, fleet.controller_logs());
    for n in ["n1", "n2", "n3", "n4", "n5", "n6"] {
        assert_eq!(fleet.side_effects(n), "first\nlast\n", "side effects on {n}");
        assert_eq!(v.report.nodes[n].steps[1].attempts, 2, "{n}: the flaky step ran twice (one retry), no more");
    }

    // The old leader comes back under its id: the lease is b's now, so it waits as a
    // standby instead of taking it back.
    let (a2, a2_url) = fleet.controller_process(&["--id", "a", "--lease-ttl", TTL]).await;
    let _a2 = Proc(a2);
    let h = fleet.wait_role(&a2_url, "standby", Duration::from_secs(5)).await;
    assert_eq!(h.leader.as_deref(), Some("b"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fleet.health(&b_url).await.and_then(|h| h.role), Some("leader".into()));
    fleet.stop().await;
}

/// The journal itself fences a deposed leader: once a newer takeover line is in the
/// stream, the stream refuses the old term's writes (they are conditional on its own
/// takeover line being the last), so nothing of a submission it took is kept or acted on.
/// The controller then sees that nobody changed the lease and leads again under an epoch
/// above the newer line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_takeover_line_makes_the_stream_refuse_the_old_leader_s_writes() {
    let fleet = Fleet::start(Options { agents: 2, ..Options::default() }).await;
    let url = fleet.url.clone();
    let before = fleet.wait_role(&url, "leader", Duration::from_secs(5)).await;
    // Another controller's takeover line (as written by one that took the lease).
    let client = drover_bus::connect(&fleet.nats_urls, "intruder").await.expect("connect");
    let names = drover_core::wire::Names::default();
    let line = drover_controller::runtime::JournalEntry::Takeover { epoch: 99, owner: "x".into(), at_ms: 0 };
    let js = async_nats::jetstream::new(client);
    let ack = js.publish(names.fence(), serde_json::to_vec(&line).expect("json").into()).await.expect("publish");
    ack.await.expect("stored");

    let plan = "name: fenced\ntargets: {all: true}\nsteps:\n  - {name: a, action: echo, with: {message: hi}}\n";
    let (code, v) = fleet.post_to(&url, "/v1/jobs", plan, "application/yaml").await;
    assert_eq!(code, 503, "the old term's write must be refused: {v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("may or may not have been done")), "{v}");
    // It leads again, above the newer line, and the refused job was never kept.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        if let Some(h) = fleet.health(&url).await
            && h.role.as_deref() == Some("leader")
            && h.epoch > Some(99)
        {
            break h;
        }
        assert!(Instant::now() < deadline, "did not lead again above epoch 99");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(after.epoch > before.epoch);
    let list = fleet.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(0), "{list}");
    let id = fleet.submit(plan).await;
    assert_eq!(fleet.wait_final(&id, LIMIT).await.report.status, JobStatus::Succeeded);
    fleet.stop().await;
}
