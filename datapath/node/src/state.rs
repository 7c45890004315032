//! The node's state file: the pools, replicas and volumes created through the node API, so
//! that a restarted datapath brings them back.
//!
//! The file (`node-state.yaml` in `--state-dir`) uses the same schema as the YAML
//! configuration, restricted to its `pools`, `replicas` and `volumes` sections. It is
//! rewritten atomically after every change (temporary file, fsync, rename, fsync of the
//! folder), so a crash leaves either the old or the new version. At start its entries are
//! merged with the configuration's: an entry in both must be identical (it then counts as
//! configured), anything else is a startup error.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use uuid::Uuid;

use crate::config::{self, Config};

/// Name of the state file inside the state folder.
pub const STATE_FILE: &str = "node-state.yaml";

/// Default state folder.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferrite";

/// The keys of the objects that came from the state file (created through the API) rather
/// than from the configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApiKeys {
    pub pools: HashSet<String>,
    pub replicas: HashSet<Uuid>,
    pub volumes: HashSet<Uuid>,
}

/// Where the state is kept.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: impl Into<PathBuf>) -> StateFile {
        StateFile { dir: dir.into() }
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state (empty if the file does not exist yet).
    pub fn load(&self) -> Result<Config> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
        };
        let state = Config::parse(&text).with_context(|| format!("in state file {}", path.display()))?;
        if !state.listen.is_empty() || !state.subsystems.is_empty() || state.http.is_some() || state.grpc.is_some() {
            bail!("state file {}: only pools, replicas and volumes belong here", path.display());
        }
        Ok(state)
    }

    /// Writes `state` atomically: temporary file, fsync, rename over the old file, fsync of
    /// the folder.
    pub fn save(&self, state: &Config) -> Result<()> {
        let text = serde_saphyr::to_string(state).context("encoding the node state")?;
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating state folder {}", self.dir.display()))?;
        let path = self.path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        write_synced(&tmp, text.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing folder {}", self.dir.display()))?;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Adds the state's pools, replicas and volumes to `config`. An object in both must be
/// identical; it then counts as configured. Returns the keys that came from the state only.
pub fn merge(config: &mut Config, state: Config) -> Result<ApiKeys> {
    let mut keys = ApiKeys::default();
    for p in state.pools {
        match config.pools.iter().find(|c| c.name == p.name) {
            Some(c) if *c == p => {}
            Some(_) => bail!("pool {:?} is in both the configuration and the state file, with different specs", p.name),
            None => {
                keys.pools.insert(p.name.clone());
                config.pools.push(p);
            }
        }
    }
    for r in state.replicas {
        let id = config::parse_uuid("state file: replica uuid", &r.uuid)?;
        match config.replicas.iter().find(|c| Uuid::parse_str(&c.uuid).ok() == Some(id)) {
            Some(c) if *c == r => {}
            Some(_) => bail!("replica {id} is in both the configuration and the state file, with different specs"),
            None => {
                keys.replicas.insert(id);
                config.replicas.push(r);
            }
        }
    }
    for v in state.volumes {
        let id = config::parse_uuid("state file: volume uuid", &v.uuid)?;
        match config.volumes.iter().find(|c| Uuid::parse_str(&c.uuid).ok() == Some(id)) {
            Some(c) if *c == v => {}
            Some(_) => bail!("volume {id} is in both the configuration and the state file, with different specs"),
            None => {
                keys.volumes.insert(id);
                config.volumes.push(v);
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "pools:\n  - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\"]\n\
        replicas:\n  - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n    pool: p\n    size: 64MiB\n    export: {allow_hosts: [], allow_any_host: false}\n\
        volumes:\n  - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    allow_any_host: false\n    replicas:\n      - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n";

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("sub"));
        assert_eq!(f.load().unwrap(), Config::default());
        let state = Config::parse(STATE).unwrap();
        assert!(!state.volumes[0].allow_any_host);
        assert!(!state.replicas[0].export.as_ref().unwrap().allow_any_host);
        f.save(&state).unwrap();
        assert_eq!(f.load().unwrap(), state);
        assert!(!dir.path().join("sub").join(format!(".{STATE_FILE}.tmp")).exists());
    }

    #[test]
    fn merges_and_refuses_conflicts() {
        let mut config = Config::parse("pools:\n  - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\"]\n").unwrap();
        let keys = merge(&mut config, Config::parse(STATE).unwrap()).unwrap();
        assert!(keys.pools.is_empty(), "identical pool counts as configured");
        assert_eq!(keys.replicas.len(), 1);
        assert_eq!(keys.volumes.len(), 1);
        config.validate().unwrap();

        let mut config = Config::parse("pools:\n  - name: p\n    disks: [\"file:/tmp/other.img:1GiB\"]\n").unwrap();
        let e = merge(&mut config, Config::parse(STATE).unwrap()).unwrap_err();
        assert!(e.to_string().contains("different specs"), "{e}");
    }

    #[test]
    fn refuses_foreign_sections() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "listen: [\"127.0.0.1:1\"]\n").unwrap();
        assert!(StateFile::new(dir.path()).load().is_err());
    }
}
