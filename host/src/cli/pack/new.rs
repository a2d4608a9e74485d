//! `cordum pack new <name>`: scaffold a Rust component pack in `<name>/`.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Pack id and directory name: lowercase letters, digits and `-`, starting with a letter.
    name: String,
    /// Create the pack directory under this one instead of the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Human title in pack.yaml (default: from the name).
    #[arg(long)]
    title: Option<String>,
}

/// The scaffold: (path, template). Templates use `{{id}}` and `{{title}}`.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("template/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("template/lib.rs.tmpl")),
    ("pack.yaml", include_str!("template/pack.yaml.tmpl")),
    ("schemas/GreetInput.json", include_str!("template/GreetInput.json.tmpl")),
    ("overlays/policy.fragment.yaml", include_str!("template/policy.fragment.yaml.tmpl")),
    ("README.md", include_str!("template/README.md.tmpl")),
    (".gitignore", include_str!("template/gitignore.tmpl")),
    // The contracts the component is built against, as the gateway has them.
    ("wit/pack/pack.wit", include_str!("../../../../wit/pack/pack.wit")),
    ("wit/host/host.wit", include_str!("../../../../wit/host/host.wit")),
    // The toolchain (and wasm32-wasip2 target) the gateway is built and tested with.
    ("rust-toolchain.toml", include_str!("../../../../rust-toolchain.toml")),
];

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn title_of(name: &str) -> String {
    name.split('-')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(args: NewArgs) -> Result<()> {
    if !valid_name(&args.name) {
        bail!(
            "pack name {:?} must be lowercase letters, digits and '-', start with a letter and be at most 64 characters",
            args.name
        );
    }
    let parent = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let root = parent.join(&args.name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let title = args.title.unwrap_or_else(|| title_of(&args.name));
    if title.contains(['\n', '"', '\\']) {
        bail!("the title must be one line without quotes or backslashes");
    }
    scaffold(&root, &args.name, &title)?;
    eprintln!("Created pack {} in {}", args.name, root.display());
    eprintln!("Next: cd {} && cordum pack build && cordum pack test", root.display());
    Ok(())
}

fn scaffold(root: &Path, id: &str, title: &str) -> Result<()> {
    for (rel, template) in FILES {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = template.replace("{{id}}", id).replace("{{title}}", title);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_titles() {
        assert!(valid_name("my-pack2"));
        for bad in ["", "2pack", "My", "a_b", "a-", "a.b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(title_of("my-first-pack"), "My First Pack");
    }

    #[test]
    fn scaffold_is_a_valid_pack() {
        let dir = std::env::temp_dir().join(format!("cordum-new-test-{}", std::process::id()));
        let root = dir.join("demo");
        scaffold(&root, "demo", "Demo").unwrap();
        let manifest = cordum::packs::manifest::Manifest::parse(&std::fs::read(root.join("pack.yaml")).unwrap())
            .expect("the scaffold's pack.yaml is valid");
        assert_eq!(manifest.topics[0].name, "job.demo.greet");
        assert_eq!(manifest.tests.policy_simulations.len(), 1);
        assert!(root.join("wit/pack/pack.wit").is_file() && root.join("wit/host/host.wit").is_file());
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
        assert!(lib.contains("\"job.demo.greet\"") && !lib.contains("{{"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
