//! `cordum pack publish --catalog <dir>`: copy the bundle to
//! `<dir>/packs/<id>/<version>/pack.tgz` and add (or update) its entry in
//! `<dir>/catalog.json`, the format the gateway's `--catalog` reads (the
//! entry's `url` is relative to the catalog file, its `sha256` pins the bundle).

use super::{bundle_file, bundle_manifest, read_bundle_file, sha256_hex, write_atomic};
use anyhow::{Context, Result, bail};
use clap::Args;
use cordum::packs::catalog::Catalog;
use cordum::packs::market::compare_versions;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Pack directory (its dist/ bundle) or bundle file (default: the current directory).
    path: Option<PathBuf>,
    /// Catalog directory (created if missing; holds catalog.json).
    #[arg(long)]
    catalog: PathBuf,
    /// Replace an entry of the same version whose bundle differs.
    #[arg(long)]
    force: bool,
}

pub fn run(args: PublishArgs) -> Result<()> {
    let file = bundle_file(args.path.as_deref())?;
    let (bytes, files) = read_bundle_file(&file)?;
    let manifest = bundle_manifest(&files).with_context(|| format!("{} has an invalid pack.yaml", file.display()))?;
    let (id, version) = (manifest.metadata.id.clone(), manifest.metadata.version.clone());
    if version.contains(['/', '\\']) || version.starts_with('.') {
        bail!("version {version:?} cannot name a directory");
    }
    let sha = sha256_hex(&bytes);
    let signed = files.iter().any(|(p, _)| p == cordum::packs::signing::SIGNATURE_FILE);

    let catalog_path = args.catalog.join("catalog.json");
    let mut catalog: Value = match std::fs::read(&catalog_path) {
        Ok(raw) => serde_json::from_slice(&raw).with_context(|| format!("{} is not JSON", catalog_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({"packs": []}),
        Err(e) => return Err(e).with_context(|| format!("read {}", catalog_path.display())),
    };
    let packs = catalog
        .get_mut("packs")
        .and_then(Value::as_array_mut)
        .with_context(|| format!("{} has no packs list", catalog_path.display()))?;
    if let Some(existing) = packs.iter().find(|e| e["id"] == id.as_str() && e["version"] == version.as_str())
        && existing["sha256"].as_str().is_some_and(|s| !s.eq_ignore_ascii_case(&sha))
        && !args.force
    {
        bail!(
            "{} already lists {id}@{version} with another bundle; bump the version or publish with --force",
            catalog_path.display()
        );
    }

    let rel = format!("packs/{id}/{version}/pack.tgz");
    write_atomic(&args.catalog.join(&rel), &bytes)?;

    // Catalog fields as upstream's catalog build derives them from the topics.
    let union = |f: &dyn Fn(&cordum::packs::manifest::TopicSpec) -> Vec<String>| -> Vec<String> {
        manifest.topics.iter().flat_map(f).filter(|s| !s.is_empty()).collect::<BTreeSet<_>>().into_iter().collect()
    };
    let raw: serde_yaml::Value = files
        .iter()
        .find(|(p, _)| p == "pack.yaml" || p == "pack.yml")
        .and_then(|(_, b)| serde_yaml::from_slice(b).ok())
        .unwrap_or_default();
    let meta = &raw["metadata"];
    let author = meta["authors"][0]
        .as_str()
        .or_else(|| meta["authors"][0]["name"].as_str())
        .or_else(|| meta["author"].as_str())
        .unwrap_or("")
        .to_string();
    let entry = json!({
        "id": id,
        "version": version,
        "title": manifest.metadata.title,
        "description": manifest.metadata.description,
        "author": author,
        "url": rel,
        "sha256": sha,
        "capabilities": union(&|t| vec![t.capability.clone()]),
        "requires": union(&|t| t.requires.clone()),
        "risk_tags": union(&|t| t.risk_tags.clone()),
        "kind": "pack",
    });
    packs.retain(|e| !(e["id"] == id.as_str() && e["version"] == version.as_str()));
    packs.push(entry);
    packs.sort_by(|a, b| {
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
        s(a, "id").cmp(&s(b, "id")).then_with(|| compare_versions(&s(a, "version"), &s(b, "version")))
    });
    catalog["updated_at"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    // What the gateway will read back.
    serde_json::from_value::<Catalog>(catalog.clone()).context("the updated catalog would not be readable")?;
    let mut text = serde_json::to_vec_pretty(&catalog)?;
    text.push(b'\n');
    write_atomic(&catalog_path, &text)?;
    eprintln!(
        "Published {id}@{version} ({}) to {} as {rel}",
        if signed { "signed" } else { "unsigned" },
        catalog_path.display()
    );
    println!("sha256 {sha}");
    Ok(())
}
