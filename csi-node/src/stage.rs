//! NodeStageVolume and NodeUnstageVolume: connect the kernel initiator, find the namespace,
//! format if blank and mount at the staging path (or stage the raw device); and undo it,
//! disconnecting only this volume's controllers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Plugin;
use crate::device;
use crate::error::{NodeError, Result};
use crate::fabrics;
use crate::format::{self, FsType};
use crate::mount::{self, MountOptions};
use crate::state::StagedVolume;
use crate::sysfs::NamespaceDevice;
use crate::volume::{Access, VolumeTarget};

/// Name of the file in the staging folder that a raw block volume's device is bound to.
pub const BLOCK_FILE: &str = "ferrite-block-device";

/// A validated NodeStageVolume request.
#[derive(Clone, Debug)]
pub struct StageArgs {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub target: VolumeTarget,
    pub access: Access,
    pub read_only: bool,
}

fn sysfs_err(e: io::Error) -> NodeError {
    NodeError::Internal(format!("reading sysfs: {e}"))
}

/// Connects every portal of `t` (reusing live controllers) and waits for the namespace's
/// block device. Returns it and the controllers this call created.
pub fn connect_and_find(p: &Plugin, t: &VolumeTarget) -> Result<(NamespaceDevice, Vec<String>)> {
    let mut created = Vec::new();
    let mut connected = 0;
    let mut errors: Vec<NodeError> = Vec::new();
    let multipath = t.portals.len() > 1;
    {
        let _g = p.fabrics_guard();
        for o in t.connect_options() {
            match fabrics::connect(&p.cfg.sysfs, &p.cfg.fabrics_dev, &o, &p.cfg.host) {
                Ok((name, new)) => {
                    connected += 1;
                    if new {
                        created.push(name);
                    }
                }
                Err(e) => {
                    if multipath {
                        tracing::warn!(nqn = %t.nqn, portal = %o.portal, error = %e, "path failed to connect");
                    }
                    errors.push(e);
                }
            }
        }
    }
    if connected == 0 {
        let mut it = errors.into_iter();
        let first = it
            .next()
            .unwrap_or_else(|| NodeError::InvalidArgument("no portal to connect to".into()));
        let rest: Vec<String> = it.map(|e| e.to_string()).collect();
        return Err(if rest.is_empty() {
            first
        } else {
            first.context(format!("all paths failed; others: {}", rest.join("; ")))
        });
    }
    if !errors.is_empty() {
        tracing::warn!(nqn = %t.nqn, connected, failed = errors.len(), "volume staged with fewer paths than asked");
    }
    match wait_for_namespace(p, t) {
        Ok(ns) => Ok((ns, created)),
        Err(e) => {
            disconnect_created(p, &created);
            Err(e)
        }
    }
}

fn disconnect_created(p: &Plugin, created: &[String]) {
    let _g = p.fabrics_guard();
    for c in created {
        if let Err(e) = fabrics::disconnect(&p.cfg.sysfs, c, p.cfg.disconnect_timeout) {
            tracing::warn!(ctrl = %c, error = %e, "disconnecting after a failed stage failed");
        }
    }
}

/// Waits for the usable block device of `t`'s namespace (sysfs entry and device node).
pub fn wait_for_namespace(p: &Plugin, t: &VolumeTarget) -> Result<NamespaceDevice> {
    let deadline = Instant::now() + p.cfg.device_timeout;
    loop {
        if let Some(ns) = p
            .cfg
            .sysfs
            .find_namespace(&t.nqn, t.nsid)
            .map_err(sysfs_err)?
        {
            let node = p.cfg.dev_dir.join(&ns.name);
            match device::block_devno(&node) {
                Ok(Some(d)) if d == ns.devno => return Ok(ns),
                Ok(_) => {}
                Err(e) => {
                    return Err(NodeError::Internal(format!(
                        "checking {}: {e}",
                        node.display()
                    )));
                }
            }
        }
        if Instant::now() > deadline {
            let ctrls = p.cfg.sysfs.controllers_of(&t.nqn).map_err(sysfs_err)?;
            let ids = p.cfg.sysfs.namespace_ids(&t.nqn).map_err(sysfs_err)?;
            let states: Vec<String> = ctrls
                .iter()
                .map(|c| format!("{} {}", c.name, c.state))
                .collect();
            return Err(if !ids.is_empty() && !ids.contains(&t.nsid) {
                NodeError::NotFound(format!(
                    "subsystem {} has no namespace {} (it has {:?}); is the volume's nsid right?",
                    t.nqn, t.nsid, ids
                ))
            } else {
                NodeError::DeadlineExceeded(format!(
                    "namespace {} of {} did not appear as a block device within {} s (controllers: {})",
                    t.nsid,
                    t.nqn,
                    p.cfg.device_timeout.as_secs(),
                    if states.is_empty() {
                        "none".to_string()
                    } else {
                        states.join(", ")
                    }
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether any mount in the table uses the device `devno` (a filesystem on it, or a bind
/// of its device node), other than at `except`.
fn device_in_use(p: &Plugin, ns: &NamespaceDevice, except: &[&Path]) -> Result<Vec<PathBuf>> {
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    let node_root = format!("/{}", ns.name);
    Ok(table
        .iter()
        .filter(|m| m.devno == ns.devno || (m.fs_type == "devtmpfs" && m.root == node_root))
        .filter(|m| !except.iter().any(|e| *e == m.mount_point))
        .map(|m| m.mount_point.clone())
        .collect())
}

/// NodeStageVolume.
pub fn stage(p: &Plugin, a: &StageArgs) -> Result<()> {
    let prev = p.state.load(&a.volume_id)?;
    if let Some(prev) = &prev {
        if prev.nqn != a.target.nqn || prev.nsid != a.target.nsid {
            return Err(NodeError::AlreadyExists(format!(
                "volume {} is already staged from {} namespace {}, not {} namespace {}",
                a.volume_id, prev.nqn, prev.nsid, a.target.nqn, a.target.nsid
            )));
        }
        if prev.staging_path != a.staging_path {
            return Err(NodeError::AlreadyExists(format!(
                "volume {} is already staged at {}; unstage it there first",
                a.volume_id,
                prev.staging_path.display()
            )));
        }
        if prev.block != a.access.is_block() {
            return Err(NodeError::AlreadyExists(format!(
                "volume {} is already staged as a {} volume",
                a.volume_id,
                if prev.block { "block" } else { "filesystem" }
            )));
        }
    }
    let record = StagedVolume {
        volume_id: a.volume_id.clone(),
        nqn: a.target.nqn.clone(),
        nsid: a.target.nsid,
        portals: a.target.portals.iter().map(|p| p.to_string()).collect(),
        block: a.access.is_block(),
        staging_path: a.staging_path.clone(),
        fs_type: match &a.access {
            Access::Mount { fs, .. } => Some(fs.name().to_string()),
            Access::Block => None,
        },
    };
    // Written first: a crash from here on leaves a record that NodeUnstageVolume cleans up.
    p.state.save(&record)?;
    let (ns, created) = match connect_and_find(p, &a.target) {
        Ok(x) => x,
        Err(e) => {
            if prev.is_none() {
                let _ = p.state.remove(&a.volume_id);
            }
            return Err(e);
        }
    };
    let node = p.cfg.dev_dir.join(&ns.name);
    tracing::info!(volume = %a.volume_id, device = %node.display(), head = ns.head, "namespace found");
    let result = match &a.access {
        Access::Block => stage_block(p, a, &ns, &node),
        Access::Mount { fs, flags } => stage_mount(p, a, &ns, &node, *fs, flags),
    };
    if result.is_err() && prev.is_none() {
        // Leave nothing behind a failed first stage, unless the device is in use.
        match device_in_use(p, &ns, &[]) {
            Ok(used) if used.is_empty() => {
                disconnect_created(p, &created);
                let _ = p.state.remove(&a.volume_id);
            }
            _ => {}
        }
    }
    result
}

fn stage_mount(
    p: &Plugin,
    a: &StageArgs,
    ns: &NamespaceDevice,
    node: &Path,
    fs: FsType,
    flags: &[String],
) -> Result<()> {
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    if let Some(m) = mount::mounts_at(&table, &a.staging_path).last() {
        if m.devno == ns.devno {
            tracing::info!(volume = %a.volume_id, staging = %a.staging_path.display(), "already staged");
            return Ok(());
        }
        return Err(NodeError::AlreadyExists(format!(
            "staging path {} already has {} ({}) mounted, not {}",
            a.staging_path.display(),
            m.source,
            m.fs_type,
            node.display()
        )));
    }
    fs::create_dir_all(&a.staging_path).map_err(|e| {
        NodeError::Internal(format!(
            "creating staging path {}: {e}",
            a.staging_path.display()
        ))
    })?;
    if !format::ensure_filesystem(&p.cfg.tools, fs, node)? {
        tracing::info!(volume = %a.volume_id, fs = fs.name(), "existing filesystem kept");
    }
    let mut opts = MountOptions::parse(flags);
    if a.read_only {
        opts.flags |= libc::MS_RDONLY;
    }
    mount::mount_fs(node, &a.staging_path, fs.name(), &opts)
}

fn stage_block(p: &Plugin, a: &StageArgs, ns: &NamespaceDevice, node: &Path) -> Result<()> {
    let file = a.staging_path.join(BLOCK_FILE);
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    if !mount::mounts_at(&table, &file).is_empty() {
        let d = device::block_devno(&file)
            .map_err(|e| NodeError::Internal(format!("checking {}: {e}", file.display())))?;
        if d == Some(ns.devno) {
            tracing::info!(volume = %a.volume_id, staging = %file.display(), "already staged");
            return Ok(());
        }
        return Err(NodeError::AlreadyExists(format!(
            "{} is already bound to another device",
            file.display()
        )));
    }
    fs::create_dir_all(&a.staging_path).map_err(|e| {
        NodeError::Internal(format!(
            "creating staging path {}: {e}",
            a.staging_path.display()
        ))
    })?;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&file)
        .map_err(|e| NodeError::Internal(format!("creating {}: {e}", file.display())))?;
    mount::bind(node, &file, false)
}

/// NodeUnstageVolume.
pub fn unstage(p: &Plugin, volume_id: &str, staging_path: &Path) -> Result<()> {
    let rec = p.state.load(volume_id)?;
    if let Some(r) = &rec
        && r.staging_path != staging_path
    {
        tracing::warn!(volume = volume_id, recorded = %r.staging_path.display(), asked = %staging_path.display(),
                "unstaging at another path than the recorded one");
    }
    let table = mount::read_mountinfo(&p.cfg.mountinfo)?;
    let mut nqn = rec.as_ref().map(|r| r.nqn.clone());
    let mut devnos = Vec::new();

    // Filesystem volume: the staging path itself is mounted.
    let fs_mounts: Vec<_> = mount::mounts_at(&table, staging_path)
        .into_iter()
        .cloned()
        .collect();
    for m in &fs_mounts {
        devnos.push(m.devno);
    }
    // Raw block volume: the device is bound to a file in the staging folder.
    let block_file = staging_path.join(BLOCK_FILE);
    let block_mounted = !mount::mounts_at(&table, &block_file).is_empty();
    if block_mounted && let Ok(Some(d)) = device::block_devno(&block_file) {
        devnos.push(d);
    }
    // Refuse while the volume is still published somewhere else.
    for d in &devnos {
        if let Some(name) = p.cfg.sysfs.block_name_by_devno(*d) {
            if nqn.is_none() {
                nqn = p.cfg.sysfs.nqn_of_block(&name);
            }
            let ns = NamespaceDevice {
                name,
                devno: *d,
                head: false,
            };
            let users = device_in_use(p, &ns, &[staging_path, &block_file])?;
            if !users.is_empty() {
                return Err(NodeError::FailedPrecondition(format!(
                    "volume {volume_id} is still in use at {}; unpublish it (NodeUnpublishVolume) before unstaging",
                    users
                        .iter()
                        .map(|u| u.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    if !fs_mounts.is_empty() {
        mount::unmount_all(&p.cfg.mountinfo, staging_path)?;
    }
    if block_mounted {
        mount::unmount_all(&p.cfg.mountinfo, &block_file)?;
    }
    match fs::remove_file(&block_file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %block_file.display(), error = %e, "removing the block staging file failed")
        }
    }
    if let Some(nqn) = nqn {
        disconnect_volume(p, volume_id, &nqn, rec.as_ref())?;
    } else {
        tracing::info!(volume = volume_id, "nothing staged");
    }
    p.state.remove(volume_id)
}

/// Disconnects this host's controllers of `nqn` unless another staged volume uses it.
fn disconnect_volume(
    p: &Plugin,
    volume_id: &str,
    nqn: &str,
    rec: Option<&StagedVolume>,
) -> Result<()> {
    let _g = p.fabrics_guard();
    let sharing: Vec<String> = p
        .state
        .all()?
        .into_iter()
        .filter(|v| v.volume_id != volume_id && v.nqn == nqn)
        .map(|v| v.volume_id)
        .collect();
    if !sharing.is_empty() {
        tracing::info!(
            volume = volume_id,
            nqn,
            ?sharing,
            "controllers kept: other staged volumes use the subsystem"
        );
        return Ok(());
    }
    let ctrls = p.cfg.sysfs.controllers_of(nqn).map_err(sysfs_err)?;
    // Flush a raw block volume's buffered writes first, but only with a live path: a flush
    // to a namespace without one would wait for the target up to ctrl_loss_tmo.
    if let Some(r) = rec
        && r.block
        && ctrls.iter().any(|c| c.state == "live")
        && let Ok(Some(ns)) = p.cfg.sysfs.find_namespace(nqn, r.nsid)
    {
        device::flush(&p.cfg.dev_dir.join(&ns.name));
    }
    for c in ctrls {
        if c.hostnqn.as_deref().is_some_and(|h| h != p.cfg.host.nqn) {
            continue;
        }
        fabrics::disconnect(&p.cfg.sysfs, &c.name, p.cfg.disconnect_timeout)
            .map_err(|e| e.context(format!("volume {volume_id}")))?;
    }
    Ok(())
}
