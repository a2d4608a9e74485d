//! Plugins from the marketplace: catalog entries whose `kind` is
//! `policy-component` or `schema-validator` carry a bundle with a
//! `plugin.yaml` and one component, versioned, digested and signed like a
//! pack. A tenant's admin installs one for that tenant only: a policy
//! component runs after the rules for that tenant (see
//! `policy::tenant`), a schema validator replaces the first-party one for
//! that tenant's validations. Each is checked against its WIT world and
//! probed before it is activated.
//!
//! Stored: schema validators under `tenantschema:<tenant>` (policy
//! components are kept by `policy::tenant`), the `.wasm` by digest under
//! the data dir's `components/`.

use super::archive::{UnpackLimits, read_bundle};
use crate::policy::PolicyService;
use crate::runtime::{Runtime, World};
use crate::schema::SchemaService;
use crate::store::{Op, Store};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

const SCHEMA_RECORD_PREFIX: &str = "tenantschema:";
pub const POLICY_KIND: &str = "policy-component";
pub const SCHEMA_KIND: &str = "schema-validator";

/// `plugin.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginManifest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: PluginMetadata,
    pub component: PluginComponent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginMetadata {
    pub id: String,
    pub version: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginComponent {
    pub path: String,
    /// `cordum:policy/policy-plugin@0.1.0` or `cordum:schema/schema-plugin@0.1.0`.
    pub world: String,
}

/// A tenant's installed schema validator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaValidatorRecord {
    pub tenant: String,
    pub plugin_id: String,
    pub version: String,
    pub digest: String,
    pub file: String,
    pub installed_by: String,
    pub installed_at: DateTime<Utc>,
}

/// What a plugin install left for the tenant.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInstall {
    pub kind: String,
    pub tenant: String,
    pub plugin_id: String,
    pub version: String,
    pub digest: String,
}

pub struct Plugins {
    pub runtime: Arc<Runtime>,
    pub store: Arc<dyn Store>,
    pub policy: Arc<PolicyService>,
    pub schemas: Arc<SchemaService>,
    pub data_dir: PathBuf,
}

fn world_of(kind: &str) -> Option<(World, &'static str)> {
    match kind {
        POLICY_KIND => Some((World::Policy, "cordum:policy/policy-plugin")),
        SCHEMA_KIND => Some((World::Schema, "cordum:schema/schema-plugin")),
        _ => None,
    }
}

impl Plugins {
    /// Schema validators installed by earlier runs.
    pub async fn load_stored(&self) -> Result<usize, String> {
        let mut count = 0;
        for (_, entry) in self.store.scan(SCHEMA_RECORD_PREFIX, None, 100_000).await.map_err(|e| e.to_string())? {
            let record: SchemaValidatorRecord = entry.json().map_err(|e| e.to_string())?;
            let bytes = std::fs::read(self.data_dir.join(&record.file)).map_err(|e| e.to_string())?;
            let component = self.runtime.load(&bytes, World::Schema).map_err(|e| e.to_string())?;
            self.schemas.set_tenant_component(&record.tenant, Some(Arc::new(component)));
            count += 1;
        }
        Ok(count)
    }

    pub async fn schema_validator(&self, tenant: &str) -> Option<SchemaValidatorRecord> {
        self.store.get(&format!("{SCHEMA_RECORD_PREFIX}{tenant}")).await.ok().flatten().and_then(|e| e.json().ok())
    }

    /// Install a plugin bundle of `kind` for `tenant` (already verified and digest-checked).
    pub async fn install(&self, kind: &str, tenant: &str, bundle: &[u8], by: &str) -> Result<PluginInstall, String> {
        let (world, world_name) = world_of(kind).ok_or_else(|| format!("unknown plugin kind {kind:?}"))?;
        let files = read_bundle(bundle, UnpackLimits::default()).map_err(|e| format!("unpack: {e}"))?;
        let find = |path: &str| files.iter().find(|(p, _)| p == path.trim_start_matches("./")).map(|(_, b)| b);
        let manifest: PluginManifest =
            serde_yaml::from_slice(find("plugin.yaml").ok_or("plugin.yaml is missing from the bundle")?)
                .map_err(|e| format!("plugin.yaml: {e}"))?;
        if !manifest.kind.is_empty() && manifest.kind != "Plugin" {
            return Err(format!("plugin.yaml: kind must be Plugin, not {:?}", manifest.kind));
        }
        if !manifest.component.world.starts_with(world_name) {
            return Err(format!(
                "a {kind} implements {world_name}@0.1.0, but the plugin declares {}",
                manifest.component.world
            ));
        }
        let wasm = find(&manifest.component.path)
            .ok_or_else(|| format!("{} is missing from the bundle", manifest.component.path))?;
        match world {
            World::Policy => {
                let tenants = self.policy.tenant_policies().ok_or("tenant policy components are not set up")?;
                let record = tenants
                    .install(
                        tenant,
                        wasm,
                        &self.policy.active_bundles(),
                        by,
                        Some(format!("{}@{}", manifest.metadata.id, manifest.metadata.version)),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(PluginInstall {
                    kind: kind.into(),
                    tenant: tenant.into(),
                    plugin_id: manifest.metadata.id,
                    version: manifest.metadata.version,
                    digest: record.digest,
                })
            }
            World::Schema => {
                let component = self
                    .runtime
                    .load(wasm, World::Schema)
                    .map_err(|e| format!("not a cordum:schema component: {e}"))?;
                self.schemas
                    .probe(tenant, &component, &serde_json::json!({"type": "object"}))
                    .map_err(|e| format!("the validator failed its probe: {e}"))?;
                let file = format!("components/{}.wasm", component.digest);
                let path = self.data_dir.join(&file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&path, wasm).map_err(|e| e.to_string())?;
                let record = SchemaValidatorRecord {
                    tenant: tenant.into(),
                    plugin_id: manifest.metadata.id.clone(),
                    version: manifest.metadata.version.clone(),
                    digest: component.digest.clone(),
                    file,
                    installed_by: by.into(),
                    installed_at: Utc::now(),
                };
                self.store
                    .apply(vec![Op::put_json(format!("{SCHEMA_RECORD_PREFIX}{tenant}"), &record)])
                    .await
                    .map_err(|e| e.to_string())?;
                self.schemas.set_tenant_component(tenant, Some(Arc::new(component)));
                Ok(PluginInstall {
                    kind: kind.into(),
                    tenant: tenant.into(),
                    plugin_id: record.plugin_id,
                    version: record.version,
                    digest: record.digest,
                })
            }
            World::Pack => Err("packs are not plugins".into()),
        }
    }
}
