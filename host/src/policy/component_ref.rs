//! Component bundles: a policy bundle that, instead of rules, names a
//! policy component.
//!
//! ```yaml
//! component:
//!   digest: 9f2c…   # sha256 of a component registered with POST /api/v1/policy/components
//!   name: strict    # optional; decisions show as rule `strict:<its rule>`
//! ```
//!
//! Such a bundle takes part in the snapshot like any other (its id and
//! content are hashed into the snapshot id, it is drafted, published and
//! rolled back the same way), but it is not handed to the rules engine:
//! after the rules decide, each component bundle in merge order runs the
//! named component, in the calling tenant's sandbox, and may only tighten
//! the decision (see `tenant::TenantPolicies::tighten_shared`).

use serde::Deserialize;

/// A parsed component bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentRef {
    pub digest: String,
    /// Label of its decisions (defaults to the bundle id).
    pub name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    component: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    digest: String,
    #[serde(default)]
    name: Option<String>,
}

/// `None`: a rules bundle. `Some(Err)`: a component bundle that is
/// malformed (message, 1-based line and column when known).
pub fn parse(bundle_id: &str, content: &str) -> Option<Result<ComponentRef, (String, u32, u32)>> {
    let value: serde_yaml::Value = serde_yaml::from_str(content).ok()?;
    let map = value.as_mapping()?;
    if !map.contains_key("component") {
        return None;
    }
    Some(match serde_yaml::from_str::<Doc>(content) {
        Ok(doc) => {
            let digest = doc.component.digest.trim().trim_start_matches("sha256:").to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                Err(("component.digest must be the sha256 of a component (64 hex digits)".into(), 0, 0))
            } else {
                let name = doc.component.name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| bundle_id.to_string());
                Ok(ComponentRef { digest, name })
            }
        }
        Err(e) => {
            let (line, column) = e.location().map(|l| (l.line() as u32, l.column() as u32)).unwrap_or((0, 0));
            Err((format!("a component bundle holds only `component: {{digest, name}}`: {e}"), line, column))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "9f2c000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn rule_bundles_are_not_component_bundles() {
        assert!(parse("b", "rules: []\n").is_none());
        assert!(parse("b", "not: [yaml").is_none());
    }

    #[test]
    fn component_bundles_parse_with_defaults() {
        let r = parse("acme/engine", &format!("component:\n  digest: sha256:{DIGEST}\n")).unwrap().unwrap();
        assert_eq!(r, ComponentRef { digest: DIGEST.into(), name: "acme/engine".into() });
        let r = parse("x", &format!("component: {{digest: {DIGEST}, name: strict}}")).unwrap().unwrap();
        assert_eq!(r.name, "strict");
    }

    #[test]
    fn malformed_component_bundles_say_why() {
        assert!(parse("x", "component:\n  digest: abc\n").unwrap().is_err());
        let (msg, line, _) = parse("x", &format!("component:\n  digest: {DIGEST}\nrules: []\n")).unwrap().unwrap_err();
        assert!(msg.contains("only"), "{msg}");
        assert!(line >= 1);
    }
}
