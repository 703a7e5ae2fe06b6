//! Execution: timeouts and cancel kill the whole process group, output caps,
//! environment, secrets, dry run, the test.* and sleep actions.

mod common;

use std::time::{Duration, Instant};

use common::{ctx, dead, eventually, read_pids};
use drover_actions::{ActionError, ExecStatus, Registry, run_action, run_rollback};
use serde_json::json;

/// A script that starts two background sleeps, records every pid (its own
/// too), says "started" and waits.
fn spawning_script(pids: &std::path::Path, prelude: &str) -> String {
    let p = pids.display();
    format!("{prelude}sleep 30 & echo $! >> {p}; sleep 30 & echo $! >> {p}; echo $$ >> {p}; echo started; wait")
}

fn assert_all_dead(pids: &[i32]) {
    assert_eq!(pids.len(), 3, "script did not record its pids: {pids:?}");
    // The kill happened before run_action returned; allow the kernel a moment to reap.
    assert!(
        eventually(Duration::from_millis(200), || pids.iter().all(|&p| dead(p))),
        "processes left alive: {:?}",
        pids.iter().filter(|&&p| !dead(p)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn shell_timeout_kills_the_whole_group_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(1));
    let started = Instant::now();
    let r = run_action(&registry, "shell", json!({ "command": spawning_script(&pids, "") }), &c).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, ExecStatus::TimedOut, "{r:?}");
    assert!(took < Duration::from_secs(2), "took {took:?} for a 1s timeout");
    assert_eq!(r.stdout, "started\n", "output so far is kept");
    assert!(r.error.as_deref().unwrap_or("").contains("timed out after 1s"), "{:?}", r.error);
    assert_all_dead(&read_pids(&pids));
}

#[tokio::test]
async fn shell_cancel_kills_the_whole_group_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(60));
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let r = run_action(&registry, "shell", json!({ "command": spawning_script(&pids, "") }), &c).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, ExecStatus::Cancelled, "{r:?}");
    assert!(took < Duration::from_millis(1700), "took {took:?} for a cancel at 0.7s");
    assert_eq!(r.stdout, "started\n");
    assert_all_dead(&read_pids(&pids));
}

#[tokio::test]
async fn processes_ignoring_sigterm_get_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let registry = Registry::builtin();
    let c = ctx(Duration::from_millis(500));
    let started = Instant::now();
    let script = spawning_script(&pids, "trap '' TERM; ");
    let r = run_action(&registry, "shell", json!({ "command": script }), &c).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, ExecStatus::TimedOut);
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_all_dead(&read_pids(&pids));
}

#[tokio::test]
async fn background_leftovers_are_killed_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));
    let script = format!("sleep 30 >/dev/null 2>&1 & echo $! >> {0}; echo $$ >> {0}; echo $$ >> {0}", pids.display());
    let started = Instant::now();
    let r = run_action(&registry, "shell", json!({ "command": script }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_all_dead(&read_pids(&pids));
}

#[tokio::test]
async fn test_sleep_times_out_and_sleep_is_cancellable() {
    let registry = Registry::builtin();
    let r = run_action(&registry, "test.sleep", json!({ "duration": "30s" }), &ctx(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(r.status, ExecStatus::TimedOut);
    assert!(r.duration_ms < 1300, "{}", r.duration_ms);

    let c = ctx(Duration::from_secs(60));
    let cancel = c.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let r = run_action(&registry, "sleep", json!({ "duration": "30s" }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Cancelled);
    assert!(r.duration_ms < 1000, "{}", r.duration_ms);
    assert!(r.stdout.starts_with("interrupted after"), "{}", r.stdout);
}

#[tokio::test]
async fn output_is_capped_per_stream_with_an_explicit_marker() {
    let registry = Registry::builtin();
    let mut c = ctx(Duration::from_secs(20));
    c.output_cap = 1000;
    let script = "head -c 3000000 /dev/zero | tr '\\0' a; echo short >&2";
    let r = run_action(&registry, "shell", json!({ "command": script }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded);
    assert!(r.truncated);
    let (kept, marker) = r.stdout.split_at(1000);
    assert_eq!(kept, "a".repeat(1000));
    assert_eq!(marker, "\n[drover: stdout truncated: 2999000 more bytes not kept (cap 1000 bytes)]\n");
    assert_eq!(r.stderr, "short\n", "stderr has its own cap");

    let r = run_action(&registry, "test.output", json!({ "lines": 1000, "stream": "both" }), &c).await.unwrap();
    assert!(r.truncated);
    assert!(r.stdout.starts_with("line 1\nline 2\n"));
    assert!(r.stdout.ends_with("more bytes not kept (cap 1000 bytes)]\n"), "{}", r.stdout);
    assert!(r.stderr.contains("[drover: stderr truncated:"));

    c.output_cap = 1 << 20;
    let r = run_action(&registry, "test.output", json!({ "bytes": 5000 }), &c).await.unwrap();
    assert!(!r.truncated);
    assert_eq!(r.stdout.len(), 5000);
}

#[tokio::test]
async fn argv_commands_env_and_cwd() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(Duration::from_secs(10)).with_env("FROM_CTX", "ctx");
    let r = run_action(
        &registry,
        "shell",
        json!({
            "command": ["sh", "-c", "pwd; echo \"$FROM_CTX $MINE ${CARGO:-unset} $DROVER_STEP\""],
            "env": { "MINE": "mine" },
            "cwd": dir.path(),
        }),
        &c,
    )
    .await
    .unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded, "{r:?}");
    let canon = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(r.stdout, format!("{}\nctx mine unset test-step\n", canon.display()));
    assert_eq!(r.exit_code, Some(0));

    let r = run_action(&registry, "shell", json!({ "command": "exit 7" }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert_eq!(r.exit_code, Some(7));
    assert_eq!(r.error.as_deref(), Some("command exited with code 7"));

    let r = run_action(&registry, "shell", json!({ "command": ["/no/such/program"] }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("cannot start `/no/such/program`"));
}

#[tokio::test]
async fn shell_rollback_runs_the_rollback_command() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("m");
    let params = json!({
        "command": format!("touch {}", marker.display()),
        "rollback": ["sh", "-c", format!("rm {} && echo undone by rollback=$DROVER_ROLLBACK", marker.display())],
    });
    let c = ctx(Duration::from_secs(10));
    let r = run_action(&registry, "shell", params.clone(), &c).await.unwrap();
    assert!(r.changed && marker.exists());
    let rb = run_rollback(&registry, "shell", params, r.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert_eq!(rb.stdout, "undone by rollback=1\n");
    assert!(!marker.exists());

    let rb = run_rollback(&registry, "shell", json!({ "command": "true" }), json!(null), &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded);
    assert!(!rb.changed);
}

#[tokio::test]
async fn secrets_never_appear_in_results() {
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));
    let params = json!({
        "command": "echo token=$TOKEN; echo $TOKEN >&2; exit 3",
        "secret_env": { "TOKEN": "hunter2-s3cret" },
    });
    let r = run_action(&registry, "shell", params.clone(), &c).await.unwrap();
    assert_eq!(r.stdout, "token=***\n");
    assert_eq!(r.stderr, "***\n");
    let shown = serde_json::to_string(&r).unwrap();
    assert!(!shown.contains("hunter2"), "{shown}");
    let redacted = registry.redact_params("shell", &params);
    assert_eq!(redacted["secret_env"], json!({ "TOKEN": "***" }));
    assert_eq!(registry.secret_params("shell"), vec!["secret_env".to_string()]);
}

#[tokio::test]
async fn dry_run_is_refused_by_actions_that_cannot_preview() {
    let registry = Registry::builtin();
    let mut c = ctx(Duration::from_secs(10));
    c.dry_run = true;
    let e = run_action(&registry, "shell", json!({ "command": "touch /tmp/should-not-exist" }), &c).await.unwrap_err();
    assert!(matches!(e, ActionError::DryRunUnsupported(_)), "{e}");
    assert_eq!(e.to_string(), "action `shell` cannot preview its effect, so a dry run does not run it");
    let r = run_action(&registry, "sleep", json!({ "duration": "1h" }), &c).await.unwrap();
    assert_eq!(r.stdout, "would sleep 1h\n");
}

#[tokio::test]
async fn flaky_fails_the_first_attempts() {
    let registry = Registry::builtin();
    let mut c = ctx(Duration::from_secs(10));
    let mut statuses = Vec::new();
    for attempt in 1..=4 {
        c.attempt = attempt;
        let r = run_action(&registry, "test.flaky", json!({ "fail_times": 2 }), &c).await.unwrap();
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![ExecStatus::Failed, ExecStatus::Failed, ExecStatus::Succeeded, ExecStatus::Succeeded]);
}

#[tokio::test]
async fn test_actions_succeed_fail_and_roll_back() {
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));
    let r = run_action(&registry, "test.succeed", json!({}), &c).await.unwrap();
    assert_eq!((r.status, r.changed, r.stdout.as_str()), (ExecStatus::Succeeded, true, "ok\n"));
    let rb = run_rollback(&registry, "test.succeed", json!({}), r.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded);
    let rb = run_rollback(&registry, "test.succeed", json!({ "fail_rollback": true }), json!({}), &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Failed);
    let r = run_action(&registry, "test.fail", json!({ "message": "boom", "exit_code": 4 }), &c).await.unwrap();
    assert_eq!((r.status, r.exit_code, r.error.as_deref()), (ExecStatus::Failed, Some(4), Some("boom")));
    // `nodes` limits the failure to the listed nodes (the context's node is not listed).
    let elsewhere = json!({ "nodes": ["some-other-node"] });
    let r = run_action(&registry, "test.fail", elsewhere, &c).await.unwrap();
    assert_eq!((r.status, r.changed), (ExecStatus::Succeeded, false));
    let here = json!({ "nodes": [c.node_id.clone()] });
    let r = run_action(&registry, "test.fail", here, &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    let r = run_action(&registry, "echo", json!({ "message": "hi" }), &c).await.unwrap();
    assert_eq!((r.status, r.changed, r.stdout.as_str()), (ExecStatus::Succeeded, false, "hi\n"));
}

#[tokio::test]
async fn huge_timeouts_do_not_overflow() {
    let registry = Registry::builtin();
    let r = run_action(&registry, "echo", json!({ "message": "x" }), &ctx(Duration::MAX)).await.unwrap();
    assert!(r.status.is_success());
}
