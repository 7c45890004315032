//! The node's NVMe host identity: the host NQN (`/etc/nvme/hostnqn`) and host ID
//! (`/etc/nvme/hostid`), generated and persisted if absent, as `nvme gen-hostnqn` would.
//! The host NQN is what the controller puts on a volume's access list.

use std::fs;
use std::io;
use std::path::Path;

use rand::RngCore;

use crate::fabrics::HostIdentity;

const UUID_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";

/// A random (version 4) UUID, lower-case hex with dashes.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Checks a host NQN: `nqn.` prefix, at most 223 bytes, no whitespace or commas.
pub fn validate_nqn(s: &str) -> Result<(), String> {
    if !s.starts_with("nqn.") {
        return Err(format!("{s:?} does not start with \"nqn.\""));
    }
    if s.len() > 223 {
        return Err(format!("{s:?} is longer than 223 bytes"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c == ',' || c.is_control())
    {
        return Err(format!("{s:?} contains whitespace or a comma"));
    }
    Ok(())
}

/// Writes `contents` to `path` atomically (temp file + rename), creating parent folders.
fn persist(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("ferrite-tmp");
    fs::write(&tmp, contents)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}

fn read_trimmed(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let t = s
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or("")
                .to_string();
            Ok((!t.is_empty()).then_some(t))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Loads the host NQN and ID from `nqn_path` and `id_path`, generating and persisting
/// whatever is missing. The ID defaults to the NQN's UUID part when it has one.
pub fn load_or_create(nqn_path: &Path, id_path: &Path) -> Result<HostIdentity, String> {
    let nqn =
        match read_trimmed(nqn_path).map_err(|e| format!("reading {}: {e}", nqn_path.display()))? {
            Some(n) => {
                validate_nqn(&n).map_err(|e| format!("{}: {e}", nqn_path.display()))?;
                n
            }
            None => {
                let n = format!("{UUID_PREFIX}{}", random_uuid());
                persist(nqn_path, &format!("{n}\n"))
                    .map_err(|e| format!("writing {}: {e}", nqn_path.display()))?;
                tracing::info!(path = %nqn_path.display(), hostnqn = %n, "generated a host NQN");
                n
            }
        };
    let id =
        match read_trimmed(id_path).map_err(|e| format!("reading {}: {e}", id_path.display()))? {
            Some(id) if is_uuid(&id) => id,
            Some(id) => return Err(format!("{}: {id:?} is not a UUID", id_path.display())),
            None => {
                let id = nqn
                    .strip_prefix(UUID_PREFIX)
                    .filter(|u| is_uuid(u))
                    .map(str::to_string)
                    .unwrap_or_else(random_uuid);
                persist(id_path, &format!("{id}\n"))
                    .map_err(|e| format!("writing {}: {e}", id_path.display()))?;
                tracing::info!(path = %id_path.display(), hostid = %id, "generated a host ID");
                id
            }
        };
    Ok(HostIdentity { nqn, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids() {
        let u = random_uuid();
        assert!(is_uuid(&u), "{u}");
        assert_eq!(&u[14..15], "4");
        assert_ne!(random_uuid(), u);
        assert!(!is_uuid("not-a-uuid"));
    }

    #[test]
    fn generates_once_and_keeps() {
        let t = tempfile::tempdir().unwrap();
        let (n, i) = (
            t.path().join("etc/nvme/hostnqn"),
            t.path().join("etc/nvme/hostid"),
        );
        let a = load_or_create(&n, &i).unwrap();
        assert!(a.nqn.starts_with(UUID_PREFIX));
        assert_eq!(a.nqn.strip_prefix(UUID_PREFIX).unwrap(), a.id);
        assert_eq!(fs::read_to_string(&n).unwrap(), format!("{}\n", a.nqn));
        let b = load_or_create(&n, &i).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn reads_existing() {
        let t = tempfile::tempdir().unwrap();
        let (n, i) = (t.path().join("hostnqn"), t.path().join("hostid"));
        fs::write(&n, "nqn.2024-01.dev.ferrite:node-a\n").unwrap();
        let a = load_or_create(&n, &i).unwrap();
        assert_eq!(a.nqn, "nqn.2024-01.dev.ferrite:node-a");
        assert!(is_uuid(&a.id));
        fs::write(&n, "bogus\n").unwrap();
        assert!(load_or_create(&n, &i).is_err());
        fs::write(&n, "nqn.2024-01.dev.ferrite:node-a\n").unwrap();
        fs::write(&i, "xyz\n").unwrap();
        assert!(load_or_create(&n, &i).is_err());
    }
}
