//! Expressions and templates of workflow steps.
//!
//! Expressions are CEL (the `cel` crate) over a scope of `input` (the run
//! input), `steps` (`steps.<id>.output`, `steps.<id>.status`) and, in a
//! fan-out, `item` and `index`. A plain path such as `input.author` or
//! `steps.fetch.output.url` is resolved directly and yields `null` when
//! something along it is missing (as upstream's expression language does);
//! anything else is evaluated by CEL (`size(x)`, comparisons, `&&`, `has()`),
//! plus `length(x)` and `first(x)` for upstream compatibility.
//!
//! Templates: in a step's `input`, a string that is exactly one `${expr}`
//! becomes the typed value of `expr`; other strings interpolate each
//! `${expr}` as text. Object entries whose value resolves to `null` are
//! dropped.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest expression accepted.
const MAX_EXPR: usize = 2048;

fn is_path(src: &str) -> bool {
    let src = src.trim();
    !src.is_empty()
        && src.split('.').all(|seg| {
            let b = seg.as_bytes();
            !b.is_empty()
                && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0].is_ascii_digit())
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        })
        && src.as_bytes()[0].is_ascii_alphabetic()
        && !matches!(src, "true" | "false" | "null")
}

fn resolve_path(src: &str, scope: &Value) -> Value {
    let mut current = scope;
    for seg in src.trim().split('.') {
        current = match current {
            Value::Object(map) => match map.get(seg) {
                Some(v) => v,
                None => return Value::Null,
            },
            Value::Array(list) => match seg.parse::<usize>().ok().and_then(|i| list.get(i)) {
                Some(v) => v,
                None => return Value::Null,
            },
            _ => return Value::Null,
        };
    }
    current.clone()
}

/// Does `src` parse?
pub fn check(src: &str) -> Result<(), String> {
    if src.len() > MAX_EXPR {
        return Err(format!("expression longer than {MAX_EXPR} bytes"));
    }
    if src.trim().is_empty() {
        return Err("empty expression".into());
    }
    if is_path(src) {
        return Ok(());
    }
    cel::Program::compile(src).map(|_| ()).map_err(|e| format!("invalid expression {src:?}: {e}"))
}

/// A JSON value as CEL sees it. Integers are CEL `int` (a `uint` only past
/// `i64::MAX`), so `input.n + 1` works whatever the sign of `n`; the
/// crate's own conversion makes every non-negative integer a `uint`, which
/// CEL refuses to add to an `int` literal.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(map) => {
            let entries: HashMap<String, cel::Value> = map.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            cel::Value::from(entries)
        }
    }
}

/// Evaluate `src` over `scope` (a JSON object of variables).
pub fn eval(src: &str, scope: &Value) -> Result<Value, String> {
    check(src)?;
    if is_path(src) {
        return Ok(resolve_path(src, scope));
    }
    let program = cel::Program::compile(src).map_err(|e| format!("invalid expression {src:?}: {e}"))?;
    let mut context = cel::Context::default();
    if let Value::Object(vars) = scope {
        for (name, value) in vars {
            context.add_variable_from_value(name.as_str(), to_cel(value));
        }
    }
    let _ = context.add_function("length", |v: cel::Value| -> i64 {
        match v {
            cel::Value::List(l) => l.len() as i64,
            cel::Value::Map(m) => m.map.len() as i64,
            cel::Value::String(s) => s.chars().count() as i64,
            _ => 0,
        }
    });
    let _ = context.add_function("first", |v: Arc<Vec<cel::Value>>| -> cel::Value {
        v.first().cloned().unwrap_or(cel::Value::Null)
    });
    let value = program.execute(&context).map_err(|e| format!("cannot evaluate {src:?}: {e}"))?;
    value.json().map_err(|e| format!("cannot evaluate {src:?}: {e}"))
}

/// Evaluate a condition: the result must be a boolean (`null` counts as false).
pub fn eval_bool(src: &str, scope: &Value) -> Result<bool, String> {
    match eval(src, scope)? {
        Value::Bool(b) => Ok(b),
        Value::Null => Ok(false),
        other => Err(format!("condition {src:?} is not a boolean (got {other})")),
    }
}

/// The `${...}` parts of a string, as (start, end, inner) byte positions.
fn placeholders(s: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(open) = s[rest..].find("${") {
        let start = rest + open;
        let Some(close) = s[start + 2..].find('}') else {
            return Err(format!("unclosed ${{ in {s:?}"));
        };
        let end = start + 2 + close + 1;
        out.push((start, end, &s[start + 2..end - 1]));
        rest = end;
    }
    Ok(out)
}

/// Check every placeholder of a template.
pub fn check_template(template: &Value) -> Result<(), String> {
    match template {
        Value::String(s) => {
            for (_, _, inner) in placeholders(s)? {
                check(inner)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_template),
        Value::Object(map) => map.values().try_for_each(check_template),
        _ => Ok(()),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Render a template over `scope`.
pub fn render(template: &Value, scope: &Value) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => {
            let parts = placeholders(s)?;
            match parts.as_slice() {
                [] => Value::String(s.clone()),
                [(0, end, inner)] if *end == s.len() => eval(inner, scope)?,
                _ => {
                    let mut out = String::new();
                    let mut last = 0;
                    for (start, end, inner) in parts {
                        out.push_str(&s[last..start]);
                        out.push_str(&text_of(&eval(inner, scope)?));
                        last = end;
                    }
                    out.push_str(&s[last..]);
                    Value::String(out)
                }
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| render(i, scope)).collect::<Result<_, _>>()?),
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let rendered = render(v, scope)?;
                if !rendered.is_null() {
                    out.insert(k.clone(), rendered);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Value {
        json!({"input": {"message": "hi", "items": [1, 2, 3], "n": 5},
               "steps": {"check": {"output": true, "status": "succeeded"}}})
    }

    #[test]
    fn paths_yield_null_when_missing() {
        assert_eq!(eval("input.message", &scope()).unwrap(), json!("hi"));
        assert_eq!(eval("input.author", &scope()).unwrap(), Value::Null);
        assert_eq!(eval("steps.nope.output.x", &scope()).unwrap(), Value::Null);
    }

    #[test]
    fn cel_expressions() {
        assert!(eval_bool("input.n > 3 && steps.check.output", &scope()).unwrap());
        assert!(!eval_bool("input.message == 'bye'", &scope()).unwrap());
        assert_eq!(eval("size(input.items)", &scope()).unwrap(), json!(3));
        assert_eq!(eval("length(input.items)", &scope()).unwrap(), json!(3));
        assert_eq!(eval("first(input.items)", &scope()).unwrap(), json!(1));
        assert!(eval_bool("input.message", &scope()).is_err());
        assert!(check("input.(").is_err());
    }

    /// Regression: non-negative JSON integers were CEL `uint`s, so
    /// `input.n + 1` failed while `input.neg + 1` worked.
    #[test]
    fn integer_arithmetic_does_not_depend_on_the_sign() {
        let scope = json!({"input": {"n": 1, "neg": -1, "z": 2, "big": u64::MAX, "f": 1.5}});
        assert!(eval_bool("input.n + 1 == 2", &scope).unwrap());
        assert!(eval_bool("input.n * 2 == 2", &scope).unwrap());
        assert!(eval_bool("input.neg + 1 == 0", &scope).unwrap());
        assert_eq!(eval("4 / input.z", &scope).unwrap(), json!(2));
        assert_eq!(eval("input.big", &scope).unwrap(), json!(u64::MAX));
        assert!(eval_bool("input.f > 1.0", &scope).unwrap());
        assert_eq!(eval("[input.n, input.neg][0] + 1", &scope).unwrap(), json!(2));
        assert!(eval_bool("{'a': input.n}.a + 1 == 2", &scope).unwrap());
    }

    #[test]
    fn templates() {
        let t = json!({"message": "${input.message}", "author": "${input.author}", "text": "say ${input.message}!",
                       "list": "${input.items}"});
        assert_eq!(render(&t, &scope()).unwrap(), json!({"message": "hi", "text": "say hi!", "list": [1, 2, 3]}));
        assert!(check_template(&json!({"a": "${input.x"})).is_err());
    }
}
