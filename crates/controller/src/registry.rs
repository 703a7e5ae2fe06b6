//! The node registry as the controller sees it: registrations and heartbeats, watched
//! from their buckets.

use drover_core::api::NodeView;
use drover_core::resolve::NodeInfo;
use drover_core::wire::{ActionOffer, AgentStatus, Heartbeat, NodeRecord, is_catalog_key};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Seen {
    /// When the beat was received (a live one), or its stamp (a stored one).
    at_ms: u64,
    /// When its silence counts from: `at_ms`, or for a stored beat that may have been
    /// followed by live ones, when the controller began listening
    /// (`drover_core::liveness::silence_counted_from_ms`).
    silent_from_ms: u64,
    status: AgentStatus,
    /// The beat's own stamp (agent clock).
    agent_at_ms: u64,
    /// The interval the beat said its agent beats at (0: not said).
    interval_ms: u64,
}

/// A node's registration as kept in memory: its actions (with their JSON Schemas, the bulk
/// of a registration) are shared by every node that offers the same ones.
struct Stored {
    /// The registration without its actions.
    rec: NodeRecord,
    actions: Arc<Vec<ActionOffer>>,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, Stored>,
    /// The distinct action lists nodes offer (a fleet has a handful), with their JSON as
    /// registered: a registration with the same JSON shares the parsed list.
    catalogs: Vec<(String, Arc<Vec<ActionOffer>>)>,
    /// Catalogs stored in the bucket, by key (registrations name them).
    by_key: std::collections::HashMap<String, Arc<Vec<ActionOffer>>>,
    seen: BTreeMap<String, Seen>,
    /// The registrations and the heartbeats stored before the watches began have all
    /// been read: until then a node may look silent only because we have not read it yet.
    records_loaded: bool,
    beats_loaded: bool,
    /// When the stored heartbeats had been read and live ones were being received.
    loaded_at_ms: Option<u64>,
}

/// A registration as read from the bucket, its actions left as JSON text.
#[derive(serde::Deserialize)]
struct RawRecord<'a> {
    id: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    groups: Vec<String>,
    facts: drover_core::wire::NodeFacts,
    #[serde(default, borrow)]
    actions: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    catalog: Option<String>,
    heartbeat_ms: u64,
}

/// Shared, always-current view of the fleet.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<Inner>>,
    heartbeat_timeout_ms: u64,
}

impl Registry {
    pub fn new(heartbeat_timeout: Duration) -> Registry {
        Registry { inner: Arc::default(), heartbeat_timeout_ms: heartbeat_timeout.as_millis() as u64 }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Has the stored state of both buckets been read? Liveness is judged only after.
    pub fn loaded(&self) -> bool {
        let r = self.read();
        r.records_loaded && r.beats_loaded
    }

    /// May a node be declared lost for silence now? Only once the buckets are read and
    /// the live heartbeats have been received for two beats of the slowest agent: a node
    /// whose stored beat is too old to vouch for it then has had two beats to show itself.
    pub fn judging(&self, now_ms: u64) -> bool {
        let r = self.read();
        let registered = r.records.values().map(|n| n.rec.heartbeat_ms);
        // Agents of a large fleet beat less often than registered, and say so in each beat.
        let beating = r.seen.values().map(|s| s.interval_ms);
        let beat = registered.chain(beating).max().unwrap_or(1000).min(self.heartbeat_timeout_ms);
        r.records_loaded && r.loaded_at_ms.is_some_and(|t| now_ms.saturating_sub(t) >= 2 * beat)
    }

    fn mark_beats_loaded(&self) {
        let mut w = self.write();
        if !w.beats_loaded {
            w.beats_loaded = true;
            w.loaded_at_ms = Some(drover_bus::now_ms());
        }
    }

    pub fn put_record(&self, mut r: NodeRecord) {
        let offered = std::mem::take(&mut r.actions);
        let json = serde_json::to_string(&offered).unwrap_or_default();
        let actions = self.catalog_for(&json, || Ok(offered)).unwrap_or_default();
        self.write().records.insert(r.id.clone(), Stored { rec: r, actions });
    }

    /// Take a registration as stored in the bucket. Its action list (every action's JSON
    /// Schema: most of its bytes) is parsed only when no node registered the same one
    /// before; a fleet registering at once is thousands of them.
    pub fn put_registration(&self, bytes: &[u8]) -> Result<String, serde_json::Error> {
        let raw: RawRecord = serde_json::from_slice(bytes)?;
        let inline = raw.actions.map(|a| a.get()).filter(|a| *a != "[]");
        let actions = match (&raw.catalog, inline) {
            (_, Some(json)) => self.catalog_for(json, || serde_json::from_str(json))?,
            // Named: the catalog was stored before the registration, so it was read first.
            (Some(key), None) => match self.read().by_key.get(key) {
                Some(c) => c.clone(),
                None => {
                    tracing::warn!(node = %raw.id, %key, "a node names an action catalog not read yet");
                    Arc::default()
                }
            },
            (None, None) => Arc::default(),
        };
        let rec = NodeRecord {
            id: raw.id,
            labels: raw.labels,
            groups: raw.groups,
            facts: raw.facts,
            actions: Vec::new(),
            catalog: raw.catalog,
            heartbeat_ms: raw.heartbeat_ms,
        };
        let id = rec.id.clone();
        self.write().records.insert(id.clone(), Stored { rec, actions });
        Ok(id)
    }

    /// Take an action catalog stored in the bucket under `key`; nodes that named it before
    /// it was read get it now.
    pub fn put_catalog(&self, key: &str, bytes: &[u8]) -> Result<(), serde_json::Error> {
        let json = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
        let c = self.catalog_for(json, || serde_json::from_str(json))?;
        let mut w = self.write();
        w.by_key.insert(key.to_string(), c.clone());
        for s in w.records.values_mut() {
            if s.rec.catalog.as_deref() == Some(key) && s.actions.is_empty() {
                s.actions = c.clone();
            }
        }
        Ok(())
    }

    /// The shared list for this JSON, made with `parse` when there is none yet.
    fn catalog_for(
        &self,
        json: &str,
        parse: impl FnOnce() -> Result<Vec<ActionOffer>, serde_json::Error>,
    ) -> Result<Arc<Vec<ActionOffer>>, serde_json::Error> {
        if let Some((_, c)) = self.read().catalogs.iter().find(|(j, _)| j == json) {
            return Ok(c.clone());
        }
        let c = Arc::new(parse()?);
        let mut w = self.write();
        // Forget the lists no node offers any more, then keep this one.
        w.catalogs.retain(|(_, c)| Arc::strong_count(c) > 1);
        w.catalogs.push((json.to_string(), c.clone()));
        Ok(c)
    }

    pub fn remove(&self, id: &str) {
        let mut w = self.write();
        w.records.remove(id);
        w.seen.remove(id);
    }

    /// Apply a heartbeat published on the subject and received at `at_ms`. They arrive
    /// in order and always apply.
    pub fn heartbeat(&self, hb: &Heartbeat, at_ms: u64) {
        let seen = Seen {
            at_ms,
            silent_from_ms: at_ms,
            status: hb.status,
            agent_at_ms: hb.at_ms,
            interval_ms: hb.interval_ms,
        };
        self.write().seen.insert(hb.node.clone(), seen);
    }

    /// Apply a heartbeat read from the bucket at `now_ms`, while live ones are being
    /// received: it counts from the agent's own stamp (never in the future), and a node
    /// whose stored beat is recent enough that it may have beaten since counts its
    /// silence from now. It applies only when it is not older than the last applied (it
    /// may arrive after the same or a later beat published on the subject).
    pub fn stored_heartbeat(&self, hb: &Heartbeat, now_ms: u64) {
        let mut w = self.write();
        if w.seen.get(&hb.node).is_some_and(|s| s.agent_at_ms > hb.at_ms) {
            return;
        }
        let at_ms = hb.at_ms.min(now_ms);
        let silent_from_ms = drover_core::liveness::silence_counted_from_ms(at_ms, hb.interval_ms, now_ms);
        let seen =
            Seen { at_ms, silent_from_ms, status: hb.status, agent_at_ms: hb.at_ms, interval_ms: hb.interval_ms };
        w.seen.insert(hb.node.clone(), seen);
    }

    /// How long a node may stay silent before it is lost: the timeout, or three of its
    /// beats when its agent beats less often in a large fleet (`drover_core::liveness`).
    fn silence_limit_ms(&self, seen: &Seen) -> u64 {
        drover_core::liveness::silence_limit_ms(self.heartbeat_timeout_ms, seen.interval_ms)
    }

    /// Online: a recent heartbeat saying `online`.
    pub fn is_online(&self, id: &str, now_ms: u64) -> bool {
        self.online(self.read().seen.get(id), now_ms)
    }

    /// A recent heartbeat saying `online`.
    fn online(&self, seen: Option<&Seen>, now_ms: u64) -> bool {
        seen.is_some_and(|s| {
            s.status == AgentStatus::Online && now_ms.saturating_sub(s.silent_from_ms) <= self.silence_limit_ms(s)
        })
    }

    /// Why a node is not online, if it is not.
    pub fn offline_reason(&self, id: &str, now_ms: u64) -> Option<String> {
        let r = self.read();
        match r.seen.get(id) {
            None => Some("no heartbeat seen".into()),
            Some(s) if s.status == AgentStatus::Stopped => Some("the agent stopped".into()),
            Some(s) if now_ms.saturating_sub(s.silent_from_ms) > self.silence_limit_ms(s) => {
                Some(format!("no heartbeat for {}s", now_ms.saturating_sub(s.at_ms) / 1000))
            }
            _ => None,
        }
    }

    /// The fleet for target resolution.
    pub fn fleet(&self, now_ms: u64) -> Vec<NodeInfo> {
        // Only what resolution needs: cloning whole records (with every action's schema)
        // cost ~0.3 s per submission on a 1,000-node fleet.
        let r = self.read();
        r.records
            .values()
            .map(|s| NodeInfo {
                id: s.rec.id.clone(),
                labels: s.rec.labels.clone(),
                groups: s.rec.groups.clone(),
                online: self.online(r.seen.get(&s.rec.id), now_ms),
            })
            .collect()
    }

    /// Every action offered by some node, with its schema (the first node's).
    pub fn catalog(&self) -> BTreeMap<String, ActionOffer> {
        let mut out = BTreeMap::new();
        let mut seen: Vec<*const Vec<ActionOffer>> = Vec::new();
        for s in self.read().records.values() {
            // Each shared list once.
            if seen.contains(&Arc::as_ptr(&s.actions)) {
                continue;
            }
            seen.push(Arc::as_ptr(&s.actions));
            for a in s.actions.iter() {
                out.entry(a.name.clone()).or_insert_with(|| a.clone());
            }
        }
        out
    }

    /// Number of nodes offering each action.
    pub fn offered_by(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.read().records.values() {
            for a in s.actions.iter() {
                *out.entry(a.name.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn offers(&self, node: &str, action: &str) -> bool {
        self.read().records.get(node).is_some_and(|s| s.actions.iter().any(|a| a.name == action))
    }

    pub fn record(&self, id: &str) -> Option<NodeRecord> {
        self.read().records.get(id).map(|s| NodeRecord { actions: s.actions.to_vec(), ..s.rec.clone() })
    }

    pub fn view(&self, id: &str, now_ms: u64, busy_with: Option<String>) -> Option<NodeView> {
        let r = self.read();
        let stored = r.records.get(id)?;
        let rec = &stored.rec;
        let seen = r.seen.get(id);
        Some(NodeView {
            id: rec.id.clone(),
            labels: rec.labels.clone(),
            groups: rec.groups.clone(),
            facts: rec.facts.clone(),
            online: self.online(seen, now_ms),
            status: seen.map(|s| s.status).unwrap_or(AgentStatus::Stopped),
            last_seen_ago_ms: seen.map(|s| now_ms.saturating_sub(s.at_ms)),
            heartbeat_ms: seen.map(|s| s.interval_ms).filter(|&ms| ms > 0),
            lost_after_ms: seen.map(|s| self.silence_limit_ms(s)),
            busy_with,
            actions: stored.actions.iter().map(|a| a.name.clone()).collect(),
        })
    }

    pub fn ids(&self) -> Vec<String> {
        self.read().records.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keep the registry current from the buckets until the watches end.
pub async fn watch(registry: Registry, topo: drover_bus::Topology) {
    let nodes = {
        let registry = registry.clone();
        let store = topo.nodes.clone();
        let (js, bucket) = (topo.js.clone(), topo.names.nodes_bucket());
        async move {
            let mut w = match store.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("cannot watch the node registry: {e}");
                    return;
                }
            };
            if bucket_is_empty(&js, &bucket).await {
                registry.write().records_loaded = true;
            }
            while let Some(entry) = w.next().await {
                let Ok(entry) = entry else { continue };
                if entry.delta == 0 {
                    registry.write().records_loaded = true;
                }
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put if is_catalog_key(&entry.key) => {
                        if let Err(e) = registry.put_catalog(&entry.key, &entry.value) {
                            tracing::warn!(key = %entry.key, "ignoring a bad action catalog: {e}");
                        }
                    }
                    async_nats::jetstream::kv::Operation::Put => {
                        if let Err(e) = registry.put_registration(&entry.value) {
                            tracing::warn!(key = %entry.key, "ignoring a bad node registration: {e}");
                        }
                    }
                    _ if is_catalog_key(&entry.key) => {}
                    _ => registry.remove(&entry.key),
                }
            }
        }
    };
    let beats = {
        let registry = registry.clone();
        let store = topo.heartbeats.clone();
        let (js, bucket) = (topo.js.clone(), topo.names.heartbeats_bucket());
        async move {
            let mut w = match store.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("cannot watch heartbeats: {e}");
                    return;
                }
            };
            // The stored beats are read once, at the start; after that every beat comes on
            // the subject (following the bucket as well would take each stored beat twice).
            if bucket_is_empty(&js, &bucket).await {
                registry.mark_beats_loaded();
                return;
            }
            while let Some(entry) = w.next().await {
                let Ok(entry) = entry else { continue };
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&entry.value) {
                    // The last one too counts from its stamp (the watcher marks it
                    // current: it is not new).
                    registry.stored_heartbeat(&hb, drover_bus::now_ms());
                }
                if entry.delta == 0 {
                    registry.mark_beats_loaded();
                    return;
                }
            }
        }
    };
    // Every beat is published on a subject; the bucket holds one in ten of them.
    let live = {
        let registry = registry.clone();
        let client = topo.js.client();
        let subject = topo.names.all_heartbeats();
        async move {
            let mut sub = match client.subscribe(subject).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot subscribe to heartbeats: {e}");
                    return;
                }
            };
            while let Some(m) = sub.next().await {
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&m.payload) {
                    registry.heartbeat(&hb, drover_bus::now_ms());
                }
            }
        }
    };
    tokio::join!(nodes, beats, live);
}

async fn bucket_is_empty(js: &async_nats::jetstream::Context, bucket: &str) -> bool {
    drover_bus::kv_entries(js, bucket).await.is_ok_and(|n| n == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_core::wire::NodeFacts;

    fn record(id: &str, actions: &[&str]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            labels: BTreeMap::new(),
            groups: vec![],
            facts: NodeFacts::default(),
            actions: actions
                .iter()
                .map(|a| ActionOffer {
                    name: a.to_string(),
                    description: String::new(),
                    params_schema: serde_json::json!({ "type": "object", "title": a }),
                    dry_run: false,
                    undo: false,
                })
                .collect(),
            catalog: None,
            heartbeat_ms: 1000,
        }
    }

    #[test]
    fn nodes_offering_the_same_actions_share_one_copy() {
        let reg = Registry::new(Duration::from_secs(10));
        for i in 0..100 {
            reg.put_record(record(&format!("n{i}"), &["echo", "shell"]));
        }
        reg.put_record(record("odd", &["echo"]));
        assert_eq!(reg.read().catalogs.len(), 2);
        // As read from the bucket: the same list is shared, not parsed again.
        let stored = serde_json::to_vec(&record("n100", &["echo", "shell"])).unwrap();
        assert_eq!(reg.put_registration(&stored).unwrap(), "n100");
        assert_eq!(reg.read().catalogs.len(), 2);
        assert_eq!(reg.record("n100"), Some(record("n100", &["echo", "shell"])));
        assert!(reg.put_registration(b"{\"id\": 1}").is_err());
        // Named by key: the catalog read first, or after the node that names it.
        let list = serde_json::to_vec(&record("x", &["sleep", "echo"]).actions).unwrap();
        let mut named = record("named", &[]);
        named.catalog = Some("catalog.abc".into());
        reg.put_catalog("catalog.abc", &list).unwrap();
        reg.put_registration(&serde_json::to_vec(&named).unwrap()).unwrap();
        assert!(reg.offers("named", "sleep"));
        let mut early = record("early", &[]);
        early.catalog = Some("catalog.def".into());
        reg.put_registration(&serde_json::to_vec(&early).unwrap()).unwrap();
        assert!(!reg.offers("early", "sleep"));
        reg.put_catalog("catalog.def", &list).unwrap();
        assert!(reg.offers("early", "sleep"));
        assert_eq!(reg.record("early").map(|r| r.actions.len()), Some(2));
        reg.remove("named");
        reg.remove("early");
        assert_eq!(reg.record("n7"), Some(record("n7", &["echo", "shell"])));
        assert!(reg.offers("n7", "shell") && !reg.offers("odd", "shell"));
        assert_eq!(reg.offered_by().get("shell"), Some(&101));
        assert_eq!(reg.catalog().len(), 2);
        // A list no node offers any more is dropped when another one arrives.
        reg.put_record(record("odd", &["echo", "shell"]));
        reg.put_record(record("other", &["sleep"]));
        // Left: ["echo", "shell"], ["sleep"], and the stored catalog, which stays.
        assert_eq!(reg.read().catalogs.len(), 3);
    }

    #[test]
    fn a_node_is_judged_by_the_interval_its_beats_say() {
        let reg = Registry::new(Duration::from_secs(10));
        reg.put_record(record("small", &["echo"]));
        reg.put_record(record("large", &["echo"]));
        let beat = |node: &str, interval_ms: u64| Heartbeat {
            node: node.into(),
            status: AgentStatus::Online,
            at_ms: 0,
            running: vec![],
            interval_ms,
        };
        // One beating as configured (or not saying), one every 20 s in a large fleet.
        reg.heartbeat(&beat("small", 0), 1_000);
        reg.heartbeat(&beat("large", 20_000), 1_000);
        for at in [11_000, 61_000] {
            assert!(reg.is_online("large", at), "{at}");
            assert_eq!(reg.offline_reason("large", at), None);
        }
        assert!(reg.is_online("small", 11_000));
        assert!(!reg.is_online("small", 11_001));
        assert_eq!(reg.offline_reason("small", 12_000).as_deref(), Some("no heartbeat for 11s"));
        // Three beats of 20 s without one: lost.
        assert!(!reg.is_online("large", 61_001));
        assert_eq!(reg.offline_reason("large", 62_000).as_deref(), Some("no heartbeat for 61s"));
    }

    #[test]
    fn a_stored_beat_that_may_have_been_followed_by_live_ones_counts_from_now() {
        let reg = Registry::new(Duration::from_secs(10));
        for n in ["recent", "stale", "mute"] {
            reg.put_record(record(n, &["echo"]));
        }
        let beat = |node: &str, at_ms: u64, interval_ms: u64| Heartbeat {
            node: node.into(),
            status: AgentStatus::Online,
            at_ms,
            running: vec![],
            interval_ms,
        };
        // A controller starts at 100 s and reads the bucket. Beats every 2 s, one in ten
        // stored: a beat stored 20 s ago may have been followed by unstored ones; one
        // stored 30 s ago means its agent stopped beating. An agent that does not say its
        // interval gets its stamp, as before.
        let now = 100_000;
        reg.stored_heartbeat(&beat("recent", 80_000, 2_000), now);
        reg.stored_heartbeat(&beat("stale", 70_000, 2_000), now);
        reg.stored_heartbeat(&beat("mute", 95_000, 0), now);
        assert!(reg.is_online("recent", now));
        assert_eq!(reg.offline_reason("recent", now + 10_000), None);
        // Silent for a whole timeout while the controller listened: lost, and the reason
        // says for how long it has not been heard of.
        assert_eq!(reg.offline_reason("recent", now + 10_001).as_deref(), Some("no heartbeat for 30s"));
        assert!(!reg.is_online("stale", now));
        assert_eq!(reg.offline_reason("stale", now).as_deref(), Some("no heartbeat for 30s"));
        assert!(reg.is_online("mute", now + 5_000));
        assert!(!reg.is_online("mute", now + 5_001));
        // A live beat then applies; an older stored one read after it does not.
        reg.heartbeat(&beat("stale", 101_000, 2_000), 101_000);
        reg.stored_heartbeat(&beat("stale", 70_000, 2_000), 101_500);
        assert!(reg.is_online("stale", 111_000));
    }
}
