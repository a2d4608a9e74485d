//! The one HTTP error type. Every error leaves the gateway as the upstream
//! envelope `{"error": "...", "code": "...", "status": N}` (plus extra keys
//! for some errors); 5xx messages are generic and details go to the log.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub code: Option<String>,
    pub extra: Map<String, Value>,
    pub retry_after: Option<u64>,
}

/// Upstream's derived code: lower-case, runs of non-alphanumerics → `_`.
pub fn derive_code(message: &str) -> String {
    let mut out = String::new();
    let mut pending = false;
    for c in message.chars() {
        if c.is_ascii_alphanumeric() {
            if pending && !out.is_empty() {
                out.push('_');
            }
            pending = false;
            out.push(c.to_ascii_lowercase());
        } else {
            pending = true;
        }
    }
    if out.is_empty() { "error".into() } else { out }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), code: None, extra: Map::new(), retry_after: None }
    }

    pub fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 503 with the generic message; `detail` goes to the log only.
    pub fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(%detail, "service unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service unavailable")
    }

    /// 500 with the generic message; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds the limit of {limit} bytes"))
            .code("body_too_large")
            .with("limit", limit)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message.clone()));
        body.insert("code".into(), Value::String(self.code.clone().unwrap_or_else(|| derive_code(&self.message))));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        for (k, v) in self.extra {
            body.insert(k, v);
        }
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::derive_code;

    #[test]
    fn codes_like_upstream() {
        assert_eq!(derive_code("tenant access denied"), "tenant_access_denied");
        assert_eq!(derive_code("  job not found!"), "job_not_found");
        assert_eq!(derive_code(""), "error");
    }
}
