//! NodePublishVolume and NodeUnpublishVolume: bind the staged filesystem (or the staged
//! block device) to the pod's target path, read-only when asked; and remove it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Plugin;
use crate::device;
use crate::error::{NodeError, Result};
use crate::mount;
use crate::stage::BLOCK_FILE;
use crate::volume::Access;

/// A validated NodePublishVolume request.
#[derive(Clone, Debug)]
pub struct PublishArgs {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub target_path: PathBuf,
    pub access: Access,
    pub read_only: bool,
}

fn not_staged(a: &PublishArgs) -> NodeError {
    NodeError::FailedPrecondition(format!(
        "volume {} is not staged at {}; NodeStageVolume must succeed first",
        a.volume_id,
        a.staging_path.display()
    ))
}

/// NodePublishVolume.
pub fn publish(p: &Plugin, a: &PublishArgs) -> Result<()> {
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    let existing = mount::mounts_at(&table, &a.target_path)
        .last()
        .map(|m| (*m).clone());
    match &a.access {
        Access::Mount { .. } => {
            let staged = mount::mounts_at(&table, &a.staging_path)
                .last()
                .map(|m| (*m).clone())
                .ok_or_else(|| not_staged(a))?;
            if let Some(m) = existing {
                if m.devno == staged.devno && m.read_only() == (a.read_only || staged.read_only()) {
                    tracing::info!(volume = %a.volume_id, target = %a.target_path.display(), "already published");
                    return Ok(());
                }
                return Err(NodeError::AlreadyExists(format!(
                    "target path {} is already mounted ({} {}, {}); unpublish it first",
                    a.target_path.display(),
                    m.source,
                    m.fs_type,
                    if m.read_only() {
                        "read-only"
                    } else {
                        "read-write"
                    }
                )));
            }
            fs::create_dir_all(&a.target_path).map_err(|e| {
                NodeError::Internal(format!(
                    "creating target path {}: {e}",
                    a.target_path.display()
                ))
            })?;
            mount::bind(&a.staging_path, &a.target_path, a.read_only)
        }
        Access::Block => {
            let file = a.staging_path.join(BLOCK_FILE);
            if mount::mounts_at(&table, &file).is_empty() {
                return Err(not_staged(a));
            }
            let dev = device::block_devno(&file)
                .map_err(|e| NodeError::Internal(format!("checking {}: {e}", file.display())))?
                .ok_or_else(|| not_staged(a))?;
            if let Some(m) = existing {
                let cur = device::block_devno(&a.target_path).ok().flatten();
                if cur == Some(dev) && m.read_only() == a.read_only {
                    tracing::info!(volume = %a.volume_id, target = %a.target_path.display(), "already published");
                    return Ok(());
                }
                return Err(NodeError::AlreadyExists(format!(
                    "target path {} is already bound to another device or with other options; unpublish it first",
                    a.target_path.display()
                )));
            }
            if let Some(parent) = a.target_path.parent() {
                fs::create_dir_all(parent).map_err(|e| {
                    NodeError::Internal(format!("creating {}: {e}", parent.display()))
                })?;
            }
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&a.target_path)
                .map_err(|e| {
                    NodeError::Internal(format!(
                        "creating target file {}: {e}",
                        a.target_path.display()
                    ))
                })?;
            mount::bind(&file, &a.target_path, a.read_only)
        }
    }
}

/// NodeUnpublishVolume: unmount and remove the target path. Succeeds if it is already gone.
pub fn unpublish(p: &Plugin, volume_id: &str, target: &Path) -> Result<()> {
    let n = mount::unmount_all(&p.cfg.mountinfo, target)?;
    let removed = match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => fs::remove_dir(target),
        Ok(_) => fs::remove_file(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        // A non-empty folder that was not a mount point is not ours to delete.
        tracing::warn!(volume = volume_id, target = %target.display(), error = %e, "target path left in place");
    }
    tracing::info!(volume = volume_id, target = %target.display(), unmounted = n, "unpublished");
    Ok(())
}
