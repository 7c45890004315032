//! The mount table (`/proc/self/mountinfo`) and mount(2)/umount2(2).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{NodeError, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// major:minor of the mounted device (st_dev of files in it).
    pub devno: (u32, u32),
    /// The path inside the source filesystem that is mounted (`/` or a bind's subtree).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,noatime`).
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountEntry {
    /// Whether the mount itself is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Undoes the octal escapes of mountinfo (`\040` for space, `\011`, `\012`, `\134`).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    let (maj, min) = fields[2].split_once(':')?;
    Some(MountEntry {
        id: fields[0].parse().ok()?,
        parent: fields[1].parse().ok()?,
        devno: (maj.parse().ok()?, min.parse().ok()?),
        root: unescape(fields[3]),
        mount_point: PathBuf::from(unescape(fields[4])),
        options: fields[5].to_string(),
        fs_type: fields[sep + 1].to_string(),
        source: unescape(fields[sep + 2]),
        super_options: fields
            .get(sep + 3)
            .map(|s| s.to_string())
            .unwrap_or_default(),
    })
}

/// Reads and parses a mountinfo file.
pub fn read_mountinfo(path: &Path) -> Result<Vec<MountEntry>> {
    std::fs::read_to_string(path)
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| NodeError::Internal(format!("reading {}: {e}", path.display())))
}

/// The mounts whose mount point is `path` (compared literally and canonicalised), the
/// topmost (last) one last.
pub fn mounts_at<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    let canon = std::fs::canonicalize(path).ok();
    table
        .iter()
        .filter(|m| m.mount_point == path || canon.as_deref() == Some(m.mount_point.as_path()))
        .collect()
}

/// mount(2) flags and the filesystem-specific data string, from CSI mount flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    pub data: Vec<String>,
}

impl MountOptions {
    /// Splits options such as `ro`, `noatime`, `nodev`, `discard`, `data=ordered` into
    /// mount(2) flags and the data string. Each entry may itself be comma-separated.
    pub fn parse<S: AsRef<str>>(opts: &[S]) -> MountOptions {
        let mut m = MountOptions::default();
        for o in opts
            .iter()
            .flat_map(|s| s.as_ref().split(',').map(str::trim).collect::<Vec<_>>())
        {
            let (set, clear): (libc::c_ulong, libc::c_ulong) = match o {
                "" | "defaults" | "async" | "auto" | "noauto" | "nouser" | "_netdev" => continue,
                "rw" => (0, libc::MS_RDONLY),
                "ro" => (libc::MS_RDONLY, 0),
                "nosuid" => (libc::MS_NOSUID, 0),
                "suid" => (0, libc::MS_NOSUID),
                "nodev" => (libc::MS_NODEV, 0),
                "dev" => (0, libc::MS_NODEV),
                "noexec" => (libc::MS_NOEXEC, 0),
                "exec" => (0, libc::MS_NOEXEC),
                "sync" => (libc::MS_SYNCHRONOUS, 0),
                "dirsync" => (libc::MS_DIRSYNC, 0),
                "noatime" => (libc::MS_NOATIME, 0),
                "atime" => (0, libc::MS_NOATIME),
                "nodiratime" => (libc::MS_NODIRATIME, 0),
                "diratime" => (0, libc::MS_NODIRATIME),
                "relatime" => (libc::MS_RELATIME, 0),
                "norelatime" => (0, libc::MS_RELATIME),
                "strictatime" => (libc::MS_STRICTATIME, 0),
                "lazytime" => (libc::MS_LAZYTIME, 0),
                other => {
                    m.data.push(other.to_string());
                    continue;
                }
            };
            m.flags = (m.flags | set) & !clear;
        }
        m
    }

    pub fn data_string(&self) -> String {
        self.data.join(",")
    }
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        NodeError::InvalidArgument(format!("path {} contains a NUL byte", p.display()))
    })
}

fn cstr_s(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| NodeError::InvalidArgument(format!("{s:?} contains a NUL byte")))
}

/// mount(2): returns the OS error unchanged so the caller can explain it.
pub fn sys_mount(
    source: &Path,
    target: &Path,
    fs_type: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<io::Result<()>> {
    let src = cstr(source)?;
    let tgt = cstr(target)?;
    let fst = fs_type.map(cstr_s).transpose()?;
    let dat = cstr_s(data)?;
    // SAFETY: every pointer is a valid NUL-terminated string (or NULL for the filesystem
    // type) that outlives the call; mount(2) does not keep them.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                dat.as_ptr() as *const libc::c_void
            },
        )
    };
    Ok(if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    })
}

/// Mounts filesystem `fs_type` on `device` at `target` with `opts`.
pub fn mount_fs(device: &Path, target: &Path, fs_type: &str, opts: &MountOptions) -> Result<()> {
    tracing::info!(device = %device.display(), target = %target.display(), fs_type, flags = opts.flags, data = %opts.data_string(), "mount");
    sys_mount(
        device,
        target,
        Some(fs_type),
        opts.flags,
        &opts.data_string(),
    )?
    .map_err(|e| {
        NodeError::Internal(format!(
            "mounting {} ({fs_type}) at {} with options {:?} failed: {e}",
            device.display(),
            target.display(),
            opts.data
        ))
    })
}

/// Bind-mounts `source` at `target`, then makes the bind read-only if asked (a bind mount
/// ignores MS_RDONLY on the first call: it needs a remount).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> Result<()> {
    tracing::info!(source = %source.display(), target = %target.display(), read_only, "bind mount");
    sys_mount(source, target, None, libc::MS_BIND, "")?.map_err(|e| {
        NodeError::Internal(format!(
            "bind-mounting {} at {} failed: {e}",
            source.display(),
            target.display()
        ))
    })?;
    if read_only {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        if let Err(e) = sys_mount(Path::new("none"), target, None, flags, "")? {
            let _ = unmount(target);
            return Err(NodeError::Internal(format!(
                "making the bind mount at {} read-only failed: {e}",
                target.display()
            )));
        }
    }
    Ok(())
}

/// Unmounts `target` once. `Ok(false)` if nothing was mounted there (or it does not exist).
pub fn unmount(target: &Path) -> Result<bool> {
    let t = cstr(target)?;
    // SAFETY: `t` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(t.as_ptr(), 0) };
    if rc == 0 {
        tracing::info!(target = %target.display(), "unmounted");
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        Some(libc::EBUSY) => Err(NodeError::FailedPrecondition(format!(
            "{} is busy: a process still uses it (or a bind mount of it is still published); \
             stop the pod using the volume first",
            target.display()
        ))),
        _ => Err(NodeError::Internal(format!(
            "unmounting {} failed: {e}",
            target.display()
        ))),
    }
}

/// Unmounts everything stacked at `target` according to `mountinfo`.
pub fn unmount_all(mountinfo: &Path, target: &Path) -> Result<usize> {
    let mut n = 0;
    while !mounts_at(&read_mountinfo(mountinfo)?, target).is_empty() {
        if !unmount(target)? {
            break;
        }
        n += 1;
        if n > 16 {
            return Err(NodeError::Internal(format!(
                "{} still mounted after 16 unmounts",
                target.display()
            )));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 1 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=494452k,nr_inodes=123613,mode=755
40 25 259:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/ferrite.dev/abc/globalmount rw,noatime shared:30 - ext4 /dev/nvme0n1 rw
41 25 259:0 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount ro,noatime shared:30 - ext4 /dev/nvme0n1 rw
42 25 0:5 /nvme1n1 /var/lib/kubelet/pods/p2/volumeDevices/pvc\\0402 rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=494452k
43 25 8:1 / /mnt/with\\040space rw,relatime master:1 propagate_from:2 - xfs /dev/sda1 rw,attr2
bad line
";

    #[test]
    fn parses_mountinfo() {
        let t = parse_mountinfo(SAMPLE);
        assert_eq!(t.len(), 6);
        let g = &t[2];
        assert_eq!(g.id, 40);
        assert_eq!(g.parent, 25);
        assert_eq!(g.devno, (259, 0));
        assert_eq!(g.fs_type, "ext4");
        assert_eq!(g.source, "/dev/nvme0n1");
        assert!(!g.read_only());
        assert!(t[3].read_only());
        assert_eq!(t[4].root, "/nvme1n1");
        assert_eq!(
            t[4].mount_point,
            PathBuf::from("/var/lib/kubelet/pods/p2/volumeDevices/pvc 2")
        );
        // Optional fields (master:1 propagate_from:2) before the separator.
        assert_eq!(t[5].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(t[5].fs_type, "xfs");
        assert_eq!(t[5].super_options, "rw,attr2");
        let at = mounts_at(
            &t,
            Path::new("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount"),
        );
        assert_eq!(at.len(), 1);
        assert_eq!(at[0].id, 41);
        assert!(mounts_at(&t, Path::new("/nowhere")).is_empty());
    }

    #[test]
    fn unescapes() {
        assert_eq!(unescape("a\\040b\\011c\\012d\\134e"), "a b\tc\nd\\e");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn mount_options() {
        let m = MountOptions::parse(&["noatime", "discard,nodev", "data=ordered", "ro"]);
        assert_eq!(m.flags, libc::MS_NOATIME | libc::MS_NODEV | libc::MS_RDONLY);
        assert_eq!(
            m.data,
            vec!["discard".to_string(), "data=ordered".to_string()]
        );
        assert_eq!(m.data_string(), "discard,data=ordered");
        let m = MountOptions::parse(&["ro", "rw", "defaults"]);
        assert_eq!(m.flags, 0);
        assert!(m.data.is_empty());
        let m = MountOptions::parse::<&str>(&[]);
        assert_eq!(m, MountOptions::default());
        let m = MountOptions::parse(&["nouuid", "exec", "noexec"]);
        assert_eq!(m.flags, libc::MS_NOEXEC);
        assert_eq!(m.data, vec!["nouuid".to_string()]);
    }
}
