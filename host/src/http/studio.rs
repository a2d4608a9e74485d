//! Policy Studio: the web page (`/studio`) policy authors use to sign in
//! with an API key, edit bundles with their errors shown at the line, try
//! requests with the explain trace, diff against the active snapshot,
//! publish, and roll back. Static files built into the binary; everything
//! they do goes through the public API with the user's key.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("studio/index.html");
const APP_JS: &str = include_str!("studio/app.js");
const CSS: &str = include_str!("studio/studio.css");

/// Scripts and styles from this origin only; the page talks to this gateway only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}
