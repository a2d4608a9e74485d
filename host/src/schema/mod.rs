//! JSON Schemas: the registry of schemas packs register (global: a schema
//! belongs to a pack, and packs are installed for the whole gateway) and the
//! bridge to the schema component, which compiles and validates inside the
//! calling tenant's sandbox (warm instances per tenant, compiled schemas kept
//! by content hash).

use crate::runtime::sandbox::SandboxLimits;
use crate::runtime::warm::WarmPool;
use crate::runtime::{HostState, LoadedComponent, PluginError, Prepared, Runtime};
use crate::store::Store;
use cordum_bindings::schema::SchemaPlugin;
use cordum_bindings::schema::exports::cordum::schema::validator as wit;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Store key prefix of registered schemas.
pub const SCHEMA_PREFIX: &str = "schema:";

/// A registered schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaDoc {
    pub id: String,
    pub schema: serde_json::Value,
    pub sha256: String,
    /// Pack that registered it, if any.
    #[serde(default)]
    pub pack_id: Option<String>,
}

impl SchemaDoc {
    pub fn new(id: &str, schema: serde_json::Value, pack_id: Option<String>) -> Self {
        let text = schema.to_string();
        SchemaDoc { id: id.to_string(), sha256: hex::encode(Sha256::digest(text.as_bytes())), schema, pack_id }
    }
}

/// One failed check of a document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    pub instance_path: String,
    pub schema_path: String,
    pub keyword: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("unknown schema {0}")]
    Unknown(String),
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("invalid schema id {0:?}: 1-256 characters of letters, digits and ._-/:, not starting or ending with /")]
    InvalidId(String),
    #[error("schema {id} belongs to pack {pack}; uninstall or upgrade the pack to change it")]
    Owned { id: String, pack: String },
    #[error("schema store unavailable: {0}")]
    Store(String),
}

/// Schema ids: `pack/Name` style, letters, digits and `._-/:`.
pub fn valid_schema_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && !id.starts_with('/')
        && !id.ends_with('/')
        && id.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/' | b':'))
}

struct WarmSchema {
    store: wasmtime::Store<HostState>,
    bindings: SchemaPlugin,
    /// Digest of the component this instance runs.
    digest: String,
}

pub struct SchemaService {
    runtime: Arc<Runtime>,
    component: Arc<LoadedComponent>,
    /// Validators tenants installed from the marketplace instead of the first-party one.
    tenant_components: RwLock<HashMap<String, Arc<LoadedComponent>>>,
    warm: WarmPool<WarmSchema>,
    schemas: RwLock<HashMap<String, Arc<(SchemaDoc, String)>>>,
    limits: SandboxLimits,
}

impl SchemaService {
    pub fn new(runtime: Arc<Runtime>, component: LoadedComponent) -> Self {
        let limits = runtime.limits.plugin;
        Self {
            runtime,
            component: Arc::new(component),
            tenant_components: RwLock::new(HashMap::new()),
            warm: WarmPool::new(8),
            schemas: RwLock::new(HashMap::new()),
            limits,
        }
    }

    /// The validator component `tenant` uses.
    fn component_for(&self, tenant: &str) -> Arc<LoadedComponent> {
        self.tenant_components.read().get(tenant).cloned().unwrap_or_else(|| self.component.clone())
    }

    /// Use `component` as `tenant`'s validator (`None`: the first-party one).
    pub fn set_tenant_component(&self, tenant: &str, component: Option<Arc<LoadedComponent>>) {
        match component {
            Some(c) => self.tenant_components.write().insert(tenant.to_string(), c),
            None => self.tenant_components.write().remove(tenant),
        };
    }

    /// Compile `schema` with a candidate validator in `tenant`'s sandbox (a probe before activation).
    pub fn probe(
        &self,
        tenant: &str,
        component: &LoadedComponent,
        schema: &serde_json::Value,
    ) -> Result<(), SchemaError> {
        let mut instance = self.instantiate_with(tenant, component)?;
        self.runtime.arm(&mut instance.store, self.limits);
        let text = schema.to_string();
        match instance.bindings.cordum_schema_validator().call_check_schema(&mut instance.store, &text) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(wit::SchemaError::InvalidSchema(m) | wit::SchemaError::InvalidDocument(m))) => {
                Err(SchemaError::InvalidSchema(m))
            }
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    /// Make a schema available for validation (after it was stored).
    pub fn register(&self, doc: SchemaDoc) {
        let text = doc.schema.to_string();
        self.schemas.write().insert(doc.id.clone(), Arc::new((doc, text)));
    }

    /// Stop offering a schema (after it was deleted from the store).
    pub fn unregister(&self, id: &str) {
        self.schemas.write().remove(id);
    }

    /// Every registered schema, by id.
    pub fn list(&self) -> Vec<SchemaDoc> {
        let mut docs: Vec<SchemaDoc> = self.schemas.read().values().map(|d| d.0.clone()).collect();
        docs.sort_by(|a, b| a.id.cmp(&b.id));
        docs
    }

    /// Register a schema through the API: compiled by the schema component
    /// first (a broken one is refused with the reason), stored, then
    /// offered. A pack's schema cannot be replaced this way. Returns whether
    /// the id is new.
    pub async fn register_stored(
        &self,
        store: &dyn Store,
        id: &str,
        schema: serde_json::Value,
    ) -> Result<bool, SchemaError> {
        if !valid_schema_id(id) {
            return Err(SchemaError::InvalidId(id.to_string()));
        }
        if !schema.is_object() && !schema.is_boolean() {
            return Err(SchemaError::InvalidSchema("a schema is a JSON object (or a boolean)".into()));
        }
        if let Some(owner) = self.get(id).and_then(|d| d.pack_id) {
            return Err(SchemaError::Owned { id: id.to_string(), pack: owner });
        }
        self.check_schema(&schema)?;
        let doc = SchemaDoc::new(id, schema, None);
        let key = format!("{SCHEMA_PREFIX}{id}");
        let existed = store.get(&key).await.map_err(|e| SchemaError::Store(e.to_string()))?.is_some();
        store
            .apply(vec![crate::store::Op::put_json(key, &doc)])
            .await
            .map_err(|e| SchemaError::Store(e.to_string()))?;
        self.register(doc);
        Ok(!existed)
    }

    /// Delete an API-registered schema (absent is fine; a pack's is refused).
    pub async fn delete_stored(&self, store: &dyn Store, id: &str) -> Result<(), SchemaError> {
        if let Some(owner) = self.get(id).and_then(|d| d.pack_id) {
            return Err(SchemaError::Owned { id: id.to_string(), pack: owner });
        }
        store
            .apply(vec![crate::store::Op::Delete { key: format!("{SCHEMA_PREFIX}{id}") }])
            .await
            .map_err(|e| SchemaError::Store(e.to_string()))?;
        self.unregister(id);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<SchemaDoc> {
        self.schemas.read().get(id).map(|d| d.0.clone())
    }

    fn instantiate_with(&self, tenant: &str, component: &LoadedComponent) -> Result<WarmSchema, PluginError> {
        let Prepared::Schema(pre) = &component.prepared else {
            return Err(PluginError::Instantiate("not a schema component".into()));
        };
        let mut store = self.runtime.plugin_store(tenant, "schema")?;
        let bindings = pre.instantiate(&mut store).map_err(|e| self.runtime.classify(&store, self.limits, e))?;
        Ok(WarmSchema { store, bindings, digest: component.digest.clone() })
    }

    fn call<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut WarmSchema) -> wasmtime::Result<Result<T, wit::SchemaError>>,
    ) -> Result<T, SchemaError> {
        let component = self.component_for(tenant);
        let mut instance = match self.warm.take(tenant).filter(|i| i.digest == component.digest) {
            Some(i) => i,
            None => self.instantiate_with(tenant, &component)?,
        };
        self.runtime.arm(&mut instance.store, self.limits);
        match f(&mut instance) {
            Ok(result) => {
                self.warm.give_back(tenant, instance);
                result.map_err(|e| match e {
                    wit::SchemaError::InvalidSchema(m) => SchemaError::InvalidSchema(m),
                    wit::SchemaError::InvalidDocument(m) => SchemaError::InvalidDocument(m),
                })
            }
            Err(e) => Err(self.runtime.classify(&instance.store, self.limits, e).into()),
        }
    }

    /// Compile a schema in a sandbox; refuse it with the reason if broken.
    pub fn check_schema(&self, schema: &serde_json::Value) -> Result<(), SchemaError> {
        let text = schema.to_string();
        self.call("system", |i| i.bindings.cordum_schema_validator().call_check_schema(&mut i.store, &text))
    }

    /// Validate `document` (JSON text) against registered schema `id`.
    pub fn validate(&self, tenant: &str, id: &str, document: &str) -> Result<Vec<Violation>, SchemaError> {
        let doc = self.schemas.read().get(id).cloned().ok_or_else(|| SchemaError::Unknown(id.to_string()))?;
        self.validate_text(tenant, &doc.0.sha256, &doc.1, document)
    }

    /// Validate `document` against a schema given inline (such as a
    /// workflow's `input_schema`); compiled schemas are cached by content hash.
    pub fn validate_inline(
        &self,
        tenant: &str,
        schema: &serde_json::Value,
        document: &str,
    ) -> Result<Vec<Violation>, SchemaError> {
        let text = schema.to_string();
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        self.validate_text(tenant, &sha, &text, document)
    }

    fn validate_text(
        &self,
        tenant: &str,
        sha: &str,
        text: &str,
        document: &str,
    ) -> Result<Vec<Violation>, SchemaError> {
        let violations = self
            .call(tenant, |i| i.bindings.cordum_schema_validator().call_validate(&mut i.store, sha, text, document))?;
        Ok(violations
            .into_iter()
            .take(MAX_VIOLATIONS)
            .map(|v| Violation {
                instance_path: v.instance_path,
                schema_path: v.schema_path,
                keyword: v.keyword,
                message: shorten(v.message),
            })
            .collect())
    }
}

/// Most violations reported for one document.
const MAX_VIOLATIONS: usize = 100;
/// Longest violation message reported: validators quote the offending
/// value, and an answer should not echo a megabyte of the caller's input.
const MAX_MESSAGE: usize = 512;

fn shorten(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (truncated)");
    }
    message
}

#[cfg(test)]
mod message_tests {
    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(super::shorten("short".into()), "short");
        let long = "é".repeat(1000);
        let cut = super::shorten(long);
        assert!(cut.len() <= super::MAX_MESSAGE + "… (truncated)".len(), "{}", cut.len());
        assert!(cut.ends_with("… (truncated)"));
    }
}
