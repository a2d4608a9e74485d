//! `cordum pack test`: check a pack locally, without a server, with the
//! gateway's own runtime and first-party components (embedded in this
//! binary): the manifest; each schema compiled by the schema component;
//! each workflow validated; the policy fragments checked by the policy
//! component; `tests.policySimulations` decided by the policy component
//! against the pack's fragments (and an optional base policy); the component
//! linked against its world; and the sample jobs of `tests.jobs` run on the
//! component in a sandbox exactly as the gateway runs a job (input schema,
//! policy, then the worker with the pack's config overlays as its config).
//!
//! A sample job: `{name?, topic, input, labels?, expect: {status?, output?, error?}}`;
//! `status` is `succeeded` (default), `rejected` (schema), `denied`,
//! `approval_required`, `throttled`, `invalid_input`, `failed`, `retryable`
//! or `aborted` (timeout, memory, trap); `output` must be contained in the
//! job's output; `error` must be contained in the error message.

use super::{Target, bundle_manifest, read_bundle_file, spinner, target};
use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Args;
use cordum::app::{JSON_SCHEMA_WASM, POLICY_RULES_WASM};
use cordum::packs::InstalledPack;
use cordum::packs::install::simulations;
use cordum::packs::manifest::Manifest;
use cordum::packs::registry::{ComponentRecord, PackRecord, PackSource};
use cordum::packs::runner::{PackRunner, WorkItem, WorkOutcome};
use cordum::policy::{DecisionKind, PolicyRequest, PolicyService};
use cordum::runtime::sandbox::{CancelFlag, SandboxLimits};
use cordum::runtime::{Runtime, World};
use cordum::schema::{SchemaDoc, SchemaService};
use cordum::settings::RuntimeLimits;
use cordum::store::Store;
use cordum::store::embedded::EmbeddedStore;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Pack directory (built first) or bundle file (default: the current directory).
    path: Option<PathBuf>,
    /// A base safety policy (YAML) evaluated before the pack's fragments, as the gateway's --policy.
    #[arg(long)]
    policy: Option<PathBuf>,
}

/// Prints each check and counts failures.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn ok(&mut self, what: &str) {
        self.passed += 1;
        println!("ok    {what}");
    }

    fn fail(&mut self, what: &str, why: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL  {what}: {why}");
    }

    fn check(&mut self, what: &str, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => self.ok(what),
            Err(e) => self.fail(what, e),
        }
        self.failed == 0
    }
}

/// Scratch space for one run, removed afterwards.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Precompiled components are cached here across runs.
fn component_cache(scratch: &Path) -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("cordum").join("components"))
        .unwrap_or_else(|| scratch.join("cache"))
}

pub async fn run(args: TestArgs) -> Result<()> {
    let files = match target(args.path.as_deref())? {
        Target::Dir(dir) => tokio::task::spawn_blocking(move || super::build::assemble(&dir)).await??.1,
        Target::Bundle(file) => read_bundle_file(&file)?.1,
    };
    let base = match &args.policy {
        Some(path) => Some((
            format!("base:{}", path.display()),
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        )),
        None => None,
    };
    let mut report = Report::default();
    let outcome = check(&files, base, &mut report).await;
    println!("pack test: {} checks, {} ok, {} failing", report.passed + report.failed, report.passed, report.failed);
    outcome?;
    if report.failed > 0 {
        bail!("{} of {} checks failed", report.failed, report.passed + report.failed);
    }
    Ok(())
}

fn parse_doc(raw: &[u8], what: &str) -> Result<Value, String> {
    serde_yaml::from_slice::<Value>(raw).map_err(|e| format!("{what}: {e}"))
}

async fn check(files: &[(String, Vec<u8>)], base: Option<(String, String)>, report: &mut Report) -> Result<()> {
    let by_path: HashMap<&str, &[u8]> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
    let read = |path: &str| -> Result<&[u8], String> {
        by_path.get(path.trim_start_matches("./")).copied().ok_or_else(|| format!("{path} is missing from the bundle"))
    };
    let manifest = match bundle_manifest(files) {
        Ok(m) => m,
        Err(e) => {
            report.fail("manifest", format!("{e:#}"));
            return Ok(());
        }
    };
    let id = manifest.metadata.id.clone();
    report.ok(&format!("manifest {id}@{} ({} topics)", manifest.metadata.version, manifest.topics.len()));

    let scratch = Scratch(std::env::temp_dir().join(format!(
        "cordum-pack-test-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )));
    std::fs::create_dir_all(&scratch.0).context("create a scratch directory")?;
    let bar = spinner("loading the policy and schema components");
    let limits = RuntimeLimits::default();
    let runtime = Runtime::new(&component_cache(&scratch.0), limits.clone()).context("start the wasm runtime")?;
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&scratch.0.join("store")).context("open a scratch store")?);
    let policy_component = runtime.load(POLICY_RULES_WASM, World::Policy).context("load the policy component")?;
    let policy = PolicyService::new(runtime.clone(), policy_component, store.clone(), base);
    let schema_component = runtime.load(JSON_SCHEMA_WASM, World::Schema).context("load the schema component")?;
    let schemas = SchemaService::new(runtime.clone(), schema_component);
    bar.finish_and_clear();

    // Schemas, compiled by the schema component.
    for res in &manifest.resources.schemas {
        let result = read(&res.path)
            .and_then(|raw| parse_doc(raw, &res.path))
            .and_then(|v| if v.is_object() { Ok(v) } else { Err("not an object".into()) })
            .and_then(|v| schemas.check_schema(&v).map(|_| v).map_err(|e| e.to_string()));
        match result {
            Ok(value) => {
                schemas.register(SchemaDoc::new(&res.id, value, Some(id.clone())));
                report.ok(&format!("schema {}", res.id));
            }
            Err(e) => report.fail(&format!("schema {}", res.id), e),
        }
    }
    // Workflows, validated as the gateway validates them.
    for res in &manifest.resources.workflows {
        let result = read(&res.path).and_then(|raw| parse_doc(raw, &res.path)).and_then(|v| {
            let mut def: cordum::workflows::model::WorkflowDef =
                serde_json::from_value(v).map_err(|e| e.to_string())?;
            if def.id.is_empty() {
                def.id = res.id.clone();
            }
            cordum::workflows::validate::validate(&def)
        });
        report.check(&format!("workflow {}", res.id), result);
    }

    // Policy fragments, with the base policy.
    let mut fragments = Vec::new();
    for overlay in &manifest.overlays.policy {
        let name = if overlay.name.is_empty() { "default" } else { &overlay.name };
        match read(&overlay.path).and_then(|raw| String::from_utf8(raw.to_vec()).map_err(|_| "not UTF-8".into())) {
            Ok(content) => fragments.push((format!("{id}/{name}"), content)),
            Err(e) => report.fail(&format!("policy fragment {name}"), e),
        }
    }
    if !fragments.is_empty() {
        let result = policy.check_with(&fragments).map_err(|e| e.to_string()).and_then(|diags| {
            if diags.is_empty() {
                return Ok(());
            }
            Err(diags
                .iter()
                .map(|d| format!("{} line {} column {}: {}", d.bundle_id, d.line, d.column, d.message))
                .collect::<Vec<_>>()
                .join("; "))
        });
        let ids = fragments.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>().join(", ");
        report.check(&format!("policy fragments {ids}"), result);
    }
    let draft: Vec<(String, Option<String>)> = fragments.iter().map(|(b, c)| (b.clone(), Some(c.clone()))).collect();

    // The manifest's policy simulations.
    match simulations(&manifest) {
        Err(e) => report.fail("policy simulations", e),
        Ok(sims) => {
            for (name, request, expected) in sims {
                let result = policy.evaluate_with(&draft, &request).map_err(|e| e.to_string()).and_then(|got| {
                    if got.decision.as_str() == expected {
                        Ok(())
                    } else {
                        Err(format!(
                            "expected {expected} but the policy decides {} (rule {:?}: {})",
                            got.decision.as_str(),
                            got.rule_id,
                            got.reason
                        ))
                    }
                });
                report.check(&format!("policy simulation {name}"), result);
            }
        }
    }

    // The component, linked against its world.
    let Some(spec) = &manifest.component else {
        if !sample_jobs(files)?.is_empty() {
            report.fail("sample jobs", "tests.jobs needs a component section");
        }
        return Ok(());
    };
    let component = match read(&spec.path).and_then(|wasm| runtime.load(wasm, World::Pack).map_err(|e| e.to_string())) {
        Ok(c) => {
            report.ok(&format!("component {} ({})", spec.path, spec.world));
            c
        }
        Err(e) => {
            report.fail(&format!("component {}", spec.path), e);
            return Ok(());
        }
    };

    // Sample jobs, run on the component.
    let jobs = sample_jobs(files)?;
    if jobs.is_empty() {
        return Ok(());
    }
    let memory = spec.limits.max_memory_bytes.unwrap_or(limits.pack.memory_bytes).min(limits.max_memory_bytes);
    let timeout = Duration::from_millis(spec.limits.timeout_ms.unwrap_or(limits.pack.timeout.as_millis() as u64));
    let mut config = json!({});
    for overlay in &manifest.overlays.config {
        match read(&overlay.path).and_then(|raw| parse_doc(raw, &overlay.path)) {
            Ok(patch) => {
                cordum::packs::overlay::apply_tracked(&mut config, &overlay.key, &patch);
            }
            Err(e) => report.fail(&format!("config overlay {}", overlay.name), e),
        }
    }
    let config = Arc::new(config);
    let pack = Arc::new(InstalledPack {
        record: PackRecord {
            id: id.clone(),
            version: manifest.metadata.version.clone(),
            status: "ACTIVE".into(),
            installed_at: Utc::now(),
            installed_by: "cordum pack test".into(),
            manifest: manifest.clone(),
            schemas: BTreeMap::new(),
            workflows: BTreeMap::new(),
            policy_fragments: fragments.iter().map(|(b, _)| b.clone()).collect(),
            component: Some(ComponentRecord {
                digest: component.digest.clone(),
                world: spec.world.clone(),
                file: spec.path.clone(),
                max_memory_bytes: memory,
                timeout_ms: timeout.as_millis() as u64,
            }),
            source: PackSource { catalog: "local".into(), url: String::new(), sha256: String::new() },
            config_changes: Vec::new(),
            verification: None,
            uninstalled_at: None,
        },
        component: Some(component),
        limits: SandboxLimits { memory_bytes: memory, timeout },
    });
    let runner = Arc::new(PackRunner::new(runtime.clone(), store.clone(), scratch.0.join("sandboxes")));
    for (i, job) in jobs.iter().enumerate() {
        let name = job["name"].as_str().map(str::to_string).unwrap_or_else(|| format!("#{i}"));
        let got = run_job(i, job, &manifest, &schemas, &policy, &draft, &runner, &pack, &config).await;
        let result = got.and_then(|(status, output, error)| expect(&job["expect"], &status, &output, &error));
        report.check(&format!("job {name}"), result);
    }
    Ok(())
}

/// `tests.jobs` from the raw manifest (the typed manifest keeps only what the gateway needs).
fn sample_jobs(files: &[(String, Vec<u8>)]) -> Result<Vec<Value>> {
    let Some((_, raw)) = files.iter().find(|(p, _)| p == "pack.yaml" || p == "pack.yml") else {
        return Ok(Vec::new());
    };
    let doc: Value = serde_yaml::from_slice(raw).context("pack.yaml")?;
    match &doc["tests"]["jobs"] {
        Value::Null => Ok(Vec::new()),
        Value::Array(jobs) => Ok(jobs.clone()),
        _ => bail!("tests.jobs must be a list"),
    }
}

/// Run one sample job as the gateway would: schema, policy, component.
/// Returns (status, output, error message).
#[allow(clippy::too_many_arguments)]
async fn run_job(
    i: usize,
    job: &Value,
    manifest: &Manifest,
    schemas: &SchemaService,
    policy: &PolicyService,
    draft: &[(String, Option<String>)],
    runner: &Arc<PackRunner>,
    pack: &Arc<InstalledPack>,
    config: &Arc<Value>,
) -> Result<(String, Value, String), String> {
    let topic_name = job["topic"].as_str().ok_or("a sample job needs a topic")?;
    let topic = manifest
        .topics
        .iter()
        .find(|t| t.name == topic_name)
        .ok_or_else(|| format!("{topic_name} is not a topic of the pack"))?;
    let input = job.get("input").cloned().unwrap_or(json!({}));
    let input_text = input.to_string();
    if let Some(schema) = &topic.input_schema {
        let violations = schemas.validate("default", schema, &input_text).map_err(|e| e.to_string())?;
        if !violations.is_empty() {
            let text =
                violations.iter().map(|v| format!("{} {}", v.instance_path, v.message)).collect::<Vec<_>>().join("; ");
            return Ok(("rejected".into(), Value::Null, text));
        }
    }
    let labels: BTreeMap<String, String> = job["labels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or(v.to_string()))).collect())
        .unwrap_or_default();
    let request = PolicyRequest {
        job_id: format!("pack-test-{i}"),
        topic: topic.name.clone(),
        tenant: "default".into(),
        principal_id: "pack-test".into(),
        actor_id: "pack-test".into(),
        actor_type: String::new(),
        capability: topic.capability.clone(),
        risk_tags: topic.risk_tags.clone(),
        requires: topic.requires.clone(),
        pack_id: manifest.metadata.id.clone(),
        labels: labels.clone(),
    };
    let decision = policy.evaluate_with(draft, &request).map_err(|e| e.to_string())?;
    let refused = match decision.decision {
        DecisionKind::Allow | DecisionKind::AllowWithConstraints => None,
        DecisionKind::Deny => Some("denied"),
        DecisionKind::RequireApproval => Some("approval_required"),
        DecisionKind::Throttle => Some("throttled"),
    };
    if let Some(status) = refused {
        return Ok((status.into(), Value::Null, format!("rule {:?}: {}", decision.rule_id, decision.reason)));
    }
    let item = WorkItem {
        job_id: format!("pack-test-{i}"),
        topic: topic.name.clone(),
        tenant: "default".into(),
        input: input_text,
        labels: labels.into_iter().collect(),
        attempt: 1,
        timeout: pack.limits.timeout,
        memory_bytes: pack.limits.memory_bytes,
    };
    let (runner, pack, config) = (runner.clone(), pack.clone(), config.clone());
    let handle = tokio::runtime::Handle::current();
    let outcome =
        tokio::task::spawn_blocking(move || runner.run(&pack, &item, config, Arc::new(CancelFlag::default()), handle))
            .await
            .map_err(|e| e.to_string())?;
    Ok(match outcome {
        WorkOutcome::Output(text) => match serde_json::from_str::<Value>(&text) {
            Ok(output) => ("succeeded".into(), output, String::new()),
            Err(e) => ("failed".into(), Value::Null, format!("the output is not JSON: {e}")),
        },
        WorkOutcome::InvalidInput(m) => ("invalid_input".into(), Value::Null, m),
        WorkOutcome::Failed(m) => ("failed".into(), Value::Null, m),
        WorkOutcome::Retryable(m) => ("retryable".into(), Value::Null, m),
        WorkOutcome::Aborted(e) => ("aborted".into(), Value::Null, e.to_string()),
    })
}

/// Compare a job's outcome with its `expect`.
fn expect(expect: &Value, status: &str, output: &Value, error: &str) -> Result<(), String> {
    let want = expect["status"].as_str().unwrap_or("succeeded");
    const STATUSES: &[&str] = &[
        "succeeded",
        "rejected",
        "denied",
        "approval_required",
        "throttled",
        "invalid_input",
        "failed",
        "retryable",
        "aborted",
    ];
    if !STATUSES.contains(&want) {
        return Err(format!("unknown expect.status {want:?} (one of {})", STATUSES.join(", ")));
    }
    if want != status {
        let detail = if error.is_empty() { output.to_string() } else { error.to_string() };
        return Err(format!("expected {want} but the job was {status}: {detail}"));
    }
    if let Some(wanted) = expect.get("output")
        && !contains(output, wanted)
    {
        return Err(format!("output {output} does not contain {wanted}"));
    }
    if let Some(wanted) = expect["error"].as_str()
        && !error.contains(wanted)
    {
        return Err(format!("error {error:?} does not contain {wanted:?}"));
    }
    Ok(())
}

/// Is `wanted` contained in `actual` (objects key by key, anything else equal)?
fn contains(actual: &Value, wanted: &Value) -> bool {
    match (actual, wanted) {
        (Value::Object(a), Value::Object(w)) => w.iter().all(|(k, v)| a.get(k).is_some_and(|x| contains(x, v))),
        _ => actual == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        let out = json!({"greeting": "hi", "n": 1});
        assert!(expect(&json!({"output": {"greeting": "hi"}}), "succeeded", &out, "").is_ok());
        assert!(expect(&json!({"output": {"greeting": "no"}}), "succeeded", &out, "").is_err());
        assert!(expect(&json!({"status": "rejected"}), "succeeded", &out, "").is_err());
        assert!(expect(&json!({"status": "failed", "error": "boom"}), "failed", &Value::Null, "a boom").is_ok());
        assert!(expect(&json!({"status": "exploded"}), "failed", &Value::Null, "").is_err());
        assert!(expect(&Value::Null, "succeeded", &out, "").is_ok());
    }
}
