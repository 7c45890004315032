//! Filesystems: probing a device (blkid), creating one only on a blank device, and growing a
//! mounted one (resize2fs / xfs_growfs).
//!
//! A device is blank only if blkid found nothing on it *and* it can be read: `blkid -p` exits
//! 2 both when there is no signature and when it could not read the device (an I/O error on
//! a failing path, a namespace of size 0), so its "nothing found" is checked by reading the
//! device's first and last MiB, where signatures live, and then asking blkid again over what
//! was just read. A device that cannot be read is never formatted.

use std::io;
use std::os::unix::fs::FileExt;
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
            other => Err(NodeError::InvalidArgument(format!(
                "filesystem type {other:?} is not supported (use ext4 or xfs)"
            ))),
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
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
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

/// Probes `dev` with `blkid -p` (low-level probing: no cache). [`Probe::Blank`] only for a
/// device that was read: one that cannot be is a FailedPrecondition error.
pub fn probe(tools: &Tools, dev: &Path) -> Result<Probe> {
    probe_with(tools, dev, check_readable)
}

/// [`probe`], with `readable` checking that the device can be read.
fn probe_with(
    tools: &Tools,
    dev: &Path,
    readable: impl Fn(&Path) -> io::Result<()>,
) -> Result<Probe> {
    if let Some(found) = blkid(tools, dev)? {
        return Ok(found);
    }
    readable(dev).map_err(|e| {
        NodeError::FailedPrecondition(format!(
            "{}: blkid found no signature, but the device cannot be read ({e}); it may hold data, so it is \
             not formatted (check the device and its NVMe path, then retry)",
            dev.display()
        ))
    })?;
    // Over data now known to be readable (and just read), blkid's "nothing" is believed.
    Ok(blkid(tools, dev)?.unwrap_or(Probe::Blank))
}

/// Runs `blkid -p`: what it found, or None when it found nothing (exit 2, which it also
/// returns when it could not read the device).
fn blkid(tools: &Tools, dev: &Path) -> Result<Option<Probe>> {
    let d = dev.to_string_lossy();
    let out = exec::run(&tools.blkid, &["-p", "-o", "export", &d], tools.timeout)?;
    match out.code {
        Some(0) => Ok(Some(parse_blkid_export(&out.stdout))),
        // 2 and a complaint: it could not open or read the device.
        Some(2) if !out.stderr.trim().is_empty() => Err(NodeError::FailedPrecondition(format!(
            "blkid -p {d} could not probe the device: {}; it may hold data, so it is not formatted",
            out.stderr.trim()
        ))),
        Some(2) => Ok(None),
        c => Err(NodeError::Internal(format!(
            "blkid -p {d} failed (exit {c:?}): {}; is util-linux blkid installed?",
            out.stderr.trim()
        ))),
    }
}

/// How much of each end of a device is read before it is called blank: where the
/// signatures are (filesystem superblocks and partition tables at the start, GPT backups and
/// some RAID labels at the end).
const ENDS: u64 = 1 << 20;

/// Reads the first and last [`ENDS`] bytes of `dev`; an error if it cannot, or is empty.
pub fn check_readable(dev: &Path) -> io::Result<()> {
    let mut f = std::fs::File::open(dev)?;
    let size = io::Seek::seek(&mut f, io::SeekFrom::End(0))?;
    if size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it reports a size of 0",
        ));
    }
    let len = size.min(ENDS);
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)?;
    f.read_exact_at(&mut buf, size - len)
}

/// Makes sure `dev` holds a filesystem of type `fs`: creates one on a blank (and readable)
/// device, keeps one of that type, and refuses anything else (another filesystem, a
/// partition table, a device that cannot be read). Returns whether it formatted.
pub fn ensure_filesystem(tools: &Tools, fs: FsType, dev: &Path) -> Result<bool> {
    ensure_with(tools, fs, dev, check_readable)
}

fn ensure_with(
    tools: &Tools,
    fs: FsType,
    dev: &Path,
    readable: impl Fn(&Path) -> io::Result<()>,
) -> Result<bool> {
    match probe_with(tools, dev, readable)? {
        Probe::Blank => {
            mkfs(tools, fs, dev)?;
            Ok(true)
        }
        Probe::Filesystem(t) if t == fs.name() => Ok(false),
        Probe::Filesystem(t) => Err(NodeError::FailedPrecondition(format!(
            "{} already holds a {t} filesystem but the volume asks for {}; refusing to reformat it \
             (use fsType {t} or a new volume)",
            dev.display(),
            fs.name()
        ))),
        Probe::Other(what) => Err(NodeError::FailedPrecondition(format!(
            "{} holds {what}, not a filesystem; refusing to format over it",
            dev.display()
        ))),
    }
}

/// Creates a filesystem on `dev`, which the caller found blank (see [`ensure_filesystem`]).
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
        FsType::Xfs => exec::run_ok(
            &tools.xfs_growfs,
            &[&mount_point.to_string_lossy()],
            tools.timeout,
        )?,
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
        assert_eq!(
            parse_blkid_export("TYPE=xfs\n"),
            Probe::Filesystem("xfs".into())
        );
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/sda\nPTUUID=x\nPTTYPE=gpt\n"),
            Probe::Other("partition table gpt".into())
        );
        assert_eq!(
            parse_blkid_export("TYPE=LVM2_member\nUSAGE=raid\n"),
            Probe::Other("LVM2_member (raid)".into())
        );
    }

    #[test]
    fn fs_types() {
        assert_eq!(FsType::parse("").unwrap(), FsType::Ext4);
        assert_eq!(FsType::parse("xfs").unwrap(), FsType::Xfs);
        assert!(matches!(
            FsType::parse("btrfs"),
            Err(NodeError::InvalidArgument(_))
        ));
    }

    /// Writes an executable shell script.
    fn script(path: &Path, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Fake blkid and mkfs in `dir`, deciding by the device's name: `blank*` has nothing,
    /// `ext4*` an ext4 filesystem, `noisy*` cannot be opened, `flaky*` shows its filesystem
    /// from the second probe on. The mkfs tools record their runs in `dir/mkfs.log`.
    fn fake_tools(dir: &Path) -> Tools {
        let blkid = dir.join("blkid");
        script(
            &blkid,
            "case \"$(basename \"$4\")\" in\n\
             blank*) exit 2;;\n\
             ext4*) echo DEVNAME=$4; echo TYPE=ext4; echo USAGE=filesystem; exit 0;;\n\
             noisy*) echo \"blkid: error: $4: Input/output error\" >&2; exit 2;;\n\
             flaky*) if [ -e \"$4.seen\" ]; then echo TYPE=ext4; exit 0; fi; : > \"$4.seen\"; exit 2;;\n\
             *) echo oops >&2; exit 4;;\n\
             esac\n",
        );
        let mkfs = |name: &str| {
            let p = dir.join(name);
            script(
                &p,
                &format!(
                    "echo \"{name} $*\" >> '{}'\n",
                    dir.join("mkfs.log").display()
                ),
            );
            p
        };
        Tools {
            blkid,
            mkfs_ext4: mkfs("mkfs.ext4"),
            mkfs_xfs: mkfs("mkfs.xfs"),
            ..Tools::default()
        }
    }

    fn mkfs_runs(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("mkfs.log")).unwrap_or_default()
    }

    /// A readable stand-in for a device: `size` bytes of zeros.
    fn device(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    fn eio(_: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    #[test]
    fn probe_exit_codes() {
        let t = tempfile::tempdir().unwrap();
        let tools = fake_tools(t.path());
        let blank = device(t.path(), "blank.img", 4 << 20);
        assert_eq!(probe(&tools, &blank).unwrap(), Probe::Blank);
        assert_eq!(
            probe(&tools, Path::new("ext4")).unwrap(),
            Probe::Filesystem("ext4".into())
        );
        assert!(
            matches!(probe(&tools, Path::new("x")), Err(NodeError::Internal(m)) if m.contains("oops"))
        );
        // Exit 2 with an error message: blkid could not read it.
        assert!(
            matches!(probe(&tools, Path::new("noisy")), Err(NodeError::FailedPrecondition(m)) if m.contains("Input/output error"))
        );
        // Exit 2 but the device cannot be read: not blank.
        let e = probe_with(&tools, &blank, eio).unwrap_err();
        assert!(
            matches!(&e, NodeError::FailedPrecondition(m) if m.contains("cannot be read") && m.contains("Input/output error")),
            "{e:?}"
        );
        std::fs::create_dir(t.path().join("blank-dir")).unwrap();
        for missing in [t.path().join("blank-gone"), t.path().join("blank-dir")] {
            assert!(
                matches!(
                    probe(&tools, &missing),
                    Err(NodeError::FailedPrecondition(_))
                ),
                "{missing:?}"
            );
        }
    }

    #[test]
    fn readable_devices() {
        let t = tempfile::tempdir().unwrap();
        check_readable(&device(t.path(), "small", 4096)).unwrap();
        check_readable(&device(t.path(), "big", 3 * ENDS + 512)).unwrap();
        let e = check_readable(&device(t.path(), "empty", 0)).unwrap_err();
        assert!(e.to_string().contains("size of 0"), "{e}");
        assert!(check_readable(&t.path().join("missing")).is_err());
        assert!(
            check_readable(t.path()).is_err(),
            "a folder is not a readable device"
        );
    }

    #[test]
    fn formats_only_a_blank_readable_device() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let tools = fake_tools(dir);

        // Blank and readable: formatted.
        let blank = device(dir, "blank0.img", 8 << 20);
        assert!(ensure_filesystem(&tools, FsType::Ext4, &blank).unwrap());
        assert_eq!(
            mkfs_runs(dir),
            format!("mkfs.ext4 -F -m0 {}\n", blank.display())
        );
        std::fs::remove_file(dir.join("mkfs.log")).unwrap();

        // blkid exits 2 but the device cannot be read: refused, never formatted.
        let e = ensure_with(&tools, FsType::Ext4, &blank, eio).unwrap_err();
        assert!(matches!(e, NodeError::FailedPrecondition(_)), "{e:?}");
        for unreadable in [
            device(dir, "blank-empty.img", 0),
            dir.join("blank-missing.img"),
            dir.join("noisy.img"),
        ] {
            let e = ensure_filesystem(&tools, FsType::Xfs, &unreadable).unwrap_err();
            assert!(
                matches!(e, NodeError::FailedPrecondition(_)),
                "{unreadable:?}: {e:?}"
            );
        }

        // A filesystem: kept, or refused if of another type; never formatted.
        let ext4 = device(dir, "ext4.img", 8 << 20);
        assert!(!ensure_filesystem(&tools, FsType::Ext4, &ext4).unwrap());
        let e = ensure_filesystem(&tools, FsType::Xfs, &ext4).unwrap_err();
        assert!(
            matches!(&e, NodeError::FailedPrecondition(m) if m.contains("already holds a ext4")),
            "{e:?}"
        );

        // Nothing seen on the first probe, a filesystem once the device was read: kept.
        let flaky = device(dir, "flaky.img", 8 << 20);
        assert!(!ensure_filesystem(&tools, FsType::Ext4, &flaky).unwrap());

        assert_eq!(
            mkfs_runs(dir),
            "",
            "nothing but the blank readable device was formatted"
        );
    }
}
