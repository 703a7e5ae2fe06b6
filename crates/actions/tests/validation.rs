//! Params validation (errors name the param) and the policy (actions and paths).

mod common;

use std::time::Duration;

use common::ctx;
use drover_actions::{ActionError, ExecContext, ParamError, Policy, Registry, run_action};
use serde_json::{Value, json};

fn errors(action: &str, params: Value) -> Vec<String> {
    Registry::builtin().validate_params(action, &params).unwrap_err().iter().map(ToString::to_string).collect()
}

#[test]
fn unknown_params_are_rejected_by_name() {
    assert_eq!(
        errors("echo", json!({ "message": "hi", "mesage": "x" })),
        vec!["param `mesage`: unknown param (known params: message)"]
    );
    assert_eq!(
        errors("file.write", json!({ "path": "/tmp/x", "content": "", "owner": "root" })),
        vec!["param `owner`: unknown param (known params: content, encoding, mode, path)"]
    );
}

#[test]
fn missing_params_are_named() {
    assert_eq!(errors("echo", json!({})), vec!["param `message`: required param missing"]);
    let e = errors("file.write", json!({ "content": "x" }));
    assert_eq!(e, vec!["param `path`: required param missing"]);
}

#[test]
fn wrong_types_and_values_are_named() {
    assert_eq!(errors("echo", json!({ "message": 5 })), vec!["param `message`: expected string, got 5"]);
    assert_eq!(
        errors("shell", json!({ "command": "true", "env": { "FOO": 1 } })),
        vec!["param `env.FOO`: expected string, got 1"]
    );
    assert_eq!(
        errors("shell", json!({ "command": 5 })),
        vec!["param `command`: expected list of strings or string, got 5"]
    );
    assert_eq!(
        errors("shell", json!({ "command": ["ls", 3] })),
        vec!["param `command`: expected list of strings or string, got [\"ls\",3]"]
    );
    assert_eq!(
        errors("file.write", json!({ "path": "/tmp/x", "content": "", "mode": "0999" })),
        vec!["param `mode`: \"0999\" does not match the pattern `^[0-7]{3,4}$` (e.g. \"0644\", \"0755\")"]
    );
    assert_eq!(
        errors("file.write", json!({ "path": "/tmp/x", "content": "", "encoding": "hex" })),
        vec!["param `encoding`: expected one of \"utf8\", \"base64\", got \"hex\""]
    );
    assert_eq!(
        errors("http.check", json!({ "url": "http://x", "expect_status": 99 })),
        vec!["param `expect_status`: must be at least 100, got 99"]
    );
    assert_eq!(errors("echo", json!([1])), vec!["params: expected an object of params, got [1]"]);
}

#[test]
fn semantic_checks_name_the_param() {
    let e = errors("sleep", json!({ "duration": "5 parsecs" }));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("param `duration`: invalid duration `5 parsecs`"), "{e:?}");
    assert_eq!(
        errors("file.write", json!({ "path": "relative/x", "content": "" })),
        vec!["param `path`: must be an absolute path"]
    );
    assert_eq!(
        errors("http.check", json!({ "url": "https://example.org/" })),
        vec!["param `url`: https is not supported yet; use an http:// URL"]
    );
    assert_eq!(
        errors("test.output", json!({ "bytes": 1, "lines": 1 })),
        vec!["param `lines`: give `bytes` or `lines`, not both"]
    );
    assert_eq!(errors("shell", json!({ "command": [] })), vec!["param `command`: must not be empty"]);
}

#[test]
fn every_builtin_schema_compiles_and_forbids_unknown_params() {
    let registry = Registry::builtin();
    let list = registry.list();
    assert_eq!(list.len(), 20);
    for info in list {
        assert_eq!(info.params_schema["additionalProperties"], json!(false), "{}", info.name);
        assert_eq!(info.params_schema["title"], json!(info.name));
        let e = registry.validate_params(&info.name, &json!({ "zzz": 1 })).unwrap_err();
        assert!(e.contains(&ParamError::new("zzz", e[0].message.clone())) || e.iter().any(|p| p.param == "zzz"));
    }
    assert_eq!(registry.catalog().len(), 20);
}

#[tokio::test]
async fn run_action_rejects_before_running() {
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(5));
    let e = run_action(&registry, "nope", json!({}), &c).await.unwrap_err();
    assert_eq!(e.to_string(), "unknown action `nope` (`drover actions list` shows the available actions)");
    let e = run_action(&registry, "echo", json!({ "msg": "x" }), &c).await.unwrap_err();
    match e {
        ActionError::InvalidParams(errs) => {
            let params: Vec<&str> = errs.iter().map(|e| e.param.as_str()).collect();
            assert_eq!(params, vec!["msg", "message"]);
        }
        other => panic!("unexpected {other}"),
    }
}

#[tokio::test]
async fn shell_is_denied_unless_allowed_by_name() {
    let registry = Registry::builtin();
    let c = ExecContext::default();
    let e = run_action(&registry, "shell", json!({ "command": "true" }), &c).await.unwrap_err();
    assert!(matches!(e, ActionError::PolicyDenied { .. }));
    assert!(e.to_string().starts_with("action `shell` is not allowed by policy"), "{e}");

    let wildcard = Policy { allow: vec!["*".into(), "s*".into()], ..Policy::default() };
    let c = ExecContext::default().with_policy(wildcard);
    assert!(run_action(&registry, "shell", json!({ "command": "true" }), &c).await.is_err());

    let named = Policy { allow: vec!["shell".into()], ..Policy::default() };
    let c = ExecContext::default().with_policy(named);
    let r = run_action(&registry, "shell", json!({ "command": "true" }), &c).await.unwrap();
    assert!(r.status.is_success());
    // ... and only shell: echo matches no allow pattern.
    let e = run_action(&registry, "echo", json!({ "message": "x" }), &c).await.unwrap_err();
    assert!(e.to_string().contains("matches no allow pattern"), "{e}");

    let deny = Policy { allow: vec!["*".into()], deny: vec!["package.*".into()], paths: vec![] };
    let c = ExecContext::default().with_policy(deny);
    let e = run_action(&registry, "package.install", json!({ "name": "x" }), &c).await.unwrap_err();
    assert!(e.to_string().contains("deny pattern `package.*`"), "{e}");
}

#[tokio::test]
async fn file_paths_outside_the_allowlist_are_refused() {
    let registry = Registry::builtin();
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("allowed");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(allowed.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.conf"), "keep").unwrap();
    // A symlink inside the allowed dir pointing outside, to a file and to a dir.
    std::os::unix::fs::symlink(outside.join("secret.conf"), allowed.join("link.conf")).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("linkdir")).unwrap();

    let policy = Policy { paths: vec![allowed.clone()], ..Policy::default() };
    let c = ExecContext::default().with_policy(policy);
    let write = |path: std::path::PathBuf| json!({ "path": path, "content": "pwned" });

    let ok = run_action(&registry, "file.write", write(allowed.join("sub/app.conf")), &c).await.unwrap();
    assert!(ok.status.is_success());

    for path in [
        outside.join("new.conf"),
        allowed.join("link.conf"),
        allowed.join("linkdir/new.conf"),
        allowed.join("sub/../../outside/secret.conf"),
        allowed.join("../outside/new.conf"),
    ] {
        let e = run_action(&registry, "file.write", write(path.clone()), &c).await.unwrap_err();
        assert!(matches!(e, ActionError::PathDenied { .. }), "{path:?}: {e}");
        assert!(e.to_string().contains("outside the allowed paths"), "{e}");
        let e = run_action(&registry, "file.delete", json!({ "path": path }), &c).await.unwrap_err();
        assert!(matches!(e, ActionError::PathDenied { .. }));
    }
    assert_eq!(std::fs::read_to_string(outside.join("secret.conf")).unwrap(), "keep");
    assert!(!outside.join("new.conf").exists());

    // Rollback metadata pointing outside is refused too.
    let meta = json!({ "path": outside.join("secret.conf"), "existed": false, "previous": null,
        "previous_mode": null, "previous_uid": null, "previous_gid": null });
    let e = drover_actions::run_rollback(&registry, "file.write", write(allowed.join("x")), meta, &c).await.unwrap();
    assert!(!e.status.is_success());
    assert!(e.error.unwrap().contains("outside the allowed paths"));
    assert!(outside.join("secret.conf").exists());
}
