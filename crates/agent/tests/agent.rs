//! The agent against a real nats-server: registration, heartbeats, runs, exactly-once
//! (also across restarts), cancel, fencing, interrupted steps, rollback, drain.

mod common;

use std::time::{Duration, Instant};

use common::{Env, LIMIT, cmd, lines};
use drover_agent::INTERRUPTED;
use drover_core::engine::AttemptOutcome;
use drover_core::wire::{AgentStatus, CommandKind, ReplyStatus, Request};
use futures::StreamExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_and_heartbeats() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let mut cfg = env.config("web-1");
        cfg.policy = drover_actions::Policy::default(); // no shell
        cfg.labels.insert("role".into(), "web".into());
        cfg.groups.push("frontend".into());
        let agent = env.start(cfg).await;
        assert_eq!(agent.node_id(), "web-1");

        let rec = env.node_record("web-1").await.expect("node record");
        assert_eq!(rec.labels["role"], "web");
        assert_eq!(rec.groups, vec!["frontend".to_string()]);
        assert_eq!(rec.heartbeat_ms, 200);
        assert_eq!(rec.facts.os, std::env::consts::OS);
        assert_eq!(rec.facts.agent_version, env!("CARGO_PKG_VERSION"));
        // The actions (with their schemas) are stored once, under the key the record names.
        let key = rec.catalog.clone().expect("the record names its action catalog");
        assert!(rec.actions.is_empty() && drover_core::wire::is_catalog_key(&key), "{key}");
        let kv = env.js.get_key_value(env.names.nodes_bucket()).await.unwrap();
        let stored = kv.get(&key).await.unwrap().expect("the catalog is stored");
        let actions: Vec<drover_core::wire::ActionOffer> = serde_json::from_slice(&stored).unwrap();
        let names: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
        assert!(names.contains(&"file.write") && names.contains(&"test.sleep"), "{names:?}");
        assert!(!names.contains(&"shell"), "shell is not allowed by the default policy: {names:?}");
        assert!(actions.iter().all(|a| a.params_schema.is_object()));

        // Every beat is published; the bucket holds one in ten (every 2 s here).
        let mut beats = env.client.subscribe(env.names.heartbeat("web-1")).await.unwrap();
        let beat = tokio::time::timeout(Duration::from_secs(2), beats.next()).await.expect("a published beat");
        let beat: drover_core::wire::Heartbeat = serde_json::from_slice(&beat.unwrap().payload).unwrap();
        assert_eq!(beat.status, AgentStatus::Online);
        assert_eq!(beat.interval_ms, 200, "a small fleet beats as configured");
        let first = env.heartbeat("web-1").await.expect("heartbeat");
        assert_eq!(first.status, AgentStatus::Online);
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let hb = env.heartbeat("web-1").await.unwrap();
            if hb.at_ms > first.at_ms {
                break;
            }
            assert!(Instant::now() < deadline, "heartbeat not renewed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(env.request("web-1", &Request::Ping).await.status, ReplyStatus::Pong);
        agent.shutdown().await;
        assert_eq!(env.heartbeat("web-1").await.unwrap().status, AgentStatus::Stopped);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_beats_less_often_as_its_fleet_grows_and_says_so() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let mut cfg = env.config("web-1");
        // A cap of 10 beats a second for the whole fleet, 200 ms beats: up to 2 nodes
        // (the registration and its action catalog count as 2) beat every 200 ms.
        cfg.fleet_beats_per_s = 10;
        let agent = env.start(cfg).await;
        let mut beats = env.client.subscribe(env.names.heartbeat("web-1")).await.unwrap();
        let mut next = async || -> drover_core::wire::Heartbeat {
            let m = tokio::time::timeout(Duration::from_secs(5), beats.next()).await.expect("a beat").unwrap();
            serde_json::from_slice(&m.payload).unwrap()
        };
        assert_eq!(next().await.interval_ms, 200);
        // The fleet grows to 10 entries: 10 x 1000 / 10 = every second, followed within
        // 30 beats (6 s).
        let kv = env.js.get_key_value(env.names.nodes_bucket()).await.unwrap();
        for i in 0..8 {
            kv.put(format!("other-{i}"), "{}".into()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut beat = next().await;
        while beat.interval_ms == 200 {
            assert!(Instant::now() < deadline, "the interval did not follow the fleet");
            beat = next().await;
        }
        assert_eq!(beat.interval_ms, 1000);
        // The beats that follow come about a second apart.
        let t = Instant::now();
        let after = next().await;
        assert_eq!(after.interval_ms, 1000);
        assert!(t.elapsed() >= Duration::from_millis(700), "{:?}", t.elapsed());
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_a_command_and_publishes_its_result() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;

        let c = cmd("job1", "n1", 0, 1, "test.succeed", json!({ "message": "hello" }));
        let reply = env.send(&c).await;
        assert_eq!(reply.status, ReplyStatus::Accepted, "{reply:?}");
        let r = env.wait_result(&c.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded);
        assert_eq!(r.stdout, "hello\n");
        assert_eq!(r.metadata["step"], "step-0");

        // Nothing ran: unknown action, bad params, policy -> accepted, then a failed result.
        let bad = cmd("job1", "n1", 1, 1, "no.such", json!({}));
        assert_eq!(env.send(&bad).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&bad.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Failed);
        assert!(r.error.as_deref().unwrap().contains("unknown action `no.such`"), "{r:?}");
        let bad = cmd("job1", "n1", 2, 1, "test.succeed", json!({ "nope": 1 }));
        assert_eq!(env.send(&bad).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&bad.id, Duration::from_secs(10)).await;
        assert!(r.error.as_deref().unwrap().contains("nope"), "{r:?}");

        // A failing step reports its exit code and error.
        let f = cmd("job1", "n1", 3, 1, "test.fail", json!({ "exit_code": 7 }));
        assert_eq!(env.send(&f).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&f.id, Duration::from_secs(10)).await;
        assert_eq!((r.outcome, r.exit_code), (AttemptOutcome::Failed, Some(7)));

        // Malformed requests and commands for another node are rejected, not run.
        let raw = env.client.request(env.names.command("n1"), "{\"type\":\"run\",\"id\":42}".into()).await.unwrap();
        let reply: drover_core::wire::Reply = serde_json::from_slice(&raw.payload).unwrap();
        assert_eq!(reply.status, ReplyStatus::Rejected);
        assert!(reply.reason.unwrap().starts_with("malformed request"));
        let other = cmd("job1", "n2", 0, 1, "test.succeed", json!({}));
        let reply = env.request("n1", &Request::Run(other)).await;
        assert_eq!(reply.status, ReplyStatus::Rejected);
        assert!(reply.reason.unwrap().contains("node n2"));
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_command_never_runs_twice_also_across_restarts() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let file = env.dir.path().join("runs.txt");
        let append = |step: usize, script: String| {
            let mut c = cmd("job1", "n1", step, 1, "shell", json!({ "command": script }));
            c.timeout_ms = 20_000;
            c
        };
        let agent = env.start(env.config("n1")).await;

        let c = append(0, format!("echo ran >> {}", file.display()));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&c.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded, "{r:?}");
        assert_eq!(env.send(&c).await.status, ReplyStatus::Duplicate);
        assert_eq!(env.send(&c).await.status, ReplyStatus::Duplicate);

        // Re-sent while it still runs.
        let slow = append(1, format!("sleep 0.5; echo slow >> {}", file.display()));
        assert_eq!(env.send(&slow).await.status, ReplyStatus::Accepted);
        assert_eq!(env.send(&slow).await.status, ReplyStatus::Duplicate);
        env.wait_result(&slow.id, Duration::from_secs(10)).await;
        assert_eq!(lines(&file), 2);

        // A new attempt of the same step is a new command.
        let mut again = c.clone();
        again.id.attempt = 2;
        assert_eq!(env.send(&again).await.status, ReplyStatus::Accepted);
        env.wait_result(&again.id, Duration::from_secs(10)).await;
        assert_eq!(lines(&file), 3);

        // After a restart with the same data dir: still recorded, still not run.
        agent.shutdown().await;
        let agent = env.start(env.config("n1")).await;
        for c in [&c, &slow, &again] {
            assert_eq!(env.send(c).await.status, ReplyStatus::Duplicate, "{}", c.id);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lines(&file), 3, "a recorded command ran again");
        // Re-published results are dropped by the stream (same Nats-Msg-Id).
        for c in [&c, &slow, &again] {
            assert_eq!(env.results_of(&c.id).await.len(), 1, "{}", c.id);
        }
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_step_quickly() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let c = cmd("job1", "n1", 0, 1, "test.sleep", json!({ "duration": "30s" }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        assert_eq!(agent.running(), vec![c.id.key()]);
        let hb_deadline = Instant::now() + Duration::from_secs(5);
        while env.heartbeat("n1").await.unwrap().running != vec![c.id.key()] {
            assert!(Instant::now() < hb_deadline, "running step not in heartbeat");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t0 = Instant::now();
        let reply = env.request("n1", &Request::Cancel { id: c.id.clone(), epoch: 1 }).await;
        assert_eq!(reply.status, ReplyStatus::Cancelling);
        let r = env.wait_result(&c.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Cancelled, "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(3), "cancel took {:?}", t0.elapsed());
        let reply = env.request("n1", &Request::Cancel { id: c.id.clone(), epoch: 1 }).await;
        assert_eq!(reply.status, ReplyStatus::NotRunning);
        // A step that overruns its timeout is killed by the agent.
        let mut t = cmd("job1", "n1", 1, 1, "test.sleep", json!({ "duration": "30s" }));
        t.timeout_ms = 300;
        assert_eq!(env.send(&t).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&t.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::TimedOut, "{r:?}");
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_is_rejected_also_after_a_restart() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let mut c = cmd("job1", "n1", 0, 1, "test.succeed", json!({}));
        c.epoch = 5;
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        let mut old = cmd("job1", "n1", 1, 1, "test.succeed", json!({}));
        old.epoch = 4;
        let reply = env.send(&old).await;
        assert_eq!(reply.status, ReplyStatus::Rejected);
        assert_eq!(reply.reason.as_deref(), Some("stale epoch 4 < 5"));
        let reply = env.request("n1", &Request::Cancel { id: c.id.clone(), epoch: 3 }).await;
        assert_eq!(reply.status, ReplyStatus::Rejected);
        // Another job has its own epoch.
        let mut other = cmd("job2", "n1", 0, 1, "test.succeed", json!({}));
        other.epoch = 1;
        assert_eq!(env.send(&other).await.status, ReplyStatus::Accepted);
        // A newer owner raises it (even by a duplicate), persistently.
        c.epoch = 7;
        assert_eq!(env.send(&c).await.status, ReplyStatus::Duplicate);
        env.wait_result(&c.id, Duration::from_secs(10)).await;
        agent.shutdown().await;
        let agent = env.start(env.config("n1")).await;
        old.epoch = 6;
        let reply = env.send(&old).await;
        assert_eq!(reply.reason.as_deref(), Some("stale epoch 6 < 7"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(env.results_of(&old.id).await.is_empty(), "a rejected command must not publish a result");
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_interrupted_by_a_kill_is_reported_failed_after_restart() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let file = env.dir.path().join("runs.txt");
        let agent = env.start(env.config("n1")).await;
        let c =
            cmd("job1", "n1", 0, 1, "shell", json!({ "command": format!("echo ran >> {}; sleep 30", file.display()) }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines(&file) == 0 {
            assert!(Instant::now() < deadline, "step did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(env.results_of(&c.id).await.is_empty(), "a killed agent published a result");

        let agent = env.start(env.config("n1")).await;
        let r = env.wait_result(&c.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Failed);
        assert_eq!(r.error.as_deref(), Some(INTERRUPTED));
        // The controller re-sending it gets the recorded failure; nothing runs again.
        assert_eq!(env.send(&c).await.status, ReplyStatus::Duplicate);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lines(&file), 1);
        assert_eq!(env.results_of(&c.id).await.len(), 1);
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_undoes_a_file_write_with_its_metadata() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let new_file = env.dir.path().join("new.conf");
        let old_file = env.dir.path().join("old.conf");
        std::fs::write(&old_file, "old\n").unwrap();

        let w1 = cmd("job1", "n1", 0, 1, "file.write", json!({ "path": new_file, "content": "new\n" }));
        let w2 = cmd("job1", "n1", 1, 1, "file.write", json!({ "path": old_file, "content": "new\n" }));
        for w in [&w1, &w2] {
            assert_eq!(env.send(w).await.status, ReplyStatus::Accepted);
        }
        let r1 = env.wait_result(&w1.id, Duration::from_secs(10)).await;
        let r2 = env.wait_result(&w2.id, Duration::from_secs(10)).await;
        assert!(r1.changed && r2.changed);
        assert_eq!(std::fs::read_to_string(&new_file).unwrap(), "new\n");
        assert_eq!(std::fs::read_to_string(&old_file).unwrap(), "new\n");

        // Undo with the metadata from the result (what the controller sends).
        let mut rb1 = w1.clone();
        rb1.id.kind = CommandKind::Rollback;
        rb1.metadata = r1.metadata.clone();
        assert_eq!(env.send(&rb1).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&rb1.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded, "{r:?}");
        assert!(!new_file.exists(), "a new file is deleted by its rollback");

        // After a restart, a rollback without metadata gets it from the agent journal.
        agent.shutdown().await;
        let agent = env.start(env.config("n1")).await;
        let mut rb2 = w2.clone();
        rb2.id.kind = CommandKind::Rollback;
        assert_eq!(env.send(&rb2).await.status, ReplyStatus::Accepted);
        let r = env.wait_result(&rb2.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded, "{r:?}");
        assert_eq!(std::fs::read_to_string(&old_file).unwrap(), "old\n");
        assert_eq!(env.send(&rb2).await.status, ReplyStatus::Duplicate);
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_running_step_and_refuses_new_ones() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let c = cmd("job1", "n1", 0, 1, "test.sleep", json!({ "duration": "1s" }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        let t0 = Instant::now();
        let drain = tokio::spawn(agent.shutdown());
        let deadline = Instant::now() + Duration::from_secs(5);
        while env.heartbeat("n1").await.unwrap().status != AgentStatus::Draining {
            assert!(Instant::now() < deadline, "no draining heartbeat");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let late = cmd("job1", "n1", 1, 1, "test.succeed", json!({}));
        let reply = env.send(&late).await;
        assert_eq!(reply.status, ReplyStatus::Rejected);
        assert!(reply.reason.unwrap().contains("draining"));
        drain.await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(700), "shutdown did not wait for the step");
        // Both results are in the stream when shutdown returns.
        let r = env.results_of(&c.id).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome, AttemptOutcome::Succeeded, "{r:?}");
        let r = env.results_of(&late.id).await;
        assert_eq!(r.len(), 1);
        assert!(r[0].error.as_deref().unwrap().contains("draining"));
        assert_eq!(env.heartbeat("n1").await.unwrap().status, AgentStatus::Stopped);
        // Gone from the subject.
        let err = drover_bus::request_json::<_, drover_core::wire::Reply>(
            &env.client,
            env.names.command("n1"),
            &Request::Ping,
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(err.is_no_responders(), "{err}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_not_delivered_before_a_crash_is_published_after_restart() {
    tokio::time::timeout(LIMIT, async {
        let mut env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let c = cmd("job1", "n1", 0, 1, "test.sleep", json!({ "duration": "500ms" }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        // NATS goes away while the step runs: the result cannot be delivered.
        env.server.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        agent.kill();
        // NATS back (same store, new port), agent back with the same data dir.
        env.server = drover_bus::server::ManagedServer::start(&env.dir.path().join("nats")).unwrap();
        env.client = drover_bus::connect(env.server.url(), "test").await.unwrap();
        env.js = async_nats::jetstream::new(env.client.clone());
        let agent = env.start(env.config("n1")).await;
        let r = env.wait_result(&c.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded, "the finished result, not 'interrupted': {r:?}");
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_returned_in_a_reply_stays_delivered_across_a_graceful_restart() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let quick = |cfg: &mut drover_agent::AgentConfig| cfg.result_in_reply = Duration::from_millis(500);
        let mut cfg = env.config("n1");
        quick(&mut cfg);
        let agent = env.start(cfg).await;
        let c = cmd("jr", "n1", 0, 1, "echo", json!({ "message": "hi" }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Done);
        // A graceful stop writes the delivery mark: nothing to publish at the next start.
        agent.shutdown().await;
        let mut cfg = env.config("n1");
        quick(&mut cfg);
        let agent = env.start(cfg).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(env.results("jr", "n1").await.is_empty(), "published again after a graceful restart");
        // A second one, then a kill before any other line: its mark was never written, so
        // the next start publishes it (the controller ignores what it already applied).
        let d = cmd("jr", "n1", 1, 1, "echo", json!({ "message": "again" }));
        assert_eq!(env.send(&d).await.status, ReplyStatus::Done);
        agent.kill();
        let mut cfg = env.config("n1");
        quick(&mut cfg);
        let agent = env.start(cfg).await;
        let r = env.wait_result(&d.id, Duration::from_secs(10)).await;
        assert_eq!(r.outcome, AttemptOutcome::Succeeded);
        assert!(env.results_of(&c.id).await.is_empty(), "the first one was delivered for good");
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_per_data_dir_and_ids_are_checked() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let agent = env.start(env.config("n1")).await;
        let mut cfg = env.config("n2");
        cfg.data_dir = env.data_dir("n1");
        let err = drover_agent::Agent::start(cfg, env.client.clone()).await.err().expect("second agent on one dir");
        assert!(err.to_string().contains("in use by another drover agent"), "{err}");
        let err =
            drover_agent::Agent::start(env.config("web.example.com"), env.client.clone()).await.err().expect("bad id");
        assert!(err.to_string().contains("contains '.'"), "{err}");
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_timeout_cancels_the_running_step() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let mut cfg = env.config("n1");
        cfg.drain_timeout = Duration::from_millis(300);
        let agent = env.start(cfg).await;
        let c = cmd("job1", "n1", 0, 1, "test.sleep", json!({ "duration": "30s" }));
        assert_eq!(env.send(&c).await.status, ReplyStatus::Accepted);
        let t0 = Instant::now();
        agent.shutdown().await;
        assert!(t0.elapsed() < Duration::from_secs(5), "drain took {:?}", t0.elapsed());
        let r = env.results_of(&c.id).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].outcome, AttemptOutcome::Cancelled, "{r:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_command_is_answered_with_its_result_and_not_published() {
    tokio::time::timeout(LIMIT, async {
        let env = Env::new().await;
        let mut cfg = env.config("n1");
        cfg.result_in_reply = Duration::from_millis(500);
        let agent = env.start(cfg).await;
        let file = env.dir.path().join("count");
        let c = cmd("jq", "n1", 0, 1, "shell", json!({ "command": format!("echo once >> {}", file.display()) }));
        let reply = env.send(&c).await;
        assert_eq!(reply.status, ReplyStatus::Done, "{reply:?}");
        let result = reply.result.expect("the result in the reply");
        assert_eq!(result.id, c.id);
        assert_eq!(result.outcome, AttemptOutcome::Succeeded);
        // Delivered in the reply, which the controller stores: nothing is published.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(env.results("jq", "n1").await.is_empty(), "published as well as returned");
        assert!(env.stored(&env.names.result_record("jq", "n1")).await.is_empty(), "a record was published");
        // Sent again: answered from the journal with the same result, not run again.
        let again = env.send(&c).await;
        assert_eq!(again.status, ReplyStatus::Duplicate);
        assert_eq!(again.result.map(|r| r.id), Some(c.id.clone()));
        assert_eq!(lines(&file), 1);
        // A cancel for it (a restarted controller that never saw the result) gets the
        // recorded result back too.
        let cancel = env.request("n1", &Request::Cancel { id: c.id.clone(), epoch: 1 }).await;
        assert_eq!(cancel.status, ReplyStatus::NotRunning);
        assert_eq!(cancel.result.map(|r| r.outcome), Some(AttemptOutcome::Succeeded));
        // Sent again, it is published as well (the sender may never have seen the reply).
        let deadline = Instant::now() + Duration::from_secs(10);
        while env.results("jq", "n1").await.is_empty() {
            assert!(Instant::now() < deadline, "the result was not published for the duplicate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A command longer than the window is acknowledged first, its result published.
        let slow = cmd("jq", "n1", 1, 1, "test.sleep", json!({ "duration": "800ms" }));
        let reply = env.send(&slow).await;
        assert_eq!(reply.status, ReplyStatus::Accepted, "{reply:?}");
        assert!(reply.result.is_none());
        assert_eq!(env.wait_result(&slow.id, Duration::from_secs(10)).await.outcome, AttemptOutcome::Succeeded);
        // A sender that gave up on the first answer and sent the command again while it
        // ran gets `duplicate` without a result, so the result must be published.
        let quick = cmd("jq", "n1", 2, 1, "test.sleep", json!({ "duration": "300ms" }));
        let subject = env.names.command("n1");
        let gave_up = drover_bus::request_json::<_, drover_core::wire::Reply>(
            &env.client,
            subject,
            &Request::Run(quick.clone()),
            Duration::from_millis(100),
        )
        .await;
        assert!(gave_up.is_err(), "answered within 100 ms: {gave_up:?}");
        let again = env.send(&quick).await;
        assert_eq!((again.status, again.result.is_some()), (ReplyStatus::Duplicate, false));
        assert_eq!(env.wait_result(&quick.id, Duration::from_secs(10)).await.outcome, AttemptOutcome::Succeeded);
        agent.shutdown().await;
    })
    .await
    .expect("test timed out");
}
