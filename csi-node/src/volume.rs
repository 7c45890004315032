//! Where a volume is served, from the CSI volume and publish contexts (keys in
//! [`ferrite_api::context`]), and how it is accessed.

use std::collections::HashMap;
use std::path::PathBuf;

use ferrite_api::context as key;
use ferrite_api::csi::v1::{VolumeCapability, volume_capability};

use crate::config::ConnectDefaults;
use crate::error::{NodeError, Result};
use crate::fabrics::{ConnectOptions, Portal, parse_portal};
use crate::format::FsType;

/// The subsystem, namespace and portals of a volume plus kernel connect tunables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeTarget {
    pub nqn: String,
    pub nsid: u32,
    pub portals: Vec<Portal>,
    pub tunables: ConnectDefaults,
    pub hdr_digest: bool,
    pub data_digest: bool,
}

fn parse_num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T> {
    v.trim().parse().map_err(|_| {
        NodeError::InvalidArgument(format!("context key {k}={v:?} is not a valid number"))
    })
}

fn parse_bool(k: &str, v: &str) -> Result<bool> {
    match v.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(NodeError::InvalidArgument(format!(
            "context key {k}={v:?} is not true/false"
        ))),
    }
}

impl VolumeTarget {
    /// Reads the target from the contexts; `publish` wins over `volume` for a key in both.
    pub fn from_contexts(
        volume: &HashMap<String, String>,
        publish: &HashMap<String, String>,
        defaults: &ConnectDefaults,
    ) -> Result<VolumeTarget> {
        let get = |k: &str| publish.get(k).or_else(|| volume.get(k)).map(|s| s.as_str());
        let nqn = get(key::NQN)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                NodeError::InvalidArgument(format!(
                    "the volume/publish context has no {:?} key (the subsystem NQN); the volume was not created by Ferrite's controller?",
                    key::NQN
                ))
            })?
            .trim()
            .to_string();
        if !nqn.starts_with("nqn.") || nqn.len() > 223 {
            return Err(NodeError::InvalidArgument(format!(
                "{nqn:?} is not a valid subsystem NQN"
            )));
        }
        let nsid = match get(key::NSID) {
            Some(v) => parse_num::<u32>(key::NSID, v)?,
            None => 1,
        };
        if nsid == 0 || nsid == u32::MAX {
            return Err(NodeError::InvalidArgument(format!(
                "namespace ID {nsid} is not valid"
            )));
        }
        if let Some(t) = get(key::TRANSPORT)
            && !t.trim().is_empty()
            && t.trim() != "tcp"
        {
            return Err(NodeError::InvalidArgument(format!(
                "transport {t:?} is not supported (only tcp)"
            )));
        }
        let targets = get(key::TARGETS).unwrap_or("");
        let portals = targets
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                parse_portal(s).map_err(|e| {
                    NodeError::InvalidArgument(format!("context key {}: {e}", key::TARGETS))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if portals.is_empty() {
            return Err(NodeError::InvalidArgument(format!(
                "the volume/publish context has no {:?} (HOST:PORT of the NVMe/TCP target)",
                key::TARGETS
            )));
        }
        let mut t = defaults.clone();
        if let Some(v) = get(key::CTRL_LOSS_TMO) {
            t.ctrl_loss_tmo = Some(parse_num(key::CTRL_LOSS_TMO, v)?);
        }
        if let Some(v) = get(key::RECONNECT_DELAY) {
            t.reconnect_delay = Some(parse_num(key::RECONNECT_DELAY, v)?);
        }
        if let Some(v) = get(key::FAST_IO_FAIL_TMO) {
            t.fast_io_fail_tmo = Some(parse_num(key::FAST_IO_FAIL_TMO, v)?);
        }
        if let Some(v) = get(key::NR_IO_QUEUES) {
            t.nr_io_queues = Some(parse_num(key::NR_IO_QUEUES, v)?);
        }
        if let Some(v) = get(key::KEEP_ALIVE_TMO) {
            t.keep_alive_tmo = Some(parse_num(key::KEEP_ALIVE_TMO, v)?);
        }
        let hdr_digest = get(key::HEADER_DIGEST)
            .map(|v| parse_bool(key::HEADER_DIGEST, v))
            .transpose()?
            .unwrap_or(false);
        let data_digest = get(key::DATA_DIGEST)
            .map(|v| parse_bool(key::DATA_DIGEST, v))
            .transpose()?
            .unwrap_or(false);
        Ok(VolumeTarget {
            nqn,
            nsid,
            portals,
            tunables: t,
            hdr_digest,
            data_digest,
        })
    }

    /// One set of kernel connect options per portal.
    pub fn connect_options(&self) -> Vec<ConnectOptions> {
        self.portals
            .iter()
            .map(|p| ConnectOptions {
                nqn: self.nqn.clone(),
                portal: p.clone(),
                ctrl_loss_tmo: self.tunables.ctrl_loss_tmo,
                reconnect_delay: self.tunables.reconnect_delay,
                fast_io_fail_tmo: self.tunables.fast_io_fail_tmo,
                nr_io_queues: self.tunables.nr_io_queues,
                keep_alive_tmo: self.tunables.keep_alive_tmo,
                hdr_digest: self.hdr_digest,
                data_digest: self.data_digest,
            })
            .collect()
    }
}

/// How a volume is accessed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// A raw block device.
    Block,
    /// A filesystem, mounted with these flags.
    Mount { fs: FsType, flags: Vec<String> },
}

impl Access {
    pub fn is_block(&self) -> bool {
        matches!(self, Access::Block)
    }
}

/// Reads the access type and whether the access mode is read-only from a capability.
pub fn parse_capability(cap: Option<&VolumeCapability>) -> Result<(Access, bool)> {
    use volume_capability::access_mode::Mode;
    let cap =
        cap.ok_or_else(|| NodeError::InvalidArgument("volume_capability is required".into()))?;
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown);
    let read_only = match mode {
        Mode::SingleNodeWriter | Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter => {
            false
        }
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => true,
        Mode::Unknown => {
            return Err(NodeError::InvalidArgument(
                "volume_capability.access_mode is required".into(),
            ));
        }
        m @ (Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter) => {
            return Err(NodeError::InvalidArgument(format!(
                "access mode {} is not supported: a Ferrite volume is attached to one node at a time",
                m.as_str_name()
            )));
        }
    };
    let access = match &cap.access_type {
        Some(volume_capability::AccessType::Block(_)) => Access::Block,
        Some(volume_capability::AccessType::Mount(m)) => {
            if !m.volume_mount_group.is_empty() {
                return Err(NodeError::InvalidArgument(
                    "volume_mount_group is not supported (the plugin does not advertise VOLUME_MOUNT_GROUP)".into(),
                ));
            }
            Access::Mount {
                fs: FsType::parse(&m.fs_type)?,
                flags: m.mount_flags.clone(),
            }
        }
        None => {
            return Err(NodeError::InvalidArgument(
                "volume_capability needs an access type (block or mount)".into(),
            ));
        }
    };
    Ok((access, read_only))
}

/// Checks a path argument: required, absolute, no `..`.
pub fn check_path(what: &str, p: &str) -> Result<PathBuf> {
    require(what, p)?;
    let path = PathBuf::from(p);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(NodeError::InvalidArgument(format!(
            "{what} {p:?} must be an absolute path without '..'"
        )));
    }
    Ok(path)
}

/// Checks that a required string field is set (INVALID_ARGUMENT if not).
pub fn require(what: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(NodeError::InvalidArgument(format!("{what} is required")));
    }
    Ok(())
}

/// Checks a volume ID: required, printable.
pub fn check_volume_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(NodeError::InvalidArgument("volume_id is required".into()));
    }
    if id.len() > 1024 || id.chars().any(|c| c.is_control()) {
        return Err(NodeError::InvalidArgument(format!(
            "volume_id {id:?} is too long or has control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn contexts() {
        let vol = ctx(&[
            ("nqn", "nqn.2024-01.dev.ferrite:v1"),
            ("targets", "10.0.0.1:4420"),
            ("ctrlLossTmo", "60"),
        ]);
        let publ = ctx(&[
            ("targets", "10.0.0.2:4420, 10.0.0.3:4421"),
            ("nsid", "2"),
            ("dataDigest", "true"),
        ]);
        let t = VolumeTarget::from_contexts(&vol, &publ, &ConnectDefaults::default()).unwrap();
        assert_eq!(t.nqn, "nqn.2024-01.dev.ferrite:v1");
        assert_eq!(t.nsid, 2);
        assert_eq!(
            t.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            vec!["10.0.0.2:4420", "10.0.0.3:4421"]
        );
        assert_eq!(t.tunables.ctrl_loss_tmo, Some(60));
        assert_eq!(t.tunables.reconnect_delay, Some(2));
        assert!(t.data_digest && !t.hdr_digest);
        let o = t.connect_options();
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].portal.port, 4421);
        assert_eq!(o[0].ctrl_loss_tmo, Some(60));
    }

    #[test]
    fn bad_contexts() {
        let d = ConnectDefaults::default();
        let err = |v: &[(&str, &str)]| {
            VolumeTarget::from_contexts(&ctx(v), &HashMap::new(), &d).unwrap_err()
        };
        assert!(
            err(&[("targets", "10.0.0.1:4420")])
                .to_string()
                .contains("\"nqn\"")
        );
        assert!(
            err(&[("nqn", "nqn.2024-01.dev.ferrite:v1")])
                .to_string()
                .contains("\"targets\"")
        );
        assert!(
            err(&[("nqn", "bogus"), ("targets", "10.0.0.1:4420")])
                .to_string()
                .contains("not a valid subsystem NQN")
        );
        assert!(
            err(&[
                ("nqn", "nqn.a:b"),
                ("targets", "10.0.0.1:4420"),
                ("nsid", "x")
            ])
            .to_string()
            .contains("nsid")
        );
        assert!(
            err(&[
                ("nqn", "nqn.a:b"),
                ("targets", "10.0.0.1:4420"),
                ("transport", "rdma")
            ])
            .to_string()
            .contains("tcp")
        );
        assert!(
            err(&[("nqn", "nqn.a:b"), ("targets", "10.0.0.1:99999")])
                .to_string()
                .contains("targets")
        );
    }

    #[test]
    fn capabilities() {
        use volume_capability::{
            AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
        };
        let cap = |t: AccessType, m: Mode| VolumeCapability {
            access_type: Some(t),
            access_mode: Some(AccessMode { mode: m as i32 }),
        };
        let mount = |fs: &str| {
            AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                mount_flags: vec!["noatime".into()],
                volume_mount_group: String::new(),
            })
        };
        assert_eq!(
            parse_capability(Some(&cap(
                AccessType::Block(BlockVolume {}),
                Mode::SingleNodeWriter
            )))
            .unwrap(),
            (Access::Block, false)
        );
        assert_eq!(
            parse_capability(Some(&cap(mount("xfs"), Mode::SingleNodeReaderOnly))).unwrap(),
            (
                Access::Mount {
                    fs: FsType::Xfs,
                    flags: vec!["noatime".into()]
                },
                true
            )
        );
        assert!(parse_capability(Some(&cap(mount(""), Mode::MultiNodeMultiWriter))).is_err());
        assert!(parse_capability(Some(&cap(mount("btrfs"), Mode::SingleNodeWriter))).is_err());
        assert!(parse_capability(None).is_err());
    }

    #[test]
    fn paths_and_ids() {
        assert!(check_path("target_path", "/var/lib/x").is_ok());
        assert!(check_path("target_path", "").is_err());
        assert!(check_path("target_path", "rel/x").is_err());
        assert!(check_path("target_path", "/a/../b").is_err());
        assert!(check_volume_id("pvc-1").is_ok());
        assert!(check_volume_id("").is_err());
        assert!(check_volume_id("a\nb").is_err());
    }
}
