//! Connecting and disconnecting the kernel NVMe/TCP initiator through `/dev/nvme-fabrics`
//! (what `nvme connect` does): write one option string, read back `instance=N,cntlid=M`.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{NodeError, Result};
use crate::sysfs::{Controller, Sysfs};

/// One NVMe/TCP portal: an IP address and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Portal {
    pub addr: IpAddr,
    pub port: u16,
}

impl std::fmt::Display for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", SocketAddr::new(self.addr, self.port))
    }
}

/// Parses `HOST:PORT` (`10.0.0.1:4420`, `[fd00::1]:4420`, `node-a.example:4420`); a host
/// name is resolved (first address). A missing port means 4420.
pub fn parse_portal(s: &str) -> std::result::Result<Portal, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty portal".into());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(Portal {
            addr: sa.ip(),
            port: sa.port(),
        });
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(Portal {
            addr: ip,
            port: 4420,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("bad port in portal {s:?}"))?,
        ),
        None => (s, 4420),
        _ => {
            return Err(format!(
                "cannot parse portal {s:?} (use HOST:PORT, [IPv6]:PORT)"
            ));
        }
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == ',' || c == '/')
    {
        return Err(format!("bad host in portal {s:?}"));
    }
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))?;
    Ok(Portal {
        addr: addr.ip(),
        port,
    })
}

/// The host identity presented to targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    pub nqn: String,
    /// UUID string (`hostid=`).
    pub id: String,
}

/// Kernel connect options for one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    pub nqn: String,
    pub portal: Portal,
    pub ctrl_loss_tmo: Option<i32>,
    pub reconnect_delay: Option<u32>,
    pub fast_io_fail_tmo: Option<i32>,
    pub nr_io_queues: Option<u32>,
    pub keep_alive_tmo: Option<u32>,
    pub hdr_digest: bool,
    pub data_digest: bool,
}

/// Whether `v` can be put into the kernel's comma-separated option string.
fn check_value(what: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 223
        || v.chars()
            .any(|c| c == ',' || c == '=' || c.is_whitespace() || c.is_control())
    {
        return Err(NodeError::InvalidArgument(format!(
            "{what} {v:?} cannot be passed to the kernel (empty, longer than 223 bytes, or has ',', '=' or whitespace)"
        )));
    }
    Ok(())
}

/// Builds the string written to `/dev/nvme-fabrics`.
pub fn option_string(o: &ConnectOptions, host: &HostIdentity) -> Result<String> {
    check_value("subsystem NQN", &o.nqn)?;
    check_value("host NQN", &host.nqn)?;
    check_value("host ID", &host.id)?;
    let mut s = format!(
        "nqn={},transport=tcp,traddr={},trsvcid={},hostnqn={},hostid={}",
        o.nqn, o.portal.addr, o.portal.port, host.nqn, host.id
    );
    if let Some(v) = o.nr_io_queues {
        s.push_str(&format!(",nr_io_queues={v}"));
    }
    if let Some(v) = o.keep_alive_tmo {
        s.push_str(&format!(",keep_alive_tmo={v}"));
    }
    if let Some(v) = o.reconnect_delay {
        s.push_str(&format!(",reconnect_delay={v}"));
    }
    if let Some(v) = o.ctrl_loss_tmo {
        s.push_str(&format!(",ctrl_loss_tmo={v}"));
    }
    if let Some(v) = o.fast_io_fail_tmo {
        s.push_str(&format!(",fast_io_fail_tmo={v}"));
    }
    if o.hdr_digest {
        s.push_str(",hdr_digest");
    }
    if o.data_digest {
        s.push_str(",data_digest");
    }
    Ok(s)
}

/// Parses the kernel's answer `instance=3,cntlid=1` into the controller name `nvme3`.
pub fn parse_connect_reply(s: &str) -> Option<String> {
    for kv in s.trim().split(',') {
        if let Some(v) = kv.trim().strip_prefix("instance=") {
            let n: u32 = v.trim().parse().ok()?;
            return Some(format!("nvme{n}"));
        }
    }
    None
}

/// Whether an existing controller is the one `o` would create for `host`.
pub fn matches(c: &Controller, o: &ConnectOptions, host: &HostIdentity) -> bool {
    c.transport == "tcp"
        && c.subsysnqn == o.nqn
        && !c.is_going_away()
        && c.address.trsvcid == o.portal.port.to_string()
        && c.address.traddr.parse::<IpAddr>().ok() == Some(o.portal.addr)
        && c.hostnqn.as_deref().is_none_or(|h| h == host.nqn)
}

/// Classifies a failed connect write into an actionable error.
pub fn connect_error(o: &ConnectOptions, host: &HostIdentity, e: &io::Error) -> NodeError {
    let base = format!(
        "connecting to subsystem {} at {} failed: {e}",
        o.nqn, o.portal
    );
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => NodeError::Unavailable(format!(
            "{base}: nothing listens there; is the Ferrite datapath running on that node and the port right?"
        )),
        Some(
            libc::ETIMEDOUT
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ENETDOWN
            | libc::EHOSTDOWN,
        ) => NodeError::Unavailable(format!(
            "{base}: the target is unreachable from this node (network, firewall?)"
        )),
        // The kernel turns an NVMe error status of the Fabrics Connect into EIO.
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::EACCES) => {
            NodeError::NotFound(format!(
                "{base}: the target rejected the connection; check that subsystem {} exists on it and that this \
             node's host NQN {} is on its access list",
                o.nqn, host.nqn
            ))
        }
        Some(libc::ENOENT) | Some(libc::ENODEV) => NodeError::FailedPrecondition(format!(
            "{base}: the kernel has no NVMe-oF support loaded (modprobe nvme-tcp)"
        )),
        _ => NodeError::Internal(base),
    }
}

/// Writes the option string to the fabrics device and returns the new controller's name.
pub fn write_connect(fabrics_dev: &Path, options: &str) -> io::Result<String> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fabrics_dev)?;
    f.write_all(options.as_bytes())?;
    let mut reply = String::new();
    f.read_to_string(&mut reply)?;
    parse_connect_reply(&reply).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected answer from {}: {reply:?}",
                fabrics_dev.display()
            ),
        )
    })
}

/// Connects one controller unless a matching one exists. Returns the controller name and
/// whether this call created it.
pub fn connect(
    sysfs: &Sysfs,
    fabrics_dev: &Path,
    o: &ConnectOptions,
    host: &HostIdentity,
) -> Result<(String, bool)> {
    let existing = |sysfs: &Sysfs| -> Result<Option<String>> {
        let ctrls = sysfs
            .controllers_of(&o.nqn)
            .map_err(|e| NodeError::Internal(format!("reading sysfs: {e}")))?;
        Ok(ctrls
            .into_iter()
            .find(|c| matches(c, o, host))
            .map(|c| c.name))
    };
    if let Some(name) = existing(sysfs)? {
        tracing::debug!(ctrl = %name, nqn = %o.nqn, portal = %o.portal, "controller already connected");
        return Ok((name, false));
    }
    let opts = option_string(o, host)?;
    tracing::info!(nqn = %o.nqn, portal = %o.portal, options = %opts, "connecting");
    match write_connect(fabrics_dev, &opts) {
        Ok(name) => {
            tracing::info!(ctrl = %name, nqn = %o.nqn, portal = %o.portal, "connected");
            Ok((name, true))
        }
        // Connected meanwhile (the kernel refuses a duplicate without duplicate_connect).
        Err(e) if e.raw_os_error() == Some(libc::EALREADY) => match existing(sysfs)? {
            Some(name) => Ok((name, false)),
            None => Err(connect_error(o, host, &e)),
        },
        Err(e) => Err(connect_error(o, host, &e)),
    }
}

/// Deletes controller `name` and waits until it is gone from sysfs.
pub fn disconnect(sysfs: &Sysfs, name: &str, timeout: Duration) -> Result<()> {
    tracing::info!(ctrl = %name, "disconnecting");
    match sysfs.delete_controller(name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        // A controller already being deleted refuses a second delete.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
        Err(e) => {
            return Err(NodeError::Internal(format!(
                "deleting controller {name}: {e}"
            )));
        }
    }
    let deadline = Instant::now() + timeout;
    while sysfs.controller_exists(name) {
        if Instant::now() > deadline {
            return Err(NodeError::DeadlineExceeded(format!(
                "controller {name} is still present {} s after it was deleted",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostIdentity {
        HostIdentity {
            nqn: "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555".into(),
            id: "11111111-2222-3333-4444-555555555555".into(),
        }
    }

    fn opts() -> ConnectOptions {
        ConnectOptions {
            nqn: "nqn.2024-01.dev.ferrite:v1".into(),
            portal: parse_portal("10.0.2.2:4420").unwrap(),
            ctrl_loss_tmo: Some(1800),
            reconnect_delay: Some(2),
            fast_io_fail_tmo: None,
            nr_io_queues: None,
            keep_alive_tmo: None,
            hdr_digest: false,
            data_digest: false,
        }
    }

    #[test]
    fn portals() {
        assert_eq!(
            parse_portal("10.0.2.2:4420").unwrap().to_string(),
            "10.0.2.2:4420"
        );
        assert_eq!(
            parse_portal("[fd00::1]:4421").unwrap().to_string(),
            "[fd00::1]:4421"
        );
        assert_eq!(parse_portal("10.0.0.1").unwrap().port, 4420);
        assert_eq!(parse_portal("localhost:4420").unwrap().port, 4420);
        assert!(parse_portal("").is_err());
        assert!(parse_portal("10.0.0.1:x").is_err());
        assert!(parse_portal("a,b:4420").is_err());
    }

    #[test]
    fn option_strings() {
        let s = option_string(&opts(), &host()).unwrap();
        assert_eq!(
            s,
            "nqn=nqn.2024-01.dev.ferrite:v1,transport=tcp,traddr=10.0.2.2,trsvcid=4420,\
             hostnqn=nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555,\
             hostid=11111111-2222-3333-4444-555555555555,reconnect_delay=2,ctrl_loss_tmo=1800"
        );
        let mut o = opts();
        o.portal = parse_portal("[::1]:4420").unwrap();
        o.nr_io_queues = Some(2);
        o.keep_alive_tmo = Some(5);
        o.fast_io_fail_tmo = Some(-1);
        o.ctrl_loss_tmo = Some(-1);
        o.hdr_digest = true;
        o.data_digest = true;
        let s = option_string(&o, &host()).unwrap();
        assert!(s.contains(",traddr=::1,trsvcid=4420,"), "{s}");
        assert!(s.ends_with(",nr_io_queues=2,keep_alive_tmo=5,reconnect_delay=2,ctrl_loss_tmo=-1,fast_io_fail_tmo=-1,hdr_digest,data_digest"), "{s}");
        let mut bad = opts();
        bad.nqn = "nqn.a,hostnqn=evil".into();
        assert!(matches!(
            option_string(&bad, &host()),
            Err(NodeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_connect_reply("instance=3,cntlid=1\n").as_deref(),
            Some("nvme3")
        );
        assert_eq!(
            parse_connect_reply("cntlid=1,instance=12").as_deref(),
            Some("nvme12")
        );
        assert_eq!(parse_connect_reply("garbage"), None);
    }

    #[test]
    fn error_codes() {
        let o = opts();
        let h = host();
        let code = |errno| connect_error(&o, &h, &io::Error::from_raw_os_error(errno)).code();
        assert_eq!(code(libc::ECONNREFUSED), tonic::Code::Unavailable);
        assert_eq!(code(libc::ETIMEDOUT), tonic::Code::Unavailable);
        assert_eq!(code(libc::EIO), tonic::Code::NotFound);
        let msg = connect_error(&o, &h, &io::Error::from_raw_os_error(libc::EIO)).to_string();
        assert!(
            msg.contains(&o.nqn) && msg.contains(&h.nqn) && msg.contains("access list"),
            "{msg}"
        );
    }

    #[test]
    fn matching_controllers() {
        use crate::sysfs::CtrlAddress;
        let mut c = Controller {
            name: "nvme0".into(),
            subsysnqn: opts().nqn,
            transport: "tcp".into(),
            address: CtrlAddress {
                traddr: "10.0.2.2".into(),
                trsvcid: "4420".into(),
                ..Default::default()
            },
            state: "live".into(),
            hostnqn: Some(host().nqn),
        };
        assert!(matches(&c, &opts(), &host()));
        c.state = "connecting".into();
        assert!(
            matches(&c, &opts(), &host()),
            "a reconnecting controller is still ours"
        );
        c.state = "deleting".into();
        assert!(!matches(&c, &opts(), &host()));
        c.state = "live".into();
        c.address.trsvcid = "4421".into();
        assert!(!matches(&c, &opts(), &host()));
        c.address.trsvcid = "4420".into();
        c.hostnqn = Some("nqn.2014-08.org.nvmexpress:uuid:other".into());
        assert!(!matches(&c, &opts(), &host()));
    }
}
