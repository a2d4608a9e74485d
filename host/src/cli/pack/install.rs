//! `cordum pack install`: upload the bundle to a running gateway
//! (`POST /api/v1/packs/install`, `application/gzip`). Installing packs
//! needs an operator key (an admin key not bound to one tenant).

use super::{bundle_file, read_bundle_file, sha256_hex, spinner};
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Pack directory (its dist/ bundle) or bundle file (default: the current directory).
    path: Option<PathBuf>,
    /// The gateway's address.
    #[arg(long, env = "CORDUM_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// API key (an operator key: admin, not bound to one tenant).
    #[arg(long, env = "CORDUM_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Tenant to act as (X-Tenant-ID).
    #[arg(long, env = "CORDUM_TENANT")]
    tenant: Option<String>,
    /// Replace an installed version of the pack.
    #[arg(long)]
    upgrade: bool,
    /// Request timeout, seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub async fn run(args: InstallArgs) -> Result<()> {
    let file = bundle_file(args.path.as_deref())?;
    let (bytes, _) = read_bundle_file(&file)?;
    let sha = sha256_hex(&bytes);
    let base = args.url.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/packs/install"))
        .with_context(|| format!("{:?} is not a gateway URL", args.url))?;
    if args.upgrade {
        url.set_query(Some("upgrade=true"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .context("build the HTTP client")?;
    let mut request = client
        .post(url.clone())
        .header("X-API-Key", args.api_key.trim())
        .header("Content-Type", "application/gzip")
        .body(bytes.clone());
    if let Some(tenant) = args.tenant.as_deref().filter(|t| !t.is_empty()) {
        request = request.header("X-Tenant-ID", tenant);
    }
    let bar = spinner(format!("installing {} ({} bytes) on {base}", file.display(), bytes.len()));
    let response = request.send().await;
    bar.finish_and_clear();
    let response = response.with_context(|| format!("cannot reach the gateway at {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let text = |k: &str| body[k].as_str().map(str::to_string);
        let mut detail = vec![format!("HTTP {}", status.as_u16())];
        detail.extend(text("code"));
        detail.extend(text("step").map(|s| format!("step {s}")));
        detail.extend(text("signature_code"));
        bail!(
            "the gateway refused {} ({}): {}",
            file.display(),
            detail.join(", "),
            text("error").unwrap_or_else(|| body.to_string())
        );
    }
    let verification = &body["verification"];
    let signature = match verification["signed"].as_bool() {
        Some(true) => format!("signed by {}", verification["key_id"].as_str().unwrap_or("?")),
        _ => match verification["warnings"][0].as_str() {
            Some(w) => format!("unsigned: {w}"),
            None => "unsigned".into(),
        },
    };
    eprintln!(
        "Installed {}@{} ({}, {signature}); topics: {}",
        body["id"].as_str().unwrap_or("?"),
        body["version"].as_str().unwrap_or("?"),
        body["status"].as_str().unwrap_or("?"),
        body["manifest"]["topics"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    println!("sha256 {sha}");
    Ok(())
}
