//! Command-line arguments and how they become a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::config::{Config, NamespaceSpec, SubsystemSpec};
use crate::demo;

/// Ferrite datapath: serves block devices over NVMe/TCP.
///
/// Examples:
///   ferrite-datapath --demo
///   ferrite-datapath --listen 127.0.0.1:4420 --export nqn.2024-01.dev.ferrite:vol1=ram:256MiB
///   ferrite-datapath --config datapath.yaml
#[derive(Debug, Parser)]
#[command(name = "ferrite-datapath", version, verbatim_doc_comment)]
pub struct Args {
    /// YAML configuration file (command-line listeners and exports are added to it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve NVMe/TCP (and discovery) on; repeatable. Default 127.0.0.1:4420.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Export a backend as a subsystem with one namespace: NQN=ram:SIZE, NQN=file:PATH or
    /// NQN=file:PATH:SIZE (creates a sparse file if absent); repeatable.
    #[arg(long, value_name = "NQN=SPEC")]
    pub export: Vec<String>,

    /// Host NQN allowed to connect to the --export subsystems; repeatable. Without it any
    /// host may connect.
    #[arg(long, value_name = "HOSTNQN")]
    pub allow_host: Vec<String>,

    /// Logical block size of --export namespaces (512 or 4096 are typical).
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,

    /// Run the built-in demo: sparse files in DIR (a new temporary folder if omitted).
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "")]
    pub demo: Option<String>,

    /// Serve /metrics (Prometheus) and /v1/status (JSON) over HTTP on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,

    /// Serve the node API (gRPC `ferrite.node.v1.Node`) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub grpc: Option<SocketAddr>,

    /// Folder with the node API's mutual-TLS files (ca.crt, node.crt, node.key): only
    /// clients with a certificate of that CA are served. Required with --grpc.
    #[arg(long, value_name = "DIR")]
    pub grpc_tls_dir: Option<PathBuf>,

    /// Serve the node API without authentication instead (tests and trusted networks only:
    /// anyone who reaches the port can then destroy or read every volume on the node).
    #[arg(long)]
    pub grpc_insecure: bool,

    /// Folder of the state file (node-state.yaml) recording what the node API created; read
    /// at start. Used only with --grpc. Default /var/lib/ferrite.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// NVMe/TCP connections served at once (default 1024); further ones are refused.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// NVMe/TCP connections served at once from one IP address (default 128).
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,

    /// Memory budget of one NVMe/TCP connection, e.g. 4MiB (the default): over it the target
    /// stops reading from the host until its replies drain.
    #[arg(long, value_name = "SIZE")]
    pub connection_buffer: Option<String>,

    /// Seconds a host that does not read its socket is given before it is disconnected
    /// (default 30).
    #[arg(long, value_name = "SECS")]
    pub drain_timeout: Option<u64>,

    /// Log filter (overridden by RUST_LOG).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Args {
    /// Builds the configuration these arguments describe.
    pub fn to_config(&self) -> Result<Config> {
        let mut config = if let Some(dir) = &self.demo {
            if self.config.is_some() {
                bail!("--demo and --config cannot be combined");
            }
            demo::config(if dir.is_empty() {
                None
            } else {
                Some(PathBuf::from(dir))
            })?
        } else if let Some(path) = &self.config {
            Config::load(path)?
        } else {
            Config::default()
        };
        config.listen.extend(self.listen.iter().copied());
        if self.http.is_some() {
            config.http = self.http;
        }
        if self.grpc.is_some() {
            config.grpc = self.grpc;
        }
        if self.state_dir.is_some() {
            config.state_dir = self.state_dir.clone();
        }
        if self.grpc_tls_dir.is_some() {
            config.grpc_tls_dir = self.grpc_tls_dir.clone();
        }
        config.grpc_insecure |= self.grpc_insecure;
        let l = &mut config.limits;
        l.max_connections = self.max_connections.or(l.max_connections);
        l.max_connections_per_address = self
            .max_connections_per_address
            .or(l.max_connections_per_address);
        l.connection_buffer = self
            .connection_buffer
            .clone()
            .or(l.connection_buffer.take());
        l.drain_timeout_secs = self.drain_timeout.or(l.drain_timeout_secs);
        for e in &self.export {
            let (nqn, spec) = e.split_once('=').with_context(|| {
                format!(
                    "--export {e:?}: expected NQN=SPEC, e.g. nqn.2024-01.dev.ferrite:vol1=ram:1GiB"
                )
            })?;
            config.subsystems.push(SubsystemSpec {
                nqn: nqn.to_string(),
                allow_hosts: self.allow_host.clone(),
                namespaces: vec![NamespaceSpec {
                    nsid: 1,
                    backend: spec.to_string(),
                    block_size: Some(self.block_size),
                }],
            });
        }
        if !self.allow_host.is_empty() && self.export.is_empty() {
            bail!(
                "--allow-host applies to --export subsystems; give at least one --export (or set allow_hosts in the config file)"
            );
        }
        if config.listen.is_empty() {
            config.listen.push(SocketAddr::from(([127, 0, 0, 1], 4420)));
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut v = vec!["ferrite-datapath"];
        v.extend_from_slice(args);
        Args::try_parse_from(v)?.to_config()
    }

    #[test]
    fn exports_and_listeners() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:5000",
            "--export",
            "nqn.2024-01.dev.ferrite:a=ram:64MiB",
            "--export",
            "nqn.2024-01.dev.ferrite:b=file:/tmp/x.img:1GiB",
            "--allow-host",
            "nqn.2014-08.org.nvmexpress:uuid:1",
        ])
        .unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:5000".parse().unwrap()]);
        assert_eq!(c.subsystems.len(), 2);
        assert_eq!(
            c.subsystems[1].allow_hosts,
            vec!["nqn.2014-08.org.nvmexpress:uuid:1".to_string()]
        );
    }

    #[test]
    fn node_api_options() {
        let c = parse(&["--grpc", "127.0.0.1:9500", "--state-dir", "/tmp/st"]).unwrap();
        assert_eq!(c.grpc, Some("127.0.0.1:9500".parse().unwrap()));
        assert_eq!(c.state_dir, Some(PathBuf::from("/tmp/st")));
        assert_eq!((c.grpc_tls_dir.clone(), c.grpc_insecure), (None, false));
        let c = parse(&["--grpc", "127.0.0.1:9500", "--grpc-tls-dir", "/etc/tls"]).unwrap();
        assert_eq!(c.grpc_tls_dir, Some(PathBuf::from("/etc/tls")));
        assert!(
            parse(&["--grpc", "127.0.0.1:9500", "--grpc-insecure"])
                .unwrap()
                .grpc_insecure
        );
    }

    #[test]
    fn target_limits() {
        let c = parse(&[
            "--max-connections",
            "64",
            "--max-connections-per-address",
            "8",
            "--connection-buffer",
            "2MiB",
            "--drain-timeout",
            "5",
        ])
        .unwrap();
        let o = c.limits.target_options().unwrap();
        assert_eq!((o.max_connections, o.max_connections_per_address), (64, 8));
        assert_eq!(o.max_connection_buffer, 2 << 20);
        assert_eq!(o.drain_timeout, std::time::Duration::from_secs(5));
        let d = parse(&[]).unwrap().limits.target_options().unwrap();
        assert_eq!(
            (d.max_connections, d.max_connections_per_address),
            (1024, 128)
        );
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--connection-buffer", "lots"]).is_err());
    }

    #[test]
    fn default_listener() {
        let c = parse(&["--export", "nqn.2024-01.dev.ferrite:a=ram:64MiB"]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:4420".parse().unwrap()]);
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let e = parse(&["--export", "nqn.2024-01.dev.ferrite:a"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected NQN=SPEC"), "{e}");
        let e = parse(&["--export", "bogus=ram:1GiB"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&["--export", "nqn.2024-01.dev.ferrite:a=tape:1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("tape"), "{e}");
        assert!(parse(&["--allow-host", "nqn.2014-08.org.nvmexpress:uuid:1"]).is_err());
        let e = parse(&[
            "--export",
            "nqn.2024-01.dev.ferrite:a=ram:1GiB",
            "--export",
            "nqn.2024-01.dev.ferrite:a=ram:1GiB",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
