//! file.write / file.delete and their rollbacks restore bytes, mode and absence exactly.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::ctx;
use drover_actions::{ExecStatus, Registry, run_action, run_rollback};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn write_then_rollback_deletes_a_file_that_did_not_exist() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.conf");
    let c = ctx(Duration::from_secs(5));
    let params = json!({ "path": path, "content": "listen 80;\n", "mode": "0640" });
    let r = run_action(&registry, "file.write", params.clone(), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded, "{r:?}");
    assert!(r.changed);
    assert_eq!(std::fs::read(&path).unwrap(), b"listen 80;\n");
    assert_eq!(mode(&path), 0o640);
    assert_eq!(r.metadata["existed"], json!(false));

    // Same write again: unchanged.
    let again = run_action(&registry, "file.write", params.clone(), &c).await.unwrap();
    assert!(!again.changed);

    let rb = run_rollback(&registry, "file.write", params.clone(), r.metadata.clone(), &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert!(rb.changed);
    assert!(!path.exists());
    // A second rollback finds nothing to do.
    let rb = run_rollback(&registry, "file.write", params, r.metadata, &c).await.unwrap();
    assert!(!rb.changed);
    // No temp files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn write_then_rollback_restores_bytes_mode_and_owner_exactly() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob.bin");
    let original: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, b'\n']).collect();
    std::fs::write(&path, &original).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4751)).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    let c = ctx(Duration::from_secs(5));

    let params = json!({ "path": path, "content": "text now", "mode": "0600" });
    let r = run_action(&registry, "file.write", params.clone(), &c).await.unwrap();
    assert!(r.changed);
    assert_eq!(std::fs::read(&path).unwrap(), b"text now");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(r.metadata["existed"], json!(true));
    assert_eq!(r.metadata["previous"]["encoding"], json!("base64"), "non-UTF-8 content is kept as base64");
    assert_eq!(r.metadata["previous_mode"], json!("4751"));

    // The metadata survives a JSON round trip (as in an agent journal).
    let meta: serde_json::Value = serde_json::from_str(&serde_json::to_string(&r.metadata).unwrap()).unwrap();
    let rb = run_rollback(&registry, "file.write", params, meta, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), original);
    assert_eq!(after.permissions().mode() & 0o7777, 0o4751);
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
}

#[tokio::test]
async fn write_keeps_the_mode_of_an_existing_file_and_follows_symlinks() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.conf");
    std::fs::write(&target, "old\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let c = ctx(Duration::from_secs(5));
    let params = json!({ "path": link, "content": "new\n" });
    let r = run_action(&registry, "file.write", params.clone(), &c).await.unwrap();
    assert!(r.changed);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
    assert_eq!(mode(&target), 0o600);
    run_rollback(&registry, "file.write", params, r.metadata, &c).await.unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
}

#[tokio::test]
async fn base64_content_and_dry_run() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b");
    let mut c = ctx(Duration::from_secs(5));
    c.dry_run = true;
    let params = json!({ "path": path, "content": "AAEC/w==", "encoding": "base64" });
    let r = run_action(&registry, "file.write", params.clone(), &c).await.unwrap();
    assert!(r.changed && r.stdout.starts_with("would write"), "{r:?}");
    assert!(!path.exists(), "a dry run changes nothing");
    c.dry_run = false;
    run_action(&registry, "file.write", params, &c).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![0, 1, 2, 255]);
}

#[tokio::test]
async fn delete_then_rollback_recreates_the_file() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.txt");
    std::fs::write(&path, "precious\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o751)).unwrap();
    let c = ctx(Duration::from_secs(5));
    let params = json!({ "path": path });
    let r = run_action(&registry, "file.delete", params.clone(), &c).await.unwrap();
    assert!(r.changed && !path.exists());
    let rb = run_rollback(&registry, "file.delete", params.clone(), r.metadata, &c).await.unwrap();
    assert_eq!(rb.status, ExecStatus::Succeeded, "{rb:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
    assert_eq!(mode(&path), 0o751);

    // Deleting an absent file is unchanged, and its rollback leaves it absent.
    let absent = json!({ "path": dir.path().join("never") });
    let r = run_action(&registry, "file.delete", absent.clone(), &c).await.unwrap();
    assert!(r.status.is_success() && !r.changed);
    let rb = run_rollback(&registry, "file.delete", absent, r.metadata, &c).await.unwrap();
    assert!(rb.status.is_success() && !rb.changed);
    assert!(!dir.path().join("never").exists());
}

#[tokio::test]
async fn bad_metadata_and_directories_fail_clearly() {
    let registry = Registry::builtin();
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(Duration::from_secs(5));
    let r = run_action(&registry, "file.write", json!({ "path": dir.path(), "content": "x" }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("is not a regular file"));
    let rb =
        run_rollback(&registry, "file.write", json!({ "path": "/tmp/x", "content": "" }), json!({ "nope": 1 }), &c)
            .await
            .unwrap();
    assert_eq!(rb.status, ExecStatus::Failed);
    assert!(rb.error.unwrap().starts_with("invalid rollback metadata for `file.write`"));
}
