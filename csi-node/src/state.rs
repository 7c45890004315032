//! Records of staged volumes, one small file per volume in the state folder.
//!
//! NodeUnstageVolume only gets the volume ID and the staging path; the record says which
//! subsystem to disconnect, even after the plugin restarted or crashed mid-stage (the record
//! is written before connecting). Format: `key=value` lines, values escaped (`\\`, `\n`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{NodeError, Result};

/// What NodeStageVolume set up for a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedVolume {
    pub volume_id: String,
    pub nqn: String,
    pub nsid: u32,
    /// Portals as `ADDR:PORT`.
    pub portals: Vec<String>,
    pub block: bool,
    pub staging_path: PathBuf,
    /// Filesystem type for mount volumes.
    pub fs_type: Option<String>,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl StagedVolume {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: &str| s.push_str(&format!("{k}={}\n", escape(v)));
        kv("volume_id", &self.volume_id);
        kv("nqn", &self.nqn);
        kv("nsid", &self.nsid.to_string());
        kv("portals", &self.portals.join(","));
        kv("mode", if self.block { "block" } else { "mount" });
        kv("staging_path", &self.staging_path.to_string_lossy());
        if let Some(fs) = &self.fs_type {
            kv("fs_type", fs);
        }
        s
    }

    pub fn decode(text: &str) -> std::result::Result<StagedVolume, String> {
        let mut v = StagedVolume {
            volume_id: String::new(),
            nqn: String::new(),
            nsid: 0,
            portals: Vec::new(),
            block: false,
            staging_path: PathBuf::new(),
            fs_type: None,
        };
        for line in text.lines() {
            let Some((k, val)) = line.split_once('=') else {
                continue;
            };
            let val = unescape(val);
            match k {
                "volume_id" => v.volume_id = val,
                "nqn" => v.nqn = val,
                "nsid" => v.nsid = val.parse().map_err(|_| format!("bad nsid {val:?}"))?,
                "portals" => {
                    v.portals = val
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "mode" => v.block = val == "block",
                "staging_path" => v.staging_path = PathBuf::from(val),
                "fs_type" => v.fs_type = Some(val),
                _ => {}
            }
        }
        if v.volume_id.is_empty() || v.nqn.is_empty() || v.nsid == 0 {
            return Err("missing volume_id, nqn or nsid".into());
        }
        Ok(v)
    }
}

/// The folder of records.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// A file name for a volume ID: the ID itself when it is made of safe characters, else
/// its hex encoding.
pub fn file_name(volume_id: &str) -> String {
    let safe = volume_id.len() <= 200
        && volume_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !volume_id.starts_with('.');
    if safe {
        format!("v-{volume_id}.vol")
    } else {
        let hex: String = volume_id
            .bytes()
            .take(120)
            .map(|b| format!("{b:02x}"))
            .collect();
        // Long IDs are cut; the record holds the full ID and is checked on load.
        format!("x-{hex}.vol")
    }
}

impl StateDir {
    pub fn new(dir: PathBuf) -> StateDir {
        StateDir { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(file_name(volume_id))
    }

    /// The record of `volume_id`, if any.
    pub fn load(&self, volume_id: &str) -> Result<Option<StagedVolume>> {
        let p = self.path(volume_id);
        match fs::read_to_string(&p) {
            Ok(t) => {
                let v = StagedVolume::decode(&t).map_err(|e| {
                    NodeError::Internal(format!(
                        "state file {} is corrupt ({e}); remove it",
                        p.display()
                    ))
                })?;
                Ok((v.volume_id == volume_id).then_some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NodeError::Internal(format!("reading {}: {e}", p.display()))),
        }
    }

    /// Writes (atomically) the record of a volume.
    pub fn save(&self, v: &StagedVolume) -> Result<()> {
        let werr = |e: io::Error| {
            NodeError::Internal(format!("writing state to {}: {e}", self.dir.display()))
        };
        fs::create_dir_all(&self.dir).map_err(werr)?;
        let p = self.path(&v.volume_id);
        let tmp = p.with_extension("tmp");
        fs::write(&tmp, v.encode()).map_err(werr)?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(werr)?;
        fs::rename(&tmp, &p).map_err(werr)
    }

    /// Removes the record of a volume (no error if there is none).
    pub fn remove(&self, volume_id: &str) -> Result<()> {
        match fs::remove_file(self.path(volume_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodeError::Internal(format!(
                "removing the state of volume {volume_id}: {e}"
            ))),
        }
    }

    /// Every readable record.
    pub fn all(&self) -> Result<Vec<StagedVolume>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(NodeError::Internal(format!(
                    "reading {}: {e}",
                    self.dir.display()
                )));
            }
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "vol") {
                match fs::read_to_string(e.path())
                    .map_err(|e| e.to_string())
                    .and_then(|t| StagedVolume::decode(&t))
                {
                    Ok(v) => out.push(v),
                    Err(err) => {
                        tracing::warn!(file = %e.path().display(), error = %err, "ignoring unreadable state file")
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(id: &str) -> StagedVolume {
        StagedVolume {
            volume_id: id.into(),
            nqn: "nqn.2024-01.dev.ferrite:v1".into(),
            nsid: 1,
            portals: vec!["10.0.2.2:4420".into(), "[::1]:4420".into()],
            block: false,
            staging_path: "/var/lib/kubelet/x y/globalmount".into(),
            fs_type: Some("ext4".into()),
        }
    }

    #[test]
    fn roundtrip() {
        for id in ["pvc-1", "weird/id\nwith\\stuff", &"z".repeat(300)] {
            let v = vol(id);
            assert_eq!(StagedVolume::decode(&v.encode()).unwrap(), v);
        }
        assert!(StagedVolume::decode("nqn=x\n").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(file_name("pvc-1"), "v-pvc-1.vol");
        assert_eq!(file_name("a/b"), "x-612f62.vol");
        assert_eq!(file_name(".hidden"), "x-2e68696464656e.vol");
    }

    #[test]
    fn store() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path().join("state"));
        assert_eq!(s.load("pvc-1").unwrap(), None);
        assert!(s.all().unwrap().is_empty());
        s.save(&vol("pvc-1")).unwrap();
        s.save(&vol("a/b")).unwrap();
        assert_eq!(s.load("pvc-1").unwrap(), Some(vol("pvc-1")));
        assert_eq!(s.all().unwrap().len(), 2);
        s.remove("pvc-1").unwrap();
        s.remove("pvc-1").unwrap();
        assert_eq!(s.load("pvc-1").unwrap(), None);
        assert_eq!(s.all().unwrap().len(), 1);
    }
}
