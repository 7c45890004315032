//! The built-in demo: Ferrite's embedded default configuration (pools on sparse files in a
//! temporary folder, a mirrored volume over two replicas), ready for `nvme connect`.

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
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating demo folder {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
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
        assert_eq!(c.pools.len(), 2);
        assert_eq!(c.volumes[0].replicas.len(), 2);
        assert!(c.pools[0].disks[0].contains(tmp.path().to_str().unwrap()));
    }
}
