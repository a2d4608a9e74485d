//! API keys: the bootstrap admin key, static keys from the environment, and
//! lookup of a presented key.

use super::{AuthContext, AuthError, Role, valid_tenant_id};
use crate::store::{Op, Store};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

const BOOTSTRAP_MARKER: &str = "sys:bootstrap-key";

/// A stored credential (the key itself is only its digest, in the store key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub tenant: String,
    pub role: Role,
    #[serde(default)]
    pub principal_id: Option<String>,
    #[serde(default)]
    pub allow_cross_tenant: bool,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub source: String,
    pub created_at: DateTime<Utc>,
}

pub fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn store_key(digest: &str) -> String {
    format!("apikey:{digest}")
}

/// Keys configured through `CORDUM_API_KEYS` (upstream formats).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticKeySpec {
    key: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    principal_id: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    allow_cross_tenant: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticKeyBody {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    principal_id: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    allow_cross_tenant: bool,
}

/// Parse `CORDUM_API_KEYS`: a JSON array of objects, a JSON object keyed by
/// key (or `{"keys": [...]}`), or a comma list of `key`, `tenant:key`,
/// `tenant:key:role`, `tenant:key:role:principal`.
pub fn parse_static_keys(raw: &str, default_tenant: &str) -> Result<Vec<(String, KeyRecord)>, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    let specs: Vec<StaticKeySpec> = if raw.starts_with('[') {
        serde_json::from_str(raw).map_err(|e| format!("CORDUM_API_KEYS: {e}"))?
    } else if raw.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| format!("CORDUM_API_KEYS: {e}"))?;
        if let Some(list) = value.get("keys") {
            serde_json::from_value(list.clone()).map_err(|e| format!("CORDUM_API_KEYS: {e}"))?
        } else {
            let map: HashMap<String, StaticKeyBody> =
                serde_json::from_value(value).map_err(|e| format!("CORDUM_API_KEYS: {e}"))?;
            map.into_iter()
                .map(|(key, b)| StaticKeySpec {
                    key,
                    tenant: b.tenant,
                    role: b.role,
                    principal_id: b.principal_id,
                    expires_at: b.expires_at,
                    allow_cross_tenant: b.allow_cross_tenant,
                })
                .collect()
        }
    } else {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let parts: Vec<&str> = item.split(':').collect();
                let (tenant, key, role, principal) = match parts.as_slice() {
                    [k] => (None, *k, None, None),
                    [t, k] => (Some(*t), *k, None, None),
                    [t, k, r] => (Some(*t), *k, Some(*r), None),
                    [t, k, r, p] => (Some(*t), *k, Some(*r), Some(*p)),
                    _ => {
                        return Err("CORDUM_API_KEYS: an entry has more than four ':' parts".to_string());
                    }
                };
                Ok(StaticKeySpec {
                    key: key.to_string(),
                    tenant: tenant.map(str::to_string),
                    role: role.map(str::to_string),
                    principal_id: principal.map(str::to_string),
                    expires_at: None,
                    allow_cross_tenant: false,
                })
            })
            .collect::<Result<_, _>>()?
    };
    let now = Utc::now();
    specs
        .into_iter()
        .map(|s| {
            let key = s.key.trim().trim_matches('"').to_string();
            if key.len() < 8 {
                return Err("CORDUM_API_KEYS: keys must be at least 8 characters".to_string());
            }
            let tenant = s.tenant.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| default_tenant.to_string());
            if !valid_tenant_id(&tenant) {
                return Err(format!("CORDUM_API_KEYS: invalid tenant id {tenant:?}"));
            }
            let role = Role::parse(s.role.as_deref().unwrap_or(""))
                .ok_or_else(|| format!("CORDUM_API_KEYS: unknown role {:?}", s.role.unwrap_or_default()))?;
            let d = digest(&key);
            Ok((
                d.clone(),
                KeyRecord {
                    key_id: format!("static:{}", &d[..12]),
                    tenant,
                    role,
                    principal_id: s.principal_id.filter(|p| !p.is_empty()),
                    allow_cross_tenant: s.allow_cross_tenant,
                    expires_at: s.expires_at,
                    source: "static".into(),
                    created_at: now,
                },
            ))
        })
        .collect()
}

/// Authenticates presented keys.
pub struct AuthService {
    store: Arc<dyn Store>,
    static_keys: HashMap<String, KeyRecord>,
    pub default_tenant: String,
}

/// What bootstrap did, for the operator's console.
pub enum Bootstrap {
    /// A new admin key was generated; print it once.
    Generated(String),
    /// `CORDUM_API_KEY` was registered.
    FromEnv,
    /// A bootstrap key from an earlier start is in the store.
    Existing,
}

impl AuthService {
    pub async fn start(
        store: Arc<dyn Store>,
        env_key: Option<&str>,
        env_keys: Option<&str>,
        default_tenant: &str,
    ) -> Result<(Self, Bootstrap), String> {
        let listed = parse_static_keys(env_keys.unwrap_or(""), default_tenant)?;
        let mut static_keys: HashMap<String, KeyRecord> = HashMap::new();
        for (d, record) in listed {
            // One key, two meanings: refuse rather than let the last one win.
            if static_keys.insert(d, record).is_some() {
                return Err("CORDUM_API_KEYS: the same key is listed twice".to_string());
            }
        }
        let service = Self { store, static_keys, default_tenant: default_tenant.to_string() };
        let outcome = match env_key.map(str::trim).filter(|k| !k.is_empty()) {
            Some(key) if service.static_keys.contains_key(&digest(key)) => {
                return Err(
                    "CORDUM_API_KEY is also listed in CORDUM_API_KEYS; give the bootstrap key a key of its own"
                        .to_string(),
                );
            }
            Some(key) => {
                service.register_bootstrap(key, "env").await?;
                Bootstrap::FromEnv
            }
            None => {
                let marker = service.store.get(BOOTSTRAP_MARKER).await.map_err(|e| e.to_string())?;
                if marker.is_some() {
                    Bootstrap::Existing
                } else {
                    let mut secret = [0u8; 32];
                    rand::thread_rng().fill_bytes(&mut secret);
                    let key = format!("ck_{}", hex::encode(secret));
                    service.register_bootstrap(&key, "generated").await?;
                    Bootstrap::Generated(key)
                }
            }
        };
        Ok((service, outcome))
    }

    async fn register_bootstrap(&self, key: &str, source: &str) -> Result<(), String> {
        let d = digest(key);
        let record = KeyRecord {
            key_id: format!("bootstrap:{}", &d[..12]),
            tenant: self.default_tenant.clone(),
            role: Role::Admin,
            principal_id: Some("bootstrap-admin".into()),
            allow_cross_tenant: true,
            expires_at: None,
            source: source.into(),
            created_at: Utc::now(),
        };
        // There is one bootstrap key: a new one revokes the previous one.
        let previous = self
            .store
            .get(BOOTSTRAP_MARKER)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|e| e.json::<serde_json::Value>().ok())
            .and_then(|m| m.get("digest").and_then(|d| d.as_str()).map(str::to_string));
        let marker = serde_json::json!({"key_id": record.key_id, "digest": d, "created_at": record.created_at});
        let mut ops = vec![Op::put_json(store_key(&d), &record), Op::put_json(BOOTSTRAP_MARKER, &marker)];
        if let Some(old) = previous.filter(|old| *old != d) {
            ops.push(Op::Delete { key: store_key(&old) });
            tracing::info!("the bootstrap key changed; the previous one is revoked");
        }
        self.store.apply(ops).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn has_static_keys(&self) -> bool {
        !self.static_keys.is_empty()
    }

    /// Check a presented key.
    pub async fn authenticate(&self, presented: &str) -> Result<AuthContext, AuthError> {
        let presented = presented.trim().trim_matches('"');
        if presented.is_empty() {
            return Err(AuthError::Unauthorized);
        }
        let d = digest(presented);
        let record = match self.static_keys.get(&d) {
            Some(r) => r.clone(),
            None => match self.store.get(&store_key(&d)).await.map_err(|_| AuthError::Unavailable)? {
                Some(entry) => entry.json::<KeyRecord>().map_err(|_| AuthError::Unavailable)?,
                None => return Err(AuthError::Unauthorized),
            },
        };
        if record.expires_at.is_some_and(|t| t <= Utc::now()) {
            return Err(AuthError::Unauthorized);
        }
        Ok(AuthContext {
            tenant: record.tenant,
            role: record.role,
            principal_id: record.principal_id,
            key_id: record.key_id,
            allow_cross_tenant: record.allow_cross_tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_formats() {
        let keys =
            parse_static_keys("acme:key-aaaaaaaa:viewer,key-bbbbbbbb,beta:key-cccccccc:user:bob", "default").unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[0].1.tenant, "acme");
        assert_eq!(keys[0].1.role, Role::Viewer);
        assert_eq!(keys[1].1.tenant, "default");
        assert_eq!(keys[1].1.role, Role::Admin);
        assert_eq!(keys[2].1.principal_id.as_deref(), Some("bob"));
        let json = parse_static_keys(
            r#"[{"key":"key-dddddddd","tenant":"t1","role":"operator","allow_cross_tenant":true}]"#,
            "default",
        )
        .unwrap();
        assert_eq!(json[0].1.role, Role::Admin);
        assert!(json[0].1.allow_cross_tenant);
        let obj = parse_static_keys(r#"{"key-eeeeeeee":{"tenant":"t2"}}"#, "default").unwrap();
        assert_eq!(obj[0].1.tenant, "t2");
        assert!(parse_static_keys("a:b:c:d:e", "default").is_err());
        assert!(parse_static_keys(r#"[{"key":"key-ffffffff","bogus":1}]"#, "default").is_err());
    }
}
