//! The datapath's configuration: listeners and exported subsystems, from YAML or the CLI.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ferrite_block::spec::BackendSpec;
use ferrite_protocol::nqn;
use serde::Deserialize;

/// Everything the datapath serves.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NVMe/TCP listen addresses; every listener also serves the discovery subsystem.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Subsystems to export.
    #[serde(default)]
    pub subsystems: Vec<SubsystemSpec>,
    /// Address of the HTTP endpoint serving /metrics and /v1/status (none: not served).
    #[serde(default)]
    pub http: Option<SocketAddr>,
}

/// One exported subsystem.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemSpec {
    pub nqn: String,
    /// Host NQNs allowed to connect; empty means any host.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
    pub namespaces: Vec<NamespaceSpec>,
}

/// One namespace of a subsystem.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default = "default_nsid")]
    pub nsid: u32,
    /// Backend: `ram:SIZE`, `file:PATH` or `file:PATH:SIZE`.
    pub backend: String,
    /// Logical block size in bytes (default 4096).
    #[serde(default)]
    pub block_size: Option<u32>,
}

fn default_nsid() -> u32 {
    1
}

/// Default logical block size of namespaces.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

impl Config {
    /// Reads a YAML configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses YAML configuration text.
    pub fn parse(text: &str) -> Result<Config> {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }

    /// Checks everything that can be checked before opening devices.
    pub fn validate(&self) -> Result<()> {
        let mut seen = HashSet::new();
        for s in &self.subsystems {
            nqn::validate(&s.nqn).with_context(|| format!("subsystem {:?}", s.nqn))?;
            if s.nqn == nqn::DISCOVERY_NQN {
                bail!("subsystem {:?}: that NQN is reserved for discovery", s.nqn);
            }
            if !seen.insert(s.nqn.as_str()) {
                bail!("subsystem {:?} is given twice", s.nqn);
            }
            for h in &s.allow_hosts {
                nqn::validate(h).with_context(|| format!("subsystem {:?}: allowed host {h:?}", s.nqn))?;
            }
            if s.namespaces.is_empty() {
                bail!("subsystem {:?} has no namespaces", s.nqn);
            }
            let mut ids = HashSet::new();
            for ns in &s.namespaces {
                if !ids.insert(ns.nsid) {
                    bail!("subsystem {:?}: namespace ID {} is given twice", s.nqn, ns.nsid);
                }
                BackendSpec::parse(&ns.backend)
                    .with_context(|| format!("subsystem {:?} namespace {}: backend {:?}", s.nqn, ns.nsid, ns.backend))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_yaml() {
        let c = Config::parse(
            "listen: [\"127.0.0.1:4420\", \"127.0.0.1:8009\"]\n\
             subsystems:\n\
             \x20 - nqn: nqn.2024-01.dev.ferrite:vol1\n\
             \x20   allow_hosts: [nqn.2014-08.org.nvmexpress:uuid:abc]\n\
             \x20   namespaces:\n\
             \x20     - backend: ram:64MiB\n\
             \x20       block_size: 512\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.subsystems[0].namespaces[0].nsid, 1);
        assert_eq!(c.subsystems[0].namespaces[0].block_size, Some(512));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(Config::parse("listen: []\nsubsystem: []\n").is_err());
        let c = Config::parse("subsystems:\n  - nqn: nqn.2024-01.dev.ferrite:v\n    namespaces: []\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("no namespaces"));
        let c = Config::parse(
            "subsystems:\n  - nqn: nqn.2024-01.dev.ferrite:v\n    namespaces:\n      - backend: ram:1M\n      - backend: ram:1M\n",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }
}
