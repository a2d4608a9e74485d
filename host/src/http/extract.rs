//! Request extractors: strict JSON bodies (size-capped, unknown fields
//! refused with the field named) and the authenticated caller.

use super::error::ApiError;
use crate::auth::AuthContext;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

/// Largest body a JSON route reads; set per router as an extension.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body parsed strictly. Empty bodies are refused unless the route
/// uses [`JsonOrEmpty`].
pub struct StrictJson<T>(pub T);

/// Like [`StrictJson`] but an empty body means `{}`.
pub struct JsonOrEmpty<T>(pub T);

async fn read_body(req: Request) -> Result<Vec<u8>, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().copied().unwrap_or(BodyLimit(2 << 20)).0;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(limit));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        // Like upstream, any body that parses as JSON is taken (curl -d sends
        // form encoding by default); only multipart is clearly not JSON.
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence.starts_with("multipart/") {
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type must be application/json")
                .code("unsupported_media_type"));
        }
    }
    match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            if too_large {
                Err(ApiError::too_large(limit))
            } else {
                Err(ApiError::bad_request("could not read the request body"))
            }
        }
    }
}

/// Turn a serde_json error into a 400 naming the field when it can.
pub fn json_error(e: serde_json::Error) -> ApiError {
    let text = e.to_string();
    let mut err = ApiError::bad_request(format!("invalid json: {}", text.split(", expected").next().unwrap_or(&text)))
        .code("invalid_json");
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = text.split(marker).nth(1)
            && let Some(field) = rest.split('`').next()
        {
            err = err.with("field", field);
        }
    }
    if let Some(rest) = text.split("invalid type").nth(1) {
        err = err.with("detail", format!("invalid type{rest}"));
    }
    err
}

fn parse<T: DeserializeOwned>(bytes: &[u8], empty_ok: bool) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_ok {
            return serde_json::from_slice(b"{}").map_err(json_error);
        }
        return Err(ApiError::bad_request("request body is required").code("invalid_json"));
    }
    // Every body of this API is an object (serde would also map an array
    // onto a struct's fields by position).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("request body must be a JSON object").code("invalid_json"));
    }
    serde_json::from_slice(bytes).map_err(json_error)
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        Ok(StrictJson(parse(&read_body(req).await?, false)?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        Ok(JsonOrEmpty(parse(&read_body(req).await?, true)?))
    }
}

/// The authenticated caller and the tenant the request acts for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub auth: AuthContext,
    pub tenant: String,
}

impl Caller {
    /// Admin-only routes: anyone else gets upstream's generic 403.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.auth.role == crate::auth::Role::Admin { Ok(()) } else { Err(ApiError::forbidden("access denied")) }
    }
}

impl Caller {
    /// Routes that change something every tenant shares: an admin key not
    /// bound to one tenant (an operator). `refusal` says what is shared.
    pub fn require_operator(&self, refusal: &str) -> Result<(), ApiError> {
        self.require_admin()?;
        if !self.auth.allow_cross_tenant {
            return Err(ApiError::forbidden(refusal).code("operator_required"));
        }
        Ok(())
    }

    /// Who did it, for records (`principal` or the key id).
    pub fn actor(&self) -> String {
        self.auth.principal_id.clone().unwrap_or_else(|| self.auth.key_id.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(ApiError::unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn streamed(len: usize, limit: usize) -> Request {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..len / 1024 + 1).map(|_| Ok(vec![b' '; 1024])).collect();
        let mut req =
            Request::builder().method("POST").uri("/").body(Body::from_stream(futures::stream::iter(chunks))).unwrap();
        req.extensions_mut().insert(BodyLimit(limit));
        req
    }

    #[tokio::test]
    async fn bodies_without_a_length_are_cut_at_the_limit() {
        let err = read_body(streamed(64 * 1024, 16 * 1024)).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(err.code.as_deref(), Some("body_too_large"));
        assert!(read_body(streamed(8 * 1024, 16 * 1024)).await.is_ok());
    }

    #[test]
    fn unknown_fields_are_named() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            topic: String,
        }
        let err = parse::<Body>(br#"{"topic":"a","tpoic":1}"#, false).unwrap_err();
        assert_eq!(err.extra["field"], "tpoic");
        assert!(parse::<Body>(b"", false).is_err());
    }
}
