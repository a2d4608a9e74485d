//! Scoped configuration: documents per scope (`system`, `org`, `team`,
//! `workflow`, `step`) and the effective merge plugins see.
//!
//! Storage follows upstream (`cfg:<scope>:<scope_id>`, a JSON document
//! `{"scope","scope_id","data","revision","updated_at","meta"}`), with one
//! deliberate difference: every scope below `system` belongs to a tenant.
//! `org`'s id *is* the tenant; `team`, `workflow` and `step` documents are
//! keyed `cfg:<scope>:<tenant>/<scope_id>`, so one tenant can neither read
//! nor overwrite another's (upstream does not check them at all).
//!
//! Writes follow upstream's semantics: each top-level key of the new data
//! replaces the stored one (other keys stay), `meta` keys merge, and for
//! `system/default` the result is deep-merged over the old data so nested
//! keys there are never lost by omission. A write is a compare-and-set on the
//! stored revision (an optional expected revision from the caller, else the
//! one just read, retried a few times).
//!
//! The effective config deep-merges system → org → team → workflow → step:
//! objects merge recursively, any other value from a later scope replaces
//! the earlier one. Its version lists each scope's revision
//! (`system:3|org:1|team:0|workflow:0|step:2`) and its hash is the sha256 of
//! the merged data's canonical JSON (keys sorted, no whitespace).

use crate::store::{BatchOutcome, Op, Store, StoreError, to_json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The system document pack overlays write to.
pub const SYSTEM_DEFAULT_KEY: &str = "cfg:system:default";
/// Deepest nesting a document's data may have (the stored document adds
/// two levels; JSON readers stop at 128).
pub const MAX_DEPTH: usize = 64;
/// Largest stored document (after the merge with what was there).
pub const MAX_DOC_BYTES: usize = 1 << 20;
/// Attempts of a write whose compare-and-set lost to a concurrent writer.
const WRITE_ATTEMPTS: usize = 16;

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    System,
    Org,
    Team,
    Workflow,
    Step,
}

impl Scope {
    pub fn parse(raw: &str) -> Option<Scope> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "system" => Some(Scope::System),
            "org" => Some(Scope::Org),
            "team" => Some(Scope::Team),
            "workflow" => Some(Scope::Workflow),
            "step" => Some(Scope::Step),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::System => "system",
            Scope::Org => "org",
            Scope::Team => "team",
            Scope::Workflow => "workflow",
            Scope::Step => "step",
        }
    }
}

/// One stored document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigDoc {
    pub scope: Scope,
    pub scope_id: String,
    #[serde(default)]
    pub data: Value,
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
}

/// Which document: a scope and its id, resolved against the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRef {
    pub scope: Scope,
    /// The id as the client names it (`default` for system, the tenant for org).
    pub scope_id: String,
    /// The tenant owning the document (`None` for system).
    pub tenant: Option<String>,
}

impl DocRef {
    pub fn system(id: &str) -> DocRef {
        let id = if id.trim().is_empty() { "default" } else { id.trim() };
        DocRef { scope: Scope::System, scope_id: id.to_string(), tenant: None }
    }

    pub fn tenant_scoped(scope: Scope, tenant: &str, id: &str) -> DocRef {
        match scope {
            Scope::System => DocRef::system(id),
            Scope::Org => DocRef { scope, scope_id: tenant.to_string(), tenant: Some(tenant.to_string()) },
            _ => DocRef { scope, scope_id: id.trim().to_string(), tenant: Some(tenant.to_string()) },
        }
    }

    pub fn key(&self) -> String {
        match (self.scope, &self.tenant) {
            (Scope::System, _) | (Scope::Org, _) | (_, None) => {
                format!("cfg:{}:{}", self.scope.as_str(), self.scope_id)
            }
            (scope, Some(tenant)) => format!("cfg:{}:{tenant}/{}", scope.as_str(), self.scope_id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("config was changed concurrently (revision {current}); read it again and retry")]
    Conflict { current: u64 },
    #[error("the config document would be {bytes} bytes; at most {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The merged view.
#[derive(Debug, Clone, Serialize)]
pub struct Effective {
    pub version: String,
    pub hash: String,
    pub data: Value,
}

/// What an effective merge is asked for.
#[derive(Debug, Clone, Default)]
pub struct EffectiveQuery {
    pub tenant: String,
    pub team_id: String,
    pub workflow_id: String,
    pub step_id: String,
}

/// A write request.
#[derive(Debug, Clone)]
pub struct ConfigWrite {
    pub target: DocRef,
    pub data: Map<String, Value>,
    pub meta: Option<Map<String, Value>>,
    /// Expected stored revision (0 = must not exist); `None` = last read.
    pub expected_revision: Option<u64>,
    pub by: String,
}

#[derive(Clone)]
pub struct ConfigService {
    store: Arc<dyn Store>,
}

/// Deep merge: objects recursively, anything else replaces.
pub fn deep_merge(target: &mut Value, overlay: &Value) {
    match (target.as_object_mut(), overlay) {
        (Some(t), Value::Object(o)) => {
            for (k, v) in o {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => deep_merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        _ => *target = overlay.clone(),
    }
}

/// Canonical JSON: object keys sorted recursively, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json's Map keeps insertion order only with `preserve_order`;
    // sorting explicitly makes the output canonical either way.
    serde_json::to_string(&sort(value)).unwrap_or_default()
}

impl ConfigService {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    pub async fn get(&self, target: &DocRef) -> Result<Option<ConfigDoc>, ConfigError> {
        let Some(entry) = self.store.get(&target.key()).await? else { return Ok(None) };
        let raw: Value = entry.json()?;
        // The store's revision is authoritative (documents written by pack
        // overlays may not carry one in their body).
        let data = raw.get("data").filter(|d| d.is_object()).cloned().unwrap_or_else(|| Value::Object(Map::new()));
        Ok(Some(ConfigDoc {
            scope: target.scope,
            scope_id: target.scope_id.clone(),
            data,
            revision: entry.revision,
            updated_at: raw.get("updated_at").and_then(|v| serde_json::from_value(v.clone()).ok()),
            meta: raw.get("meta").and_then(Value::as_object).cloned(),
            updated_by: raw.get("updated_by").and_then(Value::as_str).map(str::to_string),
        }))
    }

    /// Write `data` into the document (see the module doc for the semantics).
    pub async fn set(&self, write: ConfigWrite) -> Result<ConfigDoc, ConfigError> {
        if write.target.scope == Scope::System
            && write.target.scope_id == "default"
            && write.data.contains_key("bundles")
        {
            return Err(ConfigError::Invalid(
                "bundles must be written through /api/v1/policy/bundles, not system/default".into(),
            ));
        }
        if write.target.scope != Scope::System && write.target.scope_id.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "scope_id is required for scope {}",
                write.target.scope.as_str()
            )));
        }
        let nested = write.data.values().map(depth).max().unwrap_or(0) + 1;
        if nested > MAX_DEPTH {
            return Err(ConfigError::Invalid(format!("config data nests {nested} levels deep; at most {MAX_DEPTH}")));
        }
        let key = write.target.key();
        let mut current_seen = 0;
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                // Lost a race: back off a little, with jitter, and redo the merge.
                let ms = rand::random::<u64>() % (2u64 << attempt.min(5)) + 1;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let entry = self.store.get(&key).await?;
            let current_revision = entry.as_ref().map(|e| e.revision).unwrap_or(0);
            if let Some(expected) = write.expected_revision
                && expected != current_revision
            {
                return Err(ConfigError::Conflict { current: current_revision });
            }
            let mut doc: Value = match &entry {
                Some(e) => e.json()?,
                None => serde_json::json!({"scope": write.target.scope, "scope_id": write.target.scope_id, "data": {}}),
            };
            let old_data =
                doc.get("data").filter(|d| d.is_object()).cloned().unwrap_or_else(|| Value::Object(Map::new()));
            let mut data = old_data.clone();
            {
                let map = data.as_object_mut().expect("data is an object");
                for (k, v) in &write.data {
                    map.insert(k.clone(), v.clone());
                }
            }
            if write.target.scope == Scope::System && write.target.scope_id == "default" {
                let mut merged = old_data;
                deep_merge(&mut merged, &data);
                data = merged;
            }
            let mut meta = doc.get("meta").and_then(Value::as_object).cloned().unwrap_or_default();
            if let Some(extra) = &write.meta {
                for (k, v) in extra {
                    meta.insert(k.clone(), v.clone());
                }
            }
            doc["scope"] = serde_json::json!(write.target.scope);
            doc["scope_id"] = Value::String(write.target.scope_id.clone());
            doc["data"] = data;
            doc["revision"] = Value::from(current_revision + 1);
            doc["updated_at"] = serde_json::json!(chrono::Utc::now());
            doc["updated_by"] = Value::String(write.by.clone());
            if !meta.is_empty() {
                doc["meta"] = Value::Object(meta);
            }
            let value = to_json(&doc);
            if value.len() > MAX_DOC_BYTES {
                return Err(ConfigError::TooLarge { bytes: value.len(), limit: MAX_DOC_BYTES });
            }
            let op = Op::PutIfRevision { key: key.clone(), value, expected: current_revision, ttl: None };
            match self.store.apply(vec![op]).await? {
                BatchOutcome::Applied(_) => {
                    return self.get(&write.target).await?.ok_or(ConfigError::NotFound);
                }
                BatchOutcome::Conflict { current, .. } => {
                    current_seen = current.as_ref().map(|e| e.revision).unwrap_or(0);
                    if write.expected_revision.is_some() {
                        return Err(ConfigError::Conflict { current: current_seen });
                    }
                }
            }
        }
        Err(ConfigError::Conflict { current: current_seen })
    }

    /// Merge system → org → team → workflow → step for a tenant.
    pub async fn effective(&self, query: &EffectiveQuery) -> Result<Effective, ConfigError> {
        let layers = [
            (Scope::System, DocRef::system("default"), true),
            (Scope::Org, DocRef::tenant_scoped(Scope::Org, &query.tenant, ""), !query.tenant.is_empty()),
            (Scope::Team, DocRef::tenant_scoped(Scope::Team, &query.tenant, &query.team_id), !query.team_id.is_empty()),
            (
                Scope::Workflow,
                DocRef::tenant_scoped(Scope::Workflow, &query.tenant, &query.workflow_id),
                !query.workflow_id.is_empty(),
            ),
            (Scope::Step, DocRef::tenant_scoped(Scope::Step, &query.tenant, &query.step_id), !query.step_id.is_empty()),
        ];
        let mut data = Value::Object(Map::new());
        let mut version = Vec::new();
        for (scope, target, wanted) in layers {
            let mut revision = 0;
            if wanted && let Some(doc) = self.get(&target).await? {
                revision = doc.revision;
                deep_merge(&mut data, &doc.data);
            }
            version.push(format!("{}:{revision}", scope.as_str()));
        }
        let hash = hex::encode(Sha256::digest(canonical_json(&data).as_bytes()));
        Ok(Effective { version: version.join("|"), hash, data })
    }

    /// The effective data for a job of `tenant` (workflow and step from its
    /// labels); an unreadable store yields the empty object.
    pub async fn for_job(&self, tenant: &str, labels: &std::collections::BTreeMap<String, String>) -> Value {
        let query = EffectiveQuery {
            tenant: tenant.to_string(),
            team_id: labels.get("team_id").cloned().unwrap_or_default(),
            workflow_id: labels.get("workflow_id").cloned().unwrap_or_default(),
            step_id: labels.get("step_id").cloned().unwrap_or_default(),
        };
        match self.effective(&query).await {
            Ok(e) => e.data,
            Err(e) => {
                tracing::warn!(error = %e, "effective config unavailable; plugins see {{}}");
                Value::Object(Map::new())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deep_merge_recurses_into_objects_and_replaces_the_rest() {
        let mut a = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        deep_merge(&mut a, &json!({"a": {"c": [3], "e": null}, "d": {"k": 1}}));
        assert_eq!(a, json!({"a": {"b": 1, "c": [3], "e": null}, "d": {"k": 1}}));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(canonical_json(&json!({"b": 1, "a": {"d": 2, "c": 3}})), r#"{"a":{"c":3,"d":2},"b":1}"#);
    }

    #[test]
    fn keys_are_tenant_scoped_below_system() {
        assert_eq!(DocRef::system("").key(), "cfg:system:default");
        assert_eq!(DocRef::tenant_scoped(Scope::Org, "acme", "ignored").key(), "cfg:org:acme");
        assert_eq!(DocRef::tenant_scoped(Scope::Step, "acme", "s1").key(), "cfg:step:acme/s1");
        assert_eq!(DocRef::tenant_scoped(Scope::Team, "globex", "s1").key(), "cfg:team:globex/s1");
    }
}
