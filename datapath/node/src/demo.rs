//! The built-in demo: Ferrite's embedded default configuration, served from sparse files in
//! a temporary folder, ready for `nvme connect`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::Config;

/// The embedded demo configuration; `{dir}` is replaced by the demo folder.
const DEMO_YAML: &str = include_str!("demo.yaml");

/// Builds the demo configuration, creating its folder (the sparse files are created when
/// the backends open).
pub fn config(dir: Option<PathBuf>) -> Result<Config> {
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("ferrite-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating demo folder {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let text = DEMO_YAML.replace("{dir}", &dir.display().to_string());
    Config::parse(&text).context("the embedded demo configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(Some(tmp.path().to_path_buf())).unwrap();
        c.validate().unwrap();
        assert!(!c.subsystems.is_empty());
        assert!(c.subsystems[0].namespaces[0].backend.contains(tmp.path().to_str().unwrap()));
    }
}
