//! `drover actions` and `drover exec` as a user runs them.

use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::Value;

fn drover() -> assert_cmd::Command {
    let mut cmd = cargo_bin_cmd!("drover");
    cmd.env_remove("DROVER_LOG").timeout(Duration::from_secs(60));
    cmd
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let out = drover().args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn actions_list_and_describe() {
    let o = run(&["actions", "list"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("NAME"));
    for name in
        ["echo", "sleep", "shell", "file.write", "package.install", "service.restart", "http.check", "test.flaky"]
    {
        assert!(o.stdout.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing:\n{}", o.stdout);
    }
    let o = run(&["actions", "describe", "file.write"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("  mode (octal mode, optional)"), "{}", o.stdout);
    assert!(o.stdout.contains("  path (string, required)"));
    assert!(o.stdout.contains("undo:    yes"));

    let o = run(&["actions", "describe", "shell", "-o", "json"]);
    assert_eq!(o.code, 0);
    let info: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(info["name"], "shell");
    assert_eq!(info["dry_run"], false);
    assert_eq!(info["params_schema"]["properties"]["secret_env"]["x-drover-secret"], true);

    let o = run(&["actions", "list", "-o", "json"]);
    let list: Vec<Value> = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(list.len(), 20);

    let o = run(&["actions", "describe", "nope"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("unknown action `nope`"));
}

#[test]
fn exec_success_failure_and_exit_codes() {
    let o = run(&["exec", "echo", "message=hello world"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("hello world\n--- echo: succeeded, unchanged"), "{}", o.stdout);

    let o = run(&["exec", "echo", "message=123"]);
    assert_eq!(o.code, 0, "a number given to a string param stays a string: {}", o.stderr);

    let o = run(&["exec", "test.fail", "message=boom"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.contains("--- error: boom"));

    let o = run(&["exec", "test.flaky", "fail_times=1", "--attempt", "2"]);
    assert_eq!(o.code, 0, "{}", o.stdout);

    let o = run(&["exec", "nope"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("unknown action `nope`"));
}

#[test]
fn exec_invalid_params_name_each_param() {
    let o = run(&["exec", "echo", "mesage=x"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("param `mesage`: unknown param (known params: message)"), "{}", o.stderr);
    assert!(o.stderr.contains("param `message`: required param missing"), "{}", o.stderr);
    assert_eq!(o.stdout, "");

    let o = run(&["exec", "file.write", "path=/tmp/x", "content=y", "mode=888"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("param `mode`"), "{}", o.stderr);

    let o = run(&["exec", "echo", "novalue"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("expected KEY=VALUE"));
}

#[test]
fn exec_policy_shell_and_paths() {
    let o = run(&["exec", "shell", "command=true"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("action `shell` is not allowed by policy"), "{}", o.stderr);
    assert!(o.stderr.trim_end().ends_with("pass --allow shell"), "{}", o.stderr);

    let o = run(&["exec", "--allow", "shell", "shell", "command=echo out; echo err >&2; exit 3"]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.starts_with("out\n"));
    assert_eq!(o.stderr, "err\n");
    assert!(o.stdout.contains("exit code 3"));

    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("ok");
    std::fs::create_dir(&allowed).unwrap();
    let outside = dir.path().join("x.conf");
    let o = run(&[
        "exec",
        "--allow-path",
        allowed.to_str().unwrap(),
        "file.write",
        &format!("path={}", outside.display()),
        "content=x",
    ]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("outside the allowed paths"), "{}", o.stderr);
    assert!(!outside.exists());

    let o = run(&["exec", "--dry-run", "--allow", "shell", "shell", "command=true"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("cannot preview"));
}

#[test]
fn exec_json_result_then_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("motd");
    std::fs::write(&path, "before\n").unwrap();
    let content = dir.path().join("content.txt");
    std::fs::write(&content, "after\n").unwrap();
    let o = run(&[
        "exec",
        "-o",
        "json",
        "file.write",
        &format!("path={}", path.display()),
        &format!("content=@{}", content.display()),
        "mode=0600",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let record: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(record["action"], "file.write");
    assert_eq!(record["result"]["status"], "succeeded");
    assert_eq!(record["result"]["metadata"]["previous"]["data"], "before\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");

    let saved = dir.path().join("result.json");
    std::fs::write(&saved, &o.stdout).unwrap();
    let o = run(&["exec", "--rollback", saved.to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("--- rollback of file.write: succeeded, changed"), "{}", o.stdout);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\n");

    // A rollback result cannot itself be rolled back.
    let o = run(&["exec", "-o", "json", "--rollback", saved.to_str().unwrap()]);
    std::fs::write(&saved, &o.stdout).unwrap();
    let o = run(&["exec", "--rollback", saved.to_str().unwrap()]);
    assert_eq!(o.code, 2);
}

#[test]
fn exec_secrets_are_redacted_and_asked_for_again_on_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("m");
    let o = run(&[
        "exec",
        "--allow",
        "shell",
        "-o",
        "json",
        "shell",
        &format!("command=echo $TOKEN > {}; echo $TOKEN", marker.display()),
        &format!("rollback=rm {}", marker.display()),
        "secret_env.TOKEN=hunter2",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!o.stdout.contains("hunter2"), "{}", o.stdout);
    let record: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(record["result"]["stdout"], "***\n");
    assert_eq!(record["params"]["secret_env"]["TOKEN"], "***");
    assert_eq!(record["redacted"][0], "secret_env");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "hunter2\n");

    let saved = dir.path().join("r.json");
    std::fs::write(&saved, &o.stdout).unwrap();
    let o = run(&["exec", "--allow", "shell", "--rollback", saved.to_str().unwrap()]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("`secret_env` were redacted"), "{}", o.stderr);
    let o = run(&["exec", "--allow", "shell", "--rollback", saved.to_str().unwrap(), "secret_env.TOKEN=hunter2"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!marker.exists());
}

#[test]
fn exec_timeout_kills_and_exits_1() {
    let started = Instant::now();
    let o = run(&["exec", "--timeout", "1s", "-o", "json", "test.sleep", "duration=30s"]);
    assert_eq!(o.code, 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    let record: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(record["result"]["status"], "timed_out");
}
