//! The node registry as the controller sees it: registrations and heartbeats, watched
//! from their buckets.

use drover_core::api::NodeView;
use drover_core::resolve::NodeInfo;
use drover_core::wire::{ActionOffer, AgentStatus, Heartbeat, NodeRecord};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Debug, Clone)]
struct Seen {
    at_ms: u64,
    status: AgentStatus,
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<String, NodeRecord>,
    seen: BTreeMap<String, Seen>,
    /// The registrations and the heartbeats stored before the watches began have all
    /// been read: until then a node may look silent only because we have not read it yet.
    records_loaded: bool,
    beats_loaded: bool,
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

    pub fn put_record(&self, r: NodeRecord) {
        self.write().records.insert(r.id.clone(), r);
    }

    pub fn remove(&self, id: &str) {
        let mut w = self.write();
        w.records.remove(id);
        w.seen.remove(id);
    }

    pub fn heartbeat(&self, hb: &Heartbeat, at_ms: u64) {
        self.write().seen.insert(hb.node.clone(), Seen { at_ms, status: hb.status });
    }

    /// Online: a recent heartbeat saying `online`.
    pub fn is_online(&self, id: &str, now_ms: u64) -> bool {
        self.online(self.read().seen.get(id), now_ms)
    }

    /// A recent heartbeat saying `online`.
    fn online(&self, seen: Option<&Seen>, now_ms: u64) -> bool {
        seen.is_some_and(|s| {
            s.status == AgentStatus::Online && now_ms.saturating_sub(s.at_ms) <= self.heartbeat_timeout_ms
        })
    }

    /// Why a node is not online, if it is not.
    pub fn offline_reason(&self, id: &str, now_ms: u64) -> Option<String> {
        let r = self.read();
        match r.seen.get(id) {
            None => Some("no heartbeat seen".into()),
            Some(s) if s.status == AgentStatus::Stopped => Some("the agent stopped".into()),
            Some(s) if now_ms.saturating_sub(s.at_ms) > self.heartbeat_timeout_ms => {
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
            .map(|rec| NodeInfo {
                id: rec.id.clone(),
                labels: rec.labels.clone(),
                groups: rec.groups.clone(),
                online: self.online(r.seen.get(&rec.id), now_ms),
            })
            .collect()
    }

    /// Every action offered by some node, with its schema (the first node's).
    pub fn catalog(&self) -> BTreeMap<String, ActionOffer> {
        let mut out = BTreeMap::new();
        for r in self.read().records.values() {
            for a in &r.actions {
                out.entry(a.name.clone()).or_insert_with(|| a.clone());
            }
        }
        out
    }

    /// Number of nodes offering each action.
    pub fn offered_by(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in self.read().records.values() {
            for a in &r.actions {
                *out.entry(a.name.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    pub fn offers(&self, node: &str, action: &str) -> bool {
        self.read().records.get(node).is_some_and(|r| r.actions.iter().any(|a| a.name == action))
    }

    pub fn record(&self, id: &str) -> Option<NodeRecord> {
        self.read().records.get(id).cloned()
    }

    pub fn view(&self, id: &str, now_ms: u64, busy_with: Option<String>) -> Option<NodeView> {
        let r = self.read();
        let rec = r.records.get(id)?;
        let seen = r.seen.get(id);
        Some(NodeView {
            id: rec.id.clone(),
            labels: rec.labels.clone(),
            groups: rec.groups.clone(),
            facts: rec.facts.clone(),
            online: self.online(seen, now_ms),
            status: seen.map(|s| s.status).unwrap_or(AgentStatus::Stopped),
            last_seen_ago_ms: seen.map(|s| now_ms.saturating_sub(s.at_ms)),
            busy_with,
            actions: rec.actions.iter().map(|a| a.name.clone()).collect(),
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
        async move {
            let mut w = match store.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("cannot watch the node registry: {e}");
                    return;
                }
            };
            if bucket_is_empty(&store).await {
                registry.write().records_loaded = true;
            }
            while let Some(entry) = w.next().await {
                let Ok(entry) = entry else { continue };
                if entry.delta == 0 {
                    registry.write().records_loaded = true;
                }
                match entry.operation {
                    async_nats::jetstream::kv::Operation::Put => {
                        match serde_json::from_slice::<NodeRecord>(&entry.value) {
                            Ok(r) => registry.put_record(r),
                            Err(e) => tracing::warn!(key = %entry.key, "ignoring a bad node registration: {e}"),
                        }
                    }
                    _ => registry.remove(&entry.key),
                }
            }
        }
    };
    let beats = {
        let registry = registry.clone();
        let store = topo.heartbeats.clone();
        async move {
            let mut w = match store.watch_with_history(">").await {
                Ok(w) => w,
                Err(e) => {
                    tracing::error!("cannot watch heartbeats: {e}");
                    return;
                }
            };
            if bucket_is_empty(&store).await {
                registry.write().beats_loaded = true;
            }
            while let Some(entry) = w.next().await {
                let Ok(entry) = entry else { continue };
                if entry.delta == 0 {
                    registry.write().beats_loaded = true;
                }
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&entry.value) {
                    // Live updates count from when we got them; history from the agent's
                    // own stamp (never in the future).
                    let now = drover_bus::now_ms();
                    let at = if entry.seen_current { now } else { hb.at_ms.min(now) };
                    registry.heartbeat(&hb, at);
                }
            }
        }
    };
    tokio::join!(nodes, beats);
}

async fn bucket_is_empty(store: &async_nats::jetstream::kv::Store) -> bool {
    store.status().await.is_ok_and(|s| s.values() == 0)
}
