//! Clients of the nodes' gRPC API (`ferrite.node.v1.Node`), one lazily connected channel per
//! endpoint, with connect and request timeouts so an unreachable node never stalls a
//! reconcile for long. With TLS material ([`NodeClients::new`]) every node must be an
//! `https://` endpoint whose certificate chains to the node API CA, and the operator
//! presents its client certificate (mutual TLS, `ferrite_api::tls`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferrite_api::node::v1::node_client::NodeClient;
use ferrite_api::tls::ClientPem;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one node API call may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Channels to nodes, keyed by API endpoint URL.
#[derive(Default)]
pub struct NodeClients {
    channels: Mutex<HashMap<String, Channel>>,
    tls: Option<ClientPem>,
}

impl NodeClients {
    /// Clients that use mutual TLS with `tls` (None: plaintext, unauthenticated nodes).
    pub fn new(tls: Option<ClientPem>) -> NodeClients {
        NodeClients {
            channels: Mutex::default(),
            tls,
        }
    }

    /// A client for the node API at `endpoint` (`http://host:port`). Connection happens on
    /// the first call; failures surface as `UNAVAILABLE` statuses.
    pub fn client(&self, endpoint: &str) -> Result<NodeClient<Channel>, tonic::Status> {
        let mut map = self
            .channels
            .lock()
            .map_err(|_| tonic::Status::internal("node client cache poisoned"))?;
        if let Some(ch) = map.get(endpoint) {
            return Ok(NodeClient::new(ch.clone()));
        }
        let mut ep = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad endpoint {endpoint}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let https = endpoint.starts_with("https://");
        match &self.tls {
            Some(pem) if https => {
                ep = ep.tls_config(pem.tls()).map_err(|e| {
                    tonic::Status::invalid_argument(format!("TLS towards {endpoint}: {e}"))
                })?;
            }
            Some(_) => {
                return Err(tonic::Status::failed_precondition(format!(
                    "node API endpoint {endpoint} is not https: the operator talks to nodes \
                     only over mutual TLS"
                )));
            }
            None if https => {
                return Err(tonic::Status::failed_precondition(format!(
                    "node API endpoint {endpoint} is https but the operator has no node API \
                     certificate (--node-tls-secret or --node-tls-dir)"
                )));
            }
            None => {}
        }
        let ch = ep.connect_lazy();
        map.insert(endpoint.to_string(), ch.clone());
        Ok(NodeClient::new(ch))
    }
}

/// Whether a status means the node could not be reached (as opposed to a refusal).
pub fn is_unreachable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || (s.code() == tonic::Code::Unknown && s.message().contains("transport"))
}

/// Parses a `host:port` endpoint as the node reports it.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("127.0.0.1:4420"),
            Some(("127.0.0.1".into(), 4420))
        );
        assert_eq!(parse_host_port("[::1]:4420"), Some(("::1".into(), 4420)));
        assert_eq!(parse_host_port("x"), None);
        assert_eq!(parse_host_port(":1"), None);
    }

    #[tokio::test]
    async fn tls_and_endpoint_schemes_must_agree() {
        let plain = NodeClients::default();
        assert!(plain.client("http://127.0.0.1:1").is_ok());
        assert_eq!(
            plain
                .client("https://127.0.0.1:1")
                .map(|_| ())
                .unwrap_err()
                .code(),
            tonic::Code::FailedPrecondition
        );
        let pki = ferrite_api::tls::Pki::generate().expect("pki");
        let tls = NodeClients::new(Some(pki.client()));
        assert!(tls.client("https://127.0.0.1:1").is_ok());
        let e = tls.client("http://127.0.0.1:1").map(|_| ()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    }

    #[test]
    fn unreachable_codes() {
        assert!(is_unreachable(&tonic::Status::unavailable("x")));
        assert!(!is_unreachable(&tonic::Status::not_found("x")));
    }

    #[tokio::test]
    async fn bad_endpoint_is_invalid_argument() {
        let c = NodeClients::default();
        assert!(c.client("http://127.0.0.1:1").is_ok());
        let e = c.client("not a url\n").err().map(|s| s.code());
        assert_eq!(e, Some(tonic::Code::InvalidArgument));
    }
}
