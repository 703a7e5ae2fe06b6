//! package.* for real with apt/dpkg: two versions of a tiny locally built
//! `.deb` (`drover-test-pkg`) in a local file repository, reached through an
//! `APT_CONFIG` given in the context env that points apt at that repository
//! only (own sources list, lists and cache dirs: the system's repos and
//! indexes are not used or touched). Needs root, apt-get, dpkg-deb and
//! sha256sum; otherwise it prints why and skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::ctx;
use drover_actions::{ExecContext, ExecStatus, Registry, run_action, run_rollback};
use serde_json::json;

const PKG: &str = "drover-test-pkg";

fn have(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for p in ["apt-get", "dpkg", "dpkg-deb", "dpkg-query", "sha256sum"] {
        if !have(p) {
            return Some(format!("`{p}` is not installed"));
        }
    }
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn build_deb(work: &Path, repo: &Path, version: &str) -> PathBuf {
    let root = work.join(format!("build-{version}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/share").join(PKG)).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: drover tests <tests@drover.invalid>\n\
             Section: misc\nPriority: optional\nDescription: drover test package\n Installed by drover's package action tests.\n"
        ),
    )
    .unwrap();
    std::fs::write(root.join("usr/share").join(PKG).join("VERSION"), format!("{version}\n")).unwrap();
    let deb = repo.join(format!("{PKG}_{version}_all.deb"));
    run(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&root).arg(&deb));
    deb
}

/// A flat repository index, written by hand (no dpkg-dev needed).
fn write_packages(repo: &Path, debs: &[PathBuf]) {
    let mut index = String::new();
    for deb in debs {
        let fields = run(Command::new("dpkg-deb").arg("-f").arg(deb));
        let size = std::fs::metadata(deb).unwrap().len();
        let sha = run(Command::new("sha256sum").arg(deb));
        let sha = sha.split_whitespace().next().unwrap();
        let name = deb.file_name().unwrap().to_string_lossy();
        index.push_str(&fields);
        index.push_str(&format!("Filename: ./{name}\nSize: {size}\nSHA256: {sha}\n\n"));
    }
    std::fs::write(repo.join("Packages"), index).unwrap();
}

/// An apt.conf that uses only the local repository.
fn apt_config(work: &Path, repo: &Path) -> PathBuf {
    for d in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    std::fs::write(work.join("sources.list"), format!("deb [trusted=yes] file:{} ./\n", repo.display())).unwrap();
    let conf = work.join("apt.conf");
    let w = work.display();
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::sourcelist \"{w}/sources.list\";\nDir::Etc::sourceparts \"{w}/sources.list.d\";\n\
             Dir::State::Lists \"{w}/lists\";\nDir::Cache \"{w}/cache\";\nAcquire::Languages \"none\";\n"
        ),
    )
    .unwrap();
    conf
}

fn installed() -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}|${Version}", PKG]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, version) = text.split_once('|')?;
    (status.chars().nth(1) == Some('i')).then(|| version.to_string())
}

/// Removes the test package whatever happens.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", PKG]).output();
    }
}

async fn exec(registry: &Registry, action: &str, p: serde_json::Value, c: &ExecContext) -> drover_actions::ExecResult {
    let r = run_action(registry, action, p, c).await.unwrap();
    eprintln!("--- {action}: {:?} {:?}\n{}{}", r.status, r.error, r.stdout, r.stderr);
    r
}

#[tokio::test]
async fn apt_install_upgrade_remove_and_roll_back_exactly() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping the apt package test: {why}");
        return;
    }
    let _purge = Purge;
    let _ = Command::new("dpkg").args(["--purge", PKG]).output();
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let debs = vec![build_deb(work.path(), &repo, "1.0"), build_deb(work.path(), &repo, "2.0")];
    write_packages(&repo, &debs);
    let conf = apt_config(work.path(), &repo);
    let c = ctx(Duration::from_secs(120)).with_env("APT_CONFIG", conf.display().to_string());
    let registry = Registry::builtin();

    // Install v1 (absent before).
    let p1 = json!({ "name": PKG, "version": "1.0", "update": true });
    let install = exec(&registry, "package.install", p1.clone(), &c).await;
    assert_eq!(install.status, ExecStatus::Succeeded);
    assert!(install.changed);
    assert_eq!(install.metadata["previous"], json!(null));
    assert_eq!(install.metadata["current"], json!("1.0"));
    assert_eq!(installed().as_deref(), Some("1.0"));

    // Installing it again changes nothing.
    let again = exec(&registry, "package.install", p1.clone(), &c).await;
    assert!(again.status.is_success() && !again.changed);

    // Upgrade to the newest (2.0), then roll back to exactly 1.0.
    let up_params = json!({ "name": PKG });
    let up = exec(&registry, "package.upgrade", up_params.clone(), &c).await;
    assert_eq!(up.status, ExecStatus::Succeeded);
    assert_eq!((up.metadata["previous"].clone(), up.metadata["current"].clone()), (json!("1.0"), json!("2.0")));
    assert_eq!(installed().as_deref(), Some("2.0"));
    let rb = run_rollback(&registry, "package.upgrade", up_params, up.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert_eq!(installed().as_deref(), Some("1.0"));

    // Roll back the first install: the package was absent, so it is removed.
    let rb = run_rollback(&registry, "package.install", p1, install.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert_eq!(installed(), None);

    // Upgrade never installs.
    let r = exec(&registry, "package.upgrade", json!({ "name": PKG }), &c).await;
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("is not installed"));

    // Remove 2.0 and roll back: 2.0 is back.
    let r = exec(&registry, "package.install", json!({ "name": PKG, "version": "2.0" }), &c).await;
    assert!(r.status.is_success());
    let mut dry = c.clone();
    dry.dry_run = true;
    let r = exec(&registry, "package.remove", json!({ "name": PKG }), &dry).await;
    assert!(r.changed && r.stdout.starts_with("would remove"));
    assert_eq!(installed().as_deref(), Some("2.0"), "a dry run changes nothing");
    let rm = exec(&registry, "package.remove", json!({ "name": PKG }), &c).await;
    assert_eq!(rm.status, ExecStatus::Succeeded);
    assert_eq!(installed(), None);
    let rb = run_rollback(&registry, "package.remove", json!({ "name": PKG }), rm.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert_eq!(installed().as_deref(), Some("2.0"));
}
