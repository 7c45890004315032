//! The datapath's configuration: listeners and exported subsystems, from YAML or the CLI,
//! the NVMe/TCP target's limits against hostile peers (`limits`), and in-band
//! authentication (DH-HMAC-CHAP, under `node`): the secrets of the hosts that must
//! authenticate on this node's subsystems, and this node's own secret towards other nodes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use ferrite_block::spec::BackendSpec;
use ferrite_protocol::nqn;
use serde::{Deserialize, Serialize};

/// Everything the datapath serves.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// NVMe/TCP listen addresses; every listener also serves the discovery subsystem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<SocketAddr>,
    /// Subsystems to export.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsystems: Vec<SubsystemSpec>,
    /// Address of the HTTP endpoint serving /metrics and /v1/status (none: not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Address of the gRPC node API (`ferrite.node.v1.Node`; none: not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<SocketAddr>,
    /// Folder with the node API's mutual-TLS files (`ca.crt`, `node.crt`, `node.key`, see
    /// `ferrite_api::tls`): clients must present a certificate of that CA. Required with
    /// `grpc` unless `grpc_insecure` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls_dir: Option<std::path::PathBuf>,
    /// Serve the node API without authentication (tests and trusted networks only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc_insecure: bool,
    /// Folder of the state file (`node-state.yaml`) holding what the node API created
    /// (default `/var/lib/ferrite`; used only when the node API is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<std::path::PathBuf>,
    /// This node's identity.
    #[serde(default, skip_serializing_if = "is_default")]
    pub node: NodeSpec,
    /// Limits of the NVMe/TCP target against hostile or stuck peers (unset: defaults).
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: LimitsSpec,
    /// Storage pools: RAID0 stripes over local disks, holding thin volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolSpec>,
    /// Replicas: volumes in local pools, exported over NVMe/TCP to the nodes that mirror them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaSpec>,
    /// Volumes served to hosts: mirrors over local and remote replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
}

/// This node's identity.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Host NQN this node uses to reach remote replicas (default derived from the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostnqn: Option<String>,
    /// DH-HMAC-CHAP secret (`DHHC-1:...`, as `nvme gen-dhchap-key` prints) this node
    /// authenticates with when another node's target asks (connecting to remote replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_secret: Option<SecretText>,
    /// The secret other nodes' targets must prove in turn (bidirectional authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrl_secret: Option<SecretText>,
    /// Hosts that must authenticate with DH-HMAC-CHAP on every subsystem of this node
    /// (volumes, replica exports, `subsystems`) that lets them connect. Hosts not listed are
    /// admitted by the access lists alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dhchap_hosts: Vec<DhchapHostSpec>,
}

/// A DH-HMAC-CHAP secret as written in the configuration; never shown by `Debug`.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"DHHC-1:<redacted>\"")
    }
}

impl SecretText {
    /// Parses and checks the secret (format, CRC, key length).
    pub fn parse(&self, what: &str) -> Result<ferrite_protocol::dhchap::Secret> {
        ferrite_protocol::dhchap::Secret::parse(&self.0)
            .with_context(|| format!("{what}: invalid DH-HMAC-CHAP secret"))
    }
}

/// A host that must authenticate, with its secrets.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DhchapHostSpec {
    /// The host's NQN.
    pub nqn: String,
    /// The host's secret: it must prove it knows it.
    pub dhchap_secret: SecretText,
    /// The controller secret this node proves to the host when the host asks
    /// (bidirectional authentication, `nvme connect --dhchap-ctrl-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrl_secret: Option<SecretText>,
}

impl NodeSpec {
    /// The keys of `dhchap_hosts`, checked.
    pub fn host_keys(&self) -> Result<ferrite_target::HostKeys> {
        let mut keys = ferrite_target::HostKeys::new();
        for h in &self.dhchap_hosts {
            nqn::validate(&h.nqn)
                .with_context(|| format!("node.dhchap_hosts: host {:?}", h.nqn))?;
            let what = format!("node.dhchap_hosts {:?}", h.nqn);
            let host = h.dhchap_secret.parse(&what)?;
            let ctrl = h
                .dhchap_ctrl_secret
                .as_ref()
                .map(|c| c.parse(&what))
                .transpose()?;
            if keys
                .insert(h.nqn.clone(), ferrite_target::DhchapKeys::new(host, ctrl))
                .is_some()
            {
                bail!("node.dhchap_hosts: host {:?} is given twice", h.nqn);
            }
        }
        Ok(keys)
    }

    /// This node's own secrets towards other nodes' targets: (host secret, controller secret).
    pub fn own_secrets(
        &self,
    ) -> Result<(
        Option<ferrite_protocol::dhchap::Secret>,
        Option<ferrite_protocol::dhchap::Secret>,
    )> {
        let host = self
            .dhchap_secret
            .as_ref()
            .map(|s| s.parse("node.dhchap_secret"))
            .transpose()?;
        let ctrl = self
            .dhchap_ctrl_secret
            .as_ref()
            .map(|s| s.parse("node.dhchap_ctrl_secret"))
            .transpose()?;
        if ctrl.is_some() && host.is_none() {
            bail!("node.dhchap_ctrl_secret needs node.dhchap_secret");
        }
        Ok((host, ctrl))
    }
}

/// A storage pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Pool name: lowercase letters, digits and '-'.
    pub name: String,
    /// Member disks as backend specs (`file:/dev/sdb`, `file:/var/lib/ferrite/d0.img:10GiB`).
    pub disks: Vec<String>,
    /// RAID0 stripe size (default 64KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe_size: Option<String>,
    /// Logical block size of the disks (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

/// A replica: a volume in a local pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    pub uuid: String,
    pub pool: String,
    /// Size including the mirror's 1 MiB label reserve.
    pub size: String,
    #[serde(default = "yes")]
    pub thin: bool,
    /// Export over NVMe/TCP (as `nqn.2024-01.dev.ferrite:replica-<uuid>` unless `nqn` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSpec>,
}

/// How a replica is exported.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
    /// Host NQNs (the mirroring nodes) allowed to connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// With an empty `allow_hosts`: true (default) lets any host connect, false none.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub allow_any_host: bool,
}

/// A volume served to hosts: a mirror over replicas.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub uuid: String,
    /// Subsystem NQN (default `nqn.2024-01.dev.ferrite:volume-<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
    /// Hosts allowed to connect; empty means any host (unless `allow_any_host` is false).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// With an empty `allow_hosts`: true (default) lets any host connect, false none.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub allow_any_host: bool,
    pub replicas: Vec<VolumeReplicaSpec>,
}

/// One replica of a volume: local (in this node's `replicas`) or remote (another node's
/// export at `address`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeReplicaSpec {
    pub uuid: String,
    /// NVMe/TCP address of the node exporting it; absent for a local replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<SocketAddr>,
    /// Its subsystem NQN there (default `nqn.2024-01.dev.ferrite:replica-<uuid>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Limits of the NVMe/TCP target (`ferrite_target::TargetOptions`); unset fields keep the
/// target's defaults (1024 connections, 128 per address, 4 MiB per connection, 30 s drain
/// and data timeouts, 10 s for ICReq and Connect).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Connections served at once, in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections served at once from one peer IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_address: Option<usize>,
    /// Memory budget of one connection (`4MiB`): data of commands executing or waiting to be
    /// written to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_buffer: Option<String>,
    /// Seconds a write to a host that does not read may make no progress before it is
    /// disconnected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_secs: Option<u64>,
    /// Seconds a host may take to send the data an R2T asked for (or the rest of a PDU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_timeout_secs: Option<u64>,
    /// Seconds a new connection may take to send ICReq, and then to connect a queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// The DH-HMAC-CHAP keys of `node.dhchap_hosts`, copied here by [`Config::parse`] so that
    /// the target built from [`LimitsSpec::target_options`] has them before it listens.
    #[serde(skip)]
    pub dhchap_hosts: ferrite_target::HostKeys,
}

impl LimitsSpec {
    /// The target options these limits describe.
    pub fn target_options(&self) -> Result<ferrite_target::TargetOptions> {
        use std::time::Duration;
        let mut o = ferrite_target::TargetOptions::default();
        if let Some(n) = self.max_connections {
            if n == 0 {
                bail!("limits: max_connections must be at least 1");
            }
            o.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_address {
            if n == 0 {
                bail!("limits: max_connections_per_address must be at least 1");
            }
            o.max_connections_per_address = n;
        }
        if let Some(b) = &self.connection_buffer {
            let bytes = ferrite_block::parse_size(b)
                .with_context(|| format!("limits: connection_buffer {b:?}"))?;
            o.max_connection_buffer =
                usize::try_from(bytes).context("limits: connection_buffer too large")?;
        }
        let secs = |name: &str, v: Option<u64>, into: &mut Duration| -> Result<()> {
            if let Some(s) = v {
                if s == 0 {
                    bail!("limits: {name} must be at least 1 second");
                }
                *into = Duration::from_secs(s);
            }
            Ok(())
        };
        secs(
            "drain_timeout_secs",
            self.drain_timeout_secs,
            &mut o.drain_timeout,
        )?;
        secs(
            "data_timeout_secs",
            self.data_timeout_secs,
            &mut o.data_timeout,
        )?;
        secs(
            "idle_timeout_secs",
            self.idle_timeout_secs,
            &mut o.ic_timeout,
        )?;
        secs(
            "idle_timeout_secs",
            self.idle_timeout_secs,
            &mut o.connect_timeout,
        )?;
        o.host_keys = self.dhchap_hosts.clone();
        Ok(o)
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Who may connect to an export: `hosts`, or any host when `hosts` is empty and `any`.
pub fn host_access(hosts: &[String], any: bool) -> ferrite_target::HostAccess {
    if hosts.is_empty() && any {
        ferrite_target::HostAccess::Any
    } else {
        ferrite_target::HostAccess::Only(hosts.to_vec())
    }
}

/// The NQN a replica is exported as unless configured otherwise.
pub fn replica_nqn(uuid: &uuid::Uuid) -> String {
    format!("nqn.2024-01.dev.ferrite:replica-{uuid}")
}

/// The NQN a volume is served as unless configured otherwise.
pub fn volume_nqn(uuid: &uuid::Uuid) -> String {
    format!("nqn.2024-01.dev.ferrite:volume-{uuid}")
}

/// The host NQN of node `name` unless configured otherwise.
pub fn node_hostnqn(name: &str) -> String {
    format!("nqn.2024-01.dev.ferrite:node-{name}")
}

/// Parses a UUID in its usual text form.
pub fn parse_uuid(what: &str, s: &str) -> Result<uuid::Uuid> {
    uuid::Uuid::parse_str(s).with_context(|| {
        format!("{what}: {s:?} is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    })
}

/// One exported subsystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemSpec {
    pub nqn: String,
    /// Host NQNs allowed to connect; empty means any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    pub namespaces: Vec<NamespaceSpec>,
}

/// One namespace of a subsystem.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    #[serde(default = "default_nsid")]
    pub nsid: u32,
    /// Backend: `ram:SIZE`, `file:PATH` or `file:PATH:SIZE`.
    pub backend: String,
    /// Logical block size in bytes (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses YAML configuration text.
    pub fn parse(text: &str) -> Result<Config> {
        let mut c: Config = serde_saphyr::from_str(text)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // Bad secrets are reported by `validate`.
        c.limits.dhchap_hosts = c.node.host_keys().unwrap_or_default();
        Ok(c)
    }

    /// Checks everything that can be checked before opening devices.
    pub fn validate(&self) -> Result<()> {
        self.validate_storage()?;
        self.limits.target_options()?;
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
                nqn::validate(h)
                    .with_context(|| format!("subsystem {:?}: allowed host {h:?}", s.nqn))?;
            }
            if s.namespaces.is_empty() {
                bail!("subsystem {:?} has no namespaces", s.nqn);
            }
            let mut ids = HashSet::new();
            for ns in &s.namespaces {
                if !ids.insert(ns.nsid) {
                    bail!(
                        "subsystem {:?}: namespace ID {} is given twice",
                        s.nqn,
                        ns.nsid
                    );
                }
                BackendSpec::parse(&ns.backend).with_context(|| {
                    format!(
                        "subsystem {:?} namespace {}: backend {:?}",
                        s.nqn, ns.nsid, ns.backend
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_storage(&self) -> Result<()> {
        if let Some(h) = &self.node.hostnqn {
            nqn::validate(h).with_context(|| format!("node.hostnqn {h:?}"))?;
        }
        self.node.host_keys()?;
        self.node.own_secrets()?;
        let mut pools = HashSet::new();
        for p in &self.pools {
            if !pools.insert(p.name.as_str()) {
                bail!("pool {:?} is given twice", p.name);
            }
            if p.disks.is_empty() {
                bail!("pool {:?} has no disks", p.name);
            }
            for d in &p.disks {
                BackendSpec::parse(d).with_context(|| format!("pool {:?}: disk {d:?}", p.name))?;
            }
            if let Some(s) = &p.stripe_size {
                ferrite_block::parse_size(s)
                    .with_context(|| format!("pool {:?}: stripe_size {s:?}", p.name))?;
            }
        }
        let mut replicas = HashSet::new();
        for r in &self.replicas {
            let id = parse_uuid("replica uuid", &r.uuid)?;
            if !replicas.insert(id) {
                bail!("replica {id} is given twice");
            }
            if !pools.contains(r.pool.as_str()) {
                bail!(
                    "replica {id}: pool {:?} is not configured on this node",
                    r.pool
                );
            }
            let size = ferrite_block::parse_size(&r.size)
                .with_context(|| format!("replica {id}: size {:?}", r.size))?;
            if size == 0 {
                bail!("replica {id}: size must be greater than zero");
            }
            if let Some(e) = &r.export {
                if let Some(n) = &e.nqn {
                    nqn::validate(n).with_context(|| format!("replica {id}: export nqn"))?;
                }
                for h in &e.allow_hosts {
                    nqn::validate(h)
                        .with_context(|| format!("replica {id}: allowed host {h:?}"))?;
                }
            }
        }
        let mut volumes = HashSet::new();
        for v in &self.volumes {
            let id = parse_uuid("volume uuid", &v.uuid)?;
            if !volumes.insert(id) {
                bail!("volume {id} is given twice");
            }
            if v.replicas.is_empty() {
                bail!("volume {id} has no replicas");
            }
            let mut seen = HashSet::new();
            for r in &v.replicas {
                let rid = parse_uuid("volume replica uuid", &r.uuid)?;
                if !seen.insert(rid) {
                    bail!("volume {id}: replica {rid} is listed twice");
                }
                if r.address.is_none() && !replicas.contains(&rid) {
                    bail!(
                        "volume {id}: replica {rid} has no address and is not a replica of this node"
                    );
                }
            }
            if let Some(n) = &v.nqn {
                nqn::validate(n).with_context(|| format!("volume {id}: nqn"))?;
            }
            for h in &v.allow_hosts {
                nqn::validate(h).with_context(|| format!("volume {id}: allowed host {h:?}"))?;
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
    fn parses_storage() {
        let c = Config::parse(
            "node: {name: a}\n\
             pools:\n  - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\", \"file:/tmp/d1.img:1GiB\"]\n    stripe_size: 128KiB\n\
             replicas:\n  - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n    pool: p\n    size: 64MiB\n    export: {allow_hosts: [nqn.2024-01.dev.ferrite:node-b]}\n\
             volumes:\n  - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    replicas:\n      - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n      - uuid: 0d3c2b1a-5e4f-4a6b-9c8d-7e6f5a4b3c2d\n        address: 127.0.0.2:4420\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.pools[0].disks.len(), 2);
        assert!(c.replicas[0].thin);
        assert_eq!(
            c.volumes[0].replicas[1].address,
            Some("127.0.0.2:4420".parse().unwrap())
        );
    }

    #[test]
    fn rejects_bad_storage() {
        let bad = [
            ("pools:\n  - name: p\n    disks: []\n", "no disks"),
            (
                "replicas:\n  - uuid: nope\n    pool: p\n    size: 1M\n",
                "not a UUID",
            ),
            (
                "replicas:\n  - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n    pool: p\n    size: 1M\n",
                "not configured",
            ),
            (
                "volumes:\n  - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    replicas:\n      - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n",
                "no address",
            ),
            (
                "volumes:\n  - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    replicas: []\n",
                "no replicas",
            ),
        ];
        for (text, want) in bad {
            let e = Config::parse(text).unwrap().validate().unwrap_err();
            assert!(format!("{e:#}").contains(want), "{text}: {e:#}");
        }
    }

    #[test]
    fn parses_dhchap_secrets() {
        let host = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:";
        let c = Config::parse(&format!(
            "node:\n  name: b\n  dhchap_secret: \"{host}\"\n  dhchap_hosts:\n    - nqn: nqn.2024-01.dev.ferrite:node-a\n      dhchap_secret: \"{host}\"\n      dhchap_ctrl_secret: \"{host}\"\n"
        ))
        .unwrap();
        c.validate().unwrap();
        let keys = c.limits.target_options().unwrap().host_keys;
        let k = &keys["nqn.2024-01.dev.ferrite:node-a"];
        assert!(k.ctrl.is_some());
        assert_eq!(c.node.own_secrets().unwrap().0.unwrap().key_len(), 32);
        assert!(
            !format!("{c:?}").contains("ia6zGod"),
            "secrets stay out of Debug output"
        );
        // Without the section nothing changes.
        let plain = Config::parse("node: {name: b}\n").unwrap();
        assert!(plain.limits.target_options().unwrap().host_keys.is_empty());
        assert_eq!(plain.node.own_secrets().unwrap(), (None, None));
        // A bad CRC, a missing host secret, a bad NQN and a duplicate are refused.
        for bad in [
            "node:\n  dhchap_secret: \"DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2m:\"\n".to_string(),
            format!("node:\n  dhchap_ctrl_secret: \"{host}\"\n"),
            format!("node:\n  dhchap_hosts: [{{nqn: bad, dhchap_secret: \"{host}\"}}]\n"),
            format!(
                "node:\n  dhchap_hosts:\n    - {{nqn: nqn.2024-01.dev.ferrite:a, dhchap_secret: \"{host}\"}}\n    - {{nqn: nqn.2024-01.dev.ferrite:a, dhchap_secret: \"{host}\"}}\n"
            ),
        ] {
            assert!(Config::parse(&bad).and_then(|c| c.validate()).is_err(), "{bad}");
        }
        assert!(
            Config::parse("node:\n  dhchap_hosts: [{nqn: nqn.2024-01.dev.ferrite:a}]\n").is_err()
        );
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(Config::parse("listen: []\nsubsystem: []\n").is_err());
        let c =
            Config::parse("subsystems:\n  - nqn: nqn.2024-01.dev.ferrite:v\n    namespaces: []\n")
                .unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("no namespaces")
        );
        let c = Config::parse(
            "subsystems:\n  - nqn: nqn.2024-01.dev.ferrite:v\n    namespaces:\n      - backend: ram:1M\n      - backend: ram:1M\n",
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }
}
