//! Checks a workflow definition before it is stored: ids, step kinds and
//! their required fields, expressions that parse, and a dependency graph
//! that is a DAG (unknown references and cycles are named).

use super::expr;
use super::model::{StepKind, WorkflowDef};
use crate::packs::manifest::valid_topic;
use std::collections::{BTreeMap, BTreeSet};

pub const MAX_STEPS: usize = 200;
const MAX_TIMEOUT_SEC: u64 = 604_800;
const MAX_NAME: usize = 256;

/// Workflow ids: 1–128 characters, letters, digits and `._-`, starting
/// with a letter or digit (pack workflows are `<pack>.<name>`).
pub fn valid_workflow_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Step ids (upstream): 1–64 characters, `^[A-Za-z0-9][A-Za-z0-9._-]*$`.
pub fn valid_step_id(id: &str) -> bool {
    id.len() <= 64 && valid_workflow_id(id)
}

/// Validate `def`; the message names what is wrong.
pub fn validate(def: &WorkflowDef) -> Result<(), String> {
    if !valid_workflow_id(&def.id) {
        return Err(format!(
            "invalid workflow id {:?}: 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
            def.id
        ));
    }
    if def.name.chars().count() > MAX_NAME {
        return Err(format!("name too long (max {MAX_NAME} characters)"));
    }
    if def.timeout_sec.is_some_and(|t| t > MAX_TIMEOUT_SEC) {
        return Err(format!("timeout_sec must be between 0 and {MAX_TIMEOUT_SEC}"));
    }
    if def.steps.is_empty() {
        return Err("a workflow needs at least one step".into());
    }
    if def.steps.len() > MAX_STEPS {
        return Err(format!("too many steps (max {MAX_STEPS})"));
    }
    for (id, step) in &def.steps {
        let at = |m: String| format!("step {id:?}: {m}");
        if !valid_step_id(id) {
            return Err(format!(
                "invalid step id {id:?}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ));
        }
        if step.id.as_deref().is_some_and(|given| given != id) {
            return Err(at(format!("id {:?} differs from the step's key", step.id.as_deref().unwrap_or(""))));
        }
        if step.name.chars().count() > MAX_NAME {
            return Err(at(format!("name too long (max {MAX_NAME} characters)")));
        }
        let Some(kind) = StepKind::parse(&step.kind) else {
            return Err(at(format!("unknown step type {:?} (worker, approval, condition or delay)", step.kind)));
        };
        if step.timeout_sec.is_some_and(|t| t > MAX_TIMEOUT_SEC) {
            return Err(at(format!("timeout_sec must be between 0 and {MAX_TIMEOUT_SEC}")));
        }
        for dep in &step.depends_on {
            if !def.steps.contains_key(dep) {
                return Err(format!("step {id:?} depends on non-existent step {dep:?}"));
            }
            if dep == id {
                return Err(format!("circular dependency detected: {id} -> {id}"));
            }
        }
        if let Some(cond) = &step.condition {
            expr::check(cond).map_err(|e| at(format!("condition: {e}")))?;
        }
        if let Some(list) = &step.for_each {
            if kind != StepKind::Worker {
                return Err(at("for_each is only supported on worker steps".into()));
            }
            expr::check(list).map_err(|e| at(format!("for_each: {e}")))?;
        }
        if step.max_parallel == Some(0) {
            return Err(at("max_parallel must be at least 1".into()));
        }
        if let Some(input) = &step.input {
            expr::check_template(input).map_err(|e| at(format!("input: {e}")))?;
        }
        if let Some(retry) = &step.retry {
            if retry.max_retries > 20 {
                return Err(at("retry.max_retries must be at most 20".into()));
            }
            let finite = |v: f64| v.is_finite() && v >= 0.0;
            if !finite(retry.initial_backoff_sec) || !finite(retry.max_backoff_sec) || !finite(retry.multiplier) {
                return Err(at("retry backoff values must be non-negative numbers".into()));
            }
        }
        match kind {
            StepKind::Worker => match step.topic.as_deref().map(str::trim) {
                None | Some("") => return Err(at("a worker step needs a topic".into())),
                Some(topic) if !valid_topic(topic) => return Err(at(format!("invalid topic {topic:?}"))),
                Some(_) => {}
            },
            StepKind::Condition => {
                if step.condition.as_deref().is_none_or(|c| c.trim().is_empty()) {
                    return Err(at("a condition step needs a condition expression".into()));
                }
            }
            StepKind::Delay => {
                if step.delay_sec.is_none() && step.delay_until.is_none() {
                    return Err(at("a delay step needs delay_sec or delay_until".into()));
                }
                if step.delay_sec.is_some() && step.delay_until.is_some() {
                    return Err(at("a delay step takes delay_sec or delay_until, not both".into()));
                }
                if step.delay_sec.is_some_and(|d| d > MAX_TIMEOUT_SEC) {
                    return Err(at(format!("delay_sec must be at most {MAX_TIMEOUT_SEC}")));
                }
            }
            StepKind::Approval => {}
        }
        if kind != StepKind::Worker && (step.topic.is_some() || step.retry.is_some()) {
            return Err(at("topic and retry apply to worker steps only".into()));
        }
    }
    if let Some(cycle) = find_cycle(def) {
        return Err(format!("circular dependency detected: {}", cycle.join(" -> ")));
    }
    Ok(())
}

/// A dependency cycle, as the path that closes it (`a -> b -> a`).
fn find_cycle(def: &WorkflowDef) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        id: &'a str,
        def: &'a WorkflowDef,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match marks.get(id) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|p| *p == id).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(id.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(id, Mark::Open);
        path.push(id);
        for dep in def.steps.get(id).map(|s| s.depends_on.as_slice()).unwrap_or_default() {
            if let Some(cycle) = visit(dep, def, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(id, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for id in def.steps.keys() {
        let mut path = Vec::new();
        if let Some(mut cycle) = visit(id, def, &mut marks, &mut path) {
            // Report in dependency order (a depends on b: "a -> b -> a").
            cycle.dedup();
            return Some(cycle);
        }
    }
    None
}

/// Steps downstream of `from` (those that depend on it, transitively), `from` included.
pub fn downstream(def: &WorkflowDef, from: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([from.to_string()]);
    loop {
        let before = out.len();
        for (id, step) in &def.steps {
            if step.depends_on.iter().any(|d| out.contains(d)) {
                out.insert(id.clone());
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Steps nothing depends on (the run's output comes from them).
pub fn sinks(def: &WorkflowDef) -> Vec<String> {
    def.steps.keys().filter(|id| !def.steps.values().any(|s| s.depends_on.iter().any(|d| d == *id))).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(json: serde_json::Value) -> WorkflowDef {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn cycles_and_dangling_references_are_named() {
        let d = def(serde_json::json!({"id": "w", "steps": {
            "a": {"type": "approval", "depends_on": ["b"]},
            "b": {"type": "approval", "depends_on": ["a"]}
        }}));
        let err = validate(&d).unwrap_err();
        assert!(err.starts_with("circular dependency detected: "), "{err}");
        assert!(err.contains("a -> b -> a") || err.contains("b -> a -> b"), "{err}");
        let d = def(serde_json::json!({"id": "w", "steps": {"a": {"type": "approval", "depends_on": ["zz"]}}}));
        assert_eq!(validate(&d).unwrap_err(), "step \"a\" depends on non-existent step \"zz\"");
    }

    #[test]
    fn step_requirements() {
        let d = def(serde_json::json!({"id": "w", "steps": {"a": {"type": "worker"}}}));
        assert!(validate(&d).unwrap_err().contains("needs a topic"));
        let d = def(serde_json::json!({"id": "w", "steps": {"a": {"type": "teleport", "topic": "job.x.y"}}}));
        assert!(validate(&d).unwrap_err().contains("unknown step type"));
        let d = def(serde_json::json!({"id": "w", "steps": {"a": {"topic": "job.x.y", "input": {"m": "${input.}"}}}}));
        assert!(validate(&d).unwrap_err().contains("input"));
        let d = def(serde_json::json!({"id": "w", "steps": {"a": {"type": "delay", "delay_sec": 1,
                                                                  "delay_until": "2030-01-01T00:00:00Z"}}}));
        assert!(validate(&d).unwrap_err().contains("not both"));
    }

    #[test]
    fn downstream_and_sinks() {
        let d = def(serde_json::json!({"id": "w", "steps": {
            "a": {"type": "approval"},
            "b": {"type": "approval", "depends_on": ["a"]},
            "c": {"type": "approval", "depends_on": ["b"]},
            "x": {"type": "approval"}
        }}));
        assert_eq!(downstream(&d, "b"), BTreeSet::from(["b".to_string(), "c".to_string()]));
        assert_eq!(sinks(&d), vec!["c".to_string(), "x".to_string()]);
    }
}
