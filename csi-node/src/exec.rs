//! Running host tools (blkid, mkfs, resize2fs, xfs_growfs) with a time limit.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::NodeError;

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `tool args...` with stdin closed; fails only if it cannot be started or overruns
/// `timeout` (it is then killed). The exit code is for the caller to judge.
pub fn run(tool: &Path, args: &[&str], timeout: Duration) -> Result<Output, NodeError> {
    let shown = || format!("{} {}", tool.display(), args.join(" "));
    tracing::debug!(cmd = %shown(), "exec");
    let mut child = Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NodeError::FailedPrecondition(format!(
                "{} is not installed on this node (needed for: {})",
                tool.display(),
                shown()
            )),
            _ => NodeError::Internal(format!("starting {}: {e}", shown())),
        })?;
    // Drain the pipes on threads so a chatty tool cannot block on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NodeError::DeadlineExceeded(format!(
                    "{} did not finish within {} s",
                    shown(),
                    timeout.as_secs()
                )));
            }
            Err(e) => return Err(NodeError::Internal(format!("waiting for {}: {e}", shown()))),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    tracing::debug!(cmd = %shown(), code = ?status.code(), "exec done");
    Ok(Output {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Runs a tool and turns a non-zero exit into an internal error quoting its stderr.
pub fn run_ok(tool: &Path, args: &[&str], timeout: Duration) -> Result<Output, NodeError> {
    let out = run(tool, args, timeout)?;
    if out.success() {
        Ok(out)
    } else {
        Err(NodeError::Internal(format!(
            "{} {} failed (exit {:?}): {}",
            tool.display(),
            args.join(" "),
            out.code,
            out.stderr
                .trim()
                .lines()
                .last()
                .unwrap_or(out.stdout.trim())
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_times_out() {
        let sh = Path::new("/bin/sh");
        let o = run(
            sh,
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        assert!(
            matches!(run_ok(sh, &["-c", "echo boom >&2; exit 1"], Duration::from_secs(10)), Err(NodeError::Internal(m)) if m.contains("boom"))
        );
        assert!(matches!(
            run(sh, &["-c", "sleep 5"], Duration::from_millis(200)),
            Err(NodeError::DeadlineExceeded(_))
        ));
        assert!(matches!(
            run(
                Path::new("/nonexistent/mkfs.foo"),
                &[],
                Duration::from_secs(1)
            ),
            Err(NodeError::FailedPrecondition(_))
        ));
    }
}
