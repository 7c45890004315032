//! NodeExpandVolume: after the controller grew the namespace, make the kernel see the new
//! size (rescan) and grow the mounted filesystem online (resize2fs / xfs_growfs).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Plugin;
use crate::device;
use crate::error::{NodeError, Result};
use crate::format::{self, FsType};
use crate::mount;

/// NodeExpandVolume; returns the device's size in bytes.
pub fn expand(p: &Plugin, volume_id: &str, volume_path: &Path, required_bytes: u64) -> Result<u64> {
    let meta = match std::fs::metadata(volume_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NodeError::NotFound(format!(
                "volume path {} of volume {volume_id} does not exist",
                volume_path.display()
            )));
        }
        Err(e) => {
            return Err(NodeError::Internal(format!(
                "stat {}: {e}",
                volume_path.display()
            )));
        }
    };
    let (devno, fs) = if meta.file_type().is_block_device() {
        (device::split(meta.rdev()), None)
    } else {
        let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
        let m = mount::mounts_at(&table, volume_path)
            .last()
            .map(|m| (*m).clone())
            .ok_or_else(|| {
                NodeError::FailedPrecondition(format!(
                    "volume path {} is not mounted",
                    volume_path.display()
                ))
            })?;
        let fs = match m.fs_type.as_str() {
            "ext4" | "ext3" | "ext2" => FsType::Ext4,
            "xfs" => FsType::Xfs,
            other => {
                return Err(NodeError::Unimplemented(format!(
                    "cannot grow a {other} filesystem (only ext4 and xfs)"
                )));
            }
        };
        (m.devno, Some(fs))
    };
    let name = p.cfg.sysfs.block_name_by_devno(devno).ok_or_else(|| {
        NodeError::NotFound(format!(
            "the block device behind {} is gone",
            volume_path.display()
        ))
    })?;
    let nqn = p.cfg.sysfs.nqn_of_block(&name).ok_or_else(|| {
        NodeError::FailedPrecondition(format!(
            "{name} (behind {}) is not an NVMe-oF namespace",
            volume_path.display()
        ))
    })?;
    let ctrls = p
        .cfg
        .sysfs
        .controllers_of(&nqn)
        .map_err(|e| NodeError::Internal(format!("reading sysfs: {e}")))?;
    for c in ctrls.iter().filter(|c| c.state == "live") {
        if let Err(e) = p.cfg.sysfs.rescan_controller(&c.name) {
            tracing::warn!(ctrl = %c.name, error = %e, "rescan failed");
        }
    }
    let size = |n: &str| {
        p.cfg
            .sysfs
            .block_size_bytes(n)
            .map_err(|e| NodeError::Internal(format!("size of {n}: {e}")))
    };
    let deadline = Instant::now() + p.cfg.device_timeout;
    let mut bytes = size(&name)?;
    while bytes < required_bytes {
        if Instant::now() > deadline {
            return Err(NodeError::FailedPrecondition(format!(
                "{name} of {nqn} is still {bytes} bytes after a rescan, less than the requested {required_bytes}; \
                 was the volume expanded on the target (ControllerExpandVolume)?"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
        bytes = size(&name)?;
    }
    tracing::info!(volume = volume_id, device = %name, bytes, "device size after rescan");
    if let Some(fs) = fs {
        format::grow(&p.cfg.tools, fs, &p.cfg.dev_dir.join(&name), volume_path)?;
    }
    Ok(bytes)
}
