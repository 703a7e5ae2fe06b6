//! The lease between controllers, against a real nats-server: one leads at a time, a
//! leader whose lease was taken stops acting, a clean stop hands over at once, and a
//! vanished leader is replaced once its lease expires, under a higher epoch.

use drover_bus::server::ManagedServer;
use drover_controller::forward::{Answer, Ask};
use drover_controller::lease::{LEASE_KEY, LeaseRecord};
use drover_controller::runtime::Refusal;
use drover_controller::{ControllerConfig, ControllerHandle};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);

async fn controller(url: &str, id: &str) -> ControllerHandle {
    let client = drover_bus::connect(url, id).await.expect("connect");
    let cfg = ControllerConfig {
        id: id.into(),
        lease_ttl: TTL,
        api_addr: "127.0.0.1:0".parse().expect("addr"),
        ..ControllerConfig::default()
    };
    drover_controller::start(cfg, client).await.expect("controller starts")
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_leads_at_a_time_and_the_lease_moves_only_as_the_rules_say() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ManagedServer::start(&dir.path().join("nats")).expect("nats-server starts");
    let a = controller(server.url(), "a").await;
    assert!(a.role().leading, "a lone controller leads at once");
    let first_epoch = a.role().epoch;
    let b = controller(server.url(), "b").await;
    let rb = b.role();
    assert!(!rb.leading);
    assert_eq!((rb.leader.as_deref(), rb.epoch), (Some("a"), first_epoch));

    // Somebody else takes the lease (as a controller that judged it expired would): the
    // leader notices at its next renewal and stops acting.
    let client = drover_bus::connect(server.url(), "intruder").await.expect("connect");
    let names = drover_core::wire::Names::default();
    let topo = drover_bus::ensure_topology(client.clone(), &names, &Default::default()).await.expect("topology");
    let entry = topo.leases.entry(LEASE_KEY).await.expect("read").expect("a lease");
    let held: LeaseRecord = serde_json::from_slice(&entry.value).expect("lease json");
    assert_eq!(held.owner.as_deref(), Some("a"));
    let intruder =
        LeaseRecord { owner: Some("intruder".into()), epoch: held.epoch + 1, ttl_ms: 1000, renewed_at_ms: 0 };
    topo.leases
        .update(LEASE_KEY, serde_json::to_vec(&intruder).expect("json").into(), entry.revision)
        .await
        .expect("take the lease");
    until("a stops leading", TTL, || !a.role().leading).await;
    // Nobody leads while the intruder's lease runs: forwarded calls say so.
    match drover_controller::forward::remote(&client, &names, &Ask::Busy).await {
        Answer::Refused(Refusal::Unavailable(m)) => assert!(m.contains("no controller leads"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The intruder never renews: once its lease expires one of a and b takes over, under
    // a higher epoch, and only one.
    until("someone leads again", TTL * 4, || a.role().leading || b.role().leading).await;
    let (leader, standby) = if a.role().leading { (a, b) } else { (b, a) };
    assert!(leader.role().epoch > intruder.epoch);
    tokio::time::sleep(TTL).await;
    assert!(leader.role().leading && !standby.role().leading);

    // A clean stop hands the lease over at once (no TTL to wait).
    leader.shutdown().await;
    let took = until("the standby leads after a clean stop", TTL, || standby.role().leading).await;
    eprintln!("handover after a clean stop: {} ms", took.as_millis());
    // It answers forwarded calls now.
    assert!(matches!(drover_controller::forward::remote(&client, &names, &Ask::Busy).await, Answer::Busy(_)));

    // A leader that vanishes without a word is replaced after its TTL.
    let c = controller(server.url(), "c").await;
    assert!(!c.role().leading);
    let gone_at = Instant::now();
    standby.abandon();
    until("c leads after the leader vanished", TTL * 4, || c.role().leading).await;
    let took = gone_at.elapsed();
    eprintln!("takeover after the leader vanished: {} ms (TTL {} ms)", took.as_millis(), TTL.as_millis());
    assert!(took >= TTL - TTL / 4, "c took over before the lease could have expired: {took:?}");
    c.shutdown().await;
}
