//! The policy document as written (YAML or JSON), decoded strictly.
//!
//! Every struct rejects unknown keys and every enum-like string, integer range
//! and required field of the policy JSON Schema is checked while decoding, so
//! a violation comes back from serde with the line and column of the
//! offending key or value. Checks that need the whole document (tier and
//! selector) run afterwards and carry no position.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{DecisionKind, Diagnostic, Remediation};

// ---------------------------------------------------------------------------
// Validated scalars
// ---------------------------------------------------------------------------

/// A fixed set of accepted strings for one field.
pub(crate) trait Choices {
    /// What the value is called in messages.
    const WHAT: &'static str;
    const VALUES: &'static [&'static str];
}

/// A string that must be one of `C::VALUES`.
#[derive(Debug, Clone)]
pub(crate) struct Choice<C> {
    pub value: String,
    _c: PhantomData<C>,
}

impl<C> Choice<C> {
    pub(crate) fn as_str(&self) -> &str {
        &self.value
    }
}

impl<'de, C: Choices> Deserialize<'de> for Choice<C> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<C>(PhantomData<C>);
        impl<C: Choices> Visitor<'_> for V<C> {
            type Value = Choice<C>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{} as one of: {}", C::WHAT, C::VALUES.join(", "))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Choice<C>, E> {
                if C::VALUES.contains(&v) {
                    Ok(Choice { value: v.to_owned(), _c: PhantomData })
                } else {
                    Err(E::custom(format_args!("{} \"{}\" must be one of: {}", C::WHAT, v, C::VALUES.join(", "))))
                }
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

macro_rules! choices {
    ($name:ident, $what:literal, [$($v:literal),* $(,)?]) => {
        #[derive(Debug, Clone)]
        pub(crate) struct $name;
        impl Choices for $name {
            const WHAT: &'static str = $what;
            const VALUES: &'static [&'static str] = &[$($v),*];
        }
    };
}

choices!(TierChoice, "tier", ["global", "workflow", "job"]);
choices!(
    RuleDecision,
    "decision",
    [
        "allow",
        "permit",
        "deny",
        "block",
        "require_approval",
        "require-approval",
        "require_human",
        "allow_with_constraints",
        "allow-with-constraints",
        "throttle",
    ]
);
choices!(InputDecision, "decision", ["deny", "require_approval", "require-approval", "require_human"]);
choices!(OutputDecision, "decision", ["allow", "deny", "quarantine", "redact"]);
choices!(Severity, "severity", ["low", "medium", "high", "critical"]);
// The gateway's sanitiser drops an empty fail_mode, so "" counts as unset.
choices!(FailMode, "fail_mode", ["open", "closed", ""]);
choices!(DenyAllow, "value", ["deny", "allow"]);

/// A tier name as written; `Tier` once resolved.
pub(crate) type TierField = Choice<TierChoice>;

/// An integer within `MIN..=MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranged<const MIN: i64, const MAX: i64>(pub i64);

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MIN: i64, const MAX: i64>;
        impl<const MIN: i64, const MAX: i64> Visitor<'_> for V<MIN, MAX> {
            type Value = Ranged<MIN, MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                if (MIN..=MAX).contains(&v) {
                    Ok(Ranged(v))
                } else if MAX == i64::MAX {
                    Err(E::custom(format_args!("{v} must be at least {MIN}")))
                } else {
                    Err(E::custom(format_args!("{v} must be between {MIN} and {MAX}")))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::custom(format_args!("{v} is too large"))),
                }
            }
        }
        d.deserialize_i64(V::<MIN, MAX>)
    }
}

/// A velocity key expression: `tenant`, `topic`, `actor_id`, `actor_type`,
/// `pack_id`, `capability` or `labels.<key>`, several joined with `:`.
#[derive(Debug, Clone)]
pub(crate) struct VelocityKey(pub String);

impl<'de> Deserialize<'de> for VelocityKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = VelocityKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a velocity key expression")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VelocityKey, E> {
                if v.trim().is_empty() {
                    return Err(E::custom("velocity key must not be empty"));
                }
                for part in v.split(':') {
                    let part = part.trim();
                    let ok = matches!(part, "tenant" | "topic" | "actor_id" | "actor_type" | "pack_id" | "capability")
                        || part.strip_prefix("labels.").is_some_and(|k| !k.is_empty());
                    if !ok {
                        return Err(E::custom(format_args!(
                            "velocity key part \"{part}\" must be one of: tenant, topic, actor_id, actor_type, pack_id, capability, labels.<key>"
                        )));
                    }
                }
                Ok(VelocityKey(v.trim().to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string that must not be empty (schema `minLength: 1`).
#[derive(Debug, Clone)]
#[allow(dead_code)] // validated only
pub(crate) struct NonEmpty(pub String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a non-empty string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NonEmpty, E> {
                if v.is_empty() { Err(E::custom("must not be empty")) } else { Ok(NonEmpty(v.to_owned())) }
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserialize `null` as the default value (the gateway strips nulls).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// ---------------------------------------------------------------------------
// Document
// ---------------------------------------------------------------------------

type List = Option<Vec<String>>;

/// One bundle's document (a fragment of the effective policy).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fragment {
    pub version: Option<String>,
    pub tier: Option<TierField>,
    pub selector: Option<Selector>,
    pub default_tenant: Option<String>,
    /// Lenient at runtime: `allow`/`permit` allow, anything else denies.
    pub default_decision: Option<String>,
    pub rules: Option<Vec<RuleDoc>>,
    pub output_rules: Option<Vec<OutputRuleDoc>>,
    pub input_rules: Option<Vec<InputRuleDoc>>,
    pub input_policy: Option<InputPolicyDoc>,
    pub output_policy: Option<OutputPolicyDoc>,
    pub tenants: Option<BTreeMap<String, TenantDoc>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selector {
    pub workflow_id: Option<String>,
    pub job_id: Option<String>,
    pub session_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    pub id: Option<String>,
    pub tier: Option<TierField>,
    pub selector: Option<Selector>,
    #[serde(rename = "match")]
    pub match_: Option<MatchDoc>,
    pub decision: Option<Choice<RuleDecision>>,
    pub reason: Option<String>,
    pub velocity: Option<VelocityDoc>,
    pub constraints: Option<ConstraintsDoc>,
    pub remediations: Option<Vec<Remediation>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VelocityDoc {
    pub max_requests: Ranged<1, { i64::MAX }>,
    pub window_seconds: Ranged<1, 86400>,
    pub key: VelocityKey,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchDoc {
    pub tenants: List,
    pub topics: List,
    pub capabilities: List,
    pub risk_tags: List,
    pub requires: List,
    pub pack_ids: List,
    pub actor_ids: List,
    pub actor_types: List,
    pub agent_risk_tiers: List,
    pub agent_data_classifications: List,
    pub labels: Option<BTreeMap<String, String>>,
    pub label_allowlist: Option<BTreeMap<String, Vec<String>>>,
    pub label_threshold: Option<BTreeMap<String, f64>>,
    pub secrets_present: Option<bool>,
    pub predicate: Option<String>,
    pub delegation: Option<DelegationDoc>,
    pub mcp: Option<McpDoc>,
}

#[allow(dead_code)] // validated only: delegation predicates are not evaluated
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DelegationDoc {
    pub max_depth: Option<u64>,
    pub issuers: List,
    pub require_issuer: Option<String>,
    pub required_scope: List,
    pub forbid_delegated: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpDoc {
    pub allow_servers: List,
    pub deny_servers: List,
    pub allow_tools: List,
    pub deny_tools: List,
    pub allow_resources: List,
    pub deny_resources: List,
    pub allow_actions: List,
    pub deny_actions: List,
}

/// Rule constraints. Serialised (for the decision) without the three keys
/// the schema accepts but upstream drops.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConstraintsDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budgets: Option<BudgetsDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<ToolchainDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redaction_level: Option<String>,
    // Accepted by the schema, dropped by upstream: validated, never emitted.
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    pub max_output_bytes: Option<Ranged<0, 16_777_216>>,
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    pub allowed_destinations: List,
    #[allow(dead_code)]
    #[serde(skip_serializing)]
    pub redact_patterns: List,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetsDoc {
    pub max_runtime_ms: Option<u64>,
    pub max_retries: Option<u64>,
    pub max_artifact_bytes: Option<u64>,
    pub max_concurrent_jobs: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SandboxDoc {
    pub isolated: Option<bool>,
    pub network_allowlist: List,
    pub fs_read_only: List,
    pub fs_read_write: List,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ToolchainDoc {
    pub allowed_tools: List,
    pub allowed_commands: List,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiffDoc {
    pub max_files: Option<u64>,
    pub max_lines: Option<u64>,
    pub deny_path_globs: List,
}

#[allow(dead_code)] // validated here, kept as JSON values in the model
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputRuleDoc {
    pub id: Option<String>,
    pub tier: Option<TierField>,
    pub selector: Option<Selector>,
    pub enabled: Option<bool>,
    pub severity: Option<Choice<Severity>>,
    pub description: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<InputMatchDoc>,
    pub decision: Option<Choice<InputDecision>>,
    pub reason: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputMatchDoc {
    pub tenants: List,
    pub topics: List,
    pub capabilities: List,
    pub risk_tags: List,
    pub scanners: List,
    pub content_patterns: List,
    pub keywords: List,
    pub content_types: List,
    pub detectors: List,
    pub input_size_gt: Option<u64>,
    pub max_input_bytes: Option<u64>,
    pub scope: Option<ScopeDoc>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScopeDoc {
    pub instruction_path: NonEmpty,
    pub items_path: NonEmpty,
    pub category_path: Option<String>,
    pub name_path: Option<String>,
    pub allowed_categories: Option<BTreeMap<String, Vec<String>>>,
    pub aliases: Option<BTreeMap<String, String>>,
    pub on_missing_input: Option<Choice<DenyAllow>>,
    pub on_ambiguous: Option<Choice<DenyAllow>>,
}

#[allow(dead_code)] // severity and description are validated only
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputRuleDoc {
    pub id: Option<String>,
    pub enabled: Option<bool>,
    pub severity: Option<Choice<Severity>>,
    pub description: Option<String>,
    #[serde(rename = "match")]
    pub match_: Option<OutputMatchDoc>,
    pub decision: Option<Choice<OutputDecision>>,
    pub reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputMatchDoc {
    pub tenants: List,
    pub topics: List,
    pub capabilities: List,
    pub risk_tags: List,
    pub scanners: List,
    pub content_patterns: List,
    pub keywords: List,
    pub content_types: List,
    pub detectors: List,
    pub output_size_gt: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub has_error: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InputPolicyDoc {
    pub enabled: Option<bool>,
    pub fail_mode: Option<Choice<FailMode>>,
    pub max_scan_bytes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutputPolicyDoc {
    pub enabled: Option<bool>,
    pub fail_mode: Option<Choice<FailMode>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantDoc {
    pub allow_topics: List,
    pub deny_topics: List,
    pub allowed_repo_hosts: List,
    pub denied_repo_hosts: List,
    pub max_concurrent_jobs: Option<u64>,
    pub mcp: Option<McpDoc>,
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// A decoded and validated bundle.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub doc: Fragment,
    /// `input_rules` / `output_rules` as JSON (nulls removed), same order as
    /// in `doc`.
    pub input_rules: Vec<Value>,
    pub output_rules: Vec<Value>,
}

/// Decode and validate one bundle.
pub(crate) fn parse_bundle(bundle_id: &str, content: &str) -> Result<Parsed, Vec<Diagnostic>> {
    let trimmed = content.trim();
    if trimmed.is_empty() {
        return Ok(Parsed::default());
    }
    let as_json = trimmed.starts_with('{');
    let doc = decode::<Option<Fragment>>(bundle_id, content, as_json).map_err(|d| vec![d])?;
    let Some(doc) = doc else {
        return Ok(Parsed::default());
    };
    let diags = validate_tiers(bundle_id, &doc);
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut parsed = Parsed { doc, ..Parsed::default() };
    if parsed.doc.input_rules.is_some() || parsed.doc.output_rules.is_some() {
        let raw: Value = decode(bundle_id, content, as_json).map_err(|d| vec![d])?;
        let take = |key: &str| -> Vec<Value> {
            match raw.get(key) {
                Some(Value::Array(items)) => items.iter().cloned().map(strip_nulls).collect(),
                _ => Vec::new(),
            }
        };
        parsed.input_rules = take("input_rules");
        parsed.output_rules = take("output_rules");
    }
    Ok(parsed)
}

/// Decode `content` as JSON (when it looks like JSON and is valid JSON
/// syntax) or as YAML, turning the first error into a diagnostic.
fn decode<T: for<'de> Deserialize<'de>>(bundle_id: &str, content: &str, try_json: bool) -> Result<T, Diagnostic> {
    if try_json {
        match serde_json::from_str::<T>(content) {
            Ok(v) => return Ok(v),
            Err(e) if e.is_data() => {
                return Err(Diagnostic {
                    bundle_id: bundle_id.to_owned(),
                    line: to_u32(e.line()),
                    column: to_u32(e.column()),
                    message: strip_location(&e.to_string()),
                });
            }
            // Not JSON after all (a YAML flow mapping, say): try YAML.
            Err(_) => {}
        }
    }
    serde_yaml::from_str::<T>(content).map_err(|e| {
        let (line, column) = e.location().map(|l| (to_u32(l.line()), to_u32(l.column()))).unwrap_or((0, 0));
        Diagnostic { bundle_id: bundle_id.to_owned(), line, column, message: strip_location(&e.to_string()) }
    })
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Drop the " at line L column C" that serde_yaml and serde_json put into
/// messages (the position is carried separately).
fn strip_location(msg: &str) -> String {
    const AT: &str = " at line ";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(AT) {
        let after = &rest[i + AT.len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let l = digits(after);
        let tail = &after[l..];
        let skip = if l > 0 && tail.starts_with(" column ") {
            let c = digits(&tail[" column ".len()..]);
            (c > 0).then_some(AT.len() + l + " column ".len() + c)
        } else {
            None
        };
        match skip {
            Some(n) => {
                out.push_str(&rest[..i]);
                rest = &rest[i + n..];
            }
            None => {
                out.push_str(&rest[..i + AT.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().filter(|v| !v.is_null()).map(strip_nulls).collect()),
        other => other,
    }
}

/// Policy tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Global,
    Workflow,
    Job,
}

impl Tier {
    pub(crate) fn from_field(t: Option<&TierField>) -> Option<Tier> {
        t.map(|t| match t.as_str() {
            "workflow" => Tier::Workflow,
            "job" => Tier::Job,
            _ => Tier::Global,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Tier::Global => "global",
            Tier::Workflow => "workflow",
            Tier::Job => "job",
        }
    }
}

/// A resolved selector: empty strings for unset fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    pub workflow_id: String,
    pub job_id: String,
    pub session_id: String,
}

impl Scope {
    /// The document selector overlaid by a rule's non-empty fields.
    pub(crate) fn resolve(doc: Option<&Selector>, rule: Option<&Selector>) -> Scope {
        fn pick(d: Option<&Option<String>>, r: Option<&Option<String>>) -> String {
            let get = |o: Option<&Option<String>>| {
                o.and_then(|s| s.as_deref()).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
            };
            get(r).or_else(|| get(d)).unwrap_or_default()
        }
        Scope {
            workflow_id: pick(doc.map(|s| &s.workflow_id), rule.map(|s| &s.workflow_id)),
            job_id: pick(doc.map(|s| &s.job_id), rule.map(|s| &s.job_id)),
            session_id: pick(doc.map(|s| &s.session_id), rule.map(|s| &s.session_id)),
        }
    }

    /// The selector requirement of a tier, as an error message.
    pub(crate) fn check(&self, tier: Tier) -> Result<(), String> {
        let ok = match tier {
            Tier::Global => true,
            Tier::Workflow => !self.workflow_id.is_empty(),
            Tier::Job => !self.job_id.is_empty() || !self.session_id.is_empty(),
        };
        if ok { Ok(()) } else { Err(format!("selector is required for {} tier", tier.as_str())) }
    }
}

/// Tier/selector checks at document level, for each input rule and each rule.
fn validate_tiers(bundle_id: &str, doc: &Fragment) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut push =
        |message: String| out.push(Diagnostic { bundle_id: bundle_id.to_owned(), line: 0, column: 0, message });
    let doc_tier = Tier::from_field(doc.tier.as_ref()).unwrap_or(Tier::Global);
    let doc_scope = Scope::resolve(doc.selector.as_ref(), None);
    if let Err(e) = doc_scope.check(doc_tier) {
        push(e);
    }
    let describe = |kind: &str, i: usize, id: Option<&String>| match id {
        Some(id) if !id.is_empty() => format!("{kind}[{i}] (id \"{id}\")"),
        _ => format!("{kind}[{i}]"),
    };
    for (i, r) in doc.input_rules.iter().flatten().enumerate() {
        let tier = Tier::from_field(r.tier.as_ref()).unwrap_or(doc_tier);
        let scope = Scope::resolve(doc.selector.as_ref(), r.selector.as_ref());
        if let Err(e) = scope.check(tier) {
            push(format!("{}: {e}", describe("input_rules", i, r.id.as_ref())));
        }
    }
    for (i, r) in doc.rules.iter().flatten().enumerate() {
        let tier = Tier::from_field(r.tier.as_ref()).unwrap_or(doc_tier);
        let scope = Scope::resolve(doc.selector.as_ref(), r.selector.as_ref());
        if let Err(e) = scope.check(tier) {
            push(format!("{}: {e}", describe("rules", i, r.id.as_ref())));
        }
    }
    out
}

impl Choice<RuleDecision> {
    pub(crate) fn kind(&self) -> DecisionKind {
        DecisionKind::parse_alias(self.as_str()).unwrap_or(DecisionKind::Deny)
    }
}

#[cfg(test)]
mod tests {
    use super::strip_location;

    #[test]
    fn strip_location_removes_positions_only() {
        assert_eq!(strip_location("bad at line 3 column 7"), "bad");
        assert_eq!(
            strip_location("did not find ',' at line 2 column 1, while parsing"),
            "did not find ',', while parsing"
        );
        assert_eq!(strip_location("look at line items"), "look at line items");
        assert_eq!(strip_location("at line 3"), "at line 3");
        assert_eq!(strip_location("x at line 3 column y"), "x at line 3 column y");
    }
}
