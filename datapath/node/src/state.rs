//! The node's state file: the pools, replicas and volumes created through the node API, so
//! that a restarted datapath brings them back.
//!
//! The file (`node-state.yaml` in `--state-dir`) uses the same schema as the YAML
//! configuration, restricted to its `pools`, `replicas` and `volumes` sections. It is
//! rewritten atomically after every change (temporary file, fsync, rename, fsync of the
//! folder), so a crash leaves either the old or the new version; its first and last lines
//! are comments, so that a file cut short anyway (a damaged disk or filesystem) is recognised
//! and its last, perhaps incomplete, entry refused. At start its entries are
//! merged with the configuration's: an entry in both must be identical (it then counts as
//! configured), and one that differs is a startup error (which definition holds the data is
//! then unknown).
//!
//! A damaged file never keeps the node from serving what its configuration defines. Each
//! entry is parsed and validated on its own: a bad one (unparsable, invalid, a duplicate, a
//! replica of a refused pool...) is refused and logged with the file, its section and index
//! and the reason, every valid one is served, and the refusals are reported in `/v1/status`
//! (`state_errors`). A file that is not YAML at all is renamed to
//! `node-state.yaml.bad-<UTC time>` and the node starts with the configuration alone; a file
//! with refused entries stays in place and a copy of it is kept under that name. Either way
//! the next state write, which holds only the accepted objects, loses nothing for good.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::error;
use uuid::Uuid;

use crate::config::{self, Config, PoolSpec, ReplicaSpec, VolumeSpec};

/// Name of the state file inside the state folder.
pub const STATE_FILE: &str = "node-state.yaml";

/// Default state folder.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferrite";

/// First and last lines of the files this version writes (YAML comments): a file that starts
/// with the first but does not end with the last was cut short.
const HEADER: &str =
    "# Ferrite node state: the pools, replicas and volumes created through the node API.";
const TRAILER: &str = "# End of the node state.";

/// What the whole-file errors name as their entry.
const WHOLE_FILE: &str = "the whole file";

/// One part of the state file refused at start, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state file {}: {entry}: {reason}", file.display())]
pub struct StateError {
    /// The state file.
    pub file: PathBuf,
    /// Which part: `pools[1] (name "p2")`, `replicas[0] (uuid ...)`, `section "listen"`, or
    /// `the whole file`.
    pub entry: String,
    /// The parse or validation error.
    pub reason: String,
}

/// What the state file held that is not served.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Refused {
    pub errors: Vec<StateError>,
    /// Where the file as it was is kept (`node-state.yaml.bad-<UTC time>`) when something
    /// was refused.
    pub kept_aside: Option<PathBuf>,
}

/// The keys of the objects that came from the state file (created through the API) rather
/// than from the configuration, and what of the file was refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApiKeys {
    pub pools: HashSet<String>,
    pub replicas: HashSet<Uuid>,
    pub volumes: HashSet<Uuid>,
    pub refused: Refused,
}

/// The state file as read: the entries that parsed, and what did not.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub state: Config,
    pub refused: Refused,
    /// The file and the bytes read from it, while it is still in place.
    source: Option<(PathBuf, Vec<u8>)>,
    /// Where each entry of `state` is in the file, when entries were left out.
    at: Positions,
}

/// The index in the file of each entry that parsed, section by section (empty: no entry was
/// left out).
#[derive(Debug, Default, Clone, PartialEq)]
struct Positions {
    pools: Vec<usize>,
    replicas: Vec<usize>,
    volumes: Vec<usize>,
}

/// The index in the file of the `i`th entry that parsed.
fn position(at: &[usize], i: usize) -> usize {
    at.get(i).copied().unwrap_or(i)
}

impl From<Config> for Loaded {
    fn from(state: Config) -> Loaded {
        Loaded {
            state,
            ..Loaded::default()
        }
    }
}

/// Where the state is kept.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    pub fn new(dir: impl Into<PathBuf>) -> StateFile {
        StateFile { dir: dir.into() }
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads the state (empty if the file does not exist yet). Entries that do not parse
    /// are left out and listed in [`Loaded::refused`]; a file that is not YAML at all is
    /// renamed aside and the state is empty. Fails only if the file exists but cannot be
    /// read, or a damaged file cannot be moved aside (the next write would then replace it).
    pub fn load(&self) -> Result<Loaded> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("reading state file {}", path.display()));
            }
        };
        let mut errors = Vec::new();
        match parse(&path, &bytes, &mut errors) {
            Some((state, at)) => Ok(Loaded {
                state,
                refused: Refused {
                    errors,
                    kept_aside: None,
                },
                source: Some((path, bytes)),
                at,
            }),
            None => {
                let aside = set_aside(&path, None).context(
                    "a damaged state file must be kept before the node may write a new one",
                )?;
                Ok(Loaded {
                    state: Config::default(),
                    refused: Refused {
                        errors,
                        kept_aside: Some(aside),
                    },
                    source: None,
                    at: Positions::default(),
                })
            }
        }
    }

    /// Writes `state` atomically: temporary file, fsync, rename over the old file, fsync of
    /// the folder. On failure the old file is untouched.
    pub fn save(&self, state: &Config) -> Result<()> {
        let yaml = serde_saphyr::to_string(state).context("encoding the node state")?;
        let text = format!("{HEADER}\n{}\n{TRAILER}\n", yaml.trim_end());
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating state folder {}", self.dir.display()))?;
        let path = self.path();
        let tmp = self.dir.join(format!(".{STATE_FILE}.tmp"));
        let written = write_synced(&tmp, text.as_bytes(), false)
            .with_context(|| format!("writing {}", tmp.display()))
            .and_then(|()| {
                std::fs::rename(&tmp, &path)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(&self.dir)
    }
}

/// Writes `bytes` to `path` and fsyncs it; `new`: fail if the file exists.
fn write_synced(path: &Path, bytes: &[u8], new: bool) -> std::io::Result<()> {
    let mut f = if new {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?
    } else {
        std::fs::File::create(path)?
    };
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

/// Parses the state file's bytes, entry by entry. None: the file as a whole is unusable (the
/// reason is in `errors`); otherwise the entries that parsed and where they are in the file,
/// with the others in `errors`.
fn parse(path: &Path, bytes: &[u8], errors: &mut Vec<StateError>) -> Option<(Config, Positions)> {
    let refuse = |entry: &str, reason: String| StateError {
        file: path.to_path_buf(),
        entry: entry.to_string(),
        reason,
    };
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            errors.push(refuse(
                WHOLE_FILE,
                format!("not UTF-8 text, so not YAML ({e})"),
            ));
            return None;
        }
    };
    // The node never writes a file without content (an empty state is `{}`).
    if !has_content(text) {
        errors.push(refuse(WHOLE_FILE, "is empty (truncated?)".into()));
        return None;
    }
    let text = match complete_part(text) {
        None => text,
        Some((whole, line)) => {
            errors.push(refuse(
                "the end of the file",
                format!(
                    "the file was cut short (its last line is not {TRAILER:?}): what starts at line {line} may be \
                     incomplete and is refused"
                ),
            ));
            if !has_content(whole) {
                return Some((Config::default(), Positions::default()));
            }
            whole
        }
    };
    // The usual case: the whole file parses and holds nothing but storage.
    if let Ok(state) = Config::parse(text) {
        let storage = Config {
            pools: state.pools.clone(),
            replicas: state.replicas.clone(),
            volumes: state.volumes.clone(),
            ..Config::default()
        };
        if storage == state {
            return Some((state, Positions::default()));
        }
    }
    let doc: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(refuse(WHOLE_FILE, format!("not YAML: {e}")));
            return None;
        }
    };
    let Value::Object(sections) = doc else {
        errors.push(refuse(
            WHOLE_FILE,
            format!(
                "not a YAML mapping of pools, replicas and volumes (found {})",
                kind(&doc)
            ),
        ));
        return None;
    };
    let mut state = Config::default();
    let mut at = Positions::default();
    for (name, section) in sections {
        match name.as_str() {
            "pools" => (state.pools, at.pools) = entries(path, "pools", "name", section, errors),
            "replicas" => {
                (state.replicas, at.replicas) = entries(path, "replicas", "uuid", section, errors)
            }
            "volumes" => {
                (state.volumes, at.volumes) = entries(path, "volumes", "uuid", section, errors)
            }
            _ => errors.push(refuse(
                &format!("section {name:?}"),
                "only pools, replicas and volumes belong in the state file; ignored".into(),
            )),
        }
    }
    Some((state, at))
}

/// Whether `text` holds anything but blank lines and comments.
fn has_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|l| !l.is_empty() && !l.starts_with('#'))
}

/// For a file this version wrote that was cut short (it starts with [`HEADER`] but does not
/// end with [`TRAILER`]): the part before the last entry, which is complete, and the line
/// where that last one starts. Entries and sections start at column 0; a section cut before
/// its first entry is left out too.
fn complete_part(text: &str) -> Option<(&str, usize)> {
    if !text.starts_with(HEADER) || text.trim_end().ends_with(TRAILER) {
        return None;
    }
    // (byte offset, line number, whether it starts an entry) of the lines at column 0.
    let mut starts = Vec::new();
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.starts_with([' ', '\t', '#', '\n', '\r']) {
            starts.push((offset, n + 1, line.starts_with('-')));
        }
        offset += line.len();
    }
    let mut cut = starts.pop().map_or((0, 1), |(o, n, _)| (o, n));
    if let Some(&(o, n, false)) = starts.last() {
        cut = (o, n);
    }
    Some((&text[..cut.0], cut.1))
}

/// The entries of one section that parse as `T`, and their indexes; the others go to `errors`.
fn entries<T: DeserializeOwned>(
    path: &Path,
    section: &str,
    key: &str,
    value: Value,
    errors: &mut Vec<StateError>,
) -> (Vec<T>, Vec<usize>) {
    let refuse = |entry: String, reason: String| StateError {
        file: path.to_path_buf(),
        entry,
        reason,
    };
    let items = match value {
        Value::Array(items) => items,
        Value::Null => {
            errors.push(refuse(
                format!("section {section:?}"),
                "has no entries (is the file truncated?)".into(),
            ));
            return (Vec::new(), Vec::new());
        }
        other => {
            errors.push(refuse(
                format!("section {section:?}"),
                format!("is not a list (found {})", kind(&other)),
            ));
            return (Vec::new(), Vec::new());
        }
    };
    let (mut out, mut at) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        let label = entry_label(section, i, key, item.get(key).and_then(Value::as_str));
        match serde_json::from_value::<T>(item.clone()) {
            Ok(t) => {
                out.push(t);
                at.push(i);
            }
            // YAML scalars are text: a plain `size: 1024` is a number here but a fine string
            // to the YAML parser, so give the entry its YAML form before refusing it.
            Err(e) => match serde_saphyr::to_string(&item)
                .ok()
                .and_then(|y| serde_saphyr::from_str::<T>(&y).ok())
            {
                Some(t) => {
                    out.push(t);
                    at.push(i);
                }
                None => errors.push(refuse(label, e.to_string())),
            },
        }
    }
    (out, at)
}

/// `pools[1] (name "p2")`: how an entry is named in errors.
fn entry_label(section: &str, index: usize, key: &str, value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{section}[{index}] ({key} {v:?})"),
        None => format!("{section}[{index}]"),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Keeps the state file as it was under `node-state.yaml.bad-<UTC time>` in its folder:
/// renamed when `copy` is None, else `copy` (its bytes) is written there unless an earlier
/// copy holds the same bytes. Returns where it is kept.
fn set_aside(path: &Path, copy: Option<&[u8]>) -> Result<PathBuf> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let prefix = format!("{STATE_FILE}.bad-");
    if let Some(bytes) = copy {
        let earlier = std::fs::read_dir(&dir)
            .with_context(|| format!("listing state folder {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .find(|p| std::fs::read(p).is_ok_and(|b| b == bytes));
        if let Some(p) = earlier {
            return Ok(p);
        }
    }
    let stamp = utc_stamp(SystemTime::now());
    let mut aside = dir.join(format!("{prefix}{stamp}"));
    let mut n = 1;
    while aside.exists() {
        aside = dir.join(format!("{prefix}{stamp}-{n}"));
        n += 1;
    }
    match copy {
        None => std::fs::rename(path, &aside)
            .with_context(|| format!("renaming {} to {}", path.display(), aside.display()))?,
        Some(bytes) => write_synced(&aside, bytes, true)
            .with_context(|| format!("copying {} to {}", path.display(), aside.display()))?,
    }
    sync_dir(&dir)?;
    Ok(aside)
}

/// `20240611T100000Z`: a time in UTC, for file names.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Adds the state's pools, replicas and volumes to `config`. An object in both must be
/// identical; it then counts as configured, and one that differs is an error. A state entry
/// that is invalid on its own or next to the others (a duplicate, a replica in a pool that is
/// not there, a volume over a refused replica...) is refused, like the entries that did not
/// parse: every refusal is logged, and unless the file was already moved aside a copy of it
/// is kept. Returns the keys that came from the state only, and the refusals.
pub fn merge(config: &mut Config, loaded: Loaded) -> Result<ApiKeys> {
    let Loaded {
        state,
        refused,
        source,
        at,
    } = loaded;
    let file = source
        .as_ref()
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| PathBuf::from(STATE_FILE));
    let mut errors = refused.errors;
    let refuse = |entry: String, e: &dyn std::fmt::Display| StateError {
        file: file.clone(),
        entry,
        reason: e.to_string(),
    };
    let original = config.clone();
    let mut keys = ApiKeys::default();
    // The state entries accepted, with their labels, in order.
    let mut accepted = Accepted::default();
    for (i, p) in state.pools.into_iter().enumerate() {
        let label = entry_label("pools", position(&at.pools, i), "name", Some(&p.name));
        if let Some(c) = config.pools.iter().find(|c| c.name == p.name) {
            if keys.pools.contains(&p.name) {
                errors.push(refuse(label, &TWICE));
            } else if *c != p {
                bail!(
                    "pool {:?} is in both the configuration and the state file, with different specs",
                    p.name
                );
            }
            continue;
        }
        match (Config {
            pools: vec![p.clone()],
            ..Config::default()
        })
        .validate()
        {
            Ok(()) => {
                keys.pools.insert(p.name.clone());
                config.pools.push(p.clone());
                accepted.pools.push((label, p));
            }
            Err(e) => errors.push(refuse(label, &format!("{e:#}"))),
        }
    }
    for (i, r) in state.replicas.into_iter().enumerate() {
        let label = entry_label("replicas", position(&at.replicas, i), "uuid", Some(&r.uuid));
        let id = match config::parse_uuid("uuid", &r.uuid) {
            Ok(id) => id,
            Err(e) => {
                errors.push(refuse(label, &format!("{e:#}")));
                continue;
            }
        };
        if let Some(c) = config
            .replicas
            .iter()
            .find(|c| Uuid::parse_str(&c.uuid).ok() == Some(id))
        {
            if keys.replicas.contains(&id) {
                errors.push(refuse(label, &TWICE));
            } else if *c != r {
                bail!(
                    "replica {id} is in both the configuration and the state file, with different specs"
                );
            }
            continue;
        }
        let pools = config
            .pools
            .iter()
            .filter(|p| p.name == r.pool)
            .cloned()
            .collect();
        match (Config {
            pools,
            replicas: vec![r.clone()],
            ..Config::default()
        })
        .validate()
        {
            Ok(()) => {
                keys.replicas.insert(id);
                config.replicas.push(r.clone());
                accepted.replicas.push((label, r));
            }
            Err(e) => errors.push(refuse(label, &format!("{e:#}"))),
        }
    }
    for (i, v) in state.volumes.into_iter().enumerate() {
        let label = entry_label("volumes", position(&at.volumes, i), "uuid", Some(&v.uuid));
        let id = match config::parse_uuid("uuid", &v.uuid) {
            Ok(id) => id,
            Err(e) => {
                errors.push(refuse(label, &format!("{e:#}")));
                continue;
            }
        };
        if let Some(c) = config
            .volumes
            .iter()
            .find(|c| Uuid::parse_str(&c.uuid).ok() == Some(id))
        {
            if keys.volumes.contains(&id) {
                errors.push(refuse(label, &TWICE));
            } else if *c != v {
                bail!(
                    "volume {id} is in both the configuration and the state file, with different specs"
                );
            }
            continue;
        }
        // The volume with the local replicas it names, and their pools.
        let local: HashSet<Uuid> = v
            .replicas
            .iter()
            .filter(|m| m.address.is_none())
            .filter_map(|m| Uuid::parse_str(&m.uuid).ok())
            .collect();
        let replicas: Vec<_> = config
            .replicas
            .iter()
            .filter(|r| Uuid::parse_str(&r.uuid).is_ok_and(|u| local.contains(&u)))
            .cloned()
            .collect();
        let pools = config
            .pools
            .iter()
            .filter(|p| replicas.iter().any(|r| r.pool == p.name))
            .cloned()
            .collect();
        match (Config {
            pools,
            replicas,
            volumes: vec![v.clone()],
            ..Config::default()
        })
        .validate()
        {
            Ok(()) => {
                keys.volumes.insert(id);
                config.volumes.push(v.clone());
                accepted.volumes.push((label, v));
            }
            Err(e) => errors.push(refuse(label, &format!("{e:#}"))),
        }
    }
    // Each entry is valid with what it depends on. Should the whole still not validate
    // while the configuration alone does, a check across entries failed: add the accepted
    // entries one at a time and refuse those that break it.
    if config.validate().is_err() && original.validate().is_ok() {
        *config = original;
        accepted.add_checked(config, &mut keys, &mut |label, e| {
            errors.push(refuse(label, &format!("{e:#}")))
        });
    }
    let mut kept_aside = refused.kept_aside;
    if let Some((path, bytes)) = source
        .as_ref()
        .filter(|_| !errors.is_empty() && kept_aside.is_none())
    {
        kept_aside =
            Some(set_aside(path, Some(bytes)).context(
                "keeping a copy of the state file before the node may write one without its refused entries",
            )?);
    }
    report(&errors, kept_aside.as_deref());
    keys.refused = Refused { errors, kept_aside };
    Ok(keys)
}

const TWICE: &str = "given twice in the state file; the first one is used";

/// State entries accepted so far, with their labels.
#[derive(Default)]
struct Accepted {
    pools: Vec<(String, PoolSpec)>,
    replicas: Vec<(String, ReplicaSpec)>,
    volumes: Vec<(String, VolumeSpec)>,
}

impl Accepted {
    /// Adds the entries to `config` one at a time, validating the whole each time; those
    /// that break it are taken out of `keys` and passed to `refuse`.
    fn add_checked(
        self,
        config: &mut Config,
        keys: &mut ApiKeys,
        refuse: &mut dyn FnMut(String, anyhow::Error),
    ) {
        for (label, p) in self.pools {
            config.pools.push(p);
            if let Err(e) = config.validate() {
                if let Some(p) = config.pools.pop() {
                    keys.pools.remove(&p.name);
                }
                refuse(label, e);
            }
        }
        for (label, r) in self.replicas {
            config.replicas.push(r);
            if let Err(e) = config.validate() {
                if let Some(id) = config
                    .replicas
                    .pop()
                    .and_then(|r| Uuid::parse_str(&r.uuid).ok())
                {
                    keys.replicas.remove(&id);
                }
                refuse(label, e);
            }
        }
        for (label, v) in self.volumes {
            config.volumes.push(v);
            if let Err(e) = config.validate() {
                if let Some(id) = config
                    .volumes
                    .pop()
                    .and_then(|v| Uuid::parse_str(&v.uuid).ok())
                {
                    keys.volumes.remove(&id);
                }
                refuse(label, e);
            }
        }
    }
}

/// Logs what was refused and where the file as it was is kept.
fn report(errors: &[StateError], kept_aside: Option<&Path>) {
    for e in errors {
        error!(file = %e.file.display(), entry = %e.entry, error = %e.reason,
               "state file: entry refused, not served (the configuration and the valid entries are)");
    }
    let Some(aside) = kept_aside else { return };
    let whole = errors.iter().any(|e| e.entry == WHOLE_FILE);
    match errors.first() {
        Some(e) if whole => error!(file = %e.file.display(), moved_to = %aside.display(),
            "state file unusable: moved aside, nothing of it is served; the node starts with its configuration \
             alone and the next state write starts a new file"),
        Some(e) => error!(file = %e.file.display(), copy = %aside.display(),
            "state file: a copy as it was is kept; the next state write keeps only the accepted entries \
             (recover refused ones from the copy)"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "pools:\n  - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\"]\n\
        replicas:\n  - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n    pool: p\n    size: 64MiB\n    export: {allow_hosts: [], allow_any_host: false}\n\
        volumes:\n  - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    allow_any_host: false\n    replicas:\n      - uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11\n";

    const R1: &str = "3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11";
    const V1: &str = "9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f";

    /// The `node-state.yaml.bad-*` files in `dir`.
    fn kept(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("node-state.yaml.bad-")
            })
            .collect();
        v.sort();
        v
    }

    /// Loads the state file in `dir` and merges it into `config`.
    fn load_merge(dir: &Path, config: &mut Config) -> ApiKeys {
        let loaded = StateFile::new(dir).load().unwrap();
        merge(config, loaded).unwrap()
    }

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("sub"));
        assert_eq!(f.load().unwrap(), Loaded::default());
        let state = Config::parse(STATE).unwrap();
        assert!(!state.volumes[0].allow_any_host);
        assert!(!state.replicas[0].export.as_ref().unwrap().allow_any_host);
        f.save(&state).unwrap();
        let loaded = f.load().unwrap();
        assert_eq!(loaded.state, state);
        assert_eq!(loaded.refused, Refused::default());
        assert!(
            !dir.path()
                .join("sub")
                .join(format!(".{STATE_FILE}.tmp"))
                .exists()
        );
    }

    #[test]
    fn a_failed_save_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.save(&Config::parse(STATE).unwrap()).unwrap();
        let before = std::fs::read(f.path()).unwrap();
        // The temporary file cannot be created: the save fails before touching the file.
        std::fs::create_dir(dir.path().join(format!(".{STATE_FILE}.tmp"))).unwrap();
        assert!(f.save(&Config::default()).is_err());
        assert_eq!(std::fs::read(f.path()).unwrap(), before);
    }

    #[test]
    fn merges_and_refuses_conflicts() {
        let mut config =
            Config::parse("pools:\n  - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\"]\n").unwrap();
        let keys = merge(&mut config, Config::parse(STATE).unwrap().into()).unwrap();
        assert!(keys.pools.is_empty(), "identical pool counts as configured");
        assert_eq!(keys.replicas.len(), 1);
        assert_eq!(keys.volumes.len(), 1);
        assert_eq!(keys.refused, Refused::default());
        config.validate().unwrap();

        let mut config =
            Config::parse("pools:\n  - name: p\n    disks: [\"file:/tmp/other.img:1GiB\"]\n")
                .unwrap();
        let e = merge(&mut config, Config::parse(STATE).unwrap().into()).unwrap_err();
        assert!(e.to_string().contains("different specs"), "{e}");
    }

    #[test]
    fn refuses_foreign_sections_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("listen: [\"127.0.0.1:1\"]\n{STATE}");
        std::fs::write(dir.path().join(STATE_FILE), &text).unwrap();
        let mut config = Config::default();
        let keys = load_merge(dir.path(), &mut config);
        assert_eq!(
            (keys.pools.len(), keys.replicas.len(), keys.volumes.len()),
            (1, 1, 1)
        );
        assert_eq!(keys.refused.errors.len(), 1, "{:?}", keys.refused);
        assert_eq!(keys.refused.errors[0].entry, "section \"listen\"");
        assert!(config.listen.is_empty());
        // The file stays, and a copy of it is kept.
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
            text
        );
        let copies = kept(dir.path());
        assert_eq!(copies.len(), 1);
        assert_eq!(std::fs::read_to_string(&copies[0]).unwrap(), text);
    }

    #[test]
    fn one_bad_entry_among_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let text = "pools:\n\
            \x20 - name: p\n    disks: [\"file:/tmp/d0.img:1GiB\"]\n\
            \x20 - name: nodisks\n    disks: []\n\
            \x20 - name: q\n    disks: [\"file:/tmp/q0.img:1GiB\"]\n    colour: blue\n\
            \x20 - name: r\n    disks: [\"file:/tmp/r0.img:1GiB\"]\n    stripe_size: 64KiB\n\
            \x20 - name: p\n    disks: [\"file:/tmp/other.img:1GiB\"]\n\
            replicas:\n\
            \x20 - {uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11, pool: p, size: 64MiB}\n\
            \x20 - {uuid: 0d3c2b1a-5e4f-4a6b-9c8d-7e6f5a4b3c2d, pool: nodisks, size: 64MiB}\n\
            \x20 - {uuid: not-a-uuid, pool: p, size: 64MiB}\n\
            \x20 - {uuid: 7a6b5c4d-3e2f-4a1b-8c9d-0e1f2a3b4c5d, pool: r, size: 1048576}\n\
            volumes:\n\
            \x20 - uuid: 9b1c4f0e-2f4d-4d8a-8c3e-6a5b4c3d2e1f\n    replicas: [{uuid: 3f2a0d2e-6a8e-4c65-9d3b-0c2f6f7e5a11}]\n\
            \x20 - uuid: 11111111-2222-4333-8444-555555555555\n    replicas: [{uuid: 0d3c2b1a-5e4f-4a6b-9c8d-7e6f5a4b3c2d}]\n";
        std::fs::write(dir.path().join(STATE_FILE), text).unwrap();
        let mut config =
            Config::parse("pools:\n  - name: c\n    disks: [\"file:/tmp/c0.img:1GiB\"]\n").unwrap();
        let keys = load_merge(dir.path(), &mut config);
        config.validate().unwrap();

        let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c", "p", "r"]);
        assert_eq!(
            keys.pools,
            HashSet::from(["p".to_string(), "r".to_string()])
        );
        assert_eq!(keys.replicas.len(), 2, "{keys:?}");
        assert!(
            config
                .replicas
                .iter()
                .any(|r| r.pool == "r" && r.size == "1048576"),
            "a plain number is a size"
        );
        assert_eq!(keys.volumes, HashSet::from([Uuid::parse_str(V1).unwrap()]));

        let errors: Vec<(String, String)> = keys
            .refused
            .errors
            .iter()
            .map(|e| (e.entry.clone(), e.reason.clone()))
            .collect();
        let want = [
            ("pools[1] (name \"nodisks\")", "no disks"),
            ("pools[2] (name \"q\")", "colour"),
            ("pools[4] (name \"p\")", "given twice"),
            (
                "replicas[1] (uuid \"0d3c2b1a-5e4f-4a6b-9c8d-7e6f5a4b3c2d\")",
                "\"nodisks\" is not configured",
            ),
            ("replicas[2] (uuid \"not-a-uuid\")", "not a UUID"),
            (
                "volumes[1] (uuid \"11111111-2222-4333-8444-555555555555\")",
                "not a replica of this node",
            ),
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (entry, reason) in want {
            assert!(
                errors.iter().any(|(e, r)| e == entry && r.contains(reason)),
                "{entry}: {reason} in {errors:#?}"
            );
        }
        for e in &keys.refused.errors {
            assert_eq!(e.file, dir.path().join(STATE_FILE));
            assert!(e.to_string().contains(STATE_FILE), "{e}");
        }
        // A copy as it was; a second start finds the same copy rather than making another.
        let copy = keys.refused.kept_aside.clone().unwrap();
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), text);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
            text
        );
        let mut again =
            Config::parse("pools:\n  - name: c\n    disks: [\"file:/tmp/c0.img:1GiB\"]\n").unwrap();
        let keys2 = load_merge(dir.path(), &mut again);
        assert_eq!(keys2.refused, keys.refused);
        assert_eq!(kept(dir.path()), [copy]);
    }

    #[test]
    fn a_truncated_file_keeps_what_is_whole() {
        // Every prefix of a written state file: never a startup error, the merged result
        // valid, every entry served exactly as written (a cut entry is never served in
        // part), and the file as it was kept somewhere.
        let dir = tempfile::tempdir().unwrap();
        let full_state = Config::parse(STATE).unwrap();
        StateFile::new(dir.path()).save(&full_state).unwrap();
        let full = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(
            full.starts_with(HEADER) && full.ends_with(&format!("{TRAILER}\n")),
            "{full}"
        );
        let mut served = HashSet::new();
        for cut in 0..=full.len() {
            let dir = tempfile::tempdir().unwrap();
            let text = &full[..cut];
            std::fs::write(dir.path().join(STATE_FILE), text).unwrap();
            let mut config = Config::default();
            let keys = load_merge(dir.path(), &mut config);
            config
                .validate()
                .unwrap_or_else(|e| panic!("cut at {cut}: {e:#}\n{text}"));
            assert!(
                config.pools.iter().all(|p| full_state.pools.contains(p)),
                "cut at {cut}: {config:?}"
            );
            assert!(
                config
                    .replicas
                    .iter()
                    .all(|r| full_state.replicas.contains(r)),
                "cut at {cut}: {config:?}"
            );
            assert!(
                config
                    .volumes
                    .iter()
                    .all(|v| full_state.volumes.contains(v)),
                "cut at {cut}: {config:?}"
            );
            served.insert((
                config.pools.len(),
                config.replicas.len(),
                config.volumes.len(),
            ));
            if cut == full.len() || text.trim_end().ends_with(TRAILER) {
                assert_eq!(keys.refused, Refused::default(), "cut at {cut}");
                assert!(kept(dir.path()).is_empty());
                continue;
            }
            let errors = &keys.refused.errors;
            assert_eq!(errors.len(), 1, "cut at {cut}: {errors:?}");
            if cut > HEADER.len() + 1 {
                assert_eq!(
                    errors[0].entry, "the end of the file",
                    "cut at {cut}: {errors:?}"
                );
                assert!(errors[0].reason.contains("cut short"), "{errors:?}");
            }
            let aside = keys
                .refused
                .kept_aside
                .clone()
                .unwrap_or_else(|| panic!("cut at {cut}: nothing kept"));
            assert_eq!(
                std::fs::read_to_string(&aside).unwrap(),
                text,
                "cut at {cut}"
            );
        }
        assert_eq!(
            served,
            HashSet::from([(0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)])
        );

        // Cut inside the volume: the pool and the replica are served, the volume refused.
        let dir = tempfile::tempdir().unwrap();
        let cut = full.find(V1).unwrap() + V1.len() + 1;
        std::fs::write(dir.path().join(STATE_FILE), &full[..cut]).unwrap();
        let mut config = Config::default();
        let keys = load_merge(dir.path(), &mut config);
        assert_eq!(
            (keys.pools.len(), keys.replicas.len(), keys.volumes.len()),
            (1, 1, 0)
        );
        assert!(config.replicas.iter().any(|r| r.uuid == R1));
        // The volume was the first of its section: the cut is said to start at the section.
        let line = full[..full.find("volumes:").unwrap()].lines().count() + 1;
        assert_eq!(keys.refused.errors.len(), 1, "{:?}", keys.refused);
        assert!(
            keys.refused.errors[0]
                .reason
                .contains(&format!("line {line} ")),
            "{:?}",
            keys.refused.errors
        );

        // A file of an earlier version (no first and last comments) cut between entries
        // cannot be told from a whole one; cut inside an entry, that entry is refused.
        let old = serde_saphyr::to_string(&full_state).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            &old[..old.find(V1).unwrap() + V1.len() + 1],
        )
        .unwrap();
        let mut config = Config::default();
        let keys = load_merge(dir.path(), &mut config);
        assert_eq!(
            (keys.pools.len(), keys.replicas.len(), keys.volumes.len()),
            (1, 1, 0)
        );
        assert_eq!(
            keys.refused.errors[0].entry,
            format!("volumes[0] (uuid \"{V1}\")")
        );
        assert!(
            keys.refused.errors[0].reason.contains("replicas"),
            "{:?}",
            keys.refused.errors[0]
        );
    }

    #[test]
    fn garbage_is_moved_aside() {
        let garbage: [&[u8]; 4] = [
            b"\x00\xff\xfe binary \x9c\x01",
            b"pools: [{name: p, disks: [\"x\"\n",
            b"just some text",
            b"",
        ];
        for bytes in garbage {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(STATE_FILE), bytes).unwrap();
            let mut config =
                Config::parse("pools:\n  - name: c\n    disks: [\"file:/tmp/c0.img:1GiB\"]\n")
                    .unwrap();
            let keys = load_merge(dir.path(), &mut config);
            assert_eq!(config.pools.len(), 1, "the configuration is kept");
            assert!(keys.pools.is_empty() && keys.replicas.is_empty() && keys.volumes.is_empty());
            assert_eq!(keys.refused.errors.len(), 1, "{:?}", keys.refused);
            assert_eq!(keys.refused.errors[0].entry, WHOLE_FILE);
            // Renamed, never deleted: the next save cannot overwrite it.
            assert!(!dir.path().join(STATE_FILE).exists());
            let aside = keys.refused.kept_aside.clone().unwrap();
            assert_eq!(kept(dir.path()), std::slice::from_ref(&aside));
            assert_eq!(std::fs::read(&aside).unwrap(), bytes);
            StateFile::new(dir.path())
                .save(&Config::parse(STATE).unwrap())
                .unwrap();
            assert_eq!(std::fs::read(&aside).unwrap(), bytes);
        }
    }

    #[test]
    fn a_damaged_file_that_cannot_be_kept_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path().join("missing"));
        let e = set_aside(&f.path(), None).unwrap_err();
        assert!(format!("{e:#}").contains("renaming"), "{e:#}");
    }

    #[test]
    fn utc_stamps() {
        let at = |s: u64| utc_stamp(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_399), "20000228T235959Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_718_100_000), "20240611T100000Z");
    }
}
