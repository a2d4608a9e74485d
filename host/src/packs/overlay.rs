//! Config overlays that can be taken back exactly.
//!
//! A pack's `json_merge_patch` overlay is applied leaf by leaf, and each
//! leaf it touched is recorded with the value it had before and the value
//! the pack left. Uninstall walks the record backwards: a leaf that still
//! holds the pack's value gets its old value back (or disappears, with the
//! objects the install created to hold it); a leaf someone changed since is
//! left alone and reported.

use crate::json_merge::merge_patch;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One leaf an overlay changed, addressed from the config document's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigLeaf {
    /// Path from `data` (the overlay key first).
    pub path: Vec<String>,
    #[serde(default)]
    pub before: Option<Value>,
    #[serde(default)]
    pub after: Option<Value>,
    /// How many leading path segments existed before the install.
    pub existed_depth: usize,
}

fn leaves(patch: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match patch {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                prefix.push(k.clone());
                leaves(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Object(_) => {}
        _ => out.push(prefix.clone()),
    }
}

fn get<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(root, |v, seg| v.as_object()?.get(seg))
}

fn existed_depth(root: &Value, path: &[String]) -> usize {
    let mut current = root;
    for (depth, seg) in path.iter().enumerate() {
        match current.as_object().and_then(|m| m.get(seg)) {
            Some(next) => current = next,
            None => return depth,
        }
    }
    path.len()
}

/// Apply `patch` (RFC 7386) to `data[key]` and record every leaf it changed.
pub fn apply_tracked(data: &mut Value, key: &str, patch: &Value) -> Vec<ConfigLeaf> {
    if !data.is_object() {
        *data = Value::Object(Map::new());
    }
    let mut paths = Vec::new();
    leaves(patch, &mut vec![key.to_string()], &mut paths);
    let before: Vec<(Option<Value>, usize)> =
        paths.iter().map(|p| (get(data, p).cloned(), existed_depth(data, p))).collect();
    let target = data.as_object_mut().expect("made an object above").entry(key.to_string()).or_insert(Value::Null);
    merge_patch(target, patch);
    paths
        .into_iter()
        .zip(before)
        .map(|(path, (before, existed_depth))| ConfigLeaf {
            after: get(data, &path).cloned(),
            path,
            before,
            existed_depth,
        })
        .collect()
}

fn set(root: &mut Value, path: &[String], value: Value) {
    let mut current = root;
    for seg in &path[..path.len() - 1] {
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        current = current.as_object_mut().expect("object").entry(seg.clone()).or_insert(Value::Object(Map::new()));
    }
    if !current.is_object() {
        *current = Value::Object(Map::new());
    }
    current.as_object_mut().expect("object").insert(path[path.len() - 1].clone(), value);
}

fn remove(root: &mut Value, path: &[String], keep_depth: usize) {
    // Remove the leaf, then every parent the install created that is now empty.
    for end in ((keep_depth + 1).max(1)..=path.len()).rev() {
        let (parent, last) = (&path[..end - 1], &path[end - 1]);
        let Some(Value::Object(map)) = parent.iter().try_fold(&mut *root, |v, seg| v.as_object_mut()?.get_mut(seg))
        else {
            return;
        };
        let removable = end == path.len() || map.get(last).is_some_and(|v| v.as_object().is_some_and(Map::is_empty));
        if !removable {
            return;
        }
        map.remove(last);
    }
}

/// Take `leaves` back from `data` (newest first). Returns the paths left
/// alone because they changed after the install.
pub fn revert(data: &mut Value, leaves: &[ConfigLeaf]) -> Vec<String> {
    let mut kept = Vec::new();
    for leaf in leaves.iter().rev() {
        if leaf.path.is_empty() {
            continue;
        }
        if get(data, &leaf.path) != leaf.after.as_ref() {
            kept.push(leaf.path.join("."));
            continue;
        }
        match &leaf.before {
            Some(old) => set(data, &leaf.path, old.clone()),
            None => remove(data, &leaf.path, leaf.existed_depth),
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revert_restores_exactly() {
        let original = json!({"pools": {"topics": {"job.a.x": "a"}, "pools": {"a": {"size": 1}}}, "other": 1});
        let mut data = original.clone();
        let mut changes = apply_tracked(
            &mut data,
            "pools",
            &json!({"topics": {"job.b.x": "b", "job.a.x": "shared"}, "pools": {"b": {"size": 2}}}),
        );
        changes.extend(apply_tracked(&mut data, "timeouts", &json!({"topics": {"job.b.x": 30}})));
        assert_eq!(data["pools"]["topics"]["job.b.x"], "b");
        assert_eq!(data["timeouts"]["topics"]["job.b.x"], 30);
        assert!(revert(&mut data, &changes).is_empty());
        assert_eq!(data, original);
    }

    #[test]
    fn later_changes_are_left_alone() {
        let mut data = json!({});
        let changes = apply_tracked(&mut data, "k", &json!({"a": 1, "b": 2}));
        data["k"]["a"] = json!(5);
        assert_eq!(revert(&mut data, &changes), vec!["k.a".to_string()]);
        assert_eq!(data, json!({"k": {"a": 5}}));
    }

    #[test]
    fn deletions_come_back() {
        let mut data = json!({"k": {"a": 1, "b": 2}});
        let changes = apply_tracked(&mut data, "k", &json!({"a": null}));
        assert_eq!(data, json!({"k": {"b": 2}}));
        revert(&mut data, &changes);
        assert_eq!(data, json!({"k": {"a": 1, "b": 2}}));
    }
}
