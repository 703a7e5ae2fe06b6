//! drover-bus: the NATS and JetStream plumbing the controller and the agent share.
//!
//! Connecting, creating the streams and key-value buckets (idempotently, with the replica
//! count from config), publishing with de-duplication ids, and JSON request/reply.

pub mod server;

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use drover_core::wire::Names;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    #[error("JetStream {what}: {message}")]
    JetStream { what: String, message: String },
    #[error("publishing to {subject}: {message}")]
    Publish { subject: String, message: String },
    #[error("request to {subject}: {message}")]
    Request { subject: String, message: String, no_responders: bool },
    #[error("bad message on {subject}: {message}")]
    Decode { subject: String, message: String },
}

impl BusError {
    fn js(what: impl Into<String>, e: impl std::fmt::Display) -> BusError {
        BusError::JetStream { what: what.into(), message: e.to_string() }
    }

    /// Nobody listens on the subject (yet): the node is not reachable now.
    pub fn is_no_responders(&self) -> bool {
        matches!(self, BusError::Request { no_responders: true, .. })
    }
}

/// Connect with reconnects; the name shows in the server's connection list. `url` may
/// list several servers of a cluster, comma-separated (`nats://a:4222,nats://b:4222`);
/// the client fails over between them.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(servers)
        .await
        .map_err(|source| BusError::Connect { url: url.to_string(), source })
}

/// The NATS default message limit, assumed until the server has said its own.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The largest payload to send on `client`, `headroom` bytes (for headers and framing)
/// below the server's limit: an atomic read, kept current by async-nats at every
/// (re)connection. Before the first connection the NATS default (1 MiB) is assumed.
pub fn payload_limit(client: &async_nats::Client, headroom: usize) -> usize {
    match client.max_payload() {
        0 => DEFAULT_MAX_PAYLOAD,
        m => m,
    }
    .saturating_sub(headroom)
}

/// Retention and replication of drover's streams and buckets.
#[derive(Debug, Clone)]
pub struct TopologyConfig {
    /// Replicas of every stream and bucket (3 in a cluster).
    pub replicas: usize,
    /// How long step results are kept.
    pub results_max_age: Duration,
    /// How long job journals are kept.
    pub events_max_age: Duration,
    /// Window in which a re-published result with the same id is dropped.
    pub duplicate_window: Duration,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            replicas: 1,
            results_max_age: Duration::from_secs(14 * 24 * 3600),
            events_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(20 * 60),
        }
    }
}

/// Handles on every stream and bucket.
#[derive(Clone)]
pub struct Topology {
    pub names: Names,
    pub js: jetstream::Context,
    pub nodes: kv::Store,
    pub heartbeats: kv::Store,
    pub jobs: kv::Store,
    /// The controllers' lease: who leads, under which fencing epoch.
    pub leases: kv::Store,
    /// Whole step results too large for one message (see `StepResult::full_output`).
    pub outputs: object_store::ObjectStore,
}

/// Create (or reuse) the streams and buckets. Safe to call from every process at start.
pub async fn ensure_topology(
    client: async_nats::Client,
    names: &Names,
    cfg: &TopologyConfig,
) -> Result<Topology, BusError> {
    let js = jetstream::new(client);
    let results = stream::Config {
        name: names.results_stream(),
        subjects: vec![names.all_results()],
        max_age: cfg.results_max_age,
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        allow_direct: true,
        ..Default::default()
    };
    js.get_or_create_stream(results)
        .await
        .map_err(|e| BusError::js(format!("stream {}", names.results_stream()), e))?;
    let events = stream::Config {
        name: names.events_stream(),
        subjects: vec![names.all_events()],
        max_age: cfg.events_max_age,
        num_replicas: cfg.replicas,
        allow_direct: true,
        ..Default::default()
    };
    js.get_or_create_stream(events).await.map_err(|e| BusError::js(format!("stream {}", names.events_stream()), e))?;
    let bucket = |name: String, description: &str| kv::Config {
        bucket: name,
        description: description.to_string(),
        history: 1,
        num_replicas: cfg.replicas,
        ..Default::default()
    };
    let nodes = ensure_kv(&js, bucket(names.nodes_bucket(), "drover node registrations")).await?;
    let heartbeats = ensure_kv(&js, bucket(names.heartbeats_bucket(), "drover node heartbeats")).await?;
    let jobs =
        ensure_kv(&js, kv::Config { max_age: cfg.events_max_age, ..bucket(names.jobs_bucket(), "drover job records") })
            .await?;
    let leases = ensure_kv(&js, bucket(names.leases_bucket(), "drover controller lease")).await?;
    let outputs_name = names.outputs_bucket();
    let outputs = match js.get_object_store(&outputs_name).await {
        Ok(store) => store,
        Err(_) => {
            let cfg = object_store::Config {
                bucket: outputs_name.clone(),
                description: Some("drover step results too large for one message".into()),
                max_age: cfg.results_max_age,
                num_replicas: cfg.replicas,
                ..Default::default()
            };
            match js.create_object_store(cfg).await {
                Ok(store) => store,
                // Another process created it between our two calls.
                Err(e) => js
                    .get_object_store(&outputs_name)
                    .await
                    .map_err(|_| BusError::js(format!("object store {outputs_name}"), e))?,
            }
        }
    };
    Ok(Topology { names: names.clone(), js, nodes, heartbeats, jobs, leases, outputs })
}

async fn ensure_kv(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store, BusError> {
    let name = cfg.bucket.clone();
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    match js.create_key_value(cfg).await {
        Ok(s) => Ok(s),
        // Another process created it between our two calls.
        Err(e) => js.get_key_value(&name).await.map_err(|_| BusError::js(format!("bucket {name}"), e)),
    }
}

/// The stream that holds KV bucket `bucket` (JetStream's naming).
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// How many entries a KV bucket holds now, asked of the server (`kv::Store::status`
/// only returns what the server said when the store's handle was made).
pub async fn kv_entries(js: &jetstream::Context, bucket: &str) -> Result<u64, BusError> {
    let stream = js.get_stream(kv_stream(bucket)).await.map_err(|e| BusError::js(format!("bucket {bucket}"), e))?;
    Ok(stream.cached_info().state.messages)
}

/// Publish to a stream with a de-duplication id and wait for the stream's ack.
pub async fn publish_once(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: Bytes,
) -> Result<(), BusError> {
    let fail = |subject: &str, e: &dyn std::fmt::Display| BusError::Publish {
        subject: subject.to_string(),
        message: e.to_string(),
    };
    let msg = jetstream::message::PublishMessage::build().payload(payload).message_id(msg_id);
    let ack = js.send_publish(subject.clone(), msg).await.map_err(|e| fail(&subject, &e))?;
    ack.await.map_err(|e| fail(&subject, &e))?;
    Ok(())
}

/// JSON request/reply with a timeout.
pub async fn request_json<Q: Serialize, R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    body: &Q,
    timeout: Duration,
) -> Result<R, BusError> {
    let payload =
        serde_json::to_vec(body).map_err(|e| BusError::Decode { subject: subject.clone(), message: e.to_string() })?;
    request_bytes(client, subject, payload.into(), timeout).await
}

/// Request/reply with a body already encoded (sent again as is), the answer decoded
/// from JSON.
pub async fn request_bytes<R: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<R, BusError> {
    let req = async_nats::Request::new().payload(payload).timeout(Some(timeout));
    let msg = client.send_request(subject.clone(), req).await.map_err(|e| {
        let no_responders = matches!(e.kind(), async_nats::RequestErrorKind::NoResponders);
        BusError::Request { subject: subject.clone(), message: e.to_string(), no_responders }
    })?;
    serde_json::from_slice(&msg.payload).map_err(|e| BusError::Decode { subject, message: e.to_string() })
}

/// Every message of a stream whose subject matches `filter` (wildcards allowed), oldest
/// first, as (subject, payload): what was stored when the read began.
pub async fn read_all(js: &jetstream::Context, stream: &str, filter: &str) -> Result<Vec<(String, Bytes)>, BusError> {
    read_all_of(js, stream, &[filter.to_string()]).await
}

/// Every message of a stream whose subject matches one of `filters`, in stream order.
pub async fn read_all_of(
    js: &jetstream::Context,
    stream: &str,
    filters: &[String],
) -> Result<Vec<(String, Bytes)>, BusError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let what = || format!("reading {} from {stream}", filters.join(", "));
    let stream_handle = js.get_stream(stream).await.map_err(|e| BusError::js(what(), e))?;
    let (filter_subject, filter_subjects) = match filters {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let mut consumer = stream_handle
        .create_consumer(OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js(what(), e))?;
    let total = consumer.info().await.map_err(|e| BusError::js(what(), e))?.num_pending;
    let mut out = Vec::with_capacity(total as usize);
    if total == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| BusError::js(what(), e))?;
    while (out.len() as u64) < total {
        match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(Ok(m))) => {
                // Messages that expire during the read never come: stop at the last one.
                let last = m.info().is_ok_and(|i| i.pending == 0);
                out.push((m.subject.to_string(), m.payload.clone()));
                if last {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(BusError::js(what(), e)),
            Ok(None) => break,
            Err(_) => {
                return Err(BusError::js(what(), format!("stalled after {} of {total} messages", out.len())));
            }
        }
    }
    Ok(out)
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
