//! `pack.yaml`: Cordum's `cordum.io/v1alpha1` Pack manifest, extended with a
//! `component` section naming the pack's WebAssembly worker.

use serde::{Deserialize, Serialize};

pub const PACK_WORLD: &str = "cordum:pack/pack-worker@0.1.0";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub compatibility: Compatibility,
    #[serde(default)]
    pub topics: Vec<TopicSpec>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub overlays: Overlays,
    #[serde(default)]
    pub tests: Tests,
    #[serde(default)]
    pub component: Option<ComponentSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Compatibility {
    #[serde(default)]
    pub protocol_version: u32,
    #[serde(default)]
    pub min_core_version: String,
    #[serde(default)]
    pub max_core_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicSpec {
    pub name: String,
    #[serde(default)]
    pub capability: String,
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub risk_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub schemas: Vec<ResourceRef>,
    #[serde(default)]
    pub workflows: Vec<ResourceRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceRef {
    pub id: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Overlays {
    #[serde(default)]
    pub config: Vec<ConfigOverlay>,
    #[serde(default)]
    pub policy: Vec<PolicyOverlay>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigOverlay {
    pub name: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub scope_id: String,
    pub key: String,
    #[serde(default)]
    pub strategy: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyOverlay {
    pub name: String,
    #[serde(default)]
    pub strategy: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tests {
    #[serde(default)]
    pub policy_simulations: Vec<serde_json::Value>,
}

/// Our extension: the pack's worker component.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// Path of the `.wasm` component inside the bundle.
    pub path: String,
    /// WIT world it implements; must be `cordum:pack/pack-worker@0.1.0`.
    pub world: String,
    #[serde(default)]
    pub limits: ComponentLimits,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Topic names as upstream accepts them: `job.` then dot-separated segments.
pub fn valid_topic(topic: &str) -> bool {
    if topic.len() > 256 {
        return false;
    }
    let Some(rest) = topic.strip_prefix("job.") else {
        return false;
    };
    !rest.is_empty()
        && rest.split('.').all(|seg| {
            let b = seg.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
        })
}

impl Manifest {
    pub fn parse(text: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_yaml::from_slice(text).map_err(|e| match e.location() {
            Some(l) => format!("pack.yaml line {} column {}: {e}", l.line(), l.column()),
            None => format!("pack.yaml: {e}"),
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Upstream's manifest rules plus ours for the component section.
    pub fn validate(&self) -> Result<(), String> {
        let id = &self.metadata.id;
        if !valid_id(id) {
            return Err(format!("metadata.id {id:?} must match ^[a-z0-9-]+$"));
        }
        if self.metadata.version.trim().is_empty() {
            return Err("metadata.version is required".into());
        }
        if !self.api_version.is_empty() && self.api_version != "cordum.io/v1alpha1" {
            return Err(format!("unsupported apiVersion {:?}", self.api_version));
        }
        if !self.kind.is_empty() && self.kind != "Pack" {
            return Err(format!("kind must be Pack, not {:?}", self.kind));
        }
        if self.compatibility.protocol_version != 1 {
            return Err("compatibility.protocolVersion must be 1".into());
        }
        let topic_prefix = format!("job.{id}.");
        let schema_ids: Vec<&str> = self.resources.schemas.iter().map(|s| s.id.as_str()).collect();
        for topic in &self.topics {
            if !topic.name.starts_with(&topic_prefix) || !valid_topic(&topic.name) {
                return Err(format!("topic {:?} must be a valid topic under {topic_prefix}", topic.name));
            }
            for schema in topic.input_schema.iter().chain(topic.output_schema.iter()) {
                if !schema_ids.contains(&schema.as_str()) {
                    return Err(format!("topic {:?} names undeclared schema {schema:?}", topic.name));
                }
            }
        }
        for schema in &self.resources.schemas {
            if !schema.id.starts_with(&format!("{id}/")) {
                return Err(format!("schema id {:?} must start with {id}/", schema.id));
            }
        }
        for wf in &self.resources.workflows {
            if !wf.id.starts_with(&format!("{id}.")) {
                return Err(format!("workflow id {:?} must start with {id}.", wf.id));
            }
        }
        for overlay in &self.overlays.config {
            if !overlay.strategy.is_empty() && overlay.strategy != "json_merge_patch" {
                return Err(format!("config overlay {:?}: unsupported strategy {:?}", overlay.name, overlay.strategy));
            }
            if !matches!(overlay.key.as_str(), "pools" | "timeouts") {
                return Err(format!(
                    "config overlay {:?}: unsupported config overlay key {:?}",
                    overlay.name, overlay.key
                ));
            }
        }
        for overlay in &self.overlays.policy {
            if !overlay.strategy.is_empty() && overlay.strategy != "bundle_fragment" {
                return Err(format!("policy overlay {:?}: unsupported strategy {:?}", overlay.name, overlay.strategy));
            }
        }
        if let Some(c) = &self.component
            && c.world != PACK_WORLD
            && c.world != "cordum:pack/pack-worker"
        {
            return Err(format!("component.world must be {PACK_WORLD}, not {:?}", c.world));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(valid_topic("job.hello-pack.echo"));
        assert!(!valid_topic("job..x"));
        assert!(!valid_topic("foo"));
        assert!(!valid_topic("job.x-"));
    }

    #[test]
    fn rejects_foreign_topics_and_bad_world() {
        let base = "apiVersion: cordum.io/v1alpha1\nkind: Pack\nmetadata: {id: p, version: 0.1.0}\ncompatibility: {protocolVersion: 1}\n";
        assert!(Manifest::parse(format!("{base}topics: [{{name: job.p.x}}]").as_bytes()).is_ok());
        assert!(Manifest::parse(format!("{base}topics: [{{name: job.other.x}}]").as_bytes()).is_err());
        assert!(Manifest::parse(format!("{base}component: {{path: c.wasm, world: 'x:y/z'}}").as_bytes()).is_err());
        assert!(
            Manifest::parse(
                format!("{base}component: {{path: c.wasm, world: 'cordum:pack/pack-worker@0.1.0', bogus: 1}}")
                    .as_bytes()
            )
            .is_err()
        );
    }
}
