//! service.* against a stand-in `systemctl` (tests/fixtures/fake-systemctl)
//! placed first on PATH through the context env; it keeps unit state in a temp dir.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ctx;
use drover_actions::{ExecContext, ExecStatus, Registry, run_action, run_rollback};
use serde_json::json;

struct Fake {
    _dir: tempfile::TempDir,
    state: PathBuf,
    ctx: ExecContext,
}

fn fake(units: &[(&str, &str, &str)]) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-systemctl");
    std::fs::copy(&script, bin.join("systemctl")).unwrap();
    std::fs::set_permissions(bin.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (unit, active, enabled) in units {
        std::fs::write(state.join(format!("{unit}.service")), "").unwrap();
        std::fs::write(state.join(format!("{unit}.active")), active).unwrap();
        std::fs::write(state.join(format!("{unit}.enabled")), enabled).unwrap();
    }
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let c =
        ctx(Duration::from_secs(10)).with_env("PATH", path).with_env("FAKE_SYSTEMCTL_DIR", state.display().to_string());
    Fake { _dir: dir, state, ctx: c }
}

impl Fake {
    fn state(&self, unit: &str) -> (String, String) {
        let read =
            |s: &str| std::fs::read_to_string(self.state.join(format!("{unit}.{s}"))).unwrap().trim().to_string();
        (read("active"), read("enabled"))
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.state.join("calls.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }
}

#[tokio::test]
async fn start_and_rollback_stop_again() {
    let f = fake(&[("web", "inactive", "disabled")]);
    let registry = Registry::builtin();
    let p = json!({ "name": "web" });
    let r = run_action(&registry, "service.start", p.clone(), &f.ctx).await.unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded, "{r:?}");
    assert!(r.changed);
    assert_eq!(f.state("web").0, "active");
    assert_eq!(r.metadata["previous"], json!({ "active": "inactive", "enabled": "disabled" }));
    assert!(f.calls().contains(&"start web".to_string()));

    // Starting an active unit changes nothing.
    let again = run_action(&registry, "service.start", p.clone(), &f.ctx).await.unwrap();
    assert!(!again.changed);

    let rb = run_rollback(&registry, "service.start", p, r.metadata, &f.ctx).await.unwrap();
    assert!(rb.status.is_success() && rb.changed, "{rb:?}");
    assert_eq!(f.state("web"), ("inactive".into(), "disabled".into()));
}

#[tokio::test]
async fn stop_enable_disable_restart_roll_back_to_the_previous_state() {
    let f = fake(&[("db", "active", "enabled"), ("cache", "inactive", "disabled")]);
    let registry = Registry::builtin();
    let db = json!({ "name": "db.service" });
    let cache = json!({ "name": "cache" });

    let r = run_action(&registry, "service.stop", db.clone(), &f.ctx).await.unwrap();
    assert_eq!(f.state("db").0, "inactive");
    run_rollback(&registry, "service.stop", db.clone(), r.metadata, &f.ctx).await.unwrap();
    assert_eq!(f.state("db").0, "active");

    let r = run_action(&registry, "service.disable", db.clone(), &f.ctx).await.unwrap();
    assert_eq!(f.state("db").1, "disabled");
    run_rollback(&registry, "service.disable", db.clone(), r.metadata, &f.ctx).await.unwrap();
    assert_eq!(f.state("db").1, "enabled");

    let r = run_action(&registry, "service.enable", cache.clone(), &f.ctx).await.unwrap();
    assert_eq!(f.state("cache").1, "enabled");
    run_rollback(&registry, "service.enable", cache.clone(), r.metadata, &f.ctx).await.unwrap();
    assert_eq!(f.state("cache").1, "disabled");

    let r = run_action(&registry, "service.restart", cache.clone(), &f.ctx).await.unwrap();
    assert!(r.changed);
    assert_eq!(f.state("cache").0, "active");
    run_rollback(&registry, "service.restart", cache.clone(), r.metadata, &f.ctx).await.unwrap();
    assert_eq!(f.state("cache").0, "inactive", "a unit that was stopped is stopped again");
}

#[tokio::test]
async fn status_reports_and_checks() {
    let f = fake(&[("web", "active", "enabled")]);
    let registry = Registry::builtin();
    let r = run_action(&registry, "service.status", json!({ "name": "web" }), &f.ctx).await.unwrap();
    assert!(r.status.is_success());
    assert_eq!(r.stdout, "web: active, enabled\n");
    let r = run_action(&registry, "service.status", json!({ "name": "web", "expect_active": false }), &f.ctx)
        .await
        .unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("expected web to be not active, it is active"));
}

#[tokio::test]
async fn unknown_units_fail_and_dry_run_changes_nothing() {
    let f = fake(&[("web", "inactive", "disabled")]);
    let registry = Registry::builtin();
    let r = run_action(&registry, "service.start", json!({ "name": "nope" }), &f.ctx).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("is-enabled nope"));

    let mut dry = f.ctx.clone();
    dry.dry_run = true;
    let r = run_action(&registry, "service.start", json!({ "name": "web" }), &dry).await.unwrap();
    assert!(r.changed);
    assert_eq!(r.stdout, "would run: systemctl start web\n");
    assert_eq!(f.state("web").0, "inactive");
}
