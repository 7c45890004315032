//! Starting and stopping real `ferrite-datapath` processes for tests.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::workspace_root;

/// Builds `ferrite-datapath` (incrementally) and returns the binary's path.
pub fn binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("FERRITE_DATAPATH_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "ferrite-datapath",
            "--bin",
            "ferrite-datapath",
        ])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p ferrite-datapath failed: {status}"));
    }
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target_dir.join("debug").join("ferrite-datapath");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} not found after the build", bin.display()))
    }
}

/// A running datapath process; killed (SIGKILL) when dropped unless stopped first.
pub struct Datapath {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Datapath {
    /// Starts the datapath with `args` and waits until `addr` accepts TCP connections.
    pub fn start(addr: SocketAddr, args: &[String]) -> Result<Datapath, String> {
        Datapath::start_wrapped(addr, &[], args)
    }

    /// Like [`Datapath::start`], run through `wrapper` (e.g. `ip netns exec NS`), which must
    /// exec the datapath in place so that signals reach it.
    pub fn start_wrapped(
        addr: SocketAddr,
        wrapper: &[String],
        args: &[String],
    ) -> Result<Datapath, String> {
        let bin = binary()?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("FERRITE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[datapath] {line}");
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let mut dp = Datapath {
            child: Some(child),
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(c) = dp.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("datapath exited before listening: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("datapath did not listen on {addr} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(dp)
    }

    /// The process ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Lines the process printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Result<i32, String> {
        let Some(mut child) = self.child.take() else {
            return Err("already stopped".into());
        };
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if rc != 0 {
            return Err(format!(
                "kill(SIGTERM) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Ok(s.code().unwrap_or(-1)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = child.kill();
                    return Err("datapath did not exit within 20 s of SIGTERM".into());
                }
                Err(e) => return Err(format!("waiting for the datapath: {e}")),
            }
        }
    }

    /// Kills the process with SIGKILL (a crash, as far as anyone else can tell).
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
