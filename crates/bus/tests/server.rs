//! The managed nats-server starts on a free loopback port, serves JetStream, and stops.

use drover_bus::server::ManagedServer;
use drover_bus::{TopologyConfig, connect, ensure_topology};
use drover_core::wire::Names;

#[tokio::test]
async fn starts_serves_jetstream_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ManagedServer::start(dir.path()).unwrap();
    assert!(server.url().starts_with("nats://127.0.0.1:"), "{}", server.url());
    let client = connect(server.url(), "test").await.unwrap();
    // The server's own limit (1 MiB by default), less the headroom asked for.
    assert_eq!(drover_bus::payload_limit(&client, 1024), 1024 * 1024 - 1024);
    let topo = ensure_topology(client.clone(), &Names::default(), &TopologyConfig::default()).await.unwrap();
    // Idempotent: a second process doing the same gets the same buckets.
    ensure_topology(client.clone(), &Names::default(), &TopologyConfig::default()).await.unwrap();
    topo.jobs.put("j1", "x".into()).await.unwrap();
    assert_eq!(topo.jobs.get("j1").await.unwrap().unwrap(), "x".as_bytes());
    let pid = server.pid().unwrap();
    server.stop();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z")).unwrap_or(true)
    );
}
