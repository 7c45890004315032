//! NVMe controllers and namespaces as the kernel shows them in sysfs (never udev links).
//!
//! Two layouts exist, depending on `nvme_core.multipath`:
//!
//! - **multipath on** (Debian's default): `/sys/class/nvme/nvmeA/` lists only hidden *path*
//!   devices `nvmeAcBnC`; the usable block device is the namespace *head* `nvmeXnY`, a child
//!   of `/sys/class/nvme-subsystem/nvme-subsysX/` (whose `subsysnqn` names the subsystem).
//! - **multipath off**: no heads and no `cB` paths; the namespace `nvmeAnY` is a child of its
//!   controller `/sys/class/nvme/nvmeA/`.
//!
//! Every function takes the sysfs root so that tests can build either layout in a temp dir.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Access to a sysfs tree rooted at `root` (normally `/sys`).
#[derive(Clone, Debug)]
pub struct Sysfs {
    pub root: PathBuf,
}

/// The address of a fabrics controller (`/sys/class/nvme/nvmeN/address`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CtrlAddress {
    pub traddr: String,
    pub trsvcid: String,
    pub host_traddr: Option<String>,
    pub src_addr: Option<String>,
}

/// One NVMe controller under `/sys/class/nvme`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    /// `nvme3`
    pub name: String,
    pub subsysnqn: String,
    /// `tcp`, `rdma`, `pcie`, `loop`...
    pub transport: String,
    pub address: CtrlAddress,
    /// `live`, `connecting`, `resetting`, `deleting`, `dead`, ...
    pub state: String,
    pub hostnqn: Option<String>,
}

impl Controller {
    /// Whether the kernel is tearing this controller down (a new connect will not reuse it).
    pub fn is_going_away(&self) -> bool {
        self.state.starts_with("deleting") || self.state == "dead"
    }
}

/// A namespace block device that can be used for I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceDevice {
    /// `nvme0n1` (the device node is `/dev/nvme0n1`).
    pub name: String,
    /// major:minor from sysfs `dev`.
    pub devno: (u32, u32),
    /// Whether it is a multipath head (as opposed to a plain per-controller namespace).
    pub head: bool,
}

/// The kinds of names NVMe block devices have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NvmeName {
    /// `nvme{ctrl}` – a controller (char device).
    Ctrl(u32),
    /// `nvme{a}n{b}` – a usable namespace (head or plain).
    Namespace(u32, u32),
    /// `nvme{a}c{b}n{c}` – a hidden multipath path device.
    Path(u32, u32, u32),
    /// `nvme{a}n{b}p{c}` – a partition.
    Partition(u32, u32, u32),
}

/// Parses `nvme0`, `nvme0n1`, `nvme0c1n1`, `nvme0n1p2`.
pub fn parse_nvme_name(name: &str) -> Option<NvmeName> {
    let rest = name.strip_prefix("nvme")?;
    fn num(s: &str) -> Option<(u32, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((s[..end].parse().ok()?, &s[end..]))
    }
    let (a, rest) = num(rest)?;
    if rest.is_empty() {
        return Some(NvmeName::Ctrl(a));
    }
    if let Some(r) = rest.strip_prefix('c') {
        let (b, r) = num(r)?;
        let (c, r) = num(r.strip_prefix('n')?)?;
        return r.is_empty().then_some(NvmeName::Path(a, b, c));
    }
    let (b, r) = num(rest.strip_prefix('n')?)?;
    if r.is_empty() {
        return Some(NvmeName::Namespace(a, b));
    }
    let (c, r) = num(r.strip_prefix('p')?)?;
    r.is_empty().then_some(NvmeName::Partition(a, b, c))
}

/// Parses a controller `address` attribute: `traddr=10.0.2.2,trsvcid=4420,src_addr=10.0.2.15`.
pub fn parse_address(s: &str) -> CtrlAddress {
    let mut a = CtrlAddress::default();
    for kv in s.trim().split(',') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "traddr" => a.traddr = v,
            "trsvcid" => a.trsvcid = v,
            "host_traddr" => a.host_traddr = Some(v),
            "src_addr" => a.src_addr = Some(v),
            _ => {}
        }
    }
    a
}

/// Parses `MAJOR:MINOR`.
pub fn parse_devno(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn read_attr(p: &Path) -> io::Result<String> {
    fs::read_to_string(p).map(|s| s.trim_end_matches('\n').trim().to_string())
}

fn read_opt(p: &Path) -> Option<String> {
    read_attr(p).ok()
}

/// Directory entries of `dir`, or none if it does not exist.
fn entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort_by_key(|a| natural_key(&a.0));
    Ok(out)
}

/// Sort key so that nvme2 comes before nvme10.
fn natural_key(s: &str) -> (String, Vec<u64>) {
    let prefix: String = s.chars().take_while(|c| !c.is_ascii_digit()).collect();
    let nums = s
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    (prefix, nums)
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn class(&self, class: &str) -> PathBuf {
        self.root.join("class").join(class)
    }

    /// The sysfs directory of a controller, `/sys/class/nvme/nvmeN`.
    pub fn ctrl_dir(&self, name: &str) -> PathBuf {
        self.class("nvme").join(name)
    }

    /// Reads one controller; `None` if it vanished meanwhile.
    pub fn controller(&self, name: &str) -> io::Result<Option<Controller>> {
        let dir = self.ctrl_dir(name);
        let subsysnqn = match read_attr(&dir.join("subsysnqn")) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Controller {
            name: name.to_string(),
            subsysnqn,
            transport: read_opt(&dir.join("transport")).unwrap_or_default(),
            address: parse_address(&read_opt(&dir.join("address")).unwrap_or_default()),
            state: read_opt(&dir.join("state")).unwrap_or_default(),
            hostnqn: read_opt(&dir.join("hostnqn")),
        }))
    }

    /// Every controller in `/sys/class/nvme`.
    pub fn controllers(&self) -> io::Result<Vec<Controller>> {
        let mut out = Vec::new();
        for (name, _) in entries(&self.class("nvme"))? {
            if !matches!(parse_nvme_name(&name), Some(NvmeName::Ctrl(_))) {
                continue;
            }
            if let Some(c) = self.controller(&name)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Controllers of subsystem `nqn` (any state).
    pub fn controllers_of(&self, nqn: &str) -> io::Result<Vec<Controller>> {
        Ok(self
            .controllers()?
            .into_iter()
            .filter(|c| c.subsysnqn == nqn)
            .collect())
    }

    /// Whether the block device directory `dir` is namespace `nsid`.
    fn ns_matches(dir: &Path, nsid: u32) -> bool {
        match read_opt(&dir.join("nsid")) {
            Some(s) => s.parse::<u32>().ok() == Some(nsid),
            // Kernels before nsid was exported: no way to tell, do not guess.
            None => false,
        }
    }

    fn ns_device(dir: &Path, name: &str, head: bool) -> Option<NamespaceDevice> {
        let devno = parse_devno(&read_opt(&dir.join("dev"))?)?;
        Some(NamespaceDevice {
            name: name.to_string(),
            devno,
            head,
        })
    }

    /// Finds the usable block device of namespace `nsid` of subsystem `nqn`, in either
    /// layout. `None` while the kernel has not created it (yet).
    pub fn find_namespace(&self, nqn: &str, nsid: u32) -> io::Result<Option<NamespaceDevice>> {
        // Multipath: heads under the subsystem.
        for (sname, sdir) in entries(&self.class("nvme-subsystem"))? {
            if !sname.starts_with("nvme-subsys")
                || read_opt(&sdir.join("subsysnqn")).as_deref() != Some(nqn)
            {
                continue;
            }
            for (name, dir) in entries(&sdir)? {
                if matches!(parse_nvme_name(&name), Some(NvmeName::Namespace(..)))
                    && Self::ns_matches(&dir, nsid)
                    && let Some(d) = Self::ns_device(&dir, &name, true)
                {
                    return Ok(Some(d));
                }
            }
        }
        // No multipath: namespaces under each controller of the subsystem.
        for c in self.controllers_of(nqn)? {
            if c.is_going_away() {
                continue;
            }
            for (name, dir) in entries(&self.ctrl_dir(&c.name))? {
                if matches!(parse_nvme_name(&name), Some(NvmeName::Namespace(..)))
                    && Self::ns_matches(&dir, nsid)
                    && let Some(d) = Self::ns_device(&dir, &name, false)
                {
                    return Ok(Some(d));
                }
            }
        }
        Ok(None)
    }

    /// NSIDs of the namespaces the controllers of `nqn` show (for error messages).
    pub fn namespace_ids(&self, nqn: &str) -> io::Result<Vec<u32>> {
        let mut ids = Vec::new();
        for c in self.controllers_of(nqn)? {
            for (name, dir) in entries(&self.ctrl_dir(&c.name))? {
                if matches!(
                    parse_nvme_name(&name),
                    Some(NvmeName::Namespace(..) | NvmeName::Path(..))
                ) && let Some(id) = read_opt(&dir.join("nsid")).and_then(|s| s.parse().ok())
                {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Size in bytes of block device `name` (`/sys/class/block/NAME/size` * 512).
    pub fn block_size_bytes(&self, name: &str) -> io::Result<u64> {
        let s = read_attr(&self.class("block").join(name).join("size"))?;
        s.parse::<u64>().map(|sectors| sectors * 512).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad size {s:?} of {name}"),
            )
        })
    }

    /// The block device name for `major:minor` (`/sys/dev/block/M:m` -> `nvme0n1`).
    pub fn block_name_by_devno(&self, devno: (u32, u32)) -> Option<String> {
        let link = self
            .root
            .join("dev")
            .join("block")
            .join(format!("{}:{}", devno.0, devno.1));
        let target = fs::read_link(&link)
            .ok()
            .or_else(|| fs::canonicalize(&link).ok())?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The subsystem NQN behind an NVMe block device: the `subsysnqn` of its parent in the
    /// device tree (the subsystem for a head, the controller for a plain namespace).
    pub fn nqn_of_block(&self, name: &str) -> Option<String> {
        let dir = fs::canonicalize(self.class("block").join(name)).ok()?;
        read_opt(&dir.parent()?.join("subsysnqn"))
    }

    /// The `nsid` attribute of block device `name`.
    pub fn nsid_of_block(&self, name: &str) -> Option<u32> {
        read_opt(&self.class("block").join(name).join("nsid"))?
            .parse()
            .ok()
    }

    /// Asks the kernel to delete (disconnect) controller `name`.
    pub fn delete_controller(&self, name: &str) -> io::Result<()> {
        fs::write(self.ctrl_dir(name).join("delete_controller"), "1")
    }

    /// Asks the kernel to rescan the namespaces of controller `name` (sizes included).
    pub fn rescan_controller(&self, name: &str) -> io::Result<()> {
        fs::write(self.ctrl_dir(name).join("rescan_controller"), "1")
    }

    /// Whether controller `name` still exists.
    pub fn controller_exists(&self, name: &str) -> bool {
        self.ctrl_dir(name).exists()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(crate) fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{s}\n")).unwrap();
    }

    /// A fake controller `nvme{n}` of `nqn` at `traddr:4420`.
    pub(crate) fn add_ctrl(root: &Path, n: u32, nqn: &str, traddr: &str, state: &str) -> PathBuf {
        let dev = root.join(format!("devices/virtual/nvme-fabrics/ctl/nvme{n}"));
        write(&dev.join("subsysnqn"), nqn);
        write(&dev.join("transport"), "tcp");
        write(
            &dev.join("address"),
            &format!("traddr={traddr},trsvcid=4420,src_addr=10.0.2.15"),
        );
        write(&dev.join("state"), state);
        write(
            &dev.join("hostnqn"),
            "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555",
        );
        write(&dev.join("dev"), &format!("243:{n}"));
        fs::create_dir_all(root.join("class/nvme")).unwrap();
        symlink(&dev, root.join(format!("class/nvme/nvme{n}"))).unwrap();
        dev
    }

    fn add_block(
        root: &Path,
        parent: &Path,
        name: &str,
        nsid: u32,
        devno: (u32, u32),
        sectors: u64,
    ) {
        let dir = parent.join(name);
        write(&dir.join("nsid"), &nsid.to_string());
        write(&dir.join("dev"), &format!("{}:{}", devno.0, devno.1));
        write(&dir.join("size"), &sectors.to_string());
        fs::create_dir_all(root.join("class/block")).unwrap();
        symlink(&dir, root.join("class/block").join(name)).unwrap();
        fs::create_dir_all(root.join("dev/block")).unwrap();
        symlink(
            &dir,
            root.join(format!("dev/block/{}:{}", devno.0, devno.1)),
        )
        .unwrap();
    }

    /// Multipath layout: subsystem nvme-subsys{s} with head nvme{s}n{h}, one controller with
    /// its hidden path device.
    pub(crate) fn multipath_tree(root: &Path, nqn: &str, nsid: u32) {
        let ctrl = add_ctrl(root, 0, nqn, "10.0.2.2", "live");
        let subsys = root.join("devices/virtual/nvme-subsystem/nvme-subsys0");
        write(&subsys.join("subsysnqn"), nqn);
        fs::create_dir_all(root.join("class/nvme-subsystem")).unwrap();
        symlink(&subsys, root.join("class/nvme-subsystem/nvme-subsys0")).unwrap();
        symlink(&ctrl, subsys.join("nvme0")).unwrap();
        add_block(root, &subsys, "nvme0n1", nsid, (259, 0), 524288);
        // The hidden path: not a usable device.
        let path = ctrl.join("nvme0c0n1");
        write(&path.join("nsid"), &nsid.to_string());
        write(&path.join("dev"), "259:1");
    }

    #[test]
    fn names() {
        assert_eq!(parse_nvme_name("nvme0"), Some(NvmeName::Ctrl(0)));
        assert_eq!(
            parse_nvme_name("nvme12n3"),
            Some(NvmeName::Namespace(12, 3))
        );
        assert_eq!(parse_nvme_name("nvme1c2n3"), Some(NvmeName::Path(1, 2, 3)));
        assert_eq!(
            parse_nvme_name("nvme0n1p2"),
            Some(NvmeName::Partition(0, 1, 2))
        );
        for bad in [
            "nvme",
            "nvmeX",
            "nvme0n",
            "nvme0c1",
            "nvme-subsys0",
            "nvme-fabrics",
            "sda",
            "nvme0n1x",
        ] {
            assert_eq!(parse_nvme_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn address_and_devno() {
        let a = parse_address("traddr=10.0.2.2,trsvcid=4420,src_addr=10.0.2.15\n");
        assert_eq!(a.traddr, "10.0.2.2");
        assert_eq!(a.trsvcid, "4420");
        assert_eq!(a.src_addr.as_deref(), Some("10.0.2.15"));
        assert_eq!(a.host_traddr, None);
        let b = parse_address("traddr=::1,trsvcid=4420");
        assert_eq!(b.traddr, "::1");
        assert_eq!(parse_devno("259:0\n"), Some((259, 0)));
        assert_eq!(parse_devno("259"), None);
    }

    #[test]
    fn multipath_layout() {
        let t = tempfile::tempdir().unwrap();
        let nqn = "nqn.2024-01.dev.ferrite:v1";
        multipath_tree(t.path(), nqn, 1);
        let s = Sysfs::new(t.path());
        let ctrls = s.controllers_of(nqn).unwrap();
        assert_eq!(ctrls.len(), 1);
        assert_eq!(ctrls[0].name, "nvme0");
        assert_eq!(ctrls[0].state, "live");
        assert_eq!(ctrls[0].address.traddr, "10.0.2.2");
        let ns = s.find_namespace(nqn, 1).unwrap().expect("head found");
        assert_eq!(
            ns,
            NamespaceDevice {
                name: "nvme0n1".into(),
                devno: (259, 0),
                head: true
            }
        );
        assert_eq!(s.find_namespace(nqn, 2).unwrap(), None);
        assert_eq!(
            s.find_namespace("nqn.2024-01.dev.ferrite:other", 1)
                .unwrap(),
            None
        );
        assert_eq!(s.block_size_bytes("nvme0n1").unwrap(), 256 << 20);
        assert_eq!(s.block_name_by_devno((259, 0)).as_deref(), Some("nvme0n1"));
        assert_eq!(s.nqn_of_block("nvme0n1").as_deref(), Some(nqn));
        assert_eq!(s.nsid_of_block("nvme0n1"), Some(1));
        assert_eq!(s.namespace_ids(nqn).unwrap(), vec![1]);
    }

    #[test]
    fn plain_layout() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let nqn = "nqn.2024-01.dev.ferrite:v2";
        let other = "nqn.2024-01.dev.ferrite:v3";
        // Controller nvme1 of another subsystem first, then nvme2 of ours with nsid 1 and 2.
        let c1 = add_ctrl(root, 1, other, "10.0.0.1", "live");
        add_block(root, &c1, "nvme1n1", 1, (259, 5), 100);
        let c2 = add_ctrl(root, 2, nqn, "10.0.0.2", "live");
        add_block(root, &c2, "nvme2n1", 1, (259, 6), 200);
        add_block(root, &c2, "nvme2n2", 2, (259, 7), 300);
        let s = Sysfs::new(root);
        assert_eq!(s.controllers().unwrap().len(), 2);
        let ns = s.find_namespace(nqn, 2).unwrap().expect("ns 2");
        assert_eq!(
            ns,
            NamespaceDevice {
                name: "nvme2n2".into(),
                devno: (259, 7),
                head: false
            }
        );
        assert_eq!(s.find_namespace(nqn, 1).unwrap().unwrap().name, "nvme2n1");
        assert_eq!(s.find_namespace(other, 1).unwrap().unwrap().name, "nvme1n1");
        assert_eq!(s.nqn_of_block("nvme2n2").as_deref(), Some(nqn));
        assert_eq!(s.namespace_ids(nqn).unwrap(), vec![1, 2]);
        // A controller being deleted does not count.
        write(&c2.join("state"), "deleting");
        assert_eq!(s.find_namespace(nqn, 1).unwrap(), None);
    }

    #[test]
    fn empty_tree() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        assert!(s.controllers().unwrap().is_empty());
        assert_eq!(s.find_namespace("nqn.x", 1).unwrap(), None);
        assert!(s.block_size_bytes("nvme0n1").is_err());
        assert_eq!(s.nqn_of_block("nvme0n1"), None);
    }
}
