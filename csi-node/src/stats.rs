//! NodeGetVolumeStats: capacity and inode usage of a published volume, and whether its
//! NVMe namespace and a live controller are still there.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::config::Plugin;
use crate::device;
use crate::error::{NodeError, Result};
use crate::mount;

/// Usage in one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub total: i64,
    pub available: i64,
    pub used: i64,
}

/// What NodeGetVolumeStats reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub bytes: Usage,
    /// None for raw block volumes.
    pub inodes: Option<Usage>,
    pub abnormal: bool,
    pub message: String,
}

/// statvfs(2) of a mounted path.
pub fn statvfs(path: &Path) -> io::Result<(Usage, Usage)> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let f = st.f_frsize as i64;
    let bytes = Usage {
        total: st.f_blocks as i64 * f,
        available: st.f_bavail as i64 * f,
        used: (st.f_blocks as i64 - st.f_bfree as i64) * f,
    };
    let inodes = Usage {
        total: st.f_files as i64,
        available: st.f_favail as i64,
        used: st.f_files as i64 - st.f_ffree as i64,
    };
    Ok((bytes, inodes))
}

/// Health of the NVMe namespace behind block device `devno`: `None` if all is well, else
/// what is wrong.
pub fn device_problem(p: &Plugin, devno: (u32, u32)) -> Option<String> {
    let Some(name) = p.cfg.sysfs.block_name_by_devno(devno) else {
        return Some(format!(
            "block device {}:{} is gone: the NVMe namespace was removed from the target or its controller was deleted",
            devno.0, devno.1
        ));
    };
    let Some(nqn) = p.cfg.sysfs.nqn_of_block(&name) else {
        return Some(format!(
            "{name} is not an NVMe-oF namespace (no subsystem NQN in sysfs)"
        ));
    };
    let ctrls = match p.cfg.sysfs.controllers_of(&nqn) {
        Ok(c) => c,
        Err(e) => return Some(format!("reading sysfs: {e}")),
    };
    if ctrls.is_empty() {
        return Some(format!("{name}: no controller of {nqn} is connected"));
    }
    if !ctrls.iter().any(|c| c.state == "live") {
        let states: Vec<String> = ctrls
            .iter()
            .map(|c| format!("{} {} ({})", c.name, c.state, c.address.traddr))
            .collect();
        return Some(format!(
            "{name}: no live path to {nqn}: {}",
            states.join(", ")
        ));
    }
    if p.cfg.sysfs.nsid_of_block(&name).is_none() {
        return Some(format!("{name}: the namespace is not attached"));
    }
    None
}

/// NodeGetVolumeStats.
pub fn volume_stats(p: &Plugin, volume_id: &str, path: &Path) -> Result<Stats> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NodeError::NotFound(format!(
                "volume path {} of volume {volume_id} does not exist",
                path.display()
            )));
        }
        Err(e) => return Err(NodeError::Internal(format!("stat {}: {e}", path.display()))),
    };
    if meta.file_type().is_block_device() {
        let devno = device::split(meta.rdev());
        let total = p
            .cfg
            .sysfs
            .block_name_by_devno(devno)
            .and_then(|n| p.cfg.sysfs.block_size_bytes(&n).ok())
            .unwrap_or(0) as i64;
        let problem = device_problem(p, devno);
        return Ok(Stats {
            bytes: Usage {
                total,
                available: 0,
                used: 0,
            },
            inodes: None,
            abnormal: problem.is_some(),
            message: problem.unwrap_or_else(|| "block device healthy".into()),
        });
    }
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    let Some(m) = mount::mounts_at(&table, path).last().map(|m| (*m).clone()) else {
        return Err(NodeError::NotFound(format!(
            "volume path {} of volume {volume_id} is not mounted",
            path.display()
        )));
    };
    let (bytes, inodes) = statvfs(path)
        .map_err(|e| NodeError::Internal(format!("statvfs {}: {e}", path.display())))?;
    let problem = device_problem(p, m.devno);
    Ok(Stats {
        bytes,
        inodes: Some(inodes),
        abnormal: problem.is_some(),
        message: problem
            .unwrap_or_else(|| format!("{} filesystem on {} healthy", m.fs_type, m.source)),
    })
}
