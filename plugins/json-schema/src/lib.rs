//! The `cordum:schema` component: JSON Schema validation for the gateway.
//!
//! Owns schema compilation and document validation (draft 2020-12 and draft 7,
//! picked from `$schema`, 2020-12 when absent) and a small, bounded cache of
//! compiled validators keyed by the host's cache key. References are never
//! resolved over the network or the filesystem: only what the schema itself
//! contains can be referenced.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use exports::cordum::schema::validator::{Guest, SchemaError, Violation};
use serde_json::Value;

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/schema"],
    world: "cordum:schema/schema-plugin",
    generate_all,
});

use cordum::host::log::{Level, log};

/// Most compiled validators kept at once; past it an arbitrary one is evicted.
const CACHE_CAPACITY: usize = 128;

/// A compiled schema together with the text it was compiled from, so that a
/// cache key reused for different content is noticed and recompiled.
struct Compiled {
    schema: String,
    validator: Rc<jsonschema::Validator>,
}

thread_local! {
    static CACHE: RefCell<HashMap<String, Compiled>> = RefCell::new(HashMap::new());
}

fn compile(schema: &str) -> Result<jsonschema::Validator, SchemaError> {
    let value: Value = serde_json::from_str(schema)
        .map_err(|e| SchemaError::InvalidSchema(format!("schema is not valid JSON: {e}")))?;
    jsonschema::options().offline().build(&value).map_err(|e| SchemaError::InvalidSchema(e.to_string()))
}

/// The compiled validator for `schema`, from the cache when `cache_key` names it.
fn validator_for(cache_key: &str, schema: &str) -> Result<Rc<jsonschema::Validator>, SchemaError> {
    if cache_key.is_empty() {
        return compile(schema).map(Rc::new);
    }
    let cached =
        CACHE.with_borrow(|cache| cache.get(cache_key).filter(|c| c.schema == schema).map(|c| Rc::clone(&c.validator)));
    if let Some(validator) = cached {
        return Ok(validator);
    }
    let validator = Rc::new(compile(schema)?);
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= CACHE_CAPACITY
            && !cache.contains_key(cache_key)
            && let Some(victim) = cache.keys().next().cloned()
        {
            cache.remove(&victim);
        }
        cache.insert(cache_key.to_owned(), Compiled { schema: schema.to_owned(), validator: Rc::clone(&validator) });
    });
    log(Level::Debug, &format!("compiled schema {cache_key}"));
    Ok(validator)
}

struct Component;

impl Guest for Component {
    fn check_schema(schema: String) -> Result<(), SchemaError> {
        compile(&schema).map(|_| ())
    }

    fn validate(cache_key: String, schema: String, document: String) -> Result<Vec<Violation>, SchemaError> {
        let validator = validator_for(&cache_key, &schema)?;
        let document: Value = serde_json::from_str(&document)
            .map_err(|e| SchemaError::InvalidDocument(format!("document is not valid JSON: {e}")))?;
        Ok(validator
            .iter_errors(&document)
            .map(|error| Violation {
                instance_path: error.instance_path().as_str().to_owned(),
                schema_path: error.schema_path().as_str().to_owned(),
                keyword: error.kind().keyword().to_owned(),
                message: error.to_string(),
            })
            .collect())
    }
}

export!(Component);

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = r#"{
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"message": {"type": "string"}, "author": {"type": "string"}},
        "required": ["message"],
        "additionalProperties": false
    }"#;

    fn run(schema: &str, doc: &str) -> Result<Vec<Violation>, SchemaError> {
        // Empty cache key: no caching, so no host log call in native tests.
        Component::validate(String::new(), schema.into(), doc.into())
    }

    #[test]
    fn valid_document_has_no_violations() {
        assert!(run(ECHO, r#"{"message":"hi"}"#).unwrap().is_empty());
    }

    #[test]
    fn reports_required_additional_and_type() {
        let v = run(ECHO, r#"{"author": 3, "extra": true}"#).unwrap();
        let mut kw: Vec<_> = v.iter().map(|v| (v.keyword.as_str(), v.instance_path.as_str())).collect();
        kw.sort();
        assert_eq!(kw, [("additionalProperties", ""), ("required", ""), ("type", "/author")]);
        let req = v.iter().find(|v| v.keyword == "required").unwrap();
        assert_eq!(req.message, r#""message" is a required property"#);
        assert_eq!(req.schema_path, "/required");
        let ty = v.iter().find(|v| v.keyword == "type").unwrap();
        assert_eq!(ty.schema_path, "/properties/author/type");
    }

    #[test]
    fn draft7_is_picked_from_schema() {
        // The array form of `items` is draft 7 only; 2020-12 rejects it.
        let s = r#"{"$schema":"http://json-schema.org/draft-07/schema#",
                    "items":[{"type":"string"}]}"#;
        let v = run(s, "[1]").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].keyword, "type");
        assert_eq!(v[0].instance_path, "/0");
        assert!(matches!(run(r#"{"items":[{"type":"string"}]}"#, "[1]"), Err(SchemaError::InvalidSchema(_))));
    }

    #[test]
    fn default_draft_is_2020_12() {
        // prefixItems is 2020-12 only.
        let v = run(r#"{"prefixItems":[{"type":"string"}]}"#, "[1]").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].instance_path, "/0");
    }

    #[test]
    fn invalid_inputs() {
        assert!(matches!(run("{", "{}"), Err(SchemaError::InvalidSchema(_))));
        assert!(matches!(run(r#"{"type": 12}"#, "{}"), Err(SchemaError::InvalidSchema(_))));
        assert!(matches!(run(ECHO, "{not json"), Err(SchemaError::InvalidDocument(_))));
        assert!(matches!(
            Component::check_schema(r#"{"$ref":"https://example.com/s.json"}"#.into()),
            Err(SchemaError::InvalidSchema(_))
        ));
        assert!(Component::check_schema(ECHO.into()).is_ok());
    }
}
