//! Who is calling, for which tenant, with which role.
//!
//! Keys are never stored or logged in clear: the bootstrap key and managed
//! keys are kept as SHA-256 digests (keys are 256-bit random secrets, so a
//! fast digest is enough), static keys from `CORDUM_API_KEYS` are digested
//! at start and held in memory only.

pub mod keys;
pub mod rate_limit;

use serde::{Deserialize, Serialize};

pub use keys::{AuthService, KeyRecord};

/// Normalised role. `operator` and `secops` are admins (as upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
    Viewer,
}

impl Role {
    pub fn parse(raw: &str) -> Option<Role> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "" | "admin" | "operator" | "secops" => Some(Role::Admin),
            "user" => Some(Role::User),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthContext {
    /// The tenant the credential belongs to.
    pub tenant: String,
    pub role: Role,
    pub principal_id: Option<String>,
    /// Public identifier of the key (`static:<12 hex>`, `bootstrap:<12 hex>`).
    pub key_id: String,
    pub allow_cross_tenant: bool,
}

impl AuthContext {
    /// Who submitted something, for records and self-approval checks.
    pub fn submitted_by(&self) -> String {
        match &self.principal_id {
            Some(p) => format!("{}|principal:{p}", self.key_id),
            None => self.key_id.clone(),
        }
    }

    pub fn has_role(&self, allowed: &[Role]) -> bool {
        allowed.contains(&self.role)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("tenant access denied")]
    TenantDenied,
    #[error("invalid tenant id")]
    InvalidTenant,
    #[error("access denied")]
    AccessDenied,
    #[error("auth store unavailable")]
    Unavailable,
}

/// Tenant ids are used in keys and directory names: keep them plain.
pub fn valid_tenant_id(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The tenant a request acts for: the `X-Tenant-ID` header when given (it
/// must be the credential's own tenant unless the key is cross-tenant),
/// otherwise the credential's tenant.
pub fn resolve_tenant(ctx: &AuthContext, header: Option<&str>) -> Result<String, AuthError> {
    let requested = header.map(str::trim).filter(|h| !h.is_empty());
    match requested {
        None => Ok(ctx.tenant.clone()),
        Some(t) if !valid_tenant_id(t) => Err(AuthError::InvalidTenant),
        Some(t) if t == ctx.tenant || ctx.allow_cross_tenant => Ok(t.to_string()),
        Some(_) => Err(AuthError::TenantDenied),
    }
}
