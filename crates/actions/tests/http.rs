//! http.check against a tiny local HTTP server on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::ctx;
use drover_actions::{ExecStatus, Registry, run_action};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves: /ok (200 "all good"), /down (503), /flaky (503 then 200),
/// /slow (answers after 5 s), /chunked (200, chunked "hello world"),
/// /auth (200 with the Authorization header echoed in the body).
async fn server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let hits = flaky_hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&req).to_string();
                let path = req.split(' ').nth(1).unwrap_or("/").to_string();
                let plain = |status: &str, body: &str| {
                    format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                };
                let resp = match path.as_str() {
                    "/ok" => plain("200 OK", "all good"),
                    "/down" => plain("503 Service Unavailable", "down"),
                    "/flaky" => {
                        if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                            plain("503 Service Unavailable", "warming up")
                        } else {
                            plain("200 OK", "ready")
                        }
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        plain("200 OK", "late")
                    }
                    "/chunked" => {
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
                            .to_string()
                    }
                    "/auth" => {
                        let auth = req
                            .lines()
                            .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                            .unwrap_or("none")
                            .to_string();
                        plain("200 OK", &auth)
                    }
                    _ => plain("404 Not Found", "no"),
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, flaky_hits)
}

#[tokio::test]
async fn status_and_body_checks() {
    let (base, _) = server().await;
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));

    let r = run_action(&registry, "http.check", json!({ "url": format!("{base}/ok"), "body_contains": "good" }), &c)
        .await
        .unwrap();
    assert_eq!(r.status, ExecStatus::Succeeded, "{r:?}");
    assert_eq!(r.metadata, json!({ "status": 200, "tries": 1 }));

    let r = run_action(&registry, "http.check", json!({ "url": format!("{base}/down") }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().ends_with("status 503 Service Unavailable, expected 200"));

    let r = run_action(&registry, "http.check", json!({ "url": format!("{base}/down"), "expect_status": 503 }), &c)
        .await
        .unwrap();
    assert!(r.status.is_success());

    let r = run_action(&registry, "http.check", json!({ "url": format!("{base}/ok"), "body_contains": "bad" }), &c)
        .await
        .unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("does not contain `bad`"));

    let r = run_action(
        &registry,
        "http.check",
        json!({ "url": format!("{base}/chunked"), "body_contains": "hello world" }),
        &c,
    )
    .await
    .unwrap();
    assert!(r.status.is_success(), "{r:?}");
}

#[tokio::test]
async fn retries_timeouts_and_refused_connections() {
    let (base, hits) = server().await;
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));

    let r = run_action(
        &registry,
        "http.check",
        json!({ "url": format!("{base}/flaky"), "retries": 2, "interval": "50ms" }),
        &c,
    )
    .await
    .unwrap();
    assert!(r.status.is_success(), "{r:?}");
    assert_eq!(r.metadata["tries"], json!(2));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert!(r.stdout.starts_with("try 1/3: status 503"), "{}", r.stdout);

    let started = std::time::Instant::now();
    let r = run_action(&registry, "http.check", json!({ "url": format!("{base}/slow"), "timeout": "200ms" }), &c)
        .await
        .unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("no response within 200ms"));
    assert!(started.elapsed() < Duration::from_secs(2));

    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r =
        run_action(&registry, "http.check", json!({ "url": format!("http://127.0.0.1:{port}/") }), &c).await.unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    assert!(r.error.unwrap().contains("connect 127.0.0.1"));
}

#[tokio::test]
async fn bearer_token_is_sent_and_redacted() {
    let (base, _) = server().await;
    let registry = Registry::builtin();
    let c = ctx(Duration::from_secs(10));
    let r = run_action(
        &registry,
        "http.check",
        json!({ "url": format!("{base}/auth"), "bearer_token": "tok-123", "body_contains": "Bearer tok-123" }),
        &c,
    )
    .await
    .unwrap();
    assert!(r.status.is_success(), "{r:?}");
    // A failing check whose message would include the token shows `***`.
    let r = run_action(
        &registry,
        "http.check",
        json!({ "url": format!("{base}/auth"), "bearer_token": "tok-123", "body_contains": "tok-123 nope" }),
        &c,
    )
    .await
    .unwrap();
    assert_eq!(r.status, ExecStatus::Failed);
    let shown = serde_json::to_string(&r).unwrap();
    assert!(!shown.contains("tok-123") && shown.contains("*** nope"), "{shown}");
}
