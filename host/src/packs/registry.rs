//! What is installed: pack records (stored under `pack:<id>`) and, in memory,
//! the topic table and each pack's loaded component with its limits.

use super::manifest::Manifest;
use crate::runtime::LoadedComponent;
use crate::runtime::sandbox::SandboxLimits;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const PACK_PREFIX: &str = "pack:";

/// Stored record of an installed pack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackRecord {
    pub id: String,
    pub version: String,
    /// `ACTIVE` or `DISABLED`.
    pub status: String,
    pub installed_at: DateTime<Utc>,
    pub installed_by: String,
    pub manifest: Manifest,
    /// Schema id → sha256 of its canonical JSON.
    pub schemas: BTreeMap<String, String>,
    /// Workflow id → sha256.
    pub workflows: BTreeMap<String, String>,
    /// Policy bundle ids this pack added.
    pub policy_fragments: Vec<String>,
    pub component: Option<ComponentRecord>,
    pub source: PackSource,
    /// Config leaves the overlays changed (taken back at uninstall).
    #[serde(default)]
    pub config_changes: Vec<super::overlay::ConfigLeaf>,
    /// Signature check outcome (`signed`, `key_id`, `warnings`).
    #[serde(default)]
    pub verification: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstalled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub digest: String,
    pub world: String,
    /// Where the `.wasm` is kept, relative to the data dir.
    pub file: String,
    pub max_memory_bytes: usize,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackSource {
    pub catalog: String,
    pub url: String,
    pub sha256: String,
}

/// A topic a pack serves.
#[derive(Debug, Clone, Serialize)]
pub struct TopicEntry {
    pub name: String,
    pub pack_id: String,
    pub capability: String,
    pub requires: Vec<String>,
    pub risk_tags: Vec<String>,
    pub input_schema: Option<String>,
}

/// An installed pack as the runtime uses it.
pub struct InstalledPack {
    pub record: PackRecord,
    pub component: Option<LoadedComponent>,
    pub limits: SandboxLimits,
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicEntry>,
    packs: HashMap<String, Arc<InstalledPack>>,
}

#[derive(Default)]
pub struct PackRegistry {
    state: RwLock<State>,
}

impl PackRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace a pack and its topics.
    pub fn insert(&self, pack: InstalledPack) {
        let mut state = self.state.write();
        let id = pack.record.id.clone();
        state.topics.retain(|_, t| t.pack_id != id);
        for topic in &pack.record.manifest.topics {
            state.topics.insert(
                topic.name.clone(),
                TopicEntry {
                    name: topic.name.clone(),
                    pack_id: id.clone(),
                    capability: topic.capability.clone(),
                    requires: topic.requires.clone(),
                    risk_tags: topic.risk_tags.clone(),
                    input_schema: topic.input_schema.clone(),
                },
            );
        }
        state.packs.insert(id, Arc::new(pack));
    }

    /// Forget a pack and its topics.
    pub fn remove(&self, id: &str) {
        let mut state = self.state.write();
        state.topics.retain(|_, t| t.pack_id != id);
        state.packs.remove(id);
    }

    pub fn topic(&self, name: &str) -> Option<TopicEntry> {
        self.state.read().topics.get(name).cloned()
    }

    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.state.read().topics.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn pack(&self, id: &str) -> Option<Arc<InstalledPack>> {
        self.state.read().packs.get(id).cloned()
    }

    pub fn packs(&self) -> Vec<Arc<InstalledPack>> {
        let mut packs: Vec<_> = self.state.read().packs.values().cloned().collect();
        packs.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        packs
    }
}
