//! Harnesses for Ferrite's whole-system tests: building and starting `ferrite-datapath`
//! processes, and running guest scripts in the QEMU kernel-initiator bed (`e2e/qemu`), and
//! CSI clients.

pub mod api_node;
pub mod cluster;
pub mod csi;
pub mod datapath;
pub mod helm;
pub mod kube;
pub mod qemu;
pub mod sidecars;
pub mod tls;
pub mod workload;

use std::path::PathBuf;

/// The workspace root (the folder holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
