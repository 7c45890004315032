//! Backend specs: the short strings the CLI and config use to name a backend
//! (`ram:SIZE`, `file:PATH`, `file:PATH:SIZE`), their parser, and human-friendly sizes.
//!
//! Sizes are a whole number optionally followed by a unit: `B`, `K`/`KiB`, `M`/`MiB`,
//! `G`/`GiB`, `T`/`TiB` (case-insensitive, powers of 1024; no unit means bytes). Decimal units
//! such as `GB` are rejected rather than guessed.
//!
//! In `file:PATH:SIZE` the size is the part after the last `:` when that part has the shape of a
//! size (digits, optionally followed by a unit); otherwise the whole rest is the path, so paths
//! may contain `:` (e.g. `/dev/disk/by-path/pci-0000:00:1f.2-ata-1`). A path that itself ends
//! in `:<digits>` (SCSI by-path names such as `...-scsi-0:0:0:0`) is written with a trailing
//! `:` to end it: `file:/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0:`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::file::{FileDevice, FileOptions};
use crate::ram::RamDevice;
use crate::{BlockDevice, BlockError};

const UNITS: [(&str, u64); 5] = [
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
    ("", 1),
];

/// Parses a size such as `512`, `4096B`, `64K`, `1MiB`, `4G` or `2 TiB` into bytes.
///
/// Accepts zero (callers that need a non-zero size check it themselves).
pub fn parse_size(s: &str) -> Result<u64, BlockError> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(BlockError::InvalidSpec(format!(
            "size {s:?} must start with a whole number, e.g. 512, 64K, 4G"
        )));
    }
    let unit = unit.trim();
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => {
            return Err(BlockError::InvalidSpec(format!(
                "size {s:?} has unknown unit {unit:?} (use B, K/KiB, M/MiB, G/GiB or T/TiB; \
                 units are powers of 1024)"
            )));
        }
    };
    let too_big = || BlockError::InvalidSpec(format!("size {s:?} is too large"));
    let n: u64 = digits.parse().map_err(|_| too_big())?;
    n.checked_mul(multiplier).ok_or_else(too_big)
}

/// Formats a byte count with the largest unit that divides it exactly (`4G`, `1536K`, `100`);
/// the result parses back with [`parse_size`].
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in UNITS {
        if bytes != 0 && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    bytes.to_string()
}

/// Whether `s` has the shape of a size (digits, then optionally letters), as opposed to the
/// tail of a path such as `00:1f.2-ata-1`.
fn looks_like_size(s: &str) -> bool {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    digits_end > 0
        && t[digits_end..]
            .trim_start()
            .chars()
            .all(|c| c.is_ascii_alphabetic())
}

/// A parsed backend spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// `ram:SIZE`: a sparse in-memory device.
    Ram {
        /// Capacity in bytes.
        size: u64,
    },
    /// `file:PATH` (must exist: a regular file or block device) or `file:PATH:SIZE` (created
    /// as a sparse file of SIZE bytes if absent).
    File {
        /// Path to the file or block device.
        path: PathBuf,
        /// Size to create the file with if it does not exist.
        create_size: Option<u64>,
    },
}

impl BackendSpec {
    /// Parses `ram:SIZE`, `file:PATH` or `file:PATH:SIZE`.
    pub fn parse(s: &str) -> Result<BackendSpec, BlockError> {
        let bad = |why: &str| {
            BlockError::InvalidSpec(format!(
                "{s:?}: {why} (expected ram:SIZE, file:PATH or file:PATH:SIZE)"
            ))
        };
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(bad("missing backend kind"));
        };
        let nonzero = |size: u64| {
            if size == 0 {
                Err(bad("size must not be zero"))
            } else {
                Ok(size)
            }
        };
        match kind.to_ascii_lowercase().as_str() {
            "ram" => {
                if rest.trim().is_empty() {
                    return Err(bad("ram needs a size"));
                }
                Ok(BackendSpec::Ram {
                    size: nonzero(parse_size(rest)?)?,
                })
            }
            "file" => {
                let (path, create_size) = match rest.rsplit_once(':') {
                    // `file:PATH:` ends the path explicitly (for paths ending in `:<digits>`).
                    Some((path, "")) => (path, None),
                    Some((path, size)) if looks_like_size(size) => {
                        (path, Some(nonzero(parse_size(size)?)?))
                    }
                    _ => (rest, None),
                };
                if path.is_empty() {
                    return Err(bad("file needs a path"));
                }
                Ok(BackendSpec::File {
                    path: PathBuf::from(path),
                    create_size,
                })
            }
            other => Err(bad(&format!("unknown backend kind {other:?}"))),
        }
    }

    /// Opens the backend with `block_size`-byte blocks and default file options (the I/O
    /// engine follows [`crate::file::IoEngine::ENV_VAR`]). The size must be a multiple of the
    /// block size.
    pub async fn open(&self, block_size: u32) -> Result<Arc<dyn BlockDevice>, BlockError> {
        self.open_with(FileOptions::new(block_size)).await
    }

    /// Opens the backend with explicit file options; the spec's size overrides
    /// `opts.create_size`. Blocking work runs on tokio's blocking pool.
    pub async fn open_with(&self, opts: FileOptions) -> Result<Arc<dyn BlockDevice>, BlockError> {
        match self {
            BackendSpec::Ram { size } => Ok(Arc::new(RamDevice::new(*size, opts.block_size)?)),
            BackendSpec::File { path, create_size } => {
                let path = path.clone();
                let opts = FileOptions {
                    create_size: *create_size,
                    ..opts
                };
                let dev = tokio::task::spawn_blocking(move || FileDevice::open(path, opts))
                    .await
                    .map_err(|e| BlockError::Gone(format!("opening the backend failed: {e}")))??;
                Ok(Arc::new(dev))
            }
        }
    }
}

impl FromStr for BackendSpec {
    type Err = BlockError;

    fn from_str(s: &str) -> Result<BackendSpec, BlockError> {
        BackendSpec::parse(s)
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Ram { size } => write!(f, "ram:{}", format_size(*size)),
            BackendSpec::File {
                path,
                create_size: None,
            } => {
                let path = path.display().to_string();
                // A trailing `:` keeps a path containing `:` from being read as PATH:SIZE.
                let end = if path.contains(':') { ":" } else { "" };
                write!(f, "file:{path}{end}")
            }
            BackendSpec::File {
                path,
                create_size: Some(size),
            } => {
                write!(f, "file:{}:{}", path.display(), format_size(*size))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("512", 512),
            ("4096B", 4096),
            ("4096b", 4096),
            ("64K", 64 << 10),
            ("64k", 64 << 10),
            ("64KiB", 64 << 10),
            ("1M", 1 << 20),
            ("1MiB", 1 << 20),
            ("4G", 4 << 30),
            ("4gib", 4 << 30),
            (" 2 TiB ", 2 << 40),
            ("3T", 3 << 40),
        ];
        for &(s, want) in cases {
            assert_eq!(parse_size(s).unwrap(), want, "{s}");
        }
        for bad in [
            "",
            "G",
            "-1",
            "1.5G",
            "4GB",
            "4 kb",
            "10X",
            "99999999999999999999",
            "16777216T",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(matches!(err, BlockError::InvalidSpec(_)), "{bad}: {err}");
        }
        assert!(
            parse_size("4GB")
                .unwrap_err()
                .to_string()
                .contains("powers of 1024")
        );
    }

    #[test]
    fn sizes_format_and_round_trip() {
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(100), "100");
        assert_eq!(format_size(0), "0");
        for n in [0u64, 1, 512, 1 << 20, 3 << 40, 12345 << 10] {
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            BackendSpec::parse("ram:1G").unwrap(),
            BackendSpec::Ram { size: 1 << 30 }
        );
        assert_eq!(
            BackendSpec::parse("RAM:64M").unwrap(),
            BackendSpec::Ram { size: 64 << 20 }
        );
        assert_eq!(
            BackendSpec::parse("file:/dev/nvme0n1").unwrap(),
            BackendSpec::File {
                path: "/dev/nvme0n1".into(),
                create_size: None
            }
        );
        assert_eq!(
            BackendSpec::parse("file:/var/lib/ferrite/a.img:10G").unwrap(),
            BackendSpec::File {
                path: "/var/lib/ferrite/a.img".into(),
                create_size: Some(10 << 30)
            }
        );
        assert_eq!(
            BackendSpec::parse("file:relative.img").unwrap(),
            BackendSpec::File {
                path: "relative.img".into(),
                create_size: None
            }
        );
        // A colon in the path is fine when what follows is not a size.
        assert_eq!(
            BackendSpec::parse("file:/dev/disk/by-path/pci-0000:00:1f.2-ata-1").unwrap(),
            BackendSpec::File {
                path: "/dev/disk/by-path/pci-0000:00:1f.2-ata-1".into(),
                create_size: None
            }
        );
        // A trailing `:` ends a path that itself ends in `:<digits>`.
        assert_eq!(
            BackendSpec::parse("file:/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0:").unwrap(),
            BackendSpec::File {
                path: "/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0".into(),
                create_size: None
            }
        );
        assert_eq!(
            BackendSpec::parse("file:/data/x.img:4 GiB").unwrap(),
            BackendSpec::File {
                path: "/data/x.img".into(),
                create_size: Some(4 << 30)
            }
        );
        assert_eq!(
            "ram:4K".parse::<BackendSpec>().unwrap(),
            BackendSpec::Ram { size: 4096 }
        );
    }

    #[test]
    fn bad_specs_rejected() {
        for bad in [
            "",
            "ram",
            "ram:",
            "ram:0",
            "ram:0G",
            "ram:4GB",
            "ram:abc",
            "file:",
            "file::4G",
            "file:/x:0",
            "file:/x:4Q",
            "nvme:/dev/x",
            "/tmp/x.img",
        ] {
            let err = BackendSpec::parse(bad).unwrap_err();
            assert!(matches!(err, BlockError::InvalidSpec(_)), "{bad}: {err}");
        }
        assert!(
            BackendSpec::parse("ram:0")
                .unwrap_err()
                .to_string()
                .contains("zero")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ram:4G",
            "file:/a/b.img",
            "file:/a/b.img:1536K",
            "ram:100",
            "file:/dev/disk/by-path/pci-0000:00:10.0-scsi-0:0:0:0:",
            "file:/a:b:",
            "file:/a:b:1G",
        ] {
            let spec = BackendSpec::parse(s).unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(BackendSpec::parse(&spec.to_string()).unwrap(), spec);
        }
    }

    #[tokio::test]
    async fn open_ram_and_file() {
        let ram = BackendSpec::parse("ram:8M")
            .unwrap()
            .open(4096)
            .await
            .unwrap();
        assert_eq!(ram.size_bytes(), 8 << 20);
        assert_eq!(ram.num_blocks(), 2048);
        let err = BackendSpec::parse("ram:6K")
            .unwrap()
            .open(4096)
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                BlockError::Misaligned {
                    value: 6144,
                    block_size: 4096,
                    ..
                }
            ),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.img");
        let spec = BackendSpec::parse(&format!("file:{}:1M", path.display())).unwrap();
        let dev = spec.open(512).await.unwrap();
        assert_eq!(dev.num_blocks(), 2048);
        dev.write(3, crate::IoBuf::from_slice(&[5u8; 512]), false)
            .await
            .unwrap();
        drop(dev);
        let existing = BackendSpec::parse(&format!("file:{}", path.display())).unwrap();
        let dev = existing.open(512).await.unwrap();
        assert_eq!(&dev.read(3, 1).await.unwrap()[..], &[5u8; 512][..]);

        let missing = BackendSpec::parse(&format!("file:{}", dir.path().join("nope").display()));
        let err = missing.unwrap().open(512).await.err().unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let odd = BackendSpec::parse(&format!("file:{}:1000", dir.path().join("odd").display()));
        assert!(matches!(
            odd.unwrap().open(512).await,
            Err(BlockError::Misaligned { .. })
        ));
    }
}
