//! Installing a pack, all or nothing: verify the bundle digest, unpack with
//! guards, validate the manifest, check every schema with the schema
//! component, check the policy fragments together with the active policy,
//! load (precompile) the component, and only then write everything in one
//! atomic store batch and activate it (policy snapshot, schemas, topics).
//! A failure names the step and leaves nothing behind.

use super::archive::{UnpackLimits, read_bundle};
use super::catalog::{CatalogEntry, CatalogSource};
use super::manifest::Manifest;
use super::overlay;
use super::registry::{ComponentRecord, InstalledPack, PACK_PREFIX, PackRecord, PackRegistry, PackSource};
use crate::policy::{BUNDLE_PREFIX, PolicyRequest, PolicyService, StoredBundle};
use crate::runtime::sandbox::SandboxLimits;
use crate::runtime::{Runtime, World};
use crate::schema::{SCHEMA_PREFIX, SchemaDoc, SchemaService};
use crate::store::{BatchOutcome, Op, Store, to_json};
use crate::workflows::model::WorkflowDef;
use crate::workflows::validate::validate as validate_workflow;
use chrono::Utc;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const SYSTEM_CONFIG_KEY: &str = "cfg:system:default";

#[derive(Debug, thiserror::Error)]
#[error("pack install failed at step {step}: {message}")]
pub struct InstallError {
    pub step: &'static str,
    pub message: String,
}

fn fail(step: &'static str) -> impl Fn(String) -> InstallError {
    move |message| InstallError { step, message }
}

pub struct PackInstaller {
    pub store: Arc<dyn Store>,
    pub runtime: Arc<Runtime>,
    pub schemas: Arc<SchemaService>,
    pub policy: Arc<PolicyService>,
    pub registry: Arc<PackRegistry>,
    pub data_dir: PathBuf,
    pub default_limits: SandboxLimits,
    /// Checks a bundle's signature (mode and trusted keys from the settings);
    /// `Ok` carries what is recorded on the pack.
    pub verify: Verifier,
}

/// Signature check of an unpacked bundle.
pub type Verifier = Box<dyn Fn(&[(String, Vec<u8>)]) -> Result<Option<serde_json::Value>, String> + Send + Sync>;

impl PackInstaller {
    fn component_path(&self, digest: &str) -> (String, PathBuf) {
        let rel = format!("components/{digest}.wasm");
        (rel.clone(), self.data_dir.join(rel))
    }

    fn limits_for(&self, record: &PackRecord) -> SandboxLimits {
        match &record.component {
            Some(c) => SandboxLimits { memory_bytes: c.max_memory_bytes, timeout: Duration::from_millis(c.timeout_ms) },
            None => self.default_limits,
        }
    }

    /// Load what earlier runs installed: schemas, components, topics.
    pub async fn load_installed(&self) -> Result<usize, InstallError> {
        let step = fail("load");
        for (_, entry) in self.store.scan(SCHEMA_PREFIX, None, 100_000).await.map_err(|e| step(e.to_string()))? {
            let doc: SchemaDoc = entry.json().map_err(|e| step(e.to_string()))?;
            self.schemas.register(doc);
        }
        let mut count = 0;
        for (_, entry) in self.store.scan(PACK_PREFIX, None, 100_000).await.map_err(|e| step(e.to_string()))? {
            let record: PackRecord = entry.json().map_err(|e| step(e.to_string()))?;
            if record.status != "ACTIVE" {
                continue;
            }
            let component = match &record.component {
                Some(c) => {
                    let bytes = std::fs::read(self.data_dir.join(&c.file))
                        .map_err(|e| step(format!("component of {}: {e}", record.id)))?;
                    Some(self.runtime.load(&bytes, World::Pack).map_err(|e| step(e.to_string()))?)
                }
                None => None,
            };
            let limits = self.limits_for(&record);
            self.registry.insert(InstalledPack { record, component, limits });
            count += 1;
        }
        Ok(count)
    }

    pub async fn install_from_catalog(
        &self,
        source: &CatalogSource,
        entry: &CatalogEntry,
        installed_by: &str,
    ) -> Result<PackRecord, InstallError> {
        let bytes = source.fetch_bundle(entry).map_err(fail("fetch"))?;
        let origin = PackSource { catalog: source.name.clone(), url: entry.url.clone(), sha256: entry.sha256.clone() };
        self.install_bundle(&bytes, &entry.sha256, origin, installed_by).await
    }

    pub async fn install_bundle(
        &self,
        bytes: &[u8],
        expected_sha256: &str,
        origin: PackSource,
        installed_by: &str,
    ) -> Result<PackRecord, InstallError> {
        self.install(bytes, Some(expected_sha256), origin, installed_by, false).await
    }

    /// Install (or, with `upgrade`, replace an installed version of) the pack
    /// in `bytes`. Every check runs before anything is written; the writes
    /// are one atomic batch; a failure names its step and leaves nothing.
    pub async fn install(
        &self,
        bytes: &[u8],
        expected_sha256: Option<&str>,
        origin: PackSource,
        installed_by: &str,
        upgrade: bool,
    ) -> Result<PackRecord, InstallError> {
        let actual = hex::encode(Sha256::digest(bytes));
        if let Some(expected) = expected_sha256
            && !actual.eq_ignore_ascii_case(expected.trim())
        {
            return Err(fail("digest")(format!("bundle sha256 {actual} does not match the expected {expected}")));
        }
        let unpacked = read_bundle(bytes, UnpackLimits::default()).map_err(|e| fail("unpack")(e.to_string()))?;
        let verification = (self.verify)(&unpacked).map_err(fail("signature"))?;
        let files: HashMap<String, Vec<u8>> = unpacked.into_iter().collect();
        let read = |path: &str, step: &'static str| {
            files
                .get(path.trim_start_matches("./"))
                .ok_or_else(|| fail(step)(format!("{path} is missing from the bundle")))
        };
        let manifest_bytes = files
            .get("pack.yaml")
            .or_else(|| files.get("pack.yml"))
            .ok_or_else(|| fail("manifest")("pack.yaml is missing from the bundle".into()))?;
        let manifest = Manifest::parse(manifest_bytes).map_err(fail("manifest"))?;
        let id = manifest.metadata.id.clone();

        // Ownership: a pack id installs once (upgrade replaces it); topics belong to one pack.
        let existing =
            self.store.get(&format!("{PACK_PREFIX}{id}")).await.map_err(|e| fail("ownership")(e.to_string()))?;
        let (expected_revision, previous) = match &existing {
            Some(entry) => {
                let record: PackRecord = entry.json().map_err(|e| fail("ownership")(e.to_string()))?;
                if record.status == "ACTIVE" && !upgrade {
                    return Err(fail("ownership")(format!(
                        "pack {id} is already installed (version {}); install with upgrade to replace it",
                        record.version
                    )));
                }
                (entry.revision, Some(record).filter(|r| r.status == "ACTIVE"))
            }
            None => (0, None),
        };
        for topic in &manifest.topics {
            if let Some(owner) = self.registry.topic(&topic.name).filter(|t| t.pack_id != id) {
                return Err(fail("ownership")(format!("topic {} is owned by pack {}", topic.name, owner.pack_id)));
            }
        }

        // Schemas: parse and compile each in the schema component.
        let mut schema_docs = Vec::new();
        let mut schema_digests = BTreeMap::new();
        for res in &manifest.resources.schemas {
            let raw = read(&res.path, "schemas")?;
            let value: serde_json::Value =
                serde_yaml::from_slice(raw).map_err(|e| fail("schemas")(format!("schema {}: {e}", res.id)))?;
            if !value.is_object() {
                return Err(fail("schemas")(format!("schema {} is not an object", res.id)));
            }
            if let Some(other) = self.schemas.get(&res.id).and_then(|d| d.pack_id).filter(|p| *p != id) {
                return Err(fail("schemas")(format!("schema {} belongs to pack {other}", res.id)));
            }
            self.schemas.check_schema(&value).map_err(|e| fail("schemas")(format!("schema {}: {e}", res.id)))?;
            let doc = SchemaDoc::new(&res.id, value, Some(id.clone()));
            schema_digests.insert(doc.id.clone(), doc.sha256.clone());
            schema_docs.push(doc);
        }

        // Workflows: valid definitions whose schemas exist once installed.
        let mut workflows = Vec::new();
        let mut workflow_digests = BTreeMap::new();
        for res in &manifest.resources.workflows {
            let raw = read(&res.path, "workflows")?;
            let value: serde_json::Value =
                serde_yaml::from_slice(raw).map_err(|e| fail("workflows")(format!("workflow {}: {e}", res.id)))?;
            let mut def: WorkflowDef = serde_json::from_value(value.clone())
                .map_err(|e| fail("workflows")(format!("workflow {}: {e}", res.id)))?;
            if !def.id.is_empty() && def.id != res.id {
                return Err(fail("workflows")(format!("workflow {} declares id {:?}", res.id, def.id)));
            }
            def.id = res.id.clone();
            validate_workflow(&def).map_err(|e| fail("workflows")(format!("workflow {}: {e}", res.id)))?;
            for step in def.steps.values() {
                if let Some(schema) = &step.input_schema_id
                    && self.schemas.get(schema).is_none()
                    && !manifest.resources.schemas.iter().any(|s| &s.id == schema)
                {
                    return Err(fail("workflows")(format!("workflow {}: unknown schema {schema}", res.id)));
                }
            }
            workflow_digests.insert(res.id.clone(), hex::encode(Sha256::digest(value.to_string().as_bytes())));
            workflows.push((res.id.clone(), value));
        }

        // Policy fragments: checked together with the active policy (an
        // upgraded pack's old fragments taken out).
        let mut fragments = Vec::new();
        for overlay in &manifest.overlays.policy {
            let raw = read(&overlay.path, "policy")?;
            let content = String::from_utf8(raw.clone())
                .map_err(|_| fail("policy")(format!("fragment {} is not UTF-8", overlay.path)))?;
            fragments
                .push((format!("{id}/{}", if overlay.name.is_empty() { "default" } else { &overlay.name }), content));
        }
        let mut draft: Vec<(String, Option<String>)> = previous
            .iter()
            .flat_map(|p| p.policy_fragments.iter())
            .filter(|b| !fragments.iter().any(|(f, _)| f == *b))
            .map(|b| (b.clone(), None))
            .collect();
        draft.extend(fragments.iter().map(|(b, c)| (b.clone(), Some(c.clone()))));
        if !fragments.is_empty() {
            let diags = self.policy.check_with(&fragments).map_err(|e| fail("policy")(e.to_string()))?;
            if !diags.is_empty() {
                let text = diags
                    .iter()
                    .map(|d| format!("{} line {} column {}: {}", d.bundle_id, d.line, d.column, d.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(fail("policy")(text));
            }
        }
        // The manifest's own expectations, against the policy as it will be.
        for (name, request, expected) in simulations(&manifest).map_err(fail("policy_simulations"))? {
            let got =
                self.policy.evaluate_with(&draft, &request).map_err(|e| fail("policy_simulations")(e.to_string()))?;
            if got.decision.as_str() != expected {
                return Err(fail("policy_simulations")(format!(
                    "simulation {name:?} expected {expected} but the policy decides {} (rule {:?}: {})",
                    got.decision.as_str(),
                    got.rule_id,
                    got.reason
                )));
            }
        }

        // Component: linked against the pack world and precompiled.
        let mut component = None;
        let mut component_record = None;
        if let Some(spec) = &manifest.component {
            let wasm = read(&spec.path, "component")?;
            let loaded = self.runtime.load(wasm, World::Pack).map_err(|e| fail("component")(e.to_string()))?;
            let (rel, path) = self.component_path(&loaded.digest);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| fail("component")(e.to_string()))?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, wasm)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| fail("component")(e.to_string()))?;
            let memory = spec.limits.max_memory_bytes.unwrap_or(self.default_limits.memory_bytes);
            let timeout = spec.limits.timeout_ms.unwrap_or(self.default_limits.timeout.as_millis() as u64);
            component_record = Some(ComponentRecord {
                digest: loaded.digest.clone(),
                world: spec.world.clone(),
                file: rel,
                max_memory_bytes: memory.min(self.runtime.limits.max_memory_bytes),
                timeout_ms: timeout.min(self.default_limits.timeout.as_millis() as u64).max(1),
            });
            component = Some(loaded);
        }

        // Config overlays merged into the system config document, leaf by
        // leaf, so uninstall can take them back exactly.
        let mut ops = Vec::new();
        let mut config_changes = Vec::new();
        let old_changes = previous.as_ref().map(|p| p.config_changes.as_slice()).unwrap_or_default();
        if !manifest.overlays.config.is_empty() || !old_changes.is_empty() {
            let current = self.store.get(SYSTEM_CONFIG_KEY).await.map_err(|e| fail("config")(e.to_string()))?;
            let (mut doc, revision) = match &current {
                Some(e) => (e.json::<serde_json::Value>().map_err(|e| fail("config")(e.to_string()))?, e.revision),
                None => (serde_json::json!({"scope": "system", "scope_id": "default", "data": {}}), 0),
            };
            overlay::revert(&mut doc["data"], old_changes);
            for overlay in &manifest.overlays.config {
                let raw = read(&overlay.path, "config")?;
                let patch: serde_json::Value = serde_yaml::from_slice(raw)
                    .map_err(|e| fail("config")(format!("overlay {}: {e}", overlay.name)))?;
                if !patch.is_object() {
                    return Err(fail("config")(format!("overlay {} is not an object", overlay.name)));
                }
                config_changes.extend(overlay::apply_tracked(&mut doc["data"], &overlay.key, &patch));
            }
            doc["updated_at"] = serde_json::json!(Utc::now());
            ops.push(Op::PutIfRevision {
                key: SYSTEM_CONFIG_KEY.into(),
                value: to_json(&doc),
                expected: revision,
                ttl: None,
            });
        }

        let now = Utc::now();
        let record = PackRecord {
            id: id.clone(),
            version: manifest.metadata.version.clone(),
            status: "ACTIVE".into(),
            installed_at: now,
            installed_by: installed_by.to_string(),
            manifest: manifest.clone(),
            schemas: schema_digests,
            workflows: workflow_digests,
            policy_fragments: fragments.iter().map(|(b, _)| b.clone()).collect(),
            component: component_record,
            source: origin,
            config_changes,
            verification,
            uninstalled_at: None,
        };
        ops.push(Op::PutIfRevision {
            key: format!("{PACK_PREFIX}{id}"),
            value: to_json(&record),
            expected: expected_revision,
            ttl: None,
        });
        // What an upgraded version no longer has goes away.
        let mut dropped_schemas = Vec::new();
        if let Some(old) = &previous {
            for schema in old.schemas.keys().filter(|s| !record.schemas.contains_key(*s)) {
                ops.push(Op::Delete { key: format!("{SCHEMA_PREFIX}{schema}") });
                dropped_schemas.push(schema.clone());
            }
            for wf in old.workflows.keys().filter(|w| !record.workflows.contains_key(*w)) {
                ops.push(Op::Delete { key: format!("workflow:{wf}") });
            }
            for bundle in old.policy_fragments.iter().filter(|b| !record.policy_fragments.contains(b)) {
                ops.push(Op::Delete { key: format!("{BUNDLE_PREFIX}{bundle}") });
            }
        }
        for doc in &schema_docs {
            ops.push(Op::put_json(format!("{SCHEMA_PREFIX}{}", doc.id), doc));
        }
        for (wf_id, value) in &workflows {
            ops.push(Op::put_json(format!("workflow:{wf_id}"), value));
        }
        for (bundle_id, content) in &fragments {
            let bundle = StoredBundle {
                id: bundle_id.clone(),
                content: content.clone(),
                source: "pack".into(),
                enabled: true,
                sha256: hex::encode(Sha256::digest(content.as_bytes())),
                updated_at: now,
            };
            ops.push(Op::put_json(format!("{BUNDLE_PREFIX}{bundle_id}"), &bundle));
        }
        match self.store.apply(ops).await.map_err(|e| fail("store")(e.to_string()))? {
            BatchOutcome::Applied(_) => {}
            BatchOutcome::Conflict { .. } => {
                return Err(fail("store")(
                    "a concurrent change touched this pack or the config; nothing was written".into(),
                ));
            }
        }
        for schema in dropped_schemas {
            self.schemas.unregister(&schema);
        }

        // Activate: schemas, policy snapshot, topics and component.
        for doc in schema_docs {
            self.schemas.register(doc);
        }
        self.policy.reload().await.map_err(|e| fail("activate")(e.to_string()))?;
        self.record_policy("pack_install", installed_by, &format!("{id}@{}", record.version)).await;
        let limits = self.limits_for(&record);
        self.registry.insert(InstalledPack { record: record.clone(), component, limits });
        tracing::info!(pack = %id, version = %record.version, "pack installed");
        Ok(record)
    }

    /// Note a policy change in the policy history (the pack itself is
    /// already written; a failure here only loses the history line).
    async fn record_policy(&self, action: &str, by: &str, what: &str) {
        if let Err(e) = self.policy.record_active(action, by, what).await {
            tracing::warn!(error = %e, action, "could not record the policy change in the history");
        }
    }

    /// Uninstall an active pack: take back exactly what its install added
    /// (config leaves get their old values, its schemas, workflows, policy
    /// fragments and topics go). The record stays, `DISABLED`.
    pub async fn uninstall(&self, id: &str, by: &str) -> Result<PackRecord, InstallError> {
        let step = fail("uninstall");
        let key = format!("{PACK_PREFIX}{id}");
        for _ in 0..8 {
            let entry = self.store.get(&key).await.map_err(|e| step(e.to_string()))?;
            let Some(entry) = entry else { return Err(not_installed(id)) };
            let mut record: PackRecord = entry.json().map_err(|e| step(e.to_string()))?;
            if record.status != "ACTIVE" {
                return Err(not_installed(id));
            }
            let mut ops = Vec::new();
            let mut kept = Vec::new();
            if !record.config_changes.is_empty()
                && let Some(current) = self.store.get(SYSTEM_CONFIG_KEY).await.map_err(|e| step(e.to_string()))?
            {
                let mut doc: serde_json::Value = current.json().map_err(|e| step(e.to_string()))?;
                kept = overlay::revert(&mut doc["data"], &record.config_changes);
                doc["updated_at"] = serde_json::json!(Utc::now());
                ops.push(Op::PutIfRevision {
                    key: SYSTEM_CONFIG_KEY.into(),
                    value: to_json(&doc),
                    expected: current.revision,
                    ttl: None,
                });
            }
            let owned_schemas: Vec<String> = record
                .schemas
                .keys()
                .filter(|s| self.schemas.get(s).is_none_or(|d| d.pack_id.as_deref() == Some(id)))
                .cloned()
                .collect();
            for schema in &owned_schemas {
                ops.push(Op::Delete { key: format!("{SCHEMA_PREFIX}{schema}") });
            }
            for wf in record.workflows.keys() {
                ops.push(Op::Delete { key: format!("workflow:{wf}") });
            }
            for bundle in &record.policy_fragments {
                ops.push(Op::Delete { key: format!("{BUNDLE_PREFIX}{bundle}") });
            }
            record.status = "DISABLED".into();
            record.uninstalled_at = Some(Utc::now());
            ops.push(Op::PutIfRevision {
                key: key.clone(),
                value: to_json(&record),
                expected: entry.revision,
                ttl: None,
            });
            match self.store.apply(ops).await.map_err(|e| step(e.to_string()))? {
                BatchOutcome::Applied(_) => {}
                BatchOutcome::Conflict { .. } => continue,
            }
            for schema in &owned_schemas {
                self.schemas.unregister(schema);
            }
            self.registry.remove(id);
            self.policy.reload().await.map_err(|e| fail("activate")(e.to_string()))?;
            self.record_policy("pack_uninstall", by, id).await;
            if !kept.is_empty() {
                tracing::warn!(pack = %id, leaves = ?kept, "config changed since the install was left as it is");
            }
            tracing::info!(pack = %id, %by, "pack uninstalled");
            return Ok(record);
        }
        Err(step("the pack or the config kept changing; retry".into()))
    }
}

fn not_installed(id: &str) -> InstallError {
    InstallError { step: "lookup", message: format!("pack {id} is not installed") }
}

/// The manifest's `tests.policySimulations`: (name, request, expected decision).
pub fn simulations(manifest: &Manifest) -> Result<Vec<(String, PolicyRequest, String)>, String> {
    let strings = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v.get(key)
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or("").to_string();
    let mut out = Vec::new();
    for (i, sim) in manifest.tests.policy_simulations.iter().enumerate() {
        let name = sim.get("name").and_then(|n| n.as_str()).map(str::to_string).unwrap_or_else(|| format!("#{i}"));
        let request = sim.get("request").ok_or_else(|| format!("simulation {name:?} has no request"))?;
        let expected = text(sim, "expectDecision").to_ascii_uppercase();
        let expected = match expected.trim_start_matches("DECISION_TYPE_") {
            "REQUIRE_HUMAN" => "REQUIRE_APPROVAL".to_string(),
            "" => return Err(format!("simulation {name:?} has no expectDecision")),
            other => other.to_string(),
        };
        if !matches!(expected.as_str(), "ALLOW" | "DENY" | "REQUIRE_APPROVAL" | "THROTTLE" | "ALLOW_WITH_CONSTRAINTS") {
            return Err(format!("simulation {name:?}: unknown expectDecision {expected:?}"));
        }
        let labels = request
            .get("labels")
            .and_then(|l| l.as_object())
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let tenant = text(request, "tenantId");
        let pack_id = text(request, "packId");
        out.push((
            name,
            PolicyRequest {
                job_id: format!("simulation-{i}"),
                topic: text(request, "topic"),
                tenant: if tenant.is_empty() { "default".into() } else { tenant },
                principal_id: text(request, "principalId"),
                actor_id: text(request, "actorId"),
                actor_type: text(request, "actorType"),
                capability: text(request, "capability"),
                risk_tags: strings(request, "riskTags"),
                requires: strings(request, "requires"),
                pack_id: if pack_id.is_empty() { manifest.metadata.id.clone() } else { pack_id },
                labels,
            },
            expected,
        ));
    }
    Ok(out)
}
