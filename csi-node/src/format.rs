//! Filesystems: probing a device (blkid), creating one only on a blank device, and growing a
//! mounted one (resize2fs / xfs_growfs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{NodeError, Result};
use crate::exec;

/// Paths of the tools used (plain names are looked up in PATH).
#[derive(Clone, Debug)]
pub struct Tools {
    pub blkid: PathBuf,
    pub mkfs_ext4: PathBuf,
    pub mkfs_xfs: PathBuf,
    pub resize2fs: PathBuf,
    pub xfs_growfs: PathBuf,
    /// Time limit of one tool run.
    pub timeout: Duration,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            blkid: "blkid".into(),
            mkfs_ext4: "mkfs.ext4".into(),
            mkfs_xfs: "mkfs.xfs".into(),
            resize2fs: "resize2fs".into(),
            xfs_growfs: "xfs_growfs".into(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// The filesystems Ferrite formats and grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// Parses a CSI `fs_type`; empty means ext4.
    pub fn parse(s: &str) -> Result<FsType> {
        match s.trim() {
            "" | "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            other => {
                Err(NodeError::InvalidArgument(format!("filesystem type {other:?} is not supported (use ext4 or xfs)")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }
}

/// What blkid found on a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// No filesystem, partition table or other signature.
    Blank,
    /// A filesystem of this type (`ext4`, `xfs`, ...).
    Filesystem(String),
    /// Something else (a partition table, LVM, RAID member...): never formatted over.
    Other(String),
}

/// Parses `blkid -p -o export` output.
pub fn parse_blkid_export(out: &str) -> Probe {
    let mut fs_type = None;
    let mut usage = None;
    let mut pt = None;
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "TYPE" => fs_type = Some(v),
            "USAGE" => usage = Some(v),
            "PTTYPE" => pt = Some(v),
            _ => {}
        }
    }
    match (fs_type, usage, pt) {
        (Some(t), Some(u), _) if u != "filesystem" => Probe::Other(format!("{t} ({u})")),
        (Some(t), _, _) => Probe::Filesystem(t),
        (None, _, Some(p)) => Probe::Other(format!("partition table {p}")),
        (None, Some(u), None) => Probe::Other(u),
        (None, None, None) => Probe::Blank,
    }
}

/// Probes `dev` with `blkid -p` (low-level probing: no cache).
pub fn probe(tools: &Tools, dev: &Path) -> Result<Probe> {
    let d = dev.to_string_lossy();
    let out = exec::run(&tools.blkid, &["-p", "-o", "export", &d], tools.timeout)?;
    match out.code {
        Some(0) => Ok(parse_blkid_export(&out.stdout)),
        // 2: nothing was found on the device.
        Some(2) => Ok(Probe::Blank),
        c => Err(NodeError::Internal(format!(
            "blkid -p {d} failed (exit {c:?}): {}; is util-linux blkid installed?",
            out.stderr.trim()
        ))),
    }
}

/// Creates a filesystem on `dev`, which the caller found blank.
pub fn mkfs(tools: &Tools, fs: FsType, dev: &Path) -> Result<()> {
    let d = dev.to_string_lossy();
    tracing::info!(device = %d, fs = fs.name(), "creating filesystem");
    match fs {
        // -F: a whole device, not a partition; -m0: no root-reserved blocks on a volume.
        FsType::Ext4 => exec::run_ok(&tools.mkfs_ext4, &["-F", "-m0", &d], tools.timeout)?,
        FsType::Xfs => exec::run_ok(&tools.mkfs_xfs, &[&d], tools.timeout)?,
    };
    Ok(())
}

/// Grows the filesystem mounted from `dev` at `mount_point` to the device's size, online.
pub fn grow(tools: &Tools, fs: FsType, dev: &Path, mount_point: &Path) -> Result<()> {
    tracing::info!(device = %dev.display(), mount_point = %mount_point.display(), fs = fs.name(), "growing filesystem");
    match fs {
        FsType::Ext4 => exec::run_ok(&tools.resize2fs, &[&dev.to_string_lossy()], tools.timeout)?,
        FsType::Xfs => exec::run_ok(&tools.xfs_growfs, &[&mount_point.to_string_lossy()], tools.timeout)?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_output() {
        assert_eq!(parse_blkid_export(""), Probe::Blank);
        assert_eq!(
            parse_blkid_export(
                "DEVNAME=/dev/nvme0n1\nUUID=1234\nVERSION=1.0\nBLOCK_SIZE=4096\nTYPE=ext4\nUSAGE=filesystem\n"
            ),
            Probe::Filesystem("ext4".into())
        );
        assert_eq!(parse_blkid_export("TYPE=xfs\n"), Probe::Filesystem("xfs".into()));
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/sda\nPTUUID=x\nPTTYPE=gpt\n"),
            Probe::Other("partition table gpt".into())
        );
        assert_eq!(parse_blkid_export("TYPE=LVM2_member\nUSAGE=raid\n"), Probe::Other("LVM2_member (raid)".into()));
    }

    #[test]
    fn fs_types() {
        assert_eq!(FsType::parse("").unwrap(), FsType::Ext4);
        assert_eq!(FsType::parse("xfs").unwrap(), FsType::Xfs);
        assert!(matches!(FsType::parse("btrfs"), Err(NodeError::InvalidArgument(_))));
    }

    #[test]
    fn probe_exit_codes() {
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("blkid");
        std::fs::write(&fake, "#!/bin/sh\ncase \"$4\" in blank) exit 2;; ext4) echo TYPE=ext4; exit 0;; *) echo oops >&2; exit 4;; esac\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tools = Tools { blkid: fake, ..Tools::default() };
        assert_eq!(probe(&tools, Path::new("blank")).unwrap(), Probe::Blank);
        assert_eq!(probe(&tools, Path::new("ext4")).unwrap(), Probe::Filesystem("ext4".into()));
        assert!(matches!(probe(&tools, Path::new("x")), Err(NodeError::Internal(m)) if m.contains("oops")));
    }
}
